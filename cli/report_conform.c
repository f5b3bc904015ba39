/*
 * report_conform.c — the report's inputs table and its correctness sections: conformance status counts per backend
 * and op family with the worst bound ratio and max ULP, the failing cases with their replay commands, the ULP and
 * bound-ratio histograms per op family (gnuplot), golden fixtures, the HF oracle checks and the kernel symbols.
 */
#include "report.h"
#include "trellis/alloc.h"
#include "trellis/registry.h"

#include <math.h>
#include <string.h>

#define MAX_FAIL_ROWS 50

/* ---- inputs ------------------------------------------------------------------------------------------------------ */

void rpt_build_inputs(rpt_report *r)
{
    static const char *const head[] = {"file", "schema", "git commit", "tool version", "started"};
    rpt_table *t = rpt_table_new(r, RPT_S_INPUTS, "table-inputs", "Result files", 5, head);
    for (size_t i = 0; i < r->set->n; i++) {
        const json_t *d = r->set->in[i].doc;
        rpt_cell(r, t, r->set->in[i].path);
        rpt_cell(r, t, rpt_kind_schema(r->set->in[i].kind));
        rpt_cell(r, t, rj_str(d, "git_commit") ? rj_str(d, "git_commit") : "—");
        rpt_cell(r, t, rj_str(d, "tool_version") ? rj_str(d, "tool_version") : "—");
        rpt_cell(r, t, rj_str(d, "started") ? rj_str(d, "started") : "—");
    }
}

/* ---- conformance aggregation ------------------------------------------------------------------------------------- */

#define ULP_BINS 7
#define RATIO_BINS 7
static const char *const ulp_bin_names[ULP_BINS] = {"0", "1", "2-3", "4-15", "16-255", ">=256", "n/a"};
static const char *const ratio_bin_names[RATIO_BINS] = {"0", "(0, 0.01]", "(0.01, 0.1]", "(0.1, 0.5]",
                                                        "(0.5, 1]", "> 1", "n/a"};

typedef struct family {
    const char *backend, *op;          /* borrowed from the documents */
    unsigned count[TR_VERDICT_COUNT], total;
    double worst_ratio, max_ulp;       /* RPT_NONE until a finite value is seen */
    unsigned ulp_bins[ULP_BINS], ratio_bins[RATIO_BINS];
} family;

typedef struct families {
    family *f;
    size_t n, cap;
} families;

static int ulp_bin(double u)
{
    if (isnan(u))
        return 6;
    return u <= 0 ? 0 : u <= 1 ? 1 : u < 4 ? 2 : u < 16 ? 3 : u < 256 ? 4 : 5;
}

static int ratio_bin(double x)
{
    if (isnan(x))
        return 6;
    return x <= 0 ? 0 : x <= 0.01 ? 1 : x <= 0.1 ? 2 : x <= 0.5 ? 3 : x <= 1 ? 4 : 5;
}

static family *family_get(rpt_report *r, families *fs, const char *backend, const char *op)
{
    for (size_t i = 0; i < fs->n; i++)
        if (!strcmp(fs->f[i].backend, backend) && !strcmp(fs->f[i].op, op))
            return &fs->f[i];
    if (fs->n == fs->cap) {
        size_t cap = fs->cap ? 2 * fs->cap : 32;
        family *nf = tr_realloc(fs->f, cap * sizeof *nf);
        if (!nf) {
            r->oom = 1;
            return NULL;
        }
        fs->f = nf;
        fs->cap = cap;
    }
    family *f = &fs->f[fs->n++];
    memset(f, 0, sizeof *f);
    f->backend = backend;
    f->op = op;
    f->worst_ratio = f->max_ulp = RPT_NONE;
    return f;
}

