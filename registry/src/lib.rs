//! kiln's registry client, shared by pull and push.
//!
//! It owns image-name resolution the Docker way (`busybox` ->
//! `docker.io/library/busybox:latest`), the choice of a platform's manifest from an
//! index, digest-verified blob downloads into the content store, and pushes as docker
//! pushes: blobs the registry has are skipped, blobs another repository of the same
//! registry has are mounted, the manifest goes last.
//!
//! The wire protocol (requests, Bearer token flow, chunked and monolithic uploads,
//! digest checks) is oci-client's. Around it kiln adds what oci-client leaves to its
//! users: credentials from docker's and podman's files and helpers ([`auth`]),
//! registries.conf mirrors and insecure registries ([`conf`]), retries ([`retry`]),
//! a fall-back when a mount answers 202 or a registry mishandles chunks, and errors
//! that say which registry refused what. Loopback registries are spoken to over plain
//! HTTP as Docker does; insecure ones over HTTPS without verification if they speak
//! TLS, plain HTTP otherwise; everything else over HTTPS.
//!
//! One module per job: names (`names`), hosts, clients, retries and error wording
//! (`hosts`), pulls (`pull`), pushes (`push`) and login checks (`login`).

pub mod auth;
pub mod conf;
#[cfg(test)]
mod fake;
mod hosts;
pub mod layout;
mod limited;
mod login;
mod names;
mod pins;
mod pull;
mod push;
pub mod retry;
mod sources;
#[cfg(test)]
mod tests;

pub use hosts::is_loopback;
use hosts::Host;
pub use login::login_host;
pub use names::parse_reference;

/// Whether a push to `target` can do without a blob whose repository is `source`
/// (`host/path`): the source is on the same registry, which has the blob or mounts
/// it (a registry that refuses the mount makes the push fetch the blob from the
/// source and upload it).
pub fn can_mount(source: Option<&str>, target: &str) -> bool {
    let Ok(t) = parse_reference(target) else {
        return false;
    };
    source.and_then(|s| on_registry(s, t.registry())).is_some()
}

/// The repository path of the blob source `source` (`host/path`) when it is on the
/// registry `host`.
pub(crate) fn on_registry<'a>(source: &'a str, host: &str) -> Option<&'a str> {
    source
        .split_once('/')
        .and_then(|(h, path)| (h == host).then_some(path))
}

use oci_spec::image::ImageManifest;
use std::collections::HashMap;
use std::sync::Mutex;

/// Media types accepted when fetching a manifest by tag.
pub(crate) const ACCEPT: [&str; 4] = [
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
    /// The registry wants credentials, or rejected the ones given (401).
    #[error("{registry}: authentication required to {action} {repository}: {hint}")]
    Unauthorized {
        registry: String,
        repository: String,
        action: &'static str,
        hint: String,
    },
    /// The credentials were accepted but do not allow this (403).
    #[error("{registry}: access denied: {who} may not {action} {repository}")]
    Denied {
        registry: String,
        repository: String,
        action: &'static str,
        who: String,
    },
    /// A repository, tag or blob that is not there (404).
    #[error("{reference}: {what} not found")]
    NotFound { reference: String, what: String },
    /// The image has no manifest for the wanted platform.
    #[error("{reference}: no image for platform {wanted}; it offers: {available}")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    /// A manifest, config or blob that is not what it claims to be.
    #[error("{reference}: {message}")]
    Invalid { reference: String, message: String },
    /// A credentials file or helper failed.
    #[error("{}", auth_message(registry, message))]
    Auth { registry: String, message: String },
    /// registries.conf does not parse.
    #[error("{}: {message}", file.display())]
    Config {
        file: std::path::PathBuf,
        message: String,
    },
    /// registries.conf blocks the registry.
    #[error("{repository}: blocked by the [[registry]] table with prefix {prefix:?} in {files}")]
    Blocked {
        repository: String,
        prefix: String,
        files: String,
    },
    /// The content store failed.
    #[error(transparent)]
    Store(#[from] kiln_snapshotter::Error),
}

pub(crate) fn auth_message(registry: &str, message: &str) -> String {
    if registry.is_empty() || message.contains(registry) {
        format!("registry credentials: {message}")
    } else {
        format!("registry credentials for {registry}: {message}")
    }
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
    /// `registry/repository@sha256:...`, under the name asked for (not a mirror's).
    pub pinned: String,
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    pub config: Vec<u8>,
    /// The mirror that served it (`host/repository`), if not the registry itself.
    pub mirror: Option<String>,
}

/// A blob to push from the store.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    /// A repository (`host/path`) known to hold the blob already, to mount it from
    /// when pushing to another repository of the same registry.
    pub source: Option<String>,
}

/// What a push did with each blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobOutcome {
    Uploaded,
    /// The registry had it.
    Existing,
    /// Mounted from this repository of the same registry.
    Mounted(String),
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub reference: String,
    pub digest: String,
    pub size: u64,
    /// Each blob, in the order given.
    pub blobs: Vec<(String, BlobOutcome)>,
}

/// A registry client: one connection pool per host and credential, registries.conf
/// mirrors and insecure hosts, credentials from docker's and podman's files, retries.
pub struct Registry {
    conf: conf::Config,
    env: auth::Env,
    policy: retry::Policy,
    hosts: Mutex<HashMap<String, Host>>,
    credentials: Mutex<HashMap<String, Option<auth::Credential>>>,
    /// Name (`host/repository`) -> the endpoint that answered for it.
    served_by: Mutex<HashMap<String, conf::Endpoint>>,
    notify: Box<dyn Fn(&str) + Send + Sync>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::with(conf::Config::default(), auth::Env::default())
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// A client with no registries.conf and no credentials.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// A client configured as the process environment says (registries.conf,
    /// credential files).
    pub fn from_env() -> Result<Registry> {
        Ok(Registry::with(
            conf::Config::from_env()?,
            auth::Env::from_process(),
        ))
    }

    pub fn with(conf: conf::Config, env: auth::Env) -> Registry {
        Registry {
            conf,
            env,
            policy: retry::Policy::default(),
            hosts: Mutex::default(),
            credentials: Mutex::default(),
            served_by: Mutex::default(),
            notify: Box::new(|m| tracing::warn!("{m}")),
        }
    }

    /// Sets the retry policy.
    pub fn with_policy(mut self, policy: retry::Policy) -> Registry {
        self.policy = policy;
        self
    }

    /// Where retries and mirror fall-backs are reported.
    pub fn with_notify(mut self, notify: impl Fn(&str) + Send + Sync + 'static) -> Registry {
        self.notify = Box::new(notify);
        self
    }
}
