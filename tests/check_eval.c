/*
 * check_eval.c — `trellis perplexity` (ENGINE.md §6: both protocols, scored positions, ±σ, --save-nll, --bos,
 * --chunks, input errors) and `trellis bench` (trellis.bench/1 members), on the committed oracle cases.
 *
 * The key acceptance: perplexity --ids-file over an oracle case's input_ids with --protocol hf --ctx T --stride T
 * equals exp(mean NLL) recomputed from that case's oracle logits within 1e-3 relative.
 */
#include "cli_run.h"
#include "tests.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/oracle.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *oracle_dir(void)
{
    const char *d = getenv("TR_ORACLE_DIR");
    return d && *d ? d : "golden/oracle";
}

/* ids (repeated `copies` times) written as a whitespace-separated file; returns its path. */
static const char *ids_file(const int32_t *ids, uint32_t n, int copies, const char *name)
{
    size_t cap = (size_t)n * copies * 12 + 16, k = 0;
    char *text = malloc(cap);
    for (int c = 0; c < copies; c++)
        for (uint32_t i = 0; i < n; i++)
            k += (size_t)snprintf(text + k, cap - k, "%d%c", ids[i], (i % 10 == 9) ? '\n' : ' ');
    const char *p = tr_test_write(tr_test_tmpdir(), name, text, k);
    free(text);
    return p;
}

static json_t *run_json(cli_result *r)
{
    json_error_t je;
    json_t *doc = json_loads(r->out, 0, &je);
    ck_assert_msg(doc != NULL, "JSON: %s\n%s", je.text, r->out);
    return doc;
}

/* exp(mean nll) over targets 1..T-1 from the oracle logits, lse in double. */
static double oracle_ppl(const tr_oracle_case *c)
{
    double sum = 0;
    for (uint32_t t = 1; t < c->T; t++) {
        const float *row = c->logits + (size_t)(t - 1) * c->V;
        double m = -INFINITY, z = 0;
        for (uint32_t v = 0; v < c->V; v++)
            m = row[v] > m ? row[v] : m;
        for (uint32_t v = 0; v < c->V; v++)
            z += exp(row[v] - m);
        sum += -((double)row[c->input_ids[t]] - (m + log(z)));
    }
    return exp(sum / (c->T - 1));
}

START_TEST(test_ppl_matches_oracle)
{
    tr_oracle *o;
    tr_error err;
    ck_assert_msg(tr_oracle_open(oracle_dir(), &o, &err) == TR_OK, "%s", err.text);
    for (uint32_t i = 0; i < tr_oracle_case_count(o); i++) {
        const tr_oracle_case *c = tr_oracle_case_at(o, i);
        char name[64], T[16];
        snprintf(name, sizeof name, "ppl-ids-%u.txt", i);
        snprintf(T, sizeof T, "%u", c->T);
        const char *f = ids_file(c->input_ids, c->T, 1, name);
        cli_result r = cli_run("perplexity", "-m", c->dir, "--ids-file", f, "--protocol", "hf", "--ctx", T,
                               "--stride", T, "--json", "-", NULL);
        ck_assert_msg(r.status == 0, "%s: %s", c->name, r.err);
        json_t *doc = run_json(&r);
        double got = json_number_value(json_object_get(doc, "ppl")), want = oracle_ppl(c);
        ck_assert_msg(fabs(got - want) <= 1e-3 * want, "%s: ppl %.9g, oracle %.9g", c->name, got, want);
        ck_assert_int_eq(json_integer_value(json_object_get(doc, "n_scored")), c->T - 1);
        ck_assert_int_eq(json_integer_value(json_object_get(doc, "n_chunks")), 1);
        ck_assert_str_eq(json_string_value(json_object_get(doc, "schema")), "trellis.perplexity/1");
        ck_assert_uint_eq(strlen(json_string_value(json_object_get(doc, "input_sha256"))), 64);
        json_decref(doc);
        cli_result_free(&r);
    }
    tr_oracle_close(o);
}
END_TEST

