//! Rotary position embedding: inverse frequencies and the cos/sin scale for each scaling type, as
//! transformers' `modeling_rope_utils` computes them. Rotation is "rotate half" (NeoX): dimension d pairs
//! with d + head_dim/2.

use std::f64::consts::PI;

use crate::spec::{RopeScaling, RopeSpec};

/// What a backend needs to rotate q and k: one inverse frequency per pair and a factor on cos and sin.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    /// head_dim / 2 inverse frequencies (radians per position).
    pub inv_freq: Vec<f32>,
    /// Multiplies cos and sin (YaRN's attention factor; 1 otherwise).
    pub attention_scale: f32,
}

impl RopeTable {
    pub fn new(spec: &RopeSpec, head_dim: usize) -> RopeTable {
        let half = head_dim / 2;
        // transformers computes base ** (2i / dim) in f32; f64 here then rounding gives the same values.
        let base: Vec<f64> = (0..half)
            .map(|i| spec.theta.powf((2 * i) as f64 / head_dim as f64))
            .collect();
        let plain: Vec<f64> = base.iter().map(|b| 1.0 / b).collect();
        let (inv_freq, attention_scale) = match spec.scaling {
            RopeScaling::None => (plain, 1.0),
            RopeScaling::Linear { factor } => (plain.iter().map(|f| f / factor).collect(), 1.0),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_ctx,
            } => {
                let low_freq_wavelen = old_ctx / low_freq_factor;
                let high_freq_wavelen = old_ctx / high_freq_factor;
                let scaled = plain
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (scaled, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate,
            } => {
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let attention = attention_factor.unwrap_or(match (mscale, mscale_all_dim) {
                    (Some(m), Some(all)) if m != 0.0 && all != 0.0 => get_mscale(factor, m) / get_mscale(factor, all),
                    _ => get_mscale(factor, 1.0),
                });
                let dim = head_dim as f64;
                let correction_dim = |rotations: f64| {
                    dim * (original_max_position_embeddings / (rotations * 2.0 * PI)).ln() / (2.0 * spec.theta.ln())
                };
                let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(dim - 1.0);
                let span = if low == high { 0.001 } else { high - low };
                let freqs = (0..half)
                    .map(|i| {
                        let ramp = ((i as f64 - low) / span).clamp(0.0, 1.0);
                        let extrapolation_weight = 1.0 - ramp;
                        let extrapolated = 1.0 / base[i];
                        let interpolated = 1.0 / (factor * base[i]);
                        interpolated * (1.0 - extrapolation_weight) + extrapolated * extrapolation_weight
                    })
                    .collect();
                (freqs, attention)
            }
        };
        RopeTable {
            inv_freq: inv_freq.into_iter().map(|f| f as f32).collect(),
            attention_scale: attention_scale as f32,
        }
    }

    /// Rotates one head vector in place for `position` (the CPU reference; GPU kernels do the same math).
    pub fn rotate(&self, head: &mut [f32], position: usize) {
        let half = self.inv_freq.len();
        for (i, &f) in self.inv_freq.iter().enumerate() {
            // f32 angle like transformers (position * inv_freq in f32), so long contexts round the same way.
            let angle = position as f32 * f;
            let (sin, cos) = angle.sin_cos();
            let (cos, sin) = (cos * self.attention_scale, sin * self.attention_scale);
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos - b * sin;
            head[i + half] = b * cos + a * sin;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_rope_rotates_pairs_half_apart() {
        let table = RopeTable::new(
            &RopeSpec {
                theta: 10000.0,
                scaling: RopeScaling::None,
            },
            4,
        );
        assert_eq!(table.inv_freq, vec![1.0, 0.01]);
        let mut v = [1.0, 0.0, 0.0, 0.0];
        table.rotate(&mut v, 1);
        assert!((v[0] - 1f32.cos()).abs() < 1e-6 && (v[2] - 1f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn yarn_keeps_high_frequencies_and_divides_low_ones() {
        let spec = RopeSpec {
            theta: 10000.0,
            scaling: RopeScaling::Yarn {
                factor: 8.0,
                original_max_position_embeddings: 4096.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
                mscale: None,
                mscale_all_dim: None,
                attention_factor: None,
                truncate: true,
            },
        };
        let t = RopeTable::new(&spec, 64);
        let plain = RopeTable::new(
            &RopeSpec {
                theta: 10000.0,
                scaling: RopeScaling::None,
            },
            64,
        );
        assert_eq!(t.inv_freq[0], plain.inv_freq[0]);
        assert!((t.inv_freq[31] - plain.inv_freq[31] / 8.0).abs() < 1e-12);
        assert!((t.attention_scale - (0.1 * 8f32.ln() + 1.0)).abs() < 1e-6);
    }
}
