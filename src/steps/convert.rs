//! `convert` steps: export a student as a Hugging Face directory in the `rwkv_hybrid` layout
//! (SPEC §7): `config.json` (base fields plus the RWKV-7 keys, `tie_word_embeddings` as the
//! weights are), `model.safetensors` (f32 or bf16), `generation_config.json` whose
//! `eos_token_id` lists every token that ends a turn, the tokenizer files, and a model card.
//! The export is read back with the runner's own loader and its logits compared with the
//! student's on a probe sequence; `convert.json` records the comparison and file checksums.

use crate::model::hybrid::Hybrid;
use crate::model::safetensors_io::SaveDtype;
use crate::model::transformer::ids_tensor;
use crate::model::weights::to_vec;
use crate::pipeline::ArtifactRef;
use crate::pipeline::step::{Step, StepContext, settings_json};
use crate::text::TextTokenizer;
use crate::text::tokenizer::copy_tokenizer_files;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

fn d_dtype() -> SaveDtype {
    SaveDtype::Bf16
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvertSettings {
    /// The student directory to export (e.g. `@grpo`).
    pub student: ArtifactRef,
    /// `bf16` (half the size; the original's export) or `f32`.
    #[serde(default = "d_dtype")]
    pub dtype: SaveDtype,
    /// Largest accepted relative difference of the exported model's logits from the student's
    /// (default: 1e-6 for f32, 0.05 for bf16).
    #[serde(default)]
    pub max_logit_error: Option<f64>,
}

impl ConvertSettings {
    pub fn refs(&self) -> impl Iterator<Item = (&'static str, &ArtifactRef)> {
        [("student", &self.student)].into_iter()
    }
}

/// `max |a − b| / max |b|`.
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
    diff / scale.max(1e-30)
}

impl Step for ConvertSettings {
    fn kind(&self) -> &'static str {
        "convert"
    }

    fn settings_json(&self) -> serde_json::Value {
        settings_json(self)
    }

    fn artifact_refs(&self) -> Vec<(&'static str, &ArtifactRef)> {
        self.refs().collect()
    }

    fn run(&self, ctx: &StepContext) -> anyhow::Result<()> {
        run(self, ctx)
    }
}

pub fn run(s: &ConvertSettings, ctx: &StepContext) -> Result<()> {
    let device = ctx.tensor_device()?;
    let src = s.student.resolve(ctx)?;
    let student = Hybrid::load(&src, &device)?;
    let tokenizer = TextTokenizer::from_dir(&src)?;
    let out = &ctx.out_dir;
    student.save(out, s.dtype)?;
    copy_tokenizer_files(&src, out)?;

    // Generation config: the source's, with every end-of-turn token as eos.
    let mut gen_cfg: serde_json::Value =
        crate::util::fsx::read_json(&src.join("generation_config.json"))?
            .unwrap_or_else(|| serde_json::json!({}));
    if !gen_cfg.is_object() {
        bail!(
            "{}/generation_config.json is not a JSON object",
            src.display()
        );
    }
    if !tokenizer.stop_ids.is_empty() {
        gen_cfg["eos_token_id"] = serde_json::json!(tokenizer.stop_ids);
    }
    if let Some(pad) = tokenizer
        .pad_token
        .as_deref()
        .and_then(|p| tokenizer.inner.token_to_id(p))
    {
        gen_cfg["pad_token_id"] = serde_json::json!(pad);
    }
    crate::util::fsx::atomic_write_json(&out.join("generation_config.json"), &gen_cfg)?;

    // Round trip: the export, read back, against the student in memory.
    let probe: Vec<u32> = match tokenizer.encode("The capital of France is Paris. 12 + 30 = 42.") {
        Ok(ids) if !ids.is_empty() => ids,
        _ => (1..17).collect(),
    };
    let ids = ids_tensor(&[probe.clone()], &device);
    let want = to_vec(student.forward(ids.clone(), None));
    let back = Hybrid::load(out, &device)?;
    let got = to_vec(back.forward(ids, None));
    let err = relative_error(&got, &want);
    let limit = s.max_logit_error.unwrap_or(match s.dtype {
        SaveDtype::F32 => 1e-6,
        SaveDtype::Bf16 => 0.05,
    });
    tracing::info!(
        "{}: exported {} ({}), round-trip logit error {err:.2e} (limit {limit:.0e})",
        ctx.id,
        out.display(),
        s.dtype.torch_name()
    );
    if !(err <= limit) {
        bail!(
            "the exported model's logits differ from the student's by {err:.3e} (relative), more \
             than max_logit_error = {limit:.0e}: the export is not faithful"
        );
    }
    let config: serde_json::Value =
        crate::util::fsx::read_json(&out.join("config.json"))?.unwrap_or_default();
    let card = format!(
        "# RWKV-7 hybrid of a {base} model\n\n\
         Converted by rwkvinside: attention replaced by RWKV-7 time mixing in layers {layers:?} of \
         {n}; the other layers keep their attention.\n\n\
         - `model_type`: `rwkv_hybrid` (`RwkvHybridForCausalLM`), weights in {dtype}\n\
         - head size {hs}, WKV version 7, gate: {gate}, group norm: {gn}\n\
         - tied embeddings: {tied}\n\n\
         Load with `runner chat --model DIR` or `runner serve --model DIR`.\n",
        base = config["base_model_type"].as_str().unwrap_or("transformer"),
        layers = student.student.wkv_layers,
        n = student.config.num_hidden_layers,
        dtype = s.dtype.torch_name(),
        hs = config["head_size"],
        gate = config["wkv_gate_form"],
        gn = config["wkv_has_group_norm"],
        tied = config["tie_word_embeddings"],
    );
    crate::util::fsx::atomic_write(&out.join("README.md"), card.as_bytes())?;
    let mut files = serde_json::Map::new();
    for rel in crate::util::fsx::list_files(out)? {
        let sum = crate::util::hash::sha256_file(&out.join(&rel))?;
        files.insert(rel.to_string_lossy().to_string(), serde_json::json!(sum));
    }
    crate::util::fsx::atomic_write_json(
        &out.join("convert.json"),
        &serde_json::json!({
            "dtype": s.dtype.torch_name(),
            "roundtrip_logit_error": err,
            "roundtrip_limit": limit,
            "probe_tokens": probe.len(),
            "tie_word_embeddings": config["tie_word_embeddings"],
            "wkv_layers": student.student.wkv_layers,
            "files_sha256": files,
        }),
    )?;
    Ok(())
}
