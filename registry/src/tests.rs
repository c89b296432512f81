//! The registry client against a fake registry (`fake`) and its pure parts.

use super::*;
use crate::names::plain_reference;
use crate::pull::{pick, platforms};
use kiln_snapshotter::Store;
use oci_client::Reference;
use oci_spec::image::ImageIndex;
use std::path::Path;

#[test]
fn plain_references_parse_as_oci_client_does() {
    let d = format!("sha256:{}", "ab".repeat(32));
    // The fast path takes the usual names...
    for name in [
        "127.0.0.1:5000/library/busybox:latest".to_string(),
        "registry.example.com/team/app:v1.2_3-rc".into(),
        "localhost/a".into(),
        format!("ghcr.io/o/r@{d}"),
        "r.io:443/a__b/c---d/e.f:_x".into(),
    ] {
        assert!(plain_reference(&name).is_some(), "{name}");
    }
    for name in [
        "busybox",
        "docker.io/x:1",
        "r.io/A:1",
        "r.io/a:-x",
        "r.io/a._b",
        "h/a",
    ] {
        assert!(plain_reference(name).is_none(), "{name}");
    }
    // ... and, for every name it takes, gives what oci-client's parser gives.
    let long = "t".repeat(128);
    let tokens: Vec<&str> = vec![
        "r.io",
        "127.0.0.1:5000",
        "localhost",
        "docker.io",
        "h-",
        "/",
        "/",
        "/",
        "a",
        "b0",
        "Z",
        ".",
        "_",
        "__",
        "___",
        "-",
        "--",
        ":",
        ":",
        "v1",
        "@",
        &d,
        "sha256:",
        &long,
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut taken = 0;
    for _ in 0..50_000 {
        let mut name = String::new();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut pick = |from: &[&str]| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            from[(x % from.len() as u64) as usize].to_string()
        };
        if pick(&["free", "shaped"]) == "free" {
            for _ in 0..2 + pick(&["0", "3", "5", "7"]).parse::<usize>().unwrap_or(0) {
                name.push_str(&pick(&tokens));
            }
        } else {
            // Host, components, and a tag or digest, each part sometimes wrong.
            name.push_str(&pick(&[
                "r.io",
                "127.0.0.1:5000",
                "localhost",
                "docker.io",
                "h-",
                "R.io:1",
            ]));
            for _ in 0..1 + pick(&["0", "1", "2"]).parse::<usize>().unwrap_or(0) {
                name.push('/');
                for _ in 0..1 + pick(&["0", "1", "2"]).parse::<usize>().unwrap_or(0) {
                    name.push_str(&pick(&[
                        "a", "b0", "a", "b0", ".", "_", "__", "-", "--", "Z", "",
                    ]));
                }
            }
            name.push_str(&pick(&[
                "",
                ":v1",
                ":_x",
                ":-x",
                ":",
                &format!(":{long}"),
                &format!(":{long}t"),
                &format!("@{d}"),
                "@sha256:ab",
                &format!(":v1@{d}"),
            ]));
        }
        if let Some(fast) = plain_reference(&name) {
            taken += 1;
            let slow: Reference = name.parse().unwrap_or_else(|e| {
                panic!("{name}: taken by the fast path, refused by oci-client: {e}")
            });
            let parts = |r: &Reference| {
                (
                    r.registry().to_string(),
                    r.repository().to_string(),
                    r.tag().map(str::to_string),
                    r.digest().map(str::to_string),
                )
            };
            assert_eq!(parts(&fast), parts(&slow), "{name}");
        }
    }
    assert!(
        taken > 500,
        "only {taken} generated names took the fast path"
    );
}

#[test]
fn names_resolve_the_docker_way() {
    let r = parse_reference("python:3.8-slim").expect("parses");
    assert_eq!(
        (r.registry(), r.repository(), r.tag()),
        ("docker.io", "library/python", Some("3.8-slim"))
    );
    let r = parse_reference("127.0.0.1:5000/team/app:v1").expect("parses");
    assert_eq!(
        (r.registry(), r.repository(), r.tag()),
        ("127.0.0.1:5000", "team/app", Some("v1"))
    );
    let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let r = parse_reference(&format!("busybox@{d}")).expect("parses");
    assert_eq!(r.digest(), Some(d));
    assert!(parse_reference("UPPER/case").is_err());
    assert!(parse_reference("bad name").is_err());
}

