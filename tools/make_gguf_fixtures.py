#!/usr/bin/env python3
"""GGUF model fixtures for tests/gguf.rs and tests/wgpu_golden.rs (pip install -r tools/requirements.txt).

    python3 tools/make_gguf_fixtures.py

For each family below: a tiny random model is built with transformers (dimensions multiples of 32, so every
block format fits), its weights scaled up so logits are peaked, and written as a GGUF file the way
llama.cpp's converter writes one (its tensor names and metadata keys, the Q/K row permutation of the llama
architecture, stacked `*_exps` experts, shared experts, biases and norms in F32), with its matrices in a
mix of block formats quantized by gguf-py and the byte-level BPE tokenizer and chat template of
tests/fixtures/tokenizer_tiny. The reference is transformers reading that GGUF file (it dequantizes the
blocks and un-permutes Q/K itself): tests/fixtures/gguf/<name>.json holds its logits at every position of
20 prompt ids, 10 greedy ids, the ids its tokenizer gives a few texts, and a chat prompt rendered through
the file's template with the greedy reply to it. transformers' GGUF configs for qwen2moe and qwen3moe read no
expert sizes (they take Qwen1.5-MoE-A2.7B's and Qwen3-30B-A3B's), so those fixtures' logits come from the
transformers model holding the file's dequantized weights instead; for the dense fixtures the two
references are checked to agree.
"""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import GGUFReader, GGUFWriter  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gguf"
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizer_tiny"
TEXTS = [
    "Hello world! It's 2026, 12345 apples.",
    "  leading spaces\nand\ttabs\n\n\nend",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n",
    "naïve café ✓ 🙂",
]
COMMON = dict(vocab_size=400, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=512, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
              tie_word_embeddings=False)

# name: (model_type, gguf arch, tokenizer pre, extra config, formats by role)
FIXTURES = {
    "llama": ("llama", "llama", "llama-bpe",
              dict(intermediate_size=96, head_dim=16, rope_theta=10000.0),
              dict(embed=T.Q8_0, output=T.F16, attn=T.Q4_0, ffn=T.Q5_1)),
    "qwen2": ("qwen2", "qwen2", "qwen2",
              dict(intermediate_size=128, rope_theta=1000000.0, tie_word_embeddings=True),
              dict(embed=T.F16, attn=T.Q4_1, ffn=T.Q5_0)),
    "qwen3": ("qwen3", "qwen3", "qwen2",
              dict(intermediate_size=96, head_dim=128, rope_theta=1000000.0),
              dict(embed=T.BF16, output=T.Q8_0, attn=T.Q8_0, ffn=T.MXFP4)),
    "qwen2_moe": ("qwen2_moe", "qwen2moe", "gpt-2",
                  dict(intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                       num_experts=8, num_experts_per_tok=2, norm_topk_prob=False, rope_theta=10000.0),
                  dict(embed=T.F32, output=T.Q8_0, attn=T.Q8_0, experts=T.Q4_0, shared=T.F16)),
    "qwen3_moe": ("qwen3_moe", "qwen3moe", "gpt-2",
                  dict(intermediate_size=96, moe_intermediate_size=32, head_dim=16, num_experts=8,
                       num_experts_per_tok=2, norm_topk_prob=True, rope_theta=1000000.0),
                  dict(embed=T.Q8_0, output=T.F32, attn=T.F16, experts=T.MXFP4)),
}


# Smallest gap between the k-th and (k+1)-th router logit at any position the tests feed: routing must not
# flip under the f16 rounding the GPU backends add.
MIN_ROUTING_GAP = 0.05

# Architectures whose expert sizes transformers' GGUF config does not read.
DEQUANTIZED_REFERENCE = ("qwen2moe", "qwen3moe")


def build_model(model_type, extra, seed):
    config = AutoConfig.for_model(model_type, **{**COMMON, **extra})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p)) if "norm" in name else p.normal_(0, 0.3)
            else:
                # Wide router logits keep the k-th and (k+1)-th experts apart (see MIN_ROUTING_GAP).
                scale = 6.0 if name.endswith("mlp.gate.weight") else 1.2
                p.normal_(0, scale / p.shape[-1] ** 0.5)
    return model


