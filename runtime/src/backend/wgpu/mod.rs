//! The wgpu backend: every op a WGSL kernel (`shaders/`), a whole step recorded as one list of dispatches
//! and submitted in one compute pass, with no CPU read until `read`. Routing stays on the GPU: the router
//! writes expert ids to a buffer the expert kernels read. Steps of many tokens (prefill) use tiled GEMMs:
//! dense layers through `matmul_tiled.wgsl`, routed experts grouped by expert on the GPU then one GEMM per
//! expert (`moe_group.wgsl`, `moe_experts_tiled.wgsl`, `moe_combine.wgsl`).
//!
//! Memory: activations come from a pool of power-of-two buffers reused across steps (no allocation once
//! the shapes have been seen); kernel parameters go through one uniform ring with dynamic offsets; bind
//! groups are cached by the buffers they bind. KV caches are allocated at start-up: sliding layers hold a
//! ring of window + one prefill chunk of positions per slot (`kv_pages::Ring`), full layers one pool of pages
//! shared by all slots (`kv_pages.rs`), KV-reusing layers nothing (they bind their source layer's buffers).
//! K and V are kept in f16 (`KvDtype`), pairs packed in u32 words that any adapter reads; f32 or FP8 E4M3 on
//! request.

pub mod gpu;
pub mod kernels;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use super::kv_pages::{can_resume, paged_kv_dims, PagePool, Ring, KV_PAGE};
use super::{Backend, KvCache, KvDtype, LayerRouting, MoeExperts, Precision, Step, WeightDtype, WeightTypes};
use crate::bail;
use crate::checkpoint::HostTensor;
use crate::error::{Error, Result};
use crate::rope::RopeTable;
use crate::sampler::Pick;
use crate::spec::{AttnSpec, ExpertActivation, ModelSpec, MoeSpec, RouterOrder, Scoring, Selection};
use gpu::Gpu;
use kernels::{Kernel, KernelFeatures, Kernels, Op, WeightFormat, PARAMS_STRIDE};

/// Most tokens one step may hold (the prefill chunk of `generate`).
pub const MAX_STEP_TOKENS: usize = crate::generate::PREFILL_CHUNK;

/// Largest head_dim the attention kernel holds in shared memory.
const MAX_HEAD_DIM: usize = 256;
/// Split attention: steps of at most this many query rows (decode), over visible ranges longer than
/// SPLIT_MIN_RANGE positions, in chunks of at least SPLIT_MIN_CHUNK positions and at most SPLIT_MAX_CHUNKS
/// chunks per (head, row).
const SPLIT_MAX_ROWS: usize = 8;
/// Query rows per workgroup of the tiled prefill attention (`shaders/attention_tiled.wgsl`), used for steps
/// of more than SPLIT_MAX_ROWS rows on heads of at most TILED_ATTENTION_MAX_DIM dimensions.
const TILED_ATTENTION_ROWS: usize = 16;
const TILED_ATTENTION_MAX_DIM: usize = 128;
const SPLIT_MIN_RANGE: usize = 256;
const SPLIT_MIN_CHUNK: usize = 128;
const SPLIT_MAX_CHUNKS: usize = 32;
/// Most routed experts the router's selection mask covers.
const MAX_EXPERTS: usize = 1024;
/// Steps from this many tokens use the tiled matmul (`shaders/matmul_tiled.wgsl`). On lavapipe its 64-token
/// tiles overtake the 4-token kernel between 8 and 16 tokens.
const TILED_MIN_TOKENS: usize = 16;
/// Steps from this many tokens run the routed experts grouped by expert (`shaders/moe_experts_tiled.wgsl`).
/// On lavapipe (16 experts, 4 per token) the grouped path overtakes the per-(token, slot) one near 24 tokens.
const GROUPED_MOE_MIN_TOKENS: usize = 24;

/// A device buffer with an id for bind-group caching.
pub struct GpuBuffer {
    pub buffer: wgpu::Buffer,
    pub id: u64,
}

type BufferPool = Arc<Mutex<HashMap<u64, Vec<Arc<GpuBuffer>>>>>;

/// A pooled buffer that goes back to the pool when the tensor holding it is dropped.
pub struct Pooled {
    buf: Arc<GpuBuffer>,
    pool: BufferPool,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let size = self.buf.buffer.size();
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(size)
            .or_default()
            .push(self.buf.clone());
    }
}

/// Activations: `rows` x `cols` f32 on the device.
pub struct GpuTensor {
    mem: Pooled,
    pub rows: usize,
    pub cols: usize,
}

/// A weight matrix (or stacked experts, rows = experts x out) in one of the weight formats, in one buffer or,
/// when larger than one binding may hold, in parts of whole rows (whole experts for stacked experts).
pub struct GpuMatrix {
    parts: Vec<WeightPart>,
    rows: usize,
    cols: usize,
    format: WeightFormat,
}

/// Rows first_row.. of a matrix (experts first_row / rows_per_expert.. of stacked experts).
struct WeightPart {
    buf: Arc<GpuBuffer>,
    first_row: usize,
    rows: usize,
}

/// A vector kept in f32 (norm weights, biases, sinks).
pub struct GpuVector {
    buf: Arc<GpuBuffer>,
}

pub struct GpuRope {
    inv_freq: Arc<GpuBuffer>,
    attention_scale: f32,
}

struct LayerKv {
    k: Arc<GpuBuffer>,
    v: Arc<GpuBuffer>,
    /// Sliding layers' rings; full layers are paged from `WgpuCache::pages`.
    ring: Option<Ring>,
}

pub struct WgpuCache {
    /// Tells caches apart, so the backend knows whose page tables it last uploaded.
    id: u64,
    layers: Vec<Option<LayerKv>>,
    lens: Vec<usize>,
    context: usize,
    pages: PagePool,
    /// Page table entries per slot: enough for `context` positions.
    pages_per_seq: usize,
}

impl KvCache for WgpuCache {
    fn seq_len(&self, slot: usize) -> usize {
        self.lens[slot]
    }
    fn reset(&mut self, slot: usize) {
        // Positions are rewritten as the sequence grows again; nothing to clear on the device.
        self.lens[slot] = 0;
        self.pages.shrink(slot, 0);
    }
    fn slots(&self) -> usize {
        self.lens.len()
    }
    fn can_truncate(&self, slot: usize, len: usize) -> bool {
        can_resume(
            self.layers.iter().flatten().filter_map(|l| l.ring),
            self.lens[slot],
            len,
        )
    }
    fn truncate(&mut self, slot: usize, len: usize) {
        // Positions from `len` on are rewritten as the sequence grows again.
        self.lens[slot] = len;
        self.pages.shrink(slot, len);
    }
    fn capacity(&self) -> usize {
        self.context
    }
    fn pages(&self) -> &PagePool {
        &self.pages
    }
}

struct Dispatch {
    kernel: Arc<Kernel>,
    bind_group: Arc<wgpu::BindGroup>,
    params_offset: u32,
    groups: [u32; 3],
}

/// Routing buffers of one MoE layer kept for the trace.
struct TracedRouting {
    layer: usize,
    n_experts: usize,
    max_experts: usize,
    probs: GpuTensor,
    chosen: GpuTensor,
    weights: GpuTensor,
    counts: GpuTensor,
}

