//! Layer blobs as an export wants them (an image's or a cache's): compression
//! (`compression=`, `compression-level=`, `force-compression=`) and file times clamped
//! to `SOURCE_DATE_EPOCH` (`rewrite-timestamp=true`).
//!
//! kiln makes its own layers with gzip when a step runs (`crate::pargz`:
//! pigz's scheme on two workers; on an 800 MB tar of /usr it took 8.7 s where
//! `pigz -p 2 -6` took 17.5 s, for output 2% larger; zlib-rs is that much faster
//! than the zlib pigz links). An export that asks for
//! something else converts a layer in one streaming pass (read the blob, decompress,
//! rewrite tar headers if asked, hash the tar for the diffID, compress, hash and write
//! the new blob) and keeps the result under a build record (`cache/convert-*.json`),
//! so exporting again, or to another output, converts nothing. As with BuildKit, a
//! base image's layers keep the compression they were pulled with unless
//! `force-compression=true`.

use crate::digest::{self, HashWriter};
use crate::records::{Kind, Layer, Record};
use crate::write_behind::{Via, WriteBehind};
use crate::{Context, Error, Result, Store};
use std::fs::File;
use std::io::{Read, Write};

/// A layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Uncompressed,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "uncompressed" => Some(Compression::Uncompressed),
            "gzip" => Some(Compression::Gzip),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The compression a layer media type names (OCI `+gzip`, Docker `.gzip`).
    pub fn of_media_type(m: &str) -> Compression {
        if m.ends_with("gzip") {
            Compression::Gzip
        } else if m.ends_with("zstd") {
            Compression::Zstd
        } else {
            Compression::Uncompressed
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::Uncompressed => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The layer media type, OCI or Docker.
    pub fn media_type(self, oci: bool) -> Result<&'static str> {
        Ok(match (self, oci) {
            (Compression::Uncompressed, true) => "application/vnd.oci.image.layer.v1.tar",
            (Compression::Gzip, true) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Compression::Zstd, true) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Compression::Uncompressed, false) => "application/vnd.docker.image.rootfs.diff.tar",
            (Compression::Gzip, false) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            (Compression::Zstd, false) => {
                return Err(Error::Unsupported(
                    "compression=zstd needs OCI media types (oci-mediatypes=true): Docker's have no zstd layer".into(),
                ))
            }
        })
    }
}

/// What an export asks of layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerOptions {
    pub compression: Compression,
    /// `None`: the compressor's default (gzip 6, zstd 3, as BuildKit).
    pub level: Option<i32>,
    /// Convert base image layers too.
    pub force: bool,
    /// Clamp file mtimes to this (`rewrite-timestamp=true` with SOURCE_DATE_EPOCH).
    pub clamp_mtime: Option<u64>,
    pub oci_media_types: bool,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            compression: Compression::Gzip,
            level: None,
            force: false,
            clamp_mtime: None,
            oci_media_types: true,
        }
    }
}

/// Whether exporting `layer` under `opts` makes a new blob (which needs its bytes).
fn recompresses(layer: &Layer, opts: &LayerOptions) -> bool {
    let current = Compression::of_media_type(&layer.media_type);
    (opts.force || !layer.pulled) && (current != opts.compression || opts.level.is_some())
}

/// Whether [`export_layer`] of `layer` under `opts` reads the layer's blob.
pub fn reads_blob(layer: &Layer, opts: &LayerOptions) -> bool {
    recompresses(layer, opts) || opts.clamp_mtime.is_some()
}

/// The blob `layer` should be exported as: itself, or a conversion (made now, or
/// found in the store from an earlier export). The media type follows the options.
pub fn export_layer(store: &Store, layer: &Layer, opts: &LayerOptions) -> Result<Layer> {
    let current = Compression::of_media_type(&layer.media_type);
    let recompress = recompresses(layer, opts);
    if !recompress && opts.clamp_mtime.is_none() {
        let mut same = layer.clone();
        same.media_type = current.media_type(opts.oci_media_types)?.to_string();
        return Ok(same);
    }
    let compression = if recompress {
        opts.compression
    } else {
        current
    };
    let params = format!(
        "{}|{}|{:?}|{:?}",
        layer.digest,
        compression.name(),
        opts.level,
        opts.clamp_mtime
    );
    let key = format!(
        "convert-{}",
        &digest::hex_part(&digest::of(params.as_bytes()))?[..32]
    );
    let media_type = compression.media_type(opts.oci_media_types)?.to_string();
    if let Some(r) = store.load_record(&key) {
        // A conversion is only as good as its blob (a record of one made by kiln
        // stays usable without it).
        if let Some(l) = r
            .layers
            .into_iter()
            .next()
            .filter(|l| store.has_blob(&l.digest))
        {
            return Ok(Layer { media_type, ..l });
        }
    }
    let (diff_id, digest, size) = convert(store, layer, compression, opts)?;
    let converted = Layer {
        diff_id,
        digest,
        size,
        media_type,
        // The same files (at most with older times): the snapshot stays the one the
        // record depends on, so pruning it also retires the conversion.
        snapshot: layer.snapshot.clone(),
        pulled: false,
        source: None,
    };
    store.save_record(
        &key,
        &Record {
            layers: vec![converted.clone()],
            produced: true,
            created: String::new(),
            kind: Kind::Regular,
            blobs: Vec::new(),
            description: format!(
                "{} of layer {}{}",
                compression.name(),
                &layer.digest,
                if opts.clamp_mtime.is_some() {
                    ", times clamped"
                } else {
                    ""
                }
            ),
        },
    )?;
    Ok(converted)
}

