// Split-K (flash-decoding) attention for steps of few query rows over long key ranges: `partial_chunk` gives each
// (head, row, chunk of the visible range) its own workgroup, so a long range keeps the GPU busy at batch 1;
// `merge_chunks` then combines a row's chunks. Chunk c of a row covers visible positions
// first + c * chunk_len .. first + (c + 1) * chunk_len - 1, clipped to pos; chunks past pos hold the empty
// state (max -3e38, sum 0), which the merge weighs by exp(-3e38 - max) = 0. Built after
// attention_common.wgsl.
@group(0) @binding(6) var<storage, read> sinks: array<f32>;
// Per (row, head, chunk): running max, running sum, then head_dim unnormalised accumulators.
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;

fn partial_base(t: u32, h: u32, chunk: u32) -> u32 {
    return ((t * p.n_heads + h) * p.n_chunks + chunk) * (p.head_dim + 2u);
}

@compute @workgroup_size(64)
fn partial_chunk(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    let row = load_query(h, t, lid.x);
    let pos = row.x;
    let first = first_visible(pos) + wid.z * p.chunk_len;
    let last = min(first + p.chunk_len - 1u, pos);
    var state = Softmax(-3.0e38, 0.0, array<f32, 4>(0.0, 0.0, 0.0, 0.0));
    state = attend(state, h, row.y, first, last, lid.x);
    let base = partial_base(t, h, wid.z);
    if (lid.x == 0u) {
        partials[base] = state.running_max;
        partials[base + 1u] = state.running_sum;
    }
    for (var c = 0u; c < 4u; c++) {
        let d = lid.x + c * 64u;
        if (d < p.head_dim) {
            partials[base + 2u + d] = state.acc[c];
        }
    }
}

// One workgroup per (head, row): rescales each chunk by exp(m_i - m) to the common max m, adds the sink once
// (exp(sink - m) in the denominator only), and normalises.
@compute @workgroup_size(64)
fn merge_chunks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    var m = -3.0e38;
    if (p.has_sinks != 0u) {
        m = sinks[h];
    }
    for (var chunk = 0u; chunk < p.n_chunks; chunk++) {
        m = max(m, partials[partial_base(t, h, chunk)]);
    }
    var sum = 0.0;
    if (p.has_sinks != 0u) {
        sum = exp(sinks[h] - m);
    }
    var acc: array<f32, 4>;
    for (var chunk = 0u; chunk < p.n_chunks; chunk++) {
        let base = partial_base(t, h, chunk);
        let weight = exp(partials[base] - m);
        sum += weight * partials[base + 1u];
        for (var c = 0u; c < 4u; c++) {
            let d = lid.x + c * 64u;
            if (d < p.head_dim) {
                acc[c] += weight * partials[base + 2u + d];
            }
        }
    }
    for (var c = 0u; c < 4u; c++) {
        let d = lid.x + c * 64u;
        if (d < p.head_dim) {
            out[(t * p.n_heads + h) * p.head_dim + d] = acc[c] / sum;
        }
    }
}
