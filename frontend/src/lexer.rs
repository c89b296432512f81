//! Shell-word processing with the semantics of BuildKit's shell lexer
//! (`frontend/dockerfile/shell/lex.go`): quotes, the escape token and `$VAR` /
//! `${VAR...}` expansion. Words are processed, never executed.
//!
//! This is a port, not a reimplementation: the quirks are BuildKit's (a quoted empty
//! string is no word of its own, an escape at the very end is dropped, `${a/p/r}`
//! patterns know `*` and `?` but not bracket expressions), because a Dockerfile must
//! expand to the same words here as under `docker buildx build`.

use regex::Regex;

/// Looks a variable up; `None` means unset (which differs from empty for `${a-w}`).
pub trait Vars {
    /// The value of `name`, or `None` when it is not set.
    fn get(&self, name: &str) -> Option<String>;
}

impl Vars for [(String, String)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

impl Vars for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<String> {
        Vars::get(self.as_slice(), name)
    }
}

/// How words are processed (BuildKit's `Lex` switches).
#[derive(Debug, Clone, Copy)]
pub struct Lex {
    pub escape: char,
    /// Keep quote characters in the result.
    pub raw_quotes: bool,
    /// Keep escape characters in the result.
    pub raw_escapes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset: bool,
    /// Treat quotes as ordinary characters (here-document contents).
    pub skip_quotes: bool,
}

impl Lex {
    /// The lexer Dockerfile instructions use.
    pub fn new(escape: char) -> Lex {
        Lex {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset: false,
            skip_quotes: false,
        }
    }

    /// Processes `word`: the whole result and its split into words.
    pub fn process<V: Vars + ?Sized>(
        &self,
        word: &str,
        vars: &V,
    ) -> Result<(String, Vec<String>), String> {
        let mut sw = ShellWord {
            lex: *self,
            raw_escapes: self.raw_escapes,
            chars: word.chars().collect(),
            pos: 0,
            vars,
        };
        sw.process_stop_on(None, self.raw_escapes)
            .map_err(|e| format!("failed to process {word:?}: {e}"))
    }
}

/// Expands one word (quotes removed, escapes applied, variables substituted), like
/// BuildKit's `ProcessWord`.
pub fn expand_word<V: Vars + ?Sized>(word: &str, vars: &V, escape: char) -> Result<String, String> {
    Lex::new(escape).process(word, vars).map(|r| r.0)
}

/// Expands and splits into words on unquoted whitespace, like BuildKit's `ProcessWords`.
pub fn expand_words<V: Vars + ?Sized>(
    word: &str,
    vars: &V,
    escape: char,
) -> Result<Vec<String>, String> {
    Lex::new(escape).process(word, vars).map(|r| r.1)
}

