/*
 * v3_writer.c — the deterministic trellis v3 writer (FORMAT.md §2.3, §3.1, §3.2).
 *
 * Linears are declared first, then sorted into writing order (layers ascending, names bytewise within a layer,
 * lm_head last); shards are assigned greedily in that order (a new shard starts when the next linear would push the
 * current one over the limit; one linear never splits).  Data then arrives linear by linear in the same order and each
 * shard is written as soon as its last linear arrives, so memory holds one shard at a time.
 */
#include "trellis/alloc.h"
#include "trellis/checkpoint.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/pack.h"

#include "ckpt_internal.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct wlinear {
    char *name;
    uint32_t O, I, G;
    unsigned bits;
    tr_rotation rotation;
    uint64_t bytes;
    unsigned shard;            /* 1-based */
} wlinear;

typedef struct wmapped {
    char *name;                /* tensor key */
    const char *file;          /* shard file name (static storage of the writer) */
    uint64_t bytes;
} wmapped;

struct tr_v3_writer {
    char *dir;
    tr_v3_options opt;
    wlinear *lin;
    size_t n, cap, next;
    int begun;
    unsigned nshards;
    char (*shard_names)[40];
    tr_st_writer *shard;       /* the shard being filled */
    void **bufs;               /* copies held until the shard is written */
    size_t nbufs, capbufs;
    tr_st_writer *base;
    void **basebufs;
    size_t nbase, capbase;
    wmapped *map;
    size_t nmap, capmap;
};

static long order_class(const char *name)
{
    if (strncmp(name, "lm_head", 7) == 0)
        return 0x7FFFFFFF;
    return ckpt_layer_of(name);
}

static int cmp_wlinear(const void *a, const void *b)
{
    const wlinear *x = a, *y = b;
    long lx = order_class(x->name), ly = order_class(y->name);
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return strcmp(x->name, y->name);
}

int tr_v3_writer_new(const char *dir, const tr_v3_options *opt, tr_v3_writer **out, tr_error *err)
{
    *out = NULL;
    int rc = tr_mkdir_p(dir, err);
    if (rc != TR_OK)
        return rc;
    tr_v3_writer *w = tr_calloc(1, sizeof *w);
    if (!w || !(w->dir = tr_strdup(dir)) || !(w->base = tr_st_writer_new())) {
        tr_v3_writer_free(w);
        return tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    }
    if (opt)
        w->opt = *opt;
    if (w->opt.shard_limit == 0)
        w->opt.shard_limit = UINT64_C(2147483648);
    if (w->opt.group_size == 0)
        w->opt.group_size = 128;
    *out = w;
    return TR_OK;
}

static uint64_t linear_bytes(uint32_t O, uint32_t I, unsigned bits, uint32_t G)
{
    return 1 + tr_packed_body_bytes(O, I, bits) + 4 * ((uint64_t)G * O + I + O);
}

int tr_v3_writer_declare(tr_v3_writer *w, const char *name, uint32_t O, uint32_t I, unsigned bits, uint32_t G,
                         tr_rotation rotation, tr_error *err)
{
    if (w->begun)
        return tr_fail(err, TR_E_INVALID_PARAM, name, "declared after data was put");
    if (bits < 2 || bits > 8 || O == 0 || I == 0 || G == 0)
        return tr_fail(err, TR_E_INVALID_PARAM, name, "invalid linear [%u,%u] bits %u G %u", O, I, bits, G);
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->lin[i].name, name) == 0)
            return tr_fail(err, TR_E_TENSOR_DUPLICATE, name, "declared twice");
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        wlinear *v = tr_realloc(w->lin, cap * sizeof *v);
        if (!v)
            return tr_fail(err, TR_E_NOMEM, name, "out of memory");
        w->lin = v;
        w->cap = cap;
    }
    wlinear *l = &w->lin[w->n];
    memset(l, 0, sizeof *l);
    if (!(l->name = tr_strdup(name)))
        return tr_fail(err, TR_E_NOMEM, name, "out of memory");
    l->O = O;
    l->I = I;
    l->G = G;
    l->bits = bits;
    l->rotation = rotation;
    l->bytes = linear_bytes(O, I, bits, G);
    w->n++;
    return TR_OK;
}

