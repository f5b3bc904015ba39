/*
 * alloc.c — allocation wrappers with one global failure-injection counter (HARNESS.md §6).
 *
 * The counter is atomic so that injection stays well defined when worker threads allocate; tests that loop over
 * allocation points run single-threaded so that "the N-th point" is deterministic.
 */
#include "trellis/alloc.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_ulong fail_at;    /* 0 = injection off */
static atomic_ulong points;     /* allocation points since tr_alloc_fail_at */
static atomic_int fired;
static atomic_ulong failures;   /* allocation failures since start, injected or real */

void tr_alloc_fail_at(unsigned long n)
{
    atomic_store(&points, 0);
    atomic_store(&fired, 0);
    atomic_store(&fail_at, n);
}

unsigned long tr_alloc_points(void) { return atomic_load(&points); }

int tr_alloc_fired(void) { return atomic_load(&fired); }

int tr_alloc_should_fail(void)
{
    unsigned long n = atomic_fetch_add(&points, 1) + 1;
    unsigned long target = atomic_load(&fail_at);
    if (target != 0 && n == target) {
        atomic_store(&fired, 1);
        atomic_fetch_add(&failures, 1);
        return 1;
    }
    return 0;
}

unsigned long tr_alloc_failures(void) { return atomic_load(&failures); }

/* Count real failures too. */
static void *counted(void *p)
{
    if (!p)
        atomic_fetch_add(&failures, 1);
    return p;
}

void *tr_malloc(size_t size)
{
    if (tr_alloc_should_fail())
        return NULL;
    return counted(malloc(size ? size : 1));
}

void *tr_calloc(size_t count, size_t size)
{
    if (tr_alloc_should_fail())
        return NULL;
    if (count == 0 || size == 0)
        return counted(calloc(1, 1));
    return counted(calloc(count, size));
}

void *tr_realloc(void *ptr, size_t size)
{
    if (tr_alloc_should_fail())
        return NULL;
    return counted(realloc(ptr, size ? size : 1));
}

char *tr_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *d = tr_malloc(len + 1);
    if (!d)
        return NULL;
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

char *tr_strdup(const char *s) { return tr_strndup(s, strlen(s)); }

void tr_dealloc(void *ptr) { free(ptr); }

void *tr_malloc_aligned(size_t size)
{
    if (tr_alloc_should_fail())
        return NULL;
    void *p = NULL;
    size = (size + 63) / 64 * 64;
    if (posix_memalign(&p, 64, size ? size : 64) != 0)
        return counted(NULL);
    return p;
}

void tr_dealloc_aligned(void *ptr) { free(ptr); }

/* jansson allocates through our wrappers, so its allocations are injection points too.  jansson 2.14 is not safe
 * against its own allocation failures while parsing (an assert in lex_scan_string, a double free on the error path),
 * so an injected failure inside jansson is deferred: it is counted (tr_alloc_failures grows, which makes the
 * jsonio.h wrappers fail the whole call with TR_E_NOMEM) while jansson still receives the memory. */
static void *json_alloc(size_t size)
{
    (void)tr_alloc_should_fail();
    return counted(malloc(size ? size : 1));
}

__attribute__((constructor)) static void install_json_allocator(void)
{
    json_set_alloc_funcs(json_alloc, tr_dealloc);
}
