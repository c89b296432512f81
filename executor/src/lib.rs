//! kiln's executor: everything that runs inside kiln's user namespace.
//!
//! `unshare(CLONE_NEWUSER)` fails in a multithreaded process, and kiln runs rayon and
//! tokio, so every operation that needs kiln's user namespace (unpacking with owners,
//! overlay mounts, RUN, COPY, diffs of trees owned by mapped ids, deleting them) runs
//! in a fresh exec of the kiln binary that enters the namespace first thing: the
//! namespace helper (`helper`, its protocol in `wire`, its work in `work`). The rest of
//! kiln sees only the [`Executor`] trait, with typed requests and answers; [`Helper`]
//! implements it by starting helpers, and [`fake::Recording`] implements it without
//! namespaces, for tests.
//!
//! Inside the helper: the RUN sandbox ([`sandbox`]), COPY/ADD and WORKDIR ([`fileop`]),
//! paths that resolve inside a root ([`paths`]), user names ([`user`]), QEMU user
//! emulation ([`emulate`]), the store housekeeping that needs the namespace
//! ([`housekeeping`]), and the machine's checks and the snapshotter choice
//! ([`probe`]). Raw syscalls and `unsafe` live in `sys` only.

mod agent;
pub mod emulate;
pub mod fake;
pub mod fileop;
mod helper;
pub mod housekeeping;
mod ids;
mod owners;
pub mod paths;
pub mod probe;
mod remake;
pub mod sandbox;
#[allow(unsafe_code)] // the one module of raw syscalls
mod sys;
pub mod user;
mod wire;
mod work;

pub use emulate::Emulator;
pub use fileop::{CopyAction, Source};
pub use helper::{main as helper_main, stream_pipe, Helper, SUBCOMMAND};
pub use kiln_snapshotter::diff::{LayerCompression, LayerDigests};
pub use kiln_snapshotter::native::Snapshotter;
pub use remake::remake_blob;
pub use sandbox::{Mount, MountSource, RunAction, SecretFrom};
pub use sys::hard_limit;

use kiln_snapshotter::Store;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a step's output lines go (each line of the RUN's stdout and stderr).
pub type Log<'a> = &'a (dyn Fn(&str) + Sync);

/// What runs in kiln's namespace, with typed requests and answers.
pub trait Executor: Send + Sync {
    /// The store the executor works in.
    fn store(&self) -> &Store;
    /// How steps get their filesystem.
    fn snapshotter(&self) -> Snapshotter;
    /// Whether files keep their owners (a subordinate id range is mapped) or owners
    /// are emulated; snapshots of the two modes differ.
    fn preserves_owners(&self) -> bool;
    /// Unpacks the layer blob `blob` into snapshot `id`; the unpacked stream must hash
    /// to `diff_id` when given. Returns the device nodes it skipped.
    fn unpack(
        &self,
        blob: &Path,
        id: &str,
        diff_id: Option<&str>,
        log: Log<'_>,
    ) -> Result<Vec<String>>;
    /// [`Executor::unpack`] of a layer blob of `size` bytes read from `input` as it
    /// arrives (a download's pipe): the unpack keeps pace with the download. The
    /// blob's digest is the caller's to check; the stream must hash to `diff_id`.
    fn unpack_stream(
        &self,
        input: std::fs::File,
        _size: u64,
        id: &str,
        diff_id: Option<&str>,
        log: Log<'_>,
    ) -> Result<Vec<String>> {
        // Without a helper to stream into: the whole blob first.
        let tmp = self.store().tmp_path("stream");
        let copied = fs_err::File::create(&tmp)
            .and_then(|mut f| std::io::copy(&mut { input }, &mut f).map(|_| ()))
            .map_err(Error::from);
        let res = copied.and_then(|()| self.unpack(&tmp, id, diff_id, log));
        let _ = std::fs::remove_file(&tmp);
        res
    }
    /// Runs a step on a fresh filesystem over `lowers` and makes its layer.
    fn step(&self, step: StepSpec, log: Log<'_>) -> Result<StepOutcome>;
    /// Unpacks the layer blob `blob` into the new directory `dir` (a cache mount of the
    /// store); the stream must hash to `diff_id`. A directory already there stays.
    fn unpack_tree(&self, blob: &Path, dir: &Path, diff_id: &str) -> Result<()>;
    /// Writes the tree `dir` (a cache mount) as a gzip layer blob at `out`.
    fn pack(&self, dir: &Path, out: &Path) -> Result<LayerDigests>;
    /// Makes the layer blob of snapshot `id` again, at `out`.
    fn make_layer(
        &self,
        id: &str,
        out: &Path,
        compression: LayerCompression,
    ) -> Result<LayerDigests>;
    /// The filesystem of `lowers` (top-first) as the directory `dest` (created or
    /// merged into) or, with `tar`, as the tar file `dest`.
    fn export_fs(&self, lowers: &[String], dest: &Path, tar: bool) -> Result<()>;
    /// Deletes trees that may hold files owned by mapped ids.
    fn remove(&self, paths: Vec<PathBuf>) -> Result<()>;
    /// The disk usage of each of `paths`.
    fn usage(&self, paths: &[PathBuf]) -> Result<Vec<u64>>;
    /// Whether a writable overlay works on the store's filesystem: `None` if so, else why not.
    fn probe_overlay(&self) -> Result<Option<String>>;
    /// Whether a binfmt_misc of kiln's own user namespace can be mounted: `None` if so,
    /// else why not.
    fn probe_binfmt(&self) -> Result<Option<String>>;
}

/// The operation of a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Action {
    Run(RunAction),
    Copy(CopyAction),
    /// WORKDIR: make `path` (owned by `user`, when it is new).
    Mkdir {
        path: String,
        user: String,
    },
}

