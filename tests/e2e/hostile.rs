//! The hostile-input suite: each attack class that a Dockerfile, a context or a base
//! image can try on kiln, tried for real through the binary as the unprivileged user,
//! in both identity-mapping modes (and, run by `scripts/test.sh` once per snapshotter,
//! with both snapshotters). Each test checks a canary outside the store and leaves
//! the store consistent: every blob matches its digest, nothing stays in `tmp/`.

use super::store::{build, dir, file, gzip, layer, push_image, sha256, Ent};
use super::*;
use std::os::unix::fs::FileTypeExt;
use std::process::Stdio;

/// The identity-mapping modes every attack is tried in.
const MODES: [(&str, &[(&str, &str)]); 2] = [
    ("subordinate ids", &[]),
    ("single id", &[("KILN_IDMAP", "single")]),
];

fn snapshotter_is_native() -> bool {
    std::env::var("KILN_SNAPSHOTTER").is_ok_and(|s| s == "native")
}

/// Every blob hashes to its name and no temporary entry is left in the store.
fn assert_store_consistent(case: &Case) {
    assert_store_at_consistent(&case.path("store"));
}

fn assert_store_at_consistent(store: &Path) {
    let tmp: Vec<_> = fs::read_dir(store.join("tmp"))
        .expect("store tmp/")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(tmp.is_empty(), "stray entries in tmp/: {tmp:?}");
    if let Ok(rd) = fs::read_dir(store.join("blobs/sha256")) {
        for e in rd {
            let e = e.expect("entry");
            let bytes = fs::read(e.path()).expect("blob");
            assert_eq!(
                sha256(&bytes)[7..],
                e.file_name().to_string_lossy(),
                "a stored blob does not match its name"
            );
        }
    }
}

fn assert_no_crash(run: &Run) {
    for bad in [
        "panicked",
        "stack overflow",
        "core dumped",
        "fatal runtime error",
    ] {
        assert!(!run.stderr.contains(bad), "kiln crashed:\n{}", run.stderr);
    }
}

/// `run` failed, cleanly, saying `want`.
fn assert_fails_with(run: &Run, want: &str, what: &str) {
    assert_no_crash(run);
    assert!(!run.ok, "{what}: must fail");
    assert!(
        run.stderr.contains(want),
        "{what}: expected {want:?} in\n{}",
        run.stderr
    );
}

/// A directory outside the store holding files with known content.
fn canary(case: &Case, names: &[&str]) -> PathBuf {
    let v = case.path("victim");
    fs::create_dir_all(&v).expect("mkdir");
    for n in names {
        fs::write(v.join(n), "precious").expect("write");
    }
    v
}

