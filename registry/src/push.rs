//! Pushes as docker pushes: blobs the registry has are skipped, blobs another
//! repository of the same registry has are mounted, the manifest goes last.

use crate::hosts::{endpoint_reference, Action, Host, CHUNK};
use crate::pull::blob_stream;
use crate::{parse_reference, Blob, BlobOutcome, Error, Pushed, Registry, Result};
use kiln_snapshotter::Store;
use oci_client::{Client, Reference};

impl Registry {
    /// Pushes `blobs` (layers and config, from the store) and then the manifest to
    /// `target`: blobs the registry has are skipped, blobs another repository of
    /// the same registry has are mounted, the rest are uploaded, three at a time.
    pub async fn push(
        &self,
        target: &str,
        blobs: &[Blob],
        manifest: &[u8],
        media_type: &str,
        store: &Store,
    ) -> Result<Pushed> {
        let asked = parse_reference(target)?;
        let canonical = format!("{}/{}", asked.registry(), asked.repository());
        let ep = self.conf.push_endpoint(&canonical)?;
        let r = endpoint_reference(&asked, &ep)?;
        let host = self.host(&r, ep.insecure).await?;
        // Authenticate for push once, so the token covers pull and push.
        for c in [&host.chunked, &host.monolithic()] {
            self.retried(
                self.policy,
                &format!("authenticating to {}", r.registry()),
                || c.auth(&r, &host.auth, oci_client::RegistryOperation::Push),
            )
            .await
            .map_err(|e| self.explain(e, &r, &host, Action::Push, "the token"))?;
        }
        use futures_util::StreamExt as _;
        let outcomes: Vec<Result<BlobOutcome>> = futures_util::stream::iter(blobs)
            .map(|b| self.push_blob(&r, &host, b, store))
            .buffered(3)
            .collect()
            .await;
        let mut done = Vec::new();
        for (b, o) in blobs.iter().zip(outcomes) {
            done.push((b.digest.clone(), o?));
        }
        let ct = http::HeaderValue::from_str(media_type).map_err(|e| Error::Invalid {
            reference: r.whole(),
            message: format!("media type: {e}"),
        })?;
        self.retried(
            self.policy,
            &format!("pushing the manifest to {}", r.whole()),
            || {
                host.chunked
                    .push_manifest_raw(&r, manifest.to_vec(), ct.clone())
            },
        )
        .await
        .map_err(|e| self.explain(e, &r, &host, Action::Push, "the manifest"))?;
        Ok(Pushed {
            reference: r.whole(),
            digest: kiln_snapshotter::digest::of(manifest),
            size: manifest.len() as u64,
            blobs: done,
        })
    }

    async fn push_blob(
        &self,
        r: &Reference,
        host: &Host,
        b: &Blob,
        store: &Store,
    ) -> Result<BlobOutcome> {
        let client = &host.chunked;
        let what = format!("blob {}", b.digest);
        let exists = self
            .retried(
                self.policy,
                &format!("checking {what} in {}", r.whole()),
                || client.blob_exists(r, &b.digest),
            )
            .await
            .map_err(|e| self.explain(e, r, host, Action::Push, &what))?;
        let here = format!("{}/{}", r.registry(), r.repository());
        if exists {
            crate::sources::remember(store, &b.digest, &here);
            return Ok(BlobOutcome::Existing);
        }
        // Where the blob came from, then where earlier pushes put it (as containerd's
        // distribution-source labels): the first repository of this registry that
        // mounts it saves the upload.
        let mut candidates: Vec<String> = b.source.iter().cloned().collect();
        for known in crate::sources::known(store, &b.digest) {
            if !candidates.contains(&known) {
                candidates.push(known);
            }
        }
        for source in candidates.iter().take(3) {
            let on_host = crate::on_registry(source, r.registry());
            if let Some(from) = on_host.filter(|from| *from != r.repository()) {
                let src = Reference::with_digest(
                    r.registry().to_string(),
                    from.to_string(),
                    b.digest.clone(),
                );
                // 201: mounted. A registry that cannot mount (the blob is not there,
                // or the token does not cover the source) opens an upload instead and
                // answers 202; oci-client reports that as an error, and the blob is
                // then uploaded the ordinary way. The upload session left open is
                // the registry's to expire (distribution purges them).
                match client.mount_blob(r, &src, &b.digest).await {
                    Ok(()) => {
                        crate::sources::remember(store, &b.digest, &here);
                        return Ok(BlobOutcome::Mounted(from.to_string()));
                    }
                    Err(e) => tracing::debug!("mounting {} from {from}: {e}", b.digest),
                }
            }
        }
        // A blob the store lacks because the build only knew where it is (a layer
        // of an imported cache, which the push was to mount) is fetched from there
        // first, now that the mount was refused.
        if let Some(source) = b.source.as_deref().filter(|_| !store.has_blob(&b.digest)) {
            let pinned = format!("{source}@{}", b.digest);
            self.fetch_sized(&pinned, &b.digest, Some(b.size), store)
                .await?;
        }
        let path = store.blob_path(&b.digest)?;
        if let Err(e) = std::fs::metadata(&path) {
            return Err(Error::Store(kiln_snapshotter::Error::Io {
                context: format!("opening {}", path.display()),
                source: e,
            }));
        }
        let upload = |client: Client| {
            let path = path.clone();
            let r = r.clone();
            let digest = b.digest.clone();
            let size = b.size;
            async move {
                let stream = blob_stream(&path, CHUNK as usize).await?;
                client
                    .push_blob_stream(&r, stream, &digest, Some(size))
                    .await
            }
        };
        let first = if b.size <= CHUNK {
            host.monolithic()
        } else {
            host.chunked.clone()
        };
        let res = self
            .retried(
                self.policy,
                &format!("uploading {what} to {}", r.whole()),
                || upload(first.clone()),
            )
            .await;
        let res = match res {
            Err(oci_client::errors::OciDistributionError::SpecViolationError(v))
                if b.size > CHUNK =>
            {
                (self.notify)(&format!(
                    "{}: chunked upload of {what} failed ({v}); uploading it in one request",
                    r.registry()
                ));
                self.retried(
                    self.policy,
                    &format!("uploading {what} to {}", r.whole()),
                    || upload(host.monolithic()),
                )
                .await
            }
            other => other,
        };
        res.map_err(|e| self.explain(e, r, host, Action::Push, &what))?;
        crate::sources::remember(store, &b.digest, &here);
        Ok(BlobOutcome::Uploaded)
    }
}
