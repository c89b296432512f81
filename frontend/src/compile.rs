//! Dockerfile -> build graph, after BuildKit's `dockerfile2llb`.
//!
//! Stages are compiled on demand, starting from the target: a stage that the target
//! does not reach (through `FROM stage`, `COPY --from=stage` or `RUN --mount=from=stage`)
//! is never compiled, so its base image is never resolved and its steps never run.
//! The image configuration and history strings follow what BuildKit writes, so an
//! image built here inspects like one built by `docker buildx build`.

pub(crate) mod gofmt;
mod mounts;

pub mod merge;
pub use mounts::{MountKind, MountSpec, Network, Security, Sharing};

use crate::image::{Healthcheck, History, ImageConfig, Platform};
use crate::lexer::{self, Lex, Vars};
use crate::parser::{self, Args, Instruction, Kind};
use crate::{Error, Result};
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};

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
}

/// One COPY/ADD source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Source {
    /// A path or wildcard pattern, relative to the source root.
    Path(String),
    /// A here-document written as a file named `name`.
    Inline(InlineFile),
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

const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// The state a stage hands on to stages built `FROM` it.
#[derive(Clone)]
struct StageResult {
    node: NodeIndex,
    /// The platform the stage's RUN steps execute as.
    platform: Platform,
    config: ImageConfig,
    history: Vec<HistoryItem>,
    /// The environment RUN sees and words expand in: the image's Env with ARG values
    /// set in place (BuildKit's state env).
    env: Vec<(String, String)>,
    /// ARGs declared so far, for RUN's history string.
    args: Vec<(String, Option<String>)>,
}

struct StageSrc {
    from: Instruction,
    instructions: Vec<Instruction>,
    name: Option<String>,
}

struct Compiler<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    escape: char,
    opts: &'a BuildOptions,
    resolver: &'a dyn ImageResolver,
    stages: Vec<StageSrc>,
    global_args: Vec<(String, String)>,
    results: Vec<Option<StageResult>>,
    in_progress: Vec<bool>,
    /// Each stage's platform, once its FROM is compiled.
    platforms: Vec<Option<Platform>>,
    dag: DiGraph<Step, ()>,
    images: HashMap<String, NodeIndex>,
    scratch: Option<NodeIndex>,
    used_args: BTreeSet<String>,
    warnings: Vec<String>,
}

/// Args every build has without declaring them (BuildKit's automatic platform args).
fn automatic_args(p: &Platform, target_stage: &str) -> Vec<(String, String)> {
    let host = Platform::host();
    let mut v = Vec::new();
    for (prefix, pl) in [("BUILD", &host), ("TARGET", p)] {
        v.push((format!("{prefix}PLATFORM"), pl.to_string()));
        v.push((format!("{prefix}OS"), pl.os.clone()));
        v.push((format!("{prefix}ARCH"), pl.architecture.clone()));
        v.push((
            format!("{prefix}VARIANT"),
            pl.variant.clone().unwrap_or_default(),
        ));
    }
    v.push(("TARGETSTAGE".into(), target_stage.to_string()));
    v
}

const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Linux signal names `STOPSIGNAL` accepts (moby's `signal.SignalMap`).
const SIGNALS: [&str; 31] = [
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM",
];

fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return n > 0 && n < 65;
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if SIGNALS.contains(&name) || matches!(name, "WINCH" | "XCPU" | "XFSZ" | "RTMIN" | "RTMAX") {
        return true;
    }
    let rt = |p: &str, max: u32| {
        name.strip_prefix(p)
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| (1..=max).contains(&n))
    };
    rt("RTMIN+", 15) || rt("RTMAX-", 14)
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

fn is_git(s: &str) -> bool {
    s.starts_with("git@")
        || s.starts_with("git://")
        || s.starts_with("ssh://")
        || ((s.starts_with("http://") || s.starts_with("https://"))
            && (s.contains(".git#") || s.ends_with(".git")))
}