#[test]
fn only_loopback_is_plain_http() {
    assert!(is_loopback("127.0.0.1:5000"));
    assert!(is_loopback("localhost:5000"));
    assert!(is_loopback("[::1]:5000"));
    assert!(!is_loopback("docker.io"));
    assert!(!is_loopback("registry.example:5000"));
}

#[test]
fn picks_platform_from_index() {
    let idx: ImageIndex = serde_json::from_str(
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1,"platform":{"os":"linux","architecture":"arm64"}},
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}"#,
    )
    .expect("index");
    let want = Want {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    };
    assert_eq!(
        pick(&idx, &want).as_deref(),
        Some("sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
    );
    let want = Want {
        os: "linux".into(),
        architecture: "s390x".into(),
        variant: None,
    };
    assert_eq!(pick(&idx, &want), None);
    assert_eq!(platforms(&idx), "linux/arm64, linux/amd64");
}

use fake::{Fake, Fault};
use std::sync::Arc;

fn quick() -> retry::Policy {
    retry::Policy {
        attempts: 3,
        first_delay: std::time::Duration::from_millis(10),
    }
}

/// A client that keeps what it reports, with credentials from `dir`.
fn client(dir: &Path) -> (Registry, Arc<Mutex<Vec<String>>>) {
    let said = Arc::new(Mutex::new(Vec::new()));
    let s = said.clone();
    let env = auth::Env {
        home: Some(dir.join("home")),
        ..auth::Env::default()
    };
    let r = Registry::with(conf::Config::default(), env)
        .with_policy(quick())
        .with_notify(move |m| lock(&s).push(m.to_string()));
    (r, said)
}

fn login(dir: &Path, host: &str, user: &str, pass: &str) {
    let env = auth::Env {
        home: Some(dir.join("home")),
        ..auth::Env::default()
    };
    let path = env.docker_config_file().expect("path");
    auth::store(&env, &path, host, user, pass).expect("store");
}

fn amd64() -> Want {
    Want {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    }
}

#[tokio::test]
async fn server_errors_and_dropped_connections_are_retried_and_reported() {
    let fake = Fake::start().await;
    fake.add_image("lib/app", "v1", b"layer bytes");
    let d = tempfile::tempdir().expect("tmp");
    let store = Store::open(d.path().join("store")).expect("store");
    let (reg, said) = client(d.path());
    {
        let mut s = fake.state();
        s.faults.push(Fault {
            prefix: "GET /v2/lib/app/manifests/v1".into(),
            status: 503,
        });
        s.faults.push(Fault {
            prefix: "GET /v2/lib/app/manifests/v1".into(),
            status: 0,
        });
    }
    let name = format!("{}/lib/app:v1", fake.addr);
    let r = reg
        .resolve(&name, &amd64(), &store)
        .await
        .expect("resolves");
    assert_eq!(fake.count("GET /v2/lib/app/manifests/v1"), 3);
    let said = lock(&said).clone();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        said[0].contains("503") && said[0].contains("(2 of 3)"),
        "{said:?}"
    );
    // A server that keeps failing: the last error, with its status.
    for _ in 0..3 {
        fake.state().faults.push(Fault {
            prefix: "GET /v2/lib/app/blobs/".into(),
            status: 500,
        });
    }
    let layer = r.manifest.layers()[0].digest().to_string();
    let e = reg
        .fetch_blob(&r.pinned, &layer, &store)
        .await
        .expect_err("gives up");
    assert!(e.to_string().contains("answered 500"), "{e}");
    assert!(!store.has_blob(&layer));
    reg.fetch_blob(&r.pinned, &layer, &store)
        .await
        .expect("works once the server does");
    assert_eq!(store.read_blob(&layer).expect("read"), b"layer bytes");
}

