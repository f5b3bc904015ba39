// DEFECT (threadgroup race): dequant_trellis_packed_cached stages the grid in threadgroup memory but omits the
// barrier between the staging stores and the first read, so a lane may read an entry another lane has not stored
// yet.  What it reads depends on the order the lanes run in: `trellis conform --backend metal-emu` runs each case
// under two schedules and reports FAIL "schedule-dependent output".
#include "../dq_helpers.h"

kernel void dequant_trellis_packed_cached(device const uchar *packed [[buffer(0)]],
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
                                          uint2 gid [[thread_position_in_grid]],
                                          uint tid [[thread_index_in_threadgroup]])
{
    threadgroup float g[256];
    for (uint i = tid; i < n_levels; i += 256)
        g[i] = grid[i];
    // BUG: threadgroup_barrier(mem_flags::mem_threadgroup) missing here
    uint n = gid.x, k = gid.y;
    if (n >= N || k >= K)
        return;
    out[ulong(k) * N + n] = dq_w16(g[dq_index(packed, k, n, N, bits)], S, su, sv, k, n, N, gs);
}
