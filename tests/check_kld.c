/*
 * check_kld.c — the two-pass KLD of ENGINE.md §6 (`trellis kld base` / `trellis kld eval`, include/trellis/kld.h):
 *   - type-7 quantiles against hand-computed values; record building and comparison on a hand-made row;
 *   - self-check: pass 2 with the base model and backend gives KLD and Δp exactly 0, same top 100 % and router
 *     agreement 1 (--topk all, llamacpp; --topk 16, hf);
 *   - an 8-bit quantized oracle model against its float original: every statistic present and finite, KLD > 0,
 *     the exact KLD (--topk all) equal to a recomputation from two `trellis logits` runs (1e-9 relative), the
 *     top-K KLD a lower bound of the exact one (every order statistic);
 *   - file integrity: every single-byte change, truncations, wrong magic and wrong version rejected with the
 *     spec's message; header/record-count inconsistency; the vocabulary mismatch message; CLI exit codes.
 * Inputs are --ids-file streams built from the oracle cases' input_ids (repeated), models from golden/oracle.
 */
#include "cli_run.h"
#include "tests.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/kld.h"
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

/* The first case of index.json with architecture arch (NULL: any other than `not`). */
static const tr_oracle_case *find_case(tr_oracle *o, const char *arch, uint32_t not_V)
{
    for (uint32_t i = 0; i < tr_oracle_case_count(o); i++) {
        const tr_oracle_case *c = tr_oracle_case_at(o, i);
        if ((!arch || !strcmp(c->arch, arch)) && c->V != not_V)
            return c;
    }
    return NULL;
}

static tr_oracle *open_oracle(void)
{
    tr_oracle *o;
    tr_error err;
    ck_assert_msg(tr_oracle_open(oracle_dir(), &o, &err) == TR_OK, "%s", err.text);
    return o;
}

static const char *tmp_path(const char *name)
{
    static char paths[8][4200];
    static int slot;
    char *p = paths[slot++ % 8];
    snprintf(p, sizeof paths[0], "%s/%s", tr_test_tmpdir(), name);
    return p;
}

/* The first n ids of input_ids repeated, as a whitespace-separated ids file; the ids also in *out (malloc'ed). */
static const char *ids_file(const tr_oracle_case *c, uint32_t n, const char *name, int32_t **out)
{
    char *text = malloc((size_t)n * 12 + 1);
    size_t k = 0;
    int32_t *ids = malloc(n * sizeof *ids);
    for (uint32_t i = 0; i < n; i++) {
        ids[i] = c->input_ids[i % c->T];
        k += (size_t)sprintf(text + k, "%d%c", ids[i], i % 16 == 15 ? '\n' : ' ');
    }
    const char *p = tr_test_write(tr_test_tmpdir(), name, text, k);
    free(text);
    if (out)
        *out = ids;
    else
        free(ids);
    return p;
}

static void expect_ok(cli_result *r, const char *what)
{
    ck_assert_msg(r->status == 0, "%s: exit %d\n%s", what, r->status, r->err);
}

static json_t *load_json(const char *path)
{
    json_error_t je;
    json_t *d = json_load_file(path, 0, &je);
    ck_assert_msg(d != NULL, "%s: %s", path, je.text);
    return d;
}

/* "a.b" member as a number; fails the test when missing or not a number. */
static double num(const json_t *d, const char *path)
{
    char key[128];
    const char *dot = strchr(path, '.');
    if (dot) {
        snprintf(key, sizeof key, "%.*s", (int)(dot - path), path);
        return num(json_object_get(d, key), dot + 1);
    }
    const json_t *v = json_object_get(d, path);
    ck_assert_msg(json_is_number(v), "member %s is not a number", path);
    return json_number_value(v);
}

/* Count strings "nan"/"inf"/"-inf" anywhere in the document. */
static int non_finite_strings(const json_t *d)
{
    int n = 0;
    const char *k;
    json_t *v;
    size_t i;
    if (json_is_object(d))
        json_object_foreach((json_t *)d, k, v) n += non_finite_strings(v);
    else if (json_is_array(d))
        json_array_foreach(d, i, v) n += non_finite_strings(v);
    else if (json_is_string(d))
        n += !strcmp(json_string_value(d), "nan") || !strcmp(json_string_value(d), "inf") ||
             !strcmp(json_string_value(d), "-inf");
    return n;
}

/* ---- units ------------------------------------------------------------------------------------------------------ */

