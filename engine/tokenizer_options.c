/*
 * tokenizer_options.c — the parts of tokenizer.json around the model (ENGINE.md §4 "Fields read"): added_tokens,
 * normalizer (null, NFC or a Sequence of those), pre_tokenizer (Sequence[Split Isolated, ByteLevel without regex] or
 * a lone ByteLevel with the GPT-2 regex), decoder (ByteLevel), and the added-token matchers built from them.  Any
 * other type or option is a load error naming its JSON path.
 */
#include "tokenizer_internal.h"

#include "trellis/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The pattern of a lone ByteLevel pre-tokenizer with use_regex true (GPT-2). */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static const char *const ADDED_KEYS[] = {"id", "content", "single_word", "lstrip", "rstrip", "normalized",
                                         "special", NULL};
static const char *const BYTELEVEL_KEYS[] = {"type", "add_prefix_space", "trim_offsets", "use_regex", NULL};
static const char *const SPLIT_KEYS[] = {"type", "pattern", "behavior", "invert", NULL};

static const char *type_of(const json_t *v) { return json_string_value(json_object_get(v, "type")); }

static int need_type(const tr_tokenizer *t, const json_t *v, const char *jpath, tr_error *err)
{
    if (!json_is_object(v))
        return tok_fail(t, err, jpath, "not an object");
    if (!type_of(v))
        return tok_fail(t, err, jpath, "type: required string missing");
    return TR_OK;
}

/* ---- added_tokens -------------------------------------------------------------------------------------------- */

static int added_flags(const tr_tokenizer *t, const json_t *o, const char *p, tok_added *a, tr_error *err)
{
    int sp, ls, rs, sw, nz;
    /* HF's AddedToken defaults for missing members: special/lstrip/rstrip/single_word false, normalized true. */
    int rc = tok_get_bool(t, o, p, "special", 0, &sp, err);
    if (rc == TR_OK)
        rc = tok_get_bool(t, o, p, "lstrip", 0, &ls, err);
    if (rc == TR_OK)
        rc = tok_get_bool(t, o, p, "rstrip", 0, &rs, err);
    if (rc == TR_OK)
        rc = tok_get_bool(t, o, p, "single_word", 0, &sw, err);
    if (rc == TR_OK)
        rc = tok_get_bool(t, o, p, "normalized", 1, &nz, err);
    if (rc == TR_OK)
        a->special = (uint8_t)sp, a->lstrip = (uint8_t)ls, a->rstrip = (uint8_t)rs, a->single_word = (uint8_t)sw,
        a->normalized = (uint8_t)nz;
    return rc;
}

static int added_one(tr_tokenizer *t, const json_t *o, const char *p, tok_added *a, tr_error *err)
{
    if (!json_is_object(o))
        return tok_fail(t, err, p, "not an object");
    int rc = tok_check_keys(t, o, p, ADDED_KEYS, err);
    if (rc != TR_OK)
        return rc;
    const json_t *id = json_object_get(o, "id"), *content = json_object_get(o, "content");
    if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > (json_int_t)TOK_MAX_ID)
        return tok_fail(t, err, p, "id: required integer in [0, %u] missing", TOK_MAX_ID);
    if (!json_is_string(content) || json_string_length(content) == 0)
        return tok_fail(t, err, p, "content: required non-empty string missing");
    if (strlen(json_string_value(content)) != json_string_length(content))
        return tok_fail(t, err, p, "content: NUL characters are not supported");
    a->id = (int32_t)json_integer_value(id);
    a->len = (uint32_t)json_string_length(content);
    if (!(a->content = tr_strdup(json_string_value(content))))
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot store the added tokens");
    a->match = a->content;
    a->match_len = a->len;
    return added_flags(t, o, p, a, err);
}

static int cmp_content(const void *x, const void *y)
{
    const tok_added *a = *(const tok_added *const *)x, *b = *(const tok_added *const *)y;
    if (a->len != b->len)
        return a->len < b->len ? -1 : 1;
    int c = memcmp(a->content, b->content, a->len);
    return c ? c : (a < b ? -1 : a > b);
}

