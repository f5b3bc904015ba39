/*
 * reg_ops_group.c — registry entries of the grouping ops (KERNELS.md §4.10: moe_count, moe_offsets, moe_scatter,
 * moe_group, validate_expert_ids), gather, combine and cast (§4.11), the codebook ops (§4.12) and nan_scan (§4.13).
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

static uint32_t pint(const tr_case *c, const char *k, uint32_t d) { return (uint32_t)tr_params_int(&c->params, k, d); }

static const char *pstr(const tr_case *c, const char *k, const char *d)
{
    const char *v = tr_params_str(&c->params, k);
    return v ? v : d;
}

static const void *cdata(const tr_bufs *b, const char *name) { return tr_bufs_get(b, name)->data; }
static void *odata(const tr_bufs *b, const char *name) { return tr_bufs_get(b, name)->data; }

/* ---- grouping ---------------------------------------------------------------------------------------------------- */

static const char *const gt_v[] = {"T=0", "T=1", "T=2", "T=3", "T=4", "T=5", "T=15", "T=16", "T=17", "T=31",
                                   "T=32", "T=33", "T=64", "T=129", "T=1024"};

static const tr_axis group_axes[] = {
    {"T", gt_v, NV(gt_v), 0, 0}, REG_TOPK_INIT, REG_EXPERTS_INIT, REG_ROUTING_INIT,
};
static const tr_axis group_axes_valid[] = {
    {"T", gt_v, NV(gt_v), 0, 0}, REG_TOPK_INIT, REG_EXPERTS_INIT, REG_ROUTING_VALID_INIT,
};

static int group_valid(const tr_params *p)
{
    const char *r = tr_params_str(p, "routing");
    int64_t k = tr_params_int(p, "k", 1), E = tr_params_int(p, "E", 1);
    if (r && !strcmp(r, "max_k"))
        return k == E;
    if (r && (!strcmp(r, "one_expert") || !strcmp(r, "ragged")))
        return 1;
    return k <= E;
}

/* ids [T][k] I32 and probs [T][k] F32. */
static int make_routed(const tr_case *c, tr_bufs *in, tr_error *err)
{
    uint32_t T = pint(c, "T", 1), k = pint(c, "k", 1), E = pint(c, "E", 1);
    uint64_t rs[2] = {T, k};
    tr_buf *ids = tr_bufs_add(in, "ids", TR_ROLE_INPUT, TR_DT_I32, 2, rs);
    tr_buf *probs = ids ? tr_bufs_add(in, "probs", TR_ROLE_INPUT, TR_DT_F32, 2, rs) : NULL;
    if (!probs)
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    int rr = reg_make_routing(c, "ids", pstr(c, "routing", "uniform"), T, k, E, (int32_t *)(void *)ids->data);
    if (rr != TR_OK)
        return tr_fail(err, rr, c->id, rr == TR_E_NOMEM ? "out of memory" : "unknown routing");
    reg_make_probs(c, "probs", T, k, 0, (float *)(void *)probs->data);
    return TR_OK;
}

static int add_out(tr_bufs *out, const char *name, tr_dtype dt, uint64_t n, const tr_case *c, tr_error *err)
{
    uint64_t s[1] = {n};
    return tr_bufs_add(out, name, TR_ROLE_OUTPUT, dt, 1, s) ? TR_OK : tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
}

static const tr_variant group_variants[] = {REG_VARIANTS_REF_CPU(TR_CLASS_EXACT)};

/* Declared domains of the grouping kernels (KERNELS.md §4.10): valid ids only (the error paths are the reference's),
 * E <= 256 where the table says so. */
static int grp_valid_ids(const tr_case *c, char *why, size_t cap)
{
    if (tr_params_is(&c->params, "routing", "invalid"))
        return reg_dom_why(why, cap, "valid ids (routing=invalid is a ref/cpu error path)");
    return 1;
}

static int grp_e256(const tr_case *c, char *why, size_t cap)
{
    if (tr_params_int(&c->params, "E", 1) > 256)
        return reg_dom_why(why, cap, "E<=256");
    return grp_valid_ids(c, why, cap);
}

