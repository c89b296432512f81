//! COPY and WORKDIR, run in the namespace helper on the step's rootfs (an overlay
//! mount, or a copy with the native snapshotter).
//!
//! Paths on both sides resolve inside their root: a symlink in the context or in an
//! image is followed as if its root were `/` (like securejoin), so nothing outside the
//! context or the rootfs can be read or written.

use crate::paths::{clean_rel, expand_sources, join_rel, resolve_in_root};
use crate::{io_ctx, Error, Result};
use fs_err as fs;
use kiln_frontend::dockerignore::Matcher;
use kiln_snapshotter::native::{self, Snapshotter};
use kiln_snapshotter::Store;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where COPY reads from, as the helper sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Source {
    /// A directory on the host (the build context) and its `.dockerignore` patterns.
    Context { dir: PathBuf, excludes: Vec<String> },
    /// A stack of snapshots (top-first), mounted read-only.
    Snapshots(Vec<String>),
}

/// A COPY or ADD, ready for the helper.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CopyAction {
    pub source: Source,
    /// Path sources (wildcards allowed), relative to the source root.
    pub srcs: Vec<String>,
    /// Here-documents, written as files.
    pub inline: Vec<kiln_frontend::InlineFile>,
    pub dest: String,
    pub chown: Option<String>,
    pub chmod: Option<u32>,
    /// `--parents`: keep each source's path (below a `/./` pivot) under the destination.
    pub parents: bool,
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
    /// ADD: unpack local tar archives (plain, gzip, zstd, bzip2 or xz) into the
    /// destination.
    pub unpack: bool,
    /// A snapshot made earlier by the same COPY from the context: a file whose content
    /// and metadata there are exactly what this copy would write is hard-linked from
    /// it instead of written again (see [`Links`]).
    #[serde(default)]
    pub link_from: Option<String>,
    /// More copies into the same step, each after the one before (an ADD of URLs and
    /// context files: one copy per run of sources, in their order). They read the
    /// context or staged files, and link nothing.
    #[serde(default)]
    pub then: Vec<CopyAction>,
}

impl Default for Source {
    fn default() -> Self {
        Source::Snapshots(Vec::new())
    }
}

