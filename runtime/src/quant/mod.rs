//! ggml's block formats, as GGUF files store weights (the layout of `ggml-common.h`): each row is a run of
//! whole blocks along the reduction axis, each block a few scales beside packed codes. `dequantize` is the
//! plain reference the backends' kernels are tested against, decoding exactly as ggml's `dequantize_row_*`
//! (bit for bit, checked against `gguf.quants.dequantize`); `quantize` writes the formats Volt produces
//! from float checkpoints with llama.cpp's rounding.

mod kquants;
mod legacy;
mod quantize;

pub use quantize::quantize;

use crate::bail;
use crate::error::Result;

/// How a tensor's elements are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    F32,
    F16,
    Bf16,
    /// 32 values: f16 scale, 4-bit codes (q - 8).
    Q4_0,
    /// 32 values: f16 scale and minimum, 4-bit codes.
    Q4_1,
    /// 32 values: f16 scale, 5-bit codes (q - 16).
    Q5_0,
    /// 32 values: f16 scale and minimum, 5-bit codes.
    Q5_1,
    /// 32 values: f16 scale, 8-bit codes.
    Q8_0,
    /// 256 values: f16 scale and minimum, 8 sub-blocks of 32 with 6-bit scales and minimums, 4-bit codes.
    Q4K,
    /// As Q4_K with 5-bit codes.
    Q5K,
    /// 256 values: 16 sub-blocks of 16 with 8-bit scales, 6-bit codes (q - 32), one f16 scale (last).
    Q6K,
    /// 32 values: an E8M0 power of two, 4-bit E2M1 codes (OCP microscaling FP4, ggml's nibble order).
    Mxfp4,
}

impl BlockFormat {
    pub const ALL: [BlockFormat; 12] = [
        BlockFormat::F32,
        BlockFormat::F16,
        BlockFormat::Bf16,
        BlockFormat::Q4_0,
        BlockFormat::Q4_1,
        BlockFormat::Q5_0,
        BlockFormat::Q5_1,
        BlockFormat::Q8_0,
        BlockFormat::Q4K,
        BlockFormat::Q5K,
        BlockFormat::Q6K,
        BlockFormat::Mxfp4,
    ];

    /// The format of a ggml type id (`ggml_type` in GGUF tensor infos).
    pub fn from_ggml_type(id: u32) -> Result<BlockFormat> {
        match BlockFormat::ALL.into_iter().find(|f| f.ggml_type() == id) {
            Some(f) => Ok(f),
            None => bail!("ggml type {id} is not a format Volt reads (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, MXFP4)"),
        }
    }

    pub fn ggml_type(self) -> u32 {
        match self {
            BlockFormat::F32 => 0,
            BlockFormat::F16 => 1,
            BlockFormat::Q4_0 => 2,
            BlockFormat::Q4_1 => 3,
            BlockFormat::Q5_0 => 6,
            BlockFormat::Q5_1 => 7,
            BlockFormat::Q8_0 => 8,
            BlockFormat::Q4K => 12,
            BlockFormat::Q5K => 13,
            BlockFormat::Q6K => 14,
            BlockFormat::Bf16 => 30,
            BlockFormat::Mxfp4 => 39,
        }
    }

    /// llama.cpp's name ("q4_k"), the one `--dtype` takes.
    pub fn name(self) -> &'static str {
        match self {
            BlockFormat::F32 => "f32",
            BlockFormat::F16 => "f16",
            BlockFormat::Bf16 => "bf16",
            BlockFormat::Q4_0 => "q4_0",
            BlockFormat::Q4_1 => "q4_1",
            BlockFormat::Q5_0 => "q5_0",
            BlockFormat::Q5_1 => "q5_1",
            BlockFormat::Q8_0 => "q8_0",
            BlockFormat::Q4K => "q4_k",
            BlockFormat::Q5K => "q5_k",
            BlockFormat::Q6K => "q6_k",
            BlockFormat::Mxfp4 => "mxfp4",
        }
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            BlockFormat::F32 | BlockFormat::F16 | BlockFormat::Bf16 => 1,
            BlockFormat::Q4K | BlockFormat::Q5K | BlockFormat::Q6K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::F32 => 4,
            BlockFormat::F16 | BlockFormat::Bf16 => 2,
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q5_0 => 22,
            BlockFormat::Q5_1 => 24,
            BlockFormat::Q8_0 => 34,
            BlockFormat::Q4K => 144,
            BlockFormat::Q5K => 176,
            BlockFormat::Q6K => 210,
            BlockFormat::Mxfp4 => 17,
        }
    }

    /// Bytes of `n` values (a whole number of blocks), or an error naming the format.
    pub fn bytes_of(self, n: usize) -> Result<usize> {
        if n % self.block_len() != 0 {
            bail!(
                "{n} values do not fill whole {} blocks of {}",
                self.name(),
                self.block_len()
            );
        }
        Ok(n / self.block_len() * self.block_bytes())
    }

    /// Bits one stored value takes, scales included (4.5 for Q4_0, 4.25 for MXFP4).
    pub fn bits_per_value(self) -> f64 {
        (8 * self.block_bytes()) as f64 / self.block_len() as f64
    }
}

