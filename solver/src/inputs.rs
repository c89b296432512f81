//! What a build reads before it compiles: the context directory, the Dockerfile and
//! `.dockerignore` (each resolved inside the context when it is in it), and the
//! build arguments' `SOURCE_DATE_EPOCH`.

use crate::{Error, Result};
use kiln_frontend::dockerignore::{self, Matcher};
use kiln_frontend::remote::{is_git_url, is_http_url, GitRef};
use std::path::{Path, PathBuf};
pub use tempfile::TempDir;

/// The build's inputs, read.
pub struct Inputs {
    /// The context directory, canonical.
    pub context: PathBuf,
    /// The Dockerfile's path and text.
    pub file: PathBuf,
    pub text: String,
    /// `.dockerignore` patterns, and the compiled matcher.
    pub excludes: Vec<String>,
    pub ignore: Matcher,
    /// For a context read from stdin or checked out from git: the directory kiln
    /// made for it, removed when the inputs go.
    pub temp_dir: Option<tempfile::TempDir>,
}

fn input(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Input(format!("{what}: {e}"))
}

/// A URL's content, downloaded for a build input: the file, open, and the server's
/// Last-Modified.
pub struct Download {
    pub file: std::fs::File,
    pub modified: Option<std::time::SystemTime>,
}

/// How a build's inputs fetch what is not on this machine (a URL, a git repository):
/// into the store at `root` (its http cache and git cache), under the store's shared
/// lock for the time of the fetch.
pub struct Fetcher {
    pub root: PathBuf,
}

impl Fetcher {
    fn with_store<T>(&self, f: impl FnOnce(&kiln_snapshotter::Store) -> Result<T>) -> Result<T> {
        let store = kiln_snapshotter::Store::open(&self.root)?;
        let _lock = store.lock_shared(|| {}, |_| Ok::<(), Error>(()))?;
        f(&store)
    }

    /// Downloads `url` for the build context (an unchanged file costs one conditional
    /// request), and opens it.
    pub fn url(&self, url: &str) -> Result<Download> {
        self.with_store(|store| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let got =
                runtime.block_on(crate::http::fetch_for("build context", store, url, None))?;
            let file = std::fs::File::open(store.blob_path(&got.digest)?)?;
            Ok(Download {
                file,
                modified: got.modified,
            })
        })
    }

    /// A git repository `URL#REF:DIR`, checked out into a directory of its own: the
    /// directory (removed when it goes) and DIR in it. A commit the store's git cache
    /// has is not fetched again.
    pub fn git(&self, spec: &str) -> Result<(tempfile::TempDir, PathBuf)> {
        let GitRef {
            url,
            reference,
            subdir,
        } = GitRef::parse(spec);
        let reference = reference.as_deref();
        let dir = temp_dir("the git context")?;
        let commit = crate::git::resolve(&url, reference)?;
        let repo = dir.path().join("repo");
        self.with_store(|store| {
            crate::git::checkout(&url, reference, &commit, &repo, false, Some(store))
        })?;
        let sub = kiln_executor::paths::resolve_in_root(&repo, &subdir, true)?;
        Ok((dir, sub))
    }
}

