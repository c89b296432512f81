//! Foreign-architecture `RUN` steps under QEMU user emulation, with nothing set up on
//! the host: in the step's own user namespace the helper mounts that namespace's
//! binfmt_misc instance (Linux 6.7+ lets an unprivileged user namespace have one) and
//! registers `qemu-<arch>-static` there with the fix-binary (`F`) flag, so the kernel
//! opens the interpreter at registration and the rootfs need not contain it, and the
//! preserve-argv[0] (`P`) flag, as Debian's own registration has it: busybox picks
//! its applet by argv[0], and without `P` a pipeline's applets lose it. Where
//! that is impossible, interpreters the host has registered (with `F`) still work.

use crate::{io_ctx, sys, Error, Executor, Result};
use kiln_frontend::{BuildGraph, Op, Platform};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// One QEMU target: its name and the ELF header it claims.
struct Target {
    /// The OCI architecture (and variant, for arm).
    arch: &'static str,
    /// QEMU's name for it (`qemu-<name>-static`).
    qemu: &'static str,
    magic: &'static [u8],
    mask: &'static [u8],
}

/// ELF magic and mask per target, from QEMU's `scripts/qemu-binfmt-conf.sh` (as Debian
/// ships them in /usr/lib/binfmt.d/qemu-*.conf).
const TARGETS: &[Target] = &[
    Target {
        arch: "arm64",
        qemu: "aarch64",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
    },
    Target {
        arch: "arm",
        qemu: "arm",
        magic: b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
    },
    Target {
        arch: "riscv64",
        qemu: "riscv64",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
    },
    Target {
        arch: "ppc64le",
        qemu: "ppc64le",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x15\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\x00",
    },
    Target {
        arch: "s390x",
        qemu: "s390x",
        magic: b"\x7fELF\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x16",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
    },
    Target {
        arch: "mips64le",
        qemu: "mips64el",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x08\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\x00\xfe\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
    },
    Target {
        arch: "amd64",
        qemu: "x86_64",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00",
        mask: b"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
    },
    Target {
        arch: "386",
        qemu: "i386",
        magic: b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x03\x00",
        mask: b"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
    },
];

fn target(arch: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.arch == arch)
}

/// What a foreign RUN needs: the interpreter to register, if kiln registers one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emulator {
    /// The OCI architecture.
    pub arch: String,
    /// A static `qemu-*` on the host.
    pub interpreter: PathBuf,
}

/// Whether binaries of `arch` run on a host of `host_arch` without emulation.
pub fn native(host_arch: &str, arch: &str) -> bool {
    arch == host_arch || (host_arch == "amd64" && arch == "386")
}

/// QEMU's name for `arch`, if kiln knows how to emulate it.
pub fn qemu_name(arch: &str) -> Option<&'static str> {
    target(arch).map(|t| t.qemu)
}

/// Finds a static `qemu-<name>-static` (or a static `qemu-<name>`) in `KILN_QEMU_PATH`
/// (directories, `:`-separated), `PATH`, then /usr/bin.
pub fn find_interpreter(
    arch: &str,
    kiln_qemu_path: Option<&str>,
    path: Option<&str>,
) -> Option<PathBuf> {
    let name = qemu_name(arch)?;
    let dirs = kiln_qemu_path
        .into_iter()
        .chain(path)
        .flat_map(|p| p.split(':'))
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain(std::iter::once(PathBuf::from("/usr/bin")));
    for d in dirs {
        for file in [format!("qemu-{name}-static"), format!("qemu-{name}")] {
            let p = d.join(file);
            if is_static_executable(&p) {
                return Some(p);
            }
        }
    }
    None
}

/// An executable ELF file without a program interpreter (`PT_INTERP`): a dynamic one
/// would look for its loader inside the container's rootfs.
fn is_static_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::metadata(p) else {
        return false;
    };
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return false;
    }
    // The ELF and program headers only: an interpreter is megabytes, and its program
    // header table follows the ELF header (read the rest only if it does not).
    use std::io::Read as _;
    let mut head = Vec::new();
    let read = std::fs::File::open(p).and_then(|f| f.take(64 * 1024).read_to_end(&mut head));
    if read.is_err() {
        return false;
    }
    match elf_static(&head) {
        Some(answer) => answer,
        None if head.len() == 64 * 1024 => std::fs::read(p).is_ok_and(|all| elf_is_static(&all)),
        None => false,
    }
}

fn elf_is_static(b: &[u8]) -> bool {
    elf_static(b) == Some(true)
}

/// Whether `b` (the start of a file) is an ELF without `PT_INTERP`; `None` when its
/// program header table does not fit in `b`.
fn elf_static(b: &[u8]) -> Option<bool> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Some(false);
    }
    let is64 = b[4] == 2;
    let le = b[5] == 1;
    let rd = |off: usize, n: usize| -> Option<u64> {
        let s = b.get(off..off + n)?;
        let mut v = 0u64;
        for i in 0..n {
            let byte = if le { s[n - 1 - i] } else { s[i] };
            v = (v << 8) | u64::from(byte);
        }
        Some(v)
    };
    let (phoff, phentsize, phnum) = if is64 {
        (rd(0x20, 8)?, rd(0x36, 2)?, rd(0x38, 2)?)
    } else {
        (rd(0x1c, 4)?, rd(0x2a, 2)?, rd(0x2c, 2)?)
    };
    let mut is_static = true;
    for i in 0..phnum {
        let off = usize::try_from(phoff + i * phentsize).ok()?;
        // PT_INTERP is 3.
        if rd(off, 4)? == 3 {
            is_static = false;
        }
    }
    Some(is_static)
}

