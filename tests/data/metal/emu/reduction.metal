// Correct kernel: per-threadgroup sum with simd_sum, threadgroup memory and barriers.
// out[tg] = sum over the threadgroup's 256 inputs: each simdgroup reduces with simd_sum (butterfly 16,8,4,2,1),
// lane 0 stores the partial in threadgroup memory, then simdgroup 0 reduces the 8 partials.
#include <metal_stdlib>
using namespace metal;

kernel void reduce_sum(device const float *in [[buffer(0)]],
                       device float *out [[buffer(1)]],
                       uint gid [[thread_position_in_grid]],
                       uint lid [[thread_index_in_threadgroup]],
                       uint tgid [[threadgroup_position_in_grid]],
                       uint sg [[simdgroup_index_in_threadgroup]],
                       uint lane [[thread_index_in_simdgroup]],
                       uint nsg [[simdgroups_per_threadgroup]])
{
    threadgroup float partial[32];
    float s = simd_sum(in[gid]);
    if (lane == 0)
        partial[sg] = s;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (sg == 0) {
        float v = lane < nsg ? partial[lane] : 0.0f;
        v = simd_sum(v);
        if (lane == 0)
            out[tgid] = v;
    }
}

// Prefix sum and shuffles within one simdgroup: out[l] = inclusive prefix sum of in over lanes 0..l,
// out2[l] = in[l ^ 1] (xor shuffle), out3[l] = max over the simdgroup
kernel void simd_ops(device const float *in [[buffer(0)]],
                     device float *out [[buffer(1)]],
                     device float *out2 [[buffer(2)]],
                     device float *out3 [[buffer(3)]],
                     uint gid [[thread_position_in_grid]])
{
    float x = in[gid];
    out[gid] = simd_prefix_inclusive_sum(x);
    out2[gid] = simd_shuffle_xor(x, 1);
    out3[gid] = simd_max(x);
}

// Divergent collective: only lanes 0..15 of each simdgroup reach simd_sum; it resolves when nothing else can run
// (the other lanes wait at the barrier) with those 16 lanes, the others contributing the identity.
// out[i] = (lane < 16) ? sum of in over lanes 0..15 of the simdgroup : 0
kernel void half_lanes_sum(device const float *in [[buffer(0)]],
                           device float *out [[buffer(1)]],
                           uint gid [[thread_position_in_grid]],
                           uint lane [[thread_index_in_simdgroup]])
{
    float v = 0.0f;
    if (lane < 16)
        v = simd_sum(in[gid]);
    threadgroup_barrier(mem_flags::mem_none);
    out[gid] = v;
}