START_TEST(test_quantile_type7)
{
    /* type 7: h = (n−1)p, x[⌊h⌋] + (h−⌊h⌋)(x[⌊h⌋+1] − x[⌊h⌋]) */
    const double x[4] = {1, 3, 4, 10};
    const double p[7] = {0.0, 0.1, 0.25, 0.5, 0.9, 0.999, 1.0};
    const double want[7] = {1.0, 1.6, 2.5, 3.5, 8.2, 9.982, 10.0};
    for (int i = 0; i < 7; i++)
        ck_assert_msg(fabs(tr_quantile_sorted(x, 4, p[i]) - want[i]) < 1e-12, "p = %g: %.17g, want %g", p[i],
                      tr_quantile_sorted(x, 4, p[i]), want[i]);
    const double one = 7.5;
    ck_assert(tr_quantile_sorted(&one, 1, 0.3) == 7.5);
    ck_assert(isnan(tr_quantile_sorted(x, 0, 0.5)));
    /* the statistics use it: percentiles of 1..101 are the integers */
    tr_kld_accum a;
    tr_kld_accum_init(&a, 1);
    for (int i = 101; i >= 1; i--) {
        tr_kld_point pt = {i, -i, 1, 1, 0.5, 0, 1, 1};
        ck_assert_int_eq(tr_kld_accum_add(&a, &pt, NULL), TR_OK);
    }
    tr_kld_stats s;
    tr_kld_stats_full(&a, &s);
    ck_assert(s.kld_q[0] == 101 && s.kld_q[5] == 51 && s.kld_q[6] == 11 && s.kld_q[10] == 1);
    ck_assert(fabs(s.kld_q[1] - 100.9) < 1e-9);
    ck_assert(s.dp_q[0] == -1 && s.dp_q[12] == -101 && s.dp_q[6] == -51);
    ck_assert(s.same_top == 1.0 && s.same_top_unc == 0.0 && s.kld_mean == 51.0);
    tr_kld_accum_free(&a);
}
END_TEST

/* A hand-made row: order (ties → lower id), lse, tail mass, partition KLD, Δp, same top. */
START_TEST(test_record_math)
{
    const float base[6] = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f};
    const float cand[6] = {1.5f, 2.5f, 2.0f, 3.5f, -2.0f, 0.0f};
    tr_kld_work w;
    ck_assert_int_eq(tr_kld_work_init(&w, 6, 3, 0, NULL), TR_OK);
    tr_kld_rec_build(&w, base, 5);
    ck_assert_uint_eq(w.rec.ids[0], 1);   /* 3.0 at ids 1 and 3: the lower id first */
    ck_assert_uint_eq(w.rec.ids[1], 3);
    ck_assert_uint_eq(w.rec.ids[2], 2);
    double z = 0, zq = 0;
    for (int i = 0; i < 6; i++)
        z += exp(base[i] - 3.0), zq += exp(cand[i] - 3.5);
    const double lse = 3.0 + log(z), lseq = 3.5 + log(zq);
    ck_assert(fabs(w.rec.lse - lse) < 1e-14);
    const double pt = exp(1.0 - lse) + exp(-1.0 - lse) + exp(0.5 - lse),
                 qt = exp(1.5 - lseq) + exp(-2.0 - lseq) + exp(0.0 - lseq);
    ck_assert(fabs(w.rec.tail_mass - pt) < 1e-15);
    tr_kld_point p;
    ck_assert_int_eq(tr_kld_compare(&w, &w.rec, cand, &p, NULL), TR_OK);
    double kld = pt * (log(pt) - log(qt));
    const int ids[3] = {1, 3, 2};
    for (int j = 0; j < 3; j++) {
        double lp = base[ids[j]] - lse, lq = cand[ids[j]] - lseq;
        kld += exp(lp) * (lp - lq);
    }
    ck_assert_msg(fabs(p.kld - kld) < 1e-14, "KLD %.17g, want %.17g", p.kld, kld);
    ck_assert(fabs(p.delta_p - (exp(0.0 - lseq) - exp(0.5 - lse))) < 1e-15);
    ck_assert_int_eq(p.same_top, 0);   /* candidate argmax is id 3, base top is id 1 */
    ck_assert(p.finite);
    /* a repeated stored id is an input error, and leaves the scratch clean */
    w.rec.ids[2] = 1;
    tr_error err;
    ck_assert_int_eq(tr_kld_compare(&w, &w.rec, cand, &p, &err), TR_E_INPUT);
    for (int i = 0; i < 6; i++)
        ck_assert_uint_eq(w.slot[i], 0);
    tr_kld_work_free(&w);
    /* K = V: no tail, the full KL divergence */
    ck_assert_int_eq(tr_kld_work_init(&w, 6, 6, 0, NULL), TR_OK);
    tr_kld_rec_build(&w, base, 0);
    ck_assert(w.rec.tail_mass == 0.0);
    ck_assert_int_eq(tr_kld_compare(&w, &w.rec, base, &p, NULL), TR_OK);
    ck_assert(p.kld == 0.0 && p.delta_p == 0.0 && p.same_top);
    tr_kld_work_free(&w);
}
END_TEST

/* ---- self-check ------------------------------------------------------------------------------------------------- */

static void assert_all_zero(const json_t *obj, const char *name)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        ck_assert_msg(json_is_number(v), "%s.%s is not a number", name, k);
        ck_assert_msg(json_number_value(v) == 0.0, "%s.%s = %.17g, want exactly 0", name, k, json_number_value(v));
    }
}

