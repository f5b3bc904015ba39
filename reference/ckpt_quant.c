/*
 * ckpt_quant.c — the quantized half of the checkpoint reader: quantization_index.json (FORMAT.md §3.2), trellis v2
 * layer folders (§2.4), and discovery + validation of quantized linears (§3.1, §3.3, §3.7).
 */
#include "ckpt_internal.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/pack.h"

#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const component_suffix[4] = {"__indices", "__scales", "__su", "__sv"};

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && memcmp(s + a - b, suffix, b) == 0;
}

/* 0..3 for a key ending in __indices/__scales/__su/__sv, else -1. */
static int component_kind(const char *name)
{
    for (int k = 0; k < 4; k++)
        if (ends_with(name, component_suffix[k]) && strlen(name) > strlen(component_suffix[k]))
            return k;
    return -1;
}

int ckpt_quant_component(const char *name) { return component_kind(name) >= 0; }

/* ---- quantization_index.json / v2 tensors[] entries ------------------------------------------------------------ */

void ckpt_qindex_free(ckpt_qindex *q)
{
    for (size_t i = 0; i < q->n; i++) {
        tr_dealloc(q->v[i].name);
        tr_dealloc(q->v[i].source);
    }
    tr_dealloc(q->v);
    q->v = NULL;
    q->n = q->cap = 0;
}

static int positive_u32(const json_t *v, uint32_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 0x7FFFFFFF)
        return -1;
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

static ckpt_qmeta *find_meta(ckpt_qindex *q, const char *name)
{
    for (size_t i = 0; i < q->n; i++)
        if (strcmp(q->v[i].name, name) == 0)
            return &q->v[i];
    return NULL;
}

/* Parse one entry (field names it in messages, e.g. "layers[3]").  A name without ".weight" gets it appended. */
static int parse_meta(const json_t *e, const char *path, const char *field, ckpt_qmeta *m, tr_error *err)
{
    memset(m, 0, sizeof *m);
    if (!json_is_object(e))
        return tr_fail(err, TR_E_INDEX_JSON, path, "%s is not an object", field);
    json_t *name = json_object_get(e, "name"), *shape = json_object_get(e, "shape");
    json_t *bits = json_object_get(e, "bits"), *rot = json_object_get(e, "rotation");
    if (!json_is_string(name) || !json_string_value(name)[0])
        return tr_fail(err, TR_E_INDEX_JSON, path, "%s.name is %s", field, name ? "not a non-empty string"
                                                                                : "missing");
    if (shape && (!json_is_array(shape) || json_array_size(shape) != 2 ||
                  positive_u32(json_array_get(shape, 0), &m->O) || positive_u32(json_array_get(shape, 1), &m->I)))
        return tr_fail(err, TR_E_INDEX_JSON, path, "%s.shape is not [O, I] with positive integers", field);
    if (bits && !json_is_integer(bits))
        return tr_fail(err, TR_E_INDEX_JSON, path, "%s.bits is not an integer", field);
    if (rot && !json_is_string(rot))
        return tr_fail(err, TR_E_INDEX_JSON, path, "%s.rotation is not a string", field);
    if (rot && tr_rotation_parse(json_string_value(rot), &m->rotation) != 0)
        return tr_fail(err, TR_E_UNSUPPORTED, path, "%s.rotation \"%s\" is not supported (none, hadamard128)",
                       field, json_string_value(rot));
    m->has_shape = shape != NULL;
    m->has_bits = bits != NULL;
    m->bits = bits ? (long)json_integer_value(bits) : -1;
    m->has_rotation = rot != NULL;
    const char *n = json_string_value(name);
    size_t len = strlen(n);
    int add = !ends_with(n, ".weight");
    m->name = tr_malloc(len + (add ? 8 : 0) + 1);
    m->source = tr_strdup(path);
    if (!m->name || !m->source) {
        tr_dealloc(m->name);
        tr_dealloc(m->source);
        return tr_fail(err, TR_E_NOMEM, path, "out of memory");
    }
    memcpy(m->name, n, len + 1);
    if (add)
        strcat(m->name, ".weight");
    return TR_OK;
}

