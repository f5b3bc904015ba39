/*
 * reg_ops_moe.c — registry entries of expert_ffn (KERNELS.md §4.7), moe_swiglu (§4.8) and the routers (§4.9):
 * axes, variants, generators (expert weights per bit tuple, routings, probabilities), execution and bounds
 * (Activation, Down projection, Weighted combine, Dot).
 */
#include "reg_internal.h"
#include "trellis/alloc.h"
#include "trellis/codebook.h"
#include "trellis/fp16.h"
#include "trellis/numeric.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define NV(a) ((int)(sizeof(a) / sizeof((a)[0])))

double reg_activation_bound(const tr_case *c, double g, double u, double Eg, double Eu, int stored_f16, int prob);

static uint32_t pint(const tr_case *c, const char *k, uint32_t d) { return (uint32_t)tr_params_int(&c->params, k, d); }

static const char *pstr(const tr_case *c, const char *k, const char *d)
{
    const char *v = tr_params_str(&c->params, k);
    return v ? v : d;
}

static int is_h16(const tr_case *c) { return strstr(c->variant->adapter, "H16") != NULL || c->variant->acc_f16; }

static void round_to_f16(tr_buf *b)
{
    uint64_t n = tr_buf_numel(b);
    for (uint64_t i = 0; i < n; i++)
        reg_set(b, i, tr_f16_to_f32(tr_f64_to_f16(reg_get(b, i))));
}

/* Non-practice tuples are swept at (H, I) = (32, 32) only (KERNELS.md §5 TUPLES). */
static int tuple_shape_valid(const tr_params *p)
{
    const char *t = tr_params_str(p, "tuple");
    if (t && !reg_tuple_is_practice(t))
        return tr_params_int(p, "H", 0) == 32 && tr_params_int(p, "I", 0) == 32;
    return 1;
}

/* ---- experts: weights, bounds ------------------------------------------------------------------------------ */

/* Weights of expert e: "e<e>.gate" [I][H], "e<e>.up" [I][H], "e<e>.down" [H][I] with their own widths. */
static int make_expert(const tr_case *c, tr_bufs *in, int e, uint32_t H, uint32_t I, const unsigned t[3],
                       tr_error *err)
{
    static const char *const proj[3] = {"gate", "up", "down"};
    for (int p = 0; p < 3; p++) {
        char name[32];
        snprintf(name, sizeof name, "e%d.%s", e, proj[p]);
        reg_qspec s = {p == 2 ? H : I, p == 2 ? I : H, 128, t[p], "random", "normal", "uniform", "canonical",
                       is_h16(c)};
        int rc = reg_make_qweight(c, in, name, &s, err);
        if (rc != TR_OK)
            return rc;
    }
    return TR_OK;
}

typedef struct expert_view {
    tr_qweight w[3];
    tr_expert e;
} expert_view;

static int view_expert(const tr_bufs *in, int e, expert_view *v)
{
    static const char *const proj[3] = {"gate", "up", "down"};
    for (int p = 0; p < 3; p++) {
        char name[32];
        snprintf(name, sizeof name, "e%d.%s", e, proj[p]);
        if (reg_qweight_view(in, name, 128, TR_ROT_NONE, &v->w[p]) != TR_OK)
            return TR_E_INVALID_SHAPE;
    }
    v->e.gate = &v->w[0];
    v->e.up = &v->w[1];
    v->e.down = &v->w[2];
    return TR_OK;
}

/* An expert's widened weights in f64. */
typedef struct expert_f64 {
    double *g, *u, *d;
    uint32_t H, I;
} expert_f64;

static int expert_f64_load(const expert_view *v, expert_f64 *x)
{
    x->H = v->w[0].I;
    x->I = v->w[0].O;
    x->g = reg_weights_f64(&v->w[0]);
    x->u = reg_weights_f64(&v->w[1]);
    x->d = reg_weights_f64(&v->w[2]);
    return x->g && x->u && x->d ? TR_OK : TR_E_NOMEM;
}

static void expert_f64_free(expert_f64 *x)
{
    tr_dealloc(x->g);
    tr_dealloc(x->u);
    tr_dealloc(x->d);
}

static double silu64(double z) { return z / (1.0 + exp(-z)); }

/* ref_hi and bounds of one expert row (KERNELS.md §2.3 Activation then Down projection).  x is the activation the
 * variant consumes (f16-rounded for f16 accumulation).  y_hi, Ey, Py have H entries. */
static int expert_row_bound(const tr_case *c, const expert_f64 *w, const double *x, double *y_hi, double *Ey,
                            double *Py)
{
    uint32_t H = w->H, I = w->I;
    double *s = tr_malloc((size_t)I * 2 * sizeof *s);
    double *Es = tr_malloc((size_t)I * 2 * sizeof *Es);
    if (!s || !Es) {
        tr_dealloc(s);
        tr_dealloc(Es);
        return TR_E_NOMEM;
    }
    double *Ps = Es + I, *sp = s + I;
    int f16 = tr_case_acc_f16(c), slack = c->variant->dequant_slack > 0;
    for (uint32_t j = 0; j < I; j++) {
        reg_dot dg = {0, 0, H}, du = {0, 0, H};
        double g = 0, u = 0;
        const double *wgr = w->g + (size_t)j * H, *wur = w->u + (size_t)j * H;
        for (uint32_t k = 0; k < H; k++) {   /* no calls in the inner loop: it vectorizes */
            g += x[k] * wgr[k];
            u += x[k] * wur[k];
            dg.A += fabs(x[k] * wgr[k]);
            du.A += fabs(x[k] * wur[k]);
        }
        for (uint32_t k = 0; slack && k < H; k++) {
            dg.D += fabs(x[k]) * reg_slack(c, wgr[k]);
            du.D += fabs(x[k]) * reg_slack(c, wur[k]);
        }
        s[j] = silu64(g) * u;
        sp[j] = s[j];
        Es[j] = reg_activation_bound(c, g, u, reg_dot_bound(c, &dg, 0), reg_dot_bound(c, &du, 0), f16, 0);
        Ps[j] = reg_activation_bound(c, g, u, reg_dot_bound(c, &dg, 1), reg_dot_bound(c, &du, 1), f16, 1);
    }
    double u = reg_unit(c), d = reg_depth(c, I), eta = reg_eta(c);
    for (uint32_t n = 0; n < H; n++) {
        double y = 0, a = 0, ap = 0, es = 0, esp = 0, sd = 0;
        const double *wdr = w->d + (size_t)n * I;
        for (uint32_t j = 0; j < I; j++) {
            double wd = wdr[j], aw = fabs(wd);
            y += s[j] * wd;
            a += (fabs(s[j]) + Es[j]) * aw;
            ap += (fabs(s[j]) + Ps[j]) * aw;
            es += Es[j] * aw;
            esp += Ps[j] * aw;
        }
        for (uint32_t j = 0; slack && j < I; j++) {
            double dl = reg_slack(c, wdr[j]);
            a += (fabs(s[j]) + Es[j]) * dl;
            ap += (fabs(s[j]) + Ps[j]) * dl;
            sd += fabs(s[j]) * dl;
        }
        y_hi[n] = y;
        Ey[n] = tr_gamma(d, u) * a + es + sd + I * eta;
        Py[n] = sqrt(d) * u * ap + esp + sd + I * eta;
    }
    tr_dealloc(s);
    tr_dealloc(Es);
    return TR_OK;
}

