/*
 * oracle.c — importing and opening oracle folders (ENGINE.md §7 "Copy, never regenerate").
 *
 * Import copies the files of index.json verbatim and records their sizes and SHA-256 in MANIFEST.json; opening a
 * folder checks that integrity first (MANIFEST.json when present, else the logits hash each oracle.json carries), so
 * a truncated or edited fixture is named instead of surfacing as a numeric mismatch.
 */
#include "trellis/oracle.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/hash.h"
#include "trellis/jsonio.h"

#include <stdlib.h>
#include <string.h>

static const char *const CASE_FILES[] = {"config.json", "model.safetensors", "tokenizer.json", "oracle.json",
                                         "logits.f32", "hidden.f32"};
#define N_CASE_FILES (sizeof CASE_FILES / sizeof *CASE_FILES)

struct tr_oracle {
    char *dir;
    tr_oracle_case *cases;
    uint32_t n_cases;
    char **tokenizers;
    uint32_t n_tokenizers;
};

/* ---- file lists ----------------------------------------------------------------------------------------------------- */

typedef struct relpaths {
    char **v;
    size_t n, cap;
} relpaths;

static int rel_add(relpaths *r, const char *a, const char *b)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 32;
        char **v = tr_realloc(r->v, cap * sizeof *v);
        if (!v)
            return TR_E_NOMEM;
        r->v = v;
        r->cap = cap;
    }
    char *s = b ? tr_path_join(a, b) : tr_strdup(a);
    if (!s)
        return TR_E_NOMEM;
    r->v[r->n++] = s;
    return TR_OK;
}

static void rel_free(relpaths *r)
{
    for (size_t i = 0; i < r->n; i++)
        tr_dealloc(r->v[i]);
    tr_dealloc(r->v);
}

