//! `eval` steps: what the conversion achieved (SPEC §8), as `report.json`, `report.md` and a
//! self-contained `report.html` in the step's artifacts:
//! - held-out perplexity of the teacher and of every listed student (in pipeline order, plus
//!   the untrained hybrid the first one started from), their ratio, KL(teacher ‖ student) and
//!   top-1 agreement, all on the same fixed batches;
//! - math accuracy of teacher and final student (greedy, exact numeric answer), and the
//!   before/after accuracies of any GRPO step among the students;
//! - greedy and sampled generations for fixed prompts, and a check that fails the step (after
//!   the report is written) when the final student's greedy replies are degenerate where the
//!   teacher's are not (`generation_check`);
//! - the layers a stage-1 step chose by measurement, with every layer's score;
//! - decode speed and cache/state memory vs context length (one sequence, and batches of
//!   them when asked), teacher against student;
//! - the training curves (`loss.svg`, `reward.svg`) of every listed student's step and of the
//!   final student's.

use crate::bench::hybrid::measure_batches;
use crate::evaluate::agreement::compare;
use crate::evaluate::degenerate::degenerate;
use crate::evaluate::layer_choice::CHOICE_FILE;
use crate::evaluate::math::MathEval;
use crate::evaluate::report::{
    ConvertedLayers, Curve, Generations, GrpoAccuracy, Heldout, Math, ModelAgreement, Report,
    SpeedRow, StepLayerChoice,
};
use crate::generate::{GenerationLimits, LanguageModel, Sampler, SamplingConfig, generate};
use crate::grpo::problems::{PromptFormat, load_problems};
use crate::model::Transformer;
use crate::model::hybrid::{Hybrid, InitMode};
use crate::pipeline::ArtifactRef;
use crate::pipeline::step::{Step, StepContext, settings_json};
use crate::text::{ChatMessage, TextTokenizer};
use anyhow::Result;
use serde::{Deserialize, Serialize};

fn d_batches() -> usize {
    4
}
fn d_batch_size() -> usize {
    4
}
fn d_math_new() -> usize {
    256
}
fn d_prompts() -> Vec<String> {
    vec![
        "What is the capital of France?".into(),
        "Write a short poem about the sea.".into(),
        "Explain in two sentences why the sky is blue.".into(),
    ]
}
fn d_gen_new() -> usize {
    64
}
fn d_contexts() -> Vec<usize> {
    vec![128, 512, 2048]
}
fn d_decode() -> usize {
    16
}
fn d_decode_batches() -> Vec<usize> {
    vec![1]
}
/// The most sequences the speed table decodes together (each holds its own KV cache).
const MAX_DECODE_BATCH: usize = 64;
fn d_field_q() -> String {
    "question".into()
}
fn d_field_a() -> String {
    "answer".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalSettings {
    pub teacher: ArtifactRef,
    /// The final student (e.g. `@convert`).
    pub student: ArtifactRef,
    /// Students of earlier stages to compare, in order (e.g. `["@stage1", "@stage2"]`).
    #[serde(default)]
    pub stages: Vec<ArtifactRef>,
    /// A tokenized dataset whose held-out split is measured.
    pub data: ArtifactRef,
    #[serde(default = "d_batches")]
    pub batches: usize,
    #[serde(default = "d_batch_size")]
    pub batch_size: usize,
    /// Math test problems (JSON Lines); none: skipped.
    #[serde(default)]
    pub math_problems: Option<ArtifactRef>,
    #[serde(default)]
    pub math_count: usize,
    #[serde(default = "d_math_new")]
    pub math_max_new_tokens: usize,
    #[serde(default = "d_field_q")]
    pub question_field: String,
    #[serde(default = "d_field_a")]
    pub answer_field: String,
    #[serde(default)]
    pub prompt: PromptFormat,
    /// Fixed prompts for generations (chat template applied).
    #[serde(default = "d_prompts")]
    pub prompts: Vec<String>,
    #[serde(default = "d_gen_new")]
    pub generate_max_new_tokens: usize,
    /// Context lengths for the speed/memory table (empty: skipped).
    #[serde(default = "d_contexts")]
    pub contexts: Vec<usize>,
    /// Tokens decoded after each context.
    #[serde(default = "d_decode")]
    pub decode_tokens: usize,
    /// Sequences decoded together at each context: 1 is one conversation; more is batched
    /// decoding (GRPO's groups, a server's concurrent requests), where every step reads the
    /// weights once for all of them and the caches become most of the bytes.
    #[serde(default = "d_decode_batches")]
    pub decode_batches: Vec<usize>,
    /// Fail the step (after writing the report) when a greedy reply of the final student to a
    /// fixed prompt is degenerate — empty, or caught in a loop — while the teacher's is not.
    #[serde(default = "d_yes")]
    pub generation_check: bool,
}

fn d_yes() -> bool {
    true
}

impl EvalSettings {
    /// Values that decode but cannot work, as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.batch_size == 0 {
            out.push(("batch_size".into(), "batch_size must be at least 1".into()));
        }
        if self.decode_batches.is_empty() && !self.contexts.is_empty() {
            out.push((
                "decode_batches".into(),
                "decode_batches is empty: list the batch sizes to measure at each context \
                 (e.g. [1, 8]), or set contexts = [] to skip the speed table"
                    .into(),
            ));
        }
        if let Some(b) = self
            .decode_batches
            .iter()
            .find(|b| !(1..=MAX_DECODE_BATCH).contains(*b))
        {
            out.push((
                "decode_batches".into(),
                format!("decode batch {b} is outside 1..={MAX_DECODE_BATCH}"),
            ));
        }
        out
    }

    pub fn refs(&self) -> impl Iterator<Item = (&'static str, &ArtifactRef)> {
        [
            ("teacher", &self.teacher),
            ("student", &self.student),
            ("data", &self.data),
        ]
        .into_iter()
        .chain(self.stages.iter().map(|s| ("stages", s)))
        .chain(self.math_problems.iter().map(|m| ("math_problems", m)))
    }
}

