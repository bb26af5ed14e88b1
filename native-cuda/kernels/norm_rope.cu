// RMSNorm over groups of columns (the row, or head_dim for per-head norms) and rotary embeddings.

// One block per (row, group); `weight` covers one group or the whole row (index wraps like the reference).
extern "C" __global__ void rms_norm(const float* x, const float* weight, float* out, int cols, int group,
                                    int weight_len, float eps) {
    __shared__ float partial[32];
    int groups = cols / group;
    int row = blockIdx.x / groups, g = blockIdx.x % groups;
    const float* xs = x + (size_t)row * cols + (size_t)g * group;
    float* ys = out + (size_t)row * cols + (size_t)g * group;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < group; i += blockDim.x) ss += xs[i] * xs[i];
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : 0.0f;
        v = warp_sum(v);
        if (threadIdx.x == 0) partial[0] = v;
    }
    __syncthreads();
    float inv = 1.0f / sqrtf(partial[0] / group + eps);
    int base = (g * group) % weight_len;
    for (int i = threadIdx.x; i < group; i += blockDim.x) ys[i] = xs[i] * inv * weight[base + i];
}

// Rotates pairs half a head apart: one thread per (row, head, pair). Angles in f32 like transformers.
extern "C" __global__ void apply_rope(float* x, const float* inv_freq, const int* positions, int rows, int cols,
                                      int head_dim, float attention_scale) {
    int half = head_dim / 2;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long per_row = (long long)(cols / head_dim) * half;
    if (i >= rows * per_row) return;
    int row = i / per_row, rem = i % per_row;
    int head = rem / half, p = rem % half;
    float angle = (float)positions[row] * inv_freq[p];
    float s, c;
    sincosf(angle, &s, &c);
    c *= attention_scale;
    s *= attention_scale;
    float* h = x + (size_t)row * cols + (size_t)head * head_dim;
    float a = h[p], b = h[p + half];
    h[p] = a * c - b * s;
    h[p + half] = b * c + a * s;
}
