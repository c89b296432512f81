//! Where blobs are known to be (`host/repository`), as containerd's
//! distribution-source labels: noted in the store (`sources/<hex>`, a line each, the
//! latest first) when a push uploads, mounts or finds a blob, so that a later push to
//! another repository of the same registry mounts the blob instead of uploading it.
//! A hint only: lost, it costs an upload; wrong, a refused mount.

use kiln_snapshotter::Store;
use std::path::PathBuf;

/// How many repositories a blob's note keeps.
const KEEP: usize = 8;

fn path(store: &Store, digest: &str) -> Option<PathBuf> {
    let hex = kiln_snapshotter::digest::hex_part(digest).ok()?;
    Some(store.root().join("sources").join(hex))
}

/// The repositories `digest` was last pushed to or found in, the latest first.
pub(crate) fn known(store: &Store, digest: &str) -> Vec<String> {
    path(store, digest)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Notes that `repo` (`host/repository`) has `digest`.
pub(crate) fn remember(store: &Store, digest: &str, repo: &str) {
    let Some(p) = path(store, digest) else {
        return;
    };
    let mut repos = known(store, digest);
    if repos.first().map(String::as_str) == Some(repo) {
        return;
    }
    repos.retain(|r| r != repo);
    repos.insert(0, repo.to_string());
    repos.truncate(KEEP);
    let text = repos.join("\n") + "\n";
    let _ = store.write_file(&p, text.as_bytes(), "sources");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_repository_comes_first_and_few_are_kept() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = Store::open(d.path().join("store")).expect("store");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert!(known(&store, &digest).is_empty());
        remember(&store, &digest, "r.test/one");
        remember(&store, &digest, "r.test/two");
        remember(&store, &digest, "r.test/one");
        assert_eq!(known(&store, &digest), ["r.test/one", "r.test/two"]);
        for i in 0..20 {
            remember(&store, &digest, &format!("r.test/n{i}"));
        }
        assert_eq!(known(&store, &digest).len(), KEEP);
        assert_eq!(known(&store, &digest)[0], "r.test/n19");
        // Not a digest: nothing noted, nothing read.
        remember(&store, "nope", "r.test/x");
        assert!(known(&store, "nope").is_empty());
    }
}
