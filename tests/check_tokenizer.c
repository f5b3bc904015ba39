/*
 * check_tokenizer.c — the tokenizer, chat templates and stop sets of ENGINE.md §4, and the `trellis tokenize` /
 * `trellis detokenize` contracts of ENGINE.md §8.
 *
 * Oracle cases (ENGINE.md §7 acceptance 7) come from golden/oracle, or from TR_ORACLE_DIR when set: every tokenizer
 * named by the folder's index.json "tokenizers", each with its "<stem>_cases.json".  The unit tests build small
 * tokenizer.json documents (256 byte symbols with ids = byte values, so expected ids read as bytes) in a temporary
 * directory.
 */
#include "cli_run.h"
#include "tests.h"
#include "trellis/alloc.h"
#include "trellis/chat.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The Qwen-style split pattern of the oracle tokenizers. */
static const char PATTERN[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
                              "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static const char *oracle_dir(void)
{
    const char *d = getenv("TR_ORACLE_DIR");
    return d && *d ? d : "golden/oracle";
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- building small tokenizer.json documents ----------------------------------------------------------------- */

/* The GPT-2 byte → code point table, written out independently of the engine (ENGINE.md §4 step 4). */
static uint32_t byte_cp(uint8_t b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
        return b;
    uint32_t k = 0;
    for (unsigned x = 0; x < b; x++)
        k += !((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE);
    return 0x100 + k;
}

/* Byte-level form of the bytes of s (static buffer, 4 slots). */
static const char *sym(const char *s)
{
    static char bufs[4][256];
    static int slot;
    char *o = bufs[slot++ % 4];
    size_t k = 0;
    for (const uint8_t *p = (const uint8_t *)s; *p; p++) {
        uint32_t cp = byte_cp(*p);
        if (cp < 0x80)
            o[k++] = (char)cp;
        else {
            o[k++] = (char)(0xC0 | (cp >> 6));
            o[k++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    o[k] = '\0';
    return o;
}

static json_t *model_of(json_t *doc) { return json_object_get(doc, "model"); }

static json_t *base_doc(void)
{
    json_t *vocab = json_object();
    for (int b = 1; b < 256; b++) {
        char s[2] = {(char)b, 0};
        json_object_set_new(vocab, sym(s), json_integer(b));
    }
    json_object_set_new(vocab, "\xC4\x80", json_integer(0));   /* byte 0x00 → U+0100 */
    json_t *model = json_pack("{s:s, s:n, s:n, s:n, s:n, s:b, s:b, s:b, s:o, s:[]}", "type", "BPE", "dropout",
                              "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", 0,
                              "byte_fallback", 0, "ignore_merges", 0, "vocab", vocab, "merges");
    json_t *pre = json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}", "type", "Sequence",
                            "pretokenizers", "type", "Split", "pattern", "Regex", PATTERN, "behavior", "Isolated",
                            "invert", 0, "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0,
                            "use_regex", 0);
    json_t *dec = json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 1,
                            "use_regex", 1);
    json_t *doc = json_pack("{s:s, s:n, s:n, s:[], s:n, s:o, s:n, s:o, s:o}", "version", "1.0", "truncation",
                            "padding", "added_tokens", "normalizer", "pre_tokenizer", pre, "post_processor",
                            "decoder", dec, "model", model);
    ck_assert_ptr_nonnull(doc);
    return doc;
}

/* Add the byte-level form of bytes to the vocab with the next free id (≥ 256); returns the id. */
static int32_t add_vocab(json_t *doc, const char *bytes)
{
    json_t *vocab = json_object_get(model_of(doc), "vocab");
    int32_t id = (int32_t)json_object_size(vocab);
    json_object_set_new(vocab, sym(bytes), json_integer(id));
    return id;
}

static void add_merge(json_t *doc, const char *a, const char *b)
{
    char m[600];
    snprintf(m, sizeof m, "%s %s", sym(a), sym(b));
    json_array_append_new(json_object_get(model_of(doc), "merges"), json_string(m));
}

enum { SPECIAL = 1, LSTRIP = 2, RSTRIP = 4, SINGLE = 8, NORMALIZED = 16 };

static void add_added(json_t *doc, int id, const char *content, int flags)
{
    json_array_append_new(json_object_get(doc, "added_tokens"),
                          json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", id, "content", content,
                                    "single_word", !!(flags & SINGLE), "lstrip", !!(flags & LSTRIP), "rstrip",
                                    !!(flags & RSTRIP), "normalized", !!(flags & NORMALIZED), "special",
                                    !!(flags & SPECIAL)));
}

static const char *write_doc(const json_t *doc)
{
    static int serial;
    char name[64], *text = json_dumps(doc, JSON_COMPACT);
    snprintf(name, sizeof name, "tok%d.json", serial++);
    const char *path = tr_test_write(tr_test_tmpdir(), name, text, strlen(text));
    free(text);
    return path;
}

static tr_tokenizer *load_ok(json_t *doc)
{
    tr_tokenizer *t = NULL;
    tr_error err;
    int rc = tr_tokenizer_load(write_doc(doc), &t, &err);
    ck_assert_msg(rc == TR_OK, "%s", err.text);
    json_decref(doc);
    return t;
}

/* The load fails with TR_E_TOKENIZER and "<path>: TR_E_TOKENIZER: <needle>…". */
static void load_err(json_t *doc, const char *needle)
{
    const char *path = write_doc(doc);
    json_decref(doc);
    tr_tokenizer *t = NULL;
    tr_error err;
    int rc = tr_tokenizer_load(path, &t, &err);
    ck_assert_msg(rc == TR_E_TOKENIZER && t == NULL, "expected an error containing '%s', got %d %s", needle, rc,
                  rc ? err.text : "");
    char want[4600];
    snprintf(want, sizeof want, "%s: TR_E_TOKENIZER: %s", path, needle);
    ck_assert_msg(strncmp(err.text, want, strlen(want)) == 0, "got '%s', want prefix '%s'", err.text, want);
}

/* ---- encode helpers ------------------------------------------------------------------------------------------ */

static void enc_check(const tr_tokenizer *t, const char *text, int parse_special, const int32_t *want, size_t n_want,
                      int line)
{
    int32_t *ids;
    size_t n;
    tr_error err;
    ck_assert_msg(tr_tokenizer_encode(t, text, strlen(text), parse_special, "-p", &ids, &n, &err) == TR_OK,
                  "line %d: %s", line, err.text);
    int same = n == n_want && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
    if (!same) {
        char got[1024] = "";
        for (size_t i = 0; i < n && strlen(got) < 1000; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%d", i ? "," : "", ids[i]);
        tr_dealloc(ids);
        ck_abort_msg("line %d: encode(\"%s\", %d) = [%s]", line, text, parse_special, got);
    }
    tr_dealloc(ids);
}

#define IDS(...) ((const int32_t[]){__VA_ARGS__}), sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t)
#define ENC(t, text, ps, ...) enc_check(t, text, ps, IDS(__VA_ARGS__), __LINE__)

/* One-shot decode as a tr_malloc'ed string. */
static char *dec(const tr_tokenizer *t, const int32_t *ids, size_t n, int skip, size_t *unknown)
{
    char *text;
    size_t len;
    tr_error err;
    ck_assert_msg(tr_tokenizer_decode(t, ids, n, skip, &text, &len, unknown, &err) == TR_OK, "%s", err.text);
    ck_assert_uint_eq(len, strlen(text));
    return text;
}

/* Streaming decode of ids, concatenated (tr_malloc'ed). */
static char *stream(const tr_tokenizer *t, const int32_t *ids, size_t n, int skip, size_t *len)
{
    tr_detok *d;
    tr_error err;
    ck_assert_msg(tr_detok_new(t, skip, &d, &err) == TR_OK, "%s", err.text);
    size_t cap = 64, k = 0;
    char *acc = tr_malloc(cap);
    for (size_t i = 0; i <= n; i++) {
        const char *o;
        size_t l;
        ck_assert_int_eq(i < n ? tr_detok_push(d, ids[i], &o, &l) : tr_detok_finish(d, &o, &l), TR_OK);
        while (k + l + 1 > cap)
            acc = tr_realloc(acc, cap *= 2);
        memcpy(acc + k, o, l);
        k += l;
    }
    acc[k] = '\0';
    tr_detok_free(d);
    *len = k;
    return acc;
}

/* ---- oracle cases (ENGINE.md §7 acceptance 7) ---------------------------------------------------------------- */

typedef struct case_stats {
    size_t cases, enc_bad, dec_bad, stream_bad, bytes;
    double enc_s;
    char first_bad[256];
} case_stats;

static int32_t *case_ids(const json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    int32_t *v = tr_malloc((*n + 1) * sizeof *v);
    for (size_t i = 0; i < *n; i++)
        v[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return v;
}

static void check_case(const tr_tokenizer *t, const json_t *c, size_t i, case_stats *st)
{
    const json_t *text = json_object_get(c, "text"), *decoded = json_object_get(c, "decoded");
    size_t n_want, n, len, slen;
    int32_t *want = case_ids(json_object_get(c, "ids"), &n_want), *ids;
    tr_error err;
    double t0 = now_s();
    ck_assert_msg(tr_tokenizer_encode(t, json_string_value(text), json_string_length(text), 1, "case", &ids, &n,
                                      &err) == TR_OK, "case %zu: %s", i, err.text);
    st->enc_s += now_s() - t0;
    st->bytes += json_string_length(text);
    int enc_ok = n == n_want && (n == 0 || !memcmp(ids, want, n * sizeof *ids));
    char *out;
    ck_assert(tr_tokenizer_decode(t, want, n_want, 0, &out, &len, NULL, &err) == TR_OK);
    int dec_ok = len == json_string_length(decoded) && !memcmp(out, json_string_value(decoded), len);
    char *s = stream(t, want, n_want, 0, &slen);
    int stream_ok = slen == json_string_length(decoded) && !memcmp(s, json_string_value(decoded), slen);
    if ((!enc_ok || !dec_ok || !stream_ok) && !st->first_bad[0])
        snprintf(st->first_bad, sizeof st->first_bad, "case %zu: encode %s, decode %s, stream %s", i,
                 enc_ok ? "ok" : "differs", dec_ok ? "ok" : "differs", stream_ok ? "ok" : "differs");
    st->enc_bad += !enc_ok, st->dec_bad += !dec_ok, st->stream_bad += !stream_ok, st->cases++;
    tr_dealloc(want);
    tr_dealloc(ids);
    tr_dealloc(out);
    tr_dealloc(s);
}

static void check_tokenizer_file(const char *dir, const char *name, case_stats *st)
{
    char tok[4200], cases[4200], stem[256];
    snprintf(tok, sizeof tok, "%s/%s", dir, name);
    snprintf(stem, sizeof stem, "%.*s", (int)(strlen(name) > 5 ? strlen(name) - 5 : 0), name);   /* minus .json */
    snprintf(cases, sizeof cases, "%s/%s_cases.json", dir, stem);
    json_t *doc;
    tr_error err;
    ck_assert_msg(tr_json_load_object(cases, TR_E_INPUT, &doc, &err) == TR_OK, "%s", err.text);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "tokenizer")), name);
    ck_assert_msg(json_is_false(json_object_get(doc, "add_special_tokens")), "%s: add_special_tokens", cases);
    tr_tokenizer *t;
    ck_assert_msg(tr_tokenizer_load(tok, &t, &err) == TR_OK, "%s", err.text);
    const json_t *list = json_object_get(doc, "cases");
    ck_assert_uint_gt(json_array_size(list), 0);
    for (size_t i = 0; i < json_array_size(list); i++)
        check_case(t, json_array_get(list, i), i, st);
    tr_tokenizer_free(t);
    json_decref(doc);
}

START_TEST(test_oracle_cases)
{
    char index[4200];
    snprintf(index, sizeof index, "%s/index.json", oracle_dir());
    json_t *idx;
    tr_error err;
    ck_assert_msg(tr_json_load_object(index, TR_E_INPUT, &idx, &err) == TR_OK, "%s", err.text);
    const json_t *toks = json_object_get(idx, "tokenizers");
    ck_assert_uint_gt(json_array_size(toks), 0);
    case_stats st = {0};
    for (size_t i = 0; i < json_array_size(toks); i++) {
        case_stats one = {0};
        check_tokenizer_file(oracle_dir(), json_string_value(json_array_get(toks, i)), &one);
        ck_assert_msg(!one.enc_bad && !one.dec_bad && !one.stream_bad, "%s: %zu/%zu/%zu of %zu cases differ; %s",
                      json_string_value(json_array_get(toks, i)), one.enc_bad, one.dec_bad, one.stream_bad,
                      one.cases, one.first_bad);
        st.cases += one.cases, st.bytes += one.bytes, st.enc_s += one.enc_s;
    }
    fprintf(stderr, "tokenizer: %zu oracle cases, %zu bytes encoded in %.1f ms\n", st.cases, st.bytes,
            1e3 * st.enc_s);
    if (!tr_test_under_valgrind())
        ck_assert_msg(st.enc_s < 1.0, "encoding %zu bytes took %.3f s", st.bytes, st.enc_s);
    json_decref(idx);
}
END_TEST

/* ---- loading ------------------------------------------------------------------------------------------------- */

static json_t *with_pre(json_t *doc, json_t *pre)
{
    json_object_set_new(doc, "pre_tokenizer", pre);
    return doc;
}

static json_t *with_model(json_t *doc, const char *key, json_t *v)
{
    json_object_set_new(model_of(doc), key, v);
    return doc;
}

static json_t *without_byte(json_t *doc, uint8_t b)
{
    char s[2] = {(char)b, 0};
    json_object_del(json_object_get(model_of(doc), "vocab"), sym(s));
    return doc;
}

static json_t *split_seq(const char *behavior, int invert, json_t *pattern, int use_regex)
{
    return json_pack("{s:s, s:[{s:s, s:o, s:s, s:b}, {s:s, s:b, s:b, s:b}]}", "type", "Sequence", "pretokenizers",
                     "type", "Split", "pattern", pattern, "behavior", behavior, "invert", invert, "type",
                     "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0, "use_regex", use_regex);
}

START_TEST(test_load_errors)
{
    load_err(with_pre(base_doc(), json_pack("{s:s, s:s, s:s}", "type", "Metaspace", "replacement", "_",
                                           "prepend_scheme", "always")),
             "pre_tokenizer: type \"Metaspace\" is not supported");
    load_err(with_pre(base_doc(), json_null()), "pre_tokenizer: null is not supported");
    load_err(with_pre(base_doc(), split_seq("Removed", 0, json_pack("{s:s}", "Regex", "a"), 0)),
             "pre_tokenizer.pretokenizers[0]: behavior: \"Removed\" is not supported");
    load_err(with_pre(base_doc(), split_seq("Isolated", 1, json_pack("{s:s}", "Regex", "a"), 0)),
             "pre_tokenizer.pretokenizers[0]: invert: true is not supported");
    load_err(with_pre(base_doc(), split_seq("Isolated", 0, json_pack("{s:s}", "String", " "), 0)),
             "pre_tokenizer.pretokenizers[0].pattern: only {\"Regex\"");
    load_err(with_pre(base_doc(), split_seq("Isolated", 0, json_pack("{s:s}", "Regex", "(a"), 0)),
             "pre_tokenizer.pretokenizers[0].pattern.Regex: cannot compile at offset 2");
    load_err(with_pre(base_doc(), split_seq("Isolated", 0, json_pack("{s:s}", "Regex", "a"), 1)),
             "pre_tokenizer.pretokenizers[1]: use_regex: true is not supported here");
    load_err(with_pre(base_doc(), json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 1,
                                           "trim_offsets", 0, "use_regex", 1)),
             "pre_tokenizer: add_prefix_space: true is not supported");
    load_err(with_pre(base_doc(), json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0,
                                           "trim_offsets", 0, "use_regex", 0)),
             "pre_tokenizer: use_regex: false is not supported here");
    load_err(with_pre(base_doc(), json_pack("{s:s, s:[{s:s}]}", "type", "Sequence", "pretokenizers", "type",
                                           "Digits")),
             "pre_tokenizer.pretokenizers: expected [Split, ByteLevel]");
    load_err(with_model(base_doc(), "byte_fallback", json_true()), "model: byte_fallback: true is not supported");
    load_err(with_model(base_doc(), "type", json_string("WordPiece")),
             "model: type \"WordPiece\" is not supported");
    load_err(with_model(base_doc(), "dropout", json_real(0.1)), "model: dropout: only null is supported");
    load_err(with_model(base_doc(), "continuing_subword_prefix", json_string("##")),
             "model: continuing_subword_prefix: only null or \"\" is supported");
    load_err(with_model(base_doc(), "end_of_word_suffix", json_string("</w>")),
             "model: end_of_word_suffix: only null or \"\" is supported");
    load_err(with_model(base_doc(), "max_input_chars", json_integer(5)), "model.max_input_chars: option not supported");
    load_err(with_model(base_doc(), "unk_token", json_string("<unk>")), "model.unk_token: \"<unk>\" is not in");
    json_t *doc = base_doc();
    json_object_set_new(doc, "frob", json_true());
    load_err(doc, "frob: option not supported");
    doc = base_doc();
    json_object_set_new(doc, "normalizer", json_pack("{s:s}", "type", "NFKC"));
    load_err(doc, "normalizer: type \"NFKC\" is not supported");
    doc = base_doc();
    json_object_set_new(doc, "normalizer", json_pack("{s:s, s:[{s:s}, {s:s}]}", "type", "Sequence", "normalizers",
                                                     "type", "NFC", "type", "Lowercase"));
    load_err(doc, "normalizer.normalizers[1]: type \"Lowercase\" is not supported");
    doc = base_doc();
    json_object_set_new(doc, "decoder", json_pack("{s:s}", "type", "WordPiece"));
    load_err(doc, "decoder: type \"WordPiece\" is not supported");
    doc = base_doc();
    json_object_set_new(doc, "decoder", json_null());
    load_err(doc, "decoder: null is not supported");
}
END_TEST

