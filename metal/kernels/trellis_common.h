// trellis_common.h — helpers shared by our Metal kernels (metal/kernels/*.metal): the grid codebook, index
// extraction from the packed stream, the W16 decode, the canonical reduction orders of KERNELS.md §1 as in-thread
// loops, and tr_expf / sigmoid / silu reproduced bit for bit with integer-emulated binary64 arithmetic.
//
// Everything here is plain MSL (no double: Apple GPUs have none), so the same source runs on a device and on the
// emulator.  Rounding conventions (KERNELS.md §0): every float operation written a*b, a+b is one RN32; every half
// operation one RNh; fma(float) and fma(half) are fused (one rounding).  The canonical orders never rely on the
// compiler: the emulator compiles with -ffp-contract=off, and the expressions below that must not be contracted are
// written as separate statements.
//
// Included by every kernel file ("#include "trellis_common.h"", found next to the including file).  The macOS runner
// compiles the folder with it on the include path.
#ifndef TRELLIS_METAL_COMMON_H
#define TRELLIS_METAL_COMMON_H

#include <metal_stdlib>
using namespace metal;

// ---- FORMAT.md §5: grid_b[j] = RN32(h_j · c), h_j = j − (2^b − 1)/2, c = RN32(1.24371088) = 0x3F9F31EB ---------------
// h_j is a half-integer of magnitude ≤ 127.5 (exact in f32), so the only rounding is the one multiply.
inline float tk_grid(uint b, uint q)
{
    float h = float(q) - float((1u << b) - 1u) * 0.5f;
    return h * as_type<float>(0x3F9F31EBu);
}

// ---- FORMAT.md §4: the b-bit index number e of one tile (tile = 32·b bytes, stream LSB first) ------------------------
// q = ((body[p/8] | body[p/8+1] << 8) >> (p % 8)) & (2^b − 1), p = e·b; the second byte is read only when the index
// crosses into it (so the last index of the last tile never reads past the buffer).
inline uint tk_index(device const uchar *tile, uint b, uint e)
{
    uint p = e * b;
    uint lo = p >> 3, sh = p & 7u;
    uint v = uint(tile[lo]);
    if (sh + b > 8u)
        v |= uint(tile[lo + 1]) << 8;
    return (v >> sh) & ((1u << b) - 1u);
}

// The 16 indices of output row lo (0..15) of one tile: elements e = lo·16 .. lo·16+15, i.e. the 2·b bytes starting at
// lo·2·b.  idx[li] is the index of input column li of the tile.
inline void tk_tile_row(device const uchar *tile, uint b, uint lo, thread uint *idx)
{
    device const uchar *r = tile + lo * 2u * b;
    uint mask = (1u << b) - 1u;
    uint acc = 0, have = 0, pos = 0;
    for (uint li = 0; li < 16; li++) {
        while (have < b) {
            acc |= uint(r[pos++]) << have;
            have += 8;
        }
        idx[li] = acc & mask;
        acc >>= b;
        have -= b;
    }
}

// W16 (KERNELS.md §0 / FORMAT.md §6.1): RNh( RN32( RN32( RN32(grid·S) · su) · sv) ), left to right.
inline half tk_w16(float grid, float s, float su, float sv)
{
    float w = grid * s;
    w = w * su;
    w = w * sv;
    return half(w);
}

// Packed-tile addressing in GEMM order (KERNELS.md §3 PK, FORMAT.md §4.5): tile (ti, to) at ti·T_O + to, 32·b bytes.
inline device const uchar *tk_tile(device const uchar *packed, uint ti, uint to, uint T_O, uint b)
{
    return packed + (ulong(ti) * T_O + to) * (32u * b);
}

