//! Fuzzes the context path logic: `.dockerignore` and `--exclude` patterns, COPY
//! source patterns and their expansion, and resolving paths inside a root that holds
//! symlinks out of it. No input may panic, and every resolved or expanded path must
//! stay inside its root.
//!
//! The input is lines: patterns up to an empty line, then paths.
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run paths` from `fuzz/`.
#![no_main]

use kiln_frontend::dockerignore::Matcher;
use kiln_executor::paths::{clean_rel, expand_sources, resolve_in_root};
use libfuzzer_sys::fuzz_target;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A context with nested directories, files and symlinks that point outside it,
/// absolute, relative and looping; made once.
fn context() -> &'static PathBuf {
    static CTX: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &CTX.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("ctx");
        for dir in ["a/b/c", "a/.hidden", "src/app", "x y"] {
            fs::create_dir_all(root.join(dir)).expect("mkdir");
        }
        for f in ["a/f.txt", "a/b/g.rs", "a/b/c/h", "src/app/main.go", "x y/z", ".dockerignore"] {
            fs::write(root.join(f), f).expect("write");
        }
        symlink("/etc", root.join("abs")).expect("symlink");
        symlink("../../..", root.join("a/up")).expect("symlink");
        symlink("loop", root.join("loop")).expect("symlink");
        symlink("a/b", root.join("ab")).expect("symlink");
        (d, root)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let patterns: Vec<String> = lines
        .by_ref()
        .take_while(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let paths: Vec<String> = lines.map(str::to_string).collect();
    let root = context();
    let matcher = Matcher::new(&patterns).ok();
    if let Some(m) = &matcher {
        for p in &paths {
            let _ = m.excluded(&clean_rel(p));
        }
    }
    for p in &paths {
        let clean = clean_rel(p);
        assert!(!clean.split('/').any(|c| c == ".."), "clean_rel kept ..: {clean:?}");
        for follow in [true, false] {
            if let Ok(r) = resolve_in_root(root, p, follow) {
                assert!(r.starts_with(root), "{p:?} resolved outside: {}", r.display());
            }
        }
    }
    let ignore = matcher.unwrap_or_default();
    if let Ok(found) = expand_sources(root, &paths, &ignore) {
        for f in found {
            // A looping symlink is matched by name and fails when COPY follows it.
            if let Ok(r) = resolve_in_root(root, &f, true) {
                assert!(r.starts_with(root), "{f:?} expanded outside");
            }
        }
    }
});
