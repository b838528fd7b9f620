// Bulkhead's CUDA kernels (f32), compiled at run time by NVRTC (see
// cuda/engine.rs) and, wherever the NVRTC library is present, by a test.
// Matrix products are cuBLAS; these are the pieces between them.
//
// The paged K/V arena is one buffer per layer of
//   num_blocks × block_size × num_kv_heads × head_dim
// floats; a token's slot is `block * block_size + offset`.

extern "C" __global__ void embed_gather(const float* embed, const unsigned* tokens,
                                        float* x, int n, int h) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * h) return;
    long t = i / h, c = i % h;
    x[i] = embed[(long)tokens[t] * h + c];
}

// One block per row; blockDim.x a power of two ≤ 1024.
extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, int rows,
                                    int h, float eps) {
    extern __shared__ float partial[];
    int row = blockIdx.x;
    if (row >= rows) return;
    const float* xr = x + (long)row * h;
    float s = 0.0f;
    for (int c = threadIdx.x; c < h; c += blockDim.x) s += xr[c] * xr[c];
    partial[threadIdx.x] = s;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    float scale = rsqrtf(partial[0] / h + eps);
    for (int c = threadIdx.x; c < h; c += blockDim.x)
        out[(long)row * h + c] = xr[c] * scale * w[c];
}

// Rotary embedding in place (the half-split "rotate_half" layout Llama uses),
// x: n × heads × hd, one thread per (token, head, i < hd/2).
extern "C" __global__ void rope(float* x, const int* pos, const float* inv_freq, int n,
                                int heads, int hd) {
    int half = hd / 2;
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * heads * half) return;
    long t = i / ((long)heads * half);
    int rest = (int)(i % ((long)heads * half));
    int head = rest / half, d = rest % half;
    float a = (float)pos[t] * inv_freq[d];
    float s, c;
    sincosf(a, &s, &c);
    float* base = x + (t * heads + head) * hd;
    float x1 = base[d], x2 = base[d + half];
    base[d] = x1 * c - x2 * s;
    base[d + half] = x2 * c + x1 * s;
}

// Writes each token's K and V (all KV heads) into its arena slot.
extern "C" __global__ void kv_write(const float* k, const float* v, float* k_arena,
                                    float* v_arena, const int* slots, int n, int slot_len) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * slot_len) return;
    long t = i / slot_len, j = i % slot_len;
    long dst = (long)slots[t] * slot_len + j;
    k_arena[dst] = k[i];
    v_arena[dst] = v[i];
}

// Zeroes whole blocks (every layer) handed to a new owner tenant.
extern "C" __global__ void zero_blocks(float* arena, const int* blocks, int nblocks,
                                       int block_len, int layers, long layer_stride) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long per_layer = (long)nblocks * block_len;
    if (i >= per_layer * layers) return;
    long layer = i / per_layer, r = i % per_layer;
    long b = r / block_len, j = r % block_len;
    arena[layer * layer_stride + (long)blocks[b] * block_len + j] = 0.0f;
}

#define MAX_HEAD_DIM 256
#define WARP 32

// Paged attention, one warp per (token, query head): the token attends to
// positions 0..=pos of its sequence through the sequence's block table, with
// an online softmax. Before reading a block, the kernel checks that the
// block's owner is the sequence's tenant; on a mismatch it writes zeros,
// counts a violation for the sequence and reads nothing further.
extern "C" __global__ void paged_attention(
    const float* q, const float* k_arena, const float* v_arena, float* out,
    const int* tok_seq, const int* tok_pos, const int* block_tables, int max_blocks,
    const int* seq_tenant, const int* block_owner, int* violations, int n, int nh,
    int nkv, int hd, int block_size, float scale) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    if (warp >= n * nh) return;
    int t = warp / nh, head = warp % nh;
    int seq = tok_seq[t], pos = tok_pos[t];
    int kvh = head / (nh / nkv);
    int slot_len = nkv * hd;
    const float* qh = q + ((long)t * nh + head) * hd;
    float* oh = out + ((long)t * nh + head) * hd;
    const int per_lane = (hd + WARP - 1) / WARP;
    float qv[MAX_HEAD_DIM / WARP], acc[MAX_HEAD_DIM / WARP];
    for (int r = 0; r < per_lane; r++) {
        int d = lane + r * WARP;
        qv[r] = d < hd ? qh[d] : 0.0f;
        acc[r] = 0.0f;
    }
    float m = -__int_as_float(0x7f800000), l = 0.0f;  // -infinity
    const int* table = block_tables + (long)seq * max_blocks;
    int tenant = seq_tenant[seq];
    for (int p = 0; p <= pos; p++) {
        int b = table[p / block_size];
        if (p % block_size == 0 && block_owner[b] != tenant) {
            if (lane == 0) atomicAdd(&violations[seq], 1);
            for (int r = 0; r < per_lane; r++) {
                int d = lane + r * WARP;
                if (d < hd) oh[d] = 0.0f;
            }
            return;
        }
        long slot = (long)b * block_size + p % block_size;
        const float* kp = k_arena + slot * slot_len + kvh * hd;
        const float* vp = v_arena + slot * slot_len + kvh * hd;
        float dot = 0.0f;
        for (int r = 0; r < per_lane; r++) {
            int d = lane + r * WARP;
            if (d < hd) dot += qv[r] * kp[d];
        }
        for (int off = WARP / 2; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffff, dot, off);
        float s = dot * scale;
        float m_new = fmaxf(m, s);
        float corr = expf(m - m_new);
        float e = expf(s - m_new);
        l = l * corr + e;
        for (int r = 0; r < per_lane; r++) {
            int d = lane + r * WARP;
            if (d < hd) acc[r] = acc[r] * corr + e * vp[d];
        }
        m = m_new;
    }
    for (int r = 0; r < per_lane; r++) {
        int d = lane + r * WARP;
        if (d < hd) oh[d] = acc[r] / l;
    }
}

// g = silu(g) * u, elementwise.
extern "C" __global__ void silu_mul(float* g, const float* u, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = g[i];
    g[i] = x / (1.0f + expf(-x)) * u[i];
}

// x += y, elementwise.
extern "C" __global__ void add_inplace(float* x, const float* y, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    x[i] += y[i];
}

// y[rows, cols] += b[cols].
extern "C" __global__ void add_bias(float* y, const float* b, int rows, int cols) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)rows * cols) return;
    y[i] += b[i % cols];
}

// Copies the given rows of x (each of width h) next to each other.
extern "C" __global__ void gather_rows(const float* x, const int* rows, float* out, int n,
                                       int h) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * h) return;
    long r = i / h, c = i % h;
    out[i] = x[(long)rows[r] * h + c];
}
