//! Shell-word processing with the semantics of BuildKit's shell lexer
//! (`frontend/dockerfile/shell/lex.go`): quotes, the escape token and `$VAR` /
//! `${VAR...}` expansion. Words are processed, never executed.

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

struct Lexer<'a, V: Vars + ?Sized> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    vars: &'a V,
}

/// Expands one word (quotes removed, escapes applied, variables substituted), like
/// BuildKit's `ProcessWord`.
pub fn expand_word<V: Vars + ?Sized>(word: &str, vars: &V, escape: char) -> Result<String, String> {
    let mut lx = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        escape,
        vars,
    };
    let words = lx.process(None)?;
    Ok(words.join(" "))
}

/// Expands and splits into words on unquoted whitespace, like BuildKit's `ProcessWords`.
pub fn expand_words<V: Vars + ?Sized>(
    word: &str,
    vars: &V,
    escape: char,
) -> Result<Vec<String>, String> {
    let mut lx = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        escape,
        vars,
    };
    lx.process(None)
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

impl<V: Vars + ?Sized> Lexer<'_, V> {
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

    /// Processes until `stop` (unquoted, unescaped) or the end; returns the words.
    fn process(&mut self, stop: Option<char>) -> Result<Vec<String>, String> {
        let mut words = Vec::new();
        let mut cur = String::new();
        // Whether `cur` holds a word, even an empty quoted one ("").
        let mut in_word = false;
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                break;
            }
            if stop.is_none() && ch.is_whitespace() {
                self.pos += 1;
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                continue;
            }
            in_word = true;
            match ch {
                '\'' => {
                    self.pos += 1;
                    cur.push_str(&self.single_quoted()?);
                }
                '"' => {
                    self.pos += 1;
                    cur.push_str(&self.double_quoted()?);
                }
                '$' => {
                    self.pos += 1;
                    cur.push_str(&self.dollar()?);
                }
                c if c == self.escape => {
                    self.pos += 1;
                    match self.next() {
                        Some(n) => cur.push(n),
                        // A trailing escape is kept as written.
                        None => cur.push(c),
                    }
                }
                c => {
                    self.pos += 1;
                    cur.push(c);
                }
            }
        }
        if in_word || (stop.is_some() && words.is_empty()) {
            words.push(cur);
        }
        Ok(words)
    }

    fn single_quoted(&mut self) -> Result<String, String> {
        let mut s = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => return Ok(s),
                Some(c) => s.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, String> {
        let mut s = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => return Ok(s),
                Some('$') => s.push_str(&self.dollar()?),
                Some(c) if c == self.escape => match self.peek() {
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        self.pos += 1;
                        s.push(n);
                    }
                    _ => s.push(c),
                },
                Some(c) => s.push(c),
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        name
    }

    fn dollar(&mut self) -> Result<String, String> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
            }
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                let name = self.name();
                return Ok(self.vars.get(&name).unwrap_or_default());
            }
            // A lone `$` stays literal.
            _ => return Ok("$".into()),
        }
        let name = self.name();
        if name.is_empty() {
            return Err("bad substitution: missing variable name in ${}".into());
        }
        let value = self.vars.get(&name);
        let op = match self.next() {
            None => return Err(format!("missing '}}' in ${{{name}")),
            Some('}') => return Ok(value.unwrap_or_default()),
            Some(c) => c,
        };
        let colon = op == ':';
        let op = if colon {
            self.next()
                .ok_or_else(|| format!("missing '}}' in ${{{name}:"))?
        } else {
            op
        };
        let word = self.process(Some('}'))?.join(" ");
        if self.next() != Some('}') {
            return Err(format!("missing '}}' in ${{{name}"));
        }
        // `:` makes empty count as unset for -, + and ?.
        let set = match &value {
            Some(v) => !(colon && v.is_empty()),
            None => false,
        };
        match op {
            '-' => Ok(if set { value.unwrap_or_default() } else { word }),
            '+' => Ok(if set { word } else { String::new() }),
            '?' => {
                if set {
                    Ok(value.unwrap_or_default())
                } else if word.is_empty() {
                    Err(format!("{name}: is not allowed to be unset"))
                } else {
                    Err(format!("{name}: {word}"))
                }
            }
            '#' | '%' if !colon => {
                let v = value.unwrap_or_default();
                let (longest, pat) = match word.strip_prefix(op) {
                    Some(rest) => (true, rest.to_string()),
                    None => (false, word),
                };
                Ok(trim_pattern(&v, &pat, op == '#', longest))
            }
            _ => Err(format!(
                "unsupported modifier ({op}) in substitution ${{{name}...}}"
            )),
        }
    }
}

/// Removes the shortest/longest prefix (`#`) or suffix (`%`) matching a glob.
fn trim_pattern(v: &str, pat: &str, prefix: bool, longest: bool) -> String {
    let idx: Vec<usize> = v
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(v.len()))
        .collect();
    let cands: Box<dyn Iterator<Item = &usize>> = if longest == prefix {
        Box::new(idx.iter().rev())
    } else {
        Box::new(idx.iter())
    };
    for &i in cands {
        let (part, rest) = if prefix {
            (&v[..i], &v[i..])
        } else {
            (&v[i..], &v[..i])
        };
        if glob_match(pat, part) {
            return rest.to_string();
        }
    }
    v.to_string()
}

/// Matches `*`, `?` and literal characters (shell pattern subset).
pub fn glob_match(pat: &str, s: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        vec![
            ("A".into(), "apple".into()),
            ("E".into(), String::new()),
            ("P".into(), "/usr/local/bin".into()),
        ]
    }

    fn x(s: &str) -> String {
        match expand_word(s, &env(), '\\') {
            Ok(v) => v,
            Err(e) => format!("ERR {e}"),
        }
    }

    #[test]
    fn expansion_table() {
        // (input, expected) pairs from BuildKit's envVarTest semantics.
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
            ("${P#*/}", "usr/local/bin"),
            ("${P##*/}", "bin"),
            ("${P%/*}", "/usr/local"),
            ("${P%%/*}", ""),
            ("$", "$"),
            ("a$", "a$"),
            ("$U", ""),
            ("${U:?must be set}", "ERR U: must be set"),
            (
                "'unterminated",
                "ERR unexpected end of statement while looking for matching single-quote",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(x(input), want, "input {input:?}");
        }
    }

    #[test]
    fn words_split_on_unquoted_space() {
        let w = expand_words("a \"b c\" '' d\\ e", &env(), '\\');
        assert_eq!(
            w,
            Ok(vec![
                "a".to_string(),
                "b c".into(),
                String::new(),
                "d e".into()
            ])
        );
        assert_eq!(
            split_words("A=\"x y\" B=z\\ w  C", '\\'),
            vec!["A=\"x y\"", "B=z\\ w", "C"]
        );
    }

    #[test]
    fn backtick_escape() {
        assert_eq!(expand_word("a`$b", &env(), '`'), Ok("a$b".to_string()));
    }
}
