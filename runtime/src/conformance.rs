//! Backend conformance, after ggml's test-backend-ops: every op of a backend against the CPU reference
//! with seeded random inputs and odd shapes (not multiples of any workgroup size). The CPU reference is
//! built with the same weight dtype, so both round the weights identically and the tolerance measures the
//! kernels alone. A failure names the index, the expected and the got value.

use crate::backend::cpu::CpuBackend;
use crate::backend::wgpu::kernels::KernelFeatures;
use crate::backend::wgpu::WgpuBackend;
use crate::backend::{Backend, KvCache, KvDtype, MoeExperts, Precision, Step, WeightDtype};
use crate::checkpoint::HostTensor;
use crate::error::Result;
use crate::rope::RopeTable;
use crate::sampler::{Pick, Sampler, SamplingParams};
use crate::spec::{
    AttnKind, AttnSpec, ExpertActivation, FfnSpec, LayerSpec, ModelSpec, MoeSpec, QkNorm, RopeScaling, RopeSpec,
    RouterOrder, RouterSpec, Scoring, Selection,
};

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
struct Rng(u64);

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

fn one_layer_spec(attn: AttnSpec, ffn: FfnSpec, hidden: usize) -> ModelSpec {
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

fn attn_spec(window: Option<usize>, heads: usize, kv_heads: usize, head_dim: usize, sinks: bool) -> AttnSpec {
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
fn steps(a: usize, b: usize) -> Vec<Step> {
    let mut mixed = Step::single(0, &[1], a);
    let second = Step::single(1, &vec![2; b], 0);
    mixed.tokens.extend(second.tokens);
    mixed.positions.extend(second.positions);
    mixed.seqs.extend(second.seqs);
    vec![Step::single(0, &vec![3; a], 0), mixed]
}

/// Runs every case on the wgpu backend and on the CPU reference with the same dtype.
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
fn check_cases<B: Backend>(
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

fn linear_case<B: Backend>(be: &mut B, r: &mut Rng, t: usize, k: usize, out: usize, bias: bool) -> Result<Vec<f32>> {
    let w = be.upload_matrix(r.tensor(&[out, k], 0.5), Precision::Storage)?;
    let bias = if bias {
        Some(be.upload_vector(r.tensor(&[out], 1.0))?)
    } else {
        None
    };
    let x = input(be, r, t, k)?;
    let y = be.linear(&x, &w, bias.as_ref());
    be.read(&y)
}

fn matmul_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    linear_case(be, r, 7, 133, 67, true)
}

fn matvec_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    linear_case(be, r, 1, 257, 131, false)
}

fn matmul_prefill_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    linear_case(be, r, 37, 131, 75, true)
}

fn matmul_prefill_tiles_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    linear_case(be, r, 133, 70, 129, false)
}

/// Token choice (`Backend::pick`) against `Pick::choose`: ids as f32, so any differing choice fails. Rows:
/// random logits, a tie at the maximum, NaN among them, and all -inf but NaN. Settings cover greedy with and
/// without a repetition penalty, top-k within and beyond the kernel's 1024 sorted candidates, top-p and
/// min-p, and no filter at all over a vocabulary larger than 1024.
fn pick_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let vocab = 1500;
    let mut rows = r.tensor(&[4, vocab], 6.0).data;
    rows[vocab + 30] = 50.0;
    rows[vocab + 700] = 50.0;
    rows[2 * vocab + 5] = f32::NAN;
    rows[3 * vocab..].fill(f32::NEG_INFINITY);
    rows[3 * vocab + 2] = f32::NAN;
    let table = be.upload_matrix(HostTensor::new(vec![4, vocab], rows), Precision::Full)?;
    be.begin_step(&Step::single(0, &[0, 1, 2, 3], 0))?;
    let logits = be.embed(&table);
    let greedy = SamplingParams::greedy();
    let settings = [
        greedy.clone(),
        SamplingParams {
            repeat_penalty: 1.5,
            ..greedy
        },
        SamplingParams::default(),
        SamplingParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 0.9,
            min_p: 0.0,
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: 0.7,
            top_k: 1200,
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.1,
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: 0.5,
            top_k: 5,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 0.8,
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: 2.0,
            top_k: 300,
            top_p: 0.99,
            min_p: 0.0,
            ..SamplingParams::default()
        },
    ];
    // The history the penalty looks at includes each row's argmax region and the tie.
    let history: Vec<u32> = vec![30, 700, 5, 2, 11, 1499, 30];
    let mut ids = Vec::new();
    for params in settings {
        for seed in 0..6 {
            let mut sampler = Sampler::new(SamplingParams { seed, ..params.clone() });
            let picks: Vec<Pick> = (0..4).map(|_| sampler.pick(&history)).collect();
            ids.extend(be.pick(&logits, &picks)?.into_iter().map(|id| id as f32));
        }
    }
    Ok(ids)
}

