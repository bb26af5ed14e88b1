//! `volt`: the command line and the desktop chat app on the shared runtime.

mod bench;
mod check;
mod check_cuda;
mod eval;
mod generate;
mod info;
mod serve;

use std::process::ExitCode;

// The commands name these as `crate::…`; they live in the library so the app's tests can reach them.
use volt_app::{backends, chat, cli, model_path};

use volt_runtime::{bail, Result};

const USAGE: &str = "\
volt: Mixture-of-Experts inference on the CPU, any GPU (wgpu) and Hopper (CUDA FP8)

usage: volt <command> [flags]

commands:
  chat       the desktop chat app (also `volt` alone; --terminal: chat in the terminal)
  generate   generate text or tokens from a prompt (streams to stdout)
  logits     print the logits of every position of --ids as JSON
  info       parameters, layer layout and KV-cache size of a model or config.json
  perplexity perplexity of a text file (strided windows past the context)
  bench      prefill/decode speed, time to first token, memory, decode bandwidth vs the device's copy bandwidth
  check      run every GPU kernel against the CPU reference on every adapter (or --compile-only)
  route-stats per-layer expert load f_i, router probability P_i and the balance terms L_ST, L_EP, L_PEP
  serve      OpenAI-compatible HTTP server (chat and text completions, streaming) with continuous batching

run `volt <command> --help` for a command's flags";

fn main() -> ExitCode {
    // Mesa's Vulkan drivers probe Wayland when wgpu starts and libwayland prints an error line to stderr if
    // XDG_RUNTIME_DIR is unset (headless machines, CI). Any directory silences it; set before any thread.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    // A panic is a bug, but the user still gets one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned());
        eprintln!(
            "error: internal error: {} ({})",
            msg.unwrap_or_default(),
            info.location().map(|l| l.to_string()).unwrap_or_default()
        );
    }));
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some(command) = args.first() else {
        // `volt` alone opens the app; on a machine with no display it says what the commands are.
        if volt_app::gui::display_available() {
            return volt_app::gui::run(&[]);
        }
        println!("{USAGE}");
        return Ok(());
    };
    let rest = &args[1..];
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", help(command)?);
        return Ok(());
    }
    match command.as_str() {
        "chat" if rest.iter().any(|a| a == "--terminal") => chat::terminal(rest),
        "chat" => volt_app::gui::run(rest),
        "generate" => generate::generate(rest),
        "logits" => generate::logits(rest),
        "info" => info::info(rest),
        "perplexity" => eval::perplexity(rest),
        "route-stats" => eval::route_stats(rest),
        "check" => check::check(rest),
        "bench" => bench::bench(rest),
        "serve" => serve::serve(rest),
        "--help" | "-h" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        "--version" | "-V" => {
            println!("volt {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => {
            bail!("unknown command `{other}` (commands: chat, generate, logits, info, perplexity, route-stats, check, bench, serve)")
        }
    }
}

fn help(command: &str) -> Result<&'static str> {
    Ok(match command {
        "chat" => "volt chat [--model DIR] [--backend B] [--dtype D] [--kv-dtype K]   (the desktop app)
volt chat --terminal [--model DIR] [--system TEXT] [--max-tokens N] [--temperature T] [--seed S] [--backend B] [--dtype D]
                     [--kv-dtype K]",
        "generate" => "volt generate [--model DIR] (--prompt TEXT | --ids LIST) [--max-tokens N] [--temperature T] [--top-k K]
              [--top-p P] [--min-p P] [--repeat-penalty R] [--seed S] [--stop TEXT] [--chat] [--system TEXT]
              [--ignore-eos] [--backend auto|cpu|wgpu|cuda] [--dtype f32|f16|bf16|fp8] [--kv-dtype f32|f16|fp8] [--json]",
        "logits" => "volt logits [--model DIR] --ids 3,17,42 [--backend auto|cpu|wgpu|cuda] [--dtype f32|f16|bf16|fp8] [--kv-dtype f32|f16|fp8]",
        "info" => "volt info [--model DIR|FILE.gguf|config.json] [--context N] [--dtype D] [--kv-dtype f16|f32|fp8] [--backend B] [--json]",
        "check" => "volt check [--backend wgpu|cuda] [--compile-only]",
        "bench" => "volt bench [--model DIR] [--backend B] [--dtype D] [--kv-dtype K] [--prompt-tokens N] [--gen-tokens M] [--batch B] [--json]",
        "perplexity" => "volt perplexity [--model DIR] --file TEXT [--context N] [--stride S] [--backend B] [--dtype D] [--kv-dtype K] [--json]",
        "route-stats" => "volt route-stats [--model DIR] --file TEXT [--ep-groups G] [--partitions P] [--context N] [--backend B] [--dtype D] [--kv-dtype K] [--json]",
        "serve" => "volt serve [--model DIR] [--host 127.0.0.1] [--port 8080] [--slots N] [--kv-pool TOKENS] [--backend B] [--dtype D] [--kv-dtype K]",
        other => bail!("unknown command `{other}` (commands: chat, generate, logits, info, perplexity, route-stats, check, bench, serve)"),
    })
}
