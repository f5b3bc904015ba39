/*
 * check_pack.c — index packing (FORMAT.md §4): the per-width fast codecs equal the bit-at-a-time generic codecs for
 * every width on random tiles, whole tensors round-trip, padding is canonical, and the worked examples hold.
 */
#include "tests.h"
#include "trellis/pack.h"
#include "trellis/rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_fast_equals_generic)
{
    tr_rng r;
    tr_rng_seed(&r, 0xBADC0DE);
    unsigned long bad = 0;
    unsigned first_b = 0;
    for (unsigned b = 1; b <= 8; b++)
        for (int rep = 0; rep < 200; rep++) {
            uint8_t tile[256], in[256], a[256], g[256], pa[256], pg[256];
            for (int k = 0; k < 256; k++) {
                tile[k] = (uint8_t)tr_rng_next(&r);
                in[k] = (uint8_t)tr_rng_int(&r, 0, (1 << b) - 1);
            }
            tr_unpack_tile(tile, b, a);
            tr_unpack_tile_generic(tile, b, g);
            tr_pack_tile(in, b, pa);
            tr_pack_tile_generic(in, b, pg);
            if ((memcmp(a, g, 256) || memcmp(pa, pg, 32 * b)) && !bad++)
                first_b = b;
            tr_unpack_tile(pa, b, a);
            if (memcmp(a, in, 256) && !bad++)
                first_b = b;
        }
    ck_assert_msg(bad == 0, "%lu codec mismatches (seed 0xBADC0DE), first at b=%u", bad, first_b);
}
END_TEST

START_TEST(test_tensor_roundtrip_and_padding)
{
    tr_rng r;
    tr_rng_seed(&r, 77);
    static const uint32_t dims[][2] = {{1, 1}, {16, 16}, {17, 15}, {33, 70}, {5, 129}};
    for (unsigned b = 2; b <= 8; b++)
        for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
            uint32_t O = dims[d][0], I = dims[d][1];
            size_t n = (size_t)O * I, plen = 1 + (size_t)tr_packed_body_bytes(O, I, b);
            uint8_t *q = malloc(n), *back = malloc(n), *p = malloc(plen);
            for (size_t k = 0; k < n; k++)
                q[k] = (uint8_t)tr_rng_int(&r, 0, (1 << b) - 1);
            tr_pack_indices(q, O, I, b, p);
            ck_assert_uint_eq(p[0], b);
            tr_unpack_indices(p, O, I, back);
            ck_assert_msg(memcmp(q, back, n) == 0, "round trip b=%u [%u,%u]", b, O, I);
            /* padding positions hold 2^(b-1)-1 */
            uint32_t TI = tr_tiles_of(I);
            for (uint32_t o = 0; o < tr_tiles_of(O) * 16; o++)
                for (uint32_t i = 0; i < TI * 16; i++) {
                    unsigned v = tr_index_at(p + 1, b, TI, o, i);
                    if (o < O && i < I)
                        ck_assert_uint_eq(v, q[(size_t)o * I + i]);
                    else
                        ck_assert_uint_eq(v, tr_pad_index(b));
                }
            free(q);
            free(back);
            free(p);
        }
}
END_TEST

START_TEST(test_worked_examples)
{
    /* Example A: the 24-bit word 0xFAC688 -> bytes 88 C6 FA repeated */
    uint8_t q[16 * 16], p[97];
    for (int o = 0; o < 16; o++)
        for (int i = 0; i < 16; i++)
            q[o * 16 + i] = (uint8_t)((o * 16 + i) % 8);
    tr_pack_indices(q, 16, 16, 3, p);
    ck_assert_uint_eq(p[0], 3);
    for (int k = 0; k < 32; k++)
        ck_assert(p[1 + 3 * k] == 0x88 && p[2 + 3 * k] == 0xC6 && p[3 + 3 * k] == 0xFA);
    /* Example B: bytes 0..12, tile 2 start, the (17, 37) lookup */
    uint8_t qb[20 * 40], pb[577];
    for (int o = 0; o < 20; o++)
        for (int i = 0; i < 40; i++)
            qb[o * 40 + i] = (uint8_t)((3 * o + 5 * i + 1) % 8);
    tr_pack_indices(qb, 20, 40, 3, pb);
    static const uint8_t head[13] = {0x03, 0xf1, 0x50, 0x9d, 0xf1, 0x50, 0x9d, 0x8c, 0x87, 0xea, 0x8c, 0x87, 0xea};
    ck_assert(memcmp(pb, head, 13) == 0);
    static const uint8_t tile2[6] = {0xf1, 0x50, 0x9d, 0xdb, 0xb6, 0x6d};
    ck_assert(memcmp(pb + 1 + 96 * 2, tile2, 6) == 0);
    ck_assert(pb[488] == 0x87 && pb[489] == 0xEA);
    ck_assert_uint_eq(tr_index_at(pb + 1, 3, 3, 17, 37), 5);
    ck_assert_uint_eq(tr_packed_body_bytes(1536, 2048, 6) + 1, 2359297);   /* FORMAT.md §3.3 */
}
END_TEST

Suite *suite_pack(void)
{
    Suite *s = suite_create("pack");
    TCase *tc = tcase_create("codecs");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_fast_equals_generic);
    tcase_add_test(tc, test_tensor_roundtrip_and_padding);
    tcase_add_test(tc, test_worked_examples);
    suite_add_tcase(s, tc);
    return s;
}
