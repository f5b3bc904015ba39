/*
 * check_moe_dispatch.c — MOE.md §3.4–§4 and §6: the grouping dispatcher through every §3.4 branch (with a fake device
 * that can be absent, fail, return wrong results or take host-resident inputs) with its counters and invariant,
 * device-result verification and canonicalisation, invalid ids and shapes as error events, tuple maps, the dispatch
 * plan (order, local ids, rows, selection, per-tuple fallback, grouped kernel), grouped-kernel inputs, the
 * diagnostics JSON (key order, templates, reset, hit rates), signatures and allocation failures.
 */
#include "tests.h"
#include "trellis/alloc.h"
#include "trellis/jsonio.h"
#include "trellis/moe.h"
#include "trellis/rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a small routing with duplicates and an empty expert: T = 5, k = 3, E = 4 ------------------------------------ */

enum { T5 = 5, K3 = 3, E4 = 4, N15 = 15 };
static const int32_t ids5[N15] = {2, 0, 2, 1, 2, 0, 0, 0, 1, 2, 1, 0, 1, 2, 2};
static const float probs5[N15] = {0.5f, 0.125f, 0.25f, 0.375f, 0.0625f, 0.75f, 0.875f, 0.0f,
                                  0.3f, 0.6f, 0.1f, 0.2f, 0.4f, 0.7f, 0.9f};

static tr_moe_tensor tensor2(const void *data, uint64_t T, uint64_t k, int on_device)
{
    tr_moe_tensor t = {data, 2, {T, k}, on_device};
    return t;
}

static tr_moe_grouping_req request(tr_grouping_mode mode, const tr_device_grouping *dev, int ids_dev, int probs_dev)
{
    tr_moe_grouping_req r = {tensor2(ids5, T5, K3, ids_dev), tensor2(probs5, T5, K3, probs_dev), E4, mode, "metal",
                             dev};
    return r;
}

/* The reference grouping of ids/probs (KERNELS.md §4.10). */
static void reference_group(const int32_t *ids, const float *probs, uint32_t T, uint32_t k, uint32_t E, tr_grouping *g)
{
    tr_error err;
    size_t n = T && k ? (size_t)T * k : 1;
    g->sorted_token_ids = malloc(n * 4);
    g->expert_offsets = malloc(((size_t)E + 1) * 4);
    g->sorted_probs = malloc(n * 4);
    g->inverse = malloc(n * 4);
    ck_assert_int_eq(tr_ref_moe_group(ids, probs, T, k, E, g, &err), TR_OK);
}

static void reference_free(tr_grouping *g)
{
    free(g->sorted_token_ids);
    free(g->expert_offsets);
    free(g->sorted_probs);
    free(g->inverse);
}

static int same_grouping(const tr_grouping *a, const tr_grouping *b)
{
    size_t n = a->N;
    return a->T == b->T && a->k == b->k && a->E == b->E && a->N == b->N &&
           memcmp(a->sorted_token_ids, b->sorted_token_ids, n * 4) == 0 &&
           memcmp(a->expert_offsets, b->expert_offsets, ((size_t)a->E + 1) * 4) == 0 &&
           memcmp(a->sorted_probs, b->sorted_probs, n * 4) == 0 && memcmp(a->inverse, b->inverse, n * 4) == 0;
}

/* calls = gpu_primary_success + cpu_fallback + host_primary + error (§3.4). */
static void assert_invariant(const tr_moe_diag *d)
{
    tr_moe_diag_snapshot s;
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(s.grouping_calls_total, s.grouping_gpu_primary_success_total + s.grouping_cpu_fallback_total +
                                                  s.grouping_host_primary_total + s.grouping_error_total);
}

static tr_moe_diag *new_diag(void)
{
    tr_moe_diag *d;
    tr_error err;
    ck_assert_int_eq(tr_moe_diag_new(&d, &err), TR_OK);
    return d;
}

/* ---- the fake device ------------------------------------------------------------------------------------------ */

typedef enum fault {
    F_NONE, F_MISSING, F_LAUNCH, F_LAUNCH_SILENT, F_OFFSET0, F_DECREASING, F_OFFSET_END, F_SEG_COUNT, F_WRONG_ID,
    F_DUPLICATE, F_PROB_BITS, F_TOKEN_RANGE, F_TOKEN_COUNT, F_TOKEN_PROB,
} fault;

typedef struct fake_device {
    fault fault;
    int token_view;      /* return tokens instead of flat indices */
    int reverse;         /* return each segment reversed (an unstable kernel) */
    int calls;
} fake_device;

static void reverse_segments(tr_device_grouping_out *o, uint32_t E)
{
    for (uint32_t e = 0; e < E; e++)
        for (uint32_t a = o->offsets[e], b = o->offsets[e + 1]; b > a + 1; a++, b--) {
            uint32_t t = o->entries[a];
            float p = o->probs[a];
            o->entries[a] = o->entries[b - 1];
            o->probs[a] = o->probs[b - 1];
            o->entries[b - 1] = t;
            o->probs[b - 1] = p;
        }
}

static void inject(fault f, tr_device_grouping_out *o)
{
    switch (f) {
    case F_OFFSET0: o->offsets[0] = 1; break;
    case F_DECREASING: o->offsets[2] = 3; break;
    case F_OFFSET_END: o->offsets[3] = 14; o->offsets[4] = 14; break;
    case F_SEG_COUNT: o->offsets[1] = 4; break;
    case F_WRONG_ID: { uint32_t t = o->entries[0]; o->entries[0] = o->entries[5]; o->entries[5] = t; break; }
    case F_DUPLICATE: o->entries[1] = o->entries[0]; break;
    case F_PROB_BITS: o->probs[3] = -0.0f; break;
    case F_TOKEN_RANGE: o->entries[0] = 5; break;
    case F_TOKEN_COUNT: o->entries[0] = 2; break;
    case F_TOKEN_PROB: o->probs[10] = 0.5f; break;
    default: break;
    }
}

/* The device's own stable counting sort (plain malloc: allocation failures injected into the harness's allocator
 * must not reach the fake device). */
static void plain_group(const int32_t *ids, const float *probs, uint32_t N, uint32_t E, tr_device_grouping_out *o)
{
    uint32_t *fill = calloc((size_t)E + 1, 4);
    for (uint32_t f = 0; f < N; f++)
        o->offsets[ids[f] + 1]++;
    for (uint32_t e = 0; e < E; e++)
        o->offsets[e + 1] += o->offsets[e];
    for (uint32_t f = 0; f < N; f++) {
        uint32_t pos = o->offsets[ids[f]] + fill[ids[f]]++;
        o->entries[pos] = f;
        o->probs[pos] = probs[f];
    }
    free(fill);
}

static tr_device_status fake_run(void *user, const int32_t *ids, const float *probs, uint32_t T, uint32_t k,
                                 uint32_t E, tr_device_grouping_out *o)
{
    fake_device *f = user;
    f->calls++;
    if (f->fault == F_MISSING)
        return TR_DEVICE_KERNEL_MISSING;
    if (f->fault == F_LAUNCH || f->fault == F_LAUNCH_SILENT) {
        if (f->fault == F_LAUNCH)
            snprintf(o->message, sizeof o->message, "command buffer error 7");
        return TR_DEVICE_LAUNCH_FAILED;
    }
    plain_group(ids, probs, T * k, E, o);
    if (f->reverse)
        reverse_segments(o, E);
    if (f->token_view) {
        for (uint32_t i = 0; i < T * k; i++)
            o->entries[i] /= k;
        o->token_view = 1;
    }
    inject(f->fault, o);
    return TR_DEVICE_OK;
}

static tr_device_grouping device_of(fake_device *f)
{
    tr_device_grouping d = {"moe_gpu_sort", fake_run, f};
    return d;
}

/* ---- grouping: paths and counters -------------------------------------------------------------------------------- */

