//! kiln's build graph as BuildKit LLB, for handing a build to a BuildKit fleet:
//! `kiln build --emit-llb CONTEXT | buildctl build --local context=CONTEXT --output …`.
//!
//! The messages are BuildKit's current `solver/pb/ops.proto` ([`pb`], hand-written
//! prost types; buildkit-llb 0.2's builders cannot set platforms). Every vertex of the
//! graph becomes one op, inputs before their users, then the terminal op whose single
//! input is the result, as BuildKit's own `llb.Definition` ends:
//!
//! | kiln vertex | LLB op |
//! | --- | --- |
//! | base image | `SourceOp` `docker-image://REPO@DIGEST`, with its platform |
//! | the context (COPY, `RUN --mount=type=bind` without `from`) | `SourceOp` `local://context`, `.dockerignore` as `local.excludepatterns`, the sources as `local.includepatterns` |
//! | RUN | `ExecOp`: args, env, cwd, user, network, security; the parent at `/` (output 0); bind, cache, tmpfs, secret and ssh mounts; `--mount=type=secret,env=` as a secret env; here-document files as a `mkfile` `FileOp` at `/dev/pipes` |
//! | COPY / ADD | `FileOp` copy actions (one per source, chained) with chown by id or by name (looked up in the destination), chmod, create-dest-path, allow-wildcard, follow-symlinks, `--exclude` patterns; ADD's local archives with `attemptUnpackDockerCompatibility`; here-documents as `mkfile` |
//! | WORKDIR | `FileOp` mkdir, mode 0755, with parents, owned by the stage's user |
//! | scratch | no op: input -1 |
//!
//! The capabilities the output needs are listed per op in the definition's metadata
//! (`caps`, as BuildKit's client records them, and checked by buildkitd): always
//! `source.image`, `source.local`, `exec.meta.base`, `exec.mount.bind`, `file.base`,
//! `platform`, `meta.description`; as used `source.local.sharedkeyhint`,
//! `source.local.includepatterns`, `source.local.excludepatterns`, `exec.mount.selector`,
//! `exec.meta.network`, `exec.meta.security`, `exec.mount.cache`,
//! `exec.mount.cache.sharing`, `exec.mount.tmpfs`, `exec.mount.tmpfs.size`,
//! `exec.mount.secret`, `exec.mount.ssh`, `exec.secretenv`,
//! `file.copy.includeexcludepatterns`. All are in BuildKit since v0.10.
//!
//! Every ExecOp sets `removeMountStubsRecursive`, as the Dockerfile frontend's do (a
//! field buildkitd has honoured since v0.13 with no capability to ask for), so the
//! mount points a RUN needed do not stay in its layer.
//!
//! The same graph always gives the same bytes: ops are visited in a fixed order and
//! every map is ordered, so op digests are stable.

pub mod pb;

use kiln_frontend::{
    BuildGraph, CopyFrom, MountKind, Network, Op, Platform, RunSpec, Security, Sharing, Source,
};
use petgraph::graph::NodeIndex;
use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What cannot be written as LLB, with the step it is in.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("line {line}: {step}: {what} cannot be written as LLB yet")]
    Unsupported {
        step: String,
        line: usize,
        what: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The name of the local source buildctl is given with `--local NAME=DIR`.
pub const CONTEXT: &str = "context";

/// How the context is seen.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `.dockerignore` patterns.
    pub excludes: Vec<String>,
    /// Named contexts that are not a local directory for buildkitd, by name.
    pub contexts: BTreeMap<String, NamedSource>,
}

/// Where a named context (`--build-context NAME=...`) comes from, for LLB: what kiln
/// fetched itself becomes the source BuildKit's frontend makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedSource {
    /// A git repository: BuildKit's git source, `#REF:SUBDIR` in its identifier.
    Git {
        url: String,
        reference: Option<String>,
        subdir: String,
    },
    /// A file at a URL: the http source, the file named `context`.
    Http { url: String },
    /// An image in an OCI layout (`buildctl --oci-layout NAME=PATH`): the layout's
    /// canonical path, as in the image's pinned `oci-layout://PATH@DIGEST`.
    Layout { path: String },
}

