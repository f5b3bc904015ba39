/*
 * reg_ops_linear.c — registry entries of the dense ops: dequant_grid (KERNELS.md §4.1), sign_flip (§4.2),
 * hadamard (§4.3), gemm_trellis (§4.4), gemm_trellis_swiglu (§4.5) and gemm_trellis_qkv (§4.6): axes, variants,
 * generators, execution through a backend (or the reference) and the analytical bounds.
 */
#include "reg_internal.h"
#include "trellis/alloc.h"
#include "trellis/fp16.h"
#include "trellis/hadamard.h"
#include "trellis/numeric.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NV(a) ((int)(sizeof(a) / sizeof((a)[0])))
#define LIMIT_F16 16384.0          /* 2^14: range contract of f16 paths (KERNELS.md §6.5) */
#define LIMIT_F32 0x1p100

static int is_h16(const tr_case *c) { return strstr(c->variant->adapter, "H16") != NULL || c->variant->acc_f16; }

static uint32_t pint(const tr_case *c, const char *k, uint32_t d) { return (uint32_t)tr_params_int(&c->params, k, d); }

static const char *pstr(const tr_case *c, const char *k, const char *d)
{
    const char *v = tr_params_str(&c->params, k);
    return v ? v : d;
}

static int gs_valid(const tr_params *p)
{
    int64_t gs = tr_params_int(p, "gs", 128), I = tr_params_int(p, "I", tr_params_int(p, "K", 1));
    return gs == 128 || gs <= 2 * I;
}

/* Round every element of a float buffer to f16 (H16 adapters consume f16 activations). */
static void round_to_f16(tr_buf *b)
{
    uint64_t n = tr_buf_numel(b);
    for (uint64_t i = 0; i < n; i++)
        reg_set(b, i, tr_f16_to_f32(tr_f64_to_f16(reg_get(b, i))));
}

/* ---- dequant_grid ---------------------------------------------------------------------------------------------- */

static const char *const scale_v[] = {"scale=normal", "scale=tiny", "scale=huge", "scale=zero"};
static const char *const pattern_v[] = {"pattern=uniform", "pattern=zero", "pattern=max", "pattern=alternating"};
static const char *const padding_v[] = {"padding=canonical", "padding=garbage"};

static const tr_axis dequant_axes[] = {
    REG_BITS_INIT, REG_DIMS_O_INIT, REG_DIMS_I_INIT, REG_GS_INIT, REG_SIGNS_INIT,
    {"scale", scale_v, NV(scale_v), 0, 0}, {"pattern", pattern_v, NV(pattern_v), 0, 0},
    {"padding", padding_v, NV(padding_v), 0, 0},
};

#define DQ_DEFAULTS "gs=128;signs=unit;scale=normal;pattern=uniform;padding=canonical"
static const char *const dequant_always[] = {
    "b=4;O=1536;I=2048;" DQ_DEFAULTS, "b=4;O=2048;I=1536;" DQ_DEFAULTS, "b=4;O=10240;I=2048;" DQ_DEFAULTS,
    "b=4;O=2048;I=10240;" DQ_DEFAULTS, "b=4;O=64;I=2048;" DQ_DEFAULTS,
};

/* KERNELS.md §4.1: NOSIGN variants have no su/sv (domain signs = unit); _aligned writes 4 outputs per thread. */
static int dq_nosign(const tr_case *c, char *why, size_t cap)
{
    if (!tr_params_is(&c->params, "signs", "unit"))
        return reg_dom_why(why, cap, "NOSIGN adapter: the variant has no su/sv (signs=unit only)");
    return 1;
}

static int dq_aligned(const tr_case *c, char *why, size_t cap)
{
    if (tr_params_int(&c->params, "O", 1) % 4 != 0)
        return reg_dom_why(why, cap, "O %% 4 = 0");
    return dq_nosign(c, why, cap);
}

#define DQ(sym, adapter, binding, launch, dom, text)                                                                  \
    REG_METAL(sym, sym, 0, TR_CLASS_EXACT, adapter, binding, launch, dom, text, 0, 0)
static const tr_variant dequant_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_EXACT),
    DQ("dequant_trellis_packed", "PK", "DQ_PK", "TG16", NULL, ""),
    DQ("dequant_trellis_packed_vec4", "PK", "DQ_PK", "TG16V4", NULL, ""),
    DQ("dequant_trellis_packed_cached", "PK", "DQ_PK", "TG16", NULL, ""),
    DQ("dequant_trellis_packed_cached_vec4", "PK", "DQ_PK", "TG16V4", NULL, ""),
    DQ("dequant_trellis_packed_tiled_vec4", "PK", "DQ_PK", "TILE64", NULL, ""),
    DQ("dequant_trellis_packed_tiled_cached_vec4", "PK", "DQ_PK", "TILE64", NULL, ""),
    DQ("dequant_trellis_packed_tex", "TEX", "DQ_TEX", "TG16", NULL, ""),
    DQ("dequant_trellis", "I16+NOSIGN", "DQ_I16", "TG16", dq_nosign, "signs=unit"),
    DQ("dequant_trellis_tiled", "I16+NOSIGN", "DQ_I16", "TILE256", dq_nosign, "signs=unit"),
    DQ("dequant_trellis_tiled_cached", "I16+NOSIGN", "DQ_I16", "TILE256", dq_nosign, "signs=unit"),
    DQ("dequant_trellis_aligned", "I16+NOSIGN", "DQ_I16", "TG16A4", dq_aligned, "O%4=0;signs=unit"),
    DQ("dequant_trellis_with_signs", "I16", "DQ_I16S", "TG16", NULL, ""),
    DQ("dequant_trellis_bulk", "BULK+NOSIGN", "DQ_BULK", "BULK", dq_nosign,
       "gs%16=0;S constant over each 16 outputs;signs=unit"),
};

static reg_qspec qspec_from(const tr_case *c, uint32_t O, uint32_t I, unsigned bits)
{
    reg_qspec s = {O, I, pint(c, "gs", 128), bits, pstr(c, "signs", "random"), pstr(c, "scale", "normal"),
                   pstr(c, "pattern", "uniform"), pstr(c, "padding", "canonical"), is_h16(c)};
    return s;
}

