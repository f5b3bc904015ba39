// DEFECT (resource): dequant_trellis_packed_cached keeps a 40-entry ring of staged grids in threadgroup memory,
// 40 × 256 floats = 40 KiB, over the 32 KiB Apple limit: RESOURCE_ERROR (pipeline creation would fail on a Mac).
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
    threadgroup float ring[40][256];    // BUG: 40 KiB
    for (uint i = tid; i < n_levels; i += 256)
        ring[0][i] = grid[i];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint n = gid.x, k = gid.y;
    if (n >= N || k >= K)
        return;
    out[ulong(k) * N + n] = dq_w16(ring[0][dq_index(packed, k, n, N, bits)], S, su, sv, k, n, N, gs);
}
