//! Dockerfile -> build graph, after BuildKit's `dockerfile2llb`.
//!
//! Stages are compiled on demand, starting from the target: a stage that the target
//! does not reach (through `FROM stage` or `COPY --from=stage`) is never compiled, so
//! its base image is never resolved and its steps never run.

use crate::image::{History, ImageConfig, Platform};
use crate::lexer::{self, Vars};
use crate::{Error, Result};
use parse_dockerfile as pd;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What the caller asks to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The Dockerfile's name as the user gave it, for messages.
    pub file_name: String,
    /// `--build-arg` values, in order.
    pub build_args: Vec<(String, String)>,
    /// `--target`.
    pub target: Option<String>,
    /// The platform built for.
    pub platform: Platform,
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

/// A RUN step, fully expanded.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RunSpec {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
}

/// Where COPY reads from.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum CopyFrom {
    /// The build context.
    Context,
    /// The filesystem a vertex produced (a stage or an image).
    Step(#[serde(serialize_with = "ser_node")] NodeIndex),
}

/// A COPY step, fully expanded.
#[derive(Debug, Clone, Serialize)]
pub struct CopySpec {
    pub from: CopyFrom,
    /// Source paths or patterns, relative to the source root.
    pub srcs: Vec<String>,
    /// Absolute destination; a trailing `/` means "a directory".
    pub dest: String,
    /// `--chown=user[:group]`, resolved in the destination's /etc/passwd.
    pub chown: Option<String>,
    /// `--chmod`, octal.
    pub chmod: Option<u32>,
}

/// A filesystem operation: every vertex of the graph is one.
#[derive(Debug, Clone, Serialize)]
pub enum Op {
    /// A base image, pinned by digest.
    Image {
        name: String,
        pinned: String,
    },
    /// The empty filesystem.
    Scratch,
    Run(RunSpec),
    Copy(CopySpec),
    /// `WORKDIR`'s directory creation.
    Mkdir {
        path: String,
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

#[derive(Clone)]
struct StageResult {
    node: NodeIndex,
    config: ImageConfig,
    history: Vec<HistoryItem>,
}

struct StageSrc<'a, 'b> {
    from: &'b pd::FromInstruction<'a>,
    instructions: &'b [pd::Instruction<'a>],
    name: Option<String>,
}

struct Compiler<'a, 'b> {
    text: &'a str,
    line_starts: Vec<usize>,
    escape: char,
    opts: &'a BuildOptions,
    resolver: &'a dyn ImageResolver,
    stages: Vec<StageSrc<'a, 'b>>,
    global_args: Vec<(String, String)>,
    results: Vec<Option<StageResult>>,
    in_progress: Vec<bool>,
    dag: DiGraph<Step, ()>,
    images: HashMap<String, NodeIndex>,
    scratch: Option<NodeIndex>,
    used_args: BTreeSet<String>,
}

/// Args every build has without declaring them (BuildKit's automatic platform args).
fn automatic_args(p: &Platform) -> Vec<(String, String)> {
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
    v
}

const PROXY_ARGS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Compiles `text` (the Dockerfile's contents) for `opts`, resolving base images
/// through `resolver`.
pub fn compile(
    text: &str,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Result<BuildGraph> {
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let parsed = pd::parse(text).map_err(|e| {
        let line = e.line();
        Error::At {
            file: opts.file_name.clone(),
            line,
            col: e.column(),
            message: e.to_string(),
            text: text
                .lines()
                .nth(line.saturating_sub(1))
                .unwrap_or("")
                .to_string(),
        }
    })?;
    let escape = parsed
        .parser_directives
        .escape
        .as_ref()
        .map_or('\\', |d| d.value.value);
    let stages: Vec<StageSrc<'_, '_>> = parsed
        .stages()
        .map(|s| StageSrc {
            from: s.from,
            instructions: s.instructions,
            name: s.from.as_.as_ref().map(|(_, n)| n.value.to_lowercase()),
        })
        .collect();
    if stages.is_empty() {
        return Err(Error::NoStages(opts.file_name.clone()));
    }
    let n = stages.len();
    let mut c = Compiler {
        text,
        line_starts,
        escape,
        opts,
        resolver,
        stages,
        global_args: Vec::new(),
        results: vec![None; n],
        in_progress: vec![false; n],
        dag: DiGraph::new(),
        images: HashMap::new(),
        scratch: None,
        used_args: BTreeSet::new(),
    };
    c.global_args = automatic_args(&opts.platform);
    for arg in parsed.global_args() {
        let words = lexer::split_words(&arg.arguments.value, escape);
        for w in words {
            let decl = c.arg_decl(&w, &c.global_args.clone(), arg.arguments.span.start)?;
            if let Some(v) = decl.1 {
                c.global_args.push((decl.0, v));
            }
        }
    }
    let target = match &opts.target {
        Some(t) => {
            let t = t.to_lowercase();
            c.stages
                .iter()
                .position(|s| s.name.as_deref() == Some(t.as_str()))
                .ok_or(Error::UnknownTarget(t))?
        }
        None => n - 1,
    };
    let result = c.stage(target, None)?;
    let mut warnings = Vec::new();
    let unused: Vec<&str> = opts
        .build_args
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !c.used_args.contains(*k) && !PROXY_ARGS.contains(k))
        .collect();
    if !unused.is_empty() {
        warnings.push(format!(
            "[Warning] One or more build-args [{}] were not consumed",
            unused.join(" ")
        ));
    }
    Ok(BuildGraph {
        dag: c.dag,
        target: result.node,
        config: result.config,
        history: result.history,
        warnings,
    })
}

/// Joins shell-form continuation lines and drops comment and blank lines inside them,
/// as BuildKit's parser does.
fn join_continuations(raw: &str, escape: char) -> String {
    let mut out = String::new();
    let mut first = true;
    for line in raw.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !first {
            let t = line.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
        }
        first = false;
        let trimmed = line.trim_end();
        match trimmed.strip_suffix(escape) {
            Some(rest) => out.push_str(rest),
            None => {
                out.push_str(line);
                break;
            }
        }
    }
    out.trim().to_string()
}

/// Go's `%q` of a string slice, as Docker prints CMD/ENTRYPOINT in history.
fn go_quote_list(v: &[String]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", items.join(" "))
}

impl Compiler<'_, '_> {
    fn pos(&self, offset: usize) -> (usize, usize) {
        let idx = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        (idx + 1, offset - self.line_starts[idx] + 1)
    }

