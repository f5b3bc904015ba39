/*
 * ops_route.c — reference routers (KERNELS.md §4.9, MOE.md §1), grouping ops (§4.10, MOE.md §3), gather and
 * combine (§4.11).
 *
 * Selection everywhere uses the comparator C of MOE.md §1.3: a precedes b iff score_a > score_b, or they are equal
 * and a < b; NaN ranks below -Inf and NaNs are equal; +0 equals -0.
 */
#include "trellis/ops.h"
#include "trellis/alloc.h"
#include "trellis/fp16.h"
#include "trellis/numeric.h"

#include <math.h>
#include <string.h>

/* ---- routers ------------------------------------------------------------------------------------------------------ */

const char *tr_router_mode_name(tr_router_mode m)
{
    switch (m) {
    case TR_ROUTER_SOFTMAX_TOPK: return "softmax_topk";
    case TR_ROUTER_SOFTMAX_TOPK_F16: return "softmax_topk_f16";
    case TR_ROUTER_NOAUX_TC: return "noaux_tc";
    }
    return "?";
}

int tr_router_mode_parse(const char *name, tr_router_mode *out)
{
    for (int m = 0; m <= 2; m++)
        if (strcmp(name, tr_router_mode_name((tr_router_mode)m)) == 0) {
            *out = (tr_router_mode)m;
            return 0;
        }
    return -1;
}

int tr_router_check(const tr_router_cfg *c, tr_error *err)
{
    const char *w = "router";
    if (c->mode > TR_ROUTER_NOAUX_TC)
        return tr_fail(err, TR_E_INVALID_PARAM, w, "mode %d unknown", (int)c->mode);
    if (c->E < 1 || c->E > 65535)
        return tr_fail(err, TR_E_INVALID_PARAM, w, "num_experts %u outside [1, 65535]", c->E);
    if (c->k < 1 || c->k > c->E)
        return tr_fail(err, TR_E_INVALID_PARAM, w, "top_k %u outside [1, %u]", c->k, c->E);
    if (c->mode != TR_ROUTER_NOAUX_TC && !(c->temperature > 0.0f && isfinite(c->temperature)))
        return tr_fail(err, TR_E_INVALID_PARAM, w, "temperature %g is not finite and > 0", (double)c->temperature);
    if (c->mode == TR_ROUTER_NOAUX_TC) {
        if (!(c->routed_scaling_factor > 0.0f && isfinite(c->routed_scaling_factor)))
            return tr_fail(err, TR_E_INVALID_PARAM, w, "routed_scaling_factor %g is not finite and > 0",
                           (double)c->routed_scaling_factor);
        if (c->n_group < 1 || c->E % c->n_group != 0)
            return tr_fail(err, TR_E_INVALID_PARAM, w, "n_group %u does not divide num_experts %u", c->n_group, c->E);
        if (c->n_group > 1 && c->E / c->n_group < 2)
            return tr_fail(err, TR_E_INVALID_PARAM, w, "n_group %u leaves fewer than 2 experts per group",
                           c->n_group);
        if (c->topk_group < 1 || c->topk_group > c->n_group)
            return tr_fail(err, TR_E_INVALID_PARAM, w, "topk_group %u outside [1, n_group %u]", c->topk_group,
                           c->n_group);
        if ((uint64_t)c->topk_group * (c->E / c->n_group) < c->k)
            return tr_fail(err, TR_E_INVALID_PARAM, w, "topk_group %u · %u experts per group < top_k %u",
                           c->topk_group, c->E / c->n_group, c->k);
    }
    return TR_OK;
}

/* MOE.md §1.3: does (sa, a) precede (sb, b)? */
static int precedes(float sa, uint32_t a, float sb, uint32_t b)
{
    int na = isnan(sa), nb = isnan(sb);
    if (na || nb) {
        if (na && nb)
            return a < b;
        return nb;                     /* a non-NaN precedes a NaN */
    }
    if (sa > sb)
        return 1;
    if (sa < sb)
        return 0;
    return a < b;                      /* equal (including +0 == -0) */
}

