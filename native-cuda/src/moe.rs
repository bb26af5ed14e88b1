//! MoE layers on CUDA: the router and the expert choice on the device (`moe_route`), then the experts either
//! per assignment in the masked fixed-capacity layout (decode, and every non-FP8 dtype) or, for FP8 prefill,
//! as grouped GEMMs over the assignments sorted and padded per expert (`moe_align`); then the activation and
//! the weighted combine back into token rows. The routing trace, when on, copies the choices back.

use cudarc::driver::CudaSlice;
use volt_runtime::backend::{LayerRouting, MoeExperts, MAX_EXPERTS};
use volt_runtime::dtype::WeightDtype;
use volt_runtime::spec::{ExpertActivation, MoeSpec, RouterOrder, Scoring, Selection};
use volt_runtime::{bail, Result};

use crate::backend::{driver_error, CudaBackend, CudaTensor};
use crate::kernels::{MOE_ACTIVATION, MOE_ALIGN, MOE_COMBINE, MOE_ROUTE};
use crate::params::{MoeActivationArgs, MoeAlignArgs, MoeCombineArgs, MoeRouteArgs};
use crate::weights::{GEMV_ROWS, TILE};

/// The expert activation as `moe_activation` takes it: kind (0 SwiGLU, 1 clamped SwiGLU), alpha, limit.
struct Activation {
    kind: i32,
    alpha: f32,
    limit: f32,
}

/// The router's choice: per token, `k` experts (-1: an unused slot) and their weights.
struct Routing {
    ids: CudaSlice<i32>,
    weights: CudaSlice<f32>,
    k: usize,
}

/// Which expert output row holds each assignment, for the activation and the combine.
enum Layout<'a> {
    /// Row = assignment (token * k + j), its expert in `Routing::ids`.
    Assignments,
    /// Rows sorted by expert: `tile_expert` per TILE rows, `sorted_of` the row of each assignment.
    Sorted {
        tile_expert: &'a CudaSlice<i32>,
        sorted_of: &'a CudaSlice<i32>,
    },
}

impl CudaBackend {
    pub(crate) fn route_experts(
        &mut self,
        x: &CudaTensor,
        w: &MoeExperts<Self>,
        spec: &MoeSpec,
        layer: usize,
    ) -> Result<CudaTensor> {
        let (rows, h, inter, n) = (x.rows, x.cols, spec.expert_intermediate, spec.n_experts);
        if n > MAX_EXPERTS {
            bail!("CUDA MoE supports at most {MAX_EXPERTS} experts, the model has {n}");
        }
        let k = spec.router.selection.max_experts();
        let logits = self.matmul(x, &w.router, w.router_bias.as_ref())?;
        let probs = self.alloc::<f32>(rows * n)?;
        let ids = self.alloc::<i32>(rows * k)?;
        let weights = self.alloc::<f32>(rows * k)?;
        let (top_p, min_k) = match spec.router.selection {
            Selection::TopK { .. } => (0.0, k),
            Selection::TopP { p, min_experts, .. } => (p, min_experts),
        };
        let args = MoeRouteArgs {
            logits: self.ptr(&logits.buf),
            probs: self.ptr(&probs),
            ids: self.ptr(&ids),
            weights: self.ptr(&weights),
            rows: rows as i32,
            n: n as i32,
            max_k: k as i32,
            scoring: (spec.router.scoring == Scoring::Sigmoid) as i32,
            order: (spec.router.order == RouterOrder::SelectThenScore) as i32,
            top_p,
            min_k: min_k as i32,
            renormalize: spec.router.renormalize as i32,
        };
        self.launch(MOE_ROUTE, (rows.div_ceil(64), 1), 64, &args)?;
        let routing = Routing { ids, weights, k };
        let activation = match spec.activation {
            ExpertActivation::SwiGlu => Activation {
                kind: 0,
                alpha: 0.0,
                limit: 0.0,
            },
            ExpertActivation::ClampedSwiGlu { alpha, limit } => Activation { kind: 1, alpha, limit },
        };
        let assignments = rows * k;
        let out = if w.gate_up.dtype == WeightDtype::Fp8 && rows > GEMV_ROWS {
            // Prefill: assignments sorted by expert, each expert's run padded to whole GEMM tiles.
            let max_rows = assignments.div_ceil(TILE) * TILE + n.min(assignments) * TILE;
            let sorted_src = self.alloc::<i32>(max_rows)?;
            let sorted_of = self.alloc::<i32>(assignments)?;
            let tile_expert = self.alloc::<i32>(max_rows / TILE)?;
            let used_tiles = self.alloc::<i32>(1)?;
            let args = MoeAlignArgs {
                ids: self.ptr(&routing.ids),
                sorted_src: self.ptr(&sorted_src),
                sorted_of: self.ptr(&sorted_of),
                tile_expert: self.ptr(&tile_expert),
                used_tiles: self.ptr(&used_tiles),
                assignments: assignments as i32,
                max_k: k as i32,
                n_experts: n as i32,
                max_rows: max_rows as i32,
            };
            self.launch(MOE_ALIGN, (1, 1), 256, &args)?;
            let layout = Layout::Sorted {
                tile_expert: &tile_expert,
                sorted_of: &sorted_of,
            };
            let xq = self.quantize(x, Some(&sorted_src), max_rows)?;
            let tiles = Some((&tile_expert, &used_tiles));
            let gate_up = self.gemm_fp8(&xq, max_rows, &w.gate_up, None, tiles)?;
            let act = self.activation(&gate_up, w, &routing, &layout, inter, &activation)?;
            let aq = self.quantize(&act, None, max_rows)?;
            let down = self.gemm_fp8(&aq, max_rows, &w.down, None, tiles)?;
            self.combine(&down, w, &routing, &layout, rows, h)?
        } else {
            let layout = Layout::Assignments;
            let gate_up = self.experts_gemv(x, k, &routing.ids, assignments, &w.gate_up)?;
            let act = self.activation(&gate_up, w, &routing, &layout, inter, &activation)?;
            let down = self.experts_gemv(&act, 1, &routing.ids, assignments, &w.down)?;
            self.combine(&down, w, &routing, &layout, rows, h)?
        };
        if let Some(trace) = self.routing.as_mut() {
            let probs = self.stream.clone_dtoh(&probs).map_err(driver_error)?;
            let ids = self.stream.clone_dtoh(&routing.ids).map_err(driver_error)?;
            let weights = self.stream.clone_dtoh(&routing.weights).map_err(driver_error)?;
            let chosen = ids
                .chunks(k)
                .zip(weights.chunks(k))
                .map(|(ids, ws)| {
                    ids.iter()
                        .zip(ws)
                        .filter(|(e, _)| **e >= 0)
                        .map(|(&e, &w)| (e as usize, w))
                        .collect()
                })
                .collect();
            trace.push(LayerRouting {
                layer,
                n_experts: n,
                probs,
                chosen,
            });
        }
        Ok(out)
    }

