// y = x · Wᵀ (+ bias) for decode and small steps (parameters and bindings in matmul_common.wgsl): one
// workgroup computes 4 outputs for 4 tokens, so each weight value loaded serves 4 tokens; decode (t = 1)
// streams W once and prefill reads it t/4 times. 64 threads split k; `sum16_over_64` (subgroup operations
// where the adapter has them, else a shared-memory tree) sums.

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, lanes: Lanes) {
    let lid = lanes.lid;
    let o0 = wid.x * 4u;
    let t0 = wid.y * 4u;
    var acc: array<f32, 16>;
    for (var k = lid.x; k < p.k; k += 64u) {
        var xs: array<f32, 4>;
        for (var j = 0u; j < 4u; j++) {
            if (t0 + j < p.tokens) {
                xs[j] = x[(t0 + j) * p.k + k];
            }
        }
        for (var r = 0u; r < 4u; r++) {
            if (o0 + r < p.outputs) {
                let wv = w_at(o0 + r, k, p.k);
                for (var j = 0u; j < 4u; j++) {
                    acc[r * 4u + j] += wv * xs[j];
                }
            }
        }
    }
    let sum = sum16_over_64(lanes, acc);
    if (lid.x < 16u) {
        let o = o0 + lid.x / 4u;
        let t = t0 + lid.x % 4u;
        if (o < p.outputs && t < p.tokens) {
            var v = sum;
            if (p.has_bias != 0u) {
                v += bias[p.out_base + o];
            }
            y[t * p.out_stride + p.out_base + o] = v;
        }
    }
}