#[tokio::test]
async fn a_corrupted_blob_is_an_error_and_not_retried() {
    let fake = Fake::start().await;
    let (_, layer) = fake.add_image("lib/app", "v1", b"honest bytes");
    fake.state().corrupt.insert(layer.clone());
    let d = tempfile::tempdir().expect("tmp");
    let store = Store::open(d.path().join("store")).expect("store");
    let (reg, said) = client(d.path());
    let pinned = format!("{}/lib/app@{layer}", fake.addr);
    let e = reg
        .fetch_blob(&pinned, &layer, &store)
        .await
        .expect_err("corrupt");
    assert!(e.to_string().contains("does not match its digest"), "{e}");
    assert_eq!(fake.count("GET /v2/lib/app/blobs/"), 1);
    assert!(lock(&said).is_empty());
    assert!(!store.has_blob(&layer));
    assert_eq!(store.tmp_entries().expect("tmp").len(), 0, "no leftovers");
}

#[tokio::test]
async fn bearer_tokens_are_fetched_with_the_stored_credentials() {
    let fake = Fake::start().await;
    fake.state().bearer = Some(("alice".into(), "s3cret".into()));
    fake.add_image("team/base", "v1", b"base layer");
    let d = tempfile::tempdir().expect("tmp");
    let store = Store::open(d.path().join("store")).expect("store");
    let name = format!("{}/team/base:v1", fake.addr);

    let (anon, _) = client(d.path());
    let e = anon
        .resolve(&name, &amd64(), &store)
        .await
        .expect_err("anonymous");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "{}: authentication required to pull from team/base",
            fake.addr
        )) && msg.contains(&format!("run `kiln login {}`", fake.addr)),
        "{msg}"
    );

    login(d.path(), &fake.addr, "alice", "wrong");
    let (wrong, _) = client(d.path());
    let e = wrong
        .resolve(&name, &amd64(), &store)
        .await
        .expect_err("wrong password");
    assert!(e.to_string().contains("rejected user \"alice\""), "{e}");
    wrong
        .check_login(&fake.addr, "alice", "wrong")
        .await
        .expect_err("login refused");

    login(d.path(), &fake.addr, "alice", "s3cret");
    let (reg, _) = client(d.path());
    reg.check_login(&fake.addr, "alice", "s3cret")
        .await
        .expect("login accepted");
    let r = reg
        .resolve(&name, &amd64(), &store)
        .await
        .expect("resolves");
    assert!(fake.count("GET /token") >= 1);
    // And a push with the same credentials, the base layer mounted.
    let layer = r.manifest.layers()[0].digest().to_string();
    reg.fetch_blob(&r.pinned, &layer, &store)
        .await
        .expect("blob");
    let config = store.write_blob(b"{}").expect("config");
    let blobs = [
        Blob {
            digest: layer.clone(),
            size: 10,
            source: Some(format!("{}/team/base", fake.addr)),
        },
        Blob {
            digest: config,
            size: 2,
            source: None,
        },
    ];
    let pushed = reg
        .push(
            &format!("{}/team/app:v2", fake.addr),
            &blobs,
            b"{\"schemaVersion\":2}",
            "application/vnd.oci.image.manifest.v1+json",
            &store,
        )
        .await
        .expect("pushes");
    assert_eq!(pushed.blobs[0].1, BlobOutcome::Mounted("team/base".into()));
    assert_eq!(pushed.blobs[1].1, BlobOutcome::Uploaded);
    assert!(fake.state().manifests.contains_key("team/app:v2"));
}

