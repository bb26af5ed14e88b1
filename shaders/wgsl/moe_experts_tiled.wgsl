// The routed experts for steps of many tokens (prefill): a tiled GEMM per expert over the rows moe_group.wgsl
// gathered for it, so each expert weight loaded serves up to 64 tokens. One workgroup per (64 output
// columns, tile of one expert's list); the grid covers the most tiles any routing can need, and tiles past
// the last (or of experts in other weight parts) exit at once. Used twice per layer:
//   gate/up (gated = 1): rows are the tokens x of the list's assignments; columns interleave expert rows
//     gate i, up i so a thread holds both, and out[a, i] = act(gate + bg, up + bu) (moe_activation.wgsl);
//   down (gated = 0): rows are the assignments' activations; out[a, o] = down_e[o] . act[a] + b_e[o].
// Output rows are assignments (t * max_experts + slot). Stacked experts too large for one binding come in
// parts: this dispatch's W holds experts first_expert...
struct Params {
    tokens: u32,
    max_experts: u32,
    n_experts: u32,
    // input columns: hidden for gate/up, the intermediate size for down
    k: u32,
    // weight rows per expert: 2 * intermediate for gate/up, hidden for down
    outputs: u32,
    gated: u32,
    // 0 SwiGLU, 1 GPT-OSS clamped SwiGLU
    activation: u32,
    alpha: f32,
    limit: f32,
    has_bias: u32,
    first_expert: u32,
    part_experts: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// x [T, hidden] for gate/up, the activations [T * max_experts, I] for down
@group(0) @binding(2) var<storage, read> rows_in: array<f32>;
@group(0) @binding(3) var<storage, read> groups: array<u32>;
// [E, outputs]
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const NO_EXPERT: u32 = 0xffffffffu;

var<workgroup> tile_in_part: u32;
// This workgroup's expert (index within the part), its list positions list_first..list_end, its first column.
var<private> local: u32;
var<private> list_first: u32;
var<private> list_end: u32;
var<private> col0: u32;

// List position -> assignment id.
fn assignment(pos: u32) -> u32 {
    return groups[p.n_experts + 1u + pos];
}

// Row of the expert's weights behind tile column c, or p.outputs past the end.
fn weight_row(c: u32) -> u32 {
    if (p.gated == 0u) {
        return min(col0 + c, p.outputs);
    }
    let inter = p.outputs / 2u;
    let i = col0 / 2u + c / 2u;
    if (i >= inter) {
        return p.outputs;
    }
    return select(i, inter + i, c % 2u == 1u);
}

fn tile_a(row: u32, k: u32) -> f32 {
    let pos = list_first + row;
    if (pos < list_end && k < p.k) {
        let a = assignment(pos);
        // gate/up reads the token's hidden state, down the assignment's activation
        let r = select(a, a / p.max_experts, p.gated != 0u);
        return rows_in[r * p.k + k];
    }
    return 0.0;
}

fn tile_b(col: u32, k: u32) -> f32 {
    let row = weight_row(col);
    if (row < p.outputs && k < p.k) {
        return w_at(local * p.outputs + row, k, p.k);
    }
    return 0.0;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tile = p.n_experts + 1u + p.tokens * p.max_experts + 2u * wid.y;
    let e = groups[tile];
    if (lid == 0u) {
        tile_in_part = select(0u, 1u, e != NO_EXPERT && e - p.first_expert < p.part_experts);
    }
    if (workgroupUniformLoad(&tile_in_part) == 0u) {
        return;
    }
    local = e - p.first_expert;
    list_first = groups[tile + 1u];
    list_end = min(list_first + TILE, groups[e + 1u]);
    col0 = wid.x * TILE;
    let acc = gemm_tile(lid, p.k);
    for (var r = 0u; r < 4u; r++) {
        let pos = list_first + (lid / 16u) * 4u + r;
        if (pos >= list_end) {
            continue;
        }
        let a = assignment(pos);
        var v = acc[r];
        var rows: array<u32, 4>;
        for (var c = 0u; c < 4u; c++) {
            rows[c] = weight_row((lid % 16u) * 4u + c);
            if (p.has_bias != 0u && rows[c] < p.outputs) {
                v[c] += bias[e * p.outputs + rows[c]];
            }
        }
        if (p.gated != 0u) {
            // columns (0, 1) and (2, 3) are gate and up of one intermediate row
            let inter = p.outputs / 2u;
            for (var c = 0u; c < 4u; c += 2u) {
                if (rows[c] < p.outputs) {
                    out[a * inter + rows[c]] = expert_activation(v[c], v[c + 1u]);
                }
            }
        } else {
            for (var c = 0u; c < 4u; c++) {
                if (rows[c] < p.outputs) {
                    out[a * p.outputs + rows[c]] = v[c];
                }
            }
        }
    }
}
