/*
 * codebook.h — the grid codebook (FORMAT.md §5) and the EXL3 computed codebooks and bit streams (FORMAT.md §7).
 */
#ifndef TRELLIS_CODEBOOK_H
#define TRELLIS_CODEBOOK_H

#include <stdint.h>

/* grid_b[j] = fl32(h_j · c), h_j = j − (2^b − 1)/2, c = fl32(1.24371088) = 0x3F9F31EB.  b in 1..8. */
#define TR_GRID_STEP_BITS 0x3F9F31EBu
float tr_grid_value(unsigned bits, unsigned j);
/* The 2^b-entry float32 table of width b (static storage, read-only). */
const float *tr_grid(unsigned bits);
/* fp16 form of the grid: RNh(grid_b[j]). */
uint16_t tr_grid_f16(unsigned bits, unsigned j);

/* EXL3 codebooks, numbered as exllamav3 numbers them. */
typedef enum tr_exl3_cb { TR_CB_3INST = 0, TR_CB_MCG = 1, TR_CB_MUL1 = 2 } tr_exl3_cb;

/* Parse "3inst" | "mcg" | "mul1" (case-insensitive); -1 if unknown. */
int tr_exl3_cb_parse(const char *name, tr_exl3_cb *out);
const char *tr_exl3_cb_name(tr_exl3_cb cb);
/* fp16 bits of the value of 16-bit state x (FORMAT.md §7.1). */
uint16_t tr_exl3_decode(tr_exl3_cb cb, uint16_t state);
/* The 65,536-entry LUT (state ascending). */
void tr_exl3_lut(tr_exl3_cb cb, uint16_t out[65536]);

/* The 256 tail-biting states of one tile's 256·b-bit stream (§7.3), b in 1..8, element order e of §7.4. */
void tr_exl3_tile_states(const uint8_t *tile, unsigned bits, uint16_t states[256]);
/* Pack 256 codes (each < 2^b, element order e) MSB-first into the tile stream (32·b bytes). */
void tr_exl3_pack_codes(const uint8_t codes[256], unsigned bits, uint8_t *tile);
/* In-tile permutation (§7.4): element e -> (r, c) and back. */
void tr_exl3_perm(unsigned e, unsigned *r, unsigned *c);
unsigned tr_exl3_perm_inverse(unsigned r, unsigned c);
/* Decode one tile to fp16 out[r][c] (r along k/input, c along n/output). */
void tr_exl3_decode_tile(const uint8_t *tile, unsigned bits, tr_exl3_cb cb, uint16_t out[16][16]);

#endif
