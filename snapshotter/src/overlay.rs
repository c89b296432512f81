//! Overlay mounts of snapshot stacks, made inside kiln's user and mount namespaces
//! with `userxattr` (unprivileged overlay, Linux 5.11+).

use crate::{sys, Context, Result, Store};
use std::path::Path;

/// The lowerdir option: `ids` top-first, then the store's empty snapshot, given
/// relative to the snapshots directory (the caller's cwd must be it) so that many
/// layers fit in one page of mount options.
fn lowerdir(ids: &[String]) -> String {
    let mut v: Vec<&str> = ids.iter().map(String::as_str).collect();
    v.push("empty");
    v.join(":")
}

/// `p` as the mount options name it, relative to the snapshots directory (the cwd of
/// the mount) when it is in the store: the options are what `/proc/self/mountinfo`
/// shows a RUN, and the store's absolute path (the user's home, often) is not its
/// business.
fn option_path(store: &Store, p: &Path) -> String {
    match p.strip_prefix(store.root()) {
        Ok(rel) => format!("../{}", rel.display()),
        Err(_) => p.display().to_string(),
    }
}

/// Mounts `ids` (top-first) with a writable `upper` at `target`.
pub fn mount_rw(
    store: &Store,
    ids: &[String],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<()> {
    std::env::set_current_dir(store.snapshots_dir())
        .ctx(|| "entering the snapshots directory".into())?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        lowerdir(&store.visible(ids)),
        option_path(store, upper),
        option_path(store, work)
    );
    // `volatile` (Linux 5.10): unmounting does not sync the upper filesystem. The step's
    // files are synced once, with syncfs, while its layer is written (see the solver's
    // helper), instead of by the unmount before that starts. Older kernels refuse the
    // option; the mount is tried again without it.
    match sys::mount_overlay(&format!("{opts},volatile"), target, false) {
        Ok(()) => Ok(()),
        Err(_) => sys::mount_overlay(&opts, target, false),
    }
}

/// Mounts `ids` (top-first) read-only at `target`.
pub fn mount_ro(store: &Store, ids: &[String], target: &Path) -> Result<()> {
    std::env::set_current_dir(store.snapshots_dir())
        .ctx(|| "entering the snapshots directory".into())?;
    if ids.is_empty() {
        let empty = store.snapshot_path("empty");
        return sys::bind_ro(&empty, target);
    }
    let opts = format!("lowerdir={},userxattr", lowerdir(&store.visible(ids)));
    sys::mount_overlay(&opts, target, true)
}
