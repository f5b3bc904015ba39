/*
 * tokenizer.c — fuzz target: the tokenizer.json loader (ENGINE.md §4 "Fields read") and everything a loaded
 * tokenizer does: encode, one-shot decode, streaming decode, queries, the inspect summary.
 *
 * Input layout: u32 LE n, then n bytes of tokenizer JSON (n clamped to what is there), then the tail: a text to
 * encode and, read as little-endian i32s, ids to decode.  The JSON is written to a file in the target's temporary
 * folder and loaded with tr_tokenizer_load.
 * Checks: a failed load gives no handle and a message with its code (TR_E_TOKENIZER / TR_E_IO / TR_E_NOMEM only);
 * for a loaded tokenizer, on a few fixed texts and the tail: valid UTF-8 encodes (TR_E_TOKENIZER is allowed: a
 * fuzzed pre-tokenizer regex may hit PCRE2's match limit), invalid UTF-8 is TR_E_UTF8 naming the first bad byte, ids
 * are in [0, size) and decode with no unknown id; every decode is valid UTF-8; the streaming decoder's concatenated
 * output equals the one-shot decode (both skip_special values) and counts the same unknown ids, also for arbitrary
 * ids (negative, >= size).
 */
#include "fuzz.h"
#include "trellis/alloc.h"
#include "trellis/tokenizer.h"
#include "trellis/utf8.h"

#include <inttypes.h>

static char tok_path[700];

static const char *const fixed_texts[] = {
    "Hello, world! It's 2024.",
    "  two  spaces\n\n\ttab\r\n",
    "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xd1\x82\xd0\xb5\xd0\xba\xd1\x81\xd1\x82 \xf0\x9f\x99\x82",
    "cafe\xcc\x81 A\xcc\x8a",                      /* decomposed: NFC composes them */
    "<|user|>hi<|assistant|></think><think>\n<|im_start|>system\n<|endoftext|>[gMASK]<sop>",
    "",
};

/* Decode ids one-shot and streaming with both skip_special values; they must agree. */
static void check_decode(const tr_tokenizer *t, const int32_t *ids, size_t n, int expect_known)
{
    for (int skip = 0; skip <= 1; skip++) {
        char *text = NULL;
        size_t len = 0, unknown = 0;
        tr_error err;
        int rc = tr_tokenizer_decode(t, ids, n, skip, &text, &len, &unknown, &err);
        FUZZ_ASSERT(rc == TR_OK, "decode: %s", err.text);
        FUZZ_ASSERT(text[len] == '\0', "decode result not NUL-terminated");
        FUZZ_ASSERT(tr_utf8_invalid_at((const uint8_t *)text, len) == len, "decode produced invalid UTF-8");
        size_t want_unknown = 0;
        for (size_t i = 0; i < n; i++)
            want_unknown += ids[i] < 0 || (uint32_t)ids[i] >= tr_tokenizer_size(t);
        FUZZ_ASSERT(unknown >= want_unknown, "unknown %zu < %zu ids outside [0, size)", unknown, want_unknown);
        if (expect_known)
            FUZZ_ASSERT(unknown == 0, "%zu ids of encode's output have no token", unknown);

        tr_detok *d = NULL;
        rc = tr_detok_new(t, skip, &d, &err);
        FUZZ_ASSERT(rc == TR_OK, "detok_new: %s", err.text);
        size_t pos = 0;
        for (size_t i = 0; i <= n; i++) {
            const char *piece;
            size_t plen;
            rc = i < n ? tr_detok_push(d, ids[i], &piece, &plen) : tr_detok_finish(d, &piece, &plen);
            FUZZ_ASSERT(rc == TR_OK, "detok push/finish %d", rc);
            FUZZ_ASSERT(tr_utf8_invalid_at((const uint8_t *)piece, plen) == plen, "stream piece %zu not UTF-8", i);
            FUZZ_ASSERT(pos + plen <= len && !memcmp(text + pos, piece, plen),
                        "stream differs from the one-shot decode at byte %zu (id %zu)", pos, i);
            pos += plen;
        }
        FUZZ_ASSERT(pos == len, "stream gave %zu bytes, one-shot %zu", pos, len);
        FUZZ_ASSERT(tr_detok_unknown(d) == unknown, "stream unknown %zu, one-shot %zu", tr_detok_unknown(d), unknown);
        tr_detok_free(d);
        tr_dealloc(text);
    }
}