/// Owner for copied files: from `--chown`, resolved in the destination's files.
fn chown_ids(merged: &Path, spec: &str) -> Result<(u32, u32)> {
    let read = |f: &str| {
        resolve_in_root(merged, f, true)
            .ok()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    // A name the rootfs does not know is 0, as in BuildKit's file operations (which
    // look names up in the destination's /etc/passwd and /etc/group and keep 0 when
    // they find nothing); only RUN's USER must exist.
    let (passwd, group) = (read("etc/passwd"), read("etc/group"));
    let user = crate::user::resolve_user_in(u, &passwd, &group).unwrap_or(crate::user::User {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        home: "/".into(),
    });
    let gid = match g {
        Some(g) => crate::user::resolve_user_in(&format!("0:{g}"), &passwd, &group)
            .map(|u| u.gid)
            .unwrap_or(0),
        // `--chown=1000` means 1000:1000; a user name brings its primary group.
        None if u.parse::<u32>().is_ok() => user.uid,
        None => user.gid,
    };
    Ok((user.uid, gid))
}

/// Performs a COPY into `merged`; `scratch` is a free directory for a read-only mount.
pub fn copy(
    store: &Store,
    kind: Snapshotter,
    merged: &Path,
    scratch: &Path,
    c: &CopyAction,
) -> Result<Links> {
    let mut ignore = Matcher::default();
    let (src_root, keep_owner) = match &c.source {
        Source::Context { dir, excludes } => {
            ignore = Matcher::new(excludes).map_err(|e| Error::Pattern {
                what: ".dockerignore".into(),
                why: e.to_string(),
            })?;
            (dir.clone(), false)
        }
        Source::Snapshots(ids) => {
            fs::create_dir_all(scratch)?;
            native::view_ro(store, ids, scratch, kind)?;
            (scratch.to_path_buf(), true)
        }
    };
    let owner = match &c.chown {
        Some(spec) => Some(chown_ids(merged, spec)?),
        None if keep_owner => None,
        None => Some((0, 0)),
    };
    // With --parents, a source `a/./b/*` keeps `b/...` below the destination.
    let mut pivots = Vec::new();
    let mut srcs = Vec::new();
    for s in &c.srcs {
        match s.split_once("/./") {
            Some((pivot, rest)) if c.parents => {
                pivots.push(Some(clean_rel(pivot)));
                srcs.push(format!("{pivot}/{rest}"));
            }
            _ => {
                pivots.push(None);
                srcs.push(s.clone());
            }
        }
    }
    let mut sources = Vec::new();
    for (s, pivot) in srcs.iter().zip(&pivots) {
        for m in expand_sources(&src_root, std::slice::from_ref(s), &ignore)? {
            sources.push((m, pivot.clone()));
        }
    }
    let excludes = Matcher::new(&c.excludes).map_err(|e| Error::Pattern {
        what: "--exclude".into(),
        why: e.to_string(),
    })?;
    sources.retain(|(s, _)| !excludes.excluded(s));
    let dest_rel = clean_rel(&c.dest);
    let count = sources.len() + c.inline.len();
    // A wildcard that matches one file copies it to the destination as named (`COPY
    // app-*.jar /app.jar`), as BuildKit does; several sources need a directory.
    let dest_dir_form = c.dest.ends_with('/') || count > 1 || c.parents;
    let dest = resolve_in_root(merged, &dest_rel, true)?;
    // Linking needs real owners (an emulated owner is an xattr a link would share
    // with the earlier snapshot's file only by luck), a snapshot that is still there,
    // and one source (a directory: only copy_tree plans links), so that no path is
    // written twice by this COPY.
    let link_from = match (&c.source, &c.link_from) {
        (Source::Context { .. }, Some(id))
            if sources.len() == 1
                && c.inline.is_empty()
                && !c.unpack
                && !kiln_snapshotter::owner::emulating()
                && !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Some(store.snapshot_path(id)).filter(|p| p.is_dir())
        }
        _ => None,
    };
    let opts = Opts {
        owner,
        chown: c.chown.is_some(),
        linked: Default::default(),
        chmod: c.chmod,
        excludes,
        links: Links {
            merged: merged.to_path_buf(),
            from: link_from,
            planned: std::cell::RefCell::new(Vec::new()),
        },
    };
    for f in &c.inline {
        if f.name.is_empty() || f.name.contains('/') || f.name == ".." || f.name == "." {
            return Err(Error::HereDocName(f.name.clone()));
        }
        let into_dir = dest_dir_form || fs::metadata(&dest).map(|m| m.is_dir()).unwrap_or(false);
        let target = file_target(merged, &dest_rel, &dest, into_dir, f.name.as_ref(), &opts)?;
        write_inline(&target, f, &opts)?;
    }
    for (s, pivot) in &sources {
        let from = resolve_in_root(&src_root, s, true)?;
        let meta = fs::symlink_metadata(&from)?;
        // --parents: the destination gains the source's own path (below the pivot).
        let (dest_rel, dest) = if c.parents {
            let keep = match pivot {
                Some(p) if !p.is_empty() => s
                    .strip_prefix(p.as_str())
                    .unwrap_or(s)
                    .trim_start_matches('/'),
                _ => s.as_str(),
            };
            let keep = if meta.is_dir() {
                keep.to_string()
            } else {
                Path::new(keep)
                    .parent()
                    .map(|p| p.to_string_lossy().to_string())
                    .unwrap_or_default()
            };
            // The kept directories are made as copies of the source's (BuildKit keeps
            // their modes), below the destination made as for any COPY.
            opts.parents(merged, &dest_rel)?;
            let src_base = pivot.as_deref().unwrap_or("");
            let mut made = dest_rel.clone();
            let mut from_rel = src_base.to_string();
            for part in keep.split('/').filter(|p| !p.is_empty()) {
                made = join_rel(&made, part);
                from_rel = join_rel(&from_rel, part);
                let to = resolve_in_root(merged, &made, true)?;
                if fs::symlink_metadata(&to).is_err() {
                    let src_dir = resolve_in_root(&src_root, &from_rel, true)?;
                    let m = fs::symlink_metadata(&src_dir)?;
                    fs::create_dir(&to)?;
                    apply_meta(&src_dir, &to, &m, &opts)?;
                }
            }
            let r = clean_rel(&format!("{dest_rel}/{keep}"));
            let d = resolve_in_root(merged, &r, true)?;
            (r, d)
        } else {
            (dest_rel.clone(), dest.clone())
        };
        if meta.is_dir() {
            // The destination directory keeps what it was when it exists (BuildKit
            // copies into it); made here, it is the parents' kind (0755 or --chmod,
            // root's or --chown's), not a copy of the source directory.
            let how = if fs::symlink_metadata(&dest).is_ok() {
                DirMeta::Kept
            } else {
                DirMeta::Made
            };
            opts.parents(merged, &dest_rel)?;
            copy_tree(&from, &dest, &opts, (s, s), &ignore, how)?;
        } else if c.unpack && meta.is_file() && is_tar_archive(&from) {
            let d = opts.parents(merged, &dest_rel)?;
            unpack_archive(&from, &d, s)?;
        } else {
            let into_dir = c.parents
                || dest_dir_form
                || fs::metadata(&dest).map(|m| m.is_dir()).unwrap_or(false);
            let name = Path::new(s).file_name().unwrap_or_default();
            let target = file_target(merged, &dest_rel, &dest, into_dir, name, &opts)?;
            copy_entry(&from, &target, &meta, &opts)?;
        }
    }
    Ok(opts.links)
}

