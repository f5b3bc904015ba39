/*
 * report_junit.c — junit.xml for CI test tabs: <testsuites> with one <testsuite> per result file and one <testcase>
 * per check.  Conformance cases fail on FAIL, CRASH and TIMEOUT (and PRECISION_WARNING when the run was --strict)
 * and are skipped when UNSUPPORTED or RESOURCE_ERROR; golden fixtures, oracle cases, symbols, bench-kernels rows and
 * study entries are one testcase each; perplexity, KLD, quantize and bench results are checked for finite values,
 * non-finite records and dispatch errors.
 */
#include "report.h"
#include "trellis/fileio.h"
#include "trellis/registry.h"

#include <math.h>
#include <string.h>

enum { JC_PASS, JC_FAIL, JC_SKIP };

typedef struct suite {
    rpt_buf cases;
    unsigned tests, failures, skipped;
    double time;
} suite;

static void add_case(suite *s, const char *cls, const char *name, double secs, int kind, const char *msg,
                     const char *body)
{
    rpt_buf *b = &s->cases;
    s->tests++;
    if (isfinite(secs) && secs > 0)
        s->time += secs;
    rb_puts(b, "    <testcase classname=\"");
    rb_xml(b, cls);
    rb_puts(b, "\" name=\"");
    rb_xml(b, name);
    rb_printf(b, "\" time=\"%.6f\"", isfinite(secs) && secs > 0 ? secs : 0.0);
    if (kind == JC_PASS && !body) {
        rb_puts(b, "/>\n");
        return;
    }
    rb_puts(b, ">\n");
    if (kind != JC_PASS) {
        s->failures += kind == JC_FAIL;
        s->skipped += kind == JC_SKIP;
        rb_printf(b, "      <%s message=\"", kind == JC_FAIL ? "failure" : "skipped");
        rb_xml(b, msg);
        rb_puts(b, kind == JC_FAIL ? "\" type=\"failure\">" : "\">");
        rb_xml(b, body ? body : "");
        rb_printf(b, "</%s>\n", kind == JC_FAIL ? "failure" : "skipped");
    } else {
        rb_puts(b, "      <system-out>");
        rb_xml(b, body);
        rb_puts(b, "</system-out>\n");
    }
    rb_puts(b, "    </testcase>\n");
}

/* ---- per kind ---------------------------------------------------------------------------------------------------- */

static void conformance_cases(suite *s, const json_t *d)
{
    const json_t *res = json_object_get(d, "results");
    int strict = json_is_true(json_object_get(d, "strict"));
    char cls[256], msg[600];
    for (size_t i = 0; i < json_array_size(res); i++) {
        const json_t *x = json_array_get(res, i);
        tr_verdict v = TR_PASS;
        tr_verdict_parse(rj_str(x, "status"), &v);
        snprintf(cls, sizeof cls, "conformance.%s.%s", rj_str(d, "backend"), rj_str(x, "op"));
        snprintf(msg, sizeof msg, "%s: %s", rj_str(x, "status"), rj_str(x, "detail") ? rj_str(x, "detail") : "");
        int fail = v == TR_FAIL || v == TR_CRASH || v == TR_TIMEOUT || (strict && v == TR_PRECISION_WARNING);
        int kind = fail ? JC_FAIL : v == TR_UNSUPPORTED || v == TR_RESOURCE_ERROR ? JC_SKIP : JC_PASS;
        const char *body = kind != JC_PASS || v == TR_PRECISION_WARNING ? rj_str(x, "replay") : NULL;
        add_case(s, cls, rj_str(x, "case"), rj_get(x, "time_us") / 1e6, kind, msg,
                 v == TR_PRECISION_WARNING && !fail ? "PRECISION_WARNING (not strict)" : body);
    }
}

static void golden_cases(suite *s, const json_t *d)
{
    const json_t *res = json_object_get(d, "results");
    char msg[600];
    for (size_t i = 0; i < json_array_size(res); i++) {
        const json_t *x = json_array_get(res, i);
        const char *st = rj_str(x, "status");
        snprintf(msg, sizeof msg, "%s: %s", st, rj_str(x, "detail") ? rj_str(x, "detail") : "");
        int kind = !strcmp(st, "PASS") ? JC_PASS : !strcmp(st, "UNSUPPORTED") ? JC_SKIP : JC_FAIL;
        add_case(s, "golden", rj_str(x, "id"), 0, kind, msg, NULL);
    }
}

