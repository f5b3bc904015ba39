/*
 * cpu_gemv_avx512.c — AVX-512 kernels of the cpu quantized linear (cpu_gemv.h), compiled with per-function target
 * attributes so that the rest of the project needs no -mavx flags.  Called only when cpuid/xgetbv report AVX-512
 * F/BW/VL/DQ/VBMI.
 *
 * One zmm accumulator holds the 16 L16 lanes of one (row, token).  Decode (one token) runs whole tile rows with
 * kern16: 16 accumulators in registers, the 16 per-group tables in memory (vpermps reads its table from memory),
 * each column reading the tile's 32·b contiguous index bytes.  Rows outside whole tile rows, and prefill (4 tokens
 * × 4 rows, or 8 tokens × 2 rows for b ≥ 6; weights decoded once per chunk and used for every token) run kern.
 * Per 16-weight chunk
 * of a row (the row's 2b index bytes of one tile, FORMAT.md §4):
 *   b = 2  idx = vpsrlvd(bcast32(bytes), 2·d)              lane d: q_d in bits 0-1 (table replicated 4×)
 *   b = 3  idx = vpmultishiftqb(3·d, bcast64(bytes))        lane d: q_d in bits 0-2 (table replicated 2×);
 *          kern16 serves two rows with one vpshufb and two vpsrlvd (column16)
 *   b = 4  idx = vpsrlvq(bcast64(bytes), 4·k)               lane 2k: q_k, lane 2k+1: q_{k+8} (x prepared in this
 *                                                           lane order, accumulator un-permuted at the end)
 *   b ≥ 5  idx = vpsrlvd(vpshufb(bcast128(bytes), window), bit offset)  (b = 8: vpmovzxbd)
 *   w = vpermps(idx, T) (b ≤ 4), vpermt2ps (b = 5), else computed: RN32(RN32((q − (2^b−1)/2)·c)·S') then
 *       RNh/widen with vcvtps2ph/vcvtph2ps (RNE, bit-identical to fp16.h)
 *   acc = vfmadd231ps(w, x', acc)   — the last chunk with a lane mask (padding never contributes)
 * Tables: T[q] = widen(RNh(RN32(grid[q]·S'))), S' = S·sv (FOLD) or S (HAT), per (row, group); kern16 builds those
 * of b = 2 and 3 four resp. two rows per vector.  GENERAL mode keeps T = RN32(grid·S) and finishes each chunk with
 * ((t·su)·sv) → RNh → widen.  The end of a row is the L16 butterfly: lanes 0-7 += 8-15, 0-3 += 4-7, 0-1 += 2-3,
 * 0 += 1 (then RN32(sv·acc) for HAT).
 * Packed plans (cpu_gemv.h) run single tokens on whole blocks of 8 rows with packed_block instead (see there): no
 * extraction op per chunk, precomputed tables in registers.
 */
#include "cpu_gemv.h"

#if defined(__x86_64__)

#include "trellis/codebook.h"
#include "trellis/fp16.h"
#include "trellis/pack.h"

#include <immintrin.h>
#include <string.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,fma,f16c")))
#define KINLINE static inline __attribute__((always_inline)) T512

enum { R = 4, MT_MAX = 8 };   /* kern: at most R rows, at most MT_MAX tokens */

/* Everything a kernel needs, computed once per tr_gemv_rows_avx512 call. */
typedef struct kctx {
    const uint8_t *body;       /* packed indices after the header byte */
    const float *S, *su, *sv;
    const float *xp;           /* prepared [M][ldx] */
    float *Y;
    uint32_t O, I, TI, G, cpg, ldx;
    unsigned b;
    tr_gemv_mode mode;
    __mmask16 tail;            /* valid lanes of the last chunk, kernel lane order */
    __mmask16 tail_canon;      /* the same in canonical order */
    __m512i shift, ctrl;       /* index extraction constants */
    __m512i perm4, unperm4;    /* b = 4 lane order and its inverse */
    __m512 grid0, grid1;       /* grid (replicated to 16 lanes for b ≤ 4), entries 16..31 for b = 5 */
    __m512 half, step;         /* (2^b − 1)/2 and c for computed grid values */
    __m512i expand2[4];        /* b = 2 tables: lane n <- row 4j + n/4 */
    __m512i expand3[8];        /* b = 3 tables: lane n <- row 2j + n/8 */
    __m512i pair_ctrl, pair_sh0, pair_sh1;   /* b = 3 row pairs (column16) */
    const tr_gemv_pack *pack;  /* packed copy of the plan, or NULL */
    __m512i expand_hi;         /* lane n <- n >> 2: packed b = 2 table B from table A */
} kctx;

