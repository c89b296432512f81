//! Cache keys and records.
//!
//! A vertex's key hashes what it does and the keys of its inputs (for COPY from the
//! context: the selected files' paths, types, modes and contents), so equal keys mean
//! equal results. A record ([`Record`], kept by the store) maps a key to the resulting
//! layer stack; it is only trusted while every snapshot and blob it names is still in
//! the store.

use crate::fileop;
use crate::{io_ctx, Result};
use kiln_frontend::dockerignore::Matcher;
use kiln_snapshotter::Store;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub use kiln_snapshotter::records::{Kind, Layer, Record};

/// Hashes length-prefixed parts into a hex key.
pub fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Loads the record for `key` if it is still usable (and marks it used).
pub fn load(store: &Store, key: &str) -> Option<Record> {
    store.load_record(key)
}

pub fn save(store: &Store, key: &str, r: &Record) -> Result<()> {
    Ok(store.save_record(key, r)?)
}

/// Content hash of what `srcs` select in the context directory `root`, seen through
/// `.dockerignore` as COPY sees it.
pub fn hash_context(root: &Path, srcs: &[String], ignore: &Matcher) -> Result<String> {
    let mut h = Sha256::new();
    for s in fileop::expand_sources(root, srcs, ignore)? {
        let p = fileop::resolve_in_root(root, &s, true)?;
        hash_tree(&mut h, &p, &s, ignore)?;
    }
    Ok(hex::encode(h.finalize()))
}

fn hash_tree(h: &mut Sha256, p: &Path, rel: &str, ignore: &Matcher) -> Result<()> {
    let m = fs::symlink_metadata(p).map_err(io_ctx(format!("stat {}", p.display())))?;
    if ignore.excluded(rel) && !(m.is_dir() && ignore.has_exclusions()) {
        return Ok(());
    }
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        "d"
    } else if ft.is_symlink() {
        "l"
    } else if ft.is_file() {
        "f"
    } else {
        "o"
    };
    for part in [
        rel.as_bytes(),
        kind.as_bytes(),
        &(m.permissions().mode() & 0o7777).to_le_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    if ft.is_symlink() {
        let t = fs::read_link(p).map_err(io_ctx(format!("readlink {}", p.display())))?;
        h.update(t.to_string_lossy().as_bytes());
    } else if ft.is_file() {
        h.update(m.len().to_le_bytes());
        let mut f = fs::File::open(p).map_err(io_ctx(format!("opening {}", p.display())))?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(io_ctx(format!("reading {}", p.display())))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    } else if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)
            .map_err(io_ctx(format!("reading {}", p.display())))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for n in names {
            let r = format!("{rel}/{}", n.to_string_lossy());
            hash_tree(h, &p.join(&n), &r, ignore)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_hash_follows_content_and_mode() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::create_dir(d.path().join("src")).expect("mkdir");
        fs::write(d.path().join("src/a"), b"1").expect("write");
        fs::write(d.path().join("other"), b"x").expect("write");
        let srcs = vec!["src".to_string()];
        let none = Matcher::default();
        let h1 = hash_context(d.path(), &srcs, &none).expect("hash");
        fs::write(d.path().join("other"), b"changed").expect("write");
        assert_eq!(
            h1,
            hash_context(d.path(), &srcs, &none).expect("hash"),
            "unselected files do not matter"
        );
        fs::write(d.path().join("src/a"), b"2").expect("write");
        let h2 = hash_context(d.path(), &srcs, &none).expect("hash");
        assert_ne!(h1, h2);
        fs::set_permissions(d.path().join("src/a"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        assert_ne!(h2, hash_context(d.path(), &srcs, &none).expect("hash"));
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]));
        // Ignored files do not change the key.
        let ignore = Matcher::new(&["src/*.log".to_string()]).expect("patterns");
        let h3 = hash_context(d.path(), &srcs, &ignore).expect("hash");
        fs::write(d.path().join("src/debug.log"), b"noise").expect("write");
        assert_eq!(h3, hash_context(d.path(), &srcs, &ignore).expect("hash"));
        assert_ne!(h3, hash_context(d.path(), &srcs, &none).expect("hash"));
    }
}