static int dequant_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    uint32_t O = pint(c, "O", 1), I = pint(c, "I", 1);
    reg_qspec s = qspec_from(c, O, I, pint(c, "b", 4));
    int rc = reg_make_qweight(c, in, "w", &s, err);
    if (rc == TR_OK && strstr(c->variant->adapter, "BULK")) {   /* BULK: one scale per tile, S constant over 16 outputs */
        tr_buf *S = tr_bufs_get(in, "w.scales");
        float *sd = (float *)(void *)S->data;
        for (uint64_t g = 0; g < S->shape[0]; g++)
            for (uint64_t o = 0; o < O; o++)
                sd[g * O + o] = sd[g * O + (o & ~(uint64_t)15)];
    }
    uint64_t shape[2] = {O, I};
    if (rc == TR_OK && !tr_bufs_add(out, "w16", TR_ROLE_OUTPUT, TR_DT_F16, 2, shape))
        rc = tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    return rc;
}

static int dequant_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    tr_qweight w;
    if (reg_qweight_view(in, "w", pint(c, "gs", 128), TR_ROT_NONE, &w) != TR_OK)
        return tr_fail(err, TR_E_INVALID_SHAPE, c->id, "weight buffers missing");
    return tr_be_dequant(be, &w, (uint16_t *)(void *)tr_bufs_get(out, "w16")->data, err);
}

/* metal-emu --quick: the GLM-4.7-Flash expert shapes and (64, 2048); the (10240, 2048) pair is 21 M threads per
 * launch (seconds per schedule under the emulator, for no path the smaller shapes miss): --full runs it. */
static const char *const dequant_metal_quick_always[] = {
    "b=4;O=1536;I=2048;" DQ_DEFAULTS, "b=4;O=2048;I=1536;" DQ_DEFAULTS, "b=4;O=64;I=2048;" DQ_DEFAULTS,
};

const tr_opdef reg_op_dequant_grid = {
    "dequant_grid", dequant_axes, NV(dequant_axes), TR_CLASS_EXACT, dequant_variants, NV(dequant_variants),
    dequant_always, NV(dequant_always), NULL, 0, gs_valid, dequant_make, dequant_run, NULL,
    dequant_metal_quick_always, NV(dequant_metal_quick_always),
};

/* ---- sign_flip --------------------------------------------------------------------------------------------------- */

static const tr_axis sign_axes[] = {REG_DIMS_K_INIT, REG_DIMS_N_INIT, REG_SIGNS_INIT, REG_VALUES_INIT};
static int sign_vec4(const tr_case *c, char *why, size_t cap)
{
    if (tr_params_int(&c->params, "N", 1) % 4 != 0)
        return reg_dom_why(why, cap, "N %% 4 = 0");
    return 1;
}

static const tr_variant sign_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_EXACT),
    REG_METAL("apply_sign_flips", "apply_sign_flips", 0, TR_CLASS_EXACT, "", "SIGN", "TG16", NULL, "in place", 0, 0),
    REG_METAL("apply_sign_flips_vec4", "apply_sign_flips_vec4", 0, TR_CLASS_EXACT, "", "SIGN", "TG16A4", sign_vec4,
              "N%4=0; in place", 0, 0),
};

static int sign_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    uint64_t K = pint(c, "K", 1), N = pint(c, "N", 1), s2[2] = {K, N}, sk[1] = {K}, sn[1] = {N};
    tr_buf *w = tr_bufs_add(in, "w", TR_ROLE_INPUT, TR_DT_F16, 2, s2);
    tr_buf *su = w ? tr_bufs_add(in, "su", TR_ROLE_INPUT, TR_DT_F32, 1, sk) : NULL;
    tr_buf *sv = su ? tr_bufs_add(in, "sv", TR_ROLE_INPUT, TR_DT_F32, 1, sn) : NULL;
    if (!sv || !tr_bufs_add(out, "out", TR_ROLE_OUTPUT, TR_DT_F16, 2, s2))
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    if (reg_fill(c, w, pstr(c, "values", "normal"), 1.0) != TR_OK)
        return tr_fail(err, TR_E_INVALID_PARAM, c->id, "unknown value distribution");
    const char *signs = pstr(c, "signs", "unit");
    tr_rng r;
    reg_stream(c, "su", &r);
    for (uint64_t k = 0; k < K; k++)
        reg_set(su, k, !strcmp(signs, "unit") ? 1.0 : (tr_rng_next(&r) >> 63 ? -1.0 : 1.0) *
                                                         (!strcmp(signs, "general") ? 0.5 + 1.5 * tr_rng_u01(&r) : 1.0));
    reg_stream(c, "sv", &r);
    for (uint64_t n = 0; n < N; n++)
        reg_set(sv, n, !strcmp(signs, "unit") ? 1.0 : (tr_rng_next(&r) >> 63 ? -1.0 : 1.0) *
                                                         (!strcmp(signs, "general") ? 0.5 + 1.5 * tr_rng_u01(&r) : 1.0));
    return TR_OK;
}

static int sign_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    (void)be;   /* every backend of this build uses the reference element-wise op */
    const tr_buf *w = tr_bufs_get(in, "w");
    tr_ref_sign_flip((const uint16_t *)(const void *)w->data, (const float *)(const void *)tr_bufs_get(in, "su")->data,
                     (const float *)(const void *)tr_bufs_get(in, "sv")->data, (uint32_t)w->shape[0],
                     (uint32_t)w->shape[1], (uint16_t *)(void *)tr_bufs_get(out, "out")->data);
    (void)c;
    (void)err;
    return TR_OK;
}

const tr_opdef reg_op_sign_flip = {
    "sign_flip", sign_axes, NV(sign_axes), TR_CLASS_EXACT, sign_variants, NV(sign_variants), NULL, 0, NULL, 0, NULL,
    sign_make, sign_run, NULL, NULL, 0,
};

/* ---- hadamard ----------------------------------------------------------------------------------------------------- */

static const char *const hn_v[] = {"n=32", "n=64", "n=96", "n=128", "n=160", "n=192"};
static const char *const hshape_v[] = {
    "layout=rows;R=1", "layout=rows;R=3", "layout=rows;R=17", "layout=rows;R=129",
    "layout=cols;Km=1;N=1", "layout=cols;Km=1;N=7", "layout=cols;Km=1;N=64", "layout=cols;Km=2;N=1",
    "layout=cols;Km=2;N=7", "layout=cols;Km=2;N=64", "layout=cols;Km=3;N=1", "layout=cols;Km=3;N=7",
    "layout=cols;Km=3;N=64",
};
static const char *const hdtype_v[] = {"dtype=f32", "dtype=f16"};
static const char *const hnorm_v[] = {"norm=ortho", "norm=none"};
static const char *const hdir_v[] = {"direction=forward", "direction=inverse"};
static const char *const hscale_v[] = {"scale=none", "scale=pre", "scale=post"};

