/*
 * hash.c — SHA-256 via OpenSSL libcrypto (EVP), the only hash the harness uses.
 */
#include "trellis/hash.h"
#include "trellis/fileio.h"

#include <openssl/evp.h>
#include <stdio.h>

int tr_sha256_hex(const void *data, size_t size, char hex[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(data, size, md, &len, EVP_sha256(), NULL) != 1 || len != 32)
        return TR_E_INTERNAL;
    for (unsigned i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return TR_OK;
}

int tr_sha256_file_hex(const char *path, char hex[65], tr_error *err)
{
    tr_mapped m;
    int rc = tr_file_map(path, &m, err);
    if (rc != TR_OK)
        return rc;
    rc = tr_sha256_hex(m.data ? (const void *)m.data : "", m.size, hex);
    tr_file_unmap(&m);
    if (rc != TR_OK)
        return tr_fail(err, rc, path, "SHA-256 failed");
    return TR_OK;
}
