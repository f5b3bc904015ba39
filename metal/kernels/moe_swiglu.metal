// moe_swiglu.metal — KERNELS.md §4.8 `moe_swiglu`: routed SwiGLU experts, probability-weighted, summed per token.
//
//   y_tj = expert_ffn(x_t; expert ids[t][j])          (trellis_moe.h moe_slot: canonical orders of §4.7)
//   c_tj = RN32(p_tj · y_tj)                           (p_tj = widen(probs f16); acc f16: y widened from f16)
//   out_t = SEQ over j = 0 … k−1 of c_tj, in f32 from +0 (duplicate ids contribute twice)
//
// acc f32 variants: g, u, y by L16, s = RN32(silu(g)·u).  acc f16 variants: g, u, y by H16T over f16 operands,
// s = RNh(RN32(silu(widen g)·widen u)).  silu is tk_silu (tr_expf bit for bit).  This is tr_ref_moe_swiglu in the
// variant's accumulation mode, bit for bit (order=canonical → ORDERED).
//
// Why one threadgroup per token row does all of it.  The canonical combine is a sequential sum over the slots of a
// token in slot order; done with atomics across the grid's z (slot) threadgroups its order would depend on the
// schedule, and the binding has no scratch buffer for per-slot results.  And every output column block needs the
// whole intermediate vector s (all I gate/up rows), so splitting the H columns over threadgroups would recompute
// gate/up once per block.  So the threadgroups of the listed grid at x = 0 (and z = 0) each take their token row(s),
// evaluate every slot in order — gate/up rows spread over the threads, s in threadgroup memory, then the down rows
// (one writer per output element) and the combine — and every other threadgroup returns at once.  The listed launch
// geometry is kept so a runner launches these exactly like the foreign kernels of the same symbols.
//
// Binding MOE18 (KERNELS.md §4.8): 0 x f16 [batch][H], 1 gate_w u8, 2 gate_S f16, 3 up_w, 4 up_S, 5 down_w,
// 6 down_S, 7 gate_su f16 [E][H], 8 gate_sv [E][I], 9 up_su, 10 up_sv, 11 down_su [E][I], 12 down_sv [E][H],
// 13 grid f16 (declared, not read: every projection uses grid_b of its own width, trellis_moe.h), 14 expert_ids u32
// [batch][top_k], 15 probs f16 [batch][top_k], 16 out f32 [batch][H], 17 MoEParams (12 × u32).
// `moe_trellis_swiglu_grouped`: 14 sorted_token_ids u32 (row of x/out per sorted entry), 15 offsets u32 [E+1],
// 16 sorted probs f16, 17 out, 18 MoEParams.  `moe_trellis_mixed_*`: MOE18 + 21 expert_bits u8 [E],
// 22 weight_offsets u32 [E] (byte offset of expert e in each weight buffer; g = u = d = expert_bits[e]).
// Domain: I ≤ 4096 (s lives in 16 KiB of threadgroup memory); valid ids (an id ≥ num_experts is skipped).
#include "trellis_moe.h"

// Rows [t0, t1) of the batch, every slot, by the NT threads of one threadgroup.  GB/UB/DB ≠ 0: the widths of a
// tuple-specialized kernel (the MoEParams widths are ignored); mixed: per-expert widths and byte offsets.
template <bool F32ACC, uint NT, uint GB, uint UB, uint DB>
inline void moe_rows(thread const moe_bufs &B, device const uint *ids, device const half *probs, device float *out,
                     constant MoEParams &p, device const uchar *expert_bits, device const uint *weight_offsets,
                     uint t0, uint t1, uint tid, threadgroup float *s32, threadgroup half *s16)
{
    uint H = p.hidden, I = p.intermediate, k = p.top_k;
    if (I > MOE_MAX_I)
        return;
    bool mixed = expert_bits != nullptr;
    for (uint t = t0; t < min(t1, p.batch); t++)
        for (uint j = 0; j < k; j++) {
            uint e = ids[ulong(t) * k + j];
            if (e >= p.num_experts)
                continue;
            uint gb = GB ? GB : p.gate_bits, ub = UB ? UB : p.up_bits, db = DB ? DB : p.down_bits;
            if (mixed)
                gb = ub = db = uint(expert_bits[e]);
            moe_proj G, U, D;
            moe_expert(B, e, H, I, gb, ub, db, p.group_size, mixed, mixed ? weight_offsets[e] : 0u, G, U, D);
            moe_slot<F32ACC, NT>(G, U, D, B.x + ulong(t) * H, float(probs[ulong(t) * k + j]), j == 0, MOE_COMBINE,
                                 out + ulong(t) * H, s32, s16, tid);
        }
}

