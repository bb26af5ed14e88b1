// Attention over per-layer f16 KV caches laid out as on the other backends (runtime/src/backend/kv_pages.rs):
// a sliding layer keeps a ring of `ring` rows per slot; a full layer (ring 0) takes rows from pages of one
// pool through each slot's page table. A layer that reuses another layer's KV (cross-layer sharing) reads
// that layer's buffers; only owners write.

#define KV_PAGE 32

// The cache row of position j of sequence `seq`.
__device__ __forceinline__ size_t kv_row(int seq, int j, int ring, const int* tables, int pages_per_seq) {
    if (ring > 0) return (size_t)seq * ring + j % ring;
    return (size_t)tables[seq * pages_per_seq + j / KV_PAGE] * KV_PAGE + j % KV_PAGE;
}

extern "C" __global__ void kv_write(const float* k, const float* v, u16* cache_k, u16* cache_v, const int* seqs,
                                    const int* positions, int rows, int kv_dim, int ring, const int* tables,
                                    int pages_per_seq) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * kv_dim) return;
    int r = i / kv_dim, c = i % kv_dim;
    size_t dst = kv_row(seqs[r], positions[r], ring, tables, pages_per_seq) * kv_dim + c;
    cache_k[dst] = f32_to_f16(k[i]);
    cache_v[dst] = f32_to_f16(v[i]);
}

#define MAX_HEAD_DIM 256
#define DIMS_PER_LANE (MAX_HEAD_DIM / WARP)

// One warp per (row, head), keys visited in order with an online softmax; lanes split head_dim. Visible keys:
// positions in (pos - window, pos] (window 0: all up to pos). A sink adds exp(sink) to the denominator only.
// Simple rather than fast (no K/V tiles in shared memory): correctness first, tuning needs a GPU.
extern "C" __global__ void attention(const float* q, const u16* cache_k, const u16* cache_v, const float* sinks,
                                     float* out, const int* seqs, const int* positions, int rows, int n_heads,
                                     int n_kv_heads, int head_dim, int ring, const int* tables, int pages_per_seq,
                                     int window, float softmax_scale) {
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int head = blockIdx.y * (blockDim.x / WARP) + warp, row = blockIdx.x;
    if (head >= n_heads || row >= rows) return;
    int kv_head = head / (n_heads / n_kv_heads);
    int kv_dim = n_kv_heads * head_dim;
    int pos = positions[row];
    int first = window > 0 ? max(0, pos + 1 - window) : 0;
    const float* qh = q + (size_t)row * n_heads * head_dim + (size_t)head * head_dim;
    int seq = seqs[row];
    const u16* kbase = cache_k + (size_t)kv_head * head_dim;
    const u16* vbase = cache_v + (size_t)kv_head * head_dim;
    float qv[DIMS_PER_LANE], acc[DIMS_PER_LANE];
#pragma unroll
    for (int d = 0; d < DIMS_PER_LANE; d++) {
        int c = lane + d * WARP;
        qv[d] = c < head_dim ? qh[c] : 0.0f;
        acc[d] = 0.0f;
    }
    float mx = sinks ? sinks[head] : NEG_INF;
    float sum = sinks ? 1.0f : 0.0f;
    for (int j = first; j <= pos; j++) {
        size_t at = kv_row(seq, j, ring, tables, pages_per_seq) * kv_dim;
        const u16* kr = kbase + at;
        float dot = 0.0f;
#pragma unroll
        for (int d = 0; d < DIMS_PER_LANE; d++) {
            int c = lane + d * WARP;
            if (c < head_dim) dot += qv[d] * f16_to_f32(kr[c]);
        }
        float s = warp_sum(dot) * softmax_scale;
        float next = fmaxf(mx, s);
        float correction = expf(mx - next), p = expf(s - next);
        sum = sum * correction + p;
        const u16* vr = vbase + at;
#pragma unroll
        for (int d = 0; d < DIMS_PER_LANE; d++) {
            int c = lane + d * WARP;
            if (c < head_dim) acc[d] = acc[d] * correction + p * f16_to_f32(vr[c]);
        }
        mx = next;
    }
    float* o = out + (size_t)row * n_heads * head_dim + (size_t)head * head_dim;
#pragma unroll
    for (int d = 0; d < DIMS_PER_LANE; d++) {
        int c = lane + d * WARP;
        if (c < head_dim) o[c] = acc[d] / sum;
    }
}
