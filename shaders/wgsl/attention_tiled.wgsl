// Attention for prefill: one workgroup per (head, block of up to 16 consecutive query rows of one sequence,
// listed in `blocks`). Keys and values pass through workgroup memory 8 positions at a time and serve every
// row of the block, instead of each row reading them again. Each row has 4 threads, each holding a quarter
// of the head's dimensions (head_dim <= 128; interleaved so neighbouring threads read neighbouring floats).
// Same causal/window masking, KV addressing and sinks as attention.wgsl. Built after attention_common.wgsl.
@group(0) @binding(6) var<storage, read> sinks: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
// [blocks, 2]: first row and row count
@group(0) @binding(8) var<storage, read> blocks: array<u32>;

const KEYS: u32 = 8u;
const MAX_DIM: u32 = 128u;

var<workgroup> k_tile: array<f32, 1024>;
var<workgroup> v_tile: array<f32, 1024>;
// [row, key, quarter]: partial dot products
var<workgroup> partial: array<f32, 512>;
// first row, row count, sequence, position of the first row
var<workgroup> block_info: vec4<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let h = wid.x;
    if (lid == 0u) {
        let first_row = blocks[2u * wid.y];
        block_info = vec4<u32>(first_row, blocks[2u * wid.y + 1u], seqs[first_row], positions[first_row]);
    }
    let info = workgroupUniformLoad(&block_info);
    let n_rows = info.y;
    let seq = info.z;
    // A block's rows are consecutive tokens of one sequence: positions p0, p0 + 1, ...
    let p0 = info.w;
    let row = lid / 4u;
    let quarter = lid % 4u;
    let in_block = row < n_rows;
    let t = info.x + row;
    let pos = p0 + row;
    let hd = p.head_dim;
    let kv_offset = (h / p.heads_per_kv) * hd;

    var qv: array<f32, 32>;
    var acc: array<f32, 32>;
    for (var i = 0u; i < 32u; i++) {
        let d = quarter + 4u * i;
        if (in_block && d < hd) {
            qv[i] = q[(t * p.n_heads + h) * hd + d];
        }
    }
    var running_max = -3.0e38;
    var running_sum = 0.0;
    if (p.has_sinks != 0u) {
        running_max = sinks[h];
        running_sum = 1.0;
    }
    let row_first = first_visible(pos);
    let last = p0 + n_rows - 1u;
    for (var j0 = first_visible(p0); j0 <= last; j0 += KEYS) {
        // A pair of neighbouring dimensions per thread and pass: one KV pair of K and of V.
        for (var e = 2u * lid; e < KEYS * hd; e += 128u) {
            let key = e / hd;
            let d = e % hd;
            let j = j0 + key;
            var kv = vec2<f32>(0.0);
            var vv = vec2<f32>(0.0);
            if (j <= last) {
                let at = kv_row(seq, j, p.capacity, p.pages_per_seq) * p.kv_dim + kv_offset + d;
                kv = k_pair(at);
                vv = v_pair(at);
            }
            k_tile[key * MAX_DIM + d] = kv.x;
            k_tile[key * MAX_DIM + d + 1u] = kv.y;
            v_tile[key * MAX_DIM + d] = vv.x;
            v_tile[key * MAX_DIM + d + 1u] = vv.y;
        }
        workgroupBarrier();
        for (var key = 0u; key < KEYS; key++) {
            var dot = 0.0;
            for (var i = 0u; i < 32u; i++) {
                let d = quarter + 4u * i;
                if (d < hd) {
                    dot += qv[i] * k_tile[key * MAX_DIM + d];
                }
            }
            partial[(row * KEYS + key) * 4u + quarter] = dot;
        }
        workgroupBarrier();
        var scores: array<f32, 8>;
        var tile_max = running_max;
        for (var key = 0u; key < KEYS; key++) {
            let j = j0 + key;
            let at = (row * KEYS + key) * 4u;
            scores[key] = -3.0e38;
            if (in_block && j >= row_first && j <= pos) {
                scores[key] = (partial[at] + partial[at + 1u] + partial[at + 2u] + partial[at + 3u]) * p.scale;
                tile_max = max(tile_max, scores[key]);
            }
        }
        let correction = exp(running_max - tile_max);
        running_sum *= correction;
        for (var i = 0u; i < 32u; i++) {
            acc[i] *= correction;
        }
        for (var key = 0u; key < KEYS; key++) {
            if (scores[key] > -1.0e38) {
                let weight = exp(scores[key] - tile_max);
                running_sum += weight;
                for (var i = 0u; i < 32u; i++) {
                    let d = quarter + 4u * i;
                    if (d < hd) {
                        acc[i] += weight * v_tile[key * MAX_DIM + d];
                    }
                }
            }
        }
        running_max = tile_max;
        // The next tile overwrites k_tile, v_tile and partial.
        workgroupBarrier();
    }
    for (var i = 0u; i < 32u; i++) {
        let d = quarter + 4u * i;
        if (in_block && d < hd) {
            out[(t * p.n_heads + h) * hd + d] = acc[i] / running_sum;
        }
    }
}