#define MOE18_PARAMS                                                                                                   \
    MOE_WEIGHT_PARAMS, device const uint *expert_ids [[buffer(14)]], device const half *probs [[buffer(15)]],        \
        device float *out [[buffer(16)]], constant MoEParams &p [[buffer(17)]],                                        \
        uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]]

// Slotted launches, one token per threadgroup row y: grid (⌈H/64⌉ or ⌈H/128⌉, batch, top_k); threadgroup (0, y, 0)
// computes token y.
#define MOE_BODY_ROW(F32ACC, NT)                                                                                       \
    threadgroup float s32[F32ACC ? MOE_MAX_I : 1];                                                                     \
    threadgroup half s16[F32ACC ? 1 : MOE_MAX_I];                                                                      \
    if (tg.x != 0 || tg.z != 0)                                                                                        \
        return;                                                                                                        \
    moe_bufs B = MOE_BUFS;                                                                                             \
    moe_rows<F32ACC, NT, 0, 0, 0>(B, expert_ids, probs, out, p, nullptr, nullptr, tg.y, tg.y + 1, tid, s32, s16)

// acc f16; 128 threads, grid (⌈H/64⌉, batch, top_k).
kernel void moe_trellis_swiglu(MOE18_PARAMS) { MOE_BODY_ROW(false, 128); }

// acc f32; 128 threads, grid (⌈H/64⌉, batch, top_k).
kernel void moe_trellis_swiglu_fp32acc(MOE18_PARAMS) { MOE_BODY_ROW(true, 128); }

// acc f32; 128 threads, grid (⌈H/128⌉, batch, top_k).
kernel void moe_trellis_swiglu_large_batch(MOE18_PARAMS) { MOE_BODY_ROW(true, 128); }

// acc f16; 128 threads, grid (⌈H/64⌉, batch, top_k).
kernel void moe_trellis_swiglu_simd(MOE18_PARAMS) { MOE_BODY_ROW(false, 128); }

// Registered names (availability probed), acc f16, as base.
kernel void moe_trellis_fast_2bit_swiglu(MOE18_PARAMS) { MOE_BODY_ROW(false, 128); }
kernel void moe_trellis_mixed_bpw_swiglu(MOE18_PARAMS) { MOE_BODY_ROW(false, 128); }

// prefill4: four tokens per threadgroup row y (tokens 4y … 4y+3); 128 threads, grid (⌈H/64⌉, ⌈batch/4⌉, top_k).
#define MOE_BODY_ROW4(F32ACC)                                                                                          \
    threadgroup float s32[F32ACC ? MOE_MAX_I : 1];                                                                     \
    threadgroup half s16[F32ACC ? 1 : MOE_MAX_I];                                                                      \
    if (tg.x != 0 || tg.z != 0)                                                                                        \
        return;                                                                                                        \
    moe_bufs B = MOE_BUFS;                                                                                             \
    moe_rows<F32ACC, 128, 0, 0, 0>(B, expert_ids, probs, out, p, nullptr, nullptr, tg.y * 4, tg.y * 4 + 4, tid, s32, \
                                   s16)

kernel void moe_trellis_swiglu_prefill4(MOE18_PARAMS) { MOE_BODY_ROW4(false); }
kernel void moe_trellis_swiglu_prefill4_fp32acc(MOE18_PARAMS) { MOE_BODY_ROW4(true); }

// ---- decode (batch = 1): 128 threads, grid (⌈H/64⌉, top_k); threadgroup (0, 0) computes the token ---------------------

template <uint GB, uint UB, uint DB>
inline void moe_decode_body(thread const moe_bufs &B, device const uint *expert_ids, device const half *probs,
                            device float *out, constant MoEParams &p, uint3 tg, uint tid, threadgroup float *s32)
{
    if (tg.x != 0 || tg.y != 0)
        return;
    moe_rows<true, 128, GB, UB, DB>(B, expert_ids, probs, out, p, nullptr, nullptr, 0, 1, tid, s32, nullptr);
}

#define MOE_DECODE(GB, UB, DB)                                                                                         \
    threadgroup float s32[MOE_MAX_I];                                                                                  \
    moe_bufs B = MOE_BUFS;                                                                                             \
    moe_decode_body<GB, UB, DB>(B, expert_ids, probs, out, p, tg, tid, s32)

