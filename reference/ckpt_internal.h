/*
 * ckpt_internal.h — state shared by the checkpoint reader's files (checkpoint.c, ckpt_quant.c); private to reference/.
 */
#ifndef TRELLIS_CKPT_INTERNAL_H
#define TRELLIS_CKPT_INTERNAL_H

#include "trellis/checkpoint.h"

#include <jansson.h>

typedef struct ckpt_file {
    char *path;
    tr_st_file *st;
} ckpt_file;

typedef struct ckpt_entry {
    const tr_st_tensor *t;
    size_t file;
} ckpt_entry;

typedef struct ckpt_catalog {
    ckpt_entry *v;
    size_t n, cap;
} ckpt_catalog;

/* One layers[] (v3) or tensors[] (v2) entry. */
typedef struct ckpt_qmeta {
    char *name;                 /* dotted, ending in ".weight" */
    char *source;               /* file it came from, for messages */
    int has_shape;
    uint32_t O, I;
    int has_bits;
    long bits;
    int has_rotation;
    tr_rotation rotation;
    int used;
} ckpt_qmeta;

typedef struct ckpt_qindex {
    uint32_t group_size;        /* 0: absent, inferred per layer */
    tr_rotation rotation;
    ckpt_qmeta *v;
    size_t n, cap;
} ckpt_qindex;

struct tr_ckpt {
    char *dir;
    tr_layout layout;
    uint32_t num_layers;
    int allow_nonfinite;
    ckpt_file *files;
    size_t nfiles, capfiles;
    ckpt_catalog primary, base, router;
    ckpt_entry *floats;
    size_t nfloats;
    tr_qlinear *q;
    size_t nq;
    float **owned;              /* aligned copies of misaligned float data */
    size_t nowned, capowned;
    ckpt_qindex qindex;
    tr_warnings warnings;
    tr_ckpt *fallback;
};

long ckpt_layer_of(const char *name);
int ckpt_ignored(const tr_ckpt *c, const char *name);
int ckpt_warn(tr_ckpt *c, tr_error *err, int code, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
int ckpt_open_file(tr_ckpt *c, const char *path, size_t *idx, tr_error *err);
int ckpt_catalog_add(ckpt_catalog *cat, const tr_st_tensor *t, size_t file);
int ckpt_catalog_add_file(tr_ckpt *c, ckpt_catalog *cat, size_t file, tr_error *err);
int ckpt_catalog_seal(tr_ckpt *c, ckpt_catalog *cat, tr_error *err);
const ckpt_entry *ckpt_catalog_find(const ckpt_catalog *cat, const char *name);

/* ckpt_quant.c */
int ckpt_quant_component(const char *name);
int ckpt_read_qindex_root(tr_ckpt *c, tr_error *err);
int ckpt_load_v2(tr_ckpt *c, tr_error *err);
int ckpt_build_qlinears(tr_ckpt *c, tr_error *err);
void ckpt_qindex_free(ckpt_qindex *q);

#endif