fn assert_canary(v: &Path, names: &[&str], mode: &str) {
    let mut left: Vec<String> = fs::read_dir(v)
        .expect("victim")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(left, want, "{mode}: the victim directory changed");
    for n in names {
        assert_eq!(
            fs::read_to_string(v.join(n)).expect("canary"),
            "precious",
            "{mode}: {n} changed"
        );
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn run_cannot_steer_the_mount_stub_clean_up_to_host_paths() {
    for (mode, env) in MODES {
        let case = Case::new("");
        let names = ["hosts", "resolv.conf", "x"];
        let v = canary(&case, &names);
        let victim = v.to_str().expect("utf8");
        // The busybox base has no /etc/hosts or /etc/resolv.conf: kiln makes stubs for
        // them, and for the secret's /nd/x. The RUN unmounts them and swaps the parents
        // for symlinks to the victim, whose files have the stubs' names.
        case.file(
            "Dockerfile",
            &format!(
                "FROM {}/library/busybox:latest\n\
                 RUN --mount=type=secret,id=s,target=/nd/x \
                 umount /etc/resolv.conf /etc/hosts /nd/x 2>/dev/null; \
                 mv /etc /etc.real && ln -s {victim} /etc && mv /nd /nd.real && ln -s {victim} /nd\n",
                registry()
            ),
        );
        fs::write(case.path("secret"), "s3cret").expect("secret");
        let secret = format!("id=s,src={}", case.path("secret").display());
        let out = case.path("out.tar");
        let dest = format!("type=tar,dest={}", out.display());
        let run = build(&case, &["--secret", &secret, "-o", &dest], env);
        assert_no_crash(&run);
        assert!(run.ok, "{mode}: {}", run.stderr);
        assert_canary(&v, &names, mode);
        // The layer has the RUN's symlinks and no stub of kiln's beyond them.
        let listing = tool("tar", &["-tvf", out.to_str().expect("utf8")]);
        assert!(listing.contains(&format!("etc -> {victim}")), "{listing}");
        assert_store_consistent(&case);
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn descriptors_of_the_caller_do_not_reach_run() {
    for (mode, env) in MODES {
        let case = Case::new("");
        let v = canary(&case, &["file"]);
        // kiln's caller holds fd 7 on a host directory and fd 8 on a host file, as a CI
        // runner or a shell's `exec 7<dir` would.
        let kiln_with_fds = |dockerfile: &str| -> Run {
            case.file("Dockerfile", dockerfile);
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(r#"exec 7<"$1" 8>>"$1/file"; shift; exec "$@""#)
                .arg("sh")
                .arg(&v)
                .arg(kiln_bin())
                .arg("--root")
                .arg(case.path("store"))
                .args(["build", "--progress", "plain"])
                .arg(case.ctx())
                .envs(env.iter().copied());
            Run::from(cmd.output().expect("run kiln"))
        };
        let run = kiln_with_fds(&format!(
            "FROM {}/library/busybox:latest\n\
             RUN ls -l /proc/self/fd/; test ! -e /proc/self/fd/7 && test ! -e /proc/self/fd/8\n",
            registry()
        ));
        assert_no_crash(&run);
        assert!(
            run.ok,
            "{mode}: inherited fds are visible in RUN:\n{}",
            run.stderr
        );
        // runc's CVE-2024-21626: a working directory through the leaked descriptor.
        let run = kiln_with_fds(&format!(
            "FROM {}/library/busybox:latest\n\
             WORKDIR /proc/self/fd/7\n\
             RUN echo escaped > escaped; ls .. > listing; echo more >> /proc/self/fd/8\n",
            registry()
        ));
        assert_fails_with(
            &run,
            "working directory",
            &format!("{mode}: a working directory outside the rootfs must fail"),
        );
        assert_canary(&v, &["file"], mode);
        assert_store_consistent(&case);
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn run_gets_a_session_keyring_of_its_own() {
    // keyctl and its library, copied into a Debian base (which has libc).
    let keyctl = String::from_utf8_lossy(
        &Command::new("sh")
            .args(["-c", "command -v keyctl"])
            .output()
            .expect("sh")
            .stdout,
    )
    .trim()
    .to_string();
    assert!(
        !keyctl.is_empty(),
        "keyctl (keyutils) is needed; setup.sh installs it"
    );
    let ldd = tool("ldd", &[&keyctl]);
    let lib = ldd
        .lines()
        .find(|l| l.contains("libkeyutils"))
        .and_then(|l| l.split("=>").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .expect("libkeyutils in ldd's output")
        .to_string();
    for (mode, env) in MODES {
        let case = Case::new("");
        fs::copy(&keyctl, case.ctx().join("keyctl")).expect("copy keyctl");
        fs::copy(&lib, case.ctx().join("libkeyutils.so.1")).expect("copy lib");
        case.file(
            "Dockerfile",
            &format!(
                "FROM {}/library/debian:bookworm-slim\n\
                 COPY keyctl /usr/bin/keyctl\n\
                 COPY libkeyutils.so.1 {lib}\n\
                 RUN keyctl show @s; keyctl print %user:kiln-e2e-key; cat /proc/keys; true\n",
                registry()
            ),
        );
        // The caller's session keyring holds a key, as after `keyctl add ... @s`.
        let out = Command::new(&keyctl)
            .args(["session", "kiln-e2e", "sh", "-c"])
            .arg(
                r#"keyctl add user kiln-e2e-key KEY-PAYLOAD-a8f3 @s >/dev/null && keyctl print %user:kiln-e2e-key && exec "$@""#,
            )
            .arg("sh")
            .arg(kiln_bin())
            .arg("--root")
            .arg(case.path("store"))
            .args(["build", "--progress", "plain"])
            .arg(case.ctx())
            .envs(env.iter().copied())
            .output()
            .expect("keyctl session");
        let run = Run::from(out);
        assert_no_crash(&run);
        assert!(run.ok, "{mode}: {}", run.stderr);
        assert!(
            run.stdout.contains("KEY-PAYLOAD-a8f3"),
            "the caller can read its key: {}",
            run.stdout
        );
        assert!(
            !run.stderr.contains("KEY-PAYLOAD-a8f3") && !run.stderr.contains("user: kiln-e2e-key"),
            "{mode}: RUN reached the caller's keyring:\n{}",
            run.stderr
        );
        assert_store_consistent(&case);
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn run_sees_masked_proc_and_a_real_empty_network_namespace() {
    // Files of /proc that an unprivileged reader gets on the host, and that runc masks.
    let masked: Vec<&str> = [
        "/proc/interrupts",
        "/proc/sched_debug",
        "/proc/keys",
        "/proc/timer_list",
    ]
    .into_iter()
    .filter(|p| fs::read(p).is_ok_and(|b| !b.is_empty()))
    .collect();
    assert!(!masked.is_empty(), "no readable /proc file to check");
    let dirs: Vec<&str> = ["/proc/acpi", "/proc/scsi", "/proc/asound"]
        .into_iter()
        .filter(|p| fs::read_dir(p).is_ok_and(|mut d| d.next().is_some()))
        .collect();
    let mut checks = String::new();
    for f in &masked {
        checks.push_str(&format!(
            "test -z \"$(head -c 16 {f} 2>/dev/null)\" || {{ echo READABLE {f}; exit 1; }}; "
        ));
    }
    for d in &dirs {
        checks.push_str(&format!(
            "test -z \"$(ls -A {d})\" || {{ echo LISTED {d}; exit 1; }}; "
        ));
    }
    let reg = registry();
    let (host, port) = reg.split_once(':').expect("host:port");
    // The registry on the host's loopback: reachable in the host's network (RUN's
    // default, as in rootless BuildKit and buildah), not from --network=none.
    let get = format!(
        "printf 'GET /v2/ HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {host} {port} | grep -q '^HTTP/1.. 200'"
    );
    for (mode, env) in MODES {
        let case = Case::new("");
        case.file(
            "Dockerfile",
            &format!(
                "FROM {reg}/library/busybox:latest\n\
                 RUN {checks} if echo x > /proc/sys/kernel/domainname; then echo WRITABLE; exit 1; fi\n\
                 RUN echo MOUNTINFO-START; cat /proc/self/mountinfo; echo MOUNTINFO-END\n\
                 RUN --network=none test \"$(ip -o link | wc -l)\" = 1 && ip -o link show lo | grep -q ',UP' \
                     && ping -c 1 -W 2 127.0.0.1 >/dev/null && ! {get}\n\
                 RUN {get}\n"
            ),
        );
        let run = build(&case, &[], env);
        assert_no_crash(&run);
        assert!(run.ok, "{mode}: {}", run.stderr);
        // The root overlay and the files kiln mounts name no path of the store (in
        // the native snapshotter the rootfs is a bind mount, whose source path
        // the kernel shows; see the README's security model).
        if !snapshotter_is_native() {
            let store = case.path("store");
            let store = store.to_str().expect("utf8");
            let mountinfo: Vec<&str> = run
                .stderr
                .lines()
                .skip_while(|l| !l.ends_with("MOUNTINFO-START"))
                .take_while(|l| !l.ends_with("MOUNTINFO-END"))
                .collect();
            assert!(mountinfo.len() > 3, "{}", run.stderr);
            for l in mountinfo {
                assert!(!l.contains(store), "{mode}: mountinfo shows the store: {l}");
            }
        }
        assert_store_consistent(&case);
    }
}

/// Pushes an image to the local registry through its HTTP API (blob uploads and a
/// manifest put), so that the manifest and config can say what they like.
fn push_raw(name: &str, config: &serde_json::Value, layers: &[(Vec<u8>, u64)]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let upload = |bytes: &[u8]| -> String {
        let digest = sha256(bytes);
        let f = dir.path().join(&digest[7..]);
        fs::write(&f, bytes).expect("blob");
        let head = tool(
            "curl",
            &[
                "-sS",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-X",
                "POST",
                &format!("http://{}/v2/{name}/blobs/uploads/", registry()),
            ],
        );
        let loc = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("location")
                    .then(|| v.trim().to_string())
            })
            .expect("upload location");
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{}{loc}", registry())
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        curl_put(
            &f,
            "application/octet-stream",
            &format!("{loc}{sep}digest={digest}"),
        );
        digest
    };
    let c = serde_json::to_vec(config).expect("json");
    let mut descs = Vec::new();
    for (blob, size) in layers {
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": upload(blob), "size": size}));
    }
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": upload(&c), "size": c.len()},
        "layers": descs});
    let m = dir.path().join("manifest");
    fs::write(&m, manifest.to_string()).expect("manifest");
    curl_put(
        &m,
        "application/vnd.oci.image.manifest.v1+json",
        &format!("http://{}/v2/{name}/manifests/t", registry()),
    );
}

/// `curl -X PUT` of the file `body` as `content_type`; fails the test on an HTTP error.
fn curl_put(body: &Path, content_type: &str, url: &str) {
    tool(
        "curl",
        &[
            "-sSf",
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {content_type}"),
            "--data-binary",
            &format!("@{}", body.display()),
            url,
        ],
    );
}

fn config_for(diff_ids: &[String]) -> serde_json::Value {
    let arch = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    serde_json::json!({"architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}})
}

/// Builds `FROM image` and expects a failure mentioning every one of `want`, with the
/// store consistent afterwards.
fn expect_refused(case: &Case, image: &str, env: &[(&str, &str)], want: &[&str], mode: &str) {
    case.file("Dockerfile", &format!("FROM {image}\nLABEL x=y\n"));
    let run = build(case, &[], env);
    assert_no_crash(&run);
    assert!(!run.ok, "{mode}: {image} must be refused");
    for w in want {
        assert!(
            run.stderr.contains(w),
            "{mode}: expected {w:?} in\n{}",
            run.stderr
        );
    }
    assert_store_consistent(case);
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn hostile_base_images_cannot_damage_the_store_or_lie_about_their_layers() {
    let reg = registry();
    // A whiteout named `..` (`.wh...`): at the top it would remove the store's tmp/,
    // one level down the unpack directory itself.
    let wh_top = layer(&[file("a", b"x"), file(".wh...", b"")]);
    let wh_sub = layer(&[dir("d"), file("d/.wh...", b"")]);
    let good = layer(&[file("f", b"good")]);
    let good_gz = gzip(&good);
    let setup = Case::new("");
    push_image(
        &setup,
        "e2e/hostile-wh-top",
        None,
        &[(wh_top.clone(), gzip(&wh_top))],
    );
    push_image(
        &setup,
        "e2e/hostile-wh-sub",
        None,
        &[(wh_sub.clone(), gzip(&wh_sub))],
    );
    // A config whose diffID is not the layer's, and a manifest whose size is wrong.
    push_raw(
        "e2e/hostile-diffid",
        &config_for(&[sha256(b"not the layer")]),
        &[(good_gz.clone(), good_gz.len() as u64)],
    );
    push_raw(
        "e2e/hostile-size",
        &config_for(&[sha256(&good)]),
        &[(good_gz.clone(), good_gz.len() as u64 + 1000)],
    );
    // A decompression bomb: about 1.2 MB of gzip that expands to 1.25 GiB of zeros.
    let bomb_size: u64 = 1280 << 20;
    let bomb_gz = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let mut h = tar::Header::new_ustar();
        h.set_path("zeros").expect("path");
        h.set_size(bomb_size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        std::io::Write::write_all(&mut gz, h.as_bytes()).expect("gz");
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(bomb_size >> 20) + 1 {
            std::io::Write::write_all(&mut gz, &zeros).expect("gz");
        }
        gz.finish().expect("gz")
    };
    assert!(
        bomb_gz.len() < 2 << 20,
        "the bomb is {} bytes",
        bomb_gz.len()
    );
    push_raw(
        "e2e/hostile-bomb",
        &config_for(&[sha256(b"unknowable without expanding it")]),
        &[(bomb_gz.clone(), bomb_gz.len() as u64)],
    );
    for (mode, env) in MODES {
        let case = Case::new("");
        let v = canary(&case, &["file"]);
        for img in ["e2e/hostile-wh-top", "e2e/hostile-wh-sub"] {
            case.file("Dockerfile", &format!("FROM {reg}/{img}:t\nLABEL x=y\n"));
            let run = build(&case, &[], env);
            assert_no_crash(&run);
            assert!(!run.ok, "{mode}: {img} must be refused");
            assert!(
                run.stderr.contains("whiteout that names no entry")
                    && run.stderr.contains(&format!("{reg}/{img}")),
                "{mode}: {}",
                run.stderr
            );
            // Followed, `.wh...` removes the store's tmp/ (and whatever other builds
            // have in it) and leaves a whiteout device in its place.
            assert!(
                fs::symlink_metadata(case.path("store/tmp")).is_ok_and(|m| m.is_dir()),
                "{mode}: {img} damaged the store's tmp/"
            );
            assert_store_consistent(&case);
        }
        expect_refused(
            &case,
            &format!("{reg}/e2e/hostile-diffid:t"),
            env,
            &[
                &format!("{reg}/e2e/hostile-diffid"),
                &sha256(&good_gz),
                "diffID",
                &sha256(&good),
            ],
            mode,
        );
        expect_refused(
            &case,
            &format!("{reg}/e2e/hostile-size:t"),
            env,
            &[
                "e2e/hostile-size",
                &sha256(&good_gz),
                &format!("{} bytes", good_gz.len() + 1000),
            ],
            mode,
        );
        expect_refused(
            &case,
            &format!("{reg}/e2e/hostile-bomb:t"),
            env,
            &[
                "decompression bomb",
                "KILN_LAYER_EXPANSION_LIMIT",
                &sha256(&bomb_gz),
            ],
            mode,
        );
        // After all that, the store still builds.
        case.file(
            "Dockerfile",
            &format!("FROM {reg}/library/busybox:latest\nRUN true\n"),
        );
        build(&case, &[], env).expect_ok();
        assert_store_consistent(&case);
        assert_canary(&v, &["file"], mode);
    }
}

/// A FIFO entry.
fn fifo(name: &str) -> Ent<'_> {
    Ent {
        kind: tar::EntryType::Fifo,
        mode: 0o640,
        ..file(name, b"")
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn fifos_and_root_opaque_whiteouts_in_layers_mean_what_they_say() {
    let reg = registry();
    let setup = Case::new("");
    let base = layer(&[file("old", b"lower"), dir("keep"), file("keep/x", b"x")]);
    let top = layer(&[
        file(".wh..wh..opq", b""),
        file("new", b"upper"),
        fifo("pipe"),
    ]);
    push_image(
        &setup,
        "e2e/opaque-root",
        None,
        &[(base.clone(), gzip(&base)), (top.clone(), gzip(&top))],
    );
    for (mode, env) in MODES {
        let case = Case::new(&format!(
            "FROM {reg}/library/busybox:latest\n\
             COPY --from={reg}/e2e/opaque-root:t / /view/\n\
             RUN test -p /view/pipe && test \"$(stat -c %a /view/pipe)\" = 640 \
                 && test -f /view/new && test ! -e /view/old && test ! -e /view/keep\n"
        ));
        let run = build(&case, &[], env);
        assert_no_crash(&run);
        assert!(run.ok, "{mode}: {}", run.stderr);
        assert_store_consistent(&case);
    }
}

/// Makes a chain of `depth` directories named `d` below `at`, one level at a time
/// relative to the last (no path that long can be named at once).
fn deep_chain(at: &Path, depth: usize) {
    let script = "import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\nfor _ in range(int(sys.argv[2])):\n    os.mkdir('d', dir_fd=fd); n = os.open('d', os.O_RDONLY, dir_fd=fd); os.close(fd); fd = n\n";
    let ok = Command::new("python3")
        .args(["-c", script])
        .arg(at)
        .arg(depth.to_string())
        .status()
        .expect("python3")
        .success();
    assert!(ok, "making a deep chain");
}

fn rm_rf(p: &Path) {
    // GNU rm walks trees of any depth.
    let _ = Command::new("rm").arg("-rf").arg(p).status();
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn deep_trees_in_the_context_or_a_run_end_in_an_error_not_a_crash() {
    let reg = registry();
    for (mode, env) in MODES {
        let case = Case::new(&format!(
            "FROM {reg}/library/busybox:latest\nCOPY . /ctx/\n"
        ));
        deep_chain(&case.ctx(), 10_000);
        let run = build(&case, &[], env);
        assert_fails_with(
            &run,
            "deeper than",
            &format!("{mode}: a 10,000-level context"),
        );
        rm_rf(&case.ctx().join("d"));
        // A RUN that leaves 1,500 levels (deeper than kiln walks; the RUN itself is
        // free to make them): the layer is refused, the step's tree removed.
        case.file(
            "Dockerfile",
            &format!(
                "FROM {reg}/library/busybox:latest\n\
                 RUN i=0; while [ $i -lt 1500 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done\n"
            ),
        );
        let run = build(&case, &[], env);
        assert_fails_with(&run, "deeper than", &format!("{mode}: a 1,500-level layer"));
        assert_store_consistent(&case);
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn special_files_and_a_symlinked_dockerignore_in_the_context() {
    let reg = registry();
    for (mode, env) in MODES {
        let case = Case::new(&format!(
            "FROM {reg}/library/busybox:latest\n\
             COPY . /c/\n\
             RUN test -p /c/fifo && test -f /c/LEAK-MARKER && test -f /c/sock && test ! -s /c/sock\n"
        ));
        let ok = Command::new("mkfifo")
            .arg(case.ctx().join("fifo"))
            .status()
            .expect("mkfifo")
            .success();
        assert!(ok);
        // A listening unix socket, as a dev server leaves one: BuildKit copies it as an
        // empty regular file.
        let sock = std::os::unix::net::UnixListener::bind(case.ctx().join("sock")).expect("bind");
        // A .dockerignore that is a symlink to a file outside the context: followed,
        // it would hide LEAK-MARKER (and print the outside file's lines in errors).
        let outside = case.path("outside-ignore");
        fs::write(&outside, "LEAK-MARKER\n").expect("write");
        fs::write(case.ctx().join("LEAK-MARKER"), "in the context").expect("write");
        std::os::unix::fs::symlink(&outside, case.ctx().join(".dockerignore")).expect("symlink");
        let run = build(&case, &[], env);
        assert_no_crash(&run);
        assert!(run.ok, "{mode}: {}", run.stderr);
        assert!(fs::symlink_metadata(case.ctx().join("fifo"))
            .expect("fifo")
            .file_type()
            .is_fifo());
        drop(sock);
        assert_store_consistent(&case);
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn a_full_disk_while_writing_a_layer_leaves_the_store_clean_and_usable() {
    // scripts/test.sh mounts a small tmpfs for this and gives it to the test user.
    let small = std::env::var("KILN_E2E_SMALL_FS")
        .expect("KILN_E2E_SMALL_FS: a small filesystem the test user owns (scripts/test.sh)");
    let reg = registry();
    for (mode, env) in MODES {
        let root = PathBuf::from(&small).join(format!("store-{}", env.len()));
        rm_rf(&root);
        let case = Case::new(&format!(
            "FROM {reg}/library/busybox:latest\n\
             RUN head -c 40000000 /dev/urandom > /big\n"
        ));
        let run_kiln = || -> Run {
            let out = Command::new(kiln_bin())
                .arg("--root")
                .arg(&root)
                .args(["build", "--progress", "plain"])
                .arg(case.ctx())
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .output()
                .expect("kiln");
            Run::from(out)
        };
        let run = run_kiln();
        assert_fails_with(
            &run,
            "No space left on device",
            &format!("{mode}: 40 MB of random data and its layer cannot fit in 64 MiB"),
        );
        assert_store_at_consistent(&root);
        // Space is back (the failed step's files are gone): the same store builds.
        case.file(
            "Dockerfile",
            &format!(
                "FROM {reg}/library/busybox:latest\nRUN head -c 1000000 /dev/urandom > /small\n"
            ),
        );
        run_kiln().expect_ok();
        assert_store_at_consistent(&root);
        // Files of subordinate ids are the helper's to remove: prune, then the rest.
        let out = Command::new(kiln_bin())
            .arg("--root")
            .arg(&root)
            .args(["prune", "--all", "--force"])
            .envs(env.iter().copied())
            .output()
            .expect("prune");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        rm_rf(&root);
    }
}