static void self_check(const tr_oracle_case *c, const char *ids, const char *tag, const char *const *base_args,
                       int routes, int noise_floor)
{
    char out[64], js[64];
    snprintf(out, sizeof out, "self-%s.tlogits", tag);
    snprintf(js, sizeof js, "self-%s.json", tag);
    const char *bpath = tmp_path(out), *jpath = tmp_path(js);
    cli_result r = cli_run("kld", "base", "-m", c->dir, "--ids-file", ids, "-o", bpath, "--no-progress",
                           base_args[0], base_args[1], base_args[2], base_args[3], base_args[4], base_args[5], NULL);
    expect_ok(&r, "kld base");
    cli_result_free(&r);
    r = cli_run("kld", "eval", "-m", c->dir, "--base-logits", bpath, "--json", jpath, "--no-progress", NULL);
    expect_ok(&r, "kld eval");
    ck_assert_ptr_nonnull(strstr(r.out, "====== KL divergence statistics ======"));
    ck_assert_ptr_nonnull(strstr(r.out, "[1/"));
    cli_result_free(&r);
    json_t *d = load_json(jpath);
    assert_all_zero(json_object_get(d, "kld"), "kld");
    assert_all_zero(json_object_get(d, "delta_p"), "delta_p");
    ck_assert(num(d, "same_top.rate") == 1.0 && num(d, "same_top.rate_unc") == 0.0);
    ck_assert(num(d, "ln_ppl_ratio") == 0.0 && num(d, "ln_ppl_ratio_unc") == 0.0);
    ck_assert(num(d, "ppl_q") == num(d, "ppl_base") && num(d, "ppl_diff") == 0.0);
    ck_assert(num(d, "n_scored") > 0 && num(d, "non_finite") == 0);
    if (routes) {
        ck_assert(num(d, "router_agreement.exact_set_rate") == 1.0);
        ck_assert(num(d, "router_agreement.mean_overlap") == 1.0);
    } else
        ck_assert(json_is_null(json_object_get(d, "router_agreement")));
    if (noise_floor)
        ck_assert(num(d, "noise_floor.kld.mean") > 0);   /* bf16 residuals do move the logits */
    else
        ck_assert(json_is_null(json_object_get(d, "noise_floor")));
    json_decref(d);
}

START_TEST(test_self_check)
{
    tr_oracle *o = open_oracle();
    const tr_oracle_case *c = find_case(o, "glm4_moe_lite", 0);
    ck_assert_ptr_nonnull(c);
    const char *ids = ids_file(c, 64, "self.ids", NULL);
    const char *exact[6] = {"--ctx", "16", "--topk", "all", "--store-routes", "--noise-floor"};
    self_check(c, ids, "all", exact, 1, 1);
    const char *top16[6] = {"--ctx", "16", "--topk", "16", "--protocol", "hf"};
    self_check(c, ids, "top16", top16, 0, 0);
    /* Qwen too (a different architecture's routes) */
    const tr_oracle_case *q = find_case(o, "qwen3_moe", 0);
    if (q) {
        const char *qids = ids_file(q, 64, "self-qwen.ids", NULL);
        const char *qargs[6] = {"--ctx", "16", "--topk", "all", "--store-routes", "--chunks=2"};
        self_check(q, qids, "qwen", qargs, 1, 0);
    }
    tr_oracle_close(o);
}
END_TEST

/* ---- quantized candidate ---------------------------------------------------------------------------------------- */

static float *read_logits(const char *path, size_t n)
{
    char *data;
    size_t size;
    ck_assert_int_eq(tr_file_read_all(path, &data, &size, NULL), TR_OK);
    ck_assert_uint_eq(size, n * sizeof(float));
    float *f = malloc(size);
    memcpy(f, data, size);
    tr_dealloc(data);
    return f;
}

/* `trellis logits` of ids [C] with model dir; [C][V]. */
static float *logits_of(const char *dir, const int32_t *ids, uint32_t C, uint32_t V, const char *tag)
{
    char name[64];
    snprintf(name, sizeof name, "chunk-%s.ids", tag);
    char *text = malloc((size_t)C * 12 + 1);
    size_t k = 0;
    for (uint32_t i = 0; i < C; i++)
        k += (size_t)sprintf(text + k, "%d ", ids[i]);
    const char *ip = tr_test_write(tr_test_tmpdir(), name, text, k);
    free(text);
    char ipath[4200];
    snprintf(ipath, sizeof ipath, "%s", ip);
    const char *op = tmp_path("chunk.f32");
    cli_result r = cli_run("logits", "-m", dir, "--ids-file", ipath, "--out", op, "-q", NULL);
    expect_ok(&r, "logits");
    cli_result_free(&r);
    return read_logits(op, (size_t)C * V);
}

