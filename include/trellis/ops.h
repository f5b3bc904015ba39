/*
 * ops.h — the reference implementation of every op of KERNELS.md §4, in its canonical order and rounding points.
 *
 * These functions are the authority: backends (cpu, metal, captures) are compared against them.  They favour
 * clarity over speed.  An op that returns an error writes nothing to its outputs (KERNELS.md §0).  Activations
 * given as f16 are passed as their exact f32 values; f16 outputs are fp16 bit patterns (uint16_t).
 */
#ifndef TRELLIS_OPS_H
#define TRELLIS_OPS_H

#include "trellis/qweight.h"
#include "trellis/status.h"

#include <stddef.h>
#include <stdint.h>

typedef enum tr_acc { TR_ACC_F32 = 0, TR_ACC_F16 = 1 } tr_acc;

/* ---- 4.1 dequant_grid ---------------------------------------------------------------------------------------- */
/* W16 [O][I]; INVALID_PARAM for a header byte outside 2..8, INVALID_SHAPE for lengths or G. */
int tr_ref_dequant_grid(const tr_qweight *w, uint16_t *out, tr_error *err);

/* ---- 4.2 sign_flip: out[k][n] = RNh(widen(w[k][n]) · RN32(su[k]·sv[n])) ------------------------------------------ */
void tr_ref_sign_flip(const uint16_t *w, const float *su, const float *sv, uint32_t K, uint32_t N, uint16_t *out);

/* ---- 4.3 hadamard ------------------------------------------------------------------------------------------------ */
typedef struct tr_hadamard_args {
    unsigned n;                /* 32, 64, 96, 128, 160, 192 */
    int cols;                  /* 0: rows layout [R][n]; 1: cols layout [K][N], blocks of n along K (K % n == 0) */
    uint32_t R, K, N;
    int f16;                   /* data format f16 (uint16_t bits) or f32 */
    int ortho;                 /* norm ortho (multiply by c_m) or none */
    int inverse;               /* direction (with ortho: the same computation; with none: unscaled) */
    const void *prescale;      /* optional per-element pre-scale, same shape and format as x */
    const void *postscale;     /* optional per-row post-scale [R] (rows layout only), same format */
} tr_hadamard_args;

/* c_m of KERNELS.md §4.3 in f32 or f16 bits (m = 32, 64, 128). */
float tr_hadamard_cm_f32(unsigned m);
uint16_t tr_hadamard_cm_f16(unsigned m);
/* Block sizes of a transform of length n: 96 = 64 + 32, 160 = 128 + 32, 192 = 128 + 64, else n itself. */
int tr_hadamard_blocks(unsigned n, unsigned sizes[2]);
int tr_ref_hadamard(const tr_hadamard_args *a, const void *x, void *out, tr_error *err);

/* ---- 4.4-4.6 dense quantized linears ------------------------------------------------------------------------------ */
/* Y[m][o] = Σ_i X[m][i]·W16[o][i]: L16 (acc f32) or H16T (acc f16), then one conversion to out_f16 ? f16 : f32.
 * Rotation hadamard128 (w->rotation): x' = RN32(X·su), blockwise Hadamard (f32, ortho, 128), L16 with Ŵ16, then
 * RN32(sv·acc); acc f16 is not defined there (INVALID_PARAM).  Y is float[M][O] or uint16_t[M][O]. */
int tr_ref_gemm_trellis(const tr_qweight *w, const float *X, uint32_t M, tr_acc acc, int out_f16, void *Y,
                        tr_error *err);
/* S[m][j] = RNh(RN32(silu(g)·u)) with g, u from gate and up (f16 acc: silu(widen(g16))·widen(u16)); S f16 [M][I]. */
int tr_ref_gemm_trellis_swiglu(const tr_qweight *gate, const tr_qweight *up, const float *X, uint32_t M, tr_acc acc,
                               uint16_t *S, tr_error *err);

