// gather_combine.metal — KERNELS.md §4.11: moe_gather (EXACT), moe_combine (ORDERED), cast_f16 (EXACT).
//
// moe_gather: out[r] = x[token view[r]] (a row copy).  Bindings (§4.11): moe_gather_for_experts, _vec4,
//   moe_gather_vec8, _vec8_prefetch: 0 x f16 [T][H], 1 token view u32 [N], 2 out f16 [N][H], 3 N, 4 H;
//   launch 256 threads, grid (⌈H/256⌉, N, 1), thread (h, r) copies element h of row r.
//   moe_gather_single_token_simd (T = 1: the row repeated k times): 0 x [H], 1 out [k][H], 2 H, 3 k; launch 256
//   threads, grid (⌈H/256⌉, k, 1).
// moe_combine (MOE.md §2), one thread per output element (t, h), slots in order:
//   acc f32: out = SEQ_j RN32(w_tj · y_tjh) from +0, then + shared, then + residual (each one RN32 add);
//   acc f16: acc = +0; acc = fmah(w_tj, y_tjh, acc) for j ascending; then acc + shared, + residual in f16.
//   KERNELS.md gives no binding for the combine symbols; ours (launch 256 threads, grid (⌈H/256⌉, T, 1)):
//   moe_combine_fp32_acc (f32): 0 y f32 [T][k][H], 1 w f32 [T][k], 2 shared f32 [T][H], 3 residual f32 [T][H],
//       4 out f32 [T][H], 5 T, 6 k, 7 H, 8 has_shared, 9 has_residual (uint; an absent addend's buffer is not read).
//   moe_combine_weighted (f16): the same slots with f16 y, w, shared, residual and out.
// cast_f16 (moe_combine_finalize, expert_scatter_add_finalize, moe_finalize_output): 0 in f32 [n], 1 out f16 [n],
//   2 n; out = RNh(in); launch 256 threads, grid (⌈n/256⌉, 1, 1).
#include "trellis_common.h"

#define GATHER_PARAMS                                                                                                  \
    device const half *x [[buffer(0)]], device const uint *tokens [[buffer(1)]], device half *out [[buffer(2)]],      \
        constant uint &N [[buffer(3)]], constant uint &H [[buffer(4)]], uint2 gid [[thread_position_in_grid]]

inline void gather_row(device const half *x, device const uint *tokens, device half *out, uint N, uint H, uint2 gid)
{
    uint h = gid.x, r = gid.y;
    if (h >= H || r >= N)
        return;
    out[ulong(r) * H + h] = x[ulong(tokens[r]) * H + h];
}

kernel void moe_gather_for_experts(GATHER_PARAMS) { gather_row(x, tokens, out, N, H, gid); }
kernel void moe_gather_for_experts_vec4(GATHER_PARAMS) { gather_row(x, tokens, out, N, H, gid); }
kernel void moe_gather_vec8(GATHER_PARAMS) { gather_row(x, tokens, out, N, H, gid); }
kernel void moe_gather_vec8_prefetch(GATHER_PARAMS) { gather_row(x, tokens, out, N, H, gid); }

kernel void moe_gather_single_token_simd(device const half *x [[buffer(0)]],
                                         device half *out [[buffer(1)]],
                                         constant uint &H [[buffer(2)]],
                                         constant uint &k [[buffer(3)]],
                                         uint2 gid [[thread_position_in_grid]])
{
    uint h = gid.x, j = gid.y;
    if (h >= H || j >= k)
        return;
    out[ulong(j) * H + h] = x[h];
}

kernel void moe_combine_fp32_acc(device const float *y [[buffer(0)]],
                                 device const float *w [[buffer(1)]],
                                 device const float *shared_ [[buffer(2)]],
                                 device const float *residual [[buffer(3)]],
                                 device float *out [[buffer(4)]],
                                 constant uint &T [[buffer(5)]],
                                 constant uint &k [[buffer(6)]],
                                 constant uint &H [[buffer(7)]],
                                 constant uint &has_shared [[buffer(8)]],
                                 constant uint &has_residual [[buffer(9)]],
                                 uint2 gid [[thread_position_in_grid]])
{
    uint h = gid.x, t = gid.y;
    if (h >= H || t >= T)
        return;
    float acc = 0.0f;
    for (uint j = 0; j < k; j++) {
        float c = w[ulong(t) * k + j] * y[(ulong(t) * k + j) * H + h];
        acc = acc + c;
    }
    if (has_shared != 0)
        acc = acc + shared_[ulong(t) * H + h];
    if (has_residual != 0)
        acc = acc + residual[ulong(t) * H + h];
    out[ulong(t) * H + h] = acc;
}

kernel void moe_combine_weighted(device const half *y [[buffer(0)]],
                                 device const half *w [[buffer(1)]],
                                 device const half *shared_ [[buffer(2)]],
                                 device const half *residual [[buffer(3)]],
                                 device half *out [[buffer(4)]],
                                 constant uint &T [[buffer(5)]],
                                 constant uint &k [[buffer(6)]],
                                 constant uint &H [[buffer(7)]],
                                 constant uint &has_shared [[buffer(8)]],
                                 constant uint &has_residual [[buffer(9)]],
                                 uint2 gid [[thread_position_in_grid]])
{
    uint h = gid.x, t = gid.y;
    if (h >= H || t >= T)
        return;
    half acc = 0.0h;
    for (uint j = 0; j < k; j++)
        acc = fma(w[ulong(t) * k + j], y[(ulong(t) * k + j) * H + h], acc);
    if (has_shared != 0)
        acc = acc + shared_[ulong(t) * H + h];
    if (has_residual != 0)
        acc = acc + residual[ulong(t) * H + h];
    out[ulong(t) * H + h] = acc;
}

#define CAST_PARAMS                                                                                                    \
    device const float *in [[buffer(0)]], device half *out [[buffer(1)]], constant uint &n [[buffer(2)]],             \
        uint gid [[thread_position_in_grid]]

kernel void moe_combine_finalize(CAST_PARAMS)
{
    if (gid < n)
        out[gid] = half(in[gid]);
}

kernel void expert_scatter_add_finalize(CAST_PARAMS)
{
    if (gid < n)
        out[gid] = half(in[gid]);
}

kernel void moe_finalize_output(CAST_PARAMS)
{
    if (gid < n)
        out[gid] = half(in[gid]);
}
