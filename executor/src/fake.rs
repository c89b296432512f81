//! An [`Executor`] that records what it is asked and does it without namespaces, as
//! youki fakes its syscalls: the solver's and the exporter's tests run on it.
//!
//! It is honest about the store: a step's layer is a real layer blob (of one file) written
//! where the caller asked, with its real digests, and each snapshot it reports exists,
//! so records that name them are usable. What it does not do is run anything: a RUN
//! "exits" with the code scripted for its command (0 unless told otherwise).

use crate::{
    Action, Executor, LayerCompression, LayerDigests, Log, Result, Snapshotter, StepOutcome,
    StepSpec,
};
use kiln_snapshotter::Store;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One call made to the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Unpack {
        id: String,
    },
    /// A step: `"run <argv>"`, `"copy <dest>"` or `"mkdir <path>"`, on `lowers`.
    Step {
        what: String,
        lowers: Vec<String>,
    },
    MakeLayer {
        id: String,
    },
    UnpackTree {
        dir: PathBuf,
    },
    Pack {
        dir: PathBuf,
    },
    ExportFs {
        lowers: Vec<String>,
        dest: PathBuf,
        tar: bool,
    },
    Remove {
        paths: Vec<PathBuf>,
    },
    Usage {
        paths: Vec<PathBuf>,
    },
    ProbeOverlay,
    ProbeBinfmt,
}

/// The recording fake.
pub struct Recording {
    store: Store,
    calls: Mutex<Vec<Call>>,
    /// Exit codes of RUNs by their command line (`argv` joined with spaces).
    exits: HashMap<String, i32>,
}

impl Recording {
    pub fn new(store: Store) -> Recording {
        Recording {
            store,
            calls: Mutex::new(Vec::new()),
            exits: HashMap::new(),
        }
    }

    /// RUNs whose command line (argv joined with spaces) is `command` exit with `code`.
    pub fn exit_with(mut self, command: &str, code: i32) -> Recording {
        self.exits.insert(command.to_string(), code);
        self
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The steps so far (their `what`), in order.
    pub fn steps(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Step { what, .. } => Some(what),
                _ => None,
            })
            .collect()
    }

    fn record(&self, c: Call) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }

    /// A layer blob at `out` (from `offset`) that holds one file, `fake-step`, saying
    /// what made it (so different steps have different layers), and its snapshot.
    fn layer(
        &self,
        what: &str,
        out: &Path,
        offset: u64,
        compression: LayerCompression,
    ) -> Result<LayerDigests> {
        let tree = self.store.tmp_path("fake-layer");
        fs_err::create_dir_all(&tree)?;
        fs_err::write(tree.join("fake-step"), what)?;
        // Fixed times: the same step gives the same layer whenever it is made (the
        // tar holds mtimes, and two calls may fall in different seconds).
        kiln_snapshotter::unpack::set_mtime(&tree.join("fake-step"), 0)?;
        kiln_snapshotter::unpack::set_mtime(&tree, 0)?;
        let d = crate::work::write_layer_file(&tree, out, offset, compression);
        let _ = std::fs::remove_dir_all(&tree);
        let d = d?;
        let id = kiln_snapshotter::store::snapshot_id(&d.diff_id, !self.preserves_owners())?;
        fs_err::create_dir_all(self.store.snapshot_path(&id))?;
        Ok(d)
    }
}

impl Executor for Recording {
    fn store(&self) -> &Store {
        &self.store
    }

    fn snapshotter(&self) -> Snapshotter {
        Snapshotter::Native
    }

    fn preserves_owners(&self) -> bool {
        true
    }

    fn unpack(&self, _blob: &Path, id: &str, _: Option<&str>, _: Log<'_>) -> Result<Vec<String>> {
        self.record(Call::Unpack { id: id.to_string() });
        fs_err::create_dir_all(self.store.snapshot_path(id))?;
        Ok(Vec::new())
    }

    fn unpack_tree(&self, _blob: &Path, dir: &Path, _: &str) -> Result<()> {
        self.record(Call::UnpackTree {
            dir: dir.to_path_buf(),
        });
        fs_err::create_dir_all(dir)?;
        Ok(())
    }

    fn pack(&self, dir: &Path, out: &Path) -> Result<LayerDigests> {
        self.record(Call::Pack {
            dir: dir.to_path_buf(),
        });
        self.layer(&dir.display().to_string(), out, 0, LayerCompression::Gzip)
    }

    fn step(&self, step: StepSpec, log: Log<'_>) -> Result<StepOutcome> {
        let what = match &step.action {
            Action::Run(r) => format!("run {}", r.argv.join(" ")),
            Action::Copy(c) => format!("copy {}", c.dest),
            Action::Mkdir { path, .. } => format!("mkdir {path}"),
        };
        self.record(Call::Step {
            what: what.clone(),
            lowers: step.lowers.clone(),
        });
        if let Action::Run(r) = &step.action {
            log(&format!("fake: {what}"));
            match self.exits.get(&r.argv.join(" ")) {
                Some(&code) if code != 0 => return Ok(StepOutcome::Exited(code)),
                _ => {}
            }
        }
        let made_of = format!("{what} on {}", step.lowers.join(" "));
        self.layer(
            &made_of,
            &step.layer_out,
            step.layer_offset,
            step.compression,
        )
        .map(StepOutcome::Layer)
    }

    fn make_layer(
        &self,
        id: &str,
        out: &Path,
        compression: LayerCompression,
    ) -> Result<LayerDigests> {
        self.record(Call::MakeLayer { id: id.to_string() });
        self.layer(id, out, 0, compression)
    }

    /// Makes `dest` as an export would (an empty directory, or an empty tar).
    fn export_fs(&self, lowers: &[String], dest: &Path, tar: bool) -> Result<()> {
        self.record(Call::ExportFs {
            lowers: lowers.to_vec(),
            dest: dest.to_path_buf(),
            tar,
        });
        if tar {
            fs_err::write(dest, [0u8; 1024])?;
        } else {
            fs_err::create_dir_all(dest)?;
        }
        Ok(())
    }

    fn remove(&self, paths: Vec<PathBuf>) -> Result<()> {
        for p in &paths {
            kiln_snapshotter::tree::remove_all(p)?;
        }
        self.record(Call::Remove { paths });
        Ok(())
    }

    fn usage(&self, paths: &[PathBuf]) -> Result<Vec<u64>> {
        self.record(Call::Usage {
            paths: paths.to_vec(),
        });
        Ok(paths
            .iter()
            .map(|p| kiln_snapshotter::tree::disk_usage(p))
            .collect())
    }

    fn probe_overlay(&self) -> Result<Option<String>> {
        self.record(Call::ProbeOverlay);
        Ok(Some("the fake executor mounts nothing".into()))
    }

    fn probe_binfmt(&self) -> Result<Option<String>> {
        self.record(Call::ProbeBinfmt);
        Ok(Some("the fake executor mounts nothing".into()))
    }
}
