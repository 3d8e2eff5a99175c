//! HTTP for `runner serve`, on hyper (HTTP/1.1) and tokio: one request per connection, with
//! the limits a local server needs to survive careless or hostile clients —
//!
//! - at most `max_connections` connections are served at once; the excess get `503` at once;
//! - a client has `request_timeout` to send its headers and its body (then `408`/closed);
//! - headers larger than [`MAX_HEADER_BYTES`] get `431`, bodies larger than [`MAX_BODY`] `413`;
//! - failures to accept (too many open files, …) are logged and retried, never fatal.
//!
//! Responses are whole (`Full`) or a stream of server-sent events fed through a channel.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};

/// Largest request head (request line and headers).
pub const MAX_HEADER_BYTES: usize = 16 << 10;
/// Largest request body accepted (a long conversation fits easily).
pub const MAX_BODY: usize = 8 << 20;

/// A response body: whole or streamed.
pub type Body = BoxBody<Bytes, Infallible>;

/// Limits of the connection layer.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub request_timeout: Duration,
}

/// A complete response.
pub fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("text/plain")),
    );
    r
}

/// An OpenAI-style error body with its status.
pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let body =
        serde_json::json!({"error": {"message": message, "type": kind, "code": status.as_u16()}});
    full(status, "application/json", body.to_string())
}

/// A body fed by a channel: each message is one chunk; the body ends when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// A server-sent-events response whose events are sent through the returned sender
/// (`data: ...` framing is added by [`EventSender::send`]).
pub fn event_stream() -> (EventSender, Response<Body>) {
    let (tx, rx) = mpsc::channel(256);
    let mut r = Response::new(BodyExt::boxed(ChannelBody(rx)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (EventSender { tx, closed: false }, r)
}

/// Sends events from a blocking thread (the generation).
pub struct EventSender {
    tx: mpsc::Sender<Bytes>,
    /// Set once the client went away; later events are dropped.
    pub closed: bool,
}

impl EventSender {
    pub fn send(&mut self, data: &str) {
        if !self.closed
            && self
                .tx
                .blocking_send(Bytes::from(format!("data: {data}\n\n")))
                .is_err()
        {
            self.closed = true;
        }
    }
}

/// Reads a request body within the size limit and the time left for the request.
pub async fn read_body(body: Incoming, timeout: Duration) -> Result<Bytes, Response<Body>> {
    use hyper::body::Body as _;
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {MAX_BODY} bytes"),
        ));
    }
    match tokio::time::timeout(timeout, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the request body did not arrive within {timeout:?}"),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {MAX_BODY} bytes"),
        )),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("reading the body: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Content-Length: 88\r\nRetry-After: 1\r\nConnection: close\r\n\r\n\
{\"error\":{\"message\":\"too many connections; try again\",\"type\":\"server_error\",\"code\":503}}";

/// Accepts connections on `listener` forever, serving each with `handler`.
pub async fn serve<H, F>(listener: tokio::net::TcpListener, limits: Limits, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait for connections to end.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    stream.write_all(BUSY).await?;
                    stream.shutdown().await
                })
                .await;
            });
            continue;
        };
        let handler = handler.clone();
        let request_timeout = limits.request_timeout;
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(request_timeout)
                .max_buf_size(MAX_HEADER_BYTES)
                .keep_alive(false);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("connection from {peer} ended: {e}");
            }
            drop(permit);
        });
    }
}

/// Whether the browser origin of `req` (its `Origin` header) may call the API: requests without
/// one (curl, SDKs), from the page this server serves, or from the `--cors` origin.
pub fn origin_allowed<B>(req: &Request<B>, cors: Option<&str>) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let origin = origin.to_str().unwrap_or("");
    if cors.is_some_and(|c| c == "*" || c == origin) {
        return true;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    ["http://", "https://"]
        .iter()
        .any(|scheme| origin.strip_prefix(scheme) == Some(host) && !host.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(origin: Option<&str>, host: &str) -> Request<()> {
        let mut b = Request::builder()
            .uri("/v1/chat/completions")
            .header("host", host);
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_same_origin_or_the_configured_origin_may_call() {
        assert!(origin_allowed(&req(None, "127.0.0.1:8080"), None));
        assert!(origin_allowed(
            &req(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"),
            None
        ));
        assert!(!origin_allowed(
            &req(Some("https://evil.example"), "127.0.0.1:8080"),
            None
        ));
        assert!(!origin_allowed(
            &req(Some("http://127.0.0.1:9999"), "127.0.0.1:8080"),
            None
        ));
        assert!(origin_allowed(
            &req(Some("https://app.example"), "127.0.0.1:8080"),
            Some("https://app.example")
        ));
        assert!(!origin_allowed(
            &req(Some("https://evil.example"), "127.0.0.1:8080"),
            Some("https://app.example")
        ));
    }

    #[test]
    fn the_busy_response_is_well_formed() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        let v: serde_json::Value = serde_json::from_str(body.trim_end()).unwrap();
        assert_eq!(v["error"]["code"], 503);
    }
}
