/*
 * check_metal_kernels.c — our MSL kernels (metal/kernels) under the metal-emu conformance runner, in process: a few
 * small cases of every binding family bound in cli/metal_bind.c for the routers, the grouping ops, gather, combine,
 * cast and the registered MoE names, each judged as `trellis conform --backend metal-emu` judges it (ORDERED or
 * EXACT, bitwise, under SG_GREEDY and RANDOM) and asserted PASS; the variant-aware quick tier (every variant of ours
 * gets points inside its declared domain); and the predicate-constrained point generator of the registry.
 */
#include "tests.h"
#include "../cli/conform.h"
#include "trellis/registry.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cmetal_set *SET;
static cmetal_cfg CFG;
static char set_error[1200];
static char cache_dir[1024];

static void set_setup(void)
{
    const char *c = getenv("TRELLIS_METAL_EMU_CACHE");
    snprintf(cache_dir, sizeof cache_dir, "%s", c && *c ? c : "build/metal-emu");
    memset(&CFG, 0, sizeof CFG);
    CFG.dirs[0] = "metal/kernels";
    CFG.ndirs = 1;
    CFG.cache = cache_dir;
    CFG.workers = 1;
    CFG.timeout = 20.0;
    CFG.strict = 1;
    tr_error err;
    if (cmetal_open(&CFG, &SET, &err) != TR_OK) {
        snprintf(set_error, sizeof set_error, "%s", err.text);
        SET = NULL;
    }
}

static void set_teardown(void)
{
    cmetal_close(SET);
    SET = NULL;
}

/* Run one case "<op>/<variant>/<params>" on the emulator; returns the verdict and copies the detail. */
static const char *run_case(const char *op, const char *variant, const char *params, char *detail, size_t cap)
{
    static char status[32];
    const cmetal_variant *mv = cmetal_find(SET, op, variant);
    ck_assert_msg(mv != NULL, "%s/%s is not a variant of metal/kernels", op, variant);
    ck_assert_msg(mv->ours && mv->available, "%s/%s: ours %d, available %d (%s)", op, variant, mv->ours,
                  mv->available, mv->why);
    tr_case c;
    ck_assert_int_eq(tr_case_init(&c, mv->op, &mv->v, params, 0, 1), TR_OK);
    char why[512];
    if (cmetal_unsupported(mv, &c, why, sizeof why)) {
        snprintf(detail, cap, "%s", why);
        return "UNSUPPORTED";
    }
    conform_source src = {NULL, NULL, NULL, mv, &CFG};
    conform_opts o = {"metal-emu", 0, 0, NULL, 0};
    json_t *r = conform_exec(&c, &src, &o);
    ck_assert_ptr_nonnull(r);
    snprintf(status, sizeof status, "%s", json_string_value(json_object_get(r, "status")));
    const char *d = json_string_value(json_object_get(r, "detail"));
    snprintf(detail, cap, "%s", d ? d : "");
    json_decref(r);
    return status;
}

static void expect_pass(const char *op, const char *variant, const char *params)
{
    char detail[1024];
    const char *st = run_case(op, variant, params, detail, sizeof detail);
    ck_assert_msg(!strcmp(st, "PASS"), "%s/%s/%s: %s (%s)", op, variant, params, st, detail);
}

#define TOPK(T, E, k, mode, logits)                                                                                    \
    "T=" #T ";E=" #E ";k=" #k ";mode=" mode ";norm=1;n_group=1;topk_group=1;scaling=1;bias=zero;logits=" logits

START_TEST(test_routers)
{
    ck_assert_msg(SET != NULL, "%s", set_error);
    expect_pass("router_topk", "moe_router_fused", TOPK(5, 16, 4, "softmax_topk", "normal"));
    expect_pass("router_topk", "moe_router_fused_small", TOPK(2, 64, 8, "softmax_topk", "quantized"));
    expect_pass("router_topk", "moe_router_fused_coalesced", TOPK(5, 8, 2, "softmax_topk", "all_equal"));
    expect_pass("router_topk", "moe_router_int8_fused", TOPK(17, 16, 16, "softmax_topk", "normal"));
    expect_pass("router_topk", "moe_router_int8_fused_small", TOPK(2, 4, 3, "softmax_topk", "nan_inf"));
    expect_pass("router_topk", "moe_router_int8_fused_decode", TOPK(1, 64, 4, "softmax_topk", "normal"));
    expect_pass("router_topk", "moe_router_sparse", TOPK(5, 64, 4, "softmax_topk", "normal"));
    expect_pass("router_topk", "moe_router_sparse_vec4", TOPK(2, 8, 1, "softmax_topk", "quantized"));
    expect_pass("router_topk", "softmax_topk_decode", TOPK(1, 128, 8, "softmax_topk_f16", "normal"));
    expect_pass("router_topk", "softmax_topk_prefill", TOPK(17, 16, 5, "softmax_topk_f16", "nan_inf"));
    expect_pass("router_topk", "softmax_topk8_128e", TOPK(1, 128, 8, "softmax_topk_f16", "all_equal"));
    char detail[1024];   /* outside the declared domain: not run */
    ck_assert_str_eq(run_case("router_topk", "moe_router_fused", TOPK(1, 8, 2, "noaux_tc", "normal"), detail,
                              sizeof detail), "UNSUPPORTED");
    ck_assert_msg(strstr(detail, "mode=softmax_topk"), "%s", detail);
}
END_TEST

