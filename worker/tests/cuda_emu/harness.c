/* Checks each CUDA kernel of the worker, run by shim.h's CPU emulation,
 * against a plain loop computing the same thing (written like the CPU
 * forward pass in model.rs: two-pass softmax, rotate-half RoPE). Launch
 * shapes are the engine's (cuda/engine.rs). Exit status 0 when all agree. */
#include "shim.h"
#include "kernels.c"

static int failures = 0;
static unsigned long long rng = 0x9E3779B97F4A7C15ull;
static float frand(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng >> 40) & 0xFFFFFF) / (float)0xFFFFFF * 2.0f - 1.0f;
}
static void fill(float* x, long n) { for (long i = 0; i < n; i++) x[i] = frand(); }
static unsigned grid_for(long n) { return (unsigned)((n + 1023) / 1024); }
static void check(const char* what, const float* got, const float* want, long n, float tol) {
    float worst = 0.0f;
    for (long i = 0; i < n; i++) {
        float d = fabsf(got[i] - want[i]);
        if (!(d <= worst)) worst = d; /* NaN counts as worst */
    }
    if (!(worst <= tol)) { failures++; printf("FAIL %s: max |diff| %g > %g\n", what, worst, tol); }
    else printf("ok   %s: max |diff| %g\n", what, worst);
}

/* ---- rms_norm ---- */
struct rms_a { const float *x, *w; float* out; int rows, h; float eps; };
static void rms_t(void* p) { struct rms_a* a = p; rms_norm(a->x, a->w, a->out, a->rows, a->h, a->eps); }
static void test_rms_norm(void) {
    enum { R = 3, H = 300 };
    static float x[R * H], w[H], out[R * H], want[R * H];
    fill(x, R * H); fill(w, H);
    for (int r = 0; r < R; r++) {
        float ms = 0; for (int c = 0; c < H; c++) ms += x[r * H + c] * x[r * H + c];
        float s = 1.0f / sqrtf(ms / H + 1e-5f);
        for (int c = 0; c < H; c++) want[r * H + c] = x[r * H + c] * s * w[c];
    }
    struct rms_a a = {x, w, out, R, H, 1e-5f};
    launch(R, 256, rms_t, &a);
    check("rms_norm", out, want, R * H, 1e-5f);
}

/* ---- rope ---- */
struct rope_a { float* x; const int* pos; const float* f; int n, heads, hd; };
static void rope_t(void* p) { struct rope_a* a = p; rope(a->x, a->pos, a->f, a->n, a->heads, a->hd); }
static void test_rope(void) {
    enum { N = 3, HEADS = 3, HD = 16 };
    static float x[N * HEADS * HD], want[N * HEADS * HD], f[HD / 2];
    int pos[N] = {0, 5, 1000};
    fill(x, N * HEADS * HD);
    memcpy(want, x, sizeof x);
    for (int i = 0; i < HD / 2; i++) f[i] = 1.0f / powf(10000.0f, 2.0f * i / HD);
    for (int t = 0; t < N; t++)
        for (int h = 0; h < HEADS; h++) {
            float* head = want + (t * HEADS + h) * HD;
            for (int i = 0; i < HD / 2; i++) {
                float ang = pos[t] * f[i], s = sinf(ang), c = cosf(ang);
                float x1 = head[i], x2 = head[i + HD / 2];
                head[i] = x1 * c - x2 * s;
                head[i + HD / 2] = x2 * c + x1 * s;
            }
        }
    struct rope_a a = {x, pos, f, N, HEADS, HD};
    launch(grid_for(N * HEADS * HD / 2), 1024, rope_t, &a);
    check("rope", x, want, N * HEADS * HD, 1e-4f);
}

