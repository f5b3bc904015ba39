/*
 * qweight.h — one quantized linear in the grid format, as a view, and its dequantization (FORMAT.md §3, §6).
 *
 * A tr_qweight points at the packed indices (header byte + body) and at float32 scales [G][O], su [I] and sv [O].
 * Loaders fill it from checkpoints; ops and tests fill it from arrays.  Dequantization produces
 *   W16[o,i]  = RNh( ((grid_b[q]·S[g][o])·su[i])·sv[o] )   (each product RN32; rotation none)
 *   Ŵ16[o,i]  = RNh( grid_b[q]·S[g][o] )                    (signs not folded; rotation hadamard128)
 */
#ifndef TRELLIS_QWEIGHT_H
#define TRELLIS_QWEIGHT_H

#include "trellis/status.h"

#include <stddef.h>
#include <stdint.h>

typedef enum tr_rotation { TR_ROT_NONE = 0, TR_ROT_HADAMARD128 = 1 } tr_rotation;

const char *tr_rotation_name(tr_rotation r);
/* "none" | "hadamard128" -> 0, else -1. */
int tr_rotation_parse(const char *name, tr_rotation *out);

typedef struct tr_qweight {
    uint32_t O, I;             /* out_features (rows), in_features (columns) */
    unsigned bits;             /* = indices[0], 2..8 */
    uint32_t gs, G;            /* group size along I, G = ceil(I / gs) */
    tr_rotation rotation;
    const uint8_t *indices;    /* header byte + T_O·T_I·32·b body */
    uint64_t indices_len;
    const float *scales;       /* [G][O] */
    const float *su;           /* [I] */
    const float *sv;           /* [O] */
} tr_qweight;

/* Structural checks (FORMAT.md §3.3, §3.7): O, I >= 1, header byte in 2..8, indices length, gs >= 1 and
 * G = ceil(I/gs), hadamard128 needs I % 128 == 0.  Messages read "<where>: <CODE>: <key>__indices: …" with key the
 * tensor's key base (FORMAT.md §3.1). */
int tr_qweight_check(const tr_qweight *w, const char *where, const char *key, tr_error *err);

/* The index of (o, i), from the packed stream. */
unsigned tr_qweight_index(const tr_qweight *w, uint32_t o, uint32_t i);

/* W16 [O][I] (signs folded). */
void tr_dequant_w16(const tr_qweight *w, uint16_t *out);
/* Ŵ16 [O][I] (signs not folded). */
void tr_dequant_w16hat(const tr_qweight *w, uint16_t *out);
/* What a dequant kernel of the layer's rotation outputs: W16 for none, Ŵ16 for hadamard128. */
void tr_dequant_layer(const tr_qweight *w, uint16_t *out);

#endif
