// DEFECT (unwritten outputs): a row-wise copy whose loop bound drops the last two columns; the output keeps the
// poison it was filled with there.
#include <metal_stdlib>
using namespace metal;

kernel void copy_rows(device const float *in [[buffer(0)]],
                      device float *out [[buffer(1)]],
                      constant uint &cols [[buffer(2)]],
                      uint row [[thread_position_in_grid]])
{
    for (uint c = 0; c + 2 < cols; c++)     // bug: should be c < cols
        out[row * cols + c] = in[row * cols + c];
}
