/*
 * check_dequant.c — W16 / Ŵ16 dequantization (FORMAT.md §6.1) and the structural checks of a quantized linear.
 */
#include "tests.h"
#include "trellis/codebook.h"
#include "trellis/fp16.h"
#include "trellis/pack.h"
#include "trellis/qweight.h"
#include "trellis/rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct lin {
    tr_qweight w;
    uint8_t *q, *packed;
    float *s, *su, *sv;
} lin;

static void make(lin *l, uint32_t O, uint32_t I, unsigned b, uint32_t gs, uint64_t seed, int general_signs)
{
    tr_rng r;
    tr_rng_seed(&r, seed);
    uint32_t G = (I + gs - 1) / gs;
    size_t plen = 1 + (size_t)tr_packed_body_bytes(O, I, b);
    l->q = malloc((size_t)O * I);
    l->packed = malloc(plen);
    l->s = malloc((size_t)G * O * 4);
    l->su = malloc((size_t)I * 4);
    l->sv = malloc((size_t)O * 4);
    for (size_t k = 0; k < (size_t)O * I; k++)
        l->q[k] = (uint8_t)tr_rng_int(&r, 0, (1 << b) - 1);
    for (size_t k = 0; k < (size_t)G * O; k++)
        l->s[k] = (float)ldexp(1.0 + tr_rng_u01(&r), (int)tr_rng_int(&r, -30, 16));  /* subnormal .. overflow */
    for (uint32_t k = 0; k < I; k++)
        l->su[k] = general_signs ? (float)(0.5 + 1.5 * tr_rng_u01(&r)) : (tr_rng_next(&r) >> 63 ? -1.0f : 1.0f);
    for (uint32_t k = 0; k < O; k++)
        l->sv[k] = general_signs ? (float)-(0.5 + 1.5 * tr_rng_u01(&r)) : (tr_rng_next(&r) >> 63 ? -1.0f : 1.0f);
    tr_pack_indices(l->q, O, I, b, l->packed);
    l->w = (tr_qweight){O, I, b, gs, G, TR_ROT_NONE, l->packed, plen, l->s, l->su, l->sv};
}

static void drop(lin *l)
{
    free(l->q);
    free(l->packed);
    free(l->s);
    free(l->su);
    free(l->sv);
}

/* Element formula written independently: exact products in double, each rounded to float, then fp16 of float. */
static uint16_t model_w16(const lin *l, uint32_t o, uint32_t i, int fold)
{
    const tr_qweight *w = &l->w;
    double g = tr_grid(w->bits)[l->q[(size_t)o * w->I + i]];
    float v = (float)(g * (double)w->scales[(size_t)(i / w->gs) * w->O + o]);
    if (fold) {
        v = (float)((double)v * w->su[i]);
        v = (float)((double)v * w->sv[o]);
    }
    return tr_f32_to_f16(v);
}

START_TEST(test_dequant_matches_formula)
{
    static const uint32_t dims[][3] = {{20, 40, 128}, {33, 17, 16}, {64, 256, 64}, {7, 130, 100}};
    unsigned long bad = 0;
    for (unsigned b = 2; b <= 8; b++)
        for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
            for (int general = 0; general < 2; general++) {
                lin l;
                make(&l, dims[d][0], dims[d][1], b, dims[d][2], 1000 + b * 10 + d, general);
                size_t n = (size_t)l.w.O * l.w.I;
                uint16_t *w16 = malloc(n * 2), *hat = malloc(n * 2), *lay = malloc(n * 2);
                tr_dequant_w16(&l.w, w16);
                tr_dequant_w16hat(&l.w, hat);
                tr_dequant_layer(&l.w, lay);
                ck_assert(memcmp(lay, w16, n * 2) == 0);
                for (uint32_t o = 0; o < l.w.O; o++)
                    for (uint32_t i = 0; i < l.w.I; i++) {
                        size_t k = (size_t)o * l.w.I + i;
                        bad += w16[k] != model_w16(&l, o, i, 1);
                        bad += hat[k] != model_w16(&l, o, i, 0);
                        if (!general && !tr_f16_is_nan(hat[k])) /* ±1 signs: W16 = ±Ŵ16 exactly */
                            bad += (w16[k] ^ hat[k]) != ((l.su[i] * l.sv[o] < 0) ? 0x8000 : 0);
                        bad += tr_qweight_index(&l.w, o, i) != l.q[k];
                    }
                l.w.rotation = TR_ROT_HADAMARD128;
                tr_dequant_layer(&l.w, lay);
                ck_assert(memcmp(lay, hat, n * 2) == 0);
                free(w16);
                free(hat);
                free(lay);
                drop(&l);
            }
    ck_assert_msg(bad == 0, "%lu dequant mismatches", bad);
}
END_TEST

