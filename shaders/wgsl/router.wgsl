// MoE router, one thread per token: scores every expert (softmax or sigmoid of the logits), selects by
// top-k or top-p (experts by falling probability until their sum reaches p, between min and max), or
// selects the top-k logits first and scores only those (GPT-OSS), then renormalises if asked. Ties go to
// the lower expert index. Writes the chosen ids and weights, their count, and every expert's probability.
struct Params {
    rows: u32,
    n_experts: u32,
    max_experts: u32,
    min_experts: u32,
    // 0 softmax, 1 sigmoid
    scoring: u32,
    // 0 score then select, 1 select then score
    order: u32,
    // 0 top-k (max_experts), 1 top-p
    top_p: u32,
    renormalize: u32,
    p_threshold: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Most experts the selection mask covers (runtime/src/backend/mod.rs: MAX_EXPERTS).
const MAX_EXPERTS: u32 = 1024u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> probs: array<f32>;
@group(0) @binding(3) var<storage, read_write> chosen: array<u32>;
@group(0) @binding(4) var<storage, read_write> weights: array<f32>;
@group(0) @binding(5) var<storage, read_write> counts: array<u32>;

fn score_all(base: u32) {
    if (p.scoring == 1u) {
        for (var e = 0u; e < p.n_experts; e++) {
            probs[base + e] = 1.0 / (1.0 + exp(-logits[base + e]));
        }
        return;
    }
    var m = -3.0e38;
    for (var e = 0u; e < p.n_experts; e++) {
        m = max(m, logits[base + e]);
    }
    var sum = 0.0;
    for (var e = 0u; e < p.n_experts; e++) {
        let v = exp(logits[base + e] - m);
        probs[base + e] = v;
        sum += v;
    }
    for (var e = 0u; e < p.n_experts; e++) {
        probs[base + e] /= sum;
    }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= p.rows) {
        return;
    }
    let base = t * p.n_experts;
    let out = t * p.max_experts;
    score_all(base);
    // Selection key: probabilities, or raw logits when selecting before scoring.
    var taken: array<u32, MAX_EXPERTS / 32u>;
    var count = 0u;
    var sum = 0.0;
    loop {
        let enough = select(count >= p.max_experts, count >= p.max_experts || (count >= p.min_experts && sum >= p.p_threshold), p.top_p == 1u);
        if (enough) {
            break;
        }
        var best = 0u;
        var best_key = -3.0e38;
        var found = false;
        for (var e = 0u; e < p.n_experts; e++) {
            let bit = 1u << (e & 31u);
            if ((taken[e >> 5u] & bit) != 0u) {
                continue;
            }
            let key = select(probs[base + e], logits[base + e], p.order == 1u);
            if (!found || key > best_key) {
                best = e;
                best_key = key;
                found = true;
            }
        }
        taken[best >> 5u] |= 1u << (best & 31u);
        chosen[out + count] = best;
        weights[out + count] = probs[base + best];
        sum += probs[base + best];
        count++;
    }
    if (p.order == 1u) {
        // Score only the selected logits.
        if (p.scoring == 1u) {
            for (var i = 0u; i < count; i++) {
                weights[out + i] = 1.0 / (1.0 + exp(-logits[base + chosen[out + i]]));
            }
        } else {
            var m = -3.0e38;
            for (var i = 0u; i < count; i++) {
                m = max(m, logits[base + chosen[out + i]]);
            }
            var s = 0.0;
            for (var i = 0u; i < count; i++) {
                let v = exp(logits[base + chosen[out + i]] - m);
                weights[out + i] = v;
                s += v;
            }
            for (var i = 0u; i < count; i++) {
                weights[out + i] /= s;
            }
        }
    }
    if (p.renormalize != 0u) {
        var s = 0.0;
        for (var i = 0u; i < count; i++) {
            s += weights[out + i];
        }
        for (var i = 0u; i < count; i++) {
            weights[out + i] /= s;
        }
    }
    counts[t] = count;
}
