/*
 * check_moe_select.c — the kernel selection policy of MOE.md §5: profiles and their invariants, profile choice, the
 * §5.3 algorithm for all six profiles at n = 1…130 with fp32 on/off, every practice tuple of KERNELS.md §5 and
 * several availability sets (checked against an oracle written here from the spec's text), the threshold
 * boundaries, the kernel_not_found recording, recommend_kernel/get_kernel_info against golden JSON, the policy
 * name list and the availability set.
 */
#include "tests.h"
#include "trellis/alloc.h"
#include "trellis/jsonio.h"
#include "trellis/moe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* §5.2 as written in the spec (the oracle's own copy). */
static const struct {
    const char *name;
    uint32_t prefill4_max, base_max, large_tile;
} spec_profiles[6] = {
    {"M4 Max", 16, 32, 128}, {"M3 Max", 16, 32, 128}, {"M3 Pro", 12, 24, 96},
    {"M2 Ultra", 16, 32, 128}, {"M2 Max", 12, 24, 96}, {"M1 Max", 8, 16, 64},
};

/* The practice tuples of KERNELS.md §5 (duplicates removed). */
static const tr_bit_tuple practice[] = {
    {6, 2, 3}, {6, 3, 4}, {6, 2, 4}, {4, 4, 4}, {2, 2, 2}, {3, 3, 3}, {5, 5, 5},
    {6, 6, 6}, {7, 7, 7}, {8, 8, 8}, {2, 8, 2}, {8, 2, 8},
};
#define N_PRACTICE (sizeof practice / sizeof practice[0])

static char *dump(json_t *doc)
{
    char *s = tr_json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER, tr_json_mark());
    json_decref(doc);
    return s;
}

static tr_moe_avail *avail_of(const char *const *names, size_t n)
{
    tr_moe_avail *a;
    tr_error err;
    ck_assert_int_eq(tr_moe_avail_new(&a, &err), TR_OK);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(tr_moe_avail_add(a, names[i], &err), TR_OK);
    return a;
}

START_TEST(test_profiles)
{
    tr_error err;
    ck_assert_uint_eq(tr_moe_profile_count(), 6);
    for (size_t i = 0; i < 6; i++) {
        const tr_moe_profile *p = tr_moe_profile_at(i);
        ck_assert_str_eq(p->name, spec_profiles[i].name);
        ck_assert_uint_eq(p->decode_max, 1);
        ck_assert_uint_eq(p->prefill4_max, spec_profiles[i].prefill4_max);
        ck_assert_uint_eq(p->base_max, spec_profiles[i].base_max);
        ck_assert_uint_eq(p->large_batch_min, spec_profiles[i].base_max + 1);
        ck_assert_uint_eq(p->large_tile, spec_profiles[i].large_tile);
    }
    ck_assert_ptr_null(tr_moe_profile_at(6));
    ck_assert_int_eq(tr_moe_profiles_check(&err), TR_OK);
}
END_TEST

