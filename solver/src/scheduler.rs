//! The DAG scheduler: every vertex starts as soon as its inputs are done, on a rayon
//! pool, so independent stages run at the same time. Pulls use the tokio runtime for
//! concurrent downloads.

use crate::cache::{self, Layer, Record};
use crate::exec::{Mount, MountSource, RunAction};
use crate::fileop::{CopyAction, Source};
use crate::helper::{Action, Launcher, Request, Response};
use crate::progress::{Progress, Vertex};
use crate::{io_ctx, Error, Result};
use kiln_frontend::{
    BuildGraph, CopyFrom, MountKind, Network, Op, RunSpec, Security, Sharing, Source as SrcKind,
    Step,
};
use kiln_registry::Registry;
use kiln_snapshotter::{diff, store, Store};
use petgraph::graph::NodeIndex;
use petgraph::Direction;
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs;
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
    /// Digests of context files from earlier builds (see [`cache::FileHashes`]).
    pub file_hashes: cache::FileHashes,
    /// `--no-cache`: re-run every step (pulled images are still reused).
    pub no_cache: bool,
    /// `--secret id=...`: where each secret's value is on the host.
    pub secrets: HashMap<String, crate::exec::SecretFrom>,
    /// QEMU interpreters to register for foreign architectures, by OCI architecture;
    /// a foreign architecture without one relies on the host's registration.
    pub emulators: HashMap<String, crate::emulate::Emulator>,
    /// How steps compress their layers: as the build's outputs want them.
    pub compression: diff::LayerCompression,
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
    // Stacks of 16 MiB (address space, touched only as used): the walks a vertex makes
    // recurse once per directory level, down to `MAX_TREE_DEPTH`.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(16 << 20)
        .build()
        .map_err(|e| Error::Helper(format!("starting the scheduler: {e}")))?;
    pool.scope(|scope| {
        for r in roots {
            spawn(scope, s, g, &state, r);
        }
    });
    let st = state.into_inner().unwrap_or_else(|p| p.into_inner());
    // What was learned of the context stays useful even when a step failed.
    if let Err(e) = s.file_hashes.save(&s.store) {
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
            key: cache::key(&["scratch", s.owners_tag()]),
            record: Record {
                layers: vec![],
                produced: false,
                created: String::new(),
                kind: cache::Kind::Regular,
                blobs: vec![],
                description: String::new(),
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
                        key: image_key(s, pinned),
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
            let (action, inputs_key) = run_action(s, step, spec, done)?;
            let spec_json = serde_json::to_string(spec).unwrap_or_default();
            let key = cache::key(&["run", parent_key, &spec_json, &inputs_key]);
            cached_or(s, step, key, parent_layers, |v, lowers| {
                execute(s, n, step, v, lowers, Action::Run(action))
            })
        }
        Op::Mkdir { path, user } => {
            let key = cache::key(&["mkdir", parent_key, path, user]);
            cached_or(s, step, key, parent_layers, |v, lowers| {
                execute(
                    s,
                    n,
                    step,
                    v,
                    lowers,
                    Action::Mkdir {
                        path: path.clone(),
                        user: user.clone(),
                    },
                )
            })
        }
        Op::Copy(c) => {
            let mut paths = Vec::new();
            let mut inline = Vec::new();
            for src in &c.srcs {
                match src {
                    SrcKind::Path(p) => paths.push(p.clone()),
                    SrcKind::Inline(f) => inline.push(f.clone()),
                    SrcKind::Url { url, .. } => {
                        return Err(fail(
                            step,
                            format!("ADD from a URL ({url}) is not supported yet; download it in a RUN step or into the context"),
                        ))
                    }
                }
            }
            let spec = serde_json::to_string(c).unwrap_or_default();
            let (source, source_key) = match c.from {
                CopyFrom::Context if paths.is_empty() => {
                    (Source::Snapshots(Vec::new()), "inline".to_string())
                }
                CopyFrom::Context => {
                    let h = cache::hash_context(&s.context, &paths, &s.ignore, &s.file_hashes)
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
            // The snapshot this COPY made last time, whose unchanged files the new one
            // links (see fileop::Links); --no-cache copies everything afresh.
            let link_ref = match c.from {
                CopyFrom::Context if !paths.is_empty() && !s.no_cache => {
                    Some(s.store.root().join("copy-refs").join(
                        &cache::key(&["copy-ref", &s.context.to_string_lossy(), &spec])[..32],
                    ))
                }
                _ => None,
            };
            let link_from = link_ref
                .as_ref()
                .and_then(|p| fs::read_to_string(p).ok())
                .map(|id| id.trim().to_string());
            let action = CopyAction {
                source,
                srcs: paths,
                inline,
                dest: c.dest.clone(),
                chown: c.chown.clone(),
                chmod: c.chmod,
                parents: c.parents,
                excludes: c.excludes.clone(),
                unpack: c.unpack,
                link_from,
            };
            cached_or(s, step, key, parent_layers, |v, lowers| {
                let layer = execute(s, n, step, v, lowers, Action::Copy(action.clone()))?;
                if let (Some(l), Some(p)) = (&layer, &link_ref) {
                    // Only a hint: a missing or stale one costs a full copy.
                    let _ = remember_copy(s, p, &l.snapshot);
                }
                Ok(layer)
            })
        }
    }
}

/// Notes `snapshot` as the last result of a COPY (`copy-refs/`; pruned with the
/// context digests).
fn remember_copy(s: &Solver, path: &std::path::Path, snapshot: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_ctx(format!("creating {}", dir.display())))?;
    }
    let tmp = s.store.tmp_path("copy-ref");
    let r = kiln_snapshotter::store::atomic_write(path, snapshot.as_bytes(), &tmp);
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    Ok(r?)
}

