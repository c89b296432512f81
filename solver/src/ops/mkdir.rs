//! WORKDIR: the directory made (owned by the step's user when it is new).

use super::{execute_step, on_parent, Cx, Operation};
use crate::cache::{CacheKey, Record};
use crate::Result;
use kiln_executor::Action;
use kiln_progress::Vertex;

pub(crate) struct Mkdir<'a> {
    pub path: &'a str,
    pub user: &'a str,
}

impl Operation for Mkdir<'_> {
    fn cache_key(&self, cx: &Cx<'_>) -> Result<CacheKey> {
        Ok(CacheKey::new(
            "mkdir",
            &[cx.parent_key(), self.path, self.user],
        ))
    }

    fn execute(&self, cx: &Cx<'_>, v: &Vertex) -> Result<Record> {
        let action = Action::Mkdir {
            path: self.path.to_string(),
            user: self.user.to_string(),
        };
        let layer = execute_step(cx, v, action)?;
        Ok(on_parent(cx, layer))
    }
}
