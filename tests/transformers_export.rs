//! A saved hybrid loads in Hugging Face `transformers` (`trust_remote_code=True`): the Python
//! model's logits equal the runner's (tiny students of every mixer variant, f32 and bf16, and a
//! SmolLM2-135M student), greedy `generate` with its cache equals generation without it,
//! converted layers' state stays the same size, and `lm_eval --model hf` runs on the export.
//!
//! These need torch and transformers (not installed by `.ci/run`: several GB). They run with
//! `$RUNNER_TORCH_PYTHON`, else `.venv-torch/bin/python` (README: "Python ecosystem"), and
//! print why they are skipped when neither can import both.

mod common;

use burn::module::Param;
use burn::tensor::{Device, Distribution, Tensor};
use common::assets::smollm2_gguf;
use common::python::{check_in_transformers, repo_root, tiny_qwen2, torch_python};
use rwkvinside::model::Transformer;
use rwkvinside::model::hybrid::{GqaMode, Hybrid, InitMode, Mixer, StudentConfig};
use rwkvinside::model::safetensors_io::SaveDtype;
use rwkvinside::model::time_mixer::GateForm;
use std::path::Path;
use std::process::Command;

/// Random values in the converted layers' parameters, so every term is exercised.
fn scramble(h: &mut Hybrid, device: &Device) {
    device.seed(5);
    let r1 = |p: &mut Param<Tensor<1>>, lo: f64, hi: f64| {
        *p = Param::from_tensor(Tensor::random(
            p.val().dims(),
            Distribution::Uniform(lo, hi),
            device,
        ))
    };
    let r2 = |p: &mut Param<Tensor<2>>| {
        *p = Param::from_tensor(Tensor::random(
            p.val().dims(),
            Distribution::Uniform(-0.3, 0.3),
            device,
        ))
    };
    for layer in &mut h.layers {
        if let Mixer::Rwkv(m) = &mut layer.mixer {
            for p in [
                &mut m.x_r, &mut m.x_w, &mut m.x_k, &mut m.x_v, &mut m.x_a, &mut m.x_g, &mut m.k_k,
                &mut m.k_a,
            ] {
                r1(p, 0.0, 1.0);
            }
            r1(&mut m.w0, -2.0, 1.0);
            r1(&mut m.a0, -1.0, 1.0);
            r1(&mut m.v0, -1.0, 1.0);
            for p in [
                &mut m.w1, &mut m.w2, &mut m.a1, &mut m.a2, &mut m.v1, &mut m.v2, &mut m.r_k,
            ] {
                r2(p);
            }
            if let (Some(g1), Some(g2)) = (&mut m.g1, &mut m.g2) {
                r2(g1);
                r2(g2);
            }
            if let (Some(w), Some(b)) = (&mut m.ln_x_weight, &mut m.ln_x_bias) {
                r1(w, 0.5, 1.5);
                r1(b, -0.2, 0.2);
            }
        }
    }
}

/// Saves `h` with the teacher's tokenizer files and checks the directory in transformers.
fn check(
    py: &Path,
    teacher_dir: &Path,
    h: &Hybrid,
    dtype: SaveDtype,
    seqs: &[Vec<u32>],
    tolerance: f64,
) -> serde_json::Value {
    let out = tempfile::tempdir().unwrap();
    h.save(out.path(), dtype).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        if teacher_dir.join(f).exists() {
            std::fs::copy(teacher_dir.join(f), out.path().join(f)).unwrap();
        }
    }
    check_in_transformers(py, out.path(), seqs, tolerance)
}

/// The tiny Qwen2 with `layers` layers written into `dir`, and its student with layer 1
/// converted (teacher-initialised).
fn tiny_student(dir: &Path, layers: usize) -> Hybrid {
    tiny_qwen2(dir, &["--layers", &layers.to_string()]);
    let teacher = Transformer::load(dir, &Device::flex()).unwrap();
    let config = StudentConfig {
        wkv_layers: vec![1],
        ..Default::default()
    };
    Hybrid::from_teacher(teacher, config, InitMode::Teacher, 3).unwrap()
}

