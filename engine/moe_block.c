/*
 * moe_block.c — the FFN half of a decoder layer (ENGINE.md §3, MOE.md §1–§4, §7): dense SwiGLU FFN, or the MoE
 * block — router logits, selection (router_topk), routing margins for the trace, grouping ("fairway") through the
 * dispatcher with its counters, the per-bit-tuple dispatch plan (quantized experts; the hot path), per-row expert
 * evaluation with every NaN-guard stage scanned, the shared expert, and the slot-order combine.
 *
 * Results never depend on grouping or plan order: every expert row's output y_f is kept per flat index f = t·k + j
 * and the combine sums RN32(w_j·y_j) in slot order (MOE.md §2, §4.4).
 */
#include "engine_internal.h"
#include "trellis/alloc.h"
#include "trellis/fp16.h"
#include "trellis/numeric.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- per-row expert evaluation --------------------------------------------------------------------------------- */

/* Scan a [n][cols] stage tensor of expert rows: one scan per row when rows name different tokens/slots. */
static int scan_rows(tr_session *s, tr_nan_site site, uint32_t l, const tr_ffn_rows *who, float *v, uint32_t n,
                     uint32_t cols, tr_error *err)
{
    if (s->o.nan_policy == TR_NAN_OFF)
        return TR_OK;
    tr_nan_where w = {site, (int32_t)l, 0, who->slot_all, who->expert, who->tuple};
    if (!who->tokens && !who->slots)
        return tr_nan_guard_scan_f32(s->guard, &w, v, n, cols, err);
    for (uint32_t r = 0; r < n; r++) {
        w.first_token = who->tokens ? who->tokens[r] : r;
        w.slot = who->slots ? who->slots[r] : who->slot_all;
        int rc = tr_nan_guard_scan_f32(s->guard, &w, v + (size_t)r * cols, 1, cols, err);
        if (rc != TR_OK)
            return rc;
    }
    return TR_OK;
}

/* g = W_gate·a, u = W_up·a, s = fl32(silu(g)·u), y = W_down·s per row (MOE.md §2): the stages of expert_ffn in its
 * canonical f32 mode, each through the backend's linear so that every stage can be scanned (MOE.md §7.5). */
int tr_eng_ffn_rows(tr_session *s, uint32_t l, const tr_ffn *f, const float *A, uint32_t n, const tr_ffn_rows *who,
                    float *Y, tr_error *err)
{
    const uint32_t F = f->gate.O, D = f->gate.I;
    float *buf = tr_malloc((size_t)3 * n * F * sizeof *buf);
    if (!buf)
        return tr_fail(err, TR_E_NOMEM, f->gate.name, "cannot allocate %u x %u activations", n, F);
    float *g = buf, *u = buf + (size_t)n * F, *sw = buf + (size_t)2 * n * F;
    int rc = tr_eng_linear(s, &f->gate, A, n, g, err);
    if (rc == TR_OK)
        rc = scan_rows(s, TR_NAN_SITE_GATE, l, who, g, n, F, err);
    if (rc == TR_OK)
        rc = tr_eng_linear(s, &f->up, A, n, u, err);
    if (rc == TR_OK)
        rc = scan_rows(s, TR_NAN_SITE_UP, l, who, u, n, F, err);
    if (rc == TR_OK) {
        for (size_t i = 0; i < (size_t)n * F; i++)
            sw[i] = tr_silu(g[i]) * u[i];
        rc = scan_rows(s, TR_NAN_SITE_SWIGLU, l, who, sw, n, F, err);
    }
    if (rc == TR_OK)
        rc = tr_eng_linear(s, &f->down, sw, n, Y, err);
    if (rc == TR_OK)
        rc = scan_rows(s, TR_NAN_SITE_DOWN, l, who, Y, n, D, err);
    tr_dealloc(buf);
    return rc;
}

/* ---- routing margins --------------------------------------------------------------------------------------------- */

typedef struct scored {
    float v;
    uint32_t i;
} scored;

