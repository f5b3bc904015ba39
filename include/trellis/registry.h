/*
 * registry.h — the conformance op registry of KERNELS.md as pure functions: ops and variants, parameter spaces and
 * the three tiers (§5), case ids and seeds (§6.1), seeded input generators (§6), the comparison of outputs by
 * conformance class with every metric of §2.4, and the verdict taxonomy (§2.5).
 *
 * Nothing here forks, times or writes files: the runner (cli/cmd_conform.c) does that.  A case is executed as
 *   inputs = op->make_inputs(case)          (canonical form, seeded)
 *   expect = op->run(NULL backend, case)    (the reference, in the variant's accumulation mode)
 *   got    = op->run(backend, case)         (into guarded, poisoned buffers)
 *   result = tr_compare(case, expect, got, bounds)
 */
#ifndef TRELLIS_REGISTRY_H
#define TRELLIS_REGISTRY_H

#include "trellis/backend.h"
#include "trellis/safetensors.h"
#include "trellis/status.h"

#include <stddef.h>
#include <stdint.h>

#define TR_MAX_AXES 16
#define TR_CASE_ID_MAX 512

/* Math mode a Metal library was compiled with (KERNELS.md §3, --metal-math). */
enum { TR_MATH_NONE = 0, TR_MATH_RELAXED = 1, TR_MATH_SAFE = 2 };

typedef enum tr_class { TR_CLASS_EXACT = 0, TR_CLASS_ORDERED, TR_CLASS_TOLERANT } tr_class;
typedef enum tr_tier { TR_TIER_QUICK = 0, TR_TIER_FULL, TR_TIER_EXHAUSTIVE } tr_tier;
typedef enum tr_verdict {
    TR_PASS = 0, TR_FAIL, TR_PRECISION_WARNING, TR_UNSUPPORTED, TR_RESOURCE_ERROR, TR_CRASH, TR_TIMEOUT,
    TR_VERDICT_COUNT
} tr_verdict;

const char *tr_class_name(tr_class c);
const char *tr_tier_name(tr_tier t);
const char *tr_verdict_name(tr_verdict v);
int tr_verdict_parse(const char *name, tr_verdict *out);

/* ---- parameters ------------------------------------------------------------------------------------------------- */

/* One axis: its values are labels of one or more "key=value" items joined by ';' (e.g. "O=17" or "g=6;u=2;d=3").
 * quick_nvalues > 0 restricts --quick to the first values (e.g. the practice tuples of TUPLES). */
typedef struct tr_axis {
    const char *name;
    const char *const *values;
    int nvalues;
    int quick_nvalues;
    int dflt;                  /* index of the default value (KERNELS.md §5: the first listed unless stated) */
} tr_axis;

/* A parameter point as its canonical text "k=v;k=v;…" (registry axis order) with parsed items. */
typedef struct tr_params {
    char text[TR_CASE_ID_MAX];
    int n;
    const char *key[48];
    const char *val[48];
    char store[TR_CASE_ID_MAX];
} tr_params;

int tr_params_parse(tr_params *p, const char *text);
const char *tr_params_str(const tr_params *p, const char *key);       /* NULL when absent */
int64_t tr_params_int(const tr_params *p, const char *key, int64_t dflt);
double tr_params_real(const tr_params *p, const char *key, double dflt);
int tr_params_is(const tr_params *p, const char *key, const char *value);

/* ---- buffers --------------------------------------------------------------------------------------------------- */

typedef enum tr_role { TR_ROLE_INPUT = 0, TR_ROLE_OUTPUT = 1 } tr_role;

typedef struct tr_buf {
    char name[32];
    tr_role role;
    tr_dtype dtype;
    unsigned ndim;
    uint64_t shape[4];
    uint8_t *data;             /* numel·elemsize bytes (outputs: inside a guarded allocation owned by the runner) */
    size_t bytes;
    int accumulating;          /* outputs: zero-filled before launch instead of poisoned (KERNELS.md §2.5) */
} tr_buf;

/* Buffers by name; entries are allocated one by one so a tr_buf * stays valid while more are added. */
typedef struct tr_bufs {
    tr_buf **v;
    int n, cap;
} tr_bufs;

/* Add a buffer (data allocated with tr_calloc); returns it or NULL on allocation failure. */
tr_buf *tr_bufs_add(tr_bufs *b, const char *name, tr_role role, tr_dtype dt, unsigned ndim, const uint64_t *shape);
tr_buf *tr_bufs_get(const tr_bufs *b, const char *name);
void tr_bufs_free(tr_bufs *b);
uint64_t tr_buf_numel(const tr_buf *b);

/* ---- ops, variants, cases -------------------------------------------------------------------------------------- */

typedef struct tr_opdef tr_opdef;
typedef struct tr_case tr_case;

