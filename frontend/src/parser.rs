//! Dockerfile syntax: directives, comments, line continuations, here-documents and
//! instructions with their flags, after BuildKit's `frontend/dockerfile/parser` and
//! `instructions` packages.
//!
//! kiln used `parse-dockerfile` until it needed more than it offers: that crate finds
//! a here-document only when it opens a `RUN` line and only one per line, while
//! BuildKit accepts `RUN python3 <<EOF`, several here-documents on one line and
//! here-documents inside `ONBUILD`. BuildKit's own parser is line-oriented and small,
//! so this module follows it step by step; every instruction keeps the file offsets
//! of its parts so that later errors can point at `Dockerfile:LINE:COL`.

use crate::lexer::{Lex, Vars};
use crate::Error;
use std::fmt;

/// Instruction keywords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Add,
    Arg,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Expose,
    From,
    Healthcheck,
    Label,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    Stopsignal,
    User,
    Volume,
    Workdir,
}

impl Kind {
    pub const ALL: [Kind; 18] = [
        Kind::Add,
        Kind::Arg,
        Kind::Cmd,
        Kind::Copy,
        Kind::Entrypoint,
        Kind::Env,
        Kind::Expose,
        Kind::From,
        Kind::Healthcheck,
        Kind::Label,
        Kind::Maintainer,
        Kind::Onbuild,
        Kind::Run,
        Kind::Shell,
        Kind::Stopsignal,
        Kind::User,
        Kind::Volume,
        Kind::Workdir,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Add => "ADD",
            Kind::Arg => "ARG",
            Kind::Cmd => "CMD",
            Kind::Copy => "COPY",
            Kind::Entrypoint => "ENTRYPOINT",
            Kind::Env => "ENV",
            Kind::Expose => "EXPOSE",
            Kind::From => "FROM",
            Kind::Healthcheck => "HEALTHCHECK",
            Kind::Label => "LABEL",
            Kind::Maintainer => "MAINTAINER",
            Kind::Onbuild => "ONBUILD",
            Kind::Run => "RUN",
            Kind::Shell => "SHELL",
            Kind::Stopsignal => "STOPSIGNAL",
            Kind::User => "USER",
            Kind::Volume => "VOLUME",
            Kind::Workdir => "WORKDIR",
        }
    }

    fn parse(word: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(word))
    }

    /// The flags BuildKit's dockerfile:1 frontend accepts on this instruction.
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Kind::From => &["platform"],
            Kind::Run => &["mount", "network", "security", "device"],
            Kind::Copy => &["from", "chown", "chmod", "link", "parents", "exclude"],
            Kind::Add => &[
                "chown",
                "chmod",
                "link",
                "checksum",
                "keep-git-dir",
                "exclude",
                "unpack",
            ],
            Kind::Healthcheck => &[
                "interval",
                "timeout",
                "start-period",
                "start-interval",
                "retries",
            ],
            _ => &[],
        }
    }

    fn takes_heredocs(self) -> bool {
        matches!(self, Kind::Run | Kind::Copy | Kind::Add)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `--name` or `--name=value` before an instruction's arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    pub name: String,
    pub value: Option<String>,
    /// File offset of the flag's `--`.
    pub at: usize,
}

/// An instruction's arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Args {
    /// The JSON array ("exec") form.
    Exec(Vec<String>),
    /// Everything else: the text after the flags, continuation lines joined and
    /// escapes kept as written.
    Text(String),
}

/// A here-document: `<<[-]NAME` on the instruction line and the lines up to `NAME`.
#[derive(Debug, Clone, PartialEq)]
pub struct Heredoc {
    pub name: String,
    /// Whether the content is expanded (the delimiter was not quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped.
    pub chomp: bool,
    /// The lines, each with its newline, as written.
    pub content: String,
}

impl Heredoc {
    /// The content with leading tabs stripped when the delimiter was `<<-`.
    pub fn text(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        self.content
            .split_inclusive('\n')
            .map(|l| l.trim_start_matches('\t'))
            .collect()
    }
}