/* Range contract for f16 paths (KERNELS.md §6.5): scale x (rows R of width H) by 2^e until gate/up sums, |g|·|u| and
 * the down-projection sums over |g|·|u|·|Wd| are all within 2^14 (the latter two scale with 2^2e). */
/* max |W16| of a linear without decoding it: |grid_b| <= grid_b[L-1], times the largest |S|, |su|, |sv|. */
static double weight_magnitude(const tr_qweight *w)
{
    double s = 0, u = 0, v = 0;
    for (size_t i = 0; i < (size_t)w->G * w->O; i++)
        s = fmax(s, fabs(w->scales[i]));
    for (uint32_t i = 0; i < w->I; i++)
        u = fmax(u, fabs(w->su[i]));
    for (uint32_t i = 0; i < w->O; i++)
        v = fmax(v, fabs(w->sv[i]));
    return fabs(tr_grid(w->bits)[(1u << w->bits) - 1]) * s * u * v * 1.001;
}

/* Is the range contract certainly met?  |g|, |u| <= max|x|·H·max|W|, |g||u| and the down sums <= that squared
 * times I·max|Wd|.  When this cheap bound is within the limit, the exact pass is unnecessary. */
static int range_obviously_fine(const tr_buf *x, const expert_view *v, double limit)
{
    double xm = 0;
    for (uint64_t i = 0; i < tr_buf_numel(x); i++)
        xm = isfinite(reg_get(x, i)) ? fmax(xm, fabs(reg_get(x, i))) : xm;
    double lin = xm * v->w[0].I * fmax(weight_magnitude(&v->w[0]), weight_magnitude(&v->w[1]));
    double quad = lin * lin * fmax(1.0, (double)v->w[2].I * weight_magnitude(&v->w[2]));
    return lin <= limit && quad <= limit;
}

/* Scale x into the range contract of one expert; TR_E_NOMEM when the scratch cannot be allocated. */
static int fit_expert_range(const tr_case *c, tr_buf *x, const expert_f64 *w, uint32_t rows, double limit)
{
    (void)c;
    double lin = 0, quad = 0;
    const float *X = (const float *)(const void *)x->data;
    double *dmax = tr_calloc(w->I, sizeof *dmax);   /* max_n |Wd[n][j]| per column j */
    if (!dmax)
        return TR_E_NOMEM;
    for (uint32_t n = 0; n < w->H; n++)
        for (uint32_t j = 0; j < w->I; j++)
            dmax[j] = fmax(dmax[j], fabs(w->d[(size_t)n * w->I + j]));
    for (uint32_t r = 0; r < rows; r++) {
        double down = 0;
        for (uint32_t j = 0; j < w->I; j++) {
            double g = 0, u = 0;
            for (uint32_t k = 0; k < w->H; k++) {
                double xv = X[(size_t)r * w->H + k];
                if (!isfinite(xv))
                    continue;
                g += fabs(xv * w->g[(size_t)j * w->H + k]);
                u += fabs(xv * w->u[(size_t)j * w->H + k]);
            }
            lin = fmax(lin, fmax(g, u));
            quad = fmax(quad, g * u);
            down += g * u * dmax[j];   /* Σ_j |s_j|·|Wd[n][j]| <= Σ_j |g_j||u_j| max_n |Wd[n][j]| */
        }
        quad = fmax(quad, down);
    }
    tr_dealloc(dmax);
    int e1 = reg_fit_exponent(lin, limit), e2 = reg_fit_exponent(quad, limit);
    int e = e1 < (e2 - 1) / 2 ? e1 : (e2 - 1) / 2;
    if (e < 0)
        reg_scale_pow2(x, e);
    return TR_OK;
}

/* The widened weights of one expert, then fit_expert_range; TR_E_NOMEM on an allocation failure. */
static int fit_expert(const tr_case *c, tr_buf *x, const expert_view *v, uint32_t rows, double limit)
{
    expert_f64 w;
    int rc = expert_f64_load(v, &w);
    if (rc == TR_OK)
        rc = fit_expert_range(c, x, &w, rows, limit);
    expert_f64_free(&w);
    return rc;
}

/* ---- expert_ffn ---------------------------------------------------------------------------------------------- */

static const char *const rows_r_v[] = {"R=1", "R=2", "R=3", "R=4", "R=5", "R=7", "R=8", "R=9", "R=11", "R=12",
                                       "R=13", "R=15", "R=16", "R=17", "R=23", "R=24", "R=25", "R=31", "R=32",
                                       "R=33", "R=64", "R=129"};

static const tr_axis expert_axes[] = {
    REG_SHAPES_INIT, REG_TUPLES_INIT, {"ROWS", rows_r_v, NV(rows_r_v), 0, 0}, REG_ACC_INIT, REG_VALUES_INIT,
};

#define EXPERT_TAIL "acc=f32;values=normal"
static const char *const expert_always[] = {
    "H=2048;I=1536;tuple=6-2-3;R=1;" EXPERT_TAIL, "H=2048;I=1536;tuple=6-3-4;R=1;" EXPERT_TAIL,
    "H=2048;I=1536;tuple=6-2-4;R=1;" EXPERT_TAIL, "H=2048;I=768;tuple=4-4-4;R=1;" EXPERT_TAIL,
    "H=2048;I=1536;tuple=6-2-3;R=4;" EXPERT_TAIL, "H=2048;I=1536;tuple=6-3-4;R=4;" EXPERT_TAIL,
    "H=2048;I=1536;tuple=6-2-4;R=4;" EXPERT_TAIL,
};

static int fused_expert_domain(const tr_case *c, char *why, size_t cap)
{
    if (!reg_dom_acc(c, why, cap))
        return 0;
    if (!tr_params_is(&c->params, "tuple", "3-3-3"))
        return reg_dom_why(why, cap, "b=3 for all projections (tuple=3-3-3)");
    return 1;
}

static const tr_variant expert_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_ORDERED),
    REG_METAL("moe_trellis_fused_expert", "moe_trellis_fused_expert", 1, TR_CLASS_TOLERANT, "STACK+H16",
              "FUSED_EXPERT", "FE", fused_expert_domain, "b=3 for all projections", 1, 0),
};

static int expert_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    uint32_t H = pint(c, "H", 16), I = pint(c, "I", 16), R = pint(c, "R", 1);
    unsigned t[3];
    if (reg_tuple_parse(tr_params_str(&c->params, "tuple"), t) != 0)
        return tr_fail(err, TR_E_INVALID_PARAM, c->id, "tuple missing or malformed");
    int rc = make_expert(c, in, 0, H, I, t, err);
    uint64_t xs[2] = {R, H};
    tr_buf *x = rc == TR_OK ? tr_bufs_add(in, "x", TR_ROLE_INPUT, TR_DT_F32, 2, xs) : NULL;
    if (!x)
        return rc != TR_OK ? rc : tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    if (reg_fill(c, x, pstr(c, "values", "normal"), 1.0) != TR_OK)
        return tr_fail(err, TR_E_INVALID_PARAM, c->id, "unknown value distribution");
    if (is_h16(c))
        round_to_f16(x);
    expert_view v;
    double limit = tr_case_acc_f16(c) ? 16384.0 : 0x1p100;   /* KERNELS.md §6.5 */
    view_expert(in, 0, &v);
    if ((!range_obviously_fine(x, &v, limit) && fit_expert(c, x, &v, R, limit) != TR_OK) ||
        !tr_bufs_add(out, "y", TR_ROLE_OUTPUT, tr_case_acc_f16(c) ? TR_DT_F16 : TR_DT_F32, 2, xs))
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    return TR_OK;
}

