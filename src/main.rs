//! `kiln`: a rootless, daemonless container image builder.
//!
//! The binary wires the crates together: the frontend compiles the Dockerfile (asking
//! the registry client for base image configs), the solver runs the graph, the exporter
//! writes or pushes the image. Its first act is to check for the hidden namespace-helper
//! subcommand, before any thread exists.

mod info;
mod login;
mod outputs;
mod platforms;
mod store_cmds;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use kiln_frontend::{BuildOptions, ImageConfig, ImageResolver, Platform, ResolvedImage};
use kiln_registry::{Registry, Want};
use kiln_snapshotter::idmap::IdMap;
use kiln_snapshotter::native::Snapshotter;
use kiln_snapshotter::Store;
use kiln_solver::helper::{Launcher, Request, Response};
use kiln_solver::progress::{Mode, Progress};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Rootless, daemonless container image builder"
)]
struct Cli {
    /// Store directory (default: $XDG_DATA_HOME/kiln).
    #[arg(long, global = true, env = "KILN_ROOT")]
    root: Option<PathBuf>,
    /// How steps get their filesystem: overlay mounts, native copies (slower, works
    /// everywhere), or auto (overlay where a probe mount works, else native).
    #[arg(long, global = true, env = "KILN_SNAPSHOTTER", default_value = "auto")]
    snapshotter: SnapshotterArg,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SnapshotterArg {
    Auto,
    Overlay,
    Native,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build an image from a Dockerfile (flags as in `docker buildx build`).
    Build(Box<BuildArgs>),
    /// Show the store's disk usage (as `docker buildx du`).
    Du(store_cmds::DuArgs),
    /// Remove build cache (as `docker buildx prune`).
    Prune(store_cmds::PruneArgs),
    /// Check what this machine offers kiln, and how to fix what is missing.
    Info,
    /// Log in to a registry (kept in docker's config.json format).
    Login(login::LoginArgs),
    /// Log out from a registry.
    Logout(login::LogoutArgs),
}

#[derive(clap::Args)]
struct BuildArgs {
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
    /// Do not use cache when building the image.
    #[arg(long = "no-cache")]
    no_cache: bool,
    /// Set type of progress output (auto, tty, plain, quiet).
    #[arg(long, default_value = "auto")]
    progress: Mode,
    /// Set target platforms for build (comma-separated, e.g. linux/amd64,linux/arm64);
    /// foreign RUN steps run under QEMU user emulation.
    #[arg(long)]
    platform: Option<String>,
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(kiln_solver::helper::SUBCOMMAND) {
        std::process::exit(kiln_solver::helper::main(&args[2..]));
    }
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("ERROR: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = || match cli.root.clone().or_else(Store::default_root) {
        Some(r) => Ok(r),
        None => Err(anyhow::anyhow!(
            "cannot find a store directory: set --root, KILN_ROOT or HOME"
        )),
    };
    match cli.cmd {
        Cmd::Info => info::info(cli.root.clone()),
        Cmd::Login(a) => login::login(a),
        Cmd::Logout(a) => login::logout(a),
        Cmd::Build(b) => build(root()?, cli.snapshotter, *b),
        Cmd::Du(a) => store_cmds::du(root()?, a),
        Cmd::Prune(a) => store_cmds::prune(root()?, a),
    }
}

/// Resolves base images through the registry, once per name, showing each as a step.
struct Resolver<'a> {
    registry: &'a Registry,
    store: &'a Store,
    runtime: &'a tokio::runtime::Runtime,
    progress: &'a Progress,
    seen: Mutex<HashMap<String, ResolvedImage>>,
}

