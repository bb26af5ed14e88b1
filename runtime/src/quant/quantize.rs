//! Writing block formats from f32 values, with the rounding of ggml's reference quantizers
//! (`quantize_row_*_ref` in `ggml-quants.c`, which gguf-py's quantizers reproduce bit for bit).

use super::legacy::e8m0_half;
use super::BlockFormat;
use crate::bail;
use crate::error::Result;

/// `values` (whole blocks) in `format`.
pub fn quantize(format: BlockFormat, values: &[f32]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(format.bytes_of(values.len())?);
    let blocks = values.chunks_exact(format.block_len());
    match format {
        BlockFormat::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        BlockFormat::F16 => values
            .iter()
            .for_each(|&v| out.extend(half::f16::from_f32(v).to_le_bytes())),
        BlockFormat::Bf16 => values
            .iter()
            .for_each(|&v| out.extend(half::bf16::from_f32(v).to_le_bytes())),
        BlockFormat::Q8_0 => blocks.for_each(|x| q8_0(x, &mut out)),
        BlockFormat::Q4_0 => blocks.for_each(|x| symmetric(x, 4, &mut out)),
        BlockFormat::Q5_0 => blocks.for_each(|x| symmetric(x, 5, &mut out)),
        BlockFormat::Q4_1 => blocks.for_each(|x| affine(x, 4, &mut out)),
        BlockFormat::Q5_1 => blocks.for_each(|x| affine(x, 5, &mut out)),
        BlockFormat::Mxfp4 => blocks.for_each(|x| mxfp4(x, &mut out)),
        BlockFormat::Q4K | BlockFormat::Q5K | BlockFormat::Q6K => {
            bail!("quantizing to {} is not implemented yet", format.name())
        }
    }
    Ok(out)
}

fn push_f16(out: &mut Vec<u8>, v: f32) {
    out.extend(half::f16::from_f32(v).to_le_bytes());
}

/// Codes of 32 values packed as ggml does: low nibbles of bytes 0..16 hold values 0..16, high nibbles
/// values 16..32; for 5-bit codes the fifth bits follow as a little-endian u32 first.
fn push_codes(codes: &[u8; 32], bits: u32, out: &mut Vec<u8>) {
    if bits == 5 {
        let high = codes
            .iter()
            .enumerate()
            .fold(0u32, |h, (j, &q)| h | (((q >> 4) as u32 & 1) << j));
        out.extend(high.to_le_bytes());
    }
    out.extend((0..16).map(|j| (codes[j] & 0x0f) | ((codes[j + 16] & 0x0f) << 4)));
}

/// `d = amax / 127`, codes `round(x / d)` (half away from zero), multiplying by the f32 reciprocal.
fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_f16(out, d);
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// Q4_0 / Q5_0: the value of largest magnitude (the first such) maps to code 0, so `d = max / -2^(bits-1)`;
/// codes `trunc(x / d + 2^(bits-1) + 0.5)`, at most 2^bits - 1.
fn symmetric(x: &[f32], bits: u32, out: &mut Vec<u8>) {
    let half_range = (1u32 << (bits - 1)) as f32;
    let max = x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -half_range;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let top = ((1u32 << bits) - 1) as f32;
    let mut codes = [0u8; 32];
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (v * id + (half_range + 0.5)).trunc().min(top) as u8;
    }
    push_f16(out, d);
    push_codes(&codes, bits, out);
}

/// Q4_1 / Q5_1: `d = (max - min) / (2^bits - 1)`, codes `trunc((x - min) / d + 0.5)`, with the minimum.
fn affine(x: &[f32], bits: u32, out: &mut Vec<u8>) {
    let top = ((1u32 << bits) - 1) as f32;
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / top;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut codes = [0u8; 32];
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = ((v - min) * id + 0.5).trunc().min(top) as u8;
    }
    push_f16(out, d);
    push_f16(out, min);
    push_codes(&codes, bits, out);
}

/// MXFP4: the shared exponent `floor(log2(amax)) - 2` (bias 127), then each value's nearest E2M1 code (the
/// lowest index on ties).
fn mxfp4(x: &[f32], out: &mut Vec<u8>) {
    const VALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let e = if amax > 0.0 {
        (amax.log2().floor() - 2.0 + 127.0) as u8
    } else {
        0
    };
    let d = e8m0_half(e);
    let mut codes = [0u8; 32];
    for (c, &v) in codes.iter_mut().zip(x) {
        let err = |k: usize| (d * VALUES[k] as f32 - v).abs();
        *c = (0..16).fold(0, |best, k| if err(k) < err(best) { k } else { best }) as u8;
    }
    out.push(e);
    push_codes(&codes, 4, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize;

    /// Random values (`<format>.values`) and the blocks gguf-py's quantizer wrote for them (`<format>.quantized`),
    /// from `tools/make_quant_fixtures.py`.
    fn fixture(format: BlockFormat) -> (Vec<f32>, Vec<u8>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/quant_blocks");
        let values = std::fs::read(dir.join(format!("{}.values", format.name()))).unwrap();
        let values = values
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (
            values,
            std::fs::read(dir.join(format!("{}.quantized", format.name()))).unwrap(),
        )
    }

    #[test]
    fn quantizers_write_the_bytes_gguf_py_writes() {
        let formats = [
            BlockFormat::Q8_0,
            BlockFormat::Q4_0,
            BlockFormat::Q4_1,
            BlockFormat::Q5_0,
            BlockFormat::Q5_1,
            BlockFormat::Mxfp4,
            BlockFormat::Bf16,
            BlockFormat::F16,
        ];
        for format in formats {
            let (values, expected) = fixture(format);
            let got = quantize(format, &values).unwrap();
            let per_block = format.block_bytes();
            if let Some(i) = (0..expected.len()).find(|&i| expected[i] != got[i]) {
                panic!(
                    "{}: byte {i} (block {}) expected {}, got {}",
                    format.name(),
                    i / per_block,
                    expected[i],
                    got[i]
                );
            }
            assert_eq!(got.len(), expected.len(), "{}", format.name());
        }
    }

    #[test]
    fn a_round_trip_stays_within_half_a_step() {
        let values: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let bytes = quantize(BlockFormat::Q8_0, &values).unwrap();
        let mut back = vec![0.0; values.len()];
        dequantize(BlockFormat::Q8_0, &bytes, &mut back).unwrap();
        for (block, (x, y)) in values.chunks(32).zip(back.chunks(32)).enumerate() {
            let step = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in x.iter().zip(y) {
                assert!(
                    (a - b).abs() <= 0.51 * step + 1e-3 * step,
                    "block {block}: {a} came back as {b}"
                );
            }
        }
        assert!(quantize(BlockFormat::Q4K, &values).is_err());
    }
}
