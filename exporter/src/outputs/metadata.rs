//! `--iidfile` and `--metadata-file`: what the exports made, as buildx reports it.

use super::Exported;
use crate::{archive, bail, Error, Result};
use std::path::Path;

/// `--iidfile`: the image ID (the config digest, as buildx writes it when the
/// exporter reports one).
pub fn write_iidfile(path: &Path, done: &Exported) -> Result<()> {
    let Some(id) = image_id(done) else {
        bail!("--iidfile: no output made an image (give -o type=oci|docker|registry)");
    };
    write_atomic(path, id.as_bytes())
}

/// The image ID buildx reports (`--iidfile`, `-q`): the config's digest, or the index's
/// when several platforms have no one config.
pub fn image_id(done: &Exported) -> Option<&str> {
    if let Some(m) = &done.index {
        return Some(&m.digest);
    }
    done.image.as_ref().map(|img| img.config_digest.as_str())
}

/// `--metadata-file`: the exporter response as buildx writes it.
pub fn write_metadata(path: &Path, done: &Exported) -> Result<()> {
    let mut m = serde_json::Map::new();
    if let Some(index) = &done.index {
        m.insert("containerimage.digest".into(), index.digest.clone().into());
        m.insert(
            "containerimage.descriptor".into(),
            json(serde_json::to_value(index.descriptor()))?,
        );
        if !done.names.is_empty() {
            m.insert("image.name".into(), done.names.join(",").into());
        }
    } else if let Some(img) = &done.image {
        m.insert(
            "containerimage.config.digest".into(),
            img.config_digest.clone().into(),
        );
        m.insert(
            "containerimage.digest".into(),
            img.manifest_digest.clone().into(),
        );
        m.insert(
            "containerimage.descriptor".into(),
            json(serde_json::to_value(img.descriptor()))?,
        );
        if !done.names.is_empty() {
            m.insert("image.name".into(), done.names.join(",").into());
        }
    }
    write_atomic(path, &json(serde_json::to_vec_pretty(&m))?)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = archive::sibling_tmp(path);
    kiln_snapshotter::store::atomic_write(path, bytes, &tmp).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn json<T>(r: serde_json::Result<T>) -> Result<T> {
    r.map_err(|e| Error::Assemble(e.to_string()))
}
