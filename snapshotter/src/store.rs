//! The content store: blobs by digest, snapshot directories, cache records, temp space.
//!
//! Layout under the root: `blobs/sha256/<hex>`, `snapshots/<id>/` (one layer's
//! filesystem diff in overlay format each, plus `empty/`), `cache/<key>.json` (build
//! records), `cache-mounts/`, `tmp/`, and `lock`.
//! Every write goes to a temp file in the same filesystem, is fsynced and renamed, so
//! readers never see a partial blob or record; snapshots appear by renaming a finished
//! tree and leave by being renamed into `tmp/` before they are deleted.
//!
//! Concurrency: every kiln process holds `lock` with `flock`, shared for builds and
//! `du`, exclusive for `prune`, so builds run side by side and a prune waits for them
//! (and they for it). Everything a build writes is either content-addressed (two
//! builds writing the same blob or snapshot write the same thing, and the first
//! rename wins) or private to it (`tmp/` names carry the pid and a counter). Leftovers
//! of killed builds in `tmp/` are removed by the next kiln that finds itself alone.

use crate::{digest, Context, Error, Result};
use fs_err as fs;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A held store lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct StoreLock {
    _lock: Flock<File>,
}

/// A store rooted at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating as needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        // Absolute, because the namespace helper changes its working directory (overlay
        // lowerdirs are given relative to the snapshots directory).
        let root = root.into();
        let root = std::path::absolute(&root).ctx(|| format!("resolving {}", root.display()))?;
        for d in [
            "blobs/sha256",
            "snapshots/empty",
            "cache",
            "cache-mounts",
            "tmp",
        ] {
            let p = root.join(d);
            fs::create_dir_all(&p)?;
        }
        Ok(Store { root })
    }

    fn lock_file(&self) -> Result<File> {
        let p = self.root.join("lock");
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .ctx(|| format!("opening {}", p.display()))
    }

    /// Takes the store for a build (or `du`): shared with other builds, waiting while
    /// a prune runs (`on_wait` is called first). When no other kiln holds the store,
    /// `alone` runs first, under the exclusive lock, to clear what killed builds left.
    pub fn lock_shared<E: From<Error>>(
        &self,
        on_wait: impl FnOnce(),
        alone: impl FnOnce(&Store) -> Result<(), E>,
    ) -> Result<StoreLock, E> {
        let f = match try_lock(self.lock_file()?, FlockArg::LockExclusiveNonblock)? {
            Ok(l) => {
                self.retire_unsynced()?;
                alone(self)?;
                l.relock(FlockArg::LockShared)
                    .ctx(|| "downgrading the store lock".into())?;
                return Ok(StoreLock { _lock: l });
            }
            Err(f) => f,
        };
        match try_lock(f, FlockArg::LockSharedNonblock)? {
            Ok(l) => Ok(StoreLock { _lock: l }),
            Err(f) => Ok(wait_lock(f, FlockArg::LockShared, on_wait)?),
        }
    }

    /// Takes the store alone (for `prune`), waiting for running builds.
    pub fn lock_exclusive(&self, on_wait: impl FnOnce()) -> Result<StoreLock> {
        let l = match try_lock(self.lock_file()?, FlockArg::LockExclusiveNonblock)? {
            Ok(l) => StoreLock { _lock: l },
            Err(f) => wait_lock(f, FlockArg::LockExclusive, on_wait)?,
        };
        self.retire_unsynced()?;
        Ok(l)
    }

    /// Records that snapshot `id` is about to be placed without being synced, and
    /// returns when that record is on disk; `false` when this boot has no id to
    /// record it under (the caller then syncs the snapshot instead).
    ///
    /// Why: syncing a step's files before its snapshot is committed cost a large RUN
    /// more than its command (1 GiB took 1.3 s of `syncfs` after the layer was made).
    /// Instead, as overlayfs' own `volatile` option does, a snapshot is trusted only
    /// in the boot that made it until a later `syncfs` has written it
    /// ([`Store::unsynced_marks`]); the first lock of the store in a later boot moves
    /// every snapshot still marked into `tmp/` ([`Store::retire_unsynced`]), and its
    /// steps run again. A record never points at a snapshot that may be torn.
    pub fn mark_unsynced(&self, id: &str) -> Result<bool> {
        let Some(boot) = boot_id() else {
            return Ok(false);
        };
        let top = self.root.join("unsynced");
        let dir = top.join(&boot);
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            for d in [&top, &self.root] {
                sync_dir(d)?;
            }
        }
        let mark = dir.join(id);
        File::create(&mark)
            .and_then(|f| f.sync_all())
            .ctx(|| format!("writing {}", mark.display()))?;
        sync_dir(&dir)?;
        Ok(true)
    }

    /// This boot's marks of unsynced snapshots: once a `syncfs` of the store that
    /// started after they were made has returned, they can go.
    pub fn unsynced_marks(&self) -> Vec<PathBuf> {
        let Some(boot) = boot_id() else {
            return Vec::new();
        };
        fs::read_dir(self.root.join("unsynced").join(boot))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Marks older than a minute name snapshots the kernel's own writeback (30 s) has
    /// most likely written already: a `syncfs` in the background makes sure, and then
    /// they go. A build that ends first leaves them for the next one.
    pub fn forget_synced_marks(&self) {
        let minute_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        let old: Vec<PathBuf> = self
            .unsynced_marks()
            .into_iter()
            .filter(|m| {
                fs::metadata(m)
                    .and_then(|md| md.modified())
                    .is_ok_and(|t| t < minute_ago)
            })
            .collect();
        if old.is_empty() {
            return;
        }
        let Ok(root) = File::open(&self.root) else {
            return;
        };
        std::thread::spawn(move || {
            if nix::unistd::syncfs(&root).is_ok() {
                for m in old {
                    let _ = fs::remove_file(m);
                }
            }
        });
    }

    /// Moves every snapshot marked unsynced in another boot into `tmp/` (to be
    /// deleted with it) and drops those marks. Runs under the exclusive lock.
    pub fn retire_unsynced(&self) -> Result<usize> {
        let top = self.root.join("unsynced");
        let Ok(boots) = fs::read_dir(&top) else {
            return Ok(0);
        };
        let this = boot_id();
        let mut n = 0;
        for b in boots.flatten() {
            if Some(b.file_name().to_string_lossy().to_string()) == this {
                continue;
            }
            let dir = b.path();
            for m in fs::read_dir(&dir)?.flatten() {
                let snapshot = self.snapshot_path(&m.file_name().to_string_lossy());
                if snapshot.exists() {
                    self.retire(&snapshot)?;
                    n += 1;
                }
            }
            // The snapshots' renames are on disk before their marks are gone.
            sync_dir(&self.root.join("snapshots"))?;
            crate::tree::remove_all(&dir)?;
        }
        Ok(n)
    }

    /// Everything in `tmp/` (only meaningful to delete under the exclusive lock).
    pub fn tmp_entries(&self) -> Result<Vec<PathBuf>> {
        let dir = self.root.join("tmp");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir)? {
            out.push(e.ctx(|| format!("reading {}", dir.display()))?.path());
        }
        Ok(out)
    }

    /// Moves `path` (a snapshot or cache mount) into `tmp/` in one rename, so it is
    /// gone for every reader at once; the caller deletes the returned path.
    pub fn retire(&self, path: &Path) -> Result<PathBuf> {
        let to = self.tmp_path("retired");
        fs::rename(path, &to)?;
        Ok(to)
    }

    /// The default root: `$KILN_ROOT`, else `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`.
    pub fn default_root() -> Option<PathBuf> {
        if let Some(r) = std::env::var_os("KILN_ROOT").filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(r));
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(x).join("kiln"));
        }
        std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|h| PathBuf::from(h).join(".local/share/kiln"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self
            .root
            .join("blobs/sha256")
            .join(digest::hex_part(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Reads a small blob (manifest, config) whole.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.blob_path(digest)?;
        Ok(fs::read(&p)?)
    }

    /// A fresh path in the store's temp directory (nothing is created).
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}-{nanos:x}", std::process::id()))
    }

    /// Moves a fully written temp file into place as blob `digest`, after checking that
    /// its content hashes to `digest`.
    pub fn commit_blob(&self, tmp: &Path, digest: &str) -> Result<()> {
        let dst = self.blob_path(digest)?;
        let f = fs::File::open(tmp)?;
        let (actual, _) = digest::HashReader::new(std::io::BufReader::new(f))
            .finish()
            .ctx(|| format!("hashing {}", tmp.display()))?;
        if actual != digest {
            let _ = fs::remove_file(tmp);
            return Err(Error::DigestMismatch {
                what: tmp.display().to_string(),
                expected: digest.into(),
                actual,
            });
        }
        self.rename_into_place(tmp, &dst)
    }

    /// Moves a temp file whose digest the caller computed while writing it.
    pub fn commit_blob_trusted(&self, tmp: &Path, digest: &str) -> Result<()> {
        let dst = self.blob_path(digest)?;
        self.rename_into_place(tmp, &dst)
    }

    fn rename_into_place(&self, tmp: &Path, dst: &Path) -> Result<()> {
        let placed = File::open(tmp)
            .and_then(|f| f.sync_all())
            .ctx(|| format!("syncing {}", tmp.display()))
            .and_then(|()| Ok(fs::rename(tmp, dst)?));
        if placed.is_err() {
            let _ = fs::remove_file(tmp);
        }
        placed?;
        sync_dir(dst.parent().unwrap_or(&self.root))
    }

    /// Writes a small file of the store's own (a record, a hint) at `path`, its
    /// directory made if need be, atomically through a temp file named for `what`.
    pub fn write_file(&self, path: &Path, bytes: &[u8], what: &str) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        atomic_write(path, bytes, &self.tmp_path(what))
    }

    /// Stores a small blob and returns its digest.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<String> {
        let d = digest::of(bytes);
        if !self.has_blob(&d) {
            atomic_write(&self.blob_path(&d)?, bytes, &self.tmp_path("blob"))?;
        }
        Ok(d)
    }

    /// The directory of snapshot `id`.
    pub fn snapshot_path(&self, id: &str) -> PathBuf {
        self.root.join("snapshots").join(id)
    }

    /// The stack `ids` (top-first) as it is mounted: down to the first snapshot whose
    /// root is opaque (a layer with `.wh..wh..opq` at its top hides everything below
    /// it, and overlay ignores an opaque root, so the stack is cut here for every
    /// snapshotter), each snapshot once. An image may hold the same layer twice (`RUN
    /// true` twice leaves two equal layers) and overlay refuses a lower directory that
    /// is already in the stack; the lower copy can go, since every path the lower one
    /// decides, the upper one (the same changes) decides first.
    pub fn visible(&self, ids: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(ids.len());
        for id in ids {
            if !out.contains(id) {
                out.push(id.clone());
            }
            if crate::unpack::is_opaque(&self.snapshot_path(id)) {
                break;
            }
        }
        out
    }

    /// The snapshots directory (overlay lowerdirs are given relative to it).
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// A cache record's path for a hex key.
    pub fn cache_path(&self, key: &str) -> PathBuf {
        self.root.join("cache").join(format!("{key}.json"))
    }

    /// Writes a cache record atomically.
    pub fn write_record(&self, key: &str, bytes: &[u8]) -> Result<()> {
        atomic_write(&self.cache_path(key), bytes, &self.tmp_path("record"))
    }
}

