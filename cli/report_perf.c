/*
 * report_perf.c — the report's performance sections: `trellis bench` decode and prefill timings (mean ± σ from the
 * samples with GSL, the type-7 percentiles the bench recorded), bench-kernels, and the MoE dispatch counters
 * (grouped hit rate, fallback reasons by bit-set signature, kernel selections), with their gnuplot plots.
 */
#include "report.h"
#include "trellis/alloc.h"

#include <gsl/gsl_sort.h>
#include <gsl/gsl_statistics_double.h>
#include <math.h>
#include <string.h>

/* Finite samples of o["samples_ms"] (tr_malloc'ed, *n of them); NULL when none (r->oom on allocation failure). */
static double *samples(rpt_report *r, const json_t *o, size_t *n)
{
    const json_t *a = json_object_get(o, "samples_ms");
    size_t m = json_array_size(a), k = 0;
    double *v = m ? tr_malloc(m * sizeof *v) : NULL;
    if (m && !v)
        r->oom = 1;
    for (size_t i = 0; v && i < m; i++) {
        double x;
        if (rj_num(json_array_get(a, i), &x) && isfinite(x))
            v[k++] = x;
    }
    *n = k;
    if (v && !k) {
        tr_dealloc(v);
        v = NULL;
    }
    return v;
}

/* Mean ± standard error of the samples (GSL); RPT_NONE when fewer than 2. */
static void mean_se(rpt_report *r, const json_t *o, double *mean, double *se)
{
    size_t n;
    double *v = samples(r, o, &n);
    *mean = *se = RPT_NONE;
    if (v && n >= 2) {
        *mean = gsl_stats_mean(v, 1, n);
        *se = gsl_stats_sd(v, 1, n) / sqrt((double)n);
    }
    tr_dealloc(v);
}

/* ---- tables ------------------------------------------------------------------------------------------------------ */

static void bench_row(rpt_report *r, rpt_table *t, const json_t *d)
{
    const json_t *dec = json_object_get(d, "decode"), *pre = json_object_get(d, "prefill"),
                 *mb = json_object_get(d, "mixed_bpw");
    double mean, se;
    mean_se(r, dec, &mean, &se);
    rpt_cell(r, t, rj_str(d, "model"));
    rpt_cell(r, t, rj_str(d, "backend") ? rj_str(d, "backend") : "—");
    rpt_cell(r, t, rj_str(d, "device") ? rj_str(d, "device") : "—");
    rpt_cell(r, t, isnan(mean) ? rf_num(rj_get(dec, "ms_per_token"), 4) : rf_pm(mean, se));
    rpt_cellf(r, t, "%s / %s / %s", rf_fix(rj_get(dec, "percentile_50_ms"), 3),
              rf_fix(rj_get(dec, "percentile_95_ms"), 3), rf_fix(rj_get(dec, "percentile_99_ms"), 3));
    rpt_cell(r, t, rf_fix(rj_get(dec, "tokens_per_second"), 1));
    rpt_cell(r, t, rf_int(rj_get(pre, "prompt_tokens")));
    rpt_cell(r, t, rf_fix(rj_get(pre, "percentile_50_ms"), 3));
    rpt_cell(r, t, rf_fix(rj_get(pre, "tokens_per_second"), 1));
    rpt_cellf(r, t, "%s / %s", rf_fix(rj_get(mb, "average_bpw"), 3), rf_fix(rj_get(mb, "effective_bpw"), 3));
    rb_printf(&r->summary, "bench      %-40s decode %s ms/token (%s tokens/s), p50/p95/p99 %s/%s/%s ms; prefill %s "
              "tokens %s ms\n", rj_str(d, "model"), rf_fix(rj_get(dec, "ms_per_token"), 3),
              rf_fix(rj_get(dec, "tokens_per_second"), 0), rf_fix(rj_get(dec, "percentile_50_ms"), 3),
              rf_fix(rj_get(dec, "percentile_95_ms"), 3), rf_fix(rj_get(dec, "percentile_99_ms"), 3),
              rf_int(rj_get(pre, "prompt_tokens")), rf_fix(rj_get(pre, "percentile_50_ms"), 3));
}

