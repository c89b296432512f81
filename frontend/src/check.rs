//! BuildKit's build checks (`docker buildx build --check`, and the warnings of every
//! build): the same rule names, messages and lines, and the `# check=` directive
//! (`skip=RULE,...|all`, `error=true`, `experimental=RULE,...|all`), also from the
//! `BUILDKIT_DOCKERFILE_CHECK` build argument and from a comment right above an
//! instruction (for that instruction alone).
//!
//! Rules about the whole file (casing, stage names, FROM arguments, MAINTAINER, empty
//! continuations) look at every stage. Rules about what a stage does (ENV and LABEL
//! format, CMD/ENTRYPOINT form, WORKDIR, EXPOSE, secrets in ARG/ENV, COPY of ignored
//! files, undefined variables) look at the stages a build runs, or at every stage for
//! `--call check`, as BuildKit does.

use crate::dockerignore::Matcher;
use crate::lexer::{self, Vars};
use crate::parser::{Args, Dockerfile, Instruction, Kind};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};

/// One rule, as BuildKit's linter names it.
#[derive(Debug)]
pub struct Rule {
    pub name: &'static str,
    pub description: &'static str,
    /// Off unless `experimental=` names it.
    pub experimental: bool,
}

impl Rule {
    /// `https://docs.docker.com/go/dockerfile/rule/stage-name-casing/`.
    pub fn url(&self) -> String {
        let mut slug = String::new();
        let mut prev_lower = false;
        for c in self.name.chars() {
            if c.is_ascii_uppercase() && prev_lower {
                slug.push('-');
            }
            prev_lower = c.is_ascii_lowercase();
            slug.push(c.to_ascii_lowercase());
        }
        // Acronyms as BuildKit spells them: JSONArgs -> json-args.
        let slug = slug.replace("jsonargs", "json-args");
        format!("https://docs.docker.com/go/dockerfile/rule/{slug}/")
    }
}

macro_rules! rules {
    ($($id:ident = $name:literal, $desc:literal $(, $exp:ident)?;)*) => {
        $(pub const $id: Rule = Rule { name: $name, description: $desc, experimental: rules!(@exp $($exp)?) };)*
        /// Every rule kiln checks.
        pub const RULES: &[Rule] = &[$($id),*];
    };
    (@exp experimental) => { true };
    (@exp) => { false };
}

rules! {
    STAGE_NAME_CASING = "StageNameCasing", "Stage names should be lowercase";
    FROM_AS_CASING = "FromAsCasing", "The 'as' keyword should match the case of the 'from' keyword";
    NO_EMPTY_CONTINUATION = "NoEmptyContinuation", "Empty continuation lines will become errors in a future release";
    CONSISTENT_INSTRUCTION_CASING = "ConsistentInstructionCasing", "All commands within the Dockerfile should use the same casing (either upper or lower)";
    DUPLICATE_STAGE_NAME = "DuplicateStageName", "Stage names should be unique";
    RESERVED_STAGE_NAME = "ReservedStageName", "Reserved words should not be used as stage names";
    JSON_ARGS_RECOMMENDED = "JSONArgsRecommended", "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals";
    MAINTAINER_DEPRECATED = "MaintainerDeprecated", "The MAINTAINER instruction is deprecated, use a label instead to define an image author";
    UNDEFINED_ARG_IN_FROM = "UndefinedArgInFrom", "FROM command must use declared ARGs";
    WORKDIR_RELATIVE_PATH = "WorkdirRelativePath", "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes";
    UNDEFINED_VAR = "UndefinedVar", "Variables should be defined before their use";
    MULTIPLE_INSTRUCTIONS_DISALLOWED = "MultipleInstructionsDisallowed", "Multiple instructions of the same type should not be used in the same stage";
    LEGACY_KEY_VALUE_FORMAT = "LegacyKeyValueFormat", "Legacy key/value format with whitespace separator should not be used";
    REDUNDANT_TARGET_PLATFORM = "RedundantTargetPlatform", "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior";
    SECRETS_USED_IN_ARG_OR_ENV = "SecretsUsedInArgOrEnv", "Sensitive data should not be used in the ARG or ENV commands";
    INVALID_DEFAULT_ARG_IN_FROM = "InvalidDefaultArgInFrom", "Default value for global ARG results in an empty or invalid base image name";
    FROM_PLATFORM_FLAG_CONST_DISALLOWED = "FromPlatformFlagConstDisallowed", "FROM --platform flag should not use a constant value";
    COPY_IGNORED_FILE = "CopyIgnoredFile", "Attempting to Copy file that is excluded by .dockerignore";
    INVALID_DEFINITION_DESCRIPTION = "InvalidDefinitionDescription", "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment.", experimental;
    EXPOSE_PROTO_CASING = "ExposeProtoCasing", "Protocol in EXPOSE instruction should be lowercase";
    EXPOSE_INVALID_FORMAT = "ExposeInvalidFormat", "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release";
    INVALID_BASE_IMAGE_PLATFORM = "InvalidBaseImagePlatform", "Base image platform does not match expected target platform";
}

