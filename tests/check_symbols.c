/*
 * check_symbols.c — the foreign kernel symbol table (KERNELS.md §4, §4.14) and `trellis symbols` (MOE.md §5.5) on the
 * folders of tests/data/metal and on trees built in a temporary directory: statuses, files and lines, gated flags,
 * comments/strings/templates that must not count, bytewise path order, exit codes 0/1/2 and the JSON members.
 */
#include "tests.h"
#include "cli_run.h"
#include "trellis/kernel_symbols.h"
#include "trellis/moe.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DATA "tests/data/metal/"

/* ---- the symbol table -------------------------------------------------------------------------------------------- */

static const char *const ops[] = {
    "dequant_grid", "sign_flip", "hadamard", "gemm_trellis", "gemm_trellis_swiglu", "gemm_trellis_qkv", "expert_ffn",
    "moe_swiglu", "router_topk", "router_topk+moe_group", "moe_count", "moe_offsets", "moe_scatter", "moe_group",
    "validate_expert_ids", "utility", "moe_gather", "moe_combine", "cast_f16",
};

static int known_op(const char *op)
{
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (strcmp(op, ops[i]) == 0)
            return 1;
    return 0;
}

START_TEST(test_symbol_table)
{
    size_t n = tr_kernel_symbol_count(), bad = 0, moe_swiglu = 0, probed = 0;
    ck_assert_uint_eq(n, 131);                                         /* §4.1-§4.11: 13+2+22+11+2+1+1+18+19+17+25 */
    for (size_t i = 0; i < n; i++) {
        const tr_kernel_symbol *s = tr_kernel_symbol_at(i);
        bad += tr_kernel_symbol_find(s->name) != s;                    /* unique names */
        bad += !known_op(s->op) || !s->section || strncmp(s->section, "4.", 2) != 0;
        bad += tr_kernel_symbol_unmapped_family(s->name) != NULL;      /* no overlap with §4.14 */
        bad += s->acc && strcmp(s->acc, "f16") && strcmp(s->acc, "f32") && strcmp(s->acc, "data format");
        for (const char *c = s->name; *c; c++)
            bad += !((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_');
        moe_swiglu += strcmp(s->op, "moe_swiglu") == 0;
        probed += s->probed;
    }
    ck_assert_uint_eq(bad, 0);
    ck_assert_uint_eq(moe_swiglu, 18);                                  /* the §4.8 table */
    ck_assert_uint_eq(probed, 8);                                       /* §4.4: 2, §4.8: 3 tuples, GEMV, 2 */
    ck_assert_ptr_null(tr_kernel_symbol_at(n));
    ck_assert_ptr_null(tr_kernel_symbol_find("moe_trellis_swiglu_decode_4_4_4"));
    ck_assert_ptr_null(tr_kernel_symbol_find(NULL));
    /* every policy name that KERNELS.md maps is a moe_swiglu variant */
    static const char *const mapped_policy[] = {
        "moe_trellis_swiglu_decode", "moe_trellis_swiglu_prefill4", "moe_trellis_swiglu_prefill4_fp32acc",
        "moe_trellis_swiglu", "moe_trellis_swiglu_fp32acc", "moe_trellis_swiglu_large_batch",
        "moe_trellis_swiglu_decode_gemv", "moe_trellis_swiglu_grouped", "moe_trellis_swiglu_decode_6_2_3",
        "moe_trellis_swiglu_decode_6_3_4", "moe_trellis_swiglu_decode_6_2_4",
    };
    for (size_t i = 0; i < sizeof mapped_policy / sizeof mapped_policy[0]; i++) {
        const tr_kernel_symbol *s = tr_kernel_symbol_find(mapped_policy[i]);
        ck_assert_msg(s && strcmp(s->op, "moe_swiglu") == 0, "%s", mapped_policy[i]);
    }
    const tr_kernel_symbol *s = tr_kernel_symbol_find("moe_trellis_swiglu_large_batch");
    ck_assert_str_eq(s->acc, "f32");
    ck_assert_str_eq(s->variant, "large_batch");
    ck_assert_str_eq(s->adapter, "STACK+H16");
    ck_assert_str_eq(s->launch, "128 thr, (ceil(H/128), batch, top_k)");
    s = tr_kernel_symbol_find("gemm_trellis_w2_decode");
    ck_assert_str_eq(s->op, "gemm_trellis");
    ck_assert_str_eq(s->domain, "b = 2, M <= 16");
    ck_assert(strstr(s->binding, "9 N, 10 gs") != NULL);
    ck_assert_str_eq(tr_kernel_symbol_find("expert_indices_validate")->op, "validate_expert_ids");
    ck_assert_str_eq(tr_kernel_symbol_find("moe_finalize_output")->op, "cast_f16");
    ck_assert_str_eq(tr_kernel_symbol_find("moe_gpu_sort")->op, "moe_group");
    ck_assert_str_eq(tr_kernel_symbol_find("moe_fused_router_sorted_coalesced")->op, "router_topk+moe_group");
    ck_assert_str_eq(tr_kernel_symbol_find("dequant_trellis_bulk")->adapter, "BULK+NOSIGN");
}
END_TEST

START_TEST(test_unmapped_rules)
{
    static const struct {
        const char *name, *family;
    } cases[] = {
        {"moe_dispatch_fused", "FP4 op"}, {"moe_dispatch_optimized_v3", "FP4 op"}, {"moe_dispatch_decode", "FP4 op"},
        {"moe_dispatch_prerouted_simd", "FP4 op"}, {"decode_gemv_fp4_wide", "FP4 op"}, {"expert_gather_fp4", "FP4 op"},
        {"gemm_trellis_int8_decode", "int8 op"}, {"dequant_trellis_int8", "int8 op"}, {"test_int8_gemm", "int8 op"},
        {"moe_gate_entropy_reduce", "gate entropy"}, {"test_moe_topk", "router test kernel"},
        {"expert_gather_transposed", "dense expert-weight gather"}, {"expert_gather", "dense expert-weight gather"},
        {"viterbi_forward", "viterbi"}, {"moe_gather_coalesced", "gather outside the registry contract"},
        {"moe_dispatch", NULL}, {"moe_dispatch_grouped_x", NULL}, {"dequant_trellis_packed", NULL},
        {"my_kernel", NULL}, {"test_moe_topk8", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *f = tr_kernel_symbol_unmapped_family(cases[i].name);
        ck_assert_msg(cases[i].family ? f && strcmp(f, cases[i].family) == 0 : f == NULL, "%s: %s", cases[i].name,
                      f ? f : "(null)");
    }
    ck_assert_uint_eq(tr_unmapped_rule_count(), 25);
    ck_assert(tr_unmapped_rule_at(4)->is_prefix);
    ck_assert_ptr_null(tr_unmapped_rule_at(25));
}
END_TEST

/* ---- CLI helpers ---------------------------------------------------------------------------------------------- */

static json_t *run_json(const char *dir, int want_status, cli_result *r)
{
    *r = cli_run("symbols", "--metal-dir", dir, "--json", NULL);
    ck_assert_msg(r->status == want_status, "exit %d, stderr: %s", r->status, r->err);
    json_error_t e;
    json_t *doc = json_loads(r->out, 0, &e);
    ck_assert_msg(doc != NULL, "%s", e.text);
    return doc;
}

/* The symbols entry of name, or NULL. */
static json_t *entry_of(json_t *doc, const char *name)
{
    json_t *syms = json_object_get(doc, "symbols"), *e;
    size_t i;
    json_array_foreach(syms, i, e) if (strcmp(json_string_value(json_object_get(e, "name")), name) == 0) return e;
    return NULL;
}

static void expect_entry(json_t *doc, const char *name, const char *status, int gated, const char *file_suffix,
                         int line)
{
    json_t *e = entry_of(doc, name);
    ck_assert_msg(e != NULL, "%s not listed", name);
    ck_assert_str_eq(json_string_value(json_object_get(e, "status")), status);
    ck_assert_msg(json_boolean_value(json_object_get(e, "gated")) == gated, "%s gated", name);
    json_t *file = json_object_get(e, "file"), *ln = json_object_get(e, "line");
    if (!file_suffix) {
        ck_assert(json_is_null(file) && json_is_null(ln));
        return;
    }
    const char *f = json_string_value(file);
    size_t n = f ? strlen(f) : 0, m = strlen(file_suffix);
    ck_assert_msg(f && n >= m && strcmp(f + n - m, file_suffix) == 0, "%s: file %s", name, f ? f : "null");
    ck_assert_msg(json_integer_value(ln) == line, "%s: line %lld, expected %d", name, json_integer_value(ln), line);
}

/* Entries sorted by name, each with exactly the members name, status, gated, file, line. */
static void expect_well_formed(json_t *doc)
{
    static const char *const members[] = {"name", "status", "gated", "file", "line"};
    json_t *syms = json_object_get(doc, "symbols"), *e;
    size_t i;
    const char *prev = "";
    json_array_foreach(syms, i, e) {
        const char *key;
        json_t *v;
        size_t k = 0;
        json_object_foreach(e, key, v) ck_assert_str_eq(key, members[k++]);
        ck_assert_uint_eq(k, 5);
        const char *name = json_string_value(json_object_get(e, "name"));
        ck_assert_msg(strcmp(prev, name) < 0, "%s after %s", name, prev);
        prev = name;
    }
    ck_assert_str_eq(json_string_value(json_object_get(doc, "schema")), "trellis.symbols/1");
    ck_assert_str_eq(json_object_iter_key(json_object_iter(doc)), "schema");
    ck_assert(json_is_object(json_object_get(doc, "recommend_kernel")));
    ck_assert(json_is_object(json_object_get(doc, "get_kernel_info")));
}

static long summary(json_t *doc, const char *key)
{
    return (long)json_integer_value(json_object_get(json_object_get(doc, "summary"), key));
}

/* ---- the folders of tests/data/metal ---------------------------------------------------------------------------- */

START_TEST(test_complete)
{
    cli_result r;
    json_t *doc = run_json(DATA "complete", 0, &r);
    expect_well_formed(doc);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "metal_dir")), DATA "complete");
    json_t *files = json_object_get(doc, "files");
    ck_assert_uint_eq(json_array_size(files), 2);               /* bytewise path order: "decode/" < "moe_" */
    ck_assert_str_eq(json_string_value(json_array_get(files, 0)), DATA "complete/decode/specialized.metal");
    ck_assert_str_eq(json_string_value(json_array_get(files, 1)), DATA "complete/moe_generic.metal");
    ck_assert_uint_eq(json_array_size(json_object_get(doc, "symbols")), 12);
    expect_entry(doc, "moe_trellis_swiglu_decode", "present", 0, "moe_generic.metal", 13);
    expect_entry(doc, "moe_trellis_swiglu_prefill4", "present", 0, "moe_generic.metal", 18);
    expect_entry(doc, "moe_trellis_swiglu_prefill4_fp32acc", "present", 0, "moe_generic.metal", 23);
    expect_entry(doc, "moe_trellis_swiglu", "present", 0, "moe_generic.metal", 31);
    expect_entry(doc, "moe_trellis_swiglu_fp32acc", "present", 0, "moe_generic.metal", 36);
    expect_entry(doc, "moe_trellis_swiglu_large_batch", "present", 0, "moe_generic.metal", 41);
    expect_entry(doc, "moe_trellis_swiglu_decode_gemv", "present", 1, "moe_generic.metal", 47);
    expect_entry(doc, "moe_trellis_swiglu_grouped", "present", 1, "moe_generic.metal", 52);
    expect_entry(doc, "moe_trellis_swiglu_decode_6_2_3", "present", 1, "decode/specialized.metal", 12);
    expect_entry(doc, "moe_trellis_swiglu_decode_6_3_4", "present", 1, "decode/specialized.metal", 15);
    expect_entry(doc, "moe_trellis_swiglu_decode_6_2_4", "present", 1, "decode/specialized.metal", 21);
    expect_entry(doc, "moe_trellis_swiglu_decode_4_4_4", "present", 1, "decode/specialized.metal", 18);
    ck_assert_int_eq(summary(doc, "present"), 12);
    ck_assert_int_eq(summary(doc, "missing"), 0);
    ck_assert_int_eq(summary(doc, "missing_generic"), 0);
    ck_assert_int_eq(summary(doc, "unmapped"), 0);
    json_t *rec = json_object_get(doc, "recommend_kernel");
    ck_assert_str_eq(json_string_value(json_object_get(rec, "kernel_name")), "moe_trellis_swiglu_decode_gemv");
    json_t *avail = json_object_get(json_object_get(doc, "get_kernel_info"), "available");
    ck_assert(json_is_true(json_object_get(avail, "moe_trellis_swiglu_decode_6_3_4")));
    ck_assert(json_is_false(json_object_get(avail, "moe_trellis_swiglu_simd")));
    json_decref(doc);
    cli_result_free(&r);
    /* human output; names in comments, strings, directives and the template's own name never appear */
    r = cli_run("symbols", "--metal-dir", DATA "complete/", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert_msg(strstr(r.out, DATA "complete: 2 .metal files, 12 entry points\n") == r.out, "%.3000s", r.out);
    ck_assert(strstr(r.out, "  present       moe_trellis_swiglu_grouped"));
    ck_assert(strstr(r.out, DATA "complete/decode/specialized.metal:12\n"));
    ck_assert(strstr(r.out, "summary: 12 present, 0 missing (0 generic), 0 unreferenced, 0 unmapped\n"));
    ck_assert(!strstr(r.out, "moe_in_") && !strstr(r.out, "moe_decode_tuple"));
    ck_assert_str_eq(r.err, "");
    cli_result_free(&r);
}
END_TEST

START_TEST(test_missing_generic)
{
    cli_result r;
    json_t *doc = run_json(DATA "missing_generic", 1, &r);
    expect_well_formed(doc);
    ck_assert_str_eq(r.err, "trellis symbols: 1 generic policy name missing: moe_trellis_swiglu_prefill4\n");
    expect_entry(doc, "moe_trellis_swiglu_prefill4", "missing", 0, NULL, 0);
    expect_entry(doc, "moe_trellis_swiglu_decode_gemv", "missing", 1, NULL, 0);
    expect_entry(doc, "moe_trellis_swiglu_grouped", "missing", 1, NULL, 0);
    expect_entry(doc, "moe_trellis_swiglu_decode_6_2_3", "missing", 1, NULL, 0);
    expect_entry(doc, "moe_trellis_swiglu_decode_6_3_4", "missing", 1, NULL, 0);
    expect_entry(doc, "moe_trellis_swiglu_decode_6_2_4", "missing", 1, NULL, 0);
    expect_entry(doc, "moe_trellis_swiglu_fp32acc", "present", 0, "moe_partial.metal", 14);
    ck_assert_ptr_null(entry_of(doc, "moe_trellis_swiglu_decode_4_4_4"));   /* other tuples only when present */
    ck_assert_uint_eq(json_array_size(json_object_get(doc, "symbols")), 11);
    ck_assert_int_eq(summary(doc, "present"), 5);
    ck_assert_int_eq(summary(doc, "missing"), 6);
    ck_assert_int_eq(summary(doc, "missing_generic"), 1);
    json_decref(doc);
    cli_result_free(&r);
    r = cli_run("symbols", "--metal-dir", DATA "missing_generic", NULL);
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.out, "  missing       moe_trellis_swiglu_prefill4                   (generic: required)\n"));
    ck_assert(strstr(r.out, "(gated: the policy falls back)"));
    ck_assert(strstr(r.out, "summary: 5 present, 6 missing (1 generic), 0 unreferenced, 0 unmapped\n"));
    cli_result_free(&r);
}
END_TEST

