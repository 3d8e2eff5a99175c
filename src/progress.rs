//! Terminal output: progress bars (indicatif) and the tracing subscriber that writes log lines
//! to stderr (above the bars) and, once a run directory exists, to its `run.log`.
//!
//! A [`Progress`] draws a bar on a terminal; when stderr is not a terminal (CI, a batch job,
//! `nohup`) it instead logs a line every `RUNNER_PROGRESS_SECS` seconds (default 30) with the
//! position, percentage, rate, the bar's message (loss, reward) and the ETA. A step's bar can
//! also keep a small `progress.json` up to date, which `runner status` reads.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static MULTI: OnceLock<MultiProgress> = OnceLock::new();
static RUN_LOG: Mutex<Option<File>> = Mutex::new(None);
static QUIET: OnceLock<bool> = OnceLock::new();

fn multi() -> &'static MultiProgress {
    MULTI.get_or_init(|| {
        let target = if bars_drawn() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        MultiProgress::with_draw_target(target)
    })
}

/// Default seconds between two progress lines when stderr is not a terminal.
const DEFAULT_LINE_SECS: f64 = 30.0;
/// Seconds between two rewrites of a `progress.json`.
const RECORD_SECS: f64 = 2.0;
/// File name of a step's progress record (beside its `metrics.jsonl`).
pub const PROGRESS_FILE: &str = "progress.json";

fn quiet() -> bool {
    *QUIET.get().unwrap_or(&false)
}

fn bars_drawn() -> bool {
    !quiet() && io::stderr().is_terminal()
}

fn line_interval() -> Option<Duration> {
    if quiet() || io::stderr().is_terminal() {
        return None;
    }
    Some(Duration::from_secs_f64(line_interval_secs()))
}

/// Seconds between two progress lines: `RUNNER_PROGRESS_SECS`, default 30 (also how often the
/// runner relays the progress of a step running elsewhere, e.g. as a Slurm job).
pub fn line_interval_secs() -> f64 {
    std::env::var("RUNNER_PROGRESS_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .unwrap_or(DEFAULT_LINE_SECS)
}

/// What a `progress.json` holds: where a long piece of work stands, rewritten every few
/// seconds while it runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProgressRecord {
    pub label: String,
    pub unit: String,
    pub position: u64,
    pub total: u64,
    /// Units per second since this process started the work (`None` before any progress).
    pub rate: Option<f64>,
    /// Seconds left at that rate.
    pub eta_s: Option<f64>,
    /// The bar's message (`loss 2.3456`, `reward 0.500`).
    pub message: String,
    /// Unix seconds of this record.
    pub updated: f64,
    pub finished: bool,
}

impl ProgressRecord {
    /// `42.0% (5.51M/13.1M tokens) · 3.4k tokens/s`: where the work stands, as the progress
    /// lines and `runner status` show it.
    pub fn position(&self) -> String {
        let pct = if self.total > 0 {
            100.0 * self.position.min(self.total) as f64 / self.total as f64
        } else {
            100.0
        };
        let mut s = format!(
            "{pct:.1}% ({}/{} {})",
            human_count(self.position),
            human_count(self.total),
            self.unit
        );
        if let Some(r) = self.rate {
            s.push_str(&format!(" · {}", human_rate(r, &self.unit)));
        }
        s
    }

    /// Seconds left now: the ETA less the time since the record was written.
    pub fn remaining_secs(&self) -> Option<f64> {
        let since = (unix_now() - self.updated).max(0.0);
        self.eta_s.map(|e| (e - since).max(0.0))
    }
}

struct State {
    started: Instant,
    /// Position at the first update of this process (a resumed step starts part-way).
    start_pos: Option<u64>,
    pos: u64,
    message: String,
    last_line: Instant,
    last_record: Option<Instant>,
    lines_written: usize,
}

/// A progress bar (terminal) or periodic progress lines (elsewhere), optionally recorded in a
/// `progress.json`.
pub struct Progress {
    bar: ProgressBar,
    label: String,
    unit: String,
    len: u64,
    lines: Option<Duration>,
    record: Option<PathBuf>,
    state: Mutex<State>,
}

impl Progress {
    /// A bar of `len` `unit`s for `label` (`stage1`, `tokenize`), logging lines when stderr is
    /// not a terminal.
    pub fn new(len: u64, label: &str, unit: &str) -> Progress {
        let pb = multi().add(ProgressBar::new(len));
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_prefix(if unit.is_empty() {
            label.to_string()
        } else {
            format!("{label} ({unit})")
        });
        let now = Instant::now();
        Progress {
            bar: pb,
            label: label.to_string(),
            unit: unit.to_string(),
            len,
            lines: line_interval(),
            record: None,
            state: Mutex::new(State {
                started: now,
                start_pos: None,
                pos: 0,
                message: String::new(),
                last_line: now,
                last_record: None,
                lines_written: 0,
            }),
        }
    }

