#!/usr/bin/env python3
"""Plain PyTorch reference (the oracle) for Volt's native `volt` model family.

The format is specified in docs/MODEL_FORMAT.md: Yi-Lightning's hybrid attention (blocks
of sliding-window layers and one full-attention layer), cross-layer KV reuse between
full-attention layers, fine-grained routed experts plus shared experts, and softmax
routing by top-k or dynamic top-p with min/max bounds.

    from volt_reference import VoltConfig, VoltForCausalLM
    model = VoltForCausalLM.load("assets/volt-tiny")        # config.json + model.safetensors
    logits = model(ids)                                     # [T, vocab] or [B, T, vocab]
    routes = model.route(ids)                               # per MoE layer: probs + selection
    model.save_pretrained("out/", dtype=torch.bfloat16)

Parameter names equal the tensor names of MODEL_FORMAT.md. Everything is computed in
the parameters' dtype (use float32 for reference numbers); routing softmax is always f32.

Command line: `python3 tools/volt_reference.py DIR [ids...]` prints the greedy
continuation and the routing of a checkpoint folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

SLIDING, FULL = "sliding_attention", "full_attention"


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------

class VoltConfig:
    """config.json of a volt checkpoint. `raw` keeps exactly the keys given (written back
    unchanged by to_dict), attributes hold the resolved values with defaults applied."""

    def __init__(self, **raw):
        raw = dict(raw)
        raw.setdefault("model_type", "volt")
        assert raw["model_type"] == "volt", raw["model_type"]
        self.raw = raw
        g = raw.get
        self.vocab_size = raw["vocab_size"]
        self.hidden_size = raw["hidden_size"]
        self.num_hidden_layers = raw["num_hidden_layers"]
        self.num_attention_heads = raw["num_attention_heads"]
        self.num_key_value_heads = g("num_key_value_heads", self.num_attention_heads)
        self.head_dim = g("head_dim") or self.hidden_size // self.num_attention_heads
        self.rms_norm_eps = g("rms_norm_eps", 1e-5)
        self.rope_theta = float(g("rope_theta", 10000.0))
        self.rope_scaling = g("rope_scaling")
        self.max_position_embeddings = g("max_position_embeddings", 4096)
        self.tie_word_embeddings = bool(g("tie_word_embeddings", False))
        self.bos_token_id = g("bos_token_id")
        self.eos_token_id = g("eos_token_id")
        self.sliding_window = g("sliding_window")
        self.sliding_layers_per_block = g("sliding_layers_per_block", 3)
        self.kv_sharing_group = g("kv_sharing_group", 2)
        self.first_k_dense_layers = g("first_k_dense_layers", 0)
        self.intermediate_size = g("intermediate_size")
        self.n_routed_experts = g("n_routed_experts", 0) or 0
        self.moe_intermediate_size = g("moe_intermediate_size")
        self.n_shared_experts = g("n_shared_experts", 0) or 0
        self.routing = g("routing", "top_k")
        assert self.routing in ("top_k", "top_p"), self.routing
        self.num_experts_per_tok = g("num_experts_per_tok")
        self.router_top_p = g("router_top_p")
        self.router_min_experts = g("router_min_experts", 1)
        self.router_max_experts = g("router_max_experts", self.n_routed_experts)
        self.norm_topk_prob = bool(g("norm_topk_prob", True))

        n = self.num_hidden_layers
        if g("layer_types") is not None:
            self.layer_types = list(raw["layer_types"])
        else:
            s = self.sliding_layers_per_block
            self.layer_types = [FULL if (i + 1) % (s + 1) == 0 else SLIDING for i in range(n)]
        assert len(self.layer_types) == n and all(t in (SLIDING, FULL) for t in self.layer_types)
        if g("kv_sources") is not None:
            self.kv_sources = list(raw["kv_sources"])
        else:
            # runs of kv_sharing_group consecutive full-attention layers share the first one's KV
            self.kv_sources = list(range(n))
            full = [i for i, t in enumerate(self.layer_types) if t == FULL]
            grp = max(1, self.kv_sharing_group)
            for j, i in enumerate(full):
                self.kv_sources[i] = full[j - j % grp]
        for i, s in enumerate(self.kv_sources):
            assert s == i or (s < i and self.kv_sources[s] == s and self.layer_types[s] == self.layer_types[i]), \
                f"layer {i}: invalid kv source {s}"
        if self.n_routed_experts:
            if self.routing == "top_k":
                assert self.num_experts_per_tok
            else:
                assert self.router_top_p is not None
                assert 1 <= self.router_min_experts <= self.router_max_experts <= self.n_routed_experts

    def is_moe(self, layer):
        return self.n_routed_experts > 0 and layer >= self.first_k_dense_layers

    def window(self, layer):
        """Window of a layer (None = unbounded)."""
        return self.sliding_window if self.layer_types[layer] == SLIDING else None

    def owns_kv(self, layer):
        return self.kv_sources[layer] == layer

    def to_dict(self):
        return dict(self.raw)

    def save(self, path):
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path):
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        return cls(**json.loads(path.read_text()))


# ---------------------------------------------------------------------------
# RoPE (rotate-half / NeoX), with transformers' default, linear, llama3 and yarn rules
# ---------------------------------------------------------------------------

def rope_inv_freq(cfg: VoltConfig):
    """Returns (inv_freq [head_dim/2], attention_factor)."""
    d, theta = cfg.head_dim, cfg.rope_theta
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    sc = dict(cfg.rope_scaling or {})
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / sc["factor"], 1.0
    if kind == "llama3":
        f, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
        L = sc.get("original_max_position_embeddings", cfg.max_position_embeddings)
        wl = 2 * math.pi / inv
        out = torch.where(wl > L / lo, inv / f, inv)
        smooth = (L / wl - lo) / (hi - lo)
        mid = (wl >= L / hi) & (wl <= L / lo)
        return torch.where(mid, (1 - smooth) * out / f + smooth * out, out), 1.0
    if kind == "yarn":
        L = sc.get("original_max_position_embeddings", cfg.max_position_embeddings)
        f = sc.get("factor") or cfg.max_position_embeddings / L
        bf, bs = sc.get("beta_fast") or 32, sc.get("beta_slow") or 1

        def corr(r):
            return d * math.log(L / (2 * math.pi * r)) / (2 * math.log(theta))

        low, high = corr(bf), corr(bs)
        if sc.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(d // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        extrap = 1 - ramp
        inv = inv / f * (1 - extrap) + inv * extrap

        def mscale(s, m=1.0):
            return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

        af = sc.get("attention_factor")
        if af is None:
            if sc.get("mscale") and sc.get("mscale_all_dim"):
                af = mscale(f, sc["mscale"]) / mscale(f, sc["mscale_all_dim"])
            else:
                af = mscale(f)
        return inv, af
    raise NotImplementedError(f"rope_scaling type {kind}")


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


# ---------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (self.weight.float() * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps))).to(x.dtype)


class SwiGLU(nn.Module):
    def __init__(self, hidden, inter):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def select_experts(probs, cfg: VoltConfig):
    """probs: [T, E] float32 softmax. Returns (order [T, E] expert ids by falling probability,
    ties to the lower index; count [T] how many of them are selected)."""
    sp, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    T, E = probs.shape
    if cfg.routing == "top_k":
        count = torch.full((T,), cfg.num_experts_per_tok, dtype=torch.long)
    else:
        csum = torch.cumsum(sp, dim=-1)
        # smallest n with p_(1) + ... + p_(n) >= p, clamped to [min, max]
        count = (csum < cfg.router_top_p).sum(-1) + 1
        count = count.clamp(min=cfg.router_min_experts, max=min(cfg.router_max_experts, E))
    return order, count


@dataclass
class Routing:
    layer: int
    logits: torch.Tensor   # [T, E] router logits (f32)
    probs: torch.Tensor    # [T, E] softmax over all routed experts (f32)
    order: torch.Tensor    # [T, E] experts by falling probability
    count: torch.Tensor    # [T] number selected
    weights: torch.Tensor  # [T, E] weight of each expert (0 when not selected)

    def selected(self):
        """List (per token) of selected expert ids, by falling probability."""
        return [self.order[t, : int(self.count[t])].tolist() for t in range(self.order.shape[0])]


class MoE(nn.Module):
    def __init__(self, cfg: VoltConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        H, I = cfg.hidden_size, cfg.moe_intermediate_size
        self.gate = nn.Linear(H, cfg.n_routed_experts, bias=False)
        self.experts = nn.ModuleList([SwiGLU(H, I) for _ in range(cfg.n_routed_experts)])
        self.shared_experts = SwiGLU(H, cfg.n_shared_experts * I) if cfg.n_shared_experts else None
        self.last_routing: Routing | None = None

    def route_tokens(self, x):
        """x: [N, H] -> (mask [N, E] selected experts, w [N, E] their weights, 0 elsewhere)."""
        logits = F.linear(x.float(), self.gate.weight.float())
        probs = torch.softmax(logits, dim=-1)
        order, count = select_experts(probs.detach(), self.cfg)
        T, E = probs.shape
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(E).expand(T, E).contiguous())
        mask = rank < count[:, None]
        w = probs * mask
        if self.cfg.norm_topk_prob:
            w = w / w.sum(-1, keepdim=True)
        self.last_routing = Routing(self.layer, logits.detach(), probs.detach(), order, count, w.detach())
        self.aux_probs = probs  # for the load-balancing loss in training
        return mask, w

    def dispatch(self, x, mask, w):
        """sum_e w[:, e] * expert_e(x) over the selected experts: (token, expert) pairs are
        grouped by expert, gathered once and scattered back with one index_add."""
        tok, exp = mask.nonzero(as_tuple=True)
        perm = torch.argsort(exp, stable=True)
        tok, exp = tok[perm], exp[perm]
        sizes = torch.bincount(exp, minlength=mask.shape[1]).tolist()
        ys = torch.cat([expert(chunk) for expert, chunk in zip(self.experts, x[tok].split(sizes))])
        return torch.zeros_like(x).index_add_(0, tok, ys * w[tok, exp, None].to(x.dtype))

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        mask, w = self.route_tokens(x)
        out = self.dispatch(x, mask, w)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out.reshape(shape)


class Attention(nn.Module):
    def __init__(self, cfg: VoltConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        H, D = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(H, cfg.num_attention_heads * D, bias=False)
        if cfg.owns_kv(layer):
            self.k_proj = nn.Linear(H, cfg.num_key_value_heads * D, bias=False)
            self.v_proj = nn.Linear(H, cfg.num_key_value_heads * D, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * D, H, bias=False)

    def forward(self, x, cos, sin, kv_store, sdpa=False):
        """x: [B, T, H]. kv_store: dict layer -> (k, v), rotated keys [B, kvh, T, D]."""
        cfg = self.cfg
        B, T, _ = x.shape
        nh, nkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = self.q_proj(x).view(B, T, nh, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        if cfg.owns_kv(self.layer):
            k = self.k_proj(x).view(B, T, nkv, D).transpose(1, 2)
            v = self.v_proj(x).view(B, T, nkv, D).transpose(1, 2)
            k = k * cos + rotate_half(k) * sin
            kv_store[self.layer] = (k, v)
        else:
            k, v = kv_store[cfg.kv_sources[self.layer]]
        rep = nh // nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        i = torch.arange(T)[:, None]
        j = torch.arange(T)[None, :]
        allowed = j <= i
        W = cfg.window(self.layer)
        if W is not None:
            allowed = allowed & (i - j < W)
        if sdpa:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=D ** -0.5)
        else:
            s = (q @ k.transpose(-1, -2)) * D ** -0.5
            s = s.masked_fill(~allowed, float("-inf"))
            p = torch.softmax(s.float(), dim=-1).to(q.dtype)
            self.last_attn = p.detach()
            o = p @ v
        return self.o_proj(o.transpose(1, 2).reshape(B, T, nh * D))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: VoltConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg, layer) if cfg.is_moe(layer) else SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, kv_store, sdpa=False):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_store, sdpa)
        return h + self.mlp(self.post_attention_layernorm(h))


class VoltModel(nn.Module):
    def __init__(self, cfg: VoltConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class VoltForCausalLM(nn.Module):
    def __init__(self, cfg: VoltConfig):
        super().__init__()
        self.config = cfg
        self.model = VoltModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        inv, af = rope_inv_freq(cfg)
        self.inv_freq, self.attention_factor = inv, af  # float64, a plain attribute: .to() leaves it alone
        self.sdpa = False  # True: F.scaled_dot_product_attention (training); False: explicit (oracle)

    def rope(self, T, dtype):
        pos = torch.arange(T, dtype=torch.float64)
        ang = pos[:, None] * self.inv_freq[None, :]
        ang = torch.cat((ang, ang), dim=-1)
        return (ang.cos() * self.attention_factor).to(dtype), (ang.sin() * self.attention_factor).to(dtype)

    def hidden_states(self, ids):
        x = self.model.embed_tokens(ids)
        cos, sin = self.rope(ids.shape[-1], x.dtype)
        kv_store = {}
        for layer in self.model.layers:
            x = layer(x, cos, sin, kv_store, self.sdpa)
        return self.model.norm(x)

    def forward(self, ids):
        """ids: [T] or [B, T] token ids -> logits [T, vocab] or [B, T, vocab] (all positions)."""
        squeeze = ids.dim() == 1
        if squeeze:
            ids = ids[None]
        logits = self.lm_head(self.hidden_states(ids))
        return logits[0] if squeeze else logits

    def moe_layers(self):
        return [l.mlp for l in self.model.layers if isinstance(l.mlp, MoE)]

    @torch.no_grad()
    def route(self, ids):
        """Routing of every MoE layer for a 1-D prompt: list of Routing (probs [T, E],
        selected experts per token via .selected(), weights, counts)."""
        self.forward(torch.as_tensor(ids))
        return [m.last_routing for m in self.moe_layers()]

    def aux_loss(self):
        """Switch-Transformer load balancing (Yi-Lightning report 2.2), summed over the MoE
        layers of the last forward: N * sum_i f_i * P_i, f_i = share of tokens whose top-1
        expert is i, P_i = mean router probability of i."""
        total = 0.0
        for m in self.moe_layers():
            p = m.aux_probs
            N = p.shape[-1]
            f = F.one_hot(p.argmax(-1), N).float().mean(0)
            total = total + N * (f * p.mean(0)).sum()
        return total

    @torch.no_grad()
    def greedy(self, ids, n):
        """Plain greedy loop of full forwards without a cache (EOS not special)."""
        ids = list(map(int, ids))
        out = []
        for _ in range(n):
            nxt = int(self.forward(torch.tensor(ids + out)).argmax(-1)[-1])
            out.append(nxt)
        return out

    # -- I/O ---------------------------------------------------------------

    def state_dict_for_save(self, dtype=None):
        sd = {}
        for k, v in self.state_dict().items():
            if k == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            v = v.detach()
            if dtype is not None:
                v = v.to(dtype)
            sd[k] = v.contiguous().clone()
        return sd

    def save_pretrained(self, out, dtype=None):
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.config.save(out / "config.json")
        save_file(self.state_dict_for_save(dtype), str(out / "model.safetensors"), metadata={"format": "pt"})

    @classmethod
    def load(cls, path, dtype=torch.float32):
        from safetensors.torch import load_file

        path = Path(path)
        cfg = VoltConfig.load(path)
        model = cls(cfg)
        sd = load_file(str(path / "model.safetensors"))
        if cfg.tie_word_embeddings:
            assert "lm_head.weight" not in sd
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True)
        return model.to(dtype).eval()


def main():
    import sys

    model = VoltForCausalLM.load(sys.argv[1])
    ids = [int(x) for x in sys.argv[2:]] or [model.config.bos_token_id or 0]
    print("greedy:", model.greedy(ids, 10))
    for r in model.route(ids):
        print(f"layer {r.layer}: experts {r.selected()}")


if __name__ == "__main__":
    main()
