//! What a build reads before it compiles: the context directory, the Dockerfile and
//! `.dockerignore` (each resolved inside the context when it is in it), and the
//! build arguments' `SOURCE_DATE_EPOCH`.

use crate::{Error, Result};
use kiln_frontend::dockerignore::{self, Matcher};
use std::path::{Path, PathBuf};

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

/// Reads the context `context` and the Dockerfile `file` (default: CONTEXT/Dockerfile),
/// and `<Dockerfile>.dockerignore` next to the Dockerfile, which wins over
/// CONTEXT/.dockerignore. As with `docker build`, `-f -` reads the Dockerfile from
/// stdin, and a context `-` is stdin: a tar (or gzipped tar) of the context, or a
/// Dockerfile alone (the context is then empty).
pub fn load(context: &Path, file: Option<&Path>) -> Result<Inputs> {
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
            None => load(dir.path(), file)?,
        };
        inputs.temp_dir = Some(dir);
        return Ok(inputs);
    }
    let shown = context.to_string_lossy();
    if is_git_url(&shown) {
        // A git repository as the context: `URL#REF:DIR`, checked out for the build.
        let (url, fragment) = shown.split_once('#').unwrap_or((&shown, ""));
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        let reference = (!reference.is_empty()).then_some(reference);
        let dir = tempfile::Builder::new()
            .prefix("kiln-context-")
            .tempdir()
            .map_err(input("making a directory for the git context".into()))?;
        let commit = crate::git::resolve(url, reference)?;
        let repo = dir.path().join("repo");
        crate::git::checkout(url, reference, &commit, &repo, false)?;
        let sub = kiln_executor::paths::resolve_in_root(&repo, subdir, true)?;
        let mut inputs = match file.filter(|f| *f != dash) {
            // -f names a file in the repository.
            Some(f) => {
                let f = kiln_executor::paths::resolve_in_root(&repo, &f.to_string_lossy(), true)?;
                load_from(&sub, Some(&f), None)?
            }
            None => load(&sub, file)?,
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

/// Whether a context argument is a git repository, as buildx tells them: `git://`,
/// `git@`, `ssh://`, or an http(s) URL of a `.git` path.
fn is_git_url(s: &str) -> bool {
    s.starts_with("git://")
        || s.starts_with("git@")
        || s.starts_with("ssh://")
        || ((s.starts_with("https://") || s.starts_with("http://"))
            && s.split('#').next().is_some_and(|u| u.ends_with(".git")))
}

/// The context `context` with a Dockerfile given as text (named `Dockerfile`).
fn load_with_text(context: &Path, text: String) -> Result<Inputs> {
    load_from(context, None, Some(text))
}

/// Unpacks stdin into a private directory: a tar (plain or gzipped) is the context;
/// anything else is a Dockerfile (returned) for an empty context. Only files,
/// directories and links are unpacked, and none outside the directory (the tar crate
/// checks each path, and each link's target, against it).
fn stdin_context() -> Result<(tempfile::TempDir, Option<String>)> {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::Builder::new()
        .prefix("kiln-context-")
        .tempdir()
        .map_err(input(
            "making a directory for the context from stdin".into(),
        ))?;
    let mut r = BufReader::with_capacity(1 << 16, std::io::stdin().lock());
    let head = r
        .fill_buf()
        .map_err(input("reading stdin".into()))?
        .to_vec();
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let tar = head.len() >= 262 && &head[257..262] == b"ustar";
    if !gzip && !tar {
        let mut text = String::new();
        r.read_to_string(&mut text)
            .map_err(input("reading the Dockerfile from stdin".into()))?;
        return Ok((dir, Some(text)));
    }
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else {
        Box::new(r)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let bad = |e: std::io::Error| Error::Input(format!("the context tar on stdin: {e}"));
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
        if !entry.unpack_in(dir.path()).map_err(bad)? {
            return Err(Error::Input(format!(
                "the context tar on stdin: {name:?} would be written outside the context"
            )));
        }
    }
    Ok((dir, None))
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
