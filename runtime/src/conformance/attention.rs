//! Cases of attention: full and sliding, GQA, sinks, the tiled prefill and split decode shapes, paged KV
//! and the range of values an FP8 cache holds.

use crate::backend::Backend;
use crate::checkpoint::HostTensor;
use crate::dtype::Precision;
use crate::error::Result;
use crate::kv::KvCache;
use crate::spec::{AttnSpec, FfnSpec};
use crate::step::{Step, MAX_STEP_TOKENS};
use crate::tensor::StoredTensor;

use super::{attn_spec, one_layer_spec, steps, Rng};

/// Random K or V rows that f16 holds exactly, so an f16 cache keeps them as they are (WGSL lets
/// pack2x16float round to either neighbour). An FP8 cache still rounds them, with the kernels' own code,
/// which must agree with the reference's (`KvDtype::round`).
pub(super) fn kv_values(r: &mut Rng, rows: usize, kv_dim: usize) -> HostTensor {
    let mut t = r.tensor(&[rows, kv_dim], 1.0);
    t.data.iter_mut().for_each(|x| *x = half::f16::from_f32(*x).to_f32());
    t
}

/// Three sequences of one key each, so the output is each one's V row as the cache holds it: values from
/// 2^-12 to 2^10 of either sign (E4M3 saturates at 448 and its subnormals start below 2^-6).
pub(super) fn attention_kv_range_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
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
pub(super) fn attention_step<B: Backend>(
    be: &mut B,
    cache: &mut B::Cache,
    spec: &AttnSpec,
    step: &Step,
    [q, k, v]: [HostTensor; 3],
    sinks: Option<&B::Vector>,
) -> Result<Vec<f32>> {
    let [q_table, k_table, v_table] = [q, k, v].map(|t| StoredTensor::from_f32(t.shape, &t.data));
    let (q_table, k_table, v_table) = (
        be.upload_matrix(q_table, Precision::Full)?,
        be.upload_matrix(k_table, Precision::Full)?,
        be.upload_matrix(v_table, Precision::Full)?,
    );
    be.begin_step(&Step {
        tokens: (0..step.len() as u32).collect(),
        ..step.clone()
    })?;
    be.reserve_kv(cache, step)?;
    let (q, k, v) = (be.embed(&q_table)?, be.embed(&k_table)?, be.embed(&v_table)?);
    let y = be.attention(cache, spec, &q, Some((&k, &v)), sinks)?;
    // As `Model::forward` ends a step: the cache counts its positions, then the backend finishes.
    cache.kv_mut().advance(step);
    be.end_step(cache)?;
    be.read(&y)
}

/// Random Q rows and f16-exact K and V rows (`kv_values`) for a step of `t` rows.
pub(super) fn random_qkv(r: &mut Rng, spec: &AttnSpec, t: usize) -> [HostTensor; 3] {
    let q = r.tensor(&[t, spec.q_dim()], 1.0);
    let k = kv_values(r, t, spec.kv_dim());
    [q, k, kv_values(r, t, spec.kv_dim())]
}

/// 11 prefill tokens of sequence 0, then its decode token beside 6 prefill tokens of sequence 1.
pub(super) fn attention_case<B: Backend>(be: &mut B, r: &mut Rng, spec: AttnSpec) -> Result<Vec<f32>> {
    attention_steps_case(be, r, spec, 11, 6)
}

/// `a` prefill tokens of sequence 0, then its decode token beside `b` prefill tokens of sequence 1.
pub(super) fn attention_steps_case<B: Backend>(
    be: &mut B,
    r: &mut Rng,
    spec: AttnSpec,
    a: usize,
    b: usize,
) -> Result<Vec<f32>> {
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
    debug_assert_eq!(cache.kv().seq_len(1), b);
    Ok(out)
}

/// Prefill steps of 37 and 1 + 21 rows: blocks of 16 rows of one sequence (the wgpu tiled kernel), a block
/// cut short by the sequence's end, and a lone decode row.
pub(super) fn attention_prefill_full_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    attention_steps_case(be, r, attn_spec(None, 6, 2, 20, false), 37, 21)
}

/// A window of 5 inside every 16-row block, with sinks.
pub(super) fn attention_prefill_sliding_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    attention_steps_case(be, r, attn_spec(Some(5), 4, 1, 36, true), 37, 21)
}

/// The largest head the tiled kernel holds, and one past it (the per-row kernel).
pub(super) fn attention_prefill_wide_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let mut out = attention_steps_case(be, r, attn_spec(Some(9), 2, 1, 128, false), 19, 12)?;
    out.extend(attention_steps_case(be, r, attn_spec(None, 2, 2, 130, false), 19, 12)?);
    Ok(out)
}

pub(super) fn attention_full_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    attention_case(be, r, attn_spec(None, 6, 2, 20, false))
}

pub(super) fn attention_sliding_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    attention_case(be, r, attn_spec(Some(5), 4, 1, 36, true))
}

/// Decode steps long enough for the wgpu backend's split attention: each sequence `s` is prefilled with
/// `lens[s]` tokens (in chunks a step may hold), then one step decodes a token of every sequence. Returns the
/// decode step's attention.
pub(super) fn attention_decode_case<B: Backend>(
    be: &mut B,
    r: &mut Rng,
    spec: AttnSpec,
    lens: &[usize],
) -> Result<Vec<f32>> {
    let model = one_layer_spec(spec.clone(), FfnSpec::Dense { intermediate: 1 }, 1);
    let mut cache = be.new_cache(&model, lens.len(), None)?;
    let sinks = if spec.sinks {
        Some(be.upload_vector(r.tensor(&[spec.n_heads], 2.0))?)
    } else {
        None
    };
    let mut steps = Vec::new();
    for (seq, &len) in lens.iter().enumerate() {
        for start in (0..len).step_by(MAX_STEP_TOKENS) {
            let end = len.min(start + MAX_STEP_TOKENS);
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

pub(super) fn attention_split_full_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    attention_decode_case(be, r, attn_spec(None, 6, 2, 22, false), &[700])
}

/// The sliding layer's ring holds window + 512 positions, so at 900 it has wrapped.
pub(super) fn attention_split_sliding_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    attention_decode_case(be, r, attn_spec(Some(300), 4, 1, 36, true), &[900])
}

/// Rows of one step in different chunk counts; the row at 40 leaves all but its first chunk empty.
pub(super) fn attention_split_seqs_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    attention_decode_case(be, r, attn_spec(None, 4, 2, 18, true), &[777, 301, 40])
}

/// Three sequences grow 20 positions a step, so their KV pages interleave in the pool; then sequence 1 is
/// reset and refilled from freed pages while the others decode. Returns every step's attention.
pub(super) fn attention_paged_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
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
            cache.kv_mut().reset(1);
        }
        let qkv = random_qkv(r, &spec, step.len());
        out.extend(attention_step(be, &mut cache, &spec, &step, qkv, None)?);
    }
    Ok(out)
}
