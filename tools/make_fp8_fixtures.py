#!/usr/bin/env python3
"""Regenerate Volt's block-wise FP8 golden-test fixtures.

    python3 tools/make_fp8_fixtures.py               # qwen3_fp8 and qwen3_moe_fp8
    python3 tools/make_fp8_fixtures.py qwen3_fp8     # only the named ones

The checkpoints use the Hugging Face *fine-grained FP8* layout of the
Qwen3-*-FP8 and DeepSeek-V3 releases:

* every attention / MLP / expert Linear weight (`*_proj.weight`: q, k, v, o,
  gate, up, down; experts with their per-expert Hub names
  `mlp.experts.E.{gate,up,down}_proj.weight`) is F8_E4M3 (torch.float8_e4m3fn)
  with a companion `<prefix>.weight_scale_inv`, F32, shape
  [ceil(out/128), ceil(in/128)], and

      W[r, c] = float(q[r, c]) * weight_scale_inv[r // 128, c // 128]

  (one correctly rounded f32 multiply);
* quantisation per 128x128 block (edge blocks are smaller): amax = max |W|,
  scale_inv = amax / 448 (1.0 if amax == 0), q = (W / scale_inv) clamped to
  [-448, 448] and cast with .to(float8_e4m3fn) (round to nearest even), all
  in float32;
* embed_tokens, lm_head, the norms and the MoE router `mlp.gate.weight` stay
  in bf16;
* config.json carries `quantization_config` {"activation_scheme": "dynamic",
  "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}.

Shapes are deliberately not multiples of 128 (hidden 160, q dim 240/216,
intermediate 288, expert intermediate 136, ...), so every matrix has ragged
edge blocks and most have several blocks per axis.

expected.json has the format of tools/make_fixtures.py (ids, logits, greedy,
atol) plus a "quantization" note. The reference is the *un-quantised*
transformers model class in float32 (eager) holding the dequantised weights
and the bf16-rounded other tensors, i.e. exactly the values stored on disk.
Seed search, weight init, the quality checks (logit std, greedy / routing
gaps, attention peak, ablations) and the writers are imported from
make_fixtures.py; FP8-specific ablations (plausible dequantisation mistakes)
are added and must each move some logit by >= 25*atol too.

Note: transformers' own CPU path for these checkpoints (from_pretrained with
the fp8 quantizer, which dequantises when there is no GPU) derives the block
size as rows // scale_rows, which is wrong for ragged shapes; the generator
reports how far that path is off and checks that it equals the
`fp8_block_size_from_grid` ablation, but does not use it as the reference.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (sets the env, threads and determinism flags)

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

BLOCK = 128
FP8_MAX = 448.0
FP8_DTYPE = torch.float8_e4m3fn
QUANT_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                "weight_block_size": [BLOCK, BLOCK]}
QUANT_NOTE = "fp8 e4m3, 128x128 block scales, weight-only; reference = dequantized weights in f32"
OUTLIER_STD = 0.35  # log-normal per-row / per-column gains: block scales differ visibly

COMMON = mf.COMMON

FP8_FIXTURES = [
    dict(
        name="qwen3_fp8", family="qwen3", seed=9500, storage="fp8",
        config=dict(
            vocab_size=151, hidden_size=160, intermediate_size=288, num_hidden_layers=2,
            num_attention_heads=5, num_key_value_heads=1, head_dim=48, use_sliding_window=False,
            tie_word_embeddings=False, max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **COMMON),
        exercises="block-wise FP8 (F8_E4M3 + weight_scale_inv [ceil(out/128), ceil(in/128)]) for q/k/v/o/gate/up/down, "
                  "bf16 embed/lm_head/norms; ragged blocks everywhere: q (240,160), k/v (48,160), o (160,240), "
                  "gate/up (288,160), down (160,288); head_dim 48, MQA 5:1, odd vocab 151",
    ),
    dict(
        name="qwen3_moe_fp8", family="qwen3_moe", seed=9600, storage="fp8", config_edit="hub_num_experts",
        config=dict(
            vocab_size=128, hidden_size=160, intermediate_size=288, num_hidden_layers=2,
            num_attention_heads=6, num_key_value_heads=2, head_dim=36, moe_intermediate_size=136,
            num_experts=6, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
            max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **COMMON),
        exercises="block-wise FP8 experts with Hub per-expert names (experts.E.{gate,up,down}_proj.weight + "
                  "weight_scale_inv, each expert its own block grid), FP8 attention, bf16 router mlp.gate; "
                  "expert gate/up (136,160), down (160,136), q (216,160), k/v (72,160), o (160,216); "
                  "E=6 k=2, norm_topk_prob=true, GQA 3:1, head_dim 36, num_experts spelled as on the Hub",
    ),
]


# ---------------------------------------------------------------------------
# FP8 block quantisation
# ---------------------------------------------------------------------------

def n_blocks(n):
    return (n + BLOCK - 1) // BLOCK


def expand_scales(s, rows, cols):
    """[ceil(rows/128), ceil(cols/128)] -> [rows, cols]: element (r, c) = s[r // 128, c // 128]."""
    return s.repeat_interleave(BLOCK, 0)[:rows].repeat_interleave(BLOCK, 1)[:, :cols]


def fp8_quantize(w):
    """w (rows, cols) -> (q float8_e4m3fn (rows, cols), scale_inv f32 (ceil(rows/128), ceil(cols/128)))."""
    w = w.detach().to(torch.float32)
    rows, cols = w.shape
    s = torch.empty(n_blocks(rows), n_blocks(cols), dtype=torch.float32)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            amax = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK].abs().max()
            s[i, j] = amax / FP8_MAX if amax > 0 else 1.0
    q = (w / expand_scales(s, rows, cols)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.contiguous(), s.contiguous()


def fp8_dequantize(q, s):
    rows, cols = q.shape
    return q.to(torch.float32) * expand_scales(s.to(torch.float32), rows, cols)


# Plausible reimplementation mistakes, as alternative dequantisers.  `group` is the
# list of (q, s) of the tensors a loader might fuse along rows (q,k,v / gate,up) and
# `idx` the position of this tensor in it.

def _dequant_block_0_0(q, s, group, idx):
    return q.to(torch.float32) * s[0, 0]


def _dequant_ragged_edge_previous(q, s, group, idx):
    # floor(n/128) blocks: the rows/cols of a ragged edge block use the previous block's scale
    rows, cols = q.shape
    ri = torch.clamp(torch.arange(rows) // BLOCK, max=max(rows // BLOCK - 1, 0))
    ci = torch.clamp(torch.arange(cols) // BLOCK, max=max(cols // BLOCK - 1, 0))
    return q.to(torch.float32) * s[ri][:, ci]


def _dequant_block_size_from_grid(q, s, group, idx):
    # block = rows // scale_rows (what transformers' CPU Fp8Dequantize assumes); equal only
    # when the shape is a multiple of 128
    rows, cols = q.shape
    bm, bn = rows // s.shape[0], cols // s.shape[1]
    return q.to(torch.float32) * s.repeat_interleave(bm, 0).repeat_interleave(bn, 1)


def _dequant_fused_grid(q, s, group, idx):
    # fuse the codes along rows first, concatenate the scale grids, then index the fused
    # grid with the fused row: (offset + r) // 128 instead of r // 128 in this tensor's grid
    offset = sum(g[0].shape[0] for g in group[:idx])
    s_cat = torch.cat([g[1] for g in group], dim=0)
    rows, cols = q.shape
    ri = torch.clamp((offset + torch.arange(rows)) // BLOCK, max=s_cat.shape[0] - 1)
    return q.to(torch.float32) * s_cat[ri].repeat_interleave(BLOCK, 1)[:, :cols]


FP8_ABLATIONS = {
    # name: (dequantiser, which tensors it touches: None = all, else a fused group kind)
    "fp8_block_0_0_scale": (_dequant_block_0_0, None),
    "fp8_ragged_edge_uses_previous_block": (_dequant_ragged_edge_previous, None),
    "fp8_block_size_from_grid": (_dequant_block_size_from_grid, None),
    "fp8_qkv_fused_grid": (_dequant_fused_grid, "qkv"),
    "fp8_gate_up_fused_grid": (_dequant_fused_grid, "gate_up"),
}


# ---------------------------------------------------------------------------
# Model <-> checkpoint names
# ---------------------------------------------------------------------------

def expert_base(name):
    """'model.layers.L.mlp.experts.gate_up_proj' -> ('model.layers.L.mlp.experts.', 'gate_up_proj')."""
    prefix, last = name.rsplit(".", 1)
    return prefix + ".", last


def is_fp8_param(name):
    return name.endswith("_proj.weight") or name.endswith("experts.gate_up_proj") \
        or name.endswith("experts.down_proj")


def hub_matrices(model):
    """The float32 matrices that get FP8-quantised, under their checkpoint names (unfused experts)."""
    out = {}
    for name, p in model.named_parameters():
        if name.endswith("_proj.weight"):
            out[name] = p.detach().to(torch.float32)
        elif name.endswith("experts.gate_up_proj"):  # (E, 2I, H), gate rows first
            pre, _ = expert_base(name)
            i2 = p.shape[1] // 2
            for e in range(p.shape[0]):
                out[f"{pre}{e}.gate_proj.weight"] = p[e, :i2].detach().to(torch.float32)
                out[f"{pre}{e}.up_proj.weight"] = p[e, i2:].detach().to(torch.float32)
        elif name.endswith("experts.down_proj"):  # (E, H, I)
            pre, _ = expert_base(name)
            for e in range(p.shape[0]):
                out[f"{pre}{e}.down_proj.weight"] = p[e].detach().to(torch.float32)
    return out


def fused_groups(names):
    """For each FP8 tensor: (kind, group names in fused order, index) for q,k,v and gate,up."""
    groups = {}
    for n in names:
        for kind, parts in (("qkv", ("q_proj", "k_proj", "v_proj")), ("gate_up", ("gate_proj", "up_proj"))):
            for i, part in enumerate(parts):
                suffix = f"{part}.weight"
                if n.endswith(suffix):
                    pre = n[: -len(suffix)]
                    groups[n] = (kind, [pre + f"{x}.weight" for x in parts], i)
    return groups


def model_state(model, packed, bf16, dequant=None, only_kind=None):
    """State dict for the (un-quantised) model class: FP8 tensors dequantised (optionally with a
    wrong dequantiser for the tensors of one fused kind), the rest the bf16 values upcast to f32."""
    groups = fused_groups(packed)

    def deq(n):
        q, s = packed[n]
        if dequant is None:
            return fp8_dequantize(q, s)
        kind, names, idx = groups.get(n, (None, [n], 0))
        if only_kind is not None and kind != only_kind:
            return fp8_dequantize(q, s)
        return dequant(q, s, [packed[x] for x in names], idx)

    sd = {}
    for name, p in model.state_dict().items():
        if name.endswith("experts.gate_up_proj"):
            pre, _ = expert_base(name)
            sd[name] = torch.stack([torch.cat([deq(f"{pre}{e}.gate_proj.weight"), deq(f"{pre}{e}.up_proj.weight")])
                                    for e in range(p.shape[0])])
        elif name.endswith("experts.down_proj"):
            pre, _ = expert_base(name)
            sd[name] = torch.stack([deq(f"{pre}{e}.down_proj.weight") for e in range(p.shape[0])])
        elif name in packed:
            sd[name] = deq(name)
        else:
            sd[name] = bf16[name].to(torch.float32)
    return sd


# ---------------------------------------------------------------------------
# Candidate
# ---------------------------------------------------------------------------

@torch.no_grad()
def add_outlier_gains(model, seed):
    """Per-row and per-column log-normal gains on every FP8 matrix (rms kept), like the channel
    outliers of real weights: the block amax, hence the scale, then differs between blocks."""
    g = torch.Generator().manual_seed(seed + 77777)
    for name, p in model.named_parameters():
        if not is_fp8_param(name):
            continue
        w = p.detach().clone()
        lead, (rows, cols) = w.shape[:-2], w.shape[-2:]
        rg = torch.exp(OUTLIER_STD * torch.randn(*lead, rows, 1, generator=g))
        cg = torch.exp(OUTLIER_STD * torch.randn(*lead, 1, cols, generator=g))
        w2 = w * rg * cg
        # keep each matrix's rms (the make_fixtures init gains stay meaningful)
        rms = lambda t: t.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()  # noqa: E731
        p.copy_(w2 * rms(w) / rms(w2))


def make_candidate(spec, seed):
    cfg = mf.build_config(spec)
    torch.manual_seed(seed)
    model = mf.build_model(cfg)
    mf.reinit(model, seed, spec)
    add_outlier_gains(model, seed)
    packed = {n: fp8_quantize(w) for n, w in hub_matrices(model).items()}
    bf16 = {n: p.detach().to(torch.bfloat16) for n, p in model.state_dict().items() if not is_fp8_param(n)}
    model.load_state_dict(model_state(model, packed, bf16), strict=True)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (mf.PROMPT_LEN,), generator=g).tolist()
    return model, packed, bf16, ids


@torch.no_grad()
def fp8_ablation_effects(model, packed, bf16, ids, base):
    effects = {}
    kinds = {k for k, _, _ in fused_groups(packed).values()}
    for name, (fn, kind) in FP8_ABLATIONS.items():
        if kind is not None and kind not in kinds:
            continue
        other = mf.build_model(copy.deepcopy(model.config))
        other.load_state_dict(model_state(model, packed, bf16, fn, kind), strict=True)
        effects[name] = float((mf.forward_logits(other, ids) - base).abs().max())
    return effects


def make_fixture(spec):
    name = spec["name"]
    for attempt in range(mf.MAX_ATTEMPTS):
        seed = spec["seed"] + attempt
        model, packed, bf16, ids = make_candidate(spec, seed)
        logits, gen, stats, problems = mf.evaluate(model, spec, ids)
        fp8_eff = fp8_ablation_effects(model, packed, bf16, ids, logits)
        stats["ablations"].update(fp8_eff)
        problems += [f"ablation {a} only moves logits by {e:.2e}" for a, e in fp8_eff.items()
                     if e < mf.MIN_ABLATION_EFFECT]
        if not problems:
            break
        print(f"  {name}: seed {seed} rejected ({'; '.join(problems)})", flush=True)
    else:
        raise RuntimeError(f"{name}: no acceptable seed in {mf.MAX_ATTEMPTS} attempts")

    out = mf.OUT_DIR / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_fixture(model, spec, out, packed, bf16)
    write_expected(out / "expected.json", spec["family"], ids, logits, gen)
    expected = json.loads((out / "expected.json").read_text())
    checks = verify(spec, out, model, expected, packed, bf16)
    stats.update(seed=seed, size=mf.dir_size(out), checks=checks)
    return stats


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

def save_fixture(model, spec, out, packed, bf16):
    tensors = {}
    for n, v in bf16.items():
        if n == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
            continue
        tensors[n] = v.contiguous()
    for n, (q, s) in packed.items():
        assert n.endswith(".weight")
        tensors[n] = q
        tensors[n[: -len(".weight")] + ".weight_scale_inv"] = s
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    mf.save_config_json(model, out, "bfloat16",
                        extra={"torch_dtype": "bfloat16", "quantization_config": dict(QUANT_CONFIG)})
    edit = spec.get("config_edit")
    if edit:
        cfg_path = out / "config.json"
        cfg = json.loads(cfg_path.read_text())
        if edit == "hub_num_experts":
            cfg["num_experts"] = cfg.pop("num_local_experts")
        else:
            raise ValueError(edit)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def write_expected(path, family, ids, logits, greedy_ids):
    """make_fixtures' format, plus "quantization" just before "atol"."""
    mf.write_expected(path, family, ids, logits, greedy_ids)
    text = path.read_text()
    marker = '\n  "atol": '
    assert text.count(marker) == 1
    text = text.replace(marker, f'\n  "quantization": {json.dumps(QUANT_NOTE)},' + marker)
    doc = json.loads(text)
    assert doc["quantization"] == QUANT_NOTE and doc["atol"] == mf.ATOL
    path.write_text(text)


# ---------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------

def read_all(out):
    with safe_open(str(out / "model.safetensors"), "pt") as h:
        return {k: h.get_tensor(k) for k in h.keys()}


@torch.no_grad()
def verify(spec, out, model, expected, packed, bf16):
    file_t = read_all(out)
    checks = {}

    # 1. names, dtypes, shapes; dequantising the file gives exactly the reference tensors
    want = model_state(model, packed, bf16)
    deq = {}
    n_blocks_total = n_full_448 = n_sub = n_zero = 0
    fp8_bytes = 0
    for k, t in file_t.items():
        if k.endswith(".weight_scale_inv"):
            base = k[: -len("_scale_inv")]
            q = file_t[base]
            if q.dtype != FP8_DTYPE or t.dtype != torch.float32:
                raise RuntimeError(f"{k}: dtypes {q.dtype} / {t.dtype}")
            if tuple(t.shape) != (n_blocks(q.shape[0]), n_blocks(q.shape[1])):
                raise RuntimeError(f"{k}: shape {tuple(t.shape)} for weight {tuple(q.shape)}")
            deq[base] = fp8_dequantize(q, t)
            qf = q.to(torch.float32)
            for i in range(t.shape[0]):
                for j in range(t.shape[1]):
                    m = float(qf[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK].abs().max())
                    n_blocks_total += 1
                    n_full_448 += m == FP8_MAX
                    if m != FP8_MAX:
                        raise RuntimeError(f"{base} block ({i},{j}): max |q| = {m}, expected 448")
            bits = q.view(torch.uint8)
            n_sub += int((((bits & 0x78) == 0) & ((bits & 0x07) != 0)).sum())
            n_zero += int(((bits & 0x7F) == 0).sum())
            fp8_bytes += q.numel()
        elif t.dtype == FP8_DTYPE:
            if k[: -len(".weight")] + ".weight_scale_inv" not in file_t:
                raise RuntimeError(f"{k}: F8_E4M3 without weight_scale_inv")
        else:
            if t.dtype != torch.bfloat16:
                raise RuntimeError(f"{k}: unquantised tensor stored as {t.dtype}")
            if not k.endswith("norm.weight") and k not in ("model.embed_tokens.weight", "lm_head.weight") \
                    and not k.endswith("mlp.gate.weight"):
                raise RuntimeError(f"{k}: expected FP8")
            deq[k] = t.to(torch.float32)
    if set(deq) != set(packed) | set(k for k in bf16 if k in file_t):
        raise RuntimeError("tensor names in the file differ from the model's")
    # the same tensors in the model's (fused) layout
    sd_file = {}
    for name, p in model.state_dict().items():
        if name.endswith("experts.gate_up_proj"):
            pre, _ = expert_base(name)
            sd_file[name] = torch.stack([torch.cat([deq[f"{pre}{e}.gate_proj.weight"], deq[f"{pre}{e}.up_proj.weight"]])
                                         for e in range(p.shape[0])])
        elif name.endswith("experts.down_proj"):
            pre, _ = expert_base(name)
            sd_file[name] = torch.stack([deq[f"{pre}{e}.down_proj.weight"] for e in range(p.shape[0])])
        elif name == "lm_head.weight" and name not in deq:
            sd_file[name] = deq["model.embed_tokens.weight"]
        else:
            sd_file[name] = deq[name]
    params = model.state_dict()
    tensor_diff = max(float((sd_file[k] - params[k]).abs().max()) for k in params)
    want_diff = max(float((want[k] - params[k]).abs().max()) for k in params)
    if tensor_diff != 0.0 or want_diff != 0.0:
        raise RuntimeError(f"dequantised file tensors differ from the reference model: {tensor_diff}, {want_diff}")
    checks.update(tensors=len(file_t), fp8_matrices=len(packed), blocks=n_blocks_total, blocks_max_448=n_full_448,
                  fp8_values=fp8_bytes, fp8_subnormal=n_sub, fp8_zero=n_zero,
                  file_bytes=(out / "model.safetensors").stat().st_size, tensor_diff=tensor_diff)

    ids = expected["ids"]
    want_logits = torch.tensor(expected["logits"], dtype=torch.float32)
    cfg_json = json.loads((out / "config.json").read_text())
    plain_cfg = {k: v for k, v in cfg_json.items() if k not in ("quantization_config", "torch_dtype")}

    def compare(m, label):
        m.eval()
        got = mf.forward_logits(m, ids)
        diff = float((got - want_logits).abs().max())
        gen, _ = mf.greedy(m, ids)
        if diff > 1e-4 or gen != expected["greedy"]:
            raise RuntimeError(f"{spec['name']}: {label}: logits differ by {diff}, greedy {gen}")
        return diff

    # 2. un-quantised model class from config.json (no quantization_config) + load_state_dict
    cfg = AutoConfig.for_model(**copy.deepcopy(plain_cfg))
    m = mf.build_model(cfg)
    m.load_state_dict(sd_file, strict=True)
    checks["load_state_dict_diff"] = compare(m, "load_state_dict")

    # 3. the same through from_pretrained of an f32 copy with Hub names (transformers does the fusing)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.json").write_text(json.dumps(plain_cfg, indent=2, sort_keys=True) + "\n")
        save_file({k: v.contiguous() for k, v in deq.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        m = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32, attn_implementation="eager",
                                                 experts_implementation="eager")
        checks["from_pretrained_f32_copy_diff"] = compare(m, "from_pretrained of the dequantised copy")

    # 4. informative only: transformers' own FP8 loader (dequantises on a machine without GPU)
    try:
        m = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, attn_implementation="eager",
                                                 experts_implementation="eager").float()
        m.eval()
        hf_diff = float((mf.forward_logits(m, ids) - want_logits).abs().max())
        hf_sd = m.state_dict()
        grid = model_state(model, packed, bf16, _dequant_block_size_from_grid)

        def wdiff(ref):  # FP8 matrices only
            return max(float((hf_sd[k] - ref[k]).abs().max()) for k in ref if is_fp8_param(k))

        checks["hf_fp8_loader"] = (f"logits vs expected {hf_diff:.3g}; FP8 weights vs our dequant "
                                   f"{wdiff(want):.3g}, vs a rows//scale_rows dequant {wdiff(grid):.3g}")
    except Exception as exc:  # pragma: no cover
        checks["hf_fp8_loader"] = f"not run: {type(exc).__name__}: {str(exc)[:160]}"
    return checks


# ---------------------------------------------------------------------------

def main(argv):
    wanted = set(argv[1:])
    specs = [s for s in FP8_FIXTURES if not wanted or s["name"] in wanted]
    if wanted and not specs:
        raise SystemExit(f"unknown fixture(s): {sorted(wanted)}")
    print(f"transformers {mf.transformers.__version__}, torch {torch.__version__}, writing to {mf.OUT_DIR}")
    for spec in specs:
        print(f"[{spec['name']}]", flush=True)
        r = make_fixture(spec)
        c = r["checks"]
        print(f"  ok: seed {r['seed']}, dir {r['size'] / 1024:.1f} KiB, logit std {r['logits_std']:.3f}, "
              f"min greedy gap {r['greedy_gap']:.3e}, attn peak {r['attn_peak']:.3f}"
              + (f", min route gap {r['routing']['min_gap']:.2e}, expert sets {r['routing']['min_sets']}"
                 if r["routing"] else ""), flush=True)
        print("  ablations (max |d logit|): " + ", ".join(f"{k}={v:.3g}" for k, v in r["ablations"].items()))
        print(f"  file: {c['tensors']} tensors ({c['fp8_matrices']} F8_E4M3 + as many weight_scale_inv), "
              f"{c['blocks']} blocks (max |q| = 448 in {c['blocks_max_448']}), {c['fp8_values']} FP8 values "
              f"({c['fp8_subnormal']} subnormal, {c['fp8_zero']} zero), model.safetensors {c['file_bytes']} bytes")
        print(f"  dequantised file vs reference tensors: max diff {c['tensor_diff']}; logits vs expected: "
              f"load_state_dict {c['load_state_dict_diff']}, from_pretrained(f32 copy) "
              f"{c['from_pretrained_f32_copy_diff']}")
        print(f"  transformers FP8 loader (CPU dequantize, informative): {c['hf_fp8_loader']}")


if __name__ == "__main__":
    main(sys.argv)
