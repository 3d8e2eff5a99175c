//! The hybrid student on the tiny Qwen2 checkpoint: with nothing converted it is the teacher;
//! converted, its logits match the independent numpy port of SPEC §2, the sequence forward
//! equals token-by-token recurrence, a saved student loads back identically, and converted
//! layers' state does not grow with the context.

mod common;

use burn::module::Param;
use burn::tensor::{Device, Distribution, Tensor};
use common::python::{reference_logits, relative_error, tiny_qwen2};
use rwkvinside::model::Transformer;
use rwkvinside::model::hybrid::{GqaMode, Hybrid, InitMode, Mixer, StudentConfig};
use rwkvinside::model::safetensors_io::SaveDtype;
use rwkvinside::model::time_mixer::{GateForm, TimeMixer};
use rwkvinside::model::transformer::ids_tensor;
use rwkvinside::model::weights::to_vec;

const IDS: [u32; 9] = [256, 72, 101, 108, 108, 111, 258, 17, 200];

fn teacher(dir: &std::path::Path) -> Transformer {
    Transformer::load(dir, &Device::flex()).unwrap()
}

/// Random values in every mixer parameter, so every term of the layer is exercised.
fn scramble(m: &mut TimeMixer, device: &Device) {
    fn r1(p: &mut Param<Tensor<1>>, lo: f64, hi: f64, d: &Device) {
        *p = Param::from_tensor(Tensor::random(
            p.val().dims(),
            Distribution::Uniform(lo, hi),
            d,
        ));
    }
    fn r2(p: &mut Param<Tensor<2>>, s: f64, d: &Device) {
        *p = Param::from_tensor(Tensor::random(
            p.val().dims(),
            Distribution::Uniform(-s, s),
            d,
        ));
    }
    for p in [
        &mut m.x_r, &mut m.x_w, &mut m.x_k, &mut m.x_v, &mut m.x_a, &mut m.x_g, &mut m.k_k,
        &mut m.k_a,
    ] {
        r1(p, 0.0, 1.0, device);
    }
    r1(&mut m.w0, -2.0, 1.0, device);
    r1(&mut m.a0, -1.0, 1.0, device);
    r1(&mut m.v0, -1.0, 1.0, device);
    for p in [
        &mut m.w1, &mut m.w2, &mut m.a1, &mut m.a2, &mut m.v1, &mut m.v2, &mut m.r_k,
    ] {
        r2(p, 0.3, device);
    }
    if let (Some(g1), Some(g2)) = (&mut m.g1, &mut m.g2) {
        r2(g1, 0.3, device);
        r2(g2, 0.3, device);
    }
    if let (Some(w), Some(b)) = (&mut m.ln_x_weight, &mut m.ln_x_bias) {
        r1(w, 0.5, 1.5, device);
        r1(b, -0.2, 0.2, device);
    }
}

fn student(
    dir: &std::path::Path,
    layers: Vec<usize>,
    cfg: impl FnOnce(&mut StudentConfig),
) -> Hybrid {
    let device = Device::flex();
    let mut st = StudentConfig {
        wkv_layers: layers,
        ..Default::default()
    };
    cfg(&mut st);
    let mut h = Hybrid::from_teacher(teacher(dir), st, InitMode::Teacher, 3).unwrap();
    device.seed(11);
    for layer in &mut h.layers {
        if let Mixer::Rwkv(m) = &mut layer.mixer {
            scramble(m, &device);
        }
    }
    h
}

#[test]
fn nothing_converted_is_the_teacher_exactly() {
    let dir = tempfile::tempdir().unwrap();
    tiny_qwen2(dir.path(), &[]);
    let device = Device::flex();
    let ids = ids_tensor(&[IDS.to_vec()], &device);
    let t = to_vec(teacher(dir.path()).forward(ids.clone(), None));
    let h = Hybrid::from_teacher(
        teacher(dir.path()),
        StudentConfig::default(),
        InitMode::Teacher,
        0,
    )
    .unwrap();
    assert_eq!(to_vec(h.forward(ids, None)), t);
}

