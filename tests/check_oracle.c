/*
 * check_oracle.c — ENGINE.md §7 against the HF-transformers oracle cases.
 *
 * Driven only by the folder's index.json (no case names or sizes here): golden/oracle by default, or the folder in
 * TR_ORACLE_DIR, so the same suite runs unchanged on a held-out set.  golden/oracle must carry MANIFEST.json, which
 * is verified before anything runs.  Every case runs on every backend (ref, cpu), and the routes of cpu must agree
 * with ref's.  The CLI contracts (`generate … --greedy --ignore-eos --print-ids`, `logits`) are checked on every case.
 */
#include "cli_run.h"
#include "tests.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/oracle.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const BACKENDS[] = {"ref", "cpu"};

static const char *oracle_dir(void)
{
    const char *d = getenv("TR_ORACLE_DIR");
    return d && *d ? d : "golden/oracle";
}

static tr_oracle *open_oracle(void)
{
    tr_oracle *o;
    tr_error err;
    ck_assert_msg(tr_oracle_open(oracle_dir(), &o, &err) == TR_OK, "%s", err.text);
    ck_assert_uint_gt(tr_oracle_case_count(o), 0);
    return o;
}

START_TEST(test_manifest_present)
{
    if (getenv("TR_ORACLE_DIR") && *getenv("TR_ORACLE_DIR"))
        return;   /* other folders are checked through each oracle.json's sha256 */
    ck_assert(tr_path_is_file("golden/oracle/MANIFEST.json"));
    tr_oracle_close(open_oracle());
}
END_TEST

/* Acceptance 1–6 for every case on every backend; cross-backend route agreement. */
START_TEST(test_cases)
{
    tr_oracle *o = open_oracle();
    for (uint32_t i = 0; i < tr_oracle_case_count(o); i++) {
        const tr_oracle_case *c = tr_oracle_case_at(o, i);
        tr_oracle_result first;
        for (size_t b = 0; b < sizeof BACKENDS / sizeof *BACKENDS; b++) {
            tr_oracle_result r;
            tr_error err;
            ck_assert_msg(tr_oracle_run_case(o, i, BACKENDS[b], 0, &r, &err) == TR_OK, "%s: %s", c->name, err.text);
            ck_assert_msg(r.ok, "%s on %s: %s", c->name, BACKENDS[b], r.detail);
            ck_assert(r.logits_ok && r.hidden_ok && r.greedy_ok && r.pvd_ok && r.routes_ok);
            ck_assert(!r.mla_checked || r.mla_ok);
            ck_assert_msg(isfinite(r.min_margin) || r.min_margin > 0, "%s: no routing decisions seen", c->name);
            if (b == 0)
                first = r;
            else {
                char why[160];
                ck_assert_msg(tr_oracle_routes_agree(&first.routes, &r.routes, why, sizeof why), "%s: %s vs %s: %s",
                              c->name, BACKENDS[0], BACKENDS[b], why);
                tr_oracle_result_release(&r);
            }
        }
        tr_oracle_result_release(&first);
    }
    tr_oracle_close(o);
}
END_TEST

static char *join_ids(const int32_t *ids, uint32_t n)
{
    char *s = malloc((size_t)n * 12 + 1);
    size_t k = 0;
    for (uint32_t i = 0; i < n; i++)
        k += (size_t)sprintf(s + k, "%s%d", i ? "," : "", ids[i]);
    s[k] = 0;
    return s;
}

/* ENGINE.md §8: `trellis generate -m DIR --ids … -n N --greedy --ignore-eos --print-ids` reproduces HF greedy. */
START_TEST(test_cli_greedy)
{
    tr_oracle *o = open_oracle();
    for (uint32_t i = 0; i < tr_oracle_case_count(o); i++) {
        const tr_oracle_case *c = tr_oracle_case_at(o, i);
        char *prompt = join_ids(c->prompt_ids, c->n_prompt), *want = join_ids(c->output_ids, c->n_output), n[16];
        snprintf(n, sizeof n, "%u", c->n_output);
        cli_result r = cli_run("generate", "-m", c->dir, "--ids", prompt, "-n", n, "--greedy", "--ignore-eos",
                               "--print-ids", NULL);
        ck_assert_msg(r.status == 0, "%s: %s", c->name, r.err);
        size_t len = strlen(r.out);
        ck_assert(len > 0 && r.out[len - 1] == '\n');
        r.out[len - 1] = 0;
        const char *last = strrchr(r.out, '\n') ? strrchr(r.out, '\n') + 1 : r.out;
        ck_assert_msg(!strcmp(last, want), "%s: got %s, oracle %s", c->name, last, want);
        cli_result_free(&r);
        free(prompt);
        free(want);
    }
    tr_oracle_close(o);
}
END_TEST