impl ImageResolver for Resolver<'_> {
    fn resolve(&self, name: &str, p: &Platform) -> std::result::Result<ResolvedImage, String> {
        let key = format!("{name} {p}");
        if let Some(r) = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(r.clone());
        }
        let shown = kiln_registry::parse_reference(name)
            .map(|r| r.whole())
            .unwrap_or_else(|_| name.to_string());
        let v = self.progress.vertex(&if *p == Platform::host() {
            format!("[internal] load metadata for {shown}")
        } else {
            format!("[{p} internal] load metadata for {shown}")
        });
        let want = Want {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            variant: p.variant.clone(),
        };
        let result = self
            .runtime
            .block_on(self.registry.resolve(name, &want, self.store))
            .map_err(|e| e.to_string())
            .and_then(|r| {
                if let Some(m) = &r.mirror {
                    v.log(&format!("from mirror {m}"));
                }
                let config: ImageConfig = serde_json::from_slice(&r.config)
                    .map_err(|e| format!("bad image config of {}: {e}", r.pinned))?;
                Ok(ResolvedImage {
                    pinned: r.pinned,
                    config,
                })
            });
        match &result {
            Ok(r) => {
                v.done();
                self.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, r.clone());
            }
            Err(e) => v.error(e),
        }
        result
    }
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

/// `--secret id=ID[,src=FILE|,env=VAR]` (buildx syntax; `source` and `type=file|env`
/// are accepted too). An id alone reads the environment variable of that name.
fn parse_secrets(raw: &[String]) -> Result<HashMap<String, kiln_solver::exec::SecretFrom>> {
    use kiln_solver::exec::SecretFrom;
    let mut out = HashMap::new();
    for spec in raw {
        let kv: BTreeMap<&str, &str> = spec.split(',').filter_map(|p| p.split_once('=')).collect();
        let Some(id) = kv.get("id").copied().filter(|i| !i.is_empty()) else {
            bail!("--secret {spec:?}: expected id=ID,src=FILE or id=ID,env=VAR");
        };
        let src = kv.get("src").or(kv.get("source")).copied();
        let from = match (kv.get("type").copied(), src, kv.get("env").copied()) {
            (Some("env"), s, e) => SecretFrom::Env(e.or(s).unwrap_or(id).to_string()),
            (_, Some(f), None) => {
                let p = std::fs::canonicalize(f)
                    .with_context(|| format!("--secret {spec:?}: reading {f}"))?;
                SecretFrom::File(p)
            }
            (_, None, Some(e)) => SecretFrom::Env(e.to_string()),
            (_, None, None) => SecretFrom::Env(id.to_string()),
            (_, Some(_), Some(_)) => bail!("--secret {spec:?}: give src= or env=, not both"),
        };
        out.insert(id.to_string(), from);
    }
    Ok(out)
}

/// The snapshotter for this build: the one asked for, or for `auto` overlay where a
/// probe mount on the store's filesystem works (BuildKit probes likewise when it
/// starts), else native. kiln has no daemon, so the answer is kept in the store
/// (`probe`) for as long as it holds: the same boot of the same kernel, the same
/// filesystem under the store and the same kiln. A probe costs a helper run (~45 ms).
fn choose_snapshotter(
    arg: SnapshotterArg,
    launcher: &Launcher,
    progress: &Progress,
) -> Result<Snapshotter> {
    use std::os::unix::fs::MetadataExt;
    if arg != SnapshotterArg::Auto {
        return probe_snapshotter(arg, launcher, progress);
    }
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let dev = std::fs::metadata(launcher.store.root())
        .map(|m| m.dev())
        .unwrap_or(0);
    let stamp = format!("{} {dev} {}", boot.trim(), env!("CARGO_PKG_VERSION"));
    let file = launcher.store.root().join("probe");
    let kept = std::fs::read_to_string(&file).unwrap_or_default();
    if !boot.is_empty() {
        if let Some((st, answer)) = kept.split_once('\n') {
            if st == stamp {
                let chosen = if answer.trim() == "overlay" {
                    Snapshotter::Overlay
                } else {
                    Snapshotter::Native
                };
                progress.note(&format!(
                    "snapshotter: {} (as probed earlier in this boot)",
                    chosen.name()
                ));
                return Ok(chosen);
            }
        }
    }
    let chosen = probe_snapshotter(arg, launcher, progress)?;
    if !boot.is_empty() {
        let text = format!("{stamp}\n{}\n", chosen.name());
        // Only an optimisation: a store that cannot keep it probes every time.
        let _ = kiln_snapshotter::store::atomic_write(
            &file,
            text.as_bytes(),
            &launcher.store.tmp_path("probe-answer"),
        );
    }
    Ok(chosen)
}

