//! Owners without a subordinate id range: a RUN's chown calls are recorded (in the
//! `user.rootlesscontainers` xattr), read back by stat in that step and later ones, and
//! land in the layer, which is the one a build with a range makes.

use super::Case;
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;

const OWNERS: &str = r#"FROM REGISTRY/library/debian:bookworm-slim
RUN mkdir -p /srv/app/sub /data && echo x > /srv/app/sub/f && echo y > /data/f \
 && chown -R 1234:1234 /srv/app && chown 1000 /data/f && chown :2000 /data/f \
 && install -o 33 -g 44 -m 0644 /etc/os-release /srv/conf \
 && cp -a /srv/app /srv/copy \
 && cp /bin/true /srv/tool && chmod 4755 /srv/tool && chown 5:5 /srv/tool \
 && stat -c '%u:%g %a %n' /srv/app /srv/app/sub/f /data/f /srv/conf /srv/copy/sub/f /srv/tool > /srv/seen
RUN stat -c '%u:%g %n' /data/f /srv/copy > /srv/seen-later && chown 0:0 /srv/copy
"#;

/// One entry of a layer, as its tar header has it.
pub(super) struct Entry {
    pub uid: u64,
    pub gid: u64,
    pub mode: u32,
    /// The file's content, for the paths asked for.
    pub content: String,
}

/// Every entry of the image's layers but the first (the base), by path, from the OCI
/// archive `archive`, read with the tar crate; with the content of the regular files
/// whose path `content_of` accepts.
pub(super) fn layer_entries(
    archive: &std::path::Path,
    content_of: impl Fn(&str) -> bool,
) -> BTreeMap<String, Entry> {
    let read = |name: &str| -> Vec<u8> {
        let mut ar = tar::Archive::new(fs::File::open(archive).expect("archive"));
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            if e.path().expect("path").to_string_lossy() == name {
                let mut v = Vec::new();
                e.read_to_end(&mut v).expect("read");
                return v;
            }
        }
        panic!("{name} is not in {}", archive.display())
    };
    let json = |b: Vec<u8>| -> serde_json::Value { serde_json::from_slice(&b).expect("json") };
    let blob = |d: &serde_json::Value| {
        read(&format!(
            "blobs/sha256/{}",
            &d.as_str().expect("digest")[7..]
        ))
    };
    let index = json(read("index.json"));
    let manifest = json(blob(&index["manifests"][0]["digest"]));
    let mut out = BTreeMap::new();
    for l in manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .skip(1)
    {
        let gz = blob(&l["digest"]);
        let mut t = tar::Archive::new(flate2::read::MultiGzDecoder::new(&gz[..]));
        for e in t.entries().expect("layer") {
            let mut e = e.expect("entry");
            let h = e.header().clone();
            let path = e
                .path()
                .expect("path")
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            let mut content = String::new();
            if h.entry_type().is_file() && content_of(&path) {
                e.read_to_string(&mut content).expect("content");
            }
            let entry = Entry {
                uid: h.uid().expect("uid"),
                gid: h.gid().expect("gid"),
                mode: h.mode().expect("mode") & 0o7777,
                content,
            };
            out.insert(path, entry);
        }
    }
    out
}

/// path -> "uid:gid mode [content]" of [`layer_entries`], with the content of the
/// `seen` files.
fn entries(archive: &std::path::Path) -> BTreeMap<String, String> {
    layer_entries(archive, |p| p.contains("seen"))
        .into_iter()
        .map(|(p, e)| (p, format!("{}:{} {:o} {}", e.uid, e.gid, e.mode, e.content)))
        .collect()
}

