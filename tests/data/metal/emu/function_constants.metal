// Correct kernel: function constants (a runtime table), including a program-scope constant derived from one.
// out[i] = in[i] * (has_scale ? scale : 1) + (use_bias ? bias[i] : 0)
#include <metal_stdlib>
using namespace metal;

constant bool use_bias [[function_constant(0)]];
constant float scale [[function_constant(1)]];
constant bool has_scale = is_function_constant_defined(scale);

kernel void fc_affine(device const float *in [[buffer(0)]],
                      device const float *bias [[buffer(1)]],
                      device float *out [[buffer(2)]],
                      uint gid [[thread_position_in_grid]])
{
    float v = in[gid];
    if (has_scale)
        v *= scale;
    if (use_bias)
        v += bias[gid];
    out[gid] = v;
}
