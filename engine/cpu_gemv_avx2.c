/*
 * cpu_gemv_avx2.c — AVX2 + FMA + F16C kernels of the cpu quantized linear (cpu_gemv.h), compiled with per-function
 * target attributes.  Called only when cpuid/xgetbv report AVX2, FMA, F16C and YMM state.
 *
 * The 16 L16 lanes of one (row, token) are two ymm accumulators: lanes 0-7 and 8-15, natural order.  A kernel call
 * handles 4 rows × 1 token (decode) or 2 rows × 2 tokens (prefill).  Per half (8 indices) of a 16-weight chunk:
 *   b = 2  vpsrlvd(bcast32(bytes 0-3), 2·l)                 (table of 4 replicated 2× in the 8-entry vpermps)
 *   b = 3  vpsrlvd(bcast32(bytes 3h .. 3h+3), 3·l)          (8-entry vpermps)
 *   b = 4  vpsrlvd(bcast32(bytes 4h .. 4h+3), 4·l)          (two vpermps of 8 entries, blended on index bit 3)
 *   b ≥ 5  vpsrlvd(vpshufb(bcast128(bytes), window), bit offset) & (2^b − 1), weight computed as
 *          RN32(RN32((q − (2^b−1)/2)·c)·S') (b = 8: vpmovzxbd)
 * then RNh/widen with vcvtps2ph/vcvtph2ps (RNE), one vfmadd per half, the last chunk blended with a lane mask, and
 * the L16 butterfly at the end.  GENERAL mode finishes each weight with ((t·su)·sv) → RNh → widen.
 */
#include "cpu_gemv.h"

#if defined(__x86_64__)

#include "trellis/codebook.h"
#include "trellis/fp16.h"
#include "trellis/pack.h"

#include <immintrin.h>
#include <string.h>

#define TAVX2 __attribute__((target("avx2,fma,f16c")))
#define KINLINE static inline __attribute__((always_inline)) TAVX2

enum { RMAX = 4, MTMAX = 2 };

typedef struct kctx {
    const uint8_t *body;
    const float *S, *su, *sv;
    const float *xp;
    float *Y;
    uint32_t O, I, TI, G, cpg, ldx;
    unsigned b;
    tr_gemv_mode mode;
    __m256i tail[2];           /* lane masks of the last chunk (all ones = contributes) */
    __m256i shift[2], ctrl[2]; /* extraction constants per half */
    __m256 grid0, grid1;       /* table grids: entries 0-7 (b ≤ 3 replicated), 8-15 for b = 4 */
    __m256 half, step;
} kctx;

static inline uint32_t ld32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

KINLINE __m256 round_f16(__m256 v)
{
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* L16 butterfly (KERNELS.md §1) of lanes lo = 0-7, hi = 8-15. */
KINLINE float l16_reduce(__m256 lo, __m256 hi)
{
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    return _mm_cvtss_f32(s1);
}

/* Indices of half h (lanes 8h .. 8h+7) of the chunk at p. */
KINLINE __m256i extract(const kctx *k, const uint8_t *p, int h, const unsigned B)
{
    if (B == 2)
        return _mm256_srlv_epi32(_mm256_set1_epi32((int)ld32(p)), k->shift[h]);
    if (B == 3 || B == 4)
        return _mm256_srlv_epi32(_mm256_set1_epi32((int)ld32(p + B * h)), k->shift[h]);
    if (B == 8)
        return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * h)));
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    v = _mm256_srlv_epi32(_mm256_shuffle_epi8(v, k->ctrl[h]), k->shift[h]);
    return _mm256_and_si256(v, _mm256_set1_epi32((1 << B) - 1));
}

typedef struct rowtab {
    __m256 t0, t1;             /* b ≤ 4: table entries 0-7 and 8-15; b ≥ 5: the scale S' broadcast */
} rowtab;

KINLINE rowtab make_table(const kctx *k, uint32_t o, uint32_t g, const unsigned B, const int GEN)
{
    float s = k->S[(size_t)g * k->O + o];
    if (k->mode == TR_GEMV_FOLD)
        s = s * k->sv[o];
    __m256 sb = _mm256_set1_ps(s);
    rowtab t = {sb, sb};
    if (B <= 4) {
        t.t0 = _mm256_mul_ps(k->grid0, sb);
        t.t1 = B == 4 ? _mm256_mul_ps(k->grid1, sb) : t.t0;
        if (!GEN) {
            t.t0 = round_f16(t.t0);
            t.t1 = B == 4 ? round_f16(t.t1) : t.t0;
        }
    }
    return t;
}

KINLINE __m256 weights(const kctx *k, __m256i idx, rowtab t, __m256 suv, __m256 svb, const unsigned B, const int GEN)
{
    __m256 v;
    if (B <= 3)
        v = _mm256_permutevar8x32_ps(t.t0, idx);
    else if (B == 4) {
        __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
        v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.t0, idx), _mm256_permutevar8x32_ps(t.t1, idx), sel);
    } else {
        __m256 g = _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(idx), k->half), k->step);
        v = _mm256_mul_ps(g, t.t0);
    }
    if (GEN)
        return round_f16(_mm256_mul_ps(_mm256_mul_ps(v, suv), svb));
    return B <= 4 ? v : round_f16(v);
}

