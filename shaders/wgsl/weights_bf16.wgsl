// Weight access for bf16 matrices stored as packed pairs in u32: a bf16 is the top half of an f32.
@group(0) @binding(1) var<storage, read> w: array<u32>;

fn w_at(row: u32, col: u32, ncols: u32) -> f32 {
    let i = row * ncols + col;
    let word = w[i >> 1u];
    return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u));
}
