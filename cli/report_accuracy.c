/*
 * report_accuracy.c — the report's accuracy sections: quantized models (bits per weight), perplexity, two-pass KL
 * divergence against the float original, the trellis.study/1 sweep, and their gnuplot plots (KLD distribution from
 * the stored percentiles, PPL and KLD against bits per weight).
 */
#include "report.h"
#include "trellis/alloc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Percentile keys of trellis.kld/1 "kld", lowest first, with their positions in percent. */
static const char *const kq_key[] = {"min", "p0_1", "p1", "p5", "p10", "median", "p90", "p95", "p99", "p99_9", "max"};
static const char *const kq_label[] = {"min", "0.1", "1", "5", "10", "50", "90", "95", "99", "99.9", "max"};
#define KQ 11

int rpt_model_bpw(const rpt_set *s, const char *model, double *bpw, const char **spec, const char **rotation)
{
    char a[256], b[256];
    rj_base(model, a, sizeof a);
    for (size_t i = s->n; i-- > 0;) {
        const json_t *d = s->in[i].doc;
        if (s->in[i].kind != RPT_QUANTIZE || strcmp(rj_base(rj_str(d, "out"), b, sizeof b), a))
            continue;
        *bpw = rj_get(d, "average_bpw");
        *spec = rj_str(d, "bits");
        *rotation = rj_str(d, "rotation");
        return 1;
    }
    return 0;
}

/* ---- tables ------------------------------------------------------------------------------------------------------ */

static void quantize_table(rpt_report *r)
{
    static const char *const head[] = {"model", "source", "bits spec", "rotation", "tensors", "weights",
                                       "average bpw", "worst tensor MSE"};
    rpt_table *t = NULL;
    char a[256], b[256];
    for (size_t i = 0; i < r->set->n; i++) {
        if (r->set->in[i].kind != RPT_QUANTIZE)
            continue;
        const json_t *d = r->set->in[i].doc, *ts = json_object_get(d, "tensors"), *worst = NULL;
        for (size_t k = 0; k < json_array_size(ts); k++) {
            const json_t *x = json_array_get(ts, k);
            if (!worst || rj_get(x, "mse") > rj_get(worst, "mse"))
                worst = x;
        }
        if (!t)
            t = rpt_table_new(r, RPT_S_ACCURACY, "table-quantize", "Quantized models", 8, head);
        rpt_cell(r, t, rj_base(rj_str(d, "out"), a, sizeof a));
        rpt_cell(r, t, rj_str(d, "source") ? rj_base(rj_str(d, "source"), b, sizeof b) : "—");
        rpt_cell(r, t, rj_str(d, "bits"));
        rpt_cell(r, t, rj_str(d, "rotation") ? rj_str(d, "rotation") : "—");
        rpt_cellf(r, t, "%zu", json_array_size(ts));
        rpt_cell(r, t, rf_int(rj_get(d, "quantized_weights")));
        rpt_cell(r, t, rf_fix(rj_get(d, "average_bpw"), 3));
        if (worst)
            rpt_cellf(r, t, "%s (%s)", rf_num(rj_get(worst, "mse"), 3), rj_str(worst, "name"));
        else
            rpt_cell(r, t, "—");
    }
}

static void bpw_cells(rpt_report *r, rpt_table *t, const char *model)
{
    double bpw;
    const char *spec, *rot;
    if (rpt_model_bpw(r->set, model, &bpw, &spec, &rot)) {
        rpt_cell(r, t, spec);
        rpt_cell(r, t, rf_fix(bpw, 3));
    } else {
        rpt_cell(r, t, "float");
        rpt_cell(r, t, "—");
    }
}

