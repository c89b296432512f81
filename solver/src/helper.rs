//! The namespace helper: `kiln __helper REQUEST RESPONSE`.
//!
//! `unshare(CLONE_NEWUSER)` fails in a multithreaded process, and kiln runs rayon and
//! tokio, so every operation that needs kiln's user namespace (unpacking with owners,
//! overlay mounts, RUN, COPY, diffs of trees owned by mapped ids, deleting them) runs
//! in a fresh exec of the kiln binary that enters the namespace first thing. The
//! request and response travel as JSON files; the RUN's output goes to the helper's
//! stdout/stderr, which the parent streams to progress.

use crate::{exec, fileop, io_ctx, Error, Result};
use kiln_snapshotter::diff::{LayerCompression, LayerDigests};
use kiln_snapshotter::idmap::{self, IdMap};
use kiln_snapshotter::native::{self, Snapshotter};
use kiln_snapshotter::{overlay, store, unpack, Store};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{BufRead, BufReader, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The hidden subcommand the binary dispatches to [`main`].
pub const SUBCOMMAND: &str = "__helper";

/// What the helper is asked to do.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // one request per helper process
pub enum Request {
    /// Unpack a layer blob into snapshot `id`.
    Unpack {
        store: PathBuf,
        blob: PathBuf,
        id: String,
        /// The diffID the image config gives the layer: the unpacked stream must hash
        /// to it.
        #[serde(default)]
        diff_id: Option<String>,
    },
    /// Mount `lowers` (top-first) with a fresh upper in `dir` (or, with the native
    /// snapshotter, copy them), do `action`, and turn the upper (or the changes found
    /// by walking) into a layer blob at `layer_out` and a snapshot.
    Step {
        store: PathBuf,
        snapshotter: Snapshotter,
        lowers: Vec<String>,
        dir: PathBuf,
        action: Action,
        layer_out: PathBuf,
        /// How the layer blob is compressed.
        #[serde(default)]
        compression: LayerCompression,
        /// Where in `layer_out` the blob starts (room for an archive's tar header when
        /// the step writes its layer straight into the archive being exported).
        #[serde(default)]
        layer_offset: u64,
    },
    /// Make the layer blob of snapshot `id` again, at `out` (a store whose blob was
    /// written into an archive instead): the same walk as the step that made it.
    Layer {
        store: PathBuf,
        id: String,
        out: PathBuf,
        compression: LayerCompression,
    },
    /// `-o type=local` / `-o type=tar`: the filesystem of `lowers` (top-first) with
    /// files owned by the user, as the directory `dest` (created or merged into) or as
    /// the tar file `dest`, with the image's owners in its headers.
    ExportFs {
        store: PathBuf,
        lowers: Vec<String>,
        dest: PathBuf,
        tar: bool,
    },
    /// Delete trees that may hold files owned by mapped ids.
    Remove { paths: Vec<PathBuf> },
    /// Measure the disk usage of trees only the namespace's root may read whole.
    Usage { paths: Vec<PathBuf> },
    /// For `kiln info`: mount a writable overlay in `dir` (which is then removed) and
    /// say what worked.
    Probe { dir: PathBuf },
    /// Whether a binfmt_misc of kiln's own user namespace can be mounted.
    ProbeBinfmt,
}

/// The operation of a step.
#[derive(Debug, Serialize, Deserialize)]
pub enum Action {
    Run(exec::RunAction),
    Copy(fileop::CopyAction),
    Mkdir { path: String, user: String },
}

/// What the helper did.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Unpacked {
        skipped_devices: Vec<String>,
    },
    /// `layer` is `None` when the action failed (non-zero `exit_code`).
    Step {
        exit_code: i32,
        layer: Option<LayerDigests>,
        message: Option<String>,
    },
    Layer {
        layer: LayerDigests,
    },
    Removed,
    Exported,
    Usage {
        bytes: Vec<u64>,
    },
    /// `overlay` is `None` when a writable overlay worked, else why not.
    Probe {
        overlay: Option<String>,
    },
    /// `error` is `None` when a private binfmt_misc could be mounted.
    Binfmt {
        error: Option<String>,
    },
    Failed {
        message: String,
    },
}

