//! `--cache-from` and `--cache-to`: imported caches behind the local one, and the
//! export of a build's results.

use crate::cache::description::{CachedMount, Description};
use crate::cache::options::{Backend, CacheFrom, CacheTo, Mode};
use crate::cache::{local_dir, registry, s3, CacheKey, CacheStore, Layer, Record};
use crate::materialize::{bring_in, Need};
use crate::session::{Done, Solver};
use crate::Result;
use kiln_frontend::BuildGraph;
use kiln_registry::Registry;
use kiln_snapshotter::convert::{self, LayerOptions};
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
        let opened = match &f.backend {
            Backend::Inline => continue,
            Backend::Local { dir, tag } => {
                local_dir::open(Path::new(dir), tag, store.clone(), snapshot_id)
            }
            Backend::Registry { reference } => registry::open(
                registry.clone(),
                runtime.clone(),
                reference,
                store.clone(),
                snapshot_id,
            ),
            Backend::S3(location) => s3::open(
                location.clone(),
                runtime.clone(),
                store.clone(),
                snapshot_id,
            ),
        };
        match opened {
            Ok(c) => {
                note(&format!("importing cache from {}", c.summary()));
                out.push(Box::new(c));
            }
            Err(e) => note(&format!("WARNING: not importing cache: {e}")),
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

/// The cache mounts the graph's RUN steps use, by directory name.
pub fn cache_mounts(g: &BuildGraph) -> Vec<String> {
    let mut v: Vec<String> = g
        .dag
        .node_weights()
        .filter_map(|s| match &s.op {
            kiln_frontend::Op::Run(r) => Some(r),
            _ => None,
        })
        .flat_map(|r| &r.mounts)
        .filter(|m| m.spec.kind == kiln_frontend::MountKind::Cache)
        .map(|m| crate::cache::mount_dir_name(&m.spec.id))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Packs the cache mounts `names` of the store (each at most `limit` bytes on disk)
/// as blobs of the store, for a cache export.
fn pack_mounts(s: &Solver, names: &[String], limit: u64) -> Result<Vec<CachedMount>> {
    let store = s.store();
    let (names, dirs): (Vec<&String>, Vec<std::path::PathBuf>) = names
        .iter()
        .map(|n| (n, store.root().join("cache-mounts").join(n)))
        .filter(|(_, d)| d.is_dir())
        .unzip();
    // One measurement for all of them (each executor call is a helper process).
    let sizes = s.executor.usage(&dirs)?;
    let mut out = Vec::new();
    for ((name, dir), size) in names.into_iter().zip(dirs).zip(sizes) {
        if size > limit {
            s.progress.note(&format!(
                "cache mount {name}: {} on disk, over mounts-limit ({}): not exported",
                kiln_snapshotter::gc::human_size(size),
                kiln_snapshotter::gc::human_size(limit)
            ));
            continue;
        }
        let tmp = store.tmp_path("mount-blob");
        let d = match s.executor.pack(&dir, &tmp) {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        store.commit_blob_trusted(&tmp, &d.digest)?;
        out.push(CachedMount {
            name: name.clone(),
            digest: d.digest,
            diff_id: d.diff_id,
            size: d.size,
        });
    }
    Ok(out)
}

/// `records` with their layers as `opts` asks (each layer converted once, two
/// at a time).
fn convert_layers(
    store: &Store,
    records: &[(CacheKey, Record)],
    opts: &LayerOptions,
) -> Result<Vec<(CacheKey, Record)>> {
    use rayon::prelude::*;
    let mut unique: Vec<&Layer> = records.iter().flat_map(|(_, r)| &r.layers).collect();
    unique.sort_by(|a, b| a.digest.cmp(&b.digest));
    unique.dedup_by(|a, b| a.digest == b.digest);
    let done: HashMap<String, Layer> = unique
        .par_iter()
        .map(|l| Ok((l.digest.clone(), convert::export_layer(store, l, opts)?)))
        .collect::<Result<_>>()?;
    Ok(records
        .iter()
        .map(|(k, r)| {
            let mut r = r.clone();
            for l in &mut r.layers {
                if let Some(c) = done.get(&l.digest) {
                    *l = c.clone();
                }
            }
            (k.clone(), r)
        })
        .collect())
}

/// Exports `records` (and, with `mounts=true`, the cache mounts `mounts`) to `to`;
/// returns how many results and blobs it wrote.
pub fn export(
    s: &Solver,
    to: &CacheTo,
    records: &[(CacheKey, Record)],
    mounts: &[String],
) -> Result<(usize, usize)> {
    let layers: Vec<Layer> = records
        .iter()
        .flat_map(|(_, r)| r.layers.iter().cloned())
        .filter(|l| {
            // A layer converted for the cache is read whatever the backend.
            to.layers
                .as_ref()
                .is_some_and(|o| convert::reads_blob(l, o))
                || match &to.backend {
                    Backend::Registry { reference } => {
                        !kiln_registry::can_mount(l.source.as_deref(), reference)
                    }
                    Backend::Local { .. } | Backend::S3(_) => true,
                    // In the image: its exporters needed the blobs already.
                    Backend::Inline => false,
                }
        })
        .collect();
    bring_in(s, &layers, Need::Blobs, &|l: &str| s.progress.note(l))?;
    let converted;
    let records = match &to.layers {
        None => records,
        Some(opts) => {
            converted = convert_layers(s.store(), records, opts)?;
            &converted[..]
        }
    };
    let mut desc = Description::of(records.iter().map(|(k, r)| (k, r)));
    if let Some(limit) = to.mounts {
        desc.mounts = pack_mounts(s, mounts, limit)?;
    }
    match &to.backend {
        Backend::Local { dir, tag } => local_dir::export(Path::new(dir), tag, &desc, s.store())?,
        Backend::Registry { reference } => {
            let sources = records
                .iter()
                .flat_map(|(_, r)| &r.layers)
                .filter_map(|l| Some((l.digest.clone(), l.source.clone()?)))
                .collect();
            registry::export(
                &s.registry,
                &s.runtime,
                reference,
                &desc,
                &sources,
                s.store(),
            )?
        }
        Backend::S3(location) => s3::export(location, &s.runtime, &desc, s.store())?,
        // Written into the images' configs before they were exported.
        Backend::Inline => {}
    }
    Ok((desc.records.len(), desc.blobs().len()))
}
