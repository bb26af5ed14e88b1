// RMSNorm over groups of columns (the row, or head_dim for per-head norms) and rotary embeddings.

// x and out [rows, cols]; weight has weight_len values.
struct RmsNormArgs {
    const float* x;
    const float* weight;
    float* out;
    int cols;
    int group;
    int weight_len;
    float eps;
};

// One block per (row, group); `weight` covers one group or the whole row (index wraps like the reference).
extern "C" __global__ void rms_norm(RmsNormArgs p) {
    __shared__ float partial[32];
    int groups = p.cols / p.group;
    int row = blockIdx.x / groups, g = blockIdx.x % groups;
    const float* xs = p.x + (size_t)row * p.cols + (size_t)g * p.group;
    float* ys = p.out + (size_t)row * p.cols + (size_t)g * p.group;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < p.group; i += blockDim.x) ss += xs[i] * xs[i];
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : 0.0f;
        v = warp_sum(v);
        if (threadIdx.x == 0) partial[0] = v;
    }
    __syncthreads();
    float inv = 1.0f / sqrtf(partial[0] / p.group + p.eps);
    int base = (g * p.group) % p.weight_len;
    for (int i = threadIdx.x; i < p.group; i += blockDim.x) ys[i] = xs[i] * inv * p.weight[base + i];
}

// x [rows, cols] rotated in place; positions [rows].
struct RopeArgs {
    float* x;
    const float* inv_freq;
    const int* positions;
    int rows;
    int cols;
    int head_dim;
    float attention_scale;
};

// Rotates pairs half a head apart: one thread per (row, head, pair). Angles in f32 like transformers.
extern "C" __global__ void apply_rope(RopeArgs p) {
    int half = p.head_dim / 2;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long per_row = (long long)(p.cols / p.head_dim) * half;
    if (i >= p.rows * per_row) return;
    int row = i / per_row, rem = i % per_row;
    int head = rem / half, pair = rem % half;
    float angle = (float)p.positions[row] * p.inv_freq[pair];
    float s, c;
    sincosf(angle, &s, &c);
    c *= p.attention_scale;
    s *= p.attention_scale;
    float* h = p.x + (size_t)row * p.cols + (size_t)head * p.head_dim;
    float a = h[pair], b = h[pair + half];
    h[pair] = a * c - b * s;
    h[pair + half] = b * c + a * s;
}