/// An activation tensor with the given values: rows of an identity-free path through `linear` would mix
/// them, so inputs are made as the embedding of distinct tokens.
fn input<B: Backend>(be: &mut B, r: &mut Rng, rows: usize, cols: usize) -> Result<B::Tensor> {
    let table = be.upload_matrix(r.tensor(&[rows, cols], 1.0), Precision::Full)?;
    let tokens: Vec<u32> = (0..rows as u32).collect();
    be.begin_step(&Step::single(0, &tokens, 0))?;
    Ok(be.embed(&table))
}

fn embed_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let table = be.upload_matrix(r.tensor(&[37, 45], 1.0), Precision::Storage)?;
    be.begin_step(&Step::single(0, &[36, 0, 17, 17, 5], 0))?;
    let x = be.embed(&table);
    be.read(&x)
}

fn rms_norm_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let w = be.upload_vector(r.tensor(&[70], 1.0))?;
    let x = input(be, r, 3, 70)?;
    let y = be.rms_norm(&x, &w, 1e-5, 70);
    be.read(&y)
}

fn head_norm_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let w = be.upload_vector(r.tensor(&[14], 1.0))?;
    let x = input(be, r, 3, 70)?;
    let y = be.rms_norm(&x, &w, 1e-5, 14);
    be.read(&y)
}

fn rope_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let spec = RopeSpec {
        theta: 500000.0,
        scaling: RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 64.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: false,
        },
    };
    let rope = be.upload_rope(RopeTable::new(&spec, 18))?;
    let table = be.upload_matrix(r.tensor(&[4, 54], 1.0), Precision::Full)?;
    // Positions far apart, one past 1000, to exercise the angle reduction.
    let step = Step {
        tokens: vec![0, 1, 2, 3],
        positions: vec![0, 7, 130, 1031],
        seqs: vec![0, 1, 2, 3],
    };
    be.begin_step(&step)?;
    let mut x = be.embed(&table);
    be.apply_rope(&mut x, &rope, 18);
    be.read(&x)
}

fn elementwise_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let a = be.upload_matrix(r.tensor(&[3, 77], 3.0), Precision::Full)?;
    let b = be.upload_matrix(r.tensor(&[3, 77], 3.0), Precision::Full)?;
    let g = be.upload_matrix(r.tensor(&[3, 1], 3.0), Precision::Full)?;
    be.begin_step(&Step::single(0, &[0, 1, 2], 0))?;
    let mut x = be.embed(&a);
    let y = be.embed(&b);
    be.add_assign(&mut x, &y);
    be.swiglu(&mut x, &y);
    be.clamp(&mut x, 1.5);
    let gate = be.embed(&g);
    be.sigmoid_gate(&mut x, &gate);
    be.read(&x)
}

fn select_rows_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let x = input(be, r, 6, 29)?;
    let y = be.select_rows(&x, &[5, 0, 3, 3]);
    be.read(&y)
}

/// Random K or V rows that f16 holds exactly, so an f16 cache keeps them as they are (WGSL lets
/// pack2x16float round to either neighbour). An FP8 cache still rounds them, with the kernels' own code,
/// which must agree with the reference's (`KvDtype::round`).
fn kv_values(r: &mut Rng, rows: usize, kv_dim: usize) -> HostTensor {
    let mut t = r.tensor(&[rows, kv_dim], 1.0);
    t.data.iter_mut().for_each(|x| *x = half::f16::from_f32(*x).to_f32());
    t
}