/// One instruction.
#[derive(Debug, Clone)]
pub struct Instruction {
    pub kind: Kind,
    pub flags: Vec<Flag>,
    pub args: Args,
    pub heredocs: Vec<Heredoc>,
    /// `ONBUILD`'s trigger.
    pub trigger: Option<Box<Instruction>>,
    /// 1-based first and last line.
    pub line: usize,
    pub end_line: usize,
    /// File offset of the keyword.
    pub at: usize,
    /// File offset of each byte of the argument text (`Args::Text`, or the JSON).
    map: Vec<usize>,
    /// The instruction line as written, continuations joined (BuildKit's `Original`).
    pub original: String,
    /// The file's escape character.
    pub escape: char,
    /// Whether a continuation line in it was empty (BuildKit's NoEmptyContinuation).
    pub empty_continuation: bool,
    /// The comment lines right above it (no blank line between), `#` stripped, as
    /// BuildKit's `PrevComment`: descriptions, and `# check=` for this instruction.
    pub comments: Vec<String>,
}

impl PartialEq for Instruction {
    /// Equal in meaning: positions and the original spelling do not count.
    fn eq(&self, o: &Self) -> bool {
        self.kind == o.kind
            && self.args == o.args
            && self.heredocs == o.heredocs
            && self.trigger == o.trigger
            && self.flags.len() == o.flags.len()
            && self
                .flags
                .iter()
                .zip(&o.flags)
                .all(|(a, b)| a.name == b.name && a.value == b.value)
    }
}

impl Instruction {
    /// File offset of byte `i` of the argument text.
    pub fn offset(&self, i: usize) -> usize {
        self.map
            .get(i)
            .or(self.map.last())
            .copied()
            .unwrap_or(self.at)
    }

    /// File offset where the arguments start.
    pub fn args_at(&self) -> usize {
        self.offset(0)
    }

    /// The text form's whitespace-separated words and their offsets (BuildKit's
    /// `parseStringsWhitespaceDelimited`), or the JSON items at the arguments' offset.
    pub fn words(&self) -> Vec<(String, usize)> {
        match &self.args {
            Args::Exec(v) => v.iter().map(|s| (s.clone(), self.args_at())).collect(),
            Args::Text(t) => {
                let mut out = Vec::new();
                let mut start = None;
                for (i, c) in t.char_indices().chain(std::iter::once((t.len(), ' '))) {
                    let ws = matches!(c, ' ' | '\t' | '\x0b' | '\x0c' | '\r');
                    match (ws, start) {
                        (false, None) => start = Some(i),
                        (true, Some(s)) => {
                            out.push((t[s..i].to_string(), self.offset(s)));
                            start = None;
                        }
                        _ => {}
                    }
                }
                out
            }
        }
    }

    /// Moves every position to `at` on `line` (for ONBUILD triggers, which report
    /// errors at the FROM that ran them).
    pub fn relocate(&mut self, at: usize, line: usize) {
        self.at = at;
        self.line = line;
        self.end_line = line;
        self.map.iter_mut().for_each(|m| *m = at);
        self.flags.iter_mut().for_each(|f| f.at = at);
        if let Some(t) = &mut self.trigger {
            t.relocate(at, line);
        }
    }

    pub fn flag(&self, name: &str) -> Option<&Flag> {
        self.flags.iter().rev().find(|f| f.name == name)
    }
}

/// A directive: `# syntax=...`, `# escape=...` or `# check=...` at the top.
#[derive(Debug, Clone, PartialEq)]
pub struct Directive {
    pub value: String,
    pub line: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directives {
    pub syntax: Option<Directive>,
    pub escape: Option<Directive>,
    pub check: Option<Directive>,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    pub directives: Directives,
    pub escape: char,
    pub instructions: Vec<Instruction>,
    /// Deprecation warnings, as BuildKit prints them.
    pub warnings: Vec<String>,
}

impl PartialEq for Dockerfile {
    fn eq(&self, o: &Self) -> bool {
        self.escape == o.escape
            && self.instructions == o.instructions
            && self.directives.syntax.as_ref().map(|d| &d.value)
                == o.directives.syntax.as_ref().map(|d| &d.value)
            && self.directives.check.as_ref().map(|d| &d.value)
                == o.directives.check.as_ref().map(|d| &d.value)
    }
}

struct Line<'a> {
    /// File offset of the line's first byte.
    at: usize,
    /// The line with its line ending.
    raw: &'a str,
}

/// The line without trailing `\r` and `\n` (BuildKit's `trimNewline`).
fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(s: &str) -> bool {
    trim_newline(s).trim_start().starts_with('#')
}

/// Drops a trailing line-continuation escape (and the blanks after it); `true` when
/// the line ends the instruction.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    match t.strip_suffix(escape) {
        Some("") => ("", false),
        Some(before) if !before.ends_with(escape) => (before, false),
        _ => (line, true),
    }
}

