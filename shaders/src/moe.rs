//! The routed experts on the device. The router kernel writes each token's expert ids, weights and count to
//! buffers the expert kernels read directly, so expert choices never leave the GPU. Decode runs each
//! (token, slot) on its expert (`moe_gate_up.wgsl`, `moe_down.wgsl`); prefill groups the assignments by
//! expert on the GPU (`moe_group.wgsl`), runs one tiled GEMM per expert for gate/up and for down
//! (`moe_experts_tiled.wgsl`) and sums the weighted outputs per token (`moe_combine.wgsl`). Grids are sized
//! for the worst routing, so nothing is read back.

use std::sync::Arc;

use volt_runtime::backend::{LayerRouting, MoeExperts};
use volt_runtime::spec::{ExpertActivation, MoeSpec, RouterOrder, Scoring, Selection};
use volt_runtime::Result;

use crate::backend::WgpuBackend;
use crate::buffers::{GpuBuffer, GpuTensor, GpuVector};
use crate::kernels::{groups_1d, Op};
use crate::params::{
    MoeCombineParams, MoeDownParams, MoeExpertsTiledParams, MoeGateUpParams, MoeGroupParams, RouterParams,
};
use crate::weights::GpuMatrix;

/// Steps from this many tokens run the routed experts grouped by expert. On lavapipe (16 experts, 4 per
/// token) the grouped path overtakes the per-(token, slot) one near 24 tokens.
const GROUPED_MOE_MIN_TOKENS: usize = 24;

/// The router's outputs on the device, `max_k` slots per token: expert ids, their weights, and how many.
struct Routed {
    chosen: Arc<GpuBuffer>,
    weights: Arc<GpuBuffer>,
    counts: Arc<GpuBuffer>,
    max_k: usize,
}

/// Routing buffers of one MoE layer kept for the trace.
pub(crate) struct TracedRouting {
    layer: usize,
    n_experts: usize,
    max_experts: usize,
    probs: GpuTensor,
    chosen: GpuTensor,
    weights: GpuTensor,
    counts: GpuTensor,
}

/// The expert activation as the kernels take it: (kind, alpha, limit), kind 0 SwiGLU, 1 GPT-OSS clamped.
#[derive(Clone, Copy)]
struct Activation {
    kind: u32,
    alpha: f32,
    limit: f32,
}

impl Activation {
    fn of(spec: &MoeSpec) -> Activation {
        match spec.activation {
            ExpertActivation::SwiGlu => Activation {
                kind: 0,
                alpha: 0.0,
                limit: 0.0,
            },
            ExpertActivation::ClampedSwiGlu { alpha, limit } => Activation { kind: 1, alpha, limit },
        }
    }
}

/// The most 64-row tiles per-expert lists of `assignments` rows can need: every list may end in a partial one.
fn max_expert_tiles(assignments: usize, experts: usize) -> usize {
    assignments.div_ceil(64) + experts.min(assignments)
}