    /// No progress lines off a terminal (for bars whose events are logged anyway).
    pub fn without_lines(mut self) -> Progress {
        self.lines = None;
        self
    }

    /// Keeps `path` (a `progress.json`) up to date with this bar.
    pub fn recording(mut self, path: PathBuf) -> Progress {
        self.record = Some(path);
        self
    }

    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
        let mut st = self.state.lock().expect("progress lock");
        if st.start_pos.is_none() {
            st.start_pos = Some(pos);
            st.started = Instant::now();
            st.last_line = st.started;
        }
        st.pos = pos;
        self.report(&mut st, false);
    }

    pub fn inc(&self, delta: u64) {
        let pos = self.state.lock().expect("progress lock").pos + delta;
        self.set_position(pos);
    }

    /// The bar's message; it goes into the progress lines and the record at the next update.
    pub fn set_message(&self, msg: impl Into<String>) {
        let msg = msg.into();
        self.bar.set_message(msg.clone());
        self.state.lock().expect("progress lock").message = msg;
    }

    /// Removes the bar; off a terminal a last line is logged if any was, and the record says
    /// the work finished.
    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
        let mut st = self.state.lock().expect("progress lock");
        self.report(&mut st, true);
    }

    fn rate(&self, st: &State) -> Option<f64> {
        let start = st.start_pos?;
        let secs = st.started.elapsed().as_secs_f64();
        (st.pos > start && secs > 0.0).then(|| (st.pos - start) as f64 / secs)
    }

    /// Where the work stands now: what the record file holds and the lines show.
    fn snapshot(&self, st: &State, finished: bool) -> ProgressRecord {
        let rate = self.rate(st);
        let eta = rate.map(|r| self.len.saturating_sub(st.pos) as f64 / r);
        ProgressRecord {
            label: self.label.clone(),
            unit: self.unit.clone(),
            position: st.pos,
            total: self.len,
            rate,
            eta_s: if finished { Some(0.0) } else { eta },
            message: st.message.clone(),
            updated: unix_now(),
            finished,
        }
    }

    fn report(&self, st: &mut State, finished: bool) {
        let now = Instant::now();
        let line_due = self.lines.is_some_and(|every| {
            let due = now.duration_since(st.last_line) >= every;
            (due && !finished) || (finished && st.lines_written > 0)
        });
        let record_due = self.record.is_some()
            && (finished
                || st
                    .last_record
                    .is_none_or(|t| now.duration_since(t).as_secs_f64() >= RECORD_SECS));
        if !line_due && !record_due {
            return;
        }
        let record = self.snapshot(st, finished);
        if line_due {
            st.last_line = now;
            st.lines_written += 1;
            tracing::info!("{}", line(&record, st.started.elapsed().as_secs_f64()));
        }
        if let (true, Some(path)) = (record_due, &self.record) {
            st.last_record = Some(now);
            if let Err(e) = crate::util::fsx::atomic_write_json(path, &record) {
                tracing::debug!("progress record {}: {e}", path.display());
            }
        }
    }
}

/// A progress line: `stage1: 42.0% (…) · 3.4k tokens/s · loss 0.3642 · elapsed 27m02s ·
/// ETA 37m10s` (or `· done in …` at the end).
fn line(rec: &ProgressRecord, elapsed: f64) -> String {
    let mut parts = vec![format!("{}: {}", rec.label, rec.position())];
    if !rec.message.is_empty() {
        parts.push(rec.message.clone());
    }
    if rec.finished {
        parts.push(format!("done in {}", human_secs(elapsed)));
    } else {
        parts.push(format!("elapsed {}", human_secs(elapsed)));
        parts.push(match rec.eta_s {
            Some(e) => format!("ETA {}", human_secs(e)),
            None => "ETA unknown".to_string(),
        });
    }
    parts.join(" · ")
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `1234567` → `1.23M`.
pub fn human_count(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2}G", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2}M", f / 1e6)
    } else if f >= 1e4 {
        format!("{:.1}k", f / 1e3)
    } else {
        n.to_string()
    }
}