/// Parses a directive line `#key=value`; `None` when it is not one.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let key_len = rest
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_alphabetic() || (*i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if key_len == 0 {
        return None;
    }
    let (key, after) = rest.split_at(key_len);
    let value = after.trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((key.to_ascii_lowercase(), value.to_string()))
}

struct Parser<'a> {
    file: &'a str,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl Parser<'_> {
    fn err(&self, offset: usize, message: impl Into<String>) -> Error {
        crate::error_at(self.file, self.text, &self.line_starts, offset, message)
    }
}

/// Parses a Dockerfile. `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Dockerfile, Error> {
    let line_starts = crate::line_starts(text);
    let p = Parser {
        file,
        text,
        line_starts,
    };
    let mut lines: Vec<Line<'_>> = Vec::new();
    let mut at = 0;
    for raw in text.split_inclusive('\n') {
        lines.push(Line { at, raw });
        at += raw.len();
    }
    if let Some(first) = lines.first_mut() {
        if let Some(rest) = first.raw.strip_prefix('\u{feff}') {
            first.raw = rest;
            first.at += '\u{feff}'.len_utf8();
        }
    }
    let mut directives = Directives::default();
    let mut directives_done = false;
    let mut escape = '\\';
    let mut instructions = Vec::new();
    let mut warnings = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = &lines[i];
        i += 1;
        let token = trim_newline(l.raw);
        let lead = token.len() - token.trim_start().len();
        let token = &token[lead..];
        if !directives_done {
            match directive(token) {
                Some((k, v)) if matches!(k.as_str(), "syntax" | "escape" | "check") => {
                    let slot = match k.as_str() {
                        "syntax" => &mut directives.syntax,
                        "escape" => &mut directives.escape,
                        _ => &mut directives.check,
                    };
                    if slot.is_some() {
                        return Err(p.err(
                            l.at + lead,
                            format!("only one {k} parser directive can be used"),
                        ));
                    }
                    if k == "escape" {
                        escape = match v.as_str() {
                            "\\" => '\\',
                            "`" => '`',
                            _ => {
                                return Err(p.err(
                                    l.at + lead,
                                    format!("invalid escape token '{v}' does not match ` or \\"),
                                ))
                            }
                        };
                    }
                    *slot = Some(Directive { value: v, line: i });
                    continue;
                }
                _ => directives_done = true,
            }
        }
        if token.starts_with('#') {
            continue;
        }
        let start_line = i;
        let mut joined = String::new();
        let mut map = Vec::new();
        let (first, mut eol) = trim_continuation(token, escape);
        push_mapped(&mut joined, &mut map, first, l.at + lead);
        if eol && joined.is_empty() {
            continue;
        }
        let mut empty_continuation = false;
        while !eol && i < lines.len() {
            let c = &lines[i];
            i += 1;
            if is_comment(c.raw) {
                continue;
            }
            let tok = trim_newline(c.raw);
            if tok.trim_start().is_empty() {
                empty_continuation = true;
                continue;
            }
            let (part, e) = trim_continuation(tok, escape);
            eol = e;
            push_mapped(&mut joined, &mut map, part, c.at);
        }
        if empty_continuation {
            warnings.push(format!(
                "[WARNING]: Empty continuation line found in:\n    {joined}"
            ));
        }
        let mut ins = p.instruction(&joined, &map, escape, start_line)?;
        ins.empty_continuation = empty_continuation;
        ins.comments = comments_above(text, start_line);
        // Here-documents: RUN, COPY and ADD in text form, also as ONBUILD triggers.
        let host = ins.trigger.as_deref().map_or(ins.kind, |t| t.kind);
        let text_form = match ins.trigger.as_deref() {
            Some(t) => matches!(t.args, Args::Text(_)),
            None => matches!(ins.args, Args::Text(_)),
        };
        if host.takes_heredocs() && text_form {
            let mut docs = heredocs_in(&joined);
            for doc in &mut docs {
                let mut done = false;
                while i < lines.len() {
                    let c = &lines[i];
                    i += 1;
                    let mut t = trim_newline(c.raw);
                    if doc.chomp {
                        t = t.trim_start_matches('\t');
                    }
                    if t == doc.name {
                        done = true;
                        break;
                    }
                    doc.content.push_str(c.raw);
                }
                if !done {
                    return Err(p.err(
                        ins.at,
                        format!(
                            "unterminated heredoc: expected a line holding only {:?} before the end of the file",
                            doc.name
                        ),
                    ));
                }
            }
            match ins.trigger.as_deref_mut() {
                Some(t) => t.heredocs = docs,
                None => ins.heredocs = docs,
            }
        }
        ins.end_line = i;
        instructions.push(ins);
    }
    if instructions.is_empty() {
        return Err(p.err(text.len(), "file with no instructions"));
    }
    let escape = directives
        .escape
        .as_ref()
        .and_then(|d| d.value.chars().next())
        .unwrap_or('\\');
    Ok(Dockerfile {
        directives,
        escape,
        instructions,
        warnings,
    })
}

