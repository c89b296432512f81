//! What the imported cache types share: a [`Description`] read from somewhere, served
//! as a [`CacheStore`], its blobs fetched from where it came from ([`BlobSource`])
//! only when asked.

use super::description::{self, Description};
use super::{CacheKey, CacheStore, Layer, Record};
use crate::{Error, Result};
use kiln_snapshotter::Store;
use std::collections::{HashMap, HashSet};

/// Where an imported cache's blobs come from.
pub trait BlobSource: Send + Sync {
    /// Puts the blob `digest` (`size` bytes) into `store`, its digest checked.
    fn fetch(&self, digest: &str, size: u64, store: &Store) -> Result<()>;
    /// Whether [`BlobSource::fetch_teed`] streams.
    fn streams(&self) -> bool {
        false
    }
    /// [`BlobSource::fetch`] in one try, also writing the bytes to `tee` as they
    /// arrive (see [`CacheStore::fetch_blob_teed`]).
    fn fetch_teed(&self, digest: &str, size: u64, store: &Store, tee: std::fs::File) -> Result<()> {
        drop(tee);
        self.fetch(digest, size, store)
    }
}

/// Moves the finished download `tmp` into `store` as `digest` once its content hashes
/// to it; a download that does not is removed.
pub fn commit(store: &Store, tmp: &std::path::Path, digest: &str) -> Result<()> {
    let r = store.commit_blob(tmp, digest);
    if r.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    Ok(r?)
}

/// An imported cache.
pub struct Imported {
    what: String,
    store: Store,
    records: HashMap<String, Record>,
    /// The blobs the cache holds.
    blobs: HashSet<String>,
    /// Cache mounts' contents, by mount name.
    mounts: HashMap<String, Layer>,
    source: Box<dyn BlobSource>,
}

impl Imported {
    /// The cache `what` (for messages) that `desc` describes, of which the blobs
    /// `blobs` are there. Its layers name `repository` as their source (a push to its
    /// registry then mounts them), and their snapshots by `snapshot_id` (diffID to id
    /// in the importing build's identity mapping). A record that names a blob the
    /// cache lacks is dropped.
    pub fn new(
        what: &str,
        desc: Description,
        blobs: HashSet<String>,
        repository: Option<String>,
        snapshot_id: impl Fn(&str) -> Option<String>,
        source: Box<dyn BlobSource>,
        store: Store,
    ) -> Result<Imported> {
        if desc.key_version != super::KEY_VERSION {
            return Err(Error::Input(format!(
                "cache {what}: made by a kiln with cache keys of version {} (this one: {})",
                desc.key_version,
                super::KEY_VERSION
            )));
        }
        let records = desc
            .records(snapshot_id)
            .into_iter()
            .filter(|(_, r)| r.layers.iter().all(|l| blobs.contains(&l.digest)))
            .map(|(k, mut r)| {
                for l in &mut r.layers {
                    l.source.clone_from(&repository);
                }
                (k, r)
            })
            .collect();
        let mounts = desc
            .mounts
            .iter()
            .filter(|m| blobs.contains(&m.digest))
            .map(|m| (m.name.clone(), m.layer()))
            .collect();
        Ok(Imported {
            what: what.to_string(),
            store,
            records,
            blobs,
            mounts,
            source,
        })
    }

    /// What it is, and how many keys it has results for.
    pub fn summary(&self) -> String {
        format!("{} ({} results)", self.what, self.records.len())
    }
}

impl CacheStore for Imported {
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
        self.source.fetch(&layer.digest, layer.size, &self.store)?;
        Ok(true)
    }

    fn streams(&self, layer: &Layer) -> bool {
        self.source.streams() && self.blobs.contains(&layer.digest)
    }

    fn fetch_blob_teed(&self, layer: &Layer, tee: std::fs::File) -> Result<bool> {
        if !self.streams(layer) {
            return Ok(false);
        }
        self.source
            .fetch_teed(&layer.digest, layer.size, &self.store, tee)?;
        Ok(true)
    }

    fn mount(&self, name: &str) -> Option<Layer> {
        self.mounts.get(name).cloned()
    }
}

/// The OCI image manifest of a cache whose config (the description) has
/// `config_digest` and `config_len`, its layers every blob of `desc`.
pub fn manifest(desc: &Description, config_digest: &str, config_len: usize) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = desc
        .blobs()
        .iter()
        .map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": description::MEDIA_TYPE,
            "digest": config_digest,
            "size": config_len,
        },
        "layers": layers,
    }))
    .unwrap_or_default()
}

/// The media type of a cache's manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
