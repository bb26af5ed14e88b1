// Weight access for FP8 E4M3 matrices with one f32 scale per 128x128 block (Hugging Face FP8 layout); the
// codes decode with e4m3.wgsl, built beside this file.
// One buffer holds a header, the scales and the codes, so FP8 needs no extra binding:
//   w[0] rows per group (the block grid restarts at each group: stacked experts keep their own blocks)
//   w[1] column blocks, w[2] row blocks per group, w[3] word offset of the codes
//   w[4..] scales [groups][row blocks][column blocks] as f32 bits; then the codes, four per word, low byte first.
@group(0) @binding(1) var<storage, read> w: array<u32>;

fn w_at(row: u32, col: u32, ncols: u32) -> f32 {
    let rows = w[0];
    let g = row / rows;
    let r = row - g * rows;
    let scale = bitcast<f32>(w[4u + (g * w[2] + r / 128u) * w[1] + col / 128u]);
    let i = row * ncols + col;
    let code = (w[w[3] + (i >> 2u)] >> ((i & 3u) * 8u)) & 0xffu;
    return e4m3(code) * scale;
}
