/*
 * check_fp16.c — fp32/fp64 <-> fp16 and fp32 <-> bf16 conversions (FORMAT.md §8).
 *
 * Every conversion is checked against an independent nearest-even selection written here (a sorted table of all
 * finite fp16 values built with ldexp, and a two-candidate distance test for bf16), over all 65,536 16-bit patterns
 * and >= 10^7 seeded random float32 values, and against the CPU's F16C / AVX512-BF16 instructions when the CPU has
 * them (the cross-check prints "skipped" otherwise, e.g. under valgrind, which hides AVX-512).
 */
#include "tests.h"
#include "trellis/fp16.h"
#include "trellis/rng.h"

#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define SEED 0x5EED16ull

/* ---- independent model ---------------------------------------------------------------------------------------- */

/* All positive finite fp16 values, ascending: bit patterns 0x0000..0x7BFF are already in ascending order. */
static double f16_table[0x7C00];

static void build_f16_table(void)
{
    for (unsigned h = 0; h < 0x7C00; h++) {
        unsigned e = h >> 10, m = h & 0x3FF;
        f16_table[h] = e ? ldexp(1024.0 + m, (int)e - 25) : ldexp((double)m, -24);
    }
}

/* Nearest-even fp16 of a finite or infinite double, by search in the table (IEEE overflow rule: |x| >= 65520). */
static uint16_t model_to_f16(double x)
{
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double a = fabs(x);
    if (isnan(x))
        return 0xFFFF;  /* caller handles NaN separately */
    if (a >= 65520.0)
        return sign | 0x7C00;
    unsigned lo = 0, hi = 0x7BFF;   /* largest index with table <= a */
    while (lo < hi) {
        unsigned mid = (lo + hi + 1) / 2;
        if (f16_table[mid] <= a)
            lo = mid;
        else
            hi = mid - 1;
    }
    if (f16_table[lo] == a || lo == 0x7BFF)
        return sign | (uint16_t)lo;
    double dl = a - f16_table[lo], dh = f16_table[lo + 1] - a;
    unsigned pick = dl < dh ? lo : dh < dl ? lo + 1 : ((lo & 1) ? lo + 1 : lo);
    return sign | (uint16_t)pick;
}

/* Nearest-even bf16 by comparing the two neighbours (truncation and the next pattern) in double. */
static uint16_t model_to_bf16(float f)
{
    uint32_t u = tr_f32_bits(f);
    uint16_t lo = (uint16_t)(u >> 16);
    if (isinf(f) || (u & 0xFFFF) == 0)
        return lo;
    double x = fabs((double)f);
    double vlo = fabs((double)tr_bits_f32((uint32_t)lo << 16));
    uint16_t hi = (uint16_t)(lo + 1);
    double vhi = ((hi & 0x7FFF) == 0x7F80) ? ldexp(1.0, 128) : fabs((double)tr_bits_f32((uint32_t)hi << 16));
    double dl = x - vlo, dh = vhi - x;
    if (dl < dh)
        return lo;
    if (dh < dl)
        return hi;
    return (lo & 1) ? hi : lo;
}

static int is_nan32(uint32_t u) { return (u & 0x7FFFFFFF) > 0x7F800000; }

/* Expected fp16 of a float32 pattern under FORMAT.md §8 (NaN rule from the spec text, rest from the model). */
static uint16_t expect_f16(uint32_t u)
{
    if (is_nan32(u))
        return (uint16_t)(((u >> 16) & 0x8000) | 0x7E00 | ((u >> 13) & 0x3FF));
    return model_to_f16((double)tr_bits_f32(u));
}

/* Random float32 patterns: half uniform over all 2^32, half concentrated where fp16 rounding happens. */
static uint32_t random_f32_pattern(tr_rng *r)
{
    uint64_t v = tr_rng_next(r);
    if (v & 1)
        return (uint32_t)(v >> 32);
    uint32_t e = 100 + (uint32_t)((v >> 1) % 45);    /* exponents 2^-27 .. 2^17 */
    return (uint32_t)((v >> 63) << 31) | (e << 23) | (uint32_t)((v >> 8) & 0x7FFFFF);
}

static unsigned long sample_count(void)
{
    return tr_test_under_valgrind() ? 1000000ul : 10000000ul;
}