static int by_string(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* "tokenizer_glm.json" -> "tokenizer_glm_cases.json" */
static char *cases_name(const char *tok)
{
    size_t n = strlen(tok);
    const char *dot = n > 5 && !strcmp(tok + n - 5, ".json") ? tok + n - 5 : tok + n;
    char *s = tr_malloc((size_t)(dot - tok) + 12);
    if (s)
        sprintf(s, "%.*s_cases.json", (int)(dot - tok), tok);
    return s;
}

static int case_name_ok(const char *name)
{
    return name && *name && !strchr(name, '/') && !strchr(name, '\\') && strcmp(name, ".") && strcmp(name, "..");
}

/* Every file an oracle folder holds, relative to it, from its index.json. */
static int list_files(const char *dir, const json_t *index, relpaths *r, tr_error *err)
{
    const json_t *cases = json_object_get(index, "cases"), *toks = json_object_get(index, "tokenizers");
    if (!json_is_array(cases))
        return tr_fail(err, TR_E_INPUT, dir, "index.json: \"cases\" must be an array");
    int rc = rel_add(r, "index.json", NULL);
    size_t i;
    const json_t *v;
    json_array_foreach(toks, i, v) {
        const char *t = json_string_value(v);
        if (!case_name_ok(t))
            return tr_fail(err, TR_E_INPUT, dir, "index.json: tokenizers[%zu] is not a plain file name", i);
        char *cn = cases_name(t);
        if (!cn)
            return tr_fail(err, TR_E_NOMEM, dir, "out of memory");
        char *cp = tr_path_join(dir, cn);
        if (rc == TR_OK)
            rc = rel_add(r, t, NULL);
        if (rc == TR_OK && cp && tr_path_is_file(cp))
            rc = rel_add(r, cn, NULL);
        tr_dealloc(cp);
        tr_dealloc(cn);
    }
    json_array_foreach(cases, i, v) {
        const char *name = json_string_value(json_object_get(v, "name"));
        if (!case_name_ok(name))
            return tr_fail(err, TR_E_INPUT, dir, "index.json: cases[%zu].name is not a plain folder name", i);
        for (size_t f = 0; f < N_CASE_FILES && rc == TR_OK; f++)
            rc = rel_add(r, name, CASE_FILES[f]);
    }
    if (rc != TR_OK)
        return tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    qsort(r->v, r->n, sizeof *r->v, by_string);
    return TR_OK;
}

/* ---- import ----------------------------------------------------------------------------------------------------------- */

static int copy_file(const char *src, const char *dst, const char *rel, int force, FILE *log, json_t *files,
                     tr_error *err)
{
    char *sp = tr_path_join(src, rel), *dp = tr_path_join(dst, rel), *data = NULL, *old = NULL;
    size_t n = 0, on = 0;
    int rc = sp && dp ? tr_file_read_all(sp, &data, &n, err) : tr_fail(err, TR_E_NOMEM, rel, "out of memory");
    if (rc == TR_OK && tr_path_is_file(dp) && tr_file_read_all(dp, &old, &on, NULL) == TR_OK &&
        (on != n || memcmp(old, data, n)) && !force)
        rc = tr_fail(err, TR_E_INPUT, dp, "differs from %s; use --force to overwrite", sp);
    if (rc == TR_OK && !(old && on == n && !memcmp(old, data, n))) {
        char *slash = strrchr(dp, '/');
        if (slash) {
            *slash = 0;
            rc = tr_mkdir_p(dp, err);
            *slash = '/';
        }
        if (rc == TR_OK)
            rc = tr_file_write_all(dp, data, n, err);
        if (rc == TR_OK && log)
            fprintf(log, "  wrote %s (%zu bytes)\n", dp, n);
    }
    char hex[65];
    if (rc == TR_OK && tr_sha256_hex(data, n, hex) == TR_OK) {
        json_t *e = json_object();
        json_object_set_new(e, "path", json_string(rel));
        json_object_set_new(e, "size", json_integer((json_int_t)n));
        json_object_set_new(e, "sha256", json_string(hex));
        json_array_append_new(files, e);
    }
    tr_dealloc(sp);
    tr_dealloc(dp);
    tr_dealloc(data);
    tr_dealloc(old);
    return rc;
}

/* logits.f32 of each case must hash to the sha256 its oracle.json records. */
static int check_logits_hash(const char *dir, const char *name, tr_error *err)
{
    char rel[512];
    snprintf(rel, sizeof rel, "%s/%s/oracle.json", dir, name);
    json_t *o = NULL;
    int rc = tr_json_load_object(rel, TR_E_INPUT, &o, err);
    const char *want = json_string_value(json_object_get(json_object_get(o, "logits"), "sha256"));
    char hex[65];
    snprintf(rel, sizeof rel, "%s/%s/logits.f32", dir, name);
    if (rc == TR_OK && !want)
        rc = tr_fail(err, TR_E_INPUT, rel, "its oracle.json has no logits.sha256");
    if (rc == TR_OK)
        rc = tr_sha256_file_hex(rel, hex, err);
    if (rc == TR_OK && strcmp(hex, want))
        rc = tr_fail(err, TR_E_INPUT, rel, "sha256 %s, oracle.json says %s", hex, want);
    json_decref(o);
    return rc;
}

int tr_oracle_import(const char *src, const char *dst, int force, FILE *log, tr_error *err)
{
    char *ip = tr_path_join(src, "index.json");
    json_t *index = NULL;
    int rc = ip ? tr_json_load_object(ip, TR_E_INPUT, &index, err) : tr_fail(err, TR_E_NOMEM, src, "out of memory");
    tr_dealloc(ip);
    relpaths r = {0};
    if (rc == TR_OK)
        rc = list_files(src, index, &r, err);
    const json_t *cases = json_object_get(index, "cases");
    for (size_t i = 0; rc == TR_OK && i < json_array_size(cases); i++)
        rc = check_logits_hash(src, json_string_value(json_object_get(json_array_get(cases, i), "name")), err);
    if (rc == TR_OK)
        rc = tr_mkdir_p(dst, err);
    unsigned long mark = tr_json_mark();
    json_t *man = json_object(), *files = json_array();
    json_object_set_new(man, "schema", json_string("trellis.oracle_manifest/1"));
    json_object_set_new(man, "source", json_string(src));
    for (size_t i = 0; rc == TR_OK && i < r.n; i++)
        rc = copy_file(src, dst, r.v[i], force, log, files, err);
    json_object_set_new(man, "files", files);
    char *mp = tr_path_join(dst, "MANIFEST.json");
    if (rc == TR_OK)
        rc = mp ? tr_json_write_file(mp, man, mark, err) : tr_fail(err, TR_E_NOMEM, dst, "out of memory");
    tr_dealloc(mp);
    json_decref(man);
    json_decref(index);
    rel_free(&r);
    return rc;
}

/* ---- opening ------------------------------------------------------------------------------------------------------------ */

static int verify_manifest(const char *dir, const json_t *man, tr_error *err)
{
    const json_t *files = json_object_get(man, "files");
    if (!json_is_array(files))
        return tr_fail(err, TR_E_INPUT, dir, "MANIFEST.json: \"files\" must be an array");
    size_t i;
    const json_t *e;
    json_array_foreach(files, i, e) {
        const char *rel = json_string_value(json_object_get(e, "path")),
                   *want = json_string_value(json_object_get(e, "sha256"));
        json_int_t size = json_integer_value(json_object_get(e, "size"));
        if (!rel || !want)
            return tr_fail(err, TR_E_INPUT, dir, "MANIFEST.json: files[%zu] lacks path or sha256", i);
        char *p = tr_path_join(dir, rel), hex[65];
        char *data = NULL;
        size_t n = 0;
        int rc = p ? tr_file_read_all(p, &data, &n, err) : tr_fail(err, TR_E_NOMEM, dir, "out of memory");
        if (rc == TR_OK && (json_int_t)n != size)
            rc = tr_fail(err, TR_E_INPUT, p, "%zu bytes, MANIFEST.json says %lld", n, (long long)size);
        if (rc == TR_OK && (tr_sha256_hex(data, n, hex) != TR_OK || strcmp(hex, want)))
            rc = tr_fail(err, TR_E_INPUT, p, "sha256 %s, MANIFEST.json says %s", hex, want);
        tr_dealloc(data);
        tr_dealloc(p);
        if (rc != TR_OK)
            return rc;
    }
    return TR_OK;
}

static int read_floats(const char *dir, const char *name, const char *file, size_t want, float **out, tr_error *err)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s/%s", dir, name, file);
    char *data;
    size_t n;
    int rc = tr_file_read_all(p, &data, &n, err);
    if (rc != TR_OK)
        return rc;
    if (n != want * sizeof(float)) {
        tr_dealloc(data);
        return tr_fail(err, TR_E_INPUT, p, "%zu bytes, oracle.json shape implies %zu", n, want * sizeof(float));
    }
    *out = (float *)data;   /* tr_file_read_all's buffer is malloc-aligned */
    return TR_OK;
}

