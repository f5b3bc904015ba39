/*
 * check_nan_guard.c — the NaN guard of MOE.md §7: injection at every site for every policy, the canonical first key
 * under shuffled execution order, counts, the zero policy, abort (complete scan, TR_E_NAN_DETECTED, KV length
 * restored through the abort hook), unobserved accounting on a fake fused device path, the diagnostics interaction
 * of §7.6 and the statistics JSON.
 */
#include "tests.h"
#include "trellis/alloc.h"
#include "trellis/jsonio.h"
#include "trellis/moe.h"
#include "trellis/rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const tr_bit_tuple T623 = {6, 2, 3};

static tr_nan_guard *new_guard(tr_nan_policy policy, tr_moe_diag *d)
{
    tr_nan_guard *g;
    tr_error err;
    ck_assert_int_eq(tr_nan_guard_new(policy, d, &g, &err), TR_OK);
    return g;
}

static tr_moe_diag *new_diag(void)
{
    tr_moe_diag *d;
    tr_error err;
    ck_assert_int_eq(tr_moe_diag_new(&d, &err), TR_OK);
    return d;
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Field-by-field equality of two statistics (no padding bytes compared). */
static int same_stats(const tr_nan_stats *a, const tr_nan_stats *b)
{
    if (a->nan_detected != b->nan_detected || a->inf_detected != b->inf_detected || a->has_first != b->has_first)
        return 0;
    if (a->has_first && (a->first_stage != b->first_stage || a->first_layer != b->first_layer ||
                         a->first_expert != b->first_expert || a->first_token != b->first_token ||
                         a->first_slot != b->first_slot || a->first_index != b->first_index ||
                         a->first_kind != b->first_kind || a->first_call != b->first_call ||
                         a->first_position != b->first_position))
        return 0;
    for (int i = 0; i < TR_NAN_STAGE_COUNT; i++) {
        const tr_nan_stage_stats *x = &a->stage[i], *y = &b->stage[i];
        if (x->nan_count != y->nan_count || x->pos_inf_count != y->pos_inf_count ||
            x->neg_inf_count != y->neg_inf_count || x->scans != y->scans || x->unobserved != y->unobserved)
            return 0;
    }
    return 1;
}

START_TEST(test_names_and_sites)
{
    static const char *const stages[] = {"router", "gate", "up", "swiglu", "down", "combine", "attention", "norm",
                                         "logits"};
    for (int s = 0; s < TR_NAN_STAGE_COUNT; s++)
        ck_assert_str_eq(tr_nan_stage_name((tr_nan_stage)s), stages[s]);
    static const unsigned positions[TR_NAN_SITE_COUNT] = {10, 21, 22, 23, 24, 30, 40, 51, 52, 60, 70, 80, 90, 100,
                                                          10, 20};
    static const tr_nan_stage site_stage[TR_NAN_SITE_COUNT] = {
        TR_NAN_STAGE_NORM, TR_NAN_STAGE_NORM, TR_NAN_STAGE_NORM, TR_NAN_STAGE_NORM, TR_NAN_STAGE_NORM,
        TR_NAN_STAGE_ATTENTION, TR_NAN_STAGE_NORM, TR_NAN_STAGE_ROUTER, TR_NAN_STAGE_ROUTER, TR_NAN_STAGE_GATE,
        TR_NAN_STAGE_UP, TR_NAN_STAGE_SWIGLU, TR_NAN_STAGE_DOWN, TR_NAN_STAGE_COMBINE, TR_NAN_STAGE_NORM,
        TR_NAN_STAGE_LOGITS};
    for (int s = 0; s < TR_NAN_SITE_COUNT; s++) {
        ck_assert_uint_eq(tr_nan_site_position((tr_nan_site)s), positions[s]);
        ck_assert_int_eq(tr_nan_site_stage((tr_nan_site)s), site_stage[s]);
    }
    ck_assert_uint_eq(tr_nan_site_position((tr_nan_site)99), 0);
    tr_nan_policy p;
    tr_error err;
    static const char *const policies[] = {"off", "report", "zero", "abort"};
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(tr_nan_policy_parse(policies[i], &p, &err), TR_OK);
        ck_assert_int_eq(p, i);
        ck_assert_str_eq(tr_nan_policy_name(p), policies[i]);
    }
    ck_assert_int_eq(tr_nan_policy_parse("warn", &p, &err), TR_E_INVALID_PARAM);
    ck_assert_str_eq(err.text, "nan_policy: TR_E_INVALID_PARAM: \"warn\" is not one of report, zero, abort, off");
    ck_assert_str_eq(tr_nonfinite_name(TR_NF_NEG_INF), "-inf");
    tr_nan_guard *g;
    ck_assert_int_eq(tr_nan_guard_new((tr_nan_policy)7, NULL, &g, &err), TR_E_INVALID_PARAM);
    ck_assert_ptr_null(g);
    g = new_guard(TR_NAN_REPORT, NULL);
    float x = 1.0f;
    tr_nan_where w = {(tr_nan_site)TR_NAN_SITE_COUNT, 0, 0, 0, -1, NULL};
    ck_assert_int_eq(tr_nan_guard_scan_f32(g, &w, &x, 1, 1, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_nan_guard_policy(g), TR_NAN_REPORT);
    tr_nan_guard_free(g);
    tr_nan_guard *h = NULL;
    tr_alloc_fail_at(1);
    ck_assert_int_eq(tr_nan_guard_new(TR_NAN_REPORT, NULL, &h, &err), TR_E_NOMEM);
    tr_alloc_fail_at(0);
    ck_assert_ptr_null(h);
    tr_nan_guard_free(NULL);
}
END_TEST

/* ---- injection at every site for every policy ------------------------------------------------------------------- */

static int hook_calls;
static void count_hook(void *user) { (void)user; hook_calls++; }

/* 3 x 5 tensor: NaN at [1][2], +Inf at [2][0], -Inf at [2][4]. */
static void injected(float x[15])
{
    for (int i = 0; i < 15; i++)
        x[i] = (float)i - 7.0f;
    x[7] = NAN;
    x[10] = INFINITY;
    x[14] = -INFINITY;
}

static int expert_site(tr_nan_site s) { return s >= TR_NAN_SITE_GATE && s <= TR_NAN_SITE_DOWN; }
static int moe_site(tr_nan_site s) { return s >= TR_NAN_SITE_ROUTER_LOGITS && s <= TR_NAN_SITE_COMBINE; }

/* Mismatches of one (site, policy) run; the scan's status, stats, data and diagnostics. */
static size_t check_site_policy(tr_nan_site site, tr_nan_policy policy, char *why, size_t size)
{
    tr_moe_diag *d = new_diag();
    tr_nan_guard *g = new_guard(policy, d);
    tr_error err;
    float x[15], orig[15];
    size_t bad = 0;
    hook_calls = 0;
    tr_nan_guard_set_abort_hook(g, count_hook, NULL);
    injected(x);
    memcpy(orig, x, sizeof x);
    int layer = site >= TR_NAN_SITE_FINAL_NORM ? 12 : 4;
    tr_nan_where w = {site, layer, 10, expert_site(site) ? 1u : 0u, expert_site(site) ? 7 : -1,
                      expert_site(site) ? &T623 : NULL};
    tr_nan_guard_begin_forward(g);
    tr_moe_diag_begin_call(d, &(tr_moe_call_info){layer, 13, 4, 64, NULL});
    int rc = tr_nan_guard_scan_f32(g, &w, x, 3, 5, &err);
    tr_nan_guard_moe_end(g);
    tr_nan_stats s;
    tr_nan_guard_get(g, &s);
    tr_nan_stage st = tr_nan_site_stage(site);
    tr_moe_diag_snapshot ds;
    tr_moe_diag_get(d, &ds);
    tr_moe_tuple_counters tc;
    tr_moe_diag_tuple(d, T623, &tc);
    int on = policy != TR_NAN_OFF, event = on && moe_site(site);
    bad += rc != (policy == TR_NAN_ABORT ? TR_E_NAN_DETECTED : TR_OK);
    bad += s.stage[st].nan_count != (uint64_t)on || s.stage[st].pos_inf_count != (uint64_t)on ||
           s.stage[st].neg_inf_count != (uint64_t)on || s.stage[st].scans != (uint64_t)on;
    bad += s.has_first != on || s.nan_detected != on || s.inf_detected != on;
    if (on)
        bad += s.first_stage != st || s.first_layer != layer || s.first_token != 11 || s.first_index != 2 ||
               s.first_kind != TR_NF_NAN || s.first_call != 0 || s.first_position != tr_nan_site_position(site) ||
               s.first_expert != w.expert || s.first_slot != w.slot;
    for (int i = 0; i < 15; i++) {
        int nonfinite = i == 7 || i == 10 || i == 14;
        uint32_t want = policy == TR_NAN_ZERO && nonfinite ? 0u : bits(orig[i]);
        bad += bits(x[i]) != want;
    }
    bad += ds.nan_events_total != (uint64_t)event;
    bad += tc.nan_events != (uint64_t)(event && expert_site(site));
    bad += ds.dispatch_error_total != (uint64_t)(event && policy == TR_NAN_ABORT);
    bad += hook_calls != (policy == TR_NAN_ABORT);
    if (event) {
        char detail[128];
        snprintf(detail, sizeof detail, "stage=%s layer=%d expert=%d token=11 index=2 kind=nan",
                 tr_nan_stage_name(st), layer, w.expert);
        bad += strcmp(ds.last_fallback.detail, detail) != 0 || ds.last_fallback.reason_code != TR_MOE_NAN_DETECTED ||
               ds.last_fallback.has_tuple != expert_site(site) || ds.last_fallback.batch_size != 13 ||
               ds.last_fallback.layer != layer;
    } else
        bad += ds.has_last_fallback;
    if (policy == TR_NAN_ABORT) {
        char text[160];
        snprintf(text, sizeof text, "nan_guard: TR_E_NAN_DETECTED: stage=%s layer=%d expert=%d token=11 index=2 "
                 "kind=nan", tr_nan_stage_name(st), layer, w.expert);
        bad += strcmp(err.text, text) != 0;
    }
    if (bad)
        snprintf(why, size, "site %d policy %s: %zu mismatches (rc %d, detail \"%.120s\")", (int)site,
                 tr_nan_policy_name(policy), bad, rc, ds.last_fallback.detail);
    tr_nan_guard_free(g);
    tr_moe_diag_free(d);
    return bad;
}

START_TEST(test_injection_every_site_and_policy)
{
    size_t bad = 0;
    char first[256] = "";
    for (int site = 0; site < TR_NAN_SITE_COUNT; site++)
        for (int policy = 0; policy < 4; policy++) {
            char why[256];
            size_t b = check_site_policy((tr_nan_site)site, (tr_nan_policy)policy, why, sizeof why);
            if (b && !bad)
                snprintf(first, sizeof first, "%s", why);
            bad += b;
        }
    ck_assert_msg(bad == 0, "%s", first);
}
END_TEST

START_TEST(test_f16_and_counts)
{
    tr_nan_guard *g = new_guard(TR_NAN_ZERO, NULL);
    tr_error err;
    uint16_t h[8] = {0x3C00, 0x7E00, 0x7C00, 0xFC00, 0x7C01, 0x8000, 0x7BFF, 0xFE00};
    tr_nan_where w = {TR_NAN_SITE_LOGITS, 2, 0, 0, -1, NULL};
    tr_nan_guard_begin_forward(g);
    ck_assert_int_eq(tr_nan_guard_scan_f16(g, &w, h, 2, 4, &err), TR_OK);
    tr_nan_stats s;
    tr_nan_guard_get(g, &s);
    ck_assert_uint_eq(s.stage[TR_NAN_STAGE_LOGITS].nan_count, 3);
    ck_assert_uint_eq(s.stage[TR_NAN_STAGE_LOGITS].pos_inf_count, 1);
    ck_assert_uint_eq(s.stage[TR_NAN_STAGE_LOGITS].neg_inf_count, 1);
    ck_assert(s.first_kind == TR_NF_NAN && s.first_index == 1 && s.first_token == 0);
    static const uint16_t want[8] = {0x3C00, 0, 0, 0, 0, 0x8000, 0x7BFF, 0};
    ck_assert(memcmp(h, want, sizeof want) == 0);
    /* only infinities: inf_detected without nan_detected; counts accumulate over scans */
    tr_nan_guard_reset(g);
    float x[4] = {1.0f, -INFINITY, 2.0f, -INFINITY};
    tr_nan_where wa = {TR_NAN_SITE_ATTENTION, 0, 0, 0, -1, NULL};
    for (int i = 0; i < 3; i++) {
        x[1] = x[3] = -INFINITY;
        ck_assert_int_eq(tr_nan_guard_scan_f32(g, &wa, x, 1, 4, &err), TR_OK);
    }
    tr_nan_guard_get(g, &s);
    ck_assert(!s.nan_detected && s.inf_detected);
    ck_assert_uint_eq(s.stage[TR_NAN_STAGE_ATTENTION].neg_inf_count, 6);
    ck_assert_uint_eq(s.stage[TR_NAN_STAGE_ATTENTION].scans, 3);
    ck_assert(s.first_kind == TR_NF_NEG_INF && s.first_index == 1 && s.first_call == 0);
    ck_assert(bits(x[1]) == 0 && bits(x[0]) == bits(1.0f));
    /* off: no scans, statistics untouched, values unchanged */
    tr_nan_guard *off = new_guard(TR_NAN_OFF, NULL);
    x[1] = NAN;
    ck_assert_int_eq(tr_nan_guard_scan_f32(off, &wa, x, 1, 4, &err), TR_OK);
    tr_nan_guard_unobserved(off, TR_NAN_STAGE_GATE, 5);
    tr_nan_guard_get(off, &s);
    tr_nan_stats zero;
    memset(&zero, 0, sizeof zero);
    ck_assert(same_stats(&s, &zero));
    ck_assert(isnan(x[1]));
    tr_nan_guard_free(off);
    tr_nan_guard_free(g);
}
END_TEST

/* ---- first key under shuffled execution ------------------------------------------------------------------------ */

typedef struct job {
    uint32_t call;
    tr_nan_site site;
    int32_t layer;
    uint32_t token, slot;
    int32_t expert;
    uint32_t rows, cols, bad_row, bad_col;
    float value;
} job;

/* Two forward calls, two layers each plus the final norm and logits; the global first is call 0, layer 0, q-head
 * norm... no: kv_a norm (2.2) beats q-head norm (2.3) and attention (3). */
static const job jobs[] = {
    {0, TR_NAN_SITE_ATTENTION, 0, 0, 0, -1, 6, 8, 2, 7, NAN},
    {0, TR_NAN_SITE_Q_HEAD_NORM, 0, 4, 0, -1, 1, 8, 0, 1, INFINITY},
    {0, TR_NAN_SITE_KV_A_NORM, 0, 5, 0, -1, 1, 8, 0, 0, -INFINITY},
    {0, TR_NAN_SITE_INPUT_NORM, 0, 0, 0, -1, 6, 8, 0, 0, 1.0f},
    {0, TR_NAN_SITE_ROUTER_WEIGHTS, 0, 0, 0, -1, 6, 4, 1, 0, NAN},
    {0, TR_NAN_SITE_ROUTER_LOGITS, 0, 0, 0, -1, 6, 64, 1, 60, INFINITY},
    {0, TR_NAN_SITE_GATE, 0, 0, 2, 3, 1, 16, 0, 9, NAN},
    {0, TR_NAN_SITE_GATE, 0, 0, 1, 5, 1, 16, 0, 11, NAN},
    {0, TR_NAN_SITE_DOWN, 0, 0, 1, 5, 1, 8, 0, 3, -INFINITY},
    {0, TR_NAN_SITE_COMBINE, 0, 0, 0, -1, 6, 8, 0, 0, NAN},
    {0, TR_NAN_SITE_UP, 1, 3, 0, 2, 1, 16, 0, 4, NAN},
    {0, TR_NAN_SITE_UP, 1, 2, 3, 9, 1, 16, 0, 15, INFINITY},
    {0, TR_NAN_SITE_SWIGLU, 1, 2, 4, 64, 1, 16, 0, 1, NAN},
    {0, TR_NAN_SITE_SWIGLU, 1, 2, 0, 9, 1, 16, 0, 1, 2.0f},
    {0, TR_NAN_SITE_POST_ATTN_NORM, 1, 0, 0, -1, 6, 8, 5, 5, NAN},
    {0, TR_NAN_SITE_FINAL_NORM, 2, 0, 0, -1, 6, 8, 3, 3, NAN},
    {0, TR_NAN_SITE_LOGITS, 2, 0, 0, -1, 6, 32, 0, 31, INFINITY},
    {1, TR_NAN_SITE_INPUT_NORM, 0, 0, 0, -1, 1, 8, 0, 0, NAN},
    {1, TR_NAN_SITE_ROUTER_LOGITS, 0, 0, 0, -1, 1, 64, 0, 0, NAN},
    {1, TR_NAN_SITE_K_HEAD_NORM, 1, 0, 0, -1, 1, 8, 0, 6, -INFINITY},
    {1, TR_NAN_SITE_COMBINE, 1, 0, 0, -1, 1, 8, 0, 7, NAN},
};
#define N_JOBS (sizeof jobs / sizeof jobs[0])

static void run_job(tr_nan_guard *g, const job *j)
{
    float x[6 * 64];
    for (uint32_t i = 0; i < j->rows * j->cols; i++)
        x[i] = 0.5f;
    x[j->bad_row * j->cols + j->bad_col] = j->value;
    tr_bit_tuple t = {6, 2, 3};
    tr_nan_where w = {j->site, j->layer, j->token, j->slot, j->expert,
                      expert_site(j->site) && j->expert >= 0 && j->expert < 64 ? &t : NULL};
    tr_error err;
    ck_assert_int_eq(tr_nan_guard_scan_f32(g, &w, x, j->rows, j->cols, &err), TR_OK);
}

/* Run every job with a permutation inside each (call, layer) group; MoE calls end after each layer. */
static void run_jobs(tr_nan_guard *g, tr_moe_diag *d, tr_rng *shuffle, int shuffle_layers)
{
    for (uint32_t call = 0; call < 2; call++) {
        tr_nan_guard_begin_forward(g);
        int32_t layers[3] = {0, 1, 2};
        if (shuffle && shuffle_layers)
            for (int i = 2; i > 0; i--) {
                int k = (int)tr_rng_int(shuffle, 0, i);
                int32_t t = layers[i];
                layers[i] = layers[k];
                layers[k] = t;
            }
        for (int li = 0; li < 3; li++) {
            size_t idx[N_JOBS], n = 0;
            for (size_t i = 0; i < N_JOBS; i++)
                if (jobs[i].call == call && jobs[i].layer == layers[li])
                    idx[n++] = i;
            for (size_t i = n; shuffle && i > 1; i--) {
                size_t k = (size_t)tr_rng_int(shuffle, 0, (int64_t)i - 1), t = idx[i - 1];
                idx[i - 1] = idx[k];
                idx[k] = t;
            }
            tr_moe_diag_begin_call(d, &(tr_moe_call_info){layers[li], 6, 4, 64, NULL});
            for (size_t i = 0; i < n; i++)
                run_job(g, &jobs[idx[i]]);
            tr_nan_guard_moe_end(g);
            tr_moe_diag_end_call(d, TR_OK);
        }
    }
}

static char *diag_text(const tr_moe_diag *d)
{
    unsigned long mark = tr_json_mark();
    json_t *j = tr_moe_diag_json(d);
    char *s = tr_json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER, mark);
    json_decref(j);
    return s;
}