static double lse_of(const float *l, uint32_t V)
{
    double m = -INFINITY, z = 0;
    for (uint32_t i = 0; i < V; i++)
        m = l[i] > m ? l[i] : m;
    for (uint32_t i = 0; i < V; i++)
        z += exp((double)l[i] - m);
    return m + log(z);
}

typedef struct recomputed {
    double kld, dp;
    uint64_t n, same;
} recomputed;

/* Full-vocabulary KL(P_base‖P_cand), Δp and same top over the llamacpp scored positions of every chunk. */
static recomputed recompute(const char *base, const char *cand, const int32_t *ids, uint32_t chunks, uint32_t C,
                            uint32_t V)
{
    recomputed out = {0, 0, 0, 0};
    for (uint32_t w = 0; w < chunks; w++) {
        const int32_t *t = ids + (size_t)w * C;
        float *b = logits_of(base, t, C, V, "b"), *q = logits_of(cand, t, C, V, "q");
        for (uint32_t j = C / 2; j + 1 < C; j++) {
            const float *bl = b + (size_t)j * V, *ql = q + (size_t)j * V;
            const double lb = lse_of(bl, V), lq = lse_of(ql, V);
            double kl = 0;
            uint32_t ab = 0, aq = 0;
            for (uint32_t i = 0; i < V; i++) {
                const double lp = bl[i] - lb, lqq = ql[i] - lq;
                kl += exp(lp) * (lp - lqq);
                ab = bl[i] > bl[ab] ? i : ab;
                aq = ql[i] > ql[aq] ? i : aq;
            }
            const int32_t tg = t[j + 1];
            out.kld += kl;
            out.dp += exp(ql[tg] - lq) - exp(bl[tg] - lb);
            out.same += ab == aq;
            out.n++;
        }
        free(b);
        free(q);
    }
    return out;
}

static const char *const STAT_KEYS[] = {"ppl_q",        "ppl_q_unc",    "ppl_base",  "ppl_base_unc",
                                        "cor_ln_ppl",   "ln_ppl_ratio", "ln_ppl_ratio_unc",
                                        "ppl_ratio",    "ppl_ratio_unc", "ppl_diff", "ppl_diff_unc",
                                        "same_top.rate", "same_top.rate_unc", "n_tokens", "n_chunks", "topk",
                                        "tail_mass.mean", "tail_mass.max", "non_finite",
                                        "router_agreement.exact_set_rate", "router_agreement.mean_overlap",
                                        "noise_floor.kld.mean", "noise_floor.kld.mean_unc",
                                        "noise_floor.delta_p.rms", "noise_floor.same_top.rate",
                                        "noise_floor.kld_ratio"};

static void check_every_statistic(const json_t *d)
{
    for (size_t i = 0; i < sizeof STAT_KEYS / sizeof *STAT_KEYS; i++)
        ck_assert_msg(isfinite(num(d, STAT_KEYS[i])), "%s is not finite", STAT_KEYS[i]);
    for (int i = 0; i < TR_KLD_NQ; i++)
        ck_assert(isfinite(num(json_object_get(d, "kld"), TR_KLD_QKEY[i])));
    for (int i = 0; i < TR_DP_NQ; i++)
        ck_assert(isfinite(num(json_object_get(d, "delta_p"), TR_DP_QKEY[i])));
    ck_assert(isfinite(num(d, "kld.mean")) && isfinite(num(d, "kld.mean_unc")));
    ck_assert(isfinite(num(d, "delta_p.rms")) && isfinite(num(d, "delta_p.rms_unc")));
    ck_assert(json_is_boolean(json_object_get(json_object_get(d, "noise_floor"), "within_noise_floor")));
    ck_assert_int_eq(json_array_size(json_object_get(d, "kld_by_confidence")), TR_KLD_BUCKETS);
    ck_assert_int_eq(non_finite_strings(d), 0);
    ck_assert(num(d, "kld.min") <= num(d, "kld.median") && num(d, "kld.median") <= num(d, "kld.max"));
    ck_assert(num(d, "delta_p.min") <= num(d, "delta_p.p25") && num(d, "delta_p.p75") <= num(d, "delta_p.max"));
}

static json_t *kld_pair(const char *base_dir, const char *cand_dir, const char *ids, const char *topk,
                        const char *tag)
{
    char b[64], j[64];
    snprintf(b, sizeof b, "q-%s.tlogits", tag);
    snprintf(j, sizeof j, "q-%s.json", tag);
    const char *bp = tmp_path(b), *jp = tmp_path(j);
    cli_result r = cli_run("kld", "base", "-m", base_dir, "--ids-file", ids, "--ctx", "32", "--topk", topk, "-o", bp,
                           "--store-routes", "--noise-floor", "--no-progress", NULL);
    expect_ok(&r, "kld base");
    cli_result_free(&r);
    r = cli_run("kld", "eval", "-m", cand_dir, "--base-logits", bp, "--json", jp, "--no-progress", NULL);
    expect_ok(&r, "kld eval");
    cli_result_free(&r);
    return load_json(jp);
}

