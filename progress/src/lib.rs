//! Build progress: a live view on a terminal, or BuildKit's plain format for logs
//! (`#N name`, `#N 0.123 output`, `#N DONE 1.2s`, `#N CACHED`).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many lines of a step's output are kept for its error message.
const TAIL: usize = 10;

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `tty` when stderr is a terminal, else `plain`.
    Auto,
    Tty,
    Plain,
    Quiet,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "tty" => Ok(Mode::Tty),
            "plain" => Ok(Mode::Plain),
            "quiet" => Ok(Mode::Quiet),
            other => Err(format!(
                "invalid progress mode {other:?}: expected auto, tty, plain or quiet"
            )),
        }
    }
}

/// The build's progress display; cheap to clone.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    mode: Mode,
    next: AtomicUsize,
    start: Instant,
    multi: Option<MultiProgress>,
    /// Finished bars, kept so the tty view still shows them when the build ends.
    finished: Mutex<Vec<ProgressBar>>,
    out: Mutex<()>,
}

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        let mode = match mode {
            Mode::Auto if std::io::stderr().is_terminal() => Mode::Tty,
            Mode::Auto => Mode::Plain,
            m => m,
        };
        let multi = (mode == Mode::Tty)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress {
            inner: Arc::new(Inner {
                mode,
                next: AtomicUsize::new(1),
                start: Instant::now(),
                multi,
                finished: Mutex::new(Vec::new()),
                out: Mutex::new(()),
            }),
        }
    }

    /// A line that belongs to no step.
    pub fn note(&self, msg: &str) {
        match (&self.inner.mode, &self.inner.multi) {
            (Mode::Quiet, _) => {}
            (_, Some(m)) => {
                let _ = m.println(msg);
            }
            _ => self.line(msg),
        }
    }

    fn line(&self, s: &str) {
        let _g = self.inner.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(std::io::stderr(), "{s}");
    }

    /// Starts showing a step.
    pub fn vertex(&self, name: &str) -> Vertex {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let bar = self.inner.multi.as_ref().map(|m| {
            let b = m.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template(" {spinner} {prefix} {wide_msg} {elapsed:>4}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_prefix(name.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        if self.inner.mode == Mode::Plain {
            self.line(&format!("#{id} {name}"));
        }
        Vertex {
            id,
            shown: true,
            started: Instant::now(),
            progress: self.clone(),
            bar,
            tail: Mutex::new(VecDeque::new()),
        }
    }

    /// A step that is not shown (its output is kept for its error message only).
    pub fn hidden(&self) -> Vertex {
        Vertex {
            id: 0,
            shown: false,
            started: Instant::now(),
            progress: self.clone(),
            bar: None,
            tail: Mutex::new(VecDeque::new()),
        }
    }

    /// Seconds since the build started.
    pub fn elapsed(&self) -> Duration {
        self.inner.start.elapsed()
    }
}

/// One step being shown.
pub struct Vertex {
    id: usize,
    shown: bool,
    started: Instant,
    progress: Progress,
    bar: Option<ProgressBar>,
    tail: Mutex<VecDeque<String>>,
}

impl Vertex {
    /// A line of the step's output.
    pub fn log(&self, line: &str) {
        {
            let mut t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            if t.len() == TAIL {
                t.pop_front();
            }
            t.push_back(line.to_string());
        }
        match &self.bar {
            Some(b) => b.set_message(line.to_string()),
            None if self.shown && self.progress.inner.mode == Mode::Plain => {
                self.progress.line(&format!(
                    "#{} {:.3} {line}",
                    self.id,
                    self.started.elapsed().as_secs_f64()
                ))
            }
            None => {}
        }
    }

    /// The last lines of output.
    pub fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn cached(self) {
        self.finish("CACHED".into());
    }

    pub fn done(self) {
        let secs = self.started.elapsed().as_secs_f64();
        self.finish(format!("DONE {secs:.1}s"));
    }

    pub fn error(self, msg: &str) {
        self.finish(format!("ERROR: {msg}"));
    }

    fn finish(self, status: String) {
        match &self.bar {
            Some(b) => {
                b.set_style(
                    ProgressStyle::with_template(" => {prefix} {wide_msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b.finish_with_message(status);
                self.progress
                    .inner
                    .finished
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(b.clone());
            }
            None if self.shown && self.progress.inner.mode == Mode::Plain => {
                self.progress.line(&format!("#{} {status}", self.id))
            }
            None => {}
        }
    }
}
