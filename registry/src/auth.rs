//! Registry credentials, found where docker and podman keep them, and `kiln login` /
//! `kiln logout` writing them back in docker's config format.
//!
//! The files are read in the order of containers-auth.json(5), and within each file
//! the entries are chosen as the docker CLI chooses them:
//!
//! 1. `$REGISTRY_AUTH_FILE`, or else `$XDG_RUNTIME_DIR/containers/auth.json`;
//! 2. `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/containers/auth.json`);
//! 3. `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`).
//!
//! In a file, `credHelpers[host]` names a `docker-credential-<name>` helper for that
//! host; else `credsStore` names one for every host; a helper that knows nothing of
//! the host (or a file without helpers) leaves `auths`, whose keys may be a host,
//! `host/namespace` (most specific wins, as in containers-auth.json), or a URL such
//! as `https://index.docker.io/v1/`.

use crate::Error;
use base64::Engine as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A username and secret for one registry, and where they came from (for messages).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub secret: String,
    /// A file or `docker-credential-NAME`.
    pub from: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .field("from", &self.from)
            .finish()
    }
}

/// The environment that decides where credentials live (a struct, so tests need not
/// touch the process environment).
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub registry_auth_file: Option<PathBuf>,
    pub xdg_runtime_dir: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
    pub docker_config: Option<PathBuf>,
    pub home: Option<PathBuf>,
    /// A directory searched for `docker-credential-*` helpers before `$PATH`.
    pub helper_path: Option<std::ffi::OsString>,
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Env {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Env {
            registry_auth_file: var("REGISTRY_AUTH_FILE"),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            docker_config: var("DOCKER_CONFIG"),
            home: var("HOME"),
            helper_path: None,
        }
    }

    /// The files credentials are read from, in order (existing or not).
    pub fn read_paths(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        match (&self.registry_auth_file, &self.xdg_runtime_dir) {
            (Some(f), _) => v.push(f.clone()),
            (None, Some(d)) => v.push(d.join("containers/auth.json")),
            (None, None) => {}
        }
        if let Some(c) = self
            .xdg_config_home
            .clone()
            .or_else(|| self.home.as_ref().map(|h| h.join(".config")))
        {
            v.push(c.join("containers/auth.json"));
        }
        if let Some(d) = self.docker_config_file() {
            v.push(d);
        }
        v
    }

    /// Docker's config file.
    pub fn docker_config_file(&self) -> Option<PathBuf> {
        self.docker_config
            .as_ref()
            .map(|d| d.join("config.json"))
            .or_else(|| self.home.as_ref().map(|h| h.join(".docker/config.json")))
    }

    /// The file `kiln login` writes: `$REGISTRY_AUTH_FILE` if set (as podman does),
    /// else docker's config.
    pub fn write_path(&self) -> Option<PathBuf> {
        self.registry_auth_file
            .clone()
            .or_else(|| self.docker_config_file())
    }
}

/// The docker CLI's spellings of Docker Hub.
const HUB_KEYS: [&str; 4] = [
    "https://index.docker.io/v1/",
    "index.docker.io",
    "docker.io",
    "registry-1.docker.io",
];

/// The key a registry host is stored under (docker's `https://index.docker.io/v1/`
/// for Docker Hub, the host otherwise).
pub fn server_key(host: &str) -> String {
    if HUB_KEYS.contains(&host) {
        HUB_KEYS[0].to_string()
    } else {
        host.to_string()
    }
}

/// `https://host:5000/v2/` or `host:5000` -> `host:5000`; Hub spellings -> `docker.io`.
fn normalize_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    if HUB_KEYS.iter().any(|h| normalize_simple(h) == k) {
        "docker.io".into()
    } else {
        k.to_string()
    }
}

fn normalize_simple(h: &str) -> &str {
    h.strip_prefix("https://")
        .map(|r| r.trim_end_matches('/').trim_end_matches("/v1"))
        .unwrap_or(h)
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, Error> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Auth {
                registry: String::new(),
                message: format!("reading {}: {e}", path.display()),
            })
        }
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(serde_json::json!({})));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| Error::Auth {
            registry: String::new(),
            message: format!("{}: not valid JSON: {e}", path.display()),
        })
}

