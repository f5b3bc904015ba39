/*
 * moe_dispatch.c — the MoE dispatch machinery of MOE.md §3.4–§4 and §6: dispatch diagnostics (tr_moe_diag), the
 * grouping dispatcher with its device/host paths, verification and canonicalisation of device results, tuple maps
 * and tuple groups, the per-call dispatch plan with per-tuple granular fallback, and the grouped-kernel inputs.
 */
#include "trellis/moe.h"
#include "trellis/alloc.h"
#include "trellis/fp16.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== reason codes and signatures ================================================================================ */

static const char *const reason_names[TR_MOE_REASON_COUNT] = {
    "none", "gpu_grouping_unavailable", "non_device_inputs", "invalid_shape", "invalid_expert_id",
    "kernel_not_found", "unsupported_bit_tuple", "nan_detected", "device_error",
};

const char *tr_moe_reason_name(int code)
{
    return code >= 0 && code < TR_MOE_REASON_COUNT ? reason_names[code] : "unknown";
}

/* §6.5: the sorted distinct widths, ", "-separated in brackets. */
int tr_moe_bits_signature(uint32_t mask, char *buf, size_t size)
{
    char tmp[160];
    size_t n = 0;
    tmp[n++] = '[';
    for (unsigned b = 0; b < 32; b++)
        if (mask & (1u << b))
            n += (size_t)snprintf(tmp + n, sizeof tmp - n, "%s%u", n > 1 ? ", " : "", b);
    tmp[n++] = ']';
    tmp[n] = '\0';
    return snprintf(buf, size, "%s", tmp);
}

static uint32_t tuple_mask(tr_bit_tuple t) { return (1u << (t.g & 31)) | (1u << (t.u & 31)) | (1u << (t.d & 31)); }

int tr_moe_tuple_signature(tr_bit_tuple t, char *buf, size_t size)
{
    return tr_moe_bits_signature(tuple_mask(t), buf, size);
}

/* The tuple map of one layer (§4.1, §4.2); built in the tuple-map section below. */
struct tr_moe_tuple_map {
    uint32_t E, n_groups;
    tr_bit_tuple *tuples;        /* [E] */
    uint32_t *group_of;          /* [E] */
    uint32_t *local_id;          /* [E] */
    uint32_t *members;           /* [E]: members of group 0, then group 1, … */
    uint32_t *group_start;       /* [n_groups + 1] into members */
    uint32_t mask;               /* widths present (signature) */
};

/* ==== diagnostics (§6) =========================================================================================== */

#define TUPLE_SLOTS 343                   /* (2..8)^3 */
#define SIGNATURE_SLOTS 128               /* subsets of the widths 2..8 */

typedef struct tuple_slot {
    int touched;
    tr_moe_tuple_counters c;
} tuple_slot;

typedef struct kernel_slot {
    int touched;
    tr_moe_kernel_counters c;
} kernel_slot;

struct tr_moe_diag {
    tr_moe_diag_snapshot s;
    uint64_t events;                      /* event_index of the last event */
    tuple_slot tuples[TUPLE_SLOTS];
    kernel_slot *kernels;                 /* one per policy name (tr_moe_policy_name_index) */
    size_t n_kernels;
    uint64_t signatures[SIGNATURE_SLOTS]; /* fallbacks per width subset (bit b-2 = width b) */
    tr_moe_call_info call;
    int call_error_counted;
};

int tr_moe_diag_new(tr_moe_diag **out, tr_error *err)
{
    tr_moe_diag *d = tr_calloc(1, sizeof *d);
    size_t n = tr_moe_policy_name_count();
    kernel_slot *k = d ? tr_calloc(n, sizeof *k) : NULL;
    if (!k) {
        tr_dealloc(d);
        *out = NULL;
        return tr_fail(err, TR_E_NOMEM, "moe_diag", "out of memory");
    }
    d->kernels = k;
    d->n_kernels = n;
    d->call.layer = -1;
    *out = d;
    return TR_OK;
}

void tr_moe_diag_free(tr_moe_diag *d)
{
    if (d) {
        tr_dealloc(d->kernels);
        tr_dealloc(d);
    }
}

void tr_moe_diag_reset(tr_moe_diag *d)
{
    memset(&d->s, 0, sizeof d->s);
    d->events = 0;
    memset(d->tuples, 0, sizeof d->tuples);
    memset(d->kernels, 0, d->n_kernels * sizeof *d->kernels);
    memset(d->signatures, 0, sizeof d->signatures);
    d->call_error_counted = 0;
}

void tr_moe_diag_get(const tr_moe_diag *d, tr_moe_diag_snapshot *copy) { *copy = d->s; }

static unsigned tuple_slot_index(tr_bit_tuple t) { return (t.g - 2u) * 49u + (t.u - 2u) * 7u + (t.d - 2u); }

int tr_moe_diag_tuple(const tr_moe_diag *d, tr_bit_tuple t, tr_moe_tuple_counters *out)
{
    memset(out, 0, sizeof *out);
    if (!tr_bit_tuple_valid(t) || !d->tuples[tuple_slot_index(t)].touched)
        return 0;
    *out = d->tuples[tuple_slot_index(t)].c;
    return 1;
}

int tr_moe_diag_kernel(const tr_moe_diag *d, const char *kernel, tr_moe_kernel_counters *out)
{
    long i = tr_moe_policy_name_index(kernel);
    memset(out, 0, sizeof *out);
    if (i < 0 || !d->kernels[i].touched)
        return 0;
    *out = d->kernels[i].c;
    return 1;
}

/* Widths 2..8 of a mask as a signature slot (bit b-2 for width b). */
static unsigned signature_slot(uint32_t mask) { return (mask >> 2) & (SIGNATURE_SLOTS - 1); }

uint64_t tr_moe_diag_signature_count(const tr_moe_diag *d, const char *signature)
{
    char buf[64];
    for (unsigned s = 1; s < SIGNATURE_SLOTS; s++) {
        tr_moe_bits_signature((uint32_t)s << 2, buf, sizeof buf);
        if (strcmp(buf, signature) == 0)
            return d->signatures[s];
    }
    return 0;
}

static tuple_slot *touch_tuple(tr_moe_diag *d, tr_bit_tuple t)
{
    tuple_slot *s = &d->tuples[tuple_slot_index(t)];
    s->touched = 1;
    return s;
}

static kernel_slot *touch_kernel(tr_moe_diag *d, const char *kernel)
{
    long i = tr_moe_policy_name_index(kernel);
    if (i < 0)
        return NULL;
    d->kernels[i].touched = 1;
    return &d->kernels[i];
}

void tr_moe_diag_begin_call(tr_moe_diag *d, const tr_moe_call_info *info)
{
    d->call = *info;
    d->call_error_counted = 0;
    d->s.dispatch_calls_total += 1;
    d->s.dispatch_rows_total += (uint64_t)info->T * info->k;
}

void tr_moe_diag_end_call(tr_moe_diag *d, int status)
{
    if (status != TR_OK)
        tr_moe_diag_call_failed(d);
    d->call_error_counted = 1;    /* a late report for a closed call is not counted again */
}

void tr_moe_diag_call_failed(tr_moe_diag *d)
{
    if (!d->call_error_counted)
        d->s.dispatch_error_total += 1;
    d->call_error_counted = 1;
}

