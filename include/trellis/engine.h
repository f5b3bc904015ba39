/*
 * engine.h — running a loaded model (ENGINE.md §3, §7 test hooks): a session is one sequence with its KV cache, a
 * backend, and the options of ENGINE.md §8 (MLA form, router mode, NaN policy, MoE dispatch switches).
 *
 *     tr_model *m;      tr_model_load(dir, &mopt, &m, &err);
 *     tr_session *s;    tr_session_options o; tr_session_options_default(&o); tr_session_new(m, &o, &s, &err);
 *     float *logits = …[T][V];
 *     tr_session_eval(s, ids, T, TR_LOGITS_ALL, logits, &err);     (prefill; then T = 1 calls decode)
 *
 * Tokens carry absolute positions: p = tokens already in the cache + offset in the call.  Results on the `ref`
 * backend do not depend on the thread count; the `cpu` backend is bitwise equal to `ref`.
 */
#ifndef TRELLIS_ENGINE_H
#define TRELLIS_ENGINE_H

#include "trellis/model.h"
#include "trellis/moe.h"
#include "trellis/status.h"

#include <stdint.h>

typedef enum tr_mla_form { TR_MLA_AUTO = 0, TR_MLA_EXPANDED = 1, TR_MLA_ABSORBED = 2 } tr_mla_form;
const char *tr_mla_form_name(tr_mla_form f);
int tr_mla_form_parse(const char *name, tr_mla_form *out);   /* "auto" | "expanded" | "absorbed"; 0 or -1 */

typedef struct tr_session_options {
    const char *backend;              /* "ref" | "cpu"; NULL = "cpu" */
    int threads;                      /* 0 = online CPUs */
    uint32_t ctx_size;                /* 0 = min(4096, max_position_embeddings) */
    tr_mla_form mla_form;
    int router_mode;                  /* -1 = the architecture's default, else a tr_router_mode */
    tr_nan_policy nan_policy;         /* default report */
    int moe_fp32_acc;                 /* TR_MOE_FP32_AUTO | _OFF | _ON */
    const char *device_profile;       /* NULL: chosen from the device name */
    int decode_gemv;                  /* --decode-gemv (default 1) */
    int grouped_kernel;               /* --grouped-kernel (default 0) */
    tr_grouping_mode grouping_mode;   /* default auto */
    int residual_bf16;                /* round each decoder layer's output residual to bf16 (RNE): the KLD noise
                                         floor of ENGINE.md §6 */
} tr_session_options;

void tr_session_options_default(tr_session_options *o);

/* One routing decision, as the trace hook sees it. */
typedef struct tr_route_info {
    uint32_t layer, pos;              /* decoder layer, absolute position */
    uint32_t k;
    const int32_t *ids;               /* [k], slot order */
    const float *weights;             /* [k] */
    double margin;                    /* k-th minus (k+1)-th selection score after group masking (+inf if none) */
    double group_margin;              /* n_group > 1: topk_group-th minus next group score; NAN otherwise */
    int overridden;                   /* the route came from tr_session_override_route */
} tr_route_info;

typedef struct tr_trace_hooks {
    /* Hidden state index i (ENGINE.md §7: 0 = embeddings, 1..L-1 = residual after layer i-1, L = final RMSNorm
     * output) of the call's tokens: h [T][D], row t at position pos0 + t. */
    void (*hidden)(void *user, uint32_t index, uint32_t pos0, uint32_t T, const float *h, uint32_t D);
    void (*route)(void *user, const tr_route_info *r);
    void *user;
} tr_trace_hooks;

typedef enum tr_logits_rows { TR_LOGITS_NONE = 0, TR_LOGITS_LAST = 1, TR_LOGITS_ALL = 2 } tr_logits_rows;

typedef struct tr_session tr_session;

/* Errors: TR_E_INVALID_PARAM (unknown backend, ctx_size above max_position_embeddings, a router mode the model
 * cannot run), TR_E_NOMEM ("KV cache: cannot allocate 20.4 GiB for --ctx-size 202752; lower --ctx-size"). */
int tr_session_new(const tr_model *m, const tr_session_options *o, tr_session **out, tr_error *err);
void tr_session_free(tr_session *s);

/* Evaluate T >= 1 new tokens.  logits receives [T][V] (ALL), [V] (LAST) or nothing (NONE).  Errors:
 * TR_E_TOKEN_ID ("--ids: token id 5000 at index 3 is out of range [0, 1214)" style, index within the call),
 * TR_E_INVALID_PARAM (the call would pass ctx_size), TR_E_NAN_DETECTED (abort policy: cache length restored),
 * backend errors.  On error the cache length is what it was before the call. */
int tr_session_eval(tr_session *s, const int32_t *ids, uint32_t T, tr_logits_rows rows, float *logits,
                    tr_error *err);

uint32_t tr_session_length(const tr_session *s);       /* positions in the cache */
uint32_t tr_session_ctx_size(const tr_session *s);
/* Keep the first n positions (n <= length). */
void tr_session_truncate(tr_session *s, uint32_t n);

void tr_session_set_trace(tr_session *s, const tr_trace_hooks *hooks);   /* NULL: no tracing */
/* Force the experts of (layer, pos): ids [n] (n = k, distinct, in [0, E)) in slot order; weights follow the router
 * mode's rule for that set.  TR_E_INVALID_PARAM on a bad layer, count or id. */
int tr_session_override_route(tr_session *s, uint32_t layer, uint32_t pos, const int32_t *ids, uint32_t n,
                              tr_error *err);
void tr_session_clear_overrides(tr_session *s);

/* The cached row of (layer, pos < length): GLM (c [r_kv], k_pe [d_r]) back to back; Qwen k [G·d] then v [G·d].
 * NULL when out of range; *n gets the row length. */
const float *tr_session_cache_row(const tr_session *s, uint32_t layer, uint32_t pos, uint32_t *n);

tr_moe_diag *tr_session_diag(tr_session *s);
tr_nan_guard *tr_session_nan_guard(tr_session *s);
const char *tr_session_backend_name(const tr_session *s);
const char *tr_session_device(const tr_session *s);      /* human description for result files */
const tr_model *tr_session_model(const tr_session *s);
/* Threads the backend computes with (1 for ref, whose results never depend on it). */
unsigned tr_session_threads(const tr_session *s);

#endif
