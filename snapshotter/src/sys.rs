//! The storage layer's only `unsafe`: handing pipe ends to a child at fixed fd numbers
//! and adopting those fds in the helper.

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
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
