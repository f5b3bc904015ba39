/*
 * cpu_backend.c — the `cpu` backend: its own implementations of the ops the engine uses (dequant, quantized and float
 * GEMV/GEMM, expert FFN, routed MoE, routers, grouping), SIMD where it pays and multithreaded, and bitwise equal to
 * the reference because every reduction follows the canonical order of KERNELS.md §1:
 *   - quantized linears: the L16 kernels of cpu_gemv.c (one 16-lane accumulator per output row);
 *   - float linears and router logits: L16 with the 16 lanes in one AVX-512 register (two AVX2 registers);
 *   - experts: gate/up GEMM over all rows of an expert at once, s = RN32(silu(g)·u), down GEMM;
 *   - MoE: per-expert batches, contributions c = RN32(p·y) kept per flat index, then the slot-order SEQ sum.
 * The f16-accumulating modes (conformance-only, no engine use) and the element-wise ops run the reference.
 */
#include "cpu_backend.h"
#include "cpu_gemv.h"
#include "pool.h"
#include "trellis/alloc.h"
#include "trellis/codebook.h"
#include "trellis/fp16.h"
#include "trellis/numeric.h"
#include "trellis/pack.h"

#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct cpu_impl {
    tr_pool *pool;
    tr_simd_level level;
} cpu_impl;

static cpu_impl *impl_of(tr_backend *be) { return be->impl; }

/* ---- dequant: per tile, 16 weights at a time; the products in §6.1 order, one F16C rounding ------------------- */

__attribute__((target("avx2,fma,f16c"))) static void dequant_row16_avx2(const float *grid, const uint8_t *q,
                                                                          float s, const float *su, float sv,
                                                                          int fold, uint16_t *out, unsigned n)
{
    float g[16], v[16];
    for (unsigned k = 0; k < 16; k++)
        g[k] = grid[q[k]];
    for (unsigned h = 0; h < 16; h += 8) {
        __m256 x = _mm256_mul_ps(_mm256_loadu_ps(g + h), _mm256_set1_ps(s));
        if (fold)
            x = _mm256_mul_ps(_mm256_mul_ps(x, _mm256_loadu_ps(su + h)), _mm256_set1_ps(sv));
        _mm256_storeu_ps(v + h, x);
    }
    uint16_t hbits[16];
    _mm_storeu_si128((__m128i *)(void *)hbits, _mm256_cvtps_ph(_mm256_loadu_ps(v), _MM_FROUND_TO_NEAREST_INT));
    _mm_storeu_si128((__m128i *)(void *)(hbits + 8),
                     _mm256_cvtps_ph(_mm256_loadu_ps(v + 8), _MM_FROUND_TO_NEAREST_INT));
    memcpy(out, hbits, n * sizeof *out);
}

typedef struct dequant_job {
    const tr_qweight *w;
    uint16_t *out;
    int fold, simd;
} dequant_job;

/* One tile row of tiles (16 output rows): task = output tile index. */
static void dequant_task(void *ctx, size_t to)
{
    const dequant_job *j = ctx;
    const tr_qweight *w = j->w;
    const float *grid = tr_grid(w->bits);
    uint32_t TI = tr_tiles_of(w->I);
    uint8_t q[256];
    float su_pad[16];
    for (uint32_t ti = 0; ti < TI; ti++) {
        tr_unpack_tile(w->indices + 1 + ((uint64_t)to * TI + ti) * tr_tile_bytes(w->bits), w->bits, q);
        uint32_t i0 = ti * 16, n = w->I - i0 < 16 ? w->I - i0 : 16;
        for (unsigned k = 0; k < 16; k++)
            su_pad[k] = k < n ? w->su[i0 + k] : 1.0f;
        for (unsigned lo = 0; lo < 16; lo++) {
            uint32_t o = (uint32_t)to * 16 + lo;
            if (o >= w->O)
                break;
            uint16_t *dst = j->out + (size_t)o * w->I + i0;
            int one_group = (i0 / w->gs) == ((i0 + n - 1) / w->gs);
            if (j->simd && one_group) {
                dequant_row16_avx2(grid, q + lo * 16, w->scales[(size_t)(i0 / w->gs) * w->O + o], su_pad, w->sv[o],
                                   j->fold, dst, n);
                continue;
            }
            for (unsigned k = 0; k < n; k++) {   /* groups that change inside the chunk: element by element */
                float v = grid[q[lo * 16 + k]] * w->scales[(size_t)((i0 + k) / w->gs) * w->O + o];
                if (j->fold)
                    v = (v * su_pad[k]) * w->sv[o];
                dst[k] = tr_f32_to_f16(v);
            }
        }
    }
}

