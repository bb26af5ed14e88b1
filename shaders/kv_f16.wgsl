// KV cache values in f16: a pair of neighbouring values per u32 word (pack2x16float needs no shader-f16).
alias KvPair = u32;

fn kv_load(pair: KvPair) -> vec2<f32> {
    return unpack2x16float(pair);
}

fn kv_store(values: vec2<f32>) -> KvPair {
    return pack2x16float(values);
}
