//! `runner serve`: a local HTTP server for a teacher or student directory — a browser chat page
//! at `/` (streaming, `<think>` blocks shown as a collapsible "thinking" box) and an
//! OpenAI-compatible `POST /v1/chat/completions` (streaming as server-sent events, or one JSON
//! reply), plus `GET /v1/models` and `GET /health`. Generations run one at a time, in arrival
//! order (a request that waits longer than `queue_timeout` gets `503`); the state after the last
//! reply is kept, so a conversation that continues it only feeds its new turn.
//!
//! Browsers: the API answers requests from its own page and from clients without an `Origin`
//! (curl, SDKs); another web site's requests are refused unless `--cors ORIGIN` allows it.

pub mod http;

use crate::generate::{
    AnyModel, AnyState, GenerationLimits, KeptState, LanguageModel, Sampler, SamplingConfig,
    StopReason, generate,
};
use crate::text::{ChatMessage, TextTokenizer};
use anyhow::Result;
use http::{Body, error, full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Roles a chat message may have.
const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// Limits and policies of the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub max_connections: usize,
    /// Time a client has to send its whole request.
    pub request_timeout: Duration,
    /// Longest wait for the generation slot before `503`.
    pub queue_timeout: Duration,
    /// A browser origin allowed to call the API from its pages (`*`: any).
    pub cors: Option<String>,
}

const PAGE: &str = include_str!("page.html");

/// The model, its tokenizer, and the state after the last generation.
pub struct Engine {
    pub model: AnyModel,
    pub tokenizer: TextTokenizer,
    /// Name reported as `model` in replies.
    pub name: String,
    pub max_tokens_limit: usize,
    /// The state after the last reply.
    kept: KeptState<AnyState>,
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
            kept: KeptState::default(),
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

impl ChatRequest {
    /// The request's sampling (temperature 0.7 and a time seed unless given).
    fn sampling(&self) -> SamplingConfig {
        SamplingConfig {
            temperature: self.temperature.unwrap_or(0.7),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed.unwrap_or_else(now),
            ..Default::default()
        }
    }
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

/// A request checked and tokenised, ready to generate.
struct Prepared {
    ids: Vec<u32>,
    new_ids: Vec<u32>,
    state: AnyState,
    limits: GenerationLimits,
    sampling: SamplingConfig,
    stream: bool,
}

/// Checks a request against the model and tokenises it; `Err` is the message of a 400.
fn prepare(
    engine: &mut Engine,
    body: &ChatRequest,
    sampling: SamplingConfig,
) -> Result<Prepared, String> {
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
        Ok(_) => return Err("the conversation renders to no tokens".into()),
        Err(e) => return Err(format!("{e:#}")),
    };
    let context = engine.model.max_context();
    if ids.len() >= context {
        return Err(format!(
            "the conversation is {} tokens long; this model's context is {context} tokens (max_position_embeddings): shorten it or start a new one",
            ids.len()
        ));
    }
    let max_new = max_new.min(context - ids.len());
    // Continue the kept state when this conversation extends what it has seen.
    let model = &engine.model;
    let (state, new_ids) = engine.kept.take(&ids, || model.new_state());
    Ok(Prepared {
        ids,
        new_ids,
        state,
        limits: GenerationLimits {
            max_new_tokens: max_new,
            stop_strings: match &body.stop {
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(v)) => v.clone(),
                None => Vec::new(),
            },
        },
        sampling,
        stream: body.stream,
    })
}

/// Runs one generation on a blocking thread, streaming through `events` when given; returns
/// the whole-reply JSON (for a non-streamed request) or the error message.
fn run_generation(
    mut engine: OwnedMutexGuard<Engine>,
    p: Prepared,
    mut events: Option<http::EventSender>,
) -> Result<serde_json::Value, String> {
    static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("chatcmpl-{:x}-{n}", now());
    let created = now();
    let Engine {
        model,
        tokenizer,
        name,
        kept,
        ..
    } = &mut *engine;
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        serde_json::json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    if let Some(e) = events.as_mut() {
        e.send(&chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        ));
    }
    let mut st = p.state;
    let mut sampler = Sampler::new(p.sampling);
    let result = generate(
        model,
        tokenizer,
        &mut st,
        &p.new_ids,
        &mut sampler,
        &p.limits,
        |t| {
            if let Some(e) = events.as_mut() {
                e.send(&chunk(serde_json::json!({"content": t}), None));
            }
        },
    );
    match result {
        Ok(g) => {
            // The state now covers the prompt and every token fed after it (the stop token
            // included when the model ended its turn).
            kept.keep(&p.ids, &g.fed(), st);
            if let Some(e) = events.as_mut() {
                e.send(&chunk(serde_json::json!({}), Some(finish_reason(g.stop))));
                e.send("[DONE]");
            }
            Ok(serde_json::json!({
                "id": id, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text}, "finish_reason": finish_reason(g.stop)}],
                "usage": {"prompt_tokens": p.ids.len(), "completion_tokens": g.ids.len(), "total_tokens": p.ids.len() + g.ids.len(),
                    "prompt_tokens_details": {"cached_tokens": p.ids.len() - p.new_ids.len()}},
            }))
        }
        Err(e) => {
            kept.clear();
            let message = format!("generation failed: {e:#}");
            if let Some(ev) = events.as_mut() {
                ev.send(&serde_json::json!({"error": {"message": message, "type": "server_error", "code": 500}}).to_string());
            }
            Err(message)
        }
    }
}

