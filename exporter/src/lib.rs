//! kiln's exporters: turn a solved build into an image and put it somewhere.
//!
//! It owns image assembly ([`image`]: config with `rootfs.diff_ids` and `docker
//! history` rows, manifest, per-export times and annotations), layer blobs as an
//! export wants them ([`layers`]: compression, clamped times, cached conversions),
//! image archives ([`archive`]: OCI layout as tar or directory, Docker archive),
//! pushing to a registry, and the build's outputs ([`outputs`]: one [`outputs::Exporter`]
//! per output type, `-o` parsing, `--iidfile`/`--metadata-file`). Files are written to a temp file next to the destination,
//! fsynced and renamed, so a failed export leaves no half-written output.

pub mod archive;
pub mod image;
/// Layer conversions live in the snapshotter, which the cache export shares.
pub use kiln_snapshotter::convert as layers;
pub mod outputs;

pub use image::{assemble, finish, Built, Image, ImageOptions, Multi};
use kiln_registry::{Blob, Pushed, Registry};
use kiln_snapshotter::Store;
use std::path::Path;

/// Everything that can go wrong exporting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] kiln_snapshotter::Error),
    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),
    /// Writing an output failed.
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The build result cannot form an image.
    #[error("assembling the image: {0}")]
    Assemble(String),
    #[error(transparent)]
    Executor(#[from] kiln_executor::Error),
    /// A file operation failed (fs-err's message names the path).
    #[error(transparent)]
    Fs(#[from] std::io::Error),
    /// Export options that do not go together, or an output that cannot be made as
    /// asked.
    #[error("{0}")]
    Options(String),
}

/// Returns an [`Error::Options`] with the formatted message.
#[macro_export]
#[doc(hidden)]
macro_rules! bail {
    ($($t:tt)*) => {
        return Err($crate::Error::Options(format!($($t)*)))
    };
}

/// Result alias for the exporters.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn blobs_of(img: &Image) -> Vec<Blob> {
    let mut blobs: Vec<Blob> = img
        .layers
        .iter()
        .map(|l| Blob {
            digest: l.digest.clone(),
            size: l.size,
            source: l.source.clone(),
        })
        .collect();
    blobs.push(Blob {
        digest: img.config_digest.clone(),
        size: img.config.len() as u64,
        source: None,
    });
    blobs
}

/// Pushes the image to every name in `names`.
pub async fn push(
    img: &Image,
    names: &[String],
    registry: &Registry,
    store: &Store,
) -> Result<Vec<Pushed>> {
    let blobs = blobs_of(img);
    let mut out = Vec::new();
    for n in names {
        out.push(
            registry
                .push(n, &blobs, &img.manifest, &img.manifest_media_type, store)
                .await?,
        );
    }
    Ok(out)
}

/// Pushes every platform's image by digest, then the index to every name in
/// `names`: for each name, the images' pushes and, last, the index's.
pub async fn push_multi(
    multi: &Multi,
    names: &[String],
    registry: &Registry,
    store: &Store,
) -> Result<Vec<Vec<Pushed>>> {
    let mut all = Vec::new();
    for n in names {
        let r = kiln_registry::parse_reference(n)?;
        let mut out = Vec::new();
        for img in &multi.images {
            let by_digest = format!(
                "{}/{}@{}",
                r.registry(),
                r.repository(),
                img.manifest_digest
            );
            out.push(
                registry
                    .push(
                        &by_digest,
                        &blobs_of(img),
                        &img.manifest,
                        &img.manifest_media_type,
                        store,
                    )
                    .await?,
            );
        }
        out.push(
            registry
                .push(n, &[], &multi.index, multi.media_type, store)
                .await?,
        );
        all.push(out);
    }
    Ok(all)
}
