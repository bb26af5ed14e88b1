//! Picks and starts a backend for `--backend auto|cpu|wgpu|cuda`.

use std::path::Path;

use volt_runtime::backend::cpu::CpuBackend;
use volt_runtime::backend::wgpu::gpu::Gpu;
use volt_runtime::backend::wgpu::WgpuBackend;
use volt_runtime::backend::{Backend, KvDtype, WeightDtype};
use volt_runtime::checkpoint::Checkpoint;
use volt_runtime::session::{BackendSession, Session};
use volt_runtime::{bail, Result};

use crate::cli::Flags;

pub const BACKENDS: &[&str] = &["auto", "cpu", "wgpu", "cuda"];

/// Tokens a GPU KV cache holds per sequence unless the model's context is shorter.
pub const GPU_CONTEXT: usize = 8192;

/// `--dtype` and `--kv-dtype` as given: the weights' and the KV cache's precision. Unset, weights stay in the
/// checkpoint's own precision and the KV cache in the backend's (f32 on the CPU reference, f16 on GPUs).
#[derive(Clone, Debug, Default)]
pub struct Dtypes {
    pub weights: Option<String>,
    pub kv: Option<String>,
}

impl Dtypes {
    pub fn from_flags(flags: &Flags) -> Dtypes {
        Dtypes {
            weights: flags.str("dtype").map(str::to_string),
            kv: flags.str("kv-dtype").map(str::to_string),
        }
    }
}

/// The KV dtype a session on `backend` keeps: `--kv-dtype`, else the backend's own (f32 on the CPU reference,
/// f16 on the GPU backends).
pub fn kv_dtype(backend: &str, dtypes: &Dtypes) -> Result<KvDtype> {
    match &dtypes.kv {
        Some(kv) => KvDtype::parse(kv),
        None if backend == "cpu" => Ok(KvDtype::F32),
        None => Ok(KvDtype::F16),
    }
}

/// Loads `dir` on the chosen backend with `slots` sequence slots.
pub fn open(dir: &Path, backend: &str, dtypes: &Dtypes, slots: usize) -> Result<Box<dyn Session + Send>> {
    open_with_pool(dir, backend, dtypes, slots, None)
}

/// Like `open`, with the full-attention layers' KV page pool holding `pool_tokens` positions (default: every
/// slot's whole context, or what the device holds); a smaller pool also bounds the context.
pub fn open_with_pool(
    dir: &Path,
    backend: &str,
    dtypes: &Dtypes,
    slots: usize,
    pool_tokens: Option<usize>,
) -> Result<Box<dyn Session + Send>> {
    let chosen = match backend {
        "auto" => auto(),
        "cpu" | "wgpu" | "cuda" => backend,
        other => bail!("unknown backend `{other}` (expected one of: {})", BACKENDS.join(", ")),
    };
    let dtype = match &dtypes.weights {
        Some(d) => WeightDtype::parse(d)?,
        None => Checkpoint::open(dir)?.storage_dtype(),
    };
    let kv = kv_dtype(chosen, dtypes)?;
    match chosen {
        "cpu" => load(CpuBackend::new(dtype).with_kv_dtype(kv), dir, slots, pool_tokens),
        "wgpu" => {
            let gpu = Gpu::open_default().map_err(|e| e.context("backend wgpu cannot start"))?;
            let mut backend = WgpuBackend::with_gpu(gpu, dtype, GPU_CONTEXT)?;
            backend.set_kv_dtype(kv);
            load(backend, dir, slots, pool_tokens)
        }
        _ => {
            if kv != KvDtype::F16 {
                bail!(
                    "the cuda backend keeps its KV cache in f16; --kv-dtype {} runs on cpu and wgpu",
                    kv.name()
                );
            }
            let start = || volt_cuda::CudaBackend::new(volt_cuda::Device::open()?, dtype, GPU_CONTEXT);
            let backend = start().map_err(|e| e.context("backend cuda cannot start"))?;
            load(backend, dir, slots, pool_tokens)
        }
    }
}

/// The model in `dir` on `backend`, as the session every command drives.
fn load<B: Backend + Send + 'static>(
    backend: B,
    dir: &Path,
    slots: usize,
    pool_tokens: Option<usize>,
) -> Result<Box<dyn Session + Send>>
where
    BackendSession<B>: Send,
{
    Ok(Box::new(BackendSession::load_with_pool(
        backend,
        dir,
        slots,
        pool_tokens,
    )?))
}

/// CUDA on a Hopper GPU, else wgpu on a hardware GPU adapter, else CPU (a software adapter such as lavapipe
/// is slower than the CPU backend).
fn auto() -> &'static str {
    if volt_cuda::hopper_ready() {
        "cuda"
    } else if Gpu::hardware_adapter_present() {
        "wgpu"
    } else {
        "cpu"
    }
}