fn probe_snapshotter(
    arg: SnapshotterArg,
    launcher: &Launcher,
    progress: &Progress,
) -> Result<Snapshotter> {
    let (chosen, why) = match arg {
        SnapshotterArg::Overlay => (Snapshotter::Overlay, "as asked".to_string()),
        SnapshotterArg::Native => (Snapshotter::Native, "as asked".to_string()),
        SnapshotterArg::Auto => {
            let dir = launcher.store.tmp_path("probe");
            match launcher.run(&Request::Probe { dir }, &|_| {})? {
                Response::Probe { overlay: None } => {
                    (Snapshotter::Overlay, "overlay mounts work here".into())
                }
                Response::Probe { overlay: Some(e) } => (
                    Snapshotter::Native,
                    format!("overlay in a user namespace failed: {e}"),
                ),
                _ => bail!("the namespace helper gave an unexpected answer to a probe"),
            }
        }
    };
    progress.note(&format!("snapshotter: {} ({why})", chosen.name()));
    Ok(chosen)
}

/// `--emit-llb`: the compiled build as LLB on stdout, the image config (BuildKit's
/// `containerimage.config` exporter metadata) in the metadata file.
fn emit_llb(
    graphs: &[kiln_frontend::BuildGraph],
    excludes: Vec<String>,
    metadata_file: Option<&std::path::Path>,
) -> Result<()> {
    use std::io::{IsTerminal, Write};
    let [graph] = graphs else {
        bail!(
            "--emit-llb writes one definition, for one platform: run it once per platform (e.g. --platform linux/arm64)"
        );
    };
    let bytes = kiln_llb::marshal(graph, &kiln_llb::Options { excludes })?;
    let mut out = std::io::stdout().lock();
    if out.is_terminal() {
        bail!(
            "--emit-llb writes binary protobuf: redirect it to a file or pipe it to buildctl build"
        );
    }
    if let Some(p) = metadata_file {
        let platform = graph.config.platform();
        // With its history, which BuildKit's exporter keeps (and pads for layers it has
        // no row for): the image is then the one BuildKit's own frontend makes.
        let mut full = graph.config.clone();
        full.history = graph.history.iter().map(|h| h.entry.clone()).collect();
        let config = serde_json::to_value(&full)?;
        // The exporter attribute that gives buildctl's image the config, CSV-quoted
        // for its --output: `--output "type=image,name=...,$(jq -r '."buildctl.exporter-attr"' FILE)"`.
        let attr = format!(
            "\"{}\"",
            format!("containerimage.config={}", serde_json::to_string(&full)?).replace('"', "\"\"")
        );
        let md = serde_json::json!({
            "containerimage.config": config,
            format!("containerimage.config/{platform}"): config,
            "buildctl.exporter-attr": attr,
            "llb.definition.digest": kiln_llb::digest(&bytes),
        });
        std::fs::write(p, serde_json::to_vec_pretty(&md)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .context("writing the definition to stdout")?;
    Ok(())
}

fn build(root: PathBuf, snapshotter: SnapshotterArg, b: BuildArgs) -> Result<()> {
    let secrets = parse_secrets(&b.secrets)?;
    let platforms = platforms::parse(b.platform.as_deref())?;
    let mut outputs = b
        .outputs
        .iter()
        .map(|o| outputs::parse(o))
        .collect::<Result<Vec<_>>>()?;
    if b.push && !outputs.iter().any(|o| o.kind == outputs::Kind::Registry) {
        outputs.push(outputs::parse("type=registry")?);
    }
    if outputs
        .iter()
        .any(|o| o.kind == outputs::Kind::Registry && o.names.is_empty())
        && b.tags.is_empty()
    {
        bail!("pushing needs at least one -t NAME");
    }
    let mut labels = Vec::new();
    for l in &b.labels {
        match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => labels.push((k.to_string(), v.to_string())),
            _ => bail!("--label {l:?}: expected KEY=VALUE"),
        }
    }
    // SOURCE_DATE_EPOCH from the environment is a build arg too, as buildx passes it.
    let mut build_args = parse_build_args(&b.build_args);
    if !build_args.iter().any(|(k, _)| k == "SOURCE_DATE_EPOCH") {
        if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
            build_args.push(("SOURCE_DATE_EPOCH".into(), v));
        }
    }
    let epoch = match build_args
        .iter()
        .rev()
        .find(|(k, _)| k == "SOURCE_DATE_EPOCH")
    {
        Some((_, v)) if !v.is_empty() => Some(
            v.parse::<u64>()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?}: expected seconds since 1970"))?,
        ),
        _ => None,
    };
    for t in &b.tags {
        kiln_registry::parse_reference(t).with_context(|| format!("invalid tag {t:?}"))?;
    }
    let context = std::fs::canonicalize(&b.context)
        .with_context(|| format!("build context {}", b.context.display()))?;
    if !context.is_dir() {
        bail!("build context {} is not a directory", b.context.display());
    }
    let file = in_context(
        &context,
        &b.file.clone().unwrap_or_else(|| context.join("Dockerfile")),
    )?;
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("reading Dockerfile {}", file.display()))?;

    // `<Dockerfile>.dockerignore` next to the Dockerfile wins over CONTEXT/.dockerignore.
    let mut ignore_file = file.clone().into_os_string();
    ignore_file.push(".dockerignore");
    let ignore_file = [
        in_context(&context, &PathBuf::from(ignore_file))?,
        in_context(&context, &context.join(".dockerignore"))?,
    ]
    .into_iter()
    .find(|p| p.is_file());
    let excludes = match &ignore_file {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            kiln_frontend::dockerignore::read_patterns(&text)
        }
        None => Vec::new(),
    };
    let ignore = kiln_frontend::dockerignore::Matcher::new(&excludes).with_context(|| {
        format!(
            "{}: invalid pattern",
            ignore_file
                .as_deref()
                .unwrap_or(std::path::Path::new(".dockerignore"))
                .display()
        )
    })?;

    let store = Store::open(&root).with_context(|| format!("opening store {}", root.display()))?;
    let progress = Progress::new(b.progress);
    let idmap = IdMap::detect();
    progress.note(&idmap.describe());
    let mut launcher = Launcher::new(store.clone(), idmap);
    // Shared with other builds; a build that finds itself alone first clears what
    // killed builds left in tmp/.
    let _lock = store.lock_shared(
        || progress.note("waiting for a kiln prune on this store to finish"),
        |_| {
            let n = kiln_solver::housekeeping::clear_tmp(&launcher)?;
            if n > 0 {
                progress.note(&format!("removed {n} leftovers of interrupted builds"));
            }
            Ok::<(), kiln_solver::Error>(())
        },
    )?;
    forget_synced_marks(&store);
    launcher.snapshotter = choose_snapshotter(snapshotter, &launcher, &progress)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let registry = {
        let p = progress.clone();
        Arc::new(Registry::from_env()?.with_notify(move |m| p.note(m)))
    };

    let v = progress.vertex(&format!(
        "[internal] load build definition from {}",
        file.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    ));
    v.done();
    let resolver = Resolver {
        registry: &registry,
        store: &store,
        runtime: &runtime,
        progress: &progress,
        seen: Mutex::new(HashMap::new()),
    };
    let multi = platforms.len() > 1;
    let mut graphs = Vec::new();
    for platform in &platforms {
        let opts = BuildOptions {
            file_name: file
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_else(|| "Dockerfile".into()),
            build_args: build_args.clone(),
            target: b.target.clone(),
            platform: platform.clone(),
            show_platform: multi,
        };
        let mut graph = kiln_frontend::compile(&text, &opts, &resolver)?;
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
            return Ok(());
        }
        Some("graph") => {
            println!("{}", serde_json::to_string_pretty(&graphs[0].to_json())?);
            return Ok(());
        }
        Some(_) => {
            for g in &graphs {
                print!("{}", g.to_dot());
            }
            return Ok(());
        }
        None => {}
    }
    if b.emit_llb {
        return emit_llb(&graphs, excludes, b.metadata_file.as_deref());
    }
    let emulators = platforms::plan(&graphs, &launcher, &progress)?;

    // One graph for every platform, so what they share is built once.
    let merged = kiln_frontend::merge(&graphs);
    let whole = kiln_frontend::BuildGraph {
        dag: merged.dag,
        target: merged.maps[0][&graphs[0].target],
        config: graphs[0].config.clone(),
        history: Vec::new(),
        warnings: Vec::new(),
    };
    let spool = outputs::spool_path(&outputs, graphs.len());
    // Whatever happens, the spool file is gone at the end: renamed into the archive, or
    // removed here.
    let _spool_guard = RemoveOnDrop(spool.clone());
    let solver = kiln_solver::Solver {
        store: store.clone(),
        launcher,
        registry: registry.clone(),
        runtime: runtime.handle().clone(),
        file_hashes: kiln_solver::cache::FileHashes::load(&store, &context),
        context,
        excludes,
        ignore,
        no_cache: b.no_cache,
        secrets,
        emulators,
        compression: outputs::layer_compression(&outputs),
        progress: progress.clone(),
        spool: spool.map(|path| kiln_solver::Spool {
            node: whole.target,
            path,
            layer: Default::default(),
        }),
    };
    let all = kiln_solver::solve(&solver, &whole)?;
    let spooled = solver.spool.as_ref().and_then(|sp| {
        let layer = sp.layer.lock().unwrap_or_else(|p| p.into_inner()).take();
        layer.map(|l| (l, sp.path.clone()))
    });
    let mut images = Vec::new();
    for ((graph, map), platform) in graphs.iter().zip(&merged.maps).zip(&platforms) {
        let results: HashMap<_, _> = map
            .iter()
            .filter_map(|(old, new)| all.get(new).map(|r| (*old, r.clone())))
            .collect();
        let built = kiln_exporter::assemble(graph, &results)?;
        let lowers = results
            .get(&graph.target)
            .map(|r| r.lowers())
            .unwrap_or_default();
        images.push(outputs::PlatformImage {
            platform: platform.clone(),
            built,
            lowers,
        });
    }
    if outputs.is_empty() {
        progress.note("WARNING: No output specified. The build result only remains in kiln's cache; use -o type=oci,dest=FILE or --push");
    }
    let ctx = outputs::Ctx {
        store: &store,
        launcher: &solver.launcher,
        registry: &registry,
        runtime: &runtime,
        progress: &progress,
        images: &images,
        tags: &b.tags,
        epoch,
        spooled,
    };
    let exported = outputs::export_all(&ctx, &outputs);
    if let Some((layer, path)) = &ctx.spooled {
        // Not made into the archive (the export failed): the store keeps the layer.
        if path.exists() {
            if let Err(e) = outputs::keep_spooled(&store, layer, path) {
                // It can be made again from its snapshot.
                tracing::warn!("{e:#}");
            }
        }
    }
    let mut done = exported?;
    if done.image.is_none() {
        // No image output: the image is still made (and its digest shown), as the
        // one an image output with default options would write.
        let opts = kiln_exporter::ImageOptions {
            epoch,
            ..Default::default()
        };
        let (img, index) = outputs::finish_all(&ctx, &opts, BTreeMap::new())?;
        done.image = Some(img);
        done.index = index;
        done.names = b.tags.clone();
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
    Ok(())
}

