//! Image archives: the OCI image layout as a tar (`type=oci`) or a directory
//! (`type=oci,tar=false`), and the Docker archive (`type=docker`), which is the same
//! layout plus the `manifest.json` that `docker load` reads, as containerd's archive
//! exporter (BuildKit's) writes it.
//!
//! A tar goes to a temp file next to its destination, is fsynced and renamed; a new
//! layout directory is filled beside its destination and renamed; an existing one
//! gets its blobs first and its `index.json` last, atomically.

use crate::image::{Descriptor, Image, Index, Multi, DOCKER_LIST, OCI_INDEX};
use crate::{io, Error, Result};
use kiln_snapshotter::{
    digest,
    store::atomic_write,
    write_behind::{Via, WriteBehind},
    Store,
};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Which archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

/// What an archive holds: one image, or several platforms' under an index.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    One(&'a Image),
    Many(&'a Multi),
}

impl<'a> Subject<'a> {
    fn descriptor(&self) -> Descriptor {
        match self {
            Subject::One(i) => i.descriptor(),
            Subject::Many(m) => m.descriptor(),
        }
    }

    fn images(self) -> Vec<&'a Image> {
        match self {
            Subject::One(i) => vec![i],
            Subject::Many(m) => m.images.iter().collect(),
        }
    }

    fn docker_types(&self) -> bool {
        self.images()
            .first()
            .is_some_and(|i| i.manifest_media_type != crate::image::OCI_MANIFEST)
    }
}

/// What goes into an archive besides the image: its names and index annotations.
#[derive(Debug, Clone, Default)]
pub struct Naming {
    pub names: Vec<String>,
    /// `annotation-index.K=V`.
    pub index_annotations: BTreeMap<String, String>,
    /// `annotation-manifest-descriptor.K=V`.
    pub descriptor_annotations: BTreeMap<String, String>,
}

/// The `index.json` annotations for a name, as BuildKit's exporters write them.
fn name_annotations(name: &str) -> Result<BTreeMap<String, String>> {
    let r = kiln_registry::parse_reference(name)?;
    let mut a = BTreeMap::new();
    a.insert("io.containerd.image.name".to_string(), r.whole());
    a.insert(
        "org.opencontainers.image.ref.name".to_string(),
        r.tag().unwrap_or("latest").to_string(),
    );
    Ok(a)
}

/// A name as Docker shows it: `docker.io/library/x:latest` is `x:latest`.
pub fn familiar(name: &str) -> Result<Option<String>> {
    let r = kiln_registry::parse_reference(name)?;
    let Some(tag) = r.tag() else {
        return Ok(None); // a digest is no RepoTag
    };
    let repo = match r.registry() {
        "docker.io" => r
            .repository()
            .strip_prefix("library/")
            .unwrap_or(r.repository())
            .to_string(),
        reg => format!("{reg}/{}", r.repository()),
    };
    Ok(Some(format!("{repo}:{tag}")))
}

fn index_for(subject: Subject, naming: &Naming) -> Result<Vec<u8>> {
    let mut manifests = Vec::new();
    let names: Vec<Option<&String>> = if naming.names.is_empty() {
        vec![None]
    } else {
        naming.names.iter().map(Some).collect()
    };
    for n in names {
        let mut d = subject.descriptor();
        d.annotations = naming.descriptor_annotations.clone();
        if let Some(n) = n {
            d.annotations.extend(name_annotations(n)?);
        }
        manifests.push(d);
    }
    let docker_types = subject.docker_types();
    Index {
        schema_version: 2,
        media_type: if docker_types { DOCKER_LIST } else { OCI_INDEX },
        manifests,
        annotations: naming.index_annotations.clone(),
    }
    .to_bytes()
}

