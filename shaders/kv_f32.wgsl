// KV cache values in f32, a pair of neighbouring values per element (the same indexing as kv_f16.wgsl).
alias KvPair = vec2<f32>;

fn kv_load(pair: KvPair) -> vec2<f32> {
    return pair;
}

fn kv_store(values: vec2<f32>) -> KvPair {
    return values;
}