static int cpu_dequant(tr_backend *be, const tr_qweight *w, uint16_t *out, tr_error *err)
{
    tr_error e;
    if (tr_qweight_check(w, "dequant_grid", "w", &e) != TR_OK)   /* validation with the op's codes, via ref */
        return tr_ref_dequant_grid(w, out, err);
    dequant_job j = {w, out, 1, impl_of(be)->level >= TR_SIMD_AVX2};   /* W16, signs folded (KERNELS.md §4.1) */
    tr_pool_run(impl_of(be)->pool, tr_tiles_of(w->O), dequant_task, &j);
    return TR_OK;
}

/* ---- quantized GEMM ------------------------------------------------------------------------------------------ */

static int cpu_gemm_trellis(tr_backend *be, const tr_qweight *w, const float *X, uint32_t M, tr_acc acc, int out_f16,
                            void *Y, tr_error *err)
{
    if (acc == TR_ACC_F16)
        return tr_ref_gemm_trellis(w, X, M, acc, out_f16, Y, err);
    cpu_impl *im = impl_of(be);
    if (!out_f16)
        return tr_cpu_gemm_trellis_level(w, X, M, (float *)Y, im->pool, im->level, err);
    float *tmp = tr_malloc((size_t)M * w->O * sizeof *tmp + 4);
    if (!tmp)
        return tr_fail(err, TR_E_NOMEM, "gemm_trellis", "out of memory");
    int rc = tr_cpu_gemm_trellis_level(w, X, M, tmp, im->pool, im->level, err);
    if (rc == TR_OK)
        tr_f32_to_f16_n(tmp, (uint16_t *)Y, (size_t)M * w->O);   /* one conversion, as the reference */
    tr_dealloc(tmp);
    return rc;
}

/* ---- float GEMM: L16 with the lanes in SIMD registers -------------------------------------------------------- */

__attribute__((target("avx512f"))) static float dot_l16_avx512(const float *a, const float *b, size_t n)
{
    __m512 q = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        q = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), q);
    if (i < n) {   /* the last, short chunk: masked lanes keep their value (no 0·x products) */
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        q = _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), q, m);
    }
    float lanes[16];
    _mm512_storeu_ps(lanes, q);
    return tr_l16_reduce(lanes);
}

__attribute__((target("avx2,fma"))) static float dot_l16_avx2(const float *a, const float *b, size_t n)
{
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), hi);
    }
    float lanes[16];
    _mm256_storeu_ps(lanes, lo);
    _mm256_storeu_ps(lanes + 8, hi);
    for (; i < n; i++)   /* tail: lane i mod 16, scalar fmaf */
        lanes[i % 16] = fmaf(a[i], b[i], lanes[i % 16]);
    return tr_l16_reduce(lanes);
}

static float dot_l16(tr_simd_level level, const float *a, const float *b, size_t n)
{
    if (level >= TR_SIMD_AVX512)
        return dot_l16_avx512(a, b, n);
    if (level >= TR_SIMD_AVX2)
        return dot_l16_avx2(a, b, n);
    return tr_dot_l16(a, b, n);
}

typedef struct f32_job {
    const float *W, *X, *scale;
    float *Y;
    uint32_t M, O, I;
    tr_simd_level level;
} f32_job;

#define F32_ROWS_PER_TASK 16

static void f32_task(void *ctx, size_t task)
{
    const f32_job *j = ctx;
    uint32_t o0 = (uint32_t)task * F32_ROWS_PER_TASK, o1 = o0 + F32_ROWS_PER_TASK < j->O ? o0 + F32_ROWS_PER_TASK : j->O;
    for (uint32_t m = 0; m < j->M; m++)
        for (uint32_t o = o0; o < o1; o++) {
            float acc = dot_l16(j->level, j->X + (size_t)m * j->I, j->W + (size_t)o * j->I, j->I);
            j->Y[(size_t)m * j->O + o] = j->scale ? acc * j->scale[o] : acc;
        }
}

