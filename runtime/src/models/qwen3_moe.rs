//! Qwen3-MoE (`qwen3_moe`, Qwen3-30B-A3B): Qwen3 attention (per-head q/k norm before RoPE) with softmax
//! top-k routing renormalised iff `norm_topk_prob`; no shared expert. `sliding_window` (when
//! `use_sliding_window`) applies to every layer.

use super::{qwen_moe_layer, qwen_moe_layers, sliding_windows, softmax_topk_moe, Dims, Family};
use crate::backend::Host;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::hf_config::HfConfig;
use crate::model::Layer;
use crate::spec::{FfnSpec, LayerSpec, ModelSpec, QkNorm};

pub struct Qwen3Moe;

impl Family for Qwen3Moe {
    fn spec(&self, cfg: &HfConfig) -> Result<ModelSpec> {
        let d = Dims::from_config(cfg)?;
        let moe_layers = qwen_moe_layers(cfg, d.n_layers)?;
        let bias = cfg.bool_or("attention_bias", false)?;
        let windows = if cfg.bool_or("use_sliding_window", false)? {
            sliding_windows(cfg, d.n_layers, |_| true)?
        } else {
            vec![None; d.n_layers]
        };
        let layers = (0..d.n_layers)
            .map(|l| {
                let mut attn = d.attention(cfg, l, windows[l])?;
                attn.qkv_bias = bias;
                attn.o_bias = bias;
                attn.qk_norm = QkNorm::PerHead;
                let ffn = if moe_layers[l] {
                    FfnSpec::Moe(softmax_topk_moe(
                        cfg,
                        "moe_intermediate_size",
                        cfg.bool_or("norm_topk_prob", false)?,
                    )?)
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
        qwen_moe_layer(ck, spec, l, "shared_experts")
    }
}
