/* One decode step of a minigpt model (batch 1) in plain C, called from minigpt/native_decode.py.
 *
 * Why C: at batch 1 a step is ~20 small tensor ops a layer, and on a CPU each eager PyTorch op costs
 * a few microseconds of dispatch whatever its size, more than the arithmetic itself on the tiny and
 * small presets. Here a step is one call: the weights are read once, in one OpenMP parallel region.
 *
 * Weights are float32 or int8 with one float32 scale per output row (w ~= q * scale, symmetric,
 * quantised in Python). Activations, norms, RoPE, softmax and the KV cache are float32 throughout.
 * The layout matches minigpt/model.py: q/k/v and gate/up projections concatenated, RoPE in the
 * "rotate half" layout, K/V caches of shape (n_kv_heads, capacity, head_dim) for the single row.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int32_t d_model, n_layers, n_heads, n_kv_heads, head_dim, d_ff, vocab_size, capacity;
    int32_t int8;      /* 1: projection weights are int8 with per-row scales; 0: float32 */
    int32_t n_threads;
    float rms_norm_eps;
} mg_dims;

/* Per layer, in this order: input norm w, qkv W, qkv scale, o W, o scale, post norm w, gate/up W,
 * gate/up scale, down W, down scale, K cache, V cache (scales are NULL for float32 weights). */
enum { L_IN, L_QKV, L_QKV_S, L_O, L_O_S, L_POST, L_GU, L_GU_S, L_DOWN, L_DOWN_S, L_K, L_V, L_N };

/* Globals: embedding (float32, V x d), final norm w, head W, head scale, cos table, sin table. */
enum { G_EMB, G_NORM, G_HEAD, G_HEAD_S, G_COS, G_SIN, G_N };

/* Four rows at a time: four independent accumulators hide the FMA latency that a single running
 * sum would serialise on, and x is loaded once for the four. */
#define GEMV_BODY(T)                                                                                   \
    const T *W = (const T *)w;                                                                         \
    int n4 = rows / 4 * 4;                                                                             \
    _Pragma("omp for schedule(static) nowait")                                                         \
    for (int i = 0; i < n4; i += 4) {                                                                  \
        const T *r0 = W + (size_t)i * cols, *r1 = r0 + cols, *r2 = r1 + cols, *r3 = r2 + cols;        \
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;                                              \
        for (int k = 0; k < cols; k++) {                                                               \
            float xk = x[k];                                                                           \
            a0 += (float)r0[k] * xk; a1 += (float)r1[k] * xk;                                          \
            a2 += (float)r2[k] * xk; a3 += (float)r3[k] * xk;                                          \
        }                                                                                              \
        float acc[4] = {a0, a1, a2, a3};                                                               \
        for (int j = 0; j < 4; j++) {                                                                  \
            float v = scale ? acc[j] * scale[i + j] : acc[j];                                          \
            y[i + j] = residual ? residual[i + j] + v : v;                                             \
        }                                                                                              \
    }                                                                                                  \
    _Pragma("omp single")                                                                              \
    for (int i = n4; i < rows; i++) {                                                                  \
        const T *r = W + (size_t)i * cols;                                                             \
        float a = 0.0f;                                                                                \
        for (int k = 0; k < cols; k++) a += (float)r[k] * x[k];                                        \
        if (scale) a *= scale[i];                                                                      \
        y[i] = residual ? residual[i] + a : a;                                                         \
    }

/* y = W x (+ residual) for this thread's share of the rows, inside a parallel region; ends in a barrier.
 * int8 weights carry one scale per row; float32 weights pass scale NULL. */
static void gemv_f32(const void *w, const float *scale, const float *x, float *y, int rows, int cols,
                     const float *residual) { GEMV_BODY(float) }
static void gemv_i8(const void *w, const float *scale, const float *x, float *y, int rows, int cols,
                    const float *residual) { GEMV_BODY(int8_t) }
static void gemv(const void *w, const float *scale, int int8, const float *x, float *y, int rows, int cols,
                 const float *residual) {
    if (int8) gemv_i8(w, scale, x, y, rows, cols, residual);
    else gemv_f32(w, NULL, x, y, rows, cols, residual);
}

static void rms_norm(const float *x, const float *w, float *out, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * r * w[i];
}

/* In place on one head vector: [a, b] -> [a*c - b*s, b*c + a*s] with the tables' two halves. */
static void rope(float *v, const float *c, const float *s, int hd) {
    int half = hd / 2;
    for (int j = 0; j < half; j++) {
        float a = v[j], b = v[j + half];
        v[j] = a * c[j] - b * s[j];
        v[j + half] = b * c[j + half] + a * s[j + half];
    }
}

