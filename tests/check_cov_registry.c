/*
 * check_cov_registry.c — the registry's foreign (Metal) variants without a Metal device (KERNELS.md §2.1, §3-§6):
 * for every op and every Metal variant, each point of the quick tier is held to the variant's declared domain
 * (a point outside gets a reason), and inside the domain the variant's inputs are made (adapters PK/I16/BULK/H16,
 * accumulation mode), the reference runs in the variant's accumulation mode, twice with identical bits, and its
 * canonical output lies within the TOLERANT bound of ref_hi (the runner's reference self-check) and passes the
 * variant's own comparison against itself.  Also: allocation-failure injection over make/run/bound of one small case
 * per op, which must fail with TR_E_NOMEM (or the expected error) and never crash or leak.
 */
#include "tests.h"
#include "../reference/reg_internal.h"
#include "trellis/alloc.h"
#include "trellis/fp16.h"
#include "trellis/registry.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reference outputs of a case into e (canon + bounds), as the conformance runner computes them. */
static int expect_of(const tr_case *c, const tr_bufs *in, const tr_bufs *shapes, tr_expect *e, tr_error *err)
{
    memset(e, 0, sizeof *e);
    for (int k = 0; k < shapes->n; k++) {
        const tr_buf *s = shapes->v[k];
        tr_buf *b = tr_bufs_add(&e->canon, s->name, TR_ROLE_OUTPUT, s->dtype, s->ndim, s->shape);
        if (!b)
            return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
        b->accumulating = s->accumulating;
        if (s->accumulating)
            memset(b->data, 0, b->bytes);
        else
            tr_poison_fill(b);
    }
    e->status = c->op->run(c, NULL, in, &e->canon, err);
    if (e->status != TR_OK || !c->op->bound || tr_case_class(c) == TR_CLASS_EXACT)
        return e->status == TR_E_NOMEM ? TR_E_NOMEM : TR_OK;
    e->hi = tr_calloc((size_t)e->canon.n, sizeof *e->hi);
    e->B = tr_calloc((size_t)e->canon.n, sizeof *e->B);
    e->P = tr_calloc((size_t)e->canon.n, sizeof *e->P);
    if (!e->hi || !e->B || !e->P)
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    for (int k = 0; k < e->canon.n; k++) {
        int rc = c->op->bound(c, in, &e->canon, k, &e->hi[k], &e->B[k], &e->P[k], err);
        if (rc != TR_OK)
            return rc;
    }
    return TR_OK;
}

static uint64_t bytes_of(const tr_bufs *b)
{
    uint64_t n = 0;
    for (int i = 0; i < b->n; i++)
        n += b->v[i]->bytes;
    return n;
}

/* A point with a dimension over 1024 (the realistic shapes of the quick tier): the cpu conformance tier runs those
 * shapes through the same reference code; here they would only cost time. */
static int large_point(const tr_params *p)
{
    for (int i = 0; i < p->n; i++) {
        char *end;
        long long v = strtoll(p->val[i], &end, 10);
        if (*p->val[i] && *end == '\0' && v > 1024)
            return 1;
    }
    return 0;
}

typedef struct tally {
    int cases, outside, ran, skipped_big;
} tally;

