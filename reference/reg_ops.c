/*
 * reg_ops.c — the op table of the registry, in KERNELS.md §4 order (this order fixes case numbers for --shard).
 */
#include "reg_internal.h"

extern const tr_opdef reg_op_dequant_grid, reg_op_sign_flip, reg_op_hadamard, reg_op_gemm_trellis,
    reg_op_gemm_trellis_swiglu, reg_op_gemm_trellis_qkv, reg_op_expert_ffn, reg_op_moe_swiglu, reg_op_router_logits,
    reg_op_router_topk, reg_op_moe_count, reg_op_moe_offsets, reg_op_moe_scatter, reg_op_moe_group,
    reg_op_validate_expert_ids, reg_op_moe_gather, reg_op_moe_combine, reg_op_cast_f16, reg_op_codebook_decode,
    reg_op_bitshift_states, reg_op_nan_scan;

const tr_opdef *const reg_ops[] = {
    &reg_op_dequant_grid, &reg_op_sign_flip, &reg_op_hadamard, &reg_op_gemm_trellis, &reg_op_gemm_trellis_swiglu,
    &reg_op_gemm_trellis_qkv, &reg_op_expert_ffn, &reg_op_moe_swiglu, &reg_op_router_logits, &reg_op_router_topk,
    &reg_op_moe_count, &reg_op_moe_offsets, &reg_op_moe_scatter, &reg_op_moe_group, &reg_op_validate_expert_ids,
    &reg_op_moe_gather, &reg_op_moe_combine, &reg_op_cast_f16, &reg_op_codebook_decode, &reg_op_bitshift_states,
    &reg_op_nan_scan,
};
const size_t reg_op_count = sizeof reg_ops / sizeof reg_ops[0];