START_TEST(test_load_errors_vocab)
{
    json_t *doc = base_doc();
    add_merge(doc, "z", "zz");
    load_err(doc, "model.merges[0]: part \"zz\" is not in the vocab");
    doc = base_doc();
    add_merge(doc, "a", "b");
    load_err(doc, "model.merges[0]: concatenation \"ab\" is not in the vocab");
    doc = base_doc();
    add_vocab(doc, "ab");
    json_array_append_new(json_object_get(model_of(doc), "merges"), json_string("ab"));
    load_err(doc, "model.merges[0]: \"ab\" is not two parts separated by one space");
    doc = base_doc();
    json_array_append_new(json_object_get(model_of(doc), "merges"), json_integer(3));
    load_err(doc, "model.merges[0]: not a \"a b\" string or an [a, b] pair");
    load_err(without_byte(base_doc(), 'q'), "model.vocab: byte symbol \"q\" (byte 0x71) is missing and there is no "
                                            "unk_token");
    doc = base_doc();
    json_object_set_new(json_object_get(model_of(doc), "vocab"), "dup", json_integer(5));
    load_err(doc, "model.vocab: id 5 is used by");
    doc = base_doc();
    json_object_set_new(json_object_get(model_of(doc), "vocab"), "neg", json_integer(-1));
    load_err(doc, "model.vocab[\"neg\"]: id -1 is out of range");
    doc = base_doc();
    add_added(doc, 5, "<x>", SPECIAL);
    load_err(doc, "added_tokens[0]: id 5 is \"");
    doc = base_doc();
    add_added(doc, 300, "<x>", SPECIAL);
    add_added(doc, 301, "<x>", SPECIAL);
    load_err(doc, "added_tokens[1]: content \"<x>\" duplicates added_tokens[0]");
    doc = base_doc();
    add_added(doc, 300, "<x>", SPECIAL);
    add_added(doc, 300, "<y>", SPECIAL);
    load_err(doc, "added_tokens[1]: id 300 is used by an earlier added token");
    doc = base_doc();
    add_added(doc, 300, "", SPECIAL);
    load_err(doc, "added_tokens[0]: content: required non-empty string missing");
    doc = base_doc();
    json_array_append_new(json_object_get(doc, "added_tokens"),
                          json_pack("{s:i, s:s, s:b}", "id", 300, "content", "<x>", "frob", 1));
    load_err(doc, "added_tokens[0].frob: option not supported");
    doc = base_doc();
    json_object_del(doc, "model");
    load_err(doc, "model: required object missing");
}
END_TEST

