//! kiln's exporters: turn a solved build into an image and put it somewhere.
//!
//! It owns image assembly (config with `rootfs.diff_ids` and `docker history` rows,
//! manifest), the OCI image-layout tarball (`-o type=oci`), and pushing to a registry
//! (`--push` / `-o type=registry`). Files are written to a temp file next to the
//! destination, fsynced and renamed, so a failed export leaves no half-written output.

use kiln_frontend::{BuildGraph, History};
use kiln_registry::{Blob, Pushed, Registry};
use kiln_snapshotter::{digest, Store};
use kiln_solver::cache::{Layer, Record};
use oci_spec::image::{
    DescriptorBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, SCHEMA_VERSION,
};
use petgraph::graph::NodeIndex;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `application/vnd.oci.image.manifest.v1+json`.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

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
}

/// Result alias for the exporters.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A finished image: config and manifest bytes, and its layers (blobs in the store).
#[derive(Debug, Clone)]
pub struct Image {
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub layers: Vec<Layer>,
}

/// Makes the history's non-empty rows match the layers, as BuildKit's
/// `normalizeLayersAndHistory` does, for base images whose history does not (images
/// made by tools that write none): missing rows are added for the base's layers
/// (before this build's own rows, `own_start`, so those still describe their layers);
/// surplus rows become empty from the bottom up.
fn normalize_history(history: &mut Vec<History>, own_start: Option<usize>, layers: usize) {
    let rows = history.iter().filter(|h| !h.empty_layer).count();
    if rows < layers {
        let at = own_start.unwrap_or(history.len()).min(history.len());
        let created = history[..at].iter().rev().find_map(|h| h.created.clone());
        let filler = History {
            created,
            comment: Some("buildkit.exporter.image.v0".into()),
            ..History::default()
        };
        history.splice(at..at, std::iter::repeat_n(filler, layers - rows));
    } else if rows > layers {
        let mut seen = 0;
        for h in history.iter_mut() {
            if seen >= layers {
                h.empty_layer = true;
            }
            if !h.empty_layer {
                seen += 1;
            }
        }
    }
}

/// Builds the image of `graph`'s target from the solved `results`.
pub fn assemble(graph: &BuildGraph, results: &HashMap<NodeIndex, Record>) -> Result<Image> {
    let target = results
        .get(&graph.target)
        .ok_or_else(|| Error::Assemble("the target was not built".into()))?;
    let mut config = graph.config.clone();
    config.rootfs.diff_ids = target.layers.iter().map(|l| l.diff_id.clone()).collect();
    // Times: a row this build added takes its step's run time; rows without a step
    // take the time of the row before, so a fully cached rebuild gives the same config.
    let mut last = config.created.clone();
    config.history = Vec::new();
    for item in &graph.history {
        let mut h = item.entry.clone();
        if item.own {
            if let Some(r) = item.layer.and_then(|n| results.get(&n)) {
                h.empty_layer = !r.produced;
                last = Some(r.created.clone());
            }
            h.created = last.clone();
        } else if h.created.is_some() {
            last = h.created.clone();
        }
        config.history.push(h);
    }
    config.created = last;
    normalize_history(
        &mut config.history,
        graph.history.iter().position(|i| i.own),
        target.layers.len(),
    );
    let config_bytes = serde_json::to_vec(&config).map_err(|e| Error::Assemble(e.to_string()))?;
    let config_digest = digest::of(&config_bytes);
    let desc = |media: MediaType, d: &str, size: u64| {
        DescriptorBuilder::default()
            .media_type(media)
            .digest(
                d.parse::<oci_spec::image::Digest>()
                    .map_err(|e| Error::Assemble(format!("digest {d}: {e}")))?,
            )
            .size(size)
            .build()
            .map_err(|e| Error::Assemble(e.to_string()))
    };
    let layers = target
        .layers
        .iter()
        .map(|l| desc(MediaType::from(l.media_type.as_str()), &l.digest, l.size))
        .collect::<Result<Vec<_>>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(desc(
            MediaType::ImageConfig,
            &config_digest,
            config_bytes.len() as u64,
        )?)
        .layers(layers)
        .build()
        .map_err(|e| Error::Assemble(e.to_string()))?;
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| Error::Assemble(e.to_string()))?;
    Ok(Image {
        manifest_digest: digest::of(&manifest_bytes),
        manifest: manifest_bytes,
        config: config_bytes,
        config_digest,
        layers: target.layers.clone(),
    })
}

