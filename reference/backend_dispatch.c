/*
 * backend_dispatch.c — the tr_be_* helpers of backend.h: a backend's own op when it has one, else the reference.
 * Pure dispatch, so the registry (reference/) can drive any backend without depending on engine/.
 */
#include "trellis/backend.h"

int tr_be_dequant(tr_backend *be, const tr_qweight *w, uint16_t *out, tr_error *err)
{
    if (be && be->ops.dequant)
        return be->ops.dequant(be, w, out, err);
    return tr_ref_dequant_grid(w, out, err);
}

int tr_be_gemm_trellis(tr_backend *be, const tr_qweight *w, const float *X, uint32_t M, tr_acc acc, int out_f16,
                       void *Y, tr_error *err)
{
    if (be && be->ops.gemm_trellis)
        return be->ops.gemm_trellis(be, w, X, M, acc, out_f16, Y, err);
    return tr_ref_gemm_trellis(w, X, M, acc, out_f16, Y, err);
}

int tr_be_gemm_f32(tr_backend *be, const float *W, const float *X, uint32_t M, uint32_t O, uint32_t I, float *Y,
                   tr_error *err)
{
    if (be && be->ops.gemm_f32)
        return be->ops.gemm_f32(be, W, X, M, O, I, Y, err);
    tr_ref_gemm_f32(W, X, M, O, I, Y);
    return TR_OK;
}

int tr_be_expert_ffn(tr_backend *be, const tr_expert *e, const float *x, uint32_t R, tr_acc acc, void *y,
                     tr_error *err)
{
    if (be && be->ops.expert_ffn)
        return be->ops.expert_ffn(be, e, x, R, acc, y, err);
    return tr_ref_expert_ffn(e, x, R, acc, y, err);
}

int tr_be_moe_swiglu(tr_backend *be, const tr_expert *experts, uint32_t E, const float *x, uint32_t T,
                     const int32_t *ids, const float *probs, uint32_t k, tr_acc acc, float *out, tr_error *err)
{
    if (be && be->ops.moe_swiglu)
        return be->ops.moe_swiglu(be, experts, E, x, T, ids, probs, k, acc, out, err);
    return tr_ref_moe_swiglu(experts, E, x, T, ids, probs, k, acc, out, err);
}

int tr_be_router_logits(tr_backend *be, const float *x, const float *Wr, const float *wscale, uint32_t T, uint32_t H,
                        uint32_t E, float *logits, tr_error *err)
{
    if (be && be->ops.router_logits)
        return be->ops.router_logits(be, x, Wr, wscale, T, H, E, logits, err);
    tr_ref_router_logits(x, Wr, wscale, T, H, E, logits);
    return TR_OK;
}

int tr_be_router_topk(tr_backend *be, const tr_router_cfg *cfg, const float *logits, uint32_t T, const float *bias,
                      const int32_t *candidates, uint32_t C, int32_t *ids, float *weights, float *load, int32_t *count,
                      tr_error *err)
{
    if (be && be->ops.router_topk)
        return be->ops.router_topk(be, cfg, logits, T, bias, candidates, C, ids, weights, load, count, err);
    return tr_ref_router_topk(cfg, logits, T, bias, candidates, C, ids, weights, load, count, err);
}

int tr_be_moe_group(tr_backend *be, const int32_t *ids, const float *probs, uint32_t T, uint32_t k, uint32_t E,
                    tr_grouping *g, tr_error *err)
{
    if (be && be->ops.moe_group)
        return be->ops.moe_group(be, ids, probs, T, k, E, g, err);
    return tr_ref_moe_group(ids, probs, T, k, E, g, err);
}