/* Sort into writing order and assign shards. */
/* Ends the declaration phase; begun is set only once the shard table exists, so a failed begin is retried (and
 * fails again) by the next call instead of leaving a half-built writer behind. */
static int begin(tr_v3_writer *w, tr_error *err)
{
    if (w->n > 1)
        qsort(w->lin, w->n, sizeof *w->lin, cmp_wlinear);
    uint64_t fill = 0;
    unsigned shard = 0;
    for (size_t i = 0; i < w->n; i++) {
        if (shard == 0 || (fill > 0 && fill + w->lin[i].bytes > w->opt.shard_limit)) {
            shard++;
            fill = 0;
        }
        w->lin[i].shard = shard;
        fill += w->lin[i].bytes;
    }
    w->nshards = shard;
    w->shard_names = tr_calloc(shard + 1, sizeof *w->shard_names);
    if (!w->shard_names)
        return tr_fail(err, TR_E_NOMEM, w->dir, "out of memory");
    for (unsigned s = 1; s <= shard; s++)
        snprintf(w->shard_names[s - 1], sizeof w->shard_names[0], "model-%05u-of-%05u.safetensors", s, shard);
    w->begun = 1;
    return TR_OK;
}

const char *tr_v3_writer_next(tr_v3_writer *w)
{
    if (!w->begun && begin(w, NULL) != TR_OK)
        return NULL;
    return w->next < w->n ? w->lin[w->next].name : NULL;
}

static int hold(void ***bufs, size_t *n, size_t *cap, void *p)
{
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 16;
        void **v = tr_realloc(*bufs, c * sizeof *v);
        if (!v)
            return TR_E_NOMEM;
        *bufs = v;
        *cap = c;
    }
    (*bufs)[(*n)++] = p;
    return TR_OK;
}

static void release(void **bufs, size_t *n)
{
    for (size_t i = 0; i < *n; i++)
        tr_dealloc(bufs[i]);
    *n = 0;
}

static int record(tr_v3_writer *w, const char *name, const char *file, uint64_t bytes)
{
    if (w->nmap == w->capmap) {
        size_t c = w->capmap ? 2 * w->capmap : 64;
        wmapped *v = tr_realloc(w->map, c * sizeof *v);
        if (!v)
            return TR_E_NOMEM;
        w->map = v;
        w->capmap = c;
    }
    if (!(w->map[w->nmap].name = tr_strdup(name)))
        return TR_E_NOMEM;
    w->map[w->nmap].file = file;
    w->map[w->nmap].bytes = bytes;
    w->nmap++;
    return TR_OK;
}

/* Copy one component into the current shard. */
static int add_component(tr_v3_writer *w, const char *base, const char *suffix, tr_dtype dt, unsigned ndim,
                         const uint64_t *shape, const void *data, uint64_t bytes, const char *file, tr_error *err)
{
    char key[1024];
    snprintf(key, sizeof key, "%s%s", base, suffix);
    void *copy = tr_malloc((size_t)bytes);
    if (!copy || hold(&w->bufs, &w->nbufs, &w->capbufs, copy) != TR_OK) {
        tr_dealloc(copy);
        return tr_fail(err, TR_E_NOMEM, key, "out of memory");
    }
    memcpy(copy, data, (size_t)bytes);
    int rc = tr_st_writer_add(w->shard, key, dt, ndim, shape, copy, err);
    if (rc == TR_OK && record(w, key, file, bytes) != TR_OK)
        rc = tr_fail(err, TR_E_NOMEM, key, "out of memory");
    return rc;
}

static int flush_shard(tr_v3_writer *w, unsigned shard, tr_error *err)
{
    char *path = tr_path_join(w->dir, w->shard_names[shard - 1]);
    if (!path)
        return tr_fail(err, TR_E_NOMEM, w->dir, "out of memory");
    int rc = tr_st_writer_write(w->shard, path, err);
    tr_dealloc(path);
    tr_st_writer_free(w->shard);
    w->shard = NULL;
    release(w->bufs, &w->nbufs);
    return rc;
}