/* `trellis logits` writes [T][V] fp32 LE within acceptance 1's bound. */
START_TEST(test_cli_logits)
{
    tr_oracle *o = open_oracle();
    for (uint32_t i = 0; i < tr_oracle_case_count(o); i++) {
        const tr_oracle_case *c = tr_oracle_case_at(o, i);
        char *ids = join_ids(c->input_ids, c->T), out[4200];
        snprintf(out, sizeof out, "%s/oracle-logits-%u.f32", tr_test_tmpdir(), i);
        cli_result r = cli_run("logits", "-m", c->dir, "--ids", ids, "--out", out, "-q", NULL);
        ck_assert_msg(r.status == 0, "%s: %s", c->name, r.err);
        char *data;
        size_t n;
        ck_assert_int_eq(tr_file_read_all(out, &data, &n, NULL), TR_OK);
        ck_assert_uint_eq(n, (size_t)c->T * c->V * 4);
        const float *got = (const float *)data;
        double err = 0, mx = 0;
        for (size_t k = 0; k < (size_t)c->T * c->V; k++) {
            double d = fabs((double)got[k] - c->logits[k]);
            err = d > err || isnan(d) ? d : err;
            mx = fabs(c->logits[k]) > mx ? fabs(c->logits[k]) : mx;
        }
        ck_assert_msg(err <= 1e-4 * mx + 1e-4, "%s: logits max |Δ| %.3g", c->name, err);
        tr_dealloc(data);
        cli_result_free(&r);
        free(ids);
    }
    tr_oracle_close(o);
}
END_TEST

/* `trellis golden verify --oracle DIR --json -` passes and reports every case on both backends. */
START_TEST(test_cli_verify)
{
    cli_result r = cli_run("golden", "verify", "--oracle", oracle_dir(), "--json", "-", NULL);
    ck_assert_msg(r.status == 0, "%.2000s%.2000s", r.out, r.err);
    ck_assert_ptr_nonnull(strstr(r.out, "\"schema\": \"trellis.oracle_verify/1\""));
    ck_assert_ptr_nonnull(strstr(r.out, "\"FAIL\": 0"));
    ck_assert_ptr_nonnull(strstr(r.out, "\"min_margin\""));
    cli_result_free(&r);
}
END_TEST

static void flip_byte(const char *path, size_t at)
{
    char *data;
    size_t n;
    ck_assert_int_eq(tr_file_read_all(path, &data, &n, NULL), TR_OK);
    ck_assert_uint_gt(n, at);
    data[at] ^= 1;
    ck_assert_int_eq(tr_file_write_all(path, data, n, NULL), TR_OK);
    tr_dealloc(data);
}

/* Import copies verbatim with a manifest; tampering is named; a differing file needs --force. */
START_TEST(test_import)
{
    if (getenv("TR_ORACLE_DIR") && *getenv("TR_ORACLE_DIR"))
        return;
    char dst[4200], victim[4600];
    snprintf(dst, sizeof dst, "%s/oracle-copy", tr_test_tmpdir());
    tr_error err;
    ck_assert_msg(tr_oracle_import("golden/oracle", dst, 0, NULL, &err) == TR_OK, "%s", err.text);
    ck_assert_msg(tr_oracle_import("golden/oracle", dst, 0, NULL, &err) == TR_OK, "%s", err.text);   /* no-op */
    tr_oracle *o;
    ck_assert_int_eq(tr_oracle_open(dst, &o, &err), TR_OK);
    char name[256];
    snprintf(name, sizeof name, "%s", tr_oracle_case_at(o, 0)->name);
    snprintf(victim, sizeof victim, "%s/%s/hidden.f32", dst, name);
    tr_oracle_close(o);
    flip_byte(victim, 100);
    ck_assert_int_eq(tr_oracle_open(dst, &o, &err), TR_E_INPUT);
    ck_assert_msg(strstr(err.text, "hidden.f32: TR_E_INPUT: sha256") != NULL, "%s", err.text);
    ck_assert_int_eq(tr_oracle_import("golden/oracle", dst, 0, NULL, &err), TR_E_INPUT);
    ck_assert_msg(strstr(err.text, "use --force to overwrite") != NULL, "%s", err.text);
    ck_assert_int_eq(tr_oracle_import("golden/oracle", dst, 1, NULL, &err), TR_OK);
    ck_assert_int_eq(tr_oracle_open(dst, &o, &err), TR_OK);
    tr_oracle_close(o);
    /* without a manifest, each logits.f32 is checked against its oracle.json */
    char man[4600], logits[4600];
    snprintf(man, sizeof man, "%s/MANIFEST.json", dst);
    ck_assert_int_eq(remove(man), 0);
    snprintf(logits, sizeof logits, "%s/%s/logits.f32", dst, name);
    flip_byte(logits, 8);
    ck_assert_int_eq(tr_oracle_open(dst, &o, &err), TR_E_INPUT);
    ck_assert_msg(strstr(err.text, "logits.f32: TR_E_INPUT: sha256") != NULL, "%s", err.text);
    /* the CLI form */
    cli_result r = cli_run("golden", "import-oracle", "golden/oracle", "--out", dst, NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "differs from"));
    cli_result_free(&r);
    r = cli_run("golden", "import-oracle", "golden/oracle", "--out", dst, "--force", NULL);
    ck_assert_int_eq(r.status, 0);
    cli_result_free(&r);
}
END_TEST

Suite *suite_oracle(void)
{
    Suite *s = suite_create("oracle");
    TCase *t = tcase_create("oracle");
    tcase_set_timeout(t, 300);
    tcase_add_test(t, test_manifest_present);
    tcase_add_test(t, test_cases);
    tcase_add_test(t, test_cli_greedy);
    tcase_add_test(t, test_cli_logits);
    tcase_add_test(t, test_cli_verify);
    tcase_add_test(t, test_import);
    suite_add_tcase(s, t);
    return s;
}
