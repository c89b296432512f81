//! The native snapshotter, for where overlayfs cannot be mounted in a user namespace
//! (kernels before 5.11, stores on filesystems overlay refuses as an upper directory).
//! Like containerd's native snapshotter and buildah's vfs driver it trades disk and
//! time for portability:
//!
//! - a step's rootfs is a full copy of its parent stack ([`materialize`] with
//!   [`How::Copy`]; `copy_file_range` makes that a reflink on btrfs and xfs);
//! - a read-only view (`COPY --from`, `RUN --mount=from=`) is a tree of hard links to
//!   the snapshots' files under a read-only bind mount ([`How::Link`]);
//! - the step's layer is found by walking the rootfs next to the parent stack
//!   ([`diff`]), as containerd's double-walking differ does, and written as an overlay
//!   upper directory, so [`crate::diff::write_layer`] makes the same kind of layer and
//!   the snapshot has the same format whichever snapshotter made it.
//!
//! Deciding whether a file changed: containerd compares metadata and, when both mtimes
//! have no nanoseconds (as everything from a tar layer), reads both contents. kiln
//! instead notes the inode change time (ctime) just after the copy ([`settle`]): the
//! kernel sets ctime on every write, chmod, chown, xattr change, link and rename, and
//! nothing can set it back, so a file whose ctime is not newer than that mark is the
//! copy as made. That reads no content, yet misses no change that keeps size and mtime.

use crate::tree::remove_all;
use crate::unpack::is_opaque;
use crate::{sys, Context, Result, Store};
use fs_err as fs;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Which snapshotter a build uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Snapshotter {
    /// Overlay mounts of the snapshots (needs overlayfs in a user namespace).
    Overlay,
    /// Copies and walks ([`crate::native`]); works on any filesystem.
    Native,
}

impl Snapshotter {
    pub fn name(self) -> &'static str {
        match self {
            Snapshotter::Overlay => "overlay",
            Snapshotter::Native => "native",
        }
    }
}

/// How [`materialize`] places files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Independent copies: the tree may be written.
    Copy,
    /// Hard links to the snapshots' files: the tree must never be written.
    Link,
    /// Copies owned by whoever runs this (`-o type=local`): no owners, no
    /// `user.rootlesscontainers`.
    Export,
}

/// Mounts a read-only view of `ids` (top-first) at `target`, an empty directory.
pub fn view_ro(store: &Store, ids: &[String], target: &Path, kind: Snapshotter) -> Result<()> {
    match kind {
        Snapshotter::Overlay => crate::overlay::mount_ro(store, ids, target),
        Snapshotter::Native => {
            materialize(store, ids, target, How::Link)?;
            sys::bind_ro(target, target)
        }
    }
}

fn is_whiteout(m: &Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>> {
    let mut names = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()
        .ctx(|| format!("reading {}", dir.display()))?;
    names.sort();
    Ok(names)
}

/// Mounts a writable view of `ids` (top-first) at `target`, an empty directory: an
/// overlay whose writes go to `upper` (with `work`), or with the native snapshotter an
/// independent copy. Either way the snapshots are never written.
pub fn view_rw(
    store: &Store,
    ids: &[String],
    (upper, work): (&Path, &Path),
    target: &Path,
    kind: Snapshotter,
) -> Result<()> {
    match kind {
        Snapshotter::Overlay => {
            for d in [upper, work] {
                fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
            }
            crate::overlay::mount_rw(store, ids, upper, work, target)
        }
        Snapshotter::Native => materialize(store, ids, target, How::Copy),
    }
}

/// Builds the merged tree of `ids` (top-first) in `dest`, an empty directory, by
/// applying the snapshots bottom-up: whiteouts delete, opaque directories empty what is
/// below them, everything else replaces. `dest` itself keeps its own owner and mode, as
/// an overlay's upper directory does.
pub fn materialize(store: &Store, ids: &[String], dest: &Path, how: How) -> Result<()> {
    let mut m = Materializer {
        dest,
        how,
        dir_times: HashMap::new(),
    };
    for id in store.visible(ids).iter().rev() {
        let src = store.snapshot_path(id);
        m.apply(&src, Path::new(""), &mut HashMap::new())?;
    }
    // Directory times last: filling a directory changes its mtime.
    for (rel, m) in m.dir_times {
        let at = dest.join(&rel);
        if fs::symlink_metadata(&at).is_ok_and(|x| x.is_dir()) {
            set_times(&at, &m)?;
        }
    }
    Ok(())
}

struct Materializer<'a> {
    dest: &'a Path,
    how: How,
    /// A directory's times from the topmost layer that has it.
    dir_times: HashMap<PathBuf, Metadata>,
}

