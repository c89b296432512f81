//! Pins: the manifest a name last resolved to for a platform, kept in the store, so
//! that a build reuses it without asking the registry, as `docker build` reuses the
//! local image of a tag; `kiln build --pull` resolves again (and pins the answer).
//!
//! A pin is a small file `pins/<sha256 of name and platform>.json`, written atomically.
//! It is used only while the store still has the manifest and the config it names
//! (`kiln prune --all` removes them with the pulled image's record), and the manifest
//! read back is checked against its digest as a fetched one is.

use crate::{parse_reference, Resolved, Want};
use kiln_snapshotter::{digest, Store};
use oci_spec::image::ImageManifest;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Serialize, Deserialize)]
struct Pin {
    name: String,
    platform: String,
    pinned: String,
    manifest_digest: String,
}

fn platform_of(want: &Want) -> String {
    let mut p = format!("{}/{}", want.os, want.architecture);
    if let Some(v) = &want.variant {
        p.push('/');
        p.push_str(v);
    }
    p
}

/// The pin file for `name` (as normalized by the reference parser) and `want`.
fn pin_path(store: &Store, name: &str, want: &Want) -> Option<(PathBuf, String, String)> {
    let r = parse_reference(name).ok()?;
    let name = r.whole();
    let platform = platform_of(want);
    let key = digest::of(format!("{name}\n{platform}").as_bytes());
    let hex = digest::hex_part(&key).ok()?.to_string();
    Some((
        store.root().join("pins").join(format!("{hex}.json")),
        name,
        platform,
    ))
}

/// The store's pin of `name` for `want`, if it has one with its manifest and config.
pub(crate) fn read(store: &Store, name: &str, want: &Want) -> Option<Resolved> {
    let (path, name, platform) = pin_path(store, name, want)?;
    let pin: Pin = serde_json::from_slice(&fs_err::read(path).ok()?).ok()?;
    if pin.name != name || pin.platform != platform {
        return None;
    }
    let bytes = store.read_blob(&pin.manifest_digest).ok()?;
    if digest::of(&bytes) != pin.manifest_digest {
        return None;
    }
    let manifest = ImageManifest::from_reader(&bytes[..]).ok()?;
    let config = store.read_blob(manifest.config().digest().as_ref()).ok()?;
    Some(Resolved {
        pinned: pin.pinned,
        manifest_digest: pin.manifest_digest,
        manifest,
        config,
        mirror: None,
    })
}

/// Pins `name` for `want` to what it just resolved to. A failure only costs the next
/// build a registry round trip.
pub(crate) fn write(store: &Store, name: &str, want: &Want, r: &Resolved) {
    let Some((path, name, platform)) = pin_path(store, name, want) else {
        return;
    };
    let pin = Pin {
        name,
        platform,
        pinned: r.pinned.clone(),
        manifest_digest: r.manifest_digest.clone(),
    };
    if let Ok(bytes) = serde_json::to_vec(&pin) {
        let _ = store.write_file(&path, &bytes, "pin");
    }
}
