/*
 * check_safetensors.c — the strict reader and deterministic writer (FORMAT.md §2.6).
 *
 * The malformed-file corpus (tests/data/bad, one file per rule) is checked by check_corpus.c; this suite covers
 * valid edge cases, the writer's byte layout, widening, lookups and allocation failures at every point.
 */
#include "tests.h"
#include "trellis/alloc.h"
#include "trellis/fp16.h"
#include "trellis/safetensors.h"
#include "trellis/utf8.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tr_st_file *open_image(const char *header, const void *data, size_t n, int *rc, tr_error *err)
{
    size_t size;
    uint8_t *img = tr_test_st_image(header, data, n, &size);
    const char *path = tr_test_write(tr_test_tmpdir(), "t.safetensors", img, size);
    free(img);
    tr_st_file *f = NULL;
    *rc = tr_st_open(path, &f, err);
    return f;
}

START_TEST(test_valid_edge_cases)
{
    tr_error err;
    int rc;
    /* no tensors, D = 0 */
    tr_st_file *f = open_image("{}", NULL, 0, &rc, &err);
    ck_assert_msg(rc == TR_OK, "%s", err.text);
    ck_assert_uint_eq(tr_st_count(f), 0);
    tr_st_close(f);
    /* rank-0 and zero-element tensors, -0 in a shape, metadata, padding spaces, misaligned data */
    float one = 1.0f;
    f = open_image("{\"__metadata__\":{\"format\":\"pt\"},\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                   "\"z\":{\"dtype\":\"F16\",\"shape\":[0,-0],\"data_offsets\":[4,4]}}  ",
                   &one, 4, &rc, &err);
    ck_assert_msg(rc == TR_OK, "%s", err.text);
    ck_assert_uint_eq(tr_st_count(f), 2);
    const tr_st_tensor *s = tr_st_find(f, "s");
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(s->ndim, 0);
    ck_assert_uint_eq(s->numel, 1);
    ck_assert_ptr_null(tr_st_find(f, "nope"));
    ck_assert_uint_eq(tr_st_find(f, "z")->numel, 0);
    ck_assert_str_eq(tr_st_metadata_key(f, 0), "format");
    ck_assert_str_eq(tr_st_metadata_value(f, 0), "pt");
    ck_assert_ptr_null(tr_st_metadata_key(f, 1));
    float v;
    ck_assert_int_eq(tr_st_read_f32(f, s, &v, &err), TR_OK);
    ck_assert(v == 1.0f);
    /* header of 8 + 140-ish bytes: alignment of s depends on N; it is reported, never an error */
    ck_assert_int_eq(s->aligned, (8 + tr_st_header_size(f)) % 4 == 0);
    tr_st_close(f);
}
END_TEST

START_TEST(test_widening)
{
    uint16_t data[4] = {0x3C00, 0xC000, 0x3F80, 0xFF80};   /* F16 1, -2 ; BF16 1, -inf */
    tr_error err;
    int rc;
    tr_st_file *f = open_image("{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                               "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[4,8]},"
                               "\"c\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,8]}}",
                               data, 8, &rc, &err);
    ck_assert_msg(rc == TR_OK, "%s", err.text);
    float out[2];
    ck_assert_int_eq(tr_st_read_f32(f, tr_st_find(f, "a"), out, &err), TR_OK);
    ck_assert(out[0] == 1.0f && out[1] == -2.0f);
    ck_assert_int_eq(tr_st_read_f32(f, tr_st_find(f, "b"), out, &err), TR_OK);
    ck_assert(out[0] == 1.0f && out[1] < -1e38f);
    ck_assert_int_eq(tr_st_read_f32(f, tr_st_find(f, "c"), out, &err), TR_E_DTYPE);
    ck_assert_msg(strstr(err.text, "dtype U8 not allowed"), "%s", err.text);
    uint16_t e;
    tr_st_copy_element(tr_st_find(f, "b"), 1, &e);
    ck_assert_uint_eq(e, 0xFF80);
    tr_st_close(f);
}
END_TEST

START_TEST(test_dtype_table)
{
    tr_dtype dt;
    ck_assert_int_eq(tr_dtype_parse("F8_E4M3", &dt), 0);
    ck_assert_uint_eq(tr_dtype_size(dt), 1);
    ck_assert_int_eq(tr_dtype_parse("C64", &dt), 0);
    ck_assert_uint_eq(tr_dtype_size(dt), 8);
    ck_assert_int_eq(tr_dtype_parse("f32", &dt), -1);
    for (int i = 0; i < TR_DT_COUNT; i++) {
        ck_assert_int_eq(tr_dtype_parse(tr_dtype_name((tr_dtype)i), &dt), 0);
        ck_assert_int_eq(dt, i);
    }
    ck_assert_str_eq(tr_dtype_name(TR_DT_COUNT), "?");
}
END_TEST

