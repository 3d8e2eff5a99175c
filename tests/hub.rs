//! Models and datasets from the Hugging Face Hub by name (`hf://…`), without the internet: a
//! local server speaking the Hub's paths (tests/common/hub_server.rs). Downloads land in the
//! Python library's cache layout and are reused with the server stopped; a wrong revision, a
//! repository without a model, a truncated and a corrupted download each fail clearly and are
//! never used; a pipeline's teacher and tokenize inputs come from the Hub with the commit in
//! the step's cache key.

mod common;

use common::Project;
use common::hub_server::{FakeRepo, HubServer};
use common::python::tiny_qwen2;
use std::collections::BTreeMap;
use std::path::Path;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const DATA_COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn tiny_repo(dir: &Path) -> FakeRepo {
    tiny_qwen2(dir, &["--layers", "2"]);
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        files.insert(
            e.file_name().to_string_lossy().to_string(),
            std::fs::read(e.path()).unwrap(),
        );
    }
    // Files a model repository often has that the runner does not need.
    files.insert("pytorch_model.bin".into(), vec![0u8; 4096]);
    files.insert("README.md".into(), b"# tiny\n".to_vec());
    FakeRepo {
        dataset: false,
        id: "org/tiny".into(),
        commit: COMMIT.into(),
        revisions: vec!["main".into(), "v1".into()],
        files,
    }
}

