// Appends the step's K and V rows, in the cache's format, to a layer's cache: position `pos` of sequence `seq` lives
// at row `kv_row(seq, pos, ...)` (kv_pages.wgsl, built after this file: a ring for sliding layers, pages for
// full ones).
struct Params {
    rows: u32,
    kv_dim: u32,
    capacity: u32,
    pages_per_seq: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> positions: array<u32>;
@group(0) @binding(4) var<storage, read> seqs: array<u32>;
// Pairs of neighbouring values (kv_f16.wgsl or kv_f32.wgsl); kv_dim is even, so a pair never straddles rows.
@group(0) @binding(5) var<storage, read_write> k_cache: array<KvPair>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<KvPair>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let pairs = p.rows * p.kv_dim / 2u;
    for (var i = gid.x; i < pairs; i += nwg.x * 64u) {
        let src = 2u * i;
        let r = src / p.kv_dim;
        let dst = kv_row(seqs[r], positions[r], p.capacity, p.pages_per_seq) * p.kv_dim + src % p.kv_dim;
        k_cache[dst / 2u] = kv_store(vec2<f32>(k[src], k[src + 1u]));
        v_cache[dst / 2u] = kv_store(vec2<f32>(v[src], v[src + 1u]));
    }
}
