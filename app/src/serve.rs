//! `volt serve`: an OpenAI-compatible HTTP server over the engine (`GET /v1/models`, `POST
//! /v1/chat/completions`, `POST /v1/completions`, streaming as server-sent events ending with
//! `data: [DONE]`). Every request is one engine request: concurrent clients share the batch, and a chat whose
//! earlier turns are still cached prefills only its new message. A malformed request gets a 400 with an
//! OpenAI-style error body; a client that disconnects mid-stream has its sequence cancelled.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use volt_runtime::chat_template::{ChatMessage, ChatTemplate};
use volt_runtime::engine::{Completion, Engine, Event, Request};
use volt_runtime::generate::{self as gen, GenerateOptions};
use volt_runtime::kv::KV_PAGE;
use volt_runtime::sampler::SamplingParams;
use volt_runtime::tokenizer::Tokenizer;
use volt_runtime::{bail, Error, Result};

use crate::backends;
use crate::cli::Flags;

struct Server {
    engine: Engine,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    model: String,
    context: usize,
    vocab: usize,
}

pub fn serve(args: &[String]) -> Result<()> {
    let flags = Flags::parse(
        args,
        &[
            "model", "host", "port", "backend", "dtype", "kv-dtype", "slots", "kv-pool",
        ],
        &[],
    )?;
    let dir = crate::model_path(flags.str("model"))?;
    let Some(tokenizer) = Tokenizer::open(&dir)? else {
        bail!("{} has no tokenizer.json: the server takes text", dir.display())
    };
    let template = ChatTemplate::open(&dir)?;
    let host = flags.str("host").unwrap_or("127.0.0.1").to_string();
    let port: u16 = flags.get_or("port", 8080)?;
    let slots: usize = flags.get_or("slots", 4)?;
    if slots == 0 {
        bail!("--slots must be at least 1");
    }
    let pool_tokens: Option<usize> = flags.get("kv-pool")?;
    if pool_tokens == Some(0) {
        bail!("--kv-pool must be at least 1 (it is rounded up to pages of {KV_PAGE} positions)");
    }
    let session = backends::open(&flags, &dir, slots, pool_tokens)?;
    let pool = session.kv().pages().pages() * KV_PAGE;
    let eos = gen::eos_ids(&dir, session.spec(), Some(&tokenizer));
    let describe = session.describe();
    let (context, vocab) = (session.context(), session.spec().vocab_size);
    let server = Arc::new(Server {
        engine: Engine::start(session, Some(tokenizer.clone()), eos),
        tokenizer,
        template,
        model: dir
            .file_name()
            .map_or("volt".into(), |n| n.to_string_lossy().into_owned()),
        context,
        vocab,
    });
    let app = Router::new()
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .with_state(server.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::msg(format!("starting the HTTP runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host.as_str(), port))
            .await
            .map_err(|e| Error::msg(format!("cannot listen on {host}:{port}: {e}")))?;
        let addr = listener.local_addr().map_err(|e| Error::msg(e.to_string()))?;
        println!(
            "volt serve: http://{addr}/v1 ({}, {describe}, {slots} slots, context {}, KV pool {pool} tokens)",
            server.model, server.context
        );
        axum::serve(listener, app)
            .await
            .map_err(|e| Error::msg(format!("HTTP server: {e}")))
    })
}

/// An OpenAI-style error response.
fn error(status: StatusCode, message: String) -> Response {
    let kind = if status == StatusCode::NOT_FOUND {
        "not_found_error"
    } else if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn json_response(v: Value) -> Response {
    ([("content-type", "application/json")], v.to_string()).into_response()
}

/// Liveness and load: running and queued requests, and how many completed or were cancelled (a client that
/// disconnects mid-stream counts as cancelled once its sequence is freed).
async fn health(State(s): State<Arc<Server>>) -> Response {
    let st = s.engine.stats();
    json_response(json!({
        "status": "ok",
        "running": st.running,
        "queued": st.queued,
        "completed": st.completed,
        "cancelled": st.cancelled,
        "preempted": st.preempted,
        "prepared_ahead": st.prepared_ahead,
    }))
}

async fn models(State(s): State<Arc<Server>>) -> Response {
    json_response(json!({
        "object": "list",
        "data": [{"id": s.model, "object": "model", "created": 0, "owned_by": "volt"}],
    }))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

async fn chat_completions(State(s): State<Arc<Server>>, body: Bytes) -> Response {
    respond(s, Kind::Chat, &body).await
}

async fn completions(State(s): State<Arc<Server>>, body: Bytes) -> Response {
    respond(s, Kind::Text, &body).await
}

/// What a request body asks for.
struct Ask {
    prompt: Vec<u32>,
    options: GenerateOptions,
    stream: bool,
    include_usage: bool,
}

async fn respond(s: Arc<Server>, kind: Kind, body: &[u8]) -> Response {
    let ask = match serde_json::from_slice::<Value>(body) {
        Err(e) => Err(Error::msg(format!("the body is not valid JSON: {e}"))),
        Ok(v) => parse(&s, kind, &v),
    };
    let ask = match ask {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let id = format!(
        "{}-{}",
        if kind == Kind::Chat { "chatcmpl" } else { "cmpl" },
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (request_id, events) = s.engine.submit(Request {
        prompt: ask.prompt,
        options: ask.options,
    });
    let head = Head {
        id,
        created,
        model: s.model.clone(),
        kind,
    };
    if !ask.stream {
        let done = tokio::task::spawn_blocking(move || {
            for e in events {
                match e {
                    Event::Done(c) => return Ok(c),
                    Event::Error(e) => return Err(e),
                    Event::Token { .. } | Event::Text(_) => {}
                }
            }
            Err("the engine stopped".to_string())
        })
        .await;
        return match done {
            Ok(Ok(c)) => json_response(head.complete(&c)),
            Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
    }
    // Events cross from the engine's channel to the response stream on a blocking thread; when the client
    // has gone the response stream is dropped, the next send fails, and the request is cancelled.
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    let server = s.clone();
    tokio::task::spawn_blocking(move || {
        let send = |data: String| tx.blocking_send(data).is_ok();
        if !send(head.chunk(Some(""), None).to_string()) {
            server.engine.cancel(request_id);
            return;
        }
        for e in events {
            let (data, last) = match e {
                Event::Token { text, .. } | Event::Text(text) if text.is_empty() => continue,
                Event::Token { text, .. } | Event::Text(text) => (head.chunk(Some(&text), None).to_string(), false),
                Event::Done(c) => {
                    let mut data = head.chunk(None, Some(c.finish.as_str())).to_string();
                    if ask.include_usage {
                        data += "\n\n";
                        data += &head.usage_chunk(&c).to_string();
                    }
                    (data, true)
                }
                Event::Error(e) => (
                    json!({"error": {"message": e, "type": "server_error"}}).to_string(),
                    true,
                ),
            };
            if !send(data) {
                server.engine.cancel(request_id);
                return;
            }
            if last {
                send("[DONE]".into());
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((data, rx))
    });
    // A usage chunk travels with the final one: split them into their own events.
    let events = futures_util::StreamExt::flat_map(stream, |data: String| {
        let parts: Vec<std::result::Result<SseEvent, Infallible>> =
            data.split("\n\n").map(|d| Ok(SseEvent::default().data(d))).collect();
        futures_util::stream::iter(parts)
    });
    Sse::new(events).into_response()
}

/// Fields shared by every response object of one request.
struct Head {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Head {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn usage(c: &Completion) -> Value {
        json!({
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.tokens.len(),
            "total_tokens": c.prompt_tokens + c.tokens.len(),
            "prompt_tokens_details": {"cached_tokens": c.cached_tokens},
        })
    }

    fn complete(&self, c: &Completion) -> Value {
        let text = c.text.clone().unwrap_or_default();
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": c.finish.as_str(),
            }),
            Kind::Text => json!({"index": 0, "text": text, "finish_reason": c.finish.as_str()}),
        };
        json!({
            "id": self.id, "object": self.object(false), "created": self.created, "model": self.model,
            "choices": [choice], "usage": Self::usage(c),
        })
    }

    /// A streamed piece of text, or (with `finish`) the closing chunk.
    fn chunk(&self, text: Option<&str>, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let delta = match text {
                    Some("") => json!({"role": "assistant", "content": ""}),
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!({"index": 0, "delta": delta, "finish_reason": finish})
            }
            Kind::Text => json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish}),
        };
        json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
            "choices": [choice],
        })
    }

    fn usage_chunk(&self, c: &Completion) -> Value {
        json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
            "choices": [], "usage": Self::usage(c),
        })
    }
}

