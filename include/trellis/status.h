/*
 * status.h — the one table of every status code the harness reports.
 *
 * Every TR_E_* (fatal error) and TR_W_* (warning, loading continues) code named by the specs (FORMAT.md, KERNELS.md,
 * MOE.md, ENGINE.md, HARNESS.md) is one row of TR_STATUS_TABLE: its name, its meaning and the exit code of the
 * `trellis` CLI when a command fails with it.  Warnings carry exit code 0: they never fail a command by themselves
 * (`inspect --strict` turns "any warning" into exit 1, see ENGINE.md §8).
 *
 * Errors travel as a return code plus one tr_error whose text reads "<where>: <CODE>: <detail>" (FORMAT.md §2.1),
 * where <where> names the file, tensor, field or index.
 */
#ifndef TRELLIS_STATUS_H
#define TRELLIS_STATUS_H

#include <stdarg.h>
#include <stddef.h>

/*   name                      value  exit  meaning */
#define TR_STATUS_TABLE(X) \
    X(TR_OK,                      0,   0, "success") \
    /* files, containers, checkpoints (FORMAT.md) */ \
    X(TR_E_IO,                    1,   2, "file cannot be opened, read or written") \
    X(TR_E_NOMEM,                 2,   4, "allocation or mmap failure") \
    X(TR_E_NOSPACE,               3,   4, "disk full while writing") \
    X(TR_E_LAYOUT,                4,   2, "checkpoint directory layout not recognised") \
    X(TR_E_INDEX_JSON,            5,   2, "JSON index/metadata file malformed (syntax, duplicate member, member type)") \
    X(TR_E_INDEX_PATH,            6,   2, "weight_map value is not a plain file name in the same directory") \
    X(TR_E_TENSOR_MISSING,        7,   2, "tensor not found") \
    X(TR_E_TENSOR_DUPLICATE,      8,   2, "tensor defined twice") \
    X(TR_E_DTYPE,                 9,   2, "tensor dtype not allowed here") \
    X(TR_E_UNSUPPORTED,          10,   2, "format, value or feature not supported") \
    X(TR_E_SHAPE,                11,   2, "tensor shape inconsistent") \
    X(TR_E_NONFINITE,            12,   2, "non-finite value where a finite one is required") \
    X(TR_E_QBITS,                13,   2, "quantized bit width out of range") \
    X(TR_E_QSIZE,                14,   2, "packed index tensor has the wrong length") \
    X(TR_E_QGROUP,               15,   2, "scale group size inconsistent with the scales shape") \
    /* safetensors container rules (FORMAT.md §2.6) */ \
    X(TR_E_ST_TRUNCATED,         20,   2, "safetensors file truncated") \
    X(TR_E_ST_HEADER_SIZE,       21,   2, "safetensors header length out of range") \
    X(TR_E_ST_HEADER_JSON,       22,   2, "safetensors header is not one valid UTF-8 JSON object") \
    X(TR_E_ST_DUPLICATE,         23,   2, "safetensors header repeats a member name") \
    X(TR_E_ST_METADATA,          24,   2, "safetensors __metadata__ is not an object of strings") \
    X(TR_E_ST_ENTRY,             25,   2, "safetensors tensor entry malformed") \
    X(TR_E_ST_DTYPE,             26,   2, "safetensors dtype unknown") \
    X(TR_E_ST_SHAPE,             27,   2, "safetensors shape malformed") \
    X(TR_E_ST_OFFSETS,           28,   2, "safetensors data_offsets malformed") \
    X(TR_E_ST_SIZE,              29,   2, "safetensors tensor byte size does not match its shape") \
    X(TR_E_ST_LAYOUT,            30,   2, "safetensors data buffer has holes, overlaps or trailing bytes") \
    /* ops (KERNELS.md §0) */ \
    X(TR_E_INVALID_SHAPE,        40,   2, "op input shape invalid") \
    X(TR_E_INVALID_PARAM,        41,   2, "op parameter out of range") \
    X(TR_E_INVALID_EXPERT_ID,    42,   2, "expert id outside [0, E)") \
    X(TR_E_NAN_DETECTED,         43,   1, "NaN guard found a non-finite value (abort policy)") \
    /* engine, tokenizer, CLI (ENGINE.md §8, HARNESS.md §8) */ \
    X(TR_E_CONFIG,               50,   2, "model config field missing or invalid") \
    X(TR_E_TOKENIZER,            51,   2, "tokenizer file malformed or unsupported") \
    X(TR_E_UTF8,                 52,   2, "invalid UTF-8 input") \
    X(TR_E_TOKEN_ID,             53,   2, "token id out of range") \
    X(TR_E_USAGE,                54,   2, "command-line usage error") \
    X(TR_E_INPUT,                55,   2, "input data invalid") \
    X(TR_E_INTERNAL,             60,   3, "internal error") \
    X(TR_E_INTERRUPTED,          61, 130, "interrupted") \
    /* warnings (FORMAT.md) */ \
    X(TR_W_UNLISTED_TENSOR,     100,   0, "tensor in a shard but not in weight_map (ignored)") \
    X(TR_W_TOTAL_SIZE,          101,   0, "index metadata total_size differs from the tensors' byte sizes") \
    X(TR_W_BITS_MISMATCH,       102,   0, "metadata bits disagree with the indices header byte") \
    X(TR_W_MISALIGNED,          103,   0, "tensor data not aligned to its element size") \
    X(TR_W_NO_QMETA,            104,   0, "quantized tensor without a quantization_index.json entry") \
    X(TR_W_NO_TENSORS,          105,   0, "quantization_index.json entry without tensors") \
    X(TR_W_GROUP_SIZE,          106,   0, "group size inferred from the scales shape") \
    X(TR_W_UNRECOGNIZED,        107,   0, "tensor key not recognised") \
    X(TR_W_QUANTIZED_ROUTER,    108,   0, "quantized router ignored in favour of the float one") \
    X(TR_W_SIGNS,               109,   0, "su/sv hold values other than +1/-1") \
    X(TR_W_SCALES,              110,   0, "scales hold values <= 0") \
    X(TR_W_EXL3_FLAG,           111,   0, "EXL3 codebook flag tensor holds an unexpected value") \
    X(TR_W_CONFIG,              112,   0, "config.json value ignored or overridden (ENGINE.md §1)") \
    X(TR_W_ROUTER_BIAS,         113,   0, "noaux_tc forced without e_score_correction_bias: zeros used") \
    X(TR_W_TIED_HEAD,           114,   0, "stored lm_head.weight ignored because tie_word_embeddings is true") \
    X(TR_W_IGNORED_TENSOR,      115,   0, "tensor not used by the model (unknown name or layer >= num_hidden_layers)")