static int push_meta(ckpt_qindex *q, ckpt_qmeta *m, const char *path, tr_error *err)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? 2 * q->cap : 32;
        ckpt_qmeta *v = tr_realloc(q->v, cap * sizeof *v);
        if (!v) {
            tr_dealloc(m->name);
            tr_dealloc(m->source);
            return tr_fail(err, TR_E_NOMEM, path, "out of memory");
        }
        q->v = v;
        q->cap = cap;
    }
    q->v[q->n++] = *m;
    return TR_OK;
}

int ckpt_read_qindex_root(tr_ckpt *c, tr_error *err)
{
    c->qindex.rotation = TR_ROT_NONE;
    char *path = tr_path_join(c->dir, "quantization_index.json");
    if (!path)
        return tr_fail(err, TR_E_NOMEM, c->dir, "out of memory");
    json_t *root = NULL;
    int rc = TR_OK;
    if (!tr_path_is_file(path))
        goto done;                      /* behaves as {} */
    if ((rc = tr_json_load_object(path, TR_E_INDEX_JSON, &root, err)) != TR_OK)
        goto done;
    json_t *fmt = json_object_get(root, "format"), *gs = json_object_get(root, "group_size");
    json_t *cb = json_object_get(root, "codebook"), *rot = json_object_get(root, "rotation");
    json_t *layers = json_object_get(root, "layers");
    if ((fmt && !json_is_string(fmt)) || (cb && !json_is_string(cb)) || (rot && !json_is_string(rot))) {
        rc = tr_fail(err, TR_E_INDEX_JSON, path, "%s is not a string",
                     fmt && !json_is_string(fmt) ? "format" : cb && !json_is_string(cb) ? "codebook" : "rotation");
        goto done;
    }
    if (fmt && strcmp(json_string_value(fmt), "trellis_v3") && strcmp(json_string_value(fmt), "trellis_v2")) {
        rc = tr_fail(err, TR_E_UNSUPPORTED, path, "format \"%s\" is not supported (trellis_v3, trellis_v2)",
                     json_string_value(fmt));
        goto done;
    }
    if (gs && positive_u32(gs, &c->qindex.group_size)) {
        rc = tr_fail(err, TR_E_INDEX_JSON, path, "group_size is not an integer >= 1");
        goto done;
    }
    if (cb && strcmp(json_string_value(cb), "grid")) {
        rc = tr_fail(err, TR_E_UNSUPPORTED, path, "codebook \"%s\" is not supported (grid)", json_string_value(cb));
        goto done;
    }
    if (rot && tr_rotation_parse(json_string_value(rot), &c->qindex.rotation)) {
        rc = tr_fail(err, TR_E_UNSUPPORTED, path, "rotation \"%s\" is not supported (none, hadamard128)",
                     json_string_value(rot));
        goto done;
    }
    if (layers && !json_is_array(layers)) {
        rc = tr_fail(err, TR_E_INDEX_JSON, path, "layers is not an array");
        goto done;
    }
    for (size_t i = 0; layers && i < json_array_size(layers); i++) {
        char field[64];
        snprintf(field, sizeof field, "layers[%zu]", i);
        ckpt_qmeta m;
        if ((rc = parse_meta(json_array_get(layers, i), path, field, &m, err)) != TR_OK)
            goto done;
        if (find_meta(&c->qindex, m.name)) {
            rc = tr_fail(err, TR_E_INDEX_JSON, path, "%s.name \"%s\" appears twice", field, m.name);
            tr_dealloc(m.name);
            tr_dealloc(m.source);
            goto done;
        }
        if ((rc = push_meta(&c->qindex, &m, path, err)) != TR_OK)
            goto done;
    }
done:
    json_decref(root);
    tr_dealloc(path);
    return rc;
}