/* scratch must hold d_model*3 + (n_heads + 2*n_kv_heads)*head_dim + 2*d_ff + n_heads*capacity floats.
 * Writes K/V for position `pos` at cache slot `slot`, attends over slots 0..slot, writes vocab logits. */
int mg_decode_step(const mg_dims *dm, void *const *layers, void *const *globals, int64_t token, int64_t pos,
                   int64_t slot, float *scratch, float *logits) {
    const int d = dm->d_model, H = dm->n_heads, KV = dm->n_kv_heads, hd = dm->head_dim, ff = dm->d_ff;
    const int cap = dm->capacity, q8 = dm->int8, n_qkv = (H + 2 * KV) * hd;
    if (token < 0 || token >= dm->vocab_size || slot < 0 || slot >= cap || pos < 0) return 1;
    float *x = scratch, *h = x + d, *x2 = h + d, *qkv = x2 + d, *act = qkv + n_qkv, *att = act + 2 * ff;
    const float *cos_t = (const float *)globals[G_COS] + pos * hd, *sin_t = (const float *)globals[G_SIN] + pos * hd;
    const float inv_sqrt = 1.0f / sqrtf((float)hd);
    memcpy(x, (const float *)globals[G_EMB] + token * d, sizeof(float) * d);

    #pragma omp parallel num_threads(dm->n_threads)
    {
        for (int l = 0; l < dm->n_layers; l++) {
            void *const *w = layers + (size_t)l * L_N;
            float *kc = (float *)w[L_K], *vc = (float *)w[L_V];
            #pragma omp single
            rms_norm(x, (const float *)w[L_IN], h, d, dm->rms_norm_eps);
            gemv(w[L_QKV], (const float *)w[L_QKV_S], q8, h, qkv, n_qkv, d, NULL);
            #pragma omp single
            {
                for (int hh = 0; hh < H + KV; hh++) rope(qkv + hh * hd, cos_t, sin_t, hd);
                for (int g = 0; g < KV; g++) {
                    memcpy(kc + ((size_t)g * cap + slot) * hd, qkv + (H + g) * hd, sizeof(float) * hd);
                    memcpy(vc + ((size_t)g * cap + slot) * hd, qkv + (H + KV + g) * hd, sizeof(float) * hd);
                }
            }
            /* Attention, one query head per iteration; head hh reads K/V group hh / (H / KV). */
            #pragma omp for schedule(static)
            for (int hh = 0; hh < H; hh++) {
                const float *q = qkv + hh * hd;
                const int g = hh / (H / KV);
                const float *kg = kc + (size_t)g * cap * hd, *vg = vc + (size_t)g * cap * hd;
                float *p = att + (size_t)hh * cap, *out = h + hh * hd, mx = -INFINITY, sum = 0.0f;
                for (int t = 0; t <= slot; t++) {
                    float s = 0.0f;
                    for (int j = 0; j < hd; j++) s += q[j] * kg[(size_t)t * hd + j];
                    p[t] = s * inv_sqrt;
                    if (p[t] > mx) mx = p[t];
                }
                for (int t = 0; t <= slot; t++) { p[t] = expf(p[t] - mx); sum += p[t]; }
                for (int j = 0; j < hd; j++) out[j] = 0.0f;
                for (int t = 0; t <= slot; t++) {
                    const float pt = p[t] / sum, *vt = vg + (size_t)t * hd;
                    for (int j = 0; j < hd; j++) out[j] += pt * vt[j];
                }
            }
            gemv(w[L_O], (const float *)w[L_O_S], q8, h, x2, d, H * hd, x);
            #pragma omp single
            rms_norm(x2, (const float *)w[L_POST], h, d, dm->rms_norm_eps);
            gemv(w[L_GU], (const float *)w[L_GU_S], q8, h, act, 2 * ff, d, NULL);
            #pragma omp for schedule(static)
            for (int i = 0; i < ff; i++) {
                float g = act[i];
                act[i] = g / (1.0f + expf(-g)) * act[ff + i];
            }
            gemv(w[L_DOWN], (const float *)w[L_DOWN_S], q8, act, x, d, ff, x2);
        }
        #pragma omp single
        rms_norm(x, (const float *)globals[G_NORM], h, d, dm->rms_norm_eps);
        gemv(globals[G_HEAD], (const float *)globals[G_HEAD_S], q8, h, logits, dm->vocab_size, d, NULL);
    }
    return 0;
}
