//! A GGUF file as a model, the way transformers reads one: its `{arch}.*` metadata as the Hugging Face
//! config the families read (`config`), its tensors under the Hugging Face names the families ask for
//! (`tensor`, `vector`), and its tokenizer and chat template (`tokenizer.rs`, `chat_template.rs`).
//!
//! llama.cpp's converter permutes the rows of `attn_q` and `attn_k` of the `llama` architecture (Llama,
//! Mistral, Mixtral) for its interleaved RoPE; they are put back in Hugging Face order here, as whole rows,
//! so the quantized blocks are moved, not decoded. Stacked experts (`ffn_{gate,up,down}_exps`) become the
//! fused `mlp.experts.gate_up_proj` / `down_proj` of transformers v5.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::bail;
use crate::checkpoint::HostTensor;
use crate::error::{Result, ResultExt};
use crate::gguf::{GgufFile, Value as Meta};
use crate::hf_config::HfConfig;
use crate::tensor::StoredTensor;

/// The GGUF architectures Volt reads, and the Hugging Face `model_type` of each.
const ARCHITECTURES: &[(&str, &str)] = &[
    ("llama", "llama"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen3"),
    ("qwen2moe", "qwen2_moe"),
    ("qwen3moe", "qwen3_moe"),
];

pub struct GgufModel {
    file: GgufFile,
    arch: String,
}

/// Where a Hugging Face tensor comes from in the file.
enum Source {
    Tensor(String),
    /// `attn_q` / `attn_k` of the llama architecture: rows permuted per head of `head_dim`.
    Permuted(String),
    /// `mlp.experts.gate_up_proj`: each expert's gate rows, then its up rows.
    GateUp {
        gate: String,
        up: String,
    },
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<GgufModel> {
        let file = GgufFile::open(path)?;
        let arch = match file.get("general.architecture").and_then(Meta::as_str) {
            Some(a) => a.to_string(),
            None => bail!("{}: no general.architecture", path.display()),
        };
        if !ARCHITECTURES.iter().any(|(a, _)| *a == arch) {
            let known: Vec<&str> = ARCHITECTURES.iter().map(|(a, _)| *a).collect();
            bail!(
                "{}: GGUF architecture `{arch}` is not one Volt reads ({})",
                path.display(),
                known.join(", ")
            );
        }
        // llama.cpp writes Mixtral as `llama` with experts; no fixture checks that layout yet.
        if arch == "llama" && file.get("llama.expert_count").and_then(Meta::as_u64).unwrap_or(0) > 0 {
            bail!(
                "{}: Mixtral-style GGUF files (`llama` with experts) are not supported yet",
                path.display()
            );
        }
        if file.tensor("rope_freqs.weight").is_some() {
            bail!(
                "{}: per-dimension RoPE frequency factors (`rope_freqs`, Llama 3.1 scaling) are not supported yet",
                path.display()
            );
        }
        Ok(GgufModel { file, arch })
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    fn meta(&self, key: &str) -> Option<&Meta> {
        self.file.get(&format!("{}.{key}", self.arch))
    }

    fn meta_u64(&self, key: &str) -> Result<u64> {
        match self.meta(key).and_then(Meta::as_u64) {
            Some(v) => Ok(v),
            None => bail!("GGUF metadata `{}.{key}` is missing or not an integer", self.arch),
        }
    }

    /// The config.json transformers would build for this file.
    pub fn config(&self) -> Result<HfConfig> {
        let mut c = Map::new();
        let model_type = ARCHITECTURES
            .iter()
            .find(|(a, _)| *a == self.arch)
            .map_or("", |(_, t)| t);
        let experts = self.meta("expert_count").and_then(Meta::as_u64).unwrap_or(0);
        c.insert("model_type".into(), json!(model_type));
        let heads = self.meta_u64("attention.head_count")?;
        for (hf, key) in [
            ("hidden_size", "embedding_length"),
            ("num_hidden_layers", "block_count"),
            ("num_attention_heads", "attention.head_count"),
            ("max_position_embeddings", "context_length"),
        ] {
            c.insert(hf.into(), json!(self.meta_u64(key)?));
        }
        let optional = [
            ("num_key_value_heads", "attention.head_count_kv"),
            ("head_dim", "attention.key_length"),
            ("sliding_window", "attention.sliding_window"),
            ("num_experts_per_tok", "expert_used_count"),
            ("moe_intermediate_size", "expert_feed_forward_length"),
            ("shared_expert_intermediate_size", "expert_shared_feed_forward_length"),
        ];
        for (hf, key) in optional {
            if let Some(v) = self.meta(key).and_then(Meta::as_u64) {
                c.insert(hf.into(), json!(v));
            }
        }
        c.entry("num_key_value_heads").or_insert(json!(heads));
        // The dense FFN width.
        if let Some(ff) = self.meta("feed_forward_length").and_then(Meta::as_u64) {
            c.insert("intermediate_size".into(), json!(ff));
        }
        if experts > 0 {
            c.insert("num_experts".into(), json!(experts));
            c.insert("num_local_experts".into(), json!(experts));
        }
        if let Some(eps) = self.meta("attention.layer_norm_rms_epsilon").and_then(Meta::as_f64) {
            c.insert("rms_norm_eps".into(), json!(eps));
        }
        if let Some(theta) = self.meta("rope.freq_base").and_then(Meta::as_f64) {
            c.insert("rope_theta".into(), json!(theta));
        }
        if let Some(scaling) = self.rope_scaling()? {
            c.insert("rope_scaling".into(), scaling);
        }
        // What llama.cpp's graphs hard-code per architecture: top-k renormalisation of the routed weights.
        let renormalize = matches!(self.arch.as_str(), "qwen3moe");
        c.insert("norm_topk_prob".into(), json!(renormalize));
        let vocab = match self.meta("vocab_size").and_then(Meta::as_u64) {
            Some(v) => v as usize,
            None => match self.file.get("tokenizer.ggml.tokens") {
                Some(Meta::Array(tokens)) => tokens.len(),
                _ => bail!(
                    "GGUF metadata states no vocabulary size (`{}.vocab_size` or the tokens)",
                    self.arch
                ),
            },
        };
        c.insert("vocab_size".into(), json!(vocab));
        // llama.cpp writes the output projection only when it is not the embedding matrix.
        c.insert(
            "tie_word_embeddings".into(),
            json!(self.file.tensor("output.weight").is_none()),
        );
        for (hf, key) in [("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")] {
            if let Some(id) = self.file.get(&format!("tokenizer.ggml.{key}")).and_then(Meta::as_u64) {
                c.insert(hf.into(), json!(id));
            }
        }
        Ok(HfConfig::from_map(c))
    }

    /// `rope.scaling.*` as transformers' `rope_scaling`.
    fn rope_scaling(&self) -> Result<Option<Value>> {
        let Some(kind) = self.meta("rope.scaling.type").and_then(Meta::as_str) else {
            return Ok(None);
        };
        let num = |key: &str| self.meta(&format!("rope.scaling.{key}")).and_then(Meta::as_f64);
        let mut s = Map::new();
        match kind {
            "none" => return Ok(None),
            "linear" | "yarn" => {
                s.insert("rope_type".into(), json!(kind));
                let Some(factor) = num("factor") else {
                    bail!("GGUF metadata: {kind} RoPE scaling without a factor");
                };
                s.insert("factor".into(), json!(factor));
            }
            other => bail!("GGUF RoPE scaling `{other}` is not supported (none, linear, yarn)"),
        }
        for (hf, key) in [
            ("original_max_position_embeddings", "original_context_length"),
            ("beta_fast", "yarn_beta_fast"),
            ("beta_slow", "yarn_beta_slow"),
            ("attention_factor", "attn_factor"),
        ] {
            if let Some(v) = num(key) {
                s.insert(hf.into(), json!(v));
            }
        }
        Ok(Some(Value::Object(s)))
    }

    /// Where the Hugging Face tensor `name` lies in the file, None for a name the mapping does not know.
    fn source(&self, name: &str) -> Option<Source> {
        let global = match name {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(g) = global {
            return Some(Source::Tensor(g.into()));
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let blk = |t: &str| format!("blk.{layer}.{t}");
        if rest == "mlp.experts.gate_up_proj" {
            return Some(Source::GateUp {
                gate: blk("ffn_gate_exps.weight"),
                up: blk("ffn_up_exps.weight"),
            });
        }
        let (stem, kind) = rest.rsplit_once('.')?;
        let mapped = match stem {
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "ffn_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "self_attn.q_norm" => "attn_q_norm",
            "self_attn.k_norm" => "attn_k_norm",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            "mlp.gate" => "ffn_gate_inp",
            "mlp.shared_expert.gate_proj" | "mlp.shared_experts.gate_proj" => "ffn_gate_shexp",
            "mlp.shared_expert.up_proj" | "mlp.shared_experts.up_proj" => "ffn_up_shexp",
            "mlp.shared_expert.down_proj" | "mlp.shared_experts.down_proj" => "ffn_down_shexp",
            "mlp.shared_expert_gate" | "mlp.shared_experts_gate" => "ffn_gate_inp_shexp",
            "mlp.experts" if kind == "down_proj" => return Some(Source::Tensor(blk("ffn_down_exps.weight"))),
            _ => return None,
        };
        let gguf = blk(&format!("{mapped}.{kind}"));
        let permuted = self.arch == "llama" && matches!(mapped, "attn_q" | "attn_k");
        Some(if permuted {
            Source::Permuted(gguf)
        } else {
            Source::Tensor(gguf)
        })
    }

    pub fn has(&self, name: &str) -> bool {
        match self.source(name) {
            Some(Source::Tensor(t) | Source::Permuted(t)) => self.file.tensor(&t).is_some(),
            Some(Source::GateUp { gate, up }) => self.file.tensor(&gate).is_some() && self.file.tensor(&up).is_some(),
            None => false,
        }
    }

    /// The stored tensor `gguf` with its shape checked (a 1-D tensor may stand for [1, n]).
    fn stored(&self, hf: &str, gguf: &str, shape: &[usize]) -> Result<StoredTensor> {
        let (info, map) = self.file.tensor_view(gguf).with_context(|| format!("`{hf}`"))?;
        let squeezed: Vec<usize> = shape.iter().copied().filter(|&d| d != 1).collect();
        if info.shape != shape && info.shape != squeezed {
            bail!(
                "tensor `{gguf}` (for `{hf}`) has shape {:?}, expected {shape:?}",
                info.shape
            );
        }
        StoredTensor::mapped(shape.to_vec(), info.format, map, info.start, info.len)
    }

    /// A weight matrix as stored, under its Hugging Face name, after checking its shape.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<StoredTensor> {
        match self.source(name) {
            None => bail!("tensor `{name}` has no counterpart in the GGUF file"),
            Some(Source::Tensor(t)) => self.stored(name, &t, shape),
            Some(Source::Permuted(t)) => {
                let head_dim = self.head_dim()?;
                let t = self.stored(name, &t, shape)?;
                t.select_rows(&unpermuted_rows(t.rows(), head_dim))
            }
            Some(Source::GateUp { gate, up }) => {
                let &[e, two_i, h] = shape else {
                    bail!("`{name}` wants shape {shape:?}; expected [experts, 2 x intermediate, hidden]");
                };
                let i = two_i / 2;
                let gate = self.stored(name, &gate, &[e, i, h])?;
                let up = self.stored(name, &up, &[e, i, h])?;
                // Rows of [gate; up] stacked, reordered to each expert's gate rows then its up rows.
                let both = StoredTensor::stack(vec![gate, up], vec![2, e, i, h])?;
                let order: Vec<usize> = (0..e)
                    .flat_map(|x| (0..2).flat_map(move |half| (0..i).map(move |j| (half * e + x) * i + j)))
                    .collect();
                both.select_rows(&order)?.reshape(shape.to_vec())
            }
        }
    }

    /// A vector (norm weights, biases) widened to f32.
    pub fn vector(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.tensor(name, shape)?;
        Ok(HostTensor::new(shape.to_vec(), t.to_f32()))
    }

    fn head_dim(&self) -> Result<usize> {
        match self.meta("attention.key_length").and_then(Meta::as_u64) {
            Some(d) => Ok(d as usize),
            None => Ok((self.meta_u64("embedding_length")? / self.meta_u64("attention.head_count")?) as usize),
        }
    }
}

/// The inverse of llama.cpp's Q/K permutation: within each head of `head_dim` rows, Hugging Face row
/// `t * head_dim/2 + i` is GGUF row `2i + t`. Returns, for each Hugging Face row, its GGUF row.
fn unpermuted_rows(rows: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..rows)
        .map(|r| {
            let (head, within) = (r / head_dim, r % head_dim);
            head * head_dim + 2 * (within % half) + within / half
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermuting_inverts_llama_cpps_permutation() {
        // llama.cpp: w.reshape(H, 2, hd/2, in).swapaxes(1, 2): GGUF row 2i + t of a head is HF row t*hd/2 + i.
        let (heads, hd) = (3, 8);
        let mut gguf_of_hf = vec![0; heads * hd];
        for h in 0..heads {
            for t in 0..2 {
                for i in 0..hd / 2 {
                    gguf_of_hf[h * hd + t * hd / 2 + i] = h * hd + 2 * i + t;
                }
            }
        }
        assert_eq!(unpermuted_rows(heads * hd, hd), gguf_of_hf);
    }
}
