//! A small harness for end-to-end CLI tests: a temporary project folder, files in it, and the
//! `runner` binary run inside it.

#![allow(dead_code)]

pub mod assets;
pub mod hub_server;
pub mod python;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub struct Project {
    pub dir: tempfile::TempDir,
}

pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn from(o: Output) -> Ran {
        Ran {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn ok(self) -> Ran {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl Project {
    pub fn new() -> Project {
        Project {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_default()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
        c.args(args)
            .current_dir(self.path())
            .env_remove("RUST_LOG")
            .env_remove("RUNNER_RUNS_DIR");
        c
    }

    pub fn run(&self, args: &[&str]) -> Ran {
        Ran::from(self.cmd(args).output().expect("runner starts"))
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runner starts")
    }

    /// Run directories of a pipeline, oldest first.
    pub fn runs(&self, pipeline: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.path().join("runs").join(pipeline))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Waits (up to `secs`) until `cond` holds.
    pub fn wait_for(&self, secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Parses a step manifest.
pub fn manifest(step_dir: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(step_dir.join("manifest.json")).unwrap_or_else(|_| "null".into());
    serde_json::from_str(&text).unwrap()
}

/// Where a running Slurm accepts jobs from this machine: `SLURM_CONF`, else the configuration
/// `scripts/local-slurm.sh start` wrote. An error (the reason) when there is none.
pub fn slurm_conf() -> Result<PathBuf, String> {
    let conf = match std::env::var_os("SLURM_CONF") {
        Some(c) => PathBuf::from(c),
        None => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/local-slurm.sh");
            let out = std::process::Command::new(script)
                .arg("conf")
                .output()
                .map_err(|e| format!("scripts/local-slurm.sh: {e}"))?;
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    let sinfo = std::process::Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .env("SLURM_CONF", &conf)
        .output();
    match sinfo {
        Err(e) => Err(format!("Slurm's client is not installed (sinfo: {e})")),
        Ok(o) if !o.status.success() => Err(format!(
            "no Slurm controller answers ({}); start one with `sudo scripts/local-slurm.sh start`",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => Ok(conf),
    }
}

/// The configuration of a running Slurm ([`slurm_conf`]), or return from the test saying why
/// there is none (`.ci/run` installs and starts one).
#[allow(unused_macros)]
macro_rules! slurm_or_skip {
    () => {
        match $crate::common::slurm_conf() {
            Ok(conf) => conf,
            Err(why) => {
                eprintln!("skipped: {why} (.ci/run installs and starts one)");
                return;
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use slurm_or_skip;
