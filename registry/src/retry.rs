//! Retries with backoff for what a registry may answer once and not again: 5xx,
//! 429, `TOOMANYREQUESTS`, refused or reset connections and timeouts. Answers about
//! the content (4xx, a digest mismatch) are never retried: a blob that does not
//! match its digest is an error, not something to fetch again until it fits.

use oci_client::errors::{OciDistributionError, OciErrorCode};
use std::future::Future;
use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Tries in all (1 = no retry).
    pub attempts: u32,
    /// The wait before the second try; it doubles after each failure.
    pub first_delay: Duration,
}

impl Default for Policy {
    /// Four tries, 0.5 s, 1 s and 2 s apart.
    fn default() -> Self {
        Policy {
            attempts: 4,
            first_delay: Duration::from_millis(500),
        }
    }
}

/// The HTTP status an error carries, if any.
pub fn status_of(e: &OciDistributionError) -> Option<u16> {
    match e {
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::UnauthorizedError { .. } => Some(401),
        OciDistributionError::RequestError(r) => r.status().map(|s| s.as_u16()),
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().find_map(|e| match e.code {
                OciErrorCode::Unauthorized => Some(401),
                OciErrorCode::Denied => Some(403),
                OciErrorCode::Toomanyrequests => Some(429),
                OciErrorCode::BlobUnknown
                | OciErrorCode::ManifestUnknown
                | OciErrorCode::NameUnknown
                | OciErrorCode::NotFound => Some(404),
                _ => None,
            })
        }
        _ => None,
    }
}

/// Whether trying again may help.
pub fn transient(e: &OciDistributionError) -> bool {
    if let Some(code) = status_of(e) {
        return code >= 500 || code == 429 || code == 408;
    }
    match e {
        // A name that does not resolve stays so for the next seconds: a typo, or no
        // network. Refused connections, resets and timeouts are worth another try.
        OciDistributionError::RequestError(r) if name_unresolved(r) => false,
        OciDistributionError::RequestError(r) => {
            r.is_connect() || r.is_timeout() || r.is_request() || r.is_body()
        }
        // A body longer than its descriptor says is not a network hiccup.
        OciDistributionError::IoError(_) => crate::limited::overrun(e).is_none(),
        _ => false,
    }
}

/// Whether the request failed because the host's name did not resolve: hyper's
/// connector says "dns error" in the error's source chain (reqwest has no kind for it).
pub fn name_unresolved(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.to_string().starts_with("dns error") {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Runs `f` until it succeeds, fails for good, or the tries are used up; `retrying`
/// hears of each retry (attempt number, the error) before the wait.
pub async fn run<T, F, Fut>(
    policy: Policy,
    mut f: F,
    retrying: impl Fn(u32, &OciDistributionError),
) -> Result<T, OciDistributionError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, OciDistributionError>>,
{
    let mut delay = policy.first_delay;
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < policy.attempts && transient(&e) => {
                retrying(attempt + 1, &e);
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver that knows no name, so that no lookup leaves the machine.
    struct NoNames;

    impl reqwest::dns::Resolve for NoNames {
        fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
            let msg = format!("failed to lookup address information for {}", name.as_str());
            Box::pin(async move { Err(msg.into()) })
        }
    }

    #[tokio::test]
    async fn unresolved_names_are_not_retried_refused_connections_are() {
        let client = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(NoNames))
            .build()
            .expect("client");
        let dns = client
            .get("http://no-such-registry.invalid/v2/")
            .send()
            .await
            .expect_err("no name resolves");
        let dns = OciDistributionError::RequestError(dns);
        assert!(!transient(&dns), "{dns}");
        // Port 9 (discard) has no listener here: refused, which may pass.
        let refused = client
            .get("http://127.0.0.1:9/v2/")
            .send()
            .await
            .expect_err("nothing listens");
        let refused = OciDistributionError::RequestError(refused);
        assert!(transient(&refused), "{refused}");
    }
}