// ---- one RNh of an exact value p + e (p = RN32 of it, e the exact remainder, |e| ≤ ½ulp32(p)) -----------------------
// half(p) alone would round twice.  RN32 is monotone and every f16 rounding boundary is an f32 number, so the two
// roundings differ only when p lies exactly on an f16 midpoint: then the sign of e decides (e = 0: ties to even).
inline half tk_rnh_exact(float p, float e)
{
    uint u = as_type<uint>(p);
    uint a = u & 0x7FFFFFFFu;
    if (a >= 0x7F800000u)
        return half(p);                                 // ±Inf, NaN
    ushort sign = ushort((u >> 16) & 0x8000u);
    int ex = int(a >> 23);
    uint m = (a & 0x7FFFFFu) | (ex != 0 ? 0x800000u : 0u);
    int E = ex != 0 ? ex - 127 : -126;                  // |p| in [2^E, 2^(E+1)) for normal p
    if (E > 15)
        return as_type<half>(ushort(sign | 0x7C00u));
    int E16 = max(E, -14);
    int sh = (E16 - 10) - ((ex != 0 ? ex : 1) - 150);   // drop sh bits of m: the f16 quantum is 2^(E16-10)
    if (sh > 25)
        return as_type<half>(sign);                     // below a quarter of the smallest subnormal
    uint q = m >> sh, rest = m & ((1u << sh) - 1u), half_ = 1u << (sh - 1);
    bool above = e != 0.0f && ((e > 0.0f) == ((u >> 31) == 0u));   // the exact magnitude exceeds |p|
    if (rest > half_ || (rest == half_ && (e != 0.0f ? above : (q & 1u) != 0u)))
        q += 1;
    uint bits = uint(E16 + 14) * 1024u + q;             // normal: (E16+15)<<10 | frac; subnormal: q (E16 = −14)
    if (bits >= 0x7C00u)
        bits = 0x7C00u;
    return as_type<half>(ushort(sign | bits));
}

// RNh(a·b) with a single rounding (the product of an f16 and an f32 value needs up to 35 bits).
inline half tk_rnh_mul(float a, float b)
{
    float p = a * b;
    float e = fma(a, b, -p);
    return tk_rnh_exact(p, e);
}

// ---- L16 (KERNELS.md §1): 16 lane accumulators q_l (l = i mod 16), fmaf, then the butterfly s = 8, 4, 2, 1 --------
inline float tk_l16_reduce(thread float *q)
{
    for (uint s = 8; s >= 1; s >>= 1)
        for (uint l = 0; l < s; l++)
            q[l] = q[l] + q[l + s];
    return q[0];
}

// ---- one output column of a PK linear: gemm_trellis and its fused forms (gemm_trellis.metal, gemm_qkv.metal) ---------
// Canonical orders: L16 (F32ACC) or H16T over k, per row m of [m0, m1); C[m][n] = RNh(L16) or the H16T f16 result.
#define TK_GEMM_RB32 8u // rows per pass of the f32 path (16 accumulators each)

// The 16 W16 values of column n in K-tile ti (positions li with k = 16·ti + li < K are valid).
inline void tk_gemm_decode_col(device const uchar *packed, device const float *S, device const float *grid,
                            device const float *su, device const float *sv, uint K, uint N, uint bits, uint gs,
                            uint n, uint ti, uint kn, thread half *w)
{
    uint T_O = (N + 15) / 16;
    uint idx[16];
    tk_tile_row(tk_tile(packed, ti, n / 16, T_O, bits), bits, n % 16, idx);
    float svn = sv[n];
    for (uint li = 0; li < kn; li++) {
        uint k = ti * 16 + li;
        w[li] = tk_w16(grid[idx[li]], S[ulong(k / gs) * N + n], su[k], svn);
    }
}

