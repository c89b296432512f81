use super::*;
use kiln_frontend::{BuildOptions, ImageConfig, ImageResolver, ResolvedImage};

/// Pins every image to a digest naming its platform.
struct Pin;

impl ImageResolver for Pin {
    fn resolve(&self, name: &str, p: &Platform) -> std::result::Result<ResolvedImage, String> {
        Ok(ResolvedImage {
            pinned: format!(
                "{}@sha256:{:0>64}",
                name.split(':').next().unwrap_or(name),
                p.architecture.len()
            ),
            config: ImageConfig {
                architecture: p.architecture.clone(),
                os: p.os.clone(),
                ..Default::default()
            },
        })
    }
}

/// The seed's shape: a builder on the build platform with a cache mount, a final
/// stage for the target that copies from it.
const SEED: &str = r#"# syntax=docker/dockerfile:1
FROM --platform=$BUILDPLATFORM r.test/library/debian:bookworm-slim AS builder
WORKDIR /src
COPY app/ ./
RUN --mount=type=cache,target=/root/.cache,id=build,sharing=locked sh -c 'cat *.txt > /out'
FROM r.test/library/busybox:latest
ARG TARGETARCH
COPY --from=builder --chown=1000:app /out /app/out
COPY <<EOT /etc/motd
hello
EOT
RUN --mount=type=secret,id=tok --mount=type=tmpfs,target=/scratch,size=1048576 --network=none echo $TARGETARCH > /arch
CMD ["/app/out"]
"#;

fn graph(text: &str, platform: &str) -> BuildGraph {
    let opts = BuildOptions {
        file_name: "Dockerfile".into(),
        build_args: Vec::new(),
        target: None,
        platform: Platform::parse(platform).expect("platform"),
        show_platform: false,
        run: Default::default(),
        no_cache_stages: Vec::new(),
        contexts: Vec::new(),
    };
    kiln_frontend::compile(text, &opts, &Pin).expect("compile")
}

fn ops(d: &pb::Definition) -> Vec<(String, pb::Op)> {
    d.def
        .iter()
        .map(|b| (digest(b), pb::Op::decode(b.as_slice()).expect("op decodes")))
        .collect()
}

/// The source ops of `g`'s definition.
fn sources(g: &BuildGraph, o: &Options) -> Vec<pb::SourceOp> {
    let d = pb::Definition::decode(marshal(g, o).expect("marshal").as_slice()).expect("decode");
    ops(&d)
        .into_iter()
        .filter_map(|(_, o)| match o.op {
            Some(pb::op::Kind::Source(s)) => Some(s),
            _ => None,
        })
        .collect()
}

fn by_digest<'a>(ops: &'a [(String, pb::Op)], d: &str) -> &'a pb::Op {
    &ops.iter()
        .find(|(x, _)| x == d)
        .expect("input is defined")
        .1
}

