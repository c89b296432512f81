//! What the helper does, inside kiln's user namespace: one function per request.

use crate::wire::{Request, Response};
use crate::{fileop, io_ctx, sandbox, sys, sys_err, Action, Error, Result, StepOutcome};
use crate::{LayerCompression, Snapshotter};
use fs_err as fs;
use kiln_snapshotter::native;
use kiln_snapshotter::write_behind::Via;
use kiln_snapshotter::{overlay, store, unpack, Store};
use std::io::Seek;
use std::path::Path;

pub(crate) fn handle(req: Request) -> Result<Response> {
    match req {
        Request::Unpack {
            store,
            blob,
            size,
            id,
            diff_id,
        } => {
            let store = Store::open(store)?;
            let (tmp, out) = match blob {
                Some(blob) => unpack_checked(&store, &blob, diff_id.as_deref())?,
                None => {
                    // The parent's pipe: the blob as it downloads.
                    let input = std::io::stdin();
                    unpack_input(&store, input, size.unwrap_or(0), diff_id.as_deref())?
                }
            };
            place_snapshot(&store, &tmp, &id)?;
            Ok(Response::Unpacked {
                skipped_devices: out.skipped_devices,
            })
        }
        Request::UnpackTree {
            store,
            blob,
            dir,
            diff_id,
        } => {
            let store = Store::open(store)?;
            let (tmp, out) = unpack_checked(&store, &blob, Some(&diff_id))?;
            // One already there (another build seeded it meanwhile) stays.
            if dir.exists() || fs::rename(&tmp, &dir).is_err() {
                remove_tree(&tmp);
            }
            Ok(Response::Unpacked {
                skipped_devices: out.skipped_devices,
            })
        }
        Request::Pack { dir, out } => Ok(Response::Layer(write_layer_file(
            &dir,
            &out,
            0,
            LayerCompression::Gzip,
        )?)),
        Request::Step {
            store,
            snapshotter,
            lowers,
            dir,
            action,
            layer_out,
            compression,
            layer_offset,
        } => {
            let store = Store::open(store)?;
            let r = step(
                &store,
                snapshotter,
                &lowers,
                &dir,
                &action,
                (&layer_out, layer_offset),
                compression,
            );
            remove_tree(&dir);
            r
        }
        Request::Layer {
            store,
            id,
            out,
            compression,
        } => {
            let store = Store::open(store)?;
            let snapshot = store.snapshot_path(&id);
            if !snapshot.is_dir() {
                return Err(Error::MissingSnapshot(id));
            }
            Ok(Response::Layer(write_layer_file(
                &snapshot,
                &out,
                0,
                compression,
            )?))
        }
        Request::ExportFs {
            store,
            lowers,
            dest,
            tar,
        } => {
            let store = Store::open(store)?;
            if tar {
                export_tar(&store, &lowers, &dest)?;
            } else {
                fs::create_dir_all(&dest)?;
                native::materialize(&store, &lowers, &dest, native::How::Export)?;
            }
            Ok(Response::Done)
        }
        Request::Remove { paths } => {
            for p in paths {
                kiln_snapshotter::tree::remove_all(&p)?;
            }
            Ok(Response::Done)
        }
        Request::Probe { dir } => {
            let r = probe_overlay(&dir);
            remove_tree(&dir);
            Ok(Response::Probe(r.err().map(|e| e.to_string())))
        }
        Request::ProbeBinfmt => {
            let dir = Path::new(crate::emulate::BINFMT);
            let r = sys::private_mount_ns()
                .and_then(|_| sys::mount_binfmt(dir))
                .and_then(|_| sys::unmount(dir));
            Ok(Response::Probe(r.err().map(|e| e.to_string())))
        }
        Request::Usage { paths } => Ok(Response::Usage(
            paths
                .iter()
                .map(|p| kiln_snapshotter::tree::disk_usage(p))
                .collect(),
        )),
    }
}

/// Unpacks `blob` into a fresh temp directory of `store`, checking that the stream
/// hashes to `diff_id` and that it does not expand beyond the bound.
fn unpack_checked(
    store: &Store,
    blob: &Path,
    diff_id: Option<&str>,
) -> Result<(std::path::PathBuf, unpack::Unpacked)> {
    let f = fs::File::open(blob)?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    unpack_input(store, f, size, diff_id)
}

/// [`unpack_checked`] of a blob of `size` bytes read from `input`.
fn unpack_input(
    store: &Store,
    input: impl std::io::Read + Send,
    size: u64,
    diff_id: Option<&str>,
) -> Result<(std::path::PathBuf, unpack::Unpacked)> {
    let tmp = store.tmp_path("unpack");
    fs::create_dir(&tmp)?;
    let limit = unpack::expansion_limit(size);
    let result = unpack::unpack_bounded(input, &tmp, unpack::Owners::here(), limit)
        .map_err(Error::from)
        .and_then(|u| match diff_id {
            Some(want) if want != u.diff_id => Err(Error::DiffId {
                got: u.diff_id.clone(),
                want: want.to_string(),
            }),
            _ => Ok(u),
        });
    match result {
        Ok(u) => Ok((tmp, u)),
        Err(e) => {
            remove_tree(&tmp);
            Err(e)
        }
    }
}