START_TEST(test_grouping)
{
    ck_assert_msg(SET != NULL, "%s", set_error);
    expect_pass("moe_count", "moe_count_tokens_per_expert", "T=17;k=4;E=8;routing=skewed");
    expect_pass("moe_count", "moe_count_experts_atomic", "T=129;k=8;E=64;routing=ragged");
    expect_pass("moe_count", "moe_compute_expert_counts", "T=33;k=2;E=512;routing=uniform");
    expect_pass("moe_count", "moe_count_tokens_per_expert", "T=0;k=1;E=4;routing=uniform");
    expect_pass("moe_offsets", "moe_compute_offsets", "T=16;k=4;E=16;routing=empty_experts");
    expect_pass("moe_offsets", "moe_compute_expert_offsets", "T=5;k=3;E=256;routing=hot_expert");
    expect_pass("moe_offsets", "moe_compute_expert_offsets_sequential", "T=2;k=2;E=3;routing=uniform");
    expect_pass("moe_offsets", "moe_prefix_sum_offsets", "T=31;k=8;E=8;routing=max_k");
    expect_pass("moe_scatter", "moe_scatter_tokens_to_experts", "T=15;k=4;E=8;routing=duplicates");
    expect_pass("moe_scatter", "moe_scatter_indices", "T=17;k=5;E=16;routing=one_expert");
    expect_pass("validate_expert_ids", "expert_indices_validate", "T=17;k=4;E=8;routing=invalid");
    expect_pass("validate_expert_ids", "expert_indices_validate", "T=3;k=2;E=4;routing=uniform");
}
END_TEST

START_TEST(test_gather_combine_cast)
{
    ck_assert_msg(SET != NULL, "%s", set_error);
    expect_pass("moe_gather", "moe_gather_for_experts", "T=5;k=3;H=64");
    expect_pass("moe_gather", "moe_gather_for_experts_vec4", "T=17;k=2;H=7");
    expect_pass("moe_gather", "moe_gather_vec8", "T=2;k=8;H=1");
    expect_pass("moe_gather", "moe_gather_vec8_prefetch", "T=5;k=4;H=64");
    expect_pass("moe_gather", "moe_gather_single_token_simd", "T=1;k=6;H=7");
    expect_pass("moe_combine", "moe_combine_fp32_acc", "T=5;k=4;H=64;shared=1;residual=1;weights=negative;acc=f32");
    expect_pass("moe_combine", "moe_combine_fp32_acc", "T=2;k=1;H=7;shared=0;residual=0;weights=softmax;acc=f32");
    expect_pass("moe_combine", "moe_combine_weighted", "T=17;k=8;H=64;shared=1;residual=0;weights=softmax;acc=f16");
    expect_pass("moe_combine", "moe_combine_weighted", "T=1;k=3;H=7;shared=0;residual=1;weights=zero;acc=f16");
    expect_pass("cast_f16", "moe_finalize_output", "n=1000;values=nan_inf");
    expect_pass("cast_f16", "moe_combine_finalize", "n=64;values=subnormal");
    expect_pass("cast_f16", "expert_scatter_add_finalize", "n=7;values=large");
}
END_TEST

#define MOE(tuple, T, k, E, launch, acc)                                                                               \
    "H=16;I=16;tuple=" tuple ";T=" #T ";k=" #k ";E=" #E ";routing=uniform;launch=" launch ";acc=" acc ";map=uniform"