/// The digest BuildKit gives an op: sha256 of its marshaled bytes.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What BuildKit's exporter would be given for the image of `g` (whose marshalled
/// definition is `bytes`): the image config (BuildKit's `containerimage.config`
/// exporter attribute) with its history, which BuildKit's exporter keeps (and pads for
/// layers it has no row for), so that the image is the one BuildKit's own frontend
/// makes; and that attribute CSV-quoted for buildctl's `--output`:
/// `--output "type=image,name=...,$(jq -r '."buildctl.exporter-attr"' FILE)"`.
pub fn exporter_metadata(g: &BuildGraph, bytes: &[u8]) -> serde_json::Value {
    let platform = g.config.platform();
    let mut full = g.config.clone();
    full.history = g.history.iter().map(|h| h.entry.clone()).collect();
    let config = serde_json::to_value(&full).unwrap_or_default();
    let text = serde_json::to_string(&full).unwrap_or_default();
    let attr = format!(
        "\"{}\"",
        format!("containerimage.config={text}").replace('"', "\"\"")
    );
    serde_json::json!({
        "containerimage.config": config,
        format!("containerimage.config/{platform}"): config,
        "buildctl.exporter-attr": attr,
        "llb.definition.digest": digest(bytes),
    })
}

/// The definition of `g`'s target.
pub fn definition(g: &BuildGraph, opts: &Options) -> Result<pb::Definition> {
    let mut b = Builder {
        g,
        opts,
        def: pb::Definition::default(),
        seen: HashSet::new(),
        done: HashMap::new(),
        target: pb_platform(&g.config.platform()),
    };
    if let Some(target) = b.node(g.target)? {
        let terminal = pb::Op {
            inputs: vec![target],
            ..Default::default()
        };
        b.add(terminal, None, &[]);
    }
    Ok(b.def)
}

/// [`definition`], marshaled as buildctl reads it from stdin.
pub fn marshal(g: &BuildGraph, opts: &Options) -> Result<Vec<u8>> {
    Ok(definition(g, opts)?.encode_to_vec())
}

fn pb_platform(p: &Platform) -> pb::Platform {
    pb::Platform {
        architecture: p.architecture.clone(),
        os: p.os.clone(),
        variant: p.variant.clone().unwrap_or_default(),
    }
}

struct Builder<'a> {
    g: &'a BuildGraph,
    opts: &'a Options,
    def: pb::Definition,
    seen: HashSet<String>,
    /// Each vertex's output (`None`: scratch) and platform: its image's or RUN's,
    /// else its parent's (a stage's file operations run on the stage's platform, so
    /// that what targets share keeps one digest).
    done: HashMap<NodeIndex, (Option<pb::Input>, pb::Platform)>,
    /// The target's platform (scratch stages).
    target: pb::Platform,
}

/// The inputs of an op being made: each distinct output once.
#[derive(Default)]
struct Inputs(Vec<pb::Input>);

impl Inputs {
    /// The index of `i` among the inputs (-1 for scratch).
    fn index(&mut self, i: &Option<pb::Input>) -> i64 {
        let Some(i) = i else {
            return -1;
        };
        match self.0.iter().position(|x| x == i) {
            Some(p) => p as i64,
            None => {
                self.0.push(i.clone());
                self.0.len() as i64 - 1
            }
        }
    }
}

/// `/`-rooted, cleaned path.
fn abs(p: &str) -> String {
    kiln_frontend::path::clean(&format!("/{p}"))
}

