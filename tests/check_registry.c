/*
 * check_registry.c — the conformance registry (KERNELS.md §5-§6, §2): tier enumeration (quick covers every axis
 * value, full covers every feasible pair, exhaustive is the filtered product), case ids and seeds, generators,
 * numerics (tr_expf, fmah), and the comparison rules and verdicts.
 */
#include "tests.h"
#include "trellis/alloc.h"
#include "trellis/fp16.h"
#include "trellis/numeric.h"
#include "trellis/registry.h"
#include "trellis/rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Collect every point text of an op's tier. */
static size_t points(const tr_opdef *op, tr_tier tier, char ***out)
{
    tr_point_iter it;
    tr_error err;
    ck_assert_int_eq(tr_point_iter_init(&it, op, tier, &err), TR_OK);
    size_t n = 0, cap = 64;
    char **v = malloc(cap * sizeof *v), buf[TR_CASE_ID_MAX];
    while (tr_point_iter_next(&it, buf, sizeof buf)) {
        if (n == cap)
            v = realloc(v, (cap *= 2) * sizeof *v);
        v[n++] = strdup(buf);
    }
    tr_point_iter_free(&it);
    *out = v;
    return n;
}

static void free_points(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Does text contain the label as one of its ';'-separated item runs? */
static int has_label(const char *text, const char *label)
{
    size_t n = strlen(label);
    for (const char *p = text; (p = strstr(p, label)) != NULL; p++)
        if ((p == text || p[-1] == ';') && (p[n] == ';' || p[n] == '\0'))
            return 1;
    return 0;
}

START_TEST(test_quick_covers_every_value)
{
    for (size_t oi = 0; oi < tr_registry_count(); oi++) {
        const tr_opdef *op = tr_registry_op(oi);
        char **v;
        size_t n = points(op, TR_TIER_QUICK, &v);
        ck_assert_msg(n > 0, "%s has no quick points", op->name);
        for (int a = 0; a < op->naxes; a++) {
            int lim = op->axes[a].quick_nvalues ? op->axes[a].quick_nvalues : op->axes[a].nvalues;
            for (int k = 0; k < lim; k++) {
                int seen = 0;
                for (size_t i = 0; i < n && !seen; i++)
                    seen = has_label(v[i], op->axes[a].values[k]);
                ck_assert_msg(seen, "%s: quick misses %s", op->name, op->axes[a].values[k]);
            }
        }
        /* no duplicates, every point valid */
        for (size_t i = 0; i < n; i++) {
            tr_params p;
            ck_assert_int_eq(tr_params_parse(&p, v[i]), 0);
            ck_assert_msg(!op->valid || op->valid(&p), "%s: invalid point %s", op->name, v[i]);
            for (size_t j = i + 1; j < n; j++)
                ck_assert_msg(strcmp(v[i], v[j]) != 0, "%s: duplicate %s", op->name, v[i]);
        }
        free_points(v, n);
    }
}
END_TEST

/* --full: deterministic, and every feasible pair of axis values (found by scanning the whole filtered product once)
 * appears in some point. */
START_TEST(test_full_is_all_pairs)
{
    static const char *const ops[] = {"moe_count", "moe_combine", "sign_flip", "router_logits", "nan_scan"};
    for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) {
        const tr_opdef *op = tr_registry_find(ops[k]);
        char **v, **w, **x;
        size_t n = points(op, TR_TIER_FULL, &v), m = points(op, TR_TIER_FULL, &w);
        ck_assert_uint_eq(n, m);
        for (size_t i = 0; i < n; i++)
            ck_assert_str_eq(v[i], w[i]);
        size_t nx = points(op, TR_TIER_EXHAUSTIVE, &x);
        ck_assert_uint_lt(n, nx);
        unsigned long missing = 0;
        for (int a = 0; a < op->naxes; a++)
            for (int b = a + 1; b < op->naxes; b++)
                for (int va = 0; va < op->axes[a].nvalues; va++)
                    for (int vb = 0; vb < op->axes[b].nvalues; vb++) {
                        const char *la = op->axes[a].values[va], *lb = op->axes[b].values[vb];
                        int feasible = 0, covered = 0;
                        for (size_t i = 0; i < nx && !feasible; i++)
                            feasible = has_label(x[i], la) && has_label(x[i], lb);
                        for (size_t i = 0; i < n && feasible && !covered; i++)
                            covered = has_label(v[i], la) && has_label(v[i], lb);
                        missing += feasible && !covered;
                    }
        ck_assert_msg(missing == 0, "%s: %lu feasible pairs not covered by --full", op->name, missing);
        free_points(v, n);
        free_points(w, m);
        free_points(x, nx);
    }
}
END_TEST

