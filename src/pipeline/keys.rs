//! Cache keys and output digests.
//!
//! A step's key hashes the runner version and a digest of its code (the sources and lock file
//! it was built from, computed by `build.rs`), its kind, the pipeline seed and device, its
//! resolved settings, the output digest of each dependency and the contents of each declared
//! input file. Two runs with the same key produce interchangeable artifacts, so the second
//! reuses the first's; a runner built from other code never reuses another's results.

use super::rundir::OutputFile;
use super::schema::{Pipeline, StepDef};
use crate::util::{fsx, hash};
use std::collections::BTreeMap;
use std::path::Path;

pub const RUNNER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Digest of the sources this runner was built from (see `build.rs`).
pub const CODE_DIGEST: &str = env!("RUNNER_CODE_DIGEST");

/// What the key of `step` is made of: `dep:<id>` → digest, `file:<path>` → sha256,
/// `hub:<hf://…>` → the commit its revision resolves to.
pub fn step_inputs(
    pipeline: &Pipeline,
    step: &StepDef,
    dep_digests: &BTreeMap<String, String>,
) -> std::io::Result<BTreeMap<String, String>> {
    let mut inputs = BTreeMap::new();
    for (id, digest) in dep_digests {
        inputs.insert(format!("dep:{id}"), digest.clone());
    }
    for (_, path) in step.settings.input_paths() {
        let sha = hash::sha256_path(&pipeline.root.join(&path)).map_err(|e| {
            std::io::Error::new(e.kind(), format!("hashing input {}: {e}", path.display()))
        })?;
        inputs.insert(format!("file:{}", path.display()), sha);
    }
    for (_, hub) in step.settings.hub_refs() {
        let resolved =
            crate::hub::resolve(&hub).map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        inputs.insert(format!("hub:{hub}"), resolved.commit);
    }
    Ok(inputs)
}

/// The cache key of `step` given its inputs. The pipeline's seed and device are part of it:
/// every step receives them.
pub fn step_key(pipeline: &Pipeline, step: &StepDef, inputs: &BTreeMap<String, String>) -> String {
    step_key_of_code(CODE_DIGEST, pipeline, step, inputs)
}

/// [`step_key`] for a runner built from code with digest `code`.
fn step_key_of_code(
    code: &str,
    pipeline: &Pipeline,
    step: &StepDef,
    inputs: &BTreeMap<String, String>,
) -> String {
    let mut h = hash::KeyHasher::default();
    h.part("runner", RUNNER_VERSION)
        .part("code", code)
        .part("kind", step.kind());
    h.part("seed", &pipeline.header.seed.to_string());
    h.part("device", &format!("{:?}", pipeline.header.device));
    h.part("settings", &step.settings.settings_json().to_string());
    for (k, v) in inputs {
        h.part(k, v);
    }
    h.finish()
}

/// Checksums every file under `out_dir`; returns them and their combined digest.
pub fn outputs_of(out_dir: &Path) -> std::io::Result<(Vec<OutputFile>, String)> {
    let mut files = Vec::new();
    let mut digest = hash::KeyHasher::default();
    for rel in fsx::list_files(out_dir)? {
        let full = out_dir.join(&rel);
        let sha = hash::sha256_file(&full)?;
        let bytes = std::fs::metadata(&full)?.len();
        digest.part(&rel.to_string_lossy(), &sha);
        files.push(OutputFile {
            path: rel,
            sha256: sha,
            bytes,
        });
    }
    Ok((files, digest.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::layers::Overrides;

    #[test]
    fn the_key_changes_with_the_runners_code() {
        assert_eq!(CODE_DIGEST.len(), 64, "{CODE_DIGEST}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "[[step]]\nid = \"a\"\nkind = \"fake\"\n").unwrap();
        let p = crate::pipeline::load(
            &file,
            &Overrides::default(),
            crate::pipeline::step::testing::KINDS,
        )
        .unwrap();
        let inputs = BTreeMap::new();
        let key = step_key(&p, &p.steps[0], &inputs);
        assert_eq!(key, step_key_of_code(CODE_DIGEST, &p, &p.steps[0], &inputs));
        assert_ne!(
            key,
            step_key_of_code("other code", &p, &p.steps[0], &inputs)
        );
    }
}