/// The files of a COPY that are hard-linked from an earlier snapshot rather than
/// written. While the overlay is mounted they cannot be (a link cannot cross into the
/// mount), so [`copy_tree`] plans them and [`Links::apply`] makes them in the upper
/// directory once the overlay is unmounted (or in the native snapshotter's tree).
///
/// A rebuild after a one-file change in a large context then creates no inode and
/// writes no data for the unchanged files: a file is linked only when the earlier
/// snapshot has, at the same path, a regular file with the same size, mode, owner and
/// modification time and byte-for-byte the same content, so the tree (and its layer)
/// is exactly what copying would give. Files are only planned inside a copied
/// directory, whose directory is in the upper layer already (created or copied up by
/// its metadata), and only where nothing is in the way in the lower layers.
#[derive(Debug)]
pub struct Links {
    merged: PathBuf,
    from: Option<PathBuf>,
    planned: std::cell::RefCell<Vec<Planned>>,
}

#[derive(Debug)]
struct Planned {
    /// Relative to the rootfs.
    rel: PathBuf,
    /// The earlier snapshot's file.
    link: PathBuf,
    /// The context file, copied if the link cannot be made.
    source: PathBuf,
    uid: u32,
    gid: u32,
    mode: u32,
    meta: std::fs::Metadata,
}

