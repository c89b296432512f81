//! The solver's system calls, and its only `unsafe`: namespaces, mounts, the pivot into
//! the rootfs, dropping to the RUN user, fork, exec and wait, closing inherited
//! descriptors, a fresh session keyring, bringing up loopback, and fd-relative lookups
//! that stay inside a root (openat2). Callers decide what to do; this module only does
//! it and names what failed.

use crate::{Error, Result};
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use crate::sys_err as fail;

/// A private mount namespace: nothing mounted here propagates to the host.
pub(crate) fn private_mount_ns() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(fail("unshare(CLONE_NEWNS)"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(fail("making mounts private"))
}

/// New pid, ipc and uts namespaces (the pid one applies to the next child).
pub(crate) fn sandbox_namespaces() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
        .map_err(fail("unshare(pid, ipc, uts)"))
}

/// A mount namespace of the caller's own, so that a pivot moves only its root.
pub(crate) fn own_mount_ns() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(fail("unshare(CLONE_NEWNS)"))
}

pub(crate) fn set_hostname(name: &str) -> Result<()> {
    nix::unistd::sethostname(name).map_err(fail("sethostname"))
}

/// A fresh procfs at `target`, or, where that is refused (a masked /proc), the host's.
pub(crate) fn mount_proc(target: &Path) -> Result<()> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if mount(Some("proc"), target, Some("proc"), flags, None::<&str>).is_ok() {
        return Ok(());
    }
    mount(
        Some("/proc"),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail("mounting /proc"))
}

/// The flags a mount already has (`statvfs`), so that a remount keeps the ones the
/// kernel locks in a user namespace (nosuid, nodev, noexec, the atime ones).
fn mount_flags(target: &Path) -> Result<MsFlags> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let f = statvfs(target)
        .map_err(fail(format!("statvfs {}", target.display())))?
        .flags();
    let mut out = MsFlags::empty();
    for (a, b) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(a) {
            out |= b;
        }
    }
    Ok(out)
}

/// A tmpfs at `target`; `exec` allows running programs from it.
pub(crate) fn mount_tmpfs(target: &Path, options: &str, exec: bool) -> Result<()> {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if !exec {
        flags |= MsFlags::MS_NOEXEC;
    }
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(options))
        .map_err(fail(format!("mounting tmpfs at {}", target.display())))
}

/// A new devpts instance at `target` (allowed in a user namespace that owns the
/// mount namespace), its ptmx usable by everyone.
pub(crate) fn mount_devpts(target: &Path) -> Result<()> {
    mount(
        Some("devpts"),
        target,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(fail(format!("mounting devpts at {}", target.display())))
}

/// Mounts the binfmt_misc instance of the current user namespace (Linux 6.7+ gives
/// each user namespace its own) at `target`.
pub(crate) fn mount_binfmt(target: &Path) -> Result<()> {
    mount(
        Some("binfmt_misc"),
        target,
        Some("binfmt_misc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(fail(format!(
        "mounting binfmt_misc at {} (a private binfmt_misc needs Linux 6.7 or newer)",
        target.display()
    )))
}

pub(crate) fn bind(src: &Path, target: &Path) -> Result<()> {
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(fail(format!("bind-mounting {}", src.display())))
}

/// Makes the bind mount at `target` read-only (keeping its other flags).
pub(crate) fn remount_ro(target: &Path) -> Result<()> {
    let keep = mount_flags(target)?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        keep | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(fail(format!("making {} read-only", target.display())))
}

/// Opens `rel` as if `root` were `/` (`openat2` with `RESOLVE_IN_ROOT`): symlinks and
/// `..` in the path, planted by whoever wrote the tree, cannot lead out of it, and
/// magic links of /proc are refused. The result is an `O_PATH` descriptor, for
/// mounting onto (through `/proc/self/fd`) or as the directory of `*at` calls.
pub(crate) fn open_in_root(root: &impl AsFd, rel: &str) -> nix::Result<OwnedFd> {
    let rel = rel.trim_start_matches('/');
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, if rel.is_empty() { "." } else { rel }, how)
}

/// Opens the directory `rel` below `root` only if no component is a symlink or a mount
/// point and nothing leaves `root` (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_XDEV`): for removing what kiln made in a tree that a RUN has changed.
pub(crate) fn open_dir_beneath(root: &impl AsFd, rel: &str) -> nix::Result<OwnedFd> {
    let rel = rel.trim_start_matches('/');
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    openat2(root, if rel.is_empty() { "." } else { rel }, how)
}

