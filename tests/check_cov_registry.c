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
#include "trellis/alloc.h"
#include "trellis/registry.h"

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

Suite *suite_cov_registry(void)
{
    Suite *s = suite_create("cov_registry");
    TCase *tc = tcase_create("metal");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_metal_variants_reference);
    tcase_add_test(tc, test_alloc_failures);
    suite_add_tcase(s, tc);
    return s;
}
