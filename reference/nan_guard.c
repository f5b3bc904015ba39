/*
 * nan_guard.c — the NaN guard of MOE.md §7: scans of stage tensors with nan_scan semantics (KERNELS.md §4.13), the
 * canonical first non-finite element by the key (call, layer, position, token, slot, index) whatever the execution
 * order, per-stage statistics, the policies off/report/zero/abort, and the diagnostics events of §7.6.
 *
 * KV cache under abort: the guard does not own the cache.  The engine records the cache length before each forward
 * call and restores it in the abort hook (tr_nan_guard_set_abort_hook), which runs once per forward call, before the
 * scan that found the value returns TR_E_NAN_DETECTED; the engine then stops the call and discards its outputs.
 */
#include "trellis/moe.h"
#include "trellis/alloc.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- names and sites ------------------------------------------------------------------------------------------- */

static const char *const policy_names[] = {"off", "report", "zero", "abort"};
static const char *const stage_names[TR_NAN_STAGE_COUNT] = {
    "router", "gate", "up", "swiglu", "down", "combine", "attention", "norm", "logits",
};

const char *tr_nan_policy_name(tr_nan_policy p) { return (unsigned)p < 4 ? policy_names[p] : "unknown"; }

int tr_nan_policy_parse(const char *name, tr_nan_policy *out, tr_error *err)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, policy_names[i]) == 0) {
            *out = (tr_nan_policy)i;
            return TR_OK;
        }
    return tr_fail(err, TR_E_INVALID_PARAM, "nan_policy", "\"%s\" is not one of report, zero, abort, off", name);
}

const char *tr_nan_stage_name(tr_nan_stage s)
{
    return (unsigned)s < TR_NAN_STAGE_COUNT ? stage_names[s] : "unknown";
}

const char *tr_nonfinite_name(tr_nonfinite k)
{
    return k == TR_NF_NAN ? "nan" : k == TR_NF_POS_INF ? "+inf" : k == TR_NF_NEG_INF ? "-inf" : "none";
}

/* Stage and position (tenths) of every site, §7.1 and §7.2. */
static const struct {
    tr_nan_stage stage;
    unsigned position;
} sites[TR_NAN_SITE_COUNT] = {
    [TR_NAN_SITE_INPUT_NORM] = {TR_NAN_STAGE_NORM, 10},
    [TR_NAN_SITE_Q_A_NORM] = {TR_NAN_STAGE_NORM, 21},
    [TR_NAN_SITE_KV_A_NORM] = {TR_NAN_STAGE_NORM, 22},
    [TR_NAN_SITE_Q_HEAD_NORM] = {TR_NAN_STAGE_NORM, 23},
    [TR_NAN_SITE_K_HEAD_NORM] = {TR_NAN_STAGE_NORM, 24},
    [TR_NAN_SITE_ATTENTION] = {TR_NAN_STAGE_ATTENTION, 30},
    [TR_NAN_SITE_POST_ATTN_NORM] = {TR_NAN_STAGE_NORM, 40},
    [TR_NAN_SITE_ROUTER_LOGITS] = {TR_NAN_STAGE_ROUTER, 51},
    [TR_NAN_SITE_ROUTER_WEIGHTS] = {TR_NAN_STAGE_ROUTER, 52},
    [TR_NAN_SITE_GATE] = {TR_NAN_STAGE_GATE, 60},
    [TR_NAN_SITE_UP] = {TR_NAN_STAGE_UP, 70},
    [TR_NAN_SITE_SWIGLU] = {TR_NAN_STAGE_SWIGLU, 80},
    [TR_NAN_SITE_DOWN] = {TR_NAN_STAGE_DOWN, 90},
    [TR_NAN_SITE_COMBINE] = {TR_NAN_STAGE_COMBINE, 100},
    [TR_NAN_SITE_FINAL_NORM] = {TR_NAN_STAGE_NORM, 10},
    [TR_NAN_SITE_LOGITS] = {TR_NAN_STAGE_LOGITS, 20},
};

/* TR_NAN_STAGE_COUNT and position 0 for a site outside the table. */
tr_nan_stage tr_nan_site_stage(tr_nan_site s)
{
    return (unsigned)s < TR_NAN_SITE_COUNT ? sites[s].stage : (tr_nan_stage)TR_NAN_STAGE_COUNT;
}

unsigned tr_nan_site_position(tr_nan_site s) { return (unsigned)s < TR_NAN_SITE_COUNT ? sites[s].position : 0; }