START_TEST(test_load_file_errors)
{
    tr_tokenizer *t = (tr_tokenizer *)1;
    tr_error err;
    char path[4200];
    snprintf(path, sizeof path, "%s/no/such/tokenizer.json", tr_test_tmpdir());
    ck_assert_int_eq(tr_tokenizer_load(path, &t, &err), TR_E_IO);
    ck_assert_ptr_null(t);
    char want[4400];
    snprintf(want, sizeof want, "%s: TR_E_IO: not found", path);
    ck_assert_str_eq(err.text, want);
    const char *bad = tr_test_write(tr_test_tmpdir(), "syntax.json", "{\"model\": ", 10);
    ck_assert_int_eq(tr_tokenizer_load(bad, &t, &err), TR_E_TOKENIZER);
    ck_assert_msg(strstr(err.text, "syntax.json: TR_E_TOKENIZER: line 1"), "%s", err.text);
}
END_TEST

/* Merges as "a b" strings or [a, b] pairs, sizes, lookups and the summary. */
START_TEST(test_load_ok)
{
    json_t *doc = base_doc();
    int32_t ab = add_vocab(doc, "ab");
    add_merge(doc, "a", "b");
    add_added(doc, 1000, "<s>", SPECIAL);
    add_added(doc, 300, "word", 0);
    json_object_set_new(doc, "normalizer", json_pack("{s:s, s:[{s:s}]}", "type", "Sequence", "normalizers", "type",
                                                     "NFC"));
    tr_tokenizer *t = load_ok(doc);
    ck_assert_uint_eq(tr_tokenizer_size(t), 1001);
    ck_assert_int_eq(tr_tokenizer_token_id(t, "<s>"), 1000);
    ck_assert_int_eq(tr_tokenizer_token_id(t, "word"), 300);
    ck_assert_int_eq(tr_tokenizer_token_id(t, "ab"), ab);
    ck_assert_int_eq(tr_tokenizer_token_id(t, "nope"), -1);
    ck_assert(tr_tokenizer_is_special(t, 1000) && !tr_tokenizer_is_special(t, 300) && !tr_tokenizer_is_special(t, 5));
    ck_assert(!tr_tokenizer_is_special(t, -1) && !tr_tokenizer_is_special(t, 5000));
    ENC(t, "ab<s>", 1, ab, 1000);
    json_t *s = tr_tokenizer_summary(t);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(json_integer_value(json_object_get(s, "size")), 1001);
    ck_assert_int_eq(json_integer_value(json_object_get(s, "vocab")), 257);
    ck_assert_int_eq(json_integer_value(json_object_get(s, "merges")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(s, "added_tokens")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(s, "special_count")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(s, "normalizer")), "NFC");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(s, "pre_tokenizer"), "pattern")), PATTERN);
    json_t *sp = json_array_get(json_object_get(s, "special_tokens"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(sp, "content")), "<s>");
    json_decref(s);
    tr_tokenizer_free(t);

    /* [a, b] pairs; a lone ByteLevel pre-tokenizer uses the GPT-2 pattern (digits in runs, ' ?' prefixes) */
    doc = base_doc();
    ab = add_vocab(doc, "ab");
    json_array_append_new(json_object_get(model_of(doc), "merges"), json_pack("[s, s]", "a", "b"));
    with_pre(doc, json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1,
                            "use_regex", 1));
    t = load_ok(doc);
    ENC(t, "ab 12", 1, ab, ' ', '1', '2');
    s = tr_tokenizer_summary(t);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(s, "pre_tokenizer"), "type")), "ByteLevel");
    ck_assert(json_is_null(json_object_get(s, "normalizer")));
    json_decref(s);
    tr_tokenizer_free(t);
}
END_TEST

/* ---- BPE ----------------------------------------------------------------------------------------------------- */

