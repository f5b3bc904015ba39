// DEFECT (out-of-bounds store): every lane writes one element past its own, so the last lane writes past the end of
// the buffer into the guard bytes.
#include <metal_stdlib>
using namespace metal;

kernel void oob_store(device const float *in [[buffer(0)]],
                      device float *out [[buffer(1)]],
                      uint gid [[thread_position_in_grid]])
{
    out[gid + 1] = in[gid];                 // bug: should be out[gid]
}