/// The helper's entry point; returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let (Some(req), Some(resp)) = (args.first(), args.get(1)) else {
        eprintln!("usage: kiln {SUBCOMMAND} REQUEST RESPONSE");
        return 2;
    };
    let response = match idmap::enter()
        .map_err(Error::from)
        .and_then(|_| read_request(Path::new(req)))
        .and_then(handle)
    {
        Ok(r) => r,
        Err(e) => Response::Failed {
            message: e.to_string(),
        },
    };
    let bytes = serde_json::to_vec(&response).unwrap_or_default();
    match fs::write(resp, bytes) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln helper: writing {resp}: {e}");
            1
        }
    }
}

fn read_request(p: &Path) -> Result<Request> {
    let bytes = fs::read(p).map_err(io_ctx(format!("reading {}", p.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Helper(format!("bad request: {e}")))
}

fn handle(req: Request) -> Result<Response> {
    match req {
        Request::Unpack {
            store,
            blob,
            id,
            diff_id,
        } => {
            let store = Store::open(store)?;
            let tmp = store.tmp_path("unpack");
            fs::create_dir(&tmp).map_err(io_ctx(format!("creating {}", tmp.display())))?;
            let f = fs::File::open(&blob).map_err(io_ctx(format!("opening {}", blob.display())))?;
            let limit = f
                .metadata()
                .ok()
                .and_then(|m| unpack::expansion_limit(m.len()));
            let result = unpack::unpack_bounded(f, &tmp, unpack::Owners::here(), limit)
                .map_err(Error::from)
                .and_then(|u| match &diff_id {
                    Some(want) if *want != u.diff_id => Err(Error::Helper(format!(
                        "the layer's content is {} but the image config gives its diffID as {want}",
                        u.diff_id
                    ))),
                    _ => Ok(u),
                });
            let out = match result {
                Ok(u) => u,
                Err(e) => {
                    remove_tree(&tmp);
                    return Err(e);
                }
            };
            place_snapshot(&store, &tmp, &id)?;
            Ok(Response::Unpacked {
                skipped_devices: out.skipped_devices,
            })
        }
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
                return Err(Error::Helper(format!("snapshot {id} is not in the store")));
            }
            let f =
                fs::File::create(&out).map_err(io_ctx(format!("creating {}", out.display())))?;
            let layer = kiln_snapshotter::diff::write_layer(&snapshot, f, compression);
            if layer.is_err() {
                let _ = fs::remove_file(&out);
            }
            Ok(Response::Layer { layer: layer? })
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
                fs::create_dir_all(&dest)
                    .map_err(io_ctx(format!("creating {}", dest.display())))?;
                native::materialize(&store, &lowers, &dest, native::How::Export)?;
            }
            Ok(Response::Exported)
        }
        Request::Remove { paths } => {
            for p in paths {
                kiln_snapshotter::tree::remove_all(&p)?;
            }
            Ok(Response::Removed)
        }
        Request::Probe { dir } => {
            let r = probe_overlay(&dir);
            remove_tree(&dir);
            Ok(Response::Probe {
                overlay: r.err().map(|e| e.to_string()),
            })
        }
        Request::ProbeBinfmt => {
            let dir = Path::new(crate::emulate::BINFMT);
            let r = crate::sys::private_mount_ns()
                .and_then(|_| crate::sys::mount_binfmt(dir))
                .and_then(|_| crate::sys::unmount(dir));
            Ok(Response::Binfmt {
                error: r.err().map(|e| e.to_string()),
            })
        }
        Request::Usage { paths } => Ok(Response::Usage {
            bytes: paths
                .iter()
                .map(|p| kiln_snapshotter::gc::disk_usage(p))
                .collect(),
        }),
    }
}

