//! The helper's protocol: one request in, one response out, as JSON files. Only the
//! helper's two sides ([`crate::helper`], [`crate::work`]) see these types.

use crate::{Action, LayerCompression, LayerDigests, Snapshotter, StepOutcome};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What the helper is asked to do.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // one request per helper process
pub(crate) enum Request {
    /// Unpacks a layer into snapshot `id`: the blob file `blob`, or with `None` the
    /// stream on the helper's stdin, whose blob is `size` bytes.
    Unpack {
        store: PathBuf,
        blob: Option<PathBuf>,
        size: Option<u64>,
        id: String,
        diff_id: Option<String>,
    },
    Step {
        store: PathBuf,
        snapshotter: Snapshotter,
        lowers: Vec<String>,
        dir: PathBuf,
        action: Action,
        layer_out: PathBuf,
        compression: LayerCompression,
        layer_offset: u64,
    },
    /// Unpacks a layer blob into the directory `dir` (created; one already there stays).
    UnpackTree {
        store: PathBuf,
        blob: PathBuf,
        dir: PathBuf,
        diff_id: String,
    },
    /// Writes the tree `dir` as a gzip layer blob at `out`.
    Pack {
        dir: PathBuf,
        out: PathBuf,
    },
    Layer {
        store: PathBuf,
        id: String,
        out: PathBuf,
        compression: LayerCompression,
    },
    ExportFs {
        store: PathBuf,
        lowers: Vec<String>,
        dest: PathBuf,
        tar: bool,
    },
    Remove {
        paths: Vec<PathBuf>,
    },
    Usage {
        paths: Vec<PathBuf>,
    },
    Probe {
        dir: PathBuf,
    },
    ProbeBinfmt,
}

/// What the helper did.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    Unpacked {
        skipped_devices: Vec<String>,
    },
    Step(StepOutcome),
    Layer(LayerDigests),
    Done,
    Usage(Vec<u64>),
    /// `None` when it worked, else why not.
    Probe(Option<String>),
    Failed(String),
}