/// The path through which the kernel reaches an open descriptor, for `mount(2)`.
pub(crate) fn fd_path(fd: &impl AsRawFd) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Closes every descriptor above 2 but those in `keep` (close-on-exec ones of the
/// sandbox's own: the pipe for why a command did not start, the socket that hands the
/// seccomp listener over; the exec closes them). Whatever kiln's caller
/// left open (a CI runner's pipes, a shell's `exec 7<dir`) would otherwise reach the
/// RUN, and a directory among them is a way out of the rootfs
/// (`WORKDIR /proc/self/fd/7`, runc's CVE-2024-21626).
pub(crate) fn close_inherited_fds(keep: &[i32]) -> Result<()> {
    let mut kept: Vec<u32> = keep
        .iter()
        .filter_map(|&k| u32::try_from(k).ok())
        .filter(|&k| k > 2)
        .collect();
    kept.sort_unstable();
    kept.dedup();
    let mut ranges = Vec::new();
    let mut first = 3u32;
    for k in &kept {
        ranges.push((first, k - 1));
        first = k + 1;
    }
    ranges.push((first, u32::MAX));
    let mut all = true;
    for (first, last) in ranges.into_iter().filter(|(f, l)| f <= l) {
        // SAFETY: close_range takes three integers and touches no memory of ours; it
        // runs in the sandbox child, which holds no descriptor it uses after this point
        // but `keep` (every file it opens later is opened afterwards).
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        all &= r == 0;
    }
    if all {
        return Ok(());
    }
    // Kernels before 5.9: close them one by one.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(crate::io_ctx("listing /proc/self/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2 && !kept.contains(&(fd as u32)))
        .collect();
    for fd in fds {
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}

/// Joins a new anonymous session keyring, as runc does for every container: the keys
/// of the caller's session keyring are not the RUN's.
pub(crate) fn new_session_keyring() -> Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: KEYCTL_JOIN_SESSION_KEYRING with a NULL name reads no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if r >= 0 {
        return Ok(());
    }
    match nix::errno::Errno::last() {
        // A kernel without keys has no keyring to leak.
        nix::errno::Errno::ENOSYS => Ok(()),
        e => Err(fail("joining a new session keyring")(e)),
    }
}

/// Brings up `lo` in the current network namespace (a new one has it down).
pub(crate) fn loopback_up() -> Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(fail("socket for bringing up lo"))?;
    // SAFETY: ifreq is plain old data, zeroed is a valid value for it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: the ioctls read and write `req`, a live ifreq of the size they expect, on a
    // socket descriptor we own; the union field written is the flags one SIOCGIFFLAGS set.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(fail("reading the flags of lo")(nix::errno::Errno::last()));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(fail("bringing up lo")(nix::errno::Errno::last()));
        }
    }
    Ok(())
}

/// A network namespace of its own: only a loopback interface, no route out.
pub(crate) fn own_net_ns() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(fail("unshare(CLONE_NEWNET)"))
}

/// Holds an exclusive lock on `file` until the returned handle is dropped.
pub(crate) fn lock_exclusive(file: std::fs::File) -> Result<nix::fcntl::Flock<std::fs::File>> {
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| fail("locking a cache mount")(e))
}

pub(crate) fn unmount(target: &Path) -> Result<()> {
    umount2(target, MntFlags::MNT_DETACH).map_err(fail(format!("unmounting {}", target.display())))
}

