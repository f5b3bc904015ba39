/*
 * check_cpu_gemv.c — the cpu backend's quantized linear (engine/cpu_gemv.h) against tr_ref_gemm_trellis, bit for bit:
 * every b = 2..8, shapes 1..257 on both axes, group sizes 16..256 and 100, ±1 and general signs, special scales and
 * activations, rotation hadamard128, M = 1, 2, 5, 17, every SIMD level this CPU has, 1, 2 and 3 threads; packed
 * plans (tr_cpu_gemv_pack) the same way.  Also the exact identities the fast paths rest on, the row-range API,
 * errors, the thread pool and level detection.
 *
 * "Bitwise equal" allows one thing only: any NaN matches any NaN.  Mismatches are counted and asserted once per test
 * with the seed of the first failing case.
 */
#include "tests.h"
#include "cli_run.h"
#include "../engine/cpu_gemv.h"
#include "../engine/pool.h"
#include "trellis/alloc.h"
#include "trellis/codebook.h"
#include "trellis/fp16.h"
#include "trellis/ops.h"
#include "trellis/pack.h"
#include "trellis/rng.h"

#include <jansson.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- test data ------------------------------------------------------------------------------------------------- */

enum { SIGNS_PM1 = 0, SIGNS_GENERAL = 1 };
enum { VALUES_PLAIN = 0, VALUES_SPECIAL = 1 };

typedef struct lin {
    tr_qweight w;
    uint8_t *q, *packed;
    float *s, *su, *sv;
} lin;

typedef struct gcase {
    uint32_t O, I, gs, M;
    unsigned b;
    tr_rotation rot;
    int signs, values;
    uint64_t seed;
} gcase;

/* A special float: NaN, ±Inf, ±0, f32 subnormal or huge, else a plain normal value v. */
static float special_or(tr_rng *r, float v)
{
    static const uint32_t sp[] = {0x7FC00000u, 0xFFC01234u, 0x7F800000u, 0xFF800000u, 0x00000000u,
                                  0x80000000u, 0x00000123u, 0x80400000u, 0x7E800000u, 0x0DA24260u};
    if (tr_rng_u01(r) < 0.02)
        return tr_bits_f32(sp[tr_rng_int(r, 0, 9)]);
    return v;
}

/* Scales: plain 2^-8..2^-2 of either sign; special adds W16-subnormal (2^-30), W16-overflow (2^12..2^16), ±0,
 * NaN and ±Inf scales. */
static float scale_value(tr_rng *r, int values)
{
    float v = (float)ldexp(1.0 + tr_rng_u01(r), (int)tr_rng_int(r, -8, -3));
    if (tr_rng_u01(r) < 0.1)
        v = -v;
    if (values != VALUES_SPECIAL)
        return v;
    double u = tr_rng_u01(r);
    if (u < 0.08)
        return (float)ldexp(1.0 + tr_rng_u01(r), (int)tr_rng_int(r, -32, -26));
    if (u < 0.14)
        return (float)ldexp(1.0 + tr_rng_u01(r), (int)tr_rng_int(r, 12, 16));
    if (u < 0.17)
        return u < 0.155 ? 0.0f : -0.0f;
    if (u < 0.18)
        return tr_bits_f32(u < 0.175 ? 0x7FC00000u : 0x7F800000u);
    return v;
}

static float sign_value(tr_rng *r, int signs)
{
    if (signs == SIGNS_GENERAL)
        return (float)((tr_rng_next(r) >> 63 ? -1.0 : 1.0) * (0.25 + 1.75 * tr_rng_u01(r)));
    return tr_rng_next(r) >> 63 ? -1.0f : 1.0f;
}

static void lin_make(lin *l, const gcase *c)
{
    tr_rng r;
    tr_rng_seed(&r, c->seed);
    uint32_t G = (c->I + c->gs - 1) / c->gs;
    size_t plen = 1 + (size_t)tr_packed_body_bytes(c->O, c->I, c->b);
    l->q = malloc((size_t)c->O * c->I);
    l->packed = malloc(plen);
    l->s = malloc((size_t)G * c->O * sizeof(float));
    l->su = malloc((size_t)c->I * sizeof(float));
    l->sv = malloc((size_t)c->O * sizeof(float));
    for (size_t k = 0; k < (size_t)c->O * c->I; k++)
        l->q[k] = (uint8_t)tr_rng_int(&r, 0, (1 << c->b) - 1);
    for (size_t k = 0; k < (size_t)G * c->O; k++)
        l->s[k] = scale_value(&r, c->values);
    int special_signs = c->signs == SIGNS_GENERAL && c->values == VALUES_SPECIAL;
    for (uint32_t k = 0; k < c->I; k++) {
        float v = sign_value(&r, c->signs);
        l->su[k] = special_signs ? special_or(&r, v) : v;
    }
    for (uint32_t k = 0; k < c->O; k++) {
        float v = sign_value(&r, c->signs);
        l->sv[k] = special_signs ? special_or(&r, v) : v;
    }
    tr_pack_indices(l->q, c->O, c->I, c->b, l->packed);
    l->w = (tr_qweight){c->O, c->I, c->b, c->gs, G, c->rot, l->packed, plen, l->s, l->su, l->sv};
}

