/*
 * check_cov_moe.c — MoE diagnostics and kernel selection at their edges (MOE.md §5-§6): names of codes outside
 * their tables, counters of tuples and kernels never touched, unknown signatures, NaN and error events without a
 * (valid) tuple, event details that are NULL, non-ASCII or longer than 255 bytes, refused kernel-fallback reports,
 * the grouping dispatcher and the dispatch plan driven without a diagnostics object, plan entries out of range,
 * device-name profile matching (longest name wins) and the selection configuration's overrides in kernel_info.
 */
#include "tests.h"
#include "trellis/jsonio.h"
#include "trellis/moe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tr_moe_diag *new_diag(void)
{
    tr_moe_diag *d;
    tr_error err;
    ck_assert_int_eq(tr_moe_diag_new(&d, &err), TR_OK);
    return d;
}

START_TEST(test_names_and_lookups)
{
    ck_assert_str_eq(tr_moe_reason_name(-1), "unknown");
    ck_assert_str_eq(tr_moe_reason_name(TR_MOE_REASON_COUNT), "unknown");
    ck_assert_str_eq(tr_grouping_mode_name((tr_grouping_mode)3), "unknown");
    ck_assert_str_eq(tr_moe_category_name((tr_moe_category)4), "unknown");
    tr_moe_diag *d = new_diag();
    tr_moe_tuple_counters tc;
    tr_moe_kernel_counters kc;
    ck_assert_int_eq(tr_moe_diag_tuple(d, (tr_bit_tuple){1, 4, 4}, &tc), 0);   /* not a tuple */
    ck_assert_int_eq(tr_moe_diag_tuple(d, (tr_bit_tuple){4, 4, 4}, &tc), 0);   /* never touched */
    ck_assert_uint_eq(tc.fallbacks, 0);
    ck_assert_int_eq(tr_moe_diag_kernel(d, "no_such_kernel", &kc), 0);
    ck_assert_int_eq(tr_moe_diag_kernel(d, "moe_trellis_swiglu", &kc), 0);
    ck_assert_int_eq(tr_moe_diag_kernel(d, "moe_trellis_swiglu_decode_9_4_4", &kc), 0);
    ck_assert_int_eq(tr_moe_diag_kernel(d, "moe_trellis_swiglu_decode_4-4-4", &kc), 0);
    ck_assert_uint_eq(tr_moe_diag_signature_count(d, "not a signature"), 0);
    ck_assert_int_lt(tr_moe_policy_name_index("moe_trellis_swiglu_decode_44_4"), 0);
    ck_assert_int_ge(tr_moe_policy_name_index("moe_trellis_swiglu_decode_8_8_8"), 0);
    tr_moe_diag_free(d);
}
END_TEST

