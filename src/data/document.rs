//! Records → token sequences with a loss mask. Text records are used as is (plus the
//! end-of-text token); chat records (`messages`, any `*conversations*` key, or evals-style
//! `input` + `ideal`) are rendered with the tokenizer's chat template, and only the assistant
//! turns (their content and end marker) carry loss.

use crate::text::{ChatMessage, TextTokenizer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a record holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    Chat(Vec<ChatMessage>),
}

/// A tokenised record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Document {
    pub ids: Vec<u32>,
    /// 1 where the token is a training target.
    pub loss_mask: Vec<u8>,
}

/// Where assistant turns start and end in the rendered text (ChatML by default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AssistantMarkers {
    /// Text right before an assistant turn's content (not trained on).
    pub start: String,
    /// Text that ends an assistant turn (trained on, so the model learns to stop).
    pub end: String,
}

impl Default for AssistantMarkers {
    fn default() -> Self {
        Self {
            start: "<|im_start|>assistant\n".into(),
            end: "<|im_end|>".into(),
        }
    }
}

fn message_list(v: &Value) -> Result<Vec<ChatMessage>, String> {
    let items = v.as_array().ok_or("the messages are not a list")?;
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |a: &str, b: &str| m.get(a).or_else(|| m.get(b)).and_then(Value::as_str);
            let role =
                field("role", "from").ok_or(format!("message {i} has no `role` (or `from`)"))?;
            let content = field("content", "value")
                .ok_or(format!("message {i} has no `content` (or `value`)"))?;
            let role = match role {
                "human" => "user",
                "gpt" => "assistant",
                r => r,
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// Decides what a record is (the first of `text_fields` present, else a chat); the error says
/// why it is neither.
pub fn interpret(value: &Value, text_fields: &[String]) -> Result<Content, String> {
    let obj = value.as_object().ok_or("the record is not an object")?;
    if let Some((text_field, v)) = text_fields.iter().find_map(|f| obj.get(f).map(|v| (f, v))) {
        return match v.as_str() {
            Some(s) if !s.trim().is_empty() => Ok(Content::Text(s.to_string())),
            Some(_) => Err(format!("`{text_field}` is empty")),
            None => Err(format!("`{text_field}` is not a string")),
        };
    }
    let chat_key = obj
        .keys()
        .find(|k| *k == "messages" || k.contains("conversations"));
    if let Some(key) = chat_key {
        let messages = message_list(&obj[key]).map_err(|e| format!("`{key}`: {e}"))?;
        if messages.is_empty() {
            return Err(format!("`{key}` is empty"));
        }
        return Ok(Content::Chat(messages));
    }
    if let (Some(input), Some(Value::String(ideal))) = (obj.get("input"), obj.get("ideal")) {
        let mut messages = message_list(input).map_err(|e| format!("`input`: {e}"))?;
        messages.push(ChatMessage::new("assistant", ideal));
        return Ok(Content::Chat(messages));
    }
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let fields: Vec<String> = text_fields.iter().map(|f| format!("`{f}`")).collect();
    Err(format!(
        "the record has neither {} nor `messages` / `*conversations*` (keys: {})",
        fields.join(" / "),
        keys.join(", ")
    ))
}

/// Byte ranges of assistant turns in a rendered conversation: from after each `start` marker
/// to the end of the following `end` marker (or the end of the text).
pub fn assistant_spans(rendered: &str, markers: &AssistantMarkers) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(i) = rendered[from..].find(&markers.start) {
        let start = from + i + markers.start.len();
        let end = match rendered[start..].find(&markers.end) {
            Some(j) => start + j + markers.end.len(),
            None => rendered.len(),
        };
        spans.push((start, end));
        from = end;
    }
    spans
}

/// Tokenises one record's content.
pub fn tokenize(
    content: &Content,
    tok: &TextTokenizer,
    markers: &AssistantMarkers,
    eos: Option<u32>,
) -> Result<Document, String> {
    match content {
        Content::Text(text) => {
            let enc = tok
                .inner
                .encode(text.as_str(), false)
                .map_err(|e| format!("tokenizing: {e}"))?;
            let mut ids = enc.get_ids().to_vec();
            ids.extend(eos);
            Ok(Document {
                loss_mask: vec![1; ids.len()],
                ids,
            })
        }
        Content::Chat(messages) => {
            let rendered = tok
                .render_chat(messages, false)
                .map_err(|e| format!("{e:#}"))?;
            let spans = assistant_spans(&rendered, markers);
            if spans.is_empty() {
                return Err(format!(
                    "no assistant turn found in the rendered conversation (looked for `{}`)",
                    markers.start.escape_debug()
                ));
            }
            let enc = tok
                .inner
                .encode(rendered.as_str(), false)
                .map_err(|e| format!("tokenizing: {e}"))?;
            let loss_mask = enc
                .get_offsets()
                .iter()
                .map(|&(s, e)| {
                    let mid = if e > s { s } else { s.saturating_sub(1) };
                    spans.iter().any(|&(a, b)| mid >= a && mid < b) as u8
                })
                .collect();
            Ok(Document {
                ids: enc.get_ids().to_vec(),
                loss_mask,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn interprets_text_chat_and_sharegpt() {
        let text = ["text".to_string()];
        let zero = ["text".to_string(), "0".to_string()];
        assert_eq!(
            interpret(&json!({"text": "hi"}), &text),
            Ok(Content::Text("hi".into()))
        );
        assert_eq!(
            interpret(&json!({"0": "para"}), &zero),
            Ok(Content::Text("para".into()))
        );
        let c = interpret(
            &json!({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}),
            &text,
        );
        assert_eq!(
            c,
            Ok(Content::Chat(vec![
                ChatMessage::new("user", "q"),
                ChatMessage::new("assistant", "a")
            ]))
        );
        let c = interpret(
            &json!({"input": [{"role": "user", "content": "2+2?"}], "ideal": "4"}),
            &text,
        )
        .unwrap();
        assert_eq!(
            c,
            Content::Chat(vec![
                ChatMessage::new("user", "2+2?"),
                ChatMessage::new("assistant", "4")
            ])
        );
        let e = interpret(&json!({"title": "x", "body": "y"}), &text).unwrap_err();
        assert!(e.contains("neither") && e.contains("body, title"), "{e}");
        assert!(
            interpret(&json!({"messages": [{"role": "user"}]}), &text)
                .unwrap_err()
                .contains("content")
        );
        assert!(
            interpret(&json!({"text": 3}), &text)
                .unwrap_err()
                .contains("not a string")
        );
    }

    #[test]
    fn finds_assistant_spans() {
        let r = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>assistant\nA2";
        let spans = assistant_spans(r, &AssistantMarkers::default());
        let texts: Vec<&str> = spans.iter().map(|&(a, b)| &r[a..b]).collect();
        assert_eq!(texts, ["A1<|im_end|>", "A2"]);
    }
}
