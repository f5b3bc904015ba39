/*
 * conform_exec.c — one conformance case (HARNESS.md §3, KERNELS.md §2): seeded inputs in canonical form, the
 * reference in the variant's accumulation mode (ref_canon), ref_hi and the bounds for ORDERED/TOLERANT ops (with
 * the reference self-check), the backend's outputs in guarded and poisoned buffers (or a capture's recorded ones),
 * the comparison, and the result object with every metric.  It runs inside the worker process that isolates
 * crashes.
 */
#include "conform.h"
#include "trellis/alloc.h"
#include "trellis/jsonio.h"

#include <fnmatch.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static char replay_extra[1200];

void conform_replay_extra(const char *extra) { snprintf(replay_extra, sizeof replay_extra, "%s", extra ? extra : ""); }

void conform_replay(char *buf, size_t cap, const char *backend, const tr_case *c)
{
    snprintf(buf, cap, "trellis conform --backend %s --replay '%s' --seed %llu%s%.400s", backend, c->id,
             (unsigned long long)c->master_seed, c->metal_math == TR_MATH_SAFE ? " --metal-math safe" : "",
             replay_extra);
}

uint8_t *conform_guarded_alloc(size_t n)
{
    uint8_t *b = tr_malloc(n + 2 * CONFORM_GUARD_BYTES);
    if (!b)
        return NULL;
    for (size_t i = 0; i < CONFORM_GUARD_BYTES; i++) {
        uint8_t p = (uint8_t)(CONFORM_GUARD_PATTERN >> (8 * (i % 4)));
        b[i] = p;
        b[CONFORM_GUARD_BYTES + n + i] = p;
    }
    return b;
}

int conform_guards_intact(const uint8_t *b, size_t n, long *where)
{
    for (size_t i = 0; i < CONFORM_GUARD_BYTES; i++) {
        uint8_t p = (uint8_t)(CONFORM_GUARD_PATTERN >> (8 * (i % 4)));
        if (b[i] != p) {
            *where = -(long)(CONFORM_GUARD_BYTES - i);
            return 0;
        }
        if (b[CONFORM_GUARD_BYTES + n + i] != p) {
            *where = (long)(n + i);
            return 0;
        }
    }
    return 1;
}

static json_t *params_json(const tr_case *c)
{
    json_t *p = json_object();
    for (int i = 0; i < c->params.n; i++) {
        const char *v = c->params.val[i];
        char *end;
        long long n = strtoll(v, &end, 10);
        json_object_set_new(p, c->params.key[i], *v && *end == '\0' ? json_integer(n) : json_string(v));
    }
    return p;
}

static json_t *result_json(const tr_case *c, const char *backend, const tr_result *r, double t_us, double ref_us)
{
    char seed[24], replay[1024];
    snprintf(seed, sizeof seed, "0x%016llx", (unsigned long long)c->seed);
    conform_replay(replay, sizeof replay, backend, c);
    json_t *o = json_object();
    json_object_set_new(o, "case", json_string(c->id));
    json_object_set_new(o, "case_index", json_integer((json_int_t)c->index));
    json_object_set_new(o, "case_seed", json_string(seed));
    json_object_set_new(o, "op", json_string(c->op->name));
    json_object_set_new(o, "variant", json_string(c->variant->id));
    json_object_set_new(o, "params", params_json(c));
    int has_acc = tr_params_str(&c->params, "acc") || strcmp(c->variant->backend, "metal") == 0;
    json_object_set_new(o, "acc", has_acc ? json_string(tr_case_acc_f16(c) ? "f16" : "f32") : json_null());
    json_object_set_new(o, "metal_math", c->metal ? json_string(c->metal_math == TR_MATH_SAFE ? "safe" : "relaxed")
                                                  : json_null());
    json_object_set_new(o, "class", json_string(tr_class_name(r->cls)));
    json_object_set_new(o, "status", json_string(tr_verdict_name(r->status)));
    json_object_set_new(o, "max_abs", tr_json_real(r->max_abs));
    json_object_set_new(o, "max_ulp", json_integer(r->max_ulp));
    json_object_set_new(o, "nmse", tr_json_real(r->nmse));
    json_object_set_new(o, "bound", tr_json_real(r->bound));
    json_object_set_new(o, "bound_ratio", tr_json_real(r->bound_ratio));
    json_object_set_new(o, "prob_ratio", tr_json_real(r->prob_ratio));
    json_object_set_new(o, "mismatches", json_integer((json_int_t)r->mismatches));
    json_object_set_new(o, "unwritten", json_integer((json_int_t)r->unwritten));
    json_object_set_new(o, "tie_flips", r->tie_flips < 0 ? json_null() : json_integer(r->tie_flips));
    json_object_set_new(o, "detail", r->detail[0] ? json_string(r->detail) : json_null());
    if (r->first.valid) {
        json_t *m = json_object(), *coords = json_array();
        for (unsigned d = 0; d < r->first.ndim; d++)
            json_array_append_new(coords, json_integer((json_int_t)r->first.coords[d]));
        json_object_set_new(m, "output", json_string(r->first.output));
        json_object_set_new(m, "index", json_integer((json_int_t)r->first.index));
        json_object_set_new(m, "coords", coords);
        json_object_set_new(m, "got", json_string(r->first.got));
        json_object_set_new(m, "expected", json_string(r->first.expected));
        json_object_set_new(m, "bound", tr_json_real(r->first.bound));
        json_object_set_new(o, "first_mismatch", m);
    } else
        json_object_set_new(o, "first_mismatch", json_null());
    json_object_set_new(o, "time_us", t_us >= 0 ? tr_json_real(t_us) : json_null());
    json_object_set_new(o, "ref_time_us", ref_us >= 0 ? tr_json_real(ref_us) : json_null());
    json_object_set_new(o, "replay", json_string(replay));
    return o;
}