impl Materializer<'_> {
    /// Applies `src/rel` of one snapshot; `links` maps the snapshot's multiply linked
    /// inodes to their first copy, so hard links stay hard links.
    fn apply(
        &mut self,
        src: &Path,
        rel: &Path,
        links: &mut HashMap<(u64, u64), PathBuf>,
    ) -> Result<()> {
        if rel.components().count() >= crate::MAX_TREE_DEPTH {
            return Err(crate::too_deep(rel));
        }
        for name in sorted_names(&src.join(rel))? {
            let r = rel.join(&name);
            let (s, d) = (src.join(&r), self.dest.join(&r));
            let m = fs::symlink_metadata(&s)?;
            if is_whiteout(&m) {
                remove_all(&d)?;
                continue;
            }
            if m.is_dir() {
                match fs::symlink_metadata(&d) {
                    Ok(dm) if dm.is_dir() => {
                        if is_opaque(&s) {
                            for n in sorted_names(&d)? {
                                remove_all(&d.join(n))?;
                            }
                        }
                    }
                    Ok(_) => {
                        remove_all(&d)?;
                        fs::create_dir(&d)?;
                    }
                    Err(_) => fs::create_dir(&d)?,
                }
                copy_meta(&s, &d, &m, self.how)?;
                self.apply(src, &r, links)?;
                self.dir_times.insert(r, m);
                continue;
            }
            remove_all(&d)?;
            let ft = m.file_type();
            let key = (m.dev(), m.ino());
            if self.how == How::Link {
                fs::hard_link(&s, &d)?;
                continue;
            }
            if m.nlink() > 1 {
                if let Some(first) = links.get(&key) {
                    fs::hard_link(first, &d)?;
                    continue;
                }
            }
            if ft.is_file() {
                fs::copy(&s, &d)?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&s)?;
                std::os::unix::fs::symlink(&target, &d)
                    .ctx(|| format!("creating {}", d.display()))?;
            } else if ft.is_fifo() {
                nix::unistd::mkfifo(&d, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .ctx(|| format!("creating {}", d.display()))?;
            } else {
                continue; // device nodes were skipped at unpack; sockets are no content
            }
            copy_meta(&s, &d, &m, self.how)?;
            set_times(&d, &m)?;
            if m.nlink() > 1 {
                links.insert(key, d);
            }
        }
        Ok(())
    }
}

/// Gives `to` the owner, mode and xattrs (but overlay's own) of `from`. The owner goes
/// first: chown clears setuid and setgid bits. An export keeps no owner.
fn copy_meta(from: &Path, to: &Path, m: &Metadata, how: How) -> Result<()> {
    if how != How::Export {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            to,
            Some(nix::unistd::Uid::from_raw(m.uid())),
            Some(nix::unistd::Gid::from_raw(m.gid())),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ctx(|| format!("chown {}", to.display()))?;
    }
    if m.file_type().is_symlink() {
        return Ok(()); // no mode, and user xattrs are not allowed on symlinks
    }
    fs::set_permissions(
        to,
        std::os::unix::fs::PermissionsExt::from_mode(m.mode() & 0o7777),
    )?;
    for n in xattr::list(from).ctx(|| format!("listing xattrs of {}", from.display()))? {
        let s = n.to_string_lossy();
        if crate::unpack::is_overlay_xattr(&s) || (how == How::Export && s == crate::owner::XATTR) {
            continue;
        }
        if let Some(v) =
            xattr::get(from, &n).ctx(|| format!("reading xattrs of {}", from.display()))?
        {
            xattr::set(to, &n, &v).ctx(|| format!("setting xattr {s} on {}", to.display()))?;
        }
    }
    Ok(())
}

/// Sets the access and modification times of `to` (not following a symlink) to `m`'s.
pub fn set_times(to: &Path, m: &Metadata) -> Result<()> {
    let a = nix::sys::time::TimeSpec::new(m.atime(), m.atime_nsec());
    let t = nix::sys::time::TimeSpec::new(m.mtime(), m.mtime_nsec());
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        to,
        &a,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .ctx(|| format!("setting times of {}", to.display()))
}

