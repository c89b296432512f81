//! kiln's solver: runs a build graph.
//!
//! It owns the DAG scheduler ([`solve`]: independent vertices run at the same time on
//! a rayon pool), the meaning of each op kind ([`ops`]: one module per kind, behind one
//! trait), cache keys and the cache store seam ([`cache`]), and the base image
//! resolver the frontend asks ([`resolver`]). Everything that runs in kiln's user
//! namespace goes through [`kiln_executor::Executor`].

pub mod cache;
mod git;
mod http;
pub mod inputs;
mod materialize;
pub mod ops;
pub mod resolver;
mod scheduler;
pub mod secrets;
mod session;
pub mod ssh;
pub mod transfer;

pub use materialize::{bring_in, Need};
pub use scheduler::solve;
pub use session::{Done, Solver, Spool, SPOOL_OFFSET};

/// Everything that can go wrong while solving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] kiln_snapshotter::Error),
    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),
    #[error(transparent)]
    Executor(#[from] kiln_executor::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
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
    #[error("{0} is not pinned to a digest")]
    NotPinned(String),
    #[error("{image}: {why}")]
    BadImage { image: String, why: String },
    #[error(
        "{image}: layer {layer}: the manifest gives its size as {want} bytes, the blob has {have}"
    )]
    LayerSize {
        image: String,
        layer: String,
        want: u64,
        have: u64,
    },
    #[error("{image}: unpacking layer {layer}: {source}")]
    Unpack {
        image: String,
        layer: String,
        source: Box<kiln_executor::Error>,
    },
    /// A build input (context, Dockerfile, `.dockerignore`, build argument) that
    /// cannot be read or used.
    #[error("{0}")]
    Input(String),
    #[error("--secret {spec:?}: {why}")]
    Secret { spec: String, why: String },
    #[error("starting the scheduler: {0}")]
    Scheduler(String),
}

/// Result alias for the solver.
pub type Result<T, E = Error> = std::result::Result<T, E>;