static void family_add(family *f, const json_t *res)
{
    tr_verdict v;
    if (tr_verdict_parse(rj_str(res, "status"), &v) == 0)
        f->count[v]++;
    f->total++;
    double ratio = rj_get(res, "bound_ratio"), ulp = rj_get(res, "max_ulp");
    if (!isnan(ratio) && (isnan(f->worst_ratio) || ratio > f->worst_ratio))
        f->worst_ratio = ratio;
    if (!isnan(ulp) && (isnan(f->max_ulp) || ulp > f->max_ulp))
        f->max_ulp = ulp;
    f->ulp_bins[ulp_bin(ulp)]++;
    f->ratio_bins[ratio_bin(ratio)]++;
}

static int cmp_family(const void *a, const void *b)
{
    const family *x = a, *y = b;
    int c = strcmp(x->backend, y->backend);
    return c ? c : strcmp(x->op, y->op);
}

/* Is this status a failure of the run (with --strict, PRECISION_WARNING too)? */
static int is_failure(tr_verdict v, int strict)
{
    return v == TR_FAIL || v == TR_CRASH || v == TR_TIMEOUT || (strict && v == TR_PRECISION_WARNING);
}

static void collect(rpt_report *r, families *fs)
{
    for (size_t i = 0; i < r->set->n; i++) {
        if (r->set->in[i].kind != RPT_CONFORMANCE)
            continue;
        const json_t *d = r->set->in[i].doc, *res = json_object_get(d, "results");
        for (size_t k = 0; k < json_array_size(res); k++) {
            family *f = family_get(r, fs, rj_str(d, "backend"), rj_str(json_array_get(res, k), "op"));
            if (f)
                family_add(f, json_array_get(res, k));
        }
    }
    if (fs->n > 1)
        qsort(fs->f, fs->n, sizeof *fs->f, cmp_family);
}

/* ---- conformance tables ------------------------------------------------------------------------------------------ */

static void family_row(rpt_report *r, rpt_table *t, const family *f, const char *op)
{
    rpt_cell(r, t, f->backend);
    rpt_cell(r, t, op);
    rpt_cellf(r, t, "%u", f->total);
    for (int v = 0; v < TR_VERDICT_COUNT; v++)
        rpt_cellf(r, t, "%u", f->count[v]);
    rpt_cell(r, t, rf_num(f->worst_ratio, 3));
    rpt_cell(r, t, rf_num(f->max_ulp, 6));
}

static void merge_into(family *all, const family *f)
{
    for (int v = 0; v < TR_VERDICT_COUNT; v++)
        all->count[v] += f->count[v];
    all->total += f->total;
    if (!isnan(f->worst_ratio) && (isnan(all->worst_ratio) || f->worst_ratio > all->worst_ratio))
        all->worst_ratio = f->worst_ratio;
    if (!isnan(f->max_ulp) && (isnan(all->max_ulp) || f->max_ulp > all->max_ulp))
        all->max_ulp = f->max_ulp;
}

static void summary_line(rpt_report *r, const family *all)
{
    rb_printf(&r->summary, "conformance %-8s %u cases:", all->backend, all->total);
    for (int v = 0; v < TR_VERDICT_COUNT; v++)
        rb_printf(&r->summary, " %u %s%s", all->count[v], tr_verdict_name((tr_verdict)v),
                  v + 1 < TR_VERDICT_COUNT ? "," : "");
    rb_printf(&r->summary, "; worst bound ratio %s, max ULP %s\n", rf_num(all->worst_ratio, 3),
              rf_num(all->max_ulp, 6));
}

static void counts_table(rpt_report *r, const families *fs)
{
    static const char *const head[] = {"backend", "op family", "cases", "PASS", "FAIL", "PRECISION_WARNING",
                                       "UNSUPPORTED", "RESOURCE_ERROR", "CRASH", "TIMEOUT", "worst bound ratio",
                                       "max ULP"};
    rpt_table *t = rpt_table_new(r, RPT_S_CONFORM, "table-conformance", "Status per backend and op family", 12,
                                 head);
    for (size_t i = 0; i < fs->n;) {
        family all = fs->f[i];
        all.op = "all";
        family_row(r, t, &fs->f[i], fs->f[i].op);
        size_t j = i + 1;
        for (; j < fs->n && !strcmp(fs->f[j].backend, fs->f[i].backend); j++) {
            family_row(r, t, &fs->f[j], fs->f[j].op);
            merge_into(&all, &fs->f[j]);
        }
        family_row(r, t, &all, "(all)");
        summary_line(r, &all);
        i = j;
    }
    rpt_note(r, t, "bound ratio = measured error / the op's bound (KERNELS.md §2.4; > 1 fails); max ULP over the "
                   "case's outputs; — where the op has no float output.");
}

