// DEFECT (wrong grid for one bit width): dequant_trellis_packed has a fast path for b = 3 with a hard-coded table,
// but the table was computed with step 1.0 instead of the codebook's c = 1.24371088 (FORMAT.md §5), so every 3-bit
// weight decodes wrong while every other width is right.  FAIL for b = 3 with the first mismatch's coordinates.
#include "../dq_helpers.h"

constant float grid3_fast[8] = {-3.5f, -2.5f, -1.5f, -0.5f, 0.5f, 1.5f, 2.5f, 3.5f};   // BUG: (j - 3.5) * 1.0

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
    if (n >= N || k >= K)
        return;
    uint q = dq_index(packed, k, n, N, bits);
    float g = bits == 3 ? grid3_fast[q] : grid[q];
    out[ulong(k) * N + n] = dq_w16(g, S, su, sv, k, n, N, gs);
}
