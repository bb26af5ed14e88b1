#!/usr/bin/env python3
"""Train Volt's default model, `volt-tiny`, on CPU with the PyTorch reference.

    python3 tools/train_volt.py --corpus /tmp/volt_corpus --tokenizer /tmp/volt_tok \
        --out assets/volt-tiny [--time-budget 35 | --steps N] [--benchmark 5]

By default the number of steps is whatever fits in --time-budget minutes at the pace
measured during the run (re-estimated every 25 steps; the cosine schedule follows the
estimate), so the run takes about the same wall time on a busy or an idle machine. The
step count that resulted is in train_log.json; `--steps N` fixes it instead.

Every feature of the volt family is on (docs/MODEL_FORMAT.md): hybrid attention (3 sliding
layers with window 64 + 1 full layer per block), cross-layer KV reuse between the two
full-attention layers (layer 7 reads layer 3's KV), a leading dense SwiGLU layer,
fine-grained routed experts plus a shared expert in the other layers, dynamic top-p
routing with min/max bounds, a raised RoPE base, RMSNorm and GQA. The loss adds the
Switch-Transformer load-balancing term of the Yi-Lightning report (section 2.2),
alpha * N * sum_i f_i P_i per MoE layer, with a small alpha.

Writes OUT/config.json, model.safetensors (bf16), tokenizer.json, tokenizer_config.json,
generation_config.json, train_log.json and loss_curve.png. Evaluation and the model card
come from tools/eval_volt.py.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from volt_reference import MoE, VoltConfig, VoltForCausalLM  # noqa: E402

DEFAULT_CONFIG = dict(
    model_type="volt",
    vocab_size=4096,
    hidden_size=192,
    num_hidden_layers=8,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=32,
    rms_norm_eps=1e-5,
    rope_theta=1000000.0,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=[1, 3],
    sliding_window=64,
    sliding_layers_per_block=3,
    kv_sharing_group=2,
    first_k_dense_layers=1,
    intermediate_size=512,
    n_routed_experts=16,
    moe_intermediate_size=64,
    n_shared_experts=2,
    routing="top_p",
    router_top_p=0.6,
    router_min_experts=2,
    router_max_experts=4,
    norm_topk_prob=True,
)


def dispatch_bmm(self, x, mask, w):
    """Faster drop-in for MoE.dispatch on CPU (same math): the tokens of each expert are
    packed into a zero-padded [E, capacity, H] buffer and all experts run as two batched
    matmuls instead of 2*E small ones."""
    E, H = mask.shape[1], x.shape[1]
    tok, exp = mask.nonzero(as_tuple=True)
    perm = torch.argsort(exp, stable=True)
    tok, exp = tok[perm], exp[perm]
    sizes = torch.bincount(exp, minlength=E)
    starts = torch.cumsum(sizes, 0) - sizes
    slot = torch.arange(len(tok)) - starts[exp]
    buf = x.new_zeros(E, int(sizes.max()), H)
    buf = buf.index_put((exp, slot), x[tok])
    w_gu = torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in self.experts])  # [E, 2I, H]
    w_d = torch.stack([e.down_proj.weight for e in self.experts])  # [E, H, I]
    gu = torch.bmm(buf, w_gu.transpose(1, 2))
    g, u = gu.chunk(2, dim=-1)
    y = torch.bmm(F.silu(g) * u, w_d.transpose(1, 2))
    ys = y[exp, slot] * w[tok, exp, None].to(x.dtype)
    return torch.zeros_like(x).index_add_(0, tok, ys)


def check_fast_path(model, x):
    """The training fast paths (SDPA attention, batched experts) match the reference."""
    with torch.no_grad():
        model.sdpa = False
        ref = model(x)
        MoE.dispatch, saved = dispatch_bmm, MoE.dispatch
        model.sdpa = True
        fast = model(x)
        MoE.dispatch = saved
    d = float((ref - fast).abs().max())
    assert d < 1e-3, d
    return d


def load_stream(tok, path):
    """Token stream of the documents of a JSONL file, each starting with <|endoftext|>."""
    ids = []
    for line in open(path, encoding="utf-8"):
        ids.extend(tok.encode(json.loads(line)["text"]).ids)  # post-processor adds bos
    return torch.tensor(ids, dtype=torch.long)


def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    n_layers = model.config.num_hidden_layers
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                std = 0.02
                if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                    std = 0.02 / math.sqrt(2 * n_layers)
                p.copy_(torch.randn(p.shape, generator=g) * std)


@torch.no_grad()
def evaluate(model, stream, seq_len, max_windows=None):
    """Mean next-token loss over non-overlapping windows of the stream."""
    model.eval()
    n = (len(stream) - 1) // seq_len
    if max_windows:
        n = min(n, max_windows)
    total, count = 0.0, 0
    for b in range(0, n, 16):
        idx = torch.arange(b, min(n, b + 16)) * seq_len
        x = torch.stack([stream[i:i + seq_len] for i in idx])
        y = torch.stack([stream[i + 1:i + seq_len + 1] for i in idx])
        logits = model(x)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
        count += y.numel()
    model.train()
    return total / count


def routing_stats(model):
    """Mean experts per token and per-layer load of the last forward."""
    counts, loads = [], []
    for m in model.moe_layers():
        r = m.last_routing
        counts.append(float(r.count.float().mean()))
        sel = (r.weights > 0).float().mean(0)
        loads.append(sel.tolist())
    return counts, loads


def plot(log, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    tr = log["train"]
    ax.plot([r["tokens"] / 1e6 for r in tr], [r["loss_ema"] for r in tr], label="train (EMA)", lw=1.2)
    va = log["valid"]
    ax.plot([r["tokens"] / 1e6 for r in va], [r["loss"] for r in va], "o-", label="validation", ms=3)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("volt-tiny on Jane Austen (r-cran-janeaustenr)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_ylim(bottom=max(0.0, min(r["loss"] for r in va) - 0.6), top=min(8.5, tr[0]["loss_ema"] + 0.2))
    fig.tight_layout()
    fig.savefig(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=0,
                    help="number of steps; 0: as many as fit in --time-budget (measured while training)")
    ap.add_argument("--time-budget", type=float, default=33.0, help="minutes of training when --steps is 0")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--aux-alpha", type=float, default=0.01)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default="{}", help="JSON overrides of the model config")
    ap.add_argument("--benchmark", type=int, default=0, help="time this many steps and exit")
    ap.add_argument("--reference-dispatch", action="store_true", help="use the reference's expert loop")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()
    tok = Tokenizer.from_file(str(Path(args.tokenizer) / "tokenizer.json"))
    train = load_stream(tok, Path(args.corpus) / "train.jsonl")
    valid = load_stream(tok, Path(args.corpus) / "valid.jsonl")
    print(f"train {len(train)} tokens, valid {len(valid)} tokens", flush=True)

    raw = dict(DEFAULT_CONFIG, **json.loads(args.config))
    raw["vocab_size"] = tok.get_vocab_size()
    cfg = VoltConfig(**raw)
    model = VoltForCausalLM(cfg)
    init_weights(model, args.seed)
    d = check_fast_path(model, train[:4 * args.seq_len].view(4, -1))
    print(f"fast path (SDPA + batched experts) vs reference: max |dlogit| {d:.1e}", flush=True)
    if not args.reference_dispatch:
        MoE.dispatch = dispatch_bmm
    model.sdpa = True
    model.train()

    n_total = sum(p.numel() for p in model.parameters())
    expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    n_experts_all = len(model.moe_layers()) * cfg.n_routed_experts * expert
    print(f"parameters: {n_total / 1e6:.2f} M total, of which routed experts {n_experts_all / 1e6:.2f} M", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    budgeted = not args.steps and not args.benchmark
    total_steps = args.benchmark or args.steps or 10**9  # budgeted: re-estimated while training

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, total_steps - args.warmup)
        return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))

    g = torch.Generator().manual_seed(args.seed + 1)
    T, B = args.seq_len, args.batch
    log = {"config": raw, "args": vars(args), "train": [], "valid": []}
    ema = None
    tokens = 0
    t0 = time.time()
    step_times = []
    step = -1
    while step + 1 < total_steps:
        step += 1
        t_step = time.time()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        starts = torch.randint(0, len(train) - T - 1, (B,), generator=g)
        x = torch.stack([train[s:s + T] for s in starts])
        y = torch.stack([train[s + 1:s + T + 1] for s in starts])
        logits = model(x)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        aux = model.aux_loss()
        loss = ce + args.aux_alpha * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        tokens += B * T
        step_times.append(time.time() - t_step)
        if budgeted and step + 1 >= 10 and (step + 1 == 10 or (step + 1) % 25 == 0):
            # steps that still fit in the budget at the recent pace (evaluations included),
            # keeping ~1.5 min for the final full validation and saving
            recent = step_times[-50:]
            pace = (sum(recent) / len(recent)) * (1 + 3.0 / args.eval_every)
            left = args.time_budget * 60 - (time.time() - t0) - 90
            total_steps = max(step + 2, step + 1 + int(left / pace))
            if (step + 1) % 100 == 0 or step + 1 == 10:
                print(f"  budget: {total_steps} steps in all (pace {pace:.2f} s/step)", flush=True)
        ce_v = float(ce.detach())
        ema = ce_v if ema is None else 0.95 * ema + 0.05 * ce_v
        last = step + 1 >= total_steps
        if step % 10 == 0 or last:
            counts, _ = routing_stats(model)
            rec = {"step": step, "tokens": tokens, "loss": ce_v, "loss_ema": ema, "aux": float(aux.detach()),
                   "lr": lr_at(step), "grad_norm": gnorm, "experts_per_token": sum(counts) / len(counts),
                   "elapsed_s": time.time() - t0}
            log["train"].append(rec)
            print(f"step {step:5d} loss {ce_v:.4f} ema {ema:.4f} aux {rec['aux']:.3f} "
                  f"experts/tok {rec['experts_per_token']:.2f} lr {rec['lr']:.2e} gnorm {gnorm:.2f} "
                  f"{rec['elapsed_s']:.0f}s", flush=True)
        if args.benchmark:
            continue
        if (step + 1) % args.eval_every == 0 or last:
            vl = evaluate(model, valid, T, None if last else args.eval_windows)
            log["valid"].append({"step": step, "tokens": tokens, "loss": vl, "ppl": math.exp(vl),
                                 "full": last, "elapsed_s": time.time() - t0})
            print(f"  valid loss {vl:.4f} ppl {math.exp(vl):.2f}{' (full)' if last else ''}", flush=True)

    dt = time.time() - t0
    steps = step + 1
    if args.benchmark:
        print(f"benchmark: {dt / steps:.2f} s/step, {B * T * steps / dt:.0f} tokens/s", flush=True)
        return

    counts, loads = routing_stats(model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, dtype=torch.bfloat16)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(args.tokenizer) / f, out / f)
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": 1,
        "do_sample": True, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 200,
    }, indent=2) + "\n")
    log["summary"] = {
        "steps": steps, "batch": B, "seq_len": T, "tokens_seen": tokens,
        "epochs": tokens / len(train), "train_tokens": len(train), "valid_tokens": len(valid),
        "train_wall_s": dt, "total_wall_s": time.time() - t_start,
        "params_total": n_total, "final_train_loss_ema": ema,
        "final_valid_loss": log["valid"][-1]["loss"], "final_valid_ppl": log["valid"][-1]["ppl"],
        "experts_per_token_last_batch": counts, "expert_load_last_batch": loads,
        "torch": torch.__version__, "threads": args.threads,
    }
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    plot(log, out / "loss_curve.png")
    print(f"done in {dt / 60:.1f} min; final valid loss {log['valid'][-1]['loss']:.4f}", flush=True)


if __name__ == "__main__":
    main()
