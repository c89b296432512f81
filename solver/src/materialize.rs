//! Bringing a result's layers into the local store, when a step must run on them or
//! an export needs their bytes: a result served from an imported cache names layers
//! that are, until then, only in that cache.

use crate::cache::Layer;
use crate::session::Solver;
use crate::{Error, Result};
use rayon::prelude::*;

/// Puts `l`'s blob in the store: there already; made again from its snapshot (a layer
/// kiln made, whose step wrote its blob into an archive); from an imported cache; or,
/// for a base image's layer, from the registry it came from.
fn ensure_blob(s: &Solver, l: &Layer, log: &(dyn Fn(&str) + Sync)) -> Result<()> {
    let store = s.store();
    if store.has_blob(&l.digest) {
        return Ok(());
    }
    if !l.pulled && store.snapshot_path(&l.snapshot).is_dir() {
        return Ok(kiln_executor::remake_blob(s.executor.as_ref(), l)?);
    }
    if s.cache.fetch_blob(l)? {
        log(&format!("{}: from the imported cache", short(&l.digest)));
        return Ok(());
    }
    if let Some(repo) = l.source.as_deref().filter(|_| l.pulled) {
        let pinned = format!("{repo}@{}", l.digest);
        s.runtime.block_on(
            s.registry
                .fetch_sized(&pinned, &l.digest, Some(l.size), store),
        )?;
        log(&format!("{}: from {repo}", short(&l.digest)));
        return Ok(());
    }
    Err(Error::Input(format!(
        "layer {} of a cached result is neither in the store nor in an imported cache; build again with --no-cache",
        l.digest
    )))
}

/// Fetches a layer the store lacks and unpacks it at once, the unpack reading the
/// download as it arrives through a pipe (the two take about as long as the slower
/// one, not their sum). Says whether it did; `false` (a source that cannot stream, or
/// a fetch that failed) leaves it to the ordinary way, which retries the fetch and
/// unpacks the stored blob. The blob reaches the store only with its digest checked,
/// and the snapshot only with its diffID checked.
fn stream_in(s: &Solver, l: &Layer, log: &(dyn Fn(&str) + Sync)) -> Result<bool> {
    let store = s.store();
    let via_cache = s.cache.streams(l);
    let source = l.source.as_deref().filter(|_| l.pulled);
    if store.has_blob(&l.digest) || !(via_cache || source.is_some()) {
        return Ok(false);
    }
    let Ok((r, w)) = kiln_executor::stream_pipe() else {
        return Ok(false);
    };
    let (fetched, unpacked) = std::thread::scope(|scope| {
        let fetch = scope.spawn(move || -> Result<Option<String>> {
            if via_cache {
                if s.cache.fetch_blob_teed(l, w)? {
                    return Ok(Some("the imported cache".to_string()));
                }
                return Ok(None);
            }
            let repo = source.unwrap_or_default();
            let pinned = format!("{repo}@{}", l.digest);
            s.runtime
                .block_on(s.registry.fetch_teed(&pinned, &l.digest, l.size, store, w))?;
            Ok(Some(repo.to_string()))
        });
        let unpacked = s
            .executor
            .unpack_stream(r, l.size, &l.snapshot, Some(&l.diff_id), log);
        (fetch.join(), unpacked)
    });
    match (fetched, unpacked) {
        (Ok(Ok(Some(from))), Ok(_)) => {
            log(&format!("{}: from {from}", short(&l.digest)));
            Ok(true)
        }
        (Ok(Ok(Some(_))), Err(source)) => Err(Error::Unpack {
            image: "cached result".into(),
            layer: l.digest.clone(),
            source: Box::new(source),
        }),
        _ => Ok(false),
    }
}

fn short(d: &str) -> &str {
    d.get(7..19).unwrap_or(d)
}

/// What [`bring_in`] makes sure of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Each layer's snapshot (a step runs on it, or its filesystem is exported).
    Snapshots,
    /// Each layer's blob (a cache export copies them all).
    Blobs,
    /// The blobs nothing local can give: those neither in the store nor made again
    /// from a snapshot, which the image exporters do themselves.
    Fetched,
}

/// Makes sure of `need` for every layer of `layers`.
pub fn bring_in(
    s: &Solver,
    layers: &[Layer],
    need: Need,
    log: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let store = s.store();
    let mut seen = std::collections::HashSet::new();
    let todo: Vec<&Layer> = layers
        .iter()
        .filter(|l| seen.insert(l.digest.clone()))
        .filter(|l| match need {
            Need::Snapshots => !store.snapshot_path(&l.snapshot).is_dir(),
            Need::Blobs => !store.has_blob(&l.digest),
            Need::Fetched => {
                !store.has_blob(&l.digest)
                    && (l.pulled || !store.snapshot_path(&l.snapshot).is_dir())
            }
        })
        .collect();
    todo.par_iter().try_for_each(|l| -> Result<()> {
        if need == Need::Snapshots && stream_in(s, l, log)? {
            return Ok(());
        }
        ensure_blob(s, l, log)?;
        if need == Need::Snapshots && !store.snapshot_path(&l.snapshot).is_dir() {
            let blob = store.blob_path(&l.digest)?;
            s.executor
                .unpack(&blob, &l.snapshot, Some(&l.diff_id), log)
                .map_err(|source| Error::Unpack {
                    image: "cached result".into(),
                    layer: l.digest.clone(),
                    source: Box::new(source),
                })?;
        }
        Ok(())
    })
}
