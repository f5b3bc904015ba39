/*
 * tokenizer_load.c — reading tokenizer.json (ENGINE.md §4 "Fields read from tokenizer.json"): the top level, the BPE
 * model (vocab, merges, options) and the load-time checks (merge parts and concatenations in the vocab, the 256
 * byte symbols present unless unk_token is set, ids unique).  Normalizer, pre-tokenizer, decoder and added tokens
 * are read by tokenizer_options.c.  Every error names its JSON path.
 */
#include "tokenizer_internal.h"

#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/utf8.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const TOP_KEYS[] = {"version", "truncation", "padding", "added_tokens", "normalizer",
                                       "pre_tokenizer", "post_processor", "decoder", "model", NULL};
static const char *const MODEL_KEYS[] = {"type", "dropout", "unk_token", "continuing_subword_prefix",
                                         "end_of_word_suffix", "fuse_unk", "byte_fallback", "ignore_merges",
                                         "vocab", "merges", NULL};

/* ---- generic JSON checks ------------------------------------------------------------------------------------- */

int tok_fail(const tr_tokenizer *t, tr_error *err, const char *jpath, const char *fmt, ...)
{
    char detail[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return tr_fail(err, TR_E_TOKENIZER, t->path, "%s: %s", jpath, detail);
}

int tok_check_keys(const tr_tokenizer *t, const json_t *obj, const char *jpath, const char *const *allowed,
                   tr_error *err)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        int ok = 0;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, key) == 0;
        if (!ok) {
            char p[256];
            snprintf(p, sizeof p, "%s%s%s", jpath, *jpath ? "." : "", key);
            return tok_fail(t, err, p, "option not supported");
        }
    }
    return TR_OK;
}

int tok_get_bool(const tr_tokenizer *t, const json_t *obj, const char *jpath, const char *key, int dflt, int *out,
                 tr_error *err)
{
    const json_t *v = json_object_get(obj, key);
    *out = dflt;
    if (!v || json_is_null(v))
        return TR_OK;
    if (!json_is_boolean(v))
        return tok_fail(t, err, jpath, "%s: not a boolean", key);
    *out = json_is_true(v);
    return TR_OK;
}

/* ---- model options ------------------------------------------------------------------------------------------- */

/* continuing_subword_prefix / end_of_word_suffix: null or "" (ENGINE.md §4). */
static int check_affix(const tr_tokenizer *t, const json_t *model, const char *key, tr_error *err)
{
    const json_t *v = json_object_get(model, key);
    if (!v || json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0))
        return TR_OK;
    return tok_fail(t, err, "model", "%s: only null or \"\" is supported", key);
}

static int model_options(tr_tokenizer *t, const json_t *model, tr_error *err)
{
    const json_t *type = json_object_get(model, "type");
    if (!json_is_string(type))
        return tok_fail(t, err, "model.type", "required string missing (expected \"BPE\")");
    if (strcmp(json_string_value(type), "BPE") != 0)
        return tok_fail(t, err, "model", "type \"%s\" is not supported (expected \"BPE\")", json_string_value(type));
    const json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout))
        return tok_fail(t, err, "model", "dropout: only null is supported");
    int byte_fallback;
    int rc = tok_get_bool(t, model, "model", "byte_fallback", 0, &byte_fallback, err);
    if (rc == TR_OK && byte_fallback)
        rc = tok_fail(t, err, "model", "byte_fallback: true is not supported");
    if (rc == TR_OK)
        rc = tok_get_bool(t, model, "model", "ignore_merges", 0, &t->ignore_merges, err);
    if (rc == TR_OK)
        rc = tok_get_bool(t, model, "model", "fuse_unk", 0, &t->fuse_unk, err);
    if (rc == TR_OK)
        rc = check_affix(t, model, "continuing_subword_prefix", err);
    if (rc == TR_OK)
        rc = check_affix(t, model, "end_of_word_suffix", err);
    return rc;
}

/* ---- sizes and per-id tables --------------------------------------------------------------------------------- */

static int read_id(const tr_tokenizer *t, const json_t *v, const char *jpath, int32_t *id, tr_error *err)
{
    if (!json_is_integer(v))
        return tok_fail(t, err, jpath, "id is not an integer");
    json_int_t x = json_integer_value(v);
    if (x < 0 || x > (json_int_t)TOK_MAX_ID)
        return tok_fail(t, err, jpath, "id %lld is out of range [0, %u]", (long long)x, TOK_MAX_ID);
    *id = (int32_t)x;
    return TR_OK;
}

