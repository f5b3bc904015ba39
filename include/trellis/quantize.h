/*
 * quantize.h — the deterministic reference quantizer of `trellis quantize` (FORMAT.md §6.4, §6.5): one float32
 * matrix W[O,I] to a grid-format tr_qweight with its squared error, the --bits SPEC grammar, the role of a tensor
 * name, and the greedy avg=X bit allocation.
 *
 * Per row o (rotation hadamard128: Wr[o,:] = Hn_blocks(W[o,:] ⊙ su), otherwise Wr = W), per group g of 128 columns:
 *   absmax:  S = max(fl32(m / grid_b[L−1]), 2^-24),  m = max_{i∈g} |Wr[o,i]|
 *   mse:     S = the S_r, r = 1 − j/64 (j = 0..31), S_r = max(fl32(fl32(r·m) / grid_b[L−1]), 2^-24), with the
 *            least Σ_{i∈g} (f32(RNh(fl32(grid_b[q]·S_r))) − Wr[o,i])² (double, ascending i; ties → larger r)
 *   q(o,i) = argmin_j fl32(|fl32(Wr[o,i] / S) − grid_b[j]|)   (j upward, strict <: ties → lower j)
 * and SSE = Σ (f32(Ŵ16[o,i]) − Wr[o,i])² in double over the flat index o·I + i ascending.
 */
#ifndef TRELLIS_QUANTIZE_H
#define TRELLIS_QUANTIZE_H

#include "trellis/qweight.h"
#include "trellis/status.h"

#include <stddef.h>
#include <stdint.h>

#define TR_QUANT_GROUP_SIZE 128u    /* gs of every tensor the quantizer writes */
#define TR_QUANT_DEFAULT_SEED 42u
#define TR_QUANT_MSE_STEPS 32u      /* clip ratios r = 1 − j/64, j = 0..31 */
#define TR_QUANT_MIN_SCALE 0x1p-24f

/* ---- one matrix ------------------------------------------------------------------------------------------------ */

typedef enum tr_qscale { TR_QSCALE_ABSMAX = 0, TR_QSCALE_MSE = 1 } tr_qscale;

const char *tr_qscale_name(tr_qscale s);             /* "absmax" | "mse" */
int tr_qscale_parse(const char *name, tr_qscale *out);   /* 0, or -1 for an unknown name */

typedef struct tr_quant_opts {
    tr_qscale scale;
    tr_rotation rotation;      /* requested; hadamard128 falls back to none when I % 128 != 0 */
    uint64_t seed;             /* sign seed (TR_QUANT_DEFAULT_SEED by default) */
    const char *where;         /* first part of error messages (e.g. the source file); NULL: the tensor name */
} tr_quant_opts;

/* A quantized matrix owning its arrays; w is a view of them (w.rotation is the effective rotation). */
typedef struct tr_qtensor {
    tr_qweight w;
    uint8_t *indices;          /* header byte b + packed stream (FORMAT.md §4) */
    float *scales;             /* [G][O] */
    float *su;                 /* [I] */
    float *sv;                 /* [O] */
    double sse;                /* Σ (f32(Ŵ16) − Wr)², double, ascending flat index */
    uint64_t numel;            /* O·I */
} tr_qtensor;

/* The rotation a layer gets: hadamard128 only when I % 128 == 0. */
tr_rotation tr_quant_effective_rotation(tr_rotation requested, uint32_t I);

/* su[i] = −1 when bit 63 of the i-th splitmix64 output is 1, else +1; state seeded with seed ^ fnv1a64(name). */
void tr_quant_signs(const char *name, uint64_t seed, uint32_t I, float *su);

/* max(fl32(m / grid_b[L−1]), 2^-24). */
float tr_quant_scale_of(float m, unsigned bits);

/* argmin_j fl32(|x − grid_b[j]|), scanning j upward with strict < (ties → lower j).  Bracketing fast path; the
 * plain scan (also exported, for tests) where the fast path's argument does not hold. */
unsigned tr_quant_nearest(float x, unsigned bits);
unsigned tr_quant_nearest_scan(float x, unsigned bits);