/// Finds the credential for `host` (`docker.io` for Docker Hub) and repository
/// `repo`; `Ok(None)` means anonymous.
pub fn lookup(env: &Env, host: &str, repo: &str) -> Result<Option<Credential>, Error> {
    let host = normalize_key(host);
    for path in env.read_paths() {
        let Some(doc) = read_json(&path)? else {
            continue;
        };
        let fail = |message: String| Error::Auth {
            registry: host.clone(),
            message,
        };
        if let Some(name) = helper_for(&doc, &host) {
            if let Some(c) = helper_get(env, &name, &host).map_err(fail)? {
                return Ok(Some(c));
            }
        }
        let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) else {
            continue;
        };
        // Most specific key first: host/ns/repo, host/ns, host.
        let full = format!("{host}/{repo}");
        let mut best: Option<(usize, &serde_json::Value)> = None;
        for (k, v) in auths {
            let k = normalize_key(k);
            let matches = full == k || full.starts_with(&format!("{k}/"));
            if matches && best.is_none_or(|(len, _)| k.len() > len) {
                best = Some((k.len(), v));
            }
        }
        let Some((_, entry)) = best else { continue };
        if let Some(c) = decode_entry(entry, &path).map_err(fail)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

fn decode_entry(entry: &serde_json::Value, path: &Path) -> Result<Option<Credential>, String> {
    let s = |k: &str| entry.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let from = path.display().to_string();
    if !s("auth").is_empty() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s("auth").trim())
            .map_err(|e| format!("{from}: the \"auth\" field is not base64: {e}"))?;
        let text = String::from_utf8(raw).map_err(|_| format!("{from}: \"auth\" is not UTF-8"))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| format!("{from}: \"auth\" is not \"username:password\""))?;
        return Ok(Some(Credential {
            username: u.to_string(),
            secret: p.to_string(),
            from,
        }));
    }
    if !s("username").is_empty() {
        return Ok(Some(Credential {
            username: s("username").to_string(),
            secret: s("password").to_string(),
            from,
        }));
    }
    if !s("identitytoken").is_empty() {
        return Err(format!(
            "{from} holds an OAuth identity token for this registry; kiln speaks only \
             username/password (Basic, or Bearer tokens fetched with them): log in again \
             with `kiln login` and a password or access token"
        ));
    }
    Ok(None)
}

fn helper_command(env: &Env, name: &str) -> Command {
    let mut c = Command::new(format!("docker-credential-{name}"));
    if let Some(p) = &env.helper_path {
        let mut path = p.clone();
        if let Some(rest) = std::env::var_os("PATH") {
            path.push(":");
            path.push(rest);
        }
        c.env("PATH", path);
    }
    c
}

/// Runs `docker-credential-NAME ACTION` with `input` on stdin.
fn run_helper(env: &Env, name: &str, action: &str, input: &[u8]) -> Result<Vec<u8>, String> {
    let prog = format!("docker-credential-{name}");
    let mut child = helper_command(env, name)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running credential helper {prog}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| format!("writing to {prog}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running credential helper {prog}: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        // Helpers report on stdout (docker-credential-helpers) or stderr.
        let mut msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if msg.is_empty() {
            msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        }
        Err(msg)
    }
}

/// The helper protocol's answer to "nothing stored for this server".
fn not_found(msg: &str) -> bool {
    msg.contains("credentials not found")
}

fn helper_get(env: &Env, name: &str, host: &str) -> Result<Option<Credential>, String> {
    let prog = format!("docker-credential-{name}");
    let out = match run_helper(env, name, "get", server_key(host).as_bytes()) {
        Ok(o) => o,
        Err(m) if not_found(&m) => return Ok(None),
        Err(m) => return Err(format!("{prog} get: {m}")),
    };
    let v: serde_json::Value = serde_json::from_slice(&out)
        .map_err(|e| format!("{prog} get answered something that is not JSON: {e}"))?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default();
    if s("Username") == "<token>" {
        return Err(format!(
            "{prog} holds an OAuth identity token for {host}; kiln speaks only \
             username/password: log in again with `kiln login` and a password or access token"
        ));
    }
    if s("Username").is_empty() && s("Secret").is_empty() {
        return Ok(None);
    }
    Ok(Some(Credential {
        username: s("Username").to_string(),
        secret: s("Secret").to_string(),
        from: prog,
    }))
}

/// The helper a file names for `host`, if any.
fn helper_for(doc: &serde_json::Value, host: &str) -> Option<String> {
    doc.get("credHelpers")
        .and_then(|h| h.as_object())
        .and_then(|h| h.iter().find(|(k, _)| normalize_key(k) == host))
        .and_then(|(_, v)| v.as_str())
        .or_else(|| doc.get("credsStore").and_then(|s| s.as_str()))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Where `login` put the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    File(PathBuf),
    Helper(String),
}

impl std::fmt::Display for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stored::File(p) => write!(f, "{}", p.display()),
            Stored::Helper(h) => write!(f, "docker-credential-{h}"),
        }
    }
}

