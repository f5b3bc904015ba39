/*
 * hash.c — SHA-256 via OpenSSL libcrypto (EVP), the only hash the harness uses.
 */
#include "trellis/hash.h"
#include "trellis/fileio.h"

#include <openssl/evp.h>
#include <stdio.h>

static void digest_hex(const unsigned char *md, char hex[65])
{
    for (unsigned i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

int tr_sha256_hex(const void *data, size_t size, char hex[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(data, size, md, &len, EVP_sha256(), NULL) != 1 || len != 32)
        return TR_E_INTERNAL;
    digest_hex(md, hex);
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

/* ---- incremental --------------------------------------------------------------------------------------------------- */

int tr_sha256_init(tr_sha256 *h)
{
    h->failed = 0;
    h->ctx = EVP_MD_CTX_new();
    if (!h->ctx)
        return TR_E_NOMEM;
    if (EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
        tr_sha256_discard(h);
        return TR_E_INTERNAL;
    }
    return TR_OK;
}

void tr_sha256_update(tr_sha256 *h, const void *data, size_t size)
{
    if (h->ctx && !h->failed && size && EVP_DigestUpdate(h->ctx, data, size) != 1)
        h->failed = 1;
}

int tr_sha256_final_hex(tr_sha256 *h, char hex[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    int ok = h->ctx && !h->failed && EVP_DigestFinal_ex(h->ctx, md, &len) == 1 && len == 32;
    tr_sha256_discard(h);
    if (!ok)
        return TR_E_INTERNAL;
    digest_hex(md, hex);
    return TR_OK;
}

void tr_sha256_discard(tr_sha256 *h)
{
    EVP_MD_CTX_free(h->ctx);
    h->ctx = NULL;
}
