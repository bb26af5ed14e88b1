#!/usr/bin/env python3
"""Regenerate Volt's golden-test fixtures (tiny random Hugging Face checkpoints).

    python3 tools/make_fixtures.py            # all fixtures
    python3 tools/make_fixtures.py mixtral    # only the named ones

Every fixture is written to tests/fixtures/<name>/ and holds a Hugging Face
checkpoint (config.json + safetensors) plus expected.json:

    {"family", "transformers", "ids" (20 prompt ids), "logits" (20 x vocab),
     "greedy" (10 ids), "atol"}

* Models are built from configs (no download) and re-initialised with large,
  seeded random weights so that attention is peaked, routing differs between
  tokens and logits have std > 1 (the transformers default init, std 0.02,
  gives near-uniform logits and weak tests).
* Expected logits come from the transformers model in float32 with eager
  attention and eager experts.  A checkpoint stored in bf16 / f16 / MXFP4 is
  computed from exactly the stored values (rounded / dequantised first), put
  into the float32 model.
* `greedy` is a plain loop of full forwards without KV cache (argmax of the
  last position, append, repeat 10 times; EOS is not special).
* Every candidate seed is checked: no near-tie between the k-th and (k+1)-th
  routing score of any MoE layer at any position that the greedy run feeds
  (gap > 1e-3), greedy top-1 / top-2 logit gaps > 1e-3, routing varies across
  tokens, attention is peaked, and every modelled reimplementation mistake
  (ABLATIONS: ignoring the window, rope scaling, yarn truncate, norm_topk_prob,
  clip_qkv, the SwiGLU clamp, sinks, gate/up layout, MXFP4 nibble order...)
  moves some logit by >= 25*atol.  If a check fails, the seed is bumped by one
  (deterministic) and the fixture rebuilt.
* After writing, each fixture is reloaded with
  AutoModelForCausalLM.from_pretrained(dir, dtype=float32) and its logits and
  greedy tokens are compared with expected.json.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

try:  # transformers' own MXFP4 dequantiser: used to cross-check our packing
    from transformers.integrations.mxfp4 import FP4_VALUES as HF_FP4_VALUES
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
except Exception:  # pragma: no cover
    HF_FP4_VALUES = None
    convert_moe_packed_tensors = None

transformers.logging.set_verbosity_error()
try:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

torch.set_num_threads(1)  # reproducible reductions
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "fixtures"

PROMPT_LEN = 20
GREEDY_STEPS = 10
ATOL = 2e-3
MIN_GAP = 1e-3          # routing and greedy near-tie threshold
MIN_EXPERT_SETS = 4     # distinct top-k sets per MoE layer over the prompt
MIN_LOGIT_STD = 1.0
MIN_ATTN_PEAK = 0.30    # mean max attention prob (rows >= 4), uniform would be ~0.1
MIN_ABLATION_EFFECT = 25 * ATOL  # every modelled mistake must move some logit by >= 0.05
MAX_ATTEMPTS = 60

# ---------------------------------------------------------------------------
# Fixture table
# ---------------------------------------------------------------------------
#   family        transformers model_type
#   seed          first seed tried (bumped by one until every check passes)
#   config        kwargs for AutoConfig.for_model
#   storage       float32 | bfloat16 | float16 | mxfp4 (experts MXFP4, rest bf16)
#   layout        hub (save_pretrained) | fused (v5 in-memory expert names)
#   shard         max_shard_size for save_pretrained (sharded checkpoint)
#   config_edit   name of a post-processing step for config.json
#   init          overrides for the weight init gains
#   exercises     text for the README table

COMMON = dict(bos_token_id=1, eos_token_id=2, pad_token_id=None, rms_norm_eps=1e-6)

FIXTURES = [
    # ------------------------------------------------------------ qwen2_moe
    dict(
        name="qwen2_moe", family="qwen2_moe", seed=1000, storage="float32",
        config=dict(
            vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=1, moe_intermediate_size=16,
            shared_expert_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
            norm_topk_prob=False, mlp_only_layers=[1], decoder_sparse_step=1,
            use_sliding_window=False, max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **COMMON),
        exercises="shared expert + sigmoid shared_expert_gate, q/k/v biases, norm_topk_prob=false, "
                  "dense MLP at layer 1 (between MoE layers 0 and 2) via mlp_only_layers, GQA 4:1 (head_dim 8), E=8 k=2, hub per-expert names",
    ),
    dict(
        name="qwen2_moe_alt", family="qwen2_moe", seed=1100, storage="float32",
        config=dict(
            vocab_size=101, hidden_size=40, intermediate_size=56, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, moe_intermediate_size=12,
            shared_expert_intermediate_size=20, num_experts=6, num_experts_per_tok=3,
            norm_topk_prob=True, decoder_sparse_step=2,
            use_sliding_window=True, sliding_window=5, max_window_layers=3,
            max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **COMMON),
        exercises="decoder_sparse_step=2 (layers 1,3 MoE; 0,2 dense), sliding window 5 on layers 0,2 "
                  "(use_sliding_window + max_window_layers=3, layer_types in config.json), norm_topk_prob=true, "
                  "odd vocab 101, head_dim 10, GQA 2:1, E=6 k=3",
    ),
    # ------------------------------------------------------------ qwen3_moe
    dict(
        name="qwen3_moe", family="qwen3_moe", seed=2000, storage="float32", layout="hub",
        config_edit="hub_num_experts",
        config=dict(
            vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, moe_intermediate_size=16,
            num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
            max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **COMMON),
        exercises="per-head q_norm/k_norm, norm_topk_prob=true, head_dim 16 != hidden/heads 8, GQA 2:1, "
                  "E=8 k=2, hub per-expert names (experts.E.{gate,up,down}_proj.weight), config.json spells "
                  "the expert count `num_experts` like the Hub (transformers 5.23 itself writes `num_local_experts`)",
    ),
    dict(
        name="qwen3_moe_alt", family="qwen3_moe", seed=2100, storage="float32", layout="fused",
        config=dict(
            vocab_size=96, hidden_size=48, intermediate_size=40, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=2, head_dim=12, moe_intermediate_size=12,
            num_experts=5, num_experts_per_tok=3, norm_topk_prob=False, mlp_only_layers=[0],
            max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **COMMON),
        exercises="transformers-v5 FUSED expert tensors (mlp.experts.gate_up_proj (E,2I,H) gate rows first, "
                  "mlp.experts.down_proj (E,H,I)), dense layer 0 via mlp_only_layers, norm_topk_prob=false, "
                  "head_dim 12 != 8, GQA 3:1, E=5 k=3",
    ),
    # ------------------------------------------------------------ olmoe
    dict(
        name="olmoe", family="olmoe", seed=3000, storage="bfloat16",
        config=dict(
            vocab_size=128, hidden_size=32, intermediate_size=16, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=4, num_experts=8, num_experts_per_tok=2,
            norm_topk_prob=False, clip_qkv=None, max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **COMMON),
        exercises="stored in bf16; q_norm/k_norm over the whole q/k projection (not per head), "
                  "norm_topk_prob=false, MHA, E=8 k=2",
    ),
    dict(
        name="olmoe_alt", family="olmoe", seed=3100, storage="float32",
        config=dict(
            vocab_size=112, hidden_size=48, intermediate_size=12, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=3, num_experts=6, num_experts_per_tok=3,
            norm_topk_prob=True, clip_qkv=2.0, max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, **COMMON),
        exercises="clip_qkv=2.0 (clamps q,k,v after q/k norm; ~20% of q/k entries clipped), norm_topk_prob=true, GQA 2:1 "
                  "(k_norm over kv_heads*head_dim=24), E=6 k=3",
    ),
    # ------------------------------------------------------------ mixtral
    dict(
        name="mixtral", family="mixtral", seed=4000, storage="float32", shard="48KB",
        config=dict(
            vocab_size=128, hidden_size=32, intermediate_size=16, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
            sliding_window=6, max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **COMMON),
        exercises="hub names block_sparse_moe.gate / experts.E.w1,w2,w3; sliding_window=6 on all layers; "
                  "sharded (model-0000i-of-0000n.safetensors + index); E=8 k=2 (always renormalised)",
    ),
    dict(
        name="mixtral_alt", family="mixtral", seed=4100, storage="float16",
        config=dict(
            vocab_size=97, hidden_size=40, intermediate_size=24, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=1, head_dim=16, num_local_experts=6,
            num_experts_per_tok=3, sliding_window=None, max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **COMMON),
        exercises="stored in f16; explicit head_dim 16 (q dim 64 != hidden 40), MQA (1 kv head), "
                  "no sliding window, E=6 k=3, odd vocab 97, single file",
    ),
    # ------------------------------------------------------------ gpt_oss
    dict(
        name="gpt_oss", family="gpt_oss", seed=5000, storage="mxfp4",
        init=dict(expert_gain=3.5, router_gain=3.0),
        config=dict(
            vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=1, head_dim=16, num_local_experts=8,
            num_experts_per_tok=4, sliding_window=6,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            max_position_embeddings=8192, swiglu_limit=7.0, rms_norm_eps=1e-5,
            # gpt-oss-20b uses original_max_position_embeddings=4096; 256 moves the yarn ramp onto
            # dims that rotate visibly within 30 positions, so `truncate` matters here
            rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                             "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                             "original_max_position_embeddings": 256},
            bos_token_id=1, eos_token_id=2, pad_token_id=None),
        exercises="MXFP4 experts (gate_up_proj_blocks/scales, down_proj_blocks/scales) + bf16 rest, "
                  "attention sinks, q/k/v/o biases, yarn (factor 32, beta 32/1, orig 256, truncate=false), alternating "
                  "sliding(6)/full layers, router bias, expert biases, clamped SwiGLU (limit 7 reached), "
                  "MQA 4:1, E=8 k=4",
    ),
    dict(
        name="gpt_oss_alt", family="gpt_oss", seed=5100, storage="float32",
        init=dict(expert_gain=2.0, router_gain=3.0),
        config=dict(
            vocab_size=100, hidden_size=32, intermediate_size=24, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=12, num_local_experts=6,
            num_experts_per_tok=2, sliding_window=5,
            layer_types=["full_attention", "sliding_attention", "sliding_attention"],
            max_position_embeddings=512, swiglu_limit=2.5, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0,
                             "beta_fast": 16.0, "beta_slow": 2.0, "truncate": True,
                             "original_max_position_embeddings": 64},
            bos_token_id=1, eos_token_id=2, pad_token_id=None),
        exercises="plain f32 experts as save_pretrained writes them: fused, transposed, interleaved "
                  "mlp.experts.gate_up_proj (E,H,2I) and down_proj (E,I,H); yarn truncate=true; "
                  "non-alternating layer_types [full,sliding,sliding] window 5; swiglu_limit=2.5; "
                  "head_dim 12, GQA 2:1, E=6 k=2",
    ),
    # ------------------------------------------------------------ llama
    dict(
        name="llama", family="llama", seed=6000, storage="float32",
        config=dict(
            vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
            max_position_embeddings=512,
            # wavelengths 6.3 | 29 | 135 ...: band high (kept), medium (smoothed), low (/8)
            rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 64}, **COMMON),
        exercises="llama3 rope scaling (factor 8, low 1, high 4, orig 64: all three frequency bands hit), "
                  "head_dim 12, GQA 2:1, untied lm_head, "
                  "config as written by transformers v5 (rope_parameters incl. rope_theta)",
    ),
    dict(
        name="llama_alt", family="llama", seed=6100, storage="float32", config_edit="old_rope_keys",
        config=dict(
            vocab_size=120, hidden_size=40, intermediate_size=72, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
            max_position_embeddings=256,
            rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
                             "low_freq_factor": 2.0, "high_freq_factor": 8.0,
                             "original_max_position_embeddings": 256}, **COMMON),
        exercises="tied embeddings (no lm_head tensor), OLD config keys rope_theta + rope_scaling "
                  "(llama3, factor 4, low 2, high 8, orig 256), explicit head_dim 16 (q dim 64 != hidden 40), MQA",
    ),
    # ------------------------------------------------------------ mistral
    dict(
        name="mistral", family="mistral", seed=7000, storage="float32",
        config=dict(
            vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=1, sliding_window=6,
            max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **COMMON),
        exercises="sliding_window=6 on all layers, GQA 4:1",
    ),
    dict(
        name="mistral_alt", family="mistral", seed=7100, storage="float32",
        config=dict(
            vocab_size=104, hidden_size=48, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=None,
            max_position_embeddings=256,
            rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.5}, **COMMON),
        exercises="linear rope scaling (factor 2.5), explicit head_dim 16 (q dim 64 != hidden 48), "
                  "no sliding window, GQA 2:1",
    ),
    # ------------------------------------------------------------ qwen2
    dict(
        name="qwen2", family="qwen2", seed=8000, storage="float32", config_edit="drop_layer_types",
        config=dict(
            vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
            sliding_window=5, max_window_layers=2, max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **COMMON),
        exercises="q/k/v biases, use_sliding_window=true + max_window_layers=2: layers 2,3 slide (window 5), "
                  "layer_types REMOVED from config.json (rule must be derived), GQA 2:1",
    ),
    dict(
        name="qwen2_alt", family="qwen2", seed=8100, storage="float32",
        config=dict(
            vocab_size=112, hidden_size=48, intermediate_size=72, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=2, use_sliding_window=False,
            tie_word_embeddings=True, max_position_embeddings=256,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                             "original_max_position_embeddings": 64}, **COMMON),
        exercises="yarn rope (factor 4, orig 64, beta defaults 32/1, truncate absent = true, "
                  "attention_factor 0.1*ln(4)+1 on cos/sin), tied embeddings, no sliding, GQA 3:1",
    ),
    # ------------------------------------------------------------ qwen3
    dict(
        name="qwen3", family="qwen3", seed=9000, storage="float32",
        config=dict(
            vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, use_sliding_window=True,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
            max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **COMMON),
        exercises="per-head q_norm/k_norm, explicit layer_types [sliding,full,sliding,sliding] window 4, "
                  "head_dim 16 != 8, GQA 2:1",
    ),
    dict(
        name="qwen3_alt", family="qwen3", seed=9100, storage="float32",
        config=dict(
            vocab_size=100, hidden_size=40, intermediate_size=56, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=3, head_dim=12, use_sliding_window=False,
            tie_word_embeddings=True, attention_bias=True, max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **COMMON),
        exercises="tied embeddings, attention_bias=true (q/k/v/o biases), head_dim 12 with 6 heads "
                  "(q dim 72 != hidden 40), GQA 2:1, no sliding",
    ),
]

# ---------------------------------------------------------------------------
# Model building and weight init
# ---------------------------------------------------------------------------

INIT_DEFAULTS = dict(
    linear_gain=1.0,   # std = gain / sqrt(fan_in) for every 2-D projection
    qk_gain=1.6,       # q_proj / k_proj (sharper attention)
    lm_gain=3.0,       # lm_head: logits std ~ lm_gain
    embed_std=1.0,
    expert_gain=1.4,
    router_gain=1.5,   # router logits std ~ router_gain (softmax-first routers: probs must not tie)
    norm_jitter=0.2,   # norm weights = 1 + 0.2*randn
    qk_norm_scale=1.6, # q_norm / k_norm weights = qk_norm_scale * (1 + 0.2*randn)
    bias_std=0.2,
    router_bias_std=0.5,
    sink_std=1.0,
)


def build_config(spec):
    cfg = AutoConfig.for_model(spec["family"], **copy.deepcopy(spec["config"]))
    return cfg


def build_model(cfg):
    model = AutoModelForCausalLM.from_config(
        cfg, attn_implementation="eager", dtype=torch.float32, experts_implementation="eager"
    )
    model.eval()
    return model


@torch.no_grad()
def reinit(model, seed, spec):
    p = dict(INIT_DEFAULTS)
    p.update(spec.get("init", {}))
    g = torch.Generator().manual_seed(seed)
    family = spec["family"]

    def randn(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    for name, param in model.named_parameters():
        shape = tuple(param.shape)
        if name.endswith("norm.weight"):  # input/post_attention/final norms, q_norm, k_norm
            w = 1.0 + p["norm_jitter"] * randn(shape)
            if "q_norm" in name or "k_norm" in name:
                w = w * p["qk_norm_scale"]
            param.copy_(w)
        elif name.endswith("embed_tokens.weight"):
            param.copy_(p["embed_std"] * randn(shape))
        elif name.endswith("lm_head.weight"):
            param.copy_(p["lm_gain"] / math.sqrt(shape[1]) * randn(shape))
        elif name.endswith("self_attn.sinks"):
            param.copy_(p["sink_std"] * randn(shape))
        elif name.endswith("mlp.router.bias"):
            param.copy_(p["router_bias_std"] * randn(shape))
        elif name.endswith("mlp.gate.weight") or name.endswith("mlp.router.weight"):
            param.copy_(p["router_gain"] / math.sqrt(shape[1]) * randn(shape))
        elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            # gpt_oss stores (E, in, out); the others (E, out, in)
            fan_in = shape[1] if family == "gpt_oss" else shape[2]
            param.copy_(p["expert_gain"] / math.sqrt(fan_in) * randn(shape))
        elif name.endswith("_bias") or name.endswith(".bias"):
            param.copy_(p["bias_std"] * randn(shape))
        elif param.dim() == 2:
            gain = p["qk_gain"] if (name.endswith("q_proj.weight") or name.endswith("k_proj.weight")) else p["linear_gain"]
            if name.endswith("shared_expert_gate.weight"):
                gain = 2.0
            param.copy_(gain / math.sqrt(shape[1]) * randn(shape))
        else:
            raise RuntimeError(f"no init rule for {name} {shape}")


# ---------------------------------------------------------------------------
# MXFP4
# ---------------------------------------------------------------------------

FP4_MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
FP4_LUT = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                        -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def mxfp4_quantize(w):
    """Quantise w (..., K) along its last axis, K % 32 == 0.

    Returns blocks u8 (..., K/32, 16) and scales u8 (..., K/32): element 2j of a
    32-block is the low nibble of byte j, element 2j+1 the high nibble; a nibble
    is an FP4 E2M1 code (bit 3 = sign, LUT above); scale byte s means 2**(s-127).
    """
    *pre, k = w.shape
    assert k % 32 == 0, k
    grp = w.reshape(*pre, k // 32, 32).to(torch.float64)
    amax = grp.abs().amax(-1)
    # smallest power of two with amax / 2**e <= 6
    e = torch.ceil(torch.log2(torch.clamp(amax, min=1e-30) / 6.0))
    e = torch.where(amax > 0, e, torch.full_like(e, -127.0)).clamp(-127, 127)
    scaled = grp / torch.pow(2.0, e)[..., None]
    mags = FP4_MAGNITUDES.to(torch.float64)
    idx = (scaled.abs()[..., None] - mags).abs().argmin(-1)
    code = idx + 8 * ((scaled < 0) & (idx > 0)).long()
    code = code.to(torch.uint8)
    blocks = (code[..., 0::2] | (code[..., 1::2] << 4)).to(torch.uint8)
    scales = (e + 127).to(torch.uint8)
    return blocks.contiguous(), scales.contiguous()


def mxfp4_dequantize(blocks, scales):
    """Our own reference dequantiser: (..., G, 16), (..., G) -> (..., G*32) float32."""
    lo = (blocks & 0x0F).long()
    hi = (blocks >> 4).long()
    vals = torch.stack([FP4_LUT[lo], FP4_LUT[hi]], dim=-1).reshape(*blocks.shape[:-1], 32)
    vals = vals * torch.pow(2.0, scales.to(torch.float32) - 127.0)[..., None]
    return vals.reshape(*blocks.shape[:-2], blocks.shape[-2] * 32)


def gpt_oss_param_to_mxfp4(param):
    """HF GptOssExperts param (E, in, out) -> on-disk blocks/scales of W (E, out, in).

    gate_up_proj param (E, H, 2I)  -> blocks (E, 2I, H/32, 16), scales (E, 2I, H/32)
    down_proj    param (E, I, H)   -> blocks (E, H, I/32, 16),  scales (E, H, I/32)
    """
    w = param.detach().to(torch.float32).transpose(1, 2).contiguous()  # (E, out, in)
    return mxfp4_quantize(w)


def mxfp4_to_gpt_oss_param(blocks, scales):
    """Inverse of the above: what transformers' convert_moe_packed_tensors returns."""
    return mxfp4_dequantize(blocks, scales).transpose(1, 2).contiguous()


