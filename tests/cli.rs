//! The `volt` binary's contracts: JSON outputs other tools read, and a clean one-line error with a non-zero
//! exit for every kind of bad input (never a panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn volt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volt"))
        .args(args)
        .output()
        .expect("volt runs")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// A scratch copy of a fixture that a test may break.
fn scratch_copy(name: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("volt-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    dir
}

/// `volt logits --model DIR --ids IDS --backend BACKEND`.
fn logits_on(backend: &str, dir: &Path, ids: &str) -> Output {
    volt(&[
        "logits",
        "--model",
        dir.to_str().unwrap(),
        "--ids",
        ids,
        "--backend",
        backend,
    ])
}

/// Fails unless the command failed with exactly one `error: ...` line mentioning `needle`.
fn assert_clean_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "not an error line: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "panic: {stderr}"
    );
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "error does not mention `{needle}`: {stderr}"
    );
}

fn json_stdout(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {stdout}"))
}

#[test]
fn logits_prints_one_json_row_per_position() {
    let dir = fixture("llama");
    let out = logits_on("cpu", &dir, "3,17,42");
    let v = json_stdout(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim().lines().count(),
        1,
        "stdout must be exactly one JSON object"
    );
    let rows = v["logits"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let vocab = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(dir.join("config.json")).unwrap())
        .unwrap()["vocab_size"]
        .as_u64()
        .unwrap();
    assert!(rows.iter().all(|r| r.as_array().unwrap().len() as u64 == vocab));
}

#[test]
fn generate_json_is_deterministic_at_temperature_zero() {
    let dir = fixture("mixtral");
    let args = [
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--ids",
        "5,9,11,30",
        "--max-tokens",
        "6",
        "--temperature",
        "0",
        "--ignore-eos",
        "--json",
        "--backend",
        "cpu",
    ];
    let a = json_stdout(&volt(&args));
    let b = json_stdout(&volt(&args));
    assert_eq!(a["tokens"], b["tokens"]);
    assert_eq!(a["tokens"].as_array().unwrap().len(), 6);
    assert_eq!(a["prompt_tokens"], 4);
    assert!(a["text"].is_null(), "no tokenizer, so text is null");
    assert!(a["prefill_tok_s"].as_f64().unwrap() > 0.0 && a["decode_tok_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn info_reports_layers_and_kv_for_every_fixture_and_a_config_alone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("config.json").exists() {
            continue;
        }
        for target in [dir.clone(), dir.join("config.json")] {
            let v = json_stdout(&volt(&[
                "info",
                "--model",
                target.to_str().unwrap(),
                "--context",
                "64",
                "--json",
            ]));
            let layers = v["layers"].as_array().unwrap();
            assert!(!layers.is_empty());
            for (i, l) in layers.iter().enumerate() {
                for key in [
                    "attention",
                    "window",
                    "kv_source",
                    "ffn",
                    "experts",
                    "shared_experts",
                    "top_k",
                ] {
                    assert!(l.get(key).is_some(), "{}: layer {i} lacks {key}", dir.display());
                }
                assert!(l["kv_source"].as_u64().unwrap() <= i as u64);
            }
            assert!(v["params_total"].as_u64().unwrap() >= v["params_active"].as_u64().unwrap());
            assert!(v["vocab_size"].as_u64().unwrap() > 0 && v["weight_bytes"].as_u64().unwrap() > 0);
            let (kv, base) = (
                v["kv_bytes"].as_f64().unwrap(),
                v["kv_bytes_baseline"].as_f64().unwrap(),
            );
            assert!(kv <= base && (v["kv_reduction"].as_f64().unwrap() - (1.0 - kv / base)).abs() < 1e-12);
        }
        seen += 1;
    }
    assert!(seen >= 9, "expected a fixture per family, found {seen}");
}

#[test]
fn info_counts_parameters_like_the_checkpoint() {
    // Total parameters must equal the number of values stored (fixtures without MXFP4 packing).
    let dir = fixture("qwen2_moe");
    let v = json_stdout(&volt(&["info", "--model", dir.to_str().unwrap(), "--json"]));
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let stored: u64 = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, t)| {
            t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product::<u64>()
        })
        .sum();
    assert_eq!(v["params_total"].as_u64().unwrap(), stored);
}