impl Links {
    /// How many files are planned.
    pub fn len(&self) -> usize {
        self.planned.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Plans `to` as a link when the earlier snapshot has the very file `from` would
    /// become; says whether it did.
    fn plan(
        &self,
        from: &Path,
        to: &Path,
        meta: &std::fs::Metadata,
        owner: (u32, u32),
        mode: u32,
    ) -> bool {
        let Some(root) = &self.from else {
            return false;
        };
        let Ok(rel) = to.strip_prefix(&self.merged) else {
            return false;
        };
        let link = root.join(rel);
        let Ok(m) = fs::symlink_metadata(&link) else {
            return false;
        };
        let same_meta = m.file_type().is_file()
            && m.len() == meta.len()
            && m.mode() & 0o7777 == mode
            && (m.uid(), m.gid()) == owner
            && (m.mtime(), m.mtime_nsec()) == (meta.mtime(), meta.mtime_nsec())
            && xattr::list(&link)
                .map(|mut l| l.next().is_none())
                .unwrap_or(false);
        // Nothing may be in the way in the lower layers: no whiteout is needed then.
        if !same_meta
            || fs::symlink_metadata(to).is_ok()
            || !same_content(from, &link, meta.len()).unwrap_or(false)
        {
            return false;
        }
        self.planned.borrow_mut().push(Planned {
            rel: rel.to_path_buf(),
            link,
            source: from.to_path_buf(),
            uid: owner.0,
            gid: owner.1,
            mode,
            meta: meta.clone(),
        });
        true
    }

    /// Makes the planned files under `root` (the upper directory, or the native
    /// snapshotter's tree); one whose link fails (the earlier snapshot was pruned
    /// meanwhile, say) is copied from the context after all.
    pub fn apply(self, root: &Path) -> Result<()> {
        let planned = self.planned.into_inner();
        // Linking changes the directories' times, which copy_tree has set from the
        // source: they are put back afterwards.
        let mut dirs: HashMap<PathBuf, std::fs::Metadata> = HashMap::new();
        for p in &planned {
            if let Some(d) = root.join(&p.rel).parent() {
                if !dirs.contains_key(d) {
                    let m = fs::symlink_metadata(d)?;
                    dirs.insert(d.to_path_buf(), m);
                }
            }
        }
        for p in planned {
            let to = root.join(&p.rel);
            // Only a COPY of one directory plans links, and it writes each path once:
            // something already there would be a bug, and is left as it is.
            if fs::symlink_metadata(&to).is_ok() {
                continue;
            }
            if fs::hard_link(&p.link, &to).is_ok() {
                continue;
            }
            fs::copy(&p.source, &to)?;
            kiln_snapshotter::owner::chown(&to, p.uid, p.gid)?;
            fs::set_permissions(&to, std::fs::Permissions::from_mode(p.mode))?;
            native::set_times(&to, &p.meta)?;
        }
        for (d, m) in dirs {
            native::set_times(&d, &m)?;
        }
        Ok(())
    }
}

/// Whether two files of `len` bytes (as their metadata says) hold the same bytes.
fn same_content(a: &Path, b: &Path, len: u64) -> std::io::Result<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    // Most context files are small: their buffers are too (one more byte to see the end).
    let size = (len.min(128 * 1024) + 1) as usize;
    let (mut ba, mut bb) = (vec![0u8; size], vec![0u8; size]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(fb.read(&mut bb[..1])? == 0);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Where a single file source lands: `dest/name` when the destination is a directory
/// (created as needed), else `dest` itself (its parent created as needed).
fn file_target(
    merged: &Path,
    dest_rel: &str,
    dest: &Path,
    into_dir: bool,
    name: &std::ffi::OsStr,
    opts: &Opts,
) -> Result<PathBuf> {
    if into_dir {
        return Ok(opts.parents(merged, dest_rel)?.join(name));
    }
    let parent = Path::new(dest_rel)
        .parent()
        .map(|p| p.to_string_lossy().to_string())
        .unwrap_or_default();
    opts.parents(merged, &parent)?;
    Ok(dest.to_path_buf())
}

struct Opts {
    /// `--chown`'s owner, or the context's 0:0; `None`: the source's own.
    owner: Option<(u32, u32)>,
    /// Whether `--chown` was given (directories the COPY creates get its owner).
    chown: bool,
    /// The first copy of each multiply linked source file, by (dev, inode): later
    /// names of the same file become hard links to it, as in BuildKit's copy.
    linked: std::cell::RefCell<HashMap<(u64, u64), PathBuf>>,
    chmod: Option<u32>,
    /// `--exclude`, matched against paths below each copied directory.
    excludes: Matcher,
    links: Links,
}

/// Writes a here-document file.
fn write_inline(to: &Path, f: &kiln_frontend::InlineFile, opts: &Opts) -> Result<()> {
    kiln_snapshotter::tree::remove_all(to)?;
    fs::write(to, &f.data)?;
    let (uid, gid) = opts.owner.unwrap_or((0, 0));
    kiln_snapshotter::owner::chown(to, uid, gid)?;
    Ok(fs::set_permissions(
        to,
        std::fs::Permissions::from_mode(opts.chmod.unwrap_or(f.mode)),
    )?)
}

/// Most memory an xz archive's dictionary may take to unpack (xz -9 needs 64 MiB):
/// an archive of the context asking for more is refused, not a way to exhaust memory.
const XZ_MEMORY_KB: u32 = 256 * 1024;

const BZIP2: &[u8] = b"BZh";
const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];

/// Whether a stream starting with `head` is compressed in a way [`archive_reader`]
/// decompresses.
pub fn is_compressed(head: &[u8]) -> bool {
    head.starts_with(BZIP2) || head.starts_with(XZ) || kiln_snapshotter::unpack::is_compressed(head)
}

/// An archive's bytes, decompressed as BuildKit's ADD does: gzip, zstd, bzip2 or xz by
/// their magic numbers, anything else as it is.
pub fn archive_reader<R: std::io::Read + 'static>(f: R) -> Result<Box<dyn std::io::Read>> {
    use std::io::{BufRead, BufReader};
    let mut br = BufReader::with_capacity(256 * 1024, f);
    let head = br.fill_buf()?.to_vec();
    if head.starts_with(BZIP2) {
        Ok(Box::new(bzip2::bufread::MultiBzDecoder::new(br)))
    } else if head.starts_with(XZ) {
        Ok(Box::new(lzma_rust2::XzReader::new_mem_limit(
            br,
            true,
            XZ_MEMORY_KB,
        )))
    } else {
        Ok(kiln_snapshotter::unpack::decompress(br)?)
    }
}

