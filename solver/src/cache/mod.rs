//! Cache keys, records and the cache store.
//!
//! A vertex's key ([`CacheKey`]) hashes what it does and the keys of its inputs (for
//! COPY from the context: the selected files' paths, types, modes and contents), so
//! equal keys mean equal results. A record ([`Record`]) maps a key to the resulting
//! layer stack. The solver asks a [`CacheStore`] for records and gives it new ones;
//! [`LocalCache`] keeps them in the store, where a record is only trusted while every
//! snapshot and blob it names is still there.

mod context;

pub use context::{hash_context, FileHashes, SETTLED};
pub use kiln_snapshotter::records::{Kind, Layer, Record};

use crate::Result;
use kiln_snapshotter::Store;
use sha2::{Digest, Sha256};

/// The version of the cache keys' make-up. Keys hash, among other things, the
/// frontend's step descriptions as JSON: a change to those types, or to what a key
/// covers, bumps it, so that no record made under the old meaning is served.
pub const KEY_VERSION: u32 = 2;

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
/// `load` answers only with a record whose layers are usable in the local store now
/// (every snapshot and blob there): a store that keeps them elsewhere (a registry, an
/// object store) brings them in before it answers.
pub trait CacheStore: Send + Sync {
    /// The record for `key`, if one is usable (and marks it used).
    fn load(&self, key: &CacheKey) -> Option<Record>;
    /// Keeps `record` as the result of `key`.
    fn save(&self, key: &CacheKey, record: &Record) -> Result<()>;
}

/// The cache kept in kiln's own store (`cache/`).
#[derive(Debug, Clone)]
pub struct LocalCache {
    store: Store,
}

impl LocalCache {
    pub fn new(store: Store) -> LocalCache {
        LocalCache { store }
    }
}

impl CacheStore for LocalCache {
    fn load(&self, key: &CacheKey) -> Option<Record> {
        self.store.load_record(key.as_str())
    }

    fn save(&self, key: &CacheKey, record: &Record) -> Result<()> {
        Ok(self.store.save_record(key.as_str(), record)?)
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