/* Dense f32 weights (routers, unquantized projections): Y[m][o] = L16 Σ_i X[m][i]·W[o][i]. */
void tr_ref_gemm_f32(const float *W, const float *X, uint32_t M, uint32_t O, uint32_t I, float *Y);

/* ---- 4.7 expert_ffn and 4.8 moe_swiglu ----------------------------------------------------------------------------- */
typedef struct tr_expert {
    const tr_qweight *gate;    /* [I][H] */
    const tr_qweight *up;      /* [I][H] */
    const tr_qweight *down;    /* [H][I] */
} tr_expert;

/* Shapes: H = gate->I, I = gate->O; INVALID_SHAPE if the three do not fit together. */
int tr_expert_check(const tr_expert *e, tr_error *err);

/* One row in f32 (acc f32), exposing every stage for the NaN guard (MOE.md §7): g, u, s are [I], y is [H].
 * g_j = L16 Σ_k x_k·Wg16[j][k]; u likewise; s_j = RN32(silu(g_j)·u_j); y_n = L16 Σ_j s_j·Wd16[n][j]. */
void tr_ref_expert_row(const tr_expert *e, const float *x, float *g, float *u, float *s, float *y);

/* x [R][H] -> y [R][H]: acc f32 gives float y; acc f16 gives uint16_t y (x rounded to f16, H16T, f16 s). */
int tr_ref_expert_ffn(const tr_expert *e, const float *x, uint32_t R, tr_acc acc, void *y, tr_error *err);

/* out[t] = SEQ_j RN32(p_tj · y_tj) in f32 from +0, y_tj = expert_ffn(x_t; ids[t][j]) (acc f16: widened f16 y).
 * INVALID_EXPERT_ID for any id outside [0, E) (validated before computing); experts[e] may be left empty
 * (all NULL) for experts no id refers to. */
int tr_ref_moe_swiglu(const tr_expert *experts, uint32_t E, const float *x, uint32_t T, const int32_t *ids,
                      const float *probs, uint32_t k, tr_acc acc, float *out, tr_error *err);

/* ---- 4.9 routers ---------------------------------------------------------------------------------------------------- */
typedef enum tr_router_mode {
    TR_ROUTER_SOFTMAX_TOPK = 0,
    TR_ROUTER_SOFTMAX_TOPK_F16 = 1,
    TR_ROUTER_NOAUX_TC = 2,
} tr_router_mode;

const char *tr_router_mode_name(tr_router_mode m);
int tr_router_mode_parse(const char *name, tr_router_mode *out);

typedef struct tr_router_cfg {
    tr_router_mode mode;
    uint32_t E, k;
    int norm_topk_prob;
    float temperature;              /* softmax modes; 1 = no scaling */
    uint32_t n_group, topk_group;   /* noaux_tc group limit; 1, 1 = none */
    float routed_scaling_factor;    /* noaux_tc */
} tr_router_cfg;

/* Range checks of KERNELS.md §4.9 / MOE.md §1.1 (INVALID_PARAM naming the field). */
int tr_router_check(const tr_router_cfg *cfg, tr_error *err);

/* logits[t][e] = L16 Σ_d x[t][d]·Wr[e][d] (f32 operands; widen f16/bf16 inputs before calling).  With wscale
 * (i8 weights given as their integer values in Wr): RN32(acc · wscale[e]). */
void tr_ref_router_logits(const float *x, const float *Wr, const float *wscale, uint32_t T, uint32_t H, uint32_t E,
                          float *logits);

/* Selection per MOE.md §1: ids [T][k], weights [T][k] (f16 mode: f16 values widened).  bias [E] for noaux_tc (NULL =
 * zeros); candidates [T][C] restrict the experts per token (NULL = all); load [E] (SEQ over t of p_te, all E) and
 * count [E] (slots per expert) are optional aux outputs. */
