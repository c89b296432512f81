//! Paths given on the command line.

use super::*;

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
