//! `Backend` on CUDA: cudarc's driver API, one stream, kernels from `kernels.rs`.
//!
//! Ops only enqueue work; the first failure is kept and returned by the next `read`/`end_step` (the trait's
//! ops return tensors, not results), and nothing more is launched after it.
//! Weight storage: f32/f16/bf16 as is; FP8 as E4M3 codes with rows padded to a multiple of 128 columns (zero
//! codes) plus the 128x128 block scales of `volt_runtime::fp8`, so FP8 checkpoints keep their bytes.
//! Kernel choice: up to `GEMV_ROWS` rows (decode) go through the matrix-vector kernels with f32 activations;
//! more rows with FP8 weights quantize the activations per 1x128 and use the tensor-core FP8 GEMM (dense, or
//! grouped per expert for MoE).

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use volt_runtime::backend::kv_pages::{can_resume, paged_kv_dims, PagePool, Ring, KV_PAGE};
use volt_runtime::backend::{
    pick_on_host, Backend, KvCache, KvDtype, LayerRouting, MoeExperts, Precision, Step, WeightDtype, WeightTypes,
};
use volt_runtime::checkpoint::HostTensor;
use volt_runtime::error::Error;
use volt_runtime::fp8::{self, BlockGrid};
use volt_runtime::generate::PREFILL_CHUNK;
use volt_runtime::rope::RopeTable;
use volt_runtime::sampler::Pick;
use volt_runtime::spec::{AttnSpec, ExpertActivation, ModelSpec, MoeSpec, RouterOrder, Scoring, Selection};
use volt_runtime::{bail, Result};

use crate::kernels::{arch_for, MODULES};
use crate::nvrtc::Nvrtc;
use crate::Device;

/// Rows up to which linear layers and experts use the matrix-vector kernels.
pub(crate) const GEMV_ROWS: usize = 8;
/// Rows of one GEMM tile and of the per-expert alignment (TILE_M / ALIGN_M in the kernels).
const TILE: usize = 64;
/// Router width the routing kernel supports (MAX_EXPERTS in moe.cu).
const MAX_EXPERTS: usize = 1024;
/// Head size the attention kernel supports (MAX_HEAD_DIM in attention.cu).
const MAX_HEAD_DIM: usize = 256;

pub struct CudaTensor {
    pub rows: usize,
    pub cols: usize,
    /// None once an earlier op failed (nothing is launched after a failure).
    buf: Option<CudaSlice<f32>>,
}

/// A weight matrix or stacked experts in the backend's storage.
pub struct CudaMatrix {
    dtype: WeightDtype,
    /// Rows and columns of one expert.
    rows: usize,
    cols: usize,
    /// Elements between rows (cols rounded up to 128 for FP8).
    stride: usize,
    data: CudaSlice<u8>,
    /// FP8 only: block scales, the grid restarting every `group_rows` rows.
    scales: Option<CudaSlice<f32>>,
    group_rows: usize,
}

impl CudaMatrix {
    fn expert_elems(&self) -> usize {
        self.rows * self.stride
    }
    fn expert_scales(&self) -> usize {
        expert_scales(self.rows, self.group_rows, self.stride)
    }
}

/// FP8 scales per expert of `rows` rows whose 128x128 grid restarts every `group_rows` rows.
fn expert_scales(rows: usize, group_rows: usize, stride: usize) -> usize {
    (rows / group_rows) * group_rows.div_ceil(fp8::BLOCK) * (stride / fp8::BLOCK)
}

pub struct CudaVector {
    len: usize,
    data: CudaSlice<f32>,
}

pub struct CudaRope {
    inv_freq: CudaSlice<f32>,
    attention_scale: f32,
}

/// f16 K and V rows of every layer that owns its KV, laid out as on the wgpu backend (`kv_pages.rs`): a
/// sliding layer keeps a `Ring` per slot, a full layer takes pages of one pool through each slot's page
/// table, which `reserve_kv` uploads when it changes.
pub struct CudaCache {
    layers: Vec<Option<LayerKv>>,
    capacity: usize,
    lens: Vec<usize>,
    pages: PagePool,
    /// Page table entries per slot (enough for `capacity` positions), and the tables as the kernels read
    /// them: [slots, pages_per_seq].
    pages_per_seq: usize,
    tables: CudaSlice<i32>,
}

struct LayerKv {
    k: CudaSlice<u16>,
    v: CudaSlice<u16>,
    /// Sliding layers' rings; full layers are paged.
    ring: Option<Ring>,
}