@torch.no_grad()
def apply_mxfp4(model):
    """Replace every expert weight by its MXFP4-dequantised value (checked against HF)."""
    if HF_FP4_VALUES is not None and not torch.equal(torch.tensor(HF_FP4_VALUES), FP4_LUT):
        raise RuntimeError("FP4 E2M1 table differs from transformers' FP4_VALUES")
    packed = {}
    for name, param in model.named_parameters():
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            blocks, scales = gpt_oss_param_to_mxfp4(param)
            deq = mxfp4_to_gpt_oss_param(blocks, scales)
            if convert_moe_packed_tensors is not None:
                hf = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
                if not torch.equal(hf, deq):
                    raise RuntimeError(f"MXFP4 layout mismatch with transformers for {name}")
            # quantisation error stays bounded (sanity)
            rel = (deq - param).abs().max() / param.abs().max()
            if rel > 0.25:
                raise RuntimeError(f"MXFP4 quantisation error too large for {name}: {rel}")
            param.copy_(deq)
            packed[name] = (blocks, scales)
    return packed


# ---------------------------------------------------------------------------
# Storage-dtype rounding
# ---------------------------------------------------------------------------

@torch.no_grad()
def round_params(model, dtype):
    for _, param in model.named_parameters():
        param.copy_(param.to(dtype).to(torch.float32))


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------

