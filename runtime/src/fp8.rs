//! FP8 E4M3 weights with 128x128 block scales, the layout of Hugging Face FP8 checkpoints (Qwen3-FP8,
//! DeepSeek-V3): `weight` as F8_E4M3 and `weight_scale_inv` as f32 [ceil(rows/128), ceil(cols/128)], with
//! W[r, c] = e4m3(q[r, c]) * scale_inv[r / 128, c / 128].
//!
//! E4M3 here is OCP's "e4m3fn": sign, 4 exponent bits (bias 7), 3 mantissa bits, no infinities, 0x7f/0xff
//! NaN, largest finite 448. Codes 0..=0x7e increase with magnitude, so rounding works on the code itself.

/// Rows and columns of one scale block.
pub const BLOCK: usize = 128;
/// Largest finite E4M3 magnitude.
pub const MAX: f32 = 448.0;

pub fn to_f32(code: u8) -> f32 {
    let mag = code & 0x7f;
    let v = if mag == 0x7f {
        f32::NAN
    } else if mag < 8 {
        // Subnormal: m * 2^-9.
        mag as f32 / 512.0
    } else {
        // Exponent and mantissa move into f32's fields; the bias changes from 7 to 127.
        f32::from_bits(((mag as u32) << 20) + (120 << 23))
    };
    if code & 0x80 != 0 {
        -v
    } else {
        v
    }
}

/// The nearest E4M3 code, ties to even, saturating at ±448 (as torch's `.to(float8_e4m3fn)` after a clamp).
pub fn from_f32(v: f32) -> u8 {
    if v.is_nan() {
        return 0x7f;
    }
    let sign = if v.is_sign_negative() { 0x80 } else { 0 };
    let a = v.abs();
    let code = if a < 1.0 / 64.0 {
        // Below the smallest normal the step is 2^-9; 8 rounds up into the first normal code.
        (a * 512.0).round_ties_even() as u32
    } else {
        // Round f32's 23-bit mantissa to 3 bits, ties to even; a carry moves into the exponent.
        let bits = a.to_bits();
        let rounded = bits + 0x7_ffff + ((bits >> 20) & 1);
        (rounded >> 20).saturating_sub(120 << 3)
    };
    code.min(0x7e) as u8 | sign
}

/// Scale blocks of a [groups, rows, cols] tensor: the grid restarts at every group, so stacked expert
/// matrices keep the blocks each expert's own checkpoint tensor has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockGrid {
    pub groups: usize,
    pub rows: usize,
    pub cols: usize,
}

impl BlockGrid {
    /// The grid of a tensor of `shape`: the last axis is columns, the one before rows, the rest groups.
    pub fn of(shape: &[usize]) -> BlockGrid {
        let n = shape.len();
        let cols = shape.last().copied().unwrap_or(1);
        let rows = if n >= 2 { shape[n - 2] } else { 1 };
        BlockGrid {
            groups: shape[..n.saturating_sub(2)].iter().product(),
            rows,
            cols,
        }
    }

    pub fn row_blocks(&self) -> usize {
        self.rows.div_ceil(BLOCK)
    }

    pub fn col_blocks(&self) -> usize {
        self.cols.div_ceil(BLOCK)
    }

    pub fn n_scales(&self) -> usize {
        self.groups * self.row_blocks() * self.col_blocks()
    }

    /// Index of the scale of element (row, col), `row` counted over all groups.
    pub fn scale_index(&self, row: usize, col: usize) -> usize {
        let (g, r) = (row / self.rows, row % self.rows);
        (g * self.row_blocks() + r / BLOCK) * self.col_blocks() + col / BLOCK
    }
}

/// E4M3 codes and one scale per block, scale = amax / 448 (1 for an all-zero block), so every block's
/// largest value is ±448: requantizing a checkpoint quantized the same way gives back its bytes.
pub fn quantize(data: &[f32], grid: BlockGrid) -> (Vec<u8>, Vec<f32>) {
    let mut amax = vec![0.0f32; grid.n_scales()];
    for (i, &v) in data.iter().enumerate() {
        let s = grid.scale_index(i / grid.cols, i % grid.cols);
        amax[s] = amax[s].max(v.abs());
    }
    let scales: Vec<f32> = amax.iter().map(|&a| if a > 0.0 { a / MAX } else { 1.0 }).collect();
    let codes = data
        .iter()
        .enumerate()
        .map(|(i, &v)| from_f32(v / scales[grid.scale_index(i / grid.cols, i % grid.cols)]))
        .collect();
    (codes, scales)
}

