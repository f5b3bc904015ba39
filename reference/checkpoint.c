/*
 * checkpoint.c — opening checkpoint directories (FORMAT.md §2.1-§2.4, §3).
 *
 * Opening builds three catalogs of tensors (primary: the shards of weight_map / model.safetensors / the v2 layer files;
 * base: base_weights.safetensors; router: router_weights.safetensors), then finds every quantized linear among the
 * primary tensors (keys B__indices, B__scales, B__su, B__sv), validates it (§3.3, §3.7) and matches it with its
 * quantization_index.json entry.  The first error aborts the open; warnings accumulate.
 */
#include "trellis/checkpoint.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/pack.h"

#include "ckpt_internal.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *tr_layout_name(tr_layout l)
{
    switch (l) {
    case TR_LAYOUT_HF_FLOAT: return "hf_float";
    case TR_LAYOUT_TRELLIS_V3: return "trellis_v3";
    case TR_LAYOUT_TRELLIS_V2: return "trellis_v2";
    case TR_LAYOUT_EXL3: return "exl3";
    }
    return "?";
}

/* ---- names ------------------------------------------------------------------------------------------------------ */

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && memcmp(s + a - b, suffix, b) == 0;
}

char *tr_key_base_from_name(const char *dotted)
{
    size_t n = strlen(dotted), dots = 0;
    for (size_t i = 0; i < n; i++)
        dots += dotted[i] == '.';
    char *out = tr_malloc(n + dots + 1);
    if (!out)
        return NULL;
    char *p = out;
    for (size_t i = 0; i < n; i++) {
        if (dotted[i] == '.') {
            *p++ = '_';
            *p++ = '_';
        } else
            *p++ = dotted[i];
    }
    *p = '\0';
    return out;
}

char *tr_name_from_key_base(const char *key_base)
{
    size_t n = strlen(key_base);
    if (ends_with(key_base, "__weight"))
        n -= strlen("__weight");
    char *out = tr_malloc(n + strlen(".weight") + 1);
    if (!out)
        return NULL;
    char *p = out;
    for (size_t i = 0; i < n; i++) {
        if (key_base[i] == '_' && i + 1 < n && key_base[i + 1] == '_') {
            *p++ = '.';
            i++;
        } else
            *p++ = key_base[i];
    }
    strcpy(p, ".weight");
    return out;
}

/* Decoder layer number of "model.layers.N.…" or "model__layers__N__…", or -1. */
long ckpt_layer_of(const char *name)
{
    const char *p = NULL;
    if (strncmp(name, "model.layers.", 13) == 0)
        p = name + 13;
    else if (strncmp(name, "model__layers__", 15) == 0)
        p = name + 15;
    if (!p || *p < '0' || *p > '9')
        return -1;
    long v = 0;
    while (*p >= '0' && *p <= '9' && v < 100000000)
        v = v * 10 + (*p++ - '0');
    return v;
}

/* ---- layout detection (FORMAT.md §2.1) ---------------------------------------------------------------------------- */

/* The detection probes below answer yes/no; a file they cannot parse counts as "no" (opening reports it properly
 * later), but an allocation failure is returned as TR_E_NOMEM. */
static int nomem(tr_error *err, const char *where) { return tr_fail(err, TR_E_NOMEM, where, "out of memory"); }

static int file_in(const char *dir, const char *name, int *yes, tr_error *err)
{
    char *p = tr_path_join(dir, name);
    if (!p)
        return nomem(err, dir);
    *yes = tr_path_is_file(p);
    tr_dealloc(p);
    return TR_OK;
}