/* ---- hardware ------------------------------------------------------------------------------------------------- */

static int cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

static int cpu_has_avx512bf16(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE))
        return 0;
    unsigned xlo, xhi;
    __asm__("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    if ((xlo & 0xE6) != 0xE6)           /* OS saves AVX-512 state */
        return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & bit_AVX512F))
        return 0;
    return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5));
}

__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f)
{
    return (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT), 0);
}

__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h)
{
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

__attribute__((target("avx512f,avx512bf16,avx512vl"))) static uint16_t hw_f32_to_bf16(float f)
{
    __m128bh r = _mm_cvtneps_pbh(_mm_set_ss(f));
    uint16_t out;
    memcpy(&out, &r, 2);
    return out;
}

/* ---- tests ---------------------------------------------------------------------------------------------------- */

START_TEST(test_spot_values)
{
    static const struct {
        uint32_t f32;
        uint16_t f16, bf16;
    } spots[] = {
        {0x7F800001, 0x7E00, 0x7FC0}, {0x7FFFFFFF, 0x7FFF, 0x7FFF}, {0x3DCCCCCD, 0x2E66, 0x3DCD},
        {0x38800000, 0x0400, 0x3880}, {0x387FC000, 0x03FF, 0x3880}, {0x7F7FFFFF, 0x7C00, 0x7F80},
        {0x3F808000, 0x3C04, 0x3F80}, {0x3F818000, 0x3C0C, 0x3F82}, {0x00000000, 0x0000, 0x0000},
        {0x80000000, 0x8000, 0x8000}, {0x7F800000, 0x7C00, 0x7F80}, {0xFF800000, 0xFC00, 0xFF80},
    };
    for (size_t i = 0; i < sizeof spots / sizeof spots[0]; i++) {
        float f = tr_bits_f32(spots[i].f32);
        ck_assert_msg(tr_f32_to_f16(f) == spots[i].f16, "f16(0x%08x) = 0x%04x, want 0x%04x", spots[i].f32,
                      tr_f32_to_f16(f), spots[i].f16);
        ck_assert_msg(tr_f32_to_bf16(f) == spots[i].bf16, "bf16(0x%08x) = 0x%04x, want 0x%04x", spots[i].f32,
                      tr_f32_to_bf16(f), spots[i].bf16);
    }
    /* FORMAT.md §8 named cases */
    ck_assert_uint_eq(tr_f32_to_f16(65520.0f), 0x7C00);
    ck_assert_uint_eq(tr_f32_to_f16(65519.996f), 0x7BFF);
    ck_assert_uint_eq(tr_f32_to_f16(ldexpf(1.0f, -25)), 0x0000);
    ck_assert_uint_eq(tr_f32_to_f16(nextafterf(ldexpf(1.0f, -25), 1.0f)), 0x0001);
    ck_assert_uint_eq(tr_f32_to_f16(1.5f * ldexpf(1.0f, -25)), 0x0001);
    ck_assert_uint_eq(tr_f32_to_f16(tr_bits_f32(0x00000001)), 0x0000);   /* float32 subnormal -> 0 */
    ck_assert_uint_eq(tr_f32_to_f16(tr_bits_f32(0x807FFFFF)), 0x8000);
}
END_TEST

START_TEST(test_f16_to_f32_all)
{
    build_f16_table();
    unsigned long bad = 0, first = 0;
    int hw = cpu_has_f16c();
    for (uint32_t h = 0; h < 65536; h++) {
        float got = tr_f16_to_f32((uint16_t)h);
        uint32_t gu = tr_f32_bits(got);
        int ok;
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) {      /* NaN: sign, payload << 13, quiet bit */
            uint32_t want = ((h & 0x8000u) << 16) | 0x7F800000 | ((h & 0x3FFu) << 13) | 0x00400000;
            ok = gu == want;
        } else if ((h & 0x7FFF) == 0x7C00) {
            ok = isinf(got) && (signbit(got) != 0) == ((h & 0x8000) != 0);
        } else {
            double want = f16_table[h & 0x7FFF] * ((h & 0x8000) ? -1.0 : 1.0);
            ok = (double)got == want && (signbit(got) != 0) == ((h & 0x8000) != 0);
        }
        if (ok && hw)
            ok = tr_f32_bits(hw_f16_to_f32((uint16_t)h)) == gu;
        if (!ok && !bad++)
            first = h;
    }
    ck_assert_msg(bad == 0, "%lu fp16->f32 mismatches, first h=0x%04lx", bad, first);
    if (!hw)
        printf("fp16: F16C cross-check of fp16->f32 skipped (CPU lacks F16C)\n");
}
END_TEST