fn push_mapped(out: &mut String, map: &mut Vec<usize>, part: &str, at: usize) {
    out.push_str(part);
    map.extend((0..part.len()).map(|k| at + k));
}

/// Here-document openers on an instruction line (BuildKit's `heredocsFromLine`):
/// the words of the line, quotes and escapes kept, that look like `[n]<<[-]WORD`.
fn heredocs_in(line: &str) -> Vec<Heredoc> {
    let none: Vec<(String, String)> = Vec::new();
    let raw = Lex {
        escape: '\\',
        raw_quotes: true,
        raw_escapes: true,
        skip_unset: true,
        skip_quotes: false,
    };
    let Ok((_, words)) = raw.process(line, &none) else {
        return Vec::new();
    };
    words
        .iter()
        .filter_map(|w| heredoc_word(w, &none))
        .collect()
}

/// BuildKit's `ParseHeredoc`: `word` as a here-document opener (`[n]<<[-]NAME`).
/// The comment lines directly above 1-based `line`, top first, `#` and spaces
/// stripped; a blank line or an empty comment ends them, as in BuildKit's parser, and
/// the parser directives at the top of the file are not comments.
fn comments_above(text: &str, line: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().take(line.saturating_sub(1)).collect();
    let directives = lines
        .iter()
        .take_while(|l| {
            l.trim()
                .strip_prefix('#')
                .and_then(|c| c.split_once('='))
                .is_some_and(|(k, _)| {
                    matches!(
                        k.trim().to_lowercase().as_str(),
                        "syntax" | "escape" | "check"
                    )
                })
        })
        .count();
    let mut out = Vec::new();
    for l in lines[directives..].iter().rev() {
        match l.trim().strip_prefix('#').map(str::trim) {
            Some("") | None => break,
            Some(c) => out.push(c.to_string()),
        }
    }
    out.reverse();
    out
}

pub fn heredoc_opener(word: &str) -> Option<Heredoc> {
    let none: Vec<(String, String)> = Vec::new();
    heredoc_word(word, &none)
}

fn heredoc_word<V: Vars + ?Sized>(word: &str, none: &V) -> Option<Heredoc> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let rest = word[digits..].strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let plain = Lex {
        escape: '\\',
        raw_quotes: false,
        raw_escapes: false,
        skip_unset: true,
        skip_quotes: false,
    };
    let (_, words) = plain.process(rest, none).ok()?;
    if words.len() != 1 {
        return None;
    }
    let quoted = Lex {
        raw_quotes: true,
        ..plain
    };
    let (_, raw_words) = quoted.process(rest, none).ok()?;
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    let expand = raw_words.first().map(|r| quotes(r)) == Some(quotes(&words[0]));
    Some(Heredoc {
        name: words[0].clone(),
        expand,
        chomp,
        content: String::new(),
    })
}