START_TEST(test_events_and_details)
{
    tr_moe_diag *d = new_diag();
    tr_error err;
    tr_moe_diag_begin_call(d, &(tr_moe_call_info){7, 2, 1, 4, NULL});
    tr_moe_diag_snapshot s;
    /* a NaN event without a tuple, then with an invalid one: counted, no tuple recorded */
    tr_moe_diag_nan_event(d, 3, NULL, NULL);
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(s.nan_events_total, 1);
    ck_assert(s.has_last_fallback);
    ck_assert_int_eq(s.last_fallback.reason_code, TR_MOE_NAN_DETECTED);
    ck_assert_int_eq(s.last_fallback.has_tuple, 0);
    ck_assert_str_eq(s.last_fallback.detail, "");
    ck_assert_int_eq(s.last_fallback.layer, 3);
    tr_bit_tuple bad = {9, 2, 2}, good = {6, 3, 4};
    tr_moe_diag_nan_event(d, 4, &bad, "x");
    tr_moe_diag_get(d, &s);
    ck_assert_int_eq(s.last_fallback.has_tuple, 0);
    tr_moe_diag_nan_event(d, 4, &good, "y");
    tr_moe_tuple_counters tc;
    ck_assert_int_eq(tr_moe_diag_tuple(d, good, &tc), 1);
    ck_assert_uint_eq(tc.nan_events, 1);
    /* details: non-printable bytes become '?', cut to 255 bytes */
    char longer[400];
    memset(longer, 'a', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    longer[0] = '\t';
    longer[1] = (char)0xC3;
    tr_moe_diag_error_event(d, TR_MOE_DEVICE_ERROR, &good, longer);
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(strlen(s.last_fallback.detail), 255);
    ck_assert(s.last_fallback.detail[0] == '?' && s.last_fallback.detail[1] == '?' && s.last_fallback.detail[2] == 'a');
    ck_assert_int_eq(s.last_fallback.layer, 7);
    ck_assert_uint_eq(s.last_fallback.batch_size, 2);
    ck_assert_uint_eq(s.last_fallback.event_index, 4);
    /* kernel fallback reports with a reason or tuple outside the tables are refused and change nothing */
    ck_assert_int_eq(tr_moe_diag_kernel_fallback(d, 0, good, "r", &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_moe_diag_kernel_fallback(d, TR_MOE_REASON_COUNT, good, "r", &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_moe_diag_kernel_fallback(d, TR_MOE_DEVICE_ERROR, bad, "r", &err), TR_E_INVALID_PARAM);
    ck_assert_msg(strstr(err.text, "tuple (9,2,2) outside 2..8"), "%s", err.text);
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(s.kernel_fallback_total, 0);
    ck_assert_int_eq(tr_moe_diag_kernel_fallback(d, TR_MOE_DEVICE_ERROR, good, "r", &err), TR_OK);
    char sig[64];
    ck_assert_int_eq(tr_moe_tuple_signature(good, sig, sizeof sig), 9);
    ck_assert_str_eq(sig, "[3, 4, 6]");
    ck_assert_uint_eq(tr_moe_diag_signature_count(d, sig), 1);
    /* a failed call counts once, however often it is reported */
    tr_moe_diag_call_failed(d);
    tr_moe_diag_end_call(d, TR_E_INVALID_PARAM);
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(s.dispatch_error_total, 1);
    json_t *j = tr_moe_diag_json(d);
    ck_assert_ptr_nonnull(j);
    ck_assert(json_is_null(json_object_get(json_object_get(j, "last_fallback"), "bit_tuple")) == 0);
    json_decref(j);
    tr_moe_diag_free(d);
}
END_TEST

/* ---- grouping and plan without diagnostics ------------------------------------------------------------------- */

static const int32_t ids3[6] = {2, 5, 0, 2, 6, 1};
static const float probs3[6] = {0.75f, 0.25f, 0.5f, 0.5f, 0.625f, 0.375f};
static const tr_bit_tuple map8[8] = {{6, 2, 3}, {4, 4, 4}, {6, 2, 3}, {8, 2, 8}, {4, 4, 4}, {6, 3, 4}, {6, 2, 3},
                                     {8, 2, 8}};

/* A device grouping that answers with the reference grouping in the token view. */
static tr_device_status token_view_device(void *user, const int32_t *ids, const float *probs, uint32_t T, uint32_t k,
                                          uint32_t E, tr_device_grouping_out *out)
{
    (void)user;
    uint32_t N = T * k, sorted[64], inv[64];
    float sp[64];
    tr_grouping g = {0, 0, 0, 0, sorted, out->offsets, sp, inv};
    tr_error err;
    if (tr_ref_moe_group(ids, probs, T, k, E, &g, &err) != TR_OK)
        return TR_DEVICE_LAUNCH_FAILED;
    for (uint32_t i = 0; i < N; i++) {
        out->entries[i] = sorted[i] / k;
        out->probs[i] = sp[i];
    }
    out->token_view = 1;
    return TR_DEVICE_OK;
}

static tr_device_status missing_device(void *user, const int32_t *ids, const float *probs, uint32_t T, uint32_t k,
                                       uint32_t E, tr_device_grouping_out *out)
{
    (void)user, (void)ids, (void)probs, (void)T, (void)k, (void)E, (void)out;
    return TR_DEVICE_KERNEL_MISSING;
}

START_TEST(test_dispatch_without_diag)
{
    tr_error err;
    tr_grouping g, ref;
    uint32_t rs[6], ro[9], ri[6];
    float rp[6];
    ref = (tr_grouping){0, 0, 0, 0, rs, ro, rp, ri};
    ck_assert_int_eq(tr_ref_moe_group(ids3, probs3, 3, 2, 8, &ref, &err), TR_OK);
    tr_device_grouping tv = {NULL, token_view_device, NULL}, miss = {"gpu_sort", missing_device, NULL};
    static const struct {
        tr_grouping_mode mode;
        int dev, on_device;
        tr_grouping_path path;
    } runs[] = {
        {TR_GROUPING_HOST, 0, 0, TR_GROUPING_PATH_HOST},
        {TR_GROUPING_DEVICE, 0, 1, TR_GROUPING_PATH_FALLBACK},   /* no device */
        {TR_GROUPING_DEVICE, 1, 0, TR_GROUPING_PATH_FALLBACK},   /* host-resident inputs */
        {TR_GROUPING_DEVICE, 1, 1, TR_GROUPING_PATH_DEVICE},     /* token view, canonicalised */
        {TR_GROUPING_AUTO, 2, 1, TR_GROUPING_PATH_FALLBACK},     /* kernel missing */
    };
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        tr_moe_grouping_req r = {{ids3, 2, {3, 2}, runs[i].on_device}, {probs3, 2, {3, 2}, runs[i].on_device}, 8,
                                 runs[i].mode, NULL, runs[i].dev == 1 ? &tv : runs[i].dev == 2 ? &miss : NULL};
        tr_grouping_outcome o;
        ck_assert_int_eq(tr_moe_dispatch_grouping(&r, NULL, &g, &o, &err), TR_OK);
        ck_assert_int_eq(o.path, runs[i].path);
        ck_assert_mem_eq(g.sorted_token_ids, rs, sizeof rs);
        ck_assert_mem_eq(g.expert_offsets, ro, sizeof ro);
        ck_assert_mem_eq(g.inverse, ri, sizeof ri);
        if (i + 1 < sizeof runs / sizeof runs[0])
            tr_grouping_release(&g);
    }
    /* the plan of that grouping, on a device backend, launched and failed without a diag */
    tr_moe_tuple_map *map;
    ck_assert_int_eq(tr_moe_tuple_map_new(map8, 8, &map, &err), TR_OK);
    tr_moe_avail *a;
    ck_assert_int_eq(tr_moe_avail_new(&a, &err), TR_OK);
    ck_assert_int_eq(tr_moe_avail_add(a, "moe_trellis_swiglu_decode", &err), TR_OK);
    tr_moe_select_cfg sc;
    tr_moe_select_cfg_default(&sc);
    sc.use_grouped_kernel = 1;
    ck_assert_int_eq(tr_moe_avail_add(a, "moe_trellis_swiglu_grouped", &err), TR_OK);
    tr_moe_plan_cfg cfg = {&sc, 0, a, 0x1F4u, NULL};   /* widths 2, 4..8 on the device: (6,3,4) falls back */
    tr_moe_plan *p;
    ck_assert_int_eq(tr_moe_plan_build(&g, map, &cfg, NULL, &p, &err), TR_OK);
    size_t n = tr_moe_plan_size(p);
    ck_assert_uint_gt(n, 1);
    tr_moe_plan_entry_view v;
    ck_assert_int_eq(tr_moe_plan_entry(p, n, &v), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_moe_plan_launched(p, n, NULL, &err), TR_E_INVALID_PARAM);
    ck_assert_msg(strstr(err.text, "of"), "%s", err.text);
    int launched = 0, host = 0;
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(tr_moe_plan_entry(p, i, &v), TR_OK);
        if (v.path != TR_MOE_PATH_DEVICE) {
            host++;
            continue;
        }
        ck_assert_int_eq(tr_moe_plan_launch_failed(p, i, "", NULL, &err), TR_OK);   /* grouped -> per-row */
        ck_assert_int_eq(tr_moe_plan_entry(p, i, &v), TR_OK);
        ck_assert(!v.grouped);
        ck_assert_int_eq(tr_moe_plan_launched(p, i, NULL, &err), TR_OK);
        launched++;
    }
    ck_assert_int_gt(launched, 0);
    ck_assert_int_gt(host, 0);
    tr_moe_plan_free(p);
    tr_moe_avail_free(a);
    tr_moe_tuple_map_free(map);
    tr_grouping_release(&g);
}
END_TEST

/* ---- selection configuration -------------------------------------------------------------------------------------- */

START_TEST(test_profiles_and_kernel_info)
{
    const tr_moe_profile *p;
    int defaulted;
    tr_error err;
    ck_assert_int_eq(tr_moe_profile_choose(NULL, "Apple M2 Max (M2 Ultra)", &p, &defaulted, &err), TR_OK);
    ck_assert_str_eq(p->name, "M2 Ultra");   /* the longest name contained wins */
    ck_assert_int_eq(defaulted, 0);
    ck_assert_int_eq(tr_moe_profile_choose(NULL, "Apple M1 Max", &p, &defaulted, &err), TR_OK);
    ck_assert_str_eq(p->name, "M1 Max");
    ck_assert_int_eq(tr_moe_profile_choose(NULL, "a GPU", &p, &defaulted, &err), TR_OK);
    ck_assert_int_eq(defaulted, 1);
    ck_assert_int_eq(tr_moe_profile_choose("m3 pro", NULL, &p, &defaulted, &err), TR_OK);
    ck_assert_str_eq(p->name, "M3 Pro");
    ck_assert_ptr_null(tr_moe_profile_at(tr_moe_profile_count()));
    ck_assert_int_eq(tr_moe_profiles_check(&err), TR_OK);

    ck_assert_int_eq(tr_moe_use_fp32_acc(NULL, 2048), 1);
    ck_assert_int_eq(tr_moe_use_fp32_acc(NULL, 512), 0);
    tr_moe_select_cfg c;
    tr_moe_select_cfg_default(&c);
    static const struct {
        int fp32;
        const char *rule;
    } rules[] = {{TR_MOE_FP32_ON, "--moe-fp32-acc on"}, {TR_MOE_FP32_OFF, "--moe-fp32-acc off"},
                 {TR_MOE_FP32_AUTO, "hidden_dim >= 1024"}};
    for (int i = 0; i < 3; i++) {
        c.fp32_acc = rules[i].fp32;
        c.use_decode_gemv = 0;
        c.profile_defaulted = 0;
        json_t *j = tr_moe_kernel_info(&c, NULL);
        ck_assert_str_eq(json_string_value(json_object_get(j, "use_fp32_acc_rule")), rules[i].rule);
        ck_assert(json_is_false(json_object_get(j, "use_decode_gemv")));
        ck_assert(json_is_false(json_object_get(j, "profile_defaulted")));
        json_decref(j);
    }
    ck_assert_int_eq(tr_moe_use_fp32_acc(&c, 16), 0);
    json_t *j = tr_moe_kernel_info(NULL, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(j, "device")), "M4 Max");
    ck_assert(json_is_true(json_object_get(j, "profile_defaulted")));
    ck_assert(json_is_true(json_object_get(j, "use_decode_gemv")));
    json_decref(j);
    ck_assert_ptr_null(tr_moe_recommend_kernel(NULL, NULL, 0, 0, NULL, &err));
    ck_assert_int_eq(err.code, TR_E_INVALID_SHAPE);
}
END_TEST

Suite *suite_cov_moe(void)
{
    Suite *s = suite_create("cov_moe");
    TCase *tc = tcase_create("diag");
    tcase_add_test(tc, test_names_and_lookups);
    tcase_add_test(tc, test_events_and_details);
    tcase_add_test(tc, test_dispatch_without_diag);
    tcase_add_test(tc, test_profiles_and_kernel_info);
    suite_add_tcase(s, tc);
    return s;
}