/// A rule's finding at a line of the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Finding {
    pub line: usize,
    pub rule: &'static str,
    pub detail: String,
}

impl Finding {
    /// BuildKit's short form: `StageNameCasing: Stage name 'A' should be lowercase (line 2)`.
    pub fn short(&self) -> String {
        format!("{}: {} (line {})", self.rule, self.detail, self.line)
    }

    pub fn rule(&self) -> Option<&'static Rule> {
        RULES.iter().find(|r| r.name == self.rule)
    }
}

/// What the `check` directive (or build argument, or comment) says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub skip_all: bool,
    pub skip: Vec<String>,
    pub error: bool,
    pub experimental_all: bool,
    pub experimental: Vec<String>,
}

impl Config {
    /// `skip=A,B;error=true;experimental=C` (BuildKit's `ParseLintOptions`).
    pub fn parse(s: &str) -> Result<Config, String> {
        let mut c = Config::default();
        let s = s.trim();
        if s.is_empty() {
            return Ok(c);
        }
        for part in s.splitn(3, ';') {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!("invalid check option {part:?}"));
            };
            let list = |v: &str| -> Vec<String> {
                v.split(',')
                    .map(|r| r.trim().to_string())
                    .filter(|r| !r.is_empty())
                    .collect()
            };
            match k.trim() {
                "skip" => {
                    let l = list(v);
                    if l.iter().any(|r| r == "all") {
                        c.skip_all = true;
                    } else {
                        c.skip = l;
                    }
                }
                "error" => {
                    c.error = match v.trim() {
                        "true" | "1" | "t" | "T" | "TRUE" | "True" => true,
                        "false" | "0" | "f" | "F" | "FALSE" | "False" => false,
                        other => return Err(format!("failed to parse check option {other:?}")),
                    }
                }
                "experimental" => {
                    let l = list(v);
                    if l.iter().any(|r| r == "all") {
                        c.experimental_all = true;
                    } else {
                        c.experimental = l;
                    }
                }
                other => return Err(format!("invalid check option {other:?}")),
            }
        }
        Ok(c)
    }

    /// This one, with what `o` adds.
    fn merged(&self, o: &Config) -> Config {
        let mut c = self.clone();
        c.skip_all |= o.skip_all;
        c.skip.extend(o.skip.iter().cloned());
        c.error |= o.error;
        c.experimental_all |= o.experimental_all;
        c.experimental.extend(o.experimental.iter().cloned());
        c
    }

    fn runs(&self, r: &Rule) -> bool {
        if r.experimental {
            self.experimental_all || self.experimental.iter().any(|x| x == r.name)
        } else {
            !(self.skip_all || self.skip.iter().any(|x| x == r.name))
        }
    }

    /// The config for one instruction: this one, with a `check=` comment above it.
    fn for_instruction(&self, ins: &Instruction) -> Config {
        for c in &ins.comments {
            let c = c.trim_start();
            if let Some(v) = c.strip_prefix("check=") {
                let v = v.split(' ').next().unwrap_or("");
                return match Config::parse(v) {
                    Ok(o) => self.merged(&o),
                    Err(_) => self.clone(),
                };
            }
        }
        self.clone()
    }
}

/// What a check runs with.
pub struct Options<'a> {
    /// The build arguments (`--build-arg`), for FROM expansion.
    pub build_args: &'a [(String, String)],
    /// The automatic platform arguments (BUILDPLATFORM, TARGETPLATFORM, ...).
    pub automatic_args: &'a [(String, String)],
    /// The stages whose instructions are checked (indexes); `None`: every stage.
    pub stages: Option<&'a HashSet<usize>>,
    /// The context's `.dockerignore`.
    pub ignore: Option<&'a Matcher>,
    /// The environment variable names of a base image (for UndefinedVar).
    pub image_env: &'a dyn Fn(&str) -> Vec<String>,
}

