// RMSNorm over each group of `group` columns of each row (the row width, or head_dim for per-head norms).
// One workgroup per (group, row); the weight covers one group or the whole row (`wlen`).
struct Params {
    cols: u32,
    group: u32,
    wlen: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let base = wid.y * p.cols + wid.x * p.group;
    var sum = 0.0;
    for (var i = lid.x; i < p.group; i += 64u) {
        let v = x[base + i];
        sum += v * v;
    }
    partial[lid.x] = sum;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (lid.x < stride) {
            partial[lid.x] += partial[lid.x + stride];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(partial[0] / f32(p.group) + p.eps);
    let wbase = (wid.x * p.group) % p.wlen;
    for (var i = lid.x; i < p.group; i += 64u) {
        out[base + i] = x[base + i] * inv * weight[wbase + i];
    }
}