def permute(w, heads):
    """llama.cpp's Q/K row permutation for interleaved RoPE (conversion/llama.py)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add(writer, name, w, fmt):
    w = np.ascontiguousarray(w, dtype=np.float32)
    if fmt == T.F32:
        writer.add_tensor(name, w)
    else:
        writer.add_tensor(name, quantize(w, fmt), raw_dtype=fmt)


def write_gguf(path, model, arch, pre, formats):
    cfg = model.config
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    w = GGUFWriter(path, arch)
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"] if hasattr(cfg, "rope_parameters") else cfg.rope_theta)
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    if getattr(cfg, "num_experts", None):
        w.add_expert_count(cfg.num_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    if getattr(cfg, "shared_expert_intermediate_size", None):
        w.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    # The tokenizer and chat template of tokenizer_tiny (byte-level BPE).
    tok = json.loads((TOKENIZER / "tokenizer.json").read_text())
    tok_cfg = json.loads((TOKENIZER / "tokenizer_config.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {a["content"] for a in tok["added_tokens"] if a["special"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in special else 1 for t, _ in vocab])
    merges = tok["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(tok_cfg["chat_template"])

    add(w, "token_embd.weight", sd["model.embed_tokens.weight"], formats["embed"])
    if not cfg.tie_word_embeddings:
        add(w, "output.weight", sd["lm_head.weight"], formats["output"])
    add(w, "output_norm.weight", sd["model.norm.weight"], T.F32)
    for l in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        add(w, b + "attn_norm.weight", sd[p + "input_layernorm.weight"], T.F32)
        add(w, b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], T.F32)
        for hf, gg in [("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")]:
            weight = sd[p + f"self_attn.{hf}.weight"]
            if arch == "llama" and hf in ("q_proj", "k_proj"):
                weight = permute(weight, heads if hf == "q_proj" else kv_heads)
            add(w, b + gg + ".weight", weight, formats["attn"])
            if p + f"self_attn.{hf}.bias" in sd:
                add(w, b + gg + ".bias", sd[p + f"self_attn.{hf}.bias"], T.F32)
        for norm, gg in [("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm")]:
            if p + f"self_attn.{norm}.weight" in sd:
                add(w, b + gg + ".weight", sd[p + f"self_attn.{norm}.weight"], T.F32)
        if p + "mlp.gate_proj.weight" in sd:
            for hf, gg in [("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")]:
                add(w, b + gg + ".weight", sd[p + f"mlp.{hf}.weight"], formats["ffn"])
            continue
        add(w, b + "ffn_gate_inp.weight", sd[p + "mlp.gate.weight"], T.F32)
        gate_up, down = sd[p + "mlp.experts.gate_up_proj"], sd[p + "mlp.experts.down_proj"]
        inter = gate_up.shape[1] // 2
        add(w, b + "ffn_gate_exps.weight", gate_up[:, :inter], formats["experts"])
        add(w, b + "ffn_up_exps.weight", gate_up[:, inter:], formats["experts"])
        add(w, b + "ffn_down_exps.weight", down, formats["experts"])
        if p + "mlp.shared_expert.gate_proj.weight" in sd:
            for hf, gg in [("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"), ("down_proj", "ffn_down_shexp")]:
                add(w, b + gg + ".weight", sd[p + f"mlp.shared_expert.{hf}.weight"], formats["shared"])
            add(w, b + "ffn_gate_inp_shexp.weight", sd[p + "mlp.shared_expert_gate.weight"].reshape(-1), T.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def dequantized_model(path, model, arch):
    """`model` holding the weights of the GGUF file at `path`, dequantized and mapped back to its names."""
    cfg = model.config
    t = {x.name: dequantize(x.data, x.tensor_type).reshape([int(d) for d in reversed(x.shape)])
         for x in GGUFReader(path).tensors}
    sd = {}
    sd["model.embed_tokens.weight"] = t["token_embd.weight"]
    sd["lm_head.weight"] = t.get("output.weight", t["token_embd.weight"])
    sd["model.norm.weight"] = t["output_norm.weight"]
    for l in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        sd[p + "input_layernorm.weight"] = t[b + "attn_norm.weight"]
        sd[p + "post_attention_layernorm.weight"] = t[b + "ffn_norm.weight"]
        for hf, gg in [("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")]:
            sd[p + f"self_attn.{hf}.weight"] = t[b + gg + ".weight"]
            if b + gg + ".bias" in t:
                sd[p + f"self_attn.{hf}.bias"] = t[b + gg + ".bias"]
        for norm, gg in [("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm")]:
            if b + gg + ".weight" in t:
                sd[p + f"self_attn.{norm}.weight"] = t[b + gg + ".weight"]
        if b + "ffn_gate.weight" in t:
            for hf, gg in [("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")]:
                sd[p + f"mlp.{hf}.weight"] = t[b + gg + ".weight"]
            continue
        sd[p + "mlp.gate.weight"] = t[b + "ffn_gate_inp.weight"]
        sd[p + "mlp.experts.gate_up_proj"] = np.concatenate([t[b + "ffn_gate_exps.weight"], t[b + "ffn_up_exps.weight"]], axis=1)
        sd[p + "mlp.experts.down_proj"] = t[b + "ffn_down_exps.weight"]
        if b + "ffn_gate_shexp.weight" in t:
            for hf, gg in [("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"), ("down_proj", "ffn_down_shexp")]:
                sd[p + f"mlp.shared_expert.{hf}.weight"] = t[b + gg + ".weight"]
            sd[p + "mlp.shared_expert_gate.weight"] = t[b + "ffn_gate_inp_shexp.weight"].reshape(1, -1)
    for name in ("q_proj", "k_proj"):
        for l in range(cfg.num_hidden_layers):
            key = f"model.layers.{l}.self_attn.{name}.weight"
            heads = cfg.num_attention_heads if name == "q_proj" else cfg.num_key_value_heads
            sd[key] = unpermute_rows(sd[key], heads) if arch == "llama" else sd[key]
    model = type(model)(cfg).eval()
    missing = model.load_state_dict({k: torch.tensor(np.array(v, dtype=np.float32)) for k, v in sd.items()}, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys, missing
    return model


def unpermute_rows(w, heads):
    """The inverse of `permute`."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def routing_gap(model, sequences):
    """The smallest gap between the k-th and (k+1)-th router logit over every MoE layer and position of
    `sequences` (inf for a dense model)."""
    k = getattr(model.config, "num_experts_per_tok", None)
    gaps = [float("inf")]
    hooks = []
    for name, module in model.named_modules():
        if name.endswith("mlp.gate"):
            def hook(_m, _inp, out):
                logits = out[0] if isinstance(out, tuple) else out
                top = logits.reshape(-1, logits.shape[-1]).float().sort(dim=-1, descending=True).values
                gaps.append(float((top[:, k - 1] - top[:, k]).min()))
            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        for seq in sequences:
            model(torch.tensor([seq]))
    for h in hooks:
        h.remove()
    return min(gaps)


