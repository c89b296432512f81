//! Images in a local OCI layout (`--build-context NAME=oci-layout://PATH[:TAG|@DIGEST]`),
//! read as buildx and BuildKit read them: the manifest `index.json` names by tag (its
//! `org.opencontainers.image.ref.name` annotation, `latest` when none is given; the
//! only manifest when none has the tag), or the one a digest names; an index is
//! resolved to the build's platform. Every blob the image needs is copied into the
//! store, checked against its digest, so that the build never goes back to the layout.

use crate::pull::{media_type_of, pick_or_fail};
use crate::{Error, Resolved, Result, Want};
use oci_spec::image::{ImageIndex, ImageManifest};
use std::io::Read;
use std::path::{Path, PathBuf};

const PREFIX: &str = "oci-layout://";

/// Manifests, indexes and configs are small; a larger one is refused.
const SMALL_BLOB: u64 = 16 << 20;

/// `oci-layout://PATH[:TAG][@DIGEST]`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    pub path: PathBuf,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

fn is_tag(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses an `oci-layout://` value as buildx does (a trailing `@DIGEST`, then a
/// trailing `:TAG`, the rest the path; `latest` when neither is given). `None` when
/// `s` is not one.
pub fn parse(s: &str) -> Option<LayoutRef> {
    let mut path = s.strip_prefix(PREFIX)?;
    let mut digest = None;
    if let Some((p, d)) = path.rsplit_once('@').filter(|(_, d)| is_digest(d)) {
        path = p;
        digest = Some(d.to_string());
    }
    let mut tag = None;
    if let Some((p, t)) = path.rsplit_once(':').filter(|(_, t)| is_tag(t)) {
        path = p;
        tag = Some(t.to_string());
    }
    if tag.is_none() && digest.is_none() {
        tag = Some("latest".to_string());
    }
    Some(LayoutRef {
        path: PathBuf::from(path),
        tag,
        digest,
    })
}

impl std::fmt::Display for LayoutRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}", self.path.display())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Resolves `r` for `want`, copying the manifest, config and layers into `store`.
pub fn resolve(r: &LayoutRef, want: &Want, store: &kiln_snapshotter::Store) -> Result<Resolved> {
    let shown = r.to_string();
    let bad = |message: String| Error::Invalid {
        reference: shown.clone(),
        message,
    };
    let index_bytes = read_small(&r.path.join("index.json")).map_err(|e| {
        bad(format!(
            "reading {}: {e}",
            r.path.join("index.json").display()
        ))
    })?;
    let index = ImageIndex::from_reader(&index_bytes[..])
        .map_err(|e| bad(format!("bad index.json: {e}")))?;
    let digest = match (&r.digest, &r.tag) {
        (Some(d), _) => d.clone(),
        (None, Some(tag)) => {
            let tagged: Vec<_> = index
                .manifests()
                .iter()
                .filter(|m| {
                    m.annotations()
                        .as_ref()
                        .and_then(|a| a.get(REF_NAME))
                        .is_some_and(|n| n == tag)
                })
                .collect();
            match (tagged.as_slice(), index.manifests().as_slice()) {
                ([one], _) => one.digest().to_string(),
                ([], [one]) => one.digest().to_string(),
                ([], _) => {
                    return Err(Error::NotFound {
                        reference: shown,
                        what: format!("an image tagged {tag:?} in index.json"),
                    })
                }
                _ => return Err(bad(format!("index.json tags several images {tag:?}"))),
            }
        }
        (None, None) => return Err(bad("no tag or digest".into())),
    };
    let mut manifest_bytes = blob(&r.path, &digest).map_err(&bad)?;
    let mut manifest_digest = digest;
    let media = media_type_of(&manifest_bytes);
    if media.contains("index") || media.contains("manifest.list") {
        let inner = ImageIndex::from_reader(&manifest_bytes[..])
            .map_err(|e| bad(format!("bad image index {manifest_digest}: {e}")))?;
        let chosen = pick_or_fail(&inner, want, shown.clone())?;
        manifest_bytes = blob(&r.path, &chosen).map_err(&bad)?;
        manifest_digest = chosen;
    }
    let manifest = ImageManifest::from_reader(&manifest_bytes[..])
        .map_err(|e| bad(format!("bad image manifest {manifest_digest}: {e}")))?;
    let cfg_digest = manifest.config().digest().to_string();
    let config = blob(&r.path, &cfg_digest).map_err(&bad)?;
    for l in manifest.layers() {
        let d = l.digest().to_string();
        if !store.has_blob(&d) {
            import(&r.path, &d, l.size(), store).map_err(&bad)?;
        }
    }
    store.write_blob(&config)?;
    store.write_blob(&manifest_bytes)?;
    let abs = std::path::absolute(&r.path).unwrap_or_else(|_| r.path.clone());
    Ok(Resolved {
        pinned: format!("{PREFIX}{}@{manifest_digest}", abs.display()),
        manifest_digest,
        manifest,
        config,
        mirror: None,
    })
}

fn blob_path(layout: &Path, digest: &str) -> std::result::Result<PathBuf, String> {
    if !is_digest(digest) {
        return Err(format!("unsupported digest {digest:?}"));
    }
    Ok(layout.join("blobs/sha256").join(&digest["sha256:".len()..]))
}

fn read_small(p: &Path) -> std::io::Result<Vec<u8>> {
    let f = fs_err::File::open(p)?;
    let mut out = Vec::new();
    f.take(SMALL_BLOB + 1).read_to_end(&mut out)?;
    if out.len() as u64 > SMALL_BLOB {
        return Err(std::io::Error::other("larger than 16 MiB"));
    }
    Ok(out)
}

/// A small blob of the layout, checked against its digest.
fn blob(layout: &Path, digest: &str) -> std::result::Result<Vec<u8>, String> {
    let p = blob_path(layout, digest)?;
    let bytes = read_small(&p).map_err(|e| format!("blob {digest}: {e}"))?;
    if kiln_snapshotter::digest::of(&bytes) != digest {
        return Err(format!("blob {digest} does not match its digest"));
    }
    Ok(bytes)
}

/// Streams a layer of the layout into the store, hashing as it goes.
fn import(
    layout: &Path,
    digest: &str,
    size: u64,
    store: &kiln_snapshotter::Store,
) -> std::result::Result<(), String> {
    let p = blob_path(layout, digest)?;
    let tmp = store.tmp_path("layout");
    let copied = (|| -> std::io::Result<(String, u64)> {
        let mut from = kiln_snapshotter::digest::HashReader::new(fs_err::File::open(&p)?);
        let mut out = std::io::BufWriter::with_capacity(1 << 20, fs_err::File::create(&tmp)?);
        std::io::copy(&mut from, &mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        from.finish()
    })();
    let result = match copied {
        Err(e) => Err(format!("layer {digest}: {e}")),
        Ok((d, _)) if d != digest => Err(format!("layer {digest} does not match its digest")),
        Ok((_, n)) if n != size => Err(format!(
            "layer {digest} is {n} bytes, the manifest says {size}"
        )),
        Ok(_) => store
            .commit_blob_trusted(&tmp, digest)
            .map_err(|e| format!("layer {digest}: {e}")),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_buildx_parses_them() {
        let d = format!("sha256:{}", "a".repeat(64));
        let p = |s: &str| parse(s).expect("an oci-layout value");
        assert_eq!(p("oci-layout://dir").tag.as_deref(), Some("latest"));
        assert_eq!(p("oci-layout://dir:v1").tag.as_deref(), Some("v1"));
        assert_eq!(p("oci-layout://dir:v1").path, PathBuf::from("dir"));
        let r = p(&format!("oci-layout://a/b@{d}"));
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(d.as_str())));
        let r = p(&format!("oci-layout://a/b:t@{d}"));
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.path, PathBuf::from("a/b"));
        // Not a tag: the path keeps it.
        assert_eq!(p("oci-layout://x:/y").path, PathBuf::from("x:/y"));
        assert!(parse("docker-image://x").is_none());
    }
}
