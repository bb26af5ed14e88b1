// Shared by attention.wgsl and attention_split.wgsl: parameters, the query/KV bindings, and the online
// softmax of one (head, query row) over a range of key positions. The KV of position `j` of sequence `seq`
// lives at row `kv_row(seq, j, ...)` of the cache (kv_pages.wgsl, built after this file).
struct Params {
    n_heads: u32,
    heads_per_kv: u32,
    head_dim: u32,
    kv_dim: u32,
    // Ring rows per sequence (sliding layers), or 0 for a paged full layer with `pages_per_seq` table entries.
    capacity: u32,
    pages_per_seq: u32,
    window: u32,
    has_sinks: u32,
    scale: f32,
    // Split path only: key positions per chunk and chunks per (head, row).
    chunk_len: u32,
    n_chunks: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
// Words of KV_PER_WORD neighbouring values (kv_f16.wgsl, kv_f32.wgsl or kv_fp8.wgsl), read a pair at a time;
// kv_dim and head_dim are even.
@group(0) @binding(2) var<storage, read> k_cache: array<KvWord>;
@group(0) @binding(3) var<storage, read> v_cache: array<KvWord>;
@group(0) @binding(4) var<storage, read> positions: array<u32>;
@group(0) @binding(5) var<storage, read> seqs: array<u32>;

// The largest head the kernels hold (runtime/src/backend/mod.rs: MAX_HEAD_DIM).
const MAX_HEAD_DIM: u32 = 256u;

var<workgroup> q_row: array<f32, MAX_HEAD_DIM>;
var<workgroup> scores: array<f32, 64>;
var<workgroup> row_pos: u32;
var<workgroup> row_seq: u32;

// Online-softmax state: running max and sum of exp(score - max), and the unnormalised weighted sum of V
// over 4 of the head's dimensions (lid + c * 64) per thread.
struct Softmax {
    running_max: f32,
    running_sum: f32,
    acc: array<f32, 4>,
}

// Loads the query row of (head h, row t) into q_row; returns (position, sequence), uniform across the
// workgroup so loop bounds built from them keep barriers in uniform control flow.
fn load_query(h: u32, t: u32, lid: u32) -> vec2<u32> {
    if (lid == 0u) {
        row_pos = positions[t];
        row_seq = seqs[t];
    }
    for (var d = lid; d < p.head_dim; d += 64u) {
        q_row[d] = q[(t * p.n_heads + h) * p.head_dim + d];
    }
    return vec2<u32>(workgroupUniformLoad(&row_pos), workgroupUniformLoad(&row_seq));
}

// First position a query at `pos` sees: pos - window + 1 for a sliding layer (window 0 = full).
fn first_visible(pos: u32) -> u32 {
    if (p.window > 0u && pos + 1u > p.window) {
        return pos + 1u - p.window;
    }
    return 0u;
}

// Folds keys first..=last (uniform; empty when first > last) of head h into `state`, in blocks of 64.
fn attend(state_in: Softmax, h: u32, seq: u32, first: u32, last: u32, lid: u32) -> Softmax {
    var state = state_in;
    let hd = p.head_dim;
    let kv_offset = (h / p.heads_per_kv) * hd;
    for (var j0 = first; j0 <= last; j0 += 64u) {
        let j = j0 + lid;
        var s = -3.0e38;
        if (j <= last) {
            let base = kv_row(seq, j, p.capacity, p.pages_per_seq) * p.kv_dim + kv_offset;
            var dot = 0.0;
            for (var e = 0u; e < hd; e += 2u) {
                let key = k_pair(base + e);
                dot += q_row[e] * key.x + q_row[e + 1u] * key.y;
            }
            s = dot * p.scale;
        }
        scores[lid] = s;
        workgroupBarrier();
        var block_max = state.running_max;
        for (var i = 0u; i < 64u; i++) {
            block_max = max(block_max, scores[i]);
        }
        let correction = exp(state.running_max - block_max);
        state.running_sum *= correction;
        for (var c = 0u; c < 4u; c++) {
            state.acc[c] *= correction;
        }
        let block_last = min(last - j0, 63u);
        for (var i = 0u; i <= block_last; i++) {
            let weight = exp(scores[i] - block_max);
            state.running_sum += weight;
            let base = kv_row(seq, j0 + i, p.capacity, p.pages_per_seq) * p.kv_dim + kv_offset;
            for (var c = 0u; c < 4u; c++) {
                let d = lid + c * 64u;
                if (d < hd) {
                    state.acc[c] += weight * v_value(base + d);
                }
            }
        }
        state.running_max = block_max;
        workgroupBarrier();
    }
    return state;
}

// Elements i and i + 1 (i even) of the K or V cache.
fn k_pair(i: u32) -> vec2<f32> {
    return kv_unpack_pair(k_cache[i / KV_PER_WORD], (i % KV_PER_WORD) / 2u);
}

fn v_pair(i: u32) -> vec2<f32> {
    return kv_unpack_pair(v_cache[i / KV_PER_WORD], (i % KV_PER_WORD) / 2u);
}

// Element i of the V cache.
fn v_value(i: u32) -> f32 {
    let pair = v_pair(i & ~1u);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}