static int read_ids(const json_t *a, int32_t **out, uint32_t *n)
{
    *n = (uint32_t)json_array_size(a);
    *out = tr_calloc(*n ? *n : 1, sizeof **out);
    if (!*out)
        return TR_E_NOMEM;
    for (uint32_t i = 0; i < *n; i++) {
        const json_t *v = json_array_get(a, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
            return TR_E_INPUT;
        (*out)[i] = (int32_t)json_integer_value(v);
    }
    return TR_OK;
}

static int shape_dims(const json_t *shape, unsigned rank, uint32_t *d)
{
    if (json_array_size(shape) != rank)
        return -1;
    for (unsigned i = 0; i < rank; i++) {
        json_int_t v = json_integer_value(json_array_get(shape, i));
        if (v < 1 || v > UINT32_MAX)
            return -1;
        d[i] = (uint32_t)v;
    }
    return 0;
}

static int load_case(const char *dir, const json_t *entry, tr_oracle_case *c, tr_error *err)
{
    const char *name = json_string_value(json_object_get(entry, "name"));
    char p[1024];
    snprintf(p, sizeof p, "%s/%s/oracle.json", dir, name);
    json_t *o = NULL;
    int rc = tr_json_load_object(p, TR_E_INPUT, &o, err);
    if (rc != TR_OK)
        return rc;
    uint32_t ls[2], hs[3];
    c->name = tr_strdup(name);
    c->dir = tr_path_join(dir, name);
    c->arch = tr_strdup(json_string_value(json_object_get(o, "arch")) ? json_string_value(json_object_get(o, "arch"))
                                                                       : "");
    const char *wd = json_string_value(json_object_get(o, "weights_dtype"));
    c->weights_dtype = tr_strdup(wd ? wd : "");
    c->oracle_pvd = json_number_value(json_object_get(o, "oracle_prefill_vs_decode_max_abs"));
    const json_t *g = json_object_get(o, "greedy");
    if (!c->name || !c->dir || !c->arch || !c->weights_dtype)
        rc = tr_fail(err, TR_E_NOMEM, p, "out of memory");
    else if (read_ids(json_object_get(o, "input_ids"), &c->input_ids, &c->T) != TR_OK ||
             read_ids(json_object_get(g, "prompt_ids"), &c->prompt_ids, &c->n_prompt) != TR_OK ||
             read_ids(json_object_get(g, "output_ids"), &c->output_ids, &c->n_output) != TR_OK || c->n_output > 64)
        rc = tr_fail(err, TR_E_INPUT, p, "input_ids / greedy ids must be arrays of token ids (at most 64 outputs)");
    else if (shape_dims(json_object_get(json_object_get(o, "logits"), "shape"), 2, ls) ||
             shape_dims(json_object_get(json_object_get(o, "hidden_states"), "shape"), 3, hs) || ls[0] != c->T ||
             hs[1] != c->T)
        rc = tr_fail(err, TR_E_INPUT, p, "logits.shape must be [T, V] and hidden_states.shape [L+1, T, D], T = %u",
                     c->T);
    else {
        c->V = ls[1];
        c->L1 = hs[0];
        c->D = hs[2];
        rc = read_floats(dir, name, "logits.f32", (size_t)c->T * c->V, &c->logits, err);
        if (rc == TR_OK)
            rc = read_floats(dir, name, "hidden.f32", (size_t)c->L1 * c->T * c->D, &c->hidden, err);
    }
    json_decref(o);
    return rc;
}

int tr_oracle_open(const char *dir, tr_oracle **out, tr_error *err)
{
    *out = NULL;
    tr_oracle *o = tr_calloc(1, sizeof *o);
    if (!o || !(o->dir = tr_strdup(dir))) {
        tr_dealloc(o);
        return tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    }
    char *ip = tr_path_join(dir, "index.json"), *mp = tr_path_join(dir, "MANIFEST.json");
    json_t *index = NULL, *man = NULL;
    int rc = ip && mp ? tr_json_load_object(ip, TR_E_INPUT, &index, err) : tr_fail(err, TR_E_NOMEM, dir, "oom");
    if (rc == TR_OK && tr_path_is_file(mp)) {
        rc = tr_json_load_object(mp, TR_E_INPUT, &man, err);
        if (rc == TR_OK)
            rc = verify_manifest(dir, man, err);
    }
    const json_t *cases = json_object_get(index, "cases"), *toks = json_object_get(index, "tokenizers");
    if (rc == TR_OK && !json_is_array(cases))
        rc = tr_fail(err, TR_E_INPUT, ip, "\"cases\" must be an array");
    if (rc == TR_OK && !(o->cases = tr_calloc(json_array_size(cases) + 1, sizeof *o->cases)))
        rc = tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    for (size_t i = 0; rc == TR_OK && i < json_array_size(cases); i++) {
        const json_t *e = json_array_get(cases, i);
        if (!case_name_ok(json_string_value(json_object_get(e, "name"))))
            rc = tr_fail(err, TR_E_INPUT, ip, "cases[%zu].name is not a plain folder name", i);
        else if (!man)
            rc = check_logits_hash(dir, json_string_value(json_object_get(e, "name")), err);
        if (rc == TR_OK)
            rc = load_case(dir, e, &o->cases[o->n_cases++], err);
    }
    if (rc == TR_OK && !(o->tokenizers = tr_calloc(json_array_size(toks) + 1, sizeof *o->tokenizers)))
        rc = tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    for (size_t i = 0; rc == TR_OK && i < json_array_size(toks); i++)
        if (!(o->tokenizers[o->n_tokenizers++] = tr_strdup(json_string_value(json_array_get(toks, i)) ?
                                                           json_string_value(json_array_get(toks, i)) : "")))
            rc = tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    json_decref(index);
    json_decref(man);
    tr_dealloc(ip);
    tr_dealloc(mp);
    if (rc != TR_OK) {
        tr_oracle_close(o);
        return rc;
    }
    *out = o;
    return TR_OK;
}

void tr_oracle_close(tr_oracle *o)
{
    if (!o)
        return;
    for (uint32_t i = 0; i < o->n_cases; i++) {
        tr_oracle_case *c = &o->cases[i];
        tr_dealloc(c->name);
        tr_dealloc(c->arch);
        tr_dealloc(c->weights_dtype);
        tr_dealloc(c->dir);
        tr_dealloc(c->input_ids);
        tr_dealloc(c->logits);
        tr_dealloc(c->hidden);
        tr_dealloc(c->prompt_ids);
        tr_dealloc(c->output_ids);
    }
    tr_dealloc(o->cases);
    for (uint32_t i = 0; i < o->n_tokenizers; i++)
        tr_dealloc(o->tokenizers[i]);
    tr_dealloc(o->tokenizers);
    tr_dealloc(o->dir);
    tr_dealloc(o);
}

const char *tr_oracle_dir(const tr_oracle *o) { return o->dir; }
uint32_t tr_oracle_case_count(const tr_oracle *o) { return o->n_cases; }
const tr_oracle_case *tr_oracle_case_at(const tr_oracle *o, uint32_t i) { return i < o->n_cases ? &o->cases[i] : NULL; }
uint32_t tr_oracle_tokenizer_count(const tr_oracle *o) { return o->n_tokenizers; }
const char *tr_oracle_tokenizer_at(const tr_oracle *o, uint32_t i) { return i < o->n_tokenizers ? o->tokenizers[i] : NULL; }
