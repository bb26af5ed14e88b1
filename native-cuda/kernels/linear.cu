// Matrix-vector products for decode and small batches: y[r, o] = x[r, :] · W[o, :] + bias[o].
// One warp per output row; each lane takes 4 consecutive columns of every 128-column block, so a warp reads
// one FP8 scale block per step and each weight row is read once for up to TOKENS_PER_WARP rows of x.
// W rows are `stride` elements apart (FP8 rows are padded to a multiple of 128 with zero codes).
// FP8 scales: [ceil(out / 128), stride / 128] f32; other dtypes pass scales = 0.

#define TOKENS_PER_WARP 8

template <typename W>
__device__ __forceinline__ float block_partial(const typename W::T* w_row, const float* x_row, int col, int k) {
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++)
        if (col + j < k) acc += W::get(w_row, col + j) * x_row[col + j];
    return acc;
}

template <typename W>
__device__ void linear_rows(const float* x, const typename W::T* w, const float* scales, const float* bias,
                            float* y, int rows, int k, int out, int stride, int group_rows) {
    int o = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    if (o >= out) return;
    int r0 = blockIdx.y * TOKENS_PER_WARP;
    int n = min(TOKENS_PER_WARP, rows - r0);
    const typename W::T* w_row = w + (size_t)o * stride;
    int col_blocks = (k + 127) / 128;
    float acc[TOKENS_PER_WARP];
#pragma unroll
    for (int t = 0; t < TOKENS_PER_WARP; t++) acc[t] = 0.0f;
    for (int kb = 0; kb < col_blocks; kb++) {
        int col = kb * 128 + lane * 4;
        float scale = scales ? scales[(size_t)scale_row(o, group_rows) * (stride / 128) + kb] : 1.0f;
#pragma unroll
        for (int t = 0; t < TOKENS_PER_WARP; t++)
            if (t < n) acc[t] += scale * block_partial<W>(w_row, x + (size_t)(r0 + t) * k, col, k);
    }
#pragma unroll
    for (int t = 0; t < TOKENS_PER_WARP; t++) {
        float v = warp_sum(acc[t]);
        if (lane == 0 && t < n) y[(size_t)(r0 + t) * out + o] = v + (bias ? bias[o] : 0.0f);
    }
}

// w in the kernel's stored dtype (W::T), `stride` elements between rows; scales (FP8 only) and bias may be 0.
struct LinearArgs {
    const float* x;
    const void* w;
    const float* scales;
    const float* bias;
    float* y;
    int rows;
    int k;
    int out;
    int stride;
    int group_rows;
    int _pad;
};

#define LINEAR(NAME, W)                                                                               \
    extern "C" __global__ void NAME(LinearArgs p) {                                                   \
        linear_rows<W>(p.x, (const W::T*)p.w, p.scales, p.bias, p.y, p.rows, p.k, p.out, p.stride,   \
                       p.group_rows);                                                                 \
    }
LINEAR(linear_f32, WeightF32)
LINEAR(linear_bf16, WeightBf16)
LINEAR(linear_f16, WeightF16)
LINEAR(linear_fp8, WeightFp8)

// Experts for a few tokens, in the masked fixed-capacity layout decode uses: assignment a = token * k + j
// runs expert experts[a] (-1: an unused slot, output zero) on x row a / x_div. The grid is fixed by the
// token count alone, so a decode step can be captured as a CUDA graph whatever the routing.
// Expert e's matrix starts at e * expert_elems, its scales at e * expert_scales. Expert biases are added by
// moe_activation and moe_combine.
template <typename W>
__device__ void expert_rows(const float* x, int x_div, const int* experts, const typename W::T* w,
                            const float* scales, float* y, int k, int out, int stride, int group_rows, long long expert_elems, long long expert_scales) {
    int o = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    int a = blockIdx.y;
    if (o >= out) return;
    int e = experts[a];
    if (e < 0) {
        if (lane == 0) y[(size_t)a * out + o] = 0.0f;
        return;
    }
    const typename W::T* w_row = w + e * expert_elems + (size_t)o * stride;
    const float* x_row = x + (size_t)(a / x_div) * k;
    float acc = 0.0f;
    for (int kb = 0; kb < (k + 127) / 128; kb++) {
        float scale = scales ? scales[e * expert_scales + (size_t)scale_row(o, group_rows) * (stride / 128) + kb] : 1.0f;
        acc += scale * block_partial<W>(w_row, x_row, kb * 128 + lane * 4, k);
    }
    acc = warp_sum(acc);
    if (lane == 0) y[(size_t)a * out + o] = acc;
}

// x rows of k values, experts[assignments], w the stacked experts in the kernel's stored dtype (W::T).
struct ExpertsArgs {
    const float* x;
    const int* experts;
    const void* w;
    const float* scales;
    float* y;
    long long expert_elems;
    long long expert_scales;
    int x_div;
    int k;
    int out;
    int stride;
    int group_rows;
    int _pad;
};

#define EXPERTS(NAME, W)                                                                                \
    extern "C" __global__ void NAME(ExpertsArgs p) {                                                    \
        expert_rows<W>(p.x, p.x_div, p.experts, (const W::T*)p.w, p.scales, p.y, p.k, p.out, p.stride, \
                       p.group_rows, p.expert_elems, p.expert_scales);                                  \
    }
EXPERTS(experts_f32, WeightF32)
EXPERTS(experts_bf16, WeightBf16)
EXPERTS(experts_f16, WeightF16)
EXPERTS(experts_fp8, WeightFp8)
