//! The meaning of each op kind of the build graph: one module per kind, each an
//! [`Operation`] (its cache key, and how to execute it when the cache has no result).
//! Adding an op kind is adding a module here and its arm in [`operation`].
//!
//! [`run_vertex`] is the one driver: it asks the op for its key, serves the vertex
//! from the [`crate::cache::CacheStore`] when it may, else executes it and keeps the
//! record.

mod copy;
mod image;
mod local;
mod mkdir;
mod run;
mod scratch;

use crate::cache::{CacheKey, Layer, Record};
use crate::materialize::Need;
use crate::session::{Done, Solver, SPOOL_OFFSET};
use crate::{Error, Result};
use kiln_executor::{Action, StepOutcome, StepSpec};
use kiln_frontend::{BuildGraph, Op, Step};
use kiln_progress::Vertex;
use petgraph::graph::NodeIndex;
use std::collections::HashMap;

/// What an op sees: the build, its vertex, and its inputs' results.
pub(crate) struct Cx<'a> {
    pub solver: &'a Solver,
    pub node: NodeIndex,
    pub step: &'a Step,
    /// The finished inputs of this vertex (its parent, COPY and mount sources).
    pub inputs: &'a HashMap<NodeIndex, Done>,
}

impl Cx<'_> {
    /// The parent vertex's result, for ops that build on one.
    pub fn parent(&self) -> Option<&Done> {
        self.step.parent.and_then(|p| self.inputs.get(&p))
    }

    /// The parent's cache key as it enters this vertex's ("" without a parent).
    pub fn parent_key(&self) -> &str {
        self.parent().map(|d| d.key.as_str()).unwrap_or("")
    }

    /// The result of another vertex this one reads from.
    pub fn input(&self, n: NodeIndex, what: &str) -> Result<&Done> {
        self.inputs
            .get(&n)
            .ok_or_else(|| self.fail(format!("{what} was not built")))
    }

    /// An error of this step, with its name and line.
    pub fn fail(&self, e: impl std::fmt::Display) -> Error {
        Error::StepFailed {
            step: self.step.name.clone(),
            line: self.step.line,
            message: e.to_string(),
        }
    }
}

/// How the cache serves an op.
pub(crate) enum Reuse {
    /// From the cache unless the build says `--no-cache`.
    UnlessNoCache,
    /// Always from the cache when it has a result (a pinned image is that image).
    Always,
    /// Never: the result is known without work (and is not shown as a step).
    Never,
}

/// One op kind.
pub(crate) trait Operation {
    /// The vertex's cache key: what it does and its inputs' keys.
    fn cache_key(&self, cx: &Cx<'_>) -> Result<CacheKey>;
    /// Produces the vertex's result (its whole layer stack) when the cache has none.
    fn execute(&self, cx: &Cx<'_>, v: &Vertex) -> Result<Record>;
    fn reuse(&self) -> Reuse {
        Reuse::UnlessNoCache
    }
}

/// The operation for a step of the graph.
fn operation(step: &Step) -> Box<dyn Operation + '_> {
    match &step.op {
        Op::Scratch => Box::new(scratch::Scratch),
        Op::Local { name } => Box::new(local::Local { name }),
        Op::Image { pinned, .. } => Box::new(image::Image { pinned }),
        Op::Run(spec) => Box::new(run::Run::new(spec)),
        Op::Copy(spec) => Box::new(copy::Copy::new(spec)),
        Op::Mkdir { path, user } => Box::new(mkdir::Mkdir { path, user }),
    }
}

/// Runs the vertex `n` of `g` (its inputs are in `inputs`), or serves it from the cache.
pub(crate) fn run_vertex(
    s: &Solver,
    g: &BuildGraph,
    n: NodeIndex,
    inputs: &HashMap<NodeIndex, Done>,
) -> Result<Done> {
    let step = &g.dag[n];
    let cx = Cx {
        solver: s,
        node: n,
        step,
        inputs,
    };
    let op = operation(step);
    let key = op.cache_key(&cx)?;
    tracing::debug!("{}: cache key {}", step.name, key.as_str());
    let cached = match op.reuse() {
        Reuse::Never => {
            let record = op.execute(&cx, &s.progress.hidden())?;
            return Ok(Done { key, record });
        }
        Reuse::Always => true,
        Reuse::UnlessNoCache => !s.no_cache && !step.no_cache,
    };
    let v = s.progress.vertex(&step.name);
    if cached {
        if let Some(record) = s.cache.load(&key) {
            v.cached();
            return Ok(Done { key, record });
        }
    }
    // A result an imported cache served names layers that are only there: the
    // inputs this vertex runs on come into the store now, and not before.
    let inputs_local = || {
        let layers: Vec<Layer> = inputs
            .values()
            .flat_map(|d| d.record.layers.iter().cloned())
            .collect();
        crate::materialize::bring_in(s, &layers, Need::Snapshots, &|l: &str| v.log(l))
    };
    match inputs_local()
        .and_then(|()| op.execute(&cx, &v))
        .and_then(|record| {
            s.cache.save(&key, &record)?;
            Ok(record)
        }) {
        Ok(record) => {
            v.done();
            Ok(Done { key, record })
        }
        Err(e) => {
            v.error(&e.to_string());
            Err(e)
        }
    }
}

/// The record of a step that adds `layer` (or nothing) to its parent's stack.
pub(crate) fn on_parent(cx: &Cx<'_>, layer: Option<Layer>) -> Record {
    let mut layers = cx
        .parent()
        .map(|d| d.record.layers.clone())
        .unwrap_or_default();
    let produced = layer.is_some();
    layers.extend(layer);
    Record {
        layers,
        produced,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        kind: crate::cache::Kind::Regular,
        blobs: vec![],
        description: cx.step.name.clone(),
    }
}

/// The parent's snapshots, top-first: the lower layers of a step.
pub(crate) fn lowers(cx: &Cx<'_>) -> Vec<String> {
    cx.parent().map(|d| d.record.lowers()).unwrap_or_default()
}

/// Runs `action` on the parent's filesystem in the executor and stores its layer.
pub(crate) fn execute_step(cx: &Cx<'_>, v: &Vertex, action: Action) -> Result<Option<Layer>> {
    let s = cx.solver;
    let spool = s.spool.as_ref().filter(|sp| sp.node == cx.node);
    let (layer_out, layer_offset) = match spool {
        Some(sp) => (sp.path.clone(), SPOOL_OFFSET),
        None => (s.store().tmp_path("layer"), 0),
    };
    let argv = match &action {
        Action::Run(r) => r.argv.clone(),
        _ => Vec::new(),
    };
    let spec = StepSpec {
        lowers: lowers(cx),
        action,
        layer_out: layer_out.clone(),
        layer_offset,
        compression: s.compression,
    };
    match s
        .executor
        .step(spec, &|l: &str| v.log(l))
        .map_err(|e| cx.fail(e))?
    {
        StepOutcome::Layer(d) => {
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
                None => s.store().commit_blob_trusted(&layer_out, &layer.digest)?,
            }
            Ok(Some(layer))
        }
        StepOutcome::Refused(m) => Err(cx.fail(m)),
        StepOutcome::Exited(code) => {
            let tail = v.tail();
            let tail = if tail.is_empty() {
                String::new()
            } else {
                format!("\nlast output:\n  {}", tail.join("\n  "))
            };
            Err(Error::RunFailed {
                step: cx.step.name.clone(),
                line: cx.step.line,
                argv,
                code,
                tail,
            })
        }
    }
}

#[cfg(test)]
mod tests;
