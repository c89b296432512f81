//! Every output type, read back by tools that are not kiln: skopeo for OCI and Docker
//! archives, umoci for OCI layouts, tar and the filesystem for local and tar outputs;
//! and reproducible images with SOURCE_DATE_EPOCH.

use super::store::build;
use super::*;
use std::os::unix::fs::MetadataExt;

const APP: &str = r#"FROM REGISTRY/library/busybox
RUN echo hi > /hello && mkdir -p /d && echo x > /d/f && ln -s hello /link
LABEL in.dockerfile=yes
"#;

fn manifest_of(raw: &str) -> serde_json::Value {
    json(raw)
}

/// The media types of an image's layers, bottom first.
fn layer_types(m: &serde_json::Value) -> Vec<String> {
    m["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["mediaType"].as_str().expect("mediaType").to_string())
        .collect()
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn every_output_type_is_read_back_by_independent_tools() {
    let case = Case::new(APP);
    let p = |n: &str| case.path(n).to_str().expect("utf8").to_string();
    let name1 = format!("{}/e2e/out:1", registry());
    let name2 = format!("{}/e2e/out:2", registry());
    let outputs = [
        format!(
            "type=oci,dest={},compression=zstd,annotation.org.opencontainers.image.title=kiln-e2e",
            p("oci.tar")
        ),
        format!("type=docker,dest={}", p("docker.tar")),
        format!(
            "type=oci,tar=false,dest={},compression=uncompressed",
            p("layout")
        ),
        format!("type=local,dest={}", p("local")),
        format!("type=tar,dest={}", p("fs.tar")),
    ];
    let mut args: Vec<&str> = Vec::new();
    for o in &outputs {
        args.extend(["-o", o]);
    }
    let (iid, meta) = (p("iid"), p("meta.json"));
    args.extend([
        "-t",
        &name1,
        "-t",
        &name2,
        "--iidfile",
        &iid,
        "--metadata-file",
        &meta,
        "--label",
        "from.cli=1",
    ]);
    build(&case, &args, &[]).expect_ok();

    // OCI tar, zstd: kiln's own layer is zstd, the base's keeps its gzip (no force).
    let oci = format!("oci-archive:{}:1", p("oci.tar"));
    let m = manifest_of(&tool("skopeo", &["inspect", "--raw", &oci]));
    assert_eq!(
        layer_types(&m),
        vec![
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd"
        ]
    );
    assert_eq!(
        m["annotations"]["org.opencontainers.image.title"], "kiln-e2e",
        "{m}"
    );
    let config = image_config(&oci);
    assert_eq!(config["config"]["Labels"]["from.cli"], "1");
    assert_eq!(config["config"]["Labels"]["in.dockerfile"], "yes");
    // skopeo decompresses and checks every blob when it copies.
    let copied = format!("oci:{}:c", p("copied"));
    tool("skopeo", &["copy", "--quiet", &oci, &copied]);
    let config_digest = m["config"]["digest"].as_str().expect("config digest");

    // --iidfile and --metadata-file describe the first image output.
    assert_eq!(fs::read_to_string(&iid).expect("iid"), config_digest);
    let md = json(&fs::read_to_string(&meta).expect("metadata"));
    assert_eq!(md["containerimage.config.digest"], config_digest);
    let raw = tool("skopeo", &["inspect", "--raw", &oci]);
    let raw_path = case.path("manifest.json");
    fs::write(&raw_path, &raw).expect("write");
    let digest = tool(
        "skopeo",
        &["manifest-digest", raw_path.to_str().expect("utf8")],
    );
    assert_eq!(md["containerimage.digest"], digest.trim());
    assert_eq!(md["image.name"], format!("{name1},{name2}"));

    // Docker archive: Docker media types, RepoTags for both names, loadable by skopeo.
    let docker = format!("docker-archive:{}", p("docker.tar"));
    let dm = manifest_of(&tool("skopeo", &["inspect", "--raw", &docker]));
    assert_eq!(
        dm["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("docker-archive:{}:{name2}", p("docker.tar")),
            &format!("oci:{}:d", p("copied")),
        ],
    );
    let listing = tool("tar", &["-xOf", &p("docker.tar"), "manifest.json"]);
    let tags = json(&listing)[0]["RepoTags"].clone();
    assert_eq!(tags, serde_json::json!([name1, name2]));

    // OCI layout directory, uncompressed layers, unpacked by umoci.
    let lm = manifest_of(&tool(
        "skopeo",
        &["inspect", "--raw", &format!("oci:{}:2", p("layout"))],
    ));
    assert_eq!(
        layer_types(&lm)[1],
        "application/vnd.oci.image.layer.v1.tar"
    );
    let bundle = p("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:1", p("layout")),
            &bundle,
        ],
    );
    let rootfs = case.path("bundle/rootfs");
    assert_eq!(
        fs::read_to_string(rootfs.join("hello")).expect("hello"),
        "hi\n"
    );

    // Local: the filesystem, owned by the user who ran kiln.
    let local = case.path("local");
    assert_eq!(fs::read_to_string(local.join("d/f")).expect("d/f"), "x\n");
    assert_eq!(
        fs::read_link(local.join("link")).expect("link"),
        Path::new("hello")
    );
    let me = fs::metadata(case.path("ctx")).expect("ctx").uid();
    for f in ["hello", "d", "d/f", "bin"] {
        assert_eq!(
            fs::symlink_metadata(local.join(f)).expect("stat").uid(),
            me,
            "{f}"
        );
    }

    // Tar: the same filesystem, with the image's owners (root) in the headers.
    let list = tool("tar", &["-tvf", &p("fs.tar"), "--numeric-owner"]);
    for want in ["hello", "d/f", "link -> hello"] {
        let line = list
            .lines()
            .find(|l| l.ends_with(&format!(" {want}")))
            .unwrap_or_else(|| panic!("{want} in\n{list}"));
        assert!(line.contains(" 0/0 "), "owned by root: {line}");
    }
    assert!(list
        .lines()
        .any(|l| l.ends_with(" bin/busybox") || l.contains(" bin/")));

    // A bad option is refused before anything runs.
    let bad = build(&case, &["-o", "type=oci,dest=x.tar,compression=lz4"], &[]);
    bad.expect_failure("compression=\"lz4\"");
}