    /// The activation of each gate/up row ([rows, 2 * inter] -> [rows, inter]) with its expert's bias.
    fn activation(
        &self,
        gate_up: &CudaTensor,
        w: &MoeExperts<Self>,
        routing: &Routing,
        layout: &Layout,
        inter: usize,
        activation: &Activation,
    ) -> Result<CudaTensor> {
        let act = self.alloc::<f32>(gate_up.rows * inter)?;
        let (expert_of_row, tile_expert) = match layout {
            Layout::Assignments => (Some(&routing.ids), None),
            Layout::Sorted { tile_expert, .. } => (None, Some(*tile_expert)),
        };
        let args = MoeActivationArgs {
            gate_up: self.ptr(&gate_up.buf),
            bias: self.opt_ptr(w.gate_up_bias.as_ref().map(|b| &b.data)),
            expert_of_row: self.opt_ptr(expert_of_row),
            tile_expert: self.opt_ptr(tile_expert),
            act: self.ptr(&act),
            rows: gate_up.rows as i32,
            inter: inter as i32,
            kind: activation.kind,
            alpha: activation.alpha,
            limit: activation.limit,
            _pad: 0,
        };
        self.launch_1d(MOE_ACTIVATION, gate_up.rows * inter, &args)?;
        Ok(CudaTensor {
            rows: gate_up.rows,
            cols: inter,
            buf: act,
        })
    }

    /// Token rows [rows, hidden]: the routing-weighted sum of each token's expert rows of `down`, each with
    /// its expert's bias.
    fn combine(
        &self,
        down: &CudaTensor,
        w: &MoeExperts<Self>,
        routing: &Routing,
        layout: &Layout,
        rows: usize,
        hidden: usize,
    ) -> Result<CudaTensor> {
        let out = self.alloc::<f32>(rows * hidden)?;
        let sorted_of = match layout {
            Layout::Assignments => None,
            Layout::Sorted { sorted_of, .. } => Some(*sorted_of),
        };
        let args = MoeCombineArgs {
            y: self.ptr(&down.buf),
            ids: self.ptr(&routing.ids),
            weights: self.ptr(&routing.weights),
            sorted_of: self.opt_ptr(sorted_of),
            down_bias: self.opt_ptr(w.down_bias.as_ref().map(|b| &b.data)),
            out: self.ptr(&out),
            rows: rows as i32,
            max_k: routing.k as i32,
            hidden: hidden as i32,
            _pad: 0,
        };
        self.launch_1d(MOE_COMBINE, rows * hidden, &args)?;
        Ok(CudaTensor {
            rows,
            cols: hidden,
            buf: out,
        })
    }
}
