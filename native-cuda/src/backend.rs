//! `Backend` on CUDA: cudarc's driver API, one stream, the kernels of `kernels.rs` launched with their typed
//! parameter structs (`params.rs`). Ops enqueue work and return their errors where they happen (an
//! allocation, a copy, a launch); a fault the device hits while running comes back from a later call, at the
//! latest the next copy back. Weights and the matrix products are in `weights.rs`, MoE in `moe.rs`, the KV
//! cache and attention in `attention.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use volt_runtime::backend::{pick_on_host, Backend, LayerRouting, MoeExperts, WeightAccounting, WeightTypes};
use volt_runtime::checkpoint::HostTensor;
use volt_runtime::dtype::{KvDtype, Precision, WeightDtype};
use volt_runtime::error::Error;
use volt_runtime::rope::RopeTable;
use volt_runtime::sampler::Pick;
use volt_runtime::spec::{AttnSpec, ModelSpec, MoeSpec};
use volt_runtime::step::{Step, MAX_STEP_TOKENS};
use volt_runtime::tensor::StoredTensor;
use volt_runtime::{bail, Result};

use crate::attention::CudaCache;
use crate::kernels::{
    arch_for, ADD_ASSIGN, APPLY_ROPE, CLAMP_VALUES, EMBED_BF16, EMBED_F16, EMBED_F32, MODULES, PICK_GREEDY, RMS_NORM,
    SELECT_ROWS, SIGMOID_GATE, SWIGLU,
};
use crate::nvrtc::Nvrtc;
use crate::params::{ElementwiseArgs, GatherArgs, Kernel, KernelArgs, PickGreedyArgs, RmsNormArgs, RopeArgs};
use crate::weights::CudaMatrix;
use crate::Device;

/// Activations [rows, cols] in f32.
pub struct CudaTensor {
    pub rows: usize,
    pub cols: usize,
    pub(crate) buf: CudaSlice<f32>,
}

pub struct CudaVector {
    pub(crate) len: usize,
    pub(crate) data: CudaSlice<f32>,
}

pub struct CudaRope {
    inv_freq: CudaSlice<f32>,
    attention_scale: f32,
}

/// The step's per-token inputs on the device.
pub(crate) struct StepInputs {
    pub(crate) rows: usize,
    tokens: CudaSlice<i32>,
    pub(crate) positions: CudaSlice<i32>,
    pub(crate) seqs: CudaSlice<i32>,
    pub(crate) max_position: usize,
}

pub struct CudaBackend {
    pub(crate) stream: Arc<CudaStream>,
    device_name: String,
    arch: String,
    /// `--dtype`; None keeps each matrix as published where the kernels decode it.
    pub(crate) dtype: Option<WeightDtype>,
    /// FP8 tensor cores (sm_89 or newer) for FP8 weights.
    pub(crate) fp8_capable: bool,
    pub(crate) context: usize,
    functions: HashMap<&'static str, CudaFunction>,
    step: Option<StepInputs>,
    pub(crate) routing: Option<Vec<LayerRouting>>,
    pub(crate) weights: WeightAccounting,
    pub(crate) cache_bytes: u64,
}

pub(crate) fn driver_error(e: cudarc::driver::DriverError) -> Error {
    Error::msg(format!("CUDA: {e}"))
}

impl CudaBackend {
    /// Compiles (or loads from the disk cache) every kernel for the device and starts a backend that keeps
    /// weights in `dtype` (None: as published) and up to `context` positions per sequence.
    pub fn new(device: Device, dtype: impl Into<Option<WeightDtype>>, context: usize) -> Result<CudaBackend> {
        let dtype = dtype.into();
        if device.capability < (8, 0) {
            bail!(
                "{} (compute capability {}.{}) is older than sm_80",
                device.name,
                device.capability.0,
                device.capability.1
            );
        }
        let fp8_capable = device.capability >= (8, 9);
        if dtype == Some(WeightDtype::Fp8) && !fp8_capable {
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
            for kernel in module.kernels {
                functions.insert(kernel.name, loaded.load_function(kernel.name).map_err(driver_error)?);
            }
        }
        Ok(CudaBackend {
            stream,
            device_name: device.name,
            arch,
            dtype,
            fp8_capable,
            context,
            functions,
            step: None,
            routing: None,
            weights: WeightAccounting::default(),
            cache_bytes: 0,
        })
    }

    /// A buffer's device address, for a parameter struct.
    pub(crate) fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    /// The address of an optional input, 0 (null) when absent.
    pub(crate) fn opt_ptr<T>(&self, s: Option<&CudaSlice<T>>) -> u64 {
        s.map_or(0, |s| self.ptr(s))
    }