// Column n, rows [m0, m1) (m1 − m0 ≤ MAXR).
template <bool F32ACC, uint MAXR>
inline void tk_gemm_column(device const half *A, device const uchar *packed, device const float *S,
                        device const float *grid, device const float *su, device const float *sv, device half *C,
                        uint K, uint N, uint bits, uint gs, uint n, uint m0, uint m1)
{
    uint T_I = (K + 15) / 16;
    half w[16];
    if (F32ACC) {
        for (uint mb = m0; mb < m1; mb += TK_GEMM_RB32) {          // L16, TK_GEMM_RB32 rows at a time
            uint me = min(mb + TK_GEMM_RB32, m1);
            float q[TK_GEMM_RB32][16];
            for (uint r = 0; r < TK_GEMM_RB32; r++)
                for (uint l = 0; l < 16; l++)
                    q[r][l] = 0.0f;
            for (uint ti = 0; ti < T_I; ti++) {
                uint kn = min(16u, K - ti * 16);
                tk_gemm_decode_col(packed, S, grid, su, sv, K, N, bits, gs, n, ti, kn, w);
                for (uint m = mb; m < me; m++) {
                    device const half *a = A + ulong(m) * K + ti * 16;
                    for (uint li = 0; li < kn; li++)
                        q[m - mb][li] = fma(float(a[li]), float(w[li]), q[m - mb][li]);
                }
            }
            for (uint m = mb; m < me; m++)
                C[ulong(m) * N + n] = half(tk_l16_reduce(q[m - mb]));
        }
    } else {
        half acc[MAXR];                                          // H16T, all rows of the block at once
        for (uint r = 0; r < MAXR; r++)
            acc[r] = 0.0h;
        for (uint ti = 0; ti < T_I; ti++) {
            uint kn = min(16u, K - ti * 16);
            tk_gemm_decode_col(packed, S, grid, su, sv, K, N, bits, gs, n, ti, kn, w);
            for (uint m = m0; m < m1; m++) {
                device const half *a = A + ulong(m) * K + ti * 16;
                half p = 0.0h;
                for (uint li = 0; li < kn; li++)
                    p = fma(a[li], w[li], p);
                acc[m - m0] = acc[m - m0] + p;
            }
        }
        for (uint m = m0; m < m1; m++)
            C[ulong(m) * N + n] = acc[m - m0];
    }
}

// ---- integer-emulated binary64 (for tr_expf, KERNELS.md §0) ----------------------------------------------------------
// A finite double is (-1)^s · m · 2^e with m in [2^52, 2^53), or zero (m = 0).  add and mul round to nearest, ties to
// even, exactly as IEEE binary64 does for normal results; subnormal doubles cannot occur in tr_expf (|r| ≥ 2^-150
// or r = 0, and every product stays far above 2^-1022), so they are not handled.
struct tk_f64 {
    ulong m;
    int e;
    uint s;
};

inline tk_f64 tk_f64_bits(ulong bits)   // a normal double from its IEEE bits
{
    tk_f64 r;
    r.m = (bits & 0xFFFFFFFFFFFFFul) | 0x10000000000000ul;
    r.e = int((bits >> 52) & 0x7FFul) - 1075;
    r.s = uint(bits >> 63);
    return r;
}

inline uint tk_bitlen(ulong v) { return 64u - uint(clz(v)); }

// Round (-1)^s · (m + sticky·ε) · 2^e (m < 2^64, sticky = nonzero bits below m's LSB) to 53 bits.
inline tk_f64 tk_f64_round(uint s, ulong m, int e, bool sticky)
{
    tk_f64 r;
    r.s = s;
    if (m == 0) {
        r.m = 0;
        r.e = 0;
        return r;
    }
    uint n = tk_bitlen(m);
    if (n <= 53) {                     // exact (callers never pass sticky here)
        r.m = m << (53 - n);
        r.e = e - int(53 - n);
        return r;
    }
    uint sh = n - 53;
    ulong rest = m & ((1ul << sh) - 1ul);
    ulong half_ = 1ul << (sh - 1);
    ulong q = m >> sh;
    if (rest > half_ || (rest == half_ && (sticky || (q & 1ul))))
        q += 1;
    int ee = e + int(sh);
    if (q == (1ul << 53)) {
        q >>= 1;
        ee += 1;
    }
    r.m = q;
    r.e = ee;
    return r;
}

