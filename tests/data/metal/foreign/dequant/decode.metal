// decode.metal — foreign-style dequant kernels (KERNELS.md §4.1 `dequant_grid`, class EXACT): implicit buffer
// indices (no [[buffer(n)]]: Metal numbers them in declaration order), helpers from ../include/qtip/, a texture-based
// grid and an I16 variant.  Launch (the runner's, from the §4.1 table): TG 16×16, grid (⌈N/16⌉, ⌈K/16⌉); thread
// (x, y) is output column n = x (= o) and row k = y (= i) of out[K][N].
#include "../include/qtip/bits.h"

using namespace metal;

// binding DQ_PK: 0 packed u8, 1 S, 2 grid, 3 su, 4 sv, 5 out f16 [K][N], 6 K, 7 N, 8 n_levels, 9 bits, 10 gs
kernel void dequant_trellis_packed(device const uchar *packed,
                                   device const float *scales,
                                   device const float *grid,
                                   device const float *su,
                                   device const float *sv,
                                   device half *out,
                                   constant uint &K,
                                   constant uint &N,
                                   constant uint &n_levels,
                                   constant uint &bits,
                                   constant uint &group_size,
                                   uint2 pos [[thread_position_in_grid]])
{
    const uint n = pos.x, k = pos.y;
    if (n >= N || k >= K)
        return;
    const qtip::PackedTile t = qtip::tile_at(packed, k, n, N, bits);
    const float g = grid[min(t.index(qtip::in_tile(k, n)), n_levels - 1)];
    out[ulong(k) * N + n] = qtip::scale_weight<half>(g, scales[(k / group_size) * N + n], su[k], sv[n]);
}

// binding DQ_TEX: 0 packed, 1 S, texture 0 grid (1-D R32Float, width 2^b), 2 su, 3 sv, 4 out, 5 K, 6 N,
// 7 n_levels, 8 bits, 9 gs.  Nearest sampling at pixel centres is exact.
kernel void dequant_trellis_packed_tex(device const uchar *packed [[buffer(0)]],
                                       device const float *scales [[buffer(1)]],
                                       texture1d<float, access::sample> grid_tex [[texture(0)]],
                                       device const float *su [[buffer(2)]],
                                       device const float *sv [[buffer(3)]],
                                       device half *out [[buffer(4)]],
                                       constant uint &K [[buffer(5)]],
                                       constant uint &N [[buffer(6)]],
                                       constant uint &n_levels [[buffer(7)]],
                                       constant uint &bits [[buffer(8)]],
                                       constant uint &group_size [[buffer(9)]],
                                       uint2 pos [[thread_position_in_grid]])
{
    constexpr sampler grid_sampler(coord::pixel, address::clamp_to_edge, filter::nearest);
    const uint n = pos.x, k = pos.y;
    if (n >= N || k >= K)
        return;
    const uint q = qtip::tile_at(packed, k, n, N, bits).index(qtip::in_tile(k, n));
    const float g = grid_tex.sample(grid_sampler, float(q) + 0.5f).r;
    out[ulong(k) * N + n] = qtip::scale_weight<half>(g, scales[(k / group_size) * N + n], su[k], sv[n]);
}

// binding DQ_I16S: 0 idx i16 [T_I][T_O][256] (in-tile position (k%16)·16 + n%16), 1 S, 2 grid, 3 su, 4 sv, 5 out,
// 6 K, 7 N, 8 n_levels, 9 gs.  Implicit indices again; the scalars passed by value.
kernel void dequant_trellis_with_signs(device const short *idx,
                                       device const float *scales,
                                       device const float *grid,
                                       device const float *su,
                                       device const float *sv,
                                       device half *out,
                                       constant uint &K,
                                       constant uint &N,
                                       constant uint &n_levels,
                                       constant uint &group_size,
                                       uint2 pos [[thread_position_in_grid]])
{
    const uint n = pos.x, k = pos.y;
    if (n >= N || k >= K)
        return;
    const uint tiles_out = (N + 15) / 16;
    const ulong at = (ulong(k / 16) * tiles_out + n / 16) * qtip::kTileElems + (k % 16) * 16 + (n % 16);
    const uint q = uint(as_type<ushort>(idx[at])) % n_levels;
    out[ulong(k) * N + n] = qtip::scale_weight<half>(grid[q], scales[(k / group_size) * N + n], su[k], sv[n]);
}
