/*
 * capture.c — the capture folder format (HARNESS.md §3): manifest.json (schema trellis.capture/1) plus one raw
 * little-endian file per buffer under cases/<case index>/.  Inputs are stored in canonical form; outputs as the
 * kernel wrote them, each file holding the whole bound allocation including its guard bytes (size and pattern in
 * the manifest), so an offline comparison applies the same sentinel check as a live run.
 */
#include "conform.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/hash.h"
#include "trellis/jsonio.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifndef TR_VERSION
#define TR_VERSION "0.0.0"
#endif

static json_t *shape_json(const tr_buf *b)
{
    json_t *a = json_array();
    for (unsigned d = 0; d < b->ndim; d++)
        json_array_append_new(a, json_integer((json_int_t)b->shape[d]));
    return a;
}

/* Write one file and describe it in the manifest entry. */
static int put_buffer(const char *dir, const char *rel, const tr_buf *b, const void *data, size_t size, json_t *list,
                      tr_error *err)
{
    char *path = tr_path_join(dir, rel);
    if (!path)
        return tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    int rc = tr_file_write_all(path, data, size, err);
    tr_dealloc(path);
    if (rc != TR_OK)
        return rc;
    char hex[65];
    tr_sha256_hex(data, size, hex);
    json_t *e = json_object();
    json_object_set_new(e, "name", json_string(b->name));
    json_object_set_new(e, "role", json_string(b->role == TR_ROLE_INPUT ? "input" : "output"));
    json_object_set_new(e, "dtype", json_string(tr_dtype_name(b->dtype)));
    json_object_set_new(e, "shape", shape_json(b));
    json_object_set_new(e, "file", json_string(rel));
    json_object_set_new(e, "sha256", json_string(hex));
    if (b->role == TR_ROLE_OUTPUT)
        json_object_set_new(e, "accumulating", json_boolean(b->accumulating));
    json_array_append_new(list, e);
    return TR_OK;
}

json_t *capture_write_case(const char *dir, uint64_t index, const tr_case *c, const tr_bufs *in, const tr_bufs *got,
                           uint8_t *const *guarded, tr_error *err)
{
    char sub[64];
    snprintf(sub, sizeof sub, "cases/%06llu", (unsigned long long)index);
    char *cdir = tr_path_join(dir, sub);
    int rc = cdir ? tr_mkdir_p(cdir, err) : tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    tr_dealloc(cdir);
    if (rc != TR_OK)
        return NULL;
    json_t *entry = json_object(), *bufs = json_array(), *params = json_object();
    json_object_set_new(entry, "case", json_string(c->id));
    json_object_set_new(entry, "op", json_string(c->op->name));
    json_object_set_new(entry, "variant", json_string(c->variant->id));
    for (int i = 0; i < c->params.n; i++)
        json_object_set_new(params, c->params.key[i], json_string(c->params.val[i]));
    json_object_set_new(entry, "params", params);
    json_object_set_new(entry, "seed", json_integer((json_int_t)c->master_seed));
    json_object_set_new(entry, "metal_math", json_null());
    char rel[256];
    for (int k = 0; rc == TR_OK && k < in->n; k++) {
        snprintf(rel, sizeof rel, "%s/in_%s.bin", sub, in->v[k]->name);
        rc = put_buffer(dir, rel, in->v[k], in->v[k]->data, in->v[k]->bytes, bufs, err);
    }
    for (int k = 0; rc == TR_OK && k < got->n; k++) {
        snprintf(rel, sizeof rel, "%s/out_%s.bin", sub, got->v[k]->name);
        rc = put_buffer(dir, rel, got->v[k], guarded[k], got->v[k]->bytes + 2 * CONFORM_GUARD_BYTES, bufs, err);
    }
    json_object_set_new(entry, "buffers", bufs);
    if (rc != TR_OK) {
        json_decref(entry);
        return NULL;
    }
    return entry;
}

