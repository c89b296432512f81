//! `.dockerignore` with Docker's semantics: a port of moby/patternmatcher (patterns
//! become anchored regular expressions: `*` and `?` stop at `/`, `**` crosses
//! directories, `!` re-includes, later patterns win, a match on any parent directory
//! counts) and of its `ignorefile` reader (comments, trimming, path cleaning, leading
//! `/` dropped). gitignore matchers (`ignore`, `globset`) differ on exactly these
//! points, hence the port.

use crate::path::clean;
use regex::Regex;

/// Why a pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern(pub String);

impl std::error::Error for BadPattern {}

impl std::fmt::Display for BadPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "syntax error in pattern {:?}", self.0)
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Exact,
    /// `dir/**`: the pattern without the trailing `**` is a prefix.
    Prefix,
    /// `**/name` or `**name`: the pattern without the leading `**` is a suffix.
    Suffix,
    Regexp(Regex),
}

#[derive(Debug, Clone)]
struct Pattern {
    cleaned: String,
    exclusion: bool,
    kind: Kind,
}

/// A compiled list of patterns.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

/// Reads a `.dockerignore` file's text into patterns, like moby's `ignorefile.ReadAll`.
pub fn read_patterns(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = if i == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            line
        };
        if line.starts_with('#') {
            continue;
        }
        let mut p = line.trim();
        if p.is_empty() {
            continue;
        }
        let invert = p.starts_with('!');
        if invert {
            p = p[1..].trim();
        }
        let mut pat = String::new();
        if !p.is_empty() {
            pat = clean(p);
            if pat.len() > 1 && pat.starts_with('/') {
                pat.remove(0);
            }
        }
        out.push(if invert { format!("!{pat}") } else { pat });
    }
    out
}

fn compile(p: &str) -> Result<Kind, BadPattern> {
    let bad = || BadPattern(p.to_string());
    let chars: Vec<char> = p.chars().collect();
    let mut re = String::from("^");
    let mut kind = 0u8; // 0 exact, 1 prefix, 2 suffix, 3 regexp
    let mut i = 0;
    let mut first = true;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        if ch == '*' {
            if chars.get(i) == Some(&'*') {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    if kind == 0 {
                        kind = 1;
                    } else {
                        re.push_str(".*");
                        kind = 3;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = 3;
                }
                if first {
                    kind = 2;
                }
            } else {
                re.push_str("[^/]*");
                kind = 3;
            }
        } else if ch == '?' {
            re.push_str("[^/]");
            kind = 3;
        } else if ".+()|{}$".contains(ch) {
            re.push('\\');
            re.push(ch);
        } else if ch == '\\' {
            match chars.get(i) {
                Some(&n) => {
                    i += 1;
                    re.push('\\');
                    re.push(n);
                    kind = 3;
                }
                None => re.push_str("\\\\"),
            }
        } else if ch == '[' || ch == ']' {
            re.push(ch);
            kind = 3;
        } else {
            re.push(ch);
        }
        first = false;
    }
    Ok(match kind {
        0 => Kind::Exact,
        1 => Kind::Prefix,
        2 => Kind::Suffix,
        _ => {
            re.push('$');
            Kind::Regexp(Regex::new(&re).map_err(|_| bad())?)
        }
    })
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.cleaned,
            Kind::Prefix => path.starts_with(&self.cleaned[..self.cleaned.len() - 2]),
            Kind::Suffix => {
                let suffix = &self.cleaned[2..];
                path.ends_with(suffix) || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Kind::Regexp(r) => r.is_match(path),
        }
    }
}

impl Matcher {
    /// Compiles patterns (as [`read_patterns`] returns them).
    pub fn new(patterns: &[String]) -> Result<Matcher, BadPattern> {
        let mut m = Matcher::default();
        for raw in patterns {
            let p = raw.trim();
            if p.is_empty() {
                continue;
            }
            let mut p = clean(p);
            let exclusion = p.starts_with('!');
            if exclusion {
                if p.len() == 1 {
                    return Err(BadPattern("!".into()));
                }
                p.remove(0);
                m.exclusions = true;
            }
            // moby rejects what Go's filepath.Match calls a bad pattern.
            if crate::path::glob_match(&p, ".").is_err() {
                return Err(BadPattern(p));
            }
            let kind = compile(&p)?;
            m.patterns.push(Pattern {
                cleaned: p,
                exclusion,
                kind,
            });
        }
        Ok(m)
    }

    /// Whether any pattern is an exception (`!`), so excluded directories must still be
    /// walked for re-included files.
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns as cleaned, exceptions without their `!`.
    pub fn patterns(&self) -> Vec<&str> {
        self.patterns
            .iter()
            .filter(|p| !p.exclusion)
            .map(|p| p.cleaned.as_str())
            .collect()
    }

