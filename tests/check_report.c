/*
 * check_report.c — `trellis report` from small hand-made result files (no model runs): the summary.md tables,
 * junit.xml's shape (parsed minimally: elements and counts), index.html without network references and with the
 * gnuplot SVGs (skipped when gnuplot is absent), the history copy, `report diff`, bad inputs (exit 2 naming the
 * file) and the usage errors of `trellis study`.
 */
#include "tests.h"
#include "cli_run.h"
#include "../cli/report.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- fixtures ---------------------------------------------------------------------------------------------------- */

static const char CONFORM_A[] =
    "{\"schema\": \"trellis.conformance/1\", \"tool_version\": \"0.1.0\", \"git_commit\": \"aaaa1111\","
    " \"backend\": \"cpu\", \"tier\": \"quick\", \"strict\": true, \"results\": ["
    "{\"case\": \"gemm_trellis/cpu/O=1/0\", \"op\": \"gemm_trellis\", \"status\": \"PASS\", \"max_ulp\": 0,"
    " \"bound_ratio\": 0.0, \"time_us\": 2.5},"
    "{\"case\": \"gemm_trellis/cpu/O=2/1\", \"op\": \"gemm_trellis\", \"status\": \"PASS\", \"max_ulp\": 3,"
    " \"bound_ratio\": 0.2},"
    "{\"case\": \"moe_count/cpu/n=1/2\", \"op\": \"moe_count\", \"status\": \"PASS\", \"max_ulp\": null,"
    " \"bound_ratio\": null},"
    "{\"case\": \"hadamard/cpu/n=128/3\", \"op\": \"hadamard\", \"status\": \"UNSUPPORTED\", \"max_ulp\": null,"
    " \"bound_ratio\": null, \"detail\": \"not on this backend\"}],"
    " \"summary\": {\"PASS\": 3, \"UNSUPPORTED\": 1}}";

/* B: one case regresses to FAIL (bound ratio "inf"), one to PRECISION_WARNING (strict: a failure). */
static const char CONFORM_B[] =
    "{\"schema\": \"trellis.conformance/1\", \"tool_version\": \"0.1.0\", \"git_commit\": \"bbbb2222\","
    " \"backend\": \"cpu\", \"tier\": \"quick\", \"strict\": true, \"results\": ["
    "{\"case\": \"gemm_trellis/cpu/O=1/0\", \"op\": \"gemm_trellis\", \"status\": \"FAIL\", \"max_ulp\": 4096,"
    " \"bound_ratio\": \"inf\", \"detail\": \"max abs 3 > bound\", \"replay\": \"trellis conform --replay x\"},"
    "{\"case\": \"gemm_trellis/cpu/O=2/1\", \"op\": \"gemm_trellis\", \"status\": \"PRECISION_WARNING\","
    " \"max_ulp\": 9, \"bound_ratio\": 0.7},"
    "{\"case\": \"moe_count/cpu/n=1/2\", \"op\": \"moe_count\", \"status\": \"PASS\", \"max_ulp\": null,"
    " \"bound_ratio\": null},"
    "{\"case\": \"hadamard/cpu/n=128/3\", \"op\": \"hadamard\", \"status\": \"UNSUPPORTED\", \"max_ulp\": null,"
    " \"bound_ratio\": null}]}";

static const char QUANT[] =
    "{\"schema\": \"trellis.quantize/1\", \"source\": \"golden/oracle/tiny\", \"out\": \"work/tiny-8\","
    " \"bits\": \"8\", \"rotation\": \"none\", \"quantized_weights\": 1000, \"average_bpw\": 8.0,"
    " \"tensors\": [{\"name\": \"w\", \"shape\": [10, 100], \"bits\": 8, \"mse\": 1e-7}]}";

static const char PPL_A[] =
    "{\"schema\": \"trellis.perplexity/1\", \"protocol\": \"llamacpp\", \"ctx\": 128, \"n_scored\": 1008,"
    " \"ppl\": 2142.9, \"ppl_unc\": 73.3, \"model\": \"work/tiny-8\"}";
