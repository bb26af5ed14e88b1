//! `volt perplexity` and `volt route-stats`: evaluation over a text file.

use serde_json::{json, Value};
use volt_runtime::eval;
use volt_runtime::routing_stats::{LayerStats, ALPHA_EP, ALPHA_PEP, ALPHA_ST};
use volt_runtime::session::Session;
use volt_runtime::tokenizer::Tokenizer;
use volt_runtime::{bail, Result, ResultExt};

use crate::backends;
use crate::cli::Flags;

/// Loads the model and tokenizes `--file`.
fn open_with_text(flags: &Flags) -> Result<(Box<dyn Session>, Vec<u32>)> {
    let Some(file) = flags.str("file") else {
        bail!("--file TEXT is required")
    };
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    let dir = crate::model_path(flags.str("model"))?;
    let Some(tokenizer) = Tokenizer::open(&dir)? else {
        bail!("{} has no tokenizer.json: evaluating a text needs one", dir.display());
    };
    let ids = tokenizer.encode(&text, false)?;
    if ids.is_empty() {
        bail!("empty input: {file} has no text");
    }
    let session = backends::open(flags, &dir, 1, None)?;
    Ok((session, ids))
}

pub fn perplexity(args: &[String]) -> Result<()> {
    let flags = Flags::parse(
        args,
        &["model", "file", "backend", "dtype", "kv-dtype", "context", "stride"],
        &["json"],
    )?;
    let (mut session, ids) = open_with_text(&flags)?;
    let context = flags.get_or("context", session.spec().max_position_embeddings)?;
    let stride = flags.get_or("stride", (context / 2).max(1))?;
    let started = std::time::Instant::now();
    let p = eval::perplexity(session.as_mut(), &ids, context, stride)?;
    if flags.has("json") {
        println!("{}", json!({ "ppl": p.ppl, "tokens": p.tokens }));
    } else {
        println!(
            "perplexity {:.4} over {} tokens (mean NLL {:.4} nats; window {context}, stride {stride}; {:.1}s on {})",
            p.ppl,
            p.tokens,
            p.mean_nll,
            started.elapsed().as_secs_f64(),
            session.describe()
        );
    }
    Ok(())
}

pub fn route_stats(args: &[String]) -> Result<()> {
    let flags = Flags::parse(
        args,
        &[
            "model",
            "file",
            "backend",
            "dtype",
            "kv-dtype",
            "context",
            "ep-groups",
            "partitions",
        ],
        &["json"],
    )?;
    let (mut session, ids) = open_with_text(&flags)?;
    let context = flags.get_or("context", session.spec().max_position_embeddings)?;
    let groups = flags.get_or("ep-groups", 1usize)?;
    let partitions = flags.get_or("partitions", 1usize)?;
    let layers = eval::collect_routing(session.as_mut(), &ids, context)?;
    if layers.is_empty() {
        bail!("the model has no MoE layers");
    }
    let mut out = Vec::new();
    for (layer, acc) in &layers {
        let s = acc
            .stats(groups, partitions)
            .with_context(|| format!("layer {layer}"))?;
        out.push((*layer, s));
    }
    if flags.has("json") {
        let layers: Vec<Value> = out.iter().map(|(l, s)| layer_json(*l, s)).collect();
        println!(
            "{}",
            json!({ "tokens": ids.len(), "ep_groups": groups, "partitions": partitions, "layers": layers })
        );
    } else {
        print_report(&out, ids.len(), groups, partitions);
    }
    Ok(())
}

fn layer_json(layer: usize, s: &LayerStats) -> Value {
    let mean_experts = s
        .experts_per_token
        .iter()
        .enumerate()
        .map(|(n, c)| n * c)
        .sum::<usize>() as f64
        / s.tokens.max(1) as f64;
    json!({
        "layer": layer,
        "tokens": s.tokens,
        "f": s.f,
        "P": s.p,
        "load": s.load,
        "L_ST": { "raw": s.l_st, "alpha": ALPHA_ST, "scaled": ALPHA_ST * s.l_st },
        "L_EP": { "raw": s.l_ep(), "alpha": ALPHA_EP, "scaled": ALPHA_EP * s.l_ep(), "groups": s.l_ep_groups },
        "L_PEP": { "raw": s.l_pep(), "alpha": ALPHA_PEP, "scaled": ALPHA_PEP * s.l_pep(), "partitions": s.l_pep_partitions },
        "experts_per_token": s.experts_per_token,
        "mean_experts_per_token": mean_experts,
    })
}

fn print_report(layers: &[(usize, LayerStats)], tokens: usize, groups: usize, partitions: usize) {
    println!("routing over {tokens} tokens; {groups} EP group(s) x {partitions} partition(s); f_i = share of tokens whose top expert is i, P_i = mean router probability");
    for (l, s) in layers {
        println!("\nlayer {l}");
        println!("  expert      f_i      P_i   load (share of tokens activating it)");
        for i in 0..s.f.len() {
            println!("  {i:>6}  {:>7.4}  {:>7.4}  {:>7.4}", s.f[i], s.p[i], s.load[i]);
        }
        println!(
            "  L_ST  = {:.6}  (x alpha {ALPHA_ST:e} = {:.3e})",
            s.l_st,
            ALPHA_ST * s.l_st
        );
        println!(
            "  L_EP  = {:.6}  (x alpha {ALPHA_EP:e} = {:.3e}; per group {:?})",
            s.l_ep(),
            ALPHA_EP * s.l_ep(),
            round(&s.l_ep_groups)
        );
        println!(
            "  L_PEP = {:.6}  (x alpha {ALPHA_PEP:e} = {:.3e}; per partition {:?})",
            s.l_pep(),
            ALPHA_PEP * s.l_pep(),
            round(&s.l_pep_partitions)
        );
        let hist: Vec<String> = s
            .experts_per_token
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(n, c)| format!("{n}: {c}"))
            .collect();
        println!("  experts per token: {}", hist.join(", "));
    }
}

fn round(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 1e4).round() / 1e4).collect()
}