START_TEST(test_profile_choice)
{
    const tr_moe_profile *p;
    int defaulted;
    tr_error err;
    static const struct {
        const char *device, *want;
        int defaulted;
    } cases[] = {
        {"Apple M4 Max", "M4 Max", 0}, {"Apple M3 Pro", "M3 Pro", 0}, {"Apple M2 Ultra", "M2 Ultra", 0},
        {"Apple M2 Max", "M2 Max", 0}, {"Apple M1 Max", "M1 Max", 0}, {"Apple M4 Pro", "M4 Max", 1},
        {"", "M4 Max", 1}, {NULL, "M4 Max", 1}, {"apple m3 max", "M4 Max", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ck_assert_int_eq(tr_moe_profile_choose(NULL, cases[i].device, &p, &defaulted, &err), TR_OK);
        ck_assert_str_eq(p->name, cases[i].want);
        ck_assert_int_eq(defaulted, cases[i].defaulted);
    }
    /* explicit names win over the device name, ASCII case-insensitively */
    ck_assert_int_eq(tr_moe_profile_choose("m1 max", "Apple M4 Max", &p, &defaulted, &err), TR_OK);
    ck_assert_str_eq(p->name, "M1 Max");
    ck_assert_int_eq(defaulted, 0);
    ck_assert_int_eq(tr_moe_profile_choose("M5 Max", NULL, &p, &defaulted, &err), TR_E_INVALID_PARAM);
    ck_assert_str_eq(err.text, "device_profile: TR_E_INVALID_PARAM: unknown profile \"M5 Max\" (one of: M4 Max, "
                               "M3 Max, M3 Pro, M2 Ultra, M2 Max, M1 Max)");
}
END_TEST

/* The oracle: §5.3 written again from the spec for one configuration. */
typedef struct expected {
    const char *kernel;
    uint32_t tile;
    tr_moe_category cat;
    int specialized, fallback;
} expected;

static expected oracle(size_t prof, uint32_t n, int fp32, const tr_bit_tuple *t, const tr_moe_avail *avail,
                       int gemv_on)
{
    expected e = {NULL, 64, TR_MOE_CAT_DECODE, 0, 0};
    char spec[64] = "";
    if (t)
        snprintf(spec, sizeof spec, "moe_trellis_swiglu_decode_%u_%u_%u", t->g, t->u, t->d);
    if (n <= 1) {
        int dominant = t && t->g == 6 && ((t->u == 2 && t->d == 3) || (t->u == 3 && t->d == 4) ||
                                          (t->u == 2 && t->d == 4));
        if (avail && gemv_on && tr_moe_avail_has(avail, "moe_trellis_swiglu_decode_gemv"))
            e.kernel = "moe_trellis_swiglu_decode_gemv";
        else if (avail && t && tr_moe_avail_has(avail, spec)) {
            e.kernel = tr_moe_specialized_name(*t);
            e.specialized = 1;
        } else {
            e.kernel = "moe_trellis_swiglu_decode";
            e.fallback = avail && dominant;
        }
    } else if (n <= spec_profiles[prof].prefill4_max) {
        e.kernel = fp32 ? "moe_trellis_swiglu_prefill4_fp32acc" : "moe_trellis_swiglu_prefill4";
        e.cat = TR_MOE_CAT_SMALL_PREFILL;
    } else if (n <= spec_profiles[prof].base_max) {
        e.kernel = fp32 ? "moe_trellis_swiglu_fp32acc" : "moe_trellis_swiglu";
        e.cat = TR_MOE_CAT_MEDIUM_PREFILL;
    } else {
        e.kernel = fp32 ? "moe_trellis_swiglu_fp32acc" : "moe_trellis_swiglu_large_batch";
        e.tile = fp32 ? 64 : spec_profiles[prof].large_tile;
        e.cat = TR_MOE_CAT_LARGE_PREFILL;
    }
    return e;
}

static int selection_matches(const tr_moe_selection *s, const expected *e)
{
    return strcmp(s->kernel, e->kernel) == 0 && s->tile_n == e->tile && s->category == e->cat &&
           s->specialized == e->specialized && (s->fallback_reason == TR_MOE_KERNEL_NOT_FOUND) == e->fallback;
}

/* The availability sets of the sweep (index 0 is NULL: host-only backend). */
static tr_moe_avail *sweep_avail(int which)
{
    static const char *const gemv[] = {"moe_trellis_swiglu_decode_gemv"};
    static const char *const dominant[] = {"moe_trellis_swiglu_decode_6_2_3", "moe_trellis_swiglu_decode_6_3_4",
                                           "moe_trellis_swiglu_decode_6_2_4"};
    static const char *const both[] = {"moe_trellis_swiglu_decode_6_2_3", "moe_trellis_swiglu_decode_6_3_4",
                                       "moe_trellis_swiglu_decode_6_2_4", "moe_trellis_swiglu_decode_gemv"};
    static const char *const wide[] = {"moe_trellis_swiglu_decode", "moe_trellis_swiglu_prefill4",
                                       "moe_trellis_swiglu", "moe_trellis_swiglu_decode_4_4_4",
                                       "moe_trellis_swiglu_decode_6_2_3", "moe_trellis_swiglu_decode_8_2_8"};
    switch (which) {
    case 0: return NULL;
    case 1: return avail_of(NULL, 0);
    case 2: return avail_of(gemv, 1);
    case 3: return avail_of(dominant, 3);
    case 4: return avail_of(both, 4);
    default: return avail_of(wide, 6);
    }
}

/* One availability set: every profile, n, fp32, gemv flag and tuple (plus no tuple). */
static void sweep_one_avail(int which, size_t *checked, size_t *bad, uint64_t *fallbacks, char *first_bad)
{
    tr_moe_avail *avail = sweep_avail(which);
    tr_error err;
    for (size_t prof = 0; prof < 6; prof++)
        for (int gemv = 0; gemv < 2; gemv++) {
            tr_moe_select_cfg cfg;
            tr_moe_select_cfg_default(&cfg);
            cfg.profile = tr_moe_profile_at(prof);
            cfg.use_decode_gemv = gemv;
            for (uint32_t n = 1; n <= 130; n++)
                for (int fp32 = 0; fp32 < 2; fp32++)
                    for (size_t ti = 0; ti <= N_PRACTICE; ti++) {
                        const tr_bit_tuple *t = ti < N_PRACTICE ? &practice[ti] : NULL;
                        tr_moe_selection s;
                        expected e = oracle(prof, n, fp32, t, avail, gemv);
                        int rc = tr_select_moe_kernel(&cfg, n, fp32, t, avail, NULL, &s, &err);
                        (*checked)++;
                        *fallbacks += e.fallback;
                        if (rc != TR_OK || !selection_matches(&s, &e)) {
                            if (!(*bad)++)
                                snprintf(first_bad, 256, "avail %d %s n=%u fp32=%d gemv=%d tuple %zu: got %s, "
                                         "expected %s", which, cfg.profile->name, n, fp32, gemv, ti, s.kernel,
                                         e.kernel);
                        }
                    }
        }
    tr_moe_avail_free(avail);
}

START_TEST(test_full_table)
{
    size_t checked = 0, bad = 0;
    uint64_t fallbacks = 0;
    char first_bad[256] = "";
    for (int which = 0; which < 6; which++)
        sweep_one_avail(which, &checked, &bad, &fallbacks, first_bad);
    ck_assert_msg(bad == 0, "%zu of %zu selections differ from the spec; first: %s", bad, checked, first_bad);
    ck_assert_uint_eq(checked, 6u * 6 * 2 * 130 * 2 * (N_PRACTICE + 1));
    ck_assert_uint_gt(fallbacks, 0);
}
END_TEST

/* Every threshold ±1 for every profile, both accumulations. */
START_TEST(test_threshold_boundaries)
{
    tr_error err;
    for (size_t prof = 0; prof < 6; prof++) {
        tr_moe_select_cfg cfg;
        tr_moe_select_cfg_default(&cfg);
        cfg.profile = tr_moe_profile_at(prof);
        const tr_moe_profile *p = cfg.profile;
        const uint32_t ns[] = {1, 2, p->prefill4_max, p->prefill4_max + 1, p->base_max, p->large_batch_min};
        const tr_moe_category cats[] = {TR_MOE_CAT_DECODE, TR_MOE_CAT_SMALL_PREFILL, TR_MOE_CAT_SMALL_PREFILL,
                                        TR_MOE_CAT_MEDIUM_PREFILL, TR_MOE_CAT_MEDIUM_PREFILL,
                                        TR_MOE_CAT_LARGE_PREFILL};
        for (int i = 0; i < 6; i++) {
            tr_moe_selection s;
            ck_assert_int_eq(tr_select_moe_kernel(&cfg, ns[i], 0, NULL, NULL, NULL, &s, &err), TR_OK);
            ck_assert_msg(s.category == cats[i], "%s n=%u: %s", p->name, ns[i], tr_moe_category_name(s.category));
        }
    }
    /* spot values of the table */
    tr_moe_select_cfg cfg;
    tr_moe_selection s;
    tr_moe_select_cfg_default(&cfg);
    cfg.profile = tr_moe_profile_at(2);   /* M3 Pro */
    ck_assert_int_eq(tr_select_moe_kernel(&cfg, 25, 0, NULL, NULL, NULL, &s, &err), TR_OK);
    ck_assert_str_eq(s.kernel, "moe_trellis_swiglu_large_batch");
    ck_assert_uint_eq(s.tile_n, 96);
    ck_assert_int_eq(tr_select_moe_kernel(&cfg, 25, 1, NULL, NULL, NULL, &s, &err), TR_OK);
    ck_assert_str_eq(s.kernel, "moe_trellis_swiglu_fp32acc");
    ck_assert_uint_eq(s.tile_n, 64);
    ck_assert_int_eq(s.category, TR_MOE_CAT_LARGE_PREFILL);
    ck_assert_int_eq(tr_select_moe_kernel(&cfg, 12, 1, NULL, NULL, NULL, &s, &err), TR_OK);
    ck_assert_str_eq(s.kernel, "moe_trellis_swiglu_prefill4_fp32acc");
    /* a uniform-tuple decode step (T = 1, k = 4) dispatches n = 4 rows: prefill4 (§5.1) */
    ck_assert_int_eq(tr_select_moe_kernel(NULL, 4, 0, &practice[3], NULL, NULL, &s, &err), TR_OK);
    ck_assert_str_eq(s.kernel, "moe_trellis_swiglu_prefill4");
}
END_TEST

START_TEST(test_recording)
{
    tr_error err;
    tr_moe_diag *d;
    tr_moe_selection s;
    tr_moe_diag_snapshot snap;
    tr_moe_tuple_counters tc;
    ck_assert_int_eq(tr_moe_diag_new(&d, &err), TR_OK);
    tr_moe_avail *empty = avail_of(NULL, 0);
    tr_bit_tuple t623 = {6, 2, 3}, t444 = {4, 4, 4};
    tr_moe_diag_begin_call(d, &(tr_moe_call_info){7, 1, 4, 64, NULL});
    /* host-only: nothing recorded */
    ck_assert_int_eq(tr_select_moe_kernel(NULL, 1, 0, &t623, NULL, d, &s, &err), TR_OK);
    ck_assert_int_eq(s.fallback_reason, 0);
    /* a non-dominant tuple without its kernel: no fallback */
    ck_assert_int_eq(tr_select_moe_kernel(NULL, 1, 0, &t444, empty, d, &s, &err), TR_OK);
    ck_assert_int_eq(s.fallback_reason, 0);
    tr_moe_diag_get(d, &snap);
    ck_assert_uint_eq(snap.kernel_fallback_total, 0);
    ck_assert(!snap.has_last_fallback);
    /* the dominant tuple's kernel is absent: kernel_not_found on the tuple */
    ck_assert_int_eq(tr_select_moe_kernel(NULL, 1, 1, &t623, empty, d, &s, &err), TR_OK);
    ck_assert_str_eq(s.kernel, "moe_trellis_swiglu_decode");
    ck_assert_int_eq(s.fallback_reason, TR_MOE_KERNEL_NOT_FOUND);
    ck_assert_str_eq(s.fallback_detail, "moe_trellis_swiglu_decode_6_2_3 -> moe_trellis_swiglu_decode");
    tr_moe_diag_get(d, &snap);
    ck_assert_uint_eq(snap.kernel_fallback_total, 1);
    ck_assert_uint_eq(snap.kernel_fallback_reason[TR_MOE_KERNEL_NOT_FOUND], 1);
    ck_assert_str_eq(snap.last_fallback.detail, "moe_trellis_swiglu_decode_6_2_3 -> moe_trellis_swiglu_decode");
    ck_assert_int_eq(snap.last_fallback.layer, 7);
    ck_assert_uint_eq(snap.last_fallback.batch_size, 1);
    ck_assert(snap.last_fallback.has_tuple && snap.last_fallback.bit_tuple.u == 2);
    ck_assert_int_eq(tr_moe_diag_tuple(d, t623, &tc), 1);
    ck_assert_uint_eq(tc.fallbacks, 1);
    ck_assert_uint_eq(tc.fallback_reason[TR_MOE_KERNEL_NOT_FOUND], 1);
    ck_assert_uint_eq(tr_moe_diag_signature_count(d, "[2, 3, 6]"), 1);
    /* n = 0 is an invalid_shape error event */
    ck_assert_int_eq(tr_select_moe_kernel(NULL, 0, 0, &t623, empty, d, &s, &err), TR_E_INVALID_SHAPE);
    ck_assert_str_eq(err.text, "select_moe_kernel: TR_E_INVALID_SHAPE: n_rows=0, expected >= 1");
    tr_moe_diag_get(d, &snap);
    ck_assert_int_eq(snap.last_fallback.reason_code, TR_MOE_INVALID_SHAPE);
    ck_assert_uint_eq(snap.last_fallback.event_index, 2);
    ck_assert_uint_eq(snap.kernel_fallback_total, 1);
    tr_moe_avail_free(empty);
    tr_moe_diag_free(d);
}
END_TEST

START_TEST(test_fp32_rule_and_names)
{
    tr_moe_select_cfg c;
    tr_moe_select_cfg_default(&c);
    ck_assert_int_eq(tr_moe_use_fp32_acc(&c, 1023), 0);
    ck_assert_int_eq(tr_moe_use_fp32_acc(&c, 1024), 1);
    ck_assert_int_eq(tr_moe_use_fp32_acc(NULL, 2048), 1);
    c.fp32_acc = TR_MOE_FP32_OFF;
    ck_assert_int_eq(tr_moe_use_fp32_acc(&c, 4096), 0);
    c.fp32_acc = TR_MOE_FP32_ON;
    ck_assert_int_eq(tr_moe_use_fp32_acc(&c, 16), 1);
    ck_assert_str_eq(tr_moe_category_name(TR_MOE_CAT_MEDIUM_PREFILL), "medium_prefill");
    ck_assert_str_eq(tr_moe_specialized_name((tr_bit_tuple){2, 8, 5}), "moe_trellis_swiglu_decode_2_8_5");
    ck_assert_ptr_null(tr_moe_specialized_name((tr_bit_tuple){1, 8, 5}));
    ck_assert_ptr_null(tr_moe_specialized_name((tr_bit_tuple){2, 9, 5}));
    ck_assert(tr_moe_tuple_is_dominant((tr_bit_tuple){6, 2, 4}));
    ck_assert(!tr_moe_tuple_is_dominant((tr_bit_tuple){6, 4, 2}));
}
END_TEST

START_TEST(test_policy_names)
{
    size_t n = tr_moe_policy_name_count(), generic = 0, listed = 0, bad = 0;
    ck_assert_uint_eq(n, 8 + 343);
    for (size_t i = 0; i < n; i++) {
        tr_moe_policy_name p = tr_moe_policy_name_at(i);
        generic += p.generic;
        listed += p.listed_when_missing;
        bad += tr_moe_policy_name_index(p.name) != (long)i || p.generic == p.gated;
        if (i >= 8) {
            char want[64];
            size_t t = i - 8;
            snprintf(want, sizeof want, "moe_trellis_swiglu_decode_%zu_%zu_%zu", 2 + t / 49, 2 + t / 7 % 7, 2 + t % 7);
            bad += strcmp(p.name, want) != 0;
        }
    }
    ck_assert_uint_eq(bad, 0);
    ck_assert_uint_eq(generic, 6);
    ck_assert_uint_eq(listed, 6 + 2 + 3);
    ck_assert_ptr_null(tr_moe_policy_name_at(n).name);
    ck_assert_str_eq(tr_moe_policy_name_at(0).name, "moe_trellis_swiglu_decode");
    ck_assert_str_eq(tr_moe_policy_name_at(5).name, "moe_trellis_swiglu_large_batch");
    ck_assert(tr_moe_policy_name_at(6).gated && tr_moe_policy_name_at(7).gated);
    static const char *const not_policy[] = {
        "moe_trellis_swiglu_decode_9_2_3", "moe_trellis_swiglu_decode_6_2_", "moe_trellis_swiglu_decode_6_2_33",
        "moe_trellis_swiglu_simd", "moe_trellis_swiglu_decode_1_2_3", "moe_trellis_swiglu_decode_6x2x3", "",
    };
    for (size_t i = 0; i < sizeof not_policy / sizeof not_policy[0]; i++)
        ck_assert_msg(tr_moe_policy_name_index(not_policy[i]) == -1, "%s", not_policy[i]);
}
END_TEST

START_TEST(test_avail_set)
{
    tr_error err;
    tr_moe_avail *a;
    ck_assert_int_eq(tr_moe_avail_new(&a, &err), TR_OK);
    static const char *const names[] = {"zeta", "alpha", "mid", "alpha", "beta", "zeta"};
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(tr_moe_avail_add(a, names[i], &err), TR_OK);
    ck_assert_uint_eq(tr_moe_avail_count(a), 4);
    ck_assert(tr_moe_avail_has(a, "alpha") && tr_moe_avail_has(a, "zeta") && tr_moe_avail_has(a, "beta"));
    ck_assert(!tr_moe_avail_has(a, "alph") && !tr_moe_avail_has(a, "") && !tr_moe_avail_has(a, NULL));
    ck_assert(!tr_moe_avail_has(NULL, "alpha"));
    ck_assert_uint_eq(tr_moe_avail_count(NULL), 0);
    for (int i = 0; i < 40; i++) {
        char name[16];
        snprintf(name, sizeof name, "k%02d", 39 - i);
        ck_assert_int_eq(tr_moe_avail_add(a, name, &err), TR_OK);
    }
    ck_assert(tr_moe_avail_has(a, "k00") && tr_moe_avail_has(a, "k39"));
    tr_moe_avail_free(a);
    tr_moe_avail_free(NULL);
    /* allocation failures leave the set unchanged and report TR_E_NOMEM */
    for (unsigned long k = 1;; k++) {
        tr_moe_avail *b = NULL;
        tr_alloc_fail_at(k);
        int rc = tr_moe_avail_new(&b, &err);
        for (int i = 0; rc == TR_OK && i < 20; i++) {
            char name[16];
            snprintf(name, sizeof name, "n%d", i);
            rc = tr_moe_avail_add(b, name, &err);
            if (rc != TR_OK)
                ck_assert(!tr_moe_avail_has(b, name) && tr_moe_avail_count(b) == (size_t)i);
        }
        int fired = tr_alloc_fired();
        tr_alloc_fail_at(0);
        ck_assert_int_eq(rc, fired ? TR_E_NOMEM : TR_OK);
        tr_moe_avail_free(b);
        if (!fired)
            break;
    }
}
END_TEST

START_TEST(test_recommend_golden)
{
    tr_error err;
    tr_moe_select_cfg cfg;
    tr_moe_select_cfg_default(&cfg);
    tr_bit_tuple t = {6, 2, 3};
    static const char *const spec[] = {"moe_trellis_swiglu_decode_6_2_3"};
    tr_moe_avail *a = avail_of(spec, 1);
    char *s = dump(tr_moe_recommend_kernel(&cfg, NULL, 1, 0, &t, &err));
    ck_assert_str_eq(s, "{\"batch_size\":1,\"use_fp32_acc\":false,\"kernel_name\":\"moe_trellis_swiglu_decode\","
                        "\"tile_n\":64,\"category\":\"decode\",\"description\":\"Single-token inference optimized\","
                        "\"specialized\":false,\"bit_tuple\":[6,2,3],\"device_profile\":\"M4 Max\"}");
    tr_dealloc(s);
    s = dump(tr_moe_recommend_kernel(&cfg, a, 1, 1, &t, &err));
    ck_assert_str_eq(s, "{\"batch_size\":1,\"use_fp32_acc\":true,\"kernel_name\":"
                        "\"moe_trellis_swiglu_decode_6_2_3\",\"tile_n\":64,\"category\":\"decode\",\"description\":"
                        "\"Single-token inference optimized\",\"specialized\":true,\"bit_tuple\":[6,2,3],"
                        "\"device_profile\":\"M4 Max\"}");
    tr_dealloc(s);
    s = dump(tr_moe_recommend_kernel(&cfg, a, 4, 1, NULL, &err));
    ck_assert_str_eq(s, "{\"batch_size\":4,\"use_fp32_acc\":true,\"kernel_name\":"
                        "\"moe_trellis_swiglu_prefill4_fp32acc\",\"tile_n\":64,\"category\":\"small_prefill\","
                        "\"description\":\"Small batch prefill (4-token SIMD)\",\"specialized\":false,"
                        "\"bit_tuple\":null,\"device_profile\":\"M4 Max\"}");
    tr_dealloc(s);
    s = dump(tr_moe_recommend_kernel(&cfg, NULL, 20, 0, NULL, &err));
    ck_assert_str_eq(s, "{\"batch_size\":20,\"use_fp32_acc\":false,\"kernel_name\":\"moe_trellis_swiglu\","
                        "\"tile_n\":64,\"category\":\"medium_prefill\",\"description\":\"Medium batch processing\","
                        "\"specialized\":false,\"bit_tuple\":null,\"device_profile\":\"M4 Max\"}");
    tr_dealloc(s);
    s = dump(tr_moe_recommend_kernel(&cfg, NULL, 33, 0, NULL, &err));
    ck_assert_str_eq(s, "{\"batch_size\":33,\"use_fp32_acc\":false,\"kernel_name\":"
                        "\"moe_trellis_swiglu_large_batch\",\"tile_n\":128,\"category\":\"large_prefill\","
                        "\"description\":\"Large batch with tile_n=128\",\"specialized\":false,\"bit_tuple\":null,"
                        "\"device_profile\":\"M4 Max\"}");
    tr_dealloc(s);
    cfg.profile = tr_moe_profile_at(5);   /* M1 Max */
    cfg.profile_defaulted = 0;
    s = dump(tr_moe_recommend_kernel(&cfg, NULL, 17, 1, &t, &err));
    ck_assert_str_eq(s, "{\"batch_size\":17,\"use_fp32_acc\":true,\"kernel_name\":\"moe_trellis_swiglu_fp32acc\","
                        "\"tile_n\":64,\"category\":\"large_prefill\",\"description\":\"Large batch with tile_n=64\","
                        "\"specialized\":false,\"bit_tuple\":[6,2,3],\"device_profile\":\"M1 Max\"}");
    tr_dealloc(s);
    ck_assert_ptr_null(tr_moe_recommend_kernel(&cfg, NULL, 0, 0, NULL, &err));
    ck_assert_int_eq(err.code, TR_E_INVALID_SHAPE);
    tr_moe_avail_free(a);
}
END_TEST

START_TEST(test_kernel_info_golden)
{
    tr_moe_select_cfg cfg;
    tr_moe_select_cfg_default(&cfg);
    char *s = dump(tr_moe_kernel_info(&cfg, NULL));
    ck_assert_str_eq(s,
        "{\"device\":\"M4 Max\",\"profile_defaulted\":true,"
        "\"thresholds\":{\"decode_max\":1,\"prefill4_max\":16,\"base_max\":32,\"large_batch_min\":33},"
        "\"tile_sizes\":{\"decode\":64,\"prefill4\":64,\"base\":64,\"large_batch\":128},"
        "\"specialized_kernels\":[\"moe_trellis_swiglu_decode_6_2_3\",\"moe_trellis_swiglu_decode_6_3_4\","
        "\"moe_trellis_swiglu_decode_6_2_4\"],\"dominant_bit_tuples\":[[6,2,3],[6,3,4],[6,2,4]],"
        "\"use_decode_gemv\":true,\"use_fp32_acc_rule\":\"hidden_dim >= 1024\","
        "\"available\":{\"moe_trellis_swiglu\":false,\"moe_trellis_swiglu_fp32acc\":false,"
        "\"moe_trellis_swiglu_large_batch\":false,\"moe_trellis_swiglu_simd\":false,"
        "\"moe_trellis_swiglu_decode\":false,\"moe_trellis_swiglu_decode_6_2_3\":false,"
        "\"moe_trellis_swiglu_decode_6_3_4\":false,\"moe_trellis_swiglu_decode_6_2_4\":false,"
        "\"moe_trellis_swiglu_decode_gemv\":false,\"moe_trellis_swiglu_prefill4\":false,"
        "\"moe_trellis_swiglu_prefill4_fp32acc\":false,\"moe_trellis_swiglu_grouped\":false,"
        "\"moe_trellis_mixed_swiglu\":false,\"moe_trellis_mixed_swiglu_decode\":false,"
        "\"moe_trellis_mixed_swiglu_prefill\":false,\"moe_trellis_mixed_swiglu_large\":false,"
        "\"moe_trellis_fast_2bit_swiglu\":false,\"moe_trellis_mixed_bpw_swiglu\":false},"
        "\"profiles\":[\"M4 Max\",\"M3 Max\",\"M3 Pro\",\"M2 Ultra\",\"M2 Max\",\"M1 Max\"]}");
    tr_dealloc(s);
    static const char *const names[] = {"moe_trellis_swiglu_grouped", "moe_trellis_swiglu_simd", "unrelated"};
    tr_moe_avail *a = avail_of(names, 3);
    cfg.profile = tr_moe_profile_at(2);
    cfg.profile_defaulted = 0;
    cfg.use_decode_gemv = 0;
    cfg.fp32_acc = TR_MOE_FP32_ON;
    json_t *o = tr_moe_kernel_info(&cfg, a);
    ck_assert_str_eq(json_string_value(json_object_get(o, "device")), "M3 Pro");
    ck_assert(json_is_false(json_object_get(o, "profile_defaulted")));
    ck_assert(json_is_false(json_object_get(o, "use_decode_gemv")));
    ck_assert_str_eq(json_string_value(json_object_get(o, "use_fp32_acc_rule")), "--moe-fp32-acc on");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(o, "tile_sizes"), "large_batch")), 96);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(o, "thresholds"), "large_batch_min")), 25);
    json_t *av = json_object_get(o, "available");
    ck_assert_uint_eq(json_object_size(av), 18);
    ck_assert(json_is_true(json_object_get(av, "moe_trellis_swiglu_grouped")));
    ck_assert(json_is_true(json_object_get(av, "moe_trellis_swiglu_simd")));
    ck_assert(json_is_false(json_object_get(av, "moe_trellis_swiglu")));
    ck_assert_ptr_null(json_object_get(av, "unrelated"));
    json_decref(o);
    cfg.fp32_acc = TR_MOE_FP32_OFF;
    o = tr_moe_kernel_info(&cfg, a);
    ck_assert_str_eq(json_string_value(json_object_get(o, "use_fp32_acc_rule")), "--moe-fp32-acc off");
    json_decref(o);
    tr_moe_avail_free(a);
}
END_TEST

Suite *suite_moe_select(void)
{
    Suite *s = suite_create("moe_select");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_profiles);
    tcase_add_test(tc, test_profile_choice);
    tcase_add_test(tc, test_full_table);
    tcase_add_test(tc, test_threshold_boundaries);
    tcase_add_test(tc, test_recording);
    tcase_add_test(tc, test_fp32_rule_and_names);
    tcase_add_test(tc, test_policy_names);
    tcase_add_test(tc, test_avail_set);
    tcase_add_test(tc, test_recommend_golden);
    tcase_add_test(tc, test_kernel_info_golden);
    suite_add_tcase(s, tc);
    return s;
}
