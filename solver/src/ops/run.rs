//! RUN: a command in the sandbox, with its mounts.

use super::{execute_step, on_parent, Cx, Operation};
use crate::cache::{digest, hash_context, CacheKey, Record};
use crate::Result;
use kiln_executor::{Action, Mount, MountSource, RunAction};
use kiln_frontend::{CopyFrom, MountKind, Network, RunSpec, Security, Sharing};
use kiln_progress::Vertex;
use std::sync::OnceLock;

pub(crate) struct Run<'a> {
    spec: &'a RunSpec,
    /// What the executor runs, made with the key (the key covers its mounts' contents).
    action: OnceLock<RunAction>,
}

impl<'a> Run<'a> {
    pub fn new(spec: &'a RunSpec) -> Run<'a> {
        Run {
            spec,
            action: OnceLock::new(),
        }
    }
}

impl Operation for Run<'_> {
    fn cache_key(&self, cx: &Cx<'_>) -> Result<CacheKey> {
        let (action, inputs_key) = run_action(cx, self.spec)?;
        let _ = self.action.set(action);
        let spec = serde_json::to_string(self.spec).unwrap_or_default();
        Ok(CacheKey::new("run", &[cx.parent_key(), &spec, &inputs_key]))
    }

    fn execute(&self, cx: &Cx<'_>, v: &Vertex) -> Result<Record> {
        let action = match self.action.get() {
            Some(a) => a.clone(),
            None => run_action(cx, self.spec)?.0,
        };
        for m in &action.mounts {
            if let MountSource::Cache { dir, .. } = &m.kind {
                seed_mount(cx, v, dir);
            }
        }
        let layer = execute_step(cx, v, Action::Run(action))?;
        Ok(on_parent(cx, layer))
    }
}

/// A cache mount the store does not have yet starts with what an imported cache
/// carries of it (`--cache-to ...,mounts=true`). Only a head start: when that fails,
/// the RUN gets an empty mount, as it would without the import.
fn seed_mount(cx: &Cx<'_>, v: &Vertex, dir: &std::path::Path) {
    let s = cx.solver;
    let Some(name) = dir.file_name().map(|n| n.to_string_lossy().to_string()) else {
        return;
    };
    if dir.exists() {
        return;
    }
    let Some(l) = s.cache.mount(&name) else {
        return;
    };
    let r = (|| -> crate::Result<()> {
        let store = s.store();
        if !store.has_blob(&l.digest) && !s.cache.fetch_blob(&l)? {
            return Ok(());
        }
        let blob = store.blob_path(&l.digest)?;
        std::fs::create_dir_all(store.root().join("cache-mounts"))?;
        Ok(s.executor.unpack_tree(&blob, dir, &l.diff_id)?)
    })();
    match r {
        Ok(()) => v.log(&format!("cache mount {name}: from the imported cache")),
        Err(e) => v.log(&format!(
            "cache mount {name}: not seeded from the imported cache: {e}"
        )),
    }
}

/// Turns a RUN's mounts into what the executor mounts, refusing what kiln cannot do
/// yet; returns the action and the part of the cache key its mounts' contents make.
fn run_action(cx: &Cx<'_>, spec: &RunSpec) -> Result<(RunAction, String)> {
    let s = cx.solver;
    if spec.security == Security::Insecure {
        return Err(cx.fail(
            "RUN --security=insecure is not supported yet: kiln runs rootless and cannot grant extra privileges",
        ));
    }
    let mut mounts = Vec::new();
    let mut keys = Vec::new();
    for m in &spec.mounts {
        let sp = &m.spec;
        let kind = match sp.kind {
            MountKind::Ssh => {
                let Some(upstream) = s.ssh.get(&sp.id) else {
                    if sp.required {
                        return Err(cx.fail(format!(
                            "ssh agent {} is required but was not provided (kiln build --ssh {}=SOCKET|KEYFILE, or --ssh default)",
                            sp.id, sp.id
                        )));
                    }
                    continue;
                };
                MountSource::Ssh {
                    upstream: upstream.clone(),
                    mode: sp.mode.unwrap_or(0o600),
                    uid: sp.uid.unwrap_or(0),
                    gid: sp.gid.unwrap_or(0),
                }
            }
            // `rw`: the RUN writes a copy, discarded after it (the executor's
            // `writable`), so the key is the read-only bind's.
            MountKind::Bind => match m.from {
                Some(CopyFrom::Step(n)) => {
                    let d = cx.input(n, "mount source")?;
                    keys.push(format!("step:{}:{}", d.key, sp.source));
                    MountSource::Snapshots {
                        ids: d.record.lowers(),
                        subpath: sp.source.clone(),
                    }
                }
                _ => {
                    let src = if sp.source.is_empty() {
                        "."
                    } else {
                        &sp.source
                    };
                    let h = hash_context(&s.context, &[src.to_string()], &s.ignore, &s.file_hashes)
                        .map_err(|e| cx.fail(format!("--mount source {src:?}: {e}")))?;
                    keys.push(format!("context:{h}"));
                    let p = kiln_executor::paths::resolve_in_root(&s.context, src, true)?;
                    MountSource::Host(p)
                }
            },
            MountKind::Cache => {
                // `from=`: a new cache starts as that stage's `source`; which one is
                // part of the key, as the mount's input is in BuildKit's.
                let seed = match m.from {
                    Some(CopyFrom::Step(n)) => {
                        let d = cx.input(n, "cache mount source")?;
                        keys.push(format!("cache-from:{}:{}", d.key, sp.source));
                        Some((d.record.lowers(), sp.source.clone()))
                    }
                    _ => None,
                };
                let id = digest(&["cache-mount", &sp.id]);
                MountSource::Cache {
                    dir: s.store().root().join("cache-mounts").join(&id[..24]),
                    lock: sp.sharing != Sharing::Shared,
                    readonly: sp.readonly,
                    mode: sp.mode.unwrap_or(0o755),
                    uid: sp.uid.unwrap_or(0),
                    gid: sp.gid.unwrap_or(0),
                    seed,
                }
            }
            MountKind::Tmpfs => MountSource::Tmpfs { size: sp.size },
            MountKind::Secret => {
                let Some(from) = s.secrets.get(&sp.id) else {
                    if sp.required {
                        return Err(cx.fail(
                            format!("secret {} is required but was not provided (kiln build --secret id={},src=FILE)", sp.id, sp.id),
                        ));
                    }
                    continue;
                };
                if let Some(name) = &sp.env {
                    mounts.push(Mount {
                        target: sp.target.clone(),
                        kind: MountSource::SecretEnv {
                            from: from.clone(),
                            name: name.clone(),
                        },
                        writable: false,
                    });
                    if sp.target.is_empty() {
                        continue;
                    }
                }
                MountSource::Secret {
                    from: from.clone(),
                    mode: sp.mode.unwrap_or(0o400),
                    uid: sp.uid.unwrap_or(0),
                    gid: sp.gid.unwrap_or(0),
                }
            }
        };
        mounts.push(Mount {
            target: sp.target.clone(),
            kind,
            writable: sp.kind == MountKind::Bind && !sp.readonly,
        });
    }
    let action = RunAction {
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        user: spec.user.clone(),
        mounts,
        emulator: s.emulators.get(&spec.platform.architecture).cloned(),
        no_network: spec.network == Network::None,
        extra_hosts: spec.extra_hosts.clone(),
        ulimits: spec.ulimits.clone(),
        files: spec.files.clone(),
    };
    Ok((action, keys.join("|")))
}