#define GRP(sym, binding, launch, dom, text) REG_METAL(sym, sym, 0, TR_CLASS_EXACT, "", binding, launch, dom, text, 0, 0)
static const tr_variant count_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_EXACT),
    GRP("moe_count_tokens_per_expert", "GRP_COUNT", "N256", grp_e256, "E<=256; counts zero-filled"),
    GRP("moe_count_experts_atomic", "GRP_COUNT", "N256", grp_e256, "E<=256; counts zero-filled"),
    GRP("moe_compute_expert_counts", "GRP_COUNT", "N256", grp_valid_ids, "any E; counts zero-filled"),
};
static const tr_variant offsets_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_EXACT),
    GRP("moe_compute_offsets", "GRP_OFFSETS", "ONE256", NULL, ""),
    GRP("moe_compute_expert_offsets", "GRP_OFFSETS", "ONE256", grp_e256, "one TG of 256, E<=256"),
    GRP("moe_compute_expert_offsets_sequential", "GRP_OFFSETS", "ONE256", NULL, ""),
    GRP("moe_prefix_sum_offsets", "GRP_OFFSETS", "ONE256", NULL, ""),
};
static const tr_variant scatter_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_EXACT),
    GRP("moe_scatter_tokens_to_experts", "GRP_SCATTER_T", "E256", grp_e256, "token view; E<=256"),
    GRP("moe_scatter_indices", "GRP_SCATTER", "E256", grp_e256, "flat view; E<=256"),
};
static const tr_variant validate_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_EXACT),
    GRP("expert_indices_validate", "GRP_VALIDATE", "N256", NULL, "in place, replacement 0"),
};

/* moe_count */
static int count_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    int rc = make_routed(c, in, err);
    return rc == TR_OK ? add_out(out, "counts", TR_DT_U32, pint(c, "E", 1), c, err) : rc;
}

static int count_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    (void)be;
    return tr_ref_moe_count(cdata(in, "ids"), pint(c, "T", 1), pint(c, "k", 1), pint(c, "E", 1),
                            odata(out, "counts"), err);
}

const tr_opdef reg_op_moe_count = {
    "moe_count", group_axes, NV(group_axes), TR_CLASS_EXACT, count_variants, NV(count_variants), NULL, 0, NULL, 0,
    group_valid, count_make, count_run, NULL, NULL, 0,
};

/* moe_offsets: counts of a routing in, offsets [E+1] out */
static int offsets_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    int rc = make_routed(c, in, err);
    uint32_t E = pint(c, "E", 1);
    uint64_t es[1] = {E};
    tr_buf *counts = rc == TR_OK ? tr_bufs_add(in, "counts", TR_ROLE_INPUT, TR_DT_U32, 1, es) : NULL;
    if (rc == TR_OK && !counts)
        rc = tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    if (rc == TR_OK)
        rc = tr_ref_moe_count(cdata(in, "ids"), pint(c, "T", 1), pint(c, "k", 1), E, (uint32_t *)(void *)counts->data,
                              err);
    return rc == TR_OK ? add_out(out, "offsets", TR_DT_U32, (uint64_t)E + 1, c, err) : rc;
}

static int offsets_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    (void)be;
    (void)err;
    tr_ref_moe_offsets(cdata(in, "counts"), pint(c, "E", 1), odata(out, "offsets"));
    return TR_OK;
}

const tr_opdef reg_op_moe_offsets = {
    "moe_offsets", group_axes_valid, NV(group_axes_valid), TR_CLASS_EXACT, offsets_variants, NV(offsets_variants), NULL,
    0, NULL, 0, group_valid, offsets_make, offsets_run, NULL, NULL, 0,
};

