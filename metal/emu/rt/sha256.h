/*
 * sha256.h — SHA-256 for the emulator's content-hash cache keys (FIPS 180-4).  A private copy: metal/ depends only
 * on reference/ (HARNESS.md §1), and the project's SHA-256 lives in engine/ (OpenSSL EVP).  Internal to metal/emu/.
 */
#ifndef TRMTL_SHA256_H
#define TRMTL_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct trmtl_sha256 {
    uint32_t h[8];
    uint64_t len;
    unsigned char buf[64];
    size_t n;
} trmtl_sha256;

void trmtl_sha256_init(trmtl_sha256 *s);
void trmtl_sha256_update(trmtl_sha256 *s, const void *data, size_t n);
void trmtl_sha256_hex(trmtl_sha256 *s, char hex[65]);

#endif