/* Quantize W[O][I] (float32, row-major) named `name` (dotted, e.g. "model.layers.0.self_attn.q_proj.weight") at
 * bits 2..8.  TR_E_NONFINITE for a non-finite element (or a rotated value that overflows), TR_E_INVALID_PARAM for
 * bad arguments, TR_E_NOMEM.  On success out owns its arrays (free with tr_qtensor_free). */
int tr_quantize(const char *name, const float *W, uint32_t O, uint32_t I, unsigned bits, const tr_quant_opts *opt,
                tr_qtensor *out, tr_error *err);
void tr_qtensor_free(tr_qtensor *q);

/* sse[b] = the SSE tr_quantize would report at width b, for b = 2..8 (sse[0], sse[1] set to 0), computed with one
 * rotation of each row. */
int tr_quantize_sse_table(const char *name, const float *W, uint32_t O, uint32_t I, const tr_quant_opts *opt,
                          double sse[9], tr_error *err);

/* ---- roles and --bits SPEC (FORMAT.md §6.5) -------------------------------------------------------------------- */

typedef enum tr_qrole {
    TR_QROLE_ATTN = 0,         /* model.layers.N.self_attn.{q_a,q_b,q,k,v,kv_a_…_with_mqa,kv_b,o}_proj.weight */
    TR_QROLE_GATE,             /* model.layers.N.mlp.experts.E.gate_proj.weight */
    TR_QROLE_UP,
    TR_QROLE_DOWN,
    TR_QROLE_SHARED,           /* model.layers.N.mlp.shared_experts.{gate,up,down}_proj.weight */
    TR_QROLE_DENSE,            /* model.layers.N.mlp.{gate,up,down}_proj.weight */
    TR_QROLE_LM_HEAD,          /* lm_head.weight */
    TR_QROLE_COUNT
} tr_qrole;

const char *tr_qrole_name(tr_qrole r);   /* "attn", "gate", ... as SPEC spells them */
/* The role of a dotted tensor name, or -1 when the tensor is not one of the quantizable linears (router
 * mlp.gate.weight, norms, embeddings, ...). */
int tr_quant_role(const char *name);

typedef struct tr_bits_spec {
    unsigned role_bits[TR_QROLE_COUNT];   /* 0: role not given */
    unsigned default_bits;                /* 4 unless given */
    int default_given;
    int has_avg;
    double avg;                           /* avg=X target, 2 <= X <= 8 */
} tr_bits_spec;

#define TR_BITS_ALLOCATED (-1)

/* Parse SPEC: comma-separated role=b items or a bare b (= default=b), or avg=X in place of default.  Errors are
 * TR_E_USAGE with where "--bits" (messages listed in tests/check_quantize.c). */
int tr_bits_spec_parse(const char *text, tr_bits_spec *out, tr_error *err);
/* Width of a role: the given width; 0 for lm_head not given (stays float); TR_BITS_ALLOCATED in avg mode for a
 * role not given; the default otherwise. */
int tr_bits_spec_width(const tr_bits_spec *s, tr_qrole role);

/* Writing order of FORMAT.md §3.2 (layers ascending, names bytewise within a layer, lm_head last) as strcmp does. */
int tr_quant_order_cmp(const char *a, const char *b);

/* One tensor of the greedy allocation, listed in writing order. */
typedef struct tr_alloc_tensor {
    const char *name;
    uint64_t numel;
    unsigned fixed_bits;       /* 2..8: fixed by a role; 0: allocated */
    double sse[9];             /* SSE(b) for b = 2..8 (allocated tensors only) */
} tr_alloc_tensor;

/* avg=X: allocated tensors start at 8; while Σ b·numel / Σ numel (over all n tensors, double division) > X, the
 * allocated tensor with b > 2 and the least (SSE(b−1) − SSE(b)) / numel (NaN counts as +inf; ties → first listed)
 * loses one bit.  bits[k] receives every tensor's width.  TR_E_USAGE when all allocated tensors reach 2 bits with
 * the average still above X. */
int tr_bits_allocate(const tr_alloc_tensor *t, size_t n, double avg, unsigned *bits, tr_error *err);

#endif
