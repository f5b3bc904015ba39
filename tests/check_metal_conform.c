/*
 * check_metal_conform.c — `trellis conform --backend metal-emu --metal-dir DIR` end to end (METAL.md §4, §5):
 *
 *   defective  the deliberately defective kernels of tests/data/metal/defective/<case>/ (KERNELS.md §4 symbols and
 *              binding families, so the runner maps them as dequant_grid variants), each replayed on one small case:
 *              a threadgroup race (FAIL "schedule-dependent output"), a read of never-written threadgroup memory
 *              (FAIL naming the array), unwritten last columns (FAIL "unwritten"), a wrong grid for b = 3 (FAIL with
 *              the first mismatch's coordinates; b = 4 passes), 40 KiB of threadgroup memory (RESOURCE_ERROR), an
 *              early return before a barrier (a diagnostic note on a PASS; FAIL under --strict), an infinite spin
 *              (TIMEOUT with --case-timeout 1) and an out-of-bounds store (FAIL "out-of-bounds write").
 *   foreign    tests/data/metal/foreign/, a folder written in another style (headers in a subfolder, helpers,
 *              implicit buffer indices, function constants, a texture grid, a template kernel with [[host_name]],
 *              simd shuffles and reductions): it builds unmodified, its kernels map to their variants (one kernel
 *              of no registry op is listed as unmapped) and each passes under its declared class.
 *
 * host_source the portable C part of the macOS runner (metal/host/host_source.c, also built into it): quoted-include
 *              expansion and the builtin types read from a kernel's parameter list.
 *
 * Each case is one `--replay` (small shapes), so the whole suite takes a few seconds once the folders are built.
 */
#include "tests.h"
#include "cli_run.h"
#include "../metal/host/host_source.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFECTIVE "tests/data/metal/defective"
#define FOREIGN "tests/data/metal/foreign"
#define DQ_TAIL "gs=128;signs=unit;scale=normal;pattern=uniform;padding=canonical/0"

typedef struct run_out {
    int status;                /* exit status of trellis conform */
    json_t *doc;               /* the result file */
    json_t *res;               /* doc.results[0] (borrowed) */
    char *out;                 /* stdout */
} run_out;

static const char *json_path(void)
{
    static char p[4200];
    snprintf(p, sizeof p, "%s/conform.json", tr_test_tmpdir());
    return p;
}

/* trellis conform --backend metal-emu --metal-dir dir --replay case [extra...] --json FILE (extra ends with NULL). */
static run_out conform_replay(const char *dir, const char *case_id, const char *x1, const char *x2)
{
    const char *path = json_path();
    remove(path);
    cli_result r = cli_run("conform", "--backend", "metal-emu", "--metal-dir", dir, "--replay", case_id,
                           "--no-progress", "--json", path, x1, x2, NULL);
    run_out o = {r.status, NULL, NULL, r.out};
    json_error_t jerr;
    o.doc = json_load_file(path, 0, &jerr);
    ck_assert_msg(o.doc != NULL, "no result file for %s (exit %d): %s\nstdout:\n%s\nstderr:\n%s", case_id, r.status,
                  jerr.text, r.out, r.err);
    free(r.err);
    json_t *results = json_object_get(o.doc, "results");
    ck_assert_msg(json_array_size(results) == 1, "%s: %zu results", case_id, json_array_size(results));
    o.res = json_array_get(results, 0);
    return o;
}

static void run_free(run_out *o)
{
    json_decref(o->doc);
    free(o->out);
}

