/*
 * kernel_symbols.c — the table of every foreign Metal kernel symbol named in KERNELS.md §4.1–§4.13 with the op it
 * maps to and the facts the spec records for it, and the unmapped names of §4.14.  Rows follow the spec's tables in
 * order; a name written "`_suffix`" in the spec is spelled out in full here.
 */
#include "trellis/kernel_symbols.h"

#include <string.h>

/* Binding families and launches shared by several rows (texts of KERNELS.md). */
#define B_PK_DEQUANT "0 packed u8, 1 S, 2 grid, 3 su, 4 sv, 5 out f16 [K][N], 6 K, 7 N, 8 n_levels, 9 bits, 10 gs"
#define B_I16_DEQUANT "0 idx i16, 1 S, 2 grid, 3 out, 4 K, 5 N, 6 n_levels, 7 gs"
#define B_HAD_ROWS "0 in, 1 out, 2 R, 3 normalize"
#define B_HAD_COLS "0 in, 1 out, 2 K, 3 N"
#define L_HAD_COLS "threads (N, K/n, z), z = 2 sub-blocks for 96/160/192 else 1, TG (32,1,1)"
#define B_GEMM "0 A, 1 packed, 2 S f32 [G][N], 3 grid f32, 4 su [K], 5 sv [N], 6 C f16 [M][N], 7 M, 8 K, 9 N, " \
    "10 bits, 11 n_levels, 12 gs"
#define B_GEMM_B2 "0 A, 1 packed, 2 S f32 [G][N], 3 grid f32, 4 su [K], 5 sv [N], 6 C f16 [M][N], 7 M, 8 K, 9 N, " \
    "10 gs"
#define L_GEMM "256 thr, grid (ceil(N/128), ceil(M/128))"
#define L_GEMM_DEC "128 thr, grid (ceil(N/128), ceil(M/32))"
#define B_SWIGLU "0 A, 1 packed_gate, 2 S_gate, 3 packed_up, 4 S_up, 5 grid, 6 su, 7 sv, 8 C, 9 M, 10 K, 11 N, " \
    "12 bits, 13 n_levels, 14 gs"
#define B_MOE18 "MOE18: 0 x f16 [batch][H], 1 gate_w, 2 gate_S f16, 3 up_w, 4 up_S, 5 down_w, 6 down_S, " \
    "7 gate_su [E][H], 8 gate_sv [E][I], 9 up_su, 10 up_sv, 11 down_su [E][I], 12 down_sv [E][H], 13 grid f16, " \
    "14 expert_ids u32 [batch][top_k], 15 probs f16, 16 out f32 [batch][H], 17 MoEParams"
#define B_MOE_GROUPED "MOE18 0-13, 14 sorted_token_ids u32 (row of the bound activation/output matrix per sorted " \
    "entry, MOE.md 3.5), 15 offsets u32 [E+1], 16 sorted probs f16, 17 out, 18 params"
#define B_MOE_MIXED B_MOE18 ", 21 expert_bits u8 [E], 22 weight_offsets u32 [E]"
#define L_MOE "128 thr, (ceil(H/64), batch, top_k)"
#define L_MOE_DEC "128 thr, (ceil(H/64), top_k)"
#define L_MOE_P4 "128 thr, (ceil(H/64), ceil(batch/4), top_k)"
#define L_MOE_MIXED "256 thr, (ceil(H/64), batch, top_k)"
#define B_ROUTER "0 x f16, 1 Wr, 2 ids u32, 3 w f16, 4 T, 5 H, 6 E, 7 k"
#define B_ROUTER_I8 "0 x, 1 Wr, 2 scale, 3 ids, 4 w, 5 T, 6 H, 7 E, 8 k"
#define B_ROUTER_SPARSE "0 x, 1 Wr, 2 candidates, 3 ids, 4 w, 5 T, 6 H, 7 E, 8 C, 9 k"
#define B_SOFTMAX_F16 "0 logits f16, 1 ids u32, 2 w f16, 3 params {T,E,k}"
#define L_ROUTER "128-thread TGs, one TG per token"
#define D_ROUTER "E <= 256, k <= 16"
#define L_GROUPING "256-thread TGs, counters zero-filled before launch"
#define B_GATHER "0 x f16, 1 token view, 2 out, 3 N, 4 H"

