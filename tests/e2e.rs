//! End-to-end tests: the `kiln` binary, run as an unprivileged user, against a real
//! registry on 127.0.0.1 with real base images, its outputs checked by skopeo, umoci
//! and tar. `scripts/test.sh` prepares the machine (registry, user, images) and runs
//! them; on their own they are ignored, since they need that setup.
//!
//! Environment: `KILN_BIN` (the binary; default: cargo's), `KILN_E2E_REGISTRY`
//! (default 127.0.0.1:5000).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "e2e/as_root.rs"]
mod as_root;
#[path = "e2e/cache.rs"]
mod cache;
#[path = "e2e/cli.rs"]
mod cli;
#[path = "e2e/copy.rs"]
mod copy;
#[path = "e2e/hostile.rs"]
mod hostile;
#[path = "e2e/inputs.rs"]
mod inputs;
#[path = "e2e/llb.rs"]
mod llb;
#[path = "e2e/outputs.rs"]
mod outputs;
#[path = "e2e/owners.rs"]
mod owners;
#[path = "e2e/platforms.rs"]
mod platforms;
#[path = "e2e/registry.rs"]
mod registry;
#[path = "e2e/run.rs"]
mod run;
#[path = "e2e/spool.rs"]
mod spool;
#[path = "e2e/store.rs"]
mod store;

fn kiln_bin() -> PathBuf {
    std::env::var_os("KILN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kiln")))
}

fn registry() -> String {
    std::env::var("KILN_E2E_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

/// The registry's access log (scripts/setup.sh starts it with one): its end now, to
/// read what came after with [`RegistryLog::gets_since`].
struct RegistryLog {
    path: std::path::PathBuf,
    start: u64,
}

impl RegistryLog {
    fn mark() -> RegistryLog {
        let path: std::path::PathBuf = std::env::var("KILN_E2E_REGISTRY_LOG")
            .expect("KILN_E2E_REGISTRY_LOG: the registry's access log (scripts/test.sh)")
            .into();
        let start = fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .len();
        RegistryLog { path, start }
    }

    /// The paths of the successful GET requests logged since the mark (distribution's
    /// combined log format: `"GET /v2/... HTTP/1.1" 200 ...`).
    fn gets_since(&self) -> Vec<String> {
        let all = fs::read(&self.path).unwrap_or_else(|e| panic!("{}: {e}", self.path.display()));
        let since = all.get(self.start as usize..).unwrap_or_default();
        String::from_utf8_lossy(since)
            .lines()
            .filter_map(|l| {
                let (_, req) = l.split_once("\"GET ")?;
                let (path, rest) = req.split_once(' ')?;
                let status = rest.split_once("\" ")?.1.split(' ').next()?;
                (status == "200").then(|| path.to_string())
            })
            .collect()
    }
}

/// A directory scripts/setup.sh makes, served over HTTP on 127.0.0.1 for as long as
/// this lives: the apt repository (`KILN_E2E_APT_REPO`, [`AptRepo::start`]) or the
/// wheels (`KILN_E2E_WHEELS`, [`AptRepo::wheels`]).
struct AptRepo {
    server: std::process::Child,
    port: u16,
    /// The server's stderr: why it stopped, if it did.
    log: std::path::PathBuf,
}

impl AptRepo {
    fn start() -> AptRepo {
        AptRepo::serve("KILN_E2E_APT_REPO")
    }

    fn wheels() -> AptRepo {
        AptRepo::serve("KILN_E2E_WHEELS")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn serve(var: &str) -> AptRepo {
        let dir = std::env::var(var).unwrap_or_else(|_| {
            panic!("{var}: a directory of scripts/setup.sh's (scripts/test.sh)")
        });
        // A port the kernel says is free; python binds it right after. Another
        // process can take it in between (python then exits at once): a new port then.
        let mut last = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let log = std::env::temp_dir().join(format!("kiln-e2e-http-{port}.log"));
            let err = std::fs::File::create(&log).expect("the server's log");
            let server = Command::new("python3")
                .args([
                    "-m",
                    "http.server",
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    &dir,
                ])
                .arg(port.to_string())
                .stdout(std::process::Stdio::null())
                .stderr(err)
                .spawn()
                .expect("python3 -m http.server");
            // Dropped (and so killed) if it never answers.
            let mut repo = AptRepo {
                server,
                port,
                log: log.clone(),
            };
            last = format!("nothing answered on 127.0.0.1:{port} in 30 s");
            // Up to 30 s: python starts slowly on a loaded runner.
            for _ in 0..600 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return repo;
                }
                if let Ok(Some(status)) = repo.server.try_wait() {
                    last = format!(
                        "python3 -m http.server on port {port} exited ({status}): {}",
                        std::fs::read_to_string(&log).unwrap_or_default().trim()
                    );
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        panic!("the {var} server did not start: {last}")
    }

    /// A RUN line that points apt at this repository only.
    fn sources(&self) -> String {
        format!(
            "echo 'deb [trusted=yes] http://127.0.0.1:{}/ ./' > /etc/apt/sources.list && rm -f /etc/apt/sources.list.d/*",
            self.port
        )
    }
}

impl Drop for AptRepo {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A scratch directory with a context and a kiln store of its own.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new(dockerfile: &str) -> Case {
        let dir = tempfile::Builder::new()
            .prefix("kiln-e2e-")
            .tempdir()
            .expect("tempdir");
        let c = Case { dir };
        fs::create_dir(c.ctx()).expect("mkdir ctx");
        c.file("Dockerfile", &dockerfile.replace("REGISTRY", &registry()));
        c
    }

    fn ctx(&self) -> PathBuf {
        self.dir.path().join("ctx")
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn file(&self, name: &str, content: &str) {
        let p = self.ctx().join(name);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, content).expect("write");
    }

    /// Runs `kiln build --root STORE --progress plain ARGS CONTEXT`.
    fn build(&self, args: &[&str]) -> Run {
        // Rootless is the point: these tests must never pass by running as root.
        assert_ne!(
            nix_uid(),
            0,
            "end-to-end tests must run as an unprivileged user"
        );
        let store = self.path("store");
        let out = Command::new(kiln_bin())
            .arg("build")
            .arg("--root")
            .arg(&store)
            .args(["--progress", "plain"])
            .args(args)
            .arg(self.ctx())
            .output()
            .expect("run kiln");
        Run::from(out)
    }
}

fn nix_uid() -> u32 {
    // The uid from /proc, to avoid a dependency for one call.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|u| u.parse().ok())
        })
        .unwrap_or(0)
}

struct Run {
    ok: bool,
    /// The exit status (`None`: killed by a signal).
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            ok: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }
}

