//! buildx's command line: flags CI scripts pass, `-q`, completions, the usage line.

use super::{kiln_bin, Case};
use std::fs;
use std::process::Command;

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn quiet_prints_the_image_id_alone() {
    let case = Case::new("FROM REGISTRY/library/busybox:latest\nRUN echo quiet > /q\n");
    let iid = case.path("iid");
    let archive = case.path("out.tar");
    let run = case
        .build(&[
            "-q",
            "--iidfile",
            iid.to_str().expect("utf8"),
            "-o",
            &format!("type=oci,dest={}", archive.display()),
        ])
        .expect_ok();
    let id = fs::read_to_string(&iid).expect("iidfile");
    assert_eq!(run.stdout, format!("{id}\n"));
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    assert!(
        !run.stderr.contains("RUN echo"),
        "no progress: {}",
        run.stderr
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn attestations_turned_off_are_accepted_and_asked_for_are_refused() {
    let case = Case::new("FROM REGISTRY/library/busybox:latest\n");
    case.build(&[
        "--provenance=false",
        "--sbom=false",
        "--attest",
        "type=provenance,disabled=true",
        "--attest",
        "type=sbom,disabled=true",
    ])
    .expect_ok();
    for (args, why) in [
        (
            &["--provenance=mode=max"][..],
            "--provenance=mode=max: kiln does not make attestations yet",
        ),
        (
            &["--sbom=true"][..],
            "--sbom=true: kiln does not make attestations yet",
        ),
        (
            &["--attest", "type=sbom"][..],
            "kiln does not make sbom attestations yet",
        ),
        (
            &["--attest", "type=other,disabled=true"][..],
            "expected type=provenance or type=sbom",
        ),
    ] {
        let run = case.build(args);
        assert!(!run.ok, "{args:?}");
        assert!(run.stderr.contains(why), "{args:?}: {}", run.stderr);
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn completions_parse_and_the_usage_line_says_kiln() {
    let out = Command::new(kiln_bin())
        .args(["completion", "bash"])
        .output()
        .expect("kiln completion");
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        script.contains("_kiln()") && script.contains("--cache-from"),
        "{script}"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("kiln.bash");
    fs::write(&file, &script).expect("write");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .status()
        .expect("bash");
    assert!(syntax.success(), "bash -n");
    // Under another file name, the usage still names kiln.
    let renamed = dir.path().join("kiln-1.2-x86_64");
    std::os::unix::fs::symlink(kiln_bin(), &renamed).expect("symlink");
    let help = Command::new(&renamed).arg("--help").output().expect("help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Usage: kiln [OPTIONS] <COMMAND>"), "{text}");
}

/// `kiln build` with PATH set to `path` (and nothing else changed).
fn build_with_path(case: &Case, path: &std::path::Path, args: &[&str]) -> super::Run {
    let out = Command::new(kiln_bin())
        .arg("build")
        .arg("--root")
        .arg(case.path("store"))
        .args(["--progress", "plain"])
        .args(args)
        .arg(case.ctx())
        .env("PATH", path)
        .output()
        .expect("run kiln");
    super::Run::from(out)
}

/// A directory for PATH with what kiln itself runs (newuidmap, newgidmap) and, as
/// `names`, a fake engine that records the archive its `load` reads into `record`.
fn fake_engines(
    case: &Case,
    dir: &str,
    names: &[&str],
    record: &std::path::Path,
) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = case.path(dir);
    fs::create_dir_all(&bin).expect("mkdir");
    for tool in ["newuidmap", "newgidmap"] {
        if let Ok(p) = which(tool) {
            std::os::unix::fs::symlink(p, bin.join(tool)).expect("symlink");
        }
    }
    for name in names {
        let p = bin.join(name);
        fs::write(
            &p,
            format!(
                "#!/bin/sh\n[ \"$1\" = load ] || {{ echo \"unexpected: $*\" >&2; exit 2; }}\n/bin/cat > {}\necho \"Loaded image: by {name}\"\n",
                record.display()
            ),
        )
        .expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    bin
}

fn which(tool: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn load_streams_a_docker_archive_into_docker_or_podman() {
    let case = Case::new("FROM REGISTRY/library/busybox:latest\nRUN echo loaded > /l\n");
    let record = case.path("loaded.tar");
    // docker first when both are there.
    let both = fake_engines(&case, "both", &["docker", "podman"], &record);
    let run = build_with_path(&case, &both, &["--load", "-t", "e2e/loaded:v1"]).expect_ok();
    assert!(
        run.stderr.contains("importing to docker")
            && run.stderr.contains("Loaded image: by docker"),
        "{}",
        run.stderr
    );
    // What docker load read is a Docker archive of the image, tagged as asked.
    let reference = format!("docker-archive:{}", record.display());
    let inspect = super::json(&super::tool("skopeo", &["inspect", &reference]));
    assert_eq!(
        inspect["Layers"].as_array().map(Vec::len),
        Some(2),
        "{inspect}"
    );
    let manifest = super::json(&super::tool(
        "tar",
        &["-xOf", record.to_str().expect("utf8"), "manifest.json"],
    ));
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["e2e/loaded:v1"]),
        "{manifest}"
    );
    let cfg = super::image_config(&reference);
    assert_eq!(
        cfg["rootfs"]["diff_ids"].as_array().map(Vec::len),
        Some(2),
        "{cfg}"
    );
    fs::remove_file(&record).expect("rm");
    // podman when there is no docker; `-o type=docker` without dest loads too.
    let podman = fake_engines(&case, "podman-only", &["podman"], &record);
    let run = build_with_path(
        &case,
        &podman,
        &["-o", "type=docker", "-t", "e2e/loaded:v2"],
    )
    .expect_ok();
    assert!(
        run.stderr.contains("Loaded image: by podman"),
        "{}",
        run.stderr
    );
    super::tool(
        "skopeo",
        &["inspect", &format!("docker-archive:{}", record.display())],
    );
    // Neither: a clear error naming both.
    let none = fake_engines(&case, "no-engine", &[], &record);
    let run = build_with_path(&case, &none, &["--load"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("--load needs docker or podman on PATH"),
        "{}",
        run.stderr
    );
    // An engine that fails: its message, and a failed build.
    let broken = case.path("broken");
    fs::create_dir_all(&broken).expect("mkdir");
    for tool in ["newuidmap", "newgidmap"] {
        if let Ok(p) = which(tool) {
            std::os::unix::fs::symlink(p, broken.join(tool)).expect("symlink");
        }
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let p = broken.join("docker");
        fs::write(
            &p,
            "#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n",
        )
        .expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let run = build_with_path(&case, &broken, &["--load"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("docker load: it exited with")
            && run.stderr.contains("Cannot connect to the Docker daemon"),
        "{}",
        run.stderr
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn network_add_host_shm_size_and_ulimit_reach_every_run() {
    let reg = super::registry();
    let case = Case::new(&format!(
        "FROM REGISTRY/library/busybox:latest\n\
         RUN (wget -q -O- http://{reg}/v2/ >/dev/null && echo net=yes || echo net=no) > /net\n\
         RUN grep -v localhost /etc/hosts > /hosts; ulimit -Sn > /nofile; ulimit -Hn >> /nofile; \
             df -k /dev/shm | tail -1 | awk '{{print $2}}' > /shm\n"
    ));
    let out = case.path("out");
    let dest = format!("type=local,dest={}", out.display());
    let read = |f: &str| fs::read_to_string(out.join(f)).expect("read");
    let run = case
        .build(&[
            "--network",
            "none",
            "--add-host",
            "db.local:10.1.2.3",
            "--add-host",
            "v6=[::2]",
            "--shm-size",
            "8m",
            "--ulimit",
            "nofile=512:1000",
            "-o",
            &dest,
        ])
        .expect_ok();
    assert_eq!(read("net"), "net=no\n", "{}", run.stderr);
    assert_eq!(read("hosts"), "10.1.2.3\tdb.local\n::2\tv6\n");
    assert_eq!(read("nofile"), "512\n1000\n");
    assert_eq!(read("shm"), "8192\n");
    // The settings are part of the steps' keys: without them nothing is cached, and
    // the default network reaches the registry.
    let run = case.build(&["-o", &dest]).expect_ok();
    assert!(!run.step_ended("RUN (wget", "CACHED"), "{}", run.stderr);
    assert_eq!(read("net"), "net=yes\n");
    assert_eq!(read("hosts"), "");
    // A hard limit above kiln's own cannot be had rootless: refused by name.
    let run = case.build(&["--ulimit", "nofile=64:99999999999"]);
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains("--ulimit nofile=64:99999999999: the hard limit kiln runs under is"),
        "{}",
        run.stderr
    );
    for (args, why) in [
        (
            &["--ulimit", "files=1"][..],
            "invalid ulimit type \"files\"",
        ),
        (&["--add-host", "db"][..], "expected NAME:IP"),
        (&["--shm-size", "lots"][..], "expected a size"),
        (
            &["--network", "bridge"][..],
            "expected default, none or host",
        ),
        (
            &["--allow", "security.insecure"][..],
            "cannot grant RUN --security=insecure",
        ),
        (&["--cgroup-parent", "x.slice"][..], "no cgroup manager"),
    ] {
        let run = case.build(args);
        assert!(!run.ok, "{args:?}");
        assert!(run.stderr.contains(why), "{args:?}: {}", run.stderr);
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn run_network_host_needs_the_entitlement_as_in_buildkit() {
    let case =
        Case::new("FROM REGISTRY/library/busybox:latest\nRUN --network=host echo host > /h\n");
    let run = case.build(&[]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("Dockerfile:2")
            && run
                .stderr
                .contains("network.host is not allowed (pass --allow network.host)"),
        "{}",
        run.stderr
    );
    case.build(&["--allow", "network.host"]).expect_ok();
    // `--network host` asks for it, as in buildx.
    case.build(&["--network", "host"]).expect_ok();
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn pull_asks_the_registry_again_where_the_store_pinned_a_tag() {
    let reg = super::registry();
    let name = format!(
        "{reg}/e2e/pull-{}-{}:t",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let base = Case::new("FROM REGISTRY/library/busybox:latest\nARG V\nRUN echo $V > /v\n");
    let push = |v: &str| {
        base.build(&["--push", "-t", &name, "--build-arg", &format!("V={v}")])
            .expect_ok()
    };
    push("one");
    let case = Case::new(&format!("FROM {name}\nRUN cat /v > /seen\n"));
    let out = case.path("out");
    let dest = format!("type=local,dest={}", out.display());
    let seen = || fs::read_to_string(out.join("seen")).expect("seen");
    case.build(&["-o", &dest]).expect_ok();
    assert_eq!(seen(), "one\n");
    push("two");
    // The store pinned the tag: a build without --pull keeps what it had.
    let run = case.build(&["-o", &dest]).expect_ok();
    assert!(
        run.stderr
            .contains("as pinned in the store (--pull asks the registry again)"),
        "{}",
        run.stderr
    );
    assert_eq!(seen(), "one\n");
    // --pull resolves the tag again, and the pin follows.
    let run = case.build(&["--pull", "-o", &dest]).expect_ok();
    assert!(
        !run.stderr.contains("as pinned in the store"),
        "{}",
        run.stderr
    );
    assert_eq!(seen(), "two\n");
    case.build(&["-o", &dest]).expect_ok();
    assert_eq!(seen(), "two\n");
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn annotations_no_cache_filter_builder_and_debug() {
    let case = Case::new(
        "FROM REGISTRY/library/busybox:latest AS deps\nRUN echo deps > /d\n\
         FROM REGISTRY/library/busybox:latest\nCOPY --from=deps /d /d\nRUN echo app > /a\n",
    );
    let archive = case.path("out.tar");
    let dest = format!("type=oci,dest={}", archive.display());
    case.build(&[
        "--platform",
        "linux/amd64",
        "--annotation",
        "org.opencontainers.image.title=kiln-e2e",
        "--annotation",
        "index,manifest-descriptor:org.example.both=yes",
        "-o",
        &dest,
    ])
    .expect_ok();
    let layout = case.path("layout");
    super::extract_archive(&archive, &layout);
    let index = super::json(&fs::read_to_string(layout.join("index.json")).expect("index"));
    assert_eq!(index["annotations"]["org.example.both"], "yes", "{index}");
    let desc = &index["manifests"][0];
    assert_eq!(desc["annotations"]["org.example.both"], "yes", "{index}");
    let digest = desc["digest"].as_str().expect("digest");
    let manifest = super::json(
        &fs::read_to_string(layout.join("blobs/sha256").join(&digest[7..])).expect("manifest"),
    );
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.title"], "kiln-e2e",
        "{manifest}"
    );
    assert!(
        manifest["annotations"].get("org.example.both").is_none(),
        "{manifest}"
    );

    // --no-cache-filter: the stage named runs again, the others come from the cache.
    let run = case
        .build(&["--no-cache-filter", "deps", "--builder", "ci-builder"])
        .expect_ok();
    assert!(
        !run.step_ended("[deps 2/2] RUN echo deps", "CACHED"),
        "{}",
        run.stderr
    );
    assert!(
        run.step_ended("[stage-1 3/3] RUN echo app", "CACHED"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("builder \"ci-builder\": kiln builds in this process"),
        "{}",
        run.stderr
    );
    // -D: the debug log, with each step's cache key.
    let run = case.build(&["-D"]).expect_ok();
    assert!(
        run.stderr.contains("DEBUG") && run.stderr.contains("RUN echo app > /a: cache key "),
        "{}",
        run.stderr
    );
    let run = case.build(&[]).expect_ok();
    assert!(
        run.step_ended("[deps 2/2] RUN echo deps", "CACHED"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("DEBUG"), "{}", run.stderr);
}