/// A step for [`Executor::step`]: mount `lowers` (top-first) with a fresh upper (or,
/// with the native snapshotter, copy them), do `action`, and turn the changes into a
/// layer blob at `layer_out` and a snapshot.
#[derive(Debug, Clone)]
pub struct StepSpec {
    pub lowers: Vec<String>,
    pub action: Action,
    pub layer_out: PathBuf,
    /// Where in `layer_out` the blob starts (room for an archive's tar header when the
    /// step writes its layer straight into the archive being exported).
    pub layer_offset: u64,
    pub compression: LayerCompression,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepOutcome {
    /// It made this layer (and its snapshot).
    Layer(LayerDigests),
    /// The RUN's command exited non-zero (128+signal when killed).
    Exited(i32),
    /// A file operation refused its input, with the message for the user.
    Refused(String),
}

/// Everything that can go wrong in the executor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] kiln_snapshotter::Error),
    /// A file operation failed (fs-err's message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A system call failed.
    #[error("{what}: {errno}")]
    Sys {
        what: String,
        errno: nix::errno::Errno,
    },
    #[error("the layer's content is {got} but the image config gives its diffID as {want}")]
    DiffId { got: String, want: String },
    #[error("snapshot {0} is not in the store")]
    MissingSnapshot(String),
    #[error("too many levels of symbolic links in {0}")]
    SymlinkLoop(String),
    /// A COPY source that is not in the context (BuildKit's words).
    #[error("failed to compute cache key: failed to calculate checksum: \"/{0}\": not found")]
    SourceNotFound(String),
    /// A pattern (`.dockerignore`, `--exclude`, a COPY wildcard) that does not parse.
    #[error("{what}: {why}")]
    Pattern { what: String, why: String },
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
    #[error("bad {file} entry for {name}")]
    BadEntry { file: &'static str, name: String },
    #[error("secret environment variable {0} is not set")]
    SecretUnset(String),
    #[error("secret for {0} is not UTF-8")]
    SecretNotUtf8(String),
    #[error("bad here-document name {0:?}")]
    HereDocName(String),
    #[error("archive {name}: {what}: {why}")]
    Archive {
        name: String,
        what: String,
        why: String,
    },
    #[error("/{0} exists and is not a directory")]
    NotADirectory(String),
    /// A mount of `RUN --mount` or of the sandbox itself that cannot be made.
    #[error("mount target {target}: {why}")]
    MountTarget { target: String, why: String },
    #[error("mount source {0:?} not found in its stage")]
    MountSource(String),
    #[error("working directory {cwd} {why}")]
    Workdir { cwd: String, why: &'static str },
    #[error("RUN as USER {user} ({uid}:{gid}) needs a subordinate id range: without one only root exists in kiln's user namespace; add ranges to /etc/subuid and /etc/subgid (usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER) and install uidmap")]
    NeedsSubids { user: String, uid: u32, gid: u32 },
    #[error("--ulimit {0}")]
    Ulimit(String),
    #[error("empty command")]
    EmptyCommand,
    #[error("exec: {0:?}: executable file not found in $PATH")]
    NotInPath(String),
    #[error("/dev cannot be set up for a here-document script")]
    NoDevPipes,
    #[error("RUN steps for {platform} cannot run on this {host} machine: {why}")]
    CannotEmulate {
        platform: String,
        host: String,
        why: String,
    },
    #[error("no QEMU target is known for architecture {0}")]
    NoQemuTarget(String),
    #[error("{0}")]
    Probe(&'static str),
    #[error("making layer {layer} again: {why}")]
    Remake { layer: String, why: String },
    /// An error inside the helper, as it reported it.
    #[error("{0}")]
    InHelper(String),
    #[error("the namespace helper exited ({0}) without an answer")]
    NoAnswer(String),
    #[error("the namespace helper's {what} does not decode: {why}")]
    Protocol { what: &'static str, why: String },
    #[error("the namespace helper gave no {0} answer")]
    Unexpected(&'static str),
}

/// Result alias for the executor.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn sys_err(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> Error {
    let what = what.into();
    move |errno| Error::Sys { what, errno }
}

/// An I/O error with what was being done, for errors that are not a path's (fs-err
/// names the path of its own).
pub(crate) fn io_ctx(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |e| Error::Io(std::io::Error::new(e.kind(), format!("{context}: {e}")))
}
