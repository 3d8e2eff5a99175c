//! Models and dataset files from the Hugging Face Hub by name: `hf://ORG/NAME[@REVISION]` (a
//! model snapshot) and `hf://datasets/ORG/NAME[@REVISION]/PATH` (files of a dataset).
//!
//! Downloads go through the `hf-hub` crate into the Python library's cache layout (`HF_HOME`,
//! default `~/.cache/huggingface`; `HF_ENDPOINT` for a mirror; `HF_TOKEN` or the cache's token
//! file for gated repositories), so files fetched by either are reused by the other. A revision
//! (branch, tag or commit) is resolved to its commit hash once per process (what cache keys and
//! manifests record); without the network (or with `HF_HUB_OFFLINE=1`) the cache's `refs/` say
//! which commit a branch was. Every file is checked against its ETag (the sha256 of LFS files,
//! the git blob hash of the others) before use: a truncated or corrupted download is removed
//! and reported, never used.

use anyhow::{Context, Result, bail};
use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};
use sha2::Digest;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The prefix that names Hub repositories.
pub const SCHEME: &str = "hf://";

/// A repository (and, for datasets, a path inside it) on the Hub.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HubRef {
    pub dataset: bool,
    /// `ORG/NAME`.
    pub repo: String,
    /// Branch, tag or commit (`main` when not given).
    pub revision: String,
    /// A file or folder inside a dataset (empty: the whole repository).
    pub path: String,
}

impl HubRef {
    /// Parses `hf://ORG/NAME[@REV]` or `hf://datasets/ORG/NAME[@REV][/PATH]`.
    pub fn parse(s: &str) -> Result<HubRef, String> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("`{s}` does not start with {SCHEME}"))?;
        let (dataset, rest) = match rest.strip_prefix("datasets/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let mut parts = rest.splitn(3, '/');
        let org = parts.next().unwrap_or("");
        let name_rev = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("").trim_end_matches('/').to_string();
        let (name, revision) = match name_rev.split_once('@') {
            Some((n, r)) => (n, r.to_string()),
            None => (name_rev, "main".to_string()),
        };
        let ok_name = |x: &str| {
            !x.is_empty()
                && x != "."
                && x != ".."
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !ok_name(org) || !ok_name(name) {
            return Err(format!(
                "`{s}`: write {SCHEME}ORG/NAME[@REVISION] (a model) or \
                 {SCHEME}datasets/ORG/NAME[@REVISION]/PATH (dataset files)"
            ));
        }
        if revision.is_empty() || revision.contains("..") || revision.contains('\\') {
            return Err(format!(
                "`{s}`: the revision after `@` is empty or not a name"
            ));
        }
        if !path.is_empty() && !dataset {
            return Err(format!(
                "`{s}`: a model is named as {SCHEME}ORG/NAME[@REVISION] (its files are chosen by \
                 the runner); paths inside a repository are for datasets"
            ));
        }
        if path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
            && !path.is_empty()
        {
            return Err(format!(
                "`{s}`: the path inside the repository must not use `..`"
            ));
        }
        Ok(HubRef {
            dataset,
            repo: format!("{org}/{name}"),
            revision,
            path,
        })
    }

    fn repo_type(&self) -> RepoType {
        if self.dataset {
            RepoType::Dataset
        } else {
            RepoType::Model
        }
    }

    fn at(&self, revision: &str) -> Repo {
        Repo::with_revision(self.repo.clone(), self.repo_type(), revision.to_string())
    }

    /// The cache folder of this repository (`models--ORG--NAME` or `datasets--ORG--NAME`).
    fn cache_dir(&self) -> PathBuf {
        Cache::from_env().path().join(self.at("main").folder_name())
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.dataset { "datasets/" } else { "" };
        write!(f, "{SCHEME}{kind}{}", self.repo)?;
        if self.revision != "main" {
            write!(f, "@{}", self.revision)?;
        }
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        Ok(())
    }
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn api() -> Result<Api> {
    let cache = Cache::from_env();
    let token = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| cache.token());
    ApiBuilder::from_env()
        .with_token(token)
        .with_progress(false)
        .build()
        .context("setting up the Hugging Face Hub client")
}

/// What a revision resolved to: its commit and the repository's files at that commit.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub commit: String,
    /// `None` when resolved from the cache alone (offline): the snapshot's files are used.
    pub files: Option<Vec<String>>,
}

