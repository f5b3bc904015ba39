/*
 * kld_file.c — the base-logits file *.tlogits of ENGINE.md §6 (layout in kld.h and docs/schemas.md): a streaming
 * writer that hashes every byte as it goes out (memory: one record), and a reader that maps the file and validates
 * magic, version, trailer, both hashes, header members, sizes and counts before anything is used.
 *
 * Integrity: "sha256" (trailer) = SHA-256 of bytes [0, p) where p is the offset of the trailer's u32 length field;
 * "trailer_sha256" = SHA-256 of the trailer text with its own 64 hex digits replaced by '0' (it is the last member,
 * so the text ends with "trailer_sha256":"<64 hex>"}).  The reader finds p from the end of the file: the u32 at
 * p equals size − p − 12, and no position inside compact JSON text can hold such a small value (its bytes are all
 * ≥ 0x20, so any u32 overlapping the text is ≥ 0x20000000, above the 16 MiB trailer limit).
 */
#include "trellis/kld.h"
#include "trellis/alloc.h"
#include "trellis/hash.h"
#include "trellis/jsonio.h"
#include "trellis/version.h"

#include <stdio.h>
#include <string.h>


#define TRAILER_MAX (16u << 20)
#define SELF_KEY "\"trailer_sha256\":\""
static const char CORRUPT[] = "trailer hash mismatch (file truncated or modified)";

/* ---- little-endian fields --------------------------------------------------------------------------------------- */

static void put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_f32(uint8_t *p, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    put_u32(p, v);
}

static void put_f64(uint8_t *p, double d)
{
    uint64_t v;
    memcpy(&v, &d, 8);
    put_u64(p, v);
}

static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p) { return get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }

static float get_f32(const uint8_t *p)
{
    uint32_t v = get_u32(p);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

static double get_f64(const uint8_t *p)
{
    uint64_t v = get_u64(p);
    double d;
    memcpy(&d, &v, 8);
    return d;
}

/* Record bytes: f64 lse, f64 tail, u32 target, f32 target logit, u32 ids[K], f32 logits[K], u16 routes[n]. */
static size_t record_size(uint32_t K, uint32_t n_routes) { return 24 + 8 * (size_t)K + 2 * (size_t)n_routes; }

/* ---- header JSON ------------------------------------------------------------------------------------------------ */

static json_t *str_or_null(const char *s) { return s ? json_string(s) : json_null(); }

static json_t *header_json(const tr_tlogits_meta *m)
{
    json_t *h = json_object(), *routes = json_null();
    json_object_set_new(h, "schema", json_string("trellis.tlogits/1"));
    json_object_set_new(h, "tool_version", json_string(tr_version()));
    json_object_set_new(h, "git_commit", json_string(tr_git_commit()));
    json_object_set_new(h, "arch", str_or_null(m->arch));
    json_object_set_new(h, "model", str_or_null(m->model));
    json_object_set_new(h, "backend", str_or_null(m->backend));
    json_object_set_new(h, "config_sha256", str_or_null(m->config_sha256));
    json_object_set_new(h, "tokenizer_sha256", str_or_null(m->tokenizer_sha256));
    json_object_set_new(h, "text_sha256", str_or_null(m->text_sha256));
    json_object_set_new(h, "input", str_or_null(m->input));
    json_object_set_new(h, "protocol", json_string(tr_protocol_name(m->eval.protocol)));
    json_object_set_new(h, "ctx", json_integer(m->eval.ctx));
    json_object_set_new(h, "stride", m->eval.protocol == TR_PROTOCOL_HF ? json_integer(m->eval.stride) : json_null());
    json_object_set_new(h, "bos", m->eval.bos >= 0 ? json_integer(m->eval.bos) : json_null());
    json_object_set_new(h, "n_chunks", json_integer(m->eval.max_chunks));
    json_object_set_new(h, "n_vocab", json_integer(m->V));
    json_object_set_new(h, "topk", json_integer(m->K));
    json_object_set_new(h, "n_tokens", json_integer((json_int_t)m->n_tokens));
    json_object_set_new(h, "n_records", json_integer((json_int_t)m->n_records));
    if (m->n_moe_layers) {
        routes = json_object();
        json_object_set_new(routes, "n_moe_layers", json_integer(m->n_moe_layers));
        json_object_set_new(routes, "k", json_integer(m->k));
    }
    json_object_set_new(h, "routes", routes);
    return h;
}

/* ---- writer ----------------------------------------------------------------------------------------------------- */

struct tr_tlogits_writer {
    tr_file_out out;
    char *path;
    tr_sha256 sha;
    uint32_t V, K, n_routes;
    uint64_t n_records, appended;
    uint8_t *buf;                     /* one record */
    size_t rec_size;
};

/* Every byte before the trailer goes through here: hashed, then written. */
static void emit(tr_tlogits_writer *w, const void *data, size_t n)
{
    tr_sha256_update(&w->sha, data, n);
    tr_file_out_put(&w->out, data, n);
}

static void writer_free(tr_tlogits_writer *w)
{
    tr_sha256_discard(&w->sha);
    tr_dealloc(w->buf);
    tr_dealloc(w->path);
    tr_dealloc(w);
}

void tr_tlogits_abort(tr_tlogits_writer *w)
{
    if (!w)
        return;
    if (w->out.fp)
        tr_file_out_close(&w->out, NULL);
    remove(w->path);
    writer_free(w);
}

static int emit_header(tr_tlogits_writer *w, const tr_tlogits_meta *m, tr_error *err)
{
    unsigned long mark = tr_json_mark();
    json_t *h = header_json(m);
    char *text = tr_json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER, mark);
    json_decref(h);
    if (!text)
        return tr_fail(err, TR_E_NOMEM, w->path, "cannot build the header");
    uint8_t fixed[16];
    size_t n = strlen(text);
    memcpy(fixed, TR_TLOGITS_MAGIC, 8);
    put_u32(fixed + 8, TR_TLOGITS_VERSION);
    put_u32(fixed + 12, (uint32_t)n);
    emit(w, fixed, 16);
    emit(w, text, n);
    tr_dealloc(text);
    return TR_OK;
}

