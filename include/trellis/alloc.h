/*
 * alloc.h — the one allocation wrapper of the project, with allocation-failure injection.
 *
 * Every malloc/calloc/realloc/strdup (and every mmap, through fileio.h) of the project goes through these functions,
 * and jansson is told to use them too, so that a test can make the N-th allocation fail (HARNESS.md §6) and check that
 * every caller returns a clean TR_E_NOMEM without leaking.
 */
#ifndef TRELLIS_ALLOC_H
#define TRELLIS_ALLOC_H

#include <stddef.h>

void *tr_malloc(size_t size);
void *tr_calloc(size_t count, size_t size);
void *tr_realloc(void *ptr, size_t size);
char *tr_strdup(const char *s);
char *tr_strndup(const char *s, size_t n);
void tr_dealloc(void *ptr);

/* Cache-line aligned allocation (64 bytes) for SIMD buffers; free with tr_dealloc_aligned. */
void *tr_malloc_aligned(size_t size);
void tr_dealloc_aligned(void *ptr);

/* After tr_alloc_fail_at(N) (N >= 1) the N-th following allocation point fails once; N = 0 disables injection. */
void tr_alloc_fail_at(unsigned long n);
/* Allocation points passed since the last tr_alloc_fail_at call (lets tests loop N over every point). */
unsigned long tr_alloc_points(void);
/* 1 if the injected failure has fired since the last tr_alloc_fail_at call. */
int tr_alloc_fired(void);
/* Allocation failures so far (injected or real), monotonic: a parser that sees it grow across a call knows a
 * failure was an allocation failure even when the library it called reports it as something else (jansson does). */
unsigned long tr_alloc_failures(void);
/* Called by every allocation point (also mmap in fileio.c): returns 1 if this point must fail. */
int tr_alloc_should_fail(void);

#endif