/* Writer: size-descending then name order, compact JSON, padded to 8, deterministic, and readable back. */
START_TEST(test_writer_layout)
{
    const char *dir = tr_test_tmpdir();
    char p1[4200], p2[4200];
    snprintf(p1, sizeof p1, "%s/w1.safetensors", dir);
    snprintf(p2, sizeof p2, "%s/w2.safetensors", dir);
    uint8_t u8[3] = {1, 2, 3};
    float f32[2] = {1.5f, -2.0f};
    uint16_t f16[1] = {0x3C00};
    uint64_t s3[1] = {3}, s2[2] = {1, 2}, s1[1] = {1};
    for (int round = 0; round < 2; round++) {
        tr_st_writer *w = tr_st_writer_new();
        tr_error err;
        /* insertion order differs per round: the output must not */
        if (round == 0) {
            ck_assert_int_eq(tr_st_writer_add(w, "bytes", TR_DT_U8, 1, s3, u8, &err), TR_OK);
            ck_assert_int_eq(tr_st_writer_add(w, "z_f32", TR_DT_F32, 2, s2, f32, &err), TR_OK);
            ck_assert_int_eq(tr_st_writer_add(w, "a_f16", TR_DT_F16, 1, s1, f16, &err), TR_OK);
        } else {
            ck_assert_int_eq(tr_st_writer_add(w, "a_f16", TR_DT_F16, 1, s1, f16, &err), TR_OK);
            ck_assert_int_eq(tr_st_writer_add(w, "z_f32", TR_DT_F32, 2, s2, f32, &err), TR_OK);
            ck_assert_int_eq(tr_st_writer_add(w, "bytes", TR_DT_U8, 1, s3, u8, &err), TR_OK);
        }
        ck_assert_int_eq(tr_st_writer_add(w, "bytes", TR_DT_U8, 1, s3, u8, &err), TR_E_TENSOR_DUPLICATE);
        ck_assert_int_eq(tr_st_writer_add(w, "__metadata__", TR_DT_U8, 1, s3, u8, &err), TR_E_INVALID_PARAM);
        ck_assert_uint_eq(tr_st_writer_data_size(w), 8 + 2 + 3);
        ck_assert_int_eq(tr_st_writer_write(w, round ? p2 : p1, &err), TR_OK);
        tr_st_writer_free(w);
    }
    FILE *a = fopen(p1, "rb"), *b = fopen(p2, "rb");
    char ba[512], bb[512];
    size_t na = fread(ba, 1, sizeof ba, a), nb = fread(bb, 1, sizeof bb, b);
    fclose(a);
    fclose(b);
    ck_assert_uint_eq(na, nb);
    ck_assert(memcmp(ba, bb, na) == 0);
    uint64_t n = 0;
    memcpy(&n, ba, 8);
    ck_assert_uint_eq((8 + n) % 8, 0);
    const char *want = "{\"__metadata__\":{\"format\":\"pt\"},\"z_f32\":{\"dtype\":\"F32\",\"shape\":[1,2],"
                       "\"data_offsets\":[0,8]},\"a_f16\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[8,10]},"
                       "\"bytes\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[10,13]}}";
    ck_assert(strncmp(ba + 8, want, strlen(want)) == 0);
    for (size_t k = 8 + strlen(want); k < 8 + n; k++)
        ck_assert_int_eq(ba[k], ' ');
    tr_st_file *f = NULL;
    tr_error err;
    ck_assert_int_eq(tr_st_open(p1, &f, &err), TR_OK);
    ck_assert_uint_eq(tr_st_count(f), 3);
    for (size_t i = 0; i < 3; i++)
        ck_assert(tr_st_at(f, i)->aligned);
    ck_assert_ptr_null(tr_st_at(f, 3));
    ck_assert(memcmp(tr_st_find(f, "bytes")->data, u8, 3) == 0);
    tr_st_close(f);
}
END_TEST

