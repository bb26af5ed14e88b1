//! The tokens of one forward step and how many one step may hold.

/// Most tokens one step may hold: prefill goes in chunks of this size (bounding activation memory on long
/// prompts), the engine fills each step up to it, and a GPU backend's sliding-window ring holds the window
/// plus one such step (`kv::Ring`).
pub const MAX_STEP_TOKENS: usize = 512;

/// The tokens of one forward step. Tokens of one sequence appear in order and continue that sequence's
/// cache: the first has position == the number of tokens already cached for it. One step can hold several
/// sequences at different positions (prefill chunks beside decode tokens: continuous batching).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    pub tokens: Vec<u32>,
    /// Absolute position of each token in its sequence.
    pub positions: Vec<usize>,
    /// Cache slot of each token's sequence.
    pub seqs: Vec<usize>,
}

impl Step {
    /// One sequence's tokens starting at `start`.
    pub fn single(seq: usize, tokens: &[u32], start: usize) -> Step {
        Step {
            tokens: tokens.to_vec(),
            positions: (start..start + tokens.len()).collect(),
            seqs: vec![seq; tokens.len()],
        }
    }

    /// `tokens` of one sequence from position `start` as the steps that feed them: chunks of at most
    /// `MAX_STEP_TOKENS`.
    pub fn chunks(seq: usize, tokens: &[u32], start: usize) -> impl Iterator<Item = Step> + '_ {
        tokens
            .chunks(MAX_STEP_TOKENS)
            .enumerate()
            .map(move |(c, chunk)| Step::single(seq, chunk, start + c * MAX_STEP_TOKENS))
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The position after the last token of each slot in the step (0 for slots it does not touch).
    pub fn ends(&self, slots: usize) -> Vec<usize> {
        let mut ends = vec![0; slots];
        for (&slot, &pos) in self.seqs.iter().zip(&self.positions) {
            ends[slot] = ends[slot].max(pos + 1);
        }
        ends
    }
}
