//! `volt logits` and `volt generate`.

use std::io::Write;
use std::path::Path;

use serde_json::json;
use volt_runtime::chat_template::{ChatMessage, ChatTemplate};
use volt_runtime::generate::{self as gen, GenerateOptions};
use volt_runtime::sampler::SamplingParams;
use volt_runtime::tokenizer::Tokenizer;
use volt_runtime::{bail, Result};

use crate::backends;
use crate::cli::{parse_ids, Flags};

pub fn logits(args: &[String]) -> Result<()> {
    let flags = Flags::parse(args, &["model", "ids", "backend", "dtype", "kv-dtype"], &[])?;
    let Some(ids) = flags.str("ids") else {
        bail!("--ids is required (e.g. --ids 3,17,42)")
    };
    let ids = parse_ids(ids)?;
    let dir = crate::model_path(flags.str("model"))?;
    let mut session = backends::open(&flags, &dir, 1, None)?;
    let rows = gen::prompt_logits(session.as_mut(), 0, &ids)?;
    println!("{}", json!({ "logits": rows }));
    Ok(())
}

pub fn generate(args: &[String]) -> Result<()> {
    let flags = Flags::parse(
        args,
        &[
            "model",
            "prompt",
            "ids",
            "max-tokens",
            "temperature",
            "top-k",
            "top-p",
            "min-p",
            "repeat-penalty",
            "seed",
            "stop",
            "system",
            "backend",
            "dtype",
            "kv-dtype",
        ],
        &["chat", "json", "ignore-eos"],
    )?;
    let dir = crate::model_path(flags.str("model"))?;
    let tokenizer = Tokenizer::open(&dir)?;
    let prompt = prompt_ids(&flags, &dir, tokenizer.as_ref())?;
    let defaults = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: flags.get_or("temperature", defaults.temperature)?,
        top_k: flags.get_or("top-k", defaults.top_k)?,
        top_p: flags.get_or("top-p", defaults.top_p)?,
        min_p: flags.get_or("min-p", defaults.min_p)?,
        repeat_penalty: flags.get_or("repeat-penalty", defaults.repeat_penalty)?,
        seed: flags.get_or("seed", defaults.seed)?,
        ..defaults
    };
    sampling.validate()?;
    let opts = GenerateOptions {
        max_tokens: flags.get_or("max-tokens", 128)?,
        sampling,
        stop_strings: flags.str("stop").map(|s| vec![s.to_string()]).unwrap_or_default(),
        ignore_eos: flags.has("ignore-eos"),
    };
    let mut session = backends::open(&flags, &dir, 1, None)?;
    let eos = gen::eos_ids(&dir, session.spec(), tokenizer.as_ref());
    let mut stdout = std::io::stdout().lock();
    let mut ended_with_newline = true;
    let out = gen::generate(session.as_mut(), 0, &prompt, tokenizer.as_ref(), &eos, &opts, |piece| {
        // A closed pipe (`| head`) must not abort generation with a panic; the text is simply dropped.
        let _ = stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush());
        ended_with_newline = piece.ends_with('\n');
    })?;
    if flags.has("json") {
        if !ended_with_newline {
            let _ = writeln!(stdout);
        }
        let line = json!({
            "tokens": out.tokens,
            "text": out.text,
            "prompt_tokens": out.prompt_tokens,
            "prefill_tok_s": out.prefill_tok_s,
            "decode_tok_s": out.decode_tok_s,
        });
        let _ = writeln!(stdout, "{line}");
    } else {
        if tokenizer.is_none() {
            let ids: Vec<String> = out.tokens.iter().map(u32::to_string).collect();
            let _ = write!(stdout, "{}", ids.join(","));
        }
        let _ = writeln!(stdout);
        eprintln!(
            "[{} prompt tokens, {:.1} tok/s prefill; {} generated, {:.1} tok/s decode; {}]",
            out.prompt_tokens,
            out.prefill_tok_s,
            out.tokens.len(),
            out.decode_tok_s,
            session.describe()
        );
    }
    Ok(())
}

/// The prompt as ids: `--ids` as given, or `--prompt` through the tokenizer (and the chat template with
/// `--chat`).
fn prompt_ids(flags: &Flags, dir: &Path, tokenizer: Option<&Tokenizer>) -> Result<Vec<u32>> {
    match (flags.str("prompt"), flags.str("ids")) {
        (Some(_), Some(_)) => bail!("give either --prompt or --ids, not both"),
        (None, None) => bail!("--prompt TEXT or --ids LIST is required"),
        (None, Some(ids)) => {
            if flags.has("chat") {
                bail!("--chat needs --prompt (a chat template renders text)");
            }
            parse_ids(ids)
        }
        (Some(text), None) => {
            let Some(tok) = tokenizer else {
                bail!("{} has no tokenizer.json: use --ids instead of --prompt", dir.display());
            };
            if text.is_empty() {
                bail!("empty input: --prompt is empty");
            }
            if flags.has("chat") {
                let Some(template) = ChatTemplate::open(dir)? else {
                    bail!(
                        "{} has no chat template (chat_template.jinja or tokenizer_config.json)",
                        dir.display()
                    );
                };
                let mut messages = Vec::new();
                if let Some(system) = flags.str("system") {
                    messages.push(ChatMessage {
                        role: "system".into(),
                        content: system.into(),
                    });
                }
                messages.push(ChatMessage {
                    role: "user".into(),
                    content: text.into(),
                });
                // The rendered template carries its own special tokens.
                tok.encode(&template.render(&messages, true)?, false)
            } else {
                tok.encode(text, true)
            }
        }
    }
}