/* ---- trellis v2 (FORMAT.md §2.4) -------------------------------------------------------------------------------- */

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sorted names in dir matching prefix*suffix (or, with digits_only, "layer_" + digits).  Caller frees. */
static int list_dir(const char *dir, const char *prefix, const char *suffix, int digits_only, char ***out,
                    size_t *n, tr_error *err)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return tr_fail(err, TR_E_IO, dir, "cannot list directory");
    char **v = NULL;
    size_t cap = 0;
    struct dirent *e;
    int rc = TR_OK;
    while ((e = readdir(d)) != NULL) {
        const char *nm = e->d_name;
        size_t lp = strlen(prefix);
        if (strncmp(nm, prefix, lp) != 0 || !ends_with(nm, suffix) || strlen(nm) <= lp + strlen(suffix) - 0)
            continue;
        if (digits_only) {
            size_t k = lp;
            while (nm[k] >= '0' && nm[k] <= '9')
                k++;
            if (k == lp || nm[k])
                continue;
        }
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **nv = tr_realloc(v, cap * sizeof *nv);
            if (!nv) {
                rc = tr_fail(err, TR_E_NOMEM, dir, "out of memory");
                break;
            }
            v = nv;
        }
        if (!(v[*n] = tr_strdup(nm))) {
            rc = tr_fail(err, TR_E_NOMEM, dir, "out of memory");
            break;
        }
        (*n)++;
    }
    closedir(d);
    if (rc != TR_OK) {
        for (size_t i = 0; i < *n; i++)
            tr_dealloc(v[i]);
        tr_dealloc(v);
        *n = 0;
        return rc;
    }
    if (*n)
        qsort(v, *n, sizeof *v, cmp_cstr);
    *out = v;
    return TR_OK;
}

static void free_list(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        tr_dealloc(v[i]);
    tr_dealloc(v);
}

/* Merge a v2 tensors[] entry with the root quantization_index.json entry of the same name. */
static int merge_v2_meta(tr_ckpt *c, ckpt_qmeta *m, tr_error *err)
{
    ckpt_qmeta *root = find_meta(&c->qindex, m->name);
    if (!root)
        return push_meta(&c->qindex, m, m->source, err);
    int rc = TR_OK;
    if (m->has_shape && root->has_shape && (m->O != root->O || m->I != root->I))
        rc = tr_fail(err, TR_E_SHAPE, m->source, "%s: shape [%u,%u] disagrees with [%u,%u] in %s", m->name, m->O,
                     m->I, root->O, root->I, root->source);
    else if (m->has_bits && root->has_bits && m->bits != root->bits)
        rc = ckpt_warn(c, err, TR_W_BITS_MISMATCH, m->source, "%s: bits %ld disagree with %ld in %s", m->name,
                       m->bits, root->bits, root->source);
    if (rc == TR_OK) {   /* the layer index is the primary record: its values win */
        if (m->has_shape) {
            root->has_shape = 1;
            root->O = m->O;
            root->I = m->I;
        }
        if (m->has_bits) {
            root->has_bits = 1;
            root->bits = m->bits;
        }
        if (m->has_rotation) {
            root->has_rotation = 1;
            root->rotation = m->rotation;
        }
    }
    tr_dealloc(m->name);
    tr_dealloc(m->source);
    return rc;
}

