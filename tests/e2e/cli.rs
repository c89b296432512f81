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