/// The server's shared state.
struct App {
    engine: Arc<Mutex<Engine>>,
    options: ServeOptions,
    /// Name and description for `/v1/models` (read without waiting for a generation).
    models: String,
}

/// Answers one chat-completions request.
async fn chat_completions(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let bytes = match http::read_body(req.into_body(), app.options.request_timeout).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let bad = |m: String| error(StatusCode::BAD_REQUEST, &m);
    let body: ChatRequest = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return bad(format!("invalid request body: {e}")),
    };
    if body.messages.is_empty() {
        return bad("`messages` is empty".into());
    }
    if let Some((i, m)) = body
        .messages
        .iter()
        .enumerate()
        .find(|(_, m)| !ROLES.contains(&m.role.as_str()))
    {
        return bad(format!(
            "messages[{i}].role `{}` is not one of {}",
            m.role.escape_debug(),
            ROLES.join(", ")
        ));
    }
    let sampling = body.sampling();
    if let Err(m) = sampling.validate() {
        return bad(m);
    }
    let queue = app.options.queue_timeout;
    let mut engine = match tokio::time::timeout(queue, app.engine.clone().lock_owned()).await {
        Ok(g) => g,
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("busy: another generation ran for longer than {queue:?}; try again"),
            );
        }
    };
    let prepared = match prepare(&mut engine, &body, sampling) {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    if prepared.stream {
        let (events, response) = http::event_stream();
        tokio::task::spawn_blocking(move || run_generation(engine, prepared, Some(events)));
        response
    } else {
        match tokio::task::spawn_blocking(move || run_generation(engine, prepared, None)).await {
            Ok(Ok(reply)) => full(StatusCode::OK, "application/json", reply.to_string()),
            Ok(Err(m)) => error(StatusCode::INTERNAL_SERVER_ERROR, &m),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("generation failed: {e}"),
            ),
        }
    }
}

async fn route(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    tracing::debug!("{method} {path}");
    let cors = app.options.cors.as_deref();
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = http::origin_allowed(&req, cors);
    let mut response = match (&method, path.as_str()) {
        (&Method::GET, "/") | (&Method::GET, "/index.html") => {
            let mut r = full(StatusCode::OK, "text/html; charset=utf-8", PAGE);
            r.headers_mut().insert(
                "content-security-policy",
                HeaderValue::from_static("frame-ancestors 'none'"),
            );
            r
        }
        (&Method::GET, "/health") => {
            full(StatusCode::OK, "application/json", "{\"status\":\"ok\"}")
        }
        (&Method::GET, "/v1/models") => {
            full(StatusCode::OK, "application/json", app.models.clone())
        }
        (&Method::POST, "/v1/chat/completions") if !allowed => error(
            StatusCode::FORBIDDEN,
            "requests from other web sites are refused; start the server with `--cors ORIGIN` to allow one",
        ),
        (&Method::POST, "/v1/chat/completions") => chat_completions(app.clone(), req).await,
        (&Method::OPTIONS, _) if allowed && cors.is_some() => {
            let mut r = full(StatusCode::NO_CONTENT, "text/plain", "");
            let h = r.headers_mut();
            h.insert(
                "access-control-allow-methods",
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            h.insert(
                "access-control-allow-headers",
                HeaderValue::from_static("Content-Type, Authorization"),
            );
            r
        }
        (&Method::OPTIONS, _) => error(
            StatusCode::FORBIDDEN,
            "cross-origin requests are not allowed; start the server with `--cors ORIGIN` to allow one",
        ),
        (_, "/" | "/v1/chat/completions" | "/v1/models" | "/health") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not allowed on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, &format!("no route {path}")),
    };
    if let (Some(origin), Some(_)) = (origin, cors)
        && allowed
    {
        let h = response.headers_mut();
        h.insert("access-control-allow-origin", origin);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// Serves until the process is stopped. Prints the address (port 0 picks a free one).
pub fn serve(engine: Engine, host: &str, port: u16, options: ServeOptions) -> Result<()> {
    let listener = std::net::TcpListener::bind((host, port))
        .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    eprintln!(
        "serving {} ({}) on http://{addr}/  — chat page at /, OpenAI API at /v1/chat/completions",
        engine.name,
        engine.model.describe()
    );
    let models = serde_json::json!({"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "local", "description": engine.model.describe()}]}).to_string();
    let limits = http::Limits {
        max_connections: options.max_connections,
        request_timeout: options.request_timeout,
    };
    let app = Arc::new(App {
        engine: Arc::new(Mutex::new(engine)),
        options,
        models,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        http::serve(listener, limits, move |req| route(app.clone(), req)).await;
        Ok::<(), std::io::Error>(())
    })?;
    Ok(())
}