static const tr_axis hadamard_axes[] = {
    {"n", hn_v, NV(hn_v), 0, 0}, {"shape", hshape_v, NV(hshape_v), 0, 0}, {"dtype", hdtype_v, 2, 0, 0},
    {"norm", hnorm_v, 2, 0, 0}, {"direction", hdir_v, 2, 0, 0}, {"scale", hscale_v, 3, 0, 0}, REG_VALUES_INIT,
};
/* KERNELS.md §4.3: the layout, block size and normalisation each symbol declares, read from its name and binding
 * family.  The data format (f16 or f32) of the row kernels is the kernel's own: the runner checks it against the
 * case's dtype when it binds (cli/conform_metal.c). */
static int had_domain(const tr_case *c, char *why, size_t cap)
{
    const char *sym = c->variant->symbol, *b = c->variant->binding;
    const tr_params *p = &c->params;
    int rows = !strncmp(b, "HAD_ROWS", 8), n = 64;
    const char *digits = strpbrk(sym, "0123456789");
    if (digits && strcmp(b, "HAD_COLS_BS"))
        n = atoi(digits);
    if (!strcmp(sym, "test_hadamard_roundtrip_64"))
        return reg_dom_why(why, cap, "forward twice then 1/64: no point of the registry's hadamard op");
    if (tr_params_is(p, "layout", rows ? "cols" : "rows"))
        return reg_dom_why(why, cap, "layout=%s", rows ? "rows" : "cols");
    if (tr_params_int(p, "n", 0) != n)
        return reg_dom_why(why, cap, "n=%d", n);
    if (!strcmp(b, "HAD_ROWS_SCALED")) {
        if (!tr_params_is(p, "norm", "ortho") || tr_params_is(p, "scale", "none"))
            return reg_dom_why(why, cap, "norm=ortho with a pre- or post-scale");
        return 1;
    }
    if (!tr_params_is(p, "scale", "none"))
        return reg_dom_why(why, cap, "scale=none");
    if (!strcmp(b, "HAD_ROWS3") &&
        !(tr_params_is(p, "direction", "inverse") && tr_params_is(p, "norm", "none")))
        return reg_dom_why(why, cap, "direction=inverse;norm=none");
    if (!rows) {
        if (!tr_params_is(p, "norm", "ortho"))
            return reg_dom_why(why, cap, "norm=ortho");
        if (!tr_params_is(p, "dtype", strstr(sym, "_float") ? "f32" : "f16"))
            return reg_dom_why(why, cap, "dtype=%s", strstr(sym, "_float") ? "f32" : "f16");
    }
    return 1;
}

#define HAD(sym, binding, launch, text)                                                                               \
    {sym, sym, "metal", 0, 1, TR_CLASS_ORDERED, "", 0, 0, 0, text, binding, launch, had_domain, 0}
static const tr_variant hadamard_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_ORDERED),
    HAD("hadamard_transform_32", "HAD_ROWS", "ROW32", "rows;n=32"),
    HAD("hadamard_transform_64", "HAD_ROWS", "ROW32", "rows;n=64"),
    HAD("hadamard_transform_128", "HAD_ROWS", "ROW32", "rows;n=128"),
    HAD("hadamard_transform_64_vec", "HAD_ROWS", "ROW32", "rows;n=64"),
    HAD("hadamard_transform_64_scaled", "HAD_ROWS_SCALED", "ROW32", "rows;n=64;ortho;pre- or post-scale"),
    HAD("hadamard_inverse_64", "HAD_ROWS3", "ROW32", "rows;n=64;inverse;none"),
    HAD("test_hadamard_roundtrip_64", "HAD_ROWS3", "ROW32", "forward twice then 1/64 (no registry point)"),
    HAD("hadamard_forward_fast_64", "HAD_COLS", "HCOLS", "cols;n=64;ortho;f16"),
    HAD("hadamard_forward_fast_128", "HAD_COLS", "HCOLS", "cols;n=128;ortho;f16"),
    HAD("hadamard_forward_fast_96", "HAD_COLS", "HCOLS", "cols;n=96;ortho;f16"),
    HAD("hadamard_forward_fast_160", "HAD_COLS", "HCOLS", "cols;n=160;ortho;f16"),
    HAD("hadamard_forward_fast_192", "HAD_COLS", "HCOLS", "cols;n=192;ortho;f16"),
    HAD("hadamard_inverse_block_64", "HAD_COLS", "HCOLS", "cols;n=64;ortho;f16"),
    HAD("hadamard_inverse_block_128", "HAD_COLS", "HCOLS", "cols;n=128;ortho;f16"),
    HAD("hadamard_inverse_block_96", "HAD_COLS", "HCOLS", "cols;n=96;ortho;f16"),
    HAD("hadamard_inverse_block_160", "HAD_COLS", "HCOLS", "cols;n=160;ortho;f16"),
    HAD("hadamard_inverse_block_192", "HAD_COLS", "HCOLS", "cols;n=192;ortho;f16"),
    HAD("hadamard_forward_fast_64_float", "HAD_COLS", "HCOLS", "cols;n=64;ortho;f32"),
    HAD("hadamard_inverse_block_64_float", "HAD_COLS", "HCOLS", "cols;n=64;ortho;f32"),
    HAD("hadamard_forward_block", "HAD_COLS_BS", "HCOLS", "cols;block_size=64;ortho;f16"),
    HAD("hadamard_forward_fast", "HAD_COLS_BS", "HCOLS", "cols;block_size=64;ortho;f16"),
    HAD("hadamard_inverse_block", "HAD_COLS_BS", "HCOLS", "cols;block_size=64;ortho;f16"),
};

static int hadamard_valid(const tr_params *p)
{
    return !(tr_params_is(p, "scale", "post") && tr_params_is(p, "layout", "cols"));
}

static void hadamard_args(const tr_case *c, const tr_bufs *in, tr_hadamard_args *a)
{
    memset(a, 0, sizeof *a);
    a->n = pint(c, "n", 32);
    a->cols = tr_params_is(&c->params, "layout", "cols");
    a->R = pint(c, "R", 1);
    a->K = pint(c, "Km", 1) * a->n;
    a->N = pint(c, "N", 1);
    a->f16 = tr_params_is(&c->params, "dtype", "f16");
    a->ortho = tr_params_is(&c->params, "norm", "ortho");
    a->inverse = tr_params_is(&c->params, "direction", "inverse");
    const tr_buf *pre = tr_bufs_get(in, "prescale"), *post = tr_bufs_get(in, "postscale");
    a->prescale = pre ? pre->data : NULL;
    a->postscale = post ? post->data : NULL;
}

