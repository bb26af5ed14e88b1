//! Golden tests: every fixture under tests/fixtures (tiny random checkpoints of each family, made by
//! tools/make_fixtures.py with transformers) must give transformers' logits at every position within the
//! fixture's tolerance, and the same 10 greedy tokens.

#[path = "common.rs"]
mod common;

use std::path::Path;

use common::{expected, fixtures, fixtures_root};
use volt_runtime::backend::cpu::CpuBackend;
use volt_runtime::checkpoint::Checkpoint;
use volt_runtime::dtype::WeightDtype;
use volt_runtime::fp8;
use volt_runtime::generate::{generate, prompt_logits, GenerateOptions};
use volt_runtime::sampler::SamplingParams;
use volt_runtime::session::{BackendSession, Session};

/// Largest |expected - got| over all positions, with where it is.
fn max_abs_diff(expected: &[Vec<f32>], got: &[Vec<f32>]) -> (f32, usize, usize) {
    let mut worst = (0.0f32, 0, 0);
    for (p, (e, g)) in expected.iter().zip(got).enumerate() {
        assert_eq!(e.len(), g.len(), "position {p}: vocab {} vs {}", e.len(), g.len());
        for (i, (a, b)) in e.iter().zip(g).enumerate() {
            let d = (a - b).abs();
            if d > worst.0 || d.is_nan() {
                worst = (d, p, i);
            }
        }
    }
    worst
}

fn check(dir: &Path) -> Result<String, String> {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let exp = expected(dir);
    let mut session = BackendSession::load(CpuBackend::new(WeightDtype::F32), dir, 1)
        .map_err(|e| format!("{name}: load failed: {e}"))?;
    let got = prompt_logits(&mut session, 0, &exp.ids).map_err(|e| format!("{name}: {e}"))?;
    if got.len() != exp.logits.len() {
        return Err(format!(
            "{name}: {} positions, expected {}",
            got.len(),
            exp.logits.len()
        ));
    }
    let (diff, pos, idx) = max_abs_diff(&exp.logits, &got);
    if !(diff <= exp.atol) {
        return Err(format!(
            "{name}: logits differ by {diff:.3e} > {:.1e} at position {pos}, index {idx}: expected {}, got {}",
            exp.atol, exp.logits[pos][idx], got[pos][idx]
        ));
    }
    let opts = GenerateOptions {
        max_tokens: exp.greedy.len(),
        sampling: SamplingParams::greedy(),
        stop_strings: vec![],
        ignore_eos: true,
    };
    let out = generate(&mut session, 0, &exp.ids, None, &[], &opts, |_| {}).map_err(|e| format!("{name}: {e}"))?;
    if out.tokens != exp.greedy {
        return Err(format!(
            "{name}: greedy tokens {:?}, expected {:?}",
            out.tokens, exp.greedy
        ));
    }
    Ok(format!(
        "{name}: max |diff| {diff:.2e} over {} positions, greedy {} tokens identical ({})",
        got.len(),
        out.tokens.len(),
        session.describe()
    ))
}