/// Splits on unquoted whitespace keeping quotes and escapes as written (BuildKit's
/// `parseWords`, used for `ENV`/`LABEL`/`ARG` name=value lists).
pub fn split_words(s: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for ch in s.chars() {
        if escaped {
            cur.push(ch);
            escaped = false;
            continue;
        }
        match quote {
            Some(q) => {
                if ch == escape && q == '"' {
                    escaped = true;
                } else if ch == q {
                    quote = None;
                }
                cur.push(ch);
            }
            None => {
                if ch.is_whitespace() {
                    if !cur.is_empty() {
                        words.push(std::mem::take(&mut cur));
                    }
                    continue;
                }
                if ch == escape {
                    escaped = true;
                } else if ch == '"' || ch == '\'' {
                    quote = Some(ch);
                }
                cur.push(ch);
            }
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// BuildKit's `wordsStruct`: collects words as characters arrive.
#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

struct ShellWord<'a, V: Vars + ?Sized> {
    lex: Lex,
    raw_escapes: bool,
    chars: Vec<char>,
    pos: usize,
    vars: &'a V,
}

const MISSING_BRACE: &str = "syntax error: missing '}'";

impl<V: Vars + ?Sized> ShellWord<'_, V> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), String> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let r = self.stop_on(stop);
        self.raw_escapes = saved;
        r
    }

    fn stop_on(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), String> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let v = self.dollar()?;
                    result.push_str(&v);
                    words.add_string(&v);
                }
                '\'' | '"' if !self.lex.skip_quotes => {
                    let v = if ch == '\'' {
                        self.single_quoted()?
                    } else {
                        self.double_quoted()?
                    };
                    result.push_str(&v);
                    words.add_raw_string(&v);
                }
                _ => {
                    self.pos += 1;
                    let mut ch = ch;
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        // The escape escapes the next character; at the end it is dropped.
                        match self.next() {
                            None => break,
                            Some(n) => ch = n,
                        }
                        words.add_raw_char(ch);
                    } else {
                        words.add_char(ch);
                    }
                    result.push(ch);
                }
            }
        }
        if let Some(s) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {s}"
            ));
        }
        Ok((result, words.finish()))
    }

    fn single_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut s = String::new();
        if self.lex.raw_quotes {
            s.push('\'');
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        s.push('\'');
                    }
                    return Ok(s);
                }
                Some(c) => s.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut s = String::new();
        if self.lex.raw_quotes {
            s.push('"');
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => {
                    self.pos += 1;
                    if self.lex.raw_quotes {
                        s.push('"');
                    }
                    return Ok(s);
                }
                Some('$') => {
                    let v = self.dollar()?;
                    s.push_str(&v);
                }
                Some(c) => {
                    self.pos += 1;
                    let mut c = c;
                    if c == self.lex.escape {
                        if self.raw_escapes {
                            s.push(c);
                        }
                        match self.peek() {
                            // An escape at the end of the word is ignored.
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lex.escape => {
                                self.pos += 1;
                                c = n;
                            }
                            Some(_) => {}
                        }
                    }
                    s.push(c);
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += 1;
                return ch.to_string();
            }
            if !(ch.is_alphanumeric() || ch == '_') {
                break;
            }
            name.push(ch);
            self.pos += 1;
        }
        name
    }

    fn dollar(&mut self) -> Result<String, String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.vars.get(&name) {
                Some(v) => v,
                None if self.lex.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1;
        match self.peek() {
            None => return Err(MISSING_BRACE.into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.name();
        let Some(ch) = self.next() else {
            return Err(MISSING_BRACE.into());
        };
        let value = self.vars.get(&name);
        match ch {
            '}' => Ok(match value {
                Some(v) => v,
                None if self.lex.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let mut chs = ch.to_string();
                let null_is_unset = ch == ':';
                let op = if null_is_unset {
                    let op = self.next().ok_or(MISSING_BRACE)?;
                    chs.push(op);
                    op
                } else {
                    ch
                };
                let (word, _) = match self.process_stop_on(Some('}'), op == '#' || op == '%') {
                    Ok(r) => r,
                    Err(_) if self.peek().is_none() => return Err(MISSING_BRACE.into()),
                    Err(e) => return Err(e),
                };
                let set = value.is_some();
                if self.lex.skip_unset && !set {
                    return Ok(format!("${{{name}{chs}{word}}}"));
                }
                let value = value.unwrap_or_default();
                let unset = !set || (null_is_unset && value.is_empty());
                match op {
                    '-' => Ok(if unset { word } else { value }),
                    '+' => Ok(if unset { String::new() } else { word }),
                    '?' => {
                        if !set {
                            let m = if word.is_empty() {
                                "is not allowed to be unset"
                            } else {
                                &word
                            };
                            Err(format!("{name}: {m}"))
                        } else if null_is_unset && value.is_empty() {
                            let m = if word.is_empty() {
                                "is not allowed to be empty"
                            } else {
                                &word
                            };
                            Err(format!("{name}: {m}"))
                        } else {
                            Ok(value)
                        }
                    }
                    '#' | '%' => {
                        let (greedy, pat) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest.to_string()),
                            None => (false, word),
                        };
                        if op == '%' {
                            trim_suffix(&pat, &value, greedy)
                        } else {
                            trim_prefix(&pat, &value, greedy)
                        }
                    }
                    _ => Err(format!("unsupported modifier ({chs}) in substitution")),
                }
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let (pattern, _) = match self.process_stop_on(Some('/'), true) {
                    Ok(r) => r,
                    Err(_) if self.peek().is_none() => {
                        return Err("syntax error: missing '/' in ${}".into())
                    }
                    Err(e) => return Err(e),
                };
                let (replacement, _) = match self.process_stop_on(Some('}'), true) {
                    Ok(r) => r,
                    Err(_) if self.peek().is_none() => return Err(MISSING_BRACE.into()),
                    Err(e) => return Err(e),
                };
                let Some(value) = value else {
                    if self.lex.skip_unset {
                        return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                    }
                    return Ok(String::new());
                };
                let re = shell_pattern(&pattern, true, false)
                    .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
                Ok(if all {
                    re.replace_all(&value, replacement.as_str()).into_owned()
                } else {
                    match re.find(&value) {
                        Some(m) => {
                            format!("{}{replacement}{}", &value[..m.start()], &value[m.end()..])
                        }
                        None => value,
                    }
                })
            }
            _ => Err(format!("unsupported modifier ({ch}) in substitution")),
        }
    }
}

