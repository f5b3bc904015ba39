// gemm_trellis.metal — KERNELS.md §4.4 `gemm_trellis` (alias gemv_trellis): Y[m][n] = Σ_k A[m][k] · W16[n][k]
// for one quantized linear in the PK layout (rotation none: su and sv are folded into W16), then one conversion to f16.
//
// Canonical order (KERNELS.md §1), one thread per output column n, every row of its block:
//   acc f32 (`*_fp32acc`): L16 — q_l = +0 (l = 0..15); for k ascending q_{k mod 16} = fmaf(widen(A[m][k]), widen(W16),
//       q_{k mod 16}); then q_l += q_{l+s} for s = 8, 4, 2, 1; C = RNh(q_0).  The K loop runs over 16×16 tiles of the
//       weight (tile ti covers k = 16·ti … 16·ti+15), so lane l of L16 is exactly position li = k − 16·ti of the tile:
//       the 16 accumulators live in one thread, no cross-lane traffic.
//   acc f16 (all others): H16T — acc = +0 (f16); for each 16-wide tile of k ascending (the last may be short):
//       p = +0; p = fmah(A[m][k], W16[n][k], p) for k ascending in the tile; acc = RNh(acc + p); C = acc.
// Both are exactly tr_ref_gemm_trellis (acc f32 / f16, out f16) on the same f16 activations; so these kernels are
// ORDERED (order=canonical) and bitwise equal to `ref` on the emulator.
//
// W16[n][k] = RNh(RN32(RN32(RN32(grid[q]·S[k/gs][n])·su[k])·sv[n])) is decoded once per (tile, column) and row
// block: the 16 indices of column n in tile (ti, n/16) are the 2·b contiguous bytes of in-tile row n%16.
//
// Binding (KERNELS.md §4.4): 0 A f16 [M][K], 1 packed u8 (PK body), 2 S f32 [G][N], 3 grid f32 [2^b], 4 su f32 [K],
// 5 sv f32 [N], 6 C f16 [M][N], 7 M, 8 K, 9 N, 10 bits, 11 n_levels, 12 gs; the b = 2 kernels (`gemm_trellis_2bit*`,
// `gemm_trellis_w2*`) have no bits/n_levels: 10 gs.
// Launch: prefill kernels 256 threads, grid (⌈N/128⌉, ⌈M/128⌉): thread t has column 128·x + t%128 and rows
// 128·y + 64·(t/128) … +63; decode kernels (M ≤ 16, decode_gemv M = 1) 128 threads, grid (⌈N/128⌉, ⌈M/32⌉): thread t
// has column 128·x + t and rows 32·y … 32·y+31.  Threads outside N or M return at once (there are no barriers).
#include "trellis_common.h"

// Prefill geometry: 256 threads, TG covers 128 columns × 128 rows.
template <bool F32ACC>
inline void gemm_prefill(device const half *A, device const uchar *packed, device const float *S,
                         device const float *grid, device const float *su, device const float *sv, device half *C,
                         uint M, uint K, uint N, uint bits, uint gs, uint2 tg, uint tid)
{
    uint n = tg.x * 128 + tid % 128;
    uint m0 = tg.y * 128 + (tid / 128) * 64;
    if (n >= N || m0 >= M)
        return;
    tk_gemm_column<F32ACC, 64>(A, packed, S, grid, su, sv, C, K, N, bits, gs, n, m0, min(m0 + 64, M));
}

// Decode geometry: 128 threads, TG covers 128 columns × 32 rows.
template <bool F32ACC>
inline void gemm_decode(device const half *A, device const uchar *packed, device const float *S,
                        device const float *grid, device const float *su, device const float *sv, device half *C,
                        uint M, uint K, uint N, uint bits, uint gs, uint2 tg, uint tid)
{
    uint n = tg.x * 128 + tid;
    uint m0 = tg.y * 32;
    if (n >= N || m0 >= M)
        return;
    tk_gemm_column<F32ACC, 32>(A, packed, S, grid, su, sv, C, K, N, bits, gs, n, m0, min(m0 + 32, M));
}

