/*
 * reg_adapt.c — the weight adapters of KERNELS.md §3 (PK, I16, BULK) as pure functions: canonical packed indices
 * (FORMAT.md §4: tiles output-major, t = to·T_I + ti) rearranged into the GEMM-order forms the Metal kernels bind.
 * The runner (cli/conform_metal.c) adds the scalar conversions (H16, NOSIGN, TEX, STACK) around them.
 */
#include "trellis/pack.h"
#include "trellis/registry.h"

#include <string.h>

void tr_adapt_pk(const uint8_t *indices, uint32_t O, uint32_t I, uint8_t *out)
{
    unsigned bits = indices[0];
    uint32_t TO = tr_tiles_of(O), TI = tr_tiles_of(I), tb = tr_tile_bytes(bits);
    for (uint32_t to = 0; to < TO; to++)
        for (uint32_t ti = 0; ti < TI; ti++)
            memcpy(out + ((uint64_t)ti * TO + to) * tb, indices + 1 + ((uint64_t)to * TI + ti) * tb, tb);
}

void tr_adapt_i16(const uint8_t *indices, uint32_t O, uint32_t I, int16_t *out)
{
    unsigned bits = indices[0];
    uint32_t TO = tr_tiles_of(O), TI = tr_tiles_of(I);
    uint8_t e[TR_TILE_ELEMS];
    for (uint32_t to = 0; to < TO; to++)
        for (uint32_t ti = 0; ti < TI; ti++) {
            tr_unpack_tile(indices + 1 + ((uint64_t)to * TI + ti) * tr_tile_bytes(bits), bits, e);
            int16_t *t = out + ((uint64_t)ti * TO + to) * TR_TILE_ELEMS;
            for (unsigned lo = 0; lo < TR_TILE; lo++)        /* canonical e = lo·16 + li -> (li)·16 + lo */
                for (unsigned li = 0; li < TR_TILE; li++)
                    t[li * TR_TILE + lo] = e[lo * TR_TILE + li];
        }
}

void tr_adapt_bulk_scales(const float *S, uint32_t O, uint32_t I, uint32_t gs, float *out)
{
    uint32_t TO = tr_tiles_of(O), TI = tr_tiles_of(I);
    for (uint32_t ti = 0; ti < TI; ti++)
        for (uint32_t to = 0; to < TO; to++)
            out[(uint64_t)ti * TO + to] = S[(uint64_t)(ti * TR_TILE / gs) * O + to * TR_TILE];
}