#[tokio::test]
async fn mounts_refused_with_202_fall_back_to_one_put_and_413_to_chunks() {
    let fake = Fake::start().await;
    let big: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 251) as u8).collect();
    let big_digest = fake.add_blob("team/base", &big);
    fake.state().refuse_mounts = true;
    let d = tempfile::tempdir().expect("tmp");
    let store = Store::open(d.path().join("store")).expect("store");
    assert_eq!(store.write_blob(&big).expect("w"), big_digest);
    let (reg, said) = client(d.path());
    let blobs = [Blob {
        digest: big_digest.clone(),
        size: big.len() as u64,
        source: Some(format!("{}/team/base", fake.addr)),
    }];
    let (reg, blobs, store) = (&reg, &blobs, &store);
    let push = |repo: &str| {
        let target = format!("{}/{repo}:v1", fake.addr);
        async move {
            reg.push(
                &target,
                blobs,
                b"{}",
                "application/vnd.oci.image.manifest.v1+json",
                store,
            )
            .await
        }
    };
    // A registry that takes the whole body: one PUT, no chunk.
    let pushed = push("team/one").await.expect("pushes");
    assert_eq!(pushed.blobs[0].1, BlobOutcome::Uploaded);
    assert_eq!(fake.count("PATCH "), 0);
    assert_eq!(fake.count("PUT /v2/team/one/blobs/uploads/"), 1);
    assert!(fake.state().repos["team/one"].contains(&big_digest));
    // One that refuses a body that large: chunks.
    fake.state().max_put_body = Some(1 << 20);
    let pushed = push("team/app").await.expect("pushes");
    assert_eq!(pushed.blobs[0].1, BlobOutcome::Uploaded);
    assert!(
        fake.count("POST /v2/team/app/blobs/uploads/?") >= 2,
        "mount, then uploads"
    );
    assert_eq!(fake.count("PATCH "), 2, "5 MiB in 4 MiB chunks");
    assert!(
        lock(&said)
            .iter()
            .any(|m| m.contains("refused in one request") && m.contains("uploading it in chunks")),
        "{:?}",
        lock(&said)
    );
    assert!(fake.state().repos["team/app"].contains(&big_digest));
    // Pushing again uploads nothing.
    let before = fake.count("POST ");
    let again = push("team/app").await.expect("pushes");
    assert_eq!(again.blobs[0].1, BlobOutcome::Existing);
    assert_eq!(fake.count("POST "), before);
}

#[tokio::test]
async fn a_refused_mount_of_a_blob_the_store_lacks_fetches_it_from_the_source() {
    let fake = Fake::start().await;
    let layer = b"a layer of an imported cache".to_vec();
    let digest = fake.add_blob("team/cache", &layer);
    fake.state().refuse_mounts = true;
    let d = tempfile::tempdir().expect("tmp");
    let store = Store::open(d.path().join("store")).expect("store");
    assert!(!store.has_blob(&digest));
    let (reg, _) = client(d.path());
    let blobs = [Blob {
        digest: digest.clone(),
        size: layer.len() as u64,
        source: Some(format!("{}/team/cache", fake.addr)),
    }];
    let pushed = reg
        .push(
            &format!("{}/team/app:v1", fake.addr),
            &blobs,
            b"{}",
            "application/vnd.oci.image.manifest.v1+json",
            &store,
        )
        .await
        .expect("pushes");
    assert_eq!(pushed.blobs[0].1, BlobOutcome::Uploaded);
    assert_eq!(fake.count(&format!("GET /v2/team/cache/blobs/{digest}")), 1);
    assert!(store.has_blob(&digest), "fetched, verified and kept");
    assert!(fake.state().repos["team/app"].contains(&digest));
}

