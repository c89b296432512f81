//! Image names the Docker way: `busybox` -> `docker.io/library/busybox:latest`.

use crate::{Error, Result};
use oci_client::Reference;

/// Parses a name the Docker way.
pub fn parse_reference(name: &str) -> Result<Reference> {
    if let Some(r) = plain_reference(name) {
        return Ok(r);
    }
    let r = name.parse::<Reference>().map_err(|e| Error::BadReference {
        name: name.to_string(),
        message: e.to_string(),
    })?;
    // Docker's reference grammar allows only lowercase repository paths.
    if r.repository().chars().any(|c| c.is_ascii_uppercase()) {
        return Err(Error::BadReference {
            name: name.to_string(),
            message: "repository name must be lowercase".into(),
        });
    }
    Ok(r)
}

/// The common case of [`parse_reference`] without oci-client's parser: a name with an
/// explicit registry host (not Docker Hub, whose names are normalized) and a tag or a
/// sha256 digest, every part within a strict ASCII subset of Docker's grammar. Anything
/// else gives `None` and goes to oci-client.
///
/// Hand-written because of a measurement: oci-client's reference regular expression
/// (Unicode `\w{0,127}` for tags) is compiled once per process, and that was a third of
/// a no-op rebuild of a 20,000-file context (0.14 s -> 0.09 s without it). `plain_references_parse_as_oci_client_does` checks
/// that both parsers agree.
pub(crate) fn plain_reference(name: &str) -> Option<Reference> {
    let (rest, digest) = match name.split_once('@') {
        Some((rest, d)) => (
            rest,
            Some(kiln_snapshotter::digest::hex_part(d).ok().map(|_| d)?),
        ),
        None => (name, None),
    };
    let (host, path) = rest.split_once('/')?;
    let (path, tag) = match path.rsplit_once(':') {
        Some((p, t)) => (p, Some(t)),
        None => (path, None),
    };
    // Host: dotted labels of letters, digits and inner hyphens, and an optional port.
    let (hostname, port) = match host.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let host_ok = hostname.split('.').all(label_ok)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && (hostname.contains('.') || port.is_some() || hostname == "localhost")
        && !matches!(hostname, "docker.io" | "index.docker.io");
    let path_ok = path.split('/').all(path_component_ok) && rest.len() <= 255;
    let tag_ok = tag.is_none_or(|t| {
        (1..=128).contains(&t.len())
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && !t.starts_with(['.', '-'])
    });
    if !(host_ok && path_ok && tag_ok) {
        return None;
    }
    match (tag, digest) {
        (Some(t), None) => Some(Reference::with_tag(host.into(), path.into(), t.into())),
        (None, Some(d)) => Some(Reference::with_digest(host.into(), path.into(), d.into())),
        (None, None) => Some(Reference::with_tag(
            host.into(),
            path.into(),
            "latest".into(),
        )),
        (Some(_), Some(_)) => None,
    }
}

/// A path component of Docker's grammar: lowercase alphanumeric runs joined by one
/// '.', one or two '_', or any number of '-'.
fn path_component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let sep = |x: u8| matches!(x, b'.' | b'_' | b'-');
    if b.is_empty() || sep(b[0]) || sep(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_lowercase() || b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        if !sep(b[i]) {
            return false;
        }
        let start = i;
        while i < b.len() && sep(b[i]) {
            i += 1;
        }
        let run = &c[start..i];
        if !(run == "." || run == "_" || run == "__" || run.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}