/// Removes a temporary tree of the helper's (what a RUN left there can be of any depth).
fn remove_tree(p: &Path) {
    let _ = kiln_snapshotter::tree::remove_all(p);
}

/// Writes the filesystem of `lowers` as a tar at `dest`, walking a view of hard links.
fn export_tar(store: &Store, lowers: &[String], dest: &Path) -> Result<()> {
    let view = store.tmp_path("view");
    fs::create_dir(&view).map_err(io_ctx(format!("creating {}", view.display())))?;
    let r = (|| {
        native::materialize(store, lowers, &view, native::How::Link)?;
        let f = fs::File::create(dest).map_err(io_ctx(format!("creating {}", dest.display())))?;
        let (w, _) = kiln_snapshotter::diff::write_tar(
            &view,
            std::io::BufWriter::with_capacity(1 << 20, f),
        )?;
        let f = w
            .into_inner()
            .map_err(|e| io_ctx(format!("writing {}", dest.display()))(e.into_error()))?;
        f.sync_all()
            .map_err(io_ctx(format!("syncing {}", dest.display())))
    })();
    remove_tree(&view);
    r
}

/// Mounts an overlay with a whiteout-bearing lower layer, writes through it and checks
/// the upper directory, as a step would.
fn probe_overlay(dir: &Path) -> Result<()> {
    crate::sys::private_mount_ns()?;
    let store = Store::open(dir.join("store"))?;
    let lower = store.snapshot_path("probe");
    fs::create_dir_all(lower.join("d")).map_err(io_ctx("creating the probe layer"))?;
    fs::write(lower.join("d/f"), b"lower").map_err(io_ctx("writing the probe layer"))?;
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d).map_err(io_ctx(format!("creating {}", d.display())))?;
    }
    overlay::mount_rw(&store, &["probe".to_string()], &upper, &work, &merged)?;
    let written = fs::write(merged.join("d/f"), b"upper")
        .and_then(|_| fs::remove_file(merged.join("d/f")))
        .map_err(io_ctx("writing through the overlay"));
    let _ = crate::sys::unmount(&merged);
    written?;
    let wh = fs::symlink_metadata(upper.join("d/f"))
        .map_err(io_ctx("the deletion did not reach the upper directory"))?;
    if !std::os::unix::fs::FileTypeExt::is_char_device(&wh.file_type()) {
        return Err(Error::Helper(
            "the deletion did not leave a whiteout in the upper directory".into(),
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
        let dir = fs::File::open(tmp).map_err(io_ctx(format!("opening {}", tmp.display())))?;
        nix::unistd::syncfs(&dir)
            .map_err(|e| Error::Helper(format!("syncing {}: {e}", tmp.display())))?;
    }
    match fs::rename(tmp, &dst) {
        Ok(()) => Ok(()),
        Err(_) if dst.exists() => {
            remove_tree(tmp);
            Ok(())
        }
        Err(e) => Err(io_ctx(format!("renaming into {}", dst.display()))(e)),
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
    crate::sys::private_mount_ns()?;
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d).map_err(io_ctx(format!("creating {}", d.display())))?;
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
            crate::sys::bind(&merged, &merged)?;
            Some(since)
        }
    };
    let mut links = None;
    let mut holders = Vec::new();
    let outcome = match action {
        Action::Run(spec) => {
            exec::run(store, kind, &merged, &dir.join("mounts"), spec).map(|(code, h)| {
                holders = h;
                (code, None)
            })
        }
        Action::Copy(c) => match fileop::copy(store, kind, &merged, &dir.join("src"), c) {
            Ok(l) => {
                links = Some(l);
                Ok((0, None))
            }
            Err(e) => Ok((1, Some(e.to_string()))),
        },
        Action::Mkdir { path, user } => fileop::mkdir(&merged, path, user).map(|_| (0, None)),
    };
    let _ = crate::sys::unmount(&merged);
    // Mount sources of RUN --mount (read-only views, secret tmpfs) go too, so that
    // the step directory can be removed.
    if let Ok(rd) = fs::read_dir(dir.join("mounts")) {
        for e in rd.flatten() {
            let _ = crate::sys::unmount(&e.path());
        }
    }
    let _ = crate::sys::unmount(&dir.join("src"));
    let (exit_code, message) = outcome?;
    if exit_code != 0 {
        return Ok(Response::Step {
            exit_code,
            layer: None,
            message,
        });
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
    exec::prune_holders(store, lowers, &upper, &holders);
    let mut out =
        fs::File::create(layer_out).map_err(io_ctx(format!("creating {}", layer_out.display())))?;
    out.seek(std::io::SeekFrom::Start(layer_offset))
        .map_err(io_ctx(format!("positioning in {}", layer_out.display())))?;
    let digests = match kiln_snapshotter::diff::write_layer(&upper, out, compression) {
        Ok(d) => d,
        Err(e) => {
            // ENOSPC, say: no partial blob stays behind (the step directory goes too).
            let _ = fs::remove_file(layer_out);
            return Err(e.into());
        }
    };
    // A step that changed nothing still has its (empty) layer, as in BuildKit, whose
    // RUN, COPY, ADD and WORKDIR each add one.
    let id = store::snapshot_id(&digests.diff_id, kiln_snapshotter::owner::emulating())?;
    place_snapshot(store, &upper, &id)?;
    Ok(Response::Step {
        exit_code: 0,
        layer: Some(digests),
        message: None,
    })
}

