//! Rootless identity mapping and the entry into kiln's user namespace.
//!
//! With a subordinate id range in `/etc/subuid` and `/etc/subgid` (and Debian's
//! `newuidmap`/`newgidmap`), the namespace maps root to the caller and ids 1..N to the
//! range, so layers keep every owner. Without one, only the caller is mapped (to root);
//! other owners are then emulated with the `user.rootlesscontainers` xattr
//! ([`crate::owner`]). kiln run as root maps ids 0..=65535 to the host's same ids.
//!
//! The namespace is entered by a freshly exec'd helper process (it must be single
//! threaded for `unshare(CLONE_NEWUSER)`): the helper unshares, tells the parent over a
//! pipe, the parent runs `newuidmap`/`newgidmap` on its pid, and says "go".

use crate::{sys, Context, Error, Result};
use nix::unistd::{getgid, getuid, pipe2, Uid, User};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

const ENV_MODE: &str = "KILN_USERNS";
const ENV_PARENT: &str = "KILN_USERNS_PARENT";
const FD_GO: i32 = 3;
const FD_READY: i32 = 4;

/// How ids inside kiln's user namespace map to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdMap {
    /// Root -> the caller; 1..=count -> the subordinate ranges.
    Subordinate {
        uid: u32,
        gid: u32,
        uids: (u32, u32),
        gids: (u32, u32),
    },
    /// Root -> the caller, nothing else.
    Single { uid: u32, gid: u32 },
    /// kiln run as root: ids 0..=65535 map to the same host ids, as a rootful builder
    /// gives its steps the host's (written by this process, which may).
    Root,
}

/// How many ids kiln maps when it runs as root (0..=65535: nobody's 65534 included).
pub const ROOT_RANGE: u32 = 65536;

impl IdMap {
    /// Detects the best mapping available to the calling user; `KILN_IDMAP=single`
    /// forces the single-id mapping (for a broken newuidmap, or to test that mode).
    pub fn detect() -> IdMap {
        let uid = getuid().as_raw();
        let gid = getgid().as_raw();
        if std::env::var("KILN_IDMAP").as_deref() == Ok("single") {
            return IdMap::Single { uid, gid };
        }
        if uid == 0 && gid == 0 {
            return IdMap::Root;
        }
        let name = User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        let tools = find_tool("newuidmap").is_some() && find_tool("newgidmap").is_some();
        let uids = subordinate(Path::new("/etc/subuid"), name.as_deref(), uid);
        let gids = subordinate(Path::new("/etc/subgid"), name.as_deref(), uid);
        match (tools, uids, gids) {
            (true, Some(uids), Some(gids)) => IdMap::Subordinate {
                uid,
                gid,
                uids,
                gids,
            },
            _ => IdMap::Single { uid, gid },
        }
    }

    /// Whether files owned by users other than root can exist in the namespace.
    pub fn preserves_owners(&self) -> bool {
        matches!(self, IdMap::Subordinate { .. } | IdMap::Root)
    }

    /// One line for progress output.
    pub fn describe(&self) -> String {
        match self {
            IdMap::Subordinate { uid, uids, .. } => {
                format!(
                    "identity mapping: subordinate ids (0 -> {uid}, 1-{} -> {}-{})",
                    uids.1,
                    uids.0,
                    uids.0 + uids.1 - 1
                )
            }
            IdMap::Root => format!(
                "identity mapping: root (0-{} -> 0-{}, the host's own ids)",
                ROOT_RANGE - 1,
                ROOT_RANGE - 1
            ),
            IdMap::Single { uid, .. } => {
                format!("identity mapping: single id (0 -> {uid}); no /etc/subuid range, other owners are kept in the user.rootlesscontainers xattr")
            }
        }
    }