#[test]
fn seed_dockerfile_becomes_a_definition_buildkit_can_load() {
    let opts = Options {
        excludes: vec!["*.log".into()],
        ..Default::default()
    };
    let bytes = marshal(&graph(SEED, "linux/arm64"), &opts).expect("llb");
    let d = pb::Definition::decode(bytes.as_slice()).expect("definition decodes");
    let ops = ops(&d);
    // Every input is defined before it is used, and every op has metadata.
    for (i, (dg, op)) in ops.iter().enumerate() {
        for inp in &op.inputs {
            let at = ops
                .iter()
                .position(|(x, _)| x == &inp.digest)
                .expect("defined");
            assert!(at < i, "{} used before it is defined", inp.digest);
        }
        if i + 1 < ops.len() {
            assert!(d.metadata.contains_key(dg), "no metadata for {dg}");
        }
    }
    // The terminal op: no operation, one input, the final RUN.
    let (_, last) = ops.last().expect("ops");
    assert!(last.op.is_none());
    assert_eq!(last.inputs.len(), 1);
    let Some(pb::op::Kind::Exec(run)) = &by_digest(&ops, &last.inputs[0].digest).op else {
        panic!("the result is not the final RUN");
    };
    let final_run = by_digest(&ops, &last.inputs[0].digest);
    assert_eq!(
        final_run.platform.as_ref().expect("platform").architecture,
        "arm64"
    );
    let meta = run.meta.as_ref().expect("meta");
    assert_eq!(meta.args.last().expect("args"), "echo $TARGETARCH > /arch");
    assert!(
        meta.env.iter().any(|e| e == "TARGETARCH=arm64"),
        "{:?}",
        meta.env
    );
    assert_eq!(run.network, pb::NetMode::None as i32);
    assert_eq!(run.mounts[0].dest, "/");
    assert_eq!(run.mounts[0].output, 0);
    let secret = run
        .mounts
        .iter()
        .find(|m| m.mount_type == pb::MountType::Secret as i32)
        .expect("secret");
    assert_eq!(secret.dest, "/run/secrets/tok");
    assert_eq!(secret.secret_opt.as_ref().expect("opt").id, "tok");
    let tmpfs = run
        .mounts
        .iter()
        .find(|m| m.mount_type == pb::MountType::Tmpfs as i32)
        .expect("tmpfs");
    assert_eq!(tmpfs.tmpfs_opt.as_ref().expect("size").size, 1 << 20);
    let caps = &d.metadata[&last.inputs[0].digest].caps;
    for c in [
        "exec.meta.base",
        "exec.mount.secret",
        "exec.mount.tmpfs.size",
        "exec.meta.network",
        "platform",
    ] {
        assert!(caps.contains_key(c), "{c} missing from {caps:?}");
    }

    // Images: the builder's for the build platform, the final stage's for the target.
    let images: Vec<(String, String)> = ops
        .iter()
        .filter_map(|(_, o)| match &o.op {
            Some(pb::op::Kind::Source(s)) if s.identifier.starts_with("docker-image://") => Some((
                s.identifier.clone(),
                o.platform.as_ref().expect("platform").architecture.clone(),
            )),
            _ => None,
        })
        .collect();
    let host = Platform::host().architecture;
    assert!(
        images.iter().any(
            |(i, a)| i.starts_with("docker-image://r.test/library/debian@sha256:") && *a == host
        ),
        "{images:?}"
    );
    assert!(
        images.iter().any(
            |(i, a)| i.starts_with("docker-image://r.test/library/busybox@sha256:") && a == "arm64"
        ),
        "{images:?}"
    );

    // The context: .dockerignore excludes, the COPY's source as include pattern.
    let local = ops
        .iter()
        .find_map(|(_, o)| match &o.op {
            Some(pb::op::Kind::Source(s)) if s.identifier == "local://context" => Some(s),
            _ => None,
        })
        .expect("local source");
    assert_eq!(local.attrs["local.excludepatterns"], r#"["*.log"]"#);
    assert_eq!(local.attrs["local.includepatterns"], r#"["app"]"#);

    // The builder's RUN: a locked cache mount, on the build platform.
    let (build_dg, build) = ops
        .iter()
        .find(|(_, o)| matches!(&o.op, Some(pb::op::Kind::Exec(e)) if e.mounts.iter().any(|m| m.mount_type == pb::MountType::Cache as i32)))
        .expect("builder RUN");
    let Some(pb::op::Kind::Exec(e)) = &build.op else {
        unreachable!()
    };
    let cache = e
        .mounts
        .iter()
        .find(|m| m.mount_type == pb::MountType::Cache as i32)
        .expect("cache");
    assert_eq!(cache.dest, "/root/.cache");
    assert_eq!(cache.output, -1);
    let opt = cache.cache_opt.as_ref().expect("cache opt");
    assert_eq!(
        (opt.id.as_str(), opt.sharing),
        ("build", pb::CacheSharingOpt::Locked as i32)
    );
    assert_eq!(
        build.platform.as_ref().expect("platform").architecture,
        host
    );
    assert_eq!(e.meta.as_ref().expect("meta").cwd, "/src");

    // Its root is COPY app/ onto WORKDIR's mkdir onto the Debian image.
    let copy = by_digest(&ops, &build.inputs[e.mounts[0].input as usize].digest);
    let Some(pb::op::Kind::File(f)) = &copy.op else {
        panic!("not a file op")
    };
    let Some(pb::file_action::Action::Copy(c)) = &f.actions[0].action else {
        panic!("not a copy")
    };
    assert_eq!((c.src.as_str(), c.dest.as_str()), ("/app", "/src/"));
    assert!(c.create_dest_path && c.allow_wildcard && c.follow_symlink && c.dir_copy_contents);
    assert_eq!(c.mode, -1);
    let mkdir = by_digest(&ops, &copy.inputs[f.actions[0].input as usize].digest);
    let Some(pb::op::Kind::File(f)) = &mkdir.op else {
        panic!("not a file op")
    };
    let Some(pb::file_action::Action::Mkdir(m)) = &f.actions[0].action else {
        panic!("not a mkdir")
    };
    assert_eq!((m.path.as_str(), m.make_parents), ("/src", true));

    // COPY --from=builder --chown=1000:app: by id and by name, from the builder's RUN.
    let from_builder = ops
        .iter()
        .find_map(|(_, o)| match &o.op {
            Some(pb::op::Kind::File(f)) => f.actions.iter().find_map(|a| match &a.action {
                Some(pb::file_action::Action::Copy(c)) if c.src == "/out" => Some((o, a, c)),
                _ => None,
            }),
            _ => None,
        })
        .expect("COPY --from");
    let (op, action, c) = from_builder;
    assert_eq!(&op.inputs[action.secondary_input as usize].digest, build_dg);
    let owner = c.owner.as_ref().expect("owner");
    assert_eq!(
        owner.user.as_ref().expect("user").user,
        Some(pb::user_opt::User::ById(1000))
    );
    assert!(
        matches!(&owner.group.as_ref().expect("group").user, Some(pb::user_opt::User::ByName(n)) if n.name == "app" && n.input == action.input)
    );

    // The here-document: mkfile on scratch, then copied.
    let heredoc = ops
        .iter()
        .find_map(|(_, o)| match &o.op {
            Some(pb::op::Kind::File(f))
                if f.actions
                    .iter()
                    .any(|a| matches!(&a.action, Some(pb::file_action::Action::Mkfile(_)))) =>
            {
                Some(f)
            }
            _ => None,
        })
        .expect("heredoc");
    let Some(pb::file_action::Action::Mkfile(mk)) = &heredoc.actions[0].action else {
        panic!()
    };
    assert_eq!(
        (mk.path.as_str(), mk.data.as_slice()),
        ("/EOT", b"hello\n".as_slice())
    );
    assert_eq!(heredoc.actions[0].input, -1);
    assert_eq!(heredoc.actions[1].output, 0);
}

#[test]
fn the_same_dockerfile_gives_the_same_bytes() {
    let opts = Options::default();
    let a = marshal(&graph(SEED, "linux/arm64"), &opts).expect("llb");
    let b = marshal(&graph(SEED, "linux/arm64"), &opts).expect("llb");
    assert_eq!(a, b);
    let amd = marshal(&graph(SEED, "linux/amd64"), &opts).expect("llb");
    assert_ne!(a, amd, "the target platform is in the ops");
    let changed = marshal(
        &graph(&SEED.replace("cat *.txt", "cat *.md"), "linux/arm64"),
        &opts,
    )
    .expect("llb");
    assert_ne!(a, changed);
    // An op shared by both platforms (the builder) has the same digest in both.
    let da = pb::Definition::decode(a.as_slice()).expect("decode");
    let dm = pb::Definition::decode(amd.as_slice()).expect("decode");
    let shared = da.def.iter().filter(|x| dm.def.contains(x)).count();
    assert!(
        shared >= 4,
        "builder ops differ between targets ({shared} shared)"
    );
}

#[test]
fn what_llb_cannot_say_is_an_error_naming_the_line() {
    let g = graph("FROM r.test/a\nCOPY --parents a/./b /x/\n", "linux/amd64");
    let e = marshal(&g, &Options::default()).expect_err("parents");
    assert_eq!(
        e.to_string(),
        "line 2: [2/2] COPY --parents a/./b /x/: COPY --parents cannot be written as LLB yet"
    );
}

#[test]
fn scratch_alone_is_an_empty_definition() {
    let g = graph("FROM scratch\n", "linux/amd64");
    let d = definition(&g, &Options::default()).expect("llb");
    assert!(d.def.is_empty());
}

#[test]
fn remote_sources_are_buildkit_s_http_and_git_ops() {
    let g = graph(
        "FROM scratch\n\
         ADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 https://example.test/dl/tool.tgz /opt/\n\
         ADD --keep-git-dir=true https://example.test/org/repo.git#v1:docs /docs/\n",
        "linux/amd64",
    );
    let sources = sources(&g, &Options::default());
    let http = sources
        .iter()
        .find(|s| s.identifier == "https://example.test/dl/tool.tgz")
        .expect("http source");
    assert_eq!(http.attrs["http.filename"], "tool.tgz");
    assert!(http.attrs["http.checksum"].starts_with("sha256:0000"));
    let git = sources
        .iter()
        .find(|s| s.identifier == "git://example.test/org/repo.git#v1:docs")
        .expect("git source");
    assert_eq!(
        git.attrs["git.fullurl"],
        "https://example.test/org/repo.git"
    );
    assert_eq!(git.attrs["git.keepgitdir"], "true");
}

#[test]
fn fetched_named_contexts_are_the_sources_buildkit_makes_of_them() {
    use kiln_frontend::NamedContext;
    let layout = "/work/layouts/base";
    struct Layout;
    impl ImageResolver for Layout {
        fn resolve(&self, name: &str, p: &Platform) -> std::result::Result<ResolvedImage, String> {
            assert!(
                name.starts_with("oci-layout:///work/layouts/base"),
                "{name}"
            );
            Ok(ResolvedImage {
                pinned: format!("oci-layout:///work/layouts/base@sha256:{:0>64}", 7),
                config: ImageConfig {
                    architecture: p.architecture.clone(),
                    os: p.os.clone(),
                    ..Default::default()
                },
            })
        }
    }
    let opts = BuildOptions {
        file_name: "Dockerfile".into(),
        build_args: Vec::new(),
        target: None,
        platform: Platform::parse("linux/amd64").expect("platform"),
        show_platform: false,
        run: Default::default(),
        no_cache_stages: Vec::new(),
        contexts: vec![
            (
                "base".into(),
                NamedContext::Image(format!("oci-layout://{layout}:v1")),
            ),
            ("src".into(), NamedContext::Local),
            ("web".into(), NamedContext::Local),
        ],
    };
    let g = kiln_frontend::compile(
        "FROM base\nCOPY --from=src a /a\nCOPY --from=web context /w\n",
        &opts,
        &Layout,
    )
    .expect("compile");
    let mut o = Options::default();
    o.contexts.insert(
        "src".into(),
        NamedSource::Git {
            url: "git://example.test/repo.git".into(),
            reference: Some("main".into()),
            subdir: "sub".into(),
        },
    );
    o.contexts.insert(
        "web".into(),
        NamedSource::Http {
            url: "https://example.test/f.bin".into(),
        },
    );
    // Without the layout named: an error, not a docker-image:// of a path.
    let e = marshal(&g, &o).expect_err("layout not named");
    assert!(e.to_string().contains("OCI layout"), "{e}");
    o.contexts.insert(
        "base".into(),
        NamedSource::Layout {
            path: layout.into(),
        },
    );
    let sources = sources(&g, &o);
    let ids: Vec<&str> = sources.iter().map(|s| s.identifier.as_str()).collect();
    let image = sources
        .iter()
        .find(|s| s.identifier.starts_with("oci-layout://"))
        .unwrap_or_else(|| panic!("{ids:?}"));
    assert_eq!(
        image.identifier,
        format!("oci-layout://docker.io/library/base@sha256:{:0>64}", 7)
    );
    assert_eq!(image.attrs["oci.store"], "base");
    assert!(
        ids.contains(&"git://example.test/repo.git#main:sub"),
        "{ids:?}"
    );
    let http = sources
        .iter()
        .find(|s| s.identifier == "https://example.test/f.bin")
        .unwrap_or_else(|| panic!("{ids:?}"));
    assert_eq!(http.attrs["http.filename"], "context");
    assert!(!ids.iter().any(|i| i.starts_with("local://")), "{ids:?}");
}

#[test]
fn an_add_of_several_urls_chains_its_copies_after_every_input() {
    let g = graph(
        "FROM r.test/library/busybox:latest\nADD https://a.test/x https://a.test/y /both/\n",
        "linux/amd64",
    );
    let d = pb::Definition::decode(
        marshal(&g, &Options::default())
            .expect("marshal")
            .as_slice(),
    )
    .expect("decode");
    let (inputs, actions) = ops(&d)
        .into_iter()
        .find_map(|(_, o)| match o.op {
            Some(pb::op::Kind::File(f)) => Some((o.inputs.len() as i64, f.actions)),
            _ => None,
        })
        .expect("file op");
    // Inputs: the base and the two files; the second copy goes on the first's result.
    assert_eq!(inputs, 3);
    assert_eq!(actions.len(), 2);
    assert_eq!(actions[0].input, 0);
    assert_eq!(actions[1].input, inputs);
    assert_eq!(
        [actions[0].secondary_input, actions[1].secondary_input],
        [1, 2]
    );
    assert_eq!(actions[1].output, 0);
}