static void lin_drop(lin *l)
{
    free(l->q);
    free(l->packed);
    free(l->s);
    free(l->su);
    free(l->sv);
}

static float *make_x(const gcase *c)
{
    tr_rng r;
    tr_rng_seed(&r, c->seed ^ 0x5851F42D4C957F2Dull);
    float *x = malloc((size_t)c->M * c->I * sizeof(float));
    for (size_t k = 0; k < (size_t)c->M * c->I; k++) {
        float v = (float)tr_rng_normal(&r);
        x[k] = c->values == VALUES_SPECIAL ? special_or(&r, v) : v;
    }
    return x;
}

/* Bits equal, or both NaN. */
static int same(float a, float b)
{
    return tr_f32_bits(a) == tr_f32_bits(b) || (isnan(a) && isnan(b));
}

static unsigned long count_diff(const float *a, const float *b, size_t n)
{
    unsigned long bad = 0;
    for (size_t k = 0; k < n; k++)
        bad += !same(a[k], b[k]);
    return bad;
}

/* ---- harness: one case against the reference at every level and thread count ---------------------------------- */

typedef struct runner {
    tr_pool *pool[3];          /* NULL (calling thread), 2 threads, 3 threads (more than this machine's cores) */
    unsigned long bad, cases;
    char first[256];
} runner;

static int n_levels(void) { return (int)tr_simd_supported() + 1; }

static void note(runner *rn, unsigned long bad, const gcase *c, const char *what)
{
    rn->cases++;
    if (!bad)
        return;
    if (!rn->bad)
        snprintf(rn->first, sizeof rn->first,
                 "%s: O=%u I=%u b=%u gs=%u M=%u rot=%d signs=%d values=%d seed=%llu: %lu outputs differ", what, c->O,
                 c->I, c->b, c->gs, c->M, (int)c->rot, c->signs, c->values, (unsigned long long)c->seed, bad);
    rn->bad += bad;
}

static void run_case(runner *rn, const gcase *c)
{
    lin l;
    lin_make(&l, c);
    float *x = make_x(c);
    size_t ny = (size_t)c->M * c->O;
    float *ref = malloc(ny * sizeof(float)), *y = malloc(ny * sizeof(float));
    tr_error err;
    ck_assert_int_eq(tr_ref_gemm_trellis(&l.w, x, c->M, TR_ACC_F32, 0, ref, &err), TR_OK);
    for (int lv = 0; lv < n_levels(); lv++)
        for (int t = 0; t < 3; t++) {
            memset(y, 0xA5, ny * sizeof(float));
            int rc = tr_cpu_gemm_trellis_level(&l.w, x, c->M, y, rn->pool[t], (tr_simd_level)lv, &err);
            ck_assert_msg(rc == TR_OK, "seed %llu: %s", (unsigned long long)c->seed, err.text);
            char what[64];
            snprintf(what, sizeof what, "%s threads=%d", tr_simd_name((tr_simd_level)lv), t + 1);
            note(rn, count_diff(ref, y, ny), c, what);
        }
    free(ref);
    free(y);
    free(x);
    lin_drop(&l);
}

static void runner_init(runner *rn)
{
    memset(rn, 0, sizeof *rn);
    tr_error err;
    ck_assert_int_eq(tr_pool_create(2, &rn->pool[1], &err), TR_OK);
    ck_assert_int_eq(tr_pool_create(3, &rn->pool[2], &err), TR_OK);
}

static void runner_done(runner *rn)
{
    tr_pool_destroy(rn->pool[1]);
    tr_pool_destroy(rn->pool[2]);
    ck_assert_msg(rn->bad == 0, "%lu mismatches over %lu runs; first: %s", rn->bad, rn->cases, rn->first);
}

static const uint32_t DIMS[] = {1, 7, 15, 16, 17, 31, 33, 100, 129, 257};
static const uint32_t GS[] = {16, 32, 64, 128, 256, 100};
static const uint32_t MS[] = {1, 2, 5, 17};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- equality with the reference ------------------------------------------------------------------------------- */

/* Every b with every (O, I) pair of DIMS (valgrind: a subset); gs, M, signs and special values rotate. */
START_TEST(test_shapes_all_bits)
{
    runner rn;
    runner_init(&rn);
    unsigned b = 2 + (unsigned)_i;
    size_t nd = tr_test_under_valgrind() ? 6 : COUNT(DIMS);
    for (size_t a = 0; a < nd; a++)
        for (size_t d = 0; d < nd; d++) {
            size_t k = a * nd + d;
            uint32_t O = DIMS[tr_test_under_valgrind() ? a * 2 % COUNT(DIMS) : a];
            uint32_t I = DIMS[tr_test_under_valgrind() ? d * 2 % COUNT(DIMS) : d];
            uint32_t M = MS[k % COUNT(MS)];
            if (O * I > 20000 && M == 17)
                M = 5;
            gcase c = {O, I, GS[(k + b) % COUNT(GS)], M, b, TR_ROT_NONE, (int)(k / 3 % 2),
                       k % 5 == 4 ? VALUES_SPECIAL : VALUES_PLAIN, 1000u * b + k};
            run_case(&rn, &c);
        }
    runner_done(&rn);
}
END_TEST

