// specialized.metal — tuple-specialized decode kernels (MOE.md §5.3): two instantiated through host_name, one
// written out.  The template's own name is not a host function.
#include <metal_stdlib>
using namespace metal;

template <uint G, uint U, uint D>
kernel void moe_decode_tuple(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{
    out[tid] = float(G + U + D);
}

template [[host_name("moe_trellis_swiglu_decode_6_2_3")]]
kernel void moe_decode_tuple<6, 2, 3>(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]]);

template [[ host_name ( "moe_trellis_swiglu_decode_6_3_4" ) ]]
kernel void moe_decode_tuple<6, 3, 4>(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]]);

template [[host_name("moe_trellis_swiglu_decode_4_4_4")]]
kernel void moe_decode_tuple<4, 4, 4>(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]]);

kernel void moe_trellis_swiglu_decode_6_2_4(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{
    out[tid] = 12.0f;
}
