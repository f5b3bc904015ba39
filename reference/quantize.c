/*
 * quantize.c — the deterministic reference quantizer of FORMAT.md §6.4 (one float32 matrix to a grid-format
 * tr_qweight) with the --scale mse search of §6.5 and the SSE of §6.5.
 *
 * Work goes row by row: the row is rotated once (hadamard128: Wr = Hn_blocks(W ⊙ su); none: Wr = W), each group of
 * 128 columns gets its scale and indices, and the row's squared errors are added to the tensor's running double sum
 * in ascending column order, so the sum runs over the flat index o·I + i ascending as §6.5 defines it.  Every float
 * operation below is one RN32 operation (the build uses -ffp-contract=off, no fast-math).
 */
#include "trellis/quantize.h"
#include "trellis/alloc.h"
#include "trellis/codebook.h"
#include "trellis/fp16.h"
#include "trellis/hadamard.h"
#include "trellis/pack.h"
#include "trellis/rng.h"

#include <math.h>
#include <string.h>

const char *tr_qscale_name(tr_qscale s) { return s == TR_QSCALE_MSE ? "mse" : "absmax"; }

int tr_qscale_parse(const char *name, tr_qscale *out)
{
    if (strcmp(name, "absmax") == 0)
        *out = TR_QSCALE_ABSMAX;
    else if (strcmp(name, "mse") == 0)
        *out = TR_QSCALE_MSE;
    else
        return -1;
    return 0;
}

tr_rotation tr_quant_effective_rotation(tr_rotation requested, uint32_t I)
{
    return requested == TR_ROT_HADAMARD128 && I % 128 == 0 ? TR_ROT_HADAMARD128 : TR_ROT_NONE;
}

/* st = seed ^ fnv1a64(name); su[i] = (splitmix64_next(st) >> 63) ? −1 : +1 for i = 0, 1, ... */
void tr_quant_signs(const char *name, uint64_t seed, uint32_t I, float *su)
{
    uint64_t st = seed ^ tr_fnv1a64_str(name);
    for (uint32_t i = 0; i < I; i++)
        su[i] = (tr_splitmix64_next(&st) >> 63) ? -1.0f : 1.0f;
}

/* S = max(fl32(m / grid_b[L−1]), 2^-24) */
float tr_quant_scale_of(float m, unsigned bits)
{
    float s = m / tr_grid(bits)[(1u << bits) - 1];
    return s > TR_QUANT_MIN_SCALE ? s : TR_QUANT_MIN_SCALE;
}

/* argmin_j fl32(|x − grid_b[j]|), j upward, strict < */
unsigned tr_quant_nearest_scan(float x, unsigned bits)
{
    const float *g = tr_grid(bits);
    const unsigned L = 1u << bits;
    unsigned best = 0;
    float bd = fabsf(x - g[0]);
    for (unsigned j = 1; j < L; j++) {
        float d = fabsf(x - g[j]);
        if (d < bd) {
            bd = d;
            best = j;
        }
    }
    return best;
}

/* Fast form of the scan.  With p = #{j : grid[j] <= x}, d_j = fl32(|x − grid[j]|) falls for j < p and rises for
 * j >= p; consecutive grid values differ by about c = 1.2437, and for |x| < 2^20 every |x − grid[j]| < 2^21 has an
 * ulp <= 0.25, so the rounded distances fall and rise strictly and the scan's answer is p−1 or p (tie → p−1).
 * Outside that range (or for NaN) the plain scan runs. */
unsigned tr_quant_nearest(float x, unsigned bits)
{
    if (!(fabsf(x) < 0x1p20f))
        return tr_quant_nearest_scan(x, bits);
    const float *g = tr_grid(bits);
    const int L = 1 << bits;
    /* estimate p from grid[j] ≈ (j − (L−1)/2)·c, then correct it against the table */
    int p = (int)floorf(x / tr_bits_f32(TR_GRID_STEP_BITS) + (float)L * 0.5f);
    p = p < 0 ? 0 : p > L ? L : p;
    while (p > 0 && g[p - 1] > x)
        p--;
    while (p < L && g[p] <= x)
        p++;
    if (p == 0)
        return 0;
    if (p == L)
        return (unsigned)L - 1;
    return fabsf(x - g[p]) < fabsf(x - g[p - 1]) ? (unsigned)p : (unsigned)p - 1;
}

