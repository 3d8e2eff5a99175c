//! The transformer teacher on the Qwen2 path (biases, GQA, tied embeddings): logits against the
//! independent numpy reference, KV-cached decoding against the full forward, padding, layer
//! captures, and checkpoint errors.

mod common;

use burn::tensor::{Device, Tensor};
use common::python::{reference_logits, relative_error, tiny_qwen2};
use rwkvinside::model::transformer::{TransformerCache, ids_tensor};
use rwkvinside::model::weights::to_vec;
use rwkvinside::model::{Transformer, TransformerConfig};

const SEQS: [[u32; 7]; 2] = [
    [256, 72, 101, 108, 108, 111, 258],
    [1, 200, 17, 33, 255, 0, 9],
];

fn seqs() -> Vec<Vec<u32>> {
    SEQS.iter().map(|s| s.to_vec()).collect()
}

#[test]
fn logits_match_numpy_reference_f32_and_bf16() {
    for dtype in ["f32", "bf16"] {
        let dir = tempfile::tempdir().unwrap();
        tiny_qwen2(dir.path(), &["--dtype", dtype, "--layers", "3"]);
        let device = Device::flex();
        let model = Transformer::load(dir.path(), &device).unwrap();
        assert!(model.config.attention_bias && model.config.tie_word_embeddings);
        assert_eq!(model.config.group_size(), 2);
        let logits = to_vec(model.forward(ids_tensor(&seqs(), &device), None));
        let (shape, reference) = reference_logits(&["--hf", dir.path().to_str().unwrap()], &seqs());
        assert_eq!(shape, vec![2, 7, model.config.vocab_size]);
        let (rel, abs) = relative_error(&logits, &reference);
        println!("tiny qwen2 ({dtype}): max relative error {rel:.2e}, max abs error {abs:.2e}");
        assert!(rel < 1e-5, "relative error {rel} (abs {abs})");
    }
}

fn tiny_model() -> (tempfile::TempDir, Transformer) {
    let dir = tempfile::tempdir().unwrap();
    tiny_qwen2(dir.path(), &[]);
    let model = Transformer::load(dir.path(), &Device::flex()).unwrap();
    (dir, model)
}

#[test]
fn cached_decoding_equals_full_forward() {
    let (_dir, model) = tiny_model();
    let device = Device::flex();
    let ids = seqs();
    let full = model.forward(ids_tensor(&ids, &device), None);
    let mut cache = TransformerCache::default();
    let mut pieces = Vec::new();
    for (start, end) in [(0, 3), (3, 4), (4, 5), (5, 7)] {
        let chunk: Vec<Vec<u32>> = ids.iter().map(|s| s[start..end].to_vec()).collect();
        let (h, _) = model.forward_hidden(ids_tensor(&chunk, &device), None, Some(&mut cache), &[]);
        pieces.push(model.logits(h));
    }
    assert_eq!(cache.len(), 7);
    let stepped = to_vec(Tensor::cat(pieces, 1));
    let (rel, _) = relative_error(&stepped, &to_vec(full));
    assert!(rel < 1e-5, "relative error {rel}");
}