static int open_layer_files(tr_ckpt *c, const char *ldir, json_t *shards, const char *ipath, tr_error *err)
{
    char **names = NULL;
    size_t n = 0;
    int rc = TR_OK;
    if (shards) {
        if (!json_is_array(shards))
            return tr_fail(err, TR_E_INDEX_JSON, ipath, "shards is not an array");
        names = tr_calloc(json_array_size(shards) + 1, sizeof *names);
        if (!names)
            return tr_fail(err, TR_E_NOMEM, ipath, "out of memory");
        for (size_t i = 0; i < json_array_size(shards); i++) {
            json_t *f = json_object_get(json_array_get(shards, i), "file");
            if (!json_is_string(f)) {
                rc = tr_fail(err, TR_E_INDEX_JSON, ipath, "shards[%zu].file is not a string", i);
                break;
            }
            const char *s = json_string_value(f);
            if (!s[0] || strchr(s, '/') || strchr(s, '\\') || !strcmp(s, ".") || !strcmp(s, "..")) {
                rc = tr_fail(err, TR_E_INDEX_PATH, ipath, "shards[%zu].file \"%s\" is not a plain file name", i, s);
                break;
            }
            if (!(names[n++] = tr_strdup(s))) {
                rc = tr_fail(err, TR_E_NOMEM, ipath, "out of memory");
                break;
            }
        }
    } else {
        rc = list_dir(ldir, "tensor_", ".safetensors", 0, &names, &n, err);
        if (rc == TR_OK && n == 0) {
            tr_dealloc(names);
            rc = list_dir(ldir, "batch_", ".safetensors", 0, &names, &n, err);
        }
    }
    for (size_t i = 0; rc == TR_OK && i < n; i++) {
        char *p = tr_path_join(ldir, names[i]);
        size_t idx;
        if (!p)
            rc = tr_fail(err, TR_E_NOMEM, ldir, "out of memory");
        else if (!tr_path_is_file(p))
            rc = tr_fail(err, TR_E_IO, p, "file named by %s does not exist", ipath);
        else
            rc = ckpt_open_file(c, p, &idx, err);
        if (rc == TR_OK)
            rc = ckpt_catalog_add_file(c, &c->primary, idx, err);
        tr_dealloc(p);
    }
    free_list(names, n);
    return rc;
}

static int load_v2_layer(tr_ckpt *c, const char *ldir, tr_error *err)
{
    char *ipath = tr_path_join(ldir, "index.json");
    if (!ipath)
        return tr_fail(err, TR_E_NOMEM, ldir, "out of memory");
    json_t *root = NULL;
    int rc = tr_json_load_object(ipath, TR_E_INDEX_JSON, &root, err);
    if (rc != TR_OK)
        goto done;
    json_t *fmt = json_object_get(root, "format"), *lidx = json_object_get(root, "layer_idx");
    json_t *tensors = json_object_get(root, "tensors");
    if (fmt && !json_is_string(fmt))
        rc = tr_fail(err, TR_E_INDEX_JSON, ipath, "format is not a string");
    else if (fmt && strcmp(json_string_value(fmt), "trellis_v2"))
        rc = tr_fail(err, TR_E_UNSUPPORTED, ipath, "format \"%s\" is not supported here (trellis_v2)",
                     json_string_value(fmt));
    else if (!json_is_integer(lidx) || json_integer_value(lidx) < 0)
        rc = tr_fail(err, TR_E_INDEX_JSON, ipath, "layer_idx is %s", lidx ? "not a non-negative integer"
                                                                          : "missing");
    else if (!json_is_array(tensors))
        rc = tr_fail(err, TR_E_INDEX_JSON, ipath, "tensors is %s", tensors ? "not an array" : "missing");
    for (size_t i = 0; rc == TR_OK && i < json_array_size(tensors); i++) {
        char field[64];
        snprintf(field, sizeof field, "tensors[%zu]", i);
        ckpt_qmeta m;
        if ((rc = parse_meta(json_array_get(tensors, i), ipath, field, &m, err)) == TR_OK)
            rc = merge_v2_meta(c, &m, err);
    }
    if (rc == TR_OK)
        rc = open_layer_files(c, ldir, json_object_get(root, "shards"), ipath, err);
done:
    json_decref(root);
    tr_dealloc(ipath);
    return rc;
}

int ckpt_load_v2(tr_ckpt *c, tr_error *err)
{
    char **layers = NULL;
    size_t n = 0;
    int rc = list_dir(c->dir, "layer_", "", 1, &layers, &n, err);
    for (size_t i = 0; rc == TR_OK && i < n; i++) {
        char *ldir = tr_path_join(c->dir, layers[i]);
        char *ipath = ldir ? tr_path_join(ldir, "index.json") : NULL;
        if (!ipath)
            rc = tr_fail(err, TR_E_NOMEM, c->dir, "out of memory");
        else if (tr_path_is_file(ipath))
            rc = load_v2_layer(c, ldir, err);
        tr_dealloc(ipath);
        tr_dealloc(ldir);
    }
    free_list(layers, n);
    if (rc == TR_OK)
        rc = ckpt_catalog_seal(c, &c->primary, err);
    return rc;
}

