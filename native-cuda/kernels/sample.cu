// Token choice on the device, so a decode step reads back ids instead of logits rows.

// logits [rows, vocab]; penalized, starts [rows + 1] and penalties [rows] as below; out [rows].
struct PickGreedyArgs {
    const float* logits;
    const int* penalized;
    const int* starts;
    const float* penalties;
    int* out;
    int vocab;
    int _pad;
};

// One row per block: the greedy choice of Pick::choose at temperature 0 (runtime/src/sampler.rs). The row's
// penalized ids (sorted, distinct: penalized[starts[row]..starts[row + 1]]) have positive logits divided by
// the penalty and negative ones multiplied; NaN never wins; the largest logit wins, the lowest id among
// equals; a row of -inf gives 0.
extern "C" __global__ void pick_greedy(PickGreedyArgs p) {
    const int* penalized = p.penalized;
    int row = blockIdx.x;
    const float* x = p.logits + (size_t)row * p.vocab;
    int first = p.starts[row], count = p.starts[row + 1] - first;
    float best = NEG_INF;
    int best_id = 0;
    for (int id = threadIdx.x; id < p.vocab; id += blockDim.x) {
        float v = x[id];
        if (isnan(v)) v = NEG_INF;
        // Binary search of the sorted penalized ids.
        int lo = 0, hi = count;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (penalized[first + mid] < id) lo = mid + 1; else hi = mid;
        }
        if (lo < count && penalized[first + lo] == id) v = v > 0.0f ? v / p.penalties[row] : v * p.penalties[row];
        // Ids rise within a thread, so only a larger value replaces.
        if (v > best) {
            best = v;
            best_id = id;
        }
    }
    __shared__ float values[256];
    __shared__ int ids[256];
    values[threadIdx.x] = best;
    ids[threadIdx.x] = best_id;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) {
            float v = values[threadIdx.x + half];
            int i = ids[threadIdx.x + half];
            if (v > values[threadIdx.x] || (v == values[threadIdx.x] && i < ids[threadIdx.x])) {
                values[threadIdx.x] = v;
                ids[threadIdx.x] = i;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) p.out[row] = ids[0];
}