/// An inode change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark(i64, i64);

fn ctime(m: &Metadata) -> Mark {
    Mark(m.ctime(), m.ctime_nsec())
}

/// Returns a mark that every change made to files in `dir`'s filesystem from now on
/// will be newer than: the ctime of a fresh file in `dir`, once the filesystem's clock
/// has moved past it (it ticks in jiffies, so this takes a few milliseconds at most).
pub fn settle(dir: &Path) -> Result<Mark> {
    let probe = dir.join(".kiln-mark");
    let stamp = |p: &Path| -> Result<Mark> {
        fs::write(p, b"")?;
        Ok(ctime(&fs::metadata(p)?))
    };
    let mark = stamp(&probe)?;
    for _ in 0..10_000 {
        if stamp(&probe)? > mark {
            let _ = fs::remove_file(&probe);
            return Ok(mark);
        }
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    Err(crate::Error::Io {
        context: format!("the clock of {}'s filesystem does not move", dir.display()),
        source: std::io::Error::other("ctime stayed the same for 5 s"),
    })
}

/// Writes what `merged` changed against `ids` (top-first, the stack it was
/// materialized from before `since`) into `upper`, an empty directory, in overlay's
/// upper format: new and changed entries (non-directories as hard links to `merged`'s),
/// their parent directories, 0/0 whiteouts for deletions.
pub fn diff(store: &Store, ids: &[String], merged: &Path, upper: &Path, since: Mark) -> Result<()> {
    let lowers: Vec<PathBuf> = store
        .visible(ids)
        .iter()
        .map(|id| store.snapshot_path(id))
        .collect();
    let mut d = Differ {
        merged,
        upper,
        since,
        made: Vec::new(),
    };
    d.walk(Path::new(""), &lowers)?;
    for rel in d.made.iter().rev() {
        let m = fs::symlink_metadata(merged.join(rel))?;
        set_times(&upper.join(rel), &m)?;
    }
    Ok(())
}

struct Differ<'a> {
    merged: &'a Path,
    upper: &'a Path,
    since: Mark,
    /// Directories made in `upper`, parents first.
    made: Vec<PathBuf>,
}

/// The entry `name` of the lower view whose directory `rel` is made of `lowers`
/// (top-first): the topmost layer's, `None` when absent or whited out.
fn lookup(lowers: &[PathBuf], name: &OsString) -> Option<(PathBuf, Metadata)> {
    for l in lowers {
        let p = l.join(name);
        if let Ok(m) = fs::symlink_metadata(&p) {
            return (!is_whiteout(&m)).then_some((p, m));
        }
    }
    None
}

/// The layers that make up the lower directory `name` (top-first): down to an opaque
/// one, or to a layer where `name` is no directory.
fn child_lowers(lowers: &[PathBuf], name: &OsString) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for l in lowers {
        let p = l.join(name);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                let opaque = is_opaque(&p);
                out.push(p);
                if opaque {
                    break;
                }
            }
            Ok(_) => break,
            Err(_) => {}
        }
    }
    out
}

impl Differ<'_> {
    fn walk(&mut self, rel: &Path, lowers: &[PathBuf]) -> Result<()> {
        if rel.components().count() >= crate::MAX_TREE_DEPTH {
            return Err(crate::too_deep(rel));
        }
        let here = self.merged.join(rel);
        let names = sorted_names(&here)?;
        let present: HashSet<&OsString> = names.iter().collect();
        // Deletions: what the lower view has and the rootfs no longer does.
        let mut seen = HashSet::new();
        for l in lowers {
            for n in sorted_names(l)? {
                if present.contains(&n) || !seen.insert(n.clone()) {
                    continue;
                }
                if lookup(lowers, &n).is_some() {
                    self.ensure_dir(rel)?;
                    let w = self.upper.join(rel).join(&n);
                    sys::mknod_whiteout(&w)?;
                }
            }
        }
        for name in &names {
            let r = rel.join(name);
            let path = self.merged.join(&r);
            let m = fs::symlink_metadata(&path)?;
            let changed_here = ctime(&m) > self.since;
            match lookup(lowers, name) {
                Some((_, lm)) if lm.is_dir() && m.is_dir() => {
                    if changed_here || !same_meta(&m, &lm) {
                        self.ensure_dir(&r)?;
                    }
                    let below = child_lowers(lowers, name);
                    self.walk(&r, &below)?;
                }
                Some((lp, lm)) if !changed_here && same_entry(&path, &m, &lp, &lm) => {}
                _ if m.is_dir() => {
                    self.ensure_dir(&r)?;
                    self.walk(&r, &[])?;
                }
                _ => {
                    self.ensure_dir(rel)?;
                    let to = self.upper.join(&r);
                    fs::hard_link(&path, &to)?;
                }
            }
        }
        Ok(())
    }

    /// Makes `upper/rel` and its missing parents with `merged`'s owners, modes, xattrs.
    fn ensure_dir(&mut self, rel: &Path) -> Result<()> {
        let at = self.upper.join(rel);
        if rel.as_os_str().is_empty() || fs::symlink_metadata(&at).is_ok() {
            return Ok(());
        }
        if let Some(parent) = rel.parent() {
            self.ensure_dir(parent)?;
        }
        let from = self.merged.join(rel);
        let m = fs::symlink_metadata(&from)?;
        fs::create_dir(&at)?;
        copy_meta(&from, &at, &m, How::Copy)?;
        self.made.push(rel.to_path_buf());
        Ok(())
    }
}

