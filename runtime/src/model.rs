//! The forward pass, written once against the `Backend` trait, and the weights it reads.
//!
//! Per layer (pre-norm transformer):
//!   h = x + o_proj(attention(rope(norm_q(q_proj(n))), rope(norm_k(k_proj(n))), v_proj(n)))   n = input_norm(x)
//!   x' = h + ffn(post_attention_norm(h))       ffn = SwiGLU, or routed experts + shared experts
//! Family differences are all in the spec (`spec.rs`) and the tensor names (`models/`).

use std::path::Path;

use crate::backend::{Backend, Host, MoeExperts, WeightTypes};
use crate::bail;
use crate::checkpoint::{Checkpoint, HostTensor};
use crate::dtype::Precision;
use crate::error::{Result, ResultExt};
use crate::hf_config::HfConfig;
use crate::kv::KvCache;
use crate::models;
use crate::rope::RopeTable;
use crate::spec::{FfnSpec, ModelSpec, QkNorm};
use crate::step::Step;

pub struct Attention<W: WeightTypes> {
    /// [n_heads*head_dim, hidden]
    pub q: W::Matrix,
    /// [n_kv_heads*head_dim, hidden]; None when the layer reuses another layer's KV.
    pub kv: Option<(W::Matrix, W::Matrix)>,
    /// [hidden, n_heads*head_dim]
    pub o: W::Matrix,
    pub q_bias: Option<W::Vector>,
    pub kv_bias: Option<(W::Vector, W::Vector)>,
    pub o_bias: Option<W::Vector>,
    /// [head_dim] per-head, or [q_dim] / [kv_dim] over the whole projection.
    pub q_norm: Option<W::Vector>,
    pub k_norm: Option<W::Vector>,
    /// [n_heads]
    pub sinks: Option<W::Vector>,
}

/// A SwiGLU MLP: gate, up [intermediate, hidden]; down [hidden, intermediate].
pub struct Mlp<W: WeightTypes> {
    pub gate: W::Matrix,
    pub up: W::Matrix,
    pub down: W::Matrix,
}

pub struct Moe<W: WeightTypes> {
    pub experts: MoeExperts<W>,
    pub shared: Option<Mlp<W>>,
    /// [1, hidden]: the shared experts' sigmoid gate.
    pub shared_gate: Option<W::Matrix>,
}

pub enum Ffn<W: WeightTypes> {
    Dense(Mlp<W>),
    Moe(Box<Moe<W>>),
}

pub struct Layer<W: WeightTypes> {
    /// [hidden]
    pub input_norm: W::Vector,
    pub post_attention_norm: W::Vector,
    pub attn: Attention<W>,
    pub ffn: Ffn<W>,
}

/// The weights outside the layers.
pub struct Globals<W: WeightTypes> {
    /// [vocab, hidden]
    pub embed: W::Matrix,
    /// [hidden]
    pub final_norm: W::Vector,
    /// [vocab, hidden]; None when tied to the embedding.
    pub lm_head: Option<W::Matrix>,
}

pub struct Model<B: Backend> {
    pub spec: ModelSpec,
    globals: Globals<B>,
    layers: Vec<Layer<B>>,
    ropes: Vec<B::Rope>,
}

impl<B: Backend> Model<B> {
    /// Loads a Hugging Face model folder onto the backend, layer by layer (host copies are dropped as each
    /// layer is uploaded).
    pub fn load(backend: &mut B, dir: &Path) -> Result<Model<B>> {
        let config = HfConfig::load(dir)?;
        config.check_quantization().context("config.json")?;
        let family = models::family_of(&config)?;
        let spec = family.spec(&config).context("config.json")?;
        spec.validate().context("config.json")?;
        let ck = Checkpoint::open(dir)?;
        let globals = upload_globals(backend, family.globals(&ck, &spec)?)?;
        let mut layers = Vec::with_capacity(spec.n_layers());
        let mut ropes = Vec::with_capacity(spec.n_layers());
        for l in 0..spec.n_layers() {
            let host = family.layer(&ck, &spec, l)?;
            layers.push(upload_layer(backend, host)?);
            let attn = &spec.layers[l].attn;
            ropes.push(backend.upload_rope(RopeTable::new(&attn.rope, attn.head_dim))?);
        }
        Ok(Model {
            spec,
            globals,
            layers,
            ropes,
        })
    }

