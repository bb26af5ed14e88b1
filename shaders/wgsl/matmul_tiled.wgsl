// y[t, o] = sum_k x[t, k] * W[o, k] (+ bias[o]) for steps of many tokens (prefill): one workgroup per 64
// tokens x 64 outputs through the tiled core (gemm_tiles.wgsl), so each weight value loaded from memory
// serves 64 tokens. Same parameters as matmul.wgsl: a matrix too large for one binding comes in row parts,
// and this dispatch's W holds rows out_base.. of y.
struct Params {
    tokens: u32,
    k: u32,
    // rows of this part
    outputs: u32,
    has_bias: u32,
    // columns of y (all parts)
    out_stride: u32,
    out_base: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

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