impl Builder<'_> {
    /// Adds `op` (once) with its name and capabilities; returns its output 0.
    fn add(&mut self, op: pb::Op, name: Option<&str>, caps: &[&str]) -> pb::Input {
        let bytes = op.encode_to_vec();
        let d = digest(&bytes);
        if self.seen.insert(d.clone()) {
            self.def.def.push(bytes);
        }
        if name.is_some() || !caps.is_empty() {
            let m = self.def.metadata.entry(d.clone()).or_default();
            if let Some(n) = name {
                m.description
                    .entry("llb.customname".into())
                    .or_insert_with(|| n.to_string());
            }
            for c in caps {
                m.caps.insert((*c).to_string(), true);
            }
        }
        pb::Input {
            digest: d,
            index: 0,
        }
    }

    fn unsupported(&self, n: NodeIndex, what: impl Into<String>) -> Error {
        let s = &self.g.dag[n];
        Error::Unsupported {
            step: s.name.clone(),
            line: s.line,
            what: what.into(),
        }
    }

    /// The output of vertex `n`, adding it and what it needs.
    fn node(&mut self, n: NodeIndex) -> Result<Option<pb::Input>> {
        if let Some((o, _)) = self.done.get(&n) {
            return Ok(o.clone());
        }
        let step = &self.g.dag[n];
        let parent = match step.parent {
            Some(p) => self.node(p)?,
            None => None,
        };
        let platform = match (&step.op, step.parent) {
            (Op::Image { platform, .. }, _) => pb_platform(platform),
            (Op::Run(spec), _) => pb_platform(&spec.platform),
            (_, Some(p)) => self
                .done
                .get(&p)
                .map(|(_, pl)| pl.clone())
                .unwrap_or_else(|| self.target.clone()),
            (_, None) => self.target.clone(),
        };
        let out = match &step.op {
            Op::Scratch => None,
            // A named context: what kiln fetched as the source BuildKit's frontend
            // makes of it, a directory as `buildctl build --local NAME=DIR` (as buildx
            // passes `--build-context NAME=DIR`).
            Op::Local { name } => match self.opts.contexts.get(name).cloned() {
                Some(NamedSource::Git {
                    url,
                    reference,
                    subdir,
                }) => Some(self.git(&url, reference.as_deref(), &subdir, false)),
                Some(NamedSource::Http { url }) => Some(self.http(&url, "context", None)),
                Some(NamedSource::Layout { .. }) => {
                    return Err(self.unsupported(n, "an OCI layout as a directory"))
                }
                None => {
                    let mut attrs = BTreeMap::new();
                    attrs.insert("local.sharedkeyhint".to_string(), name.clone());
                    let op = host_source(format!("local://{name}"), attrs);
                    Some(self.add(
                        op,
                        Some(&step.name),
                        &["source.local", "source.local.sharedkeyhint", "platform"],
                    ))
                }
            },
            Op::Image {
                pinned, platform, ..
            } => {
                let (identifier, attrs) = self.image_source(n, pinned)?;
                let source_cap = if attrs.is_empty() {
                    "source.image"
                } else {
                    "source.ocilayout"
                };
                let op = pb::Op {
                    op: Some(pb::op::Kind::Source(pb::SourceOp { identifier, attrs })),
                    platform: Some(pb_platform(platform)),
                    constraints: Some(pb::WorkerConstraints::default()),
                    ..Default::default()
                };
                Some(self.add(
                    op,
                    Some(&step.name),
                    &[source_cap, "platform", "meta.description"],
                ))
            }
            Op::Run(spec) => Some(self.exec(n, spec, parent)?),
            Op::Copy(c) => {
                if c.parents {
                    return Err(self.unsupported(n, "COPY --parents"));
                }
                let mut inputs = Inputs::default();
                let base = inputs.index(&parent);
                let paths: Vec<String> = c
                    .srcs
                    .iter()
                    .filter_map(|s| match s {
                        Source::Path(p) => Some(p.clone()),
                        _ => None,
                    })
                    .collect();
                let from_context = c.from == CopyFrom::Context;
                let src = match c.from {
                    CopyFrom::Context if paths.is_empty() => None,
                    CopyFrom::Context => Some(self.context(&paths)),
                    CopyFrom::Step(s) => self.node(s)?,
                };
                let src = inputs.index(&src);
                let owner = c.chown.as_deref().map(|u| chown(u, base));
                // Every input first: the actions' results are numbered after them.
                let mut remote = Vec::new();
                for s in &c.srcs {
                    remote.push(match s {
                        Source::Url {
                            url,
                            checksum,
                            name,
                        } => {
                            let http = self.http(url, name, checksum.as_deref());
                            Some((inputs.index(&Some(http)), abs(name)))
                        }
                        // The subdirectory is the git source's output, copied whole.
                        Source::Git {
                            url,
                            reference,
                            subdir,
                            keep_git_dir,
                        } => {
                            let git = self.git(url, reference.as_deref(), subdir, *keep_git_dir);
                            Some((inputs.index(&Some(git)), "/".to_string()))
                        }
                        Source::Path(_) | Source::Inline(_) => None,
                    });
                }
                let mut file = Files::new(inputs.0.len(), base);
                for (s, remote) in c.srcs.iter().zip(remote) {
                    let (from, path) = match (s, remote) {
                        (_, Some(r)) => r,
                        (Source::Path(p), None) => (src, abs(p)),
                        (Source::Inline(f), None) => (
                            file.mkfile(-1, &f.name, f.mode, f.data.as_bytes()),
                            abs(&f.name),
                        ),
                        (Source::Url { .. } | Source::Git { .. }, None) => continue,
                    };
                    file.copy(
                        pb::FileActionCopy {
                            src: path,
                            dest: c.dest.clone(),
                            owner: owner.clone(),
                            mode: c.chmod.map(|m| m as i32).unwrap_or(-1),
                            follow_symlink: true,
                            dir_copy_contents: true,
                            // A URL's file is copied as it is, as in BuildKit.
                            attempt_unpack_docker_compatibility: c.unpack
                                && from_context
                                && matches!(s, Source::Path(_)),
                            create_dest_path: true,
                            allow_wildcard: true,
                            allow_empty_wildcard: true,
                            timestamp: -1,
                            include_patterns: Vec::new(),
                            exclude_patterns: c.excludes.clone(),
                        },
                        from,
                    );
                }
                let mut caps = vec!["file.base", "platform", "meta.description"];
                if !c.excludes.is_empty() {
                    caps.push("file.copy.includeexcludepatterns");
                }
                Some(self.add(file.op(inputs, &platform), Some(&step.name), &caps))
            }
            Op::Mkdir { path, user } => {
                let mut inputs = Inputs::default();
                let base = inputs.index(&parent);
                let owner = (!user.is_empty()).then(|| chown(user, base));
                let mut file = Files::new(inputs.0.len(), base);
                file.push(
                    pb::file_action::Action::Mkdir(pb::FileActionMkDir {
                        path: path.clone(),
                        mode: 0o755,
                        make_parents: true,
                        owner,
                        timestamp: -1,
                    }),
                    base,
                    -1,
                    true,
                );
                Some(self.add(
                    file.op(inputs, &platform),
                    Some(&step.name),
                    &["file.base", "platform", "meta.description"],
                ))
            }
        };
        self.done.insert(n, (out.clone(), platform));
        Ok(out)
    }

    /// A base image's source: `docker-image://REF@DIGEST`, or for an image of an OCI
    /// layout the `oci-layout://` source BuildKit's frontend makes of a named context:
    /// the store is the context's name (`buildctl --oci-layout NAME=PATH`).
    fn image_source(
        &self,
        n: NodeIndex,
        pinned: &str,
    ) -> Result<(String, BTreeMap<String, String>)> {
        let Some(rest) = pinned.strip_prefix("oci-layout://") else {
            return Ok((format!("docker-image://{pinned}"), BTreeMap::new()));
        };
        let (path, digest) = rest.rsplit_once('@').unwrap_or((rest, ""));
        let name = self.opts.contexts.iter().find_map(|(name, s)| match s {
            NamedSource::Layout { path: p } if p == path => Some(name),
            _ => None,
        });
        let Some(name) = name else {
            return Err(self.unsupported(n, "an OCI layout not named as a build context"));
        };
        let mut attrs = BTreeMap::new();
        attrs.insert("oci.store".to_string(), name.clone());
        Ok((
            format!("oci-layout://docker.io/library/{name}@{digest}"),
            attrs,
        ))
    }

    /// An `ADD` URL: BuildKit's http source, named as the Dockerfile frontend names it
    /// (the URL's last path segment), with the checksum when given.
    fn http(&mut self, url: &str, name: &str, checksum: Option<&str>) -> pb::Input {
        let mut attrs = BTreeMap::new();
        attrs.insert("http.filename".to_string(), name.to_string());
        let mut caps = vec!["source.http", "platform"];
        if let Some(c) = checksum {
            attrs.insert("http.checksum".to_string(), c.to_string());
            caps.push("source.http.checksum");
        }
        let op = host_source(url.to_string(), attrs);
        self.add(
            op,
            Some(&format!("[internal] load remote file {url}")),
            &caps,
        )
    }

    /// An `ADD` git repository: BuildKit's git source, identified as `llb.Git` makes
    /// the identifier (host and path, then `#REF:SUBDIR`), the full URL as an attribute.
    fn git(&mut self, url: &str, reference: Option<&str>, subdir: &str, keep: bool) -> pb::Input {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        // `git@host:path` (scp form) and `scheme://[user@]host/path`.
        let (host, path) = match rest.split_once('/') {
            Some((h, p)) if url.contains("://") => (h.rsplit('@').next().unwrap_or(h), p),
            _ => match rest.split_once(':') {
                Some((h, p)) => (h.rsplit('@').next().unwrap_or(h), p),
                None => (rest, ""),
            },
        };
        let subdir = kiln_frontend::path::clean(&format!("/{subdir}"));
        let subdir = subdir.trim_start_matches('/');
        let mut id = format!("git://{host}/{}", path.trim_start_matches('/'));
        if reference.is_some() || !subdir.is_empty() {
            id.push('#');
            id.push_str(reference.unwrap_or(""));
            if !subdir.is_empty() {
                id.push(':');
                id.push_str(subdir);
            }
        }
        let mut attrs = BTreeMap::new();
        attrs.insert("git.fullurl".to_string(), url.to_string());
        let mut caps = vec!["source.git", "source.git.fullurl", "platform"];
        if keep {
            attrs.insert("git.keepgitdir".to_string(), "true".to_string());
            caps.push("source.git.keepgitdir");
        }
        let op = host_source(id, attrs);
        self.add(
            op,
            Some(&format!("[internal] load git source {url}")),
            &caps,
        )
    }

    /// The build context, limited to `include` (paths or patterns).
    fn context(&mut self, include: &[String]) -> pb::Input {
        let mut attrs = BTreeMap::new();
        let mut caps = vec!["source.local", "source.local.sharedkeyhint", "platform"];
        attrs.insert("local.sharedkeyhint".to_string(), CONTEXT.to_string());
        if !self.opts.excludes.is_empty() {
            attrs.insert(
                "local.excludepatterns".into(),
                serde_json::to_string(&self.opts.excludes).unwrap_or_default(),
            );
            caps.push("source.local.excludepatterns");
        }
        let include: Vec<String> = include
            .iter()
            .map(|p| kiln_frontend::path::clean(p.trim_start_matches('/')))
            .collect();
        if !include.iter().any(|p| p == "." || p.is_empty()) {
            attrs.insert(
                "local.includepatterns".into(),
                serde_json::to_string(&include).unwrap_or_default(),
            );
            caps.push("source.local.includepatterns");
        }
        let op = host_source(format!("local://{CONTEXT}"), attrs);
        self.add(op, Some("[internal] load build context"), &caps)
    }

    fn exec(
        &mut self,
        n: NodeIndex,
        spec: &RunSpec,
        parent: Option<pb::Input>,
    ) -> Result<pb::Input> {
        let mut inputs = Inputs::default();
        let root = inputs.index(&parent);
        let mut caps = vec![
            "exec.meta.base",
            "exec.mount.bind",
            "platform",
            "meta.description",
        ];
        let mut mounts = vec![pb::Mount {
            input: root,
            dest: "/".into(),
            output: 0,
            ..Default::default()
        }];
        let mut secretenv = Vec::new();
        for m in &spec.mounts {
            let sp = &m.spec;
            let mut mount = pb::Mount {
                dest: sp.target.clone(),
                output: -1,
                readonly: sp.readonly,
                input: -1,
                ..Default::default()
            };
            match sp.kind {
                MountKind::Bind => {
                    let from = match m.from {
                        Some(CopyFrom::Step(s)) => self.node(s)?,
                        _ => {
                            let src = if sp.source.is_empty() {
                                "."
                            } else {
                                &sp.source
                            };
                            Some(self.context(&[src.to_string()]))
                        }
                    };
                    mount.input = inputs.index(&from);
                    select(&mut mount, &sp.source, &mut caps);
                }
                MountKind::Cache => {
                    mount.mount_type = pb::MountType::Cache as i32;
                    if let Some(CopyFrom::Step(s)) = m.from {
                        let from = self.node(s)?;
                        mount.input = inputs.index(&from);
                        select(&mut mount, &sp.source, &mut caps);
                    } else if sp.mode.is_some() || sp.uid.is_some() || sp.gid.is_some() {
                        // As BuildKit's Dockerfile frontend: a new cache starts as
                        // `/cache` of a scratch FileOp with the asked mode and owner.
                        let base = self.cache_permissions(sp, &pb_platform(&spec.platform));
                        mount.input = inputs.index(&Some(base));
                        select(&mut mount, "/cache", &mut caps);
                    }
                    mount.cache_opt = Some(pb::CacheOpt {
                        id: if sp.id.is_empty() {
                            sp.target.clone()
                        } else {
                            sp.id.clone()
                        },
                        sharing: match sp.sharing {
                            Sharing::Shared => pb::CacheSharingOpt::Shared,
                            Sharing::Private => pb::CacheSharingOpt::Private,
                            Sharing::Locked => pb::CacheSharingOpt::Locked,
                        } as i32,
                    });
                    caps.extend(["exec.mount.cache", "exec.mount.cache.sharing"]);
                }
                MountKind::Tmpfs => {
                    mount.mount_type = pb::MountType::Tmpfs as i32;
                    if let Some(size) = sp.size {
                        mount.tmpfs_opt = Some(pb::TmpfsOpt { size: size as i64 });
                        caps.push("exec.mount.tmpfs.size");
                    }
                    caps.push("exec.mount.tmpfs");
                }
                MountKind::Secret => {
                    // `env=` exposes the secret as a variable; a target as well, or
                    // without `env=`, as a file.
                    if let Some(name) = &sp.env {
                        secretenv.push(pb::SecretEnv {
                            id: sp.id.clone(),
                            name: name.clone(),
                            optional: !sp.required,
                        });
                        caps.push("exec.secretenv");
                        if sp.target.is_empty() {
                            continue;
                        }
                    }
                    mount.mount_type = pb::MountType::Secret as i32;
                    mount.readonly = true;
                    mount.secret_opt = Some(pb::SecretOpt {
                        id: sp.id.clone(),
                        uid: sp.uid.unwrap_or(0),
                        gid: sp.gid.unwrap_or(0),
                        mode: sp.mode.unwrap_or(0o400),
                        optional: !sp.required,
                    });
                    caps.push("exec.mount.secret");
                }
                MountKind::Ssh => {
                    mount.mount_type = pb::MountType::Ssh as i32;
                    mount.readonly = true;
                    mount.ssh_opt = Some(pb::SshOpt {
                        id: if sp.id.is_empty() {
                            "default".into()
                        } else {
                            sp.id.clone()
                        },
                        uid: sp.uid.unwrap_or(0),
                        gid: sp.gid.unwrap_or(0),
                        mode: sp.mode.unwrap_or(0o600),
                        optional: !sp.required,
                    });
                    caps.push("exec.mount.ssh");
                }
            }
            mounts.push(mount);
        }
        if !spec.files.is_empty() {
            // Here-documents run as scripts: a scratch filesystem with the files,
            // mounted read-only at /dev/pipes as BuildKit does.
            let mut file = Files::new(0, -1);
            let mut on = -1;
            for f in &spec.files {
                on = file.mkfile(on, &f.name, f.mode, f.data.as_bytes());
            }
            file.last_is_output();
            let files = self.add(
                file.op(Inputs::default(), &pb_platform(&spec.platform)),
                None,
                &["file.base", "platform"],
            );
            mounts.push(pb::Mount {
                input: inputs.index(&Some(files)),
                dest: "/dev/pipes".into(),
                output: -1,
                readonly: true,
                ..Default::default()
            });
        }
        let network = match spec.network {
            Network::Default => pb::NetMode::Unset,
            Network::None => pb::NetMode::None,
            Network::Host => pb::NetMode::Host,
        };
        if network != pb::NetMode::Unset {
            caps.push("exec.meta.network");
        }
        let security = match spec.security {
            Security::Sandbox => pb::SecurityMode::Sandbox,
            Security::Insecure => pb::SecurityMode::Insecure,
        };
        if security != pb::SecurityMode::Sandbox {
            caps.push("exec.meta.security");
        }
        if spec.argv.is_empty() {
            return Err(self.unsupported(n, "a RUN without a command"));
        }
        if !spec.ulimits.is_empty() {
            caps.push("exec.meta.ulimit");
        }
        let op = pb::Op {
            inputs: inputs.0,
            op: Some(pb::op::Kind::Exec(pb::ExecOp {
                meta: Some(pb::Meta {
                    args: spec.argv.clone(),
                    env: spec.env.clone(),
                    cwd: spec.cwd.clone(),
                    user: spec.user.clone(),
                    extra_hosts: spec
                        .extra_hosts
                        .iter()
                        .map(|h| pb::HostIp {
                            host: h.host.clone(),
                            ip: h.ip.clone(),
                        })
                        .collect(),
                    ulimit: spec
                        .ulimits
                        .iter()
                        .map(|u| pb::Ulimit {
                            name: u.name.clone(),
                            soft: u.soft,
                            hard: u.hard,
                        })
                        .collect(),
                    remove_mount_stubs_recursive: true,
                }),
                mounts,
                network: network as i32,
                security: security as i32,
                secretenv,
            })),
            platform: Some(pb_platform(&spec.platform)),
            constraints: Some(pb::WorkerConstraints::default()),
        };
        let name = self.g.dag[n].name.clone();
        Ok(self.add(op, Some(&name), &caps))
    }
}

