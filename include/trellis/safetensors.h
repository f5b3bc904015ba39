/*
 * safetensors.h — the strict safetensors reader (FORMAT.md §2.6) and the deterministic writer.
 *
 * The reader maps the file read-only, validates the header against every rule of §2.6 in the normative order and
 * exposes each tensor as a view into the mapping.  The writer emits compact JSON, "__metadata__" first, tensors ordered
 * by element size (descending) then name, header padded with spaces to a multiple of 8: identical inputs give
 * identical bytes.
 */
#ifndef TRELLIS_SAFETENSORS_H
#define TRELLIS_SAFETENSORS_H

#include "trellis/status.h"

#include <stddef.h>
#include <stdint.h>

typedef enum tr_dtype {
    TR_DT_BOOL, TR_DT_U8, TR_DT_I8, TR_DT_F8_E5M2, TR_DT_F8_E4M3, TR_DT_F8_E8M0,
    TR_DT_I16, TR_DT_U16, TR_DT_F16, TR_DT_BF16,
    TR_DT_I32, TR_DT_U32, TR_DT_F32,
    TR_DT_I64, TR_DT_U64, TR_DT_F64, TR_DT_C64,
    TR_DT_COUNT
} tr_dtype;

const char *tr_dtype_name(tr_dtype dt);
size_t tr_dtype_size(tr_dtype dt);
/* Parse a safetensors dtype string; returns 0 and sets *out, or -1 for an unknown name. */
int tr_dtype_parse(const char *name, tr_dtype *out);

#define TR_ST_MAX_DIMS 8
#define TR_ST_MAX_HEADER 100000000u

typedef struct tr_st_tensor {
    const char *name;
    tr_dtype dtype;
    unsigned ndim;
    uint64_t shape[TR_ST_MAX_DIMS];
    uint64_t numel;            /* product of shape (1 for rank 0) */
    uint64_t begin, end;       /* data_offsets, relative to the data buffer */
    const uint8_t *data;       /* view into the mapping (may be misaligned; read with memcpy) */
    int aligned;               /* 8 + N + begin is a multiple of the element size */
} tr_st_tensor;

typedef struct tr_st_file tr_st_file;

/* Open and validate path.  On failure *out is NULL and err holds "<path>: <code>: <detail>". */
int tr_st_open(const char *path, tr_st_file **out, tr_error *err);
/* Validate an in-memory file image (not copied: buf must outlive the handle).  label names it in messages. */
int tr_st_open_buffer(const uint8_t *buf, size_t len, const char *label, tr_st_file **out, tr_error *err);
void tr_st_close(tr_st_file *f);

const char *tr_st_path(const tr_st_file *f);
uint64_t tr_st_header_size(const tr_st_file *f);   /* N */
uint64_t tr_st_data_size(const tr_st_file *f);     /* D */
size_t tr_st_count(const tr_st_file *f);
/* Tensors in header order. */
const tr_st_tensor *tr_st_at(const tr_st_file *f, size_t i);
const tr_st_tensor *tr_st_find(const tr_st_file *f, const char *name);
size_t tr_st_metadata_count(const tr_st_file *f);
/* i-th metadata key/value in header order; NULL past the end. */
const char *tr_st_metadata_key(const tr_st_file *f, size_t i);
const char *tr_st_metadata_value(const tr_st_file *f, size_t i);

/* Widen a F32/F16/BF16 tensor exactly to float32 into dst[numel].  TR_E_DTYPE for other dtypes. */
int tr_st_read_f32(const tr_st_file *f, const tr_st_tensor *t, float *dst, tr_error *err);
/* Copy element i of a tensor of any dtype into *dst (tr_dtype_size bytes). */
void tr_st_copy_element(const tr_st_tensor *t, uint64_t i, void *dst);

/* --- writer --- */
typedef struct tr_st_writer tr_st_writer;

tr_st_writer *tr_st_writer_new(void);
/* Register a tensor; data is referenced, not copied, until tr_st_writer_write returns. */
int tr_st_writer_add(tr_st_writer *w, const char *name, tr_dtype dtype, unsigned ndim, const uint64_t *shape,
                     const void *data, tr_error *err);
/* Total data bytes of the registered tensors. */
uint64_t tr_st_writer_data_size(const tr_st_writer *w);
int tr_st_writer_write(tr_st_writer *w, const char *path, tr_error *err);
void tr_st_writer_free(tr_st_writer *w);

#endif
