//! `--platform`: foreign RUN steps under QEMU that kiln registers in its own user
//! namespace (the host has nothing registered), several platforms under one index,
//! and a `$BUILDPLATFORM` builder stage that runs once for all of them.

use super::store::build;
use super::*;

/// Says whether the host has QEMU registered. kiln registers its own interpreter in
/// its user namespace either way (that instance shadows the host's there, and the
/// tests check kiln's note that it did so); on CI nothing is registered on the host.
fn note_host_registrations() {
    let registered: Vec<String> = fs::read_dir("/proc/sys/fs/binfmt_misc")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.contains("qemu") || n.contains("aarch64"))
                .collect()
        })
        .unwrap_or_default();
    if !registered.is_empty() {
        eprintln!("note: the host has binfmt_misc registrations {registered:?}; kiln's own shadow them in its namespace");
    }
}

fn unpack_platform(case: &Case, archive: &Path, tag: &str, arch: &str) -> PathBuf {
    let layout = case.path(&format!("layout-{arch}"));
    extract_archive(archive, &layout);
    // skopeo picks the platform's manifest from the index; umoci unpacks it.
    let single = case.path(&format!("single-{arch}"));
    tool(
        "skopeo",
        &[
            "copy",
            "--override-arch",
            arch,
            &format!("oci:{}:{tag}", layout.display()),
            &format!("oci:{}:{tag}", single.display()),
        ],
    );
    umoci_unpack_layout(&single, tag, &case.path(&format!("bundle-{arch}")))
}