/* moe_scatter: ids, probs and the offsets of the ids in; the stable counting sort out */
static int scatter_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    int rc = make_routed(c, in, err);
    uint32_t T = pint(c, "T", 1), k = pint(c, "k", 1), E = pint(c, "E", 1);
    uint64_t os[1] = {(uint64_t)E + 1}, N = (uint64_t)T * k;
    tr_buf *off = rc == TR_OK ? tr_bufs_add(in, "offsets", TR_ROLE_INPUT, TR_DT_U32, 1, os) : NULL;
    uint32_t *counts = tr_malloc(((size_t)E + 1) * sizeof *counts);
    if (rc == TR_OK && (!off || !counts))
        rc = tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    if (rc == TR_OK) {   /* invalid ids leave offsets zero: the op must report the ids first */
        tr_error ignore;
        if (tr_ref_moe_count(cdata(in, "ids"), T, k, E, counts, &ignore) == TR_OK)
            tr_ref_moe_offsets(counts, E, (uint32_t *)(void *)off->data);
    }
    tr_dealloc(counts);
    if (rc == TR_OK)
        rc = add_out(out, "sorted_token_ids", TR_DT_U32, N, c, err);
    if (rc == TR_OK)
        rc = add_out(out, "sorted_probs", TR_DT_F32, N, c, err);
    if (rc == TR_OK)
        rc = add_out(out, "inverse", TR_DT_U32, N, c, err);
    return rc;
}

/* Variants that output the token (f/k) instead of the flat index are compared on that view (KERNELS.md §4.10). */
static int scatter_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    (void)be;
    uint32_t k = pint(c, "k", 1), N = pint(c, "T", 1) * k, *sorted = odata(out, "sorted_token_ids");
    int rc = tr_ref_moe_scatter(cdata(in, "ids"), cdata(in, "probs"), pint(c, "T", 1), k, pint(c, "E", 1),
                                cdata(in, "offsets"), sorted, odata(out, "sorted_probs"), odata(out, "inverse"), err);
    if (rc == TR_OK && c->variant->binding && !strcmp(c->variant->binding, "GRP_SCATTER_T"))
        for (uint32_t r = 0; r < N; r++)
            sorted[r] /= k;
    return rc;
}

const tr_opdef reg_op_moe_scatter = {
    "moe_scatter", group_axes, NV(group_axes), TR_CLASS_EXACT, scatter_variants, NV(scatter_variants), NULL, 0, NULL,
    0,
    group_valid, scatter_make, scatter_run, NULL, NULL, 0,
};

/* moe_group: the composition (MOE.md §3) */
static int mgroup_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    int rc = make_routed(c, in, err);
    uint64_t N = (uint64_t)pint(c, "T", 1) * pint(c, "k", 1);
    if (rc == TR_OK)
        rc = add_out(out, "sorted_token_ids", TR_DT_U32, N, c, err);
    if (rc == TR_OK)
        rc = add_out(out, "expert_offsets", TR_DT_U32, (uint64_t)pint(c, "E", 1) + 1, c, err);
    if (rc == TR_OK)
        rc = add_out(out, "sorted_probs", TR_DT_F32, N, c, err);
    if (rc == TR_OK)
        rc = add_out(out, "inverse", TR_DT_U32, N, c, err);
    return rc;
}

static int mgroup_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    tr_grouping g = {0, 0, 0, 0, odata(out, "sorted_token_ids"), odata(out, "expert_offsets"),
                     odata(out, "sorted_probs"), odata(out, "inverse")};
    return tr_be_moe_group(be, cdata(in, "ids"), cdata(in, "probs"), pint(c, "T", 1), pint(c, "k", 1),
                           pint(c, "E", 1), &g, err);
}

const tr_opdef reg_op_moe_group = {
    "moe_group", group_axes, NV(group_axes), TR_CLASS_EXACT, group_variants, NV(group_variants), NULL, 0, NULL, 0,
    group_valid, mgroup_make, mgroup_run, NULL, NULL, 0,
};

/* validate_expert_ids: replacement 0 */
static int validate_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    int rc = make_routed(c, in, err);
    return rc == TR_OK ? add_out(out, "ids_out", TR_DT_I32, (uint64_t)pint(c, "T", 1) * pint(c, "k", 1), c, err)
                       : rc;
}

