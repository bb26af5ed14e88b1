//! Evaluation over a text of any length: perplexity with strided windows, and routing statistics.

use std::collections::BTreeMap;

use crate::bail;
use crate::error::Result;
use crate::generate::prompt_logits;
use crate::routing_stats::RoutingAccumulator;
use crate::session::Session;

#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    /// Tokens scored (every token but the first).
    pub tokens: usize,
    /// Mean negative log-likelihood per scored token, in nats.
    pub mean_nll: f64,
}

/// Perplexity of `ids` with windows of `context` tokens moved by `stride`: each token is scored once, with
/// as much left context as the window gives it (the transformers recipe for texts past the context).
pub fn perplexity(session: &mut dyn Session, ids: &[u32], context: usize, stride: usize) -> Result<Perplexity> {
    if ids.len() < 2 {
        bail!("the text has {} token(s); perplexity needs at least 2", ids.len());
    }
    if context < 2 || stride == 0 || stride > context {
        bail!("perplexity needs a context of at least 2 and 1 <= stride <= context (got {context}, {stride})");
    }
    let mut nll = 0.0f64;
    let mut scored = 0usize;
    let mut begin = 0usize;
    loop {
        let end = (begin + context).min(ids.len());
        let logits = prompt_logits(session, 0, &ids[begin..end])?;
        // Position t predicts ids[t + 1]; score the targets this window is the first to reach.
        let first_target = if begin == 0 { 1 } else { begin + context - stride };
        for target in first_target.max(begin + 1)..end {
            nll -= log_softmax_at(&logits[target - 1 - begin], ids[target] as usize);
            scored += 1;
        }
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    let mean_nll = nll / scored as f64;
    Ok(Perplexity {
        ppl: mean_nll.exp(),
        tokens: scored,
        mean_nll,
    })
}

fn log_softmax_at(row: &[f32], index: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[index] as f64 - max - sum.ln()
}

/// Routes every token of `ids` (in consecutive windows of `context` tokens) and accumulates each MoE
/// layer's routing, keyed by layer index.
pub fn collect_routing(
    session: &mut dyn Session,
    ids: &[u32],
    context: usize,
) -> Result<BTreeMap<usize, RoutingAccumulator>> {
    if ids.is_empty() {
        bail!("empty input: the text has no tokens");
    }
    let mut layers: BTreeMap<usize, RoutingAccumulator> = BTreeMap::new();
    session.trace_routing(true);
    let result = (|| {
        for window in ids.chunks(context.max(1)) {
            prompt_logits(session, 0, window)?;
            for r in session.take_routing()? {
                layers
                    .entry(r.layer)
                    .or_insert_with(|| RoutingAccumulator::new(r.n_experts))
                    .add(&r.probs, &r.chosen);
            }
        }
        Ok(())
    })();
    session.trace_routing(false);
    result.map(|_| layers)
}
