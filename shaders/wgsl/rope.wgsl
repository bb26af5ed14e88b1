// Rotary embedding, rotate-half: dimension d pairs with d + head_dim/2 in every head of every row, at the
// row's position. cos and sin carry the scaling's attention factor.
struct Params {
    rows: u32,
    cols: u32,
    head_dim: u32,
    attention_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;

// sin/cos are only accurate near [-pi, pi] on GPUs: reduce with 2*pi split in two (Cody-Waite).
fn reduce_angle(a: f32) -> f32 {
    let k = round(a * 0.15915494309189535);
    return (a - k * 6.28125) - k * 0.0019353071795864769;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let half = p.head_dim / 2u;
    let per_row = p.cols / 2u;
    let n = p.rows * per_row;
    for (var i = gid.x; i < n; i += nwg.x * 64u) {
        let r = i / per_row;
        let rem = i % per_row;
        let d = rem % half;
        let base = r * p.cols + (rem / half) * p.head_dim;
        let angle = reduce_angle(f32(positions[r]) * inv_freq[d]);
        let c = cos(angle) * p.attention_scale;
        let s = sin(angle) * p.attention_scale;
        let a = x[base + d];
        let b = x[base + d + half];
        x[base + d] = a * c - b * s;
        x[base + d + half] = b * c + a * s;
    }
}
