/*
 * moe.h — the host-side machinery around the MoE kernels (MOE.md §3.4–§7): kernel selection, grouping dispatch,
 * tuple groups and the dispatch plan, dispatch diagnostics and the NaN guard.
 *
 * Everything here is deterministic: results and counters depend only on the inputs, the configuration and the
 * history of calls on the same context, never on timing, threads or hash order.  Contexts (tr_moe_diag,
 * tr_nan_guard) are owned by the engine and used by one thread at a time.
 *
 * How an engine drives one MoE block call (one layer of one forward call):
 *
 *   tr_moe_diag_begin_call(diag, &(tr_moe_call_info){layer, T, k, E, tuple_map});
 *   router -> tr_nan_guard_scan_f32(ROUTER_LOGITS), select, tr_nan_guard_scan_f32(ROUTER_WEIGHTS)
 *   tr_moe_dispatch_grouping(&req, diag, &grouping, &outcome, &err)            (§3.4; errors end the call)
 *   tr_moe_plan_build(&grouping, tuple_map, &plan_cfg, diag, &plan, &err)      (§4.3, §4.5, §5, §6.4)
 *   for each entry i (tr_moe_plan_entry):
 *       path device: [grouped: tr_moe_prepare_grouped_inputs] launch; report tr_moe_plan_launched or
 *                    tr_moe_plan_launch_failed (a failed grouped launch is retried with the per-row kernel; a
 *                    failed per-row launch turns the entry into a host entry: run it on the host);
 *                    NaN guard: tr_nan_guard_unobserved(GATE/UP/SWIGLU, rows), scan DOWN on each row c
 *       path host:   expert_ffn per row, scanning GATE, UP, SWIGLU, DOWN per row
 *   slot-order combine (§2, §4.4), shared add, tr_nan_guard_scan_f32(COMBINE)
 *   tr_nan_guard_moe_end(guard); tr_moe_plan_free(plan); tr_grouping_release(&grouping);
 *   tr_moe_diag_end_call(diag, status_of_the_call);
 *
 * A scan returning TR_E_NAN_DETECTED (abort policy) ends the forward call at once: the engine restores the KV cache
 * length it recorded before the call (the guard's abort hook is the place to do it, see tr_nan_guard_set_abort_hook)
 * and returns the status; outputs of the call are not used.
 */
#ifndef TRELLIS_MOE_H
#define TRELLIS_MOE_H

#include "trellis/ops.h"
#include "trellis/status.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* ==== common vocabulary =========================================================================================== */

/* Reason codes of MOE.md §6.2 (stable numeric values; 0 = none, never recorded). */
typedef enum tr_moe_reason {
    TR_MOE_REASON_NONE = 0,
    TR_MOE_GPU_GROUPING_UNAVAILABLE = 1,
    TR_MOE_NON_DEVICE_INPUTS = 2,
    TR_MOE_INVALID_SHAPE = 3,
    TR_MOE_INVALID_EXPERT_ID = 4,
    TR_MOE_KERNEL_NOT_FOUND = 5,
    TR_MOE_UNSUPPORTED_BIT_TUPLE = 6,
    TR_MOE_NAN_DETECTED = 7,
    TR_MOE_DEVICE_ERROR = 8,
} tr_moe_reason;
#define TR_MOE_REASON_COUNT 9    /* codes 0..8 */

/* "gpu_grouping_unavailable", …; "none" for 0 and "unknown" outside the table. */
const char *tr_moe_reason_name(int code);

/* A bit tuple (gate, up, down): the header bytes of an expert's three projections, each 2..8 (MOE.md §4.1). */
typedef struct tr_bit_tuple {
    uint8_t g, u, d;
} tr_bit_tuple;

/* 1 when all three widths are in 2..8. */
int tr_bit_tuple_valid(tr_bit_tuple t);

/* Bit-set signature of §6.5: the sorted distinct widths written like "[2, 3, 4, 6]" ("[]" for none).
 * mask has bit b set for every width b present (b = 0..31).  Returns the length (snprintf semantics). */
int tr_moe_bits_signature(uint32_t mask, char *buf, size_t size);
/* The signature of one tuple: (6,2,3) -> "[2, 3, 6]". */
int tr_moe_tuple_signature(tr_bit_tuple t, char *buf, size_t size);

