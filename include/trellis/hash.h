/*
 * hash.h — SHA-256 through OpenSSL's EVP interface, for fixtures, captures and file integrity trailers.
 */
#ifndef TRELLIS_HASH_H
#define TRELLIS_HASH_H

#include "trellis/status.h"

#include <stddef.h>
#include <stdint.h>

/* SHA-256 of data[0..size) as 64 lowercase hex digits plus NUL.  Returns TR_OK or TR_E_INTERNAL. */
int tr_sha256_hex(const void *data, size_t size, char hex[65]);
/* SHA-256 of a whole file (mapped read-only). */
int tr_sha256_file_hex(const char *path, char hex[65], tr_error *err);

/* Incremental SHA-256 (e.g. of a file while it is written): init, any number of updates, then final (which
 * releases the context) or discard.  An update after a failure is ignored; the failure is reported by final. */
typedef struct tr_sha256 {
    void *ctx;                        /* EVP_MD_CTX * */
    int failed;
} tr_sha256;

/* TR_OK, or TR_E_NOMEM / TR_E_INTERNAL when OpenSSL cannot set up the context. */
int tr_sha256_init(tr_sha256 *h);
void tr_sha256_update(tr_sha256 *h, const void *data, size_t size);
/* Digest as 64 lowercase hex digits plus NUL; TR_E_INTERNAL if any step failed.  Releases the context. */
int tr_sha256_final_hex(tr_sha256 *h, char hex[65]);
void tr_sha256_discard(tr_sha256 *h);

#endif