/* Stages router … combine belong to the MoE block (§7.6). */
static int moe_stage(tr_nan_stage s) { return s <= TR_NAN_STAGE_COMBINE; }
/* Stages gate … down evaluate experts. */
static int expert_stage(tr_nan_stage s) { return s >= TR_NAN_STAGE_GATE && s <= TR_NAN_STAGE_DOWN; }

/* ---- the guard --------------------------------------------------------------------------------------------------- */

/* A non-finite element with its §7.2 key. */
typedef struct nan_hit {
    uint64_t call;
    int32_t layer;
    unsigned position;
    uint32_t token, slot;
    uint64_t index;
    tr_nan_stage stage;
    int32_t expert;
    tr_nonfinite kind;
    int has_tuple;
    tr_bit_tuple tuple;
} nan_hit;

struct tr_nan_guard {
    tr_nan_policy policy;
    tr_moe_diag *diag;
    void (*hook)(void *user);
    void *hook_user;
    int hook_fired;              /* in the current forward call */
    uint64_t calls_begun;        /* forward calls since reset; the current call is calls_begun - 1 */
    tr_nan_stats stats;
    nan_hit first;               /* valid when stats.has_first */
    int pending;                 /* a detection in the current MoE call, not yet an event */
    nan_hit moe_first;           /* its first by key */
};

int tr_nan_guard_new(tr_nan_policy policy, tr_moe_diag *diag, tr_nan_guard **out, tr_error *err)
{
    *out = NULL;
    if ((unsigned)policy > TR_NAN_ABORT)
        return tr_fail(err, TR_E_INVALID_PARAM, "nan_policy", "policy %d outside off/report/zero/abort", (int)policy);
    tr_nan_guard *g = tr_calloc(1, sizeof *g);
    if (!g)
        return tr_fail(err, TR_E_NOMEM, "nan_guard", "out of memory");
    g->policy = policy;
    g->diag = diag;
    *out = g;
    return TR_OK;
}

void tr_nan_guard_free(tr_nan_guard *g) { tr_dealloc(g); }

tr_nan_policy tr_nan_guard_policy(const tr_nan_guard *g) { return g->policy; }

void tr_nan_guard_set_abort_hook(tr_nan_guard *g, void (*hook)(void *user), void *user)
{
    g->hook = hook;
    g->hook_user = user;
}

static uint64_t current_call(const tr_nan_guard *g) { return g->calls_begun ? g->calls_begun - 1 : 0; }

/* Key order (call, layer, position, token, slot, index), §7.2. */
static int hit_before(const nan_hit *a, const nan_hit *b)
{
    if (a->call != b->call)
        return a->call < b->call;
    if (a->layer != b->layer)
        return a->layer < b->layer;
    if (a->position != b->position)
        return a->position < b->position;
    if (a->token != b->token)
        return a->token < b->token;
    if (a->slot != b->slot)
        return a->slot < b->slot;
    return a->index < b->index;
}

/* "stage=<stage> layer=<l> expert=<e> token=<t> index=<i> kind=<nan|+inf|-inf>" (§6.3). */
static void hit_detail(const nan_hit *h, char *buf, size_t size)
{
    snprintf(buf, size, "stage=%s layer=%d expert=%d token=%u index=%llu kind=%s", stage_names[h->stage], h->layer,
             h->expert, h->token, (unsigned long long)h->index, tr_nonfinite_name(h->kind));
}

/* The MoE call's first detection becomes one diagnostics event (§7.6). */
static void flush_moe_event(tr_nan_guard *g)
{
    if (!g->pending)
        return;
    g->pending = 0;
    if (!g->diag)
        return;
    char detail[256];
    hit_detail(&g->moe_first, detail, sizeof detail);
    tr_moe_diag_nan_event(g->diag, g->moe_first.layer, g->moe_first.has_tuple ? &g->moe_first.tuple : NULL, detail);
}

void tr_nan_guard_begin_forward(tr_nan_guard *g)
{
    flush_moe_event(g);
    g->calls_begun += 1;
    g->hook_fired = 0;
}

void tr_nan_guard_moe_end(tr_nan_guard *g) { flush_moe_event(g); }

void tr_nan_guard_reset(tr_nan_guard *g)
{
    memset(&g->stats, 0, sizeof g->stats);
    memset(&g->first, 0, sizeof g->first);
    g->calls_begun = 0;
    g->hook_fired = 0;
    g->pending = 0;
}

void tr_nan_guard_get(const tr_nan_guard *g, tr_nan_stats *out) { *out = g->stats; }

