//! `ADD https://...`: files from HTTP(S) URLs, as BuildKit's http source fetches them.
//!
//! A download goes into the content store as a blob, named by its sha256, which is what
//! the step's cache key holds. What the server said about it (ETag, Last-Modified, the
//! file name) is kept in `http/<sha256 of the URL>.json`, so the next build asks with
//! `If-None-Match`/`If-Modified-Since`: an unchanged file costs one request and no
//! download. `--checksum` is checked against what was downloaded, before anything
//! uses it. The file comes into the step as BuildKit gives it: mode 0600, the server's
//! Last-Modified as its time (the name is the frontend's: the URL's last segment).

use crate::{Error, Result};
use fs_err as fs;
use kiln_snapshotter::Store;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// What the last download of a URL gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    url: String,
    digest: String,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    last_modified: Option<String>,
}

/// A URL's file, in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub digest: String,
    /// The server's Last-Modified.
    pub modified: Option<SystemTime>,
    /// Whether the server said the stored copy is current (no download).
    pub not_modified: bool,
}

fn record_path(store: &Store, url: &str) -> PathBuf {
    let h = hex::encode(Sha256::digest(url.as_bytes()));
    store.root().join("http").join(format!("{h}.json"))
}

/// `what` is the input that needs the URL: `ADD`, `build context`.
fn fail(what: &str, url: &str, why: impl std::fmt::Display) -> Error {
    Error::Input(format!("{what} {url}: {why}"))
}

/// Whether trying again may help: no answer (refused, reset, timed out) or a 5xx; a
/// name that does not resolve, or any other answer, is final.
fn transient(e: &reqwest::Error) -> bool {
    if kiln_registry::retry::name_unresolved(e) {
        return false;
    }
    e.is_connect() || e.is_timeout() || e.status().is_some_and(|s| s.is_server_error())
}

/// Fetches `url` into `store` (or finds the stored copy still current), checking
/// `checksum` (`sha256:...`) when given.
pub async fn fetch(store: &Store, url: &str, checksum: Option<&str>) -> Result<Fetched> {
    fetch_for("ADD", store, url, checksum).await
}

/// [`fetch`] for the input `what` (its errors name it).
pub async fn fetch_for(
    what: &str,
    store: &Store,
    url: &str,
    checksum: Option<&str>,
) -> Result<Fetched> {
    let rec_path = record_path(store, url);
    let known: Option<Record> = fs::read(&rec_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|r: &Record| r.url == url && store.has_blob(&r.digest));
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| fail(what, url, e))?;
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    let resp = loop {
        let mut req = client.get(url);
        if let Some(k) = &known {
            if let Some(e) = &k.etag {
                req = req.header(reqwest::header::IF_NONE_MATCH, e);
            }
            if let Some(m) = &k.last_modified {
                req = req.header(reqwest::header::IF_MODIFIED_SINCE, m);
            }
        }
        let r = req.send().await.and_then(|r| {
            if r.status().is_server_error() {
                r.error_for_status()
            } else {
                Ok(r)
            }
        });
        match r {
            Ok(r) => break r,
            Err(e) if attempt < 4 && transient(&e) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => {
                return Err(fail(
                    what,
                    url,
                    format!("{e:#}").replace(&format!(" for url ({url})"), ""),
                ))
            }
        }
    };
    let header = |name: reqwest::header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let modified = |v: &Option<String>| {
        v.as_deref()
            .and_then(|s| chrono::DateTime::parse_from_rfc2822(s).ok())
            .map(SystemTime::from)
    };
    if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
        if let Some(k) = known {
            check(what, url, &k.digest, checksum)?;
            return Ok(Fetched {
                modified: modified(&k.last_modified),
                digest: k.digest,
                not_modified: true,
            });
        }
    }
    if !resp.status().is_success() {
        return Err(fail(
            what,
            url,
            format!("the server answered {}", resp.status()),
        ));
    }
    let etag = header(reqwest::header::ETAG);
    let last_modified = header(reqwest::header::LAST_MODIFIED);
    // Streamed into a temp file while hashing; the store gets it only when whole.
    let tmp = store.tmp_path("http");
    let downloaded = async {
        let mut out = std::io::BufWriter::new(fs::File::create(&tmp)?);
        let mut hasher = Sha256::new();
        let mut resp = resp;
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(what, url, e))? {
            hasher.update(&chunk);
            out.write_all(&chunk)?;
        }
        let f = out
            .into_inner()
            .map_err(|e| fail(what, url, e.into_error()))?;
        f.sync_all()?;
        Ok::<String, Error>(format!("sha256:{}", hex::encode(hasher.finalize())))
    }
    .await;
    let digest = match downloaded.and_then(|d| check(what, url, &d, checksum).map(|()| d)) {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    store.commit_blob_trusted(&tmp, &digest)?;
    let rec = Record {
        url: url.to_string(),
        digest: digest.clone(),
        etag,
        last_modified: last_modified.clone(),
    };
    if let Ok(bytes) = serde_json::to_vec(&rec) {
        // Only a hint for the next build: it costs a download when lost.
        let _ = store.write_file(&rec_path, &bytes, "http-record");
    }
    Ok(Fetched {
        digest,
        modified: modified(&last_modified),
        not_modified: false,
    })
}

fn check(what: &str, url: &str, digest: &str, checksum: Option<&str>) -> Result<()> {
    match checksum {
        Some(want) if want != digest => Err(fail(
            what,
            url,
            format!("digest mismatch: the file is {digest}, --checksum says {want}"),
        )),
        _ => Ok(()),
    }
}