fn docker_manifest(img: &Image, naming: &Naming) -> Result<Vec<u8>> {
    let mut tags = Vec::new();
    for n in &naming.names {
        if let Some(t) = familiar(n)? {
            tags.push(t);
        }
    }
    let blob = |d: &str| -> Result<String> { Ok(format!("blobs/sha256/{}", digest::hex_part(d)?)) };
    let entry = serde_json::json!([{
        "Config": blob(&img.config_digest)?,
        "RepoTags": tags,
        "Layers": img.layers.iter().map(|l| blob(&l.digest)).collect::<Result<Vec<_>>>()?,
    }]);
    serde_json::to_vec(&entry).map_err(|e| Error::Assemble(e.to_string()))
}

/// A file of the layout: bytes, or a blob of the store.
enum Content<'a> {
    Bytes(&'a [u8]),
    Blob(PathBuf, u64),
}

struct Layout<'a> {
    files: Vec<(String, Content<'a>)>,
}

fn layout<'a>(
    subject: Subject<'a>,
    index: &'a [u8],
    docker: Option<&'a [u8]>,
    store: &Store,
) -> Result<Layout<'a>> {
    const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let mut files = vec![
        ("oci-layout".to_string(), Content::Bytes(OCI_LAYOUT)),
        ("index.json".to_string(), Content::Bytes(index)),
    ];
    if let Some(m) = docker {
        files.push(("manifest.json".to_string(), Content::Bytes(m)));
    }
    let blob_name =
        |d: &str| -> Result<String> { Ok(format!("blobs/sha256/{}", digest::hex_part(d)?)) };
    if let Subject::Many(m) = subject {
        files.push((blob_name(&m.digest)?, Content::Bytes(&m.index)));
    }
    let mut seen = HashSet::new();
    for img in subject.images() {
        for (d, b) in [
            (&img.manifest_digest, &img.manifest),
            (&img.config_digest, &img.config),
        ] {
            if seen.insert(d) {
                files.push((blob_name(d)?, Content::Bytes(b)));
            }
        }
        for l in &img.layers {
            if seen.insert(&l.digest) {
                files.push((
                    blob_name(&l.digest)?,
                    Content::Blob(store.blob_path(&l.digest)?, l.size),
                ));
            }
        }
    }
    Ok(Layout { files })
}

/// Where a [`Base`] blob starts: after the entries of the blob directories and its
/// own header (three tar blocks).
pub const BASE_OFFSET: u64 = 3 * 512;

/// A layer blob already written into the file that becomes the archive, at `offset`
/// ([`BASE_OFFSET`]), by the step that made it (the solver's spool).
#[derive(Debug, Clone, Copy)]
pub struct Base<'a> {
    pub digest: &'a str,
    pub path: &'a Path,
    pub offset: u64,
}

