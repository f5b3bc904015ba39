// Correct kernel (performance target, METAL.md §8): y[n] = sum_k W[n][k] * x[k], f32, M = 1.
// One simdgroup per output row: lane l accumulates k = l, l+32, ... with fmaf, then simd_sum (butterfly 16..1).
// 256 threads = 8 rows per threadgroup; grid = N/8 threadgroups.
#include <metal_stdlib>
using namespace metal;

kernel void gemv_f32(device const float *W [[buffer(0)]],
                     device const float *x [[buffer(1)]],
                     device float *y [[buffer(2)]],
                     constant uint &K [[buffer(3)]],
                     constant uint &N [[buffer(4)]],
                     uint tgid [[threadgroup_position_in_grid]],
                     uint sg [[simdgroup_index_in_threadgroup]],
                     uint lane [[thread_index_in_simdgroup]],
                     uint nsg [[simdgroups_per_threadgroup]])
{
    uint n = tgid * nsg + sg;
    if (n >= N)
        return;
    device const float *row = W + (ulong)n * K;
    float acc = 0.0f;
    for (uint k = lane; k < K; k += 32)
        acc = fma(row[k], x[k], acc);
    acc = simd_sum(acc);
    if (lane == 0)
        y[n] = acc;
}