static int expert_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    expert_view v;
    if (view_expert(in, 0, &v) != TR_OK)
        return tr_fail(err, TR_E_INVALID_SHAPE, c->id, "expert weights missing");
    const tr_buf *x = tr_bufs_get(in, "x");
    return tr_be_expert_ffn(be, &v.e, (const float *)(const void *)x->data, (uint32_t)x->shape[0],
                            tr_case_acc_f16(c) ? TR_ACC_F16 : TR_ACC_F32, tr_bufs_get(out, "y")->data, err);
}

/* The activation row a variant consumes, widened to f64 (f16 accumulation rounds x to f16 first). */
static void consumed_row(const tr_case *c, const float *x, uint32_t H, double *xd)
{
    for (uint32_t k = 0; k < H; k++)
        xd[k] = tr_case_acc_f16(c) ? tr_f16_to_f32(tr_f32_to_f16(x[k])) : x[k];
}

static int expert_bound(const tr_case *c, const tr_bufs *in, const tr_bufs *canon, int k, double **hi, double **B,
                        double **P, tr_error *err)
{
    expert_view v;
    expert_f64 w = {0};
    const tr_buf *x = tr_bufs_get(in, "x");
    uint32_t R = (uint32_t)x->shape[0], H = (uint32_t)x->shape[1];
    double *xd = tr_malloc((size_t)H * sizeof *xd);
    int rc = view_expert(in, 0, &v) == TR_OK && xd && expert_f64_load(&v, &w) == TR_OK
                 ? reg_bound_alloc(tr_buf_numel(canon->v[k]), hi, B, P, err)
                 : tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    for (uint32_t r = 0; rc == TR_OK && r < R; r++) {
        consumed_row(c, (const float *)(const void *)x->data + (size_t)r * H, H, xd);
        size_t o = (size_t)r * H;
        if (expert_row_bound(c, &w, xd, *hi + o, *B + o, *P + o) != TR_OK)
            rc = tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    }
    expert_f64_free(&w);
    tr_dealloc(xd);
    return rc;
}

const tr_opdef reg_op_expert_ffn = {
    "expert_ffn", expert_axes, NV(expert_axes), TR_CLASS_ORDERED, expert_variants, NV(expert_variants),
    expert_always, NV(expert_always), expert_always, 4, tuple_shape_valid, expert_make, expert_run, expert_bound,
    NULL, 0,
};

/* ---- moe_swiglu -------------------------------------------------------------------------------------------------- */

static const char *const rows_t_v[] = {"T=1", "T=2", "T=3", "T=4", "T=5", "T=7", "T=8", "T=9", "T=11", "T=12",
                                       "T=13", "T=15", "T=16", "T=17", "T=23", "T=24", "T=25", "T=31", "T=32",
                                       "T=33", "T=64", "T=129"};
static const char *const moe_e_v[] = {"E=1", "E=2", "E=4", "E=8", "E=16", "E=64", "E=128"};
static const char *const launch_v[] = {"launch=flat", "launch=slotted"};
static const char *const map_v[] = {"map=uniform", "map=alternating", "map=per_expert"};

static const tr_axis moe_axes[] = {
    REG_SHAPES_INIT, REG_TUPLES_INIT, {"ROWS", rows_t_v, NV(rows_t_v), 0, 0}, REG_TOPK_INIT,
    {"EXPERTS", moe_e_v, NV(moe_e_v), 0, 0}, REG_ROUTING_VALID_INIT, {"launch", launch_v, 2, 0, 0}, REG_ACC_INIT,
    {"map", map_v, 3, 0, 0},
};

#define MOE_GLM(t, T) "H=2048;I=1536;tuple=" t ";T=" T ";k=4;E=64;routing=uniform;launch=flat;acc=f32;map=uniform"
#define MOE_QWEN(T) "H=2048;I=768;tuple=4-4-4;T=" T ";k=8;E=128;routing=uniform;launch=flat;acc=f32;map=uniform"
static const char *const moe_always[] = {
    MOE_GLM("6-2-3", "1"), MOE_GLM("6-2-3", "4"), MOE_GLM("6-3-4", "1"), MOE_GLM("6-3-4", "4"),
    MOE_GLM("6-2-4", "1"), MOE_GLM("6-2-4", "4"), MOE_QWEN("1"), MOE_GLM("6-2-3", "17"), MOE_GLM("6-2-3", "33"),
    MOE_GLM("6-3-4", "17"), MOE_GLM("6-3-4", "33"), MOE_GLM("6-2-4", "17"), MOE_GLM("6-2-4", "33"), MOE_QWEN("16"),
};

/* KERNELS.md §4.8 declared domains.  Flat launches stack each tuple group separately (any map); slotted launches,
 * the grouped and the mixed kernels put every expert in one stack with one MoEParams, so the experts must share one
 * tuple (map=uniform); decode kernels take batch = 1; the tuple kernels one fixed tuple. */
static int moe_domain(const tr_case *c, char *why, size_t cap)
{
    const tr_params *p = &c->params;
    const char *sym = c->variant->symbol, *b = c->variant->binding;
    int flat = tr_params_is(p, "launch", "flat");
    if (!reg_dom_acc(c, why, cap))
        return 0;
    if (!strcmp(b, "MOE_GROUPED") && flat)
        return reg_dom_why(why, cap, "launch=slotted (the grouped kernel launches one threadgroup column per expert)");
    if ((!flat || strcmp(b, "MOE18")) && !tr_params_is(p, "map", "uniform"))
        return reg_dom_why(why, cap, "map=uniform (one stack, one MoEParams tuple)");
    if (!strcmp(b, "MOE_MIXED")) {
        unsigned t[3];
        if (reg_tuple_parse(tr_params_str(p, "tuple"), t) != 0 || t[0] != t[1] || t[1] != t[2])
            return reg_dom_why(why, cap, "g=u=d per expert");
    }
    if (strstr(sym, "decode")) {
        if (tr_params_int(p, "T", 1) != 1 || (flat && tr_params_int(p, "k", 1) != 1))
            return reg_dom_why(why, cap, "batch=1 (T=1, slotted)");
        const char *d = strstr(sym, "decode_");
        if (d && d[7] >= '0' && d[7] <= '9') {
            char want[8];
            snprintf(want, sizeof want, "%c-%c-%c", d[7], d[9], d[11]);
            if (!tr_params_is(p, "tuple", want) || !tr_params_is(p, "map", "uniform"))
                return reg_dom_why(why, cap, "tuple=%s;map=uniform", want);
        }
    }
    return 1;
}

