//! kiln run as root (as in a CI container): its own 65536-id mapping, never `0 -> 0`
//! alone, so steps that change owners work and the owners land in the layers.
//! scripts/test.sh runs this module as root, and every other one as the test user.

use super::{kiln_bin, nix_uid, registry, Run};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// path -> (uid, gid) of every entry of the image's layers after the first, from the
/// OCI archive `archive`.
fn owners(archive: &Path) -> HashMap<String, (u64, u64)> {
    super::owners::layer_entries(archive, |_| false)
        .into_iter()
        .map(|(p, e)| (p, (e.uid, e.gid)))
        .collect()
}

/// Builds the Dockerfile `dockerfile` (`REGISTRY` standing for the test registry) with
/// kiln, as root, into an OCI archive: the scratch directory, the archive, the build.
fn build_as_root(dockerfile: &str) -> (tempfile::TempDir, PathBuf, Run) {
    let dir = tempfile::tempdir().expect("tmp");
    let ctx = dir.path().join("ctx");
    fs::create_dir(&ctx).expect("ctx");
    fs::write(
        ctx.join("Dockerfile"),
        dockerfile.replace("REGISTRY", &registry()),
    )
    .expect("Dockerfile");
    let out = dir.path().join("o.tar");
    let run = Run::from(
        Command::new(kiln_bin())
            .arg("build")
            .arg("--root")
            .arg(dir.path().join("store"))
            .args(["--progress", "plain", "-o"])
            .arg(format!("type=oci,dest={}", out.display()))
            .arg(&ctx)
            .output()
            .expect("run kiln"),
    )
    .expect_ok();
    (dir, out, run)
}

#[test]
#[ignore = "end-to-end, as root: scripts/test.sh runs it as root"]
fn as_root_kiln_maps_65536_ids_and_steps_keep_the_owners_they_set() {
    assert_eq!(nix_uid(), 0, "this module checks kiln run as root");
    let (_dir, out, run) = build_as_root(
        "FROM REGISTRY/library/busybox:latest\n\
         RUN cat /proc/self/uid_map /proc/self/gid_map \
         && touch /x && chown 1000:2000 /x \
         && mkdir -p -m 0750 /home/app && chown 1234:1234 /home/app \
         && echo 'app:x:1234:1234::/home/app:/bin/sh' >> /etc/passwd\n\
         USER app\n\
         RUN id -u && touch /home/app/made-by-app\n",
    );
    assert!(
        run.stderr
            .contains("identity mapping: root (0-65535 -> 0-65535"),
        "{}",
        run.stderr
    );
    // Both maps: 65536 ids from 0, not root alone.
    let maps = run
        .stderr
        .lines()
        .filter(|l| l.split_whitespace().skip(2).collect::<Vec<_>>() == ["0", "0", "65536"])
        .count();
    assert_eq!(maps, 2, "{}", run.stderr);
    let o = owners(&out);
    assert_eq!(o.get("x"), Some(&(1000, 2000)), "{o:?}");
    assert_eq!(o.get("home/app"), Some(&(1234, 1234)), "{o:?}");
    assert_eq!(o.get("home/app/made-by-app"), Some(&(1234, 1234)), "{o:?}");
    // The step ran as the USER, who owns what it made.
    assert!(
        run.stderr.lines().any(|l| l.ends_with(" 1234")),
        "{}",
        run.stderr
    );
}

#[test]
#[ignore = "end-to-end, as root: scripts/test.sh runs it as root"]
fn as_root_apt_get_install_and_useradd_keep_their_owners() {
    assert_eq!(nix_uid(), 0, "this module checks kiln run as root");
    let repo = super::AptRepo::start();
    let (_dir, out, run) = build_as_root(&super::owners::apt_dockerfile(&repo));
    for bad in ["setgroups", "W: chown", "E: "] {
        assert!(!run.stderr.contains(bad), "{bad:?} in\n{}", run.stderr);
    }
    let o = owners(&out);
    assert_eq!(
        o.get("var/www/kiln-test/index.html"),
        Some(&(33, 33)),
        "{o:?}"
    );
    assert_eq!(o.get("home/app/.bashrc"), Some(&(1234, 1234)), "{o:?}");
    assert_eq!(o.get("etc/shadow"), Some(&(0, 42)), "{o:?}");
    assert_eq!(o.get("home/app/x"), Some(&(1234, 1234)), "{o:?}");
    let svc = o
        .get("var/lib/kiln-test")
        .expect("the postinst's directory");
    assert!(svc.0 != 0 && svc.1 != 0, "a system user's: {svc:?}");
}