def router_modules(model):
    return [(n, m) for n, m in model.named_modules() if type(m).__name__.endswith("TopKRouter")]


@torch.no_grad()
def forward_logits(model, ids):
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].to(torch.float32)


@torch.no_grad()
def greedy(model, ids, steps=GREEDY_STEPS):
    seq = list(ids)
    gaps = []
    for _ in range(steps):
        logits = forward_logits(model, seq)[-1]
        top = torch.topk(logits, 2)
        gaps.append(float(top.values[0] - top.values[1]))
        seq.append(int(top.indices[0]))
    return seq[len(ids):], gaps


@torch.no_grad()
def routing_stats(model, spec, seq, n_prompt):
    """Gap between k-th and (k+1)-th routing score at every position of seq."""
    routers = router_modules(model)
    if not routers:
        return None
    captured = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: captured.append(out[0].detach().clone()))
             for _, m in routers]
    try:
        forward_logits(model, seq)
    finally:
        for h in hooks:
            h.remove()
    k = model.config.num_experts_per_tok
    min_gap = float("inf")
    min_sets = None
    for logits in captured:
        logits = logits.reshape(-1, logits.shape[-1]).to(torch.float32)
        # the tensor top-k is taken on: softmax probs, except gpt_oss (raw logits + bias)
        score = logits if spec["family"] == "gpt_oss" else torch.softmax(logits, dim=-1)
        srt = torch.sort(score, dim=-1, descending=True).values
        gap = float((srt[:, k - 1] - srt[:, k]).min())
        lgap = float((torch.sort(logits, dim=-1, descending=True).values[:, k - 1]
                      - torch.sort(logits, dim=-1, descending=True).values[:, k]).min())
        min_gap = min(min_gap, gap, lgap)
        sets = {tuple(sorted(r.tolist())) for r in torch.topk(score[:n_prompt], k, dim=-1).indices}
        min_sets = len(sets) if min_sets is None else min(min_sets, len(sets))
    return dict(min_gap=min_gap, min_sets=min_sets, n_layers=len(captured))


