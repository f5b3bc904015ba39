/*
 * tokenizer_internal.h — the private layout of tr_tokenizer and the helpers shared by engine/tokenizer_*.c
 * (loading, tables, pre-tokenizer, BPE, encode, decode).  See include/trellis/tokenizer.h for the public contract
 * and ENGINE.md §4 for the rules.
 */
#ifndef TRELLIS_ENGINE_TOKENIZER_INTERNAL_H
#define TRELLIS_ENGINE_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include "trellis/status.h"
#include "trellis/tokenizer.h"

#include <jansson.h>
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

/* Ids above this are refused at load: the per-id tables are dense. */
#define TOK_MAX_ID ((1u << 26) - 1)

/* Per-id kind flags. */
enum { TOK_IN_VOCAB = 1, TOK_ADDED = 2, TOK_SPECIAL = 4 };

/* A byte range of one of the tokenizer's pools. */
typedef struct tok_str {
    uint32_t off, len;
} tok_str;

/* A growable byte pool (strings are stored back to back, no NULs). */
typedef struct tok_pool {
    char *data;
    size_t len, cap;
} tok_pool;

/* One added token (ENGINE.md §4 "added_tokens"). */
typedef struct tok_added {
    int32_t id;
    char *content;                /* NUL-terminated */
    uint32_t len;
    char *match;                  /* what is searched for: content, NFC-normalized when normalized and NFC is on */
    uint32_t match_len;
    uint8_t special, lstrip, rstrip, single_word, normalized;
} tok_added;

/* The added tokens searched in one pass, grouped by first byte, longest first within a group. */
typedef struct tok_matcher {
    uint32_t *order;              /* indexes into tr_tokenizer.added */
    uint32_t n;
    uint32_t first[257];          /* tokens starting with byte b: order[first[b] .. first[b + 1]) */
} tok_matcher;

/* (left id, right id) → rank and merged id. */
typedef struct tok_merge {
    int32_t a, b;                 /* a = -1: empty slot */
    uint32_t rank;
    int32_t id;
} tok_merge;

struct tr_tokenizer {
    char *path;
    uint32_t size;                /* 1 + max id */
    uint32_t n_vocab, n_merges, n_added;
    uint8_t *kind;                /* [size] TOK_* flags */
    tok_str *vocab_str;           /* [size] vocab string (byte-level form) in vpool */
    tok_str *dec;                 /* [size] decoded bytes in dpool (vocab: inverse byte map; added: content) */
    tok_pool vpool, dpool;
    int32_t *vhash;               /* vocab string → id, open addressing (-1 empty) */
    uint32_t vmask;
    tok_merge *mhash;             /* merges, open addressing */
    uint32_t mmask;
    int32_t byte_id[256];         /* vocab id of each byte's symbol, -1 when missing */
    int32_t unk_id;               /* -1 without unk_token */
    char *unk_token;
    int ignore_merges, fuse_unk;
    tok_added *added;             /* [n_added] in file order */
    tok_matcher raw, norm;        /* normalized: false / normalized: true tokens */
    int nfc;                      /* normalizer: NFC (else identity) */
    char *pattern;                /* the pre-tokenizer regex */
    const char *pattern_source;   /* "Split" or "ByteLevel" (GPT-2 pattern) */
    pcre2_general_context *gctx;
    pcre2_code *re;
    int jit;                      /* 1 when PCRE2 JIT compiled the pattern */
};

/* ---- tables (tokenizer_tables.c) ---------------------------------------------------------------------------- */

/* The GPT-2 byte → code point table and its inverse (-1 for code points outside the table). */
uint32_t tok_byte_cp(uint8_t b);
int tok_cp_byte(uint32_t cp);
/* Append the byte-level form of bytes[0..n) (UTF-8 of each byte's code point) to out; returns its length.  out must
 * hold 2·n bytes. */
size_t tok_byte_level(const uint8_t *bytes, size_t n, char *out);
/* The code point of the valid UTF-8 sequence s[0..len). */
uint32_t tok_utf8_cp(const uint8_t *s, int len);

