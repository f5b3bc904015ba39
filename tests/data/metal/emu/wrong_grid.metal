// DEFECT (wrong decode): decodes b-bit indices into grid values, but looks the value up in a table laid out for
// b-1 bits (index >> 1), so most values are wrong for every b.  Judged against the reference in phase 2; here it only
// has to run.
#include <metal_stdlib>
using namespace metal;

kernel void decode_grid(device const uchar *idx [[buffer(0)]],
                        device const float *grid [[buffer(1)]],
                        device half *out [[buffer(2)]],
                        constant uint &bits [[buffer(3)]],
                        uint gid [[thread_position_in_grid]])
{
    uint i = idx[gid] & ((1u << bits) - 1u);
    out[gid] = half(grid[i >> 1]);          // bug: should be grid[i]
}