/// Turns a RUN's mounts into what the helper mounts, refusing what kiln cannot do yet;
/// returns the action and the part of the cache key its mounts' contents make.
fn run_action(
    s: &Solver,
    step: &Step,
    spec: &RunSpec,
    done: &HashMap<NodeIndex, Done>,
) -> Result<(RunAction, String)> {
    if spec.security == Security::Insecure {
        return Err(fail(
            step,
            "RUN --security=insecure is not supported yet: kiln runs rootless and cannot grant extra privileges",
        ));
    }
    let mut mounts = Vec::new();
    let mut keys = Vec::new();
    for m in &spec.mounts {
        let sp = &m.spec;
        let kind = match sp.kind {
            MountKind::Ssh => {
                return Err(fail(step, format!("RUN --mount=type=ssh (target {}) is not supported yet", sp.target)))
            }
            MountKind::Bind if !sp.readonly => {
                return Err(fail(
                    step,
                    format!("RUN --mount=type=bind,rw (target {}) is not supported yet; use a read-only bind", sp.target),
                ))
            }
            MountKind::Bind => match m.from {
                Some(CopyFrom::Step(n)) => {
                    let d = done.get(&n).ok_or_else(|| fail(step, "mount source was not built"))?;
                    keys.push(format!("step:{}:{}", d.key, sp.source));
                    MountSource::Snapshots {
                        ids: d.record.lowers(),
                        subpath: sp.source.clone(),
                    }
                }
                _ => {
                    let src = if sp.source.is_empty() { "." } else { &sp.source };
                    let h = cache::hash_context(&s.context, &[src.to_string()], &s.ignore, &s.file_hashes)
                        .map_err(|e| fail(step, format!("--mount source {src:?}: {e}")))?;
                    keys.push(format!("context:{h}"));
                    let p = crate::fileop::resolve_in_root(&s.context, src, true)?;
                    MountSource::Host(p)
                }
            },
            MountKind::Cache => {
                if m.from.is_some() {
                    return Err(fail(step, format!("RUN --mount=type=cache,from=... (target {}) is not supported yet", sp.target)));
                }
                let id = cache::key(&["cache-mount", &sp.id]);
                MountSource::Cache {
                    dir: s.store.root().join("cache-mounts").join(&id[..24]),
                    lock: sp.sharing != Sharing::Shared,
                    readonly: sp.readonly,
                    mode: sp.mode.unwrap_or(0o755),
                    uid: sp.uid.unwrap_or(0),
                    gid: sp.gid.unwrap_or(0),
                }
            }
            MountKind::Tmpfs => MountSource::Tmpfs { size: sp.size },
            MountKind::Secret => {
                let Some(from) = s.secrets.get(&sp.id) else {
                    if sp.required {
                        return Err(fail(
                            step,
                            format!("secret {} is required but was not provided (kiln build --secret id={},src=FILE)", sp.id, sp.id),
                        ));
                    }
                    continue;
                };
                if let Some(name) = &sp.env {
                    mounts.push(Mount {
                        target: sp.target.clone(),
                        kind: MountSource::SecretEnv {
                            from: from.clone(),
                            name: name.clone(),
                        },
                    });
                    if sp.target.is_empty() {
                        continue;
                    }
                }
                MountSource::Secret {
                    from: from.clone(),
                    mode: sp.mode.unwrap_or(0o400),
                    uid: sp.uid.unwrap_or(0),
                    gid: sp.gid.unwrap_or(0),
                }
            }
        };
        mounts.push(Mount {
            target: sp.target.clone(),
            kind,
        });
    }
    let action = RunAction {
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        user: spec.user.clone(),
        mounts,
        emulator: s.emulators.get(&spec.platform.architecture).cloned(),
        no_network: spec.network == Network::None,
        files: spec.files.clone(),
    };
    Ok((action, keys.join("|")))
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
                kind: cache::Kind::Regular,
                blobs: vec![],
                description: step.name.clone(),
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

/// Makes `layer`'s blob again from its snapshot, for a store that has the snapshot but
/// not the blob (its step wrote the blob into an archive: see [`Spool`]). The helper
/// walks the snapshot as the step walked its upper directory, so the blob comes out
/// the same; it is checked against the layer's digests before it is stored.
pub fn remake_blob(launcher: &Launcher, store: &Store, layer: &Layer) -> Result<()> {
    let compression = if layer.media_type.ends_with("zstd") {
        diff::LayerCompression::Zstd
    } else {
        diff::LayerCompression::Gzip
    };
    let tmp = store.tmp_path("layer");
    let req = Request::Layer {
        store: store.root().to_path_buf(),
        id: layer.snapshot.clone(),
        out: tmp.clone(),
        compression,
    };
    let what = |why: String| Error::Helper(format!("making layer {} again: {why}", layer.digest));
    let result = match launcher.run(&req, &|l: &str| tracing::info!("{l}")) {
        Ok(Response::Layer { layer: d }) if d.digest == layer.digest && d.diff_id == layer.diff_id => {
            store.commit_blob_trusted(&tmp, &layer.digest).map_err(Error::from)
        }
        Ok(Response::Layer { layer: d }) => Err(what(format!(
            "snapshot {} now gives {} (diffID {}), not the recorded {} (diffID {}); build again with --no-cache",
            layer.snapshot, d.digest, d.diff_id, layer.digest, layer.diff_id
        ))),
        Ok(other) => Err(what(format!("unexpected helper answer {other:?}"))),
        Err(Error::Helper(m)) => Err(what(m)),
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Runs a step in the namespace helper and stores its layer.
fn execute(
    s: &Solver,
    n: NodeIndex,
    step: &Step,
    v: &Vertex,
    lowers: Vec<String>,
    action: Action,
) -> Result<Option<Layer>> {
    let spool = s.spool.as_ref().filter(|sp| sp.node == n);
    let (layer_out, layer_offset) = match spool {
        Some(sp) => (sp.path.clone(), SPOOL_OFFSET),
        None => (s.store.tmp_path("layer"), 0),
    };
    let argv = match &action {
        Action::Run(r) => r.argv.clone(),
        _ => Vec::new(),
    };
    let req = Request::Step {
        store: s.store.root().to_path_buf(),
        snapshotter: s.launcher.snapshotter,
        lowers,
        dir: s.store.tmp_path("step"),
        action,
        layer_out: layer_out.clone(),
        compression: s.compression,
        layer_offset,
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
            let layer = Layer {
                snapshot: s.snapshot_id(&d.diff_id)?,
                diff_id: d.diff_id,
                digest: d.digest,
                size: d.size,
                media_type: s.compression.media_type().into(),
                pulled: false,
                source: None,
            };
            match spool {
                Some(sp) => {
                    *sp.layer.lock().unwrap_or_else(|p| p.into_inner()) = Some(layer.clone());
                }
                None => s.store.commit_blob_trusted(&layer_out, &layer.digest)?,
            }
            Ok(Some(layer))
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
    // A usable record answers without reading the manifest and config again.
    let key = image_key(s, pinned);
    if let Some(r) = s.store.load_record(&key) {
        return Ok((r, true));
    }
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
            snapshot: s.snapshot_id(diff_id)?,
            pulled: true,
            source: pinned.split_once('@').map(|(repo, _)| repo.to_string()),
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
        kind: cache::Kind::SourceImage,
        blobs: vec![digest.to_string(), manifest.config().digest().to_string()],
        description: pinned.to_string(),
    };
    let (present, missing): (Vec<&Layer>, Vec<&Layer>) = record
        .layers
        .iter()
        .partition(|l| s.store.has_blob(&l.digest));
    // A layer already in the store (from another image) is checked against this
    // manifest's size too, as a fetch checks the others: the exported image repeats
    // the descriptor.
    for l in present {
        let have = fs::metadata(s.store.blob_path(&l.digest)?).map(|m| m.len());
        if let Some(have) = have.ok().filter(|&n| n != l.size) {
            return Err(Error::Helper(format!(
                "{pinned}: layer {}: the manifest gives its size as {} bytes, the blob has {have}",
                l.digest, l.size
            )));
        }
    }
    s.runtime.block_on(async {
        let fetches = missing.iter().map(|l| {
            s.registry
                .fetch_sized(pinned, &l.digest, Some(l.size), &s.store)
        });
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
                diff_id: Some(l.diff_id.clone()),
            };
            let answer = s
                .launcher
                .run(&req, &|line: &str| v.log(line))
                .map_err(|e| {
                    let why = match e {
                        Error::Helper(m) => m,
                        other => other.to_string(),
                    };
                    Error::Helper(format!("{pinned}: unpacking layer {}: {why}", l.digest))
                })?;
            match answer {
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
    s.store.save_record(&key, &record)?;
    Ok((record, false))
}

/// A pulled image's key: its pinned reference, in this identity-mapping mode.
fn image_key(s: &Solver, pinned: &str) -> String {
    cache::key(&["image", pinned, s.owners_tag()])
}

impl Solver {
    /// Snapshots made with real owners and with emulated ones differ for the same
    /// layer, so neither mode's cache results or snapshots serve the other: this tag
    /// enters the root cache keys.
    fn owners_tag(&self) -> &'static str {
        if self.launcher.idmap.preserves_owners() {
            "owners:real"
        } else {
            "owners:emulated"
        }
    }

    /// The snapshot id for a layer in this identity-mapping mode.
    fn snapshot_id(&self, diff_id: &str) -> Result<String> {
        Ok(store::snapshot_id(
            diff_id,
            !self.launcher.idmap.preserves_owners(),
        )?)
    }
}

fn oci_manifest(store: &Store, digest: &str) -> Result<oci_spec::image::ImageManifest> {
    let bytes = store.read_blob(digest)?;
    oci_spec::image::ImageManifest::from_reader(&bytes[..])
        .map_err(|e| Error::Helper(format!("manifest {digest}: {e}")))
}
