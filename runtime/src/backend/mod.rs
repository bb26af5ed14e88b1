//! The backend trait: the ops the forward pass (`model.rs`) is written against, once for every backend.
//!
//! Shaped for GPUs as well as the CPU reference:
//! - ops return handles and may only record work; nothing is read back until `read`, so a GPU backend can
//!   encode a whole step into one submission;
//! - routing happens inside `moe`: expert choices never leave the device;
//! - a `Step` holds tokens of several sequences, each at its own position, so one step can mix prefill
//!   chunks and decode tokens (continuous batching).

pub mod cpu;
pub mod kv_pages;
pub mod wgpu;

use crate::checkpoint::HostTensor;
use crate::error::Result;
use crate::rope::RopeTable;
use crate::sampler::Pick;
use crate::spec::{AttnSpec, ModelSpec, MoeSpec};

/// Where each kind of weight lives: host tensors while loading, backend handles once uploaded. The layer
/// structs in `model.rs` are generic over this, so loading and uploading share one definition.
pub trait WeightTypes {
    /// A weight matrix, [out, in] row-major.
    type Matrix;
    /// A weight vector (norm weights, biases).
    type Vector;
    /// Stacked expert matrices, [experts, out, in].
    type Experts;
}

/// Weights on the host, as family loaders produce them.
pub struct Host;

impl WeightTypes for Host {
    type Matrix = HostTensor;
    type Vector = HostTensor;
    type Experts = HostTensor;
}

/// Precision the backend keeps weights in. The CPU reference always computes in f32; lower dtypes round the
/// weights at upload so results show what that storage costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
    /// E4M3 with one f32 scale per 128x128 block (`crate::fp8`).
    Fp8,
}

impl WeightDtype {
    pub const ALL: [WeightDtype; 4] = [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16, WeightDtype::Fp8];

    pub fn parse(name: &str) -> Result<WeightDtype> {
        match name {
            "f32" => Ok(WeightDtype::F32),
            "f16" => Ok(WeightDtype::F16),
            "bf16" => Ok(WeightDtype::Bf16),
            "fp8" => Ok(WeightDtype::Fp8),
            other => crate::bail!("unknown dtype `{other}` (expected f32, f16, bf16 or fp8)"),
        }
    }

    /// The name `--dtype` takes.
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::Fp8 => "fp8",
        }
    }

    /// The dtype a matrix of `precision` is kept in when the bulk is kept in `self`.
    pub fn for_precision(self, precision: Precision) -> WeightDtype {
        match (precision, self) {
            (Precision::Full, _) => WeightDtype::F32,
            (Precision::Table, WeightDtype::Fp8) => WeightDtype::Bf16,
            _ => self,
        }
    }

    /// Bytes one stored weight takes (FP8 block scales add 4 bytes per 16384 weights).
    pub fn bytes(self) -> f64 {
        match self {
            WeightDtype::F32 => 4.0,
            WeightDtype::F16 | WeightDtype::Bf16 => 2.0,
            WeightDtype::Fp8 => 1.0 + 4.0 / (crate::fp8::BLOCK * crate::fp8::BLOCK) as f64,
        }
    }
}

/// How a backend keeps cached K and V values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    /// The GPU default: half the memory and bandwidth of f32.
    F16,
    /// E4M3 codes with scale 1 (vLLM's uncalibrated `fp8` cache): a quarter of f32. Magnitudes past 448
    /// saturate and below 2^-9 round to zero; K and V of the supported models stay well inside.
    Fp8,
}

impl KvDtype {
    pub const ALL: [KvDtype; 3] = [KvDtype::F32, KvDtype::F16, KvDtype::Fp8];

    pub fn parse(name: &str) -> Result<KvDtype> {
        match name {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            "fp8" => Ok(KvDtype::Fp8),
            other => crate::bail!("unknown KV dtype `{other}` (expected f16, f32 or fp8)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Fp8 => "fp8",
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
            KvDtype::Fp8 => 1,
        }
    }

    /// `x` as this dtype holds it.
    pub fn round(self, x: f32) -> f32 {
        match self {
            KvDtype::F32 => x,
            KvDtype::F16 => half::f16::from_f32(x).to_f32(),
            KvDtype::Fp8 => crate::fp8::to_f32(crate::fp8::from_f32(x)),
        }
    }
}

/// How precisely a matrix is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// The backend's weight dtype (`--dtype`): the bulk of the parameters.
    Storage,
    /// Embedding and LM head: the weight dtype, but bf16 under fp8, as the FP8 releases keep them (one
    /// scale per 128x128 block loses too much on rows that are looked up or scored one by one).
    Table,
    /// f32: routers and gates, whose small errors flip discrete decisions, and biases.
    Full,
}