/* ==== availability set (names of functions in the loaded Metal libraries, MOE.md §5.1) ============================ */

typedef struct tr_moe_avail tr_moe_avail;

int tr_moe_avail_new(tr_moe_avail **out, tr_error *err);
/* Adds a copy of name (duplicates are ignored).  TR_E_NOMEM on allocation failure (the set is unchanged). */
int tr_moe_avail_add(tr_moe_avail *a, const char *name, tr_error *err);
/* 1 when name is in the set; 0 for a NULL set. */
int tr_moe_avail_has(const tr_moe_avail *a, const char *name);
size_t tr_moe_avail_count(const tr_moe_avail *a);
void tr_moe_avail_free(tr_moe_avail *a);

/* ==== dispatch diagnostics (MOE.md §6) ============================================================================ */

typedef struct tr_moe_diag tr_moe_diag;

/* last_fallback of §6.3. */
typedef struct tr_moe_last_fallback {
    uint64_t event_index;      /* events since reset, from 1 */
    int reason_code;           /* tr_moe_reason */
    char detail[256];          /* ASCII, at most 255 bytes, from the §6.3 templates */
    uint32_t batch_size;       /* T of the current call (0 outside a call) */
    uint32_t top_k;            /* k */
    uint32_t num_experts;      /* E */
    int has_tuple;             /* 0: bit_tuple is null (grouping-level events) */
    tr_bit_tuple bit_tuple;
    int32_t layer;             /* -1 if unknown */
} tr_moe_last_fallback;

/* The global counters of §6.1 (per-reason arrays are indexed by reason code; index 0 stays 0). */
typedef struct tr_moe_diag_snapshot {
    uint64_t grouping_calls_total;
    uint64_t grouping_gpu_primary_success_total;
    uint64_t grouping_cpu_fallback_total;
    uint64_t grouping_host_primary_total;
    uint64_t grouping_error_total;
    uint64_t grouping_cpu_fallback_reason[TR_MOE_REASON_COUNT];
    uint64_t dispatch_calls_total;
    uint64_t dispatch_rows_total;
    uint64_t dispatch_groups_total;
    uint64_t dispatch_error_total;
    uint64_t kernel_fallback_total;
    uint64_t kernel_fallback_reason[TR_MOE_REASON_COUNT];
    uint64_t grouped_attempts_total;
    uint64_t grouped_hits_total;
    uint64_t grouped_attempt_rows_total;   /* rows of the attempts (for grouped_row_hit_rate) */
    uint64_t grouped_hit_rows_total;       /* rows of the hits */
    uint64_t nan_events_total;
    int has_last_fallback;
    tr_moe_last_fallback last_fallback;
} tr_moe_diag_snapshot;

/* Per tuple "g-u-d" (§6.1). */
typedef struct tr_moe_tuple_counters {
    uint64_t groups, rows, device_groups, host_groups, fallbacks;
    uint64_t fallback_reason[TR_MOE_REASON_COUNT];
    uint64_t nan_events;
} tr_moe_tuple_counters;

/* Per kernel name (§6.1): selected by the policy, launched on a device, rows of those launches. */
typedef struct tr_moe_kernel_counters {
    uint64_t selected, launched, rows;
} tr_moe_kernel_counters;

typedef struct tr_moe_tuple_map tr_moe_tuple_map;

/* What one MoE block call is about; kept until the next begin_call so late events (NaN) still see it. */
typedef struct tr_moe_call_info {
    int32_t layer;                      /* decoder layer, -1 if unknown */
    uint32_t T, k, E;                   /* tokens, slots per token, experts */
    const tr_moe_tuple_map *tuples;     /* the layer's tuple map (for grouping-level signatures), or NULL */
} tr_moe_call_info;

int tr_moe_diag_new(tr_moe_diag **out, tr_error *err);
void tr_moe_diag_free(tr_moe_diag *d);
/* All counters to 0, last_fallback to null, event_index to 0 (§6.5). */
void tr_moe_diag_reset(tr_moe_diag *d);
void tr_moe_diag_get(const tr_moe_diag *d, tr_moe_diag_snapshot *copy);
/* Copy of one tuple's / kernel's counters; returns 1 when it was touched since reset (else *out is all 0). */
int tr_moe_diag_tuple(const tr_moe_diag *d, tr_bit_tuple t, tr_moe_tuple_counters *out);
int tr_moe_diag_kernel(const tr_moe_diag *d, const char *kernel, tr_moe_kernel_counters *out);
/* Fallbacks per bit-set signature (§6.5, the bench's fallback_reasons); 0 when none. */
uint64_t tr_moe_diag_signature_count(const tr_moe_diag *d, const char *signature);