static void verdict_only(tr_result *r, const tr_case *c, tr_verdict v, const char *fmt, const char *text)
{
    memset(r, 0, sizeof *r);
    r->tie_flips = -1;
    r->cls = tr_case_class(c);
    r->status = v;
    snprintf(r->detail, sizeof r->detail, fmt, text);
}

/* The verdict of a backend that returned an error code (KERNELS.md §2.5). */
static tr_verdict verdict_of_error(int code)
{
    if (code == TR_E_UNSUPPORTED)
        return TR_UNSUPPORTED;
    if (code == TR_E_NOMEM)
        return TR_RESOURCE_ERROR;
    return TR_FAIL;
}

static int compute_expect(const tr_case *c, const tr_bufs *in, const tr_bufs *shapes, tr_expect *e, tr_error *err)
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
    if (e->status != TR_OK || !c->op->bound || c->op->cls == TR_CLASS_EXACT)
        return TR_OK;
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

/* ---- the kernel window: --case-timeout and the fault-injection hook ---------------------------------------- */

static void on_kernel_timeout(int sig)
{
    (void)sig;
    _exit(CONFORM_EXIT_TIMEOUT);   /* the runner turns this exit status into TIMEOUT */
}

static void kernel_alarm(double seconds)
{
    struct itimerval t = {{0, 0}, {(time_t)seconds, (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6)}};
    if (seconds > 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_kernel_timeout;
        sigaction(SIGALRM, &sa, NULL);
    }
    setitimer(ITIMER_REAL, &t, NULL);   /* seconds = 0 disarms */
}

/* Test hook (docs/decisions.md): TR_CONFORM_FAULT="crash:GLOB" or "hang:GLOB" makes the backend run of every case
 * whose id matches GLOB abort or spin, so tests prove crash and timeout isolation without a broken backend. */
static void injected_fault(const tr_case *c)
{
    const char *f = getenv("TR_CONFORM_FAULT");
    if (!f)
        return;
    if (!strncmp(f, "crash:", 6) && fnmatch(f + 6, c->id, 0) == 0)
        abort();
    if (!strncmp(f, "hang:", 5) && fnmatch(f + 5, c->id, 0) == 0)
        for (;;)
            pause();
}