/* detail made ASCII (bytes outside 0x20..0x7E become '?') and cut to 255 bytes (§6.3). */
static void ascii_detail(char dst[256], const char *src)
{
    size_t n = 0;
    for (; src && src[n] && n < 255; n++) {
        unsigned char c = (unsigned char)src[n];
        dst[n] = c >= 0x20 && c <= 0x7E ? (char)c : '?';
    }
    dst[n] = '\0';
}

/* Replace last_fallback (§6.3); every fallback, error and nan event counts in event_index. */
static void record_event(tr_moe_diag *d, int reason, const tr_bit_tuple *tuple, int32_t layer, const char *detail)
{
    tr_moe_last_fallback *lf = &d->s.last_fallback;
    d->s.has_last_fallback = 1;
    lf->event_index = ++d->events;
    lf->reason_code = reason;
    ascii_detail(lf->detail, detail);
    lf->batch_size = d->call.T;
    lf->top_k = d->call.k;
    lf->num_experts = d->call.E;
    lf->has_tuple = tuple != NULL;
    lf->bit_tuple = tuple ? *tuple : (tr_bit_tuple){0, 0, 0};
    lf->layer = layer;
}

void tr_moe_diag_error_event(tr_moe_diag *d, int reason, const tr_bit_tuple *tuple, const char *detail)
{
    record_event(d, reason, tuple, d->call.layer, detail);
}

int tr_moe_diag_kernel_fallback(tr_moe_diag *d, int reason, tr_bit_tuple tuple, const char *detail, tr_error *err)
{
    if (reason < 1 || reason >= TR_MOE_REASON_COUNT)
        return tr_fail(err, TR_E_INVALID_PARAM, "moe_diag", "kernel fallback reason %d outside 1..8", reason);
    if (!tr_bit_tuple_valid(tuple))
        return tr_fail(err, TR_E_INVALID_PARAM, "moe_diag", "kernel fallback tuple (%u,%u,%u) outside 2..8",
                       tuple.g, tuple.u, tuple.d);
    tuple_slot *t = touch_tuple(d, tuple);
    d->s.kernel_fallback_total += 1;
    d->s.kernel_fallback_reason[reason] += 1;
    t->c.fallbacks += 1;
    t->c.fallback_reason[reason] += 1;
    d->signatures[signature_slot(tuple_mask(tuple))] += 1;
    record_event(d, reason, &tuple, d->call.layer, detail);
    return TR_OK;
}

void tr_moe_diag_nan_event(tr_moe_diag *d, int32_t layer, const tr_bit_tuple *tuple, const char *detail)
{
    d->s.nan_events_total += 1;
    if (tuple && tr_bit_tuple_valid(*tuple))
        touch_tuple(d, *tuple)->c.nan_events += 1;
    record_event(d, TR_MOE_NAN_DETECTED, tuple && tr_bit_tuple_valid(*tuple) ? tuple : NULL, layer, detail);
}

/* A grouping fallback (§3.4): counters, the layer's signature when the call named its tuple map, last_fallback. */
static void grouping_fallback(tr_moe_diag *d, int reason, const char *detail)
{
    d->s.grouping_cpu_fallback_total += 1;
    d->s.grouping_cpu_fallback_reason[reason] += 1;
    if (d->call.tuples)
        d->signatures[signature_slot(d->call.tuples->mask)] += 1;
    record_event(d, reason, NULL, d->call.layer, detail);
}

/* ---- JSON (§6.5) ------------------------------------------------------------------------------------------------- */

static void set_count(json_t *o, const char *key, uint64_t v)
{
    json_object_set_new(o, key, json_integer((json_int_t)v));
}

static void set_reason_counts(json_t *o, const char *prefix, const uint64_t *counts)
{
    for (int r = 1; r < TR_MOE_REASON_COUNT; r++) {
        char key[96];
        snprintf(key, sizeof key, "%s%s", prefix, reason_names[r]);
        set_count(o, key, counts[r]);
    }
}

static json_t *counters_json(const tr_moe_diag_snapshot *s)
{
    json_t *o = json_object();
    set_count(o, "grouping_calls_total", s->grouping_calls_total);
    set_count(o, "grouping_gpu_primary_success_total", s->grouping_gpu_primary_success_total);
    set_count(o, "grouping_cpu_fallback_total", s->grouping_cpu_fallback_total);
    set_count(o, "grouping_host_primary_total", s->grouping_host_primary_total);
    set_count(o, "grouping_error_total", s->grouping_error_total);
    set_reason_counts(o, "grouping_cpu_fallback_reason_", s->grouping_cpu_fallback_reason);
    set_count(o, "dispatch_calls_total", s->dispatch_calls_total);
    set_count(o, "dispatch_rows_total", s->dispatch_rows_total);
    set_count(o, "dispatch_groups_total", s->dispatch_groups_total);
    set_count(o, "dispatch_error_total", s->dispatch_error_total);
    set_count(o, "kernel_fallback_total", s->kernel_fallback_total);
    set_reason_counts(o, "kernel_fallback_reason_", s->kernel_fallback_reason);
    set_count(o, "grouped_attempts_total", s->grouped_attempts_total);
    set_count(o, "grouped_hits_total", s->grouped_hits_total);
    set_count(o, "grouped_attempt_rows_total", s->grouped_attempt_rows_total);
    set_count(o, "grouped_hit_rows_total", s->grouped_hit_rows_total);
    set_count(o, "nan_events_total", s->nan_events_total);
    return o;
}

static json_t *tuple_counters_json(const tr_moe_tuple_counters *c)
{
    json_t *o = json_object();
    set_count(o, "groups", c->groups);
    set_count(o, "rows", c->rows);
    set_count(o, "device_groups", c->device_groups);
    set_count(o, "host_groups", c->host_groups);
    set_count(o, "fallbacks", c->fallbacks);
    set_reason_counts(o, "fallback_reason_", c->fallback_reason);
    set_count(o, "nan_events", c->nan_events);
    return o;
}