#[test]
fn missing_weights_are_a_clean_error() {
    let dir = scratch_copy("llama", "missing");
    for f in std::fs::read_dir(&dir).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "safetensors") {
            std::fs::remove_file(p).unwrap();
        }
    }
    assert_clean_error(&logits_on("cpu", &dir, "1,2"), "safetensors");
}

#[test]
fn truncated_weights_are_a_clean_error() {
    let dir = scratch_copy("llama", "truncated");
    let f = dir.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_clean_error(&logits_on("cpu", &dir, "1,2"), "truncated or corrupt");
}

#[test]
fn corrupt_weights_are_a_clean_error() {
    let dir = scratch_copy("llama", "corrupt");
    std::fs::write(
        dir.join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage",
    )
    .unwrap();
    assert_clean_error(&logits_on("cpu", &dir, "1,2"), "corrupt");
}

#[test]
fn malformed_config_is_a_clean_error() {
    let dir = scratch_copy("llama", "badconfig");
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"llama\", ").unwrap();
    assert_clean_error(&logits_on("cpu", &dir, "1,2"), "config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("llama").join("config.json")).unwrap()).unwrap();
    cfg["hidden_size"] = "wide".into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    assert_clean_error(
        &volt(&["info", "--model", dir.to_str().unwrap()]),
        "`hidden_size` must be a non-negative integer",
    );
}

/// Quantized checkpoints Volt cannot decode are refused by name, never read as garbage weights.
#[test]
fn unsupported_quantization_is_a_clean_error() {
    let dir = scratch_copy("qwen3_fp8", "quant");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut cfg = original.clone();
    cfg["quantization_config"] = serde_json::json!({"quant_method": "gptq", "bits": 4});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    assert_clean_error(
        &logits_on("cpu", &dir, "1,2"),
        "quantization method `gptq` is not supported",
    );
    let mut cfg = original;
    cfg["quantization_config"]["weight_block_size"] = serde_json::json!([64, 64]);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    assert_clean_error(
        &logits_on("cpu", &dir, "1,2"),
        "weight_block_size [64,64] is not supported",
    );
}

/// `volt info` reports the published precision: fp8 for an FP8 checkpoint (the default `--dtype` then), and
/// `--dtype fp8` quantizes the shipped bf16 model at load: its logits move, but little.
#[test]
fn fp8_checkpoints_and_dtype_fp8() {
    let info = |dir: &Path| json_stdout(&volt(&["info", "--model", dir.to_str().unwrap(), "--json"]));
    assert_eq!(info(&fixture("qwen3_fp8"))["dtype"], "fp8");
    assert_eq!(info(&fixture("qwen3_moe"))["dtype"], "f32");
    let logits = |dtype: &str| {
        let out = volt(&["logits", "--ids", "5,17,300,9", "--dtype", dtype]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        json_stdout(&out)["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect::<Vec<f64>>()
    };
    let (bf16, fp8) = (logits("bf16"), logits("fp8"));
    let diff = bf16.iter().zip(&fp8).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(diff > 0.0 && diff < 0.5, "fp8 vs bf16 logits differ by {diff}");
}

#[test]
fn unknown_architecture_is_a_clean_error() {
    let dir = scratch_copy("llama", "arch");
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"llama\"", "\"gpt_neox\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    assert_clean_error(&logits_on("cpu", &dir, "1,2"), "unknown architecture `gpt_neox`");
}

#[test]
fn wrong_tensor_shape_names_the_tensor_and_both_shapes() {
    let dir = scratch_copy("llama", "shape");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let inter = cfg["intermediate_size"].as_u64().unwrap();
    cfg["intermediate_size"] = (inter + 2).into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let out = logits_on("cpu", &dir, "1,2");
    assert_clean_error(&out, "mlp.gate_proj.weight");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}", inter)) && stderr.contains(&format!("{}", inter + 2)),
        "both shapes: {stderr}"
    );
}