/* Two added tokens with the same content are refused (which id would win is not defined). */
static int added_unique(tr_tokenizer *t, tr_error *err)
{
    const tok_added **s = tr_malloc((t->n_added ? t->n_added : 1) * sizeof *s);
    if (!s)
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot check the added tokens");
    for (uint32_t i = 0; i < t->n_added; i++)
        s[i] = &t->added[i];
    qsort(s, t->n_added, sizeof *s, cmp_content);
    int rc = TR_OK;
    for (uint32_t i = 1; i < t->n_added && rc == TR_OK; i++)
        if (s[i]->len == s[i - 1]->len && memcmp(s[i]->content, s[i - 1]->content, s[i]->len) == 0) {
            char p[64];
            snprintf(p, sizeof p, "added_tokens[%td]", s[i] - t->added);
            rc = tok_fail(t, err, p, "content \"%.200s\" duplicates added_tokens[%td]", s[i]->content,
                          s[i - 1] - t->added);
        }
    tr_dealloc(s);
    return rc;
}

int tok_load_added(tr_tokenizer *t, const json_t *v, tr_error *err)
{
    if (!v || json_is_null(v))
        return TR_OK;
    if (!json_is_array(v))
        return tok_fail(t, err, "added_tokens", "not an array");
    size_t n = json_array_size(v);
    if (n && !(t->added = tr_calloc(n, sizeof *t->added)))
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot store the added tokens");
    for (size_t i = 0; i < n; i++) {
        char p[64];
        snprintf(p, sizeof p, "added_tokens[%zu]", i);
        t->n_added = (uint32_t)i + 1;
        int rc = added_one(t, json_array_get(v, i), p, &t->added[i], err);
        if (rc != TR_OK)
            return rc;
    }
    return added_unique(t, err);
}

/* ---- normalizer ---------------------------------------------------------------------------------------------- */

static int normalizer_node(tr_tokenizer *t, const json_t *v, const char *jpath, int depth, tr_error *err)
{
    static const char *const NFC_KEYS[] = {"type", NULL}, *const SEQ_KEYS[] = {"type", "normalizers", NULL};
    if (json_is_null(v))
        return TR_OK;
    int rc = need_type(t, v, jpath, err);
    if (rc != TR_OK)
        return rc;
    if (strcmp(type_of(v), "NFC") == 0) {
        t->nfc = 1;
        return tok_check_keys(t, v, jpath, NFC_KEYS, err);
    }
    if (strcmp(type_of(v), "Sequence") != 0 || depth > 8)
        return tok_fail(t, err, jpath, "type \"%s\" is not supported (supported: null, NFC, Sequence)", type_of(v));
    rc = tok_check_keys(t, v, jpath, SEQ_KEYS, err);
    const json_t *list = json_object_get(v, "normalizers");
    if (rc == TR_OK && !json_is_array(list))
        rc = tok_fail(t, err, jpath, "normalizers: required array missing");
    for (size_t i = 0; rc == TR_OK && i < json_array_size(list); i++) {
        char p[256];
        snprintf(p, sizeof p, "%s.normalizers[%zu]", jpath, i);
        rc = normalizer_node(t, json_array_get(list, i), p, depth + 1, err);
    }
    return rc;
}

int tok_load_normalizer(tr_tokenizer *t, const json_t *v, tr_error *err)
{
    return v ? normalizer_node(t, v, "normalizer", 0, err) : TR_OK;
}

/* ---- pre_tokenizer ------------------------------------------------------------------------------------------- */

