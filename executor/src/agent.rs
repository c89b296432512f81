//! SSH agent forwarding for `RUN --mount=type=ssh`: the RUN sees a socket of the
//! step's own (on a small tmpfs, so that its mount names no host path), and a proxy
//! process of the helper's, outside the sandbox, connects each connection to the real
//! agent. The RUN never gets the agent's own socket, its path, or a key.

use crate::{sys, Result};
use nix::unistd::{ForkResult, Pid};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

/// Copies both ways between `a` and `b` until either side closes.
fn pump(a: UnixStream, b: UnixStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || {
        let (mut from, mut to) = (b2, a2);
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    let (mut from, mut to) = (a, b);
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
}

/// Forks the proxy for `listener`; the caller kills it when the RUN ends (and the
/// kernel does when the helper dies).
pub(crate) fn spawn_proxy(listener: UnixListener, upstream: PathBuf) -> Result<Pid> {
    match sys::fork()? {
        ForkResult::Child => {
            // A fresh process of the single-threaded helper: threads are fine here.
            let _ = sys::die_with_parent();
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let up = upstream.clone();
                std::thread::spawn(move || {
                    if let Ok(u) = UnixStream::connect(&up) {
                        pump(conn, u);
                    }
                });
            }
            std::process::exit(0)
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

/// Stops a proxy.
pub(crate) fn stop(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
}