START_TEST(test_quantized_candidate)
{
    tr_oracle *o = open_oracle();
    const tr_oracle_case *c = find_case(o, "glm4_moe_lite", 0);
    const char *q8 = tmp_path("kld-q8");
    char q8dir[4200];
    snprintf(q8dir, sizeof q8dir, "%s", q8);
    cli_result r = cli_run("quantize", "-m", c->dir, "--out", q8dir, "--bits", "8", "--no-progress", NULL);
    expect_ok(&r, "quantize");
    cli_result_free(&r);
    const uint32_t C = 32, chunks = 4;
    int32_t *ids;
    char idp[4200];
    snprintf(idp, sizeof idp, "%s", ids_file(c, C * chunks, "q.ids", &ids));
    json_t *exact = kld_pair(c->dir, q8dir, idp, "all", "all"), *top = kld_pair(c->dir, q8dir, idp, "16", "16");
    check_every_statistic(exact);
    check_every_statistic(top);
    const double kld = num(exact, "kld.mean");
    ck_assert_msg(kld > 0, "8-bit model: mean KLD %.3g", kld);
    ck_assert(num(exact, "tail_mass.max") == 0.0 && num(top, "tail_mass.mean") > 0);
    /* the exact KLD equals a full-vocabulary recomputation from `trellis logits` of both models */
    recomputed rc = recompute(c->dir, q8dir, ids, chunks, C, c->V);
    ck_assert_uint_eq(rc.n, (uint64_t)num(exact, "n_scored"));
    ck_assert_msg(fabs(kld - rc.kld / rc.n) <= 1e-9 * fabs(kld), "KLD %.17g, recomputed %.17g", kld, rc.kld / rc.n);
    ck_assert(fabs(num(exact, "delta_p.mean") - rc.dp / rc.n) <= 1e-9 * fabs(rc.dp / rc.n) + 1e-15);
    ck_assert(num(exact, "same_top.rate") == (double)rc.same / rc.n);
    /* top-K is a lower bound of every record's KLD, hence of every order statistic and the mean */
    ck_assert(num(top, "kld.mean") <= kld * (1 + 1e-12));
    for (int i = 0; i < TR_KLD_NQ; i++) {
        const double a = num(json_object_get(top, "kld"), TR_KLD_QKEY[i]),
                     b = num(json_object_get(exact, "kld"), TR_KLD_QKEY[i]);
        ck_assert_msg(a <= b + 1e-12 * fabs(b), "top-16 KLD %s %.17g > exact %.17g", TR_KLD_QKEY[i], a, b);
    }
    fprintf(stderr, "kld: %s 8-bit vs float (ctx %u, %u tokens, %llu scored): mean KLD %.6g ± %.2g (top-16 %.6g), "
            "mean Δp %.3g %%, RMS Δp %.3g %%, same top %.2f %%, router exact %.2f %%, floor KLD %.3g\n", c->name, C,
            C * chunks, (unsigned long long)rc.n, kld, num(exact, "kld.mean_unc"), num(top, "kld.mean"),
            100 * num(exact, "delta_p.mean"), 100 * num(exact, "delta_p.rms"), 100 * num(exact, "same_top.rate"),
            100 * num(exact, "router_agreement.exact_set_rate"), num(exact, "noise_floor.kld.mean"));
    json_decref(exact);
    json_decref(top);
    free(ids);
    tr_oracle_close(o);
}
END_TEST

/* ---- file integrity --------------------------------------------------------------------------------------------- */

/* A small valid base file (ctx 8, 16 tokens, top-4, routes) in memory. */
static uint8_t *small_file(const tr_oracle_case *c, const char *path, size_t *size)
{
    const char *ids = ids_file(c, 16, "small.ids", NULL);
    cli_result r = cli_run("kld", "base", "-m", c->dir, "--ids-file", ids, "--ctx", "8", "--topk", "4",
                           "--store-routes", "-o", path, "--no-progress", "-q", NULL);
    expect_ok(&r, "kld base (small)");
    cli_result_free(&r);
    char *data;
    ck_assert_int_eq(tr_file_read_all(path, &data, size, NULL), TR_OK);
    uint8_t *b = malloc(*size);
    memcpy(b, data, *size);
    tr_dealloc(data);
    return b;
}

/* Open bytes written to path: the status and the error text. */
static int open_bytes(const char *path, const uint8_t *b, size_t n, tr_error *err)
{
    FILE *f = fopen(path, "wb");
    ck_assert(f && (n == 0 || fwrite(b, 1, n, f) == n) && fclose(f) == 0);
    tr_tlogits *t;
    int rc = tr_tlogits_open(path, &t, err);
    tr_tlogits_close(rc == TR_OK ? t : NULL);
    return rc;
}

