//! The description of an exported cache: which keys give which layer stacks.
//!
//! It is the config blob of the cache's image manifest, with the media type
//! [`MEDIA_TYPE`]. BuildKit's `application/vnd.buildkit.cacheconfig.v0` describes
//! BuildKit's own cache keys (digests of LLB vertices and their inputs' links), which
//! kiln's keys are not, so a BuildKit cache config could not say what a kiln key
//! means: kiln writes a media type of its own instead, in the same place (an OCI image
//! manifest whose layers are the cache's blobs, which registries accept).
//!
//! Layers are kept once, and records name them by index. A record carries what kiln's
//! store keeps of a result but not its snapshot ids, which depend on the identity
//! mapping of the build that imports it, nor where its layers can be had, which is
//! the cache itself (a registry cache names its repository when it is imported).

use super::{CacheKey, Kind, Layer, Record, KEY_VERSION};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The config media type of a kiln cache manifest.
pub const MEDIA_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";

/// The image config field of an inline cache (`--cache-to type=inline`). BuildKit's
/// is `moby.buildkit.cache.v0`, in BuildKit's own format; this one holds a
/// [`Description`].
pub const INLINE_FIELD: &str = "kiln.cache.v1";

/// A layer of the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CachedLayer {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pulled: bool,
}

/// A key's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedRecord {
    pub key: String,
    /// Indexes into [`Description::layers`], bottom first.
    pub layers: Vec<usize>,
    pub produced: bool,
    pub created: String,
    #[serde(default)]
    pub kind: Kind,
    #[serde(default)]
    pub blobs: Vec<String>,
    #[serde(default)]
    pub description: String,
}

/// The contents of a cache mount, as a layer blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedMount {
    /// The mount's directory name ([`super::mount_dir_name`]).
    pub name: String,
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
}

impl CachedMount {
    /// The mount's blob as a layer, for [`super::CacheStore::fetch_blob`].
    pub fn layer(&self) -> Layer {
        Layer {
            diff_id: self.diff_id.clone(),
            digest: self.digest.clone(),
            size: self.size,
            media_type: kiln_snapshotter::diff::MEDIA_TYPE_GZIP.into(),
            snapshot: String::new(),
            pulled: false,
            source: None,
        }
    }
}

/// The whole description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// [`KEY_VERSION`] of the keys: a cache of other keys is not read.
    pub key_version: u32,
    pub layers: Vec<CachedLayer>,
    pub records: Vec<CachedRecord>,
    /// Cache mounts' contents (`--cache-to ...,mounts=true`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<CachedMount>,
}

/// A blob of the cache, as its manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheBlob {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

impl Description {
    /// Every blob the cache holds: its layers', then its mounts' (gzip layers).
    pub fn blobs(&self) -> Vec<CacheBlob> {
        self.layers
            .iter()
            .map(|l| CacheBlob {
                digest: l.digest.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
            })
            .chain(self.mounts.iter().map(|m| CacheBlob {
                digest: m.digest.clone(),
                size: m.size,
                media_type: kiln_snapshotter::diff::MEDIA_TYPE_GZIP.into(),
            }))
            .collect()
    }

    /// The description of `records`.
    pub fn of<'a>(records: impl IntoIterator<Item = (&'a CacheKey, &'a Record)>) -> Description {
        let mut layers: Vec<CachedLayer> = Vec::new();
        let mut index: HashMap<CachedLayer, usize> = HashMap::new();
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (key, r) in records {
            if !seen.insert(key.as_str().to_string()) {
                continue;
            }
            let idx = r
                .layers
                .iter()
                .map(|l| {
                    let c = CachedLayer {
                        digest: l.digest.clone(),
                        diff_id: l.diff_id.clone(),
                        size: l.size,
                        media_type: l.media_type.clone(),
                        pulled: l.pulled,
                    };
                    *index.entry(c.clone()).or_insert_with(|| {
                        layers.push(c);
                        layers.len() - 1
                    })
                })
                .collect();
            out.push(CachedRecord {
                key: key.as_str().to_string(),
                layers: idx,
                produced: r.produced,
                created: r.created.clone(),
                kind: r.kind,
                blobs: r.blobs.clone(),
                description: r.description.clone(),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Description {
            key_version: KEY_VERSION,
            layers,
            records: out,
            mounts: Vec::new(),
        }
    }

    /// Its records by key, their snapshots named by `snapshot_id` (diffID to id, in
    /// the importing build's identity mapping). A record that names a layer the
    /// description lacks is dropped.
    pub fn records(&self, snapshot_id: impl Fn(&str) -> Option<String>) -> HashMap<String, Record> {
        let mut out = HashMap::new();
        for r in &self.records {
            let layers: Option<Vec<Layer>> = r
                .layers
                .iter()
                .map(|&i| {
                    let c = self.layers.get(i)?;
                    Some(Layer {
                        diff_id: c.diff_id.clone(),
                        digest: c.digest.clone(),
                        size: c.size,
                        media_type: c.media_type.clone(),
                        snapshot: snapshot_id(&c.diff_id)?,
                        pulled: c.pulled,
                        source: None,
                    })
                })
                .collect();
            if let Some(layers) = layers {
                out.insert(
                    r.key.clone(),
                    Record {
                        layers,
                        produced: r.produced,
                        created: r.created.clone(),
                        kind: r.kind,
                        blobs: r.blobs.clone(),
                        description: r.description.clone(),
                    },
                );
            }
        }
        out
    }
}