START_TEST(test_first_key_shuffled)
{
    tr_moe_diag *d = new_diag();
    tr_nan_guard *g = new_guard(TR_NAN_REPORT, d);
    run_jobs(g, d, NULL, 0);
    tr_nan_stats want;
    tr_nan_guard_get(g, &want);
    ck_assert(want.has_first && want.first_stage == TR_NAN_STAGE_NORM && want.first_position == 22);
    ck_assert(want.first_call == 0 && want.first_layer == 0 && want.first_token == 5 && want.first_index == 0);
    ck_assert(want.first_kind == TR_NF_NEG_INF && want.first_expert == -1);
    tr_moe_diag_snapshot ds;
    tr_moe_diag_get(d, &ds);
    ck_assert_uint_eq(ds.nan_events_total, 4);           /* (0,0), (0,1), (1,0), (1,1) */
    ck_assert_str_eq(ds.last_fallback.detail, "stage=combine layer=1 expert=-1 token=0 index=7 kind=nan");
    char *want_diag = diag_text(d);
    tr_nan_guard_free(g);
    tr_moe_diag_free(d);
    size_t bad = 0;
    tr_rng rng;
    tr_rng_seed(&rng, 7);
    int reps = tr_test_under_valgrind() ? 10 : 60;
    for (int rep = 0; rep < reps; rep++) {
        int shuffle_layers = rep & 1;
        d = new_diag();
        g = new_guard(TR_NAN_REPORT, d);
        run_jobs(g, d, &rng, shuffle_layers);
        tr_nan_stats s;
        tr_nan_guard_get(g, &s);
        bad += !same_stats(&s, &want);
        if (!shuffle_layers) {               /* same event order: the whole diagnostics document is identical */
            char *got = diag_text(d);
            bad += strcmp(got, want_diag) != 0;
            tr_dealloc(got);
        } else {
            tr_moe_diag_get(d, &ds);
            bad += ds.nan_events_total != 4;
        }
        tr_nan_guard_free(g);
        tr_moe_diag_free(d);
    }
    ck_assert_msg(bad == 0, "%zu runs differ from the canonical order", bad);
    /* the per-call events name each call's first detection by key */
    d = new_diag();
    g = new_guard(TR_NAN_REPORT, d);
    tr_nan_guard_begin_forward(g);
    tr_moe_diag_begin_call(d, &(tr_moe_call_info){0, 6, 4, 64, NULL});
    for (int i = 9; i >= 4; i--)
        run_job(g, &jobs[i]);
    tr_nan_guard_moe_end(g);
    tr_moe_diag_get(d, &ds);
    ck_assert_str_eq(ds.last_fallback.detail, "stage=router layer=0 expert=-1 token=1 index=60 kind=+inf");
    ck_assert(!ds.last_fallback.has_tuple);
    tr_moe_tuple_counters tc;
    ck_assert_int_eq(tr_moe_diag_tuple(d, T623, &tc), 0);
    tr_dealloc(want_diag);
    tr_nan_guard_free(g);
    tr_moe_diag_free(d);
}
END_TEST