    fn err(&self, offset: usize, message: impl Into<String>) -> Error {
        let (line, col) = self.pos(offset);
        Error::At {
            file: self.opts.file_name.clone(),
            line,
            col,
            message: message.into(),
            text: self.text.lines().nth(line - 1).unwrap_or("").to_string(),
        }
    }

    fn build_arg(&mut self, name: &str) -> Option<String> {
        let v = self
            .opts
            .build_args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone());
        if v.is_some() {
            self.used_args.insert(name.to_string());
        }
        v
    }

    /// Parses one `NAME[=default]` of an ARG; returns the name and its value, if any.
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
            return Err(self.err(at, "ARG requires a name"));
        }
        let default = match default {
            Some(d) => Some(lexer::expand_word(d, vars, self.escape).map_err(|e| self.err(at, e))?),
            None => None,
        };
        let value = self.build_arg(&name).or(default);
        Ok((name, value))
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
                            line: self.pos(line_at).0,
                            op: Op::Scratch,
                            parent: None,
                        },
                        &[],
                    );
                    self.scratch = Some(n);
                    n
                }
            };
            let p = &self.opts.platform;
            let config = ImageConfig {
                architecture: p.architecture.clone(),
                os: p.os.clone(),
                variant: p.variant.clone(),
                config: crate::ContainerConfig {
                    env: vec![
                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                    ],
                    ..Default::default()
                },
                ..Default::default()
            };
            return Ok((node, config));
        }
        let resolved = self
            .resolver
            .resolve(name, &self.opts.platform)
            .map_err(|message| Error::Resolve {
                file: self.opts.file_name.clone(),
                line: self.pos(line_at).0,
                image: name.to_string(),
                message,
            })?;
        let node = match self.images.get(&resolved.pinned) {
            Some(&n) => n,
            None => {
                let op = Op::Image {
                    name: name.to_string(),
                    pinned: resolved.pinned.clone(),
                };
                let n = self.add(
                    Step {
                        name: display,
                        line: self.pos(line_at).0,
                        op,
                        parent: None,
                    },
                    &[],
                );
                self.images.insert(resolved.pinned.clone(), n);
                n
            }
        };
        Ok((node, resolved.config))
    }

    /// Finds a stage by name or index as `COPY --from` / `FROM` may name it.
    fn stage_ref(&self, s: &str, before: usize, allow_index: bool) -> Option<usize> {
        let lower = s.to_lowercase();
        if let Some(i) = self.stages[..before]
            .iter()
            .position(|st| st.name.as_deref() == Some(lower.as_str()))
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

    /// Compiles stage `idx` (memoized). `from_at` is where it was referenced, for cycles.
    fn stage(&mut self, idx: usize, from_at: Option<usize>) -> Result<StageResult> {
        if let Some(r) = &self.results[idx] {
            return Ok(r.clone());
        }
        if self.in_progress[idx] {
            let at = from_at.unwrap_or(self.stages[idx].from.from.span.start);
            return Err(self.err(at, format!("circular dependency detected on stage {idx}")));
        }
        self.in_progress[idx] = true;
        let r = self.compile_stage(idx)?;
        self.in_progress[idx] = false;
        self.results[idx] = Some(r.clone());
        Ok(r)
    }

    fn stage_label(&self, idx: usize) -> String {
        match &self.stages[idx].name {
            Some(n) => n.clone(),
            None => format!("stage-{idx}"),
        }
    }

    fn compile_stage(&mut self, idx: usize) -> Result<StageResult> {
        let src_from = self.stages[idx].from;
        let instructions = self.stages[idx].instructions;
        let from_at = src_from.from.span.start;
        for f in &src_from.options {
            if f.name.value == "platform" {
                let v = f
                    .value
                    .as_ref()
                    .map(|v| v.value.to_string())
                    .unwrap_or_default();
                let v = lexer::expand_word(&v, &self.global_args, self.escape)
                    .map_err(|e| self.err(f.flag_span().start, e))?;
                if Platform::parse(&v).as_ref() != Some(&self.opts.platform) {
                    return Err(self.err(
                        f.flag_span().start,
                        format!("FROM --platform={v}: cross-platform stages are not supported yet"),
                    ));
                }
            } else {
                return Err(self.err(
                    f.flag_span().start,
                    format!("unknown flag for FROM: --{}", f.name.value),
                ));
            }
        }
        let image = lexer::expand_word(&src_from.image.value, &self.global_args, self.escape)
            .map_err(|e| self.err(src_from.image.span.start, e))?;
        if image.is_empty() {
            return Err(self.err(
                src_from.image.span.start,
                "FROM requires an image name; it expanded to nothing",
            ));
        }
        let total = 1 + instructions
            .iter()
            .filter(|i| {
                matches!(
                    i,
                    pd::Instruction::Run(_)
                        | pd::Instruction::Copy(_)
                        | pd::Instruction::Workdir(_)
                )
            })
            .count();
        let label = if self.stages.len() == 1 {
            String::new()
        } else {
            format!("{} ", self.stage_label(idx))
        };
        let mut counter = 1;
        let mut st = match self.stage_ref(&image, idx, false) {
            Some(parent) => {
                // This stage continues from the parent's last vertex, config and history.
                self.stage(parent, Some(src_from.image.span.start))?
            }
            None => {
                let display = format!("[{label}1/{total}] FROM {image}");
                let (node, config) = self.image_node(&image, from_at, display)?;
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
                    config,
                    history,
                }
            }
        };
        st.config.history.clear();
        st.config.rootfs = Default::default();
        let mut args: Vec<(String, String)> = Vec::new();
        let mut shell: Vec<String> = DEFAULT_SHELL.iter().map(|s| s.to_string()).collect();
        let mut cmd_set = false;
        for ins in instructions {
            // Variables visible to expansion: stage ARGs, overridden by ENV.
            let mut vars = args.clone();
            vars.extend(st.config.config.env_pairs());
            match ins {
                pd::Instruction::Arg(a) => {
                    for w in lexer::split_words(&a.arguments.value, self.escape) {
                        let (name, mut value) = self.arg_decl(&w, &vars, a.arguments.span.start)?;
                        if value.is_none() {
                            value = self.global_args.get(&name);
                        }
                        if let Some(v) = value {
                            vars.push((name.clone(), v.clone()));
                            args.push((name, v));
                        }
                    }
                }
                pd::Instruction::Env(e) => {
                    let pairs = self.name_vals(&e.arguments, &vars, "ENV")?;
                    let mut shown = Vec::new();
                    for (k, v) in pairs {
                        st.config.config.set_env(&k, &v);
                        vars.push((k.clone(), v.clone()));
                        shown.push(format!("{k}={v}"));
                    }
                    self.meta(&mut st, format!("ENV {}", shown.join(" ")));
                }
                pd::Instruction::Label(l) => {
                    let pairs = self.name_vals(&l.arguments, &vars, "LABEL")?;
                    let mut shown = Vec::new();
                    for (k, v) in pairs {
                        shown.push(format!("{k}={v}"));
                        st.config.config.labels.insert(k, v);
                    }
                    self.meta(&mut st, format!("LABEL {}", shown.join(" ")));
                }
                pd::Instruction::Maintainer(m) => {
                    st.config.author = Some(m.name.value.to_string());
                    self.meta(&mut st, format!("MAINTAINER {}", m.name.value));
                }
                pd::Instruction::User(u) => {
                    let user = self.expand(&u.arguments, &vars)?;
                    st.config.config.user = user.clone();
                    self.meta(&mut st, format!("USER {user}"));
                }
                pd::Instruction::Stopsignal(s) => {
                    let sig = self.expand(&s.arguments, &vars)?;
                    st.config.config.stop_signal = sig.clone();
                    self.meta(&mut st, format!("STOPSIGNAL {sig}"));
                }
                pd::Instruction::Expose(e) => {
                    let mut ports = BTreeMap::new();
                    for a in &e.arguments {
                        let p = self.expand(a, &vars)?;
                        for port in self.expand_ports(&p, a.span.start)? {
                            ports.insert(port, serde_json::json!({}));
                        }
                    }
                    let shown: Vec<String> = ports.keys().map(|k| format!("{k}:{{}}")).collect();
                    st.config.config.exposed_ports.extend(ports);
                    self.meta(&mut st, format!("EXPOSE map[{}]", shown.join(" ")));
                }
                pd::Instruction::Volume(v) => {
                    let items: Vec<&pd::UnescapedString<'_>> = match &v.arguments {
                        pd::JsonOrStringArray::Json(a) => a.value.iter().collect(),
                        pd::JsonOrStringArray::String(a) => a.iter().collect(),
                    };
                    let mut vols = Vec::new();
                    for it in items {
                        let p = self.expand(it, &vars)?;
                        if p.is_empty() {
                            return Err(self.err(
                                it.span.start,
                                "VOLUME specified can not be an empty string",
                            ));
                        }
                        st.config
                            .config
                            .volumes
                            .insert(p.clone(), serde_json::json!({}));
                        vols.push(p);
                    }
                    self.meta(&mut st, format!("VOLUME [{}]", vols.join(" ")));
                }
                pd::Instruction::Shell(s) => {
                    shell = s.arguments.iter().map(|a| a.value.to_string()).collect();
                    self.meta(&mut st, format!("SHELL {}", go_quote_list(&shell)));
                }
                pd::Instruction::Cmd(c) => {
                    let argv = self.command(&c.arguments, &shell);
                    self.meta(&mut st, format!("CMD {}", go_quote_list(&argv)));
                    st.config.config.cmd = Some(argv);
                    cmd_set = true;
                }
                pd::Instruction::Entrypoint(e) => {
                    let argv = self.command(&e.arguments, &shell);
                    self.meta(&mut st, format!("ENTRYPOINT {}", go_quote_list(&argv)));
                    st.config.config.entrypoint = Some(argv);
                    if !cmd_set {
                        st.config.config.cmd = None;
                    }
                }
                pd::Instruction::Workdir(w) => {
                    let dir = self.expand(&w.arguments, &vars)?;
                    let base = if st.config.config.working_dir.is_empty() {
                        "/"
                    } else {
                        &st.config.config.working_dir
                    };
                    let dir = if dir.starts_with('/') {
                        crate::path::clean(&dir)
                    } else {
                        crate::path::clean(&format!("{base}/{dir}"))
                    };
                    st.config.config.working_dir = dir.clone();
                    counter += 1;
                    let step = Step {
                        name: format!("[{label}{counter}/{total}] WORKDIR {dir}"),
                        line: self.pos(w.workdir.span.start).0,
                        op: Op::Mkdir { path: dir.clone() },
                        parent: Some(st.node),
                    };
                    st.node = self.add(step, &[st.node]);
                    self.layer(&mut st, format!("WORKDIR {dir}"));
                }
                pd::Instruction::Run(r) => {
                    if let Some(f) = r.options.first() {
                        return Err(self.err(
                            f.flag_span().start,
                            format!("RUN --{} is not supported yet", f.name.value),
                        ));
                    }
                    let argv =
                        match (&r.arguments, r.here_docs.as_slice()) {
                            (_, []) => self.command(&r.arguments, &shell),
                            (pd::Command::Shell(s), [doc]) if is_heredoc_only(s.value) => {
                                let mut a = shell.clone();
                                a.push(doc.value.to_string());
                                a
                            }
                            _ => return Err(self.err(
                                r.run.span.start,
                                "RUN with here-documents passed to a command is not supported yet",
                            )),
                        };
                    // Build args reach RUN's environment but not the image, unless ENV overrides them.
                    let env_names: BTreeSet<String> = st
                        .config
                        .config
                        .env_pairs()
                        .into_iter()
                        .map(|(k, _)| k)
                        .collect();
                    let run_args: Vec<&(String, String)> = args
                        .iter()
                        .filter(|(k, _)| !env_names.contains(k))
                        .collect();
                    let mut env = st.config.config.env.clone();
                    env.extend(run_args.iter().map(|(k, v)| format!("{k}={v}")));
                    let prefix = if run_args.is_empty() {
                        String::new()
                    } else {
                        let kv: Vec<String> =
                            run_args.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        format!("|{} {} ", kv.len(), kv.join(" "))
                    };
                    let exec = matches!(r.arguments, pd::Command::Exec(_));
                    let shown = if exec {
                        go_quote_list(&argv)
                    } else {
                        argv.join(" ")
                    };
                    counter += 1;
                    let cwd = if st.config.config.working_dir.is_empty() {
                        "/".to_string()
                    } else {
                        st.config.config.working_dir.clone()
                    };
                    let text = if exec {
                        go_quote_list(&argv)
                    } else {
                        argv.last().cloned().unwrap_or_default()
                    };
                    let step = Step {
                        name: format!("[{label}{counter}/{total}] RUN {text}"),
                        line: self.pos(r.run.span.start).0,
                        op: Op::Run(RunSpec {
                            argv,
                            env,
                            cwd,
                            user: st.config.config.user.clone(),
                        }),
                        parent: Some(st.node),
                    };
                    st.node = self.add(step, &[st.node]);
                    self.layer(&mut st, format!("RUN {prefix}{shown} # buildkit"));
                }
                pd::Instruction::Copy(cp) => {
                    let mut from = CopyFrom::Context;
                    let mut from_shown = String::new();
                    let mut chown = None;
                    let mut chmod = None;
                    let mut inputs = vec![st.node];
                    for f in &cp.options {
                        let raw = f
                            .value
                            .as_ref()
                            .map(|v| v.value.to_string())
                            .unwrap_or_default();
                        let val = lexer::expand_word(&raw, &vars, self.escape)
                            .map_err(|e| self.err(f.flag_span().start, e))?;
                        match &*f.name.value {
                            "from" => {
                                let node = match self.stage_ref(&val, self.stages.len(), true) {
                                    Some(i) if i == idx => {
                                        return Err(self.err(
                                            f.flag_span().start,
                                            format!("COPY --from={val} refers to its own stage"),
                                        ))
                                    }
                                    Some(i) => self.stage(i, Some(f.flag_span().start))?.node,
                                    None => {
                                        self.image_node(
                                            &val,
                                            f.flag_span().start,
                                            format!("[{label}internal] FROM {val}"),
                                        )?
                                        .0
                                    }
                                };
                                from = CopyFrom::Step(node);
                                from_shown = format!("--from={val} ");
                                inputs.push(node);
                            }
                            "chown" => chown = Some(val),
                            "chmod" => {
                                chmod = Some(u32::from_str_radix(&val, 8).map_err(|_| {
                                    self.err(
                                        f.flag_span().start,
                                        format!("invalid --chmod={val}: expected an octal mode"),
                                    )
                                })?)
                            }
                            "link" => {}
                            other => {
                                return Err(self.err(
                                    f.flag_span().start,
                                    format!("COPY --{other} is not supported yet"),
                                ))
                            }
                        }
                    }
                    let mut srcs = Vec::new();
                    for s in &cp.src {
                        match s {
                            pd::Source::Path(p) => srcs.push(self.expand(p, &vars)?),
                            _ => {
                                return Err(self.err(
                                    cp.copy.span.start,
                                    "COPY from a here-document is not supported yet",
                                ))
                            }
                        }
                    }
                    let raw_dest = self.expand(&cp.dest, &vars)?;
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
                    if (raw_dest.ends_with('/') || raw_dest == "." || raw_dest.ends_with("/."))
                        && dest != "/"
                    {
                        dest.push('/');
                    }
                    counter += 1;
                    let shown = format!("COPY {from_shown}{} {raw_dest}", srcs.join(" "));
                    let step = Step {
                        name: format!("[{label}{counter}/{total}] {shown}"),
                        line: self.pos(cp.copy.span.start).0,
                        op: Op::Copy(CopySpec {
                            from,
                            srcs,
                            dest,
                            chown,
                            chmod,
                        }),
                        parent: Some(st.node),
                    };
                    st.node = self.add(step, &inputs);
                    self.layer(&mut st, format!("{shown} # buildkit"));
                }
                pd::Instruction::Add(a) => {
                    return Err(self.err(a.add.span.start, "ADD is not supported yet; use COPY"))
                }
                pd::Instruction::Healthcheck(h) => {
                    return Err(
                        self.err(h.healthcheck.span.start, "HEALTHCHECK is not supported yet")
                    )
                }
                pd::Instruction::Onbuild(o) => {
                    return Err(self.err(o.onbuild.span.start, "ONBUILD is not supported yet"))
                }
                pd::Instruction::From(f) => {
                    return Err(self.err(f.from.span.start, "unexpected FROM"))
                }
                _ => return Err(self.err(from_at, "unsupported instruction")),
            }
        }
        Ok(st)
    }

    fn expand(&self, s: &pd::UnescapedString<'_>, vars: &[(String, String)]) -> Result<String> {
        lexer::expand_word(&s.value, vars, self.escape).map_err(|e| self.err(s.span.start, e))
    }

    fn command(&self, c: &pd::Command<'_>, shell: &[String]) -> Vec<String> {
        match c {
            pd::Command::Exec(a) => a.value.iter().map(|s| s.value.to_string()).collect(),
            pd::Command::Shell(s) => {
                let mut v = shell.to_vec();
                v.push(join_continuations(s.value, self.escape));
                v
            }
            _ => Vec::new(),
        }
    }

    /// `ENV`/`LABEL` arguments: `k=v k2="v 2"` or the legacy `k v w`.
    fn name_vals(
        &self,
        s: &pd::UnescapedString<'_>,
        vars: &[(String, String)],
        what: &str,
    ) -> Result<Vec<(String, String)>> {
        let words = lexer::split_words(&s.value, self.escape);
        let at = s.span.start;
        let Some(first) = words.first() else {
            return Err(self.err(at, format!("{what} requires at least one argument")));
        };
        let ex = |w: &str| lexer::expand_word(w, vars, self.escape).map_err(|e| self.err(at, e));
        if !first.contains('=') {
            // Legacy `ENV name value...`: the rest of the line is the value.
            let rest = s.value.trim_start()[first.len()..].trim();
            if rest.is_empty() {
                return Err(self.err(at, format!("{what} names {first} but gives it no value")));
            }
            return Ok(vec![(ex(first)?, ex(rest)?)]);
        }
        let mut out = Vec::new();
        for w in &words {
            let Some((k, v)) = w.split_once('=') else {
                return Err(self.err(at, format!("{what}: expected name=value, got {w:?}")));
            };
            let k = ex(k)?;
            if k.is_empty() {
                return Err(self.err(at, format!("{what}: empty name in {w:?}")));
            }
            out.push((k, ex(v)?));
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
                ..Default::default()
            },
            layer: Some(st.node),
            own: true,
        });
    }
}

/// `RUN <<EOF` alone: the here-document is the script.
fn is_heredoc_only(cmd: &str) -> bool {
    let t = cmd.trim();
    t.starts_with("<<") && !t.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests;