/// Whether `p` is a tar archive, plain or compressed ([`archive_reader`]).
pub fn is_tar_archive(p: &Path) -> bool {
    fs::File::open(p).is_ok_and(is_tar_stream)
}

/// Whether `r` reads a tar archive, plain or compressed ([`archive_reader`]).
pub fn is_tar_stream<R: std::io::Read + 'static>(r: R) -> bool {
    use std::io::Read;
    let Ok(mut r) = archive_reader(r) else {
        return false;
    };
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n == 512 && &head[257..262] == b"ustar"
}

/// ADD's extraction of a local archive into `dest`, as BuildKit's untar does it: `dest`
/// is the root every entry's path resolves in (`..` and symlinks, absolute or not,
/// are followed but never leave it), and an entry replaces whatever is in its way
/// (a file over a directory, a directory over a file).
fn unpack_archive(from: &Path, dest: &Path, name: &str) -> Result<()> {
    let f = fs::File::open(from)?;
    let mut ar = tar::Archive::new(archive_reader(f)?);
    let mut dirs: Vec<(PathBuf, u64)> = Vec::new();
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::Archive {
        name: name.to_string(),
        what: what.to_string(),
        why: e.to_string(),
    };
    for entry in ar
        .entries()
        .map_err(io_ctx(format!("reading archive {name}")))?
    {
        let mut e = entry.map_err(io_ctx(format!("reading archive {name}")))?;
        let raw = e
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rel = clean_rel(&raw);
        if rel.is_empty() {
            continue;
        }
        if rel.split('/').count() > kiln_snapshotter::MAX_TREE_DEPTH {
            return Err(kiln_snapshotter::too_deep(Path::new(&rel)).into());
        }
        let (parent, leaf) = match rel.rsplit_once('/') {
            Some((p, l)) => (p, l),
            None => ("", rel.as_str()),
        };
        let dir = mkdir_owned(dest, parent, None, 0o755)?;
        let at = dir.join(leaf);
        let h = e.header().clone();
        let kind = h.entry_type();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32);
        let mtime = h.mtime().unwrap_or(0);
        let existing_dir = fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir());
        let clear = |keep_dir: bool| -> Result<()> {
            if keep_dir && existing_dir {
                return Ok(());
            }
            Ok(kiln_snapshotter::tree::remove_all(&at)?)
        };
        match kind {
            tar::EntryType::Directory => {
                clear(true)?;
                if !at.is_dir() {
                    fs::create_dir(&at)?;
                }
                dirs.push((at.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                clear(false)?;
                let mut out = fs::File::create(&at)?;
                std::io::copy(&mut e, &mut out)
                    .map_err(io_ctx(format!("archive {name}: writing {rel}")))?;
            }
            tar::EntryType::Symlink => {
                clear(false)?;
                let target = e
                    .link_name()
                    .map_err(|x| bad(&rel, &x))?
                    .unwrap_or_default();
                std::os::unix::fs::symlink(&target, &at)
                    .map_err(io_ctx(format!("archive {name}: {rel}")))?;
                kiln_snapshotter::owner::chown(&at, uid, gid)?;
                continue;
            }
            tar::EntryType::Link => {
                let target = e
                    .link_name()
                    .map_err(|x| bad(&rel, &x))?
                    .unwrap_or_default();
                let src = resolve_in_root(dest, &target.to_string_lossy(), false)?;
                clear(false)?;
                fs::hard_link(&src, &at)?;
                continue;
            }
            tar::EntryType::Fifo => {
                clear(false)?;
                nix::unistd::mkfifo(&at, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(|x| bad(&rel, &x))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                println!("archive {name}: skipped device node {rel} (rootless)");
                continue;
            }
            // Extension headers are read by the tar crate itself.
            _ => continue,
        }
        kiln_snapshotter::owner::chown(&at, uid, gid)?;
        fs::set_permissions(&at, std::fs::Permissions::from_mode(mode))?;
        if kind != tar::EntryType::Directory {
            kiln_snapshotter::unpack::set_mtime(&at, mtime)?;
        }
    }
    // Directory times last: filling a directory changes them.
    for (d, mtime) in dirs.iter().rev() {
        kiln_snapshotter::unpack::set_mtime(d, *mtime)?;
    }
    Ok(())
}

impl Opts {
    /// `mkdir -p` of the destination's directories: those made here get 0755 (or
    /// `--chmod`'s mode) and root (or `--chown`'s owner), as BuildKit's copy makes them.
    fn parents(&self, merged: &Path, rel: &str) -> Result<PathBuf> {
        let owner = if self.chown { self.owner } else { None };
        mkdir_owned(merged, rel, owner, self.chmod.unwrap_or(0o755))
    }
}

/// What a copied directory's destination takes from the source directory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DirMeta {
    /// Everything: owner, mode, times (a directory inside the copied tree).
    Copy,
    /// Only the times: the destination directory, just made as the parents are.
    Made,
    /// Nothing: a destination that existed keeps its owner, mode and times, as in
    /// BuildKit.
    Kept,
}

