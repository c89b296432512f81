//! COPY from the context across rebuilds: the unchanged files of a large COPY are
//! hard-linked from its previous snapshot, and the result is exactly a fresh copy's.

use super::*;
use std::os::unix::fs::PermissionsExt;

const LINKED: &str = r#"
FROM REGISTRY/library/busybox:latest
COPY app /app
ARG N=1
RUN cat /app/b.txt > /b-before && echo "run $N" >> /app/b.txt
"#;

/// The diffIDs of the image in OCI archive `archive` (read with skopeo).
fn diff_ids(archive: &Path) -> Vec<String> {
    image_config(&format!("oci-archive:{}", archive.display()))["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff_ids")
        .iter()
        .map(|d| d.as_str().expect("a diffID").to_string())
        .collect()
}

fn linked_count(run: &Run) -> Option<usize> {
    run.stderr.lines().find_map(|l| {
        let rest = l.split_once(" linked ")?.1;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn rebuild_after_one_file_change_links_the_rest_and_matches_a_fresh_copy() {
    let case = Case::new(LINKED);
    case.file("app/a.txt", "a\n");
    case.file("app/b.txt", "b\n");
    case.file("app/sub/c.bin", &"0123456789abcdef".repeat(4096));
    case.file("app/run.sh", "#!/bin/sh\necho run\n");
    fs::set_permissions(
        case.ctx().join("app/run.sh"),
        fs::Permissions::from_mode(0o750),
    )
    .expect("chmod");
    let out = |n: &str| case.path(&format!("{n}.tar"));
    let oci = |n: &str| format!("type=oci,dest={}", out(n).display());

    // Two builds of the same context from scratch make the same COPY layer: directory
    // times come from the context, not from the moment of the copy.
    let first = case.build(&["-o", &oci("first")]).expect_ok();
    assert_eq!(linked_count(&first), None, "{}", first.stderr);
    case.build(&["--no-cache", "-o", &oci("again")]).expect_ok();
    assert_eq!(diff_ids(&out("first"))[1], diff_ids(&out("again"))[1]);

    // One file changes: the other three are linked from the last snapshot of this COPY.
    case.file("app/a.txt", "a, changed\n");
    let linked = case.build(&["-o", &oci("linked")]).expect_ok();
    assert_eq!(linked_count(&linked), Some(3), "{}", linked.stderr);
    // ... and the layer is the one a fresh copy makes.
    let fresh = case.build(&["--no-cache", "-o", &oci("fresh")]).expect_ok();
    assert_eq!(linked_count(&fresh), None, "{}", fresh.stderr);
    let (l, f) = (diff_ids(&out("linked")), diff_ids(&out("fresh")));
    assert_eq!(l[1], f[1]);
    assert_ne!(l[1], diff_ids(&out("first"))[1]);

    // The RUN after the linked COPY appended to a linked file: the earlier snapshot
    // must not have changed. Back to the first context, the COPY is cached (that
    // snapshot), and a new ARG re-runs the RUN on it.
    case.file("app/a.txt", "a\n");
    let back = case
        .build(&["--build-arg", "N=2", "-t", "e2e/copy:1", "-o", &oci("back")])
        .expect_ok();
    assert!(
        back.step_ended("COPY app /app", "CACHED"),
        "{}",
        back.stderr
    );
    let rootfs = umoci_unpack(&case, &out("back"), "1");
    assert_eq!(
        fs::read_to_string(rootfs.join("b-before")).expect("b-before"),
        "b\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("app/b.txt")).expect("b.txt"),
        "b\nrun 2\n"
    );
    let mode = fs::metadata(rootfs.join("app/run.sh"))
        .expect("run.sh")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750);
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn a_relative_root_is_resolved_before_the_helper_changes_directory() {
    let case = Case::new("FROM REGISTRY/library/busybox:latest\nRUN echo ok > /ok\n");
    let out = Command::new(kiln_bin())
        .current_dir(case.dir.path())
        .args(["build", "--root", "relative-store", "--progress", "plain"])
        .arg(case.ctx())
        .output()
        .expect("run kiln");
    let run = Run::from(out).expect_ok();
    assert!(run.stderr.contains("RUN echo ok"), "{}", run.stderr);
    assert!(case.path("relative-store/snapshots").is_dir());
}
