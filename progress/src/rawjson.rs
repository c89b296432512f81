//! `--progress rawjson`: BuildKit's `client.SolveStatus` as JSON, one object per
//! line on stderr, as buildx writes it, so that tools reading buildx's stream read
//! kiln's. A vertex's digest is the sha256 of its number and name (kiln has no LLB
//! digest for it); log data is base64, as Go encodes `[]byte`.

use crate::End;
use base64::Engine as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

pub(crate) struct Stream {
    /// Each vertex's digest and start time.
    started: Mutex<HashMap<usize, (String, String)>>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

impl Stream {
    pub(crate) fn stderr() -> Stream {
        Stream {
            started: Mutex::new(HashMap::new()),
        }
    }

    fn emit(&self, v: serde_json::Value) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{v}");
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, HashMap<usize, (String, String)>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn started(&self, id: usize, name: &str) {
        let digest = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{id}\n{name}").as_bytes()))
        );
        let t = now();
        self.ids().insert(id, (digest.clone(), t.clone()));
        self.emit(json!({"vertexes": [{"digest": digest, "name": name, "started": t}]}));
    }

    pub(crate) fn log(&self, id: usize, line: &str) {
        let Some((digest, _)) = self.ids().get(&id).cloned() else {
            return;
        };
        self.emit(json!({"logs": [{
            "vertex": digest,
            "stream": 1,
            "data": b64(&format!("{line}\n")),
            "timestamp": now(),
        }]}));
    }

    pub(crate) fn ended(&self, id: usize, name: &str, end: End) {
        let Some((digest, started)) = self.ids().get(&id).cloned() else {
            return;
        };
        let mut v = json!({"digest": digest, "name": name, "started": started, "completed": now()});
        match end {
            End::Done => {}
            End::Cached => v["cached"] = json!(true),
            End::Error(m) => v["error"] = json!(m),
        }
        self.emit(json!({"vertexes": [v]}));
    }

    /// A line of no step: a warning of no vertex (level 1 for `WARNING:` lines).
    pub(crate) fn note(&self, msg: &str) {
        let level = if msg.starts_with("WARNING") { 1 } else { 0 };
        let mut w = json!({"short": b64(msg)});
        if level > 0 {
            w["level"] = json!(level);
        }
        self.emit(json!({"warnings": [w]}));
    }
}