int tr_v3_writer_put(tr_v3_writer *w, const char *name, const tr_qweight *q, tr_error *err)
{
    if (!w->begun && begin(w, err) != TR_OK)
        return TR_E_NOMEM;
    if (w->next >= w->n || strcmp(w->lin[w->next].name, name) != 0)
        return tr_fail(err, TR_E_INVALID_PARAM, name, "put out of order (expected %s)",
                       w->next < w->n ? w->lin[w->next].name : "nothing more");
    const wlinear *l = &w->lin[w->next];
    if (q->O != l->O || q->I != l->I || q->bits != l->bits || q->G != l->G ||
        q->indices_len != 1 + tr_packed_body_bytes(l->O, l->I, l->bits) || q->indices[0] != l->bits)
        return tr_fail(err, TR_E_INVALID_PARAM, name, "data does not match its declaration");
    if (!w->shard && !(w->shard = tr_st_writer_new()))
        return tr_fail(err, TR_E_NOMEM, name, "out of memory");
    char *base = tr_key_base_from_name(name);
    if (!base)
        return tr_fail(err, TR_E_NOMEM, name, "out of memory");
    /* the key base is the dotted name with "." -> "__" (it keeps the trailing "__weight") */
    const char *file = w->shard_names[l->shard - 1];
    uint64_t s_idx[1] = {q->indices_len}, s_sc[2] = {l->G, l->O}, s_su[1] = {l->I}, s_sv[1] = {l->O};
    int rc = add_component(w, base, "__indices", TR_DT_U8, 1, s_idx, q->indices, q->indices_len, file, err);
    if (rc == TR_OK)
        rc = add_component(w, base, "__scales", TR_DT_F32, 2, s_sc, q->scales, 4ull * l->G * l->O, file, err);
    if (rc == TR_OK)
        rc = add_component(w, base, "__su", TR_DT_F32, 1, s_su, q->su, 4ull * l->I, file, err);
    if (rc == TR_OK)
        rc = add_component(w, base, "__sv", TR_DT_F32, 1, s_sv, q->sv, 4ull * l->O, file, err);
    tr_dealloc(base);
    if (rc != TR_OK)
        return rc;
    w->next++;
    if (w->next == w->n || w->lin[w->next].shard != l->shard)
        return flush_shard(w, l->shard, err);
    return TR_OK;
}

int tr_v3_writer_add_float(tr_v3_writer *w, const char *name, tr_dtype dtype, unsigned ndim, const uint64_t *shape,
                           const void *data, tr_error *err)
{
    uint64_t bytes = tr_dtype_size(dtype);
    for (unsigned d = 0; d < ndim; d++)
        bytes *= shape[d];
    void *copy = tr_malloc((size_t)bytes);
    if (!copy || hold(&w->basebufs, &w->nbase, &w->capbase, copy) != TR_OK) {
        tr_dealloc(copy);
        return tr_fail(err, TR_E_NOMEM, name, "out of memory");
    }
    if (bytes)
        memcpy(copy, data, (size_t)bytes);
    int rc = tr_st_writer_add(w->base, name, dtype, ndim, shape, copy, err);
    if (rc == TR_OK && record(w, name, "base_weights.safetensors", bytes) != TR_OK)
        rc = tr_fail(err, TR_E_NOMEM, name, "out of memory");
    return rc;
}

static int cmp_mapped(const void *a, const void *b)
{
    return strcmp(((const wmapped *)a)->name, ((const wmapped *)b)->name);
}

/* 2-space indented JSON with a final newline (FORMAT.md §2.3). */
static int write_json(const char *dir, const char *name, json_t *root, unsigned long mark, tr_error *err)
{
    char *path = tr_path_join(dir, name);
    int rc = !path   ? tr_fail(err, TR_E_NOMEM, dir, "out of memory writing %s", name)
             : !root ? tr_fail(err, TR_E_NOMEM, path, "out of memory building JSON")
                     : tr_json_write_file(path, root, mark, err);
    tr_dealloc(path);
    return rc;
}

