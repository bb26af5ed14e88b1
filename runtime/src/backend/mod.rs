//! The backend trait: the ops the forward pass (`model.rs`) is written against, once for every backend.
//!
//! Shaped for GPUs as well as the CPU reference:
//! - ops return handles and may only record work; nothing is read back until `read`, so a GPU backend can
//!   encode a whole step into one submission;
//! - routing happens inside `moe`: expert choices never leave the device;
//! - a `Step` holds tokens of several sequences, each at its own position, so one step can mix prefill
//!   chunks and decode tokens (continuous batching);
//! - every op returns a `Result`: an op fails where it fails (a launch, an allocation, a submission), and the
//!   forward pass stops there with that error. Errors a device reports later (wgpu reports validation and
//!   out-of-memory asynchronously) come back from the next op that submits or reads.

pub mod cpu;

use crate::checkpoint::HostTensor;
use crate::dtype::{KvDtype, Precision, WeightDtype};
use crate::error::Result;
use crate::kv::KvCache;
use crate::rope::RopeTable;
use crate::sampler::Pick;
use crate::spec::{AttnSpec, ModelSpec, MoeSpec};
use crate::step::Step;
use crate::tensor::StoredTensor;

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

/// Weights on the host, as family loaders produce them: matrices as stored, vectors in f32.
pub struct Host;

impl WeightTypes for Host {
    type Matrix = StoredTensor;
    type Vector = HostTensor;
    type Experts = StoredTensor;
}

/// The dtype a matrix of `precision` with rows of `cols` values, stored as `stored`, is kept in on a backend
/// asked for `dtype` (`--dtype`; None: as published): f32 for the routers and gates, else `dtype` (by its
/// precision rule, `WeightDtype::fitting` the rows) or the stored one. A backend whose kernels decode only
/// the dtypes `decodes` (None: every dtype) widens any other to f16.
pub fn kept_dtype(
    dtype: Option<WeightDtype>,
    precision: Precision,
    (stored, cols): (WeightDtype, usize),
    decodes: Option<&[WeightDtype]>,
) -> WeightDtype {
    let kept = match (precision, dtype) {
        (Precision::Full, _) => WeightDtype::F32,
        (_, Some(d)) => d.for_precision(precision).fitting(cols).unwrap_or(stored),
        (_, None) => stored,
    };
    match decodes {
        Some(decodes) if !decodes.contains(&kept) => WeightDtype::F16,
        _ => kept,
    }
}

/// What a backend's weights take, by precision and by the dtype they are kept in.
#[derive(Clone, Debug, Default)]
pub struct WeightAccounting {
    /// Per precision (Storage, Table, Full): weights and the bytes they take.
    params: [u64; 3],
    bytes: [u64; 3],
    /// Bytes per dtype kept.
    by_dtype: Vec<(WeightDtype, u64)>,
}

impl WeightAccounting {
    fn index(precision: Precision) -> usize {
        match precision {
            Precision::Storage => 0,
            Precision::Table => 1,
            Precision::Full => 2,
        }
    }

    /// Counts `params` weights kept at `precision` in `dtype`, taking `bytes`.
    pub fn add(&mut self, precision: Precision, dtype: WeightDtype, params: usize, bytes: usize) {
        let i = Self::index(precision);
        self.params[i] += params as u64;
        self.bytes[i] += bytes as u64;
        match self.by_dtype.iter_mut().find(|(d, _)| *d == dtype) {
            Some((_, b)) => *b += bytes as u64,
            None => self.by_dtype.push((dtype, bytes as u64)),
        }
    }

    /// Bytes one weight of a matrix kept at `precision` takes on average (what a decode step streams per
    /// parameter); 0 before any is counted.
    pub fn bytes_per_weight(&self, precision: Precision) -> f64 {
        let i = Self::index(precision);
        self.bytes[i] as f64 / self.params[i].max(1) as f64
    }

    pub fn total_bytes(&self) -> u64 {
        self.bytes.iter().sum()
    }

    /// The dtype most of the bytes are kept in ("bf16"; "no" before any weight): how a backend describes its
    /// weights.
    pub fn describe(&self) -> &'static str {
        self.by_dtype
            .iter()
            .max_by_key(|&&(_, bytes)| bytes)
            .map_or("no", |(d, _)| d.name())
    }
}

/// Largest head the GPU attention kernels hold in workgroup or shared memory (`attention_common.wgsl`,
/// `attention.cu`).
pub const MAX_HEAD_DIM: usize = 256;
/// Most routed experts the GPU routers select among (`router.wgsl`, `moe_group.wgsl`, `moe.cu`).
pub const MAX_EXPERTS: usize = 1024;