/* Start a MoE block call: dispatch_calls_total += 1, dispatch_rows_total += T·k. */
void tr_moe_diag_begin_call(tr_moe_diag *d, const tr_moe_call_info *info);
/* End it with the call's status: dispatch_error_total += 1 when status != TR_OK, unless already counted for this
 * call (an abort by the NaN guard counts at once). */
void tr_moe_diag_end_call(tr_moe_diag *d, int status);

/* Record a kernel fallback (§4.5, §5.3, §6.4): kernel_fallback_total, kernel_fallback_reason_<code>, the tuple's
 * fallbacks and fallback_reason_<code>, its signature, and last_fallback (detail copied, made ASCII, ≤ 255 bytes).
 * TR_E_INVALID_PARAM for a reason outside 1..8 or a tuple outside 2..8 (nothing recorded). */
int tr_moe_diag_kernel_fallback(tr_moe_diag *d, int reason, tr_bit_tuple tuple, const char *detail, tr_error *err);
/* Record the NaN event of one MoE call (§7.6): nan_events_total, the tuple's nan_events when tuple != NULL,
 * last_fallback = nan_detected with detail.  Used by the NaN guard. */
void tr_moe_diag_nan_event(tr_moe_diag *d, int32_t layer, const tr_bit_tuple *tuple, const char *detail);
/* Record an error event (invalid_shape, invalid_expert_id, §6.2 "error"): last_fallback only; the counters that
 * count errors belong to the operation (grouping_error_total, dispatch_error_total). */
void tr_moe_diag_error_event(tr_moe_diag *d, int reason, const tr_bit_tuple *tuple, const char *detail);
/* The current call failed (NaN abort): dispatch_error_total += 1 once per call. */
void tr_moe_diag_call_failed(tr_moe_diag *d);

/* {"counters", "per_tuple", "per_kernel", "grouped_hit_rate", "grouped_row_hit_rate", "last_fallback"} (§6.5);
 * tuples and kernels in ascending string order.  Take tr_json_mark() before the call and check allocation failures
 * with tr_json_dumps (jsonio.h); NULL only when the root object cannot be allocated. */
json_t *tr_moe_diag_json(const tr_moe_diag *d);
/* {"[2, 3, 6]": count, …} in ascending string order (the bench's fallback_reasons). */
json_t *tr_moe_diag_signatures_json(const tr_moe_diag *d);

/* ==== kernel selection (MOE.md §5) ================================================================================ */

typedef struct tr_moe_profile {
    const char *name;                  /* "M4 Max", … */
    uint32_t decode_max, prefill4_max, base_max, large_batch_min, large_tile;
} tr_moe_profile;

/* Tile sizes of §5.2 other than the profile's large tile. */
#define TR_MOE_TILE_DECODE 64u
#define TR_MOE_TILE_PREFILL4 64u
#define TR_MOE_TILE_BASE 64u

size_t tr_moe_profile_count(void);                       /* 6 */
const tr_moe_profile *tr_moe_profile_at(size_t i);       /* table order; NULL past the end */
/* The startup invariant of §5.2 for every profile: decode_max = 1 < prefill4_max < base_max and
 * large_batch_min = base_max + 1.  TR_E_INTERNAL naming the profile and the broken relation. */
int tr_moe_profiles_check(tr_error *err);
/* Profile choice (§5.2): explicit name (ASCII case-insensitive; unknown -> TR_E_INVALID_PARAM listing the names),
 * else the first profile whose name is a substring of device_name, longest names first (ties in table order),
 * else "M4 Max" with *defaulted = 1 (also when device_name is NULL: host-only backends). */
int tr_moe_profile_choose(const char *explicit_name, const char *device_name, const tr_moe_profile **out,
                          int *defaulted, tr_error *err);

typedef enum tr_moe_category {
    TR_MOE_CAT_DECODE = 0,
    TR_MOE_CAT_SMALL_PREFILL = 1,
    TR_MOE_CAT_MEDIUM_PREFILL = 2,
    TR_MOE_CAT_LARGE_PREFILL = 3,
} tr_moe_category;
const char *tr_moe_category_name(tr_moe_category c);    /* "decode", "small_prefill", … */