int capture_write_manifest(const char *dir, json_t *cases, tr_error *err)
{
    unsigned long mark = tr_json_mark();
    char pattern[16];
    snprintf(pattern, sizeof pattern, "0x%08x", CONFORM_GUARD_PATTERN);
    json_t *m = json_object();
    json_object_set_new(m, "schema", json_string("trellis.capture/1"));
    json_object_set_new(m, "guard_bytes", json_integer(CONFORM_GUARD_BYTES));
    json_object_set_new(m, "guard_pattern", json_string(pattern));
    json_object_set(m, "cases", cases);
    char *path = tr_path_join(dir, "manifest.json");
    int rc = tr_mkdir_p(dir, err);
    if (rc == TR_OK)
        rc = path ? tr_json_write_file(path, m, mark, err) : tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    tr_dealloc(path);
    json_decref(m);
    return rc;
}

int capture_read_manifest(const char *dir, json_t **manifest, tr_error *err)
{
    char *path = tr_path_join(dir, "manifest.json");
    if (!path)
        return tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    int rc = tr_json_load_object(path, TR_E_INPUT, manifest, err);
    if (rc == TR_OK) {
        json_t *m = *manifest, *schema = json_object_get(m, "schema");
        char pattern[16];
        snprintf(pattern, sizeof pattern, "0x%08x", CONFORM_GUARD_PATTERN);
        if (!json_is_string(schema) || strcmp(json_string_value(schema), "trellis.capture/1"))
            rc = tr_fail(err, TR_E_INPUT, path, "schema is not trellis.capture/1");
        else if (!json_is_array(json_object_get(m, "cases")))
            rc = tr_fail(err, TR_E_INPUT, path, "cases is not an array");
        else if (json_integer_value(json_object_get(m, "guard_bytes")) != CONFORM_GUARD_BYTES ||
                 !json_is_string(json_object_get(m, "guard_pattern")) ||
                 strcmp(json_string_value(json_object_get(m, "guard_pattern")), pattern))
            rc = tr_fail(err, TR_E_UNSUPPORTED, path, "guard_bytes/guard_pattern must be %d / %s", CONFORM_GUARD_BYTES,
                         pattern);
        if (rc != TR_OK) {
            json_decref(m);
            *manifest = NULL;
        }
    }
    tr_dealloc(path);
    return rc;
}

/* A buffer file named inside the capture folder: relative, without empty, "." or ".." components (HARNESS.md §3: the
 * folder holds one file per buffer).  A manifest cannot make the reader open files elsewhere. */
static int path_inside(const char *rel)
{
    if (!rel[0] || rel[0] == '/')
        return 0;
    for (const char *p = rel; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return 0;
        p += n;
        if (*p == '/')
            p++;
    }
    return 1;
}

/* One buffer's file: read, check its sha256 and size.  On failure *data is NULL (the contents read were leaked on a
 * sha256 or size mismatch before; found by fuzz/capture). */
static int load_file(const char *dir, json_t *b, size_t want, uint8_t **data, tr_error *err)
{
    const char *rel = json_string_value(json_object_get(b, "file"));
    const char *sha = json_string_value(json_object_get(b, "sha256"));
    *data = NULL;
    if (!rel || !sha)
        return tr_fail(err, TR_E_INPUT, dir, "buffer entry lacks file or sha256");
    if (!path_inside(rel))
        return tr_fail(err, TR_E_INPUT, dir, "buffer file \"%s\" is not a relative path inside the capture folder", rel);
    char *path = tr_path_join(dir, rel);
    size_t size = 0;
    int rc = path ? tr_file_read_all(path, (char **)data, &size, err) : tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    char hex[65];
    if (rc == TR_OK) {
        tr_sha256_hex(*data, size, hex);
        if (strcmp(hex, sha) != 0)
            rc = tr_fail(err, TR_E_INPUT, path, "sha256 %s does not match the manifest's %s", hex, sha);
        else if (size != want)
            rc = tr_fail(err, TR_E_INPUT, path, "%zu bytes, the manifest's dtype and shape need %zu", size, want);
        if (rc != TR_OK) {
            tr_dealloc(*data);
            *data = NULL;
        }
    }
    tr_dealloc(path);
    return rc;
}