/// Streams `layer`'s blob into a new blob; returns (diff_id, digest, size).
fn convert(
    store: &Store,
    layer: &Layer,
    compression: Compression,
    opts: &LayerOptions,
) -> Result<(String, String, u64)> {
    let src = store.blob_path(&layer.digest)?;
    let input = File::open(&src).ctx(|| src.display().to_string())?;
    let tar = crate::unpack::decompress(input)?;
    let tmp = store.tmp_path("convert");
    let out = File::create(&tmp).ctx(|| tmp.display().to_string())?;
    let result = (|| {
        let hashed = HashWriter::new(WriteBehind::new(out, Via::PageCache));
        let (hashed, diff_id) = match compression {
            Compression::Uncompressed => write_tar(tar, HashWriter::new(hashed), opts, &tmp)?,
            Compression::Gzip => {
                let level = opts
                    .level
                    .map_or(crate::pargz::DEFAULT_LEVEL, |l| l.clamp(0, 9) as u32);
                let gz = crate::pargz::Writer::new(hashed, level, 2);
                let (gz, id) = write_tar(tar, HashWriter::new(gz), opts, &tmp)?;
                (gz.finish().ctx(|| tmp.display().to_string())?, id)
            }
            Compression::Zstd => {
                let level = opts.level.unwrap_or(3).clamp(1, 22);
                let mut z = zstd::stream::write::Encoder::new(hashed, level)
                    .ctx(|| tmp.display().to_string())?;
                // Two workers: zstd's multithreaded output does not depend on the
                // number of workers, only on using them at all, so digests stay the
                // same on every machine.
                z.multithread(2).ctx(|| tmp.display().to_string())?;
                let (z, id) = write_tar(tar, HashWriter::new(z), opts, &tmp)?;
                (z.finish().ctx(|| tmp.display().to_string())?, id)
            }
        };
        let (behind, digest, size) = hashed.finish();
        let f = behind.finish().ctx(|| tmp.display().to_string())?;
        f.sync_all().ctx(|| tmp.display().to_string())?;
        if opts.clamp_mtime.is_none() && diff_id != layer.diff_id {
            return Err(Error::DigestMismatch {
                what: format!("the content of layer {}", layer.digest),
                expected: layer.diff_id.clone(),
                actual: diff_id,
            });
        }
        store.commit_blob_trusted(&tmp, &digest)?;
        Ok((diff_id, digest, size))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies the tar stream `r` into `w` (hashing it), entry by entry when times are
/// clamped; returns the inner writer and the tar's digest.
fn write_tar<W: Write>(
    mut r: Box<dyn Read + '_>,
    w: HashWriter<W>,
    opts: &LayerOptions,
    tmp: &std::path::Path,
) -> Result<(W, String)> {
    let w = match opts.clamp_mtime {
        None => {
            let mut w = w;
            std::io::copy(&mut r, &mut w).ctx(|| tmp.display().to_string())?;
            w
        }
        Some(epoch) => clamp_times(r, w, epoch).ctx(|| tmp.display().to_string())?,
    };
    let (inner, diff_id, _) = w.finish();
    Ok((inner, diff_id))
}

/// Re-writes a tar with every mtime newer than `epoch` set to it, keeping paths,
/// links, xattrs and everything else of each entry.
fn clamp_times<W: Write>(r: Box<dyn Read + '_>, w: W, epoch: u64) -> std::io::Result<W> {
    let mut ar = tar::Archive::new(r);
    let mut out = tar::Builder::new(w);
    out.follow_symlinks(false);
    for e in ar.entries()? {
        let mut e = e?;
        let path = e.path()?.into_owned();
        let link = e.link_name()?.map(|l| l.into_owned());
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(exts) = e.pax_extensions()? {
            for x in exts {
                let x = x?;
                let k = x.key().map_err(std::io::Error::other)?;
                // Paths, link targets and sizes are written again by the builder.
                if k.starts_with("SCHILY.xattr.") || k.starts_with("LIBARCHIVE.xattr.") {
                    pax.push((k.to_string(), x.value_bytes().to_vec()));
                }
            }
        }
        let mut h = e.header().clone();
        if h.mtime()? > epoch {
            h.set_mtime(epoch);
        }
        if !pax.is_empty() {
            out.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        match link {
            Some(target)
                if matches!(
                    h.entry_type(),
                    tar::EntryType::Link | tar::EntryType::Symlink
                ) =>
            {
                out.append_link(&mut h, &path, &target)?;
            }
            _ => out.append_data(&mut h, &path, &mut e)?,
        }
    }
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().expect("tempdir");
        let s = Store::open(d.path().join("store")).expect("store");
        (d, s)
    }

    /// A gzip layer with a file (xattr, new mtime), a long path and a symlink.
    fn gzip_layer(store: &Store) -> Layer {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(3);
        h.set_mtime(2_000_000_000);
        b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
            .expect("pax");
        b.append_data(&mut h, "a/file", &b"abc"[..]).expect("file");
        let long = format!("a/{}", "x".repeat(150));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o600);
        h.set_size(0);
        h.set_mtime(100);
        b.append_data(&mut h, &long, std::io::empty())
            .expect("long");
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(2_000_000_000);
        b.append_link(&mut h, "a/link", "file").expect("link");
        let tar = b.into_inner().expect("tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).expect("gz");
        let blob = gz.finish().expect("gz");
        let digest = store.write_blob(&blob).expect("blob");
        Layer {
            diff_id: digest::of(&tar),
            digest,
            size: blob.len() as u64,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            snapshot: "s".into(),
            pulled: false,
            source: None,
        }
    }

    fn entries(store: &Store, l: &Layer) -> Vec<(String, u64, Option<Vec<u8>>)> {
        let f = File::open(store.blob_path(&l.digest).expect("path")).expect("open");
        let mut ar = tar::Archive::new(crate::unpack::decompress(f).expect("dec"));
        ar.entries()
            .expect("entries")
            .map(|e| {
                let mut e = e.expect("entry");
                let x = e
                    .pax_extensions()
                    .expect("pax")
                    .and_then(|mut p| p.find_map(|x| x.ok().map(|x| x.value_bytes().to_vec())));
                let p = e.path().expect("path").display().to_string();
                (p, e.header().mtime().expect("mtime"), x)
            })
            .collect()
    }

    #[test]
    fn conversions_keep_the_tar_and_are_cached() {
        let (_d, store) = store();
        std::fs::create_dir_all(store.snapshot_path("s")).expect("snapshot dir");
        let l = gzip_layer(&store);
        let same = export_layer(&store, &l, &LayerOptions::default()).expect("gzip");
        assert_eq!(same.digest, l.digest, "gzip stays as made");
        for c in [Compression::Zstd, Compression::Uncompressed] {
            let opts = LayerOptions {
                compression: c,
                ..LayerOptions::default()
            };
            let z = export_layer(&store, &l, &opts).expect("convert");
            assert_ne!(z.digest, l.digest);
            assert_eq!(z.diff_id, l.diff_id, "same tar");
            assert_eq!(entries(&store, &z), entries(&store, &l));
            assert_eq!(Compression::of_media_type(&z.media_type), c);
            // Cached: the blob is not made again.
            let mtime = std::fs::metadata(store.blob_path(&z.digest).expect("p"))
                .expect("stat")
                .modified()
                .expect("mtime");
            let again = export_layer(&store, &l, &opts).expect("again");
            assert_eq!(again, z);
            let mtime2 = std::fs::metadata(store.blob_path(&z.digest).expect("p"))
                .expect("stat")
                .modified()
                .expect("mtime");
            assert_eq!(mtime, mtime2);
        }
        // A pulled layer keeps its compression unless forced.
        let pulled = Layer {
            pulled: true,
            ..l.clone()
        };
        let zstd = LayerOptions {
            compression: Compression::Zstd,
            ..LayerOptions::default()
        };
        assert_eq!(
            export_layer(&store, &pulled, &zstd).expect("kept").digest,
            l.digest
        );
        let forced = LayerOptions {
            force: true,
            ..zstd.clone()
        };
        assert_ne!(
            export_layer(&store, &pulled, &forced)
                .expect("forced")
                .digest,
            l.digest
        );
        assert!(LayerOptions {
            oci_media_types: false,
            ..zstd
        }
        .compression
        .media_type(false)
        .is_err());
    }

    #[test]
    fn clamping_rewrites_only_newer_times() {
        let (_d, store) = store();
        std::fs::create_dir_all(store.snapshot_path("s")).expect("snapshot dir");
        let l = gzip_layer(&store);
        let opts = LayerOptions {
            clamp_mtime: Some(1_000),
            ..LayerOptions::default()
        };
        let c = export_layer(&store, &l, &opts).expect("clamp");
        assert_ne!(c.diff_id, l.diff_id);
        let got = entries(&store, &c);
        let long = format!("a/{}", "x".repeat(150));
        assert_eq!(
            got,
            vec![
                ("a/file".to_string(), 1_000, Some(b"v".to_vec())),
                (long, 100, None),
                ("a/link".to_string(), 1_000, None),
            ]
        );
    }
}