/* ByteLevel: add_prefix_space false (HF default true), trim_offsets any, use_regex as required by its position. */
static int byte_level(tr_tokenizer *t, const json_t *v, const char *jpath, int want_regex, tr_error *err)
{
    int rc = tok_check_keys(t, v, jpath, BYTELEVEL_KEYS, err);
    int prefix, trim, regex;
    if (rc == TR_OK)
        rc = tok_get_bool(t, v, jpath, "add_prefix_space", 1, &prefix, err);
    if (rc == TR_OK)
        rc = tok_get_bool(t, v, jpath, "trim_offsets", 1, &trim, err);
    if (rc == TR_OK)
        rc = tok_get_bool(t, v, jpath, "use_regex", 1, &regex, err);
    if (rc == TR_OK && prefix)
        rc = tok_fail(t, err, jpath, "add_prefix_space: true is not supported");
    if (rc == TR_OK && regex != want_regex)
        rc = tok_fail(t, err, jpath, "use_regex: %s is not supported here", regex ? "true" : "false");
    return rc;
}

static int split_pattern(tr_tokenizer *t, const json_t *v, const char *jpath, tr_error *err)
{
    char p[256];
    snprintf(p, sizeof p, "%s.pattern", jpath);
    const json_t *pat = json_object_get(v, "pattern");
    if (!json_is_object(pat))
        return tok_fail(t, err, p, "required object missing");
    const json_t *re = json_object_get(pat, "Regex");
    if (json_object_size(pat) != 1 || !json_is_string(re))
        return tok_fail(t, err, p, "only {\"Regex\": \"...\"} is supported");
    if (strlen(json_string_value(re)) != json_string_length(re))
        return tok_fail(t, err, p, "Regex: NUL characters are not supported");
    if (!(t->pattern = tr_strdup(json_string_value(re))))
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot store the pattern");
    t->pattern_source = "Split";
    snprintf(p, sizeof p, "%s.pattern.Regex", jpath);
    return tok_compile_pattern(t, p, err);
}

/* Split: pattern.Regex, behavior "Isolated", invert false. */
static int split(tr_tokenizer *t, const json_t *v, const char *jpath, tr_error *err)
{
    int rc = tok_check_keys(t, v, jpath, SPLIT_KEYS, err);
    const char *behavior = json_string_value(json_object_get(v, "behavior"));
    int invert = 0;
    if (rc == TR_OK && (!behavior || strcmp(behavior, "Isolated") != 0))
        rc = tok_fail(t, err, jpath, "behavior: \"%s\" is not supported (expected \"Isolated\")",
                      behavior ? behavior : "(missing)");
    if (rc == TR_OK)
        rc = tok_get_bool(t, v, jpath, "invert", 0, &invert, err);
    if (rc == TR_OK && invert)
        rc = tok_fail(t, err, jpath, "invert: true is not supported");
    return rc == TR_OK ? split_pattern(t, v, jpath, err) : rc;
}

static int sequence(tr_tokenizer *t, const json_t *v, tr_error *err)
{
    static const char *const SEQ_KEYS[] = {"type", "pretokenizers", NULL};
    int rc = tok_check_keys(t, v, "pre_tokenizer", SEQ_KEYS, err);
    const json_t *list = json_object_get(v, "pretokenizers");
    if (rc == TR_OK && (!json_is_array(list) || json_array_size(list) != 2))
        rc = tok_fail(t, err, "pre_tokenizer.pretokenizers", "expected [Split, ByteLevel]");
    const json_t *a = json_array_get(list, 0), *b = json_array_get(list, 1);
    const char *pa = "pre_tokenizer.pretokenizers[0]", *pb = "pre_tokenizer.pretokenizers[1]";
    if (rc == TR_OK && (rc = need_type(t, a, pa, err)) == TR_OK && strcmp(type_of(a), "Split") != 0)
        rc = tok_fail(t, err, pa, "type \"%s\" is not supported here (expected Split)", type_of(a));
    if (rc == TR_OK && (rc = need_type(t, b, pb, err)) == TR_OK && strcmp(type_of(b), "ByteLevel") != 0)
        rc = tok_fail(t, err, pb, "type \"%s\" is not supported here (expected ByteLevel)", type_of(b));
    if (rc == TR_OK)
        rc = byte_level(t, b, pb, 0, err);
    return rc == TR_OK ? split(t, a, pa, err) : rc;
}