/* Range contract of f16 transforms (KERNELS.md §6.5): every butterfly intermediate of a block is bounded by the
 * block's Σ|x_j|; scale x by a power of two until the largest such sum is within 2^14 ("mixed" draws f16 values up
 * to 2^15, whose partial sums overflow where the exact result does not). */
static void hadamard_fit_f16(const tr_hadamard_args *a, tr_buf *x)
{
    unsigned sizes[2];
    int nb = tr_hadamard_blocks(a->n, sizes);
    size_t vectors = a->cols ? (size_t)(a->K / a->n) * a->N : a->R, stride = a->cols ? a->N : 1;
    double worst = 0.0;
    for (size_t vi = 0; vi < vectors; vi++) {
        size_t base = a->cols ? (vi / a->N) * a->n * a->N + vi % a->N : vi * a->n, at = 0;
        for (int b = 0; b < nb; at += sizes[b], b++) {
            double sum = 0.0;
            for (unsigned j = 0; j < sizes[b]; j++) {
                double v = reg_get(x, base + (at + j) * stride);
                sum += isfinite(v) ? fabs(v) : 0.0;
            }
            worst = sum > worst ? sum : worst;
        }
    }
    int e = reg_fit_exponent(worst, LIMIT_F16);
    if (e < 0)
        reg_scale_pow2(x, e);
}

static int hadamard_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    tr_hadamard_args a;
    hadamard_args(c, in, &a);
    tr_dtype dt = a.f16 ? TR_DT_F16 : TR_DT_F32;
    uint64_t shape[2] = {a.cols ? a.K : a.R, a.cols ? a.N : a.n}, rs[1] = {a.R};
    tr_buf *x = tr_bufs_add(in, "x", TR_ROLE_INPUT, dt, 2, shape);
    if (!x || !tr_bufs_add(out, "out", TR_ROLE_OUTPUT, dt, 2, shape))
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    const char *values = pstr(c, "values", "normal");
    if (reg_fill(c, x, values, 1.0) != TR_OK)
        return tr_fail(err, TR_E_INVALID_PARAM, c->id, "unknown value distribution");
    if (a.f16 && !strcmp(values, "large"))   /* |x| <= 2^15/n keeps the f16 butterfly finite */
        reg_scale_pow2(x, -(int)ceil(log2((double)a.n)) - 1);
    if (a.f16)
        hadamard_fit_f16(&a, x);
    if (tr_params_is(&c->params, "scale", "pre")) {
        tr_buf *s = tr_bufs_add(in, "prescale", TR_ROLE_INPUT, dt, 2, shape);
        if (!s)
            return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
        reg_fill(c, s, "uniform", 1.0);
    } else if (tr_params_is(&c->params, "scale", "post")) {
        tr_buf *s = tr_bufs_add(in, "postscale", TR_ROLE_INPUT, dt, 1, rs);
        if (!s)
            return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
        reg_fill(c, s, "uniform", 1.0);
    }
    return TR_OK;
}

static int hadamard_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    (void)be;
    tr_hadamard_args a;
    hadamard_args(c, in, &a);
    return tr_ref_hadamard(&a, tr_bufs_get(in, "x")->data, tr_bufs_get(out, "out")->data, err);
}

/* B = γ_depth(u)·|c|·Σ_{block}|x_j| + depth·η with ref_hi the f64 transform using the same rounded constant. */
static int hadamard_bound(const tr_case *c, const tr_bufs *in, const tr_bufs *canon, int k, double **hi,
                          double **B, double **P, tr_error *err)
{
    tr_hadamard_args a;
    hadamard_args(c, in, &a);
    const tr_buf *x = tr_bufs_get(in, "x"), *o = canon->v[k];
    const tr_buf *pre = tr_bufs_get(in, "prescale"), *post = tr_bufs_get(in, "postscale");
    uint64_t n = tr_buf_numel(o);
    if (reg_bound_alloc(n, hi, B, P, err) != TR_OK)
        return TR_E_NOMEM;
    double u = a.f16 ? ldexp(1.0, -11) : ldexp(1.0, -24), eta = a.f16 ? ldexp(1.0, -25) : ldexp(1.0, -150);
    unsigned sizes[2];
    int nb = tr_hadamard_blocks(a.n, sizes);
    size_t vectors = a.cols ? (size_t)(a.K / a.n) * a.N : a.R;
    for (size_t vi = 0; vi < vectors; vi++) {
        size_t base = a.cols ? (vi / a.N) * a.n * a.N + vi % a.N : vi * a.n, stride = a.cols ? a.N : 1;
        double post_v = post ? reg_get(post, vi) : 1.0;
        size_t at = 0;
        for (int b = 0; b < nb; b++) {
            unsigned m = sizes[b];
            double cm = a.f16 ? tr_f16_to_f32(tr_hadamard_cm_f16(m)) : tr_hadamard_cm_f32(m);
            double cst = a.ortho ? cm : 1.0;
            if (post)   /* the constant the reference uses: RN(c_m·s_row), or s_row for norm none */
                cst = a.ortho ? (a.f16 ? tr_f16_to_f32(tr_f64_to_f16(cm * post_v)) : (float)(cm * post_v)) : post_v;
            double depth = log2((double)m) + (a.ortho || post ? 1 : 0) + (pre ? 1 : 0), sum = 0.0;
            for (unsigned j = 0; j < m; j++) {
                size_t xi = base + (at + j) * stride;
                sum += fabs(reg_get(x, xi) * (pre ? reg_get(pre, xi) : 1.0));
            }
            for (unsigned i = 0; i < m; i++) {
                double acc = 0.0;
                for (unsigned j = 0; j < m; j++) {
                    size_t xi = base + (at + j) * stride;
                    double v = reg_get(x, xi) * (pre ? reg_get(pre, xi) : 1.0);
                    acc += (__builtin_popcount(i & j) & 1) ? -v : v;
                }
                size_t oi = base + (at + i) * stride;
                (*hi)[oi] = acc * cst;
                (*B)[oi] = tr_gamma(depth, u) * fabs(cst) * sum + depth * eta;
                (*P)[oi] = sqrt(depth) * u * fabs(cst) * sum + depth * eta;
            }
            at += m;
        }
    }
    return TR_OK;
}