#[test]
fn token_outside_vocabulary_is_a_clean_error() {
    let dir = fixture("llama");
    assert_clean_error(&logits_on("cpu", &dir, "1,999999"), "outside the vocabulary");
}

#[test]
fn empty_input_is_a_clean_error() {
    let dir = fixture("llama");
    assert_clean_error(&logits_on("cpu", &dir, ""), "empty input");
    assert_clean_error(&logits_on("cpu", &dir, "1,,2"), "not a token id");
}

#[test]
fn unknown_backend_and_flags_are_clean_errors() {
    let dir = fixture("llama");
    assert_clean_error(&logits_on("tpu", &dir, "1"), "unknown backend `tpu`");
    let logits_with =
        |flag: &str, value: &str| volt(&["logits", "--model", dir.to_str().unwrap(), "--ids", "1", flag, value]);
    assert_clean_error(&logits_with("--bakend", "cpu"), "unknown flag --bakend");
    assert_clean_error(&logits_with("--kv-dtype", "bf16"), "unknown KV dtype `bf16`");
    assert_clean_error(&volt(&["frobnicate"]), "unknown command");
}

#[test]
fn serve_refuses_no_slots_and_an_empty_kv_pool() {
    assert_clean_error(&volt(&["serve", "--slots", "0"]), "--slots must be at least 1");
    assert_clean_error(&volt(&["serve", "--kv-pool", "0"]), "--kv-pool must be at least 1");
}

#[test]
fn wgpu_backend_gives_the_cpu_logits() {
    if volt_runtime_has_no_adapter() {
        println!("SKIP wgpu CLI test: no GPU adapter");
        return;
    }
    let dir = fixture("qwen2_moe");
    let run = |backend: &str| {
        json_stdout(&volt(&[
            "logits",
            "--model",
            dir.to_str().unwrap(),
            "--ids",
            "3,17,42,5",
            "--backend",
            backend,
        ]))
    };
    let (cpu, gpu) = (run("cpu"), run("wgpu"));
    let flat = |v: &serde_json::Value| {
        v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect::<Vec<_>>()
    };
    let diff = flat(&cpu)
        .iter()
        .zip(flat(&gpu))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    // wgpu keeps K/V in f16, the CPU reference in f32: that alone moves these logits by 3.5e-3. The
    // comparisons with f32 KV and 2e-3 are in wgpu_golden.rs.
    assert!(diff < 1e-2, "wgpu and cpu logits differ by {diff}");
}

#[test]
fn check_runs_every_kernel_and_reports_a_table() {
    if volt_runtime_has_no_adapter() {
        println!("SKIP volt check: no GPU adapter");
        return;
    }
    let out = volt(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "volt check failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("attention") && stdout.contains("moe/top-p") && stdout.contains("bf16"),
        "{stdout}"
    );
    assert!(
        stdout.lines().last().unwrap().ends_with(" passed, 0 failed"),
        "{stdout}"
    );
    let compiled = volt(&["check", "--compile-only"]);
    assert!(
        compiled.status.success(),
        "{}",
        String::from_utf8_lossy(&compiled.stdout)
    );
    assert!(!String::from_utf8_lossy(&compiled.stdout).contains("FAILED"));
}

fn volt_runtime_has_no_adapter() -> bool {
    volt_wgpu::adapters().is_empty()
}

#[test]
fn unavailable_backends_say_why() {
    if let Ok(device) = volt_cuda::Device::open() {
        println!("SKIP cuda unavailable-backend test: {} is present", device.name);
        return;
    }
    let dir = fixture("llama");
    assert_clean_error(&logits_on("cuda", &dir, "1"), "backend cuda cannot start");
    assert_clean_error(&volt(&["check", "--backend", "cuda"]), "backend cuda cannot be checked");
}