/// Saves a credential for `host` as `docker login` does: through the file's helper
/// when it names one (leaving an empty `auths` entry), in `auths` otherwise.
pub fn store(
    env: &Env,
    path: &Path,
    host: &str,
    username: &str,
    secret: &str,
) -> Result<Stored, Error> {
    let host = normalize_key(host);
    let fail = |message: String| Error::Auth {
        registry: host.clone(),
        message,
    };
    let mut doc = read_json(path)?.unwrap_or_else(|| serde_json::json!({}));
    if !doc.is_object() {
        return Err(fail(format!("{}: not a JSON object", path.display())));
    }
    let key = server_key(&host);
    let helper = helper_for(&doc, &host);
    let entry = match &helper {
        Some(name) => {
            let input =
                serde_json::json!({"ServerURL": key, "Username": username, "Secret": secret});
            run_helper(env, name, "store", input.to_string().as_bytes())
                .map_err(|m| fail(format!("docker-credential-{name} store: {m}")))?;
            serde_json::json!({})
        }
        None => {
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"));
            serde_json::json!({ "auth": auth })
        }
    };
    let auths = doc
        .as_object_mut()
        .map(|o| {
            o.entry("auths")
                .or_insert_with(|| serde_json::json!({}))
                .clone()
        })
        .unwrap_or_default();
    let mut auths = auths.as_object().cloned().unwrap_or_default();
    // One entry per registry, under docker's key.
    auths.retain(|k, _| normalize_key(k) != host);
    auths.insert(key, entry);
    doc["auths"] = serde_json::Value::Object(auths);
    write_atomically(path, &doc).map_err(fail)?;
    Ok(match helper {
        Some(h) => Stored::Helper(h),
        None => Stored::File(path.to_path_buf()),
    })
}

/// Removes the credential for `host`; `false` when there was none.
pub fn erase(env: &Env, path: &Path, host: &str) -> Result<bool, Error> {
    let host = normalize_key(host);
    let fail = |message: String| Error::Auth {
        registry: host.clone(),
        message,
    };
    let Some(mut doc) = read_json(path)? else {
        return Ok(false);
    };
    let mut found = false;
    if let Some(name) = helper_for(&doc, &host) {
        match run_helper(env, name.as_str(), "erase", server_key(&host).as_bytes()) {
            Ok(_) => found = true,
            Err(m) if not_found(&m) => {}
            Err(m) => return Err(fail(format!("docker-credential-{name} erase: {m}"))),
        }
    }
    if let Some(auths) = doc.get_mut("auths").and_then(|a| a.as_object_mut()) {
        let before = auths.len();
        auths.retain(|k, _| normalize_key(k) != host);
        if auths.len() != before {
            found = true;
            write_atomically(path, &doc).map_err(fail)?;
        }
    }
    Ok(found)
}

