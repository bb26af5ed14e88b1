//! The wgpu backend: every op a WGSL kernel, a whole step recorded as one list of dispatches and submitted
//! in one compute pass, with no CPU read until `read` or the token choice. This file holds the backend's
//! state, the small ops and the `Backend` implementation; the larger concerns have their own files (weights,
//! cache, attention, MoE, token choice, recording, buffers).

use std::sync::Arc;

use volt_runtime::backend::{Backend, LayerRouting, MoeExperts, WeightAccounting, WeightTypes};
use volt_runtime::checkpoint::HostTensor;
use volt_runtime::dtype::{KvDtype, Precision, WeightDtype};
use volt_runtime::rope::RopeTable;
use volt_runtime::sampler::Pick;
use volt_runtime::spec::{AttnSpec, ModelSpec, MoeSpec};
use volt_runtime::step::{Step, MAX_STEP_TOKENS};
use volt_runtime::tensor::StoredTensor;
use volt_runtime::{bail, Error, Result};

use crate::buffers::{Buffers, GpuBuffer, GpuTensor, GpuVector, STORAGE};
use crate::cache::WgpuCache;
use crate::device::Gpu;
use crate::kernels::{groups_1d, KernelFeatures, Kernels, Op, WeightFormat};
use crate::moe::TracedRouting;
use crate::params::{
    ElementwiseParams, EmbedParams, GatherRowsParams, KernelParams, MatmulParams, RmsNormParams, RopeParams,
};
use crate::recorder::{PendingRead, Recorder};
use crate::step_inputs::StepBuffers;
use crate::weights::GpuMatrix;

/// Steps from this many tokens use the tiled matmul (`matmul_tiled.wgsl`). On lavapipe its 64-token tiles
/// overtake the 4-token kernel between 8 and 16 tokens.
const TILED_MIN_TOKENS: usize = 16;

pub struct GpuRope {
    inv_freq: Arc<GpuBuffer>,
    attention_scale: f32,
}

pub struct WgpuBackend {
    pub(crate) gpu: Gpu,
    pub(crate) kernels: Kernels,
    /// `--dtype`; None keeps each matrix as published where the kernels decode it.
    pub(crate) dtype: Option<WeightDtype>,
    pub(crate) weights: WeightAccounting,
    /// Longest sequence a cache holds.
    pub(crate) context: usize,
    pub(crate) buffers: Buffers,
    pub(crate) recorder: Recorder,
    pub(crate) step_buffers: StepBuffers,
    /// Some while routing is traced.
    pub(crate) routing: Option<Vec<TracedRouting>>,
    /// Most bytes one buffer binding may hold; larger weights are split.
    pub(crate) max_binding: u64,
    /// Weights uploaded in more than one part.
    pub(crate) split_weights: usize,
    /// The cache whose page tables the step buffers hold.
    pub(crate) tables_of: Option<u64>,
    /// The chosen ids on their way back (`submit_pick`).
    pub(crate) pick_read: Option<PendingRead>,
}

impl WgpuBackend {
    /// Opens the best adapter; weights kept in `dtype` (None: as published), caches sized for `context`
    /// tokens.
    pub fn new(dtype: impl Into<Option<WeightDtype>>, context: usize) -> Result<Self> {
        Self::with_gpu(Gpu::open_default()?, dtype, context)
    }