static void failure_row(rpt_report *r, rpt_table *t, const json_t *d, const json_t *res)
{
    rpt_cell(r, t, rj_str(d, "backend"));
    rpt_cell(r, t, rj_str(res, "case"));
    rpt_cell(r, t, rj_str(res, "status"));
    rpt_cell(r, t, rf_num(rj_get(res, "bound_ratio"), 3));
    rpt_cell(r, t, rf_num(rj_get(res, "max_ulp"), 6));
    rpt_cell(r, t, rj_str(res, "detail") ? rj_str(res, "detail") : "");
    rpt_cell(r, t, rj_str(res, "replay") ? rj_str(res, "replay") : "");
}

static void failures_table(rpt_report *r)
{
    static const char *const head[] = {"backend", "case", "status", "bound ratio", "max ULP", "detail", "replay"};
    rpt_table *t = NULL;
    size_t shown = 0, total = 0;
    for (size_t i = 0; i < r->set->n; i++) {
        if (r->set->in[i].kind != RPT_CONFORMANCE)
            continue;
        const json_t *d = r->set->in[i].doc, *res = json_object_get(d, "results");
        int strict = json_is_true(json_object_get(d, "strict"));
        for (size_t k = 0; k < json_array_size(res); k++) {
            tr_verdict v;
            const json_t *x = json_array_get(res, k);
            if (tr_verdict_parse(rj_str(x, "status"), &v) || (!is_failure(v, strict) && v != TR_PRECISION_WARNING))
                continue;
            total++;
            if (!t)
                t = rpt_table_new(r, RPT_S_CONFORM, "table-conformance-failures",
                                  "Failing and precision-warning cases", 7, head);
            if (shown++ < MAX_FAIL_ROWS)
                failure_row(r, t, d, x);
        }
    }
    if (t && total > MAX_FAIL_ROWS)
        rpt_note(r, t, "%zu more not shown; see the result files.", total - MAX_FAIL_ROWS);
}

/* ---- histograms -------------------------------------------------------------------------------------------------- */

static void histogram(rpt_report *r, const families *fs, size_t from, size_t to, int ulp)
{
    char id[160], title[200];
    snprintf(id, sizeof id, "plot-%s-%s", ulp ? "ulp" : "bound-ratio", fs->f[from].backend);
    snprintf(title, sizeof title, "%s per op family, backend %s", ulp ? "Max ULP" : "Bound ratio",
             fs->f[from].backend);
    int width = 300 + 34 * (int)(to - from);
    rpt_plot *p = rpt_plot_new(r, RPT_S_CONFORM, id, title, width < 640 ? 640 : width > 1400 ? 1400 : width, 420);
    if (!p)
        return;
    rpt_buf *b = &p->script;
    rb_puts(b, "$d << EOD\n");
    for (size_t i = from; i < to; i++) {
        rb_printf(b, "\"%s\"", fs->f[i].op);
        for (int k = 0; k < (ulp ? ULP_BINS : RATIO_BINS); k++)
            rb_printf(b, " %u", ulp ? fs->f[i].ulp_bins[k] : fs->f[i].ratio_bins[k]);
        rb_puts(b, "\n");
    }
    rb_puts(b, "EOD\nset style data histograms\nset style histogram rowstacked\nset style fill solid 0.85 border "
               "rgb '#333333'\nset boxwidth 0.75\nset xtics rotate by -45 left scale 0 nomirror\nset key outside right "
               "top vertical title 'bin'\nset ylabel 'cases'\nset yrange [0:*]\nset grid ytics\n");
    rb_printf(b, "set title '%s'\nplot ", ulp ? "cases by max ULP (rowstacked)" : "cases by error / bound");
    for (int k = 0; k < (ulp ? ULP_BINS : RATIO_BINS); k++)
        rb_printf(b, "%s$d using %d%s title '%s'", k ? ", " : "", k + 2, k ? "" : ":xtic(1)",
                  ulp ? ulp_bin_names[k] : ratio_bin_names[k]);
    rb_puts(b, "\n");
    rpt_caption(r, p, ulp ? "Histogram of each case's max ULP distance to the reference, stacked per op family "
                            "(n/a: outputs that are not floating point)."
                          : "Histogram of each case's measured error divided by its bound (KERNELS.md §2.4), "
                            "stacked per op family; a ratio above 1 is a FAIL.");
}