/* The first k experts of allowed[0..E) in comparator order by score; slots get ids in that order. */
static void select_k(const float *score, const uint8_t *allowed, uint32_t E, uint32_t k, int32_t *out)
{
    for (uint32_t j = 0; j < k; j++) {
        int64_t best = -1;
        for (uint32_t e = 0; e < E; e++) {
            if (!allowed[e])
                continue;
            int taken = 0;
            for (uint32_t q = 0; q < j && !taken; q++)
                taken = out[q] == (int32_t)e;
            if (taken)
                continue;
            if (best < 0 || precedes(score[e], e, score[best], (uint32_t)best))
                best = e;
        }
        out[j] = (int32_t)best;
    }
}

/* Candidate list of token t -> allowed mask (distinct ids in [0, E), at least k). */
static int candidates_mask(const int32_t *cand, uint32_t C, uint32_t E, uint32_t k, uint32_t t, uint8_t *allowed,
                           tr_error *err)
{
    memset(allowed, 0, E);
    uint32_t n = 0;
    for (uint32_t c = 0; c < C; c++) {
        int32_t id = cand[(size_t)t * C + c];
        if (id < 0 || (uint32_t)id >= E)
            return tr_fail(err, TR_E_INVALID_EXPERT_ID, "router_topk", "candidate %u of token %u is %d, outside [0, %u)",
                           c, t, id, E);
        if (allowed[id])
            return tr_fail(err, TR_E_INVALID_PARAM, "router_topk", "candidate %d of token %u is listed twice", id, t);
        allowed[id] = 1;
        n++;
    }
    if (n < k)
        return tr_fail(err, TR_E_INVALID_PARAM, "router_topk", "token %u has %u candidates, fewer than top_k %u", t, n,
                       k);
    return TR_OK;
}

/* softmax_topk (MOE.md §1.4) and softmax_topk_f16 (§1.5) for one token; p receives the probabilities (f16 mode:
 * f16 values widened), excluded experts get 0. */
static void softmax_token(const tr_router_cfg *c, const float *l, const uint8_t *allowed, float *p, float *ex,
                          int32_t *ids, float *w)
{
    int f16 = c->mode == TR_ROUTER_SOFTMAX_TOPK_F16;
    float m = NAN;
    for (uint32_t e = 0; e < c->E; e++) {
        float v = c->temperature != 1.0f ? l[e] / c->temperature : l[e];
        if (f16)
            v = tr_f16_to_f32(tr_f32_to_f16(v));
        ex[e] = v;                                           /* l' (or l16) for now */
        if (allowed[e] && !isnan(v) && (isnan(m) || v > m))
            m = v;
    }
    float S = 0.0f;
    for (uint32_t e = 0; e < c->E; e++) {
        ex[e] = allowed[e] ? tr_expf(ex[e] - m) : 0.0f;
        if (allowed[e])
            S = S + ex[e];
    }
    for (uint32_t e = 0; e < c->E; e++) {
        float q = ex[e] / S;
        p[e] = !allowed[e] ? 0.0f : f16 ? tr_f16_to_f32(tr_f32_to_f16(q)) : q;
    }
    select_k(p, allowed, c->E, c->k, ids);
    if (!c->norm_topk_prob) {
        for (uint32_t j = 0; j < c->k; j++)
            w[j] = p[ids[j]];
        return;
    }
    float D = 0.0f;
    for (uint32_t j = 0; j < c->k; j++)
        D = D + p[ids[j]];
    if (f16)
        D = tr_f16_to_f32(tr_f32_to_f16(D));
    for (uint32_t j = 0; j < c->k; j++)
        w[j] = f16 ? tr_f16_to_f32(tr_f32_to_f16(p[ids[j]] / D)) : p[ids[j]] / D;
}

/* Scratch of one router call, each array [E]. */
typedef struct router_scratch {
    float *p, *tmp, *gscore;
    uint8_t *allowed, *gallow;
    int32_t *keep;
} router_scratch;

