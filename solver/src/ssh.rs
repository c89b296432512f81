//! `--ssh`: the SSH agents a build's `RUN --mount=type=ssh` may use, as buildx takes
//! them: `default` (`$SSH_AUTH_SOCK`), `ID=SOCKET`, or `ID=KEYFILE[,KEYFILE...]` (kiln
//! then starts an `ssh-agent` of the build's own holding those keys, stopped when the
//! build ends). A RUN reaches an agent only through a socket the executor proxies
//! (see `kiln_executor`): no key and no host path enters the rootfs or a layer.

use crate::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The agents of a build, by id.
#[derive(Default)]
pub struct Agents {
    pub sockets: HashMap<String, PathBuf>,
    /// The build's own ssh-agents, and the directory of their sockets.
    own: Vec<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.own {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn bad(spec: &str, why: impl std::fmt::Display) -> Error {
    Error::Input(format!("--ssh {spec:?}: {why}"))
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

impl Agents {
    /// Parses the `--ssh` values.
    pub fn parse(specs: &[String]) -> Result<Agents> {
        let mut a = Agents::default();
        for spec in specs {
            let (id, paths) = match spec.split_once('=') {
                Some((id, p)) => (id.to_string(), p.split(',').map(PathBuf::from).collect()),
                None => (spec.clone(), Vec::new()),
            };
            if id.is_empty() {
                return Err(bad(spec, "expected default, ID=SOCKET or ID=KEYFILE"));
            }
            let paths: Vec<PathBuf> = if paths.is_empty() {
                match std::env::var_os("SSH_AUTH_SOCK").filter(|v| !v.is_empty()) {
                    Some(s) => vec![PathBuf::from(s)],
                    None => return Err(bad(spec, "SSH_AUTH_SOCK is not set: start an ssh-agent, or give ID=SOCKET or ID=KEYFILE")),
                }
            } else {
                paths
            };
            let socket = match paths.as_slice() {
                [p] if is_socket(p) => p.clone(),
                keys => a.own_agent(spec, keys)?,
            };
            a.sockets.insert(id, socket);
        }
        Ok(a)
    }

    /// An ssh-agent of this build's own, holding `keys`.
    fn own_agent(&mut self, spec: &str, keys: &[PathBuf]) -> Result<PathBuf> {
        for k in keys {
            if !k.is_file() {
                return Err(bad(
                    spec,
                    format!("{} is neither a socket nor a key file", k.display()),
                ));
            }
        }
        if self._dir.is_none() {
            self._dir = Some(
                tempfile::Builder::new()
                    .prefix("kiln-ssh-")
                    .tempdir()
                    .map_err(|e| bad(spec, e))?,
            );
        }
        let dir = self
            ._dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default();
        let sock = dir.join(format!("agent.{}", self.own.len()));
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                bad(
                    spec,
                    format!("cannot start ssh-agent ({e}): install openssh-client"),
                )
            })?;
        self.own.push(child);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !is_socket(&sock) {
            if std::time::Instant::now() > until {
                return Err(bad(spec, "ssh-agent did not start"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for k in keys {
            let out = Command::new("ssh-add")
                .arg("-q")
                .arg(k)
                .env("SSH_AUTH_SOCK", &sock)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| {
                    bad(
                        spec,
                        format!("cannot run ssh-add ({e}): install openssh-client"),
                    )
                })?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                return Err(bad(
                    spec,
                    format!(
                        "ssh-add {}: {}",
                        k.display(),
                        err.trim().lines().last().unwrap_or("failed")
                    ),
                ));
            }
        }
        Ok(sock)
    }
}