impl Run {
    /// Asserts that kiln failed and said `want` on stderr.
    fn expect_failure(&self, want: &str) {
        assert!(!self.ok, "kiln succeeded\nstderr:\n{}", self.stderr);
        assert!(
            self.stderr.contains(want),
            "want {want:?} in:\n{}",
            self.stderr
        );
    }

    fn expect_ok(self) -> Run {
        assert!(
            self.ok,
            "kiln failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Whether the step whose title contains `title` ended with `status` (`DONE`,
    /// `CACHED`) in the plain progress output.
    fn step_ended(&self, title: &str, status: &str) -> bool {
        let id = self
            .stderr
            .lines()
            .find(|l| l.contains(title))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_else(|| panic!("no step {title:?} in:\n{}", self.stderr));
        self.stderr
            .lines()
            .any(|l| l.starts_with(&format!("{id} {status}")))
    }

    /// The image digest kiln reports at the end of a build.
    fn image_digest(&self) -> String {
        self.stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("image "))
            .and_then(|l| l.split_whitespace().next())
            .expect("an image digest line")
            .to_string()
    }
}

fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

/// The image config of `reference` (`oci-archive:PATH[:TAG]`, `docker://...`), as stored,
/// read with skopeo.
fn image_config(reference: &str) -> serde_json::Value {
    json(&tool(
        "skopeo",
        &["inspect", "--raw", "--config", reference],
    ))
}

/// Extracts an OCI archive into the directory `layout`.
fn extract_archive(archive: &Path, layout: &Path) {
    fs::create_dir_all(layout).expect("mkdir");
    tool(
        "tar",
        &[
            "-xf",
            archive.to_str().expect("utf8"),
            "-C",
            layout.to_str().expect("utf8"),
        ],
    );
}

/// Unpacks image `tag` of an OCI layout into `bundle` with `umoci --rootless`;
/// returns the rootfs.
fn umoci_unpack_layout(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:{tag}", layout.display()),
            bundle.to_str().expect("utf8"),
        ],
    );
    bundle.join("rootfs")
}

/// Extracts an OCI archive and unpacks image `tag` with `umoci --rootless`.
fn umoci_unpack(case: &Case, archive: &Path, tag: &str) -> PathBuf {
    let layout = case.path("layout");
    extract_archive(archive, &layout);
    umoci_unpack_layout(&layout, tag, &case.path("bundle"))
}