/* --moe-fp32-acc */
enum { TR_MOE_FP32_AUTO = -1, TR_MOE_FP32_OFF = 0, TR_MOE_FP32_ON = 1 };

/* The selection configuration (§5.1). */
typedef struct tr_moe_select_cfg {
    const tr_moe_profile *profile;     /* NULL means "M4 Max" */
    int profile_defaulted;
    int fp32_acc;                      /* TR_MOE_FP32_AUTO (H >= 1024), _OFF, _ON */
    int use_decode_gemv;               /* default 1 */
    int use_grouped_kernel;            /* default 0 */
} tr_moe_select_cfg;

/* M4 Max (defaulted), fp32 auto, decode GEMV on, grouped kernel off. */
void tr_moe_select_cfg_default(tr_moe_select_cfg *c);
/* use_fp32_acc for a model of hidden size H: the override, else H >= 1024. */
int tr_moe_use_fp32_acc(const tr_moe_select_cfg *c, uint32_t hidden_dim);

typedef struct tr_moe_selection {
    const char *kernel;                /* static string */
    uint32_t tile_n;
    tr_moe_category category;
    int specialized;                   /* a tuple-specialized decode kernel was chosen */
    int fallback_reason;               /* TR_MOE_KERNEL_NOT_FOUND when a dominant tuple's kernel was absent */
    char fallback_detail[128];         /* "<wanted> -> moe_trellis_swiglu_decode" when it was */
} tr_moe_selection;

/* The §5.3 algorithm for n rows of one dispatch.  tuple may be NULL (no tuple-specialized kernel is considered);
 * avail NULL = host-only backend (generic names, nothing recorded).  The specialized-kernel miss of the three
 * dominant tuples is returned in sel and, when diag != NULL, recorded there as a kernel fallback of the tuple.
 * n = 0 -> TR_E_INVALID_SHAPE (an invalid_shape error event in diag). */
int tr_select_moe_kernel(const tr_moe_select_cfg *cfg, uint32_t n, int use_fp32_acc, const tr_bit_tuple *tuple,
                         const tr_moe_avail *avail, tr_moe_diag *diag, tr_moe_selection *sel, tr_error *err);

/* recommend_kernel(n, use_fp32_acc, tuple?) of §5.4 as a JSON object with its keys in spec order.
 * NULL with err on n = 0 (TR_E_INVALID_SHAPE) or when the object cannot be allocated (TR_E_NOMEM). */
json_t *tr_moe_recommend_kernel(const tr_moe_select_cfg *cfg, const tr_moe_avail *avail, uint32_t n,
                                int use_fp32_acc, const tr_bit_tuple *tuple, tr_error *err);
/* get_kernel_info() of §5.4 (avail NULL: every "available" member false). */
json_t *tr_moe_kernel_info(const tr_moe_select_cfg *cfg, const tr_moe_avail *avail);

/* The specialized decode kernel name of a tuple ("moe_trellis_swiglu_decode_6_2_3"), NULL outside (2..8)^3. */
const char *tr_moe_specialized_name(tr_bit_tuple t);
/* 1 for the dominant tuples (6,2,3), (6,3,4), (6,2,4) of §5.4. */
int tr_moe_tuple_is_dominant(tr_bit_tuple t);

/* Every policy name of §5.5: the six generic names, the GEMV and grouped names, then the 343 tuple names. */
typedef struct tr_moe_policy_name {
    const char *name;
    int generic;               /* returned without gating: a missing one fails `trellis symbols` */
    int gated;                 /* chosen only when available */
    int listed_when_missing;   /* generic, GEMV, grouped and the three dominant tuples */
} tr_moe_policy_name;
size_t tr_moe_policy_name_count(void);
/* The i-th policy name (name NULL past the end). */
tr_moe_policy_name tr_moe_policy_name_at(size_t i);
/* Index of name in the policy list, -1 if it is not a policy name. */
long tr_moe_policy_name_index(const char *name);

