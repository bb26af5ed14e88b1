#!/usr/bin/env python3
"""Evaluate a trained volt checkpoint with the PyTorch reference and write its model card.

    python3 tools/eval_volt.py --corpus /tmp/volt_build/corpus --model assets/volt-tiny [--write-card]

Loads MODEL/model.safetensors exactly as stored (bf16) into a float32 reference model
(explicit attention, the reference's expert loop) and measures:
* validation loss / perplexity (CORPUS/valid.jsonl, the last ~5% of the Austen chapters),
* held-out perplexity on prose the model never saw (CORPUS/heldout.jsonl, Moby Dick),
  per token and in bits per character,
* routing: experts per token (top-p histogram) and expert load per MoE layer,
* sample generations (seeded nucleus sampling, no KV cache) and a greedy continuation
  with token ids that a runtime can reproduce exactly.
Results are added to MODEL/train_log.json under "eval"; --write-card writes MODEL/README.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from volt_reference import FULL, VoltConfig, VoltForCausalLM  # noqa: E402

PROMPTS = [
    "It is a truth universally acknowledged, that",
    "Mrs. Bennet was",
    "\"My dear Emma,\" said Mr. Knightley,",
]
GREEDY_PROMPT = "Elizabeth could not"


def docs(path):
    return [json.loads(line)["text"] for line in open(path, encoding="utf-8")]


@torch.no_grad()
def stream_loss(model, tok, texts, seq_len):
    """Next-token loss over each document (bos + tokens) cut into windows of seq_len + 1
    tokens that overlap by one (every token after the first is predicted exactly once)."""
    total, count, chars = 0.0, 0, 0
    hist = collections.Counter()
    loads = None
    for text in texts:
        ids = torch.tensor(tok.encode(text).ids)
        chars += len(text)
        for s in range(0, len(ids) - 1, seq_len):
            x = ids[s:s + seq_len]
            y = ids[s + 1:s + seq_len + 1]
            x = x[:len(y)]
            logits = model(x)
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            count += len(y)
            rs = [m.last_routing for m in model.moe_layers()]
            for r in rs:
                hist.update(r.count.tolist())
            sel = torch.stack([(r.weights > 0).float().sum(0) for r in rs])  # [layers, E]
            loads = sel if loads is None else loads + sel
    return total / count, count, chars, hist, loads


@torch.no_grad()
def sample(model, tok, prompt, n, temperature, top_p, seed):
    g = torch.Generator().manual_seed(seed)
    ids = tok.encode(prompt).ids
    prompt_len = len(ids)
    for _ in range(n):
        logits = model(torch.tensor(ids[-model.config.max_position_embeddings:]))[-1] / temperature
        probs = torch.softmax(logits.double(), -1)
        sp, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sp, 0) - sp < top_p
        sp = sp * keep
        nxt = int(order[torch.multinomial(sp / sp.sum(), 1, generator=g)])
        if nxt in (1, 3):  # <|endoftext|>, <|im_end|>
            break
        ids.append(nxt)
    return continuation(tok, ids, prompt_len)


def continuation(tok, ids, prompt_len):
    """Text of ids[prompt_len:] as it follows the prompt (decoding the new ids alone would
    lose the leading space to the decoder's Strip)."""
    full = tok.decode(ids, skip_special_tokens=True)
    head = tok.decode(ids[:prompt_len], skip_special_tokens=True)
    assert full.startswith(head)
    return full[len(head):]


def count_params(model, avg_experts):
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    n_moe = len(model.moe_layers())
    routed = n_moe * cfg.n_routed_experts * expert
    active = total - routed + n_moe * avg_experts * expert
    embed = model.model.embed_tokens.weight.numel()
    return {"total": total, "routed_experts": routed, "active_per_token": active,
            "active_per_token_without_embedding": active - embed, "embedding": embed,
            "lm_head": 0 if cfg.tie_word_embeddings else model.lm_head.weight.numel()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-card", action="store_true")
    ap.add_argument("--total-wall-s", type=float, default=None)
    ap.add_argument("--sample-tokens", type=int, default=120)
    ap.add_argument("--card-only", action="store_true", help="rewrite README.md from train_log.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    out = Path(args.model)
    if args.card_only:
        write_card(out, json.loads((out / "train_log.json").read_text()))
        return
    model = VoltForCausalLM.load(out)  # bf16 as stored -> float32
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    corpus = Path(args.corpus)

    res = {}
    for name in ("valid", "heldout"):
        loss, n_tok, n_chars, hist, loads = stream_loss(model, tok, docs(corpus / f"{name}.jsonl"), args.seq_len)
        n_assign = sum(hist.values())
        res[name] = {
            "loss": loss, "ppl": math.exp(loss), "tokens": n_tok, "chars": n_chars,
            "bits_per_char": loss * n_tok / n_chars / math.log(2),
            "experts_per_token_hist": {str(k): v for k, v in sorted(hist.items())},
            "experts_per_token_mean": sum(k * v for k, v in hist.items()) / n_assign,
            "expert_load_per_layer": (loads / loads.sum(1, keepdim=True)).tolist(),
        }
        print(f"{name}: loss {loss:.4f} ppl {math.exp(loss):.2f} over {n_tok} tokens, "
              f"{res[name]['bits_per_char']:.3f} bits/char, experts/token {dict(sorted(hist.items()))}", flush=True)

    samples = []
    for i, p in enumerate(PROMPTS):
        text = sample(model, tok, p, args.sample_tokens, 0.8, 0.95, seed=i)
        samples.append({"prompt": p, "completion": text, "temperature": 0.8, "top_p": 0.95, "seed": i})
        print(f"--- {p}{text}\n", flush=True)
    g_ids = tok.encode(GREEDY_PROMPT).ids
    g_out = model.greedy(g_ids, 40)
    greedy = {"prompt": GREEDY_PROMPT, "prompt_ids": g_ids, "greedy_ids": g_out,
              "text": continuation(tok, g_ids + g_out, len(g_ids))}
    print(f"--- greedy: {GREEDY_PROMPT}{greedy['text']}", flush=True)

    params = count_params(model, res["valid"]["experts_per_token_mean"])
    log_path = out / "train_log.json"
    log = json.loads(log_path.read_text())
    log["eval"] = {"valid": res["valid"], "heldout": res["heldout"], "samples": samples, "greedy": greedy,
                   "params": params, "eval_wall_s": time.time() - t0, "total_wall_s": args.total_wall_s,
                   "note": "reference (tools/volt_reference.py) in float32 on the stored bf16 weights"}
    log_path.write_text(json.dumps(log, indent=1) + "\n")
    if args.write_card:
        write_card(out, log)


def write_card(out, log):
    cfg = log["config"]
    s = log["summary"]
    ev = log["eval"]
    a = log["args"]
    p = ev["params"]
    v, h = ev["valid"], ev["heldout"]
    vc = VoltConfig(**cfg)
    layer_kinds = "".join("F" if t == FULL else "S" for t in vc.layer_types)
    reuse = ", ".join(f"layer {i} reuses layer {src}'s KV" for i, src in enumerate(vc.kv_sources) if src != i)
    moe = [i for i in range(vc.num_hidden_layers) if vc.is_moe(i)]
    moe_txt = f"layers {moe[0]}–{moe[-1]}" if len(moe) > 1 else f"layer {moe[0]}"
    dense = vc.first_k_dense_layers
    dense_txt = (f"layer 0 dense SwiGLU {vc.intermediate_size}; " if dense == 1 else
                 f"layers 0–{dense - 1} dense SwiGLU {vc.intermediate_size}; " if dense > 1 else "")
    gqa = f"GQA {vc.num_attention_heads // vc.num_key_value_heads}:1"
    n_merges = len(json.loads((out / "tokenizer.json").read_text())["model"]["merges"])

    def quote(text):
        return "\n".join("> " + line if line else ">" for line in text.split("\n"))

    tr = log["train"]
    total_wall = ev.get("total_wall_s")
    paces = [(b["elapsed_s"] - a_["elapsed_s"]) / (b["step"] - a_["step"]) for a_, b in zip(tr, tr[1:])]
    pace_txt = (f"The pace varied between {min(paces):.1f} and {max(paces):.1f} s/step over the run "
                f"(other jobs shared the 2 cores at times).") if paces else ""
    samples = "\n\n".join(
        f"**Prompt:** {x['prompt']!r} (temperature {x['temperature']}, top-p {x['top_p']}, seed {x['seed']})\n\n"
        + quote(x["prompt"] + x["completion"]) for x in ev["samples"])
    hist = v["experts_per_token_hist"]
    hist_txt = ", ".join(f"{k} experts: {100 * n / sum(hist.values()):.1f}%" for k, n in hist.items())
    hhist = h["experts_per_token_hist"]
    hhist_txt = ", ".join(f"{k}: {100 * n / sum(hhist.values()):.1f}%" for k, n in hhist.items())
    loads = v["expert_load_per_layer"]
    load_rng = f"{min(min(l) for l in loads) * 100:.1f}%–{max(max(l) for l in loads) * 100:.1f}%"
    g = ev["greedy"]
    card = f"""# volt-tiny

A tiny Mixture-of-Experts language model in Volt's native `volt` format
(docs/MODEL_FORMAT.md), trained from scratch on CPU on Jane Austen's six novels. It carries
every feature of the Yi-Lightning architecture in miniature: hybrid attention (three
sliding-window layers then one full-attention layer), cross-layer KV reuse between the
full-attention layers, fine-grained routed experts plus shared experts after a leading
dense layer, dynamic top-p ("ToP") routing with min/max bounds, a raised RoPE base, RMSNorm
and GQA. It writes Austen-flavoured English and is meant for testing the runtime, not for use.

| file | |
|---|---|
| `config.json` | volt config (below) |
| `model.safetensors` | weights, bf16, {(out / 'model.safetensors').stat().st_size / 1e6:.1f} MB |
| `tokenizer.json`, `tokenizer_config.json` | BPE, 4096 tokens, byte fallback, ChatML template |
| `generation_config.json` | eos = `<|endoftext|>` (1) or `<|im_end|>` (3); sampling defaults |
| `loss_curve.png`, `train_log.json` | training curve, full log (train/valid losses, evaluation, samples) |

## How it was made

```sh
bash tools/make_default_model.sh            # everything below, about 40 minutes on 2 cores
```

which runs

```sh
bash tools/get_corpus.sh /tmp/volt_build/corpus
python3 tools/train_tokenizer.py /tmp/volt_build/corpus /tmp/volt_build/tokenizer
python3 tools/train_volt.py --corpus /tmp/volt_build/corpus --tokenizer /tmp/volt_build/tokenizer \\
    --out assets/volt-tiny --time-budget {a['time_budget']:g} --steps 0 --threads 2
python3 tools/eval_volt.py --corpus /tmp/volt_build/corpus --model assets/volt-tiny --write-card
```

The number of steps is set by the time budget: the trainer measures its own pace and
re-plans the cosine schedule every 25 steps, so the run takes about the same time on a
busy or an idle machine. This run took **{s['steps']} steps**; `--steps {s['steps']}`
repeats it with a fixed count (same seed, data order and schedule shape). {pace_txt}

## Corpus

* **Training / validation:** the Debian package **`r-cran-janeaustenr` 1.0.0-1** (bookworm),
  the novels *Sense & Sensibility*, *Pride & Prejudice*, *Mansfield Park*, *Emma*,
  *Northanger Abbey* and *Persuasion*. Package licence: MIT; the texts are public-domain
  Project Gutenberg e-texts. Exported with Rscript (the package pulls in `r-base-core`).
* Cleaning (tools/prepare_corpus.py): one document per chapter (269), hard line wraps
  undone, `_emphasis_` marks removed, headings and title pages dropped. The **last 5% of
  the chapters** (13: *Persuasion* ch. 12–24, {v['chars']:,} characters) are the validation
  split; the other 256 chapters (3.73 M characters, {s['train_tokens']:,} tokens) are the training set.
* **Held-out prose** for the perplexity check, from another author and package: the first
  13 chapters of Herman Melville's *Moby Dick* ({h['chars']:,} characters; public domain,
  Gutenberg #2701), the `mobydick` data set of **`r-cran-tokenizers` 0.3.0-1** (MIT).

## Tokenizer

BPE trained with `tokenizers` on the training split (tools/train_tokenizer.py), 4096
tokens: ids 0 `<unk>`, 1 `<|endoftext|>` (bos, document separator), 2 `<|im_start|>`,
3 `<|im_end|>`, 4–259 the byte tokens `<0x00>`–`<0xFF>` (byte fallback, `byte_fallback: true`),
then the alphabet and {n_merges} merges. Pre-tokenizer: newlines split off, Metaspace (`▁`,
prepend "first"), and every digit its own token (`Digits(individual_digits=true)`).
Decoder: Replace ▁→space, ByteFallback, Fuse, Strip — the Llama/Mistral layout; the
post-processor prepends `<|endoftext|>`. 4.27 characters per token on the training text.
Rust `tokenizers` 0.22 (fancy-regex) loads it and gives the same ids and decodes.
Chat template (ChatML) in tokenizer_config.json.

## Model

| | |
|---|---|
| layers | {cfg['num_hidden_layers']}: `{layer_kinds}` (S = sliding window {cfg['sliding_window']}, F = full); {reuse} (`kv_sharing_group` {vc.kv_sharing_group}) |
| hidden / heads / KV heads / head_dim | {cfg['hidden_size']} / {cfg['num_attention_heads']} / {cfg['num_key_value_heads']} / {cfg['head_dim']} ({gqa}) |
| RoPE | θ = {cfg['rope_theta']:.0e}, `max_position_embeddings` {cfg['max_position_embeddings']} (trained on {s['seq_len']}-token windows) |
| FFN | {dense_txt}{moe_txt} MoE: {cfg['n_routed_experts']} routed experts of {cfg['moe_intermediate_size']} + {cfg['n_shared_experts']} shared (fused SwiGLU {cfg['n_shared_experts'] * cfg['moe_intermediate_size']}) |
| routing | softmax, top-p {cfg['router_top_p']} with min {cfg['router_min_experts']} / max {cfg['router_max_experts']} experts, renormalised (`norm_topk_prob`) |
| vocabulary | {cfg['vocab_size']}, untied lm_head |
| parameters | **{p['total'] / 1e6:.2f} M total** ({p['routed_experts'] / 1e6:.2f} M in routed experts); **{p['active_per_token'] / 1e6:.2f} M active per token** on average ({p['active_per_token_without_embedding'] / 1e6:.2f} M without the embedding table) |

## Training

* {s['steps']} steps of {s['batch']} × {s['seq_len']} tokens (random windows of the token stream):
  **{s['tokens_seen'] / 1e6:.2f} M tokens seen, {s['epochs']:.1f} epochs** of the training split.
* AdamW (β 0.9/0.95, weight decay {a['weight_decay']} on matrices), lr {a['lr']:g} with {a['warmup']} warm-up
  steps and cosine decay to {a['min_lr']:g}, gradient clipping 1.0, init std 0.02.
* Loss: cross-entropy + α·Σ_layers N·Σ_i f_i·P_i, the Switch-Transformer load-balancing term of
  the Yi-Lightning report (§2.2) with α = {a['aux_alpha']} (f_i: share of tokens whose top-1 expert is i,
  P_i: mean router probability).
* CPU, {s['threads']} threads, torch {s['torch']}. **Training wall time {s['train_wall_s'] / 60:.1f} min**
  {f"(corpus + tokenizer + training {total_wall / 60:.1f} min, evaluation {ev['eval_wall_s'] / 60:.1f} min)." if total_wall else ""}

![loss curve](loss_curve.png)

## Results

Measured by the PyTorch reference (tools/volt_reference.py, float32, on the stored bf16
weights), windows of {s['seq_len']} tokens:

| | loss (nats/token) | perplexity | bits/char |
|---|---|---|---|
| training (EMA of the last steps) | {s['final_train_loss_ema']:.3f} | {math.exp(s['final_train_loss_ema']):.1f} | |
| validation (Persuasion ch. 12–24) | **{v['loss']:.3f}** | **{v['ppl']:.1f}** | {v['bits_per_char']:.3f} |
| held-out prose (Moby Dick ch. 1–13) | **{h['loss']:.3f}** | **{h['ppl']:.1f}** | {h['bits_per_char']:.3f} |

Routing on the validation text: {v['experts_per_token_mean']:.2f} routed experts per token on average
({hist_txt}); on Moby Dick ({hhist_txt}). Expert load per layer ranges over {load_rng}
of the assignments (uniform would be {100 / cfg['n_routed_experts']:.2f}%).

## Samples

{samples}

Greedy continuation (reference, no cache) of {g['prompt']!r}, prompt ids {g['prompt_ids']}:
ids {g['greedy_ids']}

{quote(g['prompt'] + g['text'])}

## Limitations

A {p['total'] / 1e6:.1f} M-parameter model trained for half an hour on 3.7 MB of one author: it
produces locally fluent, Austen-like sentences without lasting coherence, knows nothing
else, and was never instruction-tuned (the chat template is there for the runtime's sake).
"""
    (out / "README.md").write_text(card)
    print(f"wrote {out / 'README.md'}")


if __name__ == "__main__":
    main()
