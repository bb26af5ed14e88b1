#!/usr/bin/env python3
"""Golden fixtures for Volt's native `volt` family, computed by tools/volt_reference.py.

    python3 tools/make_volt_fixtures.py            # all: volt, volt_topk, volt_alt
    python3 tools/make_volt_fixtures.py volt_topk  # only the named ones

Each tests/fixtures/<name>/ gets config.json, model.safetensors and expected.json:

    {"family": "volt", "transformers": "volt_reference",
     "ids": [20 prompt ids], "logits": [[vocab] x 20], "greedy": [10 ids], "atol": 0.002,
     "routing": {"<layer>": [[selected expert ids, ascending] x 20]},
     "router_probs": {"<layer>": [[E softmax probabilities] x 20]}}

keyed by the index of each MoE layer (as a string), for the 20 prompt positions.
`logits` are the reference's float32 logits of the prompt, `greedy` a plain loop of full
forwards without a cache (argmax of the last position, EOS not special). Checkpoints
stored in bf16/f16 are computed from exactly the stored values, in float32.

Weights are re-initialised at a scale where attention and routing matter (not 0.02):
projections std gain/sqrt(fan_in) (q/k gain 1.6), embeddings std 1, lm_head 3/sqrt(H),
norms 1 + 0.2 randn, routers std g/sqrt(H) with g spread over the MoE layers. A candidate seed must pass every
check below, otherwise the seed is bumped by one (deterministic) and the model rebuilt:

* routing robust at every position the greedy run feeds (prompt + 9 generated), in every
  MoE layer: gap between the last selected and first unselected probability > 1e-3,
  and for top-p the cumulative sums either side of the cut are > 1e-3 away from p;
* greedy top-1 minus top-2 logit > 1e-3 at every step;
* top-p fixtures: over the prompt, the selected count varies by token, and both the min
  clamp (when min > 1) and the max clamp bind at least twice; routing varies (>= 4
  distinct expert sets per MoE layer over the greedy-fed positions);
* logits std > 1; attention peaked (mean max probability of rows from position 4 on >= 0.3);
* ablations (modelled reimplementation mistakes) move some logit by >= 25 * atol.
"""

from __future__ import annotations

import collections
import copy
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from volt_reference import FULL, SLIDING, MoE, VoltConfig, VoltForCausalLM, rope_inv_freq, rotate_half  # noqa: E402

torch.set_num_threads(1)  # reproducible reductions

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures"
ATOL = 2e-3
GAP = 1e-3
N_PROMPT, N_GEN = 20, 10
MAX_BYTES = 500 * 1000

S, F = SLIDING, FULL