/* Tuples "g-u-d" with single-digit widths: ascending string order is slot order. */
static json_t *per_tuple_json(const tr_moe_diag *d)
{
    json_t *o = json_object();
    for (unsigned i = 0; i < TUPLE_SLOTS; i++)
        if (d->tuples[i].touched) {
            char key[16];
            snprintf(key, sizeof key, "%u-%u-%u", 2 + i / 49, 2 + i / 7 % 7, 2 + i % 7);
            json_object_set_new(o, key, tuple_counters_json(&d->tuples[i].c));
        }
    return o;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Kernel names in ascending string order (strcmp). */
static json_t *per_kernel_json(const tr_moe_diag *d)
{
    json_t *o = json_object();
    const char **names = tr_malloc((d->n_kernels + 1) * sizeof *names);
    if (!names) {
        json_decref(o);
        return NULL;
    }
    size_t n = 0;
    for (size_t i = 0; i < d->n_kernels; i++)
        if (d->kernels[i].touched)
            names[n++] = tr_moe_policy_name_at(i).name;
    if (n > 1)
        qsort(names, n, sizeof *names, compare_names);
    for (size_t i = 0; i < n; i++) {
        const kernel_slot *k = &d->kernels[tr_moe_policy_name_index(names[i])];
        json_t *e = json_object();
        set_count(e, "selected", k->c.selected);
        set_count(e, "launched", k->c.launched);
        set_count(e, "rows", k->c.rows);
        json_object_set_new(o, names[i], e);
    }
    tr_dealloc(names);
    return o;
}

/* num / den, null when there were no attempts (§6.4). */
static json_t *rate_json(uint64_t num, uint64_t den)
{
    return den ? json_real((double)num / (double)den) : json_null();
}

static json_t *last_fallback_json(const tr_moe_diag_snapshot *s)
{
    if (!s->has_last_fallback)
        return json_null();
    const tr_moe_last_fallback *lf = &s->last_fallback;
    json_t *o = json_object();
    set_count(o, "event_index", lf->event_index);
    set_count(o, "reason_code", (uint64_t)lf->reason_code);
    json_object_set_new(o, "reason", json_string(tr_moe_reason_name(lf->reason_code)));
    json_object_set_new(o, "detail", json_string(lf->detail));
    set_count(o, "batch_size", lf->batch_size);
    set_count(o, "top_k", lf->top_k);
    set_count(o, "num_experts", lf->num_experts);
    if (lf->has_tuple) {
        json_t *t = json_array();
        json_array_append_new(t, json_integer(lf->bit_tuple.g));
        json_array_append_new(t, json_integer(lf->bit_tuple.u));
        json_array_append_new(t, json_integer(lf->bit_tuple.d));
        json_object_set_new(o, "bit_tuple", t);
    } else
        json_object_set_new(o, "bit_tuple", json_null());
    json_object_set_new(o, "layer", json_integer(lf->layer));
    return o;
}

json_t *tr_moe_diag_json(const tr_moe_diag *d)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "counters", counters_json(&d->s));
    json_object_set_new(o, "per_tuple", per_tuple_json(d));
    json_object_set_new(o, "per_kernel", per_kernel_json(d));
    json_object_set_new(o, "grouped_hit_rate", rate_json(d->s.grouped_hits_total, d->s.grouped_attempts_total));
    json_object_set_new(o, "grouped_row_hit_rate",
                        rate_json(d->s.grouped_hit_rows_total, d->s.grouped_attempt_rows_total));
    json_object_set_new(o, "last_fallback", last_fallback_json(&d->s));
    return o;
}

json_t *tr_moe_diag_signatures_json(const tr_moe_diag *d)
{
    const char *keys[SIGNATURE_SLOTS];
    char bufs[SIGNATURE_SLOTS][32];
    size_t n = 0;
    for (unsigned s = 1; s < SIGNATURE_SLOTS; s++)
        if (d->signatures[s]) {
            tr_moe_bits_signature((uint32_t)s << 2, bufs[n], sizeof bufs[n]);
            keys[n] = bufs[n];
            n++;
        }
    if (n > 1)
        qsort(keys, n, sizeof *keys, compare_names);
    json_t *o = json_object();
    for (size_t i = 0; o && i < n; i++)
        set_count(o, keys[i], tr_moe_diag_signature_count(d, keys[i]));
    return o;
}

/* ==== grouping dispatch (§3.4) =================================================================================== */

static const char *const mode_names[] = {"auto", "device", "host"};

const char *tr_grouping_mode_name(tr_grouping_mode m) { return (unsigned)m < 3 ? mode_names[m] : "unknown"; }

int tr_grouping_mode_parse(const char *name, tr_grouping_mode *out, tr_error *err)
{
    for (int i = 0; i < 3; i++)
        if (strcmp(name, mode_names[i]) == 0) {
            *out = (tr_grouping_mode)i;
            return TR_OK;
        }
    return tr_fail(err, TR_E_INVALID_PARAM, "grouping_mode", "\"%s\" is not one of auto, device, host", name);
}

void tr_grouping_release(tr_grouping *g)
{
    if (!g)
        return;
    tr_dealloc(g->sorted_token_ids);
    tr_dealloc(g->expert_offsets);
    tr_dealloc(g->sorted_probs);
    tr_dealloc(g->inverse);
    memset(g, 0, sizeof *g);
}

/* Arrays of a grouping for N assignments and E experts (never 0-sized allocations). */
static int grouping_alloc(tr_grouping *g, uint32_t N, uint32_t E, tr_error *err)
{
    size_t n = N ? N : 1;
    memset(g, 0, sizeof *g);
    g->sorted_token_ids = tr_malloc(n * sizeof *g->sorted_token_ids);
    g->expert_offsets = tr_malloc(((size_t)E + 1) * sizeof *g->expert_offsets);
    g->sorted_probs = tr_malloc(n * sizeof *g->sorted_probs);
    g->inverse = tr_malloc(n * sizeof *g->inverse);
    if (g->sorted_token_ids && g->expert_offsets && g->sorted_probs && g->inverse)
        return TR_OK;
    tr_grouping_release(g);
    return tr_fail(err, TR_E_NOMEM, "moe_group", "out of memory for %u assignments", N);
}

/* §3.2: stable counting sort by expert id; positions within a segment follow ascending flat index.
 * counts is scratch of E entries. */
static void host_counting_sort(const int32_t *ids, const float *probs, uint32_t N, uint32_t E, uint32_t *counts,
                               tr_grouping *g)
{
    memset(counts, 0, (size_t)E * sizeof *counts);
    for (uint32_t f = 0; f < N; f++)
        counts[ids[f]]++;
    g->expert_offsets[0] = 0;
    for (uint32_t e = 0; e < E; e++)
        g->expert_offsets[e + 1] = g->expert_offsets[e] + counts[e];
    memset(counts, 0, (size_t)E * sizeof *counts);
    for (uint32_t f = 0; f < N; f++) {
        uint32_t pos = g->expert_offsets[ids[f]] + counts[ids[f]]++;
        g->sorted_token_ids[pos] = f;
        g->sorted_probs[pos] = probs[f];
        g->inverse[f] = pos;
    }
}

/* ---- validation: shapes, then ids (§3.3) ------------------------------------------------------------------------- */

typedef struct problem {
    int reason;                 /* TR_MOE_INVALID_SHAPE or TR_MOE_INVALID_EXPERT_ID */
    char detail[512];           /* the §6.3 detail (cut to 255 bytes when recorded) */
} problem;