#[test]
fn cpu_matches_transformers_on_every_fixture() {
    let dirs = fixtures();
    assert!(
        !dirs.is_empty(),
        "no fixtures under tests/fixtures: run python3 tools/make_fixtures.py"
    );
    let mut failures = Vec::new();
    for dir in &dirs {
        match check(dir) {
            Ok(line) => println!("ok   {line}"),
            Err(line) => {
                println!("FAIL {line}");
                failures.push(line);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}

fn load(name: &str, slots: usize) -> BackendSession<CpuBackend> {
    let dir = fixtures_root().join(name);
    BackendSession::load(CpuBackend::new(WeightDtype::F32), &dir, slots).unwrap()
}

/// One step holding a decode token of one sequence and a prefill chunk of another must give each row the
/// logits it gets when its sequence runs alone.
#[test]
fn a_step_mixing_sequences_at_different_positions_matches_running_each_alone() {
    use volt_runtime::step::Step;
    for name in ["mistral", "gpt_oss", "qwen2_moe", "volt", "volt_topk"] {
        let a: Vec<u32> = (0..13).map(|i| (i * 7 + 3) % 97).collect();
        let b: Vec<u32> = (0..9).map(|i| (i * 5 + 1) % 89).collect();
        let mut alone = load(name, 1);
        let a_logits = prompt_logits(&mut alone, 0, &a).unwrap();
        let b_logits = prompt_logits(&mut alone, 0, &b).unwrap();

        let mut mixed = load(name, 2);
        // Sequence 0 prefills all but its last token; then one step carries a's last token (position 12)
        // together with b's first 5 tokens (positions 0..5); then b's remaining 4.
        mixed.forward(&Step::single(0, &a[..12], 0), &[11]).unwrap();
        let mut step = Step::single(0, &a[12..], 12);
        let b_head = Step::single(1, &b[..5], 0);
        step.tokens.extend(&b_head.tokens);
        step.positions.extend(&b_head.positions);
        step.seqs.extend(&b_head.seqs);
        let vocab = a_logits[0].len();
        let got = mixed.forward(&step, &[0, 5]).unwrap();
        let rest = mixed.forward(&Step::single(1, &b[5..], 5), &[3]).unwrap();
        let rows = [
            (&got[..vocab], &a_logits[12]),
            (&got[vocab..], &b_logits[4]),
            (&rest[..], &b_logits[8]),
        ];
        for (r, (g, e)) in rows.iter().enumerate() {
            let diff = g
                .iter()
                .zip(e.iter())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "{name}: row {r} differs by {diff}");
        }
    }
}

/// Sliding layers keep only their last W entries; layers that reuse another layer's KV keep none.
#[test]
fn kv_cache_keeps_only_what_the_spec_needs() {
    for name in ["mistral", "gpt_oss", "qwen3", "llama", "volt", "volt_alt", "volt_topk"] {
        let mut s = load(name, 1);
        let ids: Vec<u32> = (0..20).map(|i| (i * 3 + 2) % 90).collect();
        prompt_logits(&mut s, 0, &ids).unwrap();
        let spec = s.spec().clone();
        let expected: usize = spec
            .layers
            .iter()
            .enumerate()
            .filter(|(i, l)| l.attn.kv_source == *i)
            .map(|(_, l)| l.attn.window().map_or(ids.len(), |w| w.min(ids.len())))
            .sum();
        assert_eq!(s.cache().rows_held(), expected, "{name}");
        assert_eq!(s.kv().seq_len(0), ids.len());
    }
}

/// Fixtures from the PyTorch reference of the `volt` family also store, per MoE layer and position, the
/// router probabilities and the chosen experts: routing on the CPU backend must be the same decision.
#[test]
fn routing_matches_the_reference_expert_for_expert() {
    let mut checked = 0;
    for dir in fixtures() {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        let Some(routing) = v.get("routing").and_then(|r| r.as_object()) else {
            continue;
        };
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let exp = expected(&dir);
        let mut s = BackendSession::load(CpuBackend::new(WeightDtype::F32), &dir, 1).unwrap();
        s.trace_routing(true);
        prompt_logits(&mut s, 0, &exp.ids).unwrap();
        let traces = s.take_routing().unwrap();
        assert_eq!(traces.len(), routing.len(), "{name}: MoE layers traced");
        for t in traces {
            let want = &routing[&t.layer.to_string()];
            let want_probs = &v["router_probs"][&t.layer.to_string()];
            for (pos, chosen) in t.chosen.iter().enumerate() {
                let mut got: Vec<u64> = chosen.iter().map(|c| c.0 as u64).collect();
                got.sort();
                let want: Vec<u64> = want[pos]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect();
                assert_eq!(got, want, "{name}: layer {} position {pos} experts", t.layer);
                for (e, p) in want_probs[pos].as_array().unwrap().iter().enumerate() {
                    let (p, g) = (p.as_f64().unwrap() as f32, t.probs[pos * t.n_experts + e]);
                    assert!(
                        (p - g).abs() < 1e-4,
                        "{name}: layer {} position {pos} expert {e}: expected {p}, got {g}",
                        t.layer
                    );
                }
            }
        }
        checked += 1;
    }
    assert!(checked >= 2, "no fixture with reference routing");
}

/// Block-scaled FP8 checkpoints load as stored: a weight comes out as the checkpoint's own codes and
/// `weight_scale_inv` blocks, so Volt runs the published FP8 weights; and quantizing what they decode to
/// gives back the same bytes, so `--dtype fp8` over a widened copy loses nothing either.
#[test]
fn fp8_checkpoints_load_as_their_own_bytes() {
    for fixture in ["qwen3_fp8", "qwen3_moe_fp8"] {
        let ck = Checkpoint::open(&fixtures_root().join(fixture)).unwrap();
        assert_eq!(ck.storage_dtype(), WeightDtype::Fp8, "{fixture}");
        let mut checked = 0;
        for name in ck.names() {
            let shape = ck.shape(name).unwrap().to_vec();
            let (dtype, codes) = ck.bytes(name, &shape).unwrap();
            if format!("{dtype:?}") != "F8_E4M3" {
                continue;
            }
            let grid = fp8::BlockGrid::of(&shape);
            let scales = ck
                .f32(&format!("{name}_scale_inv"), &[grid.row_blocks(), grid.col_blocks()])
                .unwrap();
            let stored = ck.tensor(name, &shape).unwrap();
            assert_eq!(stored.dtype, WeightDtype::Fp8, "{fixture} {name}");
            assert_eq!(
                (stored.bytes(), stored.scales()),
                (codes, &scales.data[..]),
                "{fixture} {name}"
            );
            let (requantized, rescaled) = fp8::quantize(&stored.to_f32(), grid);
            assert_eq!(requantized, codes, "{fixture} {name}: codes differ");
            assert_eq!(rescaled, scales.data, "{fixture} {name}: scales differ");
            checked += 1;
        }
        println!("{fixture}: {checked} FP8 tensors requantize to their stored codes and scales");
        assert!(checked > 0);
    }
}