static inline uint32_t ld32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint64_t ld64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* RNh then widen, RNE (VCVTPS2PH imm 8 = round to nearest even, exceptions suppressed). */
KINLINE __m512 round_f16(__m512 v)
{
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* L16 butterfly of KERNELS.md §1: s = 8, 4, 2, 1, q_l = q_l + q_{l+s}. */
KINLINE float l16_reduce(__m512 q)
{
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(q), _mm512_extractf32x8_ps(q, 1));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    return _mm_cvtss_f32(s1);
}

/* Y of row o from its accumulator in kernel lane order: L16 butterfly, then RN32(sv·y) for HAT. */
KINLINE float finish_row(const kctx *k, __m512 acc, uint32_t o, const unsigned B)
{
    float y = l16_reduce(B == 4 ? _mm512_permutexvar_ps(k->unperm4, acc) : acc);
    return k->mode == TR_GEMV_HAT ? k->sv[o] * y : y;
}

/* The 16 indices of the chunk at p, one per dword lane in kernel lane order (bits above the index: see header). */
KINLINE __m512i extract(const kctx *k, const uint8_t *p, const unsigned B)
{
    if (B == 2)
        return _mm512_srlv_epi32(_mm512_set1_epi32((int)ld32(p)), k->shift);
    if (B == 3)
        return _mm512_multishift_epi64_epi8(k->ctrl, _mm512_set1_epi64((long long)ld64(p)));
    if (B == 4)
        return _mm512_srlv_epi64(_mm512_set1_epi64((long long)ld64(p)), k->shift);
    if (B == 8)
        return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)p));
    return _mm512_srlv_epi32(_mm512_shuffle_epi8(v, k->ctrl), k->shift);
}

/* Per-(row, group) state: the table (b ≤ 5: final weights, or RN32(grid·S) in GENERAL mode) or the scale (b ≥ 6). */
typedef struct rowtab {
    __m512 t0, t1;
} rowtab;

KINLINE rowtab make_table(const kctx *k, uint32_t o, uint32_t g, const unsigned B, const int GEN)
{
    float s = k->S[(size_t)g * k->O + o];
    if (k->mode == TR_GEMV_FOLD)
        s = s * k->sv[o];
    __m512 sb = _mm512_set1_ps(s);
    rowtab t = {sb, sb};
    if (B <= 5) {
        t.t0 = _mm512_mul_ps(k->grid0, sb);
        t.t1 = B == 5 ? _mm512_mul_ps(k->grid1, sb) : t.t0;
        if (!GEN) {
            t.t0 = round_f16(t.t0);
            t.t1 = B == 5 ? round_f16(t.t1) : t.t0;
        }
    }
    return t;
}

/* The 16 weights of one chunk: table lookup or computed grid value, then (GENERAL) ((t·su)·sv) and RNh. */
KINLINE __m512 weights(const kctx *k, __m512i idx, rowtab t, __m512 suv, __m512 svb, const unsigned B, const int GEN)
{
    __m512 v;
    if (B <= 4)
        v = _mm512_permutexvar_ps(idx, t.t0);
    else if (B == 5)
        v = _mm512_permutex2var_ps(t.t0, idx, t.t1);
    else {
        __m512i q = _mm512_and_si512(idx, _mm512_set1_epi32((1 << B) - 1));
        __m512 g = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(q), k->half), k->step);
        v = _mm512_mul_ps(g, t.t0);
    }
    if (GEN)
        return round_f16(_mm512_mul_ps(_mm512_mul_ps(v, suv), svb));
    return B <= 5 ? v : round_f16(v);
}

/* su of chunk c in kernel lane order (GENERAL mode only); lanes past I read as 0 and are masked later. */
KINLINE __m512 su_chunk(const kctx *k, uint32_t c, const unsigned B)
{
    const float *p = k->su + (size_t)c * 16;
    __m512 v = c + 1 < k->TI || k->I % 16 == 0 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(k->tail_canon, p);
    return B == 4 ? _mm512_permutexvar_ps(k->perm4, v) : v;
}

