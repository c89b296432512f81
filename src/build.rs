//! `kiln build`: its flags (as `docker buildx build` takes them) and the build itself:
//! the frontend compiles the Dockerfile, the solver runs the graph, the exporter
//! writes or pushes the image.

use anyhow::{bail, Context, Result};
use kiln_executor::{Executor, Helper, Snapshotter};
use kiln_exporter::outputs::{self, PlatformImage, Session};
use kiln_frontend::{BuildOptions, Platform};
use kiln_progress::{Mode, Progress};
use kiln_registry::Registry;
use kiln_snapshotter::idmap::IdMap;
use kiln_snapshotter::Store;
use kiln_solver::cache::description::INLINE_FIELD;
use kiln_solver::cache::options::{self, Backend};
use kiln_solver::cache::{Caches, FileHashes, LocalCache};
use kiln_solver::{transfer, Need};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::SnapshotterArg;

#[derive(clap::Args)]
pub(crate) struct BuildArgs {
    /// Name of the Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Name and optionally a tag (format: name:tag).
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Set build-time variables (KEY=VALUE, or KEY to take it from the environment).
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Set the target build stage to build.
    #[arg(long)]
    target: Option<String>,
    /// Output destination (format: `type=local|tar|oci|docker|registry,dest=PATH`,
    /// with options as in buildx: name, tar, compression, compression-level,
    /// force-compression, oci-mediatypes, rewrite-timestamp, annotation.*).
    #[arg(short = 'o', long = "output")]
    outputs: Vec<String>,
    /// Write the image ID (its config digest) to the file.
    #[arg(long)]
    iidfile: Option<PathBuf>,
    /// Write build result metadata (digests, names) to the file, as JSON.
    #[arg(long = "metadata-file")]
    metadata_file: Option<PathBuf>,
    /// Set metadata for an image (KEY=VALUE).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Shorthand for --output=type=registry.
    #[arg(long)]
    push: bool,
    /// Shorthand for --output=type=docker: load the image into docker (or podman,
    /// when there is no docker on PATH).
    #[arg(long)]
    load: bool,
    /// Always ask the registry for base images' tags, instead of the digests the store
    /// pinned them to when it first pulled them.
    #[arg(long)]
    pull: bool,
    /// Do not use cache when building the image.
    #[arg(long = "no-cache")]
    no_cache: bool,
    /// Do not cache the steps of these stages (names or indexes).
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    no_cache_filter: Vec<String>,
    /// Networking mode for the RUN instructions (default, none, host).
    #[arg(long, default_value = "default")]
    network: String,
    /// Add a custom host-to-IP mapping to RUN's /etc/hosts (format: host:ip).
    #[arg(long = "add-host", value_name = "HOST:IP")]
    add_host: Vec<String>,
    /// Size of RUN's /dev/shm (e.g. 128m).
    #[arg(long = "shm-size", value_name = "SIZE")]
    shm_size: Option<String>,
    /// Resource limits of RUN (format: name=soft[:hard], e.g. nofile=1024:2048).
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    ulimit: Vec<String>,
    /// Allow extra privileged entitlements (network.host; security.insecure and
    /// device are refused: kiln runs rootless).
    #[arg(long, value_name = "ENTITLEMENT", value_delimiter = ',')]
    allow: Vec<String>,
    /// Add annotations to the image (KEY=VALUE, or TYPE:KEY=VALUE with TYPE index,
    /// manifest or manifest-descriptor).
    #[arg(long)]
    annotation: Vec<String>,
    /// Parent cgroup of RUN: refused, since kiln runs steps in the cgroup it is
    /// started in (start kiln in the cgroup you want).
    #[arg(long = "cgroup-parent", value_name = "CGROUP")]
    cgroup_parent: Option<String>,
    /// The builder instance to use: kiln is its own builder, so this is only noted.
    #[arg(long, env = "BUILDX_BUILDER")]
    builder: Option<String>,