static int validate_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    (void)be;
    return tr_ref_validate_expert_ids(cdata(in, "ids"), pint(c, "T", 1) * pint(c, "k", 1), pint(c, "E", 1), 0,
                                      odata(out, "ids_out"), err);
}

const tr_opdef reg_op_validate_expert_ids = {
    "validate_expert_ids", group_axes, NV(group_axes), TR_CLASS_EXACT, validate_variants, NV(validate_variants), NULL,
    0,
    NULL, 0, group_valid, validate_make, validate_run, NULL, NULL, 0,
};

/* ---- moe_gather ------------------------------------------------------------------------------------------------- */

static const char *const gh_v[] = {"H=1", "H=7", "H=64", "H=2048"};
static const char *const ct_v[] = {"T=1", "T=2", "T=5", "T=17", "T=129"};
static const char *const ck_v[] = {"k=1", "k=2", "k=3", "k=4", "k=5", "k=6", "k=7", "k=8"};
static const tr_axis gather_axes[] = {
    {"T", ct_v, NV(ct_v), 0, 0}, {"TOP_K", ck_v, NV(ck_v), 0, 0}, {"H", gh_v, NV(gh_v), 0, 0},
};
static int gather_t1(const tr_case *c, char *why, size_t cap)
{
    if (tr_params_int(&c->params, "T", 1) != 1)
        return reg_dom_why(why, cap, "T=1 (the row repeated k times)");
    return 1;
}

static const tr_variant gather_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_EXACT),
    REG_METAL("moe_gather_for_experts", "moe_gather_for_experts", 0, TR_CLASS_EXACT, "", "GATHER", "GATHER", NULL, "",
              0, 0),
    REG_METAL("moe_gather_for_experts_vec4", "moe_gather_for_experts_vec4", 0, TR_CLASS_EXACT, "", "GATHER", "GATHER",
              NULL, "", 0, 0),
    REG_METAL("moe_gather_vec8", "moe_gather_vec8", 0, TR_CLASS_EXACT, "", "GATHER", "GATHER", NULL, "", 0, 0),
    REG_METAL("moe_gather_vec8_prefetch", "moe_gather_vec8_prefetch", 0, TR_CLASS_EXACT, "", "GATHER", "GATHER", NULL,
              "", 0, 0),
    REG_METAL("moe_gather_single_token_simd", "moe_gather_single_token_simd", 0, TR_CLASS_EXACT, "", "GATHER1",
              "GATHER", gather_t1, "T=1", 0, 0),
};

/* x f16 [T][H]; tokens = the token view of a uniform routing over 8 experts (k <= 8). */
static int gather_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    uint32_t T = pint(c, "T", 1), k = pint(c, "k", 1), H = pint(c, "H", 1), N = T * k;
    uint64_t xs[2] = {T, H}, ns[1] = {N}, os[2] = {N, H};
    tr_buf *x = tr_bufs_add(in, "x", TR_ROLE_INPUT, TR_DT_F16, 2, xs);
    tr_buf *tok = x ? tr_bufs_add(in, "tokens", TR_ROLE_INPUT, TR_DT_U32, 1, ns) : NULL;
    int32_t *ids = tr_malloc((size_t)N * sizeof *ids + 1);
    uint32_t *sorted = tr_malloc((size_t)N * sizeof *sorted + 1), *inv = tr_malloc((size_t)N * sizeof *inv + 1);
    uint32_t off[9];
    float *probs = tr_calloc((size_t)N + 1, sizeof *probs), *sp = tr_malloc((size_t)N * sizeof *sp + 1);
    int rc = tok && ids && sorted && inv && probs && sp ? TR_OK : tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    if (rc == TR_OK) {
        reg_fill(c, x, "normal", 1.0);
        tr_grouping g = {0, 0, 0, 0, sorted, off, sp, inv};
        if (reg_make_routing(c, "ids", "uniform", T, k, 8, ids) != TR_OK)   /* ids would stay uninitialised */
            rc = tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
        else
            rc = tr_ref_moe_group(ids, probs, T, k, 8, &g, err);
        for (uint32_t r = 0; rc == TR_OK && r < N; r++)
            ((uint32_t *)(void *)tok->data)[r] = sorted[r] / k;
    }
    if (rc == TR_OK && !tr_bufs_add(out, "rows", TR_ROLE_OUTPUT, TR_DT_F16, 2, os))
        rc = tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    tr_dealloc(ids);
    tr_dealloc(sorted);
    tr_dealloc(inv);
    tr_dealloc(probs);
    tr_dealloc(sp);
    return rc;
}

