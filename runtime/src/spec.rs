//! The model spec: what every backend executes, expanded per layer so nothing at run time does pattern
//! arithmetic. Family loaders (`models/`) translate a Hugging Face config.json into this; the forward pass
//! (`model.rs`) reads only this.

use crate::bail;
use crate::dtype::KvDtype;
use crate::error::Result;

/// Which rule decides how a backend keeps a matrix (`backend::kept_dtype`, `dtype::PublishedDtypes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatrixClass {
    /// The embedding and LM head (`Precision::Table`).
    Table,
    /// Routers and shared-expert gates (`Precision::Full`: f32).
    Full,
    /// The routed experts' matrices.
    Experts,
    /// Every other matrix: attention, dense and shared-expert FFNs.
    Other,
}

/// `count` matrices of one class and shape, [rows, cols] with cols the reduction axis (along which block
/// formats run).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matrices {
    pub class: MatrixClass,
    pub count: u64,
    pub rows: u64,
    pub cols: u64,
}

/// A model's weights by how a backend may keep them (`ModelSpec::weights`): matrices by class and shape,
/// vectors (norms, biases, sinks) always in f32.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weights {
    pub matrices: Vec<Matrices>,
    pub vectors: u64,
}

impl Weights {
    pub fn total(&self) -> u64 {
        self.matrices.iter().map(|m| m.count * m.rows * m.cols).sum::<u64>() + self.vectors
    }