/// Reads the context `context` and the Dockerfile `file` (default: CONTEXT/Dockerfile),
/// and `<Dockerfile>.dockerignore` next to the Dockerfile, which wins over
/// CONTEXT/.dockerignore. As with `docker build`, `-f -` reads the Dockerfile from
/// stdin, and a context `-` is stdin: a tar (plain or compressed) of the context, or
/// a Dockerfile alone (the context is then empty). A git URL is checked out; an
/// http(s) URL is downloaded with `fetch`: a tarball is the context, anything else the
/// Dockerfile (as BuildKit, the file `context` of an otherwise empty context).
pub fn load(context: &Path, file: Option<&Path>, fetch: &Fetcher) -> Result<Inputs> {
    let dash = Path::new("-");
    if context == dash {
        if file == Some(dash) {
            return Err(Error::Input(
                "the context and the Dockerfile cannot both be read from stdin".into(),
            ));
        }
        let (dir, text) = stdin_context()?;
        let mut inputs = match text {
            Some(text) => load_with_text(dir.path(), text)?,
            None => load(dir.path(), file, fetch)?,
        };
        inputs.temp_dir = Some(dir);
        return Ok(inputs);
    }
    let shown = context.to_string_lossy();
    let remote = if is_git_url(&shown) {
        let (dir, sub) = fetch.git(&shown)?;
        Some((dir, sub, None))
    } else if is_http_url(&shown) {
        Some(http_context(&shown, fetch)?)
    } else {
        None
    };
    if let Some((dir, sub, dockerfile)) = remote {
        let mut inputs = match (file.filter(|f| *f != dash), dockerfile) {
            // -f names a file in the repository or tarball.
            (Some(f), _) => {
                let f = kiln_executor::paths::resolve_in_root(&sub, &f.to_string_lossy(), true)?;
                load_from(&sub, Some(&f), None)?
            }
            (None, Some(f)) if file.is_none() => load_from(&sub, Some(&f), None)?,
            _ => load(&sub, file, fetch)?,
        };
        inputs.temp_dir = Some(dir);
        return Ok(inputs);
    }
    if file == Some(dash) {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(input("reading the Dockerfile from stdin".into()))?;
        return load_with_text(context, text);
    }
    load_from(context, file, None)
}

fn temp_dir(what: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("kiln-context-")
        .tempdir()
        .map_err(input(format!("making a directory for {what}")))
}

/// The build context at an http(s) URL: a tarball (plain or compressed) unpacked, or
/// any other file as the Dockerfile (the third value), named `context` (as BuildKit
/// names it).
fn http_context(
    url: &str,
    fetch: &Fetcher,
) -> Result<(tempfile::TempDir, PathBuf, Option<PathBuf>)> {
    let mut d = fetch.url(url)?;
    // A file just opened: the sniff reads from its start, the unpack again after it.
    if kiln_executor::fileop::is_tar_stream(d.file.try_clone()?) {
        std::io::Seek::rewind(&mut d.file)?;
        let dir = temp_dir("the context from a URL")?;
        let root = dir.path().join("context");
        fs_err::create_dir(&root)?;
        unpack_tar(
            kiln_executor::fileop::archive_reader(d.file)?,
            &root,
            &format!("the context tarball {url}"),
        )?;
        return Ok((dir, root, None));
    }
    let (dir, root) = url_file_dir(d)?;
    let file = root.join("context");
    Ok((dir, root, Some(file)))
}

/// `--build-context NAME=https://...`: a directory holding the URL's file as
/// `context` (BuildKit's http source, not unpacked: mode 0600, the server's time).
pub fn http_dir(url: &str, fetch: &Fetcher) -> Result<(tempfile::TempDir, PathBuf)> {
    url_file_dir(fetch.url(url)?)
}

/// A directory of its own (`.../context`) holding `d` as the file `context`.
fn url_file_dir(d: Download) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = temp_dir("the context from a URL")?;
    let root = dir.path().join("context");
    fs_err::create_dir(&root)?;
    url_file(d, &root.join("context"))?;
    Ok((dir, root))
}

fn url_file(mut d: Download, to: &Path) -> Result<()> {
    use fs_err::os::unix::fs::OpenOptionsExt;
    std::io::Seek::rewind(&mut d.file)?;
    let mut out = fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    std::io::copy(&mut d.file, &mut out)?;
    if let Some(t) = d.modified {
        out.file().set_modified(t)?;
    }
    Ok(())
}

/// The context `context` with a Dockerfile given as text (named `Dockerfile`).
fn load_with_text(context: &Path, text: String) -> Result<Inputs> {
    load_from(context, None, Some(text))
}

/// Unpacks stdin into a private directory: a tar (plain or compressed) is the
/// context; anything else is a Dockerfile (returned) for an empty context.
fn stdin_context() -> Result<(tempfile::TempDir, Option<String>)> {
    use std::io::{BufRead, BufReader, Read};
    let dir = temp_dir("the context from stdin")?;
    let mut r = BufReader::with_capacity(1 << 16, std::io::stdin());
    let head = r
        .fill_buf()
        .map_err(input("reading stdin".into()))?
        .to_vec();
    let tar = head.len() >= 262 && &head[257..262] == b"ustar";
    if !kiln_executor::fileop::is_compressed(&head) && !tar {
        let mut text = String::new();
        r.read_to_string(&mut text)
            .map_err(input("reading the Dockerfile from stdin".into()))?;
        return Ok((dir, Some(text)));
    }
    unpack_tar(
        kiln_executor::fileop::archive_reader(r)?,
        dir.path(),
        "the context tar on stdin",
    )?;
    Ok((dir, None))
}

