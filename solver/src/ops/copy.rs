//! COPY and ADD: files from the context, another stage or here-documents.

use super::{execute_step, on_parent, Cx, Operation};
use crate::cache::{digest, hash_context, CacheKey, Record};
use crate::Result;
use fs_err as fs;
use kiln_executor::{Action, CopyAction, Source};
use kiln_frontend::{CopyFrom, CopySpec, Source as SrcKind};
use kiln_progress::Vertex;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub(crate) struct Copy<'a> {
    spec: &'a CopySpec,
    /// What the executor does, made with the key.
    prepared: OnceLock<Prepared>,
    /// For an ADD of URLs or git: what the key was made of (asked once a build).
    urls: OnceLock<Option<Remote>>,
}

/// What an ADD fetches: files from URLs, or a git commit.
#[derive(Clone)]
enum Remote {
    Urls(Vec<UrlFile>),
    Git {
        url: String,
        reference: Option<String>,
        commit: String,
        subdir: String,
        keep_git_dir: bool,
    },
}

/// A COPY's action, where its link hint is kept (see `kiln_executor::fileop::Links`),
/// and for an ADD of URLs or git, the directory their files are put in for the step.
#[derive(Clone)]
struct Prepared {
    action: CopyAction,
    link_ref: Option<PathBuf>,
    staged: Option<PathBuf>,
}

/// A downloaded `ADD` URL: its blob, the name it is copied as, its time.
#[derive(Clone)]
struct UrlFile {
    digest: String,
    name: String,
    modified: Option<std::time::SystemTime>,
}

/// Puts the downloads into `dir` as the step copies them: named, mode 0600 (as
/// BuildKit's http source makes them), the server's time.
fn stage_urls(cx: &Cx<'_>, dir: &Path, files: &[UrlFile]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir)?;
    for f in files {
        let p = dir.join(&f.name);
        fs::copy(cx.solver.store().blob_path(&f.digest)?, &p)?;
        fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        if let Some(t) = f.modified {
            fs::File::options().write(true).open(&p)?.set_modified(t)?;
        }
    }
    Ok(())
}

impl<'a> Copy<'a> {
    pub fn new(spec: &'a CopySpec) -> Copy<'a> {
        Copy {
            spec,
            prepared: OnceLock::new(),
            urls: OnceLock::new(),
        }
    }
}

impl Copy<'_> {
    fn urls(&self, cx: &Cx<'_>) -> Result<Option<Remote>> {
        if let Some(u) = self.urls.get() {
            return Ok(u.clone());
        }
        let u = urls_of(cx, self.spec)?;
        let _ = self.urls.set(u.clone());
        Ok(u)
    }
}

impl Operation for Copy<'_> {
    fn cache_key(&self, cx: &Cx<'_>) -> Result<CacheKey> {
        let urls = self.urls(cx)?;
        let (key, prepared) = prepare(cx, self.spec, urls.as_ref())?;
        let _ = self.prepared.set(prepared);
        Ok(key)
    }

    fn execute(&self, cx: &Cx<'_>, v: &Vertex) -> Result<Record> {
        let urls = self.urls(cx)?;
        let Prepared {
            action,
            link_ref,
            staged,
        } = match self.prepared.get() {
            Some(p) => p.clone(),
            None => prepare(cx, self.spec, urls.as_ref())?.1,
        };
        // ADD of URLs or git: the files are put where the action reads them for the
        // time of the step.
        let staged = match (&staged, urls) {
            (Some(dir), Some(remote)) => {
                let staged = match &remote {
                    Remote::Urls(files) => stage_urls(cx, dir, files),
                    Remote::Git {
                        url,
                        reference,
                        commit,
                        keep_git_dir,
                        ..
                    } => {
                        v.log(&format!("fetching {url} at {commit}"));
                        crate::git::checkout(
                            url,
                            reference.as_deref(),
                            commit,
                            dir,
                            *keep_git_dir,
                            Some(cx.solver.store()),
                        )
                        .map_err(|e| cx.fail(e))
                    }
                };
                if let Err(e) = staged {
                    let _ = kiln_snapshotter::tree::remove_all(dir);
                    return Err(e);
                }
                Some(dir.clone())
            }
            _ => None,
        };
        let layer = execute_step(cx, v, Action::Copy(action));
        if let Some(d) = staged {
            let _ = kiln_snapshotter::tree::remove_all(&d);
        }
        let layer = layer?;
        if let (Some(l), Some(p)) = (&layer, &link_ref) {
            // Only a hint: a missing or stale one costs a full copy.
            let _ = remember_copy(cx, p, &l.snapshot);
        }
        Ok(on_parent(cx, layer))
    }
}