inline tk_f64 tk_f64_from_float(float x)
{
    uint u = as_type<uint>(x);
    uint ex = (u >> 23) & 0xFFu;
    ulong fr = ulong(u & 0x7FFFFFu);
    if (ex == 0)
        return tk_f64_round(u >> 31, fr, -149, false);   // zero or an f32 subnormal (exact)
    return tk_f64_round(u >> 31, fr | 0x800000ul, int(ex) - 150, false);
}

inline tk_f64 tk_f64_from_int(int k)
{
    return tk_f64_round(k < 0 ? 1u : 0u, ulong(k < 0 ? -k : k), 0, false);
}

inline tk_f64 tk_f64_mul(tk_f64 a, tk_f64 b)
{
    if (a.m == 0 || b.m == 0) {
        tk_f64 z;
        z.m = 0;
        z.e = 0;
        z.s = a.s ^ b.s;
        return z;
    }
    // 106-bit product of the two 53-bit mantissas from 32-bit halves.
    ulong a0 = a.m & 0xFFFFFFFFul, a1 = a.m >> 32, b0 = b.m & 0xFFFFFFFFul, b1 = b.m >> 32;
    ulong p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    ulong mid = (p00 >> 32) + (p01 & 0xFFFFFFFFul) + (p10 & 0xFFFFFFFFul);
    ulong lo = (mid << 32) | (p00 & 0xFFFFFFFFul);
    ulong hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
    // The product is in [2^104, 2^106): keep its top 64 bits (>> 42) and a sticky bit for the rest.
    ulong top = (hi << 22) | (lo >> 42);
    bool sticky = (lo & ((1ul << 42) - 1ul)) != 0;
    return tk_f64_round(a.s ^ b.s, top, a.e + b.e + 42, sticky);
}

inline tk_f64 tk_f64_add(tk_f64 a, tk_f64 b)
{
    if (a.m == 0 && b.m == 0) {
        tk_f64 z = a;
        z.s = a.s & b.s;               // +0 unless both are −0
        return z;
    }
    if (a.m == 0)
        return b;
    if (b.m == 0)
        return a;
    if (b.e > a.e || (b.e == a.e && b.m > a.m)) {   // |a| >= |b|
        tk_f64 t = a;
        a = b;
        b = t;
    }
    uint d = uint(a.e - b.e);
    ulong ma = a.m << 10, mb = b.m << 10;          // 10 guard bits below the 53-bit mantissas
    if (d >= 64)
        mb = 1;                                    // only a sticky bit survives
    else if (d > 0) {
        bool st = (mb & ((1ul << d) - 1ul)) != 0;
        mb = (mb >> d) | (st ? 1ul : 0ul);
    }
    if (a.s == b.s)
        return tk_f64_round(a.s, ma + mb, a.e - 10, false);
    ulong diff = ma - mb;
    if (diff == 0) {
        tk_f64 z;
        z.m = 0;
        z.e = 0;
        z.s = 0;                                   // x − x = +0 (round to nearest)
        return z;
    }
    return tk_f64_round(a.s, diff, a.e - 10, false);
}

inline tk_f64 tk_f64_neg(tk_f64 a)
{
    a.s ^= 1u;
    return a;
}

// nearbyint (ties to even) of a double of magnitude < 2^31, as an int.
inline int tk_f64_nearbyint(tk_f64 t)
{
    if (t.m == 0 || t.e <= -54)
        return 0;
    ulong ip;
    if (t.e >= 0)
        ip = t.m << t.e;
    else {
        uint sh = uint(-t.e);
        ulong rest = t.m & ((1ul << sh) - 1ul);
        ulong half_ = 1ul << (sh - 1);
        ip = t.m >> sh;
        if (rest > half_ || (rest == half_ && (ip & 1ul)))
            ip += 1;
    }
    return t.s ? -int(ip) : int(ip);
}

