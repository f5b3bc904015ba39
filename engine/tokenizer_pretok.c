/*
 * tokenizer_pretok.c — the pre-tokenizer of ENGINE.md §4 step 3: the pattern compiled once with PCRE2
 * (PCRE2_UTF | PCRE2_UCP, JIT when available, allocations through alloc.h), and the split of a segment into pieces:
 * successive non-overlapping matches from offset 0, every match and every unmatched gap between matches a piece,
 * each piece handed to BPE in order.
 */
#include "tokenizer_internal.h"

#include "trellis/alloc.h"

#include <stdio.h>

static void *pcre_alloc(size_t n, void *data)
{
    (void)data;
    return tr_malloc(n);
}

static void pcre_free(void *p, void *data)
{
    (void)data;
    tr_dealloc(p);
}

int tok_compile_pattern(tr_tokenizer *t, const char *jpath, tr_error *err)
{
    if (!t->gctx && !(t->gctx = pcre2_general_context_create(pcre_alloc, pcre_free, NULL)))
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot allocate the PCRE2 context");
    pcre2_compile_context *cc = pcre2_compile_context_create(t->gctx);
    if (!cc)
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot allocate the PCRE2 compile context");
    unsigned long failures = tr_alloc_failures();
    int code;
    PCRE2_SIZE off;
    t->re = pcre2_compile((PCRE2_SPTR)t->pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code, &off, cc);
    pcre2_compile_context_free(cc);
    if (!t->re && tr_alloc_failures() != failures)
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot compile the pre-tokenizer pattern");
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return tok_fail(t, err, jpath, "cannot compile at offset %zu: %s", (size_t)off, (const char *)msg);
    }
    /* JIT is an optimisation only: without it (or when it fails) the interpreter gives the same matches. */
    failures = tr_alloc_failures();
    t->jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
    if (tr_alloc_failures() != failures)
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot JIT-compile the pre-tokenizer pattern");
    return TR_OK;
}

/* Byte length of the code point starting with lead byte c (the subject is valid UTF-8). */
static size_t cp_len(uint8_t c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

/* One match at or after pos.  The JIT stack is small; a match that exhausts it reruns in the interpreter. */
static int match_at(const tr_tokenizer *t, pcre2_match_data *md, const char *s, size_t n, size_t pos)
{
    int rc = pcre2_match(t->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(t->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
    return rc;
}

static int match_error(const tr_tokenizer *t, int rc, size_t pos, tr_error *err)
{
    if (rc == PCRE2_ERROR_NOMEMORY)
        return tr_fail(err, TR_E_NOMEM, t->path, "pre-tokenizer: out of memory matching the pattern");
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    return tr_fail(err, TR_E_TOKENIZER, t->path, "pre-tokenizer: pattern match failed at byte %zu: %s", pos,
                   (const char *)msg);
}

static int piece(const tr_tokenizer *t, tok_bpe *b, const char *s, size_t from, size_t to, tok_ids *out,
                 tr_error *err)
{
    if (to <= from)
        return TR_OK;
    if (tok_bpe_piece(t, b, (const uint8_t *)s + from, to - from, out) != TR_OK)
        return tr_fail(err, TR_E_NOMEM, t->path, "out of memory encoding");
    return TR_OK;
}

/* ENGINE.md §4 step 3.  After an empty match the search advances one code point; the empty match still ends the
 * gap before it (as HF's Split does), though it is no piece itself. */
int tok_pretokenize(const tr_tokenizer *t, pcre2_match_data *md, tok_bpe *b, const char *s, size_t n,
                    tok_ids *out, tr_error *err)
{
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    size_t pos = 0, gap = 0;
    int rc = TR_OK;
    while (rc == TR_OK && pos <= n) {
        int m = match_at(t, md, s, n, pos);
        if (m == PCRE2_ERROR_NOMATCH)
            break;
        if (m < 0)
            return match_error(t, m, pos, err);
        size_t ms = ov[0], me = ov[1];
        rc = piece(t, b, s, gap, ms, out, err);
        if (rc == TR_OK)
            rc = piece(t, b, s, ms, me, out, err);
        gap = me;
        if (me > ms)
            pos = me;
        else if (ms >= n)
            break;
        else
            pos = ms + cp_len((uint8_t)s[ms]);
    }
    return rc == TR_OK ? piece(t, b, s, gap, n, out, err) : rc;
}