/* ---- kv_write + paged_attention (GQA, two tenants, several blocks) ---- */
enum { NH = 4, NKV = 2, HD = 40, BS = 4, NB = 8, SL = NKV * HD };
struct kvw_a { const float *k, *v; float *ka, *va; const int* slots; int n, sl; };
static void kvw_t(void* p) { struct kvw_a* a = p; kv_write(a->k, a->v, a->ka, a->va, a->slots, a->n, a->sl); }
struct att_a {
    const float *q, *ka, *va; float* out; const int *seq, *pos, *tables; int mb;
    const int *st, *owner; int* viol; int n; float scale;
};
static void att_t(void* p) {
    struct att_a* a = p;
    paged_attention(a->q, a->ka, a->va, a->out, a->seq, a->pos, a->tables, a->mb, a->st,
                    a->owner, a->viol, a->n, NH, NKV, HD, BS, a->scale);
}
static void test_attention(void) {
    /* seq 0 (tenant 0): 6 tokens in blocks {3, 1}; seq 1 (tenant 1): 3 in {6}. */
    enum { N = 9, MB = 2 };
    int seq[N] = {0, 0, 0, 0, 0, 0, 1, 1, 1}, pos[N] = {0, 1, 2, 3, 4, 5, 0, 1, 2};
    int tables[2 * MB] = {3, 1, 6, 0}, st[2] = {0, 1};
    int owner[NB] = {-1, 0, -1, 0, -1, -1, 1, -1};
    int slots[N];
    for (int t = 0; t < N; t++) slots[t] = tables[seq[t] * MB + pos[t] / BS] * BS + pos[t] % BS;
    static float k[N * SL], v[N * SL], q[N * NH * HD], ka[NB * BS * SL], va[NB * BS * SL];
    static float out[N * NH * HD], want[N * NH * HD];
    fill(k, N * SL); fill(v, N * SL); fill(q, N * NH * HD);
    struct kvw_a w = {k, v, ka, va, slots, N, SL};
    launch(grid_for(N * SL), 1024, kvw_t, &w);
    for (int t = 0; t < N; t++) {
        float got = ka[slots[t] * SL + SL - 1], exp = k[t * SL + SL - 1];
        if (got != exp) { failures++; printf("FAIL kv_write: token %d not in its slot\n", t); }
    }
    float scale = 1.0f / sqrtf((float)HD);
    for (int t = 0; t < N; t++)
        for (int h = 0; h < NH; h++) {
            int kvh = h / (NH / NKV);
            const float* qh = q + (t * NH + h) * HD;
            float sc[16], m = -1e30f, sum = 0;
            int first = t - pos[t]; /* this sequence's tokens are contiguous here */
            for (int p = 0; p <= pos[t]; p++) {
                float d = 0;
                for (int i = 0; i < HD; i++) d += qh[i] * k[(first + p) * SL + kvh * HD + i];
                sc[p] = d * scale; if (sc[p] > m) m = sc[p];
            }
            for (int p = 0; p <= pos[t]; p++) { sc[p] = expf(sc[p] - m); sum += sc[p]; }
            for (int i = 0; i < HD; i++) {
                float o = 0;
                for (int p = 0; p <= pos[t]; p++) o += sc[p] / sum * v[(first + p) * SL + kvh * HD + i];
                want[(t * NH + h) * HD + i] = o;
            }
        }
    int viol[2] = {0, 0};
    struct att_a a = {q, ka, va, out, seq, pos, tables, MB, st, owner, viol, N, scale};
    launch(grid_for(N * NH * 32), 1024, att_t, &a);
    check("paged_attention", out, want, N * NH * HD, 1e-5f);
    if (viol[0] || viol[1]) { failures++; printf("FAIL paged_attention: violations %d %d\n", viol[0], viol[1]); }

    /* Block 1 now belongs to tenant 1: seq 0's tokens that reach it (pos >= 4)
     * must read nothing, get zeros and count a violation; the rest unchanged. */
    owner[1] = 1;
    memset(out, 0x7f, sizeof out);
    launch(grid_for(N * NH * 32), 1024, att_t, &a);
    int bad = 0;
    for (int t = 0; t < N; t++)
        for (int i = 0; i < NH * HD; i++) {
            float o = out[t * NH * HD + i], exp = (seq[t] == 0 && pos[t] >= 4) ? 0.0f : want[t * NH * HD + i];
            if (fabsf(o - exp) > 1e-5f) bad++;
        }
    if (viol[0] != 2 * NH || viol[1] != 0 || bad) {
        failures++;
        printf("FAIL owner check: violations %d %d (want %d 0), %d wrong outputs\n", viol[0], viol[1], 2 * NH, bad);
    } else printf("ok   paged_attention refuses a block of another tenant (%d violations)\n", viol[0]);
}

