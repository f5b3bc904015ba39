// DEFECT (resource): 40 KiB of threadgroup memory, over Apple's 32 KiB limit (RESOURCE_ERROR).
#include <metal_stdlib>
using namespace metal;

kernel void tg_too_big(device float *out [[buffer(0)]],
                       uint lid [[thread_index_in_threadgroup]])
{
    threadgroup float big[10240];
    big[lid] = float(lid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[lid] = big[(lid + 1) % 32];
}