/* Run one dispatch; check the result against the reference and the outcome. */
static void run_ok(const tr_moe_grouping_req *req, tr_moe_diag *d, tr_grouping_path path, int reason)
{
    tr_grouping g, ref;
    tr_grouping_outcome how;
    tr_error err;
    ck_assert_int_eq(tr_moe_dispatch_grouping(req, d, &g, &how, &err), TR_OK);
    reference_group(ids5, probs5, T5, K3, E4, &ref);
    ck_assert(same_grouping(&g, &ref));
    ck_assert_int_eq(how.path, path);
    ck_assert_int_eq(how.reason, reason);
    reference_free(&ref);
    tr_grouping_release(&g);
    assert_invariant(d);
}

START_TEST(test_grouping_primary_paths)
{
    tr_moe_diag *d = new_diag();
    fake_device f = {F_NONE, 0, 0, 0};
    tr_device_grouping dev = device_of(&f);
    tr_moe_grouping_req r = request(TR_GROUPING_HOST, &dev, 1, 1);
    run_ok(&r, d, TR_GROUPING_PATH_HOST, 0);                 /* host mode: never the device */
    r = request(TR_GROUPING_AUTO, NULL, 1, 1);
    run_ok(&r, d, TR_GROUPING_PATH_HOST, 0);                 /* auto without device grouping */
    r = request(TR_GROUPING_AUTO, &dev, 1, 0);
    run_ok(&r, d, TR_GROUPING_PATH_HOST, 0);                 /* auto with a host-resident input */
    ck_assert_int_eq(f.calls, 0);
    r = request(TR_GROUPING_AUTO, &dev, 1, 1);
    run_ok(&r, d, TR_GROUPING_PATH_DEVICE, 0);
    f.reverse = 1;                                           /* unstable flat view */
    r = request(TR_GROUPING_DEVICE, &dev, 1, 1);
    run_ok(&r, d, TR_GROUPING_PATH_DEVICE, 0);
    f.token_view = 1;                                        /* unstable token view with duplicates */
    run_ok(&r, d, TR_GROUPING_PATH_DEVICE, 0);
    f.reverse = 0;
    run_ok(&r, d, TR_GROUPING_PATH_DEVICE, 0);
    ck_assert_int_eq(f.calls, 4);
    tr_moe_diag_snapshot s;
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(s.grouping_calls_total, 7);
    ck_assert_uint_eq(s.grouping_host_primary_total, 3);
    ck_assert_uint_eq(s.grouping_gpu_primary_success_total, 4);
    ck_assert_uint_eq(s.grouping_cpu_fallback_total, 0);
    ck_assert(!s.has_last_fallback);                         /* auto choosing the host is not a fallback */
    tr_moe_diag_free(d);
}
END_TEST

/* One fallback case: the reason, its counter and the last_fallback detail. */
static void check_fallback(fault fl, int token_view, tr_moe_grouping_req r, int reason, const char *detail)
{
    tr_moe_diag *d = new_diag();
    fake_device f = {fl, token_view, 0, 0};
    tr_device_grouping dev = device_of(&f);
    if (r.device)
        r.device = &dev;
    tr_moe_diag_begin_call(d, &(tr_moe_call_info){3, T5, K3, E4, NULL});
    run_ok(&r, d, TR_GROUPING_PATH_FALLBACK, reason);
    tr_moe_diag_snapshot s;
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(s.grouping_cpu_fallback_total, 1);
    ck_assert_uint_eq(s.grouping_cpu_fallback_reason[reason], 1);
    ck_assert_uint_eq(s.kernel_fallback_total, 0);
    ck_assert_int_eq(s.last_fallback.reason_code, reason);
    ck_assert_msg(strcmp(s.last_fallback.detail, detail) == 0, "fault %d: \"%s\", expected \"%s\"", (int)fl,
                  s.last_fallback.detail, detail);
    ck_assert(!s.last_fallback.has_tuple);
    ck_assert_int_eq(s.last_fallback.layer, 3);
    ck_assert_uint_eq(s.last_fallback.batch_size, T5);
    ck_assert_uint_eq(s.last_fallback.top_k, K3);
    ck_assert_uint_eq(s.last_fallback.num_experts, E4);
    ck_assert_uint_eq(s.last_fallback.event_index, 1);
    tr_moe_diag_free(d);
}

START_TEST(test_grouping_fallbacks)
{
    fake_device unused;
    tr_device_grouping placeholder = device_of(&unused);
    tr_moe_grouping_req dev = request(TR_GROUPING_DEVICE, &placeholder, 1, 1);
    check_fallback(F_NONE, 0, request(TR_GROUPING_DEVICE, NULL, 1, 1), TR_MOE_GPU_GROUPING_UNAVAILABLE,
                   "device grouping not available on backend metal");
    check_fallback(F_NONE, 0, request(TR_GROUPING_DEVICE, &placeholder, 0, 1), TR_MOE_NON_DEVICE_INPUTS,
                   "expert_ids=host expert_probs=device");
    check_fallback(F_NONE, 0, request(TR_GROUPING_DEVICE, &placeholder, 1, 0), TR_MOE_NON_DEVICE_INPUTS,
                   "expert_ids=device expert_probs=host");
    check_fallback(F_MISSING, 0, dev, TR_MOE_KERNEL_NOT_FOUND, "moe_gpu_sort -> reference");
    check_fallback(F_MISSING, 0, request(TR_GROUPING_AUTO, &placeholder, 1, 1), TR_MOE_KERNEL_NOT_FOUND,
                   "moe_gpu_sort -> reference");                  /* auto chose the device, which then failed */
    check_fallback(F_LAUNCH, 0, dev, TR_MOE_DEVICE_ERROR, "moe_gpu_sort: command buffer error 7");
    check_fallback(F_LAUNCH_SILENT, 0, dev, TR_MOE_DEVICE_ERROR, "moe_gpu_sort: launch failed");
    check_fallback(F_OFFSET0, 0, dev, TR_MOE_DEVICE_ERROR, "moe_gpu_sort: offsets[0] = 1, expected 0");
    check_fallback(F_DECREASING, 0, dev, TR_MOE_DEVICE_ERROR,
                   "moe_gpu_sort: offsets[2] = 3 < offsets[1] = 5 (decreasing)");
    check_fallback(F_OFFSET_END, 0, dev, TR_MOE_DEVICE_ERROR, "moe_gpu_sort: offsets[4] = 14, expected N = 15");
    check_fallback(F_SEG_COUNT, 0, dev, TR_MOE_DEVICE_ERROR, "moe_gpu_sort: segment 0 has 4 entries, expected 5");
    check_fallback(F_WRONG_ID, 0, dev, TR_MOE_DEVICE_ERROR,
                   "moe_gpu_sort: entry 0 of segment 0 is flat index 3, not an assignment to expert 0");
    check_fallback(F_DUPLICATE, 0, dev, TR_MOE_DEVICE_ERROR, "moe_gpu_sort: flat index 1 appears twice");
    check_fallback(F_PROB_BITS, 0, dev, TR_MOE_DEVICE_ERROR,
                   "moe_gpu_sort: probs[3] = 0x80000000, expected 0x00000000 (flat index 7)");
    check_fallback(F_TOKEN_RANGE, 1, dev, TR_MOE_DEVICE_ERROR,
                   "moe_gpu_sort: entry 0 of segment 0 is token 5, not an assignment to expert 0");
    check_fallback(F_TOKEN_COUNT, 1, dev, TR_MOE_DEVICE_ERROR,
                   "moe_gpu_sort: token 2 appears 3 times in segment 0, expected 2");
    check_fallback(F_TOKEN_PROB, 1, dev, TR_MOE_DEVICE_ERROR,
                   "moe_gpu_sort: segment 2: token 0 has prob bits 0x3f000000, expected 0x3e800000");
}
END_TEST

/* An error event: no output, the status and text, grouping_error_total and last_fallback. */
static void check_error(tr_moe_grouping_req r, int code, const char *text, int reason, const char *detail)
{
    tr_moe_diag *d = new_diag();
    tr_grouping g;
    tr_grouping_outcome how;
    tr_error err;
    memset(&g, 0xAB, sizeof g);
    ck_assert_int_eq(tr_moe_dispatch_grouping(&r, d, &g, &how, &err), code);
    ck_assert_str_eq(err.text, text);
    ck_assert(g.sorted_token_ids == NULL && g.expert_offsets == NULL && g.sorted_probs == NULL && g.inverse == NULL);
    ck_assert_int_eq(how.path, TR_GROUPING_PATH_NONE);
    tr_moe_diag_snapshot s;
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(s.grouping_error_total, 1);
    ck_assert_uint_eq(s.grouping_cpu_fallback_total, 0);
    ck_assert_int_eq(s.last_fallback.reason_code, reason);
    ck_assert_str_eq(s.last_fallback.detail, detail);
    ck_assert(!s.last_fallback.has_tuple);
    assert_invariant(d);
    tr_moe_diag_free(d);
}

