//! Just enough HTTP/1.1 for a local model server: read one request (request line, headers,
//! a `Content-Length` body), write a whole response or a server-sent-events stream. One
//! request per connection (`Connection: close`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// Largest request body accepted (a long conversation fits easily).
const MAX_BODY: usize = 8 << 20;

#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub query: String,
    pub body: Vec<u8>,
}

/// Reads a request; `Err` holds the status and message to answer with.
pub fn read_request(stream: &TcpStream) -> Result<Request, (u16, String)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| (400, format!("reading the request: {e}")))?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err((400, "malformed request line".into()));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        reader
            .read_line(&mut h)
            .map_err(|e| (400, format!("reading headers: {e}")))?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            length = v
                .trim()
                .parse()
                .map_err(|_| (400, "bad Content-Length".to_string()))?;
        }
    }
    if length > MAX_BODY {
        return Err((413, format!("the body is larger than {MAX_BODY} bytes")));
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| (400, format!("reading the body: {e}")))?;
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        _ => "Internal Server Error",
    }
}

/// Writes a complete response.
pub fn respond(
    mut stream: &TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Access-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()
}

/// An OpenAI-style error body.
pub fn respond_error(stream: &TcpStream, status: u16, message: &str) -> std::io::Result<()> {
    let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "code": status}});
    respond(
        stream,
        status,
        "application/json",
        body.to_string().as_bytes(),
    )
}

/// A server-sent-events stream: headers first, then one `data:` event per call.
pub struct EventStream<'a> {
    stream: &'a TcpStream,
    /// Set once a write failed (the client went away); later events are dropped.
    pub closed: bool,
}

impl<'a> EventStream<'a> {
    pub fn start(mut stream: &'a TcpStream) -> std::io::Result<Self> {
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             Access-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n"
        )?;
        stream.flush()?;
        Ok(Self {
            stream,
            closed: false,
        })
    }

    pub fn send(&mut self, data: &str) {
        if self.closed {
            return;
        }
        let mut s = self.stream;
        if write!(s, "data: {data}\n\n")
            .and_then(|_| s.flush())
            .is_err()
        {
            self.closed = true;
        }
    }
}
