/*
 * cpu_gemv.c — SIMD level detection, planning, input preparation, the portable kernel and the threaded driver of
 * the cpu backend's quantized linear (cpu_gemv.h; KERNELS.md §1 L16, §4.4; FORMAT.md §4-§6).
 *
 * The portable kernel is plain C and exact for every case, any group size included: per row it keeps the 16 L16
 * lanes q[M][16], walks i ascending with q[i % 16] = fmaf(x'_i, w_i, q[i % 16]) and ends with tr_l16_reduce.  In
 * FOLD/HAT modes w_i comes from the per-(row, group) table T[q] = widen(RNh(RN32(grid[q]·S'))) (S' = S·sv for FOLD,
 * S for HAT) when the table is smaller than the group, else from the same formula per element.
 */
#include "cpu_gemv.h"
#include "trellis/alloc.h"
#include "trellis/codebook.h"
#include "trellis/fp16.h"
#include "trellis/hadamard.h"
#include "trellis/numeric.h"
#include "trellis/pack.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define TR_X86 1
#else
#define TR_X86 0
#endif

/* ---- level detection ------------------------------------------------------------------------------------------ */

#if TR_X86
static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* AVX2 level: AVX2, FMA, F16C and the OS saving YMM state; AVX-512 level: F, BW, VL, DQ, VBMI and opmask/ZMM state. */
static tr_simd_level probe_level(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return TR_SIMD_PORTABLE;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx || !fma || !f16c)
        return TR_SIMD_PORTABLE;
    uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6 || !__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return TR_SIMD_PORTABLE;
    if (!((b >> 5) & 1))
        return TR_SIMD_PORTABLE;
    int f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1, vbmi = (c >> 1) & 1;
    if ((xcr0 & 0xE6) == 0xE6 && f && dq && bw && vl && vbmi)
        return TR_SIMD_AVX512;
    return TR_SIMD_AVX2;
}
#else
static tr_simd_level probe_level(void) { return TR_SIMD_PORTABLE; }
#endif

tr_simd_level tr_simd_supported(void)
{
    static atomic_int cached = -1;    /* cpuid exits a VM: probe once */
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v < 0) {
        v = (int)probe_level();
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return (tr_simd_level)v;
}

tr_simd_level tr_simd_detect(void)
{
    tr_simd_level hw = tr_simd_supported(), cap;
    const char *env = getenv("TR_SIMD");
    if (env && tr_simd_parse(env, &cap) == 0 && cap < hw)
        return cap;
    return hw;
}

const char *tr_simd_name(tr_simd_level level)
{
    switch (level) {
    case TR_SIMD_AVX512: return "avx512";
    case TR_SIMD_AVX2: return "avx2";
    default: return "portable";
    }
}

int tr_simd_parse(const char *name, tr_simd_level *out)
{
    for (int l = TR_SIMD_PORTABLE; l <= TR_SIMD_AVX512; l++)
        if (strcmp(name, tr_simd_name((tr_simd_level)l)) == 0) {
            *out = (tr_simd_level)l;
            return 0;
        }
    return -1;
}

/* ---- plan and preparation ------------------------------------------------------------------------------------- */

static int all_signs(const float *v, uint32_t n)
{
    for (uint32_t k = 0; k < n; k++) {
        uint32_t u = tr_f32_bits(v[k]);
        if (u != 0x3F800000u && u != 0xBF800000u)
            return 0;
    }
    return 1;
}

int tr_cpu_gemv_plan(const tr_qweight *w, tr_simd_level level, tr_gemv_plan *plan, tr_error *err)
{
    tr_error e;
    int rc = tr_qweight_check(w, "gemm_trellis", "w", &e);
    if (rc != TR_OK)
        return tr_fail(err, rc == TR_E_QBITS ? TR_E_INVALID_PARAM : TR_E_INVALID_SHAPE, "gemm_trellis", "%s", e.text);
    memset(plan, 0, sizeof *plan);
    plan->w = w;
    if (w->rotation == TR_ROT_HADAMARD128)
        plan->mode = TR_GEMV_HAT;
    else
        plan->mode = all_signs(w->su, w->I) && all_signs(w->sv, w->O) ? TR_GEMV_FOLD : TR_GEMV_GENERAL;
    tr_simd_level hw = tr_simd_supported();
    plan->level = level < hw ? level : hw;
    if (w->gs % 16 != 0)
        plan->level = TR_SIMD_PORTABLE;
    plan->ldx = tr_tiles_of(w->I) * TR_TILE;
    plan->lane_perm = plan->level == TR_SIMD_AVX512 && w->bits == 4;
    return TR_OK;
}