START_TEST(test_grouping_errors)
{
    tr_moe_grouping_req r = request(TR_GROUPING_AUTO, NULL, 0, 0);
    r.ids.rank = 1;
    r.ids.shape[0] = 15;
    check_error(r, TR_E_INVALID_SHAPE, "moe_group: TR_E_INVALID_SHAPE: expert_ids shape [15] expected [T, k]",
                TR_MOE_INVALID_SHAPE, "expert_ids shape [15] expected [T, k]");
    r = request(TR_GROUPING_AUTO, NULL, 0, 0);
    r.probs.shape[1] = 2;
    check_error(r, TR_E_INVALID_SHAPE, "moe_group: TR_E_INVALID_SHAPE: expert_probs shape [5, 2] expected [5, 3]",
                TR_MOE_INVALID_SHAPE, "expert_probs shape [5, 2] expected [5, 3]");
    r = request(TR_GROUPING_AUTO, NULL, 0, 0);
    r.probs.rank = 3;
    r.probs.shape[2] = 1;
    check_error(r, TR_E_INVALID_SHAPE, "moe_group: TR_E_INVALID_SHAPE: expert_probs shape [5, 3, 1] expected [5, 3]",
                TR_MOE_INVALID_SHAPE, "expert_probs shape [5, 3, 1] expected [5, 3]");
    r = request(TR_GROUPING_AUTO, NULL, 0, 0);
    r.ids.shape[1] = r.probs.shape[1] = 0;
    check_error(r, TR_E_INVALID_SHAPE, "moe_group: TR_E_INVALID_SHAPE: moe_group: top_k=0, expected >= 1",
                TR_MOE_INVALID_SHAPE, "moe_group: top_k=0, expected >= 1");
    r = request(TR_GROUPING_AUTO, NULL, 0, 0);
    r.num_experts = 0;
    check_error(r, TR_E_INVALID_SHAPE, "moe_group: TR_E_INVALID_SHAPE: moe_group: num_experts=0, expected >= 1",
                TR_MOE_INVALID_SHAPE, "moe_group: num_experts=0, expected >= 1");
    r = request(TR_GROUPING_AUTO, NULL, 0, 0);
    r.ids.shape[0] = r.probs.shape[0] = 1u << 31;
    r.ids.shape[1] = r.probs.shape[1] = 4;
    check_error(r, TR_E_INVALID_SHAPE,
                "moe_group: TR_E_INVALID_SHAPE: moe_group: T*k = 2147483648*4 exceeds 2^32-1 assignments",
                TR_MOE_INVALID_SHAPE, "moe_group: T*k = 2147483648*4 exceeds 2^32-1 assignments");
    r = request(TR_GROUPING_AUTO, NULL, 0, 0);
    r.probs.data = NULL;
    check_error(r, TR_E_INVALID_SHAPE, "moe_group: TR_E_INVALID_SHAPE: moe_group: expert_probs has no data",
                TR_MOE_INVALID_SHAPE, "moe_group: expert_probs has no data");
    /* invalid ids: the smallest offending flat index is named; -1, E and 2^31-1 */
    static const int32_t bad_values[] = {4, -1, 2147483647};
    for (int i = 0; i < 3; i++) {
        int32_t ids[N15];
        memcpy(ids, ids5, sizeof ids);
        ids[13] = 0;
        ids[7] = bad_values[i];
        ids[11] = -7;
        r = request(TR_GROUPING_AUTO, NULL, 0, 0);
        r.ids.data = ids;
        char detail[128], text[256];
        snprintf(detail, sizeof detail, "flat=7 token=2 slot=1 id=%d num_experts=4", bad_values[i]);
        snprintf(text, sizeof text, "expert_ids: TR_E_INVALID_EXPERT_ID: %s", detail);
        check_error(r, TR_E_INVALID_EXPERT_ID, text, TR_MOE_INVALID_EXPERT_ID, detail);
    }
}
END_TEST

START_TEST(test_grouping_empty_and_random)
{
    tr_moe_diag *d = new_diag();
    tr_error err;
    tr_grouping g;
    /* T = 0: N = 0 and all offsets 0, on every path */
    fake_device f = {F_NONE, 1, 1, 0};
    tr_device_grouping dev = device_of(&f);
    for (int mode = 0; mode < 3; mode++) {
        tr_moe_grouping_req r = {tensor2(NULL, 0, 4, 1), tensor2(NULL, 0, 4, 1), 8, (tr_grouping_mode)mode, "metal",
                                 &dev};
        ck_assert_int_eq(tr_moe_dispatch_grouping(&r, d, &g, NULL, &err), TR_OK);
        ck_assert_uint_eq(g.N, 0);
        for (uint32_t e = 0; e <= 8; e++)
            ck_assert_uint_eq(g.expert_offsets[e], 0);
        tr_grouping_release(&g);
    }
    /* random routings (uniform, hot expert, one expert) through the host and the unstable token-view device */
    size_t bad = 0;
    tr_rng rng;
    tr_rng_seed(&rng, 42);
    for (int rep = 0; rep < 30; rep++) {
        uint32_t T = (uint32_t)tr_rng_int(&rng, 1, 129), k = (uint32_t)tr_rng_int(&rng, 1, 8);
        uint32_t E = (uint32_t)tr_rng_int(&rng, 1, 64);
        int32_t *ids = malloc((size_t)T * k * 4);
        float *probs = malloc((size_t)T * k * 4);
        for (uint32_t i = 0; i < T * k; i++) {
            ids[i] = rep % 3 == 2 ? (int32_t)E - 1 : (int32_t)tr_rng_int(&rng, 0, E - 1);
            probs[i] = (float)tr_rng_u01(&rng);
        }
        tr_grouping ref;
        reference_group(ids, probs, T, k, E, &ref);
        for (int mode = 1; mode < 3; mode++) {
            f.token_view = rep & 1;
            tr_moe_grouping_req r = {tensor2(ids, T, k, 1), tensor2(probs, T, k, 1), E, (tr_grouping_mode)mode,
                                     "metal", &dev};
            tr_grouping_outcome how;
            int rc = tr_moe_dispatch_grouping(&r, d, &g, &how, &err);
            bad += rc != TR_OK || !same_grouping(&g, &ref) ||
                   how.path != (mode == 1 ? TR_GROUPING_PATH_DEVICE : TR_GROUPING_PATH_HOST);
            tr_grouping_release(&g);
        }
        reference_free(&ref);
        free(ids);
        free(probs);
    }
    ck_assert_uint_eq(bad, 0);
    assert_invariant(d);
    tr_moe_diag_free(d);
}
END_TEST

/* ---- tuple map and plan ----------------------------------------------------------------------------------------- */

/* E = 8: groups (6,2,3) {0,2,6}, (4,4,4) {1,4}, (8,2,8) {3,7}, (6,3,4) {5}. */
static const tr_bit_tuple map8[8] = {{6, 2, 3}, {4, 4, 4}, {6, 2, 3}, {8, 2, 8}, {4, 4, 4}, {6, 3, 4}, {6, 2, 3},
                                     {8, 2, 8}};
/* T = 3, k = 2: flat 0..5 -> experts 2, 5, 0, 2, 6, 1 (group (8,2,8) gets no rows). */
static const int32_t ids3[6] = {2, 5, 0, 2, 6, 1};
static const float probs3[6] = {0.75f, 0.25f, 0.5f, 0.5f, 0.625f, 0.375f};

typedef struct plan_fixture {
    tr_moe_tuple_map *map;
    tr_grouping g;
    tr_moe_diag *d;
} plan_fixture;

