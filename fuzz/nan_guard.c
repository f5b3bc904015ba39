/*
 * nan_guard.c — fuzz target: the NaN guard (MOE.md §7; moe.h tr_nan_guard_*), its statistics, the canonical first
 * key, the policies and the §7.6 diagnostics events.
 *
 * Input: u8 policy (off/report/zero/abort), then operations until the input ends (at most 64):
 *   op % 8 == 0: begin_forward      op % 8 == 6: moe_end      op % 8 == 7: unobserved(u8 stage, u8 tensors)
 *   otherwise a scan: u8 site (values >= 16 invalid), u8 layer (% 6), u8 first_token, u8 slot (% 4), u8 expert,
 *   u8 shape (rows 1..4, cols 0..8, f16 bit, tuple bit), then rows·cols value bytes (finite values, NaN payloads of
 *   both signs, ±Inf; f16 encodings for f16 scans).
 * MoE-stage scans (router … combine) between two boundaries are given the layer of the first one, as an engine's MoE
 * block scans one layer.
 * Checks, against an independent model of §7.2–§7.6: per-stage nan/+inf/−inf counts, scans and unobserved; the
 * first key (call, layer, position, token, slot, index) = the minimum over every non-finite element scanned, with its
 * stage, expert and kind; zero policy writes +0 exactly over the non-finite elements, the others leave data alone;
 * off records nothing; abort returns TR_E_NAN_DETECTED from the first scan that sees a non-finite value of a forward
 * call (the rest of that call is skipped, as the engine does) and runs the hook once per such call; one diagnostics
 * event per MoE block with a detection, last_fallback naming that block's first hit; invalid sites are
 * TR_E_INVALID_PARAM.  Without abort, the same operations with the scans of each block in reverse order give the
 * same statistics and diagnostics (first-key determinism).  Overlapping scans can put two elements on one key (an
 * engine never does); then only the key itself, not which element won it, must agree across orders.
 */
#include "fuzz.h"
#include "trellis/alloc.h"
#include "trellis/moe.h"

#include <math.h>

#define MAX_OPS 64

enum { OP_BEGIN, OP_SCAN, OP_MOE_END, OP_UNOBSERVED };

typedef struct op {
    int kind;
    tr_nan_where w;
    int site_raw;
    int f16, tuple;
    uint32_t rows, cols;
    uint8_t stage_raw;
    uint64_t tensors;
    float *f;
    uint16_t *h;
} op;

static const tr_bit_tuple TUPLE = {6, 2, 3};

/* The spec's site table (§7.1, §7.2): stage, position in tenths. */
static const int site_stage[16] = {7, 7, 7, 7, 7, 6, 7, 0, 0, 1, 2, 3, 4, 5, 7, 8};
static const unsigned site_pos[16] = {10, 21, 22, 23, 24, 30, 40, 51, 52, 60, 70, 80, 90, 100, 10, 20};

static int is_moe_stage(int st) { return st >= 0 && st <= 5; }

static float f32_value(uint8_t v)
{
    static const uint32_t bits[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFFBFFFFFu, 0x7F800000u, 0xFF800000u};
    if (v < 200)
        return ((float)v - 100.0f) / 4.0f;
    float f;
    memcpy(&f, &bits[v % 6], sizeof f);
    return f;
}

static uint16_t f16_value(uint8_t v)
{
    static const uint16_t bits[] = {0x7E00, 0xFE00, 0x7C01, 0xFDFF, 0x7C00, 0xFC00};
    return v < 200 ? (uint16_t)(0x3C00 + v) : bits[v % 6];
}

/* kind of a non-finite value, TR_NF_NONE when finite */
static tr_nonfinite kind_f32(float v) { return isnan(v) ? TR_NF_NAN : isinf(v) ? (v > 0 ? TR_NF_POS_INF : TR_NF_NEG_INF) : TR_NF_NONE; }
static tr_nonfinite kind_f16(uint16_t h)
{
    if ((h & 0x7C00) != 0x7C00)
        return TR_NF_NONE;
    return (h & 0x3FF) ? TR_NF_NAN : (h & 0x8000) ? TR_NF_NEG_INF : TR_NF_POS_INF;
}

