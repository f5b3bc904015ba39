// Correct kernel: helper functions (template, reference and pointer parameters in several address spaces), a
// struct passed by constant reference, program-scope constants and implicit (sequential) buffer indices.
// out[i] = silu(x[i]) * p.alpha + lut[i % 4]
#include <metal_stdlib>
using namespace metal;

struct Params {
    float alpha;
    uint n;
};

constant float lut[4] = {0.0, 0.25, 0.5, 0.75};

template <typename T>
inline T silu(T x) { return x / (T(1) + exp(-x)); }

static void accumulate(thread float &acc, device const float *p, uint i) { acc += p[i]; }

kernel void helper_silu(device const float *x,          // implicit buffer(0)
                        device float *out,              // implicit buffer(1)
                        constant Params &p,             // implicit buffer(2)
                        uint gid [[thread_position_in_grid]])
{
    if (gid >= p.n)
        return;
    float acc = 0.0f;
    accumulate(acc, x, gid);
    out[gid] = silu(acc) * p.alpha + lut[gid % 4];
}

// Mixed explicit and implicit indices: b gets the first free index (0), c the next free one (2).
kernel void implicit_mix(device float *a [[buffer(1)]],
                         device float *b,
                         device float *c,
                         uint gid [[thread_position_in_grid]])
{
    a[gid] = b[gid] + c[gid];
}
