//! Backend conformance, after ggml's test-backend-ops: every op of a backend against the CPU reference
//! with seeded random inputs and odd shapes (not multiples of any workgroup size). The CPU reference is
//! built with the same weight dtype, so both round the weights identically and the tolerance measures the
//! kernels alone. A failure names the index, the expected and the got value.

mod attention;
mod moe;
mod ops;

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::checkpoint::HostTensor;
use crate::dtype::{KvDtype, WeightDtype};
use crate::error::Result;
use crate::spec::{AttnKind, AttnSpec, FfnSpec, LayerSpec, ModelSpec, QkNorm, RopeScaling, RopeSpec};
use crate::step::Step;
use crate::tensor::StoredTensor;
use attention::*;
use moe::*;
use ops::*;

#[derive(Clone, Debug)]
pub struct CaseResult {
    pub op: String,
    pub dtype: WeightDtype,
    /// How the backend kept cached K and V (the reference rounds its cache the same way).
    pub kv: KvDtype,
    /// The optional features the kernels used ("subgroups, shader-f16" or "portable").
    pub kernels: String,
    pub shape: String,
    pub max_err: f32,
    pub tolerance: f32,
    /// "index i: expected x, got y" at the worst element.
    pub worst: String,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.max_err <= self.tolerance
    }
}

/// Deterministic inputs: xorshift64*, values in [-1, 1).
pub(crate) struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        bits as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn tensor(&mut self, shape: &[usize], scale: f32) -> HostTensor {
        let n = shape.iter().product();
        HostTensor::new(shape.to_vec(), (0..n).map(|_| self.next() * scale).collect())
    }
    /// A weight matrix of random values, stored in f32 (each backend keeps it in its own dtype).
    fn matrix(&mut self, shape: &[usize], scale: f32) -> StoredTensor {
        let t = self.tensor(shape, scale);
        StoredTensor::from_f32(t.shape, &t.data)
    }
}

/// Relative-or-absolute error: |a - b| / max(1, |a|).
fn compare(expected: &[f32], got: &[f32]) -> (f32, String) {
    if expected.len() != got.len() {
        return (
            f32::INFINITY,
            format!("length: expected {}, got {}", expected.len(), got.len()),
        );
    }
    let mut worst = (0.0f32, 0usize);
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        let err = (e - g).abs() / e.abs().max(1.0);
        if !(err <= worst.0) {
            worst = (if err.is_nan() { f32::INFINITY } else { err }, i);
        }
    }
    let i = worst.1;
    (
        worst.0,
        format!(
            "index {i}: expected {}, got {}",
            expected.get(i).copied().unwrap_or(0.0),
            got.get(i).copied().unwrap_or(0.0)
        ),
    )
}

pub(crate) fn one_layer_spec(attn: AttnSpec, ffn: FfnSpec, hidden: usize) -> ModelSpec {
    ModelSpec {
        family: "conformance".into(),
        vocab_size: 1,
        hidden_size: hidden,
        tie_word_embeddings: false,
        rms_norm_eps: 1e-6,
        max_position_embeddings: 4096,
        bos_token_id: None,
        eos_token_ids: vec![],
        layers: vec![LayerSpec { attn, ffn }],
    }
}

pub(crate) fn attn_spec(
    window: Option<usize>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    sinks: bool,
) -> AttnSpec {
    AttnSpec {
        kind: window.map_or(AttnKind::Full, |window| AttnKind::Sliding { window }),
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim,
        qkv_bias: false,
        o_bias: false,
        qk_norm: QkNorm::None,
        clip_qkv: None,
        sinks,
        softmax_scale: (head_dim as f32).powf(-0.5),
        rope: RopeSpec {
            theta: 10000.0,
            scaling: RopeScaling::None,
        },
        kv_source: 0,
    }
}

/// Two sequences: one prefilling `a` tokens then decoding one, the other prefilling `b` in the same step.
pub(crate) fn steps(a: usize, b: usize) -> Vec<Step> {
    let mut mixed = Step::single(0, &[1], a);
    let second = Step::single(1, &vec![2; b], 0);
    mixed.tokens.extend(second.tokens);
    mixed.positions.extend(second.positions);
    mixed.seqs.extend(second.seqs);
    vec![Step::single(0, &vec![3; a], 0), mixed]
}

/// Runs every case on `backend` (built for `dtype`) and on the CPU reference with the same dtype. A case's
/// tolerance is the usual one times `loosen(name, shape)`, for backends whose kernels round differently by
/// design (FP8 activations in a GEMM).
pub fn check_backend<B: Backend>(
    backend: &mut B,
    dtype: WeightDtype,
    kernels: &str,
    loosen: impl Fn(&str, &str) -> f32,
) -> Result<Vec<CaseResult>> {
    check_cases(backend, dtype, kernels, loosen, |_| true)
}

