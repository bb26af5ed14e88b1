"""Routing diagnostics computed directly from the PyTorch reference (tools/volt_reference.py), to check
`volt route-stats`.

Usage: python3 tools/route_stats_reference.py MODEL_DIR TEXT_FILE EP_GROUPS PARTITIONS OUT.json [CONTEXT]

Same definitions as the Yi-Lightning report, section 2.2 (see runtime/src/routing_stats.rs): over the batch B
of all tokens of the text, f_i = share of tokens whose most probable expert is i, P_i = mean router
probability, L_ST = N * sum f_i P_i; L_EP and L_PEP apply the same formula inside each EP group / partition
over the tokens dispatched to it (argmax expert inside). The text is routed in consecutive windows of CONTEXT
tokens (default: the model's max_position_embeddings), as the Rust command does.
"""

import json
import sys

import numpy as np
import torch
from tokenizers import Tokenizer

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from volt_reference import VoltForCausalLM  # noqa: E402


def balance(argmax, probs, tokens, experts):
    """f, P over `tokens` for the experts in `experts`, and len(experts) * sum f P."""
    n = len(experts)
    if len(tokens) == 0:
        return [0.0] * n, [0.0] * n, 0.0
    f = np.array([np.mean(argmax[tokens] == e) for e in experts])
    p = probs[tokens][:, experts].astype(np.float64).mean(0)
    return f.tolist(), p.tolist(), float(n * (f * p).sum())


def layer_stats(probs, selected, groups, partitions):
    T, N = probs.shape
    argmax = probs.argmax(-1)
    all_tokens = np.arange(T)
    f, p, l_st = balance(argmax, probs, all_tokens, list(range(N)))
    gsize = N // groups
    psize = gsize // partitions

    def term(lo, size):
        experts = list(range(lo, lo + size))
        mask = (argmax >= lo) & (argmax < lo + size)
        return balance(argmax, probs, all_tokens[mask], experts)[2]

    ep = [term(g * gsize, gsize) for g in range(groups)]
    pep = [term(q * psize, psize) for q in range(groups * partitions)]
    counts = [len(s) for s in selected]
    hist = [0] * (max(counts) + 1)
    for c in counts:
        hist[c] += 1
    load = [sum(e in s for s in selected) / T for e in range(N)]
    return {"f": f, "P": p, "load": load, "L_ST": l_st, "L_EP": ep, "L_PEP": pep, "experts_per_token": hist}


def main():
    model_dir, text_file, groups, partitions, out = sys.argv[1:6]
    groups, partitions = int(groups), int(partitions)
    model = VoltForCausalLM.load(model_dir)
    context = int(sys.argv[6]) if len(sys.argv) > 6 else model.config.max_position_embeddings
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    ids = tok.encode(open(text_file, encoding="utf-8").read(), add_special_tokens=False).ids
    per_layer = {}
    with torch.no_grad():
        for start in range(0, len(ids), context):
            for r in model.route(ids[start : start + context]):
                acc = per_layer.setdefault(r.layer, ([], []))
                acc[0].append(r.probs.float().numpy())
                acc[1].extend(r.selected())
    layers = []
    for layer, (probs, selected) in sorted(per_layer.items()):
        stats = layer_stats(np.concatenate(probs), selected, groups, partitions)
        stats["layer"] = layer
        layers.append(stats)
    json.dump({"tokens": len(ids), "ep_groups": groups, "partitions": partitions, "layers": layers}, open(out, "w"))
    print(f"{len(ids)} tokens, {len(layers)} MoE layers -> {out}")


if __name__ == "__main__":
    main()