/// The findings of a check, in line order, and whether the config makes them errors.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// `error=true`: the build fails when there are findings.
    pub error: bool,
}

impl Report {
    /// `lint violation found for rules: A, B`, when findings are errors.
    pub fn error_message(&self) -> Option<String> {
        if !self.error || self.findings.is_empty() {
            return None;
        }
        let rules: BTreeSet<&str> = self.findings.iter().map(|f| f.rule).collect();
        Some(format!(
            "lint violation found for rules: {}",
            rules.into_iter().collect::<Vec<_>>().join(", ")
        ))
    }
}

struct Lint {
    found: BTreeSet<Finding>,
}

impl Lint {
    fn run(&mut self, cfg: &Config, rule: &Rule, line: usize, detail: String) {
        if cfg.runs(rule) {
            self.found.insert(Finding {
                line,
                rule: rule.name,
                detail,
            });
        }
    }
}

/// A variable lookup that records which names were found and which were not.
struct Recording<'a> {
    vars: &'a [(String, String)],
    matched: RefCell<BTreeSet<String>>,
    unmatched: RefCell<BTreeSet<String>>,
}

impl<'a> Recording<'a> {
    fn new(vars: &'a [(String, String)]) -> Recording<'a> {
        Recording {
            vars,
            matched: RefCell::new(BTreeSet::new()),
            unmatched: RefCell::new(BTreeSet::new()),
        }
    }
}

impl Vars for Recording<'_> {
    fn get(&self, name: &str) -> Option<String> {
        let v = Vars::get(self.vars, name);
        match &v {
            Some(_) => self.matched.borrow_mut().insert(name.to_string()),
            None => self.unmatched.borrow_mut().insert(name.to_string()),
        };
        v
    }
}

fn self_consistent(s: &str) -> bool {
    s == s.to_lowercase() || s == s.to_uppercase()
}

/// The keyword as written.
fn keyword(ins: &Instruction) -> &str {
    ins.original.split_whitespace().next().unwrap_or("")
}

/// The option closest to `val` within an edit distance of 2 (BuildKit's suggest).
fn suggest(val: &str, options: &[String]) -> Option<String> {
    crate::compile::suggest(val, options.iter().map(String::as_str))
}

/// `ARG`/`ENV`/`LABEL` pairs as BuildKit's parser sees them: the keys, and whether the
/// legacy `key value` form (no `=`) was used.
fn pairs(ins: &Instruction) -> (Vec<String>, bool) {
    let Args::Text(t) = &ins.args else {
        return (Vec::new(), false);
    };
    let words = lexer::split_words(t, ins.escape);
    match words.first() {
        Some(w) if !w.contains('=') && ins.kind != Kind::Arg => (vec![w.clone()], true),
        _ => (
            words
                .iter()
                .map(|w| w.split_once('=').map_or(w.as_str(), |(k, _)| k).to_string())
                .collect(),
            false,
        ),
    }
}

/// A stage of a parsed Dockerfile.
pub(crate) struct Stage<'a> {
    pub from: &'a Instruction,
    /// Lowercased `AS` name.
    pub name: Option<String>,
    /// The image or stage it starts from, as written.
    pub base: String,
    pub commands: Vec<&'a Instruction>,
}

/// The instructions before the first FROM (global ARGs), and the stages.
pub(crate) fn stages(df: &Dockerfile) -> (Vec<&Instruction>, Vec<Stage<'_>>) {
    let mut global = Vec::new();
    let mut out: Vec<Stage> = Vec::new();
    for ins in &df.instructions {
        if ins.kind == Kind::From {
            let words: Vec<String> = ins.words().into_iter().map(|(w, _)| w).collect();
            let name = (words.len() >= 3 && words[1].eq_ignore_ascii_case("as"))
                .then(|| words[2].to_lowercase());
            out.push(Stage {
                from: ins,
                name,
                base: words.first().cloned().unwrap_or_default(),
                commands: Vec::new(),
            });
        } else if let Some(s) = out.last_mut() {
            s.commands.push(ins);
        } else {
            global.push(ins);
        }
    }
    (global, out)
}

