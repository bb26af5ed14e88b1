//! `volt serve` over real sockets: the OpenAI endpoints, 16 concurrent clients, streaming, 400s for bad
//! requests with the server staying up, and a client that disconnects mid-stream having its sequence freed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running `volt serve` on the shipped model, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(slots: usize) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_volt"))
            .args([
                "serve",
                "--port",
                "0",
                "--backend",
                "cpu",
                "--slots",
                &slots.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // "volt serve: http://127.0.0.1:PORT/v1 (...)"
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split("/v1").next())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        Server { child, addr }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s
    }

    /// One HTTP/1.1 request; returns the status and the (de-chunked) body.
    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = self.connect();
        send(&mut s, method, path, body);
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_string()
        };
        (status, body)
    }

    fn json(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (status, body) = self.request(method, path, body);
        (
            status,
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(s: &mut TcpStream, method: &str, path: &str, body: &str) {
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// The JSON payloads of a server-sent event stream, and whether it ended with `data: [DONE]`.
fn sse_payloads(body: &str) -> (Vec<Value>, bool) {
    let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    let done = data.last() == Some(&"[DONE]");
    let payloads = data
        .iter()
        .filter(|d| **d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    (payloads, done)
}

fn chat(content: &str, max_tokens: usize, stream: bool) -> String {
    json!({
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
        "stream_options": {"include_usage": true},
        "seed": 7,
    })
    .to_string()
}

#[test]
fn sixteen_concurrent_clients_all_complete_and_streaming_works() {
    let server = Server::start(4);
    let (status, models) = server.json("GET", "/v1/models", "");
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "volt-tiny");

    let results: Vec<(u16, String, bool)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let server = &server;
                scope.spawn(move || {
                    let stream = i % 2 == 1;
                    let (status, body) = server.request(
                        "POST",
                        "/v1/chat/completions",
                        &chat(&format!("Tell me of ball {i}."), 12, stream),
                    );
                    (status, body, stream)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (status, body, stream)) in results.iter().enumerate() {
        assert_eq!(*status, 200, "client {i}: {body}");
        if *stream {
            let (chunks, done) = sse_payloads(body);
            assert!(done, "client {i}: the stream must end with data: [DONE]");
            assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
            let usage = &chunks.last().unwrap()["usage"];
            let text: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                .collect();
            assert!(usage["completion_tokens"].as_u64().unwrap() <= 12);
            assert!(!text.is_empty(), "client {i}: no streamed text");
        } else {
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["object"], "chat.completion");
            assert!(v["choices"][0]["message"]["content"].is_string());
            assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 12);
            assert!(["stop", "length"].contains(&v["choices"][0]["finish_reason"].as_str().unwrap()));
        }
    }
    let (_, health) = server.json("GET", "/health", "");
    assert_eq!(health["completed"], 16, "{health}");

    // A text completion at temperature 0 is deterministic, and the repeat comes from the cache.
    let body = json!({"prompt": "It is a truth universally", "max_tokens": 10, "temperature": 0}).to_string();
    let (_, a) = server.json("POST", "/v1/completions", &body);
    let (_, b) = server.json("POST", "/v1/completions", &body);
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    assert!(
        b["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0,
        "{b}"
    );
}

#[test]
fn malformed_requests_get_a_400_and_the_server_stays_up() {
    let server = Server::start(2);
    let bad = [
        ("/v1/chat/completions", "{\"messages\": [", "not valid JSON"),
        ("/v1/chat/completions", "[1, 2]", "JSON object"),
        ("/v1/chat/completions", "{\"messages\": []}", "`messages` is empty"),
        (
            "/v1/chat/completions",
            "{\"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}]}",
            "role",
        ),
        (
            "/v1/chat/completions",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": \"hot\"}",
            "`temperature` must be a number",
        ),
        (
            "/v1/chat/completions",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"top_p\": 3}",
            "top_p",
        ),
        ("/v1/completions", "{\"max_tokens\": 3}", "`prompt` is required"),
        ("/v1/completions", "{\"prompt\": \"hi\", \"stop\": 5}", "`stop`"),
    ];
    for (path, body, needle) in bad {
        let (status, v) = server.json("POST", path, body);
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let (status, _) = server.json("GET", "/v1/nothing", "");
    assert_eq!(status, 404);
    let (status, v) = server.json("POST", "/v1/chat/completions", &chat("Still there?", 4, false));
    assert_eq!(status, 200, "{v}");
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_its_sequence() {
    let server = Server::start(1);
    let body = json!({
        "messages": [{"role": "user", "content": "Talk for a long time."}],
        "max_tokens": 3000,
        "ignore_eos": true,
        "stream": true,
    })
    .to_string();
    let mut s = server.connect();
    send(&mut s, "POST", "/v1/chat/completions", &body);
    // Read until a few tokens have streamed, then hang up.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("\"content\"").count() < 4 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(s);
    // The engine notices at its next token and frees the slot; nothing else is running.
    let started = Instant::now();
    let health = loop {
        let (_, h) = server.json("GET", "/health", "");
        if h["cancelled"] == 1 || started.elapsed() > Duration::from_secs(60) {
            break h;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(health["cancelled"], 1, "{health}");
    assert_eq!(health["running"], 0, "{health}");
    assert_eq!(health["completed"], 0, "{health}");
    // The one slot serves the next request.
    let (status, v) = server.json("POST", "/v1/chat/completions", &chat("And now?", 4, false));
    assert_eq!(status, 200, "{v}");
}