int tok_pool_add(tok_pool *p, const void *data, size_t n, tok_str *out);
uint64_t tok_hash_bytes(const void *data, size_t n);
/* Vocab string → id (-1 if absent).  tok_vocab_insert returns the id already stored under s, or -1 after
 * inserting id (whose vocab_str must already be set). */
int32_t tok_vocab_find(const tr_tokenizer *t, const char *s, size_t n);
int32_t tok_vocab_insert(tr_tokenizer *t, int32_t id);
int tok_vocab_table_init(tr_tokenizer *t, size_t n);
/* Merge table: tok_merge_find returns NULL when (a, b) has no rank.  insert keeps the first rank of a pair. */
int tok_merge_table_init(tr_tokenizer *t, size_t n);
const tok_merge *tok_merge_find(const tr_tokenizer *t, int32_t a, int32_t b);
void tok_merge_insert(tr_tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t id);

/* ---- loading (tokenizer_load.c, tokenizer_options.c) ----------------------------------------------------------- */

/* Error naming a JSON path inside t->path: "<path>: TR_E_TOKENIZER: <jpath>: <detail>". */
int tok_fail(const tr_tokenizer *t, tr_error *err, const char *jpath, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Refuse members of obj outside allowed (NULL-terminated); jpath names obj ("" for the top level). */
int tok_check_keys(const tr_tokenizer *t, const json_t *obj, const char *jpath, const char *const *allowed,
                   tr_error *err);
/* Optional boolean member (missing or null → dflt); errors name jpath.key. */
int tok_get_bool(const tr_tokenizer *t, const json_t *obj, const char *jpath, const char *key, int dflt, int *out,
                 tr_error *err);
int tok_load_normalizer(tr_tokenizer *t, const json_t *v, tr_error *err);
int tok_load_pre_tokenizer(tr_tokenizer *t, const json_t *v, tr_error *err);
int tok_load_decoder(tr_tokenizer *t, const json_t *v, tr_error *err);
int tok_load_added(tr_tokenizer *t, const json_t *v, tr_error *err);
/* Build t->raw and t->norm (after the normalizer is known). */
int tok_build_matchers(tr_tokenizer *t, tr_error *err);

/* ---- encode pieces (tokenizer_encode.c, tokenizer_bpe.c, tokenizer_pretok.c) ---------------------------------- */

/* A growable id list. */
typedef struct tok_ids {
    int32_t *v;
    size_t n, cap;
} tok_ids;
int tok_ids_push(tok_ids *l, int32_t id);

/* Per-call BPE state: symbol arrays, the pair heap and the piece cache. */
typedef struct tok_bpe tok_bpe;
tok_bpe *tok_bpe_new(void);
void tok_bpe_free(tok_bpe *b);
/* BPE of one pre-tokenized piece (raw UTF-8 bytes), ids appended to out.  TR_OK or TR_E_NOMEM. */
int tok_bpe_piece(const tr_tokenizer *t, tok_bpe *b, const uint8_t *piece, size_t n, tok_ids *out);

/* NFC (libutf8proc) of the valid UTF-8 s[0..n) into a new tr_malloc'ed buffer.  TR_OK or TR_E_NOMEM. */
int tok_nfc(const char *s, size_t n, char **out, size_t *out_len);
/* Compile t->pattern (PCRE2_UTF | PCRE2_UCP, JIT when available); jpath names the pattern for errors. */
int tok_compile_pattern(tr_tokenizer *t, const char *jpath, tr_error *err);
/* Split s[0..n) (valid UTF-8) into pieces (matches and gaps, ENGINE.md §4 step 3) and BPE each. */
int tok_pretokenize(const tr_tokenizer *t, pcre2_match_data *md, tok_bpe *b, const char *s, size_t n,
                    tok_ids *out, tr_error *err);

/* ---- UTF-8 (tokenizer_decode.c) ------------------------------------------------------------------------------- */

/* Classify the sequence at s[0..n), n ≥ 1: > 0 = a valid sequence of that length; < 0 = an ill-formed maximal
 * subpart of length -r (emit U+FFFD); 0 = a valid but incomplete prefix running to the end of s. */
int tok_utf8_scan(const uint8_t *s, size_t n);

#endif