/* Every group size (the SIMD paths need gs % 16 == 0, gs = 100 takes the portable path) with both sign kinds. */
START_TEST(test_group_sizes)
{
    runner rn;
    runner_init(&rn);
    for (unsigned b = 2; b <= 8; b++)
        for (size_t g = 0; g < COUNT(GS); g++)
            for (int signs = 0; signs < 2; signs++) {
                gcase c = {33, tr_test_under_valgrind() ? 300 : 700, GS[g], signs ? 2 : 1, b, TR_ROT_NONE, signs,
                           VALUES_PLAIN, 77000u + 100u * b + 10u * g + (unsigned)signs};
                run_case(&rn, &c);
            }
    runner_done(&rn);
}
END_TEST

/* Tiny (W16 subnormal), huge (W16 = ±Inf), zero, NaN and Inf scales; x with NaN, Inf, subnormals, signed zeros. */
START_TEST(test_special_values)
{
    runner rn;
    runner_init(&rn);
    for (unsigned b = 2; b <= 8; b++)
        for (int v = 0; v < 4; v++) {
            gcase c = {v & 1 ? 17 : 40, v & 2 ? 256 : 99, v & 2 ? 128 : 32, (unsigned)(1 + 4 * (v & 1)), b,
                       v & 2 ? TR_ROT_HADAMARD128 : TR_ROT_NONE, v == 1 ? SIGNS_GENERAL : SIGNS_PM1,
                       VALUES_SPECIAL, 5150u + 10u * b + (unsigned)v};
            run_case(&rn, &c);
        }
    runner_done(&rn);
}
END_TEST

/* Rotation hadamard128 (any su, sv: they are applied to x and after the sum). */
START_TEST(test_hadamard)
{
    runner rn;
    runner_init(&rn);
    static const uint32_t Is[] = {128, 256, 384};
    static const uint32_t Os[] = {1, 17, 33, 100};
    for (unsigned b = 2; b <= 8; b++)
        for (size_t a = 0; a < COUNT(Is); a++)
            for (size_t o = 0; o < COUNT(Os); o++) {
                size_t k = a * COUNT(Os) + o;
                if (tr_test_under_valgrind() && k % 3)
                    continue;
                gcase c = {Os[o], Is[a], GS[(k + b) % COUNT(GS)], MS[k % 3], b, TR_ROT_HADAMARD128, (int)(k % 2),
                           VALUES_PLAIN, 9100u + 20u * b + k};
                run_case(&rn, &c);
            }
    runner_done(&rn);
}
END_TEST

/* M = 17 (four 4-token blocks and a tail) and long rows with many groups; the benchmark shape 2048x1536. */
START_TEST(test_prefill_and_long_rows)
{
    runner rn;
    runner_init(&rn);
    int vg = tr_test_under_valgrind();
    for (unsigned b = 2; b <= 8; b++) {
        gcase c1 = {vg ? 20 : 70, vg ? 300 : 1029, 64, 17, b, TR_ROT_NONE, (int)(b % 2), VALUES_PLAIN, 3300u + b};
        run_case(&rn, &c1);
        gcase c2 = {vg ? 16 : 129, vg ? 512 : 2048, 128, 1 + b % 3, b, TR_ROT_HADAMARD128, 1, VALUES_PLAIN,
                    4400u + b};
        run_case(&rn, &c2);
    }
    if (!vg)
        for (unsigned b = 2; b <= 4; b++) {
            gcase c = {2048, 1536, 128, 1, b, TR_ROT_NONE, SIGNS_PM1, VALUES_PLAIN, 5500u + b};
            run_case(&rn, &c);
        }
    runner_done(&rn);
}
END_TEST

/* Random cases over the whole parameter space (shape, b, gs, signs, rotation, M, special values). */
START_TEST(test_random_cases)
{
    runner rn;
    runner_init(&rn);
    tr_rng r;
    tr_rng_seed(&r, 20240611);
    int n = tr_test_under_valgrind() ? 12 : 150;
    for (int k = 0; k < n; k++) {
        gcase c;
        c.rot = tr_rng_int(&r, 0, 3) == 0 ? TR_ROT_HADAMARD128 : TR_ROT_NONE;
        c.O = (uint32_t)tr_rng_int(&r, 1, 80);
        c.I = c.rot == TR_ROT_HADAMARD128 ? 128u * (uint32_t)tr_rng_int(&r, 1, 3) : (uint32_t)tr_rng_int(&r, 1, 400);
        c.b = (unsigned)tr_rng_int(&r, 2, 8);
        c.gs = tr_rng_int(&r, 0, 3) ? 16u * (uint32_t)tr_rng_int(&r, 1, 12) : (uint32_t)tr_rng_int(&r, 1, 300);
        c.M = (uint32_t)tr_rng_int(&r, 1, 9);
        c.signs = (int)tr_rng_int(&r, 0, 1);
        c.values = (int)tr_rng_int(&r, 0, 1);
        c.seed = tr_rng_next(&r);
        run_case(&rn, &c);
    }
    runner_done(&rn);
}
END_TEST