/// Three sequences of one key each, so the output is each one's V row as the cache holds it: values from
/// 2^-12 to 2^10 of either sign (E4M3 saturates at 448 and its subnormals start below 2^-6).
fn attention_kv_range_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let spec = attn_spec(None, 2, 2, 64, false);
    let model = one_layer_spec(spec.clone(), FfnSpec::Dense { intermediate: 1 }, 1);
    let mut cache = be.new_cache(&model, 3, None)?;
    let step = Step {
        tokens: vec![0; 3],
        positions: vec![0; 3],
        seqs: vec![0, 1, 2],
    };
    let mut v = r.tensor(&[3, spec.kv_dim()], 1.0);
    for (i, x) in v.data.iter_mut().enumerate() {
        let exponent = (i % 23) as i32 - 12;
        *x = half::f16::from_f32(x.signum() * (1.0 + x.abs()) * 2f32.powi(exponent)).to_f32();
    }
    let q = r.tensor(&[3, spec.q_dim()], 1.0);
    let k = kv_values(r, 3, spec.kv_dim());
    attention_step(be, &mut cache, &spec, &step, [q, k, v], None)
}

/// One step of attention on `cache` with the given Q, K and V rows (uploaded as tables the step's rows
/// look up, the backends' way into device memory): the new K/V go into the cache; returns the output.
fn attention_step<B: Backend>(
    be: &mut B,
    cache: &mut B::Cache,
    spec: &AttnSpec,
    step: &Step,
    [q, k, v]: [HostTensor; 3],
    sinks: Option<&B::Vector>,
) -> Result<Vec<f32>> {
    let q_table = be.upload_matrix(q, Precision::Full)?;
    let k_table = be.upload_matrix(k, Precision::Full)?;
    let v_table = be.upload_matrix(v, Precision::Full)?;
    be.begin_step(&Step {
        tokens: (0..step.len() as u32).collect(),
        ..step.clone()
    })?;
    be.reserve_kv(cache, step)?;
    let (q, k, v) = (be.embed(&q_table), be.embed(&k_table), be.embed(&v_table));
    let y = be.attention(cache, spec, &q, Some((&k, &v)), sinks);
    be.end_step(cache)?;
    be.read(&y)
}

/// Random Q rows and f16-exact K and V rows (`kv_values`) for a step of `t` rows.
fn random_qkv(r: &mut Rng, spec: &AttnSpec, t: usize) -> [HostTensor; 3] {
    let q = r.tensor(&[t, spec.q_dim()], 1.0);
    let k = kv_values(r, t, spec.kv_dim());
    [q, k, kv_values(r, t, spec.kv_dim())]
}

/// 11 prefill tokens of sequence 0, then its decode token beside 6 prefill tokens of sequence 1.
fn attention_case<B: Backend>(be: &mut B, r: &mut Rng, spec: AttnSpec) -> Result<Vec<f32>> {
    attention_steps_case(be, r, spec, 11, 6)
}

/// `a` prefill tokens of sequence 0, then its decode token beside `b` prefill tokens of sequence 1.
fn attention_steps_case<B: Backend>(be: &mut B, r: &mut Rng, spec: AttnSpec, a: usize, b: usize) -> Result<Vec<f32>> {
    let model = one_layer_spec(spec.clone(), FfnSpec::Dense { intermediate: 1 }, 1);
    let mut cache = be.new_cache(&model, 2, None)?;
    let sinks = if spec.sinks {
        Some(be.upload_vector(r.tensor(&[spec.n_heads], 2.0))?)
    } else {
        None
    };
    let mut out = Vec::new();
    for step in steps(a, b) {
        let qkv = random_qkv(r, &spec, step.len());
        out.extend(attention_step(be, &mut cache, &spec, &step, qkv, sinks.as_ref())?);
    }
    debug_assert_eq!(cache.seq_len(1), b);
    Ok(out)
}

/// Prefill steps of 37 and 1 + 21 rows: blocks of 16 rows of one sequence (the wgpu tiled kernel), a block
/// cut short by the sequence's end, and a lone decode row.
fn attention_prefill_full_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    attention_steps_case(be, r, attn_spec(None, 6, 2, 20, false), 37, 21)
}

/// A window of 5 inside every 16-row block, with sinks.
fn attention_prefill_sliding_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    attention_steps_case(be, r, attn_spec(Some(5), 4, 1, 36, true), 37, 21)
}