pub struct WgpuBackend {
    gpu: Gpu,
    kernels: Kernels,
    dtype: WeightDtype,
    /// Longest sequence a cache holds.
    context: usize,
    pool: BufferPool,
    next_id: u64,
    params: Vec<u8>,
    params_ring: Arc<GpuBuffer>,
    bind_groups: HashMap<(u32, Vec<u64>), Arc<wgpu::BindGroup>>,
    dispatches: Vec<Dispatch>,
    /// Step inputs: token ids, positions, sequence slots, and the rows that need logits.
    step_tokens: Arc<GpuBuffer>,
    step_positions: Arc<GpuBuffer>,
    step_seqs: Arc<GpuBuffer>,
    step_rows: Arc<GpuBuffer>,
    /// Runs of up to TILED_ATTENTION_ROWS consecutive tokens of one sequence, as (first row, rows) pairs,
    /// for the tiled prefill attention; `step_blocks` of them this step.
    step_block_list: Arc<GpuBuffer>,
    step_blocks: usize,
    /// The current step as the CPU knows it (for cache bookkeeping).
    step: Step,
    /// Bound where a kernel's optional input is absent.
    dummy: Arc<GpuBuffer>,
    staging: Option<wgpu::Buffer>,
    routing: Option<Vec<TracedRouting>>,
    /// An error from a submission made while recording, returned by the next `end_step` or `read`.
    deferred_error: Option<Error>,
    /// Bytes of every buffer created (weights, caches, activation pool, staging).
    allocated: u64,
    /// Most bytes one buffer binding may hold; larger weights are split.
    max_binding: u64,
    /// Weights uploaded in more than one part.
    split_weights: usize,
    /// Buffers the host writes while a step is recorded (pooled ones may still be in use by it), by name.
    dedicated: HashMap<&'static str, Arc<GpuBuffer>>,
    /// The cache whose page tables `step_seqs` holds.
    tables_of: Option<u64>,
    /// Part of the current step was submitted while it was recorded (it outgrew the params ring): its
    /// tokens can no longer be filled in late.
    submitted_mid_step: bool,
    /// The chosen ids on their way back (`submit_pick`).
    pick_read: Option<PendingRead>,
}

/// A copy to the staging buffer that was submitted and is being mapped.
struct PendingRead {
    size: u64,
    len: u64,
    mapped: std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

impl WgpuBackend {
    /// Opens the best adapter; weights kept in `dtype`, caches sized for `context` tokens.
    pub fn new(dtype: WeightDtype, context: usize) -> Result<Self> {
        Self::with_gpu(Gpu::open_default()?, dtype, context)
    }

    pub fn with_gpu(gpu: Gpu, dtype: WeightDtype, context: usize) -> Result<Self> {
        let gpu_max_binding = gpu.max_binding();
        let features = KernelFeatures::of(&gpu.device);
        let mut next_id = 0;
        let mut make = |size: u64, usage: wgpu::BufferUsages| {
            next_id += 1;
            Arc::new(GpuBuffer {
                buffer: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size,
                    usage,
                    mapped_at_creation: false,
                }),
                id: next_id,
            })
        };
        let step_bytes = (MAX_STEP_TOKENS * 4) as u64;
        let uniform = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
        let backend = WgpuBackend {
            params_ring: make(64 * PARAMS_STRIDE, uniform),
            step_tokens: make(step_bytes, STORAGE),
            step_positions: make(step_bytes, STORAGE),
            step_seqs: make(step_bytes, STORAGE),
            step_rows: make(step_bytes, STORAGE),
            step_block_list: make(2 * step_bytes, STORAGE),
            dummy: make(16, STORAGE),
            next_id,
            gpu,
            kernels: Kernels::new(features, KvDtype::F16),
            dtype,
            context,
            pool: Arc::new(Mutex::new(HashMap::new())),
            params: Vec::new(),
            bind_groups: HashMap::new(),
            dispatches: Vec::new(),
            step: Step::default(),
            staging: None,
            routing: None,
            deferred_error: None,
            allocated: 0,
            max_binding: gpu_max_binding,
            split_weights: 0,
            dedicated: HashMap::new(),
            step_blocks: 0,
            tables_of: None,
            submitted_mid_step: false,
            pick_read: None,
        };
        backend.gpu.check()?;
        Ok(backend)
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Lowers the largest binding weights are uploaded in (WebGPU's default is 128 MiB), so the split path
    /// can be exercised on any adapter. Affects weights uploaded afterwards.
    pub fn limit_binding(&mut self, bytes: u64) {
        self.max_binding = self.max_binding.min(bytes);
    }

    /// The optional features the kernels use.
    pub fn kernel_features(&self) -> KernelFeatures {
        self.kernels.features()
    }

    /// Builds every kernel in its portable form (no subgroups, no shader-f16), as on an adapter without
    /// those features: how the fallbacks are tested on adapters that have them. Call before any op.
    pub fn use_portable_kernels(&mut self) {
        self.kernels = Kernels::new(KernelFeatures::default(), self.kernels.kv_dtype());
        self.bind_groups.clear();
    }

    /// Keeps cached K and V in `kv` (f16 unless told) in caches made afterwards. Call before any op.
    pub fn set_kv_dtype(&mut self, kv: KvDtype) {
        self.kernels = Kernels::new(self.kernels.features(), kv);
        self.bind_groups.clear();
    }

    /// How many weights were uploaded in more than one part.
    pub fn split_weights(&self) -> usize {
        self.split_weights
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A device buffer holding `bytes`, or an error when it exceeds what one binding may hold.
    fn upload_bytes(&mut self, bytes: &[u8], what: &str) -> Result<Arc<GpuBuffer>> {
        let max = self.gpu.max_binding();
        if bytes.len() as u64 > max {
            bail!(
                "{what} takes {} bytes, more than one buffer binding holds on {} ({max})",
                bytes.len(),
                self.gpu.name()
            );
        }
        // Zero-length bindings are invalid; pad to one word.
        let contents: &[u8] = if bytes.is_empty() { &[0; 4] } else { bytes };
        let buffer = self.gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents,
            usage: STORAGE,
        });
        self.allocated += contents.len() as u64;
        let id = self.new_id();
        Ok(Arc::new(GpuBuffer { buffer, id }))
    }