/// Copies the contents of directory `from` into `to`, leaving out what `ignore`
/// excludes; returns whether anything was copied. `rel` is `from`'s path in the
/// source and `top` the COPY source's own (which `--exclude` patterns are relative
/// to); `how` says what `to` takes from `from`.
fn copy_tree(
    from: &Path,
    to: &Path,
    opts: &Opts,
    (rel, top): (&str, &str),
    ignore: &Matcher,
    how: DirMeta,
) -> Result<bool> {
    if rel.split('/').count() > kiln_snapshotter::MAX_TREE_DEPTH {
        return Err(kiln_snapshotter::too_deep(Path::new(rel)).into());
    }
    let meta = fs::symlink_metadata(from)?;
    let before = match how {
        DirMeta::Copy => {
            apply_meta(from, to, &meta, opts)?;
            None
        }
        DirMeta::Made => None,
        DirMeta::Kept => Some(fs::symlink_metadata(to)?),
    };
    let mut entries: Vec<_> = fs::read_dir(from)?.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    let mut copied = false;
    for e in entries {
        let src = e.path();
        let dst = to.join(e.file_name());
        let r = join_rel(rel, &e.file_name().to_string_lossy());
        let m = fs::symlink_metadata(&src)?;
        let below = r.strip_prefix(top).unwrap_or(&r).trim_start_matches('/');
        if opts.excludes.excluded(below) {
            continue;
        }
        let excluded = ignore.excluded(&r);
        if excluded && !(m.is_dir() && ignore.has_exclusions()) {
            continue;
        }
        if m.is_dir() {
            if fs::symlink_metadata(&dst)
                .map(|d| !d.is_dir())
                .unwrap_or(false)
            {
                fs::remove_file(&dst)?;
            }
            let created = !dst.exists();
            if created {
                fs::create_dir(&dst)?;
            }
            let inner = copy_tree(
                &src,
                &dst,
                opts,
                (&r, top),
                ignore,
                if created {
                    DirMeta::Copy
                } else {
                    DirMeta::Kept
                },
            )?;
            // An excluded directory only appears for the files an exception re-includes.
            if excluded && !inner && created {
                fs::remove_dir(&dst)?;
                continue;
            }
        } else if m.is_file() && m.nlink() > 1 {
            copy_linked(&src, &dst, &m, opts)?;
        } else if !(m.is_file() && plan_link(&src, &dst, &m, opts)) {
            copy_entry(&src, &dst, &m, opts)?;
        }
        copied = true;
    }
    // Creating the entries changed the directory's times: it gets the source's, as
    // in BuildKit, so that the same context makes the same layer in every build.
    // A directory that was there keeps its times too; setting them also copies it up
    // into the overlay's upper directory, where planned links will go.
    native::set_times(to, before.as_ref().unwrap_or(&meta))?;
    Ok(copied)
}

