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

#endif