fn complete<M: LanguageModel>(
    model: &M,
    tokenizer: &TextTokenizer,
    prompt: &str,
    sampling: SamplingConfig,
    max_new: usize,
) -> Result<String> {
    let text = tokenizer.render_chat(&[ChatMessage::new("user", prompt)], true)?;
    let ids = tokenizer.encode(&text)?;
    let mut state = model.new_state();
    let limits = GenerationLimits {
        max_new_tokens: max_new,
        stop_strings: Vec::new(),
    };
    let g = generate(
        model,
        tokenizer,
        &mut state,
        &ids,
        &mut Sampler::new(sampling),
        &limits,
        |_| {},
    )?;
    Ok(g.text)
}

impl Step for EvalSettings {
    fn kind(&self) -> &'static str {
        "eval"
    }

    fn settings_json(&self) -> serde_json::Value {
        settings_json(self)
    }

    fn artifact_refs(&self) -> Vec<(&'static str, &ArtifactRef)> {
        self.refs().collect()
    }

    fn problems(&self) -> Vec<(String, String)> {
        EvalSettings::problems(self)
    }

    fn run(&self, ctx: &StepContext) -> anyhow::Result<()> {
        run(self, ctx)
    }
}

pub fn run(s: &EvalSettings, ctx: &StepContext) -> Result<()> {
    let device = ctx.tensor_device()?;
    let teacher_dir = s.teacher.resolve(ctx)?;
    let student_dir = s.student.resolve(ctx)?;
    let teacher = Transformer::load(&teacher_dir, &device)?;
    let student = Hybrid::load(&student_dir, &device)?;
    let out = &ctx.out_dir;

    // Held-out agreement: the untrained hybrid, each stage, the final student.
    let mut names = Vec::new();
    let mut models = Vec::new();
    let mut stage_dirs = Vec::new();
    for st in &s.stages {
        let dir = st.resolve(ctx)?;
        let m = Hybrid::load(&dir, &device)?;
        if models.is_empty() {
            let untrained = Hybrid::from_teacher(
                teacher.clone(),
                m.student.clone(),
                InitMode::Teacher,
                ctx.seed,
            )?;
            names.push("untrained hybrid (teacher-initialised mixers)".to_string());
            models.push(untrained);
        }
        names.push(st.label());
        models.push(m);
        stage_dirs.push((st.label(), dir));
    }
    names.push(format!("final: {}", s.student.label()));
    models.push(student.clone());
    let bar = ctx.progress_bar(s.batches as u64, "held-out batches");
    let refs: Vec<&Hybrid> = models.iter().collect();
    let (teacher_ppl, agreements, batches) = compare(
        &teacher,
        &refs,
        &s.data.resolve(ctx)?,
        s.batch_size,
        s.batches,
        &device,
        |b| bar.set_position(b as u64),
    )?;
    bar.finish_and_clear();
    drop(refs);
    drop(models);
    let heldout_models: Vec<ModelAgreement> = names
        .iter()
        .zip(&agreements)
        .map(|(n, a)| {
            tracing::info!(
                "{}: {n}: perplexity {:.3} (ratio {:.3}), KL {:.4}, top-1 {:.1}%",
                ctx.id,
                a.perplexity,
                a.perplexity_ratio,
                a.kl,
                100.0 * a.top1
            );
            ModelAgreement {
                name: n.clone(),
                perplexity: a.perplexity,
                perplexity_ratio: a.perplexity_ratio,
                kl: a.kl,
                top1: a.top1,
            }
        })
        .collect();

    let teacher_tok = TextTokenizer::from_dir(&teacher_dir)?;
    let student_tok = TextTokenizer::from_dir(&student_dir)?;

    // Math accuracy.
    let mut math = Math::default();
    if let Some(p) = &s.math_problems
        && s.math_count > 0
    {
        let mut problems = load_problems(&p.resolve(ctx)?, &s.question_field, &s.answer_field)?;
        problems.truncate(s.math_count);
        let eval = MathEval {
            problems: &problems,
            format: &s.prompt,
            max_new_tokens: s.math_max_new_tokens,
            tolerance: 1e-6,
        };
        let teacher_acc = eval.score(&teacher, &teacher_tok, &ctx.id, "teacher")?;
        let student_acc = eval.score(&student, &student_tok, &ctx.id, "student")?;
        math.teacher = Some(teacher_acc);
        math.student = Some(student_acc);
    }
    // Held-out accuracy before and after each GRPO stage (its eval.json).
    let grpo: Vec<GrpoAccuracy> = stage_dirs
        .iter()
        .filter_map(|(name, dir)| {
            let v: serde_json::Value =
                crate::util::fsx::read_json(&dir.join("eval.json")).ok()??;
            Some(GrpoAccuracy {
                step: name.clone(),
                accuracy_before: serde_json::from_value(v.get("accuracy_before")?.clone()).ok()?,
                accuracy_after: serde_json::from_value(v.get("accuracy_after")?.clone()).ok()?,
            })
        })
        .collect();

    // Generations.
    let mut generations = Vec::new();
    for p in &s.prompts {
        let greedy = SamplingConfig::default();
        let sampled = SamplingConfig {
            temperature: 0.7,
            top_p: 0.9,
            seed: ctx.seed,
            ..Default::default()
        };
        let n = s.generate_max_new_tokens;
        let teacher_greedy = complete(&teacher, &teacher_tok, p, greedy.clone(), n)?;
        let student_greedy = complete(&student, &student_tok, p, greedy, n)?;
        generations.push(Generations {
            prompt: p.clone(),
            teacher_degenerate: degenerate(&teacher_greedy),
            student_degenerate: degenerate(&student_greedy),
            teacher_greedy,
            student_greedy,
            student_sampled: complete(&student, &student_tok, p, sampled, n)?,
        });
    }

    // Speed and memory vs context.
    let mut speed = Vec::new();
    let bar = ctx.progress_bar(s.contexts.len() as u64, "contexts");
    for &c in &s.contexts {
        // One prefill of the context per model, then each batch size decoded from it.
        let teacher_rows = measure_batches(&teacher, c, s.decode_tokens, 1, &s.decode_batches);
        let student_rows = measure_batches(&student, c, s.decode_tokens, 1, &s.decode_batches);
        for ((&b, t), h) in s.decode_batches.iter().zip(teacher_rows).zip(student_rows) {
            tracing::info!(
                "{}: context {c}, batch {b}: decode {:.1} vs {:.1} tok/s, cache {:.2} MiB vs \
                 state {:.2} MiB",
                ctx.id,
                t.decode_tok_s,
                h.decode_tok_s,
                t.state_mib,
                h.state_mib
            );
            speed.push(SpeedRow {
                context: c,
                batch: b,
                teacher: t,
                student: h,
            });
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    // Layers chosen by measurement.
    let mut layer_choices = Vec::new();
    for (name, dir) in &stage_dirs {
        if let Some(choice) = crate::util::fsx::read_json(&dir.join(CHOICE_FILE))? {
            layer_choices.push(StepLayerChoice {
                step: name.clone(),
                choice,
            });
        }
    }

    // Curves of every stage, and of the final student when a training step wrote it.
    let mut curves = Vec::new();
    std::fs::create_dir_all(out.join("curves"))?;
    let final_student = (s.student.label(), student_dir.clone());
    let listed = stage_dirs.iter().any(|(_, d)| *d == student_dir);
    for (name, dir) in stage_dirs.iter().chain((!listed).then_some(&final_student)) {
        for f in ["loss.svg", "reward.svg"] {
            if dir.join(f).is_file() {
                let file = format!("curves/{}-{f}", name.replace(['/', ' '], "_"));
                std::fs::copy(dir.join(f), out.join(&file))?;
                curves.push(Curve {
                    step: format!("{name} ({})", f.trim_end_matches(".svg")),
                    file,
                });
            }
        }
    }

    let report = Report {
        pipeline: ctx.pipeline.clone(),
        teacher: s.teacher.label(),
        student: s.student.label(),
        student_description: format!(
            "RWKV-7 in layers {:?} of {}",
            student.student.wkv_layers, student.config.num_hidden_layers
        ),
        heldout: Heldout {
            batches,
            batch_size: s.batch_size,
            teacher_perplexity: teacher_ppl,
            models: heldout_models,
        },
        math,
        grpo,
        generations,
        speed,
        curves,
        layer_choices,
        layers: Some(ConvertedLayers {
            converted: student.student.wkv_layers.clone(),
            of: student.config.num_hidden_layers,
        }),
    };
    crate::util::fsx::atomic_write_json(&out.join("report.json"), &report)?;
    crate::util::fsx::atomic_write(
        &out.join("report.md"),
        crate::evaluate::report::markdown(&report).as_bytes(),
    )?;
    crate::util::fsx::atomic_write(
        &out.join("report.html"),
        crate::evaluate::report::html(&report, out).as_bytes(),
    )?;
    tracing::info!(
        "{}: report written to {}",
        ctx.id,
        out.join("report.html").display()
    );
    let failed: Vec<String> = report
        .generations
        .iter()
        .filter(|g| g.student_failed())
        .map(|g| {
            format!(
                "  {:?}: {} — {:?}",
                g.prompt,
                g.student_degenerate.as_deref().unwrap_or_default(),
                g.student_greedy.trim()
            )
        })
        .collect();
    if s.generation_check && !failed.is_empty() {
        anyhow::bail!(
            "the final student's greedy replies are degenerate where the teacher's are not:\n{}\n\
             the report is in {}; train it differently (a look at the SFT/GRPO steps' curves is a \
             start), or set `generation_check = false` in this step to accept it",
            failed.join("\n"),
            out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> EvalSettings {
        toml::from_str(&format!(
            "teacher = \"@teacher\"\nstudent = \"@convert\"\ndata = \"@text\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn decode_batches_are_checked_before_anything_is_measured() {
        let keys = |extra: &str| -> Vec<String> {
            settings(extra)
                .problems()
                .into_iter()
                .map(|(k, m)| format!("{k}: {m}"))
                .collect()
        };
        assert!(keys("").is_empty());
        assert_eq!(settings("").decode_batches, vec![1]);
        assert!(keys("decode_batches = [1, 8, 64]").is_empty());
        assert!(keys("decode_batches = []\ncontexts = []").is_empty());
        assert_eq!(
            keys("decode_batches = []"),
            vec![
                "decode_batches: decode_batches is empty: list the batch sizes to measure at \
                 each context (e.g. [1, 8]), or set contexts = [] to skip the speed table"
                    .to_string()
            ]
        );
        assert_eq!(
            keys("decode_batches = [1, 0]"),
            vec!["decode_batches: decode batch 0 is outside 1..=64".to_string()]
        );
        assert_eq!(
            keys("decode_batches = [65]\nbatch_size = 0"),
            vec![
                "batch_size: batch_size must be at least 1".to_string(),
                "decode_batches: decode batch 65 is outside 1..=64".to_string()
            ]
        );
    }
}