/* One chunk column c for RR rows × MT tokens; idx bytes of row r at src[r]; mask = lanes that contribute. */
KINLINE void column(const kctx *k, const uint8_t *const src[R], const rowtab tab[R], const __m512 svb[R],
                    __m512 acc[R][MT_MAX], uint32_t c, uint32_t m0, __mmask16 mask, const unsigned B, const int RR,
                    const int MT, const int GEN)
{
    __m512 xv[MT_MAX];
#pragma GCC unroll 8
    for (int m = 0; m < MT; m++)
        xv[m] = _mm512_loadu_ps(k->xp + (size_t)(m0 + m) * k->ldx + (size_t)c * 16);
    __m512 suv = GEN ? su_chunk(k, c, B) : _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int r = 0; r < RR; r++) {
        __m512 w = weights(k, extract(k, src[r], B), tab[r], suv, svb[r], B, GEN);
#pragma GCC unroll 8
        for (int m = 0; m < MT; m++)
            acc[r][m] = mask == 0xFFFF ? _mm512_fmadd_ps(w, xv[m], acc[r][m])
                                       : _mm512_mask3_fmadd_ps(w, xv[m], acc[r][m], mask);
    }
}

/* Rows rows[0..RR) (duplicates allowed), tokens m0 .. m0+MT−1: the whole L16 reduction and the stores. */
KINLINE void kern(const kctx *k, const uint32_t *rows, uint32_t m0, const unsigned B, const int RR, const int MT,
                  const int GEN)
{
    const size_t TB = 32u * B;
    const uint8_t *base[R];
    __m512 acc[R][MT_MAX], svb[R];
    rowtab tab[R];
    uint8_t stage[R][16];
    memset(stage, 0, sizeof stage);
#pragma GCC unroll 4
    for (int r = 0; r < RR; r++) {
        base[r] = k->body + (size_t)(rows[r] / TR_TILE) * k->TI * TB + (rows[r] % TR_TILE) * 2u * B;
        svb[r] = _mm512_set1_ps(k->sv[rows[r]]);
        memcpy(stage[r], base[r] + (size_t)(k->TI - 1) * TB, 2u * B);
#pragma GCC unroll 8
        for (int m = 0; m < MT; m++)
            acc[r][m] = _mm512_setzero_ps();
    }
    for (uint32_t g = 0; g < k->G; g++) {
#pragma GCC unroll 4
        for (int r = 0; r < RR; r++)
            tab[r] = make_table(k, rows[r], g, B, GEN);
        uint32_t c0 = g * k->cpg, c1 = c0 + k->cpg < k->TI ? c0 + k->cpg : k->TI;
        uint32_t cend = c1 == k->TI ? c1 - 1 : c1;
        for (uint32_t c = c0; c < cend; c++) {
            const uint8_t *src[R];
#pragma GCC unroll 4
            for (int r = 0; r < RR; r++)
                src[r] = base[r] + (size_t)c * TB;
            column(k, src, tab, svb, acc, c, m0, 0xFFFF, B, RR, MT, GEN);
        }
        if (c1 == k->TI) {
            const uint8_t *src[R];
#pragma GCC unroll 4
            for (int r = 0; r < RR; r++)
                src[r] = stage[r];
            column(k, src, tab, svb, acc, c1 - 1, m0, k->tail, B, RR, MT, GEN);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RR; r++)
#pragma GCC unroll 8
        for (int m = 0; m < MT; m++)
            k->Y[(size_t)(m0 + m) * k->O + rows[r]] = finish_row(k, acc[r][m], rows[r], B);
}

/* The 16 tables of a tile row for one group from S' = S·sv (FOLD) or S, smem[r] = S'_r.  b = 2 and 3 (FOLD/HAT)
 * compute 4 resp. 2 rows per vector (lanes = row-major 4 resp. 8 entries), round once, and replicate each row's
 * entries to 16 lanes with a broadcast load; other widths compute row by row. */
KINLINE void tables16(const kctx *k, const float *smem, __m512 tmem[16][2], const unsigned B, const int GEN)
{
    if ((B == 2 || B == 3) && !GEN) {
        const __m512 sv = _mm512_load_ps(smem);
        float pm[8][16] __attribute__((aligned(64)));
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            if (B == 2 && j >= 4)
                break;
            __m512 e = _mm512_permutexvar_ps(B == 2 ? k->expand2[j % 4] : k->expand3[j], sv);
            _mm512_store_ps(pm[j], round_f16(_mm512_mul_ps(k->grid0, e)));
        }
#pragma GCC unroll 16
        for (int r = 0; r < 16; r++)
            tmem[r][0] = B == 2 ? _mm512_broadcast_f32x4(_mm_load_ps(&pm[r / 4][4 * (r % 4)]))
                                : _mm512_broadcast_f32x8(_mm256_load_ps(&pm[r / 2][8 * (r % 2)]));
        return;
    }
#pragma GCC unroll 16
    for (int r = 0; r < 16; r++)
        if (B <= 5) {
            __m512 sb = _mm512_set1_ps(smem[r]);
            __m512 t0 = _mm512_mul_ps(k->grid0, sb), t1 = _mm512_mul_ps(k->grid1, sb);
            tmem[r][0] = GEN ? t0 : round_f16(t0);
            if (B == 5)
                tmem[r][1] = GEN ? t1 : round_f16(t1);
        }
}

