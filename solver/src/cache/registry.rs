//! `type=registry` caches: the cache manifest pushed to a repository of a registry
//! (`ref=REPO:TAG`), its config the cache's [`Description`], its layers the cache's
//! blobs.
//!
//! Import reads the manifest and the description only. Every layer of an imported
//! result names the cache's repository as its source, so a push of the image to the
//! same registry mounts the layer from there (or finds it) without downloading it; a
//! blob is fetched (and its digest checked) only when a step must run on the layer or
//! an export needs its bytes. The export pushes as an image push does: blobs the
//! repository has are skipped, blobs another repository of the registry has are
//! mounted, the manifest goes last, so the tag never names a missing blob.

use super::description::{self, Description};
use super::{CacheKey, CacheStore, Layer, Record};
use crate::{Error, Result};
use kiln_registry::{Blob, Registry, Want};
use kiln_snapshotter::Store;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// An imported `type=registry` cache.
pub struct RegistryCache {
    registry: Arc<Registry>,
    runtime: tokio::runtime::Handle,
    store: Store,
    /// `host/repository` of the cache.
    repository: String,
    records: HashMap<String, Record>,
    blobs: HashSet<String>,
    /// Cache mounts' contents, by mount name.
    mounts: HashMap<String, Layer>,
}

fn cache_err(reference: &str, why: impl std::fmt::Display) -> Error {
    Error::Input(format!("cache {reference}: {why}"))
}

impl RegistryCache {
    /// Reads the cache at `reference`; `snapshot_id` names a layer's snapshot (by its
    /// diffID) in the importing build's identity mapping.
    pub fn open(
        registry: Arc<Registry>,
        runtime: tokio::runtime::Handle,
        reference: &str,
        store: Store,
        snapshot_id: impl Fn(&str) -> Option<String>,
    ) -> Result<RegistryCache> {
        let host = kiln_frontend::Platform::host();
        let want = Want {
            os: host.os,
            architecture: host.architecture,
            variant: host.variant,
        };
        let resolved = runtime
            .block_on(registry.resolve(reference, &want, &store))
            .map_err(|e| cache_err(reference, e))?;
        // A cache manifest, or an image whose config carries its cache inline.
        let media = resolved.manifest.config().media_type().to_string();
        let desc: Description = if media == description::MEDIA_TYPE {
            serde_json::from_slice(&resolved.config)
                .map_err(|e| cache_err(reference, format!("bad cache description: {e}")))?
        } else {
            let config: serde_json::Value = serde_json::from_slice(&resolved.config)
                .map_err(|e| cache_err(reference, format!("bad image config: {e}")))?;
            let inline = config.get(description::INLINE_FIELD).ok_or_else(|| {
                cache_err(
                    reference,
                    format!(
                        "neither a kiln cache ({}) nor an image with one inline",
                        description::MEDIA_TYPE
                    ),
                )
            })?;
            serde_json::from_value(inline.clone())
                .map_err(|e| cache_err(reference, format!("bad inline cache: {e}")))?
        };
        if desc.key_version != super::KEY_VERSION {
            return Err(cache_err(
                reference,
                format!(
                    "made by a kiln with cache keys of version {} (this one: {})",
                    desc.key_version,
                    super::KEY_VERSION
                ),
            ));
        }
        let repository = resolved
            .pinned
            .rsplit_once('@')
            .map(|(r, _)| r.to_string())
            .unwrap_or_default();
        // Only blobs the manifest lists count.
        let blobs: HashSet<String> = resolved
            .manifest
            .layers()
            .iter()
            .map(|l| l.digest().to_string())
            .collect();
        let records = desc
            .records(snapshot_id)
            .into_iter()
            .filter(|(_, r)| r.layers.iter().all(|l| blobs.contains(&l.digest)))
            .map(|(k, mut r)| {
                for l in &mut r.layers {
                    l.source = Some(repository.clone());
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
        Ok(RegistryCache {
            registry,
            runtime,
            store,
            repository,
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

impl CacheStore for RegistryCache {
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
        let pinned = format!("{}@{}", self.repository, layer.digest);
        self.runtime.block_on(self.registry.fetch_sized(
            &pinned,
            &layer.digest,
            Some(layer.size),
            &self.store,
        ))?;
        Ok(true)
    }

    fn mount(&self, name: &str) -> Option<Layer> {
        self.mounts.get(name).cloned()
    }
}

/// Pushes `desc` as the cache at `reference`; its layers' blobs are in `store`, or
/// (for those whose repository in `sources` is on the same registry) there to mount
/// or find.
pub fn export(
    registry: &Registry,
    runtime: &tokio::runtime::Handle,
    reference: &str,
    desc: &Description,
    sources: &HashMap<String, String>,
    store: &Store,
) -> Result<()> {
    let config = serde_json::to_vec(desc).map_err(|e| cache_err(reference, e))?;
    let config_digest = store.write_blob(&config)?;
    let mut blobs: Vec<Blob> = desc
        .blobs()
        .into_iter()
        .map(|l| Blob {
            source: sources.get(&l.digest).cloned(),
            digest: l.digest,
            size: l.size,
        })
        .collect();
    let layers: Vec<serde_json::Value> = desc
        .blobs()
        .iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.size,
            })
        })
        .collect();
    blobs.push(Blob {
        digest: config_digest.clone(),
        size: config.len() as u64,
        source: None,
    });
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
    .map_err(|e| cache_err(reference, e))?;
    runtime.block_on(registry.push(reference, &blobs, &manifest, MANIFEST_MEDIA_TYPE, store))?;
    Ok(())
}