static int emit_tokens(tr_tlogits_writer *w, const int32_t *tokens, uint64_t n, tr_error *err)
{
    uint8_t buf[4096];
    for (uint64_t i = 0; i < n;) {
        size_t b = 0;
        for (; i < n && b < sizeof buf; i++, b += 4) {
            if (tokens[i] < 0 || (uint32_t)tokens[i] >= w->V)
                return tr_fail(err, TR_E_TOKEN_ID, w->path, "token id %d at index %llu is out of range [0, %u)",
                               tokens[i], (unsigned long long)i, w->V);
            put_u32(buf + b, (uint32_t)tokens[i]);
        }
        emit(w, buf, b);
    }
    return TR_OK;
}

int tr_tlogits_create(const char *path, const tr_tlogits_meta *m, const int32_t *tokens, tr_tlogits_writer **out,
                      tr_error *err)
{
    *out = NULL;
    if (!m->K || m->K > m->V)
        return tr_fail(err, TR_E_INVALID_PARAM, "--topk", "%u is outside [1, n_vocab %u]", m->K, m->V);
    tr_tlogits_writer *w = tr_calloc(1, sizeof *w);
    if (!w || !(w->path = tr_strdup(path))) {
        tr_dealloc(w);
        return tr_fail(err, TR_E_NOMEM, path, "out of memory");
    }
    w->V = m->V;
    w->K = m->K;
    w->n_routes = m->n_moe_layers * m->k;
    w->n_records = m->n_records;
    w->rec_size = record_size(w->K, w->n_routes);
    int rc = (w->buf = tr_malloc(w->rec_size)) ? tr_sha256_init(&w->sha) : TR_E_NOMEM;
    if (rc != TR_OK) {
        writer_free(w);
        return tr_fail(err, rc, path, "cannot set up the writer");
    }
    if ((rc = tr_file_out_open(&w->out, w->path, err)) != TR_OK) {
        writer_free(w);
        return rc;
    }
    rc = emit_header(w, m, err);
    if (rc == TR_OK)
        rc = emit_tokens(w, tokens, m->n_tokens, err);
    if (rc != TR_OK) {
        tr_tlogits_abort(w);
        return rc;
    }
    *out = w;
    return TR_OK;
}

