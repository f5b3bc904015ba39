/*
 * tokenizer_query.c — lookups on a loaded tokenizer (token id by content, special flag) and the JSON summary shown
 * by `trellis inspect --tokenizer` (docs/schemas.md "Tokenizer summary").
 */
#include "tokenizer_internal.h"

#include "trellis/alloc.h"

#include <string.h>

int32_t tr_tokenizer_token_id(const tr_tokenizer *t, const char *content)
{
    size_t n = strlen(content);
    for (uint32_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->added[i].content, content, n) == 0)
            return t->added[i].id;
    return tok_vocab_find(t, content, n);
}

int tr_tokenizer_is_special(const tr_tokenizer *t, int32_t id)
{
    return id >= 0 && (uint32_t)id < t->size && (t->kind[id] & TOK_SPECIAL) != 0;
}

static json_t *special_list(const tr_tokenizer *t)
{
    json_t *list = json_array();
    for (uint32_t i = 0; list && i < t->n_added; i++) {
        const tok_added *a = &t->added[i];
        if (a->special)
            json_array_append_new(list, json_pack("{s:I, s:s}", "id", (json_int_t)a->id, "content", a->content));
    }
    return list;
}

static json_t *summary(const tr_tokenizer *t)
{
    uint32_t n_special = 0;
    for (uint32_t i = 0; i < t->n_added; i++)
        n_special += t->added[i].special;
    json_t *model = json_pack("{s:s, s:o, s:b, s:b}", "type", "BPE", "unk_token",
                              t->unk_token ? json_string(t->unk_token) : json_null(), "ignore_merges",
                              t->ignore_merges, "fuse_unk", t->fuse_unk);
    json_t *pre = json_pack("{s:s, s:s, s:b}", "type", t->pattern_source, "pattern", t->pattern, "jit", t->jit);
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:o, s:o, s:o, s:o}", "path", t->path, "size",
                     (json_int_t)t->size, "vocab", (json_int_t)t->n_vocab, "merges", (json_int_t)t->n_merges,
                     "added_tokens", (json_int_t)t->n_added, "special_count", (json_int_t)n_special,
                     "normalizer", t->nfc ? json_string("NFC") : json_null(), "pre_tokenizer", pre, "model", model,
                     "special_tokens", special_list(t));
}

/* A member lost to an allocation failure inside jansson is not reported by json_array_append_new etc.; the
 * allocator's failure counter is (alloc.h), so any failure while building gives NULL. */
json_t *tr_tokenizer_summary(const tr_tokenizer *t)
{
    unsigned long failures = tr_alloc_failures();
    json_t *doc = summary(t);
    if (doc && tr_alloc_failures() != failures) {
        json_decref(doc);
        doc = NULL;
    }
    return doc;
}
