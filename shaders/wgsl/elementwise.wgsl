// Element-wise ops over n values: residual add, SwiGLU, clamp, and the per-row sigmoid gate.
struct Params {
    n: u32,
    cols: u32,
    limit: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;

// x += y
@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * 64u) {
        x[i] += y[i];
    }
}

// x = silu(x) * y  (x holds gate, y holds up)
@compute @workgroup_size(64)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * 64u) {
        let g = x[i];
        x[i] = g / (1.0 + exp(-g)) * y[i];
    }
}

// x = clamp(x, -limit, limit)
@compute @workgroup_size(64)
fn clamp_values(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * 64u) {
        x[i] = clamp(x[i], -p.limit, p.limit);
    }
}

// x[r, :] *= sigmoid(y[r])
@compute @workgroup_size(64)
fn sigmoid_gate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * 64u) {
        x[i] *= 1.0 / (1.0 + exp(-y[i / p.cols]));
    }
}