@torch.no_grad()
def attention_peak(model, ids):
    out = model(input_ids=torch.tensor([ids]), use_cache=False, output_attentions=True)
    peaks = []
    for a in out.attentions:  # (1, heads, q, k)
        a = a[0, :, 4:, :].to(torch.float32)
        peaks.append(a.max(-1).values.mean())
    return float(torch.stack(peaks).mean())


def has_sliding(cfg):
    lt = getattr(cfg, "layer_types", None)
    if lt is not None and "sliding_attention" in lt and getattr(cfg, "sliding_window", None):
        return True
    if cfg.model_type in ("mistral", "mixtral", "qwen3_moe") and getattr(cfg, "sliding_window", None):
        return True
    return False


# Ablations: plausible reimplementation mistakes.  Each one must move the
# logits by more than MIN_ABLATION_EFFECT, otherwise the fixture would not
# catch that mistake and the seed is rejected.
#   config ablations mutate a copy of the config (model rebuilt, same weights)
#   weight ablations mutate a copy of the state dict


def _cfg_no_window(cfg):
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = ["full_attention"] * cfg.num_hidden_layers
    if cfg.model_type in ("mistral", "mixtral", "qwen3_moe"):
        cfg.sliding_window = None


def _cfg_other_window_rule(cfg):
    # qwen2 slides layers i >= max_window_layers; qwen2_moe (this version) slides
    # even i < max_window_layers.  Swap the rules.
    n, mwl = cfg.num_hidden_layers, cfg.max_window_layers
    if cfg.model_type == "qwen2":
        cfg.layer_types = ["sliding_attention" if (i % 2 == 0 and i < mwl) else "full_attention" for i in range(n)]
    else:
        cfg.layer_types = ["sliding_attention" if i >= mwl else "full_attention" for i in range(n)]


