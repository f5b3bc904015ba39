/*
 * check_codebook.c — grid tables (FORMAT.md §5), EXL3 value decode, LUT hashes, bit streams and the in-tile
 * permutation (FORMAT.md §7), and the Hadamard butterfly (§6.3).
 */
#include "tests.h"
#include "trellis/codebook.h"
#include "trellis/fp16.h"
#include "trellis/hadamard.h"
#include "trellis/hash.h"
#include "trellis/rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_grid_tables)
{
    static const uint32_t b2[4] = {0xBFEECAE0, 0xBF1F31EB, 0x3F1F31EB, 0x3FEECAE0};
    static const uint32_t b4[16] = {0xC1153ECC, 0xC101588F, 0xC0DAE4A3, 0xC0B31828, 0xC08B4BAE, 0xC046FE66,
                                    0xBFEECAE0, 0xBF1F31EB, 0x3F1F31EB, 0x3FEECAE0, 0x4046FE66, 0x408B4BAE,
                                    0x40B31828, 0x40DAE4A3, 0x4101588F, 0x41153ECC};
    for (int j = 0; j < 4; j++)
        ck_assert_uint_eq(tr_f32_bits(tr_grid(2)[j]), b2[j]);
    for (int j = 0; j < 16; j++)
        ck_assert_uint_eq(tr_f32_bits(tr_grid(4)[j]), b4[j]);
    ck_assert_uint_eq(tr_f32_bits(tr_grid(8)[0]), 0xC31E92B9);
    ck_assert_uint_eq(tr_grid_f16(8, 255), 0x58F5);
    ck_assert_uint_eq(tr_grid_f16(5, 0), 0xCCD2);
    static const char *const sha[9] = {
        NULL, NULL, "af7361d04478be683ad2b38c9808e1a94b6c7a8e7c0d14cb869482876a90f869",
        "c0bac775b87219dd919bea59db75f8f7363a4b0f917e4712a57f46c867e3965f",
        "07f6ee7b1d8e4673c7fe15cdbaaf8b0be148faf3903c215d804bcfc251acfc7c",
        "1b9565b86f6f42b3978f82802fb7d5fb3c8cfa4b1418444e7478ac6f604efadb",
        "2d4ed748ec99ac7da40d6dca053290ee98bc5b203cc4bf4e0f79402f73b3c293",
        "e8c94547c03f0512e9742354053d7ebf62365eb0c941140704e632774060058d",
        "195342b3b7c6d4e4fb2074c2a998ad827f00a705fa11c16e40ace0c958aa9c2f"};
    for (unsigned b = 2; b <= 8; b++) {
        char hex[65];
        tr_sha256_hex(tr_grid(b), sizeof(float) << b, hex);
        ck_assert_str_eq(hex, sha[b]);
        for (unsigned j = 0; j < (1u << b); j++)   /* symmetric, no zero level */
            ck_assert(tr_grid(b)[j] == -tr_grid(b)[(1u << b) - 1 - j] && tr_grid(b)[j] != 0.0f);
    }
}
END_TEST

START_TEST(test_exl3_luts)
{
    static const struct {
        tr_exl3_cb cb;
        const char *sha;
        uint16_t spots[8];
    } t[3] = {
        {TR_CB_3INST, "ad88de2dcff5bb05fff2faec37cceceb43aa1c2e8203f9d81a6fbd6dd3393eea",
         {0x3A25, 0xBB5B, 0x3B74, 0x3CD1, 0x3C3F, 0xC066, 0xB7F8, 0xB110}},
        {TR_CB_MCG, "95383563929baa9d1ae5de0be22490284382673620bdd85929feea7bdbef04a9",
         {0x3F60, 0x304E, 0xBA13, 0xBD26, 0xBAF0, 0x3E0F, 0xB915, 0x3ACD}},
        {TR_CB_MUL1, "bc48d02cb1c14939dc47b90f870dd689d63e3b1ab69a157e65538db68677a6c8",
         {0xC2E8, 0x3921, 0xB72D, 0x3AB3, 0xB3DB, 0xB89E, 0xBAF2, 0xB936}},
    };
    static const uint16_t states[8] = {0, 1, 2, 255, 256, 0x1234, 0x8000, 0xFFFF};
    uint16_t *lut = malloc(65536 * 2);
    for (int c = 0; c < 3; c++) {
        tr_exl3_lut(t[c].cb, lut);
        char hex[65];
        tr_sha256_hex(lut, 65536 * 2, hex);
        ck_assert_msg(strcmp(hex, t[c].sha) == 0, "%s LUT hash %s", tr_exl3_cb_name(t[c].cb), hex);
        for (int k = 0; k < 8; k++)
            ck_assert_uint_eq(lut[states[k]], t[c].spots[k]);
    }
    /* MUL1 as float32 fmaf then one rounding to fp16 (the spec's verified equivalent) */
    for (uint32_t s = 0; s < 65536; s++) {
        uint32_t x = s * 0x83DCD12Du;
        uint32_t sum = (x & 0xFF) + ((x >> 8) & 0xFF) + ((x >> 16) & 0xFF) + (x >> 24);
        float v = fmaf(1024.0f + (float)sum, tr_f16_to_f32(0x1EEE), tr_f16_to_f32(0xC931));
        ck_assert_uint_eq(tr_exl3_decode(TR_CB_MUL1, (uint16_t)s), tr_f32_to_f16(v));
    }
    free(lut);
    tr_exl3_cb cb;
    ck_assert_int_eq(tr_exl3_cb_parse("MCG", &cb), 0);
    ck_assert_int_eq(cb, TR_CB_MCG);
    ck_assert_int_eq(tr_exl3_cb_parse("grid", &cb), -1);
}
END_TEST

