//! `volt chat`: a conversation with the model in the terminal (the desktop app will take over `volt chat`;
//! this stays as `volt chat --terminal`). Each turn renders the whole history through the chat template;
//! reusing the earlier turns' KV cache is the engine's job (not yet).

use std::io::{BufRead, Write};

use volt_runtime::chat_template::{ChatMessage, ChatTemplate};
use volt_runtime::generate::{self as gen, GenerateOptions};
use volt_runtime::sampler::SamplingParams;
use volt_runtime::tokenizer::Tokenizer;
use volt_runtime::{bail, Result};

use crate::backends;
use crate::cli::Flags;

pub fn chat(args: &[String]) -> Result<()> {
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
        ],
        &["terminal"],
    )?;
    let dir = crate::model_path(flags.str("model"))?;
    let Some(tokenizer) = Tokenizer::from_dir(&dir)? else {
        bail!("{} has no tokenizer.json: chat needs one", dir.display())
    };
    let Some(template) = ChatTemplate::from_dir(&dir)? else {
        bail!("{} has no chat template", dir.display())
    };
    let mut session = backends::open(&dir, flags.str("backend").unwrap_or("auto"), flags.str("dtype"), 1)?;
    let eos = gen::eos_ids(&dir, session.spec(), Some(&tokenizer));
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
        session.describe()
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
        let prompt = tokenizer.encode(&template.render(&history, true)?, false)?;
        let _ = write!(stdout, "volt> ");
        let out = gen::generate(session.as_mut(), 0, &prompt, Some(&tokenizer), &eos, &opts, |piece| {
            let _ = stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush());
        })?;
        let _ = writeln!(stdout);
        eprintln!("[{} tokens, {:.1} tok/s]", out.tokens.len(), out.decode_tok_s);
        history.push(ChatMessage {
            role: "assistant".into(),
            content: out.text.unwrap_or_default().trim().to_string(),
        });
    }
    Ok(())
}