/// Reads a request body: the prompt (messages through the chat template, or text) and the sampling fields
/// OpenAI and llama.cpp's server take. Every wrong type or value is an error naming the field.
fn parse(s: &Server, kind: Kind, v: &Value) -> Result<Ask> {
    if !v.is_object() {
        bail!("the body must be a JSON object");
    }
    let text = match kind {
        Kind::Chat => {
            let Some(template) = s.template.as_ref() else {
                bail!("this model has no chat template: use /v1/completions");
            };
            let messages = messages(v)?;
            template.render(&messages, true)?
        }
        Kind::Text => match &v["prompt"] {
            Value::String(p) => p.clone(),
            Value::Array(a) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
            Value::Null => bail!("`prompt` is required"),
            _ => bail!("`prompt` must be a string"),
        },
    };
    // A chat template writes its own special tokens; a plain prompt gets the tokenizer's.
    let prompt = s.tokenizer.encode(&text, kind == Kind::Text)?;
    let defaults = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: number(v, "temperature")?.map_or(defaults.temperature, |x| x as f32),
        top_p: number(v, "top_p")?.map_or(defaults.top_p, |x| x as f32),
        top_k: count(v, "top_k")?.unwrap_or(defaults.top_k),
        min_p: number(v, "min_p")?.map_or(defaults.min_p, |x| x as f32),
        repeat_penalty: number(v, "repeat_penalty")?.map_or(defaults.repeat_penalty, |x| x as f32),
        seed: count(v, "seed")?.map_or(defaults.seed, |x| x as u64),
        ..defaults
    };
    let max_tokens = match (count(v, "max_tokens")?, count(v, "max_completion_tokens")?) {
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => 256,
    };
    let stop_strings = match &v["stop"] {
        Value::Null => Vec::new(),
        Value::String(s) => vec![s.clone()],
        Value::Array(a) if a.iter().all(Value::is_string) => {
            a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()
        }
        _ => bail!("`stop` must be a string or an array of strings"),
    };
    let options = GenerateOptions {
        max_tokens,
        sampling,
        stop_strings,
        ignore_eos: flag(v, "ignore_eos")?,
    };
    gen::check_request(&prompt, &options, s.vocab, s.context)?;
    Ok(Ask {
        prompt,
        options,
        stream: flag(v, "stream")?,
        include_usage: v["stream_options"]["include_usage"].as_bool().unwrap_or(false),
    })
}