START_TEST(test_corruption)
{
    tr_oracle *o = open_oracle();
    const tr_oracle_case *c = find_case(o, "glm4_moe_lite", 0);
    char good[4200], bad[4200];
    snprintf(good, sizeof good, "%s", tmp_path("good.tlogits"));
    snprintf(bad, sizeof bad, "%s", tmp_path("base.tlogits"));
    size_t n;
    uint8_t *b = small_file(c, good, &n);
    tr_error err;
    ck_assert_int_eq(open_bytes(bad, b, n, &err), TR_OK);
    /* every byte, flipped */
    uint8_t *m = malloc(n + 1);
    size_t step = tr_test_under_valgrind() ? 7 : 1, wrong = 0, first_wrong = 0;
    for (size_t i = 0; i < n; i += step) {
        memcpy(m, b, n);
        m[i] ^= 0x5a;
        int rc = open_bytes(bad, m, n, &err);
        const char *want = i < 8 ? "not a .tlogits file" : i < 12 ? "unsupported .tlogits version"
                                                                  : "trailer hash mismatch (file truncated or modified)";
        if (rc != TR_E_INPUT || !strstr(err.text, want) || !strstr(err.text, "base.tlogits: TR_E_INPUT: "))
            first_wrong = wrong++ ? first_wrong : i;
    }
    ck_assert_msg(!wrong, "%zu flipped bytes not rejected as expected (first at offset %zu of %zu)", wrong,
                  first_wrong, n);
    /* truncations and an appended byte */
    const size_t cuts[] = {0, 5, 8, 11, 12, 40, n / 2, n - 9, n - 8, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        ck_assert_int_eq(open_bytes(bad, b, cuts[i], &err), TR_E_INPUT);
        ck_assert_msg(strstr(err.text, "trailer hash mismatch (file truncated or modified)"), "cut %zu: %s", cuts[i],
                      err.text);
    }
    memcpy(m, b, n);
    m[n] = '\n';
    ck_assert_int_eq(open_bytes(bad, m, n + 1, &err), TR_E_INPUT);
    ck_assert_ptr_nonnull(strstr(err.text, "trailer hash mismatch"));
    /* wrong magic and wrong version through the CLI: exit 2 with the message */
    memcpy(m, b, n);
    memcpy(m, "TRLGTS02", 8);
    open_bytes(bad, m, n, &err);
    cli_result r = cli_run("kld", "eval", "-m", c->dir, "--base-logits", bad, NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "base.tlogits: TR_E_INPUT: not a .tlogits file (magic \"TRLGTS02\""));
    cli_result_free(&r);
    memcpy(m, b, n);
    m[8] = 2;
    open_bytes(bad, m, n, &err);
    r = cli_run("kld", "eval", "-m", c->dir, "--base-logits", bad, NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "unsupported .tlogits version 2 (this build reads version 1)"));
    cli_result_free(&r);
    memcpy(m, b, n);
    m[n / 2] ^= 1;
    open_bytes(bad, m, n, &err);
    r = cli_run("kld", "eval", "-m", c->dir, "--base-logits", bad, NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "trellis kld eval: error: "));
    ck_assert_ptr_nonnull(strstr(r.err, "base.tlogits: TR_E_INPUT: trailer hash mismatch (file truncated or modified)"));
    cli_result_free(&r);
    free(m);
    free(b);
    tr_oracle_close(o);
}
END_TEST

/* Hashes intact, counts inconsistent: the reader checks the header against the protocol; the writer refuses to
 * finish with a record count other than the header's and removes the file. */