    /// Spawns `cmd`, whose program must call [`enter`] first, and maps its namespace.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Child> {
        cmd.env(ENV_PARENT, std::process::id().to_string());
        if let IdMap::Single { .. } = self {
            cmd.env(ENV_MODE, "single");
            return cmd.spawn().ctx(|| "starting the namespace helper".into());
        }
        let (child_go, parent_go) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(|| "pipe".into())?;
        let (parent_ready, child_ready) =
            pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(|| "pipe".into())?;
        cmd.env(ENV_MODE, "sync");
        sys::pass_fds(
            cmd,
            vec![
                (child_go.as_raw_fd(), FD_GO),
                (child_ready.as_raw_fd(), FD_READY),
            ],
        );
        let mut child = cmd.spawn().ctx(|| "starting the namespace helper".into())?;
        drop(child_go);
        drop(child_ready);
        let mut ready = std::fs::File::from(parent_ready);
        let mut go = std::fs::File::from(parent_go);
        let mut b = [0u8; 1];
        let result = match ready.read(&mut b) {
            Ok(1) => {
                let pid = child.id().to_string();
                match self {
                    IdMap::Subordinate {
                        uid,
                        gid,
                        uids,
                        gids,
                    } => run_map("newuidmap", &pid, *uid, *uids)
                        .and_then(|_| run_map("newgidmap", &pid, *gid, *gids)),
                    _ => write_root_map(&pid),
                }
            }
            _ => Err(Error::UserNs(
                "the helper exited before entering its user namespace".into(),
            )),
        };
        match result {
            Ok(()) => {
                go.write_all(b"1")
                    .ctx(|| "signalling the namespace helper".into())?;
                Ok(child)
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }
}

/// Maps ids 0..[`ROOT_RANGE`] of the helper `pid`'s namespace to the same host ids
/// (root may write any mapping; setgroups stays allowed).
fn write_root_map(pid: &str) -> Result<()> {
    let line = format!("0 0 {ROOT_RANGE}");
    write_proc(&format!("/proc/{pid}/uid_map"), &line)?;
    write_proc(&format!("/proc/{pid}/gid_map"), &line)
}

fn run_map(tool: &str, pid: &str, own: u32, range: (u32, u32)) -> Result<()> {
    let path = find_tool(tool)
        .ok_or_else(|| Error::UserNs(format!("{tool} not found (install Debian's uidmap)")))?;
    let out = Command::new(&path)
        .args([
            pid,
            "0",
            &own.to_string(),
            "1",
            "1",
            &range.0.to_string(),
            &range.1.to_string(),
        ])
        .output()
        .ctx(|| format!("running {}", path.display()))?;
    if !out.status.success() {
        return Err(Error::UserNs(format!(
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The first `start:count` range for `name` or `uid` in a subuid/subgid file.
fn subordinate(file: &Path, name: Option<&str>, uid: u32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    parse_subordinate(&text, name, uid)
}

fn parse_subordinate(text: &str, name: Option<&str>, uid: u32) -> Option<(u32, u32)> {
    let uid = uid.to_string();
    text.lines().find_map(|l| {
        let mut it = l.trim().split(':');
        let who = it.next()?;
        if Some(who) != name && who != uid {
            return None;
        }
        let start = it.next()?.parse().ok()?;
        let count: u32 = it.next()?.parse().ok()?;
        (count > 0).then_some((start, count))
    })
}

/// Helper side: enters a new user namespace mapped as the parent asked. Must be the
/// first thing the helper does, while it has one thread.
pub fn enter() -> Result<()> {
    let mode =
        std::env::var(ENV_MODE).map_err(|_| Error::UserNs(format!("{ENV_MODE} is not set")))?;
    let (uid, gid) = (getuid(), getgid());
    sys::unshare_user()?;
    match mode.as_str() {
        "sync" => {
            let mut ready = sys::inherited(FD_READY);
            let mut go = sys::inherited(FD_GO);
            ready
                .write_all(b"1")
                .ctx(|| "signalling the parent".into())?;
            drop(ready);
            let mut b = [0u8; 1];
            if go
                .read(&mut b)
                .ctx(|| "waiting for the identity mapping".into())?
                != 1
            {
                return Err(Error::UserNs("the parent did not map the namespace".into()));
            }
        }
        "single" => {
            crate::owner::set_emulating(true);
            write_proc("/proc/self/setgroups", "deny")?;
            write_proc("/proc/self/uid_map", &format!("0 {} 1", uid.as_raw()))?;
            write_proc("/proc/self/gid_map", &format!("0 {} 1", gid.as_raw()))?;
        }
        other => return Err(Error::UserNs(format!("unknown {ENV_MODE}={other}"))),
    }
    sys::become_root(mode == "sync")?;
    // Changing credentials cleared any parent-death signal, so it is set here: a kiln
    // killed mid-build takes its helpers (and their RUN steps) with it.
    let parent = std::env::var(ENV_PARENT).ok().and_then(|p| p.parse().ok());
    sys::die_with_parent(parent)
}

fn write_proc(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).ctx(|| format!("writing {value:?} to {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_by_name_or_uid() {
        let t = "alice:100000:65536\n1001:200000:1000\nbob:0:0\n";
        assert_eq!(
            parse_subordinate(t, Some("alice"), 1000),
            Some((100000, 65536))
        );
        assert_eq!(
            parse_subordinate(t, Some("carol"), 1001),
            Some((200000, 1000))
        );
        assert_eq!(parse_subordinate(t, Some("bob"), 7), None);
        assert_eq!(parse_subordinate(t, None, 5), None);
    }
}