static const char *sget(json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

static void expect(const run_out *o, const char *status, const char *detail_has)
{
    ck_assert_msg(!strcmp(sget(o->res, "status"), status), "%s: status %s (expected %s), detail: %s",
                  sget(o->res, "case"), sget(o->res, "status"), status, sget(o->res, "detail"));
    if (detail_has)
        ck_assert_msg(strstr(sget(o->res, "detail"), detail_has) != NULL, "%s: detail \"%s\" lacks \"%s\"",
                      sget(o->res, "case"), sget(o->res, "detail"), detail_has);
}

static const char *dq_case(char *buf, size_t cap, const char *variant, int b, int O, int I)
{
    snprintf(buf, cap, "dequant_grid/%s/b=%d;O=%d;I=%d;" DQ_TAIL, variant, b, O, I);
    return buf;
}

/* ---- defective kernels -------------------------------------------------------------------------------------------- */

START_TEST(test_defective_race)
{
    char c[300];
    run_out o = conform_replay(DEFECTIVE "/race", dq_case(c, sizeof c, "dequant_trellis_packed_cached", 4, 17, 33),
                               NULL, NULL);
    expect(&o, "FAIL", "schedule-dependent output");
    ck_assert_int_eq(o.status, 1);
    json_t *sd = json_object_get(json_object_get(o.res, "metal_emu"), "schedule_dependent");
    ck_assert_msg(json_is_object(sd), "metal_emu.schedule_dependent missing");
    ck_assert_str_eq(sget(sd, "buffer"), "out");
    ck_assert_int_gt(json_integer_value(json_object_get(sd, "elements")), 0);
    ck_assert_ptr_nonnull(strstr(o.out, "FAIL case=dequant_grid/dequant_trellis_packed_cached/"));
    run_free(&o);
}
END_TEST

START_TEST(test_defective_uninit)
{
    char c[300];
    /* b = 6: 64 levels, only the first 16 staged */
    run_out o = conform_replay(DEFECTIVE "/uninit", dq_case(c, sizeof c, "dequant_trellis_packed_cached", 6, 17, 33),
                               NULL, NULL);
    expect(&o, "FAIL", "uninitialised threadgroup read: g (float[256]");
    const char *named = sget(json_object_get(o.res, "metal_emu"), "uninitialised_threadgroup");
    ck_assert_msg(!strncmp(named, "g (float[256], " DEFECTIVE "/uninit/dequant.metal:", strlen("g (float[256], ") +
                           strlen(DEFECTIVE "/uninit/dequant.metal:")), "named: %s", named);
    run_free(&o);
    /* b = 4 needs only the 16 staged levels: the same kernel passes */
    o = conform_replay(DEFECTIVE "/uninit", dq_case(c, sizeof c, "dequant_trellis_packed_cached", 4, 17, 33), NULL,
                       NULL);
    expect(&o, "PASS", NULL);
    ck_assert_int_eq(o.status, 0);
    run_free(&o);
}
END_TEST

START_TEST(test_defective_unwritten)
{
    char c[300];
    run_out o = conform_replay(DEFECTIVE "/unwritten", dq_case(c, sizeof c, "dequant_trellis_packed", 4, 17, 33),
                               NULL, NULL);
    expect(&o, "FAIL", "unwritten");
    /* column n = 16 (o = 16) of all 33 rows */
    ck_assert_int_eq(json_integer_value(json_object_get(o.res, "unwritten")), 33);
    json_t *coords = json_object_get(json_object_get(o.res, "first_mismatch"), "coords");
    ck_assert_int_eq(json_array_size(coords), 2);
    ck_assert_int_eq(json_integer_value(json_array_get(coords, 0)), 16);
    ck_assert_int_eq(json_integer_value(json_array_get(coords, 1)), 0);
    ck_assert_str_eq(sget(json_object_get(o.res, "first_mismatch"), "got"), "0x7e5a");
    run_free(&o);
    /* O a multiple of 16: nothing is skipped */
    o = conform_replay(DEFECTIVE "/unwritten", dq_case(c, sizeof c, "dequant_trellis_packed", 4, 32, 33), NULL, NULL);
    expect(&o, "PASS", NULL);
    run_free(&o);
}
END_TEST

START_TEST(test_defective_wrong_grid)
{
    char c[300];
    run_out o = conform_replay(DEFECTIVE "/wrong_grid", dq_case(c, sizeof c, "dequant_trellis_packed", 3, 17, 33),
                               NULL, NULL);
    expect(&o, "FAIL", "not bitwise equal");
    ck_assert_str_eq(sget(o.res, "class"), "EXACT");
    ck_assert_int_gt(json_integer_value(json_object_get(o.res, "mismatches")), 0);
    json_t *fm = json_object_get(o.res, "first_mismatch");
    ck_assert_msg(json_is_object(fm), "first_mismatch missing");
    ck_assert_int_eq(json_array_size(json_object_get(fm, "coords")), 2);
    ck_assert_msg(strcmp(sget(fm, "got"), sget(fm, "expected")) != 0, "got = expected");
    ck_assert_ptr_nonnull(strstr(o.out, "first mismatch w16["));
    run_free(&o);
    for (int b = 2; b <= 8; b += 2) {   /* every other width decodes right */
        o = conform_replay(DEFECTIVE "/wrong_grid", dq_case(c, sizeof c, "dequant_trellis_packed", b, 17, 33), NULL,
                           NULL);
        expect(&o, "PASS", NULL);
        run_free(&o);
    }
}
END_TEST

START_TEST(test_defective_tg40k)
{
    char c[300];
    run_out o = conform_replay(DEFECTIVE "/tg40k", dq_case(c, sizeof c, "dequant_trellis_packed_cached", 4, 17, 33),
                               NULL, NULL);
    expect(&o, "RESOURCE_ERROR", "32 KiB");
    ck_assert_ptr_nonnull(strstr(sget(o.res, "detail"), "float[40][256] ring"));
    ck_assert_ptr_nonnull(strstr(sget(o.res, "detail"), "40960 bytes"));
    ck_assert_int_eq(o.status, 0);     /* RESOURCE_ERROR is reported but does not fail the run (HARNESS.md §3) */
    run_free(&o);
}
END_TEST

START_TEST(test_defective_early_return)
{
    char c[300];
    dq_case(c, sizeof c, "dequant_trellis_packed_cached", 4, 17, 33);
    run_out o = conform_replay(DEFECTIVE "/early_return", c, NULL, NULL);
    expect(&o, "PASS", "early_return_before_barrier");
    ck_assert_int_eq(o.status, 0);
    json_t *dg = json_object_get(json_object_get(o.res, "metal_emu"), "diagnostics");
    ck_assert_int_ge(json_array_size(dg), 1);
    ck_assert_str_eq(sget(json_array_get(dg, 0), "code"), "early_return_before_barrier");
    ck_assert_ptr_nonnull(strstr(sget(json_array_get(dg, 0), "site"), DEFECTIVE "/early_return/dequant.metal:"));
    ck_assert_ptr_nonnull(strstr(o.out, "note: PASS case=dequant_grid/dequant_trellis_packed_cached/"));
    run_free(&o);
    o = conform_replay(DEFECTIVE "/early_return", c, "--strict", NULL);
    expect(&o, "FAIL", "early_return_before_barrier");
    ck_assert_ptr_nonnull(strstr(sget(o.res, "detail"), "(FAIL under --strict)"));
    ck_assert_int_eq(o.status, 1);
    run_free(&o);
    /* a full tile: no lane leaves early, no diagnostic */
    o = conform_replay(DEFECTIVE "/early_return", dq_case(c, sizeof c, "dequant_trellis_packed_cached", 4, 32, 32),
                       "--strict", NULL);
    expect(&o, "PASS", NULL);
    run_free(&o);
}
END_TEST

START_TEST(test_defective_spin)
{
    char c[300];
    run_out o = conform_replay(DEFECTIVE "/spin", dq_case(c, sizeof c, "dequant_trellis_packed", 4, 17, 33),
                               "--case-timeout", "1");
    expect(&o, "TIMEOUT", "watchdog");
    ck_assert_int_eq(o.status, 1);
    run_free(&o);
}
END_TEST

START_TEST(test_defective_oob)
{
    char c[300];
    /* K = 33: the lane of rows 32..35 stores rows 33..35 past the end of out[33][1] */
    run_out o = conform_replay(DEFECTIVE "/oob", dq_case(c, sizeof c, "dequant_trellis_packed_vec4", 4, 1, 33), NULL,
                               NULL);
    expect(&o, "FAIL", "out-of-bounds write");
    json_t *oob = json_object_get(json_object_get(o.res, "metal_emu"), "out_of_bounds");
    ck_assert_msg(json_is_object(oob), "metal_emu.out_of_bounds missing");
    ck_assert_str_eq(sget(oob, "buffer"), "out");
    ck_assert_int_eq(json_integer_value(json_object_get(oob, "index")), 5);
    run_free(&o);
    /* K % 4 = 0: in bounds */
    o = conform_replay(DEFECTIVE "/oob", dq_case(c, sizeof c, "dequant_trellis_packed_vec4", 4, 1, 32), NULL, NULL);
    expect(&o, "PASS", NULL);
    run_free(&o);
}
END_TEST

/* ---- the foreign folder ----------------------------------------------------------------------------------------- */

static json_t *variant_of(json_t *set, const char *variant)
{
    json_t *vs = json_object_get(set, "variants");
    for (size_t i = 0; i < json_array_size(vs); i++)
        if (!strcmp(sget(json_array_get(vs, i), "variant"), variant))
            return json_array_get(vs, i);
    return NULL;
}

START_TEST(test_foreign_folder)
{
    static const struct {
        const char *variant, *kernel, *cls, *case_id;
    } cases[] = {
        {"dequant_trellis_packed", "dequant/decode:dequant_trellis_packed", "EXACT",
         "dequant_grid/dequant_trellis_packed/b=3;O=17;I=33;gs=32;signs=random;scale=normal;pattern=uniform;"
         "padding=random/0"},
        {"dequant_trellis_packed_tex", "dequant/decode:dequant_trellis_packed_tex", "EXACT",
         "dequant_grid/dequant_trellis_packed_tex/b=5;O=33;I=17;" DQ_TAIL},
        {"dequant_trellis_with_signs", "dequant/decode:dequant_trellis_with_signs", "EXACT",
         "dequant_grid/dequant_trellis_with_signs/b=8;O=31;I=64;gs=64;signs=random;scale=normal;pattern=uniform;"
         "padding=canonical/0"},
        {"apply_sign_flips_vec4", "signs:apply_sign_flips_vec4", "EXACT",
         "sign_flip/apply_sign_flips_vec4/K=17;N=64;signs=random;values=mixed/0"},
        {"hadamard_transform_32", "hadamard_rows:hadamard_transform_32", "ORDERED",
         "hadamard/hadamard_transform_32/n=32;layout=rows;R=3;dtype=f16;norm=ortho;direction=forward;scale=none;"
         "values=normal/0"},
        {"hadamard_transform_64", "hadamard_rows:hadamard_transform_64", "ORDERED",
         "hadamard/hadamard_transform_64/n=64;layout=rows;R=17;dtype=f16;norm=none;direction=inverse;scale=none;"
         "values=normal/0"},
        {"gemm_trellis_packed_decode", "gemv/decode_gemv:gemm_trellis_packed_decode", "TOLERANT",
         "gemm_trellis/gemm_trellis_packed_decode/M=3;O=129;I=100;b=4;gs=32;acc=f16;out=f16;rotation=none;"
         "values=normal/0"},
    };
    size_t n = sizeof cases / sizeof cases[0];
    /* the hadamard kernels: the quick tier of the op (small shapes; every case must pass) */
    const char *path = json_path();
    remove(path);
    cli_result r = cli_run("conform", "--backend", "metal-emu", "--metal-dir", FOREIGN, "--ops", "hadamard",
                           "--no-progress", "--strict", "--json", path, NULL);
    ck_assert_msg(r.status == 0, "hadamard quick tier on the foreign folder: exit %d\n%s\n%s", r.status, r.out, r.err);
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    ck_assert_ptr_nonnull(doc);
    /* the folder built unmodified, every file */
    json_t *folders = json_object_get(json_object_get(doc, "metal_emu"), "folders");
    ck_assert_int_eq(json_array_size(folders), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(folders, 0), "failed")), 0);
    ck_assert_int_eq(json_array_size(json_object_get(json_array_get(folders, 0), "files")), 4);
    /* mapping: every kernel of a §4 symbol is an available variant of its declared class, the helper is unmapped */
    json_t *set = json_object_get(doc, "metal_emu");
    for (size_t i = 0; i < n; i++) {
        json_t *v = variant_of(set, cases[i].variant);
        ck_assert_msg(v != NULL, "variant %s not mapped", cases[i].variant);
        ck_assert_str_eq(sget(v, "kernel"), cases[i].kernel);
        ck_assert_msg(json_is_true(json_object_get(v, "available")), "%s: %s", cases[i].variant, sget(v, "why"));
        ck_assert_str_eq(sget(v, "class"), cases[i].cls);
        ck_assert_msg(json_is_false(json_object_get(v, "ours")), "%s counted as ours", cases[i].variant);
    }
    json_t *um = json_object_get(set, "unmapped");
    ck_assert_int_eq(json_array_size(um), 1);
    ck_assert_str_eq(sget(json_array_get(um, 0), "kernel"), "signs:qtip_fill_debug");
    size_t had = 0;
    json_t *results = json_object_get(doc, "results");
    for (size_t i = 0; i < json_array_size(results); i++) {
        json_t *x = json_array_get(results, i);
        /* points outside the kernels' declared domain (f32 data, scales) are UNSUPPORTED, or not enumerated */
        if (!strcmp(sget(x, "status"), "UNSUPPORTED") && strstr(sget(x, "detail"), "outside the declared domain"))
            continue;
        ck_assert_msg(!strcmp(sget(x, "status"), "PASS"), "%s: %s %s", sget(x, "case"), sget(x, "status"),
                      sget(x, "detail"));
        ck_assert_str_eq(sget(x, "class"), "ORDERED");   /* §4.3 declares these symbols canonical: bitwise */
        ck_assert_int_eq(json_integer_value(json_object_get(x, "max_ulp")), 0);
        had++;
    }
    ck_assert_int_ge(had, 1);
    json_decref(doc);
    cli_result_free(&r);
    /* the others, one small case each */
    for (size_t i = 0; i < n; i++) {
        if (!cases[i].case_id)
            continue;
        run_out o = conform_replay(FOREIGN, cases[i].case_id, "--strict", NULL);
        expect(&o, "PASS", NULL);
        ck_assert_str_eq(sget(o.res, "class"), cases[i].cls);
        ck_assert_str_eq(sget(json_object_get(o.res, "metal_emu"), "kernel"), cases[i].kernel);
        ck_assert_int_eq(o.status, 0);
        run_free(&o);
    }
}
END_TEST