impl WgpuBackend {
    pub(crate) fn record_moe(
        &mut self,
        x: &GpuTensor,
        w: &MoeExperts<Self>,
        spec: &MoeSpec,
        layer: usize,
    ) -> Result<GpuTensor> {
        let (t, e) = (x.rows, spec.n_experts);
        let logits = self.record_linear(x, &w.router, w.router_bias.as_ref())?;
        let r = &spec.router;
        let (max_k, min_k, top_p, p) = match (r.order, r.selection) {
            (
                RouterOrder::ScoreThenSelect,
                Selection::TopP {
                    p,
                    min_experts,
                    max_experts,
                },
            ) => (max_experts, min_experts, 1, p),
            (_, sel) => (sel.max_experts(), sel.max_experts(), 0, 1.0),
        };
        let (probs, chosen, weights, counts) = (
            self.tensor(t, e),
            self.tensor(t, max_k),
            self.tensor(t, max_k),
            self.tensor(t, 1),
        );
        let params = RouterParams {
            rows: t as u32,
            n_experts: e as u32,
            max_experts: max_k as u32,
            min_experts: min_k as u32,
            scoring: (r.scoring == Scoring::Sigmoid) as u32,
            order: (r.order == RouterOrder::SelectThenScore) as u32,
            top_p,
            renormalize: r.renormalize as u32,
            p_threshold: p,
            ..Default::default()
        };
        let bufs = [logits.buf(), probs.buf(), chosen.buf(), weights.buf(), counts.buf()];
        self.dispatch(Op::Router, None, &params, &bufs, [t.div_ceil(64) as u32, 1, 1])?;
        let routed = Routed {
            chosen: chosen.buf().clone(),
            weights: weights.buf().clone(),
            counts: counts.buf().clone(),
            max_k,
        };
        // Decode reads each chosen expert once per token; prefill groups the tokens by expert so each
        // expert's weights are read once per 64 of its tokens.
        let out = if t >= GROUPED_MOE_MIN_TOKENS {
            self.moe_grouped(x, w, spec, &routed)?
        } else {
            self.moe_per_token(x, w, spec, &routed)?
        };
        if let Some(trace) = self.routing.as_mut() {
            trace.push(TracedRouting {
                layer,
                n_experts: e,
                max_experts: max_k,
                probs,
                chosen,
                weights,
                counts,
            });
        }
        Ok(out)
    }

    /// The routed experts one (token, slot) at a time: each workgroup reads its expert's rows itself.
    fn moe_per_token(&mut self, x: &GpuTensor, w: &MoeExperts<Self>, spec: &MoeSpec, r: &Routed) -> Result<GpuTensor> {
        let (t, h, i, e, max_k) = (x.rows, x.cols, spec.expert_intermediate, spec.n_experts, r.max_k);
        let act = self.tensor(t * max_k, i);
        let activation = Activation::of(spec);
        let gb = self.bias_or_dummy(w.gate_up_bias.as_ref());
        let gate_up_rows = w.gate_up.rows / e;
        for part in &w.gate_up.parts {
            let params = MoeGateUpParams {
                hidden: h as u32,
                inter: i as u32,
                max_experts: max_k as u32,
                activation: activation.kind,
                alpha: activation.alpha,
                limit: activation.limit,
                has_bias: w.gate_up_bias.is_some() as u32,
                first_expert: (part.first_row / gate_up_rows) as u32,
                part_experts: (part.rows / gate_up_rows) as u32,
                ..Default::default()
            };
            let bufs = [&part.buf, x.buf(), &r.chosen, &r.counts, &gb, act.buf()];
            let groups = [i.div_ceil(4) as u32, max_k as u32, t as u32];
            self.dispatch(Op::MoeGateUp, Some(w.gate_up.format), &params, &bufs, groups)?;
        }

        let out = self.tensor(t, h);
        let db = self.bias_or_dummy(w.down_bias.as_ref());
        let down_rows = w.down.rows / e;
        for (n, part) in w.down.parts.iter().enumerate() {
            let params = MoeDownParams {
                hidden: h as u32,
                inter: i as u32,
                max_experts: max_k as u32,
                has_bias: w.down_bias.is_some() as u32,
                first_expert: (part.first_row / down_rows) as u32,
                part_experts: (part.rows / down_rows) as u32,
                accumulate: (n > 0) as u32,
                ..Default::default()
            };
            let bufs = [&part.buf, act.buf(), &r.chosen, &r.weights, &r.counts, &db, out.buf()];
            let groups = [h.div_ceil(4) as u32, t as u32, 1];
            self.dispatch(Op::MoeDown, Some(w.down.format), &params, &bufs, groups)?;
        }
        Ok(out)
    }

