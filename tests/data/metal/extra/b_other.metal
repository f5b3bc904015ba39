// b_other.metal — test input: a mapped kernel the policy never returns (unreferenced), names of KERNELS.md §4.14 and
// an unknown name (unmapped), and a second definition of a generic kernel (the first one, in a_moe.metal, counts).
#include <metal_stdlib>
using namespace metal;

kernel void dequant_trellis_packed(device const uchar *packed [[buffer(0)]], device half *out [[buffer(5)]],
                                   uint2 gid [[thread_position_in_grid]])
{ out[gid.x] = half(packed[gid.y]); }

kernel void moe_dispatch_fused(device float *out [[buffer(0)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 0.0f; }

kernel void viterbi_decode_step(device float *out [[buffer(0)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 0.0f; }

kernel void my_custom_kernel(device float *out [[buffer(0)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 0.0f; }

kernel void moe_trellis_swiglu(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 1.0f; }
