//! volt-cuda: the CUDA backend for Hopper (FP8 E4M3 weights with 128x128 block scales), built on cudarc's
//! driver API with kernels compiled at run time by NVRTC. Nothing CUDA is needed to build it: libcuda and
//! libnvrtc are loaded when a backend starts, after checks that turn their absence into an error (cudarc
//! panics on a missing library).

pub mod attention;
pub mod backend;
pub mod kernels;
mod moe;
pub mod nvrtc;
pub mod params;
pub mod weights;

use std::sync::Arc;

use cudarc::driver::CudaContext;
use volt_runtime::backend::Backend;
use volt_runtime::conformance::{self, CaseResult};
use volt_runtime::dtype::{Precision, WeightDtype};
use volt_runtime::fp8::{self, BlockGrid};
use volt_runtime::step::Step;
use volt_runtime::tensor::StoredTensor;
use volt_runtime::{bail, Result};

pub use backend::CudaBackend;

/// The first CUDA device, opened.
pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub name: String,
    pub capability: (u32, u32),
}

impl Device {
    /// Device 0, or why there is none. Never panics: the driver library is probed before cudarc touches it.
    pub fn open() -> Result<Device> {
        // SAFETY: only tries to dlopen the driver library under its usual names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            bail!("no CUDA driver (libcuda.so) found");
        }
        let driver = |e: cudarc::driver::DriverError| volt_runtime::error::Error::msg(format!("CUDA driver: {e}"));
        if CudaContext::device_count().map_err(driver)? < 1 {
            bail!("the CUDA driver reports no device");
        }
        let ctx = CudaContext::new(0).map_err(driver)?;
        let (major, minor) = ctx.compute_capability().map_err(driver)?;
        let name = ctx.name().map_err(driver)?;
        Ok(Device {
            ctx,
            name,
            capability: (major as u32, minor as u32),
        })
    }

    /// Whether `--backend auto` should pick CUDA here: Hopper (compute capability 9.x), where the FP8 paths
    /// were written for.
    pub fn is_hopper(&self) -> bool {
        self.capability.0 == 9
    }
}

/// Whether `--backend auto` should pick CUDA: a Hopper device, and an NVRTC to build the kernels with.
pub fn hopper_ready() -> bool {
    Device::open().is_ok_and(|d| d.is_hopper()) && nvrtc::Nvrtc::load().is_ok()
}

/// The conformance suite (every op against the CPU reference, `volt_runtime::conformance`) on device 0 with
/// `dtype` weights. FP8 cases of more than 8 rows run the GEMMs on activations quantized per 1x128, a rounding
/// the f32 reference does not do, so they get 1000x the tolerance; `gemm_relative_error` holds those GEMMs to
/// the reference on the same quantized inputs instead.
pub fn conformance(dtype: WeightDtype) -> Result<Vec<CaseResult>> {
    let mut backend = CudaBackend::new(Device::open()?, dtype, 4096)?;
    let gemm_path = |name: &str, shape: &str| {
        let rows: usize = shape
            .strip_prefix("t=")
            .and_then(|s| s.split(' ').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(1);
        (name.starts_with("matmul") || name.starts_with("moe")) && rows > weights::GEMV_ROWS
    };
    let label = if dtype == WeightDtype::Fp8 {
        "fp8 gemm: 1x128 activations"
    } else {
        "f32 activations"
    };
    conformance::check_backend(&mut backend, dtype, label, |name, shape| {
        if dtype == WeightDtype::Fp8 && gemm_path(name, shape) {
            1000.0
        } else {
            1.0
        }
    })
}

/// mean |gpu - ref| / mean |ref| of an FP8 linear layer of `rows` x `k` -> `out` on device 0, where the
/// reference (f64 on the CPU) multiplies exactly the E4M3 codes and scales the GPU does: weights quantized as
/// at upload, activations per 1x128 as `quantize_rows_1x128` does.
pub fn gemm_relative_error(rows: usize, k: usize, out: usize, seed: u64) -> Result<f64> {
    let mut state = seed.max(1);
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let x: Vec<f32> = (0..rows * k).map(|_| random()).collect();
    let w: Vec<f32> = (0..out * k).map(|_| random() * 0.1).collect();
    let w_grid = BlockGrid::of(&[out, k]);
    let w_ref = fp8::round_trip(&w, w_grid);
    let x_ref: Vec<f32> = x.chunks(k).flat_map(quantize_row_1x128).collect();
    let mut backend = CudaBackend::new(Device::open()?, WeightDtype::Fp8, 4096)?;
    // The activations enter as an f32 table looked up by row index.
    let table = backend.upload_matrix(StoredTensor::from_f32(vec![rows, k], &x), Precision::Full)?;
    let weight = backend.upload_matrix(StoredTensor::from_f32(vec![out, k], &w), Precision::Storage)?;
    let ids: Vec<u32> = (0..rows as u32).collect();
    backend.begin_step(&Step::single(0, &ids, 0))?;
    let input = backend.embed(&table)?;
    let y = backend.linear(&input, &weight, None)?;
    let got = backend.read(&y)?;
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for r in 0..rows {
        for o in 0..out {
            let reference: f64 = (0..k).map(|i| x_ref[r * k + i] as f64 * w_ref[o * k + i] as f64).sum();
            diff += (got[r * out + o] as f64 - reference).abs();
            norm += reference.abs();
        }
    }
    Ok(diff / norm.max(f64::MIN_POSITIVE))
}

/// One activation row as the GPU quantizes it: per 128 columns, scale = max(amax, 1e-4) / 448, codes rounded
/// to nearest even and saturated; returns the dequantized values.
fn quantize_row_1x128(row: &[f32]) -> Vec<f32> {
    row.chunks(fp8::BLOCK)
        .flat_map(|block| {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = amax.max(1e-4) / fp8::MAX;
            block.iter().map(move |v| fp8::to_f32(fp8::from_f32(v / scale)) * scale)
        })
        .collect()
}
