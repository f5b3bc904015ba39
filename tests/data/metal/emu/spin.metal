// DEFECT (livelock): lanes spin on a flag that nothing sets (no scheduling point in the loop): the watchdog turns
// it into TIMEOUT.
#include <metal_stdlib>
using namespace metal;

kernel void spin_forever(device atomic_uint *flag [[buffer(0)]],
                         device float *out [[buffer(1)]],
                         uint gid [[thread_position_in_grid]])
{
    while (atomic_load_explicit(flag, memory_order_relaxed) == 0u) {
    }
    out[gid] = 1.0f;
}