KINLINE void prefetch_tile(const uint8_t *p)
{
    _mm_prefetch((const char *)p, _MM_HINT_T0);
    _mm_prefetch((const char *)(p + 64), _MM_HINT_T0);
}

/* smem = S' of group g for rows o0 .. o0+15, and their tables. */
KINLINE void group_tables16(const kctx *k, uint32_t o0, uint32_t g, float *smem, __m512 tmem[16][2], const unsigned B,
                            const int GEN)
{
    __m512 sv = _mm512_loadu_ps(k->S + (size_t)g * k->O + o0);
    if (k->mode == TR_GEMV_FOLD)
        sv = _mm512_mul_ps(sv, _mm512_loadu_ps(k->sv + o0));
    _mm512_store_ps(smem, sv);
    tables16(k, smem, tmem, B, GEN);
}

/* Accumulate one chunk of row r: acc[r] += w·x (masked on the last chunk). */
KINLINE void fma_row(const kctx *k, __m512 acc[16], int r, __m512i idx, const __m512 tmem[16][2], const float *smem,
                     uint32_t o0, __m512 x, __m512 suv, int last, const unsigned B, const int GEN)
{
    rowtab t = {tmem[r][0], tmem[r][1]};
    if (B > 5)
        t.t0 = _mm512_set1_ps(smem[r]);
    __m512 w = weights(k, idx, t, suv, _mm512_set1_ps(k->sv[o0 + r]), B, GEN);
    acc[r] = last ? _mm512_mask3_fmadd_ps(w, x, acc[r], k->tail) : _mm512_fmadd_ps(w, x, acc[r]);
}

/* One column of a tile row: src = the tile's 32·b index bytes (row r at src + 2b·r).  For b = 3 two adjacent rows
 * (12 bytes) share one vpshufb: dword d gets row A's window in bytes 0-1 and row B's in bytes 2-3, then two
 * vpsrlvd (by 3d % 8 and 16 + 3d % 8) give each row's indices (fewer port-5 operations than vpmultishiftqb). */
KINLINE void column16(const kctx *k, const uint8_t *src, __m512 acc[16], const __m512 tmem[16][2], const float *smem,
                      uint32_t o0, __m512 x, __m512 suv, int last, const unsigned B, const int GEN)
{
    if (B == 3) {
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(src + 12 * j)));
            v = _mm512_shuffle_epi8(v, k->pair_ctrl);
            fma_row(k, acc, 2 * j, _mm512_srlv_epi32(v, k->pair_sh0), tmem, smem, o0, x, suv, last, B, GEN);
            fma_row(k, acc, 2 * j + 1, _mm512_srlv_epi32(v, k->pair_sh1), tmem, smem, o0, x, suv, last, B, GEN);
        }
        return;
    }
#pragma GCC unroll 16
    for (int r = 0; r < 16; r++)
        fma_row(k, acc, r, extract(k, src + r * 2u * B, B), tmem, smem, o0, x, suv, last, B, GEN);
}

/* Decode kernel for a whole tile row: rows o0 .. o0+15 (o0 % 16 == 0, all < O), one token.  The 16 tables live in
 * memory (vpermps takes its table as a memory operand), the 16 accumulators in registers, and each column reads the
 * tile's 32·b contiguous index bytes. */
