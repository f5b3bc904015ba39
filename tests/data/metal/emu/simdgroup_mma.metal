// Correct kernel: C[M][N] = A[M][K] * B[K][N] with simdgroup_float8x8 (one simdgroup per 8x8 tile of C).
// Model 0: for each (i,j), acc = 0, then k ascending acc = fmaf(A[i][k], B[k][j], acc) inside each 8-wide k block,
// the blocks chained through the accumulator (C of one MMA is the result of the previous).
#include <metal_stdlib>
using namespace metal;

kernel void mma_gemm(device const float *A [[buffer(0)]],
                     device const float *B [[buffer(1)]],
                     device float *C [[buffer(2)]],
                     constant uint3 &dims [[buffer(3)]],     // M, N, K (multiples of 8)
                     uint2 tg [[threadgroup_position_in_grid]])
{
    uint M = dims.x, N = dims.y, K = dims.z;
    uint row = tg.y * 8, col = tg.x * 8;
    simdgroup_float8x8 acc = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    for (uint k = 0; k < K; k += 8) {
        simdgroup_float8x8 a, b;
        simdgroup_load(a, A, K, ulong2(k, row));
        simdgroup_load(b, B, N, ulong2(col, k));
        simdgroup_multiply_accumulate(acc, a, b, acc);
    }
    simdgroup_store(acc, C, N, ulong2(col, row));
    (void)M;
}