const tr_opdef reg_op_hadamard = {
    "hadamard", hadamard_axes, NV(hadamard_axes), TR_CLASS_ORDERED, hadamard_variants, NV(hadamard_variants), NULL,
    0, NULL, 0, hadamard_valid, hadamard_make, hadamard_run, hadamard_bound, NULL, 0,
};

/* ---- gemm_trellis ----------------------------------------------------------------------------------------------- */

static const char *const out_v[] = {"out=f16", "out=f32"};
static const char *const rot_v[] = {"rotation=none", "rotation=hadamard128"};

static const tr_axis gemm_axes[] = {
    REG_ROWS_M_INIT, REG_DIMS_O_INIT, REG_DIMS_I_INIT, REG_BITS_INIT, REG_GS_INIT, REG_ACC_INIT,
    {"out", out_v, 2, 0, 0}, {"rotation", rot_v, 2, 0, 0}, REG_VALUES_INIT,
};

#define GEMM_TAIL "b=4;gs=128;acc=f32;out=f16;rotation=none;values=normal"
static const char *const gemm_always[] = {
    "M=1;O=1536;I=2048;" GEMM_TAIL, "M=1;O=2048;I=1536;" GEMM_TAIL, "M=1;O=10240;I=2048;" GEMM_TAIL,
    "M=1;O=2048;I=10240;" GEMM_TAIL, "M=1;O=64;I=2048;" GEMM_TAIL,
};

/* KERNELS.md §4.4: Metal GEMMs write f16 C, take no rotation, accumulate in their own format; b and M limits from
 * the symbol's row of the table. */
static int gemm_domain(const tr_case *c, char *why, size_t cap)
{
    const tr_params *p = &c->params;
    const char *sym = c->variant->symbol;
    int64_t b = tr_params_int(p, "b", 4), M = tr_params_int(p, "M", 1);
    if (!reg_dom_acc(c, why, cap))
        return 0;
    if (!tr_params_is(p, "out", "f16"))
        return reg_dom_why(why, cap, "out=f16 (C is f16)");
    if (!tr_params_is(p, "rotation", "none"))
        return reg_dom_why(why, cap, "rotation=none");
    if (!strcmp(c->variant->binding, "GEMM_B2") && b != 2)
        return reg_dom_why(why, cap, "b=2");
    if (!strcmp(sym, "decode_gemv_trellis") && M != 1)
        return reg_dom_why(why, cap, "M=1");
    if (strstr(sym, "decode") && M > 16)
        return reg_dom_why(why, cap, "M<=16");
    return 1;
}

#define GEMM(sym, f16, binding, launch, text)                                                                         \
    REG_METAL(sym, sym, f16, TR_CLASS_TOLERANT, "PK", binding, launch, gemm_domain, text, 0, 0)
static const tr_variant gemm_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_ORDERED),
    GEMM("gemm_trellis_packed", 1, "GEMM", "G128", "b 2..8"),
    GEMM("gemm_trellis_packed_fp32acc", 0, "GEMM", "G128", "b 2..8"),
    GEMM("gemm_trellis_packed_decode", 1, "GEMM", "G32D", "b 2..8;M<=16"),
    GEMM("gemm_trellis_2bit", 1, "GEMM_B2", "G128", "b=2"),
    GEMM("gemm_trellis_2bit_fused_reg", 1, "GEMM_B2", "G128", "b=2"),
    GEMM("gemm_trellis_w2", 1, "GEMM_B2", "G128", "b=2"),
    GEMM("gemm_trellis_w2_fp32acc", 0, "GEMM_B2", "G128", "b=2"),
    GEMM("gemm_trellis_2bit_decode", 1, "GEMM_B2", "G32D", "b=2;M<=16"),
    GEMM("gemm_trellis_w2_decode", 1, "GEMM_B2", "G32D", "b=2;M<=16"),
    GEMM("gemm_trellis_fused_reg", 1, "GEMM", "G128", "b 2..8 (registered name, probed)"),
    GEMM("decode_gemv_trellis", 1, "GEMM", "G32D", "b 2..8;M=1 (registered name, probed)"),
};

static int gemm_valid(const tr_params *p)
{
    if (tr_params_is(p, "rotation", "hadamard128") &&
        (tr_params_int(p, "I", 1) % 128 != 0 || tr_params_is(p, "acc", "f16")))
        return 0;
    return gs_valid(p);
}

/* Output format of a gemm case: foreign variants write f16 (their C binding). */
static int gemm_out_f16(const tr_case *c)
{
    if (strcmp(c->variant->backend, "metal") == 0)
        return 1;
    return tr_params_is(&c->params, "out", "f16");
}

/* Activations of a linear, in the f64 form its reduction consumes (rotation: x'' = H(RN32(x·su))). */
static void consumed_input(const tr_case *c, const tr_qweight *w, const float *x, float *xr)
{
    if (w->rotation == TR_ROT_HADAMARD128) {
        for (uint32_t i = 0; i < w->I; i++)
            xr[i] = x[i] * w->su[i];
        tr_hadamard128_blocks(xr, w->I);
    } else
        for (uint32_t i = 0; i < w->I; i++)
            xr[i] = tr_case_acc_f16(c) ? tr_f16_to_f32(tr_f32_to_f16(x[i])) : x[i];
}

/* Scale x by 2^e so the largest Σ|x·w| of any output is within the range contract (KERNELS.md §6.5).  TR_E_NOMEM
 * when the scratch cannot be allocated (x is then left as drawn: the case must not run). */
static int fit_range(const tr_case *c, tr_buf *x, const tr_qweight *w, uint32_t M, double limit)
{
    double *wd = reg_weights_f64(w);
    float *xr = tr_malloc((size_t)w->I * sizeof *xr);
    double worst = 0.0;
    if (!wd || !xr) {
        tr_dealloc(wd);
        tr_dealloc(xr);
        return TR_E_NOMEM;
    }
    for (uint32_t m = 0; m < M; m++) {
        consumed_input(c, w, (const float *)(const void *)x->data + (size_t)m * w->I, xr);
        for (uint32_t o = 0; o < w->O; o++) {
            double s = 0.0;
            for (uint32_t i = 0; i < w->I; i++)
                if (isfinite(xr[i]))
                    s += fabs(xr[i] * wd[(size_t)o * w->I + i]);
            worst = s > worst ? s : worst;
        }
    }
    tr_dealloc(wd);
    tr_dealloc(xr);
    int e = reg_fit_exponent(worst, limit);
    if (e < 0)
        reg_scale_pow2(x, e);
    return TR_OK;
}

