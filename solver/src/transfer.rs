//! `--cache-from` and `--cache-to`: imported caches behind the local one, and the
//! export of a build's results.

use crate::cache::options::{Backend, CacheFrom, CacheTo, Mode};
use crate::cache::{
    description::Description, local_dir, registry::RegistryCache, CacheKey, CacheStore, Layer,
    Record,
};
use crate::materialize::{bring_in, Need};
use crate::session::{Done, Solver};
use crate::Result;
use kiln_frontend::BuildGraph;
use kiln_registry::Registry;
use kiln_snapshotter::Store;
use petgraph::graph::NodeIndex;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Opens every `--cache-from`. A cache that cannot be read is a warning and a miss,
/// never a failed build.
pub fn import(
    froms: &[CacheFrom],
    store: &Store,
    registry: &Arc<Registry>,
    runtime: &tokio::runtime::Handle,
    preserves_owners: bool,
    note: &dyn Fn(&str),
) -> Vec<Box<dyn CacheStore>> {
    let snapshot_id =
        |diff_id: &str| kiln_snapshotter::store::snapshot_id(diff_id, !preserves_owners).ok();
    let mut out: Vec<Box<dyn CacheStore>> = Vec::new();
    for f in froms {
        match &f.backend {
            Backend::Inline => {}
            Backend::Local { dir, tag } => {
                match local_dir::LocalDir::open(Path::new(dir), tag, store.clone(), snapshot_id) {
                    Ok(c) => {
                        note(&format!("importing cache from {dir} ({} results)", c.len()));
                        out.push(Box::new(c));
                    }
                    Err(e) => note(&format!("WARNING: not importing cache: {e}")),
                }
            }
            Backend::Registry { reference } => {
                let c = RegistryCache::open(
                    registry.clone(),
                    runtime.clone(),
                    reference,
                    store.clone(),
                    snapshot_id,
                );
                match c {
                    Ok(c) => {
                        note(&format!(
                            "importing cache from {reference} ({} results)",
                            c.len()
                        ));
                        out.push(Box::new(c));
                    }
                    Err(e) => note(&format!("WARNING: not importing cache: {e}")),
                }
            }
        }
    }
    out
}

/// The results `--cache-to` exports: with `mode=max` every vertex's; with `mode=min`
/// those that make the final images' layers (each target's chain of parents).
pub fn select(
    g: &BuildGraph,
    done: &HashMap<NodeIndex, Done>,
    targets: &[NodeIndex],
    mode: Mode,
) -> Vec<(CacheKey, Record)> {
    let mut nodes: Vec<NodeIndex> = match mode {
        Mode::Max => done.keys().copied().collect(),
        Mode::Min => {
            let mut v = Vec::new();
            for &t in targets {
                let mut n = Some(t);
                while let Some(i) = n {
                    v.push(i);
                    n = g.dag[i].parent;
                }
            }
            v
        }
    };
    nodes.sort();
    nodes.dedup();
    nodes
        .into_iter()
        .filter_map(|n| done.get(&n))
        .filter(|d| !d.record.layers.is_empty())
        .map(|d| (d.key.clone(), d.record.clone()))
        .collect()
}

/// The inline cache of the image whose target vertex is `target`: the description of
/// the results that make its layers, for its config's
/// [`INLINE_FIELD`](crate::cache::description::INLINE_FIELD).
pub fn inline(
    g: &BuildGraph,
    done: &HashMap<NodeIndex, Done>,
    target: NodeIndex,
) -> serde_json::Value {
    let records = select(g, done, &[target], Mode::Min);
    serde_json::to_value(Description::of(records.iter().map(|(k, r)| (k, r)))).unwrap_or_default()
}

/// Exports `records` to `to`; returns how many results and layers it wrote.
pub fn export(s: &Solver, to: &CacheTo, records: &[(CacheKey, Record)]) -> Result<(usize, usize)> {
    let layers: Vec<Layer> = records
        .iter()
        .flat_map(|(_, r)| r.layers.iter().cloned())
        .filter(|l| match &to.backend {
            Backend::Registry { reference } => {
                !kiln_registry::can_mount(l.source.as_deref(), reference)
            }
            Backend::Local { .. } => true,
            // In the image: its exporters needed the blobs already.
            Backend::Inline => false,
        })
        .collect();
    bring_in(s, &layers, Need::Blobs, &|l: &str| s.progress.note(l))?;
    let desc = Description::of(records.iter().map(|(k, r)| (k, r)));
    match &to.backend {
        Backend::Local { dir, tag } => local_dir::export(Path::new(dir), tag, &desc, s.store())?,
        Backend::Registry { reference } => {
            let sources = records
                .iter()
                .flat_map(|(_, r)| &r.layers)
                .filter_map(|l| Some((l.digest.clone(), l.source.clone()?)))
                .collect();
            crate::cache::registry::export(
                &s.registry,
                &s.runtime,
                reference,
                &desc,
                &sources,
                s.store(),
            )?
        }
        // Written into the images' configs before they were exported.
        Backend::Inline => {}
    }
    Ok((desc.records.len(), desc.layers.len()))
}
