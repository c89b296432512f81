//! What this machine offers kiln (`kiln info`), each check a real attempt where one
//! is possible (entering the user namespace, mounting an overlay in it), not a guess
//! from versions; and the snapshotter a build uses.

use crate::{Executor, Helper, Result, Snapshotter};
use kiln_snapshotter::gc::human_size;
use kiln_snapshotter::idmap::{find_tool, IdMap};
use kiln_snapshotter::Store;
use std::path::{Path, PathBuf};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
    Info,
}

/// One check of the machine: its verdict, what was found and, where it fails, how to
/// fix it.
#[derive(Debug)]
pub struct Check {
    pub verdict: Verdict,
    pub name: &'static str,
    pub detail: String,
    pub fix: Option<String>,
}

fn check(verdict: Verdict, name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        verdict,
        name,
        detail: detail.into(),
        fix: None,
    }
}

impl Check {
    fn fix(mut self, how: impl Into<String>) -> Check {
        self.fix = Some(how.into());
        self
    }
}

/// (major, minor) of the running kernel.
fn kernel() -> (String, (u32, u32)) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok());
    let v = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (release, v)
}

fn read_trim(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Runs every check (the store's at `root`); returns them, and a line on the store.
pub fn machine(root: Option<PathBuf>) -> (Vec<Check>, Option<String>) {
    let mut checks = Vec::new();
    let (release, version) = kernel();
    checks.push(if version >= (5, 11) {
        check(
            Verdict::Pass,
            "kernel",
            format!("Linux {release} (5.11+: overlayfs in user namespaces)"),
        )
    } else {
        check(
            Verdict::Fail,
            "kernel",
            format!("Linux {release}: overlayfs in a user namespace needs 5.11+"),
        )
        .fix("upgrade the kernel")
    });

    let max = read_trim("/proc/sys/user/max_user_namespaces").and_then(|s| s.parse::<u64>().ok());
    let clone = read_trim("/proc/sys/kernel/unprivileged_userns_clone");
    let apparmor = read_trim("/proc/sys/kernel/apparmor_restrict_unprivileged_userns");
    let idmap = IdMap::detect();
    let mut userns_ok = false;
    checks.push(match (max, clone.as_deref(), apparmor.as_deref()) {
        (Some(0), _, _) => check(Verdict::Fail, "user namespaces", "user.max_user_namespaces = 0")
            .fix("sysctl -w user.max_user_namespaces=15000"),
        (_, Some("0"), _) => check(
            Verdict::Fail,
            "user namespaces",
            "kernel.unprivileged_userns_clone = 0",
        )
        .fix("sysctl -w kernel.unprivileged_userns_clone=1"),
        _ => {
            userns_ok = true;
            let extra = if apparmor.as_deref() == Some("1") {
                " (AppArmor restricts unprivileged user namespaces; the probe below says whether kiln may)"
            } else {
                ""
            };
            check(
                Verdict::Pass,
                "user namespaces",
                format!("enabled{extra}"),
            )
        }
    });

    let tools = ["newuidmap", "newgidmap"]
        .iter()
        .map(|t| (t, find_tool(t)))
        .collect::<Vec<_>>();
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(t, _)| **t)
        .collect();
    checks.push(if idmap == IdMap::Root {
        check(
            Verdict::Info,
            "newuidmap/newgidmap",
            "not needed: as root kiln writes its own identity mapping",
        )
    } else if missing.is_empty() {
        let paths: Vec<String> = tools
            .iter()
            .filter_map(|(_, p)| p.as_ref().map(|p| p.display().to_string()))
            .collect();
        check(Verdict::Pass, "newuidmap/newgidmap", paths.join(", "))
    } else {
        check(
            Verdict::Warn,
            "newuidmap/newgidmap",
            format!(
                "{} not found: only your own id can be mapped",
                missing.join(", ")
            ),
        )
        .fix("apt-get install uidmap")
    });
    checks.push(if idmap == IdMap::Root {
        check(Verdict::Pass, "identity mapping", idmap.describe())
    } else if idmap.preserves_owners() {
        check(Verdict::Pass, "subordinate ids", idmap.describe())
    } else {
        check(Verdict::Warn, "subordinate ids", idmap.describe()).fix(
            "usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER (as root); then RUN steps may switch USER",
        )
    });

    let store_root = root.or_else(Store::default_root);
    let mut store_line = None;
    let mut private: std::result::Result<(), String> =
        Err("no store to run the namespace helper in".into());
    match &store_root {
        None => checks.push(
            check(Verdict::Fail, "store", "no store directory")
                .fix("pass --root DIR or set KILN_ROOT or HOME"),
        ),
        Some(r) => match Store::open(r) {
            Err(e) => checks.push(
                check(Verdict::Fail, "store", format!("{}: {e}", r.display()))
                    .fix("pass --root with a directory you can write"),
            ),
            Ok(store) => {
                let l = Helper::new(store.clone(), idmap.clone());
                private = crate::emulate::private_binfmt(&l);
                match l.probe_overlay() {
                    Ok(overlay) => {
                        checks.push(check(
                            Verdict::Pass,
                            "namespace helper",
                            "entered kiln's user namespace and mapped ids",
                        ));
                        checks.push(match overlay {
                            None => check(
                                Verdict::Pass,
                                "overlay in userns",
                                "mounted a writable overlay on the store's filesystem; whiteouts work",
                            ),
                            Some(why) => check(
                                Verdict::Warn,
                                "overlay in userns",
                                format!("{why}; builds use the native snapshotter (copies: slower, more disk)"),
                            )
                            .fix(
                                "use Linux 5.11+ and put the store (--root) on ext4, xfs or btrfs: overlay cannot use some filesystems (another overlay, NFS) as upper directory",
                            ),
                        });
                    }
                    Err(e) => checks.push(
                        check(Verdict::Fail, "namespace helper", e.to_string()).fix(if userns_ok {
                            "check that newuidmap/newgidmap work for you (setuid root or file capabilities)"
                        } else {
                            "enable unprivileged user namespaces"
                        }),
                    ),
                }
                store_line = Some(store_summary(&l, r));
            }
        },
    }

    checks.push(binfmt_check(&private));

    (checks, store_line)
}

fn store_summary(l: &Helper, root: &Path) -> String {
    let size = crate::housekeeping::inventory(l)
        .map(|inv| human_size(inv.totals().total))
        .unwrap_or_else(|e| format!("size unknown ({e})"));
    let free = nix::sys::statvfs::statvfs(root)
        .map(|v| human_size(v.blocks_available() * v.fragment_size()))
        .unwrap_or_else(|_| "?".into());
    format!("{} ({size} used, {free} free)", root.display())
}

/// Foreign platforms: which ones RUN steps can execute as here, and how.
fn binfmt_check(private: &std::result::Result<(), String>) -> Check {
    let host = kiln_frontend::Platform::host();
    let mut can = Vec::new();
    let mut cannot = Vec::new();
    for arch in [
        "amd64", "arm64", "arm", "386", "riscv64", "ppc64le", "s390x", "mips64le",
    ] {
        if arch == host.architecture {
            continue;
        }
        let name = if arch == "arm" {
            "linux/arm/v7".to_string()
        } else {
            format!("linux/{arch}")
        };
        match crate::emulate::how(arch, private) {
            Ok(crate::emulate::Runs::Native) => can.push(format!("{name} (natively)")),
            Ok(crate::emulate::Runs::Private(e)) => can.push(format!(
                "{name} ({}, registered by kiln)",
                e.interpreter.display()
            )),
            Ok(crate::emulate::Runs::Host(i)) => {
                can.push(format!("{name} (host registration, {i})"))
            }
            Err(_) => cannot.push(name),
        }
    }
    let detail = format!(
        "RUN can execute as {}; not as {}",
        if can.is_empty() {
            "no foreign platform".to_string()
        } else {
            can.join(", ")
        },
        if cannot.is_empty() {
            "-".to_string()
        } else {
            cannot.join(", ")
        }
    );
    let c = check(Verdict::Info, "foreign platforms", detail);
    match private {
        Err(why) if !cannot.is_empty() => c.fix(format!(
            "kiln cannot register QEMU in its own user namespace ({why}): use Linux 6.7+ or register QEMU on the host"
        )),
        _ if !cannot.is_empty() => c.fix("install qemu-user-static (or put qemu-<arch>-static in KILN_QEMU_PATH)"),
        _ => c,
    }
}

/// The snapshotter for this build: the one asked for, or for `auto` overlay where a
/// probe mount on the store's filesystem works (BuildKit probes likewise when it
/// starts), else native. kiln has no daemon, so the answer is kept in the store
/// (`probe`) for as long as it holds: the same boot of the same kernel, the same
/// filesystem under the store and the same kiln. A probe costs a helper run (~45 ms).
pub fn choose_snapshotter(
    asked: Option<Snapshotter>,
    executor: &dyn Executor,
    note: &dyn Fn(&str),
) -> Result<Snapshotter> {
    use std::os::unix::fs::MetadataExt;
    if let Some(chosen) = asked {
        note(&format!("snapshotter: {} (as asked)", chosen.name()));
        return Ok(chosen);
    }
    let store = executor.store();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let dev = std::fs::metadata(store.root())
        .map(|m| m.dev())
        .unwrap_or(0);
    let stamp = format!("{} {dev} {}", boot.trim(), env!("CARGO_PKG_VERSION"));
    let file = store.root().join("probe");
    let kept = std::fs::read_to_string(&file).unwrap_or_default();
    if !boot.is_empty() {
        if let Some((st, answer)) = kept.split_once('\n') {
            if st == stamp {
                let chosen = if answer.trim() == "overlay" {
                    Snapshotter::Overlay
                } else {
                    Snapshotter::Native
                };
                note(&format!(
                    "snapshotter: {} (as probed earlier in this boot)",
                    chosen.name()
                ));
                return Ok(chosen);
            }
        }
    }
    let (chosen, why) = match executor.probe_overlay()? {
        None => (Snapshotter::Overlay, "overlay mounts work here".to_string()),
        Some(e) => (
            Snapshotter::Native,
            format!("overlay in a user namespace failed: {e}"),
        ),
    };
    note(&format!("snapshotter: {} ({why})", chosen.name()));
    if !boot.is_empty() {
        let text = format!("{stamp}\n{}\n", chosen.name());
        // Only an optimisation: a store that cannot keep it probes every time.
        let _ = store.write_file(&file, text.as_bytes(), "probe-answer");
    }
    Ok(chosen)
}