#define TR_MOE_KERNEL_DECODE "moe_trellis_swiglu_decode"
#define TR_MOE_KERNEL_DECODE_GEMV "moe_trellis_swiglu_decode_gemv"
#define TR_MOE_KERNEL_PREFILL4 "moe_trellis_swiglu_prefill4"
#define TR_MOE_KERNEL_PREFILL4_FP32 "moe_trellis_swiglu_prefill4_fp32acc"
#define TR_MOE_KERNEL_BASE "moe_trellis_swiglu"
#define TR_MOE_KERNEL_BASE_FP32 "moe_trellis_swiglu_fp32acc"
#define TR_MOE_KERNEL_LARGE_BATCH "moe_trellis_swiglu_large_batch"
#define TR_MOE_KERNEL_GROUPED "moe_trellis_swiglu_grouped"

/* ==== grouping dispatch (MOE.md §3.4) ============================================================================= */

typedef enum tr_grouping_mode { TR_GROUPING_AUTO = 0, TR_GROUPING_DEVICE = 1, TR_GROUPING_HOST = 2 } tr_grouping_mode;
const char *tr_grouping_mode_name(tr_grouping_mode m);
/* "auto" | "device" | "host"; TR_E_INVALID_PARAM otherwise. */
int tr_grouping_mode_parse(const char *name, tr_grouping_mode *out, tr_error *err);

#define TR_MOE_MAX_RANK 8
/* A tensor as the dispatcher sees it: host-readable data (unified memory) plus where it lives. */
typedef struct tr_moe_tensor {
    const void *data;
    unsigned rank;                      /* 0..TR_MOE_MAX_RANK */
    uint64_t shape[TR_MOE_MAX_RANK];
    int on_device;                      /* 1: device-resident */
} tr_moe_tensor;

/* What a device grouping kernel returns. */
typedef enum tr_device_status {
    TR_DEVICE_OK = 0,
    TR_DEVICE_KERNEL_MISSING = 1,       /* the kernel is not in the library */
    TR_DEVICE_LAUNCH_FAILED = 2,        /* launch or command-buffer failure */
} tr_device_status;

/* Output buffers of a device grouping run (zero-filled by the dispatcher before the call). */
typedef struct tr_device_grouping_out {
    uint32_t *entries;                  /* [N]: flat indices f, or tokens f/k when token_view */
    uint32_t *offsets;                  /* [E+1] */
    float *probs;                       /* [N] */
    int token_view;                     /* set by the device when entries are tokens */
    char message[128];                  /* a failure's status text (ASCII) */
} tr_device_grouping_out;

/* A backend's device grouping (tests plug in fakes that fail or return wrong results). */
typedef struct tr_device_grouping {
    const char *kernel;                 /* symbol name used in details, e.g. "moe_gpu_sort" */
    tr_device_status (*run)(void *user, const int32_t *ids, const float *probs, uint32_t T, uint32_t k, uint32_t E,
                            tr_device_grouping_out *out);
    void *user;
} tr_device_grouping;

typedef struct tr_moe_grouping_req {
    tr_moe_tensor ids;                  /* i32 [T][k] */
    tr_moe_tensor probs;                /* f32 [T][k] */
    uint32_t num_experts;               /* E */
    tr_grouping_mode mode;
    const char *backend;                /* backend name for details ("cpu", "metal"); NULL reads "unknown" */
    const tr_device_grouping *device;   /* NULL: the backend has no device grouping */
} tr_moe_grouping_req;

typedef enum tr_grouping_path {
    TR_GROUPING_PATH_NONE = 0,          /* error */
    TR_GROUPING_PATH_DEVICE = 1,        /* grouping_gpu_primary_success */
    TR_GROUPING_PATH_HOST = 2,          /* grouping_host_primary */
    TR_GROUPING_PATH_FALLBACK = 3,      /* grouping_cpu_fallback */
} tr_grouping_path;

typedef struct tr_grouping_outcome {
    tr_grouping_path path;
    int reason;                         /* fallback or error reason, 0 if none */
} tr_grouping_outcome;

/* The §3.4 dispatcher.  On success *out holds a grouping allocated here (free with tr_grouping_release) that is
 * bit-identical whichever path served it.  On error (TR_E_INVALID_SHAPE, TR_E_INVALID_EXPERT_ID, TR_E_NOMEM) *out is
 * zeroed and nothing is allocated.  diag may be NULL; outcome may be NULL. */
