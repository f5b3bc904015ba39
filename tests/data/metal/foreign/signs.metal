// signs.metal — foreign-style sign flips (KERNELS.md §4.2 `sign_flip`, class EXACT) at the top of the folder:
// half4 vector code selected by a function constant (absent: the scalar path), and a kernel of no registry op,
// which the runner lists as unmapped.
//   out[k][n] = RNh( widen(w[k][n]) · RN32(su[k] · sv[n]) ),  in place (binding 0 is both input and output)
#include <metal_stdlib>
using namespace metal;

constant bool kVectorFC [[function_constant(2)]];
constant bool kVector = is_function_constant_defined(kVectorFC) ? kVectorFC : false;

static inline half flip(half w, float s) { return half(float(w) * s); }

// binding SIGN: 0 w in/out f16 [K][N], 1 su f32 [K], 2 sv f32 [N], 3 K, 4 N; launch TG 16×16 over (⌈N/4⌉, K)
kernel void apply_sign_flips_vec4(device half *w [[buffer(0)]],
                                  device const float *su [[buffer(1)]],
                                  device const float *sv [[buffer(2)]],
                                  constant uint &K [[buffer(3)]],
                                  constant uint &N [[buffer(4)]],
                                  uint2 gid [[thread_position_in_grid]])
{
    const uint n = gid.x * 4, k = gid.y;
    if (n >= N || k >= K)
        return;
    device half *row = w + ulong(k) * N;
    const float s = su[k];
    if (kVector) {
        device half4 *p = (device half4 *)(row + n);
        const float4 f = float4(*p) * (s * float4(sv[n], sv[n + 1], sv[n + 2], sv[n + 3]));
        *p = half4(f);
    } else {
        for (uint c = 0; c < 4; c++)
            row[n + c] = flip(row[n + c], s * sv[n + c]);
    }
}

// Not a kernel of KERNELS.md §4: unmapped.
kernel void qtip_fill_debug(device float *out [[buffer(0)]], uint i [[thread_position_in_grid]])
{
    out[i] = float(i);
}
