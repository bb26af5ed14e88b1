//! Cases of the dense ops: linear layers (decode and tiled prefill shapes), embedding, norms, RoPE, the
//! elementwise ops, row selection and token choice.

use crate::backend::Backend;
use crate::dtype::Precision;
use crate::error::Result;
use crate::rope::RopeTable;
use crate::sampler::{Pick, Sampler, SamplingParams};
use crate::spec::{RopeScaling, RopeSpec};
use crate::step::Step;
use crate::tensor::StoredTensor;

use super::Rng;

pub(super) fn linear_case<B: Backend>(
    be: &mut B,
    r: &mut Rng,
    t: usize,
    k: usize,
    out: usize,
    bias: bool,
) -> Result<Vec<f32>> {
    let w = be.upload_matrix(r.matrix(&[out, k], 0.5), Precision::Storage)?;
    let bias = if bias {
        Some(be.upload_vector(r.tensor(&[out], 1.0))?)
    } else {
        None
    };
    let x = input(be, r, t, k)?;
    let y = be.linear(&x, &w, bias.as_ref())?;
    be.read(&y)
}

pub(super) fn matmul_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    linear_case(be, r, 7, 133, 67, true)
}

pub(super) fn matvec_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    linear_case(be, r, 1, 257, 131, false)
}

pub(super) fn matmul_prefill_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    linear_case(be, r, 37, 131, 75, true)
}

pub(super) fn matmul_prefill_tiles_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    linear_case(be, r, 133, 70, 129, false)
}

/// Token choice (`Backend::pick`) against `Pick::choose`: ids as f32, so any differing choice fails. Rows:
/// random logits, a tie at the maximum, NaN among them, and all -inf but NaN. Settings cover greedy with and
/// without a repetition penalty, top-k within and beyond the kernel's 1024 sorted candidates, top-p and
/// min-p, and no filter at all over a vocabulary larger than 1024.
pub(super) fn pick_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let vocab = 1500;
    let mut rows = r.tensor(&[4, vocab], 6.0).data;
    rows[vocab + 30] = 50.0;
    rows[vocab + 700] = 50.0;
    rows[2 * vocab + 5] = f32::NAN;
    rows[3 * vocab..].fill(f32::NEG_INFINITY);
    rows[3 * vocab + 2] = f32::NAN;
    let table = be.upload_matrix(StoredTensor::from_f32(vec![4, vocab], &rows), Precision::Full)?;
    be.begin_step(&Step::single(0, &[0, 1, 2, 3], 0))?;
    let logits = be.embed(&table)?;
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
pub(super) fn input<B: Backend>(be: &mut B, r: &mut Rng, rows: usize, cols: usize) -> Result<B::Tensor> {
    let table = be.upload_matrix(r.matrix(&[rows, cols], 1.0), Precision::Full)?;
    let tokens: Vec<u32> = (0..rows as u32).collect();
    be.begin_step(&Step::single(0, &tokens, 0))?;
    be.embed(&table)
}

pub(super) fn embed_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let table = be.upload_matrix(r.matrix(&[37, 45], 1.0), Precision::Storage)?;
    be.begin_step(&Step::single(0, &[36, 0, 17, 17, 5], 0))?;
    let x = be.embed(&table)?;
    be.read(&x)
}

pub(super) fn rms_norm_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let w = be.upload_vector(r.tensor(&[70], 1.0))?;
    let x = input(be, r, 3, 70)?;
    let y = be.rms_norm(&x, &w, 1e-5, 70)?;
    be.read(&y)
}

pub(super) fn head_norm_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let w = be.upload_vector(r.tensor(&[14], 1.0))?;
    let x = input(be, r, 3, 70)?;
    let y = be.rms_norm(&x, &w, 1e-5, 14)?;
    be.read(&y)
}

pub(super) fn rope_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
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
    let table = be.upload_matrix(r.matrix(&[4, 54], 1.0), Precision::Full)?;
    // Positions far apart, one past 1000, to exercise the angle reduction.
    let step = Step {
        tokens: vec![0, 1, 2, 3],
        positions: vec![0, 7, 130, 1031],
        seqs: vec![0, 1, 2, 3],
    };
    be.begin_step(&step)?;
    let mut x = be.embed(&table)?;
    be.apply_rope(&mut x, &rope, 18)?;
    be.read(&x)
}

pub(super) fn elementwise_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let a = be.upload_matrix(r.matrix(&[3, 77], 3.0), Precision::Full)?;
    let b = be.upload_matrix(r.matrix(&[3, 77], 3.0), Precision::Full)?;
    let g = be.upload_matrix(r.matrix(&[3, 1], 3.0), Precision::Full)?;
    be.begin_step(&Step::single(0, &[0, 1, 2], 0))?;
    let mut x = be.embed(&a)?;
    let y = be.embed(&b)?;
    be.add_assign(&mut x, &y)?;
    be.swiglu(&mut x, &y)?;
    be.clamp(&mut x, 1.5)?;
    let gate = be.embed(&g)?;
    be.sigmoid_gate(&mut x, &gate)?;
    be.read(&x)
}

pub(super) fn select_rows_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    let x = input(be, r, 6, 29)?;
    let y = be.select_rows(&x, &[5, 0, 3, 3])?;
    be.read(&y)
}
