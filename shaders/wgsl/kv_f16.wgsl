// KV cache values in f16: two neighbouring values per u32 word (pack2x16float needs no shader-f16).
// Every KV file gives: the word type, the values per word, a pair of values out of a word, and the packing of
// the first KV_PER_WORD values of a vec4.
alias KvWord = u32;
const KV_PER_WORD: u32 = 2u;

fn kv_unpack_pair(word: KvWord, pair: u32) -> vec2<f32> {
    return unpack2x16float(word);
}

fn kv_pack(values: vec4<f32>) -> KvWord {
    return pack2x16float(values.xy);
}