int tok_load_pre_tokenizer(tr_tokenizer *t, const json_t *v, tr_error *err)
{
    if (!v || json_is_null(v))
        return tok_fail(t, err, "pre_tokenizer", "null is not supported (expected Sequence[Split, ByteLevel] or "
                        "ByteLevel)");
    int rc = need_type(t, v, "pre_tokenizer", err);
    if (rc != TR_OK)
        return rc;
    if (strcmp(type_of(v), "Sequence") == 0)
        return sequence(t, v, err);
    if (strcmp(type_of(v), "ByteLevel") != 0)
        return tok_fail(t, err, "pre_tokenizer", "type \"%s\" is not supported", type_of(v));
    rc = byte_level(t, v, "pre_tokenizer", 1, err);
    if (rc != TR_OK)
        return rc;
    if (!(t->pattern = tr_strdup(GPT2_PATTERN)))
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot store the pattern");
    t->pattern_source = "ByteLevel";
    return tok_compile_pattern(t, "pre_tokenizer", err);
}

/* ---- decoder ------------------------------------------------------------------------------------------------- */

/* ENGINE.md §4: decoder ByteLevel, its options ignored (they only affect offsets). */
int tok_load_decoder(tr_tokenizer *t, const json_t *v, tr_error *err)
{
    if (!v || json_is_null(v))
        return tok_fail(t, err, "decoder", "null is not supported (expected ByteLevel)");
    int rc = need_type(t, v, "decoder", err);
    if (rc == TR_OK && strcmp(type_of(v), "ByteLevel") != 0)
        rc = tok_fail(t, err, "decoder", "type \"%s\" is not supported (expected ByteLevel)", type_of(v));
    return rc;
}

/* ---- matchers ------------------------------------------------------------------------------------------------ */

/* First byte ascending, then longest first (leftmost-longest matching), then file order. */
static int cmp_match(const void *x, const void *y)
{
    const tok_added *a = *(const tok_added *const *)x, *b = *(const tok_added *const *)y;
    uint8_t fa = (uint8_t)a->match[0], fb = (uint8_t)b->match[0];
    if (fa != fb)
        return fa < fb ? -1 : 1;
    if (a->match_len != b->match_len)
        return a->match_len > b->match_len ? -1 : 1;
    return a < b ? -1 : a > b;
}

static int build_matcher(tr_tokenizer *t, tok_matcher *m, int normalized)
{
    const tok_added **s = tr_malloc((t->n_added ? t->n_added : 1) * sizeof *s);
    m->order = tr_malloc((t->n_added ? t->n_added : 1) * sizeof *m->order);
    if (!s || !m->order) {
        tr_dealloc(s);
        return TR_E_NOMEM;
    }
    m->n = 0;
    for (uint32_t i = 0; i < t->n_added; i++)
        if (t->added[i].normalized == normalized)
            s[m->n++] = &t->added[i];
    qsort(s, m->n, sizeof *s, cmp_match);
    memset(m->first, 0, sizeof m->first);
    for (uint32_t i = 0; i < m->n; i++) {
        m->order[i] = (uint32_t)(s[i] - t->added);
        m->first[(uint8_t)s[i]->match[0] + 1]++;
    }
    for (int b = 0; b < 256; b++)
        m->first[b + 1] += m->first[b];
    tr_dealloc(s);
    return TR_OK;
}

/* normalized: true tokens are searched in normalized text, so their content is normalized too. */
int tok_build_matchers(tr_tokenizer *t, tr_error *err)
{
    for (uint32_t i = 0; i < t->n_added; i++) {
        tok_added *a = &t->added[i];
        if (!a->normalized || !t->nfc)
            continue;
        size_t n;
        char *s;
        if (tok_nfc(a->content, a->len, &s, &n) != TR_OK)
            return tr_fail(err, TR_E_NOMEM, t->path, "cannot normalize the added tokens");
        a->match = s;
        a->match_len = (uint32_t)n;
    }
    if (build_matcher(t, &t->raw, 0) != TR_OK || build_matcher(t, &t->norm, 1) != TR_OK)
        return tr_fail(err, TR_E_NOMEM, t->path, "cannot index the added tokens");
    return TR_OK;
}