/* The row-range API: any split of [0, O) into ranges gives the same bits as one call. */
START_TEST(test_rows_api)
{
    unsigned long bad = 0;
    for (unsigned b = 2; b <= 8; b += 3)
        for (int lv = 0; lv < n_levels(); lv++) {
            gcase c = {45, 200, 32, 3, b, TR_ROT_NONE, SIGNS_PM1, VALUES_PLAIN, 600u + b};
            lin l;
            lin_make(&l, &c);
            float *x = make_x(&c);
            tr_gemv_plan p;
            tr_error err;
            ck_assert_int_eq(tr_cpu_gemv_plan(&l.w, (tr_simd_level)lv, &p, &err), TR_OK);
            ck_assert_int_eq(p.mode, TR_GEMV_FOLD);
            ck_assert_int_eq(p.ldx, 208);
            float *xp = tr_malloc_aligned((size_t)c.M * p.ldx * sizeof(float));
            float *y1 = malloc(c.M * c.O * sizeof(float)), *y2 = malloc(c.M * c.O * sizeof(float));
            tr_cpu_gemv_prepare(&p, x, c.M, xp);
            tr_cpu_gemv_rows(&p, xp, c.M, 0, c.O, y1);
            static const uint32_t cuts[] = {0, 1, 5, 6, 16, 19, 32, 44, 45};
            for (size_t k = 0; k + 1 < COUNT(cuts); k++)
                tr_cpu_gemv_rows(&p, xp, c.M, cuts[k], cuts[k + 1], y2);
            tr_cpu_gemv_rows(&p, xp, c.M, 7, 7, y2);    /* empty range */
            bad += count_diff(y1, y2, c.M * c.O);
            tr_dealloc_aligned(xp);
            free(y1);
            free(y2);
            free(x);
            lin_drop(&l);
        }
    ck_assert_msg(bad == 0, "%lu row-range mismatches", bad);
}
END_TEST

/* ---- packed plans ---------------------------------------------------------------------------------------------- */

/* Whether tr_cpu_gemv_pack must pack this plan (cpu_gemv.h): AVX-512 kernels, FOLD or HAT, b ≤ 4, a whole row block. */
static int expect_packed(const tr_gemv_plan *p)
{
    return p->level == TR_SIMD_AVX512 && p->mode != TR_GEMV_GENERAL && p->w->bits <= 4 && p->w->O >= TR_PACK_ROWS;
}

/* Rows [0, O) in random ranges (empty ones included), each a separate tr_cpu_gemv_rows call. */
static void rows_in_pieces(const tr_gemv_plan *p, const float *xp, uint32_t M, float *y, tr_rng *r)
{
    uint32_t O = p->w->O;
    for (uint32_t o = 0; o < O;) {
        uint32_t n = (uint32_t)tr_rng_int(r, 0, O - o < 40 ? O - o : 40);
        tr_cpu_gemv_rows(p, xp, M, o, o + n, y);
        o += n;
    }
}

/* One case through packed plans at every level: tr_cpu_gemv_run on 1, 2 and 3 threads and random row ranges, each
 * bitwise against the reference; the plan packs exactly when it should and runs unpacked again after release. */
static void run_packed_case(runner *rn, const gcase *c)
{
    lin l;
    lin_make(&l, c);
    float *x = make_x(c);
    size_t ny = (size_t)c->M * c->O;
    float *ref = malloc(ny * sizeof(float)), *y = malloc(ny * sizeof(float));
    tr_error err;
    tr_rng r;
    tr_rng_seed(&r, c->seed + 17);
    ck_assert_int_eq(tr_ref_gemm_trellis(&l.w, x, c->M, TR_ACC_F32, 0, ref, &err), TR_OK);
    for (int lv = 0; lv < n_levels(); lv++) {
        tr_gemv_plan p;
        ck_assert_int_eq(tr_cpu_gemv_plan(&l.w, (tr_simd_level)lv, &p, &err), TR_OK);
        ck_assert_int_eq(tr_cpu_gemv_pack(&p, &err), TR_OK);
        ck_assert_int_eq(p.pack != NULL, expect_packed(&p));
        ck_assert_int_eq(tr_cpu_gemv_pack(&p, &err), TR_OK);   /* idempotent */
        char what[64];
        for (int t = 0; t < 3; t++) {
            memset(y, 0xA5, ny * sizeof(float));
            ck_assert_int_eq(tr_cpu_gemv_run(&p, x, c->M, y, rn->pool[t], &err), TR_OK);
            snprintf(what, sizeof what, "packed %s threads=%d", tr_simd_name((tr_simd_level)lv), t + 1);
            note(rn, count_diff(ref, y, ny), c, what);
        }
        float *xp = tr_malloc_aligned((size_t)c->M * p.ldx * sizeof(float));
        tr_cpu_gemv_prepare(&p, x, c->M, xp);
        memset(y, 0xA5, ny * sizeof(float));
        rows_in_pieces(&p, xp, c->M, y, &r);
        snprintf(what, sizeof what, "packed %s row ranges", tr_simd_name((tr_simd_level)lv));
        note(rn, count_diff(ref, y, ny), c, what);
        tr_dealloc_aligned(xp);
        tr_cpu_gemv_plan_release(&p);
        ck_assert_ptr_null(p.pack);
        tr_cpu_gemv_plan_release(&p);   /* safe on an unpacked plan */
        memset(y, 0xA5, ny * sizeof(float));
        ck_assert_int_eq(tr_cpu_gemv_run(&p, x, c->M, y, NULL, &err), TR_OK);
        snprintf(what, sizeof what, "released %s", tr_simd_name((tr_simd_level)lv));
        note(rn, count_diff(ref, y, ny), c, what);
    }
    free(ref);
    free(y);
    free(x);
    lin_drop(&l);
}

