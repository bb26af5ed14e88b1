// Groups the routed assignments by expert for the prefill GEMMs, on the GPU: counts each expert's
// assignments, takes prefix offsets, then scatters assignment ids (t * max_experts + slot, the row of the
// token's slot in the activation buffers) into per-expert lists, and lays out the 64-row tiles the GEMMs
// walk. One workgroup. The order within a list varies from run to run; results do not (rows are
// independent). groups holds, in order:
//   [n_experts + 1] start of each expert's list (the last is the end of the lists)
//   [tokens * max_experts] the lists
//   [max_tiles][2] expert of tile z (NO_EXPERT past the last tile) and its first list position
struct Params {
    tokens: u32,
    max_experts: u32,
    n_experts: u32,
    max_tiles: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> chosen: array<u32>;
@group(0) @binding(2) var<storage, read> counts: array<u32>;
@group(0) @binding(3) var<storage, read_write> groups: array<u32>;

const NO_EXPERT: u32 = 0xffffffffu;
// Most experts (runtime/src/backend/mod.rs: MAX_EXPERTS).
const MAX_EXPERTS: u32 = 1024u;
const ROWS_PER_TILE: u32 = 64u;

// Assignments per expert, then the next free position of each list.
var<workgroup> fill: array<atomic<u32>, MAX_EXPERTS>;

fn routed(a: u32) -> bool {
    return a % p.max_experts < counts[a / p.max_experts];
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let assignments = p.tokens * p.max_experts;
    for (var e = lid; e < p.n_experts; e += 256u) {
        atomicStore(&fill[e], 0u);
    }
    workgroupBarrier();
    for (var a = lid; a < assignments; a += 256u) {
        if (routed(a)) {
            atomicAdd(&fill[chosen[a]], 1u);
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        let tiles = p.n_experts + 1u + assignments;
        var start = 0u;
        var tile = 0u;
        for (var e = 0u; e < p.n_experts; e++) {
            let n = atomicLoad(&fill[e]);
            groups[e] = start;
            for (var r = 0u; r < n; r += ROWS_PER_TILE) {
                groups[tiles + 2u * tile] = e;
                groups[tiles + 2u * tile + 1u] = start + r;
                tile++;
            }
            atomicStore(&fill[e], start);
            start += n;
        }
        groups[p.n_experts] = start;
        for (; tile < p.max_tiles; tile++) {
            groups[tiles + 2u * tile] = NO_EXPERT;
        }
    }
    workgroupBarrier();
    let lists = p.n_experts + 1u;
    for (var a = lid; a < assignments; a += 256u) {
        if (routed(a)) {
            groups[lists + atomicAdd(&fill[chosen[a]], 1u)] = a;
        }
    }
}
