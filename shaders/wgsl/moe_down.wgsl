// Second half of the routed experts: out[t, o] = sum over the token's chosen experts of
// weight * (down_e[o] . act[t, slot] + b_e[o]). down is stacked [E * H, I]. One workgroup per
// (4 output rows, token). Experts too large for one binding come in parts: this dispatch's W holds experts
// first_expert.., adds only their terms, and adds to `out` unless it is the first part.
struct Params {
    hidden: u32,
    inter: u32,
    max_experts: u32,
    has_bias: u32,
    first_expert: u32,
    part_experts: u32,
    accumulate: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> act: array<f32>;
@group(0) @binding(3) var<storage, read> chosen: array<u32>;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(5) var<storage, read> counts: array<u32>;
// [E, H]
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 256>;
var<workgroup> token_count: u32;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = wid.y;
    let o0 = wid.x * 4u;
    if (lid.x == 0u) {
        token_count = counts[t];
    }
    let count = workgroupUniformLoad(&token_count);
    var total: array<f32, 4>;
    for (var slot = 0u; slot < count; slot++) {
        let e = chosen[t * p.max_experts + slot];
        let local = e - p.first_expert;
        let in_part = local < p.part_experts;
        let a = (t * p.max_experts + slot) * p.inter;
        var acc: array<f32, 4>;
        if (in_part) {
            for (var k = lid.x; k < p.inter; k += 64u) {
                let av = act[a + k];
                for (var r = 0u; r < 4u; r++) {
                    if (o0 + r < p.hidden) {
                        acc[r] += w_at(local * p.hidden + o0 + r, k, p.inter) * av;
                    }
                }
            }
        }
        for (var r = 0u; r < 4u; r++) {
            red[lid.x * 4u + r] = acc[r];
        }
        workgroupBarrier();
        for (var stride = 32u; stride > 0u; stride >>= 1u) {
            if (lid.x < stride) {
                for (var r = 0u; r < 4u; r++) {
                    red[lid.x * 4u + r] += red[(lid.x + stride) * 4u + r];
                }
            }
            workgroupBarrier();
        }
        if (in_part && lid.x < 4u && o0 + lid.x < p.hidden) {
            var v = red[lid.x];
            if (p.has_bias != 0u) {
                v += bias[e * p.hidden + o0 + lid.x];
            }
            total[lid.x] += weights[t * p.max_experts + slot] * v;
        }
        workgroupBarrier();
    }
    if (lid.x < 4u && o0 + lid.x < p.hidden) {
        let o = t * p.hidden + o0 + lid.x;
        if (p.accumulate != 0u) {
            out[o] += total[lid.x];
        } else {
            out[o] = total[lid.x];
        }
    }
}
