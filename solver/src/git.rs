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
use std::path::{Path, PathBuf};
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

/// What to fetch for `commit` reached as `reference`: the ref's name (servers may
/// refuse a commit by its id), or the commit itself.
fn want<'a>(reference: Option<&'a str>, commit: &'a str) -> &'a str {
    match reference {
        Some(r) if !is_commit(r) => r,
        _ => commit,
    }
}

/// Fetches `commit` (reached as `reference`) of `url` into `dest`, a new directory:
/// its files, and `.git` only with `keep_git_dir`. With `cache` (the build's store),
/// the commit comes through the store's bare repository for `url` (`git/`): a commit
/// it has is not fetched again, and `dest` gets it by a local fetch, which copies the
/// objects (no path of the store is left in `dest/.git`).
pub fn checkout(
    url: &str,
    reference: Option<&str>,
    commit: &str,
    dest: &Path,
    keep_git_dir: bool,
    cache: Option<&kiln_snapshotter::Store>,
) -> Result<()> {
    let (from, want) = match cache {
        // The cache repository serves any commit it has by its id.
        Some(store) => {
            let repo = cached(store, url, reference, commit)?;
            (format!("file://{}", repo.display()), commit)
        }
        None => (url.to_string(), want(reference, commit)),
    };
    let d = dest.to_string_lossy().to_string();
    git(url, &["init", "-q", "--", &d])?;
    // No FETCH_HEAD: it would name the store's repository in a kept `.git`.
    let fetch = ["-C", &d, "fetch", "-q", "--no-write-fetch-head"];
    if git(
        url,
        &[&fetch[..], &["--depth=1", "--", &from, want]].concat(),
    )
    .is_err()
    {
        // Servers that refuse a commit by its id: everything, then the commit.
        git(url, &[&fetch[..], &["--", &from]].concat())?;
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

/// The store's bare repository for `url` with `commit` in it (kept by the ref
/// `refs/kiln/COMMIT`), fetched shallow only when it is not there yet.
fn cached(
    store: &kiln_snapshotter::Store,
    url: &str,
    reference: Option<&str>,
    commit: &str,
) -> Result<PathBuf> {
    use sha2::Digest as _;
    let name = hex::encode(sha2::Sha256::digest(url.as_bytes()));
    let dir = store.root().join("git");
    let repo = dir.join(format!("{}.git", &name[..32]));
    if !repo.join("HEAD").is_file() {
        fs_err::create_dir_all(&dir)?;
        // Made aside and renamed, so that a build never sees half a repository.
        let tmp = store.tmp_path("git");
        let t = tmp.to_string_lossy().to_string();
        git(url, &["init", "-q", "--bare", "--", &t])?;
        // Builds fetch from it by commit.
        git(
            url,
            &[
                "--git-dir",
                &t,
                "config",
                "uploadpack.allowAnySHA1InWant",
                "true",
            ],
        )?;
        if std::fs::rename(&tmp, &repo).is_err() {
            // Another build made it first.
            let _ = kiln_snapshotter::tree::remove_all(&tmp);
        }
    }
    let r = repo.to_string_lossy().to_string();
    let bare = |args: &[&str]| git(url, &[&["--git-dir", r.as_str()][..], args].concat());
    let has = || bare(&["cat-file", "-e", &format!("{commit}^{{commit}}")]).is_ok();
    if has() {
        return Ok(repo);
    }
    let keep = format!("refs/kiln/{commit}");
    let fetch = ["fetch", "-q", "--no-write-fetch-head", "--", url];
    let wanted = format!("+{}:{keep}", want(reference, commit));
    if bare(&[&fetch[..2], &["--depth=1"], &fetch[2..], &[wanted.as_str()]].concat()).is_err()
        || !has()
    {
        // The ref moved since it was resolved, or the server refuses a commit by its
        // id: everything, then the commit.
        bare(&[&fetch[..], &["+refs/*:refs/kiln-all/*"]].concat())?;
        bare(&["update-ref", &keep, commit])?;
    }
    Ok(repo)
}
