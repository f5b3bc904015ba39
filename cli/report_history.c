/*
 * report_history.c — results keyed by git commit (HARNESS.md §5): `trellis report` copies every input to
 * <history>/<commit>/<file name>, and `trellis report diff A B` compares two commits (history folders), folders or
 * result files: status changes per conformance case, golden fixture, oracle case and symbol, and the deltas of
 * perplexity, KLD, study entries, quantized bits per weight and bench timings with their uncertainties
 * (σ_Δ = sqrt(σ_A² + σ_B²), conservative when both runs share the text).
 */
#include "report.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/registry.h"

#include <gsl/gsl_statistics_double.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- history copy ------------------------------------------------------------------------------------------------ */

static void sanitize(const char *in, char *out, size_t size)
{
    size_t n = 0;
    for (const char *p = in; *p && n + 1 < size; p++) {
        int ok = (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '-' ||
                 *p == '_' || (*p == '.' && n > 0);
        out[n++] = ok ? *p : '_';
    }
    out[n] = '\0';
    if (!n)
        snprintf(out, size, "unknown");
}

static int copy_file(const char *src, const char *dst, tr_error *err)
{
    char a[PATH_MAX], b[PATH_MAX];
    if (realpath(src, a) && realpath(dst, b) && !strcmp(a, b))
        return TR_OK;   /* reading the history folder itself */
    char *data = NULL;
    size_t n = 0;
    int rc = tr_file_read_all(src, &data, &n, err);
    if (rc == TR_OK)
        rc = tr_file_write_all(dst, data, n, err);
    tr_dealloc(data);
    return rc;
}

int rpt_history(const rpt_set *s, const char *hist, const char *fallback, FILE *out, tr_error *err)
{
    char commit[128], name[512];
    rpt_buf seen = {0};
    int rc = TR_OK;
    for (size_t i = 0; i < s->n && rc == TR_OK; i++) {
        const char *c = rj_str(s->in[i].doc, "git_commit");
        sanitize(c ? c : fallback ? fallback : "unknown", commit, sizeof commit);
        char *dir = tr_path_join(hist, commit);
        char *dst = dir ? tr_path_join(dir, rj_base(s->in[i].path, name, sizeof name)) : NULL;
        rc = !dst ? tr_fail(err, TR_E_NOMEM, hist, "out of memory") : tr_mkdir_p(dir, err);
        if (rc == TR_OK)
            rc = copy_file(s->in[i].path, dst, err);
        char key[140];
        snprintf(key, sizeof key, "\n%s\n", commit);
        if (!seen.n)
            rb_puts(&seen, "\n");
        if (rc == TR_OK && !strstr(rb_str(&seen), key))
            rb_puts(&seen, key + 1);   /* the list reads "\na\nb\n" */
        tr_dealloc(dir);
        tr_dealloc(dst);
    }
    if (rc == TR_OK && seen.oom)
        rc = tr_fail(err, TR_E_NOMEM, hist, "out of memory");
    if (rc == TR_OK)
        for (const char *p = rb_str(&seen); *p;) {
            size_t len = strcspn(p, "\n");
            if (len)
                fprintf(out, "history: %s/%.*s/\n", hist, (int)len, p);
            p += len + (p[len] == '\n');
        }
    rb_free(&seen);
    return rc;
}

/* ---- diff items -------------------------------------------------------------------------------------------------- */

typedef struct ditem {
    char *key;                        /* "kind/…": what is compared with what */
    rpt_kind kind;
    const json_t *doc, *obj;          /* the file and the element (result, entry) or the file again */
} ditem;

typedef struct dlist {
    ditem *v;
    size_t n, cap;
    int oom;
} dlist;

static void dl_add(dlist *l, rpt_kind kind, const json_t *doc, const json_t *obj, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void dl_add(dlist *l, rpt_kind kind, const json_t *doc, const json_t *obj, const char *fmt, ...)
{
    char key[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(key, sizeof key, fmt, ap);
    va_end(ap);
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        ditem *v = tr_realloc(l->v, cap * sizeof *v);
        if (!v) {
            l->oom = 1;
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    char *k = tr_strdup(key);
    if (!k) {
        l->oom = 1;
        return;
    }
    l->v[l->n++] = (ditem){k, kind, doc, obj};
}

static const char *base(const char *p)
{
    static char slots[4][256];
    static unsigned next;
    return rj_base(p ? p : "?", slots[next++ % 4], 256);
}

static void items_of_array(dlist *l, const rpt_input *in, const char *arr)
{
    const json_t *a = json_object_get(in->doc, arr);
    for (size_t i = 0; i < json_array_size(a); i++) {
        const json_t *x = json_array_get(a, i);
        switch (in->kind) {
        case RPT_CONFORMANCE: dl_add(l, in->kind, in->doc, x, "conformance %s %s", rj_str(in->doc, "backend"),
                                     rj_str(x, "case")); break;
        case RPT_GOLDEN_VERIFY: dl_add(l, in->kind, in->doc, x, "golden %s", rj_str(x, "id")); break;
        case RPT_ORACLE_VERIFY: dl_add(l, in->kind, in->doc, x, "oracle %s %s", rj_str(x, "case"),
                                       rj_str(x, "backend")); break;
        case RPT_SYMBOLS: dl_add(l, in->kind, in->doc, x, "symbol %s", rj_str(x, "name")); break;
        case RPT_STUDY: dl_add(l, in->kind, in->doc, x, "study %s %s %s", rj_str(x, "model"), rj_str(x, "spec"),
                               rj_str(x, "rotation")); break;
        case RPT_BENCH_KERNELS: dl_add(l, in->kind, in->doc, x, "bench-kernels O=%.0f I=%.0f bits=%.0f M=%.0f "
                                       "threads=%.0f", rj_get(x, "O"), rj_get(x, "I"), rj_get(x, "bits"),
                                       rj_get(x, "M"), rj_get(x, "threads")); break;
        default: break;
        }
    }
}

static void items_of(dlist *l, const rpt_input *in)
{
    const json_t *d = in->doc;
    switch (in->kind) {
    case RPT_CONFORMANCE: case RPT_GOLDEN_VERIFY: case RPT_ORACLE_VERIFY: case RPT_BENCH_KERNELS:
        items_of_array(l, in, "results");
        break;
    case RPT_SYMBOLS: items_of_array(l, in, "symbols"); break;
    case RPT_STUDY: items_of_array(l, in, "entries"); break;
    case RPT_PERPLEXITY:
        dl_add(l, in->kind, d, d, "perplexity %s %s ctx=%.0f", base(rj_str(d, "model")),
               rj_str(d, "protocol") ? rj_str(d, "protocol") : "?", rj_get(d, "ctx"));
        break;
    case RPT_KLD:
        dl_add(l, in->kind, d, d, "kld %s vs %s ctx=%.0f", base(rj_str(d, "model")), base(rj_str(d, "base_model")),
               rj_get(d, "ctx"));
        break;
    case RPT_QUANTIZE: dl_add(l, in->kind, d, d, "quantize %s", base(rj_str(d, "out"))); break;
    case RPT_BENCH: dl_add(l, in->kind, d, d, "bench %s %s", rj_str(d, "model"),
                           rj_str(d, "backend") ? rj_str(d, "backend") : "?"); break;
    default: break;
    }
}

static int cmp_item(const void *a, const void *b) { return strcmp(((const ditem *)a)->key, ((const ditem *)b)->key); }

static void dl_free(dlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        tr_dealloc(l->v[i].key);
    tr_dealloc(l->v);
    memset(l, 0, sizeof *l);
}

/* ---- comparisons ------------------------------------------------------------------------------------------------- */

typedef struct dstate {
    FILE *out;
    unsigned status_changes, regressions, significant, compared, only_a, only_b;
    int oom;
} dstate;

/* 0 good, 1 warning-like, 2 failing. */
static int severity(rpt_kind k, const json_t *x)
{
    const char *s = k == RPT_ORACLE_VERIFY ? (json_is_true(json_object_get(x, "ok")) ? "PASS" : "FAIL")
                                          : rj_str(x, "status");
    if (!s)
        return 0;
    if (k == RPT_SYMBOLS)
        return strcmp(s, "missing") ? 0 : 1;
    if (k == RPT_STUDY)
        return !strcmp(s, "error") ? 2 : 0;
    if (!strcmp(s, "FAIL") || !strcmp(s, "CRASH") || !strcmp(s, "TIMEOUT") || !strcmp(s, "ERROR"))
        return 2;
    return !strcmp(s, "PRECISION_WARNING") || !strcmp(s, "RESOURCE_ERROR") ? 1 : 0;
}

static const char *status_of(rpt_kind k, const json_t *x)
{
    if (k == RPT_ORACLE_VERIFY)
        return json_is_true(json_object_get(x, "ok")) ? "PASS" : "FAIL";
    return rj_str(x, "status") ? rj_str(x, "status") : "?";
}

static void status_diff(dstate *st, const ditem *a, const ditem *b)
{
    const char *sa = status_of(a->kind, a->obj), *sb = status_of(b->kind, b->obj);
    if (!strcmp(sa, sb))
        return;
    int worse = severity(b->kind, b->obj) > severity(a->kind, a->obj);
    st->status_changes++;
    st->regressions += worse;
    fprintf(st->out, "  %s %s: %s -> %s", worse ? "REGRESSION" : "changed   ", a->key, sa, sb);
    if (a->kind == RPT_CONFORMANCE)
        fprintf(st->out, " (bound ratio %s -> %s)", rf_num(rj_get(a->obj, "bound_ratio"), 3),
                rf_num(rj_get(b->obj, "bound_ratio"), 3));
    fprintf(st->out, "\n");
}

/* One metric: "name: A ± σ -> B ± σ, Δ ± σ (zσ)"; marked '!' when |Δ| > 2σ. */
static void metric(dstate *st, const char *name, double a, double ua, double b, double ub)
{
    if (isnan(a) && isnan(b))
        return;
    double d = b - a, u = sqrt((isfinite(ua) ? ua * ua : 0) + (isfinite(ub) ? ub * ub : 0));
    int sig = isfinite(d) && u > 0 && fabs(d) > 2 * u;
    int changed = !(a == b) && !(isnan(a) && isnan(b));
    st->significant += sig;
    fprintf(st->out, "    %c %-22s %s -> ", sig ? '!' : changed ? '~' : ' ', name, rf_pm(a, ua));
    fprintf(st->out, "%s", rf_pm(b, ub));
    if (isfinite(d) && u > 0)
        fprintf(st->out, "   Δ %s (%.1fσ)\n", rf_pm(d, u), fabs(d) / u);
    else if (isfinite(d))
        fprintf(st->out, "   Δ %s\n", rf_num(d, 4));
    else
        fprintf(st->out, "\n");
}

/* Mean and standard error of o.samples_ms (GSL); RPT_NONE when fewer than 2 samples. */
static void sample_stats(dstate *st, const json_t *o, double *mean, double *se)
{
    const json_t *a = json_object_get(o, "samples_ms");
    size_t n = json_array_size(a), k = 0;
    double *v = n ? tr_malloc(n * sizeof *v) : NULL;
    for (size_t i = 0; v && i < n; i++)
        if (rj_num(json_array_get(a, i), &v[k]) && isfinite(v[k]))
            k++;
    *mean = *se = RPT_NONE;
    if (n && !v)
        st->oom = 1;
    if (k >= 2) {
        *mean = gsl_stats_mean(v, 1, k);
        *se = gsl_stats_sd(v, 1, k) / sqrt((double)k);
    }
    tr_dealloc(v);
}

static void value_diff(dstate *st, const ditem *a, const ditem *b)
{
    const json_t *x = a->obj, *y = b->obj;
    fprintf(st->out, "  %s\n", a->key);
    switch (a->kind) {
    case RPT_PERPLEXITY:
        metric(st, "PPL", rj_get(x, "ppl"), rj_get(x, "ppl_unc"), rj_get(y, "ppl"), rj_get(y, "ppl_unc"));
        break;
    case RPT_KLD:
        metric(st, "mean KLD", rj_get2(x, "kld", "mean"), rj_get2(x, "kld", "mean_unc"), rj_get2(y, "kld", "mean"),
               rj_get2(y, "kld", "mean_unc"));
        metric(st, "PPL(Q)", rj_get(x, "ppl_q"), rj_get(x, "ppl_q_unc"), rj_get(y, "ppl_q"), rj_get(y, "ppl_q_unc"));
        metric(st, "same top", rj_get2(x, "same_top", "rate"), rj_get2(x, "same_top", "rate_unc"),
               rj_get2(y, "same_top", "rate"), rj_get2(y, "same_top", "rate_unc"));
        metric(st, "RMS dp", rj_get2(x, "delta_p", "rms"), rj_get2(x, "delta_p", "rms_unc"),
               rj_get2(y, "delta_p", "rms"), rj_get2(y, "delta_p", "rms_unc"));
        break;
    case RPT_STUDY:
        metric(st, "average bpw", rj_get(x, "average_bpw"), 0, rj_get(y, "average_bpw"), 0);
        metric(st, "PPL", rj_get(x, "ppl"), rj_get(x, "ppl_unc"), rj_get(y, "ppl"), rj_get(y, "ppl_unc"));
        metric(st, "mean KLD", rj_get2(x, "kld", "mean"), rj_get2(x, "kld", "mean_unc"), rj_get2(y, "kld", "mean"),
               rj_get2(y, "kld", "mean_unc"));
        break;
    case RPT_QUANTIZE:
        metric(st, "average bpw", rj_get(x, "average_bpw"), 0, rj_get(y, "average_bpw"), 0);
        break;
    case RPT_BENCH_KERNELS:
        metric(st, "median us", rj_get(x, "median_us"), 0, rj_get(y, "median_us"), 0);
        break;
    case RPT_BENCH: {
        double ma, sa, mb, sb;
        sample_stats(st, json_object_get(x, "decode"), &ma, &sa);
        sample_stats(st, json_object_get(y, "decode"), &mb, &sb);
        metric(st, "decode ms/token", ma, sa, mb, sb);
        metric(st, "decode p50 ms", rj_get2(x, "decode", "percentile_50_ms"), 0,
               rj_get2(y, "decode", "percentile_50_ms"), 0);
        metric(st, "decode p99 ms", rj_get2(x, "decode", "percentile_99_ms"), 0,
               rj_get2(y, "decode", "percentile_99_ms"), 0);
        sample_stats(st, json_object_get(x, "prefill"), &ma, &sa);
        sample_stats(st, json_object_get(y, "prefill"), &mb, &sb);
        metric(st, "prefill ms", ma, sa, mb, sb);
        break;
    }
    default:
        break;
    }
}

static int is_status_kind(rpt_kind k)
{
    return k == RPT_CONFORMANCE || k == RPT_GOLDEN_VERIFY || k == RPT_ORACLE_VERIFY || k == RPT_SYMBOLS;
}

static void compare(dstate *st, const ditem *a, const ditem *b)
{
    st->compared++;
    if (is_status_kind(a->kind)) {
        status_diff(st, a, b);
        return;
    }
    if (a->kind == RPT_STUDY && strcmp(status_of(a->kind, a->obj), status_of(b->kind, b->obj)))
        status_diff(st, a, b);
    value_diff(st, a, b);
}

/* ---- the command ------------------------------------------------------------------------------------------------- */

/* A result file, a folder, or a commit under hist. */
static int load_side(const char *arg, const char *hist, rpt_set *s, tr_error *err)
{
    if (tr_path_exists(arg))
        return rpt_set_add(s, arg, err);
    char *p = tr_path_join(hist, arg);
    if (!p)
        return tr_fail(err, TR_E_NOMEM, arg, "out of memory");
    int rc = tr_path_is_dir(p) ? rpt_set_add(s, p, err)
                               : tr_fail(err, TR_E_INPUT, arg, "not a result file, a folder, or a commit under %s/",
                                         hist);
    tr_dealloc(p);
    return rc;
}

static void walk(dstate *st, dlist *a, dlist *b)
{
    size_t i = 0, j = 0;
    while (i < a->n || j < b->n) {
        int c = i == a->n ? 1 : j == b->n ? -1 : strcmp(a->v[i].key, b->v[j].key);
        if (c == 0) {
            compare(st, &a->v[i++], &b->v[j++]);
        } else if (c < 0) {
            st->only_a++;
            fprintf(st->out, "  only in A: %s\n", a->v[i++].key);
        } else {
            st->only_b++;
            fprintf(st->out, "  only in B: %s\n", b->v[j++].key);
        }
    }
}

int rpt_diff(const char *a, const char *b, const char *hist, FILE *out, int *regressed, tr_error *err)
{
    rpt_set sa = {0}, sb = {0};
    dlist la = {0}, lb = {0};
    char *renamed = NULL;
    int rc = load_side(a, hist, &sa, err);
    if (rc == TR_OK)
        rc = load_side(b, hist, &sb, err);
    for (size_t i = 0; rc == TR_OK && i < sa.n; i++)
        items_of(&la, &sa.in[i]);
    for (size_t i = 0; rc == TR_OK && i < sb.n; i++)
        items_of(&lb, &sb.in[i]);
    if (rc == TR_OK && (la.oom || lb.oom))
        rc = tr_fail(err, TR_E_NOMEM, a, "out of memory");
    if (rc == TR_OK && la.n == 1 && lb.n == 1 && la.v[0].kind == lb.v[0].kind && strcmp(la.v[0].key, lb.v[0].key)) {
        char *k = tr_strdup(la.v[0].key);   /* two single results: compare them whatever their models are called */
        if (!k)
            rc = tr_fail(err, TR_E_NOMEM, a, "out of memory");
        else {
            renamed = lb.v[0].key;
            lb.v[0].key = k;
        }
    }
    if (rc == TR_OK) {
        if (la.n > 1)
            qsort(la.v, la.n, sizeof *la.v, cmp_item);
        if (lb.n > 1)
            qsort(lb.v, lb.n, sizeof *lb.v, cmp_item);
        dstate st = {.out = out};
        fprintf(out, "trellis report diff\n  A: %s (%zu result files)\n  B: %s (%zu result files)\n", a, sa.n, b,
                sb.n);
        if (renamed)
            fprintf(out, "  (one result on each side: compared although B's key is \"%s\")\n", renamed);
        walk(&st, &la, &lb);
        if (st.oom)
            rc = tr_fail(err, TR_E_NOMEM, b, "out of memory");
        fprintf(out, "diff: %u items compared, %u status changes (%u regressions), %u metric changes beyond 2σ "
                     "(marked !), %u only in A, %u only in B\n", st.compared, st.status_changes, st.regressions,
                st.significant, st.only_a, st.only_b);
        *regressed = (int)st.regressions;
    }
    tr_dealloc(renamed);
    dl_free(&la);
    dl_free(&lb);
    rpt_set_free(&sa);
    rpt_set_free(&sb);
    return rc;
}