    pub fn with_gpu(gpu: Gpu, dtype: impl Into<Option<WeightDtype>>, context: usize) -> Result<Self> {
        let mut buffers = Buffers::new(&gpu.device);
        let recorder = Recorder::new(&gpu.device, &mut buffers);
        let step_buffers = StepBuffers::new(&gpu.device, &mut buffers);
        let backend = WgpuBackend {
            kernels: Kernels::new(KernelFeatures::of(&gpu.device), KvDtype::F16),
            max_binding: gpu.max_binding(),
            gpu,
            dtype: dtype.into(),
            weights: WeightAccounting::default(),
            context,
            buffers,
            recorder,
            step_buffers,
            routing: None,
            split_weights: 0,
            tables_of: None,
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
        self.recorder.clear_bind_groups();
    }

    /// Keeps cached K and V in `kv` (f16 unless told) in caches made afterwards. Call before any op.
    pub fn set_kv_dtype(&mut self, kv: KvDtype) {
        self.kernels = Kernels::new(self.kernels.features(), kv);
        self.recorder.clear_bind_groups();
    }

    /// How many weights were uploaded in more than one part.
    pub fn split_weights(&self) -> usize {
        self.split_weights
    }

    /// Records one dispatch of `op` (built for `format` when it reads weights) with its parameter struct.
    pub(crate) fn dispatch<P: KernelParams>(
        &mut self,
        op: Op,
        format: Option<WeightFormat>,
        params: &P,
        buffers: &[&Arc<GpuBuffer>],
        groups: [u32; 3],
    ) -> Result<()> {
        debug_assert_eq!(op.params().0, P::FIELDS, "{op:?}: parameter struct");
        let kernel = self.kernels.get(&self.gpu.device, op, format);
        self.recorder.record(&self.gpu, kernel, params, buffers, groups)
    }

    /// An activation tensor from the pool.
    pub(crate) fn tensor(&mut self, rows: usize, cols: usize) -> GpuTensor {
        self.buffers.tensor(&self.gpu.device, rows, cols)
    }

    /// A vector's buffer, or the placeholder bound where a kernel's optional input is absent.
    pub(crate) fn bias_or_dummy(&self, v: Option<&GpuVector>) -> Arc<GpuBuffer> {
        v.map_or(self.buffers.dummy.clone(), |v| v.buf.clone())
    }

    pub(crate) fn read_f32(&mut self, t: &GpuTensor) -> Result<Vec<f32>> {
        let bytes = self.recorder.read(&self.gpu, t.buf(), (t.rows * t.cols * 4) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    pub(crate) fn read_u32(&mut self, t: &GpuTensor) -> Result<Vec<u32>> {
        let bytes = self.recorder.read(&self.gpu, t.buf(), (t.rows * t.cols * 4) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// x · Wᵀ + bias, one dispatch per weight part. Decode reads W once with 4-token blocks; prefill reuses
    /// each loaded weight across a 64-token tile.
    pub(crate) fn record_linear(
        &mut self,
        x: &GpuTensor,
        w: &GpuMatrix,
        bias: Option<&GpuVector>,
    ) -> Result<GpuTensor> {
        if x.cols != w.cols {
            bail!("linear: {} input columns for a weight of {}", x.cols, w.cols);
        }
        let y = self.tensor(x.rows, w.rows);
        let b = self.bias_or_dummy(bias);
        let (op, tile) = if x.rows >= TILED_MIN_TOKENS {
            (Op::MatmulTiled, 64)
        } else {
            (Op::Matmul, 4)
        };
        for part in &w.parts {
            let params = MatmulParams {
                tokens: x.rows as u32,
                k: w.cols as u32,
                outputs: part.rows as u32,
                has_bias: bias.is_some() as u32,
                out_stride: w.rows as u32,
                out_base: part.first_row as u32,
                ..Default::default()
            };
            let groups = [part.rows.div_ceil(tile) as u32, x.rows.div_ceil(tile) as u32, 1];
            self.dispatch(op, Some(w.format), &params, &[&part.buf, x.buf(), &b, y.buf()], groups)?;
        }
        Ok(y)
    }

    fn elementwise(&mut self, op: Op, x: &GpuTensor, y: Option<&GpuTensor>, limit: f32) -> Result<()> {
        let n = x.rows * x.cols;
        let yb = y.map_or(self.buffers.dummy.clone(), |y| y.buf().clone());
        let params = ElementwiseParams {
            n: n as u32,
            cols: x.cols as u32,
            limit,
            _pad: 0,
        };
        self.dispatch(op, None, &params, &[x.buf(), &yb], groups_1d(n))
    }
}

impl WeightTypes for WgpuBackend {
    type Matrix = GpuMatrix;
    type Vector = GpuVector;
    type Experts = GpuMatrix;
}

impl Backend for WgpuBackend {
    type Tensor = GpuTensor;
    type Rope = GpuRope;
    type Cache = WgpuCache;

    fn describe(&self) -> String {
        format!(
            "wgpu on {} ({} weights, f32 compute, {} KV, kernels: {})",
            self.gpu.name(),
            self.weights.describe(),
            self.kernels.kv_dtype().name(),
            self.kernels.features().describe()
        )
    }

    fn kv_dtype(&self) -> KvDtype {
        self.kernels.kv_dtype()
    }

    fn upload_matrix(&mut self, w: StoredTensor, precision: Precision) -> Result<GpuMatrix> {
        self.upload_matrix_at(w, precision)
    }

    fn upload_vector(&mut self, w: HostTensor) -> Result<GpuVector> {
        let buf = self
            .buffers
            .upload(&self.gpu, bytemuck::cast_slice(&w.data), "a vector")?;
        self.weights
            .add(Precision::Full, WeightDtype::F32, w.data.len(), 4 * w.data.len());
        Ok(GpuVector { buf })
    }

    fn upload_experts(&mut self, w: StoredTensor) -> Result<GpuMatrix> {
        self.upload_stacked_experts(w)
    }

    fn upload_rope(&mut self, table: RopeTable) -> Result<GpuRope> {
        let inv_freq = (self.buffers).upload(&self.gpu, bytemuck::cast_slice(&table.inv_freq), "rope frequencies")?;
        Ok(GpuRope {
            inv_freq,
            attention_scale: table.attention_scale,
        })
    }

    fn new_cache(&mut self, spec: &ModelSpec, slots: usize, pool_tokens: Option<usize>) -> Result<WgpuCache> {
        self.create_cache(spec, slots, pool_tokens)
    }

    fn begin_step(&mut self, step: &Step) -> Result<()> {
        if step.len() > MAX_STEP_TOKENS {
            bail!(
                "a step of {} tokens is above the wgpu backend's {MAX_STEP_TOKENS}",
                step.len()
            );
        }
        // The step buffers are rewritten: what an earlier step recorded must run first.
        self.recorder.flush(&self.gpu)?;
        self.recorder.submitted_mid_step = false;
        self.step_buffers.write(&self.gpu, step);
        Ok(())
    }

    fn reserve_kv(&mut self, cache: &mut WgpuCache, step: &Step) -> Result<()> {
        self.reserve_pages(cache, step)
    }

    fn embed(&mut self, table: &GpuMatrix) -> Result<GpuTensor> {
        let (rows, cols) = (self.step_buffers.step.len(), table.cols);
        let out = self.tensor(rows, cols);
        let tokens = self.step_buffers.tokens.clone();
        for part in &table.parts {
            let params = EmbedParams {
                rows: rows as u32,
                cols: cols as u32,
                first_row: part.first_row as u32,
                part_rows: part.rows as u32,
            };
            let bufs = [&part.buf, &tokens, out.buf()];
            self.dispatch(Op::Embed, Some(table.format), &params, &bufs, groups_1d(rows * cols))?;
        }
        Ok(out)
    }

    fn rms_norm(&mut self, x: &GpuTensor, weight: &GpuVector, eps: f32, group: usize) -> Result<GpuTensor> {
        let out = self.tensor(x.rows, x.cols);
        let len = (weight.buf.buffer.size() / 4) as usize;
        let params = RmsNormParams {
            cols: x.cols as u32,
            group: group as u32,
            // The weight covers the whole row, or one group (per-head norms).
            wlen: if len >= x.cols { x.cols } else { group } as u32,
            eps,
        };
        let groups = [(x.cols / group) as u32, x.rows as u32, 1];
        self.dispatch(Op::RmsNorm, None, &params, &[x.buf(), &weight.buf, out.buf()], groups)?;
        Ok(out)
    }

    fn linear(&mut self, x: &GpuTensor, w: &GpuMatrix, bias: Option<&GpuVector>) -> Result<GpuTensor> {
        self.record_linear(x, w, bias)
    }

    fn clamp(&mut self, x: &mut GpuTensor, limit: f32) -> Result<()> {
        self.elementwise(Op::Clamp, x, None, limit)
    }

    fn apply_rope(&mut self, x: &mut GpuTensor, rope: &GpuRope, head_dim: usize) -> Result<()> {
        let params = RopeParams {
            rows: x.rows as u32,
            cols: x.cols as u32,
            head_dim: head_dim as u32,
            attention_scale: rope.attention_scale,
        };
        let bufs = [x.buf(), &self.step_buffers.positions.clone(), &rope.inv_freq];
        self.dispatch(Op::Rope, None, &params, &bufs, groups_1d(x.rows * x.cols / 2))
    }

    fn attention(
        &mut self,
        cache: &mut WgpuCache,
        spec: &AttnSpec,
        q: &GpuTensor,
        kv: Option<(&GpuTensor, &GpuTensor)>,
        sinks: Option<&GpuVector>,
    ) -> Result<GpuTensor> {
        self.record_attention(cache, spec, q, kv, sinks)
    }

    fn swiglu(&mut self, gate: &mut GpuTensor, up: &GpuTensor) -> Result<()> {
        self.elementwise(Op::SwiGlu, gate, Some(up), 0.0)
    }

    fn moe(&mut self, x: &GpuTensor, w: &MoeExperts<Self>, spec: &MoeSpec, layer: usize) -> Result<GpuTensor> {
        self.record_moe(x, w, spec, layer)
    }

    fn sigmoid_gate(&mut self, x: &mut GpuTensor, gate: &GpuTensor) -> Result<()> {
        self.elementwise(Op::SigmoidGate, x, Some(gate), 0.0)
    }

    fn add_assign(&mut self, x: &mut GpuTensor, y: &GpuTensor) -> Result<()> {
        self.elementwise(Op::Add, x, Some(y), 0.0)
    }

    fn select_rows(&mut self, x: &GpuTensor, rows: &[usize]) -> Result<GpuTensor> {
        self.step_buffers.write_rows(&self.gpu, rows);
        let out = self.tensor(rows.len(), x.cols);
        let params = GatherRowsParams {
            rows: rows.len() as u32,
            cols: x.cols as u32,
            ..Default::default()
        };
        let bufs = [x.buf(), &self.step_buffers.rows.clone(), out.buf()];
        self.dispatch(Op::GatherRows, None, &params, &bufs, groups_1d(rows.len() * x.cols))?;
        Ok(out)
    }

    fn read(&mut self, x: &GpuTensor) -> Result<Vec<f32>> {
        self.read_f32(x)
    }

    fn pick(&mut self, logits: &GpuTensor, picks: &[Pick]) -> Result<Vec<u32>> {
        self.start_pick(logits, picks)?;
        self.finish_pick(logits, picks)
    }

    fn records_ahead(&self) -> bool {
        true
    }

    fn fill_tokens(&mut self, fills: &[(usize, u32)]) -> bool {
        if self.recorder.submitted_mid_step {
            return false;
        }
        self.step_buffers.fill_tokens(&self.gpu, fills);
        true
    }

    fn submit_pick(&mut self, logits: &GpuTensor, picks: &[Pick]) -> Result<Option<Vec<u32>>> {
        self.start_pick(logits, picks)?;
        Ok(None)
    }

    fn collect_pick(&mut self, logits: &GpuTensor, picks: &[Pick]) -> Result<Vec<u32>> {
        self.finish_pick(logits, picks)
    }

    fn allocated_bytes(&self) -> u64 {
        self.buffers.allocated
    }

    fn bytes_per_weight(&self, precision: Precision) -> f64 {
        self.weights.bytes_per_weight(precision)
    }

    fn copy_bandwidth(&mut self) -> Result<f64> {
        self.recorder.flush(&self.gpu)?;
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
        self.read_routing()
    }
}
