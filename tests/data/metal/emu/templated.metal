// Correct kernels: a template kernel instantiated twice with [[host_name]] (the launcher calls scale_copy<T, S>),
// and a clang ext_vector_type typedef (rewritten to metal::vec<float, 4>).
// scale_copy_f32: out[i] = in[i] * 3; scale_copy_f16: out[i] = in[i] * 2 (binary16)
// ext_vec: out[i] = ((v.x + v.y*2) + v.z*3) + v.w*4
#include <metal_stdlib>
using namespace metal;

typedef float float4_ext __attribute__((ext_vector_type(4)));

template <typename T, int SCALE>
kernel void scale_copy(device const T *in [[buffer(0)]],
                       device T *out [[buffer(1)]],
                       uint gid [[thread_position_in_grid]])
{
    out[gid] = in[gid] * T(SCALE);
}

template [[host_name("scale_copy_f32")]] kernel void scale_copy<float, 3>(device const float *, device float *, uint);
template [[host_name("scale_copy_f16")]] kernel void scale_copy<half, 2>(device const half *, device half *, uint);

kernel void ext_vec(device const float4_ext *in [[buffer(0)]],
                    device float *out [[buffer(1)]],
                    uint gid [[thread_position_in_grid]])
{
    float4_ext v = in[gid];
    out[gid] = v.x + v.y * 2.0 + v.z * 3.0 + v.w * 4.0;
}
