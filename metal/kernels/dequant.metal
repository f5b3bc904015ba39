// dequant.metal — KERNELS.md §4.1 `dequant_grid`: decode a quantized linear to W16, in the GEMM view out[k][n] =
// W16[n][k] (K = I, N = O).  Class EXACT: every element is independent, so "canonical order" is just the rounding
// sequence of FORMAT.md §6.1, evaluated left to right with one RN32 per product and one final RNh:
//
//   W16[n][k] = RNh( RN32( RN32( RN32(grid_b[q] · S[k/gs][n]) · su[k]) · sv[n]) ),   q = index of (o = n, i = k)
//
// NOSIGN variants compute RNh(RN32(grid_b[q] · S)) (su = sv = 1 makes the two extra products exact).
//
// Index addressing.  PK / TEX: the packed body in GEMM tile order, tile (ti, to) = (k/16, n/16) at byte
// (ti·T_O + to)·32·b, in-tile element e = (n%16)·16 + (k%16), index bits [e·b, e·b + b) of the tile, LSB first.
// I16: idx i16 [T_I][T_O][256] with in-tile position (k%16)·16 + (n%16).  BULK: I16 tiles flattened, one f32 scale
// per tile.  Padded positions (n ≥ N or k ≥ K) are never read or written (BULK writes whole tiles, as its output is
// [n_tiles][256]).
//
// Launch geometry (all: threadgroups × threads per threadgroup, dispatchThreadgroups):
//   element kernels      TG (16, 16, 1), grid (⌈N/16⌉, ⌈K/16⌉, 1); thread (x, y) of the grid is (n, k)
//   *_vec4               TG (16, 16, 1), grid (⌈N/16⌉, ⌈K/64⌉, 1); thread (n, k4) does k = 4·k4 … 4·k4+3
//   *_tiled_vec4         TG (64, 1, 1),  grid (⌈N/16⌉, ⌈K/16⌉, 1); one TG per 16×16 tile (to, ti), thread t does
//                        n = 16·to + t%16, k = 16·ti + 4·(t/16) … +3
//   dequant_trellis_tiled*  TG (256, 1, 1), grid (⌈N/16⌉, ⌈K/16⌉, 1); thread t = in-tile position (k%16)·16 + n%16
//   dequant_trellis_aligned TG (16, 16, 1), grid (⌈N/64⌉, ⌈K/16⌉, 1); thread (n4, k) does n = 4·n4 … +3 (O % 4 = 0)
//   dequant_trellis_bulk TG (256, 1, 1), grid (n_tiles, 1, 1); thread t = element t of the tile
// "cached" variants first copy the grid into threadgroup memory (n_levels ≤ 256 floats) behind one barrier, so every
// thread of the threadgroup reaches the barrier before any bounds check.
#include "trellis_common.h"

// One element of the PK layout: (k, n) → W16.
inline half dq_pk(device const uchar *packed, device const float *S, float g_of_q, device const float *su,
                  device const float *sv, uint k, uint n, uint N, uint gs)
{
    return tk_w16(g_of_q, S[ulong(k / gs) * N + n], su[k], sv[n]);
}

inline uint dq_pk_index(device const uchar *packed, uint k, uint n, uint N, uint bits)
{
    uint T_O = (N + 15) / 16;
    device const uchar *tile = tk_tile(packed, k / 16, n / 16, T_O, bits);
    return tk_index(tile, bits, (n % 16) * 16 + (k % 16));
}

// I16 index of (k, n): tile (k/16, n/16), position (k%16)·16 + n%16.
inline uint dq_i16_index(device const short *idx, uint k, uint n, uint N)
{
    uint T_O = (N + 15) / 16;
    ulong t = ulong(k / 16) * T_O + n / 16;
    return uint(ushort(idx[t * 256 + (k % 16) * 16 + (n % 16)]));
}

// ---- PK ---------------------------------------------------------------------------------------------------------------

kernel void dequant_trellis_packed(device const uchar *packed [[buffer(0)]],
                                   device const float *S [[buffer(1)]],
                                   device const float *grid [[buffer(2)]],
                                   device const float *su [[buffer(3)]],
                                   device const float *sv [[buffer(4)]],
                                   device half *out [[buffer(5)]],
                                   constant uint &K [[buffer(6)]],
                                   constant uint &N [[buffer(7)]],
                                   constant uint &n_levels [[buffer(8)]],
                                   constant uint &bits [[buffer(9)]],
                                   constant uint &gs [[buffer(10)]],
                                   uint2 gid [[thread_position_in_grid]])
{
    uint n = gid.x, k = gid.y;
    if (n >= N || k >= K)
        return;
    uint q = dq_pk_index(packed, k, n, N, bits);
    out[ulong(k) * N + n] = dq_pk(packed, S, grid[q], su, sv, k, n, N, gs);
}