/// (repository, is a dataset, revision) → what it resolved to in this process.
type ResolvedMemo = Mutex<HashMap<(String, bool, String), Resolved>>;

static RESOLVED: OnceLock<ResolvedMemo> = OnceLock::new();

/// Resolves `r`'s revision to a commit hash (once per process, so a step's key and its run see
/// the same commit): from the Hub, or from the cache's `refs/` when the Hub cannot be reached.
pub fn resolve(r: &HubRef) -> Result<Resolved> {
    let memo = RESOLVED.get_or_init(Default::default);
    let key = (r.repo.clone(), r.dataset, r.revision.clone());
    if let Some(hit) = memo.lock().expect("hub memo").get(&key) {
        return Ok(hit.clone());
    }
    let from_cache = || -> Option<Resolved> {
        let dir = r.cache_dir();
        let commit = if is_commit(&r.revision) {
            r.revision.clone()
        } else {
            std::fs::read_to_string(dir.join("refs").join(&r.revision))
                .ok()?
                .trim()
                .to_string()
        };
        dir.join("snapshots")
            .join(&commit)
            .is_dir()
            .then_some(Resolved {
                commit,
                files: None,
            })
    };
    let resolved = if offline() {
        from_cache().with_context(|| {
            format!(
                "{r}: HF_HUB_OFFLINE is set and the cache ({}) has no snapshot of revision `{}`",
                r.cache_dir().display(),
                r.revision
            )
        })?
    } else {
        match api()?.repo(r.at(&r.revision)).info() {
            Ok(info) => {
                // The commit names a cache folder: it must be a hash, nothing a path could be.
                anyhow::ensure!(
                    is_commit(&info.sha),
                    "{r}: the Hub answered commit `{}`, which is not a 40-digit hash (is \
                     HF_ENDPOINT a Hugging Face Hub?)",
                    info.sha
                );
                // Remember the branch → commit mapping as the Python library does.
                if !is_commit(&r.revision) {
                    let refs = r.cache_dir().join("refs");
                    let _ = std::fs::create_dir_all(&refs);
                    let _ = crate::util::fsx::atomic_write(
                        &refs.join(&r.revision),
                        info.sha.as_bytes(),
                    );
                }
                Resolved {
                    commit: info.sha,
                    files: Some(info.siblings.into_iter().map(|s| s.rfilename).collect()),
                }
            }
            Err(e) => match (hub_status(&e), from_cache()) {
                (Some(404 | 401 | 403), _) => bail!(
                    "{r}: the Hub has no revision `{}` of this repository, or it is gated \
                     (HTTP {}): check the name and revision, and set HF_TOKEN for gated models",
                    r.revision,
                    hub_status(&e).unwrap_or_default()
                ),
                (_, Some(cached)) => {
                    tracing::warn!("{r}: the Hub cannot be reached ({e}); using the cached commit");
                    cached
                }
                (_, None) => {
                    return Err(anyhow::anyhow!("{e}")).with_context(|| {
                        format!(
                            "{r}: cannot reach the Hub to resolve revision `{}`, and it is not in \
                             the cache {} (HF_ENDPOINT sets a mirror)",
                            r.revision,
                            r.cache_dir().display()
                        )
                    });
                }
            },
        }
    };
    memo.lock().expect("hub memo").insert(key, resolved.clone());
    Ok(resolved)
}

fn hub_status(e: &hf_hub::api::sync::ApiError) -> Option<u16> {
    match e {
        hf_hub::api::sync::ApiError::RequestError(b) => match b.as_ref() {
            ureq::Error::Status(code, _) => Some(*code),
            ureq::Error::Transport(_) => None,
        },
        _ => None,
    }
}

fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

/// Which files of a model repository the runner needs: configuration, tokenizer, chat
/// template and safetensors weights (not PyTorch pickles, ONNX or GGUF copies).
pub fn model_file_wanted(name: &str) -> bool {
    if name.contains('/') {
        return false;
    }
    name.ends_with(".safetensors")
        || name == "model.safetensors.index.json"
        || matches!(
            name,
            "config.json"
                | "generation_config.json"
                | "tokenizer.json"
                | "tokenizer_config.json"
                | "special_tokens_map.json"
                | "chat_template.jinja"
                | "chat_template.json"
                | "vocab.json"
                | "merges.txt"
        )
}

