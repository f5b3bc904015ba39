/*
 * jsonio.h — JSON parsing and printing through jansson with allocation failures made visible.
 *
 * jansson can meet an allocation failure and still return a document (a member silently missing) or report it as a
 * syntax error.  These wrappers watch the allocator's failure counter (alloc.h) across the call: if any allocation
 * failed, the result is discarded and the status is TR_E_NOMEM.  Every JSON read or written by the harness goes
 * through them.
 */
#ifndef TRELLIS_JSONIO_H
#define TRELLIS_JSONIO_H

#include "trellis/status.h"

#include <jansson.h>
#include <stddef.h>

/* Parse buf[0..n) with JSON_REJECT_DUPLICATES.  On failure returns NULL and sets *status to TR_E_NOMEM or to
 * syntax_code (or dup_code for a duplicate member when dup_code != 0); jerr holds jansson's position and text. */
json_t *tr_json_parse(const char *buf, size_t n, int syntax_code, int dup_code, json_error_t *jerr, int *status);

/* Read path and parse it as one JSON object; errors read "<path>: <CODE>: line L, column C: <text>". */
int tr_json_load_object(const char *path, int syntax_code, json_t **out, tr_error *err);

/* A mark taken before building a document: tr_json_dumps fails if any allocation failed since the mark (building
 * calls such as json_object_set_new cannot always see a failure inside jansson). */
unsigned long tr_json_mark(void);

/* json_dumps; NULL if any allocation failed since mark.  Free with tr_dealloc. */
char *tr_json_dumps(const json_t *doc, size_t flags, unsigned long mark);

/* Write doc (built since mark) with 2-space indentation, insertion order and a final newline. */
int tr_json_write_file(const char *path, const json_t *doc, unsigned long mark, tr_error *err);

/* A number for JSON output: json_real(v), or the strings "nan", "inf", "-inf" (JSON has no non-finite numbers,
 * HARNESS.md §3; json_real would return NULL and the member would silently vanish). */
json_t *tr_json_real(double v);

#endif