#[tokio::test]
async fn a_teed_fetch_streams_the_blob_and_stores_it_only_when_it_matches() {
    use std::io::Read as _;
    let fake = Fake::start().await;
    let (_, layer) = fake.add_image("lib/app", "v1", b"streamed bytes");
    let (_, bad) = fake.add_image("lib/bad", "v1", b"bytes to corrupt");
    fake.state().corrupt.insert(bad.clone());
    let d = tempfile::tempdir().expect("tmp");
    let store = Store::open(d.path().join("store")).expect("store");
    let (reg, said) = client(d.path());
    let teed = |pinned: String, digest: String, size: u64| {
        let (mut r, w) = std::io::pipe().expect("pipe");
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            r.read_to_end(&mut v).expect("read");
            v
        });
        let w = std::fs::File::from(std::os::fd::OwnedFd::from(w));
        let reg = &reg;
        let store = &store;
        async move {
            let res = reg.fetch_teed(&pinned, &digest, size, store, w).await;
            (res, reader.join().expect("reader"))
        }
    };
    let (res, got) = teed(format!("{}/lib/app@{layer}", fake.addr), layer.clone(), 14).await;
    res.expect("fetches");
    assert_eq!(got, b"streamed bytes", "the tee got every byte");
    assert!(store.has_blob(&layer));
    // A blob that does not match its digest: an error at once (no retry, since the
    // tee cannot take back what it got), and nothing in the store.
    let (res, _) = teed(format!("{}/lib/bad@{bad}", fake.addr), bad.clone(), 16).await;
    let e = res.expect_err("corrupt");
    assert!(e.to_string().contains("does not match its digest"), "{e}");
    assert_eq!(fake.count("GET /v2/lib/bad/blobs/"), 1);
    assert!(lock(&said).is_empty(), "{:?}", lock(&said));
    assert!(!store.has_blob(&bad));
    assert_eq!(store.tmp_entries().expect("tmp").len(), 0, "no leftovers");
}

#[tokio::test]
async fn denied_and_missing_are_named() {
    let fake = Fake::start().await;
    fake.add_image("lib/app", "v1", b"x");
    let d = tempfile::tempdir().expect("tmp");
    let store = Store::open(d.path().join("store")).expect("store");
    let (reg, _) = client(d.path());
    let e = reg
        .resolve(&format!("{}/lib/app:nope", fake.addr), &amd64(), &store)
        .await
        .expect_err("missing tag");
    assert_eq!(
        e.to_string(),
        format!("{}/lib/app: tag \"nope\" not found", fake.addr)
    );
    let config = store.write_blob(b"{}").expect("config");
    fake.state().faults.push(Fault {
        prefix: "PUT /v2/lib/app/manifests/".into(),
        status: 403,
    });
    let e = reg
        .push(
            &format!("{}/lib/app:v2", fake.addr),
            &[Blob {
                digest: config,
                size: 2,
                source: None,
            }],
            b"{}",
            "application/vnd.oci.image.manifest.v1+json",
            &store,
        )
        .await
        .expect_err("denied");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: access denied: an anonymous client may not push to lib/app",
            fake.addr
        )
    );
}

#[tokio::test]
async fn a_mirror_that_fails_hands_over_to_the_next_source() {
    let fake = Fake::start().await;
    let (m, _) = fake.add_image("hub/library/python", "3.8-slim", b"py");
    let d = tempfile::tempdir().expect("tmp");
    let store = Store::open(d.path().join("store")).expect("store");
    let mut c = conf::Config::default();
    c.add(
        Path::new("registries.conf"),
        &format!(
            "[[registry]]\nprefix = \"docker.io\"\nlocation = \"127.0.0.1:9\"\n\
             [[registry.mirror]]\nlocation = \"{0}/down\"\n\
             [[registry.mirror]]\nlocation = \"{0}/hub\"\n",
            fake.addr
        ),
    )
    .expect("conf");
    let said = Arc::new(Mutex::new(Vec::new()));
    let s = said.clone();
    let reg = Registry::with(c, auth::Env::default())
        .with_policy(quick())
        .with_notify(move |m| lock(&s).push(m.to_string()));
    let r = reg
        .resolve("python:3.8-slim", &amd64(), &store)
        .await
        .expect("served by the second mirror");
    assert_eq!(r.pinned, format!("docker.io/library/python@{m}"));
    assert_eq!(r.mirror, Some(format!("{}/hub/library/python", fake.addr)));
    assert_eq!(
        fake.count("GET /v2/down/library/python/manifests/"),
        1,
        "one try per mirror"
    );
    assert!(
        lock(&said)[0].contains("trying the next source"),
        "{:?}",
        lock(&said)
    );
    let layer = r.manifest.layers()[0].digest().to_string();
    reg.fetch_blob(&r.pinned, &layer, &store)
        .await
        .expect("blob via the mirror");
    assert_eq!(
        fake.count("GET /v2/hub/library/python/blobs/"),
        2,
        "config and layer"
    );
}