static void bench_table(rpt_report *r)
{
    static const char *const head[] = {"model", "backend", "device", "decode ms/token (mean ± σ)",
                                       "decode p50 / p95 / p99 ms", "decode tokens/s", "prefill tokens",
                                       "prefill ms (p50)", "prefill tokens/s", "average / effective bpw"};
    rpt_table *t = NULL;
    for (size_t i = 0; i < r->set->n; i++) {
        if (r->set->in[i].kind != RPT_BENCH)
            continue;
        if (!t)
            t = rpt_table_new(r, RPT_S_PERF, "table-bench", "Decode and prefill (trellis bench)", 10, head);
        bench_row(r, t, r->set->in[i].doc);
    }
    rpt_note(r, t, "σ: standard error of the mean step time (GSL, from the recorded samples); percentiles are "
                   "type 7 as recorded by the bench.");
}

static void kernels_table(rpt_report *r)
{
    static const char *const head[] = {"O", "I", "bits", "M", "simd", "threads", "median µs", "ref median µs",
                                       "speedup", "Gweights/s", "bitwise equal"};
    for (size_t i = 0; i < r->set->n; i++) {
        if (r->set->in[i].kind != RPT_BENCH_KERNELS)
            continue;
        const json_t *res = json_object_get(r->set->in[i].doc, "results");
        rpt_table *t = rpt_table_new(r, RPT_S_PERF, "table-bench-kernels", "Decode GEMV kernels (bench-kernels)",
                                     11, head);
        for (size_t k = 0; k < json_array_size(res); k++) {
            const json_t *x = json_array_get(res, k);
            static const char *const ints[] = {"O", "I", "bits", "M"};
            for (int j = 0; j < 4; j++)
                rpt_cell(r, t, rf_int(rj_get(x, ints[j])));
            rpt_cell(r, t, rj_str(x, "simd") ? rj_str(x, "simd") : "—");
            rpt_cell(r, t, rf_int(rj_get(x, "threads")));
            rpt_cell(r, t, rf_num(rj_get(x, "median_us"), 4));
            rpt_cell(r, t, rf_num(rj_get(x, "ref_median_us"), 4));
            rpt_cell(r, t, rf_fix(rj_get(x, "speedup"), 1));
            rpt_cell(r, t, rf_num(rj_get(x, "gweights_per_s"), 3));
            const json_t *eq = json_object_get(x, "bitwise_equal");
            rpt_cell(r, t, json_is_boolean(eq) ? (json_is_true(eq) ? "yes" : "NO") : "—");
        }
    }
}

/* ---- dispatch ---------------------------------------------------------------------------------------------------- */

static double hit_rate(const json_t *c)
{
    double att = rj_get(c, "grouped_attempts_total"), hit = rj_get(c, "grouped_hits_total");
    return att > 0 ? hit / att : RPT_NONE;
}

static void dispatch_row(rpt_report *r, rpt_table *t, const json_t *d)
{
    const json_t *c = json_object_get(d, "fallback_counters");
    static const char *const keys[] = {"grouping_calls_total", "grouping_host_primary_total",
                                       "grouping_gpu_primary_success_total", "grouping_cpu_fallback_total",
                                       "grouped_attempts_total", "grouped_hits_total"};
    rpt_cell(r, t, rj_str(d, "model"));
    for (int k = 0; k < 6; k++)
        rpt_cell(r, t, rf_int(rj_get(c, keys[k])));
    double h = hit_rate(c);
    rpt_cell(r, t, isnan(h) ? "n/a (no grouped attempts)" : rf_pct(h, 0));
    rpt_cell(r, t, rf_int(rj_get(c, "dispatch_calls_total")));
    rpt_cell(r, t, rf_int(rj_get(c, "kernel_fallback_total")));
    double errs = rj_get(c, "grouping_error_total") + rj_get(c, "dispatch_error_total");
    rpt_cell(r, t, rf_int(errs));
    rpt_cell(r, t, rf_int(rj_get(c, "nan_events_total")));
}

static void reasons_rows(rpt_report *r, rpt_table *t, const json_t *d, int *any)
{
    const json_t *fr = json_object_get(d, "fallback_reasons"), *codes = json_object_get(d, "fallback_reason_codes");
    const char *key;
    json_t *v;
    rpt_buf cb = {0};
    json_object_foreach((json_t *)codes, key, v) {
        double x;
        if (rj_num(v, &x) && x > 0)
            rb_printf(&cb, "%s%s: %.0f", cb.n ? ", " : "", key, x);
    }
    size_t rows = 0;
    json_object_foreach((json_t *)fr, key, v) {
        double x = 0;
        rj_num(v, &x);
        *any |= x > 0;
        rpt_cell(r, t, rj_str(d, "model"));
        rpt_cell(r, t, key);
        rpt_cell(r, t, rf_int(x));
        rpt_cell(r, t, cb.n ? rb_str(&cb) : "none");
        rows++;
    }
    if (!rows) {
        rpt_cell(r, t, rj_str(d, "model"));
        rpt_cell(r, t, "(no fallback recorded)");
        rpt_cell(r, t, "0");
        rpt_cell(r, t, cb.n ? rb_str(&cb) : "none");
    }
    r->oom |= cb.oom;
    rb_free(&cb);
}

