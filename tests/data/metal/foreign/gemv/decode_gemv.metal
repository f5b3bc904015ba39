// decode_gemv.metal — a foreign-style decode GEMV (KERNELS.md §4.4 `gemm_trellis`, variant
// gemm_trellis_packed_decode: acc f16, order unspecified, judged TOLERANT): [[kernel]] attribute syntax, function
// constants with defaults, ushort builtins, simd_sum reductions, helpers from ../include/qtip/.
//
// C[m][n] = Σ_k A[m][k] · W16[n][k] (W16 as in dequant).  Launch (the runner's): 128 threads = 4 simdgroups,
// grid (⌈N/128⌉, ⌈M/32⌉).  Simdgroup s of threadgroup (gx, gy) handles the columns n = gx·128 + s·32 + j,
// j = 0..31, for the rows m = gy·32 + r, r < 32; lane l accumulates k = l, l + 32, … in half, then simd_sum.
#include "../include/qtip/bits.h"

using namespace metal;

constant uint kColsPerSimdFC [[function_constant(0)]];
constant uint kColsPerSimd = is_function_constant_defined(kColsPerSimdFC) ? kColsPerSimdFC : 32;
constant bool kSkipZeroRowsFC [[function_constant(1)]];
constant bool kSkipZeroRows = is_function_constant_defined(kSkipZeroRowsFC) && kSkipZeroRowsFC;

// binding GEMM: 0 A f16 [M][K], 1 packed, 2 S f32 [G][N], 3 grid f32, 4 su [K], 5 sv [N], 6 C f16 [M][N], 7 M,
// 8 K, 9 N, 10 bits, 11 n_levels, 12 gs
[[kernel]] void gemm_trellis_packed_decode(device const half *A,
                                           device const uchar *packed,
                                           device const float *scales,
                                           device const float *grid,
                                           device const float *su,
                                           device const float *sv,
                                           device half *C,
                                           constant uint &M,
                                           constant uint &K,
                                           constant uint &N,
                                           constant uint &bits,
                                           constant uint &n_levels,
                                           constant uint &group_size,
                                           uint3 tgpig [[threadgroup_position_in_grid]],
                                           ushort sg [[simdgroup_index_in_threadgroup]],
                                           ushort lane [[thread_index_in_simdgroup]])
{
    const uint n0 = tgpig.x * 128 + uint(sg) * kColsPerSimd;
    const uint m0 = tgpig.y * 32;
    for (uint j = 0; j < kColsPerSimd; j++) {
        const uint n = n0 + j;
        if (n >= N)
            break;                      // uniform across the simdgroup
        for (uint m = m0; m < min(M, m0 + 32); m++) {
            device const half *a = A + ulong(m) * K;
            half acc = 0.0h;
            for (uint k = lane; k < K; k += 32) {
                if (kSkipZeroRows && a[k] == 0.0h)
                    continue;
                const uint q = qtip::tile_at(packed, k, n, N, bits).index(qtip::in_tile(k, n));
                const half w = qtip::scale_weight<half>(grid[min(q, n_levels - 1)], scales[(k / group_size) * N + n],
                                                        su[k], sv[n]);
                acc += a[k] * w;
            }
            acc = simd_sum(acc);
            if (lane == 0)
                C[ulong(m) * N + n] = acc;
        }
    }
}