START_TEST(test_open_buffer_and_missing_file)
{
    tr_error err;
    tr_st_file *f = NULL;
    ck_assert_int_eq(tr_st_open("/nonexistent/x.safetensors", &f, &err), TR_E_IO);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(err.text, "/nonexistent/x.safetensors: TR_E_IO: cannot open"), "%s", err.text);
    ck_assert_int_eq(tr_st_open(tr_test_tmpdir(), &f, &err), TR_E_IO);
    size_t size;
    uint8_t *img = tr_test_st_image("{\"t\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[0,2]}}", "ab", 2, &size);
    ck_assert_int_eq(tr_st_open_buffer(img, size, "mem", &f, &err), TR_OK);
    ck_assert_str_eq(tr_st_path(f), "mem");
    ck_assert_uint_eq(tr_st_data_size(f), 2);
    tr_st_close(f);
    ck_assert_int_eq(tr_st_open_buffer(img, 4, "mem", &f, &err), TR_E_ST_TRUNCATED);
    ck_assert_str_eq(err.text, "mem: TR_E_ST_TRUNCATED: file has 4 bytes, fewer than the 8-byte header length");
    free(img);
}
END_TEST

/* Every allocation point of open and write fails cleanly (no leak: valgrind/ASan runs check that). */
START_TEST(test_alloc_failures)
{
    size_t size;
    uint8_t *img = tr_test_st_image("{\"__metadata__\":{\"format\":\"pt\",\"k\":\"v\"},"
                                    "\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                                    "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}",
                                    "abc", 3, &size);
    const char *path = tr_test_write(tr_test_tmpdir(), "alloc.safetensors", img, size);
    unsigned long n;
    for (n = 1;; n++) {
        tr_alloc_fail_at(n);
        tr_st_file *f = NULL;
        tr_error err;
        int rc = tr_st_open(path, &f, &err);
        int fired = tr_alloc_fired();
        tr_alloc_fail_at(0);
        if (!fired) {
            ck_assert_int_eq(rc, TR_OK);
            tr_st_close(f);
            break;
        }
        ck_assert_msg(rc == TR_E_NOMEM && f == NULL, "point %lu: rc %d (%s)", n, rc, err.text);
    }
    ck_assert_uint_gt(n, 5);
    uint64_t shape[1] = {3};
    char out[4200];
    snprintf(out, sizeof out, "%s/alloc_out.safetensors", tr_test_tmpdir());
    for (n = 1;; n++) {
        tr_alloc_fail_at(n);
        tr_error err;
        tr_st_writer *w = tr_st_writer_new();
        int rc = w ? tr_st_writer_add(w, "x", TR_DT_U8, 1, shape, "abc", &err) : TR_E_NOMEM;
        if (rc == TR_OK)
            rc = tr_st_writer_write(w, out, &err);
        int fired = tr_alloc_fired();
        tr_alloc_fail_at(0);
        tr_st_writer_free(w);
        if (!fired) {
            ck_assert_int_eq(rc, TR_OK);
            break;
        }
        ck_assert_int_eq(rc, TR_E_NOMEM);
    }
    free(img);
}
END_TEST

START_TEST(test_utf8)
{
    static const struct {
        const char *s;
        size_t len, bad;
    } cases[] = {
        {"plain ascii", 11, 11},
        {"\xC3\xA9t\xC3\xA9", 6, 6},                 /* é t é */
        {"\xE2\x82\xAC \xF0\x9F\x98\x80", 8, 8},   /* € 😀 */
        {"a\xC0\x80", 3, 1},                         /* overlong NUL */
        {"a\xE0\x80\x80", 4, 1},                     /* overlong 3-byte */
        {"\xED\xA0\x80", 3, 0},                      /* surrogate U+D800 */
        {"\xF4\x90\x80\x80", 4, 0},                  /* above U+10FFFF */
        {"\xF0\x8F\xBF\xBF", 4, 0},                  /* overlong 4-byte */
        {"ok\xE2\x82", 4, 2},                        /* truncated */
        {"\x80", 1, 0},                               /* lone continuation */
        {"\xF5\x80\x80\x80", 4, 0},                  /* invalid lead */
        {"\xC3\x28", 2, 0},                           /* bad continuation */
        {"\xE2\x28\xA1", 3, 0},
        {"\xF0\x9F\x98\x28", 4, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_msg(tr_utf8_invalid_at((const uint8_t *)cases[i].s, cases[i].len) == cases[i].bad, "case %zu", i);
    ck_assert_int_eq(tr_utf8_seq_len((const uint8_t *)"", 0), 0);
    ck_assert_int_eq(tr_utf8_seq_len((const uint8_t *)"\xF0\x9F\x98\x80", 4), 4);
}
END_TEST

Suite *suite_safetensors(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("container");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_valid_edge_cases);
    tcase_add_test(tc, test_widening);
    tcase_add_test(tc, test_dtype_table);
    tcase_add_test(tc, test_writer_layout);
    tcase_add_test(tc, test_open_buffer_and_missing_file);
    tcase_add_test(tc, test_alloc_failures);
    tcase_add_test(tc, test_utf8);
    suite_add_tcase(s, tc);
    return s;
}