/* noaux_tc (MOE.md §1.6) for one token; s (= r->p) receives the sigmoid scores. */
static void noaux_token(const tr_router_cfg *c, const float *l, const float *bias, router_scratch *r, int32_t *ids,
                        float *w)
{
    float *s = r->p, *sel = r->tmp;
    for (uint32_t e = 0; e < c->E; e++) {
        s[e] = tr_sigmoid(l[e]);
        sel[e] = s[e] + (bias ? bias[e] : 0.0f);
    }
    if (c->n_group > 1) {   /* group limit: keep the topk_group groups of best top1 + top2 */
        uint32_t G = c->E / c->n_group;
        int32_t top[2];
        for (uint32_t q = 0; q < c->n_group; q++) {
            select_k(sel + (size_t)q * G, r->allowed + (size_t)q * G, G, 2, top);
            r->gscore[q] = sel[q * G + top[0]] + sel[q * G + top[1]];
        }
        memset(r->gallow, 1, c->n_group);
        select_k(r->gscore, r->gallow, c->n_group, c->topk_group, r->keep);
        memset(r->gallow, 0, c->n_group);
        for (uint32_t j = 0; j < c->topk_group; j++)
            r->gallow[r->keep[j]] = 1;
        for (uint32_t e = 0; e < c->E; e++)
            if (!r->gallow[e / G])
                r->allowed[e] = 0;
    }
    select_k(sel, r->allowed, c->E, c->k, ids);
    for (uint32_t j = 0; j < c->k; j++)
        w[j] = s[ids[j]];
    if (c->norm_topk_prob) {
        float D = 0.0f;
        for (uint32_t j = 0; j < c->k; j++)
            D = D + w[j];
        D = D + 1e-20f;
        for (uint32_t j = 0; j < c->k; j++)
            w[j] = w[j] / D;
    }
    for (uint32_t j = 0; j < c->k; j++)
        w[j] = w[j] * c->routed_scaling_factor;
}

void tr_ref_router_logits(const float *x, const float *Wr, const float *wscale, uint32_t T, uint32_t H, uint32_t E,
                          float *logits)
{
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t e = 0; e < E; e++) {
            float acc = tr_dot_l16(x + (size_t)t * H, Wr + (size_t)e * H, H);
            logits[(size_t)t * E + e] = wscale ? acc * wscale[e] : acc;
        }
}

int tr_ref_router_topk(const tr_router_cfg *c, const float *logits, uint32_t T, const float *bias,
                       const int32_t *candidates, uint32_t C, int32_t *ids, float *weights, float *load,
                       int32_t *count, tr_error *err)
{
    int rc = tr_router_check(c, err);
    if (rc != TR_OK)
        return rc;
    /* Candidate lists belong to the sparse softmax routers (KERNELS.md §4.9).  With the noaux_tc group limit a group
     * could hold fewer than two candidates (top1 + top2 undefined: select_k returned -1 and sel[q·G − 1] was read) or
     * the kept groups fewer than k (id −1 written, count[−1] incremented); found by fuzz/router_topk.  Refused. */
    if (candidates && c->mode == TR_ROUTER_NOAUX_TC && c->n_group > 1)
        return tr_fail(err, TR_E_INVALID_PARAM, "router_topk", "candidates are not supported with the noaux_tc group "
                       "limit (n_group %u > 1)", c->n_group);
    size_t E = c->E;
    router_scratch r;
    r.p = tr_malloc(E * 3 * sizeof(float));
    r.allowed = tr_malloc(E * 2);
    r.keep = tr_malloc(E * sizeof(int32_t));
    float *ld = tr_calloc(E, sizeof *ld);
    if (!r.p || !r.allowed || !r.keep || !ld) {
        rc = tr_fail(err, TR_E_NOMEM, "router_topk", "out of memory");
        goto done;
    }
    r.tmp = r.p + E;
    r.gscore = r.p + 2 * E;
    r.gallow = r.allowed + E;
    for (uint32_t t = 0; candidates && t < T; t++)   /* validate every token before writing anything */
        if ((rc = candidates_mask(candidates, C, c->E, c->k, t, r.allowed, err)) != TR_OK)
            goto done;
    for (uint32_t t = 0; t < T; t++) {
        const float *l = logits + (size_t)t * E;
        if (candidates)
            candidates_mask(candidates, C, c->E, c->k, t, r.allowed, NULL);
        else
            memset(r.allowed, 1, E);
        int32_t *id = ids + (size_t)t * c->k;
        float *w = weights + (size_t)t * c->k;
        if (c->mode == TR_ROUTER_NOAUX_TC)
            noaux_token(c, l, bias, &r, id, w);
        else
            softmax_token(c, l, r.allowed, r.p, r.tmp, id, w);
        for (size_t e = 0; e < E; e++)
            ld[e] = ld[e] + r.p[e];
    }
    if (load)
        memcpy(load, ld, E * sizeof *load);
    if (count) {
        memset(count, 0, E * sizeof *count);
        for (size_t f = 0; f < (size_t)T * c->k; f++)
            count[ids[f]]++;
    }
done:
    tr_dealloc(r.p);
    tr_dealloc(r.allowed);
    tr_dealloc(r.keep);
    tr_dealloc(ld);
    return rc;
}

