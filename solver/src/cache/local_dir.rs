//! `type=local` caches: an OCI layout directory (what CI cache actions save and
//! restore) holding one image manifest per tag, whose config is the cache's
//! [`Description`] and whose layers are its blobs.
//!
//! Export writes every blob first (temp file, fsync, rename), then the manifest and
//! the config, and `index.json` last, atomically: an interrupted export leaves the
//! directory's previous cache in place, never an index that names a missing blob.
//! Import reads `index.json`, the manifest and the description only; a layer's blob is
//! copied into the store (and its digest checked) when a step must run on it or an
//! export needs it.

use super::description::{self, Description};
use super::{CacheKey, CacheStore, Layer, Record};
use crate::{Error, Result};
use kiln_snapshotter::{digest, Store};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    Ok(dir.join("blobs/sha256").join(digest::hex_part(digest)?))
}

fn cache_err(dir: &Path, why: impl std::fmt::Display) -> Error {
    Error::Input(format!("cache {}: {why}", dir.display()))
}

/// An imported `type=local` cache.
pub struct LocalDir {
    dir: PathBuf,
    store: Store,
    records: HashMap<String, Record>,
    /// The layer blobs the directory holds.
    blobs: HashSet<String>,
    /// Cache mounts' contents, by mount name.
    mounts: HashMap<String, Layer>,
}

impl LocalDir {
    /// Reads the cache under `tag` in `dir`; `snapshot_id` names a layer's snapshot (by
    /// its diffID) in the importing build's identity mapping.
    pub fn open(
        dir: &Path,
        tag: &str,
        store: Store,
        snapshot_id: impl Fn(&str) -> Option<String>,
    ) -> Result<LocalDir> {
        let index: serde_json::Value = read_json(dir, &dir.join("index.json"))?;
        let manifests = index
            .get("manifests")
            .and_then(|m| m.as_array())
            .ok_or_else(|| cache_err(dir, "index.json lists no manifests"))?;
        let tagged = |m: &&serde_json::Value| {
            m.pointer(&format!("/annotations/{}", REF_NAME.replace('/', "~1")))
                .and_then(|v| v.as_str())
                == Some(tag)
        };
        let entry = manifests
            .iter()
            .find(tagged)
            .ok_or_else(|| cache_err(dir, format!("no cache tagged {tag:?}")))?;
        let digest_of = |v: &serde_json::Value| {
            v.get("digest")
                .and_then(|d| d.as_str())
                .map(str::to_string)
                .ok_or_else(|| cache_err(dir, "a descriptor without a digest"))
        };
        let manifest: serde_json::Value = read_json(dir, &blob_path(dir, &digest_of(entry)?)?)?;
        let config = manifest
            .get("config")
            .ok_or_else(|| cache_err(dir, "the cache manifest has no config"))?;
        if config.get("mediaType").and_then(|m| m.as_str()) != Some(description::MEDIA_TYPE) {
            return Err(cache_err(
                dir,
                format!(
                    "the manifest tagged {tag:?} is not a kiln cache ({})",
                    description::MEDIA_TYPE
                ),
            ));
        }
        let desc: Description = read_json(dir, &blob_path(dir, &digest_of(config)?)?)?;
        if desc.key_version != super::KEY_VERSION {
            return Err(cache_err(
                dir,
                format!(
                    "made by a kiln with cache keys of version {} (this one: {})",
                    desc.key_version,
                    super::KEY_VERSION
                ),
            ));
        }
        // Only blobs that are there, at their size, count; their digests are checked
        // when they are copied into the store.
        let present = |digest: &str, size: u64| {
            blob_path(dir, digest)
                .ok()
                .and_then(|p| std::fs::metadata(p).ok())
                .is_some_and(|m| m.len() == size)
        };
        let blobs: HashSet<String> = desc
            .layers
            .iter()
            .filter(|l| present(&l.digest, l.size))
            .map(|l| l.digest.clone())
            .chain(
                desc.mounts
                    .iter()
                    .filter(|m| present(&m.digest, m.size))
                    .map(|m| m.digest.clone()),
            )
            .collect();
        let mounts = desc
            .mounts
            .iter()
            .filter(|m| blobs.contains(&m.digest))
            .map(|m| (m.name.clone(), m.layer()))
            .collect();
        let records = desc
            .records(snapshot_id)
            .into_iter()
            .filter(|(_, r)| r.layers.iter().all(|l| blobs.contains(&l.digest)))
            .collect();
        Ok(LocalDir {
            dir: dir.to_path_buf(),
            store,
            records,
            blobs,
            mounts,
        })
    }

