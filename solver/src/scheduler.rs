//! The DAG scheduler: every vertex starts as soon as its inputs are done, on a rayon
//! pool, so independent stages run at the same time. Pulls use the tokio runtime for
//! concurrent downloads.

use crate::cache::{self, Layer, Record};
use crate::fileop::{CopyAction, Source};
use crate::helper::{Action, Launcher, Request, Response};
use crate::progress::{Progress, Vertex};
use crate::{Error, Result};
use kiln_frontend::{BuildGraph, CopyFrom, Op, Step};
use kiln_registry::Registry;
use kiln_snapshotter::{diff, store, Store};
use petgraph::graph::NodeIndex;
use petgraph::Direction;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What a build needs to run vertices.
pub struct Solver {
    pub store: Store,
    pub launcher: Launcher,
    pub registry: Arc<Registry>,
    pub runtime: tokio::runtime::Handle,
    /// The build context directory.
    pub context: PathBuf,
    /// `.dockerignore` patterns for the context.
    pub excludes: Vec<String>,
    /// The compiled patterns.
    pub ignore: kiln_frontend::dockerignore::Matcher,
    /// `--no-cache`: re-run every step (pulled images are still reused).
    pub no_cache: bool,
    pub progress: Progress,
}

/// A finished vertex: its cache key and result.
#[derive(Debug, Clone)]
pub struct Done {
    pub key: String,
    pub record: Record,
}

struct State {
    done: HashMap<NodeIndex, Done>,
    waiting: HashMap<NodeIndex, usize>,
    error: Option<Error>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
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
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Helper(format!("starting the scheduler: {e}")))?;
    pool.scope(|scope| {
        for r in roots {
            spawn(scope, s, g, &state, r);
        }
    });
    let st = state.into_inner().unwrap_or_else(|p| p.into_inner());
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
        let result = run_vertex(s, g, n, &inputs);
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

fn run_vertex(
    s: &Solver,
    g: &BuildGraph,
    n: NodeIndex,
    done: &HashMap<NodeIndex, Done>,
) -> Result<Done> {
    let step = &g.dag[n];
    let parent = step.parent.and_then(|p| done.get(&p));
    let parent_key = parent.map(|d| d.key.as_str()).unwrap_or("");
    let parent_layers = parent.map(|d| d.record.layers.clone()).unwrap_or_default();
    match &step.op {
        Op::Scratch => Ok(Done {
            key: cache::key(&["scratch"]),
            record: Record {
                layers: vec![],
                produced: false,
                created: String::new(),
            },
        }),
        Op::Image { pinned, .. } => {
            let v = s.progress.vertex(&step.name);
            match pull(s, pinned, &v) {
                Ok((record, was_cached)) => {
                    if was_cached {
                        v.cached()
                    } else {
                        v.done()
                    }
                    Ok(Done {
                        key: cache::key(&["image", pinned]),
                        record,
                    })
                }
                Err(e) => {
                    v.error(&e.to_string());
                    Err(e)
                }
            }
        }
        Op::Run(spec) => {
            let spec_json = serde_json::to_string(spec).unwrap_or_default();
            let key = cache::key(&["run", parent_key, &spec_json]);
            cached_or(s, step, key, parent_layers, |v, lowers| {
                execute(s, step, v, lowers, Action::Run(spec.clone()))
            })
        }
        Op::Mkdir { path } => {
            let key = cache::key(&["mkdir", parent_key, path]);
            cached_or(s, step, key, parent_layers, |v, lowers| {
                execute(s, step, v, lowers, Action::Mkdir { path: path.clone() })
            })
        }
        Op::Copy(c) => {
            let spec = format!("{:?}|{}|{:?}|{:?}", c.srcs, c.dest, c.chown, c.chmod);
            let (source, source_key) = match c.from {
                CopyFrom::Context => {
                    let h = cache::hash_context(&s.context, &c.srcs, &s.ignore)
                        .map_err(|e| fail(step, e))?;
                    let source = Source::Context {
                        dir: s.context.clone(),
                        excludes: s.excludes.clone(),
                    };
                    (source, format!("context:{h}"))
                }
                CopyFrom::Step(src) => {
                    let d = done
                        .get(&src)
                        .ok_or_else(|| fail(step, "copy source was not built"))?;
                    (
                        Source::Snapshots(d.record.lowers()),
                        format!("step:{}", d.key),
                    )
                }
            };
            let key = cache::key(&["copy", parent_key, &source_key, &spec]);
            let action = CopyAction {
                source,
                srcs: c.srcs.clone(),
                dest: c.dest.clone(),
                chown: c.chown.clone(),
                chmod: c.chmod,
            };
            cached_or(s, step, key, parent_layers, |v, lowers| {
                execute(s, step, v, lowers, Action::Copy(action.clone()))
            })
        }
    }
}

fn fail(step: &Step, e: impl std::fmt::Display) -> Error {
    Error::StepFailed {
        step: step.name.clone(),
        line: step.line,
        message: e.to_string(),
    }
}