int tr_tlogits_append(tr_tlogits_writer *w, const tr_kld_rec *r, tr_error *err)
{
    if (w->n_routes && !r->routes)
        return tr_fail(err, TR_E_INTERNAL, w->path, "record without the routes the header announces");
    uint8_t *p = w->buf;
    put_f64(p, r->lse);
    put_f64(p + 8, r->tail_mass);
    put_u32(p + 16, r->target);
    put_f32(p + 20, r->target_logit);
    p += 24;
    for (uint32_t j = 0; j < w->K; j++)
        put_u32(p + 4 * (size_t)j, r->ids[j]);
    p += 4 * (size_t)w->K;
    for (uint32_t j = 0; j < w->K; j++)
        put_f32(p + 4 * (size_t)j, r->logits[j]);
    p += 4 * (size_t)w->K;
    for (uint32_t j = 0; j < w->n_routes; j++)
        put_u16(p + 2 * (size_t)j, r->routes[j]);
    emit(w, w->buf, w->rec_size);
    w->appended++;
    return TR_OK;
}

/* The trailer text: extra's members, n_records, sha256, then trailer_sha256 over the text with zeros in its place. */
static char *trailer_text(const tr_tlogits_writer *w, const json_t *extra, const char *prefix_hex, tr_error *err)
{
    unsigned long mark = tr_json_mark();
    json_t *t = extra ? json_deep_copy(extra) : json_object();
    if (t) {
        json_object_del(t, "trailer_sha256");
        json_object_set_new(t, "n_records", json_integer((json_int_t)w->appended));
        json_object_set_new(t, "sha256", json_string(prefix_hex));
        json_object_set_new(t, "trailer_sha256", json_string("0000000000000000000000000000000000000000000000000000"
                                                             "000000000000"));
    }
    char *text = tr_json_dumps(t, JSON_COMPACT | JSON_PRESERVE_ORDER, mark), hex[65];
    json_decref(t);
    if (!text) {
        tr_fail(err, TR_E_NOMEM, w->path, "cannot build the trailer");
        return NULL;
    }
    size_t n = strlen(text);
    if (tr_sha256_hex(text, n, hex) != TR_OK) {
        tr_dealloc(text);
        tr_fail(err, TR_E_INTERNAL, w->path, "SHA-256 failed");
        return NULL;
    }
    memcpy(text + n - 66, hex, 64);   /* …"trailer_sha256":"<64>"} */
    return text;
}

int tr_tlogits_finish(tr_tlogits_writer *w, const json_t *extra, tr_error *err)
{
    char hex[65];
    if (w->appended != w->n_records) {
        int rc = tr_fail(err, TR_E_INTERNAL, w->path, "%llu records written, the header announces %llu",
                         (unsigned long long)w->appended, (unsigned long long)w->n_records);
        tr_tlogits_abort(w);
        return rc;
    }
    if (tr_sha256_final_hex(&w->sha, hex) != TR_OK) {
        tr_tlogits_abort(w);
        return tr_fail(err, TR_E_INTERNAL, w->path, "SHA-256 failed");
    }
    char *text = trailer_text(w, extra, hex, err);
    if (!text) {
        tr_tlogits_abort(w);
        return err ? err->code : TR_E_NOMEM;
    }
    uint8_t len[4];
    put_u32(len, (uint32_t)strlen(text));
    tr_file_out_put(&w->out, len, 4);
    tr_file_out_put(&w->out, text, strlen(text));
    tr_file_out_put(&w->out, TR_TLOGITS_END_MAGIC, 8);
    tr_dealloc(text);
    int rc = tr_file_out_close(&w->out, err);
    w->out.fp = NULL;
    if (rc != TR_OK)
        remove(w->path);
    writer_free(w);
    return rc;
}

/* ---- reader: trailer and hashes --------------------------------------------------------------------------------- */

/* Offset of the trailer's u32 length field, or 0 when there is none. */
static size_t find_trailer(const tr_mapped *m)
{
    const size_t size = m->size;
    if (size < 16 + 4 + 2 + 8 || memcmp(m->data + size - 8, TR_TLOGITS_END_MAGIC, 8))
        return 0;
    for (size_t L = 2; L <= TRAILER_MAX && 16 + 12 + L <= size; L++)
        if (get_u32(m->data + size - 12 - L) == L)
            return size - 12 - L;
    return 0;
}

