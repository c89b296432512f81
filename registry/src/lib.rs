//! kiln's registry client, shared by pull and push.
//!
//! It owns image-name resolution the Docker way (`busybox` ->
//! `docker.io/library/busybox:latest`), the choice of a platform's manifest from an
//! index, digest-verified blob downloads into the content store, and pushes that skip
//! blobs the registry already has. The wire protocol is oci-client's; loopback
//! registries are spoken to over plain HTTP as Docker does, everything else over HTTPS.

use futures_util::TryStreamExt;
use kiln_snapshotter::Store;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{ImageIndex, ImageManifest, MediaType};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Media types accepted when fetching a manifest by tag.
const ACCEPT: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Everything that can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An image name that does not parse.
    #[error("invalid image reference {name:?}: {message}")]
    BadReference { name: String, message: String },
    /// A registry request failed.
    #[error("{op} {reference}: {message}")]
    Registry {
        op: &'static str,
        reference: String,
        message: String,
    },
    /// The image has no manifest for the wanted platform.
    #[error("{reference}: no image for platform {wanted}; it offers: {available}")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    /// A manifest or config that is not what it claims to be.
    #[error("{reference}: {message}")]
    Invalid { reference: String, message: String },
    /// The content store failed.
    #[error(transparent)]
    Store(#[from] kiln_snapshotter::Error),
}

/// Result alias for the registry client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The platform to pick from an index.
#[derive(Debug, Clone)]
pub struct Want {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// A manifest pinned by digest, with its config, both kept in the store.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// `registry/repository@sha256:...`.
    pub pinned: String,
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    pub config: Vec<u8>,
}

/// A blob to push from the store.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub reference: String,
    pub digest: String,
    pub size: u64,
    /// Blobs uploaded and blobs the registry already had.
    pub uploaded: Vec<String>,
    pub existing: Vec<String>,
}

/// Parses a name the Docker way.
pub fn parse_reference(name: &str) -> Result<Reference> {
    let r = name.parse::<Reference>().map_err(|e| Error::BadReference {
        name: name.to_string(),
        message: e.to_string(),
    })?;
    // Docker's reference grammar allows only lowercase repository paths.
    if r.repository().chars().any(|c| c.is_ascii_uppercase()) {
        return Err(Error::BadReference {
            name: name.to_string(),
            message: "repository name must be lowercase".into(),
        });
    }
    Ok(r)
}

/// Whether Docker would talk plain HTTP to this registry host (loopback only).
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                registry
            }
        }),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// A registry client with one connection pool per registry host.
#[derive(Default)]
pub struct Registry {
    clients: Mutex<HashMap<String, Client>>,
}

fn fail<'a>(
    op: &'static str,
    r: &'a Reference,
) -> impl FnOnce(oci_client::errors::OciDistributionError) -> Error + 'a {
    move |e| Error::Registry {
        op,
        reference: r.whole(),
        message: e.to_string(),
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn client(&self, r: &Reference) -> Client {
        let host = r.resolve_registry().to_string();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(host.clone())
            .or_insert_with(|| {
                let protocol = if is_loopback(&host) {
                    ClientProtocol::Http
                } else {
                    ClientProtocol::Https
                };
                Client::new(ClientConfig {
                    protocol,
                    ..Default::default()
                })
            })
            .clone()
    }

    /// Resolves `name` to the manifest for `want`, storing manifest and config.
    pub async fn resolve(&self, name: &str, want: &Want, store: &Store) -> Result<Resolved> {
        let r = parse_reference(name)?;
        let client = self.client(&r);
        let (bytes, digest) = client
            .pull_manifest_raw(&r, &RegistryAuth::Anonymous, &ACCEPT)
            .await
            .map_err(fail("fetching manifest for", &r))?;
        let media = media_type_of(&bytes);
        let (bytes, digest) = if media.contains("index") || media.contains("manifest.list") {
            let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| Error::Invalid {
                reference: r.whole(),
                message: format!("bad image index: {e}"),
            })?;
            let chosen = pick(&index, want).ok_or_else(|| Error::NoPlatform {
                reference: r.whole(),
                wanted: format!(
                    "{}/{}{}",
                    want.os,
                    want.architecture,
                    want.variant
                        .as_ref()
                        .map(|v| format!("/{v}"))
                        .unwrap_or_default()
                ),
                available: platforms(&index),
            })?;
            let pr = r.clone_with_digest(chosen.clone());
            let (b, d) = client
                .pull_manifest_raw(&pr, &RegistryAuth::Anonymous, &ACCEPT[2..])
                .await
                .map_err(fail("fetching manifest for", &pr))?;
            if d != chosen {
                return Err(Error::Invalid {
                    reference: pr.whole(),
                    message: format!("manifest does not match its digest {chosen}"),
                });
            }
            (b, d)
        } else {
            (bytes, digest)
        };
        if kiln_snapshotter::digest::of(&bytes) != digest {
            return Err(Error::Invalid {
                reference: r.whole(),
                message: format!("manifest does not match its digest {digest}"),
            });
        }
        let manifest = ImageManifest::from_reader(&bytes[..]).map_err(|e| Error::Invalid {
            reference: r.whole(),
            message: format!("bad image manifest: {e}"),
        })?;
        store.write_blob(&bytes)?;
        let cfg_digest = manifest.config().digest().to_string();
        let config = match store.read_blob(&cfg_digest) {
            Ok(c) => c,
            Err(_) => {
                let mut buf = Vec::new();
                client
                    .pull_blob(&r, cfg_digest.as_str(), &mut buf)
                    .await
                    .map_err(fail("fetching config of", &r))?;
                if kiln_snapshotter::digest::of(&buf) != cfg_digest {
                    return Err(Error::Invalid {
                        reference: r.whole(),
                        message: format!("config does not match {cfg_digest}"),
                    });
                }
                store.write_blob(&buf)?;
                buf
            }
        };
        let pinned = format!("{}/{}@{}", r.registry(), r.repository(), digest);
        Ok(Resolved {
            pinned,
            manifest_digest: digest,
            manifest,
            config,
        })
    }

    /// Downloads blob `digest` of image `pinned` into the store, verifying it.
    pub async fn fetch_blob(&self, pinned: &str, digest: &str, store: &Store) -> Result<()> {
        if store.has_blob(digest) {
            return Ok(());
        }
        let r = parse_reference(pinned)?;
        let tmp = store.tmp_path("download");
        let file = tokio::fs::File::create(&tmp).await.map_err(|e| {
            Error::Store(kiln_snapshotter::Error::Io {
                context: format!("creating {}", tmp.display()),
                source: e,
            })
        })?;
        let res = self.client(&r).pull_blob(&r, digest, file).await;
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Registry {
                op: "fetching blob",
                reference: format!("{}/{}@{digest}", r.registry(), r.repository()),
                message: e.to_string(),
            });
        }
        store.commit_blob(&tmp, digest)?;
        Ok(())
    }

    /// Pushes `blobs` (layers and config, from the store) and then the manifest to
    /// `target`, skipping blobs the registry already has.
    pub async fn push(
        &self,
        target: &str,
        blobs: &[Blob],
        manifest: &[u8],
        media_type: &str,
        store: &Store,
    ) -> Result<Pushed> {
        let r = parse_reference(target)?;
        let client = self.client(&r);
        let mut uploaded = Vec::new();
        let mut existing = Vec::new();
        for b in blobs {
            if client
                .blob_exists(&r, &b.digest)
                .await
                .map_err(fail("checking blob in", &r))?
            {
                existing.push(b.digest.clone());
                continue;
            }
            let path = store.blob_path(&b.digest)?;
            let stream = blob_stream(&path).await?;
            client
                .push_blob_stream(&r, stream, &b.digest, Some(b.size))
                .await
                .map_err(fail("uploading blob to", &r))?;
            uploaded.push(b.digest.clone());
        }
        let ct = http::HeaderValue::from_str(media_type).map_err(|e| Error::Invalid {
            reference: r.whole(),
            message: format!("media type: {e}"),
        })?;
        client
            .push_manifest_raw(&r, manifest.to_vec(), ct)
            .await
            .map_err(fail("pushing manifest to", &r))?;
        Ok(Pushed {
            reference: r.whole(),
            digest: kiln_snapshotter::digest::of(manifest),
            size: manifest.len() as u64,
            uploaded,
            existing,
        })
    }
}