    fn add(&mut self, class: MatrixClass, count: u64, rows: u64, cols: u64) {
        self.matrices.push(Matrices {
            class,
            count,
            rows,
            cols,
        });
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// `model_type` of the checkpoint ("qwen3_moe", "volt", ...).
    pub family: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub tie_word_embeddings: bool,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub layers: Vec<LayerSpec>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    pub attn: AttnSpec,
    pub ffn: FfnSpec,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttnKind {
    Full,
    /// A query at position i sees keys j with 0 <= i - j < window (the transformers rule).
    Sliding {
        window: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum QkNorm {
    None,
    /// RMSNorm over each head's head_dim, before RoPE (Qwen3).
    PerHead,
    /// RMSNorm over the whole q (n_heads*head_dim) and k (n_kv_heads*head_dim) projections (OLMoE).
    WholeProjection,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AttnSpec {
    pub kind: AttnKind,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub qk_norm: QkNorm,
    /// Clamp q, k, v to [-c, c] after the norms (OLMoE `clip_qkv`).
    pub clip_qkv: Option<f32>,
    /// A learned per-head logit that joins the softmax and absorbs mass (GPT-OSS).
    pub sinks: bool,
    /// Multiplies q·k; head_dim^-0.5 unless the family says otherwise.
    pub softmax_scale: f32,
    pub rope: RopeSpec,
    /// The layer whose KV cache this layer reads: its own index when it owns its K/V, an earlier layer's
    /// index for cross-layer reuse (then the layer has no k_proj/v_proj and stores nothing).
    pub kv_source: usize,
}

impl AttnSpec {
    pub fn window(&self) -> Option<usize> {
        match self.kind {
            AttnKind::Full => None,
            AttnKind::Sliding { window } => Some(window),
        }
    }
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    pub scaling: RopeScaling,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        /// Overrides the derived cos/sin scale when given.
        attention_factor: Option<f64>,
        /// Round the correction range to whole dimensions (transformers' default true; GPT-OSS false).
        truncate: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum FfnSpec {
    /// SwiGLU: down(silu(gate(x)) * up(x)).
    Dense {
        intermediate: usize,
    },
    Moe(MoeSpec),
}

#[derive(Clone, Debug, PartialEq)]
pub struct MoeSpec {
    pub n_experts: usize,
    pub expert_intermediate: usize,
    pub router: RouterSpec,
    pub activation: ExpertActivation,
    /// Per-expert biases on gate/up and down (GPT-OSS).
    pub expert_bias: bool,
    pub shared: Option<SharedExperts>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ExpertActivation {
    /// silu(gate) * up.
    SwiGlu,
    /// GPT-OSS: gate = min(gate, limit); up = clamp(up, -limit, limit); (up + 1) * gate * sigmoid(alpha * gate).
    ClampedSwiGlu { alpha: f32, limit: f32 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct SharedExperts {
    /// Total intermediate size of the shared SwiGLU (n_shared * expert size when several are fused).
    pub intermediate: usize,
    /// How many experts that size stands for (reported by `volt info`).
    pub count: usize,
    /// Output multiplied by sigmoid(w·x), a scalar per token (Qwen2-MoE `shared_expert_gate`).
    pub gated: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RouterSpec {
    pub scoring: Scoring,
    pub order: RouterOrder,
    pub selection: Selection,
    /// Divide the selected weights by their sum.
    pub renormalize: bool,
    /// A learned bias added to the router logits (GPT-OSS).
    pub bias: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scoring {
    Softmax,
    Sigmoid,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RouterOrder {
    /// Score all experts, then select (Qwen, Mixtral, OLMoE).
    ScoreThenSelect,
    /// Select on raw logits, then score only the selected ones (GPT-OSS: softmax over the k chosen).
    SelectThenScore,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selection {
    TopK {
        k: usize,
    },
    /// Dynamic "ToP" routing: experts taken by falling probability until their sum reaches `p`, never fewer
    /// than `min_experts` nor more than `max_experts`.
    TopP {
        p: f32,
        min_experts: usize,
        max_experts: usize,
    },
}

impl Selection {
    /// The most experts one token can activate.
    pub fn max_experts(&self) -> usize {
        match *self {
            Selection::TopK { k } => k,
            Selection::TopP { max_experts, .. } => max_experts,
        }
    }
}

impl ModelSpec {
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Structural checks every loader relies on; a checkpoint that fails one is rejected with the reason.
    pub fn validate(&self) -> Result<()> {
        if self.vocab_size == 0 || self.hidden_size == 0 || self.layers.is_empty() {
            bail!(
                "model has an empty dimension (vocab {}, hidden {}, layers {})",
                self.vocab_size,
                self.hidden_size,
                self.layers.len()
            );
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let a = &layer.attn;
            if a.n_heads == 0 || a.n_kv_heads == 0 || a.head_dim == 0 {
                bail!("layer {i}: attention has zero heads or head_dim");
            }
            if a.n_heads % a.n_kv_heads != 0 {
                bail!(
                    "layer {i}: {} attention heads is not a multiple of {} KV heads",
                    a.n_heads,
                    a.n_kv_heads
                );
            }
            if a.head_dim % 2 != 0 {
                bail!("layer {i}: head_dim {} must be even for RoPE", a.head_dim);
            }
            if let AttnKind::Sliding { window: 0 } = a.kind {
                bail!("layer {i}: sliding window of 0");
            }
            if a.kv_source > i {
                bail!("layer {i}: reads the KV of a later layer {}", a.kv_source);
            }
            if a.kv_source != i {
                let src = &self.layers[a.kv_source].attn;
                if src.kv_source != a.kv_source {
                    bail!("layer {i}: KV source {} itself reuses another layer's KV", a.kv_source);
                }
                if src.n_kv_heads != a.n_kv_heads || src.head_dim != a.head_dim {
                    bail!("layer {i}: KV shape differs from its source layer {}", a.kv_source);
                }
                // The source keeps only what its own window needs; the reader cannot see further back.
                let fits = match (src.window(), a.window()) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(s), Some(r)) => r <= s,
                };
                if !fits {
                    bail!(
                        "layer {i}: sees further back than its KV source layer {} keeps",
                        a.kv_source
                    );
                }
            }
            if let FfnSpec::Moe(m) = &layer.ffn {
                let max = m.router.selection.max_experts();
                if m.n_experts == 0 || max == 0 || max > m.n_experts {
                    bail!("layer {i}: selects {max} of {} experts", m.n_experts);
                }
                if let Selection::TopP {
                    p,
                    min_experts,
                    max_experts,
                } = m.router.selection
                {
                    if !(p > 0.0 && p <= 1.0) || min_experts == 0 || min_experts > max_experts {
                        bail!("layer {i}: top-p routing needs 0 < p <= 1 and 1 <= min <= max experts");
                    }
                }
            }
        }
        Ok(())
    }

    /// Parameter count of everything stored (total) and of what one token uses (active: only the routed
    /// experts it is sent to, at the most experts the router can pick).
    pub fn parameter_counts(&self) -> (u64, u64) {
        let total = self.weights().total();
        let h = self.hidden_size as u64;
        let unused: u64 = self
            .layers
            .iter()
            .filter_map(|l| match &l.ffn {
                FfnSpec::Moe(m) => {
                    let i = m.expert_intermediate as u64;
                    let per_expert = 3 * h * i + if m.expert_bias { 2 * i + h } else { 0 };
                    Some((m.n_experts - m.router.selection.max_experts()) as u64 * per_expert)
                }
                FfnSpec::Dense { .. } => None,
            })
            .sum();
        (total, total - unused)
    }

    /// The weights by how they may be kept (see `Weights`); they add up to `parameter_counts().0`.
    pub fn weights(&self) -> Weights {
        use MatrixClass::*;
        let h = self.hidden_size as u64;
        let mut w = Weights {
            vectors: h, // final norm
            ..Weights::default()
        };
        let tables = if self.tie_word_embeddings { 1 } else { 2 };
        w.add(Table, tables, self.vocab_size as u64, h);
        for (i, layer) in self.layers.iter().enumerate() {
            let a = &layer.attn;
            let (q, kv) = (a.q_dim() as u64, a.kv_dim() as u64);
            let owns_kv = a.kv_source == i;
            w.add(Other, 1, q, h);
            w.add(Other, 1, h, q);
            if owns_kv {
                w.add(Other, 2, kv, h);
            }
            w.vectors += 2 * h; // the two layer norms
            if a.qkv_bias {
                w.vectors += q + if owns_kv { 2 * kv } else { 0 };
            }
            if a.o_bias {
                w.vectors += h;
            }
            w.vectors += match a.qk_norm {
                QkNorm::None => 0,
                QkNorm::PerHead => 2 * a.head_dim as u64,
                QkNorm::WholeProjection => q + kv,
            };
            if a.sinks {
                w.vectors += a.n_heads as u64;
            }
            match &layer.ffn {
                FfnSpec::Dense { intermediate } => {
                    let i = *intermediate as u64;
                    w.add(Other, 2, i, h);
                    w.add(Other, 1, h, i);
                }
                FfnSpec::Moe(m) => {
                    let (n, i) = (m.n_experts as u64, m.expert_intermediate as u64);
                    w.add(Experts, 2 * n, i, h);
                    w.add(Experts, n, h, i);
                    if m.expert_bias {
                        w.vectors += n * (2 * i + h);
                    }
                    w.add(Full, 1, n, h);
                    if m.router.bias {
                        w.vectors += n;
                    }
                    if let Some(s) = &m.shared {
                        let si = s.intermediate as u64;
                        w.add(Other, 2, si, h);
                        w.add(Other, 1, h, si);
                        if s.gated {
                            w.add(Full, 1, 1, h);
                        }
                    }
                }
            }
        }
        w
    }

    /// KV cache bytes of one sequence at `context` tokens with values kept as `kv`: sliding layers keep
    /// their window, full layers the whole context, layers that reuse another layer's KV nothing.
    pub fn kv_bytes(&self, context: usize, kv: KvDtype) -> u64 {
        self.layers
            .iter()
            .enumerate()
            .filter(|(i, l)| l.attn.kv_source == *i)
            .map(|(_, l)| {
                let kept = l.attn.window().map_or(context, |w| w.min(context));
                (2 * l.attn.kv_dim() * kept * kv.bytes()) as u64
            })
            .sum()
    }

    /// The same model with every layer full attention owning its KV.
    pub fn kv_bytes_baseline(&self, context: usize, kv: KvDtype) -> u64 {
        self.layers
            .iter()
            .map(|l| (2 * l.attn.kv_dim() * context * kv.bytes()) as u64)
            .sum()
    }
}