/* A variant record (KERNELS.md §3). */
typedef struct tr_variant {
    const char *id;            /* "ref", "cpu", or a foreign variant id ("decode", "fp32acc", a symbol, …) */
    const char *symbol;        /* "ref", "cpu" or the Metal function name */
    const char *backend;       /* backend family that can run it: "ref", "cpu", "metal" */
    int acc_f16;               /* accumulation format f16 (else f32); ops without accumulation: 0 */
    int canonical;             /* order=canonical -> ORDERED ops compare bitwise */
    tr_class cls;              /* class on its backend */
    const char *adapter;       /* "" for canonical form, else e.g. "PK", "STACK+H16" */
    double depth_per16;        /* declared structure: 0 = canonical/unspecified (see tr_case_depth) */
    int e_exp;                 /* declared exp error in f32 ulps (1 for ref/cpu) */
    double dequant_slack;      /* 1 when the adapter is H16 (δ = 2^-9·|W16| + 2^-24), else 0 */
    const char *domain;        /* declared domain, e.g. "T=1" (text, informative) */
    /* Metal variants (KERNELS.md §3, §4; the metal-emu runner binds them, cli/conform_metal.c): */
    const char *binding;       /* binding family id ("DQ_PK", "GEMM", "MOE18", …; docs/schemas.md), NULL otherwise */
    const char *launch;        /* launch geometry id ("TG16", "G128", "MOE", …) */
    /* The declared domain as a predicate on the case (1 inside; else 0 with the reason in why).  Every Metal variant
     * also declares gs in {16, 32, 64, 128, 256} (checked by the runner).  NULL: no further restriction. */
    int (*in_domain)(const tr_case *c, char *why, size_t cap);
    int order_free;            /* accumulates with atomics in any order: outputs may differ between schedules */
} tr_variant;

/* Everything the comparison needs for one output: the canonical reference, and for ORDERED/TOLERANT outputs the
 * f64 exact math ref_hi with the analytical bound B and the probabilistic bound P per element. */
typedef struct tr_expect {
    tr_bufs canon;             /* ref_canon, same names/dtypes/shapes as the outputs */
    int status;                /* the reference's return code (an expected error, e.g. INVALID_EXPERT_ID) */
    double **hi, **B, **P;     /* per output index (canon.n entries); an entry is NULL when there is no bound */
} tr_expect;

void tr_expect_free(tr_expect *e);

struct tr_opdef {
    const char *name;
    const tr_axis *axes;
    int naxes;
    tr_class cls;                                      /* class of the ref/cpu variants */
    const tr_variant *variants;                        /* ref and cpu first, then foreign ones */
    int nvariants;
    const char *const *always;                         /* extra points, full "k=v;…" texts */
    int nalways;
    const char *const *quick_always;                   /* the "always" points --quick runs (NULL: all of always) */
    int nquick_always;
    int (*valid)(const tr_params *p);                  /* constraints of a complete point; NULL = all valid */
    /* Inputs in canonical form and output buffers (shapes/dtypes) for the case. */
    int (*make)(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err);
    /* Compute outputs: be == NULL means the reference in the variant's accumulation mode. */
    int (*run)(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err);
    /* Optional: ref_hi, B, P for output k (arrays of numel doubles, allocated by the callee). */
    int (*bound)(const tr_case *c, const tr_bufs *in, const tr_bufs *canon, int k, double **hi, double **B,
                 double **P, tr_error *err);
    /* The "always" points the metal-emu --quick tier runs (NULL: those of --quick); docs/decisions.md. */
    const char *const *metal_quick_always;
    int nmetal_quick_always;
};

struct tr_case {
    const tr_opdef *op;
    const tr_variant *variant;
    tr_params params;
    int rep;
    uint64_t master_seed;
    uint64_t seed;             /* C = splitmix64(S ^ fnv1a64(case id)) */
    uint64_t index;            /* enumeration number (fixes shards) */
    int acc_f16;               /* accumulation format (tr_case_acc_f16), fixed at init */
    int metal;                 /* the variant runs on a Metal backend */
    int metal_math;            /* Metal variants: TR_MATH_RELAXED (default) or TR_MATH_SAFE; 0 for ref/cpu */
    char id[TR_CASE_ID_MAX];
};

size_t tr_registry_count(void);
const tr_opdef *tr_registry_op(size_t i);
const tr_opdef *tr_registry_find(const char *name);
const tr_variant *tr_op_variant(const tr_opdef *op, const char *id);

/* Fill id, seed from op, variant, params text and rep.  TR_E_INVALID_PARAM when the text is malformed. */
int tr_case_init(tr_case *c, const tr_opdef *op, const tr_variant *v, const char *params, int rep, uint64_t master);
/* Parse a case id "<op>/<variant>/<params>/<rep>" back into a case. */
int tr_case_from_id(tr_case *c, const char *id, uint64_t master, tr_error *err);
/* Stream seed of one tensor: splitmix64(C ^ fnv1a64(name)). */
uint64_t tr_case_stream_seed(const tr_case *c, const char *tensor);

