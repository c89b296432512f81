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
use super::imported::{self, BlobSource, Imported, MANIFEST_MEDIA_TYPE};
use crate::{Error, Result};
use kiln_registry::{Blob, Registry, Want};
use kiln_snapshotter::Store;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The blobs of a repository.
struct RepositoryBlobs {
    registry: Arc<Registry>,
    runtime: tokio::runtime::Handle,
    /// `host/repository`.
    repository: String,
}

impl BlobSource for RepositoryBlobs {
    /// A digest-checked, size-bounded fetch, as a pull's.
    fn fetch(&self, digest: &str, size: u64, store: &Store) -> Result<()> {
        let pinned = format!("{}@{digest}", self.repository);
        self.runtime.block_on(
            self.registry
                .fetch_sized(&pinned, digest, Some(size), store),
        )?;
        Ok(())
    }

    fn streams(&self) -> bool {
        true
    }

    fn fetch_teed(&self, digest: &str, size: u64, store: &Store, tee: std::fs::File) -> Result<()> {
        let pinned = format!("{}@{digest}", self.repository);
        self.runtime
            .block_on(self.registry.fetch_teed(&pinned, digest, size, store, tee))?;
        Ok(())
    }
}

fn cache_err(reference: &str, why: impl std::fmt::Display) -> Error {
    Error::Input(format!("cache {reference}: {why}"))
}

/// Reads the cache at `reference`: a cache manifest, or an image whose config
/// carries its cache inline; `snapshot_id` names a layer's snapshot (by its diffID)
/// in the importing build's identity mapping.
pub fn open(
    registry: Arc<Registry>,
    runtime: tokio::runtime::Handle,
    reference: &str,
    store: Store,
    snapshot_id: impl Fn(&str) -> Option<String>,
) -> Result<Imported> {
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
    Imported::new(
        reference,
        desc,
        blobs,
        Some(repository.clone()),
        snapshot_id,
        Box::new(RepositoryBlobs {
            registry,
            runtime,
            repository,
        }),
        store,
    )
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
    blobs.push(Blob {
        digest: config_digest.clone(),
        size: config.len() as u64,
        source: None,
    });
    let manifest = imported::manifest(desc, &config_digest, config.len());
    runtime.block_on(registry.push(reference, &blobs, &manifest, MANIFEST_MEDIA_TYPE, store))?;
    Ok(())
}