/* ---- quantized linears -------------------------------------------------------------------------------------------- */

typedef struct qcomp {
    char *base;                 /* key base B */
    int kind;                   /* 0 indices, 1 scales, 2 su, 3 sv */
    const ckpt_entry *e;
} qcomp;

typedef struct qgroup {
    char *base, *name;          /* B and its dotted name */
    const ckpt_entry *e[4];
} qgroup;

static int cmp_qcomp(const void *a, const void *b)
{
    const qcomp *x = a, *y = b;
    int r = strcmp(x->base, y->base);
    return r ? r : x->kind - y->kind;
}

static int cmp_qgroup_name(const void *a, const void *b)
{
    return strcmp(((const qgroup *)a)->name, ((const qgroup *)b)->name);
}

/* Writing order (FORMAT.md §3.2): non-layer names first, then layers ascending, lm_head last; names bytewise. */
static long order_class(const char *name)
{
    if (strncmp(name, "lm_head", 7) == 0)
        return 0x7FFFFFFF;
    return ckpt_layer_of(name);
}

static int cmp_qlinear(const void *a, const void *b)
{
    const tr_qlinear *x = a, *y = b;
    long lx = order_class(x->name), ly = order_class(y->name);
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* float32 view of a F32 tensor: the mapping itself when aligned, else an owned aligned copy. */
static int f32_view(tr_ckpt *c, const tr_st_tensor *t, const float **out, tr_error *err)
{
    if (t->aligned) {
        *out = (const float *)(const void *)t->data;
        return TR_OK;
    }
    if (c->nowned == c->capowned) {
        size_t cap = c->capowned ? 2 * c->capowned : 64;
        float **v = tr_realloc(c->owned, cap * sizeof *v);
        if (!v)
            return tr_fail(err, TR_E_NOMEM, t->name, "out of memory");
        c->owned = v;
        c->capowned = cap;
    }
    float *copy = tr_malloc_aligned((size_t)t->numel * sizeof(float));
    if (!copy)
        return tr_fail(err, TR_E_NOMEM, t->name, "out of memory");
    memcpy(copy, t->data, (size_t)t->numel * sizeof(float));
    c->owned[c->nowned++] = copy;
    *out = copy;
    return TR_OK;
}

/* Non-finite check (FORMAT.md §3.7) and the value warnings TR_W_SIGNS / TR_W_SCALES. */
static int check_values(tr_ckpt *c, const char *path, const char *key, const float *v, uint64_t n, int is_scale,
                        tr_error *err)
{
    uint64_t odd = 0, first_odd = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (!isfinite(v[i])) {
            if (!c->allow_nonfinite)
                return tr_fail(err, TR_E_NONFINITE, path, "%s: element %llu is %s", key, (unsigned long long)i,
                               isnan(v[i]) ? "NaN" : v[i] > 0 ? "+Inf" : "-Inf");
            continue;
        }
        int bad = is_scale ? !(v[i] > 0.0f) : (v[i] != 1.0f && v[i] != -1.0f);
        if (bad && !odd++)
            first_odd = i;
    }
    if (odd)
        return ckpt_warn(c, err, is_scale ? TR_W_SCALES : TR_W_SIGNS, path, "%s: %llu elements %s (first at %llu)",
                         key, (unsigned long long)odd, is_scale ? "are <= 0" : "are not +1/-1",
                         (unsigned long long)first_odd);
    return TR_OK;
}

static const ckpt_qmeta *lookup_meta(tr_ckpt *c, const char *name)
{
    ckpt_qmeta *m = find_meta(&c->qindex, name);
    if (m)
        m->used = 1;
    return m;
}

