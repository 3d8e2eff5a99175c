//! Terminal output: progress bars (indicatif) and the tracing subscriber that writes log lines
//! to stderr (above the bars) and, once a run directory exists, to its `run.log`.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static MULTI: OnceLock<MultiProgress> = OnceLock::new();
static RUN_LOG: Mutex<Option<File>> = Mutex::new(None);
static QUIET: OnceLock<bool> = OnceLock::new();

fn multi() -> &'static MultiProgress {
    MULTI.get_or_init(|| {
        let hidden = *QUIET.get().unwrap_or(&false) || !io::stderr().is_terminal();
        let target = if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        MultiProgress::with_draw_target(target)
    })
}

/// A progress bar drawn below the log lines (hidden when quiet or not on a terminal).
pub fn bar(len: u64, label: &str) -> ProgressBar {
    let pb = multi().add(ProgressBar::new(len));
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    pb
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
