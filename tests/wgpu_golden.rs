//! The wgpu backend on every fixture:
//! - f32 weights and f32 KV: transformers' logits within the fixture's 2e-3 and the same greedy tokens;
//! - the default dtype (the checkpoint's own precision) and the default f16 KV: transformers' logits within
//!   5e-2 (f16 K/V alone moves these random tiny models' logits by up to 4e-2);
//! - f16 weights: the CPU reference with the same f16 rounding within 2e-3 (f16 storage itself moves some
//!   fixtures' logits by up to ~5e-2 from transformers' f32, on every backend alike);
//! - fp8 weights (E4M3, 128x128 block scales, decoded in the shader): the CPU reference with the same
//!   quantization within 2e-3.
//! The weight rows keep f32 KV: rounding K/V to f16 on two backends that differ by 1e-6 sometimes lands a
//! value one f16 step apart, which these models amplify past 2e-3. The f16 KV kernels are checked exactly by
//! the conformance suite (inputs f16 holds exactly) and end to end by the default row and the perplexity.
//! Runs on whatever adapter wgpu finds (lavapipe in CI); with none it prints SKIP and the reason.

#[path = "common.rs"]
mod common;

use std::path::Path;

use common::{expected, fixtures, fixtures_root};

use volt_runtime::backend::cpu::CpuBackend;
use volt_runtime::backend::Backend;
use volt_runtime::checkpoint::Checkpoint;
use volt_runtime::dtype::{KvDtype, WeightDtype};
use volt_runtime::generate::{generate, prompt_logits, GenerateOptions};
use volt_runtime::sampler::{Sampler, SamplingParams};
use volt_runtime::session::{BackendSession, Session};
use volt_wgpu::{adapters, Gpu, WgpuBackend};

fn open(dir: &Path, dtype: WeightDtype, kv: KvDtype) -> Result<BackendSession<WgpuBackend>, String> {
    let gpu = Gpu::open_default().map_err(|e| e.to_string())?;
    let mut backend = WgpuBackend::with_gpu(gpu, dtype, 4096).map_err(|e| e.to_string())?;
    backend.set_kv_dtype(kv);
    BackendSession::load(backend, dir, 1).map_err(|e| e.to_string())
}