/* Validate one group of four tensors and fill q (FORMAT.md §3.1, §3.3, §3.7). */
static int build_one(tr_ckpt *c, const qgroup *g, tr_qlinear *q, tr_error *err)
{
    const tr_st_tensor *ti = g->e[0]->t, *ts = g->e[1]->t, *tu = g->e[2]->t, *tv = g->e[3]->t;
    const char *path = c->files[g->e[0]->file].path;
    const tr_st_tensor *comp[4] = {ti, ts, tu, tv};
    for (int k = 0; k < 4; k++) {
        tr_dtype want = k == 0 ? TR_DT_U8 : TR_DT_F32;
        if (comp[k]->dtype != want)
            return tr_fail(err, TR_E_DTYPE, c->files[g->e[k]->file].path, "%s: dtype %s, expected %s",
                           comp[k]->name, tr_dtype_name(comp[k]->dtype), tr_dtype_name(want));
    }
    if (ti->ndim != 1)
        return tr_fail(err, TR_E_SHAPE, path, "%s: %u-D, expected 1-D", ti->name, ti->ndim);
    if (tu->ndim != 1 || tv->ndim != 1)
        return tr_fail(err, TR_E_SHAPE, c->files[g->e[tu->ndim != 1 ? 2 : 3]->file].path, "%s: %u-D, expected 1-D",
                       tu->ndim != 1 ? tu->name : tv->name, tu->ndim != 1 ? tu->ndim : tv->ndim);
    if (ts->ndim != 2)
        return tr_fail(err, TR_E_SHAPE, c->files[g->e[1]->file].path, "%s: %u-D, expected [G, O]", ts->name,
                       ts->ndim);
    const ckpt_qmeta *m = lookup_meta(c, g->name);
    uint64_t O = tv->shape[0], I = tu->shape[0];
    if (m && m->has_shape && (m->O != O || m->I != I))
        return tr_fail(err, TR_E_SHAPE, path, "%s: metadata shape [%u,%u] disagrees with len(sv) = %llu, len(su) = "
                       "%llu", g->name, m->O, m->I, (unsigned long long)O, (unsigned long long)I);
    if (O == 0 || I == 0 || O > 0x7FFFFFFF || I > 0x7FFFFFFF)
        return tr_fail(err, TR_E_SHAPE, path, "%s: shape [%llu,%llu] is empty or too large", g->name,
                       (unsigned long long)O, (unsigned long long)I);
    if (ts->shape[1] != O)
        return tr_fail(err, TR_E_SHAPE, c->files[g->e[1]->file].path, "%s: shape [%llu,%llu], expected [G,%llu]",
                       ts->name, (unsigned long long)ts->shape[0], (unsigned long long)ts->shape[1],
                       (unsigned long long)O);
    if (ti->numel < 1)
        return tr_fail(err, TR_E_QSIZE, path, "%s: empty, expected 1 + %llu bytes", ti->name,
                       (unsigned long long)tr_packed_body_bytes((uint32_t)O, (uint32_t)I, 2));

    q->w.O = (uint32_t)O;
    q->w.I = (uint32_t)I;
    q->w.indices = ti->data;
    q->w.indices_len = ti->numel;
    q->w.bits = ti->data[0];
    q->w.G = (uint32_t)(ts->shape[0] > 0xFFFFFFFFu ? 0xFFFFFFFFu : ts->shape[0]);
    q->w.rotation = m && m->has_rotation ? m->rotation : c->qindex.rotation;
    /* meta_bits keeps the layers[] value only when an int holds it; the mismatch test below uses the value as read
     * (a cast truncated 2^32 + 4 to 4 and a negative value read as "absent": both lost their TR_W_BITS_MISMATCH). */
    q->meta_bits = m && m->has_bits && m->bits >= 0 && m->bits <= INT_MAX ? (int)m->bits : -1;
    q->has_meta = m != NULL;
    q->file = path;
    q->bytes = (ti->end - ti->begin) + (ts->end - ts->begin) + (tu->end - tu->begin) + (tv->end - tv->begin);

    /* group size: the file's, or inferred from G (FORMAT.md §3.2) */
    uint32_t G = q->w.G, gs = c->qindex.group_size, Iu = (uint32_t)I;
    if (gs == 0) {
        gs = 128;
        if (G == (Iu + 127) / 128) {
            /* the default holds */
        } else if (G >= 1 && G <= Iu && (Iu + (Iu + G - 1) / G - 1) / ((Iu + G - 1) / G) == G) {
            gs = (Iu + G - 1) / G;
            int rc = ckpt_warn(c, err, TR_W_GROUP_SIZE, c->files[g->e[1]->file].path,
                               "%s: group size %u inferred from %u scale groups over I=%u", ts->name, gs, G, Iu);
            if (rc != TR_OK)
                return rc;
        } else
            gs = 0;
    }
    q->w.gs = gs;
    if (gs == 0 || G != (Iu + gs - 1) / gs) {
        uint32_t shown = gs ? gs : 128;
        return tr_fail(err, TR_E_QGROUP, c->files[g->e[1]->file].path, "%s: shape [%u,%u], expected [%u,%u] for I=%u,"
                       " group size %u", ts->name, G, q->w.O, (Iu + shown - 1) / shown, q->w.O, Iu, shown);
    }

    int rc = tr_qweight_check(&q->w, path, g->base, err);
    if (rc != TR_OK)
        return rc;
    if (m && m->has_bits && m->bits != (long)q->w.bits)
        rc = ckpt_warn(c, err, TR_W_BITS_MISMATCH, path, "%s: header byte says %u bits, metadata says %ld "
                       "(the header wins)", ti->name, q->w.bits, m->bits);
    if (rc == TR_OK)
        rc = f32_view(c, ts, &q->w.scales, err);
    if (rc == TR_OK)
        rc = f32_view(c, tu, &q->w.su, err);
    if (rc == TR_OK)
        rc = f32_view(c, tv, &q->w.sv, err);
    if (rc == TR_OK)
        rc = check_values(c, c->files[g->e[1]->file].path, ts->name, q->w.scales, ts->numel, 1, err);
    if (rc == TR_OK)
        rc = check_values(c, c->files[g->e[2]->file].path, tu->name, q->w.su, tu->numel, 0, err);
    if (rc == TR_OK)
        rc = check_values(c, c->files[g->e[3]->file].path, tv->name, q->w.sv, tv->numel, 0, err);
    return rc;
}

