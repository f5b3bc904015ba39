// hadamard_rows.metal — a foreign-style row Walsh–Hadamard transform (KERNELS.md §4.3 `hadamard`, rows layout,
// f16): one template kernel instantiated with [[host_name]] per size, a register butterfly inside each lane followed
// by simd_shuffle_xor stages across the simdgroup (no threadgroup memory, no barriers).  The §4.3 table declares
// these symbols order=canonical (class ORDERED, judged bitwise): the stages run in the canonical order (strides
// 1, 2, …, E/2 inside a lane, then E, 2E, …, N/2 across lanes), one rounding per add or subtract, and
// RNh(1/√N) is the format-rounded constant c_N.
//
//   y_i = Σ_j (−1)^popcount(i & j) x_j over the row (natural order), then · RNh(1/√N) when normalize ≠ 0.
// Launch (the runner's): one 32-thread threadgroup per row.  Lane l holds elements l·E … l·E + E − 1, E = N/32.
#include <metal_stdlib>
#include <metal_simdgroup>
using namespace metal;

template <ushort N>
kernel void hadamard_rows(device const half *in [[buffer(0)]],
                          device half *out [[buffer(1)]],
                          constant uint &R [[buffer(2)]],
                          constant uint &normalize [[buffer(3)]],
                          uint row [[threadgroup_position_in_grid]],
                          ushort lane [[thread_index_in_simdgroup]])
{
    constexpr ushort E = N / 32;
    if (row >= R)
        return;                         // uniform: the whole threadgroup leaves together
    device const half *x = in + row * N;
    half v[E];
    for (ushort e = 0; e < E; e++)
        v[e] = x[lane * E + e];
    for (ushort s = 1; s < E; s <<= 1)  // strides inside the lane
        for (ushort e = 0; e < E; e++)
            if ((e & s) == 0) {
                const half a = v[e], b = v[e + s];
                v[e] = a + b;
                v[e + s] = a - b;
            }
    for (ushort d = 1; d < 32; d <<= 1) // strides across lanes: partner lane ^ d
        for (ushort e = 0; e < E; e++) {
            const half o = simd_shuffle_xor(v[e], d);
            v[e] = (lane & d) ? o - v[e] : v[e] + o;
        }
    const half c = half(rsqrt(float(N)));
    for (ushort e = 0; e < E; e++)
        out[row * N + lane * E + e] = normalize ? v[e] * c : v[e];
}

template [[host_name("hadamard_transform_32")]] kernel void hadamard_rows<32>(device const half *, device half *,
                                                                              constant uint &, constant uint &, uint,
                                                                              ushort);
template [[host_name("hadamard_transform_64")]] kernel void hadamard_rows<64>(device const half *, device half *,
                                                                              constant uint &, constant uint &, uint,
                                                                              ushort);
