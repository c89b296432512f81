//! File owners inside kiln's user namespace, real or emulated.
//!
//! With a subordinate id range every owner a layer names exists in the namespace, and
//! files are simply chowned. With only the caller mapped (no `/etc/subuid` range), a
//! chown to any other id fails; kiln then keeps files owned by root of the namespace
//! and records the owner they should have in the `user.rootlesscontainers` xattr, in
//! the format of <https://github.com/rootless-containers/proto> (shared with umoci and
//! runc): a protobuf `Resource { uint32 uid = 1; uint32 gid = 2; }`. Layers produced
//! from such files carry the recorded owner in their tar headers, never the xattr.
//!
//! The xattr is kept on everything but symlinks (Linux refuses `user.*` xattrs on
//! them), so a symlink's owner is root in single-id mode. Overlay copies `user.*`
//! xattrs on copy-up, so owners survive RUN steps that modify files.

use crate::{Context, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The xattr holding an emulated owner.
pub const XATTR: &str = "user.rootlesscontainers";

/// In the proto's words, "no change": take the file's real owner.
const NOOP_ID: u32 = u32::MAX;

static EMULATING: AtomicBool = AtomicBool::new(false);

/// Switches this process to emulated owners (the namespace helper does this when it
/// enters a single-id namespace).
pub fn set_emulating(on: bool) {
    EMULATING.store(on, Ordering::Relaxed);
}

/// Whether owners are emulated with the xattr in this process.
pub fn emulating() -> bool {
    EMULATING.load(Ordering::Relaxed)
}

/// Encodes a `Resource` message; zero fields are omitted as proto3 does.
pub fn encode(uid: u32, gid: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    for (field, v) in [(1u8, uid), (2u8, gid)] {
        if v == 0 {
            continue;
        }
        out.push(field << 3); // wire type 0: varint
        let mut v = v;
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    out
}

/// Decodes a `Resource` message into (uid, gid), `None` for "not set / no change".
pub fn decode(bytes: &[u8]) -> Option<(Option<u32>, Option<u32>)> {
    let (mut uid, mut gid) = (Some(0), Some(0));
    let mut i = 0;
    while i < bytes.len() {
        let tag = bytes[i];
        i += 1;
        let (field, wire) = (tag >> 3, tag & 7);
        if wire != 0 {
            return None; // Resource has only varints
        }
        let mut v: u64 = 0;
        let mut shift = 0;
        loop {
            let b = *bytes.get(i)?;
            i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
        let v = u32::try_from(v).ok()?;
        let v = (v != NOOP_ID).then_some(v);
        match field {
            1 => uid = v,
            2 => gid = v,
            _ => {} // unknown fields are skipped, as protobuf readers do
        }
    }
    Some((uid, gid))
}

/// The owner a file stands for: its real owner, or the emulated one when the xattr
/// says so.
pub fn of(path: &Path, real: (u32, u32)) -> (u32, u32) {
    match xattr::get(path, XATTR)
        .ok()
        .flatten()
        .and_then(|b| decode(&b))
    {
        Some((u, g)) => (u.unwrap_or(real.0), g.unwrap_or(real.1)),
        None => real,
    }
}

/// Gives `path` (not following a final symlink) to `uid:gid`, really or by xattr.
pub fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    if emulating() {
        // user.* xattrs exist only on regular files and directories: a symlink, FIFO,
        // socket or device keeps root's owner in single-id mode (as with umoci).
        let plain = std::fs::symlink_metadata(path)
            .map(|m| m.is_file() || m.is_dir())
            .unwrap_or(false);
        if !plain {
            return Ok(());
        }
        if uid == 0 && gid == 0 {
            return match xattr::remove(path, XATTR) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
                Err(e) => Err(e).ctx(|| format!("clearing the owner of {}", path.display())),
            };
        }
        return xattr::set(path, XATTR, &encode(uid, gid))
            .ctx(|| format!("recording owner {uid}:{gid} of {}", path.display()));
    }
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ctx(|| format!("chown {uid}:{gid} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_messages_round_trip() {
        for (u, g) in [(0, 0), (1, 0), (0, 65534), (100, 101), (300, 70000)] {
            assert_eq!(decode(&encode(u, g)), Some((Some(u), Some(g))));
        }
        // Bytes as protoc writes them: uid=1000 (0xe8 0x07), gid=1000.
        assert_eq!(encode(1000, 1000), vec![0x08, 0xe8, 0x07, 0x10, 0xe8, 0x07]);
        // NoopID means "the real owner".
        let noop = [0x08, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x10, 0x05];
        assert_eq!(decode(&noop), Some((None, Some(5))));
        assert_eq!(
            decode(&[0x0a, 0x01]),
            None,
            "length-delimited is not a Resource"
        );
        assert_eq!(decode(&[0x08, 0x80]), None, "truncated varint");
    }
}
