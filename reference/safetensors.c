/*
 * safetensors.c — strict reader and deterministic writer of the safetensors container (FORMAT.md §2.6).
 *
 * Reader: the 13 rules of §2.6 run in their normative order; file-level rules (1-6) first, then the per-tensor rules
 * (7-12) tensor by tensor in header order (the first failing tensor is reported with its first failing rule), then the
 * buffer-layout rule 13 over all tensors.  Every message reads "<path>: <code>: <detail>".
 */
#include "trellis/safetensors.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/fp16.h"
#include "trellis/jsonio.h"
#include "trellis/utf8.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_table[TR_DT_COUNT] = {
    [TR_DT_BOOL] = {"BOOL", 1},       [TR_DT_U8] = {"U8", 1},       [TR_DT_I8] = {"I8", 1},
    [TR_DT_F8_E5M2] = {"F8_E5M2", 1}, [TR_DT_F8_E4M3] = {"F8_E4M3", 1}, [TR_DT_F8_E8M0] = {"F8_E8M0", 1},
    [TR_DT_I16] = {"I16", 2},         [TR_DT_U16] = {"U16", 2},     [TR_DT_F16] = {"F16", 2},
    [TR_DT_BF16] = {"BF16", 2},       [TR_DT_I32] = {"I32", 4},     [TR_DT_U32] = {"U32", 4},
    [TR_DT_F32] = {"F32", 4},         [TR_DT_I64] = {"I64", 8},     [TR_DT_U64] = {"U64", 8},
    [TR_DT_F64] = {"F64", 8},         [TR_DT_C64] = {"C64", 8},
};

const char *tr_dtype_name(tr_dtype dt) { return (unsigned)dt < TR_DT_COUNT ? dtype_table[dt].name : "?"; }

size_t tr_dtype_size(tr_dtype dt) { return (unsigned)dt < TR_DT_COUNT ? dtype_table[dt].size : 0; }

int tr_dtype_parse(const char *name, tr_dtype *out)
{
    for (int i = 0; i < TR_DT_COUNT; i++)
        if (strcmp(name, dtype_table[i].name) == 0) {
            *out = (tr_dtype)i;
            return 0;
        }
    return -1;
}

struct tr_st_file {
    char *path;
    tr_mapped map;             /* owned mapping (empty when opened on a caller buffer) */
    const uint8_t *base;
    size_t size;
    uint64_t header_size, data_size;
    tr_st_tensor *tensors;     /* header order */
    size_t count;
    size_t *by_name;           /* tensor numbers sorted by name, for tr_st_find */
    char **meta_keys, **meta_values;
    size_t meta_count;
    char *names;               /* storage of all tensor names */
};

/* --- header validation helpers --- */

/* A JSON integer that is a non-negative count (rules 9, 10): jansson gives integers for "-0", "12"; reals otherwise. */
static int get_count(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v))
        return -1;
    json_int_t i = json_integer_value(v);
    if (i < 0)
        return -1;
    *out = (uint64_t)i;
    return 0;
}

static int check_metadata(const char *path, const json_t *meta, tr_error *err)
{
    if (!json_is_object(meta))
        return tr_fail(err, TR_E_ST_METADATA, path, "__metadata__ is not an object");
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)meta, key, val) {
        if (!json_is_string(val))
            return tr_fail(err, TR_E_ST_METADATA, path, "__metadata__.%s is not a string", key);
    }
    return TR_OK;
}

