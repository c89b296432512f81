//! A small registry for the client's tests: the distribution API's blob, upload and
//! manifest routes over HTTP/1.1 on 127.0.0.1, with switches for what real
//! registries do that the shared test registry cannot be made to do on demand
//! (answer 5xx or drop the connection once, serve a corrupted blob, ask for a Bearer
//! token, refuse a mount with 202, refuse a large body in one request).

use sha2::Digest as _;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// An injected failure for the next request whose `METHOD path` starts with `prefix`.
pub struct Fault {
    pub prefix: String,
    /// An HTTP status, or 0 to close the connection without answering.
    pub status: u16,
}

#[derive(Default)]
pub struct State {
    /// `repo` -> digests it holds.
    pub repos: HashMap<String, HashSet<String>>,
    pub blobs: HashMap<String, Vec<u8>>,
    /// `repo:reference` -> (media type, bytes).
    pub manifests: HashMap<String, (String, Vec<u8>)>,
    uploads: HashMap<String, (String, Vec<u8>)>,
    /// `METHOD path?query` of every request, in order.
    pub log: Vec<String>,
    pub faults: Vec<Fault>,
    /// Bearer auth: (username, password); tokens are `token-for-USER`.
    pub bearer: Option<(String, String)>,
    /// Blobs served with one byte flipped.
    pub corrupt: HashSet<String>,
    /// Answer every mount with 202 (a new upload), as registries that cannot mount do.
    pub refuse_mounts: bool,
    /// Refuse a PUT whose body is larger, with 413, as proxies in front of some
    /// registries do.
    pub max_put_body: Option<usize>,
}

pub struct Fake {
    pub addr: String,
    pub state: Arc<Mutex<State>>,
}

pub fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

impl Fake {
    pub async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        let host = addr.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = s.clone();
                let host = host.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, s, host).await;
                });
            }
        });
        Fake { addr, state }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a blob into `repo`.
    pub fn add_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = digest(data);
        let mut s = self.state();
        s.blobs.insert(d.clone(), data.to_vec());
        s.repos.entry(repo.into()).or_default().insert(d.clone());
        d
    }

    /// Puts a one-layer image into `repo:tag`; returns (manifest digest, layer digest).
    pub fn add_image(&self, repo: &str, tag: &str, layer: &[u8]) -> (String, String) {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = self.add_blob(repo, config);
        let l = self.add_blob(repo, layer);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        );
        let m = digest(manifest.as_bytes());
        let mut s = self.state();
        let v = (
            "application/vnd.oci.image.manifest.v1+json".to_string(),
            manifest.into_bytes(),
        );
        s.manifests.insert(format!("{repo}:{tag}"), v.clone());
        s.manifests.insert(format!("{repo}:{m}"), v);
        (m, l)
    }

    /// How many logged requests start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.state()
            .log
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }
}

struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

