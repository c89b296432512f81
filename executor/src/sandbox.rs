//! The RUN sandbox, entered from the namespace helper (already root in kiln's user
//! namespace, in its own mount namespace, with the step's rootfs mounted at `merged`).
//!
//! The command runs as pid 1 of new pid, ipc, uts and mount namespaces, pivoted into
//! the rootfs, with /proc, a minimal /dev (bind mounts of the host's null, zero,
//! full, random, urandom and tty), and the host's /etc/resolv.conf and /etc/hosts.
//! The network namespace is the host's, as with `buildah --isolation chroot`, unless
//! the step asks for `--network=none`: then it gets one of its own with only loopback.
//!
//! `RUN --mount`s are mounted before the pivot: binds of the context or of another
//! vertex's filesystem, persistent cache directories of the store, tmpfs, and secrets
//! (read by the helper from a file or its environment, kept on a private tmpfs, never
//! in the request, the cache key or the layer).

use crate::{sys, Error, Result};
use fs_err as fs;
use kiln_frontend::InlineFile;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, ForkResult, UnlinkatFlags};
use serde::{Deserialize, Serialize};
use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A RUN, ready for the helper.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunAction {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub mounts: Vec<Mount>,
    /// For a foreign platform: the QEMU interpreter to register in the namespace's
    /// binfmt_misc (`None`: native, or the host's registration serves).
    #[serde(default)]
    pub emulator: Option<crate::emulate::Emulator>,
    /// `--network=none`.
    pub no_network: bool,
    /// `--add-host` lines for /etc/hosts.
    #[serde(default)]
    pub extra_hosts: Vec<kiln_frontend::runflags::HostEntry>,
    /// `--ulimit`s, set before the command starts.
    #[serde(default)]
    pub ulimits: Vec<kiln_frontend::runflags::Ulimit>,
    /// Here-document scripts for `/dev/pipes/`.
    pub files: Vec<InlineFile>,
}