/* One case of a foreign variant inside its domain: make, reference twice, self-check, compare with itself. */
static void run_case(const tr_case *c, tally *t)
{
    tr_bufs in = {0}, shapes = {0};
    tr_error err;
    tr_error_clear(&err);
    int rc = c->op->make(c, &in, &shapes, &err);
    ck_assert_msg(rc == TR_OK, "%s: make: %s", c->id, err.text);
    if (bytes_of(&in) + bytes_of(&shapes) > ((uint64_t)256 << 10)) {   /* large shapes: the cpu tier runs them */
        t->skipped_big++;
        tr_bufs_free(&in);
        tr_bufs_free(&shapes);
        return;
    }
    tr_expect e, e2;
    rc = expect_of(c, &in, &shapes, &e, &err);
    ck_assert_msg(rc == TR_OK, "%s: reference: %s", c->id, err.text);
    rc = expect_of(c, &in, &shapes, &e2, &err);
    ck_assert_msg(rc == TR_OK, "%s: reference (again): %s", c->id, err.text);
    ck_assert_int_eq(e.status, e2.status);
    for (int k = 0; k < e.canon.n; k++)
        ck_assert_msg(memcmp(e.canon.v[k]->data, e2.canon.v[k]->data, e.canon.v[k]->bytes) == 0,
                      "%s: output %s differs between two reference runs", c->id, e.canon.v[k]->name);
    if (e.status == TR_OK) {
        tr_result r;
        if (e.hi) {
            tr_compare_class(c, &e.canon, &e, TR_CLASS_TOLERANT, &r);
            ck_assert_msg(r.status != TR_FAIL, "%s: reference self-check: %s", c->id, r.detail);
        }
        tr_compare(c, &e2.canon, &e, &r);
        ck_assert_msg(r.status == TR_PASS || r.status == TR_PRECISION_WARNING, "%s: %s: %s", c->id,
                      tr_verdict_name(r.status), r.detail);
        ck_assert_int_eq(r.mismatches, 0);
        ck_assert_int_eq(r.unwritten, 0);
    }
    t->ran++;
    tr_expect_free(&e);
    tr_expect_free(&e2);
    tr_bufs_free(&in);
    tr_bufs_free(&shapes);
}

