//! Every `runner bench` command runs once on a tiny shape, so that the benchmark code cannot
//! rot between the occasions it is run for real. The reference columns (PyTorch, Python
//! `tokenizers`) are reported as not measured when their Python packages are missing; the
//! runner's own column must always be there.

mod common;

use common::Project;
use common::python::tiny_qwen2;
use serde_json::Value;

/// A Python interpreter that exists but has none of the reference packages, so the runs are
/// the same wherever the tests run.
const NO_PYTHON: &str = "/nonexistent/python3";

fn positive(v: &Value) -> bool {
    v.as_f64().is_some_and(|x| x > 0.0 && x.is_finite())
}

fn json(p: &Project, name: &str) -> Value {
    serde_json::from_str(&p.read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_bench_command_runs_on_a_tiny_shape() {
    let p = Project::new();
    tiny_qwen2(&p.path().join("tiny"), &[]);

    let r = p
        .run(&[
            "bench",
            "generate",
            "--model",
            "tiny",
            "--prompt-tokens",
            "8",
            "--new-tokens",
            "2",
            "--reps",
            "1",
            "--python",
            NO_PYTHON,
            "--json",
            "generate.json",
        ])
        .ok();
    assert!(r.stdout.contains("runner"), "{}", r.stdout);
    let g = json(&p, "generate.json");
    assert!(positive(&g[0]["runner"]["decode_tok_s"]), "{g}");
    assert!(positive(&g[0]["runner"]["prefill_tok_s"]), "{g}");
    assert!(
        g[0]["torch"].is_null() && g[0]["torch_error"].is_string(),
        "{g}"
    );

    // `bench hybrid` on the tiny model, layer 0 converted, 2 decoded tokens, one repetition.
    let hybrid = |contexts: &str, batch: &str, out: &str| {
        p.run(&[
            "bench",
            "hybrid",
            "--model",
            "tiny",
            "--layers",
            "0",
            "--contexts",
            contexts,
            "--new-tokens",
            "2",
            "--reps",
            "1",
            "--batch",
            batch,
            "--json",
            out,
        ])
        .ok()
    };
    let r = hybrid("16,32", "1", "hybrid.json");
    assert!(!r.stdout.is_empty());
    let h = json(&p, "hybrid.json");
    assert_eq!(h["converted_layers"], 1, "{h}");
    for side in ["teacher", "hybrid"] {
        assert_eq!(h[side].as_array().map(Vec::len), Some(2), "{h}");
        assert_eq!(h[side][1]["context"], 32, "{h}");
        assert!(positive(&h[side][1]["decode_tok_s"]), "{h}");
    }
    assert!(positive(&h["hybrid"][0]["recurrent_mib"]), "{h}");
    // The bytes a decoded token reads: a mixer holds its attention's projections plus LoRAs.
    assert!(positive(&h["read_bandwidth_gb_s"]), "{h}");
    let bytes = |k: &str| h[k].as_u64().unwrap_or(0);
    assert!(bytes("teacher_weight_bytes") > 0, "{h}");
    assert!(
        bytes("hybrid_weight_bytes") > bytes("teacher_weight_bytes"),
        "{h}"
    );
    assert!(r.stdout.contains("read bound"), "{}", r.stdout);

    // Two sequences decoded together from one prefilled context: twice the cache and state.
    let r = hybrid("16", "2", "hybrid2.json");
    assert!(r.stdout.contains("2 sequences at a time"), "{}", r.stdout);
    let h2 = json(&p, "hybrid2.json");
    assert_eq!(h2["batch"], 2, "{h2}");
    for side in ["teacher", "hybrid"] {
        assert!(positive(&h2[side][0]["decode_tok_s"]), "{h2}");
        let (one, two) = (
            h[side][0]["state_mib"].as_f64().unwrap(),
            h2[side][0]["state_mib"].as_f64().unwrap(),
        );
        assert!(
            (two - 2.0 * one).abs() < 1e-9,
            "{side}: {one} MiB for one, {two} for two"
        );
    }

    let r = p
        .run(&[
            "bench",
            "stage2",
            "--model",
            "tiny",
            "--layers",
            "0,1",
            "--seq",
            "16",
            "--steps",
            "1",
            "--python",
            NO_PYTHON,
            "--json",
            "stage2.json",
        ])
        .ok();
    assert!(!r.stdout.is_empty());
    let s = json(&p, "stage2.json");
    assert!(
        positive(&s["ours"]["step_s"]) && positive(&s["ours"]["loss"]),
        "{s}"
    );
    assert_eq!(
        s["ours"]["phases_s"].as_array().map(Vec::len),
        Some(4),
        "{s}"
    );

    p.write(
        "texts.jsonl",
        "{\"text\": \"hello world\"}\n{\"text\": \"more text here\"}\n",
    );
    let r = p
        .run(&[
            "bench",
            "tokenize",
            "--tokenizer",
            "tiny",
            "--input",
            "texts.jsonl",
            "--reps",
            "1",
            "--python",
            NO_PYTHON,
        ])
        .ok();
    assert!(
        r.stdout.contains("2 texts") && r.stdout.contains("tok/s"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("not measured"), "{}", r.stdout);

    let r = p
        .run(&[
            "bench",
            "wkv",
            "--quick",
            "--reps",
            "1",
            "--no-reference",
            "--python",
            NO_PYTHON,
            "--json",
            "wkv.json",
        ])
        .ok();
    assert!(!r.stdout.is_empty());
    let w = json(&p, "wkv.json");
    assert_eq!(w.as_array().map(Vec::len), Some(1), "{w}");
    assert!(
        positive(&w[0]["fused"]["fwd_ms"]) && positive(&w[0]["fused"]["fwdbwd_ms"]),
        "{w}"
    );
}
