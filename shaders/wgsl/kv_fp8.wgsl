// KV cache values as FP8 E4M3 codes with scale 1 (e4m3.wgsl): four neighbouring values per u32 word, low byte
// first (the interface of kv_f16.wgsl). Writing whole words needs kv_dim to be a multiple of 4.
alias KvWord = u32;
const KV_PER_WORD: u32 = 4u;

fn kv_unpack_pair(word: KvWord, pair: u32) -> vec2<f32> {
    let codes = word >> (16u * pair);
    return vec2<f32>(e4m3(codes & 0xffu), e4m3((codes >> 8u) & 0xffu));
}

fn kv_pack(values: vec4<f32>) -> KvWord {
    return e4m3_code(values.x) | (e4m3_code(values.y) << 8u) | (e4m3_code(values.z) << 16u)
        | (e4m3_code(values.w) << 24u);
}