int tr_moe_dispatch_grouping(const tr_moe_grouping_req *req, tr_moe_diag *diag, tr_grouping *out,
                             tr_grouping_outcome *outcome, tr_error *err);
void tr_grouping_release(tr_grouping *g);

/* ==== tuple map and dispatch plan (MOE.md §4) ===================================================================== */

/* Built once per layer: tuples[e] for e = 0..E-1, each width 2..8 (else TR_E_QBITS naming the expert). */
int tr_moe_tuple_map_new(const tr_bit_tuple *tuples, uint32_t E, tr_moe_tuple_map **out, tr_error *err);
void tr_moe_tuple_map_free(tr_moe_tuple_map *m);
uint32_t tr_moe_tuple_map_experts(const tr_moe_tuple_map *m);
/* Groups of equal tuples ordered by smallest member id (§4.2). */
uint32_t tr_moe_tuple_map_groups(const tr_moe_tuple_map *m);
tr_bit_tuple tr_moe_tuple_map_group_tuple(const tr_moe_tuple_map *m, uint32_t group);
/* Members of a group, ascending; a member's local id is its index here. */
const uint32_t *tr_moe_tuple_map_group_members(const tr_moe_tuple_map *m, uint32_t group, uint32_t *count);
uint32_t tr_moe_tuple_map_group_of(const tr_moe_tuple_map *m, uint32_t expert);
uint32_t tr_moe_tuple_map_local_id(const tr_moe_tuple_map *m, uint32_t expert);
tr_bit_tuple tr_moe_tuple_map_tuple(const tr_moe_tuple_map *m, uint32_t expert);
/* Signature of all experts of the layer (§6.5), e.g. "[2, 3, 4, 6]". */
int tr_moe_tuple_map_signature(const tr_moe_tuple_map *m, char *buf, size_t size);

typedef enum tr_moe_path { TR_MOE_PATH_DEVICE = 0, TR_MOE_PATH_HOST = 1 } tr_moe_path;

typedef struct tr_moe_plan_cfg {
    const tr_moe_select_cfg *select;    /* NULL: tr_moe_select_cfg_default */
    int use_fp32_acc;                   /* tr_moe_use_fp32_acc(select, H) */
    const tr_moe_avail *avail;          /* NULL: host-only backend (every entry on the host, nothing recorded) */
    uint32_t supported_bits;            /* bit b set = width b runs on the device; 0 = the default 2..8 */
    const char *backend;                /* backend name for details; NULL reads "unknown" */
} tr_moe_plan_cfg;

typedef struct tr_moe_plan tr_moe_plan;

/* Build the plan of one MoE call from its grouping (§4.3): one entry per tuple group with rows, in group order.
 * Records selection, per-tuple fallbacks (§4.5) and grouped attempts (§6.4) in diag (may be NULL).
 * TR_E_INVALID_SHAPE when the map's E differs from the grouping's, TR_E_NOMEM. */
int tr_moe_plan_build(const tr_grouping *g, const tr_moe_tuple_map *map, const tr_moe_plan_cfg *cfg,
                      tr_moe_diag *diag, tr_moe_plan **out, tr_error *err);
void tr_moe_plan_free(tr_moe_plan *p);
size_t tr_moe_plan_size(const tr_moe_plan *p);

/* Read-only view of one plan entry (valid while the plan lives). */
typedef struct tr_moe_plan_entry_view {
    tr_bit_tuple tuple;
    const uint32_t *members;            /* [n_members] expert ids, ascending (local id = index) */
    uint32_t n_members;
    const uint32_t *local_offsets;      /* [n_members + 1] */
    const uint32_t *rows;               /* [n_rows] flat indices, ascending by (local id, flat index) */
    uint32_t n_rows;
    const char *kernel;                 /* the per-row kernel of §5.3 */
    uint32_t tile_n;
    tr_moe_category category;
    int specialized;
    tr_moe_path path;
    int grouped;                        /* served (or to be served) by the grouped kernel */
    int fallback_reason;                /* the entry's last fallback reason, 0 if none */
    int completed;                      /* its launch was reported (tr_moe_plan_launched / _launch_failed) */
} tr_moe_plan_entry_view;
int tr_moe_plan_entry(const tr_moe_plan *p, size_t i, tr_moe_plan_entry_view *out);