static void oracle_cases(suite *s, const json_t *d)
{
    const json_t *res = json_object_get(d, "results");
    char name[300];
    for (size_t i = 0; i < json_array_size(res); i++) {
        const json_t *x = json_array_get(res, i);
        snprintf(name, sizeof name, "%s/%s", rj_str(x, "case"), rj_str(x, "backend"));
        add_case(s, "oracle", name, 0, json_is_true(json_object_get(x, "ok")) ? JC_PASS : JC_FAIL,
                 rj_str(x, "detail") ? rj_str(x, "detail") : "oracle acceptance failed", NULL);
    }
}

static void symbol_cases(suite *s, const json_t *d)
{
    const json_t *sy = json_object_get(d, "symbols");
    for (size_t i = 0; i < json_array_size(sy); i++) {
        const json_t *x = json_array_get(sy, i);
        const char *st = rj_str(x, "status");
        int gated = json_is_true(json_object_get(x, "gated"));
        int kind = strcmp(st, "missing") ? JC_PASS : gated ? JC_SKIP : JC_FAIL;
        add_case(s, "symbols", rj_str(x, "name"), 0, kind, gated ? "missing (gated: optional)" : "missing", NULL);
    }
}

/* One testcase: fails with msg when bad. */
static void check_case(suite *s, const char *cls, const char *name, int bad, const char *msg)
{
    add_case(s, cls, name, 0, bad ? JC_FAIL : JC_PASS, msg, NULL);
}

/* A value the file gives as "nan", "inf" or "-inf" (RPT_NONE, a missing one, is not). */
static int given_nonfinite(double v) { return isinf(v) || (isnan(v) && !signbit(v)); }

static void eval_cases(suite *s, const rpt_input *in)
{
    const json_t *d = in->doc;
    char name[400], msg[400];
    double v;
    switch (in->kind) {
    case RPT_PERPLEXITY:
        v = rj_get(d, "ppl");
        snprintf(msg, sizeof msg, "perplexity is %g", v);
        check_case(s, "perplexity", rj_str(d, "model"), !isfinite(v), msg);
        break;
    case RPT_KLD:
        v = rj_get2(d, "kld", "mean");
        snprintf(name, sizeof name, "%s vs %s", rj_str(d, "model"),
                 rj_str(d, "base_model") ? rj_str(d, "base_model") : "base");
        snprintf(msg, sizeof msg, "mean KLD %g, %g non-finite records", v, rj_get(d, "non_finite"));
        check_case(s, "kld", name, !isfinite(v) || rj_get(d, "non_finite") > 0 || !isfinite(rj_get(d, "ppl_q")),
                   msg);
        break;
    case RPT_QUANTIZE: {
        const json_t *ts = json_object_get(d, "tensors");
        size_t bad = 0;
        for (size_t i = 0; i < json_array_size(ts); i++)
            bad += given_nonfinite(rj_get(json_array_get(ts, i), "mse"));
        v = rj_get(d, "average_bpw");
        snprintf(msg, sizeof msg, "average bpw %g, %zu tensors with a non-finite MSE", v, bad);
        check_case(s, "quantize", rj_str(d, "out"), bad > 0 || given_nonfinite(v), msg);
        break;
    }
    default:
        break;
    }
}

static void bench_cases(suite *s, const json_t *d)
{
    const json_t *c = json_object_get(d, "fallback_counters");
    double ms = rj_get2(d, "decode", "ms_per_token");
    double errs = rj_get(c, "grouping_error_total") + rj_get(c, "dispatch_error_total");
    double nan = rj_get(c, "nan_events_total");
    char msg[300];
    snprintf(msg, sizeof msg, "decode %g ms/token, %g dispatch errors, %g NaN events", ms, errs, nan);
    check_case(s, "bench", rj_str(d, "model"), !isfinite(ms) || (isfinite(errs) && errs > 0) ||
               (isfinite(nan) && nan > 0), msg);
}

