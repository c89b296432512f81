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
}

fn input(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Input(format!("{what}: {e}"))
}

/// Reads the context `context` and the Dockerfile `file` (default: CONTEXT/Dockerfile),
/// and `<Dockerfile>.dockerignore` next to the Dockerfile, which wins over
/// CONTEXT/.dockerignore.
pub fn load(context: &Path, file: Option<&Path>) -> Result<Inputs> {
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
    let text = std::fs::read_to_string(&file)
        .map_err(input(format!("reading Dockerfile {}", file.display())))?;
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