/// BuildKit's `extractBuilderFlags`: the leading `--flag[=value]` words (quotes and
/// escapes processed) and the index where the rest of the line starts.
fn extract_flags(line: &str) -> (Vec<(String, usize)>, usize) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let b: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut word_at = 0;
    let mut blank_ok = false;
    let mut k = 0;
    while k <= b.len() {
        let end = k == b.len();
        let (pos, ch) = if end { (line.len(), '\0') } else { b[k] };
        if phase == Phase::Spaces {
            if end {
                break;
            }
            if ch.is_whitespace() {
                k += 1;
                continue;
            }
            if ch != '-' || b.get(k + 1).map(|x| x.1) != Some('-') {
                return (words, pos);
            }
            phase = Phase::Word;
            word_at = pos;
        }
        if end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push((word, word_at));
            }
            break;
        }
        match phase {
            Phase::Word => {
                if ch.is_whitespace() {
                    phase = Phase::Spaces;
                    if word == "--" {
                        return (words, pos);
                    }
                    if blank_ok || !word.is_empty() {
                        words.push((std::mem::take(&mut word), word_at));
                    }
                    word.clear();
                    blank_ok = false;
                    k += 1;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                    k += 1;
                    continue;
                }
            }
            Phase::Quote(q) if ch == q => {
                phase = Phase::Word;
                k += 1;
                continue;
            }
            Phase::Quote(_) | Phase::Spaces => {}
        }
        // A character of the word, in or out of quotes; `\` takes the next one as is
        // (and is dropped at the very end of the line).
        k += 1;
        if ch != '\\' {
            word.push(ch);
        } else if k < b.len() {
            word.push(b[k].1);
            k += 1;
        }
    }
    (words, line.len())
}

/// The JSON array form, when `s` is one (an array of strings); BuildKit treats
/// anything else, even a broken array, as the text form.
pub fn maybe_json(s: &str) -> Option<Vec<String>> {
    if !s.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(s).ok()
}

impl Parser<'_> {
    /// Parses one instruction line (continuations joined); `map` gives each byte's
    /// file offset.
    fn instruction(
        &self,
        line: &str,
        map: &[usize],
        escape: char,
        start_line: usize,
    ) -> Result<Instruction, Error> {
        let off = |i: usize| map.get(i).or(map.last()).copied().unwrap_or(0);
        let lead = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        let kw_end = trimmed
            .find([' ', '\t', '\x0b', '\x0c', '\r'])
            .unwrap_or(trimmed.len());
        let keyword = &trimmed[..kw_end];
        let at = off(lead);
        let kind = Kind::parse(keyword).ok_or_else(|| {
            self.err(
                at,
                format!(
                    "unknown instruction: {keyword} (expected one of {})",
                    Kind::ALL.map(Kind::as_str).join(", ")
                ),
            )
        })?;
        let args_start = lead + kw_end;
        let after_kw = &line[args_start..];
        let (raw_flags, rest_at) = extract_flags(after_kw);
        let mut flags = Vec::new();
        for (w, pos) in raw_flags {
            let fat = off(args_start + pos);
            let body = w.strip_prefix("--").unwrap_or(&w);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            if !kind.flags().contains(&name.as_str()) {
                let expected = if kind.flags().is_empty() {
                    format!("{kind} takes no flags")
                } else {
                    format!("{kind} takes --{}", kind.flags().join(", --"))
                };
                return Err(self.err(fat, format!("unknown flag: --{name} ({expected})")));
            }
            flags.push(Flag {
                name,
                value,
                at: fat,
            });
        }
        let rest_raw = &after_kw[rest_at..];
        let rest_lead = rest_raw.len() - rest_raw.trim_start().len();
        let rest = rest_raw.trim();
        let rest_off = args_start + rest_at + rest_lead;
        let rest_map: Vec<usize> = (0..rest.len().max(1)).map(|k| off(rest_off + k)).collect();
        let mut ins = Instruction {
            kind,
            flags,
            args: Args::Text(rest.to_string()),
            heredocs: Vec::new(),
            trigger: None,
            line: start_line,
            end_line: start_line,
            at,
            map: rest_map,
            original: trimmed.to_string(),
            escape,
            empty_continuation: false,
            comments: Vec::new(),
        };
        let need = |ins: &Instruction, n: usize, what: &str| -> Result<(), Error> {
            if ins.words().len() < n {
                Err(self.err(ins.args_at(), format!("{kind} requires {what}")))
            } else {
                Ok(())
            }
        };
        match kind {
            Kind::Run | Kind::Cmd | Kind::Entrypoint | Kind::Shell => {
                if let Some(v) = maybe_json(rest) {
                    ins.args = Args::Exec(v);
                }
                if kind == Kind::Shell && !matches!(ins.args, Args::Exec(_)) {
                    return Err(self.err(
                        ins.args_at(),
                        "SHELL requires the arguments to be in JSON form, e.g. SHELL [\"/bin/sh\", \"-c\"]",
                    ));
                }
                match &ins.args {
                    Args::Exec(v) if v.is_empty() && matches!(kind, Kind::Run | Kind::Shell) => {
                        return Err(self.err(
                            ins.args_at(),
                            format!("{kind} requires at least one argument"),
                        ))
                    }
                    Args::Text(t) if t.is_empty() => {
                        return Err(self.err(
                            ins.args_at(),
                            format!("{kind} requires at least one argument"),
                        ))
                    }
                    _ => {}
                }
            }
            Kind::Copy | Kind::Add => {
                if let Some(v) = maybe_json(rest) {
                    ins.args = Args::Exec(v);
                }
                need(
                    &ins,
                    2,
                    "at least two arguments: the sources and the destination",
                )?;
            }
            Kind::Volume => {
                if let Some(v) = maybe_json(rest) {
                    ins.args = Args::Exec(v);
                }
                need(&ins, 1, "at least one argument")?;
            }
            Kind::From => {
                let w = ins.words();
                let ok = w.len() == 1 || (w.len() == 3 && w[1].0.eq_ignore_ascii_case("as"));
                if !ok {
                    return Err(self.err(
                        ins.args_at(),
                        "FROM requires either one or three arguments: FROM [--platform=P] IMAGE [AS NAME]",
                    ));
                }
            }
            Kind::Onbuild => {
                if rest.is_empty() {
                    return Err(self.err(ins.args_at(), "ONBUILD requires at least one argument"));
                }
                let sub_map: Vec<usize> = (0..rest.len()).map(|k| off(rest_off + k)).collect();
                let sub = self.instruction(rest, &sub_map, escape, start_line)?;
                if matches!(sub.kind, Kind::Onbuild | Kind::From | Kind::Maintainer) {
                    return Err(self.err(
                        sub.at,
                        format!("{} isn't allowed as an ONBUILD trigger", sub.kind),
                    ));
                }
                ins.trigger = Some(Box::new(sub));
            }
            Kind::Healthcheck => {
                let first = ins.words().first().map(|w| w.0.to_ascii_uppercase());
                match first.as_deref() {
                    Some("NONE") if ins.words().len() == 1 => {}
                    Some("NONE") => {
                        return Err(
                            self.err(ins.args_at(), "HEALTHCHECK NONE takes no other arguments")
                        )
                    }
                    Some("CMD") if ins.words().len() > 1 => {}
                    _ => {
                        return Err(self.err(
                            ins.args_at(),
                            "HEALTHCHECK requires CMD followed by a command, or NONE",
                        ))
                    }
                }
            }
            Kind::Arg
            | Kind::Env
            | Kind::Label
            | Kind::Expose
            | Kind::Maintainer
            | Kind::Stopsignal
            | Kind::User
            | Kind::Workdir => need(&ins, 1, "at least one argument")?,
        }
        Ok(ins)
    }
}

