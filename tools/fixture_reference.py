#!/usr/bin/env python3
"""Independent NumPy reference forward for the fixtures in tests/fixtures/.

    python3 tools/fixture_reference.py            # check every fixture
    python3 tools/fixture_reference.py gpt_oss    # only some

It does NOT import transformers: it reads config.json and the safetensors files
the way a reimplementation (Volt) has to, runs the forward pass in float32
NumPy, and compares with expected.json (logits within atol, greedy ids equal).
It is the executable form of the semantics listed in tests/fixtures/README.md;
if it passes, those notes describe what transformers computed.
(torch is used only to read bf16 and F8_E4M3 tensors out of safetensors.)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

FP4_LUT = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                    -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float32)

DEFAULT_THETA = {"gpt_oss": 150000.0, "mixtral": 1000000.0}


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def load_tensors(d: Path) -> dict[str, np.ndarray]:
    files = sorted(d.glob("*.safetensors"))
    index = d / "model.safetensors.index.json"
    if index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        files = sorted({d / f for f in wm.values()})
    out = {}
    fp8 = set()
    for f in files:
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                t = h.get_tensor(k)
                if h.get_slice(k).get_dtype() == "F8_E4M3":
                    fp8.add(k)
                if t.dtype.is_floating_point:
                    out[k] = t.float().numpy()  # F8_E4M3: the code's value, exactly
                else:
                    out[k] = t.numpy()
    for k in fp8:  # block-wise FP8: W = q * weight_scale_inv[r // 128, c // 128]
        out[k] = fp8_dequant(out[k], out.pop(k[: -len("weight")] + "weight_scale_inv"))
    return out


def fp8_dequant(q: np.ndarray, scale_inv: np.ndarray, block: int = 128) -> np.ndarray:
    """q (R, C) as float32, scale_inv (ceil(R/128), ceil(C/128)) -> W (R, C) float32.

    Hugging Face fine-grained FP8 (Qwen3-FP8, DeepSeek-V3): one f32 scale per 128x128
    block, edge blocks are smaller.
    """
    r, c = q.shape
    if scale_inv.shape != (-(-r // block), -(-c // block)):
        raise ValueError(f"weight_scale_inv {scale_inv.shape} does not fit weight {q.shape}")
    s = np.repeat(np.repeat(scale_inv.astype(np.float32), block, 0)[:r], block, 1)[:, :c]
    return (q.astype(np.float32) * s).astype(np.float32)


def mxfp4_dequant(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """blocks (E, R, G, 16) u8, scales (E, R, G) u8 -> W (E, R, G*32) float32.

    Within a 32-element group, byte j holds element 2j in its low nibble and
    element 2j+1 in its high nibble; value = FP4_LUT[nibble] * 2**(scale-127).
    """
    lo = FP4_LUT[blocks & 0x0F]
    hi = FP4_LUT[blocks >> 4]
    vals = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], 32)
    vals = vals * np.exp2(scales.astype(np.float32) - 127.0)[..., None]
    return vals.reshape(*blocks.shape[:-2], blocks.shape[-2] * 32).astype(np.float32)


# ---------------------------------------------------------------------------
# Config interpretation
# ---------------------------------------------------------------------------

def rope_params(cfg: dict) -> dict:
    fam = cfg["model_type"]
    if cfg.get("rope_parameters"):
        rp = dict(cfg["rope_parameters"])
    else:  # old spelling: rope_theta at top level + optional rope_scaling
        rp = dict(cfg.get("rope_scaling") or {})
    rp.setdefault("rope_theta", cfg.get("rope_theta", DEFAULT_THETA.get(fam, 10000.0)))
    rp["rope_type"] = rp.get("rope_type", rp.get("type", "default"))
    if rp["rope_type"] in ("llama3", "yarn"):
        rp.setdefault("original_max_position_embeddings", cfg["max_position_embeddings"])
    return rp


def inv_freq_and_scale(cfg: dict, head_dim: int) -> tuple[np.ndarray, float]:
    rp = rope_params(cfg)
    base = float(rp["rope_theta"])
    dim = head_dim
    # transformers computes these in float32 from float32 exponents
    exps = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    pos_freqs = np.power(np.float32(base), exps, dtype=np.float32)
    inv = (np.float32(1.0) / pos_freqs).astype(np.float32)
    t = rp["rope_type"]
    if t == "default":
        return inv, 1.0
    if t == "linear":
        return (inv / np.float32(rp["factor"])).astype(np.float32), 1.0
    if t == "llama3":
        factor = rp["factor"]
        lo, hi = rp["low_freq_factor"], rp["high_freq_factor"]
        old = rp["original_max_position_embeddings"]
        low_wl, high_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        out = np.where(wl > low_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wl < high_wl) & ~(wl > low_wl)
        return np.where(medium, smoothed, out).astype(np.float32), 1.0
    if t == "yarn":
        factor = rp["factor"]
        ompe = rp["original_max_position_embeddings"]
        att = rp.get("attention_factor")
        mscale, mscale_all = rp.get("mscale"), rp.get("mscale_all_dim")

        def get_mscale(s, m=1.0):
            return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

        if att is None:
            att = get_mscale(factor, mscale) / get_mscale(factor, mscale_all) if (mscale and mscale_all) \
                else get_mscale(factor)
        beta_fast = rp.get("beta_fast") or 32
        beta_slow = rp.get("beta_slow") or 1

        def corr_dim(rot):
            return (dim * math.log(ompe / (rot * 2 * math.pi))) / (2 * math.log(base))

        low, high = corr_dim(beta_fast), corr_dim(beta_slow)
        if rp.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
        extrap = 1 - ramp
        inv_interp = (np.float32(1.0) / (np.float32(factor) * pos_freqs)).astype(np.float32)
        out = inv_interp * (1 - extrap) + inv * extrap
        return out.astype(np.float32), float(att)
    raise NotImplementedError(t)


def layer_windows(cfg: dict) -> list[int | None]:
    """Per layer: window size (keys k with q - W < k <= q), or None for full attention."""
    fam, n = cfg["model_type"], cfg["num_hidden_layers"]
    sw = cfg.get("sliding_window")
    if fam in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe") and not cfg.get("use_sliding_window", False):
        sw = None  # the config zeroes/nulls the window unless use_sliding_window
    if "layer_types" in cfg and cfg["layer_types"] is not None:
        types = cfg["layer_types"]
    elif fam in ("qwen2", "qwen3"):
        types = ["sliding_attention" if (sw is not None and i >= cfg.get("max_window_layers", 28))
                 else "full_attention" for i in range(n)]
    elif fam == "qwen2_moe":
        types = ["sliding_attention" if (i % 2 == 0 and i < cfg.get("max_window_layers", 28) and sw)
                 else "full_attention" for i in range(n)]
    elif fam == "gpt_oss":
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    elif fam in ("mistral", "mixtral", "qwen3_moe"):
        types = ["sliding_attention" if sw else "full_attention"] * n
    else:  # llama, olmoe
        types = ["full_attention"] * n
    if fam in ("mistral", "mixtral", "qwen3_moe"):
        # these models build ONE mask for all layers from config.sliding_window
        return [sw] * n
    return [sw if t == "sliding_attention" else None for t in types]


def num_experts(cfg: dict) -> int:
    # qwen2_moe/olmoe write num_experts; mixtral/gpt_oss num_local_experts; transformers 5.23
    # writes num_local_experts for qwen3_moe too, while Hub Qwen3-MoE configs say num_experts
    return cfg["num_experts"] if "num_experts" in cfg else cfg["num_local_experts"]


def is_moe_layer(cfg: dict, i: int) -> bool:
    fam = cfg["model_type"]
    if fam in ("qwen2_moe", "qwen3_moe"):
        return (i not in (cfg.get("mlp_only_layers") or [])) and num_experts(cfg) > 0 \
            and (i + 1) % cfg.get("decoder_sparse_step", 1) == 0
    return fam in ("olmoe", "mixtral", "gpt_oss")


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------

def rms(x, w, eps):
    x = x.astype(np.float32)
    var = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(var + np.float32(eps))).astype(np.float32) * w


def silu(x):
    return x / (1 + np.exp(-x))


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def rope(x, cos, sin):
    # x (heads, T, D); neox/"rotate_half" pairing: dim d with d + D/2
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Model:
    def __init__(self, d: Path):
        self.cfg = cfg = json.loads((d / "config.json").read_text())
        self.w = load_tensors(d)
        self.fam = cfg["model_type"]
        self.H = cfg["hidden_size"]
        self.nh = cfg["num_attention_heads"]
        self.nkv = cfg.get("num_key_value_heads") or self.nh
        self.hd = cfg.get("head_dim") or self.H // self.nh
        self.eps = cfg["rms_norm_eps"]
        self.inv_freq, self.att_scale = inv_freq_and_scale(cfg, self.hd)
        self.windows = layer_windows(cfg)
        self.experts = {}
        for i in range(cfg["num_hidden_layers"]):
            if is_moe_layer(cfg, i):
                self.experts[i] = self._experts(i)

    def W(self, name):
        return self.w[name]

    def _experts(self, i):
        """Returns per-expert (gate (I,H), up (I,H), down (H,I)) + gpt_oss biases."""
        p = f"model.layers.{i}."
        w = self.w
        if self.fam == "gpt_oss":
            e = p + "mlp.experts."
            if e + "gate_up_proj_blocks" in w:  # MXFP4: stored as (E, out, in)
                gu = mxfp4_dequant(w[e + "gate_up_proj_blocks"], w[e + "gate_up_proj_scales"])  # (E, 2I, H)
                dn = mxfp4_dequant(w[e + "down_proj_blocks"], w[e + "down_proj_scales"])        # (E, H, I)
            else:  # plain: stored as (E, in, out)
                gu = np.swapaxes(w[e + "gate_up_proj"], 1, 2)  # (E, H, 2I) -> (E, 2I, H)
                dn = np.swapaxes(w[e + "down_proj"], 1, 2)     # (E, I, H) -> (E, H, I)
            gub = w[e + "gate_up_proj_bias"]
            # rows interleaved: even rows gate, odd rows up
            return [dict(gate=gu[x, 0::2], up=gu[x, 1::2], down=dn[x],
                         gate_b=gub[x, 0::2], up_b=gub[x, 1::2], down_b=w[e + "down_proj_bias"][x])
                    for x in range(gu.shape[0])]
        if self.fam == "mixtral":
            e = p + "block_sparse_moe.experts."
            n = num_experts(self.cfg)
            return [dict(gate=w[f"{e}{x}.w1.weight"], up=w[f"{e}{x}.w3.weight"], down=w[f"{e}{x}.w2.weight"])
                    for x in range(n)]
        e = p + "mlp.experts."
        if e + "gate_up_proj" in w:  # transformers v5 fused: (E, 2I, H) [gate; up], (E, H, I)
            gu, dn = w[e + "gate_up_proj"], w[e + "down_proj"]
            i2 = gu.shape[1] // 2
            return [dict(gate=gu[x, :i2], up=gu[x, i2:], down=dn[x]) for x in range(gu.shape[0])]
        n = num_experts(self.cfg)
        return [dict(gate=w[f"{e}{x}.gate_proj.weight"], up=w[f"{e}{x}.up_proj.weight"],
                     down=w[f"{e}{x}.down_proj.weight"]) for x in range(n)]

    def attention(self, i, x):
        p = f"model.layers.{i}.self_attn."
        w, T = self.w, x.shape[0]

        def lin(name):
            y = x @ w[p + name + ".weight"].T
            if p + name + ".bias" in w:
                y = y + w[p + name + ".bias"]
            return y

        q, k, v = lin("q_proj"), lin("k_proj"), lin("v_proj")
        if self.fam == "olmoe":  # norm over the whole projection, then clip
            q = rms(q, w[p + "q_norm.weight"], self.eps)
            k = rms(k, w[p + "k_norm.weight"], self.eps)
            c = self.cfg.get("clip_qkv")
            if c is not None:
                q, k, v = np.clip(q, -c, c), np.clip(k, -c, c), np.clip(v, -c, c)
        q = q.reshape(T, self.nh, self.hd).transpose(1, 0, 2)
        k = k.reshape(T, self.nkv, self.hd).transpose(1, 0, 2)
        v = v.reshape(T, self.nkv, self.hd).transpose(1, 0, 2)
        if self.fam in ("qwen3", "qwen3_moe"):  # per-head norm
            q = rms(q, w[p + "q_norm.weight"], self.eps)
            k = rms(k, w[p + "k_norm.weight"], self.eps)
        pos = np.arange(T, dtype=np.float32)[:, None]
        ang = pos * self.inv_freq[None, :]
        cos = (np.cos(ang) * self.att_scale).astype(np.float32)
        sin = (np.sin(ang) * self.att_scale).astype(np.float32)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        rep = self.nh // self.nkv
        k = np.repeat(k, rep, axis=0)  # head h uses kv head h // rep
        v = np.repeat(v, rep, axis=0)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(self.hd)
        qi, ki = np.arange(T)[:, None], np.arange(T)[None, :]
        allowed = ki <= qi
        if self.windows[i]:
            allowed &= ki > qi - self.windows[i]
        s = np.where(allowed[None], s, -np.inf)
        if self.fam == "gpt_oss":  # sink logit per head joins the softmax, then is dropped
            sink = np.broadcast_to(w[p + "sinks"][:, None, None], (self.nh, T, 1))
            pr = softmax(np.concatenate([s, sink], axis=-1))[..., :-1]
        else:
            pr = softmax(s)
        o = (pr @ v).transpose(1, 0, 2).reshape(T, self.nh * self.hd)
        y = o @ w[p + "o_proj.weight"].T
        if p + "o_proj.bias" in w:
            y = y + w[p + "o_proj.bias"]
        return y

    def mlp(self, i, x):
        p = f"model.layers.{i}.mlp."
        w = self.w
        if i not in self.experts:
            return (silu(x @ w[p + "gate_proj.weight"].T) * (x @ w[p + "up_proj.weight"].T)) @ w[p + "down_proj.weight"].T
        ex = self.experts[i]
        k = self.cfg["num_experts_per_tok"]
        out = np.zeros_like(x)
        if self.fam == "gpt_oss":
            logits = x @ w[p + "router.weight"].T + w[p + "router.bias"]
            alpha, limit = self.cfg.get("swiglu_alpha", 1.702), self.cfg.get("swiglu_limit", 7.0)
            for t in range(x.shape[0]):
                top = np.argsort(-logits[t], kind="stable")[:k]
                wts = softmax(logits[t, top])  # softmax over the selected k only
                for e, g in zip(top, wts):
                    E = ex[e]
                    gate = np.minimum(x[t] @ E["gate"].T + E["gate_b"], limit)
                    up = np.clip(x[t] @ E["up"].T + E["up_b"], -limit, limit)
                    h = (up + 1) * (gate / (1 + np.exp(-alpha * gate)))
                    out[t] += g * (h @ E["down"].T + E["down_b"])
            return out
        gate_name = p + "gate.weight" if self.fam != "mixtral" else f"model.layers.{i}.block_sparse_moe.gate.weight"
        logits = x @ w[gate_name].T
        probs = softmax(logits)
        renorm = True if self.fam == "mixtral" else self.cfg.get("norm_topk_prob", False)
        for t in range(x.shape[0]):
            top = np.argsort(-probs[t], kind="stable")[:k]
            wts = probs[t, top]
            if renorm:
                wts = wts / wts.sum()
            for e, g in zip(top, wts):
                E = ex[e]
                out[t] += g * ((silu(x[t] @ E["gate"].T) * (x[t] @ E["up"].T)) @ E["down"].T)
        if self.fam == "qwen2_moe":
            sg = 1 / (1 + np.exp(-(x @ w[p + "shared_expert_gate.weight"].T)))
            se = (silu(x @ w[p + "shared_expert.gate_proj.weight"].T) * (x @ w[p + "shared_expert.up_proj.weight"].T)) \
                @ w[p + "shared_expert.down_proj.weight"].T
            out = out + sg * se
        return out

    def forward(self, ids):
        w = self.w
        x = w["model.embed_tokens.weight"][np.array(ids)]
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = x + self.attention(i, rms(x, w[p + "input_layernorm.weight"], self.eps))
            x = x + self.mlp(i, rms(x, w[p + "post_attention_layernorm.weight"], self.eps))
        x = rms(x, w["model.norm.weight"], self.eps)
        head = w.get("lm_head.weight")
        if head is None or self.cfg.get("tie_word_embeddings", False):
            head = w["model.embed_tokens.weight"]
        return x @ head.T


def check(d: Path) -> tuple[float, bool]:
    exp = json.loads((d / "expected.json").read_text())
    m = Model(d)
    logits = m.forward(exp["ids"])
    diff = float(np.abs(logits - np.array(exp["logits"], dtype=np.float32)).max())
    seq = list(exp["ids"])
    for _ in range(len(exp["greedy"])):
        seq.append(int(np.argmax(m.forward(seq)[-1])))
    return diff, seq[len(exp["ids"]):] == exp["greedy"], exp["atol"]


def main(argv):
    # default: the Hugging Face fixtures (route_stats has no checkpoint; the volt fixtures are
    # checked by tools/check_volt_reference.py)
    names = argv[1:] or sorted(
        p.name for p in FIXTURES.iterdir()
        if (p / "expected.json").exists() and (p / "config.json").exists()
        and json.loads((p / "config.json").read_text()).get("model_type") != "volt")
    bad = 0
    for n in names:
        diff, greedy_ok, atol = check(FIXTURES / n)
        ok = diff <= atol and greedy_ok
        bad += not ok
        print(f"{n:<15} max|dlogit| {diff:.2e}  greedy {'ok' if greedy_ok else 'MISMATCH'}  {'PASS' if ok else 'FAIL'}")
    print(f"{len(names) - bad} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