START_TEST(test_example_b_spots)
{
    uint8_t q[20 * 40], p[577];
    float s[20], su[40], sv[20];
    for (int o = 0; o < 20; o++) {
        s[o] = (float)(o + 1) / 64.0f;
        sv[o] = o % 5 == 0 ? -1.0f : 1.0f;
        for (int i = 0; i < 40; i++)
            q[o * 40 + i] = (uint8_t)((3 * o + 5 * i + 1) % 8);
    }
    for (int i = 0; i < 40; i++)
        su[i] = i % 3 == 0 ? -1.0f : 1.0f;
    tr_pack_indices(q, 20, 40, 3, p);
    tr_qweight w = {20, 40, 3, 128, 1, TR_ROT_NONE, p, 577, s, su, sv};
    tr_error err;
    ck_assert_int_eq(tr_qweight_check(&w, "x", "B", &err), TR_OK);
    uint16_t out[800];
    tr_dequant_w16(&w, out);
    ck_assert_uint_eq(out[0 * 40 + 0], 0xAA38);
    ck_assert_uint_eq(out[1 * 40 + 2], 0x2E38);
    ck_assert_uint_eq(out[17 * 40 + 37], 0x3833);
    ck_assert_uint_eq(out[19 * 40 + 39], 0xB8AA);
    ck_assert_uint_eq(out[5 * 40 + 33], 0x3199);
}
END_TEST

START_TEST(test_checks)
{
    lin l;
    make(&l, 20, 40, 4, 128, 5, 0);
    tr_error err;
    tr_qweight w = l.w;
    ck_assert_int_eq(tr_qweight_check(&w, "f", "K", &err), TR_OK);
    w.O = 0;
    ck_assert_int_eq(tr_qweight_check(&w, "f", "K", &err), TR_E_SHAPE);
    w = l.w;
    w.indices_len = 0;
    ck_assert_int_eq(tr_qweight_check(&w, "f", "K", &err), TR_E_QSIZE);
    w = l.w;
    w.indices_len--;
    ck_assert_int_eq(tr_qweight_check(&w, "f", "K", &err), TR_E_QSIZE);
    ck_assert_str_eq(err.text, "f: TR_E_QSIZE: K__indices: 1 + 767 bytes, expected 1 + 768 for [20,40] at 4 bits");
    w = l.w;
    w.bits = 5;
    ck_assert_int_eq(tr_qweight_check(&w, "f", "K", &err), TR_E_QBITS);
    w = l.w;
    l.packed[0] = 9;
    ck_assert_int_eq(tr_qweight_check(&w, "f", "K", &err), TR_E_QBITS);
    l.packed[0] = 4;
    w.G = 2;
    ck_assert_int_eq(tr_qweight_check(&w, "f", "K", &err), TR_E_QGROUP);
    w = l.w;
    w.gs = 0;
    ck_assert_int_eq(tr_qweight_check(&w, "f", "K", &err), TR_E_QGROUP);
    w = l.w;
    w.rotation = TR_ROT_HADAMARD128;
    ck_assert_int_eq(tr_qweight_check(&w, "f", "K", &err), TR_E_SHAPE);
    tr_rotation rot;
    ck_assert_int_eq(tr_rotation_parse("hadamard128", &rot), 0);
    ck_assert_str_eq(tr_rotation_name(rot), "hadamard128");
    ck_assert_int_eq(tr_rotation_parse("x", &rot), -1);
    drop(&l);
}
END_TEST

Suite *suite_dequant(void)
{
    Suite *s = suite_create("dequant");
    TCase *tc = tcase_create("w16");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_dequant_matches_formula);
    tcase_add_test(tc, test_example_b_spots);
    tcase_add_test(tc, test_checks);
    suite_add_tcase(s, tc);
    return s;
}
