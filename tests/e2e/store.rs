//! The store end to end: exact layer round trips in both identity-mapping modes,
//! hostile layers, builds killed at every stage, concurrent builds, `du` and `prune`.
//!
//! Test images are made here, byte by byte, as OCI layouts, and pushed to the local
//! registry with skopeo: that is how a layer can hold `../` entries or xattrs.

use super::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;

pub(super) fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// One tar entry, written with raw names so hostile paths reach kiln unchanged.
pub(super) struct Ent<'a> {
    pub(super) kind: tar::EntryType,
    pub(super) name: &'a str,
    pub(super) data: &'a [u8],
    pub(super) link: &'a str,
    pub(super) mode: u32,
    pub(super) owner: (u64, u64),
    pub(super) xattrs: &'a [(&'a str, &'a [u8])],
}

pub(super) fn file<'a>(name: &'a str, data: &'a [u8]) -> Ent<'a> {
    Ent {
        kind: tar::EntryType::Regular,
        name,
        data,
        link: "",
        mode: 0o644,
        owner: (0, 0),
        xattrs: &[],
    }
}

pub(super) fn dir(name: &str) -> Ent<'_> {
    Ent {
        kind: tar::EntryType::Directory,
        mode: 0o755,
        ..file(name, b"")
    }
}

pub(super) fn link<'a>(kind: tar::EntryType, name: &'a str, target: &'a str) -> Ent<'a> {
    Ent {
        kind,
        link: target,
        mode: 0o777,
        ..file(name, b"")
    }
}

pub(super) fn layer(entries: &[Ent]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.xattrs.is_empty() {
            let pax: Vec<(String, &[u8])> = e
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                .collect();
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
                .expect("pax");
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_uid(e.owner.0);
        h.set_gid(e.owner.1);
        h.set_mtime(1_700_000_000);
        let old = h.as_old_mut();
        old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        h.set_cksum();
        b.append(&h, e.data).expect("append");
    }
    b.into_inner().expect("tar")
}

pub(super) fn gzip(b: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b).expect("gzip");
    gz.finish().expect("gzip")
}

/// Pushes `REGISTRY/name:t`: `base`'s layers (if any) plus `layers`, each given as
/// (uncompressed tar, blob as pushed).
pub(super) fn push_image(
    case: &Case,
    name: &str,
    base: Option<&str>,
    layers: &[(Vec<u8>, Vec<u8>)],
) {
    let dir = case.path(&format!("img-{}", name.replace('/', "-")));
    let d = dir.to_str().expect("utf8").to_string();
    let (mut manifest, mut config) = match base {
        Some(b) => {
            tool(
                "skopeo",
                &[
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                    &format!("docker://{}/{b}", registry()),
                    &format!("oci:{d}:t"),
                ],
            );
            let index = json(&fs::read_to_string(dir.join("index.json")).expect("index"));
            let m = index["manifests"][0]["digest"].as_str().expect("digest")[7..].to_string();
            let manifest = json(&fs::read_to_string(dir.join("blobs/sha256").join(m)).expect("m"));
            let c = manifest["config"]["digest"].as_str().expect("config")[7..].to_string();
            let config = json(&fs::read_to_string(dir.join("blobs/sha256").join(c)).expect("c"));
            (manifest, config)
        }
        None => {
            fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir");
            fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("w");
            let arch = if cfg!(target_arch = "aarch64") {
                "arm64"
            } else {
                "amd64"
            };
            (
                serde_json::json!({"schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {}, "layers": []}),
                serde_json::json!({"architecture": arch, "os": "linux", "config": {},
                    "rootfs": {"type": "layers", "diff_ids": []}}),
            )
        }
    };
    let put = |bytes: &[u8]| -> String {
        let digest = sha256(bytes);
        fs::write(dir.join("blobs/sha256").join(&digest[7..]), bytes).expect("blob");
        digest
    };
    for (tar, blob) in layers {
        let digest = put(blob);
        manifest["layers"]
            .as_array_mut()
            .expect("layers")
            .push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest, "size": blob.len()}));
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .expect("diff_ids")
            .push(sha256(tar).into());
    }
    let c = serde_json::to_vec(&config).expect("json");
    manifest["config"] = serde_json::json!({
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": put(&c), "size": c.len()});
    let m = serde_json::to_vec(&manifest).expect("json");
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": put(&m), "size": m.len(),
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]});
    fs::write(dir.join("index.json"), index.to_string()).expect("index");
    tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{d}:t"),
            &format!("docker://{}/{name}:t", registry()),
        ],
    );
}

