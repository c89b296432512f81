//! `--cache-to` / `--cache-from`: a runner's cache carried to a fresh store, as a CI
//! job restores it.

use super::{Case, Run, SEED};
use std::fs;
use std::path::Path;

/// The build steps of a plain progress log (not `[internal]` ones) and how each ended.
fn steps(run: &Run) -> Vec<(String, String)> {
    let lines: Vec<&str> = run.stderr.lines().collect();
    lines
        .iter()
        .filter(|l| l.contains("] ") && !l.contains("internal]"))
        .filter_map(|l| {
            let (id, title) = l.split_once(' ')?;
            if !title.starts_with('[') {
                return None;
            }
            let end = lines.iter().find_map(|m| {
                let rest = m.strip_prefix(id)?.strip_prefix(' ')?;
                (rest == "CACHED" || rest.starts_with("DONE") || rest.starts_with("ERROR"))
                    .then(|| rest.split(' ').next().unwrap_or(rest).to_string())
            })?;
            Some((title.to_string(), end))
        })
        .collect()
}

fn all_cached(run: &Run) {
    let s = steps(run);
    assert!(s.len() >= 7, "{}", run.stderr);
    assert!(
        s.iter().all(|(_, end)| end == "CACHED"),
        "{s:#?}\n{}",
        run.stderr
    );
}

fn ended(run: &Run, title: &str) -> String {
    steps(run)
        .into_iter()
        .find(|(t, _)| t.contains(title))
        .map(|(_, e)| e)
        .unwrap_or_else(|| panic!("no step {title:?} in\n{}", run.stderr))
}

fn snapshots(case: &Case) -> Vec<String> {
    fs::read_dir(case.path("store/snapshots"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                // overlay's empty lower directory
                .filter(|n| n != "empty")
                .collect()
        })
        .unwrap_or_default()
}

/// A fresh store on another checkout of the same files (written again: other paths,
/// other times).
fn runner(greeting: &str) -> Case {
    let case = Case::new(SEED);
    case.file("greeting.txt", greeting);
    case
}

fn cache_to(dir: &Path, mode: &str) -> String {
    format!("type=local,dest={},mode={mode}", dir.display())
}

fn cache_from(dir: &Path) -> String {
    format!("type=local,src={}", dir.display())
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn a_local_cache_makes_a_fresh_store_build_all_cached_and_alike() {
    let first = runner("carried\n");
    let cache = first.path("cache");
    let out_a = first.path("a.tar");
    let a = first
        .build(&[
            "--cache-to",
            &cache_to(&cache, "max"),
            "-o",
            &format!("type=oci,dest={}", out_a.display()),
        ])
        .expect_ok();
    assert!(a.stderr.contains("exported cache:"), "{}", a.stderr);
    // An OCI layout whose manifest independent tools read.
    let index = super::json(&fs::read_to_string(cache.join("index.json")).expect("index"));
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    let manifest = super::tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}:latest", cache.display()),
        ],
    );
    assert!(
        manifest.contains("application/vnd.kiln.cache.config.v1+json"),
        "{manifest}"
    );

    // The second runner: an empty store, a checkout written later elsewhere.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = runner("carried\n");
    let out_b = second.path("b.tar");
    let b = second
        .build(&[
            "--cache-from",
            &cache_from(&cache),
            "-o",
            &format!("type=oci,dest={}", out_b.display()),
        ])
        .expect_ok();
    all_cached(&b);
    assert_eq!(a.image_digest(), b.image_digest());
    // Nothing was unpacked: the layers came in as blobs, for the archive only.
    assert_eq!(snapshots(&second), Vec::<String>::new(), "{}", b.stderr);
    assert_eq!(
        fs::read(&out_a).map(|b| b.len()).ok(),
        fs::read(&out_b).map(|b| b.len()).ok()
    );

    // A runner without a subordinate id range (owners emulated) finds the same keys.
    let single = runner("carried\n");
    let e = super::store::build(
        &single,
        &["--cache-from", &cache_from(&cache)],
        &[("KILN_IDMAP", "single")],
    )
    .expect_ok();
    all_cached(&e);
    assert_eq!(e.image_digest(), a.image_digest());

    // One changed source file: only what depends on it runs, on layers that come in.
    second.file("greeting.txt", "changed\n");
    let c = second
        .build(&["--cache-from", &cache_from(&cache)])
        .expect_ok();
    assert_eq!(ended(&c, "[builder 1/4] FROM"), "CACHED", "{}", c.stderr);
    assert_eq!(ended(&c, "[builder 2/4] WORKDIR"), "CACHED", "{}", c.stderr);
    assert_eq!(ended(&c, "[builder 3/4] COPY"), "DONE", "{}", c.stderr);
    assert_eq!(ended(&c, "[builder 4/4] RUN"), "DONE", "{}", c.stderr);
    assert_eq!(ended(&c, "[stage-2 2/3] WORKDIR"), "CACHED", "{}", c.stderr);
    assert_eq!(ended(&c, "[stage-2 3/3] COPY"), "DONE", "{}", c.stderr);
    assert_ne!(c.image_digest(), a.image_digest());

    // A cache that is not there is a warning and a miss.
    let third = runner("carried\n");
    a_miss(&third, &cache_from(&third.path("nowhere")));
}

