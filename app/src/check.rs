//! `volt check`: the conformance suite (every op against the CPU reference) on every GPU adapter found, as
//! a table adapter x op x dtype; exit 0 only if all pass. `--compile-only` builds every kernel instead.

use volt_runtime::conformance::CaseResult;
use volt_runtime::dtype::{KvDtype, WeightDtype};
use volt_runtime::{bail, Result};
use volt_wgpu::kernels::{KernelFeatures, Kernels};
use volt_wgpu::{adapter_name, adapters, Gpu, WgpuBackend};

use crate::cli::Flags;

pub fn check(args: &[String]) -> Result<()> {
    let flags = Flags::parse(args, &["backend"], &["compile-only"])?;
    match flags.str("backend").unwrap_or("wgpu") {
        "wgpu" => {}
        "cuda" => return crate::check_cuda::check(flags.has("compile-only")),
        other => bail!("volt check runs the GPU backends: --backend wgpu or cuda, not `{other}`"),
    }
    let adapters = adapters();
    if adapters.is_empty() {
        bail!("no GPU adapter found (no Vulkan, Metal, DX12 or GL driver; on Linux install mesa-vulkan-drivers)");
    }
    let mut failed = 0;
    let mut total = 0;
    for adapter in adapters {
        let name = adapter_name(&adapter.get_info());
        let gpu = match Gpu::open(adapter) {
            Ok(g) => g,
            Err(e) => {
                println!("{name}: cannot open: {e}");
                failed += 1;
                continue;
            }
        };
        if flags.has("compile-only") {
            // Every kernel with the adapter's optional features, and in the portable form other adapters get.
            let mut variants = vec![KernelFeatures::of(&gpu.device)];
            if variants[0] != KernelFeatures::default() {
                variants.push(KernelFeatures::default());
            }
            // Each form once with each KV cache dtype.
            let forms = variants.iter().flat_map(|&f| KvDtype::ALL.map(|kv| (f, kv)));
            for (features, kv) in forms {
                let built = Kernels::new(features, kv).build_all(&gpu.device);
                let status = gpu.check();
                for (op, format) in &built {
                    println!(
                        "{name:<48} {:<14} {:<5} {:<22} {:<6} {}",
                        format!("{op:?}"),
                        format.map(|f| format!("{f:?}").to_lowercase()).unwrap_or("-".into()),
                        features.describe(),
                        format!("{} KV", kv.name()),
                        if status.is_ok() { "compiled" } else { "FAILED" }
                    );
                }
                total += built.len();
                if let Err(e) = status {
                    println!("{name}: {e}");
                    failed += built.len();
                }
            }
            continue;
        }
        let mut gpu = Some(gpu);
        let dtypes = WeightDtype::ALL;
        let results = volt_wgpu::conformance::check_wgpu(
            |dtype| {
                // The first dtype gets the device opened above; later ones reopen the same adapter.
                let g = match gpu.take() {
                    Some(g) => g,
                    None => reopen(&name)?,
                };
                WgpuBackend::with_gpu(g, dtype, 4096)
            },
            &dtypes,
        );
        let results = match results {
            Ok(r) => r,
            Err(e) => {
                println!("{name}: {e}");
                failed += 1;
                continue;
            }
        };
        print_results(&name, &results);
        total += results.len();
        failed += results.iter().filter(|r| !r.passed()).count();
    }
    println!("{} passed, {failed} failed", total - failed.min(total));
    if failed > 0 {
        bail!("{failed} of {total} checks failed");
    }
    Ok(())
}

/// The conformance table: one row per case (device, op, dtype, kernels, shape, error, tolerance, verdict).
pub fn print_results(device: &str, results: &[CaseResult]) {
    println!(
        "{:<48} {:<18} {:<5} {:<4} {:<22} {:<44} {:>10} {:>9}  result",
        "adapter", "op", "dtype", "KV", "kernels", "shape", "max error", "tolerance"
    );
    for r in results {
        let verdict = if r.passed() {
            "pass".to_string()
        } else {
            format!("FAIL ({})", r.worst)
        };
        println!(
            "{device:<48} {:<18} {:<5} {:<4} {:<22} {:<44} {:>10.2e} {:>9.0e}  {verdict}",
            r.op,
            r.dtype.name(),
            r.kv.name(),
            r.kernels,
            r.shape,
            r.max_err,
            r.tolerance
        );
    }
}

fn reopen(name: &str) -> Result<Gpu> {
    match adapters().into_iter().find(|a| adapter_name(&a.get_info()) == name) {
        Some(a) => Gpu::open(a),
        None => bail!("adapter {name} disappeared"),
    }
}