impl KvCache for CudaCache {
    fn seq_len(&self, slot: usize) -> usize {
        self.lens[slot]
    }
    fn reset(&mut self, slot: usize) {
        self.lens[slot] = 0;
        self.pages.shrink(slot, 0);
    }
    fn can_truncate(&self, slot: usize, len: usize) -> bool {
        can_resume(
            self.layers.iter().flatten().filter_map(|l| l.ring),
            self.lens[slot],
            len,
        )
    }
    fn truncate(&mut self, slot: usize, len: usize) {
        self.lens[slot] = len;
        self.pages.shrink(slot, len);
    }
    fn slots(&self) -> usize {
        self.lens.len()
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn pages(&self) -> &PagePool {
        &self.pages
    }
}

/// A kernel argument: device pointers travel as raw addresses so optional inputs can be null.
#[derive(Clone, Copy)]
enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// The step's per-token inputs on the device.
struct StepInputs {
    rows: usize,
    tokens: CudaSlice<i32>,
    positions: CudaSlice<i32>,
    seqs: CudaSlice<i32>,
    max_position: usize,
    /// (seq slot, position) per token, for `end_step`.
    host: Step,
}

pub struct CudaBackend {
    stream: Arc<CudaStream>,
    device_name: String,
    arch: String,
    dtype: WeightDtype,
    context: usize,
    functions: HashMap<&'static str, CudaFunction>,
    step: Option<StepInputs>,
    /// The first failure since the last `read`/`end_step`.
    error: Option<Error>,
    routing: Option<Vec<LayerRouting>>,
    weight_bytes: u64,
    cache_bytes: u64,
}

fn driver_error(e: cudarc::driver::DriverError) -> Error {
    Error::msg(format!("CUDA: {e}"))
}

impl CudaBackend {
    /// Compiles (or loads from the disk cache) every kernel for the device and starts a backend that keeps
    /// weights in `dtype` and up to `context` positions per sequence.
    pub fn new(device: Device, dtype: WeightDtype, context: usize) -> Result<CudaBackend> {
        if device.capability < (8, 0) {
            bail!(
                "{} (compute capability {}.{}) is older than sm_80",
                device.name,
                device.capability.0,
                device.capability.1
            );
        }
        if dtype == WeightDtype::Fp8 && device.capability < (8, 9) {
            bail!(
                "--dtype fp8 needs FP8 tensor cores (sm_89 or newer); use --dtype bf16 on {}",
                device.name
            );
        }
        let nvrtc = Nvrtc::load()?;
        let arch = arch_for(device.capability);
        let ctx = device.ctx;
        // One stream and no cross-stream sharing: cudarc's per-buffer events would only add work.
        // SAFETY: called before any buffer exists.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let mut functions = HashMap::new();
        for module in MODULES.iter().filter(|m| device.capability >= m.min_capability) {
            let cubin = module.cubin(&nvrtc, &arch)?;
            let loaded = ctx
                .load_module(Ptx::from_binary(cubin))
                .map_err(|e| driver_error(e).context(format!("loading {}.cu", module.name)))?;
            for &entry in module.entries {
                functions.insert(entry, loaded.load_function(entry).map_err(driver_error)?);
            }
        }
        Ok(CudaBackend {
            stream,
            device_name: device.name,
            arch,
            dtype,
            context,
            functions,
            step: None,
            error: None,
            routing: None,
            weight_bytes: 0,
            cache_bytes: 0,
        })
    }

    /// Runs `op` unless an earlier op failed; a failure is kept for the next `read`/`end_step` and the
    /// result is a tensor without storage (never launched on, since nothing runs after a failure).
    fn guarded(
        &mut self,
        rows: usize,
        cols: usize,
        op: impl FnOnce(&mut Self) -> Result<CudaSlice<f32>>,
    ) -> CudaTensor {
        let buf = if self.error.is_some() {
            None
        } else {
            match op(self) {
                Ok(b) => Some(b),
                Err(e) => {
                    self.error = Some(e);
                    None
                }
            }
        };
        CudaTensor { rows, cols, buf }
    }

    /// `guarded` for ops that work in place.
    fn guarded_in_place(&mut self, op: impl FnOnce(&mut Self) -> Result<()>) {
        if self.error.is_none() {
            if let Err(e) = op(self) {
                self.error = Some(e);
            }
        }
    }

    fn take_error(&mut self) -> Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn ptr<T>(&self, s: &CudaSlice<T>) -> Arg {
        Arg::Ptr(s.device_ptr(&self.stream).0)
    }

    fn opt_ptr<T>(&self, s: Option<&CudaSlice<T>>) -> Arg {
        s.map_or(Arg::Ptr(0), |s| self.ptr(s))
    }

    fn tptr(&self, t: &CudaTensor) -> Result<Arg> {
        match &t.buf {
            Some(b) => Ok(self.ptr(b)),
            None => bail!("CUDA: a tensor from a failed op was used"),
        }
    }

    fn alloc<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(n.max(1))
            .map_err(|e| driver_error(e).context(format!("allocating {n} elements")))
    }

    fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            bail!("CUDA: uploading an empty buffer");
        }
        self.stream.clone_htod(data).map_err(driver_error)
    }

    fn launch(&self, kernel: &'static str, grid: (usize, usize), block: usize, args: &[Arg]) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 {
            return Ok(());
        }
        if grid.0 >= 1 << 31 || grid.1 > 65535 {
            bail!("CUDA: {kernel} needs a grid of {grid:?} blocks, past the device's limits");
        }
        let Some(function) = self.functions.get(kernel) else {
            bail!("CUDA kernel {kernel} is not loaded on this GPU");
        };
        let mut builder = self.stream.launch_builder(function);
        for arg in args {
            match arg {
                Arg::Ptr(p) => builder.arg(p),
                Arg::I32(v) => builder.arg(v),
                Arg::I64(v) => builder.arg(v),
                Arg::F32(v) => builder.arg(v),
            };
        }
        let config = LaunchConfig {
            grid_dim: (grid.0 as u32, grid.1 as u32, 1),
            block_dim: (block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every kernel's parameter list is matched by its call site in this file; pointers are live
        // buffers (or null where the kernel accepts null) sized for the grid.
        unsafe { builder.launch(config) }
            .map(|_| ())
            .map_err(|e| driver_error(e).context(format!("launching {kernel}")))
    }

    /// One thread per element, 256 per block.
    fn launch_1d(&self, kernel: &'static str, n: usize, args: &[Arg]) -> Result<()> {
        self.launch(kernel, (n.div_ceil(256), 1), 256, args)
    }

    fn step(&self) -> Result<&StepInputs> {
        match &self.step {
            Some(s) => Ok(s),
            None => bail!("CUDA: an op ran before begin_step"),
        }
    }

    fn upload_weight(&mut self, w: HostTensor, dtype: WeightDtype, experts: bool) -> Result<CudaMatrix> {
        let grid = BlockGrid::of(&w.shape);
        let n_experts = if experts { w.shape[0] } else { 1 };
        let rows = grid.groups * grid.rows / n_experts;
        let cols = grid.cols;
        let mut stride = cols;
        let mut scales = None;
        let bytes: Vec<u8> = match dtype {
            WeightDtype::F32 => w.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            WeightDtype::F16 => w
                .data
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            WeightDtype::Bf16 => w
                .data
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            WeightDtype::Fp8 => {
                // The same codes and scales the CPU reference rounds through (`fp8::round_trip`).
                let (codes, s) = fp8::quantize(&w.data, grid);
                stride = cols.div_ceil(fp8::BLOCK) * fp8::BLOCK;
                scales = Some(self.upload(&s)?);
                let mut padded = vec![0u8; grid.groups * grid.rows * stride];
                for (dst, src) in padded.chunks_mut(stride).zip(codes.chunks(cols)) {
                    dst[..cols].copy_from_slice(src);
                }
                padded
            }
        };
        self.weight_bytes += bytes.len() as u64 + scales.as_ref().map_or(0, |s| 4 * s.len() as u64);
        Ok(CudaMatrix {
            dtype,
            rows,
            cols,
            stride,
            data: self.upload(&bytes)?,
            scales,
            group_rows: grid.rows,
        })
    }

    /// Activation rows (gathered through `src` when given: -1 gives a zero row) as E4M3 codes with one scale
    /// per 1x128 block, padded to a multiple of 128 columns.
    fn quantize(
        &self,
        x: &CudaTensor,
        src: Option<&CudaSlice<i32>>,
        rows: usize,
    ) -> Result<(CudaSlice<u8>, CudaSlice<f32>)> {
        let kp = x.cols.div_ceil(fp8::BLOCK) * fp8::BLOCK;
        let q = self.alloc::<u8>(rows * kp)?;
        let s = self.alloc::<f32>(rows * kp / fp8::BLOCK)?;
        let args = [
            self.tptr(x)?,
            self.opt_ptr(src),
            self.ptr(&q),
            self.ptr(&s),
            Arg::I32(rows as i32),
            Arg::I32(x.cols as i32),
            Arg::I32(kp as i32),
        ];
        // One warp per (row, 128-column block), 4 warps per block.
        self.launch(
            "quantize_rows_1x128",
            ((rows * kp / fp8::BLOCK).div_ceil(4), 1),
            128,
            &args,
        )?;
        Ok((q, s))
    }

    /// The FP8 GEMM on quantized rows: dense (`tiles` None) or grouped (tile_expert, used_tiles).
    fn gemm_fp8(
        &self,
        a: &(CudaSlice<u8>, CudaSlice<f32>),
        rows: usize,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
        tiles: Option<(&CudaSlice<i32>, &CudaSlice<i32>)>,
    ) -> Result<CudaSlice<f32>> {
        let out = self.alloc::<f32>(rows * w.rows)?;
        let args = [
            self.ptr(&a.0),
            self.ptr(&a.1),
            self.ptr(&w.data),
            self.opt_ptr(w.scales.as_ref()),
            self.opt_ptr(bias.map(|b| &b.data)),
            self.ptr(&out),
            Arg::I32(rows as i32),
            Arg::I32(w.rows as i32),
            Arg::I32(w.stride as i32),
            Arg::I32(w.group_rows as i32),
            self.opt_ptr(tiles.map(|t| t.0)),
            self.opt_ptr(tiles.map(|t| t.1)),
            Arg::I64(w.expert_elems() as i64),
            Arg::I64(w.expert_scales() as i64),
        ];
        self.launch("gemm_fp8", (w.rows.div_ceil(TILE), rows.div_ceil(TILE)), 128, &args)?;
        Ok(out)
    }

    fn linear_any(&self, x: &CudaTensor, w: &CudaMatrix, bias: Option<&CudaVector>) -> Result<CudaSlice<f32>> {
        if w.dtype == WeightDtype::Fp8 && x.rows > GEMV_ROWS {
            let q = self.quantize(x, None, x.rows)?;
            return self.gemm_fp8(&q, x.rows, w, bias, None);
        }
        let out = self.alloc::<f32>(x.rows * w.rows)?;
        let args = [
            self.tptr(x)?,
            self.ptr(&w.data),
            self.opt_ptr(w.scales.as_ref()),
            self.opt_ptr(bias.map(|b| &b.data)),
            self.ptr(&out),
            Arg::I32(x.rows as i32),
            Arg::I32(w.cols as i32),
            Arg::I32(w.rows as i32),
            Arg::I32(w.stride as i32),
            Arg::I32(w.group_rows as i32),
        ];
        // 4 warps per block, one output row each, GEMV_ROWS rows of x per warp.
        let kernel = kernel_for(w.dtype, "linear");
        self.launch(kernel, (w.rows.div_ceil(4), x.rows.div_ceil(GEMV_ROWS)), 128, &args)?;
        Ok(out)
    }

    /// Each assignment's expert on its x row (masked fixed-capacity layout): [assignments, w.rows].
    fn experts_gemv(
        &self,
        x: &CudaTensor,
        x_div: usize,
        ids: &CudaSlice<i32>,
        assignments: usize,
        w: &CudaMatrix,
    ) -> Result<CudaSlice<f32>> {
        let out = self.alloc::<f32>(assignments * w.rows)?;
        let args = [
            self.tptr(x)?,
            Arg::I32(x_div as i32),
            self.ptr(ids),
            self.ptr(&w.data),
            self.opt_ptr(w.scales.as_ref()),
            self.ptr(&out),
            Arg::I32(w.cols as i32),
            Arg::I32(w.rows as i32),
            Arg::I32(w.stride as i32),
            Arg::I32(w.group_rows as i32),
            Arg::I64(w.expert_elems() as i64),
            Arg::I64(w.expert_scales() as i64),
        ];
        self.launch(
            kernel_for(w.dtype, "experts"),
            (w.rows.div_ceil(4), assignments),
            128,
            &args,
        )?;
        Ok(out)
    }

    fn moe_try(
        &mut self,
        x: &CudaTensor,
        w: &MoeExperts<Self>,
        spec: &MoeSpec,
        layer: usize,
    ) -> Result<CudaSlice<f32>> {
        let (rows, h, inter, n) = (x.rows, x.cols, spec.expert_intermediate, spec.n_experts);
        if n > MAX_EXPERTS {
            bail!("CUDA MoE supports at most {MAX_EXPERTS} experts, the model has {n}");
        }
        let k = spec.router.selection.max_experts();
        let logits = CudaTensor {
            rows,
            cols: n,
            buf: Some(self.linear_any(x, &w.router, w.router_bias.as_ref())?),
        };
        let probs = self.alloc::<f32>(rows * n)?;
        let ids = self.alloc::<i32>(rows * k)?;
        let weights = self.alloc::<f32>(rows * k)?;
        let (top_p, min_k) = match spec.router.selection {
            Selection::TopK { .. } => (0.0, k),
            Selection::TopP { p, min_experts, .. } => (p, min_experts),
        };
        let args = [
            self.tptr(&logits)?,
            self.ptr(&probs),
            self.ptr(&ids),
            self.ptr(&weights),
            Arg::I32(rows as i32),
            Arg::I32(n as i32),
            Arg::I32(k as i32),
            Arg::I32((spec.router.scoring == Scoring::Sigmoid) as i32),
            Arg::I32((spec.router.order == RouterOrder::SelectThenScore) as i32),
            Arg::F32(top_p),
            Arg::I32(min_k as i32),
            Arg::I32(spec.router.renormalize as i32),
        ];
        self.launch("moe_route", (rows.div_ceil(64), 1), 64, &args)?;
        let (kind, alpha, limit) = match spec.activation {
            ExpertActivation::SwiGlu => (0, 0.0, 0.0),
            ExpertActivation::ClampedSwiGlu { alpha, limit } => (1, alpha, limit),
        };
        let assignments = rows * k;
        let out = self.alloc::<f32>(rows * h)?;
        if w.gate_up.dtype == WeightDtype::Fp8 && rows > GEMV_ROWS {
            // Prefill: assignments sorted by expert, each expert's run padded to whole GEMM tiles.
            let max_rows = assignments.div_ceil(TILE) * TILE + n.min(assignments) * TILE;
            let sorted_src = self.alloc::<i32>(max_rows)?;
            let sorted_of = self.alloc::<i32>(assignments)?;
            let tile_expert = self.alloc::<i32>(max_rows / TILE)?;
            let used_tiles = self.alloc::<i32>(1)?;
            let args = [
                self.ptr(&ids),
                Arg::I32(assignments as i32),
                Arg::I32(k as i32),
                Arg::I32(n as i32),
                self.ptr(&sorted_src),
                self.ptr(&sorted_of),
                self.ptr(&tile_expert),
                self.ptr(&used_tiles),
                Arg::I32(max_rows as i32),
            ];
            self.launch("moe_align", (1, 1), 256, &args)?;
            let xq = self.quantize(x, Some(&sorted_src), max_rows)?;
            let tiles = Some((&tile_expert, &used_tiles));
            let gate_up = CudaTensor {
                rows: max_rows,
                cols: 2 * inter,
                buf: Some(self.gemm_fp8(&xq, max_rows, &w.gate_up, None, tiles)?),
            };
            let act = self.activation(&gate_up, w, None, Some(&tile_expert), inter, (kind, alpha, limit))?;
            let aq = self.quantize(&act, None, max_rows)?;
            let down = self.gemm_fp8(&aq, max_rows, &w.down, None, tiles)?;
            self.combine(&down, &ids, &weights, Some(&sorted_of), w, &out, rows, k, h)?;
        } else {
            let gate_up = CudaTensor {
                rows: assignments,
                cols: 2 * inter,
                buf: Some(self.experts_gemv(x, k, &ids, assignments, &w.gate_up)?),
            };
            let act = self.activation(&gate_up, w, Some(&ids), None, inter, (kind, alpha, limit))?;
            let down = self.experts_gemv(&act, 1, &ids, assignments, &w.down)?;
            self.combine(&down, &ids, &weights, None, w, &out, rows, k, h)?;
        }
        if let Some(trace) = self.routing.as_mut() {
            let probs = self.stream.clone_dtoh(&probs).map_err(driver_error)?;
            let ids = self.stream.clone_dtoh(&ids).map_err(driver_error)?;
            let weights = self.stream.clone_dtoh(&weights).map_err(driver_error)?;
            let chosen = ids
                .chunks(k)
                .zip(weights.chunks(k))
                .map(|(ids, ws)| {
                    ids.iter()
                        .zip(ws)
                        .filter(|(e, _)| **e >= 0)
                        .map(|(&e, &w)| (e as usize, w))
                        .collect()
                })
                .collect();
            trace.push(LayerRouting {
                layer,
                n_experts: n,
                probs,
                chosen,
            });
        }
        Ok(out)
    }

    fn activation(
        &self,
        gate_up: &CudaTensor,
        w: &MoeExperts<Self>,
        expert_of_row: Option<&CudaSlice<i32>>,
        tile_expert: Option<&CudaSlice<i32>>,
        inter: usize,
        (kind, alpha, limit): (i32, f32, f32),
    ) -> Result<CudaTensor> {
        let act = self.alloc::<f32>(gate_up.rows * inter)?;
        let args = [
            self.tptr(gate_up)?,
            self.opt_ptr(w.gate_up_bias.as_ref().map(|b| &b.data)),
            self.opt_ptr(expert_of_row),
            self.opt_ptr(tile_expert),
            self.ptr(&act),
            Arg::I32(gate_up.rows as i32),
            Arg::I32(inter as i32),
            Arg::I32(kind),
            Arg::F32(alpha),
            Arg::F32(limit),
        ];
        self.launch_1d("moe_activation", gate_up.rows * inter, &args)?;
        Ok(CudaTensor {
            rows: gate_up.rows,
            cols: inter,
            buf: Some(act),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn combine(
        &self,
        down: &CudaSlice<f32>,
        ids: &CudaSlice<i32>,
        weights: &CudaSlice<f32>,
        sorted_of: Option<&CudaSlice<i32>>,
        w: &MoeExperts<Self>,
        out: &CudaSlice<f32>,
        rows: usize,
        k: usize,
        h: usize,
    ) -> Result<()> {
        let args = [
            self.ptr(down),
            self.ptr(ids),
            self.ptr(weights),
            self.opt_ptr(sorted_of),
            self.opt_ptr(w.down_bias.as_ref().map(|b| &b.data)),
            self.ptr(out),
            Arg::I32(rows as i32),
            Arg::I32(k as i32),
            Arg::I32(h as i32),
        ];
        self.launch_1d("moe_combine", rows * h, &args)
    }

    fn attention_try(
        &mut self,
        cache: &mut CudaCache,
        spec: &AttnSpec,
        q: &CudaTensor,
        kv: Option<(&CudaTensor, &CudaTensor)>,
        sinks: Option<&CudaVector>,
    ) -> Result<CudaSlice<f32>> {
        if spec.head_dim > MAX_HEAD_DIM {
            bail!(
                "CUDA attention supports head_dim up to {MAX_HEAD_DIM}, the model has {}",
                spec.head_dim
            );
        }
        let step = self.step()?;
        if step.max_position >= cache.capacity {
            bail!(
                "position {} is past the CUDA KV cache ({} positions)",
                step.max_position,
                cache.capacity
            );
        }
        let (positions, seqs, rows) = (self.ptr(&step.positions), self.ptr(&step.seqs), step.rows);
        let kv_dim = spec.kv_dim();
        let Some(layer) = cache.layers[spec.kv_source].as_ref() else {
            bail!("layer {} has no KV cache of its own", spec.kv_source);
        };
        let (cache_k, cache_v) = (&layer.k, &layer.v);
        // A ring's rows, or 0 for a paged layer (attention.cu's kv_row).
        let layout = [
            Arg::I32(layer.ring.map_or(0, |r| r.rows) as i32),
            self.ptr(&cache.tables),
            Arg::I32(cache.pages_per_seq as i32),
        ];
        if let Some((k, v)) = kv {
            let mut args = vec![
                self.tptr(k)?,
                self.tptr(v)?,
                self.ptr(cache_k),
                self.ptr(cache_v),
                seqs,
                positions,
                Arg::I32(rows as i32),
                Arg::I32(kv_dim as i32),
            ];
            args.extend(layout);
            self.launch_1d("kv_write", rows * kv_dim, &args)?;
        }
        let out = self.alloc::<f32>(rows * spec.q_dim())?;
        let mut args = vec![
            self.tptr(q)?,
            self.ptr(cache_k),
            self.ptr(cache_v),
            self.opt_ptr(sinks.map(|s| &s.data)),
            self.ptr(&out),
            seqs,
            positions,
            Arg::I32(rows as i32),
            Arg::I32(spec.n_heads as i32),
            Arg::I32(spec.n_kv_heads as i32),
            Arg::I32(spec.head_dim as i32),
        ];
        args.extend(layout);
        args.extend([
            Arg::I32(spec.window().unwrap_or(0) as i32),
            Arg::F32(spec.softmax_scale),
        ]);
        // 4 heads (warps) per block.
        self.launch("attention", (rows, spec.n_heads.div_ceil(4)), 128, &args)?;
        Ok(out)
    }

    fn elementwise(&mut self, kernel: &'static str, x: &CudaTensor, y: Option<&CudaTensor>, extra: Option<Arg>) {
        self.guarded_in_place(|be| {
            let n = x.rows * x.cols;
            let mut args = vec![be.tptr(x)?];
            if let Some(y) = y {
                args.push(be.tptr(y)?);
            }
            args.extend(extra);
            args.push(Arg::I64(n as i64));
            be.launch_1d(kernel, n, &args)
        });
    }
}

/// The kernel of `family` ("linear", "experts") for a weight dtype.
fn kernel_for(dtype: WeightDtype, family: &str) -> &'static str {
    match (family, dtype) {
        ("linear", WeightDtype::F32) => "linear_f32",
        ("linear", WeightDtype::F16) => "linear_f16",
        ("linear", WeightDtype::Bf16) => "linear_bf16",
        ("linear", WeightDtype::Fp8) => "linear_fp8",
        (_, WeightDtype::F32) => "experts_f32",
        (_, WeightDtype::F16) => "experts_f16",
        (_, WeightDtype::Bf16) => "experts_bf16",
        (_, WeightDtype::Fp8) => "experts_fp8",
    }
}

impl WeightTypes for CudaBackend {
    type Matrix = CudaMatrix;
    type Vector = CudaVector;
    type Experts = CudaMatrix;
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Rope = CudaRope;
    type Cache = CudaCache;

    fn describe(&self) -> String {
        format!(
            "cuda ({}, {}, {} weights, f32 activations, f16 KV)",
            self.device_name,
            self.arch,
            self.dtype.name()
        )
    }

    fn kv_dtype(&self) -> KvDtype {
        KvDtype::F16
    }

    fn upload_matrix(&mut self, w: HostTensor, precision: Precision) -> Result<CudaMatrix> {
        let dtype = self.dtype.for_precision(precision);
        self.upload_weight(w, dtype, false)
    }

    fn upload_vector(&mut self, w: HostTensor) -> Result<CudaVector> {
        self.weight_bytes += 4 * w.data.len() as u64;
        Ok(CudaVector {
            len: w.data.len(),
            data: self.upload(&w.data)?,
        })
    }

    fn upload_experts(&mut self, w: HostTensor) -> Result<CudaMatrix> {
        self.upload_weight(w, self.dtype, true)
    }

    fn upload_rope(&mut self, table: RopeTable) -> Result<CudaRope> {
        Ok(CudaRope {
            inv_freq: self.upload(&table.inv_freq)?,
            attention_scale: table.attention_scale,
        })
    }

    fn new_cache(&mut self, spec: &ModelSpec, slots: usize, pool_tokens: Option<usize>) -> Result<CudaCache> {
        let paged = paged_kv_dims(spec).next().is_some();
        let context = self.context.min(spec.max_position_embeddings).max(1);
        let pages = PagePool::new(slots, pool_tokens.unwrap_or(slots * context), paged);
        let capacity = pages.bound(context).max(1);
        let pages_per_seq = capacity.div_ceil(KV_PAGE);
        let mut layers = Vec::new();
        for (i, layer) in spec.layers.iter().enumerate() {
            if layer.attn.kv_source != i {
                layers.push(None);
                continue;
            }
            let ring = layer.attn.window().map(|w| Ring::new(w, capacity));
            let n = ring.map_or(pages.pages() * KV_PAGE, |r| slots * r.rows) * layer.attn.kv_dim();
            self.cache_bytes += 4 * n as u64;
            layers.push(Some(LayerKv {
                k: self.alloc::<u16>(n)?,
                v: self.alloc::<u16>(n)?,
                ring,
            }));
        }
        Ok(CudaCache {
            layers,
            capacity,
            lens: vec![0; slots],
            pages,
            pages_per_seq,
            tables: self.alloc::<i32>(slots * pages_per_seq)?,
        })
    }

    fn reserve_kv(&mut self, cache: &mut CudaCache, step: &Step) -> Result<()> {
        if cache.pages.reserve(step)? {
            let tables = cache.pages.flat_tables(cache.pages_per_seq);
            cache.tables = self.upload(&tables.iter().map(|&p| p as i32).collect::<Vec<i32>>())?;
        }
        Ok(())
    }

    fn begin_step(&mut self, step: &Step) -> Result<()> {
        self.take_error()?;
        // A sliding layer's ring holds its window plus one such step (`Ring::new`).
        if step.len() > PREFILL_CHUNK {
            bail!(
                "a step of {} tokens is above the CUDA backend's {PREFILL_CHUNK}",
                step.len()
            );
        }
        let max_position = step.positions.iter().copied().max().unwrap_or(0);
        let ints = |v: &[usize]| v.iter().map(|&x| x as i32).collect::<Vec<i32>>();
        let tokens: Vec<i32> = step.tokens.iter().map(|&t| t as i32).collect();
        self.step = Some(StepInputs {
            rows: step.len(),
            tokens: self.upload(&tokens)?,
            positions: self.upload(&ints(&step.positions))?,
            seqs: self.upload(&ints(&step.seqs))?,
            max_position,
            host: step.clone(),
        });
        Ok(())
    }

    fn embed(&mut self, table: &CudaMatrix) -> CudaTensor {
        let rows = self.step.as_ref().map_or(0, |s| s.rows);
        self.guarded(rows, table.cols, |be| {
            let out = be.alloc::<f32>(rows * table.cols)?;
            let kernel = match table.dtype {
                WeightDtype::F32 => "embed_f32",
                WeightDtype::F16 => "embed_f16",
                WeightDtype::Bf16 => "embed_bf16",
                WeightDtype::Fp8 => bail!("CUDA: FP8 embedding tables are not supported (kept bf16)"),
            };
            let args = [
                be.ptr(&table.data),
                be.ptr(&be.step()?.tokens),
                be.ptr(&out),
                Arg::I32(rows as i32),
                Arg::I32(table.cols as i32),
            ];
            be.launch_1d(kernel, rows * table.cols, &args)?;
            Ok(out)
        })
    }

    fn rms_norm(&mut self, x: &CudaTensor, weight: &CudaVector, eps: f32, group: usize) -> CudaTensor {
        self.guarded(x.rows, x.cols, |be| {
            let out = be.alloc::<f32>(x.rows * x.cols)?;
            let args = [
                be.tptr(x)?,
                be.ptr(&weight.data),
                be.ptr(&out),
                Arg::I32(x.cols as i32),
                Arg::I32(group as i32),
                Arg::I32(weight.len as i32),
                Arg::F32(eps),
            ];
            be.launch("rms_norm", (x.rows * (x.cols / group), 1), 256, &args)?;
            Ok(out)
        })
    }

    fn linear(&mut self, x: &CudaTensor, w: &CudaMatrix, bias: Option<&CudaVector>) -> CudaTensor {
        self.guarded(x.rows, w.rows, |be| be.linear_any(x, w, bias))
    }

    fn clamp(&mut self, x: &mut CudaTensor, limit: f32) {
        self.elementwise("clamp_values", x, None, Some(Arg::F32(limit)));
    }

    fn apply_rope(&mut self, x: &mut CudaTensor, rope: &CudaRope, head_dim: usize) {
        self.guarded_in_place(|be| {
            let n = x.rows * (x.cols / head_dim) * (head_dim / 2);
            let args = [
                be.tptr(x)?,
                be.ptr(&rope.inv_freq),
                be.ptr(&be.step()?.positions),
                Arg::I32(x.rows as i32),
                Arg::I32(x.cols as i32),
                Arg::I32(head_dim as i32),
                Arg::F32(rope.attention_scale),
            ];
            be.launch_1d("apply_rope", n, &args)
        });
    }

    fn attention(
        &mut self,
        cache: &mut CudaCache,
        spec: &AttnSpec,
        q: &CudaTensor,
        kv: Option<(&CudaTensor, &CudaTensor)>,
        sinks: Option<&CudaVector>,
    ) -> CudaTensor {
        self.guarded(q.rows, spec.q_dim(), |be| be.attention_try(cache, spec, q, kv, sinks))
    }

    fn swiglu(&mut self, gate: &mut CudaTensor, up: &CudaTensor) {
        self.elementwise("swiglu", gate, Some(up), None);
    }

    fn moe(&mut self, x: &CudaTensor, weights: &MoeExperts<Self>, spec: &MoeSpec, layer: usize) -> CudaTensor {
        self.guarded(x.rows, x.cols, |be| be.moe_try(x, weights, spec, layer))
    }

    fn sigmoid_gate(&mut self, x: &mut CudaTensor, gate: &CudaTensor) {
        let cols = Arg::I32(x.cols as i32);
        self.elementwise("sigmoid_gate", x, Some(gate), Some(cols));
    }

    fn add_assign(&mut self, x: &mut CudaTensor, y: &CudaTensor) {
        self.elementwise("add_assign", x, Some(y), None);
    }

    fn select_rows(&mut self, x: &CudaTensor, rows: &[usize]) -> CudaTensor {
        self.guarded(rows.len(), x.cols, |be| {
            let out = be.alloc::<f32>(rows.len() * x.cols)?;
            let idx: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
            let idx = be.upload(&idx)?;
            let args = [
                be.tptr(x)?,
                be.ptr(&idx),
                be.ptr(&out),
                Arg::I32(rows.len() as i32),
                Arg::I32(x.cols as i32),
            ];
            be.launch_1d("select_rows", rows.len() * x.cols, &args)?;
            Ok(out)
        })
    }

    fn end_step(&mut self, cache: &mut CudaCache) -> Result<()> {
        self.take_error()?;
        if let Some(step) = &self.step {
            for (&slot, &pos) in step.host.seqs.iter().zip(&step.host.positions) {
                cache.lens[slot] = cache.lens[slot].max(pos + 1);
            }
        }
        Ok(())
    }

    /// Greedy rows choose on the device (`pick_greedy` in sample.cu), so only their ids come back; a step
    /// with a weighted draw still reads the logits back to the reference (no sampling kernel yet).
    fn pick(&mut self, logits: &CudaTensor, picks: &[Pick]) -> Result<Vec<u32>> {
        if picks.is_empty() || picks.iter().any(|p| p.params.temperature > 0.0) {
            return pick_on_host(self, logits, picks);
        }
        if logits.rows != picks.len() {
            bail!("CUDA: {} picks for {} rows of logits", picks.len(), logits.rows);
        }
        self.take_error()?;
        let mut penalized: Vec<i32> = Vec::new();
        let mut starts = vec![0i32];
        for p in picks {
            penalized.extend(p.penalized.iter().map(|&id| id as i32));
            starts.push(penalized.len() as i32);
        }
        // Never read when no row has penalized ids; an upload needs one element.
        penalized.push(-1);
        let penalties: Vec<f32> = picks.iter().map(|p| p.params.repeat_penalty).collect();
        let (penalized, starts, penalties) = (
            self.upload(&penalized)?,
            self.upload(&starts)?,
            self.upload(&penalties)?,
        );
        let out = self.alloc::<i32>(picks.len())?;
        let args = [
            self.tptr(logits)?,
            Arg::I32(logits.cols as i32),
            self.ptr(&penalized),
            self.ptr(&starts),
            self.ptr(&penalties),
            self.ptr(&out),
        ];
        self.launch("pick_greedy", (picks.len(), 1), 256, &args)?;
        let ids = self.stream.clone_dtoh(&out).map_err(driver_error)?;
        Ok(ids[..picks.len()].iter().map(|&id| id as u32).collect())
    }

    fn read(&mut self, x: &CudaTensor) -> Result<Vec<f32>> {
        self.take_error()?;
        let Some(buf) = &x.buf else {
            bail!("CUDA: reading a tensor from a failed op");
        };
        let mut data = self.stream.clone_dtoh(buf).map_err(driver_error)?;
        data.truncate(x.rows * x.cols);
        Ok(data)
    }

    fn allocated_bytes(&self) -> u64 {
        self.weight_bytes + self.cache_bytes
    }

    fn bytes_per_weight(&self, precision: Precision) -> f64 {
        self.dtype.for_precision(precision).bytes()
    }

    fn copy_bandwidth(&mut self) -> Result<f64> {
        const BYTES: usize = 1 << 30;
        let src = self.alloc::<u8>(BYTES)?;
        let mut dst = self.alloc::<u8>(BYTES)?;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let started = std::time::Instant::now();
            self.stream.memcpy_dtod(&src, &mut dst).map_err(driver_error)?;
            self.stream.synchronize().map_err(driver_error)?;
            best = best.min(started.elapsed().as_secs_f64());
        }
        Ok(2.0 * BYTES as f64 / best)
    }

    fn trace_routing(&mut self, on: bool) {
        self.routing = on.then(Vec::new);
    }

    fn take_routing(&mut self) -> Result<Vec<LayerRouting>> {
        self.take_error()?;
        Ok(self.routing.as_mut().map(std::mem::take).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scale_row` of kernels/common.cuh.
    fn scale_row(row: usize, group_rows: usize) -> usize {
        (row / group_rows) * group_rows.div_ceil(128) + (row % group_rows) / 128
    }

    #[test]
    fn kernel_scale_indexing_matches_the_checkpoint_grid() {
        // Stacked gate/up [experts, 2, inter, hidden] with inter and hidden off the 128 grid.
        let shape = [3, 2, 130, 200];
        let grid = BlockGrid::of(&shape);
        let (rows, group_rows, stride) = (2 * 130, 130, 256);
        let per_expert = expert_scales(rows, group_rows, stride);
        assert_eq!(per_expert * 3, grid.n_scales());
        for e in 0..3 {
            for row in 0..rows {
                for col in (0..200).step_by(7) {
                    let kernel = e * per_expert + scale_row(row, group_rows) * (stride / 128) + col / 128;
                    assert_eq!(
                        kernel,
                        grid.scale_index(e * rows + row, col),
                        "expert {e} row {row} col {col}"
                    );
                }
            }
        }
    }
}