async fn blob_stream(
    path: &Path,
) -> Result<
    impl futures_util::Stream<Item = oci_client::errors::Result<tokio_util::bytes::Bytes>>
        + Send
        + 'static,
> {
    let f = tokio::fs::File::open(path).await.map_err(|e| {
        Error::Store(kiln_snapshotter::Error::Io {
            context: format!("opening {}", path.display()),
            source: e,
        })
    })?;
    Ok(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20)
        .map_err(oci_client::errors::OciDistributionError::from))
}

fn media_type_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn pick(index: &ImageIndex, want: &Want) -> Option<String> {
    let matches = |variant_must: bool| {
        index.manifests().iter().find(|m| {
            let Some(p) = m.platform() else { return false };
            let os_ok = p.os().to_string() == want.os;
            let arch_ok = p.architecture().to_string() == want.architecture;
            let var_ok = match (&want.variant, p.variant()) {
                (Some(w), Some(v)) => w == v,
                (None, None) => true,
                _ => !variant_must,
            };
            os_ok
                && arch_ok
                && var_ok
                && !matches!(m.media_type(), MediaType::Other(t) if t.contains("attestation"))
        })
    };
    matches(true)
        .or_else(|| matches(false))
        .map(|m| m.digest().to_string())
}

fn platforms(index: &ImageIndex) -> String {
    let v: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|m| m.platform().as_ref())
        .map(|p| match p.variant() {
            Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
            None => format!("{}/{}", p.os(), p.architecture()),
        })
        .collect();
    if v.is_empty() {
        "no platforms".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_the_docker_way() {
        let r = parse_reference("python:3.8-slim").expect("parses");
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("docker.io", "library/python", Some("3.8-slim"))
        );
        let r = parse_reference("127.0.0.1:5000/team/app:v1").expect("parses");
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "team/app", Some("v1"))
        );
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = parse_reference(&format!("busybox@{d}")).expect("parses");
        assert_eq!(r.digest(), Some(d));
        assert!(parse_reference("UPPER/case").is_err());
        assert!(parse_reference("bad name").is_err());
    }

    #[test]
    fn only_loopback_is_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("docker.io"));
        assert!(!is_loopback("registry.example:5000"));
    }

    #[test]
    fn picks_platform_from_index() {
        let idx: ImageIndex = serde_json::from_str(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1,"platform":{"os":"linux","architecture":"arm64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}"#,
        )
        .expect("index");
        let want = Want {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        assert_eq!(
            pick(&idx, &want).as_deref(),
            Some("sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
        );
        let want = Want {
            os: "linux".into(),
            architecture: "s390x".into(),
            variant: None,
        };
        assert_eq!(pick(&idx, &want), None);
        assert_eq!(platforms(&idx), "linux/arm64, linux/amd64");
    }
}
