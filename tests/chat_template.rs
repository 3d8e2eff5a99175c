//! Chat templates rendered with minijinja against Hugging Face transformers' own rendering
//! (`tests/data/chat_vectors.json`, written by `scripts/chat_vectors.py` for SmolLM2 and Qwen),
//! and the assistant loss mask: exactly the assistant turns (content and end marker) are
//! trained on.

mod common;

use common::python::tiny_qwen2;
use rwkvinside::data::document::{AssistantMarkers, Content, tokenize};
use rwkvinside::text::{ChatMessage, ChatTemplate, TextTokenizer};
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("data/chat_vectors.json")).unwrap()
}

fn messages(case: &Value) -> Vec<ChatMessage> {
    serde_json::from_value(case["messages"].clone()).unwrap()
}

#[test]
fn renders_like_transformers() {
    let v = vectors();
    for name in ["smollm2", "qwen"] {
        let t = &v[name];
        let template = ChatTemplate::new(t["template"].as_str().unwrap()).unwrap();
        for (i, case) in t["cases"].as_array().unwrap().iter().enumerate() {
            let got = template
                .render(
                    &messages(case),
                    case["add_generation_prompt"].as_bool().unwrap(),
                    t["bos_token"].as_str(),
                    t["eos_token"].as_str(),
                )
                .unwrap();
            assert_eq!(got, case["rendered"].as_str().unwrap(), "{name} case {i}");
        }
    }
}

#[test]
fn assistant_mask_covers_exactly_the_assistant_turns() {
    let v = vectors();
    let dir = tempfile::tempdir().unwrap();
    tiny_qwen2(dir.path(), &[]);
    for name in ["smollm2", "qwen"] {
        // The tiny byte-level tokenizer with this model family's template.
        let cfg_path = dir.path().join("tokenizer_config.json");
        let mut cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
        cfg["chat_template"] = v[name]["template"].clone();
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let tok = TextTokenizer::from_dir(dir.path()).unwrap();
        for case in v[name]["cases"].as_array().unwrap() {
            let msgs = messages(case);
            let assistants: Vec<&ChatMessage> =
                msgs.iter().filter(|m| m.role == "assistant").collect();
            let content = Content::Chat(msgs.clone());
            let doc = match tokenize(&content, &tok, &AssistantMarkers::default(), None) {
                Ok(d) => d,
                Err(e) => {
                    assert!(assistants.is_empty(), "{e}");
                    continue;
                }
            };
            // Runs of masked tokens, decoded.
            let mut runs: Vec<Vec<u32>> = Vec::new();
            let mut prev = 0;
            for (&id, &m) in doc.ids.iter().zip(&doc.loss_mask) {
                if m == 1 {
                    if prev == 0 {
                        runs.push(Vec::new());
                    }
                    runs.last_mut().unwrap().push(id);
                }
                prev = m;
            }
            let texts: Vec<String> = runs.iter().map(|r| tok.decode(r, false).unwrap()).collect();
            assert_eq!(texts.len(), assistants.len(), "{name}: {texts:?}");
            for (text, m) in texts.iter().zip(&assistants) {
                // SmolLM2 keeps the content verbatim; Qwen's template may move a <think> block.
                let answer = m
                    .content
                    .rsplit("</think>")
                    .next()
                    .unwrap()
                    .trim_start_matches('\n');
                assert!(
                    text.ends_with(&format!("{answer}<|im_end|>")),
                    "{name}: {text:?} vs {:?}",
                    m.content
                );
                if name == "smollm2" {
                    assert_eq!(text, &format!("{}<|im_end|>", m.content));
                }
            }
            // Everything else (system, user turns, headers) carries no loss.
            let total: usize = doc.loss_mask.iter().map(|&m| m as usize).sum();
            assert_eq!(total, runs.iter().map(Vec::len).sum::<usize>());
        }
    }
}
