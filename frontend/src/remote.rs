//! Remote sources, told apart as buildx and BuildKit's frontend tell them: http(s)
//! URLs, and git repositories (`git://`, `git@`, `ssh://`, or an http(s) URL of a
//! `.git` path) written `URL#REF:DIR`. ADD sources, build contexts and named contexts
//! all go through here.

/// Whether `s` is an http(s) URL (a git one too: ask [`is_git_url`] first).
pub fn is_http_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// Whether `s` names a git repository.
pub fn is_git_url(s: &str) -> bool {
    s.starts_with("git://")
        || s.starts_with("git@")
        || s.starts_with("ssh://")
        || (is_http_url(s) && s.split('#').next().is_some_and(|u| u.ends_with(".git")))
}

/// A git repository `URL#REF:DIR`: the URL, the ref (`None`: HEAD) and the
/// directory in it (empty: the whole tree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitRef {
    pub url: String,
    pub reference: Option<String>,
    pub subdir: String,
}

impl GitRef {
    pub fn parse(spec: &str) -> GitRef {
        let (url, fragment) = spec.split_once('#').unwrap_or((spec, ""));
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        GitRef {
            url: url.to_string(),
            reference: (!reference.is_empty()).then(|| reference.to_string()),
            subdir: subdir.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_git_references_are_told_apart_and_split() {
        assert!(is_git_url("git://h/r.git"));
        assert!(is_git_url("git@h:org/r"));
        assert!(is_git_url("https://h/r.git#main:sub"));
        assert!(!is_git_url("https://h/file.tar.gz"));
        assert!(is_http_url("https://h/file.tar.gz"));
        assert!(!is_http_url("ftp://h/x"));
        let r = GitRef::parse("https://h/r.git#v1:docs/api");
        assert_eq!(r.url, "https://h/r.git");
        assert_eq!(r.reference.as_deref(), Some("v1"));
        assert_eq!(r.subdir, "docs/api");
        let r = GitRef::parse("git://h/r.git");
        assert_eq!((r.reference, r.subdir.as_str()), (None, ""));
        assert_eq!(GitRef::parse("git://h/r.git#:sub").reference, None);
    }
}