/* llamacpp: ⌊n/C⌋ chunks, C/2 − 1 scored positions each; --chunks limits; --save-nll lines; text output. */
START_TEST(test_ppl_llamacpp)
{
    tr_oracle *o;
    ck_assert_int_eq(tr_oracle_open(oracle_dir(), &o, NULL), TR_OK);
    const tr_oracle_case *c = tr_oracle_case_at(o, 0);
    const char *f = ids_file(c->input_ids, c->T, 3, "ppl-llama.txt");   /* 3T tokens */
    char nll[4200];
    snprintf(nll, sizeof nll, "%s/ppl.nll", tr_test_tmpdir());
    cli_result r = cli_run("perplexity", "-m", c->dir, "--ids-file", f, "--ctx", "16", "--save-nll", nll, NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    uint32_t chunks = 3 * c->T / 16;
    char want[32];
    snprintf(want, sizeof want, "[%u]", chunks);
    ck_assert_ptr_nonnull(strstr(r.out, "[1]"));
    ck_assert_ptr_nonnull(strstr(r.out, want));
    ck_assert_ptr_nonnull(strstr(r.out, "Final estimate: PPL = "));
    ck_assert_ptr_nonnull(strstr(r.out, " +/- "));
    cli_result_free(&r);
    char *data;
    size_t n;
    ck_assert_int_eq(tr_file_read_all(nll, &data, &n, NULL), TR_OK);
    unsigned lines = 0;
    for (size_t k = 0; k < n; k++)
        lines += data[k] == '\n';
    ck_assert_uint_eq(lines, chunks * 7);   /* positions 8..14 predict targets 9..15 */
    unsigned long pos;
    int target;
    double v;
    ck_assert_int_eq(sscanf(data, "%lu %d %lf", &pos, &target, &v), 3);
    ck_assert_uint_eq(pos, 9);
    ck_assert_int_eq(target, c->input_ids[9]);
    ck_assert(v > 0);
    tr_dealloc(data);
    r = cli_run("perplexity", "-m", c->dir, "--ids-file", f, "--ctx", "16", "--chunks", "2", "--bos", "0", "--json",
                "-", NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    json_t *doc = run_json(&r);
    ck_assert_int_eq(json_integer_value(json_object_get(doc, "n_chunks")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(doc, "n_scored")), 14);
    ck_assert_int_eq(json_integer_value(json_object_get(doc, "bos")), 0);
    ck_assert_uint_eq(json_array_size(json_object_get(doc, "chunk_ppl")), 2);
    ck_assert(json_number_value(json_object_get(doc, "ppl_unc")) > 0);
    json_decref(doc);
    cli_result_free(&r);
    tr_oracle_close(o);
}
END_TEST

/* hf with stride < ctx scores every token 1..n−1 exactly once. */
START_TEST(test_ppl_hf_strided)
{
    tr_oracle *o;
    ck_assert_int_eq(tr_oracle_open(oracle_dir(), &o, NULL), TR_OK);
    const tr_oracle_case *c = tr_oracle_case_at(o, tr_oracle_case_count(o) - 1);
    const char *f = ids_file(c->input_ids, c->T, 2, "ppl-hf.txt");
    char nll[4200];
    snprintf(nll, sizeof nll, "%s/ppl-hf.nll", tr_test_tmpdir());
    cli_result r = cli_run("perplexity", "-m", c->dir, "--ids-file", f, "--protocol", "hf", "--ctx", "24", "--stride",
                           "10", "--save-nll", nll, "--json", "-", NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    json_t *doc = run_json(&r);
    ck_assert_int_eq(json_integer_value(json_object_get(doc, "n_scored")), 2 * c->T - 1);
    json_decref(doc);
    cli_result_free(&r);
    char *data;
    size_t n;
    ck_assert_int_eq(tr_file_read_all(nll, &data, &n, NULL), TR_OK);
    unsigned long expect = 1, pos;
    const char *p = data;
    int bad = 0;
    while (*p && sscanf(p, "%lu", &pos) == 1) {
        bad |= pos != expect++;
        p = strchr(p, '\n') + 1;
    }
    ck_assert_msg(!bad && expect == 2 * c->T, "positions not 1..n-1 in order");
    tr_dealloc(data);
    tr_oracle_close(o);
}
END_TEST

START_TEST(test_ppl_errors)
{
    tr_oracle *o;
    ck_assert_int_eq(tr_oracle_open(oracle_dir(), &o, NULL), TR_OK);
    const tr_oracle_case *c = tr_oracle_case_at(o, 0);
    const char *f = ids_file(c->input_ids, c->T, 1, "ppl-short.txt");
    cli_result r = cli_run("perplexity", "-m", c->dir, "--ids-file", f, "--ctx", "512", NULL);
    ck_assert_int_eq(r.status, 2);
    char want[128];
    snprintf(want, sizeof want, "%u tokens, need at least 2*ctx = 1024", c->T);
    ck_assert_msg(strstr(r.err, want) != NULL, "%.3000s", r.err);
    cli_result_free(&r);
    r = cli_run("perplexity", "-m", c->dir, "--ids-file", f, "--ctx", "16", "--ctx-size", "8", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "smaller than the evaluation window"));
    cli_result_free(&r);
    r = cli_run("perplexity", "-m", c->dir, "--ids-file", f, "--protocol", "xx", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
    const char *bad = tr_test_write(tr_test_tmpdir(), "ppl-bad.txt", "1 2 99999 4", 11);
    r = cli_run("perplexity", "-m", c->dir, "--ids-file", bad, "--protocol", "hf", "--ctx", "4", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "token id 99999 at index 2 is out of range"));
    cli_result_free(&r);
    tr_oracle_close(o);
}
END_TEST

START_TEST(test_bench_json)
{
    tr_oracle *o;
    ck_assert_int_eq(tr_oracle_open(oracle_dir(), &o, NULL), TR_OK);
    const tr_oracle_case *c = tr_oracle_case_at(o, 0);
    cli_result r = cli_run("bench", "-m", c->dir, "--prompt-tokens", "8", "--gen-tokens", "6", "--warmup", "2",
                           "--prefill-tokens", "8,16", "--repetitions", "2", "--json", "-", NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    ck_assert_ptr_nonnull(strstr(r.err, "decode :"));   /* the summary goes to stderr when JSON is on stdout */
    json_t *doc = run_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "schema")), "trellis.bench/1");
    const json_t *d = json_object_get(doc, "decode"), *p = json_object_get(doc, "prefill");
    ck_assert_int_eq(json_integer_value(json_object_get(d, "tokens")), 12);
    ck_assert_uint_eq(json_array_size(json_object_get(d, "samples_ms")), 12);
    ck_assert(json_number_value(json_object_get(d, "ms_per_token")) > 0);
    ck_assert_uint_eq(json_array_size(json_object_get(p, "sweep")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(p, "prompt_tokens")), 8);
    ck_assert_int_eq(json_integer_value(json_object_get(p, "repetitions")), 2);
    const char *members[] = {"mixed_bpw", "fallback_counters", "fallback_reasons", "fallback_reason_codes",
                             "kernel_dispatch_counts", "memory", "threads", "ctx_size", "seed", "tool_version",
                             "git_commit", "started", "device", "backend", "model"};
    for (size_t k = 0; k < sizeof members / sizeof *members; k++)
        ck_assert_msg(json_object_get(doc, members[k]) != NULL, "member %s missing", members[k]);
    const json_t *fc = json_object_get(doc, "fallback_counters");
    ck_assert(json_integer_value(json_object_get(fc, "grouping_calls_total")) > 0);
    ck_assert(json_integer_value(json_object_get(json_object_get(doc, "memory"), "kv_cache_bytes")) > 0);
    json_decref(doc);
    cli_result_free(&r);
    tr_oracle_close(o);
}
END_TEST

Suite *suite_eval(void)
{
    Suite *s = suite_create("eval");
    TCase *t = tcase_create("perplexity");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_ppl_matches_oracle);
    tcase_add_test(t, test_ppl_llamacpp);
    tcase_add_test(t, test_ppl_hf_strided);
    tcase_add_test(t, test_ppl_errors);
    tcase_add_test(t, test_bench_json);
    suite_add_tcase(s, t);
    return s;
}