def _cfg_rope(fn):
    def mutate(cfg):
        rp = dict(cfg.rope_parameters)
        fn(rp)
        cfg.rope_parameters = rp
    return mutate


def _rope_unscaled(rp):
    theta = rp["rope_theta"]
    rp.clear()
    rp.update(rope_type="default", rope_theta=theta)


def _rope_truncate_flip(rp):
    rp["truncate"] = not rp.get("truncate", True)


def _rope_attention_factor_one(rp):
    rp["attention_factor"] = 1.0


def _cfg_set(**kv):
    def mutate(cfg):
        for k, v in kv.items():
            setattr(cfg, k, v)
    return mutate


def _cfg_flip_norm_topk(cfg):
    cfg.norm_topk_prob = not cfg.norm_topk_prob


def _sd_interleave_as_halves(sd, model):
    # gpt_oss gate_up is interleaved (gate = cols 0::2, up = cols 1::2); a reader
    # that splits it into [gate | up] halves sees this model instead
    for k in list(sd):
        if k.endswith("experts.gate_up_proj") or k.endswith("experts.gate_up_proj_bias"):
            w = sd[k]
            i = w.shape[-1] // 2
            new = torch.empty_like(w)
            new[..., 0::2] = w[..., :i]
            new[..., 1::2] = w[..., i:]
            sd[k] = new


def _sd_swap_gate_up_halves(sd, model):
    for k in list(sd):
        if k.endswith("experts.gate_up_proj"):
            w = sd[k]
            i = w.shape[1] // 2
            sd[k] = torch.cat([w[:, i:], w[:, :i]], dim=1)


def _sd_no_sinks(sd, model):
    for k in list(sd):
        if k.endswith("self_attn.sinks"):
            sd[k] = torch.full_like(sd[k], -1e4)


