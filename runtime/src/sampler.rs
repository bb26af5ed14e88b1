//! Choosing the next token from a row of logits (greedy, or seeded sampling through llama.cpp-style filters)
//! and the stop conditions of a generation (end-of-sequence ids, stop strings).

use crate::bail;
use crate::error::Result;

/// How the next token is chosen. The defaults are llama.cpp's, except the seed: a fixed 0 rather than a
/// random one, so that a run is reproducible unless a seed is given.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits; 0 = greedy (argmax). Default 0.8.
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 = off. Default 40.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability adds up to at least top_p; 1 = off.
    /// Default 0.95.
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one; 0 = off. Default 0.05.
    pub min_p: f32,
    /// Penalty on the logits of tokens seen in the last `repeat_last_n` ids; 1 = off (the default).
    pub repeat_penalty: f32,
    /// How many of the latest ids the repetition penalty looks at; 0 = none. Default 64.
    pub repeat_last_n: usize,
    /// Seed of the random draws. Default 0.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Argmax decoding, no filters, no penalty.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        // Written so that NaN fails every check.
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!(
                "temperature must be a number >= 0 (0 = greedy), got {}",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top_p must be in (0, 1] (1 = off), got {}", self.top_p);
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            bail!("min_p must be in [0, 1] (0 = off), got {}", self.min_p);
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            bail!(
                "repeat_penalty must be a number > 0 (1 = off), got {}",
                self.repeat_penalty
            );
        }
        Ok(())
    }
}

/// A token still in the running.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    id: u32,
    logit: f32,
}

/// Picks tokens with one set of parameters; holds the random state, so one sampler per sequence.
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

/// One token choice, ready for a backend to make: the parameters, the ids the repetition penalty applies
/// to, and this choice's uniform draw. The sampler takes the draw, so a choice consumes the same random
/// numbers on every backend and a seed gives the same tokens wherever the logits agree.
#[derive(Clone, Debug, PartialEq)]
pub struct Pick {
    pub params: SamplingParams,
    /// Distinct ids of the last `repeat_last_n` of the history, sorted (empty when the penalty is off).
    pub penalized: Vec<u32>,
    /// Uniform in [0, 1) for the weighted draw (0 at temperature 0, where nothing is drawn).
    pub uniform: f64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = SplitMix64 { state: params.seed };
        Sampler { params, rng }
    }

    /// The next choice after `history` (prompt + generated ids).
    pub fn pick(&mut self, history: &[u32]) -> Pick {
        let p = &self.params;
        let mut penalized = Vec::new();
        if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
            penalized.extend_from_slice(&history[history.len().saturating_sub(p.repeat_last_n)..]);
            penalized.sort_unstable();
            penalized.dedup();
        }
        let uniform = if p.temperature > 0.0 { self.rng.next_f64() } else { 0.0 };
        Pick {
            params: p.clone(),
            penalized,
            uniform,
        }
    }

    /// Picks the next token from one row of logits on the CPU (`Pick::choose`).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.pick(history).choose(logits)
    }
}

impl Pick {
    /// The reference choice from one row of logits. Repetition penalty first (llama.cpp/HF style: positive
    /// logits divided by r, negative multiplied); temperature 0 => argmax (ties -> lowest id). Otherwise
    /// top-k -> temperature -> softmax -> top-p -> min-p -> the weighted draw at `uniform`. NaN logits never
    /// win; empty logits give id 0. Backends that choose on the device follow this function.
    pub fn choose(&self, logits: &[f32]) -> u32 {
        let mut candidates: Vec<Candidate> = logits
            .iter()
            .enumerate()
            .map(|(id, &logit)| Candidate {
                id: id as u32,
                logit: if logit.is_nan() { f32::NEG_INFINITY } else { logit },
            })
            .collect();
        let penalty = self.params.repeat_penalty;
        for &id in &self.penalized {
            if let Some(c) = candidates.get_mut(id as usize) {
                c.logit = if c.logit > 0.0 {
                    c.logit / penalty
                } else {
                    c.logit * penalty
                };
            }
        }
        if self.params.temperature > 0.0 {
            self.draw(candidates)
        } else {
            argmax(&candidates)
        }
    }