#define GEMM_PARAMS                                                                                                    \
    device const half *A [[buffer(0)]], device const uchar *packed [[buffer(1)]],                                      \
        device const float *S [[buffer(2)]], device const float *grid [[buffer(3)]],                                   \
        device const float *su [[buffer(4)]], device const float *sv [[buffer(5)]], device half *C [[buffer(6)]],      \
        constant uint &M [[buffer(7)]], constant uint &K [[buffer(8)]], constant uint &N [[buffer(9)]],                \
        constant uint &bits [[buffer(10)]], constant uint &n_levels [[buffer(11)]], constant uint &gs [[buffer(12)]], \
        uint2 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]]

#define GEMM_PARAMS_B2                                                                                                 \
    device const half *A [[buffer(0)]], device const uchar *packed [[buffer(1)]],                                      \
        device const float *S [[buffer(2)]], device const float *grid [[buffer(3)]],                                   \
        device const float *su [[buffer(4)]], device const float *sv [[buffer(5)]], device half *C [[buffer(6)]],      \
        constant uint &M [[buffer(7)]], constant uint &K [[buffer(8)]], constant uint &N [[buffer(9)]],                \
        constant uint &gs [[buffer(10)]], uint2 tg [[threadgroup_position_in_grid]],                                   \
        uint tid [[thread_index_in_threadgroup]]

// ---- b 2..8 -----------------------------------------------------------------------------------------------------------

// H16T, prefill geometry.
kernel void gemm_trellis_packed(GEMM_PARAMS)
{
    gemm_prefill<false>(A, packed, S, grid, su, sv, C, M, K, N, bits, gs, tg, tid);
}

// L16, prefill geometry.
kernel void gemm_trellis_packed_fp32acc(GEMM_PARAMS)
{
    gemm_prefill<true>(A, packed, S, grid, su, sv, C, M, K, N, bits, gs, tg, tid);
}

// H16T, decode geometry (M ≤ 16).
kernel void gemm_trellis_packed_decode(GEMM_PARAMS)
{
    gemm_decode<false>(A, packed, S, grid, su, sv, C, M, K, N, bits, gs, tg, tid);
}

// H16T, prefill geometry (registered name; same computation as gemm_trellis_packed).
kernel void gemm_trellis_fused_reg(GEMM_PARAMS)
{
    gemm_prefill<false>(A, packed, S, grid, su, sv, C, M, K, N, bits, gs, tg, tid);
}

// H16T, decode geometry, M = 1 (registered name).
kernel void decode_gemv_trellis(GEMM_PARAMS)
{
    gemm_decode<false>(A, packed, S, grid, su, sv, C, M, K, N, bits, gs, tg, tid);
}

// ---- b = 2 (no bits / n_levels arguments) -------------------------------------------------------------------------------

kernel void gemm_trellis_2bit(GEMM_PARAMS_B2)
{
    gemm_prefill<false>(A, packed, S, grid, su, sv, C, M, K, N, 2, gs, tg, tid);
}

kernel void gemm_trellis_2bit_fused_reg(GEMM_PARAMS_B2)
{
    gemm_prefill<false>(A, packed, S, grid, su, sv, C, M, K, N, 2, gs, tg, tid);
}

kernel void gemm_trellis_w2(GEMM_PARAMS_B2)
{
    gemm_prefill<false>(A, packed, S, grid, su, sv, C, M, K, N, 2, gs, tg, tid);
}

kernel void gemm_trellis_w2_fp32acc(GEMM_PARAMS_B2)
{
    gemm_prefill<true>(A, packed, S, grid, su, sv, C, M, K, N, 2, gs, tg, tid);
}

kernel void gemm_trellis_2bit_decode(GEMM_PARAMS_B2)
{
    gemm_decode<false>(A, packed, S, grid, su, sv, C, M, K, N, 2, gs, tg, tid);
}

kernel void gemm_trellis_w2_decode(GEMM_PARAMS_B2)
{
    gemm_decode<false>(A, packed, S, grid, su, sv, C, M, K, N, 2, gs, tg, tid);
}
