// Weight access for f16 matrices as WGSL f16 (adapters with `shader-f16`); weights_f16.wgsl unpacks the
// same bytes from u32 words where the feature is missing.
enable f16;

@group(0) @binding(1) var<storage, read> w: array<f16>;

fn w_at(row: u32, col: u32, ncols: u32) -> f32 {
    return f32(w[row * ncols + col]);
}
