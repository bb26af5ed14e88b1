//! The 32-value formats (ggml's `dequantize_row_q4_0` ... `q8_0` and `mxfp4`). Nibbles are split: value `j`
//! (j < 16) is the low nibble of byte `j`, value `j + 16` its high nibble.

use super::f16_at;

pub(super) fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

pub(super) fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = (q & 0x0f) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// The 5-bit codes of a Q5 block: low nibbles from `qs`, the fifth bit of value `j` from bit `j` of `qh`.
fn q5_codes(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let high = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut codes = [0u8; 32];
    for (j, &q) in qs.iter().enumerate() {
        codes[j] = (q & 0x0f) | ((((high >> j) & 1) as u8) << 4);
        codes[j + 16] = (q >> 4) | ((((high >> (j + 16)) & 1) as u8) << 4);
    }
    codes
}

pub(super) fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (v, q) in y.iter_mut().zip(q5_codes(&b[2..6], &b[6..22])) {
        *v = (q as i32 - 16) as f32 * d;
    }
}

pub(super) fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (v, q) in y.iter_mut().zip(q5_codes(&b[4..8], &b[8..24])) {
        *v = q as f32 * d + m;
    }
}

pub(super) fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (v, &q) in y.iter_mut().zip(&b[2..34]) {
        *v = q as i8 as f32 * d;
    }
}

/// E2M1 values doubled to integers (ggml's `kvalues_mxfp4`); the scale is halved to match.
const MXFP4_VALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// 2^(e - 128): half the E8M0 scale 2^(e - 127), built as f32 bits (subnormal for e < 2) as ggml does.
pub(super) fn e8m0_half(e: u8) -> f32 {
    if e < 2 {
        f32::from_bits(0x0020_0000 << e)
    } else {
        f32::from_bits(((e as u32) - 1) << 23)
    }
}

pub(super) fn mxfp4(b: &[u8], y: &mut [f32]) {
    let d = e8m0_half(b[0]);
    for (j, &q) in b[1..17].iter().enumerate() {
        y[j] = MXFP4_VALUES[(q & 0x0f) as usize] as f32 * d;
        y[j + 16] = MXFP4_VALUES[(q >> 4) as usize] as f32 * d;
    }
}
