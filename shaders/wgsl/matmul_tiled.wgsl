// y = x · Wᵀ (+ bias) for steps of many tokens (prefill; parameters and bindings in matmul_common.wgsl): one
// workgroup per 64 tokens x 64 outputs through the tiled core (gemm_tiles.wgsl), so each weight value
// loaded from memory serves 64 tokens.

var<private> t0: u32;
var<private> o0: u32;

fn tile_a(row: u32, k: u32) -> f32 {
    let t = t0 + row;
    if (t < p.tokens && k < p.k) {
        return x[t * p.k + k];
    }
    return 0.0;
}

fn tile_b(col: u32, k: u32) -> f32 {
    let o = o0 + col;
    if (o < p.outputs && k < p.k) {
        return w_at(o, k, p.k);
    }
    return 0.0;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    o0 = wid.x * TILE;
    t0 = wid.y * TILE;
    let acc = gemm_tile(lid, p.k);
    for (var r = 0u; r < 4u; r++) {
        let t = t0 + (lid / 16u) * 4u + r;
        for (var c = 0u; c < 4u; c++) {
            let o = o0 + (lid % 16u) * 4u + c;
            if (t < p.tokens && o < p.outputs) {
                var v = acc[r][c];
                if (p.has_bias != 0u) {
                    v += bias[p.out_base + o];
                }
                y[t * p.out_stride + p.out_base + o] = v;
            }
        }
    }
}