START_TEST(test_layout_checks)
{
    const char *path = tmp_path("layout.tlogits");
    int32_t tokens[16];
    for (int i = 0; i < 16; i++)
        tokens[i] = i;
    tr_tlogits_meta meta = {"glm4_moe_lite", "m", "cpu", NULL, NULL, NULL, "x", {TR_PROTOCOL_LLAMACPP, 8, 0, -1, 2},
                            32, 4, 16, 5, 0, 0};   /* 2 chunks of 8 score 6 positions, not 5 */
    float row[32];
    for (int i = 0; i < 32; i++)
        row[i] = (float)(i % 7) - 0.25f * (float)i;
    tr_kld_work w;
    ck_assert_int_eq(tr_kld_work_init(&w, 32, 4, 0, NULL), TR_OK);
    tr_kld_rec_build(&w, row, 3);
    tr_tlogits_writer *wr;
    tr_error err;
    ck_assert_int_eq(tr_tlogits_create(path, &meta, tokens, &wr, &err), TR_OK);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(tr_tlogits_append(wr, &w.rec, &err), TR_OK);
    ck_assert_int_eq(tr_tlogits_finish(wr, NULL, &err), TR_OK);
    tr_tlogits *f;
    ck_assert_int_eq(tr_tlogits_open(path, &f, &err), TR_E_INPUT);
    ck_assert_msg(strstr(err.text, "llamacpp protocol over 16 tokens gives 2 chunks and 6 records, the header says "
                                   "2 and 5"), "%s", err.text);
    /* a correct count opens; records decode as written */
    meta.n_records = 6;
    ck_assert_int_eq(tr_tlogits_create(path, &meta, tokens, &wr, &err), TR_OK);
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(tr_tlogits_append(wr, &w.rec, &err), TR_OK);
    json_t *extra = json_pack("{s:n}", "noise_floor");
    ck_assert_int_eq(tr_tlogits_finish(wr, extra, &err), TR_OK);
    json_decref(extra);
    ck_assert_msg(tr_tlogits_open(path, &f, &err) == TR_OK, "%s", err.text);
    tr_kld_work w2;
    ck_assert_int_eq(tr_kld_work_init(&w2, 32, 4, 0, NULL), TR_OK);
    ck_assert_int_eq(tr_tlogits_record(f, 5, &w2.rec, &err), TR_OK);
    ck_assert(w2.rec.lse == w.rec.lse && w2.rec.tail_mass == w.rec.tail_mass && w2.rec.target == 3);
    ck_assert(!memcmp(w2.rec.ids, w.rec.ids, 4 * sizeof *w.rec.ids));
    ck_assert(!memcmp(w2.rec.logits, w.rec.logits, 4 * sizeof *w.rec.logits));
    ck_assert_int_eq(tr_tlogits_record(f, 6, &w2.rec, &err), TR_E_INPUT);
    tr_kld_floor fl;
    ck_assert_int_eq(tr_kld_floor_parse(f->trailer, f->path, &fl, &err), TR_OK);
    ck_assert_int_eq(fl.present, 0);
    tr_tlogits_close(f);
    /* too few records: TR_E_INTERNAL, no file left behind */
    ck_assert_int_eq(tr_tlogits_create(path, &meta, tokens, &wr, &err), TR_OK);
    ck_assert_int_eq(tr_tlogits_append(wr, &w.rec, &err), TR_OK);
    ck_assert_int_eq(tr_tlogits_finish(wr, NULL, &err), TR_E_INTERNAL);
    ck_assert(!tr_path_exists(path));
    tr_kld_work_free(&w);
    tr_kld_work_free(&w2);
}
END_TEST

/* Every allocation point of the writer and the reader fails cleanly (TR_E_NOMEM, nothing leaked, no file left). */
START_TEST(test_alloc_failures)
{
    const char *path = tmp_path("alloc.tlogits");
    int32_t tokens[16] = {0};
    tr_tlogits_meta meta = {"glm4_moe_lite", "m", "cpu", NULL, NULL, NULL, "x", {TR_PROTOCOL_LLAMACPP, 8, 0, -1, 2},
                            32, 4, 16, 6, 1, 2};
    float row[32];
    for (int i = 0; i < 32; i++)
        row[i] = (float)((i * 7) % 11);
    tr_kld_work w;
    ck_assert_int_eq(tr_kld_work_init(&w, 32, 4, 2, NULL), TR_OK);
    tr_kld_rec_build(&w, row, 1);
    w.rec.routes[0] = 3, w.rec.routes[1] = 5;
    json_t *extra = json_pack("{s:{s:f}}", "base", "ppl", 12.5);
    unsigned long n;
    for (n = 1;; n++) {
        tr_alloc_fail_at(n);
        tr_tlogits_writer *wr = NULL;
        tr_error err;
        int rc = tr_tlogits_create(path, &meta, tokens, &wr, &err);
        for (int i = 0; rc == TR_OK && i < 6; i++)
            rc = tr_tlogits_append(wr, &w.rec, &err);
        if (rc == TR_OK)
            rc = tr_tlogits_finish(wr, extra, &err);
        else
            tr_tlogits_abort(wr);
        int fired = tr_alloc_fired();
        tr_alloc_fail_at(0);
        if (!fired) {
            ck_assert_msg(rc == TR_OK, "%s", err.text);
            break;
        }
        ck_assert_msg(rc == TR_E_NOMEM, "writer point %lu: %d %s", n, rc, err.text);
        ck_assert(!tr_path_exists(path));
    }
    ck_assert_uint_gt(n, 3);
    for (n = 1;; n++) {
        tr_alloc_fail_at(n);
        tr_tlogits *f = NULL;
        tr_error err;
        int32_t *t = NULL;
        int rc = tr_tlogits_open(path, &f, &err);
        if (rc == TR_OK)
            rc = tr_tlogits_tokens(f, &t, &err);
        int fired = tr_alloc_fired();
        tr_alloc_fail_at(0);
        tr_dealloc(t);
        tr_tlogits_close(f);
        if (!fired) {
            ck_assert_msg(rc == TR_OK, "%s", err.text);
            break;
        }
        ck_assert_msg(rc == TR_E_NOMEM, "reader point %lu: %d %s", n, rc, err.text);
    }
    ck_assert_uint_gt(n, 3);
    json_decref(extra);
    tr_kld_work_free(&w);
}
END_TEST