/* The --full search is budgeted (reference/registry.c): with an unbounded budget, which proves every impossible pair
 * impossible, the points are the same, so the budget gave up on no pair that some point could have held. */
START_TEST(test_full_budget_loses_no_pair)
{
    const tr_opdef *op = tr_registry_find("dequant_grid");
    char **v, **w;
    size_t n = points(op, TR_TIER_FULL, &v);
    setenv("TR_GEN_PAIR_BUDGET", "1000000000", 1);
    size_t m = points(op, TR_TIER_FULL, &w);
    unsetenv("TR_GEN_PAIR_BUDGET");
    ck_assert_uint_eq(n, m);
    for (size_t i = 0; i < n; i++)
        ck_assert_str_eq(v[i], w[i]);
    free_points(v, n);
    free_points(w, m);
}
END_TEST

START_TEST(test_exhaustive_is_filtered_product)
{
    const tr_opdef *op = tr_registry_find("bitshift_states");
    char **v;
    size_t n = points(op, TR_TIER_EXHAUSTIVE, &v);
    ck_assert_uint_eq(n, 8 * 4);
    ck_assert_str_eq(v[0], "b=1;codes=uniform");
    ck_assert_str_eq(v[1], "b=1;codes=zeros");   /* last axis fastest */
    free_points(v, n);
    op = tr_registry_find("moe_count");
    n = points(op, TR_TIER_EXHAUSTIVE, &v);
    size_t product = 15 * 9 * 11 * 9, valid = 0;
    for (size_t i = 0; i < n; i++) {
        tr_params p;
        tr_params_parse(&p, v[i]);
        valid += op->valid(&p);
    }
    ck_assert_uint_eq(valid, n);
    ck_assert_uint_lt(n, product);
    free_points(v, n);
}
END_TEST