FIXTURES = {
    # Yi-Lightning layout in miniature: default layer_types (3 sliding + 1 full: layers 3, 7
    # full), default kv_sharing_group 2 (7 reads 3's KV across three sliding layers), window 5
    # < 20-token prompt, top-p routing with min/max clamps, a shared expert, a leading dense
    # layer, GQA 2:1, untied lm_head, f32.
    "volt": dict(
        storage="float32", seed=1000, router_gain=(0.6, 2.6),
        config=dict(
            vocab_size=128, hidden_size=32, num_hidden_layers=8, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5, rope_theta=1000000.0,
            max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
            sliding_window=5, sliding_layers_per_block=3, kv_sharing_group=2,
            first_k_dense_layers=1, intermediate_size=64,
            n_routed_experts=8, moe_intermediate_size=8, n_shared_experts=1,
            routing="top_p", router_top_p=0.7, router_min_experts=2, router_max_experts=4,
            norm_topk_prob=True,
        ),
    ),
    # top-k without renormalisation, tied embeddings, two fused shared experts, two leading
    # dense layers, alternating sliding/full layers (sliding_layers_per_block 1), explicit
    # kv_sources in which sliding layers reuse sliding KV (2<-0, 6<-4) and full layers full KV
    # (3<-1, 7<-5), window 4, MQA with head_dim 12 (q dim 48 != hidden 40), stored bf16.
    "volt_topk": dict(
        storage="bfloat16", seed=2000, router_gain=(1.5, 1.5),
        config=dict(
            vocab_size=120, hidden_size=40, num_hidden_layers=8, num_attention_heads=4,
            num_key_value_heads=1, head_dim=12, rms_norm_eps=1e-6, rope_theta=500000.0,
            max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
            sliding_window=4, sliding_layers_per_block=1,
            kv_sources=[0, 1, 0, 1, 4, 5, 4, 5],
            first_k_dense_layers=2, intermediate_size=48,
            n_routed_experts=6, moe_intermediate_size=8, n_shared_experts=2,
            routing="top_k", num_experts_per_tok=2, norm_topk_prob=False,
        ),
    ),
    # explicit, irregular layer_types [S,F,F,S,F,S,S,F] with kv_sharing_group 3: full layers
    # 1,2,4,7 -> runs {1,2,4} (2 and 4 read 1) and {7}; top-p without renormalisation, min 1,
    # max 3, no shared experts, no dense layer, yarn rope scaling, MHA, eos list, stored f16.
    "volt_alt": dict(
        storage="float16", seed=3000, router_gain=(0.6, 2.0),
        config=dict(
            vocab_size=100, hidden_size=32, num_hidden_layers=8, num_attention_heads=2,
            num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
            rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
            max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=1, eos_token_id=[2, 3],
            sliding_window=6, layer_types=[S, F, F, S, F, S, S, F], kv_sharing_group=3,
            first_k_dense_layers=0, intermediate_size=64,
            n_routed_experts=8, moe_intermediate_size=8, n_shared_experts=0,
            routing="top_p", router_top_p=0.7, router_min_experts=1, router_max_experts=3,
            norm_topk_prob=False,
        ),
    ),
}


# ---------------------------------------------------------------------------
# Model construction
# ---------------------------------------------------------------------------