static void run_f32(cpu_impl *im, const float *W, const float *X, const float *scale, uint32_t M, uint32_t O,
                    uint32_t I, float *Y)
{
    f32_job j = {W, X, scale, Y, M, O, I, im->level};
    tr_pool_run(im->pool, (O + F32_ROWS_PER_TASK - 1) / F32_ROWS_PER_TASK, f32_task, &j);
}

static int cpu_gemm_f32(tr_backend *be, const float *W, const float *X, uint32_t M, uint32_t O, uint32_t I, float *Y,
                        tr_error *err)
{
    (void)err;
    run_f32(impl_of(be), W, X, NULL, M, O, I, Y);
    return TR_OK;
}

static int cpu_router_logits(tr_backend *be, const float *x, const float *Wr, const float *wscale, uint32_t T,
                             uint32_t H, uint32_t E, float *logits, tr_error *err)
{
    (void)err;
    run_f32(impl_of(be), Wr, x, wscale, T, E, H, logits);   /* l = L16 Σ x·Wr, then RN32(l·scale) for i8 weights */
    return TR_OK;
}

/* ---- experts ----------------------------------------------------------------------------------------------------- */

/* Y = SwiGLU expert over R rows (acc f32): G = X·Wgᵀ, U = X·Wuᵀ (all rows at once), S = RN32(silu(G)·U), Y = S·Wdᵀ. */
static int expert_rows(cpu_impl *im, const tr_expert *e, const float *X, uint32_t R, float *Y, tr_error *err)
{
    uint32_t I = e->gate->O;
    float *G = tr_malloc_aligned((size_t)R * I * 2 * sizeof *G);
    if (!G)
        return tr_fail(err, TR_E_NOMEM, "expert_ffn", "out of memory");
    float *U = G + (size_t)R * I;
    int rc = tr_cpu_gemm_trellis_level(e->gate, X, R, G, im->pool, im->level, err);
    if (rc == TR_OK)
        rc = tr_cpu_gemm_trellis_level(e->up, X, R, U, im->pool, im->level, err);
    for (size_t i = 0; rc == TR_OK && i < (size_t)R * I; i++)
        G[i] = tr_silu(G[i]) * U[i];
    if (rc == TR_OK)
        rc = tr_cpu_gemm_trellis_level(e->down, G, R, Y, im->pool, im->level, err);
    tr_dealloc_aligned(G);
    return rc;
}

static int cpu_expert_ffn(tr_backend *be, const tr_expert *e, const float *x, uint32_t R, tr_acc acc, void *y,
                          tr_error *err)
{
    int rc = tr_expert_check(e, err);
    if (rc != TR_OK || acc == TR_ACC_F16)
        return rc != TR_OK ? rc : tr_ref_expert_ffn(e, x, R, acc, y, err);
    return expert_rows(impl_of(be), e, x, R, (float *)y, err);
}

/* ---- grouping: a stable counting sort by expert (MOE.md §3.2) --------------------------------------------------- */

static int cpu_moe_group(tr_backend *be, const int32_t *ids, const float *probs, uint32_t T, uint32_t k, uint32_t E,
                         tr_grouping *g, tr_error *err)
{
    (void)be;
    int rc = tr_ref_validate_ids(ids, T, k, E, err);
    if (rc != TR_OK)
        return rc;
    uint32_t N = T * k, *next = tr_calloc((size_t)E + 1, sizeof *next);
    if (!next)
        return tr_fail(err, TR_E_NOMEM, "moe_group", "out of memory");
    for (uint32_t f = 0; f < N; f++)   /* counts, shifted by one so the prefix sum gives the offsets */
        next[ids[f] + 1]++;
    for (uint32_t e = 0; e < E; e++)
        next[e + 1] += next[e];
    memcpy(g->expert_offsets, next, ((size_t)E + 1) * sizeof *next);
    for (uint32_t f = 0; f < N; f++) {   /* ascending f keeps each segment in flat-index order */
        uint32_t pos = next[ids[f]]++;
        g->sorted_token_ids[pos] = f;
        g->sorted_probs[pos] = probs[f];
        g->inverse[f] = pos;
    }
    g->T = T;
    g->k = k;
    g->E = E;
    g->N = N;
    tr_dealloc(next);
    return TR_OK;
}

