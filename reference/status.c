/*
 * status.c — lookups into the status table of status.h, and the error/warning message builders.
 */
#include "trellis/status.h"
#include "trellis/alloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct status_row {
    int code;
    const char *name;
    int exit_code;
    const char *meaning;
} status_row;

static const status_row rows[] = {
#define TR_STATUS_ROW_(name, value, exit_code, meaning) {value, #name, exit_code, meaning},
    TR_STATUS_TABLE(TR_STATUS_ROW_)
#undef TR_STATUS_ROW_
};

static const status_row *find_row(int code)
{
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        if (rows[i].code == code)
            return &rows[i];
    return NULL;
}

const char *tr_status_name(int code)
{
    const status_row *r = find_row(code);
    return r ? r->name : "TR_E_UNKNOWN";
}

const char *tr_status_meaning(int code)
{
    const status_row *r = find_row(code);
    return r ? r->meaning : "unknown status code";
}

int tr_status_exit_code(int code)
{
    const status_row *r = find_row(code);
    return r ? r->exit_code : 3;
}

int tr_status_is_warning(int code)
{
    const status_row *r = find_row(code);
    return r && strncmp(r->name, "TR_W_", 5) == 0;
}

size_t tr_status_count(void) { return sizeof rows / sizeof rows[0]; }

int tr_status_at(size_t i) { return i < tr_status_count() ? rows[i].code : -1; }

/* "<where>: <CODE>: <detail>" into buf; the where part is dropped when where is NULL or empty. */
static void format_message(char *buf, size_t size, int code, const char *where, const char *fmt, va_list ap)
{
    int n = 0;
    size_t wmax = size / 2, wl = where ? strlen(where) : 0;
    if (wl > wmax) {
        /* A where longer than half the text is cut (at a UTF-8 boundary, "..." marks it) so that the code and the
         * start of the detail always fit: a 1 KB shard name pushed the code out of the message (fuzz/quant_index). */
        size_t cut = wmax - 3;
        while (cut > 0 && ((unsigned char)where[cut] & 0xC0) == 0x80)
            cut--;
        n = snprintf(buf, size, "%.*s...: %s: ", (int)cut, where, tr_status_name(code));
    } else if (where && *where)
        n = snprintf(buf, size, "%s: %s: ", where, tr_status_name(code));
    else
        n = snprintf(buf, size, "%s: ", tr_status_name(code));
    if (n < 0 || (size_t)n >= size)
        return;
    vsnprintf(buf + n, size - (size_t)n, fmt, ap);
}

int tr_fail(tr_error *err, int code, const char *where, const char *fmt, ...)
{
    if (!err)
        return code;
    va_list ap;
    va_start(ap, fmt);
    err->code = code;
    format_message(err->text, sizeof err->text, code, where, fmt, ap);
    va_end(ap);
    return code;
}

void tr_error_clear(tr_error *err)
{
    if (!err)
        return;
    err->code = TR_OK;
    err->text[0] = '\0';
}

int tr_warnv(tr_warnings *list, int code, const char *where, const char *fmt, va_list ap)
{
    if (!list)
        return TR_OK;
    if (list->count == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 8;
        tr_warning *items = tr_realloc(list->items, cap * sizeof *items);
        if (!items)
            return TR_E_NOMEM;
        list->items = items;
        list->cap = cap;
    }
    char buf[TR_ERROR_TEXT];
    format_message(buf, sizeof buf, code, where, fmt, ap);
    char *text = tr_strdup(buf);
    if (!text)
        return TR_E_NOMEM;
    list->items[list->count].code = code;
    list->items[list->count].text = text;
    list->count++;
    return TR_OK;
}

int tr_warn(tr_warnings *list, int code, const char *where, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = tr_warnv(list, code, where, fmt, ap);
    va_end(ap);
    return rc;
}

void tr_warnings_free(tr_warnings *list)
{
    if (!list)
        return;
    for (size_t i = 0; i < list->count; i++)
        tr_dealloc(list->items[i].text);
    tr_dealloc(list->items);
    list->items = NULL;
    list->count = list->cap = 0;
}