/// Quotes a flag value so that [`extract_flags`] reads it back unchanged.
fn quote_flag(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '\\')) {
        return v.to_string();
    }
    let mut s = String::from("\"");
    for c in v.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

impl fmt::Display for Instruction {
    /// The instruction as Dockerfile text that parses back to an equal instruction.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_line(f)?;
        let docs = match &self.trigger {
            Some(t) => &t.heredocs,
            None => &self.heredocs,
        };
        for d in docs {
            write!(f, "\n{}{}", d.content, d.name)?;
        }
        Ok(())
    }
}

impl Instruction {
    fn write_line(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())?;
        for fl in &self.flags {
            match &fl.value {
                Some(v) => write!(f, " --{}={}", fl.name, quote_flag(v))?,
                None => write!(f, " --{}", fl.name)?,
            }
        }
        match &self.args {
            Args::Exec(v) => {
                let json = serde_json::to_string(v).map_err(|_| fmt::Error)?;
                write!(f, " {json}")
            }
            Args::Text(t) if t.is_empty() => Ok(()),
            Args::Text(t) => {
                if t.starts_with("--") {
                    f.write_str(" --")?;
                }
                write!(f, " {t}")?;
                // A text that ends in the escape character came from a line where a
                // vertical tab (which the argument trim drops, but the continuation
                // check does not skip) followed it; without one it would continue.
                if !trim_continuation(t, self.escape).1 {
                    f.write_str("\u{b}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Dockerfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.directives.syntax {
            writeln!(f, "# syntax={}", d.value)?;
        }
        if self.escape != '\\' {
            writeln!(f, "# escape={}", self.escape)?;
        }
        if let Some(d) = &self.directives.check {
            writeln!(f, "# check={}", d.value)?;
        }
        for i in &self.instructions {
            writeln!(f, "{i}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