/* Every buffer entry is validated before anything is allocated for it, and its file is read and checked before the
 * buffer is added (found by fuzz/capture): shape members were read with json_integer_value, so negative, huge or
 * non-integer dimensions became a wrapped byte size or a calloc of up to 2^64 bytes; the 65th output was added
 * before the "more than 64 outputs" check, overrunning the caller's guarded[64] when it released the buffers; an
 * output whose file failed to load leaked the buffer's own allocation; roles other than input/output read as
 * input; and names longer than a tr_buf holds, or repeated, silently shadowed one another. */
int capture_load_case(const char *dir, json_t *entry, tr_bufs *in, tr_bufs *got, uint8_t **guarded, tr_error *err)
{
    json_t *bufs = json_object_get(entry, "buffers");
    if (!json_is_array(bufs))
        return tr_fail(err, TR_E_INPUT, dir, "case entry lacks buffers");
    for (size_t i = 0; i < json_array_size(bufs); i++) {
        json_t *b = json_array_get(bufs, i), *shape = json_object_get(b, "shape");
        const char *name = json_string_value(json_object_get(b, "name"));
        const char *role = json_string_value(json_object_get(b, "role"));
        const char *dtype = json_string_value(json_object_get(b, "dtype"));
        tr_dtype dt;
        uint64_t dims[4] = {0};
        size_t nd = json_array_size(shape);
        if (!name || !role || !dtype || tr_dtype_parse(dtype, &dt) != 0 || !json_is_array(shape) || nd > 4)
            return tr_fail(err, TR_E_INPUT, dir, "buffers[%zu]: name, role, dtype or shape invalid", i);
        int output = strcmp(role, "output") == 0;
        tr_bufs *dst = output ? got : in;
        if (!output && strcmp(role, "input") != 0)
            return tr_fail(err, TR_E_INPUT, dir, "buffers[%zu]: role \"%s\" is neither input nor output", i, role);
        if (strlen(name) >= sizeof ((tr_buf *)NULL)->name || tr_bufs_get(dst, name))
            return tr_fail(err, TR_E_INPUT, dir, "buffers[%zu]: name \"%.40s\" is too long or repeated", i, name);
        uint64_t bytes = tr_dtype_size(dt);
        for (size_t d = 0; d < nd; d++) {
            json_t *v = json_array_get(shape, d);
            if (!json_is_integer(v) || json_integer_value(v) < 0)
                return tr_fail(err, TR_E_INPUT, dir, "buffers[%zu]: shape[%zu] is not a non-negative integer", i, d);
            dims[d] = (uint64_t)json_integer_value(v);
            if (dims[d] && bytes > (SIZE_MAX - 2 * CONFORM_GUARD_BYTES) / dims[d])
                return tr_fail(err, TR_E_INPUT, dir, "buffers[%zu]: byte size overflows", i);
            bytes *= dims[d];
        }
        if (output && got->n >= 64)
            return tr_fail(err, TR_E_INPUT, dir, "more than 64 outputs");
        uint8_t *data = NULL;
        int rc = load_file(dir, b, (size_t)bytes + (output ? 2 * CONFORM_GUARD_BYTES : 0), &data, err);
        if (rc != TR_OK)
            return rc;
        tr_buf *x = tr_bufs_add(dst, name, output ? TR_ROLE_OUTPUT : TR_ROLE_INPUT, dt, (unsigned)nd, dims);
        if (!x) {
            tr_dealloc(data);
            return tr_fail(err, TR_E_NOMEM, dir, "out of memory");
        }
        if (output) {   /* keep the whole guarded block; the buffer views its middle (freed by the caller) */
            tr_dealloc(x->data);
            guarded[got->n - 1] = data;
            x->data = data + CONFORM_GUARD_BYTES;
            x->accumulating = json_is_true(json_object_get(b, "accumulating"));
        } else {
            memcpy(x->data, data, x->bytes);
            tr_dealloc(data);
        }
    }
    return TR_OK;
}
