/*
 * check_corpus.c — the malformed-input corpus tests/data/bad (made by make_bad.py): each input gets its exact error
 * code and one-line message from the library, and `trellis inspect` prints that line and exits 2.
 */
#include "tests.h"
#include "cli_run.h"
#include "trellis/checkpoint.h"
#include "trellis/safetensors.h"

#include <jansson.h>
#include <string.h>

START_TEST(test_corpus)
{
    json_error_t jerr;
    json_t *root = json_load_file("tests/data/bad/cases.json", 0, &jerr);
    ck_assert_msg(root != NULL, "cases.json: %s", jerr.text);
    json_t *cases = json_object_get(root, "cases");
    ck_assert_uint_ge(json_array_size(cases), 20);
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        const char *input = json_string_value(json_object_get(c, "input"));
        const char *kind = json_string_value(json_object_get(c, "kind"));
        const char *code = json_string_value(json_object_get(c, "code"));
        const char *msg = json_string_value(json_object_get(c, "message"));
        tr_error err;
        int rc;
        if (!strcmp(kind, "safetensors")) {
            tr_st_file *f = NULL;
            rc = tr_st_open(input, &f, &err);
            ck_assert_ptr_null(f);
        } else {
            tr_ckpt *k = NULL;
            rc = tr_ckpt_open(input, NULL, &k, &err);
            ck_assert_ptr_null(k);
        }
        ck_assert_msg(rc != TR_OK && !strcmp(tr_status_name(rc), code), "%s: got %s, want %s", input,
                      tr_status_name(rc), code);
        ck_assert_msg(!strcmp(err.text, msg), "%s:\n got  %s\n want %s", input, err.text, msg);
        cli_result r = cli_run("inspect", input, NULL);
        char line[2048];
        snprintf(line, sizeof line, "trellis inspect: error: %s\n", msg);
        ck_assert_msg(r.status == 2, "%s: exit %d", input, r.status);
        ck_assert_msg(!strcmp(r.err, line), "%s: stderr %s", input, r.err);
        ck_assert_str_eq(r.out, "");
        cli_result_free(&r);
    }
    json_decref(root);
}
END_TEST

Suite *suite_corpus(void)
{
    Suite *s = suite_create("corpus");
    TCase *tc = tcase_create("bad_inputs");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_corpus);
    suite_add_tcase(s, tc);
    return s;
}