static int dir_has_v2_layers(const char *dir, int *yes, tr_error *err)
{
    *yes = 0;
    DIR *d = opendir(dir);
    if (!d)
        return TR_OK;
    int rc = TR_OK;
    struct dirent *e;
    while (!*yes && rc == TR_OK && (e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        size_t k = 6;
        if (strncmp(n, "layer_", 6) != 0 || !n[6])
            continue;
        while (n[k] >= '0' && n[k] <= '9')
            k++;
        if (n[k] != '\0')
            continue;
        char *sub = tr_path_join(dir, n);
        rc = sub ? file_in(sub, "index.json", yes, err) : nomem(err, dir);
        tr_dealloc(sub);
    }
    closedir(d);
    return rc;
}

/* Does any key of the index weight_map (or of model.safetensors) end with suffix? */
static int keys_end_with(const char *dir, const char *suffix, int *yes, tr_error *err)
{
    *yes = 0;
    tr_error ignored;
    char *ipath = tr_path_join(dir, "model.safetensors.index.json");
    if (!ipath)
        return nomem(err, dir);
    json_t *root = NULL;
    int rc = tr_path_is_file(ipath) ? tr_json_load_object(ipath, TR_E_INDEX_JSON, &root, &ignored) : TR_OK;
    tr_dealloc(ipath);
    if (rc == TR_E_NOMEM)
        return nomem(err, dir);
    json_t *wm = json_object_get(root, "weight_map");
    const char *k;
    json_t *v;
    if (json_is_object(wm))
        json_object_foreach(wm, k, v) *yes |= ends_with(k, suffix);
    json_decref(root);
    if (*yes)
        return TR_OK;
    char *spath = tr_path_join(dir, "model.safetensors");
    if (!spath)
        return nomem(err, dir);
    tr_st_file *st = NULL;
    rc = tr_path_is_file(spath) ? tr_st_open(spath, &st, &ignored) : TR_OK;
    tr_dealloc(spath);
    if (rc == TR_E_NOMEM)
        return nomem(err, dir);
    for (size_t i = 0; st && i < tr_st_count(st); i++)
        *yes |= ends_with(tr_st_at(st, i)->name, suffix);
    tr_st_close(st);
    return TR_OK;
}

int tr_detect_layout(const char *dir, tr_layout *out, tr_error *err)
{
    if (!tr_path_is_dir(dir))
        return tr_fail(err, TR_E_LAYOUT, dir, "not a directory");
    char *cpath = tr_path_join(dir, "config.json");
    if (!cpath)
        return nomem(err, dir);
    if (!tr_path_is_file(cpath)) {
        int rc = tr_fail(err, TR_E_LAYOUT, cpath, "not found (every checkpoint directory needs config.json)");
        tr_dealloc(cpath);
        return rc;
    }
    json_t *config = NULL;
    int rc = tr_json_load_object(cpath, TR_E_CONFIG, &config, err);
    tr_dealloc(cpath);
    if (rc != TR_OK)
        return rc;
    json_t *qc = json_object_get(config, "quantization_config");
    json_t *qm = json_is_object(qc) ? json_object_get(qc, "quant_method") : NULL;
    int exl3 = json_is_string(qm) && strcmp(json_string_value(qm), "exl3") == 0;
    json_decref(config);

    int has_index = 0, has_single = 0, has_qindex = 0, trellis_keys = 0, indices_keys = 0, v2 = 0;
    if ((rc = file_in(dir, "model.safetensors.index.json", &has_index, err)) != TR_OK ||
        (rc = file_in(dir, "model.safetensors", &has_single, err)) != TR_OK ||
        (rc = file_in(dir, "quantization_index.json", &has_qindex, err)) != TR_OK ||
        (!exl3 && (rc = keys_end_with(dir, ".trellis", &trellis_keys, err)) != TR_OK) ||
        (rc = keys_end_with(dir, "__indices", &indices_keys, err)) != TR_OK ||
        (rc = dir_has_v2_layers(dir, &v2, err)) != TR_OK)
        return rc;
    if (exl3 || trellis_keys)
        *out = TR_LAYOUT_EXL3;
    else if (has_index && (has_qindex || indices_keys))
        *out = TR_LAYOUT_TRELLIS_V3;
    else if (!has_index && has_single && indices_keys)
        *out = TR_LAYOUT_TRELLIS_V3;
    else if (v2)
        *out = TR_LAYOUT_TRELLIS_V2;
    else if (has_index || has_single)
        *out = TR_LAYOUT_HF_FLOAT;
    else
        return tr_fail(err, TR_E_LAYOUT, dir,
                       "no model.safetensors, model.safetensors.index.json, layer_NNNN/index.json or EXL3 tensors");
    return TR_OK;
}

/* ---- the handle -------------------------------------------------------------------------------------------------- */

tr_layout tr_ckpt_layout(const tr_ckpt *c) { return c->layout; }
const char *tr_ckpt_dir(const tr_ckpt *c) { return c->dir; }
uint32_t tr_ckpt_num_layers(const tr_ckpt *c) { return c->num_layers; }
tr_rotation tr_ckpt_rotation(const tr_ckpt *c) { return c->qindex.rotation; }
uint32_t tr_ckpt_group_size(const tr_ckpt *c) { return c->qindex.group_size; }
size_t tr_ckpt_qlinear_count(const tr_ckpt *c) { return c->nq; }
const tr_qlinear *tr_ckpt_qlinear_at(const tr_ckpt *c, size_t i) { return i < c->nq ? &c->q[i] : NULL; }
const tr_warnings *tr_ckpt_warnings(const tr_ckpt *c) { return &c->warnings; }

const tr_qlinear *tr_ckpt_qlinear_find(const tr_ckpt *c, const char *dotted)
{
    for (size_t i = 0; i < c->nq; i++)
        if (strcmp(c->q[i].name, dotted) == 0)
            return &c->q[i];
    return NULL;
}

size_t tr_ckpt_tensor_count(const tr_ckpt *c) { return c->nfloats; }

static void fill_ref(const tr_ckpt *c, const ckpt_entry *e, tr_tensor_ref *out)
{
    out->name = e->t->name;
    out->file = c->files[e->file].path;
    out->st = c->files[e->file].st;
    out->t = e->t;
}

int tr_ckpt_tensor_at(const tr_ckpt *c, size_t i, tr_tensor_ref *out)
{
    if (i >= c->nfloats)
        return TR_E_INVALID_PARAM;
    fill_ref(c, &c->floats[i], out);
    return TR_OK;
}

const ckpt_entry *ckpt_catalog_find(const ckpt_catalog *cat, const char *name)
{
    size_t lo = 0, hi = cat->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = strcmp(name, cat->v[mid].t->name);
        if (r == 0)
            return &cat->v[mid];
        if (r < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static int is_router_name(const char *name)
{
    return ends_with(name, ".mlp.gate.weight") || ends_with(name, ".mlp.gate.e_score_correction_bias");
}

int tr_ckpt_find_tensor(const tr_ckpt *c, const char *name, tr_tensor_ref *out, tr_error *err)
{
    const ckpt_entry *e = ckpt_catalog_find(&c->primary, name);
    if (!e)
        e = ckpt_catalog_find(&c->base, name);
    if (!e && is_router_name(name))
        e = ckpt_catalog_find(&c->router, name);
    if (e) {
        fill_ref(c, e, out);
        return TR_OK;
    }
    if (c->fallback && tr_ckpt_find_tensor(c->fallback, name, out, NULL) == TR_OK)
        return TR_OK;
    /* ENGINE.md §8 wording: the fallback checkpoint is what the CLI calls --base-model */
    return tr_fail(err, TR_E_TENSOR_MISSING, name, "not found in %s", c->layout == TR_LAYOUT_HF_FLOAT
                   ? "model shards or --base-model" : "model shards, base_weights.safetensors or --base-model");
}

int tr_ckpt_load_f32(const tr_ckpt *c, const char *name, float **out, uint64_t *numel, tr_error *err)
{
    *out = NULL;
    tr_tensor_ref ref;
    int rc = tr_ckpt_find_tensor(c, name, &ref, err);
    if (rc != TR_OK)
        return rc;
    if (ref.t->dtype != TR_DT_F32 && ref.t->dtype != TR_DT_F16 && ref.t->dtype != TR_DT_BF16)
        return tr_fail(err, TR_E_DTYPE, ref.file, "%s: dtype %s not allowed (F32, BF16 or F16)", name,
                       tr_dtype_name(ref.t->dtype));
    float *buf = tr_malloc((size_t)ref.t->numel * sizeof(float));
    if (!buf)
        return tr_fail(err, TR_E_NOMEM, name, "cannot allocate %llu floats", (unsigned long long)ref.t->numel);
    tr_st_read_f32(ref.st, ref.t, buf, NULL);
    *out = buf;
    if (numel)
        *numel = ref.t->numel;
    return TR_OK;
}

void tr_ckpt_close(tr_ckpt *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nfiles; i++) {
        tr_st_close(c->files[i].st);
        tr_dealloc(c->files[i].path);
    }
    tr_dealloc(c->files);
    tr_dealloc(c->primary.v);
    tr_dealloc(c->base.v);
    tr_dealloc(c->router.v);
    tr_dealloc(c->floats);
    for (size_t i = 0; i < c->nq; i++) {
        tr_dealloc((char *)c->q[i].name);
        tr_dealloc((char *)c->q[i].key_base);
    }
    tr_dealloc(c->q);
    for (size_t i = 0; i < c->nowned; i++)
        tr_dealloc_aligned(c->owned[i]);
    tr_dealloc(c->owned);
    ckpt_qindex_free(&c->qindex);
    tr_warnings_free(&c->warnings);
    tr_ckpt_close(c->fallback);
    tr_dealloc(c->dir);
    tr_dealloc(c);
}

int ckpt_warn(tr_ckpt *c, tr_error *err, int code, const char *where, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = tr_warnv(&c->warnings, code, where, fmt, ap);
    va_end(ap);
    return rc == TR_OK ? TR_OK : tr_fail(err, TR_E_NOMEM, where, "out of memory recording a warning");
}

/* ---- sources ---------------------------------------------------------------------------------------------------- */

/* Open (or find already opened) a safetensors file; *idx receives its number. */
int ckpt_open_file(tr_ckpt *c, const char *path, size_t *idx, tr_error *err)
{
    for (size_t i = 0; i < c->nfiles; i++)
        if (strcmp(c->files[i].path, path) == 0) {
            *idx = i;
            return TR_OK;
        }
    if (c->nfiles == c->capfiles) {
        size_t cap = c->capfiles ? 2 * c->capfiles : 8;
        ckpt_file *f = tr_realloc(c->files, cap * sizeof *f);
        if (!f)
            return tr_fail(err, TR_E_NOMEM, path, "out of memory");
        c->files = f;
        c->capfiles = cap;
    }
    tr_st_file *st = NULL;
    int rc = tr_st_open(path, &st, err);
    if (rc != TR_OK)
        return rc;
    char *p = tr_strdup(path);
    if (!p) {
        tr_st_close(st);
        return tr_fail(err, TR_E_NOMEM, path, "out of memory");
    }
    c->files[c->nfiles].path = p;
    c->files[c->nfiles].st = st;
    *idx = c->nfiles++;
    for (size_t i = 0; i < tr_st_count(st); i++)
        if (!tr_st_at(st, i)->aligned && tr_st_at(st, i)->numel > 0) {
            rc = ckpt_warn(c, err, TR_W_MISALIGNED, path, "tensor \"%s\" data is not aligned to %zu bytes",
                           tr_st_at(st, i)->name, tr_dtype_size(tr_st_at(st, i)->dtype));
            if (rc != TR_OK)
                return rc;
        }
    return TR_OK;
}

int ckpt_catalog_add(ckpt_catalog *cat, const tr_st_tensor *t, size_t file)
{
    if (cat->n == cat->cap) {
        size_t cap = cat->cap ? 2 * cat->cap : 64;
        ckpt_entry *v = tr_realloc(cat->v, cap * sizeof *v);
        if (!v)
            return TR_E_NOMEM;
        cat->v = v;
        cat->cap = cap;
    }
    cat->v[cat->n].t = t;
    cat->v[cat->n].file = file;
    cat->n++;
    return TR_OK;
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const ckpt_entry *)a)->t->name, ((const ckpt_entry *)b)->t->name);
}

