//! Turning an overlay upper directory into an OCI layer in one streaming pass:
//! walk -> tar -> sha256 (diffID) -> gzip -> sha256 (digest) -> file.
//!
//! Overlay's 0/0 character-device whiteouts become `.wh.name` entries and opaque
//! directories get a `.wh..wh..opq` entry; overlay's own `user.overlay.*` xattrs are
//! dropped. Entries are written in byte order of their names so the same tree always
//! gives the same tar.

use crate::digest::HashWriter;
use crate::write_behind::{Via, WriteBehind};
use crate::{Context, Result};
use fs_err as fs;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// `application/vnd.oci.image.layer.v1.tar+gzip`.
pub const MEDIA_TYPE_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// `application/vnd.oci.image.layer.v1.tar+zstd`.
pub const MEDIA_TYPE_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// How a step's layer is compressed when it is made. BuildKit compresses a layer when
/// an exporter asks for it; kiln compresses it as the step finishes, in the
/// compression the build's outputs ask for, so that exporting it is a copy (or, for an
/// archive's top layer, nothing: the step writes it into the archive).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerCompression {
    /// Level 6 (gzip's default), on two workers: see `pargz`.
    #[default]
    Gzip,
    /// Level 3 (zstd's default), on two workers.
    Zstd,
}

impl LayerCompression {
    pub fn media_type(self) -> &'static str {
        match self {
            LayerCompression::Gzip => MEDIA_TYPE_GZIP,
            LayerCompression::Zstd => MEDIA_TYPE_ZSTD,
        }
    }
}

/// The identity of a produced layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDigests {
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
    /// sha256 of the compressed blob.
    pub digest: String,
    /// Size of the compressed blob.
    pub size: u64,
    /// Entries written (0 means the layer is empty and may be dropped).
    pub entries: u64,
}

/// Writes the layer for `upper` to `out` from its current position, compressed as
/// `compression` says, `via` the page cache or direct I/O.
pub fn write_layer(
    upper: &Path,
    mut out: File,
    compression: LayerCompression,
    via: Via,
) -> Result<LayerDigests> {
    let start = out.stream_position().ctx(|| "positioning layer".into())?;
    let compressed = HashWriter::new(WriteBehind::at(out, start, via));
    let (compressed, diff_id, entries) = match compression {
        LayerCompression::Gzip => {
            let gz = crate::pargz::Writer::new(compressed, crate::pargz::DEFAULT_LEVEL, 2);
            let (tar_hw, entries) = write_tar(upper, HashWriter::new(gz))?;
            let (gz, diff_id, _) = tar_hw.finish();
            (
                gz.finish().ctx(|| "finishing gzip".into())?,
                diff_id,
                entries,
            )
        }
        LayerCompression::Zstd => {
            let mut z =
                zstd::stream::write::Encoder::new(compressed, 3).ctx(|| "starting zstd".into())?;
            // zstd's multithreaded output depends on using workers at all, not on
            // how many: two, as everywhere in kiln, so digests agree across machines.
            z.multithread(2).ctx(|| "starting zstd workers".into())?;
            let (tar_hw, entries) = write_tar(upper, HashWriter::new(z))?;
            let (z, diff_id, _) = tar_hw.finish();
            (
                z.finish().ctx(|| "finishing zstd".into())?,
                diff_id,
                entries,
            )
        }
    };
    let (behind, digest, size) = compressed.finish();
    let file = behind.finish().ctx(|| "writing layer".into())?;
    file.sync_all().ctx(|| "syncing layer".into())?;
    Ok(LayerDigests {
        diff_id,
        digest,
        size,
        entries,
    })
}

/// Writes the tree `root` as an uncompressed tar to `out` (whiteouts and opaque
/// directories as in a layer; a tree without them is a plain filesystem tar).
/// Returns the writer and the number of entries.
pub fn write_tar<W: Write>(root: &Path, out: W) -> Result<(W, u64)> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut w = Walker {
        tar,
        links: HashMap::new(),
        entries: 0,
    };
    w.dir(root, Path::new(""))?;
    let entries = w.entries;
    let out = w.tar.into_inner().ctx(|| "finishing tar".into())?;
    Ok((out, entries))
}