KINLINE void kern16(const kctx *k, uint32_t o0, uint32_t m0, const unsigned B, const int GEN)
{
    const size_t TB = 32u * B;
    const uint8_t *base = k->body + (size_t)(o0 / TR_TILE) * k->TI * TB;
    const float *xp = k->xp + (size_t)m0 * k->ldx;
    __m512 acc[16];
    __m512 tmem[16][2];
    float smem[16] __attribute__((aligned(64)));
    uint8_t stage[256 + 16] __attribute__((aligned(64)));
    memset(stage, 0, sizeof stage);
    memcpy(stage, base + (size_t)(k->TI - 1) * TB, TB);
#pragma GCC unroll 16
    for (int r = 0; r < 16; r++)
        acc[r] = _mm512_setzero_ps();
    for (uint32_t g = 0; g < k->G; g++) {
        group_tables16(k, o0, g, smem, tmem, B, GEN);
        uint32_t c0 = g * k->cpg, c1 = c0 + k->cpg < k->TI ? c0 + k->cpg : k->TI;
        uint32_t cend = c1 == k->TI ? c1 - 1 : c1;
        for (uint32_t c = c0; c < cend; c++) {
            __m512 suv = GEN ? su_chunk(k, c, B) : _mm512_setzero_ps();
            /* the tile 8 columns ahead (or this one near the end), both cache lines: helps b = 2, 3 */
            prefetch_tile(base + (size_t)(c + 8 < k->TI ? c + 8 : c) * TB);
            column16(k, base + (size_t)c * TB, acc, tmem, smem, o0, _mm512_loadu_ps(xp + (size_t)c * 16), suv, 0,
                     B, GEN);
        }
        if (c1 == k->TI) {
            __m512 suv = GEN ? su_chunk(k, c1 - 1, B) : _mm512_setzero_ps();
            column16(k, stage, acc, tmem, smem, o0, _mm512_loadu_ps(xp + (size_t)(c1 - 1) * 16), suv, 1, B, GEN);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < 16; r++)
        k->Y[(size_t)m0 * k->O + o0 + r] = finish_row(k, acc[r], o0 + r, B);
}

typedef void (*kern16_fn)(const kctx *k, uint32_t o0, uint32_t m0);

#define K16DEF(B, GEN)                                                                                              \
    static T512 void kern16_##B##_##GEN(const kctx *k, uint32_t o0, uint32_t m0) { kern16(k, o0, m0, B, GEN); }
#define K16DEF_B(B) K16DEF(B, 0) K16DEF(B, 1)
K16DEF_B(2)
K16DEF_B(3)
K16DEF_B(4)
K16DEF_B(5)
K16DEF_B(6)
K16DEF_B(7)
K16DEF_B(8)
#define K16ROW(B) {kern16_##B##_0, kern16_##B##_1}
static const kern16_fn kerns16[7][2] = {K16ROW(2), K16ROW(3), K16ROW(4), K16ROW(5), K16ROW(6), K16ROW(7), K16ROW(8)};

typedef void (*kern_fn)(const kctx *k, const uint32_t *rows, uint32_t m0);

/* Token blocks: kind 0 = 1 token × 4 rows (decode tails), 1 = 4 tokens × 4 rows, 2 = 8 tokens × 2 rows (16
 * accumulators each).  Kind 2 only pays for b ≥ 6, where decoding a chunk costs more than its FMAs; for b ≤ 5 its
 * doubled reads of x (from L2 for long rows) make it slower than kind 1. */
static const unsigned KIND_TOKENS[3] = {1, 4, 8}, KIND_ROWS[3] = {4, 4, 2};
#define KDEF(B, MT, RR, GEN)                                                                                        \
    static T512 void kern_##B##_##MT##_##GEN(const kctx *k, const uint32_t *rows, uint32_t m0)                     \
    {                                                                                                               \
        kern(k, rows, m0, B, RR, MT, GEN);                                                                          \
    }
#define KDEF_B(B) KDEF(B, 1, 4, 0) KDEF(B, 1, 4, 1) KDEF(B, 4, 4, 0) KDEF(B, 4, 4, 1)
#define KDEF_B8(B) KDEF_B(B) KDEF(B, 8, 2, 0) KDEF(B, 8, 2, 1)
KDEF_B(2)
KDEF_B(3)
KDEF_B(4)
KDEF_B(5)
KDEF_B8(6)
KDEF_B8(7)
KDEF_B8(8)
#define KROW(B, E)                                                                                                  \
    {{kern_##B##_1_0, kern_##B##_1_1}, {kern_##B##_4_0, kern_##B##_4_1}, {kern_##B##_##E##_0, kern_##B##_##E##_1}}
static const kern_fn kerns[7][3][2] = {KROW(2, 4), KROW(3, 4), KROW(4, 4), KROW(5, 4),
                                       KROW(6, 8), KROW(7, 8), KROW(8, 8)};   /* kind 2 only for b >= 6 */

/* Extraction constants per b (see the header comment). */
static T512 void init_extract(kctx *k)
{
    const unsigned B = k->b;
    uint32_t sh[16];
    uint8_t ctrl[64];
    uint64_t sh64[8];
    memset(ctrl, 0, sizeof ctrl);
    for (unsigned d = 0; d < 16; d++) {
        unsigned p = B * d;
        sh[d] = B == 2 ? 2 * d : p % 8;
        if (B == 3)
            ctrl[4 * d] = (uint8_t)p;
        else if (B >= 5) {
            ctrl[4 * d] = (uint8_t)(p / 8);
            ctrl[4 * d + 1] = (uint8_t)(p / 8 + 1);
            ctrl[4 * d + 2] = ctrl[4 * d + 3] = 0x80;
        }
    }
    for (unsigned q = 0; q < 8; q++)
        sh64[q] = 4u * q;
    k->shift = B == 4 ? _mm512_loadu_si512(sh64) : _mm512_loadu_si512(sh);
    k->ctrl = _mm512_loadu_si512(ctrl);
    uint32_t e[16], s0[16], s1[16];
    for (unsigned j = 0; j < 8; j++) {
        for (unsigned n = 0; n < 16; n++)
            e[n] = 2 * j + n / 8;
        k->expand3[j] = _mm512_loadu_si512(e);
        if (j >= 4)
            continue;
        for (unsigned n = 0; n < 16; n++)
            e[n] = 4 * j + n / 4;
        k->expand2[j] = _mm512_loadu_si512(e);
    }
    uint8_t pc[64];
    for (unsigned d = 0; d < 16; d++) {   /* row A index d at bit 3d, row B index d at bit 48 + 3d */
        pc[4 * d] = (uint8_t)(3 * d / 8);
        pc[4 * d + 1] = (uint8_t)(3 * d / 8 + 1);
        pc[4 * d + 2] = (uint8_t)(6 + 3 * d / 8);
        pc[4 * d + 3] = (uint8_t)(6 + 3 * d / 8 + 1);
        s0[d] = 3 * d % 8;
        s1[d] = 16 + 3 * d % 8;
    }
    k->pair_ctrl = _mm512_loadu_si512(pc);
    k->pair_sh0 = _mm512_loadu_si512(s0);
    k->pair_sh1 = _mm512_loadu_si512(s1);
}

static T512 void init_ctx(kctx *k, const tr_gemv_plan *p, const float *Xp, float *Y)
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
    k->pack = p->pack;
    unsigned rem = w->I % 16 ? w->I % 16 : 16;
    k->tail_canon = (__mmask16)((1u << rem) - 1);
    uint32_t perm[16], unperm[16], hi[16];
    for (unsigned d = 0; d < 16; d++) {
        hi[d] = d >> 2;
        perm[d] = tr_gemv_perm4(d);
        unperm[tr_gemv_perm4(d)] = d;
        if (tr_gemv_perm4(d) < rem)
            k->tail |= (__mmask16)(1u << (w->bits == 4 ? d : tr_gemv_perm4(d)));
    }
    k->perm4 = _mm512_loadu_si512(perm);
    k->unperm4 = _mm512_loadu_si512(unperm);
    k->expand_hi = _mm512_loadu_si512(hi);
    const float *grid = tr_grid(w->bits);
    unsigned L = 1u << w->bits;
    float g0[16], g1[16];
    for (unsigned d = 0; d < 16; d++) {
        g0[d] = grid[d % L];
        g1[d] = L > 16 ? grid[16 + d % (L - 16 < 16 ? L - 16 : 16)] : g0[d];
    }
    k->grid0 = _mm512_loadu_ps(g0);
    k->grid1 = _mm512_loadu_ps(g1);
    k->half = _mm512_set1_ps((float)(L - 1) / 2.0f);
    k->step = _mm512_set1_ps(tr_bits_f32(TR_GRID_STEP_BITS));
    init_extract(k);
}

/* Rows [o0, o1) in blocks of R (the last block repeats its last row), tokens in blocks of 4 then one by one. */
/* Rows [o0, o1) in blocks of rr (the last block repeats its last row). */
static T512 void rows_blocks(const kctx *k, kern_fn f, unsigned rr, uint32_t o0, uint32_t o1, uint32_t m0)
{
    for (uint32_t o = o0; o < o1; o += rr) {
        uint32_t rows[R];
        for (unsigned r = 0; r < rr; r++)
            rows[r] = o + r < o1 ? o + r : o1 - 1;
        f(k, rows, m0);
    }
}

/* Tokens m0 .. of one block kind over rows [o0, o1); one token runs whole tile rows with kern16. */
static T512 void native_rows_tokens(const kctx *k, uint32_t o0, uint32_t o1, uint32_t m0, int kind)
{
    int gen = k->mode == TR_GEMV_GENERAL;
    kern_fn f = kerns[k->b - 2][kind][gen];
    uint32_t a = (o0 + 15) / 16 * 16, e = o1 / 16 * 16;
    if (kind || a >= e) {
        rows_blocks(k, f, KIND_ROWS[kind], o0, o1, m0);
        return;
    }
    rows_blocks(k, f, KIND_ROWS[0], o0, a, m0);
    for (uint32_t o = a; o < e; o += 16)
        kerns16[k->b - 2][gen](k, o, m0);
    rows_blocks(k, f, KIND_ROWS[0], e, o1, m0);
}

/* ---- packed decode (cpu_gemv.h, "Packed plans") ------------------------------------------------------------------
 * The PR rows of a block advance together, STEP chunks at a time: STEP = 2F (F = chunks per nibble, 2 for b = 2,
 * else 1) reads a whole byte of each row's line (one load, one vpsrld 4), STEP = F a nibble, STEP = 1 a chunk (group
 * sizes that start groups inside a byte or nibble, and each row's last line).  Each chunk then costs one vpermps and
 * one FMA per row, its x loaded once for the PR rows.  Tables live in registers (PR·F), reloaded at group starts. */

enum { PR = TR_PACK_ROWS };

/* The tables of PR rows for one group (t = the group's PR packed tables): tab[r][0] = A, tab[r][1] = B.  b = 3
 * leaves lanes 8-15 undefined: packed nibbles have bit 3 clear. */
KINLINE void packed_tables(const kctx *k, const uint8_t *t, __m512 tab[PR][2], const unsigned B)
{
#pragma GCC unroll 8
    for (int r = 0; r < PR; r++) {
        const uint8_t *tr = t + r * tr_gemv_pack_table_bytes(B);
        if (B == 2) {
            tab[r][0] = _mm512_broadcast_f32x4(_mm_load_ps((const float *)tr));   /* A[n] = T[n & 3] */
            tab[r][1] = _mm512_permutexvar_ps(k->expand_hi, tab[r][0]);           /* B[n] = T[n >> 2] */
        } else if (B == 3)
            tab[r][0] = _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_load_si128((const __m128i *)tr)));
        else
            tab[r][0] = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)tr));
    }
}

