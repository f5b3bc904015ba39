// DEFECT (infinite spin): dequant_trellis_packed waits for a "grid ready" flag that the host was supposed to store
// in the first word of the output before the launch; nothing ever stores it, so every lane spins forever.  The
// emulator's watchdog (--case-timeout) turns it into TIMEOUT.
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
    device atomic_uint *ready = (device atomic_uint *)out;
    while (atomic_load_explicit(ready, memory_order_relaxed) != 1u) {
        // BUG: spins on a flag nobody sets
    }
    uint n = gid.x, k = gid.y;
    if (n >= N || k >= K)
        return;
    out[ulong(k) * N + n] = dq_w16(grid[dq_index(packed, k, n, N, bits)], S, su, sv, k, n, N, gs);
}