kernel void dequant_trellis_packed_vec4(device const uchar *packed [[buffer(0)]],
                                        device const float *S [[buffer(1)]],
                                        device const float *grid [[buffer(2)]],
                                        device const float *su [[buffer(3)]],
                                        device const float *sv [[buffer(4)]],
                                        device half *out [[buffer(5)]],
                                        constant uint &K [[buffer(6)]],
                                        constant uint &N [[buffer(7)]],
                                        constant uint &n_levels [[buffer(8)]],
                                        constant uint &bits [[buffer(9)]],
                                        constant uint &gs [[buffer(10)]],
                                        uint2 gid [[thread_position_in_grid]])
{
    uint n = gid.x;
    if (n >= N)
        return;
    for (uint c = 0; c < 4; c++) {
        uint k = gid.y * 4 + c;
        if (k >= K)
            return;
        uint q = dq_pk_index(packed, k, n, N, bits);
        out[ulong(k) * N + n] = dq_pk(packed, S, grid[q], su, sv, k, n, N, gs);
    }
}

kernel void dequant_trellis_packed_cached(device const uchar *packed [[buffer(0)]],
                                          device const float *S [[buffer(1)]],
                                          device const float *grid [[buffer(2)]],
                                          device const float *su [[buffer(3)]],
                                          device const float *sv [[buffer(4)]],
                                          device half *out [[buffer(5)]],
                                          constant uint &K [[buffer(6)]],
                                          constant uint &N [[buffer(7)]],
                                          constant uint &n_levels [[buffer(8)]],
                                          constant uint &bits [[buffer(9)]],
                                          constant uint &gs [[buffer(10)]],
                                          uint2 gid [[thread_position_in_grid]],
                                          uint tid [[thread_index_in_threadgroup]])
{
    threadgroup float g[256];
    for (uint i = tid; i < n_levels; i += 256)
        g[i] = grid[i];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint n = gid.x, k = gid.y;
    if (n >= N || k >= K)
        return;
    uint q = dq_pk_index(packed, k, n, N, bits);
    out[ulong(k) * N + n] = dq_pk(packed, S, g[q], su, sv, k, n, N, gs);
}

kernel void dequant_trellis_packed_cached_vec4(device const uchar *packed [[buffer(0)]],
                                               device const float *S [[buffer(1)]],
                                               device const float *grid [[buffer(2)]],
                                               device const float *su [[buffer(3)]],
                                               device const float *sv [[buffer(4)]],
                                               device half *out [[buffer(5)]],
                                               constant uint &K [[buffer(6)]],
                                               constant uint &N [[buffer(7)]],
                                               constant uint &n_levels [[buffer(8)]],
                                               constant uint &bits [[buffer(9)]],
                                               constant uint &gs [[buffer(10)]],
                                               uint2 gid [[thread_position_in_grid]],
                                               uint tid [[thread_index_in_threadgroup]])
{
    threadgroup float g[256];
    for (uint i = tid; i < n_levels; i += 256)
        g[i] = grid[i];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint n = gid.x;
    if (n >= N)
        return;
    for (uint c = 0; c < 4; c++) {
        uint k = gid.y * 4 + c;
        if (k >= K)
            return;
        uint q = dq_pk_index(packed, k, n, N, bits);
        out[ulong(k) * N + n] = dq_pk(packed, S, g[q], su, sv, k, n, N, gs);
    }
}

