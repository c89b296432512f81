//! Image assembly: the config (with `rootfs.diff_ids` and history) and the manifest of
//! a solved build, made for one export's options.
//!
//! Manifests and indexes are written from kiln's own serde types rather than
//! oci-spec's builders: oci-spec keeps annotations in a `HashMap`, whose order would
//! change from run to run, and with it the digest. Field order follows the Go types
//! BuildKit serializes (schemaVersion, mediaType, config, layers, annotations).

use crate::layers::{export_layer, LayerOptions};
use crate::{Error, Result};
use kiln_frontend::{BuildGraph, History, ImageConfig};
use kiln_snapshotter::records::{Layer, Record};
use kiln_snapshotter::{digest, Store};
use petgraph::graph::NodeIndex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// In an image index: the platform of the manifest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<DescPlatform>,
}

/// A descriptor's platform, in the field order Go writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DescPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: &str, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size,
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

/// An image index (or Docker manifest list).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Index<'a> {
    pub schema_version: u32,
    pub media_type: &'a str,
    pub manifests: Vec<Descriptor>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index<'_> {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Assemble(e.to_string()))
    }
}

/// A solved build before any export option: config and layer stack.
#[derive(Debug, Clone, Default)]
pub struct Built {
    pub config: ImageConfig,
    pub layers: Vec<Layer>,
    /// Fields added to the config as they are (`--cache-to type=inline` puts the
    /// cache's description there).
    pub extra_config: std::collections::BTreeMap<String, serde_json::Value>,
    /// Which history rows this build added (their times follow SOURCE_DATE_EPOCH).
    own_rows: Vec<bool>,
}

/// Options of one image export.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    pub layers: LayerOptions,
    /// SOURCE_DATE_EPOCH: the config's `created` and history times after it become it.
    pub epoch: Option<u64>,
    /// `annotation.K=V` / `annotation-manifest.K=V`.
    pub manifest_annotations: BTreeMap<String, String>,
}

/// A finished image: config and manifest bytes, and its layers (blobs in the store).
#[derive(Debug, Clone)]
pub struct Image {
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub layers: Vec<Layer>,
}

impl Image {
    /// The manifest's descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            &self.manifest_media_type,
            &self.manifest_digest,
            self.manifest.len() as u64,
        )
    }
}

/// Several platforms' images under one image index (or Docker manifest list, when
/// the images have Docker media types).
#[derive(Debug, Clone)]
pub struct Multi {
    pub images: Vec<Image>,
    pub index: Vec<u8>,
    pub digest: String,
    pub media_type: &'static str,
}

impl Multi {
    /// The index of `images` (one per platform, in order), with `annotations`
    /// (`annotation-index.K=V`).
    pub fn new(
        images: Vec<(kiln_frontend::Platform, Image)>,
        annotations: BTreeMap<String, String>,
    ) -> Result<Multi> {
        let docker = images
            .first()
            .is_some_and(|(_, i)| i.manifest_media_type == DOCKER_MANIFEST);
        let media_type = if docker { DOCKER_LIST } else { OCI_INDEX };
        let manifests = images
            .iter()
            .map(|(p, i)| Descriptor {
                platform: Some(DescPlatform {
                    architecture: p.architecture.clone(),
                    os: p.os.clone(),
                    variant: p.variant.clone(),
                }),
                ..i.descriptor()
            })
            .collect();
        let index = Index {
            schema_version: 2,
            media_type,
            manifests,
            annotations,
        }
        .to_bytes()?;
        Ok(Multi {
            digest: digest::of(&index),
            images: images.into_iter().map(|(_, i)| i).collect(),
            index,
            media_type,
        })
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(self.media_type, &self.digest, self.index.len() as u64)
    }
}

