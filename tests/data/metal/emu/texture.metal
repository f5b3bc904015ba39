// Correct kernel: texture reads (R32Float 2-D texture): read() at integer coordinates, and sample() with a
// constexpr nearest sampler at pixel centres (exact), plus a linear sample (fp32 filtering, TOLERANT).
#include <metal_stdlib>
using namespace metal;

kernel void tex_read(texture2d<float, access::read> tex [[texture(0)]],
                     device float *out [[buffer(0)]],
                     device float *lin [[buffer(1)]],
                     texture2d<float> stex [[texture(1)]],
                     uint2 gid [[thread_position_in_grid]])
{
    uint w = tex.get_width();
    constexpr sampler nearest(coord::pixel, filter::nearest, address::clamp_to_edge);
    constexpr sampler linear(coord::pixel, filter::linear, address::clamp_to_edge);
    float a = tex.read(gid).x;
    float b = stex.sample(nearest, float2(gid) + 0.5f).x;
    out[gid.y * w + gid.x] = a + b;
    lin[gid.y * w + gid.x] = stex.sample(linear, float2(gid) + float2(1.0f, 0.5f)).x;
}

// 1-D texture (RG32Float, nearest sample in normalized coordinates at texel centres) and a 2-D array texture read:
// out[i] = t1.sample(s, (i + 0.5) / w).y + arr.read(uint2(i % 4, 0), i / 4).x
kernel void tex_1d_array(texture1d<float> t1 [[texture(0)]],
                         texture2d_array<float, access::read> arr [[texture(1)]],
                         sampler s [[sampler(0)]],
                         device float *out [[buffer(0)]],
                         uint i [[thread_position_in_grid]])
{
    float w = float(t1.get_width());
    out[i] = t1.sample(s, (float(i) + 0.5f) / w).y + arr.read(uint2(i % 4, 0), i / 4).x;
}