START_TEST(test_extra)
{
    cli_result r;
    json_t *doc = run_json(DATA "extra", 0, &r);
    expect_well_formed(doc);
    ck_assert_uint_eq(json_array_size(json_object_get(doc, "files")), 2);   /* notes.txt is not a source */
    expect_entry(doc, "dequant_trellis_packed", "unreferenced", 0, "extra/b_other.metal", 6);
    expect_entry(doc, "moe_dispatch_fused", "unmapped", 0, "extra/b_other.metal", 10);
    expect_entry(doc, "viterbi_decode_step", "unmapped", 0, "extra/b_other.metal", 13);
    expect_entry(doc, "my_custom_kernel", "unmapped", 0, "extra/b_other.metal", 16);
    expect_entry(doc, "moe_trellis_swiglu", "present", 0, "extra/a_moe.metal", 11);   /* the first definition */
    ck_assert_int_eq(summary(doc, "present"), 6);
    ck_assert_int_eq(summary(doc, "missing"), 5);
    ck_assert_int_eq(summary(doc, "unreferenced"), 1);
    ck_assert_int_eq(summary(doc, "unmapped"), 3);
    json_t *rec = json_object_get(doc, "recommend_kernel");
    ck_assert_str_eq(json_string_value(json_object_get(rec, "kernel_name")), "moe_trellis_swiglu_decode");
    json_decref(doc);
    cli_result_free(&r);
}
END_TEST

