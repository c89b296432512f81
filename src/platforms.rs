//! `--platform`: the list of target platforms, and what foreign RUN steps need.
//!
//! Before anything runs, every architecture that a RUN step executes as and the host
//! cannot run natively gets an emulator: a static QEMU registered in kiln's own user
//! namespace when the kernel allows a private binfmt_misc (Linux 6.7+), else the
//! host's registration. When neither is there, the build stops here with what to
//! install or enable.

use anyhow::{bail, Result};
use kiln_frontend::{BuildGraph, Op, Platform};
use kiln_solver::emulate::{self, Emulator};
use kiln_solver::helper::{Launcher, Request, Response};
use kiln_solver::progress::Progress;
use std::collections::{BTreeSet, HashMap};

/// `--platform a,b` (default: the host's), normalized, without repeats.
pub fn parse(arg: Option<&str>) -> Result<Vec<Platform>> {
    let Some(arg) = arg.filter(|a| !a.trim().is_empty()) else {
        return Ok(vec![Platform::host()]);
    };
    let mut v: Vec<Platform> = Vec::new();
    for part in arg.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p = match part {
            "local" => Platform::host(),
            _ => Platform::parse(part).ok_or_else(|| {
                anyhow::anyhow!(
                    "--platform {part:?}: expected os/arch[/variant], such as linux/amd64, linux/arm64 or linux/arm/v7"
                )
            })?,
        };
        if !v.contains(&p) {
            v.push(p);
        }
    }
    if v.is_empty() {
        bail!("--platform {arg:?} names no platform");
    }
    Ok(v)
}

/// Whether kiln can mount a binfmt_misc of its own user namespace here.
pub fn private_binfmt(launcher: &Launcher) -> Result<(), String> {
    match launcher.run(&Request::ProbeBinfmt, &|_| {}) {
        Ok(Response::Binfmt { error: None }) => Ok(()),
        Ok(Response::Binfmt { error: Some(e) }) => Err(e),
        Ok(_) => Err("the namespace helper gave an unexpected answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// How foreign code of `arch` would run here, or why it cannot.
pub enum Runs {
    Native,
    /// Registered by kiln in its namespace.
    Private(Emulator),
    /// The host's registration, with this interpreter.
    Host(String),
}

/// Decides how `arch` runs; `private` is the probe's answer (asked once).
pub fn how(arch: &str, private: &Result<(), String>) -> Result<Runs, String> {
    let host = Platform::host().architecture;
    if emulate::native(&host, arch) {
        return Ok(Runs::Native);
    }
    let Some(qemu) = emulate::qemu_name(arch) else {
        return Err(format!(
            "kiln knows no QEMU emulator for architecture {arch:?} (it knows arm64, arm, riscv64, ppc64le, s390x, mips64le, amd64, 386)"
        ));
    };
    let found = emulate::find_interpreter(
        arch,
        std::env::var("KILN_QEMU_PATH").ok().as_deref(),
        std::env::var("PATH").ok().as_deref(),
    );
    if let (Some(interpreter), Ok(())) = (&found, private) {
        return Ok(Runs::Private(Emulator {
            arch: arch.to_string(),
            interpreter: interpreter.clone(),
        }));
    }
    if let Some(i) = emulate::host_registered(arch) {
        return Ok(Runs::Host(i));
    }
    Err(match found {
        None => format!(
            "no static qemu-{qemu}-static was found in $KILN_QEMU_PATH, $PATH or /usr/bin: install it (Debian/Ubuntu: apt install qemu-user-static) or point KILN_QEMU_PATH at the directory that has it"
        ),
        Some(i) => format!(
            "{} is there, but this kernel does not let kiln register it in its own user namespace ({}; Linux 6.7 or newer is needed), and the host has no binfmt_misc registration for {arch} with the F flag: upgrade the kernel, or have an administrator register QEMU (e.g. apt install qemu-user-static binfmt-support)",
            i.display(),
            private.as_ref().err().map(String::as_str).unwrap_or("no reason given")
        ),
    })
}

/// The emulators the graphs' RUN steps need, checked before anything runs.
pub fn plan(
    graphs: &[BuildGraph],
    launcher: &Launcher,
    progress: &Progress,
) -> Result<HashMap<String, Emulator>> {
    let mut needed: BTreeSet<(String, String)> = BTreeSet::new();
    for g in graphs {
        for n in g.dag.node_indices() {
            if let Op::Run(r) = &g.dag[n].op {
                needed.insert((r.platform.architecture.clone(), r.platform.to_string()));
            }
        }
    }
    let host = Platform::host().architecture;
    if needed.iter().all(|(a, _)| emulate::native(&host, a)) {
        return Ok(HashMap::new());
    }
    let private = private_binfmt(launcher);
    let mut out = HashMap::new();
    for (arch, platform) in needed {
        match how(&arch, &private) {
            Ok(Runs::Native) => {}
            Ok(Runs::Private(e)) => {
                progress.note(&format!(
                    "{platform}: RUN steps are emulated by {} (registered in kiln's user namespace)",
                    e.interpreter.display()
                ));
                out.insert(arch, e);
            }
            Ok(Runs::Host(i)) => progress.note(&format!(
                "{platform}: RUN steps are emulated by the host's binfmt_misc registration ({i})"
            )),
            Err(why) => bail!("RUN steps for {platform} cannot run on this {host} machine: {why}"),
        }
    }
    Ok(out)
}
