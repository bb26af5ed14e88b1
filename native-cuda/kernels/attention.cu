// Attention over per-layer f16 KV caches laid out as on the other backends (runtime/src/kv/pages.rs):
// a sliding layer keeps a ring of `ring` rows per slot; a full layer (ring 0) takes rows from pages of one
// pool through each slot's page table. A layer that reuses another layer's KV (cross-layer sharing) reads
// that layer's buffers; only owners write.

#define KV_PAGE 32

// The cache row of position j of sequence `seq`.
__device__ __forceinline__ size_t kv_row(int seq, int j, int ring, const int* tables, int pages_per_seq) {
    if (ring > 0) return (size_t)seq * ring + j % ring;
    return (size_t)tables[seq * pages_per_seq + j / KV_PAGE] * KV_PAGE + j % KV_PAGE;
}

// k and v [rows, kv_dim] of the step's tokens into the layer's cache; tables [slots, pages_per_seq].
struct KvWriteArgs {
    const float* k;
    const float* v;
    u16* cache_k;
    u16* cache_v;
    const int* seqs;
    const int* positions;
    const int* tables;
    int rows;
    int kv_dim;
    int ring;
    int pages_per_seq;
};

extern "C" __global__ void kv_write(KvWriteArgs p) {
    int kv_dim = p.kv_dim;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)p.rows * kv_dim) return;
    int r = i / kv_dim, c = i % kv_dim;
    size_t dst = kv_row(p.seqs[r], p.positions[r], p.ring, p.tables, p.pages_per_seq) * kv_dim + c;
    p.cache_k[dst] = f32_to_f16(p.k[i]);
    p.cache_v[dst] = f32_to_f16(p.v[i]);
}

#define MAX_HEAD_DIM 256
#define DIMS_PER_LANE (MAX_HEAD_DIM / WARP)

// q and out [rows, n_heads * head_dim]; sinks [n_heads] or 0; window 0: full attention.
struct AttentionArgs {
    const float* q;
    const u16* cache_k;
    const u16* cache_v;
    const float* sinks;
    float* out;
    const int* seqs;
    const int* positions;
    const int* tables;
    int rows;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int ring;
    int pages_per_seq;
    int window;
    float softmax_scale;
};

// One warp per (row, head), keys visited in order with an online softmax; lanes split head_dim. Visible keys:
// positions in (pos - window, pos] (window 0: all up to pos). A sink adds exp(sink) to the denominator only.
// Simple rather than fast (no K/V tiles in shared memory): correctness first, tuning needs a GPU.
extern "C" __global__ void attention(AttentionArgs p) {
    int n_heads = p.n_heads, head_dim = p.head_dim;
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int head = blockIdx.y * (blockDim.x / WARP) + warp, row = blockIdx.x;
    if (head >= n_heads || row >= p.rows) return;
    int kv_head = head / (n_heads / p.n_kv_heads);
    int kv_dim = p.n_kv_heads * head_dim;
    int pos = p.positions[row];
    int first = p.window > 0 ? max(0, pos + 1 - p.window) : 0;
    const float* qh = p.q + (size_t)row * n_heads * head_dim + (size_t)head * head_dim;
    int seq = p.seqs[row];
    const u16* kbase = p.cache_k + (size_t)kv_head * head_dim;
    const u16* vbase = p.cache_v + (size_t)kv_head * head_dim;
    float qv[DIMS_PER_LANE], acc[DIMS_PER_LANE];
#pragma unroll
    for (int d = 0; d < DIMS_PER_LANE; d++) {
        int c = lane + d * WARP;
        qv[d] = c < head_dim ? qh[c] : 0.0f;
        acc[d] = 0.0f;
    }
    float mx = p.sinks ? p.sinks[head] : NEG_INF;
    float sum = p.sinks ? 1.0f : 0.0f;
    for (int j = first; j <= pos; j++) {
        size_t at = kv_row(seq, j, p.ring, p.tables, p.pages_per_seq) * kv_dim;
        const u16* kr = kbase + at;
        float dot = 0.0f;
#pragma unroll
        for (int d = 0; d < DIMS_PER_LANE; d++) {
            int c = lane + d * WARP;
            if (c < head_dim) dot += qv[d] * f16_to_f32(kr[c]);
        }
        float s = warp_sum(dot) * p.softmax_scale;
        float next = fmaxf(mx, s);
        float correction = expf(mx - next), weight = expf(s - next);
        sum = sum * correction + weight;
        const u16* vr = vbase + at;
#pragma unroll
        for (int d = 0; d < DIMS_PER_LANE; d++) {
            int c = lane + d * WARP;
            if (c < head_dim) acc[d] = acc[d] * correction + weight * f16_to_f32(vr[c]);
        }
        mx = next;
    }
    float* o = p.out + (size_t)row * n_heads * head_dim + (size_t)head * head_dim;
#pragma unroll
    for (int d = 0; d < DIMS_PER_LANE; d++) {
        int c = lane + d * WARP;
        if (c < head_dim) o[c] = acc[d] / sum;
    }
}