/* ---- routed MoE (KERNELS.md §4.8 / MOE.md §2): experts in batches, slot-order combine ---------------------------- */

static int cpu_moe_swiglu(tr_backend *be, const tr_expert *experts, uint32_t E, const float *x, uint32_t T,
                          const int32_t *ids, const float *probs, uint32_t k, tr_acc acc, float *out, tr_error *err)
{
    if (acc == TR_ACC_F16)
        return tr_ref_moe_swiglu(experts, E, x, T, ids, probs, k, acc, out, err);
    int rc = tr_ref_validate_ids(ids, T, k, E, err);
    if (rc != TR_OK || T == 0)
        return rc;
    for (uint32_t f = 0; f < T * k; f++)
        if ((rc = tr_expert_check(&experts[ids[f]], err)) != TR_OK)
            return rc;
    uint32_t H = experts[ids[0]].gate->I, N = T * k;
    for (uint32_t f = 0; f < N; f++)
        if (experts[ids[f]].gate->I != H || experts[ids[f]].gate->O != experts[ids[0]].gate->O)
            return tr_fail(err, TR_E_INVALID_SHAPE, "moe_swiglu", "experts %d and %d differ in shape", ids[f], ids[0]);
    tr_grouping g = {0};
    g.sorted_token_ids = tr_malloc((size_t)N * sizeof *g.sorted_token_ids);
    g.expert_offsets = tr_malloc(((size_t)E + 1) * sizeof *g.expert_offsets);
    g.sorted_probs = tr_malloc((size_t)N * sizeof *g.sorted_probs);
    g.inverse = tr_malloc((size_t)N * sizeof *g.inverse);
    float *C = tr_malloc_aligned((size_t)N * H * sizeof *C);          /* contribution of every flat index */
    float *Xe = tr_malloc_aligned((size_t)N * H * sizeof *Xe), *Ye = tr_malloc_aligned((size_t)N * H * sizeof *Ye);
    if (!g.sorted_token_ids || !g.expert_offsets || !g.sorted_probs || !g.inverse || !C || !Xe || !Ye)
        rc = tr_fail(err, TR_E_NOMEM, "moe_swiglu", "out of memory");
    if (rc == TR_OK)
        rc = cpu_moe_group(be, ids, probs, T, k, E, &g, err);
    for (uint32_t e = 0; rc == TR_OK && e < E; e++) {
        uint32_t r0 = g.expert_offsets[e], n = g.expert_offsets[e + 1] - r0;
        if (n == 0)
            continue;
        for (uint32_t r = 0; r < n; r++)   /* gather the rows of this expert */
            memcpy(Xe + (size_t)r * H, x + (size_t)(g.sorted_token_ids[r0 + r] / k) * H, H * sizeof *Xe);
        rc = expert_rows(impl_of(be), &experts[e], Xe, n, Ye, err);
        for (uint32_t r = 0; rc == TR_OK && r < n; r++) {
            uint32_t f = g.sorted_token_ids[r0 + r];
            float p = probs[f];
            for (uint32_t h = 0; h < H; h++)
                C[(size_t)f * H + h] = p * Ye[(size_t)r * H + h];   /* c = RN32(p·y) */
        }
    }
    for (uint32_t t = 0; rc == TR_OK && t < T; t++)   /* slot-order SEQ sum from +0 */
        for (uint32_t h = 0; h < H; h++) {
            float a = 0.0f;
            for (uint32_t j = 0; j < k; j++)
                a = a + C[((size_t)t * k + j) * H + h];
            out[(size_t)t * H + h] = a;
        }
    tr_dealloc(g.sorted_token_ids);
    tr_dealloc(g.expert_offsets);
    tr_dealloc(g.sorted_probs);
    tr_dealloc(g.inverse);
    tr_dealloc_aligned(C);
    tr_dealloc_aligned(Xe);
    tr_dealloc_aligned(Ye);
    return rc;
}

/* ---- routers: selection by sorting expert numbers with the comparator of MOE.md §1.3 ---------------------------- */

static int score_cmp(const void *pa, const void *pb, void *ctx)
{
    const float *s = ctx;
    uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
    int na = isnan(s[a]), nb = isnan(s[b]);
    if (na != nb)
        return na ? 1 : -1;               /* NaN ranks below every number */
    if (!na && s[a] != s[b])
        return s[a] > s[b] ? -1 : 1;      /* higher score first (+0 == -0) */
    return a < b ? -1 : 1;                /* ties: lower expert first */
}

