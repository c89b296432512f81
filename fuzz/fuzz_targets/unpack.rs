//! Fuzzes the layer unpacker with arbitrary tar bytes (plain, or gzip-wrapped when the
//! first byte is odd) over an existing snapshot: no input may panic it, and nothing
//! outside the unpack directory may change, whatever the archive says (`..`, absolute
//! names, symlinks out of the root, whiteouts of `..`, hard links to outside files).
//!
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run unpack` from `fuzz/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, tar)) = data.split_first() else {
        return;
    };
    let d = tempfile::tempdir().expect("tempdir");
    let outside = d.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    fs::write(outside.join("canary"), b"canary").expect("write");
    let root = d.path().join("root");
    // The snapshot an earlier layer left: a directory, a file, a link out of it.
    fs::create_dir_all(root.join("etc/sub")).expect("mkdir");
    fs::write(root.join("etc/passwd"), b"root:x:0:0::/:/bin/sh\n").expect("write");
    symlink(&outside, root.join("out")).expect("symlink");
    symlink("../../outside", root.join("etc/rel")).expect("symlink");
    let bytes = if mode & 1 == 1 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).expect("gzip");
        gz.finish().expect("gzip")
    } else {
        tar.to_vec()
    };
    let owners = kiln_snapshotter::unpack::Owners::Emulate;
    let _ = kiln_snapshotter::unpack::unpack_bounded(&bytes[..], &root, owners, Some(64 << 20));
    let left: Vec<_> = fs::read_dir(&outside)
        .expect("outside")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["canary"], "something was written outside the root");
    assert_eq!(fs::read(outside.join("canary")).expect("canary"), b"canary");
    assert!(d.path().join("root").exists(), "the unpack directory survived");
});