/// A rate in units per second, readable when slow: `3.4k tokens/s`, `2.5 steps/s`,
/// `5.5 layers/min`.
pub fn human_rate(per_s: f64, unit: &str) -> String {
    if per_s >= 10.0 {
        format!("{} {unit}/s", human_count(per_s.round() as u64))
    } else if per_s >= 1.0 {
        format!("{per_s:.1} {unit}/s")
    } else {
        format!("{:.1} {unit}/min", per_s * 60.0)
    }
}

/// `4000.0` → `1h06m40s`.
pub fn human_secs(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".to_string();
    }
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, sec) => format!("{h}h{m:02}m{sec:02}s"),
    }
}

/// A bar drawn below the log lines (see [`Progress`]).
pub fn bar(len: u64, label: &str, unit: &str) -> Progress {
    Progress::new(len, label, unit)
}

/// A spinner-style bar with a message only.
pub fn spinner(label: &str) -> ProgressBar {
    let pb = multi().add(ProgressBar::new_spinner());
    pb.set_style(
        ProgressStyle::with_template("{spinner} {prefix} {wide_msg}").expect("valid template"),
    );
    pb.set_prefix(label.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

/// Starts (or stops, with `None`) copying log lines into a run's `run.log`.
pub fn set_run_log(path: Option<&Path>) -> io::Result<()> {
    let file = match path {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        None => None,
    };
    *RUN_LOG.lock().expect("log lock") = file;
    Ok(())
}

/// Installs the global subscriber. `quiet` shows only warnings and errors on stderr; the run
/// log always gets everything at `info` and above (`RUST_LOG` refines both).
pub fn init(quiet: bool) {
    let _ = QUIET.set(quiet);
    let stderr_filter = if quiet { "warn" } else { "info" };
    let stderr_layer = tracing_subscriber::fmt::layer()
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_writer(StderrAboveBars)
        .with_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(stderr_filter)),
        );
    let file_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(false)
        .with_writer(RunLogWriter)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let _ = tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
        .try_init();
}

struct StderrAboveBars;

impl<'a> MakeWriter<'a> for StderrAboveBars {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            buf: Vec::new(),
            to_file: false,
        }
    }
}

struct RunLogWriter;

impl<'a> MakeWriter<'a> for RunLogWriter {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            buf: Vec::new(),
            to_file: true,
        }
    }
}

/// Buffers one event and writes it whole on drop (stderr around the bars, or the run log).
struct LineWriter {
    buf: Vec<u8>,
    to_file: bool,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if self.to_file {
            if let Some(f) = RUN_LOG.lock().expect("log lock").as_mut() {
                let _ = f.write_all(&self.buf);
            }
        } else {
            multi().suspend(|| {
                let _ = io::stderr().write_all(&self.buf);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_count(999), "999");
        assert_eq!(human_count(12_345), "12.3k");
        assert_eq!(human_count(2_940_000), "2.94M");
        assert_eq!(human_secs(59.4), "59s");
        assert_eq!(human_secs(61.0), "1m01s");
        assert_eq!(human_secs(4000.0), "1h06m40s");
        assert_eq!(human_rate(3412.0, "tokens"), "3412 tokens/s");
        assert_eq!(human_rate(2.46, "steps"), "2.5 steps/s");
        assert_eq!(human_rate(0.0917, "layers scored"), "5.5 layers scored/min");
    }

    #[test]
    fn record_tracks_position_rate_and_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROGRESS_FILE);
        let p = Progress::new(100, "stage1", "tokens").recording(path.clone());
        p.set_position(10);
        let first: ProgressRecord = crate::util::fsx::read_json(&path).unwrap().unwrap();
        assert_eq!(
            (first.position, first.total, first.finished),
            (10, 100, false)
        );
        assert_eq!(
            first.rate, None,
            "no rate before any progress in this process"
        );
        std::thread::sleep(Duration::from_millis(20));
        p.set_message("loss 1.5000");
        p.set_position(60);
        p.finish_and_clear();
        let last: ProgressRecord = crate::util::fsx::read_json(&path).unwrap().unwrap();
        assert_eq!((last.position, last.finished), (60, true));
        assert_eq!(last.message, "loss 1.5000");
        assert!(last.rate.unwrap() > 0.0);
        let mut rec = p.snapshot(&p.state.lock().unwrap(), false);
        (rec.rate, rec.eta_s) = (Some(2500.0), Some(20.0));
        let line = line(&rec, 1.0);
        assert!(
            line.starts_with("stage1: 60.0% (60/100 tokens) · 2500 tokens/s · loss 1.5000"),
            "{line}"
        );
        assert!(line.ends_with("ETA 20s"), "{line}");
    }
}