static int is_hex64(const char *s)
{
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

/* The trailer text ends with "trailer_sha256":"<64 hex>"} and hashes to it with the digits zeroed. */
static int trailer_self_ok(const char *text, size_t n)
{
    const size_t key = sizeof SELF_KEY - 1;
    if (n < key + 66 || memcmp(text + n - 66 - key, SELF_KEY, key) || memcmp(text + n - 2, "\"}", 2) ||
        !is_hex64(text + n - 66))
        return 0;
    char *copy = tr_malloc(n), hex[65];
    if (!copy)
        return -1;
    memcpy(copy, text, n);
    memset(copy + n - 66, '0', 64);
    int ok = tr_sha256_hex(copy, n, hex) == TR_OK && !memcmp(hex, text + n - 66, 64);
    tr_dealloc(copy);
    return ok;
}

/* Parse and verify the trailer at p; *trailer on success. */
static int check_trailer(tr_tlogits *f, size_t p, tr_error *err)
{
    const char *text = (const char *)f->map.data + p + 4;
    size_t n = f->map.size - p - 12;
    int self = trailer_self_ok(text, n), st = TR_OK;
    if (self < 0)
        return tr_fail(err, TR_E_NOMEM, f->path, "out of memory");
    json_error_t jerr;
    f->trailer = self ? tr_json_parse(text, n, TR_E_INPUT, 0, &jerr, &st) : NULL;
    if (self && st == TR_E_NOMEM)
        return tr_fail(err, TR_E_NOMEM, f->path, "out of memory parsing the trailer");
    const json_t *sha = json_object_get(f->trailer, "sha256");
    char hex[65];
    if (!json_is_object(f->trailer) || !json_is_string(sha) || json_string_length(sha) != 64 ||
        tr_sha256_hex(f->map.data, p, hex) != TR_OK || strcmp(hex, json_string_value(sha)))
        return tr_fail(err, TR_E_INPUT, f->path, "%s", CORRUPT);
    return TR_OK;
}

/* ---- reader: header --------------------------------------------------------------------------------------------- */

static int member_u64(const tr_tlogits *f, const char *key, uint64_t lo, uint64_t hi, uint64_t *out, tr_error *err)
{
    const json_t *v = json_object_get(f->header, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) < lo ||
        (uint64_t)json_integer_value(v) > hi)
        return tr_fail(err, TR_E_INPUT, f->path, "header: \"%s\" missing or not an integer in [%llu, %llu]", key,
                       (unsigned long long)lo, (unsigned long long)hi);
    *out = (uint64_t)json_integer_value(v);
    return TR_OK;
}

static int member_u32(const tr_tlogits *f, const char *key, uint32_t lo, uint32_t *out, tr_error *err)
{
    uint64_t v;
    int rc = member_u64(f, key, lo, UINT32_MAX, &v, err);
    *out = (uint32_t)v;
    return rc;
}

/* protocol, ctx, stride, bos, n_chunks → f->eval. */
static int header_protocol(tr_tlogits *f, tr_error *err)
{
    const json_t *p = json_object_get(f->header, "protocol"), *stride = json_object_get(f->header, "stride"),
                 *bos = json_object_get(f->header, "bos");
    memset(&f->eval, 0, sizeof f->eval);
    if (!json_is_string(p) || tr_protocol_parse(json_string_value(p), &f->eval.protocol))
        return tr_fail(err, TR_E_INPUT, f->path, "header: \"protocol\" missing or not llamacpp or hf");
    int rc = member_u32(f, "ctx", 2, &f->eval.ctx, err);
    if (rc == TR_OK)
        rc = member_u32(f, "n_chunks", 1, &f->n_chunks, err);
    if (rc != TR_OK)
        return rc;
    f->eval.max_chunks = f->n_chunks;
    if (f->eval.protocol == TR_PROTOCOL_HF && (!json_is_integer(stride) || json_integer_value(stride) < 1 ||
                                               json_integer_value(stride) > f->eval.ctx))
        return tr_fail(err, TR_E_INPUT, f->path, "header: \"stride\" missing or outside [1, ctx]");
    f->eval.stride = f->eval.protocol == TR_PROTOCOL_HF ? (uint32_t)json_integer_value(stride) : 0;
    if (!json_is_null(bos) && (!json_is_integer(bos) || json_integer_value(bos) < 0 ||
                               json_integer_value(bos) > INT32_MAX))
        return tr_fail(err, TR_E_INPUT, f->path, "header: \"bos\" is neither null nor a token id");
    f->eval.bos = json_is_integer(bos) ? (int32_t)json_integer_value(bos) : -1;
    return TR_OK;
}