static void fixture_open(plan_fixture *fx)
{
    tr_error err;
    ck_assert_int_eq(tr_moe_tuple_map_new(map8, 8, &fx->map, &err), TR_OK);
    tr_moe_grouping_req r = {tensor2(ids3, 3, 2, 0), tensor2(probs3, 3, 2, 0), 8, TR_GROUPING_AUTO, "metal", NULL};
    fx->d = new_diag();
    tr_moe_diag_begin_call(fx->d, &(tr_moe_call_info){2, 3, 2, 8, fx->map});
    ck_assert_int_eq(tr_moe_dispatch_grouping(&r, fx->d, &fx->g, NULL, &err), TR_OK);
}

static void fixture_close(plan_fixture *fx)
{
    tr_grouping_release(&fx->g);
    tr_moe_tuple_map_free(fx->map);
    tr_moe_diag_free(fx->d);
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

static const char *const generic_names[] = {
    "moe_trellis_swiglu_decode", "moe_trellis_swiglu_prefill4", "moe_trellis_swiglu_prefill4_fp32acc",
    "moe_trellis_swiglu", "moe_trellis_swiglu_fp32acc", "moe_trellis_swiglu_large_batch",
    "moe_trellis_swiglu_decode_6_3_4", "moe_trellis_swiglu_grouped",
};

static tr_moe_plan *build(plan_fixture *fx, const tr_moe_plan_cfg *cfg)
{
    tr_moe_plan *p;
    tr_error err;
    ck_assert_int_eq(tr_moe_plan_build(&fx->g, fx->map, cfg, fx->d, &p, &err), TR_OK);
    return p;
}

static tr_moe_plan_entry_view entry(const tr_moe_plan *p, size_t i)
{
    tr_moe_plan_entry_view v;
    ck_assert_int_eq(tr_moe_plan_entry(p, i, &v), TR_OK);
    return v;
}

START_TEST(test_tuple_map)
{
    tr_moe_tuple_map *m;
    tr_error err;
    ck_assert_int_eq(tr_moe_tuple_map_new(map8, 8, &m, &err), TR_OK);
    ck_assert_uint_eq(tr_moe_tuple_map_experts(m), 8);
    ck_assert_uint_eq(tr_moe_tuple_map_groups(m), 4);
    static const uint32_t members[4][3] = {{0, 2, 6}, {1, 4, 0}, {3, 7, 0}, {5, 0, 0}};
    static const uint32_t sizes[4] = {3, 2, 2, 1};
    for (uint32_t gi = 0; gi < 4; gi++) {
        uint32_t n;
        const uint32_t *mem = tr_moe_tuple_map_group_members(m, gi, &n);
        ck_assert_uint_eq(n, sizes[gi]);
        for (uint32_t l = 0; l < n; l++) {
            ck_assert_uint_eq(mem[l], members[gi][l]);
            ck_assert_uint_eq(tr_moe_tuple_map_local_id(m, mem[l]), l);
            ck_assert_uint_eq(tr_moe_tuple_map_group_of(m, mem[l]), gi);
        }
    }
    ck_assert_uint_eq(tr_moe_tuple_map_group_tuple(m, 3).u, 3);
    ck_assert_uint_eq(tr_moe_tuple_map_tuple(m, 7).g, 8);
    char sig[64];
    tr_moe_tuple_map_signature(m, sig, sizeof sig);
    ck_assert_str_eq(sig, "[2, 3, 4, 6, 8]");
    tr_moe_tuple_map_free(m);
    tr_bit_tuple bad[3] = {{6, 2, 3}, {6, 9, 3}, {1, 2, 3}};
    ck_assert_int_eq(tr_moe_tuple_map_new(bad, 3, &m, &err), TR_E_QBITS);
    ck_assert_str_eq(err.text, "tuple_map: TR_E_QBITS: expert 1: bit tuple (6,9,3) outside 2..8");
    ck_assert_ptr_null(m);
    ck_assert_int_eq(tr_moe_tuple_map_new(bad, 0, &m, &err), TR_E_INVALID_SHAPE);
    /* signatures of §6.5 */
    tr_moe_bits_signature(0, sig, sizeof sig);
    ck_assert_str_eq(sig, "[]");
    tr_moe_bits_signature((1u << 2) | (1u << 3) | (1u << 4) | (1u << 6), sig, sizeof sig);
    ck_assert_str_eq(sig, "[2, 3, 4, 6]");
    tr_moe_tuple_signature((tr_bit_tuple){6, 2, 3}, sig, sizeof sig);
    ck_assert_str_eq(sig, "[2, 3, 6]");
    tr_moe_tuple_signature((tr_bit_tuple){4, 4, 4}, sig, sizeof sig);
    ck_assert_str_eq(sig, "[4]");
}
END_TEST

START_TEST(test_plan_host_only)
{
    plan_fixture fx;
    fixture_open(&fx);
    tr_moe_plan_cfg cfg = {NULL, 0, NULL, 0, "cpu"};
    tr_moe_plan *p = build(&fx, &cfg);
    ck_assert_uint_eq(tr_moe_plan_size(p), 3);
    /* group order by smallest member; rows by (local id, flat index); the empty group omitted */
    tr_moe_plan_entry_view v = entry(p, 0);
    ck_assert(v.tuple.g == 6 && v.tuple.u == 2 && v.tuple.d == 3);
    ck_assert_uint_eq(v.n_members, 3);
    ck_assert(v.members[0] == 0 && v.members[1] == 2 && v.members[2] == 6);
    ck_assert(v.local_offsets[0] == 0 && v.local_offsets[1] == 1 && v.local_offsets[2] == 3 &&
              v.local_offsets[3] == 4);
    ck_assert_uint_eq(v.n_rows, 4);
    ck_assert(v.rows[0] == 2 && v.rows[1] == 0 && v.rows[2] == 3 && v.rows[3] == 4);
    ck_assert_str_eq(v.kernel, "moe_trellis_swiglu_prefill4");
    ck_assert_int_eq(v.category, TR_MOE_CAT_SMALL_PREFILL);
    ck_assert_int_eq(v.path, TR_MOE_PATH_HOST);
    ck_assert_int_eq(v.fallback_reason, 0);
    v = entry(p, 1);
    ck_assert(v.tuple.g == 4 && v.n_members == 2 && v.members[0] == 1 && v.members[1] == 4);
    ck_assert(v.local_offsets[1] == 1 && v.local_offsets[2] == 1 && v.n_rows == 1 && v.rows[0] == 5);
    ck_assert_str_eq(v.kernel, "moe_trellis_swiglu_decode");
    v = entry(p, 2);
    ck_assert(v.tuple.u == 3 && v.n_members == 1 && v.members[0] == 5 && v.n_rows == 1 && v.rows[0] == 1);
    ck_assert_str_eq(v.kernel, "moe_trellis_swiglu_decode");
    ck_assert_int_eq(v.fallback_reason, 0);       /* host runs are not fallbacks */
    tr_moe_plan_entry_view none;
    ck_assert_int_eq(tr_moe_plan_entry(p, 3, &none), TR_E_INVALID_PARAM);
    tr_moe_diag_snapshot s;
    tr_moe_diag_get(fx.d, &s);
    ck_assert_uint_eq(s.dispatch_groups_total, 3);
    ck_assert_uint_eq(s.dispatch_calls_total, 1);
    ck_assert_uint_eq(s.dispatch_rows_total, 6);
    ck_assert_uint_eq(s.kernel_fallback_total, 0);
    tr_moe_tuple_counters tc;
    ck_assert_int_eq(tr_moe_diag_tuple(fx.d, (tr_bit_tuple){6, 2, 3}, &tc), 1);
    ck_assert(tc.groups == 1 && tc.rows == 4 && tc.host_groups == 1 && tc.device_groups == 0);
    ck_assert_int_eq(tr_moe_diag_tuple(fx.d, (tr_bit_tuple){8, 2, 8}, &tc), 0);
    tr_moe_kernel_counters kc;
    ck_assert_int_eq(tr_moe_diag_kernel(fx.d, "moe_trellis_swiglu_decode", &kc), 1);
    ck_assert(kc.selected == 2 && kc.launched == 0 && kc.rows == 0);
    tr_error err;
    ck_assert_int_eq(tr_moe_plan_launched(p, 0, fx.d, &err), TR_E_INVALID_PARAM);
    ck_assert_str_eq(err.text, "moe_plan: TR_E_INVALID_PARAM: entry 0 is a host entry");
    tr_moe_plan_free(p);
    fixture_close(&fx);
}
END_TEST

START_TEST(test_plan_device_and_specialized)
{
    plan_fixture fx;
    fixture_open(&fx);
    tr_error err;
    tr_moe_avail *a = avail_of(generic_names, 7);            /* with decode_6_3_4, without the grouped kernel */
    tr_moe_plan_cfg cfg = {NULL, 1, a, 0, "metal"};
    tr_moe_plan *p = build(&fx, &cfg);
    tr_moe_plan_entry_view v = entry(p, 0);
    ck_assert_str_eq(v.kernel, "moe_trellis_swiglu_prefill4_fp32acc");
    ck_assert_int_eq(v.path, TR_MOE_PATH_DEVICE);
    v = entry(p, 2);
    ck_assert_str_eq(v.kernel, "moe_trellis_swiglu_decode_6_3_4");
    ck_assert(v.specialized && v.path == TR_MOE_PATH_DEVICE && v.fallback_reason == 0);
    for (size_t i = 0; i < 3; i++)
        ck_assert_int_eq(tr_moe_plan_launched(p, i, fx.d, &err), TR_OK);
    ck_assert_int_eq(tr_moe_plan_launched(p, 1, fx.d, &err), TR_E_INVALID_PARAM);
    ck_assert_str_eq(err.text, "moe_plan: TR_E_INVALID_PARAM: entry 1 is already completed");
    ck_assert(entry(p, 1).completed);
    tr_moe_kernel_counters kc;
    tr_moe_diag_kernel(fx.d, "moe_trellis_swiglu_prefill4_fp32acc", &kc);
    ck_assert(kc.selected == 1 && kc.launched == 1 && kc.rows == 4);
    tr_moe_tuple_counters tc;
    tr_moe_diag_tuple(fx.d, (tr_bit_tuple){6, 3, 4}, &tc);
    ck_assert(tc.device_groups == 1 && tc.host_groups == 0 && tc.fallbacks == 0);
    tr_moe_plan_free(p);
    tr_moe_avail_free(a);
    /* without the specialized kernel: the generic decode kernel on the device and a kernel_not_found fallback */
    a = avail_of(generic_names, 6);
    cfg.avail = a;
    p = build(&fx, &cfg);
    v = entry(p, 2);
    ck_assert_str_eq(v.kernel, "moe_trellis_swiglu_decode");
    ck_assert(!v.specialized && v.path == TR_MOE_PATH_DEVICE && v.fallback_reason == TR_MOE_KERNEL_NOT_FOUND);
    ck_assert_int_eq(entry(p, 1).fallback_reason, 0);        /* (4,4,4) is not a dominant tuple */
    tr_moe_diag_snapshot s;
    tr_moe_diag_get(fx.d, &s);
    ck_assert_uint_eq(s.kernel_fallback_reason[TR_MOE_KERNEL_NOT_FOUND], 1);
    ck_assert_str_eq(s.last_fallback.detail, "moe_trellis_swiglu_decode_6_3_4 -> moe_trellis_swiglu_decode");
    ck_assert_int_eq(s.last_fallback.layer, 2);
    ck_assert(s.last_fallback.has_tuple && s.last_fallback.bit_tuple.d == 4);
    tr_moe_plan_free(p);
    tr_moe_avail_free(a);
    fixture_close(&fx);
}
END_TEST

START_TEST(test_plan_per_tuple_fallback)
{
    plan_fixture fx;
    fixture_open(&fx);
    tr_moe_avail *a = avail_of(generic_names, 7);
    /* width 3 unsupported: (6,2,3) and (6,3,4) run on the host, (4,4,4) is untouched */
    tr_moe_plan_cfg cfg = {NULL, 0, a, 0x1F4u, "metal"};
    tr_moe_plan *p = build(&fx, &cfg);
    tr_moe_plan_entry_view v0 = entry(p, 0), v1 = entry(p, 1), v2 = entry(p, 2);
    ck_assert(v0.path == TR_MOE_PATH_HOST && v0.fallback_reason == TR_MOE_UNSUPPORTED_BIT_TUPLE);
    ck_assert(v1.path == TR_MOE_PATH_DEVICE && v1.fallback_reason == 0);
    ck_assert(v2.path == TR_MOE_PATH_HOST && v2.fallback_reason == TR_MOE_UNSUPPORTED_BIT_TUPLE);
    ck_assert_str_eq(v0.kernel, "moe_trellis_swiglu_prefill4");   /* still reported */
    tr_moe_diag_snapshot s;
    tr_moe_diag_get(fx.d, &s);
    ck_assert_uint_eq(s.kernel_fallback_total, 2);
    ck_assert_uint_eq(s.kernel_fallback_reason[TR_MOE_UNSUPPORTED_BIT_TUPLE], 2);
    ck_assert_str_eq(s.last_fallback.detail, "tuple (6,3,4) not supported by backend metal");
    tr_moe_tuple_counters tc;
    tr_moe_diag_tuple(fx.d, (tr_bit_tuple){4, 4, 4}, &tc);
    ck_assert(tc.fallbacks == 0 && tc.host_groups == 0);
    tr_moe_diag_tuple(fx.d, (tr_bit_tuple){6, 2, 3}, &tc);
    ck_assert(tc.fallbacks == 1 && tc.fallback_reason[TR_MOE_UNSUPPORTED_BIT_TUPLE] == 1 && tc.host_groups == 1);
    ck_assert_uint_eq(tr_moe_diag_signature_count(fx.d, "[2, 3, 6]"), 1);
    ck_assert_uint_eq(tr_moe_diag_signature_count(fx.d, "[3, 4, 6]"), 1);
    tr_moe_plan_free(p);
    tr_moe_avail_free(a);
    /* the selected generic kernel is absent: that tuple alone runs on the host */
    static const char *const no_prefill4[] = {"moe_trellis_swiglu_decode", "moe_trellis_swiglu_decode_6_3_4"};
    a = avail_of(no_prefill4, 2);
    cfg.avail = a;
    cfg.supported_bits = 0;
    p = build(&fx, &cfg);
    v0 = entry(p, 0);
    ck_assert(v0.path == TR_MOE_PATH_HOST && v0.fallback_reason == TR_MOE_KERNEL_NOT_FOUND);
    ck_assert(entry(p, 1).path == TR_MOE_PATH_DEVICE && entry(p, 2).path == TR_MOE_PATH_DEVICE);
    tr_moe_diag_get(fx.d, &s);
    ck_assert_str_eq(s.last_fallback.detail, "moe_trellis_swiglu_prefill4 -> reference");
    tr_moe_plan_free(p);
    tr_moe_avail_free(a);
    fixture_close(&fx);
}
END_TEST

START_TEST(test_plan_grouped_kernel)
{
    plan_fixture fx;
    fixture_open(&fx);
    tr_error err;
    tr_moe_select_cfg sc;
    tr_moe_select_cfg_default(&sc);
    sc.use_grouped_kernel = 1;
    tr_moe_avail *a = avail_of(generic_names, 8);
    tr_moe_plan_cfg cfg = {&sc, 0, a, 0, "metal"};
    tr_moe_plan *p = build(&fx, &cfg);
    for (size_t i = 0; i < 3; i++)
        ck_assert(entry(p, i).grouped);
    ck_assert_int_eq(tr_moe_plan_launched(p, 0, fx.d, &err), TR_OK);              /* hit, 4 rows */
    ck_assert_int_eq(tr_moe_plan_launch_failed(p, 1, "timeout", fx.d, &err), TR_OK);
    ck_assert(!entry(p, 1).grouped && entry(p, 1).path == TR_MOE_PATH_DEVICE && !entry(p, 1).completed);
    ck_assert_int_eq(tr_moe_plan_launched(p, 1, fx.d, &err), TR_OK);              /* per-row kernel */
    ck_assert_int_eq(tr_moe_plan_launch_failed(p, 2, NULL, fx.d, &err), TR_OK);  /* grouped fails */
    ck_assert_int_eq(tr_moe_plan_launch_failed(p, 2, "\xff bad\n", fx.d, &err), TR_OK);  /* per-row fails */
    tr_moe_plan_entry_view v = entry(p, 2);
    ck_assert(v.path == TR_MOE_PATH_HOST && v.completed && v.fallback_reason == TR_MOE_DEVICE_ERROR);
    ck_assert_int_eq(tr_moe_plan_launch_failed(p, 2, "x", fx.d, &err), TR_E_INVALID_PARAM);
    tr_moe_diag_snapshot s;
    tr_moe_diag_get(fx.d, &s);
    ck_assert_uint_eq(s.grouped_attempts_total, 3);
    ck_assert_uint_eq(s.grouped_hits_total, 1);
    ck_assert_uint_eq(s.grouped_attempt_rows_total, 6);
    ck_assert_uint_eq(s.grouped_hit_rows_total, 4);
    ck_assert_uint_eq(s.kernel_fallback_reason[TR_MOE_DEVICE_ERROR], 3);
    ck_assert_str_eq(s.last_fallback.detail, "moe_trellis_swiglu_decode_6_3_4: ? bad?");
    tr_moe_kernel_counters kc;
    tr_moe_diag_kernel(fx.d, "moe_trellis_swiglu_grouped", &kc);
    ck_assert(kc.selected == 3 && kc.launched == 1 && kc.rows == 4);
    tr_moe_diag_kernel(fx.d, "moe_trellis_swiglu_decode", &kc);
    ck_assert(kc.selected == 1 && kc.launched == 1 && kc.rows == 1);
    tr_moe_tuple_counters tc;
    tr_moe_diag_tuple(fx.d, (tr_bit_tuple){6, 3, 4}, &tc);
    ck_assert(tc.device_groups == 0 && tc.host_groups == 1 && tc.fallbacks == 2);
    json_t *j = tr_moe_diag_json(fx.d);
    ck_assert(json_real_value(json_object_get(j, "grouped_hit_rate")) == 1.0 / 3.0);
    ck_assert(json_real_value(json_object_get(j, "grouped_row_hit_rate")) == 4.0 / 6.0);
    json_decref(j);
    tr_moe_plan_free(p);
    /* grouped kernel absent: every device entry is an attempt and a kernel_not_found fallback */
    tr_moe_avail_free(a);
    a = avail_of(generic_names, 7);
    cfg.avail = a;
    tr_moe_diag_reset(fx.d);
    p = build(&fx, &cfg);
    tr_moe_diag_get(fx.d, &s);
    ck_assert_uint_eq(s.grouped_attempts_total, 3);
    ck_assert_uint_eq(s.kernel_fallback_reason[TR_MOE_KERNEL_NOT_FOUND], 3);
    ck_assert_str_eq(s.last_fallback.detail, "moe_trellis_swiglu_grouped -> moe_trellis_swiglu_decode_6_3_4");
    ck_assert(!entry(p, 0).grouped && entry(p, 0).path == TR_MOE_PATH_DEVICE);
    j = tr_moe_diag_json(fx.d);
    ck_assert(json_real_value(json_object_get(j, "grouped_hit_rate")) == 0.0);
    json_decref(j);
    tr_moe_plan_free(p);
    tr_moe_avail_free(a);
    fixture_close(&fx);
}
END_TEST

START_TEST(test_plan_errors)
{
    plan_fixture fx;
    fixture_open(&fx);
    tr_error err;
    tr_moe_tuple_map *m4;
    ck_assert_int_eq(tr_moe_tuple_map_new(map8, 4, &m4, &err), TR_OK);
    tr_moe_plan *p = (tr_moe_plan *)&err;
    tr_moe_plan_cfg cfg = {NULL, 0, NULL, 0, NULL};
    ck_assert_int_eq(tr_moe_plan_build(&fx.g, m4, &cfg, fx.d, &p, &err), TR_E_INVALID_SHAPE);
    ck_assert_ptr_null(p);
    ck_assert_str_eq(err.text, "moe_plan: TR_E_INVALID_SHAPE: grouping has 8 experts, tuple map 4");
    tr_moe_tuple_map_free(m4);
    fixture_close(&fx);
}
END_TEST

START_TEST(test_grouped_inputs)
{
    plan_fixture fx;
    fixture_open(&fx);
    tr_error err;
    tr_moe_plan_cfg cfg = {NULL, 0, NULL, 0, NULL};
    tr_moe_plan *p = build(&fx, &cfg);
    tr_grouped_inputs in;
    ck_assert_int_eq(tr_moe_prepare_grouped_inputs(p, 0, &fx.g, &in, &err), TR_OK);
    ck_assert(in.n_rows == 4 && in.n_members == 3);
    static const uint32_t tokens[4] = {1, 0, 1, 2};
    static const uint32_t offs[4] = {0, 1, 3, 4};
    for (uint32_t r = 0; r < 4; r++) {
        ck_assert_uint_eq(in.row_ids[r], r);
        ck_assert_uint_eq(in.tokens[r], tokens[r]);
        ck_assert(in.sorted_probs[r] == probs3[entry(p, 0).rows[r]]);
        ck_assert_uint_eq(in.local_offsets[r], offs[r]);
    }
    ck_assert_uint_eq(in.sorted_probs_f16[0], 0x3800);      /* 0.5 */
    ck_assert_uint_eq(in.sorted_probs_f16[1], 0x3A00);      /* 0.75 */
    tr_grouped_inputs_release(&in);
    ck_assert_int_eq(tr_moe_prepare_grouped_inputs(p, 3, &fx.g, &in, &err), TR_E_INVALID_PARAM);
    /* a grouping that is not the plan's: rows whose expert is not a member */
    static const int32_t other_ids[6] = {3, 5, 0, 2, 6, 1};
    tr_grouping other;
    reference_group(other_ids, probs3, 3, 2, 8, &other);
    ck_assert_int_eq(tr_moe_prepare_grouped_inputs(p, 0, &other, &in, &err), TR_E_INVALID_SHAPE);
    ck_assert_str_eq(err.text, "prepare_grouped_inputs: TR_E_INVALID_SHAPE: row 1 (flat 0) has expert 3, not a "
                               "member of tuple group (6,2,3) at that row");
    ck_assert_ptr_null(in.row_ids);
    reference_free(&other);
    tr_moe_plan_free(p);
    fixture_close(&fx);
}
END_TEST

/* ---- diagnostics JSON ------------------------------------------------------------------------------------------- */

static const char *const counter_keys[] = {
    "grouping_calls_total", "grouping_gpu_primary_success_total", "grouping_cpu_fallback_total",
    "grouping_host_primary_total", "grouping_error_total", "grouping_cpu_fallback_reason_gpu_grouping_unavailable",
    "grouping_cpu_fallback_reason_non_device_inputs", "grouping_cpu_fallback_reason_invalid_shape",
    "grouping_cpu_fallback_reason_invalid_expert_id", "grouping_cpu_fallback_reason_kernel_not_found",
    "grouping_cpu_fallback_reason_unsupported_bit_tuple", "grouping_cpu_fallback_reason_nan_detected",
    "grouping_cpu_fallback_reason_device_error", "dispatch_calls_total", "dispatch_rows_total",
    "dispatch_groups_total", "dispatch_error_total", "kernel_fallback_total",
    "kernel_fallback_reason_gpu_grouping_unavailable", "kernel_fallback_reason_non_device_inputs",
    "kernel_fallback_reason_invalid_shape", "kernel_fallback_reason_invalid_expert_id",
    "kernel_fallback_reason_kernel_not_found", "kernel_fallback_reason_unsupported_bit_tuple",
    "kernel_fallback_reason_nan_detected", "kernel_fallback_reason_device_error", "grouped_attempts_total",
    "grouped_hits_total", "grouped_attempt_rows_total", "grouped_hit_rows_total", "nan_events_total",
};

static void assert_keys(json_t *o, const char *const *keys, size_t n)
{
    size_t i = 0;
    const char *key;
    json_t *value;
    ck_assert_uint_eq(json_object_size(o), n);
    json_object_foreach(o, key, value) {
        ck_assert_msg(strcmp(key, keys[i]) == 0, "key %zu is %s, expected %s", i, key, keys[i]);
        i++;
    }
}

static char *dump(json_t *doc)
{
    char *s = tr_json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER, tr_json_mark());
    json_decref(doc);
    return s;
}

