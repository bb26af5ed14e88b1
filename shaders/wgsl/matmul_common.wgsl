// What matmul.wgsl and matmul_tiled.wgsl share: y[t, o] = sum_k x[t, k] * W[o, k] (+ bias[o]), W read through
// the weight prelude. A matrix too large for one binding comes in row parts: this dispatch's W holds rows
// out_base.. of y.
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