#define MOE_METAL(id, sym, f16, binding, launch, dom)                                                                 \
    REG_METAL(id, sym, f16, TR_CLASS_TOLERANT, "STACK+H16", binding, launch, moe_domain, dom, 1, 1)
static const tr_variant moe_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_ORDERED),
    MOE_METAL("base", "moe_trellis_swiglu", 1, "MOE18", "MOE", ""),
    MOE_METAL("fp32acc", "moe_trellis_swiglu_fp32acc", 0, "MOE18", "MOE", ""),
    MOE_METAL("large_batch", "moe_trellis_swiglu_large_batch", 0, "MOE18", "MOE_LB", ""),
    MOE_METAL("simd", "moe_trellis_swiglu_simd", 1, "MOE18", "MOE", ""),
    MOE_METAL("fast_2bit", "moe_trellis_fast_2bit_swiglu", 1, "MOE18", "MOE", "as base (registered name, probed)"),
    MOE_METAL("mixed_bpw", "moe_trellis_mixed_bpw_swiglu", 1, "MOE18", "MOE", "as base (registered name, probed)"),
    MOE_METAL("decode", "moe_trellis_swiglu_decode", 0, "MOE18", "MOE_DEC", "batch=1"),
    MOE_METAL("decode_6_2_3", "moe_trellis_swiglu_decode_6_2_3", 0, "MOE18", "MOE_DEC", "batch=1;tuple=6-2-3"),
    MOE_METAL("decode_6_3_4", "moe_trellis_swiglu_decode_6_3_4", 0, "MOE18", "MOE_DEC", "batch=1;tuple=6-3-4"),
    MOE_METAL("decode_6_2_4", "moe_trellis_swiglu_decode_6_2_4", 0, "MOE18", "MOE_DEC", "batch=1;tuple=6-2-4"),
    MOE_METAL("decode_gemv", "moe_trellis_swiglu_decode_gemv", 0, "MOE18", "MOE_DEC", "batch=1"),
    MOE_METAL("prefill4", "moe_trellis_swiglu_prefill4", 1, "MOE18", "MOE_P4", ""),
    MOE_METAL("prefill4_fp32acc", "moe_trellis_swiglu_prefill4_fp32acc", 0, "MOE18", "MOE_P4", ""),
    MOE_METAL("grouped", "moe_trellis_swiglu_grouped", 1, "MOE_GROUPED", "MOE_GROUPED", "one tuple"),
    MOE_METAL("mixed", "moe_trellis_mixed_swiglu", 0, "MOE_MIXED", "MOE_MIXED", "g=u=d per expert"),
    MOE_METAL("mixed_decode", "moe_trellis_mixed_swiglu_decode", 0, "MOE_MIXED", "MOE_MIXED", "g=u=d;batch=1"),
    MOE_METAL("mixed_prefill", "moe_trellis_mixed_swiglu_prefill", 0, "MOE_MIXED", "MOE_MIXED", "g=u=d per expert"),
    MOE_METAL("mixed_large", "moe_trellis_mixed_swiglu_large", 0, "MOE_MIXED", "MOE_MIXED", "g=u=d per expert"),
};

static int routing_needs_distinct(const char *r)
{
    return !strcmp(r, "uniform") || !strcmp(r, "skewed") || !strcmp(r, "hot_expert") || !strcmp(r, "empty_experts") ||
           !strcmp(r, "duplicates") || !strcmp(r, "invalid");
}

/* k ≤ E for the distinct-expert routings; max_k means k = E. */
static int routing_valid(const tr_params *p)
{
    const char *r = tr_params_str(p, "routing");
    int64_t k = tr_params_int(p, "k", 1), E = tr_params_int(p, "E", 1);
    if (!r)
        return 1;
    if (!strcmp(r, "max_k"))
        return k == E;
    if (routing_needs_distinct(r))
        return k <= E;
    return 1;
}

static int moe_valid(const tr_params *p) { return tuple_shape_valid(p) && routing_valid(p); }

/* Tuple of expert e under the map: uniform (the axis tuple), alternating (axis tuple for even e, 4-4-4 or 6-3-4 for
 * odd e), per_expert (the practice list rotated from the axis tuple's position). */
static void expert_tuple(const tr_case *c, uint32_t e, unsigned t[3])
{
    static const char *const practice[12] = {"6-2-3", "6-3-4", "6-2-4", "4-4-4", "2-2-2", "3-3-3",
                                             "5-5-5", "6-6-6", "7-7-7", "8-8-8", "2-8-2", "8-2-8"};
    const char *axis = tr_params_str(&c->params, "tuple");
    reg_tuple_parse(axis, t);
    if (tr_params_is(&c->params, "map", "alternating") && e % 2 == 1)
        reg_tuple_parse(strcmp(axis, "4-4-4") ? "4-4-4" : "6-3-4", t);
    else if (tr_params_is(&c->params, "map", "per_expert")) {
        int at = 0;
        for (int i = 0; i < 12; i++)
            if (!strcmp(practice[i], axis))
                at = i;
        reg_tuple_parse(practice[(at + (int)e) % 12], t);
    }
}

static int moe_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    uint32_t H = pint(c, "H", 16), I = pint(c, "I", 16), T = pint(c, "T", 1), k = pint(c, "k", 1), E = pint(c, "E", 1);
    uint64_t xs[2] = {T, H}, rs[2] = {T, k};
    tr_buf *x = tr_bufs_add(in, "x", TR_ROLE_INPUT, TR_DT_F32, 2, xs);
    tr_buf *ids = x ? tr_bufs_add(in, "ids", TR_ROLE_INPUT, TR_DT_I32, 2, rs) : NULL;
    tr_buf *probs = ids ? tr_bufs_add(in, "probs", TR_ROLE_INPUT, TR_DT_F32, 2, rs) : NULL;
    if (!probs)
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    reg_fill(c, x, "normal", 1.0);
    if (is_h16(c))
        round_to_f16(x);
    int32_t *id = (int32_t *)(void *)ids->data;
    int rr = reg_make_routing(c, "ids", pstr(c, "routing", "uniform"), T, k, E, id);
    if (rr != TR_OK)
        return tr_fail(err, rr, c->id, rr == TR_E_NOMEM ? "out of memory" : "unknown routing");
    reg_make_probs(c, "probs", T, k, is_h16(c), (float *)(void *)probs->data);
    uint8_t *used = tr_calloc(E, 1);
    if (!used)
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    int rc = TR_OK;
    for (uint64_t f = 0; f < (uint64_t)T * k; f++)
        used[id[f]] = 1;
    for (uint32_t e = 0; rc == TR_OK && e < E; e++)   /* weights only for experts a slot refers to */
        if (used[e]) {
            unsigned t[3];
            expert_tuple(c, e, t);
            rc = make_expert(c, in, (int)e, H, I, t, err);
        }
    if (rc == TR_OK) {   /* one scaling of x for every expert used (KERNELS.md §6.5) */
        for (uint32_t e = 0; rc == TR_OK && e < E; e++)
            if (used[e]) {
                expert_view v;
                double limit = tr_case_acc_f16(c) ? 16384.0 : 0x1p100;
                view_expert(in, (int)e, &v);
                if (!range_obviously_fine(x, &v, limit) && fit_expert(c, x, &v, T, limit) != TR_OK)
                    rc = tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
            }
    }
    tr_dealloc(used);
    tr_buf *o = rc == TR_OK ? tr_bufs_add(out, "out", TR_ROLE_OUTPUT, TR_DT_F32, 2, xs) : NULL;
    if (rc == TR_OK && !o)
        rc = tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    if (o)
        o->accumulating = tr_params_is(&c->params, "launch", "slotted") && !strcmp(c->variant->backend, "metal");
    return rc;
}

