// DEFECT (uninitialised threadgroup read): the scratch array is read but only half of it is ever written; the other
// half holds the arena's 0xFF poison (a NaN for float) in the output.
#include <metal_stdlib>
using namespace metal;

kernel void tg_uninit(device const float *in [[buffer(0)]],
                      device float *out [[buffer(1)]],
                      uint gid [[thread_position_in_grid]],
                      uint lid [[thread_index_in_threadgroup]],
                      uint n [[threads_per_threadgroup]])
{
    threadgroup float scratch[64];
    if (lid < n / 2)
        scratch[lid] = in[gid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[gid] = scratch[lid];
}