static void kernel_rows(rpt_report *r, rpt_table *t, const json_t *d)
{
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(d, "kernel_dispatch_counts"), key, v) {
        double x = 0;
        rj_num(v, &x);
        rpt_cell(r, t, rj_str(d, "model"));
        rpt_cell(r, t, key);
        rpt_cell(r, t, rf_int(x));
    }
}

static void dispatch_tables(rpt_report *r, int *any_fallback, size_t *nbench)
{
    static const char *const head[] = {"model", "grouping calls", "host primary", "GPU primary ok", "CPU fallback",
                                       "grouped attempts", "grouped hits", "grouped hit rate", "dispatch calls",
                                       "kernel fallbacks", "errors", "NaN events"};
    static const char *const rhead[] = {"model", "bit-set signature", "fallbacks", "fallback reason codes"};
    static const char *const khead[] = {"model", "kernel", "selections"};
    rpt_table *t = NULL, *rt = NULL, *kt = NULL;
    for (size_t i = 0; i < r->set->n; i++) {
        if (r->set->in[i].kind != RPT_BENCH || !json_object_get(r->set->in[i].doc, "fallback_counters"))
            continue;
        if (!t) {
            t = rpt_table_new(r, RPT_S_DISPATCH, "table-dispatch", "MoE dispatch counters (MOE.md)", 12, head);
            rt = rpt_table_new(r, RPT_S_DISPATCH, "table-fallback-reasons", "Fallback reasons by bit-set signature",
                               4, rhead);
            kt = rpt_table_new(r, RPT_S_DISPATCH, "table-kernel-dispatch", "Kernel selections", 3, khead);
        }
        (*nbench)++;
        dispatch_row(r, t, r->set->in[i].doc);
        reasons_rows(r, rt, r->set->in[i].doc, any_fallback);
        kernel_rows(r, kt, r->set->in[i].doc);
    }
    if (kt && !rpt_rows(kt))
        rpt_note(r, kt, "no kernel selection recorded (float models dispatch no quantized MoE kernel).");
    if (t && !*any_fallback)
        rpt_note(r, rt, "all fallback counts are 0.");
}

/* ---- plots ------------------------------------------------------------------------------------------------------- */

static void latency_plot(rpt_report *r)
{
    rpt_plot *p = NULL;
    rpt_buf cmd = {0};
    size_t ns = 0;
    char label[256];
    for (size_t i = 0; i < r->set->n; i++) {
        size_t n;
        double *v = r->set->in[i].kind == RPT_BENCH ? samples(r, json_object_get(r->set->in[i].doc, "decode"), &n)
                                                    : NULL;
        if (!v)
            continue;
        if (!p && !(p = rpt_plot_new(r, RPT_S_PERF, "plot-latency", "Decode latency percentiles", 760, 420))) {
            tr_dealloc(v);
            break;
        }
        gsl_sort(v, 1, n);
        rb_printf(&p->script, "$l%zu << EOD\n", ns);
        for (size_t k = 0; k < n; k++)   /* type-7 position of sample k */
            rb_printf(&p->script, "%.6g %.9g\n", n > 1 ? 100.0 * (double)k / (double)(n - 1) : 50.0, v[k]);
        rb_puts(&p->script, "EOD\n");
        snprintf(label, sizeof label, "%s (%s)", rj_str(r->set->in[i].doc, "model"),
                 rj_str(r->set->in[i].doc, "backend") ? rj_str(r->set->in[i].doc, "backend") : "?");
        rb_printf(&cmd, "%s$l%zu using 1:2 with linespoints lw 2 pt 7 ps 0.6 title '", ns ? ", " : "", ns);
        rb_gp(&cmd, label);
        rb_printf(&cmd, "'");
        ns++;
        tr_dealloc(v);
    }
    if (p) {
        rb_puts(&p->script, "set xlabel 'percentile of decode steps'\nset ylabel 'ms per token (log scale)'\n"
                            "set logscale y\nset format y '%g'\nset grid\nset xrange [0:100]\nset xtics 10\n"
                            "set key below\n"
                            "set arrow from 50, graph 0 to 50, graph 1 nohead dt 3\n"
                            "set arrow from 95, graph 0 to 95, graph 1 nohead dt 3\n"
                            "set arrow from 99, graph 0 to 99, graph 1 nohead dt 3\nplot ");
        rb_puts(&p->script, rb_str(&cmd));
        rb_puts(&p->script, "\n");
        rpt_caption(r, p, "Each decode step's time, sorted (empirical quantile function, type 7); dotted lines at "
                          "the 50th, 95th and 99th percentiles.");
    }
    r->oom |= cmd.oom;
    rb_free(&cmd);
}

