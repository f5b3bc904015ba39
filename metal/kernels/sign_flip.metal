// sign_flip.metal — KERNELS.md §4.2 `sign_flip`: apply input/output signs (or scales) to decoded weights.
//
//   out[k][n] = RNh( widen(w[k][n]) · RN32(su[k] · sv[n]) )        (class EXACT)
//
// The product of an f16 value (11 bits) and an f32 value (24 bits) is not exact in f32, so RNh(RN32(·)) could round
// twice: tk_rnh_mul rounds the exact product once (fma gives the remainder, an f16 midpoint is decided by its sign).
// With su = sv = ±1 this is exact negation.  Binding (both kernels): 0 w f16 [K][N] in/out (in place; the runner
// copies the input into it), 1 su f32 [K], 2 sv f32 [N], 3 K, 4 N.
#include "trellis_common.h"

// One thread per element.  Launch: threadgroup (16, 16), grid (⌈N/16⌉, ⌈K/16⌉) threadgroups; thread (x, y) of the
// grid is (n, k).
kernel void apply_sign_flips(device half *w [[buffer(0)]],
                             device const float *su [[buffer(1)]],
                             device const float *sv [[buffer(2)]],
                             constant uint &K [[buffer(3)]],
                             constant uint &N [[buffer(4)]],
                             uint2 gid [[thread_position_in_grid]])
{
    uint n = gid.x, k = gid.y;
    if (n >= N || k >= K)
        return;
    ulong at = ulong(k) * N + n;
    float c = su[k] * sv[n];
    w[at] = tk_rnh_mul(float(w[at]), c);
}

// Four consecutive n per thread (domain N % 4 = 0).  Launch: threadgroup (16, 16), grid (⌈N/64⌉, ⌈K/16⌉).
kernel void apply_sign_flips_vec4(device half4 *w [[buffer(0)]],
                                  device const float *su [[buffer(1)]],
                                  device const float4 *sv [[buffer(2)]],
                                  constant uint &K [[buffer(3)]],
                                  constant uint &N [[buffer(4)]],
                                  uint2 gid [[thread_position_in_grid]])
{
    uint n4 = gid.x, k = gid.y;
    if (n4 * 4 >= N || k >= K)
        return;
    ulong at = (ulong(k) * N) / 4 + n4;
    half4 v = w[at];
    float4 s = sv[n4];
    half4 r;
    for (uint c = 0; c < 4; c++)
        r[c] = tk_rnh_mul(float(v[c]), su[k] * s[c]);
    w[at] = r;
}
