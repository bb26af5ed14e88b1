//! Llama and Mistral (`llama`, `mistral`): dense SwiGLU, GQA, optional biases on all four projections,
//! RoPE with llama3/linear/yarn scaling; Mistral's `sliding_window` applies to every layer unless
//! `layer_types` says otherwise.

use super::{dense_layer, dense_spec, sliding_windows, Family};
use crate::backend::Host;
use crate::bail;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::hf_config::HfConfig;
use crate::model::Layer;
use crate::spec::ModelSpec;

pub struct Llama;

impl Family for Llama {
    fn spec(&self, cfg: &HfConfig) -> Result<ModelSpec> {
        if cfg.bool_or("mlp_bias", false)? {
            bail!("`mlp_bias: true` is not supported");
        }
        let bias = cfg.bool_or("attention_bias", false)?;
        let windows = sliding_windows(cfg, cfg.usize("num_hidden_layers")?, |_| true)?;
        dense_spec(cfg, &windows, |attn| {
            attn.qkv_bias = bias;
            attn.o_bias = bias;
        })
    }

    fn layer(&self, ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Layer<Host>> {
        dense_layer(ck, spec, l)
    }
}
