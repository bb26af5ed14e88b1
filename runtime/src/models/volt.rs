//! Volt's native family (`volt`), the Yi-Lightning architecture: blocks of sliding-window layers and one
//! full-attention layer; consecutive full-attention layers share one KV cache (only the first of a group has
//! k_proj/v_proj); DeepSeekMoE-style fine-grained routed experts plus always-on shared experts after optional
//! leading dense layers; softmax routing by top-k or dynamic top-p. Schema: docs/MODEL_FORMAT.md.
//!
//! Tensors under `model.layers.{l}.mlp` of MoE layers: `gate.weight` [E, H]; `experts.{e}.{gate,up,down}_proj`;
//! `shared_experts.{gate,up,down}_proj` [n_shared*I, H] / [H, n_shared*I].

use super::{qwen_moe_layer, Dims, Family};
use crate::backend::Host;
use crate::bail;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::hf_config::HfConfig;
use crate::model::Layer;
use crate::spec::{
    ExpertActivation, FfnSpec, LayerSpec, ModelSpec, MoeSpec, RouterOrder, RouterSpec, Scoring, Selection,
    SharedExperts,
};

pub struct Volt;

impl Family for Volt {
    fn spec(&self, cfg: &HfConfig) -> Result<ModelSpec> {
        let d = Dims::from_config(cfg)?;
        let n = d.n_layers;
        let sliding = match cfg.layer_types(n)? {
            Some(types) => types,
            None => {
                let per_block = cfg.usize_or("sliding_layers_per_block", 3)?;
                (0..n).map(|l| (l + 1) % (per_block + 1) != 0).collect()
            }
        };
        let window = cfg.opt_usize("sliding_window")?.filter(|&w| w > 0);
        if sliding.iter().any(|&s| s) && window.is_none() {
            bail!("sliding layers need `sliding_window` >= 1");
        }
        let kv_sources = kv_sources(cfg, &sliding)?;
        let first_dense = cfg.usize_or("first_k_dense_layers", 0)?;
        let layers = (0..n)
            .map(|l| {
                let mut attn = d.attention(cfg, l, if sliding[l] { window } else { None })?;
                attn.kv_source = kv_sources[l];
                let ffn = if l < first_dense {
                    FfnSpec::Dense {
                        intermediate: cfg.usize("intermediate_size")?,
                    }
                } else {
                    FfnSpec::Moe(moe_spec(cfg)?)
                };
                Ok(LayerSpec { attn, ffn })
            })
            .collect::<Result<_>>()?;
        d.model_spec(cfg, 1e-5, layers)
    }

    fn layer(&self, ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Layer<Host>> {
        qwen_moe_layer(ck, spec, l, "shared_experts")
    }
}

/// Which layer's KV each layer reads: `kv_sources` when given, else runs of `kv_sharing_group` consecutive
/// full-attention layers share the KV of the run's first layer.
fn kv_sources(cfg: &HfConfig, sliding: &[bool]) -> Result<Vec<usize>> {
    if cfg.has("kv_sources") {
        let sources = cfg.usize_list("kv_sources")?;
        if sources.len() != sliding.len() {
            bail!(
                "`kv_sources` has {} entries for {} layers",
                sources.len(),
                sliding.len()
            );
        }
        return Ok(sources);
    }
    let group = cfg.usize_or("kv_sharing_group", 2)?.max(1);
    let mut sources: Vec<usize> = (0..sliding.len()).collect();
    let full: Vec<usize> = (0..sliding.len()).filter(|&l| !sliding[l]).collect();
    for run in full.chunks(group) {
        for &l in &run[1..] {
            sources[l] = run[0];
        }
    }
    Ok(sources)
}

fn moe_spec(cfg: &HfConfig) -> Result<MoeSpec> {
    let n_experts = cfg.usize("n_routed_experts")?;
    let selection = match cfg.opt_str("routing")?.unwrap_or("top_k") {
        "top_k" => Selection::TopK {
            k: cfg.usize("num_experts_per_tok")?,
        },
        "top_p" => Selection::TopP {
            p: cfg
                .opt_f64("router_top_p")?
                .ok_or_else(|| crate::Error::msg("top-p routing needs `router_top_p`"))? as f32,
            min_experts: cfg.usize_or("router_min_experts", 1)?,
            max_experts: cfg.usize_or("router_max_experts", n_experts)?,
        },
        other => bail!("`routing` must be \"top_k\" or \"top_p\", found \"{other}\""),
    };
    let inter = cfg.usize("moe_intermediate_size")?;
    let n_shared = cfg.usize_or("n_shared_experts", 0)?;
    Ok(MoeSpec {
        n_experts,
        expert_intermediate: inter,
        router: RouterSpec {
            scoring: Scoring::Softmax,
            order: RouterOrder::ScoreThenSelect,
            selection,
            renormalize: cfg.bool_or("norm_topk_prob", true)?,
            bias: false,
        },
        activation: ExpertActivation::SwiGlu,
        expert_bias: false,
        shared: (n_shared > 0).then_some(SharedExperts {
            intermediate: n_shared * inter,
            count: n_shared,
            gated: false,
        }),
    })
}