/* One prepared row: natural order into xp (padding +0), then the in-chunk lane permutation if the kernel wants it. */
static void prepare_row(const tr_gemv_plan *p, const float *x, float *xp)
{
    const tr_qweight *w = p->w;
    if (p->mode == TR_GEMV_GENERAL)
        memcpy(xp, x, (size_t)w->I * sizeof *xp);
    else
        for (uint32_t i = 0; i < w->I; i++)
            xp[i] = x[i] * w->su[i];
    if (p->mode == TR_GEMV_HAT)
        tr_hadamard128_blocks(xp, w->I);
    for (uint32_t i = w->I; i < p->ldx; i++)
        xp[i] = 0.0f;
    if (!p->lane_perm)
        return;
    for (uint32_t c = 0; c < p->ldx; c += 16) {
        float t[16];
        for (unsigned d = 0; d < 16; d++)
            t[d] = xp[c + tr_gemv_perm4(d)];
        memcpy(xp + c, t, sizeof t);
    }
}

void tr_cpu_gemv_prepare(const tr_gemv_plan *plan, const float *X, uint32_t M, float *Xp)
{
    for (uint32_t m = 0; m < M; m++)
        prepare_row(plan, X + (size_t)m * plan->w->I, Xp + (size_t)m * plan->ldx);
}

void tr_cpu_gemv_rows(const tr_gemv_plan *plan, const float *Xp, uint32_t M, uint32_t o0, uint32_t o1, float *Y)
{
    if (o0 >= o1 || M == 0)
        return;
    switch (plan->level) {
    case TR_SIMD_AVX512: tr_gemv_rows_avx512(plan, Xp, M, o0, o1, Y); break;
    case TR_SIMD_AVX2: tr_gemv_rows_avx2(plan, Xp, M, o0, o1, Y); break;
    default: tr_gemv_rows_portable(plan, Xp, M, o0, o1, Y); break;
    }
}

/* ---- portable kernel -------------------------------------------------------------------------------------------- */

/* The 16 indices of one row of one tile: two halves of 8 indices, each in b bytes (LSB first, FORMAT.md §4.2). */
static void unpack_chunk(const uint8_t *p, unsigned b, uint8_t q[16])
{
    for (unsigned h = 0; h < 2; h++) {
        uint64_t u = 0;
        for (unsigned k = 0; k < b; k++)
            u |= (uint64_t)p[h * b + k] << (8 * k);
        for (unsigned k = 0; k < 8; k++)
            q[8 * h + k] = (uint8_t)((u >> (b * k)) & ((1u << b) - 1));
    }
}

uint16_t tr_gemv_table_half(float g, float s) { return tr_f32_to_f16(g * s); }

float tr_gemv_table_value(float g, float s) { return tr_f16_to_f32(tr_gemv_table_half(g, s)); }

float tr_gemv_table_scale(const tr_gemv_plan *plan, uint32_t o, uint32_t g)
{
    const tr_qweight *w = plan->w;
    float s = w->scales[(size_t)g * w->O + o];
    return plan->mode == TR_GEMV_FOLD ? s * w->sv[o] : s;
}

typedef struct prow {
    const tr_gemv_plan *p;
    const float *grid;
    uint32_t o;
    float table[256];
    uint32_t table_group;      /* group the table holds, UINT32_MAX = none */
} prow;

/* w_i of row o in group g for index q: KERNELS.md §0 W16 (GENERAL) or the table value (FOLD/HAT). */
static float weight_at(prow *r, uint32_t i, uint32_t g, unsigned q)
{
    const tr_qweight *w = r->p->w;
    if (r->p->mode == TR_GEMV_GENERAL) {
        float s = w->scales[(size_t)g * w->O + r->o];
        return tr_f16_to_f32(tr_f32_to_f16(((r->grid[q] * s) * w->su[i]) * w->sv[r->o]));
    }
    float s = tr_gemv_table_scale(r->p, r->o, g);
    if ((1u << w->bits) > w->gs)
        return tr_gemv_table_value(r->grid[q], s);
    if (r->table_group != g) {
        for (unsigned k = 0; k < (1u << w->bits); k++)
            r->table[k] = tr_gemv_table_value(r->grid[k], s);
        r->table_group = g;
    }
    return r->table[q];
}

/* The n valid weights of chunk c (n = min(16, I − 16c)); the group index advances at multiples of gs. */
static unsigned chunk_weights(prow *r, const uint8_t *row, uint32_t c, float wv[16])
{
    const tr_qweight *w = r->p->w;
    uint8_t idx[16];
    unpack_chunk(row + (uint64_t)c * tr_tile_bytes(w->bits), w->bits, idx);
    uint32_t i0 = c * 16, g = i0 / w->gs, next = (g + 1) * w->gs;
    unsigned n = w->I - i0 < 16 ? w->I - i0 : 16;
    for (unsigned l = 0; l < n; l++) {
        if (i0 + l == next) {
            g++;
            next += w->gs;
        }
        wv[l] = weight_at(r, i0 + l, g, idx[l]);
    }
    return n;
}