/* One linear's inputs: weight "<p>" and, when x_name is given, the activations [M][I]. */
static int make_linear(const tr_case *c, tr_bufs *in, const char *p, uint32_t O, uint32_t I, unsigned b,
                       tr_error *err)
{
    reg_qspec s = qspec_from(c, O, I, b);
    s.signs = "random";
    return reg_make_qweight(c, in, p, &s, err);
}

static int make_x(const tr_case *c, tr_bufs *in, uint32_t M, uint32_t I, tr_buf **out, tr_error *err)
{
    uint64_t shape[2] = {M, I};
    tr_buf *x = tr_bufs_add(in, "x", TR_ROLE_INPUT, TR_DT_F32, 2, shape);
    if (!x)
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    if (reg_fill(c, x, pstr(c, "values", "normal"), 1.0) != TR_OK)
        return tr_fail(err, TR_E_INVALID_PARAM, c->id, "unknown value distribution");
    if (is_h16(c) || c->metal)   /* Metal linears bind the activations as f16 (binding 0 A) */
        round_to_f16(x);
    *out = x;
    return TR_OK;
}

static int gemm_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    uint32_t M = pint(c, "M", 1), O = pint(c, "O", 1), I = pint(c, "I", 1);
    tr_buf *x;
    int rc = make_linear(c, in, "w", O, I, pint(c, "b", 4), err);
    if (rc == TR_OK)
        rc = make_x(c, in, M, I, &x, err);
    if (rc != TR_OK)
        return rc;
    tr_qweight w;
    reg_qweight_view(in, "w", pint(c, "gs", 128),
                     tr_params_is(&c->params, "rotation", "hadamard128") ? TR_ROT_HADAMARD128 : TR_ROT_NONE, &w);
    uint64_t shape[2] = {M, O};
    if (fit_range(c, x, &w, M, tr_case_acc_f16(c) || gemm_out_f16(c) ? LIMIT_F16 : LIMIT_F32) != TR_OK ||
        !tr_bufs_add(out, "y", TR_ROLE_OUTPUT, gemm_out_f16(c) ? TR_DT_F16 : TR_DT_F32, 2, shape))
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    return TR_OK;
}

static int gemm_view(const tr_case *c, const tr_bufs *in, const char *p, tr_qweight *w, tr_error *err)
{
    tr_rotation rot = tr_params_is(&c->params, "rotation", "hadamard128") ? TR_ROT_HADAMARD128 : TR_ROT_NONE;
    if (reg_qweight_view(in, p, pint(c, "gs", 128), rot, w) != TR_OK)
        return tr_fail(err, TR_E_INVALID_SHAPE, c->id, "weight %s missing", p);
    return TR_OK;
}

static int gemm_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    tr_qweight w;
    int rc = gemm_view(c, in, "w", &w, err);
    if (rc != TR_OK)
        return rc;
    const tr_buf *x = tr_bufs_get(in, "x");
    tr_acc acc = tr_case_acc_f16(c) ? TR_ACC_F16 : TR_ACC_F32;
    return tr_be_gemm_trellis(be, &w, (const float *)(const void *)x->data, (uint32_t)x->shape[0], acc,
                              gemm_out_f16(c), tr_bufs_get(out, "y")->data, err);
}

/* Dot bounds of Y = X·Wᵀ for one linear into arrays indexed [m][o] (KERNELS.md §2.3 "Dot"). */
static int linear_bound(const tr_case *c, const tr_qweight *w, const float *X, uint32_t M, int out_f16, double *hi,
                        double *B, double *P)
{
    double *wd = reg_weights_f64(w);
    float *xr = tr_malloc((size_t)w->I * sizeof *xr);
    if (!wd || !xr) {
        tr_dealloc(wd);
        tr_dealloc(xr);
        return TR_E_NOMEM;
    }
    double u = reg_unit(c);
    for (uint32_t m = 0; m < M; m++) {
        consumed_input(c, w, X + (size_t)m * w->I, xr);
        for (uint32_t o = 0; o < w->O; o++) {
            reg_dot d = {0.0, 0.0, w->I};
            double s = 0.0;
            for (uint32_t i = 0; i < w->I; i++) {
                double wv = wd[(size_t)o * w->I + i], p = (double)xr[i] * wv;
                s += p;
                d.A += fabs(p);
                d.D += fabs((double)xr[i]) * reg_slack(c, wv);
            }
            double e = reg_dot_bound(c, &d, 0), ep = reg_dot_bound(c, &d, 1);
            if (w->rotation == TR_ROT_HADAMARD128) {   /* the Hadamard error of x'' as D-terms, then ·sv */
                double had = 0.0, sumx = 0.0;
                for (uint32_t i = 0; i < w->I; i++)
                    sumx += fabs((double)X[(size_t)m * w->I + i] * w->su[i]);
                for (uint32_t i = 0; i < w->I; i++)
                    had += fabs(wd[(size_t)o * w->I + i]) *
                           (tr_gamma(9, ldexp(1.0, -24)) * tr_hadamard_scale_f32(128) * sumx + 9 * ldexp(1.0, -150));
                e += had;
                ep += had;
                s *= w->sv[o];
                e = e * fabs(w->sv[o]) + (fabs(s) + e) * ldexp(1.0, -24);
                ep = ep * fabs(w->sv[o]) + (fabs(s) + ep) * ldexp(1.0, -24);
            }
            size_t k = (size_t)m * w->O + o;
            hi[k] = s;
            B[k] = e + (out_f16 && !tr_case_acc_f16(c) ? tr_half_ulp_f16(fabs(s) + e) : 0.0);
            P[k] = ep + (out_f16 && !tr_case_acc_f16(c) ? tr_half_ulp_f16(fabs(s) + ep) : 0.0);
            (void)u;
        }
    }
    tr_dealloc(wd);
    tr_dealloc(xr);
    return TR_OK;
}

static int gemm_bound(const tr_case *c, const tr_bufs *in, const tr_bufs *canon, int k, double **hi, double **B,
                      double **P, tr_error *err)
{
    tr_qweight w;
    int rc = gemm_view(c, in, "w", &w, err);
    const tr_buf *x = tr_bufs_get(in, "x");
    if (rc == TR_OK)
        rc = reg_bound_alloc(tr_buf_numel(canon->v[k]), hi, B, P, err);
    if (rc == TR_OK && linear_bound(c, &w, (const float *)(const void *)x->data, (uint32_t)x->shape[0],
                                    gemm_out_f16(c), *hi, *B, *P) != TR_OK)
        rc = tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    return rc;
}

