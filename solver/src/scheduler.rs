//! The DAG scheduler: every vertex starts as soon as its inputs are done, on a rayon
//! pool, so independent stages run at the same time. Pulls use the tokio runtime for
//! concurrent downloads.

use crate::cache::{self, CacheKey, CacheStore, Layer, Record};
use crate::{ops, Error, Result};
use kiln_executor::{Emulator, Executor, LayerCompression, SecretFrom};
use kiln_frontend::BuildGraph;
use kiln_progress::Progress;
use kiln_registry::Registry;
use kiln_snapshotter::Store;
use petgraph::graph::NodeIndex;
use petgraph::Direction;
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

struct State {
    done: HashMap<NodeIndex, Done>,
    waiting: HashMap<NodeIndex, usize>,
    error: Option<Error>,
}

/// Runs every vertex of `g`; returns each vertex's result.
pub fn solve(s: &Solver, g: &BuildGraph) -> Result<HashMap<NodeIndex, Record>> {
    let dag = &g.dag;
    let waiting: HashMap<NodeIndex, usize> = dag
        .node_indices()
        .map(|n| (n, dag.neighbors_directed(n, Direction::Incoming).count()))
        .collect();
    let roots: Vec<NodeIndex> = waiting
        .iter()
        .filter(|(_, &c)| c == 0)
        .map(|(&n, _)| n)
        .collect();
    let state = Mutex::new(State {
        done: HashMap::new(),
        waiting,
        error: None,
    });
    // Vertices mostly wait on child processes and the network, so the pool is wider
    // than the core count; the CPU work happens in the helpers.
    let threads = dag.node_count().clamp(2, 16);
    // Stacks of 16 MiB (address space, touched only as used): the walks a vertex makes
    // recurse once per directory level, down to `MAX_TREE_DEPTH`.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(16 << 20)
        .build()
        .map_err(|e| Error::Scheduler(e.to_string()))?;
    pool.scope(|scope| {
        for r in roots {
            spawn(scope, s, g, &state, r);
        }
    });
    let st = state.into_inner().unwrap_or_else(|p| p.into_inner());
    // What was learned of the context stays useful even when a step failed.
    if let Err(e) = s.file_hashes.save(s.store()) {
        tracing::warn!("keeping the context's file digests: {e}");
    }
    if let Some(e) = st.error {
        return Err(e);
    }
    Ok(st.done.into_iter().map(|(n, d)| (n, d.record)).collect())
}

fn spawn<'s>(
    scope: &rayon::Scope<'s>,
    s: &'s Solver,
    g: &'s BuildGraph,
    state: &'s Mutex<State>,
    n: NodeIndex,
) {
    scope.spawn(move |scope| {
        let inputs = {
            let st = state.lock().unwrap_or_else(|p| p.into_inner());
            if st.error.is_some() {
                return;
            }
            // Only this vertex's inputs (its parent and COPY source), not every result.
            g.dag
                .neighbors_directed(n, Direction::Incoming)
                .filter_map(|i| st.done.get(&i).map(|d| (i, d.clone())))
                .collect::<HashMap<_, _>>()
        };
        let result = ops::run_vertex(s, g, n, &inputs);
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(d) => {
                st.done.insert(n, d);
                let ready: Vec<NodeIndex> = g
                    .dag
                    .neighbors_directed(n, Direction::Outgoing)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .filter(|m| {
                        let c = st.waiting.get_mut(m).map(|c| {
                            *c -= 1;
                            *c
                        });
                        c == Some(0)
                    })
                    .collect();
                drop(st);
                for m in ready {
                    spawn(scope, s, g, state, m);
                }
            }
            Err(e) => {
                if st.error.is_none() {
                    st.error = Some(e);
                }
            }
        }
    });
}

impl Solver {
    /// The build's store.
    pub fn store(&self) -> &Store {
        self.executor.store()
    }

    /// Snapshots made with real owners and with emulated ones differ for the same
    /// layer, so neither mode's cache results or snapshots serve the other: this tag
    /// enters the root cache keys.
    pub(crate) fn owners_tag(&self) -> &'static str {
        if self.executor.preserves_owners() {
            "owners:real"
        } else {
            "owners:emulated"
        }
    }

    /// The snapshot id for a layer in this identity-mapping mode.
    pub(crate) fn snapshot_id(&self, diff_id: &str) -> Result<String> {
        Ok(kiln_snapshotter::store::snapshot_id(
            diff_id,
            !self.executor.preserves_owners(),
        )?)
    }
}