/* name, op, section, variant, acc, adapter, domain, binding, launch, probed */
static const tr_kernel_symbol symbols[] = {
    /* ---- 4.1 dequant_grid (EXACT) ---- */
    {"dequant_trellis_packed", "dequant_grid", "4.1", NULL, NULL, "PK", NULL, B_PK_DEQUANT, "TG 16x16", 0},
    {"dequant_trellis_packed_vec4", "dequant_grid", "4.1", NULL, NULL, "PK", NULL, B_PK_DEQUANT,
     "TG 16x16, each thread 4 consecutive k", 0},
    {"dequant_trellis_packed_cached", "dequant_grid", "4.1", NULL, NULL, "PK", NULL, B_PK_DEQUANT, "TG 16x16", 0},
    {"dequant_trellis_packed_cached_vec4", "dequant_grid", "4.1", NULL, NULL, "PK", NULL, B_PK_DEQUANT,
     "TG 16x16, each thread 4 consecutive k", 0},
    {"dequant_trellis_packed_tiled_vec4", "dequant_grid", "4.1", NULL, NULL, "PK", NULL, B_PK_DEQUANT,
     "one TG (64 threads) per 16x16 tile", 0},
    {"dequant_trellis_packed_tiled_cached_vec4", "dequant_grid", "4.1", NULL, NULL, "PK", NULL, B_PK_DEQUANT,
     "one TG (64 threads) per 16x16 tile", 0},
    {"dequant_trellis_packed_tex", "dequant_grid", "4.1", NULL, NULL, "TEX", NULL,
     "0 packed, 1 S, texture 0 grid, 2 su, 3 sv, 4 out, 5 K, 6 N, 7 n_levels, 8 bits, 9 gs", "TG 16x16", 0},
    {"dequant_trellis", "dequant_grid", "4.1", NULL, NULL, "I16+NOSIGN", NULL, B_I16_DEQUANT, "one thread per element",
     0},
    {"dequant_trellis_tiled", "dequant_grid", "4.1", NULL, NULL, "I16+NOSIGN", NULL, B_I16_DEQUANT,
     "one TG of 256 per tile", 0},
    {"dequant_trellis_tiled_cached", "dequant_grid", "4.1", NULL, NULL, "I16+NOSIGN", NULL, B_I16_DEQUANT,
     "one TG of 256 per tile", 0},
    {"dequant_trellis_aligned", "dequant_grid", "4.1", NULL, NULL, "I16+NOSIGN", "O % 4 = 0", B_I16_DEQUANT,
     "one thread per element", 0},
    {"dequant_trellis_with_signs", "dequant_grid", "4.1", NULL, NULL, "I16", NULL,
     "0 idx, 1 S, 2 grid, 3 su, 4 sv, 5 out, 6 K, 7 N, 8 n_levels, 9 gs", "one thread per element", 0},
    {"dequant_trellis_bulk", "dequant_grid", "4.1", NULL, NULL, "BULK+NOSIGN",
     "gs multiple of 16, S constant over each 16 outputs",
     "0 idx, 1 per-tile scale, 2 grid, 3 out [n_tiles][256], 4 n_tiles, 5 n_levels", "one thread per element", 0},
    /* ---- 4.2 sign_flip (EXACT) ---- */
    {"apply_sign_flips", "sign_flip", "4.2", NULL, NULL, NULL, "in place (runner copies input to output first)",
     "0 w in/out, 1 su, 2 sv, 3 K, 4 N", NULL, 0},
    {"apply_sign_flips_vec4", "sign_flip", "4.2", NULL, NULL, NULL, "N % 4 = 0; in place",
     "0 w in/out, 1 su, 2 sv, 3 K, 4 N", NULL, 0},
    /* ---- 4.3 hadamard (ORDERED, acc = data format, order canonical) ---- */
    {"hadamard_transform_32", "hadamard", "4.3", NULL, "data format", NULL, "rows, n = 32, norm from arg",
     B_HAD_ROWS, "one 32-thread TG per row", 0},
    {"hadamard_transform_64", "hadamard", "4.3", NULL, "data format", NULL, "rows, n = 64, norm from arg",
     B_HAD_ROWS, "one 32-thread TG per row", 0},
    {"hadamard_transform_128", "hadamard", "4.3", NULL, "data format", NULL, "rows, n = 128, norm from arg",
     B_HAD_ROWS, "one 32-thread TG per row", 0},
    {"hadamard_transform_64_vec", "hadamard", "4.3", NULL, "data format", NULL, "rows, n = 64, norm from arg",
     B_HAD_ROWS, "one 32-thread TG per row", 0},
    {"hadamard_transform_64_scaled", "hadamard", "4.3", NULL, "data format", NULL,
     "rows, n = 64, ortho, pre-scale (per_element=1) or post-scale", "0 in, 1 scales, 2 out, 3 R, 4 per_element",
     "one 32-thread TG per row", 0},
    {"hadamard_inverse_64", "hadamard", "4.3", NULL, "data format", NULL, "rows, n = 64, inverse, none",
     "0 in, 1 out, 2 R", "one 32-thread TG per row", 0},
    {"test_hadamard_roundtrip_64", "hadamard", "4.3", NULL, "data format", NULL,
     "rows, n = 64: forward none, forward none, then times RNh(1/64)", "0 in, 1 out, 2 R", "one 32-thread TG per row",
     0},
    {"hadamard_forward_fast_64", "hadamard", "4.3", NULL, "f16", NULL, "cols, n = 64, ortho, f16", B_HAD_COLS,
     L_HAD_COLS, 0},
    {"hadamard_forward_fast_128", "hadamard", "4.3", NULL, "f16", NULL, "cols, n = 128, ortho, f16", B_HAD_COLS,
     L_HAD_COLS, 0},
    {"hadamard_forward_fast_96", "hadamard", "4.3", NULL, "f16", NULL, "cols, n = 96, ortho, f16", B_HAD_COLS,
     L_HAD_COLS, 0},
    {"hadamard_forward_fast_160", "hadamard", "4.3", NULL, "f16", NULL, "cols, n = 160, ortho, f16", B_HAD_COLS,
     L_HAD_COLS, 0},
    {"hadamard_forward_fast_192", "hadamard", "4.3", NULL, "f16", NULL, "cols, n = 192, ortho, f16", B_HAD_COLS,
     L_HAD_COLS, 0},
    {"hadamard_inverse_block_64", "hadamard", "4.3", NULL, "f16", NULL, "cols, n = 64, ortho, f16", B_HAD_COLS,
     L_HAD_COLS, 0},
    {"hadamard_inverse_block_128", "hadamard", "4.3", NULL, "f16", NULL, "cols, n = 128, ortho, f16", B_HAD_COLS,
     L_HAD_COLS, 0},
    {"hadamard_inverse_block_96", "hadamard", "4.3", NULL, "f16", NULL, "cols, n = 96, ortho, f16", B_HAD_COLS,
     L_HAD_COLS, 0},
    {"hadamard_inverse_block_160", "hadamard", "4.3", NULL, "f16", NULL, "cols, n = 160, ortho, f16", B_HAD_COLS,
     L_HAD_COLS, 0},
    {"hadamard_inverse_block_192", "hadamard", "4.3", NULL, "f16", NULL, "cols, n = 192, ortho, f16", B_HAD_COLS,
     L_HAD_COLS, 0},
    {"hadamard_forward_fast_64_float", "hadamard", "4.3", NULL, "f32", NULL, "cols, n = 64, ortho, f32", B_HAD_COLS,
     L_HAD_COLS, 0},
    {"hadamard_inverse_block_64_float", "hadamard", "4.3", NULL, "f32", NULL, "cols, n = 64, ortho, f32",
     B_HAD_COLS, L_HAD_COLS, 0},
    {"hadamard_forward_block", "hadamard", "4.3", NULL, "f16", NULL, "cols, ortho, f16; block_size = 64",
     "0 in, 1 out, 2 K, 3 N, 4 block_size", L_HAD_COLS, 0},
    {"hadamard_forward_fast", "hadamard", "4.3", NULL, "f16", NULL, "cols, ortho, f16; block_size = 64",
     "0 in, 1 out, 2 K, 3 N, 4 block_size", L_HAD_COLS, 0},
    {"hadamard_inverse_block", "hadamard", "4.3", NULL, "f16", NULL, "cols, ortho, f16; block_size = 64",
     "0 in, 1 out, 2 K, 3 N, 4 block_size", L_HAD_COLS, 0},
    /* ---- 4.4 gemm_trellis (order unspecified, PK) ---- */
    {"gemm_trellis_packed", "gemm_trellis", "4.4", NULL, "f16", "PK", "b 2..8", B_GEMM, L_GEMM, 0},
    {"gemm_trellis_packed_fp32acc", "gemm_trellis", "4.4", NULL, "f32", "PK", "b 2..8", B_GEMM, L_GEMM, 0},
    {"gemm_trellis_packed_decode", "gemm_trellis", "4.4", NULL, "f16", "PK", "b 2..8, M <= 16", B_GEMM, L_GEMM_DEC, 0},
    {"gemm_trellis_2bit", "gemm_trellis", "4.4", NULL, "f16", "PK", "b = 2", B_GEMM_B2, L_GEMM, 0},
    {"gemm_trellis_2bit_fused_reg", "gemm_trellis", "4.4", NULL, "f16", "PK", "b = 2", B_GEMM_B2, L_GEMM, 0},
    {"gemm_trellis_w2", "gemm_trellis", "4.4", NULL, "f16", "PK", "b = 2", B_GEMM_B2, L_GEMM, 0},
    {"gemm_trellis_w2_fp32acc", "gemm_trellis", "4.4", NULL, "f32", "PK", "b = 2", B_GEMM_B2, L_GEMM, 0},
    {"gemm_trellis_2bit_decode", "gemm_trellis", "4.4", NULL, "f16", "PK", "b = 2, M <= 16", B_GEMM_B2, L_GEMM_DEC, 0},
    {"gemm_trellis_w2_decode", "gemm_trellis", "4.4", NULL, "f16", "PK", "b = 2, M <= 16", B_GEMM_B2, L_GEMM_DEC, 0},
    {"gemm_trellis_fused_reg", "gemm_trellis", "4.4", NULL, "f16", "PK", "b 2..8", B_GEMM, L_GEMM, 1},
    {"decode_gemv_trellis", "gemm_trellis", "4.4", NULL, "f16", "PK", "b 2..8, M = 1", B_GEMM, L_GEMM_DEC, 1},
    /* ---- 4.5 gemm_trellis_swiglu ---- */
    {"gemm_trellis_swiglu_gate_up", "gemm_trellis_swiglu", "4.5", NULL, "f16", "PK",
     "gate and up share b, su and sv (one binding each)", B_SWIGLU, "256 thr, (ceil(I/128), ceil(M/128))", 0},
    {"gemm_trellis_swiglu_gate_up_decode", "gemm_trellis_swiglu", "4.5", NULL, "f16", "PK",
     "gate and up share b, su and sv (one binding each); M <= 16", B_SWIGLU, "128 thr, (ceil(I/128), ceil(M/32))", 0},
    /* ---- 4.6 gemm_trellis_qkv ---- */
    {"fused_qkv_trellis_decode", "gemm_trellis_qkv", "4.6", NULL, "f16", "PK", "one b and gs for all three; M <= 16",
     "0 A; 1-4 Q packed/S/su/sv; 5-8 K; 9-12 V; 13 grid; 14-16 outputs; 17 M; 18 K; 19 N_q; 20 N_k; 21 N_v; "
     "22 bits; 23 n_levels; 24 gs",
     "128 thr, grid (ceil(max(N_q,N_k,N_v)/128), ceil(M/32))", 0},
    /* ---- 4.7 expert_ffn ---- */
    {"moe_trellis_fused_expert", "expert_ffn", "4.7", NULL, "f16", "STACK+H16", "b = 3 for all projections",
     "0-13 as MOE18, 14 out f32 [R][H], 15 batch, 16 H, 17 I, 18 expert_id, 19 gs, 20 n_levels",
     "256 thr, grid (ceil(H/64), R)", 0},
    /* ---- 4.8 moe_swiglu (STACK + H16, output zero-filled before launch) ---- */
    {"moe_trellis_swiglu", "moe_swiglu", "4.8", "base", "f16", "STACK+H16", NULL, B_MOE18, L_MOE, 0},
    {"moe_trellis_swiglu_fp32acc", "moe_swiglu", "4.8", "fp32acc", "f32", "STACK+H16", NULL, B_MOE18, L_MOE, 0},
    {"moe_trellis_swiglu_large_batch", "moe_swiglu", "4.8", "large_batch", "f32", "STACK+H16", NULL, B_MOE18,
     "128 thr, (ceil(H/128), batch, top_k)", 0},
    {"moe_trellis_swiglu_simd", "moe_swiglu", "4.8", "simd", "f16", "STACK+H16", NULL, B_MOE18, L_MOE, 0},
    {"moe_trellis_swiglu_decode", "moe_swiglu", "4.8", "decode", "f32", "STACK+H16", "batch = 1", B_MOE18, L_MOE_DEC,
     0},
    {"moe_trellis_swiglu_decode_6_2_3", "moe_swiglu", "4.8", "decode_G_U_D", "f32", "STACK+H16",
     "batch = 1, tuple = (6,2,3)", B_MOE18, L_MOE_DEC, 1},
    {"moe_trellis_swiglu_decode_6_3_4", "moe_swiglu", "4.8", "decode_G_U_D", "f32", "STACK+H16",
     "batch = 1, tuple = (6,3,4)", B_MOE18, L_MOE_DEC, 1},
    {"moe_trellis_swiglu_decode_6_2_4", "moe_swiglu", "4.8", "decode_G_U_D", "f32", "STACK+H16",
     "batch = 1, tuple = (6,2,4)", B_MOE18, L_MOE_DEC, 1},
    {"moe_trellis_swiglu_decode_gemv", "moe_swiglu", "4.8", "decode_gemv", "f32", "STACK+H16", "batch = 1", B_MOE18,
     L_MOE_DEC, 1},
    {"moe_trellis_swiglu_prefill4", "moe_swiglu", "4.8", "prefill4", "f16", "STACK+H16", NULL, B_MOE18, L_MOE_P4, 0},
    {"moe_trellis_swiglu_prefill4_fp32acc", "moe_swiglu", "4.8", "prefill4_fp32acc", "f32", "STACK+H16", NULL,
     B_MOE18, L_MOE_P4, 0},
    {"moe_trellis_swiglu_grouped", "moe_swiglu", "4.8", "grouped", "f16", "STACK+H16", NULL, B_MOE_GROUPED,
     "128 thr, (ceil(H/64), num_experts)", 0},
    {"moe_trellis_mixed_swiglu", "moe_swiglu", "4.8", "mixed", "f32", "STACK+H16", "per expert g = u = d",
     B_MOE_MIXED, L_MOE_MIXED, 0},
    {"moe_trellis_mixed_swiglu_decode", "moe_swiglu", "4.8", "mixed_decode", "f32", "STACK+H16",
     "per expert g = u = d", B_MOE_MIXED, L_MOE_MIXED, 0},
    {"moe_trellis_mixed_swiglu_prefill", "moe_swiglu", "4.8", "mixed_prefill", "f32", "STACK+H16",
     "per expert g = u = d", B_MOE_MIXED, L_MOE_MIXED, 0},
    {"moe_trellis_mixed_swiglu_large", "moe_swiglu", "4.8", "mixed_large", "f32", "STACK+H16",
     "per expert g = u = d", B_MOE_MIXED, L_MOE_MIXED, 0},
    {"moe_trellis_fast_2bit_swiglu", "moe_swiglu", "4.8", NULL, "f16", "STACK+H16", NULL, B_MOE18, L_MOE, 1},
    {"moe_trellis_mixed_bpw_swiglu", "moe_swiglu", "4.8", NULL, "f16", "STACK+H16", NULL, B_MOE18, L_MOE, 1},
    /* ---- 4.9 routers (TOLERANT, near-tie) ---- */
    {"moe_router_fused", "router_topk", "4.9", NULL, NULL, NULL,
     "softmax_topk, fused logits, Wr f16 [H][E], weights f16; " D_ROUTER, B_ROUTER, L_ROUTER, 0},
    {"moe_router_fused_small", "router_topk", "4.9", NULL, NULL, NULL,
     "softmax_topk, fused logits, Wr f16 [H][E], weights f16; " D_ROUTER, B_ROUTER, L_ROUTER, 0},
    {"moe_router_fused_coalesced", "router_topk", "4.9", NULL, NULL, NULL,
     "softmax_topk, fused logits, Wr f16 [E][H], weights f16; " D_ROUTER, B_ROUTER, L_ROUTER, 0},
    {"moe_router_with_aux_loss", "router_topk", "4.9", NULL, NULL, NULL,
     "softmax_topk, fused logits, aux load/count; " D_ROUTER,
     "0 x f16, 1 Wr, 2 ids u32, 3 w f16, 4 load f32, 5 count u32, 6 T, 7 H, 8 E, 9 k", L_ROUTER, 0},
    {"moe_router_batched", "router_topk", "4.9", NULL, NULL, NULL,
     "softmax_topk, fused logits, ragged token_offsets [B+1]; " D_ROUTER,
     "0 x f16, 1 Wr, 2 ids u32, 3 w f16, 4 offsets, 5 B, 6 H, 7 E, 8 k", L_ROUTER, 0},
    {"moe_router_int8_fused", "router_topk", "4.9", NULL, NULL, NULL,
     "softmax_topk, Wr i8 [E][H] + scale f32 [E]; " D_ROUTER, B_ROUTER_I8, L_ROUTER, 0},
    {"moe_router_int8_fused_small", "router_topk", "4.9", NULL, NULL, NULL,
     "softmax_topk, Wr i8 [E][H] + scale f32 [E]; " D_ROUTER, B_ROUTER_I8, L_ROUTER, 0},
    {"moe_router_int8_fused_decode", "router_topk", "4.9", NULL, NULL, NULL,
     "softmax_topk, Wr i8 [E][H] + scale f32 [E]; T = 1; " D_ROUTER, "0 x, 1 Wr, 2 scale, 3 ids, 4 w, 5 H, 6 E, 7 k",
     L_ROUTER, 0},
    {"moe_router_sparse", "router_topk", "4.9", NULL, NULL, NULL, "softmax_topk over candidates, C <= 32; " D_ROUTER,
     B_ROUTER_SPARSE, L_ROUTER, 0},
    {"moe_router_sparse_vec4", "router_topk", "4.9", NULL, NULL, NULL,
     "softmax_topk over candidates, C <= 32; " D_ROUTER, B_ROUTER_SPARSE, L_ROUTER, 0},
    {"moe_router_sparse_batched", "router_topk", "4.9", NULL, NULL, NULL,
     "softmax_topk over candidates, C <= 32; " D_ROUTER,
     "0 x, 1 Wr, 2 candidates, 3 ids, 4 w, 5 token_offsets, 6 B, 7 H, 8 E, 9 C, 10 k", L_ROUTER, 0},
    {"moe_router_argsort_fused", "router_topk", "4.9", NULL, NULL, NULL,
     "softmax_topk with tau, f32 x and Wr [E][H], k <= 8, H % 4 = 0",
     "0 x, 1 Wr, 2 ids, 3 order, 4 w f32, 5 params {T,H,E,k,tau} (4 x u32, then f32)", L_ROUTER, 0},
    {"moe_router_argsort_fused_grouped", "router_topk+moe_group", "4.9", NULL, NULL, NULL,
     "router_topk followed by moe_group (compared as both); H = 4096", NULL, L_ROUTER, 0},
    {"moe_fused_router_sorted", "router_topk+moe_group", "4.9", NULL, NULL, NULL,
     "router_topk followed by moe_group (compared as both); " D_ROUTER, NULL, L_ROUTER, 0},
    {"moe_fused_router_sorted_batched", "router_topk+moe_group", "4.9", NULL, NULL, NULL,
     "router_topk followed by moe_group (compared as both); " D_ROUTER, NULL, L_ROUTER, 0},
    {"moe_fused_router_sorted_coalesced", "router_topk+moe_group", "4.9", NULL, NULL, NULL,
     "router_topk followed by moe_group (compared as both); " D_ROUTER, NULL, L_ROUTER, 0},
    {"softmax_topk_decode", "router_topk", "4.9", NULL, NULL, NULL,
     "softmax_topk_f16 from f16 logits, E <= 128, k <= 8", B_SOFTMAX_F16, L_ROUTER, 0},
    {"softmax_topk_prefill", "router_topk", "4.9", NULL, NULL, NULL,
     "softmax_topk_f16 from f16 logits, E <= 128, k <= 8", B_SOFTMAX_F16, L_ROUTER, 0},
    {"softmax_topk8_128e", "router_topk", "4.9", NULL, NULL, NULL,
     "softmax_topk_f16 from f16 logits, E = 128, k = 8, T = 1", B_SOFTMAX_F16, L_ROUTER, 0},
    /* ---- 4.10 grouping ops (EXACT) ---- */
    {"moe_count_tokens_per_expert", "moe_count", "4.10", NULL, NULL, NULL, "E <= 256", NULL, L_GROUPING, 0},
    {"moe_compute_grouping", "moe_count", "4.10", NULL, NULL, NULL, "E <= 256", NULL, L_GROUPING, 0},
    {"moe_count_experts_atomic", "moe_count", "4.10", NULL, NULL, NULL, "E <= 256", NULL, L_GROUPING, 0},
    {"moe_compute_expert_counts", "moe_count", "4.10", NULL, NULL, NULL, "any E", NULL, L_GROUPING, 0},
    {"moe_count_tokens_vectorized", "moe_count", "4.10", NULL, NULL, NULL, "E <= 128", NULL, L_GROUPING, 0},
    {"moe_compute_offsets", "moe_offsets", "4.10", NULL, NULL, NULL, NULL, NULL, L_GROUPING, 0},
    {"moe_compute_expert_offsets", "moe_offsets", "4.10", NULL, NULL, NULL,
     "one power-of-two TG with E <= TG <= 256", NULL, L_GROUPING, 0},
    {"moe_compute_expert_offsets_sequential", "moe_offsets", "4.10", NULL, NULL, NULL, NULL, NULL, L_GROUPING, 0},
    {"moe_prefix_sum_offsets", "moe_offsets", "4.10", NULL, NULL, NULL, NULL, NULL, L_GROUPING, 0},
    {"moe_scatter_tokens_to_experts", "moe_scatter", "4.10", NULL, NULL, NULL,
     "token view, unstable; E <= 256; write positions pre-set to offsets[0..E-1]", NULL, L_GROUPING, 0},
    {"moe_scatter_indices", "moe_scatter", "4.10", NULL, NULL, NULL,
     "flat view, unstable; E <= 256; write positions pre-set to offsets", NULL, L_GROUPING, 0},
    {"moe_compute_sorted_indices", "moe_scatter", "4.10", NULL, NULL, NULL,
     "token view + expert id per row + inverse, unstable", NULL, L_GROUPING, 0},
    {"moe_assign_tokens_atomic", "moe_scatter", "4.10", NULL, NULL, NULL, "buckets [E][cap]; cap >= max count", NULL,
     L_GROUPING, 0},
    {"moe_gpu_sort", "moe_group", "4.10", NULL, NULL, NULL,
     "token view, unstable; packed row = e*65536 + trunc(clamp(RN32(widen(p16)*65535), 0, 65535)); bounds [E+1]; "
     "one TG of 256; E <= 256", NULL, "one TG of 256", 0},
    {"expert_indices_validate", "validate_expert_ids", "4.10", NULL, NULL, NULL, "in place", NULL, L_GROUPING, 0},
    {"moe_clear_atomic_counters", "utility", "4.10", NULL, NULL, NULL, "not conformance-tested", NULL, NULL, 0},
    {"moe_verify_dispatch", "utility", "4.10", NULL, NULL, NULL, "not conformance-tested", NULL, NULL, 0},
    /* ---- 4.11 gather (EXACT), combine (f16 acc, then f32 acc), cast_f16 (EXACT) ---- */
    {"moe_gather_for_experts", "moe_gather", "4.11", NULL, NULL, NULL, "token view u32 [N]", B_GATHER, NULL, 0},
    {"moe_gather_for_experts_vec4", "moe_gather", "4.11", NULL, NULL, NULL, "token view u32 [N]", B_GATHER, NULL, 0},
    {"moe_gather_vec8", "moe_gather", "4.11", NULL, NULL, NULL, "token view u32 [N]", B_GATHER, NULL, 0},
    {"moe_gather_vec8_prefetch", "moe_gather", "4.11", NULL, NULL, NULL, "token view u32 [N]", B_GATHER, NULL, 0},
    {"moe_gather_single_token_simd", "moe_gather", "4.11", NULL, NULL, NULL, "T = 1: the row repeated k times",
     "0 x, 1 out, 2 H, 3 k", NULL, 0},
    {"expert_scatter_add", "moe_combine", "4.11", NULL, "f16", NULL, "k <= 8", NULL, NULL, 0},
    {"expert_scatter_add_simd", "moe_combine", "4.11", NULL, "f16", NULL, "k <= 8", NULL, NULL, 0},
    {"expert_scatter_add_indexed", "moe_combine", "4.11", NULL, "f16", NULL, "k <= 8", NULL, NULL, 0},
    {"moe_combine_weighted", "moe_combine", "4.11", NULL, "f16", NULL, NULL, NULL, NULL, 0},
    {"moe_combine_weighted_simd8", "moe_combine", "4.11", NULL, "f16", NULL, "k = 8", NULL, NULL, 0},
    {"moe_combine_scattered", "moe_combine", "4.11", NULL, "f16", NULL, NULL, NULL, NULL, 0},
    {"moe_scatter_expert_outputs", "moe_combine", "4.11", NULL, "f16", NULL, NULL, NULL, NULL, 0},
    {"moe_scatter_expert_outputs_simd", "moe_combine", "4.11", NULL, "f16", NULL, NULL, NULL, NULL, 0},
    {"moe_scatter_weighted_vec8_simd", "moe_combine", "4.11", NULL, "f16", NULL, NULL, NULL, NULL, 0},
    {"moe_scatter_simd_shuffle", "moe_combine", "4.11", NULL, "f16", NULL, NULL, NULL, NULL, 0},
    {"moe_scatter_tiled_registers", "moe_combine", "4.11", NULL, "f16", NULL, NULL, NULL, NULL, 0},
    {"moe_fused_gather_scatter_small", "moe_combine", "4.11", NULL, "f16", NULL, NULL, NULL, NULL, 0},
    {"expert_scatter_add_fp32_acc", "moe_combine", "4.11", NULL, "f32", NULL, "k <= 8", NULL, NULL, 0},
    {"moe_combine_fp32_acc", "moe_combine", "4.11", NULL, "f32", NULL, NULL, NULL, NULL, 0},
    {"expert_scatter_add_atomic", "moe_combine", "4.11", NULL, "f32", NULL,
     "k <= 8; one expert per launch, f32 atomics", NULL, NULL, 0},
    {"moe_combine_atomic_add", "moe_combine", "4.11", NULL, "f32", NULL, "one expert per launch, f32 atomics", NULL,
     NULL, 0},
    {"moe_scatter_combine_weighted", "moe_combine", "4.11", NULL, "f32", NULL, "f32 atomics", NULL, NULL, 0},
    {"expert_scatter_add_finalize", "cast_f16", "4.11", NULL, NULL, NULL, NULL, NULL, NULL, 0},
    {"moe_combine_finalize", "cast_f16", "4.11", NULL, NULL, NULL, NULL, NULL, NULL, 0},
    {"moe_finalize_output", "cast_f16", "4.11", NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
#define SYMBOL_COUNT (sizeof symbols / sizeof symbols[0])

size_t tr_kernel_symbol_count(void) { return SYMBOL_COUNT; }

const tr_kernel_symbol *tr_kernel_symbol_at(size_t i) { return i < SYMBOL_COUNT ? &symbols[i] : NULL; }

const tr_kernel_symbol *tr_kernel_symbol_find(const char *name)
{
    for (size_t i = 0; name && i < SYMBOL_COUNT; i++)
        if (strcmp(symbols[i].name, name) == 0)
            return &symbols[i];
    return NULL;
}

/* ---- KERNELS.md §4.14 ------------------------------------------------------------------------------------------- */

static const tr_unmapped_rule unmapped[] = {
    {"moe_dispatch_fused", 0, "FP4 op"},
    {"moe_dispatch_grouped", 0, "FP4 op"},
    {"moe_dispatch_atomic", 0, "FP4 op"},
    {"moe_dispatch_parallel", 0, "FP4 op"},
    {"moe_dispatch_optimized", 1, "FP4 op"},
    {"moe_dispatch_decode", 1, "FP4 op"},
    {"moe_dispatch_prerouted", 1, "FP4 op"},
    {"moe_dispatch_ultra_optimized_bf16", 0, "FP4 op"},
    {"expert_gather_fp4", 0, "FP4 op"},
    {"decode_gemv_fp4", 1, "FP4 op"},
    {"gemm_trellis_int8", 1, "int8 op"},
    {"dequant_trellis_int8", 0, "int8 op"},
    {"test_int8_", 1, "int8 op"},
    {"moe_gate_entropy_", 1, "gate entropy"},
    {"test_moe_softmax", 0, "router test kernel"},
    {"test_moe_topk", 0, "router test kernel"},
    {"test_moe_router_single", 0, "router test kernel"},
    {"moe_gather_coalesced", 0, "gather outside the registry contract"},
    {"expert_gather", 0, "dense expert-weight gather"},
    {"expert_gather_2d", 0, "dense expert-weight gather"},
    {"expert_gather_full", 0, "dense expert-weight gather"},
    {"expert_gather_vec8", 0, "dense expert-weight gather"},
    {"expert_gather_transposed", 0, "dense expert-weight gather"},
    {"expert_gather_with_hidden", 0, "dense expert-weight gather"},
    {"viterbi_", 1, "viterbi"},
};
#define UNMAPPED_COUNT (sizeof unmapped / sizeof unmapped[0])

size_t tr_unmapped_rule_count(void) { return UNMAPPED_COUNT; }

const tr_unmapped_rule *tr_unmapped_rule_at(size_t i) { return i < UNMAPPED_COUNT ? &unmapped[i] : NULL; }

const char *tr_kernel_symbol_unmapped_family(const char *name)
{
    for (size_t i = 0; name && i < UNMAPPED_COUNT; i++) {
        const tr_unmapped_rule *r = &unmapped[i];
        if (r->is_prefix ? strncmp(name, r->pattern, strlen(r->pattern)) == 0 : strcmp(name, r->pattern) == 0)
            return r->family;
    }
    return NULL;
}
