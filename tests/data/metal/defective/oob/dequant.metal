// DEFECT (out-of-bounds store): dequant_trellis_packed_vec4 decodes 4 consecutive k per lane but only checks that
// the first of them is inside the output, so when K % 4 != 0 the last lane of each column stores up to 3 rows past
// the end of out[K][N].  The runner's guard bytes around the buffer change: FAIL ("out-of-bounds write").
#include "../dq_helpers.h"

kernel void dequant_trellis_packed_vec4(device const uchar *packed [[buffer(0)]],
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
    uint n = gid.x, k0 = gid.y * 4;
    if (n >= N || k0 >= K)
        return;
    for (uint c = 0; c < 4; c++) {
        uint k = k0 + c;                // BUG: no `if (k >= K) return;`
        uint kr = min(k, K - 1);        // (reads stay in bounds; only the store overruns)
        out[ulong(k) * N + n] = dq_w16(grid[dq_index(packed, kr, n, N, bits)], S, su, sv, kr, n, N, gs);
    }
}