    /// The buffer named `name`, at least `bytes` long (replaced by a larger one when needed).
    fn dedicated(&mut self, name: &'static str, bytes: u64) -> Arc<GpuBuffer> {
        if let Some(b) = self.dedicated.get(name).filter(|b| b.buffer.size() >= bytes) {
            return b.clone();
        }
        let size = bytes.max(16).next_power_of_two();
        let buffer = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(name),
            size,
            usage: STORAGE,
            mapped_at_creation: false,
        });
        self.allocated += size;
        let id = self.new_id();
        let b = Arc::new(GpuBuffer { buffer, id });
        self.dedicated.insert(name, b.clone());
        b
    }

    /// An activation tensor from the pool (sizes rounded up to a power of two so shapes share buffers).
    fn tensor(&mut self, rows: usize, cols: usize) -> GpuTensor {
        let bytes = ((rows * cols * 4).max(16) as u64).next_power_of_two();
        let reused = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&bytes)
            .and_then(Vec::pop);
        let buf = match reused {
            Some(b) => b,
            None => {
                let buffer = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: bytes,
                    usage: STORAGE,
                    mapped_at_creation: false,
                });
                self.allocated += bytes;
                let id = self.new_id();
                Arc::new(GpuBuffer { buffer, id })
            }
        };
        GpuTensor {
            mem: Pooled {
                buf,
                pool: self.pool.clone(),
            },
            rows,
            cols,
        }
    }

    /// Records one dispatch: params into the ring, bind group from the cache.
    fn dispatch(
        &mut self,
        op: Op,
        format: Option<WeightFormat>,
        params: &[u32],
        buffers: &[&Arc<GpuBuffer>],
        groups: [u32; 3],
    ) {
        if (self.params.len() as u64 + PARAMS_STRIDE) > self.params_ring.buffer.size() {
            // The ring is sized for a whole step; a longer one is submitted in parts (still no read-back).
            if let Err(e) = self.flush() {
                self.deferred_error.get_or_insert(e);
            }
            self.submitted_mid_step = true;
        }
        let kernel = self.kernels.get(&self.gpu.device, op, format);
        debug_assert_eq!(kernel.bindings, buffers.len() + 1, "{op:?}: binding count");
        let offset = self.params.len();
        self.params.extend(params.iter().flat_map(|w| w.to_le_bytes()));
        self.params.resize(offset + PARAMS_STRIDE as usize, 0);
        let ring = self.params_ring.clone();
        let bind_group = self.bind_group(&kernel, &ring, buffers);
        self.dispatches.push(Dispatch {
            kernel,
            bind_group,
            params_offset: offset as u32,
            groups,
        });
    }

    fn bind_group(
        &mut self,
        kernel: &Kernel,
        ring: &Arc<GpuBuffer>,
        buffers: &[&Arc<GpuBuffer>],
    ) -> Arc<wgpu::BindGroup> {
        let key = (
            kernel.id,
            std::iter::once(ring.id)
                .chain(buffers.iter().map(|b| b.id))
                .collect::<Vec<_>>(),
        );
        if let Some(bg) = self.bind_groups.get(&key) {
            return bg.clone();
        }
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &ring.buffer,
                offset: 0,
                size: wgpu::BufferSize::new(PARAMS_STRIDE),
            }),
        }];
        entries.extend(buffers.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource: b.buffer.as_entire_binding(),
        }));
        let bg = Arc::new(self.gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &kernel.layout,
            entries: &entries,
        }));
        self.bind_groups.insert(key, bg.clone());
        bg
    }

    /// Submits everything recorded so far as one compute pass.
    fn flush(&mut self) -> Result<()> {
        if self.dispatches.is_empty() {
            return Ok(());
        }
        self.gpu.queue.write_buffer(&self.params_ring.buffer, 0, &self.params);
        let mut encoder = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("step"),
                timestamp_writes: None,
            });
            for d in &self.dispatches {
                pass.set_pipeline(&d.kernel.pipeline);
                pass.set_bind_group(0, d.bind_group.as_ref(), &[d.params_offset]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
        }
        self.gpu.queue.submit([encoder.finish()]);
        self.dispatches.clear();
        self.params.clear();
        self.gpu.check()
    }
}

/// How split (flash-decoding) attention divides the visible key range of each query row: chunks of
/// `chunk_len` positions, `chunks` of them this step, at most `max_chunks` for the layer.
struct SplitAttention {
    chunk_len: usize,
    chunks: usize,
    max_chunks: usize,
}

/// Split attention for a step of `rows` query rows up to position `max_pos`, on a layer whose rows see at
/// most `layer_range` keys: only for decode-sized steps (one workgroup per (head, row) would leave the GPU
/// idle) over ranges long enough to fill several chunks. Chunks grow past SPLIT_MIN_CHUNK with the layer's
/// range so there are at most SPLIT_MAX_CHUNKS, which bounds the partials buffer.
fn split_attention(rows: usize, max_pos: usize, layer_range: usize) -> Option<SplitAttention> {
    let range = layer_range.min(max_pos + 1);
    if rows > SPLIT_MAX_ROWS || range <= SPLIT_MIN_RANGE {
        return None;
    }
    let chunk_len = layer_range
        .div_ceil(SPLIT_MAX_CHUNKS)
        .next_multiple_of(64)
        .max(SPLIT_MIN_CHUNK);
    Some(SplitAttention {
        chunk_len,
        chunks: range.div_ceil(chunk_len),
        max_chunks: layer_range.div_ceil(chunk_len),
    })
}

/// The router's outputs on the device, `max_k` slots per token: expert ids, their weights, and how many.
struct Routed {
    chosen: Arc<GpuBuffer>,
    weights: Arc<GpuBuffer>,
    counts: Arc<GpuBuffer>,
    max_k: usize,
}

/// (activation, alpha, limit) as the MoE kernels take them: 0 SwiGLU, 1 GPT-OSS clamped SwiGLU.
fn activation_params(spec: &MoeSpec) -> (u32, f32, f32) {
    match spec.activation {
        ExpertActivation::SwiGlu => (0, 0.0, 0.0),
        ExpertActivation::ClampedSwiGlu { alpha, limit } => (1, alpha, limit),
    }
}

/// The most 64-row tiles per-expert lists of `assignments` rows can need: every list may end in a partial one.
fn max_expert_tiles(assignments: usize, experts: usize) -> usize {
    assignments.div_ceil(64) + experts.min(assignments)
}

/// The step's rows as (first row, rows) blocks of consecutive tokens of one sequence, at most
/// TILED_ATTENTION_ROWS each: the workgroups of the tiled prefill attention.
fn attention_blocks(step: &Step) -> Vec<u32> {
    let mut blocks: Vec<u32> = Vec::new();
    for r in 0..step.len() {
        let continues = r > 0
            && step.seqs[r] == step.seqs[r - 1]
            && step.positions[r] == step.positions[r - 1] + 1
            && blocks.last().is_some_and(|&n| (n as usize) < TILED_ATTENTION_ROWS);
        match blocks.last_mut() {
            Some(n) if continues => *n += 1,
            _ => blocks.extend([r as u32, 1]),
        }
    }
    blocks
}

/// Workgroups for a grid-stride loop over `n` elements (64 per workgroup).
/// Values in one word of a KV cache buffer (`KV_PER_WORD` of the `shaders/kv_*.wgsl` files).
fn kv_values_per_word(kv: KvDtype) -> usize {
    match kv {
        KvDtype::F32 | KvDtype::F16 => 2,
        KvDtype::Fp8 => 4,
    }
}

fn groups_1d(n: usize) -> [u32; 3] {
    [n.div_ceil(64).clamp(1, 65535) as u32, 1, 1]
}

fn packed_halves(values: &[f32], to_bits: impl Fn(f32) -> u16) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(values.len().div_ceil(2) * 4);
    for pair in values.chunks(2) {
        let lo = to_bits(pair[0]) as u32;
        let hi = pair.get(1).map_or(0, |&v| to_bits(v) as u32);
        bytes.extend((lo | (hi << 16)).to_le_bytes());
    }
    bytes
}

