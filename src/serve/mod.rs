//! `runner serve`: a local HTTP server for a teacher or student directory — a browser chat page
//! at `/` (streaming, `<think>` blocks shown as a collapsible "thinking" box) and an
//! OpenAI-compatible `POST /v1/chat/completions` (streaming as server-sent events, or one JSON
//! reply), plus `GET /v1/models` and `GET /health`. Requests are served one generation at a
//! time; the state after the last reply is kept, so a conversation that continues it only
//! feeds its new turn.

pub mod http;

use crate::generate::{
    AnyModel, AnyState, GenerationLimits, LanguageModel, Sampler, SamplingConfig, StopReason,
    generate,
};
use crate::text::{ChatMessage, TextTokenizer};
use anyhow::Result;
use http::{EventStream, Request, read_request, respond, respond_error};
use serde::Deserialize;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

const PAGE: &str = include_str!("page.html");

/// The model, its tokenizer, and the state after the last generation.
pub struct Engine {
    pub model: AnyModel,
    pub tokenizer: TextTokenizer,
    /// Name reported as `model` in replies.
    pub name: String,
    pub max_tokens_limit: usize,
    /// Token ids fed into `state` so far.
    fed: Vec<u32>,
    state: Option<AnyState>,
}

impl Engine {
    pub fn new(
        model: AnyModel,
        tokenizer: TextTokenizer,
        name: String,
        max_tokens_limit: usize,
    ) -> Self {
        Self {
            model,
            tokenizer,
            name,
            max_tokens_limit,
            fed: Vec::new(),
            state: None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The fields of an OpenAI chat-completions request this server honours (others are ignored).
#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::MaxTokens => "length",
        _ => "stop",
    }
}

/// Answers one chat-completions request.
fn chat_completions(
    engine: &Mutex<Engine>,
    req: &Request,
    stream: &TcpStream,
) -> std::io::Result<()> {
    let body: ChatRequest = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return respond_error(stream, 400, &format!("invalid request body: {e}")),
    };
    if body.messages.is_empty() {
        return respond_error(stream, 400, "`messages` is empty");
    }
    let sampling = SamplingConfig {
        temperature: body.temperature.unwrap_or(0.7),
        top_p: body.top_p.unwrap_or(1.0),
        seed: body.seed.unwrap_or_else(now),
        ..Default::default()
    };
    if let Err(m) = sampling.validate() {
        return respond_error(stream, 400, &m);
    }
    let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
    let limit = engine.max_tokens_limit;
    let max_new = body
        .max_completion_tokens
        .or(body.max_tokens)
        .unwrap_or(limit)
        .min(limit);
    let messages: Vec<ChatMessage> = body
        .messages
        .iter()
        .map(|m| ChatMessage::new(&m.role, &m.content))
        .collect();
    let ids = match engine
        .tokenizer
        .render_chat(&messages, true)
        .and_then(|p| engine.tokenizer.encode(&p))
    {
        Ok(ids) if !ids.is_empty() => ids,
        Ok(_) => return respond_error(stream, 400, "the conversation renders to no tokens"),
        Err(e) => return respond_error(stream, 400, &format!("{e:#}")),
    };
    // Continue the kept state when this conversation extends what it has seen.
    let Engine {
        model,
        tokenizer,
        name,
        fed,
        state,
        ..
    } = &mut *engine;
    let (mut st, new_ids) = match state.take() {
        Some(s) if ids.len() > fed.len() && ids.starts_with(fed) => (s, ids[fed.len()..].to_vec()),
        _ => (model.new_state(), ids.clone()),
    };
    let limits = GenerationLimits {
        max_new_tokens: max_new,
        stop_strings: match &body.stop {
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
            None => Vec::new(),
        },
    };
    static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("chatcmpl-{:x}-{n}", now());
    let created = now();
    let mut sampler = Sampler::new(sampling);
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        serde_json::json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let mut events = if body.stream {
        let mut e = EventStream::start(stream)?;
        e.send(&chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        ));
        Some(e)
    } else {
        None
    };
    let result = generate(
        model,
        tokenizer,
        &mut st,
        &new_ids,
        &mut sampler,
        &limits,
        |t| {
            if let Some(e) = events.as_mut() {
                e.send(&chunk(serde_json::json!({"content": t}), None));
            }
        },
    );
    if let Ok(g) = &result {
        if let Some(e) = events.as_mut() {
            e.send(&chunk(serde_json::json!({}), Some(finish_reason(g.stop))));
            e.send("[DONE]");
        } else {
            let reply = serde_json::json!({
                "id": id, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text}, "finish_reason": finish_reason(g.stop)}],
                "usage": {"prompt_tokens": ids.len(), "completion_tokens": g.ids.len(), "total_tokens": ids.len() + g.ids.len()},
            });
            respond(
                stream,
                200,
                "application/json",
                reply.to_string().as_bytes(),
            )?;
        }
    }
    match result {
        Ok(g) => {
            // The state now covers the prompt and the reply (its final token included).
            let mut all = ids;
            all.extend(&g.ids);
            *fed = all;
            *state = Some(st);
            Ok(())
        }
        Err(e) => {
            *fed = Vec::new();
            respond_error(stream, 500, &format!("generation failed: {e:#}"))
        }
    }
}

fn handle(engine: &Mutex<Engine>, stream: TcpStream) -> std::io::Result<()> {
    let req = match read_request(&stream) {
        Ok(r) => r,
        Err((status, m)) => return respond_error(&stream, status, &m),
    };
    tracing::debug!("{} {}", req.method, req.path);
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/") | ("GET", "/index.html") => {
            respond(&stream, 200, "text/html; charset=utf-8", PAGE.as_bytes())
        }
        ("GET", "/health") => respond(&stream, 200, "application/json", b"{\"status\":\"ok\"}"),
        ("GET", "/v1/models") => {
            let e = engine.lock().unwrap_or_else(|p| p.into_inner());
            let body = serde_json::json!({"object": "list", "data": [{"id": e.name, "object": "model", "created": 0, "owned_by": "local", "description": e.model.describe()}]});
            respond(
                &stream,
                200,
                "application/json",
                body.to_string().as_bytes(),
            )
        }
        ("POST", "/v1/chat/completions") => chat_completions(engine, &req, &stream),
        ("OPTIONS", _) => {
            let mut s = &stream;
            use std::io::Write;
            write!(
                s,
                "HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Allow-Methods: GET, POST, OPTIONS\r\nAccess-Control-Allow-Headers: Content-Type, Authorization\r\nConnection: close\r\n\r\n"
            )
        }
        (_, "/" | "/v1/chat/completions" | "/v1/models" | "/health") => respond_error(
            &stream,
            405,
            &format!("{} is not allowed on {}", req.method, req.path),
        ),
        _ => respond_error(&stream, 404, &format!("no route {}", req.path)),
    }
}

/// Serves until the process is stopped. Prints the address (port 0 picks a free one).
pub fn serve(engine: Engine, host: &str, port: u16) -> Result<()> {
    let listener = TcpListener::bind((host, port))
        .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "serving {} ({}) on http://{addr}/  — chat page at /, OpenAI API at /v1/chat/completions",
        engine.name,
        engine.model.describe()
    );
    let engine = Arc::new(Mutex::new(engine));
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let engine = engine.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(&engine, stream) {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    Ok(())
}
