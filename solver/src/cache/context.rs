//! The build context's side of cache keys: content hashes of what COPY and RUN
//! mounts select in the context, and the remembered digests that let a rebuild stat
//! the context rather than read it.

use crate::Result;
use fs_err as fs;
use kiln_executor::paths;
use kiln_frontend::dockerignore::Matcher;
use kiln_snapshotter::Store;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

use super::digest as key;

/// Content hash of what `srcs` select in the context directory `root`, seen through
/// `.dockerignore` as COPY sees it. File contents come from `known` while their
/// metadata is unchanged.
pub fn hash_context(
    root: &Path,
    srcs: &[String],
    ignore: &Matcher,
    known: &FileHashes,
) -> Result<String> {
    let mut h = Sha256::new();
    for s in paths::expand_sources(root, srcs, ignore)? {
        let p = paths::resolve_in_root(root, &s, true)?;
        let mut bytes = Vec::new();
        hash_tree(&mut bytes, &p, &s, ignore, known)?;
        h.update(&bytes);
    }
    Ok(hex::encode(h.finalize()))
}

/// What a file's cached digest is valid for: its identity and times. A write changes
/// ctime (and usually mtime and size); a file replaced by another changes the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

/// The context's file digests from earlier builds (BuildKit keeps the same kind of
/// metadata-keyed content hashes), so that a rebuild stats the context rather than
/// reading it. Kept per context directory in the store (`context-hashes/`), one line
/// per file; written (temp file, fsync, rename) when a build learned something.
///
/// A digest is only remembered for a file whose ctime is at least [`SETTLED`] old when
/// it is hashed: a file written again within the same timestamp tick would otherwise
/// keep its stamp (git's "racily clean" problem).
#[derive(Debug, Default)]
pub struct FileHashes {
    path: Option<std::path::PathBuf>,
    old: HashMap<String, (Stamp, [u8; 32])>,
    new: Mutex<HashMap<String, (Stamp, [u8; 32])>>,
    /// [`SETTLED`], but for tests.
    settle: std::time::Duration,
}

/// How old a file's last change must be before its digest is remembered.
pub const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

impl FileHashes {
    /// What the store remembers of the context directory `context` (nothing when the
    /// file is missing or unreadable: everything is hashed again).
    pub fn load(store: &Store, context: &Path) -> FileHashes {
        let name = key(&["context-hashes", &context.to_string_lossy()]);
        let path = store.root().join("context-hashes").join(&name[..32]);
        let mut old = HashMap::new();
        if let Ok(text) = fs::read_to_string(&path) {
            for line in text.lines() {
                if let Some((rel, v)) = parse_line(line) {
                    old.insert(rel, v);
                }
            }
        }
        FileHashes {
            path: Some(path),
            old,
            new: Mutex::new(HashMap::new()),
            settle: SETTLED,
        }
    }

    /// The sha256 of the file `p` (`rel` in the context) whose metadata is `m`.
    fn digest(&self, p: &Path, rel: &str, m: &std::fs::Metadata) -> Result<[u8; 32]> {
        let stamp = Stamp::of(m);
        if let Some((st, d)) = self.old.get(rel) {
            if *st == stamp {
                self.remember(rel, stamp, *d);
                return Ok(*d);
            }
        }
        let mut f = fs::File::open(p)?;
        let mut h = Sha256::new();
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 256 * 1024]);
        }
        BUF.with_borrow_mut(|buf| loop {
            match f.read(buf) {
                Ok(0) => return Ok(()),
                Ok(n) => h.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        })?;
        let d: [u8; 32] = h.finalize().into();
        let settled = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|now| (now.as_nanos() as i128) - self.settle.as_nanos() as i128 > stamp.ctime_ns)
            .unwrap_or(false);
        if settled {
            self.remember(rel, stamp, d);
        }
        Ok(d)
    }

    fn remember(&self, rel: &str, stamp: Stamp, d: [u8; 32]) {
        if rel.contains('\n') {
            return;
        }
        if let Ok(mut n) = self.new.lock() {
            n.insert(rel.to_string(), (stamp, d));
        }
    }

    /// Writes what this build hashed (files it did not look at are forgotten), when it
    /// differs from what was loaded.
    pub fn save(&self, store: &Store) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let new = match self.new.lock() {
            Ok(n) => n,
            Err(_) => return Ok(()),
        };
        if new.is_empty() || *new == self.old {
            return Ok(());
        }
        let mut out = String::with_capacity(new.len() * 128);
        let mut rels: Vec<&String> = new.keys().collect();
        rels.sort();
        for rel in rels {
            let (s, d) = &new[rel];
            out.push_str(&format!(
                "{} {} {} {} {} {} {}\n",
                s.dev,
                s.ino,
                s.size,
                s.mtime_ns,
                s.ctime_ns,
                hex::encode(d),
                rel
            ));
        }
        store.write_file(path, out.as_bytes(), "hashes")?;
        Ok(())
    }
}

fn parse_line(line: &str) -> Option<(String, (Stamp, [u8; 32]))> {
    let mut it = line.splitn(7, ' ');
    let stamp = Stamp {
        dev: it.next()?.parse().ok()?,
        ino: it.next()?.parse().ok()?,
        size: it.next()?.parse().ok()?,
        mtime_ns: it.next()?.parse().ok()?,
        ctime_ns: it.next()?.parse().ok()?,
    };
    let d: [u8; 32] = hex::decode(it.next()?).ok()?.try_into().ok()?;
    Some((it.next()?.to_string(), (stamp, d)))
}

/// How many directory levels of the context are hashed in parallel.
const PARALLEL_LEVELS: usize = 6;

