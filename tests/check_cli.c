/*
 * check_cli.c — the `trellis` commands of the format layer, run in-process: codebook, dequant, inspect, golden
 * verify/gen, usage errors and exit codes (HARNESS.md §8).
 */
#include "tests.h"
#include "cli_run.h"
#include "trellis/hash.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *tmp_path(const char *name)
{
    static char p[8][4200];
    static int slot;
    char *s = p[slot++ % 8];
    snprintf(s, 4200, "%s/%s", tr_test_tmpdir(), name);
    return s;
}

static void sh(const char *cmd)
{
    ck_assert_msg(system(cmd) == 0, "%s", cmd);
}

START_TEST(test_top_level)
{
    cli_result r = cli_run("--version", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert(strncmp(r.out, "trellis ", 8) == 0 && strstr(r.out, "git "));
    cli_result_free(&r);
    r = cli_run("--help", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert(strstr(r.out, "inspect") && strstr(r.out, "golden"));
    cli_result_free(&r);
    r = cli_run("frobnicate", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert(strstr(r.err, "unknown command \"frobnicate\""));
    cli_result_free(&r);
    r = cli_run(NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
    static const char *const cmds[] = {"inspect", "dequant", "codebook", "golden"};
    for (int i = 0; i < 4; i++) {
        r = cli_run(cmds[i], "--help", NULL);
        ck_assert_int_eq(r.status, 0);
        ck_assert(strstr(r.out, "Usage: trellis"));
        cli_result_free(&r);
        r = cli_run(cmds[i], "--bogus", NULL);
        ck_assert_int_eq(r.status, 2);
        ck_assert_msg(strstr(r.err, "unknown option --bogus"), "%.3000s", r.err);
        cli_result_free(&r);
    }
}
END_TEST

START_TEST(test_codebook)
{
    char *out = tmp_path("lut.bin");
    cli_result r = cli_run("codebook", "mul1", "--out", out, NULL);
    ck_assert_int_eq(r.status, 0);
    cli_result_free(&r);
    char hex[65];
    tr_error err;
    ck_assert_int_eq(tr_sha256_file_hex(out, hex, &err), 0);
    ck_assert_str_eq(hex, "bc48d02cb1c14939dc47b90f870dd689d63e3b1ab69a157e65538db68677a6c8");
    r = cli_run("codebook", "grid:3", "-o", out, NULL);
    ck_assert_int_eq(r.status, 0);
    cli_result_free(&r);
    ck_assert_int_eq(tr_sha256_file_hex(out, hex, &err), 0);
    ck_assert_str_eq(hex, "c0bac775b87219dd919bea59db75f8f7363a4b0f917e4712a57f46c867e3965f");
    static const char *const bad[] = {"grid:9", "grid:", "grid:2x", "qtip"};
    for (int i = 0; i < 4; i++) {
        r = cli_run("codebook", bad[i], "--out", out, NULL);
        ck_assert_int_eq(r.status, 2);
        cli_result_free(&r);
    }
    r = cli_run("codebook", "3inst", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
    r = cli_run("codebook", "3inst", "--out", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
    r = cli_run("codebook", "3inst", "--out", "/nonexistent/dir/x.bin", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_msg(strstr(r.err, "/nonexistent/dir/x.bin: TR_E_IO: cannot create"), "%.3000s", r.err);
    cli_result_free(&r);
}
END_TEST

START_TEST(test_dequant)
{
    char *out = tmp_path("w.f16");
    const char *name = "model.layers.1.mlp.experts.1.up_proj.weight";
    cli_result r = cli_run("dequant", "golden/foreign/v2_moe", name, "--out", out, NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    cli_result_free(&r);
    char cmd[8500];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' 'golden/foreign/v2_moe.expected/%s.w16'", out, name);
    sh(cmd);
    r = cli_run("dequant", "-m", "golden/foreign/v2_moe", "model.layers.1.mlp.experts.9.up_proj.weight", "--out", out,
                NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_msg(strstr(r.err, "trellis dequant: error: model.layers.1.mlp.experts.9.up_proj.weight: "
                                "TR_E_TENSOR_MISSING: no quantized tensor of that name"), "%.3000s", r.err);
    cli_result_free(&r);
    r = cli_run("dequant", "tests/data/bad/ck_indices_size", "x", "--out", out, NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert(strstr(r.err, "TR_E_QSIZE"));
    cli_result_free(&r);
    r = cli_run("dequant", "golden/foreign/v2_moe", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
}
END_TEST

START_TEST(test_inspect)
{
    cli_result r = cli_run("inspect", "golden/checkpoint/ref_moe_v3", "--json", NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    json_error_t jerr;
    json_t *doc = json_loads(r.out, 0, &jerr);
    ck_assert_msg(doc != NULL, "%s", jerr.text);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "schema")), "trellis.inspect/1");
    ck_assert_str_eq(json_string_value(json_object_get(doc, "layout")), "trellis_v3");
    ck_assert_uint_eq(json_array_size(json_object_get(doc, "quantized")), 17);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(doc, "bits_histogram"), "6")), 3);
    json_t *tuples = json_object_get(json_object_get(doc, "bit_tuples"), "1");
    ck_assert_int_eq(json_integer_value(json_object_get(tuples, "6-2-3")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(tuples, "shared:4-4-4")), 1);
    double bpw = json_real_value(json_object_get(doc, "average_bpw"));
    ck_assert(bpw > 2 && bpw < 8);
    json_decref(doc);
    cli_result_free(&r);

    r = cli_run("inspect", "golden/foreign/v3_dense_sharded", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert(strstr(r.out, "layout trellis_v3, 6 quantized tensors"));
    ck_assert(strstr(r.out, "average bits per weight (index bits): 3.2764"));
    ck_assert(strstr(r.out, "warning: golden/foreign/v3_dense_sharded/model-00001-of-00002.safetensors: TR_W_MISALIGNED"));
    cli_result_free(&r);

    char *json = tmp_path("inspect.json");
    r = cli_run("inspect", "golden/foreign/v3_moe_single_noweight/model.safetensors", "--json", json, NULL);
    ck_assert_int_eq(r.status, 0);
    cli_result_free(&r);
    doc = json_load_file(json, 0, &jerr);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "kind")), "file");
    ck_assert_uint_gt(json_array_size(json_object_get(doc, "warnings")), 0);
    json_decref(doc);
    r = cli_run("inspect", "golden/foreign/v3_moe_single_noweight/model.safetensors", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert(strstr(r.out, "valid safetensors file"));
    cli_result_free(&r);

    r = cli_run("inspect", "/nonexistent/model", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_str_eq(r.err, "trellis inspect: error: /nonexistent/model: TR_E_IO: not found\n");
    cli_result_free(&r);
    r = cli_run("inspect", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
    r = cli_run("inspect", "a", "b", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
}
END_TEST

START_TEST(test_golden)
{
    cli_result r = cli_run("golden", "verify", "golden", "--id", "grid/*", "--json", "-", NULL);
    ck_assert_msg(r.status == 0, "%.2000s%.2000s", r.out, r.err);
    json_error_t jerr;
    json_t *doc = json_loads(r.out, 0, &jerr);
    ck_assert_ptr_nonnull(doc);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(doc, "summary"), "PASS")), 7);
    json_decref(doc);
    cli_result_free(&r);

    /* a copy with one corrupted output byte fails (exit 1); a missing file is unreadable (exit 2) */
    char *copy = tmp_path("golden_copy");
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && cp -r golden/index.json golden/grid golden/lut "
             "golden/packing '%s'/", copy, copy, copy);
    sh(cmd);
    r = cli_run("golden", "verify", copy, "--id", "packing/*", NULL);
    ck_assert_int_eq(r.status, 0);
    cli_result_free(&r);
    snprintf(cmd, sizeof cmd, "printf '\\x00' | dd of='%s/packing/example_b/w16.f16' bs=1 seek=5 conv=notrunc "
             "status=none", copy);
    sh(cmd);
    r = cli_run("golden", "verify", copy, "--id", "packing/example_b", NULL);
    ck_assert_int_eq(r.status, 1);
    ck_assert_msg(strstr(r.out, "FAIL") && strstr(r.out, "w16.f16: sha256"), "%.3000s", r.out);
    cli_result_free(&r);
    /* gen refuses to overwrite a changed output without --force, then restores it with --force */
    r = cli_run("golden", "gen", copy, "--id", "packing/example_b", NULL);
    ck_assert_int_eq(r.status, 1);
    ck_assert_msg(strstr(r.out, "refused"), "%.3000s", r.out);
    cli_result_free(&r);
    r = cli_run("golden", "gen", copy, "--id", "packing/example_b", "--force", NULL);
    ck_assert_msg(r.status == 0, "%.2000s%.2000s", r.out, r.err);
    ck_assert(strstr(r.out, "changed  packing/example_b/w16.f16"));
    cli_result_free(&r);
    r = cli_run("golden", "verify", copy, "--id", "packing/*", NULL);
    ck_assert_int_eq(r.status, 0);
    cli_result_free(&r);
    snprintf(cmd, sizeof cmd, "rm '%s/lut/mcg.f16'", copy);
    sh(cmd);
    r = cli_run("golden", "verify", copy, "--id", "lut/*", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert(strstr(r.out, "lut/mcg.f16: cannot read"));
    cli_result_free(&r);
    /* a bound comparison is UNSUPPORTED at this stage, never PASS */
    snprintf(cmd, sizeof cmd, "sed -i '0,/\"compare\": \"bitwise\"/s//\"compare\": \"bound\"/' '%s/index.json'", copy);
    sh(cmd);
    r = cli_run("golden", "verify", copy, "--id", "lut/3inst", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert_msg(strstr(r.out, "UNSUPPORTED"), "%.3000s", r.out);
    cli_result_free(&r);

    r = cli_run("golden", "verify", "/nonexistent", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
    r = cli_run("golden", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
    r = cli_run("golden", "frob", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
}
END_TEST

Suite *suite_cli(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("commands");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_top_level);
    tcase_add_test(tc, test_codebook);
    tcase_add_test(tc, test_dequant);
    tcase_add_test(tc, test_inspect);
    tcase_add_test(tc, test_golden);
    suite_add_tcase(s, tc);
    return s;
}