/// Writes `doc` to `path` through a temporary file (mode 0600, directory 0700),
/// fsynced and renamed, so a crash leaves the old file or the new one.
fn write_atomically(path: &Path, doc: &serde_json::Value) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let ctx = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ctx("creating the directory of", e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut body = serde_json::to_vec_pretty(doc).map_err(|e| e.to_string())?;
    body.push(b'\n');
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ctx("writing", e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn env_in(dir: &Path) -> Env {
        Env {
            home: Some(dir.join("home")),
            xdg_runtime_dir: Some(dir.join("run")),
            helper_path: Some(dir.join("bin").into_os_string()),
            ..Env::default()
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    /// A credential helper in shell that keeps its store in a directory.
    fn fake_helper(dir: &Path, name: &str) {
        let script = format!(
            r#"#!/bin/sh
store={store}
mkdir -p "$store"
case "$1" in
get) read -r url; f="$store/$(echo "$url" | tr '/:' '__')"
     if [ -f "$f" ]; then cat "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
store) body=$(cat); url=$(echo "$body" | sed 's/.*"ServerURL":"\([^"]*\)".*/\1/')
     echo "$body" > "$store/$(echo "$url" | tr '/:' '__')" ;;
erase) read -r url; f="$store/$(echo "$url" | tr '/:' '__')"
     if [ -f "$f" ]; then rm "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
esac
"#,
            store = dir.join(format!("{name}-store")).display()
        );
        let p = dir.join("bin").join(format!("docker-credential-{name}"));
        write(&p, &script);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[test]
    fn docker_config_auths_and_key_spellings() {
        let d = tempfile::tempdir().expect("tmp");
        let env = env_in(d.path());
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        write(
            &d.path().join("home/.docker/config.json"),
            &format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{auth}"}},
                    "http://127.0.0.1:5001/v2/": {{"username": "bob", "password": "pw"}},
                    "127.0.0.1:5001/team": {{"username": "carol", "password": "x"}}}}}}"#
            ),
        );
        let c = lookup(&env, "docker.io", "library/debian")
            .expect("ok")
            .expect("found");
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("alice", "pa:ss"));
        let c = lookup(&env, "127.0.0.1:5001", "other/app")
            .expect("ok")
            .expect("found");
        assert_eq!(c.username, "bob");
        // The most specific key wins.
        let c = lookup(&env, "127.0.0.1:5001", "team/app")
            .expect("ok")
            .expect("found");
        assert_eq!(c.username, "carol");
        assert_eq!(lookup(&env, "quay.io", "x/y").expect("ok"), None);
    }

    #[test]
    fn auth_file_order_registry_auth_file_then_xdg_then_docker() {
        let d = tempfile::tempdir().expect("tmp");
        let mut env = env_in(d.path());
        let entry = |u: &str| {
            format!(r#"{{"auths": {{"r.example": {{"username": "{u}", "password": "p"}}}}}}"#)
        };
        write(&d.path().join("home/.docker/config.json"), &entry("docker"));
        let who = |env: &Env| {
            lookup(env, "r.example", "a/b")
                .expect("ok")
                .expect("found")
                .username
        };
        assert_eq!(who(&env), "docker");
        write(&d.path().join("run/containers/auth.json"), &entry("xdg"));
        assert_eq!(who(&env), "xdg");
        write(&d.path().join("elsewhere.json"), &entry("explicit"));
        env.registry_auth_file = Some(d.path().join("elsewhere.json"));
        assert_eq!(who(&env), "explicit");
    }

    #[test]
    fn helpers_per_host_and_store_and_their_misses() {
        let d = tempfile::tempdir().expect("tmp");
        let env = env_in(d.path());
        fake_helper(d.path(), "fake");
        let cfg = d.path().join("home/.docker/config.json");
        write(
            &cfg,
            r#"{"credsStore": "fake", "auths": {"plain.example": {"username": "u", "password": "p"}},
                "credHelpers": {"missing.example": "absent"}}"#,
        );
        // Login goes to the helper and leaves an empty auths entry, like docker.
        let stored = store(&env, &cfg, "r.example", "alice", "s3cret").expect("store");
        assert_eq!(stored, Stored::Helper("fake".into()));
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg).expect("read")).expect("json");
        assert_eq!(doc["auths"]["r.example"], serde_json::json!({}));
        assert_eq!(doc["credsStore"], "fake");
        let c = lookup(&env, "r.example", "a").expect("ok").expect("found");
        assert_eq!(
            (c.username.as_str(), c.secret.as_str()),
            ("alice", "s3cret")
        );
        assert_eq!(c.from, "docker-credential-fake");
        // The helper knows nothing of plain.example: auths answers.
        let c = lookup(&env, "plain.example", "a")
            .expect("ok")
            .expect("found");
        assert_eq!(c.username, "u");
        // A helper that is not installed is an error naming it.
        let e = lookup(&env, "missing.example", "a").expect_err("no helper");
        assert!(e.to_string().contains("docker-credential-absent"), "{e}");
        assert!(erase(&env, &cfg, "r.example").expect("erase"));
        assert_eq!(lookup(&env, "r.example", "a").expect("ok"), None);
        assert!(!erase(&env, &cfg, "r.example").expect("erase again"));
    }

    #[test]
    fn login_writes_docker_format_keeps_other_fields_and_logout_removes() {
        let d = tempfile::tempdir().expect("tmp");
        let env = env_in(d.path());
        let cfg = d.path().join("home/.docker/config.json");
        write(
            &cfg,
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "eDp5"}}, "psFormat": "table"}"#,
        );
        store(&env, &cfg, "127.0.0.1:5001", "alice", "s3cret").expect("store");
        store(&env, &cfg, "docker.io", "hub", "tok").expect("store hub");
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg).expect("read")).expect("json");
        assert_eq!(doc["psFormat"], "table");
        assert_eq!(doc["auths"]["127.0.0.1:5001"]["auth"], "YWxpY2U6czNjcmV0");
        assert_eq!(
            doc["auths"].as_object().expect("auths").len(),
            2,
            "Hub is kept under one key: {doc}"
        );
        let mode = std::fs::metadata(&cfg).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(erase(&env, &cfg, "127.0.0.1:5001").expect("erase"));
        assert_eq!(lookup(&env, "127.0.0.1:5001", "x").expect("ok"), None);
        assert!(lookup(&env, "docker.io", "x").expect("ok").is_some());
    }

    #[test]
    fn broken_files_are_named() {
        let d = tempfile::tempdir().expect("tmp");
        let env = env_in(d.path());
        write(&d.path().join("home/.docker/config.json"), "{ not json");
        let e = lookup(&env, "r.example", "a").expect_err("bad json");
        assert!(e.to_string().contains("config.json: not valid JSON"), "{e}");
        write(
            &d.path().join("home/.docker/config.json"),
            r#"{"auths": {"r.example": {"identitytoken": "abc"}}}"#,
        );
        let e = lookup(&env, "r.example", "a").expect_err("identity token");
        assert!(e.to_string().contains("identity token"), "{e}");
    }
}