/* Every point text of an op's quick tier. */
static size_t quick_points(const tr_opdef *op, char ***out)
{
    tr_point_iter it;
    tr_error err;
    ck_assert_int_eq(tr_point_iter_init(&it, op, TR_TIER_QUICK, &err), TR_OK);
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

START_TEST(test_metal_variants_reference)
{
    tally t = {0};
    int variants = 0;
    for (size_t i = 0; i < tr_registry_count(); i++) {
        const tr_opdef *op = tr_registry_op(i);
        char **pts = NULL;
        size_t npts = 0;
        for (int vi = 0; vi < op->nvariants; vi++) {
            const tr_variant *v = &op->variants[vi];
            if (strcmp(v->backend, "metal") != 0)
                continue;
            variants++;
            if (!pts)
                npts = quick_points(op, &pts);
            for (size_t pi = 0; pi < npts; pi++) {
                tr_case c;
                ck_assert_int_eq(tr_case_init(&c, op, v, pts[pi], 0, 1), TR_OK);
                ck_assert_int_eq(c.metal, 1);
                ck_assert_int_eq(c.metal_math, TR_MATH_RELAXED);
                t.cases++;
                char why[512] = "";
                if (v->in_domain && !v->in_domain(&c, why, sizeof why)) {
                    ck_assert_msg(why[0] != '\0', "%s: outside the domain without a reason", c.id);
                    t.outside++;
                } else if (large_point(&c.params))
                    t.skipped_big++;
                else
                    run_case(&c, &t);
            }
        }
        for (size_t pi = 0; pi < npts; pi++)
            free(pts[pi]);
        free(pts);
    }
    fprintf(stderr, "cov_registry: %d Metal variants, %d quick points: %d outside the domain, %d run, %d large\n",
            variants, t.cases, t.outside, t.ran, t.skipped_big);
    ck_assert_int_gt(variants, 0);
    ck_assert_int_gt(t.ran, 0);
    ck_assert_int_gt(t.outside, 0);
}
END_TEST

/* Outputs for a backend run: the shapes, poisoned (zeroed when accumulating). */
static int alloc_outputs(const tr_bufs *shapes, tr_bufs *got)
{
    for (int k = 0; k < shapes->n; k++) {
        const tr_buf *s = shapes->v[k];
        tr_buf *b = tr_bufs_add(got, s->name, TR_ROLE_OUTPUT, s->dtype, s->ndim, s->shape);
        if (!b)
            return TR_E_NOMEM;
        b->accumulating = s->accumulating;
        if (s->accumulating)
            memset(b->data, 0, b->bytes);
        else
            tr_poison_fill(b);
    }
    return TR_OK;
}

/* make, the reference with its bounds and (be != NULL) the backend run of case c, the N-th allocation failing for
 * N = 1, 2, ... until none fires: every injected failure must come back as TR_E_NOMEM (from make, from the
 * reference run, from a bound or from the backend), never as success or another error.  Returns the number of
 * allocation points. */
static unsigned long inject_case(const tr_case *c, tr_backend *be)
{
    for (unsigned long n = 1;; n++) {
        tr_bufs in = {0}, shapes = {0}, got = {0};
        tr_expect e = {0};
        tr_error err;
        tr_error_clear(&err);
        tr_alloc_fail_at(n);
        int rc = c->op->make(c, &in, &shapes, &err);
        if (rc == TR_OK)
            rc = expect_of(c, &in, &shapes, &e, &err);
        if (rc == TR_OK && e.status == TR_E_NOMEM)
            rc = TR_E_NOMEM;
        int be_rc = TR_OK;
        if (rc == TR_OK && be) {
            be_rc = alloc_outputs(&shapes, &got);
            if (be_rc == TR_OK)
                be_rc = c->op->run(c, be, &in, &got, &err);
        }
        int fired = tr_alloc_fired();
        unsigned long points = tr_alloc_points();
        tr_alloc_fail_at(0);
        tr_expect_free(&e);
        tr_bufs_free(&in);
        tr_bufs_free(&shapes);
        tr_bufs_free(&got);
        if (!fired) {
            ck_assert_msg(rc == TR_OK, "%s: %s without an injected failure", c->id, err.text);
            ck_assert_msg(be_rc == TR_OK || be_rc == e.status, "%s: backend %s", c->id, tr_status_name(be_rc));
            ck_assert_int_lt(points, n);
            return n - 1;
        }
        ck_assert_msg(rc == TR_E_NOMEM || be_rc == TR_E_NOMEM, "%s: allocation %lu failed, got %s / backend %s (%s)",
                      c->id, n, tr_status_name(rc), tr_status_name(be_rc), err.text);
    }
}

/* The first point of the op's quick tier that the variant accepts and that is small. */
static int first_small_point(const tr_opdef *op, const tr_variant *v, char **pts, size_t npts, tr_case *c)
{
    for (size_t pi = 0; pi < npts; pi++) {
        char why[512];
        if (tr_case_init(c, op, v, pts[pi], 0, 7) != TR_OK || large_point(&c->params))
            continue;
        if (v->in_domain && !v->in_domain(c, why, sizeof why))
            continue;
        return 1;
    }
    return 0;
}

START_TEST(test_alloc_failures)
{
    tr_backend *cpu = NULL;
    tr_error err;
    ck_assert_int_eq(tr_backend_create("cpu", 1, &cpu, &err), TR_OK);
    unsigned long total = 0;
    int cases = 0;
    for (size_t i = 0; i < tr_registry_count(); i++) {
        const tr_opdef *op = tr_registry_op(i);
        char **pts = NULL;
        size_t npts = quick_points(op, &pts);
        for (int vi = 0; vi < op->nvariants; vi++) {
            const tr_variant *v = &op->variants[vi];
            tr_case c;
            if (!first_small_point(op, v, pts, npts, &c))
                continue;
            total += inject_case(&c, strcmp(v->backend, "cpu") == 0 ? cpu : NULL);
            cases++;
        }
        for (size_t pi = 0; pi < npts; pi++)
            free(pts[pi]);
        free(pts);
    }
    tr_backend_destroy(cpu);
    fprintf(stderr, "cov_registry: %d cases, %lu allocation points checked\n", cases, total);
    ck_assert_int_gt(cases, 0);
}
END_TEST

/* ---- the comparison (KERNELS.md §2.2-§2.5) on hand-made outputs ------------------------------------------------- */

/* A case of a TOLERANT (non-canonical) variant, for the comparison only. */
static void tolerant_case(tr_case *c)
{
    const tr_opdef *op = tr_registry_find("gemm_trellis");
    ck_assert_ptr_nonnull(op);
    const tr_variant *v = NULL;
    for (int i = 0; i < op->nvariants && !v; i++)
        if (!op->variants[i].canonical)
            v = &op->variants[i];
    ck_assert_ptr_nonnull(v);
    ck_assert_int_eq(tr_case_init(c, op, v, "M=1;O=1;I=1", 0, 1), TR_OK);
    ck_assert_int_eq(tr_case_class(c), TR_CLASS_TOLERANT);
}

/* One output "y" of n elements of dtype dt in got and in e->canon (canon filled with zeros), with ref_hi/B/P. */
typedef struct cmp_fix {
    tr_bufs got;
    tr_expect e;
    double *hi, *B, *P;
} cmp_fix;

static void fix_init(cmp_fix *f, tr_dtype dt, uint64_t n)
{
    memset(f, 0, sizeof *f);
    ck_assert_ptr_nonnull(tr_bufs_add(&f->got, "y", TR_ROLE_OUTPUT, dt, 1, &n));
    ck_assert_ptr_nonnull(tr_bufs_add(&f->e.canon, "y", TR_ROLE_OUTPUT, dt, 1, &n));
    f->e.hi = tr_calloc(1, sizeof *f->e.hi);
    f->e.B = tr_calloc(1, sizeof *f->e.B);
    f->e.P = tr_calloc(1, sizeof *f->e.P);
    f->hi = f->e.hi[0] = tr_calloc(n, sizeof(double));
    f->B = f->e.B[0] = tr_calloc(n, sizeof(double));
    f->P = f->e.P[0] = tr_calloc(n, sizeof(double));
}

static void fix_free(cmp_fix *f)
{
    tr_bufs_free(&f->got);
    tr_expect_free(&f->e);
}

static void set16(tr_buf *b, uint64_t i, uint16_t bits) { memcpy(b->data + 2 * i, &bits, 2); }

/* got value g against ref_hi h with bound b (p = b): the verdict of one f16 element. */
static tr_verdict tolerant_one(double g, double h, double b, double p, uint64_t *mismatches)
{
    tr_case c;
    tolerant_case(&c);
    cmp_fix f;
    fix_init(&f, TR_DT_F16, 1);
    set16(f.got.v[0], 0, tr_f64_to_f16(g));
    set16(f.e.canon.v[0], 0, tr_f64_to_f16(h));
    f.hi[0] = h;
    f.B[0] = b;
    f.P[0] = p;
    tr_result r;
    tr_compare(&c, &f.got, &f.e, &r);
    *mismatches = r.mismatches;
    fix_free(&f);
    return r.status;
}

START_TEST(test_compare_tolerant_rules)
{
    uint64_t m;
    ck_assert_int_eq(tolerant_one(1.0, 1.0, 0.01, 0.01, &m), TR_PASS);
    ck_assert_int_eq(tolerant_one(NAN, NAN, 0.01, 0.01, &m), TR_PASS);
    ck_assert_int_eq(tolerant_one(1.0, NAN, 0.01, 0.01, &m), TR_FAIL);          /* NaN expected, finite got */
    ck_assert_int_eq(tolerant_one(INFINITY, INFINITY, 0, 0, &m), TR_PASS);
    ck_assert_int_eq(tolerant_one(65504.0, INFINITY, 0, 0, &m), TR_FAIL);       /* an infinite ref_hi, matched? */
    ck_assert_int_eq(tolerant_one(INFINITY, 65500.0, 30.0, 30.0, &m), TR_PASS); /* Inf near the threshold */
    ck_assert_int_eq(tolerant_one(-INFINITY, 65500.0, 30.0, 30.0, &m), TR_FAIL); /* … of the wrong sign */
    ck_assert_int_eq(tolerant_one(INFINITY, 1.0, 0.01, 0.01, &m), TR_FAIL);     /* Inf far from it */
    ck_assert_int_eq(tolerant_one(65504.0, 70000.0, 1.0, 1.0, &m), TR_FAIL);    /* Inf expected, finite got */
    ck_assert_int_eq(tolerant_one(1.0, 1.0, 0.0, 0.0, &m), TR_PASS);            /* no bound, no error */
    ck_assert_int_eq(tolerant_one(1.0009765625, 1.0, 0.0, 0.0, &m), TR_FAIL);   /* no bound, an error */
    ck_assert_uint_eq(m, 1);
    ck_assert_int_eq(tolerant_one(1.0009765625, 1.0, 0.01, 1e-5, &m), TR_PRECISION_WARNING);
    ck_assert_int_eq(tolerant_one(1.0009765625, 1.0, 0.01, 0.0, &m), TR_PRECISION_WARNING);

    /* poison left in a TOLERANT output is unwritten; an accumulating output has no poison */
    tr_case c;
    tolerant_case(&c);
    cmp_fix f;
    fix_init(&f, TR_DT_F16, 4);
    tr_poison_fill(f.got.v[0]);
    for (int i = 0; i < 4; i++)
        f.hi[i] = NAN;   /* the poison is a NaN: the special-value rule alone would accept it */
    tr_result r;
    tr_compare(&c, &f.got, &f.e, &r);
    ck_assert_int_eq(r.status, TR_FAIL);
    ck_assert_uint_eq(r.unwritten, 4);
    ck_assert_msg(strstr(r.detail, "4 output elements unwritten"), "%s", r.detail);
    f.got.v[0]->accumulating = 1;
    tr_compare(&c, &f.got, &f.e, &r);
    ck_assert_uint_eq(r.unwritten, 0);
    ck_assert_int_eq(r.status, TR_PASS);
    fix_free(&f);

    /* BF16 and F32 outputs: thresholds 2^128·(1 - 2^-9) and 2^128·(1 - 2^-25) */
    static const tr_dtype dts[2] = {TR_DT_BF16, TR_DT_F32};
    for (int d = 0; d < 2; d++) {
        fix_init(&f, dts[d], 3);
        double big = ldexp(1.0, 127) * 1.9;
        reg_set(f.got.v[0], 0, INFINITY);   /* near the threshold: allowed */
        f.hi[0] = big;
        f.B[0] = ldexp(1.0, 127);
        reg_set(f.got.v[0], 1, 2.0);        /* exact */
        f.hi[1] = 2.0;
        f.B[1] = 1e-3;
        f.P[1] = 1e-3;
        reg_set(f.got.v[0], 2, -3.0);
        f.hi[2] = -3.0;
        f.B[2] = 1e-3;
        tr_compare(&c, &f.got, &f.e, &r);
        ck_assert_msg(r.status == TR_PASS, "%s: %s", tr_verdict_name(r.status), r.detail);
        ck_assert(r.bound >= ldexp(1.0, 127));
        reg_set(f.got.v[0], 0, -INFINITY);
        tr_compare(&c, &f.got, &f.e, &r);
        ck_assert_int_eq(r.status, TR_FAIL);
        ck_assert_uint_eq(r.first.index, 0);
        fix_free(&f);
    }
}
END_TEST

START_TEST(test_compare_bitwise_rules)
{
    const tr_opdef *op = tr_registry_find("moe_count");
    ck_assert_ptr_nonnull(op);
    tr_case c;
    ck_assert_int_eq(tr_case_init(&c, op, tr_op_variant(op, "ref"), "T=1;k=1;E=1", 0, 1), TR_OK);
    ck_assert_int_eq(tr_case_class(&c), TR_CLASS_EXACT);
    cmp_fix f;
    tr_result r;
    /* BF16: two NaNs of other payloads are equal; one ulp off is a mismatch at its coordinates */
    fix_init(&f, TR_DT_BF16, 3);
    set16(f.got.v[0], 0, 0x7FC1);
    set16(f.e.canon.v[0], 0, 0x7FC0);
    set16(f.got.v[0], 1, 0x3F81);
    set16(f.e.canon.v[0], 1, 0x3F80);
    set16(f.got.v[0], 2, 0x4000);
    set16(f.e.canon.v[0], 2, 0x4000);
    tr_compare(&c, &f.got, &f.e, &r);
    ck_assert_int_eq(r.status, TR_FAIL);
    ck_assert_uint_eq(r.mismatches, 1);
    ck_assert_int_eq(r.max_ulp, 1);
    ck_assert_uint_eq(r.first.index, 1);
    ck_assert_str_eq(r.first.got, "0x3f81");
    ck_assert_str_eq(r.first.expected, "0x3f80");
    ck_assert_msg(strstr(r.detail, "not bitwise equal"), "%s", r.detail);
    fix_free(&f);
    /* integers: a differing element and a poisoned (unwritten) one; nmse of zero expectations is infinite */
    fix_init(&f, TR_DT_I32, 4);
    tr_poison_fill(f.got.v[0]);
    int32_t one = 1;
    memcpy(f.got.v[0]->data, &one, 4);
    memset(f.got.v[0]->data + 4, 0, 4);
    tr_compare(&c, &f.got, &f.e, &r);
    ck_assert_int_eq(r.status, TR_FAIL);
    ck_assert_uint_eq(r.unwritten, 2);
    ck_assert_uint_eq(r.mismatches, 3);
    fix_free(&f);
    fix_init(&f, TR_DT_F32, 2);
    reg_set(f.got.v[0], 0, 1.0);
    tr_compare(&c, &f.got, &f.e, &r);
    ck_assert(isinf(r.nmse));
    ck_assert_double_eq(r.max_abs, 1.0);
    fix_free(&f);
    /* an output missing, or of another dtype or size */
    fix_init(&f, TR_DT_F32, 2);
    snprintf(f.got.v[0]->name, sizeof f.got.v[0]->name, "z");
    tr_compare(&c, &f.got, &f.e, &r);
    ck_assert_int_eq(r.status, TR_FAIL);
    ck_assert_msg(strstr(r.detail, "output y missing or of another dtype/shape"), "%s", r.detail);
    snprintf(f.got.v[0]->name, sizeof f.got.v[0]->name, "y");
    f.got.v[0]->dtype = TR_DT_I32;
    tr_compare(&c, &f.got, &f.e, &r);
    ck_assert_int_eq(r.status, TR_FAIL);
    f.got.v[0]->dtype = TR_DT_F32;
    f.got.v[0]->shape[0] = 1;
    tr_compare(&c, &f.got, &f.e, &r);
    ck_assert_int_eq(r.status, TR_FAIL);
    fix_free(&f);
}
END_TEST

/* ---- parameters, case ids and names ---------------------------------------------------------------------------- */

START_TEST(test_params_and_case_ids)
{
    tr_params p;
    char longtext[TR_CASE_ID_MAX + 8];
    memset(longtext, 'a', sizeof longtext - 1);
    longtext[sizeof longtext - 1] = '\0';
    ck_assert_int_eq(tr_params_parse(&p, longtext), -1);
    ck_assert_int_eq(tr_params_parse(&p, ""), 0);
    ck_assert_int_eq(p.n, 0);
    ck_assert_int_eq(tr_params_parse(&p, "a=1;b"), -1);
    ck_assert_int_eq(tr_params_parse(&p, "=1"), -1);
    char many[400] = "";
    for (int i = 0; i < 49; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%sk%d=1", i ? ";" : "", i);
    ck_assert_int_eq(tr_params_parse(&p, many), -1);
    ck_assert_int_eq(tr_params_parse(&p, "x=0.25;n=-3"), 0);
    ck_assert_double_eq(tr_params_real(&p, "x", 9.0), 0.25);
    ck_assert_double_eq(tr_params_real(&p, "y", 9.0), 9.0);
    ck_assert_int_eq(tr_params_int(&p, "n", 0), -3);
    ck_assert(!tr_params_is(&p, "z", "1"));

    ck_assert_str_eq(tr_class_name((tr_class)7), "?");
    ck_assert_str_eq(tr_tier_name((tr_tier)7), "?");
    ck_assert_str_eq(tr_verdict_name(TR_VERDICT_COUNT), "?");
    tr_verdict v;
    ck_assert_int_eq(tr_verdict_parse("PRECISION_WARNING", &v), 0);
    ck_assert_int_eq(v, TR_PRECISION_WARNING);
    ck_assert_int_eq(tr_verdict_parse("MAYBE", &v), -1);
    ck_assert_ptr_null(tr_registry_op(tr_registry_count()));
    ck_assert_ptr_null(tr_registry_find("no_such_op"));

    const tr_opdef *op = tr_registry_op(0);
    tr_case c;
    ck_assert_int_eq(tr_case_init(&c, op, &op->variants[0], "a=1;;", 0, 1), TR_E_INVALID_PARAM);
    char params[TR_CASE_ID_MAX - 4];
    memset(params, 'x', sizeof params - 1);
    params[0] = 'k';
    params[1] = '=';
    params[sizeof params - 1] = '\0';
    ck_assert_int_eq(tr_case_init(&c, op, &op->variants[0], params, 0, 1), TR_E_INVALID_PARAM);   /* id too long */

    static const struct {
        const char *id, *needle;
    } bad[] = {
        {"gemm_trellis", "a case id reads <op>/<variant>/<params>/<rep>"},
        {"gemm_trellis/ref", "a case id reads"},
        {"gemm_trellis/ref/M=1", "a case id reads"},
        {"nope/ref/M=1/0", "unknown op \"nope\""},
        {"gemm_trellis/nope/M=1/0", "has no variant \"nope\""},
        {"gemm_trellis/ref/M=1/", "repetition \"\" is not a non-negative integer"},
        {"gemm_trellis/ref/M=1/x", "repetition \"x\""},
        {"gemm_trellis/ref/M=1/-2", "repetition \"-2\""},
        {"gemm_trellis/ref/M=1;oops/0", "malformed parameters \"M=1;oops\""},
    };
    tr_error err;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(tr_case_from_id(&c, bad[i].id, 1, &err), TR_E_INVALID_PARAM);
        ck_assert_msg(strstr(err.text, bad[i].needle), "%s: %s", bad[i].id, err.text);
    }
    char huge[TR_CASE_ID_MAX + 16];
    memset(huge, '/', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    ck_assert_int_eq(tr_case_from_id(&c, huge, 1, &err), TR_E_INVALID_PARAM);
    ck_assert_msg(strstr(err.text, "too long"), "%s", err.text);
    ck_assert_int_eq(tr_case_from_id(&c, "gemm_trellis/ref/M=1;O=16/3", 5, &err), TR_OK);
    ck_assert_int_eq(c.rep, 3);
    ck_assert_str_eq(c.id, "gemm_trellis/ref/M=1;O=16/3");
}
END_TEST

Suite *suite_cov_registry(void)
{
    Suite *s = suite_create("cov_registry");
    TCase *tc = tcase_create("metal");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_metal_variants_reference);
    tcase_add_test(tc, test_alloc_failures);
    tcase_add_test(tc, test_compare_tolerant_rules);
    tcase_add_test(tc, test_compare_bitwise_rules);
    tcase_add_test(tc, test_params_and_case_ids);
    suite_add_tcase(s, tc);
    return s;
}