/// Appends to `out` what the context key takes from the tree at `p` (`rel` in the
/// context): each entry's path, type and mode, and a file's size and content digest or
/// a symlink's target. A directory's entries go in name order; they are looked at on
/// the rayon pool, so a large context is stat'ed (and, the first time, read) on every
/// core, while the bytes stay in the same order.
fn hash_tree(
    out: &mut Vec<u8>,
    p: &Path,
    rel: &str,
    ignore: &Matcher,
    known: &FileHashes,
) -> Result<()> {
    // Bounded: each level is a few frames of rayon's on a worker thread's stack.
    if rel.split('/').count() > kiln_snapshotter::MAX_TREE_DEPTH {
        return Err(kiln_snapshotter::too_deep(Path::new(rel)).into());
    }
    let m = fs::symlink_metadata(p)?;
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
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    if ft.is_symlink() {
        let t = fs::read_link(p)?;
        out.extend_from_slice(t.to_string_lossy().as_bytes());
    } else if ft.is_file() {
        out.extend_from_slice(&m.len().to_le_bytes());
        out.extend_from_slice(&known.digest(p, rel, &m)?);
    } else if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        let one = |n: &std::ffi::OsString| {
            let r = format!("{rel}/{}", n.to_string_lossy());
            let mut part = Vec::new();
            hash_tree(&mut part, &p.join(n), &r, ignore, known).map(|()| part)
        };
        // The top levels fan out on the pool; deeper ones, which add no useful
        // parallelism, recurse plainly (a rayon level costs far more stack).
        let parts = if rel.split('/').count() < PARALLEL_LEVELS {
            names
                .par_iter()
                .map(one)
                .collect::<Result<Vec<Vec<u8>>>>()?
        } else {
            names.iter().map(one).collect::<Result<Vec<Vec<u8>>>>()?
        };
        for part in parts {
            out.extend_from_slice(&part);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_digests_stand_while_the_stamp_does() {
        let d = tempfile::tempdir().expect("tempdir");
        let ctx = d.path().join("ctx");
        fs::create_dir_all(ctx.join("src")).expect("mkdir");
        fs::write(ctx.join("src/a"), b"one").expect("write");
        fs::write(ctx.join("src/b"), b"two").expect("write");
        let store = Store::open(d.path().join("store")).expect("store");
        let srcs = vec!["src".to_string()];
        let none = Matcher::default();
        let load = || FileHashes {
            settle: std::time::Duration::ZERO,
            ..FileHashes::load(&store, &ctx)
        };
        let first = load();
        let k = hash_context(&ctx, &srcs, &none, &first).expect("hash");
        first.save(&store).expect("save");
        let file = first.path.clone().expect("path");
        let text = fs::read_to_string(&file).expect("saved");
        assert_eq!(text.lines().count(), 2, "{text}");
        // The saved digest is what a rebuild uses: swap a's for b's and the key moves.
        let a = hex::encode(Sha256::digest(b"one"));
        let b = hex::encode(Sha256::digest(b"two"));
        fs::write(&file, text.replace(&a, &b)).expect("rewrite");
        let swapped = hash_context(&ctx, &srcs, &none, &load()).expect("hash");
        assert_ne!(swapped, k);
        // Touching the file changes its ctime, so its content is read again.
        let f = fs::File::options()
            .append(true)
            .open(ctx.join("src/a"))
            .expect("open");
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        drop(f);
        assert_eq!(hash_context(&ctx, &srcs, &none, &load()).expect("hash"), k);
        // A file changed in place under the same size is read again too.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(ctx.join("src/b"), b"TWO").expect("write");
        assert_ne!(hash_context(&ctx, &srcs, &none, &load()).expect("hash"), k);
        // A file changed just now is not remembered (its stamp could repeat).
        let fresh = FileHashes::load(&store, &ctx);
        hash_context(&ctx, &srcs, &none, &fresh).expect("hash");
        assert!(!fresh.new.lock().expect("lock").contains_key("src/b"));
    }

    #[test]
    fn context_hash_follows_content_and_mode() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::create_dir(d.path().join("src")).expect("mkdir");
        fs::write(d.path().join("src/a"), b"1").expect("write");
        fs::write(d.path().join("other"), b"x").expect("write");
        let srcs = vec!["src".to_string()];
        let none = Matcher::default();
        let h1 = hash_context(d.path(), &srcs, &none, &FileHashes::default()).expect("hash");
        fs::write(d.path().join("other"), b"changed").expect("write");
        assert_eq!(
            h1,
            hash_context(d.path(), &srcs, &none, &FileHashes::default()).expect("hash"),
            "unselected files do not matter"
        );
        fs::write(d.path().join("src/a"), b"2").expect("write");
        let h2 = hash_context(d.path(), &srcs, &none, &FileHashes::default()).expect("hash");
        assert_ne!(h1, h2);
        fs::set_permissions(
            d.path().join("src/a"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        assert_ne!(
            h2,
            hash_context(d.path(), &srcs, &none, &FileHashes::default()).expect("hash")
        );
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]));
        // Ignored files do not change the key.
        let ignore = Matcher::new(&["src/*.log".to_string()]).expect("patterns");
        let h3 = hash_context(d.path(), &srcs, &ignore, &FileHashes::default()).expect("hash");
        fs::write(d.path().join("src/debug.log"), b"noise").expect("write");
        assert_eq!(
            h3,
            hash_context(d.path(), &srcs, &ignore, &FileHashes::default()).expect("hash")
        );
        assert_ne!(
            h3,
            hash_context(d.path(), &srcs, &none, &FileHashes::default()).expect("hash")
        );
    }
}
