//! Benchmarks behind `runner bench ...`: each compares our implementation side by side with a
//! reference in the same run, reports ratios, and reports peak memory (RSS) beside time.

pub mod cli;
pub mod generate;
pub mod hybrid;
pub mod mem;
pub mod peak;
pub mod stage2;
pub mod tokenize;
pub mod wkv;

use std::path::Path;
use std::process::Command;

/// Runs a Python reference script that prints one JSON object; the error says what to install
/// (`needs`) when an import fails.
pub fn run_python_json(
    python: &str,
    script: &Path,
    args: &[&str],
    needs: &str,
) -> Result<serde_json::Value, String> {
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| format!("cannot start `{python}`: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        return Err(if last.contains("No module named") {
            format!("{needs} not installed for `{python}` ({last}); install them or pass --python")
        } else {
            format!("the reference script failed: {last}")
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).map_err(|e| format!("unreadable reference output: {e}"))
}
