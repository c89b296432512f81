//! kiln's solver: runs a build graph.
//!
//! It owns the DAG scheduler ([`solve`]: independent vertices run at the same time on
//! a rayon pool), cache keys and records ([`cache`]), the namespace helper that every
//! filesystem-touching operation runs in ([`helper`]: a re-exec of the kiln binary that
//! enters kiln's user namespace before any thread exists), the sandbox that executes
//! RUN ([`exec`]), COPY and WORKDIR file operations ([`fileop`]) and progress output
//! ([`progress`]), and the store housekeeping that needs the helper ([`housekeeping`]:
//! measuring and deleting for `kiln du` and `kiln prune`). Raw syscalls and `unsafe` live in `sys` only.

pub mod cache;
pub mod emulate;
pub mod exec;
pub mod fileop;
pub mod helper;
pub mod housekeeping;
pub mod progress;
mod scheduler;
mod sys;

pub use scheduler::{remake_blob, solve, Solver, Spool, SPOOL_OFFSET};

/// Everything that can go wrong while solving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] kiln_snapshotter::Error),
    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),
    /// A RUN exited non-zero.
    #[error("{step} (line {line}): process {argv:?} did not complete successfully: exit code: {code}{tail}")]
    RunFailed {
        step: String,
        line: usize,
        argv: Vec<String>,
        code: i32,
        tail: String,
    },
    /// Any other step failed.
    #[error("{step} (line {line}): {message}")]
    StepFailed {
        step: String,
        line: usize,
        message: String,
    },
    /// The namespace helper could not do its job.
    #[error("{0}")]
    Helper(String),
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// Result alias for the solver.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_ctx(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