static void golden_table(rpt_report *r);
static void oracle_table(rpt_report *r);
static void symbols_tables(rpt_report *r);

void rpt_build_conformance(rpt_report *r)
{
    families fs = {0};
    collect(r, &fs);
    if (fs.n) {
        counts_table(r, &fs);
        failures_table(r);
        for (size_t i = 0; i < fs.n;) {
            size_t j = i + 1;
            while (j < fs.n && !strcmp(fs.f[j].backend, fs.f[i].backend))
                j++;
            histogram(r, &fs, i, j, 1);
            histogram(r, &fs, i, j, 0);
            i = j;
        }
    }
    tr_dealloc(fs.f);
    golden_table(r);
    oracle_table(r);
    symbols_tables(r);
}

/* ---- golden fixtures --------------------------------------------------------------------------------------------- */

static void golden_table(rpt_report *r)
{
    static const char *const head[] = {"file", "fixtures", "PASS", "FAIL", "UNSUPPORTED", "ERROR", "not passing"};
    rpt_table *t = NULL;
    for (size_t i = 0; i < r->set->n; i++) {
        if (r->set->in[i].kind != RPT_GOLDEN_VERIFY)
            continue;
        const json_t *res = json_object_get(r->set->in[i].doc, "results");
        unsigned c[4] = {0};
        rpt_buf bad = {0};
        static const char *const st[4] = {"PASS", "FAIL", "UNSUPPORTED", "ERROR"};
        for (size_t k = 0; k < json_array_size(res); k++) {
            const char *s = rj_str(json_array_get(res, k), "status");
            for (int j = 0; j < 4; j++)
                c[j] += !strcmp(s, st[j]);
            if (strcmp(s, "PASS"))
                rb_printf(&bad, "%s%s (%s)", bad.n ? ", " : "", rj_str(json_array_get(res, k), "id"), s);
        }
        if (!t)
            t = rpt_table_new(r, RPT_S_GOLDEN, "table-golden", "Golden fixtures (golden verify)", 7, head);
        rpt_cell(r, t, r->set->in[i].path);
        rpt_cellf(r, t, "%zu", json_array_size(res));
        for (int j = 0; j < 4; j++)
            rpt_cellf(r, t, "%u", c[j]);
        rpt_cell(r, t, bad.n ? rb_str(&bad) : "none");
        r->oom |= bad.oom;
        rb_printf(&r->summary, "golden verify: %zu fixtures: %u PASS, %u FAIL, %u UNSUPPORTED, %u ERROR\n",
                  json_array_size(res), c[0], c[1], c[2], c[3]);
        rb_free(&bad);
    }
}