/// Makes `root` the process's `/` and detaches the old root.
pub(crate) fn pivot_into(root: &Path) -> Result<()> {
    std::env::set_current_dir(root).map_err(crate::io_ctx("entering the rootfs"))?;
    nix::unistd::pivot_root(".", ".").map_err(fail("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(fail("detaching the old root"))?;
    std::env::set_current_dir("/").map_err(crate::io_ctx("chdir /"))
}

/// Becomes `uid:gid` with supplementary `groups`. In a single-id mapping setgroups is
/// denied; the user then keeps no extra groups.
pub(crate) fn become_user(uid: u32, gid: u32, groups: &[u32]) -> Result<()> {
    let g = Gid::from_raw(gid);
    let mut all = vec![g];
    all.extend(groups.iter().map(|x| Gid::from_raw(*x)));
    let _ = nix::unistd::setgroups(&all);
    nix::unistd::setresgid(g, g, g).map_err(fail(format!("setgid {gid}")))?;
    let u = Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u).map_err(fail(format!("setuid {uid}")))
}

fn resource_of(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource;
    Some(match name {
        "cpu" => Resource::RLIMIT_CPU,
        "fsize" => Resource::RLIMIT_FSIZE,
        "data" => Resource::RLIMIT_DATA,
        "stack" => Resource::RLIMIT_STACK,
        "core" => Resource::RLIMIT_CORE,
        "rss" => Resource::RLIMIT_RSS,
        "nproc" => Resource::RLIMIT_NPROC,
        "nofile" => Resource::RLIMIT_NOFILE,
        "memlock" => Resource::RLIMIT_MEMLOCK,
        "as" => Resource::RLIMIT_AS,
        "locks" => Resource::RLIMIT_LOCKS,
        "sigpending" => Resource::RLIMIT_SIGPENDING,
        "msgqueue" => Resource::RLIMIT_MSGQUEUE,
        "nice" => Resource::RLIMIT_NICE,
        "rtprio" => Resource::RLIMIT_RTPRIO,
        "rttime" => Resource::RLIMIT_RTTIME,
        _ => return None,
    })
}

/// Sets resource limit `name` (one of Docker's `--ulimit` names; -1: unlimited).
/// Raising a hard limit above the one kiln was started with needs a privilege the
/// user namespace does not give: the kernel says EPERM.
pub(crate) fn set_rlimit(name: &str, soft: i64, hard: i64) -> Result<()> {
    use nix::sys::resource::{setrlimit, RLIM_INFINITY};
    let Some(resource) = resource_of(name) else {
        return Err(Error::Ulimit(format!("unknown limit {name:?}")));
    };
    let lim = |v: i64| u64::try_from(v).unwrap_or(RLIM_INFINITY);
    setrlimit(resource, lim(soft), lim(hard)).map_err(|e| {
        Error::Ulimit(match e {
            nix::errno::Errno::EPERM => format!(
                "{name}={soft}:{hard}: above the hard limit kiln runs under, which a rootless build cannot raise"
            ),
            e => format!("{name}={soft}:{hard}: {e}"),
        })
    })
}

/// The hard limit of `name` (a `--ulimit` name) this process runs under; `None` for
/// unknown names and unlimited ones.
pub fn hard_limit(name: &str) -> Option<u64> {
    use nix::sys::resource::{getrlimit, RLIM_INFINITY};
    let (_, hard) = getrlimit(resource_of(name)?).ok()?;
    (hard != RLIM_INFINITY).then_some(hard)
}

/// SIGKILL when the parent (the helper) dies.
pub(crate) fn die_with_parent() -> Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(fail("prctl(PR_SET_PDEATHSIG)"))
}

/// Replaces the process image; returns only on failure.
pub(crate) fn exec(prog: &str, argv: &[String], env: &[String]) -> Error {
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| fail(format!("NUL byte in {s:?}"))(nix::errno::Errno::EINVAL))
    };
    let args = (|| -> Result<_> {
        let argv = argv.iter().map(|a| cstr(a)).collect::<Result<Vec<_>>>()?;
        let envp = env.iter().map(|a| cstr(a)).collect::<Result<Vec<_>>>()?;
        Ok((cstr(prog)?, argv, envp))
    })();
    match args {
        Ok((p, argv, envp)) => match nix::unistd::execve(&p, &argv, &envp) {
            Err(e) => fail(format!("exec {prog}"))(e),
            Ok(never) => match never {},
        },
        Err(e) => e,
    }
}

/// Forks. Only called from the namespace helper, which never starts threads, so the
/// child may do anything the parent could.
pub(crate) fn fork() -> Result<ForkResult> {
    // SAFETY: the helper process is single-threaded (it is exec'd fresh and creates no
    // threads before running a step), so no lock or allocator state can be left held by
    // another thread in the child.
    unsafe { nix::unistd::fork() }.map_err(fail("fork"))
}

/// Waits for `child`; its exit code, or 128+signal when it was killed.
pub(crate) fn wait_exit(child: Pid) -> Result<i32> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(fail("waiting for the RUN process")(e)),
        }
    }
}

/// The host's native syscall ABI, as seccomp names it (`AUDIT_ARCH_*`).
#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = 0xC000_00B7;

/// The chown family of the native ABI (the calls [`install_supervised_filter`] hands to
/// a supervisor). aarch64 has no chown/lchown, only their `*at` form.
#[cfg(target_arch = "x86_64")]
pub(crate) const CHOWN_CALLS: [i64; 4] = [
    libc::SYS_chown,
    libc::SYS_fchown,
    libc::SYS_lchown,
    libc::SYS_fchownat,
];
#[cfg(target_arch = "aarch64")]
pub(crate) const CHOWN_CALLS: [i64; 2] = [libc::SYS_fchown, libc::SYS_fchownat];

/// The stat family of the native ABI, which the supervisor answers for files whose
/// owner it recorded (and lets run as usual for the rest).
#[cfg(target_arch = "x86_64")]
pub(crate) const STAT_CALLS: [i64; 5] = [
    libc::SYS_stat,
    libc::SYS_fstat,
    libc::SYS_lstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
];
#[cfg(target_arch = "aarch64")]
pub(crate) const STAT_CALLS: [i64; 3] = [libc::SYS_fstat, libc::SYS_newfstatat, libc::SYS_statx];

