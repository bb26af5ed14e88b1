// Attention of one query row and head over the keys its position may see: (pos - window, pos] for a sliding
// layer (window 0 = full). Only that range is read, so a sliding layer costs O(window). One workgroup per
// (head, row) walking the whole range (prefill and short ranges; long decode ranges take
// attention_split.wgsl). A sink logit (GPT-OSS) starts the sum with exp(sink). Built after
// attention_common.wgsl.
@group(0) @binding(6) var<storage, read> sinks: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    let row = load_query(h, t, lid.x);
    let pos = row.x;
    var state = Softmax(-3.0e38, 0.0, array<f32, 4>(0.0, 0.0, 0.0, 0.0));
    if (p.has_sinks != 0u) {
        state.running_max = sinks[h];
        state.running_sum = 1.0;
    }
    state = attend(state, h, row.y, first_visible(pos), pos, lid.x);
    for (var c = 0u; c < 4u; c++) {
        let d = lid.x + c * 64u;
        if (d < p.head_dim) {
            out[(t * p.n_heads + h) * p.head_dim + d] = state.acc[c] / state.running_sum;
        }
    }
}
