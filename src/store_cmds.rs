//! `kiln du` and `kiln prune`, after `docker buildx du` and `docker buildx prune`.

use anyhow::{bail, Context, Result};
use kiln_executor::{housekeeping, Helper};
use kiln_snapshotter::gc::{human_size, parse_size, Entry, PruneOptions};
use kiln_snapshotter::idmap::IdMap;
use kiln_snapshotter::Store;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::SystemTime;

#[derive(clap::Args)]
pub struct DuArgs {
    /// List every build record and cache mount.
    #[arg(long, short = 'v')]
    verbose: bool,
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Also remove pulled base images (kept by default: fetching them again costs the
    /// network).
    #[arg(short = 'a', long)]
    all: bool,
    /// Filter what is removed: `until=DURATION` keeps what was used within DURATION
    /// (e.g. 24h, 2h30m).
    #[arg(long = "filter")]
    filters: Vec<String>,
    /// Keep this much cache, removing the least recently used first (e.g. 10gb).
    #[arg(long = "keep-storage", alias = "max-used-space")]
    keep_storage: Option<String>,
    /// Do not prompt for confirmation.
    #[arg(short = 'f', long)]
    force: bool,
    /// List what was removed.
    #[arg(long, short = 'v')]
    verbose: bool,
}

fn helper(root: PathBuf) -> Result<Helper> {
    let store = Store::open(&root).with_context(|| format!("opening store {}", root.display()))?;
    Ok(Helper::new(store, IdMap::detect()))
}

/// `kiln du`.
pub fn du(root: PathBuf, a: DuArgs) -> Result<()> {
    let l = helper(root)?;
    let _lock = l.store.lock_shared(
        || eprintln!("waiting for a kiln prune on this store to finish"),
        |_| Ok::<(), kiln_snapshotter::Error>(()),
    )?;
    let inv = housekeeping::inventory(&l)?;
    let now = SystemTime::now();
    let mut out = String::new();
    if a.verbose {
        out.push_str(&format!(
            "{:<26}{:<17}{:<11}{:<11}{:<8}{:<20}{}\n",
            "ID", "TYPE", "SIZE", "LAYER", "SHARED", "LAST USED", "DESCRIPTION"
        ));
        for e in &inv.entries {
            out.push_str(&entry_line(e, now));
        }
        out.push('\n');
    }
    let totals = inv.totals();
    out.push_str(&format!("{:<16}{:>7}  {:>10}\n", "KIND", "COUNT", "SIZE"));
    for (name, count, bytes) in &totals.rows {
        out.push_str(&format!(
            "{name:<16}{count:>7}  {:>10}\n",
            human_size(*bytes)
        ));
    }
    let default = inv.plan(&PruneOptions::default(), now).reclaimed;
    let all = inv
        .plan(
            &PruneOptions {
                all: true,
                ..Default::default()
            },
            now,
        )
        .reclaimed;
    out.push_str(&format!(
        "\nReclaimable:\t{} (kiln prune), {} (kiln prune --all)\nTotal:\t\t{}\nStore:\t\t{}\n",
        human_size(default),
        human_size(all),
        human_size(totals.total),
        l.store.root().display()
    ));
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

fn entry_line(e: &Entry, now: SystemTime) -> String {
    format!(
        "{:<26}{:<17}{:<11}{:<11}{:<8}{:<20}{}\n",
        &e.id[..e.id.len().min(24)],
        e.kind.name(),
        human_size(e.size),
        if e.layer_bytes > 0 {
            human_size(e.layer_bytes)
        } else {
            "-".into()
        },
        e.shared,
        ago(now, e.last_used),
        e.description
    )
}

/// "3 minutes ago", roughly as go-units' `HumanDuration`.
fn ago(now: SystemTime, then: SystemTime) -> String {
    let s = now.duration_since(then).unwrap_or_default().as_secs();
    let (n, unit) = match s {
        0..=59 => (s, "second"),
        60..=3599 => (s / 60, "minute"),
        3600..=86399 => (s / 3600, "hour"),
        _ => (s / 86400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// `kiln prune`.
pub fn prune(root: PathBuf, a: PruneArgs) -> Result<()> {
    let mut opts = PruneOptions {
        all: a.all,
        ..Default::default()
    };
    for f in &a.filters {
        match f.split_once('=') {
            Some(("until" | "unused-for", d)) => {
                let ns = kiln_frontend::parse_go_duration(d)
                    .map_err(|e| anyhow::anyhow!("--filter {f:?}: {e}"))?;
                if ns < 0 {
                    bail!("--filter {f:?}: the duration must not be negative");
                }
                opts.until = Some(std::time::Duration::from_nanos(ns as u64));
            }
            _ => bail!("--filter {f:?}: kiln supports until=DURATION (e.g. until=24h)"),
        }
    }
    if let Some(k) = &a.keep_storage {
        opts.keep_storage =
            Some(parse_size(k).map_err(|e| anyhow::anyhow!("--keep-storage: {e}"))?);
    }
    if !a.force {
        let what = if a.all {
            "all build cache, pulled base images included"
        } else {
            "all build cache except pulled base images"
        };
        if !std::io::stdin().is_terminal() {
            bail!("kiln prune would remove {what}; pass --force to confirm without a terminal");
        }
        eprint!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(());
        }
    }
    let l = helper(root)?;
    let _lock = l.store.lock_exclusive(|| {
        eprintln!("waiting for kiln builds using this store to finish");
    })?;
    let inv = housekeeping::inventory(&l)?;
    let now = SystemTime::now();
    let plan = inv.plan(&opts, now);
    housekeeping::execute(&l, &plan)?;
    let mut out = String::new();
    if a.verbose {
        for e in &plan.entries {
            out.push_str(&entry_line(e, now));
        }
    }
    out.push_str(&format!("Total:\t{}\n", human_size(plan.reclaimed)));
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}
