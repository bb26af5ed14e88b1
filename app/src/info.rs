//! `volt info`: parameter counts, the per-layer layout and KV-cache bytes, from a model folder or a
//! config.json alone.

use serde_json::{json, Value};
use volt_runtime::checkpoint::Checkpoint;
use volt_runtime::dtype::{KvDtype, WeightDtype};
use volt_runtime::hf_config::HfConfig;
use volt_runtime::spec::{FfnSpec, ModelSpec, Selection};
use volt_runtime::{models, Result, ResultExt};

use crate::backends::{published_dtypes, weight_bytes, BackendChoice, BackendKind};
use crate::cli::Flags;

pub fn info(args: &[String]) -> Result<()> {
    let flags = Flags::parse(args, &["model", "context", "dtype", "kv-dtype", "backend"], &["json"])?;
    let path = crate::model_path(flags.str("model"))?;
    let config = HfConfig::load(&path)?;
    let spec = models::family_of(&config)?.spec(&config).context("config.json")?;
    spec.validate().context("config.json")?;
    let context = flags.get_or("context", spec.max_position_embeddings)?;
    if context == 0 {
        volt_runtime::bail!("--context must be at least 1");
    }
    // The KV dtype of `--backend`, else of the GPU backends (the CPU reference keeps f32).
    let backend = flags
        .str("backend")
        .map(|b| BackendChoice::parse(b).map(BackendChoice::resolve))
        .transpose()?;
    let kv = match flags.str("kv-dtype") {
        Some(k) => KvDtype::parse(k)?,
        None => backend.unwrap_or(BackendKind::Wgpu).default_kv_dtype(),
    };
    let dtype = flags.str("dtype").map(WeightDtype::parse).transpose()?;
    let mut report = report(&spec, context, kv);
    // The weights as published (a config.json alone says it in `dtype` and `quantization_config`), kept
    // at `--dtype` by `--backend` (without it, by a backend that computes from every dtype).
    let published = published_dtypes(&path, &config)?;
    let decodes = backend.and_then(BackendKind::decodes);
    report["weight_bytes"] = json!(weight_bytes(&spec, &published, dtype, decodes));
    let checkpoint = path.is_dir() || volt_runtime::checkpoint::is_gguf(&path);
    report["dtype"] = match checkpoint {
        true => json!(Checkpoint::open(&path)?.storage_dtype().name()),
        false => Value::Null,
    };
    if flags.has("json") {
        println!("{report}");
    } else {
        print_table(&spec, &report);
    }
    Ok(())
}

fn report(spec: &ModelSpec, context: usize, kv_dtype: KvDtype) -> Value {
    let (total, active) = spec.parameter_counts();
    let layers: Vec<Value> = spec
        .layers
        .iter()
        .map(|l| {
            let a = &l.attn;
            let (ffn, experts, shared, top_k) = match &l.ffn {
                FfnSpec::Dense { .. } => ("dense", 0, 0, 0),
                FfnSpec::Moe(m) => (
                    "moe",
                    m.n_experts,
                    m.shared.as_ref().map_or(0, |s| s.count),
                    m.router.selection.max_experts(),
                ),
            };
            let mut layer = json!({
                "attention": if a.window().is_some() { "sliding" } else { "full" },
                "window": a.window(),
                "kv_source": a.kv_source,
                "ffn": ffn,
                "experts": experts,
                "shared_experts": shared,
                "top_k": top_k,
            });
            if let FfnSpec::Moe(m) = &l.ffn {
                if let Selection::TopP { p, min_experts, .. } = m.router.selection {
                    layer["top_p"] = json!(p);
                    layer["min_experts"] = json!(min_experts);
                }
            }
            layer
        })
        .collect();
    let kv = spec.kv_bytes(context, kv_dtype);
    let baseline = spec.kv_bytes_baseline(context, kv_dtype);
    json!({
        "family": spec.family,
        "params_total": total,
        "params_active": active,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "context": context,
        "layers": layers,
        "kv_dtype": kv_dtype.name(),
        "kv_bytes": kv,
        "kv_bytes_baseline": baseline,
        "kv_reduction": 1.0 - kv as f64 / baseline as f64,
    })
}

fn print_table(spec: &ModelSpec, r: &Value) {
    let m = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1e6;
    println!("family            {}", spec.family);
    println!(
        "parameters        {:.3} M total, {:.3} M active per token",
        m(&r["params_total"]),
        m(&r["params_active"])
    );
    println!("vocab / hidden    {} / {}", spec.vocab_size, spec.hidden_size);
    let weights = m(&r["weight_bytes"]) * 1e6 / 1048576.0;
    match r["dtype"].as_str() {
        Some(dtype) => println!("weights           {weights:.2} MiB (published in {dtype})"),
        None => println!("weights           {weights:.2} MiB"),
    }
    println!("layer  attention       kv_source  ffn");
    for (i, l) in r["layers"].as_array().into_iter().flatten().enumerate() {
        let attn = match l["window"].as_u64() {
            Some(w) => format!("sliding {w}"),
            None => "full".to_string(),
        };
        let ffn = match l["ffn"].as_str() {
            Some("moe") => format!(
                "moe {} experts, top {}, {} shared",
                l["experts"], l["top_k"], l["shared_experts"]
            ),
            _ => "dense".to_string(),
        };
        println!("{i:>5}  {attn:<14}  {:>9}  {ffn}", l["kv_source"]);
    }
    println!(
        "kv cache          {:.2} MiB per sequence at {} tokens in {} ({:.2} MiB if every layer were full attention with its own KV: {:.1}% less)",
        m(&r["kv_bytes"]) * 1e6 / 1048576.0,
        r["context"],
        r["kv_dtype"].as_str().unwrap_or("f16"),
        m(&r["kv_bytes_baseline"]) * 1e6 / 1048576.0,
        r["kv_reduction"].as_f64().unwrap_or(0.0) * 100.0
    );
}
