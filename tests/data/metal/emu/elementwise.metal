// Correct kernel: element-wise ops, half literals, swizzles, explicit buffer indices.
#include <metal_stdlib>
using namespace metal;

// y[i] = a * x[i] + y[i]
kernel void saxpy(device const float *x [[buffer(0)]],
                  device float *y [[buffer(1)]],
                  constant float &a [[buffer(2)]],
                  constant uint &n [[buffer(3)]],
                  uint gid [[thread_position_in_grid]])
{
    if (gid >= n)
        return;
    y[gid] = a * x[gid] + y[gid];
}

// out[i] = half(in[i]) * 0.5h + 1.0h, rounded per operation in binary16
kernel void half_affine(device const half *in [[buffer(0)]],
                        device half *out [[buffer(1)]],
                        uint gid [[thread_position_in_grid]])
{
    out[gid] = in[gid] * 0.5h + 1.0h;
}

// out[i] = (v.x + v.y, v.z * v.w, v.x, v.y) via swizzles on float4, plus a swizzle write
kernel void swizzle4(device const float4 *in [[buffer(0)]],
                     device float4 *out [[buffer(1)]],
                     uint gid [[thread_position_in_grid]])
{
    float4 v = in[gid];
    float2 p = v.xy + float2(v.y, 0.0);
    float4 r;
    r.zw = v.xy;
    r.x = p.x;
    r.y = v.z * v.w;
    r.zw = r.wz;
    out[gid] = r.xywz;
}
