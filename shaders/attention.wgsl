// Attention of one query row and head over the keys its position may see: (pos - window, pos] for a sliding
// layer (window 0 = full). Only that range is read, so a sliding layer costs O(window). One workgroup per
// (head, row); keys go in blocks of 64 with an online softmax (running max and sum), each thread
// accumulating 4 of the head's dimensions. A sink logit (GPT-OSS) starts the sum with exp(sink).
struct Params {
    n_heads: u32,
    heads_per_kv: u32,
    head_dim: u32,
    kv_dim: u32,
    capacity: u32,
    window: u32,
    has_sinks: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;
@group(0) @binding(4) var<storage, read> positions: array<u32>;
@group(0) @binding(5) var<storage, read> seqs: array<u32>;
@group(0) @binding(6) var<storage, read> sinks: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

var<workgroup> q_row: array<f32, 256>;
var<workgroup> scores: array<f32, 64>;
var<workgroup> row_pos: u32;
var<workgroup> row_seq: u32;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    let hd = p.head_dim;
    if (lid.x == 0u) {
        row_pos = positions[t];
        row_seq = seqs[t];
    }
    for (var d = lid.x; d < hd; d += 64u) {
        q_row[d] = q[(t * p.n_heads + h) * hd + d];
    }
    // Uniform loads: the loop bounds below must be the same for the whole workgroup.
    let pos = workgroupUniformLoad(&row_pos);
    let seq = workgroupUniformLoad(&row_seq);
    var first = 0u;
    if (p.window > 0u && pos + 1u > p.window) {
        first = pos + 1u - p.window;
    }
    let kv_offset = (h / p.heads_per_kv) * hd;
    var running_max = -3.0e38;
    var running_sum = 0.0;
    if (p.has_sinks != 0u) {
        running_max = sinks[h];
        running_sum = 1.0;
    }
    var acc: array<f32, 4>;
    for (var j0 = first; j0 <= pos; j0 += 64u) {
        let j = j0 + lid.x;
        var s = -3.0e38;
        if (j <= pos) {
            let base = (seq * p.capacity + j % p.capacity) * p.kv_dim + kv_offset;
            var dot = 0.0;
            for (var e = 0u; e < hd; e++) {
                dot += q_row[e] * k_cache[base + e];
            }
            s = dot * p.scale;
        }
        scores[lid.x] = s;
        workgroupBarrier();
        var block_max = running_max;
        for (var i = 0u; i < 64u; i++) {
            block_max = max(block_max, scores[i]);
        }
        let correction = exp(running_max - block_max);
        running_sum *= correction;
        for (var c = 0u; c < 4u; c++) {
            acc[c] *= correction;
        }
        let last = min(pos - j0, 63u);
        for (var i = 0u; i <= last; i++) {
            let weight = exp(scores[i] - block_max);
            running_sum += weight;
            let base = (seq * p.capacity + (j0 + i) % p.capacity) * p.kv_dim + kv_offset;
            for (var c = 0u; c < 4u; c++) {
                let d = lid.x + c * 64u;
                if (d < hd) {
                    acc[c] += weight * v_cache[base + d];
                }
            }
        }
        running_max = block_max;
        workgroupBarrier();
    }
    for (var c = 0u; c < 4u; c++) {
        let d = lid.x + c * 64u;
        if (d < hd) {
            out[(t * p.n_heads + h) * hd + d] = acc[c] / running_sum;
        }
    }
}