static int header_routes(tr_tlogits *f, tr_error *err)
{
    const json_t *r = json_object_get(f->header, "routes");
    f->n_moe_layers = f->k = 0;
    if (json_is_null(r))
        return TR_OK;
    const json_t *nl = json_object_get(r, "n_moe_layers"), *k = json_object_get(r, "k");
    if (!json_is_integer(nl) || !json_is_integer(k) || json_integer_value(nl) < 1 || json_integer_value(k) < 1 ||
        json_integer_value(nl) > 65536 || json_integer_value(k) > 65536 ||
        json_integer_value(nl) * json_integer_value(k) > (1 << 20))
        return tr_fail(err, TR_E_INPUT, f->path, "header: \"routes\" is neither null nor {n_moe_layers, k}");
    f->n_moe_layers = (uint32_t)json_integer_value(nl);
    f->k = (uint32_t)json_integer_value(k);
    return TR_OK;
}

static int parse_header(tr_tlogits *f, size_t p, tr_error *err)
{
    uint32_t hlen = get_u32(f->map.data + 12);
    if ((uint64_t)hlen + 16 > p)
        return tr_fail(err, TR_E_INPUT, f->path, "header length %u exceeds the file", hlen);
    json_error_t jerr;
    int st;
    f->header = tr_json_parse((const char *)f->map.data + 16, hlen, TR_E_INPUT, 0, &jerr, &st);
    if (st == TR_E_NOMEM)
        return tr_fail(err, st, f->path, "out of memory parsing the header");
    if (!json_is_object(f->header))
        return tr_fail(err, TR_E_INPUT, f->path, "header is not a JSON object");
    int rc = header_protocol(f, err);
    if (rc == TR_OK)
        rc = member_u32(f, "n_vocab", 1, &f->V, err);
    if (rc == TR_OK)
        rc = member_u32(f, "topk", 1, &f->K, err);
    if (rc == TR_OK && f->K > f->V)
        rc = tr_fail(err, TR_E_INPUT, f->path, "header: topk %u exceeds n_vocab %u", f->K, f->V);
    if (rc == TR_OK)
        rc = member_u64(f, "n_tokens", 1, f->map.size / 4, &f->n_tokens, err);
    if (rc == TR_OK)
        rc = header_routes(f, err);
    if (rc == TR_OK) {
        f->rec_size = record_size(f->K, f->n_moe_layers * f->k);
        rc = member_u64(f, "n_records", 0, f->map.size / f->rec_size, &f->n_records, err);
    }
    if (rc == TR_OK) {
        f->tokens = f->map.data + 16 + hlen;
        f->records = f->tokens + 4 * f->n_tokens;
    }
    return rc;
}

/* Sizes and counts: the records end at p; the protocol over n_tokens gives n_chunks windows and n_records. */
static int check_layout(tr_tlogits *f, size_t p, tr_error *err)
{
    uint64_t end = (uint64_t)(f->records - f->map.data) + f->n_records * f->rec_size;
    if (end != p)
        return tr_fail(err, TR_E_INPUT, f->path, "the header implies %llu bytes before the trailer, found %zu",
                       (unsigned long long)end, p);
    const json_t *tn = json_object_get(f->trailer, "n_records");
    if (!json_is_integer(tn) || (uint64_t)json_integer_value(tn) != f->n_records)
        return tr_fail(err, TR_E_INPUT, f->path, "trailer n_records differs from the header's %llu",
                       (unsigned long long)f->n_records);
    tr_kld_plan plan;
    tr_kld_plan_walk(&f->eval, f->n_tokens, &plan);
    if (plan.windows != f->n_chunks || plan.n_records != f->n_records || plan.n_used != f->n_tokens)
        return tr_fail(err, TR_E_INPUT, f->path, "header: %s protocol over %llu tokens gives %u chunks and %llu "
                       "records, the header says %u and %llu", tr_protocol_name(f->eval.protocol),
                       (unsigned long long)f->n_tokens, plan.windows, (unsigned long long)plan.n_records,
                       f->n_chunks, (unsigned long long)f->n_records);
    return TR_OK;
}