/// Builds `case` into an OCI archive (image `TAG:1`), with `env`: the archive's path,
/// and the build.
fn build_oci(case: &Case, tag: &str, env: &[(&str, &str)]) -> (std::path::PathBuf, super::Run) {
    let archive = case.path("out.tar");
    let run = super::store::build(
        case,
        &[
            "-o",
            &format!("type=oci,dest={}", archive.display()),
            "-t",
            &format!("{tag}:1"),
        ],
        env,
    )
    .expect_ok();
    (archive, run)
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn chown_without_a_subordinate_range_lands_in_the_layer_and_reads_back() {
    let mut built = Vec::new();
    for single in [true, false] {
        let case = Case::new(OWNERS);
        let env: &[(&str, &str)] = if single {
            &[("KILN_IDMAP", "single")]
        } else {
            &[]
        };
        let (archive, run) = build_oci(&case, "owners", env);
        let mode = if single {
            "single id"
        } else {
            "subordinate ids"
        };
        assert!(
            run.stderr.contains(&format!("identity mapping: {mode}")),
            "{}",
            run.stderr
        );
        built.push((mode, entries(&archive)));
    }
    let (_, single) = &built[0];
    for (path, want) in [
        ("srv/app", "1234:1234 755 "),
        ("srv/app/sub/f", "1234:1234 644 "),
        ("data/f", "1000:2000 644 "),
        ("srv/conf", "33:44 644 "),
        ("srv/copy/sub/f", "1234:1234 644 "),
        // chown clears the set-user-ID bit, as Linux does.
        ("srv/tool", "5:5 755 "),
        ("srv/copy", "0:0 755 "),
    ] {
        assert_eq!(
            single.get(path).map(String::as_str),
            Some(want),
            "{path}: {single:#?}"
        );
    }
    // stat saw the recorded owners, in the step and in the next one.
    let seen = &single["srv/seen"];
    for line in [
        "1234:1234 755 /srv/app",
        "1000:2000 644 /data/f",
        "33:44 644 /srv/conf",
        "1234:1234 644 /srv/copy/sub/f",
        "5:5 755 /srv/tool",
    ] {
        assert!(seen.contains(line), "{line:?} in {seen}");
    }
    let later = &single["srv/seen-later"];
    assert!(
        later.contains("1000:2000 /data/f") && later.contains("1234:1234 /srv/copy"),
        "{later}"
    );
    // The same layers as a build with a subordinate range makes.
    assert_eq!(built[0].1, built[1].1);
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn switching_user_works_without_a_subordinate_range() {
    // busybox's su: setgroups, setgid, setuid, then the shell; the ids it switched to
    // are what the shell sees, and its parent keeps root's.
    let case = Case::new(
        "FROM REGISTRY/library/busybox:latest\n\
         RUN su -s /bin/sh nobody -c 'id -u; id -g; id -G' > /ids && id -u >> /ids\n",
    );
    let (archive, _) = build_oci(&case, "ids", &[("KILN_IDMAP", "single")]);
    let rootfs = super::umoci_unpack(&case, &archive, "1");
    let ids = fs::read_to_string(rootfs.join("ids")).expect("ids");
    assert_eq!(ids, "65534\n65534\n65534\n0\n");
}

/// The package install the issue names: apt-get update and install from a local
/// repository (apt drops to `_apt`; dpkg sets owners from the package; its postinst
/// makes a system user and gives it a directory), then useradd and chown -R.
pub(super) fn apt_dockerfile(repo: &super::AptRepo) -> String {
    format!(
        "FROM REGISTRY/library/debian-apt:bookworm\n\
         RUN {} && apt-get update && apt-get install -y --no-install-recommends kiln-test-owned \\\n\
          && stat -c '%U:%G %n' /var/www/kiln-test/index.html /var/lib/kiln-test /var/lib/apt/lists/partial > /seen\n\
         RUN useradd -m -u 1234 app && chown -R app:app /home/app && stat -c '%U:%G %n' /home/app/.bashrc >> /seen\n\
         USER app\n\
         RUN touch /home/app/x && mkdir /home/app/made && id -u > /home/app/made/id \\\n\
          && ! chown root /home/app/x 2>/dev/null\n\
         RUN stat -c '%U:%G %n' /home/app/x >> /home/app/made/id\n",
        repo.sources()
    )
}

/// The owners of what the install and useradd touched, and what stat said.
pub(super) const APT_EXPECTED: [(&str, &str); 8] = [
    ("var/www/kiln-test/index.html", "33:33 644 "),
    ("home/app", "1234:1234 755 "),
    ("home/app/.bashrc", "1234:1234 644 "),
    ("etc/shadow", "0:42 640 "),
    // Made by the USER's RUN.
    ("home/app/x", "1234:1234 644 "),
    ("home/app/made", "1234:1234 755 "),
    ("home/app/made/id", "1234:1234 644 "),
    ("seen", ""),
];

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn apt_get_install_and_useradd_work_without_a_subordinate_range() {
    let repo = super::AptRepo::start();
    let mut built = Vec::new();
    for single in [true, false] {
        let case = Case::new(&apt_dockerfile(&repo));
        let env: &[(&str, &str)] = if single {
            &[("KILN_IDMAP", "single")]
        } else {
            &[]
        };
        let (archive, run) = build_oci(&case, "apt", env);
        for bad in ["setgroups", "W: chown", "Can not write log", "E: "] {
            assert!(!run.stderr.contains(bad), "{bad:?} in\n{}", run.stderr);
        }
        let rootfs = super::umoci_unpack(&case, &archive, "1");
        let seen = fs::read_to_string(rootfs.join("seen")).expect("seen");
        assert_eq!(
            seen,
            "www-data:www-data /var/www/kiln-test/index.html\n\
             kilnsvc:kilnsvc /var/lib/kiln-test\n\
             _apt:root /var/lib/apt/lists/partial\n\
             app:app /home/app/.bashrc\n",
            "single id: {single}"
        );
        let id = fs::read_to_string(rootfs.join("home/app/made/id")).expect("id");
        assert_eq!(id, "1234\napp:app /home/app/x\n", "single id: {single}");
        built.push(entries(&archive));
    }
    let svc = |e: &BTreeMap<String, String>| e.get("var/lib/kiln-test").cloned();
    for (path, want) in APT_EXPECTED.iter().filter(|(_, w)| !w.is_empty()) {
        assert_eq!(
            built[0].get(*path).map(String::as_str),
            Some(*want),
            "{path}"
        );
    }
    // The same owners with and without a range, the system user's included.
    for path in APT_EXPECTED
        .iter()
        .map(|(p, _)| *p)
        .chain(["var/lib/kiln-test", "var/www/kiln-test"])
    {
        assert_eq!(built[0].get(path), built[1].get(path), "{path}");
    }
    assert!(svc(&built[0]).is_some_and(|o| o.ends_with(" 750 ") && !o.starts_with("0:")));
}

/// The seed tutorial's kind of app: a python base, a package from apt, a user, Flask
/// from a package index into a venv, the app, and its CMD run as the user.
#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn a_flask_app_builds_without_a_subordinate_range() {
    let (repo, wheels) = (super::AptRepo::start(), super::AptRepo::wheels());
    let case = Case::new(&format!(
        "FROM REGISTRY/library/debian-python:bookworm\n\
         RUN {} && apt-get update && apt-get install -y --no-install-recommends kiln-test-owned\n\
         RUN useradd -m -u 1234 app\n\
         WORKDIR /app\n\
         RUN python3 -m venv /app/venv \\\n\
          && /app/venv/bin/pip install -q --no-index --find-links {} flask\n\
         COPY app.py /app/\n\
         RUN chown -R app:app /app\n\
         USER app\n\
         CMD [\"/app/venv/bin/python\", \"/app/app.py\"]\n\
         RUN /app/venv/bin/python /app/app.py > /app/answer\n",
        repo.sources(),
        wheels.url()
    ));
    case.file(
        "app.py",
        "import os\nfrom flask import Flask\napp = Flask(__name__)\n\
         @app.get('/')\ndef hello():\n    return f'hello from uid {os.getuid()}'\n\
         if __name__ == '__main__':\n    print(app.test_client().get('/').get_data(as_text=True))\n",
    );
    let (archive, _) = build_oci(&case, "flask", &[("KILN_IDMAP", "single")]);
    let e = entries(&archive);
    assert_eq!(
        e.get("app/answer").map(|s| s.split(' ').next()),
        Some(Some("1234:1234")),
        "{e:#?}"
    );
    assert!(e
        .keys()
        .any(|k| k.starts_with("app/venv/lib/python3.11/site-packages/flask/")));
    let rootfs = super::umoci_unpack(&case, &archive, "1");
    let answer = fs::read_to_string(rootfs.join("app/answer")).expect("answer");
    assert_eq!(answer, "hello from uid 1234\n");
}

/// The supervisor acts for the RUN with the RUN's view: a path that names a file of
/// the host (the user's own, which the supervisor's process could otherwise change)
/// resolves inside the rootfs, as it does for the RUN.
#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn a_run_cannot_make_the_supervisor_touch_host_files() {
    let case = Case::new("");
    let canary = case.path("canary");
    fs::write(&canary, "host file\n").expect("canary");
    let host = canary.display().to_string();
    case.file(
        "Dockerfile",
        &format!(
            "FROM {}/library/debian-python:bookworm\n\
             RUN ln -s {host} /link && cd /tmp && python3 <<'PY'\n\
             import os\n\
             for p in ['{host}', '../../../..{host}', '/link', '/proc/1/root{host}']:\n\
             \x20   try:\n\
             \x20       os.chown(p, 1000, 1000)\n\
             \x20       print('changed', p)\n\
             \x20   except OSError as e:\n\
             \x20       print(p, e)\n\
             PY\n",
            super::registry()
        ),
    );
    let run = super::store::build(&case, &[], &[("KILN_IDMAP", "single")]).expect_ok();
    // Each one is a path the rootfs does not have.
    assert_eq!(
        run.stderr.matches("No such file or directory").count(),
        4,
        "{}",
        run.stderr
    );
    let xattr = std::process::Command::new("getfattr")
        .args(["-h", "-d", "-m", "-"])
        .arg(&canary)
        .output()
        .expect("getfattr");
    let listed = String::from_utf8_lossy(&xattr.stdout);
    assert!(
        !listed.contains("rootlesscontainers"),
        "the host file was changed: {listed}"
    );
}
