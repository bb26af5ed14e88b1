//! Typed, error-reporting access to a Hugging Face `config.json`.
//!
//! Every getter names the key it wanted, so a malformed config gives "config.json: `hidden_size` must be a
//! non-negative integer" rather than a panic or a silent default.

use std::path::Path;

use serde_json::{Map, Value};

use crate::bail;
use crate::dtype::{PublishedDtypes, Shares, WeightDtype};
use crate::error::{Error, Result, ResultExt};
use crate::quant::BlockFormat;
use crate::spec::{RopeScaling, RopeSpec};

pub struct HfConfig {
    map: Map<String, Value>,
}

impl HfConfig {
    /// Reads `config.json` from a model folder, or a config file named directly; for a GGUF file, the
    /// config its metadata stands for (`gguf_model.rs`).
    pub fn load(path: &Path) -> Result<HfConfig> {
        if crate::checkpoint::is_gguf(path) {
            return crate::gguf_model::GgufModel::open(path)?.config();
        }
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        Self::parse(&text).context(file.display())
    }

    pub fn parse(text: &str) -> Result<HfConfig> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(HfConfig { map }),
            Ok(_) => bail!("not a JSON object"),
            Err(e) => bail!("malformed JSON: {e}"),
        }
    }

    pub fn from_map(map: Map<String, Value>) -> HfConfig {
        HfConfig { map }
    }

    /// The checkpoint's `quantization_config`: the formats Volt decodes (FP8 E4M3 with 128x128 block scales,
    /// MXFP4 experts) pass; anything else (GPTQ, AWQ, bitsandbytes...) is an error, never misread weights.
    pub fn check_quantization(&self) -> Result<()> {
        let Some(q) = self.get("quantization_config") else {
            return Ok(());
        };
        match q.get("quant_method").and_then(Value::as_str) {
            Some("mxfp4") => Ok(()),
            Some("fp8") => {
                let block = q.get("weight_block_size").cloned().unwrap_or(Value::Null);
                if block != serde_json::json!([128, 128]) {
                    bail!("`quantization_config`: FP8 with weight_block_size {block} is not supported (only 128x128 blocks)");
                }
                match q.get("fmt").and_then(Value::as_str) {
                    None | Some("e4m3") => Ok(()),
                    Some(other) => bail!("`quantization_config`: FP8 format `{other}` is not supported (only e4m3)"),
                }
            }
            Some(other) => bail!(
                "`quantization_config`: quantization method `{other}` is not supported (Volt loads fp8 with 128x128 blocks and mxfp4)"
            ),
            None => bail!("`quantization_config` has no `quant_method`"),
        }
    }

    /// What config.json alone says the weights are published in: `dtype` (transformers v5) or `torch_dtype`
    /// (v4), f32 when neither is there, as transformers assumes; `quantization_config` `fp8` puts every matrix
    /// but the embedding and head in FP8, `mxfp4` the routed experts in MXFP4 (gpt-oss).
    pub fn published_dtypes(&self) -> Result<PublishedDtypes> {
        self.check_quantization()?;
        let key = if self.has("dtype") { "dtype" } else { "torch_dtype" };
        let float = match self.get(key).and_then(Value::as_str) {
            None | Some("float32") => WeightDtype::F32,
            Some("float16") => WeightDtype::F16,
            Some("bfloat16") => WeightDtype::Bf16,
            Some(other) => {
                bail!("config.json: `{key}` `{other}` is not a dtype Volt reads (float32, float16, bfloat16)")
            }
        };
        let mut published = PublishedDtypes::uniform(float);
        match self
            .get("quantization_config")
            .and_then(|q| q.get("quant_method"))
            .and_then(Value::as_str)
        {
            Some("fp8") => {
                (published.experts, published.other) = (Shares::one(WeightDtype::Fp8), Shares::one(WeightDtype::Fp8))
            }
            Some("mxfp4") => published.experts = Shares::one(WeightDtype::Block(BlockFormat::Mxfp4)),
            _ => {}
        }
        Ok(published)
    }

    /// A value that is present and not null.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| Error::msg(format!("`{key}` is missing")))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| as_usize(v).ok_or_else(|| Error::msg(format!("`{key}` must be a non-negative integer"))))
            .transpose()
    }

    /// The first of several spellings of one key that is present (transformers renames keys between
    /// versions and keeps the old name as an alias, e.g. `num_experts` / `num_local_experts`).
    pub fn usize_any(&self, keys: &[&str]) -> Result<usize> {
        for key in keys {
            if let Some(v) = self.opt_usize(key)? {
                return Ok(v);
            }
        }
        bail!("`{}` is missing", keys.join("` / `"))
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(key)?.unwrap_or(default))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| Error::msg(format!("`{key}` must be a number")))
            })
            .transpose()
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| Error::msg(format!("`{key}` must be true or false"))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| Error::msg(format!("`{key}` must be a string")))
            })
            .transpose()
    }

    /// A list of integers (`mlp_only_layers`), empty when absent.
    pub fn usize_list(&self, key: &str) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    as_usize(v).ok_or_else(|| Error::msg(format!("`{key}` must be a list of non-negative integers")))
                })
                .collect(),
            Some(_) => bail!("`{key}` must be a list"),
        }
    }

    /// `layer_types` ("sliding_attention" / "full_attention"), checked against the layer count.
    pub fn layer_types(&self, n_layers: usize) -> Result<Option<Vec<bool>>> {
        let Some(v) = self.get("layer_types") else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            bail!("`layer_types` must be a list")
        };
        if items.len() != n_layers {
            bail!("`layer_types` has {} entries for {n_layers} layers", items.len());
        }
        items
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => bail!("`layer_types` entries must be \"sliding_attention\" or \"full_attention\", found {t}"),
            })
            .collect::<Result<Vec<bool>>>()
            .map(Some)
    }

    /// `eos_token_id` as an int or a list of ints.
    pub fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    as_usize(v)
                        .map(|x| x as u32)
                        .ok_or_else(|| Error::msg(format!("`{key}` must hold token ids")))
                })
                .collect(),
            Some(v) => as_usize(v)
                .map(|x| vec![x as u32])
                .ok_or_else(|| Error::msg(format!("`{key}` must be a token id"))),
        }
    }

    /// RoPE for a layer of the given type, from either spelling transformers has used:
    /// `rope_theta` + `rope_scaling` (v4), or `rope_parameters` (v5), which may also be keyed by layer type.
    pub fn rope(&self, default_theta: f64, layer_type: &str) -> Result<RopeSpec> {
        let params: Option<&Map<String, Value>> = match self.get("rope_parameters") {
            None => None,
            Some(Value::Object(p)) => match p.get(layer_type) {
                Some(Value::Object(per_type)) => Some(per_type),
                _ => Some(p),
            },
            Some(_) => bail!("`rope_parameters` must be an object"),
        };
        let scaling = match (params, self.get("rope_scaling")) {
            (Some(p), _) => Some(p),
            (None, Some(Value::Object(s))) => Some(s),
            (None, Some(_)) => bail!("`rope_scaling` must be an object"),
            (None, None) => None,
        };
        let theta = match params.and_then(|p| p.get("rope_theta")) {
            Some(v) => v.as_f64().ok_or_else(|| Error::msg("`rope_theta` must be a number"))?,
            None => self.f64_or("rope_theta", default_theta)?,
        };
        let scaling = match scaling {
            None => RopeScaling::None,
            Some(s) => self.rope_scaling(s).context("rope scaling")?,
        };
        Ok(RopeSpec { theta, scaling })
    }

    fn rope_scaling(&self, s: &Map<String, Value>) -> Result<RopeScaling> {
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let num = |key: &str| -> Result<Option<f64>> {
            match s.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| Error::msg(format!("`{key}` must be a number"))),
            }
        };
        let need =
            |key: &str| -> Result<f64> { num(key)?.ok_or_else(|| Error::msg(format!("{kind} scaling needs `{key}`"))) };
        let original_max = || -> Result<f64> {
            match num("original_max_position_embeddings")? {
                Some(v) => Ok(v),
                None => Ok(self.usize("max_position_embeddings")? as f64),
            }
        };
        Ok(match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: need("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position_embeddings: need("original_max_position_embeddings")?,
            },
            "yarn" => RopeScaling::Yarn {
                factor: need("factor")?,
                original_max_position_embeddings: original_max()?,
                beta_fast: num("beta_fast")?.unwrap_or(32.0),
                beta_slow: num("beta_slow")?.unwrap_or(1.0),
                mscale: num("mscale")?,
                mscale_all_dim: num("mscale_all_dim")?,
                attention_factor: num("attention_factor")?,
                truncate: match s.get("truncate") {
                    None | Some(Value::Null) => true,
                    Some(v) => v
                        .as_bool()
                        .ok_or_else(|| Error::msg("`truncate` must be true or false"))?,
                },
            },
            other => {
                bail!("unsupported rope type `{other}` (supported: default, linear, llama3, yarn)")
            }
        })
    }
}

fn as_usize(v: &Value) -> Option<usize> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(|x| x as usize)
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as usize)),
        _ => None,
    }
}
