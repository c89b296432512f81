//! What the compiler makes: the build graph, its steps and ops, and how it prints.

use super::mounts::{MountSpec, Network, Security};
use crate::image::{History, ImageConfig, Platform};
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;
use std::collections::BTreeSet;

/// What the caller asks to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The Dockerfile's name as the user gave it, for messages.
    pub file_name: String,
    /// `--build-arg` values, in order.
    pub build_args: Vec<(String, String)>,
    /// `--target`.
    pub target: Option<String>,
    /// The platform built for (`TARGETPLATFORM`, and every stage's platform unless
    /// its FROM says `--platform`).
    pub platform: Platform,
    /// Prefix step names with their stage's platform, as BuildKit does when a build
    /// has several target platforms (`[linux/arm64 build 2/3] RUN ...`).
    pub show_platform: bool,
    /// `--no-cache-filter`: stages whose steps run even when cached.
    pub no_cache_stages: Vec<String>,
    /// `--build-context NAME=VALUE`: what `FROM NAME`, `COPY --from=NAME` and
    /// `--mount=from=NAME` mean instead (a stage of that name included).
    pub contexts: Vec<(String, NamedContext)>,
    /// The build-wide RUN settings (`--network`, `--add-host`, ...).
    pub run: crate::runflags::RunDefaults,
}

/// What a `--build-context` names.
#[derive(Debug, Clone, PartialEq)]
pub enum NamedContext {
    /// `docker-image://REF`: that image.
    Image(String),
    /// A local directory, by its context name (the caller knows where it is).
    Local,
}

/// A base image pinned by digest, with its configuration.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// `registry/repo@sha256:...` of the platform-specific manifest.
    pub pinned: String,
    pub config: ImageConfig,
}

/// Resolves image names (as written, after expansion) for `FROM` and `COPY --from`.
pub trait ImageResolver {
    /// Pins `name` to a manifest for `platform` and returns its configuration.
    fn resolve(
        &self,
        name: &str,
        platform: &Platform,
    ) -> std::result::Result<ResolvedImage, String>;
}

/// A file the build writes from the Dockerfile itself (a here-document).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct InlineFile {
    pub name: String,
    pub data: String,
    pub mode: u32,
}

/// Where a mount or a COPY reads from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum CopyFrom {
    /// The build context.
    Context,
    /// The filesystem a vertex produced (a stage or an image).
    Step(#[serde(serialize_with = "ser_node")] NodeIndex),
}

/// A `RUN --mount`, with its `from` resolved.
#[derive(Debug, Clone, Serialize)]
pub struct RunMount {
    #[serde(flatten)]
    pub spec: MountSpec,
    /// For bind and cache mounts: where the content comes from (`None`: an empty cache).
    pub from: Option<CopyFrom>,
}

/// A RUN step, fully expanded.
#[derive(Debug, Clone, Serialize)]
pub struct RunSpec {
    /// The platform the command runs as (emulated when foreign); part of the cache key.
    pub platform: Platform,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub mounts: Vec<RunMount>,
    pub network: Network,
    pub security: Security,
    /// Files mounted read-only under `/dev/pipes/` (a here-document with a `#!` line).
    pub files: Vec<InlineFile>,
    /// `--add-host` lines for /etc/hosts (left out of the key when there are none, as
    /// are the ulimits, so that keys stay what they were without the flags).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<crate::runflags::HostEntry>,
    /// `--ulimit`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<crate::runflags::Ulimit>,
}

/// One COPY/ADD source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Source {
    /// A path or wildcard pattern, relative to the source root.
    Path(String),
    /// A here-document written as a file named `name`.
    Inline(InlineFile),
    /// `ADD` of a git repository: `url` without its fragment, `#REF:SUBDIR`.
    Git {
        url: String,
        /// Branch, tag or commit (`None`: the remote's HEAD).
        reference: Option<String>,
        subdir: String,
        keep_git_dir: bool,
    },
    /// `ADD https://...`, with `--checksum`.
    Url {
        url: String,
        checksum: Option<String>,
        /// The file name it is saved as.
        name: String,
    },
}

