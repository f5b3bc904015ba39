// DEFECT (race): each lane writes its slot of threadgroup memory and reads its neighbour's slot without a barrier.
// The value read depends on whether the neighbour already ran: schedule-dependent output (FAIL under two policies).
#include <metal_stdlib>
using namespace metal;

kernel void tg_race(device const float *in [[buffer(0)]],
                    device float *out [[buffer(1)]],
                    uint gid [[thread_position_in_grid]],
                    uint lid [[thread_index_in_threadgroup]],
                    uint n [[threads_per_threadgroup]])
{
    threadgroup float slot[256];
    slot[lid] = in[gid];
    // missing: threadgroup_barrier(mem_flags::mem_threadgroup);
    out[gid] = slot[(lid + 1) % n];
}