/* Expert table [E] from the buffers; unused experts stay empty. */
static int moe_experts(const tr_case *c, const tr_bufs *in, expert_view **views, tr_expert **ex)
{
    uint32_t E = pint(c, "E", 1);
    *views = tr_calloc(E, sizeof **views);
    *ex = tr_calloc(E, sizeof **ex);
    if (!*views || !*ex)
        return TR_E_NOMEM;
    for (uint32_t e = 0; e < E; e++)
        if (view_expert(in, (int)e, &(*views)[e]) == TR_OK) {
            (*ex)[e] = (*views)[e].e;
            (*ex)[e].gate = &(*views)[e].w[0];
            (*ex)[e].up = &(*views)[e].w[1];
            (*ex)[e].down = &(*views)[e].w[2];
        }
    return TR_OK;
}

static int moe_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    expert_view *views = NULL;
    tr_expert *ex = NULL;
    int rc = moe_experts(c, in, &views, &ex);
    if (rc != TR_OK)
        rc = tr_fail(err, rc, c->id, "out of memory");
    const tr_buf *x = tr_bufs_get(in, "x"), *ids = tr_bufs_get(in, "ids"), *probs = tr_bufs_get(in, "probs");
    if (rc == TR_OK)
        rc = tr_be_moe_swiglu(be, ex, pint(c, "E", 1), (const float *)(const void *)x->data, (uint32_t)x->shape[0],
                              (const int32_t *)(const void *)ids->data, (const float *)(const void *)probs->data,
                              (uint32_t)ids->shape[1], tr_case_acc_f16(c) ? TR_ACC_F16 : TR_ACC_F32,
                              (float *)(void *)tr_bufs_get(out, "out")->data, err);
    tr_dealloc(views);
    tr_dealloc(ex);
    return rc;
}

/* Weighted combine (KERNELS.md §2.3) over the k slots of each token, a = 0, u_comb = 2^-24. */
static int moe_bound(const tr_case *c, const tr_bufs *in, const tr_bufs *canon, int k, double **hi, double **B,
                     double **P, tr_error *err)
{
    const tr_buf *x = tr_bufs_get(in, "x"), *ids = tr_bufs_get(in, "ids"), *probs = tr_bufs_get(in, "probs");
    uint32_t T = (uint32_t)x->shape[0], H = (uint32_t)x->shape[1], K = (uint32_t)ids->shape[1], E = pint(c, "E", 1);
    expert_f64 *w = tr_calloc(E, sizeof *w);
    double *xd = tr_malloc((size_t)H * sizeof *xd), *y = tr_malloc((size_t)H * 3 * sizeof *y);
    double *sum_abs = tr_malloc((size_t)H * 3 * sizeof *sum_abs);
    int rc = w && xd && y && sum_abs ? reg_bound_alloc(tr_buf_numel(canon->v[k]), hi, B, P, err)
                                     : tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    const int32_t *id = (const int32_t *)(const void *)ids->data;
    const float *p = (const float *)(const void *)probs->data;
    double gam = tr_gamma(K, ldexp(1.0, -24)), gam_p = sqrt((double)K) * ldexp(1.0, -24);
    for (uint32_t t = 0; rc == TR_OK && t < T; t++) {
        consumed_row(c, (const float *)(const void *)x->data + (size_t)t * H, H, xd);
        double *o = *hi + (size_t)t * H, *ob = *B + (size_t)t * H, *op = *P + (size_t)t * H;
        double *sa = sum_abs, *sb = sum_abs + H, *sp = sum_abs + 2 * (size_t)H;
        for (uint32_t n = 0; n < H; n++)
            o[n] = ob[n] = op[n] = sa[n] = sb[n] = sp[n] = 0.0;
        for (uint32_t j = 0; rc == TR_OK && j < K; j++) {
            int32_t e = id[(size_t)t * K + j];
            expert_view v;
            if (!w[e].g && (view_expert(in, e, &v) != TR_OK || expert_f64_load(&v, &w[e]) != TR_OK)) {
                rc = tr_fail(err, TR_E_NOMEM, c->id, "expert %d weights", e);
                break;
            }
            if (expert_row_bound(c, &w[e], xd, y, y + H, y + 2 * (size_t)H) != TR_OK) {
                rc = tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
                break;
            }
            double pj = fabs((double)p[(size_t)t * K + j]);
            for (uint32_t n = 0; n < H; n++) {
                double yv = y[n], ey = y[H + n], py = y[2 * (size_t)H + n];
                o[n] += p[(size_t)t * K + j] * yv;
                ob[n] += pj * ey + ldexp(1.0, -24) * pj * (fabs(yv) + ey);
                op[n] += pj * py + ldexp(1.0, -24) * pj * (fabs(yv) + py);
                sa[n] += fabs(pj * yv);
                sb[n] += pj * ey;
                sp[n] += pj * py;
            }
        }
        for (uint32_t n = 0; rc == TR_OK && n < H; n++) {
            ob[n] += gam * (sa[n] + sb[n]);
            op[n] += gam_p * (sa[n] + sp[n]);
        }
    }
    for (uint32_t e = 0; w && e < E; e++)
        expert_f64_free(&w[e]);
    tr_dealloc(w);
    tr_dealloc(xd);
    tr_dealloc(y);
    tr_dealloc(sum_abs);
    return rc;
}

const tr_opdef reg_op_moe_swiglu = {
    "moe_swiglu", moe_axes, NV(moe_axes), TR_CLASS_ORDERED, moe_variants, NV(moe_variants), moe_always,
    NV(moe_always), moe_always, 7, moe_valid, moe_make, moe_run, moe_bound, NULL, 0,
};

/* ---- router_logits --------------------------------------------------------------------------------------------- */

static const char *const rt_t_v[] = {"T=1", "T=2", "T=5", "T=17", "T=129"};
static const char *const rt_e_v[] = {"E=1", "E=2", "E=4", "E=8", "E=16", "E=64", "E=128", "E=160", "E=256"};
static const char *const rl_h_v[] = {"H=1", "H=7", "H=15", "H=16", "H=17", "H=31", "H=33", "H=64", "H=100",
                                     "H=127", "H=128", "H=129", "H=257"};
static const char *const rl_x_v[] = {"xdt=f32", "xdt=f16", "xdt=bf16"};
static const char *const rl_w_v[] = {"wdt=f32", "wdt=f16", "wdt=bf16", "wdt=i8"};

static const tr_axis logits_axes[] = {
    {"T", rt_t_v, NV(rt_t_v), 0, 0}, {"E", rt_e_v, NV(rt_e_v), 0, 0}, {"H", rl_h_v, NV(rl_h_v), 0, 0},
    {"xdt", rl_x_v, 3, 0, 0}, {"wdt", rl_w_v, 4, 0, 0},
};
static const char *const logits_always[] = {"T=1;E=64;H=2048;xdt=f32;wdt=f32", "T=1;E=128;H=2048;xdt=f32;wdt=f32"};
static const tr_variant logits_variants[] = {REG_VARIANTS_REF_CPU(TR_CLASS_ORDERED)};