static void free_groups(qcomp *comps, size_t nc, qgroup *groups, size_t ng)
{
    for (size_t i = 0; i < nc; i++)
        tr_dealloc(comps[i].base);
    tr_dealloc(comps);
    for (size_t i = 0; i < ng; i++) {
        tr_dealloc(groups[i].base);
        tr_dealloc(groups[i].name);
    }
    tr_dealloc(groups);
}

/* Collect the component keys of the primary catalog, grouped by key base B. */
static int collect_groups(tr_ckpt *c, qcomp **pcomps, size_t *pnc, qgroup **pgroups, size_t *png, tr_error *err)
{
    size_t n = c->primary.n, nc = 0, ng = 0;
    qcomp *comps = tr_calloc(n + 1, sizeof *comps);
    qgroup *groups = tr_calloc(n + 1, sizeof *groups);
    *pcomps = comps;
    *pgroups = groups;
    if (!comps || !groups)
        return tr_fail(err, TR_E_NOMEM, c->dir, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const char *name = c->primary.v[i].t->name;
        int k = component_kind(name);
        if (k < 0) {
            static const char *const dotted[] = {".weight.indices", ".weight.scales", ".weight.su", ".weight.sv"};
            for (int d = 0; d < 4; d++)
                if (ends_with(name, dotted[d])) {
                    int rc = ckpt_warn(c, err, TR_W_UNRECOGNIZED, c->files[c->primary.v[i].file].path,
                                       "%s: dotted component keys are not recognised (use B__indices etc.)", name);
                    if (rc != TR_OK)
                        return rc;
                }
            continue;
        }
        comps[nc].kind = k;
        comps[nc].e = &c->primary.v[i];
        comps[nc].base = tr_strndup(name, strlen(name) - strlen(component_suffix[k]));
        if (!comps[nc++].base)
            return tr_fail(err, TR_E_NOMEM, c->dir, "out of memory");
        *pnc = nc;
    }
    qsort(comps, nc, sizeof *comps, cmp_qcomp);
    for (size_t i = 0; i < nc;) {
        qgroup *g = &groups[ng];
        size_t j = i;
        for (; j < nc && strcmp(comps[j].base, comps[i].base) == 0; j++)
            g->e[comps[j].kind] = comps[j].e;
        g->base = tr_strdup(comps[i].base);
        g->name = tr_name_from_key_base(comps[i].base);
        ng++;
        *png = ng;
        if (!g->base || !g->name)
            return tr_fail(err, TR_E_NOMEM, c->dir, "out of memory");
        for (int k = 0; k < 4; k++)
            if (!g->e[k]) {
                const ckpt_entry *any = g->e[0] ? g->e[0] : g->e[1] ? g->e[1] : g->e[2] ? g->e[2] : g->e[3];
                return tr_fail(err, TR_E_TENSOR_MISSING, c->files[any->file].path, "%s%s: missing (the other "
                               "components of %s exist)", g->base, component_suffix[k], g->name);
            }
        i = j;
    }
    /* both spellings of one weight (with and without "__weight") */
    qsort(groups, ng, sizeof *groups, cmp_qgroup_name);
    for (size_t i = 1; i < ng; i++)
        if (strcmp(groups[i].name, groups[i - 1].name) == 0)
            return tr_fail(err, TR_E_TENSOR_DUPLICATE, c->files[groups[i].e[0]->file].path,
                           "%s is stored twice, as %s__* and %s__*", groups[i].name, groups[i - 1].base,
                           groups[i].base);
    return TR_OK;
}