static void oracle_row(rpt_report *r, rpt_table *t, const json_t *x)
{
    const json_t *lg = json_object_get(x, "logits"), *hs = json_object_get(x, "hidden_states");
    rpt_cell(r, t, rj_str(x, "case"));
    rpt_cell(r, t, rj_str(x, "backend"));
    rpt_cell(r, t, json_is_true(json_object_get(x, "ok")) ? "PASS" : "FAIL");
    rpt_cellf(r, t, "%s / %s", rf_num(rj_get(lg, "max_abs"), 3), rf_num(rj_get(lg, "bound"), 3));
    rpt_cell(r, t, rf_num(rj_get(hs, "worst_ratio"), 3));
    rpt_cell(r, t, rf_int(rj_get2(x, "greedy", "first_diff")));
    rpt_cell(r, t, rf_num(rj_get2(x, "routes", "min_margin"), 3));
    rpt_cell(r, t, rj_str(x, "detail") ? rj_str(x, "detail") : "");
}

static void oracle_table(rpt_report *r)
{
    static const char *const head[] = {"case", "backend", "status", "logits max |Δ| / bound", "hidden worst ratio",
                                       "greedy first diff", "min route margin", "detail"};
    rpt_table *t = NULL;
    for (size_t i = 0; i < r->set->n; i++) {
        if (r->set->in[i].kind != RPT_ORACLE_VERIFY)
            continue;
        const json_t *res = json_object_get(r->set->in[i].doc, "results");
        unsigned pass = 0;
        if (!t)
            t = rpt_table_new(r, RPT_S_GOLDEN, "table-oracle", "HF oracle cases (golden verify --oracle)", 8, head);
        for (size_t k = 0; k < json_array_size(res); k++) {
            oracle_row(r, t, json_array_get(res, k));
            pass += json_is_true(json_object_get(json_array_get(res, k), "ok"));
        }
        rb_printf(&r->summary, "oracle: %u of %zu case x backend checks pass\n", pass, json_array_size(res));
    }
    rpt_note(r, t, "ENGINE.md §7 acceptance: logits and hidden states within 1e-4·max|oracle| + 1e-4, greedy "
                   "continuation identical (first diff —), prefill = decode.");
}

/* ---- symbols ----------------------------------------------------------------------------------------------------- */

static void symbols_tables(rpt_report *r)
{
    static const char *const head[] = {"metal dir", "present", "missing", "missing generic", "unreferenced",
                                       "unmapped"};
    static const char *const mhead[] = {"symbol", "status", "gated"};
    for (size_t i = 0; i < r->set->n; i++) {
        if (r->set->in[i].kind != RPT_SYMBOLS)
            continue;
        const json_t *d = r->set->in[i].doc, *sm = json_object_get(d, "summary"), *sy = json_object_get(d, "symbols");
        rpt_table *t = rpt_table_new(r, RPT_S_SYMBOLS, "table-symbols", "Kernel symbol inventory", 6, head);
        rpt_cell(r, t, rj_str(d, "metal_dir") ? rj_str(d, "metal_dir") : "—");
        static const char *const keys[] = {"present", "missing", "missing_generic", "unreferenced", "unmapped"};
        for (int k = 0; k < 5; k++)
            rpt_cell(r, t, rf_int(rj_get(sm, keys[k])));
        rpt_table *m = rpt_table_new(r, RPT_S_SYMBOLS, "table-symbols-missing",
                                     "Symbols other than present (missing: the policy needs them; unreferenced: "
                                     "defined, never returned by the policy; unmapped: no KERNELS.md record)",
                                     3, mhead);
        for (size_t k = 0; k < json_array_size(sy); k++) {
            const json_t *x = json_array_get(sy, k);
            if (!strcmp(rj_str(x, "status"), "present"))
                continue;
            rpt_cell(r, m, rj_str(x, "name"));
            rpt_cell(r, m, rj_str(x, "status"));
            rpt_cell(r, m, json_is_true(json_object_get(x, "gated")) ? "yes (optional)" : "no");
        }
        if (!rpt_rows(m))
            rpt_note(r, m, "every policy symbol is present.");
        rb_printf(&r->summary, "symbols: %s present, %s missing (%s generic)\n", rf_int(rj_get(sm, "present")),
                  rf_int(rj_get(sm, "missing")), rf_int(rj_get(sm, "missing_generic")));
    }
}