/// Compiles `text` (the Dockerfile's contents) for `opts`, resolving base images
/// through `resolver`.
pub fn compile(
    text: &str,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Result<BuildGraph> {
    let parsed = parser::parse(text, &opts.file_name)?;
    compile_parsed(text, &parsed, opts, resolver)
}

/// [`compile`] for an already parsed Dockerfile (`text` is what it was parsed from).
pub fn compile_parsed(
    text: &str,
    parsed: &parser::Dockerfile,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Result<BuildGraph> {
    let line_starts = crate::line_starts(text);
    let err_at = |at: usize, m: String| crate::error_at(&opts.file_name, text, &line_starts, at, m);
    if let Some(s) = &parsed.directives.syntax {
        check_syntax(&s.value).map_err(|m| {
            let at = line_starts.get(s.line - 1).copied().unwrap_or(0);
            err_at(at, m)
        })?;
    }
    let mut globals = Vec::new();
    let mut stages: Vec<StageSrc> = Vec::new();
    let mut duplicates = Vec::new();
    for ins in &parsed.instructions {
        match ins.kind {
            Kind::From => {
                let words = ins.words();
                let name = (words.len() == 3).then(|| words[2].0.to_lowercase());
                if let Some(n) = &name {
                    if !valid_stage_name(n) {
                        return Err(err_at(
                            words[2].1,
                            format!("invalid stage name {n:?}: expected a letter followed by letters, digits, '-', '_' or '.'"),
                        ));
                    }
                    if stages.iter().any(|s| s.name.as_deref() == Some(n)) {
                        // BuildKit's DuplicateStageName check: a warning, and a name
                        // refers to the last stage of that name before the reference.
                        duplicates.push(format!(
                            "WARN: DuplicateStageName: Duplicate stage name {n:?}, stage names should be unique (line {})",
                            ins.line
                        ));
                    }
                }
                stages.push(StageSrc {
                    from: ins.clone(),
                    instructions: Vec::new(),
                    name,
                });
            }
            _ => match stages.last_mut() {
                Some(s) => s.instructions.push(ins.clone()),
                None if ins.kind == Kind::Arg => globals.push(ins.clone()),
                None => {
                    return Err(err_at(
                        ins.at,
                        format!(
                            "{} before the first FROM: only ARG may come before FROM",
                            ins.kind
                        ),
                    ))
                }
            },
        }
    }
    if stages.is_empty() {
        return Err(Error::NoStages(opts.file_name.clone()));
    }
    let n = stages.len();
    let target = match &opts.target {
        Some(t) => {
            let t = t.to_lowercase();
            stages
                .iter()
                .rposition(|s| s.name.as_deref() == Some(t.as_str()))
                .ok_or(Error::UnknownTarget(t))?
        }
        None => n - 1,
    };
    let target_name = stages[target]
        .name
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut c = Compiler {
        text,
        line_starts: line_starts.clone(),
        escape: parsed.escape,
        opts,
        resolver,
        stages,
        global_args: Vec::new(),
        results: vec![None; n],
        in_progress: vec![false; n],
        platforms: vec![None; n],
        dag: DiGraph::new(),
        images: HashMap::new(),
        scratch: None,
        used_args: BTreeSet::new(),
        warnings: parsed.warnings.iter().cloned().chain(duplicates).collect(),
    };
    c.global_args = automatic_args(&opts.platform, &target_name);
    for arg in &globals {
        for (w, at) in arg_words(arg, c.escape) {
            let vars = c.global_args.clone();
            let (name, value) = c.arg_decl(&w, &vars, at)?;
            if let Some(v) = value {
                c.global_args.push((name, v));
            }
        }
    }
    let result = c.stage(target, None)?;
    let unused: Vec<&str> = opts
        .build_args
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !c.used_args.contains(*k) && !PROXY_ARGS.contains(k))
        .collect();
    if !unused.is_empty() {
        c.warnings.push(format!(
            "[Warning] One or more build-args [{}] were not consumed",
            unused.join(" ")
        ));
    }
    let mut config = result.config;
    config.history.clear();
    Ok(BuildGraph {
        dag: c.dag,
        target: result.node,
        config,
        history: result.history,
        warnings: c.warnings,
    })
}

/// `# syntax=`: only the dockerfile:1 frontend (any 1.x, labs included) is built in.
fn check_syntax(v: &str) -> std::result::Result<(), String> {
    let name = v.split('@').next().unwrap_or(v);
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    let ok = match name.strip_prefix("docker/dockerfile") {
        Some("") => true,
        Some(tag) => tag
            .strip_prefix(':')
            .is_some_and(|t| t == "1" || t.starts_with("1.") || t.starts_with("1-") || t == "labs"),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "unsupported syntax {v:?}: kiln builds with its own dockerfile:1 frontend and cannot run other frontends; use \"# syntax=docker/dockerfile:1\" or remove the line"
        ))
    }
}