/// Copies a file that has other names: the first name met is copied, the others are
/// hard links to that copy.
fn copy_linked(from: &Path, to: &Path, meta: &std::fs::Metadata, opts: &Opts) -> Result<()> {
    let key = (meta.dev(), meta.ino());
    let first = opts.linked.borrow().get(&key).cloned();
    match first {
        Some(first) => {
            kiln_snapshotter::tree::remove_all(to)?;
            Ok(fs::hard_link(&first, to)?)
        }
        None => {
            copy_entry(from, to, meta, opts)?;
            opts.linked.borrow_mut().insert(key, to.to_path_buf());
            Ok(())
        }
    }
}

/// Plans the regular file `from` as a link (see [`Links`]) when the earlier snapshot
/// has it with the owner and mode this copy gives it.
fn plan_link(from: &Path, to: &Path, meta: &std::fs::Metadata, opts: &Opts) -> bool {
    let Some(owner) = opts.owner else {
        return false;
    };
    let mode = opts.chmod.unwrap_or(meta.mode() & 0o7777);
    opts.links.plan(from, to, meta, owner, mode)
}

/// Copies one non-directory entry (file, symlink, fifo) to `to`, replacing what is there.
fn copy_entry(from: &Path, to: &Path, meta: &std::fs::Metadata, opts: &Opts) -> Result<()> {
    kiln_snapshotter::tree::remove_all(to)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(from)?;
        fs_err::os::unix::fs::symlink(&target, to)?;
    } else if ft.is_file() {
        fs::copy(from, to)?;
    } else if ft.is_fifo() {
        // A FIFO is copied as a FIFO, as BuildKit's copy does (mknod).
        nix::unistd::mkfifo(to, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(crate::sys_err(format!("creating FIFO {}", to.display())))?;
    } else if ft.is_socket() {
        // BuildKit's copy turns a socket into an empty regular file (a layer cannot
        // hold a socket); its mode and owner are kept.
        fs::File::create(to)?;
    } else {
        // Device nodes cannot be made without privileges: said, not copied.
        println!(
            "skipped device node {}: not copied into the image",
            from.display()
        );
        return Ok(());
    }
    apply_meta(from, to, meta, opts)
}

/// Gives `to` the owner (`--chown`, else `from`'s, emulated or real), mode and times.
fn apply_meta(from: &Path, to: &Path, meta: &std::fs::Metadata, opts: &Opts) -> Result<()> {
    let (uid, gid) = match opts.owner {
        Some(o) => o,
        None if kiln_snapshotter::owner::emulating() && !meta.file_type().is_symlink() => {
            kiln_snapshotter::owner::of(from, (meta.uid(), meta.gid()))
        }
        None => (meta.uid(), meta.gid()),
    };
    kiln_snapshotter::owner::chown(to, uid, gid)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = opts.chmod.unwrap_or(meta.mode() & 0o7777);
    fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(native::set_times(to, meta)?)
}

/// `mkdir -p` of `rel` inside `root` (following symlinks within the root), giving the
/// directories it creates `mode` and `owner`.
fn mkdir_owned(root: &Path, rel: &str, owner: Option<(u32, u32)>, mode: u32) -> Result<PathBuf> {
    let mut done = String::new();
    for part in rel.split('/').filter(|s| !s.is_empty()) {
        done = join_rel(&done, part);
        let p = resolve_in_root(root, &done, true)?;
        match fs::metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(Error::NotADirectory(done.clone())),
            Err(_) => {
                fs::create_dir(&p)?;
                if let Some((uid, gid)) = owner {
                    kiln_snapshotter::owner::chown(&p, uid, gid)?;
                }
                // After chown, which may clear set-id bits.
                fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
            }
        }
    }
    resolve_in_root(root, rel, true)
}

