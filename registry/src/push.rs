//! Pushes as docker pushes: blobs the registry has are skipped, blobs another
//! repository of the same registry has are mounted, the manifest goes last.

use crate::hosts::{endpoint_reference, Action, Host, CHUNK, IDLE};
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
        for c in [&host.client, &host.monolithic()] {
            self.retried(
                self.policy,
                &format!("authenticating to {}", r.registry()),
                || {
                    Watchdog::new().watch(c.auth(
                        &r,
                        &host.auth,
                        oci_client::RegistryOperation::Push,
                    ))
                },
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
                host.client
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
        let client = &host.client;
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
        // One streamed PUT, as containerd pushes: a chunked upload costs the registry
        // a request, a hash state saved and resumed, per chunk (3.1 s against 2.0 s
        // for 460 MB on distribution). Chunks only where the registry refuses the
        // whole body at once (a proxy's size limit: 413).
        let upload = |client: Client| {
            let path = path.clone();
            let r = r.clone();
            let digest = b.digest.clone();
            let size = b.size;
            async move {
                let dog = Watchdog::new();
                let stream = blob_stream(&path, CHUNK as usize).await?;
                let stream = dog.progress(stream);
                dog.watch(client.push_blob_stream(&r, stream, &digest, Some(size)))
                    .await
            }
        };
        let res = self
            .retried(
                self.policy,
                &format!("uploading {what} to {}", r.whole()),
                || upload(host.monolithic()),
            )
            .await;
        let res = match res {
            Err(e) if b.size > CHUNK && refused_whole(&e) => {
                (self.notify)(&format!(
                    "{}: {what} refused in one request ({e}); uploading it in chunks",
                    r.registry()
                ));
                self.retried(
                    self.policy,
                    &format!("uploading {what} to {}", r.whole()),
                    || upload(host.client.clone()),
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

/// Whether a registry refused a blob sent in one request in a way chunks may get
/// past: a body too large for it (or a proxy in front), or an answer the
/// distribution spec does not allow for a monolithic upload.
fn refused_whole(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    matches!(e, E::SpecViolationError(_))
        || matches!(crate::retry::status_of(e), Some(413 | 405 | 501))
}

/// A timeout on progress rather than on the whole request: it runs out when no
/// byte of the body was taken for [`IDLE`], or the answer has not come [`IDLE`]
/// after the last one. A read timeout on the client would also end an upload
/// still going up steadily after a minute.
#[derive(Clone)]
struct Watchdog(std::sync::Arc<std::sync::Mutex<tokio::time::Instant>>);

impl Watchdog {
    fn new() -> Self {
        Watchdog(std::sync::Arc::new(std::sync::Mutex::new(
            tokio::time::Instant::now(),
        )))
    }

    fn last(&self) -> tokio::time::Instant {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `stream`, each piece of it taken counting as progress.
    fn progress<S: futures_util::Stream + Send + 'static>(
        &self,
        stream: S,
    ) -> impl futures_util::Stream<Item = S::Item> + Send + 'static {
        use futures_util::StreamExt as _;
        let dog = self.clone();
        stream.inspect(move |_| {
            *dog.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = tokio::time::Instant::now();
        })
    }

    /// `fut`, or a timeout error once it has made no progress for [`IDLE`].
    async fn watch<T>(
        self,
        fut: impl std::future::Future<Output = oci_client::errors::Result<T>>,
    ) -> oci_client::errors::Result<T> {
        let mut fut = std::pin::pin!(fut);
        loop {
            let deadline = self.last() + IDLE;
            tokio::select! {
                r = &mut fut => return r,
                () = tokio::time::sleep_until(deadline) => {
                    if self.last() + IDLE <= tokio::time::Instant::now() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no progress for {} s", IDLE.as_secs()),
                        )
                        .into());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;
    use std::time::Duration;

    /// A body that takes `gaps` between its pieces, sent through the watchdog.
    async fn send(gaps: &'static [u64]) -> oci_client::errors::Result<usize> {
        let dog = Watchdog::new();
        let body = dog.progress(futures_util::stream::iter(gaps).then(|s| async move {
            tokio::time::sleep(Duration::from_secs(*s)).await;
        }));
        dog.watch(async move { Ok(body.count().await) }).await
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_times_out_on_no_progress_not_on_its_length() {
        // Five minutes in all, never a minute without a piece: it goes through.
        assert_eq!(send(&[50, 50, 50, 50, 50, 50]).await.expect("steady"), 6);
        // A minute and a second without one: it stops.
        let e = send(&[10, 61, 1]).await.expect_err("stalled");
        assert!(e.to_string().contains("no progress for 60 s"), "{e}");
        assert!(crate::retry::transient(&e), "a stall is tried again: {e}");
    }
}