/// A KV cache that grows several times while decoding (its room is exceeded every few dozen
/// tokens), is given room ahead (`reserve`), holds left padding from its prompt, and is cloned
/// midway — the clone continuing with other tokens — decodes exactly like full forwards of the
/// same sequences: the in-place writes of one copy never show in the other.
#[test]
fn a_growing_reserved_and_cloned_cache_decodes_like_the_full_forward() {
    let (_dir, model) = tiny_model();
    let device = Device::flex();
    let vocab = model.config.vocab_size as u32;
    let len = 160;
    let row = |seed: u32| -> Vec<u32> { (0..len).map(|i| (i * 37 + seed * 11) % vocab).collect() };
    let (a, b) = (row(1), row(2));
    // Row 1 of the batch starts with 2 padding tokens.
    let mut mask = vec![1f32; 2 * len as usize];
    mask[len as usize..len as usize + 2].fill(0.0);
    let full = |rows: &[Vec<u32>]| {
        let m = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(mask.clone(), [2, len as usize]),
            &device,
        );
        to_vec(model.forward(ids_tensor(rows, &device), Some(m)))
    };
    let prefill = 5;
    let decode = |cache: &mut TransformerCache, rows: &[Vec<u32>], from: usize, to: usize| {
        let mut pieces = Vec::new();
        for t in from..to {
            let step: Vec<Vec<u32>> = rows.iter().map(|r| vec![r[t]]).collect();
            let (h, _) =
                model.forward_hidden(ids_tensor(&step, &device), None, Some(&mut *cache), &[]);
            pieces.push(model.logits(h));
        }
        pieces
    };
    let rows = vec![a.clone(), b.clone()];
    let prompt: Vec<Vec<u32>> = rows.iter().map(|r| r[..prefill].to_vec()).collect();
    let m = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(
            [
                &mask[..prefill],
                &mask[len as usize..len as usize + prefill],
            ]
            .concat(),
            [2, prefill],
        ),
        &device,
    );
    let mut cache = TransformerCache::default();
    let (h, _) = model.forward_hidden(ids_tensor(&prompt, &device), Some(m), Some(&mut cache), &[]);
    let mut pieces = vec![model.logits(h)];
    pieces.extend(decode(&mut cache, &rows, prefill, 100));
    cache.reserve(40);
    let fork_at = 100;
    let mut fork = cache.clone();
    // The fork continues with row 0's tokens in both rows from here.
    let forked_rows = vec![a.clone(), [&b[..fork_at], &a[fork_at..]].concat()];
    let mut fork_pieces: Vec<_> = pieces.clone();
    pieces.extend(decode(&mut cache, &rows, fork_at, len as usize));
    fork_pieces.extend(decode(&mut fork, &forked_rows, fork_at, len as usize));
    assert_eq!(cache.len(), len as usize);
    assert_eq!(fork.len(), len as usize);
    for (name, pieces, rows) in [
        ("original", pieces, rows),
        ("clone", fork_pieces, forked_rows),
    ] {
        let stepped = to_vec(Tensor::cat(pieces, 1));
        let want = full(&rows);
        // Padded positions are excluded: their logits are not meaningful.
        let v = model.config.vocab_size;
        let keep = |x: &[f32]| -> Vec<f32> {
            x.chunks(v)
                .enumerate()
                .filter(|(i, _)| mask[*i] != 0.0)
                .flat_map(|(_, c)| c.to_vec())
                .collect()
        };
        let (rel, _) = relative_error(&keep(&stepped), &keep(&want));
        assert!(rel < 1e-5, "{name}: relative error {rel}");
    }
}

#[test]
fn padding_does_not_change_real_positions() {
    let (_dir, model) = tiny_model();
    let device = Device::flex();
    let short = vec![SEQS[0][..4].to_vec()];
    let alone = to_vec(model.forward(ids_tensor(&short, &device), None));
    // Right padding.
    let padded = vec![vec![
        SEQS[0][0], SEQS[0][1], SEQS[0][2], SEQS[0][3], 0, 0, 0,
    ]];
    let mask = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(vec![1f32, 1., 1., 1., 0., 0., 0.], [1, 7]),
        &device,
    );
    let logits = model.forward(ids_tensor(&padded, &device), Some(mask));
    let real = to_vec(logits.clone().narrow(1, 0, 4));
    assert!(relative_error(&real, &alone).0 < 1e-5);
    assert!(to_vec(logits).iter().all(|v| v.is_finite()));
    // Left padding: the real tokens see only each other. Their positions shift by 3, but
    // rotary attention depends only on relative positions, so their logits are the unpadded
    // run's (up to the rounding of the rotations).
    let left = vec![vec![
        0, 0, 0, SEQS[0][0], SEQS[0][1], SEQS[0][2], SEQS[0][3],
    ]];
    let mask = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(vec![0f32, 0., 0., 1., 1., 1., 1.], [1, 7]),
        &device,
    );
    let logits = model.forward(ids_tensor(&left, &device), Some(mask));
    let real = to_vec(logits.narrow(1, 3, 4));
    let (rel, _) = relative_error(&real, &alone);
    assert!(
        rel < 1e-4,
        "left padding changed the real positions: relative error {rel}"
    );
}

#[test]
fn captures_attention_inputs_and_outputs() {
    let (_dir, model) = tiny_model();
    let device = Device::flex();
    let (_, caps) = model.forward_hidden(ids_tensor(&seqs(), &device), None, None, &[1]);
    assert_eq!(caps.len(), 1);
    assert_eq!(caps[0].layer, 1);
    assert_eq!(caps[0].attn_in.dims(), [2, 7, model.config.hidden_size]);
    assert_eq!(caps[0].attn_out.dims(), [2, 7, model.config.hidden_size]);
    // The captured output is what the layer's attention computes from the captured input.
    let layer = &model.layers[1];
    let rotary = rwkvinside::model::layers::Rotary::new(
        model.config.rope_theta,
        model.config.head_dim,
        0,
        7,
        &device,
    );
    let again = layer
        .attn
        .forward(caps[0].attn_in.clone(), &rotary, None, None);
    assert!(relative_error(&to_vec(again), &to_vec(caps[0].attn_out.clone())).0 < 1e-6);
}

