//! The registry side: a registry with htpasswd Basic auth (distribution's own),
//! credentials from a docker config.json that kiln did not write, `kiln login` and
//! `kiln logout`, blob mounts across repositories, and docker.io names served by a
//! registries.conf mirror. Pushed images are read back with skopeo.

use super::store::kiln;
use super::*;
use std::io::Write as _;
use std::process::{Child, Stdio};

/// Credentials and registry configuration live in the case's directory, never in
/// the user's.
fn isolated(case: &Case) -> Vec<(String, String)> {
    let p = |n: &str| case.path(n).to_str().expect("utf8").to_string();
    vec![
        ("HOME".into(), p("home")),
        ("XDG_RUNTIME_DIR".into(), p("run")),
        ("XDG_CONFIG_HOME".into(), p("config")),
        ("DOCKER_CONFIG".into(), p("docker")),
        ("CONTAINERS_REGISTRIES_CONF".into(), p("registries.conf")),
    ]
}

fn run_kiln(case: &Case, args: &[&str], env: &[(String, String)], stdin: &str) -> Run {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if stdin.is_empty() {
        return kiln(case, args, &env);
    }
    let mut child = Command::new(kiln_bin())
        .arg("--root")
        .arg(case.path("store"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kiln");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait").into()
}

fn build_args<'a>(case: &'a Case, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = ["build", "--progress", "plain"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v.push(case.ctx().to_str().expect("utf8").to_string());
    v
}

/// A docker-registry of the test's own, with htpasswd auth, on a free port.
struct AuthRegistry {
    child: Child,
    addr: String,
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AuthRegistry {
    fn start(case: &Case, user: &str, password: &str) -> AuthRegistry {
        let dir = case.path("authreg");
        fs::create_dir_all(dir.join("data")).expect("mkdir");
        let htpasswd = tool("htpasswd", &["-Bbn", user, password]);
        fs::write(dir.join("htpasswd"), htpasswd).expect("htpasswd");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n  secret: kiln-e2e\nauth:\n  htpasswd:\n    realm: kiln-e2e\n    path: {}\n",
                dir.join("data").display(),
                dir.join("htpasswd").display()
            ),
        )
        .expect("config");
        let log = fs::File::create(dir.join("log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("docker-registry (apt install docker-registry)");
        let reg = AuthRegistry { child, addr };
        for _ in 0..100 {
            let code = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://{}/v2/", reg.addr))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            if code == "401" {
                return reg;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "the htpasswd registry did not start: {}",
            fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
    }
}

fn skopeo_manifest(reference: &str, creds: &str) -> std::process::Output {
    let mut args = vec!["inspect", "--raw", "--tls-verify=false"];
    if !creds.is_empty() {
        args.extend(["--creds", creds]);
    }
    let r = format!("docker://{reference}");
    args.push(&r);
    Command::new("skopeo").args(&args).output().expect("skopeo")
}

/// The digest kiln printed for `reference` (`NAME: digest: sha256:... size: N`).
fn pushed_digest(run: &Run, reference: &str) -> String {
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{reference}: digest: ")))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest line for {reference}:\n{}", run.stdout))
        .to_string()
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn htpasswd_registry_takes_a_push_only_with_credentials() {
    let case = Case::new("FROM REGISTRY/library/busybox\nRUN echo authenticated > /who\n");
    let reg = AuthRegistry::start(&case, "alice", "s3cret");
    let env = isolated(&case);
    let target = format!("{}/team/app:v1", reg.addr);
    let args = build_args(&case, &["-t", &target, "--push"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // No credentials: refused, with the registry, the repository and the remedy.
    let r = run_kiln(&case, &args, &env, "");
    assert!(!r.ok, "pushed without credentials:\n{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "{}: authentication required to push to team/app: no credentials for {} were found",
            reg.addr, reg.addr
        )) && r.stderr.contains(&format!("run `kiln login {}`", reg.addr)),
        "{}",
        r.stderr
    );
    assert!(!skopeo_manifest(&target, "alice:s3cret").status.success());

    // A docker config.json written by hand (base64 by coreutils, not kiln).
    let docker = case.path("docker");
    fs::create_dir_all(&docker).expect("mkdir");
    let wrong = tool("sh", &["-c", "printf alice:nope | base64"]);
    fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.addr,
            wrong.trim()
        ),
    )
    .expect("config");
    let r = run_kiln(&case, &args, &env, "");
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("the registry rejected user \"alice\" (credentials from")
            && r.stderr.contains("config.json"),
        "{}",
        r.stderr
    );
    let right = tool("sh", &["-c", "printf alice:s3cret | base64"]);
    fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"http://{}/v2/":{{"auth":"{}"}}}}}}"#,
            reg.addr,
            right.trim()
        ),
    )
    .expect("config");
    let r = run_kiln(&case, &args, &env, "").expect_ok();
    let digest = pushed_digest(&r, &target);
    let raw = skopeo_manifest(&target, "alice:s3cret");
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert_eq!(super::store::sha256(&raw.stdout), digest);
    let copy = format!("oci:{}:v1", case.path("copied").display());
    tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            "alice:s3cret",
            &format!("docker://{target}"),
            &copy,
        ],
    );

    // `kiln login` checks the password, then keeps it; `kiln logout` forgets it.
    fs::remove_file(docker.join("config.json")).expect("rm");
    let r = run_kiln(
        &case,
        &["login", "-u", "alice", "--password-stdin", &reg.addr],
        &env,
        "wrong\n",
    );
    r.expect_failure("incorrect username or password");
    assert!(!docker.join("config.json").exists());
    run_kiln(
        &case,
        &["login", "-u", "alice", "--password-stdin", &reg.addr],
        &env,
        "s3cret\n",
    )
    .expect_ok();
    let cfg = json(&fs::read_to_string(docker.join("config.json")).expect("config"));
    assert_eq!(cfg["auths"][&reg.addr]["auth"].as_str(), Some(right.trim()));
    let target2 = format!("{}/team/app:v2", reg.addr);
    let args2 = build_args(&case, &["-t", &target2, "--push"]);
    let args2: Vec<&str> = args2.iter().map(String::as_str).collect();
    let r = run_kiln(&case, &args2, &env, "").expect_ok();
    assert!(
        r.stderr.contains("Layer already exists"),
        "the blobs of v1 are there: {}",
        r.stderr
    );
    run_kiln(&case, &["logout", &reg.addr], &env, "").expect_ok();
    let r = run_kiln(&case, &args2, &env, "");
    assert!(
        !r.ok && r.stderr.contains("authentication required"),
        "{}",
        r.stderr
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn a_push_mounts_base_layers_from_the_repository_they_came_from() {
    let case = Case::new("FROM REGISTRY/library/busybox\nRUN echo mounted > /m\n");
    let env = isolated(&case);
    // A repository no earlier run has used, so nothing in it exists yet.
    let unique = case
        .dir
        .path()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let target = format!("{}/e2e/mount-{unique}:v1", registry());
    let args = build_args(&case, &["-t", &target, "--push"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_kiln(&case, &args, &env, "").expect_ok();
    assert!(
        r.stderr.contains(": Mounted from library/busybox"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr.matches(": Pushed").count(),
        2,
        "layer and config: {}",
        r.stderr
    );
    // Every blob is really there.
    tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{target}"),
            &format!("oci:{}:v1", case.path("copied").display()),
        ],
    );
    // The store noted where it pushed them: a push to another repository mounts the
    // layer and the config from the first one, and uploads nothing.
    let again = format!("{}/e2e/mount-{unique}-again:v1", registry());
    let args = build_args(&case, &["-t", &again, "--push"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_kiln(&case, &args, &env, "").expect_ok();
    assert_eq!(
        r.stderr
            .matches(&format!(": Mounted from e2e/mount-{unique}\n"))
            .count(),
        2,
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.matches(": Pushed").count(), 0, "{}", r.stderr);
    tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{again}"),
            &format!("oci:{}:v1", case.path("copied-again").display()),
        ],
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn docker_io_names_are_served_by_a_registries_conf_mirror() {
    let case = Case::new(
        "FROM debian:bookworm-slim\nRUN sed --version | head -n 1 > /version\n\
         FROM busybox\nCOPY --from=0 /version /\n",
    );
    let env = isolated(&case);
    // Docker Hub itself is pointed at a closed port: only the mirror can answer.
    fs::write(
        case.path("registries.conf"),
        format!(
            "[[registry]]\nprefix = \"docker.io\"\nlocation = \"127.0.0.1:9\"\n\
             [[registry.mirror]]\nlocation = \"{}\"\n",
            registry()
        ),
    )
    .expect("conf");
    let out = case.path("img.tar");
    let o = format!("type=oci,dest={}", out.display());
    let args = build_args(&case, &["-o", &o, "-t", "mirrored:1"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_kiln(&case, &args, &env, "").expect_ok();
    for name in ["debian", "busybox"] {
        assert!(
            r.stderr
                .contains(&format!("from mirror {}/library/{name}", registry())),
            "{}",
            r.stderr
        );
    }
    let rootfs = umoci_unpack(&case, &out, "1");
    let version = fs::read_to_string(rootfs.join("version")).expect("version");
    assert!(
        version.starts_with("sed (GNU sed)"),
        "Debian's sed: {version}"
    );

    // Without the mirror, the same names go to the (closed) registry: a clear error.
    fs::write(
        case.path("registries.conf"),
        "[[registry]]\nprefix = \"docker.io\"\nlocation = \"127.0.0.1:9\"\n",
    )
    .expect("conf");
    let args = build_args(&case, &["--no-cache"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _ = fs::remove_dir_all(case.path("store"));
    let r = run_kiln(&case, &args, &env, "");
    r.expect_failure("127.0.0.1:9");
}