/// A GPU backend's kernel limits against a model: an error naming the first layer past them.
pub fn check_kernel_limits(spec: &ModelSpec) -> Result<()> {
    for (i, l) in spec.layers.iter().enumerate() {
        if l.attn.head_dim > MAX_HEAD_DIM {
            crate::bail!(
                "layer {i}: head_dim {} is above the {MAX_HEAD_DIM} the attention kernels hold",
                l.attn.head_dim
            );
        }
        if let crate::spec::FfnSpec::Moe(m) = &l.ffn {
            if m.n_experts > MAX_EXPERTS {
                crate::bail!(
                    "layer {i}: {} experts is above the routing kernels' {MAX_EXPERTS}",
                    m.n_experts
                );
            }
        }
    }
    Ok(())
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

    /// A weight matrix as stored; the backend keeps it in `kept_dtype` of its dtype, `precision` and the stored
    /// dtype (or, on a GPU backend, the nearest dtype its kernels decode).
    fn upload_matrix(&mut self, w: StoredTensor, precision: Precision) -> Result<Self::Matrix>;
    /// Norm weights, biases, sinks: kept in f32 on every backend (they are tiny).
    fn upload_vector(&mut self, w: HostTensor) -> Result<Self::Vector>;
    fn upload_experts(&mut self, w: StoredTensor) -> Result<Self::Experts>;
    fn upload_rope(&mut self, table: RopeTable) -> Result<Self::Rope>;
    /// KV storage for `slots` sequences; the full-attention layers' page pool holds `pool_tokens` positions
    /// (default: every slot's whole context, or what the device holds). The cache embeds `kv::KvSlots`.
    fn new_cache(&mut self, spec: &ModelSpec, slots: usize, pool_tokens: Option<usize>) -> Result<Self::Cache>;

    /// Makes the step's tokens, positions and sequence slots available to the ops that follow.
    fn begin_step(&mut self, step: &Step) -> Result<()>;
    /// Gives the step's sequences the KV pages their new positions need (an error when the pool cannot)
    /// and makes the page tables visible to the ops. After `begin_step`, before the first `attention`.
    fn reserve_kv(&mut self, cache: &mut Self::Cache, step: &Step) -> Result<()>;
    /// Rows of `table` ([vocab, hidden]) for the step's tokens.
    fn embed(&mut self, table: &Self::Matrix) -> Result<Self::Tensor>;
    /// RMSNorm over each group of `group` columns (the row width, or head_dim for per-head norms).
    fn rms_norm(&mut self, x: &Self::Tensor, weight: &Self::Vector, eps: f32, group: usize) -> Result<Self::Tensor>;
    /// x · Wᵀ + bias.
    fn linear(&mut self, x: &Self::Tensor, w: &Self::Matrix, bias: Option<&Self::Vector>) -> Result<Self::Tensor>;
    fn clamp(&mut self, x: &mut Self::Tensor, limit: f32) -> Result<()>;
    /// Rotates every head_dim slice of x for its token's position.
    fn apply_rope(&mut self, x: &mut Self::Tensor, rope: &Self::Rope, head_dim: usize) -> Result<()>;
    /// Writes `kv` (when the layer owns its KV) into the cache of `spec.kv_source`, then attends each query
    /// row over the keys its position may see (causal, and within the window of a sliding layer).
    fn attention(
        &mut self,
        cache: &mut Self::Cache,
        spec: &AttnSpec,
        q: &Self::Tensor,
        kv: Option<(&Self::Tensor, &Self::Tensor)>,
        sinks: Option<&Self::Vector>,
    ) -> Result<Self::Tensor>;
    /// gate = silu(gate) * up, in place.
    fn swiglu(&mut self, gate: &mut Self::Tensor, up: &Self::Tensor) -> Result<()>;
    /// Routes each row to its experts on the backend and returns the weighted sum of their outputs.
    /// `layer` labels the routing trace.
    fn moe(
        &mut self,
        x: &Self::Tensor,
        weights: &MoeExperts<Self>,
        spec: &MoeSpec,
        layer: usize,
    ) -> Result<Self::Tensor>;
    /// x[row] *= sigmoid(gate[row]) for a one-column gate.
    fn sigmoid_gate(&mut self, x: &mut Self::Tensor, gate: &Self::Tensor) -> Result<()>;
    fn add_assign(&mut self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// The listed rows of x (which tokens need logits).
    fn select_rows(&mut self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;
    /// Finishes the step after its last op, once the cache counts its positions (`KvSlots::advance`).
    fn end_step(&mut self, _cache: &mut Self::Cache) -> Result<()> {
        Ok(())
    }
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