START_TEST(test_case_ids_and_seeds)
{
    const tr_opdef *op = tr_registry_find("gemm_trellis");
    tr_case c, d;
    tr_error err;
    ck_assert_int_eq(tr_case_init(&c, op, tr_op_variant(op, "cpu"), "M=1;O=7;I=16;b=4;gs=128;acc=f32;out=f16;"
                                  "rotation=none;values=normal", 0, 1), TR_OK);
    ck_assert_str_eq(c.id, "gemm_trellis/cpu/M=1;O=7;I=16;b=4;gs=128;acc=f32;out=f16;rotation=none;values=normal/0");
    ck_assert_uint_eq(c.seed, tr_splitmix64(1 ^ tr_fnv1a64_str(c.id)));
    ck_assert_int_eq(tr_case_from_id(&d, c.id, 1, &err), TR_OK);
    ck_assert_uint_eq(d.seed, c.seed);
    ck_assert_str_eq(d.id, c.id);
    ck_assert_int_eq(tr_params_int(&d.params, "O", 0), 7);
    ck_assert(tr_params_is(&d.params, "rotation", "none"));
    ck_assert_ptr_null(tr_params_str(&d.params, "zzz"));
    ck_assert_int_eq(tr_case_from_id(&d, "gemm_trellis/cpu/x", 1, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_case_from_id(&d, "nope/cpu/a=1/0", 1, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_case_from_id(&d, "gemm_trellis/gpu/a=1/0", 1, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_case_from_id(&d, "gemm_trellis/cpu/a=1/x", 1, &err), TR_E_INVALID_PARAM);
    ck_assert_uint_ne(tr_case_stream_seed(&c, "x"), tr_case_stream_seed(&c, "w.indices"));
    ck_assert_str_eq(tr_verdict_name(TR_PRECISION_WARNING), "PRECISION_WARNING");
    tr_verdict v;
    ck_assert_int_eq(tr_verdict_parse("TIMEOUT", &v), 0);
    ck_assert_int_eq(v, TR_TIMEOUT);
    ck_assert_int_eq(tr_verdict_parse("nope", &v), -1);
}
END_TEST

/* Every op's quick cases make inputs deterministically and the reference runs on them. */
START_TEST(test_generators_deterministic)
{
    for (size_t oi = 0; oi < tr_registry_count(); oi++) {
        const tr_opdef *op = tr_registry_op(oi);
        char **v;
        size_t n = points(op, TR_TIER_QUICK, &v);
        for (size_t i = 0; i < n && i < 3; i++) {
            tr_case c;
            ck_assert_int_eq(tr_case_init(&c, op, &op->variants[0], v[i], 0, 7), TR_OK);
            tr_bufs a = {0}, b = {0}, oa = {0}, ob = {0};
            tr_error err;
            ck_assert_msg(op->make(&c, &a, &oa, &err) == TR_OK, "%s: %s", c.id, err.text);
            ck_assert_int_eq(op->make(&c, &b, &ob, &err), TR_OK);
            ck_assert_int_eq(a.n, b.n);
            for (int k = 0; k < a.n; k++)
                ck_assert_msg(a.v[k]->bytes == b.v[k]->bytes && !memcmp(a.v[k]->data, b.v[k]->data, a.v[k]->bytes),
                              "%s: input %s differs between two generations", c.id, a.v[k]->name);
            tr_bufs_free(&a);
            tr_bufs_free(&b);
            tr_bufs_free(&oa);
            tr_bufs_free(&ob);
        }
        free_points(v, n);
    }
}
END_TEST

/* RNh(a·b + c) of finite f16 operands from exact integer arithmetic: the value is N·2^-48 with N an __int128. */
static uint16_t exact_fmah(uint16_t a, uint16_t b, uint16_t c)
{
    __int128 pa = (__int128)ldexp(tr_f16_to_f32(a), 24), pb = (__int128)ldexp(tr_f16_to_f32(b), 24);
    __int128 N = pa * pb + (__int128)ldexp(tr_f16_to_f32(c), 48);
    if (N == 0) {   /* exact zero: -0 only when both addends are -0 (IEEE 754 §6.3, round to nearest) */
        int prod_neg = ((a ^ b) & 0x8000) != 0, c_neg = (c & 0x8000) != 0;
        return prod_neg && c_neg ? 0x8000 : 0x0000;
    }
    int neg = N < 0;
    unsigned __int128 mag = neg ? (unsigned __int128)(-N) : (unsigned __int128)N;
    int top = 127;
    while (!((mag >> top) & 1))
        top--;
    int ulp_log = top - 10 > 24 ? top - 10 : 24;          /* ulp of the result in units of 2^-48 */
    unsigned __int128 ulp = (unsigned __int128)1 << ulp_log, q = mag >> ulp_log, rem = mag & (ulp - 1);
    if (rem > ulp / 2 || (rem == ulp / 2 && (q & 1)))
        q++;
    double v = ldexp((double)q, ulp_log - 48);
    if (v >= 65520.0)
        return neg ? 0xFC00 : 0x7C00;
    uint16_t h = tr_f64_to_f16(v);   /* exactly representable: no rounding here */
    return neg ? (uint16_t)(h | 0x8000) : h;
}

START_TEST(test_expf_and_fmah)
{
    /* tr_expf against f64 exp: within one ulp everywhere it is finite and normal */
    tr_rng r;
    tr_rng_seed(&r, 99);
    unsigned long bad = 0;
    for (int i = 0; i < 200000; i++) {
        float x = (float)(tr_rng_u01(&r) * 190.0 - 100.0);
        double want = exp((double)x);
        float got = tr_expf(x);
        if (want > 1e-37 && fabs(got - want) > 2 * fabs(nextafterf((float)want, INFINITY) - (float)want))
            bad++;
    }
    ck_assert_uint_eq(bad, 0);
    ck_assert(isinf(tr_expf(89.5f)) && tr_expf(-111.0f) == 0.0f && isnan(tr_expf(NAN)));
    ck_assert(tr_expf(0.0f) == 1.0f);
    ck_assert(tr_silu(-100.0f) == 0.0f && signbit(tr_silu(-100.0f)));
    ck_assert(fabsf(tr_sigmoid(0.0f) - 0.5f) == 0.0f);
    /* fmah against an exact integer evaluation: all triples of a 64-value special set, then random triples */
    uint16_t special[64];
    static const uint16_t base[] = {0x0000, 0x0001, 0x0002, 0x03FF, 0x0400, 0x0401, 0x07FF, 0x0800, 0x1000, 0x1400,
                                    0x2E66, 0x3555, 0x3BFF, 0x3C00, 0x3C01, 0x3E00, 0x4000, 0x5BFF, 0x7800, 0x7BFE,
                                    0x7BFF, 0x3800, 0x37FF, 0x0200, 0x5640, 0x6400, 0x1E00, 0x2001, 0x4B00, 0x0155,
                                    0x33FF, 0x4FFF};
    for (int i = 0; i < 32; i++) {
        special[i] = base[i];
        special[32 + i] = base[i] | 0x8000;
    }
    bad = 0;
    for (int i = 0; i < 64; i++)
        for (int j = 0; j < 64; j++)
            for (int k = 0; k < 64; k++)
                bad += tr_fmah(special[i], special[j], special[k]) != exact_fmah(special[i], special[j], special[k]);
    unsigned long n = tr_test_long() ? 100000000ul : tr_test_under_valgrind() ? 100000ul : 1000000ul;
    for (unsigned long t = 0; t < n; t++) {
        uint64_t v = tr_rng_next(&r);
        uint16_t a = (uint16_t)v, b = (uint16_t)(v >> 16), c = (uint16_t)(v >> 32);
        if ((a & 0x7C00) == 0x7C00 || (b & 0x7C00) == 0x7C00 || (c & 0x7C00) == 0x7C00)
            continue;   /* finite operands: Inf/NaN rules are IEEE's */
        bad += tr_fmah(a, b, c) != exact_fmah(a, b, c);
    }
    /* valgrind emulates the double fma the f16 FMA is built on with a separate multiply and add (measured: 124
     * mismatches under valgrind 3.19, none natively), like its hiding of AVX-512: the exactness check is native only */
    if (tr_test_under_valgrind() && bad)
        fprintf(stderr, "registry: fmah exactness check skipped under valgrind (%lu emulation mismatches)\n", bad);
    else
        ck_assert_msg(bad == 0, "%lu fmah mismatches against the integer implementation (seed 99)", bad);
    ck_assert_uint_eq(tr_fmah(0x3C00, 0x3C00, 0x3C00), 0x4000);
    ck_assert_uint_eq(tr_addh(0x3C00, 0x3C00), 0x4000);
    ck_assert_uint_eq(tr_mulh(0x4000, 0x4000), 0x4400);
    float a[40], b[40];
    for (int i = 0; i < 40; i++)
        a[i] = (float)(i % 7) - 3.0f, b[i] = 0.5f;
    ck_assert(tr_dot_l16(a, b, 40) == tr_dot_seqf(a, b, 40));   /* small integers: every order is exact */
    ck_assert(tr_dot_f16t(a, b, 40) == tr_dot_seqf(a, b, 40));
    ck_assert_uint_eq(tr_dot_h16t(a, b, 40), tr_f32_to_f16(tr_dot_seqf(a, b, 40)));
}
END_TEST

/* The comparison of KERNELS.md §2: bitwise rules, NaN equivalence, ±0, unwritten, guards are the runner's. */
START_TEST(test_compare_rules)
{
    const tr_opdef *op = tr_registry_find("cast_f16");
    tr_case c;
    tr_case_init(&c, op, tr_op_variant(op, "cpu"), "n=4;values=normal", 0, 1);
    tr_expect e = {0};
    tr_bufs got = {0};
    uint64_t s[1] = {4};
    tr_buf *x = tr_bufs_add(&e.canon, "out", TR_ROLE_OUTPUT, TR_DT_F16, 1, s);
    tr_buf *g = tr_bufs_add(&got, "out", TR_ROLE_OUTPUT, TR_DT_F16, 1, s);
    uint16_t want[4] = {0x3C00, 0x7E00, 0x0000, 0xC000};
    memcpy(x->data, want, 8);
    uint16_t same[4] = {0x3C00, 0x7FFF, 0x0000, 0xC000};   /* another NaN: equivalent */
    memcpy(g->data, same, 8);
    tr_result r;
    tr_compare(&c, &got, &e, &r);
    ck_assert_int_eq(r.status, TR_PASS);
    ((uint16_t *)(void *)g->data)[2] = 0x8000;              /* -0 vs +0: distinguished */
    tr_compare(&c, &got, &e, &r);
    ck_assert_int_eq(r.status, TR_FAIL);
    ck_assert_uint_eq(r.mismatches, 1);
    ck_assert(r.first.valid && r.first.index == 2 && r.first.coords[0] == 2);
    ck_assert_str_eq(r.first.got, "0x8000");
    ck_assert_str_eq(r.first.expected, "0x0000");
    tr_poison_fill(g);                                     /* never written */
    tr_compare(&c, &got, &e, &r);
    ck_assert_int_eq(r.status, TR_FAIL);
    ck_assert_uint_eq(r.unwritten, 4);
    ck_assert(strstr(r.detail, "unwritten"));
    /* TOLERANT: bound test, special values, precision warning */
    memcpy(g->data, want, 8);
    e.hi = tr_calloc(1, sizeof *e.hi);
    e.B = tr_calloc(1, sizeof *e.B);
    e.P = tr_calloc(1, sizeof *e.P);
    e.hi[0] = tr_calloc(4, sizeof(double));
    e.B[0] = tr_calloc(4, sizeof(double));
    e.P[0] = tr_calloc(4, sizeof(double));
    double hi[4] = {1.0, NAN, 0.0, -2.0};
    for (int i = 0; i < 4; i++) {
        e.hi[0][i] = hi[i];
        e.B[0][i] = 1e-3;
        e.P[0][i] = 1e-3;
    }
    tr_compare_class(&c, &got, &e, TR_CLASS_TOLERANT, &r);
    ck_assert_int_eq(r.status, TR_PASS);
    ((uint16_t *)(void *)g->data)[0] = 0x3C01;   /* 1 + 2^-10: error 9.8e-4 < B but > 8·P? no: P = 1e-3 */
    e.P[0][0] = 1e-5;
    tr_compare_class(&c, &got, &e, TR_CLASS_TOLERANT, &r);
    ck_assert_int_eq(r.status, TR_PRECISION_WARNING);
    ((uint16_t *)(void *)g->data)[0] = 0x3C10;   /* error 0.0156 > B */
    tr_compare_class(&c, &got, &e, TR_CLASS_TOLERANT, &r);
    ck_assert_int_eq(r.status, TR_FAIL);
    ck_assert(r.bound_ratio > 1.0);
    ((uint16_t *)(void *)g->data)[0] = 0x3C00;
    ((uint16_t *)(void *)g->data)[1] = 0x3C00;   /* expected NaN, got a number */
    tr_compare_class(&c, &got, &e, TR_CLASS_TOLERANT, &r);
    ck_assert_int_eq(r.status, TR_FAIL);
    tr_expect_free(&e);
    tr_bufs_free(&got);
    ck_assert_str_eq(tr_class_name(tr_case_class(&c)), "EXACT");
}
END_TEST

Suite *suite_registry(void)
{
    Suite *s = suite_create("registry");
    TCase *tc = tcase_create("registry");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_quick_covers_every_value);
    tcase_add_test(tc, test_full_is_all_pairs);
    tcase_add_test(tc, test_full_budget_loses_no_pair);
    tcase_add_test(tc, test_exhaustive_is_filtered_product);
    tcase_add_test(tc, test_case_ids_and_seeds);
    tcase_add_test(tc, test_generators_deterministic);
    tcase_add_test(tc, test_expf_and_fmah);
    tcase_add_test(tc, test_compare_rules);
    suite_add_tcase(s, tc);
    return s;
}