/// A build from `cache` that cannot be read: a warning, and every step runs.
#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn compression_zstd_converts_the_cache_layers_and_the_image_stays_the_same() {
    let first = runner("squeezed\n");
    let cache = first.path("cache");
    let a = first
        .build(&[
            "--cache-to",
            &format!("{},compression=zstd", cache_to(&cache, "max")),
        ])
        .expect_ok();
    let manifest = super::json(&super::tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}:latest", cache.display()),
        ],
    ));
    let types: Vec<&str> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["mediaType"].as_str().expect("mediaType"))
        .collect();
    // The base image's layer keeps its gzip (force-compression=false); kiln's own
    // layers are zstd, and each blob is what its media type says.
    assert!(
        types.contains(&"application/vnd.oci.image.layer.v1.tar+zstd"),
        "{types:?}"
    );
    assert!(
        types.contains(&"application/vnd.oci.image.layer.v1.tar+gzip"),
        "{types:?}"
    );
    for l in manifest["layers"].as_array().expect("layers") {
        let digest = l["digest"].as_str().expect("digest");
        let blob = cache.join("blobs/sha256").join(&digest["sha256:".len()..]);
        let magic = fs::read(&blob).expect("blob");
        let zstd = magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
        assert_eq!(
            zstd,
            l["mediaType"].as_str().expect("mt").ends_with("zstd"),
            "{digest}"
        );
    }

    // A fresh runner: all cached, and the image it exports (gzip, the default) is
    // the first one's.
    let second = runner("squeezed\n");
    let b = second
        .build(&["--cache-from", &cache_from(&cache)])
        .expect_ok();
    all_cached(&b);
    assert_eq!(a.image_digest(), b.image_digest());

    // force-compression=true converts the base layer too.
    let forced = first.path("forced");
    first
        .build(&[
            "--cache-to",
            &format!(
                "{},compression=zstd,force-compression=true",
                cache_to(&forced, "max")
            ),
        ])
        .expect_ok();
    let m = super::tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}:latest", forced.display()),
        ],
    );
    assert!(!m.contains("tar+gzip"), "{m}");
}