START_TEST(test_f16_roundtrip_all)
{
    unsigned long bad = 0, first = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t back = tr_f32_to_f16(tr_f16_to_f32((uint16_t)h));
        uint16_t want = tr_f16_is_nan((uint16_t)h) ? (uint16_t)(h | 0x0200) : (uint16_t)h;
        if (back != want && !bad++)
            first = h;
        /* f64 path too */
        if (tr_f64_to_f16((double)tr_f16_to_f32((uint16_t)h)) != want && !bad++)
            first = h;
    }
    ck_assert_msg(bad == 0, "%lu roundtrip mismatches, first 0x%04lx", bad, first);
}
END_TEST

START_TEST(test_f32_to_f16_random)
{
    build_f16_table();
    tr_rng r;
    tr_rng_seed(&r, SEED);
    int hw = cpu_has_f16c();
    unsigned long n = sample_count(), bad = 0, hwbad = 0;
    uint32_t first = 0, hwfirst = 0;
    for (unsigned long i = 0; i < n; i++) {
        uint32_t u = random_f32_pattern(&r);
        uint16_t got = tr_f32_to_f16(tr_bits_f32(u));
        if (got != expect_f16(u) && !bad++)
            first = u;
        if (hw && got != hw_f32_to_f16(tr_bits_f32(u)) && !hwbad++)
            hwfirst = u;
    }
    ck_assert_msg(bad == 0, "%lu f32->f16 mismatches vs the model over %lu inputs (seed 0x%llx), first 0x%08x", bad,
                  n, SEED, first);
    ck_assert_msg(hwbad == 0, "%lu f32->f16 mismatches vs F16C (seed 0x%llx), first 0x%08x", hwbad, SEED, hwfirst);
    if (!hw)
        printf("fp16: F16C cross-check of f32->fp16 skipped (CPU lacks F16C)\n");
}
END_TEST

START_TEST(test_f64_to_f16_random)
{
    build_f16_table();
    tr_rng r;
    tr_rng_seed(&r, SEED + 1);
    unsigned long n = sample_count() / 4, bad = 0;
    uint64_t first = 0;
    for (unsigned long i = 0; i < n; i++) {
        uint64_t v = tr_rng_next(&r);
        double d;
        if (v & 1) {
            d = tr_bits_f64(v);
        } else {   /* doubles in the fp16 range, with bits far below the fp16 rounding point */
            int e = -28 + (int)((v >> 1) % 46);
            d = ldexp(1.0 + (double)(v >> 12) * 0x1p-52, e) * ((v >> 2) & 1 ? -1.0 : 1.0);
        }
        uint16_t want = isnan(d) ? (uint16_t)(((tr_f64_bits(d) >> 48) & 0x8000) | 0x7E00 |
                                              ((tr_f64_bits(d) >> 42) & 0x3FF))
                                 : model_to_f16(d);
        if (tr_f64_to_f16(d) != want && !bad++)
            first = tr_f64_bits(d);
    }
    /* the tie cases exactly half-way between fp16 neighbours, in double */
    for (unsigned h = 0; h < 0x7BFF; h++) {
        double mid = (f16_table[h] + f16_table[h + 1]) / 2;
        uint16_t want = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        if (tr_f64_to_f16(mid) != want && !bad++)
            first = tr_f64_bits(mid);
    }
    ck_assert_msg(bad == 0, "%lu f64->f16 mismatches (seed 0x%llx), first 0x%016llx", bad, SEED + 1,
                  (unsigned long long)first);
}
END_TEST