def init_weights(model: VoltForCausalLM, seed: int, router_gain: float):
    g = torch.Generator().manual_seed(seed)
    H = model.config.hidden_size
    # router gain per MoE layer, spread over router_gain so that some layers route flat
    # (top-p hits the max clamp) and others peaked (the min clamp)
    n_moe = len(model.moe_layers())
    lo, hi = router_gain
    gains = [lo + (hi - lo) * i / max(1, n_moe - 1) for i in range(n_moe)]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name == "model.embed_tokens.weight":
                p.copy_(torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                p.copy_(3 / H ** 0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(gains.pop(0) / H ** 0.5 * torch.randn(p.shape, generator=g))
            else:
                gain = 1.6 if (".q_proj" in name or ".k_proj" in name) else (1.4 if "experts" in name else 1.0)
                p.copy_(gain / p.shape[1] ** 0.5 * torch.randn(p.shape, generator=g))
        if model.config.tie_word_embeddings:
            # the embedding is also the lm_head: std 3/sqrt(H) keeps the logits' std near 3
            model.model.embed_tokens.weight.mul_(3 / H ** 0.5)


def build(spec, seed):
    cfg = VoltConfig(**copy.deepcopy(spec["config"]))
    model = VoltForCausalLM(cfg)
    init_weights(model, seed, spec["router_gain"])
    dt = getattr(torch, spec["storage"])
    with torch.no_grad():  # compute from exactly the stored values
        for p in model.parameters():
            p.copy_(p.to(dt).float())
    return model.eval()


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------

def routing_gaps(model, seq):
    """Smallest decision margin of the routing over all MoE layers and positions of seq
    (the selected set and its order by probability must be robust to rounding), plus the
    count histogram, how often each clamp binds, and the fewest distinct sets in a layer."""
    cfg = model.config
    routes = model.route(torch.tensor(seq))
    worst = float("inf")
    hist = collections.Counter()
    clamp_min = clamp_max = 0
    distinct = []

    def clamp(n):
        return min(max(n, cfg.router_min_experts), cfg.router_max_experts, E)

    for r in routes:
        sp = torch.sort(r.probs, dim=-1, descending=True, stable=True).values
        csum = torch.cumsum(sp, dim=-1)
        E = sp.shape[1]
        sets = set()
        for t in range(sp.shape[0]):
            n = int(r.count[t])
            # the boundary between the selected and the unselected experts
            if n < E:
                worst = min(worst, float(sp[t, n - 1] - sp[t, n]))
            if cfg.routing == "top_p":
                p = cfg.router_top_p
                raw = int((csum[t] < p).sum()) + 1  # csum[raw-2] < p <= csum[raw-1]
                if raw <= E and clamp(raw + 1) != clamp(raw):
                    worst = min(worst, float(csum[t, raw - 1]) - p)
                if raw >= 2 and clamp(raw - 1) != clamp(raw):
                    worst = min(worst, p - float(csum[t, raw - 2]))
                clamp_min += raw < cfg.router_min_experts
                clamp_max += raw > cfg.router_max_experts
            hist[n] += 1
            sets.add(tuple(sorted(r.order[t, :n].tolist())))
        distinct.append(len(sets))
    return worst, hist, clamp_min, clamp_max, min(distinct) if distinct else 0


def greedy_with_gap(model, ids, n):
    seq = list(ids)
    out, gap = [], float("inf")
    with torch.no_grad():
        for _ in range(n):
            last = model(torch.tensor(seq + out))[-1]
            top = torch.topk(last, 2).values
            gap = min(gap, float(top[0] - top[1]))
            out.append(int(last.argmax()))
    return out, gap


def attention_peak(model, ids):
    with torch.no_grad():
        model(torch.tensor(ids))
    vals = [layer.self_attn.last_attn[0, :, 4:, :].max(-1).values.mean() for layer in model.model.layers]
    return float(torch.stack(vals).mean())


# ---------------------------------------------------------------------------
# Ablations: modelled reimplementation mistakes
# ---------------------------------------------------------------------------

def _with_cfg(model, **changes):
    m = copy.deepcopy(model)
    for k, v in changes.items():
        setattr(m.config, k, v)
    inv, af = rope_inv_freq(m.config)
    m.inv_freq, m.attention_factor = inv, af
    return m


def _patch_shared_kv(model, mode):
    """mode 'recompute': a KV-reusing layer recomputes K/V from its own input with its source's
    projections; 'rerotate': it applies RoPE a second time to the cached keys."""
    m = copy.deepcopy(model)
    cfg = m.config
    layers = m.model.layers
    for li, layer in enumerate(layers):
        if not cfg.owns_kv(li):
            src = layers[cfg.kv_sources[li]].self_attn
            layer.self_attn.forward = types.MethodType(_make_fwd(cfg, li, src, mode), layer.self_attn)
    return m


def _make_fwd(cfg, li, src, mode):
    def fwd(self, x, cos, sin, kv_store, sdpa=False):
        B, T, _ = x.shape
        nh, nkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = self.q_proj(x).view(B, T, nh, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k_s, v_s = kv_store[cfg.kv_sources[li]]
        if mode == "recompute":
            k = src.k_proj(x).view(B, T, nkv, D).transpose(1, 2)
            v = src.v_proj(x).view(B, T, nkv, D).transpose(1, 2)
            k = k * cos + rotate_half(k) * sin
        else:
            k, v = k_s * cos + rotate_half(k_s) * sin, v_s
        rep = nh // nkv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        allowed = j <= i
        W = cfg.window(li)
        if W is not None:
            allowed = allowed & (i - j < W)
        s = ((q @ k.transpose(-1, -2)) * D ** -0.5).masked_fill(~allowed, float("-inf"))
        p = torch.softmax(s, dim=-1)
        self.last_attn = p
        return self.o_proj((p @ v).transpose(1, 2).reshape(B, T, nh * D))
    return fwd


def _no_shared(model):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for moe in m.moe_layers():
            if moe.shared_experts is not None:
                moe.shared_experts.down_proj.weight.zero_()
    return m


def _kv_prev_layer(model):
    """a KV-reusing layer reads the previous layer's KV instead of its source's"""
    m = copy.deepcopy(model)
    cfg = m.config
    changed = False
    for li in range(cfg.num_hidden_layers):
        if not cfg.owns_kv(li) and cfg.kv_sources[li] != li - 1 and cfg.owns_kv(li - 1):
            cfg.kv_sources[li] = li - 1
            changed = True
    return m if changed else None


def _full_everywhere(model):
    m = copy.deepcopy(model)
    m.config.layer_types = [FULL] * m.config.num_hidden_layers
    return m


def ablations(model):
    cfg = model.config
    out = {}
    if cfg.sliding_window is not None and SLIDING in cfg.layer_types:
        out["ignore window"] = _with_cfg(model, sliding_window=None)
        out["window W+1"] = _with_cfg(model, sliding_window=cfg.sliding_window + 1)
        out["window W-1"] = _with_cfg(model, sliding_window=cfg.sliding_window - 1)
        out["window on every layer"] = _with_cfg(model, layer_types=[SLIDING] * cfg.num_hidden_layers)
    out["flip norm_topk_prob"] = _with_cfg(model, norm_topk_prob=not cfg.norm_topk_prob)
    if cfg.routing == "top_p":
        out["ignore router_min/max"] = _with_cfg(model, router_min_experts=1, router_max_experts=cfg.n_routed_experts)
        out["top-k with k=max"] = _with_cfg(model, routing="top_k", num_experts_per_tok=cfg.router_max_experts)
    else:
        out["top-k with k+1"] = _with_cfg(model, num_experts_per_tok=cfg.num_experts_per_tok + 1)
    out["rope_theta 10000" if cfg.rope_theta != 10000 else "rope_theta 1e6"] = _with_cfg(
        model, rope_theta=10000.0 if cfg.rope_theta != 10000 else 1e6)
    if cfg.rope_scaling:
        out["ignore rope_scaling"] = _with_cfg(model, rope_scaling=None)
    if cfg.n_shared_experts:
        out["drop shared experts"] = _no_shared(model)
    if any(not cfg.owns_kv(i) for i in range(cfg.num_hidden_layers)):
        prev = _kv_prev_layer(model)
        if prev is not None:
            out["KV from previous layer"] = prev
        out["recompute shared KV"] = _patch_shared_kv(model, "recompute")
        out["re-rotate shared keys"] = _patch_shared_kv(model, "rerotate")
    return out


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

def f32(x):
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def write_expected(path, ids, logits, greedy, routes):
    lines = ["{", '  "family": "volt",', '  "transformers": "volt_reference",',
             f'  "ids": {json.dumps([int(i) for i in ids])},', '  "logits": [']
    rows = logits.tolist()
    for i, r in enumerate(rows):
        lines.append("    " + json.dumps([f32(v) for v in r]) + ("," if i + 1 < len(rows) else ""))
    lines.append("  ],")
    lines.append(f'  "greedy": {json.dumps([int(i) for i in greedy])},')
    lines.append(f'  "atol": {json.dumps(ATOL)},')
    lines.append('  "routing": {')
    for i, r in enumerate(routes):
        sep = "," if i + 1 < len(routes) else ""
        lines.append(f'    "{r.layer}": {json.dumps([sorted(x) for x in r.selected()])}{sep}')
    lines.append("  },")
    lines.append('  "router_probs": {')
    for i, r in enumerate(routes):
        sep = "," if i + 1 < len(routes) else ""
        lines.append(f'    "{r.layer}": [')
        for t, row in enumerate(r.probs.tolist()):
            lines.append("      " + json.dumps([f32(v) for v in row]) + ("," if t + 1 < len(r.probs) else ""))
        lines.append(f"    ]{sep}")
    lines.append("  }")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)
    path.write_text(text)


def make(name, spec):
    seed = spec["seed"]
    for attempt in range(5000):
        model = build(spec, seed)
        cfg = model.config
        g = torch.Generator().manual_seed(seed + 7)
        ids = torch.randint(0, cfg.vocab_size, (N_PROMPT,), generator=g).tolist()
        if routing_gaps(model, ids)[0] <= GAP:  # cheap pre-filter on the prompt alone
            seed += 1
            continue
        greedy, ggap = greedy_with_gap(model, ids, N_GEN)
        seq = ids + greedy[:-1]
        rgap, hist, cmin, cmax, nsets = routing_gaps(model, seq)
        with torch.no_grad():
            logits = model(torch.tensor(ids))
        lstd = float(logits.std())
        peak = attention_peak(model, ids)
        problems = []
        if rgap <= GAP:
            problems.append(f"routing gap {rgap:.2e}")
        if ggap <= GAP:
            problems.append(f"greedy gap {ggap:.2e}")
        if lstd <= 1:
            problems.append(f"logit std {lstd:.2f}")
        if peak < 0.3:
            problems.append(f"attention peak {peak:.2f}")
        if nsets < 4:
            problems.append(f"{nsets} expert sets")
        if cfg.routing == "top_p":
            # on the prompt itself: >= 2 different counts, each clamp binding >= 2 times
            _, phist, pmin, pmax, _ = routing_gaps(model, ids)
            if len(phist) < 2 or (cfg.router_min_experts > 1 and pmin < 2) or pmax < 2:
                problems.append(f"top-p prompt counts {dict(phist)} clamps min {pmin} max {pmax}")
        abl = {}
        if not problems:
            with torch.no_grad():
                for aname, m in ablations(model).items():
                    abl[aname] = float((m(torch.tensor(ids)) - logits).abs().max())
            weak = {k: v for k, v in abl.items() if v < 25 * ATOL}
            if weak:
                problems.append(f"weak ablations {weak}")
        if not problems:
            break
        print(f"  {name} seed {seed}: {'; '.join(problems)}")
        seed += 1
    else:
        raise SystemExit(f"{name}: no seed passed")

    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    model.save_pretrained(out, dtype=getattr(torch, spec["storage"]))
    routes = model.route(torch.tensor(ids))
    write_expected(out / "expected.json", ids, logits, greedy, routes)

    # reload check: the stored checkpoint reproduces the expected values exactly
    re = VoltForCausalLM.load(out)
    with torch.no_grad():
        diff = float((re(torch.tensor(ids)) - logits).abs().max())
    assert diff == 0.0, diff
    assert re.greedy(ids, N_GEN) == greedy
    size = sum(f.stat().st_size for f in out.iterdir())
    assert size < MAX_BYTES, size

    kv = {i: s for i, s in enumerate(cfg.kv_sources) if s != i}
    print(f"{name}: seed {seed}, {size / 1024:.1f} KiB, {spec['storage']}, logit std {lstd:.3f}, "
          f"min route gap {rgap:.2e}, min greedy gap {ggap:.2e}, attn peak {peak:.3f}, "
          f"min expert sets/layer {nsets}")
    print(f"  layer types: {''.join('F' if t == FULL else 'S' for t in cfg.layer_types)}, "
          f"window {cfg.sliding_window}, KV reuse {kv}, MoE layers {[r.layer for r in routes]}")
    if cfg.routing == "top_p":
        print(f"  top-p expert-count histogram (all MoE layers, {len(seq)} greedy-fed positions): "
              f"{dict(sorted(hist.items()))}; raw count < min for {cmin}, > max for {cmax}")
        ph = collections.Counter(int(c) for r in routes for c in r.count)
        print(f"  prompt-only histogram: {dict(sorted(ph.items()))}")
    print("  ablations (max |dlogit|): " + ", ".join(f"{k} {v:.2f}" for k, v in abl.items()))
    return dict(name=name, seed=seed, size=size, hist=dict(hist))


def main():
    names = sys.argv[1:] or list(FIXTURES)
    for n in names:
        make(n, FIXTURES[n])


if __name__ == "__main__":
    main()