/// Owner, type and mode as the layer records them.
pub fn same_meta(a: &Metadata, b: &Metadata) -> bool {
    a.mode() == b.mode() && a.uid() == b.uid() && a.gid() == b.gid()
}

/// Whether the rootfs entry `p` is still the lower entry `lp` it was copied from: the
/// ctime check has passed, so this only guards against a different entry by that name.
fn same_entry(p: &Path, m: &Metadata, lp: &Path, lm: &Metadata) -> bool {
    if !same_meta(m, lm) || m.rdev() != lm.rdev() {
        return false;
    }
    if m.file_type().is_symlink() {
        return fs::read_link(p).ok() == fs::read_link(lp).ok();
    }
    m.len() == lm.len() && m.mtime() == lm.mtime() && m.mtime_nsec() == lm.mtime_nsec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::OPAQUE_XATTR;

    fn whiteout(p: &Path) {
        sys::mknod_whiteout(p).expect("whiteout");
    }

    /// A tree as `path -> description` for comparisons.
    fn tree(root: &Path) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        fn go(root: &Path, rel: &Path, out: &mut std::collections::BTreeMap<String, String>) {
            for n in sorted_names(&root.join(rel)).expect("names") {
                let r = rel.join(&n);
                let p = root.join(&r);
                let m = fs::symlink_metadata(&p).expect("stat");
                let d = if is_whiteout(&m) {
                    "whiteout".to_string()
                } else if m.is_dir() {
                    format!(
                        "dir {:o}{}",
                        m.mode() & 0o7777,
                        if is_opaque(&p) { " opaque" } else { "" }
                    )
                } else if m.file_type().is_symlink() {
                    format!("-> {}", fs::read_link(&p).expect("link").display())
                } else {
                    format!(
                        "file {:o} {:?}",
                        m.mode() & 0o7777,
                        String::from_utf8_lossy(&fs::read(&p).expect("read"))
                    )
                };
                out.insert(r.display().to_string(), d);
                if m.is_dir() {
                    go(root, &r, out);
                }
            }
        }
        go(root, Path::new(""), &mut out);
        out
    }

    #[test]
    fn materialize_then_diff_finds_exactly_the_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store")).expect("store");
        let base = store.snapshot_path("base");
        fs::create_dir_all(base.join("etc/sub")).expect("mkdir");
        fs::create_dir_all(base.join("gone/deep")).expect("mkdir");
        fs::write(base.join("etc/keep"), b"keep").expect("write");
        fs::write(base.join("etc/edit"), b"old").expect("write");
        fs::write(base.join("etc/sneaky"), b"aaa").expect("write");
        fs::write(base.join("etc/sub/x"), b"x").expect("write");
        fs::write(base.join("etc/hidden"), b"hidden").expect("write");
        fs::write(base.join("gone/deep/f"), b"f").expect("write");
        fs::write(base.join("same"), b"same").expect("write");
        fs::hard_link(base.join("same"), base.join("same2")).expect("link");
        std::os::unix::fs::symlink("keep", base.join("etc/link")).expect("symlink");
        // A second layer deletes etc/hidden and makes etc/sub opaque.
        let top = store.snapshot_path("top");
        fs::create_dir_all(top.join("etc/sub")).expect("mkdir");
        whiteout(&top.join("etc/hidden"));
        xattr::set(top.join("etc/sub"), OPAQUE_XATTR, b"y").expect("opaque");
        fs::write(top.join("etc/sub/y"), b"y").expect("write");
        let ids = vec!["top".to_string(), "base".to_string()];

        let merged = dir.path().join("merged");
        fs::create_dir(&merged).expect("mkdir");
        materialize(&store, &ids, &merged, How::Copy).expect("materialize");
        let t = tree(&merged);
        assert!(!t.contains_key("etc/hidden"), "whiteout applied: {t:?}");
        assert!(!t.contains_key("etc/sub/x"), "opaque dir applied");
        assert_eq!(t["etc/sub/y"], "file 644 \"y\"");
        assert_eq!(t["etc/link"], "-> keep");
        let (a, b) = (
            fs::metadata(merged.join("same")).expect("stat"),
            fs::metadata(merged.join("same2")).expect("stat"),
        );
        assert_eq!(a.ino(), b.ino(), "hard links stay linked");
        assert_ne!(
            a.ino(),
            fs::metadata(base.join("same")).expect("stat").ino()
        );

        let since = settle(dir.path()).expect("settle");
        let untouched = diff_of(&store, &ids, &merged, since, dir.path(), "u0");
        assert!(untouched.is_empty(), "no change, no diff: {untouched:?}");

        fs::write(merged.join("etc/edit"), b"new").expect("edit"); // same size
        fs::remove_dir_all(merged.join("gone")).expect("rm");
        fs::set_permissions(
            merged.join("etc/keep"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        fs::remove_file(merged.join("etc/link")).expect("rm");
        fs::create_dir(merged.join("etc/link")).expect("mkdir");
        fs::write(merged.join("new"), b"n").expect("write");
        // Same size and mtime put back (as `tar x` or `cp -p` do): only ctime tells.
        let before = fs::symlink_metadata(merged.join("etc/sneaky")).expect("stat");
        fs::write(merged.join("etc/sneaky"), b"bbb").expect("write");
        set_times(&merged.join("etc/sneaky"), &before).expect("times");
        let d = diff_of(&store, &ids, &merged, since, dir.path(), "u1");
        let expect: Vec<(&str, &str)> = vec![
            ("etc", "dir 755"),
            ("etc/edit", "file 644 \"new\""),
            ("etc/keep", "file 600 \"keep\""),
            ("etc/link", "dir 755"),
            ("etc/sneaky", "file 644 \"bbb\""),
            ("gone", "whiteout"),
            ("new", "file 644 \"n\""),
        ];
        let got: Vec<(&str, &str)> = d.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, expect);
    }

    fn diff_of(
        store: &Store,
        ids: &[String],
        merged: &Path,
        since: Mark,
        dir: &Path,
        name: &str,
    ) -> std::collections::BTreeMap<String, String> {
        let upper = dir.join(name);
        fs::create_dir(&upper).expect("mkdir");
        diff(store, ids, merged, &upper, since).expect("diff");
        tree(&upper)
    }

    #[test]
    fn a_layer_made_by_diff_stacks_like_the_rootfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store")).expect("store");
        let base = store.snapshot_path("base");
        fs::create_dir_all(base.join("a/b")).expect("mkdir");
        fs::write(base.join("a/b/c"), b"c").expect("write");
        fs::write(base.join("a/f"), b"f").expect("write");
        let merged = dir.path().join("merged");
        fs::create_dir(&merged).expect("mkdir");
        let ids = vec!["base".to_string()];
        materialize(&store, &ids, &merged, How::Copy).expect("materialize");
        let since = settle(dir.path()).expect("settle");
        fs::remove_file(merged.join("a/b/c")).expect("rm");
        fs::rename(merged.join("a/f"), merged.join("a/b/g")).expect("mv");
        fs::write(merged.join("z"), b"z").expect("write");
        fs::create_dir(store.snapshot_path("next")).expect("mkdir");
        diff(&store, &ids, &merged, &store.snapshot_path("next"), since).expect("diff");
        let again = dir.path().join("again");
        fs::create_dir(&again).expect("mkdir");
        let ids2 = vec!["next".to_string(), "base".to_string()];
        materialize(&store, &ids2, &again, How::Link).expect("materialize");
        assert_eq!(tree(&again), tree(&merged));
    }
}