static tr_dtype dt_of(const char *s)
{
    return !strcmp(s, "f16") ? TR_DT_F16 : !strcmp(s, "bf16") ? TR_DT_BF16 : !strcmp(s, "i8") ? TR_DT_I8 : TR_DT_F32;
}

static int logits_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    uint64_t T = pint(c, "T", 1), E = pint(c, "E", 1), H = pint(c, "H", 1);
    uint64_t xs[2] = {T, H}, ws[2] = {E, H}, es[1] = {E}, os[2] = {T, E};
    tr_dtype wdt = dt_of(pstr(c, "wdt", "f32"));
    tr_buf *x = tr_bufs_add(in, "x", TR_ROLE_INPUT, dt_of(pstr(c, "xdt", "f32")), 2, xs);
    tr_buf *w = x ? tr_bufs_add(in, "wr", TR_ROLE_INPUT, wdt, 2, ws) : NULL;
    tr_buf *s = w && wdt == TR_DT_I8 ? tr_bufs_add(in, "wscale", TR_ROLE_INPUT, TR_DT_F32, 1, es) : w;
    if (!s || !tr_bufs_add(out, "logits", TR_ROLE_OUTPUT, TR_DT_F32, 2, os))
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    reg_fill(c, x, "normal", 1.0);
    if (wdt == TR_DT_I8) {   /* integer weights in [-127, 127] and one f32 scale per expert */
        tr_rng r;
        reg_stream(c, "wr", &r);
        for (uint64_t i = 0; i < E * H; i++)
            w->data[i] = (uint8_t)(int8_t)tr_rng_int(&r, -127, 127);
        reg_stream(c, "wscale", &r);
        for (uint64_t e = 0; e < E; e++)
            reg_set(s, e, ldexp(1.0 + tr_rng_u01(&r), -8));
    } else
        reg_fill(c, w, "normal", 0.1);
    return TR_OK;
}

/* f32 copy of a buffer (exact widening of f16/bf16/i8). */
static float *widen(const tr_buf *b)
{
    uint64_t n = tr_buf_numel(b);
    float *f = tr_malloc((size_t)(n ? n : 1) * sizeof *f);
    for (uint64_t i = 0; f && i < n; i++)
        f[i] = (float)reg_get(b, i);
    return f;
}

static int logits_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    const tr_buf *x = tr_bufs_get(in, "x"), *w = tr_bufs_get(in, "wr"), *s = tr_bufs_get(in, "wscale");
    float *xf = widen(x), *wf = widen(w);
    int rc = xf && wf ? tr_be_router_logits(be, xf, wf, s ? (const float *)(const void *)s->data : NULL,
                                            (uint32_t)x->shape[0], (uint32_t)x->shape[1], (uint32_t)w->shape[0],
                                            (float *)(void *)tr_bufs_get(out, "logits")->data, err)
                      : tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    tr_dealloc(xf);
    tr_dealloc(wf);
    return rc;
}

static int logits_bound(const tr_case *c, const tr_bufs *in, const tr_bufs *canon, int k, double **hi, double **B,
                        double **P, tr_error *err)
{
    const tr_buf *x = tr_bufs_get(in, "x"), *w = tr_bufs_get(in, "wr"), *s = tr_bufs_get(in, "wscale");
    uint32_t T = (uint32_t)x->shape[0], H = (uint32_t)x->shape[1], E = (uint32_t)w->shape[0];
    int rc = reg_bound_alloc(tr_buf_numel(canon->v[k]), hi, B, P, err);
    for (uint32_t t = 0; rc == TR_OK && t < T; t++)
        for (uint32_t e = 0; e < E; e++) {
            reg_dot d = {0, 0, H};
            double sum = 0;
            for (uint32_t h = 0; h < H; h++) {
                double p = reg_get(x, (uint64_t)t * H + h) * reg_get(w, (uint64_t)e * H + h);
                sum += p;
                d.A += fabs(p);
            }
            double sc = s ? reg_get(s, e) : 1.0, eb = reg_dot_bound(c, &d, 0), ep = reg_dot_bound(c, &d, 1);
            size_t o = (size_t)t * E + e;
            (*hi)[o] = sum * sc;
            (*B)[o] = s ? eb * sc + (fabs(sum) + eb) * sc * ldexp(1.0, -24) : eb;
            (*P)[o] = s ? ep * sc + (fabs(sum) + ep) * sc * ldexp(1.0, -24) : ep;
        }
    return rc;
}

const tr_opdef reg_op_router_logits = {
    "router_logits", logits_axes, NV(logits_axes), TR_CLASS_ORDERED, logits_variants, NV(logits_variants),
    logits_always, NV(logits_always), NULL, 0, NULL, logits_make, logits_run, logits_bound, NULL, 0,
};

/* ---- router_topk ----------------------------------------------------------------------------------------------- */

static const char *const mode_v[] = {"mode=softmax_topk", "mode=softmax_topk_f16", "mode=noaux_tc"};
static const char *const norm_v[] = {"norm=1", "norm=0"};
static const char *const ngroup_v[] = {"n_group=1", "n_group=2", "n_group=4", "n_group=8"};
static const char *const tgroup_v[] = {"topk_group=1", "topk_group=2", "topk_group=4", "topk_group=8"};
static const char *const scaling_v[] = {"scaling=1", "scaling=1.8", "scaling=2.5"};
static const char *const bias_v[] = {"bias=zero", "bias=normal", "bias=large_negative"};
static const char *const lg_v[] = {"logits=normal", "logits=quantized", "logits=all_equal", "logits=nan_inf"};

static const tr_axis topk_axes[] = {
    {"T", rt_t_v, NV(rt_t_v), 0, 0}, {"E", rt_e_v, NV(rt_e_v), 0, 0}, REG_TOPK_INIT, {"mode", mode_v, 3, 0, 0},
    {"norm", norm_v, 2, 0, 0}, {"n_group", ngroup_v, 4, 0, 0}, {"topk_group", tgroup_v, 4, 0, 0},
    {"scaling", scaling_v, 3, 0, 0}, {"bias", bias_v, 3, 0, 0}, {"logits", lg_v, 4, 0, 0},
};
static const char *const topk_always[] = {
    "T=1;E=64;k=4;mode=noaux_tc;norm=1;n_group=1;topk_group=1;scaling=1.8;bias=normal;logits=normal",
    "T=1;E=128;k=8;mode=softmax_topk;norm=0;n_group=1;topk_group=1;scaling=1;bias=zero;logits=normal",
};
/* Our router kernels and the metal_marlin symbols of KERNELS.md §4.9 (docs/decisions.md, metal-emu bindings).  The
 * fused forms take x f16 [T][H] and Wr (f16, or i8 with a per-expert f32 scale) instead of logits: the generator
 * makes them and computes the logits input with router_logits (L16), so ref and kernel see the same logits.  All
 * store the weights as f16 (RNh of the op's f32 weights; softmax_topk_f16 weights are f16 values already). */
