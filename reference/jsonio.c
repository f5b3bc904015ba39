/*
 * jsonio.c — jansson wrappers that turn every allocation failure into TR_E_NOMEM (see jsonio.h).
 */
#include "trellis/jsonio.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"

#include <math.h>
#include <string.h>

json_t *tr_json_parse(const char *buf, size_t n, int syntax_code, int dup_code, json_error_t *jerr, int *status)
{
    unsigned long before = tr_alloc_failures();
    json_t *root = json_loadb(buf, n, JSON_REJECT_DUPLICATES, jerr);
    if (tr_alloc_failures() != before || (!root && (json_error_code(jerr) == json_error_out_of_memory ||
                                                    jerr->text[0] == '\0'))) {
        json_decref(root);
        *status = TR_E_NOMEM;
        return NULL;
    }
    if (!root)
        *status = dup_code && json_error_code(jerr) == json_error_duplicate_key ? dup_code : syntax_code;
    else
        *status = TR_OK;
    return root;
}

int tr_json_load_object(const char *path, int syntax_code, json_t **out, tr_error *err)
{
    *out = NULL;
    char *text = NULL;
    size_t size = 0;
    int rc = tr_file_read_all(path, &text, &size, err);
    if (rc != TR_OK)
        return rc;
    json_error_t jerr;
    json_t *root = tr_json_parse(text, size, syntax_code, 0, &jerr, &rc);
    tr_dealloc(text);
    if (rc == TR_E_NOMEM)
        return tr_fail(err, rc, path, "out of memory parsing JSON");
    if (!root)
        return tr_fail(err, rc, path, "line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return tr_fail(err, syntax_code, path, "top level is not a JSON object");
    }
    *out = root;
    return TR_OK;
}

unsigned long tr_json_mark(void) { return tr_alloc_failures(); }

char *tr_json_dumps(const json_t *doc, size_t flags, unsigned long mark)
{
    char *text = doc ? json_dumps(doc, flags) : NULL;
    if (text && tr_alloc_failures() != mark) {
        tr_dealloc(text);
        text = NULL;
    }
    return text;
}

int tr_json_write_file(const char *path, const json_t *doc, unsigned long mark, tr_error *err)
{
    char *text = tr_json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER, mark);
    if (!text)
        return tr_fail(err, TR_E_NOMEM, path, "out of memory formatting JSON");
    tr_file_out o;
    int rc = tr_file_out_open(&o, path, err);
    if (rc == TR_OK) {
        tr_file_out_put(&o, text, strlen(text));
        tr_file_out_put(&o, "\n", 1);
        rc = tr_file_out_close(&o, err);
    }
    tr_dealloc(text);
    return rc;
}

json_t *tr_json_real(double v)
{
    if (isnan(v))
        return json_string("nan");
    if (isinf(v))
        return json_string(v > 0 ? "inf" : "-inf");
    return json_real(v);
}
