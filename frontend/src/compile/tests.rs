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
        show_platform: false,
        run: Default::default(),
        no_cache_stages: Vec::new(),
        contexts: Vec::new(),
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

#[test]
fn duplicate_stage_names_warn_and_the_last_one_is_meant() {
    let g = ok("FROM busybox AS a\nRUN echo 1\nFROM busybox AS A\nRUN echo 2\nFROM scratch\nCOPY --from=a /x /x\n");
    let echoes: Vec<String> = runs(&g).iter().map(|r| r.argv.join(" ")).collect();
    assert!(echoes.iter().any(|a| a.contains("echo 2")), "{echoes:?}");
    assert!(
        !echoes.iter().any(|a| a.contains("echo 1")),
        "the first a is not used: {echoes:?}"
    );
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
            "COPY /out ./ # buildkit",
            "ENV GREETING=hello world PORT=8080",
            "EXPOSE [8080/tcp 9000/udp]",
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
    // The empty continuation is a check's finding (NoEmptyContinuation), not a
    // compile warning.
    assert_eq!(
        g.warnings,
        ["[Warning] One or more build-args [EXTRA] were not consumed"]
    );
    let by: Vec<String> = g
        .history
        .iter()
        .filter_map(|h| h.entry.created_by.clone())
        .collect();
    assert_eq!(by[1], "ARG V=2");
    assert_eq!(
        by[2],
        "RUN |1 V=2 /bin/sh -c echo a   && echo \"$V\" # buildkit"
    );
    assert_eq!(by[3], "RUN |1 V=2 echo x y # buildkit");
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
        ("FROM busybox\nRUN --mount=type=nfs,target=/x true\n", 2),
        ("FROM busybox\nRUN --network=bridge true\n", 2),
        ("FROM busybox\nRUN --device=/dev/fuse true\n", 2),
        ("FROM busybox\nCOPY --chmod=10000 a b\n", 2),
        ("FROM busybox\nCOPY http://127.0.0.1/x /x\n", 2),
        ("FROM busybox\nADD --checksum=sha256:00 http://127.0.0.1/x /x\n", 2),
        ("FROM busybox\nADD --checksum=md5:00 a /x\n", 2),
        ("FROM busybox\nSTOPSIGNAL SIGWHAT\n", 2),
        ("FROM busybox\nHEALTHCHECK --interval=1x CMD true\n", 2),
        ("FROM busybox\nHEALTHCHECK --retries=-1 CMD true\n", 2),
        ("FROM busybox\nHEALTHCHECK --timeout=10us CMD true\n", 2),
        ("FROM busybox\nENV A=1 B\n", 2),
        ("FROM busybox\nENV A=${X\n", 2),
        ("FROM busybox AS b\nCOPY --from=c /x /y\nFROM busybox AS c\nFROM b\n", 2),
        ("FROM busybox AS 1bad\n", 1),
        ("# syntax=example.com/other/frontend\nFROM busybox\n", 1),
        ("FROM busybox AS x\nRUN --mount=type=bind,from=a,target=/x true\nFROM busybox AS a\nFROM x\n", 2),
        ("FROM busybox\nFROM --platform=linux/ busybox\n", 2),
        ("RUN true\nFROM busybox\n", 1),
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

fn history(g: &BuildGraph) -> Vec<String> {
    g.history
        .iter()
        .filter(|h| h.own)
        .filter_map(|h| h.entry.created_by.clone())
        .collect()
}

fn copies(g: &BuildGraph) -> Vec<CopySpec> {
    g.dag
        .node_weights()
        .filter_map(|s| match &s.op {
            Op::Copy(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn run_heredoc_forms_follow_buildkit() {
    let df = "FROM busybox\n\
RUN <<EOF\necho one\necho two\nEOF\n\
RUN <<-EOF\n\techo tabbed\n\tEOF\n\
RUN <<EOF\n#!/bin/sh -e\necho script\nEOF\n\
RUN cat <<A > /a && cat <<'B' > /b\n$HOME\nA\n$HOME\nB\n\
RUN python3 <<EOF\nprint(1)\nEOF\n";
    let g = ok(df);
    let r = runs(&g);
    assert_eq!(r[0].argv, ["/bin/sh", "-c", "echo one\necho two\n"]);
    assert_eq!(r[1].argv, ["/bin/sh", "-c", "echo tabbed\n"]);
    assert_eq!(r[2].argv, ["/bin/sh", "-c", "/dev/pipes/EOF"]);
    assert_eq!(
        r[2].files,
        [InlineFile {
            name: "EOF".into(),
            data: "#!/bin/sh -e\necho script\n".into(),
            mode: 0o755
        }]
    );
    assert_eq!(
        r[3].argv,
        [
            "/bin/sh",
            "-c",
            "cat <<A > /a && cat <<'B' > /b\n$HOME\nA\n$HOME\nB"
        ]
    );
    assert_eq!(r[4].argv, ["/bin/sh", "-c", "python3 <<EOF\nprint(1)\nEOF"]);
    let names: Vec<String> = g
        .dag
        .node_weights()
        .filter(|s| matches!(s.op, Op::Run(_)))
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names[0], "[2/6] RUN <<EOF (echo one...)");
}

#[test]
fn copy_heredocs_expand_unless_quoted() {
    let df = "FROM busybox\nENV WHO=world\nCOPY <<A <<'B' /etc/\nhello \"$WHO\"\nA\nraw $WHO\nB\nCOPY --chmod=755 <<-EOF /run.sh\n\t#!/bin/sh\nEOF\n";
    let g = ok(df);
    let c = copies(&g);
    assert_eq!(
        c[0].srcs,
        [
            Source::Inline(InlineFile {
                name: "A".into(),
                data: "hello \"world\"\n".into(),
                mode: 0o644
            }),
            Source::Inline(InlineFile {
                name: "B".into(),
                data: "raw $WHO\n".into(),
                mode: 0o644
            })
        ]
    );
    assert_eq!(c[0].dest, "/etc/");
    assert_eq!(c[1].chmod, Some(0o755));
    let h = history(&g);
    assert_eq!(h[1], "COPY <<A <<B /etc/ # buildkit");
    assert_eq!(h[2], "COPY --chmod=755 <<EOF /run.sh # buildkit");
}

#[test]
fn config_matches_buildx_for_each_instruction() {
    let df = "FROM busybox\n\
SHELL [\"/bin/ash\", \"-eo\", \"pipefail\", \"-c\"]\n\
CMD echo hi\n\
ENTRYPOINT [\"/entry\"]\n\
HEALTHCHECK --interval=5m --timeout=3s --retries=3 CMD curl -f http://localhost/ || exit 1\n\
STOPSIGNAL SIGQUIT\n\
VOLUME [\"/data\", \"/logs\"]\n\
LABEL a=1 \"b c\"=\"d e\"\n\
MAINTAINER someone\n\
ONBUILD RUN echo triggered\n\
ONBUILD COPY . /app\n\
USER nobody\n\
EXPOSE 80 443/tcp 53/udp 8000-8002\n";
    let g = ok(df);
    let c = &g.config.config;
    assert_eq!(
        c.shell,
        Some(vec![
            "/bin/ash".into(),
            "-eo".into(),
            "pipefail".into(),
            "-c".into()
        ])
    );
    // CMD before ENTRYPOINT in the same stage survives it.
    assert_eq!(
        c.cmd,
        Some(vec![
            "/bin/ash".into(),
            "-eo".into(),
            "pipefail".into(),
            "-c".into(),
            "echo hi".into()
        ])
    );
    assert_eq!(c.args_escaped, Some(true));
    assert_eq!(c.entrypoint, Some(vec!["/entry".to_string()]));
    let hc = c.healthcheck.clone().expect("healthcheck");
    assert_eq!(
        hc.test,
        ["CMD-SHELL", "curl -f http://localhost/ || exit 1"]
    );
    assert_eq!(
        (hc.interval, hc.timeout, hc.retries),
        (300_000_000_000, 3_000_000_000, 3)
    );
    assert_eq!(c.stop_signal, "SIGQUIT");
    assert_eq!(c.volumes.keys().collect::<Vec<_>>(), ["/data", "/logs"]);
    assert_eq!(c.labels.get("b c").map(String::as_str), Some("d e"));
    assert_eq!(g.config.author.as_deref(), Some("someone"));
    assert_eq!(
        c.on_build,
        Some(vec!["RUN echo triggered".into(), "COPY . /app".into()])
    );
    assert_eq!(c.user, "nobody");
    let ports: Vec<&String> = c.exposed_ports.keys().collect();
    assert_eq!(
        ports,
        ["443/tcp", "53/udp", "80/tcp", "8000/tcp", "8001/tcp", "8002/tcp"]
    );
    assert_eq!(
        history(&g),
        [
            "SHELL [/bin/ash -eo pipefail -c]",
            "CMD [\"/bin/ash\" \"-eo\" \"pipefail\" \"-c\" \"echo hi\"]",
            "ENTRYPOINT [\"/entry\"]",
            "HEALTHCHECK {Test:[CMD-SHELL curl -f http://localhost/ || exit 1] Interval:5m0s Timeout:3s StartPeriod:0s StartInterval:0s Retries:3}",
            "STOPSIGNAL SIGQUIT",
            "VOLUME [/data /logs]",
            "LABEL a=1 b c=d e",
            "MAINTAINER someone",
            "USER nobody",
            "EXPOSE [443/tcp 53/udp 80/tcp 8000/tcp 8001/tcp 8002/tcp]",
        ]
    );
    let g = ok("FROM busybox\nHEALTHCHECK NONE\nHEALTHCHECK CMD [\"/bin/check\", \"-q\"]\n");
    assert_eq!(
        g.config.config.healthcheck.map(|h| h.test),
        Some(vec!["CMD".to_string(), "/bin/check".into(), "-q".into()])
    );
}

/// A resolver whose image carries ONBUILD triggers.
struct OnbuildImage;

impl ImageResolver for OnbuildImage {
    fn resolve(&self, name: &str, _p: &Platform) -> std::result::Result<ResolvedImage, String> {
        let mut config = ImageConfig::default();
        if name == "parent" {
            config.config.on_build = Some(vec![
                "RUN echo from-trigger > /t".into(),
                "ENV TRIGGERED=yes".into(),
            ]);
        }
        if name == "broken" {
            config.config.on_build = Some(vec!["FROM x".into()]);
        }
        Ok(ResolvedImage {
            pinned: format!("{name}@sha256:00"),
            config,
        })
    }
}

fn build_with(df: &str, r: &dyn ImageResolver) -> Result<BuildGraph> {
    let opts = BuildOptions {
        file_name: "Dockerfile".into(),
        build_args: Vec::new(),
        target: None,
        platform: Platform::host(),
        show_platform: false,
        run: Default::default(),
        no_cache_stages: Vec::new(),
        contexts: Vec::new(),
    };
    compile(df, &opts, r)
}

#[test]
fn onbuild_triggers_run_after_from_and_are_cleared() {
    let g = build_with("FROM parent\nRUN echo own\n", &OnbuildImage).expect("compiles");
    let r = runs(&g);
    assert_eq!(r[0].argv, ["/bin/sh", "-c", "echo from-trigger > /t"]);
    assert_eq!(r[1].argv, ["/bin/sh", "-c", "echo own"]);
    assert!(r[1].env.contains(&"TRIGGERED=yes".to_string()));
    assert_eq!(g.config.config.on_build, None);
    // Triggers defined in one stage fire in a stage built FROM it.
    let g = build_with(
        "FROM scratch AS base\nONBUILD ENV FIRED=1\nFROM base\n",
        &OnbuildImage,
    )
    .expect("compiles");
    assert!(g.config.config.env.contains(&"FIRED=1".to_string()));
    let e = build_with("FROM broken\n", &OnbuildImage)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with("Dockerfile:1:1:") && e.contains("isn't allowed as an ONBUILD trigger"),
        "{e}"
    );
}

#[test]
fn arg_scoping_across_stages() {
    let df = "ARG V=global\nARG ONLY=g\nFROM busybox AS a\nARG V\nARG L=local-$V\nRUN echo a\nFROM a AS b\nRUN echo b\nFROM busybox\nARG ONLY\nRUN echo $V\nCOPY --from=b /x /x\n";
    let (g, _) = build(df, &[("V", "cli")], None);
    let g = g.expect("compiles");
    let all = runs(&g);
    let find = |cmd: &str| {
        all.iter()
            .find(|r| r.argv.last().map(String::as_str) == Some(cmd))
            .cloned()
            .expect("run")
    };
    let r = [find("echo a"), find("echo b"), find("echo $V")];
    // Stage a re-declares V (the --build-arg wins) and derives L from it.
    assert!(r[0].env.contains(&"V=cli".to_string()));
    assert!(r[0].env.contains(&"L=local-cli".to_string()));
    // Stage b inherits a's args.
    assert!(r[1].env.contains(&"L=local-cli".to_string()));
    // The last stage declared only ONLY: V is not visible there.
    assert!(r[2].env.contains(&"ONLY=g".to_string()));
    assert!(!r[2].env.iter().any(|e| e.starts_with("V=")));
    let by = history(&g);
    assert!(
        by.contains(&"RUN |1 ONLY=g /bin/sh -c echo $V # buildkit".to_string()),
        "{by:?}"
    );
}

#[test]
fn automatic_platform_args() {
    let df = "FROM busybox\nARG TARGETOS\nARG TARGETARCH\nARG BUILDPLATFORM\nARG TARGETSTAGE\nENV T=$TARGETOS/$TARGETARCH B=$BUILDPLATFORM S=$TARGETSTAGE\n";
    let g = ok(df);
    let host = Platform::host();
    assert!(g
        .config
        .config
        .env
        .contains(&format!("T={}/{}", host.os, host.architecture)));
    assert!(g.config.config.env.contains(&format!("B={host}")));
    assert!(g.config.config.env.contains(&"S=default".to_string()));
}

#[test]
fn run_mounts_network_and_security_reach_the_graph() {
    let df = "FROM busybox AS deps\nRUN echo > /lock\nFROM busybox\nWORKDIR /w\nRUN --mount=type=cache,target=cache,id=c --mount=type=bind,from=deps,source=/lock,target=/lock --mount=type=tmpfs,target=/tmp --mount=type=secret,id=tok --network=none --security=insecure make\n";
    let g = ok(df);
    let r = runs(&g).pop().expect("run");
    assert_eq!(r.network, Network::None);
    assert_eq!(r.security, Security::Insecure);
    let kinds: Vec<(MountKind, &str)> = r
        .mounts
        .iter()
        .map(|m| (m.spec.kind, m.spec.target.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (MountKind::Cache, "/w/cache"),
            (MountKind::Bind, "/lock"),
            (MountKind::Tmpfs, "/tmp"),
            (MountKind::Secret, "/run/secrets/tok")
        ]
    );
    // The bind mount's stage is an input of the RUN vertex.
    let run = g
        .dag
        .node_indices()
        .rfind(|&n| matches!(g.dag[n].op, Op::Run(_)))
        .expect("run");
    let inputs = g
        .dag
        .neighbors_directed(run, petgraph::Direction::Incoming)
        .count();
    assert_eq!(inputs, 2);
}

#[test]
fn add_and_copy_flags() {
    let df = "FROM busybox\nADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://127.0.0.1:8000/dir/file.txt?x=1 /d/\nADD --unpack=false a.tar /t/\nCOPY --parents --exclude=*.md --exclude=tmp --link ./src/./a/*.rs /dst/\n";
    let g = ok(df);
    let c = copies(&g);
    assert_eq!(
        c[0].srcs,
        [Source::Url {
            url: "https://127.0.0.1:8000/dir/file.txt?x=1".into(),
            checksum: Some(
                "sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d".into()
            ),
            name: "file.txt".into()
        }]
    );
    assert!(c[0].unpack && !c[1].unpack);
    assert!(c[2].parents && c[2].link && !c[2].unpack);
    assert_eq!(c[2].excludes, ["*.md", "tmp"]);
    assert_eq!(
        history(&g)[2],
        "COPY --parents ./src/./a/*.rs /dst/ # buildkit"
    );
}

#[test]
fn escape_directive_and_syntax_directive() {
    let g = ok("# syntax=docker/dockerfile:1.7-labs\n# escape=`\nFROM busybox\nRUN echo a `\n  b\nENV P=C:\\dir\n");
    assert_eq!(runs(&g)[0].argv, ["/bin/sh", "-c", "echo a   b"]);
    assert!(g.config.config.env.contains(&"P=C:\\dir".to_string()));
}

#[test]
fn graph_prints_as_json_and_dot() {
    let g = ok(SEED);
    let j = g.to_json();
    let vertices = j["vertices"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(vertices, g.dag.node_count());
    let dot = g.to_dot();
    assert!(dot.starts_with("digraph kiln {"));
    assert_eq!(dot.matches(" -> ").count(), {
        let mut e: Vec<_> = g
            .dag
            .edge_indices()
            .filter_map(|e| g.dag.edge_endpoints(e))
            .collect();
        e.sort();
        e.dedup();
        e.len()
    });
}

/// Records the platform each image was asked for.
struct PlatformRecorder(RefCell<Vec<String>>);

impl ImageResolver for PlatformRecorder {
    fn resolve(&self, name: &str, p: &Platform) -> std::result::Result<ResolvedImage, String> {
        self.0.borrow_mut().push(format!("{name} {p}"));
        Ok(ResolvedImage {
            pinned: format!("{name}@sha256:{}", p.architecture),
            config: ImageConfig {
                architecture: p.architecture.clone(),
                os: p.os.clone(),
                ..Default::default()
            },
        })
    }
}

#[test]
fn stages_run_on_their_from_platform_and_target_args_follow_the_target() {
    let df = "FROM --platform=$BUILDPLATFORM busybox AS build\nARG TARGETARCH\n\
              RUN echo $TARGETARCH > /arch\nRUN date > /once\n\
              FROM busybox\nCOPY --from=build /arch /arch\nRUN uname -m\n";
    let arm64 = Platform::parse("linux/arm64").expect("platform");
    let r = PlatformRecorder(RefCell::new(Vec::new()));
    let opts = BuildOptions {
        file_name: "Dockerfile".into(),
        build_args: Vec::new(),
        target: None,
        platform: arm64.clone(),
        show_platform: true,
        run: Default::default(),
        no_cache_stages: Vec::new(),
        contexts: Vec::new(),
    };
    let g = compile(df, &opts, &r).expect("compiles");
    let host = Platform::host();
    let mut asked = r.0.borrow().clone();
    asked.sort();
    assert_eq!(
        asked,
        [format!("busybox {host}"), "busybox linux/arm64".to_string()]
    );
    let runs: Vec<(String, Platform, String)> = g
        .dag
        .node_indices()
        .filter_map(|n| match &g.dag[n].op {
            Op::Run(r) => Some((g.dag[n].name.clone(), r.platform.clone(), r.argv.join(" "))),
            _ => None,
        })
        .collect();
    assert_eq!(runs.len(), 3);
    // The builder runs natively and sees the target's args; the final stage runs as
    // the target.
    assert_eq!(runs[0].1, host);
    assert!(runs[0].2.contains("echo $TARGETARCH"), "{:?}", runs[0]);
    assert!(
        runs[0].0.starts_with(&format!("[{host} build 2/3]")),
        "{}",
        runs[0].0
    );
    assert_eq!(runs[2].1, arm64);
    assert!(
        runs[2].0.starts_with("[linux/arm64 stage-1 3/3]"),
        "{}",
        runs[2].0
    );
    assert_eq!(g.config.architecture, "arm64");
    let env_has = |n: usize, kv: &str| match &g.dag[g.dag.node_indices().nth(n).expect("n")].op {
        Op::Run(r) => r.env.iter().any(|e| e == kv),
        _ => false,
    };
    let first_run = g
        .dag
        .node_indices()
        .position(|n| matches!(g.dag[n].op, Op::Run(_)))
        .expect("run");
    assert!(env_has(first_run, "TARGETARCH=arm64"));
}

#[test]
fn merged_platform_graphs_share_what_does_not_depend_on_the_target() {
    let df = "FROM --platform=$BUILDPLATFORM busybox AS build\nRUN date > /once\n\
              FROM busybox\nCOPY --from=build /once /once\nRUN cat /once\n";
    let graphs: Vec<BuildGraph> = ["linux/amd64", "linux/arm64"]
        .iter()
        .map(|p| {
            let opts = BuildOptions {
                file_name: "Dockerfile".into(),
                build_args: Vec::new(),
                target: None,
                platform: Platform::parse(p).expect("platform"),
                show_platform: true,
                run: Default::default(),
                no_cache_stages: Vec::new(),
                contexts: Vec::new(),
            };
            let r = PlatformRecorder(RefCell::new(Vec::new()));
            compile(df, &opts, &r).expect("compiles")
        })
        .collect();
    let m = crate::merge(&graphs);
    let runs = |needle: &str| {
        m.dag
            .node_indices()
            .filter(|&n| matches!(&m.dag[n].op, Op::Run(r) if r.argv.join(" ").contains(needle)))
            .count()
    };
    // The builder's step once; the final stage's once per target.
    assert_eq!(runs("date"), 1);
    assert_eq!(runs("cat /once"), 2);
    // Each platform's target maps to a distinct vertex, and COPY --from points into
    // the merged graph.
    let t0 = m.maps[0][&graphs[0].target];
    let t1 = m.maps[1][&graphs[1].target];
    assert_ne!(t0, t1);
    for n in m.dag.node_indices() {
        if let Op::Copy(c) = &m.dag[n].op {
            let CopyFrom::Step(src) = c.from else {
                panic!("copy from a step")
            };
            assert!(m
                .dag
                .neighbors_directed(n, petgraph::Direction::Incoming)
                .any(|i| i == src));
        }
    }
}

#[test]
fn an_image_name_close_to_a_stage_gets_buildkit_s_suggestion() {
    assert_eq!(super::levenshtein("biulder", "builder"), 2);
    assert_eq!(super::levenshtein("", "abc"), 3);
    assert_eq!(super::levenshtein("kitten", "sitting"), 3);
    let opts = ["builder", "app"];
    assert_eq!(
        super::suggest("biulder", opts.iter().copied()),
        Some("builder".into())
    );
    assert_eq!(super::suggest("builder", opts.iter().copied()), None);
    assert_eq!(super::suggest("compiler", opts.iter().copied()), None);
}

#[test]
fn a_snippet_points_at_the_instruction() {
    let text = "FROM a\n\n  RUN false\r\n";
    assert_eq!(
        crate::snippet("Dockerfile", text, 3).as_deref(),
        Some("Dockerfile:3\n   3 |   RUN false\n     |   ^")
    );
    assert_eq!(crate::snippet("Dockerfile", text, 0), None);
    assert_eq!(crate::snippet("Dockerfile", text, 9), None);
}

#[test]
fn add_of_a_git_repository_names_its_ref_and_subdirectory() {
    let g = ok("FROM busybox\nADD --keep-git-dir=true git://127.0.0.1/r.git#v1.2:docs /d/\nADD https://127.0.0.1/r.git /all/\n");
    let srcs: Vec<&Source> = g
        .dag
        .node_weights()
        .filter_map(|s| match &s.op {
            Op::Copy(c) => c.srcs.first(),
            _ => None,
        })
        .collect();
    assert_eq!(
        srcs,
        [
            &Source::Git {
                url: "git://127.0.0.1/r.git".into(),
                reference: Some("v1.2".into()),
                subdir: "docs".into(),
                keep_git_dir: true
            },
            &Source::Git {
                url: "https://127.0.0.1/r.git".into(),
                reference: None,
                subdir: String::new(),
                keep_git_dir: false
            },
        ]
    );
}