const tr_opdef reg_op_gemm_trellis = {
    "gemm_trellis", gemm_axes, NV(gemm_axes), TR_CLASS_ORDERED, gemm_variants, NV(gemm_variants), gemm_always,
    NV(gemm_always), NULL, 0, gemm_valid, gemm_make, gemm_run, gemm_bound, NULL, 0,
};

/* ---- gemm_trellis_swiglu -------------------------------------------------------------------------------------------- */

static const tr_axis swiglu_axes[] = {REG_ROWS_M_INIT, REG_DIMS_I_INIT, REG_DIMS_K_INIT, REG_BITS_INIT, REG_ACC_INIT};
static int swiglu_domain(const tr_case *c, char *why, size_t cap)
{
    if (!reg_dom_acc(c, why, cap))
        return 0;
    if (strstr(c->variant->symbol, "decode") && tr_params_int(&c->params, "M", 1) > 16)
        return reg_dom_why(why, cap, "M<=16");
    return 1;
}

static const tr_variant swiglu_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_ORDERED),
    REG_METAL("gemm_trellis_swiglu_gate_up", "gemm_trellis_swiglu_gate_up", 1, TR_CLASS_TOLERANT, "PK", "SWIGLU",
              "G128", swiglu_domain, "gate and up share b, su, sv", 0, 0),
    REG_METAL("gemm_trellis_swiglu_gate_up_decode", "gemm_trellis_swiglu_gate_up_decode", 1, TR_CLASS_TOLERANT, "PK",
              "SWIGLU", "G32D", swiglu_domain, "gate and up share b, su, sv;M<=16", 0, 0),
};

/* Scale x so that every Σ|x·w| and every |silu(g)·u| stays within 2^14 (the product scales with x²).  TR_E_NOMEM
 * when the widened weights cannot be allocated. */
static int fit_swiglu(const tr_case *c, tr_buf *x, const tr_qweight *g, const tr_qweight *u, uint32_t M)
{
    double *wg = reg_weights_f64(g), *wu = reg_weights_f64(u), worst = 0.0;
    const float *X = (const float *)(const void *)x->data;
    if (!wg || !wu) {
        tr_dealloc(wg);
        tr_dealloc(wu);
        return TR_E_NOMEM;
    }
    for (uint32_t m = 0; m < M; m++)
        for (uint32_t j = 0; j < g->O; j++) {
            double sg = 0.0, su = 0.0;
            for (uint32_t i = 0; i < g->I; i++)
                if (isfinite(X[(size_t)m * g->I + i])) {
                    sg += fabs(X[(size_t)m * g->I + i] * wg[(size_t)j * g->I + i]);
                    su += fabs(X[(size_t)m * g->I + i] * wu[(size_t)j * g->I + i]);
                }
            double need = sg > su ? sg : su;
            double prod = sqrt(sg * su);   /* |silu(g)·u| <= |g|·|u|; scaling x by s scales it by s² */
            worst = need > worst ? need : worst;
            worst = prod > worst ? prod : worst;
        }
    tr_dealloc(wg);
    tr_dealloc(wu);
    int e = reg_fit_exponent(worst, tr_case_acc_f16(c) ? LIMIT_F16 : 128.0);
    if (e < 0)
        reg_scale_pow2(x, e);
    return TR_OK;
}

static int swiglu_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    uint32_t M = pint(c, "M", 1), I = pint(c, "I", 1), K = pint(c, "K", 1);
    unsigned b = pint(c, "b", 4);
    tr_buf *x;
    int rc = make_linear(c, in, "gate", I, K, b, err);
    if (rc == TR_OK)
        rc = make_linear(c, in, "up", I, K, b, err);
    if (rc == TR_OK)
        rc = make_x(c, in, M, K, &x, err);
    if (rc != TR_OK)
        return rc;
    if (c->metal) {   /* KERNELS.md §4.5: the Metal variants bind one su and one sv for gate and up */
        memcpy(tr_bufs_get(in, "up.su")->data, tr_bufs_get(in, "gate.su")->data, tr_bufs_get(in, "gate.su")->bytes);
        memcpy(tr_bufs_get(in, "up.sv")->data, tr_bufs_get(in, "gate.sv")->data, tr_bufs_get(in, "gate.sv")->bytes);
    }
    tr_qweight g, u;
    reg_qweight_view(in, "gate", 128, TR_ROT_NONE, &g);
    reg_qweight_view(in, "up", 128, TR_ROT_NONE, &u);
    uint64_t shape[2] = {M, I};
    if (fit_swiglu(c, x, &g, &u, M) != TR_OK || !tr_bufs_add(out, "s", TR_ROLE_OUTPUT, TR_DT_F16, 2, shape))
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    return TR_OK;
}

static int swiglu_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    (void)be;   /* composed from two gemms by the reference on every backend of this build */
    tr_qweight g, u;
    reg_qweight_view(in, "gate", 128, TR_ROT_NONE, &g);
    reg_qweight_view(in, "up", 128, TR_ROT_NONE, &u);
    const tr_buf *x = tr_bufs_get(in, "x");
    return tr_ref_gemm_trellis_swiglu(&g, &u, (const float *)(const void *)x->data, (uint32_t)x->shape[0],
                                      tr_case_acc_f16(c) ? TR_ACC_F16 : TR_ACC_F32,
                                      (uint16_t *)(void *)tr_bufs_get(out, "s")->data, err);
}

/* Exact SiLU in f64 (the ref_hi of the activation). */
static double silu64(double z) { return z / (1.0 + exp(-z)); }

/* Activation bound (KERNELS.md §2.3) from gate/up values g, u and their errors Eg, Eu. */
double reg_activation_bound(const tr_case *c, double g, double u, double Eg, double Eu, int stored_f16, int prob);
double reg_activation_bound(const tr_case *c, double g, double u, double Eg, double Eu, int stored_f16, int prob)
{
    const double L = 1.1;
    double rho = ldexp(1.0, -22) + reg_e_exp(c, g) * ldexp(1.0, -23);
    if (stored_f16)
        rho += ldexp(1.0, -11);
    double s = fabs(silu64(g));
    (void)prob;
    return L * Eg * (fabs(u) + Eu) + s * Eu + rho * (s + L * Eg) * (fabs(u) + Eu);
}

