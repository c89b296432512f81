//! kiln's frontend: turns a Dockerfile into a build graph.
//!
//! It owns Dockerfile parsing (through `parse-dockerfile`), variable expansion with
//! BuildKit's shell-lexer semantics ([`lexer`]), ARG scoping, stages, and the
//! compilation of the stages the target needs into a petgraph DAG of filesystem
//! operations ([`Op`]) plus the resulting image configuration and history, as
//! BuildKit's `dockerfile2llb` does. It never touches the filesystem or the network:
//! base images are resolved through the [`ImageResolver`] the caller provides.

mod compile;
pub mod dockerignore;
pub mod image;
pub mod lexer;
pub mod path;

pub use compile::{
    compile, BuildGraph, BuildOptions, CopyFrom, CopySpec, HistoryItem, ImageResolver, Op,
    ResolvedImage, RunSpec, Step,
};
pub use image::{ContainerConfig, History, ImageConfig, Platform, RootFs};

/// Everything that can be wrong with a Dockerfile or how it is built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A syntax or semantic error at a place in the Dockerfile.
    #[error("{file}:{line}:{col}: {message}\n{line:>4} | {text}\n     | {caret:>width$}", caret = "^", width = col)]
    At {
        file: String,
        line: usize,
        col: usize,
        message: String,
        text: String,
    },
    /// `--target` names no stage.
    #[error("target stage {0:?} could not be found")]
    UnknownTarget(String),
    /// The Dockerfile has no FROM.
    #[error("{0}: the Dockerfile has no FROM instruction")]
    NoStages(String),
    /// A base image could not be resolved.
    #[error("{file}:{line}: failed to resolve {image}: {message}")]
    Resolve {
        file: String,
        line: usize,
        image: String,
        message: String,
    },
}

/// Result alias for the frontend.
pub type Result<T, E = Error> = std::result::Result<T, E>;