START_TEST(test_bpe)
{
    json_t *doc = base_doc();
    int32_t he = add_vocab(doc, "he"), ll = add_vocab(doc, "ll"), hell = add_vocab(doc, "hell"),
            hello = add_vocab(doc, "hello");
    add_merge(doc, "h", "e");
    add_merge(doc, "l", "l");
    add_merge(doc, "he", "ll");
    add_merge(doc, "hell", "o");
    tr_tokenizer *t = load_ok(doc);
    ENC(t, "hello", 1, hello);
    ENC(t, "hello hello", 1, hello, ' ', hello);
    ENC(t, "hell", 1, hell);
    ENC(t, "hel", 1, he, 'l');
    ENC(t, "yell", 1, 'y', 'e', ll);
    ENC(t, "Hello", 1, 'H', 'e', ll, 'o');
    enc_check(t, "", 1, NULL, 0, __LINE__);
    tr_tokenizer_free(t);

    /* ties: the leftmost pair first */
    doc = base_doc();
    int32_t aa = add_vocab(doc, "aa");
    add_merge(doc, "a", "a");
    t = load_ok(doc);
    ENC(t, "aaa", 1, aa, 'a');
    ENC(t, "aaaaa", 1, aa, aa, 'a');
    tr_tokenizer_free(t);

    /* the lowest rank wins; a repeated merge keeps its first rank */
    doc = base_doc();
    int32_t ab = add_vocab(doc, "ab"), bc = add_vocab(doc, "bc");
    add_merge(doc, "b", "c");
    add_merge(doc, "a", "b");
    add_merge(doc, "b", "c");
    t = load_ok(doc);
    ENC(t, "abc", 1, 'a', bc);
    tr_tokenizer_free(t);
    doc = base_doc();
    ab = add_vocab(doc, "ab");
    add_vocab(doc, "bc");
    add_merge(doc, "a", "b");
    add_merge(doc, "b", "c");
    t = load_ok(doc);
    ENC(t, "abc", 1, ab, 'c');
    tr_tokenizer_free(t);

    /* ignore_merges: a piece whose whole symbol string is in the vocab is emitted directly */
    doc = base_doc();
    int32_t xyz = add_vocab(doc, " xyz");
    t = load_ok(doc);
    ENC(t, "a xyz", 1, 'a', ' ', 'x', 'y', 'z');
    tr_tokenizer_free(t);
    doc = base_doc();
    xyz = add_vocab(doc, " xyz");
    with_model(doc, "ignore_merges", json_true());
    t = load_ok(doc);
    ENC(t, "a xyz", 1, 'a', xyz);
    tr_tokenizer_free(t);
}
END_TEST

/* A vocab without some byte symbols needs unk_token; fuse_unk folds a run of unknown symbols into one. */
START_TEST(test_unk)
{
    json_t *doc = without_byte(without_byte(base_doc(), 'q'), 0xFF);
    const int32_t unk = 300;
    json_object_set_new(json_object_get(model_of(doc), "vocab"), "<unk>", json_integer(unk));
    with_model(doc, "unk_token", json_string("<unk>"));
    tr_tokenizer *t = load_ok(json_deep_copy(doc));
    ENC(t, "aqqb", 1, 'a', unk, unk, 'b');
    ENC(t, "q", 1, unk);
    tr_tokenizer_free(t);
    with_model(doc, "fuse_unk", json_true());
    t = load_ok(doc);
    ENC(t, "aqqb", 1, 'a', unk, 'b');
    ENC(t, "qaq", 1, unk, 'a', unk);
    tr_tokenizer_free(t);
}
END_TEST

/* ---- added tokens -------------------------------------------------------------------------------------------- */

START_TEST(test_added_strip_and_words)
{
    json_t *doc = base_doc();
    add_added(doc, 300, "<L>", SPECIAL | LSTRIP);
    add_added(doc, 301, "<R>", SPECIAL | RSTRIP);
    add_added(doc, 302, "<B>", SPECIAL | LSTRIP | RSTRIP);
    add_added(doc, 303, "sw", SINGLE);
    tr_tokenizer *t = load_ok(doc);
    ENC(t, "a  <L>b", 1, 'a', 300, 'b');
    ENC(t, "a<R> \t b", 1, 'a', 301, 'b');
    ENC(t, "a \xE3\x80\x80<L>", 1, 'a', 300);                 /* U+3000 is whitespace */
    ENC(t, "x <B> y", 1, 'x', 302, 'y');
    ENC(t, "<R> \t<L>", 1, 301, 300);                          /* lstrip stops at the previous match */
    ENC(t, "x sw y", 1, 'x', ' ', 303, ' ', 'y');
    ENC(t, "sw", 1, 303);
    ENC(t, "sw-", 1, 303, '-');
    ENC(t, "xsw y", 1, 'x', 's', 'w', ' ', 'y');
    ENC(t, "sw_", 1, 's', 'w', '_');
    ENC(t, "sw9", 1, 's', 'w', '9');
    ENC(t, "\xCC\xB0sw", 1, 0xCC, 0xB0, 's', 'w');            /* a combining mark is a word character */
    ENC(t, "\xC3\xA9sw", 1, 0xC3, 0xA9, 's', 'w');            /* é */
    ENC(t, "<L>", 0, '<', 'L', '>');                           /* parse_special false */
    ENC(t, "sw <L>", 0, 303, ' ', '<', 'L', '>');              /* non-special tokens still match */
    tr_tokenizer_free(t);
}
END_TEST

START_TEST(test_added_matching)
{
    json_t *doc = base_doc();
    add_added(doc, 304, "<s>", SPECIAL);
    add_added(doc, 305, "<s>x", SPECIAL);
    add_added(doc, 306, "<qq>", SPECIAL);
    add_added(doc, 307, "qq", 0);
    tr_tokenizer *t = load_ok(doc);
    ENC(t, "<s>x", 1, 305);                                    /* longest at the same start */
    ENC(t, "<s>y", 1, 304, 'y');
    ENC(t, "a<s>x<s>", 1, 'a', 305, 304);                      /* leftmost first */
    ENC(t, "<qq>", 1, 306);
    ENC(t, "qq", 1, 307);
    ENC(t, "qq", 0, 307);
    ENC(t, "<qq>", 0, '<', 'q', 'q', '>');                    /* a refused special token hides the tokens inside */
    ENC(t, "<s>", 0, '<', 's', '>');
    tr_tokenizer_free(t);
}
END_TEST

START_TEST(test_normalizer)
{
    static const char decomposed[] = "e\xCC\x81", composed[] = "\xC3\xA9";
    tr_tokenizer *t = load_ok(base_doc());
    ENC(t, decomposed, 1, 'e', 0xCC, 0x81);                    /* no normalizer: bytes as given */
    tr_tokenizer_free(t);
    json_t *doc = base_doc();
    json_object_set_new(doc, "normalizer", json_pack("{s:s}", "type", "NFC"));
    add_added(doc, 400, "x\xC3\xA9", NORMALIZED);              /* matched in the normalized text */
    add_added(doc, 401, "y\xCC\x81", 0);                       /* not normalized: matched in the raw text */
    add_added(doc, 402, "z\xCC\x81", NORMALIZED);              /* its content is normalized too */
    t = load_ok(doc);
    ENC(t, decomposed, 1, 0xC3, 0xA9);
    ENC(t, composed, 1, 0xC3, 0xA9);
    ENC(t, "ax" "e\xCC\x81", 1, 'a', 400);
    ENC(t, "y\xCC\x81", 1, 401);
    ENC(t, "\xC3\xBD", 1, 0xC3, 0xBD);                         /* ý is not the raw token */
    ENC(t, "z\xCC\x81", 1, 402);
    ENC(t, "\xC5\xBA", 1, 402);                                /* ź == NFC(z + U+0301) */
    tr_tokenizer_free(t);
}
END_TEST

START_TEST(test_invalid_utf8)
{
    static const struct {
        const char *s;
        size_t len, at;
    } cases[] = {
        {"ab\xFF" "c", 4, 2}, {"\xC0\xAF", 2, 0}, {"abc\xE2\x82", 5, 3}, {"x\xED\xA0\x80", 4, 1},
        {"\xF4\x90\x80\x80", 4, 0}, {"ok\x80", 3, 2},
    };
    tr_tokenizer *t = load_ok(base_doc());
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int32_t *ids = (int32_t *)1;
        size_t n = 7;
        tr_error err;
        ck_assert_int_eq(tr_tokenizer_encode(t, cases[i].s, cases[i].len, 1, "prompt.txt", &ids, &n, &err),
                         TR_E_UTF8);
        ck_assert(ids == NULL && n == 0);
        char want[128];
        snprintf(want, sizeof want, "prompt.txt: TR_E_UTF8: invalid UTF-8 at byte %zu", cases[i].at);
        ck_assert_str_eq(err.text, want);
    }
    /* text need not be NUL-terminated, and may hold NUL */
    int32_t *ids;
    size_t n;
    tr_error err;
    ck_assert_int_eq(tr_tokenizer_encode(t, "a\0bXYZ", 3, 1, "x", &ids, &n, &err), TR_OK);
    ck_assert(n == 3 && ids[0] == 'a' && ids[1] == 0 && ids[2] == 'b');
    tr_dealloc(ids);
    tr_tokenizer_free(t);
}
END_TEST

/* ---- decoding ------------------------------------------------------------------------------------------------ */

