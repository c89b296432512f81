//! `--emit-llb`: the seed Dockerfile as BuildKit LLB, read back with kiln's protobuf
//! types and with `protoc --decode_raw`, base images pinned to the digests skopeo
//! reads from the registry.

use super::*;
use kiln_llb::pb;
use prost::Message;

/// `kiln build --emit-llb ARGS` on the seed example; (stdout bytes, stderr, success).
fn emit(case: &Case, args: &[&str]) -> (Vec<u8>, String, bool) {
    let build_arg = format!("REGISTRY={}", registry());
    let out = Command::new(kiln_bin())
        .arg("build")
        .arg("--root")
        .arg(case.path("store"))
        .args([
            "--progress",
            "plain",
            "--emit-llb",
            "--build-arg",
            &build_arg,
        ])
        .args(args)
        .arg(case.ctx())
        .output()
        .expect("run kiln");
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into(),
        out.status.success(),
    )
}

fn seed_case() -> Case {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/seed");
    // As it is: Case::new would rewrite its `${REGISTRY}`, which --build-arg sets.
    let case = Case::new("");
    case.file(
        "Dockerfile",
        &fs::read_to_string(seed.join("Dockerfile")).expect("seed"),
    );
    case.file(
        "site/index.html",
        &fs::read_to_string(seed.join("site/index.html")).expect("site"),
    );
    case.file(".dockerignore", "*.log\n");
    case
}

/// The digest of the `arch` manifest of `image`, as skopeo reads it.
fn platform_digest(image: &str, arch: &str) -> String {
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{image}"),
        ],
    );
    let index = json(&raw);
    index["manifests"]
        .as_array()
        .expect("an index")
        .iter()
        .find(|m| m["platform"]["architecture"] == arch)
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("{image} has no {arch} manifest: {raw}"))
        .to_string()
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn the_seed_dockerfile_is_emitted_as_llb_for_buildctl() {
    let case = seed_case();
    let md = case.path("md.json");
    let md_arg = md.to_str().expect("utf8");
    let (bytes, stderr, ok) = emit(
        &case,
        &["--platform", "linux/arm64", "--metadata-file", md_arg],
    );
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("RUN"), "nothing is built: {stderr}");

    // protoc, knowing nothing of LLB, reads a Definition: repeated bytes (field 1) and
    // the metadata map (field 2).
    let raw = case.path("build.llb");
    fs::write(&raw, &bytes).expect("write");
    let decoded = Command::new("sh")
        .arg("-c")
        .arg(format!("protoc --decode_raw < {}", raw.display()))
        .output()
        .expect("protoc");
    assert!(
        decoded.status.success(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let text = String::from_utf8_lossy(&decoded.stdout);
    assert!(text.contains("1: \"") || text.contains("1 {"), "{text}");
    assert!(text.contains("llb.customname"), "{text}");

    let d = pb::Definition::decode(bytes.as_slice()).expect("a Definition");
    let ops: Vec<(String, pb::Op)> = d
        .def
        .iter()
        .map(|b| {
            (
                kiln_llb::digest(b),
                pb::Op::decode(b.as_slice()).expect("an Op"),
            )
        })
        .collect();
    let find = |dg: &str| &ops.iter().find(|(x, _)| x == dg).expect("defined").1;

    // Base images pinned to the registry's manifests for their platforms.
    let r = registry();
    let host = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    let sources: Vec<(String, String)> = ops
        .iter()
        .filter_map(|(_, o)| match &o.op {
            Some(pb::op::Kind::Source(s)) => Some((
                s.identifier.clone(),
                o.platform
                    .as_ref()
                    .map(|p| p.architecture.clone())
                    .unwrap_or_default(),
            )),
            _ => None,
        })
        .collect();
    let busybox = format!(
        "docker-image://{r}/library/busybox@{}",
        platform_digest(&format!("{r}/library/busybox:latest"), "arm64")
    );
    assert!(sources.contains(&(busybox, "arm64".into())), "{sources:?}");
    assert!(
        sources.iter().any(|(i, a)| i
            .starts_with(&format!("docker-image://{r}/library/debian@sha256:"))
            && a == host),
        "{sources:?}"
    );
    let local = ops
        .iter()
        .find_map(|(_, o)| match &o.op {
            Some(pb::op::Kind::Source(s)) if s.identifier == "local://context" => Some(s),
            _ => None,
        })
        .expect("the context");
    assert_eq!(local.attrs["local.excludepatterns"], r#"["*.log"]"#);
    assert_eq!(local.attrs["local.includepatterns"], r#"["site"]"#);

    // The result: the final RUN, as arm64, on COPY --from=builder of the builder's RUN.
    let (_, last) = ops.last().expect("ops");
    assert!(last.op.is_none() && last.inputs.len() == 1);
    let run = find(&last.inputs[0].digest);
    let Some(pb::op::Kind::Exec(e)) = &run.op else {
        panic!("the result is not a RUN")
    };
    assert_eq!(
        run.platform.as_ref().expect("platform").architecture,
        "arm64"
    );
    let meta = e.meta.as_ref().expect("meta");
    assert!(
        meta.args.last().expect("args").contains("served on"),
        "{:?}",
        meta.args
    );
    assert_eq!(meta.cwd, "/app");
    let copy = find(&run.inputs[e.mounts[0].input as usize].digest);
    let Some(pb::op::Kind::File(f)) = &copy.op else {
        panic!("not COPY")
    };
    let Some(pb::file_action::Action::Copy(c)) = &f.actions[0].action else {
        panic!("not a copy")
    };
    assert_eq!(c.dest, "/app/site/");
    let builder_digest = &copy.inputs[f.actions[0].secondary_input as usize].digest;
    let builder = find(builder_digest);
    let Some(pb::op::Kind::Exec(b)) = &builder.op else {
        panic!("COPY --from is not from the builder's RUN")
    };
    assert_eq!(
        builder.platform.as_ref().expect("platform").architecture,
        host
    );
    assert_eq!(b.meta.as_ref().expect("meta").cwd, "/build");
    assert!(d.metadata[&last.inputs[0].digest].description["llb.customname"].contains("RUN echo"));

    // The image config, as BuildKit's exporter metadata.
    let m = json(&fs::read_to_string(&md).expect("metadata"));
    let config = &m["containerimage.config"];
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["config"]["Cmd"][0], "httpd");
    assert!(
        config["config"]["ExposedPorts"]["8080/tcp"].is_object(),
        "{config}"
    );
    assert_eq!(m["containerimage.config/linux/arm64"], *config);
    assert_eq!(m["llb.definition.digest"], kiln_llb::digest(&bytes));

    // The same build gives the same bytes; another target shares the builder.
    let (again, _, _) = emit(&case, &["--platform", "linux/arm64"]);
    assert_eq!(again, bytes, "the definition is not reproducible");
    let (amd, stderr, ok) = emit(&case, &["--platform", "linux/amd64"]);
    assert!(ok, "{stderr}");
    let amd = pb::Definition::decode(amd.as_slice()).expect("a Definition");
    assert!(
        amd.def
            .iter()
            .any(|o| &kiln_llb::digest(o) == builder_digest),
        "the amd64 definition does not share the builder's RUN"
    );

    // One definition holds one platform.
    let (out, stderr, ok) = emit(&case, &["--platform", "linux/amd64,linux/arm64"]);
    assert!(!ok && out.is_empty(), "{stderr}");
    assert!(
        stderr.contains("--emit-llb writes one definition, for one platform"),
        "{stderr}"
    );
}
