//! The live view on a terminal, laid out as buildx's: a `[+] Building 4.2s (5/8)`
//! header, one line per step (`=> [2/3] RUN make`, its time right-aligned, cut to the
//! terminal's width), the last lines of output under each running step
//! (`=> => # ...`), and at the end `FINISHED`, then the lines that came meanwhile.
//!
//! Hand-written rather than built on indicatif: buildx's layout (a header counting
//! steps, right-aligned timers, output tails that come and go, completed steps
//! scrolling away first when the terminal is short) is a whole-frame redraw, not a
//! set of independent bars.

use crate::End;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Lines of output shown under a running step, as buildx shows.
const TERM_LINES: usize = 6;
const TICK: Duration = Duration::from_millis(100);

struct Job {
    id: usize,
    name: String,
    started: Instant,
    ended: Option<(Duration, End)>,
    tail: VecDeque<String>,
}

#[derive(Default)]
struct State {
    jobs: Vec<Job>,
    /// Lines to print below the view when it finishes.
    after: Vec<String>,
    /// How many lines the last frame took.
    drawn: usize,
    finished: bool,
}

pub(crate) struct View {
    state: Arc<Mutex<State>>,
    start: Instant,
    stop: Arc<AtomicBool>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl View {
    pub(crate) fn start() -> View {
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let ticker = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        let mut s = lock(&state);
                        if !s.finished && !s.jobs.is_empty() {
                            redraw(&mut s, start, false);
                        }
                    }
                })
                .ok()
        };
        View {
            state,
            start,
            stop,
            ticker: Mutex::new(ticker),
        }
    }

    pub(crate) fn add(&self, id: usize, name: &str) {
        lock(&self.state).jobs.push(Job {
            id,
            name: name.to_string(),
            started: Instant::now(),
            ended: None,
            tail: VecDeque::new(),
        });
    }

    pub(crate) fn log(&self, id: usize, line: &str) {
        let mut s = lock(&self.state);
        if let Some(j) = s.jobs.iter_mut().rev().find(|j| j.id == id) {
            if j.tail.len() == TERM_LINES {
                j.tail.pop_front();
            }
            j.tail.push_back(line.replace('\t', "    "));
        }
    }

    pub(crate) fn end(&self, id: usize, end: End) {
        let mut s = lock(&self.state);
        if let Some(j) = s.jobs.iter_mut().rev().find(|j| j.id == id) {
            j.ended = Some((j.started.elapsed(), end));
        }
    }

    /// Before any step: printed at once, above the view. Later: kept for the end.
    pub(crate) fn note(&self, msg: &str) {
        let mut s = lock(&self.state);
        if s.jobs.is_empty() || s.finished {
            let _ = writeln!(std::io::stderr(), "{msg}");
        } else {
            s.after.push(msg.to_string());
        }
    }

    /// The final frame, then what came while the view was live.
    pub(crate) fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        let mut s = lock(&self.state);
        if s.finished {
            return;
        }
        if !s.jobs.is_empty() {
            redraw(&mut s, self.start, true);
        }
        s.finished = true;
        let mut err = std::io::stderr().lock();
        for l in std::mem::take(&mut s.after) {
            let _ = writeln!(err, "{l}");
        }
    }
}

fn redraw(s: &mut State, start: Instant, all: bool) {
    let (rows, cols) = console::Term::stderr().size();
    let lines = frame(&s.jobs, start.elapsed(), cols as usize, rows as usize, all);
    let mut out = String::new();
    if s.drawn > 0 {
        out.push_str(&format!("\x1b[{}A", s.drawn));
    }
    out.push('\r');
    for l in &lines {
        out.push_str(l);
        out.push_str("\x1b[K\n");
    }
    // Whatever the last frame had below this one.
    out.push_str("\x1b[J");
    s.drawn = lines.len();
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(out.as_bytes()).and_then(|()| err.flush());
}

/// `s` cut to `width` characters.
fn cut(s: &str, width: usize) -> String {
    s.chars().take(width).collect()
}

