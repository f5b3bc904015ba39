/*
 * oracle_run.c — the acceptance checks of ENGINE.md §7 for one oracle case on one backend:
 *   1 logits of one prefill within 1e-4·max|oracle| + 1e-4;   2 hidden states per index, likewise;
 *   3 greedy continuation identical;                             4 prefill-vs-decode and fully incremental decode
 *   5 MLA absorbed vs expanded (GLM);                            6 routing sets agree except ambiguous decisions.
 * Errors are max |Δ| with NaN counted as a failure ("must have no NaN").
 */
#include "trellis/oracle.h"
#include "trellis/alloc.h"
#include "trellis/engine.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PVD_TOL 1e-4
#define SPLIT_AT 25u

/* max |a − b| over n values; NaN anywhere gives +inf. */
static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (isnan(d))
            return INFINITY;
        if (d > m)
            m = d;
    }
    return m;
}

static double max_abs(const float *a, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)a[i]) > m)
            m = fabs((double)a[i]);
    return m;
}

static void fail_note(tr_oracle_result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_note(tr_oracle_result *r, const char *fmt, ...)
{
    r->ok = 0;
    if (r->detail[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->detail, sizeof r->detail, fmt, ap);
    va_end(ap);
}

/* ---- traces ------------------------------------------------------------------------------------------------------ */

typedef struct capture {
    const tr_oracle_case *c;
    float *hidden;                    /* [L1][T][D] of one call covering positions 0..T-1 */
    tr_oracle_routes routes;
    double min_margin;
    uint32_t ambiguous;
    char first_ambiguous[96];
} capture;

static void on_hidden(void *user, uint32_t index, uint32_t pos0, uint32_t T, const float *h, uint32_t D)
{
    capture *cp = user;
    const tr_oracle_case *c = cp->c;
    if (!cp->hidden || index >= c->L1 || D != c->D || pos0 + T > c->T)
        return;
    memcpy(cp->hidden + ((size_t)index * c->T + pos0) * D, h, (size_t)T * D * sizeof *h);
}

static int by_id(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static void on_route(void *user, const tr_route_info *ri)
{
    capture *cp = user;
    tr_oracle_routes *rt = &cp->routes;
    if (ri->layer >= rt->L || ri->pos >= rt->T || ri->k != rt->k)
        return;
    int32_t *dst = rt->ids + ((size_t)ri->layer * rt->T + ri->pos) * rt->k;
    memcpy(dst, ri->ids, (size_t)ri->k * sizeof *dst);
    qsort(dst, ri->k, sizeof *dst, by_id);
    rt->margin[(size_t)ri->layer * rt->T + ri->pos] = ri->margin;
    if (ri->margin < cp->min_margin)
        cp->min_margin = ri->margin;
    if (ri->margin < TR_ORACLE_AMBIGUOUS && cp->ambiguous++ == 0)
        snprintf(cp->first_ambiguous, sizeof cp->first_ambiguous, "layer %u position %u margin %.3g", ri->layer,
                 ri->pos, ri->margin);
}

static int capture_init(capture *cp, const tr_oracle_case *c, const tr_model *m, int want_hidden)
{
    memset(cp, 0, sizeof *cp);
    cp->c = c;
    cp->min_margin = INFINITY;
    tr_oracle_routes *rt = &cp->routes;
    rt->L = m->cfg.L;
    rt->T = c->T;
    rt->k = m->cfg.k ? m->cfg.k : 1;
    size_t n = (size_t)rt->L * rt->T;
    rt->ids = tr_malloc(n * rt->k * sizeof *rt->ids);
    rt->margin = tr_malloc(n * sizeof *rt->margin);
    if (want_hidden)
        cp->hidden = tr_calloc((size_t)c->L1 * c->T * c->D, sizeof *cp->hidden);
    if (!rt->ids || !rt->margin || (want_hidden && !cp->hidden))
        return TR_E_NOMEM;
    for (size_t i = 0; i < n * rt->k; i++)
        rt->ids[i] = -1;
    for (size_t i = 0; i < n; i++)
        rt->margin[i] = NAN;
    return TR_OK;
}

static void capture_free(capture *cp)
{
    tr_dealloc(cp->hidden);
    tr_dealloc(cp->routes.ids);
    tr_dealloc(cp->routes.margin);
}

/* ---- runs --------------------------------------------------------------------------------------------------------- */

typedef struct runner {
    const tr_model *m;
    const tr_oracle_case *c;
    const char *backend;
    int threads;
    tr_error *err;
} runner;

static int new_session(const runner *rn, tr_mla_form form, capture *cp, tr_session **s)
{
    tr_session_options o;
    tr_session_options_default(&o);
    o.backend = rn->backend;
    o.threads = rn->threads;
    o.mla_form = form;
    uint32_t need = rn->c->T > rn->c->n_prompt + rn->c->n_output ? rn->c->T : rn->c->n_prompt + rn->c->n_output;
    o.ctx_size = need + 1 < rn->m->cfg.max_position_embeddings ? need + 1 : rn->m->cfg.max_position_embeddings;
    int rc = tr_session_new(rn->m, &o, s, rn->err);
    if (rc == TR_OK && cp) {
        tr_trace_hooks h = {on_hidden, on_route, cp};
        tr_session_set_trace(*s, &h);
    }
    return rc;
}

/* Logits [T][V] of input_ids: one prefill (chunk = T), SPLIT_AT then one by one (chunk = 0), or all one by one. */
static int run_logits(const runner *rn, tr_mla_form form, uint32_t first_chunk, capture *cp, float *logits)
{
    tr_session *s;
    int rc = new_session(rn, form, cp, &s);
    const uint32_t T = rn->c->T, V = rn->m->cfg.V;
    uint32_t done = 0;
    if (rc == TR_OK && first_chunk > 1) {
        rc = tr_session_eval(s, rn->c->input_ids, first_chunk, TR_LOGITS_ALL, logits, rn->err);
        done = first_chunk;
    }
    for (; rc == TR_OK && done < T; done++)
        rc = tr_session_eval(s, rn->c->input_ids + done, 1, TR_LOGITS_LAST, logits + (size_t)done * V, rn->err);
    tr_session_free(s);
    return rc;
}

static int32_t argmax(const float *v, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return (int32_t)best;
}

static int run_greedy(const runner *rn, tr_oracle_result *r)
{
    tr_session *s;
    int rc = new_session(rn, TR_MLA_AUTO, NULL, &s);
    float *lg = tr_malloc((size_t)rn->m->cfg.V * sizeof *lg);
    if (rc == TR_OK && !lg)
        rc = tr_fail(rn->err, TR_E_NOMEM, "greedy", "out of memory");
    if (rc == TR_OK)
        rc = tr_session_eval(s, rn->c->prompt_ids, rn->c->n_prompt, TR_LOGITS_LAST, lg, rn->err);
    r->n_greedy = 0;
    while (rc == TR_OK && r->n_greedy < rn->c->n_output) {
        int32_t next = argmax(lg, rn->m->cfg.V);
        r->greedy_ids[r->n_greedy++] = next;
        if (r->n_greedy < rn->c->n_output)
            rc = tr_session_eval(s, &next, 1, TR_LOGITS_LAST, lg, rn->err);
    }
    tr_dealloc(lg);
    tr_session_free(s);
    r->greedy_first_diff = -1;
    for (uint32_t i = 0; rc == TR_OK && i < rn->c->n_output; i++)
        if (r->greedy_ids[i] != rn->c->output_ids[i]) {
            r->greedy_first_diff = (int)i;
            break;
        }
    r->greedy_ok = rc == TR_OK && r->greedy_first_diff < 0;
    return rc;
}

/* ---- checks --------------------------------------------------------------------------------------------------------- */

static void check_logits(const tr_oracle_case *c, const float *got, tr_oracle_result *r, const char *what)
{
    double err = max_abs_diff(got, c->logits, (size_t)c->T * c->V);
    double bound = 1e-4 * max_abs(c->logits, (size_t)c->T * c->V) + 1e-4;
    if (!strcmp(what, "prefill")) {
        r->logits_err = err;
        r->logits_bound = bound;
        r->logits_ok = err <= bound;
    }
    if (!(err <= bound))
        fail_note(r, "%s logits: max |Δ| %.3g > bound %.3g", what, err, bound);
}

static void check_hidden(const tr_oracle_case *c, const float *got, tr_oracle_result *r, const char *what)
{
    const size_t per = (size_t)c->T * c->D;
    int first = -1;
    double worst = 0.0;
    for (uint32_t i = 0; i < c->L1; i++) {
        double err = max_abs_diff(got + i * per, c->hidden + i * per, per);
        double bound = 1e-4 * max_abs(c->hidden + i * per, per) + 1e-4;
        double ratio = err / bound;
        if (ratio > worst || isnan(ratio))
            worst = isnan(ratio) ? INFINITY : ratio;
        if (!(err <= bound) && first < 0) {
            first = (int)i;
            fail_note(r, "%s hidden state %u: max |Δ| %.3g > bound %.3g", what, i, err, bound);
        }
    }
    if (!strcmp(what, "prefill")) {
        r->hidden_worst_ratio = worst;
        r->hidden_first_fail = first;
        r->hidden_ok = first < 0;
    }
}

int tr_oracle_routes_agree(const tr_oracle_routes *a, const tr_oracle_routes *b, char *detail, size_t size)
{
    if (a->L != b->L || a->T != b->T || a->k != b->k) {
        snprintf(detail, size, "route shapes differ");
        return 0;
    }
    for (uint32_t l = 0; l < a->L; l++)
        for (uint32_t t = 0; t < a->T; t++) {
            size_t at = (size_t)l * a->T + t;
            if (a->margin[at] < TR_ORACLE_AMBIGUOUS || b->margin[at] < TR_ORACLE_AMBIGUOUS)
                continue;
            if (memcmp(a->ids + at * a->k, b->ids + at * a->k, (size_t)a->k * sizeof *a->ids)) {
                snprintf(detail, size, "layer %u position %u selects different experts", l, t);
                return 0;
            }
        }
    return 1;
}

/* Runs 4 (split, incremental) and 5 (forced MLA forms) against the prefill run. */
static int check_variants(const runner *rn, const float *base, const capture *cb, tr_oracle_result *r)
{
    const tr_oracle_case *c = rn->c;
    const size_t nl = (size_t)c->T * c->V;
    float *lg = tr_malloc(nl * sizeof *lg), *lg2 = tr_malloc(nl * sizeof *lg2);
    capture cp, cp2;
    int rc = lg && lg2 && capture_init(&cp, c, rn->m, 0) == TR_OK && capture_init(&cp2, c, rn->m, 1) == TR_OK
                 ? TR_OK : tr_fail(rn->err, TR_E_NOMEM, c->name, "out of memory");
    char why[160];
    r->routes_ok = 1;
    r->pvd_ok = 1;
    for (int pass = 0; rc == TR_OK && pass < 2; pass++) {
        rc = run_logits(rn, TR_MLA_AUTO, pass == 0 && c->T > SPLIT_AT ? SPLIT_AT : 0, &cp, lg);
        uint32_t from = pass == 0 && c->T > SPLIT_AT ? SPLIT_AT - 1 : 0;
        double e = rc == TR_OK ? max_abs_diff(lg + (size_t)from * c->V, base + (size_t)from * c->V,
                                              (size_t)(c->T - from) * c->V) : INFINITY;
        *(pass == 0 ? &r->pvd_split_err : &r->pvd_incremental_err) = e;
        if (rc == TR_OK && !(e <= PVD_TOL)) {
            r->pvd_ok = 0;
            fail_note(r, "%s decode: max |Δ| vs prefill %.3g > %g", pass ? "incremental" : "split", e, PVD_TOL);
        }
        if (rc == TR_OK && !tr_oracle_routes_agree(&cb->routes, &cp.routes, why, sizeof why)) {
            r->routes_ok = 0;
            fail_note(r, "routes of the %s run disagree with prefill: %s", pass ? "incremental" : "split", why);
        }
    }
    r->mla_checked = !strcmp(c->arch, "glm4_moe_lite");
    r->mla_ok = 1;
    if (rc == TR_OK && r->mla_checked) {
        rc = run_logits(rn, TR_MLA_EXPANDED, c->T, &cp2, lg);
        float *hid_exp = cp2.hidden;
        cp2.hidden = NULL;
        capture_free(&cp2);
        if (rc == TR_OK && capture_init(&cp2, c, rn->m, 1) != TR_OK)
            rc = tr_fail(rn->err, TR_E_NOMEM, c->name, "out of memory");
        if (rc == TR_OK)
            rc = run_logits(rn, TR_MLA_ABSORBED, c->T, &cp2, lg2);
        if (rc == TR_OK) {
            r->mla_logits_diff = max_abs_diff(lg, lg2, nl);
            r->mla_hidden_diff = max_abs_diff(hid_exp, cp2.hidden, (size_t)c->L1 * c->T * c->D);
            r->mla_ok = r->mla_logits_diff <= PVD_TOL && r->mla_hidden_diff <= PVD_TOL;
            if (!r->mla_ok)
                fail_note(r, "MLA absorbed vs expanded: logits %.3g, hidden %.3g (> %g)", r->mla_logits_diff,
                          r->mla_hidden_diff, PVD_TOL);
            tr_oracle_result sub = {0};
            check_logits(c, lg, &sub, "expanded");
            check_hidden(c, hid_exp, &sub, "expanded");
            check_logits(c, lg2, &sub, "absorbed");
            check_hidden(c, cp2.hidden, &sub, "absorbed");
            if (sub.detail[0]) {
                r->mla_ok = 0;
                fail_note(r, "%s", sub.detail);
            }
            if (!tr_oracle_routes_agree(&cb->routes, &cp2.routes, why, sizeof why)) {
                r->routes_ok = 0;
                fail_note(r, "routes of the absorbed run disagree with prefill: %s", why);
            }
        }
        tr_dealloc(hid_exp);
    }
    capture_free(&cp);
    capture_free(&cp2);
    tr_dealloc(lg);
    tr_dealloc(lg2);
    return rc;
}

int tr_oracle_run_case(const tr_oracle *o, uint32_t i, const char *backend, int threads, tr_oracle_result *r,
                       tr_error *err)
{
    memset(r, 0, sizeof *r);
    snprintf(r->backend, sizeof r->backend, "%s", backend);
    r->ok = 1;
    r->hidden_first_fail = r->greedy_first_diff = -1;
    const tr_oracle_case *c = tr_oracle_case_at(o, i);
    if (!c)
        return tr_fail(err, TR_E_INVALID_PARAM, "oracle", "no case %u", i);
    tr_model *m;
    int rc = tr_model_load(c->dir, NULL, &m, err);
    if (rc != TR_OK)
        return rc;
    if (m->cfg.V != c->V || m->cfg.D != c->D || m->cfg.L + 1 != c->L1) {
        tr_model_free(m);
        return tr_fail(err, TR_E_INPUT, c->dir, "oracle.json shapes disagree with config.json (V %u, D %u, L %u)",
                       m->cfg.V, m->cfg.D, m->cfg.L);
    }
    runner rn = {m, c, backend, threads, err};
    capture cb;
    float *lg = tr_malloc((size_t)c->T * c->V * sizeof *lg);
    rc = lg && capture_init(&cb, c, m, 1) == TR_OK ? TR_OK : tr_fail(err, TR_E_NOMEM, c->name, "out of memory");
    if (rc == TR_OK)
        rc = run_logits(&rn, TR_MLA_AUTO, c->T, &cb, lg);
    if (rc == TR_OK) {
        check_logits(c, lg, r, "prefill");
        check_hidden(c, cb.hidden, r, "prefill");
        r->min_margin = cb.min_margin;
        r->ambiguous = cb.ambiguous;
        memcpy(r->first_ambiguous, cb.first_ambiguous, sizeof r->first_ambiguous);
        rc = check_variants(&rn, lg, &cb, r);
    }
    if (rc == TR_OK && (rc = run_greedy(&rn, r)) == TR_OK && !r->greedy_ok)
        fail_note(r, "greedy continuation differs at step %d (got %d, oracle %d)", r->greedy_first_diff,
                  r->greedy_ids[r->greedy_first_diff], c->output_ids[r->greedy_first_diff]);
    r->routes = cb.routes;                 /* ownership moves to the result */
    cb.routes.ids = NULL;
    cb.routes.margin = NULL;
    capture_free(&cb);
    tr_dealloc(lg);
    tr_model_free(m);
    if (rc != TR_OK)
        r->ok = 0;
    return rc;
}

void tr_oracle_result_release(tr_oracle_result *r)
{
    tr_dealloc(r->routes.ids);
    tr_dealloc(r->routes.margin);
    r->routes.ids = NULL;
    r->routes.margin = NULL;
}

static json_t *num_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

json_t *tr_oracle_result_json(const tr_oracle_case *c, const tr_oracle_result *r)
{
    json_t *o = json_object(), *x;
    json_object_set_new(o, "case", json_string(c->name));
    json_object_set_new(o, "backend", json_string(r->backend));
    json_object_set_new(o, "ok", json_boolean(r->ok));
    x = json_object();
    json_object_set_new(x, "max_abs", num_or_null(r->logits_err));
    json_object_set_new(x, "bound", json_real(r->logits_bound));
    json_object_set_new(x, "ok", json_boolean(r->logits_ok));
    json_object_set_new(o, "logits", x);
    x = json_object();
    json_object_set_new(x, "worst_ratio", num_or_null(r->hidden_worst_ratio));
    json_object_set_new(x, "first_failing_index", r->hidden_first_fail < 0 ? json_null()
                                                                          : json_integer(r->hidden_first_fail));
    json_object_set_new(x, "ok", json_boolean(r->hidden_ok));
    json_object_set_new(o, "hidden_states", x);
    x = json_object();
    json_object_set_new(x, "first_diff", r->greedy_first_diff < 0 ? json_null() : json_integer(r->greedy_first_diff));
    json_object_set_new(x, "ok", json_boolean(r->greedy_ok));
    json_object_set_new(o, "greedy", x);
    x = json_object();
    json_object_set_new(x, "split_max_abs", num_or_null(r->pvd_split_err));
    json_object_set_new(x, "incremental_max_abs", num_or_null(r->pvd_incremental_err));
    json_object_set_new(x, "oracle_prefill_vs_decode_max_abs", json_real(c->oracle_pvd));
    json_object_set_new(x, "ok", json_boolean(r->pvd_ok));
    json_object_set_new(o, "prefill_vs_decode", x);
    if (r->mla_checked) {
        x = json_object();
        json_object_set_new(x, "logits_max_abs", num_or_null(r->mla_logits_diff));
        json_object_set_new(x, "hidden_max_abs", num_or_null(r->mla_hidden_diff));
        json_object_set_new(x, "ok", json_boolean(r->mla_ok));
        json_object_set_new(o, "mla_absorbed_vs_expanded", x);
    } else
        json_object_set_new(o, "mla_absorbed_vs_expanded", json_null());
    x = json_object();
    json_object_set_new(x, "min_margin", num_or_null(r->min_margin));
    json_object_set_new(x, "ambiguous", json_integer(r->ambiguous));
    json_object_set_new(x, "first_ambiguous", r->ambiguous ? json_string(r->first_ambiguous) : json_null());
    json_object_set_new(x, "agree", json_boolean(r->routes_ok));
    json_object_set_new(o, "routes", x);
    json_object_set_new(o, "detail", r->detail[0] ? json_string(r->detail) : json_null());
    return o;
}