static int rt_is(const tr_case *c, const char *binding)
{
    return c->variant->binding && !strcmp(c->variant->binding, binding);
}

static int rt_fused(const tr_case *c)
{
    return c->variant->binding && !strncmp(c->variant->binding, "RT_", 3) && !rt_is(c, "RT_F16");
}

static int rt_int8(const tr_case *c) { return rt_is(c, "RT_INT8") || rt_is(c, "RT_INT8_D"); }

/* Candidates per token of the sparse routers: C = min(32, max(k, ceil(E/2))). */
static uint32_t rt_candidates(uint32_t E, uint32_t k)
{
    uint32_t C = (E + 1) / 2 > k ? (E + 1) / 2 : k;
    return C < 32 ? C : 32;
}

static int rt_domain(const tr_case *c, char *why, size_t cap)
{
    const tr_params *p = &c->params;
    const char *sym = c->variant->symbol;
    int f16 = rt_is(c, "RT_F16");
    int64_t T = tr_params_int(p, "T", 1), E = tr_params_int(p, "E", 1), k = tr_params_int(p, "k", 1);
    if (!tr_params_is(p, "mode", f16 ? "softmax_topk_f16" : "softmax_topk") || !tr_params_is(p, "norm", "1"))
        return reg_dom_why(why, cap, "mode=%s;norm=1", f16 ? "softmax_topk_f16" : "softmax_topk");
    if (E > (f16 ? 128 : 256) || k > (f16 ? 8 : 16))
        return reg_dom_why(why, cap, "E<=%d;k<=%d", f16 ? 128 : 256, f16 ? 8 : 16);
    if ((strstr(sym, "decode") || strstr(sym, "8_128e")) && T != 1)
        return reg_dom_why(why, cap, "T=1");
    if (strstr(sym, "8_128e") && (E != 128 || k != 8))
        return reg_dom_why(why, cap, "E=128;k=8");
    return 1;
}

#define RT(sym, f16, binding, launch, text)                                                                           \
    REG_METAL(sym, sym, f16, TR_CLASS_TOLERANT, "H16", binding, launch, rt_domain, text, 0, 0)
static const tr_variant topk_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_ORDERED),
    RT("moe_router_fused", 0, "RT_FUSED", "ROUTER", "softmax_topk, norm, Wr f16 [H][E], E<=256, k<=16"),
    RT("moe_router_fused_small", 0, "RT_FUSED", "ROUTER", "softmax_topk, norm, Wr f16 [H][E], E<=256, k<=16"),
    RT("moe_router_fused_coalesced", 0, "RT_FUSED_C", "ROUTER", "softmax_topk, norm, Wr f16 [E][H], E<=256, k<=16"),
    RT("moe_router_int8_fused", 0, "RT_INT8", "ROUTER", "softmax_topk, norm, Wr i8 + scale, E<=256, k<=16"),
    RT("moe_router_int8_fused_small", 0, "RT_INT8", "ROUTER", "softmax_topk, norm, Wr i8 + scale, E<=256, k<=16"),
    RT("moe_router_int8_fused_decode", 0, "RT_INT8_D", "ROUTER1", "softmax_topk, norm, Wr i8 + scale, T=1"),
    RT("moe_router_sparse", 0, "RT_SPARSE", "ROUTER", "softmax_topk over C<=32 candidates, norm"),
    RT("moe_router_sparse_vec4", 0, "RT_SPARSE", "ROUTER", "softmax_topk over C<=32 candidates, norm"),
    RT("softmax_topk_decode", 1, "RT_F16", "ROUTER1", "softmax_topk_f16, norm, E<=128, k<=8, T=1"),
    RT("softmax_topk_prefill", 1, "RT_F16", "ROUTER", "softmax_topk_f16, norm, E<=128, k<=8"),
    RT("softmax_topk8_128e", 1, "RT_F16", "ROUTER1", "softmax_topk_f16, norm, E=128, k=8, T=1"),
};

static int topk_valid(const tr_params *p)
{
    int64_t E = tr_params_int(p, "E", 1), k = tr_params_int(p, "k", 1);
    int64_t ng = tr_params_int(p, "n_group", 1), tg = tr_params_int(p, "topk_group", 1);
    if (k > E)
        return 0;
    if (!tr_params_is(p, "mode", "noaux_tc"))   /* group limit, scaling and bias belong to noaux_tc */
        return ng == 1 && tg == 1 && tr_params_is(p, "scaling", "1") && tr_params_is(p, "bias", "zero");
    if (E % ng != 0 || (ng > 1 && E / ng < 2) || tg > ng || tg * (E / ng) < k)
        return 0;
    return 1;
}

static void topk_cfg(const tr_case *c, tr_router_cfg *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    tr_router_mode_parse(pstr(c, "mode", "softmax_topk"), &cfg->mode);
    cfg->E = pint(c, "E", 1);
    cfg->k = pint(c, "k", 1);
    cfg->norm_topk_prob = (int)tr_params_int(&c->params, "norm", 1);
    cfg->temperature = 1.0f;
    cfg->n_group = pint(c, "n_group", 1);
    cfg->topk_group = pint(c, "topk_group", 1);
    cfg->routed_scaling_factor = (float)tr_params_real(&c->params, "scaling", 1.0);
}

#define RT_FUSED_H 40   /* hidden size of the fused routers' x and Wr: two full L16 rounds and a tail */

/* Rows of Wr made equal: logits=all_equal (every row = row 0: all logits of a token tie), quantized (odd rows =
 * the even row before: ties in pairs). */
static void rt_tie_rows(const tr_case *c, tr_buf *w, uint64_t E, uint64_t H)
{
    int all = tr_params_is(&c->params, "logits", "all_equal");
    if (!all && !tr_params_is(&c->params, "logits", "quantized"))
        return;
    size_t row = (size_t)H * tr_dtype_size(w->dtype);
    for (uint64_t e = 1; e < E; e++)
        if (all || e % 2)
            memcpy(w->data + e * row, w->data + (all ? 0 : e - 1) * row, row);
}

/* Candidate lists [T][C]: C distinct experts per token (partial Fisher–Yates on the "candidates" stream). */
static int rt_make_candidates(const tr_case *c, tr_bufs *in, uint64_t T, uint64_t E, uint64_t k, tr_error *err)
{
    uint64_t C = rt_candidates((uint32_t)E, (uint32_t)k), cs[2] = {T, C};
    tr_buf *b = tr_bufs_add(in, "candidates", TR_ROLE_INPUT, TR_DT_I32, 2, cs);
    int32_t *perm = tr_malloc((size_t)E * sizeof *perm);
    if (!b || !perm) {
        tr_dealloc(perm);
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    }
    tr_rng r;
    reg_stream(c, "candidates", &r);
    for (uint64_t t = 0; t < T; t++) {
        for (uint64_t e = 0; e < E; e++)
            perm[e] = (int32_t)e;
        for (uint64_t j = 0; j < C; j++) {
            uint64_t q = j + (uint64_t)tr_rng_int(&r, 0, (int64_t)(E - j - 1));
            int32_t tmp = perm[j];
            perm[j] = perm[q];
            perm[q] = tmp;
            ((int32_t *)(void *)b->data)[t * C + j] = perm[j];
        }
    }
    tr_dealloc(perm);
    return TR_OK;
}