fn messages(v: &Value) -> Result<Vec<ChatMessage>> {
    let Some(list) = v["messages"].as_array() else {
        bail!("`messages` must be an array of {{\"role\", \"content\"}} objects");
    };
    if list.is_empty() {
        bail!("`messages` is empty");
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m["role"].as_str() {
                Some(r @ ("system" | "developer" | "user" | "assistant")) => r,
                _ => bail!("`messages[{i}].role` must be system, user or assistant"),
            };
            // Content is a string, or an array of text parts.
            let content = match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                        (Some("text"), Some(t)) => Ok(t),
                        _ => bail!("`messages[{i}].content` parts must be {{\"type\": \"text\", \"text\": ...}}"),
                    })
                    .collect::<Result<Vec<&str>>>()?
                    .concat(),
                _ => bail!("`messages[{i}].content` must be a string"),
            };
            let role = if role == "developer" { "system" } else { role };
            Ok(ChatMessage {
                role: role.into(),
                content,
            })
        })
        .collect()
}

fn number(v: &Value, key: &str) -> Result<Option<f64>> {
    match &v[key] {
        Value::Null => Ok(None),
        x => match x.as_f64() {
            Some(n) => Ok(Some(n)),
            None => bail!("`{key}` must be a number"),
        },
    }
}

fn count(v: &Value, key: &str) -> Result<Option<usize>> {
    match &v[key] {
        Value::Null => Ok(None),
        x => match x.as_u64() {
            Some(n) => Ok(Some(n as usize)),
            None => bail!("`{key}` must be a non-negative integer"),
        },
    }
}

fn flag(v: &Value, key: &str) -> Result<bool> {
    match &v[key] {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        _ => bail!("`{key}` must be true or false"),
    }
}