/* The first k of the allowed experts in comparator order. */
static void select_sorted(const float *score, const uint8_t *allowed, uint32_t E, uint32_t k, uint32_t *order,
                          int32_t *ids)
{
    uint32_t n = 0;
    for (uint32_t e = 0; e < E; e++)
        if (allowed[e])
            order[n++] = e;
    qsort_r(order, n, sizeof *order, score_cmp, (void *)score);
    for (uint32_t j = 0; j < k; j++)
        ids[j] = (int32_t)order[j];
}

typedef struct route_buf {
    float *p, *tmp, *gscore;
    uint8_t *allowed, *gallow;
    uint32_t *order;
    int32_t *top;
} route_buf;

static void route_softmax(const tr_router_cfg *c, const float *l, route_buf *b, int32_t *ids, float *w)
{
    int f16 = c->mode == TR_ROUTER_SOFTMAX_TOPK_F16;
    float m = NAN, S = 0.0f;
    for (uint32_t e = 0; e < c->E; e++) {   /* l' = l/τ (f16 mode: rounded to f16), m = max of the non-NaN */
        float v = c->temperature != 1.0f ? l[e] / c->temperature : l[e];
        b->tmp[e] = f16 ? tr_f16_to_f32(tr_f32_to_f16(v)) : v;
        if (b->allowed[e] && !isnan(b->tmp[e]) && (isnan(m) || b->tmp[e] > m))
            m = b->tmp[e];
    }
    for (uint32_t e = 0; e < c->E; e++) {   /* ex = tr_expf(l' - m), S = SEQ Σ ex in expert order */
        b->tmp[e] = b->allowed[e] ? tr_expf(b->tmp[e] - m) : 0.0f;
        if (b->allowed[e])
            S = S + b->tmp[e];
    }
    for (uint32_t e = 0; e < c->E; e++) {
        float q = b->tmp[e] / S;
        b->p[e] = !b->allowed[e] ? 0.0f : f16 ? tr_f16_to_f32(tr_f32_to_f16(q)) : q;
    }
    select_sorted(b->p, b->allowed, c->E, c->k, b->order, ids);
    float D = 0.0f;
    for (uint32_t j = 0; j < c->k; j++)
        D = D + b->p[ids[j]];
    if (f16)
        D = tr_f16_to_f32(tr_f32_to_f16(D));
    for (uint32_t j = 0; j < c->k; j++) {
        float v = c->norm_topk_prob ? b->p[ids[j]] / D : b->p[ids[j]];
        w[j] = f16 && c->norm_topk_prob ? tr_f16_to_f32(tr_f32_to_f16(v)) : v;
    }
}

static void route_noaux(const tr_router_cfg *c, const float *l, const float *bias, route_buf *b, int32_t *ids,
                        float *w)
{
    float *s = b->p, *sel = b->tmp;
    for (uint32_t e = 0; e < c->E; e++) {
        s[e] = tr_sigmoid(l[e]);
        sel[e] = s[e] + (bias ? bias[e] : 0.0f);
    }
    if (c->n_group > 1) {   /* keep the topk_group groups with the best top1 + top2 */
        uint32_t G = c->E / c->n_group;
        for (uint32_t q = 0; q < c->n_group; q++) {
            select_sorted(sel + (size_t)q * G, b->allowed + (size_t)q * G, G, 2, b->order, b->top);
            b->gscore[q] = sel[q * G + (uint32_t)b->top[0]] + sel[q * G + (uint32_t)b->top[1]];
        }
        memset(b->gallow, 1, c->n_group);
        select_sorted(b->gscore, b->gallow, c->n_group, c->topk_group, b->order, b->top);
        memset(b->gallow, 0, c->n_group);
        for (uint32_t j = 0; j < c->topk_group; j++)
            b->gallow[b->top[j]] = 1;
        for (uint32_t e = 0; e < c->E; e++)
            b->allowed[e] &= b->gallow[e / G];
    }
    select_sorted(sel, b->allowed, c->E, c->k, b->order, ids);
    float D = 0.0f;
    for (uint32_t j = 0; j < c->k; j++)
        D = D + s[ids[j]];
    D = D + 1e-20f;
    for (uint32_t j = 0; j < c->k; j++)
        w[j] = (c->norm_topk_prob ? s[ids[j]] / D : s[ids[j]]) * c->routed_scaling_factor;
}

