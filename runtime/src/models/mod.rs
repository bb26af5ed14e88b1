//! Model families: each file maps one Hugging Face `model_type` to the spec and names its tensors. The math
//! is in `model.rs`; the pieces every llama-style family shares are here.

mod gpt_oss;
mod llama;
mod mixtral;
mod olmoe;
mod qwen2;
mod qwen2_moe;
mod qwen3;
mod qwen3_moe;
mod volt;

use crate::backend::{Host, MoeExperts};
use crate::bail;
use crate::checkpoint::Checkpoint;
use crate::error::{Result, ResultExt};
use crate::hf_config::HfConfig;
use crate::model::{Attention, Ffn, Globals, Layer, Mlp, Moe};
use crate::spec::{
    AttnKind, AttnSpec, ExpertActivation, FfnSpec, LayerSpec, ModelSpec, MoeSpec, QkNorm, RouterOrder, RouterSpec,
    Scoring, Selection,
};
use crate::tensor::StoredTensor;

pub trait Family: Sync {
    fn spec(&self, cfg: &HfConfig) -> Result<ModelSpec>;
    fn layer(&self, ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Layer<Host>>;
    fn globals(&self, ck: &Checkpoint, spec: &ModelSpec) -> Result<Globals<Host>> {
        llama_globals(ck, spec)
    }
}

/// The `model_type` values Volt loads, for messages and the README.
pub const SUPPORTED: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "mixtral",
    "gpt_oss",
    "volt",
];

pub fn family_of(cfg: &HfConfig) -> Result<&'static dyn Family> {
    let Some(model_type) = cfg.opt_str("model_type").context("config.json")? else {
        bail!("config.json has no `model_type`");
    };
    Ok(match model_type {
        "llama" | "mistral" => &llama::Llama,
        "qwen2" => &qwen2::Qwen2,
        "qwen3" => &qwen3::Qwen3,
        "qwen2_moe" => &qwen2_moe::Qwen2Moe,
        "qwen3_moe" => &qwen3_moe::Qwen3Moe,
        "olmoe" => &olmoe::Olmoe,
        "mixtral" => &mixtral::Mixtral,
        "gpt_oss" => &gpt_oss::GptOss,
        "volt" => &volt::Volt,
        other => bail!("unknown architecture `{other}` (supported: {})", SUPPORTED.join(", ")),
    })
}

/// The shape every llama-style config states the same way.
pub struct Dims {
    pub vocab: usize,
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// RoPE base when the config states none (transformers' per-family default).
    pub default_rope_theta: f64,
}

impl Dims {
    pub fn from_config(cfg: &HfConfig) -> Result<Dims> {
        let hidden = cfg.usize("hidden_size")?;
        let n_heads = cfg.usize("num_attention_heads")?;
        if n_heads == 0 {
            bail!("`num_attention_heads` is 0");
        }
        Ok(Dims {
            vocab: cfg.usize("vocab_size")?,
            hidden,
            n_layers: cfg.usize("num_hidden_layers")?,
            n_heads,
            n_kv_heads: cfg.usize_or("num_key_value_heads", n_heads)?,
            head_dim: cfg.usize_or("head_dim", hidden / n_heads)?,
            default_rope_theta: 10000.0,
        })
    }

    /// The spec around the layers, from the keys all families share.
    pub fn model_spec(&self, cfg: &HfConfig, default_eps: f64, layers: Vec<LayerSpec>) -> Result<ModelSpec> {
        Ok(ModelSpec {
            family: cfg.opt_str("model_type")?.unwrap_or_default().to_string(),
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            tie_word_embeddings: cfg.bool_or("tie_word_embeddings", false)?,
            rms_norm_eps: cfg.f64_or("rms_norm_eps", default_eps)? as f32,
            max_position_embeddings: cfg.usize_or("max_position_embeddings", 4096)?,
            bos_token_id: cfg.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: cfg.token_ids("eos_token_id")?,
            layers,
        })
    }

    /// Attention of layer `l` with defaults for everything families vary; callers set the rest.
    pub fn attention(&self, cfg: &HfConfig, l: usize, sliding: Option<usize>) -> Result<AttnSpec> {
        let layer_type = if sliding.is_some() {
            "sliding_attention"
        } else {
            "full_attention"
        };
        Ok(AttnSpec {
            kind: sliding.map_or(AttnKind::Full, |window| AttnKind::Sliding { window }),
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            qkv_bias: false,
            o_bias: false,
            qk_norm: QkNorm::None,
            clip_qkv: None,
            sinks: false,
            softmax_scale: (self.head_dim as f32).powf(-0.5),
            rope: cfg.rope(self.default_rope_theta, layer_type)?,
            kv_source: l,
        })
    }
}