/// Takes a non-blocking `arg` lock: the lock, or the file back when another process
/// holds a conflicting one.
fn try_lock(f: File, arg: FlockArg) -> Result<std::result::Result<Flock<File>, File>> {
    match Flock::lock(f, arg) {
        Ok(l) => Ok(Ok(l)),
        Err((f, nix::errno::Errno::EWOULDBLOCK)) => Ok(Err(f)),
        Err((_, e)) => Err(e).ctx(|| "locking the store".into()),
    }
}

/// Says it waits, then waits for a blocking `arg` lock.
fn wait_lock(f: File, arg: FlockArg, on_wait: impl FnOnce()) -> Result<StoreLock> {
    on_wait();
    match Flock::lock(f, arg) {
        Ok(l) => Ok(StoreLock { _lock: l }),
        Err((_, e)) => Err(e).ctx(|| "locking the store".into()),
    }
}

/// The kernel's id of this boot.
fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.contains('/'))
}

/// The snapshot id for a layer with `diff_id`: short enough that many fit in overlay's
/// mount options (one page), long enough (96 bits) never to collide. Trees with
/// emulated owners (see [`crate::owner`]) differ from the same layer with real owners,
/// so they get their own ids.
pub fn snapshot_id(diff_id: &str, emulated_owners: bool) -> Result<String> {
    let hex = &digest::hex_part(diff_id)?[..24];
    Ok(if emulated_owners {
        format!("{hex}-e")
    } else {
        hex.to_string()
    })
}