#[test]
fn cuda_kernels_compile_for_hopper_with_nvrtc_alone() {
    if let Err(e) = volt_cuda::nvrtc::Nvrtc::load() {
        println!("SKIP volt check --backend cuda --compile-only: {e}");
        // Without NVRTC the command must say so on one line.
        assert_clean_error(&volt(&["check", "--backend", "cuda", "--compile-only"]), "NVRTC");
        return;
    }
    let out = volt(&["check", "--backend", "cuda", "--compile-only"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for kernel in [
        "gemm_fp8",
        "linear_fp8",
        "moe_route",
        "moe_align",
        "attention",
        "rms_norm",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(kernel) && l.contains("sm_90a  ok")),
            "{kernel} not compiled for sm_90a: {stdout}"
        );
    }
    assert!(stdout.trim_end().ends_with(" compiled, 0 failed"), "{stdout}");
}

/// `volt info --json` of the paper's layout (`assets/layouts/yi-lightning.json`) at 64K context, plus `extra`.
fn yi_lightning_info(extra: &[&str]) -> serde_json::Value {
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/layouts/yi-lightning.json");
    let mut args = vec![
        "info",
        "--model",
        layout.to_str().unwrap(),
        "--context",
        "65536",
        "--json",
    ];
    args.extend(extra);
    json_stdout(&volt(&args))
}

#[test]
fn yi_lightning_layout_saves_the_reports_82_8_percent_of_kv() {
    let v = yi_lightning_info(&[]);
    // 3/4 of the layers keep 4096 of 65536 positions; the full quarter shares KV in pairs: 1/8 remains.
    let reduction = v["kv_reduction"].as_f64().unwrap();
    assert!(
        (reduction - (1.0 - (0.75 * 4096.0 / 65536.0 + 0.125))).abs() < 1e-12,
        "{reduction}"
    );
    assert_eq!(format!("{reduction:.3}"), "0.828");
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers[3]["attention"], "full");
    assert_eq!(
        layers[7]["kv_source"], 3,
        "the second full layer reads the first one's KV"
    );
    assert_eq!(layers[0]["window"], 4096);
}

/// `--kv-dtype` changes the bytes `volt info` reports (f16 unless told), not the reduction.
#[test]
fn info_counts_kv_bytes_in_the_chosen_kv_dtype() {
    let default = yi_lightning_info(&[]);
    assert_eq!(default["kv_dtype"], "f16");
    for (kv, bytes) in [("f32", 4.0), ("f16", 2.0), ("fp8", 1.0)] {
        let v = yi_lightning_info(&["--kv-dtype", kv]);
        assert_eq!(v["kv_dtype"], kv);
        assert_eq!(
            v["kv_bytes"].as_f64().unwrap(),
            default["kv_bytes"].as_f64().unwrap() * bytes / 2.0,
            "{kv}"
        );
        assert_eq!(v["kv_reduction"], default["kv_reduction"]);
    }
}

/// FP8 KV on the shipped model: perplexity within 1% of the f32 cache, on the CPU reference and on wgpu
/// (whose FP8 KV kernels must round as the reference does: within 0.01% of its perplexity).
#[test]
fn fp8_kv_cache_keeps_the_default_models_perplexity() {
    let ppl = |backend: &str, kv: &str| {
        let v = json_stdout(&volt(&[
            "perplexity",
            "--file",
            &text("moby_dick_ch1.txt"),
            "--backend",
            backend,
            "--kv-dtype",
            kv,
            "--json",
        ]));
        v["ppl"].as_f64().unwrap()
    };
    let (f32_kv, fp8_kv) = (ppl("cpu", "f32"), ppl("cpu", "fp8"));
    println!("cpu perplexity: f32 KV {f32_kv:.4}, fp8 KV {fp8_kv:.4}");
    assert!(
        (fp8_kv / f32_kv - 1.0).abs() < 0.01,
        "fp8 KV {fp8_kv} against f32 KV {f32_kv}"
    );
    if volt_runtime_has_no_adapter() {
        println!("SKIP the wgpu half: no GPU adapter");
        return;
    }
    let wgpu_fp8 = ppl("wgpu", "fp8");
    println!("wgpu perplexity: fp8 KV {wgpu_fp8:.4}");
    assert!(
        (wgpu_fp8 / fp8_kv - 1.0).abs() < 1e-4,
        "wgpu fp8 KV {wgpu_fp8} against cpu {fp8_kv}"
    );
}

