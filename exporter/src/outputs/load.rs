//! `--load` (and `type=docker` without `dest`): the Docker archive streamed into
//! `docker load`, or `podman load` where there is no docker, as buildx loads into the
//! engine it builds for. Nothing is written to disk on the way.

use super::Session;
use crate::archive::{self, Format, Naming, Subject};
use crate::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The engines `--load` can load into, in the order they are looked for on PATH.
const LOADERS: [&str; 2] = ["docker", "podman"];

/// The first of [`LOADERS`] on `path` (a PATH value).
fn find_loader(path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    LOADERS.iter().find_map(|name| {
        std::env::split_paths(path).map(|d| d.join(name)).find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

pub(super) fn load(s: &Session, subject: Subject, naming: &Naming) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let Some(loader) = find_loader(&path) else {
        return Err(Error::Options(
            "--load needs docker or podman on PATH to load the image into (neither was found); write an archive instead: -o type=docker,dest=image.tar".into(),
        ));
    };
    let name = loader
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let v = s
        .progress
        .vertex(&format!("importing to {name} ({name} load)"));
    let r = run(s, subject, naming, &loader, &name);
    match &r {
        Ok(out) => {
            for line in out.lines().filter(|l| !l.trim().is_empty()) {
                v.log(line);
            }
            v.done();
        }
        Err(e) => v.error(&e.to_string()),
    }
    r.map(|_| ())
}

/// Streams the archive into `LOADER load`; returns what it printed.
fn run(
    s: &Session,
    subject: Subject,
    naming: &Naming,
    loader: &Path,
    name: &str,
) -> Result<String> {
    let fail = |why: String| Error::Options(format!("{name} load: {why}"));
    let mut child = Command::new(loader)
        .arg("load")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start {}: {e}", loader.display())))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    );
    let written = match child.stdin.take() {
        Some(stdin) => archive::write_stream(
            subject,
            Format::Docker,
            naming,
            s.store,
            stdin,
            "the pipe to the loader",
        )
        .map(drop),
        None => Err(fail("no pipe to its input".into())),
    };
    let status = child.wait().map_err(|e| fail(e.to_string()))?;
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let tail = err.trim().lines().last().unwrap_or("").to_string();
    if !status.success() {
        return Err(fail(format!(
            "it exited with {status}{}",
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        )));
    }
    written.map_err(|e| fail(format!("writing the image: {e}")))?;
    Ok(format!("{out}{err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_is_preferred_to_podman_and_neither_is_none() {
        let d = tempfile::tempdir().expect("tempdir");
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir_all(&a).expect("a");
        std::fs::create_dir_all(&b).expect("b");
        let exe = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(p, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        let path = std::env::join_paths([&a, &b]).expect("join");
        assert_eq!(find_loader(&path), None);
        exe(&a.join("podman"));
        assert_eq!(find_loader(&path), Some(a.join("podman")));
        exe(&b.join("docker"));
        assert_eq!(find_loader(&path), Some(b.join("docker")));
        // Not executable: not a loader.
        std::fs::write(a.join("docker"), "").expect("write");
        assert_eq!(find_loader(&path), Some(b.join("docker")));
    }
}