/* Rules 7-11 for one tensor entry; fills t except data/aligned. */
static int check_entry(const char *path, const char *name, const json_t *entry, tr_st_tensor *t, tr_error *err)
{
    if (name[0] == '\0')
        return tr_fail(err, TR_E_ST_ENTRY, path, "tensor with an empty name");
    if (!json_is_object(entry))
        return tr_fail(err, TR_E_ST_ENTRY, path, "tensor \"%s\": entry is not an object", name);
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)entry, key, val) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return tr_fail(err, TR_E_ST_ENTRY, path, "tensor \"%s\": unexpected member \"%s\"", name, key);
    }
    json_t *dtype = json_object_get(entry, "dtype");
    json_t *shape = json_object_get(entry, "shape");
    json_t *offs = json_object_get(entry, "data_offsets");
    if (!dtype || !shape || !offs)
        return tr_fail(err, TR_E_ST_ENTRY, path, "tensor \"%s\": missing member \"%s\"", name,
                       !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
    if (!json_is_string(dtype))
        return tr_fail(err, TR_E_ST_ENTRY, path, "tensor \"%s\": dtype is not a string", name);
    if (!json_is_array(shape))
        return tr_fail(err, TR_E_ST_ENTRY, path, "tensor \"%s\": shape is not an array", name);
    if (!json_is_array(offs))
        return tr_fail(err, TR_E_ST_ENTRY, path, "tensor \"%s\": data_offsets is not an array", name);

    if (tr_dtype_parse(json_string_value(dtype), &t->dtype) != 0)
        return tr_fail(err, TR_E_ST_DTYPE, path, "tensor \"%s\": unknown dtype \"%s\"", name,
                       json_string_value(dtype));

    size_t nd = json_array_size(shape);
    if (nd > TR_ST_MAX_DIMS)
        return tr_fail(err, TR_E_ST_SHAPE, path, "tensor \"%s\": shape has %zu dimensions (at most 8)", name, nd);
    t->ndim = (unsigned)nd;
    for (size_t d = 0; d < nd; d++)
        if (get_count(json_array_get(shape, d), &t->shape[d]) != 0)
            return tr_fail(err, TR_E_ST_SHAPE, path,
                           "tensor \"%s\": shape[%zu] is not a non-negative integer", name, d);

    if (json_array_size(offs) != 2 || get_count(json_array_get(offs, 0), &t->begin) != 0 ||
        get_count(json_array_get(offs, 1), &t->end) != 0)
        return tr_fail(err, TR_E_ST_OFFSETS, path,
                       "tensor \"%s\": data_offsets is not two non-negative integers", name);
    if (t->begin > t->end)
        return tr_fail(err, TR_E_ST_OFFSETS, path, "tensor \"%s\": data_offsets begin %llu > end %llu", name,
                       (unsigned long long)t->begin, (unsigned long long)t->end);

    uint64_t numel = 1;
    for (unsigned d = 0; d < t->ndim; d++) {
        if (t->shape[d] != 0 && numel > UINT64_MAX / t->shape[d])
            return tr_fail(err, TR_E_ST_SIZE, path, "tensor \"%s\": element count overflows 64 bits", name);
        numel *= t->shape[d];
    }
    uint64_t es = tr_dtype_size(t->dtype);
    if (numel > UINT64_MAX / es)
        return tr_fail(err, TR_E_ST_SIZE, path, "tensor \"%s\": byte size overflows 64 bits", name);
    t->numel = numel;
    if (t->end - t->begin != numel * es)
        return tr_fail(err, TR_E_ST_SIZE, path,
                       "tensor \"%s\": data_offsets span %llu bytes, shape and dtype %s need %llu", name,
                       (unsigned long long)(t->end - t->begin), tr_dtype_name(t->dtype),
                       (unsigned long long)(numel * es));
    return TR_OK;
}