/* size = 1 + max id over model.vocab and added_tokens (ids already checked by their readers). */
static int compute_size(tr_tokenizer *t, const json_t *vocab, tr_error *err)
{
    int64_t max = -1;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)vocab, key, v) {
        char p[320];
        snprintf(p, sizeof p, "model.vocab[\"%.200s\"]", key);
        int32_t id = 0;
        int rc = read_id(t, v, p, &id, err);
        if (rc != TR_OK)
            return rc;
        max = id > max ? id : max;
    }
    for (uint32_t i = 0; i < t->n_added; i++)
        max = t->added[i].id > max ? t->added[i].id : max;
    t->size = (uint32_t)(max + 1);
    t->n_vocab = (uint32_t)json_object_size(vocab);
    return TR_OK;
}

static int alloc_tables(tr_tokenizer *t, tr_error *err)
{
    size_t n = t->size ? t->size : 1;
    t->kind = tr_calloc(n, sizeof *t->kind);
    t->vocab_str = tr_calloc(n, sizeof *t->vocab_str);
    t->dec = tr_calloc(n, sizeof *t->dec);
    if (!t->kind || !t->vocab_str || !t->dec || tok_vocab_table_init(t, t->n_vocab) != TR_OK)
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot allocate the vocab tables (%u ids)", t->size);
    return TR_OK;
}

/* ---- vocab --------------------------------------------------------------------------------------------------- */

/* Decoded bytes of a vocab string: each character back through the inverse byte table, characters outside the
 * table as their own UTF-8 (ENGINE.md §4 "Decode"). */
static int vocab_decoded(tr_tokenizer *t, int32_t id, const char *s, size_t n)
{
    char buf[256];
    char *d = n <= sizeof buf ? buf : tr_malloc(n);
    if (!d)
        return TR_E_NOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        int len = tr_utf8_seq_len((const uint8_t *)s + i, n - i);
        len = len > 0 ? len : 1;   /* jansson strings are valid UTF-8 */
        uint32_t cp = tok_utf8_cp((const uint8_t *)s + i, len);
        int b = tok_cp_byte(cp);
        if (b >= 0)
            d[k++] = (char)b;
        else {
            memcpy(d + k, s + i, (size_t)len);
            k += (size_t)len;
        }
        i += (size_t)len;
    }
    int rc = tok_pool_add(&t->dpool, d, k, &t->dec[id]);
    if (d != buf)
        tr_dealloc(d);
    return rc;
}

static int add_vocab_entry(tr_tokenizer *t, const char *key, int32_t id, tr_error *err)
{
    size_t n = strlen(key);
    if (t->kind[id] & TOK_IN_VOCAB) {
        const tok_str *o = &t->vocab_str[id];
        return tok_fail(t, err, "model.vocab", "id %d is used by \"%.*s\" and \"%.200s\"", id,
                        (int)(o->len > 200 ? 200 : o->len), t->vpool.data + o->off, key);
    }
    if (tok_pool_add(&t->vpool, key, n, &t->vocab_str[id]) != TR_OK || vocab_decoded(t, id, key, n) != TR_OK)
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot store the vocab");
    t->kind[id] |= TOK_IN_VOCAB;
    tok_vocab_insert(t, id);   /* keys of a JSON object are unique */
    return TR_OK;
}

static int load_vocab(tr_tokenizer *t, const json_t *vocab, tr_error *err)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)vocab, key, v) {
        int rc = add_vocab_entry(t, key, (int32_t)json_integer_value(v), err);
        if (rc != TR_OK)
            return rc;
    }
    return TR_OK;
}

/* ENGINE.md §4: the 256 byte symbols must be in the vocab unless unk_token is set. */
static int byte_symbols(tr_tokenizer *t, tr_error *err)
{
    for (int b = 0; b < 256; b++) {
        uint8_t byte = (uint8_t)b;
        char s[2];
        size_t n = tok_byte_level(&byte, 1, s);
        t->byte_id[b] = tok_vocab_find(t, s, n);
        if (t->byte_id[b] < 0 && t->unk_id < 0)
            return tok_fail(t, err, "model.vocab", "byte symbol \"%.*s\" (byte 0x%02X) is missing and there is no "
                            "unk_token", (int)n, s, b);
    }
    return TR_OK;
}

