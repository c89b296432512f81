//! A named local build context (`--build-context NAME=DIR`): the directory's files as
//! a filesystem of their own, for `FROM NAME`, `COPY --from=NAME` and mounts.

use super::{execute_step, on_parent, Cx, Operation};
use crate::cache::{hash_context, CacheKey, FileHashes, Record};
use crate::Result;
use kiln_executor::{Action, CopyAction, Source};
use kiln_frontend::dockerignore::Matcher;
use kiln_progress::Vertex;

pub(crate) struct Local<'a> {
    pub name: &'a str,
}

impl Local<'_> {
    fn dir(&self, cx: &Cx<'_>) -> Result<std::path::PathBuf> {
        cx.solver
            .contexts
            .get(self.name)
            .cloned()
            .ok_or_else(|| cx.fail(format!("build context {:?} was not given", self.name)))
    }
}

impl Operation for Local<'_> {
    fn cache_key(&self, cx: &Cx<'_>) -> Result<CacheKey> {
        let dir = self.dir(cx)?;
        let known = FileHashes::load(cx.solver.store(), &dir);
        let h = hash_context(&dir, &[".".to_string()], &Matcher::default(), &known)
            .map_err(|e| cx.fail(e))?;
        Ok(CacheKey::new("local", &[self.name, &h]))
    }

    fn execute(&self, cx: &Cx<'_>, v: &Vertex) -> Result<Record> {
        let action = CopyAction {
            source: Source::Context {
                dir: self.dir(cx)?,
                excludes: Vec::new(),
            },
            srcs: vec![".".into()],
            inline: Vec::new(),
            dest: "/".into(),
            chown: None,
            chmod: None,
            parents: false,
            excludes: Vec::new(),
            unpack: false,
            link_from: None,
            then: Vec::new(),
        };
        let layer = execute_step(cx, v, Action::Copy(action))?;
        Ok(on_parent(cx, layer))
    }
}