/* Comparators over tensor numbers; ctx is the file (qsort_r keeps this reentrant). */
static int cmp_layout(const void *a, const void *b, void *ctx)
{
    const tr_st_file *f = ctx;
    const tr_st_tensor *x = &f->tensors[*(const size_t *)a];
    const tr_st_tensor *y = &f->tensors[*(const size_t *)b];
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_name(const void *a, const void *b, void *ctx)
{
    const tr_st_file *f = ctx;
    const tr_st_tensor *x = &f->tensors[*(const size_t *)a];
    const tr_st_tensor *y = &f->tensors[*(const size_t *)b];
    return strcmp(x->name, y->name);
}

/* Rule 13: sorted by (begin, end, name) the tensors tile [0, D) exactly. */
static int check_layout(tr_st_file *f, size_t *order, tr_error *err)
{
    for (size_t i = 0; i < f->count; i++)
        order[i] = i;
    qsort_r(order, f->count, sizeof *order, cmp_layout, f);
    uint64_t pos = 0;
    for (size_t i = 0; i < f->count; i++) {
        const tr_st_tensor *t = &f->tensors[order[i]];
        if (t->begin != pos)
            return tr_fail(err, TR_E_ST_LAYOUT, f->path, "tensor \"%s\" begins at %llu, expected %llu (%s)",
                           t->name, (unsigned long long)t->begin, (unsigned long long)pos,
                           t->begin > pos ? "hole" : "overlap");
        pos = t->end;
    }
    if (pos != f->data_size)
        return tr_fail(err, TR_E_ST_LAYOUT, f->path, "%llu unindexed trailing bytes after offset %llu",
                       (unsigned long long)(f->data_size - pos), (unsigned long long)pos);
    return TR_OK;
}

/* Rules 4-13 on a parsed header; fills the tensor table. */
static int parse_header(tr_st_file *f, const uint8_t *hdr, size_t n, tr_error *err)
{
    if (hdr[0] != '{')
        return tr_fail(err, TR_E_ST_HEADER_JSON, f->path, "byte 0: header does not start with '{'");
    size_t bad = tr_utf8_invalid_at(hdr, n);
    if (bad != n)
        return tr_fail(err, TR_E_ST_HEADER_JSON, f->path, "byte %zu: header is not valid UTF-8", bad);
    json_error_t jerr;
    int code;
    json_t *root = tr_json_parse((const char *)hdr, n, TR_E_ST_HEADER_JSON, TR_E_ST_DUPLICATE, &jerr, &code);
    if (!root) {
        if (code == TR_E_NOMEM)
            return tr_fail(err, code, f->path, "out of memory parsing the header");
        return tr_fail(err, code, f->path, "byte %d (line %d, column %d): %s", jerr.position, jerr.line,
                       jerr.column, jerr.text);
    }
    int rc = TR_OK;
    if (!json_is_object(root)) {
        rc = tr_fail(err, TR_E_ST_HEADER_JSON, f->path, "byte 0: header is not a JSON object");
        goto done;
    }
    json_t *meta = json_object_get(root, "__metadata__");
    if (meta && (rc = check_metadata(f->path, meta, err)) != TR_OK)
        goto done;

    size_t ntensors = json_object_size(root) - (meta ? 1 : 0);
    size_t names_bytes = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) names_bytes += strlen(key) + 1;
    f->tensors = tr_calloc(ntensors ? ntensors : 1, sizeof *f->tensors);
    f->by_name = tr_calloc(ntensors ? ntensors : 1, sizeof *f->by_name);
    f->names = tr_malloc(names_bytes);
    if (meta) {
        f->meta_keys = tr_calloc(json_object_size(meta) + 1, sizeof(char *));
        f->meta_values = tr_calloc(json_object_size(meta) + 1, sizeof(char *));
    }
    if (!f->tensors || !f->by_name || !f->names || (meta && (!f->meta_keys || !f->meta_values))) {
        rc = tr_fail(err, TR_E_NOMEM, f->path, "cannot allocate the tensor table");
        goto done;
    }
    if (meta) {
        json_object_foreach(meta, key, val) {
            f->meta_keys[f->meta_count] = tr_strdup(key);
            f->meta_values[f->meta_count] = tr_strdup(json_string_value(val));
            f->meta_count++;
            if (!f->meta_keys[f->meta_count - 1] || !f->meta_values[f->meta_count - 1]) {
                rc = tr_fail(err, TR_E_NOMEM, f->path, "cannot allocate metadata");
                goto done;
            }
        }
    }
    char *np = f->names;
    uint64_t data_start = 8 + f->header_size;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        tr_st_tensor *t = &f->tensors[f->count];
        size_t len = strlen(key) + 1;
        memcpy(np, key, len);
        t->name = np;
        np += len;
        if ((rc = check_entry(f->path, key, val, t, err)) != TR_OK)
            goto done;
        if (t->end > f->data_size) {
            rc = tr_fail(err, TR_E_ST_TRUNCATED, f->path,
                         "tensor \"%s\": data ends at %llu but the data buffer has %llu bytes", key,
                         (unsigned long long)t->end, (unsigned long long)f->data_size);
            goto done;
        }
        t->data = f->base + data_start + t->begin;
        t->aligned = (data_start + t->begin) % tr_dtype_size(t->dtype) == 0;
        f->count++;
    }
    if ((rc = check_layout(f, f->by_name, err)) != TR_OK)
        goto done;
    for (size_t i = 0; i < f->count; i++)
        f->by_name[i] = i;
    qsort_r(f->by_name, f->count, sizeof *f->by_name, cmp_name, f);
