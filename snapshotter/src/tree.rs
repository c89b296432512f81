//! Removing and measuring trees of any depth.
//!
//! A RUN can leave a directory chain of any depth (in its rootfs or a cache mount), and
//! `std::fs::remove_dir_all` recurses once per level: 100,000 levels overflow a worker
//! thread's stack and abort the process. [`remove_all`] keeps its work list on the heap
//! and holds one directory descriptor at a time (moving up through `..`), so neither
//! the stack nor the descriptor table grows with the depth. It runs on trees no
//! process is writing any more (the RUN's processes are gone), and never follows a
//! symlink: each step down is `O_NOFOLLOW`.

use crate::{Context, Result};
use nix::dir::Dir;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn open_dir(at: &impl AsFd, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        at,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Unlinks every non-directory in `dir`; returns the names of its subdirectories.
fn clear_files(dir: &OwnedFd) -> nix::Result<Vec<OsString>> {
    let mut d = Dir::from_fd(open_dir(dir, OsStr::new("."))?)?;
    let mut subdirs = Vec::new();
    let mut files = Vec::new();
    for e in d.iter() {
        let e = e?;
        let name = OsStr::from_bytes(e.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let is_dir = match e.file_type() {
            Some(t) => t == nix::dir::Type::Directory,
            None => nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)?,
        };
        if is_dir {
            subdirs.push(name.to_os_string());
        } else {
            files.push(name.to_os_string());
        }
    }
    for f in files {
        unlinkat(dir, f.as_os_str(), UnlinkatFlags::NoRemoveDir)?;
    }
    Ok(subdirs)
}

/// Removes `path` (any kind of file) and everything below it; a missing `path` (one
/// of whose parents is missing or no directory) is no error.
pub fn remove_all(path: &Path) -> Result<()> {
    let what = || format!("removing {}", path.display());
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            return Ok(())
        }
        Err(e) => return Err(e).ctx(what),
    };
    if !m.is_dir() {
        return std::fs::remove_file(path).ctx(what);
    }
    let inner = || -> nix::Result<()> {
        let mut cur = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // For each level below `path`: its name in its parent and the subdirectories
        // of it still to do.
        let mut stack: Vec<(OsString, Vec<OsString>)> = vec![(OsString::new(), clear_files(&cur)?)];
        while let Some((_, pending)) = stack.last_mut() {
            if let Some(name) = pending.pop() {
                let child = open_dir(&cur, &name)?;
                let todo = clear_files(&child)?;
                cur = child;
                stack.push((name, todo));
                continue;
            }
            let (name, _) = stack.pop().unwrap_or_default();
            if stack.is_empty() {
                break;
            }
            let parent = open_dir(&cur, OsStr::new(".."))?;
            unlinkat(&parent, name.as_os_str(), UnlinkatFlags::RemoveDir)?;
            cur = parent;
        }
        Ok(())
    };
    inner().ctx(what)?;
    std::fs::remove_dir(path).ctx(what)
}

/// Bytes a file takes on disk.
pub fn disk_bytes(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks() * 512
}

/// Disk usage of a tree, not following symlinks, each inode once; unreadable parts
/// are skipped (the helper, root of the namespace, can read everything kiln wrote).
pub fn disk_usage(path: &Path) -> u64 {
    use std::collections::HashSet;
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    // A work list, not recursion: a RUN can leave a tree of any depth in a cache mount.
    let mut seen = HashSet::new();
    let mut todo = vec![path.to_path_buf()];
    let mut n = 0;
    while let Some(p) = todo.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        n += disk_bytes(&m);
        if m.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                todo.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn removes_wide_and_very_deep_trees_on_a_small_stack() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("t");
        fs::create_dir_all(root.join("a/b")).expect("mkdir");
        fs::write(root.join("a/f"), b"x").expect("write");
        std::os::unix::fs::symlink("/", root.join("a/b/l")).expect("symlink");
        // A chain far deeper than PATH_MAX allows naming, made one level at a time.
        let mut cur = nix::fcntl::open(&root, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
            .expect("open");
        for _ in 0..20_000 {
            nix::sys::stat::mkdirat(&cur, "d", Mode::from_bits_truncate(0o755)).expect("mkdirat");
            cur = open_dir(&cur, OsStr::new("d")).expect("open");
        }
        drop(cur);
        let r = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || remove_all(&root).map(|()| root))
            .expect("thread")
            .join()
            .expect("no overflow");
        let root = r.expect("removed");
        assert!(!root.exists());
        assert!(Path::new("/").exists(), "the symlink was not followed");
        remove_all(&d.path().join("missing")).expect("a missing path is fine");
    }
}