fn a_miss(case: &Case, cache: &str) {
    let d = case.build(&["--cache-from", cache]).expect_ok();
    assert!(
        d.stderr.contains("WARNING: not importing cache"),
        "{}",
        d.stderr
    );
    assert_eq!(ended(&d, "[builder 4/4] RUN"), "DONE", "{}", d.stderr);
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn mode_min_carries_the_final_stage_and_mode_max_every_stage() {
    let first = runner("stages\n");
    let (min, max) = (first.path("cache-min"), first.path("cache-max"));
    first
        .build(&[
            "--cache-to",
            &cache_to(&min, "min"),
            "--cache-to",
            &cache_to(&max, "max"),
        ])
        .expect_ok();
    // A change in the final stage only: its WORKDIR.
    let changed = SEED
        .replace("WORKDIR /app", "WORKDIR /app2")
        .replace("/app/out.txt", "/app2/out.txt");
    for (dir, builder_end) in [(&min, "DONE"), (&max, "CACHED")] {
        let case = Case::new(&changed);
        case.file("greeting.txt", "stages\n");
        let run = case.build(&["--cache-from", &cache_from(dir)]).expect_ok();
        assert_eq!(
            ended(&run, "[builder 4/4] RUN"),
            builder_end,
            "{}: {}",
            dir.display(),
            run.stderr
        );
        assert_eq!(
            ended(&run, "[stage-2 2/3] WORKDIR"),
            "DONE",
            "{}",
            run.stderr
        );
    }
    // The same Dockerfile from the min cache: the final image's steps are cached. (The
    // builder runs again, as with BuildKit's mode=min.)
    let same = runner("stages\n");
    let run = same.build(&["--cache-from", &cache_from(&min)]).expect_ok();
    assert_eq!(
        ended(&run, "[stage-2 3/3] COPY"),
        "CACHED",
        "{}",
        run.stderr
    );
}

/// The blobs in a case's store.
fn store_blobs(case: &Case) -> Vec<String> {
    fs::read_dir(case.path("store/blobs/sha256"))
        .map(|r| {
            r.flatten()
                .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default()
}

/// The layer digests of the image `reference` in the registry.
fn layers_of(reference: &str) -> Vec<String> {
    let m = super::json(&super::tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    ));
    m["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_string())
        .collect()
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn a_registry_cache_serves_a_fresh_store_whose_push_downloads_no_layer() {
    let reg = super::registry();
    let cache = format!("{reg}/e2e/cache:seed");
    let first = runner("from the registry\n");
    let a = first
        .build(&[
            "--cache-to",
            &format!("type=registry,ref={cache},mode=max"),
            "--push",
            "-t",
            &format!("{reg}/e2e/cache-app:a"),
        ])
        .expect_ok();
    let manifest = super::tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{cache}"),
        ],
    );
    assert!(
        manifest.contains("application/vnd.kiln.cache.config.v1+json"),
        "{manifest}"
    );

    // A fresh runner builds and pushes under another name: all cached, the same image,
    // and not one layer blob came into its store (the push found or mounted them).
    let second = runner("from the registry\n");
    let pushed = format!("{reg}/e2e/cache-app:b");
    let log = super::RegistryLog::mark();
    let b = second
        .build(&[
            "--cache-from",
            &format!("type=registry,ref={cache}"),
            "--push",
            "-t",
            &pushed,
        ])
        .expect_ok();
    all_cached(&b);
    assert_eq!(a.image_digest(), b.image_digest());
    let layers = layers_of(&pushed);
    assert!(layers.len() >= 3, "{layers:?}");
    let have = store_blobs(&second);
    assert!(
        layers.iter().all(|l| !have.contains(l)),
        "layers were downloaded: {have:?}\n{}",
        b.stderr
    );
    assert!(snapshots(&second).is_empty(), "{}", b.stderr);
    // Counted at the registry too: no GET of a layer blob of the image. (Other tests
    // running meanwhile pull the shared base layer from library/ repositories; every
    // other layer of this image is this test's own.)
    let fetched: Vec<String> = log
        .gets_since()
        .into_iter()
        .filter(|p| p.contains("/blobs/") && !p.starts_with("/v2/library/"))
        .filter(|p| layers.iter().any(|l| p.ends_with(l.as_str())))
        .collect();
    assert!(fetched.is_empty(), "layer blobs downloaded: {fetched:?}");
    assert!(
        log.gets_since()
            .iter()
            .any(|p| p.starts_with("/v2/e2e/cache/manifests/")),
        "the log shows the cache manifest read"
    );

    // A step that must run fetches the layers it runs on, from the cache.
    second.file("greeting.txt", "changed\n");
    let log = super::RegistryLog::mark();
    let c = second
        .build(&["--cache-from", &format!("type=registry,ref={cache}")])
        .expect_ok();
    assert_eq!(ended(&c, "[builder 3/4] COPY"), "DONE", "{}", c.stderr);
    assert_eq!(ended(&c, "[stage-2 2/3] WORKDIR"), "CACHED", "{}", c.stderr);
    assert!(
        log.gets_since()
            .iter()
            .any(|p| p.starts_with("/v2/e2e/cache/blobs/")),
        "the log shows the layers fetched from the cache"
    );

    // A cache ref that does not exist is a warning and a miss.
    a_miss(
        &runner("from the registry\n"),
        &format!("{reg}/e2e/cache:nope"),
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn an_inline_cache_travels_in_the_pushed_image() {
    let reg = super::registry();
    let (image_a, image_b) = (
        format!("{reg}/e2e/cache-inline:a"),
        format!("{reg}/e2e/cache-inline:b"),
    );
    let first = runner("inline\n");
    let a = first
        .build(&["--cache-to", "type=inline", "--push", "-t", &image_a])
        .expect_ok();
    let config = super::json(&super::tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--config",
            "--tls-verify=false",
            &format!("docker://{image_a}"),
        ],
    ));
    assert!(config["kiln.cache.v1"]["records"].is_array(), "{config}");

    // A fresh runner reads it from the image: the final stage is served (the builder
    // stage, which min carries not, runs), the image is the same, and its layers stay
    // on the registry.
    let second = runner("inline\n");
    let b = second
        .build(&[
            "--cache-from",
            &image_a,
            "--cache-to",
            "type=inline",
            "--push",
            "-t",
            &image_b,
        ])
        .expect_ok();
    assert_eq!(ended(&b, "[stage-2 2/3] WORKDIR"), "CACHED", "{}", b.stderr);
    assert_eq!(ended(&b, "[stage-2 3/3] COPY"), "CACHED", "{}", b.stderr);
    assert_eq!(a.image_digest(), b.image_digest());
    let have = store_blobs(&second);
    let layers = layers_of(&image_b);
    assert!(
        layers.iter().all(|l| !have.contains(l)),
        "layers were downloaded: {have:?}\n{}",
        b.stderr
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn cache_mounts_travel_with_mounts_true() {
    let writer = |cmd: &str| {
        format!(
            "FROM REGISTRY/library/busybox:latest\n\
             RUN --mount=type=cache,target=/var/cache/app {cmd}\n"
        )
    };
    let first = Case::new(&writer("echo from-the-first-runner > /var/cache/app/mark"));
    let (with, without) = (first.path("with"), first.path("without"));
    first
        .build(&[
            "--cache-to",
            &format!("type=local,dest={},mounts=true", with.display()),
            "--cache-to",
            &format!("type=local,dest={}", without.display()),
        ])
        .expect_ok();
    // Another RUN on another runner, with the same cache mount: it sees the first
    // runner's files when they travelled, and an empty mount when not.
    let reader = writer("cat /var/cache/app/mark > /seen 2>/dev/null || echo empty > /seen");
    for (dir, want) in [(&with, "from-the-first-runner\n"), (&without, "empty\n")] {
        let case = Case::new(&reader);
        let out = case.path("out");
        case.build(&[
            "--cache-from",
            &cache_from(dir),
            "-o",
            &format!("type=local,dest={}", out.display()),
        ])
        .expect_ok();
        assert_eq!(fs::read_to_string(out.join("seen")).expect("seen"), want);
    }
}

/// moto's S3 server on a free port of 127.0.0.1, stopped when dropped.
struct S3Server {
    child: std::process::Child,
    port: u16,
}

impl S3Server {
    fn start() -> S3Server {
        let bin = std::env::var("KILN_E2E_MOTO")
            .unwrap_or_else(|_| "/var/tmp/kiln-ci/moto/bin/moto_server".into());
        assert!(
            Path::new(&bin).exists(),
            "{bin}: moto's S3 server is missing; run scripts/setup.sh"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        let server = S3Server { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("moto's S3 server did not come up on port {port}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn an_s3_cache_serves_a_fresh_store() {
    let s3 = S3Server::start();
    super::tool(
        "curl",
        &["-fsS", "-X", "PUT", &format!("{}/kiln-cache", s3.url())],
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let opts = format!(
        "type=s3,bucket=kiln-cache,endpoint_url={},use_path_style=true,prefix=ci/",
        s3.url()
    );
    let first = runner("in a bucket\n");
    let a =
        super::store::build(&first, &["--cache-to", &format!("{opts},mode=max")], &env).expect_ok();
    // BuildKit's layout: the manifest under manifests/NAME, the blobs under blobs/.
    let listing = super::tool(
        "curl",
        &["-fsS", &format!("{}/kiln-cache?prefix=ci/", s3.url())],
    );
    assert!(listing.contains("ci/manifests/buildkit"), "{listing}");
    assert!(listing.contains("ci/blobs/sha256:"), "{listing}");

    let second = runner("in a bucket\n");
    let b = super::store::build(&second, &["--cache-from", &opts], &env).expect_ok();
    all_cached(&b);
    assert_eq!(a.image_digest(), b.image_digest());

    // The bucket gone: a warning and a miss.
    drop(s3);
    let third = runner("in a bucket\n");
    let c = super::store::build(&third, &["--cache-from", &opts], &env).expect_ok();
    assert!(
        c.stderr.contains("WARNING: not importing cache"),
        "{}",
        c.stderr
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn a_multi_platform_cache_serves_every_platform() {
    // A stage on the build platform, and one per target platform, under QEMU.
    const CROSS: &str = "FROM --platform=$BUILDPLATFORM REGISTRY/library/busybox AS build\n\
        RUN cat /proc/sys/kernel/random/uuid > /once\n\
        ARG TARGETARCH\n\
        RUN echo \"$TARGETARCH\" > /target-arch\n\
        FROM REGISTRY/library/busybox\n\
        COPY --from=build /once /target-arch /\n\
        RUN uname -m > /arch\n";
    let platforms = ["--platform", "linux/amd64,linux/arm64"];
    let first = Case::new(CROSS);
    let cache = first.path("cache");
    let mut args = platforms.to_vec();
    let to = cache_to(&cache, "max");
    args.extend(["--cache-to", &to]);
    let a = first.build(&args).expect_ok();
    let second = Case::new(CROSS);
    let mut args = platforms.to_vec();
    let from = cache_from(&cache);
    args.extend(["--cache-from", &from]);
    let b = second.build(&args).expect_ok();
    all_cached(&b);
    // The same index over the same two images (the uuid came from the cache).
    assert_eq!(a.image_digest(), b.image_digest());
}
