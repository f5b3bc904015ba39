/*
 * qweight.c — validation and dequantization of grid-format quantized linears (FORMAT.md §3.3, §3.7, §6.1).
 */
#include "trellis/qweight.h"
#include "trellis/codebook.h"
#include "trellis/fp16.h"
#include "trellis/pack.h"

#include <string.h>

const char *tr_rotation_name(tr_rotation r) { return r == TR_ROT_HADAMARD128 ? "hadamard128" : "none"; }

int tr_rotation_parse(const char *name, tr_rotation *out)
{
    if (strcmp(name, "none") == 0)
        *out = TR_ROT_NONE;
    else if (strcmp(name, "hadamard128") == 0)
        *out = TR_ROT_HADAMARD128;
    else
        return -1;
    return 0;
}

int tr_qweight_check(const tr_qweight *w, const char *where, const char *key, tr_error *err)
{
    if (w->O == 0 || w->I == 0)
        return tr_fail(err, TR_E_SHAPE, where, "%s: shape [%u,%u] has a zero dimension", key, w->O, w->I);
    if (w->indices_len < 1)
        return tr_fail(err, TR_E_QSIZE, where, "%s__indices: empty", key);
    unsigned b = w->indices[0];
    if (b < 2 || b > 8)
        return tr_fail(err, TR_E_QBITS, where, "%s__indices: header byte says %u bits, expected 2..8", key, b);
    if (w->bits != b)
        return tr_fail(err, TR_E_QBITS, where, "%s__indices: bits %u disagree with the header byte %u", key, w->bits,
                       b);
    /* T_O·T_I·32·b overflows 64 bits for O and I near 2^32 at 8 bits: the wrapped size 0 passed with a 1-byte tensor
     * (found by fuzz/unpack) */
    if ((uint64_t)tr_tiles_of(w->O) * tr_tiles_of(w->I) > (UINT64_MAX - 1) / tr_tile_bytes(b))
        return tr_fail(err, TR_E_QSIZE, where, "%s__indices: [%u,%u] at %u bits needs more than 2^64 bytes", key, w->O,
                       w->I, b);
    uint64_t body = tr_packed_body_bytes(w->O, w->I, b);
    if (w->indices_len != 1 + body)
        return tr_fail(err, TR_E_QSIZE, where, "%s__indices: 1 + %llu bytes, expected 1 + %llu for [%u,%u] at %u bits",
                       key, (unsigned long long)(w->indices_len - 1), (unsigned long long)body, w->O, w->I, b);
    /* ceil(I/gs) in 64 bits: I + gs - 1 wrapped for gs > 2^32 - I, so G = 0 passed with an empty scales array and
     * dequantization read scales[o] out of bounds (found by fuzz/unpack). */
    uint64_t groups = w->gs ? ((uint64_t)w->I + w->gs - 1) / w->gs : 0;
    if (w->gs == 0 || w->G != groups)
        return tr_fail(err, TR_E_QGROUP, where, "%s__scales: %u scale groups, expected %llu for I=%u, group size %u",
                       key, w->G, (unsigned long long)groups, w->I, w->gs);
    if (w->rotation == TR_ROT_HADAMARD128 && w->I % 128 != 0)
        return tr_fail(err, TR_E_SHAPE, where, "%s: rotation hadamard128 needs I %% 128 == 0, I = %u", key, w->I);
    return TR_OK;
}

unsigned tr_qweight_index(const tr_qweight *w, uint32_t o, uint32_t i)
{
    return tr_index_at(w->indices + 1, w->bits, tr_tiles_of(w->I), o, i);
}

/* Dequantize tile by tile: unpack 256 indices with the fast codec, then evaluate the §6.1 products in order. */
static void dequant(const tr_qweight *w, uint16_t *out, int fold_signs)
{
    const unsigned b = w->bits;
    const float *grid = tr_grid(b);
    const uint32_t TO = tr_tiles_of(w->O), TI = tr_tiles_of(w->I);
    uint8_t q[TR_TILE_ELEMS];
    for (uint32_t to = 0; to < TO; to++)
        for (uint32_t ti = 0; ti < TI; ti++) {
            tr_unpack_tile(w->indices + 1 + ((uint64_t)to * TI + ti) * tr_tile_bytes(b), b, q);
            for (unsigned lo = 0; lo < TR_TILE; lo++) {
                uint32_t o = to * TR_TILE + lo;
                if (o >= w->O)
                    break;
                for (unsigned li = 0; li < TR_TILE; li++) {
                    uint32_t i = ti * TR_TILE + li;
                    if (i >= w->I)
                        break;
                    float v = grid[q[lo * TR_TILE + li]] * w->scales[(size_t)(i / w->gs) * w->O + o];
                    if (fold_signs)
                        v = (v * w->su[i]) * w->sv[o];
                    out[(size_t)o * w->I + i] = tr_f32_to_f16(v);
                }
            }
        }
}

void tr_dequant_w16(const tr_qweight *w, uint16_t *out) { dequant(w, out, 1); }

void tr_dequant_w16hat(const tr_qweight *w, uint16_t *out) { dequant(w, out, 0); }

void tr_dequant_layer(const tr_qweight *w, uint16_t *out) { dequant(w, out, w->rotation == TR_ROT_NONE); }
