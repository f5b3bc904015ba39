/*
 * reg_internal.h — what the registry's files share (private to reference/): the op table, the seeded generators of
 * KERNELS.md §6, quantized-weight input helpers, and the bound helpers of §2.3.
 */
#ifndef TRELLIS_REG_INTERNAL_H
#define TRELLIS_REG_INTERNAL_H

#include "trellis/ops.h"
#include "trellis/registry.h"
#include "trellis/rng.h"

/* The op table, in KERNELS.md §4 order (reg_ops.c). */
extern const tr_opdef *const reg_ops[];
extern const size_t reg_op_count;

/* ---- generators (reg_gen.c) ---------------------------------------------------------------------------------- */

/* The stream of tensor `name` of the case: xoshiro256** seeded with splitmix64(C ^ fnv1a64(name)). */
void reg_stream(const tr_case *c, const char *name, tr_rng *r);

/* Fill a F32/F16/BF16 buffer from its own stream with a distribution of KERNELS.md §6.2: normal, uniform, large,
 * subnormal, zeros, signed_zeros, mixed, nan_inf (normal, then §6.3 injection at rate 0.01).  sigma scales normal and
 * uniform.  Returns TR_E_INVALID_PARAM for an unknown name. */
int reg_fill(const tr_case *c, tr_buf *b, const char *dist, double sigma);
/* Inject NaN/+Inf/-Inf at m = max(1, round(rate·n)) positions (Floyd's algorithm, ascending, repeating). */
void reg_inject_nonfinite(tr_rng *r, tr_buf *b, double rate);

/* Element access of float buffers (F32, F16, BF16). */
double reg_get(const tr_buf *b, uint64_t i);
void reg_set(tr_buf *b, uint64_t i, double v);   /* rounds once to the buffer dtype (RN) */
/* Multiply every element by 2^e exactly (e <= 0 for scaling down). */
void reg_scale_pow2(tr_buf *b, int e);

typedef struct reg_qspec {
    uint32_t O, I, gs;
    unsigned bits;
    const char *signs;         /* unit | random | general */
    const char *scale;         /* normal | tiny | huge | zero */
    const char *pattern;       /* uniform | zero | max | alternating */
    const char *padding;       /* canonical | garbage */
    int h16;                   /* scales f16-exact and signs ±1 (adapter H16) */
} reg_qspec;

/* Four input buffers "<p>.indices" U8 [1+body], "<p>.scales" F32 [G][O], "<p>.su" F32 [I], "<p>.sv" F32 [O]. */
int reg_make_qweight(const tr_case *c, tr_bufs *in, const char *prefix, const reg_qspec *s, tr_error *err);
/* A view of those buffers (O, I from su/sv lengths). */
int reg_qweight_view(const tr_bufs *in, const char *prefix, uint32_t gs, tr_rotation rot, tr_qweight *w);
/* W16 of a view widened to f64, [O][I] (tr_malloc'ed). */
double *reg_weights_f64(const tr_qweight *w);

/* Routing of KERNELS.md §6.4 into ids[T][k]; returns TR_E_INVALID_PARAM for an unknown name. */
int reg_make_routing(const tr_case *c, const char *stream, const char *routing, uint32_t T, uint32_t k, uint32_t E,
                     int32_t *ids);
/* Softmax of normal logits over the k slots of each token, renormalised (f16-exact when h16). */
void reg_make_probs(const tr_case *c, const char *stream, uint32_t T, uint32_t k, int h16, float *p);

/* ---- bounds (reg_bound.c) ------------------------------------------------------------------------------------ */

/* Unit roundoff and underflow floor of the variant's accumulation (KERNELS.md §2.3). */
double reg_unit(const tr_case *c);
double reg_eta(const tr_case *c);
/* Declared depth for a reduction of length n. */
double reg_depth(const tr_case *c, size_t n);

/* Dot bound of one output: A = Σ|a·b|, D = Σ|a|·δ, E = γ_d(u)(A + D) + D + n·η (prob: √d·u). */
typedef struct reg_dot {
    double A, D;
    size_t n;
} reg_dot;
double reg_dot_bound(const tr_case *c, const reg_dot *d, int prob);
/* Allocate the three arrays of output k (numel doubles each). */
int reg_bound_alloc(uint64_t n, double **hi, double **B, double **P, tr_error *err);

/* The dequant slack δ of a weight w16 under the variant's adapter (0 for canonical variants). */
double reg_slack(const tr_case *c, double w16);