static void hit_rate_plot(rpt_report *r)
{
    rpt_plot *p = rpt_plot_new(r, RPT_S_DISPATCH, "plot-dispatch-hit-rate", "Grouped dispatch hit rate", 720, 420);
    if (!p)
        return;
    rpt_buf *b = &p->script;
    int any = 0;
    rb_puts(b, "$h << EOD\n");
    for (size_t i = 0; i < r->set->n; i++) {
        if (r->set->in[i].kind != RPT_BENCH)
            continue;
        double h = hit_rate(json_object_get(r->set->in[i].doc, "fallback_counters"));
        any |= !isnan(h);
        rb_printf(b, "\"%s\" %.6g\n", rj_str(r->set->in[i].doc, "model"), isnan(h) ? 0.0 : 100 * h);
    }
    rb_puts(b, "EOD\nset style data histograms\nset style fill solid 0.8 border -1\nset boxwidth 0.6\n"
               "set yrange [0:105]\nset ylabel 'grouped hits / attempts (%)'\nset grid ytics\nset key off\n"
               "set xtics rotate by -25 left scale 0 font ',9'\nset bmargin 9\n");
    if (!any)
        rb_puts(b, "set label 1 'no grouped attempts recorded (hit rate undefined, drawn as 0)' at graph 0.5, "
                   "graph 0.55 center font ',13'\n");
    rb_puts(b, "plot $h using 2:xtic(1) linecolor rgb '#4a7ab5'\n");
    rpt_caption(r, p, any ? "Grouped MoE dispatch: hits / attempts per bench run (MOE.md counters)."
                          : "Grouped MoE dispatch: no grouped attempts were recorded by these runs (the cpu backend "
                            "groups on the host), so the hit rate is undefined and drawn as 0.");
}

static void reasons_plot(rpt_report *r, int any)
{
    rpt_plot *p = rpt_plot_new(r, RPT_S_DISPATCH, "plot-fallback-reasons", "Fallbacks by bit-set signature", 720,
                               420);
    if (!p)
        return;
    rpt_buf *b = &p->script;
    size_t rows = 0;
    rb_puts(b, "$f << EOD\n");
    for (size_t i = 0; i < r->set->n; i++) {
        const char *key;
        json_t *v;
        if (r->set->in[i].kind != RPT_BENCH)
            continue;
        json_object_foreach(json_object_get(r->set->in[i].doc, "fallback_reasons"), key, v) {
            double x = 0;
            rj_num(v, &x);
            rb_printf(b, "\"%s %s\" %.0f\n", rj_str(r->set->in[i].doc, "model"), key, x);
            rows++;
        }
    }
    if (!rows)
        rb_puts(b, "\"(no fallback)\" 0\n");
    rb_printf(b, "EOD\nset style data histograms\nset style fill solid 0.8 border -1\nset boxwidth 0.6\n"
                 "set yrange [0:%s]\nset ylabel 'fallbacks'\nset grid ytics\nset key off\n"
                 "set xtics rotate by -25 left scale 0 font ',9'\nset bmargin 9\n", any ? "*" : "1");
    if (!any)
        rb_puts(b, "set label 1 'all fallback counts are 0' at graph 0.5, graph 0.55 center font ',13'\n");
    rb_puts(b, "plot $f using 2:xtic(1) linecolor rgb '#b5574a'\n");
    rpt_caption(r, p, any ? "Kernel fallbacks per bit-set signature (the sorted distinct widths of the experts in a "
                            "fallen-back dispatch)."
                          : "Kernel fallbacks per bit-set signature: all counts are 0 (no dispatch fell back).");
}

void rpt_build_perf(rpt_report *r)
{
    int any_fallback = 0;
    size_t nbench = 0;
    bench_table(r);
    kernels_table(r);
    latency_plot(r);
    dispatch_tables(r, &any_fallback, &nbench);
    if (nbench) {
        hit_rate_plot(r);
        reasons_plot(r, any_fallback);
    }
}