/// The line that registers `e` with binfmt_misc: every byte of magic and mask
/// escaped, so a `:` in them cannot end a field.
fn register_line(e: &Emulator) -> Result<String> {
    let t = target(&e.arch).ok_or_else(|| Error::NoQemuTarget(e.arch.clone()))?;
    let hex = |b: &[u8]| b.iter().map(|x| format!("\\x{x:02x}")).collect::<String>();
    Ok(format!(
        ":kiln-qemu-{}:M::{}:{}:{}:FP",
        t.qemu,
        hex(t.magic),
        hex(t.mask),
        e.interpreter.display()
    ))
}

/// Where the helper mounts its namespace's binfmt_misc.
pub(crate) const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

/// In the helper, in kiln's user namespace and its private mount namespace:
/// registers `e` in the namespace's own binfmt_misc. The mount stays: unmounting
/// the last mount of an instance drops its registrations, and the step runs after
/// this returns (the mount namespace, and the mount, end with the helper).
pub(crate) fn register(e: &Emulator) -> Result<()> {
    let dir = Path::new(BINFMT);
    sys::mount_binfmt(dir)?;
    let name = format!("kiln-qemu-{}", qemu_name(&e.arch).unwrap_or_default());
    if dir.join(&name).exists() {
        return Ok(());
    }
    let line = register_line(e)?;
    std::fs::write(dir.join("register"), line).map_err(io_ctx(format!(
        "registering {} with binfmt_misc",
        e.interpreter.display()
    )))
}

/// Whether the host has an enabled, fix-binary registration for `arch` (any name):
/// such an interpreter works in kiln's namespaces too.
pub fn host_registered(arch: &str) -> Option<String> {
    let t = target(arch)?;
    let magic: String = t.magic.iter().map(|b| format!("{b:02x}")).collect();
    let dir = Path::new("/proc/sys/fs/binfmt_misc");
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        };
        let enabled = text.lines().next() == Some("enabled");
        let same = field("magic ") == magic;
        if enabled && same && field("flags:").contains('F') {
            return Some(field("interpreter "));
        }
    }
    None
}

/// Whether kiln can mount a binfmt_misc of its own user namespace here.
pub fn private_binfmt(executor: &dyn Executor) -> std::result::Result<(), String> {
    match executor.probe_binfmt() {
        Ok(None) => Ok(()),
        Ok(Some(e)) => Err(e),
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
pub fn how(
    arch: &str,
    private: &std::result::Result<(), String>,
) -> std::result::Result<Runs, String> {
    let host = Platform::host().architecture;
    if native(&host, arch) {
        return Ok(Runs::Native);
    }
    let Some(qemu) = qemu_name(arch) else {
        return Err(format!(
            "kiln knows no QEMU emulator for architecture {arch:?} (it knows arm64, arm, riscv64, ppc64le, s390x, mips64le, amd64, 386)"
        ));
    };
    let found = find_interpreter(
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
    if let Some(i) = host_registered(arch) {
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

/// The emulators the graphs' RUN steps need, checked before anything runs (Linux
/// 6.7+ lets kiln register a static QEMU in its own user namespace; else the host's
/// registration serves); what was chosen goes to `note`.
pub fn plan(
    graphs: &[BuildGraph],
    executor: &dyn Executor,
    note: &dyn Fn(&str),
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
    if needed.iter().all(|(a, _)| native(&host, a)) {
        return Ok(HashMap::new());
    }
    let private = private_binfmt(executor);
    let mut out = HashMap::new();
    for (arch, platform) in needed {
        match how(&arch, &private) {
            Ok(Runs::Native) => {}
            Ok(Runs::Private(e)) => {
                note(&format!(
                    "{platform}: RUN steps are emulated by {} (registered in kiln's user namespace)",
                    e.interpreter.display()
                ));
                out.insert(arch, e);
            }
            Ok(Runs::Host(i)) => note(&format!(
                "{platform}: RUN steps are emulated by the host's binfmt_misc registration ({i})"
            )),
            Err(why) => {
                return Err(Error::CannotEmulate {
                    platform,
                    host: host.clone(),
                    why,
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_lines_escape_everything() {
        let e = Emulator {
            arch: "arm64".into(),
            interpreter: "/usr/bin/qemu-aarch64-static".into(),
        };
        let line = register_line(&e).expect("line");
        assert!(
            line.starts_with(":kiln-qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02"),
            "{line}"
        );
        assert!(line.ends_with(":/usr/bin/qemu-aarch64-static:FP"));
        assert_eq!(line.matches(':').count(), 7, "{line}");
        let bad = Emulator {
            arch: "vax".into(),
            interpreter: "/x".into(),
        };
        assert!(register_line(&bad).is_err());
    }

    #[test]
    fn only_static_interpreters_are_taken() {
        // This test binary is dynamically linked; a hand-made static ELF header is not.
        let me = std::fs::read("/proc/self/exe").expect("self");
        assert!(!elf_is_static(&me));
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20] = 64; // phoff
        elf[0x36] = 56; // phentsize
        elf[0x38] = 1; // phnum
        elf[64] = 1; // PT_LOAD
        assert!(elf_is_static(&elf));
        elf[64] = 3; // PT_INTERP
        assert!(!elf_is_static(&elf));
        assert!(!elf_is_static(b"#!/bin/sh\n"));
        assert!(native("amd64", "386"));
        assert!(!native("amd64", "arm64"));
        assert_eq!(qemu_name("arm64"), Some("aarch64"));
    }
}
