//! Pulls: a name resolved to a platform's manifest (through registries.conf mirrors
//! first), and digest-verified blob downloads into the content store.

use crate::hosts::{endpoint_reference, Action};
use crate::{
    conf, limited, lock, parse_reference, Error, Registry, Resolved, Result, Want, ACCEPT,
};
use futures_util::TryStreamExt;
use kiln_snapshotter::Store;
use oci_client::Reference;
use oci_spec::image::{ImageIndex, ImageManifest, MediaType};
use std::path::Path;

impl Registry {
    /// Resolves `name` to the manifest for `want`, storing manifest and config;
    /// registries.conf mirrors are tried first.
    pub async fn resolve(&self, name: &str, want: &Want, store: &Store) -> Result<Resolved> {
        let res = self.resolve_remote(name, want, store).await?;
        crate::pins::write(store, name, want, &res);
        Ok(res)
    }

    /// The store's pin of `name` for `want` (see [`crate::pins`]): what the last
    /// [`Registry::resolve`] of it gave, while the store keeps its manifest and config.
    pub fn pinned(&self, name: &str, want: &Want, store: &Store) -> Option<Resolved> {
        crate::pins::read(store, name, want)
    }

    async fn resolve_remote(&self, name: &str, want: &Want, store: &Store) -> Result<Resolved> {
        let r = parse_reference(name)?;
        let canonical = format!("{}/{}", r.registry(), r.repository());
        let endpoints = self.conf.pull_endpoints(&canonical, r.digest().is_some())?;
        let mut last = None;
        for ep in endpoints {
            let er = endpoint_reference(&r, &ep)?;
            match self.resolve_at(&r, &er, &ep, want, store).await {
                Ok(res) => {
                    lock(&self.served_by).insert(canonical, ep);
                    return Ok(res);
                }
                Err(e) if ep.mirror => {
                    (self.notify)(&format!(
                        "mirror {}: {e}; trying the next source",
                        ep.repository
                    ));
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::NotFound {
            reference: canonical,
            what: "a source to pull from".into(),
        }))
    }

    async fn resolve_at(
        &self,
        asked: &Reference,
        r: &Reference,
        ep: &conf::Endpoint,
        want: &Want,
        store: &Store,
    ) -> Result<Resolved> {
        let host = self.host(r, ep.insecure).await?;
        let client = &host.client;
        let tag_or_digest = r
            .digest()
            .map(|d| format!("manifest {d}"))
            .unwrap_or_else(|| format!("tag {:?}", r.tag().unwrap_or("latest")));
        let (bytes, digest) = self
            .retried(
                self.policy_for(ep),
                &format!("fetching the manifest of {}", r.whole()),
                || client.pull_manifest_raw(r, &host.auth, &ACCEPT),
            )
            .await
            .map_err(|e| self.explain(e, r, &host, Action::Pull, &tag_or_digest))?;
        let media = media_type_of(&bytes);
        let (bytes, digest) = if media.contains("index") || media.contains("manifest.list") {
            let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| Error::Invalid {
                reference: r.whole(),
                message: format!("bad image index: {e}"),
            })?;
            let chosen = pick_or_fail(&index, want, asked.whole())?;
            let pr = r.clone_with_digest(chosen.clone());
            let (b, d) = self
                .retried(
                    self.policy_for(ep),
                    &format!("fetching the manifest of {}", pr.whole()),
                    || client.pull_manifest_raw(&pr, &host.auth, &ACCEPT[2..]),
                )
                .await
                .map_err(|e| {
                    self.explain(e, &pr, &host, Action::Pull, &format!("manifest {chosen}"))
                })?;
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
                let buf = self
                    .retried(
                        self.policy_for(ep),
                        &format!("fetching config {cfg_digest} of {}", r.whole()),
                        || async {
                            let mut buf = Vec::new();
                            client.pull_blob(r, cfg_digest.as_str(), &mut buf).await?;
                            Ok(buf)
                        },
                    )
                    .await
                    .map_err(|e| {
                        self.explain(e, r, &host, Action::Pull, &format!("config {cfg_digest}"))
                    })?;
                store.write_blob(&buf)?;
                buf
            }
        };
        Ok(Resolved {
            pinned: format!("{}/{}@{}", asked.registry(), asked.repository(), digest),
            manifest_digest: digest,
            manifest,
            config,
            mirror: ep.mirror.then(|| ep.repository.clone()),
        })
    }

    /// Downloads blob `digest` of image `pinned` into the store, verifying it; the
    /// mirror that served the manifest is asked first.
    pub async fn fetch_blob(&self, pinned: &str, digest: &str, store: &Store) -> Result<()> {
        self.fetch_sized(pinned, digest, None, store).await
    }

    /// [`Registry::fetch_blob`] of a blob whose descriptor gives its `size`: a registry
    /// that sends more or fewer bytes fails the fetch, and never more than `size` bytes
    /// reach the disk.
    pub async fn fetch_sized(
        &self,
        pinned: &str,
        digest: &str,
        size: Option<u64>,
        store: &Store,
    ) -> Result<()> {
        if store.has_blob(digest) {
            return Ok(());
        }
        let r = parse_reference(pinned)?;
        let canonical = format!("{}/{}", r.registry(), r.repository());
        let endpoints = self.blob_endpoints(&canonical)?;
        let mut last = None;
        let n = endpoints.len();
        for (i, ep) in endpoints.into_iter().enumerate() {
            let er = endpoint_reference(&r, &ep)?;
            match self
                .fetch_blob_at(&er, &ep, digest, size, store, None)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if i + 1 < n => {
                    (self.notify)(&format!("{}: {e}; trying the next source", ep.repository));
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::NotFound {
            reference: canonical,
            what: format!("blob {digest}"),
        }))
    }

    /// Where the blobs of repository `canonical` come from, in order: the mirror that
    /// served its manifest first.
    fn blob_endpoints(&self, canonical: &str) -> Result<Vec<conf::Endpoint>> {
        let mut endpoints = self.conf.pull_endpoints(canonical, true)?;
        if let Some(first) = lock(&self.served_by).get(canonical) {
            if let Some(i) = endpoints.iter().position(|e| e == first) {
                let e = endpoints.remove(i);
                endpoints.insert(0, e);
            }
        }
        Ok(endpoints)
    }

    /// [`Registry::fetch_sized`] that also writes the bytes to `tee` as they arrive
    /// (a pipe into an unpack), in one try from the first source: a retry cannot
    /// take back what `tee` got, so a failure is the caller's to retry the ordinary
    /// way. `tee` is closed when the fetch ends; the store gets the blob only if its
    /// digest matched.
    pub async fn fetch_teed(
        &self,
        pinned: &str,
        digest: &str,
        size: u64,
        store: &Store,
        tee: std::fs::File,
    ) -> Result<()> {
        let r = parse_reference(pinned)?;
        let canonical = format!("{}/{}", r.registry(), r.repository());
        let endpoints = self.blob_endpoints(&canonical)?;
        let ep = endpoints
            .into_iter()
            .next()
            .ok_or_else(|| Error::NotFound {
                reference: canonical,
                what: format!("blob {digest}"),
            })?;
        let er = endpoint_reference(&r, &ep)?;
        let tee = Some(tokio::io::BufWriter::with_capacity(
            1 << 20,
            tokio::fs::File::from_std(tee),
        ));
        self.fetch_blob_at(&er, &ep, digest, Some(size), store, tee)
            .await
    }

    async fn fetch_blob_at(
        &self,
        r: &Reference,
        ep: &conf::Endpoint,
        digest: &str,
        size: Option<u64>,
        store: &Store,
        tee: Option<tokio::io::BufWriter<tokio::fs::File>>,
    ) -> Result<()> {
        let host = self.host(r, ep.insecure).await?;
        host.client
            .store_auth_if_needed(r.resolve_registry(), &host.auth)
            .await;
        let tmp = store.tmp_path("download");
        let policy = match tee {
            Some(_) => crate::retry::Policy {
                attempts: 1,
                ..self.policy_for(ep)
            },
            None => self.policy_for(ep),
        };
        let tee = std::sync::Mutex::new(tee);
        let res = self
            .retried(
                policy,
                &format!("fetching blob {digest} of {}", ep.repository),
                || async {
                    use futures_util::TryStreamExt as _;
                    use tokio::io::AsyncWriteExt as _;
                    let file = tokio::fs::File::create(&tmp).await?;
                    // Big writes: each one of a tokio file is a trip to a blocking thread.
                    let mut w = limited::Limited::new(
                        tokio::io::BufWriter::with_capacity(1 << 20, file),
                        size,
                    );
                    // The stream verifies the digest as it goes (oci-client's
                    // VerifyingStream: one hash, where `pull_blob` makes two) and fails
                    // at its end on a mismatch; nothing unverified reaches the store.
                    let desc = oci_client::manifest::OciDescriptor {
                        digest: digest.to_string(),
                        ..Default::default()
                    };
                    let mut stream = host.client.pull_blob_stream(r, &desc).await?.stream;
                    let mut tee = lock(&tee).take();
                    while let Some(bytes) = stream.try_next().await.map_err(digest_error)? {
                        w.write_all(&bytes).await?;
                        if let Some(t) = tee.as_mut() {
                            t.write_all(&bytes).await?;
                        }
                    }
                    w.flush().await?;
                    if let Some(mut t) = tee {
                        t.flush().await?;
                    }
                    Ok(())
                },
            )
            .await;
        let wrong_size = |got: u64, want: u64| {
            Error::Invalid {
            reference: format!("{}/{}", r.registry(), r.repository()),
            message: format!(
                "blob {digest}: the manifest gives its size as {want} bytes, the registry sent {got}"
            ),
        }
        };
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            if let Some(got) = limited::overrun(&e) {
                return Err(wrong_size(got, size.unwrap_or_default()));
            }
            return Err(self.explain(e, r, &host, Action::Pull, &format!("blob {digest}")));
        }
        if let Some(want) = size {
            let got = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or_default();
            if got != want {
                let _ = std::fs::remove_file(&tmp);
                return Err(wrong_size(got, want));
            }
        }
        store.commit_blob_trusted(&tmp, digest)?;
        Ok(())
    }
}

