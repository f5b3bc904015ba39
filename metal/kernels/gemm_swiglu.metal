// gemm_swiglu.metal — KERNELS.md §4.5 `gemm_trellis_swiglu`: fused dense gate/up projections with SwiGLU,
//   S[m][n] = RNh( RN32( silu(widen(g16[m][n])) · widen(u16[m][n]) ) ),
//   g16 = H16T Σ_k A[m][k]·Wg16[n][k],  u16 = H16T Σ_k A[m][k]·Wu16[n][k]            (acc f16; K = H, N = I)
// silu(z) = z / (1 + tr_expf(−z)) in f32 (tk_silu: tr_expf bit for bit, correctly rounded division).
//
// Canonical order: as gemm_trellis.metal (one thread per output column n, every row of its block): for each
// 16-wide K tile ascending, p = +0, p = fmah(A, W16, p) over the tile, acc = RNh(acc + p), for gate and up in the same
// tile loop (two independent H16T chains).  This is tr_ref_gemm_trellis_swiglu (acc f16) bit for bit.
//
// Binding (KERNELS.md §4.5): 0 A f16 [M][K], 1 packed_gate u8 (PK), 2 S_gate f32 [G][N], 3 packed_up, 4 S_up,
// 5 grid f32 [2^b], 6 su f32 [K], 7 sv f32 [N], 8 C f16 [M][N], 9 M, 10 K, 11 N, 12 bits, 13 n_levels, 14 gs.
// Declared domain: gate and up share b, su and sv.
// Launch: gemm_trellis_swiglu_gate_up 256 threads, grid (⌈N/128⌉, ⌈M/128⌉) (thread t: column 128·x + t%128, rows
// 128·y + 64·(t/128) … +63); _decode 128 threads, grid (⌈N/128⌉, ⌈M/32⌉) (thread t: column 128·x + t, rows 32·y …
// +31), M ≤ 16.
#include "trellis_common.h"

template <uint MAXR>
inline void swiglu_column(device const half *A, device const uchar *pg, device const float *Sg,
                          device const uchar *pu, device const float *Su, device const float *grid,
                          device const float *su, device const float *sv, device half *C, uint K, uint N, uint bits,
                          uint gs, uint n, uint m0, uint m1)
{
    uint T_I = (K + 15) / 16;
    half accg[MAXR], accu[MAXR], wg[16], wu[16];
    for (uint r = 0; r < MAXR; r++) {
        accg[r] = 0.0h;
        accu[r] = 0.0h;
    }
    for (uint ti = 0; ti < T_I; ti++) {
        uint kn = min(16u, K - ti * 16);
        tk_gemm_decode_col(pg, Sg, grid, su, sv, K, N, bits, gs, n, ti, kn, wg);
        tk_gemm_decode_col(pu, Su, grid, su, sv, K, N, bits, gs, n, ti, kn, wu);
        for (uint m = m0; m < m1; m++) {
            device const half *a = A + ulong(m) * K + ti * 16;
            half p = 0.0h, q = 0.0h;
            for (uint li = 0; li < kn; li++) {
                p = fma(a[li], wg[li], p);
                q = fma(a[li], wu[li], q);
            }
            accg[m - m0] = accg[m - m0] + p;
            accu[m - m0] = accu[m - m0] + q;
        }
    }
    for (uint m = m0; m < m1; m++) {
        float s = tk_silu(float(accg[m - m0]));
        float v = s * float(accu[m - m0]);
        C[ulong(m) * N + n] = half(v);
    }
}

#define SWIGLU_PARAMS                                                                                                  \
    device const half *A [[buffer(0)]], device const uchar *pg [[buffer(1)]], device const float *Sg [[buffer(2)]],  \
        device const uchar *pu [[buffer(3)]], device const float *Su [[buffer(4)]],                                    \
        device const float *grid [[buffer(5)]], device const float *su [[buffer(6)]],                                  \
        device const float *sv [[buffer(7)]], device half *C [[buffer(8)]], constant uint &M [[buffer(9)]],            \
        constant uint &K [[buffer(10)]], constant uint &N [[buffer(11)]], constant uint &bits [[buffer(12)]],          \
        constant uint &n_levels [[buffer(13)]], constant uint &gs [[buffer(14)]],                                      \
        uint2 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]]

kernel void gemm_trellis_swiglu_gate_up(SWIGLU_PARAMS)
{
    uint n = tg.x * 128 + tid % 128;
    uint m0 = tg.y * 128 + (tid / 128) * 64;
    if (n >= N || m0 >= M)
        return;
    swiglu_column<64>(A, pg, Sg, pu, Su, grid, su, sv, C, K, N, bits, gs, n, m0, min(m0 + 64, M));
}

kernel void gemm_trellis_swiglu_gate_up_decode(SWIGLU_PARAMS)
{
    uint n = tg.x * 128 + tid;
    uint m0 = tg.y * 32;
    if (n >= N || m0 >= M)
        return;
    swiglu_column<32>(A, pg, Sg, pu, Su, grid, su, sv, C, K, N, bits, gs, n, m0, min(m0 + 32, M));
}