static int open_checked(tr_tlogits *f, tr_error *err)
{
    const tr_mapped *m = &f->map;
    if (m->size >= 8 && memcmp(m->data, TR_TLOGITS_MAGIC, 8))
        return tr_fail(err, TR_E_INPUT, f->path, "not a .tlogits file (magic \"%.8s\", expected \"%s\")",
                       (const char *)m->data, TR_TLOGITS_MAGIC);
    if (m->size >= 12 && get_u32(m->data + 8) != TR_TLOGITS_VERSION)
        return tr_fail(err, TR_E_INPUT, f->path, "unsupported .tlogits version %u (this build reads version %u)",
                       get_u32(m->data + 8), TR_TLOGITS_VERSION);
    size_t p = find_trailer(m);
    if (!p)
        return tr_fail(err, TR_E_INPUT, f->path, "%s", CORRUPT);
    int rc = check_trailer(f, p, err);
    if (rc == TR_OK)
        rc = parse_header(f, p, err);
    if (rc == TR_OK)
        rc = check_layout(f, p, err);
    return rc;
}

int tr_tlogits_open(const char *path, tr_tlogits **out, tr_error *err)
{
    *out = NULL;
    tr_tlogits *f = tr_calloc(1, sizeof *f);
    if (!f || !(f->path = tr_strdup(path))) {
        tr_dealloc(f);
        return tr_fail(err, TR_E_NOMEM, path, "out of memory");
    }
    int rc = tr_file_map(path, &f->map, err);
    if (rc == TR_OK)
        rc = open_checked(f, err);
    if (rc != TR_OK) {
        tr_tlogits_close(f);
        return rc;
    }
    *out = f;
    return TR_OK;
}

void tr_tlogits_close(tr_tlogits *f)
{
    if (!f)
        return;
    json_decref(f->header);
    json_decref(f->trailer);
    tr_file_unmap(&f->map);
    tr_dealloc(f->path);
    tr_dealloc(f);
}

int tr_tlogits_tokens(const tr_tlogits *f, int32_t **out, tr_error *err)
{
    int32_t *t = tr_malloc((size_t)f->n_tokens * sizeof *t);
    *out = NULL;
    if (!t)
        return tr_fail(err, TR_E_NOMEM, f->path, "cannot allocate %llu tokens", (unsigned long long)f->n_tokens);
    for (uint64_t i = 0; i < f->n_tokens; i++) {
        uint32_t v = get_u32(f->tokens + 4 * i);
        if (v >= f->V) {
            tr_dealloc(t);
            return tr_fail(err, TR_E_INPUT, f->path, "token %u at index %llu is out of range [0, %u)", v,
                           (unsigned long long)i, f->V);
        }
        t[i] = (int32_t)v;
    }
    *out = t;
    return TR_OK;
}

int tr_tlogits_record(const tr_tlogits *f, uint64_t i, tr_kld_rec *r, tr_error *err)
{
    if (i >= f->n_records)
        return tr_fail(err, TR_E_INPUT, f->path, "record %llu: only %llu records", (unsigned long long)i,
                       (unsigned long long)f->n_records);
    const uint8_t *p = f->records + i * f->rec_size;
    const uint32_t K = f->K, n_routes = f->n_moe_layers * f->k;
    r->lse = get_f64(p);
    r->tail_mass = get_f64(p + 8);
    r->target = get_u32(p + 16);
    r->target_logit = get_f32(p + 20);
    p += 24;
    for (uint32_t j = 0; j < K; j++)
        r->ids[j] = get_u32(p + 4 * (size_t)j);
    p += 4 * (size_t)K;
    for (uint32_t j = 0; j < K; j++)
        r->logits[j] = get_f32(p + 4 * (size_t)j);
    p += 4 * (size_t)K;
    for (uint32_t j = 0; j < n_routes && r->routes; j++)
        r->routes[j] = get_u16(p + 2 * (size_t)j);
    if (r->target >= f->V)
        return tr_fail(err, TR_E_INPUT, f->path, "record %llu: target %u is out of range [0, %u)",
                       (unsigned long long)i, r->target, f->V);
    /* kld.h promises ids < V too; they were returned unchecked (tr_kld_compare catches them later, but
     * `study` and other readers of records need not call it; found by fuzz/tlogits) */
    for (uint32_t j = 0; j < K; j++)
        if (r->ids[j] >= f->V)
            return tr_fail(err, TR_E_INPUT, f->path, "record %llu: id %u at slot %u is out of range [0, %u)",
                           (unsigned long long)i, r->ids[j], j, f->V);
    return TR_OK;
}
