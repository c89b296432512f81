//! The storage layer's system calls, and its only `unsafe`: handing pipe ends to a child
//! at fixed fd numbers and adopting them in the helper, whiteout device nodes, overlay
//! and bind mounts, entering the user namespace, starting writeback of a file being written,
//! direct I/O on and off.

use crate::{Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};
use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Makes the child see `fds[i].0` as fd `fds[i].1` (and nothing else changes).
pub(crate) fn pass_fds(cmd: &mut Command, fds: Vec<(RawFd, RawFd)>) {
    // SAFETY: the closure runs between fork and exec and only calls fcntl and dup2, which
    // are async-signal-safe; it allocates nothing (the Vec was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            // First move every source above the targets so no dup2 clobbers a later source.
            let mut high = [0 as RawFd; 8];
            for (i, (src, _)) in fds.iter().enumerate().take(8) {
                let h = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 64);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high[i] = h;
            }
            for (i, (_, dst)) in fds.iter().enumerate().take(8) {
                // dup2 leaves FD_CLOEXEC clear on the new descriptor, so it survives exec.
                if libc::dup2(high[i], *dst) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Adopts an fd number that the parent passed to this process.
pub(crate) fn inherited(fd: RawFd) -> File {
    // SAFETY: `fd` was installed by `pass_fds` in the parent for this process alone and
    // nothing else in the helper refers to it, so the File is its only owner.
    unsafe { File::from_raw_fd(fd) }
}

/// Asks the kernel to start writing `len` bytes of `file` at `offset` back to disk,
/// without waiting for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Only a hint: the
/// fsync that makes the file durable still follows.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: the fd is borrowed from a live File for the duration of the call, and
    // sync_file_range reads no memory of ours; a failure (EINVAL on filesystems without
    // writeback, say) only means the hint was not taken.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Turns direct I/O (`O_DIRECT`) on or off for `file` (fcntl `F_SETFL`); an error means
/// the filesystem has none.
pub(crate) fn set_direct_io(file: &File, on: bool) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(file, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_DIRECT
    } else {
        flags - OFlag::O_DIRECT
    };
    fcntl(file, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// An overlay whiteout: a 0/0 character device (allowed unprivileged since Linux 5.8).
pub(crate) fn mknod_whiteout(path: &Path) -> Result<()> {
    nix::sys::stat::mknod(path, SFlag::S_IFCHR, Mode::empty(), 0)
        .ctx(|| format!("creating whiteout {}", path.display()))
}

/// A FIFO with `mode`.
pub(crate) fn mkfifo(path: &Path, mode: u32) -> Result<()> {
    nix::unistd::mkfifo(path, Mode::from_bits_truncate(mode))
        .ctx(|| format!("creating FIFO {}", path.display()))
}

/// Mounts an overlay with `options` at `target`.
pub(crate) fn mount_overlay(options: &str, target: &Path, read_only: bool) -> Result<()> {
    let flags = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(options),
    )
    .ctx(|| format!("mounting overlay at {} ({options})", target.display()))
}

/// Bind-mounts `src` read-only at `target` (a bind mount takes its flags only on a
/// remount).
pub(crate) fn bind_ro(src: &Path, target: &Path) -> Result<()> {
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .ctx(|| format!("bind-mounting {}", src.display()))?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .ctx(|| format!("making {} read-only", target.display()))
}

/// Enters a new user namespace (the caller must be single-threaded).
pub(crate) fn unshare_user() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWUSER)
        .ctx(|| "unshare(CLONE_NEWUSER) (are user namespaces enabled?)".into())
}

/// Becomes root of the (mapped) user namespace, optionally dropping supplementary groups.
pub(crate) fn become_root(drop_groups: bool) -> Result<()> {
    if drop_groups {
        let _ = nix::unistd::setgroups(&[]);
    }
    let (g, u) = (Gid::from_raw(0), Uid::from_raw(0));
    nix::unistd::setresgid(g, g, g).ctx(|| "setresgid(0)".into())?;
    nix::unistd::setresuid(u, u, u).ctx(|| "setresuid(0)".into())
}

/// Asks for SIGKILL when the parent (the kiln thread that started this helper) dies.
pub(crate) fn die_with_parent(parent: Option<i32>) -> Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    // The parent may have died before the call; then we were reparented already.
    if parent.is_some_and(|p| nix::unistd::getppid().as_raw() != p) {
        return Err(crate::Error::UserNs(
            "kiln exited before its helper started".into(),
        ));
    }
    Ok(())
}
