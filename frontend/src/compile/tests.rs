use super::*;
use std::cell::RefCell;

/// A resolver that knows a few images and records what it was asked.
struct Fake {
    asked: RefCell<Vec<String>>,
}

impl ImageResolver for Fake {
    fn resolve(&self, name: &str, _p: &Platform) -> std::result::Result<ResolvedImage, String> {
        self.asked.borrow_mut().push(name.to_string());
        if name.contains("missing") {
            return Err("manifest unknown".into());
        }
        let mut config = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Default::default()
        };
        config.config.env = vec!["PATH=/bin".into(), "BASE=1".into()];
        config.history = vec![History {
            created_by: Some("base".into()),
            ..Default::default()
        }];
        Ok(ResolvedImage {
            pinned: format!("{name}@sha256:00"),
            config,
        })
    }
}

fn build(
    df: &str,
    args: &[(&str, &str)],
    target: Option<&str>,
) -> (Result<BuildGraph>, Vec<String>) {
    let fake = Fake {
        asked: RefCell::new(Vec::new()),
    };
    let opts = BuildOptions {
        file_name: "Dockerfile".into(),
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        target: target.map(str::to_string),
        platform: Platform::host(),
    };
    let g = compile(df, &opts, &fake);
    (g, fake.asked.into_inner())
}

fn ok(df: &str) -> BuildGraph {
    match build(df, &[], None).0 {
        Ok(g) => g,
        Err(e) => panic!("compile failed: {e}"),
    }
}