/* A scripted sequence: a host-only call, then a device call with a failing per-row launch and an id error. */
static void scripted_calls(tr_moe_diag *d, tr_moe_tuple_map *map)
{
    tr_error err;
    tr_grouping g;
    tr_moe_plan *p;
    tr_moe_grouping_req r = {tensor2(ids3, 3, 2, 1), tensor2(probs3, 3, 2, 1), 8, TR_GROUPING_DEVICE, "metal", NULL};
    tr_moe_diag_begin_call(d, &(tr_moe_call_info){0, 3, 2, 8, map});
    ck_assert_int_eq(tr_moe_dispatch_grouping(&r, d, &g, NULL, &err), TR_OK);   /* gpu_grouping_unavailable */
    tr_moe_plan_cfg host = {NULL, 0, NULL, 0, "cpu"};
    ck_assert_int_eq(tr_moe_plan_build(&g, map, &host, d, &p, &err), TR_OK);
    tr_moe_plan_free(p);
    tr_moe_diag_end_call(d, TR_OK);
    tr_moe_avail *a = avail_of(generic_names, 6);
    tr_moe_plan_cfg dev = {NULL, 0, a, 0, "metal"};
    tr_moe_diag_begin_call(d, &(tr_moe_call_info){1, 3, 2, 8, map});
    ck_assert_int_eq(tr_moe_plan_build(&g, map, &dev, d, &p, &err), TR_OK);      /* 6-3-4 specialized miss */
    ck_assert_int_eq(tr_moe_plan_launched(p, 0, d, &err), TR_OK);
    ck_assert_int_eq(tr_moe_plan_launch_failed(p, 1, "command buffer error 3", d, &err), TR_OK);
    ck_assert_int_eq(tr_moe_plan_launched(p, 2, d, &err), TR_OK);
    tr_moe_plan_free(p);
    tr_moe_diag_end_call(d, TR_OK);
    tr_moe_avail_free(a);
    tr_grouping_release(&g);
    int32_t bad[6] = {2, 5, 0, 8, 6, 1};
    r.ids.data = bad;
    tr_moe_diag_begin_call(d, &(tr_moe_call_info){2, 3, 2, 8, map});
    ck_assert_int_eq(tr_moe_dispatch_grouping(&r, d, &g, NULL, &err), TR_E_INVALID_EXPERT_ID);
    tr_moe_diag_end_call(d, TR_E_INVALID_EXPERT_ID);
}

