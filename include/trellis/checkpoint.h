/*
 * checkpoint.h — checkpoint directories (FORMAT.md §2, §3): layout detection, the HF float / trellis v3 / trellis v2
 * readers, quantization_index.json, and the deterministic trellis v3 writer.
 *
 * A tr_ckpt is an opened, fully validated directory: every safetensors file passed the container rules, every
 * quantized linear passed §3.3/§3.7, and every warning of the load is listed.  Tensors are views into read-only
 * mappings; float tensors are widened to float32 on request.
 */
#ifndef TRELLIS_CHECKPOINT_H
#define TRELLIS_CHECKPOINT_H

#include "trellis/qweight.h"
#include "trellis/safetensors.h"
#include "trellis/status.h"

#include <stddef.h>
#include <stdint.h>

typedef enum tr_layout {
    TR_LAYOUT_HF_FLOAT = 0,
    TR_LAYOUT_TRELLIS_V3,
    TR_LAYOUT_TRELLIS_V2,
    TR_LAYOUT_EXL3,
} tr_layout;

const char *tr_layout_name(tr_layout l);   /* "hf_float", "trellis_v3", "trellis_v2", "exl3" */

/* FORMAT.md §2.1, first match wins.  TR_E_LAYOUT when config.json is missing or nothing matches. */
int tr_detect_layout(const char *dir, tr_layout *out, tr_error *err);

typedef struct tr_ckpt_options {
    const char *fallback_dir;   /* float checkpoint for tensors the directory lacks (FORMAT.md §2.3); NULL: none */
    int allow_nonfinite;        /* skip TR_E_NONFINITE on scales/su/sv (NaN-guard tests) */
} tr_ckpt_options;

typedef struct tr_ckpt tr_ckpt;

/* One quantized linear of a checkpoint. */
typedef struct tr_qlinear {
    const char *name;           /* dotted weight name, e.g. "model.layers.1.mlp.experts.3.up_proj.weight" */
    const char *key_base;       /* B as stored (with or without the trailing "__weight") */
    tr_qweight w;               /* view; scales/su/sv point into the mapping or into aligned copies */
    int meta_bits;              /* bits of the layers[] entry, -1 when absent or outside [0, INT_MAX] */
    int has_meta;               /* a layers[] entry exists */
    const char *file;           /* path of the file holding B__indices */
    uint64_t bytes;             /* data bytes of the four tensors */
} tr_qlinear;

/* A tensor resolved by name (FORMAT.md §2.3 order: weight_map, base_weights, router_weights, fallback). */
typedef struct tr_tensor_ref {
    const char *name;
    const char *file;           /* path of the holding safetensors file */
    const tr_st_file *st;
    const tr_st_tensor *t;
} tr_tensor_ref;

int tr_ckpt_open(const char *dir, const tr_ckpt_options *opt, tr_ckpt **out, tr_error *err);
void tr_ckpt_close(tr_ckpt *c);

tr_layout tr_ckpt_layout(const tr_ckpt *c);
const char *tr_ckpt_dir(const tr_ckpt *c);
/* num_hidden_layers from config.json, or 0 when absent. */
uint32_t tr_ckpt_num_layers(const tr_ckpt *c);
/* File-level settings of quantization_index.json (defaults when absent). */
tr_rotation tr_ckpt_rotation(const tr_ckpt *c);
/* group_size of quantization_index.json, or 0 when it was absent (inferred per layer). */
uint32_t tr_ckpt_group_size(const tr_ckpt *c);

/* Quantized linears in writing order (layers ascending, names bytewise within a layer, lm_head last). */
size_t tr_ckpt_qlinear_count(const tr_ckpt *c);
const tr_qlinear *tr_ckpt_qlinear_at(const tr_ckpt *c, size_t i);
const tr_qlinear *tr_ckpt_qlinear_find(const tr_ckpt *c, const char *dotted_name);

/* Non-quantized tensors of the directory itself (not the fallback), sorted by name. */
size_t tr_ckpt_tensor_count(const tr_ckpt *c);
int tr_ckpt_tensor_at(const tr_ckpt *c, size_t i, tr_tensor_ref *out);

/* Resolve a non-quantized tensor; TR_E_TENSOR_MISSING when no source has it. */
int tr_ckpt_find_tensor(const tr_ckpt *c, const char *name, tr_tensor_ref *out, tr_error *err);
/* Resolve and widen to float32 (F32/BF16/F16 only); *out is tr_malloc'ed, *numel its length. */
int tr_ckpt_load_f32(const tr_ckpt *c, const char *name, float **out, uint64_t *numel, tr_error *err);

/* Every warning of the load, in the order found. */
const tr_warnings *tr_ckpt_warnings(const tr_ckpt *c);

/* Dotted weight name <-> key base B (FORMAT.md §3.1).  Results are tr_malloc'ed (NULL on allocation failure). */
char *tr_key_base_from_name(const char *dotted_name);
char *tr_name_from_key_base(const char *key_base);

/* ---- trellis v3 writer (FORMAT.md §2.3, §3.2) ---------------------------------------------------------------- */

typedef struct tr_v3_writer tr_v3_writer;

typedef struct tr_v3_options {
    uint64_t shard_limit;       /* bytes of data per shard (default 2 GiB when 0) */
    uint32_t group_size;        /* written to quantization_index.json (default 128 when 0) */
    tr_rotation rotation;       /* file default */
} tr_v3_options;

/* Linears are declared first, in writing order, so that shard numbering is known before any file is written; then
 * their data is put in the same order and each shard is written as soon as it is complete. */
int tr_v3_writer_new(const char *dir, const tr_v3_options *opt, tr_v3_writer **out, tr_error *err);
int tr_v3_writer_declare(tr_v3_writer *w, const char *dotted_name, uint32_t O, uint32_t I, unsigned bits,
                         uint32_t G, tr_rotation rotation, tr_error *err);
/* Name of the linear tr_v3_writer_put expects next (writing order), NULL when all were put.  The first call ends
 * the declaration phase. */
const char *tr_v3_writer_next(tr_v3_writer *w);
/* Data of the next declared linear (must match its declaration); arrays are copied. */
int tr_v3_writer_put(tr_v3_writer *w, const char *dotted_name, const tr_qweight *q, tr_error *err);
/* A float tensor for base_weights.safetensors (copied). */
int tr_v3_writer_add_float(tr_v3_writer *w, const char *name, tr_dtype dtype, unsigned ndim, const uint64_t *shape,
                           const void *data, tr_error *err);
/* Write base_weights.safetensors, model.safetensors.index.json and quantization_index.json. */
int tr_v3_writer_finish(tr_v3_writer *w, tr_error *err);
void tr_v3_writer_free(tr_v3_writer *w);

#endif