/// Unpacks a context tar into `dir`: only files, directories and links, and none
/// outside it (the tar crate checks each path, and each link's target, against it).
fn unpack_tar(reader: Box<dyn std::io::Read>, dir: &Path, what: &str) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let bad = |e: std::io::Error| Error::Input(format!("{what}: {e}"));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        use tar::EntryType as T;
        if !matches!(
            entry.header().entry_type(),
            T::Regular | T::Continuous | T::Directory | T::Symlink | T::Link
        ) {
            continue;
        }
        let name = entry.path().map_err(bad)?.display().to_string();
        if !entry.unpack_in(dir).map_err(bad)? {
            return Err(Error::Input(format!(
                "{what}: {name:?} would be written outside the context"
            )));
        }
    }
    Ok(())
}

fn load_from(context: &Path, file: Option<&Path>, text: Option<String>) -> Result<Inputs> {
    let shown = context.display().to_string();
    let dir = std::fs::canonicalize(context).map_err(input(format!("build context {shown}")))?;
    if !dir.is_dir() {
        return Err(Error::Input(format!(
            "build context {shown} is not a directory"
        )));
    }
    let file = in_context(
        &dir,
        &file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.join("Dockerfile")),
    )?;
    let text = match text {
        Some(t) => t,
        None => std::fs::read_to_string(&file)
            .map_err(input(format!("reading Dockerfile {}", file.display())))?,
    };
    let mut ignore_file = file.clone().into_os_string();
    ignore_file.push(".dockerignore");
    let ignore_file = [
        in_context(&dir, &PathBuf::from(ignore_file))?,
        in_context(&dir, &dir.join(".dockerignore"))?,
    ]
    .into_iter()
    .find(|p| p.is_file());
    let excludes = match &ignore_file {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(input(format!("reading {}", p.display())))?;
            dockerignore::read_patterns(&text)
        }
        None => Vec::new(),
    };
    let ignore = Matcher::new(&excludes).map_err(|e| {
        Error::Input(format!(
            "{}: invalid pattern: {e}",
            ignore_file
                .as_deref()
                .unwrap_or(Path::new(".dockerignore"))
                .display()
        ))
    })?;
    Ok(Inputs {
        context: dir,
        file,
        text,
        excludes,
        ignore,
        temp_dir: None,
    })
}

/// `path` as kiln reads it: a file inside the context (the Dockerfile, `.dockerignore`)
/// is resolved inside it, symlinks included, like every other context path, so that a
/// context cannot make kiln read (and print) the user's files outside it.
pub fn in_context(context: &Path, path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).map_err(input(path.display().to_string()))?;
    match abs.strip_prefix(context) {
        Ok(rel) => Ok(kiln_executor::paths::resolve_in_root(
            context,
            &rel.to_string_lossy(),
            true,
        )?),
        Err(_) => Ok(abs),
    }
}

/// `SOURCE_DATE_EPOCH`: the build argument, which the environment's gives when there
/// is none (as buildx passes it); its value as seconds.
pub fn source_date_epoch(build_args: &mut Vec<(String, String)>) -> Result<Option<u64>> {
    if !build_args.iter().any(|(k, _)| k == "SOURCE_DATE_EPOCH") {
        if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
            build_args.push(("SOURCE_DATE_EPOCH".into(), v));
        }
    }
    match build_args
        .iter()
        .rev()
        .find(|(k, _)| k == "SOURCE_DATE_EPOCH")
    {
        Some((_, v)) if !v.is_empty() => v.parse::<u64>().map(Some).map_err(|e| {
            Error::Input(format!(
                "SOURCE_DATE_EPOCH={v:?}: expected seconds since 1970: {e}"
            ))
        }),
        _ => Ok(None),
    }
}