/* Chunks j .. j+N−1 of the PR lines at ln (one byte, one nibble or one chunk; x = chunk j's prepared input); lanes
 * outside mask are left alone (the row's last chunk). */
KINLINE void packed_chunks(const uint8_t *ln, unsigned j, const float *x, __m512 acc[PR], const __m512 tab[PR][2],
                           __mmask16 mask, const unsigned F, const unsigned N)
{
    __m512 xs[4];
#pragma GCC unroll 4
    for (unsigned i = 0; i < N; i++)
        xs[i] = _mm512_loadu_ps(x + 16 * i);
#pragma GCC unroll 8
    for (int r = 0; r < PR; r++) {
        unsigned nib = j / F;
        __m512i v = _mm512_loadu_si512(ln + 64 * r + nib / 2);
        if (nib % 2)
            v = _mm512_srli_epi32(v, 4);
#pragma GCC unroll 4
        for (unsigned i = 0; i < N; i++) {
            if ((j + i) / F != nib) {   /* the byte's high nibble */
                nib++;
                v = _mm512_srli_epi32(v, 4);
            }
            __m512 w = _mm512_permutexvar_ps(v, F == 2 && (j + i) % 2 ? tab[r][1] : tab[r][0]);
            acc[r] = N == 1 ? _mm512_mask3_fmadd_ps(w, xs[i], acc[r], mask) : _mm512_fmadd_ps(w, xs[i], acc[r]);
        }
    }
}

