// moe_partial.metal — test input: the generic kernel moe_trellis_swiglu_prefill4 is missing (its name only appears
// in this comment and in the string below), so `trellis symbols` exits 1.
#include <metal_stdlib>
using namespace metal;

constant const char *todo = "kernel void moe_trellis_swiglu_prefill4(device float *out)";

kernel void moe_trellis_swiglu_decode(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 0.0f; }
kernel void moe_trellis_swiglu_prefill4_fp32acc(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 0.0f; }
kernel void moe_trellis_swiglu(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 0.0f; }
kernel void moe_trellis_swiglu_fp32acc(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 0.0f; }
kernel void moe_trellis_swiglu_large_batch(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 0.0f; }
