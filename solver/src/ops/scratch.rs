//! `FROM scratch`: the empty filesystem.

use super::{Cx, Operation, Reuse};
use crate::cache::{CacheKey, Kind, Record};
use crate::Result;
use kiln_progress::Vertex;

pub(crate) struct Scratch;

impl Operation for Scratch {
    fn cache_key(&self, _: &Cx<'_>) -> Result<CacheKey> {
        Ok(CacheKey::new("scratch", &[]))
    }

    fn execute(&self, _: &Cx<'_>, _: &Vertex) -> Result<Record> {
        Ok(Record {
            layers: vec![],
            produced: false,
            created: String::new(),
            kind: Kind::Regular,
            blobs: vec![],
            description: String::new(),
        })
    }

    fn reuse(&self) -> Reuse {
        Reuse::Never
    }
}