/* Row block blk, one token: the L16 reduction of its PR rows and the stores into y (one output row).  Lines whose
 * chunks are all full (no padding lanes) go STEP chunks at a time, STEP dividing the chunks per group; the rest one
 * chunk at a time. */
KINLINE void packed_block(const kctx *k, uint32_t blk, const float *xp, float *y, const unsigned B,
                          const unsigned STEP)
{
    const unsigned F = B == 2 ? 2 : 1, J = 8 * F, TB = tr_gemv_pack_table_bytes(B);
    const uint8_t *lines = k->pack->idx + (size_t)blk * k->pack->lines * PR * 64;
    const uint8_t *tp = k->pack->tab + (size_t)blk * k->G * PR * TB;
    __m512 acc[PR], tab[PR][2];
#pragma GCC unroll 8
    for (int r = 0; r < PR; r++)
        acc[r] = _mm512_setzero_ps();
    uint32_t left = 0;   /* chunks before the next group starts */
    const uint32_t fast = (k->TI - (k->I % 16 != 0)) / J;
    for (uint32_t s = 0; s < fast; s++) {
        const uint8_t *ln = lines + (size_t)s * PR * 64;
#pragma GCC unroll 16
        for (unsigned j = 0; j < J; j += STEP) {
            if (left == 0) {
                packed_tables(k, tp, tab, B);
                tp += PR * TB;
                left = k->cpg;
            }
            left -= STEP;
            packed_chunks(ln, j, xp + (size_t)(s * J + j) * 16, acc, tab, 0xFFFF, F, STEP);
        }
    }
    for (uint32_t c = fast * J; c < k->TI; c++) {
        if (left == 0) {
            packed_tables(k, tp, tab, B);
            tp += PR * TB;
            left = k->cpg;
        }
        left--;
        packed_chunks(lines + (size_t)(c / J) * PR * 64, c % J, xp + (size_t)c * 16, acc, tab,
                      c + 1 == k->TI ? k->tail : 0xFFFF, F, 1);
    }
#pragma GCC unroll 8
    for (int r = 0; r < PR; r++)
        y[blk * PR + r] = finish_row(k, acc[r], blk * PR + r, B);
}