/* The tier's parameter points of an op in enumeration order (KERNELS.md §5): the tier's points in lexicographic
 * order of the axes as listed (last axis fastest), then the always points, duplicates dropped after their first
 * occurrence.  --exhaustive is iterated lazily (the filtered cartesian product can have millions of points). */
typedef struct tr_point_iter {
    const tr_opdef *op;
    tr_tier tier;
    int *list;                 /* quick/full: chosen points as value indices, naxes per point, sorted */
    size_t nlist, pos;
    int odo[TR_MAX_AXES];      /* exhaustive: mixed-radix counter */
    int odo_done;
    int always_pos;
    int (*pred)(void *ctx, const tr_params *p);
    void *ctx;
    const char *const *always;     /* tr_point_iter_use_always: these always points instead of the op's */
    int nalways;
} tr_point_iter;

/* A further constraint on a tier's points (1 inside), e.g. a variant's declared domain. */
typedef int (*tr_point_pred)(void *ctx, const tr_params *p);

int tr_point_iter_init(tr_point_iter *it, const tr_opdef *op, tr_tier tier, tr_error *err);
/* The same with pred as one more constraint of the op (KERNELS.md §5 "the op's constraints"): the quick and full
 * tiers are built from the points that satisfy it, the exhaustive product is filtered by it; the always points are
 * kept as listed.  pred NULL: tr_point_iter_init. */
int tr_point_iter_init_pred(tr_point_iter *it, const tr_opdef *op, tr_tier tier, tr_point_pred pred, void *ctx,
                            tr_error *err);
/* Iterate these always points (after the tier's points) instead of the op's list for the tier. */
void tr_point_iter_use_always(tr_point_iter *it, const char *const *list, int n);
/* Next point's text into buf; returns 1, or 0 at the end. */
int tr_point_iter_next(tr_point_iter *it, char *buf, size_t cap);
void tr_point_iter_free(tr_point_iter *it);

/* ---- comparison ------------------------------------------------------------------------------------------------ */

typedef struct tr_mismatch {
    int valid;
    char output[32];
    uint64_t index;
    unsigned ndim;
    uint64_t coords[4];
    char got[24], expected[24];   /* hex bit patterns "0x3c00" */
    double bound;
} tr_mismatch;

typedef struct tr_result {
    tr_verdict status;
    tr_class cls;              /* class the comparison used */
    double max_abs, nmse, bound, bound_ratio, prob_ratio;
    int64_t max_ulp;
    uint64_t mismatches, unwritten;
    int64_t tie_flips;         /* -1 = not applicable */
    tr_mismatch first;
    char detail[1536];
} tr_result;

/* Compare outputs by the variant's class.  Bitwise comparison applies to EXACT ops and to ORDERED ops of canonical
 * variants; otherwise TOLERANT with e->hi/B/P.  Poison checks use the pattern each dtype is pre-filled with. */
void tr_compare(const tr_case *c, const tr_bufs *got, const tr_expect *e, tr_result *r);
/* The same with an explicit class (the runner's self-check holds ref_canon to the TOLERANT bound of ref_hi). */
void tr_compare_class(const tr_case *c, const tr_bufs *got, const tr_expect *e, tr_class cls, tr_result *r);
/* Accumulation format of a case: the variant's for foreign variants, the "acc" parameter for ref/cpu. */
int tr_case_acc_f16(const tr_case *c);
/* Verdict-relevant class of a case: EXACT ops stay EXACT; ORDERED ops are bitwise for canonical variants. */
tr_class tr_case_class(const tr_case *c);

/* Poison of never-written outputs (KERNELS.md §2.5): f16 0x7E5A, f32 0x7FDEAD5A, integers 0xA5 bytes. */
void tr_poison_fill(tr_buf *b);

/* ---- adapters (KERNELS.md §3; reg_adapt.c) ----------------------------------------------------------------------
 * Canonical quantized weights (indices with header byte, tiles t = to·T_I + ti, in-tile e = (o%16)·16 + (i%16)) in
 * the forms Metal variants bind.  GEMM view: K = I, N = O. */

/* PK: the packed body without the header byte, tiles in GEMM order [T_I][T_O] (tile (ti,to) at ti·T_O + to), each
 * tile's 32·b bytes unchanged.  out holds T_O·T_I·32·b bytes. */
void tr_adapt_pk(const uint8_t *indices, uint32_t O, uint32_t I, uint8_t *out);
/* I16: indices as i16 [T_I][T_O][256] with in-tile position (i%16)·16 + (o%16); padded positions hold the pad index
 * of the stream (canonical padding, or whatever garbage it holds). */
void tr_adapt_i16(const uint8_t *indices, uint32_t O, uint32_t I, int16_t *out);
/* BULK: one f32 scale per I16 tile, S[ti·16/gs][to·16] for tile ti·T_O + to ([T_I·T_O]). */
void tr_adapt_bulk_scales(const float *S, uint32_t O, uint32_t I, uint32_t gs, float *out);

#endif