/// A source op of the build platform: files are files on any platform, so that every
/// target shares one (contexts, downloads, repositories).
fn host_source(identifier: impl Into<String>, attrs: BTreeMap<String, String>) -> pb::Op {
    pb::Op {
        op: Some(pb::op::Kind::Source(pb::SourceOp {
            identifier: identifier.into(),
            attrs,
        })),
        platform: Some(pb_platform(&Platform::host())),
        constraints: Some(pb::WorkerConstraints::default()),
        ..Default::default()
    }
}

/// Mounts only `source` of the mount's input, when that is not all of it.
fn select(mount: &mut pb::Mount, source: &str, caps: &mut Vec<&str>) {
    let sel = abs(source);
    if sel != "/" {
        mount.selector = sel;
        caps.push("exec.mount.selector");
    }
}

/// `user[:group]`, each by id when numeric, else by name in the filesystem of input
/// `base`.
fn chown(spec: &str, base: i64) -> pb::ChownOpt {
    let one = |s: &str| pb::UserOpt {
        user: Some(match s.parse::<u32>() {
            Ok(id) => pb::user_opt::User::ById(id),
            Err(_) => pb::user_opt::User::ByName(pb::NamedUserOpt {
                name: s.to_string(),
                input: base,
            }),
        }),
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    pb::ChownOpt {
        user: Some(one(user)),
        group: group.filter(|g| !g.is_empty()).map(one),
    }
}

impl Builder<'_> {
    /// The FileOp that sets a cache mount's permissions: `/cache` made on scratch.
    fn cache_permissions(
        &mut self,
        sp: &kiln_frontend::MountSpec,
        platform: &pb::Platform,
    ) -> pb::Input {
        let id = |v: Option<u32>| pb::UserOpt {
            user: Some(pb::user_opt::User::ById(v.unwrap_or(0))),
        };
        let mut file = Files::new(0, -1);
        file.push(
            pb::file_action::Action::Mkdir(pb::FileActionMkDir {
                path: "/cache".into(),
                mode: i32::try_from(sp.mode.unwrap_or(0o755)).unwrap_or(0o755),
                make_parents: false,
                owner: Some(pb::ChownOpt {
                    user: Some(id(sp.uid)),
                    group: Some(id(sp.gid)),
                }),
                timestamp: -1,
            }),
            -1,
            -1,
            true,
        );
        self.add(
            file.op(Inputs::default(), platform),
            Some("[internal] settings cache mount permissions"),
            &["file.base", "platform", "meta.description"],
        )
    }
}

