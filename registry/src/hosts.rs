//! Hosts: which scheme a registry is spoken to over, one client per host and
//! credential, retries and mirrors' endpoints, and errors that say which registry
//! refused what.

use crate::{auth, conf, lock, retry, Error, Registry, Result};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

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

/// How a registry host is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
    /// HTTPS without verifying the certificate (an insecure registry that has TLS).
    HttpsUnverified,
}

impl Scheme {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https | Scheme::HttpsUnverified => "https",
        }
    }
}

/// The clients for one host and credential. Blobs go up in one streamed PUT, as
/// containerd sends them; in chunks (PATCH) only if the registry refuses that.
#[derive(Clone)]
pub(crate) struct Host {
    /// Everything but the one-request uploads: pulls, checks, manifests, chunks.
    pub(crate) client: Client,
    /// Made on first use: only pushes need it, and every client loads the system's
    /// root certificates (a few ms of each build that only pulls). It has no read
    /// timeout, which would also run out while a long body is still going up (the
    /// push watches the upload's progress instead: `push::Watchdog`).
    pub(crate) monolithic: std::sync::Arc<std::sync::OnceLock<Client>>,
    pub(crate) scheme: Scheme,
    pub(crate) auth: RegistryAuth,
    pub(crate) credential: Option<auth::Credential>,
}

impl Host {
    pub(crate) fn monolithic(&self) -> Client {
        self.monolithic
            .get_or_init(|| client(self.scheme, true))
            .clone()
    }
}

/// An oci-client client for a host spoken to with `scheme`.
pub(crate) fn client(scheme: Scheme, monolithic: bool) -> Client {
    Client::new(ClientConfig {
        protocol: match scheme {
            Scheme::Http => ClientProtocol::Http,
            _ => ClientProtocol::Https,
        },
        accept_invalid_certificates: scheme == Scheme::HttpsUnverified,
        use_monolithic_push: monolithic,
        connect_timeout: Some(std::time::Duration::from_secs(15)),
        read_timeout: (!monolithic).then_some(IDLE),
        ..Default::default()
    })
}

/// How long a request may go without a byte read, or an upload without a byte sent.
pub(crate) const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// oci-client's chunk size for chunked uploads.
pub(crate) const CHUNK: u64 = 4 << 20;

/// What a request was for, to word its errors.
#[derive(Clone, Copy)]
pub(crate) enum Action {
    Pull,
    Push,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Pull => "pull from",
            Action::Push => "push to",
        }
    }
}

impl Registry {
    pub(crate) fn credential(
        &self,
        host: &str,
        repository: &str,
    ) -> Result<Option<auth::Credential>> {
        let key = format!("{host}/{repository}");
        if let Some(c) = lock(&self.credentials).get(&key) {
            return Ok(c.clone());
        }
        let c = auth::lookup(&self.env, host, repository)?;
        lock(&self.credentials).insert(key, c.clone());
        Ok(c)
    }