static const char PPL_B[] =
    "{\"schema\": \"trellis.perplexity/1\", \"protocol\": \"llamacpp\", \"ctx\": 128, \"n_scored\": 1008,"
    " \"ppl\": 2500.0, \"ppl_unc\": 80.0, \"model\": \"work/tiny-8\"}";

static const char KLD[] =
    "{\"schema\": \"trellis.kld/1\", \"model\": \"work/tiny-8\", \"base_model\": \"golden/oracle/tiny\","
    " \"ctx\": 128, \"exact\": true, \"ppl_q\": 2142.9, \"ppl_q_unc\": 73.3, \"ppl_base\": 2126.7,"
    " \"ppl_base_unc\": 72.0, \"ppl_ratio\": 1.0076, \"ppl_ratio_unc\": 0.0047, \"non_finite\": 0,"
    " \"kld\": {\"mean\": 0.0095, \"mean_unc\": 0.0015, \"max\": 0.65, \"p99_9\": 0.6, \"p99\": 0.23, \"p95\": 0.044,"
    " \"p90\": 0.002, \"median\": 0.00067, \"p10\": 0.00029, \"p5\": 0.00024, \"p1\": 0.00014, \"p0_1\": 9e-5,"
    " \"min\": 8.5e-5}, \"same_top\": {\"rate\": 0.8988, \"rate_unc\": 0.0095},"
    " \"delta_p\": {\"rms\": 0.000141, \"rms_unc\": 0.000031}}";

static const char BENCH[] =
    "{\"schema\": \"trellis.bench/1\", \"model\": \"tiny\", \"device\": \"cpu, 2 threads\", \"backend\": \"cpu\","
    " \"decode\": {\"ms_per_token\": 0.6, \"tokens_per_second\": 1666.7, \"percentile_50_ms\": 0.22,"
    " \"percentile_95_ms\": 2.0, \"percentile_99_ms\": 7.0, \"samples_ms\": [0.2, 0.21, 0.22, 0.25, 2.0, 7.0]},"
    " \"prefill\": {\"prompt_tokens\": 128, \"percentile_50_ms\": 17.0, \"tokens_per_second\": 7530,"
    " \"samples_ms\": [31.0, 16.7, 17.0]},"
    " \"mixed_bpw\": {\"average_bpw\": null, \"effective_bpw\": null},"
    " \"fallback_counters\": {\"grouping_calls_total\": 98, \"grouping_host_primary_total\": 98,"
    " \"grouped_attempts_total\": 0, \"grouped_hits_total\": 0, \"kernel_fallback_total\": 0,"
    " \"grouping_error_total\": 0, \"dispatch_error_total\": 0, \"nan_events_total\": 0},"
    " \"fallback_reasons\": {}, \"fallback_reason_codes\": {\"kernel_not_found\": 0},"
    " \"kernel_dispatch_counts\": {\"moe_trellis_swiglu_prefill4\": 84},"
    " \"tool_version\": \"0.1.0\", \"git_commit\": \"aaaa1111\"}";

static const char SYMBOLS[] =
    "{\"schema\": \"trellis.symbols/1\", \"metal_dir\": \"metal\", \"symbols\": ["
    "{\"name\": \"moe_trellis_swiglu\", \"status\": \"missing\", \"gated\": false},"
    "{\"name\": \"moe_trellis_swiglu_grouped\", \"status\": \"missing\", \"gated\": true},"
    "{\"name\": \"moe_trellis_swiglu_decode\", \"status\": \"present\", \"gated\": false}],"
    " \"summary\": {\"present\": 1, \"missing\": 2, \"missing_generic\": 1, \"unreferenced\": 0, \"unmapped\": 0}}";

static const char ORACLE[] =
    "{\"schema\": \"trellis.oracle_verify/1\", \"results\": ["
    "{\"case\": \"tiny\", \"backend\": \"ref\", \"ok\": true, \"logits\": {\"max_abs\": 6e-6, \"bound\": 5e-4}},"
    "{\"case\": \"tiny\", \"backend\": \"cpu\", \"ok\": false, \"detail\": \"hidden states differ at index 2\"}]}";