typedef struct key {
    uint64_t call;
    int32_t layer;
    unsigned pos;
    uint32_t token, slot;
    uint64_t index;
    int stage;
    int32_t expert;
    tr_nonfinite kind;
    int has_tuple;
} key;

static int key_before(const key *a, const key *b)
{
    if (a->call != b->call)
        return a->call < b->call;
    if (a->layer != b->layer)
        return a->layer < b->layer;
    if (a->pos != b->pos)
        return a->pos < b->pos;
    if (a->token != b->token)
        return a->token < b->token;
    if (a->slot != b->slot)
        return a->slot < b->slot;
    return a->index < b->index;
}

/* What one run observed. */
typedef struct result {
    tr_nan_stats stats;
    tr_moe_diag_snapshot diag;
    uint64_t tuple_events;
    int hooks;
    int tie;            /* two non-finite elements had the same key (scans overlapping): the winner is order-dependent */
} result;

static void hook(void *user) { (*(int *)user)++; }

static const char *const stage_names[9] = {"router", "gate", "up", "swiglu", "down", "combine", "attention", "norm",
                                           "logits"};
static const char *const kind_names[4] = {"none", "nan", "+inf", "-inf"};

/* Run ops in the given order (order[i] indexes ops).  expect: check against the model when non-NULL. */
static void run(tr_nan_policy policy, op *ops, const size_t *order, size_t n, result *res, int check)
{
    tr_moe_diag *diag = NULL;
    tr_nan_guard *g = NULL;
    tr_error err;
    FUZZ_SETUP_CHECK(tr_moe_diag_new(&diag, &err) == TR_OK, "diag");
    FUZZ_ASSERT(tr_nan_guard_new(policy, diag, &g, &err) == TR_OK, "guard_new(%d): %s", (int)policy, err.text);
    memset(res, 0, sizeof *res);
    tr_nan_guard_set_abort_hook(g, hook, &res->hooks);

    /* the model */
    tr_nan_stage_stats st[9];
    memset(st, 0, sizeof st);
    key first = {0}, block_first = {0}, last_event = {0};
    int has_first = 0, block_has = 0, has_event = 0, nan_seen = 0, inf_seen = 0;
    uint64_t calls = 0, events = 0, tuple_events = 0, aborted_calls = 0;
    int skipping = 0;
#define END_BLOCK()                                                                                                   \
    do {                                                                                                              \
        if (block_has) {                                                                                              \
            events++;                                                                                                 \
            last_event = block_first;                                                                                 \
            has_event = 1;                                                                                            \
            tuple_events += block_first.has_tuple;                                                                    \
        }                                                                                                             \
        block_has = 0;                                                                                                \
    } while (0)

    for (size_t i = 0; i < n; i++) {
        op *o = &ops[order[i]];
        if (o->kind == OP_BEGIN) {
            tr_nan_guard_begin_forward(g);
            END_BLOCK();
            calls++;
            skipping = 0;
            continue;
        }
        if (skipping)
            continue;
        if (o->kind == OP_MOE_END) {
            tr_nan_guard_moe_end(g);
            END_BLOCK();
            continue;
        }
        if (o->kind == OP_UNOBSERVED) {
            tr_nan_guard_unobserved(g, (tr_nan_stage)o->stage_raw, o->tensors);
            if (policy != TR_NAN_OFF && o->stage_raw < 9)
                st[o->stage_raw].unobserved += o->tensors;
            continue;
        }
        size_t cnt = (size_t)o->rows * o->cols;
        float fcopy[32];
        uint16_t hcopy[32];
        if (o->f16)
            memcpy(hcopy, o->h, cnt * sizeof *hcopy);
        else
            memcpy(fcopy, o->f, cnt * sizeof *fcopy);
        tr_error_clear(&err);
        int rc = o->f16 ? tr_nan_guard_scan_f16(g, &o->w, hcopy, o->rows, o->cols, &err)
                        : tr_nan_guard_scan_f32(g, &o->w, fcopy, o->rows, o->cols, &err);
        if (policy == TR_NAN_OFF) {
            FUZZ_ASSERT(rc == TR_OK, "policy off: %s", err.text);
            continue;
        }
        if (o->site_raw >= 16) {
            FUZZ_ASSERT(rc == TR_E_INVALID_PARAM, "site %d: %d", o->site_raw, rc);
            continue;
        }
        int stage = site_stage[o->site_raw];
        st[stage].scans++;
        int found = 0;
        key k1 = {0};
        for (size_t e = 0; e < cnt; e++) {
            tr_nonfinite kd = o->f16 ? kind_f16(o->h[e]) : kind_f32(o->f[e]);
            if (policy == TR_NAN_ZERO || kd == TR_NF_NONE) {   /* data after the scan */
                int same = o->f16 ? hcopy[e] == (kd == TR_NF_NONE ? o->h[e] : 0)
                                  : !memcmp(&fcopy[e], kd == TR_NF_NONE ? &o->f[e] : &(float){0.0f}, 4);
                FUZZ_ASSERT(same, "element %zu after the scan (policy %d, kind %d)", e, (int)policy, (int)kd);
            } else
                FUZZ_ASSERT(o->f16 ? hcopy[e] == o->h[e] : !memcmp(&fcopy[e], &o->f[e], 4),
                            "policy %d changed element %zu", (int)policy, e);
            if (kd == TR_NF_NONE)
                continue;
            if (kd == TR_NF_NAN) {
                st[stage].nan_count++;
                nan_seen = 1;
            } else {
                (*(kd == TR_NF_POS_INF ? &st[stage].pos_inf_count : &st[stage].neg_inf_count))++;
                inf_seen = 1;
            }
            if (!found) {
                found = 1;
                k1 = (key){calls ? calls - 1 : 0, o->w.layer, site_pos[o->site_raw], o->w.first_token +
                           (uint32_t)(e / o->cols), o->w.slot, e % o->cols, stage, o->w.expert, kd,
                           o->tuple && stage >= 1 && stage <= 4};
            }
        }
        if (found) {
            if (has_first && !key_before(&k1, &first) && !key_before(&first, &k1))
                res->tie = 1;
            if (block_has && is_moe_stage(stage) && !key_before(&k1, &block_first) && !key_before(&block_first, &k1))
                res->tie = 1;
            if (!has_first || key_before(&k1, &first))
                first = k1;
            has_first = 1;
            if (is_moe_stage(stage)) {
                if (block_has && (block_first.call != k1.call || block_first.layer != k1.layer))
                    END_BLOCK();
                if (!block_has || key_before(&k1, &block_first))
                    block_first = k1;
                block_has = 1;
            }
        }
        if (policy == TR_NAN_ABORT && found) {
            FUZZ_ASSERT(rc == TR_E_NAN_DETECTED, "abort policy: scan with a non-finite value returned %d", rc);
            if (is_moe_stage(stage))
                END_BLOCK();
            aborted_calls++;
            skipping = 1;   /* the engine stops the forward call */
        } else
            FUZZ_ASSERT(rc == TR_OK, "scan: %d %s", rc, err.text);
    }
    tr_nan_guard_moe_end(g);
    END_BLOCK();
#undef END_BLOCK
    tr_nan_guard_get(g, &res->stats);
    tr_moe_diag_get(diag, &res->diag);
    tr_moe_tuple_counters tc;
    tr_moe_diag_tuple(diag, TUPLE, &tc);
    res->tuple_events = tc.nan_events;

    if (check) {
        const tr_nan_stats *s = &res->stats;
        for (int i = 0; i < 9; i++)
            FUZZ_ASSERT(s->stage[i].nan_count == st[i].nan_count && s->stage[i].pos_inf_count == st[i].pos_inf_count &&
                            s->stage[i].neg_inf_count == st[i].neg_inf_count && s->stage[i].scans == st[i].scans &&
                            s->stage[i].unobserved == st[i].unobserved,
                        "stage %d counts: nan %llu/%llu +inf %llu/%llu -inf %llu/%llu scans %llu/%llu", i,
                        (unsigned long long)s->stage[i].nan_count, (unsigned long long)st[i].nan_count,
                        (unsigned long long)s->stage[i].pos_inf_count, (unsigned long long)st[i].pos_inf_count,
                        (unsigned long long)s->stage[i].neg_inf_count, (unsigned long long)st[i].neg_inf_count,
                        (unsigned long long)s->stage[i].scans, (unsigned long long)st[i].scans);
        FUZZ_ASSERT(s->nan_detected == nan_seen && s->inf_detected == inf_seen, "detected flags");
        FUZZ_ASSERT(s->has_first == has_first, "has_first %d, expected %d", s->has_first, has_first);
        if (has_first)
            FUZZ_ASSERT(s->first_call == first.call && s->first_layer == first.layer &&
                            s->first_position == first.pos && s->first_token == first.token &&
                            s->first_slot == first.slot && s->first_index == first.index &&
                            (int)s->first_stage == first.stage && s->first_expert == first.expert &&
                            s->first_kind == first.kind,
                        "first key (%llu,%d,%u,%u,%u,%llu), expected (%llu,%d,%u,%u,%u,%llu)",
                        (unsigned long long)s->first_call, s->first_layer, s->first_position, s->first_token,
                        s->first_slot, (unsigned long long)s->first_index, (unsigned long long)first.call,
                        first.layer, first.pos, first.token, first.slot, (unsigned long long)first.index);
        FUZZ_ASSERT(res->diag.nan_events_total == events, "nan events %llu, expected %llu",
                    (unsigned long long)res->diag.nan_events_total, (unsigned long long)events);
        FUZZ_ASSERT(res->tuple_events == tuple_events, "tuple nan events %llu, expected %llu",
                    (unsigned long long)res->tuple_events, (unsigned long long)tuple_events);
        FUZZ_ASSERT(res->hooks == (int)aborted_calls, "hook ran %d times, %llu aborted calls", res->hooks,
                    (unsigned long long)aborted_calls);
        if (has_event) {
            char want[256];
            snprintf(want, sizeof want, "stage=%s layer=%d expert=%d token=%u index=%llu kind=%s",
                     stage_names[last_event.stage], last_event.layer, last_event.expert, last_event.token,
                     (unsigned long long)last_event.index, kind_names[last_event.kind]);
            FUZZ_ASSERT(res->diag.has_last_fallback && res->diag.last_fallback.reason_code == TR_MOE_NAN_DETECTED &&
                            !strcmp(res->diag.last_fallback.detail, want),
                        "last_fallback \"%s\", expected \"%s\"", res->diag.last_fallback.detail, want);
        }
        json_t *j = tr_nan_stats_json(s, policy);
        FUZZ_ASSERT(j != NULL, "stats json");
        json_decref(j);
    }
    tr_nan_guard_free(g);
    tr_moe_diag_free(diag);
}