/// An ADD's URLs (each fetched, or found current, once per build), or its one git
/// repository (its REF resolved to a commit).
fn urls_of(cx: &Cx<'_>, c: &CopySpec) -> Result<Option<Remote>> {
    let gits: Vec<&SrcKind> = c
        .srcs
        .iter()
        .filter(|s| matches!(s, SrcKind::Git { .. }))
        .collect();
    if let [SrcKind::Git {
        url,
        reference,
        subdir,
        keep_git_dir,
    }] = gits.as_slice()
    {
        if c.srcs.len() != 1 {
            return Err(cx.fail("ADD of a git repository takes no other sources"));
        }
        let commit = crate::git::resolve(url, reference.as_deref()).map_err(|e| cx.fail(e))?;
        return Ok(Some(Remote::Git {
            url: url.clone(),
            reference: reference.clone(),
            commit,
            subdir: subdir.clone(),
            keep_git_dir: *keep_git_dir,
        }));
    }
    if !gits.is_empty() {
        return Err(cx.fail("ADD takes one git repository at a time"));
    }
    let urls: Vec<(&String, &Option<String>, &String)> = c
        .srcs
        .iter()
        .filter_map(|s| match s {
            SrcKind::Url {
                url,
                checksum,
                name,
            } => Some((url, checksum, name)),
            _ => None,
        })
        .collect();
    if urls.is_empty() {
        return Ok(None);
    }
    let s = cx.solver;
    let mut out = Vec::new();
    for (url, checksum, name) in urls {
        let f = s
            .runtime
            .block_on(crate::http::fetch(s.store(), url, checksum.as_deref()))
            .map_err(|e| cx.fail(e))?;
        // The URL's last segment, as BuildKit's Dockerfile frontend names the file (it
        // gives the http source that name, so Content-Disposition does not count).
        out.push(UrlFile {
            name: name.clone(),
            digest: f.digest,
            modified: f.modified,
        });
    }
    Ok(Some(Remote::Urls(out)))
}

/// The copy of what an ADD fetched (put into `dir` when the step runs): copied as
/// it is (a tarball from a URL or a repository is not unpacked, as in BuildKit).
fn fetched_copy(
    c: &CopySpec,
    dir: PathBuf,
    srcs: Vec<String>,
    excludes: Vec<String>,
) -> CopyAction {
    CopyAction {
        source: Source::Context {
            dir,
            excludes: Vec::new(),
        },
        srcs,
        inline: Vec::new(),
        dest: c.dest.clone(),
        chown: c.chown.clone(),
        chmod: c.chmod,
        parents: false,
        excludes,
        unpack: false,
        link_from: None,
        then: Vec::new(),
    }
}