/// The window of each layer (None = full attention). `layer_types` wins when present; otherwise the
/// family's own rule says which layers slide. A null or zero `sliding_window` means no layer slides.
pub fn sliding_windows(
    cfg: &HfConfig,
    n_layers: usize,
    family_rule: impl Fn(usize) -> bool,
) -> Result<Vec<Option<usize>>> {
    let window = cfg.opt_usize("sliding_window")?.filter(|&w| w > 0);
    let slides: Vec<bool> = match cfg.layer_types(n_layers)? {
        Some(types) => types,
        None => (0..n_layers).map(family_rule).collect(),
    };
    if window.is_none() && slides.iter().any(|&s| s) && cfg.has("layer_types") {
        bail!("`layer_types` has sliding layers but `sliding_window` is not set");
    }
    Ok(slides.into_iter().map(|s| if s { window } else { None }).collect())
}

/// `model.embed_tokens`, `model.norm`, `lm_head` (absent when tied).
pub fn llama_globals(ck: &Checkpoint, spec: &ModelSpec) -> Result<Globals<Host>> {
    let (v, h) = (spec.vocab_size, spec.hidden_size);
    let embed = ck.tensor("model.embed_tokens.weight", &[v, h])?;
    let lm_head = if spec.tie_word_embeddings {
        None
    } else {
        Some(ck.tensor("lm_head.weight", &[v, h])?)
    };
    Ok(Globals {
        embed,
        final_norm: ck.f32("model.norm.weight", &[h])?,
        lm_head,
    })
}

