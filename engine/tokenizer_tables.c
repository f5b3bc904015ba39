/*
 * tokenizer_tables.c — the lookup structures of the tokenizer: the GPT-2 byte-level table (ENGINE.md §4 step 4),
 * byte pools, the vocab hash (string → id) and the merge hash ((left, right) → rank, merged id).
 */
#include "tokenizer_internal.h"

#include "trellis/alloc.h"

#include <string.h>

/* ENGINE.md §4 step 4: bytes 0x21–0x7E, 0xA1–0xAC, 0xAE–0xFF map to the code point of the same value; the other 68
 * bytes, ascending (0x00–0x20, 0x7F–0xA0, 0xAD), map to U+0100, U+0101, … */
uint32_t tok_byte_cp(uint8_t b)
{
    if (b <= 0x20)
        return 0x100u + b;
    if (b >= 0x7F && b <= 0xA0)
        return 0x100u + 33u + (uint32_t)(b - 0x7F);
    if (b == 0xAD)
        return 0x100u + 67u;
    return b;
}

int tok_cp_byte(uint32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp >= 0x100 && cp <= 0x120)
        return (int)(cp - 0x100);
    if (cp >= 0x121 && cp <= 0x142)
        return (int)(cp - 0x121 + 0x7F);
    if (cp == 0x143)
        return 0xAD;
    return -1;
}

size_t tok_byte_level(const uint8_t *bytes, size_t n, char *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = tok_byte_cp(bytes[i]);
        if (cp < 0x80)
            out[k++] = (char)cp;
        else {
            out[k++] = (char)(0xC0 | (cp >> 6));
            out[k++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return k;
}

uint32_t tok_utf8_cp(const uint8_t *s, int len)
{
    static const uint8_t lead_mask[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
    uint32_t cp = s[0] & lead_mask[len];
    for (int i = 1; i < len; i++)
        cp = (cp << 6) | (s[i] & 0x3Fu);
    return cp;
}

int tok_pool_add(tok_pool *p, const void *data, size_t n, tok_str *out)
{
    if (p->len + n > UINT32_MAX)
        return TR_E_NOMEM;
    if (p->len + n > p->cap) {
        size_t cap = p->cap ? p->cap : 4096;
        while (cap < p->len + n)
            cap *= 2;
        char *d = tr_realloc(p->data, cap);
        if (!d)
            return TR_E_NOMEM;
        p->data = d;
        p->cap = cap;
    }
    if (n)
        memcpy(p->data + p->len, data, n);
    out->off = (uint32_t)p->len;
    out->len = (uint32_t)n;
    p->len += n;
    return TR_OK;
}

/* FNV-1a, 64-bit. */
uint64_t tok_hash_bytes(const void *data, size_t n)
{
    const uint8_t *s = data;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint32_t table_cap(size_t n)
{
    uint32_t cap = 16;
    while (cap < 2 * n + 1)
        cap *= 2;
    return cap;
}

int tok_vocab_table_init(tr_tokenizer *t, size_t n)
{
    uint32_t cap = table_cap(n);
    t->vhash = tr_malloc(cap * sizeof *t->vhash);
    if (!t->vhash)
        return TR_E_NOMEM;
    memset(t->vhash, 0xFF, cap * sizeof *t->vhash);
    t->vmask = cap - 1;
    return TR_OK;
}

static int vocab_eq(const tr_tokenizer *t, int32_t id, const char *s, size_t n)
{
    const tok_str *v = &t->vocab_str[id];
    return v->len == n && memcmp(t->vpool.data + v->off, s, n) == 0;
}

int32_t tok_vocab_find(const tr_tokenizer *t, const char *s, size_t n)
{
    for (uint32_t i = (uint32_t)tok_hash_bytes(s, n) & t->vmask;; i = (i + 1) & t->vmask) {
        int32_t id = t->vhash[i];
        if (id < 0 || vocab_eq(t, id, s, n))
            return id;
    }
}

int32_t tok_vocab_insert(tr_tokenizer *t, int32_t id)
{
    const tok_str *v = &t->vocab_str[id];
    const char *s = t->vpool.data + v->off;
    for (uint32_t i = (uint32_t)tok_hash_bytes(s, v->len) & t->vmask;; i = (i + 1) & t->vmask) {
        int32_t old = t->vhash[i];
        if (old < 0) {
            t->vhash[i] = id;
            return -1;
        }
        if (vocab_eq(t, old, s, v->len))
            return old;
    }
}

static uint32_t pair_hash(int32_t a, int32_t b)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (uint32_t)k;
}

int tok_merge_table_init(tr_tokenizer *t, size_t n)
{
    uint32_t cap = table_cap(n);
    t->mhash = tr_malloc(cap * sizeof *t->mhash);
    if (!t->mhash)
        return TR_E_NOMEM;
    for (uint32_t i = 0; i < cap; i++)
        t->mhash[i].a = -1;
    t->mmask = cap - 1;
    return TR_OK;
}

const tok_merge *tok_merge_find(const tr_tokenizer *t, int32_t a, int32_t b)
{
    for (uint32_t i = pair_hash(a, b) & t->mmask;; i = (i + 1) & t->mmask) {
        const tok_merge *m = &t->mhash[i];
        if (m->a < 0)
            return NULL;
        if (m->a == a && m->b == b)
            return m;
    }
}

/* ENGINE.md §4: rank = list index, first occurrence wins. */
void tok_merge_insert(tr_tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t id)
{
    for (uint32_t i = pair_hash(a, b) & t->mmask;; i = (i + 1) & t->mmask) {
        tok_merge *m = &t->mhash[i];
        if (m->a < 0) {
            *m = (tok_merge){a, b, rank, id};
            return;
        }
        if (m->a == a && m->b == b)
            return;
    }
}
