//! The 256-value "K" formats (ggml's `dequantize_row_q4_K`, `q5_K`, `q6_K`), with ggml's order of float
//! operations so the values match bit for bit.

use super::f16_at;

/// Scale and minimum of sub-block `j` (0..8) from the 12 packed bytes of a Q4_K/Q5_K block
/// (`get_scale_min_k4`): 6 bits each, the high bits of sub-blocks 4..8 in the top bits of bytes 0..8.
pub(super) fn scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K (`d`, `dmin`, scales[12], qs[128]) and Q5_K (the same with qh[32] before qs): each 64 values are
/// two sub-blocks, the low then the high nibbles of 32 bytes; Q5_K's fifth bit of sub-block `j` is bit `j`
/// of `qh[l]`.
fn k4(b: &[u8], qh: Option<&[u8]>, qs: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for (c, (y, q)) in y.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        for half in 0..2 {
            let j = 2 * c + half;
            let (sc, m) = scale_min(scales, j);
            let (d1, m1) = (d * sc as f32, dmin * m as f32);
            for l in 0..32 {
                let mut code = (q[l] >> (4 * half)) & 0x0f;
                if let Some(qh) = qh {
                    code |= ((qh[l] >> j) & 1) << 4;
                }
                y[32 * half + l] = d1 * code as f32 - m1;
            }
        }
    }
}

pub(super) fn q4_k(b: &[u8], y: &mut [f32]) {
    k4(b, None, &b[16..144], y);
}

pub(super) fn q5_k(b: &[u8], y: &mut [f32]) {
    k4(b, Some(&b[16..48]), &b[48..176], y);
}

/// Q6_K (ql[128], qh[64], scales i8[16], `d` last): each 128 values take 64 bytes of `ql` (low nibbles,
/// then high) and 32 of `qh` (2 bits per value), with one signed scale per 16 values.
pub(super) fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let (ql, qh) = (&b[64 * n..64 * n + 64], &b[128 + 32 * n..128 + 32 * n + 32]);
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let codes = [
                (ql[l] & 0x0f) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (k, code) in codes.into_iter().enumerate() {
                let scale = sc[is + 2 * k] as i8 as f32;
                y[l + 32 * k] = d * scale * (code as i32 - 32) as f32;
            }
        }
    }
}