START_TEST(test_decode)
{
    json_t *doc = base_doc();
    int32_t euro2 = add_vocab(doc, "\xE2\x82");
    add_added(doc, 300, "<s>", SPECIAL);
    add_added(doc, 302, "<w>", 0);
    tr_tokenizer *t = load_ok(doc);
    size_t unknown = 99;
    char *s = dec(t, IDS('h', 300, 'i', 302), 0, &unknown);
    ck_assert_str_eq(s, "h<s>i<w>");
    ck_assert_uint_eq(unknown, 0);
    tr_dealloc(s);
    s = dec(t, IDS('h', 300, 'i', 302), 1, NULL);
    ck_assert_str_eq(s, "hi<w>");
    tr_dealloc(s);
    s = dec(t, IDS('h', 5000, -3, 301, 303, 'i'), 0, &unknown);   /* ≥ size, negative, a gap in the ids */
    ck_assert_str_eq(s, "hi");
    ck_assert_uint_eq(unknown, 4);
    tr_dealloc(s);
    static const struct {
        int32_t ids[5];
        size_t n;
        const char *want;
    } bytes[] = {
        {{0xE2, 0x82, 0xAC}, 3, "\xE2\x82\xAC"},
        {{0, 0, 0}, 3, "\xE2\x82\xAC"},                                 /* ids[0] = euro2, ids[1] = 0xAC below */
        {{0xFF}, 1, "\xEF\xBF\xBD"},
        {{0xE2, 0x82, 'A'}, 3, "\xEF\xBF\xBD" "A"},                      /* one U+FFFD per maximal subpart */
        {{0xE0, 0x80}, 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},
        {{0xED, 0xA0, 0x80}, 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
        {{0xF4, 0x90, 0x80, 0x80}, 4, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
        {{0xF0, 0x9F, 0x98}, 3, "\xEF\xBF\xBD"},                          /* incomplete at the end */
        {{'a', 0xF0, 0x9F, 0x98, 0x80}, 5, "a\xF0\x9F\x98\x80"},
    };
    for (size_t i = 0; i < sizeof bytes / sizeof *bytes; i++) {
        int32_t ids[5];
        memcpy(ids, bytes[i].ids, sizeof ids);
        if (i == 1)
            ids[0] = euro2, ids[1] = 0xAC, ids[2] = 'x';
        size_t n = i == 1 ? 2 : bytes[i].n, len;
        s = dec(t, ids, n, 0, NULL);
        ck_assert_msg(strcmp(s, bytes[i].want) == 0, "bytes case %zu", i);
        char *st = stream(t, ids, n, 0, &len);
        ck_assert_msg(strcmp(st, bytes[i].want) == 0, "stream case %zu", i);
        tr_dealloc(s);
        tr_dealloc(st);
    }
    tr_tokenizer_free(t);
}
END_TEST

/* Streaming: bytes come out when a sequence completes or is proven invalid; finish flushes the tail. */
START_TEST(test_stream)
{
    json_t *doc = base_doc();
    int32_t euro2 = add_vocab(doc, "\xE2\x82"), tail = add_vocab(doc, "\xAC" "ab\xF0");
    tr_tokenizer *t = load_ok(doc);
    tr_detok *d;
    tr_error err;
    ck_assert_int_eq(tr_detok_new(t, 0, &d, &err), TR_OK);
    const char *o;
    size_t l;
    ck_assert_int_eq(tr_detok_push(d, 0xE2, &o, &l), TR_OK);
    ck_assert_uint_eq(l, 0);
    ck_assert_int_eq(tr_detok_push(d, 0x82, &o, &l), TR_OK);
    ck_assert_uint_eq(l, 0);
    ck_assert_int_eq(tr_detok_push(d, 0xAC, &o, &l), TR_OK);
    ck_assert(l == 3 && !memcmp(o, "\xE2\x82\xAC", 3));
    ck_assert_int_eq(tr_detok_push(d, euro2, &o, &l), TR_OK);
    ck_assert_uint_eq(l, 0);
    ck_assert_int_eq(tr_detok_push(d, tail, &o, &l), TR_OK);           /* completes €, "ab", holds F0 */
    ck_assert(l == 5 && !memcmp(o, "\xE2\x82\xAC" "ab", 5));
    ck_assert_int_eq(tr_detok_push(d, 0x9F, &o, &l), TR_OK);
    ck_assert_uint_eq(l, 0);
    ck_assert_int_eq(tr_detok_push(d, 'z', &o, &l), TR_OK);            /* 'z' proves F0 9F invalid */
    ck_assert(l == 4 && !memcmp(o, "\xEF\xBF\xBD" "z", 4));
    ck_assert_int_eq(tr_detok_push(d, 7000, &o, &l), TR_OK);
    ck_assert_uint_eq(l, 0);
    ck_assert_int_eq(tr_detok_push(d, 0xC3, &o, &l), TR_OK);
    ck_assert_int_eq(tr_detok_finish(d, &o, &l), TR_OK);
    ck_assert(l == 3 && !memcmp(o, "\xEF\xBF\xBD", 3));
    ck_assert_uint_eq(tr_detok_unknown(d), 1);
    tr_detok_free(d);

    /* random sequences over awkward bytes: the stream always equals the one-shot decode */
    static const int32_t alphabet[] = {'A', 0x80, 0xBF, 0xC2, 0xC3, 0xE0, 0xE2, 0xED, 0xF0, 0xF4, 0xFF, 0x9F, 0xA0,
                                       0x90, 0x82, 0xAC, 0, 0};
    int32_t al[sizeof alphabet / sizeof *alphabet];
    memcpy(al, alphabet, sizeof al);
    al[16] = euro2, al[17] = tail;
    uint64_t rng = 12345;
    size_t bad = 0;
    int reps = tr_test_under_valgrind() ? 300 : 3000;
    for (int rep = 0; rep < reps; rep++) {
        int32_t ids[12];
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        size_t n = 1 + (rng >> 60) % 12, len;
        for (size_t i = 0; i < n; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            ids[i] = al[(rng >> 33) % (sizeof al / sizeof *al)];
        }
        char *a = dec(t, ids, n, 0, NULL), *b = stream(t, ids, n, 0, &len);
        bad += strcmp(a, b) != 0;
        tr_dealloc(a);
        tr_dealloc(b);
    }
    ck_assert_uint_eq(bad, 0);
    tr_tokenizer_free(t);
}
END_TEST

/* ---- allocation failures -------------------------------------------------------------------------------------- */

/* A small tokenizer: unk_token instead of byte symbols, one merge, NFC, two added tokens. */
static const char SMALL[] =
    "{\"added_tokens\": [{\"id\": 9, \"content\": \"<s>\", \"special\": true, \"normalized\": false},"
    " {\"id\": 10, \"content\": \"\\u00e9\", \"special\": false, \"normalized\": true}],"
    " \"normalizer\": {\"type\": \"NFC\"},"
    " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true},"
    " \"decoder\": {\"type\": \"ByteLevel\"},"
    " \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"vocab\": {\"<unk>\": 0, \"a\": 1, \"b\": 2,"
    " \"ab\": 3, \"\\u0120\": 4}, \"merges\": [\"a b\"]}}";

static int small_run(const char *path, int *fired)
{
    tr_tokenizer *t = NULL;
    tr_detok *d = NULL;
    int32_t *ids = NULL;
    char *text = NULL;
    size_t n = 0, len;
    tr_error err;
    int rc = tr_tokenizer_load(path, &t, &err);
    if (rc == TR_OK)
        rc = tr_tokenizer_encode(t, "ab <s>e\xCC\x81 abba", 14, 1, "x", &ids, &n, &err);
    if (rc == TR_OK)
        rc = tr_tokenizer_decode(t, ids, n, 0, &text, &len, NULL, &err);
    if (rc == TR_OK)
        rc = tr_detok_new(t, 0, &d, &err);
    const char *o;
    for (size_t i = 0; rc == TR_OK && i < n; i++)
        rc = tr_detok_push(d, ids[i], &o, &len);
    json_t *s = rc == TR_OK ? tr_tokenizer_summary(t) : NULL;
    if (rc == TR_OK && !s)
        rc = TR_E_NOMEM;
    *fired = tr_alloc_fired();
    json_decref(s);
    tr_detok_free(d);
    tr_dealloc(text);
    tr_dealloc(ids);
    tr_tokenizer_free(t);
    return rc;
}

START_TEST(test_alloc_failures)
{
    const char *path = tr_test_write(tr_test_tmpdir(), "small.json", SMALL, strlen(SMALL));
    unsigned long k;
    for (k = 1;; k++) {
        tr_alloc_fail_at(k);
        int fired, rc = small_run(path, &fired);
        tr_alloc_fail_at(0);
        if (!fired) {
            ck_assert_int_eq(rc, TR_OK);
            break;
        }
        ck_assert_msg(rc == TR_E_NOMEM, "allocation point %lu: rc %d", k, rc);
    }
    fprintf(stderr, "tokenizer: %lu allocation points checked\n", k);
    ck_assert_uint_gt(k, 20);
    /* and the result itself */
    tr_tokenizer *t;
    tr_error err;
    ck_assert_int_eq(tr_tokenizer_load(path, &t, &err), TR_OK);
    ENC(t, "ab <s>e\xCC\x81 ba", 1, 3, 4, 9, 10, 4, 2, 1);
    ENC(t, "abq", 1, 3, 0);
    tr_tokenizer_free(t);
}
END_TEST

/* ---- chat templates ------------------------------------------------------------------------------------------ */

static void render_eq(tr_chat_style style, const tr_chat_msg *m, size_t n, int gen, int think, const char *want)
{
    char *out;
    size_t len;
    tr_error err;
    ck_assert_msg(tr_chat_render(style, m, n, gen, think, &out, &len, &err) == TR_OK, "%s", err.text);
    ck_assert_uint_eq(len, strlen(out));
    ck_assert_str_eq(out, want);
    tr_dealloc(out);
}

#define MSGS(...) ((const tr_chat_msg[]){__VA_ARGS__}), sizeof((const tr_chat_msg[]){__VA_ARGS__}) / sizeof(tr_chat_msg)

/* The six golden renderings of ENGINE.md §4. */
START_TEST(test_chat_golden)
{
    render_eq(TR_CHAT_GLM47, MSGS({"system", "S", NULL}, {"user", "hi", NULL}), 1, 1,
              "[gMASK]<sop><|system|>S<|user|>hi<|assistant|><think>");
    render_eq(TR_CHAT_GLM47, MSGS({"user", "a", NULL}, {"assistant", "<think>r</think>b", NULL}, {"user", "c", NULL}),
              1, 1, "[gMASK]<sop><|user|>a<|assistant|></think>b<|user|>c<|assistant|><think>");
    render_eq(TR_CHAT_GLM47, MSGS({"user", "a", NULL}, {"assistant", "<think>\nr\n</think>\n\nb", NULL}), 0, 1,
              "[gMASK]<sop><|user|>a<|assistant|><think>r</think>b");
    render_eq(TR_CHAT_CHATML, MSGS({"system", "S", NULL}, {"user", "hi", NULL}), 1, 1,
              "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    render_eq(TR_CHAT_CHATML,
              MSGS({"user", "a", NULL}, {"assistant", "<think>r</think>b", NULL}, {"user", "c", NULL}), 1, 1,
              "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n"
              "<|im_start|>assistant\n");
    render_eq(TR_CHAT_CHATML, MSGS({"user", "a", NULL}, {"assistant", "<think>\nr\n</think>\n\nb", NULL}), 0, 1,
              "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\n\nb<|im_end|>\n");
}
END_TEST

START_TEST(test_chat_more)
{
    /* generation prompt with thinking off; strip() with Python isspace (U+3000, \x1c) */
    render_eq(TR_CHAT_GLM47, MSGS({"user", "q", NULL}), 1, 0, "[gMASK]<sop><|user|>q<|assistant|></think>");
    render_eq(TR_CHAT_CHATML, MSGS({"user", "q", NULL}), 1, 0,
              "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
    render_eq(TR_CHAT_GLM47, MSGS({"user", "q", NULL}, {"assistant", "\xE3\x80\x80 ans\x1c\n", NULL}), 0, 1,
              "[gMASK]<sop><|user|>q<|assistant|></think>ans");
    /* reasoning_content given explicitly: used as is, the content is not split */
    render_eq(TR_CHAT_GLM47, MSGS({"user", "q", NULL}, {"assistant", " A ", " R "}), 0, 1,
              "[gMASK]<sop><|user|>q<|assistant|><think>R</think>A");
    render_eq(TR_CHAT_CHATML, MSGS({"user", "q", NULL}, {"assistant", "\nA", "\nR\n"}), 0, 1,
              "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nR\n</think>\n\nA<|im_end|>\n");
    /* ChatML: an assistant message after the last query that is not last and has no reasoning: no think block */
    render_eq(TR_CHAT_CHATML, MSGS({"user", "q", NULL}, {"assistant", "A", NULL}, {"assistant", "B", NULL}), 0, 1,
              "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
              "<|im_start|>assistant\n<think>\n\n</think>\n\nB<|im_end|>\n");
    /* several <think> blocks: reasoning after the last <think> before the first </think> */
    render_eq(TR_CHAT_GLM47, MSGS({"assistant", "<think>x<think>\ny\n</think>m</think>\nz", NULL}), 0, 1,
              "[gMASK]<sop><|assistant|><think>y</think>z");
}
END_TEST

START_TEST(test_chat_tools)
{
    render_eq(TR_CHAT_GLM47,
              MSGS({"user", "q", NULL}, {"assistant", "c", NULL}, {"tool", "r1", NULL}, {"tool", "r2", NULL},
                   {"user", "u", NULL}),
              1, 1,
              "[gMASK]<sop><|user|>q<|assistant|></think>c<|observation|><tool_response>r1</tool_response>"
              "<tool_response>r2</tool_response><|user|>u<|assistant|><think>");
    /* ChatML: tool runs share one user block; a user message wrapped in <tool_response> is not the last query */
    render_eq(TR_CHAT_CHATML,
              MSGS({"user", "q", NULL}, {"assistant", "<think>t</think>c", NULL}, {"tool", "r1", NULL},
                   {"tool", "r2", NULL}, {"user", "<tool_response>x</tool_response>", NULL},
                   {"assistant", "<think>s</think>d", NULL}),
              0, 1,
              "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nt\n</think>\n\nc<|im_end|>\n"
              "<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response>"
              "<|im_end|>\n<|im_start|>user\n<tool_response>x</tool_response><|im_end|>\n"
              "<|im_start|>assistant\n<think>\ns\n</think>\n\nd<|im_end|>\n");
    /* system messages after the first are plain blocks */
    render_eq(TR_CHAT_CHATML, MSGS({"user", "q", NULL}, {"system", "S2", NULL}), 0, 1,
              "<|im_start|>user\nq<|im_end|>\n<|im_start|>system\nS2<|im_end|>\n");
    char *out = (char *)1;
    size_t len;
    tr_error err;
    ck_assert_int_eq(tr_chat_render(TR_CHAT_GLM47, MSGS({"user", "q", NULL}, {"robot", "x", NULL}), 1, 1, &out,
                                    &len, &err),
                     TR_E_INPUT);
    ck_assert_ptr_null(out);
    ck_assert_str_eq(err.text, "messages[1].role: TR_E_INPUT: \"robot\" is not one of system, user, assistant, tool");
    ck_assert_int_eq(tr_chat_render(TR_CHAT_CHATML, MSGS({"user", NULL, NULL}), 1, 1, &out, &len, &err), TR_E_INPUT);
    ck_assert_str_eq(err.text, "messages[0].content: TR_E_INPUT: missing");
    ck_assert_int_eq(tr_chat_style_for("glm4_moe_lite"), TR_CHAT_GLM47);
    ck_assert_int_eq(tr_chat_style_for("qwen3_moe"), TR_CHAT_CHATML);
    ck_assert_int_eq(tr_chat_style_for("llama"), -1);
}
END_TEST

START_TEST(test_chat_messages_file)
{
    const char *dir = tr_test_tmpdir();
    static const char ok[] = "[{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \"hi\"},"
                             " {\"role\": \"assistant\", \"content\": \"b\", \"reasoning_content\": \"r\"},"
                             " {\"role\": \"user\", \"content\": \"c\", \"reasoning_content\": null}]";
    const char *path = tr_test_write(dir, "msgs.json", ok, strlen(ok));
    tr_chat_msg *m;
    size_t n;
    char *storage;
    tr_error err;
    ck_assert_msg(tr_chat_messages_load(path, &m, &n, &storage, &err) == TR_OK, "%s", err.text);
    ck_assert_uint_eq(n, 4);
    ck_assert_ptr_eq((void *)m, (void *)storage);
    ck_assert(!strcmp(m[0].role, "system") && !strcmp(m[1].content, "hi") && !strcmp(m[2].reasoning_content, "r"));
    ck_assert(m[0].reasoning_content == NULL && m[3].reasoning_content == NULL);
    render_eq(TR_CHAT_GLM47, m, n, 1, 1, "[gMASK]<sop><|system|>S<|user|>hi<|assistant|></think>b<|user|>c"
                                        "<|assistant|><think>");
    tr_dealloc(storage);
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"{\"role\": \"user\"}", "top level is not a JSON array of messages"},
        {"[]", "no messages"},
        {"[{\"role\": \"user\", \"content\": \"a\"}, 3]", "messages[1]: not an object"},
        {"[{\"role\": \"user\"}]", "messages[0].content: required field missing"},
        {"[{\"content\": \"x\"}]", "messages[0].role: required field missing"},
        {"[{\"role\": \"user\", \"content\": [1]}]", "messages[0].content: not a string"},
        {"[{\"role\": \"user\", \"content\": \"x\", \"name\": \"n\"}]", "messages[0].name: unknown field"},
        {"[{\"role\": \"assistant\", \"content\": \"x\", \"tool_calls\": []}]", "messages[0].tool_calls: tool"},
        {"[{\"role\": ", "line 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        path = tr_test_write(dir, "bad_msgs.json", bad[i].text, strlen(bad[i].text));
        int rc = tr_chat_messages_load(path, &m, &n, &storage, &err);
        ck_assert_msg(rc == TR_E_INPUT || rc == TR_E_UNSUPPORTED, "case %zu: rc %d", i, rc);
        ck_assert_ptr_null(storage);
        ck_assert_msg(strstr(err.text, bad[i].want) && strstr(err.text, "bad_msgs.json: "), "case %zu: %s", i,
                      err.text);
    }
    ck_assert_int_eq(tr_chat_messages_load("/nonexistent/m.json", &m, &n, &storage, &err), TR_E_IO);
    ck_assert_str_eq(err.text, "/nonexistent/m.json: TR_E_IO: not found");
}
END_TEST

/* ---- stop sets ----------------------------------------------------------------------------------------------- */

/* The id of an added token read straight from the tokenizer file (independent of the engine's lookup). */
static int32_t file_added_id(const char *path, const char *content)
{
    json_t *doc;
    tr_error err;
    ck_assert_msg(tr_json_load_object(path, TR_E_INPUT, &doc, &err) == TR_OK, "%s", err.text);
    int32_t id = -1;
    const json_t *list = json_object_get(doc, "added_tokens");
    for (size_t i = 0; i < json_array_size(list); i++)
        if (!strcmp(json_string_value(json_object_get(json_array_get(list, i), "content")), content))
            id = (int32_t)json_integer_value(json_object_get(json_array_get(list, i), "id"));
    json_decref(doc);
    return id;
}

static int cmp32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Expected set: the given ids plus the named tokens present in the file, sorted, unique. */
static size_t expected_stop(const char *path, const char *const *names, size_t n_names, const int32_t *given,
                            size_t n_given, int32_t *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n_given; i++)
        out[k++] = given[i];
    for (size_t i = 0; i < n_names; i++) {
        int32_t id = file_added_id(path, names[i]);
        if (id >= 0)
            out[k++] = id;
    }
    qsort(out, k, sizeof *out, cmp32);
    size_t u = 0;
    for (size_t i = 0; i < k; i++)
        if (!u || out[u - 1] != out[i])
            out[u++] = out[i];
    return u;
}

static void stop_eq(tr_chat_style style, const char *path, int templ, const char *const *names, size_t n_names)
{
    tr_tokenizer *t;
    tr_error err;
    ck_assert_msg(tr_tokenizer_load(path, &t, &err) == TR_OK, "%s", err.text);
    const int32_t eos[] = {7, 5}, extra[] = {5, 99};
    const int32_t given[] = {7, 5, 5, 99};
    int32_t want[16], *ids;
    size_t n_want = expected_stop(path, names, n_names, given, 4, want), n;
    ck_assert_int_eq(tr_chat_stop_ids(style, t, templ, eos, 2, extra, 2, &ids, &n, &err), TR_OK);
    ck_assert_uint_eq(n, n_want);
    ck_assert(!memcmp(ids, want, n * sizeof *ids));
    ck_assert_uint_gt(n, 3);   /* at least one of the names is in the oracle tokenizers */
    tr_dealloc(ids);
    /* no tokenizer: only the given ids */
    ck_assert_int_eq(tr_chat_stop_ids(style, NULL, templ, eos, 2, NULL, 0, &ids, &n, &err), TR_OK);
    ck_assert(n == 2 && ids[0] == 5 && ids[1] == 7);
    tr_dealloc(ids);
    tr_tokenizer_free(t);
}

START_TEST(test_stop_ids)
{
    static const char *const glm[] = {"<|endoftext|>", "<|user|>", "<|observation|>", "<|system|>"};
    static const char *const qwen[] = {"<|im_end|>", "<|endoftext|>"};
    stop_eq(TR_CHAT_GLM47, "golden/oracle/tokenizer_glm.json", 1, glm, 4);
    stop_eq(TR_CHAT_GLM47, "golden/oracle/tokenizer_glm.json", 0, glm, 3);
    stop_eq(TR_CHAT_CHATML, "golden/oracle/tokenizer_qwen.json", 1, qwen, 2);
}
END_TEST

/* ---- CLI (ENGINE.md §8) -------------------------------------------------------------------------------------- */

/* The first tokenizer of the oracle index and its first case. */
typedef struct cli_case {
    char tok[4200];
    json_t *doc;
    const json_t *c;
} cli_case;

static void cli_case_open(cli_case *cc)
{
    char index[4200], cases[4400];
    snprintf(index, sizeof index, "%s/index.json", oracle_dir());
    json_t *idx;
    tr_error err;
    ck_assert_msg(tr_json_load_object(index, TR_E_INPUT, &idx, &err) == TR_OK, "%s", err.text);
    const char *name = json_string_value(json_array_get(json_object_get(idx, "tokenizers"), 0));
    ck_assert_ptr_nonnull(name);
    snprintf(cc->tok, sizeof cc->tok, "%s/%s", oracle_dir(), name);
    snprintf(cases, sizeof cases, "%s/%.*s_cases.json", oracle_dir(), (int)strlen(name) - 5, name);
    json_decref(idx);
    ck_assert_msg(tr_json_load_object(cases, TR_E_INPUT, &cc->doc, &err) == TR_OK, "%s", err.text);
    cc->c = json_array_get(json_object_get(cc->doc, "cases"), 0);
}

/* "1,2,3" (or "[1,2,3]") of a JSON id array. */
static char *ids_line(const json_t *arr, int json)
{
    size_t n = json_array_size(arr), cap = 16 * n + 8, k = 0;
    char *s = malloc(cap);
    k += (size_t)snprintf(s, cap, "%s", json ? "[" : "");
    for (size_t i = 0; i < n; i++)
        k += (size_t)snprintf(s + k, cap - k, "%s%lld", i ? "," : "", (long long)json_integer_value(json_array_get(arr, i)));
    snprintf(s + k, cap - k, "%s", json ? "]" : "");
    return s;
}

static void expect_out(cli_result r, const char *want)
{
    ck_assert_msg(r.status == 0, "status %d: %s", r.status, r.err);
    ck_assert_msg(strcmp(r.out, want) == 0, "stdout differs (%zu vs %zu bytes)", strlen(r.out), strlen(want));
}

START_TEST(test_cli_round_trip)
{
    cli_case cc;
    cli_case_open(&cc);
    const json_t *text = json_object_get(cc.c, "text");
    const char *file = tr_test_write(tr_test_tmpdir(), "case.txt", json_string_value(text), json_string_length(text));
    char *line = ids_line(json_object_get(cc.c, "ids"), 0), *jline = ids_line(json_object_get(cc.c, "ids"), 1);
    char want[1 << 16];
    snprintf(want, sizeof want, "%s\n", line);
    cli_result r = cli_run("tokenize", "--tokenizer", cc.tok, "-f", file, NULL);
    expect_out(r, want);
    cli_result_free(&r);
    r = cli_run("tokenize", "--tokenizer", cc.tok, "-p", json_string_value(text), NULL);
    expect_out(r, want);
    cli_result_free(&r);
    snprintf(want, sizeof want, "%s\n", jline);
    r = cli_run("tokenize", "--tokenizer", cc.tok, "-f", file, "--json", NULL);
    expect_out(r, want);
    json_error_t jerr;
    json_t *arr = json_loads(r.out, 0, &jerr);
    ck_assert(json_is_array(arr) && json_equal(arr, json_object_get(cc.c, "ids")));
    json_decref(arr);
    cli_result_free(&r);
    r = cli_run("detokenize", "--tokenizer", cc.tok, "--ids", line, NULL);
    expect_out(r, json_string_value(json_object_get(cc.c, "decoded")));   /* exact bytes, no newline added */
    cli_result_free(&r);
    free(line);
    free(jline);
    json_decref(cc.doc);
}
END_TEST

START_TEST(test_cli_special_and_newline)
{
    cli_case cc;
    cli_case_open(&cc);
    tr_tokenizer *t;
    tr_error err;
    ck_assert_int_eq(tr_tokenizer_load(cc.tok, &t, &err), TR_OK);
    json_t *sum = tr_tokenizer_summary(t);
    const json_t *sp = json_array_get(json_object_get(sum, "special_tokens"), 0);
    ck_assert_ptr_nonnull(sp);
    char text[256], want[64];
    snprintf(text, sizeof text, "%shi", json_string_value(json_object_get(sp, "content")));
    cli_result r = cli_run("tokenize", "--tokenizer", cc.tok, "-p", text, NULL);
    snprintf(want, sizeof want, "%lld,", (long long)json_integer_value(json_object_get(sp, "id")));
    ck_assert_msg(r.status == 0 && strncmp(r.out, want, strlen(want)) == 0, "%.3000s", r.out);
    cli_result_free(&r);
    r = cli_run("tokenize", "--tokenizer", cc.tok, "-p", text, "--no-special", NULL);
    ck_assert_msg(r.status == 0 && strncmp(r.out, want, strlen(want)) != 0 && strchr(r.out, ','), "%.3000s", r.out);
    cli_result_free(&r);
    /* -f keeps a trailing newline */
    const char *file = tr_test_write(tr_test_tmpdir(), "nl.txt", "hello\n", 6);
    int32_t *ids;
    size_t n;
    ck_assert_int_eq(tr_tokenizer_encode(t, "hello\n", 6, 1, "x", &ids, &n, &err), TR_OK);
    char line[512] = "";
    for (size_t i = 0; i < n; i++)
        snprintf(line + strlen(line), sizeof line - strlen(line), "%s%d", i ? "," : "", ids[i]);
    strcat(line, "\n");
    tr_dealloc(ids);
    r = cli_run("tokenize", "--tokenizer", cc.tok, "-f", file, NULL);
    expect_out(r, line);
    cli_result_free(&r);
    r = cli_run("tokenize", "--tokenizer", cc.tok, "-p", "hello", NULL);
    ck_assert(r.status == 0 && strcmp(r.out, line) != 0);
    cli_result_free(&r);
    /* an empty text gives an empty line / array */
    r = cli_run("tokenize", "--tokenizer", cc.tok, "-p", "", "--json", NULL);
    expect_out(r, "[]\n");
    cli_result_free(&r);
    json_decref(sum);
    tr_tokenizer_free(t);
    json_decref(cc.doc);
}
END_TEST

static void expect_err(cli_result r, int status, const char *needle)
{
    ck_assert_msg(r.status == status, "status %d (want %d): %s", r.status, status, r.err);
    ck_assert_msg(strstr(r.err, needle), "stderr '%s' lacks '%s'", r.err, needle);
    ck_assert_msg(r.out[0] == '\0', "stdout not empty: %s", r.out);
}

START_TEST(test_cli_errors)
{
    cli_case cc;
    cli_case_open(&cc);
    const char *dir = tr_test_tmpdir();
    char missing[4200], want[4400];
    snprintf(missing, sizeof missing, "%s/models/x/tokenizer.json", dir);
    snprintf(want, sizeof want, "trellis tokenize: error: %s: TR_E_IO: not found", missing);
    cli_result r = cli_run("tokenize", "--tokenizer", missing, "-p", "x", NULL);
    expect_err(r, 2, want);
    cli_result_free(&r);
    const char *bad = tr_test_write(dir, "prompt.txt", "abc\xE2\x82 d", 7);
    snprintf(want, sizeof want, "trellis tokenize: error: %s: TR_E_UTF8: invalid UTF-8 at byte 3", bad);
    r = cli_run("tokenize", "--tokenizer", cc.tok, "-f", bad, NULL);
    expect_err(r, 2, want);
    cli_result_free(&r);
    r = cli_run("tokenize", "--tokenizer", cc.tok, "-p", "x\xFF", NULL);
    expect_err(r, 2, "trellis tokenize: error: -p: TR_E_UTF8: invalid UTF-8 at byte 1");
    cli_result_free(&r);
    json_t *doc = with_pre(base_doc(), json_pack("{s:s}", "type", "Metaspace"));
    const char *meta = write_doc(doc);
    json_decref(doc);
    r = cli_run("tokenize", "--tokenizer", meta, "-p", "x", NULL);
    expect_err(r, 2, "TR_E_TOKENIZER: pre_tokenizer: type \"Metaspace\" is not supported");
    cli_result_free(&r);
    r = cli_run("detokenize", "--tokenizer", meta, "--ids", "1", NULL);
    expect_err(r, 2, "pre_tokenizer: type \"Metaspace\" is not supported");
    cli_result_free(&r);
    r = cli_run("detokenize", "--tokenizer", cc.tok, "--ids", "1,99999999", NULL);
    expect_err(r, 2, "--ids: TR_E_TOKEN_ID: token id 99999999 at index 1 is out of range [0, ");
    cli_result_free(&r);
    r = cli_run("detokenize", "--tokenizer", cc.tok, "--ids", "1,x", NULL);
    expect_err(r, 2, "--ids: \"x\" at index 1 is not a token id");
    cli_result_free(&r);
    static const char *const usage[][8] = {
        {"tokenize", "--tokenizer", "t.json", NULL},
        {"tokenize", "--tokenizer", "t.json", "-p", "a", "-f", "b", NULL},
        {"tokenize", "-p", "a", NULL},
        {"tokenize", "--tokenizer", "t.json", "-p", NULL},
        {"tokenize", "--tokenizer", "t.json", "-p", "a", "--frob", NULL},
        {"detokenize", "--tokenizer", "t.json", NULL},
        {"detokenize", "--tokenizer", "t.json", "--ids", "1", "-p", "x", NULL},
    };
    for (size_t i = 0; i < sizeof usage / sizeof *usage; i++) {
        r = cli_run(usage[i][0], usage[i][1], usage[i][2], usage[i][3], usage[i][4], usage[i][5], usage[i][6], NULL);
        expect_err(r, 2, "see 'trellis ");
        cli_result_free(&r);
    }
    r = cli_run("tokenize", "--help", NULL);
    ck_assert(r.status == 0 && strstr(r.out, "Usage: trellis tokenize"));
    cli_result_free(&r);
    r = cli_run("detokenize", "--help", NULL);
    ck_assert(r.status == 0 && strstr(r.out, "Usage: trellis detokenize"));
    cli_result_free(&r);
    json_decref(cc.doc);
}
END_TEST

Suite *suite_tokenizer(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("tokenizer");
    tcase_set_timeout(tc, tr_test_under_valgrind() ? 300 : 30);
    tcase_add_test(tc, test_oracle_cases);
    tcase_add_test(tc, test_load_errors);
    tcase_add_test(tc, test_load_errors_vocab);
    tcase_add_test(tc, test_load_file_errors);
    tcase_add_test(tc, test_load_ok);
    tcase_add_test(tc, test_bpe);
    tcase_add_test(tc, test_unk);
    tcase_add_test(tc, test_added_strip_and_words);
    tcase_add_test(tc, test_added_matching);
    tcase_add_test(tc, test_normalizer);
    tcase_add_test(tc, test_invalid_utf8);
    tcase_add_test(tc, test_decode);
    tcase_add_test(tc, test_stream);
    tcase_add_test(tc, test_alloc_failures);
    suite_add_tcase(s, tc);
    TCase *chat = tcase_create("chat");
    tcase_add_test(chat, test_chat_golden);
    tcase_add_test(chat, test_chat_more);
    tcase_add_test(chat, test_chat_tools);
    tcase_add_test(chat, test_chat_messages_file);
    tcase_add_test(chat, test_stop_ids);
    suite_add_tcase(s, chat);
    TCase *cli = tcase_create("cli");
    tcase_set_timeout(cli, tr_test_under_valgrind() ? 300 : 30);
    tcase_add_test(cli, test_cli_round_trip);
    tcase_add_test(cli, test_cli_special_and_newline);
    tcase_add_test(cli, test_cli_errors);
    suite_add_tcase(s, cli);
    return s;
}