    /// top-k -> temperature -> softmax -> top-p -> min-p -> a weighted draw.
    fn draw(&self, mut candidates: Vec<Candidate>) -> u32 {
        // Most likely first; equal logits by id so that the order, and the draw, do not depend on the sort.
        let by_likelihood = |a: &Candidate, b: &Candidate| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id));
        let top_k = self.params.top_k;
        if top_k > 0 && top_k < candidates.len() {
            candidates.select_nth_unstable_by(top_k - 1, by_likelihood);
            candidates.truncate(top_k);
        }
        candidates.sort_unstable_by(by_likelihood);
        let Some(best) = candidates.first().copied() else {
            return 0;
        };
        if !best.logit.is_finite() {
            // All -inf, or a +inf that wins outright.
            return best.id;
        }

        let temperature = self.params.temperature;
        let probs: Vec<f32> = candidates
            .iter()
            .map(|c| ((c.logit - best.logit) / temperature).exp())
            .collect();
        let total: f64 = probs.iter().map(|&p| p as f64).sum();

        let mut keep = probs.len();
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, &p) in probs.iter().enumerate() {
                cumulative += p as f64 / total;
                if cumulative >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if self.params.min_p > 0.0 {
            // probs[0] is the most likely token, which always stays.
            let threshold = self.params.min_p * probs[0];
            keep = probs[..keep].iter().take_while(|&&p| p >= threshold).count().max(1);
        }

        let kept = &probs[..keep];
        let mut remaining = self.uniform * kept.iter().map(|&p| p as f64).sum::<f64>();
        for (i, &p) in kept.iter().enumerate() {
            remaining -= p as f64;
            if remaining < 0.0 {
                return candidates[i].id;
            }
        }
        // Rounding left a sliver past the last token.
        candidates[keep - 1].id
    }
}

/// The id of the largest logit, the lowest id among equals; 0 for an empty row.
fn argmax(candidates: &[Candidate]) -> u32 {
    let mut best = Candidate {
        id: 0,
        logit: f32::NEG_INFINITY,
    };
    for &c in candidates {
        if c.logit > best.logit {
            best = c;
        }
    }
    best.id
}

/// SplitMix64 (Steele, Lea & Flood): a tiny, well-mixed 64-bit generator; every seed, 0 included, is fine.
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Stop conditions: eos ids and stop strings. Stop strings may span token boundaries; text that could still
/// become a stop string is held back and not emitted until it is clear it is not one.
pub struct StopMatcher {
    eos_ids: Vec<u32>,
    /// Non-empty stop strings.
    stop_strings: Vec<String>,
    /// Text received but not emitted: the end of it may be the start of a stop string.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would stop before the first character).
    pub fn new(eos_ids: Vec<u32>, stop_strings: Vec<String>) -> Self {
        let stop_strings = stop_strings.into_iter().filter(|s| !s.is_empty()).collect();
        StopMatcher {
            eos_ids,
            stop_strings,
            held: String::new(),
            stopped: false,
        }
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// Feed newly decoded text; returns (text safe to emit now, stopped?). When a stop string is hit, the
    /// emitted text ends right before it; after that every call returns ("", true).
    pub fn push_text(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.held.push_str(text);
        if let Some(at) = self
            .stop_strings
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.held.truncate(at);
            self.stopped = true;
            return (std::mem::take(&mut self.held), true);
        }
        let keep_from = self.partial_stop_start();
        let rest = self.held.split_off(keep_from);
        (std::mem::replace(&mut self.held, rest), false)
    }

