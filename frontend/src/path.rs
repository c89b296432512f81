//! Lexical path cleaning, as Go's `path.Clean` does it (BuildKit and moby use it for
//! WORKDIR, COPY destinations and ignore patterns).

/// Go's `path.Clean` for slash paths: `.` and `..` resolved lexically, repeated
/// slashes folded, `..` above `/` dropped (`""` becomes `"."`).
pub fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let body = parts.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn cleans_like_go() {
        for (i, o) in [
            ("", "."),
            ("a/./b/../c", "a/c"),
            ("/a/..", "/"),
            ("/../../x", "/x"),
            ("../x", "../x"),
            ("//a//b/", "/a/b"),
        ] {
            assert_eq!(clean(i), o, "{i:?}");
        }
    }
}