/* Comparator C of MOE.md §1.3: higher first, ties by lower index, NaN after everything. */
static int by_c_order(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    int xn = isnan(x->v), yn = isnan(y->v);
    if (xn != yn)
        return xn - yn;
    if (!xn && x->v != y->v)
        return x->v > y->v ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

/* Selection scores of one token (sel for noaux_tc, P for the softmax modes), MOE.md §1.4–§1.6. */
static void selection_scores(const tr_session *s, const float *bias, const float *lg, float *sc)
{
    const uint32_t E = s->rcfg.E;
    if (s->rcfg.mode == TR_ROUTER_NOAUX_TC) {
        for (uint32_t e = 0; e < E; e++) {
            float sg = tr_sigmoid(lg[e]);
            sc[e] = sg + (bias ? bias[e] : 0.0f);
        }
        return;
    }
    const int f16 = s->rcfg.mode == TR_ROUTER_SOFTMAX_TOPK_F16;
    float m = NAN, sum = 0.0f;
    for (uint32_t e = 0; e < E; e++) {
        float v = f16 ? tr_f16_to_f32(tr_f32_to_f16(lg[e])) : lg[e];
        if (!isnan(v) && (isnan(m) || v > m))
            m = v;
    }
    for (uint32_t e = 0; e < E; e++) {
        float v = f16 ? tr_f16_to_f32(tr_f32_to_f16(lg[e])) : lg[e];
        sc[e] = tr_expf(v - m);
        sum = sum + sc[e];
    }
    for (uint32_t e = 0; e < E; e++) {
        float p = sc[e] / sum;
        sc[e] = f16 ? tr_f16_to_f32(tr_f32_to_f16(p)) : p;
    }
}

/* margin = k-th minus (k+1)-th selection score among the experts the group limit keeps (+inf if none);
 * group_margin = topk_group-th minus the next group score (NAN without groups). */
static void route_margins(const tr_session *s, const float *sc, scored *tmp, scored *grp, double *margin,
                          double *gmargin)
{
    const tr_router_cfg *r = &s->rcfg;
    const uint32_t E = r->E, k = r->k;
    uint32_t n = 0;
    *gmargin = NAN;
    if (r->mode == TR_ROUTER_NOAUX_TC && r->n_group > 1) {
        const uint32_t Gs = E / r->n_group;
        const uint32_t ng = r->n_group;
        for (uint32_t q = 0; q < ng; q++) {
            for (uint32_t j = 0; j < Gs; j++)
                tmp[j] = (scored){sc[q * Gs + j], j};
            qsort(tmp, Gs, sizeof *tmp, by_c_order);
            grp[q] = (scored){tmp[0].v + tmp[1].v, q};   /* top1 + top2, one RN32 add */
        }
        qsort(grp, ng, sizeof *grp, by_c_order);
        *gmargin = r->topk_group < ng ? (double)grp[r->topk_group - 1].v - grp[r->topk_group].v : INFINITY;
        for (uint32_t gi = 0; gi < r->topk_group; gi++)
            for (uint32_t j = 0; j < Gs; j++)
                tmp[n++] = (scored){sc[grp[gi].i * Gs + j], grp[gi].i * Gs + j};
    } else
        for (uint32_t e = 0; e < E; e++)
            tmp[n++] = (scored){sc[e], e};
    qsort(tmp, n, sizeof *tmp, by_c_order);
    *margin = n > k ? (double)tmp[k - 1].v - (double)tmp[k].v : INFINITY;
}

/* ---- router ------------------------------------------------------------------------------------------------------- */

static const route_override *find_override(const tr_session *s, uint32_t l, uint32_t pos)
{
    for (size_t i = 0; i < s->n_overrides; i++)
        if (s->overrides[i].layer == l && s->overrides[i].pos == pos)
            return &s->overrides[i];
    return NULL;
}

/* Forced routes: the op itself selects among exactly the forced experts, so the weights follow the mode's rule for
 * that set (group limits do not apply to a forced set). */
static int apply_overrides(tr_session *s, uint32_t l, const float *logits, uint32_t T, const float *bias,
                           int32_t *ids, float *w, uint8_t *forced, tr_error *err)
{
    tr_router_cfg one = s->rcfg;
    one.n_group = one.topk_group = 1;
    for (uint32_t t = 0; t < T; t++) {
        const route_override *ov = find_override(s, l, s->len + t);
        forced[t] = ov != NULL;
        if (!ov)
            continue;
        int rc = tr_be_router_topk(s->be, &one, logits + (size_t)t * one.E, 1, bias, ov->ids, one.k,
                                   ids + (size_t)t * one.k, w + (size_t)t * one.k, NULL, NULL, err);
        if (rc != TR_OK)
            return rc;
    }
    return TR_OK;
}

static void trace_routes(tr_session *s, uint32_t l, const float *logits, uint32_t T, const float *bias,
                         const int32_t *ids, const float *w, const uint8_t *forced, float *sc, scored *tmp,
                         scored *grp)
{
    const uint32_t E = s->rcfg.E, k = s->rcfg.k;
    for (uint32_t t = 0; t < T; t++) {
        tr_route_info ri = {l, s->len + t, k, ids + (size_t)t * k, w + (size_t)t * k, 0.0, NAN, forced[t]};
        selection_scores(s, bias, logits + (size_t)t * E, sc);
        route_margins(s, sc, tmp, grp, &ri.margin, &ri.group_margin);
        s->trace.route(s->trace.user, &ri);
    }
}

/* ---- expert dispatch ----------------------------------------------------------------------------------------------- */

/* Rows of one expert: gather A[r] = x[token(f_r)], evaluate, scatter y to Y[f_r]. */
static int run_expert(tr_session *s, uint32_t l, uint32_t e, const uint32_t *flats, uint32_t n, const float *x,
                      float *A, float *Yr, uint32_t *tok, uint32_t *slot, float *Y, tr_error *err)
{
    const uint32_t D = s->m->cfg.D, k = s->rcfg.k;
    const tr_layer *ly = &s->m->layers[l];
    tr_bit_tuple tuple;
    if (ly->tuple_map)
        tuple = tr_moe_tuple_map_tuple(ly->tuple_map, e);
    for (uint32_t r = 0; r < n; r++) {
        tok[r] = flats[r] / k;
        slot[r] = flats[r] % k;
        memcpy(A + (size_t)r * D, x + (size_t)tok[r] * D, (size_t)D * sizeof *A);
    }
    tr_ffn_rows who = {tok, slot, 0, (int32_t)e, ly->tuple_map ? &tuple : NULL};
    int rc = tr_eng_ffn_rows(s, l, &ly->experts[e], A, n, &who, Yr, err);
    for (uint32_t r = 0; rc == TR_OK && r < n; r++)
        memcpy(Y + (size_t)flats[r] * D, Yr + (size_t)r * D, (size_t)D * sizeof *Y);
    return rc;
}

typedef struct moe_bufs {
    float *A, *Yr;
    uint32_t *tok, *slot;
} moe_bufs;

/* Quantized experts: the per-bit-tuple plan (MOE.md §4.3); every entry runs on the host path here. */
static int dispatch_plan(tr_session *s, uint32_t l, const tr_grouping *g, const float *x, moe_bufs *b, float *Y,
                         tr_error *err)
{
    const tr_layer *ly = &s->m->layers[l];
    tr_moe_plan_cfg pc = {&s->sel, s->use_fp32_acc, NULL, 0, tr_session_backend_name(s)};
    tr_moe_plan *plan;
    int rc = tr_moe_plan_build(g, ly->tuple_map, &pc, s->diag, &plan, err);
    for (size_t i = 0; rc == TR_OK && i < tr_moe_plan_size(plan); i++) {
        tr_moe_plan_entry_view v;
        rc = tr_moe_plan_entry(plan, i, &v);
        for (uint32_t li = 0; rc == TR_OK && li < v.n_members; li++) {
            uint32_t a = v.local_offsets[li], n = v.local_offsets[li + 1] - a;
            if (n)
                rc = run_expert(s, l, v.members[li], v.rows + a, n, x, b->A, b->Yr, b->tok, b->slot, Y, err);
        }
    }
    tr_moe_plan_free(plan);
    return rc;
}

/* Float (or partly float) experts: the grouping's expert segments, expert by expert. */
static int dispatch_segments(tr_session *s, uint32_t l, const tr_grouping *g, const float *x, moe_bufs *b, float *Y,
                             tr_error *err)
{
    int rc = TR_OK;
    for (uint32_t e = 0; rc == TR_OK && e < g->E; e++) {
        uint32_t a = g->expert_offsets[e], n = g->expert_offsets[e + 1] - a;
        if (n)
            rc = run_expert(s, l, e, g->sorted_token_ids + a, n, x, b->A, b->Yr, b->tok, b->slot, Y, err);
    }
    return rc;
}

static int dispatch(tr_session *s, uint32_t l, const int32_t *ids, const float *w, uint32_t T, const float *x,
                    float *Y, tr_error *err)
{
    const uint32_t k = s->rcfg.k, N = T * k, D = s->m->cfg.D, F = s->m->cfg.F_e;
    tr_moe_grouping_req req = {{ids, 2, {T, k}, 0}, {w, 2, {T, k}, 0}, s->rcfg.E, s->o.grouping_mode,
                               tr_session_backend_name(s), NULL};
    tr_grouping g;
    int rc = tr_moe_dispatch_grouping(&req, s->diag, &g, NULL, err);
    if (rc != TR_OK)
        return rc;
    moe_bufs b = {tr_malloc((size_t)N * D * sizeof(float)), tr_malloc((size_t)N * D * sizeof(float)),
                  tr_malloc((size_t)N * sizeof(uint32_t)), tr_malloc((size_t)N * sizeof(uint32_t))};
    (void)F;
    if (!b.A || !b.Yr || !b.tok || !b.slot)
        rc = tr_fail(err, TR_E_NOMEM, "moe", "cannot allocate %u expert rows", N);
    else if (s->m->layers[l].experts_quantized)
        rc = dispatch_plan(s, l, &g, x, &b, Y, err);
    else
        rc = dispatch_segments(s, l, &g, x, &b, Y, err);
    tr_dealloc(b.A);
    tr_dealloc(b.Yr);
    tr_dealloc(b.tok);
    tr_dealloc(b.slot);
    tr_grouping_release(&g);
    return rc;
}

/* ---- the MoE block -------------------------------------------------------------------------------------------------- */

typedef struct moe_scratch {
    float *logits, *w, *Y, *shared, *sc;
    int32_t *ids;
    uint8_t *forced;
    scored *tmp, *grp;
} moe_scratch;

static void moe_scratch_free(moe_scratch *m)
{
    tr_dealloc(m->logits);
    tr_dealloc(m->w);
    tr_dealloc(m->Y);
    tr_dealloc(m->shared);
    tr_dealloc(m->sc);
    tr_dealloc(m->ids);
    tr_dealloc(m->forced);
    tr_dealloc(m->tmp);
    tr_dealloc(m->grp);
}

static int moe_scratch_alloc(moe_scratch *m, uint32_t T, uint32_t E, uint32_t k, uint32_t D, tr_error *err)
{
    memset(m, 0, sizeof *m);
    m->logits = tr_malloc((size_t)T * E * sizeof(float));
    m->w = tr_malloc((size_t)T * k * sizeof(float));
    m->Y = tr_calloc((size_t)T * k * D, sizeof(float));
    m->shared = tr_malloc((size_t)T * D * sizeof(float));
    m->sc = tr_malloc((size_t)E * sizeof(float));
    m->ids = tr_malloc((size_t)T * k * sizeof(int32_t));
    m->forced = tr_calloc(T, 1);
    m->tmp = tr_malloc((size_t)E * sizeof(scored));
    m->grp = tr_malloc((size_t)E * sizeof(scored));
    if (m->logits && m->w && m->Y && m->shared && m->sc && m->ids && m->forced && m->tmp && m->grp)
        return TR_OK;
    moe_scratch_free(m);
    return tr_fail(err, TR_E_NOMEM, "moe", "cannot allocate the MoE block scratch for %u tokens", T);
}

/* Router → selection (overrides, trace) → scans of logits and weights. */
static int route(tr_session *s, uint32_t l, const float *x, uint32_t T, moe_scratch *m, tr_error *err)
{
    const tr_layer *ly = &s->m->layers[l];
    const uint32_t E = s->rcfg.E, k = s->rcfg.k, D = s->m->cfg.D;
    int rc = tr_be_router_logits(s->be, x, ly->router, NULL, T, D, E, m->logits, err);
    if (rc == TR_OK)
        rc = tr_eng_scan(s, TR_NAN_SITE_ROUTER_LOGITS, (int32_t)l, 0, m->logits, T, E, err);
    const float *bias = s->rcfg.mode == TR_ROUTER_NOAUX_TC ? ly->bias : NULL;
    if (rc == TR_OK)
        rc = tr_be_router_topk(s->be, &s->rcfg, m->logits, T, bias, NULL, 0, m->ids, m->w, NULL, NULL, err);
    if (rc == TR_OK && s->n_overrides)
        rc = apply_overrides(s, l, m->logits, T, bias, m->ids, m->w, m->forced, err);
    if (rc == TR_OK && s->tracing && s->trace.route)
        trace_routes(s, l, m->logits, T, bias, m->ids, m->w, m->forced, m->sc, m->tmp, m->grp);
    if (rc == TR_OK)
        rc = tr_eng_scan(s, TR_NAN_SITE_ROUTER_WEIGHTS, (int32_t)l, 0, m->w, T, k, err);
    return rc;
}

static int shared_expert(tr_session *s, uint32_t l, const float *x, uint32_t T, float *out, tr_error *err)
{
    tr_ffn_rows who = {NULL, NULL, s->rcfg.k, (int32_t)s->rcfg.E, NULL};
    return tr_eng_ffn_rows(s, l, &s->m->layers[l].shared, x, T, &who, out, err);
}

static int moe(tr_session *s, uint32_t l, const float *x, uint32_t T, float *out, tr_error *err)
{
    const tr_layer *ly = &s->m->layers[l];
    const uint32_t E = s->rcfg.E, k = s->rcfg.k, D = s->m->cfg.D;
    moe_scratch m;
    int rc = moe_scratch_alloc(&m, T, E, k, D, err);
    if (rc != TR_OK)
        return rc;
    tr_moe_diag_begin_call(s->diag, &(tr_moe_call_info){(int32_t)l, T, k, E, ly->tuple_map});
    rc = route(s, l, x, T, &m, err);
    if (rc == TR_OK)
        rc = dispatch(s, l, m.ids, m.w, T, x, m.Y, err);
    if (rc == TR_OK && ly->has_shared)
        rc = shared_expert(s, l, x, T, m.shared, err);
    if (rc == TR_OK) {
        tr_ref_moe_combine(m.Y, m.w, ly->has_shared ? m.shared : NULL, NULL, T, k, D, TR_ACC_F32, out);
        rc = tr_eng_scan(s, TR_NAN_SITE_COMBINE, (int32_t)l, 0, out, T, D, err);
    }
    if (s->o.nan_policy != TR_NAN_OFF)
        tr_nan_guard_moe_end(s->guard);
    tr_moe_diag_end_call(s->diag, rc);
    moe_scratch_free(&m);
    return rc;
}

int tr_eng_ffn(tr_session *s, uint32_t l, const float *x, uint32_t T, float *out, tr_error *err)
{
    const tr_layer *ly = &s->m->layers[l];
    if (ly->moe)
        return moe(s, l, x, T, out, err);
    tr_ffn_rows who = {NULL, NULL, 0, -1, NULL};
    return tr_eng_ffn_rows(s, l, &ly->dense, x, T, &who, out, err);
}