fn text(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/text")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// `volt route-stats` on the shipped model against the same statistics computed directly from the PyTorch
/// reference (tools/route_stats_reference.py) on the same text, with 2 EP groups of 2 partitions.
#[test]
fn route_stats_match_the_pytorch_reference() {
    let got = json_stdout(&volt(&[
        "route-stats",
        "--file",
        &text("route_stats.txt"),
        "--ep-groups",
        "2",
        "--partitions",
        "2",
        "--json",
    ]));
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("route_stats").join("expected.json")).unwrap()).unwrap();
    assert_eq!(got["tokens"], want["tokens"]);
    let (got, want) = (got["layers"].as_array().unwrap(), want["layers"].as_array().unwrap());
    assert_eq!(got.len(), want.len());
    let close = |a: &serde_json::Value, b: &serde_json::Value, what: &str| {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        assert!((a - b).abs() < 1e-5, "{what}: volt {a}, reference {b}");
    };
    for (g, w) in got.iter().zip(want) {
        let layer = w["layer"].as_u64().unwrap();
        assert_eq!(g["layer"], w["layer"]);
        assert_eq!(
            g["experts_per_token"], w["experts_per_token"],
            "layer {layer} histogram"
        );
        for key in ["f", "P", "load"] {
            for (i, (a, b)) in g[key]
                .as_array()
                .unwrap()
                .iter()
                .zip(w[key].as_array().unwrap())
                .enumerate()
            {
                close(a, b, &format!("layer {layer} {key}[{i}]"));
            }
        }
        close(&g["L_ST"]["raw"], &w["L_ST"], &format!("layer {layer} L_ST"));
        for (a, b) in g["L_EP"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .zip(w["L_EP"].as_array().unwrap())
        {
            close(a, b, &format!("layer {layer} L_EP"));
        }
        for (a, b) in g["L_PEP"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(w["L_PEP"].as_array().unwrap())
        {
            close(a, b, &format!("layer {layer} L_PEP"));
        }
        let scaled = g["L_ST"]["scaled"].as_f64().unwrap();
        assert!((scaled - 1e-6 * g["L_ST"]["raw"].as_f64().unwrap()).abs() < 1e-15);
    }
}

/// The shipped model on prose it never saw (Moby-Dick, chapter 1): perplexity far below its vocabulary.
#[test]
fn default_model_perplexity_on_unseen_prose_is_far_below_the_vocabulary() {
    let v = json_stdout(&volt(&[
        "perplexity",
        "--file",
        &text("moby_dick_ch1.txt"),
        "--backend",
        "cpu",
        "--json",
    ]));
    let (ppl, tokens) = (v["ppl"].as_f64().unwrap(), v["tokens"].as_u64().unwrap());
    let vocab = json_stdout(&volt(&["info", "--json"]))["vocab_size"].as_f64().unwrap();
    assert!(tokens > 1000, "{tokens} tokens scored");
    assert!(
        ppl > 1.0 && ppl < vocab / 10.0,
        "perplexity {ppl} against a vocabulary of {vocab}"
    );
}

/// With no --model every command uses the shipped model, and it writes text.
#[test]
fn generate_without_a_model_uses_the_shipped_one() {
    let v = json_stdout(&volt(&[
        "generate",
        "--prompt",
        "It is a truth universally acknowledged",
        "--max-tokens",
        "24",
        "--temperature",
        "0",
        "--json",
        "--backend",
        "cpu",
    ]));
    let text = v["text"].as_str().unwrap();
    assert!(text.split_whitespace().count() >= 5, "generated: {text:?}");
    assert!(v["prompt_tokens"].as_u64().unwrap() > 3);
    let chat = json_stdout(&volt(&[
        "generate",
        "--chat",
        "--prompt",
        "Who is Mr. Darcy?",
        "--max-tokens",
        "16",
        "--temperature",
        "0",
        "--json",
        "--backend",
        "cpu",
    ]));
    assert!(!chat["tokens"].as_array().unwrap().is_empty());
}

/// A binary moved out of the source tree finds the default model beside it, else in the data directory
/// (here fixtures stand in for it, so the family says which place was used).
#[test]
fn a_moved_binary_finds_the_default_model_beside_it_or_in_the_data_directory() {
    let root = std::env::temp_dir().join(format!("volt-moved-{}", std::process::id()));
    let (bin, data) = (root.join("bin"), root.join("data"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(data.join("models")).unwrap();
    let exe = bin.join("volt");
    // A hard link keeps the path the process sees as its own (a symlink would resolve back to target/).
    std::fs::hard_link(env!("CARGO_BIN_EXE_volt"), &exe)
        .or_else(|_| std::fs::copy(env!("CARGO_BIN_EXE_volt"), &exe).map(drop))
        .unwrap();
    let family = || {
        let out = Command::new(&exe)
            .args(["info", "--json"])
            .env_remove("VOLT_MODEL")
            .env("VOLT_DATA_DIR", &data)
            .output()
            .unwrap();
        json_stdout(&out)["family"].as_str().unwrap().to_string()
    };
    std::os::unix::fs::symlink(fixture("qwen3"), bin.join("volt-tiny")).unwrap();
    assert_eq!(family(), "qwen3");
    std::fs::remove_file(bin.join("volt-tiny")).unwrap();
    std::os::unix::fs::symlink(fixture("llama"), data.join("models/volt-tiny")).unwrap();
    assert_eq!(family(), "llama");
    std::fs::remove_dir_all(&root).unwrap();
}

/// The terminal chat keeps a multi-turn conversation on the shipped model and quits on /exit.
#[test]
fn terminal_chat_answers_each_turn() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_volt"))
        .args([
            "chat",
            "--terminal",
            "--backend",
            "cpu",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Good morning!\n/reset\nHow is your sister?\n/exit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("volt> ").count(), 2, "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("conversation cleared"));
}

/// The shipped model's greedy continuation of "Elizabeth could not" equals the PyTorch reference's (no KV
/// cache there), as recorded in assets/volt-tiny/README.md: 40 tokens through sliding windows, KV sharing
/// and top-p routing.
#[test]
fn shipped_model_greedy_matches_the_pytorch_reference() {
    let reference = [
        370, 1379, 356, 370, 350, 1443, 365, 382, 635, 638, 375, 350, 1043, 722, 282, 366, 414, 388, 398, 356, 370,
        350, 1443, 365, 382, 635, 638, 375, 350, 1043, 722, 356, 370, 350, 1043, 270, 397, 752, 402, 509,
    ];
    let v = json_stdout(&volt(&[
        "generate",
        "--ids",
        "1,917,478,398",
        "--max-tokens",
        "40",
        "--temperature",
        "0",
        "--ignore-eos",
        "--json",
        "--backend",
        "cpu",
    ]));
    let got: Vec<u64> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(got, reference);
}

/// Past the context, perplexity moves a window by the stride and scores every token once.
#[test]
fn perplexity_slides_windows_past_the_context() {
    let full = json_stdout(&volt(&[
        "perplexity",
        "--file",
        &text("moby_dick_ch1.txt"),
        "--backend",
        "cpu",
        "--json",
    ]));
    let strided = json_stdout(&volt(&[
        "perplexity",
        "--file",
        &text("moby_dick_ch1.txt"),
        "--backend",
        "cpu",
        "--context",
        "256",
        "--stride",
        "128",
        "--json",
    ]));
    assert_eq!(strided["tokens"], full["tokens"], "each token scored once");
    let (a, b) = (full["ppl"].as_f64().unwrap(), strided["ppl"].as_f64().unwrap());
    // Less left context costs a little, never a lot: the model was trained on 256-token windows.
    assert!(b >= a * 0.95 && b < a * 1.3, "full-context {a}, 256-token windows {b}");
}