    /// Text held back at the end of generation (no stop string came).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Where the longest end of `held` that begins some stop string starts; `held.len()` if none does.
    fn partial_stop_start(&self) -> usize {
        let longest = self.stop_strings.iter().map(String::len).max().unwrap_or(0);
        // Only a proper prefix can be pending: a whole stop string would have been found.
        let earliest = self.held.len().saturating_sub(longest.saturating_sub(1));
        self.held
            .char_indices()
            .map(|(i, _)| i)
            .filter(|&i| i >= earliest)
            .find(|&i| self.stop_strings.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(params: SamplingParams) -> Sampler {
        params.validate().unwrap();
        Sampler::new(params)
    }

    /// Plain sampling at temperature 1 with no filters.
    fn unfiltered(seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..SamplingParams::default()
        }
    }

    /// How often each id comes out of `draws` samples.
    fn histogram(s: &mut Sampler, logits: &[f32], draws: usize) -> Vec<usize> {
        let mut counts = vec![0; logits.len()];
        for _ in 0..draws {
            counts[s.sample(logits, &[]) as usize] += 1;
        }
        counts
    }

    /// Logits whose softmax is [0.5, 0.3, 0.15, 0.05].
    fn four_token_logits() -> Vec<f32> {
        [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn defaults_are_valid_and_bad_values_are_errors() {
        SamplingParams::default().validate().unwrap();
        SamplingParams::greedy().validate().unwrap();
        let bad = [
            SamplingParams {
                temperature: -0.1,
                ..SamplingParams::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..SamplingParams::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..SamplingParams::default()
            },
            SamplingParams {
                min_p: -0.5,
                ..SamplingParams::default()
            },
            SamplingParams {
                repeat_penalty: 0.0,
                ..SamplingParams::default()
            },
        ];
        for params in bad {
            let err = params.validate().unwrap_err();
            assert!(!err.message().contains('\n'), "{err}");
        }
    }

    #[test]
    fn greedy_takes_the_lowest_id_among_ties() {
        let mut s = sampler(SamplingParams::greedy());
        assert_eq!(s.sample(&[1.0, 3.0, 3.0, 2.0], &[]), 1);
        assert_eq!(s.sample(&[f32::NAN, -1.0, f32::NAN], &[]), 1);
        assert_eq!(s.sample(&[f32::NEG_INFINITY; 3], &[]), 0);
        assert_eq!(s.sample(&[], &[]), 0);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_different_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.1).collect();
        let run = |seed| {
            let mut s = sampler(unfiltered(seed));
            (0..64).map(|_| s.sample(&logits, &[])).collect::<Vec<u32>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert_ne!(run(0), run(1));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let expected = sampler(SamplingParams::greedy()).sample(&logits, &[]);
        let mut s = sampler(SamplingParams {
            temperature: 1.5,
            top_k: 1,
            top_p: 1.0,
            min_p: 0.0,
            seed: 3,
            ..SamplingParams::default()
        });
        for _ in 0..200 {
            assert_eq!(s.sample(&logits, &[]), expected);
        }
    }

    #[test]
    fn unfiltered_sampling_follows_the_softmax() {
        let counts = histogram(&mut sampler(unfiltered(11)), &four_token_logits(), 20_000);
        for (count, p) in counts.iter().zip([0.5, 0.3, 0.15, 0.05]) {
            let frequency = *count as f64 / 20_000.0;
            assert!((frequency - p).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn top_p_excludes_the_unlikely_tail() {
        // 0.5 + 0.3 reaches 0.75: only ids 0 and 1 remain, renormalised to 0.625 / 0.375.
        let mut s = sampler(SamplingParams {
            top_p: 0.75,
            ..unfiltered(5)
        });
        let counts = histogram(&mut s, &four_token_logits(), 10_000);
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        assert!((counts[0] as f64 / 10_000.0 - 0.625).abs() < 0.02, "{counts:?}");
    }

    #[test]
    fn min_p_excludes_tokens_far_below_the_best() {
        // Threshold 0.2 * 0.5 = 0.1: id 3 (0.05) goes, id 2 (0.15) stays.
        let mut s = sampler(SamplingParams {
            min_p: 0.2,
            ..unfiltered(9)
        });
        let counts = histogram(&mut s, &four_token_logits(), 10_000);
        assert_eq!(counts[3], 0, "{counts:?}");
        assert!(counts[2] > 1000, "{counts:?}");
    }

    #[test]
    fn repeat_penalty_changes_the_argmax() {
        let penalized = |r: f32, last_n: usize| {
            sampler(SamplingParams {
                repeat_penalty: r,
                repeat_last_n: last_n,
                ..SamplingParams::greedy()
            })
        };
        // Positive logits are divided: 2.0 / 1.1 < 1.9.
        assert_eq!(penalized(1.0, 64).sample(&[2.0, 1.9, -1.0], &[0]), 0);
        assert_eq!(penalized(1.1, 64).sample(&[2.0, 1.9, -1.0], &[0]), 1);
        // Negative logits are multiplied: -1.0 * 1.1 < -1.05.
        assert_eq!(penalized(1.1, 64).sample(&[-1.0, -1.05], &[0]), 1);
        // Repeats count once, and only within the last repeat_last_n ids.
        assert_eq!(penalized(1.1, 64).sample(&[2.0, 1.9], &[0, 0, 0]), 1);
        assert_eq!(penalized(1.1, 2).sample(&[2.0, 1.9], &[0, 1, 1]), 0);
        // Ids beyond the vocabulary are ignored.
        assert_eq!(penalized(1.1, 64).sample(&[2.0, 1.9], &[99]), 0);
    }

    #[test]
    fn stop_string_split_across_pushes() {
        let mut m = StopMatcher::new(vec![2], vec!["</end>".into()]);
        assert!(m.is_eos(2) && !m.is_eos(3));
        assert_eq!(m.push_text("Hello </"), ("Hello ".to_string(), false));
        assert_eq!(m.push_text("en"), (String::new(), false));
        assert_eq!(m.push_text("d> and more"), (String::new(), true));
        assert_eq!(m.push_text("later"), (String::new(), true));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn text_that_only_starts_like_a_stop_string_is_released() {
        let mut m = StopMatcher::new(vec![], vec!["</end>".into(), "STOP".into()]);
        assert_eq!(m.push_text("a </e"), ("a ".to_string(), false));
        assert_eq!(m.push_text("x"), ("</ex".to_string(), false));
        assert_eq!(m.push_text("ST"), (String::new(), false));
        assert_eq!(m.push_text("OP!"), (String::new(), true));

        let mut m = StopMatcher::new(vec![], vec!["</end>".into()]);
        assert_eq!(m.push_text("tail </en"), ("tail ".to_string(), false));
        assert_eq!(m.flush(), "</en");
    }

    #[test]
    fn earliest_stop_string_wins_and_multibyte_text_is_split_on_characters() {
        let mut m = StopMatcher::new(vec![], vec!["world".into(), "lo w".into()]);
        assert_eq!(m.push_text("hello world"), ("hel".to_string(), true));

        let mut m = StopMatcher::new(vec![], vec!["éé".into(), String::new()]);
        assert_eq!(m.push_text("café"), ("caf".to_string(), false));
        assert_eq!(m.push_text("!é"), ("é!".to_string(), false));
        assert_eq!(m.push_text("é"), (String::new(), true));
    }
}
