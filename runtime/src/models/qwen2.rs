//! Qwen2 (`qwen2`): dense SwiGLU, biases on q/k/v only. With `use_sliding_window`, layers from
//! `max_window_layers` on slide (or as `layer_types` lists them).

use super::{dense_layer, dense_spec, sliding_windows, Family};
use crate::backend::Host;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::hf_config::HfConfig;
use crate::model::Layer;
use crate::spec::ModelSpec;

pub struct Qwen2;

/// Qwen2/Qwen3 dense: sliding only when `use_sliding_window`, for layers at or past `max_window_layers`.
pub fn qwen_dense_windows(cfg: &HfConfig) -> Result<Vec<Option<usize>>> {
    let n_layers = cfg.usize("num_hidden_layers")?;
    if !cfg.bool_or("use_sliding_window", false)? {
        return Ok(vec![None; n_layers]);
    }
    let first = cfg.usize_or("max_window_layers", n_layers)?;
    sliding_windows(cfg, n_layers, |l| l >= first)
}

impl Family for Qwen2 {
    fn spec(&self, cfg: &HfConfig) -> Result<ModelSpec> {
        dense_spec(cfg, &qwen_dense_windows(cfg)?, |attn| attn.qkv_bias = true)
    }

    fn layer(&self, ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Layer<Host>> {
        dense_layer(ck, spec, l)
    }
}
