//! OLMoE (`olmoe`): every layer MoE with softmax top-k (renormalised iff `norm_topk_prob`);
//! `intermediate_size` is per expert; q_norm/k_norm over the whole projections; optional `clip_qkv`.

use super::{llama_layer, plain_moe, softmax_topk, Dims, Family, EXPERT_COUNT_KEYS};
use crate::backend::Host;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::hf_config::HfConfig;
use crate::model::{Layer, Moe};
use crate::spec::{ExpertActivation, FfnSpec, LayerSpec, ModelSpec, MoeSpec, QkNorm};

pub struct Olmoe;

impl Family for Olmoe {
    fn spec(&self, cfg: &HfConfig) -> Result<ModelSpec> {
        let d = Dims::from_config(cfg)?;
        let bias = cfg.bool_or("attention_bias", false)?;
        let clip = cfg.opt_f64("clip_qkv")?.map(|c| c as f32);
        let layers = (0..d.n_layers)
            .map(|l| {
                let mut attn = d.attention(cfg, l, None)?;
                attn.qkv_bias = bias;
                attn.o_bias = bias;
                attn.qk_norm = QkNorm::WholeProjection;
                attn.clip_qkv = clip;
                let ffn = FfnSpec::Moe(MoeSpec {
                    n_experts: cfg.usize_any(EXPERT_COUNT_KEYS)?,
                    expert_intermediate: cfg.usize("intermediate_size")?,
                    router: softmax_topk(
                        cfg.usize("num_experts_per_tok")?,
                        cfg.bool_or("norm_topk_prob", false)?,
                    ),
                    activation: ExpertActivation::SwiGlu,
                    expert_bias: false,
                    shared: None,
                });
                Ok(LayerSpec { attn, ffn })
            })
            .collect::<Result<_>>()?;
        d.model_spec(cfg, 1e-5, layers)
    }

    fn layer(&self, ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Layer<Host>> {
        let p = format!("model.layers.{l}.mlp");
        llama_layer(ck, spec, l, |m| {
            Ok(Moe {
                experts: plain_moe(
                    ck,
                    &p,
                    "gate",
                    ["gate_proj", "up_proj", "down_proj"],
                    m,
                    spec.hidden_size,
                )?,
                shared: None,
                shared_gate: None,
            })
        })
    }
}
