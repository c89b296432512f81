//! Build progress, in buildx's three forms: a live view on a terminal ([`tty`]),
//! BuildKit's plain format for logs (`#N name`, `#N 0.123 output`, `#N DONE 1.2s`,
//! `#N CACHED`), and BuildKit's SolveStatus JSON lines ([`rawjson`]).

mod rawjson;
mod tty;

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
    /// BuildKit's `client.SolveStatus` as JSON, one object per line.
    RawJson,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "tty" => Ok(Mode::Tty),
            "plain" => Ok(Mode::Plain),
            "quiet" => Ok(Mode::Quiet),
            "rawjson" => Ok(Mode::RawJson),
            other => Err(format!(
                "invalid progress mode {other:?}: expected auto, tty, plain, quiet or rawjson"
            )),
        }
    }
}

/// The build's progress display; cheap to clone. When the last clone goes, a live
/// view draws its final frame and prints the lines that came while it was live.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    sink: Sink,
    next: AtomicUsize,
    start: Instant,
    out: Mutex<()>,
}

/// Where progress goes, by mode (auto resolved).
enum Sink {
    Quiet,
    Plain,
    Tty(tty::View),
    Json(rawjson::Stream),
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Sink::Tty(v) = &self.sink {
            v.finish();
        }
    }
}

impl Progress {
    /// The display for `mode`; `tty` needs stderr to be a terminal, as in buildx.
    pub fn open(mode: Mode) -> Result<Progress, String> {
        let terminal = std::io::stderr().is_terminal();
        let mode = match mode {
            Mode::Auto if terminal => Mode::Tty,
            Mode::Auto => Mode::Plain,
            Mode::Tty if !terminal => {
                return Err(
                    "--progress tty: stderr is not a terminal (use --progress plain or auto)"
                        .into(),
                )
            }
            m => m,
        };
        Ok(Progress::with_mode(mode))
    }

    /// A display that needs no terminal: `quiet`, `plain` or `rawjson` (`auto` and
    /// `tty` fall back to plain without one).
    pub fn new(mode: Mode) -> Progress {
        Progress::open(mode).unwrap_or_else(|_| Progress::with_mode(Mode::Plain))
    }

    fn with_mode(mode: Mode) -> Progress {
        Progress {
            inner: Arc::new(Inner {
                sink: match mode {
                    Mode::Quiet => Sink::Quiet,
                    Mode::Tty => Sink::Tty(tty::View::start()),
                    Mode::RawJson => Sink::Json(rawjson::Stream::stderr()),
                    Mode::Auto | Mode::Plain => Sink::Plain,
                },
                next: AtomicUsize::new(1),
                start: Instant::now(),
                out: Mutex::new(()),
            }),
        }
    }

    /// A line that belongs to no step. On a live view it comes after the steps
    /// (above them when no step has started yet).
    pub fn note(&self, msg: &str) {
        match &self.inner.sink {
            Sink::Quiet => {}
            Sink::Tty(v) => v.note(msg),
            Sink::Json(j) => j.note(msg),
            Sink::Plain => self.line(msg),
        }
    }

    fn line(&self, s: &str) {
        let _g = self.inner.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(std::io::stderr(), "{s}");
    }

    /// Starts showing a step.
    pub fn vertex(&self, name: &str) -> Vertex {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        match &self.inner.sink {
            Sink::Plain => self.line(&format!("#{id} {name}")),
            Sink::Tty(v) => v.add(id, name),
            Sink::Json(j) => j.started(id, name),
            Sink::Quiet => {}
        }
        Vertex {
            id,
            name: name.to_string(),
            shown: true,
            started: Instant::now(),
            progress: self.clone(),
            tail: Mutex::new(VecDeque::new()),
        }
    }

    /// A step that is not shown (its output is kept for its error message only).
    pub fn hidden(&self) -> Vertex {
        Vertex {
            id: 0,
            name: String::new(),
            shown: false,
            started: Instant::now(),
            progress: self.clone(),
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
    name: String,
    shown: bool,
    started: Instant,
    progress: Progress,
    tail: Mutex<VecDeque<String>>,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum End {
    Done,
    Cached,
    Error(String),
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
        if !self.shown {
            return;
        }
        let inner = &self.progress.inner;
        match &inner.sink {
            Sink::Plain => self.progress.line(&format!(
                "#{} {:.3} {line}",
                self.id,
                self.started.elapsed().as_secs_f64()
            )),
            Sink::Tty(v) => v.log(self.id, line),
            Sink::Json(j) => j.log(self.id, line),
            Sink::Quiet => {}
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
        self.finish(End::Cached);
    }

    pub fn done(self) {
        self.finish(End::Done);
    }

    pub fn error(self, msg: &str) {
        self.finish(End::Error(msg.to_string()));
    }

    fn finish(self, end: End) {
        if !self.shown {
            return;
        }
        let inner = &self.progress.inner;
        match &inner.sink {
            Sink::Plain => {
                let status = match &end {
                    End::Done => format!("DONE {:.1}s", self.started.elapsed().as_secs_f64()),
                    End::Cached => "CACHED".into(),
                    End::Error(m) => format!("ERROR: {m}"),
                };
                self.progress.line(&format!("#{} {status}", self.id))
            }
            Sink::Tty(v) => v.end(self.id, end),
            Sink::Json(j) => j.ended(self.id, &self.name, end),
            Sink::Quiet => {}
        }
    }
}
