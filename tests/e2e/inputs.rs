//! Build inputs other than a context directory: stdin contexts and Dockerfiles, and
//! RUN mounts that write or start from a stage.

use super::{kiln_bin, Case, Run};
use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};

/// `kiln build --progress plain ARGS` with `stdin` on its standard input.
fn build_stdin(case: &Case, args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(kiln_bin())
        .arg("build")
        .arg("--root")
        .arg(case.path("store"))
        .args(["--progress", "plain"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln");
    let mut pipe = child.stdin.take().expect("stdin");
    // kiln may stop reading early (a bad tar): a broken pipe is its answer, not ours.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    Run::from(child.wait_with_output().expect("wait"))
}

/// A tar of `files` (name, content), as `tar -c` makes one.
fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, content.as_bytes())
            .expect("append");
    }
    b.into_inner().expect("tar")
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn contexts_and_dockerfiles_come_from_stdin_as_with_docker_build() {
    let case = Case::new("");
    let reg = super::registry();
    let dockerfile =
        format!("FROM {reg}/library/busybox:latest\nCOPY greeting /g\nRUN cat /g > /seen\n");
    let out = case.path("out");
    let dest = format!("type=local,dest={}", out.display());
    // A tar context on stdin, its Dockerfile inside.
    let tar = tar_of(&[("Dockerfile", &dockerfile), ("greeting", "from a tar\n")]);
    build_stdin(&case, &["-o", &dest, "-"], &tar).expect_ok();
    assert_eq!(
        fs::read_to_string(out.join("seen")).expect("seen"),
        "from a tar\n"
    );
    // Gzipped.
    let tar = tar_of(&[("Dockerfile", &dockerfile), ("greeting", "from a tar.gz\n")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gz");
    build_stdin(&case, &["-o", &dest, "-"], &gz.finish().expect("gz")).expect_ok();
    assert_eq!(
        fs::read_to_string(out.join("seen")).expect("seen"),
        "from a tar.gz\n"
    );
    // A Dockerfile on stdin for a context directory: the context's own is not read.
    case.file("Dockerfile", "FROM scratch\nthis is not read\n");
    case.file("greeting", "from the directory\n");
    let ctx = case.ctx();
    build_stdin(
        &case,
        &["-f", "-", "-o", &dest, ctx.to_str().expect("utf8")],
        dockerfile.as_bytes(),
    )
    .expect_ok();
    assert_eq!(
        fs::read_to_string(out.join("seen")).expect("seen"),
        "from the directory\n"
    );
    // A Dockerfile alone on stdin: an empty context.
    let alone = format!("FROM {reg}/library/busybox:latest\nRUN echo alone > /seen\n");
    build_stdin(&case, &["-o", &dest, "-"], alone.as_bytes()).expect_ok();
    assert_eq!(
        fs::read_to_string(out.join("seen")).expect("seen"),
        "alone\n"
    );
    // A tar that writes outside its directory is refused, and writes nothing there.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    let evil = b"escaped\n";
    h.set_size(evil.len() as u64);
    h.set_mode(0o644);
    // Set the raw name: tar's own path setter refuses `..`.
    h.as_gnu_mut().expect("gnu").name[..14].copy_from_slice(b"../escaped.txt");
    h.set_cksum();
    b.append(&h, &evil[..]).expect("append");
    let run = build_stdin(&case, &["-"], &b.into_inner().expect("tar"));
    run.expect_failure("the context tar on stdin");
    assert!(!std::env::temp_dir().join("escaped.txt").exists());
    // Both from stdin: a clear error.
    let run = build_stdin(&case, &["-f", "-", "-"], b"");
    run.expect_failure("the context and the Dockerfile cannot both be read from stdin");
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn cache_mounts_start_from_a_stage_and_rw_binds_write_a_copy() {
    let case = Case::new(
        "FROM REGISTRY/library/busybox:latest AS seed\n\
         RUN mkdir -p /seeddir && echo seeded > /seeddir/a && chown 1234:1234 /seeddir/a\n\
         FROM REGISTRY/library/busybox:latest\n\
         RUN --mount=type=cache,target=/c,from=seed,source=/seeddir \
             cat /c/a > /first && stat -c %u:%g /c/a > /owner && echo more > /c/b\n\
         RUN --mount=type=cache,target=/c,from=seed,source=/seeddir ls /c > /second\n\
         RUN --mount=type=bind,from=seed,source=/seeddir,target=/b,rw \
             echo changed > /b/a && cat /b/a > /rw\n\
         RUN --mount=type=bind,from=seed,source=/seeddir,target=/b cat /b/a > /ro\n\
         RUN --mount=type=bind,target=/ctx,rw echo x > /ctx/new && ls /ctx > /ctxls\n",
    );
    case.file("kept", "k\n");
    let out = case.path("out");
    let dest = format!("type=local,dest={}", out.display());
    case.build(&["-o", &dest]).expect_ok();
    let read = |f: &str| fs::read_to_string(out.join(f)).expect("read");
    // The new cache is the stage's directory, owners and all; later RUNs share it.
    assert_eq!(read("first"), "seeded\n");
    assert_eq!(read("owner"), "1234:1234\n");
    assert_eq!(read("second"), "a\nb\n");
    // A rw bind's writes are the RUN's alone: the next bind of the same stage, and the
    // context, are as they were.
    assert_eq!(read("rw"), "changed\n");
    assert_eq!(read("ro"), "seeded\n");
    assert!(read("ctxls").contains("new\n") && read("ctxls").contains("kept\n"));
    assert!(!case.ctx().join("new").exists(), "the context was written");
    assert!(!out.join("b").exists() && !out.join("ctx").exists());
}

/// An HTTP server of the test's own on 127.0.0.1, serving `dir` with ETags (a file's
/// sha256), Last-Modified and conditional GETs, `/named/FILE` with a
/// Content-Disposition, and writing one line per request (`GET /path STATUS`) to `log`.
struct Http {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

const HTTP_SERVER: &str = r#"
import email.utils, hashlib, http.server, os, sys
root, log = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        named = self.path.startswith('/named/')
        rel = self.path[len('/named/'):] if named else self.path.lstrip('/')
        p = os.path.join(root, rel)
        status = 404
        if os.path.isfile(p):
            data = open(p, 'rb').read()
            etag = '"' + hashlib.sha256(data).hexdigest() + '"'
            if self.headers.get('If-None-Match') == etag:
                status = 304
                self.send_response(304)
                self.send_header('ETag', etag)
                self.end_headers()
            else:
                status = 200
                self.send_response(200)
                self.send_header('ETag', etag)
                self.send_header('Last-Modified', email.utils.formatdate(os.path.getmtime(p), usegmt=True))
                self.send_header('Content-Length', str(len(data)))
                if named:
                    self.send_header('Content-Disposition', 'attachment; filename="from-header.txt"')
                self.end_headers()
                self.wfile.write(data)
        else:
            self.send_response(404)
            self.end_headers()
        with open(log, 'a') as f:
            f.write('GET %s %d\n' % (self.path, status))
s = http.server.HTTPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

impl Http {
    fn start(case: &Case, dir: &std::path::Path) -> Http {
        use std::io::BufRead;
        let log = case.path("http.log");
        let mut child = Command::new("python3")
            .args(["-c", HTTP_SERVER])
            .arg(dir)
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port");
        let port = line.trim().parse().expect("port number");
        Http { child, port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// The requests since the last call.
    fn requests(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let _ = fs::write(&self.log, "");
        text.lines().map(str::to_string).collect()
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn add_from_a_url_downloads_once_and_checks_its_checksum() {
    let case = Case::new("");
    let served = case.path("served");
    fs::create_dir_all(&served).expect("mkdir");
    fs::write(served.join("hello.txt"), "hello from http\n").expect("write");
    fs::write(served.join("report.csv"), "a,b\n").expect("write");
    // A tarball: ADD copies it as it is.
    let tar = tar_of(&[("inside", "x\n")]);
    fs::write(served.join("t.tar"), &tar).expect("write");
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(served.join("hello.txt"))
        .expect("open")
        .set_modified(old)
        .expect("mtime");
    let http = Http::start(&case, &served);
    let reg = super::registry();
    let sum = format!("sha256:{}", {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"hello from http\n"))
    });
    case.file(
        "Dockerfile",
        &format!(
            "FROM {reg}/library/busybox:latest\n\
             ADD --checksum={sum} {} /hello.txt\n\
             ADD {} /dir/\n\
             ADD {} /t.tar\n\
             RUN stat -c '%a %Y' /hello.txt > /stat && ls /dir > /dirls\n",
            http.url("hello.txt"),
            http.url("named/report.csv"),
            http.url("t.tar")
        ),
    );
    let out = case.path("out");
    let dest = format!("type=local,dest={}", out.display());
    let read = |f: &str| fs::read(out.join(f)).expect("read");
    case.build(&["-o", &dest]).expect_ok();
    assert_eq!(read("hello.txt"), b"hello from http\n");
    // BuildKit's http source: mode 0600, the server's Last-Modified as the time.
    assert_eq!(String::from_utf8_lossy(&read("stat")), "600 1600000000\n");
    // The URL names the file, whatever Content-Disposition says (BuildKit's frontend
    // gives its http source the name); the tarball is not unpacked.
    assert_eq!(String::from_utf8_lossy(&read("dirls")), "report.csv\n");
    assert_eq!(read("t.tar"), tar);
    let first = http.requests();
    assert_eq!(
        first.iter().filter(|l| l.ends_with(" 200")).count(),
        3,
        "{first:?}"
    );
    // Again: one conditional request per URL, nothing downloaded, every step cached.
    let run = case.build(&["-o", &dest]).expect_ok();
    let again = http.requests();
    assert_eq!(again.len(), 3, "{again:?}");
    assert!(again.iter().all(|l| l.ends_with(" 304")), "{again:?}");
    assert!(run.step_ended("ADD --checksum", "CACHED"), "{}", run.stderr);
    // A changed file is downloaded again, and the step runs.
    fs::write(served.join("t.tar"), b"not a tar any more\n").expect("write");
    let run = case.build(&["-o", &dest]).expect_ok();
    assert!(!run.step_ended("t.tar /t.tar", "CACHED"), "{}", run.stderr);
    assert_eq!(read("t.tar"), b"not a tar any more\n");
    let _ = http.requests();
    // URLs and context files in one ADD: one step, cached until either changes.
    case.file("local.txt", "local\n");
    case.file(
        "Dockerfile",
        &format!(
            "FROM {reg}/library/busybox:latest\nADD {} local.txt /mixed/\n",
            http.url("hello.txt")
        ),
    );
    case.build(&["-o", &dest]).expect_ok();
    assert_eq!(read("mixed/hello.txt"), b"hello from http\n");
    assert_eq!(read("mixed/local.txt"), b"local\n");
    let run = case.build(&["-o", &dest]).expect_ok();
    assert!(
        run.step_ended("local.txt /mixed/", "CACHED"),
        "{}",
        run.stderr
    );
    case.file("local.txt", "local 2\n");
    let run = case.build(&["-o", &dest]).expect_ok();
    assert!(
        !run.step_ended("local.txt /mixed/", "CACHED"),
        "{}",
        run.stderr
    );
    assert_eq!(read("mixed/local.txt"), b"local 2\n");
    let _ = http.requests();
    // A wrong checksum, an unreachable server, a missing file: errors naming the URL.
    let wrong = format!("sha256:{}", "0".repeat(64));
    for (df, want) in [
        (
            format!(
                "FROM {reg}/library/busybox:latest\nADD --checksum={wrong} {} /x\n",
                http.url("hello.txt")
            ),
            format!(
                "ADD {}: digest mismatch: the file is {sum}, --checksum says {wrong}",
                http.url("hello.txt")
            ),
        ),
        (
            format!("FROM {reg}/library/busybox:latest\nADD http://127.0.0.1:9/gone.txt /x\n"),
            "ADD http://127.0.0.1:9/gone.txt: ".to_string(),
        ),
        (
            format!(
                "FROM {reg}/library/busybox:latest\nADD {} /x\n",
                http.url("missing.txt")
            ),
            format!(
                "ADD {}: the server answered 404 Not Found",
                http.url("missing.txt")
            ),
        ),
    ] {
        case.file("Dockerfile", &df);
        let run = case.build(&[]);
        assert!(!run.ok, "{df}");
        assert!(
            run.stderr.contains(&want),
            "want {want:?} in:\n{}",
            run.stderr
        );
    }
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn add_unpacks_bzip2_and_xz_archives_of_the_context() {
    let case = Case::new(
        "FROM REGISTRY/library/busybox:latest\nADD a.tar.bz2 /bz/\nADD a.tar.xz /xz/\nADD plain.bz2 /plain/\n",
    );
    let tar = tar_of(&[("inside/file", "packed\n")]);
    fs::write(case.path("a.tar"), &tar).expect("tar");
    // Made by Python's own bz2 and lzma modules, not by the code that reads them.
    let script = "import bz2, lzma, sys\n\
        d = open(sys.argv[1], 'rb').read()\n\
        open(sys.argv[2], 'wb').write(bz2.compress(d))\n\
        open(sys.argv[3], 'wb').write(lzma.compress(d, format=lzma.FORMAT_XZ))\n\
        open(sys.argv[4], 'wb').write(bz2.compress(b'not a tar\\n'))\n";
    let ok = Command::new("python3")
        .args(["-c", script])
        .arg(case.path("a.tar"))
        .arg(case.ctx().join("a.tar.bz2"))
        .arg(case.ctx().join("a.tar.xz"))
        .arg(case.ctx().join("plain.bz2"))
        .status()
        .expect("python3");
    assert!(ok.success());
    let out = case.path("out");
    case.build(&["-o", &format!("type=local,dest={}", out.display())])
        .expect_ok();
    for d in ["bz", "xz"] {
        assert_eq!(
            fs::read_to_string(out.join(d).join("inside/file")).expect(d),
            "packed\n"
        );
    }
    // A compressed file that is no tar is copied as it is, as BuildKit does.
    assert_eq!(
        fs::read(out.join("plain/plain.bz2")).expect("plain"),
        fs::read(case.ctx().join("plain.bz2")).expect("ctx")
    );
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn named_build_contexts_stand_for_stages_images_and_directories() {
    let reg = super::registry();
    let case = Case::new(
        "FROM REGISTRY/library/busybox:latest AS tools\n\
         RUN echo from-the-stage > /tool\n\
         FROM base\n\
         COPY --from=tools /tool /tool\n\
         COPY --from=assets /logo.txt /logo.txt\n\
         RUN --mount=from=assets,target=/a cat /a/logo.txt > /mounted\n\
         RUN cat /etc/os-release | head -1 > /base\n",
    );
    let assets = case.path("assets");
    fs::create_dir_all(&assets).expect("mkdir");
    fs::write(assets.join("logo.txt"), "logo\n").expect("write");
    let tool_dir = case.path("tool-dir");
    fs::create_dir_all(&tool_dir).expect("mkdir");
    fs::write(tool_dir.join("tool"), "from-a-directory\n").expect("write");
    let out = case.path("out");
    let dest = format!("type=local,dest={}", out.display());
    let read = |f: &str| fs::read_to_string(out.join(f)).expect("read");
    let base = format!("base=docker-image://{reg}/library/debian:bookworm-slim");
    let assets_ctx = format!("assets={}", assets.display());
    // `base` is an image, `assets` a directory; `tools` is the stage.
    case.build(&[
        "--build-context",
        &base,
        "--build-context",
        &assets_ctx,
        "-o",
        &dest,
    ])
    .expect_ok();
    assert!(
        read("base").to_lowercase().contains("debian"),
        "{}",
        read("base")
    );
    assert_eq!(read("tool"), "from-the-stage\n");
    assert_eq!(read("logo.txt"), "logo\n");
    assert_eq!(read("mounted"), "logo\n");
    // A context named as a stage replaces the stage (its RUN does not run).
    let tools_ctx = format!("tools={}", tool_dir.display());
    let run = case
        .build(&[
            "--build-context",
            &base,
            "--build-context",
            &assets_ctx,
            "--build-context",
            &tools_ctx,
            "-o",
            &dest,
        ])
        .expect_ok();
    assert_eq!(read("tool"), "from-a-directory\n");
    assert!(
        !run.stderr.contains("RUN echo from-the-stage"),
        "{}",
        run.stderr
    );
    // A changed directory is read again; an unchanged one is cached.
    fs::write(assets.join("logo.txt"), "logo 2\n").expect("write");
    let run = case
        .build(&[
            "--build-context",
            &base,
            "--build-context",
            &assets_ctx,
            "-o",
            &dest,
        ])
        .expect_ok();
    assert_eq!(read("logo.txt"), "logo 2\n");
    assert!(
        !run.step_ended("COPY --from=assets", "CACHED"),
        "{}",
        run.stderr
    );
    for (arg, want) in [
        ("nope", "expected NAME=VALUE"),
        (
            "x=/does/not/exist",
            "--build-context \"x=/does/not/exist\": reading",
        ),
        ("x=ftp://example.invalid/x", "unknown kind of context"),
    ] {
        let run = case.build(&["--build-context", arg]);
        assert!(!run.ok);
        assert!(run.stderr.contains(want), "{arg}: {}", run.stderr);
    }
}

/// A `git daemon` of the test's own on 127.0.0.1, serving `root` (git:// URLs).
struct GitDaemon {
    child: std::process::Child,
    port: u16,
}

impl GitDaemon {
    fn start(root: &std::path::Path) -> GitDaemon {
        // A free port: bound, released, given to the daemon.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        // git-daemon itself, not `git daemon`, which would leave it behind when killed.
        let exec_path = Command::new("git")
            .arg("--exec-path")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .expect("git --exec-path");
        let child = Command::new(std::path::Path::new(&exec_path).join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", root.display()))
            .arg(root)
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon (apt install git)");
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < until,
                "git daemon did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        GitDaemon { child, port }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=kiln-e2e",
            "-c",
            "user.email=e2e@kiln.invalid",
        ])
        .args(args)
        .status()
        .expect("git");
    assert!(ok.success(), "git {args:?}");
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn git_repositories_are_add_sources_and_build_contexts() {
    let case = Case::new("");
    let served = case.path("served");
    let work = case.path("work");
    fs::create_dir_all(&served).expect("mkdir");
    git(&served, &["init", "-q", "--bare", "repo.git"]);
    fs::create_dir_all(work.join("sub")).expect("mkdir");
    fs::write(work.join("sub/file.txt"), "one\n").expect("write");
    fs::write(work.join("top.txt"), "top\n").expect("write");
    fs::write(
        work.join("Dockerfile"),
        format!(
            "FROM {}/library/busybox:latest\nCOPY sub/file.txt /from-git-context\n",
            super::registry()
        ),
    )
    .expect("write");
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "one"]);
    git(&work, &["tag", "-a", "v1", "-m", "v1"]);
    let bare = served.join("repo.git");
    git(
        &work,
        &["push", "-q", bare.to_str().expect("utf8"), "main", "v1"],
    );
    let daemon = GitDaemon::start(&served);
    let url = format!("git://127.0.0.1:{}/repo.git", daemon.port);
    case.file(
        "Dockerfile",
        &format!(
            "FROM {}/library/busybox:latest\n\
             ADD {url}#main:sub /src/\n\
             ADD --keep-git-dir=true {url}#v1 /full/\n\
             RUN ls -a /full > /full-ls\n",
            super::registry()
        ),
    );
    let out = case.path("out");
    let dest = format!("type=local,dest={}", out.display());
    let read = |f: &str| fs::read_to_string(out.join(f)).expect("read");
    case.build(&["-o", &dest]).expect_ok();
    assert_eq!(read("src/file.txt"), "one\n");
    assert!(!out.join("src/top.txt").exists());
    let ls = read("full-ls");
    assert!(ls.contains(".git\n") && ls.contains("top.txt\n"), "{ls}");
    // The kept .git names neither the store nor its git cache.
    let store = case.path("store");
    let store = store.to_str().expect("utf8");
    let git_files = walk(&out.join("full/.git"));
    assert!(!git_files.is_empty());
    for f in git_files {
        let text = String::from_utf8_lossy(&fs::read(&f).expect("read")).into_owned();
        assert!(
            !text.contains(store),
            "{} names the store:\n{text}",
            f.display()
        );
    }
    // Unchanged: the commit is asked for, nothing fetched, every step cached.
    let run = case.build(&["-o", &dest]).expect_ok();
    assert!(
        run.step_ended("#main:sub /src/", "CACHED"),
        "{}",
        run.stderr
    );
    // A new commit on main: the ADD of main runs again.
    fs::write(work.join("sub/file.txt"), "two\n").expect("write");
    git(&work, &["commit", "-q", "-am", "two"]);
    git(&work, &["push", "-q", bare.to_str().expect("utf8"), "main"]);
    let run = case.build(&["-o", &dest]).expect_ok();
    assert!(
        !run.step_ended("#main:sub /src/", "CACHED"),
        "{}",
        run.stderr
    );
    assert_eq!(read("src/file.txt"), "two\n");
    // The repository as the context itself.
    let ctx_case = Case::new("");
    let ctx_out = ctx_case.path("out");
    let out_arg = format!("type=local,dest={}", ctx_out.display());
    let context = format!("{url}#v1");
    // Git's own trace of the commands kiln runs: the second build asks for the
    // commit (ls-remote) and fetches nothing from the server (the store's git cache
    // has the commit).
    let trace = ctx_case.path("git-trace");
    let trace_env = [("GIT_TRACE", trace.to_str().expect("utf8"))];
    let network_fetches = || {
        let t = fs::read_to_string(&trace).unwrap_or_default();
        let _ = fs::remove_file(&trace);
        let n = t
            .lines()
            .filter(|l| l.contains("built-in: git fetch") && l.contains("git://"))
            .count();
        (n, t.contains("ls-remote"))
    };
    for round in 0..2 {
        super::store::kiln(
            &ctx_case,
            &["build", "--progress", "plain", "-o", &out_arg, &context],
            &trace_env,
        )
        .expect_ok();
        assert_eq!(
            fs::read_to_string(ctx_out.join("from-git-context")).expect("read"),
            "one\n"
        );
        let (fetches, asked) = network_fetches();
        assert!(asked, "round {round}: no ls-remote");
        assert_eq!(fetches, if round == 0 { 1 } else { 0 }, "round {round}");
    }
    // A ref that is not there: an error naming the repository.
    case.file(
        "Dockerfile",
        &format!(
            "FROM {}/library/busybox:latest\nADD {url}#nope /x/\n",
            super::registry()
        ),
    );
    let run = case.build(&[]);
    run.expect_failure(&format!(
        "git source {url}: no branch, tag or commit \"nope\""
    ));
}

/// `kiln build ARGS CONTEXT` in `case`'s store, CONTEXT given as it is (a URL).
fn build_at(case: &Case, args: &[&str], context: &str) -> Run {
    let mut all = vec!["build", "--progress", "plain"];
    all.extend_from_slice(args);
    all.push(context);
    super::store::kiln(case, &all, &[])
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn urls_git_repositories_and_oci_layouts_are_contexts_too() {
    let reg = super::registry();
    let case = Case::new("");
    let served = case.path("served");
    fs::create_dir_all(&served).expect("mkdir");
    // A gzipped tarball of a context, a bare Dockerfile, and a file.
    let tarball = tar_of(&[
        (
            "Dockerfile",
            &format!("FROM {reg}/library/busybox:latest\nCOPY hello.txt /hello.txt\n"),
        ),
        ("hello.txt", "from the tarball\n"),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tarball).expect("gzip");
    fs::write(served.join("ctx.tar.gz"), gz.finish().expect("gzip")).expect("write");
    fs::write(
        served.join("Dockerfile.txt"),
        format!("FROM {reg}/library/busybox:latest\nRUN echo from-a-url > /made\n"),
    )
    .expect("write");
    fs::write(served.join("asset.bin"), "an asset\n").expect("write");
    let http = Http::start(&case, &served);
    let out = case.path("out");
    let dest = format!("type=local,dest={}", out.display());
    let read = |f: &str| fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));

    // A tarball at a URL is the context; a second build asks once and downloads nothing.
    let url = http.url("ctx.tar.gz");
    build_at(&case, &["-o", &dest], &url).expect_ok();
    assert_eq!(read("hello.txt"), "from the tarball\n");
    assert_eq!(http.requests(), ["GET /ctx.tar.gz 200"]);
    let run = build_at(&case, &["-o", &dest], &url).expect_ok();
    assert_eq!(http.requests(), ["GET /ctx.tar.gz 304"]);
    assert!(run.step_ended("COPY hello.txt", "CACHED"), "{}", run.stderr);
    // Any other file at a URL is the Dockerfile.
    build_at(&case, &["-o", &dest], &http.url("Dockerfile.txt")).expect_ok();
    assert_eq!(read("made"), "from-a-url\n");
    // LLB cannot name a context kiln fetched (buildctl reads --local directories).
    let run = build_at(&case, &["--emit-llb"], &url);
    run.expect_failure("--emit-llb needs the context as a directory");
    // Unreachable: the error names the URL.
    let run = build_at(&case, &[], "http://127.0.0.1:1/ctx.tar");
    run.expect_failure("build context http://127.0.0.1:1/ctx.tar: ");

    // Named contexts: an https file (BuildKit's `context`, not unpacked), a git
    // directory, and an image in an OCI layout made by skopeo.
    let repo_root = case.path("git");
    let work = case.path("work");
    fs::create_dir_all(&repo_root).expect("mkdir");
    fs::create_dir_all(work.join("sub")).expect("mkdir");
    fs::write(work.join("sub/in-git.txt"), "from git\n").expect("write");
    git(&repo_root, &["init", "-q", "--bare", "repo.git"]);
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "one"]);
    let bare = repo_root.join("repo.git");
    git(&work, &["push", "-q", bare.to_str().expect("utf8"), "main"]);
    let daemon = GitDaemon::start(&repo_root);
    let layout = case.path("layout");
    let copied = Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{reg}/library/busybox:latest"))
        .arg(format!("oci:{}:v1", layout.display()))
        .status()
        .expect("skopeo");
    assert!(copied.success());
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index")).expect("json");
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    case.file(
        "Dockerfile",
        "FROM img\n\
         COPY --from=web context /asset\n\
         COPY --from=src in-git.txt /in-git.txt\n\
         RUN --mount=from=web,target=/w cat /w/context > /mounted && stat -c %a /asset > /asset-mode\n\
         FROM pinned\n\
         COPY --from=0 /asset /mounted /asset-mode /in-git.txt /\n",
    );
    let named = [
        format!("web={}", http.url("asset.bin")),
        format!("src=git://127.0.0.1:{}/repo.git#main:sub", daemon.port),
        format!("img=oci-layout://{}:v1", layout.display()),
        format!("pinned=oci-layout://{}@{digest}", layout.display()),
    ];
    let mut args = Vec::new();
    for n in &named {
        args.extend(["--build-context", n.as_str()]);
    }
    args.extend(["-o", dest.as_str()]);
    let run = case.build(&args).expect_ok();
    assert_eq!(read("asset"), "an asset\n");
    assert_eq!(read("mounted"), "an asset\n");
    assert_eq!(read("asset-mode"), "600\n");
    assert_eq!(read("in-git.txt"), "from git\n");
    // The stage's base is the layout's busybox: its shell ran the RUN.
    assert!(run.stderr.contains("oci-layout://"), "{}", run.stderr);
    http.requests();
    let run = case.build(&args).expect_ok();
    assert_eq!(http.requests(), ["GET /asset.bin 304"]);
    assert!(
        run.step_ended("RUN --mount=from=web", "CACHED"),
        "{}",
        run.stderr
    );
    // A tag the layout does not have, once it has more than one image (with one, as
    // in buildx, that one is taken).
    let copied = Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("oci:{}:v2", layout.display()))
        .status()
        .expect("skopeo");
    assert!(copied.success());
    let missing = format!("img=oci-layout://{}:nope", layout.display());
    let mut with_missing = args.clone();
    with_missing.extend(["--build-context", missing.as_str()]);
    let run = case.build(&with_missing);
    run.expect_failure("an image tagged \"nope\" in index.json not found");
}

/// Asks the agent at $SSH_AUTH_SOCK for its identities (SSH_AGENTC_REQUEST_IDENTITIES)
/// and prints the answer's type and the comments it holds; from inside a RUN.
const AGENT_PROBE: &str = r#"import os, socket, struct
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ['SSH_AUTH_SOCK'])
s.sendall(b'\0\0\0\1\x0b')
n = struct.unpack('>I', s.recv(4))[0]
d = b''
while len(d) < n:
    d += s.recv(n - len(d))
print(d[0], d.count(b'kiln-e2e-key'))
"#;

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn ssh_mounts_reach_the_agent_through_a_proxy_and_leave_nothing_behind() {
    let case = Case::new("");
    case.file("probe.py", AGENT_PROBE);
    let key = case.path("id_ed25519");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-e2e-key", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (apt install openssh-client)");
    assert!(ok.success());
    let sock = case.path("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .expect("ssh-agent");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(std::time::Instant::now() < until, "ssh-agent did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let added = Command::new("ssh-add")
        .arg("-q")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &sock)
        .status()
        .expect("ssh-add");
    assert!(added.success());
    case.file(
        "Dockerfile",
        &format!(
            "FROM {}/library/debian-python:bookworm\n\
             COPY probe.py /probe.py\n\
             RUN --mount=type=ssh python3 /probe.py > /default && echo $SSH_AUTH_SOCK > /sock\n\
             RUN --mount=type=ssh,id=mykey,target=/run/k.sock python3 /probe.py > /mykey && \
                 cat /proc/self/mountinfo > /mountinfo\n\
             RUN ls -A /run > /run-after\n",
            super::registry()
        ),
    );
    let out = case.path("out");
    let dest = format!("type=local,dest={}", out.display());
    let key_arg = format!("mykey={}", key.display());
    let ctx = case.ctx();
    let run = super::store::kiln(
        &case,
        &[
            "build",
            "--progress",
            "plain",
            "--ssh",
            "default",
            "--ssh",
            &key_arg,
            "-o",
            &dest,
            ctx.to_str().expect("utf8"),
        ],
        &[("SSH_AUTH_SOCK", sock.to_str().expect("utf8"))],
    );
    let _ = agent.kill();
    let _ = agent.wait();
    let run = run.expect_ok();
    let read = |f: &str| fs::read_to_string(out.join(f)).expect("read");
    // 12 is SSH_AGENT_IDENTITIES_ANSWER, holding the one key: through the user's
    // agent (default) and through the agent kiln started for the key file.
    assert_eq!(read("default"), "12 1\n", "{}", run.stderr);
    assert_eq!(read("mykey"), "12 1\n");
    assert_eq!(read("sock"), "/run/buildkit/ssh_agent.0\n");
    // The RUN's ssh mount names no host path (it is `/agent` of a tmpfs of its own);
    // no socket or key is left in the image.
    let mountinfo = read("mountinfo");
    let ssh_line = mountinfo
        .lines()
        .find(|l| l.contains(" /run/k.sock "))
        .unwrap_or_else(|| panic!("no ssh mount in:\n{mountinfo}"));
    assert!(
        ssh_line.contains(" /agent /run/k.sock ") && ssh_line.contains(" - tmpfs "),
        "{ssh_line}"
    );
    assert!(!out.join("run/buildkit").exists() && !out.join("run/k.sock").exists());
    let after = read("run-after");
    assert!(
        !after.contains("buildkit") && !after.contains("k.sock"),
        "{after}"
    );
    // Nothing of the private key in any file of the image.
    let secret = fs::read(&key).expect("key");
    let piece = &secret[100..140];
    for e in walk(&out) {
        if let Ok(b) = fs::read(&e) {
            assert!(
                !b.windows(piece.len()).any(|w| w == piece),
                "{}",
                e.display()
            );
        }
    }
    // required=true without --ssh: a clear error.
    case.file(
        "Dockerfile",
        &format!(
            "FROM {}/library/busybox:latest\nRUN --mount=type=ssh,required=true true\n",
            super::registry()
        ),
    );
    let run = case.build(&[]);
    run.expect_failure("ssh agent default is required but was not provided");
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}
