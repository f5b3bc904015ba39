/*
 * tokenize.c — fuzz target: a fixed, valid tokenizer encoding arbitrary bytes (ENGINE.md §4 Encode / Decode).
 *
 * The tokenizer is $TRELLIS_FUZZ_TOKENIZER, else golden/oracle/tokenizer_glm.json relative to the working folder
 * (run from the repository root, as make does); it is loaded once.  The whole input is the text.
 * Checks, for parse_special 0 and 1:
 *   - invalid UTF-8 → TR_E_UTF8 whose message names the first invalid byte, no ids;
 *   - valid UTF-8 → TR_OK, every id in [0, size), decoding gives no unknown id and valid UTF-8, and the streaming
 *     decoder's concatenated output equals the one-shot decode (both skip_special values);
 *   - round trip (the §4 guarantee): when the tokenizer has no unk_token and neither the text nor its normalized
 *     form contains an added token's content, decode(encode(x)) == normalize(x) (NFC via libutf8proc when the
 *     tokenizer's normalizer is NFC, else x itself).
 */
#include "fuzz.h"
#include "trellis/alloc.h"
#include "trellis/tokenizer.h"
#include "trellis/utf8.h"

#include <jansson.h>
#include <utf8proc.h>

static tr_tokenizer *tok;
static char **added;          /* contents of every added token */
static size_t n_added;
static int has_unk, nfc;

static int json_mentions_nfc(const json_t *norm)
{
    if (!json_is_object(norm))
        return 0;
    const char *type = json_string_value(json_object_get(norm, "type"));
    if (type && !strcmp(type, "NFC"))
        return 1;
    const json_t *list = json_object_get(norm, "normalizers");
    for (size_t i = 0; i < json_array_size(list); i++)
        if (json_mentions_nfc(json_array_get(list, i)))
            return 1;
    return 0;
}

static void setup(void)
{
    const char *path = getenv("TRELLIS_FUZZ_TOKENIZER");
    if (!path || !*path)
        path = "golden/oracle/tokenizer_glm.json";
    tr_error err;
    FUZZ_SETUP_CHECK(tr_tokenizer_load(path, &tok, &err) == TR_OK,
                     "%s (run from the repository root or set TRELLIS_FUZZ_TOKENIZER)", err.text);
    /* what the round-trip condition needs, read from the same file */
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    FUZZ_SETUP_CHECK(doc != NULL, "%s: %s", path, jerr.text);
    const json_t *list = json_object_get(doc, "added_tokens");
    n_added = json_array_size(list);
    added = calloc(n_added ? n_added : 1, sizeof *added);
    FUZZ_SETUP_CHECK(added != NULL, "out of memory");
    for (size_t i = 0; i < n_added; i++) {
        const char *c = json_string_value(json_object_get(json_array_get(list, i), "content"));
        added[i] = strdup(c ? c : "");
        FUZZ_SETUP_CHECK(added[i] != NULL, "out of memory");
    }
    const json_t *unk = json_object_get(json_object_get(doc, "model"), "unk_token");
    has_unk = unk && !json_is_null(unk);
    nfc = json_mentions_nfc(json_object_get(doc, "normalizer"));
    json_decref(doc);
}

static int contains_added(const char *s, size_t n)
{
    for (size_t i = 0; i < n_added; i++) {
        size_t m = strlen(added[i]);
        if (m == 0 || m > n)
            continue;
        for (size_t p = 0; p + m <= n; p++)
            if (s[p] == added[i][0] && !memcmp(s + p, added[i], m))
                return 1;
    }
    return 0;
}

static void check_decode(const int32_t *ids, size_t n, int skip, char **keep, size_t *keep_len)
{
    char *text = NULL;
    size_t len = 0, unknown = 0;
    tr_error err;
    FUZZ_ASSERT(tr_tokenizer_decode(tok, ids, n, skip, &text, &len, &unknown, &err) == TR_OK, "decode: %s",
                err.text);
    FUZZ_ASSERT(unknown == 0, "%zu of encode's ids have no token", unknown);
    FUZZ_ASSERT(tr_utf8_invalid_at((const uint8_t *)text, len) == len, "decode gave invalid UTF-8");
    tr_detok *d = NULL;
    FUZZ_ASSERT(tr_detok_new(tok, skip, &d, &err) == TR_OK, "detok_new: %s", err.text);
    size_t pos = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *piece;
        size_t plen;
        int rc = i < n ? tr_detok_push(d, ids[i], &piece, &plen) : tr_detok_finish(d, &piece, &plen);
        FUZZ_ASSERT(rc == TR_OK, "detok %d", rc);
        FUZZ_ASSERT(pos + plen <= len && !memcmp(text + pos, piece, plen), "stream differs at byte %zu", pos);
        pos += plen;
    }
    FUZZ_ASSERT(pos == len && tr_detok_unknown(d) == 0, "stream length %zu, one-shot %zu", pos, len);
    tr_detok_free(d);
    if (keep) {
        *keep = text;
        *keep_len = len;
    } else
        tr_dealloc(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT)
        return 0;
    if (!tok)
        setup();
    const char *s = (const char *)data;
    size_t bad = tr_utf8_invalid_at(data, size);

    /* the normalized text and whether the round trip is guaranteed for it */
    char *norm = NULL;
    size_t norm_len = 0;
    int round_trip = 0;
    if (bad == size && !has_unk) {
        if (nfc && size) {
            utf8proc_uint8_t *out = NULL;
            utf8proc_ssize_t k = utf8proc_map(data, (utf8proc_ssize_t)size, &out, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            FUZZ_ASSERT(k >= 0, "utf8proc_map rejects valid UTF-8: %s", utf8proc_errmsg(k));
            norm = (char *)out;
            norm_len = (size_t)k;
        }
        round_trip = !contains_added(s, size) && !(norm && contains_added(norm, norm_len));
    }

    for (int special = 0; special <= 1; special++) {
        int32_t *ids = NULL;
        size_t n = 0;
        tr_error err;
        tr_error_clear(&err);
        int rc = tr_tokenizer_encode(tok, s, size, special, "fuzz-text", &ids, &n, &err);
        if (bad < size) {
            char want[80];
            snprintf(want, sizeof want, "fuzz-text: TR_E_UTF8: invalid UTF-8 at byte %zu", bad);
            FUZZ_ASSERT(rc == TR_E_UTF8 && !strcmp(err.text, want) && ids == NULL && n == 0, "rc %d: %s", rc,
                        err.text);
            continue;
        }
        FUZZ_ASSERT(rc == TR_OK && ids != NULL, "valid UTF-8 did not encode: %s", err.text);
        for (size_t i = 0; i < n; i++)
            FUZZ_ASSERT(ids[i] >= 0 && (uint32_t)ids[i] < tr_tokenizer_size(tok), "id %d", (int)ids[i]);
        char *text = NULL;
        size_t len = 0;
        check_decode(ids, n, 0, &text, &len);
        check_decode(ids, n, 1, NULL, NULL);
        if (round_trip) {
            const char *want = norm ? norm : s;
            size_t want_len = norm ? norm_len : size;
            FUZZ_ASSERT(len == want_len && !memcmp(text, want, len),
                        "round trip: decode(encode(x)) is %zu bytes, normalize(x) %zu (parse_special %d)", len,
                        want_len, special);
        }
        tr_dealloc(text);
        tr_dealloc(ids);
    }
    free(norm);
    return 0;
}