const SEQS: [[u32; 9]; 2] = [
    [256, 72, 101, 108, 108, 111, 258, 17, 200],
    [256, 3, 99, 180, 42, 42, 7, 255, 1],
];

fn seqs() -> Vec<Vec<u32>> {
    SEQS.iter().map(|s| s.to_vec()).collect()
}

#[test]
fn tiny_students_of_every_variant_load_in_transformers() {
    let Some(py) = torch_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    tiny_qwen2(dir.path(), &["--layers", "4"]);
    let variants: Vec<(&str, Vec<usize>, StudentConfig)> = vec![
        ("default", vec![1, 3], StudentConfig::default()),
        (
            "one-plus gate, rope, expanded k/v, no group norm",
            vec![0, 2],
            StudentConfig {
                gate: GateForm::OnePlus,
                rope: true,
                gqa: GqaMode::Expand,
                group_norm: false,
                ..Default::default()
            },
        ),
        (
            "no gate, every layer converted",
            vec![0, 1, 2, 3],
            StudentConfig {
                gate: GateForm::None,
                ..Default::default()
            },
        ),
    ];
    for (name, layers, cfg) in variants {
        let teacher = Transformer::load(dir.path(), &Device::flex()).unwrap();
        let mut h = Hybrid::from_teacher(
            teacher,
            StudentConfig {
                wkv_layers: layers,
                ..cfg
            },
            InitMode::Teacher,
            3,
        )
        .unwrap();
        scramble(&mut h, &Device::flex());
        println!("{name}:");
        let r = check(&py, dir.path(), &h, SaveDtype::F32, &seqs(), 1e-4);
        assert_eq!(r["class"], "RwkvHybridForCausalLM");
    }
}

#[test]
fn a_bf16_export_matches_within_the_convert_tolerance() {
    let Some(py) = torch_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut h = tiny_student(dir.path(), 3);
    scramble(&mut h, &Device::flex());
    let r = check(&py, dir.path(), &h, SaveDtype::Bf16, &seqs(), 0.05);
    assert_eq!(r["dtype"], "torch.bfloat16");
}

#[test]
fn a_smollm2_student_loads_in_transformers() {
    let Some(py) = torch_python() else { return };
    let gguf = smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    rwkvinside::gguf::import::import_gguf(&gguf, dir.path(), SaveDtype::F32).unwrap();
    let teacher = Transformer::load(dir.path(), &Device::flex()).unwrap();
    let h = Hybrid::from_teacher(
        teacher,
        StudentConfig {
            wkv_layers: vec![2, 9, 17, 25],
            ..Default::default()
        },
        InitMode::Teacher,
        3,
    )
    .unwrap();
    let probe: Vec<u32> = vec![
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
    ];
    let r = check(&py, dir.path(), &h, SaveDtype::F32, &[probe], 1e-4);
    assert_eq!(r["class"], "RwkvHybridForCausalLM");
}

/// The README's lm-evaluation-harness example, on a tiny export.
#[test]
fn lm_eval_runs_on_an_export() {
    let Some(py) = torch_python() else { return };
    let has_lm_eval = Command::new(&py)
        .args(["-c", "import lm_eval, accelerate"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_lm_eval {
        eprintln!(
            "skipped: {} cannot import lm_eval and accelerate",
            py.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let h = tiny_student(dir.path(), 2);
    let out = tempfile::tempdir().unwrap();
    h.save(out.path(), SaveDtype::F32).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(dir.path().join(f), out.path().join(f)).unwrap();
    }
    let results = tempfile::tempdir().unwrap();
    let o = Command::new(&py)
        .args(["-m", "lm_eval", "--model", "hf", "--model_args"])
        .arg(format!(
            "pretrained={},trust_remote_code=True",
            out.path().display()
        ))
        .args([
            "--include_path",
            "examples/lm_eval",
            "--tasks",
            "hybrid_smoke",
            "--device",
            "cpu",
            "--batch_size",
            "1",
            "--output_path",
        ])
        .arg(results.path())
        .current_dir(repo_root())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "lm_eval failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("|hybrid_smoke|") && stdout.contains("acc"),
        "{stdout}"
    );
}
