//! `volt check --backend cuda`: the conformance suite on the CUDA device, or with `--compile-only` every
//! kernel compiled by NVRTC (no GPU needed: for sm_90a, and for the device's own arch when there is one).

use volt_cuda::kernels::{self, HOPPER};
use volt_cuda::nvrtc::Nvrtc;
use volt_cuda::Device;
use volt_runtime::dtype::WeightDtype;
use volt_runtime::{bail, Result};

pub fn check(compile_only: bool) -> Result<()> {
    if compile_only {
        return compile_all();
    }
    let device = Device::open().map_err(|e| e.context("backend cuda cannot be checked"))?;
    let name = format!("{} (sm_{}{})", device.name, device.capability.0, device.capability.1);
    drop(device);
    let (mut total, mut failed) = (0, 0);
    for dtype in WeightDtype::ALL {
        let results = volt_cuda::conformance(dtype).map_err(|e| e.context(format!("cuda {}", dtype.name())))?;
        crate::check::print_results(&name, &results);
        total += results.len();
        failed += results.iter().filter(|r| !r.passed()).count();
    }
    println!("{} passed, {failed} failed", total - failed);
    if failed > 0 {
        bail!("{failed} of {total} checks failed");
    }
    Ok(())
}

fn compile_all() -> Result<()> {
    let nvrtc = Nvrtc::load().map_err(|e| e.context("volt check --backend cuda --compile-only"))?;
    println!(
        "NVRTC {}.{} ({})",
        nvrtc.version.0,
        nvrtc.version.1,
        nvrtc.path.display()
    );
    let mut targets = vec![HOPPER];
    if let Ok(device) = Device::open() {
        if device.capability != HOPPER {
            targets.push(device.capability);
        }
    }
    let (mut total, mut failed) = (0, 0);
    for capability in targets {
        for report in kernels::compile_all(&nvrtc, capability) {
            let outcome = match &report.outcome {
                Ok((bytes, seconds)) => format!("ok      {:>7} B cubin  {:>6.0} ms", bytes, seconds * 1e3),
                Err(e) => {
                    failed += 1;
                    format!("FAILED  {e}")
                }
            };
            println!(
                "{:<12} {:<20} {:<7} {outcome}",
                report.module, report.kernel, report.arch
            );
            total += 1;
        }
    }
    println!("{} compiled, {failed} failed", total - failed);
    if failed > 0 {
        bail!("{failed} of {total} kernels failed to compile");
    }
    Ok(())
}