typedef void (*packed_fn)(const kctx *k, uint32_t blk, const float *xp, float *y);
#define PKDEF(B, STEP)                                                                                              \
    static T512 void packed_##B##_##STEP(const kctx *k, uint32_t blk, const float *xp, float *y)                   \
    {                                                                                                               \
        packed_block(k, blk, xp, y, B, STEP);                                                                       \
    }
PKDEF(2, 4)
PKDEF(2, 2)
PKDEF(2, 1)
PKDEF(3, 2)
PKDEF(3, 1)
PKDEF(4, 2)
PKDEF(4, 1)
/* [b − 2][byte, nibble, chunk steps] */
static const packed_fn packed_kerns[3][3] = {{packed_2_4, packed_2_2, packed_2_1},
                                             {packed_3_2, packed_3_1, packed_3_1},
                                             {packed_4_2, packed_4_1, packed_4_1}};

/* The kernel for the plan's group size: the longest step (byte, nibble, chunk) that divides the chunks per group. */
static packed_fn packed_kernel(const kctx *k)
{
    const uint32_t F = k->b == 2 ? 2 : 1;
    return packed_kerns[k->b - 2][k->cpg % (2 * F) == 0 ? 0 : k->cpg % F == 0 ? 1 : 2];
}

/* As native_rows_tokens; single tokens of a packed plan run its whole row blocks with the packed kernel. */
static T512 void rows_tokens(const kctx *k, uint32_t o0, uint32_t o1, uint32_t m0, int kind)
{
    uint32_t blocks = k->pack ? k->pack->blocks : 0;
    uint32_t a = (o0 + PR - 1) / PR, e = o1 / PR < blocks ? o1 / PR : blocks;
    if (kind || a >= e) {
        native_rows_tokens(k, o0, o1, m0, kind);
        return;
    }
    native_rows_tokens(k, o0, a * PR, m0, kind);
    packed_fn f = packed_kernel(k);
    for (uint32_t blk = a; blk < e; blk++)
        f(k, blk, k->xp + (size_t)m0 * k->ldx, k->Y + (size_t)m0 * k->O);
    native_rows_tokens(k, e * PR, o1, m0, kind);
}

/* Tokens in blocks of 8 (b ≥ 6), then 4, then one by one. */
T512 void tr_gemv_rows_avx512(const tr_gemv_plan *plan, const float *Xp, uint32_t M, uint32_t o0, uint32_t o1,
                              float *Y)
{
    kctx k;
    init_ctx(&k, plan, Xp, Y);
    uint32_t m = 0;
    for (int kind = k.b >= 6 ? 2 : 1; kind >= 0; kind--)
        for (; M - m >= KIND_TOKENS[kind]; m += KIND_TOKENS[kind])
            rows_tokens(&k, o0, o1, m, kind);
}

#else

void tr_gemv_rows_avx512(const tr_gemv_plan *plan, const float *Xp, uint32_t M, uint32_t o0, uint32_t o1, float *Y)
{
    tr_gemv_rows_portable(plan, Xp, M, o0, o1, Y);
}

#endif
