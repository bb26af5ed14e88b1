// MoE routing and the glue around the expert GEMMs: router, tokens sorted and aligned per expert (vLLM's
// moe_align_block_size), the expert activation, and the weighted combine back into token rows.

#define MAX_EXPERTS 1024
#define ALIGN_M 64

// Scoring and selection rules (runtime/src/spec.rs): scoring 0 softmax, 1 sigmoid; order 0 score then
// select, 1 select on logits then score the chosen; top_p <= 0 means top-k with k = max_k.
__device__ void score(float* v, int n, int sigmoid) {
    if (sigmoid) {
        for (int i = 0; i < n; i++) v[i] = 1.0f / (1.0f + expf(-v[i]));
        return;
    }
    float mx = NEG_INF, sum = 0.0f;
    for (int i = 0; i < n; i++) mx = fmaxf(mx, v[i]);
    for (int i = 0; i < n; i++) {
        v[i] = expf(v[i] - mx);
        sum += v[i];
    }
    for (int i = 0; i < n; i++) v[i] /= sum;
}

// Largest not-yet-taken entry, lowest index on ties (the reference's stable order).
__device__ int take_max(const float* v, int n, u32* taken) {
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (taken[i / 32] >> (i % 32) & 1) continue;
        if (best < 0 || v[i] > v[best]) best = i;
    }
    taken[best / 32] |= 1u << (best % 32);
    return best;
}

// logits [rows, n]; scoring, order, top_p and min_k as above; renormalize: the chosen weights sum to 1.
struct MoeRouteArgs {
    const float* logits;
    float* probs;
    int* ids;
    float* weights;
    int rows;
    int n;
    int max_k;
    int scoring;
    int order;
    float top_p;
    int min_k;
    int renormalize;
};

// One thread per token: probs [rows, n] (router probabilities, kept for tracing); ids/weights [rows, max_k],
// unused slots -1 / 0. Routers are small (n <= MAX_EXPERTS), so a serial selection costs little.
extern "C" __global__ void moe_route(MoeRouteArgs p) {
    int n = p.n, max_k = p.max_k;
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= p.rows) return;
    const float* lg = p.logits + (size_t)row * n;
    float* prob = p.probs + (size_t)row * n;
    for (int i = 0; i < n; i++) prob[i] = lg[i];
    score(prob, n, p.scoring);
    u32 taken[MAX_EXPERTS / 32];
    for (int i = 0; i < MAX_EXPERTS / 32; i++) taken[i] = 0;
    int* out_ids = p.ids + (size_t)row * max_k;
    float* out_w = p.weights + (size_t)row * max_k;
    int count = max_k;
    if (p.order == 0) {
        float sum = 0.0f;
        int reached = 0;
        for (int j = 0; j < max_k; j++) {
            int e = take_max(prob, n, taken);
            out_ids[j] = e;
            out_w[j] = prob[e];
            if (sum < p.top_p) {
                sum += prob[e];
                reached = j + 1;
            }
        }
        if (p.top_p > 0.0f) count = max(reached, p.min_k);
    } else {
        for (int j = 0; j < max_k; j++) {
            int e = take_max(lg, n, taken);
            out_ids[j] = e;
            out_w[j] = lg[e];
        }
        score(out_w, max_k, p.scoring);
    }
    float total = 0.0f;
    for (int j = 0; j < max_k; j++) {
        if (j >= count) {
            out_ids[j] = -1;
            out_w[j] = 0.0f;
        }
        total += out_w[j];
    }
    if (p.renormalize)
        for (int j = 0; j < count; j++) out_w[j] /= total;
}

// ids [assignments] (max_k per token); sorted_src and tile_expert hold max_rows rows.
struct MoeAlignArgs {
    const int* ids;
    int* sorted_src;
    int* sorted_of;
    int* tile_expert;
    int* used_tiles;
    int assignments;
    int max_k;
    int n_experts;
    int max_rows;
};

