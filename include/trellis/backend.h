/*
 * backend.h — the backend interface (HARNESS.md §2): one vtable of typed ops that the engine and the conformance
 * runner call.  A NULL entry means "this backend has no implementation of its own": callers use the reference op
 * (ops.h), so the `ref` backend is the vtable with every entry NULL.
 *
 * Backends: "ref" (the reference), "cpu" (engine/cpu_backend.c: SIMD, threads, canonical orders, bitwise equal to
 * ref), and later "metal", "metal-emu", "capture:<dir>" (outputs recorded elsewhere; handled by the runner).
 */
#ifndef TRELLIS_BACKEND_H
#define TRELLIS_BACKEND_H

#include "trellis/ops.h"
#include "trellis/status.h"

#include <stdint.h>

typedef struct tr_backend tr_backend;

typedef struct tr_backend_ops {
    int (*dequant)(tr_backend *be, const tr_qweight *w, uint16_t *out, tr_error *err);
    int (*gemm_trellis)(tr_backend *be, const tr_qweight *w, const float *X, uint32_t M, tr_acc acc, int out_f16,
                        void *Y, tr_error *err);
    int (*gemm_f32)(tr_backend *be, const float *W, const float *X, uint32_t M, uint32_t O, uint32_t I, float *Y,
                    tr_error *err);
    int (*expert_ffn)(tr_backend *be, const tr_expert *e, const float *x, uint32_t R, tr_acc acc, void *y,
                      tr_error *err);
    int (*moe_swiglu)(tr_backend *be, const tr_expert *experts, uint32_t E, const float *x, uint32_t T,
                      const int32_t *ids, const float *probs, uint32_t k, tr_acc acc, float *out, tr_error *err);
    int (*router_logits)(tr_backend *be, const float *x, const float *Wr, const float *wscale, uint32_t T,
                         uint32_t H, uint32_t E, float *logits, tr_error *err);
    int (*router_topk)(tr_backend *be, const tr_router_cfg *cfg, const float *logits, uint32_t T, const float *bias,
                       const int32_t *candidates, uint32_t C, int32_t *ids, float *weights, float *load,
                       int32_t *count, tr_error *err);
    int (*moe_group)(tr_backend *be, const int32_t *ids, const float *probs, uint32_t T, uint32_t k, uint32_t E,
                     tr_grouping *g, tr_error *err);
} tr_backend_ops;

struct tr_backend {
    const char *name;
    tr_backend_ops ops;
    void *impl;
    void (*destroy)(tr_backend *be);
    /* Human description of the device (CPU model, SIMD level, threads) for result JSON. */
    char device[160];
};

/* Names of the backends this build can create ("ref", "cpu"). */
int tr_backend_available(const char *name);
/* Create a backend by name; threads = 0 uses every online CPU.  TR_E_UNSUPPORTED for unknown names. */
int tr_backend_create(const char *name, int threads, tr_backend **out, tr_error *err);
void tr_backend_destroy(tr_backend *be);

/* Dispatch helpers: the backend's own op, or the reference when it has none (be may be NULL = reference). */
int tr_be_dequant(tr_backend *be, const tr_qweight *w, uint16_t *out, tr_error *err);
int tr_be_gemm_trellis(tr_backend *be, const tr_qweight *w, const float *X, uint32_t M, tr_acc acc, int out_f16,
                       void *Y, tr_error *err);
int tr_be_gemm_f32(tr_backend *be, const float *W, const float *X, uint32_t M, uint32_t O, uint32_t I, float *Y,
                   tr_error *err);
int tr_be_expert_ffn(tr_backend *be, const tr_expert *e, const float *x, uint32_t R, tr_acc acc, void *y,
                     tr_error *err);
int tr_be_moe_swiglu(tr_backend *be, const tr_expert *experts, uint32_t E, const float *x, uint32_t T,
                     const int32_t *ids, const float *probs, uint32_t k, tr_acc acc, float *out, tr_error *err);
int tr_be_router_logits(tr_backend *be, const float *x, const float *Wr, const float *wscale, uint32_t T, uint32_t H,
                        uint32_t E, float *logits, tr_error *err);
int tr_be_router_topk(tr_backend *be, const tr_router_cfg *cfg, const float *logits, uint32_t T, const float *bias,
                      const int32_t *candidates, uint32_t C, int32_t *ids, float *weights, float *load, int32_t *count,
                      tr_error *err);
int tr_be_moe_group(tr_backend *be, const int32_t *ids, const float *probs, uint32_t T, uint32_t k, uint32_t E,
                    tr_grouping *g, tr_error *err);

#endif