#[test]
fn converted_layers_match_numpy_reference() {
    let dir = tempfile::tempdir().unwrap();
    tiny_qwen2(dir.path(), &["--layers", "3"]);
    let device = Device::flex();
    for (name, layers, f) in [
        (
            "gqa repeat, sigmoid gate, group norm",
            vec![0, 2],
            (|_: &mut StudentConfig| {}) as fn(&mut StudentConfig),
        ),
        (
            "gqa expand, 1+gate, rope, no norm",
            vec![1, 2],
            |s: &mut StudentConfig| {
                s.gqa = GqaMode::Expand;
                s.gate = GateForm::OnePlus;
                s.rope = true;
                s.group_norm = false;
            },
        ),
        (
            "no gate, all layers",
            vec![0, 1, 2],
            |s: &mut StudentConfig| s.gate = GateForm::None,
        ),
    ] {
        let h = student(dir.path(), layers, f);
        let out = tempfile::tempdir().unwrap();
        h.save(out.path(), SaveDtype::F32).unwrap();
        let logits = to_vec(h.forward(ids_tensor(&[IDS.to_vec()], &device), None));
        let (_, reference) =
            reference_logits(&["--hf", out.path().to_str().unwrap()], &[IDS.to_vec()]);
        let (rel, abs) = relative_error(&logits, &reference);
        println!("hybrid ({name}) vs numpy: max relative error {rel:.2e}, abs {abs:.2e}");
        assert!(rel < 1e-5, "{name}: relative error {rel}");

        // The saved directory loads back to the same model.
        let again = Hybrid::load(out.path(), &device).unwrap();
        assert_eq!(again.student, h.student);
        assert_eq!(
            to_vec(again.forward(ids_tensor(&[IDS.to_vec()], &device), None)),
            logits
        );
    }
}

#[test]
fn sequence_forward_equals_recurrence() {
    let dir = tempfile::tempdir().unwrap();
    tiny_qwen2(dir.path(), &["--layers", "3"]);
    let device = Device::flex();
    let h = student(dir.path(), vec![0, 2], |s| s.rope = true);
    let full = to_vec(h.forward(ids_tensor(&[IDS.to_vec()], &device), None));
    let mut state = h.new_state();
    let mut pieces = Vec::new();
    for (a, b) in [(0, 4), (4, 5), (5, 6), (6, 9)] {
        let (hid, _) = h.forward_hidden(
            ids_tensor(&[IDS[a..b].to_vec()], &device),
            None,
            Some(&mut state),
            &[],
        );
        pieces.push(h.logits(hid));
    }
    let stepped = to_vec(Tensor::cat(pieces, 1));
    let (rel, _) = relative_error(&stepped, &full);
    assert!(rel < 1e-5, "relative error {rel}");
    assert_eq!(state.pos, 9);
}

#[test]
fn converted_state_does_not_grow_with_context() {
    let dir = tempfile::tempdir().unwrap();
    tiny_qwen2(dir.path(), &["--layers", "3"]);
    let device = Device::flex();
    let h = student(dir.path(), vec![0, 2], |_| {});
    let run = |n: usize| {
        let mut state = h.new_state();
        let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7) % 250).collect();
        h.forward_hidden(ids_tensor(&[ids], &device), None, Some(&mut state), &[]);
        state.bytes()
    };
    let (kv100, rwkv100) = run(100);
    let (kv1000, rwkv1000) = run(1000);
    println!(
        "state at 100 tokens: kv {kv100} B, rwkv {rwkv100} B; at 1000: kv {kv1000} B, rwkv {rwkv1000} B"
    );
    assert_eq!(rwkv100, rwkv1000);
    assert!(rwkv100 > 0);
    // The one attention layer's cache grows linearly.
    assert_eq!(kv1000, 10 * kv100);
    let all = student(dir.path(), vec![0, 1, 2], |_| {});
    let mut state = all.new_state();
    all.forward_hidden(
        ids_tensor(&[vec![5; 300]], &device),
        None,
        Some(&mut state),
        &[],
    );
    assert_eq!(state.bytes().0, 0);
}

/// `runner chat` with a student directory: replies stream, the state carries across turns,
/// `/clear` resets it.
#[test]
fn chat_with_a_student_directory() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    tiny_qwen2(dir.path(), &["--layers", "3"]);
    let out = tempfile::tempdir().unwrap();
    let h = student(dir.path(), vec![1], |_| {});
    h.save(out.path(), SaveDtype::F32).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(dir.path().join(f), out.path().join(f)).unwrap();
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([
            "chat",
            "--model",
            out.path().to_str().unwrap(),
            "--max-new-tokens",
            "4",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hi\nMore\n/clear\nAgain\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("RWKV-7 hybrid, 1 of 3 layers converted"),
        "{stderr}"
    );
    assert!(stderr.contains("(conversation cleared)"), "{stderr}");
    assert_eq!(stderr.matches("tok/s; state").count(), 3, "{stderr}");
}