fn valid_stage_name(n: &str) -> bool {
    let mut it = n.chars();
    it.next().is_some_and(|c| c.is_ascii_alphabetic())
        && it.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An ARG instruction's `name[=default]` words with their offsets.
fn arg_words(ins: &Instruction, escape: char) -> Vec<(String, usize)> {
    let Args::Text(t) = &ins.args else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut search = 0;
    for w in lexer::split_words(t, escape) {
        let idx = t[search..].find(&w).map_or(search, |i| search + i);
        search = idx + w.len();
        out.push((w, ins.offset(idx)));
    }
    out
}

/// Summarizes a here-document for a step's name, as BuildKit does.
fn summarize_heredoc(doc: &str) -> String {
    let doc = doc.trim_start();
    let mut lines = doc.lines();
    let first = lines.next().unwrap_or("").trim_end();
    if lines.any(|l| !l.trim().is_empty()) {
        format!("{first}...")
    } else {
        first.to_string()
    }
}

impl Compiler<'_> {
    fn line_of(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    fn err(&self, offset: usize, message: impl Into<String>) -> Error {
        crate::error_at(
            &self.opts.file_name,
            self.text,
            &self.line_starts,
            offset,
            message,
        )
    }

    fn build_arg(&mut self, name: &str) -> Option<String> {
        let v = self
            .opts
            .build_args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone());
        self.used_args.insert(name.to_string());
        v
    }

    /// Parses one `NAME[=default]` of an ARG; returns the name and its value: the
    /// `--build-arg`, else the default expanded with `vars`.
    fn arg_decl(
        &mut self,
        word: &str,
        vars: &[(String, String)],
        at: usize,
    ) -> Result<(String, Option<String>)> {
        let (name, default) = match word.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v)),
            None => (word.to_string(), None),
        };
        if name.is_empty() {
            return Err(self.err(at, "ARG requires a name: ARG NAME[=DEFAULT]"));
        }
        if let Some(v) = self.build_arg(&name) {
            return Ok((name, Some(v)));
        }
        let default = match default {
            Some(d) => Some(self.word(d, vars, at)?),
            None => None,
        };
        Ok((name, default))
    }

    /// Expands one word.
    fn word(&self, w: &str, vars: &[(String, String)], at: usize) -> Result<String> {
        lexer::expand_word(w, vars, self.escape).map_err(|e| self.err(at, e))
    }

    fn add(&mut self, step: Step, inputs: &[NodeIndex]) -> NodeIndex {
        let n = self.dag.add_node(step);
        for &i in inputs {
            self.dag.add_edge(i, n, ());
        }
        n
    }

    fn image_node(
        &mut self,
        name: &str,
        platform: &Platform,
        line_at: usize,
        display: String,
    ) -> Result<(NodeIndex, ImageConfig)> {
        if name == "scratch" {
            let node = match self.scratch {
                Some(n) => n,
                None => {
                    let n = self.add(
                        Step {
                            name: display,
                            line: self.line_of(line_at),
                            op: Op::Scratch,
                            parent: None,
                        },
                        &[],
                    );
                    self.scratch = Some(n);
                    n
                }
            };
            let p = platform;
            let config = ImageConfig {
                architecture: p.architecture.clone(),
                os: p.os.clone(),
                variant: p.variant.clone(),
                config: crate::ContainerConfig {
                    env: vec![
                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                    ],
                    // BuildKit gives a scratch stage the root as its working directory.
                    working_dir: "/".into(),
                    ..Default::default()
                },
                ..Default::default()
            };
            return Ok((node, config));
        }
        let resolved = self
            .resolver
            .resolve(name, platform)
            .map_err(|message| Error::Resolve {
                file: self.opts.file_name.clone(),
                line: self.line_of(line_at),
                image: name.to_string(),
                message,
            })?;
        let node = match self.images.get(&resolved.pinned) {
            Some(&n) => n,
            None => {
                let op = Op::Image {
                    name: name.to_string(),
                    pinned: resolved.pinned.clone(),
                    platform: platform.clone(),
                };
                let n = self.add(
                    Step {
                        name: display,
                        line: self.line_of(line_at),
                        op,
                        parent: None,
                    },
                    &[],
                );
                self.images.insert(resolved.pinned.clone(), n);
                n
            }
        };
        let mut config = resolved.config;
        // A base that is one manifest of another platform: BuildKit builds on it,
        // warns, and labels the image with the platform asked for.
        if (config.os.as_str(), config.architecture.as_str())
            != (platform.os.as_str(), platform.architecture.as_str())
        {
            self.warnings.push(format!(
                "WARN: InvalidBaseImagePlatform: Base image {name} was pulled with platform \"{}\", expected \"{}\" for current build (line {})",
                config.platform(),
                platform,
                self.line_of(line_at)
            ));
            config.os = platform.os.clone();
            config.architecture = platform.architecture.clone();
            config.variant = platform.variant.clone();
        }
        Ok((node, config))
    }

    /// Finds a stage by name (or, with `allow_index`, by index) defined before `before`.
    fn stage_ref(&self, s: &str, before: usize, allow_index: bool) -> Option<usize> {
        let lower = s.to_lowercase();
        if let Some(i) = self.stages[..before]
            .iter()
            .rposition(|st| st.name.as_deref() == Some(lower.as_str()))
        {
            return Some(i);
        }
        if allow_index {
            if let Ok(i) = s.parse::<usize>() {
                if i < before {
                    return Some(i);
                }
            }
        }
        None
    }

    /// `--from=` of COPY or a mount: a stage before `idx` (name or index) or an image.
    fn stage_or_image(
        &mut self,
        val: &str,
        idx: usize,
        at: usize,
        label: &str,
    ) -> Result<NodeIndex> {
        if let Some(i) = self.stage_ref(val, self.stages.len(), true) {
            if i == idx {
                return Err(self.err(at, format!("--from={val} refers to its own stage")));
            }
            if i > idx {
                return Err(self.err(
                    at,
                    format!(
                        "--from={val}: stage {val:?} must be defined before the stage that uses it"
                    ),
                ));
            }
            return Ok(self.stage(i, Some(at))?.node);
        }
        let platform = self.platforms[idx]
            .clone()
            .unwrap_or_else(|| self.opts.platform.clone());
        Ok(self
            .image_node(val, &platform, at, format!("[{label}internal] FROM {val}"))?
            .0)
    }

    /// Compiles stage `idx` (memoized). `from_at` is where it was referenced, for cycles.
    fn stage(&mut self, idx: usize, from_at: Option<usize>) -> Result<StageResult> {
        if let Some(r) = &self.results[idx] {
            return Ok(r.clone());
        }
        if self.in_progress[idx] {
            let at = from_at.unwrap_or(self.stages[idx].from.at);
            return Err(self.err(
                at,
                format!(
                    "circular dependency detected on stage {}",
                    self.stage_label(idx)
                ),
            ));
        }
        self.in_progress[idx] = true;
        let r = self.compile_stage(idx)?;
        self.in_progress[idx] = false;
        self.results[idx] = Some(r.clone());
        Ok(r)
    }

    /// `"name "` before a step's counter in progress (nothing in a one-stage file).
    fn progress_prefix(&self, idx: usize, platform: &Platform) -> String {
        let stage = if self.stages.len() == 1 {
            String::new()
        } else {
            format!("{} ", self.stage_label(idx))
        };
        if self.opts.show_platform {
            format!("{platform} {stage}")
        } else {
            stage
        }
    }

    fn stage_label(&self, idx: usize) -> String {
        match &self.stages[idx].name {
            Some(n) => n.clone(),
            None => format!("stage-{idx}"),
        }
    }

    fn compile_stage(&mut self, idx: usize) -> Result<StageResult> {
        let from = self.stages[idx].from.clone();
        let own = self.stages[idx].instructions.clone();
        let mut platform = self.opts.platform.clone();
        for f in &from.flags {
            // The parser admits only --platform on FROM.
            let v = f.value.clone().unwrap_or_default();
            let v = self.word(&v, &self.global_args.clone(), f.at)?;
            platform = Platform::parse(&v).ok_or_else(|| {
                self.err(
                    f.at,
                    format!("FROM --platform={v:?}: expected a platform such as linux/arm64 or linux/arm/v7"),
                )
            })?;
        }
        let words = from.words();
        let (raw_image, image_at) = words[0].clone();
        let image = self.word(&raw_image, &self.global_args.clone(), image_at)?;
        if image.is_empty() {
            return Err(self.err(
                image_at,
                "FROM requires an image name; it expanded to nothing",
            ));
        }
        let parent_stage = self.stage_ref(&image, idx, false);
        let mut st = match parent_stage {
            // This stage continues from the parent's last vertex, config, env and args
            // (and platform).
            Some(parent) => self.stage(parent, Some(image_at))?,
            None => {
                let (node, config) = self.image_node(&image, &platform, from.at, String::new())?;
                let history = config
                    .history
                    .iter()
                    .map(|h| HistoryItem {
                        entry: h.clone(),
                        layer: None,
                        own: false,
                    })
                    .collect();
                StageResult {
                    node,
                    platform: platform.clone(),
                    env: config.config.env_pairs(),
                    config,
                    history,
                    args: Vec::new(),
                }
            }
        };
        st.config.history.clear();
        st.config.rootfs = Default::default();
        self.platforms[idx] = Some(st.platform.clone());
        let label = self.progress_prefix(idx, &st.platform);
        // ONBUILD triggers of the base run first, as if written right after FROM.
        let mut instructions = Vec::new();
        for trigger in st.config.config.on_build.take().unwrap_or_default() {
            let parsed = parser::parse(&trigger, &self.opts.file_name).map_err(|e| {
                self.err(
                    from.at,
                    format!("ONBUILD trigger {trigger:?} of {image}: {e}"),
                )
            })?;
            for mut ins in parsed.instructions {
                ins.relocate(from.at, from.line);
                instructions.push((ins, Some(trigger.clone())));
            }
        }
        instructions.extend(own.into_iter().map(|i| (i, None)));
        let total = 1 + instructions
            .iter()
            .filter(|(i, _)| matches!(i.kind, Kind::Run | Kind::Copy | Kind::Add | Kind::Workdir))
            .count();
        // The FROM vertex's display name is known only now.
        if parent_stage.is_none() {
            let w = &mut self.dag[st.node];
            if w.name.is_empty() {
                w.name = format!("[{label}1/{total}] FROM {image}");
            }
        }
        let mut counter = 1;
        let mut cmd_set = false;
        for (ins, trigger) in &instructions {
            if let Some(t) = trigger {
                if matches!(ins.kind, Kind::Onbuild | Kind::From | Kind::Maintainer) {
                    return Err(self.err(
                        from.at,
                        format!("ONBUILD trigger {t:?} of {image}: {} isn't allowed as an ONBUILD trigger", ins.kind),
                    ));
                }
            }
            let step_label = |counter: usize| format!("[{label}{counter}/{total}]");
            self.instruction(idx, ins, &mut st, &mut counter, &mut cmd_set, &step_label)?;
        }
        Ok(st)
    }

    /// Applies one instruction to the stage state `st`.
    fn instruction(
        &mut self,
        idx: usize,
        ins: &Instruction,
        st: &mut StageResult,
        counter: &mut usize,
        cmd_set: &mut bool,
        step_label: &dyn Fn(usize) -> String,
    ) -> Result<()> {
        let vars = st.env.clone();
        let text = match &ins.args {
            Args::Text(t) => t.clone(),
            Args::Exec(_) => String::new(),
        };
        match ins.kind {
            Kind::From => return Err(self.err(ins.at, "unexpected FROM")),
            Kind::Arg => {
                let mut shown = Vec::new();
                for (w, at) in arg_words(ins, self.escape) {
                    let env = st.env.clone();
                    let (name, mut value) = self.arg_decl(&w, &env, at)?;
                    if value.is_none() {
                        value = self.global_args.get(&name);
                    }
                    if let Some(v) = &value {
                        set_pair(&mut st.env, &name, v);
                    }
                    shown.push(match &value {
                        Some(v) => format!("{name}={v}"),
                        None => name.clone(),
                    });
                    st.args.push((name, value));
                }
                self.meta(st, format!("ARG {}", shown.join(" ")));
            }
            Kind::Env => {
                let pairs = self.name_vals(ins, &text, &vars, "ENV")?;
                let mut shown = Vec::new();
                for (k, v) in pairs {
                    st.config.config.set_env(&k, &v);
                    set_pair(&mut st.env, &k, &v);
                    shown.push(format!("{k}={v}"));
                }
                self.meta(st, format!("ENV {}", shown.join(" ")));
            }
            Kind::Label => {
                let pairs = self.name_vals(ins, &text, &vars, "LABEL")?;
                let mut shown = Vec::new();
                for (k, v) in pairs {
                    shown.push(format!("{k}={v}"));
                    st.config.config.labels.insert(k, v);
                }
                self.meta(st, format!("LABEL {}", shown.join(" ")));
            }
            Kind::Maintainer => {
                st.config.author = Some(text.clone());
                self.meta(st, format!("MAINTAINER {text}"));
            }
            Kind::User => {
                let user = self.word(&text, &vars, ins.args_at())?;
                st.config.config.user = user.clone();
                self.meta(st, format!("USER {user}"));
            }
            Kind::Stopsignal => {
                let sig = self.word(&text, &vars, ins.args_at())?;
                if !valid_signal(&sig) {
                    return Err(self.err(
                        ins.args_at(),
                        format!("invalid signal {sig:?}: expected a signal name like SIGTERM or a number"),
                    ));
                }
                st.config.config.stop_signal = sig.clone();
                self.meta(st, format!("STOPSIGNAL {sig}"));
            }
            Kind::Expose => {
                let mut ports = Vec::new();
                for (w, at) in ins.words() {
                    for p in
                        lexer::expand_words(&w, &vars, self.escape).map_err(|e| self.err(at, e))?
                    {
                        ports.extend(self.expand_ports(&p, at)?);
                    }
                }
                // BuildKit's history shows the ports sorted as strings, repeats kept.
                ports.sort();
                for p in &ports {
                    st.config
                        .config
                        .exposed_ports
                        .insert(p.clone(), serde_json::json!({}));
                }
                self.meta(st, format!("EXPOSE [{}]", ports.join(" ")));
            }
            Kind::Volume => {
                let mut vols = Vec::new();
                for (w, at) in ins.words() {
                    let p = self.word(&w, &vars, at)?;
                    if p.is_empty() {
                        return Err(self.err(at, "VOLUME specified can not be an empty string"));
                    }
                    st.config
                        .config
                        .volumes
                        .insert(p.clone(), serde_json::json!({}));
                    vols.push(p);
                }
                self.meta(st, format!("VOLUME [{}]", vols.join(" ")));
            }
            Kind::Shell => {
                let Args::Exec(shell) = &ins.args else {
                    return Err(self.err(ins.args_at(), "SHELL requires JSON form"));
                };
                st.config.config.shell = Some(shell.clone());
                self.meta(st, format!("SHELL [{}]", shell.join(" ")));
            }
            Kind::Cmd => {
                let argv = self.command(ins, &st.config);
                self.meta(st, format!("CMD {}", gofmt::quote_list(&argv)));
                st.config.config.cmd = Some(argv);
                st.config.config.args_escaped = Some(true);
                *cmd_set = true;
            }
            Kind::Entrypoint => {
                let argv = self.command(ins, &st.config);
                self.meta(st, format!("ENTRYPOINT {}", gofmt::quote_list(&argv)));
                st.config.config.entrypoint = Some(argv);
                if !*cmd_set {
                    st.config.config.cmd = None;
                }
            }
            Kind::Healthcheck => {
                let hc = self.healthcheck(ins, &text)?;
                // Go's `%+v` of the HealthConfig value, as BuildKit writes it.
                let shown = format!(
                    "HEALTHCHECK {{Test:[{}] Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
                    hc.test.join(" "),
                    gofmt::format_duration(hc.interval),
                    gofmt::format_duration(hc.timeout),
                    gofmt::format_duration(hc.start_period),
                    gofmt::format_duration(hc.start_interval),
                    hc.retries,
                );
                st.config.config.healthcheck = Some(hc);
                self.meta(st, shown);
            }
            Kind::Onbuild => {
                let Some(t) = &ins.trigger else {
                    return Err(self.err(ins.at, "ONBUILD requires an instruction"));
                };
                // The trigger as written, as BuildKit stores it.
                let verbatim = t.original.trim();
                st.config.config.on_build.get_or_insert_with(Vec::new).push(
                    if verbatim.is_empty() {
                        t.to_string()
                    } else {
                        verbatim.to_string()
                    },
                );
            }
            Kind::Workdir => {
                let dir = self.word(&text, &vars, ins.args_at())?;
                let base = if st.config.config.working_dir.is_empty() {
                    "/"
                } else {
                    &st.config.config.working_dir
                };
                // As BuildKit's NormalizeWorkdir: an absolute path is kept as written
                // (a trailing slash too), a relative one is joined and cleaned.
                let dir = if dir.starts_with('/') {
                    dir
                } else {
                    crate::path::clean(&format!("{base}/{dir}"))
                };
                st.config.config.working_dir = dir.clone();
                *counter += 1;
                if dir == "/" {
                    self.meta(st, format!("WORKDIR {dir}"));
                } else {
                    let step = Step {
                        name: format!("{} WORKDIR {dir}", step_label(*counter)),
                        line: ins.line,
                        op: Op::Mkdir {
                            path: dir.clone(),
                            user: st.config.config.user.clone(),
                        },
                        parent: Some(st.node),
                    };
                    st.node = self.add(step, &[st.node]);
                    self.layer(st, format!("WORKDIR {dir}"));
                }
            }
            Kind::Run => {
                *counter += 1;
                self.run(idx, ins, &text, st, step_label(*counter))?;
            }
            Kind::Copy | Kind::Add => {
                *counter += 1;
                self.copy(idx, ins, st, step_label(*counter))?;
            }
        }
        Ok(())
    }

    fn run(
        &mut self,
        idx: usize,
        ins: &Instruction,
        text: &str,
        st: &mut StageResult,
        label: String,
    ) -> Result<()> {
        let vars = st.env.clone();
        let cwd = if st.config.config.working_dir.is_empty() {
            "/".to_string()
        } else {
            st.config.config.working_dir.clone()
        };
        let mut mounts = Vec::new();
        let mut network = Network::Default;
        let mut security = Security::Sandbox;
        let stage_label = self.progress_prefix(idx, &st.platform.clone());
        let mut inputs = vec![st.node];
        for f in &ins.flags {
            let raw = f.value.clone().unwrap_or_default();
            match f.name.as_str() {
                "mount" => {
                    let expand = |v: &str| lexer::expand_word(v, &vars, self.escape);
                    let mut spec = mounts::parse_mount(&raw, &expand)
                        .map_err(|e| self.err(f.at, format!("--mount={raw}: {e}")))?;
                    if !spec.target.is_empty() && !spec.target.starts_with('/') {
                        spec.target = crate::path::clean(&format!("{cwd}/{}", spec.target));
                    }
                    let from = match (spec.kind, spec.from.clone()) {
                        (MountKind::Bind, None) => Some(CopyFrom::Context),
                        (MountKind::Bind | MountKind::Cache, Some(v)) => {
                            let node = self.stage_or_image(&v, idx, f.at, &stage_label)?;
                            inputs.push(node);
                            Some(CopyFrom::Step(node))
                        }
                        _ => None,
                    };
                    mounts.push(RunMount { spec, from });
                }
                "network" => {
                    network = mounts::parse_network(&raw).map_err(|e| self.err(f.at, e))?
                }
                "security" => {
                    security = mounts::parse_security(&raw).map_err(|e| self.err(f.at, e))?
                }
                other => return Err(self.err(f.at, format!("RUN --{other} is not supported yet"))),
            }
        }
        let mut files = Vec::new();
        let mut display = self.display(ins, &vars);
        let shell = shell_of(&st.config);
        let argv = match (&ins.args, ins.heredocs.as_slice()) {
            (Args::Exec(v), _) => v.clone(),
            (Args::Text(_), []) => with_shell(&shell, text),
            (Args::Text(_), docs) => {
                let first = &docs[0];
                match parser::heredoc_opener(text) {
                    Some(_) if docs.len() == 1 => {
                        display.push_str(&format!(" ({})", summarize_heredoc(&first.content)));
                        let data = first.text();
                        if data.starts_with("#!") {
                            files.push(InlineFile {
                                name: first.name.clone(),
                                data,
                                mode: 0o755,
                            });
                            with_shell(&shell, &format!("/dev/pipes/{}", first.name))
                        } else {
                            with_shell(&shell, &data)
                        }
                    }
                    _ => {
                        let mut full = text.to_string();
                        for d in docs {
                            full.push('\n');
                            full.push_str(&d.content);
                            full.push_str(&d.name);
                        }
                        with_shell(&shell, &full)
                    }
                }
            }
        };
        // RUN sees the state env (image Env with ARG values) and proxy build args.
        let mut env_pairs = st.env.clone();
        for k in PROXY_ARGS {
            if env_pairs.iter().any(|(n, _)| n == k) {
                continue;
            }
            if let Some((_, v)) = self.opts.build_args.iter().rev().find(|(n, _)| n == k) {
                env_pairs.push((k.to_string(), v.clone()));
            }
        }
        let env: Vec<String> = env_pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // History: `RUN |N K=V ... argv # buildkit`, each declared ARG with its current
        // value (an ENV of the same name wins), as BuildKit's runCommandString.
        let mut hist_args: Vec<(String, String)> = Vec::new();
        for (k, v) in &st.args {
            let val = st
                .env
                .get(k)
                .unwrap_or_else(|| v.clone().unwrap_or_default());
            match hist_args.iter_mut().find(|(n, _)| n == k) {
                Some(slot) => slot.1 = val,
                None => hist_args.push((k.clone(), val)),
            }
        }
        let mut parts: Vec<String> = Vec::new();
        if !hist_args.is_empty() {
            parts.push(format!("|{}", hist_args.len()));
            parts.extend(hist_args.iter().map(|(k, v)| format!("{k}={v}")));
        }
        parts.extend(argv.iter().cloned());
        let step = Step {
            name: format!("{label} {display}"),
            line: ins.line,
            op: Op::Run(RunSpec {
                platform: st.platform.clone(),
                argv,
                env,
                cwd,
                user: st.config.config.user.clone(),
                mounts,
                network,
                security,
                files,
            }),
            parent: Some(st.node),
        };
        st.node = self.add(step, &inputs);
        self.layer(st, format!("RUN {} # buildkit", parts.join(" ")));
        Ok(())
    }

    /// The instruction as progress shows it: the original text, variables expanded.
    fn display(&self, ins: &Instruction, vars: &[(String, String)]) -> String {
        let lex = Lex {
            escape: self.escape,
            raw_quotes: true,
            raw_escapes: true,
            skip_unset: true,
            skip_quotes: false,
        };
        let shown = lex
            .process(&ins.original, vars)
            .map(|r| r.0)
            .unwrap_or_else(|_| ins.original.clone());
        match shown.split_once(char::is_whitespace) {
            Some((kw, rest)) => format!("{} {rest}", kw.to_ascii_uppercase()),
            None => shown.to_ascii_uppercase(),
        }
    }

    fn copy(
        &mut self,
        idx: usize,
        ins: &Instruction,
        st: &mut StageResult,
        label: String,
    ) -> Result<()> {
        let vars = st.env.clone();
        let is_add = ins.kind == Kind::Add;
        let stage_label = self.progress_prefix(idx, &st.platform.clone());
        let mut from = CopyFrom::Context;
        let mut chown = None;
        let mut chmod_raw = None;
        let mut chmod = None;
        let mut parents = false;
        let mut link = false;
        let mut excludes = Vec::new();
        let mut checksum = None;
        let mut unpack = true;
        let mut inputs = vec![st.node];
        for f in &ins.flags {
            let raw = f.value.clone().unwrap_or_default();
            let val = self.word(&raw, &vars, f.at)?;
            let flag_bool = |v: &Option<String>| -> Result<bool> {
                match v.as_deref() {
                    None | Some("") | Some("true") => Ok(true),
                    Some("false") => Ok(false),
                    Some(o) => {
                        Err(self.err(f.at, format!("--{}={o}: expected true or false", f.name)))
                    }
                }
            };
            match f.name.as_str() {
                "from" => {
                    let node = self.stage_or_image(&val, idx, f.at, &stage_label)?;
                    from = CopyFrom::Step(node);
                    inputs.push(node);
                }
                "chown" => chown = Some(val),
                "chmod" => {
                    let m = u32::from_str_radix(&val, 8).ok().filter(|m| *m <= 0o7777);
                    chmod = Some(m.ok_or_else(|| {
                        self.err(
                            f.at,
                            format!("invalid chmod parameter: '{val}'. it should be octal string and between 0 and 07777"),
                        )
                    })?);
                    chmod_raw = Some(val);
                }
                "link" => link = flag_bool(&f.value)?,
                "parents" => parents = flag_bool(&f.value)?,
                "exclude" => excludes.push(val),
                "checksum" => checksum = Some(val),
                "keep-git-dir" => {
                    flag_bool(&f.value)?;
                }
                "unpack" => unpack = flag_bool(&f.value)?,
                other => {
                    return Err(self.err(f.at, format!("{} --{other} is not supported", ins.kind)))
                }
            }
        }
        let words = ins.words();
        let Some(((raw_dest, dest_at), src_words)) = words.split_last() else {
            return Err(self.err(
                ins.args_at(),
                format!("{} requires sources and a destination", ins.kind),
            ));
        };
        let mut docs = ins.heredocs.iter();
        let mut srcs = Vec::new();
        let mut shown_paths = Vec::new();
        let mut shown_docs = Vec::new();
        for (w, at) in src_words {
            let is_doc = matches!(ins.args, Args::Text(_)) && parser::heredoc_opener(w).is_some();
            if is_doc {
                let Some(d) = docs.next() else {
                    return Err(self.err(*at, "here-document without content"));
                };
                let mut data = d.text();
                if d.expand {
                    let lex = Lex {
                        skip_quotes: true,
                        ..Lex::new(self.escape)
                    };
                    data = lex.process(&data, &vars).map_err(|e| self.err(*at, e))?.0;
                }
                shown_docs.push(format!("<<{}", d.name));
                srcs.push(Source::Inline(InlineFile {
                    name: d.name.clone(),
                    data,
                    mode: 0o644,
                }));
                continue;
            }
            let p = self.word(w, &vars, *at)?;
            shown_paths.push(p.clone());
            if is_url(&p) || is_git(&p) {
                if !is_add {
                    return Err(self.err(
                        *at,
                        format!("source can't be a URL for COPY: {p} (use ADD)"),
                    ));
                }
                if is_git(&p) {
                    return Err(self.err(
                        *at,
                        format!("ADD from a git repository ({p}) is not supported yet"),
                    ));
                }
                let name = p
                    .split(['?', '#'])
                    .next()
                    .and_then(|u| u.splitn(4, '/').nth(3))
                    .and_then(|path| path.rsplit('/').next())
                    .filter(|b| !b.is_empty() && *b != ".")
                    .unwrap_or("__unnamed__")
                    .to_string();
                srcs.push(Source::Url {
                    url: p,
                    checksum: None,
                    name,
                });
            } else {
                srcs.push(Source::Path(p));
            }
        }
        if let Some(sum) = checksum {
            let at = ins.flag("checksum").map_or(ins.at, |f| f.at);
            let urls = srcs
                .iter()
                .filter(|s| matches!(s, Source::Url { .. }))
                .count();
            if srcs.len() != 1 {
                return Err(self.err(at, "checksum can't be specified for multiple sources"));
            }
            if urls != 1 {
                return Err(self.err(at, "checksum can't be specified for non-HTTP(S) sources"));
            }
            let Some(hex) = sum
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            else {
                return Err(self.err(
                    at,
                    format!("invalid checksum {sum:?}: expected sha256:<64 hex digits>"),
                ));
            };
            if let Some(Source::Url { checksum, .. }) = srcs.first_mut() {
                *checksum = Some(format!("sha256:{}", hex.to_ascii_lowercase()));
            }
        }
        let raw_dest = self.word(raw_dest, &vars, *dest_at)?;
        let cwd = if st.config.config.working_dir.is_empty() {
            "/"
        } else {
            &st.config.config.working_dir
        };
        let mut dest = if raw_dest.starts_with('/') {
            crate::path::clean(&raw_dest)
        } else {
            crate::path::clean(&format!("{cwd}/{raw_dest}"))
        };
        if (raw_dest.ends_with('/')
            || raw_dest == "."
            || raw_dest.ends_with("/.")
            || raw_dest.is_empty())
            && dest != "/"
        {
            dest.push('/');
        }
        let mut hist = String::from(if is_add { "ADD" } else { "COPY" });
        if parents {
            hist.push_str(" --parents");
        }
        if let Some(c) = &chown {
            hist.push_str(&format!(" --chown={c}"));
        }
        if let Some(c) = &chmod_raw {
            hist.push_str(&format!(" --chmod={c}"));
        }
        for s in shown_paths.iter().chain(&shown_docs) {
            hist.push(' ');
            hist.push_str(s);
        }
        hist.push_str(&format!(" {raw_dest}"));
        let step = Step {
            name: format!("{label} {}", self.display(ins, &vars)),
            line: ins.line,
            op: Op::Copy(CopySpec {
                from,
                srcs,
                dest,
                chown,
                chmod,
                parents,
                excludes,
                link,
                unpack: is_add && unpack,
            }),
            parent: Some(st.node),
        };
        st.node = self.add(step, &inputs);
        self.layer(st, format!("{hist} # buildkit"));
        Ok(())
    }

    fn healthcheck(&self, ins: &Instruction, text: &str) -> Result<Healthcheck> {
        let mut hc = Healthcheck::default();
        let trimmed = text.trim_start();
        let kw_len = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
        let kw = trimmed[..kw_len].to_ascii_uppercase();
        if kw == "NONE" {
            hc.test = vec!["NONE".into()];
            return Ok(hc);
        }
        let rest = trimmed[kw_len..].trim();
        hc.test = match parser::maybe_json(rest) {
            Some(v) if v.is_empty() => {
                return Err(self.err(ins.args_at(), "missing command after HEALTHCHECK CMD"))
            }
            Some(v) => std::iter::once("CMD".to_string()).chain(v).collect(),
            None => vec!["CMD-SHELL".into(), rest.to_string()],
        };
        for f in &ins.flags {
            let v = f.value.clone().unwrap_or_default();
            if f.name == "retries" {
                let n: i64 = v.parse().map_err(|_| {
                    self.err(f.at, format!("--retries={v}: expected a whole number"))
                })?;
                if n < 0 {
                    return Err(self.err(f.at, format!("--retries cannot be negative ({n})")));
                }
                hc.retries = n;
                continue;
            }
            let d = if v.is_empty() {
                0
            } else {
                gofmt::parse_duration(&v)
                    .map_err(|e| self.err(f.at, format!("--{}: {e}", f.name)))?
            };
            if d < 0 {
                return Err(self.err(f.at, format!("--{}={v} cannot be negative", f.name)));
            }
            if d != 0 && d < 1_000_000 {
                return Err(self.err(f.at, format!("--{}={v} cannot be less than 1ms", f.name)));
            }
            match f.name.as_str() {
                "interval" => hc.interval = d,
                "timeout" => hc.timeout = d,
                "start-period" => hc.start_period = d,
                _ => hc.start_interval = d,
            }
        }
        Ok(hc)
    }

    fn command(&self, ins: &Instruction, config: &ImageConfig) -> Vec<String> {
        match &ins.args {
            Args::Exec(v) => v.clone(),
            Args::Text(t) => with_shell(&shell_of(config), t),
        }
    }

    /// `ENV`/`LABEL` arguments: `k=v k2="v 2"` or the legacy `k v w`.
    fn name_vals(
        &self,
        ins: &Instruction,
        text: &str,
        vars: &[(String, String)],
        what: &str,
    ) -> Result<Vec<(String, String)>> {
        let words = lexer::split_words(text, self.escape);
        let at = ins.args_at();
        let Some(first) = words.first() else {
            return Err(self.err(at, format!("{what} requires at least one argument")));
        };
        if !first.contains('=') {
            // Legacy `ENV name value...`: the rest of the line is the value.
            let rest = text.trim_start()[first.len()..].trim();
            if rest.is_empty() {
                return Err(self.err(
                    at,
                    format!(
                        "{what} names {first} but gives it no value: expected {what} {first}=VALUE"
                    ),
                ));
            }
            return Ok(vec![(
                self.word(first, vars, at)?,
                self.word(rest, vars, at)?,
            )]);
        }
        let mut out = Vec::new();
        let mut search = 0;
        for w in &words {
            let idx = text[search..]
                .find(w.as_str())
                .map_or(search, |i| search + i);
            search = idx + w.len();
            let wat = ins.offset(idx);
            let Some((k, v)) = w.split_once('=') else {
                return Err(self.err(
                    wat,
                    format!(
                        "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
                    ),
                ));
            };
            // Every word expands against the environment before the instruction, as
            // in BuildKit: `ENV a=2 b=$a` gives b the earlier a.
            let k = self.word(k, vars, wat)?;
            if k.is_empty() {
                return Err(self.err(wat, format!("{what} names can not be blank")));
            }
            out.push((k, self.word(v, vars, wat)?));
        }
        Ok(out)
    }

    fn expand_ports(&self, p: &str, at: usize) -> Result<Vec<String>> {
        let (port, proto) = match p.split_once('/') {
            Some((a, b)) => (a, b.to_lowercase()),
            None => (p, "tcp".to_string()),
        };
        let bad = || {
            self.err(
                at,
                format!("invalid port {p:?}: expected PORT[-PORT][/tcp|udp|sctp]"),
            )
        };
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(bad());
        }
        let (lo, hi) = match port.split_once('-') {
            Some((a, b)) => (
                a.parse::<u16>().map_err(|_| bad())?,
                b.parse::<u16>().map_err(|_| bad())?,
            ),
            None => {
                let v = port.parse::<u16>().map_err(|_| bad())?;
                (v, v)
            }
        };
        if lo > hi {
            return Err(bad());
        }
        Ok((lo..=hi).map(|n| format!("{n}/{proto}")).collect())
    }

    /// A history row that adds no layer.
    fn meta(&self, st: &mut StageResult, created_by: String) {
        st.history.push(HistoryItem {
            entry: History {
                created_by: Some(created_by),
                comment: Some("buildkit.dockerfile.v0".into()),
                empty_layer: true,
                ..Default::default()
            },
            layer: None,
            own: true,
        });
    }

    /// A history row whose layer is the current vertex's.
    fn layer(&self, st: &mut StageResult, created_by: String) {
        st.history.push(HistoryItem {
            entry: History {
                created_by: Some(created_by),
                comment: Some("buildkit.dockerfile.v0".into()),
                ..Default::default()
            },
            layer: Some(st.node),
            own: true,
        });
    }
}

/// The image's SHELL, or the default `/bin/sh -c`.
fn shell_of(config: &ImageConfig) -> Vec<String> {
    match &config.config.shell {
        Some(s) if !s.is_empty() => s.clone(),
        _ => DEFAULT_SHELL.iter().map(|s| s.to_string()).collect(),
    }
}

fn with_shell(shell: &[String], cmd: &str) -> Vec<String> {
    let mut v = shell.to_vec();
    v.push(cmd.to_string());
    v
}

/// Sets `k=v` in an ordered environment, in place when `k` is there already.
fn set_pair(env: &mut Vec<(String, String)>, k: &str, v: &str) {
    match env.iter_mut().find(|(n, _)| n == k) {
        Some(slot) => slot.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    }
}

#[cfg(test)]
mod tests;