static const char GOLDEN[] =
    "{\"schema\": \"trellis.golden_verify/1\", \"results\": ["
    "{\"id\": \"lut/3inst\", \"kind\": \"lut\", \"status\": \"PASS\"},"
    "{\"id\": \"op/x\", \"kind\": \"op\", \"status\": \"UNSUPPORTED\"}]}";

static const char STUDY[] =
    "{\"schema\": \"trellis.study/1\", \"git_commit\": \"aaaa1111\", \"text\": \"t.txt\", \"ctx\": 128,"
    " \"bootstrap\": {\"method\": \"percentile\", \"unit\": \"window\", \"resamples\": 2000, \"seed\": 1,"
    " \"rng\": \"mt19937\"}, \"entries\": ["
    "{\"model\": \"tiny\", \"spec\": \"8\", \"rotation\": \"none\", \"status\": \"ok\", \"average_bpw\": 8.0,"
    " \"effective_bpw\": 9.7, \"ppl\": 2142.9, \"ppl_unc\": 73.3, \"ppl_float\": 2126.7, \"ppl_float_unc\": 72.0,"
    " \"kld\": {\"mean\": 0.0095, \"mean_unc\": 0.0015, \"ci95_lo\": 0.0072, \"ci95_hi\": 0.0117, \"median\": 0.0007,"
    " \"max\": 0.6}, \"same_top\": {\"rate\": 0.9, \"rate_unc\": 0.01}, \"rms_dp\": 0.00014},"
    "{\"model\": \"tiny\", \"spec\": \"2\", \"rotation\": \"none\", \"status\": \"ok\", \"average_bpw\": 2.0,"
    " \"ppl\": 2005.0, \"ppl_unc\": 68.0, \"ppl_float\": 2126.7, \"kld\": {\"mean\": 0.93, \"mean_unc\": 0.005,"
    " \"ci95_lo\": 0.92, \"ci95_hi\": 0.95}, \"same_top\": {\"rate\": 0.005, \"rate_unc\": 0.002}, \"rms_dp\": 0.001},"
    "{\"model\": \"tiny\", \"spec\": \"8\", \"rotation\": \"hadamard128\", \"status\": \"not_applicable\","
    " \"reason\": \"not applicable: no layer with I % 128 == 0\"}]}";

typedef struct fixture {
    const char *name, *text;
} fixture;

static const fixture inputs[] = {
    {"conformance.json", CONFORM_A}, {"quantize.json", QUANT}, {"perplexity.json", PPL_A}, {"kld.json", KLD},
    {"bench.json", BENCH},           {"symbols.json", SYMBOLS}, {"oracle.json", ORACLE}, {"golden.json", GOLDEN},
    {"study.json", STUDY},
};
#define NINPUTS (sizeof inputs / sizeof inputs[0])

/* A fresh folder under the test's temporary folder. */
static const char *subdir(const char *name)
{
    static char p[8][4200];
    static int slot;
    char *s = p[slot++ % 8];
    snprintf(s, 4200, "%s/%s", tr_test_tmpdir(), name);
    tr_error err;
    ck_assert_int_eq(tr_mkdir_p(s, &err), TR_OK);
    return s;
}

static char *slurp(const char *dir, const char *name)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *data = NULL;
    size_t n;
    tr_error err;
    ck_assert_msg(tr_file_read_all(path, &data, &n, &err) == TR_OK, "%s", err.text);
    return data;
}