/// Runs kiln with `args` (after `--root STORE`) and extra environment.
pub(super) fn kiln(case: &Case, args: &[&str], env: &[(&str, &str)]) -> Run {
    assert_ne!(nix_uid(), 0, "end-to-end tests must run unprivileged");
    Command::new(kiln_bin())
        .arg("--root")
        .arg(case.path("store"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run kiln")
        .into()
}

pub(super) fn build(case: &Case, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let ctx = case.ctx();
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().expect("utf8"));
    kiln(case, &args, env)
}

/// Decodes umoci's `user.rootlesscontainers` value (protobuf `Resource {uid=1, gid=2}`);
/// written here rather than borrowed from kiln, so that the check is independent.
fn rootless_owner(path: &Path) -> Option<(u32, u32)> {
    let out = Command::new("getfattr")
        .args(["-h", "--only-values", "-n", "user.rootlesscontainers"])
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let b = out.stdout;
    let (mut uid, mut gid, mut i) = (0u32, 0u32, 0);
    while i < b.len() {
        let field = b[i] >> 3;
        i += 1;
        let (mut v, mut shift) = (0u64, 0);
        while i < b.len() {
            v |= u64::from(b[i] & 0x7f) << shift;
            shift += 7;
            i += 1;
            if b[i - 1] & 0x80 == 0 {
                break;
            }
        }
        match field {
            1 => uid = v as u32,
            2 => gid = v as u32,
            _ => {}
        }
    }
    Some((uid, gid))
}

/// path -> "type mode uid:gid content-or-target [xattrs]" for everything under `sub`.
fn tree(rootfs: &Path, sub: &str) -> BTreeMap<String, String> {
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, String>) {
        let m = fs::symlink_metadata(p).expect("stat");
        let rel = p.strip_prefix(root).expect("inside").display().to_string();
        let ft = m.file_type();
        let (uid, gid) = if ft.is_symlink() {
            (0, 0)
        } else {
            rootless_owner(p).unwrap_or((0, 0))
        };
        let what = if ft.is_symlink() {
            format!("link -> {}", fs::read_link(p).expect("readlink").display())
        } else if ft.is_dir() {
            "dir".to_string()
        } else {
            format!(
                "file {:?} nlink={}",
                String::from_utf8_lossy(&fs::read(p).expect("read")),
                m.nlink()
            )
        };
        let xattr = Command::new("getfattr")
            .args(["-h", "--only-values", "-n", "user.test"])
            .arg(p)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| format!(" user.test={}", String::from_utf8_lossy(&o.stdout)))
            .unwrap_or_default();
        let mode = if ft.is_symlink() {
            0
        } else {
            m.permissions().mode() & 0o7777
        };
        out.insert(rel, format!("{what} {mode:o} {uid}:{gid}{xattr}"));
        if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(p)
                .expect("readdir")
                .map(|e| e.expect("entry").path())
                .collect();
            names.sort();
            for n in names {
                walk(root, &n, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(rootfs, &rootfs.join(sub), &mut out);
    out
}

const ROUND_TRIP: &str = r#"FROM REGISTRY/e2e/roundtrip-base:t AS other
RUN echo from-stage > /made
FROM REGISTRY/e2e/roundtrip-base:t
RUN rm /x/gone \
 && rm -r /x/replaced && mkdir /x/replaced && echo new > /x/replaced/only \
 && chmod 0600 /x/modeonly \
 && ln /x/xattr /x/hard \
 && ln -s xattr /x/sym2 \
 && mkdir -p /x/empty/deeper \
 && mv /x/renamed-from /x/renamed-to \
 && echo changed > /x/changed \
 && rm /x/sym && mkdir /x/sym
COPY --chown=33:44 note /x/copied
COPY --chown=7:8 --chmod=4750 note /x/setuid
COPY --from=other /made /x/from-stage
RUN --mount=from=other,target=/o cp /o/made /x/mounted && ! touch /o/made 2>/dev/null
"#;

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn layers_round_trip_exactly_in_both_identity_modes_and_snapshotters() {
    let base = Case::new("");
    let l = layer(&[
        dir("x"),
        Ent {
            xattrs: &[("user.test", b"kept")],
            ..file("x/xattr", b"x\n")
        },
        Ent {
            owner: (1000, 1001),
            mode: 0o640,
            ..file("x/owned", b"o\n")
        },
        file("x/gone", b"g\n"),
        dir("x/replaced"),
        file("x/replaced/old", b"old\n"),
        Ent {
            owner: (100, 100),
            ..file("x/modeonly", b"m\n")
        },
        file("x/renamed-from", b"r\n"),
        file("x/changed", b"before\n"),
        link(tar::EntryType::Symlink, "x/sym", "xattr"),
        Ent {
            owner: (5, 6),
            mode: 0o750,
            ..dir("x/owned-dir")
        },
    ]);
    push_image(
        &base,
        "e2e/roundtrip-base",
        Some("library/debian:bookworm-slim"),
        &[(l.clone(), gzip(&l))],
    );
    let mut trees = Vec::new();
    for snapshotter in ["overlay", "native"] {
        for mode in ["subordinate", "single"] {
            let case = Case::new(ROUND_TRIP);
            case.file("note", "copied\n");
            let mut env = vec![("KILN_SNAPSHOTTER", snapshotter)];
            if mode == "single" {
                env.push(("KILN_IDMAP", "single"));
            }
            let archive = case.path("out.tar");
            let dest = format!("type=oci,dest={}", archive.display());
            let run = build(&case, &["-o", &dest, "-t", "rt:1"], &env).expect_ok();
            let mapping = if mode == "single" {
                "single id"
            } else {
                "subordinate ids"
            };
            for named in [
                format!("identity mapping: {mapping}"),
                format!("snapshotter: {snapshotter} (as asked)"),
            ] {
                assert!(
                    run.stderr.contains(&named),
                    "{named:?} is in the output: {}",
                    run.stderr
                );
            }
            let rootfs = umoci_unpack(&case, &archive, "1");
            trees.push((format!("{mode} ids, {snapshotter}"), tree(&rootfs, "x")));
        }
    }
    let expected: BTreeMap<String, String> = [
        ("x", "dir 755 0:0"),
        ("x/changed", "file \"changed\\n\" nlink=1 644 0:0"),
        ("x/copied", "file \"copied\\n\" nlink=1 644 33:44"),
        ("x/empty", "dir 755 0:0"),
        ("x/empty/deeper", "dir 755 0:0"),
        ("x/from-stage", "file \"from-stage\\n\" nlink=1 644 0:0"),
        ("x/hard", "file \"x\\n\" nlink=2 644 0:0 user.test=kept"),
        ("x/modeonly", "file \"m\\n\" nlink=1 600 100:100"),
        ("x/mounted", "file \"from-stage\\n\" nlink=1 644 0:0"),
        ("x/owned", "file \"o\\n\" nlink=1 640 1000:1001"),
        ("x/owned-dir", "dir 750 5:6"),
        ("x/renamed-to", "file \"r\\n\" nlink=1 644 0:0"),
        ("x/replaced", "dir 755 0:0"),
        ("x/replaced/only", "file \"new\\n\" nlink=1 644 0:0"),
        ("x/setuid", "file \"copied\\n\" nlink=1 4750 7:8"),
        ("x/sym", "dir 755 0:0"),
        ("x/sym2", "link -> xattr 0 0:0"),
        ("x/xattr", "file \"x\\n\" nlink=2 644 0:0 user.test=kept"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (mode, t) in &trees {
        assert_eq!(t, &expected, "the tree built with {mode}");
    }
}

/// Builds `FROM` an image made of `blob` (a layer as pushed, for `tar`) and checks
/// that kiln fails with `want` in its error, or succeeds if `want` is empty, and that
/// nothing appeared in `victim`.
fn hostile(case: &Case, name: &str, tar: Vec<u8>, blob: Vec<u8>, want: &str) -> Run {
    push_image(case, name, None, &[(tar, blob)]);
    fs::write(
        case.ctx().join("Dockerfile"),
        format!("FROM {}/{name}:t\nLABEL probe={name}\n", registry()),
    )
    .expect("dockerfile");
    let run = build(case, &[], &[]);
    if want.is_empty() {
        assert!(run.ok, "{name}: {}", run.stderr);
    } else {
        assert!(!run.ok, "{name} must fail");
        assert!(
            run.stderr.contains(want),
            "{name}: expected {want:?} in\n{}",
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{name}: {}", run.stderr);
    }
    run
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn hostile_layers_end_in_clear_errors_and_write_nothing_outside() {
    let case = Case::new("");
    let victim = case.path("victim");
    fs::create_dir(&victim).expect("mkdir");
    fs::write(victim.join("secret"), "untouched").expect("write");
    let v = victim.to_str().expect("utf8").to_string();
    // The layer is unpacked in STORE/tmp/unpack-*/, three levels below the case.
    let up = "../../../victim";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "e2e/hostile-dotdot",
            layer(&[file(&format!("{up}/dotdot"), b"x")]),
            "escapes the root",
        ),
        (
            "e2e/hostile-symlink-write",
            layer(&[
                link(tar::EntryType::Symlink, "evil", &v),
                file("evil/through-symlink", b"x"),
            ]),
            "outside of destination",
        ),
        (
            "e2e/hostile-hardlink-out",
            layer(&[link(tar::EntryType::Link, "hl", &format!("{v}/secret"))]),
            "outside of destination",
        ),
        (
            "e2e/hostile-hardlink-dotdot",
            layer(&[link(tar::EntryType::Link, "hl", &format!("{up}/secret"))]),
            "outside of destination",
        ),
        (
            "e2e/hostile-loop",
            layer(&[
                link(tar::EntryType::Symlink, "a", "b"),
                link(tar::EntryType::Symlink, "b", "a"),
                file("a/x", b"x"),
            ]),
            "a/x",
        ),
        (
            "e2e/hostile-whiteout-symlink",
            layer(&[
                link(tar::EntryType::Symlink, "w", &v),
                file("w/.wh.secret", b""),
            ]),
            "escapes the root",
        ),
    ];
    for (name, tar, want) in cases {
        let gz = gzip(&tar);
        hostile(&case, name, tar, gz, want);
        assert_eq!(
            fs::read_dir(&victim).expect("victim").count(),
            1,
            "{name} wrote next to the victim"
        );
        assert_eq!(
            fs::read_to_string(victim.join("secret")).expect("secret"),
            "untouched",
            "{name}"
        );
    }
    // An absolute path lands inside the root.
    let abs = format!("{v}/abs");
    let tar = layer(&[file(&abs, b"x")]);
    let gz = gzip(&tar);
    hostile(&case, "e2e/hostile-absolute", tar, gz, "");
    assert!(!victim.join("abs").exists());
    // A truncated gzip stream is an error naming the layer, and leaves no snapshot.
    let tar = layer(&[file("big", &vec![7u8; 200_000]), file("after", b"x")]);
    let mut gz = gzip(&tar);
    gz.truncate(gz.len() / 2);
    hostile(&case, "e2e/hostile-truncated", tar, gz, "unpacking");
    // A blob whose content is not its digest never reaches the store.
    let served = fake_registry_serving_a_corrupt_blob();
    fs::write(
        case.ctx().join("Dockerfile"),
        format!("FROM {served}/e2e/corrupt:t\n"),
    )
    .expect("dockerfile");
    let run = build(&case, &[], &[]);
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains(&format!("{served}/e2e/corrupt: blob sha256:"))
            && run.stderr.contains("does not match its digest"),
        "{}",
        run.stderr
    );
    let blobs = case.path("store/blobs/sha256");
    for e in fs::read_dir(&blobs).expect("blobs") {
        let e = e.expect("entry");
        let bytes = fs::read(e.path()).expect("blob");
        assert_eq!(
            sha256(&bytes)[7..],
            e.file_name().to_string_lossy(),
            "every stored blob matches its name"
        );
    }
    // Whatever failed, the store is consistent: a full prune leaves nothing.
    kiln(&case, &["prune", "--all", "--force"], &[]).expect_ok();
    assert_store_empty(&case);
}

/// A one-image registry on 127.0.0.1 whose layer blob is served with wrong content.
/// Returns its host:port.
fn fake_registry_serving_a_corrupt_blob() -> String {
    let good = layer(&[file("f", b"good")]);
    let blob = gzip(&good);
    let digest = sha256(&blob);
    let arch = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    let config = serde_json::to_vec(&serde_json::json!({"architecture": arch, "os": "linux",
        "config": {}, "rootfs": {"type": "layers", "diff_ids": [sha256(&good)]}}))
    .expect("json");
    let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest, "size": blob.len()}]}))
    .expect("json");
    let mut corrupt = blob.clone();
    let n = corrupt.len();
    corrupt[n / 2] ^= 0xff;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let routes: Vec<(String, &'static str, Vec<u8>)> = vec![
        (
            "/v2/e2e/corrupt/manifests/".into(),
            "application/vnd.oci.image.manifest.v1+json",
            manifest.clone(),
        ),
        (
            format!("/v2/e2e/corrupt/blobs/{}", sha256(&config)),
            "application/octet-stream",
            config,
        ),
        (
            format!("/v2/e2e/corrupt/blobs/{digest}"),
            "application/octet-stream",
            corrupt,
        ),
        ("/v2/".into(), "application/json", b"{}".to_vec()),
    ];
    let manifest_digest = sha256(&manifest);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
            }
            let mut parts = first.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let found = routes.iter().find(|(p, _, _)| path.starts_with(p.as_str()));
            let resp = match found {
                Some((_, ct, body)) => {
                    let mut head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    if path.contains("/manifests/") {
                        head.push_str(&format!("Docker-Content-Digest: {manifest_digest}\r\n"));
                    }
                    head.push_str("\r\n");
                    let mut v = head.into_bytes();
                    if method != "HEAD" {
                        v.extend_from_slice(body);
                    }
                    v
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = s.write_all(&resp);
        }
    });
    addr
}