/// One frame: the header, then the steps that fit in `height` lines (completed
/// ones leave first), each cut to `width`, with output tails under running steps.
fn frame(jobs: &[Job], elapsed: Duration, width: usize, height: usize, all: bool) -> Vec<String> {
    let width = width.max(20);
    let done = jobs.iter().filter(|j| j.ended.is_some()).count();
    let status = if all && done == jobs.len() {
        " FINISHED"
    } else {
        ""
    };
    let mut lines = vec![cut(
        &format!(
            "[+] Building {:.1}s ({done}/{}){status}",
            elapsed.as_secs_f64(),
            jobs.len()
        ),
        width - 1,
    )];
    // Room for steps: everything at the end; else the terminal's height, running
    // steps kept in view first.
    let room = if all {
        usize::MAX
    } else {
        height.saturating_sub(2).max(1)
    };
    // The oldest finished steps leave first: of `done`, the first `hidden` are not shown.
    let hidden = done.saturating_sub(room.saturating_sub(jobs.len() - done));
    let mut finished_seen = 0;
    let shown: Vec<&Job> = jobs
        .iter()
        .filter(|j| {
            if j.ended.is_none() {
                return true;
            }
            finished_seen += 1;
            finished_seen > hidden
        })
        .take(room)
        .collect();
    let mut tails_left = height.saturating_sub(lines.len() + shown.len());
    for j in shown {
        let (dt, label) = match &j.ended {
            Some((d, End::Done)) => (*d, String::new()),
            Some((d, End::Cached)) => (*d, "CACHED ".into()),
            Some((d, End::Error(_))) => (*d, "ERROR ".into()),
            None => (j.started.elapsed(), String::new()),
        };
        let secs = dt.as_secs_f64();
        let timer = format!(" {:.1}s", if secs < 0.05 { 0.0 } else { secs });
        let pfx = " => ";
        let left = width.saturating_sub(pfx.len() + timer.len() + 1);
        let name = cut(&format!("{label}{}", j.name), left);
        let pad = width - 1 - timer.len();
        lines.push(format!("{:<pad$}{timer}", format!("{pfx}{name}")));
        if j.ended.is_none() && !all {
            for t in j.tail.iter().filter(|t| !t.trim().is_empty()) {
                if tails_left == 0 {
                    break;
                }
                tails_left = tails_left.saturating_sub(1);
                lines.push(cut(&format!(" => => # {t}"), width - 1));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: usize, name: &str, ended: Option<End>, tail: &[&str]) -> Job {
        Job {
            id,
            name: name.into(),
            started: Instant::now(),
            ended: ended.map(|e| (Duration::from_millis(1500), e)),
            tail: tail.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_frame_is_buildx_s_layout() {
        let long = format!("[2/3] RUN {}", "x".repeat(200));
        let jobs = vec![
            job(
                1,
                "[internal] load build definition from Dockerfile",
                Some(End::Done),
                &[],
            ),
            job(2, "[1/3] FROM busybox", Some(End::Cached), &[]),
            job(3, &long, None, &["step one", "", "step two"]),
        ];
        let f = frame(&jobs, Duration::from_millis(4200), 60, 40, false);
        assert_eq!(f[0], "[+] Building 4.2s (2/3)");
        assert!(f[1].starts_with(" => [internal] load build definition from Dockerfile"));
        assert!(f[1].ends_with(" 1.5s"), "{:?}", f[1]);
        assert!(
            f[2].starts_with(" => CACHED [1/3] FROM busybox"),
            "{:?}",
            f[2]
        );
        // The long name is cut so that its time stays on the line.
        assert!(
            f[3].starts_with(" => [2/3] RUN xxx") && f[3].ends_with('s'),
            "{:?}",
            f[3]
        );
        assert!(f.iter().all(|l| l.chars().count() < 60), "{f:?}");
        assert_eq!(&f[4..], [" => => # step one", " => => # step two"]);
        // The last frame: FINISHED, no tails.
        let mut jobs = jobs;
        jobs[2].ended = Some((Duration::from_secs(2), End::Error("exit 1".into())));
        let f = frame(&jobs, Duration::from_secs(5), 60, 40, true);
        assert_eq!(f[0], "[+] Building 5.0s (3/3) FINISHED");
        assert_eq!(f.len(), 4);
        assert!(f[3].starts_with(" => ERROR [2/3] RUN xxx"), "{:?}", f[3]);
    }

    #[test]
    fn a_short_terminal_keeps_running_steps_in_view() {
        let mut jobs: Vec<Job> = (0..10)
            .map(|i| job(i, &format!("[{i}/10] RUN done-{i}"), Some(End::Done), &[]))
            .collect();
        jobs[1] = job(1, "[1/10] RUN still-running", None, &["out"]);
        let f = frame(&jobs, Duration::from_secs(1), 80, 6, false);
        assert!(f.len() <= 6, "{f:?}");
        assert!(f.iter().any(|l| l.contains("still-running")), "{f:?}");
        assert!(f.iter().any(|l| l.contains("done-9")), "{f:?}");
        assert!(!f.iter().any(|l| l.contains("done-2")), "{f:?}");
    }
}
