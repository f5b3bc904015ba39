// DEFECT (read of never-written threadgroup memory): dequant_trellis_packed_cached was written for grids of at most
// 16 levels: only the first 16 lanes stage the grid, so for b >= 5 the entries 16 .. 2^b-1 of `g` are never written
// and the lanes that decode such an index read the emulator's 0xFF fill (a NaN).  FAIL; the runner's per-array
// poisoning names `g` as the array read before it was written.
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
    if (tid < 16)                       // BUG: should be `for (uint i = tid; i < n_levels; i += 256)`
        g[tid] = grid[tid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint n = gid.x, k = gid.y;
    if (n >= N || k >= K)
        return;
    out[ulong(k) * N + n] = dq_w16(g[dq_index(packed, k, n, N, bits)], S, su, sv, k, n, N, gs);
}
