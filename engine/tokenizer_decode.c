/*
 * tokenizer_decode.c — Decode(ids, skip_special) of ENGINE.md §4, one-shot and streaming, and the UTF-8 repair they
 * share: invalid sequences become U+FFFD, one per maximal ill-formed subpart (Unicode §3.9, as Python's and Rust's
 * lossy decoders do); the streaming form holds back up to 3 bytes of an incomplete trailing sequence.  Both run the
 * same scanner over the same bytes, so the concatenated stream equals the one-shot result.
 */
#include "tokenizer_internal.h"

#include "trellis/alloc.h"

#include <string.h>

static const char FFFD[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

/* Unicode Table 3-7: the lead byte fixes the length and the allowed range of the second byte. */
static int lead_info(uint8_t c, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80, *hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        return 2;
    if (c >= 0xE0 && c <= 0xEF) {
        *lo = c == 0xE0 ? 0xA0 : 0x80;
        *hi = c == 0xED ? 0x9F : 0xBF;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        *lo = c == 0xF0 ? 0x90 : 0x80;
        *hi = c == 0xF4 ? 0x8F : 0xBF;
        return 4;
    }
    return 0;
}

int tok_utf8_scan(const uint8_t *s, size_t n)
{
    if (s[0] < 0x80)
        return 1;
    uint8_t lo, hi;
    int len = lead_info(s[0], &lo, &hi);
    if (!len)
        return -1;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return 0;
        uint8_t a = i == 1 ? lo : 0x80, b = i == 1 ? hi : 0xBF;
        if (s[i] < a || s[i] > b)
            return -i;   /* the maximal subpart is the i bytes before the offending one */
    }
    return len;
}

/* Repair s[0..n) into out (room for 3n bytes).  Returns the bytes written; *kept gets the length of an incomplete
 * tail left unconsumed (0 when final: then it becomes one U+FFFD). */
static size_t repair(const uint8_t *s, size_t n, int final, char *out, size_t *kept)
{
    size_t k = 0, i = 0;
    *kept = 0;
    while (i < n) {
        int r = tok_utf8_scan(s + i, n - i);
        if (r > 0) {
            memcpy(out + k, s + i, (size_t)r);
            k += (size_t)r, i += (size_t)r;
            continue;
        }
        if (r == 0 && !final) {
            *kept = n - i;
            break;
        }
        memcpy(out + k, FFFD, 3);
        k += 3;
        i += r < 0 ? (size_t)-r : n - i;
    }
    return k;
}

/* The bytes of one id, or NULL when it decodes to nothing; *unknown is set when the id has no token. */
static const char *id_bytes(const tr_tokenizer *t, int32_t id, int skip_special, size_t *len, int *unknown)
{
    *unknown = 0;
    *len = 0;
    if (id < 0 || (uint32_t)id >= t->size || !t->kind[id]) {
        *unknown = 1;
        return NULL;
    }
    if (skip_special && (t->kind[id] & TOK_SPECIAL))
        return NULL;
    *len = t->dec[id].len;
    return t->dpool.data + t->dec[id].off;
}

/* ---- one-shot ------------------------------------------------------------------------------------------------ */

int tr_tokenizer_decode(const tr_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
                        size_t *len, size_t *n_unknown, tr_error *err)
{
    *text = NULL;
    *len = 0;
    size_t raw_len = 0, unknown = 0, l;
    int unk;
    for (size_t i = 0; i < n; i++) {
        id_bytes(t, ids[i], skip_special, &l, &unk);
        raw_len += l;
        unknown += (size_t)unk;
    }
    char *raw = tr_malloc(raw_len + 1), *out = tr_malloc(3 * raw_len + 1);
    if (!raw || !out) {
        tr_dealloc(raw);
        tr_dealloc(out);
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot allocate %zu bytes to decode %zu ids", 4 * raw_len, n);
    }
    size_t k = 0, kept;
    for (size_t i = 0; i < n; i++) {
        const char *b = id_bytes(t, ids[i], skip_special, &l, &unk);
        if (l)
            memcpy(raw + k, b, l);
        k += l;
    }
    *len = repair((const uint8_t *)raw, raw_len, 1, out, &kept);
    out[*len] = '\0';
    tr_dealloc(raw);
    *text = out;
    if (n_unknown)
        *n_unknown = unknown;
    return TR_OK;
}

/* ---- streaming ----------------------------------------------------------------------------------------------- */

struct tr_detok {
    const tr_tokenizer *t;
    int skip_special;
    uint8_t pend[4];                  /* incomplete trailing sequence (≤ 3 bytes) */
    size_t n_pend;
    char *work, *out;                 /* pend + the new bytes; their repair */
    size_t work_cap, out_cap;
    size_t unknown;
};

int tr_detok_new(const tr_tokenizer *t, int skip_special, tr_detok **out, tr_error *err)
{
    *out = tr_calloc(1, sizeof **out);
    if (!*out)
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot allocate the streaming decoder");
    (*out)->t = t;
    (*out)->skip_special = skip_special;
    return TR_OK;
}

static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return TR_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    char *b = tr_realloc(*buf, c);
    if (!b)
        return TR_E_NOMEM;
    *buf = b;
    *cap = c;
    return TR_OK;
}

/* Repair pend + bytes; keep a new incomplete tail unless final. */
static int feed(tr_detok *d, const char *bytes, size_t n, int final, const char **out, size_t *len)
{
    *out = "";
    *len = 0;
    size_t total = d->n_pend + n;
    if (grow(&d->work, &d->work_cap, total + 1) != TR_OK || grow(&d->out, &d->out_cap, 3 * total + 1) != TR_OK)
        return TR_E_NOMEM;
    memcpy(d->work, d->pend, d->n_pend);
    if (n)
        memcpy(d->work + d->n_pend, bytes, n);
    size_t kept;
    *len = repair((const uint8_t *)d->work, total, final, d->out, &kept);
    memcpy(d->pend, d->work + total - kept, kept);
    d->n_pend = kept;
    d->out[*len] = '\0';
    *out = d->out;
    return TR_OK;
}

int tr_detok_push(tr_detok *d, int32_t id, const char **out, size_t *len)
{
    size_t n;
    int unk;
    const char *b = id_bytes(d->t, id, d->skip_special, &n, &unk);
    d->unknown += (size_t)unk;
    return feed(d, b, n, 0, out, len);
}

int tr_detok_finish(tr_detok *d, const char **out, size_t *len) { return feed(d, NULL, 0, 1, out, len); }

size_t tr_detok_unknown(const tr_detok *d) { return d->unknown; }

void tr_detok_free(tr_detok *d)
{
    if (!d)
        return;
    tr_dealloc(d->work);
    tr_dealloc(d->out);
    tr_dealloc(d);
}
