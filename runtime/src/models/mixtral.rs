//! Mixtral (`mixtral`): every layer MoE, softmax top-k always renormalised; `intermediate_size` is per
//! expert; one `sliding_window` for every layer (null in the released checkpoints).
//!
//! Hub tensors: `model.layers.{l}.block_sparse_moe.gate.weight` [E, H] and
//! `block_sparse_moe.experts.{e}.w1` (gate), `w3` (up), `w2` (down). transformers v5 renames them to
//! `mlp.gate` and fused `mlp.experts.gate_up_proj` / `down_proj`; both load.

use super::{llama_layer, plain_moe, qwen_moe_layer, sliding_windows, softmax_topk_moe, Dims, Family};
use crate::backend::Host;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::hf_config::HfConfig;
use crate::model::{Layer, Moe};
use crate::spec::{FfnSpec, LayerSpec, ModelSpec};

pub struct Mixtral;

impl Family for Mixtral {
    fn spec(&self, cfg: &HfConfig) -> Result<ModelSpec> {
        let d = Dims {
            default_rope_theta: 1e6,
            ..Dims::from_config(cfg)?
        };
        let windows = sliding_windows(cfg, d.n_layers, |_| true)?;
        let moe = softmax_topk_moe(cfg, "intermediate_size", true)?;
        let layers = (0..d.n_layers)
            .map(|l| {
                Ok(LayerSpec {
                    attn: d.attention(cfg, l, windows[l])?,
                    ffn: FfnSpec::Moe(moe.clone()),
                })
            })
            .collect::<Result<_>>()?;
        d.model_spec(cfg, 1e-5, layers)
    }

    fn layer(&self, ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Layer<Host>> {
        let hub = format!("model.layers.{l}.block_sparse_moe");
        if !ck.has(&format!("{hub}.gate.weight")) {
            return qwen_moe_layer(ck, spec, l, "shared_experts");
        }
        llama_layer(ck, spec, l, |m| {
            let experts = plain_moe(ck, &hub, "gate", ["w1", "w3", "w2"], m, spec.hidden_size)?;
            Ok(Moe {
                experts,
                shared: None,
                shared_gate: None,
            })
        })
    }
}
