/*
 * pack.c — index stream codecs (FORMAT.md §4): the bit-at-a-time generic path and per-width fast paths.
 */
#include "trellis/pack.h"

#include <string.h>

unsigned tr_index_at(const uint8_t *body, unsigned bits, uint32_t T_I, uint32_t o, uint32_t i)
{
    uint64_t t = (uint64_t)(o / TR_TILE) * T_I + i / TR_TILE;
    uint64_t e = (uint64_t)(o % TR_TILE) * TR_TILE + i % TR_TILE;
    uint64_t p = (t * TR_TILE_ELEMS + e) * bits;
    unsigned v = body[p / 8];
    if (p % 8 + bits > 8)
        v |= (unsigned)body[p / 8 + 1] << 8;
    return (v >> (p % 8)) & ((1u << bits) - 1);
}

void tr_unpack_tile_generic(const uint8_t *tile, unsigned bits, uint8_t out[TR_TILE_ELEMS])
{
    for (unsigned e = 0; e < TR_TILE_ELEMS; e++) {
        unsigned v = 0;
        for (unsigned k = 0; k < bits; k++) {
            unsigned p = e * bits + k;
            v |= ((tile[p / 8] >> (p % 8)) & 1u) << k;
        }
        out[e] = (uint8_t)v;
    }
}

void tr_pack_tile_generic(const uint8_t in[TR_TILE_ELEMS], unsigned bits, uint8_t *tile)
{
    memset(tile, 0, tr_tile_bytes(bits));
    for (unsigned e = 0; e < TR_TILE_ELEMS; e++)
        for (unsigned k = 0; k < bits; k++) {
            unsigned p = e * bits + k;
            tile[p / 8] |= (uint8_t)(((in[e] >> k) & 1u) << (p % 8));
        }
}

/* Fast path: 8 consecutive indices occupy exactly `bits` bytes; move them through one little-endian 64-bit word.
 * The inline body is instantiated once per constant width so the compiler unrolls the 8 shifts. */
static inline void unpack_groups(const uint8_t *tile, unsigned bits, uint8_t *out)
{
    const uint64_t mask = (1u << bits) - 1;
    for (unsigned g = 0; g < TR_TILE_ELEMS / 8; g++) {
        uint64_t w = 0;
        memcpy(&w, tile + g * bits, bits);
        for (unsigned j = 0; j < 8; j++)
            out[g * 8 + j] = (uint8_t)((w >> (j * bits)) & mask);
    }
}

static inline void pack_groups(const uint8_t *in, unsigned bits, uint8_t *tile)
{
    const uint64_t mask = (1u << bits) - 1;
    for (unsigned g = 0; g < TR_TILE_ELEMS / 8; g++) {
        uint64_t w = 0;
        for (unsigned j = 0; j < 8; j++)
            w |= ((uint64_t)in[g * 8 + j] & mask) << (j * bits);
        memcpy(tile + g * bits, &w, bits);
    }
}

void tr_unpack_tile(const uint8_t *tile, unsigned bits, uint8_t out[TR_TILE_ELEMS])
{
    switch (bits) {
    case 1: unpack_groups(tile, 1, out); break;
    case 2: unpack_groups(tile, 2, out); break;
    case 3: unpack_groups(tile, 3, out); break;
    case 4: unpack_groups(tile, 4, out); break;
    case 5: unpack_groups(tile, 5, out); break;
    case 6: unpack_groups(tile, 6, out); break;
    case 7: unpack_groups(tile, 7, out); break;
    case 8: memcpy(out, tile, TR_TILE_ELEMS); break;
    default: tr_unpack_tile_generic(tile, bits, out); break;
    }
}

void tr_pack_tile(const uint8_t in[TR_TILE_ELEMS], unsigned bits, uint8_t *tile)
{
    switch (bits) {
    case 1: pack_groups(in, 1, tile); break;
    case 2: pack_groups(in, 2, tile); break;
    case 3: pack_groups(in, 3, tile); break;
    case 4: pack_groups(in, 4, tile); break;
    case 5: pack_groups(in, 5, tile); break;
    case 6: pack_groups(in, 6, tile); break;
    case 7: pack_groups(in, 7, tile); break;
    case 8: memcpy(tile, in, TR_TILE_ELEMS); break;
    default: tr_pack_tile_generic(in, bits, tile); break;
    }
}

void tr_pack_indices(const uint8_t *q, uint32_t O, uint32_t I, unsigned bits, uint8_t *out)
{
    uint32_t TO = tr_tiles_of(O), TI = tr_tiles_of(I);
    uint8_t tile[TR_TILE_ELEMS];
    const uint8_t mask = (uint8_t)((1u << bits) - 1);
    out[0] = (uint8_t)bits;
    uint8_t *body = out + 1;
    for (uint32_t to = 0; to < TO; to++)
        for (uint32_t ti = 0; ti < TI; ti++) {
            for (unsigned lo = 0; lo < TR_TILE; lo++)
                for (unsigned li = 0; li < TR_TILE; li++) {
                    uint32_t o = to * TR_TILE + lo, i = ti * TR_TILE + li;
                    tile[lo * TR_TILE + li] = (o < O && i < I) ? (uint8_t)(q[(size_t)o * I + i] & mask)
                                                               : tr_pad_index(bits);
                }
            tr_pack_tile(tile, bits, body + ((uint64_t)to * TI + ti) * tr_tile_bytes(bits));
        }
}

void tr_unpack_indices(const uint8_t *packed, uint32_t O, uint32_t I, uint8_t *q)
{
    unsigned bits = packed[0];
    uint32_t TO = tr_tiles_of(O), TI = tr_tiles_of(I);
    uint8_t tile[TR_TILE_ELEMS];
    for (uint32_t to = 0; to < TO; to++)
        for (uint32_t ti = 0; ti < TI; ti++) {
            tr_unpack_tile(packed + 1 + ((uint64_t)to * TI + ti) * tr_tile_bytes(bits), bits, tile);
            for (unsigned lo = 0; lo < TR_TILE; lo++)
                for (unsigned li = 0; li < TR_TILE; li++) {
                    uint32_t o = to * TR_TILE + lo, i = ti * TR_TILE + li;
                    if (o < O && i < I)
                        q[(size_t)o * I + i] = tile[lo * TR_TILE + li];
                }
        }
}
