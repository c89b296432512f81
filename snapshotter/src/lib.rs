//! kiln's storage layer.
//!
//! It owns the content-addressed store ([`store`]), the rootless identity mapping and
//! the entry into kiln's user namespace ([`idmap`]), unpacking layers into snapshot
//! directories in overlayfs format ([`unpack`]), producing a layer from an overlay
//! upper directory in one streaming pass ([`diff`]), and mounting overlay snapshots
//! ([`overlay`]) or, where overlay cannot be mounted, copying and walking them
//! ([`native`]), file owners real or emulated ([`owner`]), the build records that say
//! which layers a cached step or a pulled image holds ([`records`]), and deciding what
//! `kiln prune` removes and `kiln du` reports ([`gc`]). Raw syscalls and `unsafe` live
//! in [`sys`] only.

pub mod convert;
pub mod diff;
pub mod digest;
pub mod gc;
pub mod idmap;
pub mod native;
pub mod overlay;
pub mod owner;
pub mod pargz;
pub mod records;
pub mod store;
#[allow(unsafe_code)] // the one module of raw syscalls
mod sys;
pub mod tree;
pub mod unpack;
pub mod write_behind;

pub use store::Store;

/// How deep a directory tree kiln walks (contexts, copies, layers, diffs, snapshots)
/// before it stops with an error instead of recursing further. Linux paths are at most
/// 4096 bytes, so no tree that honest tools can address is deeper than 2048 levels,
/// and real ones stay far below this; the bound keeps every recursive walk within
/// the stack of a worker thread whatever the input.
pub const MAX_TREE_DEPTH: usize = 512;

/// The error of a walk that reached [`MAX_TREE_DEPTH`] at `at`.
pub fn too_deep(at: &std::path::Path) -> Error {
    Error::BadLayer(format!(
        "{}: directory tree deeper than {MAX_TREE_DEPTH} levels",
        at.display()
    ))
}

/// Everything that can go wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed; `context` says on what.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// A file operation failed (fs-err's message names the path).
    #[error(transparent)]
    Fs(#[from] std::io::Error),
    /// Content did not hash to the digest it was stored or fetched under.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// A string is not a `sha256:<64 hex>` digest.
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
    BadDigest(String),
    /// A layer entry tried to leave the directory it is unpacked into.
    #[error("layer entry {0:?} escapes the root it is unpacked into")]
    Escape(String),
    /// A layer is malformed or hostile in a way other than escaping (a whiteout naming
    /// no single entry, a decompression bomb, a tree too deep to walk).
    #[error("{0}")]
    BadLayer(String),
    /// The user namespace or its identity mapping could not be set up.
    #[error("user namespace: {0}")]
    UserNs(String),
    /// An export asked for something its format cannot carry.
    #[error("{0}")]
    Unsupported(String),
    /// A system call failed.
    #[error("{context}: {errno}")]
    Sys {
        context: String,
        errno: nix::errno::Errno,
    },
}

/// Result alias for the storage layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches "what were we doing" to I/O and syscall errors.
pub trait Context<T> {
    /// Wraps the error with a description of the operation.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: what(),
            source,
        })
    }
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|errno| Error::Sys {
            context: what(),
            errno,
        })
    }
}
