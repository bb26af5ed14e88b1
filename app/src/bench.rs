//! `volt bench`: prefill and decode speed, time to first token, memory, and decode's achieved bytes/s
//! against the copy bandwidth measured on the same device (the roofline fraction: decode is memory-bound).

use std::time::Instant;

use serde_json::json;
use volt_runtime::dtype::Precision;
use volt_runtime::generate::prefill;
use volt_runtime::sampler::{Sampler, SamplingParams};
use volt_runtime::session::Session;
use volt_runtime::spec::ModelSpec;
use volt_runtime::step::Step;
use volt_runtime::{bail, Result};

use crate::backends::{self, Dtypes};
use crate::cli::Flags;

pub fn bench(args: &[String]) -> Result<()> {
    let flags = Flags::parse(
        args,
        &[
            "model",
            "backend",
            "dtype",
            "kv-dtype",
            "prompt-tokens",
            "gen-tokens",
            "batch",
        ],
        &["json"],
    )?;
    let dir = crate::model_path(flags.str("model"))?;
    let prompt_tokens: usize = flags.get_or("prompt-tokens", 128)?;
    let gen_tokens: usize = flags.get_or("gen-tokens", 32)?;
    let batch: usize = flags.get_or("batch", 1)?;
    if prompt_tokens == 0 || gen_tokens == 0 || batch == 0 {
        bail!("--prompt-tokens, --gen-tokens and --batch must be at least 1");
    }
    let mut session = backends::open(&flags, &dir, batch, None)?;
    let spec = session.spec().clone();
    if prompt_tokens + gen_tokens > spec.max_position_embeddings {
        bail!(
            "{prompt_tokens} + {gen_tokens} tokens exceed the model's context of {}",
            spec.max_position_embeddings
        );
    }
    let dtype = Dtypes::from_flags(&flags)?.weights(&dir)?;
    // Deterministic prompt ids spread over the vocabulary.
    let prompt: Vec<u32> = (0..prompt_tokens)
        .map(|i| ((i * 2654435761) % spec.vocab_size) as u32)
        .collect();
    let greedy = Sampler::new(SamplingParams::greedy()).pick(&[]);

    // Warm-up: builds pipelines and buffer pools so timings measure steady state.
    session.forward_pick(
        &Step::single(0, &prompt[..prompt.len().min(8)], 0),
        &[0],
        &[greedy.clone()],
    )?;
    session.kv_mut().reset(0);

    let mut next = Vec::with_capacity(batch);
    let started = Instant::now();
    let mut ttft = 0.0;
    for slot in 0..batch {
        session.kv_mut().reset(slot);
        next.push(prefill(session.as_mut(), slot, &prompt, 0, greedy.clone())?);
        if slot == 0 {
            ttft = started.elapsed().as_secs_f64();
        }
    }
    let prefill_secs = started.elapsed().as_secs_f64();

    // Decode: one token per sequence per step, all sequences in one step; only the ids are read back.
    let rows: Vec<usize> = (0..batch).collect();
    let picks = vec![greedy; batch];
    let started = Instant::now();
    for step in 0..gen_tokens.saturating_sub(1) {
        let pos = prompt_tokens + step;
        let s = Step {
            tokens: next.clone(),
            positions: vec![pos; batch],
            seqs: rows.clone(),
        };
        next = session.forward_pick(&s, &rows, &picks)?;
    }
    let decode_secs = started.elapsed().as_secs_f64();
    let decode_tokens = batch * gen_tokens.saturating_sub(1);
    let decode_tok_s = if decode_secs > 0.0 {
        decode_tokens as f64 / decode_secs
    } else {
        0.0
    };
    let step_s = decode_tok_s / batch as f64;
    let bytes_per_step = decode_bytes_per_step(&spec, session.as_ref(), batch, prompt_tokens + gen_tokens / 2);
    let copy = session.copy_bandwidth()?;
    let achieved = bytes_per_step * step_s;
    let report = json!({
        "backend": session.describe(),
        "family": spec.family,
        "dtype": dtype.name(),
        "batch": batch,
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "prefill_tok_s": (batch * prompt_tokens) as f64 / prefill_secs,
        "ttft_ms": ttft * 1e3,
        "decode_tok_s": decode_tok_s,
        "decode_bytes_per_step": bytes_per_step,
        "decode_bytes_s": achieved,
        "copy_bandwidth_bytes_s": copy,
        "roofline_fraction": achieved / copy,
        "memory_bytes": session.allocated_bytes(),
    });
    if flags.has("json") {
        println!("{report}");
    } else {
        println!("{}", session.describe());
        println!(
            "prefill      {:>10.1} tok/s  ({} x {prompt_tokens} tokens; first token after {:.1} ms)",
            report["prefill_tok_s"].as_f64().unwrap_or(0.0),
            batch,
            ttft * 1e3
        );
        println!(
            "decode       {:>10.1} tok/s  (batch {batch}, {} steps)",
            decode_tok_s,
            gen_tokens.saturating_sub(1)
        );
        println!(
            "decode reads {:>10.2} GB/s of weights and KV; copy bandwidth {:.2} GB/s (read + write) -> {:.1}% of it",
            achieved / 1e9,
            copy / 1e9,
            achieved / copy * 100.0
        );
        println!(
            "memory       {:>10.1} MiB held by the backend",
            session.allocated_bytes() as f64 / 1048576.0
        );
    }
    Ok(())
}

/// Bytes one decode step must read: every weight a token touches (attention, the routed experts it may
/// use, shared experts, norms, the LM head; one embedding row), once per step whatever the batch, plus
/// each sequence's visible KV at `context` tokens in the session's KV dtype (a layer that reuses another's KV
/// reads it again). The embedding and head are counted at their own precision (bf16 under fp8).
fn decode_bytes_per_step(spec: &ModelSpec, session: &dyn Session, batch: usize, context: usize) -> f64 {
    let (_, active) = spec.parameter_counts();
    let table = (spec.vocab_size * spec.hidden_size) as u64;
    // `active` counts the embedding and, untied, the head; a step reads the head and one embedding row.
    let counted = if spec.tie_word_embeddings { table } else { 2 * table };
    let bulk = (active - counted) as f64 * session.bytes_per_weight(Precision::Storage);
    let tables = (table + spec.hidden_size as u64) as f64 * session.bytes_per_weight(Precision::Table);
    let kv_bytes = session.kv_dtype().bytes();
    let kv: usize = spec
        .layers
        .iter()
        .map(|l| 2 * l.attn.kv_dim() * l.attn.window().map_or(context, |w| w.min(context)) * kv_bytes)
        .sum();
    bulk + tables + (batch * kv) as f64
}
