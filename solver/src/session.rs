//! What a build gives the solver: the executor, the cache store, the registry, the
//! context and the build's options; and what a finished vertex is.

use crate::cache::{self, CacheKey, CacheStore, Layer, Record};
use crate::Result;
use kiln_executor::{Emulator, Executor, LayerCompression, SecretFrom};
use kiln_progress::Progress;
use kiln_registry::Registry;
use kiln_snapshotter::Store;
use petgraph::graph::NodeIndex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What a build needs to run vertices.
pub struct Solver {
    /// Runs what needs kiln's namespace; its store is the build's.
    pub executor: Arc<dyn Executor>,
    /// Where results of earlier builds are found and new ones kept.
    pub cache: Arc<dyn CacheStore>,
    pub registry: Arc<Registry>,
    pub runtime: tokio::runtime::Handle,
    /// The build context directory.
    pub context: PathBuf,
    /// `--ssh`: the agents' sockets by id.
    pub ssh: HashMap<String, PathBuf>,
    /// `--build-context NAME=DIR`: the named local contexts.
    pub contexts: HashMap<String, PathBuf>,
    /// `.dockerignore` patterns for the context.
    pub excludes: Vec<String>,
    /// The compiled patterns.
    pub ignore: kiln_frontend::dockerignore::Matcher,
    /// Digests of context files from earlier builds (see [`cache::FileHashes`]).
    pub file_hashes: cache::FileHashes,
    /// `--no-cache`: re-run every step (pulled images are still reused).
    pub no_cache: bool,
    /// `--secret id=...`: where each secret's value is on the host.
    pub secrets: HashMap<String, SecretFrom>,
    /// QEMU interpreters to register for foreign architectures, by OCI architecture;
    /// a foreign architecture without one relies on the host's registration.
    pub emulators: HashMap<String, Emulator>,
    /// How steps compress their layers: as the build's outputs want them.
    pub compression: LayerCompression,
    pub progress: Progress,
    /// Where the exported image's last step writes its layer, when the build's one
    /// output is an archive file (see [`Spool`]).
    pub spool: Option<Spool>,
}

/// Where a blob starts in a [`Spool`] file: after the archive's first tar headers (the
/// blob directories', and its own).
pub const SPOOL_OFFSET: u64 = 3 * 512;

/// The temp file of an archive output, into which the step that makes the image's
/// top layer writes that layer as it compresses it (after [`SPOOL_OFFSET`] bytes of
/// room for tar headers), so the layer is written once, not into the store and
/// then copied. The store keeps the snapshot and the cache record, and makes the blob
/// again from the snapshot (`remake_blob`) when a later export needs it.
#[derive(Debug)]
pub struct Spool {
    /// The vertex whose layer goes there.
    pub node: NodeIndex,
    pub path: PathBuf,
    /// The layer written there, once its step has run and made one.
    pub layer: Mutex<Option<Layer>>,
}

/// A finished vertex: its cache key and result.
#[derive(Debug, Clone)]
pub struct Done {
    pub key: CacheKey,
    pub record: Record,
}

impl Solver {
    /// The build's store.
    pub fn store(&self) -> &Store {
        self.executor.store()
    }

    /// The snapshot id for a layer in this identity-mapping mode.
    pub(crate) fn snapshot_id(&self, diff_id: &str) -> Result<String> {
        Ok(kiln_snapshotter::store::snapshot_id(
            diff_id,
            !self.executor.preserves_owners(),
        )?)
    }
}