const SECRET_TOKENS: [&str; 10] = [
    "apikey",
    "auth",
    "credential",
    "credentials",
    "key",
    "password",
    "pword",
    "passwd",
    "secret",
    "token",
];
const ALLOW_TOKENS: [&str; 3] = ["public", "file", "version"];

/// Whether one of `key`'s `_`-separated parts is one of `tokens` (case-insensitive),
/// as BuildKit's secrets patterns `(?i)(?:_|^)(?:TOKENS)(?:_|$)` match.
fn has_token(key: &str, tokens: &[&str]) -> bool {
    key.to_lowercase().split('_').any(|p| tokens.contains(&p))
}

/// Whether `name` parses as an image reference (distribution's grammar, roughly:
/// lowercase path components, an optional tag, an optional digest).
fn valid_reference(name: &str) -> bool {
    let (rest, digest) = match name.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (name, None),
    };
    if digest.is_some_and(|d| !d.contains(':') || d.ends_with(':')) {
        return false;
    }
    // A tag is after the last ':' that is not part of a registry host's port.
    let (path, tag) = match rest.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, Some(t)),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && !t.starts_with(['.', '-']);
        if !ok {
            return false;
        }
    }
    if path.is_empty() {
        return false;
    }
    let mut comps: Vec<&str> = path.split('/').collect();
    // A first component with a '.' or ':' (or localhost) is a registry host.
    if comps.len() > 1 && (comps[0].contains(['.', ':']) || comps[0] == "localhost") {
        comps.remove(0);
    }
    comps.iter().all(|c| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    })
}

/// The config a build checks with: the `BUILDKIT_DOCKERFILE_CHECK` build argument
/// when given (it replaces the directive, as in BuildKit), else the `# check=`
/// directive.
pub fn config(df: &Dockerfile, build_args: &[(String, String)]) -> Result<Config, String> {
    match build_args
        .iter()
        .rev()
        .find(|(k, _)| k == "BUILDKIT_DOCKERFILE_CHECK")
    {
        Some((_, v)) => Config::parse(v),
        None => Config::parse(
            df.directives
                .check
                .as_ref()
                .map_or("", |d| d.value.as_str()),
        ),
    }
}

/// The stages a build of `target` (a stage name; `None`: the last stage) runs: the
/// target and what it reaches through `FROM stage`, `COPY --from` and
/// `RUN --mount=from=`.
pub fn reachable(df: &Dockerfile, target: Option<&str>) -> HashSet<usize> {
    let (_, stages) = stages(df);
    let find = |r: &str, before: usize| -> Option<usize> {
        let lower = r.to_lowercase();
        stages[..before]
            .iter()
            .rposition(|s| s.name.as_deref() == Some(lower.as_str()))
            .or_else(|| r.parse::<usize>().ok().filter(|&i| i < before))
    };
    let start = match target {
        Some(t) => stages
            .iter()
            .position(|s| s.name.as_deref() == Some(t.to_lowercase().as_str())),
        None => stages.len().checked_sub(1),
    };
    let mut out = HashSet::new();
    let mut todo: Vec<usize> = start.into_iter().collect();
    while let Some(i) = todo.pop() {
        if !out.insert(i) {
            continue;
        }
        let st = &stages[i];
        let mut refs = vec![st.base.clone()];
        for ins in &st.commands {
            if let Some(v) = ins.flag("from").and_then(|f| f.value.clone()) {
                refs.push(v);
            }
            for f in ins.flags.iter().filter(|f| f.name == "mount") {
                for kv in f.value.as_deref().unwrap_or("").split(',') {
                    if let Some(v) = kv.strip_prefix("from=") {
                        refs.push(v.to_string());
                    }
                }
            }
        }
        todo.extend(refs.iter().filter_map(|r| find(r, i)));
    }
    out
}

