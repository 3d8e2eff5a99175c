//! The import rules that keep the structure easy to see: the engine (`src/pipeline`) knows no
//! step kind and no training code; the numeric layers (`src/{train,model,grpo,data}`) know
//! nothing of pipelines; no step file imports another step kind's file. Checked on the source
//! text, comments left out.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Lines of code (not comments) under `dir` that mention any of `forbidden`.
fn offenders(dir: &str, forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let path = root.join(dir);
    if path.is_file() {
        files.push(path);
    } else {
        rust_files(&path, &mut files);
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if forbidden.iter().any(|x| code.contains(x)) {
                out.push(format!(
                    "{}:{}: {}",
                    f.strip_prefix(root).unwrap().display(),
                    i + 1,
                    line.trim()
                ));
            }
        }
    }
    out
}

#[test]
fn the_engine_knows_no_step_kind_and_no_training_code() {
    let bad = offenders("src/pipeline", &["crate::steps", "crate::train"]);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn numeric_code_knows_nothing_of_pipelines() {
    for dir in ["src/train", "src/model", "src/grpo", "src/data"] {
        let bad = offenders(dir, &["crate::pipeline", "crate::steps"]);
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}

#[test]
fn the_leaf_modules_import_no_layer_above_them() {
    for file in ["src/checkpoint.rs", "src/wandb.rs", "src/progress.rs"] {
        let bad = offenders(
            file,
            &[
                "crate::pipeline",
                "crate::steps",
                "crate::train",
                "crate::model",
            ],
        );
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}

#[test]
fn no_step_file_imports_another_step_file() {
    let kinds = [
        "command", "convert", "eval", "fetch", "grpo", "import", "sft", "stage1", "stage2",
        "tokenize",
    ];
    for kind in kinds {
        let others: Vec<String> = kinds
            .iter()
            .filter(|k| **k != kind)
            .flat_map(|k| [format!("super::{k}::"), format!("steps::{k}::")])
            .collect();
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        let bad = offenders(&format!("src/steps/{kind}.rs"), &others);
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}