/* b = 2..4, FOLD: O around the row block (8) and the tile (16), I around the chunk (16) and the packed lines (128 and
 * 256 weights), group sizes 16, 32, 128 and 48 / 96 (I not a multiple of gs, groups not aligned to nibbles or lines),
 * M = 1..5 (packed single tokens next to native 4-token blocks), special values in every third case. */
START_TEST(test_packed_fold)
{
    runner rn;
    runner_init(&rn);
    static const uint32_t Os[] = {7, 8, 9, 16, 24, 33, 100};
    static const uint32_t Is[] = {1, 15, 16, 17, 100, 128, 129, 256, 300, 529};
    static const uint32_t Gs[] = {16, 32, 128, 48, 96};
    int vg = tr_test_under_valgrind();
    for (unsigned b = 2; b <= 4; b++)
        for (size_t a = 0; a < COUNT(Os); a++)
            for (size_t i = 0; i < COUNT(Is); i++) {
                size_t k = (b * COUNT(Os) + a) * COUNT(Is) + i;
                if (vg && k % 5)
                    continue;
                gcase c = {Os[a], Is[i], Gs[k % COUNT(Gs)], 1 + (uint32_t)(k % 5), b, TR_ROT_NONE, SIGNS_PM1,
                           k % 3 == 2 ? VALUES_SPECIAL : VALUES_PLAIN, 88000u + k};
                run_packed_case(&rn, &c);
            }
    runner_done(&rn);
}
END_TEST

/* b = 2..4, HAT (any su, sv) and a GENERAL case (never packed), the benchmark's group size and long rows. */
START_TEST(test_packed_hat_general)
{
    runner rn;
    runner_init(&rn);
    static const uint32_t Os[] = {8, 17, 40};
    static const uint32_t Is[] = {128, 384, 1024};
    static const uint32_t Gs[] = {16, 32, 128, 96};
    for (unsigned b = 2; b <= 4; b++) {
        for (size_t a = 0; a < COUNT(Os); a++)
            for (size_t i = 0; i < COUNT(Is); i++) {
                size_t k = (b * COUNT(Os) + a) * COUNT(Is) + i;
                gcase c = {Os[a], Is[i], Gs[k % COUNT(Gs)], 1 + (uint32_t)(k % 5), b, TR_ROT_HADAMARD128,
                           (int)(k % 2), k % 4 == 3 ? VALUES_SPECIAL : VALUES_PLAIN, 89000u + k};
                run_packed_case(&rn, &c);
            }
        gcase c = {33, 200, 32, 3, b, TR_ROT_NONE, SIGNS_GENERAL, VALUES_PLAIN, 89500u + b};
        run_packed_case(&rn, &c);
        gcase c5 = {20, 100, 16, 2, b + 3, TR_ROT_NONE, SIGNS_PM1, VALUES_PLAIN, 89600u + b};   /* b ≥ 5: native */
        run_packed_case(&rn, &c5);
    }
    runner_done(&rn);
}
END_TEST

/* Allocation failures leave the plan unpacked and usable; TR_SIMD below AVX-512 packs nothing. */
START_TEST(test_packed_nomem_and_levels)
{
    gcase c = {40, 300, 32, 1, 2, TR_ROT_NONE, SIGNS_PM1, VALUES_PLAIN, 91};
    lin l;
    lin_make(&l, &c);
    float *x = make_x(&c);
    float ref[40], y[40];
    tr_error err;
    ck_assert_int_eq(tr_ref_gemm_trellis(&l.w, x, 1, TR_ACC_F32, 0, ref, &err), TR_OK);
    tr_gemv_plan p;
    ck_assert_int_eq(tr_cpu_gemv_plan(&l.w, TR_SIMD_AVX512, &p, &err), TR_OK);
    for (unsigned long n = 1; n <= 3 && expect_packed(&p); n++) {
        tr_alloc_fail_at(n);
        int rc = tr_cpu_gemv_pack(&p, &err);
        tr_alloc_fail_at(0);
        ck_assert_int_eq(rc, TR_E_NOMEM);
        ck_assert_ptr_null(p.pack);
        ck_assert_uint_eq(tr_cpu_gemv_pack_bytes(&p), 0);
        ck_assert_int_eq(tr_cpu_gemv_run(&p, x, 1, y, NULL, &err), TR_OK);
        ck_assert_uint_eq(count_diff(ref, y, 40), 0);
    }
    ck_assert_int_eq(tr_cpu_gemv_pack(&p, &err), TR_OK);
    ck_assert_uint_eq(tr_cpu_gemv_pack_bytes(&p) > 0, expect_packed(&p));
    tr_cpu_gemv_plan_release(&p);
    const char *old = getenv("TR_SIMD");
    char *saved = old ? strdup(old) : NULL;
    static const char *caps[] = {"portable", "avx2"};
    for (size_t k = 0; k < COUNT(caps); k++) {
        setenv("TR_SIMD", caps[k], 1);
        ck_assert_int_eq(tr_cpu_gemv_plan(&l.w, tr_simd_detect(), &p, &err), TR_OK);
        ck_assert_int_eq(tr_cpu_gemv_pack(&p, &err), TR_OK);
        ck_assert_ptr_null(p.pack);
        ck_assert_int_eq(tr_cpu_gemv_run(&p, x, 1, y, NULL, &err), TR_OK);
        ck_assert_uint_eq(count_diff(ref, y, 40), 0);
        tr_cpu_gemv_plan_release(&p);
    }
    if (saved) {
        setenv("TR_SIMD", saved, 1);
        free(saved);
    } else
        unsetenv("TR_SIMD");
    free(x);
    lin_drop(&l);
}
END_TEST