static void perplexity_table(rpt_report *r)
{
    static const char *const head[] = {"model", "bits spec", "bpw", "protocol", "ctx", "scored tokens", "PPL ± σ"};
    rpt_table *t = NULL;
    char a[256];
    for (size_t i = 0; i < r->set->n; i++) {
        if (r->set->in[i].kind != RPT_PERPLEXITY)
            continue;
        const json_t *d = r->set->in[i].doc;
        if (!t)
            t = rpt_table_new(r, RPT_S_ACCURACY, "table-perplexity", "Perplexity", 7, head);
        rpt_cell(r, t, rj_base(rj_str(d, "model"), a, sizeof a));
        bpw_cells(r, t, rj_str(d, "model"));
        rpt_cell(r, t, rj_str(d, "protocol") ? rj_str(d, "protocol") : "—");
        rpt_cell(r, t, rf_int(rj_get(d, "ctx")));
        rpt_cell(r, t, rf_int(rj_get(d, "n_scored")));
        rpt_cell(r, t, rf_pm(rj_get(d, "ppl"), rj_get(d, "ppl_unc")));
        rb_printf(&r->summary, "perplexity %-40s PPL %s\n", a, rf_pm(rj_get(d, "ppl"), rj_get(d, "ppl_unc")));
    }
    rpt_note(r, t, "σ: standard error of the mean NLL over the scored tokens, propagated to PPL.");
}

static void kld_row(rpt_report *r, rpt_table *t, const json_t *d)
{
    char a[256], b[256];
    const json_t *k = json_object_get(d, "kld"), *st = json_object_get(d, "same_top"), *dp = json_object_get(d,
                                                                                                            "delta_p");
    rpt_cell(r, t, rj_base(rj_str(d, "model"), a, sizeof a));
    rpt_cell(r, t, rj_str(d, "base_model") ? rj_base(rj_str(d, "base_model"), b, sizeof b) : "—");
    bpw_cells(r, t, rj_str(d, "model"));
    rpt_cell(r, t, rf_pm(rj_get(d, "ppl_q"), rj_get(d, "ppl_q_unc")));
    rpt_cell(r, t, rf_pm(rj_get(d, "ppl_base"), rj_get(d, "ppl_base_unc")));
    rpt_cell(r, t, rf_pm(rj_get(d, "ppl_ratio"), rj_get(d, "ppl_ratio_unc")));
    rpt_cell(r, t, rf_pm(rj_get(k, "mean"), rj_get(k, "mean_unc")));
    rpt_cell(r, t, rf_num(rj_get(k, "p99"), 3));
    rpt_cell(r, t, rf_pct(rj_get(st, "rate"), rj_get(st, "rate_unc")));
    rpt_cell(r, t, rf_pct(rj_get(dp, "rms"), rj_get(dp, "rms_unc")));
    rpt_cell(r, t, json_is_true(json_object_get(d, "exact")) ? "yes" : "top-K");
    rb_printf(&r->summary, "kld        %-40s KLD %s, same top %s, PPL %s (base %s)\n", a,
              rf_pm(rj_get(k, "mean"), rj_get(k, "mean_unc")), rf_pct(rj_get(st, "rate"), rj_get(st, "rate_unc")),
              rf_pm(rj_get(d, "ppl_q"), rj_get(d, "ppl_q_unc")), rf_pm(rj_get(d, "ppl_base"), rj_get(d,
                                                                                                "ppl_base_unc")));
}

static void kld_table(rpt_report *r)
{
    static const char *const head[] = {"model", "base", "bits spec", "bpw", "PPL(Q) ± σ", "PPL(base) ± σ",
                                       "PPL ratio ± σ", "mean KLD ± σ", "KLD p99", "same top", "RMS Δp", "exact"};
    rpt_table *t = NULL;
    for (size_t i = 0; i < r->set->n; i++) {
        if (r->set->in[i].kind != RPT_KLD)
            continue;
        if (!t)
            t = rpt_table_new(r, RPT_S_ACCURACY, "table-kld", "KL divergence against the float original", 12, head);
        kld_row(r, t, r->set->in[i].doc);
    }
    rpt_note(r, t, "Two-pass KLD (ENGINE.md §6) per scored token; same top = both models' most likely token agree; "
                   "Δp = change of the target token's probability.  exact: every logit stored (K = V).");
}