/// Decodes `bytes` (whole blocks of `format`) into `out`, one value per element, as ggml does.
pub fn dequantize(format: BlockFormat, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    if bytes.len() != format.bytes_of(out.len())? {
        bail!(
            "{} bytes of {} do not hold {} values",
            bytes.len(),
            format.name(),
            out.len()
        );
    }
    let n = format.block_len();
    let values = bytes.chunks_exact(format.block_bytes()).zip(out.iter_mut());
    match format {
        BlockFormat::F32 => values.for_each(|(b, y)| *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        BlockFormat::F16 => values.for_each(|(b, y)| *y = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        BlockFormat::Bf16 => values.for_each(|(b, y)| *y = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        _ => {
            let decode: fn(&[u8], &mut [f32]) = match format {
                BlockFormat::Q4_0 => legacy::q4_0,
                BlockFormat::Q4_1 => legacy::q4_1,
                BlockFormat::Q5_0 => legacy::q5_0,
                BlockFormat::Q5_1 => legacy::q5_1,
                BlockFormat::Q8_0 => legacy::q8_0,
                BlockFormat::Mxfp4 => legacy::mxfp4,
                BlockFormat::Q4K => kquants::q4_k,
                BlockFormat::Q5K => kquants::q5_k,
                BlockFormat::Q6K => kquants::q6_k,
                BlockFormat::F32 | BlockFormat::F16 | BlockFormat::Bf16 => unreachable!("decoded above"),
            };
            let blocks = bytes.chunks_exact(format.block_bytes()).zip(out.chunks_exact_mut(n));
            blocks.for_each(|(b, y)| decode(b, y));
        }
    }
    Ok(())
}

/// An f16 stored little-endian at `b[at..at + 2]`, as f32.
fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks written by `tools/make_quant_fixtures.py` (random codes and scales, or gguf-py's quantizer on
    /// random values) and the values `gguf.quants.dequantize` decodes them to.
    fn fixture(format: BlockFormat) -> (Vec<u8>, Vec<f32>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/quant_blocks");
        let blocks = std::fs::read(dir.join(format!("{}.blocks", format.name()))).unwrap();
        let values = std::fs::read(dir.join(format!("{}.f32", format.name()))).unwrap();
        let values = values
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (blocks, values)
    }

    #[test]
    fn every_format_decodes_bit_for_bit_as_gguf_py() {
        for format in BlockFormat::ALL {
            let (blocks, expected) = fixture(format);
            let mut got = vec![0.0; expected.len()];
            dequantize(format, &blocks, &mut got).unwrap();
            for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
                assert!(
                    e.to_bits() == g.to_bits() || (e.is_nan() && g.is_nan()),
                    "{}: index {i} (block {}): expected {e}, got {g}",
                    format.name(),
                    i / format.block_len()
                );
            }
            assert!(
                expected.len() >= 4 * format.block_len(),
                "{}: too few values",
                format.name()
            );
        }
    }

    #[test]
    fn sizes_follow_ggml() {
        assert_eq!(BlockFormat::Q4K.bytes_of(512).unwrap(), 288);
        assert!(BlockFormat::Q4_0.bytes_of(33).is_err());
        assert_eq!(BlockFormat::Mxfp4.bits_per_value(), 4.25);
        assert_eq!(BlockFormat::from_ggml_type(14).unwrap(), BlockFormat::Q6K);
        assert!(BlockFormat::from_ggml_type(10).is_err());
    }
}