/* Equal statistics; with a tie only the key itself must agree. */
static int same_stats(const tr_nan_stats *x, const tr_nan_stats *y, int tie)
{
    for (int i = 0; i < TR_NAN_STAGE_COUNT; i++) {
        const tr_nan_stage_stats *p = &x->stage[i], *q = &y->stage[i];
        if (p->nan_count != q->nan_count || p->pos_inf_count != q->pos_inf_count ||
            p->neg_inf_count != q->neg_inf_count || p->scans != q->scans || p->unobserved != q->unobserved)
            return 0;
    }
    if (x->nan_detected != y->nan_detected || x->inf_detected != y->inf_detected || x->has_first != y->has_first)
        return 0;
    return !x->has_first ||
           (x->first_stage == y->first_stage && x->first_layer == y->first_layer && x->first_token == y->first_token &&
            x->first_slot == y->first_slot && x->first_index == y->first_index && x->first_call == y->first_call &&
            x->first_position == y->first_position &&
            (tie || (x->first_expert == y->first_expert && x->first_kind == y->first_kind)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT)
        return 0;
    fuzz_bytes in = {data, size, 0};
    tr_nan_policy policy = (tr_nan_policy)(fuzz_u8(&in) % 4);
    op ops[MAX_OPS];
    size_t n = 0;
    int block_layer = -1;   /* layer of the current MoE block */
    while (fuzz_left(&in) && n < MAX_OPS) {
        op *o = &ops[n];
        memset(o, 0, sizeof *o);
        uint8_t c = fuzz_u8(&in);
        switch (c % 8) {
        case 0:
            o->kind = OP_BEGIN;
            block_layer = -1;
            break;
        case 6:
            o->kind = OP_MOE_END;
            block_layer = -1;
            break;
        case 7:
            o->kind = OP_UNOBSERVED;
            o->stage_raw = fuzz_u8(&in) % 10;
            o->tensors = fuzz_u8(&in);
            break;
        default: {
            o->kind = OP_SCAN;
            uint8_t site = fuzz_u8(&in);
            o->site_raw = site < 240 ? site % 16 : site;
            o->w.site = (tr_nan_site)o->site_raw;
            o->w.layer = fuzz_u8(&in) % 6;
            o->w.first_token = fuzz_u8(&in);
            o->w.slot = fuzz_u8(&in) % 4;
            o->w.expert = (int8_t)fuzz_u8(&in);
            uint8_t shape = fuzz_u8(&in);
            o->rows = 1 + shape % 4;
            o->cols = (shape >> 2) % 9;
            o->f16 = (shape >> 6) & 1;
            o->tuple = shape >> 7;
            o->w.tuple = o->tuple ? &TUPLE : NULL;
            if (o->site_raw < 16 && is_moe_stage(site_stage[o->site_raw])) {
                if (block_layer < 0)
                    block_layer = o->w.layer;
                o->w.layer = block_layer;
            }
            size_t cnt = (size_t)o->rows * o->cols;
            o->f = malloc((cnt ? cnt : 1) * sizeof *o->f);
            o->h = malloc((cnt ? cnt : 1) * sizeof *o->h);
            FUZZ_SETUP_CHECK(o->f && o->h, "out of memory");
            for (size_t e = 0; e < cnt; e++) {
                uint8_t v = fuzz_u8(&in);
                o->f[e] = f32_value(v);
                o->h[e] = f16_value(v);
            }
            break;
        }
        }
        n++;
    }
    size_t order[MAX_OPS] = {0};
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    result a, b;
    run(policy, ops, order, n, &a, 1);
    if (policy != TR_NAN_ABORT) {
        /* the scans of every block (between boundaries) reversed */
        for (size_t i = 0; i < n;) {
            size_t j = i;
            while (j < n && (ops[j].kind == OP_SCAN || ops[j].kind == OP_UNOBSERVED))
                j++;
            for (size_t x = i, y = j; x + 1 < y; x++, y--) {
                size_t t = order[x];
                order[x] = order[y - 1];
                order[y - 1] = t;
            }
            i = j == i ? i + 1 : j;
        }
        run(policy, ops, order, n, &b, 1);
        int tie = a.tie || b.tie;
        FUZZ_ASSERT(same_stats(&a.stats, &b.stats, tie), "statistics depend on the scan order");
        FUZZ_ASSERT(a.diag.nan_events_total == b.diag.nan_events_total &&
                        (tie || (a.tuple_events == b.tuple_events &&
                                 !strcmp(a.diag.last_fallback.detail, b.diag.last_fallback.detail))),
                    "diagnostics depend on the scan order");
    }
    for (size_t i = 0; i < n; i++) {
        free(ops[i].f);
        free(ops[i].h);
    }
    return 0;
}