static void study_row(rpt_report *r, rpt_table *t, const json_t *e)
{
    const json_t *k = json_object_get(e, "kld"), *st = json_object_get(e, "same_top");
    int ok = !strcmp(rj_str(e, "status"), "ok");
    rpt_cell(r, t, rj_str(e, "model"));
    rpt_cell(r, t, rj_str(e, "spec"));
    rpt_cell(r, t, rj_str(e, "rotation"));
    rpt_cell(r, t, ok ? "ok" : rj_str(e, "reason") ? rj_str(e, "reason") : rj_str(e, "status"));
    rpt_cell(r, t, rf_fix(rj_get(e, "average_bpw"), 3));
    rpt_cell(r, t, rf_fix(rj_get(e, "effective_bpw"), 3));
    rpt_cell(r, t, rf_pm(rj_get(e, "ppl"), rj_get(e, "ppl_unc")));
    rpt_cell(r, t, rf_pm(rj_get(e, "ppl_float"), rj_get(e, "ppl_float_unc")));
    rpt_cell(r, t, rf_pm(rj_get(k, "mean"), rj_get(k, "mean_unc")));
    if (ok)
        rpt_cellf(r, t, "[%s, %s]", rf_num(rj_get(k, "ci95_lo"), 3), rf_num(rj_get(k, "ci95_hi"), 3));
    else
        rpt_cell(r, t, "—");
    rpt_cell(r, t, rf_pct(rj_get(st, "rate"), rj_get(st, "rate_unc")));
    rpt_cell(r, t, rf_pct(rj_get(e, "rms_dp"), rj_get(e, "rms_dp_unc")));
}

static void study_table(rpt_report *r, const json_t *d, const char *path)
{
    static const char *const head[] = {"model", "bits spec", "rotation", "status", "average bpw", "effective bpw",
                                       "PPL ± σ", "PPL float ± σ", "mean KLD ± σ", "KLD 95% CI", "same top",
                                       "RMS Δp"};
    rpt_table *t = rpt_table_new(r, RPT_S_STUDY, "table-study", "Accuracy study", 12, head);
    const json_t *es = json_object_get(d, "entries"), *bs = json_object_get(d, "bootstrap");
    size_t ok = 0;
    for (size_t i = 0; i < json_array_size(es); i++) {
        study_row(r, t, json_array_get(es, i));
        ok += !strcmp(rj_str(json_array_get(es, i), "status"), "ok");
    }
    rpt_note(r, t, "%s: text %s, ctx %s; KLD 95%% CI: %s bootstrap over %s, %s resamples, %s seed %s.", path,
             rj_str(d, "text") ? rj_str(d, "text") : "—", rf_int(rj_get(d, "ctx")),
             rj_str(bs, "method") ? rj_str(bs, "method") : "—", rj_str(bs, "unit") ? rj_str(bs, "unit") : "—",
             rf_int(rj_get(bs, "resamples")), rj_str(bs, "rng") ? rj_str(bs, "rng") : "—",
             rf_int(rj_get(bs, "seed")));
    rb_printf(&r->summary, "study      %zu of %zu (model, spec, rotation) entries evaluated\n", ok,
              json_array_size(es));
}

/* ---- plots ------------------------------------------------------------------------------------------------------- */

typedef struct pt {
    double x, y, lo, hi;
} pt;

typedef struct series {
    char label[160];
    pt *p;
    size_t n, cap;
    double ref;                       /* the float model's value, RPT_NONE if unknown */
} series;

typedef struct series_set {
    series *s;
    size_t n, cap;
} series_set;

