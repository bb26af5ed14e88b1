//! Cases of the routed experts: top-k and top-p routing, softmax and sigmoid scoring, GPT-OSS's
//! select-then-score router with biases and clamped activation, in decode and grouped prefill shapes.

use crate::backend::Backend;
use crate::backend::MoeExperts;
use crate::dtype::Precision;
use crate::error::Result;
use crate::spec::{ExpertActivation, MoeSpec, RouterOrder, RouterSpec, Scoring, Selection};

use super::ops::input;
use super::Rng;

pub(super) fn moe_case<B: Backend>(
    be: &mut B,
    r: &mut Rng,
    spec: MoeSpec,
    hidden: usize,
    tokens: usize,
) -> Result<Vec<f32>> {
    let (e, i) = (spec.n_experts, spec.expert_intermediate);
    let experts = MoeExperts::<B> {
        router: be.upload_matrix(r.matrix(&[e, hidden], 1.5), Precision::Full)?,
        router_bias: if spec.router.bias {
            Some(be.upload_vector(r.tensor(&[e], 1.0))?)
        } else {
            None
        },
        gate_up: be.upload_experts(r.matrix(&[e, 2, i, hidden], 0.4))?,
        down: be.upload_experts(r.matrix(&[e, hidden, i], 0.4))?,
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
    let y = be.moe(&x, &experts, &spec, 0)?;
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

pub(super) fn moe_spec(
    e: usize,
    i: usize,
    router: RouterSpec,
    activation: ExpertActivation,
    expert_bias: bool,
) -> MoeSpec {
    MoeSpec {
        n_experts: e,
        expert_intermediate: i,
        router,
        activation,
        expert_bias,
        shared: None,
    }
}

pub(super) fn router(
    scoring: Scoring,
    order: RouterOrder,
    selection: Selection,
    renormalize: bool,
    bias: bool,
) -> RouterSpec {
    RouterSpec {
        scoring,
        order,
        selection,
        renormalize,
        bias,
    }
}

pub(super) fn moe_topk<B: Backend>(be: &mut B, r: &mut Rng, tokens: usize) -> Result<Vec<f32>> {
    let rt = router(
        Scoring::Softmax,
        RouterOrder::ScoreThenSelect,
        Selection::TopK { k: 3 },
        true,
        false,
    );
    moe_case(be, r, moe_spec(7, 19, rt, ExpertActivation::SwiGlu, false), 45, tokens)
}

pub(super) fn moe_topp<B: Backend>(be: &mut B, r: &mut Rng, tokens: usize) -> Result<Vec<f32>> {
    let sel = Selection::TopP {
        p: 0.55,
        min_experts: 1,
        max_experts: 4,
    };
    let rt = router(Scoring::Softmax, RouterOrder::ScoreThenSelect, sel, false, false);
    moe_case(be, r, moe_spec(9, 21, rt, ExpertActivation::SwiGlu, false), 33, tokens)
}

pub(super) fn moe_gptoss<B: Backend>(be: &mut B, r: &mut Rng, tokens: usize) -> Result<Vec<f32>> {
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

pub(super) fn moe_sigmoid<B: Backend>(be: &mut B, r: &mut Rng, tokens: usize) -> Result<Vec<f32>> {
    let rt = router(
        Scoring::Sigmoid,
        RouterOrder::ScoreThenSelect,
        Selection::TopK { k: 2 },
        true,
        false,
    );
    moe_case(be, r, moe_spec(5, 10, rt, ExpertActivation::SwiGlu, false), 40, tokens)
}

pub(super) fn moe_topk_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_topk(be, r, 9)
}

pub(super) fn moe_topk_prefill_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_topk(be, r, 41)
}

pub(super) fn moe_topp_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_topp(be, r, 9)
}

pub(super) fn moe_topp_prefill_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_topp(be, r, 41)
}

pub(super) fn moe_gptoss_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_gptoss(be, r, 9)
}

pub(super) fn moe_gptoss_prefill_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_gptoss(be, r, 41)
}

pub(super) fn moe_sigmoid_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_sigmoid(be, r, 9)
}

pub(super) fn moe_sigmoid_prefill_case<B: Backend>(be: &mut B, r: &mut Rng) -> Result<Vec<f32>> {
    moe_sigmoid(be, r, 41)
}
