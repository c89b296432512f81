//! Dockerfile -> build graph, after BuildKit's `dockerfile2llb`.
//!
//! Stages are compiled on demand, starting from the target: a stage that the target
//! does not reach (through `FROM stage`, `COPY --from=stage` or `RUN --mount=from=stage`)
//! is never compiled, so its base image is never resolved and its steps never run.
//! The image configuration and history strings follow what BuildKit writes, so an
//! image built here inspects like one built by `docker buildx build`.

mod config;
mod copy;
pub(crate) mod gofmt;
mod graph;
pub(crate) mod mounts;
mod run;

pub mod merge;
pub use graph::{
    BuildGraph, BuildOptions, CopyFrom, CopySpec, HistoryItem, ImageResolver, InlineFile,
    NamedContext, Op, ResolvedImage, RunMount, RunSpec, Source, Step,
};
pub use mounts::{MountKind, MountSpec, Network, Security, Sharing};

use crate::image::{Healthcheck, History, ImageConfig, Platform};
use crate::lexer::{self, Lex, Vars};
use crate::parser::{self, Args, Instruction, Kind};
use crate::{Error, Result};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{BTreeSet, HashMap};

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
    /// The stages being compiled, innermost last (a stage's FROM or `--from` compiles
    /// another in the middle of it).
    compiling: Vec<usize>,
}

/// Args every build has without declaring them (BuildKit's automatic platform args).
pub fn automatic_args(p: &Platform, target_stage: &str) -> Vec<(String, String)> {
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
                    // A duplicate name (DuplicateStageName, see crate::check) refers to
                    // the last stage of that name before the reference.
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
        compiling: Vec::new(),
        // Empty continuations and duplicate stage names are crate::check's findings.
        warnings: Vec::new(),
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

/// The option closest to `val` within an edit distance of 2, as BuildKit's
/// `suggest.Search` (none when `val` is one of them).
/// The config of an empty base (`scratch`, a directory's build context) for `p`.
fn scratch_config(p: &Platform) -> ImageConfig {
    ImageConfig {
        architecture: p.architecture.clone(),
        os: p.os.clone(),
        variant: p.variant.clone(),
        config: crate::ContainerConfig {
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            // BuildKit gives a scratch stage the root as its working directory.
            working_dir: "/".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub(crate) fn suggest<'a>(val: &str, options: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for opt in options {
        if opt == val {
            return None;
        }
        let d = levenshtein(val, opt);
        if d < 3 && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, opt));
        }
    }
    best.map(|(_, o)| o.to_string())
}

/// Edit distance by characters (insertions, deletions, substitutions): two rows of
/// the usual table; too small a need for a crate.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
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

    fn add(&mut self, mut step: Step, inputs: &[NodeIndex]) -> NodeIndex {
        // Sources (images, scratch) belong to no stage.
        step.no_cache = step.parent.is_some()
            && self.compiling.last().is_some_and(|&i| {
                let stage = &self.stages[i];
                self.opts.no_cache_stages.iter().any(|f| {
                    stage
                        .name
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case(f))
                        || *f == i.to_string()
                })
            });
        let n = self.dag.add_node(step);
        for &i in inputs {
            self.dag.add_edge(i, n, ());
        }
        n
    }

    /// A base (`FROM`, `--from`) by name: a named build context when there is one
    /// of that name, else the image.
    fn image_node(
        &mut self,
        name: &str,
        platform: &Platform,
        line_at: usize,
        display: String,
    ) -> Result<(NodeIndex, ImageConfig)> {
        let named = self
            .opts
            .contexts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone());
        match named {
            Some(NamedContext::Image(r)) => self.pull_node(&r, platform, line_at, display),
            Some(NamedContext::Local) => {
                // A directory's files: scratch's config, a source vertex of its own.
                let config = scratch_config(platform);
                let existing = self
                    .dag
                    .node_indices()
                    .find(|&i| matches!(&self.dag[i].op, Op::Local { name: n } if n == name));
                let node = match existing {
                    Some(n) => n,
                    None => {
                        let step = Step {
                            name: format!("[context {name}] load build context"),
                            line: self.line_of(line_at),
                            op: Op::Local {
                                name: name.to_string(),
                            },
                            parent: None,
                            no_cache: false,
                        };
                        self.add(step, &[])
                    }
                };
                Ok((node, config))
            }
            None => self.pull_node(name, platform, line_at, display),
        }
    }

    /// The image `name` (or scratch), resolved for `platform`.
    fn pull_node(
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
                            no_cache: false,
                        },
                        &[],
                    );
                    self.scratch = Some(n);
                    n
                }
            };
            return Ok((node, scratch_config(platform)));
        }
        let resolved = self
            .resolver
            .resolve(name, platform)
            .map_err(|message| Error::Resolve {
                file: self.opts.file_name.clone(),
                line: self.line_of(line_at),
                image: name.to_string(),
                message: message + &self.stage_hint(name),
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
                        no_cache: false,
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

    /// For an image that does not resolve: `(did you mean builder?)` when its name is
    /// close to a stage's (or a common image's), as BuildKit suggests, with the stages.
    fn stage_hint(&self, name: &str) -> String {
        let stages: Vec<&str> = self
            .stages
            .iter()
            .filter_map(|s| s.name.as_deref())
            .collect();
        let common = [
            "alpine", "busybox", "centos", "debian", "golang", "ubuntu", "fedora",
        ];
        let options = stages.iter().copied().chain(common);
        let Some(m) = suggest(name, options) else {
            return String::new();
        };
        if stages.contains(&m.as_str()) {
            format!(" (did you mean {m}? the stages are: {})", stages.join(", "))
        } else {
            format!(" (did you mean {m}?)")
        }
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
        self.compiling.push(idx);
        let r = self.compile_stage(idx);
        self.compiling.pop();
        let r = r?;
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
        // A stage with a build context of its name is that context, as in BuildKit.
        if let Some(own) = self.stages[idx].name.clone() {
            if self.opts.contexts.iter().any(|(n, _)| *n == own) {
                let (node, config) = self.image_node(&own, &platform, from.at, String::new())?;
                self.platforms[idx] = Some(platform.clone());
                return Ok(StageResult {
                    node,
                    platform,
                    env: config.config.env_pairs(),
                    config,
                    history: Vec::new(),
                    args: Vec::new(),
                });
            }
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
                        no_cache: false,
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