static int gather_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    (void)be;
    const tr_buf *x = tr_bufs_get(in, "x"), *tok = tr_bufs_get(in, "tokens");
    return tr_ref_moe_gather(x->data, (uint32_t)x->shape[0], (size_t)x->shape[1] * 2, cdata(in, "tokens"),
                             (uint32_t)tok->shape[0], odata(out, "rows"), err);
    (void)c;
}

const tr_opdef reg_op_moe_gather = {
    "moe_gather", gather_axes, NV(gather_axes), TR_CLASS_EXACT, gather_variants, NV(gather_variants), NULL, 0, NULL,
    0, NULL, gather_make, gather_run, NULL, NULL, 0,
};

/* ---- moe_combine --------------------------------------------------------------------------------------------------- */

static const char *const shared_v[] = {"shared=0", "shared=1"};
static const char *const resid_v[] = {"residual=0", "residual=1"};
static const char *const cw_v[] = {"weights=softmax", "weights=zero", "weights=negative"};
static const tr_axis combine_axes[] = {
    {"T", ct_v, NV(ct_v), 0, 0}, {"TOP_K", ck_v, NV(ck_v), 0, 0}, {"H", gh_v, NV(gh_v), 0, 0},
    {"shared", shared_v, 2, 0, 0}, {"residual", resid_v, 2, 0, 0}, {"weights", cw_v, 3, 0, 0}, REG_ACC_INIT,
};
static const tr_variant combine_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_ORDERED),
    REG_METAL("moe_combine_weighted", "moe_combine_weighted", 1, TR_CLASS_TOLERANT, "H16", "COMBINE", "COMBINE",
              reg_dom_acc, "acc=f16", 0, 0),
    REG_METAL("moe_combine_fp32_acc", "moe_combine_fp32_acc", 0, TR_CLASS_TOLERANT, "", "COMBINE", "COMBINE",
              reg_dom_acc, "acc=f32", 0, 0),
};

static int combine_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    uint32_t T = pint(c, "T", 1), k = pint(c, "k", 1), H = pint(c, "H", 1);
    int f16 = tr_case_acc_f16(c);
    uint64_t ys[3] = {T, k, H}, ws[2] = {T, k}, hs[2] = {T, H};
    tr_buf *y = tr_bufs_add(in, "y", TR_ROLE_INPUT, f16 ? TR_DT_F16 : TR_DT_F32, 3, ys);
    tr_buf *w = y ? tr_bufs_add(in, "w", TR_ROLE_INPUT, f16 ? TR_DT_F16 : TR_DT_F32, 2, ws) : NULL;
    if (!w)
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    reg_fill(c, y, "normal", 1.0);
    const char *wk = pstr(c, "weights", "softmax");
    float *p = tr_malloc((size_t)T * k * sizeof *p + 4);
    if (!p)
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    reg_make_probs(c, "w", T, k, f16, p);
    for (uint64_t i = 0; i < (uint64_t)T * k; i++)
        reg_set(w, i, !strcmp(wk, "zero") ? 0.0 : !strcmp(wk, "negative") ? -p[i] : p[i]);
    tr_dealloc(p);
    static const char *const extra[2] = {"shared", "residual"};
    for (int q = 0; q < 2; q++)
        if (tr_params_int(&c->params, extra[q], 0)) {
            tr_buf *b = tr_bufs_add(in, extra[q], TR_ROLE_INPUT, f16 ? TR_DT_F16 : TR_DT_F32, 2, hs);
            if (!b)
                return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
            reg_fill(c, b, "normal", 1.0);
        }
    if (!tr_bufs_add(out, "out", TR_ROLE_OUTPUT, f16 ? TR_DT_F16 : TR_DT_F32, 2, hs))
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    return TR_OK;
}