/* ---- grouping --------------------------------------------------------------------------------------------------- */

int tr_ref_validate_ids(const int32_t *ids, uint32_t T, uint32_t k, uint32_t E, tr_error *err)
{
    if (k == 0 || E == 0 || (uint64_t)T * k > UINT32_MAX)
        return tr_fail(err, TR_E_INVALID_SHAPE, "expert_ids", "T=%u k=%u E=%u: k and E must be >= 1 and T·k < 2^32",
                       T, k, E);
    for (uint64_t f = 0; f < (uint64_t)T * k; f++)
        if (ids[f] < 0 || (uint32_t)ids[f] >= E)
            return tr_fail(err, TR_E_INVALID_EXPERT_ID, "expert_ids", "flat=%llu token=%llu slot=%llu id=%d "
                           "num_experts=%u", (unsigned long long)f, (unsigned long long)(f / k),
                           (unsigned long long)(f % k), ids[f], E);
    return TR_OK;
}

int tr_ref_moe_count(const int32_t *ids, uint32_t T, uint32_t k, uint32_t E, uint32_t *counts, tr_error *err)
{
    int rc = tr_ref_validate_ids(ids, T, k, E, err);
    if (rc != TR_OK)
        return rc;
    memset(counts, 0, (size_t)E * sizeof *counts);
    for (uint64_t f = 0; f < (uint64_t)T * k; f++)
        counts[ids[f]]++;
    return TR_OK;
}

void tr_ref_moe_offsets(const uint32_t *counts, uint32_t E, uint32_t *offsets)
{
    offsets[0] = 0;
    for (uint32_t e = 0; e < E; e++)
        offsets[e + 1] = offsets[e] + counts[e];
}

int tr_ref_moe_scatter(const int32_t *ids, const float *probs, uint32_t T, uint32_t k, uint32_t E,
                       const uint32_t *offsets, uint32_t *sorted_token_ids, float *sorted_probs, uint32_t *inverse,
                       tr_error *err)
{
    uint32_t *counts = tr_malloc(((size_t)E * 2 + 1) * sizeof *counts);
    if (!counts)
        return tr_fail(err, TR_E_NOMEM, "moe_scatter", "out of memory");
    uint32_t *want = counts + E;
    int rc = tr_ref_moe_count(ids, T, k, E, counts, err);
    if (rc == TR_OK) {
        tr_ref_moe_offsets(counts, E, want);
        for (uint32_t e = 0; e <= E; e++)
            if (offsets[e] != want[e]) {
                rc = tr_fail(err, TR_E_INVALID_PARAM, "moe_scatter", "offsets[%u] = %u, the ids give %u", e,
                             offsets[e], want[e]);
                break;
            }
    }
    if (rc == TR_OK) {
        memset(counts, 0, (size_t)E * sizeof *counts);      /* next free slot per expert */
        for (uint32_t f = 0; f < T * k; f++) {
            uint32_t pos = offsets[ids[f]] + counts[ids[f]]++;
            sorted_token_ids[pos] = f;
            sorted_probs[pos] = probs[f];
            inverse[f] = pos;
        }
    }
    tr_dealloc(counts);
    return rc;
}

int tr_ref_moe_group(const int32_t *ids, const float *probs, uint32_t T, uint32_t k, uint32_t E, tr_grouping *g,
                     tr_error *err)
{
    uint32_t *counts = tr_malloc(((size_t)E + 1) * sizeof *counts);
    if (!counts)
        return tr_fail(err, TR_E_NOMEM, "moe_group", "out of memory");
    int rc = tr_ref_moe_count(ids, T, k, E, counts, err);
    if (rc == TR_OK) {
        g->T = T;
        g->k = k;
        g->E = E;
        g->N = T * k;
        tr_ref_moe_offsets(counts, E, g->expert_offsets);
        rc = tr_ref_moe_scatter(ids, probs, T, k, E, g->expert_offsets, g->sorted_token_ids, g->sorted_probs,
                                g->inverse, err);
    }
    tr_dealloc(counts);
    return rc;
}

