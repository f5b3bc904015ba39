// gemm_qkv.metal — KERNELS.md §4.6 `gemm_trellis_qkv`: three independent gemm_trellis of one input X [M][K],
// Q [M][N_q], K [M][N_k], V [M][N_v] (a projection with 0 outputs is skipped), acc f16.
//
// Canonical order: per projection exactly gemm_trellis.metal's H16T column (one thread per output column n, every
// row; for each 16-wide K tile ascending p = fmah chain over the tile, acc = RNh(acc + p)), so each output equals
// tr_ref_gemm_trellis (acc f16, out f16) of its projection bit for bit.
//
// Binding (KERNELS.md §4.6): 0 A f16 [M][K]; 1–4 Q packed/S/su/sv; 5–8 K packed/S/su/sv; 9–12 V packed/S/su/sv
// (packed PK u8, S f32 [G][N_x], su f32 [K], sv f32 [N_x]); 13 grid f32 [2^b]; 14–16 outputs Q, K, V f16 [M][N_x];
// 17 M; 18 K; 19 N_q; 20 N_k; 21 N_v; 22 bits; 23 n_levels; 24 gs.  Domain: one b and gs for all three; M ≤ 16.
// Launch: 128 threads, grid (⌈max(N_q, N_k, N_v)/128⌉, ⌈M/32⌉); thread t has column n = 128·x + t of every
// projection with n < N_x, rows 32·y … 32·y+31.
#include "trellis_common.h"

kernel void fused_qkv_trellis_decode(device const half *A [[buffer(0)]],
                                     device const uchar *q_packed [[buffer(1)]],
                                     device const float *q_S [[buffer(2)]],
                                     device const float *q_su [[buffer(3)]],
                                     device const float *q_sv [[buffer(4)]],
                                     device const uchar *k_packed [[buffer(5)]],
                                     device const float *k_S [[buffer(6)]],
                                     device const float *k_su [[buffer(7)]],
                                     device const float *k_sv [[buffer(8)]],
                                     device const uchar *v_packed [[buffer(9)]],
                                     device const float *v_S [[buffer(10)]],
                                     device const float *v_su [[buffer(11)]],
                                     device const float *v_sv [[buffer(12)]],
                                     device const float *grid [[buffer(13)]],
                                     device half *q_out [[buffer(14)]],
                                     device half *k_out [[buffer(15)]],
                                     device half *v_out [[buffer(16)]],
                                     constant uint &M [[buffer(17)]],
                                     constant uint &K [[buffer(18)]],
                                     constant uint &N_q [[buffer(19)]],
                                     constant uint &N_k [[buffer(20)]],
                                     constant uint &N_v [[buffer(21)]],
                                     constant uint &bits [[buffer(22)]],
                                     constant uint &n_levels [[buffer(23)]],
                                     constant uint &gs [[buffer(24)]],
                                     uint2 tg [[threadgroup_position_in_grid]],
                                     uint tid [[thread_index_in_threadgroup]])
{
    uint n = tg.x * 128 + tid;
    uint m0 = tg.y * 32;
    if (m0 >= M)
        return;
    uint m1 = min(m0 + 32, M);
    if (n < N_q)
        tk_gemm_column<false, 32>(A, q_packed, q_S, grid, q_su, q_sv, q_out, K, N_q, bits, gs, n, m0, m1);
    if (n < N_k)
        tk_gemm_column<false, 32>(A, k_packed, k_S, grid, k_su, k_sv, k_out, K, N_k, bits, gs, n, m0, m1);
    if (n < N_v)
        tk_gemm_column<false, 32>(A, v_packed, v_S, grid, v_su, v_sv, v_out, K, N_v, bits, gs, n, m0, m1);
}
