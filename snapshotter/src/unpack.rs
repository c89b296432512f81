//! Unpacking a layer blob into a snapshot directory in overlayfs format: `.wh.name`
//! becomes a 0/0 character device `name`, `.wh..wh..opq` becomes the
//! `user.overlay.opaque` xattr on its directory, so snapshots stack as overlay lowers.
//!
//! Containment: entries with `..` are rejected, whiteout parents are created without
//! following symlinks, and everything else goes through `tar::Entry::unpack_in`, which
//! canonicalizes each entry's parent (and a hard link's target) and refuses anything
//! that resolves outside the root: absolute symlinks, symlinked parents, loops. The
//! helper is the only writer of the directory while it unpacks, so that check cannot
//! race with a concurrent rename.
//!
//! Owners: kept as they are ([`Owners::Keep`]) when the namespace maps them, or recorded
//! in the `user.rootlesscontainers` xattr ([`Owners::Emulate`], see [`crate::owner`]).
//! Directory mtimes are set once the whole layer is in, since later entries touch them.

use crate::{digest, Context, Error, Result};
use fs_err as fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

/// The overlay xattr that marks a directory opaque in a userxattr mount.
pub const OPAQUE_XATTR: &str = "user.overlay.opaque";

/// Whether `dir` is marked opaque (hides what lower layers have below it).
pub fn is_opaque(dir: &Path) -> bool {
    xattr::get(dir, OPAQUE_XATTR).ok().flatten().as_deref() == Some(b"y")
}

/// Whether an xattr is overlayfs's own bookkeeping (opaque, origin, redirect, ...),
/// which no layer records as content.
pub fn is_overlay_xattr(name: &str) -> bool {
    name.starts_with("user.overlay.") || name.starts_with("trusted.overlay.")
}

/// What an unpack did, for warnings.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Device nodes that could not be created without privileges and were skipped.
    pub skipped_devices: Vec<String>,
    /// The digest of the uncompressed tar stream (the layer's diffID).
    pub diff_id: String,
    /// Its length.
    pub size: u64,
}

/// The environment variable that sets how many times its compressed size a layer may
/// expand to (`0`: no bound).
pub const EXPANSION_ENV: &str = "KILN_LAYER_EXPANSION_LIMIT";
/// The default of [`EXPANSION_ENV`]. Real layers expand 2 to 10 times; gzip cannot
/// exceed about 1030 (a layer of zeros), so only a bomb, or a layer that is mostly one
/// huge run of zeros, goes past this.
pub const DEFAULT_EXPANSION: u64 = 100;
/// Whatever its compressed size, a layer may always expand to this much.
pub const EXPANSION_FLOOR: u64 = 1 << 30;

/// How many bytes (of tar stream, or of file contents the entries declare) a layer of
/// `compressed` bytes may unpack to: `None` for no bound.
pub fn expansion_limit(compressed: u64) -> Option<u64> {
    let ratio = match std::env::var(EXPANSION_ENV) {
        Ok(v) => v.trim().parse().unwrap_or(DEFAULT_EXPANSION),
        Err(_) => DEFAULT_EXPANSION,
    };
    (ratio != 0).then(|| compressed.saturating_mul(ratio).max(EXPANSION_FLOOR))
}

/// Counts, hashes and bounds the uncompressed stream.
struct Bounded<R> {
    inner: R,
    count: u64,
    limit: Option<u64>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if let Some(limit) = self.limit {
            if self.count > limit {
                return Err(std::io::Error::other(bomb(limit)));
            }
        }
        Ok(n)
    }
}

