//! Training steps end to end on the tiny Qwen2 checkpoint: stage 1 lowers its alignment loss,
//! and a run killed with `kill -9` mid-step and resumed produces the same per-step losses, bit
//! for bit, as an uninterrupted run.

mod common;

use common::Project;
use common::python::tiny_qwen2;

fn project(max_steps: u64) -> Project {
    let p = Project::new();
    tiny_qwen2(&p.path().join("tiny"), &["--layers", "3"]);
    // A different, larger teacher with the same tokenizer for stage 2.
    tiny_qwen2(
        &p.path().join("tiny_big"),
        &[
            "--layers", "4", "--hidden", "96", "--heads", "6", "--seed", "9",
        ],
    );
    let text: String = (0..400)
        .map(|i| {
            format!(
                "Line {i}: the quick brown fox jumps over the lazy dog, {} times.\n",
                i * 7 % 13
            )
        })
        .collect();
    p.write("data/corpus.txt", &text);
    let chats: String = (0..40)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("What is {i} plus {i}?")},
                {"role": "assistant", "content": format!("{i} plus {i} is {}.", 2 * i)}
            ]})
            .to_string()
                + "\n"
        })
        .collect();
    p.write("chat/chats.jsonl", &chats);
    p.write(
        "p.toml",
        &format!(
            r#"[pipeline]
seed = 5

[[step]]
id = "tok"
kind = "tokenize"
tokenizer = "tiny"
inputs = ["data"]
max_seq_len = 64
pack = true
heldout = 0.0

[[step]]
id = "stage1"
kind = "stage1"
depends_on = ["tok"]
teacher = "tiny"
data = "@tok"
layers = [0, 2]

[step.train]
lr_init = 3e-3
lr_final = 3e-4
warmup_steps = 3
micro_batch = 2
grad_accum = 2
max_tokens = 1000000
max_steps = {max_steps}
checkpoint_every = 4
bucket = 16

[[step]]
id = "stage2"
kind = "stage2"
depends_on = ["stage1", "tok"]
student = "@stage1"
teacher = "tiny_big"
data = "@tok"
ce_weight = 0.5
adaptive_kl = true
eval_batches = 2

[step.train]
lr_init = 1e-3
warmup_steps = 2
micro_batch = 2
max_tokens = 1000000
max_steps = {max_steps2}
checkpoint_every = 4

[[step]]
id = "chat_tok"
kind = "tokenize"
tokenizer = "tiny"
inputs = ["chat"]
max_seq_len = 128
heldout = 0.1

[[step]]
id = "sft"
kind = "sft"
depends_on = ["stage2", "chat_tok"]
student = "@stage2"
data = "@chat_tok"
reference = "tiny"
eval_batches = 2

[step.train]
lr_init = 1e-3
warmup_steps = 1
micro_batch = 4
max_tokens = 1000000
max_steps = 8
"#,
            max_steps2 = (max_steps / 2).max(6),
        ),
    );
    p
}