static series *series_get(rpt_report *r, series_set *ss, const char *label)
{
    for (size_t i = 0; i < ss->n; i++)
        if (!strcmp(ss->s[i].label, label))
            return &ss->s[i];
    if (ss->n == ss->cap) {
        size_t cap = ss->cap ? 2 * ss->cap : 8;
        series *ns = tr_realloc(ss->s, cap * sizeof *ns);
        if (!ns)
            return r->oom = 1, NULL;
        ss->s = ns;
        ss->cap = cap;
    }
    series *s = &ss->s[ss->n++];
    memset(s, 0, sizeof *s);
    snprintf(s->label, sizeof s->label, "%s", label);
    s->ref = RPT_NONE;
    return s;
}

static void series_add(rpt_report *r, series *s, pt p)
{
    if (!s || !isfinite(p.x) || !isfinite(p.y))
        return;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 8;
        pt *np = tr_realloc(s->p, cap * sizeof *np);
        if (!np) {
            r->oom = 1;
            return;
        }
        s->p = np;
        s->cap = cap;
    }
    s->p[s->n++] = p;
}

static int cmp_pt(const void *a, const void *b)
{
    const pt *x = a, *y = b;
    return x->x < y->x ? -1 : x->x > y->x;
}

static void series_free(series_set *ss)
{
    for (size_t i = 0; i < ss->n; i++)
        tr_dealloc(ss->s[i].p);
    tr_dealloc(ss->s);
    memset(ss, 0, sizeof *ss);
}

/* A log y axis when the values span more than a factor of 20 (else log tics would show no label). */
static int log_axis(const series_set *ss)
{
    double lo = INFINITY, hi = 0;
    for (size_t i = 0; i < ss->n; i++) {
        for (size_t k = 0; k < ss->s[i].n; k++) {
            lo = fmin(lo, ss->s[i].p[k].y);
            hi = fmax(hi, ss->s[i].p[k].y);
        }
        if (isfinite(ss->s[i].ref)) {
            lo = fmin(lo, ss->s[i].ref);
            hi = fmax(hi, ss->s[i].ref);
        }
    }
    return lo > 0 && hi / lo > 20;
}

/* One plot of value against bits per weight: points with error bars per series, the float value dashed. */
static void bpw_plot(rpt_report *r, rpt_section sec, series_set *ss, const char *id, const char *title,
                     const char *ylabel, const char *caption)
{
    size_t pts = 0;
    for (size_t i = 0; i < ss->n; i++)
        pts += ss->s[i].n;
    if (!pts)
        return;
    rpt_plot *p = rpt_plot_new(r, sec, id, title, 820, 480 + 16 * (int)(ss->n / 2));
    if (!p)
        return;
    rpt_buf *b = &p->script;
    for (size_t i = 0; i < ss->n; i++) {
        series *s = &ss->s[i];
        qsort(s->p, s->n, sizeof *s->p, cmp_pt);
        rb_printf(b, "$s%zu << EOD\n", i);
        for (size_t k = 0; k < s->n; k++)
            rb_printf(b, "%.9g %.9g %.9g %.9g\n", s->p[k].x, s->p[k].y, s->p[k].lo, s->p[k].hi);
        rb_puts(b, "EOD\n");
    }
    int logy = log_axis(ss);
    rb_printf(b, "set xlabel 'average bits per weight'\nset ylabel '");
    rb_gp(b, ylabel);
    rb_printf(b, "%s'\nset key below\nset grid\nset xrange [1.5:8.5]\nset xtics 1\n%sset format y '%%g'\n"
                 "set autoscale yfix\nset offsets 0, 0, graph 0.08, graph 0.08\nset pointsize 1.2\nplot ",
              logy ? " (log scale)" : "", logy ? "set logscale y\n" : "");
    for (size_t i = 0; i < ss->n; i++) {
        rb_printf(b, "%s$s%zu using 1:2:3:4 with yerrorlines lw 2 lc %zu pt %zu title '", i ? ", " : "", i, i + 1,
                  5 + 2 * i % 8);
        rb_gp(b, ss->s[i].label);
        rb_puts(b, "'");
        if (isfinite(ss->s[i].ref) && ss->s[i].ref > 0) {
            rb_printf(b, ", %.9g with lines dt 2 lw 1.5 lc %zu title '", ss->s[i].ref, i + 1);
            rb_gp(b, ss->s[i].label);
            rb_puts(b, " float'");
        }
    }
    rb_puts(b, "\n");
    rpt_caption(r, p, "%s", caption);
}

