// FP8 GEMM for prefill and the grouped MoE GEMM: C[m, n] = (A_q * a_scale) · (B_q * b_scale)ᵀ with E4M3
// A (activations, 1x128 scales per row) and B (weights, 128x128 block scales), f32 accumulation.
// Tensor cores through mma.sync m16n8k32 e4m3 (sm_89+). Each 128-column K block is accumulated alone and
// then promoted into the f32 total with its two scales (the DeepSeek-V3 scheme, since the scales change
// every 128 columns). Not wgmma/TMA: fragments are read straight from global memory (L1/L2 serve reuse).

#define TILE_M 64
#define TILE_N 64

// x: f32 rows of k values; q [rows, kp] codes, scales [rows, kp / 128].
struct QuantizeArgs {
    const float* x;
    const int* src;
    u8* q;
    float* scales;
    int rows;
    int k;
    int kp;
    int _pad;
};

// Activation rows to E4M3, one warp per (row, 128-column block): scale = max(amax, 1e-4) / 448 (DeepGEMM's
// per_token_cast_to_fp8). Output row i comes from input row src[i] when src is given (-1: a zero row), which
// gathers tokens into the per-expert sorted order. q is [rows, kp] with kp a multiple of 128 (zero padded).
extern "C" __global__ void quantize_rows_1x128(QuantizeArgs p) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / WARP, lane = threadIdx.x % WARP;
    int blocks = p.kp / 128;
    if (warp >= p.rows * blocks) return;
    int row = warp / blocks, kb = warp % blocks;
    int from = p.src ? p.src[row] : row;
    int col = kb * 128 + lane * 4;
    float v[4];
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        v[j] = (from >= 0 && col + j < p.k) ? p.x[(size_t)from * p.k + col + j] : 0.0f;
        amax = fmaxf(amax, fabsf(v[j]));
    }
    amax = warp_max(amax);
    float scale = fmaxf(amax, 1e-4f) / 448.0f;
    u16 lo, hi;
    // cvt packs its first operand into the upper byte.
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(lo) : "f"(v[1] / scale), "f"(v[0] / scale));
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(hi) : "f"(v[3] / scale), "f"(v[2] / scale));
    *(u32*)(p.q + (size_t)row * p.kp + col) = (u32)lo | ((u32)hi << 16);
    if (lane == 0) p.scales[(size_t)row * blocks + kb] = scale;
}

__device__ __forceinline__ void mma_e4m3(float* d, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 load_u32(const u8* base, size_t offset, bool valid) {
    return valid ? *(const u32*)(base + offset) : 0u;
}

// c [m, n] = a [m, kp] · b [n, kp]ᵀ (+ bias); a_scale [m, kp / 128], b_scale by scale_row over group_rows.
struct GemmFp8Args {
    const u8* a;
    const float* a_scale;
    const u8* b;
    const float* b_scale;
    const float* bias;
    float* c;
    const int* tile_expert;
    const int* used_tiles;
    long long b_expert_elems;
    long long b_expert_scales;
    int m;
    int n;
    int kp;
    int group_rows;
};

// Block (TILE_M rows, TILE_N columns), 4 warps of 16 rows x 64 columns. Grouped mode: every TILE_M rows of A
// belong to expert tile_expert[tile] (-1 or a tile past *used_tiles: nothing to do) and B, b_scale and bias
// advance by that expert's stride. Dense mode: tile_expert = 0, used_tiles = 0, strides unused.
extern "C" __global__ void gemm_fp8(GemmFp8Args p) {
    const u8 *a = p.a, *b = p.b;
    const float *a_scale = p.a_scale, *b_scale = p.b_scale, *bias = p.bias;
    int m = p.m, n = p.n, kp = p.kp, group_rows = p.group_rows;
    int tile_m = blockIdx.y, tile_n = blockIdx.x;
    long long e = 0;
    if (p.tile_expert) {
        if (tile_m >= *p.used_tiles || p.tile_expert[tile_m] < 0) return;
        e = p.tile_expert[tile_m];
        b += e * p.b_expert_elems;
        b_scale += e * p.b_expert_scales;
        if (bias) bias += e * n;
    }
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int group = lane / 4, quad = lane % 4;
    int row0 = tile_m * TILE_M + warp * 16 + group;  // and row0 + 8
    int col0 = tile_n * TILE_N;
    int k_blocks = kp / 128;
    bool row_a = row0 < m, row_b = row0 + 8 < m;
    float total[8][4];
#pragma unroll
    for (int f = 0; f < 8; f++)
#pragma unroll
        for (int i = 0; i < 4; i++) total[f][i] = 0.0f;
    for (int kb = 0; kb < k_blocks; kb++) {
        float part[8][4];
#pragma unroll
        for (int f = 0; f < 8; f++)
#pragma unroll
            for (int i = 0; i < 4; i++) part[f][i] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < 128; ks += 32) {
            size_t k = (size_t)kb * 128 + ks + quad * 4;
            u32 af[4] = {load_u32(a, (size_t)row0 * kp + k, row_a), load_u32(a, (size_t)(row0 + 8) * kp + k, row_b),
                         load_u32(a, (size_t)row0 * kp + k + 16, row_a),
                         load_u32(a, (size_t)(row0 + 8) * kp + k + 16, row_b)};
#pragma unroll
            for (int f = 0; f < 8; f++) {
                int col = col0 + f * 8 + group;
                bool ok = col < n;
                mma_e4m3(part[f], af, load_u32(b, (size_t)col * kp + k, ok), load_u32(b, (size_t)col * kp + k + 16, ok));
            }
        }
        // Per column: a tile may straddle the gate/up halves of a stacked expert, where the grid restarts.
        float sa0 = row_a ? a_scale[(size_t)row0 * k_blocks + kb] : 0.0f;
        float sa1 = row_b ? a_scale[(size_t)(row0 + 8) * k_blocks + kb] : 0.0f;
#pragma unroll
        for (int f = 0; f < 8; f++) {
            int col = col0 + f * 8 + quad * 2;
            float sb0 = col < n ? b_scale[(size_t)scale_row(col, group_rows) * k_blocks + kb] : 0.0f;
            float sb1 = col + 1 < n ? b_scale[(size_t)scale_row(col + 1, group_rows) * k_blocks + kb] : 0.0f;
            total[f][0] += part[f][0] * sa0 * sb0;
            total[f][1] += part[f][1] * sa0 * sb1;
            total[f][2] += part[f][2] * sa1 * sb0;
            total[f][3] += part[f][3] * sa1 * sb1;
        }
    }
#pragma unroll
    for (int f = 0; f < 8; f++) {
        int col = col0 + f * 8 + quad * 2;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int r = i < 2 ? row0 : row0 + 8, cc = col + (i & 1);
            if (r < m && cc < n) p.c[(size_t)r * n + cc] = total[f][i] + (bias ? bias[cc] : 0.0f);
        }
    }
}