static int unk_token(tr_tokenizer *t, const json_t *model, tr_error *err)
{
    const json_t *v = json_object_get(model, "unk_token");
    t->unk_id = -1;
    if (!v || json_is_null(v))
        return TR_OK;
    if (!json_is_string(v))
        return tok_fail(t, err, "model.unk_token", "not a string");
    t->unk_token = tr_strdup(json_string_value(v));
    if (!t->unk_token)
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot store unk_token");
    t->unk_id = tok_vocab_find(t, t->unk_token, strlen(t->unk_token));
    if (t->unk_id < 0)
        return tok_fail(t, err, "model.unk_token", "\"%.200s\" is not in the vocab", t->unk_token);
    return TR_OK;
}

/* ---- merges -------------------------------------------------------------------------------------------------- */

/* One merge as its two parts: "a b" split at the single space, or [a, b]. */
static int merge_parts(const tr_tokenizer *t, const json_t *m, const char *jpath, const char **a, size_t *na,
                       const char **b, size_t *nb, tr_error *err)
{
    if (json_is_string(m)) {
        const char *s = json_string_value(m), *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return tok_fail(t, err, jpath, "\"%.200s\" is not two parts separated by one space", s);
        *a = s, *na = (size_t)(sp - s), *b = sp + 1, *nb = strlen(sp + 1);
        return TR_OK;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0)), *na = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1)), *nb = json_string_length(json_array_get(m, 1));
        return TR_OK;
    }
    return tok_fail(t, err, jpath, "not a \"a b\" string or an [a, b] pair of strings");
}

static int merge_ids(tr_tokenizer *t, const json_t *m, const char *jpath, char **cat, size_t *cat_cap,
                     int32_t ids[3], tr_error *err)
{
    const char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    int rc = merge_parts(t, m, jpath, &a, &na, &b, &nb, err);
    if (rc != TR_OK)
        return rc;
    if (na + nb > *cat_cap) {
        char *c = tr_realloc(*cat, na + nb);
        if (!c)
            return tr_fail(err, TR_E_NOMEM, t->path, "cannot check the merges");
        *cat = c, *cat_cap = na + nb;
    }
    memcpy(*cat, a, na);
    memcpy(*cat + na, b, nb);
    const char *part[3] = {a, b, *cat};
    size_t len[3] = {na, nb, na + nb};
    static const char *const what[3] = {"part", "part", "concatenation"};
    for (int k = 0; k < 3; k++)
        if ((ids[k] = tok_vocab_find(t, part[k], len[k])) < 0)
            return tok_fail(t, err, jpath, "%s \"%.*s\" is not in the vocab", what[k],
                            (int)(len[k] > 200 ? 200 : len[k]), part[k]);
    return TR_OK;
}

static int load_merges(tr_tokenizer *t, const json_t *merges, tr_error *err)
{
    if (!json_is_array(merges))
        return tok_fail(t, err, "model.merges", "required array missing");
    size_t n = json_array_size(merges);
    if (tok_merge_table_init(t, n) != TR_OK)
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot allocate the merge table (%zu merges)", n);
    char *cat = NULL;
    size_t cat_cap = 0;
    int rc = TR_OK;
    for (size_t i = 0; i < n && rc == TR_OK; i++) {
        char p[64];
        snprintf(p, sizeof p, "model.merges[%zu]", i);
        int32_t ids[3];
        rc = merge_ids(t, json_array_get(merges, i), p, &cat, &cat_cap, ids, err);
        if (rc == TR_OK)
            tok_merge_insert(t, ids[0], ids[1], (uint32_t)i, ids[2]);
    }
    tr_dealloc(cat);
    t->n_merges = (uint32_t)n;
    return rc;
}

/* ---- added tokens against the vocab -------------------------------------------------------------------------- */

/* ENGINE.md §4 "ids unique": an added token may reuse a vocab id only for the same string. */
static int place_added(tr_tokenizer *t, tr_error *err)
{
    for (uint32_t i = 0; i < t->n_added; i++) {
        const tok_added *a = &t->added[i];
        char p[64];
        snprintf(p, sizeof p, "added_tokens[%u]", i);
        if (t->kind[a->id] & TOK_ADDED)
            return tok_fail(t, err, p, "id %d is used by an earlier added token", a->id);
        const tok_str *v = &t->vocab_str[a->id];
        if ((t->kind[a->id] & TOK_IN_VOCAB) &&
            (v->len != a->len || memcmp(t->vpool.data + v->off, a->content, a->len) != 0))
            return tok_fail(t, err, p, "id %d is \"%.*s\" in model.vocab, not \"%.200s\"", a->id,
                            (int)(v->len > 200 ? 200 : v->len), t->vpool.data + v->off, a->content);
        t->kind[a->id] |= (uint8_t)(TOK_ADDED | (a->special ? TOK_SPECIAL : 0));
        if (tok_pool_add(&t->dpool, a->content, a->len, &t->dec[a->id]) != TR_OK)
            return tr_fail(err, TR_E_NOMEM, t->path, "cannot store the added tokens");
    }
    return TR_OK;
}