/* ---- one row ----------------------------------------------------------------------------------------------------- */

typedef struct qrow_ctx {
    unsigned bits;
    const float *grid;
    tr_qscale scale;
} qrow_ctx;

/* f32(Ŵ16) of index q at scale S: f32(RNh(fl32(grid[q]·S))) */
static float w16hat(const qrow_ctx *k, unsigned q, float S) { return tr_f16_to_f32(tr_f32_to_f16(k->grid[q] * S)); }

/* q[i] = nearest(fl32(w[i] / S)) */
static void group_indices(const qrow_ctx *k, const float *w, uint32_t n, float S, uint8_t *q)
{
    for (uint32_t i = 0; i < n; i++)
        q[i] = (uint8_t)tr_quant_nearest(w[i] / S, k->bits);
}

/* Σ_i (f32(Ŵ16) − w[i])², double, ascending i */
static double group_error(const qrow_ctx *k, const float *w, uint32_t n, float S, const uint8_t *q)
{
    double e = 0.0;
    for (uint32_t i = 0; i < n; i++) {
        double d = (double)w16hat(k, q[i], S) - (double)w[i];
        e += d * d;
    }
    return e;
}

/* The scale of one group and its indices q[0..n): absmax (§6.4 step 2) or the mse clip search (§6.5). */
static float group_scale(const qrow_ctx *k, const float *w, uint32_t n, uint8_t *q)
{
    float m = 0.0f;
    for (uint32_t i = 0; i < n; i++)
        m = fabsf(w[i]) > m ? fabsf(w[i]) : m;
    float S = tr_quant_scale_of(m, k->bits);   /* j = 0: r = 1, fl32(1·m) = m */
    group_indices(k, w, n, S, q);
    if (k->scale != TR_QSCALE_MSE)
        return S;
    double best = group_error(k, w, n, S, q);
    uint8_t t[TR_QUANT_GROUP_SIZE];
    for (unsigned j = 1; j < TR_QUANT_MSE_STEPS; j++) {
        float r = 1.0f - (float)j / 64.0f;            /* exact */
        float Sr = tr_quant_scale_of(r * m, k->bits); /* max(fl32(fl32(r·m) / grid[L−1]), 2^-24) */
        group_indices(k, w, n, Sr, t);
        double e = group_error(k, w, n, Sr, t);
        if (e < best) {                               /* strict: ties keep the larger r */
            best = e;
            S = Sr;
            memcpy(q, t, n);
        }
    }
    return S;
}

/* Quantize one (rotated) row wr[0..I): S of group g goes to S_out[g·stride], indices to q[0..I); the squared errors
 * are added to *sse in ascending i. */
static void quant_row(const qrow_ctx *k, const float *wr, uint32_t I, float *S_out, size_t stride, uint8_t *q,
                      double *sse)
{
    for (uint32_t g0 = 0; g0 < I; g0 += TR_QUANT_GROUP_SIZE) {
        uint32_t n = I - g0 < TR_QUANT_GROUP_SIZE ? I - g0 : TR_QUANT_GROUP_SIZE;
        S_out[(size_t)(g0 / TR_QUANT_GROUP_SIZE) * stride] = group_scale(k, wr + g0, n, q + g0);
    }
    for (uint32_t i = 0; i < I; i++) {
        double d = (double)w16hat(k, q[i], S_out[(size_t)(i / TR_QUANT_GROUP_SIZE) * stride]) - (double)wr[i];
        *sse += d * d;
    }
}

/* ---- whole matrix ------------------------------------------------------------------------------------------------ */

static const char *where_of(const char *name, const tr_quant_opts *opt)
{
    return opt && opt->where ? opt->where : name;
}