int ckpt_build_qlinears(tr_ckpt *c, tr_error *err)
{
    qcomp *comps = NULL;
    qgroup *groups = NULL;
    size_t nc = 0, ng = 0;
    int rc = collect_groups(c, &comps, &nc, &groups, &ng, err);
    if (rc == TR_OK && !(c->q = tr_calloc(ng + 1, sizeof *c->q)))
        rc = tr_fail(err, TR_E_NOMEM, c->dir, "out of memory");
    for (size_t i = 0; rc == TR_OK && i < ng; i++) {
        qgroup *g = &groups[i];
        if (ckpt_ignored(c, g->name))
            continue;
        if (ends_with(g->name, ".mlp.gate.weight")) {
            lookup_meta(c, g->name);
            rc = ckpt_warn(c, err, TR_W_QUANTIZED_ROUTER, c->files[g->e[0]->file].path,
                           "%s: quantized router ignored; the float router is used", g->name);
            continue;
        }
        tr_qlinear *q = &c->q[c->nq];
        memset(q, 0, sizeof *q);
        rc = build_one(c, g, q, err);
        if (rc == TR_OK) {   /* ownership of the names moves to the qlinear */
            q->name = g->name;
            q->key_base = g->base;
            g->name = g->base = NULL;
            c->nq++;
        }
    }
    free_groups(comps, nc, groups, ng);
    if (rc != TR_OK)
        return rc;
    qsort(c->q, c->nq, sizeof *c->q, cmp_qlinear);
    for (size_t i = 0; i < c->nq && rc == TR_OK; i++)
        if (!c->q[i].has_meta)
            rc = ckpt_warn(c, err, TR_W_NO_QMETA, c->q[i].file, "%s: no quantization_index.json entry",
                           c->q[i].name);
    for (size_t i = 0; i < c->qindex.n && rc == TR_OK; i++)
        if (!c->qindex.v[i].used && !ckpt_ignored(c, c->qindex.v[i].name))
            rc = ckpt_warn(c, err, TR_W_NO_TENSORS, c->qindex.v[i].source, "%s: listed but no tensors found",
                           c->qindex.v[i].name);
    return rc;
}