void tr_nan_guard_unobserved(tr_nan_guard *g, tr_nan_stage stage, uint64_t tensors)
{
    if (g->policy != TR_NAN_OFF && (unsigned)stage < TR_NAN_STAGE_COUNT)
        g->stats.stage[stage].unobserved += tensors;
}

/* ---- recording a scanned tensor ------------------------------------------------------------------------------ */

static void set_first(tr_nan_stats *s, const nan_hit *h)
{
    s->has_first = 1;
    s->first_stage = h->stage;
    s->first_layer = h->layer;
    s->first_expert = h->expert;
    s->first_token = h->token;
    s->first_slot = h->slot;
    s->first_index = h->index;
    s->first_kind = h->kind;
    s->first_call = h->call;
    s->first_position = h->position;
}

/* The tensor's first hit against the global first and the MoE call's first. */
static void note_first(tr_nan_guard *g, const nan_hit *h)
{
    if (!g->stats.has_first || hit_before(h, &g->first)) {
        g->first = *h;
        set_first(&g->stats, h);
    }
    if (!moe_stage(h->stage))
        return;
    if (g->pending && (g->moe_first.call != h->call || g->moe_first.layer != h->layer))
        flush_moe_event(g);             /* the engine skipped tr_nan_guard_moe_end: one event per MoE call */
    if (!g->pending || hit_before(h, &g->moe_first)) {
        g->moe_first = *h;
        g->pending = 1;
    }
}

/* Abort (§7.4): the scan is complete; the MoE call's event is recorded, the call counts as failed, the hook runs. */
static int abort_call(tr_nan_guard *g, const nan_hit *h, tr_error *err)
{
    char detail[256];
    if (moe_stage(h->stage)) {
        flush_moe_event(g);
        if (g->diag)
            tr_moe_diag_call_failed(g->diag);
    }
    if (g->hook && !g->hook_fired) {
        g->hook_fired = 1;
        g->hook(g->hook_user);
    }
    hit_detail(h, detail, sizeof detail);
    return tr_fail(err, TR_E_NAN_DETECTED, "nan_guard", "%s", detail);
}

/* Counters of one tensor scan, kept per kind, and its first element in flat order. */
typedef struct tensor_scan {
    uint64_t count[4];          /* by tr_nonfinite */
    int found;
    uint64_t first_flat;
    tr_nonfinite first_kind;
} tensor_scan;

static void scan_note(tensor_scan *t, uint64_t flat, tr_nonfinite kind)
{
    t->count[kind]++;
    if (!t->found) {
        t->found = 1;
        t->first_flat = flat;
        t->first_kind = kind;
    }
}

static tr_nonfinite classify_f32(float v)
{
    return isnan(v) ? TR_NF_NAN : v > 0 ? TR_NF_POS_INF : TR_NF_NEG_INF;
}

static tr_nonfinite classify_f16(uint16_t h)
{
    return (h & 0x3FF) ? TR_NF_NAN : (h & 0x8000) ? TR_NF_NEG_INF : TR_NF_POS_INF;
}

/* Apply one finished tensor scan to the statistics; returns the abort status when the policy says so. */
static int finish_scan(tr_nan_guard *g, const tr_nan_where *w, uint32_t cols, const tensor_scan *t, tr_error *err)
{
    tr_nan_stage st = sites[w->site].stage;
    tr_nan_stage_stats *s = &g->stats.stage[st];
    s->scans += 1;
    s->nan_count += t->count[TR_NF_NAN];
    s->pos_inf_count += t->count[TR_NF_POS_INF];
    s->neg_inf_count += t->count[TR_NF_NEG_INF];
    g->stats.nan_detected |= t->count[TR_NF_NAN] > 0;
    g->stats.inf_detected |= t->count[TR_NF_POS_INF] + t->count[TR_NF_NEG_INF] > 0;
    if (!t->found)
        return TR_OK;
    nan_hit h = {
        .call = current_call(g), .layer = w->layer, .position = sites[w->site].position,
        .token = w->first_token + (uint32_t)(t->first_flat / cols), .slot = w->slot, .index = t->first_flat % cols,
        .stage = st, .expert = w->expert, .kind = t->first_kind,
        .has_tuple = w->tuple != NULL && expert_stage(st), .tuple = w->tuple ? *w->tuple : (tr_bit_tuple){0, 0, 0},
    };
    note_first(g, &h);
    return g->policy == TR_NAN_ABORT ? abort_call(g, &h, err) : TR_OK;
}