    /// Runs one step and returns logits ([rows.len(), vocab]) for the listed rows of the step.
    pub fn forward(&self, be: &mut B, cache: &mut B::Cache, step: &Step, logit_rows: &[usize]) -> Result<B::Tensor> {
        self.check_step(cache, step)?;
        be.begin_step(step)?;
        be.reserve_kv(cache, step)?;
        let eps = self.spec.rms_norm_eps;
        let mut x = be.embed(&self.globals.embed)?; // [T, hidden]
        for (l, layer) in self.layers.iter().enumerate() {
            let spec = &self.spec.layers[l];
            let a = &spec.attn;
            let w = &layer.attn;
            let n = be.rms_norm(&x, &layer.input_norm, eps, self.spec.hidden_size)?;
            let mut q = be.linear(&n, &w.q, w.q_bias.as_ref())?; // [T, n_heads*head_dim]
            let mut kv = match &w.kv {
                Some((k, v)) => {
                    let (kb, vb) = w.kv_bias.as_ref().map(|(k, v)| (k, v)).unzip();
                    Some((be.linear(&n, k, kb)?, be.linear(&n, v, vb)?)) // [T, n_kv_heads*head_dim] each
                }
                None => None,
            };
            let norm_group = |whole: usize| {
                if a.qk_norm == QkNorm::PerHead {
                    a.head_dim
                } else {
                    whole
                }
            };
            if let Some(qn) = &w.q_norm {
                q = be.rms_norm(&q, qn, eps, norm_group(a.q_dim()))?;
            }
            if let (Some(kn), Some((k, _))) = (&w.k_norm, kv.as_mut()) {
                *k = be.rms_norm(k, kn, eps, norm_group(a.kv_dim()))?;
            }
            if let Some(c) = a.clip_qkv {
                be.clamp(&mut q, c)?;
                if let Some((k, v)) = kv.as_mut() {
                    be.clamp(k, c)?;
                    be.clamp(v, c)?;
                }
            }
            be.apply_rope(&mut q, &self.ropes[l], a.head_dim)?;
            if let Some((k, _)) = kv.as_mut() {
                be.apply_rope(k, &self.ropes[l], a.head_dim)?;
            }
            let attn = be.attention(cache, a, &q, kv.as_ref().map(|(k, v)| (k, v)), w.sinks.as_ref())?;
            let attn = be.linear(&attn, &w.o, w.o_bias.as_ref())?; // [T, hidden]
            be.add_assign(&mut x, &attn)?;

            let n = be.rms_norm(&x, &layer.post_attention_norm, eps, self.spec.hidden_size)?;
            let ffn = match (&layer.ffn, &spec.ffn) {
                (Ffn::Dense(mlp), _) => mlp_forward(be, &n, mlp)?,
                (Ffn::Moe(moe), FfnSpec::Moe(moe_spec)) => {
                    let mut out = be.moe(&n, &moe.experts, moe_spec, l)?;
                    if let Some(shared) = &moe.shared {
                        let mut s = mlp_forward(be, &n, shared)?;
                        if let Some(g) = &moe.shared_gate {
                            let gate = be.linear(&n, g, None)?; // [T, 1]
                            be.sigmoid_gate(&mut s, &gate)?;
                        }
                        be.add_assign(&mut out, &s)?;
                    }
                    out
                }
                (Ffn::Moe(_), FfnSpec::Dense { .. }) => {
                    bail!("layer {l}: MoE weights for a dense layer spec")
                }
            };
            be.add_assign(&mut x, &ffn)?;
        }
        let x = be.select_rows(&x, logit_rows)?;
        let x = be.rms_norm(&x, &self.globals.final_norm, eps, self.spec.hidden_size)?;
        let head = self.globals.lm_head.as_ref().unwrap_or(&self.globals.embed);
        let logits = be.linear(&x, head, None)?;
        cache.kv_mut().advance(step);
        be.end_step(cache)?;
        Ok(logits)
    }

