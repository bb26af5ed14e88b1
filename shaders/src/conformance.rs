//! The conformance suite (`volt_runtime::conformance`) on the wgpu backend: every case for each weight
//! dtype, in the kernels' optional-feature form and in the portable form other adapters get, and the
//! attention cases once more on an FP8 KV cache.

use volt_runtime::conformance::{check_backend, check_cases, CaseResult};
use volt_runtime::dtype::{KvDtype, WeightDtype};
use volt_runtime::Result;

use crate::backend::WgpuBackend;
use crate::kernels::KernelFeatures;

/// Runs every case on backends from `make` and on the CPU reference with the same dtype.
pub fn check_wgpu(
    mut make: impl FnMut(WeightDtype) -> Result<WgpuBackend>,
    dtypes: &[WeightDtype],
) -> Result<Vec<CaseResult>> {
    let mut results = Vec::new();
    for &dtype in dtypes {
        let backend = make(dtype)?;
        let features = backend.kernel_features();
        let mut variants = vec![backend];
        // On an adapter with optional features, the portable kernels other adapters get are checked too.
        if features != KernelFeatures::default() {
            let mut portable = make(dtype)?;
            portable.use_portable_kernels();
            variants.push(portable);
        }
        for mut backend in variants {
            let kernels = backend.kernel_features().describe();
            results.extend(check_backend(&mut backend, dtype, &kernels, |_, _| 1.0)?);
        }
    }
    // The attention kernels once more on FP8 E4M3 KV (weights play no part in them).
    if let Some(&dtype) = dtypes.first() {
        let mut backend = make(dtype)?;
        backend.set_kv_dtype(KvDtype::Fp8);
        let kernels = backend.kernel_features().describe();
        let attention = |name: &str| name.starts_with("attention");
        results.extend(check_cases(&mut backend, dtype, &kernels, |_, _| 1.0, attention)?);
    }
    Ok(results)
}