/* Execution feedback for a device entry: its current launch (grouped kernel when entry.grouped, else the per-row
 * kernel) succeeded: per-kernel launched/rows, the tuple's device_groups, a grouped hit.  TR_E_INVALID_PARAM when
 * the entry is not a pending device entry. */
int tr_moe_plan_launched(tr_moe_plan *p, size_t i, tr_moe_diag *diag, tr_error *err);
/* Its current launch failed (why: the backend's status text): a grouped launch falls back to the per-row kernel
 * (entry.grouped = 0, still a device entry); a per-row launch makes the entry a host entry (device_error, §4.5). */
int tr_moe_plan_launch_failed(tr_moe_plan *p, size_t i, const char *why, tr_moe_diag *diag, tr_error *err);

/* Inputs of the grouped kernel for plan entry i (§3.5). */
typedef struct tr_grouped_inputs {
    uint32_t n_rows, n_members;
    uint32_t *row_ids;                  /* [n]: r, the kernel's sorted_token_ids binding */
    uint32_t *tokens;                   /* [n]: token(rows[r]), A[r] = x[tokens[r]] */
    uint32_t *local_offsets;            /* [m+1] */
    float *sorted_probs;                /* [n]: prob of row r */
    uint16_t *sorted_probs_f16;         /* [n]: RNh of it (exact for f16-exact probabilities) */
} tr_grouped_inputs;
/* g must be the grouping the plan was built from: a row whose expert is not a member of the entry (or lies outside
 * its member's segment) is TR_E_INVALID_SHAPE. */
int tr_moe_prepare_grouped_inputs(const tr_moe_plan *p, size_t i, const tr_grouping *g, tr_grouped_inputs *out,
                                  tr_error *err);
void tr_grouped_inputs_release(tr_grouped_inputs *in);

/* ==== NaN guard (MOE.md §7) ======================================================================================= */

typedef enum tr_nan_policy { TR_NAN_OFF = 0, TR_NAN_REPORT = 1, TR_NAN_ZERO = 2, TR_NAN_ABORT = 3 } tr_nan_policy;
const char *tr_nan_policy_name(tr_nan_policy p);
int tr_nan_policy_parse(const char *name, tr_nan_policy *out, tr_error *err);

/* Stages and their codes (§7.1). */
typedef enum tr_nan_stage {
    TR_NAN_STAGE_ROUTER = 0,
    TR_NAN_STAGE_GATE = 1,
    TR_NAN_STAGE_UP = 2,
    TR_NAN_STAGE_SWIGLU = 3,
    TR_NAN_STAGE_DOWN = 4,
    TR_NAN_STAGE_COMBINE = 5,
    TR_NAN_STAGE_ATTENTION = 6,
    TR_NAN_STAGE_NORM = 7,
    TR_NAN_STAGE_LOGITS = 8,
} tr_nan_stage;
#define TR_NAN_STAGE_COUNT 9
const char *tr_nan_stage_name(tr_nan_stage s);

/* Scan sites: a stage plus the position within the layer of §7.2 (in tenths: 2.1 -> 21). */
typedef enum tr_nan_site {
    TR_NAN_SITE_INPUT_NORM,        /* norm 1 */
    TR_NAN_SITE_Q_A_NORM,          /* norm 2.1 */
    TR_NAN_SITE_KV_A_NORM,         /* norm 2.2 */
    TR_NAN_SITE_Q_HEAD_NORM,       /* norm 2.3 */
    TR_NAN_SITE_K_HEAD_NORM,       /* norm 2.4 */
    TR_NAN_SITE_ATTENTION,         /* attention 3 */
    TR_NAN_SITE_POST_ATTN_NORM,    /* norm 4 */
    TR_NAN_SITE_ROUTER_LOGITS,     /* router 5.1 */
    TR_NAN_SITE_ROUTER_WEIGHTS,    /* router 5.2 */
    TR_NAN_SITE_GATE,              /* gate 6 */
    TR_NAN_SITE_UP,                /* up 7 */
    TR_NAN_SITE_SWIGLU,            /* swiglu 8 */
    TR_NAN_SITE_DOWN,              /* down 9 */
    TR_NAN_SITE_COMBINE,           /* combine 10 */
    TR_NAN_SITE_FINAL_NORM,        /* norm 1 after the last layer (layer = num_layers) */
    TR_NAN_SITE_LOGITS,            /* logits 2 after the last layer (layer = num_layers) */
} tr_nan_site;
#define TR_NAN_SITE_COUNT 16
tr_nan_stage tr_nan_site_stage(tr_nan_site s);
unsigned tr_nan_site_position(tr_nan_site s);      /* tenths */

