// DEFECT (early return before a barrier): lanes past n return, the others wait at the barrier (undefined on a GPU;
// the emulator releases the barrier and reports "early return before barrier").
#include <metal_stdlib>
using namespace metal;

kernel void early_exit(device const float *in [[buffer(0)]],
                       device float *out [[buffer(1)]],
                       constant uint &n [[buffer(2)]],
                       uint gid [[thread_position_in_grid]],
                       uint lid [[thread_index_in_threadgroup]])
{
    threadgroup float t[64];
    if (gid >= n)
        return;
    t[lid] = in[gid] * 2.0f;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[gid] = t[lid];
}

// DEFECT (divergent barrier): even and odd lanes wait at different barriers.
kernel void divergent(device float *out [[buffer(0)]],
                      uint lid [[thread_index_in_threadgroup]])
{
    if (lid % 2 == 0)
        threadgroup_barrier(mem_flags::mem_threadgroup);
    else
        threadgroup_barrier(mem_flags::mem_threadgroup);
    out[lid] = float(lid);
}