/* ---- diagnostics interaction (§7.6) ------------------------------------------------------------------------------ */

START_TEST(test_diag_interaction)
{
    tr_moe_diag *d = new_diag();
    tr_nan_guard *g = new_guard(TR_NAN_ZERO, d);
    tr_error err;
    float row[4] = {1.0f, NAN, 2.0f, NAN};
    tr_bit_tuple t = {4, 4, 4};
    tr_nan_where gate = {TR_NAN_SITE_GATE, 3, 1, 2, 9, &t};
    tr_nan_where shared = {TR_NAN_SITE_DOWN, 3, 0, 4, 64, NULL};
    tr_nan_where attn = {TR_NAN_SITE_ATTENTION, 3, 0, 0, -1, NULL};
    tr_nan_guard_begin_forward(g);
    tr_moe_diag_begin_call(d, &(tr_moe_call_info){3, 2, 4, 64, NULL});
    ck_assert_int_eq(tr_nan_guard_scan_f32(g, &attn, row, 1, 4, &err), TR_OK);       /* not an MoE stage */
    row[1] = row[3] = NAN;
    ck_assert_int_eq(tr_nan_guard_scan_f32(g, &shared, row, 1, 4, &err), TR_OK);     /* shared expert, token 0 */
    row[1] = row[3] = NAN;
    ck_assert_int_eq(tr_nan_guard_scan_f32(g, &gate, row, 1, 4, &err), TR_OK);
    tr_moe_diag_snapshot s;
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(s.nan_events_total, 0);                                       /* pending until moe_end */
    tr_nan_guard_moe_end(g);
    tr_nan_guard_moe_end(g);                                                         /* nothing more */
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(s.nan_events_total, 1);
    /* gate (6) precedes down (9): the routed expert is the call's first, so its tuple gets the event */
    ck_assert_str_eq(s.last_fallback.detail, "stage=gate layer=3 expert=9 token=1 index=1 kind=nan");
    ck_assert(s.last_fallback.has_tuple && s.last_fallback.bit_tuple.g == 4);
    ck_assert(s.last_fallback.batch_size == 2 && s.last_fallback.top_k == 4 && s.last_fallback.num_experts == 64);
    ck_assert_int_eq(s.last_fallback.reason_code, TR_MOE_NAN_DETECTED);
    tr_moe_tuple_counters tc;
    ck_assert_int_eq(tr_moe_diag_tuple(d, t, &tc), 1);
    ck_assert_uint_eq(tc.nan_events, 1);
    ck_assert_uint_eq(s.dispatch_error_total, 0);
    /* next layer without moe_end: the pending event is flushed when the layer changes */
    tr_moe_diag_begin_call(d, &(tr_moe_call_info){4, 2, 4, 64, NULL});
    shared.layer = 4;
    row[1] = NAN;
    ck_assert_int_eq(tr_nan_guard_scan_f32(g, &shared, row, 1, 4, &err), TR_OK);
    tr_moe_diag_begin_call(d, &(tr_moe_call_info){5, 2, 4, 64, NULL});
    shared.layer = 5;
    row[1] = NAN;
    ck_assert_int_eq(tr_nan_guard_scan_f32(g, &shared, row, 1, 4, &err), TR_OK);
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(s.nan_events_total, 2);
    ck_assert_int_eq(s.last_fallback.layer, 4);
    ck_assert(!s.last_fallback.has_tuple);                                          /* shared expert: no tuple */
    tr_nan_guard_begin_forward(g);                                                   /* flushes layer 5 */
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(s.nan_events_total, 3);
    ck_assert_str_eq(s.last_fallback.detail, "stage=down layer=5 expert=64 token=0 index=1 kind=nan");
    /* reset drops a pending event */
    row[1] = NAN;
    ck_assert_int_eq(tr_nan_guard_scan_f32(g, &gate, row, 1, 4, &err), TR_OK);
    tr_nan_guard_reset(g);
    tr_nan_guard_moe_end(g);
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(s.nan_events_total, 3);
    tr_nan_guard_free(g);
    tr_moe_diag_free(d);
}
END_TEST