START_TEST(test_moe_registered)
{
    ck_assert_msg(SET != NULL, "%s", set_error);
    expect_pass("moe_swiglu", "fast_2bit", MOE("2-2-2", 3, 2, 4, "slotted", "f16"));
    expect_pass("moe_swiglu", "fast_2bit", MOE("6-2-3", 2, 1, 2, "flat", "f16"));
    expect_pass("moe_swiglu", "mixed_bpw", MOE("6-3-4", 4, 2, 8, "slotted", "f16"));
    /* grouped (MOE.md §3.5): gathered rows, one writer per row, combined in slot order */
    expect_pass("moe_swiglu", "grouped", MOE("4-4-4", 5, 3, 8, "slotted", "f16"));
    expect_pass("moe_swiglu", "grouped", MOE("6-2-3", 2, 4, 4, "slotted", "f16"));
    expect_pass("moe_swiglu", "base", MOE("6-2-4", 3, 2, 4, "slotted", "f16"));
}
END_TEST

/* The quick tier of every variant of ours, as the metal-emu runner builds it: points inside the declared domain. */
static int in_domain(void *ctx, const tr_params *p)
{
    const cmetal_variant *mv = ctx;
    tr_case c;
    char why[512];
    return tr_case_init(&c, mv->op, &mv->v, p->text, 0, 1) == TR_OK && !cmetal_unsupported(mv, &c, why, sizeof why);
}

START_TEST(test_quick_tier_covers_every_variant)
{
    ck_assert_msg(SET != NULL, "%s", set_error);
    ck_assert_uint_eq(cmetal_count(SET), cmetal_kernel_total(SET));   /* every kernel of ours is mapped */
    for (size_t i = 0; i < cmetal_count(SET); i++) {
        const cmetal_variant *mv = cmetal_at(SET, i);
        ck_assert_msg(mv->ours && mv->available, "%s: %s", mv->v.symbol, mv->why);
        tr_point_iter it;
        tr_error err;
        ck_assert_int_eq(tr_point_iter_init_pred(&it, mv->op, TR_TIER_QUICK, in_domain, (void *)mv, &err), TR_OK);
        size_t n = it.nlist;
        tr_point_iter_free(&it);
        if (!strcmp(mv->v.symbol, "test_hadamard_roundtrip_64"))
            ck_assert_uint_eq(n, 0);   /* forward twice then 1/64: no point of the hadamard op */
        else
            ck_assert_msg(n >= 4, "%s/%s: %zu quick points", mv->op->name, mv->v.id, n);
    }
}
END_TEST

/* The predicate-constrained generator: gemm_trellis with b = 2 and acc = f16 fixed keeps every other axis value. */
static int b2_f16(void *ctx, const tr_params *p)
{
    (void)ctx;
    return tr_params_is(p, "b", "2") && tr_params_is(p, "acc", "f16");
}

static int never(void *ctx, const tr_params *p)
{
    (void)ctx;
    (void)p;
    return 0;
}

START_TEST(test_point_predicate)
{
    const tr_opdef *op = tr_registry_find("gemm_trellis");
    ck_assert_ptr_nonnull(op);
    tr_point_iter it;
    tr_error err;
    ck_assert_int_eq(tr_point_iter_init_pred(&it, op, TR_TIER_QUICK, b2_f16, NULL, &err), TR_OK);
    char text[TR_CASE_ID_MAX];
    int rows = 0, values = 0, n = 0;
    for (size_t i = 0; i < it.nlist && tr_point_iter_next(&it, text, sizeof text); i++, n++) {
        tr_params p;
        ck_assert_int_eq(tr_params_parse(&p, text), 0);
        ck_assert_msg(b2_f16(NULL, &p), "%s", text);
        rows += strstr(text, "M=129;") != NULL;
        values += strstr(text, "values=nan_inf") != NULL;
    }
    tr_point_iter_free(&it);
    ck_assert_int_ge(n, 40);
    ck_assert_int_eq(rows, 1);
    ck_assert_int_eq(values, 1);
    ck_assert_int_eq(tr_point_iter_init_pred(&it, op, TR_TIER_QUICK, never, NULL, &err), TR_OK);
    ck_assert_uint_eq(it.nlist, 0);
    tr_point_iter_free(&it);
}
END_TEST

Suite *suite_metal_kernels(void)
{
    Suite *s = suite_create("metal_kernels");
    TCase *gen = tcase_create("points");
    tcase_add_test(gen, test_point_predicate);
    suite_add_tcase(s, gen);
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 300);
    tcase_add_unchecked_fixture(tc, set_setup, set_teardown);
    tcase_add_test(tc, test_routers);
    tcase_add_test(tc, test_grouping);
    tcase_add_test(tc, test_gather_combine_cast);
    tcase_add_test(tc, test_moe_registered);
    tcase_add_test(tc, test_quick_tier_covers_every_variant);
    suite_add_tcase(s, tc);
    return s;
}