static void kernel_cases(suite *s, const json_t *d)
{
    const json_t *res = json_object_get(d, "results");
    char name[200];
    for (size_t i = 0; i < json_array_size(res); i++) {
        const json_t *x = json_array_get(res, i);
        snprintf(name, sizeof name, "O=%.0f I=%.0f bits=%.0f M=%.0f", rj_get(x, "O"), rj_get(x, "I"),
                 rj_get(x, "bits"), rj_get(x, "M"));
        check_case(s, "bench_kernels", name, json_is_false(json_object_get(x, "bitwise_equal")),
                   "output differs from the reference");
    }
}

static void study_cases(suite *s, const json_t *d)
{
    const json_t *es = json_object_get(d, "entries");
    char name[400];
    for (size_t i = 0; i < json_array_size(es); i++) {
        const json_t *e = json_array_get(es, i);
        const char *st = rj_str(e, "status");
        snprintf(name, sizeof name, "%s %s %s", rj_str(e, "model"), rj_str(e, "spec"), rj_str(e, "rotation"));
        int bad = !strcmp(st, "ok") ? !isfinite(rj_get(e, "ppl")) || !isfinite(rj_get2(e, "kld", "mean")) : 1;
        int kind = !strcmp(st, "not_applicable") ? JC_SKIP : bad ? JC_FAIL : JC_PASS;
        add_case(s, "study", name, 0, kind, rj_str(e, "reason") ? rj_str(e, "reason") : "non-finite result", NULL);
    }
}

static void suite_cases(suite *s, const rpt_input *in)
{
    switch (in->kind) {
    case RPT_CONFORMANCE: conformance_cases(s, in->doc); break;
    case RPT_GOLDEN_VERIFY: golden_cases(s, in->doc); break;
    case RPT_ORACLE_VERIFY: oracle_cases(s, in->doc); break;
    case RPT_SYMBOLS: symbol_cases(s, in->doc); break;
    case RPT_BENCH: bench_cases(s, in->doc); break;
    case RPT_BENCH_KERNELS: kernel_cases(s, in->doc); break;
    case RPT_STUDY: study_cases(s, in->doc); break;
    default: eval_cases(s, in); break;
    }
}

int rpt_write_junit(const rpt_set *set, const char *path, tr_error *err)
{
    rpt_buf body = {0}, out = {0};
    unsigned tests = 0, failures = 0, skipped = 0;
    double time = 0;
    for (size_t i = 0; i < set->n; i++) {
        suite s = {0};
        suite_cases(&s, &set->in[i]);
        rb_puts(&body, "  <testsuite name=\"");
        rb_xml(&body, set->in[i].path);
        rb_printf(&body, "\" tests=\"%u\" failures=\"%u\" errors=\"0\" skipped=\"%u\" time=\"%.6f\">\n", s.tests,
                  s.failures, s.skipped, s.time);
        rb_puts(&body, "    <properties><property name=\"schema\" value=\"");
        rb_xml(&body, rpt_kind_schema(set->in[i].kind));
        rb_puts(&body, "\"/><property name=\"git_commit\" value=\"");
        rb_xml(&body, rj_str(set->in[i].doc, "git_commit") ? rj_str(set->in[i].doc, "git_commit") : "unknown");
        rb_puts(&body, "\"/></properties>\n");
        rb_puts(&body, rb_str(&s.cases));
        rb_puts(&body, "  </testsuite>\n");
        body.oom |= s.cases.oom;
        tests += s.tests;
        failures += s.failures;
        skipped += s.skipped;
        time += s.time;
        rb_free(&s.cases);
    }
    rb_printf(&out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"trellis\" tests=\"%u\" "
                    "failures=\"%u\" errors=\"0\" skipped=\"%u\" time=\"%.6f\">\n", tests, failures, skipped, time);
    rb_puts(&out, rb_str(&body));
    rb_puts(&out, "</testsuites>\n");
    int rc = out.oom || body.oom ? tr_fail(err, TR_E_NOMEM, path, "out of memory building the file")
                                 : tr_file_write_all(path, out.s, out.n, err);
    rb_free(&body);
    rb_free(&out);
    return rc;
}