/// Writes the image as an archive to `dest`: a tar file (`-` for stdout) or, with
/// `tar == false`, a layout directory. With `base` (a tar file only), the archive is
/// made in `base.path` around the blob already there, which then comes first.
pub fn write(
    subject: Subject,
    format: Format,
    naming: &Naming,
    dest: &str,
    tar: bool,
    store: &Store,
    base: Option<Base>,
) -> Result<()> {
    let (index, docker) = top_files(subject, format, naming)?;
    let l = layout(subject, &index, docker.as_deref(), store)?;
    if !tar {
        return write_dir(&l, Path::new(dest), &index);
    }
    if dest == "-" {
        let out = std::io::stdout().lock();
        let mut out = write_tar(std::io::BufWriter::new(out), &l, Path::new("-"))?;
        return out.flush().map_err(io(Path::new("-")));
    }
    let dest = PathBuf::from(dest);
    if let Some(b) = base {
        let name = format!("blobs/sha256/{}", digest::hex_part(b.digest)?);
        if let Some(i) = l.files.iter().position(|(n, _)| *n == name) {
            let mut l = l;
            let (name, content) = l.files.remove(i);
            let Content::Blob(_, size) = content else {
                return Err(Error::Assemble(format!("{name} is not a layer")));
            };
            let r = write_around(&l, &name, size, b, &dest);
            if r.is_err() {
                let _ = fs::remove_file(b.path);
            }
            return r;
        }
    }
    let tmp = sibling_tmp(&dest);
    let f = File::create(&tmp).map_err(io(&tmp))?;
    let result = write_to_file(f, 0, &l, &tmp, false).and_then(|f| {
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &dest).map_err(io(&dest))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The tar in `base.path`: the blob `name` (`size` bytes at `base.offset`) with the
/// header it lacked, then the rest of `l`; fsynced and renamed to `dest`.
fn write_around(l: &Layout, name: &str, size: u64, base: Base, dest: &Path) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let path = base.path;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    if base.offset != BASE_OFFSET || len != base.offset + size {
        return Err(Error::Assemble(format!(
            "{}: {len} bytes, where the layer written there should end at {}",
            path.display(),
            base.offset + size
        )));
    }
    // The blob's end, padded to a tar block with zeros.
    let end = (base.offset + size).div_ceil(512) * 512;
    f.set_len(end).map_err(io(path))?;
    f.seek(SeekFrom::Start(end)).map_err(io(path))?;
    let f = write_to_file(f, end, l, path, true)?;
    // The blob directories' entries and the blob's header, as `write_entries` makes
    // those of the others. Readers that extract the archive (skopeo) want the
    // directories before the files in them.
    let mut head = Vec::with_capacity(BASE_OFFSET as usize);
    for (name, kind, mode, size) in [
        (BLOB_DIRS[0], tar::EntryType::Directory, 0o755, 0),
        (BLOB_DIRS[1], tar::EntryType::Directory, 0o755, 0),
        (name, tar::EntryType::Regular, 0o644, size),
    ] {
        let mut h = entry_header(kind, mode, size);
        h.set_path(name).map_err(io(path))?;
        h.set_cksum();
        head.extend_from_slice(h.as_bytes());
    }
    f.write_all_at(&head, 0).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    fs::rename(path, dest).map_err(io(dest))
}

/// `.NAME.kiln-PID.tmp` next to `dest`.
pub fn sibling_tmp(dest: &Path) -> PathBuf {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    dir.join(format!(".{name}.kiln-{}.tmp", std::process::id()))
}

/// The archive's index.json, and for a Docker archive its manifest.json.
fn top_files(
    subject: Subject,
    format: Format,
    naming: &Naming,
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let index = index_for(subject, naming)?;
    let docker = match (format, subject) {
        (Format::Docker, Subject::One(img)) => Some(docker_manifest(img, naming)?),
        // As BuildKit's docker exporter: `docker load` takes one image per name.
        (Format::Docker, Subject::Many(_)) => {
            return Err(Error::Options(
                "type=docker holds one platform's image: export several platforms with type=oci or type=registry".into(),
            ))
        }
        (Format::Oci, _) => None,
    };
    Ok((index, docker))
}

/// Writes the image as a tar archive into `out` (a pipe to `docker load`, say);
/// `what` names the destination in errors.
pub fn write_stream<W: Write>(
    subject: Subject,
    format: Format,
    naming: &Naming,
    store: &Store,
    out: W,
    what: &str,
) -> Result<W> {
    let (index, docker) = top_files(subject, format, naming)?;
    let l = layout(subject, &index, docker.as_deref(), store)?;
    let mut out = write_tar(
        std::io::BufWriter::with_capacity(1 << 20, out),
        &l,
        Path::new(what),
    )?;
    out.flush().map_err(io(Path::new(what)))?;
    out.into_inner().map_err(|e| Error::Io {
        path: what.to_string(),
        source: e.into_error(),
    })
}

fn write_tar<W: Write>(out: W, l: &Layout, path: &Path) -> Result<W> {
    write_entries(out, l, path, false)
}

/// The entries of `l` into `f` from `start` on, written behind with direct I/O (an
/// archive is the build's output: kiln does not read it again); returns the file,
/// everything handed to the kernel but not synced.
fn write_to_file(f: File, start: u64, l: &Layout, path: &Path, dirs_done: bool) -> Result<File> {
    write_entries(WriteBehind::at(f, start, Via::Direct), l, path, dirs_done)?
        .finish()
        .map_err(io(path))
}

/// Header of an entry of the archive: no owners, no time.
fn entry_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h
}

