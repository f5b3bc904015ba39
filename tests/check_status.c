/*
 * check_status.c — the status table (status.h): every code the specs name is present, names and values are unique,
 * exit codes follow HARNESS.md §8, and messages read "<where>: <CODE>: <detail>".
 */
#include "tests.h"
#include "trellis/alloc.h"
#include "trellis/status.h"

#include <string.h>

/* Every TR_E_* / TR_W_* code named in FORMAT.md, KERNELS.md, MOE.md and ENGINE.md. */
static const char *spec_codes[] = {
    "TR_E_DTYPE", "TR_E_INDEX_JSON", "TR_E_INDEX_PATH", "TR_E_INVALID_EXPERT_ID", "TR_E_INVALID_PARAM",
    "TR_E_INVALID_SHAPE", "TR_E_IO", "TR_E_LAYOUT", "TR_E_NAN_DETECTED", "TR_E_NOMEM", "TR_E_NONFINITE",
    "TR_E_QBITS", "TR_E_QGROUP", "TR_E_QSIZE", "TR_E_SHAPE", "TR_E_ST_DTYPE", "TR_E_ST_DUPLICATE", "TR_E_ST_ENTRY",
    "TR_E_ST_HEADER_JSON", "TR_E_ST_HEADER_SIZE", "TR_E_ST_LAYOUT", "TR_E_ST_METADATA", "TR_E_ST_OFFSETS",
    "TR_E_ST_SHAPE", "TR_E_ST_SIZE", "TR_E_ST_TRUNCATED", "TR_E_TENSOR_DUPLICATE", "TR_E_TENSOR_MISSING",
    "TR_E_UNSUPPORTED", "TR_W_BITS_MISMATCH", "TR_W_EXL3_FLAG", "TR_W_GROUP_SIZE", "TR_W_MISALIGNED",
    "TR_W_NO_QMETA", "TR_W_NO_TENSORS", "TR_W_QUANTIZED_ROUTER", "TR_W_SCALES", "TR_W_SIGNS", "TR_W_TOTAL_SIZE",
    "TR_W_UNLISTED_TENSOR", "TR_W_UNRECOGNIZED",
};

START_TEST(test_spec_codes_present)
{
    for (size_t i = 0; i < sizeof spec_codes / sizeof spec_codes[0]; i++) {
        int found = 0;
        for (size_t j = 0; j < tr_status_count(); j++)
            found |= strcmp(tr_status_name(tr_status_at(j)), spec_codes[i]) == 0;
        ck_assert_msg(found, "%s missing from status.h", spec_codes[i]);
    }
}
END_TEST

START_TEST(test_table_unique_and_exit_codes)
{
    size_t n = tr_status_count();
    for (size_t i = 0; i < n; i++) {
        int c = tr_status_at(i);
        const char *name = tr_status_name(c);
        for (size_t j = i + 1; j < n; j++) {
            ck_assert_int_ne(c, tr_status_at(j));
            ck_assert_str_ne(name, tr_status_name(tr_status_at(j)));
        }
        int x = tr_status_exit_code(c);
        if (strncmp(name, "TR_W_", 5) == 0)
            ck_assert_msg(x == 0 && tr_status_is_warning(c), "%s: warnings exit 0", name);
        else
            ck_assert(!tr_status_is_warning(c));
        ck_assert(x == 0 || x == 1 || x == 2 || x == 3 || x == 4 || x == 130);
        ck_assert(strlen(tr_status_meaning(c)) > 0);
    }
    ck_assert_int_eq(tr_status_exit_code(TR_E_NOMEM), 4);
    ck_assert_int_eq(tr_status_exit_code(TR_E_ST_TRUNCATED), 2);
    ck_assert_int_eq(tr_status_exit_code(TR_E_INTERNAL), 3);
    ck_assert_int_eq(tr_status_exit_code(TR_OK), 0);
    ck_assert_int_eq(tr_status_exit_code(9999), 3);
    ck_assert_str_eq(tr_status_name(9999), "TR_E_UNKNOWN");
    ck_assert_int_eq(tr_status_at(n), -1);
}
END_TEST

START_TEST(test_messages)
{
    tr_error err;
    tr_error_clear(&err);
    ck_assert_int_eq(err.code, TR_OK);
    int rc = tr_fail(&err, TR_E_ST_TRUNCATED, "x.safetensors", "file has %d bytes", 3);
    ck_assert_int_eq(rc, TR_E_ST_TRUNCATED);
    ck_assert_str_eq(err.text, "x.safetensors: TR_E_ST_TRUNCATED: file has 3 bytes");
    tr_fail(&err, TR_E_IO, NULL, "plain");
    ck_assert_str_eq(err.text, "TR_E_IO: plain");
    ck_assert_int_eq(tr_fail(NULL, TR_E_IO, "a", "b"), TR_E_IO);

    tr_warnings w = {0};
    for (int i = 0; i < 20; i++)
        ck_assert_int_eq(tr_warn(&w, TR_W_SIGNS, "t", "n=%d", i), TR_OK);
    ck_assert_uint_eq(w.count, 20);
    ck_assert_str_eq(w.items[19].text, "t: TR_W_SIGNS: n=19");
    tr_alloc_fail_at(1);
    ck_assert_int_eq(tr_warn(&w, TR_W_SIGNS, "t", "x"), TR_E_NOMEM);
    tr_alloc_fail_at(0);
    ck_assert_int_eq(tr_warn(NULL, TR_W_SIGNS, "t", "x"), TR_OK);
    tr_warnings_free(&w);
    ck_assert_uint_eq(w.count, 0);
}
END_TEST

START_TEST(test_alloc_injection)
{
    tr_alloc_fail_at(3);
    void *a = tr_malloc(8), *b = tr_calloc(2, 4), *c = tr_realloc(NULL, 4), *d = tr_strdup("x");
    ck_assert(a && b && !c && d);
    ck_assert(tr_alloc_fired());
    ck_assert_uint_eq(tr_alloc_points(), 4);
    tr_alloc_fail_at(0);
    void *e = tr_malloc_aligned(100);
    ck_assert(e && ((uintptr_t)e % 64) == 0);
    tr_dealloc_aligned(e);
    tr_dealloc(a);
    tr_dealloc(b);
    tr_dealloc(d);
    ck_assert(!tr_alloc_fired());
}
END_TEST

Suite *suite_status(void)
{
    Suite *s = suite_create("status");
    TCase *tc = tcase_create("table");
    tcase_add_test(tc, test_spec_codes_present);
    tcase_add_test(tc, test_table_unique_and_exit_codes);
    tcase_add_test(tc, test_messages);
    tcase_add_test(tc, test_alloc_injection);
    suite_add_tcase(s, tc);
    return s;
}