static double positive(double v) { return v > 1e-12 ? v : 1e-12; }

/* Points of the study's ok entries, one series per (model, rotation). */
static void study_points(rpt_report *r, const json_t *d, series_set *ppl, series_set *kld)
{
    const json_t *es = json_object_get(d, "entries");
    for (size_t i = 0; i < json_array_size(es); i++) {
        const json_t *e = json_array_get(es, i), *k = json_object_get(e, "kld");
        if (strcmp(rj_str(e, "status"), "ok"))
            continue;
        char label[160];
        snprintf(label, sizeof label, "%s (%s)", rj_str(e, "model"), rj_str(e, "rotation"));
        double x = rj_get(e, "average_bpw"), y = rj_get(e, "ppl"), u = rj_get(e, "ppl_unc");
        series *s = series_get(r, ppl, label);
        series_add(r, s, (pt){x, y, positive(y - u), y + u});
        if (s)
            s->ref = rj_get(e, "ppl_float");
        y = rj_get(k, "mean");
        series_add(r, series_get(r, kld, label), (pt){x, positive(y), positive(rj_get(k, "ci95_lo")),
                                                      positive(rj_get(k, "ci95_hi"))});
    }
}

/* Without a study: the kld results of quantized models whose bpw a quantize result gives, per base model. */
static void kld_points(rpt_report *r, series_set *ppl, series_set *kld)
{
    char label[256];
    for (size_t i = 0; i < r->set->n; i++) {
        const json_t *d = r->set->in[i].doc, *k = json_object_get(d, "kld");
        double x;
        const char *spec, *rot;
        if (r->set->in[i].kind != RPT_KLD || !rpt_model_bpw(r->set, rj_str(d, "model"), &x, &spec, &rot))
            continue;
        rj_base(rj_str(d, "base_model") ? rj_str(d, "base_model") : "base", label, sizeof label);
        double y = rj_get(d, "ppl_q"), u = rj_get(d, "ppl_q_unc");
        series *s = series_get(r, ppl, label);
        series_add(r, s, (pt){x, y, positive(y - u), y + u});
        if (s)
            s->ref = rj_get(d, "ppl_base");
        y = rj_get(k, "mean");
        u = rj_get(k, "mean_unc");
        series_add(r, series_get(r, kld, label), (pt){x, positive(y), positive(y - u), positive(y + u)});
    }
}

static void bpw_plots(rpt_report *r, const json_t *study)
{
    series_set ppl = {0}, kld = {0};
    if (study)
        study_points(r, study, &ppl, &kld);
    else
        kld_points(r, &ppl, &kld);
    const char *src = study ? "the accuracy study (trellis study)" : "the KLD results matched with their quantize "
                                                                      "results";
    char cap[512];
    snprintf(cap, sizeof cap, "Perplexity of each quantized model against its average bits per weight (error bars "
             "± σ); dashed: the float model. From %s.", src);
    rpt_section sec = study ? RPT_S_STUDY : RPT_S_ACCURACY;
    bpw_plot(r, sec, &ppl, "plot-ppl-bpw", "Perplexity vs bits per weight", "perplexity", cap);
    snprintf(cap, sizeof cap, "Mean KL divergence to the float model against average bits per weight (error "
             "bars: %s). From %s.", study ? "bootstrap 95% CI" : "± σ", src);
    bpw_plot(r, sec, &kld, "plot-kld-bpw", "KL divergence vs bits per weight", "mean KLD (nats)", cap);
    series_free(&ppl);
    series_free(&kld);
}