#[test]
fn wgpu_matches_transformers_on_every_fixture() {
    if adapters().is_empty() {
        println!("SKIP wgpu golden tests: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    let mut failures = Vec::new();
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let common::Expected {
            ids,
            logits: expected,
            greedy,
            atol,
        } = expected(&dir);
        let default_dtype = Checkpoint::open(&dir).unwrap().storage_dtype();
        let cpu_logits = |dtype, kv| {
            let mut cpu = BackendSession::load(CpuBackend::new(dtype).with_kv_dtype(kv), &dir, 1).unwrap();
            prompt_logits(&mut cpu, 0, &ids).unwrap()
        };
        let cpu_f16 = cpu_logits(WeightDtype::F16, KvDtype::F32);
        let cpu_fp8 = cpu_logits(WeightDtype::Fp8, KvDtype::F32);
        let cpu_fp8_kv = cpu_logits(WeightDtype::F32, KvDtype::Fp8);
        let checks = [
            ("f32 vs transformers", WeightDtype::F32, KvDtype::F32, &expected, atol),
            ("default vs transformers", default_dtype, KvDtype::F16, &expected, 5e-2),
            ("f16 vs cpu f16", WeightDtype::F16, KvDtype::F32, &cpu_f16, 2e-3),
            ("fp8 vs cpu fp8", WeightDtype::Fp8, KvDtype::F32, &cpu_fp8, 2e-3),
            (
                "fp8 KV vs cpu fp8 KV",
                WeightDtype::F32,
                KvDtype::Fp8,
                &cpu_fp8_kv,
                1e-3,
            ),
        ];
        for (what, dtype, kv, expected, tol) in checks {
            let mut s = match open(&dir, dtype, kv) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{name} {dtype:?}: {e}"));
                    continue;
                }
            };
            let got = match prompt_logits(&mut s, 0, &ids) {
                Ok(g) => g,
                Err(e) => {
                    failures.push(format!("{name} {dtype:?}: {e}"));
                    continue;
                }
            };
            let mut worst = (0.0f32, 0, 0);
            for (p, (e, g)) in expected.iter().zip(&got).enumerate() {
                for (i, (a, b)) in e.iter().zip(g).enumerate() {
                    let d = (a - b).abs();
                    if !(d <= worst.0) {
                        worst = (d, p, i);
                    }
                }
            }
            let (d, p, i) = worst;
            if !(d <= tol) {
                failures.push(format!("{name} {what} ({dtype:?}): logits differ by {d:.3e} > {tol:.0e} at position {p}, index {i}: expected {}, got {}", expected[p][i], got[p][i]));
                continue;
            }
            let mut line = format!("ok   {name} {what} ({dtype:?}): max |diff| {d:.2e}");
            if what.starts_with("f32") {
                let opts = GenerateOptions {
                    max_tokens: greedy.len(),
                    sampling: SamplingParams::greedy(),
                    stop_strings: vec![],
                    ignore_eos: true,
                };
                match generate(&mut s, 0, &ids, None, &[], &opts, |_| {}) {
                    Ok(out) if out.tokens == greedy => line += ", greedy identical",
                    Ok(out) => {
                        failures.push(format!("{name}: greedy {:?}, expected {greedy:?}", out.tokens));
                        continue;
                    }
                    Err(e) => {
                        failures.push(format!("{name}: {e}"));
                        continue;
                    }
                }
            }
            println!("{line} ({})", s.describe());
        }
    }
    for f in &failures {
        println!("FAIL {f}");
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Weights larger than one binding are split into parts (WebGPU's default binding is 128 MiB: a 20B
/// model's embedding and stacked experts exceed it). With the limit lowered so that most matrices split
/// (row parts; whole experts; FP8 at 128-row blocks), the logits are those of unsplit weights, on the decode
/// and the prefill kernels.
#[test]
fn weights_split_across_bindings_give_the_same_logits() {
    if adapters().is_empty() {
        println!("SKIP split weights: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    let cases = [
        ("qwen3_fp8", WeightDtype::F32, 4096),
        ("gpt_oss", WeightDtype::Bf16, 12_000),
        ("qwen3_moe_fp8", WeightDtype::Fp8, 50_000),
        ("volt", WeightDtype::F16, 8192),
    ];
    for (fixture, dtype, limit) in cases {
        let dir = common::fixtures_root().join(fixture);
        // The prompt twice: 40 tokens take the prefill kernels (tiled matmul, experts grouped by expert).
        let ids = expected(&dir).ids.repeat(2);
        let whole = prompt_logits(&mut open(&dir, dtype, KvDtype::F16).unwrap(), 0, &ids).unwrap();
        let mut backend = WgpuBackend::with_gpu(Gpu::open_default().unwrap(), dtype, 4096).unwrap();
        backend.limit_binding(limit);
        let mut split = BackendSession::load(backend, &dir, 1).unwrap();
        let parts = split.backend().split_weights();
        let got = prompt_logits(&mut split, 0, &ids).unwrap();
        let diff = whole
            .iter()
            .flatten()
            .zip(got.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("{fixture} {dtype:?}, bindings of {limit} bytes: {parts} weights split, max |diff| {diff:.2e}");
        assert!(parts > 0, "{fixture}: nothing was split at {limit} bytes");
        assert!(
            diff <= 1e-4,
            "{fixture} {dtype:?}: split weights change logits by {diff}"
        );
    }
}

/// The op-level conformance suite (what `volt check` prints) on every adapter found.
#[test]
fn conformance_suite_passes_on_every_adapter() {
    let adapters = adapters();
    if adapters.is_empty() {
        println!("SKIP conformance: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    for adapter in adapters {
        let name = volt_wgpu::adapter_name(&adapter.get_info());
        let mut device = Some(Gpu::open(adapter).unwrap());
        let results = volt_wgpu::conformance::check_wgpu(
            |dtype| {
                let g = device.take().map_or_else(|| Gpu::open_default(), Ok)?;
                WgpuBackend::with_gpu(g, dtype, 4096)
            },
            &WeightDtype::ALL,
        )
        .unwrap();
        let failed: Vec<String> = results
            .iter()
            .filter(|r| !r.passed())
            .map(|r| {
                format!(
                    "{name}: {} {:?} {} KV [{}]: error {:.2e} > {:.0e}; {}",
                    r.op,
                    r.dtype,
                    r.kv.name(),
                    r.shape,
                    r.max_err,
                    r.tolerance,
                    r.worst
                )
            })
            .collect();
        println!(
            "{name}: {} of {} op checks pass",
            results.len() - failed.len(),
            results.len()
        );
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }
}

/// The shipped model's perplexity on wgpu agrees with the CPU backend (the issue asks for 1%).
#[test]
fn default_model_perplexity_on_wgpu_matches_the_cpu() {
    if adapters().is_empty() {
        println!("SKIP wgpu perplexity: no GPU adapter");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/volt-tiny");
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/text/route_stats.txt"))
            .unwrap();
    let ids = volt_runtime::tokenizer::Tokenizer::open(&dir)
        .unwrap()
        .unwrap()
        .encode(&text, false)
        .unwrap();
    let dtype = Checkpoint::open(&dir).unwrap().storage_dtype();
    let mut cpu = BackendSession::load(CpuBackend::new(dtype), &dir, 1).unwrap();
    let reference = volt_runtime::eval::perplexity(&mut cpu, &ids, 512, 256).unwrap();
    let mut gpu = open(&dir, dtype, KvDtype::F16).unwrap();
    let got = volt_runtime::eval::perplexity(&mut gpu, &ids, 512, 256).unwrap();
    let rel = (got.ppl - reference.ppl).abs() / reference.ppl;
    println!(
        "perplexity over {} tokens: cpu {:.4}, wgpu {:.4} ({:.2e} relative)",
        got.tokens, reference.ppl, got.ppl, rel
    );
    assert!(rel < 0.01, "wgpu perplexity {} vs cpu {}", got.ppl, reference.ppl);
}

/// Sampling on the device picks the CPU reference's tokens: the shipped model, llama.cpp's default
/// filters and a hotter setting with a repetition penalty, two seeds each, 24 tokens.
#[test]
fn sampled_generation_on_wgpu_matches_the_cpu() {
    if adapters().is_empty() {
        println!("SKIP wgpu sampling: no GPU adapter");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/volt-tiny");
    let tokenizer = volt_runtime::tokenizer::Tokenizer::open(&dir).unwrap().unwrap();
    let prompt = tokenizer
        .encode("It is a truth universally acknowledged", false)
        .unwrap();
    let dtype = Checkpoint::open(&dir).unwrap().storage_dtype();
    let mut cpu = BackendSession::load(CpuBackend::new(dtype).with_kv_dtype(KvDtype::F16), &dir, 1).unwrap();
    let mut gpu = open(&dir, dtype, KvDtype::F16).unwrap();
    let hot = SamplingParams {
        temperature: 1.3,
        top_k: 0,
        top_p: 0.98,
        repeat_penalty: 1.2,
        ..SamplingParams::default()
    };
    for params in [SamplingParams::default(), hot] {
        for seed in 1..=2 {
            let opts = GenerateOptions {
                max_tokens: 24,
                sampling: SamplingParams { seed, ..params.clone() },
                stop_strings: vec![],
                ignore_eos: true,
            };
            let want = generate(&mut cpu, 0, &prompt, None, &[], &opts, |_| {}).unwrap().tokens;
            let got = generate(&mut gpu, 0, &prompt, None, &[], &opts, |_| {}).unwrap().tokens;
            assert_eq!(got, want, "seed {seed}, {params:?}");
        }
    }
    println!("wgpu sampling chose the CPU's 24 tokens for 2 settings x 2 seeds");
}

/// After the first decode steps, further steps allocate nothing: activations come from the pool, parameters
/// from the ring, bind groups from the cache.
#[test]
fn decode_steps_allocate_no_new_device_memory() {
    if adapters().is_empty() {
        println!("SKIP wgpu allocation test: no GPU adapter");
        return;
    }
    use volt_runtime::step::Step;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/volt");
    let mut s = open(&dir, WeightDtype::F16, KvDtype::F16).unwrap();
    let mut sampler = Sampler::new(SamplingParams::default());
    s.forward(&Step::single(0, &[1, 2, 3, 4, 5], 0), &[4]).unwrap();
    let mut after = Vec::new();
    for pos in 5..15 {
        s.forward_pick(&Step::single(0, &[7], pos), &[0], &[sampler.pick(&[7])])
            .unwrap();
        after.push(s.allocated_bytes());
    }
    println!("device bytes after each decode step: {after:?}");
    assert!(
        after[2..].iter().all(|&b| b == after[2]),
        "decode keeps allocating: {after:?}"
    );
}

/// FP8 KV words hold four values and are written whole, so a KV width that is not a multiple of 4 is a clear
/// error at start-up (f16 pairs take it).
#[test]
fn an_fp8_kv_cache_refuses_a_width_its_words_cannot_hold() {
    if adapters().is_empty() {
        println!("SKIP: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    let config = volt_runtime::hf_config::HfConfig::load(&fixtures_root().join("llama")).unwrap();
    let mut spec = volt_runtime::models::family_of(&config).unwrap().spec(&config).unwrap();
    for layer in &mut spec.layers {
        (layer.attn.n_kv_heads, layer.attn.head_dim) = (1, 6);
    }
    for (kv, fits) in [(KvDtype::F16, true), (KvDtype::Fp8, false)] {
        let mut backend = WgpuBackend::with_gpu(Gpu::open_default().unwrap(), WeightDtype::F32, 256).unwrap();
        backend.set_kv_dtype(kv);
        match backend.new_cache(&spec, 1, None) {
            Ok(_) => assert!(fits, "fp8 KV took a width of 6"),
            Err(e) => {
                assert!(!fits, "{kv:?}: {e}");
                assert!(e.to_string().contains("KV width of 6"), "{e}");
            }
        }
    }
}

/// GGUF files on wgpu (`tests/gguf.rs` holds them to the reference on the CPU): the kernels decode f32,
/// f16, bf16 and FP8, so block formats are widened to f16 at upload for now; with the default f16 KV the
/// logits stay within 5e-2 of the reference at every position (measured: 5e-3 to 1.5e-2).
#[test]
fn gguf_files_run_on_wgpu() {
    if adapters().is_empty() {
        println!("SKIP wgpu GGUF: no GPU adapter");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf");
    for name in ["llama", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe"] {
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
        let ids: Vec<u32> = expected["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let gpu = WgpuBackend::with_gpu(Gpu::open_default().unwrap(), None, 4096).unwrap();
        let mut s = BackendSession::load(gpu, &dir.join(format!("{name}.gguf")), 1).unwrap();
        let got = prompt_logits(&mut s, 0, &ids).unwrap();
        let worst = got
            .iter()
            .flatten()
            .zip(
                expected["logits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|r| r.as_array().unwrap()),
            )
            .map(|(g, w)| (g - w.as_f64().unwrap() as f32).abs())
            .fold(0.0f32, f32::max);
        println!(
            "{name}: wgpu logits within {worst:.2e} of the reference ({})",
            s.describe()
        );
        assert!(worst < 5e-2, "{name}: wgpu logits differ by {worst}");
    }
}