static void dims_text(const tr_moe_tensor *t, char *buf, size_t size)
{
    size_t n = (size_t)snprintf(buf, size, "[");
    unsigned rank = t->rank < TR_MOE_MAX_RANK ? t->rank : TR_MOE_MAX_RANK;
    for (unsigned i = 0; i < rank && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%llu", i ? ", " : "", (unsigned long long)t->shape[i]);
    if (n < size)
        snprintf(buf + n, size - n, "]");
}

/* "<tensor> shape [<dims>] expected [<dims>]" */
static void shape_problem(problem *p, const char *name, const tr_moe_tensor *t, const char *expected)
{
    char dims[160];
    dims_text(t, dims, sizeof dims);
    p->reason = TR_MOE_INVALID_SHAPE;
    snprintf(p->detail, sizeof p->detail, "%s shape %s expected %s", name, dims, expected);
}

/* Rank 2 for both, equal shapes, k >= 1, E >= 1, N = T·k < 2^32, data present. */
static int check_shapes(const tr_moe_grouping_req *r, problem *p)
{
    const tr_moe_tensor *ids = &r->ids, *pr = &r->probs;
    char want[96];
    if (ids->rank != 2) {
        shape_problem(p, "expert_ids", ids, "[T, k]");
        return 0;
    }
    snprintf(want, sizeof want, "[%llu, %llu]", (unsigned long long)ids->shape[0], (unsigned long long)ids->shape[1]);
    if (pr->rank != 2 || pr->shape[0] != ids->shape[0] || pr->shape[1] != ids->shape[1]) {
        shape_problem(p, "expert_probs", pr, want);
        return 0;
    }
    p->reason = TR_MOE_INVALID_SHAPE;
    uint64_t T = ids->shape[0], k = ids->shape[1];
    if (k == 0)
        snprintf(p->detail, sizeof p->detail, "moe_group: top_k=0, expected >= 1");
    else if (r->num_experts == 0)
        snprintf(p->detail, sizeof p->detail, "moe_group: num_experts=0, expected >= 1");
    else if (T > UINT32_MAX / k)
        snprintf(p->detail, sizeof p->detail, "moe_group: T*k = %llu*%llu exceeds 2^32-1 assignments",
                 (unsigned long long)T, (unsigned long long)k);
    else if (T && (!ids->data || !pr->data))
        snprintf(p->detail, sizeof p->detail, "moe_group: expert_%s has no data", ids->data ? "probs" : "ids");
    else
        return 1;
    return 0;
}

/* The smallest flat index with an id outside [0, E). */
static int check_ids(const int32_t *ids, uint32_t T, uint32_t k, uint32_t E, problem *p)
{
    for (uint64_t f = 0; f < (uint64_t)T * k; f++)
        if (ids[f] < 0 || (uint32_t)ids[f] >= E) {
            p->reason = TR_MOE_INVALID_EXPERT_ID;
            snprintf(p->detail, sizeof p->detail, "flat=%llu token=%llu slot=%llu id=%d num_experts=%u",
                     (unsigned long long)f, (unsigned long long)(f / k), (unsigned long long)(f % k), ids[f], E);
            return 0;
        }
    return 1;
}

/* An error event: grouping_error_total and last_fallback; the error text names the tensor. */
static int grouping_error(tr_moe_diag *d, const problem *p, tr_error *err)
{
    if (d) {
        d->s.grouping_error_total += 1;
        tr_moe_diag_error_event(d, p->reason, NULL, p->detail);
    }
    if (p->reason == TR_MOE_INVALID_EXPERT_ID)
        return tr_fail(err, TR_E_INVALID_EXPERT_ID, "expert_ids", "%s", p->detail);
    return tr_fail(err, TR_E_INVALID_SHAPE, "moe_group", "%s", p->detail);
}

/* ---- device results: verification and canonicalisation (§3.4) ---------------------------------------------------- */

/* Scratch for one device run. */
typedef struct device_run {
    const int32_t *ids;
    const float *probs;
    uint32_t T, k, E, N;
    const char *kernel;
    tr_device_grouping_out out;
    uint32_t *counts;              /* [E] count of e in ids */
    uint32_t *seen;                /* [max(N, T)] per-flat or per-token occurrence counters */
    uint64_t *pairs;               /* [2N] (key << 32 | prob bits) for sorting */
} device_run;

static uint32_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static int verify_fail(char *why, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int verify_fail(char *why, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, size, fmt, ap);
    va_end(ap);
    return 0;
}

/* offsets[0] = 0, non-decreasing, offsets[E] = N. */
static int verify_offsets(const device_run *r, char *why, size_t size)
{
    const uint32_t *o = r->out.offsets;
    if (o[0] != 0)
        return verify_fail(why, size, "offsets[0] = %u, expected 0", o[0]);
    for (uint32_t e = 0; e < r->E; e++)
        if (o[e + 1] < o[e])
            return verify_fail(why, size, "offsets[%u] = %u < offsets[%u] = %u (decreasing)", e + 1, o[e + 1], e,
                               o[e]);
    if (o[r->E] != r->N)
        return verify_fail(why, size, "offsets[%u] = %u, expected N = %u", r->E, o[r->E], r->N);
    return 1;
}

/* Does token t have a slot routed to expert e? */
static int token_has_expert(const device_run *r, uint32_t t, uint32_t e)
{
    for (uint32_t j = 0; j < r->k; j++)
        if ((uint32_t)r->ids[(size_t)t * r->k + j] == e)
            return 1;
    return 0;
}

/* Each segment e holds exactly count(e) entries, all of them assignments to e. */
static int verify_segments(const device_run *r, char *why, size_t size)
{
    const uint32_t *o = r->out.offsets;
    for (uint32_t e = 0; e < r->E; e++) {
        if (o[e + 1] - o[e] != r->counts[e])
            return verify_fail(why, size, "segment %u has %u entries, expected %u", e, o[e + 1] - o[e], r->counts[e]);
        for (uint32_t pos = o[e]; pos < o[e + 1]; pos++) {
            uint32_t v = r->out.entries[pos];
            if (r->out.token_view ? v >= r->T || !token_has_expert(r, v, e)
                                  : v >= r->N || (uint32_t)r->ids[v] != e)
                return verify_fail(why, size, "entry %u of segment %u is %s %u, not an assignment to expert %u", pos,
                                   e, r->out.token_view ? "token" : "flat index", v, e);
        }
    }
    return 1;
}

/* Flat view: every flat index exactly once.  Token view: per segment, each token as often as it routes to e. */
static int verify_permutation(const device_run *r, char *why, size_t size)
{
    const uint32_t *o = r->out.offsets;
    if (!r->out.token_view) {
        memset(r->seen, 0, (size_t)r->N * sizeof *r->seen);
        for (uint32_t pos = 0; pos < r->N; pos++)
            if (r->seen[r->out.entries[pos]]++)
                return verify_fail(why, size, "flat index %u appears twice", r->out.entries[pos]);
        return 1;
    }
    for (uint32_t e = 0; e < r->E; e++) {
        for (uint32_t pos = o[e]; pos < o[e + 1]; pos++)
            r->seen[r->out.entries[pos]]++;
        for (uint32_t pos = o[e]; pos < o[e + 1]; pos++) {
            uint32_t t = r->out.entries[pos], want = 0;
            for (uint32_t j = 0; j < r->k; j++)
                want += (uint32_t)r->ids[(size_t)t * r->k + j] == e;
            if (r->seen[t] != want)
                return verify_fail(why, size, "token %u appears %u times in segment %u, expected %u", t, r->seen[t],
                                   e, want);
        }
        for (uint32_t pos = o[e]; pos < o[e + 1]; pos++)
            r->seen[r->out.entries[pos]] = 0;
    }
    return 1;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Token view: the (token, prob bits) multiset of each segment equals the input's. */
static int verify_token_probs(const device_run *r, const tr_grouping *host, char *why, size_t size)
{
    const uint32_t *o = r->out.offsets;
    for (uint32_t e = 0; e < r->E; e++) {
        uint32_t n = o[e + 1] - o[e];
        uint64_t *got = r->pairs, *want = r->pairs + r->N;
        for (uint32_t i = 0; i < n; i++) {
            uint32_t f = host->sorted_token_ids[o[e] + i];
            got[i] = (uint64_t)r->out.entries[o[e] + i] << 32 | float_bits(r->out.probs[o[e] + i]);
            want[i] = (uint64_t)(f / r->k) << 32 | float_bits(r->probs[f]);
        }
        qsort(got, n, sizeof *got, compare_u64);
        qsort(want, n, sizeof *want, compare_u64);
        for (uint32_t i = 0; i < n; i++)
            if (got[i] != want[i])
                return verify_fail(why, size, "segment %u: token %u has prob bits 0x%08x, expected 0x%08x", e,
                                   (uint32_t)(got[i] >> 32), (uint32_t)got[i], (uint32_t)want[i]);
    }
    return 1;
}

/* probs equal the input probs bit for bit. */
static int verify_probs(const device_run *r, const tr_grouping *host, char *why, size_t size)
{
    if (r->out.token_view)
        return verify_token_probs(r, host, why, size);
    for (uint32_t pos = 0; pos < r->N; pos++) {
        uint32_t f = r->out.entries[pos], got = float_bits(r->out.probs[pos]), want = float_bits(r->probs[f]);
        if (got != want)
            return verify_fail(why, size, "probs[%u] = 0x%08x, expected 0x%08x (flat index %u)", pos, got, want, f);
    }
    return 1;
}

/* Sort each segment by flat index; token view: the k slots of a token are re-derived in ascending slot order. */
static void canonicalise(device_run *r, tr_grouping *g)
{
    const uint32_t *o = r->out.offsets;
    for (uint32_t e = 0; e < r->E; e++) {
        uint32_t n = o[e + 1] - o[e];
        uint32_t *seg = r->out.entries + o[e];
        for (uint32_t i = 0; i < n; i++)
            r->pairs[i] = (uint64_t)seg[i] << 32 | i;
        qsort(r->pairs, n, sizeof *r->pairs, compare_u64);
        uint32_t next_slot = 0;
        for (uint32_t i = 0; i < n; i++) {
            uint32_t v = (uint32_t)(r->pairs[i] >> 32), f = v;
            if (r->out.token_view) {
                next_slot = i > 0 && (uint32_t)(r->pairs[i - 1] >> 32) == v ? next_slot + 1 : 0;
                uint32_t j = 0, seen = 0;
                for (; j < r->k; j++)
                    if ((uint32_t)r->ids[(size_t)v * r->k + j] == e && seen++ == next_slot)
                        break;
                f = v * r->k + j;
            }
            g->sorted_token_ids[o[e] + i] = f;
            g->sorted_probs[o[e] + i] = r->probs[f];
            g->inverse[f] = o[e] + i;
        }
    }
    memcpy(g->expert_offsets, o, ((size_t)r->E + 1) * sizeof *o);
}

/* ---- the dispatcher --------------------------------------------------------------------------------------------- */

static void device_run_free(device_run *r)
{
    tr_dealloc(r->out.entries);
    tr_dealloc(r->out.offsets);
    tr_dealloc(r->out.probs);
    tr_dealloc(r->seen);
    tr_dealloc(r->pairs);
    r->out.entries = r->out.offsets = r->seen = NULL;
    r->out.probs = NULL;
    r->pairs = NULL;
}

static int device_run_alloc(device_run *r, tr_error *err)
{
    size_t n = r->N ? r->N : 1, seen = r->N > r->T ? r->N : r->T;
    r->out.entries = tr_calloc(n, sizeof *r->out.entries);
    r->out.offsets = tr_calloc((size_t)r->E + 1, sizeof *r->out.offsets);
    r->out.probs = tr_calloc(n, sizeof *r->out.probs);
    r->seen = tr_calloc(seen ? seen : 1, sizeof *r->seen);
    r->pairs = tr_calloc(2 * n, sizeof *r->pairs);
    if (r->out.entries && r->out.offsets && r->out.probs && r->seen && r->pairs)
        return TR_OK;
    device_run_free(r);
    return tr_fail(err, TR_E_NOMEM, "moe_group", "out of memory for the device grouping buffers");
}

/* Which path §3.4 takes before running anything. */
typedef enum route { ROUTE_HOST, ROUTE_UNAVAILABLE, ROUTE_NON_DEVICE, ROUTE_DEVICE } route;

static route choose_route(const tr_moe_grouping_req *r)
{
    int inputs_on_device = r->ids.on_device && r->probs.on_device;
    if (r->mode == TR_GROUPING_HOST || (r->mode == TR_GROUPING_AUTO && (!r->device || !inputs_on_device)))
        return ROUTE_HOST;
    if (!r->device)
        return ROUTE_UNAVAILABLE;
    return inputs_on_device ? ROUTE_DEVICE : ROUTE_NON_DEVICE;
}

/* Run the device grouping and check it; 0 with reason/detail filled when it cannot be used. */
static int run_device(device_run *r, const tr_moe_grouping_req *req, const tr_grouping *host, int *reason,
                      char *detail, size_t size)
{
    char why[200] = "";
    tr_device_status st = req->device->run(req->device->user, r->ids, r->probs, r->T, r->k, r->E, &r->out);
    if (st == TR_DEVICE_KERNEL_MISSING) {
        *reason = TR_MOE_KERNEL_NOT_FOUND;
        snprintf(detail, size, "%s -> reference", r->kernel);
        return 0;
    }
    r->out.message[sizeof r->out.message - 1] = '\0';
    if (st != TR_DEVICE_OK)
        snprintf(why, sizeof why, "%s", r->out.message[0] ? r->out.message : "launch failed");
    else if (verify_offsets(r, why, sizeof why) && verify_segments(r, why, sizeof why) &&
             verify_permutation(r, why, sizeof why) && verify_probs(r, host, why, sizeof why))
        return 1;
    *reason = TR_MOE_DEVICE_ERROR;
    snprintf(detail, size, "%s: %s", r->kernel, why);
    return 0;
}

static void set_outcome(tr_grouping_outcome *o, tr_grouping_path path, int reason)
{
    if (o) {
        o->path = path;
        o->reason = reason;
    }
}

/* The grouping has been computed on the host into g; take the route of §3.4 and count it. */
static int take_route(const tr_moe_grouping_req *req, device_run *r, tr_moe_diag *d, tr_grouping *g,
                      tr_grouping_outcome *outcome, tr_error *err)
{
    const char *backend = req->backend ? req->backend : "unknown";
    char detail[256];
    int reason = 0;
    switch (choose_route(req)) {
    case ROUTE_HOST:
        if (d)
            d->s.grouping_host_primary_total += 1;
        set_outcome(outcome, TR_GROUPING_PATH_HOST, 0);
        return TR_OK;
    case ROUTE_UNAVAILABLE:
        reason = TR_MOE_GPU_GROUPING_UNAVAILABLE;
        snprintf(detail, sizeof detail, "device grouping not available on backend %s", backend);
        break;
    case ROUTE_NON_DEVICE:
        reason = TR_MOE_NON_DEVICE_INPUTS;
        snprintf(detail, sizeof detail, "expert_ids=%s expert_probs=%s", req->ids.on_device ? "device" : "host",
                 req->probs.on_device ? "device" : "host");
        break;
    case ROUTE_DEVICE:
        if (device_run_alloc(r, err) != TR_OK)
            return TR_E_NOMEM;
        if (run_device(r, req, g, &reason, detail, sizeof detail)) {
            canonicalise(r, g);
            if (d)
                d->s.grouping_gpu_primary_success_total += 1;
            set_outcome(outcome, TR_GROUPING_PATH_DEVICE, 0);
            return TR_OK;
        }
        break;
    }
    if (d)
        grouping_fallback(d, reason, detail);
    set_outcome(outcome, TR_GROUPING_PATH_FALLBACK, reason);
    return TR_OK;
}

int tr_moe_dispatch_grouping(const tr_moe_grouping_req *req, tr_moe_diag *diag, tr_grouping *out,
                             tr_grouping_outcome *outcome, tr_error *err)
{
    problem p;
    memset(out, 0, sizeof *out);
    set_outcome(outcome, TR_GROUPING_PATH_NONE, 0);
    if (diag)
        diag->s.grouping_calls_total += 1;
    if (!check_shapes(req, &p))
        return grouping_error(diag, &p, err);
    device_run r = {.ids = req->ids.data, .probs = req->probs.data, .T = (uint32_t)req->ids.shape[0],
                    .k = (uint32_t)req->ids.shape[1], .E = req->num_experts,
                    .kernel = req->device && req->device->kernel ? req->device->kernel : "device_grouping"};
    r.N = r.T * r.k;
    if (!check_ids(r.ids, r.T, r.k, r.E, &p))
        return grouping_error(diag, &p, err);
    int rc = grouping_alloc(out, r.N, r.E, err);
    r.counts = rc == TR_OK ? tr_malloc(((size_t)r.E + 1) * sizeof *r.counts) : NULL;
    if (rc == TR_OK && r.counts) {
        out->T = r.T;
        out->k = r.k;
        out->E = r.E;
        out->N = r.N;
        host_counting_sort(r.ids, r.probs, r.N, r.E, r.counts, out);
        rc = take_route(req, &r, diag, out, outcome, err);
    } else if (rc == TR_OK)
        rc = tr_fail(err, TR_E_NOMEM, "moe_group", "out of memory");
    device_run_free(&r);
    tr_dealloc(r.counts);
    if (rc != TR_OK) {
        tr_grouping_release(out);
        if (diag)
            diag->s.grouping_error_total += 1;   /* keeps calls = success + fallback + host + error */
    }
    return rc;
}

/* ==== tuple map (§4.1, §4.2) ===================================================================================== */

void tr_moe_tuple_map_free(tr_moe_tuple_map *m)
{
    if (!m)
        return;
    tr_dealloc(m->tuples);
    tr_dealloc(m->group_of);
    tr_dealloc(m->local_id);
    tr_dealloc(m->members);
    tr_dealloc(m->group_start);
    tr_dealloc(m);
}

static int tuple_map_alloc(tr_moe_tuple_map *m, uint32_t E)
{
    m->tuples = tr_malloc((size_t)E * sizeof *m->tuples);
    m->group_of = tr_malloc((size_t)E * sizeof *m->group_of);
    m->local_id = tr_malloc((size_t)E * sizeof *m->local_id);
    m->members = tr_malloc((size_t)E * sizeof *m->members);
    m->group_start = tr_calloc((size_t)E + 1, sizeof *m->group_start);
    return m->tuples && m->group_of && m->local_id && m->members && m->group_start;
}

/* Groups in order of their smallest member (first appearance), members ascending, local id = rank. */
static void tuple_map_fill(tr_moe_tuple_map *m)
{
    int32_t group_of_tuple[TUPLE_SLOTS];
    memset(group_of_tuple, 0xFF, sizeof group_of_tuple);
    uint32_t size[TUPLE_SLOTS] = {0};
    for (uint32_t e = 0; e < m->E; e++) {
        unsigned t = tuple_slot_index(m->tuples[e]);
        if (group_of_tuple[t] < 0)
            group_of_tuple[t] = (int32_t)m->n_groups++;
        m->group_of[e] = (uint32_t)group_of_tuple[t];
        m->local_id[e] = size[m->group_of[e]]++;
        m->mask |= tuple_mask(m->tuples[e]);
    }
    for (uint32_t gi = 0; gi < m->n_groups; gi++)
        m->group_start[gi + 1] = m->group_start[gi] + size[gi];
    for (uint32_t e = 0; e < m->E; e++)
        m->members[m->group_start[m->group_of[e]] + m->local_id[e]] = e;
}

int tr_moe_tuple_map_new(const tr_bit_tuple *tuples, uint32_t E, tr_moe_tuple_map **out, tr_error *err)
{
    *out = NULL;
    if (E == 0)
        return tr_fail(err, TR_E_INVALID_SHAPE, "tuple_map", "num_experts=0, expected >= 1");
    for (uint32_t e = 0; e < E; e++)
        if (!tr_bit_tuple_valid(tuples[e]))
            return tr_fail(err, TR_E_QBITS, "tuple_map", "expert %u: bit tuple (%u,%u,%u) outside 2..8", e,
                           tuples[e].g, tuples[e].u, tuples[e].d);
    tr_moe_tuple_map *m = tr_calloc(1, sizeof *m);
    if (!m || !tuple_map_alloc(m, E)) {
        tr_moe_tuple_map_free(m);
        return tr_fail(err, TR_E_NOMEM, "tuple_map", "out of memory for %u experts", E);
    }
    m->E = E;
    memcpy(m->tuples, tuples, (size_t)E * sizeof *tuples);
    tuple_map_fill(m);
    *out = m;
    return TR_OK;
}

uint32_t tr_moe_tuple_map_experts(const tr_moe_tuple_map *m) { return m->E; }
uint32_t tr_moe_tuple_map_groups(const tr_moe_tuple_map *m) { return m->n_groups; }

tr_bit_tuple tr_moe_tuple_map_group_tuple(const tr_moe_tuple_map *m, uint32_t group)
{
    return m->tuples[m->members[m->group_start[group]]];
}

const uint32_t *tr_moe_tuple_map_group_members(const tr_moe_tuple_map *m, uint32_t group, uint32_t *count)
{
    *count = m->group_start[group + 1] - m->group_start[group];
    return m->members + m->group_start[group];
}

uint32_t tr_moe_tuple_map_group_of(const tr_moe_tuple_map *m, uint32_t expert) { return m->group_of[expert]; }
uint32_t tr_moe_tuple_map_local_id(const tr_moe_tuple_map *m, uint32_t expert) { return m->local_id[expert]; }
tr_bit_tuple tr_moe_tuple_map_tuple(const tr_moe_tuple_map *m, uint32_t expert) { return m->tuples[expert]; }

int tr_moe_tuple_map_signature(const tr_moe_tuple_map *m, char *buf, size_t size)
{
    return tr_moe_bits_signature(m->mask, buf, size);
}

/* ==== dispatch plan (§4.3–§4.5, §6.4) ============================================================================ */

typedef struct plan_entry {
    tr_bit_tuple tuple;
    uint32_t *members, n_members;
    uint32_t *local_offsets;               /* [n_members + 1] */
    uint32_t *rows, n_rows;
    tr_moe_selection sel;
    tr_moe_path path;
    int grouped, fallback_reason, completed;
} plan_entry;

struct tr_moe_plan {
    size_t n_entries;
    plan_entry *entries;
    uint32_t *rows;                        /* [N]: every entry's rows, concatenated */
    uint32_t *offsets;                     /* local offsets of every entry */
    uint32_t *members;                     /* members of every entry */
    char backend[64];
};

void tr_moe_plan_free(tr_moe_plan *p)
{
    if (!p)
        return;
    tr_dealloc(p->entries);
    tr_dealloc(p->rows);
    tr_dealloc(p->offsets);
    tr_dealloc(p->members);
    tr_dealloc(p);
}

size_t tr_moe_plan_size(const tr_moe_plan *p) { return p->n_entries; }

/* Rows of tuple group gi: the sum of its members' segment lengths. */
static uint32_t group_rows(const tr_moe_tuple_map *m, uint32_t gi, const tr_grouping *g)
{
    uint32_t n = 0;
    for (uint32_t i = m->group_start[gi]; i < m->group_start[gi + 1]; i++)
        n += g->expert_offsets[m->members[i] + 1] - g->expert_offsets[m->members[i]];
    return n;
}

static int plan_alloc(tr_moe_plan *p, const tr_moe_tuple_map *m, const tr_grouping *g)
{
    for (uint32_t gi = 0; gi < m->n_groups; gi++)
        p->n_entries += group_rows(m, gi, g) > 0;
    p->entries = tr_calloc(p->n_entries ? p->n_entries : 1, sizeof *p->entries);
    p->rows = tr_malloc((g->N ? g->N : 1) * sizeof *p->rows);
    p->offsets = tr_malloc(((size_t)m->E + m->n_groups) * sizeof *p->offsets);
    p->members = tr_malloc((size_t)m->E * sizeof *p->members);
    return p->entries && p->rows && p->offsets && p->members;
}

/* One entry per group with rows: the segments of its members in member order (§4.3). */
static void plan_fill(tr_moe_plan *p, const tr_moe_tuple_map *m, const tr_grouping *g)
{
    uint32_t row = 0, off = 0, mem = 0;
    size_t n = 0;
    for (uint32_t gi = 0; gi < m->n_groups; gi++) {
        if (group_rows(m, gi, g) == 0)
            continue;
        plan_entry *e = &p->entries[n++];
        e->tuple = tr_moe_tuple_map_group_tuple(m, gi);
        e->members = p->members + mem;
        e->local_offsets = p->offsets + off;
        e->rows = p->rows + row;
        e->local_offsets[0] = 0;
        for (uint32_t i = m->group_start[gi]; i < m->group_start[gi + 1]; i++) {
            uint32_t x = m->members[i], a = g->expert_offsets[x], b = g->expert_offsets[x + 1];
            memcpy(e->rows + e->n_rows, g->sorted_token_ids + a, (size_t)(b - a) * sizeof *e->rows);
            e->n_rows += b - a;
            e->members[e->n_members++] = x;
            e->local_offsets[e->n_members] = e->n_rows;
        }
        row += e->n_rows;
        off += e->n_members + 1;
        mem += e->n_members;
    }
}

static int bits_supported(uint32_t supported, tr_bit_tuple t)
{
    uint32_t s = supported ? supported : 0x1FCu;    /* default 2..8 */
    return (s & tuple_mask(t)) == tuple_mask(t);
}

/* A per-tuple fallback recorded at plan time: the entry runs on the host. */
static int entry_fallback(plan_entry *e, tr_moe_diag *d, int reason, const char *detail, tr_error *err)
{
    e->fallback_reason = reason;
    return d ? tr_moe_diag_kernel_fallback(d, reason, e->tuple, detail, err) : TR_OK;
}

/* Grouped kernel (§6.4): every device entry is an attempt; absent -> kernel_not_found, the per-row kernel runs. */
static int entry_try_grouped(plan_entry *e, const tr_moe_plan_cfg *cfg, tr_moe_diag *d, tr_error *err)
{
    if (d) {
        d->s.grouped_attempts_total += 1;
        d->s.grouped_attempt_rows_total += e->n_rows;
    }
    if (tr_moe_avail_has(cfg->avail, TR_MOE_KERNEL_GROUPED)) {
        e->grouped = 1;
        return TR_OK;
    }
    char detail[160];
    snprintf(detail, sizeof detail, "%s -> %s", TR_MOE_KERNEL_GROUPED, e->sel.kernel);
    return entry_fallback(e, d, TR_MOE_KERNEL_NOT_FOUND, detail, err);
}

/* Selection and path of one entry (§4.5, §5.3). */
static int entry_decide(plan_entry *e, const tr_moe_plan_cfg *cfg, const char *backend, tr_moe_diag *d,
                        tr_error *err)
{
    const tr_moe_select_cfg *sc = cfg->select;
    char detail[160];
    int device = cfg->avail != NULL, rc;
    e->path = TR_MOE_PATH_HOST;
    if (device && !bits_supported(cfg->supported_bits, e->tuple)) {
        rc = tr_select_moe_kernel(sc, e->n_rows, cfg->use_fp32_acc, &e->tuple, cfg->avail, NULL, &e->sel, err);
        snprintf(detail, sizeof detail, "tuple (%u,%u,%u) not supported by backend %s", e->tuple.g, e->tuple.u,
                 e->tuple.d, backend);
        return rc != TR_OK ? rc : entry_fallback(e, d, TR_MOE_UNSUPPORTED_BIT_TUPLE, detail, err);
    }
    rc = tr_select_moe_kernel(sc, e->n_rows, cfg->use_fp32_acc, &e->tuple, cfg->avail, d, &e->sel, err);
    e->fallback_reason = e->sel.fallback_reason;
    if (rc != TR_OK || !device)
        return rc;
    if (!tr_moe_avail_has(cfg->avail, e->sel.kernel)) {
        snprintf(detail, sizeof detail, "%s -> reference", e->sel.kernel);
        return entry_fallback(e, d, TR_MOE_KERNEL_NOT_FOUND, detail, err);
    }
    e->path = TR_MOE_PATH_DEVICE;
    return sc && sc->use_grouped_kernel ? entry_try_grouped(e, cfg, d, err) : TR_OK;
}

/* Per-tuple and per-kernel counters of a planned entry (§6.1). */
static void entry_count(const plan_entry *e, tr_moe_diag *d)
{
    tuple_slot *t = touch_tuple(d, e->tuple);
    t->c.groups += 1;
    t->c.rows += e->n_rows;
    if (e->path == TR_MOE_PATH_HOST)
        t->c.host_groups += 1;
    kernel_slot *k = touch_kernel(d, e->sel.kernel);
    if (k)
        k->c.selected += 1;
    if (e->grouped)
        touch_kernel(d, TR_MOE_KERNEL_GROUPED)->c.selected += 1;
}

int tr_moe_plan_build(const tr_grouping *g, const tr_moe_tuple_map *map, const tr_moe_plan_cfg *cfg,
                      tr_moe_diag *diag, tr_moe_plan **out, tr_error *err)
{
    tr_moe_select_cfg defaults;
    tr_moe_plan_cfg c = *cfg;
    *out = NULL;
    if (g->E != map->E)
        return tr_fail(err, TR_E_INVALID_SHAPE, "moe_plan", "grouping has %u experts, tuple map %u", g->E, map->E);
    if (!c.select) {
        tr_moe_select_cfg_default(&defaults);
        c.select = &defaults;
    }
    tr_moe_plan *p = tr_calloc(1, sizeof *p);
    if (!p || !plan_alloc(p, map, g)) {
        tr_moe_plan_free(p);
        return tr_fail(err, TR_E_NOMEM, "moe_plan", "out of memory");
    }
    snprintf(p->backend, sizeof p->backend, "%s", c.backend ? c.backend : "unknown");
    plan_fill(p, map, g);
    for (size_t i = 0; i < p->n_entries; i++) {
        int rc = entry_decide(&p->entries[i], &c, p->backend, diag, err);
        if (rc != TR_OK) {                  /* not reachable with a valid map: rows >= 1, widths 2..8 */
            tr_moe_plan_free(p);
            return rc;
        }
        if (diag)
            entry_count(&p->entries[i], diag);
    }
    if (diag)
        diag->s.dispatch_groups_total += p->n_entries;
    *out = p;
    return TR_OK;
}

int tr_moe_plan_entry(const tr_moe_plan *p, size_t i, tr_moe_plan_entry_view *v)
{
    if (i >= p->n_entries)
        return TR_E_INVALID_PARAM;
    const plan_entry *e = &p->entries[i];
    *v = (tr_moe_plan_entry_view){
        .tuple = e->tuple, .members = e->members, .n_members = e->n_members, .local_offsets = e->local_offsets,
        .rows = e->rows, .n_rows = e->n_rows, .kernel = e->sel.kernel, .tile_n = e->sel.tile_n,
        .category = e->sel.category, .specialized = e->sel.specialized, .path = e->path, .grouped = e->grouped,
        .fallback_reason = e->fallback_reason, .completed = e->completed,
    };
    return TR_OK;
}

/* The entry i must be a device entry whose launch has not been reported yet. */
static plan_entry *pending_entry(tr_moe_plan *p, size_t i, tr_error *err)
{
    if (i >= p->n_entries) {
        tr_fail(err, TR_E_INVALID_PARAM, "moe_plan", "entry %zu of %zu", i, p->n_entries);
        return NULL;
    }
    plan_entry *e = &p->entries[i];
    if (e->path != TR_MOE_PATH_DEVICE || e->completed) {
        tr_fail(err, TR_E_INVALID_PARAM, "moe_plan", "entry %zu is %s", i,
                e->completed ? "already completed" : "a host entry");
        return NULL;
    }
    return e;
}

int tr_moe_plan_launched(tr_moe_plan *p, size_t i, tr_moe_diag *d, tr_error *err)
{
    plan_entry *e = pending_entry(p, i, err);
    if (!e)
        return TR_E_INVALID_PARAM;
    e->completed = 1;
    if (!d)
        return TR_OK;
    kernel_slot *k = touch_kernel(d, e->grouped ? TR_MOE_KERNEL_GROUPED : e->sel.kernel);
    if (k) {
        k->c.launched += 1;
        k->c.rows += e->n_rows;
    }
    touch_tuple(d, e->tuple)->c.device_groups += 1;
    if (e->grouped) {
        d->s.grouped_hits_total += 1;
        d->s.grouped_hit_rows_total += e->n_rows;
    }
    return TR_OK;
}

int tr_moe_plan_launch_failed(tr_moe_plan *p, size_t i, const char *why, tr_moe_diag *d, tr_error *err)
{
    plan_entry *e = pending_entry(p, i, err);
    if (!e)
        return TR_E_INVALID_PARAM;
    char detail[256];
    snprintf(detail, sizeof detail, "%s: %s", e->grouped ? TR_MOE_KERNEL_GROUPED : e->sel.kernel,
             why && *why ? why : "launch failed");
    if (e->grouped)
        e->grouped = 0;                    /* §6.4: retry with the selected per-row kernel */
    else {
        e->path = TR_MOE_PATH_HOST;        /* §4.5: this tuple group runs on the host */
        e->completed = 1;
        if (d)
            touch_tuple(d, e->tuple)->c.host_groups += 1;
    }
    return entry_fallback(e, d, TR_MOE_DEVICE_ERROR, detail, err);
}

/* ==== grouped-kernel inputs (§3.5) =============================================================================== */

void tr_grouped_inputs_release(tr_grouped_inputs *in)
{
    if (!in)
        return;
    tr_dealloc(in->row_ids);
    tr_dealloc(in->tokens);
    tr_dealloc(in->local_offsets);
    tr_dealloc(in->sorted_probs);
    tr_dealloc(in->sorted_probs_f16);
    memset(in, 0, sizeof *in);
}

/* The expert whose segment holds sorted position pos (offsets non-decreasing). */
static uint32_t expert_at(const tr_grouping *g, uint32_t pos)
{
    uint32_t lo = 0, hi = g->E;          /* invariant: offsets[lo] <= pos < offsets[hi] */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (g->expert_offsets[mid] <= pos)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Local id of expert x among the entry's members, or -1. */
static long member_rank(const plan_entry *e, uint32_t x)
{
    for (uint32_t l = 0; l < e->n_members; l++)
        if (e->members[l] == x)
            return l;
    return -1;
}

/* Row r belongs to a member and lies inside that member's local segment. */
static int check_row(const plan_entry *e, const tr_grouping *g, uint32_t r, tr_error *err)
{
    uint32_t f = e->rows[r];
    if (f >= g->N)
        return tr_fail(err, TR_E_INVALID_SHAPE, "prepare_grouped_inputs", "row %u: flat index %u >= N = %u", r, f,
                       g->N);
    uint32_t x = expert_at(g, g->inverse[f]);
    long l = member_rank(e, x);
    if (l < 0 || r < e->local_offsets[l] || r >= e->local_offsets[l + 1])
        return tr_fail(err, TR_E_INVALID_SHAPE, "prepare_grouped_inputs",
                       "row %u (flat %u) has expert %u, not a member of tuple group (%u,%u,%u) at that row", r, f, x,
                       e->tuple.g, e->tuple.u, e->tuple.d);
    return TR_OK;
}

static int grouped_inputs_alloc(tr_grouped_inputs *in, uint32_t n, uint32_t m)
{
    size_t rows = n ? n : 1;
    in->row_ids = tr_malloc(rows * sizeof *in->row_ids);
    in->tokens = tr_malloc(rows * sizeof *in->tokens);
    in->local_offsets = tr_malloc(((size_t)m + 1) * sizeof *in->local_offsets);
    in->sorted_probs = tr_malloc(rows * sizeof *in->sorted_probs);
    in->sorted_probs_f16 = tr_malloc(rows * sizeof *in->sorted_probs_f16);
    return in->row_ids && in->tokens && in->local_offsets && in->sorted_probs && in->sorted_probs_f16;
}

int tr_moe_prepare_grouped_inputs(const tr_moe_plan *p, size_t i, const tr_grouping *g, tr_grouped_inputs *out,
                                  tr_error *err)
{
    memset(out, 0, sizeof *out);
    if (i >= p->n_entries)
        return tr_fail(err, TR_E_INVALID_PARAM, "prepare_grouped_inputs", "entry %zu of %zu", i, p->n_entries);
    const plan_entry *e = &p->entries[i];
    for (uint32_t r = 0; r < e->n_rows; r++) {
        int rc = check_row(e, g, r, err);
        if (rc != TR_OK)
            return rc;
    }
    if (!grouped_inputs_alloc(out, e->n_rows, e->n_members)) {
        tr_grouped_inputs_release(out);
        return tr_fail(err, TR_E_NOMEM, "prepare_grouped_inputs", "out of memory");
    }
    out->n_rows = e->n_rows;
    out->n_members = e->n_members;
    memcpy(out->local_offsets, e->local_offsets, ((size_t)e->n_members + 1) * sizeof *out->local_offsets);
    for (uint32_t r = 0; r < e->n_rows; r++) {
        uint32_t f = e->rows[r];
        out->row_ids[r] = r;
        out->tokens[r] = f / g->k;
        out->sorted_probs[r] = g->sorted_probs[g->inverse[f]];
        out->sorted_probs_f16[r] = tr_f32_to_f16(out->sorted_probs[r]);
    }
    return TR_OK;
}