/// kiln's note that it registered QEMU for arm64 in its own user namespace.
fn assert_emulated_by_kiln(run: &Run) {
    assert!(
        run.stderr
            .contains("linux/arm64: RUN steps are emulated by")
            && run.stderr.contains("registered in kiln's user namespace"),
        "{}",
        run.stderr
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn a_foreign_run_executes_under_qemu_registered_in_kilns_namespace() {
    note_host_registrations();
    let case = Case::new("FROM REGISTRY/library/busybox\nRUN uname -m > /arch\n");
    let out = case.path("arm64.tar");
    let o = format!("type=oci,dest={}", out.display());
    let run = build(
        &case,
        &["--platform", "linux/arm64", "-o", &o, "-t", "arm:1"],
        &[],
    )
    .expect_ok();
    assert_emulated_by_kiln(&run);
    let rootfs = umoci_unpack(&case, &out, "1");
    assert_eq!(
        fs::read_to_string(rootfs.join("arch")).expect("arch"),
        "aarch64\n"
    );
    let config = image_config(&format!("oci-archive:{}:1", out.display()));
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["os"], "linux");
    // `kiln info` says so too.
    let info = super::store::kiln(&case, &["info"], &[]).expect_ok();
    assert!(
        info.stdout.contains("linux/arm64 (") && info.stdout.contains("registered by kiln"),
        "{}",
        info.stdout
    );
}

// As in BuildKit, a RUN after `ARG TARGETARCH` has the target in its environment
// and runs per target; the one before it does not.
const CROSS: &str = r#"FROM --platform=$BUILDPLATFORM REGISTRY/library/busybox AS build
RUN uname -m > /build-arch && cat /proc/sys/kernel/random/uuid > /once
ARG TARGETARCH
RUN echo "$TARGETARCH" > /target-arch
FROM REGISTRY/library/busybox
COPY --from=build /build-arch /once /target-arch /
RUN uname -m > /arch
"#;

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn busybox_pipelines_run_under_emulation() {
    // busybox picks its applet by argv[0]: QEMU must be registered with the P flag
    // (preserve argv[0]), as Debian registers it, or `ls /bin | wc -l` loops printing
    // busybox's usage. A timeout turns that hang into a failure.
    let case = Case::new(
        "FROM REGISTRY/library/busybox\nRUN ls /bin | wc -l > /count && echo a b | cut -d' ' -f2 > /cut\n",
    );
    let out = case.path("arm64.tar");
    let o = format!("type=oci,dest={}", out.display());
    let run: Run = Command::new("timeout")
        .arg("300")
        .arg(kiln_bin())
        .arg("--root")
        .arg(case.path("store"))
        .args(["build", "--progress", "plain", "--platform", "linux/arm64"])
        .args(["-o", &o, "-t", "arm:1"])
        .arg(case.ctx())
        .output()
        .expect("run kiln")
        .into();
    let run = run.expect_ok();
    assert_emulated_by_kiln(&run);
    let rootfs = umoci_unpack(&case, &out, "1");
    let count: u32 = fs::read_to_string(rootfs.join("count"))
        .expect("count")
        .trim()
        .parse()
        .expect("a number");
    assert!(count > 100, "busybox's applets in /bin: {count}");
    assert_eq!(fs::read_to_string(rootfs.join("cut")).expect("cut"), "b\n");
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn two_platforms_make_one_index_and_the_build_platform_stage_runs_once() {
    note_host_registrations();
    let case = Case::new(CROSS);
    let host = match std::env::consts::ARCH {
        "x86_64" => ("amd64", "x86_64"),
        "aarch64" => ("arm64", "aarch64"),
        other => panic!("no expectations for a {other} host"),
    };
    let out = case.path("multi.tar");
    let tag = std::process::id().to_string();
    let target = format!("{}/e2e/multi:{tag}", registry());
    let list = format!("{}/e2e/multi:{tag}-docker", registry());
    let outputs = [
        format!("type=oci,dest={}", out.display()),
        format!("type=local,dest={}", case.path("local").display()),
        format!("type=registry,oci-mediatypes=false,name={list}"),
    ];
    let run = build(
        &case,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &outputs[0],
            "-o",
            &outputs[1],
            "-o",
            &outputs[2],
            "-o",
            "type=registry",
            "-t",
            &target,
        ],
        &[],
    )
    .expect_ok();
    assert_emulated_by_kiln(&run);
    // The builder's first RUN does not depend on the target: one vertex, run once.
    let headers = |needle: &str| {
        run.stderr
            .lines()
            .filter(|l| {
                l.starts_with('#')
                    && l.contains(needle)
                    && !l.contains(" DONE")
                    && l.split_whitespace()
                        .nth(1)
                        .is_some_and(|w| w.starts_with('['))
            })
            .count()
    };
    assert_eq!(headers("RUN uname -m > /build-arch"), 1, "{}", run.stderr);
    assert_eq!(headers("> /target-arch"), 2, "{}", run.stderr);
    assert_eq!(headers("RUN uname -m > /arch"), 2, "{}", run.stderr);

    // The registry holds an index of the two platforms.
    let index = json(&tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{target}"),
        ],
    ));
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().expect("os"),
                m["platform"]["architecture"].as_str().expect("arch")
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    let docker_list = json(&tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{list}"),
        ],
    ));
    assert_eq!(
        docker_list["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    assert_eq!(docker_list["manifests"].as_array().map(Vec::len), Some(2));
    let pushed = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{target}: digest: ")))
        .and_then(|l| l.split_whitespace().next())
        .expect("digest line")
        .to_string();
    assert_eq!(pushed, run.image_digest(), "the index is the build's image");

    // Each platform's files, from the OCI archive and from the local directories.
    let mut once = Vec::new();
    for (arch, uname) in [("amd64", "x86_64"), ("arm64", "aarch64")] {
        let rootfs = unpack_platform(&case, &out, &tag, arch);
        let read = |f: &str| fs::read_to_string(rootfs.join(f)).expect(f);
        assert_eq!(read("arch"), format!("{uname}\n"));
        assert_eq!(
            read("build-arch"),
            format!("{}\n", host.1),
            "built natively"
        );
        assert_eq!(read("target-arch"), format!("{arch}\n"));
        once.push(read("once"));
        let local = case.path("local").join(format!("linux_{arch}"));
        assert_eq!(
            fs::read_to_string(local.join("arch")).expect("local"),
            format!("{uname}\n")
        );
    }
    assert_eq!(
        once[0], once[1],
        "the builder stage ran once for both targets"
    );

    // Docker archives hold one platform: a clear error, before anything is written.
    let d = format!("type=docker,dest={}", case.path("d.tar").display());
    let run = build(
        &case,
        &["--platform", "linux/amd64,linux/arm64", "-o", &d],
        &[],
    );
    run.expect_failure("type=docker holds one platform's image");
    assert!(!case.path("d.tar").exists());
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn a_platform_the_base_image_lacks_fails_with_the_ones_it_has() {
    let case = Case::new("FROM REGISTRY/library/busybox\nRUN uname -m\n");
    let run = build(&case, &["--platform", "linux/s390x"], &[]);
    run.expect_failure("no image for platform linux/s390x; it offers: linux/amd64, linux/arm64");
    assert!(
        !run.stderr.contains("RUN uname"),
        "nothing ran: {}",
        run.stderr
    );
    let run = build(&case, &["--platform", "linux/"], &[]);
    assert!(
        !run.ok && run.stderr.contains("expected os/arch[/variant]"),
        "{}",
        run.stderr
    );
    // A platform no emulator serves stops the build before any step runs.
    fs::write(
        case.ctx().join("Dockerfile"),
        "FROM --platform=linux/sparc64 scratch\nCOPY Dockerfile /\nRUN true\n",
    )
    .expect("dockerfile");
    let run = build(&case, &[], &[]);
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains("RUN steps for linux/sparc64 cannot run on this")
            && run
                .stderr
                .contains("kiln knows no QEMU emulator for architecture \"sparc64\""),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("COPY Dockerfile"),
        "nothing ran: {}",
        run.stderr
    );
}
