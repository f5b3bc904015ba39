// moe_generic.metal — test input for `trellis symbols` (MOE.md §5.5): the six generic policy kernels, the decode
// GEMV and the grouped kernel.  Names in comments, strings and preprocessor lines must not count:
// kernel void moe_in_line_comment(device float *x)
/* kernel void moe_in_block_comment(device float *x)
   [[host_name("moe_in_block_comment_host")]] */
#include <metal_stdlib>
#define DECLARE(n) kernel void moe_in_macro_##n(device float *x)
using namespace metal;

constant const char *label = "kernel void moe_in_string(device float *x)";
constant char quote = '"';

kernel void moe_trellis_swiglu_decode(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{
    out[tid] = 0.0f;
}

kernel void moe_trellis_swiglu_prefill4(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{
    out[tid] = 0.0f;
}

kernel void moe_trellis_swiglu_prefill4_fp32acc(device float *out [[buffer(16)]],
                                                uint tid [[thread_position_in_grid]])
{
    out[tid] = 0.0f;
}

kernel
void
moe_trellis_swiglu(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{
    out[tid] = 0.0f;
}

kernel void moe_trellis_swiglu_fp32acc(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{
    out[tid] = 0.0f;
}

kernel void /* tile 128 */ moe_trellis_swiglu_large_batch(device float *out [[buffer(16)]],
                                                          uint tid [[thread_position_in_grid]])
{
    out[tid] = 0.0f;
}

kernel void moe_trellis_swiglu_decode_gemv(device float *out [[buffer(16)]], uint tid [[thread_position_in_grid]])
{
    out[tid] = 0.0f;
}

kernel void moe_trellis_swiglu_grouped(device float *out [[buffer(17)]], uint tid [[thread_position_in_grid]])
{
    out[tid] = 0.0f;
}