/// The tar stream of a layer, decompressed and hashed (for the diffID) on a thread of
/// its own while the caller parses it and writes the files: on two cores an unpack
/// takes about as long as the slower of the two halves, not their sum.
struct ReadAhead {
    chunks: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    /// Read chunks go back to the thread, so that it fills them again rather than
    /// allocating and zeroing a new one per MiB.
    spent: std::sync::mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

/// How much the decompressing thread may be ahead: `DEPTH` chunks of `CHUNK` bytes.
const CHUNK: usize = 1 << 20;
const DEPTH: usize = 4;

impl ReadAhead {
    /// Starts decompressing `r` on a thread of `scope`; the thread's result is the
    /// digest and size of everything it decompressed.
    fn spawn<'scope, 'env, R: Read + Send + 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        r: R,
    ) -> (
        ReadAhead,
        std::thread::ScopedJoinHandle<'scope, Result<(String, u64)>>,
    ) {
        let (tx, rx) = std::sync::mpsc::sync_channel(DEPTH);
        let (spent, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
        let worker = scope.spawn(move || -> Result<(String, u64)> {
            let mut tar = digest::HashReader::new(decompress(r)?);
            loop {
                let mut buf = recycled.try_recv().unwrap_or_default();
                buf.resize(CHUNK, 0);
                let mut filled = 0;
                let res = loop {
                    match tar.read(&mut buf[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            filled += n;
                            if filled == CHUNK {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                let end = filled < CHUNK;
                buf.truncate(filled);
                match res {
                    Err(e) => {
                        // The reader sees the error where the stream broke.
                        let _ = tx.send(Ok(buf));
                        let _ = tx.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                        return Err(e).ctx(|| "reading layer".into());
                    }
                    Ok(()) if end => {
                        let _ = tx.send(Ok(buf));
                        return Ok((tar.digest(), tar.count()));
                    }
                    // A reader that stopped (an error of its own) ends this thread too.
                    Ok(()) if tx.send(Ok(buf)).is_err() => {
                        return Ok((tar.digest(), tar.count()));
                    }
                    Ok(()) => {}
                }
            }
        });
        (
            ReadAhead {
                chunks: rx,
                spent,
                current: Vec::new(),
                at: 0,
            },
            worker,
        )
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    let done = std::mem::replace(&mut self.current, chunk?);
                    // The thread may have ended: then the chunk is simply dropped.
                    let _ = self.spent.send(done);
                    self.at = 0;
                    if self.current.is_empty() {
                        return Ok(0);
                    }
                }
                // The thread ended: after its last chunk, or with its error, which
                // its join reports.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn bomb(limit: u64) -> String {
    format!(
        "the layer expands to more than {limit} bytes: refused as a decompression bomb \
         (the bound is {DEFAULT_EXPANSION} times the compressed size and at least 1 GiB; \
         {EXPANSION_ENV}=N sets the factor, 0 removes the bound)"
    )
}

/// Opens a possibly compressed layer: gzip and zstd are recognised by magic bytes.
const GZIP: &[u8] = &[0x1f, 0x8b];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Whether a stream starting with `head` is one [`decompress`] decompresses.
pub fn is_compressed(head: &[u8]) -> bool {
    head.starts_with(GZIP) || head.starts_with(ZSTD)
}

pub fn decompress<'a, R: Read + 'a>(r: R) -> Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(256 * 1024, r);
    let head = br.fill_buf().ctx(|| "reading layer".into())?;
    if head.starts_with(GZIP) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(br)))
    } else if head.starts_with(ZSTD) {
        Ok(Box::new(
            zstd::stream::read::Decoder::with_buffer(br).ctx(|| "starting zstd".into())?,
        ))
    } else {
        Ok(Box::new(br))
    }
}

/// How entry owners reach the unpacked files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// chown to the entry's uid/gid (they are mapped in the namespace).
    Keep,
    /// Leave files to root of the namespace; record other owners in an xattr.
    Emulate,
}

impl Owners {
    /// What this process can do: emulate in a single-id namespace, else keep.
    pub fn here() -> Owners {
        if crate::owner::emulating() {
            Owners::Emulate
        } else {
            Owners::Keep
        }
    }
}

/// Unpacks the tar stream `r` (compressed or not) into `dest`, with no bound on its size.
pub fn unpack(r: impl Read + Send, dest: &Path, owners: Owners) -> Result<Unpacked> {
    unpack_bounded(r, dest, owners, None)
}