START_TEST(test_exl3_stream_example)
{
    uint8_t codes[256], tile[96];
    for (int e = 0; e < 256; e++)
        codes[e] = (uint8_t)(e % 8);
    tr_exl3_pack_codes(codes, 3, tile);
    static const uint8_t head[12] = {0x05, 0x77, 0x39, 0x05, 0x39, 0x05, 0x77, 0x39, 0x77, 0x39, 0x05, 0x77};
    ck_assert(memcmp(tile, head, 12) == 0);
    uint16_t st[256];
    tr_exl3_tile_states(tile, 3, st);
    ck_assert(st[0] == 0xCBB8 && st[1] == 0x5DC1 && st[2] == 0xEE0A && st[3] == 0x7053 && st[255] == 0x3977);
    for (int e = 0; e < 256; e++)   /* the low b bits of each state are its code */
        ck_assert_uint_eq(st[e] & 7, codes[e]);
    uint16_t dec[16][16];
    tr_exl3_decode_tile(tile, 3, TR_CB_3INST, dec);
    ck_assert(dec[0][0] == 0x4137 && dec[1][0] == 0xC0C1 && dec[8][0] == 0x3606 && dec[9][0] == 0xA520);
    /* random codes at every width: states recover the codes, tail-biting recurrence holds */
    tr_rng r;
    tr_rng_seed(&r, 3);
    for (unsigned b = 1; b <= 8; b++) {
        uint8_t t[256];
        for (int e = 0; e < 256; e++)
            codes[e] = (uint8_t)tr_rng_int(&r, 0, (1 << b) - 1);
        tr_exl3_pack_codes(codes, b, t);
        tr_exl3_tile_states(t, b, st);
        for (int e = 0; e < 256; e++) {
            ck_assert_uint_eq(st[e] & ((1u << b) - 1), codes[e]);
            uint16_t prev = st[(e + 255) % 256];
            ck_assert_uint_eq(st[e], (uint16_t)(((uint32_t)prev << b | codes[e]) & 0xFFFF));
        }
    }
}
END_TEST

START_TEST(test_permutation)
{
    unsigned seen[256] = {0};
    for (unsigned e = 0; e < 256; e++) {
        unsigned r, c;
        tr_exl3_perm(e, &r, &c);
        ck_assert(r < 16 && c < 16);
        ck_assert_uint_eq(tr_exl3_perm_inverse(r, c), e);
        seen[r * 16 + c]++;
    }
    for (int k = 0; k < 256; k++)
        ck_assert_uint_eq(seen[k], 1);
    static const unsigned first[9][2] = {{0, 0}, {1, 0}, {8, 0}, {9, 0}, {0, 8}, {1, 8}, {8, 8}, {9, 8}, {2, 0}};
    for (unsigned e = 0; e < 9; e++) {
        unsigned r, c;
        tr_exl3_perm(e, &r, &c);
        ck_assert(r == first[e][0] && c == first[e][1]);
    }
    ck_assert_uint_eq(tr_exl3_perm_inverse(0, 1), 32);
    ck_assert_uint_eq(tr_exl3_perm_inverse(15, 15), 255);
}
END_TEST

START_TEST(test_hadamard)
{
    float x[128], a[128];
    for (int i = 0; i < 128; i++) {
        x[i] = (float)((73 * i + 11) % 128 - 64) / 7.0f;
        a[i] = x[i] * (i % 3 == 0 ? -1.0f : 1.0f);
    }
    ck_assert_uint_eq(tr_f32_bits(x[0]), 0xC0F24925);
    ck_assert_uint_eq(tr_f32_bits(x[3]), 0x40ADB6DB);
    tr_hadamard128_blocks(a, 128);
    ck_assert(tr_f32_bits(a[0]) == 0xBFAE8DEB && tr_f32_bits(a[1]) == 0xBF5BCF2C && tr_f32_bits(a[2]) == 0xC0BEB780 &&
              tr_f32_bits(a[3]) == 0xBF9B28CE && tr_f32_bits(a[127]) == 0x3F41F305);
    char hex[65];
    tr_sha256_hex(a, sizeof a, hex);
    ck_assert_str_eq(hex, "3357cba77ec9ab76a0b058a3762113a2398395a570003ac8959a9bea20f66dc2");
    /* against the matrix definition H[r][c] = (-1)^popcount(r&c) in double, and H·H = 128·I */
    float v[64];
    double ref[64];
    for (int i = 0; i < 64; i++)
        v[i] = (float)(i % 5) - 2.0f;
    for (int r = 0; r < 64; r++) {
        ref[r] = 0;
        for (int c = 0; c < 64; c++)
            ref[r] += (__builtin_popcount((unsigned)(r & c)) & 1 ? -1.0 : 1.0) * v[c];
    }
    tr_hadamard_butterfly_f32(v, 64);
    for (int r = 0; r < 64; r++)
        ck_assert(v[r] == (float)ref[r]);   /* small integers: exact */
    ck_assert(tr_hadamard_scale_f32(100) == 0.0f);
    ck_assert_uint_eq(tr_f32_bits(tr_hadamard_scale_f32(64)), 0x3E000000);
}
END_TEST

Suite *suite_codebook(void)
{
    Suite *s = suite_create("codebook");
    TCase *tc = tcase_create("tables");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_grid_tables);
    tcase_add_test(tc, test_exl3_luts);
    tcase_add_test(tc, test_exl3_stream_example);
    tcase_add_test(tc, test_permutation);
    tcase_add_test(tc, test_hadamard);
    suite_add_tcase(s, tc);
    return s;
}