const REPRO: &str = r#"FROM REGISTRY/library/busybox
RUN echo made-now > /stamp && mkdir -p /var/data && date > /dev/null
COPY file /copied
"#;

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn source_date_epoch_gives_the_same_digest_from_two_stores() {
    let mut digests = Vec::new();
    for _ in 0..2 {
        let case = Case::new(REPRO);
        case.file("file", "content\n");
        // Different context mtimes and run times on each pass.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let (g, z) = (
            case.path("g.tar").to_str().expect("utf8").to_string(),
            case.path("z.tar").to_str().expect("utf8").to_string(),
        );
        build(
            &case,
            &[
                "-o",
                &format!("type=oci,dest={g},rewrite-timestamp=true"),
                "-o",
                &format!("type=oci,dest={z},rewrite-timestamp=true,compression=zstd"),
                "-t",
                "repro:1",
            ],
            &[("SOURCE_DATE_EPOCH", "1700000000")],
        )
        .expect_ok();
        let mut pair = Vec::new();
        for archive in [&g, &z] {
            let raw = tool(
                "skopeo",
                &["inspect", "--raw", &format!("oci-archive:{archive}")],
            );
            let f = case.path("m.json");
            fs::write(&f, raw).expect("write");
            pair.push(
                tool("skopeo", &["manifest-digest", f.to_str().expect("utf8")])
                    .trim()
                    .to_string(),
            );
        }
        let config = image_config(&format!("oci-archive:{g}"));
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");
        let own = config["history"].as_array().expect("history");
        assert_eq!(
            own.last().expect("row")["created"],
            "2023-11-14T22:13:20Z",
            "{config}"
        );
        // File times in kiln's own layers (RUN, COPY) are clamped; umoci unpacks it.
        umoci_unpack(&case, Path::new(&g), "1");
        let m = json(&tool(
            "skopeo",
            &["inspect", "--raw", &format!("oci-archive:{g}")],
        ));
        for i in [1, 2] {
            let d = m["layers"][i]["digest"].as_str().expect("digest");
            let blob = case.path(&format!("layout/blobs/sha256/{}", &d[7..]));
            let files = tool(
                "tar",
                &["-tvzf", blob.to_str().expect("utf8"), "--full-time"],
            );
            for l in files.lines() {
                let date = l
                    .split_whitespace()
                    .find(|w| w.len() == 10 && w.as_bytes()[4] == b'-')
                    .expect("a date");
                assert!(date <= "2023-11-14", "clamped: {l}");
            }
        }
        digests.push(pair);
    }
    assert_eq!(
        digests[0], digests[1],
        "gzip and zstd images are reproducible"
    );
    assert_ne!(digests[0][0], digests[0][1]);
}