/// A blob stream's error as the client's own: a digest mismatch (which the stream
/// reports inside an I/O error) is not a network hiccup to retry.
fn digest_error(e: std::io::Error) -> oci_client::errors::OciDistributionError {
    use oci_client::errors::{DigestError, OciDistributionError};
    if !e.get_ref().is_some_and(|i| i.is::<DigestError>()) {
        return OciDistributionError::IoError(e);
    }
    let kind = e.kind();
    match e.into_inner().map(|i| i.downcast::<DigestError>()) {
        Some(Ok(d)) => OciDistributionError::DigestError(*d),
        Some(Err(other)) => OciDistributionError::IoError(std::io::Error::new(kind, other)),
        None => OciDistributionError::IoError(kind.into()),
    }
}

/// The blob's bytes as a stream of 1 MiB pieces, never the whole blob in memory.
/// The file at `path` as a stream of `item`-byte pieces (the last may be shorter):
/// oci-client sends each piece of a chunked upload as one request, so pieces as
/// large as its chunks make the fewest round trips.
pub(crate) async fn blob_stream(
    path: &Path,
    item: usize,
) -> std::io::Result<
    impl futures_util::Stream<Item = oci_client::errors::Result<tokio_util::bytes::Bytes>>
        + Send
        + 'static,
> {
    use tokio::io::AsyncReadExt as _;
    let f = tokio::fs::File::open(path).await?;
    Ok(
        futures_util::stream::try_unfold(f, move |mut f| async move {
            let mut buf = tokio_util::bytes::BytesMut::with_capacity(item);
            while buf.len() < item {
                if f.read_buf(&mut buf).await? == 0 {
                    break;
                }
            }
            Ok::<_, std::io::Error>((!buf.is_empty()).then(|| (buf.freeze(), f)))
        })
        .map_err(oci_client::errors::OciDistributionError::from),
    )
}

pub(crate) fn media_type_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// [`pick`], or the error that names what `reference` offers.
pub(crate) fn pick_or_fail(index: &ImageIndex, want: &Want, reference: String) -> Result<String> {
    pick(index, want).ok_or_else(|| Error::NoPlatform {
        reference,
        wanted: format!(
            "{}/{}{}",
            want.os,
            want.architecture,
            want.variant
                .as_ref()
                .map(|v| format!("/{v}"))
                .unwrap_or_default()
        ),
        available: platforms(index),
    })
}

pub(crate) fn pick(index: &ImageIndex, want: &Want) -> Option<String> {
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

pub(crate) fn platforms(index: &ImageIndex) -> String {
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