/* ---- temporary trees --------------------------------------------------------------------------------------------- */

static const char *tmp(const char *rel)
{
    static char paths[8][4200];
    static int slot;
    char *p = paths[slot++ % 8];
    snprintf(p, sizeof paths[0], "%s/%s", tr_test_tmpdir(), rel);
    return p;
}

static void write_text(const char *rel, const char *text) { tr_test_write(tr_test_tmpdir(), rel, text, strlen(text)); }

START_TEST(test_tree_order_links_and_json_file)
{
    ck_assert_int_eq(mkdir(tmp("tree"), 0755), 0);
    ck_assert_int_eq(mkdir(tmp("tree/sub"), 0755), 0);
    ck_assert_int_eq(mkdir(tmp("elsewhere"), 0755), 0);
    write_text("tree/a.metal", "// a\nkernel void moe_trellis_swiglu(device float *x) {}\n");
    write_text("tree/B.metal", "kernel void moe_trellis_swiglu(device float *x) {}\n"
                               "kernel void moe_trellis_swiglu_decode(device float *x) {}\n");
    write_text("tree/sub/c.metal", "\n\nkernel void moe_trellis_swiglu_decode_8_8_8(device float *x) {}\n"
                                   "kernel void apply_sign_flips_vec4(device half *w) {}\n");
    write_text("elsewhere/hidden.metal", "kernel void hidden_kernel(device float *x) {}\n");
    ck_assert_int_eq(symlink(tmp("elsewhere"), tmp("tree/linked_dir")), 0);
    ck_assert_int_eq(symlink(tmp("tree/sub/c.metal"), tmp("tree/z_link.metal")), 0);
    const char *json_path = tmp("out.json");
    cli_result r = cli_run("symbols", "--metal-dir", tmp("tree"), "--json", json_path, NULL);
    ck_assert_int_eq(r.status, 1);                                          /* four generic names missing */
    ck_assert_str_eq(r.out, "");
    ck_assert(strstr(r.err, "4 generic policy names missing: moe_trellis_swiglu_fp32acc "
                            "moe_trellis_swiglu_large_batch moe_trellis_swiglu_prefill4 "
                            "moe_trellis_swiglu_prefill4_fp32acc\n"));
    cli_result_free(&r);
    json_error_t e;
    json_t *doc = json_load_file(json_path, 0, &e);
    ck_assert_msg(doc != NULL, "%s", e.text);
    expect_well_formed(doc);
    json_t *files = json_object_get(doc, "files");
    ck_assert_uint_eq(json_array_size(files), 4);                           /* the linked directory is skipped */
    static const char *const order[] = {"tree/B.metal", "tree/a.metal", "tree/sub/c.metal", "tree/z_link.metal"};
    for (int i = 0; i < 4; i++)
        ck_assert_str_eq(json_string_value(json_array_get(files, i)), tmp(order[i]));
    expect_entry(doc, "moe_trellis_swiglu", "present", 0, "tree/B.metal", 1);
    expect_entry(doc, "moe_trellis_swiglu_decode", "present", 0, "tree/B.metal", 2);
    expect_entry(doc, "moe_trellis_swiglu_decode_8_8_8", "present", 1, "tree/sub/c.metal", 3);
    expect_entry(doc, "apply_sign_flips_vec4", "unreferenced", 0, "tree/sub/c.metal", 4);
    ck_assert_ptr_null(entry_of(doc, "hidden_kernel"));
    json_decref(doc);
    /* an empty directory: every generic name missing */
    ck_assert_int_eq(mkdir(tmp("empty"), 0755), 0);
    r = cli_run("symbols", "--metal-dir", tmp("empty"), NULL);
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.out, "summary: 0 present, 11 missing (6 generic), 0 unreferenced, 0 unmapped\n"));
    cli_result_free(&r);
}
END_TEST