/// Removes a file, if it is still there, when dropped.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Snapshots are placed unsynced and marked so (`Store::mark_unsynced`). Marks older
/// than a minute name snapshots the kernel's own writeback (30 s) has most likely
/// written already: a `syncfs` in the background makes sure, and then they go. A
/// build that ends first leaves them for the next one.
fn forget_synced_marks(store: &Store) {
    let minute_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    let old: Vec<PathBuf> = store
        .unsynced_marks()
        .into_iter()
        .filter(|m| {
            std::fs::metadata(m)
                .and_then(|md| md.modified())
                .is_ok_and(|t| t < minute_ago)
        })
        .collect();
    if old.is_empty() {
        return;
    }
    let Ok(root) = std::fs::File::open(store.root()) else {
        return;
    };
    std::thread::spawn(move || {
        if nix::unistd::syncfs(&root).is_ok() {
            for m in old {
                let _ = std::fs::remove_file(m);
            }
        }
    });
}

/// `path` as kiln reads it: a file inside the context (the Dockerfile, `.dockerignore`)
/// is resolved inside it, symlinks included, like every other context path, so that a
/// context cannot make kiln read (and print) the user's files outside it.
fn in_context(context: &Path, path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    match abs.strip_prefix(context) {
        Ok(rel) => Ok(kiln_solver::fileop::resolve_in_root(
            context,
            &rel.to_string_lossy(),
            true,
        )?),
        Err(_) => Ok(abs),
    }
}
