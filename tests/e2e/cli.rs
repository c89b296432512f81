//! buildx's command line: flags CI scripts pass, `-q`, completions, the usage line.

use super::{kiln_bin, Case};
use std::fs;
use std::process::Command;

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn quiet_prints_the_image_id_alone() {
    let case = Case::new("FROM REGISTRY/library/busybox:latest\nRUN echo quiet > /q\n");
    let iid = case.path("iid");
    let archive = case.path("out.tar");
    let run = case
        .build(&[
            "-q",
            "--iidfile",
            iid.to_str().expect("utf8"),
            "-o",
            &format!("type=oci,dest={}", archive.display()),
        ])
        .expect_ok();
    let id = fs::read_to_string(&iid).expect("iidfile");
    assert_eq!(run.stdout, format!("{id}\n"));
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    assert!(
        !run.stderr.contains("RUN echo"),
        "no progress: {}",
        run.stderr
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn attestations_turned_off_are_accepted_and_asked_for_are_refused() {
    let case = Case::new("FROM REGISTRY/library/busybox:latest\n");
    case.build(&[
        "--provenance=false",
        "--sbom=false",
        "--attest",
        "type=provenance,disabled=true",
        "--attest",
        "type=sbom,disabled=true",
    ])
    .expect_ok();
    for (args, why) in [
        (
            &["--provenance=mode=max"][..],
            "--provenance=mode=max: kiln does not make attestations yet",
        ),
        (
            &["--sbom=true"][..],
            "--sbom=true: kiln does not make attestations yet",
        ),
        (
            &["--attest", "type=sbom"][..],
            "kiln does not make sbom attestations yet",
        ),
        (
            &["--attest", "type=other,disabled=true"][..],
            "expected type=provenance or type=sbom",
        ),
    ] {
        let run = case.build(args);
        assert!(!run.ok, "{args:?}");
        assert!(run.stderr.contains(why), "{args:?}: {}", run.stderr);
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn completions_parse_and_the_usage_line_says_kiln() {
    let out = Command::new(kiln_bin())
        .args(["completion", "bash"])
        .output()
        .expect("kiln completion");
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        script.contains("_kiln()") && script.contains("--cache-from"),
        "{script}"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("kiln.bash");
    fs::write(&file, &script).expect("write");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .status()
        .expect("bash");
    assert!(syntax.success(), "bash -n");
    // Under another file name, the usage still names kiln.
    let renamed = dir.path().join("kiln-1.2-x86_64");
    std::os::unix::fs::symlink(kiln_bin(), &renamed).expect("symlink");
    let help = Command::new(&renamed).arg("--help").output().expect("help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Usage: kiln [OPTIONS] <COMMAND>"), "{text}");
    // Man pages from the same definitions: kiln's own, one per subcommand.
    let page = Command::new(kiln_bin())
        .args(["man", "build"])
        .output()
        .expect("man");
    assert!(page.status.success());
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(
        page.contains(".TH kiln-build 1")
            && page.contains("\\-\\-load")
            && page.contains(".SH OPTIONS"),
        "{page}"
    );
    let mandir = dir.path().join("man1");
    let out = Command::new(kiln_bin())
        .args(["man", "--dir"])
        .arg(&mandir)
        .output()
        .expect("man --dir");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["kiln.1", "kiln-build.1", "kiln-prune.1", "kiln-login.1"] {
        let text = fs::read_to_string(mandir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            text.starts_with(".ie") && text.contains(".SH NAME"),
            "{name}: {text}"
        );
    }
}

/// `kiln build` with PATH set to `path` (and nothing else changed).
fn build_with_path(case: &Case, path: &std::path::Path, args: &[&str]) -> super::Run {
    let ctx = case.ctx();
    let mut all = vec!["build", "--progress", "plain"];
    all.extend_from_slice(args);
    all.push(ctx.to_str().expect("utf8"));
    super::store::kiln(case, &all, &[("PATH", path.to_str().expect("utf8"))])
}

/// A directory for PATH with what kiln itself runs (newuidmap, newgidmap) and the
/// executable `scripts` (name, text).
fn path_dir(case: &Case, dir: &str, scripts: &[(&str, String)]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = case.path(dir);
    fs::create_dir_all(&bin).expect("mkdir");
    for tool in ["newuidmap", "newgidmap"] {
        if let Ok(p) = which(tool) {
            std::os::unix::fs::symlink(p, bin.join(tool)).expect("symlink");
        }
    }
    for (name, text) in scripts {
        let p = bin.join(name);
        fs::write(&p, text).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    bin
}

/// [`path_dir`] with, as `names`, a fake engine that records the archive its `load`
/// reads into `record`.
fn fake_engines(
    case: &Case,
    dir: &str,
    names: &[&str],
    record: &std::path::Path,
) -> std::path::PathBuf {
    let scripts: Vec<(&str, String)> = names
        .iter()
        .map(|name| {
            (
                *name,
                format!(
                    "#!/bin/sh\n[ \"$1\" = load ] || {{ echo \"unexpected: $*\" >&2; exit 2; }}\n/bin/cat > {}\necho \"Loaded image: by {name}\"\n",
                    record.display()
                ),
            )
        })
        .collect();
    path_dir(case, dir, &scripts)
}

fn which(tool: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn load_streams_a_docker_archive_into_docker_or_podman() {
    let case = Case::new("FROM REGISTRY/library/busybox:latest\nRUN echo loaded > /l\n");
    let record = case.path("loaded.tar");
    // docker first when both are there.
    let both = fake_engines(&case, "both", &["docker", "podman"], &record);
    let run = build_with_path(&case, &both, &["--load", "-t", "e2e/loaded:v1"]).expect_ok();
    assert!(
        run.stderr.contains("importing to docker")
            && run.stderr.contains("Loaded image: by docker"),
        "{}",
        run.stderr
    );
    // What docker load read is a Docker archive of the image, tagged as asked.
    let reference = format!("docker-archive:{}", record.display());
    let inspect = super::json(&super::tool("skopeo", &["inspect", &reference]));
    assert_eq!(
        inspect["Layers"].as_array().map(Vec::len),
        Some(2),
        "{inspect}"
    );
    let manifest = super::json(&super::tool(
        "tar",
        &["-xOf", record.to_str().expect("utf8"), "manifest.json"],
    ));
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["e2e/loaded:v1"]),
        "{manifest}"
    );
    let cfg = super::image_config(&reference);
    assert_eq!(
        cfg["rootfs"]["diff_ids"].as_array().map(Vec::len),
        Some(2),
        "{cfg}"
    );
    fs::remove_file(&record).expect("rm");
    // podman when there is no docker; `-o type=docker` without dest loads too.
    let podman = fake_engines(&case, "podman-only", &["podman"], &record);
    let run = build_with_path(
        &case,
        &podman,
        &["-o", "type=docker", "-t", "e2e/loaded:v2"],
    )
    .expect_ok();
    assert!(
        run.stderr.contains("Loaded image: by podman"),
        "{}",
        run.stderr
    );
    super::tool(
        "skopeo",
        &["inspect", &format!("docker-archive:{}", record.display())],
    );
    // Neither: a clear error naming both.
    let none = fake_engines(&case, "no-engine", &[], &record);
    let run = build_with_path(&case, &none, &["--load"]);
    run.expect_failure("--load needs docker or podman on PATH");
    // An engine that fails: its message, and a failed build.
    let broken = path_dir(
        &case,
        "broken",
        &[(
            "docker",
            "#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n".into(),
        )],
    );
    let run = build_with_path(&case, &broken, &["--load"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("docker load: it exited with")
            && run.stderr.contains("Cannot connect to the Docker daemon"),
        "{}",
        run.stderr
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn network_add_host_shm_size_and_ulimit_reach_every_run() {
    let reg = super::registry();
    let case = Case::new(&format!(
        "FROM REGISTRY/library/busybox:latest\n\
         RUN (wget -q -O- http://{reg}/v2/ >/dev/null && echo net=yes || echo net=no) > /net\n\
         RUN grep -v localhost /etc/hosts > /hosts; ulimit -Sn > /nofile; ulimit -Hn >> /nofile; \
             df -k /dev/shm | tail -1 | awk '{{print $2}}' > /shm\n"
    ));
    let out = case.path("out");
    let dest = format!("type=local,dest={}", out.display());
    let read = |f: &str| fs::read_to_string(out.join(f)).expect("read");
    let run = case
        .build(&[
            "--network",
            "none",
            "--add-host",
            "db.local:10.1.2.3",
            "--add-host",
            "v6=[::2]",
            "--shm-size",
            "8m",
            "--ulimit",
            "nofile=512:1000",
            "-o",
            &dest,
        ])
        .expect_ok();
    assert_eq!(read("net"), "net=no\n", "{}", run.stderr);
    assert_eq!(read("hosts"), "10.1.2.3\tdb.local\n::2\tv6\n");
    assert_eq!(read("nofile"), "512\n1000\n");
    assert_eq!(read("shm"), "8192\n");
    // The settings are part of the steps' keys: without them nothing is cached, and
    // the default network reaches the registry.
    let run = case.build(&["-o", &dest]).expect_ok();
    assert!(!run.step_ended("RUN (wget", "CACHED"), "{}", run.stderr);
    assert_eq!(read("net"), "net=yes\n");
    assert_eq!(read("hosts"), "");
    // A hard limit above kiln's own cannot be had rootless: refused by name.
    let run = case.build(&["--ulimit", "nofile=64:99999999999"]);
    run.expect_failure("--ulimit nofile=64:99999999999: the hard limit kiln runs under is");
    for (args, why) in [
        (
            &["--ulimit", "files=1"][..],
            "invalid ulimit type \"files\"",
        ),
        (&["--add-host", "db"][..], "expected NAME:IP"),
        (&["--shm-size", "lots"][..], "expected a size"),
        (
            &["--network", "bridge"][..],
            "expected default, none or host",
        ),
        (
            &["--allow", "security.insecure"][..],
            "cannot grant RUN --security=insecure",
        ),
        (&["--cgroup-parent", "x.slice"][..], "no cgroup manager"),
    ] {
        let run = case.build(args);
        assert!(!run.ok, "{args:?}");
        assert!(run.stderr.contains(why), "{args:?}: {}", run.stderr);
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn run_network_host_needs_the_entitlement_as_in_buildkit() {
    let case =
        Case::new("FROM REGISTRY/library/busybox:latest\nRUN --network=host echo host > /h\n");
    let run = case.build(&[]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("Dockerfile:2")
            && run
                .stderr
                .contains("network.host is not allowed (pass --allow network.host)"),
        "{}",
        run.stderr
    );
    case.build(&["--allow", "network.host"]).expect_ok();
    // `--network host` asks for it, as in buildx.
    case.build(&["--network", "host"]).expect_ok();
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn pull_asks_the_registry_again_where_the_store_pinned_a_tag() {
    let reg = super::registry();
    let name = format!(
        "{reg}/e2e/pull-{}-{}:t",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let base = Case::new("FROM REGISTRY/library/busybox:latest\nARG V\nRUN echo $V > /v\n");
    let push = |v: &str| {
        base.build(&["--push", "-t", &name, "--build-arg", &format!("V={v}")])
            .expect_ok()
    };
    push("one");
    let case = Case::new(&format!("FROM {name}\nRUN cat /v > /seen\n"));
    let out = case.path("out");
    let dest = format!("type=local,dest={}", out.display());
    let seen = || fs::read_to_string(out.join("seen")).expect("seen");
    case.build(&["-o", &dest]).expect_ok();
    assert_eq!(seen(), "one\n");
    push("two");
    // The store pinned the tag: a build without --pull keeps what it had.
    let run = case.build(&["-o", &dest]).expect_ok();
    assert!(
        run.stderr
            .contains("as pinned in the store (--pull asks the registry again)"),
        "{}",
        run.stderr
    );
    assert_eq!(seen(), "one\n");
    // --pull resolves the tag again, and the pin follows.
    let run = case.build(&["--pull", "-o", &dest]).expect_ok();
    assert!(
        !run.stderr.contains("as pinned in the store"),
        "{}",
        run.stderr
    );
    assert_eq!(seen(), "two\n");
    case.build(&["-o", &dest]).expect_ok();
    assert_eq!(seen(), "two\n");
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn annotations_no_cache_filter_builder_and_debug() {
    let case = Case::new(
        "FROM REGISTRY/library/busybox:latest AS deps\nRUN echo deps > /d\n\
         FROM REGISTRY/library/busybox:latest\nCOPY --from=deps /d /d\nRUN echo app > /a\n",
    );
    let archive = case.path("out.tar");
    let dest = format!("type=oci,dest={}", archive.display());
    case.build(&[
        "--platform",
        "linux/amd64",
        "--annotation",
        "org.opencontainers.image.title=kiln-e2e",
        "--annotation",
        "index,manifest-descriptor:org.example.both=yes",
        "-o",
        &dest,
    ])
    .expect_ok();
    let layout = case.path("layout");
    super::extract_archive(&archive, &layout);
    let index = super::json(&fs::read_to_string(layout.join("index.json")).expect("index"));
    assert_eq!(index["annotations"]["org.example.both"], "yes", "{index}");
    let desc = &index["manifests"][0];
    assert_eq!(desc["annotations"]["org.example.both"], "yes", "{index}");
    let digest = desc["digest"].as_str().expect("digest");
    let manifest = super::json(
        &fs::read_to_string(layout.join("blobs/sha256").join(&digest[7..])).expect("manifest"),
    );
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.title"], "kiln-e2e",
        "{manifest}"
    );
    assert!(
        manifest["annotations"].get("org.example.both").is_none(),
        "{manifest}"
    );

    // --no-cache-filter: the stage named runs again, the others come from the cache.
    let run = case
        .build(&["--no-cache-filter", "deps", "--builder", "ci-builder"])
        .expect_ok();
    assert!(
        !run.step_ended("[deps 2/2] RUN echo deps", "CACHED"),
        "{}",
        run.stderr
    );
    assert!(
        run.step_ended("[stage-1 3/3] RUN echo app", "CACHED"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("builder \"ci-builder\": kiln builds in this process"),
        "{}",
        run.stderr
    );
    // -D: the debug log, with each step's cache key.
    let run = case.build(&["-D"]).expect_ok();
    assert!(
        run.stderr.contains("DEBUG") && run.stderr.contains("RUN echo app > /a: cache key "),
        "{}",
        run.stderr
    );
    let run = case.build(&[]).expect_ok();
    assert!(
        run.step_ended("[deps 2/2] RUN echo deps", "CACHED"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("DEBUG"), "{}", run.stderr);
}

/// A tmux server of the test's own, for driving kiln on a terminal.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cols: u16, rows: u16, command: &str) -> Tmux {
        let socket = format!(
            "kiln-e2e-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let t = Tmux { socket };
        let ok = Command::new("tmux")
            .args([
                "-L",
                &t.socket,
                "new-session",
                "-d",
                "-x",
                &cols.to_string(),
                "-y",
                &rows.to_string(),
            ])
            .arg(command)
            .status()
            .expect("tmux (apt install tmux)");
        assert!(ok.success(), "tmux new-session");
        t
    }

    /// The pane's text, lines without trailing blanks.
    fn screen(&self) -> Vec<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect()
    }

    /// The screen once `pred` holds (within 60 s).
    fn wait_for(&self, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                std::time::Instant::now() < until,
                "timed out waiting for {what}; screen:\n{}",
                s.join("\n")
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn the_tty_view_is_laid_out_as_buildx_s() {
    let long = "x".repeat(150);
    let case = Case::new(&format!(
        "FROM REGISTRY/library/busybox:latest\n\
         RUN for i in 1 2 3 4 5 6 7 8 9; do echo output-line-$i; sleep 0.4; done\n\
         RUN echo {long} > /long\n"
    ));
    let done = case.path("exit-code");
    let command = format!(
        "{} build --root {} -t e2e/tty {} ; echo $? > {}; sleep 600",
        kiln_bin().display(),
        case.path("store").display(),
        case.ctx().display(),
        done.display()
    );
    let tmux = Tmux::start(80, 30, &command);
    // While the step runs: the header, the step, and its last lines of output under it.
    let live = tmux.wait_for("the running step's output", |s| {
        s.iter().any(|l| l == " => => # output-line-3")
    });
    let header = live
        .iter()
        .find(|l| l.starts_with("[+] Building "))
        .unwrap_or_else(|| panic!("no header:\n{}", live.join("\n")));
    assert!(!header.contains("FINISHED"), "{header}");
    let running = live
        .iter()
        .find(|l| l.starts_with(" => [2/3] RUN for i in"))
        .unwrap_or_else(|| panic!("no running step:\n{}", live.join("\n")));
    // Cut to the width, its time still at the end.
    assert!(running.len() <= 80 && running.ends_with('s'), "{running:?}");
    assert!(
        live.iter().filter(|l| l.starts_with(" => => # ")).count() <= 6,
        "{}",
        live.join("\n")
    );
    // The end: FINISHED, every step on one line, the image line after the steps.
    let end = tmux.wait_for("the build to finish", |_| done.exists());
    let end = if end.iter().any(|l| l.contains("FINISHED")) {
        end
    } else {
        tmux.screen()
    };
    assert_eq!(fs::read_to_string(&done).expect("exit code").trim(), "0");
    let at = |p: &dyn Fn(&str) -> bool| end.iter().position(|l| p(l));
    let header = at(&|l| {
        // `(N/N) FINISHED`: every step counted has ended.
        let counts = l
            .strip_suffix(") FINISHED")
            .and_then(|l| l.rsplit_once('('))
            .and_then(|(_, c)| c.split_once('/'));
        l.starts_with("[+] Building ") && counts.is_some_and(|(a, b)| a == b)
    })
    .unwrap_or_else(|| panic!("no FINISHED header:\n{}", end.join("\n")));
    let long_line = at(&|l| l.starts_with(" => [3/3] RUN echo xxxx"))
        .unwrap_or_else(|| panic!("no long step:\n{}", end.join("\n")));
    assert!(
        end[long_line].len() <= 80 && end[long_line].ends_with('s'),
        "{}",
        end[long_line]
    );
    let image = at(&|l| l.starts_with("image sha256:"))
        .unwrap_or_else(|| panic!("no image line:\n{}", end.join("\n")));
    assert!(
        header < long_line && long_line < image,
        "{}",
        end.join("\n")
    );
    assert!(
        !end.iter().any(|l| l.starts_with(" => => # ")),
        "{}",
        end.join("\n")
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn progress_rawjson_is_buildkit_s_solve_status_and_tty_needs_a_terminal() {
    let case = Case::new("FROM REGISTRY/library/busybox:latest\nRUN echo hello-json\nRUN false\n");
    let run = case.build(&["--progress", "tty"]);
    run.expect_failure("--progress tty: stderr is not a terminal");
    // Case::build passes --progress plain first; the later flag wins.
    let run = case.build(&["--progress", "rawjson"]);
    assert!(!run.ok);
    let mut names = std::collections::HashMap::new();
    let (mut logs, mut errors) = (Vec::new(), Vec::new());
    for line in run.stderr.lines().filter(|l| l.starts_with('{')) {
        let v = super::json(line);
        for x in v["vertexes"].as_array().into_iter().flatten() {
            let d = x["digest"].as_str().expect("digest").to_string();
            assert!(d.starts_with("sha256:") && d.len() == 71, "{x}");
            assert!(x["started"].is_string(), "{x}");
            names.insert(d, x["name"].as_str().expect("name").to_string());
            if let Some(e) = x["error"].as_str() {
                errors.push((x["name"].as_str().unwrap_or("").to_string(), e.to_string()));
            }
        }
        for l in v["logs"].as_array().into_iter().flatten() {
            use base64::Engine as _;
            let data = base64::engine::general_purpose::STANDARD
                .decode(l["data"].as_str().expect("data"))
                .expect("base64");
            let name = names.get(l["vertex"].as_str().expect("vertex")).cloned();
            logs.push((name, String::from_utf8_lossy(&data).to_string()));
        }
    }
    assert!(
        logs.contains(&(
            Some("[2/3] RUN echo hello-json".into()),
            "hello-json\n".into()
        )),
        "{logs:?}\n{}",
        run.stderr
    );
    assert!(
        errors.iter().any(|(n, _)| n == "[3/3] RUN false"),
        "{errors:?}\n{}",
        run.stderr
    );
    // Nothing on stderr but JSON lines, and the error at the end.
    let other: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.starts_with('{') && !l.trim().is_empty())
        .collect();
    assert!(other.iter().all(|l| !l.starts_with('#')), "{other:?}");
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn step_errors_show_their_instruction_and_stage_typos_get_a_hint() {
    let case = Case::new(
        "FROM REGISTRY/library/busybox:latest AS builder\nRUN true\n\
         FROM REGISTRY/library/busybox:latest\nCOPY missing.txt /x\n",
    );
    let run = case.build(&[]);
    assert!(!run.ok);
    let tail: Vec<&str> = run.stderr.lines().rev().take(4).collect();
    assert_eq!(
        tail,
        [
            "     | ^",
            "   4 | COPY missing.txt /x",
            "Dockerfile:4",
            "ERROR: [stage-1 2/2] COPY missing.txt /x (line 4): failed to compute cache key: failed to calculate checksum: \"/missing.txt\": not found",
        ],
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("helper"), "{}", run.stderr);
    // A RUN that fails: the same.
    case.file(
        "Dockerfile",
        &format!(
            "FROM {}/library/busybox:latest\n\n    RUN exit 3\n",
            super::registry()
        ),
    );
    let run = case.build(&[]);
    assert!(!run.ok);
    assert!(
        run.stderr
            .ends_with("exit code: 3\nDockerfile:3\n   3 |     RUN exit 3\n     |     ^\n"),
        "{}",
        run.stderr
    );
    // `--from=` a name that is neither a stage nor an image: the registry's answer,
    // then BuildKit's suggestion. Docker Hub names go to the local registry here.
    case.file(
        "Dockerfile",
        &format!(
            "FROM {reg}/library/busybox:latest AS builder\nRUN true\n\
             FROM {reg}/library/busybox:latest\nCOPY --from=buidler /x /x\n",
            reg = super::registry()
        ),
    );
    let conf = case.path("registries.conf");
    fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"docker.io\"\nlocation = \"{}\"\ninsecure = true\n",
            super::registry()
        ),
    )
    .expect("conf");
    let ctx = case.ctx();
    let run = super::store::kiln(
        &case,
        &["build", "--progress", "plain", ctx.to_str().expect("utf8")],
        &[("CONTAINERS_REGISTRIES_CONF", conf.to_str().expect("utf8"))],
    );
    assert!(!run.ok);
    let last = run.stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("ERROR: Dockerfile:4: failed to resolve buidler: ")
            && last.contains("library/buidler")
            && last.ends_with(" (did you mean builder? the stages are: builder)"),
        "{}",
        run.stderr
    );
    // Not found is an answer: asked once, not retried.
    assert!(!run.stderr.contains("trying again"), "{}", run.stderr);
}

/// `kiln build ARGS CONTEXT` without `--progress plain`, for `--call`'s stdout.
fn call(case: &Case, args: &[&str]) -> (Option<i32>, String, String) {
    let ctx = case.ctx();
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    all.push(ctx.to_str().expect("utf8"));
    let run = super::store::kiln(case, &all, &[]);
    (run.code, run.stdout, run.stderr)
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn check_outline_and_targets_answer_as_buildx_does() {
    let case = Case::new(
        "ARG TAG=latest\n\
         FROM REGISTRY/library/busybox:$TAG as Builder\n\
         ENV PATH=$PAHT:/x\n\
         RUN touch /x\n\
         CMD echo hi\n\
         \n\
         # app the application\n\
         FROM REGISTRY/library/busybox:$TAG AS app\n\
         # MODE how to build\n\
         ARG MODE=release\n\
         RUN --mount=type=secret,id=token true\n\
         COPY --from=builder /x /x\n",
    );
    // --check: every finding in full on stdout, exit status 1.
    let (code, out, _) = call(&case, &["--check"]);
    assert_eq!(code, Some(1), "{out}");
    let want_start = "Check complete, 4 warnings have been found!\n\n\
        WARNING: FromAsCasing - https://docs.docker.com/go/dockerfile/rule/from-as-casing/\n\
        'as' and 'FROM' keywords' casing do not match\n\
        Dockerfile:2\n\
        --------------------\n";
    assert!(out.starts_with(want_start), "{out}");
    assert!(out.contains(" >>> FROM "), "{out}");
    for short in [
        "Stage name 'Builder' should be lowercase",
        "Usage of undefined variable '$PAHT' (did you mean $PATH?)",
        "JSON arguments recommended for CMD to prevent unintended behavior related to OS signals",
    ] {
        assert!(out.contains(&format!("\n{short}\n")), "{short}: {out}");
    }
    // As JSON.
    let (_, out, _) = call(&case, &["--call", "check,format=json"]);
    let v = super::json(&out);
    let rules: Vec<&str> = v["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(|w| w["ruleName"].as_str())
        .collect();
    assert_eq!(
        rules,
        [
            "FromAsCasing",
            "StageNameCasing",
            "UndefinedVar",
            "JSONArgsRecommended"
        ]
    );
    // targets and outline.
    let (code, out, _) = call(&case, &["--call", "targets"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out,
        "TARGET        DESCRIPTION\nbuilder\napp (default) the application\n"
    );
    let (_, out, _) = call(&case, &["--call", "outline", "--build-arg", "MODE=debug"]);
    assert_eq!(
        out,
        "TARGET:      app\nDESCRIPTION: the application\n\n\
         BUILD ARG   VALUE    DESCRIPTION\n\
         TAG         latest\n\
         MODE        debug    how to build\n\n\
         SECRET   REQUIRED\n\
         token\n\n"
    );
    // A build: the findings after it, one line each.
    let run = case.build(&[]).expect_ok();
    let tail = run.stderr.rsplit_once("\n\n").map(|(_, t)| t).unwrap_or("");
    assert!(
        tail.starts_with(" 4 warnings found (use kiln -D build to expand):\n - FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 2)\n"),
        "{}",
        run.stderr
    );
    // check=error=true: the build stops before it starts; skip= silences a rule.
    case.file(
        "Dockerfile",
        &format!(
            "# check=error=true\nFROM {}/library/busybox:latest as builder\n",
            super::registry()
        ),
    );
    let run = case.build(&[]);
    run.expect_failure("ERROR: lint violation found for rules: FromAsCasing");
    assert!(
        !run.stderr
            .contains("FROM 127.0.0.1:5000/library/busybox:latest\n#"),
        "{}",
        run.stderr
    );
    case.build(&[
        "--build-arg",
        "BUILDKIT_DOCKERFILE_CHECK=skip=FromAsCasing;error=true",
    ])
    .expect_ok();
    let (code, out, _) = call(
        &case,
        &[
            "--check",
            "--build-arg",
            "BUILDKIT_DOCKERFILE_CHECK=skip=all",
        ],
    );
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "Check complete, no warnings found.\n")
    );
}