static float *widen_opt(const tr_bufs *in, const char *name)
{
    const tr_buf *b = tr_bufs_get(in, name);
    if (!b)
        return NULL;
    uint64_t n = tr_buf_numel(b);
    float *f = tr_malloc((size_t)n * sizeof *f + 4);
    for (uint64_t i = 0; f && i < n; i++)
        f[i] = (float)reg_get(b, i);
    return f;
}

static int combine_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    (void)be;
    float *y = widen_opt(in, "y"), *w = widen_opt(in, "w"), *s = widen_opt(in, "shared"), *r = widen_opt(in, "residual");
    int rc = y && w ? TR_OK : tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    if (rc == TR_OK)
        tr_ref_moe_combine(y, w, s, r, pint(c, "T", 1), pint(c, "k", 1), pint(c, "H", 1),
                           tr_case_acc_f16(c) ? TR_ACC_F16 : TR_ACC_F32, odata(out, "out"));
    tr_dealloc(y);
    tr_dealloc(w);
    tr_dealloc(s);
    tr_dealloc(r);
    return rc;
}

/* Weighted combine bound (KERNELS.md §2.3) with exact inputs (Ey = 0), a = number of addends. */
static int combine_bound(const tr_case *c, const tr_bufs *in, const tr_bufs *canon, int k, double **hi, double **B,
                         double **P, tr_error *err)
{
    uint32_t T = pint(c, "T", 1), K = pint(c, "k", 1), H = pint(c, "H", 1);
    const tr_buf *y = tr_bufs_get(in, "y"), *w = tr_bufs_get(in, "w");
    const tr_buf *s = tr_bufs_get(in, "shared"), *r = tr_bufs_get(in, "residual");
    int a = (s != NULL) + (r != NULL), f16 = tr_case_acc_f16(c);
    double u = f16 ? ldexp(1.0, -11) : ldexp(1.0, -24);
    int rc = reg_bound_alloc(tr_buf_numel(canon->v[k]), hi, B, P, err);
    for (uint32_t t = 0; rc == TR_OK && t < T; t++)
        for (uint32_t n = 0; n < H; n++) {
            double sum = 0, abs_terms = 0, add = 0;
            for (uint32_t j = 0; j < K; j++) {
                double p = reg_get(w, (uint64_t)t * K + j), v = reg_get(y, ((uint64_t)t * K + j) * H + n);
                sum += p * v;
                abs_terms += fabs(p * v);
            }
            if (s)
                add += fabs(reg_get(s, (uint64_t)t * H + n)), sum += reg_get(s, (uint64_t)t * H + n);
            if (r)
                add += fabs(reg_get(r, (uint64_t)t * H + n)), sum += reg_get(r, (uint64_t)t * H + n);
            size_t o = (size_t)t * H + n;
            double eta = (K + a) * (f16 ? ldexp(1.0, -25) : ldexp(1.0, -150));
            (*hi)[o] = sum;
            (*B)[o] = u * abs_terms + tr_gamma(K + a, u) * (abs_terms + add) + eta;
            (*P)[o] = u * abs_terms + sqrt((double)(K + a)) * u * (abs_terms + add) + eta;
            if (f16) {
                (*B)[o] += tr_half_ulp_f16(fabs(sum) + (*B)[o]);
                (*P)[o] += tr_half_ulp_f16(fabs(sum) + (*P)[o]);
            }
        }
    return rc;
}

const tr_opdef reg_op_moe_combine = {
    "moe_combine", combine_axes, NV(combine_axes), TR_CLASS_ORDERED, combine_variants, NV(combine_variants), NULL, 0,
    NULL, 0, NULL, combine_make, combine_run, combine_bound, NULL, 0,
};

/* ---- cast_f16 ----------------------------------------------------------------------------------------------------- */