/// A `RUN --mount`, resolved to what the helper mounts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path in the container.
    pub target: String,
    pub kind: MountSource,
    /// A bind (`Host`, `Snapshots`) the RUN may write: its writes go to a copy of its
    /// own, discarded after the step (BuildKit's `rw`).
    #[serde(default)]
    pub writable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MountSource {
    /// A host directory or file (inside the build context), read-only.
    Host(PathBuf),
    /// `subpath` of a stack of snapshots (top-first), read-only.
    Snapshots {
        ids: Vec<String>,
        subpath: String,
    },
    /// A persistent cache directory; `lock` serializes users (sharing=locked/private).
    Cache {
        dir: PathBuf,
        lock: bool,
        readonly: bool,
        mode: u32,
        uid: u32,
        gid: u32,
        /// `from=STAGE,source=PATH`: what a new cache directory starts with (`subpath`
        /// of a stack of snapshots, top-first).
        #[serde(default)]
        seed: Option<(Vec<String>, String)>,
    },
    Tmpfs {
        size: Option<u64>,
    },
    /// A secret from a host file or the helper's environment, as a file.
    Secret {
        from: SecretFrom,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// An SSH agent (`upstream`, a socket of the host), reached through a proxied
    /// socket of the step's own with this mode and owner.
    Ssh {
        upstream: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// A secret as an environment variable of the command.
    SecretEnv {
        from: SecretFrom,
        name: String,
    },
}

/// Where a secret's value lives on the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SecretFrom {
    File(PathBuf),
    Env(String),
}

impl SecretFrom {
    fn read(&self) -> Result<Vec<u8>> {
        match self {
            SecretFrom::File(p) => Ok(fs::read(p)?),
            SecretFrom::Env(v) => std::env::var_os(v)
                .map(|s| s.into_encoded_bytes())
                .ok_or_else(|| Error::SecretUnset(v.clone())),
        }
    }
}

const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The mount points kiln had to create in the rootfs (stubs), removed again after the
/// run so that they do not end up in the layer.
///
/// The RUN can change the tree between the two (unmount a stub, replace `/etc` by a
/// symlink to a host directory, as in BuildKit's CVE-2024-23652), and the helper's root
/// is still the host's: so both walks are fd-relative from the rootfs's own directory,
/// never through a symlink or a mount point ([`sys::open_dir_beneath`]), and a stub is
/// only removed while it is still what kiln made (an empty file or an empty directory).
struct Stubs {
    root: OwnedFd,
    /// Relative paths, in the order they were made.
    made: Vec<String>,
}

impl Stubs {
    fn open(root: &Path) -> Result<Stubs> {
        let root = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(crate::sys_err(format!(
            "opening the rootfs {}",
            root.display()
        )))?;
        Ok(Stubs {
            root,
            made: Vec::new(),
        })
    }

    /// Creates `rel` as a directory (or an empty file) unless it is there, with every
    /// missing parent; says whether `rel` is now of that kind. A symlink or a file of
    /// the other kind on the way stops it (a symlink could point anywhere).
    fn ensure(&mut self, rel: &str, dir: bool) -> bool {
        let parts: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let parent = parts[..i].join("/");
            let Ok(pfd) = sys::open_dir_beneath(&self.root, &parent) else {
                return false;
            };
            match fstatat(&pfd, *part, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => {
                    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
                    let is_dir = kind == SFlag::S_IFDIR;
                    if last {
                        return if dir { is_dir } else { kind == SFlag::S_IFREG };
                    }
                    if !is_dir {
                        return false;
                    }
                }
                Err(_) => {
                    if make_at(&pfd, part, dir || !last).is_err() {
                        return false;
                    }
                    self.made.push(parts[..=i].join("/"));
                }
            }
        }
        true
    }

    /// Like [`Stubs::ensure`] for a directory that is not removed afterwards.
    fn ensure_kept(&mut self, rel: &str) -> bool {
        let before = self.made.len();
        let ok = self.ensure(rel, true);
        self.made.truncate(before);
        ok
    }

    /// The directories that were there before and hold a stub (each stub's ancestors
    /// that kiln did not make): the overlay copied them up only for the stub.
    fn holders(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for rel in &self.made {
            let mut cur = rel.as_str();
            while let Some((parent, _)) = cur.rsplit_once('/') {
                if !self.made.iter().any(|m| m == parent) && !out.iter().any(|o| o == parent) {
                    out.push(parent.to_string());
                }
                cur = parent;
            }
        }
        out
    }

    /// Removes the stubs, deepest first; what the RUN replaced, filled or moved behind a
    /// symlink is left alone.
    fn remove(self) {
        for rel in self.made.iter().rev() {
            let (parent, name) = match rel.rsplit_once('/') {
                Some((p, n)) => (p, n),
                None => ("", rel.as_str()),
            };
            let Ok(pfd) = sys::open_dir_beneath(&self.root, parent) else {
                continue;
            };
            let Ok(st) = fstatat(&pfd, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            let how = match kind {
                // Fails while the directory has entries: then it stays.
                SFlag::S_IFDIR => UnlinkatFlags::RemoveDir,
                SFlag::S_IFREG if st.st_size == 0 => UnlinkatFlags::NoRemoveDir,
                _ => continue,
            };
            let _ = unlinkat(&pfd, name, how);
        }
    }
}

/// What the RUN sees at `/etc/hosts`: a file of its own, as in BuildKit (the host's
/// entries are not the container's business).
const HOSTS: &str = "127.0.0.1\tlocalhost kiln\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// A directory `name` of `scratch` with a tmpfs of its own (`options`): what the RUN
/// gets from it is named by its path in that tmpfs, never by a path in the store.
fn private_tmpfs(scratch: &Path, name: &str, options: &str) -> Result<PathBuf> {
    let dir = scratch.join(name);
    fs::create_dir_all(&dir)?;
    sys::mount_tmpfs(&dir, options, false)?;
    Ok(dir)
}

/// A mount source's mode and owner, as the RUN's mount options ask.
fn set_mode_owner(p: &Path, mode: u32, uid: u32, gid: u32) -> Result<()> {
    fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(kiln_snapshotter::owner::chown(p, uid, gid)?)
}

/// [`HOSTS`] with the `--add-host` lines after it, as BuildKit writes them.
fn hosts_file(extra: &[kiln_frontend::runflags::HostEntry]) -> String {
    let mut s = HOSTS.to_string();
    for h in extra {
        s.push_str(&format!("{}\t{}\n", h.ip, h.host));
    }
    s
}

/// Paths of /proc hidden from RUN (a character device or an empty read-only tmpfs over
/// them), and paths made read-only: runc's defaults, as Docker and BuildKit use them.
const MASKED: [&str; 11] = [
    "proc/acpi",
    "proc/asound",
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/sched_debug",
    "proc/scsi",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sysrq-trigger",
];
const READ_ONLY: [&str; 4] = ["proc/bus", "proc/fs", "proc/irq", "proc/sys"];

/// Runs `spec` in the sandbox; returns the exit code (128+signal when killed) and the
/// directories that held the mount stubs it made (see [`prune_holders`]).
/// `scratch` is a free directory of the helper for mount sources.
pub fn run(
    store: &kiln_snapshotter::Store,
    kind: kiln_snapshotter::native::Snapshotter,
    merged: &Path,
    scratch: &Path,
    spec: &RunAction,
) -> Result<RunEnd> {
    let mut created = Stubs::open(merged)?;
    // /proc, /dev and /sys stay in the layer when the base lacks them, as the mount
    // points runc makes do in BuildKit's.
    let proc_ok = created.ensure_kept("proc");
    let dev_ok = created.ensure_kept("dev");
    created.ensure_kept("sys");
    // /etc/hosts and /etc/resolv.conf are files of the step's own (read-only in the RUN,
    // as in BuildKit): the host's resolv.conf copied, a hosts file of kiln's.
    // They live on a small tmpfs of their own, so that /proc/self/mountinfo names them
    // by their path in it rather than by a path in the store.
    let etc_dir = private_tmpfs(scratch, "etc", "mode=755,size=256k")?;
    let mut etc = Vec::new();
    for (rel, content) in [
        ("etc/resolv.conf", fs::read("/etc/resolv.conf").ok()),
        (
            "etc/hosts",
            Some(hosts_file(&spec.extra_hosts).into_bytes()),
        ),
    ] {
        let Some(content) = content else { continue };
        if !created.ensure(rel, false) {
            continue;
        }
        let file = etc_dir.join(rel.trim_start_matches("etc/"));
        fs::write(&file, content)?;
        etc.push((rel, file));
    }
    // Mount sources are prepared here, in the helper's mount namespace; the targets
    // are created in the rootfs (and removed afterwards).
    let mut spec = spec.clone();
    let mut prepared = Vec::new();
    let mut _locks = Vec::new();
    // SSH agent proxies, stopped when the RUN ends (see crate::agent).
    struct Proxies(Vec<nix::unistd::Pid>);
    impl Drop for Proxies {
        fn drop(&mut self) {
            for p in self.0.drain(..) {
                crate::agent::stop(p);
            }
        }
    }
    let mut proxies = Proxies(Vec::new());
    for (i, m) in spec.mounts.iter().enumerate() {
        let rel = m.target.trim_start_matches('/').to_string();
        let (src, is_dir, readonly) = match &m.kind {
            MountSource::Host(p) if m.writable => {
                // A copy of the context's files, in the scratch directory that goes
                // when the step ends.
                let copy = scratch.join(format!("mount-{i}"));
                crate::paths::copy_tree(p, &copy)?;
                let is_dir = fs::symlink_metadata(&copy)?.is_dir();
                (Some(copy), is_dir, false)
            }
            MountSource::Host(p) => {
                let is_dir = fs::metadata(p)?.is_dir();
                (Some(p.clone()), is_dir, true)
            }
            MountSource::Snapshots { ids, subpath } => {
                let dir = scratch.join(format!("mount-{i}"));
                fs::create_dir_all(&dir)?;
                if m.writable {
                    // Writes land in the scratch directory, not in the snapshots.
                    let (upper, work) = (
                        scratch.join(format!("upper-{i}")),
                        scratch.join(format!("work-{i}")),
                    );
                    kiln_snapshotter::native::view_rw(store, ids, (&upper, &work), &dir, kind)?;
                } else {
                    kiln_snapshotter::native::view_ro(store, ids, &dir, kind)?;
                }
                let p = crate::paths::resolve_in_root(&dir, subpath, true)?;
                let is_dir = fs::metadata(&p)
                    .map_err(|_| Error::MountSource(subpath.clone()))?
                    .is_dir();
                (Some(p), is_dir, !m.writable)
            }
            MountSource::Cache {
                dir,
                lock,
                readonly,
                mode,
                uid,
                gid,
                seed,
            } => {
                if !dir.exists() {
                    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
                    match seed {
                        // BuildKit's `from=`: the new cache is a copy of the source's
                        // tree (its own owners and modes), made beside it and renamed.
                        Some((ids, subpath)) => {
                            let whole = dir.with_extension(format!("seed{}", std::process::id()));
                            fs::create_dir_all(&whole)?;
                            let made = kiln_snapshotter::native::materialize(
                                store,
                                ids,
                                &whole,
                                kiln_snapshotter::native::How::Copy,
                            )
                            .map_err(Error::from)
                            .and_then(|()| crate::paths::resolve_in_root(&whole, subpath, true))
                            .and_then(|src| {
                                if fs::symlink_metadata(&src)
                                    .map(|m| m.is_dir())
                                    .unwrap_or(false)
                                {
                                    Ok(fs::rename(&src, &tmp)?)
                                } else {
                                    Err(Error::MountSource(subpath.clone()))
                                }
                            });
                            let _ = kiln_snapshotter::tree::remove_all(&whole);
                            made?;
                        }
                        None => {
                            fs::create_dir_all(&tmp)?;
                            set_mode_owner(&tmp, *mode, *uid, *gid)?;
                        }
                    }
                    if fs::rename(&tmp, dir).is_err() {
                        let _ = kiln_snapshotter::tree::remove_all(&tmp);
                    }
                }
                // The directory's mtime is the mount's last use, for `kiln prune`.
                if let Ok(d) = fs::File::open(dir) {
                    let _ = d.set_modified(std::time::SystemTime::now());
                }
                if *lock {
                    let f = fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(dir.with_extension("lock"))?;
                    _locks.push(sys::lock_exclusive(f.into_parts().0)?);
                }
                (Some(dir.clone()), true, *readonly)
            }
            MountSource::Tmpfs { .. } => (None, true, false),
            MountSource::Secret {
                from,
                mode,
                uid,
                gid,
            } => {
                let file = private_tmpfs(scratch, &format!("secret-{i}"), "mode=700,size=1m")?
                    .join("value");
                fs::write(&file, from.read()?)?;
                set_mode_owner(&file, *mode, *uid, *gid)?;
                (Some(file), false, true)
            }
            MountSource::Ssh {
                upstream,
                mode,
                uid,
                gid,
            } => {
                let sock =
                    private_tmpfs(scratch, &format!("ssh-{i}"), "mode=755,size=64k")?.join("agent");
                let listener = std::os::unix::net::UnixListener::bind(&sock).map_err(
                    crate::io_ctx(format!("making the ssh socket for {}", m.target)),
                )?;
                set_mode_owner(&sock, *mode, *uid, *gid)?;
                proxies
                    .0
                    .push(crate::agent::spawn_proxy(listener, upstream.clone())?);
                (Some(sock), false, false)
            }
            MountSource::SecretEnv { from, name } => {
                let v = String::from_utf8(from.read()?)
                    .map_err(|_| Error::SecretNotUtf8(name.clone()))?;
                spec.env.push(format!("{name}={v}"));
                continue;
            }
        };
        if !created.ensure(&rel, is_dir) {
            return Err(Error::MountTarget {
                target: m.target.clone(),
                why: "cannot create it in the rootfs (a symlink or a file of the other kind is in the way)".into(),
            });
        }
        let size = match &m.kind {
            MountSource::Tmpfs { size } => *size,
            _ => None,
        };
        prepared.push(Prepared {
            target: rel,
            src,
            readonly,
            size,
        });
    }
    if let Some(e) = &spec.emulator {
        crate::emulate::register(e)?;
    }
    if spec.no_network {
        sys::own_net_ns()?;
        sys::loopback_up()?;
    }
    // Why the command did not start (a USER that does not exist, a program not in
    // PATH...) comes back through a close-on-exec pipe: the exec closes it unread, so a
    // RUN that started gets no descriptor of it, and one that did not start says why
    // instead of exiting 127 like a command that is not found.
    let (why_r, why_w) = std::io::pipe().map_err(crate::io_ctx("pipe".to_string()))?;
    // The new pid namespace is entered by an intermediate child, not the helper: a
    // process that unshared CLONE_NEWPID can no longer start threads, and the helper
    // writes the layer afterwards with several.
    let code = match sys::fork()? {
        ForkResult::Child => {
            drop(why_r);
            let mut why_w = why_w;
            let r = sys::die_with_parent()
                .and_then(|_| sys::sandbox_namespaces())
                .and_then(|_| {
                    // Single-id mode: the RUN's chown, stat and identity calls come
                    // to this process (crate::owners) through a listener the RUN
                    // sends over `pair`.
                    let pair = kiln_snapshotter::owner::emulating()
                        .then(|| {
                            use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
                            socketpair(
                                AddressFamily::Unix,
                                SockType::Stream,
                                None,
                                SockFlag::SOCK_CLOEXEC,
                            )
                            .ok()
                        })
                        .flatten();
                    let (supervisor_end, run_end) = match pair {
                        Some((a, b)) => (Some(a), Some(b)),
                        None => (None, None),
                    };
                    match sys::fork()? {
                        ForkResult::Child => {
                            drop(supervisor_end);
                            use std::os::fd::AsRawFd;
                            let mut keep = vec![why_w.as_raw_fd()];
                            keep.extend(run_end.as_ref().map(|s| s.as_raw_fd()));
                            let err = match sandbox_init(
                                merged,
                                &spec,
                                (proc_ok, dev_ok),
                                &etc,
                                &prepared,
                                &keep,
                                run_end.as_ref(),
                            ) {
                                Ok(never) => match never {},
                                Err(e) => e,
                            };
                            let _ = write!(why_w, "{err}");
                            std::process::exit(127);
                        }
                        ForkResult::Parent { child } => {
                            drop(run_end);
                            if let Some(mut s) = supervisor_end
                                .as_ref()
                                .and_then(|end| crate::owners::Supervisor::receive(end, child))
                            {
                                s.serve(child);
                            }
                            sys::wait_exit(child)
                        }
                    }
                });
            std::process::exit(match r {
                Ok(code) => code,
                Err(e) => {
                    let _ = write!(why_w, "{e}");
                    127
                }
            });
        }
        ForkResult::Parent { child } => {
            drop(why_w);
            sys::wait_exit(child)?
        }
    };
    let mut why = String::new();
    let _ = (&why_r).take(64 * 1024).read_to_string(&mut why);
    let holders = created.holders();
    created.remove();
    Ok(RunEnd {
        code,
        not_started: (!why.is_empty()).then_some(why),
        holders,
    })
}

/// How a RUN ended.
pub struct RunEnd {
    /// The command's exit code (128+signal when killed; 127 when it did not start).
    pub code: i32,
    /// Why the command did not start, when it did not.
    pub not_started: Option<String>,
    /// Directories made only to hold mount stubs (see [`prune_holders`]).
    pub holders: Vec<String>,
}

/// Drops from `upper` (the step's changes, nothing mounted) each directory in
/// `holders` that is there only because a mount stub was made in it: now empty, and
/// with the owner, mode and xattrs it has below. Making and removing the stub copied it
/// up (or, with the native snapshotter, touched its times); BuildKit's layer for such
/// a RUN has no entry for it, nor has kiln's now. Deepest first, so a chain of such
/// directories goes.
pub(crate) fn prune_holders(
    store: &kiln_snapshotter::Store,
    lowers: &[String],
    upper: &Path,
    holders: &[String],
) {
    let own_xattrs = |p: &Path| -> Option<Vec<(std::ffi::OsString, Vec<u8>)>> {
        let mut v = Vec::new();
        for name in xattr::list(p).ok()? {
            if kiln_snapshotter::unpack::is_overlay_xattr(&name.to_string_lossy()) {
                continue;
            }
            v.push((
                name.clone(),
                xattr::get(p, &name).ok().flatten().unwrap_or_default(),
            ));
        }
        v.sort();
        Some(v)
    };
    let mut holders: Vec<&String> = holders.iter().collect();
    holders.sort_by_key(|h| std::cmp::Reverse(h.matches('/').count()));
    let visible = store.visible(lowers);
    for rel in holders {
        let here = upper.join(rel);
        let Ok(m) = fs::symlink_metadata(&here) else {
            continue;
        };
        let empty = fs::read_dir(&here)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !m.is_dir() || !empty {
            continue;
        }
        let below = visible
            .iter()
            .map(|id| store.snapshot_path(id).join(rel))
            .find_map(|p| fs::symlink_metadata(&p).ok().map(|lm| (p, lm)));
        let Some((lp, lm)) = below else {
            continue;
        };
        let same = lm.is_dir()
            && kiln_snapshotter::native::same_meta(&lm, &m)
            && own_xattrs(&lp).is_some_and(|x| Some(x) == own_xattrs(&here));
        if same {
            let _ = fs::remove_dir(&here);
        }
    }
}

enum Never {}

/// A mount ready to be made in the sandbox.
struct Prepared {
    /// Relative to the rootfs.
    target: String,
    /// `None`: a tmpfs.
    src: Option<PathBuf>,
    readonly: bool,
    size: Option<u64>,
}

/// In the forked child (pid 1 of the new pid namespace): set up mounts, pivot, drop to
/// the user, exec. Returns only on failure.
///
/// Every mount target is resolved inside the rootfs (`openat2` with `RESOLVE_IN_ROOT`)
/// and mounted onto through its descriptor, after the mounts before it: a nested
/// target (a cache inside a cache) is found, or made, in the mount above it, and a
/// symlink on the way resolves as it would for the RUN.
fn sandbox_init(
    root: &Path,
    spec: &RunAction,
    (proc_ok, dev_ok): (bool, bool),
    etc: &[(&str, PathBuf)],
    mounts: &[Prepared],
    keep: &[i32],
    owners: Option<&OwnedFd>,
) -> Result<Never> {
    // First of all: nothing the caller left open may reach the RUN.
    sys::close_inherited_fds(keep)?;
    sys::own_mount_ns()?;
    let _ = sys::set_hostname("kiln");
    let rootfd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(crate::sys_err("opening the rootfs"))?;
    if proc_ok {
        let t = target_in_root(&rootfd, "proc", true)?;
        sys::mount_proc(&sys::fd_path(&t))?;
        mask_proc(&rootfd)?;
    }
    if dev_ok {
        let t = target_in_root(&rootfd, "dev", true)?;
        sys::mount_tmpfs(&sys::fd_path(&t), "mode=755,size=65536k", true)?;
        // The tmpfs just mounted: a private tree, which only this process writes.
        let devfd = target_in_root(&rootfd, "dev", true)?;
        let dev = sys::fd_path(&devfd);
        for d in DEVICES {
            let target = dev.join(d);
            let host = Path::new("/dev").join(d);
            if host.exists() && fs::File::create(&target).is_ok() {
                let _ = sys::bind(&host, &target);
            }
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ] {
            let _ = std::os::unix::fs::symlink(target, dev.join(name));
        }
        for d in ["pts", "shm", "mqueue"] {
            let _ = fs::create_dir(dev.join(d));
        }
        let _ = fs::set_permissions(dev.join("shm"), std::fs::Permissions::from_mode(0o1777));
        // A devpts instance of the sandbox's own (`/dev/ptmx` links to its ptmx), as
        // runc gives BuildKit's RUN: apt and others want terminals to exist. Where the
        // kernel refuses it, /dev/pts stays an empty directory.
        let _ = sys::mount_devpts(&dev.join("pts"));
        if !spec.files.is_empty() {
            let pipes = dev.join("pipes");
            fs::create_dir(&pipes)?;
            for f in &spec.files {
                if f.name.contains('/') || f.name.is_empty() || f.name == ".." {
                    return Err(Error::HereDocName(f.name.clone()));
                }
                let p = pipes.join(&f.name);
                fs::write(&p, &f.data)?;
                fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode))?;
            }
        }
    } else if !spec.files.is_empty() {
        return Err(Error::NoDevPipes);
    }
    for m in mounts {
        let t = target_in_root(
            &rootfd,
            &m.target,
            m.src.as_ref().is_none_or(|s| s.is_dir()),
        )?;
        let at = sys::fd_path(&t);
        match &m.src {
            Some(src) => {
                sys::bind(src, &at)?;
                if m.readonly {
                    remount_ro_in_root(&rootfd, &m.target)?;
                }
            }
            None => {
                let opts = match m.size {
                    Some(n) => format!("mode=1777,size={n}"),
                    None => "mode=1777".into(),
                };
                sys::mount_tmpfs(&at, &opts, true)?;
            }
        }
    }
    for (rel, file) in etc {
        let t = target_in_root(&rootfd, rel, false)?;
        sys::bind(file, &sys::fd_path(&t))?;
        remount_ro_in_root(&rootfd, rel)?;
    }
    drop(rootfd);
    sys::pivot_into(root)?;

    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    if fs::create_dir_all(cwd).is_err() && !Path::new(cwd).is_dir() {
        return Err(Error::Workdir {
            cwd: cwd.to_string(),
            why: "cannot be created",
        });
    }
    std::env::set_current_dir(cwd).map_err(crate::io_ctx(format!("chdir {cwd}")))?;
    // A working directory that is not below the new root (reached through a magic link,
    // say) has no path from it: the kernel says "(unreachable)".
    match std::env::current_dir() {
        Ok(p) if p.is_absolute() => {}
        _ => {
            return Err(Error::Workdir {
                cwd: cwd.to_string(),
                why: "resolves outside the rootfs",
            })
        }
    }

    let user = crate::user::resolve_user(&spec.user)?;
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    // In a single-id namespace a USER other than root exists only as the supervisor's
    // emulation (crate::ids): the process stays root of the namespace and is told it
    // is the USER; the files it makes get the USER's owner in the layer.
    let emulated_user = kiln_snapshotter::owner::emulating() && (user.uid, user.gid) != (0, 0);
    let needs_subids = || Error::NeedsSubids {
        user: spec.user.clone(),
        uid: user.uid,
        gid: user.gid,
    };
    for u in &spec.ulimits {
        sys::set_rlimit(&u.name, u.soft, u.hard)?;
    }
    if !emulated_user {
        sys::become_user(user.uid, user.gid, &user.groups)?;
    }
    // Changing credentials cleared the parent-death signal: without it, a killed
    // helper would leave this step running.
    sys::die_with_parent()?;
    // A session keyring of the RUN's own, owned by its user.
    sys::new_session_keyring()?;

    let Some(argv0) = spec.argv.first() else {
        return Err(Error::EmptyCommand);
    };
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let prog = lookup(argv0, path_var).ok_or_else(|| Error::NotInPath(argv0.clone()))?;
    // Last, so that none of kiln's own calls above go to the supervisor. Where the
    // filter cannot be installed (a listener already on the chain: kiln inside a
    // container that uses one) chown fails as it would without it.
    match owners.map(|sock| (sock, sys::install_supervised_filter())) {
        Some((sock, Ok(listener))) => {
            let ids = if emulated_user {
                (user.uid, user.gid, user.groups.as_slice())
            } else {
                (0, 0, &[][..])
            };
            // The filter is on: without its supervisor the RUN would wait forever at
            // its first chown, so a failed hand-over fails the step.
            crate::owners::send_listener(sock, &listener, ids).map_err(crate::sys_err(
                "handing the seccomp listener to the supervisor",
            ))?;
        }
        _ if emulated_user => return Err(needs_subids()),
        _ => {}
    }
    Err(sys::exec(&prog, &spec.argv, &env))
}

