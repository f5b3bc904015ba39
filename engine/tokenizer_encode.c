/*
 * tokenizer_encode.c — Encode(text, parse_special) of ENGINE.md §4: UTF-8 validation, the added-token split on the
 * raw text, NFC normalization of the remaining segments, the second split on normalized: true tokens, then
 * pre-tokenization and BPE (tokenizer_pretok.c, tokenizer_bpe.c).
 */
#include "tokenizer_internal.h"

#include "trellis/alloc.h"
#include "trellis/utf8.h"

#include <string.h>
#include <utf8proc.h>

/* Per-call state: the output, BPE scratch with its piece cache, PCRE2 match data. */
typedef struct enc {
    const tr_tokenizer *t;
    int parse_special;
    tok_ids out;
    tok_bpe *bpe;
    pcre2_match_data *md;
    tr_error *err;
} enc;

/* ---- character classes --------------------------------------------------------------------------------------- */

/* Unicode White_Space (what HF's lstrip/rstrip absorb: Rust char::is_whitespace). */
static int is_white(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* single_word's word characters, as HF's `\w` (Rust regex, UTS #18): letters (L*, with Nl standing for the rest of
 * Alphabetic), marks (M*), decimal digits (Nd), connector punctuation (Pc, includes '_') and ZWNJ/ZWJ. */
static int is_word(uint32_t c)
{
    if (c == '_' || c == 0x200C || c == 0x200D)
        return 1;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_PC:
        return 1;
    default:
        return 0;
    }
}

