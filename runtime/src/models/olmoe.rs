//! OLMoE (`olmoe`): every layer MoE with softmax top-k (renormalised iff `norm_topk_prob`);
//! `intermediate_size` is per expert; q_norm/k_norm over the whole projections; optional `clip_qkv`.

use super::{qwen_moe_layer, softmax_topk_moe, Dims, Family};
use crate::backend::Host;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::hf_config::HfConfig;
use crate::model::Layer;
use crate::spec::{FfnSpec, LayerSpec, ModelSpec, QkNorm};

pub struct Olmoe;

impl Family for Olmoe {
    fn spec(&self, cfg: &HfConfig) -> Result<ModelSpec> {
        let d = Dims::from_config(cfg)?;
        let bias = cfg.bool_or("attention_bias", false)?;
        let clip = cfg.opt_f64("clip_qkv")?.map(|c| c as f32);
        let moe = softmax_topk_moe(cfg, "intermediate_size", cfg.bool_or("norm_topk_prob", false)?)?;
        let layers = (0..d.n_layers)
            .map(|l| {
                let mut attn = d.attention(cfg, l, None)?;
                attn.qkv_bias = bias;
                attn.o_bias = bias;
                attn.qk_norm = QkNorm::WholeProjection;
                attn.clip_qkv = clip;
                Ok(LayerSpec {
                    attn,
                    ffn: FfnSpec::Moe(moe.clone()),
                })
            })
            .collect::<Result<_>>()?;
        d.model_spec(cfg, 1e-5, layers)
    }

    fn layer(&self, ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Layer<Host>> {
        qwen_moe_layer(ck, spec, l, "shared_experts")
    }
}