    /// Cache export destination (e.g. `type=local,dest=DIR[,mode=min|max]`).
    #[arg(long = "cache-to")]
    cache_to: Vec<String>,
    /// External cache source (e.g. `type=local,src=DIR`).
    #[arg(long = "cache-from")]
    cache_from: Vec<String>,
    /// Instead of building, run a subrequest: `check` (the build checks), `outline`
    /// (what the target takes), `targets` (the stages); `,format=json` for JSON.
    #[arg(long, value_name = "FUNCTION")]
    call: Option<String>,
    /// Shorthand for --call=check.
    #[arg(long, conflicts_with = "call")]
    check: bool,
    /// Set type of progress output (auto, tty, plain, quiet, rawjson).
    #[arg(long, default_value = "auto")]
    progress: Mode,
    /// Suppress the build output and print the image ID on success.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Provenance attestation (kiln makes none yet: only `false` is accepted).
    #[arg(long, value_name = "VALUE")]
    provenance: Option<String>,
    /// SBOM attestation (kiln makes none yet: only `false` is accepted).
    #[arg(long, value_name = "VALUE")]
    sbom: Option<String>,
    /// Attestation parameters (`type=provenance|sbom,disabled=true` only, for now).
    #[arg(long = "attest", value_name = "PARAMS")]
    attest: Vec<String>,
    /// Set target platforms for build (comma-separated, e.g. linux/amd64,linux/arm64);
    /// foreign RUN steps run under QEMU user emulation.
    #[arg(long)]
    platform: Option<String>,
    /// Additional build context (NAME=DIR, NAME=docker-image://REF,
    /// NAME=oci-layout://PATH[:TAG|@DIGEST], a git URL or an https URL), for
    /// `FROM NAME`, `COPY --from=NAME` and `RUN --mount=from=NAME`.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    build_contexts: Vec<String>,
    /// SSH agent or keys to expose to RUN --mount=type=ssh (default, ID=SOCKET or
    /// ID=KEYFILE[,KEYFILE]).
    #[arg(long = "ssh", value_name = "default|ID=SOCKET|ID=KEY")]
    ssh: Vec<String>,
    /// Secret to expose to RUN --mount=type=secret (id=ID,src=FILE or id=ID,env=VAR).
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// Print the compiled build graph instead of building: `graph` (JSON) or
    /// `graph-dot` (Graphviz).
    #[arg(long = "print", value_parser = ["graph", "graph-dot"])]
    print: Option<String>,
    /// Instead of building, write the build as BuildKit LLB (a marshalled
    /// pb.Definition) to stdout, for `buildctl build --local context=CONTEXT`; with
    /// --metadata-file, the image config goes there as `containerimage.config`.
    #[arg(long = "emit-llb", conflicts_with_all = ["print", "outputs", "push"])]
    emit_llb: bool,
    /// Build context directory.
    context: PathBuf,
}

/// `--provenance`, `--sbom` and `--attest`: CI scripts pass them to turn attestations
/// off, which kiln accepts; asking for one is refused, since kiln makes none yet.
fn check_attestations(b: &BuildArgs) -> Result<()> {
    let off = |v: &str| matches!(v, "false" | "0" | "disabled=true");
    for (flag, v) in [("--provenance", &b.provenance), ("--sbom", &b.sbom)] {
        if let Some(v) = v.as_deref().filter(|v| !off(v)) {
            bail!("{flag}={v}: kiln does not make attestations yet (pass {flag}=false, or leave it out)");
        }
    }
    for a in &b.attest {
        let kv = kiln_frontend::csv::pairs(a, "--attest").map_err(anyhow::Error::msg)?;
        let get = |k: &str| {
            kv.iter()
                .rev()
                .find(|(x, _)| x == k)
                .map(|(_, v)| v.as_str())
        };
        match (get("type"), get("disabled")) {
            (Some("provenance" | "sbom"), Some("true")) => {}
            (Some(t @ ("provenance" | "sbom")), _) => bail!(
                "--attest {a:?}: kiln does not make {t} attestations yet (add disabled=true, or leave it out)"
            ),
            _ => bail!("--attest {a:?}: expected type=provenance or type=sbom"),
        }
    }
    Ok(())
}

/// A `--build-context`: its name, what the frontend sees, for a directory its path,
/// and for what kiln fetched itself, the source it is in LLB.
struct Named {
    name: String,
    context: kiln_frontend::NamedContext,
    dir: Option<PathBuf>,
    llb: Option<kiln_llb::NamedSource>,
}

