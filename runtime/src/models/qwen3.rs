//! Qwen3 (`qwen3`): Qwen2 with per-head q_norm/k_norm (before RoPE), `attention_bias` on all projections,
//! and no q/k/v bias by default.

use super::qwen2::qwen_dense_windows;
use super::{llama_layer, Dims, Family};
use crate::backend::Host;
use crate::bail;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::hf_config::HfConfig;
use crate::model::Layer;
use crate::spec::{FfnSpec, LayerSpec, ModelSpec, QkNorm};

pub struct Qwen3;

impl Family for Qwen3 {
    fn spec(&self, cfg: &HfConfig) -> Result<ModelSpec> {
        let d = Dims::from_config(cfg)?;
        let intermediate = cfg.usize("intermediate_size")?;
        let bias = cfg.bool_or("attention_bias", false)?;
        let windows = qwen_dense_windows(cfg, d.n_layers)?;
        let layers = (0..d.n_layers)
            .map(|l| {
                let mut attn = d.attention(cfg, l, windows[l])?;
                attn.qkv_bias = bias;
                attn.o_bias = bias;
                attn.qk_norm = QkNorm::PerHead;
                Ok(LayerSpec {
                    attn,
                    ffn: FfnSpec::Dense { intermediate },
                })
            })
            .collect::<Result<_>>()?;
        d.model_spec(cfg, 1e-6, layers)
    }

    fn layer(&self, ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Layer<Host>> {
        llama_layer(ck, spec, l, |_| bail!("qwen3 layers have no experts"))
    }
}