/// A shell pattern (`*`, `?`, `\` escapes; no bracket expressions) as a regex, like
/// BuildKit's `convertShellPatternToRegex`.
fn shell_pattern(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex, String> {
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut it = pattern.chars().peekable();
    while let Some(tok) = it.next() {
        match tok {
            '*' => out.push_str(star),
            '?' => out.push('.'),
            '\\' => {
                // `\}` and `\/` only protect the character from the ${} syntax.
                if matches!(it.peek(), Some('}' | '/')) {
                    continue;
                }
                match it.next() {
                    Some(c @ ('*' | '?' | '\\')) => {
                        out.push('\\');
                        out.push(c);
                    }
                    Some(c) => return Err(format!("invalid escape '\\{c}'")),
                    None => return Err("invalid escape at the end".into()),
                }
            }
            '[' | ']' | '{' | '}' | '.' | '+' | '(' | ')' | '|' | '^' | '$' => {
                out.push('\\');
                out.push(tok);
            }
            c => out.push(c),
        }
    }
    Regex::new(&out).map_err(|e| e.to_string())
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let re = shell_pattern(pattern, greedy, true)
        .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_string(),
        None => value.to_string(),
    })
}

/// Reverses a pattern but keeps each `\x` escape in front of its character.
fn reverse_pattern(pattern: &str) -> String {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = vec![' '; p.len()];
    let last = p.len().saturating_sub(1);
    let mut i = 0;
    while i < p.len() {
        let o = last - i;
        if p[i] == '\\' && i != last {
            out[o - 1] = '\\';
            out[o] = p[i + 1];
            i += 2;
        } else {
            out[o] = p[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    // Regexes cannot find the shortest rightmost match, so search the reversed value
    // for the reversed pattern, as BuildKit does.
    let rev: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &rev, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn x(s: &str, vars: &[(&str, &str)]) -> String {
        match expand_word(s, &env(vars), '\\') {
            Ok(v) => v,
            Err(_) => "<error>".into(),
        }
    }

    #[test]
    fn basic_expansion_table() {
        let vars = [("A", "apple"), ("E", ""), ("P", "/usr/local/bin")];
        let cases = [
            ("$A", "apple"),
            ("${A}", "apple"),
            ("x${A}y", "xappley"),
            ("$A$A", "appleapple"),
            ("'$A'", "$A"),
            ("\"$A\"", "apple"),
            ("\\$A", "$A"),
            ("\"\\$A\"", "$A"),
            ("\"a\\b\"", "a\\b"),
            ("${U:-def}", "def"),
            ("${E:-def}", "def"),
            ("${E-def}", ""),
            ("${U-def}", "def"),
            ("${A:+alt}", "alt"),
            ("${E:+alt}", ""),
            ("${E+alt}", "alt"),
            ("${U+alt}", ""),
            ("${U:-$A}", "apple"),
            ("${U:-${A}x}", "applex"),
            ("${P#*/}", "usr/local/bin"),
            ("${P##*/}", "bin"),
            ("${P%/*}", "/usr/local"),
            ("${P%%/*}", ""),
            ("$", "$"),
            ("a$", "a$"),
            ("$U", ""),
            ("$1", ""),
            ("$@x", "x"),
            ("a\\", "a"),
            ("'a b'", "a b"),
            ("\"it's\"", "it's"),
            ("${U:?must be set}", "<error>"),
            ("${E:?}", "<error>"),
            ("${E?}", ""),
            ("'unterminated", "<error>"),
            ("\"unterminated", "<error>"),
            ("${A", "<error>"),
            ("${}", "<error>"),
            ("${:-x}", "<error>"),
            ("${A=x}", "<error>"),
            ("${A:=x}", "<error>"),
        ];
        for (input, want) in cases {
            assert_eq!(x(input, &vars), want, "input {input:?}");
        }
    }

    /// BuildKit's TestProcessWithMatches cases (shell/lex_test.go), transcribed.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

    #[test]
    fn buildkit_modifier_cases() {
        let cases: &[Case<'_>] = &[
            ("x", &[("DUMMY", "dummy")], "x"),
            ("x ${UNUSED}", &[], "x "),
            ("x ${FOO}", &[("FOO", "y")], "x y"),
            ("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", &[("FOO", "xxx"), ("BAR", "")], "xxx  ccc"),
            ("${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}", &[("FOO", "xxx"), ("BAR", "")], "xxx bbb ccc"),
            ("${FOO:-}", &[("FOO", "xxx")], "xxx"),
            ("${FOO:-}", &[], ""),
            ("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", &[("FOO", "xxx"), ("BAR", "")], "aaa bbb "),
            ("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", &[("FOO", "xxx"), ("BAR", "")], "aaa  "),
            ("${FOO?aaa}", &[("FOO", "xxx")], "xxx"),
            ("${BAR?bbb}", &[("BAR", "")], ""),
            ("${BAZ?ccc}", &[], "<error>"),
            ("${FOO:?aaa}", &[("FOO", "xxx")], "xxx"),
            ("${BAR:?bbb}", &[("BAR", "")], "<error>"),
            ("${BAZ:?}", &[], "<error>"),
            ("${FOO=aaa}", &[("FOO", "xxx")], "<error>"),
            ("${FOO=:aaa}", &[("FOO", "xxx")], "<error>"),
            ("${FOO=}", &[], "<error>"),
            ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", &[("FOO", "()[]{}^$.*?|\\x")], "x"),
            ("${FOO%%\\**}", &[("FOO", "xx**")], "xx"),
            ("${FOO#*x*y}", &[("FOO", "xxyy")], "y"),
            ("${FOO#*}", &[("FOO", "xxyy")], "xxyy"),
            ("${FOO#$BAR}", &[("FOO", "xxyy"), ("BAR", "x")], "xyy"),
            ("${FOO#$BAR}", &[("FOO", "xxyy"), ("BAR", "")], "xxyy"),
            ("${FOO#}", &[("FOO", "xxyy")], "xxyy"),
            ("${FOO##*x}", &[("FOO", "xxyy")], "yy"),
            ("${FOO##}", &[("FOO", "xxyy")], "xxyy"),
            ("${FOO#?\\?}", &[("FOO", "???y")], "?y"),
            ("${ABC:-.}${FOO%x}${ABC:-.}", &[("FOO", "xxyy")], ".xxyy."),
            ("${FOO%%\\**\\*}", &[("FOO", "a***yy*")], "a"),
            ("${FOO%}", &[("FOO", "xxyy")], "xxyy"),
            ("${FOO%%$BAR}", &[("FOO", "xxyy"), ("BAR", "")], "xxyy"),
            (
                "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
                &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")],
                "/foo.*/*.txt - /foo..*.txt",
            ),
            (
                "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
                &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
                "/tmp/bar.txt - /bar.txt",
            ),
            (
                "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
                &[("FOO", "/a/foo/b/c.txt"), ("NEEDLE", "/?/"), ("REPLACEMENT", "/")],
                "/foo/b/c.txt - /foo/c.txt",
            ),
            (
                "${FOO/$NEEDLE/$REPLACEMENT}",
                &[("FOO", "http://google.de"), ("NEEDLE", "http://"), ("REPLACEMENT", "https://")],
                "https://google.de",
            ),
            ("${FOO//\\//\\/}", &[("FOO", "/tmp/foo.txt")], "\\/tmp\\/foo.txt"),
            ("${FOO/$BAR/ww}", &[("FOO", "xxyy"), ("BAR", "")], "wwxxyy"),
            ("${FOO//ww}", &[("FOO", "xxyy")], "<error>"),
            ("${FOO//}", &[("FOO", "xxyy")], "<error>"),
            ("${FOO///}", &[("FOO", "xxyy")], "xxyy"),
            ("${FOO///}", &[], ""),
            (
                "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz",
                &[("VERSION", "v1.2.3"), ("TARGETOS", "linux"), ("TARGETARCH", "arm"), ("TARGETVARIANT", "v7")],
                "something-v1.2.3.linux-arm-v7.tar.gz",
            ),
        ];
        for (input, vars, want) in cases {
            assert_eq!(x(input, vars), *want, "input {input:?} vars {vars:?}");
        }
    }

    #[test]
    fn pattern_conversion() {
        let ok = [
            ("*", "^.*"),
            ("?", "^."),
            ("\\*", "^\\*"),
            (
                "(()[]{\\}^$.\\*\\?|\\\\",
                "^\\(\\(\\)\\[\\]\\{\\}\\^\\$\\.\\*\\?\\|\\\\",
            ),
        ];
        for (p, want) in ok {
            assert_eq!(
                shell_pattern(p, true, true).map(|r| r.to_string()),
                Ok(want.to_string())
            );
        }
        for p in ["\\", "\\x", "\\\\\\"] {
            assert!(shell_pattern(p, true, true).is_err(), "{p:?}");
        }
        let rev = [
            ("a\\*c", "c\\*a"),
            ("\\\\\\ab", "b\\a\\\\"),
            ("ab\\", "\\ba"),
            ("\\\\b", "b\\\\"),
        ];
        for (p, want) in rev {
            assert_eq!(reverse_pattern(p), want, "{p:?}");
        }
    }

    #[test]
    fn words_split_on_unquoted_space() {
        let w = expand_words("a \"b c\" '' d\\ e  $V", &env(&[("V", "x y")]), '\\');
        // A quoted empty string is no word (BuildKit), and expanded values split.
        assert_eq!(
            w,
            Ok(vec![
                "a".to_string(),
                "b c".into(),
                "d e".into(),
                "x".into(),
                "y".into()
            ])
        );
        assert_eq!(
            split_words("A=\"x y\" B=z\\ w  C", '\\'),
            vec!["A=\"x y\"", "B=z\\ w", "C"]
        );
    }

    #[test]
    fn raw_modes_keep_quotes_and_unset_references() {
        let lex = Lex {
            escape: '\\',
            raw_quotes: true,
            raw_escapes: true,
            skip_unset: true,
            skip_quotes: false,
        };
        let (_, words) = lex
            .process("RUN cat <<'EOF' \"$X\" ${Y:-z} \\$", &env(&[]))
            .unwrap_or_default();
        assert_eq!(
            words,
            vec!["RUN", "cat", "<<'EOF'", "\"$X\"", "${Y:-z}", "\\$"]
        );
    }

    #[test]
    fn backtick_escape() {
        assert_eq!(expand_word("a`$b", &env(&[]), '`'), Ok("a$b".to_string()));
        assert_eq!(expand_word("a\\b", &env(&[]), '`'), Ok("a\\b".to_string()));
    }
}