static const char *const cn_v[] = {"n=1", "n=7", "n=64", "n=1000"};
static const tr_axis cast_axes[] = {{"n", cn_v, NV(cn_v), 0, 0}, REG_VALUES_INIT};
static const tr_variant cast_variants[] = {
    REG_VARIANTS_REF_CPU(TR_CLASS_EXACT),
    REG_METAL("expert_scatter_add_finalize", "expert_scatter_add_finalize", 0, TR_CLASS_EXACT, "", "CAST", "N256",
              NULL, "", 0, 0),
    REG_METAL("moe_combine_finalize", "moe_combine_finalize", 0, TR_CLASS_EXACT, "", "CAST", "N256", NULL, "", 0, 0),
    REG_METAL("moe_finalize_output", "moe_finalize_output", 0, TR_CLASS_EXACT, "", "CAST", "N256", NULL, "", 0, 0),
};

static int cast_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    uint64_t n[1] = {pint(c, "n", 1)};
    tr_buf *x = tr_bufs_add(in, "x", TR_ROLE_INPUT, TR_DT_F32, 1, n);
    if (!x || !tr_bufs_add(out, "out", TR_ROLE_OUTPUT, TR_DT_F16, 1, n))
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    const char *v = pstr(c, "values", "normal");
    if (reg_fill(c, x, v, 1.0) != TR_OK)
        return tr_fail(err, TR_E_INVALID_PARAM, c->id, "unknown value distribution");
    if (!strcmp(v, "large"))   /* f32 'large' reaches f16 overflow: the EXACT op tests it */
        reg_scale_pow2(x, -10);
    return TR_OK;
}

static int cast_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    (void)be;
    (void)err;
    tr_ref_cast_f16(cdata(in, "x"), pint(c, "n", 1), odata(out, "out"));
    return TR_OK;
}

const tr_opdef reg_op_cast_f16 = {
    "cast_f16", cast_axes, NV(cast_axes), TR_CLASS_EXACT, cast_variants, NV(cast_variants), NULL, 0, NULL, 0, NULL,
    cast_make, cast_run, NULL, NULL, 0,
};

/* ---- codebook_decode, bitshift_states -------------------------------------------------------------------------- */

static const char *const cbmode_v[] = {"mode=3inst", "mode=mcg", "mode=mul1"};
static const tr_axis cb_axes[] = {{"mode", cbmode_v, 3, 0, 0}};
static const tr_variant refcpu_exact[] = {REG_VARIANTS_REF_CPU(TR_CLASS_EXACT)};

static int cb_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    uint64_t n[1] = {65536};
    tr_buf *s = tr_bufs_add(in, "states", TR_ROLE_INPUT, TR_DT_U16, 1, n);
    if (!s || !tr_bufs_add(out, "values", TR_ROLE_OUTPUT, TR_DT_F16, 1, n))
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    for (uint32_t i = 0; i < 65536; i++)
        ((uint16_t *)(void *)s->data)[i] = (uint16_t)i;
    return TR_OK;
}

static int cb_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    (void)be;
    tr_exl3_cb cb;
    if (tr_exl3_cb_parse(pstr(c, "mode", "3inst"), &cb) != 0)
        return tr_fail(err, TR_E_INVALID_PARAM, c->id, "unknown codebook");
    const tr_buf *s = tr_bufs_get(in, "states");
    for (uint64_t i = 0; i < tr_buf_numel(s); i++)
        ((uint16_t *)odata(out, "values"))[i] = tr_exl3_decode(cb, ((const uint16_t *)(const void *)s->data)[i]);
    return TR_OK;
}

const tr_opdef reg_op_codebook_decode = {
    "codebook_decode", cb_axes, 1, TR_CLASS_EXACT, refcpu_exact, 2, NULL, 0, NULL, 0, NULL, cb_make, cb_run, NULL,
    NULL, 0,
};