static void check_text(const tr_tokenizer *t, const char *s, size_t n)
{
    size_t bad = tr_utf8_invalid_at((const uint8_t *)s, n);
    for (int special = 0; special <= 1; special++) {
        int32_t *ids = NULL;
        size_t nid = 0;
        tr_error err;
        tr_error_clear(&err);
        int rc = tr_tokenizer_encode(t, s, n, special, "fuzz-text", &ids, &nid, &err);
        if (bad < n) {
            char want[64];
            snprintf(want, sizeof want, "invalid UTF-8 at byte %zu", bad);
            FUZZ_ASSERT(rc == TR_E_UTF8 && strstr(err.text, want) && !strncmp(err.text, "fuzz-text: ", 11),
                        "invalid UTF-8 at %zu: rc %d, %s", bad, rc, err.text);
            FUZZ_ASSERT(ids == NULL && nid == 0, "ids returned on failure");
            return;
        }
        if (rc == TR_E_TOKENIZER) {   /* a fuzzed regex that PCRE2 gives up on */
            FUZZ_ASSERT(ids == NULL && strstr(err.text, "pre-tokenizer"), "encode failure: %s", err.text);
            continue;
        }
        FUZZ_ASSERT(rc == TR_OK, "valid UTF-8 did not encode: %s", err.text);
        FUZZ_ASSERT(ids != NULL, "ids NULL on success");
        for (size_t i = 0; i < nid; i++)
            FUZZ_ASSERT(ids[i] >= 0 && (uint32_t)ids[i] < tr_tokenizer_size(t), "id %" PRId32 " outside [0, %u)",
                        ids[i], tr_tokenizer_size(t));
        check_decode(t, ids, nid, 1);
        tr_dealloc(ids);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT)
        return 0;
    if (!tok_path[0])
        fuzz_path(tok_path, sizeof tok_path, fuzz_tmpdir("tokenizer"), "tokenizer.json");
    fuzz_bytes in = {data, size, 0};
    size_t jlen = fuzz_u32(&in);
    if (jlen > fuzz_left(&in))
        jlen = fuzz_left(&in);
    const uint8_t *json = data + in.pos;
    const uint8_t *tail = json + jlen;
    size_t tail_len = fuzz_left(&in) - jlen;
    fuzz_write_file(tok_path, json, jlen);

    tr_tokenizer *t = NULL;
    tr_error err;
    tr_error_clear(&err);
    int rc = tr_tokenizer_load(tok_path, &t, &err);
    if (getenv("TRELLIS_FUZZ_VERBOSE"))
        fprintf(stderr, "tokenizer: %s\n", rc == TR_OK ? "loaded" : err.text);
    if (rc != TR_OK) {
        FUZZ_ASSERT(t == NULL, "handle on failure");
        FUZZ_ASSERT(err.code == rc && (rc == TR_E_TOKENIZER || rc == TR_E_IO || rc == TR_E_NOMEM), "load: rc %d: %s",
                    rc, err.text);
        FUZZ_ASSERT(!strncmp(err.text, tok_path, strlen(tok_path)) && strstr(err.text, tr_status_name(rc)),
                    "message: %s", err.text);
        return 0;
    }
    FUZZ_ASSERT(t != NULL, "no handle");

    for (size_t i = 0; i < sizeof fixed_texts / sizeof fixed_texts[0]; i++)
        check_text(t, fixed_texts[i], strlen(fixed_texts[i]));
    check_text(t, (const char *)tail, tail_len);

    /* the tail as arbitrary ids (at most 4096) */
    size_t nid = tail_len / 4 > 4096 ? 4096 : tail_len / 4;
    int32_t *ids = malloc((nid ? nid : 1) * sizeof *ids);
    FUZZ_SETUP_CHECK(ids != NULL, "out of memory");
    for (size_t i = 0; i < nid; i++) {
        uint32_t u;
        memcpy(&u, tail + 4 * i, 4);
        /* mostly ids near the vocab, some anywhere (negative, huge) */
        ids[i] = (u >> 30) == 3 ? (int32_t)u : (int32_t)(u % (tr_tokenizer_size(t) + 8));
    }
    check_decode(t, ids, nid, 0);
    free(ids);

    static const char *const queries[] = {"<|endoftext|>", "<|user|>", "a", "\xc4\xa0", "", "[gMASK]"};
    for (size_t i = 0; i < sizeof queries / sizeof queries[0]; i++) {
        int32_t id = tr_tokenizer_token_id(t, queries[i]);
        FUZZ_ASSERT(id >= -1 && (id < 0 || (uint32_t)id < tr_tokenizer_size(t)), "token_id(%s) = %d", queries[i],
                    id);
        if (id >= 0)
            (void)tr_tokenizer_is_special(t, id);
    }
    FUZZ_ASSERT(!tr_tokenizer_is_special(t, -1) && !tr_tokenizer_is_special(t, (int32_t)tr_tokenizer_size(t)),
                "is_special outside the vocab");
    json_t *summary = tr_tokenizer_summary(t);
    FUZZ_ASSERT(summary != NULL, "summary");
    json_decref(summary);
    tr_tokenizer_free(t);
    return 0;
}