/* Fused routers: x f16 [T][H], Wr f16 [E][H] (or i8 + wscale f32 [E]), candidates for the sparse ones; the logits
 * input is router_logits of them (L16, the order the kernels follow). */
static int rt_make_fused(const tr_case *c, tr_bufs *in, tr_buf *l, tr_error *err)
{
    uint64_t T = pint(c, "T", 1), E = pint(c, "E", 1), H = RT_FUSED_H, xs[2] = {T, H}, ws[2] = {E, H}, es[1] = {E};
    int i8 = rt_int8(c);
    tr_buf *x = tr_bufs_add(in, "x", TR_ROLE_INPUT, TR_DT_F16, 2, xs);
    tr_buf *w = x ? tr_bufs_add(in, "wr", TR_ROLE_INPUT, i8 ? TR_DT_I8 : TR_DT_F16, 2, ws) : NULL;
    tr_buf *s = w && i8 ? tr_bufs_add(in, "wscale", TR_ROLE_INPUT, TR_DT_F32, 1, es) : w;
    if (!s)
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    reg_fill(c, x, tr_params_is(&c->params, "logits", "nan_inf") ? "nan_inf" : "normal", 1.0);
    tr_rng r;
    if (i8) {
        reg_stream(c, "wr", &r);
        for (uint64_t i = 0; i < E * H; i++)
            w->data[i] = (uint8_t)(int8_t)tr_rng_int(&r, -127, 127);
        reg_stream(c, "wscale", &r);
        for (uint64_t e = 0; e < E; e++)
            reg_set(s, e, ldexp(1.0 + tr_rng_u01(&r), -8));
    } else
        reg_fill(c, w, "normal", 0.1);
    rt_tie_rows(c, w, E, H);
    float *xf = widen(x), *wf = widen(w);
    if (xf && wf)
        tr_ref_router_logits(xf, wf, i8 ? (const float *)(const void *)s->data : NULL, (uint32_t)T, (uint32_t)H,
                             (uint32_t)E, (float *)(void *)l->data);
    tr_dealloc(xf);
    tr_dealloc(wf);
    if (!xf || !wf)
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    return rt_is(c, "RT_SPARSE") ? rt_make_candidates(c, in, T, E, pint(c, "k", 1), err) : TR_OK;
}

static void rt_make_logits(const tr_case *c, tr_buf *l, uint64_t n)
{
    const char *lg = pstr(c, "logits", "normal");
    if (!strcmp(lg, "all_equal"))
        for (uint64_t i = 0; i < n; i++)
            reg_set(l, i, 0.5);
    else {
        reg_fill(c, l, !strcmp(lg, "nan_inf") ? "nan_inf" : "normal", 1.0);
        if (!strcmp(lg, "quantized"))   /* multiples of 2^-4: exact ties */
            for (uint64_t i = 0; i < n; i++)
                reg_set(l, i, round(reg_get(l, i) * 16.0) / 16.0);
    }
}

/* Outputs: ids, weights (f16 for the Metal routers, which store f16 weights), and the aux load and count of ref and
 * cpu (the kernels have none). */
static int topk_outputs(const tr_case *c, tr_bufs *out, uint64_t T, uint64_t E, uint64_t k, tr_error *err)
{
    uint64_t es[1] = {E}, ks[2] = {T, k};
    int metal = c->variant->binding && !strncmp(c->variant->binding, "RT_", 3);
    if (!tr_bufs_add(out, "ids", TR_ROLE_OUTPUT, TR_DT_I32, 2, ks) ||
        !tr_bufs_add(out, "weights", TR_ROLE_OUTPUT, metal ? TR_DT_F16 : TR_DT_F32, 2, ks) ||
        (!metal && (!tr_bufs_add(out, "load", TR_ROLE_OUTPUT, TR_DT_F32, 1, es) ||
                    !tr_bufs_add(out, "count", TR_ROLE_OUTPUT, TR_DT_I32, 1, es))))
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    return TR_OK;
}

static int topk_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    uint64_t T = pint(c, "T", 1), E = pint(c, "E", 1), k = pint(c, "k", 1);
    uint64_t ls[2] = {T, E}, es[1] = {E};
    tr_buf *l = tr_bufs_add(in, "logits", TR_ROLE_INPUT, TR_DT_F32, 2, ls);
    tr_buf *b = l ? tr_bufs_add(in, "bias", TR_ROLE_INPUT, TR_DT_F32, 1, es) : NULL;
    if (!b)
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    int rc = topk_outputs(c, out, T, E, k, err);
    if (rc != TR_OK)
        return rc;
    if (rt_fused(c)) {
        rc = rt_make_fused(c, in, l, err);
        if (rc != TR_OK)
            return rc;
    } else
        rt_make_logits(c, l, T * E);
    const char *bias = pstr(c, "bias", "zero");
    if (!strcmp(bias, "normal"))
        reg_fill(c, b, "normal", 0.1);
    else if (!strcmp(bias, "large_negative")) {   /* half the experts pushed far down */
        tr_rng r;
        reg_stream(c, "bias", &r);
        for (uint64_t e = 0; e < E; e++)
            reg_set(b, e, e % 2 ? -1024.0 * (1.0 + tr_rng_u01(&r)) : 0.1 * tr_rng_normal(&r));
    }
    return TR_OK;
}

static void *opt_data(const tr_bufs *b, const char *name)
{
    tr_buf *x = tr_bufs_get(b, name);
    return x ? x->data : NULL;
}

static int topk_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    tr_router_cfg cfg;
    topk_cfg(c, &cfg);
    const tr_buf *l = tr_bufs_get(in, "logits"), *b = tr_bufs_get(in, "bias"), *cand = tr_bufs_get(in, "candidates");
    tr_buf *w = tr_bufs_get(out, "weights");
    uint64_t n = tr_buf_numel(w);
    float *wf = w->dtype == TR_DT_F32 ? (float *)(void *)w->data : tr_malloc((size_t)n * sizeof *wf + 4);
    if (!wf)
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    int rc = tr_be_router_topk(be, &cfg, (const float *)(const void *)l->data, (uint32_t)l->shape[0],
                               (const float *)(const void *)b->data,
                               cand ? (const int32_t *)(const void *)cand->data : NULL,
                               cand ? (uint32_t)cand->shape[1] : 0, (int32_t *)(void *)tr_bufs_get(out, "ids")->data,
                               wf, opt_data(out, "load"), opt_data(out, "count"), err);
    if (w->dtype == TR_DT_F16) {   /* the f16 weights the Metal routers store: RNh of the f32 weights */
        for (uint64_t i = 0; rc == TR_OK && i < n; i++)
            ((uint16_t *)(void *)w->data)[i] = tr_f32_to_f16(wf[i]);
        tr_dealloc(wf);
    }
    return rc;
}

const tr_opdef reg_op_router_topk = {
    "router_topk", topk_axes, NV(topk_axes), TR_CLASS_ORDERED, topk_variants, NV(topk_variants), topk_always,
    NV(topk_always), NULL, 0, topk_valid, topk_make, topk_run, NULL, NULL, 0,
};
