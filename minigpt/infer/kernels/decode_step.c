/* One decode step of a minigpt model (one new token for each of B rows) in plain C, called from
 * minigpt/infer/native_decode.py.
 *
 * Why C: a decode step is ~20 small tensor ops a layer, and on a CPU each eager PyTorch op costs a few
 * microseconds of dispatch whatever its size, more than the arithmetic itself on the tiny and small
 * presets. Here a step is one call, in one OpenMP parallel region, and every weight is read from memory
 * once per step whatever B is (four weight rows are loaded, then used for all B rows while in L1).
 *
 * Weights are float32 or int8 with one float32 scale per output row (w ~= q * scale, symmetric,
 * quantised in Python). Activations, norms, RoPE, softmax and the KV cache are float32 throughout.
 * The math is minigpt/model/gpt.py's forward for one token (tests/test_infer_parity.py checks the two
 * agree): q/k/v and gate/up projections concatenated by native_decode.py, RoPE in the "rotate half"
 * layout, the model's variants (per-head RMSNorm of q and k before RoPE; a ReLU-squared MLP without gate), K/V caches of shape (B, n_kv_heads, capacity, head_dim), as KVCache holds them. Row b's cache slots
 * before pad[b] are left padding and are not attended to; its token sits at position pos[b].
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int32_t d_model, n_layers, n_heads, n_kv_heads, head_dim, d_ff, vocab_size, capacity;
    int32_t int8;      /* 1: projection weights are int8 with per-row scales; 0: float32 */
    int32_t n_threads;
    float rms_norm_eps;
    int32_t qk_norm;   /* 1: each q and k head is RMS-normalised (weights L_QN, L_KN) before RoPE */
    int32_t relu2;     /* 1: the MLP is down(relu(up x)^2) and L_GU holds up only; 0: SwiGLU, L_GU = [gate; up] */
} mg_dims;

/* Per layer, in this order: input norm w, qkv W, qkv scale, o W, o scale, post norm w, gate/up W,
 * gate/up scale, down W, down scale, q norm w, k norm w, K cache, V cache (scales are NULL for float32
 * weights, the q/k norms NULL without qk_norm). */
enum { L_IN, L_QKV, L_QKV_S, L_O, L_O_S, L_POST, L_GU, L_GU_S, L_DOWN, L_DOWN_S, L_QN, L_KN, L_K, L_V, L_N };

/* Globals: embedding (float32, V x d), final norm w, head W, head scale, cos table, sin table. */
enum { G_EMB, G_NORM, G_HEAD, G_HEAD_S, G_COS, G_SIN, G_N };

/* Y[b] = W X[b] (+ R[b]) for b < B; X is B x cols (row stride xs), Y and R are B x rows (stride ys).
 * Four weight rows at a time: four independent accumulators hide the FMA latency a single running
 * sum would serialise on, and the four rows stay in L1 while every batch row uses them. */