/// The local folder of `r` at its resolved commit, downloading what is missing: for a model,
/// the files [`model_file_wanted`] picks; for a dataset, the file or folder `r.path`.
pub fn fetch(r: &HubRef) -> Result<PathBuf> {
    let resolved = resolve(r)?;
    let snapshot = r.cache_dir().join("snapshots").join(&resolved.commit);
    let wanted: Vec<String> = match &resolved.files {
        Some(files) => files
            .iter()
            .filter(|f| {
                if r.dataset {
                    r.path.is_empty() || **f == r.path || f.starts_with(&format!("{}/", r.path))
                } else {
                    model_file_wanted(f)
                }
            })
            .cloned()
            .collect(),
        None => Vec::new(), // offline: the snapshot has what an earlier download fetched
    };
    // File names come from the server and become paths in the cache: plain relative paths only.
    if let Some(bad) = wanted.iter().find(|f| !plain_relative_path(f)) {
        bail!("{r}: the repository lists a file `{bad}` that is not a plain relative path");
    }
    if resolved.files.is_some() && wanted.is_empty() {
        bail!(
            "{r}: the repository at {} has no {} (files: config.json, tokenizer files, \
             *.safetensors are what a model needs)",
            &resolved.commit[..resolved.commit.len().min(12)],
            if r.dataset {
                format!("file or folder `{}`", r.path)
            } else {
                "model files".to_string()
            }
        );
    }
    if !r.dataset && resolved.files.is_some() && !wanted.iter().any(|f| f == "config.json") {
        bail!("{r}: the repository has no config.json: not a Hugging Face model");
    }
    let repo = r.at(&resolved.commit);
    let mut client: Option<Api> = None;
    for (i, file) in wanted.iter().enumerate() {
        let local = snapshot.join(file);
        if local.exists() && verified(&local).is_ok() {
            continue;
        }
        if offline() {
            bail!("{r}: {file} is not in the cache and HF_HUB_OFFLINE is set");
        }
        if client.is_none() {
            client = Some(api()?);
        }
        tracing::info!("{r}: downloading {file} ({}/{})", i + 1, wanted.len());
        let got = client
            .as_ref()
            .expect("client made above")
            .repo(repo.clone())
            .download(file)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| {
                format!(
                    "{r}: downloading {file} failed (run again to resume; a partial download \
                     is kept as a `.part` file in the cache and never used)"
                )
            })?;
        if let Err(e) = verified(&got) {
            remove_bad_download(&got, &snapshot, &r.cache_dir().join("blobs"));
            return Err(e.context(format!("{r}: the download of {file} is corrupt; run again")));
        }
    }
    let out = if r.path.is_empty() {
        snapshot
    } else {
        snapshot.join(&r.path)
    };
    anyhow::ensure!(
        out.exists(),
        "{r}: {} is not in the cache (download it once with the network available)",
        out.display()
    );
    Ok(out)
}

/// Whether `name` (a file name the server listed) is a non-empty relative path of plain
/// components: no `..`, `.`, root, empty component or backslash.
fn plain_relative_path(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\\')
        && Path::new(name)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        && !name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
}

/// Removes a download that failed its check — the snapshot's link and the blob it points to —
/// so the next attempt fetches it afresh; only inside this repository's `snapshot` and `blobs`
/// folders of the cache, which the download just wrote.
fn remove_bad_download(link: &Path, snapshot: &Path, blobs: &Path) {
    if let Ok(target) = std::fs::canonicalize(link)
        && let Ok(blobs) = std::fs::canonicalize(blobs)
        && target.starts_with(&blobs)
    {
        let _ = std::fs::remove_file(&target);
    }
    if link.starts_with(snapshot) {
        let _ = std::fs::remove_file(link);
    }
}

