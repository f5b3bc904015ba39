/*
 * codebook.c — grid tables (FORMAT.md §5) and EXL3 value decode, bitshift states and tile permutation (§7).
 */
#include "trellis/codebook.h"
#include "trellis/fp16.h"

#include <strings.h>

static float grid_tables[9][256];

/* One float32 multiply of two exact float32 operands, RN32 (the reference has no contraction or excess precision). */
float tr_grid_value(unsigned bits, unsigned j)
{
    float h = (float)j - (float)((1u << bits) - 1) / 2.0f;   /* a half-integer, exact */
    float c = tr_bits_f32(TR_GRID_STEP_BITS);
    return h * c;
}

__attribute__((constructor)) static void build_grids(void)
{
    for (unsigned b = 1; b <= 8; b++)
        for (unsigned j = 0; j < (1u << b); j++)
            grid_tables[b][j] = tr_grid_value(b, j);
}

const float *tr_grid(unsigned bits) { return grid_tables[bits >= 1 && bits <= 8 ? bits : 0]; }

uint16_t tr_grid_f16(unsigned bits, unsigned j) { return tr_f32_to_f16(tr_grid(bits)[j]); }

int tr_exl3_cb_parse(const char *name, tr_exl3_cb *out)
{
    static const char *names[] = {"3inst", "mcg", "mul1"};
    for (int i = 0; i < 3; i++)
        if (strcasecmp(name, names[i]) == 0) {
            *out = (tr_exl3_cb)i;
            return 0;
        }
    return -1;
}

const char *tr_exl3_cb_name(tr_exl3_cb cb)
{
    return cb == TR_CB_3INST ? "3inst" : cb == TR_CB_MCG ? "mcg" : cb == TR_CB_MUL1 ? "mul1" : "?";
}

/* hi16 + lo16 as fp16 values, summed exactly (in double) and rounded once to fp16. */
static uint16_t half_sum(uint32_t x)
{
    x = (x & 0x8FFF8FFFu) ^ 0x3B603B60u;
    double lo = tr_f16_to_f32((uint16_t)(x & 0xFFFF));
    double hi = tr_f16_to_f32((uint16_t)(x >> 16));
    return tr_f64_to_f16(lo + hi);
}

uint16_t tr_exl3_decode(tr_exl3_cb cb, uint16_t state)
{
    uint32_t x = state;
    switch (cb) {
    case TR_CB_3INST:
        return half_sum(x * 89226354u + 64248484u);
    case TR_CB_MCG:
        return half_sum(x * 0xCBAC1FEDu);
    case TR_CB_MUL1: {
        x *= 0x83DCD12Du;
        uint32_t s = (x & 0xFF) + ((x >> 8) & 0xFF) + ((x >> 16) & 0xFF) + (x >> 24);
        /* fp16(0x6400 + s) = 1024 + s; h·k_inv + k_bias is exact in double (22 + 11 significant bits), so one
         * rounding to fp16 is the fused multiply-add the spec requires. */
        double h = 1024.0 + (double)s;
        double k_inv = tr_f16_to_f32(0x1EEE), k_bias = tr_f16_to_f32(0xC931);
        return tr_f64_to_f16(h * k_inv + k_bias);
    }
    }
    return 0x7E00;
}

void tr_exl3_lut(tr_exl3_cb cb, uint16_t out[65536])
{
    for (uint32_t s = 0; s < 65536; s++)
        out[s] = tr_exl3_decode(cb, (uint16_t)s);
}

/* Stream bit p: bit 31 − (p mod 32) of the little-endian 32-bit word p/32. */
static unsigned stream_bit(const uint8_t *tile, unsigned p)
{
    unsigned m = p / 32, k = 31 - p % 32;
    return (tile[4 * m + k / 8] >> (k % 8)) & 1u;
}

void tr_exl3_tile_states(const uint8_t *tile, unsigned bits, uint16_t states[256])
{
    unsigned nbits = 256 * bits;
    for (unsigned e = 0; e < 256; e++) {
        unsigned end = (e + 1) * bits;                       /* window [end − 16, end), wrapping */
        unsigned st = 0;
        for (unsigned q = 0; q < 16; q++)
            st = (st << 1) | stream_bit(tile, (end + nbits - 16 + q) % nbits);
        states[e] = (uint16_t)st;
    }
}

void tr_exl3_pack_codes(const uint8_t codes[256], unsigned bits, uint8_t *tile)
{
    for (unsigned i = 0; i < 32 * bits; i++)
        tile[i] = 0;
    for (unsigned e = 0; e < 256; e++)
        for (unsigned q = 0; q < bits; q++) {
            unsigned p = e * bits + q;                       /* code bit q, MSB first */
            if ((codes[e] >> (bits - 1 - q)) & 1u) {
                unsigned m = p / 32, k = 31 - p % 32;
                tile[4 * m + k / 8] |= (uint8_t)(1u << (k % 8));
            }
        }
}

void tr_exl3_perm(unsigned e, unsigned *r, unsigned *c)
{
    unsigned t = e / 8, j = e % 8;
    *r = 2 * (t % 4) + (j & 1) + 8 * ((j >> 1) & 1);
    *c = t / 4 + 8 * (j >> 2);
}

unsigned tr_exl3_perm_inverse(unsigned r, unsigned c)
{
    unsigned j = (r & 1) | ((r >> 3) & 1) << 1 | ((c >> 3) & 1) << 2;
    unsigned t = 4 * (c & 7) + (r & 7) / 2;
    return 8 * t + j;
}

void tr_exl3_decode_tile(const uint8_t *tile, unsigned bits, tr_exl3_cb cb, uint16_t out[16][16])
{
    uint16_t states[256];
    tr_exl3_tile_states(tile, bits, states);
    for (unsigned e = 0; e < 256; e++) {
        unsigned r, c;
        tr_exl3_perm(e, &r, &c);
        out[r][c] = tr_exl3_decode(cb, states[e]);
    }
}