// RN32(p · 2^k) for a positive normal p: f32 normal, subnormal (quantum 2^-149) or +Inf.
inline float tk_f64_ldexp_to_float(tk_f64 p, int k)
{
    int E = p.e + k + 52;              // p·2^k in [2^E, 2^(E+1))
    uint sign = p.s << 31;
    if (E >= -126) {
        ulong q = p.m >> 29, rest = p.m & ((1ul << 29) - 1ul), half_ = 1ul << 28;
        if (rest > half_ || (rest == half_ && (q & 1ul)))
            q += 1;
        if (q == (1ul << 24)) {
            q >>= 1;
            E += 1;
        }
        if (E > 127)
            return as_type<float>(sign | 0x7F800000u);
        return as_type<float>(sign | (uint(E + 127) << 23) | uint(q & 0x7FFFFFul));
    }
    int shi = -(p.e + k + 149);        // value / 2^-149 = m · 2^-shi, shi > 29
    if (shi >= 64)
        return as_type<float>(sign);
    uint sh = uint(shi);
    ulong q = p.m >> sh, rest = p.m & ((1ul << sh) - 1ul), half_ = 1ul << (sh - 1);
    if (rest > half_ || (rest == half_ && (q & 1ul)))
        q += 1;
    return as_type<float>(sign | uint(q));          // q = 2^23 is the smallest normal: the bits say so
}

// tr_expf (KERNELS.md §0), bit for bit: NaN → NaN, x > 89 → +Inf, x < −110 → +0; otherwise in binary64
// k = nearbyint(x·log2e), r = (x − k·ln2_hi) − k·ln2_lo, p = c13, p = p·r + c_n (n = 12…0, Horner without fma),
// result RN32(ldexp(p, k)); c_n = RN64(1/n!).
inline float tk_expf(float x)
{
    if (isnan(x))
        return x;
    if (x > 89.0f)
        return INFINITY;
    if (x < -110.0f)
        return 0.0f;
    const ulong C[14] = {0x3FF0000000000000ul, 0x3FF0000000000000ul, 0x3FE0000000000000ul, 0x3FC5555555555555ul,
                         0x3FA5555555555555ul, 0x3F81111111111111ul, 0x3F56C16C16C16C17ul, 0x3F2A01A01A01A01Aul,
                         0x3EFA01A01A01A01Aul, 0x3EC71DE3A556C734ul, 0x3E927E4FB7789F5Cul, 0x3E5AE64567F544E4ul,
                         0x3E21EED8EFF8D898ul, 0x3DE6124613A86D09ul};
    tk_f64 xd = tk_f64_from_float(x);
    int k = tk_f64_nearbyint(tk_f64_mul(xd, tk_f64_bits(0x3FF71547652B82FEul)));   // 1.4426950408889634
    tk_f64 kd = tk_f64_from_int(k);
    tk_f64 r = tk_f64_add(xd, tk_f64_neg(tk_f64_mul(kd, tk_f64_bits(0x3FE62E42FEE00000ul))));   // ln2_hi
    r = tk_f64_add(r, tk_f64_neg(tk_f64_mul(kd, tk_f64_bits(0x3DEA39EF35793C76ul))));           // ln2_lo
    tk_f64 p = tk_f64_bits(C[13]);
    for (int n = 12; n >= 0; n--)
        p = tk_f64_add(tk_f64_mul(p, r), tk_f64_bits(C[n]));
    return tk_f64_ldexp_to_float(p, k);
}

// silu(z) = z / (1 + tr_expf(−z)), sigmoid(z) = 1 / (1 + tr_expf(−z)); each step RN32.  precise::divide keeps the
// division correctly rounded when a device library is compiled with fast math.
inline float tk_silu(float z)
{
    float e = tk_expf(-z);
    float d = 1.0f + e;
    return precise::divide(z, d);
}

inline float tk_sigmoid(float z)
{
    float e = tk_expf(-z);
    float d = 1.0f + e;
    return precise::divide(1.0f, d);
}

#endif
