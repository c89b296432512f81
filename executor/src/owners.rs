//! Owner changes in a single-id namespace: `chown` and its kin, answered by recording;
//! `stat` and its kin, answered with what was recorded; and the identity calls, which
//! [`crate::ids`] emulates.
//!
//! Without a subordinate id range only root exists in kiln's user namespace, so the
//! kernel refuses `chown 1000 f` (EINVAL: the id is not mapped) and with it dpkg,
//! `useradd -m`, `install -o`, `tar` as root and `cp -p`. kiln already keeps owners it
//! cannot set in the `user.rootlesscontainers` xattr and writes them into exported
//! layers ([`kiln_snapshotter::owner`]); here a RUN's chown calls go to that xattr too.
//!
//! Mechanism: a seccomp filter on the RUN hands the chown family (only those calls, and
//! only of the host's native ABI, so QEMU-emulated steps are covered too) to a
//! supervisor through a user-notification listener; the supervisor records the owner
//! and answers success. Chosen over the alternatives:
//! - a filter that answers success without recording (Charliecloud's way) loses the
//!   owners, which is what the layer must carry;
//! - an LD_PRELOAD shim (fakeroot's way) misses static binaries (busybox) and needs a
//!   library per target architecture and libc;
//! - ptrace stops the RUN at every system call, not only at the ones that matter.
//!
//! A notification costs two context switches, paid only by chown calls.
//!
//! The supervisor is the sandbox's intermediate process (pid 1's parent). It enters
//! the RUN's mount namespace and root, so that paths resolve exactly as they do for
//! the caller: absolute symlinks and `..` stop at the RUN's root, and mounts (caches,
//! tmpfs) are the RUN's own. It has the same power in the namespace as the RUN's root
//! process, and it acts only on what that process names. A file is reached through
//! the caller's cwd, its directory descriptor or its descriptor (`/proc/PID/cwd`,
//! `/proc/PID/fd/N` of the host's procfs, opened before the switch).
//!
//! As [`kiln_snapshotter::owner::chown`] does, an owner is recorded for regular files
//! and directories. Symlinks, FIFOs, sockets and devices keep root's owner, since
//! user xattrs exist only on the first two; the call still succeeds. A chown of a
//! regular file clears its set-user-ID bit, and its set-group-ID bit when the group may
//! execute it, as Linux does. If the supervisor cannot read the caller's arguments,
//! the call runs as it would without it.

use crate::sys;
use kiln_snapshotter::owner::{decode, encode, XATTR};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, Mode, SFlag};
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// The supervisor: the listener of a RUN's filter, and the host's procfs.
pub(crate) struct Supervisor {
    listener: OwnedFd,
    proc: OwnedFd,
    ids: crate::ids::Ids,
}

/// Sends the listener to the supervisor over `sock` (an `AF_UNIX` socket pair's end),
/// with the ids the RUN's processes start as: `uid`, `gid` and `groups`.
pub(crate) fn send_listener(
    sock: &OwnedFd,
    listener: &OwnedFd,
    (uid, gid, groups): (u32, u32, &[u32]),
) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [listener.as_raw_fd()];
    let mut words = vec![uid, gid];
    words.extend_from_slice(groups);
    let payload: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let iov = [std::io::IoSlice::new(&payload)];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(|_| ())
}

/// Receives the listener the RUN's first process sends over `sock`; `None` when it
/// sends none (it failed first, or could not install the filter).
fn receive_listener(sock: &OwnedFd) -> Option<(OwnedFd, Vec<u32>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = vec![0u8; 4 * (2 + 65536)];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            r => break r.ok()?,
        }
    };
    let len = msg.bytes;
    let fd = msg.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
        _ => None,
    })?;
    let fd = sys::received_fd(fd);
    let words = buf[..len]
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some((fd, words))
}

impl Supervisor {
    /// Waits on `sock` for the listener of `child`'s filter; with one, enters
    /// `child`'s mount namespace and root (this process does nothing else after
    /// supervising). `None`: no filter, nothing to supervise.
    pub(crate) fn receive(sock: &OwnedFd, child: Pid) -> Option<Supervisor> {
        let (listener, words) = receive_listener(sock)?;
        let ids = match words.as_slice() {
            [0, 0, ..] | [] | [_] => crate::ids::Ids::default(),
            [uid, gid, groups @ ..] => crate::ids::Ids::starting_as(*uid, *gid, groups.to_vec()),
        };
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let proc = openat(AT_FDCWD, "/proc", flags, Mode::empty()).ok()?;
        let at = |what: &str| {
            openat(
                &proc,
                format!("{}/{what}", child.as_raw()).as_str(),
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        };
        let ns = at("ns/mnt").ok()?;
        let root = openat(
            &proc,
            format!("{}/root", child.as_raw()).as_str(),
            flags,
            Mode::empty(),
        )
        .ok()?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS).ok()?;
        nix::unistd::fchdir(&root).ok()?;
        nix::unistd::chroot(".").ok()?;
        Some(Supervisor {
            listener,
            proc,
            ids,
        })
    }