fn losses(metrics: &str) -> Vec<(u64, f64)> {
    metrics
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn stage1_learns_and_writes_a_student() {
    let p = project(40);
    p.run(&["run", "p.toml"]).ok();
    let out = p.runs("p").pop().unwrap().join("stage1/out");
    let l = losses(&std::fs::read_to_string(out.join("metrics.jsonl")).unwrap());
    assert_eq!(l.len(), 40);
    let first: f64 = l[..5].iter().map(|x| x.1).sum::<f64>() / 5.0;
    let last: f64 = l[35..].iter().map(|x| x.1).sum::<f64>() / 5.0;
    println!(
        "stage 1 on the tiny model: mean loss of the first 5 steps {first:.4}, last 5 {last:.4}"
    );
    assert!(last < first * 0.7, "first {first}, last {last}");
    assert!(
        std::fs::read_to_string(out.join("loss.svg"))
            .unwrap()
            .contains("loss_layer_2")
    );
    let cfg = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(
        cfg.contains("\"rwkv_hybrid\"") && cfg.contains("\"wkv_layers\""),
        "{cfg}"
    );
    // Stage 2 ran after it, untied the head and wrote its evaluation.
    let s2 = p.runs("p").pop().unwrap().join("stage2/out");
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s2.join("eval.json")).unwrap()).unwrap();
    assert!(
        eval["student_perplexity"].as_f64().unwrap().is_finite(),
        "{eval}"
    );
    let cfg2 = std::fs::read_to_string(s2.join("config.json")).unwrap();
    assert!(cfg2.contains("\"tie_word_embeddings\": false"), "{cfg2}");
    let l2 = losses(&std::fs::read_to_string(s2.join("metrics.jsonl")).unwrap());
    assert_eq!(l2.len(), 20);
    // SFT ran and its loss fell (that the loss covers the assistant turns only is checked by
    // `assistant_mask_covers_exactly_the_assistant_turns` in tests/chat_template.rs and
    // `loss_counts_only_masked_in_targets_shifted_once` in src/train/losses.rs).
    let sft = p.runs("p").pop().unwrap().join("sft/out");
    let l3 = losses(&std::fs::read_to_string(sft.join("metrics.jsonl")).unwrap());
    assert_eq!(l3.len(), 8);
    assert!(l3[7].1 < l3[0].1, "{l3:?}");
    assert!(sft.join("eval.json").exists());
    // The student directory works with the model commands.
    let r = p
        .run(&[
            "generate",
            "--model",
            out.to_str().unwrap(),
            "--raw",
            "Line",
            "--max-new-tokens",
            "3",
        ])
        .ok();
    assert!(r.stderr.contains("new tokens"), "{}", r.stderr);
}

