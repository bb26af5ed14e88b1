// KV cache values in f32, two neighbouring values per word (the interface of kv_f16.wgsl).
alias KvWord = vec2<f32>;
const KV_PER_WORD: u32 = 2u;

fn kv_unpack_pair(word: KvWord, pair: u32) -> vec2<f32> {
    return word;
}

fn kv_pack(values: vec4<f32>) -> KvWord {
    return values.xy;
}