/// The key of a COPY and what it does.
fn prepare(cx: &Cx<'_>, c: &CopySpec, urls: Option<&Remote>) -> Result<(CacheKey, Prepared)> {
    let s = cx.solver;
    let spec = serde_json::to_string(c).unwrap_or_default();
    if let Some(Remote::Git {
        url,
        commit,
        subdir,
        keep_git_dir,
        ..
    }) = urls
    {
        // The key is the commit (and what of it is copied), not the ref's name.
        let what = format!("{url}@{commit}:{subdir}:{keep_git_dir}");
        let key = CacheKey::new("add-git", &[cx.parent_key(), &what, &spec]);
        let srcs = vec![if subdir.is_empty() {
            ".".into()
        } else {
            subdir.clone()
        }];
        let dir = s.store().tmp_path("add-git");
        let action = fetched_copy(c, dir.clone(), srcs, c.excludes.clone());
        return Ok((
            key,
            Prepared {
                action,
                link_ref: None,
                staged: Some(dir),
            },
        ));
    }
    let Some(Remote::Urls(files)) = urls else {
        let (source_key, action, link_ref) = local(cx, c, &spec, &c.srcs, true)?;
        let key = CacheKey::new("copy", &[cx.parent_key(), &source_key, &spec]);
        return Ok((
            key,
            Prepared {
                action,
                link_ref,
                staged: None,
            },
        ));
    };
    // An ADD of URLs, maybe with context files: one copy per run of sources, in their
    // order, as BuildKit copies them. The key is the files' content and names (not
    // how they were fetched) and the context files'.
    let mut keys: Vec<String> = files
        .iter()
        .map(|f| format!("{}={}@{:?}", f.name, f.digest, f.modified))
        .collect();
    let dir = s.store().tmp_path("add-url");
    let mut actions = Vec::new();
    for run in c.srcs.chunk_by(|a, b| is_url(a) == is_url(b)) {
        if is_url(&run[0]) {
            let names = run
                .iter()
                .filter_map(|x| match x {
                    SrcKind::Url { name, .. } => Some(name.clone()),
                    _ => None,
                })
                .collect();
            actions.push(fetched_copy(c, dir.clone(), names, Vec::new()));
        } else {
            let (source_key, action, _) = local(cx, c, &spec, run, false)?;
            keys.push(source_key);
            actions.push(action);
        }
    }
    let mut actions = actions.into_iter();
    let mut action = actions
        .next()
        .ok_or_else(|| cx.fail("ADD has no sources"))?;
    action.then = actions.collect();
    let key = CacheKey::new("add-url", &[cx.parent_key(), &keys.join("|"), &spec]);
    Ok((
        key,
        Prepared {
            action,
            link_ref: None,
            staged: Some(dir),
        },
    ))
}

fn is_url(s: &SrcKind) -> bool {
    matches!(s, SrcKind::Url { .. })
}

/// The copy of `srcs` (paths and here-documents) from the COPY's source: what its
/// key says of the source, the action, and (with `link`) where its link hint is kept;
/// `spec` is the COPY serialized, as its key has it.
fn local(
    cx: &Cx<'_>,
    c: &CopySpec,
    spec: &str,
    srcs: &[SrcKind],
    link: bool,
) -> Result<(String, CopyAction, Option<PathBuf>)> {
    let s = cx.solver;
    let mut paths = Vec::new();
    let mut inline = Vec::new();
    for src in srcs {
        match src {
            SrcKind::Path(p) => paths.push(p.clone()),
            SrcKind::Inline(f) => inline.push(f.clone()),
            SrcKind::Url { .. } | SrcKind::Git { .. } => {}
        }
    }
    let (source, source_key) = match c.from {
        CopyFrom::Context if paths.is_empty() => {
            (Source::Snapshots(Vec::new()), "inline".to_string())
        }
        CopyFrom::Context => {
            let h = hash_context(&s.context, &paths, &s.ignore, &s.file_hashes)
                .map_err(|e| cx.fail(e))?;
            let source = Source::Context {
                dir: s.context.clone(),
                excludes: s.excludes.clone(),
            };
            (source, format!("context:{h}"))
        }
        CopyFrom::Step(src) => {
            let d = cx.input(src, "copy source")?;
            (
                Source::Snapshots(d.record.lowers()),
                format!("step:{}", d.key),
            )
        }
    };
    // The snapshot this COPY made last time, whose unchanged files the new one links;
    // --no-cache copies everything afresh.
    let link_ref = match c.from {
        CopyFrom::Context if link && !paths.is_empty() && !s.no_cache && !cx.step.no_cache => Some(
            s.store()
                .root()
                .join("copy-refs")
                .join(&digest(&["copy-ref", &s.context.to_string_lossy(), spec])[..32]),
        ),
        _ => None,
    };
    let link_from = link_ref
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|id| id.trim().to_string());
    let action = CopyAction {
        source,
        srcs: paths,
        inline,
        dest: c.dest.clone(),
        chown: c.chown.clone(),
        chmod: c.chmod,
        parents: c.parents,
        excludes: c.excludes.clone(),
        unpack: c.unpack,
        link_from,
        then: Vec::new(),
    };
    Ok((source_key, action, link_ref))
}

/// Notes `snapshot` as the last result of a COPY (`copy-refs/`; pruned with the
/// context digests).
fn remember_copy(cx: &Cx<'_>, path: &Path, snapshot: &str) -> Result<()> {
    Ok(cx
        .solver
        .store()
        .write_file(path, snapshot.as_bytes(), "copy-ref")?)
}