    /// Whether the slash-separated `file` (relative to the context) is ignored: it or a
    /// parent matches a pattern and no later exception re-includes it
    /// (patternmatcher's `MatchesOrParentMatches`).
    pub fn excluded(&self, file: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let file = clean(file);
        if file == "." {
            return false;
        }
        let parents: Vec<&str> = match file.rfind('/') {
            Some(i) => file[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for p in &self.patterns {
            if p.exclusion != matched {
                continue;
            }
            let mut hit = p.matches(&file);
            if !hit {
                hit = (1..=parents.len()).any(|n| p.matches(&parents[..n].join("/")));
            }
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str]) -> Result<Matcher, BadPattern> {
        Matcher::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn matches(file: &str, patterns: &[&str]) -> Result<bool, BadPattern> {
        m(patterns).map(|m| m.excluded(file))
    }

    /// patternmatcher_test.go's TestMatches table: (pattern, path, exact, inexact).
    /// "exact" cases match the path itself; "inexact" ones match through a parent.
    #[test]
    fn moby_matches_table() {
        const EXACT: u8 = 1;
        const INEXACT: u8 = 2;
        const FAIL: u8 = 0;
        let cases: &[(&str, &str, u8)] = &[
            ("**", "file", EXACT),
            ("**", "file/", EXACT),
            ("**/", "file", EXACT),
            ("**/", "file/", EXACT),
            ("**", "/", EXACT),
            ("**/", "/", EXACT),
            ("**", "dir/file", EXACT),
            ("**/", "dir/file", EXACT),
            ("**", "dir/file/", EXACT),
            ("**/", "dir/file/", EXACT),
            ("**/**", "dir/file", EXACT),
            ("**/**", "dir/file/", EXACT),
            ("dir/**", "dir/file", EXACT),
            ("dir/**", "dir/file/", EXACT),
            ("dir/**", "dir/dir2/file", EXACT),
            ("dir/**", "dir/dir2/file/", EXACT),
            ("**/dir", "dir", EXACT),
            ("**/dir", "dir/file", INEXACT),
            ("**/dir2/*", "dir/dir2/file", EXACT),
            ("**/dir2/*", "dir/dir2/file/", INEXACT),
            ("**/dir2/**", "dir/dir2/dir3/file", EXACT),
            ("**/dir2/**", "dir/dir2/dir3/file/", EXACT),
            ("**file", "file", EXACT),
            ("**file", "dir/file", EXACT),
            ("**/file", "dir/file", EXACT),
            ("**file", "dir/dir/file", EXACT),
            ("**/file", "dir/dir/file", EXACT),
            ("**/file*", "dir/dir/file", EXACT),
            ("**/file*", "dir/dir/file.txt", EXACT),
            ("**/file*txt", "dir/dir/file.txt", EXACT),
            ("**/file*.txt", "dir/dir/file.txt", EXACT),
            ("**/file*.txt*", "dir/dir/file.txt", EXACT),
            ("**/**/*.txt", "dir/dir/file.txt", EXACT),
            ("**/**/*.txt2", "dir/dir/file.txt", FAIL),
            ("**/*.txt", "file.txt", EXACT),
            ("**/**/*.txt", "file.txt", EXACT),
            ("a**/*.txt", "a/file.txt", EXACT),
            ("a**/*.txt", "a/dir/file.txt", EXACT),
            ("a**/*.txt", "a/dir/dir/file.txt", EXACT),
            ("a/*.txt", "a/dir/file.txt", FAIL),
            ("a/*.txt", "a/file.txt", EXACT),
            ("a/*.txt**", "a/file.txt", EXACT),
            ("a[b-d]e", "ae", FAIL),
            ("a[b-d]e", "ace", EXACT),
            ("a[b-d]e", "aae", FAIL),
            ("a[^b-d]e", "aze", EXACT),
            (".*", ".foo", EXACT),
            (".*", "foo", FAIL),
            ("abc.def", "abcdef", FAIL),
            ("abc.def", "abc.def", EXACT),
            ("abc.def", "abcZdef", FAIL),
            ("abc?def", "abcZdef", EXACT),
            ("abc?def", "abcdef", FAIL),
            ("**/foo/bar", "foo/bar", EXACT),
            ("**/foo/bar", "dir/foo/bar", EXACT),
            ("**/foo/bar", "dir/dir2/foo/bar", EXACT),
            ("abc/**", "abc", FAIL),
            ("abc/**", "abc/def", EXACT),
            ("abc/**", "abc/def/ghi", EXACT),
            ("**/.foo", ".foo", EXACT),
            ("**/.foo", "bar.foo", FAIL),
            ("a(b)c/def", "a(b)c/def", EXACT),
            ("a(b)c/def", "a(b)c/xyz", FAIL),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", EXACT),
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                EXACT,
            ),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                EXACT,
            ),
            ("a\\\\", "a\\", EXACT),
            ("a\\*b", "a*b", EXACT),
        ];
        for &(pattern, text, want) in cases {
            let got = matches(text, &[pattern]).unwrap_or_else(|e| panic!("{pattern:?}: {e}"));
            assert_eq!(got, want != FAIL, "pattern={pattern:?} text={text:?}");
        }
        let multi: &[(&[&str], &str, bool)] = &[
            (&["**", "!util/docker/web"], "util/docker/web/foo", false),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                true,
            ),
            (
                &[
                    "**",
                    "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                ],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
            (
                &["**", "!dist/*.whl"],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
        ];
        for &(patterns, text, want) in multi {
            assert_eq!(
                matches(text, patterns),
                Ok(want),
                "patterns={patterns:?} text={text:?}"
            );
        }
    }

    #[test]
    fn moby_exclusion_rules() {
        assert_eq!(matches("fileutils.go", &["*"]), Ok(true));
        assert_eq!(matches("fileutils.go", &["*.go"]), Ok(true));
        assert_eq!(
            matches("fileutils.go", &["!fileutils.go", "*.go"]),
            Ok(true)
        );
        assert_eq!(
            matches("docs/README.md", &["docs", "!docs/README.md"]),
            Ok(false)
        );
        assert_eq!(
            matches("docs/README.md", &["docs/", "!docs/README.md"]),
            Ok(false)
        );
        assert_eq!(
            matches("docs/README.md", &["docs/*", "!docs/README.md"]),
            Ok(false)
        );
        assert_eq!(
            matches("fileutils.go", &["*.go", "!fileutils.go"]),
            Ok(false)
        );
        assert_eq!(matches(".", &["*.go"]), Ok(false));
        assert!(matches("fileutils.go", &["!"]).is_err());
        assert_eq!(matches("/any/path/there", &[]), Ok(false));
        assert!(matches("/any/path/there", &["["]).is_err());
        let m = m(&["docs", "  !docs/README.md  ", ""]).expect("valid");
        assert!(m.has_exclusions());
        assert_eq!(m.patterns.len(), 2);
    }

    /// patternmatcher_test.go's TestMatch (Go's filepath.Match table).
    #[test]
    fn go_filepath_match_table() {
        let cases: &[(&str, &str, Result<bool, ()>)] = &[
            ("abc", "abc", Ok(true)),
            ("*", "abc", Ok(true)),
            ("*c", "abc", Ok(true)),
            ("a*", "a", Ok(true)),
            ("a*", "abc", Ok(true)),
            ("a*", "ab/c", Ok(true)),
            ("a*/b", "abc/b", Ok(true)),
            ("a*/b", "a/c/b", Ok(false)),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", Ok(true)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", Ok(true)),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", Ok(false)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", Ok(false)),
            ("a*b?c*x", "abxbbxdbxebxczzx", Ok(true)),
            ("a*b?c*x", "abxbbxdbxebxczzy", Ok(false)),
            ("ab[c]", "abc", Ok(true)),
            ("ab[b-d]", "abc", Ok(true)),
            ("ab[e-g]", "abc", Ok(false)),
            ("ab[^c]", "abc", Ok(false)),
            ("ab[^b-d]", "abc", Ok(false)),
            ("ab[^e-g]", "abc", Ok(true)),
            ("a\\*b", "a*b", Ok(true)),
            ("a\\*b", "ab", Ok(false)),
            ("a?b", "a☺b", Ok(true)),
            ("a[^a]b", "a☺b", Ok(true)),
            ("a???b", "a☺b", Ok(false)),
            ("a[^a][^a][^a]b", "a☺b", Ok(false)),
            ("[a-ζ]*", "α", Ok(true)),
            ("*[a-ζ]", "A", Ok(false)),
            ("a?b", "a/b", Ok(false)),
            ("a*b", "a/b", Ok(false)),
            ("[\\]a]", "]", Ok(true)),
            ("[\\-]", "-", Ok(true)),
            ("[x\\-]", "x", Ok(true)),
            ("[x\\-]", "-", Ok(true)),
            ("[x\\-]", "z", Ok(false)),
            ("[\\-x]", "x", Ok(true)),
            ("[\\-x]", "-", Ok(true)),
            ("[\\-x]", "a", Ok(false)),
            ("[]a]", "]", Err(())),
            ("[-]", "-", Err(())),
            ("[x-]", "x", Err(())),
            ("[x-]", "-", Err(())),
            ("[x-]", "z", Err(())),
            ("[-x]", "x", Err(())),
            ("[-x]", "-", Err(())),
            ("[-x]", "a", Err(())),
            ("\\", "a", Err(())),
            ("[a-b-c]", "a", Err(())),
            ("[", "a", Err(())),
            ("[^", "a", Err(())),
            ("[^bc", "a", Err(())),
            ("a[", "a", Err(())),
            ("a[", "ab", Err(())),
            ("*x", "xxx", Ok(true)),
        ];
        for &(pattern, s, want) in cases {
            let got = matches(s, &[pattern]).map_err(|_| ());
            assert_eq!(got, want, "Match({pattern:?}, {s:?})");
        }
    }

    #[test]
    fn ignore_file_reading() {
        let text =
            "\u{feff}# comment\n  build/  \n!build/keep.txt\n/abs/../root\n\n./x/./y\n! spaced\n";
        assert_eq!(
            read_patterns(text),
            ["build", "!build/keep.txt", "root", "x/y", "!spaced"]
        );
    }
}
