// Prepended to every kernel file. Header-free on purpose: NVRTC then needs no CUDA include tree (cuda_fp16.h
// and friends pull in the toolkit), so bf16/f16 are carried as u16 bits and FP8 as u8 codes.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;

#define WARP 32
#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float bf16_to_f32(u16 bits) { return __uint_as_float(((u32)bits) << 16); }

__device__ __forceinline__ float f16_to_f32(u16 bits) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 bits;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(f));
    return bits;
}

// OCP E4M3 ("e4m3fn"), the mapping of runtime/src/fp8.rs: bias 7, subnormals m * 2^-9, 0x7f NaN.
__device__ __forceinline__ float e4m3_to_f32(u32 code) {
    u32 mag = code & 0x7f;
    float v = mag == 0x7f ? __uint_as_float(0x7fc00000u)
              : mag < 8   ? (float)mag * (1.0f / 512.0f)
                          : __uint_as_float((mag << 20) + (120u << 23));
    return (code & 0x80) ? -v : v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = WARP / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = WARP / 2; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// Weight element loaders, one per stored dtype; FP8 scales are applied per 128-column block by the caller.
struct WeightF32 {
    typedef float T;
    static __device__ __forceinline__ float get(const float* w, size_t i) { return w[i]; }
};
struct WeightBf16 {
    typedef u16 T;
    static __device__ __forceinline__ float get(const u16* w, size_t i) { return bf16_to_f32(w[i]); }
};
struct WeightF16 {
    typedef u16 T;
    static __device__ __forceinline__ float get(const u16* w, size_t i) { return f16_to_f32(w[i]); }
};
struct WeightFp8 {
    typedef u8 T;
    static __device__ __forceinline__ float get(const u8* w, size_t i) { return e4m3_to_f32(w[i]); }
};

#define NEG_INF __uint_as_float(0xff800000u)

// Row of the FP8 scale grid holding weight row `row` when the 128x128 grid restarts every `group_rows` rows
// (stacked [experts, 2, inter, hidden] gate/up tensors restart it at each half, as runtime/src/fp8.rs does).
__device__ __forceinline__ int scale_row(int row, int group_rows) {
    return (row / group_rows) * ((group_rows + 127) / 128) + (row % group_rows) / 128;
}
