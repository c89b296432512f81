//! Cache keys, records and the cache stores.
//!
//! A vertex's key ([`CacheKey`]) hashes what it does and the keys of its inputs (for
//! COPY from the context: the selected files' paths, types, modes and contents), so
//! equal keys mean equal results. Keys are portable: they depend on content and on
//! what lands in the image, never on absolute paths, the context's times, the store or
//! the builder's identity mapping, so another checkout on another machine finds the
//! same keys. A record ([`Record`]) maps a key to the resulting layer stack.
//!
//! The solver asks a [`CacheStore`] for records and gives it new ones. [`LocalCache`]
//! keeps them in the store, where a record is only trusted while every snapshot and
//! blob it names is still there; [`Caches`] puts imported caches (`--cache-from`,
//! [`local_dir`]) behind it, whose records name layers that are only in the imported
//! cache until a step must run on them or an export needs their bytes.

mod context;
pub mod description;
pub mod imported;
pub mod local_dir;
pub mod options;
pub mod registry;
pub mod s3;

pub use context::{hash_context, FileHashes, SETTLED};
pub use kiln_snapshotter::records::{Kind, Layer, Record};

use crate::Result;
use kiln_snapshotter::Store;
use sha2::{Digest, Sha256};

/// The version of the cache keys' make-up. Keys hash, among other things, the
/// frontend's step descriptions as JSON: a change to those types, or to what a key
/// covers, bumps it, so that no record made under the old meaning is served.
pub const KEY_VERSION: u32 = 3;

/// Hashes length-prefixed parts into a hex digest (for keys, and for names derived
/// from build inputs: cache mounts, COPY link hints, context digests).
pub fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The directory name, under the store's `cache-mounts/`, of the cache mount `id`
/// (`RUN --mount=type=cache,id=...`; the id defaults to the target).
pub fn mount_dir_name(id: &str) -> String {
    digest(&["cache-mount", id])[..24].to_string()
}

/// A vertex's cache key: the op kind and its parts, under [`KEY_VERSION`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    pub fn new(kind: &str, parts: &[&str]) -> CacheKey {
        let version = format!("kiln-cache-key/v{KEY_VERSION}");
        let mut all = vec![version.as_str(), kind];
        all.extend_from_slice(parts);
        CacheKey(digest(&all))
    }

    /// The key as hex, as records are filed under it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the solver finds the results of earlier builds and keeps new ones.
///
/// A record `load` answers with names its layers' snapshots by the ids of this
/// build's identity mapping. Its layers are either in the local store, or in this
/// cache: [`CacheStore::fetch_blob`] brings such a layer's blob into the local store,
/// which the solver does (and unpacks it) only when a step must run on the layer or an
/// export needs its bytes.
pub trait CacheStore: Send + Sync {
    /// The record for `key`, if one is usable (and marks it used).
    fn load(&self, key: &CacheKey) -> Option<Record>;
    /// Keeps `record` as the result of `key`.
    fn save(&self, key: &CacheKey, record: &Record) -> Result<()>;
    /// Puts the blob of `layer` into the local store if this cache holds it; says
    /// whether it did.
    fn fetch_blob(&self, _layer: &Layer) -> Result<bool> {
        Ok(false)
    }
    /// Whether [`CacheStore::fetch_blob_teed`] can stream `layer`'s blob.
    fn streams(&self, _layer: &Layer) -> bool {
        false
    }
    /// [`CacheStore::fetch_blob`] in one try that also writes the blob's bytes to
    /// `tee` as they arrive (a pipe into the layer's unpack); says whether this cache
    /// holds the blob. A failure is the caller's to retry with `fetch_blob`.
    fn fetch_blob_teed(&self, _layer: &Layer, _tee: std::fs::File) -> Result<bool> {
        Ok(false)
    }
    /// The contents of the cache mount named `name` ([`mount_dir_name`]), as a layer
    /// whose blob [`CacheStore::fetch_blob`] brings in, if this cache carries it.
    fn mount(&self, _name: &str) -> Option<Layer> {
        None
    }
}

/// The cache kept in kiln's own store (`cache/`).
///
/// Snapshots made with real owners and with emulated ones differ for the same layer
/// (the layer blobs do not), so a store used in both identity-mapping modes files each
/// mode's records apart: the record of `key` is kept under the key and the mode.
#[derive(Debug, Clone)]
pub struct LocalCache {
    store: Store,
    mode: &'static str,
}

impl LocalCache {
    /// The cache of `store` for builds that keep real owners (`preserves_owners`) or
    /// emulate them.
    pub fn new(store: Store, preserves_owners: bool) -> LocalCache {
        let mode = if preserves_owners {
            "owners:real"
        } else {
            "owners:emulated"
        };
        LocalCache { store, mode }
    }

    fn file(&self, key: &CacheKey) -> String {
        digest(&[key.as_str(), self.mode])
    }
}

impl CacheStore for LocalCache {
    fn load(&self, key: &CacheKey) -> Option<Record> {
        self.store.load_record(&self.file(key))
    }

    fn save(&self, key: &CacheKey, record: &Record) -> Result<()> {
        Ok(self.store.save_record(&self.file(key), record)?)
    }
}

/// The local cache first, then each imported cache in `--cache-from` order; new
/// records go to the local cache.
pub struct Caches {
    pub local: LocalCache,
    pub imports: Vec<Box<dyn CacheStore>>,
}

impl CacheStore for Caches {
    fn load(&self, key: &CacheKey) -> Option<Record> {
        self.local
            .load(key)
            .or_else(|| self.imports.iter().find_map(|c| c.load(key)))
    }

    fn save(&self, key: &CacheKey, record: &Record) -> Result<()> {
        self.local.save(key, record)
    }

    fn fetch_blob(&self, layer: &Layer) -> Result<bool> {
        for c in &self.imports {
            if c.fetch_blob(layer)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn streams(&self, layer: &Layer) -> bool {
        self.imports.iter().any(|c| c.streams(layer))
    }

    fn fetch_blob_teed(&self, layer: &Layer, tee: std::fs::File) -> Result<bool> {
        match self.imports.iter().find(|c| c.streams(layer)) {
            Some(c) => c.fetch_blob_teed(layer, tee),
            None => Ok(false),
        }
    }

    fn mount(&self, name: &str) -> Option<Layer> {
        self.imports.iter().find_map(|c| c.mount(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_versioned_and_separate_their_parts() {
        let k = CacheKey::new("run", &["ab", "c"]);
        assert_eq!(k, CacheKey::new("run", &["ab", "c"]));
        assert_ne!(k, CacheKey::new("run", &["a", "bc"]), "length-prefixed");
        assert_ne!(k, CacheKey::new("copy", &["ab", "c"]));
        let unversioned = digest(&["run", "ab", "c"]);
        assert_ne!(k.as_str(), unversioned);
    }
}
