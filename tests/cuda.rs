//! The CUDA backend. Without NVRTC or without a CUDA device each test prints SKIP and the reason; what runs
//! where:
//! - NVRTC only (CI): every kernel compiles for sm_90a, sm_89 and sm_80 (the FP8 GEMM from sm_89);
//! - a CUDA device: the conformance suite against the CPU reference for every weight dtype, the FP8 GEMM
//!   against an f64 reference on the same E4M3 inputs (relative error below 1e-3), and every fixture's
//!   logits against the CPU backend with the same weight rounding, and FP8 perplexity within 2% of bf16 on the
//!   shipped model.

#[path = "common.rs"]
mod common;

use common::{expected, fixtures};

use volt_cuda::kernels::{compile_all, HOPPER};
use volt_cuda::nvrtc::Nvrtc;
use volt_cuda::{CudaBackend, Device};
use volt_runtime::backend::cpu::CpuBackend;
use volt_runtime::dtype::WeightDtype;
use volt_runtime::eval::perplexity;
use volt_runtime::generate::prompt_logits;
use volt_runtime::session::BackendSession;
use volt_runtime::tokenizer::Tokenizer;

/// The device, or None after printing why the test is skipped.
fn device_or_skip(test: &str) -> Option<Device> {
    match Device::open().and_then(|d| Nvrtc::load().map(|_| d)) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("SKIP {test}: {e}");
            None
        }
    }
}

#[test]
fn every_kernel_compiles_for_hopper_ada_and_ampere() {
    let nvrtc = match Nvrtc::load() {
        Ok(n) => n,
        Err(e) => {
            println!("SKIP cuda kernel compilation: {e}");
            return;
        }
    };
    let reports = compile_all(&nvrtc, HOPPER);
    // The other targets `--backend cuda` accepts: Ada (FP8 tensor cores) and Ampere (no FP8 GEMM module).
    let older: Vec<_> = [(8, 9), (8, 0)]
        .into_iter()
        .flat_map(|c| compile_all(&nvrtc, c))
        .collect();
    let failures: Vec<String> = reports
        .iter()
        .chain(&older)
        .filter_map(|r| {
            r.outcome
                .as_ref()
                .err()
                .map(|e| format!("{} {}/{}: {e}", r.arch, r.module, r.kernel))
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(reports.iter().any(|r| r.kernel == "gemm_fp8" && r.arch == "sm_90a"));
    assert!(older.iter().any(|r| r.kernel == "gemm_fp8" && r.arch == "sm_89"));
    assert!(!older.iter().any(|r| r.kernel == "gemm_fp8" && r.arch == "sm_80"));
}

#[test]
fn a_broken_kernel_is_a_one_line_error() {
    let nvrtc = match Nvrtc::load() {
        Ok(n) => n,
        Err(e) => {
            println!("SKIP cuda compile error test: {e}");
            return;
        }
    };
    let err = nvrtc
        .compile(
            "broken.cu",
            "extern \"C\" __global__ void k() { undefined_name(); }",
            &["--gpu-architecture=sm_90a".into()],
        )
        .err()
        .expect("an undefined name does not compile");
    let msg = err.to_string();
    assert!(msg.contains("undefined_name") && !msg.contains('\n'), "{msg}");
}

#[test]
fn conformance_against_the_cpu_reference() {
    if device_or_skip("cuda conformance").is_none() {
        return;
    }
    let mut failures = Vec::new();
    for dtype in WeightDtype::ALL {
        for r in volt_cuda::conformance(dtype).unwrap() {
            if !r.passed() {
                failures.push(format!(
                    "{} {} {}: {} > {} ({})",
                    r.op,
                    r.dtype.name(),
                    r.shape,
                    r.max_err,
                    r.tolerance,
                    r.worst
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn fp8_gemm_matches_the_reference_on_the_same_quantized_inputs() {
    if device_or_skip("cuda fp8 gemm").is_none() {
        return;
    }
    // Odd shapes: partial GEMM tiles, K not a multiple of 128, several scale blocks on both axes.
    for (rows, k, out) in [(9, 130, 70), (200, 520, 384), (64, 128, 128), (333, 1000, 257)] {
        let err = volt_cuda::gemm_relative_error(rows, k, out, 7).unwrap();
        assert!(err < 1e-3, "rows={rows} k={k} out={out}: relative error {err}");
    }
}

#[test]
fn fixtures_give_the_cpu_logits() {
    if device_or_skip("cuda fixtures").is_none() {
        return;
    }
    let mut failures = Vec::new();
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let ids = expected(&dir).ids;
        for dtype in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::Fp8] {
            let reference = {
                let mut cpu = BackendSession::load(CpuBackend::new(dtype), &dir, 1).unwrap();
                prompt_logits(&mut cpu, 0, &ids).unwrap()
            };
            let got = Device::open()
                .and_then(|d| CudaBackend::new(d, dtype, 4096))
                .and_then(|b| BackendSession::load(b, &dir, 1))
                .and_then(|mut s| prompt_logits(&mut s, 0, &ids));
            let got = match got {
                Ok(g) => g,
                Err(e) => {
                    failures.push(format!("{name} {}: {e}", dtype.name()));
                    continue;
                }
            };
            // FP8 prompts longer than 8 tokens run the GEMM on 1x128-quantized activations.
            let tol = if dtype == WeightDtype::Fp8 && ids.len() > 8 {
                5e-2
            } else {
                2e-3
            };
            // NaN counts as the worst difference (f32::max would skip it).
            let worst = reference
                .iter()
                .flatten()
                .zip(got.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .map(|d| if d.is_nan() { f32::INFINITY } else { d })
                .fold(0.0f32, f32::max);
            if worst > tol {
                failures.push(format!("{name} {}: max |cuda - cpu| = {worst} > {tol}", dtype.name()));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn fp8_perplexity_is_within_2_percent_of_bf16_on_the_shipped_model() {
    if device_or_skip("cuda fp8 perplexity").is_none() {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/volt-tiny");
    let text = std::fs::read_to_string(common::fixtures_root().join("text/moby_dick_ch1.txt")).unwrap();
    let ids = Tokenizer::open(&dir).unwrap().unwrap().encode(&text, false).unwrap();
    let ppl = |dtype| {
        let backend = CudaBackend::new(Device::open().unwrap(), dtype, 4096).unwrap();
        let mut session = BackendSession::load(backend, &dir, 1).unwrap();
        perplexity(&mut session, &ids, 512, 256).unwrap().ppl
    };
    let (bf16, fp8) = (ppl(WeightDtype::Bf16), ppl(WeightDtype::Fp8));
    assert!((fp8 / bf16 - 1.0).abs() < 0.02, "bf16 {bf16:.3}, fp8 {fp8:.3}");
}