/// Stores config and manifest so that every blob of the image is in the store.
pub fn store_image(img: &Image, store: &Store) -> Result<()> {
    store.write_blob(&img.config)?;
    store.write_blob(&img.manifest)?;
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The index.json annotations for a tag, as BuildKit's OCI exporter writes them.
fn name_annotations(name: &str) -> Result<HashMap<String, String>> {
    let r = kiln_registry::parse_reference(name)?;
    let mut a = HashMap::new();
    a.insert("io.containerd.image.name".to_string(), r.whole());
    a.insert(
        "org.opencontainers.image.ref.name".to_string(),
        r.tag().unwrap_or("latest").to_string(),
    );
    Ok(a)
}

/// Writes an OCI image layout tarball to `dest` (`-` for stdout).
pub fn write_oci_tar(img: &Image, names: &[String], dest: &str, store: &Store) -> Result<()> {
    let mut manifests = Vec::new();
    let annotations: Vec<Option<HashMap<String, String>>> = if names.is_empty() {
        vec![None]
    } else {
        names
            .iter()
            .map(|n| name_annotations(n).map(Some))
            .collect::<Result<_>>()?
    };
    for a in annotations {
        let mut b = DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .digest(
                img.manifest_digest
                    .parse::<oci_spec::image::Digest>()
                    .map_err(|e| Error::Assemble(e.to_string()))?,
            )
            .size(img.manifest.len() as u64);
        if let Some(a) = a {
            b = b.annotations(a);
        }
        manifests.push(b.build().map_err(|e| Error::Assemble(e.to_string()))?);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|e| Error::Assemble(e.to_string()))?;
    let index_bytes = serde_json::to_vec(&index).map_err(|e| Error::Assemble(e.to_string()))?;

    if dest == "-" {
        let out = std::io::stdout().lock();
        return write_layout(out, img, &index_bytes, store, Path::new("-")).map(|_| ());
    }
    let dest = PathBuf::from(dest);
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out.tar".into());
    let tmp = dir.join(format!(".{name}.kiln-{}.tmp", std::process::id()));
    let f = File::create(&tmp).map_err(io(&tmp))?;
    let result =
        write_layout(std::io::BufWriter::new(f), img, &index_bytes, store, &tmp).and_then(|w| {
            let f = w.into_inner().map_err(|e| Error::Io {
                path: tmp.display().to_string(),
                source: e.into_error(),
            })?;
            f.sync_all().map_err(io(&tmp))?;
            std::fs::rename(&tmp, &dest).map_err(io(&dest))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_layout<W: Write>(
    out: W,
    img: &Image,
    index: &[u8],
    store: &Store,
    path: &Path,
) -> Result<W> {
    let mut tar = tar::Builder::new(out);
    let entry = |tar: &mut tar::Builder<W>,
                 name: &str,
                 size: u64,
                 data: &mut dyn std::io::Read|
     -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_mtime(0);
        tar.append_data(&mut h, name, data).map_err(io(path))
    };
    let dir = |tar: &mut tar::Builder<W>, name: &str| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        tar.append_data(&mut h, name, std::io::empty())
            .map_err(io(path))
    };
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    entry(
        &mut tar,
        "oci-layout",
        layout.len() as u64,
        &mut &layout[..],
    )?;
    entry(&mut tar, "index.json", index.len() as u64, &mut &index[..])?;
    dir(&mut tar, "blobs")?;
    dir(&mut tar, "blobs/sha256")?;
    let blob_name =
        |d: &str| -> Result<String> { Ok(format!("blobs/sha256/{}", digest::hex_part(d)?)) };
    for (d, bytes) in [
        (&img.manifest_digest, &img.manifest),
        (&img.config_digest, &img.config),
    ] {
        entry(
            &mut tar,
            &blob_name(d)?,
            bytes.len() as u64,
            &mut &bytes[..],
        )?;
    }
    let mut seen = std::collections::HashSet::new();
    for l in &img.layers {
        if !seen.insert(&l.digest) {
            continue;
        }
        let p = store.blob_path(&l.digest)?;
        let mut f = File::open(&p).map_err(io(&p))?;
        entry(&mut tar, &blob_name(&l.digest)?, l.size, &mut f)?;
    }
    tar.into_inner().map_err(io(path))
}

/// Pushes the image to every name in `names`.
pub async fn push(
    img: &Image,
    names: &[String],
    registry: &Registry,
    store: &Store,
) -> Result<Vec<Pushed>> {
    store_image(img, store)?;
    let mut blobs: Vec<Blob> = img
        .layers
        .iter()
        .map(|l| Blob {
            digest: l.digest.clone(),
            size: l.size,
        })
        .collect();
    blobs.push(Blob {
        digest: img.config_digest.clone(),
        size: img.config.len() as u64,
    });
    let mut out = Vec::new();
    for n in names {
        out.push(
            registry
                .push(n, &blobs, &img.manifest, MANIFEST_MEDIA_TYPE, store)
                .await?,
        );
    }
    Ok(out)
}