START_TEST(test_exit_2_and_usage)
{
    cli_result r = cli_run("symbols", "--metal-dir", "/nonexistent/trellis-metal", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_str_eq(r.err, "trellis symbols: error: /nonexistent/trellis-metal: TR_E_IO: no such directory\n");
    cli_result_free(&r);
    r = cli_run("symbols", "--metal-dir", DATA "extra/a_moe.metal", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_str_eq(r.err, "trellis symbols: error: " DATA "extra/a_moe.metal: TR_E_IO: not a directory\n");
    cli_result_free(&r);
    /* the default metal/ folder is missing: exit 2 with a hint */
    char cwd[4096];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    ck_assert_int_eq(mkdir(tmp("nometal"), 0755), 0);
    ck_assert_int_eq(chdir(tmp("nometal")), 0);
    r = cli_run("symbols", NULL);
    ck_assert_int_eq(chdir(cwd), 0);
    ck_assert_int_eq(r.status, 2);
    ck_assert_str_eq(r.err, "trellis symbols: error: metal: TR_E_IO: no such directory (give the kernel sources "
                            "with --metal-dir DIR)\n");
    cli_result_free(&r);
    /* an unreadable subdirectory (not testable as root, who reads everything) */
    if (geteuid() != 0) {
        ck_assert_int_eq(mkdir(tmp("locked"), 0755), 0);
        ck_assert_int_eq(mkdir(tmp("locked/inner"), 0000), 0);
        r = cli_run("symbols", "--metal-dir", tmp("locked"), NULL);
        ck_assert_int_eq(r.status, 2);
        ck_assert(strstr(r.err, "inner: TR_E_IO: cannot open directory (Permission denied)"));
        cli_result_free(&r);
        chmod(tmp("locked/inner"), 0755);
    }
    static const char *const bad[][3] = {
        {"--bogus", NULL, "unknown option --bogus"}, {"somewhere", NULL, "unexpected argument somewhere"},
        {"--metal-dir", NULL, "--metal-dir needs a directory"},
    };
    for (int i = 0; i < 3; i++) {
        r = cli_run("symbols", bad[i][0], bad[i][1], NULL);
        ck_assert_int_eq(r.status, 2);
        ck_assert_msg(strstr(r.err, bad[i][2]) != NULL, "%.3000s", r.err);
        cli_result_free(&r);
    }
    r = cli_run("symbols", "--help", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert(strstr(r.out, "Usage: trellis symbols [--metal-dir DIR] [--json FILE|-]"));
    cli_result_free(&r);
}
END_TEST

Suite *suite_symbols(void)
{
    Suite *s = suite_create("symbols");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_symbol_table);
    tcase_add_test(tc, test_unmapped_rules);
    tcase_add_test(tc, test_complete);
    tcase_add_test(tc, test_missing_generic);
    tcase_add_test(tc, test_extra);
    tcase_add_test(tc, test_tree_order_links_and_json_file);
    tcase_add_test(tc, test_exit_2_and_usage);
    suite_add_tcase(s, tc);
    return s;
}