/* ---- abort and the KV cache -------------------------------------------------------------------------------------- */

typedef struct fake_cache {
    uint32_t len, saved;
    int restores;
} fake_cache;

static void restore_cache(void *user)
{
    fake_cache *c = user;
    c->len = c->saved;
    c->restores++;
}

/* One forward call of T tokens over two layers; a NaN appears in layer 1's combine output when poison. */
static int fake_forward(tr_nan_guard *g, tr_moe_diag *d, fake_cache *c, uint32_t T, int poison)
{
    tr_error err;
    float m[4 * 8];
    c->saved = c->len;
    c->len += T;                                                   /* the call appends T positions */
    tr_nan_guard_begin_forward(g);
    int rc = TR_OK;
    for (int layer = 0; layer < 2 && rc == TR_OK; layer++) {
        tr_moe_diag_begin_call(d, &(tr_moe_call_info){layer, T, 4, 64, NULL});
        for (uint32_t i = 0; i < T * 8; i++)
            m[i] = 0.25f;
        if (poison && layer == 1) {
            m[9] = NAN;
            m[12] = INFINITY;
            m[T * 8 - 1] = NAN;
        }
        tr_nan_where w = {TR_NAN_SITE_COMBINE, layer, 0, 0, -1, NULL};
        rc = tr_nan_guard_scan_f32(g, &w, m, T, 8, &err);
        tr_nan_guard_moe_end(g);
        tr_moe_diag_end_call(d, rc);
    }
    return rc;
}