    /// Answers the filter's notifications until `child` exits.
    pub(crate) fn serve(&mut self, child: Pid) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let Ok(exited) = sys::pidfd_open(child) else {
            return;
        };
        loop {
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(exited.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(Errno::EINTR) => continue,
                Err(_) => return,
                Ok(_) => {}
            }
            let events = |f: &PollFd| f.revents().unwrap_or(PollFlags::empty());
            if events(&fds[0]).contains(PollFlags::POLLIN) {
                match sys::notif_recv(&self.listener) {
                    Ok(n) => {
                        let answer = self.answer(&n);
                        // A caller killed meanwhile: nothing to answer.
                        let _ = sys::notif_send(&self.listener, n.id, answer);
                    }
                    Err(Errno::EINTR) | Err(Errno::ENOENT) => {}
                    Err(_) => return,
                }
                continue;
            }
            // The first process exited (its pid namespace goes with it), or no process
            // uses the filter any more.
            if !events(&fds[1]).is_empty() || !events(&fds[0]).is_empty() {
                return;
            }
        }
    }

    /// The answer to one call: its result, or `None` to let it run as is.
    fn answer(&mut self, n: &libc::seccomp_notif) -> Option<Result<i64, Errno>> {
        let nr = i64::from(n.data.nr);
        if sys::ID_CALLS.contains(&nr) {
            self.answer_id(n)
        } else if sys::STAT_CALLS.contains(&nr) {
            self.answer_stat(n)
        } else {
            self.answer_chown(n)
        }
    }

    /// An identity call, answered from the caller's emulated credentials.
    fn answer_id(&mut self, n: &libc::seccomp_notif) -> Option<Result<i64, Errno>> {
        use crate::ids::Call;
        let (pid, a, nr) = (n.pid, n.data.args, i64::from(n.data.nr));
        let id = |v: u64| v as u32;
        let me = status(&self.proc, pid)?;
        let proc = &self.proc;
        let creds = self.ids.of(&me, &|p| status(proc, p));
        let call = match nr {
            x if x == libc::SYS_getgroups => {
                let (size, list) = (a[0] as i32, a[1]);
                let n_groups = creds.groups.len();
                if size == 0 {
                    return Some(Ok(n_groups as i64));
                }
                if size < 0 || (size as usize) < n_groups {
                    return Some(Err(Errno::EINVAL));
                }
                let bytes: Vec<u8> = creds.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
                let done = write_mem(proc, &self.listener, n, list, &bytes);
                return Some(done.map(|()| n_groups as i64));
            }
            x if x == libc::SYS_getresuid || x == libc::SYS_getresgid => {
                let ids = if x == libc::SYS_getresuid {
                    creds.uid
                } else {
                    creds.gid
                };
                for (slot, addr) in a[..3].iter().enumerate() {
                    let done = write_mem(proc, &self.listener, n, *addr, &ids[slot].to_ne_bytes());
                    if let Err(e) = done {
                        return Some(Err(e));
                    }
                }
                return Some(Ok(0));
            }
            x if x == libc::SYS_setgroups => {
                let size = a[0] as i32;
                if !(0..=65536).contains(&size) {
                    return Some(Err(Errno::EINVAL));
                }
                let bytes = match read_mem(proc, pid, a[1], size as usize * 4) {
                    Ok(b) => b,
                    Err(e) => return Some(Err(e)),
                };
                let groups = bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Call::SetGroups(groups)
            }
            x if x == libc::SYS_setuid => Call::SetUid(id(a[0])),
            x if x == libc::SYS_setgid => Call::SetGid(id(a[0])),
            x if x == libc::SYS_setreuid => Call::SetReUid(id(a[0]), id(a[1])),
            x if x == libc::SYS_setregid => Call::SetReGid(id(a[0]), id(a[1])),
            x if x == libc::SYS_setresuid => Call::SetResUid(id(a[0]), id(a[1]), id(a[2])),
            x if x == libc::SYS_setresgid => Call::SetResGid(id(a[0]), id(a[1]), id(a[2])),
            x if x == libc::SYS_setfsuid => Call::SetFsUid(id(a[0])),
            x if x == libc::SYS_setfsgid => Call::SetFsGid(id(a[0])),
            x if x == libc::SYS_getuid => Call::GetUid,
            x if x == libc::SYS_geteuid => Call::GetEUid,
            x if x == libc::SYS_getgid => Call::GetGid,
            x if x == libc::SYS_getegid => Call::GetEGid,
            _ => return None,
        };
        Some(crate::ids::apply(creds, call))
    }

    /// A stat call: for a file whose owner was recorded, the caller gets the file's
    /// status with that owner; every other call runs as is (and fails as it would).
    fn answer_stat(&self, n: &libc::seccomp_notif) -> Option<Result<i64, Errno>> {
        let pid = n.pid;
        let a = n.data.args;
        let nr = i64::from(n.data.nr);
        let flags_of = |v: u64| v as i32;
        let path_at = |dirfd: u64, addr: u64, flags: i32| Target::Path {
            dirfd: dirfd as i32,
            addr,
            follow: flags & libc::AT_SYMLINK_NOFOLLOW == 0,
            empty: flags & libc::AT_EMPTY_PATH != 0,
        };
        let (target, buf, out) = if nr == libc::SYS_fstat {
            (Target::Fd(a[0] as i32), a[1], Out::Stat)
        } else if nr == libc::SYS_newfstatat {
            (path_at(a[0], a[1], flags_of(a[3])), a[2], Out::Stat)
        } else if nr == libc::SYS_statx {
            let flags = flags_of(a[2]);
            let out = Out::Statx {
                sync: flags & libc::AT_STATX_SYNC_TYPE,
                mask: a[3] as u32,
            };
            (path_at(a[0], a[1], flags), a[4], out)
        } else {
            #[cfg(target_arch = "x86_64")]
            if nr == libc::SYS_stat || nr == libc::SYS_lstat {
                let flags = if nr == libc::SYS_lstat {
                    libc::AT_SYMLINK_NOFOLLOW
                } else {
                    0
                };
                (path_at(libc::AT_FDCWD as u64, a[0], flags), a[1], Out::Stat)
            } else {
                return None;
            }
            #[cfg(not(target_arch = "x86_64"))]
            return None;
        };
        let path = match &target {
            Target::Path { addr, .. } => Some(self.read_path(pid, *addr).ok()?),
            Target::Fd(_) => None,
        };
        // /proc (and what is mounted under it) names processes of the RUN's pid
        // namespace, which this one does not see; nothing there has a recorded owner.
        if path.as_deref().is_some_and(|p| p.starts_with(b"/proc")) {
            return None;
        }
        let fd = self.resolve(pid, &target, path.as_deref()).ok()?;
        let (uid, gid) = recorded(&self.proc, &fd)?;
        let bytes = match out {
            Out::Stat => {
                let mut st = fstat(&fd).ok()?;
                st.st_uid = uid;
                st.st_gid = gid;
                sys::struct_bytes(&st)
            }
            Out::Statx { sync, mask } => {
                let mut st = sys::statx_fd(&fd, sync, mask).ok()?;
                st.stx_uid = uid;
                st.stx_gid = gid;
                sys::struct_bytes(&st)
            }
        };
        match write_mem(&self.proc, &self.listener, n, buf, &bytes) {
            Ok(()) => Some(Ok(0)),
            Err(e @ (Errno::ESRCH | Errno::EFAULT)) => Some(Err(e)),
            // The caller's memory cannot be opened: the call runs as is.
            Err(_) => None,
        }
    }

    /// A chown call: the owner recorded, and success.
    fn answer_chown(&mut self, n: &libc::seccomp_notif) -> Option<Result<i64, Errno>> {
        let pid = n.pid;
        let a = n.data.args;
        let nr = i64::from(n.data.nr);
        let id = |v: u64| v as u32;
        let (target, uid, gid) = if nr == libc::SYS_fchown {
            (Target::Fd(a[0] as i32), id(a[1]), id(a[2]))
        } else if nr == libc::SYS_fchownat {
            let flags = a[4] as i32;
            let target = Target::Path {
                dirfd: a[0] as i32,
                addr: a[1],
                follow: flags & libc::AT_SYMLINK_NOFOLLOW == 0,
                empty: flags & libc::AT_EMPTY_PATH != 0,
            };
            (target, id(a[2]), id(a[3]))
        } else {
            #[cfg(target_arch = "x86_64")]
            if nr == libc::SYS_chown || nr == libc::SYS_lchown {
                let target = Target::Path {
                    dirfd: libc::AT_FDCWD,
                    addr: a[0],
                    follow: nr == libc::SYS_chown,
                    empty: false,
                };
                (target, id(a[1]), id(a[2]))
            } else {
                return None;
            }
            #[cfg(not(target_arch = "x86_64"))]
            return None;
        };
        let path = match &target {
            Target::Path { addr, .. } => match self.read_path(pid, *addr) {
                Ok(p) => Some(p),
                Err(Errno::ENAMETOOLONG) => return Some(Err(Errno::ENAMETOOLONG)),
                Err(Errno::EFAULT) => return Some(Err(Errno::EFAULT)),
                Err(_) => return None,
            },
            Target::Fd(_) => None,
        };
        // What was read is the caller's only while the call is still pending.
        if !sys::notif_id_valid(&self.listener, n.id) {
            return Some(Err(Errno::ESRCH));
        }
        // As the kernel has it: only a privileged caller gives files away; any other
        // may set its own uid and one of its groups.
        let me = status(&self.proc, pid)?;
        let proc = &self.proc;
        let creds = self.ids.of(&me, &|p| status(proc, p));
        if creds.uid[1] != 0 {
            let own_uid = uid == u32::MAX || uid == creds.uid[1];
            let own_gid = gid == u32::MAX || gid == creds.gid[1] || creds.groups.contains(&gid);
            if !own_uid || !own_gid {
                return Some(Err(Errno::EPERM));
            }
        }
        Some(
            self.resolve(pid, &target, path.as_deref())
                .and_then(|fd| record(&self.proc, &fd, uid, gid))
                .map(|()| 0),
        )
    }

    /// The NUL-terminated path at `addr` of process `pid`.
    fn read_path(&self, pid: u32, addr: u64) -> Result<Vec<u8>, Errno> {
        let mem = openat(
            &self.proc,
            format!("{pid}/mem").as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mem = std::fs::File::from(mem);
        let mut out = Vec::new();
        let mut chunk = [0u8; 256];
        while out.len() <= libc::PATH_MAX as usize {
            let off = addr + out.len() as u64;
            let n = mem
                .read_at(&mut chunk, off)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EFAULT)))?;
            if n == 0 {
                return Err(Errno::EFAULT);
            }
            if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..end]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..n]);
        }
        Err(Errno::ENAMETOOLONG)
    }

    /// An `O_PATH` descriptor of the file the call names, resolved as the caller would.
    fn resolve(&self, pid: u32, target: &Target, path: Option<&[u8]>) -> Result<OwnedFd, Errno> {
        let of_proc = |rel: String, flags: OFlag| {
            openat(
                &self.proc,
                rel.as_str(),
                flags | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        };
        let o_path = OFlag::O_PATH;
        match target {
            Target::Fd(fd) => of_proc(format!("{pid}/fd/{fd}"), o_path).map_err(bad_fd),
            Target::Path {
                dirfd,
                follow,
                empty,
                ..
            } => {
                let path = path.unwrap_or_default();
                let absolute = path.first() == Some(&b'/');
                let base = if absolute {
                    openat(AT_FDCWD, "/", o_path | OFlag::O_CLOEXEC, Mode::empty())?
                } else if *dirfd == libc::AT_FDCWD {
                    of_proc(format!("{pid}/cwd"), o_path)?
                } else {
                    of_proc(format!("{pid}/fd/{dirfd}"), o_path).map_err(bad_fd)?
                };
                if path.is_empty() {
                    return if *empty { Ok(base) } else { Err(Errno::ENOENT) };
                }
                let mut flags = o_path | OFlag::O_CLOEXEC;
                if !follow {
                    flags |= OFlag::O_NOFOLLOW;
                }
                let path: &std::ffi::OsStr = std::os::unix::ffi::OsStrExt::from_bytes(path);
                openat(&base, path, flags, Mode::empty())
            }
        }
    }
}

