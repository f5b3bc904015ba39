/*
 * tlogits.c — fuzz target: the .tlogits reader of the two-pass KLD evaluation (ENGINE.md §6; kld.h tr_tlogits_open,
 * tr_tlogits_tokens, tr_tlogits_record).
 *
 * Two input forms:
 *   - a file image, written as is to the target's temporary folder;
 *   - "SEAL" u32 n_records P: the harness appends a valid trailer to P (n_records, sha256 of P, trailer_sha256, as
 *     the writer does), so mutations get past the integrity check into the header and layout validation.
 * Checks: a refused file gives no handle and a message with its code (TR_E_INPUT, or TR_E_NOMEM); an opened file has
 * a consistent layout (tokens and records inside the mapping, record size as documented, K <= V); the token stream
 * decodes or fails with TR_E_INPUT naming an id >= V; every record (the first 256) decodes with target and ids < V
 * (kld.h: "target and ids must be < V (TR_E_INPUT otherwise)") or fails with TR_E_INPUT; reading past the last
 * record fails.
 */
#include "fuzz.h"
#include "trellis/alloc.h"
#include "trellis/hash.h"
#include "trellis/kld.h"

static char tl_path[700];

static void put_u32le(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* P + u32 len + {"n_records":N,"sha256":"…","trailer_sha256":"…"} + "TRLGTEND" */
static void write_sealed(const uint8_t *p, size_t n, uint32_t n_records)
{
    char hex[65], text[256];
    FUZZ_SETUP_CHECK(tr_sha256_hex(p, n, hex) == TR_OK, "sha256");
    int len = snprintf(text, sizeof text, "{\"n_records\":%u,\"sha256\":\"%s\",\"trailer_sha256\":\"%064d\"}",
                       n_records, hex, 0);
    FUZZ_SETUP_CHECK(len > 66 && (size_t)len < sizeof text, "trailer");
    FUZZ_SETUP_CHECK(tr_sha256_hex(text, (size_t)len, hex) == TR_OK, "sha256");
    memcpy(text + len - 66, hex, 64);
    uint8_t *img = malloc(n + 4 + (size_t)len + 8);
    FUZZ_SETUP_CHECK(img != NULL, "out of memory");
    if (n)
        memcpy(img, p, n);
    put_u32le(img + n, (uint32_t)len);
    memcpy(img + n + 4, text, (size_t)len);
    memcpy(img + n + 4 + len, TR_TLOGITS_END_MAGIC, 8);
    fuzz_write_file(tl_path, img, n + 4 + (size_t)len + 8);
    free(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT)
        return 0;
    if (!tl_path[0])
        fuzz_path(tl_path, sizeof tl_path, fuzz_tmpdir("tlogits"), "base.tlogits");
    if (size >= 8 && !memcmp(data, "SEAL", 4)) {
        uint32_t nrec = (uint32_t)data[4] | (uint32_t)data[5] << 8 | (uint32_t)data[6] << 16 | (uint32_t)data[7] << 24;
        write_sealed(data + 8, size - 8, nrec);
    } else
        fuzz_write_file(tl_path, data, size);

    tr_tlogits *f = (tr_tlogits *)1;
    tr_error err;
    tr_error_clear(&err);
    int rc = tr_tlogits_open(tl_path, &f, &err);
    if (rc != TR_OK) {
        FUZZ_ASSERT(f == NULL, "handle on failure");
        FUZZ_ASSERT(err.code == rc && (rc == TR_E_INPUT || rc == TR_E_NOMEM), "rc %d: %s", rc, err.text);
        FUZZ_ASSERT(!strncmp(err.text, tl_path, strlen(tl_path)) && strstr(err.text, tr_status_name(rc)),
                    "message: %s", err.text);
        return 0;
    }
    FUZZ_ASSERT(f != NULL, "no handle");
    const uint8_t *base = f->map.data, *end = f->map.data + f->map.size;
    FUZZ_ASSERT(f->K >= 1 && f->K <= f->V && f->n_tokens >= 1, "K %u V %u n_tokens %llu", f->K, f->V,
                (unsigned long long)f->n_tokens);
    uint32_t n_routes = f->n_moe_layers * f->k;
    FUZZ_ASSERT(f->rec_size == 24 + 8 * (size_t)f->K + 2 * (size_t)n_routes, "record size %zu", f->rec_size);
    FUZZ_ASSERT(f->tokens >= base + 16 && f->records == f->tokens + 4 * f->n_tokens && f->records <= end,
                "tokens/records outside the mapping");
    FUZZ_ASSERT(f->n_records <= (uint64_t)(end - f->records) / f->rec_size, "%llu records of %zu bytes do not fit",
                (unsigned long long)f->n_records, f->rec_size);

    int32_t *toks = NULL;
    rc = tr_tlogits_tokens(f, &toks, &err);
    if (rc == TR_OK) {
        for (uint64_t i = 0; i < f->n_tokens; i++)
            FUZZ_ASSERT(toks[i] >= 0 && (uint32_t)toks[i] < f->V, "token %llu = %d", (unsigned long long)i, toks[i]);
        tr_dealloc(toks);
    } else
        FUZZ_ASSERT(rc == TR_E_INPUT && toks == NULL && strstr(err.text, "out of range"), "tokens: %s", err.text);

    if (f->K <= 65536 && n_routes <= 65536) {
        tr_kld_rec r;
        memset(&r, 0, sizeof r);
        r.ids = malloc((size_t)f->K * sizeof *r.ids);
        r.logits = malloc((size_t)f->K * sizeof *r.logits);
        r.routes = n_routes ? malloc((size_t)n_routes * sizeof *r.routes) : NULL;
        FUZZ_SETUP_CHECK(r.ids && r.logits && (!n_routes || r.routes), "out of memory");
        uint64_t n = f->n_records < 256 ? f->n_records : 256;
        for (uint64_t i = 0; i < n; i++) {
            rc = tr_tlogits_record(f, i, &r, &err);
            if (rc == TR_OK) {
                FUZZ_ASSERT(r.target < f->V, "record %llu: target %u >= V %u accepted", (unsigned long long)i,
                            r.target, f->V);
                for (uint32_t j = 0; j < f->K; j++)
                    FUZZ_ASSERT(r.ids[j] < f->V, "record %llu: id %u = %u >= V %u accepted", (unsigned long long)i, j,
                                r.ids[j], f->V);
            } else
                FUZZ_ASSERT(rc == TR_E_INPUT, "record %llu: %s", (unsigned long long)i, err.text);
        }
        FUZZ_ASSERT(tr_tlogits_record(f, f->n_records, &r, &err) == TR_E_INPUT, "record past the end accepted");
        free(r.ids);
        free(r.logits);
        free(r.routes);
    }
    tr_tlogits_close(f);
    return 0;
}