static size_t count(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* Write every fixture into dir; paths[] gets their paths. */
static void write_inputs(const char *dir, char paths[][4200])
{
    for (size_t i = 0; i < NINPUTS; i++)
        snprintf(paths[i], 4200, "%s", tr_test_write(dir, inputs[i].name, inputs[i].text, strlen(inputs[i].text)));
}

/* ---- report ------------------------------------------------------------------------------------------------------ */

static void check_summary(const char *md)
{
    ck_assert_msg(strstr(md, "| backend | op family | cases | PASS | FAIL |"), "%s", md);
    ck_assert(strstr(md, "| cpu | gemm_trellis | 2 | 2 | 0 | 0 | 0 | 0 | 0 | 0 | 0.2 | 3 |"));
    ck_assert(strstr(md, "| cpu | hadamard | 1 | 0 | 0 | 0 | 1 | 0 | 0 | 0 | — | — |"));
    ck_assert(strstr(md, "| cpu | (all) | 4 | 3 | 0 | 0 | 1 |"));
    ck_assert(strstr(md, "| tiny-8 | 8 | 8.000 | llamacpp | 128 | 1008 | 2143 ± 73 |"));
    ck_assert(strstr(md, "| tiny-8 | tiny | 8 | 8.000 | 2143 ± 73 | 2127 ± 72 |"));
    ck_assert(strstr(md, "0.0095 ± 0.0015"));
    ck_assert(strstr(md, "89.88 ± 0.95 %"));
    ck_assert(strstr(md, "| tiny | 8 | hadamard128 | not applicable: no layer with I % 128 == 0 |"));
    ck_assert(strstr(md, "[0.0072, 0.0117]"));
    ck_assert(strstr(md, "| tiny | cpu | cpu, 2 threads |"));
    ck_assert(strstr(md, "0.220 / 2.000 / 7.000"));
    ck_assert(strstr(md, "n/a (no grouped attempts)"));
    ck_assert(strstr(md, "| tiny | (no fallback recorded) | 0 | none |"));
    ck_assert(strstr(md, "all fallback counts are 0."));
    ck_assert(strstr(md, "| moe_trellis_swiglu | missing | no |"));
    ck_assert(strstr(md, "| moe_trellis_swiglu_grouped | missing | yes (optional) |"));
    ck_assert(!strstr(md, "| moe_trellis_swiglu_decode | present"));
    ck_assert(strstr(md, "| tiny | cpu | FAIL |"));
}

/* Minimal XML reading: element counts and nesting of testsuites > testsuite > testcase > failure|skipped. */
static void check_junit(const char *x)
{
    static const char head[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites ";
    ck_assert(!strncmp(x, head, sizeof head - 1));
    ck_assert_uint_eq(count(x, "<testsuites "), 1);
    ck_assert_uint_eq(count(x, "</testsuites>"), 1);
    ck_assert_uint_eq(count(x, "<testsuite "), NINPUTS);
    ck_assert_uint_eq(count(x, "</testsuite>"), NINPUTS);
    /* 4 conformance + 1 quantize + 1 ppl + 1 kld + 1 bench + 3 symbols + 2 oracle + 2 golden + 3 study */
    ck_assert_uint_eq(count(x, "<testcase "), 18);
    /* failures: the missing generic symbol, the failing oracle case */
    ck_assert_uint_eq(count(x, "<failure "), 2);
    ck_assert_uint_eq(count(x, "</failure>"), 2);
    /* skipped: UNSUPPORTED conformance, gated symbol, UNSUPPORTED golden, not-applicable study entry */
    ck_assert_uint_eq(count(x, "<skipped "), 4);
    ck_assert(strstr(x, "tests=\"18\" failures=\"2\" errors=\"0\" skipped=\"4\""));
    ck_assert(strstr(x, "classname=\"conformance.cpu.gemm_trellis\" name=\"gemm_trellis/cpu/O=1/0\""));
    ck_assert(strstr(x, "message=\"not applicable: no layer with I % 128 == 0\""));
    /* every testcase lies inside a testsuite */
    const char *first_suite = strstr(x, "<testsuite "), *first_case = strstr(x, "<testcase ");
    ck_assert(first_suite && first_case && first_suite < first_case);
}

/* No src/href value that starts with http://, https:// or //. */
static void check_no_network(const char *html)
{
    static const char *const attrs[] = {"src=", "href="};
    for (int a = 0; a < 2; a++)
        for (const char *p = html; (p = strstr(p, attrs[a])); p += strlen(attrs[a])) {
            const char *v = p + strlen(attrs[a]);
            if (*v == '"' || *v == '\'')
                v++;
            ck_assert_msg(strncmp(v, "http://", 7) && strncmp(v, "https://", 8) && strncmp(v, "//", 2), "%.60s", p);
        }
}

static void check_html(const char *html, int have_gnuplot)
{
    static const char *const plots[] = {"plot-ulp-cpu", "plot-bound-ratio-cpu", "plot-kld-dist", "plot-ppl-bpw",
                                        "plot-kld-bpw", "plot-latency", "plot-dispatch-hit-rate",
                                        "plot-fallback-reasons", "plot-kld-dist-study"};
    ck_assert(!strncmp(html, "<!DOCTYPE html>", 15));
    ck_assert(strstr(html, "</html>"));
    check_no_network(html);
    ck_assert(!strstr(html, "<script"));
    ck_assert(strstr(html, "data-table=\"table-conformance\""));
    for (size_t i = 0; i < sizeof plots / sizeof plots[0]; i++) {
        char id[80];
        snprintf(id, sizeof id, "id=\"%s\"", plots[i]);
        ck_assert_msg(strstr(html, id), "%s missing", plots[i]);
        if (have_gnuplot) {
            snprintf(id, sizeof id, "id=\"svg-%s\"", plots[i]);
            ck_assert_msg(strstr(html, id), "%s: no SVG", plots[i]);
        }
    }
    if (have_gnuplot) {
        ck_assert_uint_eq(count(html, "class=\"plot-svg\""), 9);
        ck_assert(strstr(html, "all fallback counts are 0"));
        ck_assert(!strstr(html, "<?xml"));
    } else {
        fprintf(stderr, "check_report: gnuplot not available: plot SVG checks skipped\n");
        ck_assert(strstr(html, "Plot not drawn"));
    }
}

START_TEST(test_report_outputs)
{
    const char *in = subdir("in"), *out = subdir("out"), *hist = subdir("hist");
    char paths[NINPUTS][4200];
    write_inputs(in, paths);
    cli_result r = cli_run("report", "--in", paths[0], paths[1], paths[2], paths[3], paths[4], paths[5], paths[6],
                           paths[7], paths[8], "--out", out, "--history", hist, "--commit", "cafe", NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    ck_assert(strstr(r.out, "conformance cpu"));
    ck_assert(strstr(r.out, "report: 9 result files"));
    cli_result_free(&r);
    char *md = slurp(out, "summary.md"), *x = slurp(out, "junit.xml"), *html = slurp(out, "index.html");
    check_summary(md);
    check_junit(x);
    check_html(html, rpt_gnuplot_available());
    tr_dealloc(md), tr_dealloc(x), tr_dealloc(html);
    char p[4400];
    snprintf(p, sizeof p, "%s/aaaa1111/conformance.json", hist);   /* the file's git_commit */
    ck_assert(tr_path_is_file(p));
    snprintf(p, sizeof p, "%s/aaaa1111/study.json", hist);
    ck_assert(tr_path_is_file(p));
    snprintf(p, sizeof p, "%s/cafe/perplexity.json", hist);        /* no git_commit: --commit */
    ck_assert(tr_path_is_file(p));
}
END_TEST

START_TEST(test_report_folder_and_no_plots)
{
    const char *in = subdir("in2"), *out = subdir("out2"), *hist = subdir("hist2");
    char paths[NINPUTS][4200];
    write_inputs(in, paths);
    cli_result r = cli_run("report", in, "--out", out, "--history", hist, "--no-plots", NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    ck_assert(strstr(r.out, "0 of 9 plots drawn; plots skipped (--no-plots)"));
    cli_result_free(&r);
    char *html = slurp(out, "index.html");
    ck_assert(strstr(html, "Plot not drawn: plots skipped (--no-plots)"));
    tr_dealloc(html);
    char p[4400];
    snprintf(p, sizeof p, "%s/unknown/kld.json", hist);
    ck_assert(tr_path_is_file(p));
}
END_TEST

/* ---- diff -------------------------------------------------------------------------------------------------------- */

START_TEST(test_report_diff)
{
    const char *a = subdir("da"), *b = subdir("db"), *hist = subdir("dh");
    tr_test_write(a, "conformance.json", CONFORM_A, strlen(CONFORM_A));
    tr_test_write(a, "perplexity.json", PPL_A, strlen(PPL_A));
    tr_test_write(b, "conformance.json", CONFORM_B, strlen(CONFORM_B));
    tr_test_write(b, "perplexity.json", PPL_B, strlen(PPL_B));
    cli_result r = cli_run("report", "diff", a, b, NULL);
    ck_assert_int_eq(r.status, 1);
    ck_assert_msg(strstr(r.out, "REGRESSION conformance cpu gemm_trellis/cpu/O=1/0: PASS -> FAIL"), "%.3000s", r.out);
    ck_assert(strstr(r.out, "REGRESSION conformance cpu gemm_trellis/cpu/O=2/1: PASS -> PRECISION_WARNING"));
    ck_assert(!strstr(r.out, "moe_count/cpu/n=1/2:"));
    ck_assert(strstr(r.out, "perplexity tiny-8 llamacpp ctx=128"));
    ck_assert_msg(strstr(r.out, "! PPL"), "%.3000s", r.out);            /* 357 ± 109: beyond 2σ */
    ck_assert(strstr(r.out, "2 status changes (2 regressions)"));
    cli_result_free(&r);
    /* commits through the history folder; B -> A is an improvement: exit 0 */
    r = cli_run("report", "--in", a, "--out", subdir("dout"), "--history", hist, NULL);
    ck_assert_int_eq(r.status, 0);
    cli_result_free(&r);
    r = cli_run("report", "--in", b, "--out", subdir("dout"), "--history", hist, NULL);
    ck_assert_int_eq(r.status, 0);
    cli_result_free(&r);
    r = cli_run("report", "diff", "bbbb2222", "aaaa1111", "--history", hist, NULL);
    ck_assert_msg(r.status == 0, "%.2000s%.2000s", r.out, r.err);
    ck_assert(strstr(r.out, "changed    conformance cpu gemm_trellis/cpu/O=1/0: FAIL -> PASS"));
    cli_result_free(&r);
    r = cli_run("report", "diff", "nosuchcommit", a, "--history", hist, NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert(strstr(r.err, "nosuchcommit"));
    cli_result_free(&r);
}
END_TEST

/* ---- bad inputs -------------------------------------------------------------------------------------------------- */

static void expect_bad(const char *name, const char *text, const char *msg)
{
    const char *dir = subdir("bad");
    const char *p = tr_test_write(dir, name, text, strlen(text));
    char path[4200];
    snprintf(path, sizeof path, "%s", p);
    cli_result r = cli_run("report", "--in", path, "--out", subdir("badout"), "--no-history", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_msg(strstr(r.err, path) && strstr(r.err, msg), "%.3000s", r.err);
    cli_result_free(&r);
}

START_TEST(test_report_bad_inputs)
{
    expect_bad("unknown.json", "{\"schema\": \"trellis.frobnicate/1\"}", "unknown schema \"trellis.frobnicate/1\"");
    expect_bad("noschema.json", "{\"results\": []}", "no \"schema\" member");
    expect_bad("malformed.json", "{\"schema\": \"trellis.kld/1\", ", "TR_E_INPUT");
    expect_bad("status.json", "{\"schema\": \"trellis.conformance/1\", \"backend\": \"cpu\", \"results\": "
               "[{\"case\": \"c\", \"op\": \"o\", \"status\": \"MAYBE\"}]}", "results[0].status");
    expect_bad("member.json", "{\"schema\": \"trellis.perplexity/1\", \"model\": \"m\"}", "ppl: missing");
    expect_bad("type.json", "{\"schema\": \"trellis.kld/1\", \"model\": \"m\", \"ppl_q\": 1, \"kld\": "
               "{\"mean\": \"much\"}}", "kld.mean: expected a number");
    expect_bad("array.json", "[1, 2]", "TR_E_INPUT");
    cli_result r = cli_run("report", "--in", "/nonexistent/x.json", "--no-history", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert(strstr(r.err, "/nonexistent/x.json"));
    cli_result_free(&r);
    r = cli_run("report", "--out", subdir("o3"), NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert(strstr(r.err, "no result files"));
    cli_result_free(&r);
    r = cli_run("report", "--bogus", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
    r = cli_run("report", "--help", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert(strstr(r.out, "trellis report diff A B"));
    cli_result_free(&r);
    r = cli_run("report", "diff", "only-one", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
}
END_TEST

/* Every allocation point of a report run fails once in turn: exit 4 whenever the failure fired, never a crash or a
 * report silently missing a part. */
START_TEST(test_report_alloc_failures)
{
    const char *in = subdir("af"), *out = subdir("afout");
    char paths[NINPUTS][4200];
    write_inputs(in, paths);
    const unsigned long step = tr_test_under_valgrind() ? 97 : 1;
    unsigned long n = 1, fired = 0;
    for (;; n += step) {
        tr_alloc_fail_at(n);
        cli_result r = cli_run("report", "--in", paths[0], paths[3], paths[4], paths[8], "--out", out,
                               "--no-history", "--no-plots", NULL);
        int hit = tr_alloc_fired();
        tr_alloc_fail_at(0);
        ck_assert_msg(r.status == (hit ? 4 : 0), "allocation point %lu: exit %d%s\n%s", n, r.status,
                      hit ? " (failure injected)" : "", r.err);
        cli_result_free(&r);
        if (!hit)
            break;
        fired++;
    }
    ck_assert_uint_gt(fired * step, 100);   /* allocation points spanned (every 97th under valgrind) */
    const char *a = subdir("afa"), *b = subdir("afb");
    tr_test_write(a, "conformance.json", CONFORM_A, strlen(CONFORM_A));
    tr_test_write(a, "bench.json", BENCH, strlen(BENCH));
    tr_test_write(b, "conformance.json", CONFORM_B, strlen(CONFORM_B));
    tr_test_write(b, "bench.json", BENCH, strlen(BENCH));
    for (n = 1, fired = 0;; n += step) {
        tr_alloc_fail_at(n);
        cli_result r = cli_run("report", "diff", a, b, NULL);
        int hit = tr_alloc_fired();
        tr_alloc_fail_at(0);
        ck_assert_msg(r.status == (hit ? 4 : 1), "diff, allocation point %lu: exit %d\n%s", n, r.status, r.err);
        cli_result_free(&r);
        if (!hit)
            break;
        fired++;
    }
    ck_assert_uint_gt(fired * step, 20);
}
END_TEST

START_TEST(test_study_usage)
{
    cli_result r = cli_run("study", "--help", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert(strstr(r.out, "not applicable: no layer with I % 128 == 0"));
    cli_result_free(&r);
    r = cli_run("study", "--bits", "8", "-f", "x.txt", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert(strstr(r.err, "--models"));
    cli_result_free(&r);
    r = cli_run("study", "--models", "golden/oracle/glm4_moe_lite_f32", "--bits", "8;9", "-f", "x", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
    r = cli_run("study", "--models", "a,,b", "--bits", "8", "-f", "x", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert(strstr(r.err, "empty item"));
    cli_result_free(&r);
    r = cli_run("study", "--rotation", "diagonal", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
    r = cli_run("study", "--models", "/nonexistent", "--bits", "8", "-f", "x", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert(strstr(r.err, "/nonexistent"));
    cli_result_free(&r);
}
END_TEST

Suite *suite_report(void)
{
    Suite *s = suite_create("report");
    TCase *tc = tcase_create("report");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_report_outputs);
    tcase_add_test(tc, test_report_folder_and_no_plots);
    tcase_add_test(tc, test_report_diff);
    tcase_add_test(tc, test_report_bad_inputs);
    tcase_add_test(tc, test_report_alloc_failures);
    tcase_add_test(tc, test_study_usage);
    suite_add_tcase(s, tc);
    return s;
}
