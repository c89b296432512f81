//! `FROM image`: a pinned base image, its layers fetched and unpacked.

use super::{Cx, Operation, Reuse};
use crate::cache::{CacheKey, Kind, Layer, Record};
use crate::session::Solver;
use crate::{Error, Result};
use kiln_progress::Vertex;
use kiln_snapshotter::{diff, Store};
use oci_spec::image::ImageManifest;
use rayon::prelude::*;

pub(crate) struct Image<'a> {
    pub pinned: &'a str,
}

impl Operation for Image<'_> {
    /// Its pinned reference.
    fn cache_key(&self, _: &Cx<'_>) -> Result<CacheKey> {
        Ok(CacheKey::new("image", &[self.pinned]))
    }

    fn execute(&self, cx: &Cx<'_>, v: &Vertex) -> Result<Record> {
        pull(cx.solver, self.pinned, v)
    }

    /// A usable record answers without reading the manifest and config again, even
    /// with `--no-cache`: the pinned image is that image.
    fn reuse(&self) -> Reuse {
        Reuse::Always
    }
}

/// Makes sure every layer of `pinned` is downloaded and unpacked; returns the stack.
fn pull(s: &Solver, pinned: &str, v: &Vertex) -> Result<Record> {
    let digest = pinned
        .rsplit_once('@')
        .map(|(_, d)| d)
        .ok_or_else(|| Error::NotPinned(pinned.to_string()))?;
    let bad = |why: String| Error::BadImage {
        image: pinned.to_string(),
        why,
    };
    let store = s.store();
    let manifest = oci_manifest(store, digest).map_err(bad)?;
    let config: serde_json::Value =
        serde_json::from_slice(&store.read_blob(manifest.config().digest().as_ref())?)
            .map_err(|e| bad(format!("bad image config: {e}")))?;
    let diff_ids: Vec<String> = config
        .pointer("/rootfs/diff_ids")
        .and_then(|d| d.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if diff_ids.len() != manifest.layers().len() {
        return Err(bad(format!(
            "config lists {} diff_ids for {} layers",
            diff_ids.len(),
            manifest.layers().len()
        )));
    }
    let mut layers = Vec::new();
    for (l, diff_id) in manifest.layers().iter().zip(&diff_ids) {
        let media = l.media_type().to_string().replace(
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            diff::MEDIA_TYPE_GZIP,
        );
        layers.push(Layer {
            diff_id: diff_id.clone(),
            digest: l.digest().to_string(),
            size: l.size(),
            media_type: media,
            snapshot: s.snapshot_id(diff_id)?,
            pulled: true,
            source: pinned.split_once('@').map(|(repo, _)| repo.to_string()),
        });
    }
    let created = config
        .get("created")
        .and_then(|c| c.as_str())
        .unwrap_or_default()
        .to_string();
    let record = Record {
        layers,
        produced: true,
        created,
        kind: Kind::SourceImage,
        blobs: vec![digest.to_string(), manifest.config().digest().to_string()],
        description: pinned.to_string(),
    };
    let (present, missing): (Vec<&Layer>, Vec<&Layer>) = record
        .layers
        .iter()
        .partition(|l| store.has_blob(&l.digest));
    // A layer already in the store (from another image) is checked against this
    // manifest's size too, as a fetch checks the others: the exported image repeats
    // the descriptor.
    for l in present {
        let have = std::fs::metadata(store.blob_path(&l.digest)?).map(|m| m.len());
        if let Some(have) = have.ok().filter(|&n| n != l.size) {
            return Err(Error::LayerSize {
                image: pinned.to_string(),
                layer: l.digest.clone(),
                want: l.size,
                have,
            });
        }
    }
    s.runtime.block_on(async {
        let fetches = missing.iter().map(|l| {
            s.registry
                .fetch_sized(pinned, &l.digest, Some(l.size), store)
        });
        futures_util::future::try_join_all(fetches).await
    })?;
    for l in &missing {
        v.log(&format!(
            "sha256:{} {} bytes done",
            &l.digest[7..19],
            l.size
        ));
    }
    record
        .layers
        .par_iter()
        .filter(|l| !store.snapshot_path(&l.snapshot).is_dir())
        .try_for_each(|l| -> Result<()> {
            let blob = store.blob_path(&l.digest)?;
            let skipped = s
                .executor
                .unpack(&blob, &l.snapshot, Some(&l.diff_id), &|line: &str| {
                    v.log(line)
                })
                .map_err(|source| Error::Unpack {
                    image: pinned.to_string(),
                    layer: l.digest.clone(),
                    source: Box::new(source),
                })?;
            if !skipped.is_empty() {
                v.log(&format!(
                    "skipped {} device nodes (rootless): {}",
                    skipped.len(),
                    skipped.join(" ")
                ));
            }
            Ok(())
        })?;
    Ok(record)
}
fn oci_manifest(store: &Store, digest: &str) -> Result<ImageManifest, String> {
    let bytes = store.read_blob(digest).map_err(|e| e.to_string())?;
    ImageManifest::from_reader(&bytes[..]).map_err(|e| format!("manifest {digest}: {e}"))
}