static const char *const bsb_v[] = {"b=1", "b=2", "b=3", "b=4", "b=5", "b=6", "b=7", "b=8"};
static const char *const bsc_v[] = {"codes=uniform", "codes=zeros", "codes=ones", "codes=alternating"};
static const tr_axis bs_axes[] = {{"b", bsb_v, 8, 0, 0}, {"codes", bsc_v, 4, 0, 0}};

static int bs_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    unsigned b = pint(c, "b", 1);
    uint64_t tb[1] = {32 * (uint64_t)b}, ns[1] = {256};
    tr_buf *t = tr_bufs_add(in, "tile", TR_ROLE_INPUT, TR_DT_U8, 1, tb);
    if (!t || !tr_bufs_add(out, "states", TR_ROLE_OUTPUT, TR_DT_U16, 1, ns))
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    uint8_t codes[256];
    tr_rng r;
    reg_stream(c, "tile", &r);
    const char *k = pstr(c, "codes", "uniform");
    for (int e = 0; e < 256; e++)
        codes[e] = (uint8_t)(!strcmp(k, "zeros") ? 0 : !strcmp(k, "ones") ? (1u << b) - 1
                             : !strcmp(k, "alternating") ? (e % 2 ? (1u << b) - 1 : 0)
                                                          : (unsigned)tr_rng_int(&r, 0, (1 << b) - 1));
    tr_exl3_pack_codes(codes, b, t->data);
    return TR_OK;
}

static int bs_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    (void)be;
    (void)err;
    tr_exl3_tile_states(cdata(in, "tile"), pint(c, "b", 1), odata(out, "states"));
    return TR_OK;
}

const tr_opdef reg_op_bitshift_states = {
    "bitshift_states", bs_axes, 2, TR_CLASS_EXACT, refcpu_exact, 2, NULL, 0, NULL, 0, NULL, bs_make, bs_run, NULL,
    NULL, 0,
};

/* ---- nan_scan ------------------------------------------------------------------------------------------------------ */

static const char *const ns_dt_v[] = {"dtype=f32", "dtype=f16"};
static const tr_axis ns_axes[] = {{"dtype", ns_dt_v, 2, 0, 0}, {"n", cn_v, NV(cn_v), 0, 0}, REG_VALUES_INIT};

static int ns_make(const tr_case *c, tr_bufs *in, tr_bufs *out, tr_error *err)
{
    uint64_t n[1] = {pint(c, "n", 1)}, five[1] = {5};
    tr_buf *x = tr_bufs_add(in, "x", TR_ROLE_INPUT, tr_params_is(&c->params, "dtype", "f16") ? TR_DT_F16 : TR_DT_F32,
                            1, n);
    if (!x || !tr_bufs_add(out, "scan", TR_ROLE_OUTPUT, TR_DT_I64, 1, five))
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    if (reg_fill(c, x, pstr(c, "values", "normal"), 1.0) != TR_OK)
        return tr_fail(err, TR_E_INVALID_PARAM, c->id, "unknown value distribution");
    return TR_OK;
}

static int ns_run(const tr_case *c, tr_backend *be, const tr_bufs *in, tr_bufs *out, tr_error *err)
{
    (void)be;
    (void)err;
    const tr_buf *x = tr_bufs_get(in, "x");
    tr_nan_scan s;
    if (x->dtype == TR_DT_F16)
        tr_ref_nan_scan_f16((const uint16_t *)(const void *)x->data, tr_buf_numel(x), &s);
    else
        tr_ref_nan_scan_f32((const float *)(const void *)x->data, tr_buf_numel(x), &s);
    int64_t v[5] = {(int64_t)s.nan_count, (int64_t)s.pos_inf_count, (int64_t)s.neg_inf_count, s.first_index,
                    (int64_t)s.first_kind};
    memcpy(odata(out, "scan"), v, sizeof v);
    (void)c;
    return TR_OK;
}

const tr_opdef reg_op_nan_scan = {
    "nan_scan", ns_axes, 3, TR_CLASS_EXACT, refcpu_exact, 2, NULL, 0, NULL, 0, NULL, ns_make, ns_run, NULL, NULL, 0,
};
