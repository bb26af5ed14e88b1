//! Picks and starts a backend for `--backend auto|cpu|wgpu|cuda`.

use std::path::Path;

use volt_runtime::backend::cpu::CpuBackend;
use volt_runtime::backend::wgpu::gpu::Gpu;
use volt_runtime::backend::wgpu::WgpuBackend;
use volt_runtime::backend::WeightDtype;
use volt_runtime::checkpoint::Checkpoint;
use volt_runtime::session::{BackendSession, Session};
use volt_runtime::{bail, Result};

pub const BACKENDS: &[&str] = &["auto", "cpu", "wgpu", "cuda"];

/// Tokens a GPU KV cache holds per sequence unless the model's context is shorter.
pub const GPU_CONTEXT: usize = 8192;

/// Loads `dir` onto the chosen backend with `slots` sequence slots. Weights stay in the checkpoint's own
/// precision unless `dtype` asks for another.
pub fn open(dir: &Path, backend: &str, dtype: Option<&str>, slots: usize) -> Result<Box<dyn Session + Send>> {
    open_with_pool(dir, backend, dtype, slots, None)
}

/// Like `open`, with the full-attention layers' KV page pool holding `pool_tokens` positions (default: every
/// slot's whole context, or what the device holds); a smaller pool also bounds the context.
pub fn open_with_pool(
    dir: &Path,
    backend: &str,
    dtype: Option<&str>,
    slots: usize,
    pool_tokens: Option<usize>,
) -> Result<Box<dyn Session + Send>> {
    let chosen = match backend {
        "auto" => auto(),
        "cpu" | "wgpu" | "cuda" => backend,
        other => bail!("unknown backend `{other}` (expected one of: {})", BACKENDS.join(", ")),
    };
    let dtype = match dtype {
        Some(d) => WeightDtype::parse(d)?,
        None => Checkpoint::open(dir)?.storage_dtype(),
    };
    match chosen {
        "cpu" => Ok(Box::new(BackendSession::load_with_pool(
            CpuBackend::new(dtype),
            dir,
            slots,
            pool_tokens,
        )?)),
        "wgpu" => {
            let gpu = Gpu::open_default().map_err(|e| e.context("backend wgpu cannot start"))?;
            Ok(Box::new(BackendSession::load_with_pool(
                WgpuBackend::with_gpu(gpu, dtype, GPU_CONTEXT)?,
                dir,
                slots,
                pool_tokens,
            )?))
        }
        _ => {
            let start = || volt_cuda::CudaBackend::new(volt_cuda::Device::open()?, dtype, GPU_CONTEXT);
            let backend = start().map_err(|e| e.context("backend cuda cannot start"))?;
            Ok(Box::new(BackendSession::load(backend, dir, slots)?))
        }
    }
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