    /// How many keys the cache has results for.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, p: &Path) -> Result<T> {
    let bytes = fs_err::read(p).map_err(|e| cache_err(dir, e))?;
    serde_json::from_slice(&bytes).map_err(|e| cache_err(dir, format!("{}: {e}", p.display())))
}

impl CacheStore for LocalDir {
    fn load(&self, key: &CacheKey) -> Option<Record> {
        self.records.get(key.as_str()).cloned()
    }

    /// An imported cache takes no new records (`--cache-to` writes them).
    fn save(&self, _: &CacheKey, _: &Record) -> Result<()> {
        Ok(())
    }

    fn fetch_blob(&self, layer: &Layer) -> Result<bool> {
        if !self.blobs.contains(&layer.digest) {
            return Ok(false);
        }
        let from = blob_path(&self.dir, &layer.digest)?;
        let tmp = self.store.tmp_path("cache-blob");
        let r = fs_err::copy(&from, &tmp)
            .map_err(Error::from)
            .and_then(|_| Ok(self.store.commit_blob(&tmp, &layer.digest)?));
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r.map(|()| true)
    }

    fn mount(&self, name: &str) -> Option<Layer> {
        self.mounts.get(name).cloned()
    }
}

/// Writes `desc` and the blobs of its layers (all in `store`) as the cache tagged
/// `tag` in the OCI layout `dir`, keeping the directory's other tags.
pub fn export(dir: &Path, tag: &str, desc: &Description, store: &Store) -> Result<()> {
    fs_err::create_dir_all(dir.join("blobs/sha256"))?;
    let layout = dir.join("oci-layout");
    if !layout.exists() {
        write_file(dir, &layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }
    let mut layers = Vec::new();
    for l in desc.blobs() {
        let to = blob_path(dir, &l.digest)?;
        if std::fs::metadata(&to).is_ok_and(|m| m.len() == l.size) {
            // Content-addressed: a blob of the right size under its digest was written
            // whole (temp file, rename) by an earlier export.
        } else {
            let tmp = tmp_in(dir);
            let r = fs_err::copy(store.blob_path(&l.digest)?, &tmp)
                .and_then(|_| fs_err::File::open(&tmp)?.sync_all())
                .and_then(|()| fs_err::rename(&tmp, &to));
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            r?;
        }
        layers.push(serde_json::json!({
            "mediaType": l.media_type,
            "digest": l.digest,
            "size": l.size,
        }));
    }
    let config = serde_json::to_vec(desc).map_err(|e| cache_err(dir, e))?;
    let config_digest = put_blob(dir, &config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": description::MEDIA_TYPE,
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": layers,
    }))
    .map_err(|e| cache_err(dir, e))?;
    let manifest_digest = put_blob(dir, &manifest)?;
    // The index last: other tags' entries stay.
    let mut entries: Vec<serde_json::Value> = std::fs::read(dir.join("index.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            m.pointer(&format!("/annotations/{}", REF_NAME.replace('/', "~1")))
                .and_then(|v| v.as_str())
                != Some(tag)
        })
        .collect();
    entries.push(serde_json::json!({
        "mediaType": MANIFEST_MEDIA_TYPE,
        "digest": manifest_digest,
        "size": manifest.len(),
        "annotations": { REF_NAME: tag },
    }));
    let index = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": entries,
    }))
    .map_err(|e| cache_err(dir, e))?;
    write_file(dir, &dir.join("index.json"), &index)
}

fn tmp_in(dir: &Path) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(".kiln-{}-{n}.tmp", std::process::id()))
}

fn write_file(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(kiln_snapshotter::store::atomic_write(
        path,
        bytes,
        &tmp_in(dir),
    )?)
}

/// Writes `bytes` as a blob of `dir`; returns its digest.
fn put_blob(dir: &Path, bytes: &[u8]) -> Result<String> {
    let d = digest::of(bytes);
    write_file(dir, &blob_path(dir, &d)?, bytes)?;
    Ok(d)
}
