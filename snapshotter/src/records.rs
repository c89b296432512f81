//! Build records: what a cached step or a pulled image holds.
//!
//! A record lives at `cache/<key>.json`, written atomically. It names the whole layer
//! stack of its result (bottom first) and any other blobs it needs (a pulled image's
//! manifest and config), so it is the unit `kiln du` lists and `kiln prune` removes;
//! snapshots and blobs no record names are dangling. The file's mtime is the record's
//! last use: loading it for a cache hit touches it.

use crate::{Context, Result, Store};
use fs_err as fs;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// One layer of a filesystem state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub diff_id: String,
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// The snapshot directory holding the unpacked layer.
    pub snapshot: String,
    /// Whether the blob came from a registry as it is (a base image's layer) rather
    /// than being made by kiln: exporters keep such blobs' compression unless told
    /// `force-compression=true`, as BuildKit does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pulled: bool,
    /// For a pulled layer, the repository it came from (`host/path`), so a push to
    /// another repository of that registry can mount it instead of uploading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// What made a record, as `docker buildx du` groups them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A step's result (RUN, COPY, WORKDIR).
    #[default]
    Regular,
    /// A pulled base image: kept by `kiln prune` unless `--all`, since fetching it
    /// again costs the network.
    SourceImage,
}

/// The result of a vertex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The whole stack, bottom first.
    pub layers: Vec<Layer>,
    /// Whether the vertex itself added a layer (the last one).
    pub produced: bool,
    /// When the vertex ran (RFC 3339), for history.
    pub created: String,
    #[serde(default)]
    pub kind: Kind,
    /// Other blobs the record keeps (a pulled image's manifest and config).
    #[serde(default)]
    pub blobs: Vec<String>,
    /// What made it, for `kiln du --verbose` (the step's name or the image).
    #[serde(default)]
    pub description: String,
}

impl Record {
    /// Snapshot ids top-first, as overlay's lowerdir wants them.
    pub fn lowers(&self) -> Vec<String> {
        self.layers
            .iter()
            .rev()
            .map(|l| l.snapshot.clone())
            .collect()
    }

    /// Whether everything the record names is still in `store`. A layer kiln made
    /// needs only its snapshot: its blob can be made again from it (it is missing when
    /// the step wrote it straight into an archive); a pulled layer needs its blob.
    pub fn usable(&self, store: &Store) -> bool {
        self.layers.iter().all(|l| {
            store.snapshot_path(&l.snapshot).is_dir() && (!l.pulled || store.has_blob(&l.digest))
        }) && self.blobs.iter().all(|b| store.has_blob(b))
    }
}

/// A record as found in the store.
#[derive(Debug, Clone)]
pub struct Found {
    pub key: String,
    /// `None` when the file does not parse (it is then only good for removal).
    pub record: Option<Record>,
    pub last_used: SystemTime,
    /// Bytes the record file takes on disk.
    pub bytes: u64,
}

impl Store {
    /// The record for `key`, if it exists, parses and is still usable; touches it.
    pub fn load_record(&self, key: &str) -> Option<Record> {
        let path = self.cache_path(key);
        let bytes = fs::read(&path).ok()?;
        let r: Record = serde_json::from_slice(&bytes).ok()?;
        if !r.usable(self) {
            return None;
        }
        // Last use drives `prune --filter until=` and `--keep-storage`; failing to
        // record it is not worth failing a build over.
        if let Ok(f) = fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(r)
    }

    /// Writes the record for `key` atomically.
    pub fn save_record(&self, key: &str, r: &Record) -> Result<()> {
        let bytes = serde_json::to_vec(r).map_err(|e| crate::Error::Io {
            context: format!("encoding record {key}"),
            source: e.into(),
        })?;
        self.write_record(key, &bytes)
    }

    /// Every record in the store.
    pub fn records(&self) -> Result<Vec<Found>> {
        let dir = self.root().join("cache");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir)? {
            let e = e.ctx(|| format!("reading {}", dir.display()))?;
            let name = e.file_name().to_string_lossy().to_string();
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            let Ok(meta) = e.metadata() else {
                continue; // removed meanwhile
            };
            let record = fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            out.push(Found {
                key: key.to_string(),
                record,
                last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                bytes: crate::tree::disk_bytes(&meta),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}