def greedy(model, ids, steps):
    out = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids):]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for index, (name, (model_type, arch, pre, extra, formats)) in enumerate(FIXTURES.items()):
        path = OUT / f"{name}.gguf"
        ids = [int(i) for i in np.random.default_rng(index).integers(3, 400, size=20)]
        # Seeds are tried in turn until routing has no near-tie anywhere the tests look.
        for seed in range(100 * (index + 1), 100 * (index + 2)):
            built = build_model(model_type, extra, seed)
            write_gguf(path, built, arch, pre, formats)
            dequantized = dequantized_model(path, built, arch)
            if routing_gap(dequantized, [ids + greedy(dequantized, ids, 10)]) >= MIN_ROUTING_GAP:
                break
        else:
            raise SystemExit(f"{name}: no seed without a routing near-tie")
        with torch.no_grad():
            from_weights = dequantized(torch.tensor([ids])).logits[0]
        if arch in DEQUANTIZED_REFERENCE:
            model = dequantized
        else:
            # The reference: transformers reading the file, as users of its GGUF loading get it.
            model = AutoModelForCausalLM.from_pretrained(OUT, gguf_file=path.name, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(OUT, gguf_file=path.name)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        agree = float((logits - from_weights).abs().max())
        assert agree < 1e-4, f"{name}: transformers' GGUF reading and the dequantized weights differ by {agree}"
        chat = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], tokenize=False,
                                       add_generation_prompt=True)
        chat_ids = tok.encode(chat, add_special_tokens=False)
        expected = {
            "transformers": __import__("transformers").__version__,
            "reference": "dequantized weights" if arch in DEQUANTIZED_REFERENCE else "transformers GGUF loading",
            "ids": ids,
            "logits": [[round(float(v), 6) for v in row] for row in logits],
            "greedy": greedy(model, ids, 10),
            "texts": {t: tok.encode(t, add_special_tokens=False) for t in TEXTS},
            "chat": {"prompt": chat, "ids": chat_ids, "greedy": greedy(model, chat_ids, 8)},
        }
        (OUT / f"{name}.json").write_text(json.dumps(expected, ensure_ascii=False) + "\n")
        std = float(logits.std())
        print(f"{name}: seed {seed}, {path.stat().st_size} bytes, logit std {std:.2f}, greedy {expected['greedy']}")


if __name__ == "__main__":
    main()