/// Runs the pipeline, kills it with SIGKILL once `step` has logged `after` steps, resumes, and
/// checks every training step's losses against an uninterrupted run, bit for bit.
fn kill_during(step: &str, after: usize) {
    let reference = project(40);
    reference.run(&["run", "p.toml"]).ok();
    let ref_run = reference.runs("p").pop().unwrap();

    let p = project(40);
    let mut child = p.spawn(&["run", "p.toml"]);
    p.wait_for(120, &format!("{step} to pass step {after}"), || {
        p.runs("p").last().is_some_and(|r| {
            let m = std::fs::read_to_string(r.join(step).join("checkpoint/metrics.jsonl"))
                .unwrap_or_default();
            m.lines().count() >= after
        })
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let run = p.runs("p").pop().unwrap();
    assert!(
        !run.join(step).join("out/metrics.jsonl").exists(),
        "killed before {step} ended"
    );
    p.run(&["resume", run.to_str().unwrap()]).ok();
    // The step continued from a checkpoint: it did not start over.
    let m = common::manifest(&run.join(step));
    let total = losses(&std::fs::read_to_string(run.join(step).join("out/metrics.jsonl")).unwrap())
        .len() as u64;
    let from = m["resumed_from"]
        .as_u64()
        .unwrap_or_else(|| panic!("{step} did not resume from a checkpoint: {m}"));
    assert!(
        from >= 1 && from < total,
        "resumed from step {from} of {total}"
    );
    assert_eq!(m["attempts"], 2, "{m}");
    for s in ["stage1", "stage2", "sft"] {
        let want =
            losses(&std::fs::read_to_string(ref_run.join(s).join("out/metrics.jsonl")).unwrap());
        let got = losses(&std::fs::read_to_string(run.join(s).join("out/metrics.jsonl")).unwrap());
        assert_eq!(got.len(), want.len(), "{s}");
        for ((s1, a), (s2, b)) in got.iter().zip(&want) {
            assert_eq!(s1, s2);
            assert_eq!(a.to_bits(), b.to_bits(), "{s} step {s1}: {a} vs {b}");
        }
    }
}

#[test]
fn kill_in_stage1_and_resume_gives_identical_losses() {
    kill_during("stage1", 6);
}

#[test]
fn kill_in_stage2_and_resume_gives_identical_losses() {
    kill_during("stage2", 6);
}

/// W&B: an offline run holding the metrics and the config is written beside the step; a
/// missing SDK is a configuration error before anything runs.
#[test]
fn wandb_offline_run_and_missing_sdk() {
    let p = project(5);
    let py = common::python::python();
    let has_sdk = std::process::Command::new(&py)
        .args(["-c", "import wandb"])
        .status()
        .is_ok_and(|s| s.success());
    let text = p.read("p.toml");
    p.write(
        "bad.toml",
        &text.replace(
            "seed = 5",
            "seed = 5\n\n[pipeline.wandb]\nproject = \"t\"\npython = \"/nonexistent/python3\"",
        ),
    );
    let r = p.run(&["run", "bad.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("pipeline.wandb") && r.stderr.contains("pip install wandb"),
        "{}",
        r.stderr
    );
    assert!(p.runs("bad").is_empty(), "nothing ran");
    if !has_sdk {
        println!(
            "skipped the offline W&B run: `{}` has no wandb package (pip install wandb)",
            py.display()
        );
        return;
    }
    let py = py.to_str().unwrap().to_string();
    p.write(
        "w.toml",
        &text.replace("seed = 5", &format!("seed = 5\n\n[pipeline.wandb]\nproject = \"rwkv-test\"\nmode = \"offline\"\npython = \"{py}\"")),
    );
    let r = p
        .cmd(&["run", "w.toml", "--until", "stage1"])
        .env("WANDB_SILENT", "true")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let step_dir = p.runs("w").pop().unwrap().join("stage1");
    let wandb_dir = step_dir.join("wandb");
    let run = std::fs::read_dir(&wandb_dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("offline-run-"))
        .expect("an offline run folder")
        .path();
    let log = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "wandb"))
        .unwrap();
    let bytes = std::fs::read(log.path()).unwrap();
    let has = |s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(
        has("loss_layer_2") && has("grad_norm"),
        "metrics in the W&B log"
    );
    assert!(has("lr_init"), "the step's config in the W&B log");
}

/// `freeze_mlp`: stage 2 changes the mixers and attention but not one MLP weight.
#[test]
fn freeze_mlp_keeps_every_mlp_weight() {
    use rwkvinside::model::safetensors_io::SafetensorsReader;
    let p = project(6);
    p.run(&[
        "run",
        "p.toml",
        "--until",
        "stage2",
        "--run-id",
        "r",
        "--set",
        "step.stage2.freeze_mlp=true",
    ])
    .ok();
    let run = p.path().join("runs/p/r");
    let before = SafetensorsReader::open_dir(&run.join("stage1/out")).unwrap();
    let after = SafetensorsReader::open_dir(&run.join("stage2/out")).unwrap();
    let (mut mlp, mut changed) = (0, 0);
    for name in before.names() {
        let (a, b) = (
            before.read_f32(name).unwrap(),
            after.read_f32(name).unwrap(),
        );
        if name.contains(".mlp.") {
            mlp += 1;
            assert_eq!(a, b, "{name} changed although the MLPs are frozen");
        } else if a != b {
            changed += 1;
        }
    }
    assert_eq!(mlp, 9, "three layers × gate, up, down");
    assert!(
        changed > 10,
        "stage 2 trained the rest ({changed} tensors changed)"
    );
}

/// SFT's KL term holds the student to its teacher: from the same stage-2 student, the held-out
/// KL(teacher ‖ student) after SFT is lower with the term than without, and the step logs it.
#[test]
fn sft_kl_term_keeps_the_student_nearer_its_teacher() {
    let p = project(6);
    let after_sft = |id: &str, set: &[&str]| -> (f64, String) {
        let mut args = vec!["run", "p.toml", "--run-id", id];
        for s in set {
            args.extend(["--set", s]);
        }
        p.run(&args).ok();
        let out = p.path().join(format!("runs/p/{id}/sft/out"));
        let eval: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        (eval["kl"].as_f64().unwrap(), metrics)
    };
    let (kl_plain, m_plain) = after_sft("plain", &[]);
    let (kl_held, m_held) = after_sft(
        "held",
        &["step.sft.teacher=\"tiny\"", "step.sft.kl_weight=5.0"],
    );
    println!(
        "held-out KL to the teacher after SFT: {kl_plain:.4} without the term, {kl_held:.4} with it"
    );
    assert!(kl_held < kl_plain * 0.9, "{kl_held} vs {kl_plain}");
    assert!(
        m_held.contains("\"kl\"") && !m_plain.contains("\"kl\""),
        "{m_held}"
    );
}

/// A loss that becomes infinite stops the step with the last good checkpoint kept, and says so.
#[test]
fn a_non_finite_loss_stops_the_step_and_keeps_the_last_checkpoint() {
    let p = project(12);
    let r = p.run(&[
        "run",
        "p.toml",
        "--until",
        "stage1",
        "--run-id",
        "r",
        "--set",
        "step.stage1.train.lr_init=1e30",
        "--set",
        "step.stage1.train.warmup_steps=0",
        "--set",
        "step.stage1.train.grad_clip=0",
        "--set",
        "step.stage1.train.checkpoint_every=1",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("training stopped; the last good checkpoint is kept"),
        "{}",
        r.stderr
    );
    let step = p.path().join("runs/p/r/stage1");
    let m = common::manifest(&step);
    assert_eq!(m["status"], "failed", "{m}");
    let logged = std::fs::read_to_string(step.join("checkpoint/metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(
        logged >= 1,
        "at least one good step before the loss blew up"
    );
    let latest = std::fs::read_to_string(step.join("checkpoint/LATEST")).unwrap();
    assert_eq!(
        latest.trim(),
        format!("ckpt-{logged:010}"),
        "the checkpoint of the last good step is the latest"
    );
    assert!(
        step.join("checkpoint")
            .join(latest.trim())
            .join("COMPLETE")
            .exists()
    );
}

/// The W&B run of a training step keeps its id when `runner resume` continues the step.
#[test]
fn wandb_run_id_is_stable_across_resume() {
    // Long enough that the sidecar starts well before the step ends.
    let p = project(300);
    let py = common::python::python();
    let has_sdk = std::process::Command::new(&py)
        .args(["-c", "import wandb"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_sdk {
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI the test venv has wandb"
        );
        println!("skipped: `{}` has no wandb package", py.display());
        return;
    }
    let text = p.read("p.toml");
    p.write(
        "w.toml",
        &text.replace(
            "seed = 5",
            &format!(
                "seed = 5\n\n[pipeline.wandb]\nproject = \"rwkv-test\"\nmode = \"offline\"\npython = \"{}\"",
                py.display()
            ),
        ),
    );
    let mut child = p
        .cmd(&["run", "w.toml", "--until", "stage1", "--run-id", "r", "-q"])
        .env("WANDB_SILENT", "true")
        .spawn()
        .unwrap();
    let step = p.path().join("runs/w/r/stage1");
    // Killed once the step has trained a few steps and its W&B run has started (the sidecar
    // starts beside the training, which does not wait for it).
    let started = |dir: &std::path::Path| {
        std::fs::read_dir(dir).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("offline-run-"))
        })
    };
    p.wait_for(120, "stage1 to log steps and start its W&B run", || {
        std::fs::read_to_string(step.join("checkpoint/metrics.jsonl"))
            .is_ok_and(|m| m.lines().count() >= 5)
            && started(&step.join("wandb"))
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    // W&B names offline run folders by the second they start in: let the next attempt start
    // in another second, so each attempt has its own folder to look at.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = p
        .cmd(&["resume", "runs/w/r", "-q"])
        .env("WANDB_SILENT", "true")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let mut runs: Vec<String> = std::fs::read_dir(step.join("wandb"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("offline-run-"))
        .collect();
    runs.sort();
    assert_eq!(runs.len(), 2, "one W&B run folder per attempt: {runs:?}");
    for r in &runs {
        assert!(r.ends_with("-w-r-stage1"), "{r}");
    }
}
