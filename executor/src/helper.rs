//! The namespace helper: `kiln __helper REQUEST RESPONSE`, and [`Helper`], the
//! [`Executor`] that starts one per request.
//!
//! The request and response ([`crate::wire`]) travel as JSON files; the RUN's output
//! goes to the helper's stdout/stderr, which the parent streams to the step's log. The
//! rest of kiln sees only [`Executor`].

use crate::wire::{Request, Response};
use crate::{
    io_ctx, work, Error, Executor, LayerCompression, LayerDigests, Log, Result, Snapshotter,
    StepOutcome, StepSpec,
};
use fs_err as fs;
use kiln_snapshotter::idmap::{self, IdMap};
use kiln_snapshotter::Store;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The hidden subcommand the binary dispatches to [`main`].
pub const SUBCOMMAND: &str = "__helper";

/// The helper's entry point; returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let (Some(req), Some(resp)) = (args.first(), args.get(1)) else {
        eprintln!("usage: kiln {SUBCOMMAND} REQUEST RESPONSE");
        return 2;
    };
    let response = match idmap::enter()
        .map_err(Error::from)
        .and_then(|_| read_request(Path::new(req)))
        .and_then(work::handle)
    {
        Ok(r) => r,
        Err(e) => Response::Failed(e.to_string()),
    };
    let bytes = serde_json::to_vec(&response).unwrap_or_default();
    match fs::write(resp, bytes) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln helper: {e}");
            1
        }
    }
}

fn read_request(p: &Path) -> Result<Request> {
    let bytes = fs::read(p)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
        what: "request",
        why: e.to_string(),
    })
}

/// The executor that runs each request in a namespace helper.
#[derive(Debug, Clone)]
pub struct Helper {
    /// The kiln binary (normally `/proc/self/exe`).
    pub exe: PathBuf,
    pub idmap: IdMap,
    pub store: Store,
    /// The snapshotter of steps.
    pub snapshotter: Snapshotter,
}

impl Helper {
    /// A helper that re-executes this very binary (`/proc/self/exe`), with the overlay
    /// snapshotter until told otherwise.
    pub fn new(store: Store, idmap: IdMap) -> Helper {
        Helper {
            exe: PathBuf::from("/proc/self/exe"),
            idmap,
            store,
            snapshotter: Snapshotter::Overlay,
        }
    }

    /// Runs one request in a helper; every line of its output goes to `on_line`.
    fn run(&self, req: &Request, on_line: Log<'_>) -> Result<Response> {
        self.run_with(req, Stdio::null(), on_line)
    }

    /// [`Helper::run`] with `stdin` as the helper's standard input.
    fn run_with(&self, req: &Request, stdin: Stdio, on_line: Log<'_>) -> Result<Response> {
        let base = self.store.tmp_path("helper");
        let (req_path, resp_path) = (base.with_extension("req"), base.with_extension("resp"));
        let bytes = serde_json::to_vec(req).map_err(|e| Error::Protocol {
            what: "request",
            why: e.to_string(),
        })?;
        fs::write(&req_path, bytes)?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg(SUBCOMMAND)
            .arg(&req_path)
            .arg(&resp_path)
            .stdin(stdin)
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
            let bytes =
                std::fs::read(&resp_path).map_err(|_| Error::NoAnswer(status.to_string()))?;
            serde_json::from_slice::<Response>(&bytes).map_err(|e| Error::Protocol {
                what: "response",
                why: e.to_string(),
            })
        })();
        let _ = std::fs::remove_file(&req_path);
        let _ = std::fs::remove_file(&resp_path);
        match result? {
            Response::Failed(message) => Err(Error::InHelper(message)),
            r => Ok(r),
        }
    }

    fn root(&self) -> PathBuf {
        self.store.root().to_path_buf()
    }

    /// Unpacks the blob file `blob`, or with `None` the `size`-byte blob on `stdin`,
    /// into snapshot `id`.
    fn unpack_from(
        &self,
        blob: Option<&Path>,
        size: Option<u64>,
        stdin: Stdio,
        id: &str,
        diff_id: Option<&str>,
        log: Log<'_>,
    ) -> Result<Vec<String>> {
        let req = Request::Unpack {
            store: self.root(),
            blob: blob.map(Path::to_path_buf),
            size,
            id: id.to_string(),
            diff_id: diff_id.map(str::to_string),
        };
        match self.run_with(&req, stdin, log)? {
            Response::Unpacked { skipped_devices } => Ok(skipped_devices),
            _ => Err(Error::Unexpected("unpack")),
        }
    }
}

impl Executor for Helper {
    fn store(&self) -> &Store {
        &self.store
    }

    fn snapshotter(&self) -> Snapshotter {
        self.snapshotter
    }

