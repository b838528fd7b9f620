/* Runs the worker's CUDA kernels (kernels.cu, with `extern "C"` removed) as
 * plain C on the CPU: one POSIX thread per CUDA thread, the blocks of a
 * launch one after another, __syncthreads as a block barrier and
 * __shfl_xor_sync through a per-warp exchange buffer. Slow, and only for
 * checking what the kernels compute, not how fast. */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { unsigned x, y, z; } dim3;
static __thread dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;

#define __global__
#define __shared__
#define MAX_THREADS 1024
/* The one dynamic shared array the kernels declare (`extern __shared__
 * float partial[]`): blocks run one at a time, so one copy serves all. */
float partial[MAX_THREADS];

static pthread_barrier_t block_bar;
static pthread_barrier_t warp_bar[MAX_THREADS / 32];
static float shfl_buf[MAX_THREADS];

static void __syncthreads(void) { pthread_barrier_wait(&block_bar); }

static float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
    (void)mask;
    unsigned t = threadIdx.x, w = t / 32;
    shfl_buf[t] = v;
    pthread_barrier_wait(&warp_bar[w]);
    float r = shfl_buf[t ^ (unsigned)lane_mask];
    pthread_barrier_wait(&warp_bar[w]);
    return r;
}

static int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

typedef void (*thunk_t)(void*);
struct emu_thread { unsigned tid, bid; thunk_t f; void* ctx; };

static void* emu_run(void* p) {
    struct emu_thread* t = p;
    threadIdx.x = t->tid; threadIdx.y = threadIdx.z = 0;
    blockIdx.x = t->bid; blockIdx.y = blockIdx.z = 0;
    t->f(t->ctx);
    return NULL;
}

/* Launches `f(ctx)` on a grid of `grid` blocks of `block` threads (block a
 * multiple of 32, or less than 32). */
static void launch(unsigned grid, unsigned block, thunk_t f, void* ctx) {
    if (block > MAX_THREADS) { fprintf(stderr, "block too large\n"); exit(2); }
    gridDim.x = grid; gridDim.y = gridDim.z = 1;
    blockDim.x = block; blockDim.y = blockDim.z = 1;
    unsigned warps = (block + 31) / 32;
    pthread_t th[MAX_THREADS];
    struct emu_thread args[MAX_THREADS];
    for (unsigned b = 0; b < grid; b++) {
        pthread_barrier_init(&block_bar, NULL, block);
        for (unsigned w = 0; w < warps; w++)
            pthread_barrier_init(&warp_bar[w], NULL, block < 32 ? block : 32);
        for (unsigned i = 0; i < block; i++) {
            args[i] = (struct emu_thread){i, b, f, ctx};
            if (pthread_create(&th[i], NULL, emu_run, &args[i]) != 0) {
                fprintf(stderr, "pthread_create failed\n");
                exit(2);
            }
        }
        for (unsigned i = 0; i < block; i++) pthread_join(th[i], NULL);
        pthread_barrier_destroy(&block_bar);
        for (unsigned w = 0; w < warps; w++) pthread_barrier_destroy(&warp_bar[w]);
    }
}
