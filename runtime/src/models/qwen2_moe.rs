//! Qwen2-MoE (`qwen2_moe`, Qwen1.5-MoE): softmax top-k routing (renormalised iff `norm_topk_prob`), one
//! shared expert scaled by sigmoid(`shared_expert_gate`), q/k/v biases, dense layers from
//! `mlp_only_layers` / `decoder_sparse_step`.
//!
//! Tensors under `model.layers.{l}.mlp`: `gate.weight` [E, H]; `experts.{e}.{gate,up,down}_proj.weight`
//! (or fused `experts.gate_up_proj`); `shared_expert.{gate,up,down}_proj.weight`; `shared_expert_gate.weight` [1, H].

use super::{qwen_moe_layer, qwen_moe_layers, sliding_windows, softmax_topk_moe, Dims, Family};
use crate::backend::Host;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::hf_config::HfConfig;
use crate::model::Layer;
use crate::spec::{FfnSpec, LayerSpec, ModelSpec, SharedExperts};

pub struct Qwen2Moe;

impl Family for Qwen2Moe {
    fn spec(&self, cfg: &HfConfig) -> Result<ModelSpec> {
        let d = Dims::from_config(cfg)?;
        let moe_layers = qwen_moe_layers(cfg, d.n_layers)?;
        let shared = cfg.usize_or("shared_expert_intermediate_size", 0)?;
        // transformers' Qwen2-MoE rule: even-numbered layers below `max_window_layers` slide.
        let windows = if cfg.bool_or("use_sliding_window", false)? {
            let below = cfg.usize_or("max_window_layers", d.n_layers)?;
            sliding_windows(cfg, d.n_layers, |l| l % 2 == 0 && l < below)?
        } else {
            vec![None; d.n_layers]
        };
        let layers = (0..d.n_layers)
            .map(|l| {
                let mut attn = d.attention(cfg, l, windows[l])?;
                attn.qkv_bias = cfg.bool_or("qkv_bias", true)?;
                let ffn = if moe_layers[l] {
                    let mut moe =
                        softmax_topk_moe(cfg, "moe_intermediate_size", cfg.bool_or("norm_topk_prob", false)?)?;
                    moe.shared = (shared > 0).then_some(SharedExperts {
                        intermediate: shared,
                        count: 1,
                        gated: true,
                    });
                    FfnSpec::Moe(moe)
                } else {
                    FfnSpec::Dense {
                        intermediate: cfg.usize("intermediate_size")?,
                    }
                };
                Ok(LayerSpec { attn, ffn })
            })
            .collect::<Result<_>>()?;
        d.model_spec(cfg, 1e-6, layers)
    }

    fn layer(&self, ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Layer<Host>> {
        qwen_moe_layer(ck, spec, l, "shared_expert")
    }
}