/// The mount target `rel` inside the rootfs as it now is (earlier mounts included),
/// made (with its parents) where it is missing; an `O_PATH` descriptor of it.
fn target_in_root(root: &OwnedFd, rel: &str, dir: bool) -> Result<OwnedFd> {
    match sys::open_in_root(root, rel) {
        Ok(fd) => return Ok(fd),
        Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(target_err(rel, e)),
    }
    let rel = rel.trim_matches('/');
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(target_err(rel, "not found"));
    }
    let p = target_in_root(root, parent, true)?;
    make_at(&p, name, dir).map_err(|e| target_err(rel, format!("creating it: {e}")))?;
    sys::open_in_root(root, rel).map_err(|e| target_err(rel, e))
}

fn target_err(rel: &str, why: impl std::fmt::Display) -> Error {
    Error::MountTarget {
        target: format!("/{}", rel.trim_start_matches('/')),
        why: why.to_string(),
    }
}

/// Makes `name` in the directory `parent`: a directory (0755) or an empty file (0644),
/// never through a symlink, never over something that is there.
fn make_at(parent: &OwnedFd, name: &str, dir: bool) -> nix::Result<()> {
    if dir {
        return nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o755));
    }
    nix::fcntl::openat(
        parent,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map(drop)
}

/// Makes the mount now at `rel` read-only, looking it up again: a descriptor taken
/// before the mount names the directory under it, not the mount.
fn remount_ro_in_root(root: &OwnedFd, rel: &str) -> Result<()> {
    let top =
        sys::open_in_root(root, rel).map_err(crate::sys_err(format!("making /{rel} read-only")))?;
    sys::remount_ro(&sys::fd_path(&top))
}