START_TEST(test_abort_restores_kv)
{
    tr_moe_diag *d = new_diag();
    tr_nan_guard *g = new_guard(TR_NAN_ABORT, d);
    fake_cache c = {10, 0, 0};
    tr_nan_guard_set_abort_hook(g, restore_cache, &c);
    ck_assert_int_eq(fake_forward(g, d, &c, 4, 0), TR_OK);
    ck_assert_uint_eq(c.len, 14);
    ck_assert_int_eq(fake_forward(g, d, &c, 4, 1), TR_E_NAN_DETECTED);
    ck_assert_uint_eq(c.len, 14);                                   /* restored to its value before the call */
    ck_assert_int_eq(c.restores, 1);
    tr_nan_stats s;
    tr_nan_guard_get(g, &s);
    ck_assert_uint_eq(s.stage[TR_NAN_STAGE_COMBINE].nan_count, 2);  /* the whole tensor was scanned */
    ck_assert_uint_eq(s.stage[TR_NAN_STAGE_COMBINE].pos_inf_count, 1);
    ck_assert_uint_eq(s.stage[TR_NAN_STAGE_COMBINE].scans, 4);
    ck_assert(s.first_call == 1 && s.first_layer == 1 && s.first_token == 1 && s.first_index == 1);
    tr_moe_diag_snapshot ds;
    tr_moe_diag_get(d, &ds);
    ck_assert_uint_eq(ds.dispatch_calls_total, 4);
    ck_assert_uint_eq(ds.dispatch_error_total, 1);                  /* counted once despite end_call(rc) */
    ck_assert_uint_eq(ds.nan_events_total, 1);
    ck_assert_str_eq(ds.last_fallback.detail, "stage=combine layer=1 expert=-1 token=1 index=1 kind=nan");
    ck_assert_int_eq(fake_forward(g, d, &c, 2, 1), TR_E_NAN_DETECTED);
    ck_assert_uint_eq(c.len, 14);
    ck_assert_int_eq(c.restores, 2);                                /* once per forward call */
    tr_nan_guard_free(g);
    tr_moe_diag_free(d);
}
END_TEST