    pub(crate) fn alloc<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(n.max(1))
            .map_err(|e| driver_error(e).context(format!("allocating {n} elements")))
    }

    pub(crate) fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            bail!("CUDA: uploading an empty buffer");
        }
        self.stream.clone_htod(data).map_err(driver_error)
    }

    /// Launches `kernel` on a grid of (x, y) blocks of `block` threads with `args` as its one parameter.
    pub(crate) fn launch<P: KernelArgs>(
        &self,
        kernel: Kernel<P>,
        grid: (usize, usize),
        block: usize,
        args: &P,
    ) -> Result<()> {
        let name = kernel.name;
        if grid.0 == 0 || grid.1 == 0 {
            return Ok(());
        }
        if grid.0 >= 1 << 31 || grid.1 > 65535 {
            bail!("CUDA: {name} needs a grid of {grid:?} blocks, past the device's limits");
        }
        let Some(function) = self.functions.get(name) else {
            bail!("CUDA kernel {name} is not loaded on this GPU");
        };
        let mut builder = self.stream.launch_builder(function);
        builder.arg(args);
        let config = LaunchConfig {
            grid_dim: (grid.0 as u32, grid.1 as u32, 1),
            block_dim: (block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel takes exactly one `P` by value (`Kernel<P>`, checked against the C structs by
        // `params.rs`'s test); its pointers are live buffers (or null where the kernel accepts null) sized for
        // the grid by the call site.
        unsafe { builder.launch(config) }
            .map(|_| ())
            .map_err(|e| driver_error(e).context(format!("launching {name}")))
    }

    /// One thread per element, 256 per block.
    pub(crate) fn launch_1d<P: KernelArgs>(&self, kernel: Kernel<P>, n: usize, args: &P) -> Result<()> {
        self.launch(kernel, (n.div_ceil(256), 1), 256, args)
    }

    pub(crate) fn step(&self) -> Result<&StepInputs> {
        match &self.step {
            Some(s) => Ok(s),
            None => bail!("CUDA: an op ran before begin_step"),
        }
    }

    /// An element-wise kernel over x with the second operand `y` (gate, addend) and clamp bound `limit`.
    fn elementwise(
        &self,
        kernel: Kernel<ElementwiseArgs>,
        x: &CudaTensor,
        y: Option<&CudaTensor>,
        limit: f32,
    ) -> Result<()> {
        let n = x.rows * x.cols;
        let args = ElementwiseArgs {
            x: self.ptr(&x.buf),
            y: self.opt_ptr(y.map(|y| &y.buf)),
            n: n as i64,
            cols: x.cols as i32,
            limit,
        };
        self.launch_1d(kernel, n, &args)
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
            self.weights.describe()
        )
    }

    fn kv_dtype(&self) -> KvDtype {
        KvDtype::F16
    }

    fn upload_matrix(&mut self, w: StoredTensor, precision: Precision) -> Result<CudaMatrix> {
        self.upload_weight(w, precision, false)
    }

    fn upload_vector(&mut self, w: HostTensor) -> Result<CudaVector> {
        self.weights
            .add(Precision::Full, WeightDtype::F32, w.data.len(), 4 * w.data.len());
        Ok(CudaVector {
            len: w.data.len(),
            data: self.upload(&w.data)?,
        })
    }

    fn upload_experts(&mut self, w: StoredTensor) -> Result<CudaMatrix> {
        self.upload_weight(w, Precision::Storage, true)
    }

    fn upload_rope(&mut self, table: RopeTable) -> Result<CudaRope> {
        Ok(CudaRope {
            inv_freq: self.upload(&table.inv_freq)?,
            attention_scale: table.attention_scale,
        })
    }

    fn new_cache(&mut self, spec: &ModelSpec, slots: usize, pool_tokens: Option<usize>) -> Result<CudaCache> {
        self.create_cache(spec, slots, pool_tokens)
    }

    fn reserve_kv(&mut self, cache: &mut CudaCache, step: &Step) -> Result<()> {
        self.reserve_pages(cache, step)
    }

    fn begin_step(&mut self, step: &Step) -> Result<()> {
        // A sliding layer's ring holds its window plus one such step (`KvSlots::new`).
        if step.len() > MAX_STEP_TOKENS {
            bail!(
                "a step of {} tokens is above the CUDA backend's {MAX_STEP_TOKENS}",
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
        });
        Ok(())
    }

    fn embed(&mut self, table: &CudaMatrix) -> Result<CudaTensor> {
        let kernel = match table.dtype {
            WeightDtype::F32 => EMBED_F32,
            WeightDtype::F16 => EMBED_F16,
            WeightDtype::Bf16 => EMBED_BF16,
            other => bail!("CUDA: {} embedding tables are not supported", other.name()),
        };
        let step = self.step()?;
        let (rows, cols) = (step.rows, table.cols);
        let out = self.alloc::<f32>(rows * cols)?;
        let args = GatherArgs {
            src: self.ptr(&table.data),
            index: self.ptr(&step.tokens),
            out: self.ptr(&out),
            rows: rows as i32,
            cols: cols as i32,
        };
        self.launch_1d(kernel, rows * cols, &args)?;
        Ok(CudaTensor { rows, cols, buf: out })
    }

    fn rms_norm(&mut self, x: &CudaTensor, weight: &CudaVector, eps: f32, group: usize) -> Result<CudaTensor> {
        let out = self.alloc::<f32>(x.rows * x.cols)?;
        let args = RmsNormArgs {
            x: self.ptr(&x.buf),
            weight: self.ptr(&weight.data),
            out: self.ptr(&out),
            cols: x.cols as i32,
            group: group as i32,
            weight_len: weight.len as i32,
            eps,
        };
        self.launch(RMS_NORM, (x.rows * (x.cols / group), 1), 256, &args)?;
        Ok(CudaTensor {
            rows: x.rows,
            cols: x.cols,
            buf: out,
        })
    }

    fn linear(&mut self, x: &CudaTensor, w: &CudaMatrix, bias: Option<&CudaVector>) -> Result<CudaTensor> {
        self.matmul(x, w, bias)
    }

    fn clamp(&mut self, x: &mut CudaTensor, limit: f32) -> Result<()> {
        self.elementwise(CLAMP_VALUES, x, None, limit)
    }

    fn apply_rope(&mut self, x: &mut CudaTensor, rope: &CudaRope, head_dim: usize) -> Result<()> {
        let n = x.rows * (x.cols / head_dim) * (head_dim / 2);
        let args = RopeArgs {
            x: self.ptr(&x.buf),
            inv_freq: self.ptr(&rope.inv_freq),
            positions: self.ptr(&self.step()?.positions),
            rows: x.rows as i32,
            cols: x.cols as i32,
            head_dim: head_dim as i32,
            attention_scale: rope.attention_scale,
        };
        self.launch_1d(APPLY_ROPE, n, &args)
    }

    fn attention(
        &mut self,
        cache: &mut CudaCache,
        spec: &AttnSpec,
        q: &CudaTensor,
        kv: Option<(&CudaTensor, &CudaTensor)>,
        sinks: Option<&CudaVector>,
    ) -> Result<CudaTensor> {
        self.attend(cache, spec, q, kv, sinks)
    }

    fn swiglu(&mut self, gate: &mut CudaTensor, up: &CudaTensor) -> Result<()> {
        self.elementwise(SWIGLU, gate, Some(up), 0.0)
    }

    fn moe(&mut self, x: &CudaTensor, weights: &MoeExperts<Self>, spec: &MoeSpec, layer: usize) -> Result<CudaTensor> {
        self.route_experts(x, weights, spec, layer)
    }

    fn sigmoid_gate(&mut self, x: &mut CudaTensor, gate: &CudaTensor) -> Result<()> {
        self.elementwise(SIGMOID_GATE, x, Some(gate), 0.0)
    }

    fn add_assign(&mut self, x: &mut CudaTensor, y: &CudaTensor) -> Result<()> {
        self.elementwise(ADD_ASSIGN, x, Some(y), 0.0)
    }

    fn select_rows(&mut self, x: &CudaTensor, rows: &[usize]) -> Result<CudaTensor> {
        let out = self.alloc::<f32>(rows.len() * x.cols)?;
        let idx: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
        let idx = self.upload(&idx)?;
        let args = GatherArgs {
            src: self.ptr(&x.buf),
            index: self.ptr(&idx),
            out: self.ptr(&out),
            rows: rows.len() as i32,
            cols: x.cols as i32,
        };
        self.launch_1d(SELECT_ROWS, rows.len() * x.cols, &args)?;
        Ok(CudaTensor {
            rows: rows.len(),
            cols: x.cols,
            buf: out,
        })
    }

    fn read(&mut self, x: &CudaTensor) -> Result<Vec<f32>> {
        let mut data = self.stream.clone_dtoh(&x.buf).map_err(driver_error)?;
        data.truncate(x.rows * x.cols);
        Ok(data)
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
        let args = PickGreedyArgs {
            logits: self.ptr(&logits.buf),
            penalized: self.ptr(&penalized),
            starts: self.ptr(&starts),
            penalties: self.ptr(&penalties),
            out: self.ptr(&out),
            vocab: logits.cols as i32,
            _pad: 0,
        };
        self.launch(PICK_GREEDY, (picks.len(), 1), 256, &args)?;
        let ids = self.stream.clone_dtoh(&out).map_err(driver_error)?;
        Ok(ids[..picks.len()].iter().map(|&id| id as u32).collect())
    }

    fn allocated_bytes(&self) -> u64 {
        self.weights.total_bytes() + self.cache_bytes
    }

    fn bytes_per_weight(&self, precision: Precision) -> f64 {
        self.weights.bytes_per_weight(precision)
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
        Ok(self.routing.as_mut().map(std::mem::take).unwrap_or_default())
    }
}