/// Unpacks the tar stream `r` (compressed or not) into `dest`, stopping with an error
/// once it (or the file sizes its entries declare: sparse files) passes `limit` bytes.
/// The whole stream is read, so [`Unpacked::diff_id`] is the layer's diffID.
pub fn unpack_bounded(
    r: impl Read + Send,
    dest: &Path,
    owners: Owners,
    limit: Option<u64>,
) -> Result<Unpacked> {
    std::thread::scope(|scope| {
        let (ahead, worker) = ReadAhead::spawn(scope, r);
        let unpacked = unpack_entries(ahead, dest, owners, limit);
        // A stream that broke fails the entries too, with the worker's message.
        let hashed = worker
            .join()
            .unwrap_or_else(|_| Err(Error::BadLayer("the layer's decompression failed".into())));
        let mut out = unpacked?;
        let (diff_id, size) = hashed?;
        if size != out.size {
            return Err(Error::BadLayer(format!(
                "the layer's tar stream ended after {} of its {size} bytes",
                out.size
            )));
        }
        out.diff_id = diff_id;
        Ok(out)
    })
}

fn unpack_entries(
    r: ReadAhead,
    dest: &Path,
    owners: Owners,
    limit: Option<u64>,
) -> Result<Unpacked> {
    let mut ar = tar::Archive::new(Bounded {
        inner: r,
        count: 0,
        limit,
    });
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_preserve_ownerships(owners == Owners::Keep);
    ar.set_unpack_xattrs(true);
    ar.set_overwrite(true);
    let mut out = Unpacked::default();
    let mut dirs: Vec<(PathBuf, u64)> = Vec::new();
    let mut declared: u64 = 0;
    for entry in ar.entries().ctx(|| "reading layer".into())? {
        let mut entry = entry
            .map_err(with_causes)
            .ctx(|| "reading layer entry".into())?;
        declared = declared.saturating_add(entry.size());
        if let Some(limit) = limit.filter(|&l| declared > l) {
            return Err(Error::BadLayer(bomb(limit)));
        }
        let raw = entry.path().ctx(|| "layer entry path".into())?.into_owned();
        let rel = clean(&raw)?;
        if rel.components().count() > crate::MAX_TREE_DEPTH {
            return Err(crate::too_deep(&rel));
        }
        let Some(name) = rel.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue; // the root itself
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        if name == ".wh..wh..opq" {
            let dir = mkdir_contained(dest, parent)?;
            xattr::set(&dir, OPAQUE_XATTR, b"y")
                .ctx(|| format!("marking {} opaque", dir.display()))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            // A whiteout names one entry of its own directory: not the directory, not
            // its parent (`.wh...` would remove the unpack directory's parent).
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(Error::BadLayer(format!(
                    "layer entry {:?} is a whiteout that names no entry",
                    raw.display().to_string()
                )));
            }
            let dir = mkdir_contained(dest, parent)?;
            let target = dir.join(hidden);
            crate::tree::remove_all(&target)?;
            crate::sys::mknod_whiteout(&target)?;
            continue;
        }
        match entry.header().entry_type() {
            tar::EntryType::Char | tar::EntryType::Block => {
                out.skipped_devices.push(rel.display().to_string());
                continue;
            }
            _ => {}
        }
        let kind = entry.header().entry_type();
        let (uid, gid) = (
            entry.header().uid().unwrap_or(0) as u32,
            entry.header().gid().unwrap_or(0) as u32,
        );
        let mtime = entry.header().mtime().unwrap_or(0);
        if kind == tar::EntryType::Fifo {
            // The tar crate would write a FIFO as an empty regular file.
            let dir = mkdir_contained(dest, parent)?;
            let at = dir.join(&name);
            crate::tree::remove_all(&at)?;
            let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
            crate::sys::mkfifo(&at, mode)?;
            if owners == Owners::Keep {
                std::os::unix::fs::lchown(&at, Some(uid), Some(gid))
                    .ctx(|| format!("chown {}", at.display()))?;
            } else if (uid, gid) != (0, 0) {
                crate::owner::chown(&at, uid, gid)?;
            }
            // chown may clear set-id bits: the mode goes last.
            std::fs::set_permissions(&at, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .ctx(|| format!("chmod {}", at.display()))?;
            set_mtime(&at, mtime)?;
            continue;
        }
        if !entry
            .unpack_in(dest)
            .map_err(with_causes)
            .ctx(|| format!("unpacking {}", rel.display()))?
        {
            return Err(Error::Escape(raw.display().to_string()));
        }
        let at = dest.join(&rel);
        if owners == Owners::Emulate && kind != tar::EntryType::Symlink && (uid, gid) != (0, 0) {
            crate::owner::chown(&at, uid, gid)?;
        }
        if kind == tar::EntryType::Directory {
            dirs.push((at, mtime));
        }
    }
    // Setting a directory's times changes no other's, so order does not matter; but a
    // later entry may have replaced a parent by a symlink, so each is checked again.
    let root = dest
        .canonicalize()
        .ctx(|| format!("resolving {}", dest.display()))?;
    for (dir, mtime) in dirs {
        match dir.canonicalize() {
            Ok(c) if c.starts_with(&root) => {}
            _ => continue,
        }
        set_mtime(&dir, mtime)?;
    }
    // The tar reader stops at the end-of-archive blocks; the diffID covers the rest.
    let mut rest = ar.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).ctx(|| "reading layer".into())?;
    out.size = rest.count;
    Ok(out)
}

