/*
 * engine_internal.h — what the engine's translation units share privately: the session struct, per-call scratch,
 * the building blocks of the forward pass (linears, RMSNorm, RoPE, attention, FFN/MoE) and their NaN-guard sites.
 */
#ifndef TRELLIS_ENGINE_INTERNAL_H
#define TRELLIS_ENGINE_INTERNAL_H

#include "trellis/backend.h"
#include "trellis/engine.h"
#include "trellis/moe.h"

#include <stddef.h>
#include <stdint.h>

/* A forced route (tr_session_override_route). */
typedef struct route_override {
    uint32_t layer, pos;
    int32_t *ids;
} route_override;

struct tr_session {
    const tr_model *m;
    tr_backend *be;
    tr_session_options o;
    tr_router_cfg rcfg;               /* router of the MoE layers (mode after --router-mode) */
    uint32_t ctx, len;                /* capacity and filled positions of the cache */
    uint32_t row;                     /* floats per cached position and layer */
    float *cache;                     /* [L][ctx][row] */
    /* RoPE tables, filled on demand up to rope_ready positions: cos/sin [ctx][d_rot/2] */
    float *inv_freq, *rope_cos, *rope_sin;
    float rope_factor;                /* YaRN attention_factor (1 for default) */
    uint32_t rope_ready;
    /* MoE machinery */
    tr_moe_diag *diag;
    tr_nan_guard *guard;
    tr_moe_select_cfg sel;
    int use_fp32_acc;
    tr_trace_hooks trace;
    int tracing;
    route_override *overrides;
    size_t n_overrides, cap_overrides;
    uint32_t len_before;              /* cache length at the start of the current call (abort restores it) */
};

/* ---- building blocks (engine/nn.c) ------------------------------------------------------------------------------ */

/* Y[M][O] = W·X through the backend: gemm_trellis (acc f32, out f32) for quantized, gemm_f32 (L16) for float. */
int tr_eng_linear(tr_session *s, const tr_linear *l, const float *X, uint32_t M, float *Y, tr_error *err);

/* RMSNorm of ENGINE.md §3 on each of `rows` rows of n values, in place-safe (y may equal x). */
void tr_eng_rmsnorm(const float *x, const float *w, float eps, uint32_t rows, uint32_t n, float *y);

/* Softmax over n scores in place: max-subtract, tr_expf, SEQ sum ascending, divide. */
void tr_eng_softmax(float *v, uint32_t n);

/* RoPE rows for positions [0, upto) (idempotent); tables for one position: cos/sin [d_rot/2]. */
int tr_eng_rope_prepare(tr_session *s, uint32_t upto, tr_error *err);
void tr_eng_rope_apply(const tr_session *s, float *x, uint32_t pos);

/* NaN-guard scan of a [rows][cols] tensor at a site of `layer` (policy off: nothing). */
int tr_eng_scan(tr_session *s, tr_nan_site site, int32_t layer, uint32_t first_token, float *data, uint32_t rows,
                uint32_t cols, tr_error *err);

/* RoPE setup from the config (inv_freq, attention factor); ENGINE.md §1. */
int tr_eng_rope_init(tr_session *s, tr_error *err);

/* ---- blocks ------------------------------------------------------------------------------------------------------ */

/* Attention block of layer l for T tokens at positions len..len+T-1 (x: input-normed [T][D]; out [T][D]). */
int tr_eng_attention(tr_session *s, uint32_t l, const float *x, uint32_t T, float *out, tr_error *err);

/* FFN of layer l (dense or MoE, plus shared expert) for T tokens: out = m [T][D] (without the residual). */
int tr_eng_ffn(tr_session *s, uint32_t l, const float *x, uint32_t T, float *out, tr_error *err);

/* Per-row expert evaluation of MOE.md §2 with every stage scanned: Y [n][D] from A [n][D].  tokens/slots name the
 * rows for the NaN guard (expert: routed id, E for shared, -1 for dense). */
typedef struct tr_ffn_rows {
    const uint32_t *tokens;           /* [n] token (row within the call) of each row */
    const uint32_t *slots;            /* [n] slot, or NULL (0, or k for the shared expert via slot_all) */
    uint32_t slot_all;
    int32_t expert;
    const tr_bit_tuple *tuple;
} tr_ffn_rows;
int tr_eng_ffn_rows(tr_session *s, uint32_t l, const tr_ffn *f, const float *A, uint32_t n, const tr_ffn_rows *who,
                    float *Y, tr_error *err);

float *tr_eng_cache_at(const tr_session *s, uint32_t l, uint32_t pos);

#endif