/// Parent side: how to start helpers.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The kiln binary (normally `/proc/self/exe`).
    pub exe: PathBuf,
    pub idmap: IdMap,
    pub store: Store,
    /// The snapshotter of steps.
    pub snapshotter: Snapshotter,
}

impl Launcher {
    /// A launcher that re-executes this very binary (`/proc/self/exe`), with the
    /// overlay snapshotter until told otherwise.
    pub fn new(store: Store, idmap: IdMap) -> Launcher {
        Launcher {
            exe: PathBuf::from("/proc/self/exe"),
            idmap,
            store,
            snapshotter: Snapshotter::Overlay,
        }
    }

    /// Runs one request in a helper; every line of its output goes to `on_line`.
    pub fn run(&self, req: &Request, on_line: &(dyn Fn(&str) + Sync)) -> Result<Response> {
        let base = self.store.tmp_path("helper");
        let (req_path, resp_path) = (base.with_extension("req"), base.with_extension("resp"));
        let bytes =
            serde_json::to_vec(req).map_err(|e| Error::Helper(format!("encoding request: {e}")))?;
        fs::write(&req_path, bytes).map_err(io_ctx(format!("writing {}", req_path.display())))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg(SUBCOMMAND)
            .arg(&req_path)
            .arg(&resp_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let result = (|| {
            let mut child = self.idmap.spawn(&mut cmd)?;
            let out: Option<Box<dyn std::io::Read + Send>> =
                child.stdout.take().map(|o| Box::new(o) as _);
            let err: Option<Box<dyn std::io::Read + Send>> =
                child.stderr.take().map(|e| Box::new(e) as _);
            std::thread::scope(|s| {
                for pipe in [out, err].into_iter().flatten() {
                    s.spawn(move || {
                        BufReader::new(pipe)
                            .lines()
                            .map_while(|l| l.ok())
                            .for_each(|l| on_line(&l))
                    });
                }
            });
            let status = child
                .wait()
                .map_err(io_ctx("waiting for the namespace helper"))?;
            let bytes = fs::read(&resp_path).map_err(|_| {
                Error::Helper(format!("the helper exited ({status}) without an answer"))
            })?;
            serde_json::from_slice::<Response>(&bytes)
                .map_err(|e| Error::Helper(format!("bad response: {e}")))
        })();
        let _ = fs::remove_file(&req_path);
        let _ = fs::remove_file(&resp_path);
        match result? {
            Response::Failed { message } => Err(Error::Helper(message)),
            r => Ok(r),
        }
    }
}