/* ---- top level ----------------------------------------------------------------------------------------------- */

static int load_model(tr_tokenizer *t, const json_t *root, tr_error *err)
{
    const json_t *model = json_object_get(root, "model");
    if (!json_is_object(model))
        return tok_fail(t, err, "model", "required object missing");
    int rc = tok_check_keys(t, model, "model", MODEL_KEYS, err);
    if (rc == TR_OK)
        rc = model_options(t, model, err);
    const json_t *vocab = json_object_get(model, "vocab");
    if (rc == TR_OK && !json_is_object(vocab))
        rc = tok_fail(t, err, "model.vocab", "required object missing");
    if (rc == TR_OK)
        rc = compute_size(t, vocab, err);
    if (rc == TR_OK)
        rc = alloc_tables(t, err);
    if (rc == TR_OK)
        rc = load_vocab(t, vocab, err);
    if (rc == TR_OK)
        rc = place_added(t, err);
    if (rc == TR_OK)
        rc = unk_token(t, model, err);
    if (rc == TR_OK)
        rc = byte_symbols(t, err);
    if (rc == TR_OK)
        rc = load_merges(t, json_object_get(model, "merges"), err);
    return rc;
}

static int load_doc(tr_tokenizer *t, const json_t *root, tr_error *err)
{
    int rc = tok_check_keys(t, root, "", TOP_KEYS, err);
    if (rc == TR_OK)
        rc = tok_load_added(t, json_object_get(root, "added_tokens"), err);
    if (rc == TR_OK)
        rc = load_model(t, root, err);
    if (rc == TR_OK)
        rc = tok_load_normalizer(t, json_object_get(root, "normalizer"), err);
    if (rc == TR_OK)
        rc = tok_load_pre_tokenizer(t, json_object_get(root, "pre_tokenizer"), err);
    if (rc == TR_OK)
        rc = tok_load_decoder(t, json_object_get(root, "decoder"), err);
    if (rc == TR_OK)
        rc = tok_build_matchers(t, err);
    return rc;
}

int tr_tokenizer_load(const char *path, tr_tokenizer **out, tr_error *err)
{
    *out = NULL;
    if (!tr_path_is_file(path))
        return tr_fail(err, TR_E_IO, path, tr_path_exists(path) ? "not a regular file" : "not found");
    tr_tokenizer *t = tr_calloc(1, sizeof *t);
    if (!t || !(t->path = tr_strdup(path))) {
        tr_dealloc(t);
        return tr_fail(err, TR_E_NOMEM, path, "cannot allocate the tokenizer");
    }
    t->unk_id = -1;
    json_t *root = NULL;
    int rc = tr_json_load_object(path, TR_E_TOKENIZER, &root, err);
    if (rc == TR_OK)
        rc = load_doc(t, root, err);
    json_decref(root);
    if (rc != TR_OK) {
        tr_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return TR_OK;
}

uint32_t tr_tokenizer_size(const tr_tokenizer *t) { return t->size; }

void tr_tokenizer_free(tr_tokenizer *t)
{
    if (!t)
        return;
    for (uint32_t i = 0; i < t->n_added; i++) {
        if (t->added[i].match != t->added[i].content)
            tr_dealloc(t->added[i].match);
        tr_dealloc(t->added[i].content);
    }
    tr_dealloc(t->added);
    tr_dealloc(t->raw.order);
    tr_dealloc(t->norm.order);
    pcre2_code_free(t->re);
    pcre2_general_context_free(t->gctx);
    tr_dealloc(t->pattern);
    tr_dealloc(t->unk_token);
    tr_dealloc(t->kind);
    tr_dealloc(t->vocab_str);
    tr_dealloc(t->dec);
    tr_dealloc(t->vpool.data);
    tr_dealloc(t->dpool.data);
    tr_dealloc(t->vhash);
    tr_dealloc(t->mhash);
    tr_dealloc(t->path);
    tr_dealloc(t);
}
