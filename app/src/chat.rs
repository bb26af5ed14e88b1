//! `volt chat --terminal`: a conversation with the model in the terminal (`volt chat` opens the desktop
//! app). Each turn goes through `ChatModel::reply`, which reuses the earlier turns' cached KV.

use std::io::{BufRead, Write};
use std::time::Instant;

use volt_runtime::chat_template::ChatMessage;
use volt_runtime::engine::Event;
use volt_runtime::generate::GenerateOptions;
use volt_runtime::sampler::SamplingParams;
use volt_runtime::{bail, Result};

use crate::backends::{BackendChoice, Dtypes};
use crate::chat_model::ChatModel;
use crate::cli::Flags;

pub fn terminal(args: &[String]) -> Result<()> {
    let flags = Flags::parse(
        args,
        &[
            "model",
            "system",
            "max-tokens",
            "temperature",
            "seed",
            "backend",
            "dtype",
            "kv-dtype",
        ],
        &["terminal"],
    )?;
    let dir = crate::model_path(flags.str("model"))?;
    let backend = BackendChoice::from_flags(&flags)?;
    let model = ChatModel::open(&dir, backend, &Dtypes::from_flags(&flags)?, 1, |_| {})?;
    let defaults = SamplingParams::default();
    let opts = GenerateOptions {
        max_tokens: flags.get_or("max-tokens", 256)?,
        sampling: SamplingParams {
            temperature: flags.get_or("temperature", defaults.temperature)?,
            seed: flags.get_or("seed", defaults.seed)?,
            ..defaults
        },
        stop_strings: Vec::new(),
        ignore_eos: false,
    };
    opts.sampling.validate()?;
    let mut history: Vec<ChatMessage> = flags
        .str("system")
        .map(|s| {
            vec![ChatMessage {
                role: "system".into(),
                content: s.into(),
            }]
        })
        .unwrap_or_default();
    eprintln!(
        "volt chat on {} ({}); /reset starts over, /exit or Ctrl-D quits",
        dir.display(),
        model.describe
    );
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        let _ = write!(stdout, "\nyou> ");
        let _ = stdout.flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.retain(|m| m.role == "system");
                eprintln!("(conversation cleared)");
                continue;
            }
            text => history.push(ChatMessage {
                role: "user".into(),
                content: text.into(),
            }),
        }
        let _ = write!(stdout, "volt> ");
        let started = Instant::now();
        let mut first_token = None;
        let (_, events) = model.reply(&history, "", opts.clone())?;
        let mut done = None;
        for event in events {
            match event {
                Event::Token { text, .. } | Event::Text(text) => {
                    first_token.get_or_insert_with(Instant::now);
                    let _ = stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush());
                }
                Event::Done(c) => done = Some(c),
                Event::Error(e) => bail!("{e}"),
            }
        }
        let Some(done) = done else { bail!("the engine stopped") };
        let _ = writeln!(stdout);
        let decode_secs = first_token.map_or(0.0, |t| t.elapsed().as_secs_f64());
        eprintln!(
            "[{} tokens, {:.1} tok/s; {} of {} prompt tokens from the cache; {:.2}s]",
            done.tokens.len(),
            done.tokens.len().saturating_sub(1) as f64 / decode_secs.max(1e-9),
            done.cached_tokens,
            done.prompt_tokens,
            started.elapsed().as_secs_f64()
        );
        history.push(ChatMessage {
            role: "assistant".into(),
            content: done.text.unwrap_or_default().trim().to_string(),
        });
    }
    Ok(())
}
