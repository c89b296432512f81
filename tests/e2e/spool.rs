//! The step that makes an exported archive's top layer writes it straight into the
//! archive; the store keeps the snapshot and makes the blob again when a later export
//! needs it.

use super::*;

const TOP: &str = r#"
FROM REGISTRY/library/busybox:latest
RUN seq 1 200000 > /numbers && mkdir /d && echo x > /d/f
"#;

/// The layer digests of `reference`, read with skopeo.
fn layers(reference: &str) -> Vec<String> {
    json(&tool(
        "skopeo",
        &["inspect", "--tls-verify=false", reference],
    ))["Layers"]
        .as_array()
        .expect("Layers")
        .iter()
        .map(|d| d.as_str().expect("a digest").to_string())
        .collect()
}

/// Files kiln left beside an output (`.NAME.kiln-PID...tmp`).
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".kiln-"))
        .collect()
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn top_layer_is_written_into_the_archive_and_made_again_for_a_push() {
    let case = Case::new(TOP);
    let archive = case.path("out/image.tar");
    fs::create_dir(case.path("out")).expect("mkdir");
    let oci = format!("type=oci,dest={},compression=zstd", archive.display());
    case.build(&["-t", "e2e/spool:1", "-o", &oci]).expect_ok();
    assert_eq!(leftovers(&case.path("out")), Vec::<String>::new());

    let in_archive = layers(&format!("oci-archive:{}", archive.display()));
    let top = in_archive.last().expect("a top layer").clone();
    let hex = top.strip_prefix("sha256:").expect("sha256");
    // The layer is the archive's first file (after the blob directories), and the store
    // holds no copy of it.
    let listing = tool("tar", &["-tf", archive.to_str().expect("utf8")]);
    assert_eq!(
        listing.lines().take(3).collect::<Vec<_>>(),
        ["blobs", "blobs/sha256", &format!("blobs/sha256/{hex}")]
    );
    let blob_in_store = case.path(&format!("store/blobs/sha256/{hex}"));
    assert!(!blob_in_store.exists());
    // Every blob checks out (skopeo verifies digests as it copies; gzip for umoci, which
    // reads no zstd), and the files are the step's.
    let copied = case.path("copied");
    tool(
        "skopeo",
        &[
            "copy",
            "--dest-compress-format",
            "gzip",
            &format!("oci-archive:{}", archive.display()),
            &format!("oci:{}:x", copied.display()),
        ],
    );
    let rootfs = umoci_unpack_layout(&copied, "x", &case.path("bundle"));
    let numbers = fs::read_to_string(rootfs.join("numbers")).expect("numbers");
    assert_eq!(numbers.lines().count(), 200_000);
    assert_eq!(fs::read_to_string(rootfs.join("d/f")).expect("d/f"), "x\n");

    // A cached build pushed to the registry needs the blob: it is made again from the
    // snapshot, with the same digest.
    let name = format!("{}/e2e/spool-{}:1", registry(), std::process::id());
    let push = case
        .build(&["-o", &format!("type=registry,name={name},compression=zstd")])
        .expect_ok();
    assert!(push.step_ended("RUN seq", "CACHED"), "{}", push.stderr);
    assert!(
        push.stderr
            .contains(&format!("making layer {top} again from its snapshot")),
        "{}",
        push.stderr
    );
    assert!(blob_in_store.exists());
    assert_eq!(layers(&format!("docker://{name}")), in_archive);
    let pushed_config = json(&tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--raw",
            "--config",
            &format!("docker://{name}"),
        ],
    ));
    assert_eq!(
        pushed_config,
        image_config(&format!("oci-archive:{}", archive.display()))
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn a_failed_step_leaves_no_archive_and_no_temp_file() {
    let case = Case::new("FROM REGISTRY/library/busybox:latest\nRUN echo partial > /p && exit 3\n");
    let archive = case.path("image.tar");
    let run = case.build(&["-o", &format!("type=oci,dest={}", archive.display())]);
    assert!(!run.ok, "{}", run.stderr);
    assert!(!archive.exists());
    assert_eq!(leftovers(case.dir.path()), Vec::<String>::new());
}
