//! Qwen2 (`qwen2`): dense SwiGLU, biases on q/k/v only. With `use_sliding_window`, layers from
//! `max_window_layers` on slide (or as `layer_types` lists them).

use super::{llama_layer, sliding_windows, Dims, Family};
use crate::backend::Host;
use crate::bail;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::hf_config::HfConfig;
use crate::model::Layer;
use crate::spec::{FfnSpec, LayerSpec, ModelSpec};

pub struct Qwen2;

/// Qwen2/Qwen3 dense: sliding only when `use_sliding_window`, for layers at or past `max_window_layers`.
pub fn qwen_dense_windows(cfg: &HfConfig, n_layers: usize) -> Result<Vec<Option<usize>>> {
    if !cfg.bool_or("use_sliding_window", false)? {
        return Ok(vec![None; n_layers]);
    }
    let first = cfg.usize_or("max_window_layers", n_layers)?;
    sliding_windows(cfg, n_layers, |l| l >= first)
}

impl Family for Qwen2 {
    fn spec(&self, cfg: &HfConfig) -> Result<ModelSpec> {
        let d = Dims::from_config(cfg)?;
        let intermediate = cfg.usize("intermediate_size")?;
        let windows = qwen_dense_windows(cfg, d.n_layers)?;
        let layers = (0..d.n_layers)
            .map(|l| {
                let mut attn = d.attention(cfg, l, windows[l])?;
                attn.qkv_bias = true;
                Ok(LayerSpec {
                    attn,
                    ffn: FfnSpec::Dense { intermediate },
                })
            })
            .collect::<Result<_>>()?;
        d.model_spec(cfg, 1e-6, layers)
    }

    fn layer(&self, ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Layer<Host>> {
        llama_layer(ck, spec, l, |_| bail!("qwen2 layers have no experts"))
    }
}