// One 16×16 tile per threadgroup of 64 threads; `cached` selects the threadgroup copy of the grid.
inline void dq_tiled_vec4(device const uchar *packed, device const float *S, device const float *grid,
                          threadgroup float *g, bool cached, device const float *su, device const float *sv,
                          device half *out, uint K, uint N, uint n_levels, uint bits, uint gs, uint2 tg, uint tid)
{
    if (cached) {
        for (uint i = tid; i < n_levels; i += 64)
            g[i] = grid[i];
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    uint n = tg.x * 16 + tid % 16;
    if (n >= N)
        return;
    for (uint c = 0; c < 4; c++) {
        uint k = tg.y * 16 + (tid / 16) * 4 + c;
        if (k >= K)
            return;
        uint q = dq_pk_index(packed, k, n, N, bits);
        out[ulong(k) * N + n] = dq_pk(packed, S, cached ? g[q] : grid[q], su, sv, k, n, N, gs);
    }
}

kernel void dequant_trellis_packed_tiled_vec4(device const uchar *packed [[buffer(0)]],
                                              device const float *S [[buffer(1)]],
                                              device const float *grid [[buffer(2)]],
                                              device const float *su [[buffer(3)]],
                                              device const float *sv [[buffer(4)]],
                                              device half *out [[buffer(5)]],
                                              constant uint &K [[buffer(6)]],
                                              constant uint &N [[buffer(7)]],
                                              constant uint &n_levels [[buffer(8)]],
                                              constant uint &bits [[buffer(9)]],
                                              constant uint &gs [[buffer(10)]],
                                              uint2 tg [[threadgroup_position_in_grid]],
                                              uint tid [[thread_index_in_threadgroup]])
{
    dq_tiled_vec4(packed, S, grid, nullptr, false, su, sv, out, K, N, n_levels, bits, gs, tg, tid);
}

kernel void dequant_trellis_packed_tiled_cached_vec4(device const uchar *packed [[buffer(0)]],
                                                     device const float *S [[buffer(1)]],
                                                     device const float *grid [[buffer(2)]],
                                                     device const float *su [[buffer(3)]],
                                                     device const float *sv [[buffer(4)]],
                                                     device half *out [[buffer(5)]],
                                                     constant uint &K [[buffer(6)]],
                                                     constant uint &N [[buffer(7)]],
                                                     constant uint &n_levels [[buffer(8)]],
                                                     constant uint &bits [[buffer(9)]],
                                                     constant uint &gs [[buffer(10)]],
                                                     uint2 tg [[threadgroup_position_in_grid]],
                                                     uint tid [[thread_index_in_threadgroup]])
{
    threadgroup float g[256];
    dq_tiled_vec4(packed, S, grid, g, true, su, sv, out, K, N, n_levels, bits, gs, tg, tid);
}

// ---- TEX: PK with the grid as a 1-D f32 texture of width 2^b (texel q = grid_b[q]; read = nearest, unnormalized) ----

kernel void dequant_trellis_packed_tex(device const uchar *packed [[buffer(0)]],
                                       device const float *S [[buffer(1)]],
                                       texture1d<float, access::read> grid [[texture(0)]],
                                       device const float *su [[buffer(2)]],
                                       device const float *sv [[buffer(3)]],
                                       device half *out [[buffer(4)]],
                                       constant uint &K [[buffer(5)]],
                                       constant uint &N [[buffer(6)]],
                                       constant uint &n_levels [[buffer(7)]],
                                       constant uint &bits [[buffer(8)]],
                                       constant uint &gs [[buffer(9)]],
                                       uint2 gid [[thread_position_in_grid]])
{
    uint n = gid.x, k = gid.y;
    if (n >= N || k >= K)
        return;
    uint q = dq_pk_index(packed, k, n, N, bits);
    out[ulong(k) * N + n] = dq_pk(packed, S, grid.read(q).x, su, sv, k, n, N, gs);
}

// ---- I16 (+ NOSIGN) ------------------------------------------------------------------------------------------------

kernel void dequant_trellis_with_signs(device const short *idx [[buffer(0)]],
                                       device const float *S [[buffer(1)]],
                                       device const float *grid [[buffer(2)]],
                                       device const float *su [[buffer(3)]],
                                       device const float *sv [[buffer(4)]],
                                       device half *out [[buffer(5)]],
                                       constant uint &K [[buffer(6)]],
                                       constant uint &N [[buffer(7)]],
                                       constant uint &n_levels [[buffer(8)]],
                                       constant uint &gs [[buffer(9)]],
                                       uint2 gid [[thread_position_in_grid]])
{
    uint n = gid.x, k = gid.y;
    if (n >= N || k >= K)
        return;
    uint q = dq_i16_index(idx, k, n, N);
    out[ulong(k) * N + n] = tk_w16(grid[q], S[ulong(k / gs) * N + n], su[k], sv[n]);
}

// NOSIGN element: RNh(RN32(grid·S)).
inline half dq_nosign(float g, float s)
{
    float w = g * s;
    return half(w);
}

kernel void dequant_trellis(device const short *idx [[buffer(0)]],
                            device const float *S [[buffer(1)]],
                            device const float *grid [[buffer(2)]],
                            device half *out [[buffer(3)]],
                            constant uint &K [[buffer(4)]],
                            constant uint &N [[buffer(5)]],
                            constant uint &n_levels [[buffer(6)]],
                            constant uint &gs [[buffer(7)]],
                            uint2 gid [[thread_position_in_grid]])
{
    uint n = gid.x, k = gid.y;
    if (n >= N || k >= K)
        return;
    uint q = dq_i16_index(idx, k, n, N);
    out[ulong(k) * N + n] = dq_nosign(grid[q], S[ulong(k / gs) * N + n]);
}

kernel void dequant_trellis_aligned(device const short *idx [[buffer(0)]],
                                    device const float *S [[buffer(1)]],
                                    device const float *grid [[buffer(2)]],
                                    device half *out [[buffer(3)]],
                                    constant uint &K [[buffer(4)]],
                                    constant uint &N [[buffer(5)]],
                                    constant uint &n_levels [[buffer(6)]],
                                    constant uint &gs [[buffer(7)]],
                                    uint2 gid [[thread_position_in_grid]])
{
    uint k = gid.y;
    if (gid.x * 4 >= N || k >= K)
        return;
    half4 r;
    for (uint c = 0; c < 4; c++) {
        uint n = gid.x * 4 + c;
        uint q = dq_i16_index(idx, k, n, N);
        r[c] = dq_nosign(grid[q], S[ulong(k / gs) * N + n]);
    }
    *(device half4 *)(out + ulong(k) * N + gid.x * 4) = r;
}

inline void dq_i16_tiled(device const short *idx, device const float *S, device const float *grid,
                         threadgroup float *g, bool cached, device half *out, uint K, uint N, uint n_levels, uint gs,
                         uint2 tg, uint tid)
{
    if (cached) {
        for (uint i = tid; i < n_levels; i += 256)
            g[i] = grid[i];
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    uint k = tg.y * 16 + tid / 16, n = tg.x * 16 + tid % 16;
    if (n >= N || k >= K)
        return;
    uint q = dq_i16_index(idx, k, n, N);
    out[ulong(k) * N + n] = dq_nosign(cached ? g[q] : grid[q], S[ulong(k / gs) * N + n]);
}

kernel void dequant_trellis_tiled(device const short *idx [[buffer(0)]],
                                  device const float *S [[buffer(1)]],
                                  device const float *grid [[buffer(2)]],
                                  device half *out [[buffer(3)]],
                                  constant uint &K [[buffer(4)]],
                                  constant uint &N [[buffer(5)]],
                                  constant uint &n_levels [[buffer(6)]],
                                  constant uint &gs [[buffer(7)]],
                                  uint2 tg [[threadgroup_position_in_grid]],
                                  uint tid [[thread_index_in_threadgroup]])
{
    dq_i16_tiled(idx, S, grid, nullptr, false, out, K, N, n_levels, gs, tg, tid);
}

kernel void dequant_trellis_tiled_cached(device const short *idx [[buffer(0)]],
                                         device const float *S [[buffer(1)]],
                                         device const float *grid [[buffer(2)]],
                                         device half *out [[buffer(3)]],
                                         constant uint &K [[buffer(4)]],
                                         constant uint &N [[buffer(5)]],
                                         constant uint &n_levels [[buffer(6)]],
                                         constant uint &gs [[buffer(7)]],
                                         uint2 tg [[threadgroup_position_in_grid]],
                                         uint tid [[thread_index_in_threadgroup]])
{
    threadgroup float g[256];
    dq_i16_tiled(idx, S, grid, g, true, out, K, N, n_levels, gs, tg, tid);
}

// ---- BULK + NOSIGN: out[t][p] = RNh(RN32(grid[idx[t][p]] · scale[t])) -----------------------------------------------

kernel void dequant_trellis_bulk(device const short *idx [[buffer(0)]],
                                 device const float *scale [[buffer(1)]],
                                 device const float *grid [[buffer(2)]],
                                 device half *out [[buffer(3)]],
                                 constant uint &n_tiles [[buffer(4)]],
                                 constant uint &n_levels [[buffer(5)]],
                                 uint t [[threadgroup_position_in_grid]],
                                 uint p [[thread_index_in_threadgroup]])
{
    if (t >= n_tiles)
        return;
    ulong at = ulong(t) * 256 + p;
    out[at] = dq_nosign(grid[uint(ushort(idx[at]))], scale[t]);
}
