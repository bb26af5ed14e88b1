// Weight access for f32 matrices: binding 1 holds the matrix row-major.
@group(0) @binding(1) var<storage, read> w: array<f32>;

fn w_at(row: u32, col: u32, ncols: u32) -> f32 {
    return w[row * ncols + col];
}