/* One output row for M tokens, L16 with fmaf lanes. */
static void portable_row(const tr_gemv_plan *p, const float *Xp, uint32_t M, uint32_t o, float *Y)
{
    const tr_qweight *w = p->w;
    const unsigned b = w->bits;
    const uint32_t TI = tr_tiles_of(w->I);
    const uint8_t *row = w->indices + 1 + (uint64_t)(o / TR_TILE) * TI * tr_tile_bytes(b) + (o % TR_TILE) * 2u * b;
    prow r = {.p = p, .grid = tr_grid(b), .o = o, .table_group = UINT32_MAX};
    float q[16][16];
    for (uint32_t m0 = 0; m0 < M; m0 += 16) {
        uint32_t mt = M - m0 < 16 ? M - m0 : 16;
        for (uint32_t m = 0; m < mt; m++)
            for (unsigned l = 0; l < 16; l++)
                q[m][l] = 0.0f;
        for (uint32_t c = 0; c < TI; c++) {
            float wv[16];
            unsigned n = chunk_weights(&r, row, c, wv);
            for (uint32_t m = 0; m < mt; m++) {
                const float *x = Xp + (size_t)(m0 + m) * p->ldx + (size_t)c * 16;
                for (unsigned l = 0; l < n; l++)
                    q[m][l] = fmaf(x[l], wv[l], q[m][l]);
            }
        }
        for (uint32_t m = 0; m < mt; m++) {
            float y = tr_l16_reduce(q[m]);
            if (p->mode == TR_GEMV_HAT)
                y = w->sv[o] * y;
            Y[(size_t)(m0 + m) * w->O + o] = y;
        }
    }
}

void tr_gemv_rows_portable(const tr_gemv_plan *plan, const float *Xp, uint32_t M, uint32_t o0, uint32_t o1, float *Y)
{
    for (uint32_t o = o0; o < o1; o++)
        portable_row(plan, Xp, M, o, Y);
}

/* ---- threaded driver ------------------------------------------------------------------------------------------- */

typedef struct gemm_job {
    const tr_gemv_plan *plan;
    const float *xp;
    uint32_t M, rows_per_task;
    float *Y;
} gemm_job;

static void gemm_task(void *ctx, size_t t)
{
    const gemm_job *j = ctx;
    uint32_t O = j->plan->w->O;
    uint32_t o0 = (uint32_t)t * j->rows_per_task;
    uint32_t o1 = O - o0 < j->rows_per_task ? O : o0 + j->rows_per_task;
    tr_cpu_gemv_rows(j->plan, j->xp, j->M, o0, o1, j->Y);
}

/* About 8 tasks per thread for balance, each a multiple of 16 rows (whole tile rows). */
static uint32_t rows_per_task(uint32_t O, unsigned threads)
{
    uint32_t want = (O + threads * 8 - 1) / (threads * 8);
    want = (want + 15) / 16 * 16;
    return want ? want : 16;
}

int tr_cpu_gemv_run(const tr_gemv_plan *plan, const float *X, uint32_t M, float *Y, tr_pool *pool, tr_error *err)
{
    if (M == 0)
        return TR_OK;
    const uint32_t O = plan->w->O;
    float *xp = tr_malloc_aligned((size_t)M * plan->ldx * sizeof *xp);
    if (!xp)
        return tr_fail(err, TR_E_NOMEM, "gemm_trellis", "cannot allocate %u prepared rows of %u floats", M,
                       plan->ldx);
    tr_cpu_gemv_prepare(plan, X, M, xp);
    unsigned threads = tr_pool_threads(pool);
    gemm_job job = {plan, xp, M, rows_per_task(O, threads), Y};
    size_t tasks = (O + job.rows_per_task - 1) / job.rows_per_task;
    if (threads > 1)
        tr_pool_run(pool, tasks, gemm_task, &job);
    else
        tr_cpu_gemv_rows(plan, xp, M, 0, O, Y);
    tr_dealloc_aligned(xp);
    return TR_OK;
}

int tr_cpu_gemm_trellis_level(const tr_qweight *w, const float *X, uint32_t M, float *Y, tr_pool *pool,
                              tr_simd_level level, tr_error *err)
{
    tr_gemv_plan plan;
    int rc = tr_cpu_gemv_plan(w, level, &plan, err);
    return rc != TR_OK ? rc : tr_cpu_gemv_run(&plan, X, M, Y, pool, err);
}

int tr_cpu_gemm_trellis(const tr_qweight *w, const float *X, uint32_t M, float *Y, tr_pool *pool, tr_error *err)
{
    return tr_cpu_gemm_trellis_level(w, X, M, Y, pool, tr_simd_detect(), err);
}