int tr_ref_router_topk(const tr_router_cfg *cfg, const float *logits, uint32_t T, const float *bias,
                       const int32_t *candidates, uint32_t C, int32_t *ids, float *weights, float *load,
                       int32_t *count, tr_error *err);

/* ---- 4.10 grouping ("fairway", MOE.md §3) ---------------------------------------------------------------------- */
typedef struct tr_grouping {
    uint32_t T, k, E, N;             /* N = T·k */
    uint32_t *sorted_token_ids;      /* [N] flat indices f = t·k + j, grouped by expert */
    uint32_t *expert_offsets;        /* [E+1] */
    float *sorted_probs;             /* [N] */
    uint32_t *inverse;               /* [N]: inverse[f] = position of f */
} tr_grouping;

/* First invalid id (smallest flat index) -> INVALID_EXPERT_ID "flat=<f> token=<t> slot=<j> id=<v> num_experts=<E>". */
int tr_ref_validate_ids(const int32_t *ids, uint32_t T, uint32_t k, uint32_t E, tr_error *err);
int tr_ref_moe_count(const int32_t *ids, uint32_t T, uint32_t k, uint32_t E, uint32_t *counts, tr_error *err);
void tr_ref_moe_offsets(const uint32_t *counts, uint32_t E, uint32_t *offsets);
/* Stable counting sort given offsets (which must equal moe_offsets of ids, else INVALID_PARAM). */
int tr_ref_moe_scatter(const int32_t *ids, const float *probs, uint32_t T, uint32_t k, uint32_t E,
                       const uint32_t *offsets, uint32_t *sorted_token_ids, float *sorted_probs, uint32_t *inverse,
                       tr_error *err);
/* The composition; g's arrays are caller-allocated (N, E+1, N, N entries); g->T/k/E/N are set. */
int tr_ref_moe_group(const int32_t *ids, const float *probs, uint32_t T, uint32_t k, uint32_t E, tr_grouping *g,
                     tr_error *err);
/* out_f = ids_f if 0 <= ids_f < E else replacement (0 <= replacement < E, else INVALID_PARAM). */
int tr_ref_validate_expert_ids(const int32_t *ids, uint32_t N, uint32_t E, int32_t replacement, int32_t *out,
                               tr_error *err);

/* ---- 4.11 gather, combine, cast --------------------------------------------------------------------------------- */
/* out[r] = x[tokens[r]] (rows of row_bytes bytes); INVALID_PARAM if a token is >= T. */
int tr_ref_moe_gather(const void *x, uint32_t T, size_t row_bytes, const uint32_t *tokens, uint32_t N, void *out,
                      tr_error *err);
/* acc f32: out = SEQ_j RN32(w_j·y_j) from +0, then + shared, then + residual (f32).  acc f16: y, w, shared, residual
 * are f16 values; acc = fmah(w_j, y_j, acc), then f16 adds; out uint16_t.  y [T][k][H], w [T][k], shared/residual
 * [T][H] or NULL. */
void tr_ref_moe_combine(const float *y, const float *w, const float *shared, const float *residual, uint32_t T,
                        uint32_t k, uint32_t H, tr_acc acc, void *out);
void tr_ref_cast_f16(const float *in, size_t n, uint16_t *out);

/* ---- 4.13 nan_scan ------------------------------------------------------------------------------------------------ */
typedef enum tr_nonfinite { TR_NF_NONE = 0, TR_NF_NAN, TR_NF_POS_INF, TR_NF_NEG_INF } tr_nonfinite;

typedef struct tr_nan_scan {
    uint64_t nan_count, pos_inf_count, neg_inf_count;
    int64_t first_index;       /* -1 if none */
    tr_nonfinite first_kind;
} tr_nan_scan;

void tr_ref_nan_scan_f32(const float *v, size_t n, tr_nan_scan *out);
void tr_ref_nan_scan_f16(const uint16_t *v, size_t n, tr_nan_scan *out);

#endif
