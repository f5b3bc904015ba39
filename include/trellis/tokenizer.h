/*
 * tokenizer.h — the byte-level BPE tokenizer of ENGINE.md §4: loading tokenizer.json (strictly: any unsupported
 * type or option is a load error naming its JSON path), encoding text to ids, one-shot and streaming decoding.
 *
 * A loaded tokenizer is immutable: encode/decode may run concurrently on one tokenizer from several threads (each
 * call keeps its own scratch state and piece cache).  Every allocation goes through alloc.h; errors are a return
 * code plus a tr_error "<where>: <CODE>: <detail>".
 */
#ifndef TRELLIS_TOKENIZER_H
#define TRELLIS_TOKENIZER_H

#include "trellis/status.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tr_tokenizer tr_tokenizer;

/* Load and check path (ENGINE.md §4 "Fields read").  Errors: TR_E_IO "<path>: not found" / unreadable,
 * TR_E_TOKENIZER naming the JSON path ("<path>: TR_E_TOKENIZER: pre_tokenizer: type \"Metaspace\" is not
 * supported"), TR_E_NOMEM. */
int tr_tokenizer_load(const char *path, tr_tokenizer **out, tr_error *err);
void tr_tokenizer_free(tr_tokenizer *t);

/* 1 + the largest id of the vocab and the added tokens. */
uint32_t tr_tokenizer_size(const tr_tokenizer *t);

/* Encode text[0..len) (need not be NUL-terminated) per ENGINE.md §4.  parse_special = 0 leaves added tokens with
 * special: true unmatched.  Invalid UTF-8 → TR_E_UTF8 "<where>: invalid UTF-8 at byte N" (where = the caller's name
 * for the text: a file, "-p", "messages[2]").  *ids is tr_malloc'ed (never NULL on success, also for n = 0); free
 * with tr_dealloc. */
int tr_tokenizer_encode(const tr_tokenizer *t, const char *text, size_t len, int parse_special, const char *where,
                        int32_t **ids, size_t *n, tr_error *err);

/* One-shot decode (ENGINE.md §4): added tokens emit their content (omitted when skip_special and special), other
 * ids map back through the byte-level table; invalid UTF-8 becomes U+FFFD per maximal ill-formed subpart.  Ids that
 * are negative, ≥ size, or inside [0, size) without a token decode to nothing and are counted in *n_unknown (may be
 * NULL).  *text is tr_malloc'ed and NUL-terminated (*len excludes the NUL; the text itself may hold NUL bytes). */
int tr_tokenizer_decode(const tr_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
                        size_t *len, size_t *n_unknown, tr_error *err);

/* The id of an added token with this content, else of the vocab string, else -1. */
int32_t tr_tokenizer_token_id(const tr_tokenizer *t, const char *content);
/* 1 if id is an added token with special: true. */
int tr_tokenizer_is_special(const tr_tokenizer *t, int32_t id);

/* Streaming decode (ENGINE.md §4): push one id, get the bytes that became complete — valid UTF-8, with U+FFFD for
 * sequences proven invalid; up to 3 bytes of an incomplete trailing sequence are held back.  finish flushes them
 * (as U+FFFD).  The concatenation of every output equals tr_tokenizer_decode of the same ids.  The returned pointer
 * stays valid until the next call on d.  push/finish return TR_OK or TR_E_NOMEM (then *out is empty). */
typedef struct tr_detok tr_detok;
int tr_detok_new(const tr_tokenizer *t, int skip_special, tr_detok **out, tr_error *err);
int tr_detok_push(tr_detok *d, int32_t id, const char **out, size_t *len);
int tr_detok_finish(tr_detok *d, const char **out, size_t *len);
/* Ids pushed so far that decoded to nothing because they have no token (see tr_tokenizer_decode). */
size_t tr_detok_unknown(const tr_detok *d);
void tr_detok_free(tr_detok *d);

/* A JSON summary for `trellis inspect --tokenizer` (docs/schemas.md "tokenizer summary"); NULL on allocation
 * failure. */
json_t *tr_tokenizer_summary(const tr_tokenizer *t);

#endif
