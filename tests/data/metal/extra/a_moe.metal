// a_moe.metal — test input: every generic kernel, so `trellis symbols` exits 0.
#include <metal_stdlib>
using namespace metal;

kernel void moe_trellis_swiglu_decode(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 0.0f; }
kernel void moe_trellis_swiglu_prefill4(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 0.0f; }
kernel void moe_trellis_swiglu_prefill4_fp32acc(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 0.0f; }
kernel void moe_trellis_swiglu(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 0.0f; }
kernel void moe_trellis_swiglu_fp32acc(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 0.0f; }
kernel void moe_trellis_swiglu_large_batch(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{ out[tid] = 0.0f; }