/// Checks `df` under `cfg` (see [`config`]).
pub fn check(df: &Dockerfile, cfg: &Config, opts: &Options) -> Report {
    let mut lint = Lint {
        found: BTreeSet::new(),
    };
    let (global, stages) = stages(df);

    // Empty continuation lines, MAINTAINER, FROM names (every stage).
    for ins in &df.instructions {
        let c = cfg.for_instruction(ins);
        if ins.empty_continuation {
            lint.run(
                &c,
                &NO_EMPTY_CONTINUATION,
                ins.end_line,
                "Empty continuation line".into(),
            );
        }
        if ins.kind == Kind::Maintainer {
            lint.run(
                &c,
                &MAINTAINER_DEPRECATED,
                ins.line,
                "Maintainer instruction is deprecated in favor of using label".into(),
            );
        }
    }
    let mut seen_names = HashSet::new();
    for st in &stages {
        let c = cfg.for_instruction(st.from);
        let words: Vec<String> = st.from.words().into_iter().map(|(w, _)| w).collect();
        if words.len() >= 3 && words[1].eq_ignore_ascii_case("as") {
            let name = &words[2];
            if *name != name.to_lowercase() {
                lint.run(
                    &c,
                    &STAGE_NAME_CASING,
                    st.from.line,
                    format!("Stage name '{name}' should be lowercase"),
                );
            }
            let from = keyword(st.from);
            let lower = from == from.to_lowercase();
            let upper = from == from.to_uppercase();
            let as_ok = if lower {
                words[1] == words[1].to_lowercase()
            } else if upper {
                words[1] == words[1].to_uppercase()
            } else {
                true
            };
            if !as_ok {
                lint.run(
                    &c,
                    &FROM_AS_CASING,
                    st.from.line,
                    format!("'{}' and '{from}' keywords' casing do not match", words[1]),
                );
            }
            validate_description(&mut lint, &c, "FROM", &[name.to_lowercase()], st.from);
        }
        if let Some(n) = &st.name {
            if n == "scratch" || n == "context" {
                lint.run(
                    &c,
                    &RESERVED_STAGE_NAME,
                    st.from.line,
                    format!("Stage name should not use the same name as reserved stage {n:?}"),
                );
            }
            if !seen_names.insert(n.clone()) {
                lint.run(
                    &c,
                    &DUPLICATE_STAGE_NAME,
                    st.from.line,
                    format!("Duplicate stage name {n:?}, stage names should be unique"),
                );
            }
        }
    }
    // Instruction casing against the majority (FROMs and stage commands).
    let all_cmds: Vec<&Instruction> = stages
        .iter()
        .flat_map(|s| std::iter::once(s.from).chain(s.commands.iter().copied()))
        .collect();
    let (mut lower, mut upper) = (0, 0);
    for ins in &all_cmds {
        let k = keyword(ins);
        if self_consistent(k) {
            if k == k.to_lowercase() {
                lower += 1;
            } else {
                upper += 1;
            }
        }
    }
    let majority_lower = lower > upper;
    for ins in &all_cmds {
        let k = keyword(ins);
        let wrong = if majority_lower {
            (k != k.to_lowercase()).then_some("lowercase")
        } else {
            (k != k.to_uppercase()).then_some("uppercase")
        };
        if let Some(casing) = wrong {
            let c = cfg.for_instruction(ins);
            lint.run(
                &c,
                &CONSISTENT_INSTRUCTION_CASING,
                ins.line,
                format!("Command '{k}' should match the case of the command majority ({casing})"),
            );
        }
    }

    // Global ARGs: secrets, descriptions; the FROM expansion environment.
    let mut global_vars: Vec<(String, String)> = opts.automatic_args.to_vec();
    let mut declared: Vec<String> = opts.automatic_args.iter().map(|(k, _)| k.clone()).collect();
    let mut defaults_only: Vec<(String, String)> = opts.automatic_args.to_vec();
    for ins in &global {
        if ins.kind != Kind::Arg {
            continue;
        }
        let c = cfg.for_instruction(ins);
        let (keys, _) = pairs(ins);
        for k in &keys {
            validate_secret(&mut lint, &c, "ARG", k, ins.line);
        }
        validate_description(&mut lint, &c, "ARG", &keys, ins);
        if let Args::Text(t) = &ins.args {
            for w in lexer::split_words(t, ins.escape) {
                let (k, v) = match w.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (w.clone(), None),
                };
                declared.push(k.clone());
                let from_cli = opts
                    .build_args
                    .iter()
                    .rev()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.clone());
                let expanded = v
                    .as_deref()
                    .map(|v| lexer::expand_word(v, &global_vars, ins.escape).unwrap_or_default());
                if let Some(v) = from_cli.clone().or(expanded.clone()) {
                    global_vars.push((k.clone(), v));
                }
                if let Some(v) = v
                    .as_deref()
                    .map(|v| lexer::expand_word(v, &defaults_only, ins.escape).unwrap_or_default())
                {
                    defaults_only.push((k.clone(), v));
                }
            }
        }
    }
    for st in &stages {
        let c = cfg.for_instruction(st.from);
        let rec = Recording::new(&global_vars);
        let _ = lexer::expand_word(&st.base, &rec, st.from.escape);
        undeclared_in_from(&mut lint, &c, &rec, &declared, st.from.line);
        // The base image name with only the defaults must still be a name.
        if let Ok(name) = lexer::expand_word(&st.base, &defaults_only, st.from.escape) {
            let stage_ref = stages
                .iter()
                .any(|s| s.name.as_deref() == Some(name.to_lowercase().as_str()));
            if !stage_ref && name != "scratch" && !valid_reference(&name) {
                lint.run(
                    &c,
                    &INVALID_DEFAULT_ARG_IN_FROM,
                    st.from.line,
                    format!(
                        "Default value for ARG {} results in empty or invalid base image name",
                        st.base
                    ),
                );
            }
        }
        if let Some(p) = st.from.flag("platform").and_then(|f| f.value.clone()) {
            let rec = Recording::new(&global_vars);
            let result = lexer::expand_word(&p, &rec, st.from.escape).unwrap_or_default();
            undeclared_in_from(&mut lint, &c, &rec, &declared, st.from.line);
            let (m, u) = (rec.matched.borrow(), rec.unmatched.borrow());
            if m.len() == 1 && u.is_empty() && m.contains("TARGETPLATFORM") {
                let target =
                    Vars::get(global_vars.as_slice(), "TARGETPLATFORM").unwrap_or_default();
                if result == target {
                    lint.run(&c, &REDUNDANT_TARGET_PLATFORM, st.from.line, format!("Setting platform to predefined {p} in FROM is redundant as this is the default behavior"));
                }
            }
            if m.is_empty() && u.is_empty() {
                if let Some(pl) = crate::image::Platform::parse(&result) {
                    let name = st.name.clone().unwrap_or_default();
                    if !name.contains(&pl.os) && !name.contains(&pl.architecture) {
                        lint.run(
                            &c,
                            &FROM_PLATFORM_FLAG_CONST_DISALLOWED,
                            st.from.line,
                            format!(
                                "FROM --platform flag should not use constant value {result:?}"
                            ),
                        );
                    }
                }
            }
        }
    }

    // What each checked stage does.
    let by_name: HashMap<&str, usize> = stages
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.name.as_deref().map(|n| (n, i)))
        .collect();
    #[derive(Clone, Default)]
    struct State {
        shell: bool,
        workdir_set: bool,
        vars: Vec<String>,
    }
    const ONCE: [Kind; 3] = [Kind::Cmd, Kind::Entrypoint, Kind::Healthcheck];
    let mut states: Vec<Option<State>> = vec![None; stages.len()];
    for (i, st) in stages.iter().enumerate() {
        let base_stage = by_name
            .get(st.base.to_lowercase().as_str())
            .copied()
            .filter(|&b| b < i);
        let base_name =
            lexer::expand_word(&st.base, &global_vars, st.from.escape).unwrap_or_default();
        let base_stage = base_stage.or_else(|| {
            by_name
                .get(base_name.to_lowercase().as_str())
                .copied()
                .filter(|&b| b < i)
        });
        let mut s = match base_stage.and_then(|b| states[b].clone()) {
            Some(s) => s,
            None => State {
                // Only the stages checked: a build does not resolve the others.
                vars: if !opts.stages.is_none_or(|set| set.contains(&i))
                    || base_name == "scratch"
                    || base_name.is_empty()
                {
                    Vec::new()
                } else {
                    (opts.image_env)(&base_name)
                },
                ..Default::default()
            },
        };
        let checked = opts.stages.is_none_or(|set| set.contains(&i));
        // CMD, ENTRYPOINT, HEALTHCHECK set twice in the stage: the first is ignored.
        let mut last_of: HashMap<Kind, &Instruction> = HashMap::new();
        for ins in &st.commands {
            if checked && ONCE.contains(&ins.kind) {
                if let Some(prev) = last_of.insert(ins.kind, ins) {
                    let c = cfg.for_instruction(prev);
                    lint.run(&c, &MULTIPLE_INSTRUCTIONS_DISALLOWED, prev.line, format!("Multiple {} instructions should not be used in the same stage because only the last one will be used", keyword(ins)));
                }
            }
        }
        for ins in &st.commands {
            let c = cfg.for_instruction(ins);
            let mut run = |rule: &Rule, line: usize, detail: String| {
                if checked {
                    lint.run(&c, rule, line, detail);
                }
            };
            // Variables used before they are defined.
            if matches!(
                ins.kind,
                Kind::Env
                    | Kind::Arg
                    | Kind::Copy
                    | Kind::Add
                    | Kind::Workdir
                    | Kind::User
                    | Kind::Label
                    | Kind::Expose
                    | Kind::Volume
                    | Kind::Stopsignal
            ) {
                let known: Vec<(String, String)> =
                    s.vars.iter().map(|k| (k.clone(), String::new())).collect();
                let rec = Recording::new(&known);
                if let Args::Text(t) = &ins.args {
                    let words = lexer::split_words(t, ins.escape);
                    for w in &words {
                        // In ARG/ENV/LABEL, the value side.
                        let w = match ins.kind {
                            Kind::Arg | Kind::Env | Kind::Label => {
                                w.split_once('=').map_or("", |(_, v)| v)
                            }
                            _ => w.as_str(),
                        };
                        let _ = lexer::expand_word(w, &rec, ins.escape);
                    }
                }
                for u in rec.unmatched.borrow().iter() {
                    let sug = suggest(u, &s.vars)
                        .map(|m| format!(" (did you mean ${m}?)"))
                        .unwrap_or_default();
                    run(
                        &UNDEFINED_VAR,
                        ins.line,
                        format!("Usage of undefined variable '${u}'{sug}"),
                    );
                }
            }
            match ins.kind {
                Kind::Env | Kind::Label | Kind::Arg => {
                    let (keys, legacy) = pairs(ins);
                    let what = keyword(ins).to_string();
                    if legacy {
                        run(&LEGACY_KEY_VALUE_FORMAT, ins.line, format!("\"{what} key=value\" should be used instead of legacy \"{what} key value\" format"));
                    }
                    let what = ins.kind.as_str().to_uppercase();
                    if ins.kind != Kind::Label {
                        for k in &keys {
                            if checked {
                                validate_secret(&mut lint, &c, &what, k, ins.line);
                            }
                        }
                        s.vars.extend(keys.iter().cloned());
                    }
                    if ins.kind == Kind::Arg && checked {
                        validate_description(&mut lint, &c, "ARG", &keys, ins);
                    }
                }
                Kind::Shell => s.shell = true,
                Kind::Cmd | Kind::Entrypoint if matches!(ins.args, Args::Text(_)) && !s.shell => {
                    run(&JSON_ARGS_RECOMMENDED, ins.line, format!("JSON arguments recommended for {} to prevent unintended behavior related to OS signals", keyword(ins)));
                }
                Kind::Workdir => {
                    let path = ins
                        .words()
                        .first()
                        .map(|(w, _)| w.clone())
                        .unwrap_or_default();
                    if !s.workdir_set && !path.starts_with('/') && !path.starts_with('$') {
                        run(&WORKDIR_RELATIVE_PATH, ins.line, format!("Relative workdir {path:?} can have unexpected results if the base image changes"));
                    }
                    s.workdir_set = true;
                }
                Kind::Expose => {
                    for (p, _) in ins.words() {
                        if p.contains(':') {
                            run(&EXPOSE_INVALID_FORMAT, ins.line, format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{p}'"));
                        }
                        if let Some((_, proto)) = p.rsplit_once('/') {
                            if proto != proto.to_lowercase() {
                                run(&EXPOSE_PROTO_CASING, ins.line, format!("Defined protocol '{p}' in EXPOSE instruction should be lowercase"));
                            }
                        }
                    }
                }
                Kind::Copy | Kind::Add if ins.flag("from").is_none() => {
                    if let Some(m) = opts.ignore.filter(|m| !m.has_exclusions() && !m.is_empty()) {
                        let srcs: Vec<String> = match &ins.args {
                            Args::Exec(v) => v[..v.len().saturating_sub(1)].to_vec(),
                            Args::Text(_) => {
                                let w = ins.words();
                                w[..w.len().saturating_sub(1)]
                                    .iter()
                                    .map(|(x, _)| x.clone())
                                    .collect()
                            }
                        };
                        let cmd = if ins.kind == Kind::Add { "Add" } else { "Copy" };
                        for src in srcs
                            .iter()
                            .filter(|s| !s.starts_with("<<") && !s.contains("://"))
                        {
                            let clean = crate::path::clean(&format!("/{src}"));
                            let rel = clean.trim_start_matches('/');
                            let (shown, ignored) = if rel.is_empty() {
                                (
                                    ".".to_string(),
                                    m.patterns()
                                        .iter()
                                        .any(|p| matches!(*p, "*" | "**" | "**/*")),
                                )
                            } else {
                                (rel.to_string(), m.excluded(rel))
                            };
                            if ignored {
                                run(&COPY_IGNORED_FILE, ins.line, format!("Attempting to {cmd} file {shown:?} that is excluded by .dockerignore"));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        states[i] = Some(s);
    }
    let error = cfg.error && !lint.found.is_empty();
    Report {
        findings: lint.found.into_iter().collect(),
        error,
    }
}

/// UndefinedArgInFrom: the names a FROM's expansion looked up that no ARG declares.
fn undeclared_in_from(
    lint: &mut Lint,
    cfg: &Config,
    rec: &Recording,
    declared: &[String],
    line: usize,
) {
    for u in rec
        .unmatched
        .borrow()
        .iter()
        .filter(|u| !declared.contains(u))
    {
        let s = suggest(u, declared)
            .map(|m| format!(" (did you mean {m}?)"))
            .unwrap_or_default();
        lint.run(
            cfg,
            &UNDEFINED_ARG_IN_FROM,
            line,
            format!("FROM argument '{u}' is not declared{s}"),
        );
    }
}

fn validate_secret(lint: &mut Lint, cfg: &Config, what: &str, key: &str, line: usize) {
    if has_token(key, &SECRET_TOKENS) && !has_token(key, &ALLOW_TOKENS) {
        lint.run(
            cfg,
            &SECRETS_USED_IN_ARG_OR_ENV,
            line,
            format!("Do not use ARG or ENV instructions for sensitive data ({what} {key:?})"),
        );
    }
}

/// A description comment right above a FROM or ARG must start with its name.
fn validate_description(
    lint: &mut Lint,
    cfg: &Config,
    what: &str,
    keys: &[String],
    ins: &Instruction,
) {
    let (Some(last), Some(first)) = (ins.comments.last(), keys.first()) else {
        return;
    };
    let word = last.split(' ').next().unwrap_or("");
    if keys.iter().any(|k| k == word)
        || last.starts_with("check=")
        || last.starts_with("syntax=")
        || last.starts_with("escape=")
    {
        return;
    }
    let example = if keys.len() > 1 {
        "<arg_key>"
    } else {
        first.as_str()
    };
    lint.run(
        cfg,
        &INVALID_DEFINITION_DESCRIPTION,
        ins.line,
        format!("Comment for {what} should follow the format: `# {example} <description>`"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_configs_secrets_and_references() {
        assert_eq!(
            JSON_ARGS_RECOMMENDED.url(),
            "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/"
        );
        assert_eq!(
            FROM_PLATFORM_FLAG_CONST_DISALLOWED.url(),
            "https://docs.docker.com/go/dockerfile/rule/from-platform-flag-const-disallowed/"
        );
        let c = Config::parse("skip=A,B;error=true;experimental=all").expect("parse");
        assert_eq!(c.skip, ["A", "B"]);
        assert!(c.error && c.experimental_all && !c.skip_all);
        assert!(Config::parse("skip").is_err());
        assert!(Config::parse("error=maybe").is_err());
        assert!(Config::parse("colour=red").is_err());
        for (k, secret) in [
            ("SECRET_PASSPHRASE", true),
            ("super_duper_secret_token", true),
            ("git_key", true),
            ("apikey", true),
            ("sunflower", false),
            ("PUBLIC_KEY", false),
            ("password_file", false),
            ("AUTH_MODULE_VERSION", false),
        ] {
            let flagged = has_token(k, &SECRET_TOKENS) && !has_token(k, &ALLOW_TOKENS);
            assert_eq!(flagged, secret, "{k}");
        }
        for (r, ok) in [
            ("busybox", true),
            ("busybox:latest", true),
            ("127.0.0.1:5000/library/busybox:1.36", true),
            ("busybox:", false),
            ("", false),
            ("Busybox", false),
            ("a@sha256:", false),
        ] {
            assert_eq!(valid_reference(r), ok, "{r}");
        }
    }
}