START_TEST(test_bf16_all_patterns)
{
    unsigned long bad = 0, first = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t u = tr_f32_bits(tr_bf16_to_f32((uint16_t)h));
        uint32_t want = h << 16;
        if (is_nan32(want))
            want |= 0x00400000;
        if (u != want && !bad++)
            first = h;
        /* bf16 -> f32 -> bf16 is the identity except NaN quieting */
        uint16_t back = tr_f32_to_bf16(tr_bf16_to_f32((uint16_t)h));
        if (back != (uint16_t)(want >> 16) && !bad++)
            first = h;
    }
    ck_assert_msg(bad == 0, "%lu bf16 pattern mismatches, first 0x%04lx", bad, first);
}
END_TEST

START_TEST(test_f32_to_bf16_random)
{
    tr_rng r;
    tr_rng_seed(&r, SEED + 2);
    int hw = cpu_has_avx512bf16();
    unsigned long n = sample_count(), bad = 0, hwbad = 0, hwcmp = 0;
    uint32_t first = 0, hwfirst = 0;
    for (unsigned long i = 0; i < n; i++) {
        uint32_t u = (uint32_t)(tr_rng_next(&r) >> 32);
        if (i % 4 == 1)
            u &= 0x807FFFFF;            /* force float32 subnormals often */
        if (i % 4 == 2)
            u = (u & 0xFFFF0000) | 0x8000;   /* exact ties */
        float f = tr_bits_f32(u);
        uint16_t got = tr_f32_to_bf16(f);
        uint16_t want = is_nan32(u) ? (uint16_t)((u >> 16) | 0x0040) : model_to_bf16(f);
        if (got != want && !bad++)
            first = u;
        /* hardware flushes subnormal inputs and quiets NaN its own way: compare normal, zero and Inf only */
        if (hw && !is_nan32(u) && fpclassify(f) != FP_SUBNORMAL) {
            hwcmp++;
            if (hw_f32_to_bf16(f) != got && !hwbad++)
                hwfirst = u;
        }
    }
    ck_assert_msg(bad == 0, "%lu f32->bf16 mismatches vs the model (seed 0x%llx), first 0x%08x", bad, SEED + 2,
                  first);
    ck_assert_msg(hwbad == 0, "%lu f32->bf16 mismatches vs AVX512-BF16 (seed 0x%llx), first 0x%08x", hwbad, SEED + 2,
                  hwfirst);
    if (!hw)
        printf("fp16: AVX512-BF16 cross-check skipped (CPU lacks AVX512-BF16 or it is hidden, e.g. by valgrind)\n");
    else
        ck_assert(hwcmp > n / 2);
}
END_TEST

/* make check-long: every float32 pattern, against F16C and the bf16 model. */
START_TEST(test_all_2_32)
{
    if (!tr_test_long()) {
        printf("fp16: all-2^32 conversion test skipped (run make check-long)\n");
        return;
    }
    build_f16_table();
    int hw = cpu_has_f16c(), hwb = cpu_has_avx512bf16();
    unsigned long bad = 0;
    uint32_t first = 0;
    uint32_t u = 0;
    do {
        float f = tr_bits_f32(u);
        uint16_t h = tr_f32_to_f16(f);
        int ok = hw ? h == hw_f32_to_f16(f) : h == expect_f16(u);
        uint16_t b = tr_f32_to_bf16(f);
        ok = ok && b == (is_nan32(u) ? (uint16_t)((u >> 16) | 0x0040) : model_to_bf16(f));
        if (hwb && ok && !is_nan32(u) && fpclassify(f) != FP_SUBNORMAL)
            ok = hw_f32_to_bf16(f) == b;
        if (!ok && !bad++)
            first = u;
    } while (++u != 0);
    ck_assert_msg(bad == 0, "%lu of 2^32 conversions wrong, first 0x%08x", bad, first);
}
END_TEST

Suite *suite_fp16(void)
{
    Suite *s = suite_create("fp16");
    TCase *tc = tcase_create("conversions");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_spot_values);
    tcase_add_test(tc, test_f16_to_f32_all);
    tcase_add_test(tc, test_f16_roundtrip_all);
    tcase_add_test(tc, test_f32_to_f16_random);
    tcase_add_test(tc, test_f64_to_f16_random);
    tcase_add_test(tc, test_bf16_all_patterns);
    tcase_add_test(tc, test_f32_to_bf16_random);
    tcase_add_test(tc, test_all_2_32);
    suite_add_tcase(s, tc);
    return s;
}