int tr_ref_validate_expert_ids(const int32_t *ids, uint32_t N, uint32_t E, int32_t replacement, int32_t *out,
                               tr_error *err)
{
    if (E == 0 || replacement < 0 || (uint32_t)replacement >= E)
        return tr_fail(err, TR_E_INVALID_PARAM, "validate_expert_ids", "replacement %d outside [0, %u)", replacement,
                       E);
    for (uint32_t f = 0; f < N; f++)
        out[f] = ids[f] >= 0 && (uint32_t)ids[f] < E ? ids[f] : replacement;
    return TR_OK;
}

/* ---- gather / combine / cast --------------------------------------------------------------------------------------- */

int tr_ref_moe_gather(const void *x, uint32_t T, size_t row_bytes, const uint32_t *tokens, uint32_t N, void *out,
                      tr_error *err)
{
    for (uint32_t r = 0; r < N; r++)
        if (tokens[r] >= T)
            return tr_fail(err, TR_E_INVALID_PARAM, "moe_gather", "row %u names token %u, T = %u", r, tokens[r], T);
    for (uint32_t r = 0; r < N; r++)
        memcpy((char *)out + (size_t)r * row_bytes, (const char *)x + (size_t)tokens[r] * row_bytes, row_bytes);
    return TR_OK;
}

void tr_ref_moe_combine(const float *y, const float *w, const float *shared, const float *residual, uint32_t T,
                        uint32_t k, uint32_t H, tr_acc acc, void *out)
{
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t n = 0; n < H; n++) {
            size_t o = (size_t)t * H + n;
            if (acc == TR_ACC_F32) {
                float a = 0.0f;
                for (uint32_t j = 0; j < k; j++)
                    a = a + w[(size_t)t * k + j] * y[((size_t)t * k + j) * H + n];
                if (shared)
                    a = a + shared[o];
                if (residual)
                    a = a + residual[o];
                ((float *)out)[o] = a;
            } else {
                uint16_t a = 0;
                for (uint32_t j = 0; j < k; j++)
                    a = tr_fmah(tr_f32_to_f16(w[(size_t)t * k + j]), tr_f32_to_f16(y[((size_t)t * k + j) * H + n]), a);
                if (shared)
                    a = tr_addh(a, tr_f32_to_f16(shared[o]));
                if (residual)
                    a = tr_addh(a, tr_f32_to_f16(residual[o]));
                ((uint16_t *)out)[o] = a;
            }
        }
}

void tr_ref_cast_f16(const float *in, size_t n, uint16_t *out) { tr_f32_to_f16_n(in, out, n); }

/* ---- nan_scan ------------------------------------------------------------------------------------------------------ */

static void scan_note(tr_nan_scan *s, size_t i, tr_nonfinite kind)
{
    if (kind == TR_NF_NAN)
        s->nan_count++;
    else if (kind == TR_NF_POS_INF)
        s->pos_inf_count++;
    else
        s->neg_inf_count++;
    if (s->first_index < 0) {
        s->first_index = (int64_t)i;
        s->first_kind = kind;
    }
}

void tr_ref_nan_scan_f32(const float *v, size_t n, tr_nan_scan *s)
{
    memset(s, 0, sizeof *s);
    s->first_index = -1;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            scan_note(s, i, isnan(v[i]) ? TR_NF_NAN : v[i] > 0 ? TR_NF_POS_INF : TR_NF_NEG_INF);
}

void tr_ref_nan_scan_f16(const uint16_t *v, size_t n, tr_nan_scan *s)
{
    memset(s, 0, sizeof *s);
    s->first_index = -1;
    for (size_t i = 0; i < n; i++)
        if ((v[i] & 0x7C00) == 0x7C00)
            scan_note(s, i, (v[i] & 0x3FF) ? TR_NF_NAN : (v[i] & 0x8000) ? TR_NF_NEG_INF : TR_NF_POS_INF);
}