/* ---- the portable part of the macOS runner (metal/host/host_source.c) --------------------------------------------- */

START_TEST(test_host_include_expansion)
{
    char *src = NULL, why[600];
    ck_assert_msg(trmh_expand_includes(FOREIGN "/dequant/decode.metal", &src, why, sizeof why) == 0, "%s", why);
    /* the quoted include from the subfolder is inlined (with line markers), <metal_stdlib> is left to Metal */
    ck_assert_ptr_nonnull(strstr(src, "struct PackedTile {"));
    ck_assert_ptr_nonnull(strstr(src, "#line 1 \"" FOREIGN "/dequant/../include/qtip/bits.h\""));
    ck_assert_ptr_nonnull(strstr(src, "#line 6 \"" FOREIGN "/dequant/decode.metal\""));
    ck_assert_ptr_null(strstr(src, "#include \"../include/qtip/bits.h\""));
    ck_assert_ptr_nonnull(strstr(src, "#include <metal_stdlib>"));
    ck_assert_ptr_null(strstr(src, "#pragma once"));
    /* builtin widths, read from the parameter lists (reflection does not list builtins) */
    ck_assert_int_eq(trmh_builtin_width(src, "dequant_trellis_packed", "thread_position_in_grid"), 2);
    ck_assert_int_eq(trmh_builtin_width(src, "dequant_trellis_packed_tex", "thread_position_in_grid"), 2);
    ck_assert_int_eq(trmh_builtin_width(src, "dequant_trellis_packed", "threadgroup_position_in_grid"), 0);
    ck_assert_int_eq(trmh_builtin_width(src, "no_such_kernel", "thread_position_in_grid"), 0);
    free(src);
    ck_assert_int_eq(trmh_expand_includes(FOREIGN "/gemv/decode_gemv.metal", &src, why, sizeof why), 0);
    ck_assert_int_eq(trmh_builtin_width(src, "gemm_trellis_packed_decode", "threadgroup_position_in_grid"), 3);
    ck_assert_int_eq(trmh_builtin_width(src, "gemm_trellis_packed_decode", "thread_index_in_simdgroup"), 1);
    ck_assert_int_eq(trmh_builtin_width(src, "gemm_trellis_packed_decode", "simdgroup_index_in_threadgroup"), 1);
    free(src);
    /* a file included twice is inlined once; a missing include is an error naming it; comments do not count */
    const char *dir = tr_test_tmpdir();
    tr_test_write(dir, "h.h", "#pragma once\nint twice;\n", strlen("#pragma once\nint twice;\n"));
    const char *k = "#include \"h.h\"\n#include \"h.h\"\n// kernel void f(uint3 p [[thread_position_in_grid]])\n"
                    "kernel void f(device float *o [[buffer(0)]], vec<uint, 3> p [[thread_position_in_grid]],\n"
                    "              ushort2 t [[thread_position_in_threadgroup]]) {}\n";
    const char *kp = tr_test_write(dir, "k.metal", k, strlen(k));
    ck_assert_int_eq(trmh_expand_includes(kp, &src, why, sizeof why), 0);
    const char *first = strstr(src, "int twice;");
    ck_assert_ptr_nonnull(first);
    ck_assert_ptr_null(strstr(first + 1, "int twice;"));
    ck_assert_int_eq(trmh_builtin_width(src, "f", "thread_position_in_grid"), 3);
    ck_assert_int_eq(trmh_builtin_width(src, "f", "thread_position_in_threadgroup"), 2);
    free(src);
    const char *inc = "#include \"missing.h\"\n";
    const char *bad = tr_test_write(dir, "bad.metal", inc, strlen(inc));
    ck_assert_int_eq(trmh_expand_includes(bad, &src, why, sizeof why), -1);
    ck_assert_ptr_null(src);
    ck_assert_ptr_nonnull(strstr(why, "missing.h: cannot be read"));
}
END_TEST

Suite *suite_metal_conform(void)
{
    Suite *s = suite_create("metal_conform");
    TCase *d = tcase_create("defective");
    tcase_set_timeout(d, 120);   /* the first run builds the folders (about 1 s per file) */
    tcase_add_test(d, test_defective_race);
    tcase_add_test(d, test_defective_uninit);
    tcase_add_test(d, test_defective_unwritten);
    tcase_add_test(d, test_defective_wrong_grid);
    tcase_add_test(d, test_defective_tg40k);
    tcase_add_test(d, test_defective_early_return);
    tcase_add_test(d, test_defective_spin);
    tcase_add_test(d, test_defective_oob);
    suite_add_tcase(s, d);
    TCase *f = tcase_create("foreign");
    tcase_set_timeout(f, 120);
    tcase_add_test(f, test_foreign_folder);
    suite_add_tcase(s, f);
    TCase *h = tcase_create("host_source");
    tcase_add_test(h, test_host_include_expansion);
    suite_add_tcase(s, h);
    return s;
}
