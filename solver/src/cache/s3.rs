//! `type=s3` caches: objects in a bucket, laid out as BuildKit's s3 cache lays them
//! out: `PREFIX/blobs/<digest>` for every blob, `PREFIX/manifests/<name>` for the
//! cache manifest (the same OCI manifest as a `type=local` cache's, its config the
//! [`Description`]). Requests and signing are the `object_store` crate's; credentials
//! come from the usual AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION`) unless the options give them.
//!
//! Export puts the blobs the bucket lacks, the description, and the manifest last, so
//! the name never points at a missing blob. Big blobs go up in 16 MiB parts, read from
//! the store's file as they go; downloads stream into the store, and their digests are
//! checked before they are kept. Import reads the manifest and the description only.

use super::description::{self, Description};
use super::imported::{self, BlobSource, Imported};
use crate::{Error, Result};
use futures_util::StreamExt;
use kiln_snapshotter::Store;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use std::collections::HashSet;
use std::io::{Read, Write};

/// Where an s3 cache is, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub prefix: String,
    /// Where blobs and manifests go under the prefix (BuildKit's `blobs/` and
    /// `manifests/`).
    pub blobs_prefix: String,
    pub manifests_prefix: String,
    /// The manifest's name (`manifests/<name>`; BuildKit's default is `buildkit`).
    pub name: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// `use_path_style=true`: `ENDPOINT/BUCKET/KEY` rather than `BUCKET.ENDPOINT/KEY`.
    pub path_style: bool,
}

impl Location {
    fn client(&self) -> Result<AmazonS3> {
        // A cache is a head start: a service that does not answer should cost a build
        // seconds, not object_store's default three minutes of retries.
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(30),
            ..Default::default()
        };
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .with_retry(retry);
        if let Some(r) = &self.region {
            b = b.with_region(r);
        }
        if let Some(e) = &self.endpoint_url {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        b = b.with_virtual_hosted_style_request(!self.path_style);
        if let Some(k) = &self.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &self.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        if let Some(t) = &self.session_token {
            b = b.with_token(t);
        }
        b.build().map_err(|e| self.err(e))
    }

    fn key(&self, rest: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{rest}", self.prefix))
    }

    fn blob(&self, digest: &str) -> ObjectPath {
        self.key(&format!("{}{digest}", self.blobs_prefix))
    }

    fn manifest(&self) -> ObjectPath {
        self.key(&format!("{}{}", self.manifests_prefix, self.name))
    }

    fn err(&self, why: impl std::fmt::Display) -> Error {
        Error::Input(format!("cache s3://{}/{}: {why}", self.bucket, self.prefix))
    }
}

/// The blobs of a bucket.
struct BucketBlobs {
    location: Location,
    client: AmazonS3,
    runtime: tokio::runtime::Handle,
}

impl BlobSource for BucketBlobs {
    /// Streamed into a temp file of the store, at most `size` bytes, then checked.
    fn fetch(&self, digest: &str, size: u64, store: &Store) -> Result<()> {
        let tmp = store.tmp_path("cache-blob");
        let path = self.location.blob(digest);
        let r = self.runtime.block_on(async {
            let got = self
                .client
                .get(&path)
                .await
                .map_err(|e| self.location.err(format!("{path}: {e}")))?;
            let mut out = fs_err::File::create(&tmp)?;
            let mut stream = got.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.location.err(format!("{path}: {e}")))?;
                n += chunk.len() as u64;
                if n > size {
                    return Err(self.location.err(format!(
                        "{path}: more than the {size} bytes the cache gives it"
                    )));
                }
                out.write_all(&chunk)?;
            }
            out.sync_all()?;
            Ok(())
        });
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        imported::commit(store, &tmp, digest)
    }
}

/// Reads the cache at `location`; `snapshot_id` names a layer's snapshot (by its
/// diffID) in the importing build's identity mapping.
pub fn open(
    location: Location,
    runtime: tokio::runtime::Handle,
    store: Store,
    snapshot_id: impl Fn(&str) -> Option<String>,
) -> Result<Imported> {
    let client = location.client()?;
    let get = |p: ObjectPath| {
        runtime.block_on(async {
            client
                .get(&p)
                .await
                .map_err(|e| location.err(format!("{p}: {e}")))?
                .bytes()
                .await
                .map_err(|e| location.err(format!("{p}: {e}")))
        })
    };
    let manifest: serde_json::Value = serde_json::from_slice(&get(location.manifest())?)
        .map_err(|e| location.err(format!("bad manifest: {e}")))?;
    let config = &manifest["config"];
    if config["mediaType"].as_str() != Some(description::MEDIA_TYPE) {
        return Err(location.err("its manifest is not a kiln cache's"));
    }
    let config_digest = config["digest"]
        .as_str()
        .ok_or_else(|| location.err("the manifest's config has no digest"))?;
    let bytes = get(location.blob(config_digest))?;
    if kiln_snapshotter::digest::of(&bytes) != config_digest {
        return Err(location.err("the description does not match its digest"));
    }
    let desc: Description = serde_json::from_slice(&bytes)
        .map_err(|e| location.err(format!("bad cache description: {e}")))?;
    let blobs: HashSet<String> = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["digest"].as_str().map(str::to_string))
        .collect();
    let what = format!("s3://{}/{}", location.bucket, location.prefix);
    Imported::new(
        &what,
        desc,
        blobs,
        None,
        snapshot_id,
        Box::new(BucketBlobs {
            location,
            client,
            runtime,
        }),
        store,
    )
}

/// Parts of a multipart upload, and the size from which one is used.
const PART: usize = 16 << 20;

/// Puts `desc` and its blobs (all in `store`) as the cache at `location`.
pub fn export(
    location: &Location,
    runtime: &tokio::runtime::Handle,
    desc: &Description,
    store: &Store,
) -> Result<()> {
    let client = location.client()?;
    let err = |p: &ObjectPath, e: object_store::Error| location.err(format!("{p}: {e}"));
    runtime.block_on(async {
        for b in desc.blobs() {
            let path = location.blob(&b.digest);
            // Content-addressed: a blob of the right size is the blob.
            if client.head(&path).await.is_ok_and(|m| m.size == b.size) {
                continue;
            }
            let mut f = fs_err::File::open(store.blob_path(&b.digest)?)?;
            if b.size as usize <= PART {
                let mut buf = Vec::with_capacity(b.size as usize);
                f.read_to_end(&mut buf)?;
                client
                    .put(&path, PutPayload::from(buf))
                    .await
                    .map_err(|e| err(&path, e))?;
                continue;
            }
            let upload = client
                .put_multipart(&path)
                .await
                .map_err(|e| err(&path, e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = vec![0; 1 << 20];
            loop {
                // Two parts in flight at most: memory stays bounded by the part size.
                w.wait_for_capacity(2).await.map_err(|e| err(&path, e))?;
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                w.write(&buf[..n]);
            }
            w.finish().await.map_err(|e| err(&path, e))?;
        }
        let config = serde_json::to_vec(desc).map_err(|e| location.err(e))?;
        let config_digest = kiln_snapshotter::digest::of(&config);
        let path = location.blob(&config_digest);
        client
            .put(&path, PutPayload::from(config.clone()))
            .await
            .map_err(|e| err(&path, e))?;
        let manifest = imported::manifest(desc, &config_digest, config.len());
        let path = location.manifest();
        client
            .put(&path, PutPayload::from(manifest))
            .await
            .map_err(|e| err(&path, e))?;
        Ok(())
    })
}