done:
    json_decref(root);
    return rc;
}

static int open_common(tr_st_file *f, tr_error *err)
{
    if (f->size < 8)
        return tr_fail(err, TR_E_ST_TRUNCATED, f->path, "file has %zu bytes, fewer than the 8-byte header length",
                       f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | f->base[i];
    if (n < 2 || n > TR_ST_MAX_HEADER)
        return tr_fail(err, TR_E_ST_HEADER_SIZE, f->path, "header length %llu outside [2, 100000000]",
                       (unsigned long long)n);
    if (8 + n > f->size)
        return tr_fail(err, TR_E_ST_TRUNCATED, f->path, "header length %llu exceeds file size %zu",
                       (unsigned long long)n, f->size);
    f->header_size = n;
    f->data_size = f->size - 8 - n;
    return parse_header(f, f->base + 8, (size_t)n, err);
}

static tr_st_file *new_file(const char *label, tr_error *err)
{
    tr_st_file *f = tr_calloc(1, sizeof *f);
    if (f && !(f->path = tr_strdup(label))) {
        tr_dealloc(f);
        f = NULL;
    }
    if (!f)
        tr_fail(err, TR_E_NOMEM, label, "cannot allocate the file handle");
    return f;
}

int tr_st_open(const char *path, tr_st_file **out, tr_error *err)
{
    *out = NULL;
    tr_st_file *f = new_file(path, err);
    if (!f)
        return TR_E_NOMEM;
    int rc = tr_file_map(path, &f->map, err);
    if (rc == TR_OK) {
        f->base = f->map.data;
        f->size = f->map.size;
        rc = open_common(f, err);
    }
    if (rc != TR_OK) {
        tr_st_close(f);
        return rc;
    }
    *out = f;
    return TR_OK;
}

int tr_st_open_buffer(const uint8_t *buf, size_t len, const char *label, tr_st_file **out, tr_error *err)
{
    *out = NULL;
    tr_st_file *f = new_file(label, err);
    if (!f)
        return TR_E_NOMEM;
    f->base = buf;
    f->size = len;
    int rc = open_common(f, err);
    if (rc != TR_OK) {
        tr_st_close(f);
        return rc;
    }
    *out = f;
    return TR_OK;
}

void tr_st_close(tr_st_file *f)
{
    if (!f)
        return;
    tr_file_unmap(&f->map);
    for (size_t i = 0; i < f->meta_count; i++) {
        tr_dealloc(f->meta_keys[i]);
        tr_dealloc(f->meta_values[i]);
    }
    tr_dealloc(f->meta_keys);
    tr_dealloc(f->meta_values);
    tr_dealloc(f->tensors);
    tr_dealloc(f->by_name);
    tr_dealloc(f->names);
    tr_dealloc(f->path);
    tr_dealloc(f);
}

const char *tr_st_path(const tr_st_file *f) { return f->path; }
uint64_t tr_st_header_size(const tr_st_file *f) { return f->header_size; }
uint64_t tr_st_data_size(const tr_st_file *f) { return f->data_size; }
size_t tr_st_count(const tr_st_file *f) { return f->count; }

const tr_st_tensor *tr_st_at(const tr_st_file *f, size_t i) { return i < f->count ? &f->tensors[i] : NULL; }

const tr_st_tensor *tr_st_find(const tr_st_file *f, const char *name)
{
    size_t lo = 0, hi = f->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const tr_st_tensor *t = &f->tensors[f->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0)
            return t;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

size_t tr_st_metadata_count(const tr_st_file *f) { return f->meta_count; }
const char *tr_st_metadata_key(const tr_st_file *f, size_t i) { return i < f->meta_count ? f->meta_keys[i] : NULL; }
const char *tr_st_metadata_value(const tr_st_file *f, size_t i)
{
    return i < f->meta_count ? f->meta_values[i] : NULL;
}

void tr_st_copy_element(const tr_st_tensor *t, uint64_t i, void *dst)
{
    size_t es = tr_dtype_size(t->dtype);
    memcpy(dst, t->data + i * es, es);
}

int tr_st_read_f32(const tr_st_file *f, const tr_st_tensor *t, float *dst, tr_error *err)
{
    switch (t->dtype) {
    case TR_DT_F32:
        memcpy(dst, t->data, t->numel * 4);
        return TR_OK;
    case TR_DT_F16:
    case TR_DT_BF16:
        for (uint64_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, t->data + 2 * i, 2);
            dst[i] = t->dtype == TR_DT_F16 ? tr_f16_to_f32(h) : tr_bf16_to_f32(h);
        }
        return TR_OK;
    default:
        return tr_fail(err, TR_E_DTYPE, f ? f->path : t->name, "%s: dtype %s not allowed (F32, BF16 or F16)",
                       t->name, tr_dtype_name(t->dtype));
    }
}

/* --- writer --- */

typedef struct writer_entry {
    char *name;
    tr_dtype dtype;
    unsigned ndim;
    uint64_t shape[TR_ST_MAX_DIMS];
    uint64_t nbytes;
    const void *data;
} writer_entry;

struct tr_st_writer {
    writer_entry *items;
    size_t count, cap;
    uint64_t data_size;
};

tr_st_writer *tr_st_writer_new(void) { return tr_calloc(1, sizeof(tr_st_writer)); }

int tr_st_writer_add(tr_st_writer *w, const char *name, tr_dtype dtype, unsigned ndim, const uint64_t *shape,
                     const void *data, tr_error *err)
{
    if (ndim > TR_ST_MAX_DIMS || name[0] == '\0' || strcmp(name, "__metadata__") == 0)
        return tr_fail(err, TR_E_INVALID_PARAM, name, "invalid tensor name or rank %u", ndim);
    for (size_t i = 0; i < w->count; i++)
        if (strcmp(w->items[i].name, name) == 0)
            return tr_fail(err, TR_E_TENSOR_DUPLICATE, name, "tensor added twice");
    uint64_t nbytes = tr_dtype_size(dtype);
    for (unsigned d = 0; d < ndim; d++) {
        if (shape[d] != 0 && nbytes > UINT64_MAX / shape[d])
            return tr_fail(err, TR_E_INVALID_PARAM, name, "byte size overflows");
        nbytes *= shape[d];
    }
    if (w->count == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        writer_entry *items = tr_realloc(w->items, cap * sizeof *items);
        if (!items)
            return tr_fail(err, TR_E_NOMEM, name, "cannot grow the writer table");
        w->items = items;
        w->cap = cap;
    }
    writer_entry *e = &w->items[w->count];
    memset(e, 0, sizeof *e);
    if (!(e->name = tr_strdup(name)))
        return tr_fail(err, TR_E_NOMEM, name, "cannot copy the tensor name");
    e->dtype = dtype;
    e->ndim = ndim;
    for (unsigned d = 0; d < ndim; d++)
        e->shape[d] = shape[d];
    e->nbytes = nbytes;
    e->data = data;
    w->count++;
    w->data_size += nbytes;
    return TR_OK;
}

uint64_t tr_st_writer_data_size(const tr_st_writer *w) { return w->data_size; }

/* Element size descending, then name bytewise (FORMAT.md §2.6 writer rule). */
static int cmp_writer(const void *a, const void *b)
{
    const writer_entry *x = a, *y = b;
    size_t sx = tr_dtype_size(x->dtype), sy = tr_dtype_size(y->dtype);
    if (sx != sy)
        return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* jansson's *_set_new / *_append_new take the reference even when they fail (the value is freed), so every
 * container is handed to its parent as soon as it exists and never released here again; a failure anywhere only
 * sets bad, and the one json_decref(root) at the end frees whatever was built. */
static char *writer_header(tr_st_writer *w, size_t *len)
{
    unsigned long mark = tr_json_mark();
    json_t *root = json_object();
    json_t *meta = json_object();
    int bad = json_object_set_new(root, "__metadata__", meta);   /* consumes meta (root NULL: frees it) */
    bad = bad || json_object_set_new(meta, "format", json_string("pt"));
    uint64_t off = 0;
    for (size_t i = 0; !bad && i < w->count; i++) {
        writer_entry *e = &w->items[i];
        json_t *ent = json_object(), *shape = json_array(), *offs = json_array();
        int r1 = json_object_set_new(ent, "dtype", json_string(tr_dtype_name(e->dtype)));   /* each call consumes */
        int r2 = json_object_set_new(ent, "shape", shape);                                  /* its value */
        int r3 = json_object_set_new(ent, "data_offsets", offs);
        bad = json_object_set_new(root, e->name, ent) || r1 || r2 || r3;
        for (unsigned d = 0; !bad && d < e->ndim; d++)
            bad = json_array_append_new(shape, json_integer((json_int_t)e->shape[d]));
        bad = bad || json_array_append_new(offs, json_integer((json_int_t)off)) ||
              json_array_append_new(offs, json_integer((json_int_t)(off + e->nbytes)));
        off += e->nbytes;
    }
    char *text = bad ? NULL : tr_json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER, mark);
    json_decref(root);
    if (!text)
        return NULL;
    size_t n = strlen(text);
    size_t padded = (8 + n + 7) / 8 * 8 - 8;
    char *out = tr_malloc(padded);
    if (out) {
        memcpy(out, text, n);
        memset(out + n, ' ', padded - n);
        *len = padded;
    }
    tr_dealloc(text);   /* jansson allocated it through tr_malloc (json_set_alloc_funcs in alloc.c) */
    return out;
}

int tr_st_writer_write(tr_st_writer *w, const char *path, tr_error *err)
{
    if (w->count > 1)
        qsort(w->items, w->count, sizeof *w->items, cmp_writer);
    size_t hlen = 0;
    char *hdr = writer_header(w, &hlen);
    if (!hdr)
        return tr_fail(err, TR_E_NOMEM, path, "cannot build the header");
    uint8_t lenbytes[8];
    for (int i = 0; i < 8; i++)
        lenbytes[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    tr_file_out out;
    int rc = tr_file_out_open(&out, path, err);
    if (rc == TR_OK) {
        tr_file_out_put(&out, lenbytes, 8);
        tr_file_out_put(&out, hdr, hlen);
        for (size_t i = 0; i < w->count; i++)
            tr_file_out_put(&out, w->items[i].data, (size_t)w->items[i].nbytes);
        rc = tr_file_out_close(&out, err);
    }
    tr_dealloc(hdr);
    return rc;
}

void tr_st_writer_free(tr_st_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->count; i++)
        tr_dealloc(w->items[i].name);
    tr_dealloc(w->items);
    tr_dealloc(w);
}