static const char golden_diag[] =
    "{\"counters\":{\"grouping_calls_total\":2,\"grouping_gpu_primary_success_total\":0,"
    "\"grouping_cpu_fallback_total\":1,\"grouping_host_primary_total\":0,\"grouping_error_total\":1,"
    "\"grouping_cpu_fallback_reason_gpu_grouping_unavailable\":1,\"grouping_cpu_fallback_reason_non_device_inputs\":0,"
    "\"grouping_cpu_fallback_reason_invalid_shape\":0,\"grouping_cpu_fallback_reason_invalid_expert_id\":0,"
    "\"grouping_cpu_fallback_reason_kernel_not_found\":0,\"grouping_cpu_fallback_reason_unsupported_bit_tuple\":0,"
    "\"grouping_cpu_fallback_reason_nan_detected\":0,\"grouping_cpu_fallback_reason_device_error\":0,"
    "\"dispatch_calls_total\":3,\"dispatch_rows_total\":18,\"dispatch_groups_total\":6,\"dispatch_error_total\":1,"
    "\"kernel_fallback_total\":2,\"kernel_fallback_reason_gpu_grouping_unavailable\":0,"
    "\"kernel_fallback_reason_non_device_inputs\":0,\"kernel_fallback_reason_invalid_shape\":0,"
    "\"kernel_fallback_reason_invalid_expert_id\":0,\"kernel_fallback_reason_kernel_not_found\":1,"
    "\"kernel_fallback_reason_unsupported_bit_tuple\":0,\"kernel_fallback_reason_nan_detected\":0,"
    "\"kernel_fallback_reason_device_error\":1,\"grouped_attempts_total\":0,\"grouped_hits_total\":0,"
    "\"grouped_attempt_rows_total\":0,\"grouped_hit_rows_total\":0,\"nan_events_total\":0},"
    "\"per_tuple\":{"
    "\"4-4-4\":{\"groups\":2,\"rows\":2,\"device_groups\":0,\"host_groups\":2,\"fallbacks\":1,"
    "\"fallback_reason_gpu_grouping_unavailable\":0,\"fallback_reason_non_device_inputs\":0,"
    "\"fallback_reason_invalid_shape\":0,\"fallback_reason_invalid_expert_id\":0,"
    "\"fallback_reason_kernel_not_found\":0,\"fallback_reason_unsupported_bit_tuple\":0,"
    "\"fallback_reason_nan_detected\":0,\"fallback_reason_device_error\":1,\"nan_events\":0},"
    "\"6-2-3\":{\"groups\":2,\"rows\":8,\"device_groups\":1,\"host_groups\":1,\"fallbacks\":0,"
    "\"fallback_reason_gpu_grouping_unavailable\":0,\"fallback_reason_non_device_inputs\":0,"
    "\"fallback_reason_invalid_shape\":0,\"fallback_reason_invalid_expert_id\":0,"
    "\"fallback_reason_kernel_not_found\":0,\"fallback_reason_unsupported_bit_tuple\":0,"
    "\"fallback_reason_nan_detected\":0,\"fallback_reason_device_error\":0,\"nan_events\":0},"
    "\"6-3-4\":{\"groups\":2,\"rows\":2,\"device_groups\":1,\"host_groups\":1,\"fallbacks\":1,"
    "\"fallback_reason_gpu_grouping_unavailable\":0,\"fallback_reason_non_device_inputs\":0,"
    "\"fallback_reason_invalid_shape\":0,\"fallback_reason_invalid_expert_id\":0,"
    "\"fallback_reason_kernel_not_found\":1,\"fallback_reason_unsupported_bit_tuple\":0,"
    "\"fallback_reason_nan_detected\":0,\"fallback_reason_device_error\":0,\"nan_events\":0}},"
    "\"per_kernel\":{\"moe_trellis_swiglu_decode\":{\"selected\":4,\"launched\":1,\"rows\":1},"
    "\"moe_trellis_swiglu_prefill4\":{\"selected\":2,\"launched\":1,\"rows\":4}},"
    "\"grouped_hit_rate\":null,\"grouped_row_hit_rate\":null,"
    "\"last_fallback\":{\"event_index\":4,\"reason_code\":4,\"reason\":\"invalid_expert_id\","
    "\"detail\":\"flat=3 token=1 slot=1 id=8 num_experts=8\",\"batch_size\":3,\"top_k\":2,\"num_experts\":8,"
    "\"bit_tuple\":null,\"layer\":2}}";

