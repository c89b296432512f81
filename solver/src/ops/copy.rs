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
    /// What the executor does, made with the key; and where the link hint is kept.
    prepared: OnceLock<(CopyAction, Option<PathBuf>)>,
}

impl<'a> Copy<'a> {
    pub fn new(spec: &'a CopySpec) -> Copy<'a> {
        Copy {
            spec,
            prepared: OnceLock::new(),
        }
    }
}

impl Operation for Copy<'_> {
    fn cache_key(&self, cx: &Cx<'_>) -> Result<CacheKey> {
        let (key, prepared) = prepare(cx, self.spec)?;
        let _ = self.prepared.set(prepared);
        Ok(key)
    }

    fn execute(&self, cx: &Cx<'_>, v: &Vertex) -> Result<Record> {
        let (action, link_ref) = match self.prepared.get() {
            Some(p) => p.clone(),
            None => prepare(cx, self.spec)?.1,
        };
        let layer = execute_step(cx, v, Action::Copy(action))?;
        if let (Some(l), Some(p)) = (&layer, &link_ref) {
            // Only a hint: a missing or stale one costs a full copy.
            let _ = remember_copy(cx, p, &l.snapshot);
        }
        Ok(on_parent(cx, layer))
    }
}

/// The key of a COPY, the action, and where its link hint is kept (see
/// `kiln_executor::fileop::Links`).
fn prepare(cx: &Cx<'_>, c: &CopySpec) -> Result<(CacheKey, (CopyAction, Option<PathBuf>))> {
    let s = cx.solver;
    let mut paths = Vec::new();
    let mut inline = Vec::new();
    for src in &c.srcs {
        match src {
            SrcKind::Path(p) => paths.push(p.clone()),
            SrcKind::Inline(f) => inline.push(f.clone()),
            SrcKind::Url { url, .. } => {
                return Err(cx.fail(format!(
                    "ADD from a URL ({url}) is not supported yet; download it in a RUN step or into the context"
                )))
            }
        }
    }
    let spec = serde_json::to_string(c).unwrap_or_default();
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
    let key = CacheKey::new("copy", &[cx.parent_key(), &source_key, &spec]);
    // The snapshot this COPY made last time, whose unchanged files the new one links;
    // --no-cache copies everything afresh.
    let link_ref = match c.from {
        CopyFrom::Context if !paths.is_empty() && !s.no_cache && !cx.step.no_cache => Some(
            s.store()
                .root()
                .join("copy-refs")
                .join(&digest(&["copy-ref", &s.context.to_string_lossy(), &spec])[..32]),
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
    };
    Ok((key, (action, link_ref)))
}

/// Notes `snapshot` as the last result of a COPY (`copy-refs/`; pruned with the
/// context digests).
fn remember_copy(cx: &Cx<'_>, path: &Path, snapshot: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = cx.solver.store().tmp_path("copy-ref");
    let r = kiln_snapshotter::store::atomic_write(path, snapshot.as_bytes(), &tmp);
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(r?)
}