#[test]
fn capture_attention_stops_early_with_the_same_captures() {
    let dir = tempfile::tempdir().unwrap();
    tiny_qwen2(dir.path(), &["--layers", "3"]);
    let device = Device::flex();
    let model = Transformer::load(dir.path(), &device).unwrap();
    let layers = [0, 1];
    assert!(
        model.layers.len() > 2,
        "the check needs layers after the last captured one"
    );
    let (_, full) = model.forward_hidden(ids_tensor(&seqs(), &device), None, None, &layers);
    let early = model.capture_attention(ids_tensor(&seqs(), &device), None, &layers);
    assert_eq!(early.len(), full.len());
    for (a, b) in early.iter().zip(&full) {
        assert_eq!(a.layer, b.layer);
        assert_eq!(to_vec(a.attn_in.clone()), to_vec(b.attn_in.clone()));
        assert_eq!(to_vec(a.attn_out.clone()), to_vec(b.attn_out.clone()));
    }
}

#[test]
fn save_and_reload_round_trip() {
    let (dir, model) = tiny_model();
    let out = tempfile::tempdir().unwrap();
    rwkvinside::model::safetensors_io::write_safetensors(
        &out.path().join("model.safetensors"),
        &model.hf_tensors(),
        rwkvinside::model::safetensors_io::SaveDtype::F32,
    )
    .unwrap();
    std::fs::copy(
        dir.path().join("config.json"),
        out.path().join("config.json"),
    )
    .unwrap();
    let again = Transformer::load(out.path(), &Device::flex()).unwrap();
    let device = Device::flex();
    let a = to_vec(model.forward(ids_tensor(&seqs(), &device), None));
    let b = to_vec(again.forward(ids_tensor(&seqs(), &device), None));
    assert_eq!(a, b);
}

#[test]
fn checkpoint_errors_name_the_problem() {
    let device = Device::flex();
    let empty = tempfile::tempdir().unwrap();
    let err = format!(
        "{:#}",
        Transformer::load(empty.path(), &device).unwrap_err()
    );
    assert!(err.contains("no config.json"), "{err}");

    let (dir, _) = tiny_model();
    // A config that disagrees with the weights: every problem is listed.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    cfg["num_hidden_layers"] = 3.into();
    cfg["intermediate_size"] = 128.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let err = format!("{:#}", Transformer::load(dir.path(), &device).unwrap_err());
    assert!(
        err.contains("missing tensors") && err.contains("model.layers.2.self_attn.q_proj.weight"),
        "{err}"
    );
    assert!(
        err.contains("wrong shape") && err.contains("model.layers.0.mlp.gate_proj.weight"),
        "{err}"
    );
    TransformerConfig::from_dir(dir.path()).unwrap();

    // A truncated weights file.
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = format!("{:#}", Transformer::load(dir.path(), &device).unwrap_err());
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn a_qwen2_gguf_imports_to_the_same_model() {
    // The same weights as a llama.cpp `qwen2` GGUF (q/k biases, rows not permuted), imported
    // by an `import` step: the same logits as the Hugging Face original.
    let p = common::Project::new();
    let gguf = p.path().join("tiny.gguf");
    tiny_qwen2(
        &p.path().join("hf"),
        &["--layers", "2", "--gguf", gguf.to_str().unwrap()],
    );
    p.write(
        "p.toml",
        "[pipeline]\nname = \"imp\"\n\n[[step]]\nid = \"teacher\"\nkind = \"import\"\ngguf = \"tiny.gguf\"\ndtype = \"f32\"\n",
    );
    p.run(&["run", "p.toml", "--run-id", "r"]).ok();
    let imported = p.path().join("runs/imp/r/teacher/out");
    let device = Device::flex();
    let a = Transformer::load(&p.path().join("hf"), &device).unwrap();
    let b = Transformer::load(&imported, &device).unwrap();
    assert!(b.config.attention_bias, "the biases came through");
    assert_eq!(b.config.model_type, "qwen2");
    assert_eq!(
        (b.config.num_key_value_heads, b.config.vocab_size),
        (a.config.num_key_value_heads, a.config.vocab_size)
    );
    let ids = rwkvinside::model::transformer::ids_tensor(&seqs(), &device);
    let (rel, abs) = relative_error(
        &to_vec(b.forward(ids.clone(), None)),
        &to_vec(a.forward(ids, None)),
    );
    assert!(
        rel < 1e-6,
        "imported vs original: relative error {rel} (abs {abs})"
    );
    // The rebuilt tokenizer knows the chat template and the special tokens.
    let tok = rwkvinside::text::TextTokenizer::from_dir(&imported).unwrap();
    assert!(tok.chat_template.is_some());
    assert_eq!(tok.encode("<|im_start|>").unwrap(), vec![257]);
}
