// First half of the routed experts: for each token and each of its chosen experts, the activation
// act[t, slot, i] = act(gate_e[i] . x_t + bg, up_e[i] . x_t + bu). Expert ids come from the router's GPU
// buffer. Gate and up are stacked as one [E * 2I, H] matrix (expert e's gate rows, then its up rows).
// One workgroup per (4 intermediate rows, slot, token); slots past the token's count do nothing.
// Experts too large for one binding come in parts: this dispatch's W holds experts first_expert.. and
// skips slots routed elsewhere.
struct Params {
    hidden: u32,
    inter: u32,
    max_experts: u32,
    // 0 SwiGLU, 1 GPT-OSS clamped SwiGLU
    activation: u32,
    alpha: f32,
    limit: f32,
    has_bias: u32,
    first_expert: u32,
    part_experts: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> chosen: array<u32>;
@group(0) @binding(4) var<storage, read> counts: array<u32>;
// [E, 2I]: gate biases then up biases of each expert
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> act: array<f32>;

var<workgroup> red: array<f32, 512>;
var<workgroup> expert: u32;
var<workgroup> slot_active: u32;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let slot = wid.y;
    let t = wid.z;
    if (lid.x == 0u) {
        expert = chosen[t * p.max_experts + slot];
        slot_active = select(0u, 1u, slot < counts[t] && expert - p.first_expert < p.part_experts);
    }
    if (workgroupUniformLoad(&slot_active) == 0u) {
        return;
    }
    let e = workgroupUniformLoad(&expert);
    let local = e - p.first_expert;
    let i0 = wid.x * 4u;
    var acc: array<f32, 8>;
    for (var k = lid.x; k < p.hidden; k += 64u) {
        let xv = x[t * p.hidden + k];
        for (var r = 0u; r < 4u; r++) {
            if (i0 + r < p.inter) {
                let row = local * 2u * p.inter + i0 + r;
                acc[r] += w_at(row, k, p.hidden) * xv;
                acc[4u + r] += w_at(row + p.inter, k, p.hidden) * xv;
            }
        }
    }
    for (var i = 0u; i < 8u; i++) {
        red[lid.x * 8u + i] = acc[i];
    }
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (lid.x < stride) {
            for (var i = 0u; i < 8u; i++) {
                red[lid.x * 8u + i] += red[(lid.x + stride) * 8u + i];
            }
        }
        workgroupBarrier();
    }
    if (lid.x < 4u && i0 + lid.x < p.inter) {
        let i = i0 + lid.x;
        var g = red[lid.x];
        var u = red[4u + lid.x];
        if (p.has_bias != 0u) {
            g += bias[e * 2u * p.inter + i];
            u += bias[e * 2u * p.inter + p.inter + i];
        }
        act[(t * p.max_experts + slot) * p.inter + i] = expert_activation(g, u);
    }
}