/// WORKDIR's directory, owned by the stage's USER when one is set (as BuildKit does).
pub fn mkdir(merged: &Path, path: &str, user: &str) -> Result<()> {
    let owner = if user.is_empty() {
        None
    } else {
        Some(chown_ids(merged, user)?)
    };
    mkdir_owned(merged, &clean_rel(path), owner, 0o755).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_cannot_leave_the_root() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("root");
        fs::create_dir_all(root.join("dir")).expect("mkdir");
        symlink("/etc", root.join("abs")).expect("symlink");
        symlink("../../../../etc", root.join("dir/rel")).expect("symlink");
        assert_eq!(
            resolve_in_root(&root, "abs/passwd", true).expect("resolve"),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(&root, "dir/rel/passwd", true).expect("resolve"),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(&root, "../../x", true).expect("resolve"),
            root.join("x")
        );
        assert_eq!(
            resolve_in_root(&root, "abs", false).expect("resolve"),
            root.join("abs")
        );
        symlink("loop", root.join("loop")).expect("symlink");
        assert!(resolve_in_root(&root, "loop/x", true).is_err());
    }

    #[test]
    fn sources_expand_globs_and_missing_ones_fail() {
        let d = tempfile::tempdir().expect("tempdir");
        for f in ["a.py", "b.py", "c.txt", "sub/d.py"] {
            let p = d.path().join(f);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, f).expect("write");
        }
        let none = Matcher::default();
        let srcs = ["*.py".into(), "sub/*.py".into(), "./c.txt".into()];
        let got = expand_sources(d.path(), &srcs, &none).expect("expand");
        assert_eq!(got, ["a.py", "b.py", "sub/d.py", "c.txt"]);
        let err = expand_sources(d.path(), &["nope".into()], &none).expect_err("missing");
        assert!(err.to_string().contains("\"/nope\": not found"), "{err}");
        assert!(expand_sources(d.path(), &["*.rs".into()], &none)
            .expect("an empty wildcard is no error, as in BuildKit")
            .is_empty());
        let ignore = Matcher::new(&["b.py".into(), "sub".into()]).expect("patterns");
        let got = expand_sources(d.path(), &["*.py".into()], &ignore).expect("expand");
        assert_eq!(got, ["a.py"]);
        assert!(
            expand_sources(d.path(), &["sub/d.py".into()], &ignore).is_err(),
            "ignored files are not found"
        );
    }

    #[test]
    fn copy_semantics_file_dir_and_dest_forms() {
        let d = tempfile::tempdir().expect("tempdir");
        let (ctx, root) = (d.path().join("ctx"), d.path().join("root"));
        fs::create_dir_all(ctx.join("dir/inner")).expect("mkdir");
        fs::create_dir_all(&root).expect("mkdir");
        fs::write(ctx.join("f"), b"file").expect("write");
        fs::write(ctx.join("dir/inner/g"), b"g").expect("write");
        let store = Store::open(d.path().join("store")).expect("store");
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let own = format!("{}:{}", me.0, me.1);
        let excludes: Vec<String> = Vec::new();
        let run = |srcs: &[&str], dest: &str, excludes: &Vec<String>| {
            let c = CopyAction {
                source: Source::Context {
                    dir: ctx.clone(),
                    excludes: excludes.clone(),
                },
                srcs: srcs.iter().map(|s| s.to_string()).collect(),
                dest: dest.into(),
                chown: Some(own.clone()),
                ..Default::default()
            };
            copy(
                &store,
                Snapshotter::Overlay,
                &root,
                &d.path().join("scratch"),
                &c,
            )
        };
        run(&["f"], "/renamed", &excludes).expect("file to path");
        assert_eq!(fs::read(root.join("renamed")).expect("read"), b"file");
        run(&["f"], "/into/", &excludes).expect("file into dir");
        assert_eq!(fs::read(root.join("into/f")).expect("read"), b"file");
        run(&["dir"], "/contents", &excludes).expect("dir contents");
        assert_eq!(fs::read(root.join("contents/inner/g")).expect("read"), b"g");
        run(&["f", "dir"], "/multi", &excludes).expect("several sources make a directory");
        assert!(root.join("multi/f").is_file() && root.join("multi/inner/g").is_file());
        // .dockerignore: an excluded directory shows up only for what an exception keeps.
        fs::write(ctx.join("dir/inner/keep"), b"k").expect("write");
        fs::create_dir_all(ctx.join("dir/skip")).expect("mkdir");
        fs::write(ctx.join("dir/skip/x"), b"x").expect("write");
        let ignore = vec![
            "dir/inner".to_string(),
            "dir/skip".into(),
            "!dir/inner/keep".into(),
        ];
        run(&["dir"], "/ignored", &ignore).expect("copy with ignore");
        assert!(root.join("ignored/inner/keep").is_file());
        assert!(!root.join("ignored/inner/g").exists());
        assert!(
            !root.join("ignored/skip").exists(),
            "an excluded dir with nothing kept is not created"
        );
    }
}