/// A `FileOp` being made: actions chained on `cur`, the result of the last copy or
/// mkdir, which becomes output 0.
struct Files {
    inputs: i64,
    cur: i64,
    actions: Vec<pb::FileAction>,
    /// Index of the action that is output 0.
    result: Option<usize>,
}

impl Files {
    fn new(inputs: usize, base: i64) -> Files {
        Files {
            inputs: inputs as i64,
            cur: base,
            actions: Vec::new(),
            result: None,
        }
    }

    /// Adds an action; returns the index its result has for later actions.
    fn push(&mut self, a: pb::file_action::Action, input: i64, secondary: i64, chain: bool) -> i64 {
        self.actions.push(pb::FileAction {
            input,
            secondary_input: secondary,
            output: -1,
            action: Some(a),
        });
        let at = self.inputs + self.actions.len() as i64 - 1;
        if chain {
            self.cur = at;
            self.result = Some(self.actions.len() - 1);
        }
        at
    }

    /// A file written on `on` (-1: an empty filesystem); returns where its result is.
    fn mkfile(&mut self, on: i64, name: &str, mode: u32, data: &[u8]) -> i64 {
        self.push(
            pb::file_action::Action::Mkfile(pb::FileActionMkFile {
                path: abs(name),
                mode: mode as i32,
                data: data.to_vec(),
                owner: None,
                timestamp: -1,
            }),
            on,
            -1,
            false,
        )
    }

    fn copy(&mut self, c: pb::FileActionCopy, from: i64) {
        let cur = self.cur;
        self.push(pb::file_action::Action::Copy(c), cur, from, true);
    }

    /// Makes the last action the result (for a filesystem of files only).
    fn last_is_output(&mut self) {
        if !self.actions.is_empty() {
            self.result = Some(self.actions.len() - 1);
        }
    }

    fn op(mut self, inputs: Inputs, platform: &pb::Platform) -> pb::Op {
        if let Some(r) = self.result {
            self.actions[r].output = 0;
        }
        pb::Op {
            inputs: inputs.0,
            op: Some(pb::op::Kind::File(pb::FileOp {
                actions: self.actions,
            })),
            platform: Some(platform.clone()),
            constraints: Some(pb::WorkerConstraints::default()),
        }
    }
}

#[cfg(test)]
mod tests;