fn assert_store_empty(case: &Case) {
    let du = kiln(case, &["du"], &[]).expect_ok();
    let total = du
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Total:"))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    assert_eq!(total, "0B", "{}", du.stdout);
    let store = case.path("store");
    for d in ["tmp", "cache", "blobs/sha256", "cache-mounts"] {
        let left: Vec<_> = fs::read_dir(store.join(d))
            .expect("store dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "{d} still holds {left:?}");
    }
    let snaps: Vec<_> = fs::read_dir(store.join("snapshots"))
        .expect("snapshots")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(snaps, vec![std::ffi::OsString::from("empty")]);
}

const KILLED: &str = r#"FROM REGISTRY/library/debian:bookworm-slim
RUN --mount=type=cache,target=/cache echo MARKER-kiln-killed-step >/dev/null; sleep 2; seq 1 20000 > /numbers
COPY data /data
RUN cat /data /numbers | wc -l > /count
"#;

/// Processes still running whose command line mentions `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").expect("proc").flatten() {
        if let Ok(cmd) = fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                out.push(cmd);
            }
        }
    }
    out
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn builds_killed_at_any_point_leave_a_consistent_store() {
    let case = Case::new(KILLED);
    case.file("data", &"line\n".repeat(1000));
    let archive = case.path("out.tar");
    let dest = format!("type=oci,dest={}", archive.display());
    // Kill when each of these first shows in the progress output: resolving, pulling
    // and unpacking, inside the RUN, the COPY, the second RUN, the export.
    let points = [
        "load metadata",
        "[1/4] FROM",
        "[2/4] RUN",
        "[3/4] COPY",
        "[4/4] RUN",
        "exporting",
    ];
    for point in points {
        let mut child = Command::new(kiln_bin())
            .arg("--root")
            .arg(case.path("store"))
            .args(["build", "--progress", "plain", "--no-cache", "-o", &dest])
            .arg(case.ctx())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("kiln");
        let stderr = child.stderr.take().expect("stderr");
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(point) {
                if point == "[2/4] RUN" {
                    // Inside the step, not before it.
                    std::thread::sleep(std::time::Duration::from_millis(700));
                }
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            processes_with("MARKER-kiln-killed-step").is_empty(),
            "a RUN step outlived kiln killed at {point:?}"
        );
        // The store still answers.
        kiln(&case, &["du"], &[]).expect_ok();
    }
    // A complete build afterwards works and produces the right image.
    let run = build(&case, &["-o", &dest, "-t", "k:1"], &[]).expect_ok();
    let rootfs = umoci_unpack(&case, &archive, "1");
    assert_eq!(
        fs::read_to_string(rootfs.join("count")).expect("count"),
        "21000\n",
        "{}",
        run.stderr
    );
    // The store is consistent: every record's snapshots and blobs exist (a usable
    // cache), and a full prune takes it back to nothing.
    let cached = build(&case, &[], &[]).expect_ok();
    assert!(
        cached.stderr.matches(" CACHED").count() >= 4,
        "{}",
        cached.stderr
    );
    kiln(&case, &["prune", "--all", "--force"], &[]).expect_ok();
    assert_store_empty(&case);
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn concurrent_builds_share_a_store_and_du_matches_prune() {
    let a = Case::new(
        "FROM REGISTRY/library/debian:bookworm-slim\nRUN --mount=type=cache,target=/c echo a > /a && sleep 1\nCOPY f /f\n",
    );
    a.file("f", "a\n");
    let b_ctx = a.path("ctx-b");
    fs::create_dir(&b_ctx).expect("mkdir");
    fs::write(
        b_ctx.join("Dockerfile"),
        format!(
            "FROM {}/library/debian:bookworm-slim\nRUN echo b > /b && sleep 1\nCOPY f /f\n",
            registry()
        ),
    )
    .expect("write");
    fs::write(b_ctx.join("f"), "b\n").expect("write");
    let store = a.path("store");
    let spawn = |ctx: &Path, out: &str| {
        Command::new(kiln_bin())
            .arg("--root")
            .arg(&store)
            .args(["build", "--progress", "plain", "-o"])
            .arg(format!("type=oci,dest={}", a.path(out).display()))
            .arg(ctx)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kiln")
    };
    let ca = spawn(&a.ctx(), "a.tar");
    let cb = spawn(&b_ctx, "b.tar");
    for (name, c) in [("a", ca), ("b", cb)] {
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "build {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for t in ["a.tar", "b.tar"] {
        tool(
            "skopeo",
            &["inspect", &format!("oci-archive:{}", a.path(t).display())],
        );
    }
    // What du calls reclaimable is what prune then reclaims.
    let du = kiln(&a, &["du", "--verbose"], &[]).expect_ok();
    assert!(du.stdout.contains("exec.cachemount"), "{}", du.stdout);
    assert!(du.stdout.contains("source.image"), "{}", du.stdout);
    let reclaimable = du
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Reclaimable:"))
        .and_then(|l| l.split_whitespace().next())
        .expect("reclaimable")
        .to_string();
    let pruned = kiln(&a, &["prune", "--force"], &[]).expect_ok();
    assert_eq!(
        pruned.stdout.trim(),
        format!("Total:\t{reclaimable}"),
        "{}",
        du.stdout
    );
    // The pulled image stays; the steps rebuild against it without pulling.
    let after = kiln(&a, &["du", "--verbose"], &[]).expect_ok();
    assert!(after.stdout.contains("source.image"), "{}", after.stdout);
    assert!(!after.stdout.contains("regular"), "{}", after.stdout);
    let rebuilt = build(&a, &[], &[]).expect_ok();
    assert!(
        rebuilt.stderr.contains("[1/3] FROM") && !rebuilt.stderr.contains("bytes done"),
        "{}",
        rebuilt.stderr
    );
    // --filter until= keeps what was just used; --all takes the rest.
    let kept = kiln(
        &a,
        &["prune", "--force", "--verbose", "--filter", "until=1h"],
        &[],
    )
    .expect_ok();
    assert_eq!(
        kept.stdout.lines().count(),
        1,
        "nothing listed: {}",
        kept.stdout
    );
    let bad = kiln(&a, &["prune", "--force", "--filter", "until=soon"], &[]);
    assert!(
        !bad.ok && bad.stderr.contains("invalid duration"),
        "{}",
        bad.stderr
    );
    kiln(&a, &["prune", "--all", "--force"], &[]).expect_ok();
    assert_store_empty(&a);
}

/// Parses `du`'s human sizes back (`4.096kB`, `3MB`, `512B`).
fn parse_human(s: &str) -> f64 {
    let digits: String = s
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let n: f64 = digits.parse().unwrap_or_else(|_| panic!("size {s:?}"));
    n * match &s[digits.len()..] {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        u => panic!("unit {u:?} in {s:?}"),
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn du_verbose_sizes_each_record_by_the_layer_it_made() {
    let case = Case::new(
        "FROM REGISTRY/library/busybox:latest\n\
         RUN head -c 3000000 /dev/urandom > /random\n\
         RUN echo small > /small\n",
    );
    build(&case, &[], &[]).expect_ok();
    let du = kiln(&case, &["du", "--verbose"], &[]).expect_ok();
    let header = du.stdout.lines().next().expect("header");
    assert!(
        header.starts_with("ID") && header.contains("SIZE       LAYER"),
        "{}",
        du.stdout
    );
    let row = |what: &str| -> (f64, f64, String) {
        let l = du
            .stdout
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what} in:\n{}", du.stdout));
        let cols: Vec<&str> = l.split_whitespace().collect();
        (
            parse_human(cols[2]),
            parse_human(cols[3]),
            cols[4].to_string(),
        )
    };
    // The 3 MB step: its own snapshot and blob, though the next step names them too.
    let (size, layer, shared) = row("RUN head -c 3000000");
    assert!((6e6..7e6).contains(&size), "size {size}:\n{}", du.stdout);
    assert!(
        layer > 3e6 && layer < 3.2e6,
        "layer {layer}:\n{}",
        du.stdout
    );
    assert_eq!(shared, "true", "{}", du.stdout);
    // The small step is small, its layer too.
    let (size, layer, _) = row("RUN echo small");
    assert!(
        size < 100e3 && layer < 1e3,
        "{size} {layer}:\n{}",
        du.stdout
    );
}