    /// The routed experts grouped by expert (prefill): lists of each expert's assignments built on the GPU,
    /// a tiled GEMM per expert for gate/up and for down, then the weighted sum per token.
    fn moe_grouped(&mut self, x: &GpuTensor, w: &MoeExperts<Self>, spec: &MoeSpec, r: &Routed) -> Result<GpuTensor> {
        let (t, h, i, e, max_k) = (x.rows, x.cols, spec.expert_intermediate, spec.n_experts, r.max_k);
        let assignments = t * max_k;
        let max_tiles = max_expert_tiles(assignments, e);
        let groups = self.tensor(e + 1 + assignments + 2 * max_tiles, 1);
        let params = MoeGroupParams {
            tokens: t as u32,
            max_experts: max_k as u32,
            n_experts: e as u32,
            max_tiles: max_tiles as u32,
        };
        self.dispatch(
            Op::MoeGroup,
            None,
            &params,
            &[&r.chosen, &r.counts, groups.buf()],
            [1, 1, 1],
        )?;
        let act = self.tensor(assignments, i);
        let shape = [t, max_k, e];
        let activation = Some(Activation::of(spec));
        self.experts_tiled(&w.gate_up, w.gate_up_bias.as_ref(), x, &groups, &act, shape, activation)?;
        let expert_out = self.tensor(assignments, h);
        self.experts_tiled(&w.down, w.down_bias.as_ref(), &act, &groups, &expert_out, shape, None)?;
        let out = self.tensor(t, h);
        let params = MoeCombineParams {
            tokens: t as u32,
            hidden: h as u32,
            max_experts: max_k as u32,
            _pad: 0,
        };
        let bufs = [expert_out.buf(), &r.weights, &r.counts, out.buf()];
        self.dispatch(Op::MoeCombine, None, &params, &bufs, groups_1d(t * h))?;
        Ok(out)
    }

    /// One GEMM of `moe_experts_tiled.wgsl` per weight part: gate/up with its activation when `activation`
    /// is given, else down. `shape` is (tokens, slots per token, experts).
    #[allow(clippy::too_many_arguments)]
    fn experts_tiled(
        &mut self,
        w: &GpuMatrix,
        bias: Option<&GpuVector>,
        input: &GpuTensor,
        groups: &GpuTensor,
        out: &GpuTensor,
        [t, max_k, e]: [usize; 3],
        activation: Option<Activation>,
    ) -> Result<()> {
        let rows_per_expert = w.rows / e;
        let act = activation.unwrap_or(Activation {
            kind: 0,
            alpha: 0.0,
            limit: 0.0,
        });
        let b = self.bias_or_dummy(bias);
        for part in &w.parts {
            let params = MoeExpertsTiledParams {
                tokens: t as u32,
                max_experts: max_k as u32,
                n_experts: e as u32,
                k: w.cols as u32,
                outputs: rows_per_expert as u32,
                gated: activation.is_some() as u32,
                activation: act.kind,
                alpha: act.alpha,
                limit: act.limit,
                has_bias: bias.is_some() as u32,
                first_expert: (part.first_row / rows_per_expert) as u32,
                part_experts: (part.rows / rows_per_expert) as u32,
            };
            let grid = [
                rows_per_expert.div_ceil(64) as u32,
                max_expert_tiles(t * max_k, e) as u32,
                1,
            ];
            let bufs = [&part.buf, input.buf(), groups.buf(), &b, out.buf()];
            self.dispatch(Op::MoeExpertsTiled, Some(w.format), &params, &bufs, grid)?;
        }
        Ok(())
    }

    /// The routing recorded since the last call, read back.
    pub(crate) fn read_routing(&mut self) -> Result<Vec<LayerRouting>> {
        let traced = self.routing.as_mut().map(std::mem::take).unwrap_or_default();
        let mut out = Vec::with_capacity(traced.len());
        for r in traced {
            let probs = self.read_f32(&r.probs)?;
            let chosen = self.read_u32(&r.chosen)?;
            let weights = self.read_f32(&r.weights)?;
            let counts = self.read_u32(&r.counts)?;
            let picks = counts
                .iter()
                .enumerate()
                .map(|(t, &n)| {
                    (0..n as usize)
                        .map(|s| (chosen[t * r.max_experts + s] as usize, weights[t * r.max_experts + s]))
                        .collect()
                })
                .collect();
            out.push(LayerRouting {
                layer: r.layer,
                n_experts: r.n_experts,
                probs,
                chosen: picks,
            });
        }
        Ok(out)
    }
}