const SEED: &str = r#"
FROM REGISTRY/library/debian:bookworm-slim AS builder
WORKDIR /src
COPY greeting.txt .
RUN tr a-z A-Z < greeting.txt > /out.txt \
    # comments inside a continuation are dropped
    && echo built-by-run >> /out.txt \
    && chown 1234:50 /out.txt

FROM REGISTRY/library/busybox:latest AS unused
RUN echo unused-stage-ran && exit 7

FROM REGISTRY/library/busybox:latest
WORKDIR /app
COPY --from=builder /out.txt ./
ENV GREETING="hello world"
EXPOSE 8080
CMD ["cat", "/app/out.txt"]
"#;

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn seed_multi_stage_builds_and_exports_oci() {
    let case = Case::new(SEED);
    case.file("greeting.txt", "hello kiln\n");
    let out = case.path("out.tar");
    let tag = format!("{}/e2e/seed:1", registry());
    let run = case
        .build(&[
            "-o",
            &format!("type=oci,dest={}", out.display()),
            "-t",
            &tag,
        ])
        .expect_ok();
    assert!(
        !run.stderr.contains("unused-stage-ran") && !run.stderr.contains("RUN echo unused"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("identity mapping: subordinate ids"),
        "{}",
        run.stderr
    );

    let archive = format!("oci-archive:{}", out.display());
    let config = json(&tool("skopeo", &["inspect", "--config", &archive]));
    let c = &config["config"];
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["Cmd"], serde_json::json!(["cat", "/app/out.txt"]));
    assert!(c["Env"]
        .as_array()
        .expect("env")
        .contains(&serde_json::json!("GREETING=hello world")));
    assert!(c["ExposedPorts"].get("8080/tcp").is_some());
    let history: Vec<String> = config["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|h| h["created_by"].as_str().map(str::to_string))
        .collect();
    let ours: Vec<&str> = history
        .iter()
        .map(String::as_str)
        .filter(|h| !h.starts_with("umoci"))
        .collect();
    assert_eq!(
        ours,
        [
            "WORKDIR /app",
            "COPY /out.txt ./ # buildkit",
            "ENV GREETING=hello world",
            "EXPOSE [8080/tcp]",
            "CMD [\"cat\" \"/app/out.txt\"]"
        ]
    );
    let info = json(&tool("skopeo", &["inspect", &archive]));
    assert_eq!(info["Digest"].as_str(), Some(run.image_digest().as_str()));

    let rootfs = umoci_unpack(&case, &out, "1");
    assert_eq!(
        fs::read_to_string(rootfs.join("app/out.txt")).expect("out.txt"),
        "HELLO KILN\nbuilt-by-run\n"
    );
    assert!(rootfs.join("bin/busybox").is_file());

    // The owner set by RUN survives COPY --from into the exported layer.
    let layers = info["Layers"].as_array().expect("layers");
    let last = layers.last().and_then(|l| l.as_str()).expect("a layer");
    let blob = case.path("layout").join("blobs/sha256").join(&last[7..]);
    let listing = tool(
        "tar",
        &["-tvzf", blob.to_str().expect("utf8"), "--numeric-owner"],
    );
    assert!(
        listing
            .lines()
            .any(|l| l.contains("1234/50") && l.ends_with("app/out.txt")),
        "{listing}"
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn push_reports_the_digest_the_registry_serves_and_skips_existing_blobs() {
    let case = Case::new(
        "FROM REGISTRY/library/busybox:latest\nCOPY marker /marker\nRUN cat /marker > /copy\n",
    );
    let unique = format!("{:?}", std::time::SystemTime::now());
    case.file("marker", &unique);
    let repo = format!("{}/e2e/push-{}", registry(), std::process::id());
    let (t1, t2) = (format!("{repo}:v1"), format!("{repo}:v2"));
    let run = case.build(&["--push", "-t", &t1, "-t", &t2]).expect_ok();
    for t in [&t1, &t2] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{t}: digest: ")))
            .unwrap_or_else(|| panic!("no digest line for {t}: {}", run.stdout));
        let printed = line.split_whitespace().nth(2).expect("digest");
        let info = json(&tool(
            "skopeo",
            &["inspect", "--tls-verify=false", &format!("docker://{t}")],
        ));
        assert_eq!(info["Digest"].as_str(), Some(printed), "{t}");
        assert_eq!(printed, run.image_digest());
    }
    assert!(
        run.stderr.contains(": Pushed"),
        "new layers are uploaded: {}",
        run.stderr
    );
    let again = case.build(&["--push", "-t", &t1]).expect_ok();
    assert!(
        !again.stderr.contains(": Pushed"),
        "nothing is uploaded twice: {}",
        again.stderr
    );
    assert!(
        again.stderr.contains("Layer already exists"),
        "{}",
        again.stderr
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn failing_run_names_stage_step_and_exit_code() {
    let case = Case::new(
        "FROM REGISTRY/library/busybox:latest AS builder\nRUN echo preparing && echo something-broke >&2 && exit 3\nFROM builder\nRUN true\n",
    );
    let out = case.path("never.tar");
    let run = case.build(&["-o", &format!("type=oci,dest={}", out.display())]);
    assert!(!run.ok, "a failing RUN must fail the build");
    let last = run
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("ERROR:"))
        .expect("an ERROR line");
    assert!(last.contains("[builder 2/2] RUN echo preparing"), "{last}");
    assert!(
        last.contains("(line 2)") && last.contains("exit code: 3"),
        "{last}"
    );
    assert!(
        run.stderr.contains("something-broke"),
        "the last output is shown: {}",
        run.stderr
    );
    assert!(!out.exists(), "no output is written for a failed build");
    let leftovers: Vec<_> = fs::read_dir(case.dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(
        !leftovers
            .iter()
            .any(|n| n.to_string_lossy().contains(".tmp")),
        "{leftovers:?}"
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn second_build_is_all_cached_and_gives_the_same_digest() {
    let case = Case::new(SEED);
    case.file("greeting.txt", "cache me\n");
    let first = case.build(&[]).expect_ok();
    let second = case.build(&[]).expect_ok();
    assert_eq!(first.image_digest(), second.image_digest());
    // Every build step of the second run (FROM, WORKDIR, COPY, RUN) is CACHED.
    let steps: Vec<&str> = second
        .stderr
        .lines()
        .filter(|l| l.contains("] ") && !l.contains("[internal]"))
        .collect();
    assert_eq!(steps.len(), 7, "{}", second.stderr);
    let cached = second
        .stderr
        .lines()
        .filter(|l| l.ends_with(" CACHED"))
        .count();
    assert_eq!(cached, steps.len(), "{}", second.stderr);
    assert!(
        !second.stderr.lines().any(|l| l.contains(" DONE ")
            && !l.starts_with("#1 ")
            && steps
                .iter()
                .any(|s| s.split(' ').next() == l.split(' ').next())),
        "{}",
        second.stderr
    );
    // Changing an input re-runs only what depends on it.
    case.file("greeting.txt", "changed\n");
    let third = case.build(&[]).expect_ok();
    assert_ne!(third.image_digest(), first.image_digest());
    let done_steps: Vec<&str> = third
        .stderr
        .lines()
        .filter(|l| l.contains(" DONE "))
        .collect();
    assert!(third.stderr.contains("CACHED"), "{}", third.stderr);
    assert!(!done_steps.is_empty());
    // --no-cache runs the steps again.
    let fresh = case.build(&["--no-cache"]).expect_ok();
    assert!(
        fresh.step_ended("[builder 4/4] RUN", "DONE"),
        "{}",
        fresh.stderr
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn run_gets_image_env_workdir_user_and_a_sandbox() {
    let case = Case::new(
        r#"FROM REGISTRY/library/busybox:latest
ARG FLAVOUR=plain
ENV FOO=bar
WORKDIR /work
RUN echo "$FOO $FLAVOUR $(pwd) $(id -u)" > /work/root.txt \
 && test -r /proc/self/status && test -c /dev/null && test -e /etc/hosts \
 && test -c /dev/pts/ptmx && test -L /dev/ptmx \
 && echo "pid=$$ host=$(hostname)" > /work/sandbox.txt
USER nobody
RUN echo "$(id -u):$(id -g) $HOME" > /tmp/user.txt
RUN ["/bin/sh", "-c", "echo exec-form > /tmp/exec.txt"]
"#,
    );
    let out = case.path("out.tar");
    case.build(&[
        "--build-arg",
        "FLAVOUR=spicy",
        "-o",
        &format!("type=oci,dest={}", out.display()),
        "-t",
        "sandbox:1",
    ])
    .expect_ok();
    let rootfs = umoci_unpack(&case, &out, "1");
    assert_eq!(
        fs::read_to_string(rootfs.join("work/root.txt")).expect("root.txt"),
        "bar spicy /work 0\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("work/sandbox.txt")).expect("sandbox.txt"),
        "pid=1 host=kiln\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("tmp/user.txt")).expect("user.txt"),
        "65534:65534 /nonexistent\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("tmp/exec.txt")).expect("exec.txt"),
        "exec-form\n"
    );
    // The mount points kiln needed are not left in the layers.
    let config = json(&tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("oci-archive:{}", out.display()),
        ],
    ));
    assert!(
        !config["config"]["Env"].to_string().contains("FLAVOUR"),
        "build args stay out of the image"
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn context_symlinks_cannot_reach_outside_the_context() {
    let case = Case::new("FROM REGISTRY/library/busybox:latest\nCOPY leak/passwd /stolen\n");
    std::os::unix::fs::symlink("/etc", case.ctx().join("leak")).expect("symlink");
    let run = case.build(&[]);
    assert!(
        !run.ok,
        "a symlink to /etc must resolve inside the context, where there is no passwd"
    );
    assert!(run.stderr.contains("not found"), "{}", run.stderr);
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn dockerfile_errors_point_at_the_line() {
    let case = Case::new("FROM REGISTRY/library/busybox:latest\nCOPY --chmod=9z a b\n");
    let run = case.build(&[]);
    run.expect_failure("Dockerfile:2:");
    assert!(
        run.stderr.contains("COPY --chmod=9z a b"),
        "the offending line is shown: {}",
        run.stderr
    );
    let case = Case::new("FROM REGISTRY/library/no-such-image:1\n");
    let run = case.build(&[]);
    run.expect_failure("Dockerfile:1: failed to resolve");
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn dockerignore_hides_files_from_copy_with_moby_semantics() {
    let case = Case::new("FROM REGISTRY/library/busybox:latest\nCOPY . /ctx\n");
    case.file(
        ".dockerignore",
        "# build noise\n**/*.log\nsecrets\n!secrets/public.txt\n",
    );
    case.file("app.txt", "app");
    case.file("debug.log", "noise");
    case.file("sub/deep/trace.log", "noise");
    case.file("sub/deep/keep.txt", "keep");
    case.file("secrets/private.key", "secret");
    case.file("secrets/public.txt", "public");
    let out = case.path("out.tar");
    case.build(&[
        "-o",
        &format!("type=oci,dest={}", out.display()),
        "-t",
        "ignore:1",
    ])
    .expect_ok();
    let rootfs = umoci_unpack(&case, &out, "1");
    for kept in [
        "ctx/app.txt",
        "ctx/sub/deep/keep.txt",
        "ctx/secrets/public.txt",
        "ctx/Dockerfile",
    ] {
        assert!(rootfs.join(kept).is_file(), "{kept} is copied");
    }
    for gone in [
        "ctx/debug.log",
        "ctx/sub/deep/trace.log",
        "ctx/secrets/private.key",
    ] {
        assert!(!rootfs.join(gone).exists(), "{gone} is ignored");
    }

    // An ignored file cannot be named either.
    case.file(
        "Dockerfile",
        &format!(
            "FROM {}/library/busybox:latest\nCOPY debug.log /x\n",
            registry()
        ),
    );
    let run = case.build(&[]);
    assert!(
        !run.ok && run.stderr.contains("\"/debug.log\": not found"),
        "{}",
        run.stderr
    );

    // <Dockerfile>.dockerignore next to the Dockerfile wins over the context's.
    case.file(
        "custom.Dockerfile",
        &format!(
            "FROM {}/library/busybox:latest\nCOPY debug.log app.txt /x/\n",
            registry()
        ),
    );
    case.file("custom.Dockerfile.dockerignore", "app.txt\n");
    let custom = case.ctx().join("custom.Dockerfile");
    let run = case.build(&["-f", custom.to_str().expect("utf8")]);
    assert!(
        !run.ok && run.stderr.contains("\"/app.txt\": not found"),
        "{}",
        run.stderr
    );
}

/// The raw config of the image in `archive` (`skopeo inspect --config` without
/// `--raw` re-encodes it with the OCI fields only, dropping Healthcheck, OnBuild and
/// Shell), and its history `created_by` rows that kiln wrote.
fn own_history(archive: &str) -> (serde_json::Value, Vec<String>) {
    let config = image_config(archive);
    let history = config["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| h["comment"] == "buildkit.dockerfile.v0")
        .filter_map(|h| h["created_by"].as_str().map(str::to_string))
        .collect();
    (config, history)
}

const HEREDOCS: &str = r#"# syntax=docker/dockerfile:1
FROM REGISTRY/library/busybox:latest
SHELL ["/bin/sh", "-ec"]
ARG WHO=world
RUN <<EOF
echo "hello $WHO" > /greeting
EOF
RUN <<-EOF
	echo tabs-stripped > /chomped
	EOF
RUN <<EOF
#!/bin/sh
echo "script via $0" > /script
EOF
RUN cat <<A > /a && cat <<'B' > /b
x $WHO
A
y $WHO
B
COPY <<EOF <<'RAW' /etc/app/
who=$WHO
EOF
raw=$WHO
RAW
COPY --exclude=*.md --exclude=skip src/ /src/
ADD bundle.tar.gz /unpacked/
RUN --mount=type=tmpfs,target=/scratch \
    --mount=type=cache,target=/cache,id=e2e \
    --mount=type=bind,source=src,target=/ctx \
    --mount=type=secret,id=token,required \
    --mount=type=secret,id=token,env=TOKEN \
    --network=none \
    sh -c 'echo x > /scratch/f && echo run >> /cache/runs && cat /ctx/keep.txt > /from-bind \
      && test "$TOKEN" = "$(cat /run/secrets/token)" \
      && cat /run/secrets/token | wc -c > /secret-len && grep -c : /proc/net/dev > /netdevs \
      && ls /scratch /ctx > /listing'
"#;

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn heredocs_shell_copy_flags_add_tar_and_run_mounts() {
    let case = Case::new(HEREDOCS);
    case.file("src/keep.txt", "kept\n");
    case.file("src/README.md", "excluded\n");
    case.file("src/skip/x", "excluded\n");
    // A local tar archive for ADD, made with tar(1).
    fs::create_dir_all(case.path("tarsrc/dir")).expect("mkdir");
    fs::write(case.path("tarsrc/dir/inside.txt"), "from the archive\n").expect("write");
    tool(
        "tar",
        &[
            "-czf",
            case.ctx().join("bundle.tar.gz").to_str().expect("utf8"),
            "-C",
            case.path("tarsrc").to_str().expect("utf8"),
            "dir",
        ],
    );
    let secret = case.path("token.txt");
    fs::write(&secret, "s3cret-value").expect("write");
    let out = case.path("out.tar");
    let secret_arg = format!("id=token,src={}", secret.display());
    let run = case
        .build(&[
            "--secret",
            &secret_arg,
            "-o",
            &format!("type=oci,dest={}", out.display()),
            "-t",
            "e2e/heredocs:1",
        ])
        .expect_ok();
    assert!(
        run.stderr.contains("RUN <<EOF (echo \"hello $WHO\""),
        "{}",
        run.stderr
    );

    let rootfs = umoci_unpack(&case, &out, "1");
    let read = |p: &str| fs::read_to_string(rootfs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("greeting"), "hello world\n");
    assert_eq!(read("chomped"), "tabs-stripped\n");
    assert_eq!(read("script"), "script via /dev/pipes/EOF\n");
    assert_eq!(read("a"), "x world\n");
    assert_eq!(read("b"), "y $WHO\n");
    assert_eq!(read("etc/app/EOF"), "who=world\n");
    assert_eq!(read("etc/app/RAW"), "raw=$WHO\n");
    assert_eq!(read("src/keep.txt"), "kept\n");
    assert!(!rootfs.join("src/README.md").exists() && !rootfs.join("src/skip").exists());
    assert_eq!(read("unpacked/dir/inside.txt"), "from the archive\n");
    assert_eq!(read("from-bind"), "kept\n");
    assert_eq!(read("secret-len").trim(), "12");
    // --network=none: /proc/net/dev lists only the loopback device.
    assert_eq!(read("netdevs"), "1\n");
    assert_eq!(
        read("listing"),
        "/ctx:\nREADME.md\nkeep.txt\nskip\n\n/scratch:\nf\n"
    );
    // Mounts leave nothing behind in the image, and the secret is in no blob.
    for p in ["scratch", "cache", "ctx", "run/secrets", "dev/pipes"] {
        assert!(!rootfs.join(p).exists(), "{p} leaked into the image");
    }
    let blobs = case.path("layout/blobs/sha256");
    for e in fs::read_dir(&blobs).expect("blobs") {
        let p = e.expect("entry").path();
        let shown = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "gzip -dc '{0}' 2>/dev/null || cat '{0}'",
                p.display()
            ))
            .output()
            .expect("read blob");
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(
            !text.contains("s3cret-value"),
            "the secret is in blob {}",
            p.display()
        );
    }
    let (config, history) = own_history(&format!("oci-archive:{}", out.display()));
    assert_eq!(
        config["config"]["Shell"],
        serde_json::json!(["/bin/sh", "-ec"])
    );
    assert!(
        history.contains(&"COPY <<EOF <<RAW /etc/app/ # buildkit".to_string()),
        "{history:?}"
    );
    assert!(
        history.contains(&"ADD bundle.tar.gz /unpacked/ # buildkit".to_string()),
        "{history:?}"
    );

    // The cache mount persists across builds: a rebuild without the layer cache runs
    // the step again and finds the first run's file.
    let cached = Case::new(
        "FROM REGISTRY/library/busybox:latest\nRUN --mount=type=cache,target=/c,id=e2e-count sh -c 'echo run >> /c/n; wc -l < /c/n > /count'\n",
    );
    let out2 = cached.path("out.tar");
    let dest = format!("type=oci,dest={}", out2.display());
    cached
        .build(&["-t", "e2e/cache:1", "-o", &dest])
        .expect_ok();
    cached
        .build(&["--no-cache", "-t", "e2e/cache:1", "-o", &dest])
        .expect_ok();
    let rootfs = umoci_unpack(&cached, &out2, "1");
    assert_eq!(
        fs::read_to_string(rootfs.join("count"))
            .expect("count")
            .trim(),
        "2"
    );

    // A required secret that was not given fails before the step runs.
    let missing = Case::new(
        "FROM REGISTRY/library/busybox:latest\nRUN --mount=type=secret,id=nope,required true\n",
    );
    let run = missing.build(&[]);
    run.expect_failure("secret nope is required but was not provided");
}

const ONBUILD_PARENT: &str = r#"FROM REGISTRY/library/busybox:latest
ONBUILD RUN echo "trigger ran in the child as $(id -u)" > /tmp/triggered
ONBUILD ENV FROM_TRIGGER=yes
HEALTHCHECK --interval=5m --timeout=3s --start-period=1s --retries=3 CMD wget -q -O- http://localhost/ || exit 1
STOPSIGNAL SIGQUIT
VOLUME ["/data"]
LABEL org.example.kind=parent "with space"="a b"
EXPOSE 80 53/udp 9000-9001
ENTRYPOINT ["/bin/sh", "-c"]
CMD echo from-cmd
USER nobody
"#;

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn onbuild_healthcheck_and_config_like_buildx() {
    let parent = Case::new(ONBUILD_PARENT);
    let tag = format!("{}/e2e/onbuild-parent:1", registry());
    let out = parent.path("out.tar");
    parent
        .build(&[
            "-t",
            &tag,
            "--push",
            "-o",
            &format!("type=oci,dest={}", out.display()),
        ])
        .expect_ok();
    let (config, history) = own_history(&format!("oci-archive:{}", out.display()));
    let c = &config["config"];
    assert_eq!(
        c["OnBuild"],
        serde_json::json!([
            "RUN echo \"trigger ran in the child as $(id -u)\" > /tmp/triggered",
            "ENV FROM_TRIGGER=yes"
        ])
    );
    assert_eq!(
        c["Healthcheck"],
        serde_json::json!({
            "Test": ["CMD-SHELL", "wget -q -O- http://localhost/ || exit 1"],
            "Interval": 300_000_000_000u64, "Timeout": 3_000_000_000u64,
            "StartPeriod": 1_000_000_000u64, "Retries": 3
        })
    );
    assert_eq!(c["StopSignal"], "SIGQUIT");
    assert!(c["Volumes"].get("/data").is_some());
    assert_eq!(c["Labels"]["with space"], "a b");
    let ports: Vec<&String> = c["ExposedPorts"]
        .as_object()
        .expect("ports")
        .keys()
        .collect();
    assert_eq!(ports, ["53/udp", "80/tcp", "9000/tcp", "9001/tcp"]);
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(
        c["Cmd"],
        serde_json::json!(["/bin/sh", "-c", "echo from-cmd"])
    );
    assert_eq!(c["User"], "nobody");
    assert_eq!(
        history,
        [
            "HEALTHCHECK {Test:[CMD-SHELL wget -q -O- http://localhost/ || exit 1] Interval:5m0s Timeout:3s StartPeriod:1s StartInterval:0s Retries:3}",
            "STOPSIGNAL SIGQUIT",
            "VOLUME [/data]",
            "LABEL org.example.kind=parent with space=a b",
            "EXPOSE [53/udp 80/tcp 9000/tcp 9001/tcp]",
            "ENTRYPOINT [\"/bin/sh\" \"-c\"]",
            "CMD [\"/bin/sh\" \"-c\" \"echo from-cmd\"]",
            "USER nobody",
        ]
    );

    // A child built FROM the pushed image runs its triggers first (as the parent's
    // USER, like Docker) and does not pass
    // them on.
    let child = Case::new(&format!(
        "FROM {tag}\nUSER root\nRUN echo \"child: $FROM_TRIGGER\" > /child\n"
    ));
    let out = child.path("out.tar");
    let run = child
        .build(&[
            "-t",
            "e2e/onbuild-child:1",
            "-o",
            &format!("type=oci,dest={}", out.display()),
        ])
        .expect_ok();
    assert!(
        run.stderr
            .contains("RUN echo \"trigger ran in the child as"),
        "{}",
        run.stderr
    );
    let rootfs = umoci_unpack(&child, &out, "1");
    assert_eq!(
        fs::read_to_string(rootfs.join("tmp/triggered")).expect("triggered"),
        "trigger ran in the child as 65534\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("child")).expect("child"),
        "child: yes\n"
    );
    let (config, _) = own_history(&format!("oci-archive:{}", out.display()));
    assert!(config["config"].get("OnBuild").is_none(), "{config}");
}

const STAGES: &str = r#"ARG BASE=REGISTRY/library/busybox
ARG TAG=latest
FROM ${BASE}:${TAG} AS tools
ARG TAG
ARG FLAVOR=plain
RUN echo "tools $TAG $FLAVOR" > /tools

FROM tools AS app
ARG EXTRA=${FLAVOR}-extra
RUN echo "app $TAG $FLAVOR $EXTRA" > /app

FROM ${BASE}:${TAG} AS never
RUN echo never-ran && exit 9

FROM ${BASE}:${TAG}
COPY --from=app /app /tools /
"#;

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn arg_scoping_across_stages_target_pruning_and_graph_printing() {
    let case = Case::new(STAGES);
    let out = case.path("out.tar");
    let run = case
        .build(&[
            "--build-arg",
            "FLAVOR=spicy",
            "--build-arg",
            "UNUSED=1",
            "--target",
            "APP",
            "-t",
            "e2e/stages:1",
            "-o",
            &format!("type=oci,dest={}", out.display()),
        ])
        .expect_ok();
    assert!(!run.stderr.contains("never-ran"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("[Warning] One or more build-args [UNUSED] were not consumed"),
        "{}",
        run.stderr
    );
    let rootfs = umoci_unpack(&case, &out, "1");
    assert_eq!(
        fs::read_to_string(rootfs.join("tools")).expect("tools"),
        "tools latest spicy\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("app")).expect("app"),
        "app latest spicy spicy-extra\n"
    );
    let (_, history) = own_history(&format!("oci-archive:{}", out.display()));
    assert_eq!(
        history,
        [
            "ARG TAG=latest",
            "ARG FLAVOR=spicy",
            "RUN |2 TAG=latest FLAVOR=spicy /bin/sh -c echo \"tools $TAG $FLAVOR\" > /tools # buildkit",
            "ARG EXTRA=spicy-extra",
            "RUN |3 TAG=latest FLAVOR=spicy EXTRA=spicy-extra /bin/sh -c echo \"app $TAG $FLAVOR $EXTRA\" > /app # buildkit",
        ]
    );

    // --print shows the compiled graph without running it.
    let g = case.build(&["--print", "graph"]).expect_ok();
    let graph = json(&g.stdout);
    let names: Vec<&str> = graph["vertices"]
        .as_array()
        .expect("vertices")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.contains("COPY --from=app /app /tools /")),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("never-ran")), "{names:?}");
    assert!(
        !g.stderr.contains("RUN echo") && !g.stderr.contains("exporting"),
        "{}",
        g.stderr
    );
    let dot = case
        .build(&["--print", "graph-dot", "--target", "app"])
        .expect_ok();
    assert!(
        dot.stdout.starts_with("digraph kiln {") && dot.stdout.contains(" -> "),
        "{}",
        dot.stdout
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn a_run_that_changes_nothing_leaves_an_empty_layer_as_in_buildkit() {
    // The mount points kiln makes (/etc/hosts in a base without one, the mount targets
    // below /var and /run) go again, and so do the directories copied up for them.
    let case = Case::new(
        "FROM REGISTRY/library/busybox:latest\n\
         RUN --mount=type=cache,target=/var/cache/x --mount=type=tmpfs,target=/run/t true\n",
    );
    let archive = case.path("out.tar");
    case.build(&["-o", &format!("type=oci,dest={}", archive.display())])
        .expect_ok();
    let layout = case.path("layout");
    extract_archive(&archive, &layout);
    let blob = |d: &str| layout.join("blobs/sha256").join(&d[7..]);
    let index = json(&fs::read_to_string(layout.join("index.json")).expect("index"));
    let manifest = json(
        &fs::read_to_string(blob(
            index["manifests"][0]["digest"].as_str().expect("digest"),
        ))
        .expect("manifest"),
    );
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(
        layers.len(),
        2,
        "the RUN has a layer of its own: {manifest}"
    );
    let top = blob(layers[1]["digest"].as_str().expect("digest"));
    let listing = tool("tar", &["-tzf", top.to_str().expect("utf8")]);
    assert_eq!(listing, "", "the RUN's layer holds nothing");
}
