// dq_helpers.h — shared by the deliberately defective kernels of tests/data/metal/defective/<case>/: the correct
// PK decode of KERNELS.md §4.1 (`dequant_grid`, binding family DQ_PK), so that each case differs from a correct
// kernel only by its one defect.
//
//   W16[n][k] = RNh( RN32( RN32( RN32(grid_b[q] · S[k/gs][n]) · su[k]) · sv[n]) ),   GEMM view out[k][n], N = O, K = I
//   q = b-bit index of element e = (n%16)·16 + (k%16) of tile (k/16, n/16) at byte (ti·T_O + to)·32·b, LSB first.
#pragma once
#include <metal_stdlib>
using namespace metal;

inline uint dq_index(device const uchar *packed, uint k, uint n, uint N, uint b)
{
    uint T_O = (N + 15) / 16;
    device const uchar *tile = packed + (ulong(k / 16) * T_O + n / 16) * (32u * b);
    uint p = ((n % 16) * 16 + (k % 16)) * b;
    uint v = uint(tile[p >> 3]);
    if ((p & 7u) + b > 8u)
        v |= uint(tile[(p >> 3) + 1]) << 8;
    return (v >> (p & 7u)) & ((1u << b) - 1u);
}

inline half dq_w16(float g, device const float *S, device const float *su, device const float *sv, uint k, uint n,
                   uint N, uint gs)
{
    float w = g * S[ulong(k / gs) * N + n];
    w = w * su[k];
    w = w * sv[n];
    return half(w);
}
