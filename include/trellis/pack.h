/*
 * pack.h — packed index streams of the grid format (FORMAT.md §4).
 *
 * A quantized [O, I] weight is cut into 16×16 tiles, tile t = to·T_I + ti (output-major), element e = lo·16 + li
 * inside a tile, and index s = t·256 + e occupies stream bits [s·b, s·b + b), least-significant bit first.  Each tile
 * is 32·b bytes and starts on a byte boundary, so tiles pack and unpack independently.
 *
 * Two implementations of the tile codec exist: the generic one reads and writes one bit at a time exactly as §4.2
 * states; the fast one moves 8 indices per b bytes with a 64-bit word, specialised per width.  Tests prove them equal.
 */
#ifndef TRELLIS_PACK_H
#define TRELLIS_PACK_H

#include <stddef.h>
#include <stdint.h>

#define TR_TILE 16
#define TR_TILE_ELEMS 256

/* In 64 bits: n + 15 wrapped for n > 2^32 - 16, giving 0 tiles and a 0-byte body that tr_qweight_check accepted for
 * O or I near 2^32 (every index read was then out of bounds; found by fuzz/unpack). */
static inline uint32_t tr_tiles_of(uint32_t n) { return (uint32_t)(((uint64_t)n + TR_TILE - 1) / TR_TILE); }
static inline uint32_t tr_tile_bytes(unsigned bits) { return 32u * bits; }
/* Body bytes (without the header byte) of an [O, I] tensor at b bits: T_O·T_I·32·b. */
static inline uint64_t tr_packed_body_bytes(uint32_t O, uint32_t I, unsigned bits)
{
    return (uint64_t)tr_tiles_of(O) * tr_tiles_of(I) * tr_tile_bytes(bits);
}
/* Canonical padding index 2^(b-1) - 1. */
static inline uint8_t tr_pad_index(unsigned bits) { return (uint8_t)((1u << (bits - 1)) - 1); }

/* One index read straight from the body by the formula of §4.2 (body excludes the header byte). */
unsigned tr_index_at(const uint8_t *body, unsigned bits, uint32_t T_I, uint32_t o, uint32_t i);

/* Tile codecs, bits in 1..8 (the grid format uses 2..8). */
void tr_unpack_tile(const uint8_t *tile, unsigned bits, uint8_t out[TR_TILE_ELEMS]);
void tr_pack_tile(const uint8_t in[TR_TILE_ELEMS], unsigned bits, uint8_t *tile);
void tr_unpack_tile_generic(const uint8_t *tile, unsigned bits, uint8_t out[TR_TILE_ELEMS]);
void tr_pack_tile_generic(const uint8_t in[TR_TILE_ELEMS], unsigned bits, uint8_t *tile);

/* Pack q[O][I] (values < 2^b) into out[1 + body]: header byte b, canonical padding.  Values are masked to b bits. */
void tr_pack_indices(const uint8_t *q, uint32_t O, uint32_t I, unsigned bits, uint8_t *out);
/* Unpack the valid positions of a packed tensor (with header byte) into q[O][I]. */
void tr_unpack_indices(const uint8_t *packed, uint32_t O, uint32_t I, uint8_t *q);

#endif