/* ---- unobserved accounting on a fake fused device path (§7.5) -------------------------------------------------- */

START_TEST(test_unobserved_device_path)
{
    tr_nan_guard *g = new_guard(TR_NAN_REPORT, NULL);
    tr_error err;
    tr_nan_guard_begin_forward(g);
    /* a device entry of 3 rows: gate/up/swiglu are not materialised; down scans the contribution rows */
    for (int st = TR_NAN_STAGE_GATE; st <= TR_NAN_STAGE_SWIGLU; st++)
        tr_nan_guard_unobserved(g, (tr_nan_stage)st, 3);
    for (uint32_t r = 0; r < 3; r++) {
        float c[8] = {0};
        tr_nan_where w = {TR_NAN_SITE_DOWN, 0, r, 0, 5, &T623};
        ck_assert_int_eq(tr_nan_guard_scan_f32(g, &w, c, 1, 8, &err), TR_OK);
    }
    /* a host entry of 2 rows scans every stage */
    static const tr_nan_site host_sites[] = {TR_NAN_SITE_GATE, TR_NAN_SITE_UP, TR_NAN_SITE_SWIGLU, TR_NAN_SITE_DOWN};
    for (uint32_t r = 0; r < 2; r++)
        for (int i = 0; i < 4; i++) {
            float v[8] = {0};
            tr_nan_where w = {host_sites[i], 0, r, 1, 6, &T623};
            ck_assert_int_eq(tr_nan_guard_scan_f32(g, &w, v, 1, 8, &err), TR_OK);
        }
    tr_nan_stats s;
    tr_nan_guard_get(g, &s);
    for (int st = TR_NAN_STAGE_GATE; st <= TR_NAN_STAGE_SWIGLU; st++) {
        ck_assert_uint_eq(s.stage[st].unobserved, 3);
        ck_assert_uint_eq(s.stage[st].scans, 2);
    }
    ck_assert_uint_eq(s.stage[TR_NAN_STAGE_DOWN].scans, 5);
    ck_assert_uint_eq(s.stage[TR_NAN_STAGE_DOWN].unobserved, 0);
    ck_assert(!s.has_first && !s.nan_detected);
    tr_nan_guard_unobserved(g, (tr_nan_stage)42, 1);                 /* ignored */
    tr_nan_guard_free(g);
}
END_TEST