static json_t *index_json(tr_v3_writer *w)
{
    if (w->nmap > 1)
        qsort(w->map, w->nmap, sizeof *w->map, cmp_mapped);
    uint64_t total = 0;
    for (size_t i = 0; i < w->nmap; i++)
        total += w->map[i].bytes;
    json_t *root = json_object(), *meta = json_object(), *wm = json_object();
    int bad = !root || !meta || !wm;
    bad = bad || json_object_set_new(meta, "format", json_string("trellis_v3"));
    bad = bad || json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
    for (size_t i = 0; !bad && i < w->nmap; i++)
        bad = json_object_set_new(wm, w->map[i].name, json_string(w->map[i].file));
    if (!bad) {   /* both calls take their value even when they fail */
        int r = json_object_set_new(root, "metadata", meta);
        bad = json_object_set_new(root, "weight_map", wm) || r;
        meta = wm = NULL;
    }
    json_decref(meta);
    json_decref(wm);
    if (bad) {
        json_decref(root);
        return NULL;
    }
    return root;
}

static json_t *qindex_json(tr_v3_writer *w)
{
    json_t *root = json_object(), *layers = json_array();
    int bad = !root || !layers;
    bad = bad || json_object_set_new(root, "format", json_string("trellis_v3"));
    bad = bad || json_object_set_new(root, "group_size", json_integer(w->opt.group_size));
    bad = bad || json_object_set_new(root, "codebook", json_string("grid"));
    bad = bad || json_object_set_new(root, "rotation", json_string(tr_rotation_name(w->opt.rotation)));
    for (size_t i = 0; !bad && i < w->n; i++) {
        const wlinear *l = &w->lin[i];
        json_t *e = json_object(), *shape = json_array();
        bad = !e || !shape || json_array_append_new(shape, json_integer(l->O)) ||
              json_array_append_new(shape, json_integer(l->I));
        bad = bad || json_object_set_new(e, "name", json_string(l->name));
        if (!bad) {
            bad = json_object_set_new(e, "shape", shape);
            shape = NULL;
        }
        bad = bad || json_object_set_new(e, "bits", json_integer(l->bits));
        if (!bad && l->rotation != w->opt.rotation)
            bad = json_object_set_new(e, "rotation", json_string(tr_rotation_name(l->rotation)));
        json_decref(shape);
        if (!bad)
            bad = json_array_append_new(layers, e);
        else
            json_decref(e);
    }
    if (!bad) {
        bad = json_object_set_new(root, "layers", layers);
        layers = NULL;
    }
    json_decref(layers);
    if (bad) {
        json_decref(root);
        return NULL;
    }
    return root;
}

int tr_v3_writer_finish(tr_v3_writer *w, tr_error *err)
{
    if (!w->begun && begin(w, err) != TR_OK)
        return TR_E_NOMEM;
    if (w->next != w->n)
        return tr_fail(err, TR_E_INVALID_PARAM, w->dir, "%zu declared linears were never put (next: %s)",
                       w->n - w->next, w->lin[w->next].name);
    char *bpath = tr_path_join(w->dir, "base_weights.safetensors");
    int rc = bpath ? tr_st_writer_write(w->base, bpath, err) : tr_fail(err, TR_E_NOMEM, w->dir, "out of memory");
    tr_dealloc(bpath);
    if (rc == TR_OK) {
        unsigned long mark = tr_json_mark();
        json_t *j = index_json(w);
        rc = write_json(w->dir, "model.safetensors.index.json", j, mark, err);
        json_decref(j);
    }
    if (rc == TR_OK) {
        unsigned long mark = tr_json_mark();
        json_t *j = qindex_json(w);
        rc = write_json(w->dir, "quantization_index.json", j, mark, err);
        json_decref(j);
    }
    return rc;
}

void tr_v3_writer_free(tr_v3_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++)
        tr_dealloc(w->lin[i].name);
    tr_dealloc(w->lin);
    tr_dealloc(w->shard_names);
    tr_st_writer_free(w->shard);
    release(w->bufs, &w->nbufs);
    tr_dealloc(w->bufs);
    tr_st_writer_free(w->base);
    release(w->basebufs, &w->nbase);
    tr_dealloc(w->basebufs);
    for (size_t i = 0; i < w->nmap; i++)
        tr_dealloc(w->map[i].name);
    tr_dealloc(w->map);
    tr_dealloc(w->dir);
    tr_dealloc(w);
}
