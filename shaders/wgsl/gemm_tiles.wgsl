// Register-tiled GEMM core shared by the prefill kernels (built after the weight prelude, before the kernel).
// A workgroup of 256 threads computes a 64x64 tile acc[row, col] = sum_k a(row, k) * b(col, k), staging
// 16-wide k slices of both operands in workgroup memory so each loaded value serves 64 products; each
// thread keeps a 4x4 block of rows 4 * (lid / 16).. and columns 4 * (lid % 16)... The kernel defines
// tile_a(row, k) and tile_b(col, k) for rows and columns local to its tile, returning 0 outside the matrix.
const TILE: u32 = 64u;
const TILE_K: u32 = 16u;

// [TILE_K][TILE / 4]: four consecutive rows (columns) of one k per vector
var<workgroup> a_tile: array<vec4<f32>, 256>;
var<workgroup> b_tile: array<vec4<f32>, 256>;

fn gemm_tile(lid: u32, k: u32) -> array<vec4<f32>, 4> {
    var acc: array<vec4<f32>, 4>;
    let rows = lid / 16u;
    let cols = lid % 16u;
    for (var k0 = 0u; k0 < k; k0 += TILE_K) {
        // Consecutive threads load consecutive k of one row: contiguous reads of x and W.
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * 256u;
            let r = e / TILE_K;
            let kk = e % TILE_K;
            a_tile[kk * 16u + r / 4u][r % 4u] = tile_a(r, k0 + kk);
            b_tile[kk * 16u + r / 4u][r % 4u] = tile_b(r, k0 + kk);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a = a_tile[kk * 16u + rows];
            let b = b_tile[kk * 16u + cols];
            acc[0] += a.x * b;
            acc[1] += a.y * b;
            acc[2] += a.z * b;
            acc[3] += a.w * b;
        }
        workgroupBarrier();
    }
    return acc;
}