static int swiglu_bound(const tr_case *c, const tr_bufs *in, const tr_bufs *canon, int k, double **hi, double **B,
                        double **P, tr_error *err)
{
    tr_qweight g, u;
    reg_qweight_view(in, "gate", 128, TR_ROT_NONE, &g);
    reg_qweight_view(in, "up", 128, TR_ROT_NONE, &u);
    const tr_buf *x = tr_bufs_get(in, "x");
    uint32_t M = (uint32_t)x->shape[0];
    uint64_t n = tr_buf_numel(canon->v[k]);
    double *gh = tr_malloc(n * 8), *gb = tr_malloc(n * 8), *gp = tr_malloc(n * 8);
    double *uh = tr_malloc(n * 8), *ub = tr_malloc(n * 8), *up = tr_malloc(n * 8);
    int rc = gh && gb && gp && uh && ub && up ? reg_bound_alloc(n, hi, B, P, err)
                                              : tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    const float *X = (const float *)(const void *)x->data;
    int f16 = tr_case_acc_f16(c);
    if (rc == TR_OK && (linear_bound(c, &g, X, M, f16, gh, gb, gp) || linear_bound(c, &u, X, M, f16, uh, ub, up)))
        rc = tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    for (uint64_t i = 0; rc == TR_OK && i < n; i++) {
        (*hi)[i] = silu64(gh[i]) * uh[i];
        double e = reg_activation_bound(c, gh[i], uh[i], gb[i], ub[i], 1, 0);
        double ep = reg_activation_bound(c, gh[i], uh[i], gp[i], up[i], 1, 1);
        (*B)[i] = e + tr_half_ulp_f16(fabs((*hi)[i]) + e);
        (*P)[i] = ep + tr_half_ulp_f16(fabs((*hi)[i]) + ep);
    }
    tr_dealloc(gh);
    tr_dealloc(gb);
    tr_dealloc(gp);
    tr_dealloc(uh);
    tr_dealloc(ub);
    tr_dealloc(up);
    return rc;
}

const tr_opdef reg_op_gemm_trellis_swiglu = {
    "gemm_trellis_swiglu", swiglu_axes, NV(swiglu_axes), TR_CLASS_ORDERED, swiglu_variants, NV(swiglu_variants),
    NULL, 0, NULL, 0, NULL, swiglu_make, swiglu_run, swiglu_bound, NULL, 0,
};

/* ---- gemm_trellis_qkv ------------------------------------------------------------------------------------------------ */

static const char *const nqkv_v[] = {"Nq=64;Nk=32;Nv=32", "Nq=17;Nk=0;Nv=15", "Nq=129;Nk=1;Nv=7", "Nq=0;Nk=0;Nv=16"};
static const tr_axis qkv_axes[] = {
    REG_ROWS_M_INIT, {"NQKV", nqkv_v, NV(nqkv_v), 0, 0}, REG_DIMS_K_INIT, REG_BITS_INIT, REG_ACC_INIT,
};
static const tr_variant qkv_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_ORDERED),
    REG_METAL("fused_qkv_trellis_decode", "fused_qkv_trellis_decode", 1, TR_CLASS_TOLERANT, "PK", "QKV", "QKV",
              swiglu_domain, "one b and gs for all three; M<=16", 0, 0),
};
static const char *const qkv_names[3] = {"q", "k", "v"};
static const char *const qkv_keys[3] = {"Nq", "Nk", "Nv"};

static int qkv_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    uint32_t M = pint(c, "M", 1), K = pint(c, "K", 1);
    tr_buf *x;
    int rc = make_x(c, in, M, K, &x, err);
    for (int p = 0; rc == TR_OK && p < 3; p++) {
        uint32_t N = pint(c, qkv_keys[p], 0);
        uint64_t shape[2] = {M, N};
        if (N)
            rc = make_linear(c, in, qkv_names[p], N, K, pint(c, "b", 4), err);
        if (rc == TR_OK && !tr_bufs_add(out, qkv_names[p], TR_ROLE_OUTPUT, TR_DT_F16, 2, shape))
            rc = tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    }
    for (int p = 0; rc == TR_OK && p < 3; p++) {   /* one scaling of x that fits all three projections */
        tr_qweight w;
        if (pint(c, qkv_keys[p], 0) && reg_qweight_view(in, qkv_names[p], 128, TR_ROT_NONE, &w) == TR_OK &&
            fit_range(c, x, &w, M, LIMIT_F16) != TR_OK)
            rc = tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    }
    return rc;
}

static int qkv_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    const tr_buf *x = tr_bufs_get(in, "x");
    int rc = TR_OK;
    for (int p = 0; rc == TR_OK && p < 3; p++) {
        tr_qweight w;
        if (!pint(c, qkv_keys[p], 0))
            continue;   /* a projection with 0 outputs is skipped; its output is empty */
        reg_qweight_view(in, qkv_names[p], 128, TR_ROT_NONE, &w);
        rc = tr_be_gemm_trellis(be, &w, (const float *)(const void *)x->data, (uint32_t)x->shape[0],
                                tr_case_acc_f16(c) ? TR_ACC_F16 : TR_ACC_F32, 1,
                                tr_bufs_get(out, qkv_names[p])->data, err);
    }
    return rc;
}

static int qkv_bound(const tr_case *c, const tr_bufs *in, const tr_bufs *canon, int k, double **hi, double **B,
                     double **P, tr_error *err)
{
    const tr_buf *x = tr_bufs_get(in, "x");
    int rc = reg_bound_alloc(tr_buf_numel(canon->v[k]), hi, B, P, err);
    tr_qweight w;
    if (rc == TR_OK && tr_buf_numel(canon->v[k]) > 0 &&
        reg_qweight_view(in, canon->v[k]->name, 128, TR_ROT_NONE, &w) == TR_OK &&
        linear_bound(c, &w, (const float *)(const void *)x->data, (uint32_t)x->shape[0], 1, *hi, *B, *P) != TR_OK)
        rc = tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    return rc;
}

const tr_opdef reg_op_gemm_trellis_qkv = {
    "gemm_trellis_qkv", qkv_axes, NV(qkv_axes), TR_CLASS_ORDERED, qkv_variants, NV(qkv_variants), NULL, 0, NULL, 0,
    NULL, qkv_make, qkv_run, qkv_bound, NULL, 0,
};