#define GEMM_BODY(T)                                                                                   \
    const T *W = (const T *)w;                                                                         \
    int n4 = rows / 4 * 4;                                                                             \
    _Pragma("omp for schedule(static) nowait")                                                         \
    for (int i = 0; i < n4; i += 4) {                                                                  \
        const T *r0 = W + (size_t)i * cols, *r1 = r0 + cols, *r2 = r1 + cols, *r3 = r2 + cols;        \
        int b = 0;                                                                                     \
        for (; b + 1 < B; b += 2) { /* two batch rows: 8 accumulators, 6 loads per 8 FMAs */            \
            const float *x = X + (size_t)b * xs, *z = x + xs;                                          \
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f, c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f;  \
            for (int k = 0; k < cols; k++) {                                                           \
                float w0 = (float)r0[k], w1 = (float)r1[k], w2 = (float)r2[k], w3 = (float)r3[k];      \
                float xk = x[k], zk = z[k];                                                            \
                a0 += w0 * xk; a1 += w1 * xk; a2 += w2 * xk; a3 += w3 * xk;                            \
                c0 += w0 * zk; c1 += w1 * zk; c2 += w2 * zk; c3 += w3 * zk;                            \
            }                                                                                          \
            float acc[8] = {a0, a1, a2, a3, c0, c1, c2, c3};                                           \
            for (int j = 0; j < 8; j++) {                                                              \
                size_t at = (size_t)(b + j / 4) * ys + i + j % 4;                                      \
                float v = scale ? acc[j] * scale[i + j % 4] : acc[j];                                  \
                Y[at] = R ? R[at] + v : v;                                                             \
            }                                                                                          \
        }                                                                                              \
        for (; b < B; b++) {                                                                           \
            const float *x = X + (size_t)b * xs;                                                       \
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;                                          \
            for (int k = 0; k < cols; k++) {                                                           \
                float xk = x[k];                                                                       \
                a0 += (float)r0[k] * xk; a1 += (float)r1[k] * xk;                                      \
                a2 += (float)r2[k] * xk; a3 += (float)r3[k] * xk;                                      \
            }                                                                                          \
            float acc[4] = {a0, a1, a2, a3};                                                           \
            for (int j = 0; j < 4; j++) {                                                              \
                size_t at = (size_t)b * ys + i + j;                                                    \
                float v = scale ? acc[j] * scale[i + j] : acc[j];                                      \
                Y[at] = R ? R[at] + v : v;                                                             \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
    _Pragma("omp single")                                                                              \
    for (int i = n4; i < rows; i++) {                                                                  \
        const T *r = W + (size_t)i * cols;                                                             \
        for (int b = 0; b < B; b++) {                                                                  \
            const float *x = X + (size_t)b * xs;                                                     \
            float a = 0.0f;                                                                            \
            for (int k = 0; k < cols; k++) a += (float)r[k] * x[k];                                    \
            if (scale) a *= scale[i];                                                                  \
            Y[(size_t)b * ys + i] = R ? R[(size_t)b * ys + i] + a : a;                                 \
        }                                                                                              \
    }

/* Inside a parallel region; ends in a barrier (the omp single's). */
static void gemm_f32(const void *w, const float *scale, const float *X, float *Y, const float *R, int B, int rows,
                     int cols, int xs, int ys) { GEMM_BODY(float) }
static void gemm_i8(const void *w, const float *scale, const float *X, float *Y, const float *R, int B, int rows,
                    int cols, int xs, int ys) { GEMM_BODY(int8_t) }
static void gemm(const void *w, const float *scale, int int8, const float *X, int xs, float *Y, const float *R,
                 int B, int rows, int cols) {
    if (int8) gemm_i8(w, scale, X, Y, R, B, rows, cols, xs, rows);
    else gemm_f32(w, NULL, X, Y, R, B, rows, cols, xs, rows);
}

/* Each batch row normalised (one row per iteration of a worksharing loop). */
static void rms_norm_rows(const float *x, const float *w, float *out, int B, int n, float eps) {
    #pragma omp for schedule(static)
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * n;
        float *ob = out + (size_t)b * n, ss = 0.0f;
        for (int i = 0; i < n; i++) ss += xb[i] * xb[i];
        float r = 1.0f / sqrtf(ss / (float)n + eps);
        for (int i = 0; i < n; i++) ob[i] = xb[i] * r * w[i];
    }
}

/* In place on one head vector: v / rms(v) * w (the qk_norm variant). */
static void head_rms_norm(float *v, const float *w, int hd, float eps) {
    float ss = 0.0f;
    for (int j = 0; j < hd; j++) ss += v[j] * v[j];
    float r = 1.0f / sqrtf(ss / (float)hd + eps);
    for (int j = 0; j < hd; j++) v[j] = v[j] * r * w[j];
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

/* Floats of scratch mg_decode_step needs. */
int64_t mg_scratch_floats(const mg_dims *dm, int64_t B) {
    int64_t n_qkv = (int64_t)(dm->n_heads + 2 * dm->n_kv_heads) * dm->head_dim;
    return B * (3 * (int64_t)dm->d_model + n_qkv + 2 * (int64_t)dm->d_ff + (int64_t)dm->n_heads * dm->capacity);
}

/* tokens, pos, pad: B entries each. Writes K/V of each row at cache slot `slot`, row b attends over
 * slots pad[b]..slot, and writes B x vocab logits. Returns 0, or 1 for an argument out of range. */
int mg_decode_step(const mg_dims *dm, void *const *layers, void *const *globals, int64_t B, const int64_t *tokens,
                   const int64_t *pos, const int64_t *pad, int64_t slot, float *scratch, float *logits) {
    const int d = dm->d_model, H = dm->n_heads, KV = dm->n_kv_heads, hd = dm->head_dim, ff = dm->d_ff;
    const int cap = dm->capacity, q8 = dm->int8, n_qkv = (H + 2 * KV) * hd, nb = (int)B;
    const int n_gu = dm->relu2 ? ff : 2 * ff;  /* rows of the MLP's input projection, and act's row stride */
    if (B < 1 || slot < 0 || slot >= cap) return 1;
    for (int b = 0; b < nb; b++)
        if (tokens[b] < 0 || tokens[b] >= dm->vocab_size || pos[b] < 0 || pad[b] < 0 || pad[b] > slot) return 1;
    float *x = scratch, *h = x + (size_t)nb * d, *x2 = h + (size_t)nb * d, *qkv = x2 + (size_t)nb * d;
    float *act = qkv + (size_t)nb * n_qkv, *att = act + (size_t)nb * 2 * ff;
    const float inv_sqrt = 1.0f / sqrtf((float)hd);
    for (int b = 0; b < nb; b++)
        memcpy(x + (size_t)b * d, (const float *)globals[G_EMB] + tokens[b] * d, sizeof(float) * d);

    #pragma omp parallel num_threads(dm->n_threads)
    {
        for (int l = 0; l < dm->n_layers; l++) {
            void *const *w = layers + (size_t)l * L_N;
            float *kc = (float *)w[L_K], *vc = (float *)w[L_V];
            rms_norm_rows(x, (const float *)w[L_IN], h, nb, d, dm->rms_norm_eps);
            gemm(w[L_QKV], (const float *)w[L_QKV_S], q8, h, d, qkv, NULL, nb, n_qkv, d);
            #pragma omp for schedule(static)
            for (int b = 0; b < nb; b++) {
                float *qb = qkv + (size_t)b * n_qkv;
                const float *c = (const float *)globals[G_COS] + pos[b] * hd, *s = (const float *)globals[G_SIN] + pos[b] * hd;
                for (int hh = 0; hh < H + KV; hh++) {
                    if (dm->qk_norm)
                        head_rms_norm(qb + hh * hd, (const float *)w[hh < H ? L_QN : L_KN], hd, dm->rms_norm_eps);
                    rope(qb + hh * hd, c, s, hd);
                }
                for (int g = 0; g < KV; g++) {
                    size_t at = (((size_t)b * KV + g) * cap + slot) * hd;
                    memcpy(kc + at, qb + (H + g) * hd, sizeof(float) * hd);
                    memcpy(vc + at, qb + (H + KV + g) * hd, sizeof(float) * hd);
                }
            }
            /* Attention, one (row, query head) per iteration; head hh reads K/V group hh / (H / KV). */
            #pragma omp for schedule(static)
            for (int bh = 0; bh < nb * H; bh++) {
                const int b = bh / H, hh = bh % H, g = hh / (H / KV), t0 = (int)pad[b];
                const float *q = qkv + (size_t)b * n_qkv + hh * hd;
                const float *kg = kc + ((size_t)b * KV + g) * cap * hd, *vg = vc + ((size_t)b * KV + g) * cap * hd;
                float *p = att + (size_t)bh * cap, *out = h + (size_t)b * d + hh * hd, mx = -INFINITY, sum = 0.0f;
                for (int t = t0; t <= slot; t++) {
                    float sc = 0.0f;
                    for (int j = 0; j < hd; j++) sc += q[j] * kg[(size_t)t * hd + j];
                    p[t] = sc * inv_sqrt;
                    if (p[t] > mx) mx = p[t];
                }
                for (int t = t0; t <= slot; t++) { p[t] = expf(p[t] - mx); sum += p[t]; }
                for (int j = 0; j < hd; j++) out[j] = 0.0f;
                for (int t = t0; t <= slot; t++) {
                    const float pt = p[t] / sum, *vt = vg + (size_t)t * hd;
                    for (int j = 0; j < hd; j++) out[j] += pt * vt[j];
                }
            }
            gemm(w[L_O], (const float *)w[L_O_S], q8, h, d, x2, x, nb, d, H * hd);
            rms_norm_rows(x2, (const float *)w[L_POST], h, nb, d, dm->rms_norm_eps);
            gemm(w[L_GU], (const float *)w[L_GU_S], q8, h, d, act, NULL, nb, n_gu, d);
            #pragma omp for schedule(static)
            for (int i = 0; i < nb * ff; i++) {
                float *row = act + (size_t)(i / ff) * n_gu;
                int j = i % ff;
                float gt = row[j];
                if (dm->relu2) row[j] = gt > 0.0f ? gt * gt : 0.0f;  /* relu(up)^2 */
                else row[j] = gt / (1.0f + expf(-gt)) * row[ff + j];  /* silu(gate) * up, in the gate's half */
            }
            /* down reads each row's first ff values of act (row stride n_gu) */
            gemm(w[L_DOWN], (const float *)w[L_DOWN_S], q8, act, n_gu, x, x2, nb, d, ff);
        }
        rms_norm_rows(x, (const float *)globals[G_NORM], h, nb, d, dm->rms_norm_eps);
        gemm(globals[G_HEAD], (const float *)globals[G_HEAD_S], q8, h, d, logits, NULL, nb, dm->vocab_size, d);
    }
    return 0;
}