/// A COPY or ADD step, fully expanded.
#[derive(Debug, Clone, Serialize)]
pub struct CopySpec {
    pub from: CopyFrom,
    pub srcs: Vec<Source>,
    /// Absolute destination; a trailing `/` means "a directory".
    pub dest: String,
    /// `--chown=user[:group]`, resolved in the destination's /etc/passwd.
    pub chown: Option<String>,
    /// `--chmod`, octal.
    pub chmod: Option<u32>,
    /// `--parents`: keep the source's parent directories (up to a `/./` pivot).
    pub parents: bool,
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
    /// `--link`.
    pub link: bool,
    /// ADD: local tar archives are unpacked into the destination.
    pub unpack: bool,
}

/// A filesystem operation: every vertex of the graph is one.
#[derive(Debug, Clone, Serialize)]
pub enum Op {
    /// A base image, pinned by digest to its manifest for `platform`.
    Image {
        name: String,
        pinned: String,
        platform: Platform,
    },
    /// The empty filesystem.
    Scratch,
    /// The files of the named local build context `name` (`--build-context`).
    Local {
        name: String,
    },
    Run(RunSpec),
    Copy(CopySpec),
    /// `WORKDIR`'s directory creation, owned by `user` when set.
    Mkdir {
        path: String,
        user: String,
    },
}

/// A vertex: one operation on its parent's filesystem.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// How progress shows it, e.g. `[builder 2/3] RUN make`.
    pub name: String,
    /// 1-based line of the instruction.
    pub line: usize,
    pub op: Op,
    /// The filesystem this step starts from (`None` for sources).
    #[serde(serialize_with = "ser_opt_node")]
    pub parent: Option<NodeIndex>,
    /// Run even when the cache has the result: a step of a `--no-cache-filter` stage.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
}

/// A history row and, for rows of this build that may add a layer, the vertex whose
/// layer it is (the row becomes `empty_layer` when that layer turns out empty).
#[derive(Debug, Clone)]
pub struct HistoryItem {
    pub entry: History,
    pub layer: Option<NodeIndex>,
    /// Whether this build added the row (its time is filled at export).
    pub own: bool,
}

/// The compiled build: a DAG whose edges run from inputs to the steps that use them.
#[derive(Debug)]
pub struct BuildGraph {
    pub dag: DiGraph<Step, ()>,
    /// The vertex whose filesystem is the result.
    pub target: NodeIndex,
    /// The result's configuration (without `rootfs` and `history`).
    pub config: ImageConfig,
    /// The result's history, base image rows first.
    pub history: Vec<HistoryItem>,
    /// Warnings to print, e.g. unused build args.
    pub warnings: Vec<String>,
}

impl BuildGraph {
    /// The graph as JSON: vertices (with their operations) and edges.
    pub fn to_json(&self) -> serde_json::Value {
        let vertices: Vec<serde_json::Value> = self
            .dag
            .node_indices()
            .map(|n| {
                let mut v = serde_json::to_value(&self.dag[n]).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("id".into(), n.index().into());
                    let inputs: Vec<usize> = self
                        .dag
                        .neighbors_directed(n, petgraph::Direction::Incoming)
                        .map(|i| i.index())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    o.insert("inputs".into(), inputs.into());
                }
                v
            })
            .collect();
        serde_json::json!({
            "target": self.target.index(),
            "vertices": vertices,
            "config": self.config,
        })
    }

    /// The graph in Graphviz dot.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph kiln {\n  rankdir=TB;\n  node [shape=box];\n");
        for n in self.dag.node_indices() {
            let label = serde_json::to_string(&self.dag[n].name).unwrap_or_default();
            let style = if n == self.target { ", style=bold" } else { "" };
            out.push_str(&format!("  n{} [label={label}{style}];\n", n.index()));
        }
        let mut edges: Vec<(usize, usize)> = self
            .dag
            .edge_indices()
            .filter_map(|e| self.dag.edge_endpoints(e))
            .map(|(a, b)| (a.index(), b.index()))
            .collect();
        edges.sort_unstable();
        edges.dedup();
        for (a, b) in edges {
            out.push_str(&format!("  n{a} -> n{b};\n"));
        }
        out.push_str("}\n");
        out
    }
}

fn ser_node<S: serde::Serializer>(n: &NodeIndex, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(n.index() as u64)
}

fn ser_opt_node<S: serde::Serializer>(
    n: &Option<NodeIndex>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match n {
        Some(n) => s.serialize_some(&(n.index() as u64)),
        None => s.serialize_none(),
    }
}