START_TEST(test_vocab_mismatch)
{
    tr_oracle *o = open_oracle();
    const tr_oracle_case *g = find_case(o, "glm4_moe_lite", 0), *q = find_case(o, NULL, g->V);
    if (!q) {
        tr_oracle_close(o);
        return;   /* every case has the same vocabulary: nothing to mismatch */
    }
    char path[4200];
    snprintf(path, sizeof path, "%s", tmp_path("base.tlogits"));
    size_t n;
    free(small_file(g, path, &n));
    cli_result r = cli_run("kld", "eval", "-m", q->dir, "--base-logits", path, NULL);
    ck_assert_int_eq(r.status, 2);
    char want[128];
    snprintf(want, sizeof want, "base.tlogits: TR_E_INPUT: n_vocab %u, candidate has %u", g->V, q->V);
    ck_assert_msg(strstr(r.err, want), "%.3000s", r.err);
    cli_result_free(&r);
    tr_oracle_close(o);
}
END_TEST

START_TEST(test_cli_contract)
{
    tr_oracle *o = open_oracle();
    const tr_oracle_case *c = find_case(o, "glm4_moe_lite", 0);
    const char *ids = ids_file(c, 20, "short.ids", NULL), *out = tmp_path("cli.tlogits");
    struct {
        const char *a[12];
        int status;
        const char *msg;
    } cases[] = {
        {{"kld", NULL}, 2, "give a subcommand"},
        {{"kld", "nope", NULL}, 2, "unknown subcommand"},
        {{"kld", "--help", NULL}, 0, NULL},
        {{"kld", "base", "--help", NULL}, 0, NULL},
        {{"kld", "eval", "--help", NULL}, 0, NULL},
        {{"kld", "base", "-m", c->dir, "--ids-file", ids, NULL}, 2, "-o OUT.tlogits is required"},
        {{"kld", "base", "-m", c->dir, "--ids-file", ids, "-o", out, "--topk", "0"}, 2, "--topk: expected"},
        {{"kld", "base", "-m", c->dir, "--ids-file", ids, "-o", out, "--topk", "x"}, 2, "--topk: expected"},
        {{"kld", "base", "-m", c->dir, "--ids-file", ids, "-o", out, "--ctx", "16"}, 2,
         "short.ids: TR_E_INPUT: 20 tokens, need at least 2*ctx = 32"},
        {{"kld", "eval", "-m", c->dir, NULL}, 2, "--base-logits FILE.tlogits is required"},
        {{"kld", "eval", "-m", c->dir, "--base-logits", "/nonexistent/b.tlogits", NULL}, 2, "/nonexistent/b.tlogits"},
        {{"kld", "eval", "-m", c->dir, "--base-logits", out, "--ctx", "16"}, 2, "unknown option --ctx"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *const *a = cases[i].a;
        cli_result r = cli_run(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], NULL);
        ck_assert_msg(r.status == cases[i].status, "case %zu: exit %d\n%s", i, r.status, r.err);
        ck_assert_msg(!cases[i].msg || strstr(r.err, cases[i].msg), "case %zu: %s", i, r.err);
        cli_result_free(&r);
    }
    ck_assert(!tr_path_exists(out));   /* failed runs leave no output */
    /* --topk above V is capped at V */
    const char *ids64 = ids_file(c, 64, "cap.ids", NULL);
    cli_result r = cli_run("kld", "base", "-m", c->dir, "--ids-file", ids64, "--ctx", "16", "--chunks", "2", "--topk",
                           "100000", "-o", out, "-q", NULL);
    expect_ok(&r, "kld base --topk 100000");
    cli_result_free(&r);
    tr_tlogits *f;
    tr_error err;
    ck_assert_msg(tr_tlogits_open(out, &f, &err) == TR_OK, "%s", err.text);
    ck_assert_uint_eq(f->K, c->V);
    ck_assert_uint_eq(f->n_chunks, 2);
    ck_assert_uint_eq(f->n_tokens, 32);
    ck_assert_uint_eq(f->n_records, 2 * 7);
    tr_tlogits_close(f);
    tr_oracle_close(o);
}
END_TEST

Suite *suite_kld(void)
{
    Suite *s = suite_create("kld");
    TCase *t = tcase_create("units");
    tcase_add_test(t, test_quantile_type7);
    tcase_add_test(t, test_record_math);
    tcase_add_test(t, test_layout_checks);
    tcase_add_test(t, test_alloc_failures);
    suite_add_tcase(s, t);
    t = tcase_create("two-pass");
    tcase_set_timeout(t, tr_test_under_valgrind() ? 1200 : 60);
    tcase_add_test(t, test_self_check);
    tcase_add_test(t, test_quantized_candidate);
    tcase_add_test(t, test_corruption);
    tcase_add_test(t, test_vocab_mismatch);
    tcase_add_test(t, test_cli_contract);
    suite_add_tcase(s, t);
    return s;
}