/* ---- zero_blocks ---- */
struct zb_a { float* arena; const int* blocks; int nb, bl, layers; long stride; };
static void zb_t(void* p) { struct zb_a* a = p; zero_blocks(a->arena, a->blocks, a->nb, a->bl, a->layers, a->stride); }
static void test_zero_blocks(void) {
    enum { L = 2, BLOCKS = 5, BL = 12 };
    static float arena[L * BLOCKS * BL], want[L * BLOCKS * BL];
    fill(arena, L * BLOCKS * BL);
    memcpy(want, arena, sizeof arena);
    int ids[2] = {4, 1};
    for (int l = 0; l < L; l++)
        for (int b = 0; b < 2; b++) memset(want + l * BLOCKS * BL + ids[b] * BL, 0, BL * sizeof(float));
    struct zb_a a = {arena, ids, 2, BL, L, BLOCKS * BL};
    launch(grid_for(L * 2 * BL), 1024, zb_t, &a);
    check("zero_blocks", arena, want, L * BLOCKS * BL, 0.0f);
}

/* ---- elementwise and gathers ---- */
struct ew_a { float* x; const float* y; long n; int which; };
static void ew_t(void* p) {
    struct ew_a* a = p;
    if (a->which == 0) silu_mul(a->x, a->y, a->n); else add_inplace(a->x, a->y, a->n);
}
struct bias_a { float* y; const float* b; int rows, cols; };
static void bias_t(void* p) { struct bias_a* a = p; add_bias(a->y, a->b, a->rows, a->cols); }
struct eg_a { const float* e; const unsigned* toks; float* x; int n, h; };
static void eg_t(void* p) { struct eg_a* a = p; embed_gather(a->e, a->toks, a->x, a->n, a->h); }
struct gr_a { const float* x; const int* rows; float* out; int n, h; };
static void gr_t(void* p) { struct gr_a* a = p; gather_rows(a->x, a->rows, a->out, a->n, a->h); }
static void test_small(void) {
    enum { N = 1500, R = 3, C = 7, V = 10, H = 6 };
    static float g[N], u[N], want[N];
    fill(g, N); fill(u, N);
    for (int i = 0; i < N; i++) want[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    struct ew_a s = {g, u, N, 0};
    launch(grid_for(N), 1024, ew_t, &s);
    check("silu_mul", g, want, N, 1e-6f);
    for (int i = 0; i < N; i++) want[i] = g[i] + u[i];
    struct ew_a ad = {g, u, N, 1};
    launch(grid_for(N), 1024, ew_t, &ad);
    check("add_inplace", g, want, N, 0.0f);
    static float y[R * C], b[C], yw[R * C];
    fill(y, R * C); fill(b, C);
    for (int i = 0; i < R * C; i++) yw[i] = y[i] + b[i % C];
    struct bias_a ba = {y, b, R, C};
    launch(grid_for(R * C), 1024, bias_t, &ba);
    check("add_bias", y, yw, R * C, 0.0f);
    static float e[V * H], x[3 * H], xw[3 * H];
    unsigned toks[3] = {9, 0, 4};
    fill(e, V * H);
    for (int t = 0; t < 3; t++) memcpy(xw + t * H, e + toks[t] * H, H * sizeof(float));
    struct eg_a ea = {e, toks, x, 3, H};
    launch(grid_for(3 * H), 1024, eg_t, &ea);
    check("embed_gather", x, xw, 3 * H, 0.0f);
    int rows[2] = {2, 0};
    static float o[2 * H], ow[2 * H];
    memcpy(ow, xw + 2 * H, H * sizeof(float));
    memcpy(ow + H, xw, H * sizeof(float));
    struct gr_a ga = {xw, rows, o, 2, H};
    launch(grid_for(2 * H), 1024, gr_t, &ga);
    check("gather_rows", o, ow, 2 * H, 0.0f);
}

int main(void) {
    test_rms_norm();
    test_rope();
    test_attention();
    test_zero_blocks();
    test_small();
    printf("%s\n", failures ? "FAILED" : "all kernels agree");
    return failures ? 1 : 0;
}