typedef enum tr_status {
#define TR_STATUS_ENUM_(name, value, exit_code, meaning) name = value,
    TR_STATUS_TABLE(TR_STATUS_ENUM_)
#undef TR_STATUS_ENUM_
} tr_status;

/* The code's name ("TR_E_ST_TRUNCATED"), or "TR_E_UNKNOWN" for a value outside the table. */
const char *tr_status_name(int code);
/* One-line meaning of the code. */
const char *tr_status_meaning(int code);
/* CLI exit code of a command that fails with this code (3 for unknown codes). */
int tr_status_exit_code(int code);
/* 1 for TR_W_* codes. */
int tr_status_is_warning(int code);
/* Number of rows and the i-th code of the table (for docs and tests). */
size_t tr_status_count(void);
int tr_status_at(size_t i);

/* The error struct every fallible function fills (modelled on jansson's json_error_t). */
#define TR_ERROR_TEXT 1024
typedef struct tr_error {
    int code;                    /* a tr_status value, TR_OK when nothing failed */
    char text[TR_ERROR_TEXT];    /* "<where>: <CODE>: <detail>" */
} tr_error;

/* Fill *err (may be NULL) and return code.  where names the file/tensor/field; detail is printf-style. */
int tr_fail(tr_error *err, int code, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Reset to TR_OK and an empty text. */
void tr_error_clear(tr_error *err);

/* A growable list of warnings, each "<where>: <CODE>: <detail>" like errors. */
typedef struct tr_warning {
    int code;
    char *text;
} tr_warning;

typedef struct tr_warnings {
    tr_warning *items;
    size_t count, cap;
} tr_warnings;

/* Append a warning.  Returns TR_OK or TR_E_NOMEM.  A NULL list accepts and drops warnings. */
int tr_warn(tr_warnings *list, int code, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int tr_warnv(tr_warnings *list, int code, const char *where, const char *fmt, va_list ap);
void tr_warnings_free(tr_warnings *list);

#endif
