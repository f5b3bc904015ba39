// DEFECT (early return before a barrier): dequant_trellis_packed_cached does its bounds check before the barrier, so
// on a partial tile the lanes outside the output return while the others wait at threadgroup_barrier (undefined
// behaviour in Metal: a barrier must be reached by every thread of the threadgroup).  The outputs are still right
// in the emulator, which releases the barrier and records the diagnostic "early return before barrier": a note on
// a passing case, FAIL under --strict.
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
    uint n = gid.x, k = gid.y;
    if (n >= N || k >= K)               // BUG: returns before the barrier below
        return;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[ulong(k) * N + n] = dq_w16(g[dq_index(packed, k, n, N, bits)], S, su, sv, k, n, N, gs);
}