/* ---- the identities behind the fast paths ---------------------------------------------------------------------- */

/* With su, sv ∈ {±1}: W16 = su·sv·RNh(RN32(grid[q]·S)) and the table form T = RNh(RN32(grid[q]·(S·sv))) gives
 * widen(W16) = su·widen(T), for every index, scales of every kind (subnormal, overflow, zero, NaN, Inf). */
START_TEST(test_identity_fold)
{
    unsigned long bad = 0;
    tr_rng r;
    tr_rng_seed(&r, 42);
    for (unsigned b = 2; b <= 8; b++) {
        const float *grid = tr_grid(b);
        for (int n = 0; n < 20000; n++) {
            unsigned q = (unsigned)tr_rng_int(&r, 0, (1 << b) - 1);
            float s = special_or(&r, scale_value(&r, VALUES_SPECIAL));
            float su = tr_rng_next(&r) >> 63 ? -1.0f : 1.0f, sv = tr_rng_next(&r) >> 63 ? -1.0f : 1.0f;
            uint16_t w16 = tr_f32_to_f16(((grid[q] * s) * su) * sv);
            uint16_t t = tr_f32_to_f16(grid[q] * (s * sv));
            bad += !same(tr_f16_to_f32(w16), su * tr_f16_to_f32(t));
        }
    }
    ck_assert_msg(bad == 0, "%lu fold identity failures", bad);
}
END_TEST

/* fmaf(x·su, T, acc) = fmaf(x, T·su, acc) for su = ±1: the same exact product (special x, T and acc included). */
START_TEST(test_identity_fma)
{
    unsigned long bad = 0;
    tr_rng r;
    tr_rng_seed(&r, 43);
    for (int n = 0; n < 200000; n++) {
        float x = special_or(&r, (float)tr_rng_normal(&r));
        float t = special_or(&r, tr_f16_to_f32((uint16_t)tr_rng_int(&r, 0, 0xFFFF)));
        float acc = special_or(&r, (float)tr_rng_normal(&r));
        float su = tr_rng_next(&r) >> 63 ? -1.0f : 1.0f;
        bad += !same(fmaf(x * su, t, acc), fmaf(x, t * su, acc));
    }
    ck_assert_msg(bad == 0, "%lu fma identity failures", bad);
}
END_TEST

/* ---- errors, plan, detection --------------------------------------------------------------------------------- */

