//! The content store: blobs by digest, snapshot directories, cache records, temp space.
//!
//! Layout under the root: `blobs/sha256/<hex>`, `snapshots/<id>/` (one layer's
//! filesystem diff in overlay format each, plus `empty/`), `cache/<key>.json`, `tmp/`.
//! Every write goes to a temp file in the same filesystem, is fsynced and renamed, so
//! readers never see a partial blob or record.

use crate::{digest, Context, Error, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A store rooted at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating as needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for d in ["blobs/sha256", "snapshots/empty", "cache", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).ctx(|| format!("creating {}", p.display()))?;
        }
        Ok(Store { root })
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
        fs::read(&p).ctx(|| format!("reading blob {digest}"))
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
        let f = File::open(tmp).ctx(|| format!("opening {}", tmp.display()))?;
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
        File::open(tmp)
            .and_then(|f| f.sync_all())
            .ctx(|| format!("syncing {}", tmp.display()))?;
        fs::rename(tmp, dst).ctx(|| format!("renaming into {}", dst.display()))?;
        sync_dir(dst.parent().unwrap_or(&self.root))
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

/// The snapshot id for a layer with `diff_id`: short enough that many fit in overlay's
/// mount options (one page), long enough (96 bits) never to collide.
pub fn snapshot_id(diff_id: &str) -> Result<String> {
    Ok(digest::hex_part(diff_id)?[..24].to_string())
}

/// Writes `bytes` to `dst` through `tmp`: write, fsync, rename, fsync the directory.
pub fn atomic_write(dst: &Path, bytes: &[u8], tmp: &Path) -> Result<()> {
    let mut f = File::create(tmp).ctx(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .ctx(|| format!("writing {}", tmp.display()))?;
    fs::rename(tmp, dst).ctx(|| format!("renaming into {}", dst.display()))?;
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
}
