//! Git sources (`ADD git://host/repo.git#REF:DIR`, and a git URL as the build context),
//! fetched with the `git` command, as BuildKit's git source does.
//!
//! A build first asks the remote which commit REF is now (`git ls-remote`, one round
//! trip); that commit is the cache key, so an unchanged branch costs no fetch. A step
//! that runs fetches that one commit, shallow, into a fresh repository of its own, and
//! checks that it got the commit it asked for. Git runs with no terminal prompt and no
//! system configuration; a fresh repository has no hooks, so a hostile repository's
//! content is only ever files.

use crate::{Error, Result};
use std::path::Path;
use std::process::Command;

fn fail(url: &str, why: impl std::fmt::Display) -> Error {
    Error::Input(format!("git source {url}: {why}"))
}

/// `git ARGS`, prompt-less, without the system's git configuration.
fn git(url: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_ASKPASS", "true")
        .output()
        .map_err(|e| fail(url, format!("cannot run git ({e}): install git")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.trim().lines().last().unwrap_or("").to_string();
        return Err(fail(
            url,
            format!("git {} failed: {last}", args.first().unwrap_or(&"")),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_commit(r: &str) -> bool {
    r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit `reference` (branch, tag, commit; `None`: HEAD) of `url` is now.
pub fn resolve(url: &str, reference: Option<&str>) -> Result<String> {
    let r = reference.unwrap_or("HEAD");
    if is_commit(r) {
        return Ok(r.to_ascii_lowercase());
    }
    // The peeled form too: an annotated tag's own line names the tag object.
    let peeled = format!("{r}^{{}}");
    let out = git(url, &["ls-remote", "--", url, r, &peeled])?;
    let refs: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once('\t')).collect();
    // A branch before a tag of the same name; an annotated tag by its commit.
    let pick = [
        format!("refs/heads/{r}"),
        format!("refs/tags/{r}^{{}}"),
        format!("refs/tags/{r}"),
        r.to_string(),
    ]
    .iter()
    .find_map(|want| {
        refs.iter()
            .find(|(_, name)| name == want)
            .map(|(sha, _)| *sha)
    })
    .or_else(|| refs.first().map(|(sha, _)| *sha));
    match pick {
        Some(sha) if is_commit(sha) => Ok(sha.to_string()),
        _ => Err(fail(url, format!("no branch, tag or commit {r:?}"))),
    }
}

/// Fetches `commit` (reached as `reference`) of `url` into `dest`, a new directory:
/// its files, and `.git` only with `keep_git_dir`.
pub fn checkout(
    url: &str,
    reference: Option<&str>,
    commit: &str,
    dest: &Path,
    keep_git_dir: bool,
) -> Result<()> {
    let d = dest.to_string_lossy().to_string();
    git(url, &["init", "-q", "--", &d])?;
    let want = match reference {
        Some(r) if !is_commit(r) => r,
        _ => commit,
    };
    if git(
        url,
        &["-C", &d, "fetch", "-q", "--depth=1", "--", url, want],
    )
    .is_err()
    {
        // Servers that refuse a commit by its id: everything, then the commit.
        git(url, &["-C", &d, "fetch", "-q", "--", url])?;
    }
    git(url, &["-C", &d, "checkout", "-q", "--detach", commit])?;
    let head = git(url, &["-C", &d, "rev-parse", "HEAD"])?;
    if head.trim() != commit {
        return Err(fail(
            url,
            format!("fetched {} where {commit} was asked for", head.trim()),
        ));
    }
    if !keep_git_dir {
        kiln_snapshotter::tree::remove_all(&dest.join(".git"))?;
    }
    Ok(())
}