/// The largest head the tiled kernel holds, and one past it (the per-row kernel).
fn attention_prefill_wide_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let mut out = attention_steps_case(be, r, attn_spec(Some(9), 2, 1, 128, false), 19, 12)?;
    out.extend(attention_steps_case(be, r, attn_spec(None, 2, 2, 130, false), 19, 12)?);
    Ok(out)
}

fn attention_full_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    attention_case(be, r, attn_spec(None, 6, 2, 20, false))
}

fn attention_sliding_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    attention_case(be, r, attn_spec(Some(5), 4, 1, 36, true))
}

/// Decode steps long enough for the wgpu backend's split attention: each sequence `s` is prefilled with
/// `lens[s]` tokens (in chunks a step may hold), then one step decodes a token of every sequence. Returns the
/// decode step's attention.
fn attention_decode_case<B: Backend>(be: &mut B, r: &mut Rng, spec: AttnSpec, lens: &[usize]) -> Result<Vec<f32>> {
    let model = one_layer_spec(spec.clone(), FfnSpec::Dense { intermediate: 1 }, 1);
    let mut cache = be.new_cache(&model, lens.len(), None)?;
    let sinks = if spec.sinks {
        Some(be.upload_vector(r.tensor(&[spec.n_heads], 2.0))?)
    } else {
        None
    };
    let mut steps = Vec::new();
    for (seq, &len) in lens.iter().enumerate() {
        for start in (0..len).step_by(crate::generate::PREFILL_CHUNK) {
            let end = len.min(start + crate::generate::PREFILL_CHUNK);
            steps.push(Step::single(seq, &vec![0; end - start], start));
        }
    }
    steps.push(Step {
        tokens: vec![0; lens.len()],
        positions: lens.to_vec(),
        seqs: (0..lens.len()).collect(),
    });
    let mut out = Vec::new();
    for step in steps {
        let qkv = random_qkv(r, &spec, step.len());
        out = attention_step(be, &mut cache, &spec, &step, qkv, sinks.as_ref())?;
    }
    Ok(out)
}

fn attention_split_full_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    attention_decode_case(be, r, attn_spec(None, 6, 2, 22, false), &[700])
}

/// The sliding layer's ring holds window + 512 positions, so at 900 it has wrapped.
fn attention_split_sliding_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    attention_decode_case(be, r, attn_spec(Some(300), 4, 1, 36, true), &[900])
}

/// Rows of one step in different chunk counts; the row at 40 leaves all but its first chunk empty.
fn attention_split_seqs_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    attention_decode_case(be, r, attn_spec(None, 4, 2, 18, true), &[777, 301, 40])
}

/// Three sequences grow 20 positions a step, so their KV pages interleave in the pool; then sequence 1 is
/// reset and refilled from freed pages while the others decode. Returns every step's attention.
fn attention_paged_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let spec = attn_spec(None, 4, 2, 16, false);
    let model = one_layer_spec(spec.clone(), FfnSpec::Dense { intermediate: 1 }, 1);
    let mut cache = be.new_cache(&model, 3, None)?;
    let grow = |lens: &mut [usize], counts: &[usize]| {
        let mut step = Step::default();
        for (seq, &n) in counts.iter().enumerate() {
            for _ in 0..n {
                step.tokens.push(0);
                step.positions.push(lens[seq]);
                step.seqs.push(seq);
                lens[seq] += 1;
            }
        }
        step
    };
    let mut lens = [0; 3];
    let mut steps: Vec<Step> = (0..5).map(|_| grow(&mut lens, &[20, 20, 20])).collect();
    lens[1] = 0;
    steps.push(grow(&mut lens, &[1, 45, 1]));
    steps.push(grow(&mut lens, &[1, 1, 1]));
    let mut out = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        if i == 5 {
            cache.reset(1);
        }
        let qkv = random_qkv(r, &spec, step.len());
        out.extend(attention_step(be, &mut cache, &spec, &step, qkv, None)?);
    }
    Ok(out)
}

