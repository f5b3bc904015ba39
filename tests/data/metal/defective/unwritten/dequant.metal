// DEFECT (unwritten outputs): dequant_trellis_packed assumes N (= O) is a multiple of 16 and skips the partial last
// tile column, so the last N % 16 columns of out[K][N] keep the poison the runner filled them with: FAIL
// ("output elements unwritten").
#include "../dq_helpers.h"

kernel void dequant_trellis_packed(device const uchar *packed [[buffer(0)]],
                                   device const float *S [[buffer(1)]],
                                   device const float *grid [[buffer(2)]],
                                   device const float *su [[buffer(3)]],
                                   device const float *sv [[buffer(4)]],
                                   device half *out [[buffer(5)]],
                                   constant uint &K [[buffer(6)]],
                                   constant uint &N [[buffer(7)]],
                                   constant uint &n_levels [[buffer(8)]],
                                   constant uint &bits [[buffer(9)]],
                                   constant uint &gs [[buffer(10)]],
                                   uint2 gid [[thread_position_in_grid]])
{
    uint n = gid.x, k = gid.y;
    if (n >= (N & ~15u) || k >= K)      // BUG: should be n >= N
        return;
    out[ulong(k) * N + n] = dq_w16(grid[dq_index(packed, k, n, N, bits)], S, su, sv, k, n, N, gs);
}