    pub(crate) async fn scheme(&self, host: &str, insecure: bool) -> Scheme {
        if is_loopback(host) {
            return Scheme::Http;
        }
        if !insecure && !self.conf.insecure_host(host) {
            return Scheme::Https;
        }
        // As docker does for an insecure registry: HTTPS without verifying the
        // certificate if the host speaks TLS, plain HTTP otherwise.
        let probe = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(20))
            .build();
        match probe {
            Ok(c) if c.get(format!("https://{host}/v2/")).send().await.is_ok() => {
                Scheme::HttpsUnverified
            }
            _ => Scheme::Http,
        }
    }

    /// The clients for the registry of `r`, with the credential for its repository.
    pub(crate) async fn host(&self, r: &Reference, insecure: bool) -> Result<Host> {
        let host = r.registry().to_string();
        let credential = self.credential(&host, r.repository())?;
        let key = match &credential {
            Some(c) => format!("{host}\0{}\0{}", c.username, c.from),
            None => host.clone(),
        };
        if let Some(h) = lock(&self.hosts).get(&key) {
            return Ok(h.clone());
        }
        let scheme = self.scheme(&host, insecure).await;
        let auth = match &credential {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.secret.clone()),
            None => RegistryAuth::Anonymous,
        };
        let h = Host {
            client: client(scheme, false),
            monolithic: Default::default(),
            scheme,
            auth,
            credential,
        };
        Ok(lock(&self.hosts).entry(key).or_insert(h).clone())
    }

    /// Runs a request with retries, reporting each retry.
    pub(crate) async fn retried<T, F, Fut>(
        &self,
        policy: retry::Policy,
        what: &str,
        f: F,
    ) -> oci_client::errors::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = oci_client::errors::Result<T>>,
    {
        retry::run(policy, f, |n, e| {
            (self.notify)(&format!(
                "{what}: {}; trying again ({n} of {})",
                short(e),
                policy.attempts
            ))
        })
        .await
    }

    /// The retry policy for an endpoint: a mirror gets one try, and then the next
    /// source is asked.
    pub(crate) fn policy_for(&self, ep: &conf::Endpoint) -> retry::Policy {
        if ep.mirror {
            retry::Policy {
                attempts: 1,
                ..self.policy
            }
        } else {
            self.policy
        }
    }

    /// Words an oci-client error: who refused what, and what to do about it.
    pub(crate) fn explain(
        &self,
        e: oci_client::errors::OciDistributionError,
        r: &Reference,
        host: &Host,
        action: Action,
        what: &str,
    ) -> Error {
        use oci_client::errors::OciDistributionError as E;
        let registry = r.registry().to_string();
        let repository = r.repository().to_string();
        let status = match &e {
            E::AuthenticationFailure(_) => Some(401),
            other => retry::status_of(other),
        };
        match status {
            Some(401) => Error::Unauthorized {
                hint: match &host.credential {
                    Some(c) => format!(
                        "the registry rejected user {:?} (credentials from {})",
                        c.username, c.from
                    ),
                    None => format!(
                        "no credentials for {registry} were found (looked in {}); run `kiln login {registry}`",
                        self.env
                            .read_paths()
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
                registry,
                repository,
                action: action.verb(),
            },
            Some(403) => Error::Denied {
                who: match &host.credential {
                    Some(c) => format!("user {:?} (credentials from {})", c.username, c.from),
                    None => "an anonymous client".into(),
                },
                registry,
                repository,
                action: action.verb(),
            },
            Some(404) => Error::NotFound {
                reference: format!("{registry}/{repository}"),
                what: what.to_string(),
            },
            _ => match e {
                E::DigestError(d) => Error::Invalid {
                    reference: format!("{registry}/{repository}"),
                    message: format!("{what} does not match its digest: {d}"),
                },
                other => Error::Registry {
                    op: match action {
                        Action::Pull => "pulling from",
                        Action::Push => "pushing to",
                    },
                    reference: format!("{registry}/{repository} ({what})"),
                    message: short(&other),
                },
            },
        }
    }
}

/// `r` with its registry and repository replaced by `ep`'s.
pub(crate) fn endpoint_reference(r: &Reference, ep: &conf::Endpoint) -> Result<Reference> {
    let (host, path) = (ep.host().to_string(), ep.path().to_string());
    if path.is_empty() {
        return Err(Error::BadReference {
            name: ep.repository.clone(),
            message: "registries.conf maps it to a location without a repository path".into(),
        });
    }
    Ok(match (r.tag(), r.digest()) {
        (_, Some(d)) => Reference::with_digest(host, path, d.to_string()),
        (Some(t), None) => Reference::with_tag(host, path, t.to_string()),
        (None, None) => Reference::with_tag(host, path, "latest".into()),
    })
}

/// An oci-client error without its noise: a server's message, or the cause.
pub(crate) fn short(e: &oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::ServerError { code, message, .. } => {
            let m = message.trim();
            if m.is_empty() {
                format!("the registry answered {code}")
            } else {
                format!("the registry answered {code}: {}", truncate(m, 200))
            }
        }
        E::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .map(|e| format!("{:?}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        E::RequestError(r) => {
            let mut s = r.to_string();
            let mut src = std::error::Error::source(r);
            while let Some(c) = src {
                s.push_str(": ");
                s.push_str(&c.to_string());
                src = c.source();
            }
            s
        }
        other => other.to_string(),
    }
}

pub(crate) fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