/* ---- statistics JSON --------------------------------------------------------------------------------------------- */

static char *dump(json_t *doc)
{
    char *s = tr_json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER, tr_json_mark());
    json_decref(doc);
    return s;
}

START_TEST(test_stats_json)
{
    tr_nan_guard *g = new_guard(TR_NAN_REPORT, NULL);
    tr_error err;
    tr_nan_stats s;
    tr_nan_guard_get(g, &s);
    static const char zero_stage[] = "{\"count\":0,\"nan_count\":0,\"pos_inf_count\":0,\"neg_inf_count\":0,"
                                     "\"scans\":0,\"unobserved\":0}";
    char want[2048];
    snprintf(want, sizeof want,
             "{\"policy\":\"report\",\"nan_detected\":false,\"inf_detected\":false,\"first_stage\":null,"
             "\"first_layer\":null,\"first_expert\":null,\"first_token\":null,\"first_index\":null,"
             "\"first_kind\":null,\"first_call\":null,\"first_slot\":null,\"first_position\":null,\"stages\":{"
             "\"router\":%s,\"gate\":%s,\"up\":%s,\"swiglu\":%s,\"down\":%s,\"combine\":%s,\"attention\":%s,"
             "\"norm\":%s,\"logits\":%s}}",
             zero_stage, zero_stage, zero_stage, zero_stage, zero_stage, zero_stage, zero_stage, zero_stage,
             zero_stage);
    char *got = dump(tr_nan_stats_json(&s, TR_NAN_REPORT));
    ck_assert_str_eq(got, want);
    tr_dealloc(got);
    float x[6] = {0, 0, 0, 0, NAN, -INFINITY};
    tr_nan_where w = {TR_NAN_SITE_ROUTER_WEIGHTS, 2, 7, 0, -1, NULL};
    tr_nan_guard_begin_forward(g);
    tr_nan_guard_begin_forward(g);
    ck_assert_int_eq(tr_nan_guard_scan_f32(g, &w, x, 2, 3, &err), TR_OK);
    tr_nan_guard_unobserved(g, TR_NAN_STAGE_UP, 2);
    tr_nan_guard_get(g, &s);
    json_t *j = tr_nan_stats_json(&s, TR_NAN_REPORT);
    ck_assert_str_eq(json_string_value(json_object_get(j, "first_stage")), "router");
    ck_assert_str_eq(json_string_value(json_object_get(j, "first_position")), "5.2");
    ck_assert_str_eq(json_string_value(json_object_get(j, "first_kind")), "nan");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "first_token")), 8);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "first_index")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "first_call")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "first_layer")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "first_expert")), -1);
    json_t *router = json_object_get(json_object_get(j, "stages"), "router");
    ck_assert_int_eq(json_integer_value(json_object_get(router, "count")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(router, "neg_inf_count")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(json_object_get(j, "stages"), "up"),
                                                        "unobserved")), 2);
    ck_assert(json_is_true(json_object_get(j, "nan_detected")) && json_is_true(json_object_get(j, "inf_detected")));
    json_decref(j);
    /* whole positions print without a fraction */
    tr_nan_where wc = {TR_NAN_SITE_COMBINE, 0, 0, 0, -1, NULL};
    x[0] = NAN;
    ck_assert_int_eq(tr_nan_guard_scan_f32(g, &wc, x, 1, 1, &err), TR_OK);
    tr_nan_guard_get(g, &s);
    j = tr_nan_stats_json(&s, TR_NAN_ZERO);
    ck_assert_str_eq(json_string_value(json_object_get(j, "first_position")), "10");
    ck_assert_str_eq(json_string_value(json_object_get(j, "policy")), "zero");
    json_decref(j);
    /* reset: initial statistics, the call index restarts */
    tr_nan_guard_reset(g);
    tr_nan_guard_get(g, &s);
    ck_assert(!s.has_first && s.stage[TR_NAN_STAGE_ROUTER].scans == 0);
    tr_nan_guard_begin_forward(g);
    x[0] = NAN;
    ck_assert_int_eq(tr_nan_guard_scan_f32(g, &wc, x, 1, 1, &err), TR_OK);
    tr_nan_guard_get(g, &s);
    ck_assert_uint_eq(s.first_call, 0);
    tr_nan_guard_free(g);
}
END_TEST

Suite *suite_nan_guard(void)
{
    Suite *s = suite_create("nan_guard");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_names_and_sites);
    tcase_add_test(tc, test_injection_every_site_and_policy);
    tcase_add_test(tc, test_f16_and_counts);
    tcase_add_test(tc, test_first_key_shuffled);
    tcase_add_test(tc, test_diag_interaction);
    tcase_add_test(tc, test_abort_restores_kv);
    tcase_add_test(tc, test_unobserved_device_path);
    tcase_add_test(tc, test_stats_json);
    suite_add_tcase(s, tc);
    return s;
}
