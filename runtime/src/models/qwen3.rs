//! Qwen3 (`qwen3`): Qwen2 with per-head q_norm/k_norm (before RoPE), `attention_bias` on all projections,
//! and no q/k/v bias by default.

use super::qwen2::qwen_dense_windows;
use super::{dense_layer, dense_spec, Family};
use crate::backend::Host;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::hf_config::HfConfig;
use crate::model::Layer;
use crate::spec::{ModelSpec, QkNorm};

pub struct Qwen3;

impl Family for Qwen3 {
    fn spec(&self, cfg: &HfConfig) -> Result<ModelSpec> {
        let bias = cfg.bool_or("attention_bias", false)?;
        dense_spec(cfg, &qwen_dense_windows(cfg)?, |attn| {
            attn.qkv_bias = bias;
            attn.o_bias = bias;
            attn.qk_norm = QkNorm::PerHead;
        })
    }

    fn layer(&self, ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Layer<Host>> {
        dense_layer(ck, spec, l)
    }
}
