//! A small stand-in for the Hugging Face Hub on 127.0.0.1, speaking the paths the clients use:
//! `GET /api/{models|datasets}/{repo}/revision/{rev}` (JSON with `sha` and `siblings`) and
//! `GET|HEAD /[datasets/]{repo}/resolve/{rev}/{file}` honouring `Range`, with `ETag` (sha256 for
//! `.safetensors`/`.parquet`, the git blob hash otherwise), `X-Repo-Commit`, `Content-Range`.
//! It can cut the next download of a file short or serve it corrupted, and logs every request.

#![allow(dead_code)]

use sha2::Digest;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One repository: its commit, the revisions that name it, its files.
pub struct FakeRepo {
    pub dataset: bool,
    pub id: String,
    pub commit: String,
    pub revisions: Vec<String>,
    pub files: BTreeMap<String, Vec<u8>>,
}

#[derive(Default)]
pub struct Faults {
    /// The next full download of this file sends half of it and closes the connection.
    pub truncate: Option<String>,
    /// The next full download of this file has its bytes flipped (same length).
    pub corrupt: Option<String>,
}

pub struct HubServer {
    pub url: String,
    pub log: Arc<Mutex<Vec<String>>>,
    pub faults: Arc<Mutex<Faults>>,
    stop: Arc<AtomicBool>,
    port: u16,
}

pub fn etag(name: &str, bytes: &[u8]) -> String {
    if name.ends_with(".safetensors") || name.ends_with(".parquet") {
        hex::encode(sha2::Sha256::digest(bytes))
    } else {
        let mut h = sha1_smol::Sha1::new();
        h.update(format!("blob {}\0", bytes.len()).as_bytes());
        h.update(bytes);
        h.digest().to_string()
    }
}

impl HubServer {
    pub fn start(repos: Vec<FakeRepo>) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let repos = Arc::new(repos);
        let log = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Mutex::new(Faults::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, f2, s2) = (log.clone(), faults.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (repos, log, faults) = (repos.clone(), l2.clone(), f2.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &repos, &log, &faults);
                });
            }
        });
        HubServer {
            url: format!("http://127.0.0.1:{port}"),
            log,
            faults,
            stop,
            port,
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Stops accepting connections (the port then refuses them).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    conn: TcpStream,
    repos: &[FakeRepo],
    log: &Mutex<Vec<String>>,
    faults: &Mutex<Faults>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut range: Option<String> = None;
        let mut content_length = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "range" => range = Some(v.trim().to_string()),
                    "content-length" => content_length = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body)?;
        log.lock().unwrap().push(format!(
            "{method} {path}{}",
            range
                .as_deref()
                .map(|r| format!(" [{r}]"))
                .unwrap_or_default()
        ));
        let path_only = path.split('?').next().unwrap_or("");
        let keep_open = respond(
            &mut conn,
            &method,
            path_only,
            range.as_deref(),
            repos,
            faults,
        )?;
        if !keep_open {
            return Ok(());
        }
    }
}

fn find<'a>(repos: &'a [FakeRepo], dataset: bool, id: &str, rev: &str) -> Option<&'a FakeRepo> {
    repos.iter().find(|r| {
        r.dataset == dataset
            && r.id == id
            && (r.commit == rev || r.revisions.iter().any(|x| x == rev))
    })
}

fn reply(
    conn: &mut TcpStream,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

/// Answers one request; returns whether the connection stays open.
fn respond(
    conn: &mut TcpStream,
    method: &str,
    path: &str,
    range: Option<&str>,
    repos: &[FakeRepo],
    faults: &Mutex<Faults>,
) -> std::io::Result<bool> {
    let not_found = |conn: &mut TcpStream, what: &str| {
        let body = format!("{{\"error\":\"{what} not found\"}}");
        reply(
            conn,
            "404 Not Found",
            &[
                ("Content-Type".into(), "application/json".into()),
                ("X-Error-Code".into(), "RevisionNotFound".into()),
            ],
            body.as_bytes(),
        )
        .map(|_| true)
    };
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/{models|datasets}/{org}/{name}/revision/{rev}
    if segs.first() == Some(&"api") && segs.len() >= 6 && segs[4] == "revision" {
        let dataset = segs[1] == "datasets";
        let id = format!("{}/{}", segs[2], segs[3]);
        let rev = segs[5..].join("/");
        let Some(r) = find(repos, dataset, &id, &rev) else {
            return not_found(conn, "revision");
        };
        let siblings: Vec<serde_json::Value> = r
            .files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body =
            serde_json::json!({ "id": r.id, "sha": r.commit, "siblings": siblings }).to_string();
        reply(
            conn,
            "200 OK",
            &[("Content-Type".into(), "application/json".into())],
            body.as_bytes(),
        )?;
        return Ok(true);
    }
    // /[datasets/]{org}/{name}/resolve/{rev}/{file...}
    let (dataset, segs) = if segs.first() == Some(&"datasets") {
        (true, &segs[1..])
    } else {
        (false, &segs[..])
    };
    if segs.len() >= 5 && segs[2] == "resolve" {
        let id = format!("{}/{}", segs[0], segs[1]);
        let rev = segs[3];
        let file = segs[4..].join("/");
        let Some(r) = find(repos, dataset, &id, rev) else {
            return not_found(conn, "revision");
        };
        let Some(bytes) = r.files.get(&file) else {
            return not_found(conn, "entry");
        };
        let size = bytes.len();
        let start: usize = range
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let end: usize = range
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(size.saturating_sub(1))
            .min(size.saturating_sub(1));
        let headers = vec![
            ("ETag".to_string(), format!("\"{}\"", etag(&file, bytes))),
            ("X-Repo-Commit".to_string(), r.commit.clone()),
            ("Accept-Ranges".to_string(), "bytes".to_string()),
            (
                "Content-Range".to_string(),
                format!("bytes {start}-{end}/{size}"),
            ),
        ];
        let mut body = bytes[start.min(size)..(end + 1).min(size)].to_vec();
        if method == "HEAD" {
            let mut head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n");
            for (k, v) in &headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            conn.write_all(head.as_bytes())?;
            return Ok(true);
        }
        let full = body.len() > 1;
        let mut f = faults.lock().unwrap();
        if full && f.corrupt.as_deref() == Some(file.as_str()) {
            f.corrupt = None;
            body.iter_mut().for_each(|b| *b ^= 0x5a);
        }
        if full && f.truncate.as_deref() == Some(file.as_str()) {
            f.truncate = None;
            let mut head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n",
                body.len()
            );
            for (k, v) in &headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            conn.write_all(head.as_bytes())?;
            conn.write_all(&body[..body.len() / 2])?;
            conn.flush()?;
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return Ok(false);
        }
        drop(f);
        reply(conn, "206 Partial Content", &headers, &body)?;
        return Ok(true);
    }
    not_found(conn, "path")
}