async fn read_request(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = headers.get("content-length").and_then(|n| n.parse().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body).await?;
    }
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3A", ":").replace("%2F", "/")))
        .collect();
    Ok(Some(Request {
        method,
        path: path.to_string(),
        query,
        headers,
        body,
    }))
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn answer(status: u16) -> Response {
    Response {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

fn error(status: u16, code: &str) -> Response {
    Response {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: format!(r#"{{"errors":[{{"code":"{code}","message":"{code}"}}]}}"#).into_bytes(),
    }
}

impl Response {
    fn header(mut self, k: &str, v: &str) -> Response {
        self.headers.push((k.into(), v.into()));
        self
    }
}

async fn serve(conn: TcpStream, state: Arc<Mutex<State>>, host: String) -> std::io::Result<()> {
    let mut r = BufReader::new(conn);
    while let Some(req) = read_request(&mut r).await? {
        let line = {
            let q: Vec<String> = req.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{} {}?{}", req.method, req.path, q.join("&"))
        };
        let fault = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.log.push(line.clone());
            s.faults
                .iter()
                .position(|f| line.starts_with(&f.prefix))
                .map(|i| s.faults.remove(i).status)
        };
        let resp = match fault {
            Some(0) => return Ok(()),
            Some(code) => error(code, "UNAVAILABLE"),
            None => route(&req, &state, &host),
        };
        let mut out = format!("HTTP/1.1 {} X\r\n", resp.status);
        for (k, v) in &resp.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        let len = if req.method == "HEAD" {
            resp.headers
                .iter()
                .find(|(k, _)| k == "X-Length")
                .map_or(0, |(_, v)| v.parse().unwrap_or(0))
        } else {
            resp.body.len()
        };
        out.push_str(&format!("Content-Length: {len}\r\n\r\n"));
        let w = r.get_mut();
        w.write_all(out.as_bytes()).await?;
        if req.method != "HEAD" {
            w.write_all(&resp.body).await?;
        }
        w.flush().await?;
    }
    Ok(())
}

fn route(req: &Request, state: &Arc<Mutex<State>>, host: &str) -> Response {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    if req.path == "/token" {
        let Some((user, pass)) = s.bearer.clone() else {
            return answer(404);
        };
        use base64::Engine as _;
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        if req.headers.get("authorization") != Some(&want) {
            return error(401, "UNAUTHORIZED");
        }
        let body = format!(r#"{{"token":"token-for-{user}"}}"#);
        return Response {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.into_bytes(),
        };
    }
    if let Some((user, _)) = &s.bearer {
        if req.headers.get("authorization") != Some(&format!("Bearer token-for-{user}")) {
            return error(401, "UNAUTHORIZED").header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="http://{host}/token",service="fake""#),
            );
        }
    }
    if req.path == "/v2/" {
        return answer(200);
    }
    let Some(rest) = req.path.strip_prefix("/v2/") else {
        return answer(404);
    };
    let m = req.method.as_str();
    if let Some((repo, d)) = rest.split_once("/blobs/uploads/") {
        let repo = repo.to_string();
        if m == "POST" {
            if let (Some(d), Some(from)) = (req.query.get("mount"), req.query.get("from")) {
                let held = s.repos.get(from).is_some_and(|r| r.contains(d));
                if held && !s.refuse_mounts {
                    s.repos.entry(repo.clone()).or_default().insert(d.clone());
                    return answer(201).header("Location", &format!("/v2/{repo}/blobs/{d}"));
                }
            }
            let id = format!("u{}", s.uploads.len() + 1);
            s.uploads.insert(id.clone(), (repo.clone(), Vec::new()));
            return answer(202)
                .header("Location", &format!("/v2/{repo}/blobs/uploads/{id}"))
                .header("Range", "0-0");
        }
        let id = d.to_string();
        if !s.uploads.contains_key(&id) {
            return error(404, "BLOB_UPLOAD_UNKNOWN");
        }
        if m == "PUT" && s.max_put_body.is_some_and(|max| req.body.len() > max) {
            return error(413, "SIZE_INVALID");
        }
        let Some(up) = s.uploads.get_mut(&id) else {
            return error(404, "BLOB_UPLOAD_UNKNOWN");
        };
        up.1.extend_from_slice(&req.body);
        let len = up.1.len();
        if m == "PATCH" {
            return answer(202)
                .header("Location", &format!("/v2/{repo}/blobs/uploads/{id}"))
                .header("Range", &format!("0-{}", len.saturating_sub(1)));
        }
        if m == "PUT" {
            let Some(want) = req.query.get("digest").cloned() else {
                return error(400, "DIGEST_INVALID");
            };
            let Some((_, data)) = s.uploads.remove(&id) else {
                return error(404, "BLOB_UPLOAD_UNKNOWN");
            };
            if digest(&data) != want {
                return error(400, "DIGEST_INVALID");
            }
            s.blobs.insert(want.clone(), data);
            s.repos
                .entry(repo.clone())
                .or_default()
                .insert(want.clone());
            return answer(201).header("Location", &format!("/v2/{repo}/blobs/{want}"));
        }
        return answer(405);
    }
    if let Some((repo, d)) = rest.split_once("/blobs/") {
        let held = s.repos.get(repo).is_some_and(|r| r.contains(d));
        let Some(data) = s.blobs.get(d).filter(|_| held) else {
            return error(404, "BLOB_UNKNOWN");
        };
        let mut body = data.clone();
        if s.corrupt.contains(d) {
            if let Some(b) = body.last_mut() {
                *b ^= 0xff;
            }
        }
        return Response {
            status: 200,
            headers: vec![
                ("X-Length".into(), body.len().to_string()),
                ("Content-Type".into(), "application/octet-stream".into()),
            ],
            body,
        };
    }
    if let Some((repo, reference)) = rest.split_once("/manifests/") {
        let key = format!("{repo}:{reference}");
        if m == "PUT" {
            let media = req.headers.get("content-type").cloned().unwrap_or_default();
            let d = digest(&req.body);
            s.manifests.insert(key, (media.clone(), req.body.clone()));
            s.manifests
                .insert(format!("{repo}:{d}"), (media, req.body.clone()));
            return answer(201)
                .header("Location", &format!("/v2/{repo}/manifests/{d}"))
                .header("Docker-Content-Digest", &d);
        }
        let Some((media, body)) = s.manifests.get(&key).cloned() else {
            return error(404, "MANIFEST_UNKNOWN");
        };
        return Response {
            status: 200,
            headers: vec![
                ("Content-Type".into(), media),
                ("Docker-Content-Digest".into(), digest(&body)),
                ("X-Length".into(), body.len().to_string()),
            ],
            body,
        };
    }
    answer(404)
}