/// The blob directories' entries, which come before the first blob.
const BLOB_DIRS: [&str; 2] = ["blobs", "blobs/sha256"];

fn write_entries<W: Write>(out: W, l: &Layout, path: &Path, mut dirs_done: bool) -> Result<W> {
    let mut tar = tar::Builder::new(out);
    let header = entry_header;
    for (name, content) in &l.files {
        if name.starts_with("blobs/") && !dirs_done {
            for d in BLOB_DIRS {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                tar.append_data(&mut h, d, std::io::empty())
                    .map_err(io(path))?;
            }
            dirs_done = true;
        }
        match content {
            Content::Bytes(b) => {
                let mut h = header(tar::EntryType::Regular, 0o644, b.len() as u64);
                tar.append_data(&mut h, name, *b).map_err(io(path))?;
            }
            Content::Blob(p, size) => {
                let f = File::open(p).map_err(io(p))?;
                let mut h = header(tar::EntryType::Regular, 0o644, *size);
                tar.append_data(&mut h, name, f).map_err(io(path))?;
            }
        }
    }
    tar.into_inner().map_err(io(path))
}

/// Writes `content` to `path` atomically (temp file, fsync, rename).
fn put(path: &Path, content: &Content) -> Result<()> {
    let tmp = sibling_tmp(path);
    let r = (|| {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        match content {
            Content::Bytes(b) => f.write_all(b).map_err(io(&tmp))?,
            Content::Blob(p, _) => {
                let mut src = File::open(p).map_err(io(p))?;
                std::io::copy(&mut src, &mut f).map_err(io(&tmp))?;
            }
        }
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

fn write_dir(l: &Layout, dest: &Path, index: &[u8]) -> Result<()> {
    let existing = dest.join("index.json");
    if existing.is_file() {
        return add_to_layout(l, dest, index);
    }
    if dest.exists() && fs::read_dir(dest).map_err(io(dest))?.next().is_some() {
        return Err(Error::Options(format!(
            "{} exists and is not an OCI layout (no index.json)",
            dest.display()
        )));
    }
    let tmp = sibling_tmp(dest);
    let r = (|| {
        fs::create_dir_all(tmp.join("blobs/sha256")).map_err(io(&tmp))?;
        for (name, c) in &l.files {
            put(&tmp.join(name), c)?;
        }
        if dest.exists() {
            fs::remove_dir(dest).map_err(io(dest))?;
        }
        fs::rename(&tmp, dest).map_err(io(dest))
    })();
    if r.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    r
}

/// Adds the image to an existing layout: blobs first, then an `index.json` in which
/// the names of `index` (the image's own) now point at it (as BuildKit's oci-layout
/// does).
fn add_to_layout(l: &Layout, dest: &Path, index: &[u8]) -> Result<()> {
    fs::create_dir_all(dest.join("blobs/sha256")).map_err(io(dest))?;
    for (name, c) in &l.files {
        if name.starts_with("blobs/") && !dest.join(name).exists() {
            put(&dest.join(name), c)?;
        }
    }
    let path = dest.join("index.json");
    let old: serde_json::Value = serde_json::from_slice(&fs::read(&path).map_err(io(&path))?)
        .map_err(|e| Error::Options(format!("{}: bad index.json: {e}", path.display())))?;
    let ours: serde_json::Value =
        serde_json::from_slice(index).map_err(|e| Error::Assemble(e.to_string()))?;
    let new_names: HashSet<String> = ours["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["annotations"]["io.containerd.image.name"].as_str())
        .map(str::to_string)
        .collect();
    let mut manifests: Vec<serde_json::Value> = old["manifests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            m["annotations"]["io.containerd.image.name"]
                .as_str()
                .is_none_or(|n| !new_names.contains(n))
        })
        .collect();
    manifests.extend(ours["manifests"].as_array().cloned().unwrap_or_default());
    let mut index = old.clone();
    index["manifests"] = serde_json::Value::Array(manifests);
    let bytes = serde_json::to_vec(&index).map_err(|e| Error::Assemble(e.to_string()))?;
    atomic_write(&path, &bytes, &sibling_tmp(&path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Image, OCI_MANIFEST};
    use kiln_snapshotter::records::Layer;
    use std::io::Read;

    fn layer(store: &Store, bytes: &[u8]) -> Layer {
        Layer {
            diff_id: digest::of(b"not checked here"),
            digest: store.write_blob(bytes).expect("blob"),
            size: bytes.len() as u64,
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            snapshot: "s".into(),
            pulled: false,
            source: None,
        }
    }

    /// name -> content of every regular file of a tar.
    fn files(path: &Path) -> Vec<(String, Vec<u8>)> {
        let mut ar = tar::Archive::new(File::open(path).expect("open"));
        let mut out = Vec::new();
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            if e.header().entry_type() == tar::EntryType::Regular {
                let mut v = Vec::new();
                e.read_to_end(&mut v).expect("read");
                out.push((e.path().expect("path").display().to_string(), v));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn an_archive_made_around_a_written_layer_is_the_same_archive() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = Store::open(d.path().join("store")).expect("store");
        let below = layer(&store, b"the layer below");
        // 1000 bytes: the blob does not end on a tar block.
        let top_bytes: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let top = layer(&store, &top_bytes);
        let config = br#"{"rootfs":{}}"#.to_vec();
        let manifest = br#"{"schemaVersion":2}"#.to_vec();
        let img = Image {
            config_digest: digest::of(&config),
            config,
            manifest_digest: digest::of(&manifest),
            manifest,
            manifest_media_type: OCI_MANIFEST.into(),
            layers: vec![below, top.clone()],
        };
        let naming = Naming::default();
        let export = |dest: &Path, base: Option<Base>| {
            let dest = dest.to_str().expect("utf8");
            write(
                Subject::One(&img),
                Format::Oci,
                &naming,
                dest,
                true,
                &store,
                base,
            )
        };
        let plain = d.path().join("plain.tar");
        export(&plain, None).expect("plain archive");

        // The top layer as a step leaves it: after room for headers, not in the store.
        let spool = d.path().join(".around.tar.kiln-1.layer.tmp");
        let mut f = File::create(&spool).expect("spool");
        f.write_all(&[0u8; BASE_OFFSET as usize]).expect("room");
        f.write_all(&top_bytes).expect("layer");
        drop(f);
        fs::remove_file(store.blob_path(&top.digest).expect("path")).expect("rm");
        let around = d.path().join("around.tar");
        let base = Base {
            digest: &top.digest,
            path: &spool,
            offset: BASE_OFFSET,
        };
        export(&around, Some(base)).expect("archive around the layer");
        assert!(!spool.exists(), "renamed into place");
        assert_eq!(files(&around), files(&plain));
        let first = tar::Archive::new(File::open(&around).expect("open"))
            .entries()
            .expect("entries")
            .nth(2)
            .expect("a third entry, after the blob directories")
            .expect("entry")
            .path()
            .expect("path")
            .display()
            .to_string();
        assert_eq!(
            first,
            format!(
                "blobs/sha256/{}",
                digest::hex_part(&top.digest).expect("hex")
            )
        );
        // GNU tar reads it too (headers, checksums and the end of the archive).
        let listed = std::process::Command::new("tar")
            .arg("-tf")
            .arg(&around)
            .output()
            .expect("tar");
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );

        // A spool that does not hold what the image says is refused, and removed.
        let mut f = File::create(&spool).expect("spool");
        f.write_all(&[0u8; 600]).expect("short");
        drop(f);
        let err = export(&around, Some(base)).expect_err("wrong length");
        assert!(err.to_string().contains("should end at 2536"), "{err}");
        assert!(!spool.exists());
    }
}
