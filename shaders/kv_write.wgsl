// Appends the step's K and V rows to a layer's cache: position `pos` of sequence `seq` lives at row
// `kv_row(seq, pos, ...)` (kv_pages.wgsl, built after this file: a ring for sliding layers, pages for full ones).
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
@group(0) @binding(5) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = p.rows * p.kv_dim;
    for (var i = gid.x; i < n; i += nwg.x * 64u) {
        let r = i / p.kv_dim;
        let dst = kv_row(seqs[r], positions[r], p.capacity, p.pages_per_seq) * p.kv_dim + i % p.kv_dim;
        k_cache[dst] = k[i];
        v_cache[dst] = v[i];
    }
}
