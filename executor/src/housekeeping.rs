//! Store housekeeping that needs the namespace helper: measuring and deleting trees
//! that hold files owned by mapped ids (unreadable, or undeletable, from outside).
//!
//! The store decides ([`kiln_snapshotter::gc`]); this module carries it out. Removal is
//! ordered so that an interrupted prune never leaves a usable-looking half: records
//! go first (nothing then points at what follows), snapshots and cache mounts are
//! renamed into `tmp/` in one step before their trees are deleted, and blobs are
//! single files.

use crate::{io_ctx, Executor, Result};
use kiln_snapshotter::gc::{Inventory, Plan};
use std::fs;
use std::path::PathBuf;

/// Everything in the executor's store, with sizes (measured inside the namespace).
pub fn inventory(l: &dyn Executor) -> Result<Inventory> {
    Inventory::scan(l.store(), |paths: &[PathBuf]| l.usage(paths))
}

/// Clears `tmp/` (call only under the exclusive store lock); returns how many
/// leftovers there were.
pub fn clear_tmp(l: &dyn Executor) -> Result<usize> {
    let leftovers = l.store().tmp_entries()?;
    let n = leftovers.len();
    l.remove(leftovers)?;
    Ok(n)
}

/// Carries out a prune plan (under the exclusive store lock).
pub fn execute(l: &dyn Executor, plan: &Plan) -> Result<()> {
    let store = l.store();
    for key in &plan.records {
        remove_file(&store.cache_path(key))?;
    }
    let mut trees = Vec::new();
    for id in &plan.snapshots {
        trees.push(store.retire(&store.snapshot_path(id))?);
    }
    let mounts = store.root().join("cache-mounts");
    for id in &plan.cache_mounts {
        let dir = mounts.join(id);
        if dir.exists() {
            trees.push(store.retire(&dir)?);
        }
        remove_file(&mounts.join(format!("{id}.lock")))?;
    }
    for d in &plan.blobs {
        remove_file(&store.blob_path(d)?)?;
    }
    trees.extend(plan.tmp.iter().cloned());
    l.remove(trees)
}

/// Removes a file the caller owns; one already gone is fine.
fn remove_file(p: &std::path::Path) -> Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_ctx(format!("removing {}", p.display()))(e))
        }
        _ => Ok(()),
    }
}