/// Hides and write-protects the parts of the fresh /proc that runc's defaults do.
fn mask_proc(root: &OwnedFd) -> Result<()> {
    // A path this kernel lacks is skipped.
    let existing = |rel: &str, what: &str| match sys::open_in_root(root, rel) {
        Ok(t) => Ok(Some(t)),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(crate::sys_err(format!("{what} /{rel}"))(e)),
    };
    for rel in MASKED {
        let Some(t) = existing(rel, "masking")? else {
            continue;
        };
        let at = sys::fd_path(&t);
        if at.is_dir() {
            sys::mount_tmpfs(&at, "size=4k,mode=0555", false)?;
            remount_ro_in_root(root, rel)?;
        } else {
            sys::bind(Path::new("/dev/null"), &at)?;
        }
    }
    for rel in READ_ONLY {
        let Some(t) = existing(rel, "protecting")? else {
            continue;
        };
        let at = sys::fd_path(&t);
        sys::bind(&at, &at)?;
        remount_ro_in_root(root, rel)?;
    }
    Ok(())
}

/// Finds `prog` on `path` inside the sandbox, as execvp would.
fn lookup(prog: &str, path: &str) -> Option<String> {
    if prog.contains('/') {
        return Some(prog.to_string());
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{d}/{prog}"))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stubs_are_removed_only_where_kiln_made_them() {
        let d = tempfile::tempdir().expect("tempdir");
        let (root, victim) = (d.path().join("root"), d.path().join("victim"));
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::create_dir_all(&victim).expect("mkdir");
        std::os::unix::fs::symlink("/", root.join("link")).expect("symlink");
        let mut stubs = Stubs::open(&root).expect("open");
        assert!(stubs.ensure("etc/hosts", false));
        assert!(stubs.ensure("nd/x", false));
        assert!(stubs.ensure("run/secrets", true));
        assert!(stubs.ensure("keep/dir", true));
        assert!(!stubs.ensure("link/tmp", true), "no walk through a symlink");
        assert!(!stubs.ensure("etc/hosts", true), "a file is no directory");
        assert_eq!(
            stubs.made,
            [
                "etc/hosts",
                "nd",
                "nd/x",
                "run",
                "run/secrets",
                "keep",
                "keep/dir"
            ]
        );
        // What a RUN might do: fill a stub, and swap a stub's parent for a symlink to a
        // host directory holding files of the stubs' names.
        fs::write(root.join("keep/dir/data"), b"x").expect("write");
        fs::write(victim.join("x"), b"precious").expect("write");
        fs::rename(root.join("nd"), d.path().join("nd.moved")).expect("mv");
        std::os::unix::fs::symlink(&victim, root.join("nd")).expect("symlink");
        stubs.remove();
        assert!(!root.join("etc/hosts").exists() && !root.join("run").exists());
        assert!(root.join("keep/dir/data").exists(), "a filled stub stays");
        assert_eq!(fs::read(victim.join("x")).expect("victim"), b"precious");
        assert!(fs::symlink_metadata(root.join("nd"))
            .expect("nd")
            .is_symlink());
    }
}