/// Serves a vertex from the cache, or runs it and records the result.
fn cached_or(
    s: &Solver,
    step: &Step,
    key: String,
    parent: Vec<Layer>,
    run: impl FnOnce(&Vertex, Vec<String>) -> Result<Option<Layer>>,
) -> Result<Done> {
    let v = s.progress.vertex(&step.name);
    if !s.no_cache {
        if let Some(record) = cache::load(&s.store, &key) {
            v.cached();
            return Ok(Done { key, record });
        }
    }
    let lowers: Vec<String> = parent.iter().rev().map(|l| l.snapshot.clone()).collect();
    match run(&v, lowers) {
        Ok(layer) => {
            let mut layers = parent;
            let produced = layer.is_some();
            layers.extend(layer);
            let record = Record {
                layers,
                produced,
                created: now(),
            };
            cache::save(&s.store, &key, &record)?;
            v.done();
            Ok(Done { key, record })
        }
        Err(e) => {
            v.error(&e.to_string());
            Err(e)
        }
    }
}

/// Runs a step in the namespace helper and stores its layer.
fn execute(
    s: &Solver,
    step: &Step,
    v: &Vertex,
    lowers: Vec<String>,
    action: Action,
) -> Result<Option<Layer>> {
    let layer_out = s.store.tmp_path("layer");
    let argv = match &action {
        Action::Run(r) => r.argv.clone(),
        _ => Vec::new(),
    };
    let req = Request::Step {
        store: s.store.root().to_path_buf(),
        lowers,
        dir: s.store.tmp_path("step"),
        action,
        layer_out: layer_out.clone(),
    };
    match s
        .launcher
        .run(&req, &|l: &str| v.log(l))
        .map_err(|e| fail(step, e))?
    {
        Response::Step {
            exit_code: 0,
            layer: Some(d),
            ..
        } => {
            s.store.commit_blob_trusted(&layer_out, &d.digest)?;
            Ok(Some(Layer {
                snapshot: store::snapshot_id(&d.diff_id)?,
                diff_id: d.diff_id,
                digest: d.digest,
                size: d.size,
                media_type: diff::MEDIA_TYPE_GZIP.into(),
            }))
        }
        Response::Step {
            exit_code: 0,
            layer: None,
            ..
        } => Ok(None),
        Response::Step {
            message: Some(m), ..
        } => Err(fail(step, m)),
        Response::Step { exit_code, .. } => {
            let tail = v.tail();
            let tail = if tail.is_empty() {
                String::new()
            } else {
                format!("\nlast output:\n  {}", tail.join("\n  "))
            };
            Err(Error::RunFailed {
                step: step.name.clone(),
                line: step.line,
                argv,
                code: exit_code,
                tail,
            })
        }
        other => Err(fail(step, format!("unexpected helper answer {other:?}"))),
    }
}

/// Makes sure every layer of `pinned` is downloaded and unpacked; returns the stack and
/// whether nothing had to be done.
fn pull(s: &Solver, pinned: &str, v: &Vertex) -> Result<(Record, bool)> {
    let digest = pinned
        .rsplit_once('@')
        .map(|(_, d)| d)
        .ok_or_else(|| Error::Helper(format!("{pinned} is not pinned")))?;
    let manifest = oci_manifest(&s.store, digest)?;
    let config: serde_json::Value =
        serde_json::from_slice(&s.store.read_blob(manifest.config().digest().as_ref())?)
            .map_err(|e| Error::Helper(format!("{pinned}: bad image config: {e}")))?;
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
        return Err(Error::Helper(format!(
            "{pinned}: config lists {} diff_ids for {} layers",
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
            snapshot: store::snapshot_id(diff_id)?,
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
    };
    if cache::usable(&s.store, &record) {
        return Ok((record, true));
    }
    let missing: Vec<&Layer> = record
        .layers
        .iter()
        .filter(|l| !s.store.has_blob(&l.digest))
        .collect();
    s.runtime.block_on(async {
        let fetches = missing
            .iter()
            .map(|l| s.registry.fetch_blob(pinned, &l.digest, &s.store));
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
        .filter(|l| !s.store.snapshot_path(&l.snapshot).is_dir())
        .try_for_each(|l| -> Result<()> {
            let req = Request::Unpack {
                store: s.store.root().to_path_buf(),
                blob: s.store.blob_path(&l.digest)?,
                id: l.snapshot.clone(),
                preserve_owners: s.launcher.idmap.preserves_owners(),
            };
            match s.launcher.run(&req, &|line: &str| v.log(line))? {
                Response::Unpacked { skipped_devices } if !skipped_devices.is_empty() => {
                    v.log(&format!(
                        "skipped {} device nodes (rootless): {}",
                        skipped_devices.len(),
                        skipped_devices.join(" ")
                    ));
                    Ok(())
                }
                _ => Ok(()),
            }
        })?;
    Ok((record, false))
}

fn oci_manifest(store: &Store, digest: &str) -> Result<oci_spec::image::ImageManifest> {
    let bytes = store.read_blob(digest)?;
    oci_spec::image::ImageManifest::from_reader(&bytes[..])
        .map_err(|e| Error::Helper(format!("manifest {digest}: {e}")))
}