/// Checks a cached file against the ETag its blob is named after: the sha256 of an LFS file
/// (64 hex digits) or the git blob hash (40 hex digits) of a small one.
fn verified(path: &Path) -> Result<()> {
    let blob = std::fs::canonicalize(path)
        .with_context(|| format!("{} is a broken link", path.display()))?;
    let etag = blob
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let bytes = std::fs::read(&blob).with_context(|| format!("reading {}", blob.display()))?;
    let got = match etag.len() {
        64 => hex::encode(sha2::Sha256::digest(&bytes)),
        40 => {
            let mut h = sha1_smol::Sha1::new();
            h.update(format!("blob {}\0", bytes.len()).as_bytes());
            h.update(&bytes);
            h.digest().to_string()
        }
        // Not named by a content hash (another tool's cache): nothing to compare with.
        _ => return Ok(()),
    };
    anyhow::ensure!(
        got == etag,
        "{} ({} bytes) does not have the content its ETag {etag} names",
        path.display(),
        bytes.len()
    );
    Ok(())
}

/// A model directory given on the command line or in a step: a local folder, or `hf://…`.
pub fn model_dir(spec: &Path) -> Result<PathBuf> {
    match spec.to_str().filter(|s| s.starts_with(SCHEME)) {
        Some(s) => {
            let r = HubRef::parse(s).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(!r.dataset, "`{s}` names a dataset, not a model");
            fetch(&r)
        }
        None => Ok(spec.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_models_and_datasets() {
        let m = HubRef::parse("hf://Qwen/Qwen2.5-0.5B-Instruct").unwrap();
        assert_eq!(
            (m.dataset, m.repo.as_str(), m.revision.as_str()),
            (false, "Qwen/Qwen2.5-0.5B-Instruct", "main")
        );
        assert_eq!(m.to_string(), "hf://Qwen/Qwen2.5-0.5B-Instruct");
        let d = HubRef::parse("hf://datasets/org/data@v1.0/train/part-0.parquet").unwrap();
        assert_eq!(
            (
                d.dataset,
                d.repo.as_str(),
                d.revision.as_str(),
                d.path.as_str()
            ),
            (true, "org/data", "v1.0", "train/part-0.parquet")
        );
        assert_eq!(
            d.to_string(),
            "hf://datasets/org/data@v1.0/train/part-0.parquet"
        );
        for bad in [
            "hf://",
            "hf://org",
            "hf://org/",
            "hf://../x",
            "hf://org/name/file.bin",
            "hf://datasets/org/name/../../etc",
            "hf://org/name@",
        ] {
            assert!(HubRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_plain_relative_names_become_cache_paths() {
        for ok in ["config.json", "data/train-00000.parquet"] {
            assert!(plain_relative_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "data/../../x",
            "a//b",
            "./a",
            "a\\b",
        ] {
            assert!(!plain_relative_path(bad), "{bad}");
        }
    }

    #[test]
    fn a_bad_download_is_removed_only_inside_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let (snap, blobs) = (dir.path().join("snapshots/c"), dir.path().join("blobs"));
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(&blobs).unwrap();
        // A user's file outside the cache that a link points to is never removed.
        let outside = dir.path().join("users-file");
        std::fs::write(&outside, b"keep").unwrap();
        let link = snap.join("model.safetensors");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        remove_bad_download(&link, &snap, &blobs);
        assert!(outside.exists() && !link.exists());
        // A blob in the cache is removed with its link.
        let blob = blobs.join("abc");
        std::fs::write(&blob, b"bad").unwrap();
        std::os::unix::fs::symlink(&blob, &link).unwrap();
        remove_bad_download(&link, &snap, &blobs);
        assert!(!blob.exists() && !link.exists());
    }

    #[test]
    fn picks_model_files() {
        for f in [
            "config.json",
            "model.safetensors",
            "model-00001-of-00002.safetensors",
        ] {
            assert!(model_file_wanted(f), "{f}");
        }
        for f in [
            "pytorch_model.bin",
            "onnx/model.onnx",
            "model.gguf",
            "README.md",
        ] {
            assert!(!model_file_wanted(f), "{f}");
        }
    }

    #[test]
    fn verifies_blobs_by_their_etag() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"hello\n";
        // git's blob hash of "hello\n".
        let git = "ce013625030ba8dba906f756967f9e9ca394464a";
        let sha = hex::encode(sha2::Sha256::digest(text));
        for name in [git.to_string(), sha] {
            let blob = dir.path().join(&name);
            std::fs::write(&blob, text).unwrap();
            assert!(verified(&blob).is_ok(), "{name}");
            std::fs::write(&blob, b"hell").unwrap();
            assert!(verified(&blob).is_err(), "{name} truncated");
        }
    }
}