START_TEST(test_diag_json)
{
    tr_moe_tuple_map *map;
    tr_error err;
    ck_assert_int_eq(tr_moe_tuple_map_new(map8, 8, &map, &err), TR_OK);
    tr_moe_diag *d = new_diag();
    scripted_calls(d, map);
    json_t *j = tr_moe_diag_json(d);
    static const char *const top[] = {"counters", "per_tuple", "per_kernel", "grouped_hit_rate",
                                      "grouped_row_hit_rate", "last_fallback"};
    static const char *const lf[] = {"event_index", "reason_code", "reason", "detail", "batch_size", "top_k",
                                     "num_experts", "bit_tuple", "layer"};
    assert_keys(j, top, 6);
    assert_keys(json_object_get(j, "counters"), counter_keys, sizeof counter_keys / sizeof counter_keys[0]);
    assert_keys(json_object_get(j, "last_fallback"), lf, 9);
    char *s = dump(j);
    ck_assert_str_eq(s, golden_diag);
    tr_dealloc(s);
    /* the events before: the device_error of 4-4-4 had the tuple and its layer */
    char *sig = dump(tr_moe_diag_signatures_json(d));
    ck_assert_str_eq(sig, "{\"[2, 3, 4, 6, 8]\":1,\"[3, 4, 6]\":1,\"[4]\":1}");
    tr_dealloc(sig);
    /* reset: zeros, null last_fallback, empty maps, event_index restarts */
    tr_moe_diag_reset(d);
    j = tr_moe_diag_json(d);
    json_t *c = json_object_get(j, "counters");
    const char *key;
    json_t *v;
    json_object_foreach(c, key, v) ck_assert_msg(json_integer_value(v) == 0, "%s", key);
    ck_assert_uint_eq(json_object_size(c), sizeof counter_keys / sizeof counter_keys[0]);
    ck_assert(json_is_null(json_object_get(j, "last_fallback")));
    ck_assert(json_is_null(json_object_get(j, "grouped_hit_rate")));
    ck_assert_uint_eq(json_object_size(json_object_get(j, "per_tuple")), 0);
    ck_assert_uint_eq(json_object_size(json_object_get(j, "per_kernel")), 0);
    json_decref(j);
    sig = dump(tr_moe_diag_signatures_json(d));
    ck_assert_str_eq(sig, "{}");
    tr_dealloc(sig);
    scripted_calls(d, map);
    tr_moe_diag_snapshot snap;
    tr_moe_diag_get(d, &snap);
    ck_assert_uint_eq(snap.last_fallback.event_index, 4);
    tr_moe_diag_free(d);
    tr_moe_tuple_map_free(map);
}
END_TEST

