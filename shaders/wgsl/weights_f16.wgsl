// Weight access for f16 matrices stored as packed pairs in u32 (no `shader-f16` needed): element i is the
// low half of word i/2 when i is even, the high half when odd.
@group(0) @binding(1) var<storage, read> w: array<u32>;

fn w_at(row: u32, col: u32, ncols: u32) -> f32 {
    let i = row * ncols + col;
    let pair = unpack2x16float(w[i >> 1u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}