/// Writes `tree` as a layer blob into the new file `out`, from byte `offset` (room for
/// an archive's tar header); a blob that could not be written whole (ENOSPC, say) is
/// removed, so no partial blob stays behind. A blob at an offset is in an archive
/// being exported, which kiln does not read again: it is written with direct I/O; one
/// for the store goes through the page cache, for the push or export that reads it.
pub(crate) fn write_layer_file(
    tree: &Path,
    out: &Path,
    offset: u64,
    compression: LayerCompression,
) -> Result<kiln_snapshotter::diff::LayerDigests> {
    let mut f = fs::File::create(out)?;
    let r = f
        .seek(std::io::SeekFrom::Start(offset))
        .map_err(Error::from)
        .and_then(|_| {
            Ok(kiln_snapshotter::diff::write_layer(
                tree,
                f.into_parts().0,
                compression,
                if offset > 0 {
                    Via::Direct
                } else {
                    Via::PageCache
                },
            )?)
        });
    if r.is_err() {
        let _ = fs::remove_file(out);
    }
    r
}

/// The owner of a RUN's `USER` when it is not root, from the rootfs `root` (resolved
/// inside it, before the RUN).
fn user_owner(root: &Path, spec: &str) -> Option<(u32, u32)> {
    let read = |rel: &str| {
        crate::paths::resolve_in_root(root, rel, true)
            .ok()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    };
    let user = crate::user::resolve_user_in(spec, &read("etc/passwd"), &read("etc/group")).ok()?;
    Some((user.uid, user.gid)).filter(|o| *o != (0, 0))
}

/// Gives `uid:gid` (as recorded owners) to every file and directory of `upper` that
/// the step made: not in the layers below, and with no owner recorded by a chown.
/// What it changed of the files below keeps their owners.
fn give_new_entries(
    store: &Store,
    lowers: &[String],
    upper: &Path,
    uid: u32,
    gid: u32,
) -> Result<()> {
    use kiln_snapshotter::owner;
    let below: Vec<std::path::PathBuf> = store
        .visible(lowers)
        .iter()
        .map(|id| store.snapshot_path(id))
        .collect();
    let mut todo = vec![(std::path::PathBuf::new(), 0usize)];
    while let Some((rel, depth)) = todo.pop() {
        if depth > kiln_snapshotter::MAX_TREE_DEPTH {
            return Err(kiln_snapshotter::too_deep(&rel).into());
        }
        for e in fs::read_dir(upper.join(&rel))? {
            let e = e?;
            let rel = rel.join(e.file_name());
            let at = upper.join(&rel);
            let m = fs::symlink_metadata(&at)?;
            if !(m.is_file() || m.is_dir()) {
                continue;
            }
            let made_here = !below
                .iter()
                .any(|b| fs::symlink_metadata(b.join(&rel)).is_ok());
            let recorded = xattr::get(&at, owner::XATTR).ok().flatten().is_some();
            if made_here && !recorded {
                owner::chown(&at, uid, gid)?;
            }
            if m.is_dir() {
                todo.push((rel, depth + 1));
            }
        }
    }
    Ok(())
}

/// Removes a temporary tree of the helper's (what a RUN left there can be of any depth).
fn remove_tree(p: &Path) {
    let _ = kiln_snapshotter::tree::remove_all(p);
}

/// Writes the filesystem of `lowers` as a tar at `dest`, walking a view of hard links.
fn export_tar(store: &Store, lowers: &[String], dest: &Path) -> Result<()> {
    let view = store.tmp_path("view");
    fs::create_dir(&view)?;
    let r = (|| {
        native::materialize(store, lowers, &view, native::How::Link)?;
        let f = fs::File::create(dest)?;
        let (w, _) = kiln_snapshotter::diff::write_tar(
            &view,
            std::io::BufWriter::with_capacity(1 << 20, f),
        )?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        Ok(f.sync_all()?)
    })();
    remove_tree(&view);
    r
}

/// Mounts an overlay with a whiteout-bearing lower layer, writes through it and checks
/// the upper directory, as a step would.
fn probe_overlay(dir: &Path) -> Result<()> {
    sys::private_mount_ns()?;
    let store = Store::open(dir.join("store"))?;
    let lower = store.snapshot_path("probe");
    fs::create_dir_all(lower.join("d"))?;
    fs::write(lower.join("d/f"), b"lower")?;
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d)?;
    }
    overlay::mount_rw(&store, &["probe".to_string()], &upper, &work, &merged)?;
    let written = fs::write(merged.join("d/f"), b"upper")
        .and_then(|_| fs::remove_file(merged.join("d/f")))
        .map_err(io_ctx("writing through the overlay"));
    let _ = sys::unmount(&merged);
    written?;
    let wh = fs::symlink_metadata(upper.join("d/f"))?;
    if !std::os::unix::fs::FileTypeExt::is_char_device(&wh.file_type()) {
        return Err(Error::Probe(
            "the deletion did not leave a whiteout in the upper directory",
        ));
    }
    Ok(())
}

