//! `kiln`: a rootless, daemonless container image builder.
//!
//! The binary wires the crates together: the frontend compiles the Dockerfile (asking
//! the registry client for base image configs), the solver runs the graph, the exporter
//! writes or pushes the image. Its first act is to check for the hidden namespace-helper
//! subcommand, before any thread exists.

mod build;
mod info;
mod login;
mod store_cmds;

use anyhow::Result;
use clap::{Parser, Subcommand};
use kiln_snapshotter::Store;
use std::path::PathBuf;

// The room a step leaves before the layer it writes into an archive is what the
// archive writer fills.
const _: () = assert!(kiln_solver::SPOOL_OFFSET == kiln_exporter::archive::BASE_OFFSET);

#[derive(Parser)]
#[command(
    name = "kiln",
    bin_name = "kiln",
    version,
    // As buildx (pflag): a flag given twice takes its last value.
    args_override_self = true,
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
    /// Show kiln's debug log on stderr (cache keys, registry requests).
    #[arg(short = 'D', long, global = true)]
    debug: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SnapshotterArg {
    Auto,
    Overlay,
    Native,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build an image from a Dockerfile (flags as in `docker buildx build`).
    Build(Box<build::BuildArgs>),
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
    /// Print kiln's man pages (roff): `kiln man | man -l -`, or `kiln man build`;
    /// `kiln man --dir DIR` writes kiln.1 and kiln-SUBCOMMAND.1 into DIR.
    Man {
        /// The subcommand whose page to print (default: kiln's own).
        subcommand: Option<String>,
        #[arg(long, conflicts_with = "subcommand")]
        dir: Option<PathBuf>,
    },
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(kiln_executor::SUBCOMMAND) {
        std::process::exit(kiln_executor::helper_main(&args[2..]));
    }
    let cli = Cli::parse();
    log_to_stderr(cli.debug);
    match run(cli) {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            std::process::exit(1);
        }
    }
}

/// `kiln man`: pages made by clap_mangen from the same definitions as `--help`.
fn man(subcommand: Option<&str>, dir: Option<&std::path::Path>) -> Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    let cmd = Cli::command();
    if let Some(dir) = dir {
        fs_err::create_dir_all(dir)?;
        clap_mangen::generate_to(cmd, dir)
            .with_context(|| format!("writing man pages into {}", dir.display()))?;
        return Ok(());
    }
    let page = match subcommand {
        None => cmd,
        Some(name) => {
            let names: Vec<String> = cmd
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .collect();
            let Some(sub) = cmd.find_subcommand(name).cloned() else {
                anyhow::bail!(
                    "no subcommand {name:?} (expected one of {})",
                    names.join(", ")
                );
            };
            sub.name(format!("kiln-{name}"))
        }
    };
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .context("writing the man page")?;
    Ok(())
}

/// kiln's log: warnings always, debug events too with `-D`; plain lines on stderr,
/// without module paths.
fn log_to_stderr(debug: bool) {
    use std::io::IsTerminal;
    let filter = if debug {
        "debug,h2=info,hyper=info,hyper_util=info,rustls=info,reqwest=info"
    } else {
        "warn"
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .try_init();
}

/// Runs the command; returns the exit status (`kiln build --check` with findings: 1).
fn run(cli: Cli) -> Result<i32> {
    let root = || match cli.root.clone().or_else(Store::default_root) {
        Some(r) => Ok(r),
        None => Err(anyhow::anyhow!(
            "cannot find a store directory: set --root, KILN_ROOT or HOME"
        )),
    };
    match cli.cmd {
        Cmd::Build(b) => build::build(root()?, cli.snapshotter, cli.debug, *b),
        Cmd::Info => info::info(cli.root.clone()).map(|()| 0),
        Cmd::Login(a) => login::login(a).map(|()| 0),
        Cmd::Logout(a) => login::logout(a).map(|()| 0),
        Cmd::Du(a) => store_cmds::du(root()?, a).map(|()| 0),
        Cmd::Prune(a) => store_cmds::prune(root()?, a).map(|()| 0),
        Cmd::Man { subcommand, dir } => man(subcommand.as_deref(), dir.as_deref()).map(|()| 0),
        Cmd::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut std::io::stdout());
            Ok(0)
        }
    }
}
