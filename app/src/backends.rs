//! Picks and starts a backend for `--backend auto|cpu|wgpu|cuda`.

use std::path::Path;

use volt_runtime::backend::cpu::CpuBackend;
use volt_runtime::backend::WeightDtype;
use volt_runtime::session::{BackendSession, Session};
use volt_runtime::{bail, Result};

pub const BACKENDS: &[&str] = &["auto", "cpu", "wgpu", "cuda"];

/// Loads `dir` onto the chosen backend with `slots` sequence slots.
pub fn open(dir: &Path, backend: &str, dtype: Option<&str>, slots: usize) -> Result<Box<dyn Session>> {
    let chosen = match backend {
        "auto" => auto(),
        "cpu" | "wgpu" | "cuda" => backend,
        other => bail!("unknown backend `{other}` (expected one of: {})", BACKENDS.join(", ")),
    };
    match chosen {
        "cpu" => {
            let dtype = WeightDtype::parse(dtype.unwrap_or("f32"))?;
            Ok(Box::new(BackendSession::load(CpuBackend::new(dtype), dir, slots)?))
        }
        "wgpu" => {
            bail!("backend wgpu cannot start: the WGSL backend is not part of this build yet (use --backend cpu)")
        }
        _ => bail!("backend cuda cannot start: {}", volt_cuda::unavailable_reason()),
    }
}

/// CUDA on a Hopper GPU, else wgpu on a GPU adapter, else CPU: the backends this build can start.
fn auto() -> &'static str {
    "cpu"
}