/// The buffer `shaders/weights_fp8.wgsl` reads: header, block scales, then the E4M3 codes.
fn fp8_buffer(data: &[f32], shape: &[usize]) -> Vec<u8> {
    let grid = crate::fp8::BlockGrid::of(shape);
    let (codes, scales) = crate::fp8::quantize(data, grid);
    let header = [
        grid.rows as u32,
        grid.col_blocks() as u32,
        grid.row_blocks() as u32,
        (4 + scales.len()) as u32,
    ];
    let mut bytes = Vec::with_capacity(16 + 4 * scales.len() + codes.len().next_multiple_of(4));
    bytes.extend(header.iter().flat_map(|v| v.to_le_bytes()));
    bytes.extend(scales.iter().flat_map(|v| v.to_le_bytes()));
    bytes.extend(&codes);
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes
}

impl WeightTypes for WgpuBackend {
    type Matrix = GpuMatrix;
    type Vector = GpuVector;
    type Experts = GpuMatrix;
}

impl WgpuBackend {
    /// Uploads `w` in `dtype`, split into parts of whole `unit`s of rows (at most `max_rows` each) when it is
    /// larger than one binding.
    fn upload_weight(&mut self, w: HostTensor, dtype: WeightDtype, unit: usize, max_rows: usize) -> Result<GpuMatrix> {
        let cols = *w.shape.last().unwrap_or(&1);
        let rows = w.data.len() / cols.max(1);
        let format = match dtype {
            WeightDtype::F32 => WeightFormat::F32,
            WeightDtype::F16 => WeightFormat::F16,
            WeightDtype::Bf16 => WeightFormat::Bf16,
            WeightDtype::Fp8 => WeightFormat::Fp8,
        };
        // Bytes a row may take at most in any format (FP8 counts a scale per row, 128x what it needs).
        let row_bytes = (cols as f64 * dtype.bytes()).ceil() as u64 + 8;
        let max = self.max_binding.saturating_sub(64);
        let units_per_part = ((max / (row_bytes * unit as u64).max(1)) as usize).min(max_rows / unit);
        if units_per_part == 0 {
            bail!(
                "{unit} rows of {cols} columns (the smallest part a {rows}x{cols} weight splits into) take more than one buffer binding holds on {} ({} bytes)",
                self.gpu.name(),
                self.max_binding
            );
        }
        let part_rows = units_per_part * unit;
        let mut parts = Vec::with_capacity(rows.div_ceil(part_rows));
        for first_row in (0..rows).step_by(part_rows) {
            let n = part_rows.min(rows - first_row);
            let data = &w.data[first_row * cols..(first_row + n) * cols];
            // A part keeps the tensor's shape with fewer leading rows, so FP8 blocks stay where they were.
            let mut shape = w.shape.clone();
            shape[0] = shape[0] * n / rows;
            let bytes = match dtype {
                WeightDtype::F32 => bytemuck::cast_slice(data).to_vec(),
                WeightDtype::F16 => packed_halves(data, |v| half::f16::from_f32(v).to_bits()),
                WeightDtype::Bf16 => packed_halves(data, |v| half::bf16::from_f32(v).to_bits()),
                WeightDtype::Fp8 => fp8_buffer(data, &shape),
            };
            let buf = self.upload_bytes(&bytes, &format!("a {n}x{cols} weight"))?;
            parts.push(WeightPart {
                buf,
                first_row,
                rows: n,
            });
        }
        self.split_weights += (parts.len() > 1) as usize;
        Ok(GpuMatrix {
            parts,
            rows,
            cols,
            format,
        })
    }

    /// Runs what was recorded and reads `len` bytes of `buf` back.
    fn read_bytes(&mut self, buf: &GpuBuffer, len: u64) -> Result<Vec<u8>> {
        self.flush()?;
        if let Some(e) = self.deferred_error.take() {
            return Err(e);
        }
        let read = self.start_read(buf, len);
        self.finish_read(read)
    }