/// The tokens of one forward step. Tokens of one sequence appear in order and continue that sequence's
/// cache: the first has position == the number of tokens already cached for it.
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

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// `Backend::pick` by the reference: reads the logits back and runs `Pick::choose` on each row.
pub fn pick_on_host<B: Backend>(backend: &mut B, logits: &B::Tensor, picks: &[Pick]) -> Result<Vec<u32>> {
    let data = backend.read(logits)?;
    let vocab = data.len() / picks.len().max(1);
    Ok(picks
        .iter()
        .zip(data.chunks(vocab.max(1)))
        .map(|(p, row)| p.choose(row))
        .collect())
}

pub trait Backend: WeightTypes + Sized {
    /// Activations: [rows, cols], one row per token of the step.
    type Tensor;
    type Rope;
    /// KV storage for every layer that owns its K/V, for a fixed number of sequence slots.
    type Cache: KvCache;

    /// Human-readable description ("cpu (f32, 2 threads)").
    fn describe(&self) -> String;
    /// How cached K and V values are kept.
    fn kv_dtype(&self) -> KvDtype;

    fn upload_matrix(&mut self, w: HostTensor, precision: Precision) -> Result<Self::Matrix>;
    /// Norm weights, biases, sinks: kept in f32 on every backend (they are tiny).
    fn upload_vector(&mut self, w: HostTensor) -> Result<Self::Vector>;
    fn upload_experts(&mut self, w: HostTensor) -> Result<Self::Experts>;
    fn upload_rope(&mut self, table: RopeTable) -> Result<Self::Rope>;
    /// KV storage for `slots` sequences; the full-attention layers' page pool holds `pool_tokens` positions
    /// (default: every slot's whole context, or what the device holds).
    fn new_cache(&mut self, spec: &ModelSpec, slots: usize, pool_tokens: Option<usize>) -> Result<Self::Cache>;

    /// Makes the step's tokens, positions and sequence slots available to the ops that follow.
    fn begin_step(&mut self, step: &Step) -> Result<()>;
    /// Gives the step's sequences the KV pages their new positions need (an error when the pool cannot)
    /// and makes the page tables visible to the ops. After `begin_step`, before the first `attention`.
    fn reserve_kv(&mut self, cache: &mut Self::Cache, step: &Step) -> Result<()>;
    /// Rows of `table` ([vocab, hidden]) for the step's tokens.
    fn embed(&mut self, table: &Self::Matrix) -> Self::Tensor;
    /// RMSNorm over each group of `group` columns (the row width, or head_dim for per-head norms).
    fn rms_norm(&mut self, x: &Self::Tensor, weight: &Self::Vector, eps: f32, group: usize) -> Self::Tensor;
    /// x · Wᵀ + bias.
    fn linear(&mut self, x: &Self::Tensor, w: &Self::Matrix, bias: Option<&Self::Vector>) -> Self::Tensor;
    fn clamp(&mut self, x: &mut Self::Tensor, limit: f32);
    /// Rotates every head_dim slice of x for its token's position.
    fn apply_rope(&mut self, x: &mut Self::Tensor, rope: &Self::Rope, head_dim: usize);
    /// Writes `kv` (when the layer owns its KV) into the cache of `spec.kv_source`, then attends each query
    /// row over the keys its position may see (causal, and within the window of a sliding layer).
    fn attention(
        &mut self,
        cache: &mut Self::Cache,
        spec: &AttnSpec,
        q: &Self::Tensor,
        kv: Option<(&Self::Tensor, &Self::Tensor)>,
        sinks: Option<&Self::Vector>,
    ) -> Self::Tensor;
    /// gate = silu(gate) * up, in place.
    fn swiglu(&mut self, gate: &mut Self::Tensor, up: &Self::Tensor);
    /// Routes each row to its experts on the backend and returns the weighted sum of their outputs.
    /// `layer` labels the routing trace.
    fn moe(&mut self, x: &Self::Tensor, weights: &MoeExperts<Self>, spec: &MoeSpec, layer: usize) -> Self::Tensor;
    /// x[row] *= sigmoid(gate[row]) for a one-column gate.
    fn sigmoid_gate(&mut self, x: &mut Self::Tensor, gate: &Self::Tensor);
    fn add_assign(&mut self, x: &mut Self::Tensor, y: &Self::Tensor);
    /// The listed rows of x (which tokens need logits).
    fn select_rows(&mut self, x: &Self::Tensor, rows: &[usize]) -> Self::Tensor;
    /// Finishes the step (cache bookkeeping) after the last op.
    fn end_step(&mut self, cache: &mut Self::Cache) -> Result<()>;
    /// The one read-back: the tensor's values, row-major.
    fn read(&mut self, x: &Self::Tensor) -> Result<Vec<f32>>;
    /// Chooses a token from each row of `logits` ([picks.len(), vocab]). This default reads the logits back
    /// and runs the reference (`Pick::choose`); a GPU backend chooses on the device and reads back the ids.
    fn pick(&mut self, logits: &Self::Tensor, picks: &[Pick]) -> Result<Vec<u32>> {
        pick_on_host(self, logits, picks)
    }