static int cpu_router_topk(tr_backend *be, const tr_router_cfg *c, const float *logits, uint32_t T, const float *bias,
                           const int32_t *candidates, uint32_t C, int32_t *ids, float *weights, float *load,
                           int32_t *count, tr_error *err)
{
    (void)be;
    if (candidates)   /* sparse routers: the reference (validation of candidate lists included) */
        return tr_ref_router_topk(c, logits, T, bias, candidates, C, ids, weights, load, count, err);
    int rc = tr_router_check(c, err);
    if (rc != TR_OK)
        return rc;
    size_t E = c->E;
    route_buf b;
    b.p = tr_malloc(E * 3 * sizeof(float));
    b.allowed = tr_malloc(E * 2);
    b.order = tr_malloc(E * sizeof(uint32_t));
    b.top = tr_malloc(E * sizeof(int32_t));
    float *ld = tr_calloc(E, sizeof *ld);
    if (!b.p || !b.allowed || !b.order || !b.top || !ld)
        rc = tr_fail(err, TR_E_NOMEM, "router_topk", "out of memory");
    if (rc == TR_OK) {
        b.tmp = b.p + E;
        b.gscore = b.p + 2 * E;
        b.gallow = b.allowed + E;
        for (uint32_t t = 0; t < T; t++) {
            memset(b.allowed, 1, E);
            if (c->mode == TR_ROUTER_NOAUX_TC)
                route_noaux(c, logits + (size_t)t * E, bias, &b, ids + (size_t)t * c->k, weights + (size_t)t * c->k);
            else
                route_softmax(c, logits + (size_t)t * E, &b, ids + (size_t)t * c->k, weights + (size_t)t * c->k);
            for (size_t e = 0; e < E; e++)
                ld[e] = ld[e] + b.p[e];   /* load: SEQ over tokens of the probabilities (noaux: the scores) */
        }
        if (load)
            memcpy(load, ld, E * sizeof *load);
        if (count) {
            memset(count, 0, E * sizeof *count);
            for (size_t f = 0; f < (size_t)T * c->k; f++)
                count[ids[f]]++;
        }
    }
    tr_dealloc(b.p);
    tr_dealloc(b.allowed);
    tr_dealloc(b.order);
    tr_dealloc(b.top);
    tr_dealloc(ld);
    return rc;
}

/* ---- creation ----------------------------------------------------------------------------------------------------- */

static void cpu_destroy(tr_backend *be)
{
    cpu_impl *im = be->impl;
    if (im)
        tr_pool_destroy(im->pool);
    tr_dealloc(im);
    tr_dealloc(be);
}

int tr_cpu_backend_create(int threads, tr_backend **out, tr_error *err)
{
    *out = NULL;
    tr_backend *be = tr_calloc(1, sizeof *be);
    cpu_impl *im = tr_calloc(1, sizeof *im);
    if (!be || !im) {
        tr_dealloc(be);
        tr_dealloc(im);
        return tr_fail(err, TR_E_NOMEM, "cpu", "out of memory");
    }
    be->impl = im;
    be->destroy = cpu_destroy;
    int rc = tr_pool_create(threads > 0 ? (unsigned)threads : 0, &im->pool, err);
    if (rc != TR_OK) {
        cpu_destroy(be);
        return rc;
    }
    im->level = tr_simd_detect();
    be->name = "cpu";
    be->ops.dequant = cpu_dequant;
    be->ops.gemm_trellis = cpu_gemm_trellis;
    be->ops.gemm_f32 = cpu_gemm_f32;
    be->ops.expert_ffn = cpu_expert_ffn;
    be->ops.moe_swiglu = cpu_moe_swiglu;
    be->ops.router_logits = cpu_router_logits;
    be->ops.router_topk = cpu_router_topk;
    be->ops.moe_group = cpu_moe_group;
    snprintf(be->device, sizeof be->device, "cpu, %s, %u threads", tr_simd_name(im->level),
             tr_pool_threads(im->pool));
    *out = be;
    return TR_OK;
}