#endif

/* ---- shared axes (reg_axes.c; KERNELS.md §5) ---------------------------------------------------------------- */
/* Value lists (labels in case-id spelling) and initializers usable in static axis tables. */
extern const char *const reg_bits_v[7], *const reg_dims_o_v[13], *const reg_dims_i_v[13], *const reg_dims_k_v[13],
    *const reg_dims_n_v[13], *const reg_rows_v[22], *const reg_gs_v[6], *const reg_signs_v[3], *const reg_values_v[8],
    *const reg_acc_v[2], *const reg_shapes_v[7], *const reg_topk_v[9], *const reg_experts_v[11],
    *const reg_routing_v[9];
extern const char *reg_tuples_v[343];

#define REG_BITS_INIT {"BITS", reg_bits_v, 7, 0, 2}          /* default b = 4 */
#define REG_DIMS_O_INIT {"O", reg_dims_o_v, 13, 0, 0}
#define REG_DIMS_I_INIT {"I", reg_dims_i_v, 13, 0, 0}
#define REG_DIMS_K_INIT {"K", reg_dims_k_v, 13, 0, 0}
#define REG_DIMS_N_INIT {"N", reg_dims_n_v, 13, 0, 0}
#define REG_ROWS_M_INIT {"ROWS", reg_rows_v, 22, 0, 0}
#define REG_GS_INIT {"GS", reg_gs_v, 6, 0, 0}
#define REG_SIGNS_INIT {"SIGNS", reg_signs_v, 3, 0, 0}
#define REG_VALUES_INIT {"VALUES", reg_values_v, 8, 0, 0}
#define REG_ACC_INIT {"acc", reg_acc_v, 2, 0, 0}
#define REG_SHAPES_INIT {"EXPERT SHAPES", reg_shapes_v, 7, 0, 0}
#define REG_TOPK_INIT {"TOP_K", reg_topk_v, 9, 0, 0}
#define REG_EXPERTS_INIT {"EXPERTS", reg_experts_v, 11, 0, 0}
#define REG_ROUTING_INIT {"ROUTING", reg_routing_v, 9, 0, 0}        /* incl. invalid (ref/cpu error paths) */
#define REG_ROUTING_VALID_INIT {"ROUTING", reg_routing_v, 8, 0, 0}  /* valid ids only */
#define REG_TUPLES_INIT {"TUPLES", (const char *const *)reg_tuples_v, 343, 12, 0}   /* --quick: practice list */

/* Is "g-u-d" one of the 12 practice tuples (KERNELS.md §5)? */
int reg_tuple_is_practice(const char *g_u_d);
/* Parse "g-u-d" (each 2..8). */
int reg_tuple_parse(const char *s, unsigned t[3]);
/* Range contract of KERNELS.md §6.5: the largest 2^e (e <= 0) that brings `sum` under `limit`. */
int reg_fit_exponent(double sum, double limit);

#define REG_VARIANTS_REF_CPU(cls)                                                                                    \
    {"ref", "ref", "ref", 0, 1, cls, "", 0, 1, 0, "", NULL, NULL, NULL, 0},                                            \
    {"cpu", "cpu", "cpu", 0, 1, cls, "", 0, 1, 0, "", NULL, NULL, NULL, 0}

/* A foreign Metal variant of KERNELS.md §4 (order unspecified): id, symbol, acc f16?, class, adapter, binding family
 * and launch ids (cli/conform_metal.c), domain predicate and text, dequant slack (H16), order-free accumulation.
 * e_exp is 3 (Metal relaxed math; the bound uses 3 + floor(2|g|) relaxed, 4 safe: reg_e_exp). */
#define REG_METAL(id, sym, f16, cls, adapter, binding, launch, dom, text, slack, ofree)                               \
    {id, sym, "metal", f16, 0, cls, adapter, 0, 3, slack, text, binding, launch, dom, ofree}

/* e_exp of KERNELS.md §2.3 for an activation input g: 1 for ref/cpu (the variant's), 4 for Metal safe math,
 * 3 + floor(2|g|) for Metal relaxed math. */
double reg_e_exp(const tr_case *c, double g);

/* Domain helpers shared by the Metal variant records (reg_metal_domain.c). */
int reg_dom_acc(const tr_case *c, char *why, size_t cap);           /* the case's acc axis equals the variant's */
int reg_dom_why(char *why, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));   /* returns 0 */