/// `model.layers.{l}.self_attn.*` in the llama naming, with whatever biases and norms the spec asks for.
pub fn llama_attention(ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Attention<Host>> {
    let a = &spec.layers[l].attn;
    let h = spec.hidden_size;
    let p = format!("model.layers.{l}.self_attn");
    let (q, kv) = (a.q_dim(), a.kv_dim());
    let owns_kv = a.kv_source == l;
    let kv_weights = if owns_kv {
        Some((
            ck.tensor(&format!("{p}.k_proj.weight"), &[kv, h])?,
            ck.tensor(&format!("{p}.v_proj.weight"), &[kv, h])?,
        ))
    } else {
        None
    };
    let bias = |name: &str, n: usize| ck.f32(&format!("{p}.{name}.bias"), &[n]);
    let (q_norm, k_norm) = match a.qk_norm {
        QkNorm::None => (None, None),
        QkNorm::PerHead => (
            Some(ck.f32(&format!("{p}.q_norm.weight"), &[a.head_dim])?),
            Some(ck.f32(&format!("{p}.k_norm.weight"), &[a.head_dim])?),
        ),
        QkNorm::WholeProjection => (
            Some(ck.f32(&format!("{p}.q_norm.weight"), &[q])?),
            Some(ck.f32(&format!("{p}.k_norm.weight"), &[kv])?),
        ),
    };
    Ok(Attention {
        q: ck.tensor(&format!("{p}.q_proj.weight"), &[q, h])?,
        kv: kv_weights,
        o: ck.tensor(&format!("{p}.o_proj.weight"), &[h, q])?,
        q_bias: a.qkv_bias.then(|| bias("q_proj", q)).transpose()?,
        kv_bias: if a.qkv_bias && owns_kv {
            Some((bias("k_proj", kv)?, bias("v_proj", kv)?))
        } else {
            None
        },
        o_bias: a
            .o_bias
            .then(|| ck.f32(&format!("{p}.o_proj.bias"), &[h]))
            .transpose()?,
        q_norm: if a.qk_norm == QkNorm::None { None } else { q_norm },
        k_norm: if owns_kv { k_norm } else { None },
        sinks: a
            .sinks
            .then(|| ck.f32(&format!("{p}.sinks"), &[a.n_heads]))
            .transpose()?,
    })
}

/// A whole llama-style layer: `input_layernorm`, `self_attn`, `post_attention_layernorm`, and `mlp` as a
/// SwiGLU for dense layers or through `moe` (the family's expert naming) for MoE layers.
pub fn llama_layer(
    ck: &Checkpoint,
    spec: &ModelSpec,
    l: usize,
    moe: impl FnOnce(&MoeSpec) -> Result<Moe<Host>>,
) -> Result<Layer<Host>> {
    let h = spec.hidden_size;
    let ffn = match &spec.layers[l].ffn {
        FfnSpec::Dense { intermediate } => {
            Ffn::Dense(swiglu_mlp(ck, &format!("model.layers.{l}.mlp"), h, *intermediate)?)
        }
        FfnSpec::Moe(m) => Ffn::Moe(Box::new(moe(m)?)),
    };
    Ok(Layer {
        input_norm: ck.f32(&format!("model.layers.{l}.input_layernorm.weight"), &[h])?,
        post_attention_norm: ck.f32(&format!("model.layers.{l}.post_attention_layernorm.weight"), &[h])?,
        attn: llama_attention(ck, spec, l)?,
        ffn,
    })
}

/// A SwiGLU MLP at `{prefix}.{gate,up,down}_proj.weight`.
pub fn swiglu_mlp(ck: &Checkpoint, prefix: &str, hidden: usize, intermediate: usize) -> Result<Mlp<Host>> {
    Ok(Mlp {
        gate: ck.tensor(&format!("{prefix}.gate_proj.weight"), &[intermediate, hidden])?,
        up: ck.tensor(&format!("{prefix}.up_proj.weight"), &[intermediate, hidden])?,
        down: ck.tensor(&format!("{prefix}.down_proj.weight"), &[hidden, intermediate])?,
    })
}

/// Routed experts stored either one tensor per expert (`{prefix}.experts.{e}.{gate}.weight`, the Hub form) or
/// fused as transformers v5 holds them (`{prefix}.experts.gate_up_proj` (E, 2I, H), gate rows first, and
/// `{prefix}.experts.down_proj` (E, H, I)). Returns gate_up [E, 2, I, H] (each expert's gate rows, then its
/// up rows: two matrices, so FP8 blocks follow the checkpoint's) and down [E, H, I].
pub fn routed_experts(
    ck: &Checkpoint,
    prefix: &str,
    names: [&str; 3],
    n_experts: usize,
    hidden: usize,
    inter: usize,
) -> Result<(StoredTensor, StoredTensor)> {
    let fused = format!("{prefix}.experts.gate_up_proj");
    if ck.has(&fused) {
        let gate_up = ck
            .tensor(&fused, &[n_experts, 2 * inter, hidden])?
            .reshape(vec![n_experts, 2, inter, hidden])?;
        let down = ck.tensor(&format!("{prefix}.experts.down_proj"), &[n_experts, hidden, inter])?;
        return Ok((gate_up, down));
    }
    let mut gate_up = Vec::with_capacity(2 * n_experts);
    let mut down = Vec::with_capacity(n_experts);
    for e in 0..n_experts {
        let name = |n: &str| format!("{prefix}.experts.{e}.{n}.weight");
        gate_up.push(ck.tensor(&name(names[0]), &[inter, hidden])?);
        gate_up.push(ck.tensor(&name(names[1]), &[inter, hidden])?);
        down.push(ck.tensor(&name(names[2]), &[hidden, inter])?);
    }
    Ok((
        StoredTensor::stack(gate_up, vec![n_experts, 2, inter, hidden])?,
        StoredTensor::stack(down, vec![n_experts, hidden, inter])?,
    ))
}

/// Router weight [E, H] plus routed experts, with no biases: the Qwen/OLMoE/Mixtral form.
pub fn plain_moe(
    ck: &Checkpoint,
    prefix: &str,
    router: &str,
    names: [&str; 3],
    m: &MoeSpec,
    h: usize,
) -> Result<MoeExperts<Host>> {
    let (e, i) = (m.n_experts, m.expert_intermediate);
    let (gate_up, down) = routed_experts(ck, prefix, names, e, h, i)?;
    Ok(MoeExperts {
        router: ck.tensor(&format!("{prefix}.{router}.weight"), &[e, h])?,
        router_bias: None,
        gate_up,
        down,
        gate_up_bias: None,
        down_bias: None,
    })
}

/// The routed-expert count's spellings across families and transformers versions.
pub const EXPERT_COUNT_KEYS: &[&str] = &["num_experts", "num_local_experts"];

/// Which layers are MoE in the Qwen-MoE/OLMoE convention: not listed in `mlp_only_layers`, and every
/// `decoder_sparse_step`-th layer.
pub fn qwen_moe_layers(cfg: &HfConfig, n_layers: usize) -> Result<Vec<bool>> {
    let dense = cfg.usize_list("mlp_only_layers")?;
    let step = cfg.usize_or("decoder_sparse_step", 1)?.max(1);
    let has_experts = cfg.usize_any(EXPERT_COUNT_KEYS).unwrap_or(0) > 0;
    Ok((0..n_layers)
        .map(|l| has_experts && !dense.contains(&l) && (l + 1) % step == 0)
        .collect())
}

/// Tensor names of one expert's SwiGLU in the Qwen/OLMoE convention.
pub const QWEN_EXPERT_NAMES: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// Routed SwiGLU experts with softmax top-k routing and no shared experts: Qwen3-MoE, OLMoE, Mixtral.
/// `expert_size_key` names the per-expert intermediate size.
pub fn softmax_topk_moe(cfg: &HfConfig, expert_size_key: &str, renormalize: bool) -> Result<MoeSpec> {
    Ok(MoeSpec {
        n_experts: cfg.usize_any(EXPERT_COUNT_KEYS)?,
        expert_intermediate: cfg.usize(expert_size_key)?,
        router: softmax_topk(cfg.usize("num_experts_per_tok")?, renormalize),
        activation: ExpertActivation::SwiGlu,
        expert_bias: false,
        shared: None,
    })
}

/// A llama-style layer whose MoE sits under `mlp`: router `mlp.gate`, experts `mlp.experts.{e}.*_proj` (or
/// fused), and, when the spec has shared experts, a SwiGLU at `mlp.{shared}` scaled, if gated, by
/// sigmoid(`mlp.{shared}_gate` [1, H]).
pub fn qwen_moe_layer(ck: &Checkpoint, spec: &ModelSpec, l: usize, shared: &str) -> Result<Layer<Host>> {
    let h = spec.hidden_size;
    let p = format!("model.layers.{l}.mlp");
    llama_layer(ck, spec, l, |m| {
        let experts = plain_moe(ck, &p, "gate", QWEN_EXPERT_NAMES, m, h)?;
        let Some(s) = &m.shared else {
            return Ok(Moe {
                experts,
                shared: None,
                shared_gate: None,
            });
        };
        let shared_gate = s
            .gated
            .then(|| ck.tensor(&format!("{p}.{shared}_gate.weight"), &[1, h]))
            .transpose()?;
        Ok(Moe {
            experts,
            shared: Some(swiglu_mlp(ck, &format!("{p}.{shared}"), h, s.intermediate)?),
            shared_gate,
        })
    })
}

/// A llama-style dense layer.
pub fn dense_layer(ck: &Checkpoint, spec: &ModelSpec, l: usize) -> Result<Layer<Host>> {
    llama_layer(ck, spec, l, |_| {
        bail!("layer {l} is dense but the spec asks for experts")
    })
}

/// The spec of a dense family: SwiGLU of `intermediate_size` everywhere, the given windows, and the
/// family's attention options set by `adjust`.
pub fn dense_spec(cfg: &HfConfig, windows: &[Option<usize>], adjust: impl Fn(&mut AttnSpec)) -> Result<ModelSpec> {
    let d = Dims::from_config(cfg)?;
    if windows.len() != d.n_layers {
        bail!("{} windows for {} layers", windows.len(), d.n_layers);
    }
    let intermediate = cfg.usize("intermediate_size")?;
    let layers = (0..d.n_layers)
        .map(|l| {
            let mut attn = d.attention(cfg, l, windows[l])?;
            adjust(&mut attn);
            Ok(LayerSpec {
                attn,
                ffn: FfnSpec::Dense { intermediate },
            })
        })
        .collect::<Result<_>>()?;
    d.model_spec(cfg, 1e-6, layers)
}

/// Softmax routing over all experts, top-k, renormalised or not: Qwen, OLMoE, Mixtral.
pub fn softmax_topk(k: usize, renormalize: bool) -> RouterSpec {
    RouterSpec {
        scoring: Scoring::Softmax,
        order: RouterOrder::ScoreThenSelect,
        selection: Selection::TopK { k },
        renormalize,
        bias: false,
    }
}
