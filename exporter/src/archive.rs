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
use kiln_snapshotter::{digest, digest::WriteBehind, store::atomic_write, Store};
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

/// Writes the image as an archive to `dest`: a tar file (`-` for stdout) or, with
/// `tar == false`, a layout directory.
pub fn write(
    subject: Subject,
    format: Format,
    naming: &Naming,
    dest: &str,
    tar: bool,
    store: &Store,
) -> Result<()> {
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
    let tmp = sibling_tmp(&dest);
    let f = File::create(&tmp).map_err(io(&tmp))?;
    let out = std::io::BufWriter::with_capacity(1 << 20, WriteBehind::new(f));
    let result = write_tar(out, &l, &tmp).and_then(|w| {
        let f = w
            .into_inner()
            .map_err(|e| Error::Io {
                path: tmp.display().to_string(),
                source: e.into_error(),
            })?
            .into_inner();
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &dest).map_err(io(&dest))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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

fn write_tar<W: Write>(out: W, l: &Layout, path: &Path) -> Result<W> {
    let mut tar = tar::Builder::new(out);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h
    };
    let mut dirs_done = false;
    for (name, content) in &l.files {
        if name.starts_with("blobs/") && !dirs_done {
            for d in ["blobs", "blobs/sha256"] {
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
