// Token choice on the device, so a step reads back one id per sequence instead of its logits. Follows
// `Pick::choose` (runtime/src/sampler.rs): repetition penalty; temperature 0 = argmax (lowest id among
// equals); else top-k -> temperature -> softmax -> top-p -> min-p -> a weighted draw.
// One workgroup per row. Logits become order-preserving u32 keys (NaN -> -inf) in `keys`; the top
// min(k, 1024) are found by bisection on the key, sorted (bitonic, in workgroup memory) and the draw at
// `draw` walks them. When the kept set may reach past those 1024 (top-k off or above 1024 with a wide nucleus), the
// row is flagged and the host chooses from the logits instead.
struct Params {
    vocab: u32,
    row: u32,
    // 0 = off
    top_k: u32,
    n_penalized: u32,
    penalized_offset: u32,
    temperature: f32,
    top_p: f32,
    min_p: f32,
    penalty: f32,
    // the uniform draw in [0, 1)
    draw: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> penalized: array<u32>;
// [rows, vocab] scratch: the penalised logits as keys
@group(0) @binding(3) var<storage, read_write> keys: array<u32>;
// [rows, 2]: chosen id, and 1 when the host must choose instead
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
const CAP: u32 = 1024u;
const NEG_INF_KEY: u32 = 0x007fffffu;
const POS_INF_KEY: u32 = 0xff800000u;

var<workgroup> red_u: array<u32, 256>;
var<workgroup> red_id: array<u32, 256>;
var<workgroup> red_f: array<f32, 256>;
var<workgroup> cand_key: array<u32, 1024>;
var<workgroup> cand_id: array<u32, 1024>;
var<workgroup> uniform_u: u32;

// Keys order like the floats: flip negatives entirely, set the sign bit of positives.
fn key_of(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return NEG_INF_KEY;
    }
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn value_of(key: u32) -> f32 {
    return bitcast<f32>(select(~key, key & 0x7fffffffu, (key & 0x80000000u) != 0u));
}

// Whether candidate a goes before b: more likely first, lower id among equals.
fn before(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {
    return ka > kb || (ka == kb && ia < ib);
}

// Sum of red_u over the workgroup, the same value in every thread.
fn sum_u(lid: u32, v: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            red_u[lid] += red_u[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        uniform_u = red_u[0];
    }
    return workgroupUniformLoad(&uniform_u);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let base = p.row * p.vocab;
    // Each thread owns a contiguous run of ids, so per-thread counts in thread order are in id order.
    let chunk = (p.vocab + WG - 1u) / WG;
    let lo = min(lid * chunk, p.vocab);
    let hi = min(lo + chunk, p.vocab);

    for (var i = lo; i < hi; i++) {
        keys[base + i] = key_of(logits[base + i]);
    }
    storageBarrier();
    for (var j = lid; j < p.n_penalized; j += WG) {
        let id = penalized[p.penalized_offset + j];
        if (id < p.vocab) {
            let v = value_of(keys[base + id]);
            keys[base + id] = key_of(select(v * p.penalty, v / p.penalty, v > 0.0));
        }
    }
    storageBarrier();

    // Argmax, lowest id among equals: the answer at temperature 0 and whenever the best is not finite.
    var best_key = 0u;
    var best_id = 0xffffffffu;
    for (var i = lo; i < hi; i++) {
        let k = keys[base + i];
        if (best_id == 0xffffffffu || k > best_key) {
            best_key = k;
            best_id = i;
        }
    }
    red_u[lid] = best_key;
    red_id[lid] = best_id;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride && red_id[lid + stride] != 0xffffffffu) {
            if (red_id[lid] == 0xffffffffu || before(red_u[lid + stride], red_id[lid + stride], red_u[lid], red_id[lid])) {
                red_u[lid] = red_u[lid + stride];
                red_id[lid] = red_id[lid + stride];
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        uniform_u = red_u[0];
    }
    let top_key = workgroupUniformLoad(&uniform_u);
    if (p.temperature <= 0.0 || top_key <= NEG_INF_KEY || top_key >= POS_INF_KEY) {
        if (lid == 0u) {
            out[p.row * 2u] = select(red_id[0], 0u, red_id[0] == 0xffffffffu);
            out[p.row * 2u + 1u] = 0u;
        }
        return;
    }
    let best = value_of(top_key);

    let top_k_on = p.top_k > 0u && p.top_k < p.vocab;
    let k = select(p.vocab, p.top_k, top_k_on);
    if (k > CAP && top_k_on) {
        if (lid == 0u) {
            out[p.row * 2u + 1u] = 1u;
        }
        return;
    }
    let kk = min(k, CAP);
    // Beyond the sorted candidates lie more of the kept set: the walk below must end inside them.
    let truncated = k > kk;

    // The kk-th largest key: the largest t with at least kk keys >= t, one bit at a time.
    var t = 0u;
    for (var bit = 31i; bit >= 0i; bit--) {
        let trial = t | (1u << u32(bit));
        var n = 0u;
        for (var i = lo; i < hi; i++) {
            n += select(0u, 1u, keys[base + i] >= trial);
        }
        if (sum_u(lid, n) >= kk) {
            t = trial;
        }
    }

    // Candidates: every key above t, then keys equal to t in id order until kk.
    var n_gt = 0u;
    var n_eq = 0u;
    for (var i = lo; i < hi; i++) {
        let key = keys[base + i];
        n_gt += select(0u, 1u, key > t);
        n_eq += select(0u, 1u, key == t);
    }
    red_u[lid] = n_gt;
    red_id[lid] = n_eq;
    workgroupBarrier();
    if (lid == 0u) {
        // Exclusive prefix sums over threads (256 entries: a serial scan is cheap here).
        var gt = 0u;
        var eq = 0u;
        for (var j = 0u; j < WG; j++) {
            let g = red_u[j];
            let e = red_id[j];
            red_u[j] = gt;
            red_id[j] = eq;
            gt += g;
            eq += e;
        }
        uniform_u = gt;
    }
    let total_gt = workgroupUniformLoad(&uniform_u);
    for (var j = lid; j < CAP; j += WG) {
        cand_key[j] = 0u;
        cand_id[j] = 0xffffffffu;
    }
    workgroupBarrier();
    var at_gt = red_u[lid];
    var at_eq = total_gt + red_id[lid];
    for (var i = lo; i < hi; i++) {
        let key = keys[base + i];
        if (key > t) {
            cand_key[at_gt] = key;
            cand_id[at_gt] = i;
            at_gt++;
        } else if (key == t) {
            if (at_eq < kk) {
                cand_key[at_eq] = key;
                cand_id[at_eq] = i;
            }
            at_eq++;
        }
    }
    workgroupBarrier();

    // Bitonic sort of the CAP slots into `before` order (empty slots, key 0, sink to the end).
    for (var size = 2u; size <= CAP; size <<= 1u) {
        for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
            for (var pair = lid; pair < CAP / 2u; pair += WG) {
                let a = 2u * stride * (pair / stride) + pair % stride;
                let b = a + stride;
                let forward = (a & size) == 0u;
                if (before(cand_key[a], cand_id[a], cand_key[b], cand_id[b]) != forward) {
                    let key = cand_key[a];
                    let id = cand_id[a];
                    cand_key[a] = cand_key[b];
                    cand_id[a] = cand_id[b];
                    cand_key[b] = key;
                    cand_id[b] = id;
                }
            }
            workgroupBarrier();
        }
    }

    // The softmax denominator: over the top-k, or over the whole vocabulary when top-k is off.
    var part = 0.0;
    if (truncated) {
        for (var i = lo; i < hi; i++) {
            part += exp((value_of(keys[base + i]) - best) / p.temperature);
        }
    }
    red_f[lid] = part;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            red_f[lid] += red_f[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid != 0u) {
        return;
    }
    var total = red_f[0];
    if (!truncated) {
        total = 0.0;
        for (var i = 0u; i < kk; i++) {
            total += exp((value_of(cand_key[i]) - best) / p.temperature);
        }
    }
    var keep = kk;
    if (p.top_p < 1.0) {
        var cumulative = 0.0;
        for (var i = 0u; i < kk; i++) {
            cumulative += exp((value_of(cand_key[i]) - best) / p.temperature) / total;
            if (cumulative >= p.top_p) {
                keep = i + 1u;
                break;
            }
        }
    }
    if (p.min_p > 0.0) {
        // The most likely token has probability weight exp(0) = 1 and always stays.
        var n = 1u;
        while (n < keep && exp((value_of(cand_key[n]) - best) / p.temperature) >= p.min_p) {
            n++;
        }
        keep = n;
    }
    if (truncated && keep == kk) {
        out[p.row * 2u + 1u] = 1u;
        return;
    }
    var kept = 0.0;
    for (var i = 0u; i < keep; i++) {
        kept += exp((value_of(cand_key[i]) - best) / p.temperature);
    }
    var remaining = p.draw * kept;
    var chosen = cand_id[keep - 1u];
    for (var i = 0u; i < keep; i++) {
        remaining -= exp((value_of(cand_key[i]) - best) / p.temperature);
        if (remaining < 0.0) {
            chosen = cand_id[i];
            break;
        }
    }
    out[p.row * 2u] = chosen;
    out[p.row * 2u + 1u] = 0u;
}
