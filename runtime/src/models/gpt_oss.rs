//! GPT-OSS (`gpt_oss`): alternating sliding/full attention (`layer_types`) with per-head attention sinks and
//! biases on all projections; yarn RoPE; a router with bias whose top-k raw logits are softmaxed; experts
//! with biases and the clamped SwiGLU; expert weights in MXFP4 or float.
//!
//! Tensors under `model.layers.{l}.mlp`: `router.{weight [E, H], bias [E]}`; float experts as transformers
//! holds them, transposed and with gate/up interleaved: `experts.gate_up_proj` (E, H, 2I) where column 2j
//! is gate j and 2j+1 is up j, `experts.gate_up_proj_bias` (E, 2I), `experts.down_proj` (E, I, H),
//! `experts.down_proj_bias` (E, H); or MXFP4 `experts.gate_up_proj_{blocks,scales}` decoding to
//! (E, 2I, H) with interleaved rows, and `experts.down_proj_{blocks,scales}` decoding to (E, H, I).

use super::{llama_layer, sliding_windows, Dims, Family, EXPERT_COUNT_KEYS};
use crate::backend::{Host, MoeExperts};
use crate::checkpoint::{Checkpoint, HostTensor};
use crate::error::Result;
use crate::hf_config::HfConfig;
use crate::model::{Layer, Moe};
use crate::spec::{
    ExpertActivation, FfnSpec, LayerSpec, ModelSpec, MoeSpec, RouterOrder, RouterSpec, Scoring, Selection,
};

pub struct GptOss;

impl Family for GptOss {
    fn spec(&self, cfg: &HfConfig) -> Result<ModelSpec> {
        let d = Dims {
            default_rope_theta: 150000.0,
            ..Dims::from_config(cfg)?
        };
        // Without `layer_types`, transformers alternates starting with a sliding layer.
        let windows = sliding_windows(cfg, d.n_layers, |l| l % 2 == 0)?;
        let bias = cfg.bool_or("attention_bias", true)?;
        let k = match cfg.opt_usize("num_experts_per_tok")? {
            Some(k) => k,
            None => cfg.usize("experts_per_token")?,
        };
        let layers = (0..d.n_layers)
            .map(|l| {
                let mut attn = d.attention(cfg, l, windows[l])?;
                attn.qkv_bias = bias;
                attn.o_bias = bias;
                attn.sinks = true;
                let ffn = FfnSpec::Moe(MoeSpec {
                    n_experts: cfg.usize_any(EXPERT_COUNT_KEYS)?,
                    expert_intermediate: cfg.usize("intermediate_size")?,
                    router: RouterSpec {
                        scoring: Scoring::Softmax,
                        order: RouterOrder::SelectThenScore,
                        selection: Selection::TopK { k },
                        renormalize: false,
                        bias: true,
                    },
                    activation: ExpertActivation::ClampedSwiGlu {
                        alpha: 1.702,
                        limit: cfg.f64_or("swiglu_limit", 7.0)? as f32,
                    },
                    expert_bias: true,
                    shared: None,
                });
                Ok(LayerSpec { attn, ffn })
            })
            .collect::<Result<_>>()?;
        d.model_spec(cfg, 1e-5, layers)
    }

    fn layer(&self, ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Layer<Host>> {
        let p = format!("model.layers.{l}.mlp");
        let h = spec.hidden_size;
        llama_layer(ck, spec, l, |m| {
            let (e, i) = (m.n_experts, m.expert_intermediate);
            let x = format!("{p}.experts");
            // Both forms end as [E, 2I, H] (rows interleaved gate/up) and [E, H, I]: out x in.
            let (gate_up, down) = if ck.has(&format!("{x}.gate_up_proj_blocks")) {
                let blocks = |w: &str| format!("{x}.{w}_proj_blocks");
                let scales = |w: &str| format!("{x}.{w}_proj_scales");
                (
                    ck.mxfp4(&blocks("gate_up"), &scales("gate_up"), e, 2 * i, h)?,
                    ck.mxfp4(&blocks("down"), &scales("down"), e, h, i)?,
                )
            } else {
                (
                    ck.tensor(&format!("{x}.gate_up_proj"), &[e, h, 2 * i])?
                        .transpose_last2()?,
                    ck.tensor(&format!("{x}.down_proj"), &[e, i, h])?.transpose_last2()?,
                )
            };
            let gate_up_bias = ck.f32(&format!("{x}.gate_up_proj_bias"), &[e, 2 * i])?;
            let experts = MoeExperts {
                router: ck.tensor(&format!("{p}.router.weight"), &[e, h])?,
                router_bias: Some(ck.f32(&format!("{p}.router.bias"), &[e])?),
                gate_up: gate_up.select_rows(&deinterleaved(e, i))?.reshape(vec![e, 2, i, h])?,
                down,
                gate_up_bias: Some(deinterleave_bias(&gate_up_bias, e, i)),
                down_bias: Some(ck.f32(&format!("{x}.down_proj_bias"), &[e, h])?),
            };
            Ok(Moe {
                experts,
                shared: None,
                shared_gate: None,
            })
        })
    }
}

/// The row order that takes [E, 2I, ...] with interleaved rows (even = gate, odd = up) to each expert's I
/// gate rows followed by its I up rows.
fn deinterleaved(e: usize, i: usize) -> Vec<usize> {
    (0..e)
        .flat_map(|x| (0..2).flat_map(move |half| (0..i).map(move |j| x * 2 * i + 2 * j + half)))
        .collect()
}

/// The gate/up biases [E, 2I], interleaved, as [E, 2, I]: each expert's gate biases, then its up biases.
fn deinterleave_bias(t: &HostTensor, e: usize, i: usize) -> HostTensor {
    let data = deinterleaved(e, i).into_iter().map(|r| t.data[r]).collect();
    HostTensor::new(vec![e, 2, i], data)
}