fn moe_case<B: Backend>(be: &mut B, r: &mut Rng, spec: MoeSpec, hidden: usize, tokens: usize) -> Result<Vec<f32>> {
    let (e, i) = (spec.n_experts, spec.expert_intermediate);
    let experts = MoeExperts::<B> {
        router: be.upload_matrix(r.tensor(&[e, hidden], 1.5), Precision::Full)?,
        router_bias: if spec.router.bias {
            Some(be.upload_vector(r.tensor(&[e], 1.0))?)
        } else {
            None
        },
        gate_up: be.upload_experts(r.tensor(&[e, 2, i, hidden], 0.4))?,
        down: be.upload_experts(r.tensor(&[e, hidden, i], 0.4))?,
        gate_up_bias: if spec.expert_bias {
            Some(be.upload_vector(r.tensor(&[e, 2, i], 1.0))?)
        } else {
            None
        },
        down_bias: if spec.expert_bias {
            Some(be.upload_vector(r.tensor(&[e, hidden], 1.0))?)
        } else {
            None
        },
    };
    let x = input(be, r, tokens, hidden)?;
    be.trace_routing(true);
    let y = be.moe(&x, &experts, &spec, 0);
    let mut out = be.read(&y)?;
    // The routing decision itself: expert ids and weights per token, in selection order.
    for layer in be.take_routing()? {
        for picks in layer.chosen {
            out.push(picks.len() as f32);
            out.extend(picks.iter().flat_map(|&(e, w)| [e as f32, w]));
        }
    }
    be.trace_routing(false);
    Ok(out)
}

fn moe_spec(e: usize, i: usize, router: RouterSpec, activation: ExpertActivation, expert_bias: bool) -> MoeSpec {
    MoeSpec {
        n_experts: e,
        expert_intermediate: i,
        router,
        activation,
        expert_bias,
        shared: None,
    }
}

fn router(scoring: Scoring, order: RouterOrder, selection: Selection, renormalize: bool, bias: bool) -> RouterSpec {
    RouterSpec {
        scoring,
        order,
        selection,
        renormalize,
        bias,
    }
}

fn moe_topk<B: Backend>(be: &mut B, r: &mut Rng, tokens: usize) -> Result<Vec<f32>> {
    let rt = router(
        Scoring::Softmax,
        RouterOrder::ScoreThenSelect,
        Selection::TopK { k: 3 },
        true,
        false,
    );
    moe_case(be, r, moe_spec(7, 19, rt, ExpertActivation::SwiGlu, false), 45, tokens)
}

fn moe_topp<B: Backend>(be: &mut B, r: &mut Rng, tokens: usize) -> Result<Vec<f32>> {
    let sel = Selection::TopP {
        p: 0.55,
        min_experts: 1,
        max_experts: 4,
    };
    let rt = router(Scoring::Softmax, RouterOrder::ScoreThenSelect, sel, false, false);
    moe_case(be, r, moe_spec(9, 21, rt, ExpertActivation::SwiGlu, false), 33, tokens)
}

fn moe_gptoss<B: Backend>(be: &mut B, r: &mut Rng, tokens: usize) -> Result<Vec<f32>> {
    let rt = router(
        Scoring::Softmax,
        RouterOrder::SelectThenScore,
        Selection::TopK { k: 2 },
        false,
        true,
    );
    moe_case(
        be,
        r,
        moe_spec(
            6,
            16,
            rt,
            ExpertActivation::ClampedSwiGlu {
                alpha: 1.702,
                limit: 1.5,
            },
            true,
        ),
        32,
        tokens,
    )
}

fn moe_sigmoid<B: Backend>(be: &mut B, r: &mut Rng, tokens: usize) -> Result<Vec<f32>> {
    let rt = router(
        Scoring::Sigmoid,
        RouterOrder::ScoreThenSelect,
        Selection::TopK { k: 2 },
        true,
        false,
    );
    moe_case(be, r, moe_spec(5, 10, rt, ExpertActivation::SwiGlu, false), 40, tokens)
}

fn moe_topk_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_topk(be, r, 9)
}

fn moe_topk_prefill_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_topk(be, r, 41)
}

fn moe_topp_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_topp(be, r, 9)
}

fn moe_topp_prefill_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_topp(be, r, 41)
}

fn moe_gptoss_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_gptoss(be, r, 9)
}

fn moe_gptoss_prefill_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_gptoss(be, r, 41)
}

fn moe_sigmoid_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_sigmoid(be, r, 9)
}

fn moe_sigmoid_prefill_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_sigmoid(be, r, 41)
}
