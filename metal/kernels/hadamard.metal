// hadamard.metal — KERNELS.md §4.3 `hadamard`: blockwise natural-order Walsh–Hadamard transform.
//
// Canonical order (the only one: the op is ORDERED with acc = data format): per block of size m (n = 96, 160, 192 are
// two blocks: 64+32, 128+32, 128+64, transformed independently), stages with stride s = 1, 2, 4, …, m/2; at each
// stage every pair (i, i+s) with i & s = 0 becomes (x_i + x_{i+s}, x_i − x_{i+s}), each one rounding in the data
// format (f16: RNh of the exact sum of two f16 values; f32: RN32).  Norm `ortho`: then every element is multiplied
// once by c_m (format-rounded 1/√m: f16 0x31A8, 0x3000, 0x2DA8; f32 0x3E3504F3, 0x3E000000, 0x3DB504F3 for
// m = 32, 64, 128).  Inverse with ortho is the same computation; inverse with `none` is the unscaled butterfly.
// Pre-scale: x_j = RN(x_j · s_j) before the butterfly; post-scale: the constant becomes RN(c_m · s_row), one multiply.
// The order of the pairs within a stage does not matter (they are disjoint), so threads may share a stage; stages
// are separated by barriers.  Results equal tr_ref_hadamard bit for bit.
//
// rows layout [R][n] (f16), one 32-thread threadgroup per row: grid (R, 1, 1), threadgroup (32, 1, 1); the row sits
//   in threadgroup memory, thread t does pairs t, t+32, … of every stage.
//   hadamard_transform_32/_64/_128/_64_vec  0 in, 1 out, 2 R, 3 normalize (uint: ≠ 0 → ortho, 0 → none)
//   hadamard_transform_64_scaled            0 in, 1 scales (per_element: f16 [R][64]; else f16 [R]), 2 out, 3 R,
//                                           4 per_element (uint); ortho
//   hadamard_inverse_64                     0 in, 1 out, 2 R; inverse, none
//   test_hadamard_roundtrip_64              0 in, 1 out, 2 R; forward none, forward none, then · RNh(1/64) (0x2400)
// cols layout [K][N] (each column transformed in consecutive blocks of n along K, K % n = 0), ortho:
//   hadamard_forward_fast_{64,128,96,160,192}, hadamard_inverse_block_{64,128,96,160,192} (f16),
//   hadamard_forward_fast_64_float, hadamard_inverse_block_64_float (f32): 0 in, 1 out, 2 K, 3 N;
//   hadamard_forward_block, hadamard_forward_fast, hadamard_inverse_block (f16): 0 in, 1 out, 2 K, 3 N, 4 block_size
//   (domain 64; 32 and 128 also work).
//   Launch: threads (N, K/n, z) (dispatchThreads), threadgroup (32, 1, 1); z = 2 for 96/160/192 (thread z does
//   sub-block z), else 1.  Each thread transforms its (column, chunk, sub-block) alone, in registers.
#include "trellis_common.h"

inline half had_cm(uint m, half)
{
    return as_type<half>(ushort(m == 32 ? 0x31A8u : m == 64 ? 0x3000u : 0x2DA8u));
}

inline float had_cm(uint m, float)
{
    return as_type<float>(m == 32 ? 0x3E3504F3u : m == 64 ? 0x3E000000u : 0x3DB504F3u);
}

// ---- rows: one row of n (power of two ≤ 128) in threadgroup memory v, 32 threads ----------------------------------