static size_t lead_len(uint8_t c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

/* The code point starting at s[i] / ending just before s[i] (s is valid UTF-8); *len gets its byte length. */
static uint32_t cp_at(const char *s, size_t i, size_t *len)
{
    *len = lead_len((uint8_t)s[i]);
    return tok_utf8_cp((const uint8_t *)s + i, (int)*len);
}

static uint32_t cp_before(const char *s, size_t i, size_t *len)
{
    size_t j = i - 1;
    while (j > 0 && ((uint8_t)s[j] & 0xC0) == 0x80)
        j--;
    *len = i - j;
    return tok_utf8_cp((const uint8_t *)s + j, (int)*len);
}

/* ---- added-token matching (ENGINE.md §4 steps 1–2) ----------------------------------------------------------- */

typedef struct hit {
    size_t start, end;        /* the span absorbed, lstrip/rstrip included */
    int32_t id;
} hit;

/* Leftmost match at or after from, longest at the same start. */
static const tok_added *find_raw(const enc *e, const tok_matcher *m, const char *s, size_t n, size_t from,
                                 size_t *at)
{
    const tr_tokenizer *t = e->t;
    for (size_t p = from; p < n; p++) {
        uint8_t c = (uint8_t)s[p];
        for (uint32_t k = m->first[c]; k < m->first[c + 1]; k++) {
            const tok_added *a = &t->added[m->order[k]];
            if (a->match_len > n - p || memcmp(a->match, s + p, a->match_len))
                continue;
            *at = p;
            return a;
        }
    }
    return NULL;
}

static int single_word_ok(const char *s, size_t n, size_t start, size_t end)
{
    size_t len;
    return !(start > 0 && is_word(cp_before(s, start, &len))) && !(end < n && is_word(cp_at(s, end, &len)));
}

/* The next accepted match at or after *pos.  A match that is refused — a special token when parse_special is off,
 * a single_word token next to a word character — is skipped whole: its text stays in the gap and the search resumes
 * at its end (HF's non-overlapping scan: a shorter token inside a refused one is not matched).  lstrip absorbs
 * whitespace back to floor (the end of the previous match), rstrip forward. */
static int next_hit(const enc *e, const tok_matcher *m, const char *s, size_t n, size_t *pos, size_t floor, hit *h)
{
    for (;;) {
        size_t at, len;
        const tok_added *a = find_raw(e, m, s, n, *pos, &at);
        if (!a)
            return 0;
        size_t start = at, end = at + a->match_len;
        *pos = end;
        if ((a->special && !e->parse_special) || (a->single_word && !single_word_ok(s, n, start, end)))
            continue;
        while (a->lstrip && start > floor && is_white(cp_before(s, start, &len)))
            start -= len;
        while (a->rstrip && end < n && is_white(cp_at(s, end, &len)))
            end += len;
        *pos = end;
        *h = (hit){start, end, a->id};
        return 1;
    }
}

/* Split s on the tokens of m: matched tokens emit their id, each gap goes to gap_fn. */
static int split_added(enc *e, const tok_matcher *m, const char *s, size_t n,
                       int (*gap_fn)(enc *, const char *, size_t))
{
    size_t pos = 0, gap = 0;
    hit h;
    while (m->n && next_hit(e, m, s, n, &pos, gap, &h)) {
        int rc = h.start > gap ? gap_fn(e, s + gap, h.start - gap) : TR_OK;
        if (rc == TR_OK && tok_ids_push(&e->out, h.id) != TR_OK)
            rc = tr_fail(e->err, TR_E_NOMEM, e->t->path, "out of memory encoding");
        if (rc != TR_OK)
            return rc;
        gap = h.end;
    }
    return gap < n ? gap_fn(e, s + gap, n - gap) : TR_OK;
}

/* ---- normalization (ENGINE.md §4 step 2) --------------------------------------------------------------------- */

int tok_nfc(const char *s, size_t n, char **out, size_t *out_len)
{
    const utf8proc_option_t opt = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    *out = NULL;
    utf8proc_ssize_t k = utf8proc_decompose((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, NULL, 0, opt);
    if (k < 0)
        return TR_E_INTERNAL;
    utf8proc_int32_t *buf = tr_malloc(((size_t)k + 1) * sizeof *buf);
    if (!buf)
        return TR_E_NOMEM;
    k = utf8proc_decompose((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, buf, k, opt);
    utf8proc_ssize_t bytes = k < 0 ? k : utf8proc_reencode(buf, k, opt);
    if (bytes < 0) {
        tr_dealloc(buf);
        return TR_E_INTERNAL;
    }
    *out = (char *)buf;
    *out_len = (size_t)bytes;
    return TR_OK;
}

static int is_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((uint8_t)s[i] >= 0x80)
            return 0;
    return 1;
}

static int pretokenize(enc *e, const char *s, size_t n)
{
    return tok_pretokenize(e->t, e->md, e->bpe, s, n, &e->out, e->err);
}

/* A segment between raw added tokens: NFC (identity for ASCII), then the split on normalized tokens. */
static int normalized_segment(enc *e, const char *s, size_t n)
{
    if (!e->t->nfc || is_ascii(s, n))
        return split_added(e, &e->t->norm, s, n, pretokenize);
    char *norm;
    size_t len;
    int rc = tok_nfc(s, n, &norm, &len);
    if (rc != TR_OK)
        return tr_fail(e->err, rc, e->t->path, "NFC normalization failed");
    rc = split_added(e, &e->t->norm, norm, len, pretokenize);
    tr_dealloc(norm);
    return rc;
}

/* ---- entry point --------------------------------------------------------------------------------------------- */

static int enc_init(enc *e, const tr_tokenizer *t, int parse_special, tr_error *err)
{
    memset(e, 0, sizeof *e);
    e->t = t;
    e->parse_special = parse_special;
    e->err = err;
    e->bpe = tok_bpe_new();
    e->md = pcre2_match_data_create_from_pattern(t->re, t->gctx);
    if (!e->bpe || !e->md || tok_ids_push(&e->out, 0) != TR_OK)
        return tr_fail(err, TR_E_NOMEM, t->path, "out of memory encoding");
    e->out.n = 0;   /* the list is allocated even when no id comes out */
    return TR_OK;
}

static void enc_release(enc *e)
{
    tok_bpe_free(e->bpe);
    pcre2_match_data_free(e->md);
}

int tr_tokenizer_encode(const tr_tokenizer *t, const char *text, size_t len, int parse_special, const char *where,
                        int32_t **ids, size_t *n, tr_error *err)
{
    *ids = NULL;
    *n = 0;
    size_t bad = tr_utf8_invalid_at((const uint8_t *)text, len);
    if (bad < len)
        return tr_fail(err, TR_E_UTF8, where ? where : "text", "invalid UTF-8 at byte %zu", bad);
    enc e;
    int rc = enc_init(&e, t, parse_special, err);
    if (rc == TR_OK)
        rc = split_added(&e, &t->raw, text, len, normalized_segment);
    enc_release(&e);
    if (rc != TR_OK) {
        tr_dealloc(e.out.v);
        return rc;
    }
    *ids = e.out.v;
    *n = e.out.n;
    return TR_OK;
}