START_TEST(test_diag_details)
{
    tr_moe_diag *d = new_diag();
    tr_error err;
    char why[400];
    memset(why, 'x', sizeof why);
    why[0] = (char)0xC3;
    why[1] = (char)0xA9;
    why[sizeof why - 1] = '\0';
    ck_assert_int_eq(tr_moe_diag_kernel_fallback(d, TR_MOE_DEVICE_ERROR, (tr_bit_tuple){2, 2, 2}, why, &err), TR_OK);
    tr_moe_diag_snapshot s;
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(strlen(s.last_fallback.detail), 255);
    ck_assert(s.last_fallback.detail[0] == '?' && s.last_fallback.detail[1] == '?' && s.last_fallback.detail[2] == 'x');
    ck_assert_int_eq(s.last_fallback.layer, -1);              /* no call yet: layer unknown */
    ck_assert_int_eq(tr_moe_diag_kernel_fallback(d, 0, (tr_bit_tuple){2, 2, 2}, "x", &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_moe_diag_kernel_fallback(d, 9, (tr_bit_tuple){2, 2, 2}, "x", &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_moe_diag_kernel_fallback(d, 5, (tr_bit_tuple){2, 9, 2}, "x", &err), TR_E_INVALID_PARAM);
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(s.kernel_fallback_total, 1);
    /* dispatch_error_total once per call */
    tr_moe_diag_begin_call(d, &(tr_moe_call_info){0, 1, 1, 1, NULL});
    tr_moe_diag_call_failed(d);
    tr_moe_diag_end_call(d, TR_E_NAN_DETECTED);
    tr_moe_diag_end_call(d, TR_E_NAN_DETECTED);
    tr_moe_diag_get(d, &s);
    ck_assert_uint_eq(s.dispatch_error_total, 1);
    ck_assert_str_eq(tr_moe_reason_name(8), "device_error");
    ck_assert_str_eq(tr_moe_reason_name(0), "none");
    ck_assert_str_eq(tr_moe_reason_name(9), "unknown");
    tr_grouping_mode m;
    ck_assert_int_eq(tr_grouping_mode_parse("device", &m, &err), TR_OK);
    ck_assert_int_eq(m, TR_GROUPING_DEVICE);
    ck_assert_int_eq(tr_grouping_mode_parse("gpu", &m, &err), TR_E_INVALID_PARAM);
    ck_assert_str_eq(err.text, "grouping_mode: TR_E_INVALID_PARAM: \"gpu\" is not one of auto, device, host");
    ck_assert_str_eq(tr_grouping_mode_name(TR_GROUPING_AUTO), "auto");
    tr_moe_diag_free(d);
}
END_TEST

/* ---- allocation failures ----------------------------------------------------------------------------------------- */

/* One pass of every allocating entry point; returns the first failing status (TR_OK when none failed). */
static int allocating_pass(void)
{
    tr_error err;
    tr_moe_diag *d = NULL;
    tr_moe_tuple_map *map = NULL;
    tr_moe_plan *p = NULL;
    tr_moe_avail *a = NULL;
    tr_grouping g = {0};
    tr_grouped_inputs in = {0};
    fake_device f = {F_NONE, 1, 1, 0};
    tr_device_grouping dev = device_of(&f);
    tr_moe_grouping_req r = {tensor2(ids3, 3, 2, 1), tensor2(probs3, 3, 2, 1), 8, TR_GROUPING_DEVICE, "metal", &dev};
    int rc = tr_moe_diag_new(&d, &err);
    if (rc == TR_OK)
        rc = tr_moe_tuple_map_new(map8, 8, &map, &err);
    if (rc == TR_OK)
        rc = tr_moe_dispatch_grouping(&r, d, &g, NULL, &err);
    if (rc == TR_OK)
        rc = tr_moe_avail_new(&a, &err);
    for (size_t i = 0; rc == TR_OK && i < 8; i++)
        rc = tr_moe_avail_add(a, generic_names[i], &err);
    tr_moe_select_cfg sc;
    tr_moe_select_cfg_default(&sc);
    sc.use_grouped_kernel = 1;
    tr_moe_plan_cfg cfg = {&sc, 0, a, 0, "metal"};
    if (rc == TR_OK)
        rc = tr_moe_plan_build(&g, map, &cfg, d, &p, &err);
    if (rc == TR_OK)
        rc = tr_moe_prepare_grouped_inputs(p, 0, &g, &in, &err);
    if (rc == TR_OK) {
        unsigned long mark = tr_json_mark();
        json_t *j = tr_moe_diag_json(d);
        char *s = tr_json_dumps(j, JSON_COMPACT, mark);
        rc = s ? TR_OK : TR_E_NOMEM;
        tr_dealloc(s);
        json_decref(j);
    }
    if (d)
        assert_invariant(d);
    tr_grouped_inputs_release(&in);
    tr_moe_plan_free(p);
    tr_moe_avail_free(a);
    tr_grouping_release(&g);
    tr_moe_tuple_map_free(map);
    tr_moe_diag_free(d);
    return rc;
}

START_TEST(test_allocation_failures)
{
    size_t bad = 0, points = 0;
    for (unsigned long k = 1;; k++) {
        tr_alloc_fail_at(k);
        int rc = allocating_pass();
        int fired = tr_alloc_fired();
        tr_alloc_fail_at(0);
        bad += rc != (fired ? TR_E_NOMEM : TR_OK);
        if (!fired)
            break;
        points++;
    }
    ck_assert_uint_eq(bad, 0);
    ck_assert_uint_gt(points, 10);
}
END_TEST

Suite *suite_moe_dispatch(void)
{
    Suite *s = suite_create("moe_dispatch");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_grouping_primary_paths);
    tcase_add_test(tc, test_grouping_fallbacks);
    tcase_add_test(tc, test_grouping_errors);
    tcase_add_test(tc, test_grouping_empty_and_random);
    tcase_add_test(tc, test_tuple_map);
    tcase_add_test(tc, test_plan_host_only);
    tcase_add_test(tc, test_plan_device_and_specialized);
    tcase_add_test(tc, test_plan_per_tuple_fallback);
    tcase_add_test(tc, test_plan_grouped_kernel);
    tcase_add_test(tc, test_plan_errors);
    tcase_add_test(tc, test_grouped_inputs);
    tcase_add_test(tc, test_diag_json);
    tcase_add_test(tc, test_diag_details);
    tcase_add_test(tc, test_allocation_failures);
    suite_add_tcase(s, tc);
    return s;
}
