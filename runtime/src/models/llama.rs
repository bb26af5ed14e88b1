//! Llama and Mistral (`llama`, `mistral`): dense SwiGLU, GQA, optional biases on all four projections,
//! RoPE with llama3/linear/yarn scaling; Mistral's `sliding_window` applies to every layer unless
//! `layer_types` says otherwise.

use super::{llama_layer, sliding_windows, Dims, Family};
use crate::backend::Host;
use crate::bail;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::hf_config::HfConfig;
use crate::model::Layer;
use crate::spec::{FfnSpec, LayerSpec, ModelSpec};

pub struct Llama;

impl Family for Llama {
    fn spec(&self, cfg: &HfConfig) -> Result<ModelSpec> {
        let d = Dims::from_config(cfg)?;
        if cfg.bool_or("mlp_bias", false)? {
            bail!("`mlp_bias: true` is not supported");
        }
        let bias = cfg.bool_or("attention_bias", false)?;
        let intermediate = cfg.usize("intermediate_size")?;
        let windows = sliding_windows(cfg, d.n_layers, |_| true)?;
        let layers = (0..d.n_layers)
            .map(|l| {
                let mut attn = d.attention(cfg, l, windows[l])?;
                attn.qkv_bias = bias;
                attn.o_bias = bias;
                Ok(LayerSpec {
                    attn,
                    ffn: FfnSpec::Dense { intermediate },
                })
            })
            .collect::<Result<_>>()?;
        d.model_spec(cfg, 1e-6, layers)
    }

    fn layer(&self, ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Layer<Host>> {
        llama_layer(ck, spec, l, |_| bail!("llama layers have no experts"))
    }
}