/// `--build-context NAME=VALUE`s. With `fetch` (a build that runs), a git repository
/// or a URL's file is fetched into a directory of its own (kept in `keep` for the
/// build); `--emit-llb` and `--call` only need to know what it is.
fn named_contexts(
    raw: &[String],
    fetch: Option<&kiln_solver::inputs::Fetcher>,
    keep: &mut Vec<kiln_solver::inputs::TempDir>,
) -> Result<Vec<Named>> {
    use kiln_frontend::remote;
    use kiln_frontend::NamedContext;
    use kiln_llb::NamedSource;
    use kiln_solver::inputs;
    let mut out: Vec<Named> = Vec::new();
    for r in raw {
        let Some((name, value)) = r
            .split_once('=')
            .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        else {
            bail!("--build-context {r:?}: expected NAME=VALUE (a directory, docker-image://REF, oci-layout://PATH, a git or https URL)");
        };
        let (context, dir, llb) = if let Some(image) = value.strip_prefix("docker-image://") {
            kiln_registry::parse_reference(image)
                .with_context(|| format!("--build-context {r:?}: invalid image reference"))?;
            (NamedContext::Image(image.to_string()), None, None)
        } else if let Some(mut layout) = kiln_registry::layout::parse(value) {
            layout.path = std::fs::canonicalize(&layout.path).with_context(|| {
                format!("--build-context {r:?}: reading {}", layout.path.display())
            })?;
            let path = layout.path.display().to_string();
            (
                NamedContext::Image(layout.to_string()),
                None,
                Some(NamedSource::Layout { path }),
            )
        } else if remote::is_git_url(value) {
            let remote::GitRef {
                url,
                reference,
                subdir,
            } = remote::GitRef::parse(value);
            let llb = NamedSource::Git {
                url,
                reference,
                subdir,
            };
            (NamedContext::Local, None, Some(llb))
        } else if remote::is_http_url(value) {
            let llb = NamedSource::Http {
                url: value.to_string(),
            };
            (NamedContext::Local, None, Some(llb))
        } else if value.contains("://") {
            bail!("--build-context {r:?}: unknown kind of context (a directory, docker-image://, oci-layout://, a git or https URL)");
        } else {
            let dir = std::fs::canonicalize(value)
                .with_context(|| format!("--build-context {r:?}: reading {value}"))?;
            if !dir.is_dir() {
                bail!("--build-context {r:?}: {value} is not a directory");
            }
            (NamedContext::Local, Some(dir), None)
        };
        // What kiln fetches itself, for a build that runs.
        let got = match (&llb, fetch) {
            (Some(NamedSource::Git { .. }), Some(f)) => Some(f.git(value)),
            (Some(NamedSource::Http { .. }), Some(f)) => Some(inputs::http_dir(value, f)),
            _ => None,
        };
        let dir = match got {
            Some(got) => {
                let (tmp, path) = got.with_context(|| format!("--build-context {r:?}"))?;
                keep.push(tmp);
                Some(path)
            }
            None => dir,
        };
        out.retain(|n| n.name != name);
        out.push(Named {
            name: name.to_string(),
            context,
            dir,
            llb,
        });
    }
    Ok(out)
}

/// `--call`'s function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Build,
    Check,
    Outline,
    Targets,
}

struct Call {
    func: Func,
    json: bool,
}

/// `--call NAME[,format=json]` (`--check` is `--call check`), as buildx takes it.
fn parse_call(v: Option<&str>, check: bool) -> Result<Call> {
    let v = match (v, check) {
        (_, true) => "check",
        (Some(v), false) => v,
        (None, false) => "build",
    };
    let mut parts = v.split(',');
    let func = match parts.next().unwrap_or("").trim() {
        "build" | "" => Func::Build,
        "check" | "lint" => Func::Check,
        "outline" => Func::Outline,
        "targets" => Func::Targets,
        other => bail!("--call {other:?}: expected build, check, outline or targets"),
    };
    let mut json = false;
    for p in parts {
        match p.trim().split_once('=') {
            Some(("format", "json")) => json = true,
            Some(("format", "text" | "")) => json = false,
            _ => bail!("--call {v:?}: unknown option {p:?} (expected format=json)"),
        }
    }
    Ok(Call { func, json })
}

/// A finding in full, as buildx's `--check` prints it: the rule, its URL, the message,
/// and the Dockerfile around the line (BuildKit's source print).
fn finding_detail(f: &kiln_frontend::check::Finding, file: &str, text: &str) -> String {
    let url = f.rule().map(|r| r.url()).unwrap_or_default();
    let mut out = format!("\nWARNING: {} - {url}\n{}\n", f.rule, f.detail);
    out.push_str(&source_lines(file, text, f.line));
    out
}