/* Sort a catalog by name; two entries of one name -> TR_E_TENSOR_DUPLICATE naming both files. */
int ckpt_catalog_seal(tr_ckpt *c, ckpt_catalog *cat, tr_error *err)
{
    if (cat->n > 1)
        qsort(cat->v, cat->n, sizeof *cat->v, cmp_entry);
    for (size_t i = 1; i < cat->n; i++)
        if (strcmp(cat->v[i].t->name, cat->v[i - 1].t->name) == 0)
            return tr_fail(err, TR_E_TENSOR_DUPLICATE, c->files[cat->v[i].file].path, "tensor \"%s\" is also in %s",
                           cat->v[i].t->name, c->files[cat->v[i - 1].file].path);
    return TR_OK;
}

/* Is this tensor dropped because it belongs to a layer >= num_hidden_layers (e.g. GLM's NextN layer)? */
int ckpt_ignored(const tr_ckpt *c, const char *name)
{
    long l = ckpt_layer_of(name);
    return c->num_layers > 0 && l >= (long)c->num_layers;
}

/* Add every tensor of an opened file to a catalog (ignored layers skipped). */
int ckpt_catalog_add_file(tr_ckpt *c, ckpt_catalog *cat, size_t file, tr_error *err)
{
    const tr_st_file *st = c->files[file].st;
    for (size_t i = 0; i < tr_st_count(st); i++) {
        const tr_st_tensor *t = tr_st_at(st, i);
        if (ckpt_ignored(c, t->name))
            continue;
        if (ckpt_catalog_add(cat, t, file) != TR_OK)
            return tr_fail(err, TR_E_NOMEM, c->files[file].path, "out of memory");
    }
    return TR_OK;
}