/// The f32 values the codes and scales stand for.
pub fn dequantize(codes: &[u8], scales: &[f32], grid: BlockGrid) -> Vec<f32> {
    codes
        .iter()
        .enumerate()
        .map(|(i, &q)| to_f32(q) * scales[grid.scale_index(i / grid.cols, i % grid.cols)])
        .collect()
}

/// What storing `data` as FP8 keeps: quantize, then dequantize (the CPU reference's FP8 weights).
pub fn round_trip(data: &[f32], grid: BlockGrid) -> Vec<f32> {
    let (codes, scales) = quantize(data, grid);
    dequantize(&codes, &scales, grid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for code in 0..=255u8 {
            if code & 0x7f == 0x7f {
                assert!(to_f32(code).is_nan());
                continue;
            }
            let v = to_f32(code);
            // -0.0 and +0.0 are both zero; every other code decodes to a value that encodes back to it.
            assert_eq!(from_f32(v), code, "code {code:#04x} -> {v}");
        }
        assert_eq!(to_f32(0x7e), 448.0);
        assert_eq!(to_f32(0x01), 2f32.powi(-9));
        assert_eq!(to_f32(0x08), 2f32.powi(-6));
        assert_eq!(to_f32(0x38), 1.0);
    }

    #[test]
    fn rounding_is_nearest_ties_to_even_and_saturates() {
        // Between 1.0 (0x38) and 1.125 (0x39) the midpoint goes to the even code.
        assert_eq!(from_f32(1.0625), 0x38);
        assert_eq!(from_f32(1.07), 0x39);
        // Between 1.125 (0x39) and 1.25 (0x3a): tie to 0x3a.
        assert_eq!(from_f32(1.1875), 0x3a);
        // Subnormal ties: 1.5 * 2^-9 goes to 2 * 2^-9.
        assert_eq!(from_f32(1.5 / 512.0), 0x02);
        assert_eq!(from_f32(0.4 / 512.0), 0x00);
        assert_eq!(from_f32(1000.0), 0x7e);
        assert_eq!(from_f32(-1000.0), 0xfe);
        assert_eq!(from_f32(464.0), 0x7e);
        assert_eq!(from_f32(-0.75), 0xb4);
    }

    #[test]
    fn blocks_restart_at_each_group() {
        let grid = BlockGrid::of(&[3, 2, 130, 200]);
        assert_eq!((grid.groups, grid.rows, grid.cols), (6, 130, 200));
        assert_eq!(grid.n_scales(), 6 * 2 * 2);
        assert_eq!(grid.scale_index(0, 0), 0);
        assert_eq!(grid.scale_index(0, 128), 1);
        assert_eq!(grid.scale_index(128, 0), 2);
        // Row 130 is row 0 of the second group.
        assert_eq!(grid.scale_index(130, 199), 5);
    }

    #[test]
    fn quantized_blocks_peak_at_448_and_stay_close() {
        let grid = BlockGrid::of(&[150, 260]);
        let data: Vec<f32> = (0..150 * 260)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
            .collect();
        let (codes, scales) = quantize(&data, grid);
        let back = dequantize(&codes, &scales, grid);
        for (s, _) in scales.iter().enumerate() {
            let peak = codes
                .iter()
                .enumerate()
                .filter(|(i, _)| grid.scale_index(i / grid.cols, i % grid.cols) == s)
                .map(|(_, &q)| to_f32(q).abs())
                .fold(0.0f32, f32::max);
            assert_eq!(peak, MAX, "block {s}");
        }
        for (i, (a, b)) in data.iter().zip(&back).enumerate() {
            // 3 mantissa bits: relative error at most 2^-4, or a subnormal step of the block's scale.
            let s = scales[grid.scale_index(i / grid.cols, i % grid.cols)];
            assert!((a - b).abs() <= a.abs() / 16.0 + s / 1024.0, "index {i}: {a} vs {b}");
        }
        // Requantizing what was dequantized gives the same codes.
        assert_eq!(quantize(&back, grid).0, codes);
    }
}