/// The identity calls, which the supervisor emulates (see `crate::ids`).
pub(crate) const ID_CALLS: [i64; 16] = [
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_setgroups,
    libc::SYS_getgroups,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
];

/// statx(2) of the file `fd` is open on (an `O_PATH` descriptor will do).
pub(crate) fn statx_fd(fd: &impl AsRawFd, flags: i32, mask: u32) -> nix::Result<libc::statx> {
    // SAFETY: statx is plain integers, for which all zeroes is a value.
    let mut out: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx reads the empty C string and writes one statx into `out`.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags | libc::AT_EMPTY_PATH,
            mask,
            &mut out,
        )
    };
    if r < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(out)
}

/// The bytes of a plain-integer C struct, to copy into a caller's memory.
pub(crate) fn struct_bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: T is one of libc's stat structs: integers only, no padding the kernel
    // leaves undefined (they are filled by the kernel or zeroed first), read within
    // its size.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
        .to_vec()
}

/// Installs a seccomp filter on this process (and what it execs) that passes every
/// call of [`CHOWN_CALLS`], [`STAT_CALLS`] and [`ID_CALLS`] to a supervisor, and returns the
/// supervisor's end (the listener, close-on-exec). Other calls, and every call of
/// another ABI (i386, x32), run as usual.
pub(crate) fn install_supervised_filter() -> Result<OwnedFd> {
    use libc::{sock_filter, sock_fprog};
    let stmt = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let calls: Vec<i64> = CHOWN_CALLS
        .iter()
        .chain(STAT_CALLS.iter())
        .chain(ID_CALLS.iter())
        .copied()
        .collect();
    let n = calls.len() as u8;
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    // seccomp_data: nr at 0, arch at 4.
    let mut prog = vec![stmt(load, 4), jeq(NATIVE_ARCH, 0, n + 1), stmt(load, 0)];
    for (i, nr) in calls.iter().enumerate() {
        // Equal: to the notify return, past the remaining tests and the allow.
        prog.push(jeq(*nr as u32, n - i as u8, 0));
    }
    prog.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    prog.push(stmt(ret, libc::SECCOMP_RET_USER_NOTIF));
    let fprog = sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: seccomp(2) reads `fprog` and the `prog.len()` instructions it points at,
    // both alive for the call; the return value is a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const sock_fprog,
        )
    };
    if fd < 0 {
        return Err(fail("installing the supervisor's seccomp filter")(
            nix::errno::Errno::last(),
        ));
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// The next notification of `listener` (blocks until there is one).
pub(crate) fn notif_recv(listener: &OwnedFd) -> nix::Result<libc::seccomp_notif> {
    // SAFETY: seccomp_notif is plain integers, for which all zeroes is a value; the
    // kernel wants it zeroed.
    let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: the ioctl writes one seccomp_notif into `n`, which is that size.
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV,
            &mut n as *mut libc::seccomp_notif,
        )
    };
    if r < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(n)
}

/// Whether notification `id` is still pending (its caller alive, in that call).
pub(crate) fn notif_id_valid(listener: &OwnedFd, id: u64) -> bool {
    // SAFETY: the ioctl reads one u64 from `id`.
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
            &id as *const u64,
        )
    };
    r == 0
}

/// Answers notification `id`: `Ok(v)` returns `v` from the call, `Err(errno)` fails it,
/// and `None` lets the kernel run the call itself.
pub(crate) fn notif_send(
    listener: &OwnedFd,
    id: u64,
    answer: Option<std::result::Result<i64, nix::errno::Errno>>,
) -> nix::Result<()> {
    let (val, error, flags) = match answer {
        Some(Ok(v)) => (v, 0, 0),
        Some(Err(e)) => (0, -(e as i32), 0),
        None => (0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32),
    };
    let mut resp = libc::seccomp_notif_resp {
        id,
        val,
        error,
        flags,
    };
    // SAFETY: the ioctl reads one seccomp_notif_resp from `resp`.
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &mut resp as *mut libc::seccomp_notif_resp,
        )
    };
    if r < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// A descriptor that becomes readable when `pid` (a child) exits.
pub(crate) fn pidfd_open(pid: Pid) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// Owns a descriptor that arrived in an `SCM_RIGHTS` message.
pub(crate) fn received_fd(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: the kernel installed this descriptor in our table when the message was
    // received; the message owns nothing after it is read, so this is its only owner.
    unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
}