KINLINE __m256 su_half(const kctx *k, uint32_t c, int h, int last)
{
    const float *p = k->su + (size_t)c * 16 + 8 * h;
    return last ? _mm256_maskload_ps(p, k->tail[h]) : _mm256_loadu_ps(p);
}

/* One chunk column for RR rows × MT tokens; last = the final column (masked, staged index bytes). */
KINLINE void column(const kctx *k, const uint8_t *const src[RMAX], const rowtab tab[RMAX], const __m256 svb[RMAX],
                    __m256 acc[RMAX][MTMAX][2], uint32_t c, uint32_t m0, int last, const unsigned B, const int RR,
                    const int MT, const int GEN)
{
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m256 xv[MTMAX];
#pragma GCC unroll 2
        for (int m = 0; m < MT; m++)
            xv[m] = _mm256_loadu_ps(k->xp + (size_t)(m0 + m) * k->ldx + (size_t)c * 16 + 8 * h);
        __m256 suv = GEN ? su_half(k, c, h, last) : _mm256_setzero_ps();
#pragma GCC unroll 4
        for (int r = 0; r < RR; r++) {
            __m256 w = weights(k, extract(k, src[r], h, B), tab[r], suv, svb[r], B, GEN);
#pragma GCC unroll 2
            for (int m = 0; m < MT; m++) {
                __m256 a = _mm256_fmadd_ps(w, xv[m], acc[r][m][h]);
                acc[r][m][h] = last ? _mm256_blendv_ps(acc[r][m][h], a, _mm256_castsi256_ps(k->tail[h])) : a;
            }
        }
    }
}

