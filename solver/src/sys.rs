//! The solver's only `unsafe`: forking the sandbox's init process.

use nix::unistd::ForkResult;

/// Forks. Only called from the namespace helper, which never starts threads, so the
/// child may do anything the parent could.
pub(crate) fn fork() -> nix::Result<ForkResult> {
    // SAFETY: the helper process is single-threaded (it is exec'd fresh and creates no
    // threads before running a step), so no lock or allocator state can be left held by
    // another thread in the child.
    unsafe { nix::unistd::fork() }
}