static const char *nonfinite_name(float v) { return isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf"; }

static int check_args(const char *name, const float *W, uint32_t O, uint32_t I, unsigned bits,
                      const tr_quant_opts *opt, tr_error *err)
{
    const char *where = where_of(name ? name : "quantize", opt);
    if (!name || !W)
        return tr_fail(err, TR_E_INVALID_PARAM, where, "no tensor name or data");
    if (O == 0 || I == 0)
        return tr_fail(err, TR_E_INVALID_PARAM, where, "%s: shape [%u,%u] has a zero dimension", name, O, I);
    if (bits < 2 || bits > 8)
        return tr_fail(err, TR_E_INVALID_PARAM, where, "%s: bits %u outside 2..8", name, bits);
    return TR_OK;
}

/* The first non-finite element in flat order → TR_E_NONFINITE naming the tensor and the index. */
static int check_finite(const char *name, const float *W, uint32_t O, uint32_t I, const tr_quant_opts *opt,
                        tr_error *err)
{
    uint64_t n = (uint64_t)O * I;
    for (uint64_t k = 0; k < n; k++)
        if (!isfinite(W[k]))
            return tr_fail(err, TR_E_NONFINITE, where_of(name, opt),
                           "%s: element %llu [%llu,%llu] is %s; only finite weights can be quantized", name,
                           (unsigned long long)k, (unsigned long long)(k / I), (unsigned long long)(k % I),
                           nonfinite_name(W[k]));
    return TR_OK;
}

/* Wr[o,:] = W[o,:] (none) or Hn_blocks(W[o,:] ⊙ su) (hadamard128); a rotated value that overflows float32 is
 * TR_E_NONFINITE. */
static int rotate_row(const char *name, const float *W, uint32_t I, uint32_t o, tr_rotation rot, const float *su,
                      float *wr, const tr_quant_opts *opt, tr_error *err)
{
    memcpy(wr, W + (size_t)o * I, (size_t)I * sizeof *wr);
    if (rot != TR_ROT_HADAMARD128)
        return TR_OK;
    for (uint32_t i = 0; i < I; i++)
        wr[i] = wr[i] * su[i];
    tr_hadamard128_blocks(wr, I);
    for (uint32_t i = 0; i < I; i++)
        if (!isfinite(wr[i]))
            return tr_fail(err, TR_E_NONFINITE, where_of(name, opt),
                           "%s: row %u overflows float32 under the hadamard128 rotation (rotated column %u)", name,
                           o, i);
    return TR_OK;
}

static void qrow_init(qrow_ctx *k, unsigned bits, const tr_quant_opts *opt)
{
    k->bits = bits;
    k->grid = tr_grid(bits);
    k->scale = opt ? opt->scale : TR_QSCALE_ABSMAX;
}

void tr_qtensor_free(tr_qtensor *q)
{
    if (!q)
        return;
    tr_dealloc(q->indices);
    tr_dealloc(q->scales);
    tr_dealloc(q->su);
    tr_dealloc(q->sv);
    memset(q, 0, sizeof *q);
}

/* Allocate out's arrays and set su (signs or +1) and sv (+1). */
static int qtensor_alloc(const char *name, uint32_t O, uint32_t I, unsigned bits, tr_rotation rot,
                         const tr_quant_opts *opt, tr_qtensor *out, tr_error *err)
{
    uint32_t G = (I + TR_QUANT_GROUP_SIZE - 1) / TR_QUANT_GROUP_SIZE;
    uint64_t ilen = 1 + tr_packed_body_bytes(O, I, bits);
    out->indices = tr_malloc((size_t)ilen);
    out->scales = tr_malloc((size_t)G * O * sizeof(float));
    out->su = tr_malloc((size_t)I * sizeof(float));
    out->sv = tr_malloc((size_t)O * sizeof(float));
    if (!out->indices || !out->scales || !out->su || !out->sv) {
        tr_qtensor_free(out);
        return tr_fail(err, TR_E_NOMEM, where_of(name, opt), "%s: out of memory for [%u,%u]", name, O, I);
    }
    if (rot == TR_ROT_HADAMARD128)
        tr_quant_signs(name, opt ? opt->seed : TR_QUANT_DEFAULT_SEED, I, out->su);
    else
        for (uint32_t i = 0; i < I; i++)
            out->su[i] = 1.0f;
    for (uint32_t o = 0; o < O; o++)
        out->sv[o] = 1.0f;
    tr_qweight v = {O, I, bits, TR_QUANT_GROUP_SIZE, G, rot, out->indices, ilen, out->scales, out->su, out->sv};
    out->w = v;
    out->numel = (uint64_t)O * I;
    return TR_OK;
}

int tr_quantize(const char *name, const float *W, uint32_t O, uint32_t I, unsigned bits, const tr_quant_opts *opt,
                tr_qtensor *out, tr_error *err)
{
    memset(out, 0, sizeof *out);
    int rc = check_args(name, W, O, I, bits, opt, err);
    if (rc == TR_OK)
        rc = check_finite(name, W, O, I, opt, err);
    if (rc != TR_OK)
        return rc;
    tr_rotation rot = tr_quant_effective_rotation(opt ? opt->rotation : TR_ROT_NONE, I);
    rc = qtensor_alloc(name, O, I, bits, rot, opt, out, err);
    if (rc != TR_OK)
        return rc;
    uint8_t *q = tr_malloc((size_t)O * I);
    float *wr = tr_malloc((size_t)I * sizeof *wr);
    if (!q || !wr) {
        tr_dealloc(q);
        tr_dealloc(wr);
        tr_qtensor_free(out);
        return tr_fail(err, TR_E_NOMEM, where_of(name, opt), "%s: out of memory for [%u,%u]", name, O, I);
    }
    qrow_ctx k;
    qrow_init(&k, bits, opt);
    double sse = 0.0;
    for (uint32_t o = 0; o < O && rc == TR_OK; o++) {
        rc = rotate_row(name, W, I, o, rot, out->su, wr, opt, err);
        if (rc == TR_OK)
            quant_row(&k, wr, I, out->scales + o, O, q + (size_t)o * I, &sse);
    }
    if (rc == TR_OK)
        tr_pack_indices(q, O, I, bits, out->indices);
    tr_dealloc(q);
    tr_dealloc(wr);
    if (rc != TR_OK) {
        tr_qtensor_free(out);
        return rc;
    }
    out->sse = sse;
    return TR_OK;
}

int tr_quantize_sse_table(const char *name, const float *W, uint32_t O, uint32_t I, const tr_quant_opts *opt,
                          double sse[9], tr_error *err)
{
    for (int b = 0; b < 9; b++)
        sse[b] = 0.0;
    int rc = check_args(name, W, O, I, 2, opt, err);
    if (rc == TR_OK)
        rc = check_finite(name, W, O, I, opt, err);
    if (rc != TR_OK)
        return rc;
    tr_rotation rot = tr_quant_effective_rotation(opt ? opt->rotation : TR_ROT_NONE, I);
    uint32_t G = (I + TR_QUANT_GROUP_SIZE - 1) / TR_QUANT_GROUP_SIZE;
    float *wr = tr_malloc((size_t)I * sizeof *wr), *su = tr_malloc((size_t)I * sizeof *su);
    float *S = tr_malloc((size_t)G * sizeof *S);
    uint8_t *q = tr_malloc(I);
    if (!wr || !su || !S || !q)
        rc = tr_fail(err, TR_E_NOMEM, where_of(name, opt), "%s: out of memory for [%u,%u]", name, O, I);
    else if (rot == TR_ROT_HADAMARD128)
        tr_quant_signs(name, opt ? opt->seed : TR_QUANT_DEFAULT_SEED, I, su);
    for (uint32_t o = 0; o < O && rc == TR_OK; o++) {
        rc = rotate_row(name, W, I, o, rot, su, wr, opt, err);
        for (unsigned b = 2; b <= 8 && rc == TR_OK; b++) {
            qrow_ctx k;
            qrow_init(&k, b, opt);
            quant_row(&k, wr, I, S, 1, q, &sse[b]);
        }
    }
    tr_dealloc(wr);
    tr_dealloc(su);
    tr_dealloc(S);
    tr_dealloc(q);
    return rc;
}