    fn preserves_owners(&self) -> bool {
        self.idmap.preserves_owners()
    }

    fn unpack(
        &self,
        blob: &Path,
        id: &str,
        diff_id: Option<&str>,
        log: Log<'_>,
    ) -> Result<Vec<String>> {
        self.unpack_from(Some(blob), None, Stdio::null(), id, diff_id, log)
    }

    fn unpack_stream(
        &self,
        input: std::fs::File,
        size: u64,
        id: &str,
        diff_id: Option<&str>,
        log: Log<'_>,
    ) -> Result<Vec<String>> {
        self.unpack_from(None, Some(size), Stdio::from(input), id, diff_id, log)
    }

    fn unpack_tree(&self, blob: &Path, dir: &Path, diff_id: &str) -> Result<()> {
        let req = Request::UnpackTree {
            store: self.root(),
            blob: blob.to_path_buf(),
            dir: dir.to_path_buf(),
            diff_id: diff_id.to_string(),
        };
        match self.run(&req, &|l: &str| tracing::info!("{l}"))? {
            Response::Unpacked { .. } => Ok(()),
            _ => Err(Error::Unexpected("unpack")),
        }
    }

    fn pack(&self, dir: &Path, out: &Path) -> Result<LayerDigests> {
        let req = Request::Pack {
            dir: dir.to_path_buf(),
            out: out.to_path_buf(),
        };
        match self.run(&req, &|l: &str| tracing::info!("{l}"))? {
            Response::Layer(d) => Ok(d),
            _ => Err(Error::Unexpected("pack")),
        }
    }

    fn step(&self, step: StepSpec, log: Log<'_>) -> Result<StepOutcome> {
        let req = Request::Step {
            store: self.root(),
            snapshotter: self.snapshotter,
            lowers: step.lowers,
            dir: self.store.tmp_path("step"),
            action: step.action,
            layer_out: step.layer_out,
            compression: step.compression,
            layer_offset: step.layer_offset,
        };
        match self.run(&req, log)? {
            Response::Step(outcome) => Ok(outcome),
            _ => Err(Error::Unexpected("step")),
        }
    }

    fn make_layer(
        &self,
        id: &str,
        out: &Path,
        compression: LayerCompression,
    ) -> Result<LayerDigests> {
        let req = Request::Layer {
            store: self.root(),
            id: id.to_string(),
            out: out.to_path_buf(),
            compression,
        };
        match self.run(&req, &|l: &str| tracing::info!("{l}"))? {
            Response::Layer(d) => Ok(d),
            _ => Err(Error::Unexpected("layer")),
        }
    }

    fn export_fs(&self, lowers: &[String], dest: &Path, tar: bool) -> Result<()> {
        let req = Request::ExportFs {
            store: self.root(),
            lowers: lowers.to_vec(),
            dest: dest.to_path_buf(),
            tar,
        };
        match self.run(&req, &|l: &str| tracing::info!("{l}"))? {
            Response::Done => Ok(()),
            _ => Err(Error::Unexpected("export")),
        }
    }

    fn remove(&self, paths: Vec<PathBuf>) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        match self.run(&Request::Remove { paths }, &|_| {})? {
            Response::Done => Ok(()),
            _ => Err(Error::Unexpected("remove")),
        }
    }

    fn usage(&self, paths: &[PathBuf]) -> Result<Vec<u64>> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let req = Request::Usage {
            paths: paths.to_vec(),
        };
        match self.run(&req, &|_| {})? {
            Response::Usage(bytes) if bytes.len() == paths.len() => Ok(bytes),
            _ => Err(Error::Unexpected("usage")),
        }
    }

    fn probe_overlay(&self) -> Result<Option<String>> {
        let req = Request::Probe {
            dir: self.store.tmp_path("probe"),
        };
        match self.run(&req, &|_| {})? {
            Response::Probe(r) => Ok(r),
            _ => Err(Error::Unexpected("probe")),
        }
    }

    fn probe_binfmt(&self) -> Result<Option<String>> {
        match self.run(&Request::ProbeBinfmt, &|_| {})? {
            Response::Probe(r) => Ok(r),
            _ => Err(Error::Unexpected("binfmt probe")),
        }
    }
}

/// A pipe for [`Executor::unpack_stream`]: (read end, write end), both close-on-exec,
/// with room for 1 MiB (the default 64 KiB makes a download and its unpack take turns).
pub fn stream_pipe() -> Result<(std::fs::File, std::fs::File)> {
    let (r, w) = std::io::pipe()?;
    let (r, w): (std::os::fd::OwnedFd, std::os::fd::OwnedFd) = (r.into(), w.into());
    // A smaller pipe still works: the size is a hint.
    let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    Ok((r.into(), w.into()))
}