/// A Parquet file with a `text` column.
fn parquet(texts: &[&str]) -> Vec<u8> {
    use arrow::array::{ArrayRef, StringArray};
    use arrow::record_batch::RecordBatch;
    let col: ArrayRef = std::sync::Arc::new(StringArray::from(texts.to_vec()));
    let batch = RecordBatch::try_from_iter([("text", col)]).unwrap();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

fn data_repo() -> FakeRepo {
    let texts: Vec<String> = (0..40)
        .map(|i| format!("Document {i}: the quick brown fox jumps over the lazy dog {i} times."))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut files = BTreeMap::new();
    files.insert("data/train.parquet".into(), parquet(&refs));
    files.insert("README.md".into(), b"# texts\n".to_vec());
    FakeRepo {
        dataset: true,
        id: "org/texts".into(),
        commit: DATA_COMMIT.into(),
        revisions: vec!["main".into()],
        files,
    }
}

struct Env {
    project: Project,
    hf_home: tempfile::TempDir,
    server: HubServer,
    _model: tempfile::TempDir,
}

fn env() -> Env {
    let model = tempfile::tempdir().unwrap();
    let server = HubServer::start(vec![tiny_repo(model.path()), data_repo()]);
    Env {
        project: Project::new(),
        hf_home: tempfile::tempdir().unwrap(),
        server,
        _model: model,
    }
}

impl Env {
    fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> common::Ran {
        let mut c = self.project.cmd(args);
        c.env("HF_ENDPOINT", &self.server.url)
            .env("HF_HOME", self.hf_home.path())
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_TOKEN");
        for (k, v) in extra {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        common::Ran {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn generate(&self, model: &str, extra: &[(&str, &str)]) -> common::Ran {
        self.run(
            &[
                "generate",
                "--model",
                model,
                "--max-new-tokens",
                "3",
                "Hello",
            ],
            extra,
        )
    }

    fn snapshot(&self) -> std::path::PathBuf {
        self.hf_home
            .path()
            .join("hub/models--org--tiny/snapshots")
            .join(COMMIT)
    }
}

#[test]
fn a_model_by_name_is_downloaded_once_into_the_shared_cache() {
    let e = env();
    let first = e.generate("hf://org/tiny", &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let snap = e.snapshot();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(snap.join(f).exists(), "{f} in the snapshot");
    }
    assert!(
        !snap.join("pytorch_model.bin").exists() && !snap.join("README.md").exists(),
        "only the files a model needs are fetched"
    );
    let refs = e.hf_home.path().join("hub/models--org--tiny/refs/main");
    assert_eq!(std::fs::read_to_string(refs).unwrap().trim(), COMMIT);
    let downloads = |reqs: &[String]| {
        reqs.iter()
            .filter(|r| r.starts_with("GET /org/tiny/resolve/") && !r.contains("bytes=0-0"))
            .count()
    };
    let after_first = e.server.requests();
    assert!(downloads(&after_first) >= 3, "{after_first:?}");

    // Again: nothing is downloaded; a tag naming the same commit shares the snapshot.
    assert_eq!(e.generate("hf://org/tiny@v1", &[]).code, 0);
    assert_eq!(downloads(&e.server.requests()), downloads(&after_first));

    // The server stopped: the cached commit is used (with a warning), and offline mode too.
    e.server.stop();
    let cached = e.generate("hf://org/tiny", &[]);
    assert_eq!(cached.code, 0, "{}", cached.stderr);
    assert!(
        cached.stderr.contains("cannot be reached"),
        "{}",
        cached.stderr
    );
    let offline = e.generate("hf://org/tiny", &[("HF_HUB_OFFLINE", "1")]);
    assert_eq!(offline.code, 0, "{}", offline.stderr);
    let missing = e.generate("hf://org/other", &[("HF_HUB_OFFLINE", "1")]);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("HF_HUB_OFFLINE"),
        "{}",
        missing.stderr
    );
}

#[test]
fn wrong_revisions_names_and_repositories_fail_clearly() {
    let e = env();
    let r = e.generate("hf://org/tiny@nope", &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no revision `nope`"), "{}", r.stderr);
    let r = e.generate("hf://org/missing", &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no revision `main`"), "{}", r.stderr);
    // A dataset is not a model.
    let r = e.generate("hf://datasets/org/texts", &[]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("names a dataset"), "{}", r.stderr);
    // Malformed names are refused before any request.
    let r = e.generate("hf://org", &[]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("hf://ORG/NAME"), "{}", r.stderr);
}

#[test]
fn a_truncated_download_is_resumed_and_a_corrupt_one_refused() {
    let e = env();
    e.server.faults.lock().unwrap().truncate = Some("model.safetensors".into());
    let r = e.generate("hf://org/tiny", &[]);
    assert_eq!(
        r.code, 1,
        "a cut-off download fails the command: {}",
        r.stderr
    );
    assert!(r.stderr.contains("run again to resume"), "{}", r.stderr);
    assert!(
        !e.snapshot().join("model.safetensors").exists(),
        "never used"
    );
    let r = e.generate("hf://org/tiny", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let resumed = e.server.requests().iter().any(|q| {
        q.contains("model.safetensors") && q.contains("[bytes=") && !q.contains("bytes=0-")
    });
    assert!(
        resumed,
        "the second attempt resumes: {:?}",
        e.server.requests()
    );

    // Flipped bytes of the right length: refused (ETag mismatch), removed, fetched again.
    let e = env();
    e.server.faults.lock().unwrap().corrupt = Some("model.safetensors".into());
    let r = e.generate("hf://org/tiny", &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("is corrupt"), "{}", r.stderr);
    assert!(!e.snapshot().join("model.safetensors").exists());
    assert_eq!(e.generate("hf://org/tiny", &[]).code, 0);
}

#[test]
fn a_pipeline_takes_its_teacher_and_data_from_the_hub() {
    let e = env();
    e.project.write(
        "hub.toml",
        r#"
[pipeline]
name = "hub"

[[step]]
id = "tokens"
kind = "tokenize"
tokenizer = "hf://org/tiny"
inputs = ["hf://datasets/org/texts/data/train.parquet"]
text_fields = ["text"]
max_seq_len = 32
pack = true
heldout = 0.1

[[step]]
id = "stage1"
kind = "stage1"
depends_on = ["tokens"]
teacher = "hf://org/tiny@v1"
data = "@tokens"
layers = [1]

[step.train]
lr_init = 1e-3
lr_final = 1e-4
warmup_steps = 1
micro_batch = 2
max_tokens = 256
checkpoint_every = 2
"#,
    );
    let r = e.run(&["run", "hub.toml"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = e.project.runs("hub").pop().unwrap();
    let m = common::manifest(&run.join("stage1"));
    assert_eq!(m["inputs"]["hub:hf://org/tiny@v1"], COMMIT, "{m}");
    let m = common::manifest(&run.join("tokens"));
    assert_eq!(
        m["inputs"]["hub:hf://datasets/org/texts/data/train.parquet"], DATA_COMMIT,
        "{m}"
    );
    // With the Hub unreachable the cached commits give the same keys: everything is cached.
    e.server.stop();
    let again = e.run(&["run", "hub.toml"], &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.stderr.matches("cached (from").count(),
        2,
        "{}",
        again.stderr
    );
}

/// Files the runner downloaded are found by Python's `huggingface_hub` in the same cache.
#[test]
fn python_huggingface_hub_reads_the_same_cache() {
    let py = std::env::var_os("RUNNER_TORCH_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| common::python::repo_root().join(".venv-torch/bin/python"));
    let has = std::process::Command::new(&py)
        .args(["-c", "import huggingface_hub"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        eprintln!(
            "skipped: {} cannot import huggingface_hub (see tests/transformers_export.rs)",
            py.display()
        );
        return;
    }
    let e = env();
    assert_eq!(e.generate("hf://org/tiny", &[]).code, 0);
    let o = std::process::Command::new(&py)
        .args([
            "-c",
            "from huggingface_hub import hf_hub_download; \
             print(hf_hub_download('org/tiny', 'config.json', local_files_only=True))",
        ])
        .env("HF_HOME", e.hf_home.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.trim()
            .ends_with(&format!("snapshots/{COMMIT}/config.json")),
        "{out}"
    );
}
