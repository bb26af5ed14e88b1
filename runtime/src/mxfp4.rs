//! MXFP4 (OCP microscaling FP4), as GPT-OSS ships its expert weights: blocks of 32 FP4 E2M1 values sharing
//! one E8M0 scale. Decoded to f32 at load.

/// The 16 FP4 E2M1 values: sign bit, 2 exponent bits, 1 mantissa bit.
const E2M1: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// `blocks`: 16 bytes per block of 32 values, element 2k in the low nibble of byte k and 2k+1 in the high.
/// `scales`: one byte per block, the power of two 2^(s - 127).
pub fn decode(blocks: &[u8], scales: &[u8]) -> Vec<f32> {
    debug_assert_eq!(blocks.len(), scales.len() * 16);
    let mut out = Vec::with_capacity(blocks.len() * 2);
    for (block, &scale) in blocks.chunks_exact(16).zip(scales) {
        let s = (scale as f32 - 127.0).exp2();
        for &byte in block {
            out.push(E2M1[(byte & 0x0f) as usize] * s);
            out.push(E2M1[(byte >> 4) as usize] * s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_nibbles_low_first_and_scales() {
        let mut block = [0u8; 16];
        block[0] = 0x72; // low nibble 2 -> 1.0, high nibble 7 -> 6.0
        block[1] = 0x9f; // low f -> -6.0, high 9 -> -0.5
        let out = super::decode(&block, &[128]); // scale 2^1
        assert_eq!(&out[..4], &[2.0, 12.0, -12.0, -1.0]);
        assert!(out[4..].iter().all(|&v| v == 0.0));
    }
}