    /// Submits a copy of `len` bytes of `buf` to the staging buffer and starts mapping it. Submits nothing
    /// else: dispatches recorded since the last flush stay recorded.
    fn start_read(&mut self, buf: &GpuBuffer, len: u64) -> PendingRead {
        let size = len.max(4).next_multiple_of(4);
        if self.staging.as_ref().is_none_or(|s| s.size() < size) {
            self.staging = Some(self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("read-back"),
                size: size.next_power_of_two(),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let staging = self.staging.as_ref().expect("created above");
        let mut encoder = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read") });
        encoder.copy_buffer_to_buffer(&buf.buffer, 0, staging, 0, size);
        self.gpu.queue.submit([encoder.finish()]);
        let (tx, mapped) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, 0..size, move |r| {
            let _ = tx.send(r);
        });
        PendingRead { size, len, mapped }
    }

    /// Waits for a read to land and returns its bytes.
    fn finish_read(&mut self, read: PendingRead) -> Result<Vec<u8>> {
        self.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::msg(format!("waiting for {}: {e}", self.gpu.name())))?;
        self.gpu.check()?;
        match read.mapped.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("reading results back from {}: {e}", self.gpu.name()),
            Err(_) => bail!("reading results back from {}: the device went away", self.gpu.name()),
        }
        let staging = self.staging.as_ref().expect("a read is in flight");
        let bytes = staging
            .get_mapped_range(0..read.size)
            .map_err(|e| Error::msg(e.to_string()))?[..read.len as usize]
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    fn read_u32(&mut self, t: &GpuTensor) -> Result<Vec<u32>> {
        let bytes = self.read_bytes(&t.mem.buf.clone(), (t.rows * t.cols * 4) as u64)?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// The routed experts one (token, slot) at a time: each workgroup reads its expert's rows itself.
    fn moe_per_token(&mut self, x: &GpuTensor, w: &MoeExperts<Self>, spec: &MoeSpec, r: &Routed) -> GpuTensor {
        let (t, h, i, e, max_k) = (x.rows, x.cols, spec.expert_intermediate, spec.n_experts, r.max_k);
        let act = self.tensor(t * max_k, i);
        let (activation, alpha, limit) = activation_params(spec);
        let gb = w.gate_up_bias.as_ref().map_or(self.dummy.clone(), |b| b.buf.clone());
        let ab = act.mem.buf.clone();
        let gate_up_rows = w.gate_up.rows / e;
        for part in &w.gate_up.parts {
            let params = [
                h as u32,
                i as u32,
                max_k as u32,
                activation,
                alpha.to_bits(),
                limit.to_bits(),
                w.gate_up_bias.is_some() as u32,
                (part.first_row / gate_up_rows) as u32,
                (part.rows / gate_up_rows) as u32,
                0,
                0,
                0,
            ];
            let xb = x.mem.buf.clone();
            self.dispatch(
                Op::MoeGateUp,
                Some(w.gate_up.format),
                &params,
                &[&part.buf, &xb, &r.chosen, &r.counts, &gb, &ab],
                [i.div_ceil(4) as u32, max_k as u32, t as u32],
            );
        }

        let out = self.tensor(t, h);
        let db = w.down_bias.as_ref().map_or(self.dummy.clone(), |b| b.buf.clone());
        let ob = out.mem.buf.clone();
        let down_rows = w.down.rows / e;
        for (n, part) in w.down.parts.iter().enumerate() {
            let params = [
                h as u32,
                i as u32,
                max_k as u32,
                w.down_bias.is_some() as u32,
                (part.first_row / down_rows) as u32,
                (part.rows / down_rows) as u32,
                (n > 0) as u32,
                0,
            ];
            self.dispatch(
                Op::MoeDown,
                Some(w.down.format),
                &params,
                &[&part.buf, &ab, &r.chosen, &r.weights, &r.counts, &db, &ob],
                [h.div_ceil(4) as u32, t as u32, 1],
            );
        }
        out
    }

    /// The routed experts grouped by expert (prefill): lists of each expert's assignments built on the GPU,
    /// a tiled GEMM per expert for gate/up and for down, then the weighted sum per token.
    fn moe_grouped(&mut self, x: &GpuTensor, w: &MoeExperts<Self>, spec: &MoeSpec, r: &Routed) -> GpuTensor {
        let (t, h, i, e, max_k) = (x.rows, x.cols, spec.expert_intermediate, spec.n_experts, r.max_k);
        let assignments = t * max_k;
        let groups = self.tensor(e + 1 + assignments + 2 * max_expert_tiles(assignments, e), 1);
        let params = [t, max_k, e, max_expert_tiles(assignments, e)].map(|v| v as u32);
        let gb = groups.mem.buf.clone();
        self.dispatch(Op::MoeGroup, None, &params, &[&r.chosen, &r.counts, &gb], [1, 1, 1]);
        let act = self.tensor(assignments, i);
        let shape = [t, max_k, e];
        let gate_up_bias = w.gate_up_bias.as_ref();
        self.experts_tiled(
            &w.gate_up,
            gate_up_bias,
            x,
            &groups,
            &act,
            shape,
            Some(activation_params(spec)),
        );
        let expert_out = self.tensor(assignments, h);
        self.experts_tiled(&w.down, w.down_bias.as_ref(), &act, &groups, &expert_out, shape, None);
        let out = self.tensor(t, h);
        let bufs = [&expert_out.mem.buf.clone(), &r.weights, &r.counts, &out.mem.buf.clone()];
        let params = [t as u32, h as u32, max_k as u32, 0];
        self.dispatch(Op::MoeCombine, None, &params, &bufs, groups_1d(t * h));
        out
    }

    /// One GEMM of `shaders/moe_experts_tiled.wgsl` per weight part: gate/up with its activation when
    /// `activation` is given, else down. `shape` is (tokens, slots per token, experts).
    #[allow(clippy::too_many_arguments)]
    fn experts_tiled(
        &mut self,
        w: &GpuMatrix,
        bias: Option<&GpuVector>,
        input: &GpuTensor,
        groups: &GpuTensor,
        out: &GpuTensor,
        [t, max_k, e]: [usize; 3],
        activation: Option<(u32, f32, f32)>,
    ) {
        let rows_per_expert = w.rows / e;
        let (act, alpha, limit) = activation.unwrap_or((0, 0.0, 0.0));
        let b = bias.map_or(self.dummy.clone(), |b| b.buf.clone());
        let (ib, gb, ob) = (input.mem.buf.clone(), groups.mem.buf.clone(), out.mem.buf.clone());
        for part in &w.parts {
            let params = [
                t as u32,
                max_k as u32,
                e as u32,
                w.cols as u32,
                rows_per_expert as u32,
                activation.is_some() as u32,
                act,
                alpha.to_bits(),
                limit.to_bits(),
                bias.is_some() as u32,
                (part.first_row / rows_per_expert) as u32,
                (part.rows / rows_per_expert) as u32,
            ];
            self.dispatch(
                Op::MoeExpertsTiled,
                Some(w.format),
                &params,
                &[&part.buf, &ib, &gb, &b, &ob],
                [
                    rows_per_expert.div_ceil(64) as u32,
                    max_expert_tiles(t * max_k, e) as u32,
                    1,
                ],
            );
        }
    }

    fn elementwise(&mut self, op: Op, x: &GpuTensor, y: Option<&GpuTensor>, limit: f32) {
        let n = x.rows * x.cols;
        let (xb, yb) = (x.mem.buf.clone(), y.map_or(self.dummy.clone(), |y| y.mem.buf.clone()));
        self.dispatch(
            op,
            None,
            &[n as u32, x.cols as u32, limit.to_bits(), 0],
            &[&xb, &yb],
            groups_1d(n),
        );
    }
}

impl Backend for WgpuBackend {
    type Tensor = GpuTensor;
    type Rope = GpuRope;
    type Cache = WgpuCache;

    fn describe(&self) -> String {
        format!(
            "wgpu on {} ({} weights, f32 compute, {} KV, kernels: {})",
            self.gpu.name(),
            self.dtype.name(),
            self.kernels.kv_dtype().name(),
            self.kernels.features().describe()
        )
    }

    fn kv_dtype(&self) -> KvDtype {
        self.kernels.kv_dtype()
    }

    fn upload_matrix(&mut self, w: HostTensor, precision: Precision) -> Result<GpuMatrix> {
        // Parts split at FP8's 128-row blocks and stay within the workgroups one dispatch may have (4 rows each).
        let dtype = self.dtype.for_precision(precision);
        let rows = w.shape.first().copied().unwrap_or(1);
        let unit = if dtype == WeightDtype::Fp8 {
            crate::fp8::BLOCK.min(rows).max(1)
        } else {
            1
        };
        let max_rows = 4 * self.gpu.limits.max_compute_workgroups_per_dimension as usize;
        self.upload_weight(w, dtype, unit, max_rows)
    }

    fn upload_vector(&mut self, w: HostTensor) -> Result<GpuVector> {
        Ok(GpuVector {
            buf: self.upload_bytes(bytemuck::cast_slice(&w.data), "a vector")?,
        })
    }

    fn upload_experts(&mut self, w: HostTensor) -> Result<GpuMatrix> {
        let experts = w.shape.first().copied().unwrap_or(1).max(1);
        let unit = w.data.len() / w.shape.last().copied().unwrap_or(1).max(1) / experts;
        self.upload_weight(w, self.dtype, unit, usize::MAX)
    }

    fn upload_rope(&mut self, table: RopeTable) -> Result<GpuRope> {
        let inv_freq = self.upload_bytes(bytemuck::cast_slice(&table.inv_freq), "rope frequencies")?;
        Ok(GpuRope {
            inv_freq,
            attention_scale: table.attention_scale,
        })
    }