START_TEST(test_errors)
{
    gcase c = {20, 40, 16, 2, 3, TR_ROT_NONE, SIGNS_PM1, VALUES_PLAIN, 7};
    lin l;
    lin_make(&l, &c);
    float *x = make_x(&c);
    float y[40], ref[40];
    tr_error err;
    for (int k = 0; k < 40; k++)
        y[k] = ref[k] = -7.0f;
    tr_qweight w = l.w;
    w.bits = 4;
    ck_assert_int_eq(tr_cpu_gemm_trellis(&w, x, 2, y, NULL, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_ref_gemm_trellis(&w, x, 2, TR_ACC_F32, 0, ref, &err), TR_E_INVALID_PARAM);
    w = l.w;
    w.indices_len--;
    ck_assert_int_eq(tr_cpu_gemm_trellis(&w, x, 2, y, NULL, &err), TR_E_INVALID_SHAPE);
    ck_assert_ptr_nonnull(strstr(err.text, "gemm_trellis"));
    w = l.w;
    w.G = 1;
    ck_assert_int_eq(tr_cpu_gemm_trellis(&w, x, 2, y, NULL, &err), TR_E_INVALID_SHAPE);
    w = l.w;
    w.rotation = TR_ROT_HADAMARD128;
    ck_assert_int_eq(tr_cpu_gemm_trellis(&w, x, 2, y, NULL, &err), TR_E_INVALID_SHAPE);
    for (int k = 0; k < 40; k++)
        ck_assert(tr_f32_bits(y[k]) == tr_f32_bits(-7.0f));
    ck_assert_int_eq(tr_cpu_gemm_trellis(&l.w, x, 0, y, NULL, &err), TR_OK);   /* M = 0: nothing to do */
    tr_alloc_fail_at(1);
    int rc = tr_cpu_gemm_trellis(&l.w, x, 2, y, NULL, &err);
    tr_alloc_fail_at(0);
    ck_assert_int_eq(rc, TR_E_NOMEM);
    ck_assert(tr_f32_bits(y[0]) == tr_f32_bits(-7.0f));
    free(x);
    lin_drop(&l);
}
END_TEST

START_TEST(test_plan_modes)
{
    gcase c = {20, 128, 32, 1, 4, TR_ROT_NONE, SIGNS_PM1, VALUES_PLAIN, 8};
    lin l;
    lin_make(&l, &c);
    tr_gemv_plan p;
    tr_error err;
    ck_assert_int_eq(tr_cpu_gemv_plan(&l.w, TR_SIMD_AVX512, &p, &err), TR_OK);
    ck_assert_int_eq(p.mode, TR_GEMV_FOLD);
    ck_assert_int_eq(p.level, tr_simd_supported());
    ck_assert_int_eq(p.lane_perm, p.level == TR_SIMD_AVX512);
    l.su[5] = -0.0f * l.su[5];    /* a signed zero is not a sign */
    ck_assert_int_eq(tr_cpu_gemv_plan(&l.w, TR_SIMD_AVX512, &p, &err), TR_OK);
    ck_assert_int_eq(p.mode, TR_GEMV_GENERAL);
    l.w.rotation = TR_ROT_HADAMARD128;
    ck_assert_int_eq(tr_cpu_gemv_plan(&l.w, TR_SIMD_PORTABLE, &p, &err), TR_OK);
    ck_assert_int_eq(p.mode, TR_GEMV_HAT);
    ck_assert_int_eq(p.level, TR_SIMD_PORTABLE);
    l.w.rotation = TR_ROT_NONE;
    l.w.gs = 40;
    l.w.G = 4;
    ck_assert_int_eq(tr_cpu_gemv_plan(&l.w, TR_SIMD_AVX512, &p, &err), TR_OK);
    ck_assert_int_eq(p.level, TR_SIMD_PORTABLE);
    lin_drop(&l);
}
END_TEST

START_TEST(test_detect)
{
    tr_simd_level lv;
    for (int k = 0; k <= 2; k++) {
        ck_assert_int_eq(tr_simd_parse(tr_simd_name((tr_simd_level)k), &lv), 0);
        ck_assert_int_eq(lv, k);
    }
    ck_assert_int_eq(tr_simd_parse("sse9", &lv), -1);
    const char *old = getenv("TR_SIMD");
    char *saved = old ? strdup(old) : NULL;
    tr_simd_level hw = tr_simd_supported();
    setenv("TR_SIMD", "portable", 1);
    ck_assert_int_eq(tr_simd_detect(), TR_SIMD_PORTABLE);
    setenv("TR_SIMD", "avx2", 1);
    ck_assert_int_eq(tr_simd_detect(), hw < TR_SIMD_AVX2 ? hw : TR_SIMD_AVX2);
    setenv("TR_SIMD", "avx512", 1);
    ck_assert_int_eq(tr_simd_detect(), hw);
    setenv("TR_SIMD", "bogus", 1);
    ck_assert_int_eq(tr_simd_detect(), hw);
    if (saved) {
        setenv("TR_SIMD", saved, 1);
        free(saved);
    } else
        unsetenv("TR_SIMD");
}
END_TEST

/* ---- thread pool ---------------------------------------------------------------------------------------------- */

typedef struct count_ctx {
    atomic_uint *hits;
    atomic_uint calls;
} count_ctx;

static void count_task(void *ctx, size_t t)
{
    count_ctx *c = ctx;
    atomic_fetch_add(&c->hits[t], 1);
    atomic_fetch_add(&c->calls, 1);
}

START_TEST(test_pool)
{
    static const size_t tasks[] = {0, 1, 2, 3, 17, 1000};
    unsigned long bad = 0;
    for (unsigned n = 0; n <= 4; n++) {
        tr_pool *p;
        tr_error err;
        ck_assert_int_eq(tr_pool_create(n, &p, &err), TR_OK);
        ck_assert_uint_eq(tr_pool_threads(p), n ? n : tr_cpu_count());
        int reps = tr_test_under_valgrind() ? 3 : 50;
        for (int rep = 0; rep < reps; rep++)
            for (size_t k = 0; k < COUNT(tasks); k++) {
                atomic_uint hits[1000];
                count_ctx c = {hits, 0};
                for (size_t t = 0; t < 1000; t++)
                    atomic_init(&hits[t], 0);
                tr_pool_run(p, tasks[k], count_task, &c);
                bad += atomic_load(&c.calls) != tasks[k];
                for (size_t t = 0; t < 1000; t++)
                    bad += atomic_load(&hits[t]) != (t < tasks[k]);
            }
        tr_pool_destroy(p);
    }
    tr_pool_destroy(NULL);
    ck_assert_uint_eq(tr_pool_threads(NULL), 1);
    ck_assert_msg(bad == 0, "%lu pool miscounts", bad);
}
END_TEST

/* Back-to-back runs of few tiny tasks: a worker that is late for one run must never run (or count) a task of the
 * next run from that run's half-written job. */
START_TEST(test_pool_stress)
{
    unsigned long bad = 0;
    for (unsigned n = 2; n <= 4; n++) {
        tr_pool *p;
        tr_error err;
        ck_assert_int_eq(tr_pool_create(n, &p, &err), TR_OK);
        int reps = tr_test_under_valgrind() ? 300 : 20000;
        for (int rep = 0; rep < reps; rep++) {
            size_t nt = 2 + (size_t)rep % 4;
            atomic_uint hits[8];
            count_ctx c = {hits, 0};
            for (size_t t = 0; t < 8; t++)
                atomic_init(&hits[t], 0);
            tr_pool_run(p, nt, count_task, &c);
            bad += atomic_load(&c.calls) != nt;
            for (size_t t = 0; t < 8; t++)
                bad += atomic_load(&hits[t]) != (t < nt);
        }
        tr_pool_destroy(p);
    }
    ck_assert_msg(bad == 0, "%lu pool miscounts", bad);
}
END_TEST

START_TEST(test_pool_nomem)
{
    tr_pool *p = (tr_pool *)&p;
    tr_error err;
    tr_alloc_fail_at(1);
    int rc = tr_pool_create(3, &p, &err);
    tr_alloc_fail_at(0);
    ck_assert_int_eq(rc, TR_E_NOMEM);
    ck_assert_ptr_null(p);
}
END_TEST

/* ---- trellis bench-kernels ------------------------------------------------------------------------------------- */

START_TEST(test_bench_cli)
{
    cli_result r = cli_run("bench-kernels", "--shape", "40x300", "--reps", "2", "--threads", "2", "--json", NULL);
    ck_assert_msg(r.status == 0, "status %d: %s", r.status, r.err);
    json_error_t je;
    json_t *doc = json_loads(r.out, 0, &je);
    ck_assert_ptr_nonnull(doc);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "schema")), "trellis.bench_kernels/1");
    json_t *res = json_object_get(doc, "results");
    ck_assert_uint_eq(json_array_size(res), 3);
    for (size_t k = 0; k < 3; k++) {
        json_t *e = json_array_get(res, k);
        ck_assert(json_is_true(json_object_get(e, "bitwise_equal")));
        ck_assert_int_eq(json_integer_value(json_object_get(e, "bits")), (json_int_t)(2 + k));
        ck_assert_int_eq(json_integer_value(json_object_get(e, "reps")), 2);
        ck_assert(json_real_value(json_object_get(e, "median_us")) > 0);
        ck_assert(json_real_value(json_object_get(e, "native_median_us")) > 0);
        ck_assert(json_is_true(json_object_get(e, "native_bitwise_equal")));
        ck_assert_int_eq(json_integer_value(json_object_get(e, "native_reps")), 2);
        int packed = json_is_true(json_object_get(e, "packed"));
        ck_assert_int_eq(packed, tr_simd_detect() == TR_SIMD_AVX512);
        ck_assert_int_eq(json_real_value(json_object_get(e, "pack_us")) > 0, packed);
        ck_assert_int_eq(json_integer_value(json_object_get(e, "pack_bytes")) > 0, packed);
    }
    ck_assert_ptr_nonnull(strstr(r.err, "bitwise equal"));   /* the table goes to stderr with --json - */
    json_decref(doc);
    cli_result_free(&r);
    r = cli_run("bench-kernels", "--shape", "17x33", "--reps", "1", "--simd", "portable", "--gs", "32", NULL);
    ck_assert_msg(r.status == 0, "status %d: %s", r.status, r.err);
    ck_assert_ptr_nonnull(strstr(r.out, "portable"));
    ck_assert_ptr_nonnull(strstr(r.out, "gs 32"));
    cli_result_free(&r);
    static const char *bad[][2] = {{"--simd", "sse"}, {"--shape", "0x4"}, {"--reps", "0"}, {"--threads", "x"},
                                   {"--frob", "1"}, {"--gs", "0"}};
    for (size_t k = 0; k < COUNT(bad); k++) {
        r = cli_run("bench-kernels", bad[k][0], bad[k][1], NULL);
        ck_assert_int_eq(r.status, 2);
        cli_result_free(&r);
    }
    r = cli_run("bench-kernels", "--help", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "Usage: trellis bench-kernels"));
    cli_result_free(&r);
}
END_TEST