KINLINE void kern(const kctx *k, const uint32_t *rows, uint32_t m0, const unsigned B, const int RR, const int MT,
                  const int GEN)
{
    const size_t TB = 32u * B;
    const uint8_t *base[RMAX];
    __m256 acc[RMAX][MTMAX][2], svb[RMAX];
    rowtab tab[RMAX];
    uint8_t stage[RMAX][16];
    memset(stage, 0, sizeof stage);
#pragma GCC unroll 4
    for (int r = 0; r < RR; r++) {
        base[r] = k->body + (size_t)(rows[r] / TR_TILE) * k->TI * TB + (rows[r] % TR_TILE) * 2u * B;
        svb[r] = _mm256_set1_ps(k->sv[rows[r]]);
        memcpy(stage[r], base[r] + (size_t)(k->TI - 1) * TB, 2u * B);
#pragma GCC unroll 2
        for (int m = 0; m < MT; m++)
            acc[r][m][0] = acc[r][m][1] = _mm256_setzero_ps();
    }
    for (uint32_t g = 0; g < k->G; g++) {
#pragma GCC unroll 4
        for (int r = 0; r < RR; r++)
            tab[r] = make_table(k, rows[r], g, B, GEN);
        uint32_t c0 = g * k->cpg, c1 = c0 + k->cpg < k->TI ? c0 + k->cpg : k->TI;
        uint32_t cend = c1 == k->TI ? c1 - 1 : c1;
        for (uint32_t c = c0; c < cend; c++) {
            const uint8_t *src[RMAX];
#pragma GCC unroll 4
            for (int r = 0; r < RR; r++)
                src[r] = base[r] + (size_t)c * TB;
            /* 8 tiles ahead (or this one near the end): helps the first pass over a tile row */
            _mm_prefetch((const char *)(c + 8 < k->TI ? src[0] + 8 * TB : src[0]), _MM_HINT_T0);
            column(k, src, tab, svb, acc, c, m0, 0, B, RR, MT, GEN);
        }
        if (c1 == k->TI) {
            const uint8_t *src[RMAX];
#pragma GCC unroll 4
            for (int r = 0; r < RR; r++)
                src[r] = stage[r];
            column(k, src, tab, svb, acc, c1 - 1, m0, 1, B, RR, MT, GEN);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RR; r++)
#pragma GCC unroll 2
        for (int m = 0; m < MT; m++) {
            float y = l16_reduce(acc[r][m][0], acc[r][m][1]);
            if (k->mode == TR_GEMV_HAT)
                y = k->sv[rows[r]] * y;
            k->Y[(size_t)(m0 + m) * k->O + rows[r]] = y;
        }
}

typedef void (*kern_fn)(const kctx *k, const uint32_t *rows, uint32_t m0);

/* Rows per call: decode 4 (b ≤ 3) or 2, prefill (2 tokens) 2 (b ≤ 3) or 1, so that accumulators, tables and
 * constants fit the 16 ymm registers. */
#define ROWS(B, MT) ((MT) == 1 ? ((B) <= 3 ? 4 : 2) : ((B) <= 3 ? 2 : 1))
#define KDEF(B, MT, GEN)                                                                                            \
    static TAVX2 void kern_##B##_##MT##_##GEN(const kctx *k, const uint32_t *rows, uint32_t m0)                    \
    {                                                                                                               \
        kern(k, rows, m0, B, ROWS(B, MT), MT, GEN);                                                                 \
    }
#define KDEF_B(B) KDEF(B, 1, 0) KDEF(B, 1, 1) KDEF(B, 2, 0) KDEF(B, 2, 1)
KDEF_B(2)
KDEF_B(3)
KDEF_B(4)
KDEF_B(5)
KDEF_B(6)
KDEF_B(7)
KDEF_B(8)
#define KROW(B) {{kern_##B##_1_0, kern_##B##_1_1}, {kern_##B##_2_0, kern_##B##_2_1}}
static const kern_fn kerns[7][2][2] = {KROW(2), KROW(3), KROW(4), KROW(5), KROW(6), KROW(7), KROW(8)};

static TAVX2 void init_extract(kctx *k)
{
    const unsigned B = k->b;
    for (int h = 0; h < 2; h++) {
        uint32_t sh[8];
        uint8_t ctrl[32];
        for (unsigned l = 0; l < 8; l++) {
            unsigned p = B * (8u * h + l);
            sh[l] = B == 2 ? 2 * (8u * h + l) : B <= 4 ? B * l : p % 8;
            uint8_t *c = ctrl + 4 * l;   /* dword l of 128-bit lane l / 4 picks bytes p/8, p/8 + 1 of the row */
            c[0] = (uint8_t)(p / 8);
            c[1] = (uint8_t)(p / 8 + 1);
            c[2] = c[3] = 0x80;
        }
        k->shift[h] = _mm256_loadu_si256((const __m256i *)sh);
        k->ctrl[h] = _mm256_loadu_si256((const __m256i *)ctrl);
    }
}

static TAVX2 void init_ctx(kctx *k, const tr_gemv_plan *p, const float *Xp, float *Y)
{
    const tr_qweight *w = p->w;
    memset(k, 0, sizeof *k);
    k->body = w->indices + 1;
    k->S = w->scales;
    k->su = w->su;
    k->sv = w->sv;
    k->xp = Xp;
    k->Y = Y;
    k->O = w->O;
    k->I = w->I;
    k->TI = tr_tiles_of(w->I);
    k->G = w->G;
    k->cpg = w->gs / 16;
    k->ldx = p->ldx;
    k->b = w->bits;
    k->mode = p->mode;
    unsigned rem = w->I % 16 ? w->I % 16 : 16;
    for (int h = 0; h < 2; h++) {
        int32_t m[8];
        for (unsigned l = 0; l < 8; l++)
            m[l] = 8u * h + l < rem ? -1 : 0;
        k->tail[h] = _mm256_loadu_si256((const __m256i *)m);
    }
    const float *grid = tr_grid(w->bits);
    unsigned L = 1u << w->bits;
    float g0[8], g1[8];
    for (unsigned l = 0; l < 8; l++) {
        g0[l] = grid[l % L];
        g1[l] = grid[(8 + l) % L];
    }
    k->grid0 = _mm256_loadu_ps(g0);
    k->grid1 = _mm256_loadu_ps(g1);
    k->half = _mm256_set1_ps((float)(L - 1) / 2.0f);
    k->step = _mm256_set1_ps(tr_bits_f32(TR_GRID_STEP_BITS));
    init_extract(k);
}

static TAVX2 void rows_tokens(const kctx *k, uint32_t o0, uint32_t o1, uint32_t m0, int multi)
{
    kern_fn f = kerns[k->b - 2][multi][k->mode == TR_GEMV_GENERAL];
    uint32_t rr = multi ? ROWS(k->b, 2) : ROWS(k->b, 1);
    for (uint32_t o = o0; o < o1; o += rr) {
        uint32_t rows[RMAX];
        for (unsigned r = 0; r < RMAX; r++)
            rows[r] = o + r < o1 ? o + r : o1 - 1;
        f(k, rows, m0);
    }
}

TAVX2 void tr_gemv_rows_avx2(const tr_gemv_plan *plan, const float *Xp, uint32_t M, uint32_t o0, uint32_t o1,
                             float *Y)
{
    kctx k;
    init_ctx(&k, plan, Xp, Y);
    uint32_t m = 0;
    for (; M - m >= 2; m += 2)
        rows_tokens(&k, o0, o1, m, 1);
    for (; m < M; m++)
        rows_tokens(&k, o0, o1, m, 0);
}

#else

void tr_gemv_rows_avx2(const tr_gemv_plan *plan, const float *Xp, uint32_t M, uint32_t o0, uint32_t o1, float *Y)
{
    tr_gemv_rows_portable(plan, Xp, M, o0, o1, Y);
}

#endif