fn runs(g: &BuildGraph) -> Vec<RunSpec> {
    g.dag
        .node_weights()
        .filter_map(|s| match &s.op {
            Op::Run(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

const SEED: &str = "\
ARG BASE=busybox
FROM ${BASE} AS builder
WORKDIR /src
RUN echo built > /out

FROM busybox AS unused
RUN exit 1

FROM $BASE
WORKDIR /app
COPY --from=builder /out ./
ENV GREETING=\"hello world\" PORT=8080
EXPOSE $PORT 9000/udp
CMD [\"cat\", \"/app/out\"]
";

#[test]
fn seed_multi_stage_prunes_unused_stage() {
    let (g, asked) = build(SEED, &[], None);
    let g = g.expect("compiles");
    // Only the stages the target needs are compiled: "unused" is never resolved or built.
    assert_eq!(asked, vec!["busybox", "busybox"]);
    assert!(runs(&g)
        .iter()
        .all(|r| r.argv != ["/bin/sh", "-c", "exit 1"]));
    assert_eq!(g.config.config.working_dir, "/app");
    assert_eq!(
        g.config.config.cmd,
        Some(vec!["cat".to_string(), "/app/out".into()])
    );
    assert!(g
        .config
        .config
        .env
        .contains(&"GREETING=hello world".to_string()));
    let ports: Vec<&String> = g.config.config.exposed_ports.keys().collect();
    assert_eq!(ports, ["8080/tcp", "9000/udp"]);
    // The COPY vertex depends on the builder's RUN vertex.
    let copy = g
        .dag
        .node_weight(
            g.dag
                .node_indices()
                .find(|&n| matches!(g.dag[n].op, Op::Copy(_)))
                .expect("copy"),
        )
        .expect("w");
    match &copy.op {
        Op::Copy(c) => {
            assert_eq!(c.dest, "/app/");
            let CopyFrom::Step(src) = c.from else {
                panic!("copy from context")
            };
            assert!(matches!(&g.dag[src].op, Op::Run(r) if r.cwd == "/src"));
        }
        _ => unreachable!(),
    }
    let created: Vec<String> = g
        .history
        .iter()
        .filter_map(|h| h.entry.created_by.clone())
        .collect();
    assert_eq!(
        created,
        [
            "base",
            "WORKDIR /app",
            "COPY --from=builder /out ./ # buildkit",
            "ENV GREETING=hello world PORT=8080",
            "EXPOSE map[8080/tcp:{} 9000/udp:{}]",
            "CMD [\"cat\" \"/app/out\"]"
        ]
    );
}

#[test]
fn target_selects_stage_case_insensitively() {
    let (g, _) = build(SEED, &[], Some("BUILDER"));
    let g = g.expect("compiles");
    assert_eq!(g.config.config.working_dir, "/src");
    assert!(matches!(
        build(SEED, &[], Some("nope")).0,
        Err(Error::UnknownTarget(_))
    ));
}

#[test]
fn run_forms_continuations_and_build_args() {
    let df = "FROM busybox\nARG V=1\nRUN echo a \\\n  # comment\n\n  && echo \"$V\"\nRUN [\"echo\", \"x y\"]\n";
    let (g, _) = build(df, &[("V", "2"), ("EXTRA", "x")], None);
    let g = g.expect("compiles");
    let r = runs(&g);
    assert_eq!(r[0].argv, ["/bin/sh", "-c", "echo a   && echo \"$V\""]);
    assert!(r[0].env.contains(&"V=2".to_string()));
    assert_eq!(r[1].argv, ["echo", "x y"]);
    // Build args are not in the image.
    assert!(!g.config.config.env.iter().any(|e| e.starts_with("V=")));
    assert_eq!(
        g.warnings,
        ["[Warning] One or more build-args [EXTRA] were not consumed"]
    );
    let by: Vec<String> = g
        .history
        .iter()
        .filter_map(|h| h.entry.created_by.clone())
        .collect();
    assert_eq!(
        by[1],
        "RUN |1 V=2 /bin/sh -c echo a   && echo \"$V\" # buildkit"
    );
}

#[test]
fn global_args_and_redeclaration() {
    let df = "ARG TAG=latest\nARG NAME=busybox\nFROM ${NAME}:${TAG}\nARG TAG\nENV T=$TAG U=${NAME:-none}\n";
    let (g, asked) = build(df, &[("TAG", "1.36")], None);
    let g = g.expect("compiles");
    assert_eq!(asked, ["busybox:1.36"]);
    assert!(g.config.config.env.contains(&"T=1.36".to_string()));
    // NAME was not re-declared in the stage, so it is not visible there.
    assert!(g.config.config.env.contains(&"U=none".to_string()));
}

#[test]
fn workdir_is_relative_to_previous_and_user_env_apply() {
    let g = ok("FROM busybox\nWORKDIR /a\nWORKDIR b/../c\nUSER 1000:1000\nENV X=1\nRUN true\n");
    assert_eq!(g.config.config.working_dir, "/a/c");
    let r = &runs(&g)[0];
    assert_eq!(r.cwd, "/a/c");
    assert_eq!(r.user, "1000:1000");
    assert!(r.env.contains(&"X=1".to_string()) && r.env.contains(&"BASE=1".to_string()));
}

#[test]
fn entrypoint_resets_inherited_cmd() {
    let g = ok("FROM busybox\nCMD [\"a\"]\nFROM busybox AS two\nCMD [\"b\"]\nFROM two\nENTRYPOINT [\"e\"]\n");
    assert_eq!(g.config.config.entrypoint, Some(vec!["e".to_string()]));
    assert_eq!(g.config.config.cmd, None);
}

#[test]
fn copy_from_index_and_image() {
    let g = ok("FROM busybox\nRUN echo > /x\nFROM scratch\nCOPY --from=0 /x /x\nCOPY --from=other/image:1 /y /y\n");
    let images: Vec<String> = g
        .dag
        .node_weights()
        .filter_map(|s| match &s.op {
            Op::Image { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(images, ["busybox", "other/image:1"]);
}

#[test]
fn errors_name_file_line_and_column() {
    let cases = [
        ("FROM busybox\nFORM x\n", 2),
        ("FROM busybox\nRUN --mount=type=cache,target=/x true\n", 2),
        ("FROM busybox\nCOPY --chmod=9z a b\n", 2),
        ("FROM busybox\nEXPOSE 80/foo\n", 2),
        ("FROM busybox\n\nENV A=\"unterminated\n", 3),
        ("FROM missing/image\n", 1),
        ("FROM busybox AS a\nCOPY --from=a /x /y\n", 2),
    ];
    for (df, line) in cases {
        match build(df, &[], None).0 {
            Ok(_) => panic!("{df:?} compiled"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with(&format!("Dockerfile:{line}")),
                    "{df:?}: {msg}"
                );
            }
        }
    }
}

#[test]
fn no_from_is_an_error() {
    assert!(build("ARG X=1\n", &[], None).0.is_err());
}