def _sd_ungated_shared_expert(sd, model):
    # sigmoid(0) = 0.5, so doubling down_proj reproduces "shared expert without gate"
    for k in list(sd):
        if k.endswith("shared_expert_gate.weight"):
            sd[k] = torch.zeros_like(sd[k])
        elif k.endswith("shared_expert.down_proj.weight"):
            sd[k] = sd[k] * 2.0


def _sd_mxfp4_nibbles_swapped(sd, model):
    for k in list(sd):
        if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj"):
            blocks, scales = gpt_oss_param_to_mxfp4(sd[k])
            swapped = ((blocks & 0x0F) << 4) | (blocks >> 4)
            sd[k] = mxfp4_to_gpt_oss_param(swapped.to(torch.uint8), scales)


def _sd_mxfp4_scale_bias_128(sd, model):
    for k in list(sd):
        if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj"):
            sd[k] = sd[k] * 0.5


ABLATIONS = {
    "no_window": ("config", _cfg_no_window),
    "other_window_rule": ("config", _cfg_other_window_rule),
    "rope_unscaled": ("config", _cfg_rope(_rope_unscaled)),
    "yarn_truncate_flipped": ("config", _cfg_rope(_rope_truncate_flip)),
    "yarn_attention_factor_1": ("config", _cfg_rope(_rope_attention_factor_one)),
    "norm_topk_flipped": ("config", _cfg_flip_norm_topk),
    "no_clip_qkv": ("config", _cfg_set(clip_qkv=None)),
    "no_swiglu_clamp": ("config", _cfg_set(swiglu_limit=1e9)),
    "swiglu_limit_7": ("config", _cfg_set(swiglu_limit=7.0)),
    "no_sinks": ("weights", _sd_no_sinks),
    "gate_up_read_as_halves": ("weights", _sd_interleave_as_halves),
    "gate_up_halves_swapped": ("weights", _sd_swap_gate_up_halves),
    "shared_expert_ungated": ("weights", _sd_ungated_shared_expert),
    "mxfp4_nibbles_swapped": ("weights", _sd_mxfp4_nibbles_swapped),
    "mxfp4_scale_bias_128": ("weights", _sd_mxfp4_scale_bias_128),
}


def default_ablations(spec, cfg):
    names = []
    if has_sliding(cfg):
        names.append("no_window")
    if cfg.model_type in ("qwen2", "qwen2_moe") and has_sliding(cfg):
        names.append("other_window_rule")
    rtype = cfg.rope_parameters.get("rope_type", "default")
    if rtype != "default":
        names.append("rope_unscaled")
    if rtype == "yarn":
        names += ["yarn_truncate_flipped", "yarn_attention_factor_1"]
    if hasattr(cfg, "norm_topk_prob"):
        names.append("norm_topk_flipped")
    if getattr(cfg, "clip_qkv", None) is not None:
        names.append("no_clip_qkv")
    if cfg.model_type == "gpt_oss":
        names += ["no_swiglu_clamp", "no_sinks", "gate_up_read_as_halves"]
        if cfg.swiglu_limit != 7.0:
            names.append("swiglu_limit_7")
    if cfg.model_type == "qwen2_moe":
        names.append("shared_expert_ungated")
    if cfg.model_type in ("qwen2_moe", "qwen3_moe", "olmoe", "mixtral"):
        names.append("gate_up_halves_swapped")
    if spec["storage"] == "mxfp4":
        names += ["mxfp4_nibbles_swapped", "mxfp4_scale_bias_128"]
    return names


@torch.no_grad()
def ablation_effects(model, spec, ids):
    base = forward_logits(model, ids)
    effects = {}
    for name in default_ablations(spec, model.config):
        kind, fn = ABLATIONS[name]
        cfg = copy.deepcopy(model.config)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        if kind == "config":
            fn(cfg)
        else:
            fn(sd, model)
        other = build_model(cfg)
        other.load_state_dict(sd)
        effects[name] = float((forward_logits(other, ids) - base).abs().max())
    return effects


class ClampRecorder:
    """Counts how often gpt_oss's clamped SwiGLU actually clamps."""

    def __init__(self, model):
        self.total = 0
        self.clamped = 0
        self.patched = []
        for m in model.modules():
            if type(m).__name__ == "GptOssExperts":
                orig = m._apply_gate

                def wrapped(gate_up, _orig=orig, _m=m):
                    gate, up = gate_up[..., ::2], gate_up[..., 1::2]
                    self.total += gate.numel() + up.numel()
                    self.clamped += int((gate > _m.limit).sum() + (up.abs() > _m.limit).sum())
                    return _orig(gate_up)

                m._apply_gate = wrapped
                self.patched.append((m, orig))

    def restore(self):
        for m, orig in self.patched:
            m._apply_gate = orig

    def fraction(self):
        return self.clamped / self.total if self.total else None


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

def f32_str(x):
    # shortest decimal that round-trips through float32
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def write_expected(path, family, ids, logits, greedy_ids):
    rows = [[f32_str(v) for v in row] for row in logits.tolist()]
    doc = {
        "family": family,
        "transformers": transformers.__version__,
        "ids": [int(i) for i in ids],
        "logits": rows,
        "greedy": [int(i) for i in greedy_ids],
        "atol": ATOL,
    }
    # one row of logits per line keeps diffs readable
    parts = ["{"]
    parts.append(f'  "family": {json.dumps(doc["family"])},')
    parts.append(f'  "transformers": {json.dumps(doc["transformers"])},')
    parts.append(f'  "ids": {json.dumps(doc["ids"])},')
    parts.append('  "logits": [')
    for i, r in enumerate(rows):
        parts.append("    " + json.dumps(r) + ("," if i + 1 < len(rows) else ""))
    parts.append("  ],")
    parts.append(f'  "greedy": {json.dumps(doc["greedy"])},')
    parts.append(f'  "atol": {json.dumps(doc["atol"])}')
    parts.append("}")
    text = "\n".join(parts) + "\n"
    json.loads(text)  # sanity
    path.write_text(text)


