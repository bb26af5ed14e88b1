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
// Words of KV_PER_WORD neighbouring values (kv_f16.wgsl, kv_f32.wgsl or kv_fp8.wgsl); kv_dim is a multiple
// of KV_PER_WORD, so a word never straddles rows.
@group(0) @binding(5) var<storage, read_write> k_cache: array<KvWord>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<KvWord>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let words = p.rows * p.kv_dim / KV_PER_WORD;
    for (var i = gid.x; i < words; i += nwg.x * 64u) {
        let src = KV_PER_WORD * i;
        let r = src / p.kv_dim;
        let dst = kv_row(seqs[r], positions[r], p.capacity, p.pages_per_seq) * p.kv_dim + src % p.kv_dim;
        var key = vec4<f32>(0.0);
        var value = vec4<f32>(0.0);
        for (var c = 0u; c < KV_PER_WORD; c++) {
            key[c] = k[src + c];
            value[c] = v[src + c];
        }
        k_cache[dst / KV_PER_WORD] = kv_pack(key);
        v_cache[dst / KV_PER_WORD] = kv_pack(value);
    }
}