/// What the kernel says of process (thread) `pid`: its thread group, parent, start
/// time and supplementary groups.
fn status(proc: &OwnedFd, pid: u32) -> Option<crate::ids::Status> {
    let read = |what: &str| -> Option<String> {
        let fd = openat(
            proc,
            format!("{pid}/{what}").as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        std::io::read_to_string(std::fs::File::from(fd)).ok()
    };
    let text = read("status")?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let tgid = field("Tgid:")?.parse().ok()?;
    let ppid = field("PPid:")?.parse().ok()?;
    let groups = field("Groups:")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    // stat's 22nd field, after the command name in parentheses (which may hold
    // spaces and parentheses itself).
    let stat = read("stat")?;
    let started = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    Some(crate::ids::Status {
        tgid,
        ppid,
        started,
        groups,
    })
}

/// `len` bytes at `addr` of process `pid`.
fn read_mem(proc: &OwnedFd, pid: u32, addr: u64, len: usize) -> Result<Vec<u8>, Errno> {
    let fd = openat(
        proc,
        format!("{pid}/mem").as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut buf = vec![0u8; len];
    std::fs::File::from(fd)
        .read_exact_at(&mut buf, addr)
        .map_err(|_| Errno::EFAULT)?;
    Ok(buf)
}

/// Writes `bytes` at `addr` of the caller of notification `n`, while its call is
/// pending.
fn write_mem(
    proc: &OwnedFd,
    listener: &OwnedFd,
    n: &libc::seccomp_notif,
    addr: u64,
    bytes: &[u8],
) -> Result<(), Errno> {
    let fd = openat(
        proc,
        format!("{}/mem", n.pid).as_str(),
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // The memory is the caller's only while the call is pending.
    if !sys::notif_id_valid(listener, n.id) {
        return Err(Errno::ESRCH);
    }
    std::fs::File::from(fd)
        .write_all_at(bytes, addr)
        .map_err(|_| Errno::EFAULT)
}

/// A descriptor number the caller does not have is its EBADF, not our ENOENT.
fn bad_fd(e: Errno) -> Errno {
    if e == Errno::ENOENT {
        Errno::EBADF
    } else {
        e
    }
}

/// What a chown call names.
enum Target {
    Fd(i32),
    Path {
        dirfd: i32,
        addr: u64,
        follow: bool,
        empty: bool,
    },
}

/// Which status a stat call wants.
enum Out {
    Stat,
    Statx { sync: i32, mask: u32 },
}

/// The file `fd` (`O_PATH`) is on, opened for its xattrs, when it is a regular file
/// or a directory (the kinds that can carry a recorded owner); and its status.
fn open_plain(proc: &OwnedFd, fd: &OwnedFd) -> Result<Option<(std::fs::File, libc::stat)>, Errno> {
    let st = fstat(fd)?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFREG && kind != SFlag::S_IFDIR {
        return Ok(None);
    }
    // An O_PATH descriptor takes no xattr calls: the file opened through it.
    let mut flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    if kind == SFlag::S_IFDIR {
        flags |= OFlag::O_DIRECTORY;
    }
    let file = openat(
        proc,
        format!("self/fd/{}", fd.as_raw_fd()).as_str(),
        flags,
        Mode::empty(),
    )?;
    Ok(Some((std::fs::File::from(file), st)))
}

/// The owner recorded for `file`, or root's.
fn owner_of(file: &std::fs::File) -> (u32, u32) {
    let was = xattr::FileExt::get_xattr(file, XATTR)
        .ok()
        .flatten()
        .and_then(|v| decode(&v))
        .unwrap_or((None, None));
    (was.0.unwrap_or(0), was.1.unwrap_or(0))
}

/// The owner recorded for `fd`'s file, when one other than root's is.
fn recorded(proc: &OwnedFd, fd: &OwnedFd) -> Option<(u32, u32)> {
    let (file, _) = open_plain(proc, fd).ok()??;
    Some(owner_of(&file)).filter(|o| *o != (0, 0))
}

/// Records `uid:gid` (`u32::MAX`: unchanged) as the owner of `fd`'s file.
fn record(proc: &OwnedFd, fd: &OwnedFd, uid: u32, gid: u32) -> Result<(), Errno> {
    let Some((file, st)) = open_plain(proc, fd)? else {
        return Ok(());
    };
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    let (old_uid, old_gid) = owner_of(&file);
    let new = (
        if uid == u32::MAX { old_uid } else { uid },
        if gid == u32::MAX { old_gid } else { gid },
    );
    let io = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    if new == (0, 0) {
        match xattr::FileExt::remove_xattr(&file, XATTR) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) => return Err(io(e)),
            _ => {}
        }
    } else {
        xattr::FileExt::set_xattr(&file, XATTR, &encode(new.0, new.1)).map_err(io)?;
    }
    if kind == SFlag::S_IFREG && (uid, gid) != (u32::MAX, u32::MAX) {
        let mode = st.st_mode & 0o7777;
        let mut kept = mode & !libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 {
            kept &= !libc::S_ISGID;
        }
        if kept != mode {
            nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(kept))?;
        }
    }
    Ok(())
}