// Sorts the assignments (token * max_k + j) by expert and pads each expert's run to ALIGN_M rows, so every
// ALIGN_M-row tile of the grouped GEMM belongs to one expert. One block. Outputs: sorted_src[row] = token of
// that sorted row (-1: padding), sorted_of[assignment] = its sorted row, tile_expert[tile], *used_tiles.
// Within an expert, rows keep assignment order (a prefix sum, not atomics), so results are deterministic.
extern "C" __global__ void moe_align(MoeAlignArgs p) {
    __shared__ int start[MAX_EXPERTS + 1];
    int n_experts = p.n_experts;
    if (threadIdx.x == 0) {
        for (int e = 0; e <= n_experts; e++) start[e] = 0;
        for (int a = 0; a < p.assignments; a++)
            if (p.ids[a] >= 0) start[p.ids[a] + 1]++;
        for (int e = 0; e < n_experts; e++) start[e + 1] = start[e] + (start[e + 1] + ALIGN_M - 1) / ALIGN_M * ALIGN_M;
        *p.used_tiles = start[n_experts] / ALIGN_M;
    }
    __syncthreads();
    for (int r = threadIdx.x; r < p.max_rows; r += blockDim.x) p.sorted_src[r] = -1;
    for (int t = threadIdx.x; t < p.max_rows / ALIGN_M; t += blockDim.x) p.tile_expert[t] = -1;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int e = 0; e < n_experts; e++)
            for (int row = start[e]; row < start[e + 1]; row += ALIGN_M) p.tile_expert[row / ALIGN_M] = e;
        for (int a = 0; a < p.assignments; a++) {
            int e = p.ids[a];
            if (e < 0) {
                p.sorted_of[a] = -1;
                continue;
            }
            int row = start[e]++;
            p.sorted_src[row] = a / p.max_k;
            p.sorted_of[a] = row;
        }
    }
}

// gate_up [rows, 2 * inter] into act [rows, inter]; bias, expert_of_row and tile_expert may be 0.
struct MoeActivationArgs {
    const float* gate_up;
    const float* bias;
    const int* expert_of_row;
    const int* tile_expert;
    float* act;
    int rows;
    int inter;
    int kind;
    float alpha;
    float limit;
    int _pad;
};

// act[r, j] from gate_up[r] = [gate (inter), up (inter)]; expert biases [experts, 2 * inter] by the row's
// expert (expert_of_row gives it directly, or tile_expert[r / ALIGN_M] in the sorted layout). kind 0: SwiGLU,
// 1: GPT-OSS clamped SwiGLU with alpha and limit.
extern "C" __global__ void moe_activation(MoeActivationArgs p) {
    int inter = p.inter;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)p.rows * inter) return;
    int r = i / inter, j = i % inter;
    int e = p.expert_of_row ? p.expert_of_row[r] : p.tile_expert[r / ALIGN_M];
    if (e < 0) {
        p.act[i] = 0.0f;
        return;
    }
    float g = p.gate_up[(size_t)r * 2 * inter + j], u = p.gate_up[(size_t)r * 2 * inter + inter + j];
    if (p.bias) {
        g += p.bias[(size_t)e * 2 * inter + j];
        u += p.bias[(size_t)e * 2 * inter + inter + j];
    }
    if (p.kind == 0) {
        p.act[i] = g / (1.0f + expf(-g)) * u;
    } else {
        g = fminf(g, p.limit);
        u = fminf(fmaxf(u, -p.limit), p.limit);
        p.act[i] = (u + 1.0f) * g / (1.0f + expf(-p.alpha * g));
    }
}

// y rows of hidden values; ids, weights and sorted_of per assignment (max_k per token); out [rows, hidden].
struct MoeCombineArgs {
    const float* y;
    const int* ids;
    const float* weights;
    const int* sorted_of;
    const float* down_bias;
    float* out;
    int rows;
    int max_k;
    int hidden;
    int _pad;
};

// out[t, :] = sum_j weights[t, j] * (y[row_of(t, j), :] + down_bias[expert]), in slot order like the
// reference. row_of is sorted_of (sorted layout) or the assignment itself (sorted_of = 0).
extern "C" __global__ void moe_combine(MoeCombineArgs p) {
    int hidden = p.hidden;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)p.rows * hidden) return;
    int t = i / hidden, c = i % hidden;
    float acc = 0.0f;
    for (int j = 0; j < p.max_k; j++) {
        int a = t * p.max_k + j, e = p.ids[a];
        if (e < 0) continue;
        int row = p.sorted_of ? p.sorted_of[a] : a;
        float v = p.y[(size_t)row * hidden + c];
        if (p.down_bias) v += p.down_bias[(size_t)e * hidden + c];
        acc += p.weights[a] * v;
    }
    p.out[i] = acc;
}