/* Optional secondary file in the directory root (base_weights / router_weights). */
static int add_optional_root_file(tr_ckpt *c, const char *name, ckpt_catalog *cat, tr_error *err)
{
    char *p = tr_path_join(c->dir, name);
    if (!p)
        return tr_fail(err, TR_E_NOMEM, c->dir, "out of memory");
    int rc = TR_OK;
    if (tr_path_is_file(p)) {
        size_t idx;
        rc = ckpt_open_file(c, p, &idx, err);
        if (rc == TR_OK)
            rc = ckpt_catalog_add_file(c, cat, idx, err);
        if (rc == TR_OK)
            rc = ckpt_catalog_seal(c, cat, err);
    }
    tr_dealloc(p);
    return rc;
}

/* Plain file name in the same directory (FORMAT.md §2.2). */
static int plain_file_name(const char *s)
{
    return s[0] && !strchr(s, '/') && !strchr(s, '\\') && strcmp(s, ".") && strcmp(s, "..");
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* HF-style index: model.safetensors.index.json with weight_map -> shard files (FORMAT.md §2.2). */
static int load_indexed(tr_ckpt *c, tr_error *err)
{
    char *ipath = tr_path_join(c->dir, "model.safetensors.index.json");
    if (!ipath)
        return tr_fail(err, TR_E_NOMEM, c->dir, "out of memory");
    json_t *root = NULL;
    const char **shards = NULL;
    size_t *shard_file = NULL;
    int rc = tr_json_load_object(ipath, TR_E_INDEX_JSON, &root, err);
    if (rc != TR_OK)
        goto done;
    json_t *wm = json_object_get(root, "weight_map");
    json_t *meta = json_object_get(root, "metadata");
    if (!json_is_object(wm)) {
        rc = tr_fail(err, TR_E_INDEX_JSON, ipath, "weight_map is %s, expected an object",
                     wm ? "not an object" : "missing");
        goto done;
    }
    if (meta && !json_is_object(meta)) {
        rc = tr_fail(err, TR_E_INDEX_JSON, ipath, "metadata is not an object");
        goto done;
    }
    json_t *total = meta ? json_object_get(meta, "total_size") : NULL;
    if (total && !json_is_integer(total)) {
        rc = tr_fail(err, TR_E_INDEX_JSON, ipath, "metadata.total_size is not an integer");
        goto done;
    }
    /* distinct shard names, sorted, each validated as a plain file name */
    size_t nmap = json_object_size(wm), nshards = 0;
    shards = tr_calloc(nmap + 1, sizeof *shards);
    shard_file = tr_calloc(nmap + 1, sizeof *shard_file);
    if (!shards || !shard_file) {
        rc = tr_fail(err, TR_E_NOMEM, ipath, "out of memory");
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(wm, key, val) {
        if (!json_is_string(val)) {
            rc = tr_fail(err, TR_E_INDEX_JSON, ipath, "weight_map[\"%s\"] is not a string", key);
            goto done;
        }
        const char *s = json_string_value(val);
        if (!plain_file_name(s)) {
            rc = tr_fail(err, TR_E_INDEX_PATH, ipath,
                         "weight_map[\"%s\"] = \"%s\" is not a plain file name in the same directory", key, s);
            goto done;
        }
        shards[nshards++] = s;
    }
    qsort(shards, nshards, sizeof *shards, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < nshards; i++)
        if (u == 0 || strcmp(shards[i], shards[u - 1]) != 0)
            shards[u++] = shards[i];
    nshards = u;
    /* open every shard; a tensor present in two shards is a duplicate */
    ckpt_catalog all = {0};
    for (size_t i = 0; i < nshards; i++) {
        char *sp = tr_path_join(c->dir, shards[i]);
        if (!sp) {
            rc = tr_fail(err, TR_E_NOMEM, ipath, "out of memory");
            break;
        }
        if (!tr_path_is_file(sp))
            rc = tr_fail(err, TR_E_IO, sp, "shard listed in model.safetensors.index.json does not exist");
        else
            rc = ckpt_open_file(c, sp, &shard_file[i], err);
        tr_dealloc(sp);
        if (rc == TR_OK)
            rc = ckpt_catalog_add_file(c, &all, shard_file[i], err);
        if (rc != TR_OK)
            break;
    }
    if (rc == TR_OK)
        rc = ckpt_catalog_seal(c, &all, err);
    /* every listed tensor must be in its shard; unlisted tensors are ignored with a warning */
    uint64_t sum = 0;
    json_object_foreach(wm, key, val) {
        if (rc != TR_OK || ckpt_ignored(c, key))
            continue;
        const char **hit = bsearch(&(const char *){json_string_value(val)}, shards, nshards, sizeof *shards, cmp_str);
        size_t f = shard_file[hit - shards];
        const tr_st_tensor *t = tr_st_find(c->files[f].st, key);
        if (!t) {
            rc = tr_fail(err, TR_E_TENSOR_MISSING, c->files[f].path, "tensor \"%s\" listed in weight_map is not in "
                         "this shard", key);
            break;
        }
        sum += t->end - t->begin;
        if (ckpt_catalog_add(&c->primary, t, f) != TR_OK)
            rc = tr_fail(err, TR_E_NOMEM, ipath, "out of memory");
    }
    for (size_t i = 0; rc == TR_OK && i < all.n; i++)
        if (!json_object_get(wm, all.v[i].t->name))
            rc = ckpt_warn(c, err, TR_W_UNLISTED_TENSOR, c->files[all.v[i].file].path,
                           "tensor \"%s\" is not in weight_map (ignored)", all.v[i].t->name);
    tr_dealloc(all.v);
    if (rc == TR_OK)
        rc = ckpt_catalog_seal(c, &c->primary, err);
    if (rc == TR_OK && total && (uint64_t)json_integer_value(total) != sum)
        rc = ckpt_warn(c, err, TR_W_TOTAL_SIZE, ipath, "metadata.total_size %lld, tensors hold %llu bytes",
                       (long long)json_integer_value(total), (unsigned long long)sum);
done:
    json_decref(root);
    tr_dealloc(shards);
    tr_dealloc(shard_file);
    tr_dealloc(ipath);
    return rc;
}

static int load_single(tr_ckpt *c, tr_error *err)
{
    char *p = tr_path_join(c->dir, "model.safetensors");
    if (!p)
        return tr_fail(err, TR_E_NOMEM, c->dir, "out of memory");
    size_t idx;
    int rc = ckpt_open_file(c, p, &idx, err);
    tr_dealloc(p);
    if (rc == TR_OK)
        rc = ckpt_catalog_add_file(c, &c->primary, idx, err);
    if (rc == TR_OK)
        rc = ckpt_catalog_seal(c, &c->primary, err);
    return rc;
}

static int read_config(tr_ckpt *c, tr_error *err)
{
    char *p = tr_path_join(c->dir, "config.json");
    if (!p)
        return tr_fail(err, TR_E_NOMEM, c->dir, "out of memory");
    json_t *cfg = NULL;
    int rc = tr_json_load_object(p, TR_E_CONFIG, &cfg, err);
    if (rc == TR_OK) {
        json_t *n = json_object_get(cfg, "num_hidden_layers");
        if (n && (!json_is_integer(n) || json_integer_value(n) < 0 || json_integer_value(n) > 1000000))
            rc = tr_fail(err, TR_E_CONFIG, p, "num_hidden_layers is not a non-negative integer");
        else if (n)
            c->num_layers = (uint32_t)json_integer_value(n);
    }
    json_decref(cfg);
    tr_dealloc(p);
    return rc;
}

/* Non-quantized tensors (primary, then base, then router entries not shadowed), sorted by name. */
static int build_float_list(tr_ckpt *c, tr_error *err)
{
    size_t n = c->primary.n + c->base.n + c->router.n;
    c->floats = tr_calloc(n ? n : 1, sizeof *c->floats);
    if (!c->floats)
        return tr_fail(err, TR_E_NOMEM, c->dir, "out of memory");
    const ckpt_catalog *cats[3] = {&c->primary, &c->base, &c->router};
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < cats[k]->n; i++) {
            const char *name = cats[k]->v[i].t->name;
            if (ckpt_quant_component(name))
                continue;
            if (k >= 1 && ckpt_catalog_find(&c->primary, name))
                continue;
            if (k == 2 && (ckpt_catalog_find(&c->base, name) || !is_router_name(name)))
                continue;
            c->floats[c->nfloats++] = cats[k]->v[i];
        }
    qsort(c->floats, c->nfloats, sizeof *c->floats, cmp_entry);
    return TR_OK;
}

/* HF float rules: F32/BF16/F16 only, no fused 3-D expert tensors (FORMAT.md §2.2). */
static int check_float_tensors(tr_ckpt *c, tr_error *err)
{
    for (size_t i = 0; i < c->nfloats; i++) {
        const tr_st_tensor *t = c->floats[i].t;
        const char *path = c->files[c->floats[i].file].path;
        if (strstr(t->name, ".mlp.experts.") && t->ndim == 3)
            return tr_fail(err, TR_E_UNSUPPORTED, path, "%s: fused 3-D expert tensors are not supported; "
                           "store experts as mlp.experts.E.{gate,up,down}_proj.weight", t->name);
        if (t->dtype != TR_DT_F32 && t->dtype != TR_DT_BF16 && t->dtype != TR_DT_F16)
            return tr_fail(err, TR_E_DTYPE, path, "%s: dtype %s not allowed (F32, BF16 or F16)", t->name,
                           tr_dtype_name(t->dtype));
    }
    return TR_OK;
}

int tr_ckpt_open(const char *dir, const tr_ckpt_options *opt, tr_ckpt **out, tr_error *err)
{
    *out = NULL;
    tr_layout layout;
    int rc = tr_detect_layout(dir, &layout, err);
    if (rc != TR_OK)
        return rc;
    if (layout == TR_LAYOUT_EXL3)
        return tr_fail(err, TR_E_UNSUPPORTED, dir, "EXL3 checkpoints are not supported yet");
    tr_ckpt *c = tr_calloc(1, sizeof *c);
    if (!c || !(c->dir = tr_strdup(dir))) {
        tr_dealloc(c);
        return tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    }
    c->layout = layout;
    c->allow_nonfinite = opt && opt->allow_nonfinite;
    rc = read_config(c, err);
    if (rc == TR_OK) {
        switch (layout) {
        case TR_LAYOUT_HF_FLOAT:
        case TR_LAYOUT_TRELLIS_V3: {
            int indexed = 0;
            rc = file_in(dir, "model.safetensors.index.json", &indexed, err);
            if (rc == TR_OK)
                rc = indexed ? load_indexed(c, err) : load_single(c, err);
            if (rc == TR_OK && layout == TR_LAYOUT_TRELLIS_V3)
                rc = ckpt_read_qindex_root(c, err);
            break;
        }
        case TR_LAYOUT_TRELLIS_V2:
            rc = ckpt_read_qindex_root(c, err);
            if (rc == TR_OK)
                rc = ckpt_load_v2(c, err);
            break;
        case TR_LAYOUT_EXL3:
            break;
        }
    }
    if (rc == TR_OK && layout != TR_LAYOUT_HF_FLOAT)
        rc = add_optional_root_file(c, "base_weights.safetensors", &c->base, err);
    if (rc == TR_OK && layout != TR_LAYOUT_HF_FLOAT)
        rc = add_optional_root_file(c, "router_weights.safetensors", &c->router, err);
    if (rc == TR_OK && layout != TR_LAYOUT_HF_FLOAT)
        rc = ckpt_build_qlinears(c, err);
    if (rc == TR_OK)
        rc = build_float_list(c, err);
    if (rc == TR_OK)
        rc = check_float_tensors(c, err);
    if (rc == TR_OK && opt && opt->fallback_dir)
        rc = tr_ckpt_open(opt->fallback_dir, NULL, &c->fallback, err);
    if (rc != TR_OK) {
        tr_ckpt_close(c);
        return rc;
    }
    *out = c;
    return TR_OK;
}
