// FP8 E4M3 ("e4m3fn": bias 7, no infinities, largest finite 448) to and from f32, as runtime/src/fp8.rs.

// Normal codes move their exponent and mantissa into f32's fields (bias 7 -> 127); subnormals are m * 2^-9.
fn e4m3(code: u32) -> f32 {
    let mag = code & 0x7fu;
    var v = bitcast<f32>((mag << 20u) + (120u << 23u));
    if (mag < 8u) {
        v = f32(mag) * 0.001953125;
    }
    return select(v, -v, (code & 0x80u) != 0u);
}

// The nearest code, ties to even, saturating at ±448.
fn e4m3_code(x: f32) -> u32 {
    let a = min(abs(x), 448.0);
    var mag: u32;
    if (a < 0.015625) {
        // Below the smallest normal the step is 2^-9 (WGSL's round() ties to even); 8 is the first normal.
        mag = u32(round(a * 512.0));
    } else {
        // f32's 23-bit mantissa rounded to 3 bits, ties to even; a carry moves into the exponent.
        let bits = bitcast<u32>(a);
        mag = ((bits + 0x7ffffu + ((bits >> 20u) & 1u)) >> 20u) - (120u << 3u);
    }
    return mag | select(0u, 0x80u, x < 0.0);
}
