// Row-wise and element-wise ops on f32 activations [rows, cols].

// out[r, :] = src[index[r], :] for `rows` rows of `cols` values: the embedding lookup (src is the table in its
// stored dtype, index the step's tokens) and select_rows (src f32 activations).
struct GatherArgs {
    const void* src;
    const int* index;
    float* out;
    int rows;
    int cols;
};

template <typename W>
__device__ void gather_rows(const typename W::T* src, const int* index, float* out, int rows, int cols) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * cols) return;
    size_t r = i / cols, c = i % cols;
    out[i] = W::get(src, (size_t)index[r] * cols + c);
}

#define GATHER(NAME, W)                                                       \
    extern "C" __global__ void NAME(GatherArgs p) {                           \
        gather_rows<W>((const W::T*)p.src, p.index, p.out, p.rows, p.cols); \
    }
GATHER(embed_f32, WeightF32)
GATHER(embed_bf16, WeightBf16)
GATHER(embed_f16, WeightF16)
GATHER(select_rows, WeightF32)

// Element-wise over the n values of x: y is the second operand (none for clamp_values), cols the row width
// (sigmoid_gate's gate has one value per row), limit clamp_values' bound.
struct ElementwiseArgs {
    float* x;
    const float* y;
    long long n;
    int cols;
    float limit;
};

// x = silu(x) * y
extern "C" __global__ void swiglu(ElementwiseArgs p) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) return;
    float g = p.x[i];
    p.x[i] = g / (1.0f + expf(-g)) * p.y[i];
}

extern "C" __global__ void clamp_values(ElementwiseArgs p) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) p.x[i] = fminf(fmaxf(p.x[i], -p.limit), p.limit);
}

extern "C" __global__ void add_assign(ElementwiseArgs p) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) p.x[i] += p.y[i];
}

// x[row, :] *= sigmoid(y[row]) for a one-column gate y.
extern "C" __global__ void sigmoid_gate(ElementwiseArgs p) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) p.x[i] *= 1.0f / (1.0f + expf(-p.y[i / p.cols]));
}
