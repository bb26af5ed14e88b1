//! One sequence on one slot: prompt logits, prefill, and the generation loop (prefill, then one token per
//! step, streaming text as it becomes final). The engine (`engine.rs`) runs many sequences at once with the
//! same `SequenceOutput` and `Completion`.

use std::time::Instant;

use crate::bail;
use crate::error::Result;
use crate::sampler::{Pick, Sampler, SamplingParams, StopMatcher};
use crate::session::Session;
use crate::step::Step;
use crate::tokenizer::{TextStream, Tokenizer};

/// Logits at every position of `ids`, [len][vocab], from a fresh sequence in `slot`.
pub fn prompt_logits(session: &mut dyn Session, slot: usize, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
    if ids.is_empty() {
        bail!("empty input: no token ids");
    }
    session.kv_mut().reset(slot);
    let vocab = session.spec().vocab_size;
    let mut rows = Vec::with_capacity(ids.len());
    for step in Step::chunks(slot, ids, 0) {
        let all: Vec<usize> = (0..step.len()).collect();
        let logits = session.forward(&step, &all)?;
        rows.extend(logits.chunks_exact(vocab).map(<[f32]>::to_vec));
    }
    Ok(rows)
}

/// Feeds `tokens` to `slot` from position `start` (where its cache ends) in steps of at most
/// `MAX_STEP_TOKENS`, and returns the token `pick` chooses from the last one's logits. Only the last step
/// computes logits.
pub fn prefill(session: &mut dyn Session, slot: usize, tokens: &[u32], start: usize, pick: Pick) -> Result<u32> {
    let steps: Vec<Step> = Step::chunks(slot, tokens, start).collect();
    let Some((last, rest)) = steps.split_last() else {
        bail!("empty input: no tokens to prefill");
    };
    for step in rest {
        session.forward(step, &[step.len() - 1])?;
    }
    Ok(session.forward_pick(last, &[last.len() - 1], &[pick])?[0])
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_strings: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks, golden tests).
    pub ignore_eos: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// An end-of-sequence token or a stop string.
    Stop,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
        }
    }
}

/// What a finished sequence produced: by `generate`, or by the engine for each request.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub tokens: Vec<u32>,
    /// The generated text; None without a tokenizer.
    pub text: Option<String>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens continued from the cache instead of being prefilled.
    pub cached_tokens: usize,
    /// Prompt tokens prefilled per second, until the first token was chosen.
    pub prefill_tok_s: f64,
    /// Tokens per second after the first.
    pub decode_tok_s: f64,
}

/// What a sequence has produced so far: its tokens, the text made final, and whether it has ended. The
/// generation loop and the engine feed it each chosen token.
pub struct SequenceOutput {
    stop: StopMatcher,
    stream: Option<TextStream>,
    pub tokens: Vec<u32>,
    /// The final text so far; None without a tokenizer.
    pub text: Option<String>,
    max_tokens: usize,
    hit_stop_string: bool,
}

impl SequenceOutput {
    /// `max_tokens`: the most tokens this sequence may produce (the request's, bounded by the context).
    pub fn new(tokenizer: Option<&Tokenizer>, eos_ids: &[u32], opts: &GenerateOptions, max_tokens: usize) -> Self {
        SequenceOutput {
            stop: StopMatcher::new(
                if opts.ignore_eos { Vec::new() } else { eos_ids.to_vec() },
                opts.stop_strings.clone(),
            ),
            stream: tokenizer.map(TextStream::new),
            tokens: Vec::new(),
            text: tokenizer.map(|_| String::new()),
            max_tokens,
            hit_stop_string: false,
        }
    }

    /// Takes a chosen token. Returns the text that became final with it (never half a character, never the
    /// start of a stop string that may still complete) and, when the sequence ends here, why. An
    /// end-of-sequence id ends it without being kept.
    pub fn push(&mut self, id: u32) -> Result<(String, Option<FinishReason>)> {
        if self.tokens.len() >= self.max_tokens {
            return Ok((String::new(), Some(FinishReason::Length)));
        }
        if self.stop.is_eos(id) {
            return Ok((self.finish()?, Some(FinishReason::Stop)));
        }
        self.tokens.push(id);
        let mut emitted = String::new();
        if let Some(stream) = self.stream.as_mut() {
            let piece = stream.push(id)?;
            let (emit, stopped) = self.stop.push_text(&piece);
            emitted = emit;
            if stopped {
                self.hit_stop_string = true;
                self.append(&emitted);
                return Ok((emitted, Some(FinishReason::Stop)));
            }
        }
        self.append(&emitted);
        if self.tokens.len() == self.max_tokens {
            emitted += &self.finish()?;
            return Ok((emitted, Some(FinishReason::Length)));
        }
        Ok((emitted, None))
    }