static int check_where(const tr_nan_where *w, tr_error *err)
{
    if ((unsigned)w->site >= TR_NAN_SITE_COUNT)
        return tr_fail(err, TR_E_INVALID_PARAM, "nan_guard", "scan site %d unknown", (int)w->site);
    return TR_OK;
}

int tr_nan_guard_scan_f32(tr_nan_guard *g, const tr_nan_where *w, float *data, uint32_t rows, uint32_t cols,
                          tr_error *err)
{
    if (g->policy == TR_NAN_OFF)
        return TR_OK;
    int rc = check_where(w, err);
    if (rc != TR_OK)
        return rc;
    tensor_scan t = {{0}, 0, 0, TR_NF_NONE};
    uint64_t n = (uint64_t)rows * cols;
    for (uint64_t i = 0; i < n; i++)
        if (!isfinite(data[i])) {
            scan_note(&t, i, classify_f32(data[i]));
            if (g->policy == TR_NAN_ZERO)
                data[i] = 0.0f;                 /* +0.0 */
        }
    return finish_scan(g, w, cols, &t, err);
}

int tr_nan_guard_scan_f16(tr_nan_guard *g, const tr_nan_where *w, uint16_t *data, uint32_t rows, uint32_t cols,
                          tr_error *err)
{
    if (g->policy == TR_NAN_OFF)
        return TR_OK;
    int rc = check_where(w, err);
    if (rc != TR_OK)
        return rc;
    tensor_scan t = {{0}, 0, 0, TR_NF_NONE};
    uint64_t n = (uint64_t)rows * cols;
    for (uint64_t i = 0; i < n; i++)
        if ((data[i] & 0x7C00) == 0x7C00) {
            scan_note(&t, i, classify_f16(data[i]));
            if (g->policy == TR_NAN_ZERO)
                data[i] = 0x0000;               /* +0.0 */
        }
    return finish_scan(g, w, cols, &t, err);
}

/* ---- JSON ------------------------------------------------------------------------------------------------------- */

static json_t *stage_json(const tr_nan_stage_stats *s)
{
    json_t *o = json_object();
    json_object_set_new(o, "count", json_integer((json_int_t)(s->nan_count + s->pos_inf_count + s->neg_inf_count)));
    json_object_set_new(o, "nan_count", json_integer((json_int_t)s->nan_count));
    json_object_set_new(o, "pos_inf_count", json_integer((json_int_t)s->pos_inf_count));
    json_object_set_new(o, "neg_inf_count", json_integer((json_int_t)s->neg_inf_count));
    json_object_set_new(o, "scans", json_integer((json_int_t)s->scans));
    json_object_set_new(o, "unobserved", json_integer((json_int_t)s->unobserved));
    return o;
}

static json_t *int_or_null(int has, json_int_t v) { return has ? json_integer(v) : json_null(); }

static void set_firsts(json_t *o, const tr_nan_stats *s)
{
    char pos[16];
    snprintf(pos, sizeof pos, "%u.%u", s->first_position / 10, s->first_position % 10);
    if (s->first_position % 10 == 0)
        snprintf(pos, sizeof pos, "%u", s->first_position / 10);
    int h = s->has_first;
    json_object_set_new(o, "first_stage", h ? json_string(tr_nan_stage_name(s->first_stage)) : json_null());
    json_object_set_new(o, "first_layer", int_or_null(h, s->first_layer));
    json_object_set_new(o, "first_expert", int_or_null(h, s->first_expert));
    json_object_set_new(o, "first_token", int_or_null(h, s->first_token));
    json_object_set_new(o, "first_index", int_or_null(h, (json_int_t)s->first_index));
    json_object_set_new(o, "first_kind", h ? json_string(tr_nonfinite_name(s->first_kind)) : json_null());
    json_object_set_new(o, "first_call", int_or_null(h, (json_int_t)s->first_call));
    json_object_set_new(o, "first_slot", int_or_null(h, s->first_slot));
    json_object_set_new(o, "first_position", h ? json_string(pos) : json_null());
}

json_t *tr_nan_stats_json(const tr_nan_stats *s, tr_nan_policy policy)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "policy", json_string(tr_nan_policy_name(policy)));
    json_object_set_new(o, "nan_detected", json_boolean(s->nan_detected));
    json_object_set_new(o, "inf_detected", json_boolean(s->inf_detected));
    set_firsts(o, s);
    json_t *stages = json_object();
    for (int i = 0; i < TR_NAN_STAGE_COUNT; i++)
        json_object_set_new(stages, stage_names[i], stage_json(&s->stage[i]));
    json_object_set_new(o, "stages", stages);
    return o;
}
