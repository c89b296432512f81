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
use super::imported::{self, BlobSource, Imported, MANIFEST_MEDIA_TYPE};
use crate::{Error, Result};
use kiln_snapshotter::{digest, Store};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The tag an `index.json` entry carries.
fn ref_name(entry: &serde_json::Value) -> Option<&str> {
    entry.get("annotations")?.get(REF_NAME)?.as_str()
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    Ok(dir.join("blobs/sha256").join(digest::hex_part(digest)?))
}

fn cache_err(dir: &Path, why: impl std::fmt::Display) -> Error {
    Error::Input(format!("cache {}: {why}", dir.display()))
}

/// The blobs of an OCI layout directory.
struct DirBlobs(PathBuf);

impl BlobSource for DirBlobs {
    fn fetch(&self, digest: &str, _size: u64, store: &Store) -> Result<()> {
        let tmp = store.tmp_path("cache-blob");
        if let Err(e) = fs_err::copy(blob_path(&self.0, digest)?, &tmp) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        imported::commit(store, &tmp, digest)
    }
}

/// Reads the cache under `tag` in `dir`; `snapshot_id` names a layer's snapshot (by
/// its diffID) in the importing build's identity mapping.
pub fn open(
    dir: &Path,
    tag: &str,
    store: Store,
    snapshot_id: impl Fn(&str) -> Option<String>,
) -> Result<Imported> {
    let index: serde_json::Value = read_json(dir, &dir.join("index.json"))?;
    let manifests = index
        .get("manifests")
        .and_then(|m| m.as_array())
        .ok_or_else(|| cache_err(dir, "index.json lists no manifests"))?;
    let entry = manifests
        .iter()
        .find(|m| ref_name(m) == Some(tag))
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
    // Only blobs that are there, at their size, count; their digests are checked when
    // they are copied into the store.
    let blobs: HashSet<String> = desc
        .blobs()
        .into_iter()
        .filter(|b| {
            blob_path(dir, &b.digest)
                .ok()
                .and_then(|p| std::fs::metadata(p).ok())
                .is_some_and(|m| m.len() == b.size)
        })
        .map(|b| b.digest)
        .collect();
    Imported::new(
        &dir.display().to_string(),
        desc,
        blobs,
        None,
        snapshot_id,
        Box::new(DirBlobs(dir.to_path_buf())),
        store,
    )
}

fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, p: &Path) -> Result<T> {
    let bytes = fs_err::read(p).map_err(|e| cache_err(dir, e))?;
    serde_json::from_slice(&bytes).map_err(|e| cache_err(dir, format!("{}: {e}", p.display())))
}

/// Writes `desc` and the blobs of its layers (all in `store`) as the cache tagged
/// `tag` in the OCI layout `dir`, keeping the directory's other tags.
pub fn export(dir: &Path, tag: &str, desc: &Description, store: &Store) -> Result<()> {
    fs_err::create_dir_all(dir.join("blobs/sha256"))?;
    let layout = dir.join("oci-layout");
    if !layout.exists() {
        write_file(dir, &layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }
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
    }
    let config = serde_json::to_vec(desc).map_err(|e| cache_err(dir, e))?;
    let config_digest = put_blob(dir, &config)?;
    let manifest = imported::manifest(desc, &config_digest, config.len());
    let manifest_digest = put_blob(dir, &manifest)?;
    // The index last: other tags' entries stay.
    let mut entries: Vec<serde_json::Value> = std::fs::read(dir.join("index.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|m| ref_name(m) != Some(tag))
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
