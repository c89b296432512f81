//! kiln's frontend: turns a Dockerfile into a build graph.
//!
//! It owns Dockerfile parsing (through `parse-dockerfile`), variable expansion with
//! BuildKit's shell-lexer semantics ([`lexer`]), ARG scoping, stages, and the
//! compilation of the stages the target needs into a petgraph DAG of filesystem
//! operations ([`Op`]) plus the resulting image configuration and history, as
//! BuildKit's `dockerfile2llb` does. It never touches the filesystem or the network:
//! base images are resolved through the [`ImageResolver`] the caller provides.

pub mod check;
mod compile;
pub mod csv;
pub mod dockerignore;
pub mod image;
pub mod lexer;
pub mod outline;
pub mod parser;
pub mod path;
pub mod remote;
pub mod runflags;

/// Go's `time.ParseDuration` (in nanoseconds), as Docker's CLI flags take durations.
pub use compile::gofmt::parse_duration as parse_go_duration;
pub use compile::merge::{merge, Merged};
pub use compile::{
    automatic_args, compile, compile_parsed, BuildGraph, BuildOptions, CopyFrom, CopySpec,
    HistoryItem, ImageResolver, InlineFile, MountKind, MountSpec, NamedContext, Network, Op,
    ResolvedImage, RunMount, RunSpec, Security, Sharing, Source, Step,
};
pub use image::{ContainerConfig, Healthcheck, History, ImageConfig, Platform, RootFs};

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

/// Byte offsets where each line of `text` starts.
pub(crate) fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// An [`Error::At`] for byte `offset` of `text`.
/// The instruction at 1-based `line` of `text`, as errors about a step show it (the
/// way syntax errors show theirs): `Dockerfile:4`, the line, a caret under its start.
pub fn snippet(file: &str, text: &str, line: usize) -> Option<String> {
    let l = text
        .lines()
        .nth(line.checked_sub(1)?)?
        .trim_end_matches('\r');
    let col = l.chars().take_while(|c| c.is_whitespace()).count() + 1;
    Some(format!(
        "{file}:{line}\n{line:>4} | {l}\n     | {caret:>col$}",
        caret = "^"
    ))
}

pub(crate) fn error_at(
    file: &str,
    text: &str,
    line_starts: &[usize],
    offset: usize,
    message: impl Into<String>,
) -> Error {
    let offset = offset.min(text.len());
    let idx = match line_starts.binary_search(&offset) {
        Ok(i) => i,
        Err(i) => i.saturating_sub(1),
    };
    let start = line_starts.get(idx).copied().unwrap_or(0);
    let end = text[start..].find('\n').map_or(text.len(), |e| start + e);
    let line_text = text[start..end].trim_end_matches('\r');
    let col = text.get(start..offset).map_or(1, |s| s.chars().count() + 1);
    Error::At {
        file: file.to_string(),
        line: idx + 1,
        col,
        message: message.into(),
        text: line_text.to_string(),
    }
}