def save_config_json(model, out, dtype_name, extra=None, drop=()):
    model.config.save_pretrained(out)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = dtype_name
    cfg["architectures"] = [type(model).__name__]
    for k in drop:
        cfg.pop(k, None)
    if extra:
        cfg.update(extra)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def state_dict_for_save(model):
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    return sd


def save_fixture(model, spec, out, packed):
    storage = spec["storage"]
    layout = spec.get("layout", "hub")
    if storage == "mxfp4":
        sd = state_dict_for_save(model)
        tensors = {}
        for k, v in sd.items():
            if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj"):
                blocks, scales = packed[k]
                tensors[k + "_blocks"] = blocks
                tensors[k + "_scales"] = scales
            else:
                tensors[k] = v.to(torch.bfloat16)
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        save_config_json(model, out, "bfloat16", extra={
            "quantization_config": {
                "quant_method": "mxfp4",
                "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                           "model.embed_tokens", "lm_head"],
            }})
    elif layout == "fused":
        dtype = getattr(torch, storage)
        sd = {k: v.to(dtype) for k, v in state_dict_for_save(model).items()}
        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
        save_config_json(model, out, storage)
    else:
        dtype = getattr(torch, storage)
        m = copy.deepcopy(model).to(dtype)
        kwargs = {}
        if spec.get("shard"):
            kwargs["max_shard_size"] = spec["shard"]
        m.save_pretrained(out, **kwargs)
    # generation_config.json is not part of the fixture contract
    gen = out / "generation_config.json"
    if gen.exists():
        gen.unlink()
    edit = spec.get("config_edit")
    if edit:
        cfg_path = out / "config.json"
        cfg = json.loads(cfg_path.read_text())
        if edit == "hub_num_experts":
            cfg["num_experts"] = cfg.pop("num_local_experts")
        elif edit == "old_rope_keys":
            rp = dict(cfg.pop("rope_parameters"))
            cfg["rope_theta"] = rp.pop("rope_theta")
            cfg["rope_scaling"] = rp
        elif edit == "drop_layer_types":
            cfg.pop("layer_types", None)
        else:
            raise ValueError(edit)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def dir_size(path):
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


# ---------------------------------------------------------------------------
# Verification by reload
# ---------------------------------------------------------------------------

def list_tensors(out):
    names = {}
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                sl = h.get_slice(k)
                names[k] = (tuple(sl.get_shape()), sl.get_dtype(), f.name)
    return names


@torch.no_grad()
def verify_reload(spec, out, expected):
    ids = expected["ids"]
    want = torch.tensor(expected["logits"], dtype=torch.float32)
    kwargs = dict(dtype=torch.float32, attn_implementation="eager", experts_implementation="eager")
    method = "from_pretrained"
    try:
        model = AutoModelForCausalLM.from_pretrained(str(out), **kwargs)
    except ImportError as exc:
        # MXFP4 needs `accelerate` unless dequantisation is requested explicitly
        if spec["storage"] != "mxfp4":
            raise
        from transformers import Mxfp4Config

        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(out), quantization_config=Mxfp4Config(dequantize=True), **kwargs)
            method = f"from_pretrained(Mxfp4Config(dequantize=True)) [plain: {exc}]"
        except Exception as exc2:  # pragma: no cover
            return dict(method=f"own dequant only (from_pretrained failed: {exc2!r})", diff=None)
    model.eval()
    if spec["storage"] == "mxfp4":
        ex = [m for m in model.modules() if type(m).__name__ == "GptOssExperts"]
        if not ex or ex[0].gate_up_proj.dtype != torch.float32:
            raise RuntimeError("MXFP4 checkpoint was not dequantised into float32 GptOssExperts")
    got = forward_logits(model, ids)
    diff = float((got - want).abs().max())
    gen, _ = greedy(model, ids)
    if diff > 1e-4:
        raise RuntimeError(f"{spec['name']}: reloaded logits differ by {diff}")
    if gen != expected["greedy"]:
        raise RuntimeError(f"{spec['name']}: reloaded greedy {gen} != {expected['greedy']}")
    return dict(method=method, diff=diff, model=model)


@torch.no_grad()
def verify_mxfp4_files(out, model):
    """Dequantise the written blocks/scales ourselves and compare with the f32 model."""
    tensors = {}
    with safe_open(str(out / "model.safetensors"), "pt") as h:
        for k in h.keys():
            tensors[k] = h.get_tensor(k)
    params = dict(model.named_parameters())
    n = 0
    for k in tensors:
        if k.endswith("_blocks"):
            base = k[: -len("_blocks")]
            deq = mxfp4_to_gpt_oss_param(tensors[k], tensors[base + "_scales"])
            if not torch.equal(deq, params[base].detach()):
                raise RuntimeError(f"MXFP4 file check failed for {base}")
            if convert_moe_packed_tensors is not None:
                hf = convert_moe_packed_tensors(tensors[k], tensors[base + "_scales"], dtype=torch.float32)
                if not torch.equal(hf, deq):
                    raise RuntimeError(f"transformers dequant disagrees for {base}")
            n += 1
    return n


# ---------------------------------------------------------------------------
# Main loop
# ---------------------------------------------------------------------------