/// `check_backend` on the cases whose name `wanted` accepts. The reference keeps its KV cache in the
/// backend's KV dtype, so both round the same K and V values.
pub fn check_cases<B: Backend>(
    backend: &mut B,
    dtype: WeightDtype,
    kernels: &str,
    loosen: impl Fn(&str, &str) -> f32,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<CaseResult>> {
    let kv = backend.kv_dtype();
    let mut reference = CpuBackend::new(dtype).with_kv_dtype(kv);
    let mut results = Vec::new();
    for (cpu, case) in cases::<CpuBackend>().into_iter().zip(cases::<B>()) {
        if !wanted(case.name) {
            continue;
        }
        let expected = (cpu.run)(&mut reference, &mut Rng(case.seed))?;
        let got = (case.run)(backend, &mut Rng(case.seed))?;
        let (max_err, worst) = compare(&expected, &got);
        // Attention and MoE chain exponentials and several reductions.
        let tolerance = if case.name.starts_with("attention") || case.name.starts_with("moe") {
            2e-4
        } else {
            1e-4
        };
        results.push(CaseResult {
            op: case.name.into(),
            dtype,
            kv,
            kernels: kernels.into(),
            shape: case.shape.into(),
            max_err,
            tolerance: tolerance * loosen(case.name, case.shape),
            worst,
        });
    }
    Ok(results)
}

/// One case, written once generically and instantiated for each backend.
struct Case<B> {
    name: &'static str,
    shape: &'static str,
    seed: u64,
    run: fn(&mut B, &mut Rng) -> Result<Vec<f32>>,
}

macro_rules! case {
    ($name:expr, $shape:expr, $seed:expr, $f:ident) => {
        Case {
            name: $name,
            shape: $shape,
            seed: $seed,
            run: $f::<B>,
        }
    };
}

fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!("matmul", "t=7 k=133 out=67 +bias", 1, matmul_case),
        case!("matvec", "t=1 k=257 out=131", 2, matvec_case),
        case!("matmul/prefill", "t=37 k=131 out=75 +bias", 15, matmul_prefill_case),
        case!(
            "matmul/prefill",
            "t=133 k=70 out=129 (3x3 tiles)",
            16,
            matmul_prefill_tiles_case
        ),
        case!("embed", "vocab=37 hidden=45 t=5", 3, embed_case),
        case!("rms_norm", "t=3 cols=70 group=70", 4, rms_norm_case),
        case!("rms_norm/head", "t=3 cols=70 group=14", 5, head_norm_case),
        case!("rope", "t=4 heads=3 head_dim=18", 6, rope_case),
        case!("elementwise", "t=3 cols=77 add/swiglu/clamp/gate", 7, elementwise_case),
        case!("select_rows", "rows 4 of 6, cols=29", 8, select_rows_case),
        case!(
            "attention",
            "full, gqa 6/2, head_dim=20, 2 seqs",
            9,
            attention_full_case
        ),
        case!(
            "attention",
            "sliding w=5, sinks, head_dim=36, 2 seqs",
            10,
            attention_sliding_case
        ),
        case!(
            "attention/prefill",
            "full, gqa 6/2, head_dim=20, 37 + 1/21 rows",
            22,
            attention_prefill_full_case
        ),
        case!(
            "attention/prefill",
            "sliding w=5, sinks, head_dim=36, 37 + 1/21",
            23,
            attention_prefill_sliding_case
        ),
        case!(
            "attention/prefill",
            "head_dim=128 (w=9) and 130, 19 + 1/12 rows",
            24,
            attention_prefill_wide_case
        ),
        case!(
            "attention/split",
            "full, gqa 6/2, head_dim=22, decode at 700",
            15,
            attention_split_full_case
        ),
        case!(
            "attention/split",
            "sliding w=300, sinks, head_dim=36, at 900",
            16,
            attention_split_sliding_case
        ),
        case!(
            "attention/split",
            "full, sinks, head_dim=18, seqs at 777/301/40",
            17,
            attention_split_seqs_case
        ),
        case!(
            "attention/paged",
            "full, 3 seqs in interleaved pages, reset, regrow",
            25,
            attention_paged_case
        ),
        case!(
            "attention/kv range",
            "3 seqs of 1 key, V in ±2^-12..2^10",
            26,
            attention_kv_range_case
        ),
        case!("moe/top-k", "e=7 k=3 h=45 i=19 softmax renorm", 11, moe_topk_case),
        case!("moe/top-p", "e=9 p=0.55 [1,4] h=33 i=21", 12, moe_topp_case),
        case!(
            "moe/gpt-oss",
            "e=6 k=2 select-then-softmax, biases, clamp",
            13,
            moe_gptoss_case
        ),
        case!("moe/sigmoid", "e=5 k=2 sigmoid h=40 i=10", 14, moe_sigmoid_case),
        case!("pick", "vocab=1500, 4 rows x 9 settings x 6 seeds", 21, pick_case),
        // 41 tokens: the grouped (per-expert GEMM) path of prefill.
        case!(
            "moe/top-k",
            "t=41 e=7 k=3 h=45 i=19 softmax renorm",
            17,
            moe_topk_prefill_case
        ),
        case!(
            "moe/top-p",
            "t=41 e=9 p=0.55 [1,4] h=33 i=21",
            18,
            moe_topp_prefill_case
        ),
        case!(
            "moe/gpt-oss",
            "t=41 e=6 k=2 select-then-softmax, biases, clamp",
            19,
            moe_gptoss_prefill_case
        ),
        case!(
            "moe/sigmoid",
            "t=41 e=5 k=2 sigmoid h=40 i=10",
            20,
            moe_sigmoid_prefill_case
        ),
    ]
}