/// Makes the history's non-empty rows match the layers, as BuildKit's
/// `normalizeLayersAndHistory` does, for base images whose history does not (images
/// made by tools that write none): missing rows are added for the base's layers
/// (before this build's own rows, `own_start`, so those still describe their layers);
/// surplus rows become empty from the bottom up.
fn normalize_history(
    history: &mut Vec<History>,
    own: &mut Vec<bool>,
    own_start: Option<usize>,
    layers: usize,
) {
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
        own.splice(at..at, std::iter::repeat_n(false, layers - rows));
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

/// Collects the image of `graph`'s target from the solved `results`.
pub fn assemble(graph: &BuildGraph, results: &HashMap<NodeIndex, Record>) -> Result<Built> {
    let target = results
        .get(&graph.target)
        .ok_or_else(|| Error::Assemble("the target was not built".into()))?;
    let mut config = graph.config.clone();
    // Times: a row this build added takes its step's run time; rows without a step
    // take the time of the row before, so a fully cached rebuild gives the same config.
    let mut last = config.created.clone();
    config.history = Vec::new();
    let mut own_rows = Vec::new();
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
        own_rows.push(item.own);
    }
    config.created = last;
    normalize_history(
        &mut config.history,
        &mut own_rows,
        graph.history.iter().position(|i| i.own),
        target.layers.len(),
    );
    Ok(Built {
        config,
        layers: target.layers.clone(),
        extra_config: Default::default(),
        own_rows,
    })
}

/// RFC 3339 of a Unix time, as Go's `time.Time` marshals a UTC time.
fn rfc3339(epoch: u64) -> Result<String> {
    let t = chrono::DateTime::from_timestamp(epoch as i64, 0)
        .ok_or_else(|| Error::Options(format!("SOURCE_DATE_EPOCH {epoch} is out of range")))?;
    Ok(t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Whether an RFC 3339 time is after `epoch` (unparsable times count as after).
fn after(t: &str, epoch: u64) -> bool {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| t.timestamp() > epoch as i64)
        .unwrap_or(true)
}

/// Makes the image `built` becomes under `opts`: layers converted as asked, times
/// clamped, config and manifest serialized.
pub fn finish(built: &Built, opts: &ImageOptions, store: &Store) -> Result<Image> {
    let layers = built
        .layers
        .iter()
        .map(|l| Ok(export_layer(store, l, &opts.layers)?))
        .collect::<Result<Vec<_>>>()?;
    let mut config = built.config.clone();
    config.rootfs.diff_ids = layers.iter().map(|l| l.diff_id.clone()).collect();
    config.rootfs.kind = "layers".into();
    if let Some(epoch) = opts.epoch {
        // As BuildKit: the image's time is the epoch; history rows this build added,
        // and any dated after the epoch, take it too.
        let stamp = rfc3339(epoch)?;
        config.created = Some(stamp.clone());
        for (h, own) in config.history.iter_mut().zip(&built.own_rows) {
            if *own || h.created.as_deref().is_some_and(|c| after(c, epoch)) {
                h.created = Some(stamp.clone());
            }
        }
    }
    let oci = opts.layers.oci_media_types;
    if !oci && !opts.manifest_annotations.is_empty() {
        return Err(Error::Options(
            "annotations need OCI media types (oci-mediatypes=true)".into(),
        ));
    }
    let config_bytes = if built.extra_config.is_empty() {
        serde_json::to_vec(&config)
    } else {
        serde_json::to_value(&config).and_then(|mut v| {
            if let Some(m) = v.as_object_mut() {
                m.extend(built.extra_config.clone());
            }
            serde_json::to_vec(&v)
        })
    }
    .map_err(|e| Error::Assemble(e.to_string()))?;
    let config_digest = digest::of(&config_bytes);
    let manifest_media_type = if oci { OCI_MANIFEST } else { DOCKER_MANIFEST };
    let manifest = Manifest {
        schema_version: 2,
        media_type: manifest_media_type,
        config: Descriptor::new(
            if oci { OCI_CONFIG } else { DOCKER_CONFIG },
            &config_digest,
            config_bytes.len() as u64,
        ),
        layers: layers
            .iter()
            .map(|l| Descriptor::new(&l.media_type, &l.digest, l.size))
            .collect(),
        annotations: &opts.manifest_annotations,
    };
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| Error::Assemble(e.to_string()))?;
    let img = Image {
        manifest_digest: digest::of(&manifest_bytes),
        manifest: manifest_bytes,
        manifest_media_type: manifest_media_type.to_string(),
        config: config_bytes,
        config_digest,
        layers,
    };
    store.write_blob(&img.config)?;
    store.write_blob(&img.manifest)?;
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_times_are_go_style_and_compare() {
        assert_eq!(rfc3339(0).expect("t"), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000).expect("t"), "2023-11-14T22:13:20Z");
        assert!(after("2024-01-01T00:00:00.123456789Z", 1_700_000_000));
        assert!(!after("2023-01-01T00:00:00Z", 1_700_000_000));
    }
}