Suite *suite_cpu_gemv(void)
{
    Suite *s = suite_create("cpu_gemv");
    TCase *eq = tcase_create("equality");
    tcase_set_timeout(eq, tr_test_under_valgrind() ? 1200 : 120);
    tcase_add_loop_test(eq, test_shapes_all_bits, 0, 7);
    tcase_add_test(eq, test_group_sizes);
    tcase_add_test(eq, test_special_values);
    tcase_add_test(eq, test_hadamard);
    tcase_add_test(eq, test_prefill_and_long_rows);
    tcase_add_test(eq, test_random_cases);
    tcase_add_test(eq, test_rows_api);
    tcase_add_test(eq, test_packed_fold);
    tcase_add_test(eq, test_packed_hat_general);
    suite_add_tcase(s, eq);
    TCase *misc = tcase_create("misc");
    tcase_set_timeout(misc, tr_test_under_valgrind() ? 600 : 60);
    tcase_add_test(misc, test_identity_fold);
    tcase_add_test(misc, test_identity_fma);
    tcase_add_test(misc, test_errors);
    tcase_add_test(misc, test_plan_modes);
    tcase_add_test(misc, test_detect);
    tcase_add_test(misc, test_pool);
    tcase_add_test(misc, test_pool_stress);
    tcase_add_test(misc, test_pool_nomem);
    tcase_add_test(misc, test_packed_nomem_and_levels);
    tcase_add_test(misc, test_bench_cli);
    suite_add_tcase(s, misc);
    return s;
}