/// Writes `bytes` to `dst` through `tmp`: write, fsync, rename, fsync the directory.
pub fn atomic_write(dst: &Path, bytes: &[u8], tmp: &Path) -> Result<()> {
    let written = File::create(tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .ctx(|| format!("writing {}", tmp.display()))
        .and_then(|()| Ok(fs::rename(tmp, dst)?));
    if written.is_err() {
        // ENOSPC, say: the temp file does not stay behind.
        let _ = fs::remove_file(tmp);
    }
    written?;
    match dst.parent() {
        Some(p) => sync_dir(p),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx(|| format!("syncing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_is_cut_at_an_opaque_root_and_holds_each_snapshot_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        for id in ["a", "b", "c"] {
            fs::create_dir_all(s.snapshot_path(id)).expect("mkdir");
        }
        let ids = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(s.visible(&ids(&["a", "a", "b", "a"])), ids(&["a", "b"]));
        xattr::set(s.snapshot_path("b"), crate::unpack::OPAQUE_XATTR, b"y").expect("xattr");
        assert_eq!(s.visible(&ids(&["a", "b", "c"])), ids(&["a", "b"]));
        assert_eq!(s.visible(&ids(&["c", "a"])), ids(&["c", "a"]));
    }

    #[test]
    fn blobs_are_verified_before_they_land() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let d = s.write_blob(b"hello").expect("write");
        assert_eq!(s.read_blob(&d).expect("read"), b"hello");
        let tmp = s.tmp_path("t");
        fs::write(&tmp, b"not hello").expect("write tmp");
        let err = s.commit_blob(&tmp, &d).expect_err("mismatch");
        assert!(matches!(err, Error::DigestMismatch { .. }));
        assert!(!tmp.exists(), "a rejected temp file is removed");
        assert_eq!(
            s.read_blob(&d).expect("read"),
            b"hello",
            "the good blob is untouched"
        );
        assert!(s.blob_path("sha256:../x").is_err());
    }

    #[test]
    fn snapshots_unsynced_in_another_boot_are_retired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        for id in ["ours", "theirs", "kept"] {
            fs::create_dir(s.snapshot_path(id)).expect("snapshot");
        }
        assert!(
            s.mark_unsynced("ours").expect("mark"),
            "this machine has a boot id"
        );
        assert_eq!(s.unsynced_marks().len(), 1);
        // A mark left by an earlier boot, and one for a snapshot pruned since.
        let old = dir
            .path()
            .join("unsynced/00000000-0000-0000-0000-000000000000");
        fs::create_dir_all(&old).expect("old boot");
        fs::write(old.join("theirs"), b"").expect("mark");
        fs::write(old.join("pruned"), b"").expect("mark");
        assert_eq!(s.retire_unsynced().expect("retire"), 1);
        assert!(!s.snapshot_path("theirs").exists());
        assert!(s.snapshot_path("ours").is_dir(), "this boot's stay trusted");
        assert!(s.snapshot_path("kept").is_dir());
        assert!(!old.exists());
        assert_eq!(s.tmp_entries().expect("tmp").len(), 1, "retired into tmp/");
        // Taking the store does the same.
        fs::create_dir_all(&old).expect("old boot");
        fs::write(old.join("ours"), b"").expect("mark");
        drop(s.lock_exclusive(|| {}).expect("lock"));
        assert!(!s.snapshot_path("ours").exists());
    }
}
