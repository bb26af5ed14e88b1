// Last step of the grouped (prefill) MoE path: out[t, o] = sum over the token's chosen experts, in slot
// order, of weight * expert_out[t * max_experts + slot, o] (moe_experts_tiled.wgsl's down rows, bias included).
struct Params {
    tokens: u32,
    hidden: u32,
    max_experts: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> expert_out: array<f32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var n = gid.x; n < p.tokens * p.hidden; n += nwg.x * 64u) {
        let t = n / p.hidden;
        let o = n % p.hidden;
        var total = 0.0;
        for (var slot = 0u; slot < counts[t]; slot++) {
            let a = t * p.max_experts + slot;
            total += weights[a] * expert_out[a * p.hidden + o];
        }
        out[n] = total;
    }
}