/* Outputs of a live backend: guarded, poisoned (or zeroed when accumulating) buffers. */
static int alloc_got(const tr_bufs *shapes, tr_bufs *got, uint8_t **guarded)
{
    got->v = tr_calloc((size_t)shapes->n + 1, sizeof *got->v);
    if (!got->v)
        return TR_E_NOMEM;
    got->cap = shapes->n + 1;
    for (int k = 0; k < shapes->n; k++) {
        got->v[k] = tr_malloc(sizeof *got->v[k]);
        guarded[k] = got->v[k] ? conform_guarded_alloc(shapes->v[k]->bytes) : NULL;
        if (!guarded[k]) {
            tr_dealloc(got->v[k]);
            return TR_E_NOMEM;
        }
        *got->v[k] = *shapes->v[k];
        got->v[k]->data = guarded[k] + CONFORM_GUARD_BYTES;
        got->n = k + 1;
        if (got->v[k]->accumulating)
            memset(got->v[k]->data, 0, got->v[k]->bytes);
        else
            tr_poison_fill(got->v[k]);
    }
    return TR_OK;
}

static void free_got(tr_bufs *got, uint8_t **guarded)
{
    for (int k = 0; k < got->n; k++) {
        tr_dealloc(guarded[k]);
        tr_dealloc(got->v[k]);
    }
    tr_dealloc(got->v);
    got->v = NULL;
    got->n = 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Median time of reps runs of the op on be (NULL = the reference) into scratch outputs. */
static double time_runs(const tr_case *c, tr_backend *be, const tr_bufs *in, const tr_bufs *shapes, int reps)
{
    double *t = tr_malloc((size_t)reps * sizeof *t);
    tr_bufs scratch = {0};
    uint8_t *guarded[64] = {0};
    if (!t || shapes->n > 64 || alloc_got(shapes, &scratch, guarded) != TR_OK) {
        tr_dealloc(t);
        free_got(&scratch, guarded);
        return -1;
    }
    for (int r = 0; r < reps; r++) {
        tr_error err;
        double t0 = now_us();
        c->op->run(c, be, in, &scratch, &err);
        t[r] = now_us() - t0;
    }
    double m = median(t, reps);
    tr_dealloc(t);
    free_got(&scratch, guarded);
    return m;
}

/* Expected error: the backend must return the same code and leave every output untouched (a capture has no return
 * code: got_rc < 0, only the outputs are judged). */
static void judge_expected_error(const tr_case *c, int expected, int got_rc, const tr_bufs *got, const tr_expect *e,
                                 tr_result *r)
{
    verdict_only(r, c, TR_PASS, "%s", "");
    snprintf(r->detail, sizeof r->detail, "expected error %s", tr_status_name(expected));
    if (got_rc >= 0 && got_rc != expected) {
        r->status = TR_FAIL;
        snprintf(r->detail, sizeof r->detail, "expected error %s, backend returned %s", tr_status_name(expected),
                 tr_status_name(got_rc));
        return;
    }
    for (int k = 0; k < got->n; k++)
        if (memcmp(got->v[k]->data, e->canon.v[k]->data, got->v[k]->bytes) != 0) {
            r->status = TR_FAIL;
            snprintf(r->detail, sizeof r->detail, "error %s returned but output %s was written",
                     tr_status_name(expected), got->v[k]->name);
            return;
        }
}

static void check_guards(const tr_bufs *got, uint8_t *const *guarded, tr_result *r)
{
    for (int k = 0; k < got->n; k++) {
        long where;
        if (!conform_guards_intact(guarded[k], got->v[k]->bytes, &where)) {
            r->status = TR_FAIL;
            snprintf(r->detail, sizeof r->detail, "out-of-bounds write: guard byte of output %s at data offset %ld "
                     "changed", got->v[k]->name, where);
            return;
        }
    }
}

/* The reference self-check (KERNELS.md §2.1): ref_canon must lie within the TOLERANT bound of ref_hi. */
static int self_check(const tr_case *c, const tr_expect *e, tr_result *r)
{
    if (!e->hi)
        return 1;
    tr_result s;
    tr_compare_class(c, &e->canon, e, TR_CLASS_TOLERANT, &s);
    if (s.status != TR_FAIL)
        return 1;
    *r = s;
    r->cls = tr_case_class(c);
    char d[sizeof r->detail];
    snprintf(d, sizeof d, "reference self-check failed (ref_canon outside the bound of ref_hi): %.1200s", s.detail);
    memcpy(r->detail, d, sizeof d);
    return 0;
}

json_t *conform_exec(const tr_case *c, const conform_source *src, const conform_opts *o)
{
    tr_bufs in = {0}, shapes = {0}, got = {0};
    tr_expect e = {0};
    tr_result r;
    tr_error err;
    uint8_t *guarded[64] = {0};
    double t_us = -1, ref_us = -1;
    json_t *capture = NULL;
    cmetal_run *mrun = NULL;
    tr_error_clear(&err);
    int rc = src->be || !src->capture_case
                 ? c->op->make(c, &in, &shapes, &err)
                 : capture_load_case(src->capture_dir, src->capture_case, &in, &got, guarded, &err);
    if (rc == TR_OK && !src->be && src->capture_case)
        for (int k = 0; k < got.n; k++) {   /* shapes of the expected outputs = the recorded ones */
            tr_buf *s = tr_bufs_add(&shapes, got.v[k]->name, TR_ROLE_OUTPUT, got.v[k]->dtype, got.v[k]->ndim,
                                    got.v[k]->shape);
            if (!s) {
                rc = tr_fail(&err, TR_E_NOMEM, c->id, "out of memory");
                break;
            }
            s->accumulating = got.v[k]->accumulating;
        }
    if (rc != TR_OK) {
        verdict_only(&r, c, rc == TR_E_NOMEM ? TR_RESOURCE_ERROR : TR_FAIL, "inputs: %s", err.text);
        goto done;
    }
    if (shapes.n > 64) {
        verdict_only(&r, c, TR_RESOURCE_ERROR, "%s", "more than 64 outputs");
        goto done;
    }
    double t0 = now_us();
    rc = compute_expect(c, &in, &shapes, &e, &err);
    ref_us = now_us() - t0;
    if (rc != TR_OK) {
        verdict_only(&r, c, rc == TR_E_NOMEM ? TR_RESOURCE_ERROR : TR_FAIL, "reference: %s", err.text);
        goto done;
    }
    if (src->be || src->mv) {
        if (alloc_got(&shapes, &got, guarded) != TR_OK) {
            verdict_only(&r, c, TR_RESOURCE_ERROR, "%s", "cannot allocate outputs");
            goto done;
        }
        tr_error_clear(&err);
        if (!src->mv)
            kernel_alarm(o->kernel_timeout);   /* armed before the injected fault, so a hang meets it */
        t0 = now_us();
        injected_fault(c);
        if (src->mv) {   /* the emulator's watchdog holds each launch to the case timeout */
            rc = cmetal_run_case(src->mv, src->mcfg, c, &in, &got, &mrun, &err);
            t_us = mrun && cmetal_seconds(mrun) >= 0 ? cmetal_seconds(mrun) * 1e6 : now_us() - t0;
        } else {
            rc = c->op->run(c, src->be, &in, &got, &err);
            t_us = now_us() - t0;
            kernel_alarm(0);
        }
    } else
        rc = -1;   /* a capture: no return code */
    if (e.status != TR_OK)
        judge_expected_error(c, e.status, rc, &got, &e, &r);
    else if (rc > 0)
        verdict_only(&r, c, verdict_of_error(rc), "backend: %s", err.text);
    else if (self_check(c, &e, &r))
        tr_compare(c, &got, &e, &r);
    if (mrun && rc == TR_OK && e.status == TR_OK)
        cmetal_verdict(mrun, &r);
    if (r.status != TR_CRASH)
        check_guards(&got, guarded, &r);
    if (o->bench && (src->be || mrun) && rc == TR_OK && e.status == TR_OK) {
        t_us = mrun ? cmetal_time(mrun, o->reps) * 1e6 : time_runs(c, src->be, &in, &shapes, o->reps);
        ref_us = time_runs(c, NULL, &in, &shapes, o->reps);
    } else if (!o->bench)
        ref_us = -1;
    if (o->capture_out && (src->be || src->mv)) {
        capture = capture_write_case(o->capture_out, c->index, c, &in, &got, guarded, &err);
        if (!capture && r.status == TR_PASS)
            verdict_only(&r, c, TR_RESOURCE_ERROR, "capture: %s", err.text);
    }
done:;
    json_t *res = result_json(c, o->backend_name, &r, src->be || src->mv ? t_us : -1, ref_us);
    if (capture)
        json_object_set_new(res, "capture", capture);
    if (mrun)
        json_object_set_new(res, "metal_emu", cmetal_run_json(mrun));
    cmetal_run_free(mrun);
    tr_bufs_free(&in);
    tr_bufs_free(&shapes);
    tr_expect_free(&e);
    free_got(&got, guarded);
    return res;
}
