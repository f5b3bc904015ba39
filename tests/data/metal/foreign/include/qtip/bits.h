// qtip/bits.h — helpers of the foreign-style kernels in tests/data/metal/foreign/ (a layout unlike metal/kernels/:
// headers in a subfolder, a namespace, a METAL_FUNC macro, small structs with member functions, templates and
// constexpr program-scope constants).  The decode is KERNELS.md §4.1 / FORMAT.md §6.1:
//   W16[n][k] = RNh( RN32( RN32( RN32(grid_b[q] · S[k/gs][n]) · su[k]) · sv[n]) )
// with q the b-bit index of element e = (n%16)·16 + (k%16) of tile (k/16, n/16) of the GEMM-ordered PK body.
#ifndef QTIP_BITS_H
#define QTIP_BITS_H

#include <metal_stdlib>

#ifndef METAL_FUNC
#define METAL_FUNC inline __attribute__((always_inline))
#endif

namespace qtip {

using namespace metal;

constexpr constant uint kTile = 16;
constexpr constant uint kTileElems = kTile * kTile;

// One 16×16 tile of b-bit indices, LSB first.
struct PackedTile {
    device const uchar *bytes;
    uint bits;

    METAL_FUNC uint index(uint e) const
    {
        const uint p = e * bits;
        uint v = uint(bytes[p >> 3]);
        if ((p & 7u) + bits > 8u)
            v |= uint(bytes[(p >> 3) + 1]) << 8;
        return extract_bits(v, p & 7u, bits);
    }
};

METAL_FUNC PackedTile tile_at(device const uchar *packed, uint k, uint n, uint N, uint bits)
{
    const uint tiles_out = (N + kTile - 1) / kTile;
    const ulong t = ulong(k / kTile) * tiles_out + n / kTile;
    return PackedTile{packed + t * (2u * kTile * bits), bits};
}

METAL_FUNC uint in_tile(uint k, uint n) { return (n % kTile) * kTile + (k % kTile); }

// RN32 at each product, one RNh at the end (T = half: the W16 value).
template <typename T>
METAL_FUNC T scale_weight(float g, float s, float su, float sv)
{
    float w = g * s;
    w *= su;
    w *= sv;
    return static_cast<T>(w);
}

} // namespace qtip

#endif