    /// At the end, whatever the stream and the stop matcher still hold is final text (unless a stop string
    /// ended the sequence).
    fn finish(&mut self) -> Result<String> {
        let mut rest = String::new();
        if let Some(stream) = self.stream.as_mut() {
            if !self.hit_stop_string {
                let tail = stream.finish()?;
                rest = self.stop.push_text(&tail).0;
                rest += &self.stop.flush();
            }
        }
        self.append(&rest);
        Ok(rest)
    }

    /// The completion of a sequence that ended with `finish`: it was admitted at `started`, prefilled
    /// `prompt_tokens - cached_tokens` tokens and had its first token at `first_token`.
    pub fn complete(
        &self,
        finish: FinishReason,
        prompt_tokens: usize,
        cached_tokens: usize,
        started: Instant,
        first_token: Instant,
    ) -> Completion {
        let prefill_secs = first_token.duration_since(started).as_secs_f64();
        // The first token comes from the prefill; decode speed counts the steps after it.
        let decode_steps = self.tokens.len().saturating_sub(1);
        Completion {
            tokens: self.tokens.clone(),
            text: self.text.clone(),
            finish,
            prompt_tokens,
            cached_tokens,
            prefill_tok_s: rate(prompt_tokens - cached_tokens, prefill_secs),
            decode_tok_s: rate(decode_steps, first_token.elapsed().as_secs_f64()),
        }
    }

    fn append(&mut self, piece: &str) {
        if let Some(t) = self.text.as_mut() {
            t.push_str(piece);
        }
    }
}

/// Checks a request before it runs: a non-empty prompt of ids inside the vocabulary that leaves room in the
/// context, and valid sampling settings. (The engine checks at admission: a bad id found inside a batched
/// step would fail every sequence in it.)
pub fn check_request(prompt: &[u32], opts: &GenerateOptions, vocab: usize, context: usize) -> Result<()> {
    if prompt.is_empty() {
        bail!("empty input: the prompt has no tokens");
    }
    opts.sampling.validate()?;
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        bail!("token id {bad} is outside the vocabulary of {vocab}");
    }
    if prompt.len() >= context {
        bail!("the prompt has {} tokens; the context is {context}", prompt.len());
    }
    Ok(())
}

/// Generates from `prompt` in `slot` (reset first). `on_text` receives text as soon as it is final: never
/// half a character, never the start of a stop string that may still complete.
pub fn generate(
    session: &mut dyn Session,
    slot: usize,
    prompt: &[u32],
    tokenizer: Option<&Tokenizer>,
    eos_ids: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str),
) -> Result<Completion> {
    let context = session.context();
    check_request(prompt, opts, session.spec().vocab_size, context)?;
    session.kv_mut().reset(slot);
    let mut sampler = Sampler::new(opts.sampling.clone());
    let mut output = SequenceOutput::new(tokenizer, eos_ids, opts, opts.max_tokens.min(context - prompt.len()));
    let mut history = prompt.to_vec();

    let started = Instant::now();
    let mut id = prefill(session, slot, prompt, 0, sampler.pick(&history))?;
    let first_token = Instant::now();
    let finish = loop {
        let (text, finish) = output.push(id)?;
        if !text.is_empty() {
            on_text(&text);
        }
        if let Some(finish) = finish {
            break finish;
        }
        history.push(id);
        let step = Step::single(slot, &[id], history.len() - 1);
        id = session.forward_pick(&step, &[0], &[sampler.pick(&history)])?[0];
    };
    Ok(output.complete(finish, prompt.len(), 0, started, first_token))
}

/// Tokens per second, 0 when nothing was counted or no time passed.
fn rate(count: usize, secs: f64) -> f64 {
    if count == 0 || secs <= 0.0 {
        0.0
    } else {
        count as f64 / secs
    }
}

/// End-of-sequence ids from everywhere a Hugging Face folder states them: config.json,
/// generation_config.json and the tokenizer's eos token.
pub fn eos_ids(dir: &std::path::Path, spec: &crate::spec::ModelSpec, tokenizer: Option<&Tokenizer>) -> Vec<u32> {
    let mut ids = spec.eos_token_ids.clone();
    if let Ok(generation) = crate::hf_config::HfConfig::load(&dir.join("generation_config.json")) {
        ids.extend(generation.token_ids("eos_token_id").unwrap_or_default());
    }
    if let Some(tok) = tokenizer {
        ids.extend(tok.eos_ids());
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}