    /// Whether the ops only record work until a read, so a step can be recorded before its tokens are all
    /// known (`fill_tokens`) and the next step recorded while this one runs (`submit_pick`). The CPU
    /// reference computes as it goes: false.
    fn records_ahead(&self) -> bool {
        false
    }
    /// Writes the tokens of the listed rows (row, id) into the recorded step before it runs. False when
    /// part of the step has already run (a step longer than one submission), so it must be recorded again.
    fn fill_tokens(&mut self, _fills: &[(usize, u32)]) -> bool {
        false
    }
    /// Starts choosing tokens like `pick`: Some(ids) when they are known at once, None when the device is
    /// still running and `collect_pick` will wait for them.
    fn submit_pick(&mut self, logits: &Self::Tensor, picks: &[Pick]) -> Result<Option<Vec<u32>>> {
        self.pick(logits, picks).map(Some)
    }
    /// The ids of the last `submit_pick` that returned None, given the same logits and picks.
    fn collect_pick(&mut self, _logits: &Self::Tensor, _picks: &[Pick]) -> Result<Vec<u32>> {
        crate::bail!("no token choice is in flight")
    }

    /// Bytes the backend holds for weights, caches and activations.
    fn allocated_bytes(&self) -> u64;
    /// Bytes one stored weight of a matrix kept at `precision` takes (what a decode step streams per parameter).
    fn bytes_per_weight(&self, precision: Precision) -> f64;
    /// Copy bandwidth of the memory weights live in, in bytes moved (read + written) per second, measured
    /// by copying a large buffer: the roofline decode is held against.
    fn copy_bandwidth(&mut self) -> Result<f64>;

    /// Start or stop recording every MoE layer's routing (for routing diagnostics; off by default).
    fn trace_routing(&mut self, on: bool);
    /// The routing recorded since the last call, in step and layer order.
    fn take_routing(&mut self) -> Result<Vec<LayerRouting>>;
}

/// How one MoE layer routed the tokens of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRouting {
    pub layer: usize,
    pub n_experts: usize,
    /// [tokens, experts]: the router's probability of every expert (softmax or sigmoid of the logits).
    pub probs: Vec<f32>,
    /// Per token, the chosen experts and their weights.
    pub chosen: Vec<Vec<(usize, f32)>>,
}

/// Sequence bookkeeping every cache offers.
pub trait KvCache {
    /// Tokens cached so far for a sequence slot.
    fn seq_len(&self, slot: usize) -> usize;
    /// Forget a sequence so its slot can start again at position 0.
    fn reset(&mut self, slot: usize);
    /// Whether the slot can continue from position `len` (at most its length) after dropping what follows:
    /// every sliding layer must still hold the window a token at `len` attends to.
    fn can_truncate(&self, slot: usize, len: usize) -> bool;
    /// Keeps the first `len` positions of a slot (see `can_truncate`).
    fn truncate(&mut self, slot: usize, len: usize);
    fn slots(&self) -> usize;
    /// The most positions a sequence may reach: the model's context, bounded by the cache and its pool.
    fn capacity(&self) -> usize;
    /// The full-attention layers' page pool (`kv_pages.rs`) the cache counts its positions in.
    fn pages(&self) -> &kv_pages::PagePool;
}

/// The routed experts of one MoE layer and their router.
pub struct MoeExperts<W: WeightTypes> {
    /// [experts, hidden]
    pub router: W::Matrix,
    /// [experts]
    pub router_bias: Option<W::Vector>,
    /// [experts, 2, intermediate, hidden]: each expert's gate rows, then its up rows (transformers v5's
    /// fused layout), so one weight binding serves both halves.
    pub gate_up: W::Experts,
    /// [experts, hidden, intermediate]
    pub down: W::Experts,
    /// [experts, 2, intermediate] in the same order (GPT-OSS)
    pub gate_up_bias: Option<W::Vector>,
    /// [experts, hidden]
    pub down_bias: Option<W::Vector>,
}