/// Moves a finished tree to `snapshots/<id>`; an existing one (same content) wins.
/// The tree's filesystem is synced first, so a snapshot that exists is whole even
/// after a power cut.
fn place_snapshot(store: &Store, tmp: &Path, id: &str) -> Result<()> {
    let dst = store.snapshot_path(id);
    if dst.exists() {
        remove_tree(tmp);
        return Ok(());
    }
    // Trusted in this boot only until a later syncfs (see `Store::mark_unsynced`);
    // synced now where the boot has no id.
    if !store.mark_unsynced(id)? {
        let dir = fs::File::open(tmp)?;
        nix::unistd::syncfs(&dir).map_err(sys_err(format!("syncing {}", tmp.display())))?;
    }
    match fs::rename(tmp, &dst) {
        Ok(()) => Ok(()),
        Err(_) if dst.exists() => {
            remove_tree(tmp);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn step(
    store: &Store,
    kind: Snapshotter,
    lowers: &[String],
    dir: &Path,
    action: &Action,
    (layer_out, layer_offset): (&Path, u64),
    compression: LayerCompression,
) -> Result<Response> {
    sys::private_mount_ns()?;
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d)?;
    }
    let since = match kind {
        Snapshotter::Overlay => {
            overlay::mount_rw(store, lowers, &upper, &work, &merged)?;
            None
        }
        Snapshotter::Native => {
            native::materialize(store, lowers, &merged, native::How::Copy)?;
            let since = native::settle(dir)?;
            // A mount point, so that RUN can pivot into it.
            sys::bind(&merged, &merged)?;
            Some(since)
        }
    };
    let mut links = None;
    let mut holders = Vec::new();
    // A non-root USER in a single-id namespace is emulated: what its RUN makes is
    // root's on disk, and the USER's in the layer.
    let mut new_files_owner = None;
    let outcome = match action {
        Action::Run(spec) => {
            if kiln_snapshotter::owner::emulating() {
                new_files_owner = user_owner(&merged, &spec.user);
            }
            sandbox::run(store, kind, &merged, &dir.join("mounts"), spec).map(|end| {
                holders = end.holders;
                (end.code, end.not_started)
            })
        }
        Action::Copy(c) => {
            match fileop::copy(store, kind, &merged, &dir.join("src"), c).and_then(|links| {
                for t in &c.then {
                    fileop::copy(store, kind, &merged, &dir.join("src"), t)?;
                }
                Ok(links)
            }) {
                Ok(l) => {
                    links = Some(l);
                    Ok((0, None))
                }
                Err(e) => Ok((1, Some(e.to_string()))),
            }
        }
        Action::Mkdir { path, user } => fileop::mkdir(&merged, path, user).map(|_| (0, None)),
    };
    let _ = sys::unmount(&merged);
    // Mount sources of RUN --mount (read-only views, secret tmpfs) go too, so that
    // the step directory can be removed.
    if let Ok(rd) = fs::read_dir(dir.join("mounts")) {
        for e in rd.flatten() {
            let _ = sys::unmount(&e.path());
        }
    }
    let _ = sys::unmount(&dir.join("src"));
    let (exit_code, message) = outcome?;
    if exit_code != 0 {
        return Ok(Response::Step(match message {
            Some(m) => StepOutcome::Refused(m),
            None => StepOutcome::Exited(exit_code),
        }));
    }
    // COPY's hard links from an earlier snapshot, now that nothing is mounted over the
    // tree they go into.
    if let Some(l) = links.filter(|l| !l.is_empty()) {
        println!(
            "linked {} unchanged files from the previous build of this COPY",
            l.len()
        );
        l.apply(match kind {
            Snapshotter::Overlay => &upper,
            Snapshotter::Native => &merged,
        })?;
    }
    if let Some(since) = since {
        native::diff(store, lowers, &merged, &upper, since)?;
    }
    if let Some((uid, gid)) = new_files_owner {
        give_new_entries(store, lowers, &upper, uid, gid)?;
    }
    sandbox::prune_holders(store, lowers, &upper, &holders);
    let digests = write_layer_file(&upper, layer_out, layer_offset, compression)?;
    // A step that changed nothing still has its (empty) layer, as in BuildKit, whose
    // RUN, COPY, ADD and WORKDIR each add one.
    let id = store::snapshot_id(&digests.diff_id, kiln_snapshotter::owner::emulating())?;
    place_snapshot(store, &upper, &id)?;
    Ok(Response::Step(StepOutcome::Layer(digests)))
}
