//! Paths inside a root: resolving a path as if the root were `/` (like securejoin),
//! and expanding COPY sources against `.dockerignore`. Used on the build context (by
//! the solver, for cache keys) and on rootfs trees (by COPY, WORKDIR and RUN mounts).

use crate::{Error, Result};
use fs_err as fs;
use kiln_frontend::dockerignore::Matcher;
use std::path::{Path, PathBuf};

const MAX_LINKS: usize = 255;

/// Resolves `rel` under `root`, following symlinks but never leaving `root`.
/// `follow_last` says whether a symlink in the last component is followed.
pub fn resolve_in_root(root: &Path, rel: &str, follow_last: bool) -> Result<PathBuf> {
    let mut stack: Vec<String> = Vec::new();
    let mut todo: Vec<String> = rel
        .split('/')
        .rev()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                stack.pop();
                continue;
            }
            _ => {}
        }
        let mut cur = root.to_path_buf();
        cur.extend(stack.iter());
        cur.push(&part);
        let is_last = todo.is_empty();
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() && (!is_last || follow_last) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Error::SymlinkLoop(rel.to_string()));
                }
                let target = fs::read_link(&cur)?;
                let t = target.to_string_lossy().to_string();
                if t.starts_with('/') {
                    stack.clear();
                }
                todo.extend(
                    t.split('/')
                        .rev()
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                );
            }
            _ => stack.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(stack.iter());
    Ok(out)
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Whether `rel` is visible through `.dockerignore`: not excluded, or an excluded
/// directory that an exception (`!`) may re-include files under.
fn visible(root: &Path, rel: &str, ignore: &Matcher) -> Result<bool> {
    if !ignore.excluded(rel) {
        return Ok(true);
    }
    let p = resolve_in_root(root, rel, true)?;
    Ok(ignore.has_exclusions() && fs::metadata(p).map(|m| m.is_dir()).unwrap_or(false))
}

/// Expands COPY sources under `root`: each pattern gives the matching paths (relative,
/// clean, sorted); a pattern matching nothing is an error, as in BuildKit. Paths that
/// `.dockerignore` excludes do not exist for COPY.
pub fn expand_sources(root: &Path, srcs: &[String], ignore: &Matcher) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for src in srcs {
        let clean = clean_rel(src);
        if !has_glob(&clean) {
            let p = resolve_in_root(root, &clean, true)?;
            if fs::symlink_metadata(&p).is_err() || !visible(root, &clean, ignore)? {
                return Err(Error::SourceNotFound(clean));
            }
            out.push(clean);
            continue;
        }
        let mut matches = vec![String::new()];
        for part in clean.split('/').filter(|s| !s.is_empty()) {
            let mut next = Vec::new();
            for m in &matches {
                if has_glob(part) {
                    let dir = resolve_in_root(root, m, true)?;
                    let Ok(rd) = fs::read_dir(&dir) else { continue };
                    let mut names: Vec<String> = rd
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().to_string())
                        .collect();
                    names.sort();
                    for n in names {
                        let cand = join_rel(m, &n);
                        let hit = kiln_frontend::path::glob_match(part, &n).map_err(|e| {
                            Error::Pattern {
                                what: format!("COPY source {src:?}"),
                                why: e.to_string(),
                            }
                        })?;
                        if hit && visible(root, &cand, ignore)? {
                            next.push(cand);
                        }
                    }
                } else {
                    let cand = join_rel(m, part);
                    if fs::symlink_metadata(resolve_in_root(root, &cand, true)?).is_ok()
                        && visible(root, &cand, ignore)?
                    {
                        next.push(cand);
                    }
                }
            }
            matches = next;
        }
        // A wildcard that matches nothing copies nothing, as in BuildKit (whose
        // Dockerfile frontend allows empty wildcards), even as the only source.
        out.extend(matches);
    }
    Ok(out)
}

pub(crate) fn join_rel(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

/// `a/./b/../c` -> `a/c`, leading `/` and `..` above the root dropped.
pub fn clean_rel(p: &str) -> String {
    kiln_frontend::path::clean(&format!("/{p}"))
        .trim_start_matches('/')
        .to_string()
}

/// Copies `src` (a file, a symlink or a directory tree) to `dst`, which must not
/// exist: directories, regular files (their modes) and symlinks (as links, never
/// followed); other kinds are left out. For a RUN's writable bind of the context.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let m = fs::symlink_metadata(src)?;
    let t = m.file_type();
    if t.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else if t.is_file() {
        fs::copy(src, dst)?;
    } else if t.is_dir() {
        fs::create_dir(dst)?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        fs::set_permissions(dst, m.permissions())?;
    }
    Ok(())
}