inline void had_rows_butterfly(threadgroup half *v, uint n, uint tid)
{
    for (uint s = 1; s < n; s <<= 1) {
        for (uint pr = tid; pr < n / 2; pr += 32) {
            uint i = (pr / s) * 2 * s + pr % s;
            half a = v[i], b = v[i + s];
            v[i] = a + b;
            v[i + s] = a - b;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
}

// load row r (optionally · per-element scales), butterfly, optional scale by c, store.
inline void had_rows(device const half *in, device half *out, uint R, uint n, bool scale, half c,
                     device const half *pre, uint r, uint tid, threadgroup half *v)
{
    if (r >= R)
        return;
    for (uint i = tid; i < n; i += 32) {
        half x = in[ulong(r) * n + i];
        if (pre != nullptr)
            x = x * pre[ulong(r) * n + i];
        v[i] = x;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    had_rows_butterfly(v, n, tid);
    for (uint i = tid; i < n; i += 32)
        out[ulong(r) * n + i] = scale ? half(v[i] * c) : v[i];
}

#define HAD_ROWS_PARAMS                                                                                                \
    device const half *in [[buffer(0)]], device half *out [[buffer(1)]], constant uint &R [[buffer(2)]],              \
        constant uint &normalize [[buffer(3)]], uint r [[threadgroup_position_in_grid]],                               \
        uint tid [[thread_index_in_threadgroup]]

kernel void hadamard_transform_32(HAD_ROWS_PARAMS)
{
    threadgroup half v[32];
    had_rows(in, out, R, 32, normalize != 0, had_cm(32, half(0)), nullptr, r, tid, v);
}

kernel void hadamard_transform_64(HAD_ROWS_PARAMS)
{
    threadgroup half v[64];
    had_rows(in, out, R, 64, normalize != 0, had_cm(64, half(0)), nullptr, r, tid, v);
}

kernel void hadamard_transform_128(HAD_ROWS_PARAMS)
{
    threadgroup half v[128];
    had_rows(in, out, R, 128, normalize != 0, had_cm(128, half(0)), nullptr, r, tid, v);
}

kernel void hadamard_transform_64_vec(HAD_ROWS_PARAMS)
{
    threadgroup half v[64];
    had_rows(in, out, R, 64, normalize != 0, had_cm(64, half(0)), nullptr, r, tid, v);
}

// ortho, n = 64; per_element: x·s before the butterfly; else the constant is RNh(c_64 · s_row).
kernel void hadamard_transform_64_scaled(device const half *in [[buffer(0)]],
                                         device const half *scales [[buffer(1)]],
                                         device half *out [[buffer(2)]],
                                         constant uint &R [[buffer(3)]],
                                         constant uint &per_element [[buffer(4)]],
                                         uint r [[threadgroup_position_in_grid]],
                                         uint tid [[thread_index_in_threadgroup]])
{
    threadgroup half v[64];
    half c = had_cm(64, half(0));
    if (per_element == 0 && r < R)
        c = c * scales[r];
    had_rows(in, out, R, 64, true, c, per_element != 0 ? scales : nullptr, r, tid, v);
}

kernel void hadamard_inverse_64(device const half *in [[buffer(0)]],
                                device half *out [[buffer(1)]],
                                constant uint &R [[buffer(2)]],
                                uint r [[threadgroup_position_in_grid]],
                                uint tid [[thread_index_in_threadgroup]])
{
    threadgroup half v[64];
    had_rows(in, out, R, 64, false, half(1), nullptr, r, tid, v);
}

kernel void test_hadamard_roundtrip_64(device const half *in [[buffer(0)]],
                                       device half *out [[buffer(1)]],
                                       constant uint &R [[buffer(2)]],
                                       uint r [[threadgroup_position_in_grid]],
                                       uint tid [[thread_index_in_threadgroup]])
{
    threadgroup half v[64];
    if (r >= R)
        return;
    for (uint i = tid; i < 64; i += 32)
        v[i] = in[ulong(r) * 64 + i];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    had_rows_butterfly(v, 64, tid);
    had_rows_butterfly(v, 64, tid);
    for (uint i = tid; i < 64; i += 32)
        out[ulong(r) * 64 + i] = v[i] * as_type<half>(ushort(0x2400));
}

// ---- cols: one (column, chunk, sub-block) per thread ------------------------------------------------------------------

// Transform the block of m elements starting at row k0 of column col (stride N), ortho.
template <typename T>
inline void had_col_block(device const T *in, device T *out, uint N, uint col, uint k0, uint m)
{
    T v[128];
    for (uint i = 0; i < m; i++)
        v[i] = in[ulong(k0 + i) * N + col];
    for (uint s = 1; s < m; s <<= 1)
        for (uint i = 0; i < m; i++)
            if ((i & s) == 0) {
                T a = v[i], b = v[i + s];
                v[i] = a + b;
                v[i + s] = a - b;
            }
    T c = had_cm(m, T(0));
    for (uint i = 0; i < m; i++)
        out[ulong(k0 + i) * N + col] = T(v[i] * c);
}

// n = 32/64/128 (one block) or 96/160/192 (two blocks, sub-block z).
template <typename T>
inline void had_cols(device const T *in, device T *out, uint K, uint N, uint n, uint3 gid)
{
    uint col = gid.x, chunk = gid.y, z = gid.z;
    if (col >= N || chunk >= K / n)
        return;
    uint first = n == 96 ? 64 : n == 160 ? 128 : n == 192 ? 128 : n;
    uint k0 = chunk * n + (z == 0 ? 0 : first);
    uint m = z == 0 ? first : n - first;
    if (m == 0)
        return;
    had_col_block(in, out, N, col, k0, m);
}

#define HAD_COLS_PARAMS(T)                                                                                             \
    device const T *in [[buffer(0)]], device T *out [[buffer(1)]], constant uint &K [[buffer(2)]],                    \
        constant uint &N [[buffer(3)]], uint3 gid [[thread_position_in_grid]]

kernel void hadamard_forward_fast_64(HAD_COLS_PARAMS(half)) { had_cols(in, out, K, N, 64, gid); }
kernel void hadamard_forward_fast_128(HAD_COLS_PARAMS(half)) { had_cols(in, out, K, N, 128, gid); }
kernel void hadamard_forward_fast_96(HAD_COLS_PARAMS(half)) { had_cols(in, out, K, N, 96, gid); }
kernel void hadamard_forward_fast_160(HAD_COLS_PARAMS(half)) { had_cols(in, out, K, N, 160, gid); }
kernel void hadamard_forward_fast_192(HAD_COLS_PARAMS(half)) { had_cols(in, out, K, N, 192, gid); }
kernel void hadamard_inverse_block_64(HAD_COLS_PARAMS(half)) { had_cols(in, out, K, N, 64, gid); }
kernel void hadamard_inverse_block_128(HAD_COLS_PARAMS(half)) { had_cols(in, out, K, N, 128, gid); }
kernel void hadamard_inverse_block_96(HAD_COLS_PARAMS(half)) { had_cols(in, out, K, N, 96, gid); }
kernel void hadamard_inverse_block_160(HAD_COLS_PARAMS(half)) { had_cols(in, out, K, N, 160, gid); }
kernel void hadamard_inverse_block_192(HAD_COLS_PARAMS(half)) { had_cols(in, out, K, N, 192, gid); }
kernel void hadamard_forward_fast_64_float(HAD_COLS_PARAMS(float)) { had_cols(in, out, K, N, 64, gid); }
kernel void hadamard_inverse_block_64_float(HAD_COLS_PARAMS(float)) { had_cols(in, out, K, N, 64, gid); }

#define HAD_BLOCK_PARAMS                                                                                               \
    device const half *in [[buffer(0)]], device half *out [[buffer(1)]], constant uint &K [[buffer(2)]],              \
        constant uint &N [[buffer(3)]], constant uint &block_size [[buffer(4)]], uint3 gid [[thread_position_in_grid]]

kernel void hadamard_forward_block(HAD_BLOCK_PARAMS)
{
    if (block_size == 32 || block_size == 64 || block_size == 128)
        had_cols(in, out, K, N, block_size, gid);
}

kernel void hadamard_forward_fast(HAD_BLOCK_PARAMS)
{
    if (block_size == 32 || block_size == 64 || block_size == 128)
        had_cols(in, out, K, N, block_size, gid);
}

kernel void hadamard_inverse_block(HAD_BLOCK_PARAMS)
{
    if (block_size == 32 || block_size == 64 || block_size == 128)
        had_cols(in, out, K, N, block_size, gid);
}