    /// Ids in the vocabulary, and positions that continue each sequence's cache (`KvSlots::check`).
    fn check_step(&self, cache: &B::Cache, step: &Step) -> Result<()> {
        if step.is_empty() {
            bail!("empty input: no tokens to run");
        }
        if step.positions.len() != step.len() || step.seqs.len() != step.len() {
            bail!(
                "step has {} tokens but {} positions and {} sequence slots",
                step.len(),
                step.positions.len(),
                step.seqs.len()
            );
        }
        if let Some(&tok) = step.tokens.iter().find(|&&t| t as usize >= self.spec.vocab_size) {
            bail!(
                "token id {tok} is outside the vocabulary (size {})",
                self.spec.vocab_size
            );
        }
        cache.kv().check(step)
    }
}

fn mlp_forward<B: Backend>(be: &mut B, x: &B::Tensor, mlp: &Mlp<B>) -> Result<B::Tensor> {
    let mut g = be.linear(x, &mlp.gate, None)?;
    let u = be.linear(x, &mlp.up, None)?;
    be.swiglu(&mut g, &u)?;
    be.linear(&g, &mlp.down, None)
}

fn upload_globals<B: Backend>(be: &mut B, g: Globals<Host>) -> Result<Globals<B>> {
    Ok(Globals {
        embed: be.upload_matrix(g.embed, Precision::Table)?,
        final_norm: be.upload_vector(g.final_norm)?,
        lm_head: g.lm_head.map(|m| be.upload_matrix(m, Precision::Table)).transpose()?,
    })
}

fn upload_mlp<B: Backend>(be: &mut B, m: Mlp<Host>) -> Result<Mlp<B>> {
    Ok(Mlp {
        gate: be.upload_matrix(m.gate, Precision::Storage)?,
        up: be.upload_matrix(m.up, Precision::Storage)?,
        down: be.upload_matrix(m.down, Precision::Storage)?,
    })
}

fn upload_layer<B: Backend>(be: &mut B, l: Layer<Host>) -> Result<Layer<B>> {
    let a = l.attn;
    let pair = |be: &mut B, p: Option<(HostTensor, HostTensor)>| -> Result<Option<(B::Vector, B::Vector)>> {
        p.map(|(x, y)| Ok((be.upload_vector(x)?, be.upload_vector(y)?)))
            .transpose()
    };
    let attn = Attention {
        q: be.upload_matrix(a.q, Precision::Storage)?,
        kv: a
            .kv
            .map(|(k, v)| {
                Ok::<_, crate::Error>((
                    be.upload_matrix(k, Precision::Storage)?,
                    be.upload_matrix(v, Precision::Storage)?,
                ))
            })
            .transpose()?,
        o: be.upload_matrix(a.o, Precision::Storage)?,
        q_bias: a.q_bias.map(|v| be.upload_vector(v)).transpose()?,
        kv_bias: pair(be, a.kv_bias)?,
        o_bias: a.o_bias.map(|v| be.upload_vector(v)).transpose()?,
        q_norm: a.q_norm.map(|v| be.upload_vector(v)).transpose()?,
        k_norm: a.k_norm.map(|v| be.upload_vector(v)).transpose()?,
        sinks: a.sinks.map(|v| be.upload_vector(v)).transpose()?,
    };
    let ffn = match l.ffn {
        Ffn::Dense(m) => Ffn::Dense(upload_mlp(be, m)?),
        Ffn::Moe(m) => {
            let m = *m;
            let e = m.experts;
            Ffn::Moe(Box::new(Moe {
                experts: MoeExperts {
                    router: be.upload_matrix(e.router, Precision::Full)?,
                    router_bias: e.router_bias.map(|v| be.upload_vector(v)).transpose()?,
                    gate_up: be.upload_experts(e.gate_up)?,
                    down: be.upload_experts(e.down)?,
                    gate_up_bias: e.gate_up_bias.map(|v| be.upload_vector(v)).transpose()?,
                    down_bias: e.down_bias.map(|v| be.upload_vector(v)).transpose()?,
                },
                shared: m.shared.map(|s| upload_mlp(be, s)).transpose()?,
                shared_gate: m
                    .shared_gate
                    .map(|g| be.upload_matrix(g, Precision::Full))
                    .transpose()?,
            }))
        }
    };
    Ok(Layer {
        input_norm: be.upload_vector(l.input_norm)?,
        post_attention_norm: be.upload_vector(l.post_attention_norm)?,
        attn,
        ffn,
    })
}
