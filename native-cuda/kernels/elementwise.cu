// Row-wise and element-wise ops on f32 activations [rows, cols].

template <typename W>
__device__ void embed_rows(const typename W::T* table, const int* tokens, float* out, int rows, int hidden) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * hidden) return;
    size_t r = i / hidden, c = i % hidden;
    out[i] = W::get(table, (size_t)tokens[r] * hidden + c);
}

extern "C" __global__ void embed_f32(const float* t, const int* tok, float* out, int rows, int hidden) {
    embed_rows<WeightF32>(t, tok, out, rows, hidden);
}
extern "C" __global__ void embed_bf16(const u16* t, const int* tok, float* out, int rows, int hidden) {
    embed_rows<WeightBf16>(t, tok, out, rows, hidden);
}
extern "C" __global__ void embed_f16(const u16* t, const int* tok, float* out, int rows, int hidden) {
    embed_rows<WeightF16>(t, tok, out, rows, hidden);
}

extern "C" __global__ void swiglu(float* gate, const float* up, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i];
    gate[i] = g / (1.0f + expf(-g)) * up[i];
}

extern "C" __global__ void clamp_values(float* x, float limit, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = fminf(fmaxf(x[i], -limit), limit);
}

extern "C" __global__ void add_assign(float* x, const float* y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// x[row, :] *= sigmoid(gate[row]) for a one-column gate.
extern "C" __global__ void sigmoid_gate(float* x, const float* gate, int cols, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= 1.0f / (1.0f + expf(-gate[i / cols]));
}

extern "C" __global__ void select_rows(const float* x, const int* rows, float* out, int n_rows, int cols) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n_rows * cols) return;
    out[i] = x[(long long)rows[i / cols] * cols + i % cols];
}