/* Where a scanned tensor [rows][cols] sits: row r is token first_token + r. */
typedef struct tr_nan_where {
    tr_nan_site site;
    int32_t layer;                 /* decoder layer; num_layers for the final norm and logits */
    uint32_t first_token;          /* token of row 0 */
    uint32_t slot;                 /* j for a routed-expert row, k for the shared expert, 0 otherwise */
    int32_t expert;                /* routed id, E for the shared expert, -1 for dense FFN and non-expert stages */
    const tr_bit_tuple *tuple;     /* routed experts: the expert's tuple (per-tuple nan_events), else NULL */
} tr_nan_where;

typedef struct tr_nan_stage_stats {
    uint64_t nan_count, pos_inf_count, neg_inf_count;
    uint64_t scans;                /* tensors scanned */
    uint64_t unobserved;           /* tensors that could not be scanned (fused device paths, §7.5) */
} tr_nan_stage_stats;

/* §7.3, cumulative until reset.  The first_* members are meaningful when has_first. */
typedef struct tr_nan_stats {
    int nan_detected, inf_detected;
    int has_first;
    tr_nan_stage first_stage;
    int32_t first_layer, first_expert;
    uint32_t first_token, first_slot;
    uint64_t first_index;
    tr_nonfinite first_kind;
    uint64_t first_call;           /* forward calls since reset, from 0 */
    unsigned first_position;       /* tenths (§7.2) */
    tr_nan_stage_stats stage[TR_NAN_STAGE_COUNT];
} tr_nan_stats;

typedef struct tr_nan_guard tr_nan_guard;

/* diag (may be NULL) receives the §7.6 events. */
int tr_nan_guard_new(tr_nan_policy policy, tr_moe_diag *diag, tr_nan_guard **out, tr_error *err);
void tr_nan_guard_free(tr_nan_guard *g);
tr_nan_policy tr_nan_guard_policy(const tr_nan_guard *g);
/* Called once per forward call in which the abort fires, before the scan returns TR_E_NAN_DETECTED: the engine
 * restores the KV cache length it recorded before the call there. */
void tr_nan_guard_set_abort_hook(tr_nan_guard *g, void (*hook)(void *user), void *user);
/* A new forward call: call index += 1 (the first call after reset is call 0); ends a pending MoE call. */
void tr_nan_guard_begin_forward(tr_nan_guard *g);
/* End of one MoE block call: its first detection (by the §7.2 key) becomes one diagnostics event (§7.6). */
void tr_nan_guard_moe_end(tr_nan_guard *g);
/* Scan a tensor (§7.2, §7.4): counts per stage, the canonical first key, zero policy (non-finite -> +0.0), abort
 * policy (the whole tensor is scanned, then TR_E_NAN_DETECTED).  Policy off: nothing.  Other errors:
 * TR_E_INVALID_PARAM for a bad site. */
int tr_nan_guard_scan_f32(tr_nan_guard *g, const tr_nan_where *w, float *data, uint32_t rows, uint32_t cols,
                          tr_error *err);
int tr_nan_guard_scan_f16(tr_nan_guard *g, const tr_nan_where *w, uint16_t *data, uint32_t rows, uint32_t cols,
                          tr_error *err);
/* tensors of a stage that a fused device kernel did not materialise (§7.5). */
void tr_nan_guard_unobserved(tr_nan_guard *g, tr_nan_stage stage, uint64_t tensors);
void tr_nan_guard_get(const tr_nan_guard *g, tr_nan_stats *out);
/* Statistics to their initial state, call index restarts (the policy and hook stay). */
void tr_nan_guard_reset(tr_nan_guard *g);
/* {"policy", "nan_detected", "inf_detected", "first_stage", …, "stages": {"router": {…}, …}} (null firsts until
 * the first detection).  Allocation failures: as tr_moe_diag_json. */
json_t *tr_nan_stats_json(const tr_nan_stats *s, tr_nan_policy policy);
const char *tr_nonfinite_name(tr_nonfinite k);     /* "nan", "+inf", "-inf" */

#endif