/// BuildKit's `errdefs.Source.Print`: `FILE:LINE`, then the line with up to two
/// lines each side, marked `>>>`.
fn source_lines(file: &str, text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    if line == 0 || line > lines.len() {
        return String::new();
    }
    let (mut start, mut end) = (line, line);
    let mut p = 0;
    while p < 4 {
        if start > 1 {
            start -= 1;
            p += 1;
        }
        if end != lines.len() {
            end += 1;
            p += 1;
        }
        p += 1;
    }
    let mut out = format!("{file}:{line}\n--------------------\n");
    for i in start..=end {
        let pfx = if i == line { ">>>" } else { "   " };
        out.push_str(&format!(" {i:>3} | {pfx} {}\n", lines[i - 1]));
    }
    out.push_str("--------------------\n");
    out
}

fn findings_text(r: &kiln_frontend::check::Report, file: &str, text: &str) -> String {
    r.findings
        .iter()
        .map(|f| finding_detail(f, file, text))
        .collect()
}

/// `--call check`'s output on stdout, and the exit status: 1 when there are
/// findings, as BuildKit's lint subrequest says.
fn print_check(r: &kiln_frontend::check::Report, file: &str, text: &str, json: bool) -> i32 {
    if json {
        let warnings: Vec<serde_json::Value> = r
            .findings
            .iter()
            .map(|f| {
                serde_json::json!({
                    "ruleName": f.rule,
                    "description": f.rule().map(|x| x.description).unwrap_or(""),
                    "url": f.rule().map(|x| x.url()).unwrap_or_default(),
                    "detail": f.detail,
                    "location": {"sourceIndex": 0, "ranges": [{"start": {"line": f.line}, "end": {"line": f.line}}]},
                })
            })
            .collect();
        let mut v = serde_json::json!({"warnings": warnings, "sources": [{"filename": file, "language": "Dockerfile"}]});
        if let Some(e) = r.error_message() {
            v["buildError"] = serde_json::json!({"message": e});
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else if r.findings.is_empty() {
        println!("Check complete, no warnings found.");
    } else {
        let n = r.findings.len();
        println!(
            "Check complete, {}",
            if n == 1 {
                "1 warning has been found!".to_string()
            } else {
                format!("{n} warnings have been found!")
            }
        );
        print!("{}", findings_text(r, file, text));
        if let Some(e) = r.error_message() {
            eprintln!("ERROR: {e}");
        }
    }
    i32::from(!r.findings.is_empty())
}

/// `--network`, `--add-host`, `--shm-size`, `--ulimit` and `--allow`: what every RUN
/// of the build gets. Limits are checked against the ones kiln runs under, since a
/// rootless build can lower them but not raise a hard limit.
fn run_defaults(b: &BuildArgs) -> Result<kiln_frontend::runflags::RunDefaults> {
    use kiln_frontend::runflags as rf;
    let msg = anyhow::Error::msg;
    if let Some(c) = &b.cgroup_parent {
        bail!(
            "--cgroup-parent {c:?}: kiln has no daemon and no cgroup manager; its RUN steps stay in the cgroup kiln starts in, so start it there (e.g. systemd-run --user --scope --slice=... kiln build ...)"
        );
    }
    let mut run = rf::RunDefaults {
        network: rf::parse_network(&b.network).map_err(msg)?,
        ..Default::default()
    };
    // As buildx: `--network host` asks for the entitlement too.
    run.allow_network_host = run.network == kiln_frontend::Network::Host;
    for a in &b.allow {
        rf::parse_allow(a, &mut run).map_err(msg)?;
    }
    for h in &b.add_host {
        run.extra_hosts.extend(rf::parse_add_host(h).map_err(msg)?);
    }
    run.shm_size = match b.shm_size.as_deref() {
        // Docker's sizes (go-units RAMInBytes), as `--keep-storage` takes them.
        Some(v) => match kiln_snapshotter::gc::parse_size(v) {
            Ok(n) if n > 0 => Some(n),
            _ => bail!("--shm-size {v:?}: expected a size such as 64m or 1g"),
        },
        None => None,
    };
    for u in &b.ulimit {
        let u = rf::parse_ulimit(u).map_err(msg)?;
        if let Some(max) = kiln_executor::hard_limit(&u.name) {
            let asked = |v: i64| u64::try_from(v).unwrap_or(u64::MAX);
            if asked(u.hard) > max {
                bail!(
                    "--ulimit {}={}:{}: the hard limit kiln runs under is {max}, and a rootless build cannot raise it (ask for at most {max}, or raise it before starting kiln)",
                    u.name,
                    u.soft,
                    u.hard
                );
            }
        }
        run.ulimits.push(u);
    }
    Ok(run)
}

fn parse_build_args(raw: &[String]) -> Vec<(String, String)> {
    raw.iter()
        .filter_map(|a| match a.split_once('=') {
            Some((k, v)) => Some((k.to_string(), v.to_string())),
            // `--build-arg NAME` takes the value from the environment, if set.
            None => std::env::var(a).ok().map(|v| (a.clone(), v)),
        })
        .collect()
}

/// `--emit-llb`: the compiled build as LLB on stdout, the image config (BuildKit's
/// `containerimage.config` exporter metadata) in the metadata file.
fn emit_llb(
    graphs: &[kiln_frontend::BuildGraph],
    opts: &kiln_llb::Options,
    metadata_file: Option<&std::path::Path>,
) -> Result<()> {
    use std::io::{IsTerminal, Write};
    let [graph] = graphs else {
        bail!(
            "--emit-llb writes one definition, for one platform: run it once per platform (e.g. --platform linux/arm64)"
        );
    };
    let bytes = kiln_llb::marshal(graph, opts)?;
    let mut out = std::io::stdout().lock();
    if out.is_terminal() {
        bail!(
            "--emit-llb writes binary protobuf: redirect it to a file or pipe it to buildctl build"
        );
    }
    if let Some(p) = metadata_file {
        let md = kiln_llb::exporter_metadata(graph, &bytes);
        std::fs::write(p, serde_json::to_vec_pretty(&md)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .context("writing the definition to stdout")?;
    Ok(())
}

/// Builds (or answers `--call`); returns the exit status.
pub(crate) fn build(
    root: PathBuf,
    snapshotter: SnapshotterArg,
    debug: bool,
    b: BuildArgs,
) -> Result<i32> {
    let secrets = kiln_solver::secrets::parse(&b.secrets)?;
    // Kept to the end of the build: the agents kiln starts for key files stop with it.
    let agents = kiln_solver::ssh::Agents::parse(&b.ssh)?;
    let platforms = Platform::parse_list(b.platform.as_deref()).map_err(anyhow::Error::msg)?;
    let mut outputs = outputs::plan(&b.outputs, b.push, b.load, &b.tags)?;
    outputs::annotate(&mut outputs, &b.annotation)?;
    let run_defaults = run_defaults(&b)?;
    let cache_to = b
        .cache_to
        .iter()
        .map(|c| options::cache_to(c))
        .collect::<Result<Vec<_>, _>>()?;
    let cache_from = b
        .cache_from
        .iter()
        .map(|c| options::cache_from(c))
        .collect::<Result<Vec<_>, _>>()?;
    let mut labels = Vec::new();
    for l in &b.labels {
        match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => labels.push((k.to_string(), v.to_string())),
            _ => bail!("--label {l:?}: expected KEY=VALUE"),
        }
    }
    check_attestations(&b)?;
    let mut build_args = parse_build_args(&b.build_args);
    let epoch = kiln_solver::inputs::source_date_epoch(&mut build_args)?;
    for t in &b.tags {
        kiln_registry::parse_reference(t).with_context(|| format!("invalid tag {t:?}"))?;
    }
    let call = parse_call(b.call.as_deref(), b.check)?;
    let fetch = kiln_solver::inputs::Fetcher { root: root.clone() };
    let context = b.context.to_string_lossy();
    if b.emit_llb
        && (context == "-"
            || kiln_frontend::remote::is_git_url(&context)
            || kiln_frontend::remote::is_http_url(&context))
    {
        bail!("--emit-llb needs the context as a directory, for buildctl's --local context=DIR: a context kiln fetched (stdin, git, a URL) is gone when kiln exits");
    }
    let mut fetched_contexts = Vec::new();
    let runs = call.func == Func::Build && !b.emit_llb;
    let named = named_contexts(
        &b.build_contexts,
        runs.then_some(&fetch),
        &mut fetched_contexts,
    )?;
    let inputs = kiln_solver::inputs::load(&b.context, b.file.as_deref(), &fetch)?;
    let file_name = inputs
        .file
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_else(|| "Dockerfile".into());
    let parsed = kiln_frontend::parser::parse(&inputs.text, &file_name)?;
    match call.func {
        Func::Targets => {
            let ts = kiln_frontend::outline::targets(&parsed);
            if call.json {
                let list: Vec<serde_json::Value> = ts
                    .iter()
                    .map(|t| serde_json::json!({"name": t.name, "description": t.description, "default": t.default}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"targets": list}))?
                );
            } else {
                print!("{}", kiln_frontend::outline::print_targets(&ts));
            }
            return Ok(0);
        }
        Func::Outline => {
            let o = kiln_frontend::outline::outline(&parsed, b.target.as_deref(), &build_args);
            if call.json {
                let args: Vec<_> = o
                    .args
                    .iter()
                    .map(|(n, v, d)| serde_json::json!({"name": n, "value": v, "description": d}))
                    .collect();
                let named = |l: &[(String, bool)]| -> Vec<serde_json::Value> {
                    l.iter()
                        .map(|(n, r)| serde_json::json!({"name": n, "required": r}))
                        .collect()
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "name": o.name, "description": o.description, "args": args,
                        "secrets": named(&o.secrets), "ssh": named(&o.ssh),
                    }))?
                );
            } else {
                print!("{}", kiln_frontend::outline::print_outline(&o));
            }
            return Ok(0);
        }
        Func::Check | Func::Build => {}
    }

    let store = Store::open(&root).with_context(|| format!("opening store {}", root.display()))?;
    let progress = Progress::open(if b.quiet { Mode::Quiet } else { b.progress })
        .map_err(anyhow::Error::msg)?;
    if let Some(name) = &b.builder {
        progress.note(&format!(
            "builder {name:?}: kiln builds in this process, with no builder instances; building here"
        ));
    }
    let idmap = IdMap::detect();
    progress.note(&idmap.describe());
    let mut helper = Helper::new(store.clone(), idmap);
    // Shared with other builds; a build that finds itself alone first clears what
    // killed builds left in tmp/.
    let _lock = store.lock_shared(
        || progress.note("waiting for a kiln prune on this store to finish"),
        |_| {
            let n = kiln_executor::housekeeping::clear_tmp(&helper)?;
            if n > 0 {
                progress.note(&format!("removed {n} leftovers of interrupted builds"));
            }
            Ok::<(), kiln_executor::Error>(())
        },
    )?;
    store.forget_synced_marks();
    let asked = match snapshotter {
        SnapshotterArg::Auto => None,
        SnapshotterArg::Overlay => Some(Snapshotter::Overlay),
        SnapshotterArg::Native => Some(Snapshotter::Native),
    };
    helper.snapshotter =
        kiln_executor::probe::choose_snapshotter(asked, &helper, &|m| progress.note(m))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let registry = {
        let p = progress.clone();
        Arc::new(Registry::from_env()?.with_notify(move |m| p.note(m)))
    };

    progress
        .vertex(&format!(
            "[internal] load build definition from {file_name}"
        ))
        .done();
    let resolver = kiln_solver::resolver::Resolver::new(
        &registry,
        &store,
        runtime.handle(),
        &progress,
        b.pull,
    );
    // The build checks: every stage for --call check without --target, else the
    // stages the build runs; errors (`error=true`) stop the build here, as in BuildKit.
    let report = {
        use kiln_frontend::check;
        let cfg = check::config(&parsed, &build_args)
            .map_err(|e| anyhow::anyhow!("failed to parse check options: {e}"))?;
        let reach = (call.func == Func::Build || b.target.is_some())
            .then(|| check::reachable(&parsed, b.target.as_deref()));
        let target_stage = b.target.clone().unwrap_or_default();
        let automatic = kiln_frontend::automatic_args(&platforms[0], &target_stage);
        let image_env = |name: &str| -> Vec<String> {
            use kiln_frontend::{ImageResolver, NamedContext};
            // A named context stands for the image: its own, or none for a directory.
            let name = match named.iter().find(|n| n.name == name).map(|n| &n.context) {
                Some(NamedContext::Image(r)) => r.as_str(),
                Some(NamedContext::Local) => return Vec::new(),
                None => name,
            };
            resolver
                .resolve(name, &platforms[0])
                .map(|r| {
                    r.config
                        .config
                        .env
                        .iter()
                        .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k).to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        check::check(
            &parsed,
            &cfg,
            &check::Options {
                build_args: &build_args,
                automatic_args: &automatic,
                stages: reach.as_ref(),
                ignore: Some(&inputs.ignore),
                image_env: &image_env,
            },
        )
    };
    if call.func == Func::Check {
        drop(progress);
        return Ok(print_check(&report, &file_name, &inputs.text, call.json));
    }
    if let Some(e) = report.error_message() {
        bail!("{e}\n{}", findings_text(&report, &file_name, &inputs.text));
    }
    let multi = platforms.len() > 1;
    let mut graphs = Vec::new();
    for platform in &platforms {
        let opts = BuildOptions {
            file_name: file_name.clone(),
            build_args: build_args.clone(),
            target: b.target.clone(),
            platform: platform.clone(),
            show_platform: multi,
            no_cache_stages: b.no_cache_filter.clone(),
            contexts: named
                .iter()
                .map(|n| (n.name.clone(), n.context.clone()))
                .collect(),
            run: run_defaults.clone(),
        };
        let mut graph = kiln_frontend::compile_parsed(&inputs.text, &parsed, &opts, &resolver)?;
        for (k, v) in &labels {
            graph.config.config.labels.insert(k.clone(), v.clone());
        }
        graphs.push(graph);
    }
    let mut warned = std::collections::HashSet::new();
    for w in graphs.iter().flat_map(|g| &g.warnings) {
        if warned.insert(w.clone()) {
            progress.note(w);
        }
    }
    match b.print.as_deref() {
        Some("graph") if multi => {
            let all: Vec<serde_json::Value> = graphs.iter().map(|g| g.to_json()).collect();
            println!("{}", serde_json::to_string_pretty(&all)?);
            return Ok(0);
        }
        Some("graph") => {
            println!("{}", serde_json::to_string_pretty(&graphs[0].to_json())?);
            return Ok(0);
        }
        Some(_) => {
            for g in &graphs {
                print!("{}", g.to_dot());
            }
            return Ok(0);
        }
        None => {}
    }
    if b.emit_llb {
        let opts = kiln_llb::Options {
            excludes: inputs.excludes,
            contexts: named
                .iter()
                .filter_map(|n| n.llb.clone().map(|s| (n.name.clone(), s)))
                .collect(),
        };
        emit_llb(&graphs, &opts, b.metadata_file.as_deref())?;
        return Ok(0);
    }
    let emulators = kiln_executor::emulate::plan(&graphs, &helper, &|m| progress.note(m))?;

    // One graph for every platform, so what they share is built once.
    let merged = kiln_frontend::merge(&graphs);
    let whole = kiln_frontend::BuildGraph {
        dag: merged.dag,
        target: merged.maps[0][&graphs[0].target],
        config: graphs[0].config.clone(),
        history: Vec::new(),
        warnings: Vec::new(),
    };
    // Whatever happens, the spool file is gone at the end: renamed into the archive, or
    // removed by the guard. A cache export of its own copies every blob from the store:
    // no spool then (an inline cache is in the image, and needs none).
    let spool = if cache_to.iter().all(|c| c.backend == Backend::Inline) {
        outputs::Spool::for_outputs(&outputs, graphs.len())
    } else {
        outputs::Spool::none()
    };
    let executor: Arc<dyn Executor> = Arc::new(helper);
    let owners = executor.preserves_owners();
    let imports = transfer::import(
        &cache_from,
        &store,
        &registry,
        runtime.handle(),
        owners,
        &|m| progress.note(m),
    );
    let solver = kiln_solver::Solver {
        executor: executor.clone(),
        cache: Arc::new(Caches {
            local: LocalCache::new(store.clone(), owners),
            imports,
        }),
        registry: registry.clone(),
        runtime: runtime.handle().clone(),
        file_hashes: FileHashes::load(&store, &inputs.context),
        context: inputs.context,
        ssh: agents.sockets.clone(),
        contexts: named
            .iter()
            .filter_map(|n| n.dir.clone().map(|d| (n.name.clone(), d)))
            .collect(),
        excludes: inputs.excludes,
        ignore: inputs.ignore,
        no_cache: b.no_cache,
        secrets,
        emulators,
        compression: outputs::layer_compression(&outputs),
        progress: progress.clone(),
        spool: spool.path().map(|path| kiln_solver::Spool {
            node: whole.target,
            path: path.to_path_buf(),
            layer: Default::default(),
        }),
    };
    let all = kiln_solver::solve(&solver, &whole).map_err(|e| {
        // A failed step: its instruction under the message, as syntax errors have it.
        let line = match &e {
            kiln_solver::Error::RunFailed { line, .. }
            | kiln_solver::Error::StepFailed { line, .. } => Some(*line),
            _ => None,
        };
        match line.and_then(|l| kiln_frontend::snippet(&file_name, &inputs.text, l)) {
            Some(s) => anyhow::anyhow!("{e}\n{s}"),
            None => e.into(),
        }
    })?;
    let spooled = solver.spool.as_ref().and_then(|sp| {
        let layer = sp.layer.lock().unwrap_or_else(|p| p.into_inner()).take();
        layer.map(|l| (l, sp.path.clone()))
    });
    let mut images = Vec::new();
    for ((graph, map), platform) in graphs.iter().zip(&merged.maps).zip(&platforms) {
        let results: HashMap<_, _> = map
            .iter()
            .filter_map(|(old, new)| all.get(new).map(|d| (*old, d.record.clone())))
            .collect();
        let mut built = kiln_exporter::assemble(graph, &results)?;
        if cache_to.iter().any(|c| c.backend == Backend::Inline) {
            let desc = transfer::inline(&whole, &all, map[&graph.target]);
            built.extra_config.insert(INLINE_FIELD.into(), desc);
        }
        let lowers = results
            .get(&graph.target)
            .map(|r| r.lowers())
            .unwrap_or_default();
        images.push(PlatformImage {
            platform: platform.clone(),
            built,
            lowers,
        });
    }
    // Layers of results an imported cache served come into the store as far as the
    // outputs need them.
    let (layers, snapshots) = outputs::needs(&outputs, &b.tags, &images);
    let need = if snapshots {
        Need::Snapshots
    } else {
        Need::Fetched
    };
    kiln_solver::bring_in(&solver, &layers, need, &|l| progress.note(l))?;
    if outputs.is_empty() {
        progress.note("WARNING: No output specified. The build result only remains in kiln's cache; use -o type=oci,dest=FILE or --push");
    }
    let session = Session {
        store: &store,
        executor: executor.as_ref(),
        registry: &registry,
        runtime: runtime.handle(),
        progress: &progress,
        images: &images,
        tags: &b.tags,
        epoch,
        spooled,
    };
    let done = outputs::export_all(&session, &outputs)?;
    let targets: Vec<_> = graphs
        .iter()
        .zip(&merged.maps)
        .map(|(g, m)| m[&g.target])
        .collect();
    for to in &cache_to {
        let records = transfer::select(&whole, &all, &targets, to.mode);
        match transfer::export(&solver, to, &records, &transfer::cache_mounts(&whole)) {
            Ok((n, l)) => progress.note(&format!("exported cache: {n} results, {l} blobs")),
            Err(e) if to.ignore_error => progress.note(&format!("WARNING: exporting cache: {e}")),
            Err(e) => return Err(anyhow::Error::from(e).context("exporting cache")),
        }
    }
    if let Some(p) = &b.iidfile {
        outputs::write_iidfile(p, &done)?;
    }
    if let Some(p) = &b.metadata_file {
        outputs::write_metadata(p, &done)?;
    }
    if let Some(m) = &done.index {
        for (p, img) in images.iter().zip(&m.images) {
            progress.note(&format!(
                "image {} for {} (config {})",
                img.manifest_digest, p.platform, img.config_digest
            ));
        }
        progress.note(&format!(
            "image {} (index of {} platforms)",
            m.digest,
            m.images.len()
        ));
    } else if let Some(img) = &done.image {
        progress.note(&format!(
            "image {} (config {})",
            img.manifest_digest, img.config_digest
        ));
    }
    // As buildx: the checks' findings after the build, one line each (-D: in full).
    if !report.findings.is_empty() {
        let n = report.findings.len();
        let mut text = format!(
            "\n {n} warning{} found{}:\n",
            if n == 1 { "" } else { "s" },
            if debug {
                ""
            } else {
                " (use kiln -D build to expand)"
            }
        );
        for f in &report.findings {
            text.push_str(&format!(" - {}\n", f.short()));
            if debug {
                text.push_str(&finding_detail(f, &file_name, &inputs.text));
            }
        }
        progress.note(text.trim_end());
    }
    if b.quiet {
        // As buildx: the image ID, the one --iidfile writes.
        if let Some(id) = outputs::image_id(&done) {
            println!("{id}");
        }
    }
    Ok(0)
}