/* The stored percentiles of one KLD block as a line over evenly spaced percentile labels. */
static void kld_dist_series(rpt_buf *b, size_t i, const json_t *k)
{
    rb_printf(b, "$k%zu << EOD\n", i);
    for (int q = 0; q < KQ; q++) {
        double v = rj_get(k, kq_key[q]);
        if (isfinite(v))
            rb_printf(b, "%d %.9g\n", q, positive(v));
    }
    rb_puts(b, "EOD\n");
}

static void kld_dist_plot(rpt_report *r, const json_t **blocks, char (*labels)[160], size_t n, const char *id,
                          rpt_section sec)
{
    if (!n)
        return;
    rpt_plot *p = rpt_plot_new(r, sec, id, "KL divergence distribution", 820, 480 + 16 * (int)(n / 2));
    if (!p)
        return;
    rpt_buf *b = &p->script;
    for (size_t i = 0; i < n; i++)
        kld_dist_series(b, i, blocks[i]);
    rb_puts(b, "set xtics (");
    for (int q = 0; q < KQ; q++)
        rb_printf(b, "%s'%s' %d", q ? ", " : "", kq_label[q], q);
    rb_puts(b, ")\nset xlabel 'percentile of per-token KLD'\nset ylabel 'KLD (nats)'\nset logscale y\nset format y '%g'\n"
               "set grid\nset key below\nset xrange [-0.3:10.3]\nplot ");
    for (size_t i = 0; i < n; i++) {
        rb_printf(b, "%s$k%zu using 1:2 with linespoints lw 2 pt %zu title '", i ? ", " : "", i, 5 + 2 * i % 8);
        rb_gp(b, labels[i]);
        rb_puts(b, "'");
    }
    rb_puts(b, "\n");
    rpt_caption(r, p, "Per-token KL divergence to the float model: the percentiles stored in the results (min, 0.1 … "
                      "99.9 %%, max; log scale; values below 1e-12 drawn at 1e-12).");
}

#define MAX_DIST 16

static void kld_dist_plots(rpt_report *r, const json_t *study)
{
    const json_t *blocks[MAX_DIST];
    char labels[MAX_DIST][160];
    size_t n = 0;
    for (size_t i = 0; i < r->set->n && n < MAX_DIST; i++)
        if (r->set->in[i].kind == RPT_KLD) {
            blocks[n] = json_object_get(r->set->in[i].doc, "kld");
            rj_base(rj_str(r->set->in[i].doc, "model"), labels[n++], 160);
        }
    kld_dist_plot(r, blocks, labels, n, "plot-kld-dist", RPT_S_ACCURACY);
    const json_t *es = json_object_get(study, "entries");
    n = 0;
    for (size_t i = 0; i < json_array_size(es) && n < MAX_DIST; i++) {
        const json_t *e = json_array_get(es, i);
        if (strcmp(rj_str(e, "status"), "ok"))
            continue;
        blocks[n] = json_object_get(e, "kld");
        snprintf(labels[n++], 160, "%s %s %s", rj_str(e, "model"), rj_str(e, "spec"), rj_str(e, "rotation"));
    }
    kld_dist_plot(r, blocks, labels, n, "plot-kld-dist-study", RPT_S_STUDY);
}

void rpt_build_accuracy(rpt_report *r)
{
    const json_t *study = NULL;
    quantize_table(r);
    perplexity_table(r);
    kld_table(r);
    for (size_t i = 0; i < r->set->n; i++)
        if (r->set->in[i].kind == RPT_STUDY) {
            study = r->set->in[i].doc;   /* the last one drives the plots */
            study_table(r, study, r->set->in[i].path);
        }
    kld_dist_plots(r, study);
    bpw_plots(r, study);
}
