// expert_ffn.metal — KERNELS.md §4.7 `expert_ffn`: one SwiGLU expert, output stored (not probability-weighted).
//
// acc f16 (this variant): x is f16; g_j = H16T Σ_k x_k·Wg16[j][k], u_j likewise; s_j = RNh(RN32(silu(widen g_j) ·
// widen u_j)); y_n = H16T Σ_j s_j·Wd16[n][j]; out[r][n] = widen(y_n) (the binding's output is f32).  H16T: per
// 16-wide tile of the reduction index p = fmah chain from +0, acc = RNh(acc + p).  This is tr_ref_expert_ffn (acc f16)
// bit for bit (order=canonical → ORDERED).  Evaluation: trellis_moe.h moe_slot (gate/up rows spread over the
// threads, s in threadgroup memory, then one thread per output column of the down projection).
//
// Binding (KERNELS.md §4.7): 0–13 as MOE18 (x f16 [R][H], gate_w, gate_S f16, up_w, up_S, down_w, down_S, gate_su,
// gate_sv, up_su, up_sv, down_su, down_sv, grid f16 — not read, as in moe_swiglu.metal), 14 out f32 [R][H],
// 15 batch (= R), 16 H, 17 I, 18 expert_id (local id in the stack), 19 gs, 20 n_levels.  Every projection decodes
// with b = log2(n_levels) (declared domain b = 3 for all three) and grid_b computed from b.  Domain I ≤ 4096.
// Launch: 256 threads, grid (⌈H/64⌉, R); threadgroup (0, r) computes row r, the others return at once (one
// threadgroup needs all of s for any output column; see moe_swiglu.metal).
#include "trellis_moe.h"

kernel void moe_trellis_fused_expert(MOE_WEIGHT_PARAMS,
                                     device float *out [[buffer(14)]],
                                     constant uint &batch [[buffer(15)]],
                                     constant uint &H [[buffer(16)]],
                                     constant uint &I [[buffer(17)]],
                                     constant uint &expert_id [[buffer(18)]],
                                     constant uint &gs [[buffer(19)]],
                                     constant uint &n_levels [[buffer(20)]],
                                     uint2 tg [[threadgroup_position_in_grid]],
                                     uint tid [[thread_index_in_threadgroup]])
{
    threadgroup half s16[MOE_MAX_I];
    uint r = tg.y;
    if (tg.x != 0 || r >= batch || I > MOE_MAX_I)
        return;
    uint b = ctz(n_levels);
    moe_bufs B = MOE_BUFS;
    moe_proj G, U, D;
    moe_expert(B, expert_id, H, I, b, b, b, gs, false, 0u, G, U, D);
    moe_slot<false, 256>(G, U, D, x + ulong(r) * H, 1.0f, true, MOE_STORE_Y, out + ulong(r) * H, nullptr, s16, tid);
}