    fn new_cache(&mut self, spec: &ModelSpec, slots: usize, pool_tokens: Option<usize>) -> Result<WgpuCache> {
        for (i, l) in spec.layers.iter().enumerate() {
            if l.attn.head_dim > MAX_HEAD_DIM {
                bail!(
                    "layer {i}: head_dim {} is above the {MAX_HEAD_DIM} the attention kernel holds",
                    l.attn.head_dim
                );
            }
            if let crate::spec::FfnSpec::Moe(m) = &l.ffn {
                if m.n_experts > MAX_EXPERTS {
                    bail!(
                        "layer {i}: {} experts is above the router kernel's {MAX_EXPERTS}",
                        m.n_experts
                    );
                }
            }
        }
        let context = self.context.min(spec.max_position_embeddings);
        let max = self.gpu.max_binding();
        let full_kv_dims = paged_kv_dims(spec);
        let paged = full_kv_dims.clone().next().is_some();
        // The pool's pages must fit one binding in the widest full layer: a smaller default pool, never
        // less than one whole context.
        let kv_bytes = self.kernels.kv_dtype().bytes();
        let fits = full_kv_dims
            .map(|d| max as usize / (d * kv_bytes) / KV_PAGE * KV_PAGE)
            .min()
            .unwrap_or(usize::MAX);
        let pool_tokens = match pool_tokens {
            Some(t) if paged && t > fits => bail!("a KV pool of {t} tokens is more than one buffer holds on {} ({fits} tokens)", self.gpu.name()),
            Some(t) => t,
            None if paged && fits < context => bail!("one sequence of {context} tokens takes more KV than one buffer holds on {} ({fits} tokens); use a shorter context", self.gpu.name()),
            None => (slots * context).min(fits),
        };
        let pages = PagePool::new(slots, pool_tokens, paged);
        let context = pages.bound(context);
        let mut layers = Vec::with_capacity(spec.n_layers());
        for (i, l) in spec.layers.iter().enumerate() {
            if l.attn.kv_source != i {
                layers.push(None);
                continue;
            }
            let ring = l.attn.window().map(|w| Ring::new(w, context));
            let rows = ring.map_or(pages.pages() * KV_PAGE, |r| slots * r.rows);
            let per_word = kv_values_per_word(self.kernels.kv_dtype());
            if l.attn.kv_dim() % per_word != 0 {
                bail!(
                    "layer {i}: a KV width of {} does not split into the {per_word}-value words of a {} KV cache",
                    l.attn.kv_dim(),
                    self.kernels.kv_dtype().name()
                );
            }
            let bytes = (rows * l.attn.kv_dim() * kv_bytes) as u64;
            if bytes > max {
                bail!("layer {i}: its KV ring for {slots} sequence(s) of {} tokens takes {bytes} bytes, more than one buffer holds on {} ({max}); use a shorter context", ring.map_or(0, |r| r.rows), self.gpu.name());
            }
            let mut make = || {
                let buffer = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("kv"),
                    size: bytes.max(16),
                    usage: STORAGE,
                    mapped_at_creation: false,
                });
                let id = self.new_id();
                Arc::new(GpuBuffer { buffer, id })
            };
            layers.push(Some(LayerKv {
                k: make(),
                v: make(),
                ring,
            }));
            self.allocated += 2 * bytes.max(16);
        }
        // The step's sequence slots, then every slot's page table (kv_pages.wgsl).
        let pages_per_seq = context.div_ceil(KV_PAGE);
        let seqs_bytes = ((MAX_STEP_TOKENS + slots * pages_per_seq) * 4) as u64;
        if seqs_bytes > self.step_seqs.buffer.size() {
            self.flush()?;
            let buffer = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("step seqs and page tables"),
                size: seqs_bytes,
                usage: STORAGE,
                mapped_at_creation: false,
            });
            let id = self.new_id();
            self.allocated += seqs_bytes - self.step_seqs.buffer.size();
            self.step_seqs = Arc::new(GpuBuffer { buffer, id });
        }
        // A step records about two dozen dispatches per layer (26 with the grouped MoE path): size the params ring for a whole step.
        let ring_bytes = ((spec.n_layers() * 26 + 16) as u64 * PARAMS_STRIDE).next_power_of_two();
        if ring_bytes > self.params_ring.buffer.size() {
            self.flush()?;
            let buffer = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("params"),
                size: ring_bytes.min(self.gpu.limits.max_buffer_size),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let id = self.new_id();
            self.params_ring = Arc::new(GpuBuffer { buffer, id });
            self.bind_groups.clear();
        }
        self.gpu.check()?;
        Ok(WgpuCache {
            id: self.new_id(),
            layers,
            lens: vec![0; slots],
            context,
            pages,
            pages_per_seq,
        })
    }

    fn begin_step(&mut self, step: &Step) -> Result<()> {
        if step.len() > MAX_STEP_TOKENS {
            bail!(
                "a step of {} tokens is above the wgpu backend's {MAX_STEP_TOKENS}",
                step.len()
            );
        }
        // The step buffers are rewritten below: what an earlier step recorded must run first.
        self.flush()?;
        self.submitted_mid_step = false;
        let q = &self.gpu.queue;
        q.write_buffer(&self.step_tokens.buffer, 0, bytemuck::cast_slice(&step.tokens));
        let positions: Vec<u32> = step.positions.iter().map(|&p| p as u32).collect();
        q.write_buffer(&self.step_positions.buffer, 0, bytemuck::cast_slice(&positions));
        let seqs: Vec<u32> = step.seqs.iter().map(|&s| s as u32).collect();
        q.write_buffer(&self.step_seqs.buffer, 0, bytemuck::cast_slice(&seqs));
        let blocks = attention_blocks(step);
        q.write_buffer(&self.step_block_list.buffer, 0, bytemuck::cast_slice(&blocks));
        self.step_blocks = blocks.len() / 2;
        self.step = step.clone();
        Ok(())
    }

    fn embed(&mut self, table: &GpuMatrix) -> GpuTensor {
        let (rows, cols) = (self.step.len(), table.cols);
        let out = self.tensor(rows, cols);
        let (tokens, ob) = (self.step_tokens.clone(), out.mem.buf.clone());
        for part in &table.parts {
            let params = [rows as u32, cols as u32, part.first_row as u32, part.rows as u32];
            self.dispatch(
                Op::Embed,
                Some(table.format),
                &params,
                &[&part.buf, &tokens, &ob],
                groups_1d(rows * cols),
            );
        }
        out
    }

    fn rms_norm(&mut self, x: &GpuTensor, weight: &GpuVector, eps: f32, group: usize) -> GpuTensor {
        let out = self.tensor(x.rows, x.cols);
        let wlen = (weight.buf.buffer.size() / 4) as usize;
        let wlen = if wlen >= x.cols { x.cols } else { group };
        let params = [x.cols as u32, group as u32, wlen as u32, eps.to_bits()];
        let bufs = [&x.mem.buf.clone(), &weight.buf.clone(), &out.mem.buf.clone()];
        self.dispatch(
            Op::RmsNorm,
            None,
            &params,
            &bufs,
            [(x.cols / group) as u32, x.rows as u32, 1],
        );
        out
    }

    fn linear(&mut self, x: &GpuTensor, w: &GpuMatrix, bias: Option<&GpuVector>) -> GpuTensor {
        debug_assert_eq!(x.cols, w.cols);
        let y = self.tensor(x.rows, w.rows);
        let b = bias.map_or(self.dummy.clone(), |b| b.buf.clone());
        let (xb, yb) = (x.mem.buf.clone(), y.mem.buf.clone());
        // Decode reads W once with 4-token blocks; prefill reuses each loaded weight across a 64-token tile.
        let (op, tile) = if x.rows >= TILED_MIN_TOKENS {
            (Op::MatmulTiled, 64)
        } else {
            (Op::Matmul, 4)
        };
        for part in &w.parts {
            let params = [
                x.rows as u32,
                w.cols as u32,
                part.rows as u32,
                bias.is_some() as u32,
                w.rows as u32,
                part.first_row as u32,
                0,
                0,
            ];
            self.dispatch(
                op,
                Some(w.format),
                &params,
                &[&part.buf, &xb, &b, &yb],
                [part.rows.div_ceil(tile) as u32, x.rows.div_ceil(tile) as u32, 1],
            );
        }
        y
    }

    fn clamp(&mut self, x: &mut GpuTensor, limit: f32) {
        self.elementwise(Op::Clamp, x, None, limit);
    }

    fn apply_rope(&mut self, x: &mut GpuTensor, rope: &GpuRope, head_dim: usize) {
        let params = [
            x.rows as u32,
            x.cols as u32,
            head_dim as u32,
            rope.attention_scale.to_bits(),
        ];
        let bufs = [&x.mem.buf.clone(), &self.step_positions.clone(), &rope.inv_freq.clone()];
        self.dispatch(Op::Rope, None, &params, &bufs, groups_1d(x.rows * x.cols / 2));
    }

    fn attention(
        &mut self,
        cache: &mut WgpuCache,
        spec: &AttnSpec,
        q: &GpuTensor,
        kv: Option<(&GpuTensor, &GpuTensor)>,
        sinks: Option<&GpuVector>,
    ) -> GpuTensor {
        let layer = cache.layers[spec.kv_source]
            .as_ref()
            .expect("validated: the KV source layer owns a cache");
        let (kc, vc) = (layer.k.clone(), layer.v.clone());
        // A ring's row count, or 0 for a paged layer (kv_pages.wgsl).
        let (ring, pages_per_seq) = (layer.ring.map_or(0, |r| r.rows), cache.pages_per_seq);
        let (pos, seqs) = (self.step_positions.clone(), self.step_seqs.clone());
        if let Some((k, v)) = kv {
            let params = [k.rows as u32, spec.kv_dim() as u32, ring as u32, pages_per_seq as u32];
            let bufs = [&k.mem.buf.clone(), &v.mem.buf.clone(), &pos, &seqs, &kc, &vc];
            let words = k.rows * spec.kv_dim() / kv_values_per_word(self.kernels.kv_dtype());
            self.dispatch(Op::KvWrite, None, &params, &bufs, groups_1d(words));
        }
        let out = self.tensor(q.rows, spec.q_dim());
        let max_pos = self.step.positions.iter().copied().max().unwrap_or(0);
        let layer_range = spec
            .window()
            .unwrap_or(cache.context)
            .min(layer.ring.map_or(cache.context, |r| r.rows));
        let split = split_attention(q.rows, max_pos, layer_range);
        let params = [
            spec.n_heads as u32,
            (spec.n_heads / spec.n_kv_heads) as u32,
            spec.head_dim as u32,
            spec.kv_dim() as u32,
            ring as u32,
            pages_per_seq as u32,
            spec.window().unwrap_or(0) as u32,
            sinks.is_some() as u32,
            spec.softmax_scale.to_bits(),
            split.as_ref().map_or(0, |s| s.chunk_len as u32),
            split.as_ref().map_or(0, |s| s.chunks as u32),
        ];
        let s = sinks.map_or(self.dummy.clone(), |s| s.buf.clone());
        let (qb, ob) = (q.mem.buf.clone(), out.mem.buf.clone());
        let (heads, rows) = (spec.n_heads as u32, q.rows as u32);
        match split {
            None if q.rows > SPLIT_MAX_ROWS && spec.head_dim <= TILED_ATTENTION_MAX_DIM => {
                let blocks = self.step_block_list.clone();
                let bufs = [&qb, &kc, &vc, &pos, &seqs, &s, &ob, &blocks];
                let groups = [heads, self.step_blocks as u32, 1];
                self.dispatch(Op::AttentionTiled, None, &params, &bufs, groups);
            }
            None => {
                let bufs = [&qb, &kc, &vc, &pos, &seqs, &s, &ob];
                self.dispatch(Op::Attention, None, &params, &bufs, [heads, rows, 1]);
            }
            Some(split) => {
                // Sized for the most chunks the layer may need, so every decode step reuses one pooled buffer.
                let partials = self.tensor(q.rows * spec.n_heads * split.max_chunks, spec.head_dim + 2);
                let pb = partials.mem.buf.clone();
                let bufs = [&qb, &kc, &vc, &pos, &seqs, &s, &pb, &ob];
                self.dispatch(
                    Op::AttentionSplit,
                    None,
                    &params,
                    &bufs,
                    [heads, rows, split.chunks as u32],
                );
                self.dispatch(Op::AttentionMerge, None, &params, &bufs, [heads, rows, 1]);
            }
        }
        out
    }

    fn swiglu(&mut self, gate: &mut GpuTensor, up: &GpuTensor) {
        self.elementwise(Op::SwiGlu, gate, Some(up), 0.0);
    }

    fn moe(&mut self, x: &GpuTensor, w: &MoeExperts<Self>, spec: &MoeSpec, layer: usize) -> GpuTensor {
        let (t, e) = (x.rows, spec.n_experts);
        let logits = self.linear(x, &w.router, w.router_bias.as_ref());
        let r = &spec.router;
        let (max_k, min_k, top_p, p) = match (r.order, r.selection) {
            (
                RouterOrder::ScoreThenSelect,
                Selection::TopP {
                    p,
                    min_experts,
                    max_experts,
                },
            ) => (max_experts, min_experts, 1, p),
            (_, sel) => (sel.max_experts(), sel.max_experts(), 0, 1.0),
        };
        let (probs, chosen, weights, counts) = (
            self.tensor(t, e),
            self.tensor(t, max_k),
            self.tensor(t, max_k),
            self.tensor(t, 1),
        );
        let params = [
            t as u32,
            e as u32,
            max_k as u32,
            min_k as u32,
            (r.scoring == Scoring::Sigmoid) as u32,
            (r.order == RouterOrder::SelectThenScore) as u32,
            top_p,
            r.renormalize as u32,
            p.to_bits(),
            0,
            0,
            0,
        ];
        let (cb, wb, nb) = (chosen.mem.buf.clone(), weights.mem.buf.clone(), counts.mem.buf.clone());
        let bufs = [&logits.mem.buf.clone(), &probs.mem.buf.clone(), &cb, &wb, &nb];
        self.dispatch(Op::Router, None, &params, &bufs, [t.div_ceil(64) as u32, 1, 1]);

        let routed = Routed {
            chosen: cb,
            weights: wb,
            counts: nb,
            max_k,
        };
        // Decode reads each chosen expert once per token; prefill groups the tokens by expert so each
        // expert's weights are read once per 64 of its tokens.
        let out = if t >= GROUPED_MOE_MIN_TOKENS {
            self.moe_grouped(x, w, spec, &routed)
        } else {
            self.moe_per_token(x, w, spec, &routed)
        };
        if let Some(trace) = self.routing.as_mut() {
            trace.push(TracedRouting {
                layer,
                n_experts: e,
                max_experts: max_k,
                probs,
                chosen,
                weights,
                counts,
            });
        }
        out
    }

    fn sigmoid_gate(&mut self, x: &mut GpuTensor, gate: &GpuTensor) {
        self.elementwise(Op::SigmoidGate, x, Some(gate), 0.0);
    }

    fn add_assign(&mut self, x: &mut GpuTensor, y: &GpuTensor) {
        self.elementwise(Op::Add, x, Some(y), 0.0);
    }

    fn select_rows(&mut self, x: &GpuTensor, rows: &[usize]) -> GpuTensor {
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        self.gpu
            .queue
            .write_buffer(&self.step_rows.buffer, 0, bytemuck::cast_slice(&ids));
        let out = self.tensor(rows.len(), x.cols);
        let bufs = [&x.mem.buf.clone(), &self.step_rows.clone(), &out.mem.buf.clone()];
        self.dispatch(
            Op::GatherRows,
            None,
            &[rows.len() as u32, x.cols as u32, 0, 0],
            &bufs,
            groups_1d(rows.len() * x.cols),
        );
        out
    }

    fn reserve_kv(&mut self, cache: &mut WgpuCache, step: &Step) -> Result<()> {
        if cache.pages.reserve(step)? || self.tables_of != Some(cache.id) {
            let tables = cache.pages.flat_tables(cache.pages_per_seq);
            let offset = (MAX_STEP_TOKENS * 4) as u64;
            self.gpu
                .queue
                .write_buffer(&self.step_seqs.buffer, offset, bytemuck::cast_slice(&tables));
            self.tables_of = Some(cache.id);
        }
        Ok(())
    }

    fn end_step(&mut self, cache: &mut WgpuCache) -> Result<()> {
        if let Some(e) = self.deferred_error.take() {
            return Err(e);
        }
        for (r, &slot) in self.step.seqs.iter().enumerate() {
            cache.lens[slot] = cache.lens[slot].max(self.step.positions[r] + 1);
        }
        Ok(())
    }

    fn read(&mut self, x: &GpuTensor) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(&x.mem.buf.clone(), (x.rows * x.cols * 4) as u64)?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    fn pick(&mut self, logits: &GpuTensor, picks: &[Pick]) -> Result<Vec<u32>> {
        match self.submit_pick(logits, picks)? {
            Some(ids) => Ok(ids),
            None => self.collect_pick(logits, picks),
        }
    }

    fn records_ahead(&self) -> bool {
        true
    }

    fn fill_tokens(&mut self, fills: &[(usize, u32)]) -> bool {
        if self.submitted_mid_step {
            return false;
        }
        for &(row, id) in fills {
            self.gpu
                .queue
                .write_buffer(&self.step_tokens.buffer, (row * 4) as u64, bytemuck::bytes_of(&id));
        }
        true
    }

    fn submit_pick(&mut self, logits: &GpuTensor, picks: &[Pick]) -> Result<Option<Vec<u32>>> {
        let (rows, vocab) = (logits.rows, logits.cols);
        let penalized: Vec<u32> = picks.iter().flat_map(|p| p.penalized.iter().copied()).collect();
        let pen = self.dedicated("pick-penalized", (penalized.len() * 4) as u64);
        if !penalized.is_empty() {
            self.gpu
                .queue
                .write_buffer(&pen.buffer, 0, bytemuck::cast_slice(&penalized));
        }
        let keys = self.dedicated("pick-keys", (rows * vocab * 4) as u64);
        let out = self.dedicated("pick-out", (rows * 8) as u64);
        let lb = logits.mem.buf.clone();
        let mut offset = 0;
        for (row, pick) in picks.iter().enumerate() {
            let s = &pick.params;
            let params = [
                vocab as u32,
                row as u32,
                s.top_k.min(u32::MAX as usize) as u32,
                pick.penalized.len() as u32,
                offset as u32,
                s.temperature.to_bits(),
                s.top_p.to_bits(),
                s.min_p.to_bits(),
                s.repeat_penalty.to_bits(),
                (pick.uniform as f32).to_bits(),
                0,
                0,
            ];
            offset += pick.penalized.len();
            self.dispatch(Op::Sample, None, &params, &[&lb, &pen, &keys, &out], [1, 1, 1]);
        }
        self.flush()?;
        if let Some(e) = self.deferred_error.take() {
            return Err(e);
        }
        self.pick_read = Some(self.start_read(&out, (rows * 8) as u64));
        Ok(None)
    }

    fn collect_pick(&mut self, logits: &GpuTensor, picks: &[Pick]) -> Result<Vec<u32>> {
        let Some(read) = self.pick_read.take() else {
            bail!("no token choice is in flight");
        };
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&self.finish_read(read)?);
        let mut ids: Vec<u32> = words.chunks(2).map(|w| w[0]).collect();
        // Rows whose kept set may reach past the kernel's 1024 sorted candidates are chosen here. The read
        // submits only its copy: a next step may be recorded and waiting for its tokens.
        if words.chunks(2).any(|w| w[1] != 0) {
            let vocab = logits.cols;
            let read = self.start_read(&logits.mem.buf.clone(), (logits.rows * vocab * 4) as u64);
            let data: Vec<f32> = bytemuck::pod_collect_to_vec(&self.finish_read(read)?);
            for (row, w) in words.chunks(2).enumerate() {
                if w[1] != 0 {
                    ids[row] = picks[row].choose(&data[row * vocab..(row + 1) * vocab]);
                }
            }
        }
        Ok(ids)
    }

    fn allocated_bytes(&self) -> u64 {
        self.allocated
    }

    fn bytes_per_weight(&self, precision: Precision) -> f64 {
        self.dtype.for_precision(precision).bytes()
    }

    fn copy_bandwidth(&mut self) -> Result<f64> {
        self.flush()?;
        let bytes = (256u64 << 20).min(self.gpu.limits.max_buffer_size / 2);
        let make = |label| {
            self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: STORAGE,
                mapped_at_creation: false,
            })
        };
        let (src, dst) = (make("copy-src"), make("copy-dst"));
        let mut best = f64::MAX;
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let mut encoder = self
                .gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("copy") });
            for _ in 0..4 {
                encoder.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
            }
            self.gpu.queue.submit([encoder.finish()]);
            self.gpu
                .device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::msg(e.to_string()))?;
            best = best.min(started.elapsed().as_secs_f64() / 4.0);
        }
        self.gpu.check()?;
        Ok(2.0 * bytes as f64 / best)
    }

    fn trace_routing(&mut self, on: bool) {
        self.routing = on.then(Vec::new);
    }

    fn take_routing(&mut self) -> Result<Vec<LayerRouting>> {
        let traced = self.routing.as_mut().map(std::mem::take).unwrap_or_default();
        let mut out = Vec::with_capacity(traced.len());
        for r in traced {
            let probs = self.read(&r.probs)?;
            let chosen = self.read_u32(&r.chosen)?;
            let weights = self.read(&r.weights)?;
            let counts = self.read_u32(&r.counts)?;
            let picks = counts
                .iter()
                .enumerate()
                .map(|(t, &n)| {
                    (0..n as usize)
                        .map(|s| (chosen[t * r.max_experts + s] as usize, weights[t * r.max_experts + s]))
                        .collect()
                })
                .collect();
            out.push(LayerRouting {
                layer: r.layer,
                n_experts: r.n_experts,
                probs,
                chosen: picks,
            });
        }
        Ok(out)
    }
}