/// Sets the access and modification times of `p` to `mtime` (seconds; not following
/// a symlink), as an unpacked entry's.
pub fn set_mtime(p: &Path, mtime: u64) -> Result<()> {
    let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .ctx(|| format!("setting the times of {}", p.display()))
}

/// The tar crate wraps the reason (say, "trying to unpack outside of destination
/// path") inside an error whose message is only "failed to unpack `x`": bring the
/// causes into the message.
fn with_causes(e: std::io::Error) -> std::io::Error {
    let mut msg = e.to_string();
    let mut cause = e.get_ref().and_then(|inner| inner.source());
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    std::io::Error::new(e.kind(), msg)
}

/// Normalises an entry path to a relative one, rejecting `..`.
fn clean(p: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::Escape(p.display().to_string()))
            }
        }
    }
    Ok(out)
}

/// `mkdir -p root/rel` refusing to pass through symlinks (which could lead outside).
fn mkdir_contained(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(Error::Escape(rel.display().to_string())),
            Err(_) => fs::create_dir(&cur)?,
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            // Write the name raw so that hostile paths reach the unpacker unchanged.
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).expect("append");
        }
        b.into_inner().expect("finish")
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = layer(&[
            ("a/keep", b"x"),
            ("a/.wh.gone", b""),
            ("b/.wh..wh..opq", b""),
        ]);
        unpack(&data[..], dir.path(), Owners::Keep).expect("unpack");
        assert_eq!(fs::read(dir.path().join("a/keep")).expect("read"), b"x");
        let wh = fs::symlink_metadata(dir.path().join("a/gone")).expect("whiteout");
        assert!(wh.file_type().is_char_device());
        assert_eq!(
            xattr::get(dir.path().join("b"), OPAQUE_XATTR).expect("xattr"),
            Some(b"y".to_vec())
        );
    }

    #[test]
    fn parent_dir_entries_are_rejected() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("root");
        fs::create_dir(&root).expect("mkdir");
        let data = layer(&[("../escaped", b"x")]);
        assert!(matches!(
            unpack(&data[..], &root, Owners::Keep),
            Err(Error::Escape(_))
        ));
        assert!(!outer.path().join("escaped").exists());
    }

    #[test]
    fn whiteout_through_symlink_is_rejected() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("root");
        fs::create_dir(&root).expect("mkdir");
        std::os::unix::fs::symlink(outer.path(), root.join("link")).expect("symlink");
        let data = layer(&[("link/.wh.victim", b"")]);
        fs::write(outer.path().join("victim"), b"safe").expect("write");
        assert!(unpack(&data[..], &root, Owners::Keep).is_err());
        assert_eq!(
            fs::read(outer.path().join("victim")).expect("read"),
            b"safe"
        );
    }

    #[test]
    fn symlink_then_write_stays_inside() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("root");
        let victim = outer.path().join("victim");
        fs::create_dir_all(&root).expect("mkdir");
        fs::create_dir_all(&victim).expect("mkdir");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "link", &victim)
            .expect("symlink entry");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(4);
        h.set_mode(0o644);
        b.append_data(&mut h, "link/evil", &b"evil"[..])
            .expect("file entry");
        let data = b.into_inner().expect("finish");
        assert!(
            unpack(&data[..], &root, Owners::Keep).is_err(),
            "writing through a symlink must fail"
        );
        assert!(
            !victim.join("evil").exists(),
            "nothing is written outside the root"
        );
    }

    #[test]
    fn absolute_paths_land_inside() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("root");
        fs::create_dir(&root).expect("mkdir");
        let abs = outer.path().join("abs-target");
        let name = abs.to_str().expect("utf8").to_string();
        let data = layer(&[(name.as_str(), b"x")]);
        unpack(&data[..], &root, Owners::Keep).expect("unpack");
        assert!(
            !abs.exists(),
            "an absolute entry is not written at its absolute path"
        );
        assert!(root.join(name.trim_start_matches('/')).is_file());
    }

    #[test]
    fn whiteouts_that_name_no_entry_are_refused() {
        for name in [".wh...", "d/.wh...", ".wh.", "d/.wh.."] {
            let outer = tempfile::tempdir().expect("tempdir");
            let root = outer.path().join("root");
            fs::create_dir_all(root.join("d")).expect("mkdir");
            fs::write(outer.path().join("canary"), b"x").expect("write");
            let data = layer(&[(name, b"")]);
            let err = unpack(&data[..], &root, Owners::Keep).expect_err(name);
            assert!(matches!(err, Error::BadLayer(_)), "{name}: {err}");
            assert!(root.join("d").is_dir() && outer.path().join("canary").exists());
        }
    }

    #[test]
    fn fifos_stay_fifos_and_the_diff_id_covers_the_whole_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Fifo);
        h.set_size(0);
        h.set_mode(0o640);
        h.set_mtime(1_000_000);
        b.append_data(&mut h, "p", std::io::empty()).expect("fifo");
        let data = b.into_inner().expect("tar");
        let u = unpack(&data[..], dir.path(), Owners::Keep).expect("unpack");
        let m = fs::symlink_metadata(dir.path().join("p")).expect("fifo");
        assert!(m.file_type().is_fifo());
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777,
            0o640
        );
        assert_eq!(u.diff_id, crate::digest::of(&data));
        assert_eq!(u.size, data.len() as u64);
    }

    #[test]
    fn a_layer_past_its_bound_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = layer(&[("a", &[0u8; 4096]), ("b", &[0u8; 4096])]);
        let err = unpack_bounded(&data[..], dir.path(), Owners::Keep, Some(6000))
            .expect_err("over the bound");
        assert!(err.to_string().contains("decompression bomb"), "{err}");
        unpack_bounded(&data[..], dir.path(), Owners::Keep, Some(1 << 20)).expect("within");
        assert_eq!(expansion_limit(10), Some(EXPANSION_FLOOR));
        assert_eq!(expansion_limit(1 << 30), Some(DEFAULT_EXPANSION << 30));
    }

    #[test]
    fn gzip_layers_are_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &layer(&[("f", b"gz")])).expect("gz");
        unpack(&gz.finish().expect("finish")[..], dir.path(), Owners::Keep).expect("unpack");
        assert_eq!(fs::read(dir.path().join("f")).expect("read"), b"gz");
    }
}