// acc f32, widths from MoEParams.
kernel void moe_trellis_swiglu_decode(MOE18_PARAMS) { MOE_DECODE(0, 0, 0); }

// acc f32, registered name (availability probed), as decode.
kernel void moe_trellis_swiglu_decode_gemv(MOE18_PARAMS) { MOE_DECODE(0, 0, 0); }

// Tuple-specialized decode kernels (MOE.md §5.3), one template (moe_decode_body<G,U,D>): gate decodes with grid_G,
// up with grid_U, down with grid_D (each computed from its width); declared domain batch = 1, tuple = (G,U,D).
kernel void moe_trellis_swiglu_decode_6_2_3(MOE18_PARAMS) { MOE_DECODE(6, 2, 3); }
kernel void moe_trellis_swiglu_decode_6_3_4(MOE18_PARAMS) { MOE_DECODE(6, 3, 4); }
kernel void moe_trellis_swiglu_decode_6_2_4(MOE18_PARAMS) { MOE_DECODE(6, 2, 4); }

// ---- grouped: 128 threads, grid (⌈H/64⌉, num_experts); threadgroup (0, e) evaluates expert e's segment ------------------
// For r in [offsets[e], offsets[e+1]) ascending: row = sorted_token_ids[r]; out[row] = +0 + RN32(p_r · y(x[row])).
// Each output row has exactly one writer (MOE.md §3.5).  acc f16.
kernel void moe_trellis_swiglu_grouped(MOE_WEIGHT_PARAMS,
                                       device const uint *sorted_token_ids [[buffer(14)]],
                                       device const uint *offsets [[buffer(15)]],
                                       device const half *sorted_probs [[buffer(16)]],
                                       device float *out [[buffer(17)]],
                                       constant MoEParams &p [[buffer(18)]],
                                       uint3 tg [[threadgroup_position_in_grid]],
                                       uint tid [[thread_index_in_threadgroup]])
{
    threadgroup half s16[MOE_MAX_I];
    uint e = tg.y;
    if (tg.x != 0 || e >= p.num_experts || p.intermediate > MOE_MAX_I)
        return;
    moe_bufs B = MOE_BUFS;
    uint H = p.hidden, I = p.intermediate;
    moe_proj G, U, D;
    moe_expert(B, e, H, I, p.gate_bits, p.up_bits, p.down_bits, p.group_size, false, 0u, G, U, D);
    for (uint r = offsets[e]; r < offsets[e + 1]; r++) {
        uint row = sorted_token_ids[r];
        moe_slot<false, 128>(G, U, D, x + ulong(row) * H, float(sorted_probs[r]), true, MOE_COMBINE,
                             out + ulong(row) * H, nullptr, s16, tid);
    }
}

// ---- mixed: per-expert width g = u = d = expert_bits[e], bodies at weight_offsets[e]; acc f32; 256 threads, ------------
// grid (⌈H/64⌉, batch, top_k); threadgroup (0, y, 0) computes token y.
#define MOE_MIXED_PARAMS                                                                                               \
    MOE_WEIGHT_PARAMS, device const uint *expert_ids [[buffer(14)]], device const half *probs [[buffer(15)]],        \
        device float *out [[buffer(16)]], constant MoEParams &p [[buffer(17)]],                                        \
        device const uchar *expert_bits [[buffer(21)]], device const uint *weight_offsets [[buffer(22)]],              \
        uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]]

#define MOE_MIXED_BODY                                                                                                 \
    threadgroup float s32[MOE_MAX_I];                                                                                  \
    if (tg.x != 0 || tg.z != 0)                                                                                        \
        return;                                                                                                        \
    moe_bufs B = MOE_BUFS;                                                                                             \
    moe_rows<true, 256, 0, 0, 0>(B, expert_ids, probs, out, p, expert_bits, weight_offsets, tg.y, tg.y + 1, tid, s32, \
                                 nullptr)

kernel void moe_trellis_mixed_swiglu(MOE_MIXED_PARAMS) { MOE_MIXED_BODY; }
kernel void moe_trellis_mixed_swiglu_decode(MOE_MIXED_PARAMS) { MOE_MIXED_BODY; }
kernel void moe_trellis_mixed_swiglu_prefill(MOE_MIXED_PARAMS) { MOE_MIXED_BODY; }
kernel void moe_trellis_mixed_swiglu_large(MOE_MIXED_PARAMS) { MOE_MIXED_BODY; }