def make_candidate(spec, seed):
    cfg = build_config(spec)
    torch.manual_seed(seed)
    model = build_model(cfg)
    reinit(model, seed, spec)
    packed = None
    if spec["storage"] in ("bfloat16", "float16"):
        round_params(model, getattr(torch, spec["storage"]))
    elif spec["storage"] == "mxfp4":
        round_params(model, torch.bfloat16)
        packed = apply_mxfp4(model)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (PROMPT_LEN,), generator=g).tolist()
    return model, packed, ids


def evaluate(model, spec, ids):
    clamp = ClampRecorder(model) if spec["family"] == "gpt_oss" else None
    logits = forward_logits(model, ids)
    gen, gaps = greedy(model, ids)
    if clamp:
        clamp.restore()
    seq = ids + gen
    routing = routing_stats(model, spec, seq[:-1], len(ids))
    stats = dict(
        logits_std=float(logits.std()),
        greedy_gap=min(gaps),
        attn_peak=attention_peak(model, ids),
        ablations=ablation_effects(model, spec, ids),
        routing=routing,
        clamp=clamp.fraction() if clamp else None,
    )
    problems = []
    if stats["logits_std"] < MIN_LOGIT_STD:
        problems.append(f"logits std {stats['logits_std']:.3f}")
    if stats["greedy_gap"] <= MIN_GAP:
        problems.append(f"greedy gap {stats['greedy_gap']:.2e}")
    if stats["attn_peak"] < MIN_ATTN_PEAK:
        problems.append(f"attention peak {stats['attn_peak']:.3f}")
    for abl, eff in stats["ablations"].items():
        if eff < MIN_ABLATION_EFFECT:
            problems.append(f"ablation {abl} only moves logits by {eff:.2e}")
    if routing is not None:
        if routing["min_gap"] <= MIN_GAP:
            problems.append(f"routing gap {routing['min_gap']:.2e}")
        if routing["min_sets"] < MIN_EXPERT_SETS:
            problems.append(f"expert sets {routing['min_sets']}")
    if spec["family"] == "gpt_oss" and (stats["clamp"] or 0) <= 0:
        problems.append("SwiGLU clamp never active")
    return logits, gen, stats, problems


def make_fixture(spec):
    name = spec["name"]
    for attempt in range(MAX_ATTEMPTS):
        seed = spec["seed"] + attempt
        model, packed, ids = make_candidate(spec, seed)
        logits, gen, stats, problems = evaluate(model, spec, ids)
        if not problems:
            break
        print(f"  {name}: seed {seed} rejected ({'; '.join(problems)})", flush=True)
    else:
        raise RuntimeError(f"{name}: no acceptable seed in {MAX_ATTEMPTS} attempts")

    out = OUT_DIR / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_fixture(model, spec, out, packed)
    write_expected(out / "expected.json", spec["family"], ids, logits, gen)

    expected = json.loads((out / "expected.json").read_text())
    check = verify_reload(spec, out, expected)
    if spec["storage"] == "mxfp4":
        n = verify_mxfp4_files(out, model)
        check["mxfp4_tensors"] = n
    check.pop("model", None)
    stats.update(seed=seed, size=dir_size(out), check=check, files=sorted(p.name for p in out.iterdir()),
                 tensors=list_tensors(out))
    return stats


def main(argv):
    wanted = set(argv[1:])
    specs = [s for s in FIXTURES if not wanted or s["name"] in wanted or s["family"] in wanted]
    if wanted and not specs:
        raise SystemExit(f"unknown fixture(s): {sorted(wanted)}")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, writing to {OUT_DIR}")
    results = {}
    for spec in specs:
        print(f"[{spec['name']}]", flush=True)
        results[spec["name"]] = make_fixture(spec)
        r = results[spec["name"]]
        print(f"  ok: seed {r['seed']}, {r['size'] / 1024:.1f} KiB, reload: {r['check']}", flush=True)
        print("  ablations (max |d logit|): " + ", ".join(f"{k}={v:.3g}" for k, v in r["ablations"].items()),
              flush=True)

    print()
    hdr = (f"{'fixture':<15} {'KiB':>6} {'storage':>8} {'seed':>5} {'logit std':>9} {'min route gap':>13} "
           f"{'min greedy gap':>14} {'expert sets':>11} {'attn peak':>9} {'min ablation':>13} {'clamp %':>7} {'reload diff':>11}")
    print(hdr)
    print("-" * len(hdr))
    for spec in specs:
        r = results[spec["name"]]
        rt = r["routing"]
        route_gap = "%.2e" % rt["min_gap"] if rt else "-"
        sets = str(rt["min_sets"]) if rt else "-"
        window = "%.2f" % min(r["ablations"].values()) if r["ablations"] else "-"
        clamp = "%.1f" % (100 * r["clamp"]) if r["clamp"] is not None else "-"
        diff = "%.1e" % r["check"]["diff"] if r["check"].get("diff") is not None else "n/a"
        print(f"{spec['name']:<15} {r['size'] / 1024:>6.1f} {spec['storage']:>8} {r['seed']:>5} "
              f"{r['logits_std']:>9.3f} {route_gap:>13} {r['greedy_gap']:>14.3e} {sets:>11} "
              f"{r['attn_peak']:>9.3f} {window:>13} {clamp:>7} {diff:>11}")
    if os.environ.get("MAKE_FIXTURES_LIST_TENSORS"):
        for spec in specs:
            print(f"\n{spec['name']}: {results[spec['name']]['files']}")
            for k, (shape, dt, fn) in results[spec["name"]]["tensors"].items():
                print(f"  {k:<60} {str(shape):<20} {dt:<5} {fn}")


if __name__ == "__main__":
    main(sys.argv)