struct Walker<W: Write> {
    tar: tar::Builder<W>,
    /// (dev, ino) -> first path, for hardlinks within the layer.
    links: HashMap<(u64, u64), PathBuf>,
    entries: u64,
}

/// A header for the file at `path`; its owner is the emulated one when it has the
/// `user.rootlesscontainers` xattr.
fn header_for(path: &Path, meta: &std::fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    let (uid, gid) = if meta.file_type().is_symlink() || !crate::owner::emulating() {
        (meta.uid(), meta.gid())
    } else {
        crate::owner::of(path, (meta.uid(), meta.gid()))
    };
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(0);
    h
}

impl<W: Write> Walker<W> {
    fn dir(&mut self, abs: &Path, rel: &Path) -> Result<()> {
        if rel.components().count() >= crate::MAX_TREE_DEPTH {
            return Err(crate::too_deep(rel));
        }
        let mut names: Vec<_> = fs::read_dir(abs)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .ctx(|| format!("reading {}", abs.display()))?;
        names.sort();
        for name in names {
            let a = abs.join(&name);
            let r = rel.join(&name);
            let meta = fs::symlink_metadata(&a)?;
            let ft = meta.file_type();
            self.entries += 1;
            if ft.is_char_device() && meta.rdev() == 0 {
                let mut wh = std::ffi::OsString::from(".wh.");
                wh.push(&name);
                let mut h = header_for(&a, &meta, tar::EntryType::Regular);
                h.set_mode(0o600);
                self.tar
                    .append_data(&mut h, rel.join(wh), std::io::empty())
                    .ctx(|| format!("writing whiteout {}", r.display()))?;
            } else if ft.is_dir() {
                let mut h = header_for(&a, &meta, tar::EntryType::Directory);
                self.xattrs(&a)?;
                self.tar
                    .append_data(&mut h, &r, std::io::empty())
                    .ctx(|| format!("writing {}", r.display()))?;
                if crate::unpack::is_opaque(&a) {
                    let mut h = header_for(&a, &meta, tar::EntryType::Regular);
                    h.set_mode(0o600);
                    self.tar
                        .append_data(&mut h, r.join(".wh..wh..opq"), std::io::empty())
                        .ctx(|| format!("writing {}", r.display()))?;
                }
                self.dir(&a, &r)?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&a)?;
                let mut h = header_for(&a, &meta, tar::EntryType::Symlink);
                self.tar
                    .append_link(&mut h, &r, &target)
                    .ctx(|| format!("writing {}", r.display()))?;
            } else if ft.is_file() {
                if meta.nlink() > 1 {
                    if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                        let mut h = header_for(&a, &meta, tar::EntryType::Link);
                        let first = first.clone();
                        self.tar
                            .append_link(&mut h, &r, &first)
                            .ctx(|| format!("writing {}", r.display()))?;
                        continue;
                    }
                    self.links.insert((meta.dev(), meta.ino()), r.clone());
                }
                let mut h = header_for(&a, &meta, tar::EntryType::Regular);
                h.set_size(meta.len());
                self.xattrs(&a)?;
                let f = fs::File::open(&a)?;
                self.tar
                    .append_data(&mut h, &r, f)
                    .ctx(|| format!("writing {}", r.display()))?;
            } else {
                let kind = if ft.is_fifo() {
                    tar::EntryType::Fifo
                } else if ft.is_char_device() {
                    tar::EntryType::Char
                } else if ft.is_block_device() {
                    tar::EntryType::Block
                } else {
                    self.entries -= 1;
                    continue; // sockets are not layer content
                };
                let mut h = header_for(&a, &meta, kind);
                let rdev = meta.rdev();
                h.set_device_major(nix::sys::stat::major(rdev) as u32)
                    .ctx(|| "device major".into())?;
                h.set_device_minor(nix::sys::stat::minor(rdev) as u32)
                    .ctx(|| "device minor".into())?;
                self.tar
                    .append_data(&mut h, &r, std::io::empty())
                    .ctx(|| format!("writing {}", r.display()))?;
            }
        }
        Ok(())
    }

    /// Writes a PAX header with the entry's xattrs (except overlay's own).
    fn xattrs(&mut self, p: &Path) -> Result<()> {
        let Ok(names) = xattr::list(p) else {
            return Ok(());
        };
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        for n in names {
            let n = n.to_string_lossy().to_string();
            if crate::unpack::is_overlay_xattr(&n) || n == crate::owner::XATTR {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(p, &n) {
                pax.push((format!("SCHILY.xattr.{n}"), v));
            }
        }
        if pax.is_empty() {
            return Ok(());
        }
        pax.sort();
        self.tar
            .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .ctx(|| format!("writing xattrs of {}", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::OPAQUE_XATTR;
    use std::collections::BTreeMap;

    fn list(blob: &Path) -> BTreeMap<String, (tar::EntryType, Vec<u8>)> {
        let f = File::open(blob).expect("open");
        let mut ar = tar::Archive::new(crate::unpack::decompress(f).expect("decompress"));
        let mut m = BTreeMap::new();
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            let p = e.path().expect("path").display().to_string();
            let kind = e.header().entry_type();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).expect("read");
            if kind == tar::EntryType::Link || kind == tar::EntryType::Symlink {
                data = e
                    .link_name()
                    .expect("link")
                    .expect("some")
                    .display()
                    .to_string()
                    .into_bytes();
            }
            m.insert(p, (kind, data));
        }
        m
    }

    #[test]
    fn upper_dir_becomes_layer_with_whiteouts_and_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = dir.path().join("upper");
        fs::create_dir_all(up.join("d/opaque")).expect("mkdir");
        fs::write(up.join("d/file"), b"content").expect("write");
        fs::hard_link(up.join("d/file"), up.join("d/hard")).expect("link");
        std::os::unix::fs::symlink("file", up.join("d/sym")).expect("symlink");
        nix::sys::stat::mknod(
            &up.join("d/deleted"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .expect("mknod");
        xattr::set(up.join("d/opaque"), OPAQUE_XATTR, b"y").expect("xattr");
        let out = dir.path().join("layer");
        let d = write_layer(
            &up,
            File::create(&out).expect("create"),
            LayerCompression::Gzip,
            Via::PageCache,
        )
        .expect("layer");
        let bytes = fs::read(&out).expect("read");
        assert_eq!(d.digest, crate::digest::of(&bytes));
        assert_eq!(d.size, bytes.len() as u64);
        let m = list(&out);
        assert_eq!(m["d/file"], (tar::EntryType::Regular, b"content".to_vec()));
        assert_eq!(m["d/hard"].0, tar::EntryType::Link);
        assert_eq!(m["d/sym"], (tar::EntryType::Symlink, b"file".to_vec()));
        assert!(m.contains_key("d/.wh.deleted"));
        assert!(m.contains_key("d/opaque/.wh..wh..opq"));
        assert!(!m.contains_key("d/deleted"));
        // The same tree gives the same layer.
        let out2 = dir.path().join("layer2");
        let d2 = write_layer(
            &up,
            File::create(&out2).expect("create"),
            LayerCompression::Gzip,
            Via::Direct,
        )
        .expect("layer");
        assert_eq!(d, d2);
        // zstd: the same tar (diffID), another blob, made the same way every time.
        let z = dir.path().join("layer.zst");
        let dz = write_layer(
            &up,
            File::create(&z).expect("create"),
            LayerCompression::Zstd,
            Via::PageCache,
        )
        .expect("layer");
        assert_eq!(dz.diff_id, d.diff_id);
        assert_ne!(dz.digest, d.digest);
        assert_eq!(dz.digest, crate::digest::of(&fs::read(&z).expect("read")));
        let tar = zstd::decode_all(File::open(&z).expect("open")).expect("zstd");
        assert_eq!(crate::digest::of(&tar), d.diff_id);
        let z2 = dir.path().join("layer2.zst");
        let dz2 = write_layer(
            &up,
            File::create(&z2).expect("create"),
            LayerCompression::Zstd,
            Via::Direct,
        )
        .expect("layer");
        assert_eq!(dz, dz2);
    }

    #[test]
    fn empty_upper_is_an_empty_layer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = dir.path().join("upper");
        fs::create_dir(&up).expect("mkdir");
        let d = write_layer(
            &up,
            File::create(dir.path().join("l")).expect("create"),
            LayerCompression::Gzip,
            Via::PageCache,
        )
        .expect("layer");
        assert_eq!(d.entries, 0);
    }
}
