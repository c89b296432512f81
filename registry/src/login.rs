//! `kiln login`: a credential checked against the registry's token flow.

use crate::hosts::Scheme;
use crate::{auth, Error, Registry, Result};
use std::collections::HashMap;

impl Registry {
    /// Checks `username`/`secret` against `server` as `docker login` does: the
    /// registry's `/v2/` with Basic auth, or its token service for a Bearer
    /// challenge.
    pub async fn check_login(&self, server: &str, username: &str, secret: &str) -> Result<()> {
        let host = login_host(server);
        let scheme = self.scheme(&host, false).await;
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(scheme == Scheme::HttpsUnverified)
            .connect_timeout(std::time::Duration::from_secs(15))
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| login_error(&host, e.to_string()))?;
        let url = format!("{}://{host}/v2/", scheme.as_str());
        let res = client
            .get(&url)
            .send()
            .await
            .map_err(|e| login_error(&host, format!("{url}: {e}")))?;
        if res.status().is_success() {
            return Ok(());
        }
        let challenge = res
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let res = if let Some(params) = challenge.strip_prefix("Bearer ") {
            let p = challenge_params(params);
            let realm = p.get("realm").ok_or_else(|| {
                login_error(
                    &host,
                    format!("the Bearer challenge has no realm: {challenge}"),
                )
            })?;
            let mut q = vec![("account", username.to_string())];
            if let Some(s) = p.get("service") {
                q.push(("service", s.clone()));
            }
            client
                .get(realm)
                .query(&q)
                .basic_auth(username, Some(secret))
                .send()
                .await
        } else {
            client
                .get(&url)
                .basic_auth(username, Some(secret))
                .send()
                .await
        }
        .map_err(|e| login_error(&host, e.to_string()))?;
        match res.status().as_u16() {
            200..=299 => Ok(()),
            401 | 403 => Err(login_error(
                &host,
                format!("incorrect username or password for user {username:?}"),
            )),
            code => Err(login_error(&host, format!("the registry answered {code}"))),
        }
    }

    /// Where credential files are (for `kiln login`).
    pub fn auth_env(&self) -> &auth::Env {
        &self.env
    }
}

/// `https://host/v1/`, `host/`, `docker.io` -> the host logins are keyed by.
pub fn login_host(server: &str) -> String {
    let s = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server);
    let s = s.split('/').next().unwrap_or(s);
    match s {
        "" | "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "registry-1.docker.io".into()
        }
        other => other.to_string(),
    }
}

pub(crate) fn login_error(host: &str, message: String) -> Error {
    Error::Registry {
        op: "logging in to",
        reference: host.to_string(),
        message,
    }
}

/// `realm="https://auth",service="registry"` -> map.
pub(crate) fn challenge_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let (value, after) = match v.strip_prefix('"') {
            Some(q) => q.split_once('"').unwrap_or((q, "")),
            None => v.split_once(',').unwrap_or((v, "")),
        };
        out.insert(k.trim().to_string(), value.to_string());
        rest = after.trim_start_matches(',').trim();
    }
    out
}
