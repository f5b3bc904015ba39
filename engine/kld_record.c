/*
 * kld_record.c — the per-position arithmetic of the two-pass KLD (ENGINE.md §6): building a base record (exact fp32
 * top-K by descending logit, ties → lower id, plus lse and the exact tail mass) and comparing a candidate's logits
 * row with it (KLD on the partition {K base-top ids, tail}, Δp, same top), and the plan of a protocol walk.
 */
#include "trellis/kld.h"
#include "trellis/alloc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct cand {
    float v;
    uint32_t id;
} cand;

int tr_kld_work_init(tr_kld_work *w, uint32_t V, uint32_t K, uint32_t n_routes, tr_error *err)
{
    memset(w, 0, sizeof *w);
    w->V = V;
    w->K = K;
    w->n_routes = n_routes;
    w->slot = tr_calloc(V, sizeof *w->slot);
    w->heap = tr_malloc((size_t)K * sizeof(cand));
    w->rec.ids = tr_malloc((size_t)K * sizeof *w->rec.ids);
    w->rec.logits = tr_malloc((size_t)K * sizeof *w->rec.logits);
    w->rec.routes = n_routes ? tr_malloc((size_t)n_routes * sizeof *w->rec.routes) : NULL;
    if (!w->slot || !w->heap || !w->rec.ids || !w->rec.logits || (n_routes && !w->rec.routes)) {
        tr_kld_work_free(w);
        return tr_fail(err, TR_E_NOMEM, "kld", "cannot allocate record buffers for V = %u, K = %u", V, K);
    }
    return TR_OK;
}

void tr_kld_work_free(tr_kld_work *w)
{
    tr_dealloc(w->slot);
    tr_dealloc(w->heap);
    tr_dealloc(w->rec.ids);
    tr_dealloc(w->rec.logits);
    tr_dealloc(w->rec.routes);
    memset(w, 0, sizeof *w);
}

/* ---- top-K selection ------------------------------------------------------------------------------------------- */

/* The record order as a total order: a before b when a's logit is larger, on equal logits the lower id; NaN after
 * every number (such a row is non-finite anyway, the order only has to be deterministic). */
static int before(cand a, cand b)
{
    int na = isnan(a.v), nb = isnan(b.v);
    if (na != nb)
        return nb;
    if (!na && a.v != b.v)
        return a.v > b.v;
    return a.id < b.id;
}

static int cmp_cand(const void *x, const void *y)
{
    cand a = *(const cand *)x, b = *(const cand *)y;
    return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

/* Min-heap on `before`: h[0] is the candidate every other one comes before (the worst kept). */
static void sift_down(cand *h, uint32_t n, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && before(h[w], h[l]))
            w = l;
        if (r < n && before(h[w], h[r]))
            w = r;
        if (w == i)
            return;
        cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

static void sift_up(cand *h, uint32_t i)
{
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!before(h[p], h[i]))
            return;
        cand t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

/* The K best of logits [V] in record order into h [K]. */
static void select_topk(const float *logits, uint32_t V, uint32_t K, cand *h)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < V; i++) {
        cand c = {logits[i], i};
        if (n < K) {
            h[n] = c;
            sift_up(h, n++);
        } else if (before(c, h[0])) {
            h[0] = c;
            sift_down(h, K, 0);
        }
    }
    qsort(h, K, sizeof *h, cmp_cand);
}

void tr_kld_rec_build(tr_kld_work *w, const float *logits, uint32_t target)
{
    tr_kld_rec *r = &w->rec;
    cand *h = w->heap;
    select_topk(logits, w->V, w->K, h);
    r->lse = tr_logsumexp(logits, w->V);
    r->target = target;
    r->target_logit = logits[target];
    for (uint32_t j = 0; j < w->K; j++) {
        r->ids[j] = h[j].id;
        r->logits[j] = h[j].v;
        w->slot[h[j].id] = j + 1;
    }
    /* tail_mass = Σ_{i not stored} exp(l_i − lse), ascending id, in double */
    double tail = 0.0;
    for (uint32_t i = 0; i < w->V; i++)
        if (!w->slot[i])
            tail += exp((double)logits[i] - r->lse);
    r->tail_mass = tail;
    for (uint32_t j = 0; j < w->K; j++)
        w->slot[r->ids[j]] = 0;
}

/* ---- comparison ------------------------------------------------------------------------------------------------ */

static void clear_slots(tr_kld_work *w, const tr_kld_rec *r, uint32_t n)
{
    for (uint32_t j = 0; j < n; j++)
        w->slot[r->ids[j]] = 0;
}

/* Candidate argmax, lowest id on ties (NaN never wins). */
static uint32_t argmax(const float *c, uint32_t V)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < V; i++)
        if (c[i] > c[best] || (isnan(c[best]) && !isnan(c[i])))
            best = i;
    return best;
}

int tr_kld_compare(tr_kld_work *w, const tr_kld_rec *r, const float *cand_row, tr_kld_point *out, tr_error *err)
{
    for (uint32_t j = 0; j < w->K; j++) {
        if (r->ids[j] >= w->V || w->slot[r->ids[j]]) {
            clear_slots(w, r, j);
            return tr_fail(err, TR_E_INPUT, "kld record", "stored id %u at slot %u is out of range or repeated",
                           r->ids[j], j);
        }
        w->slot[r->ids[j]] = j + 1;
    }
    const double lse_q = tr_logsumexp(cand_row, w->V);
    double kld = 0.0, q_tail = 0.0;
    /* one ascending pass: Σ_{i∈record} p_i (lp_i − lq_i) and q_tail = Σ_{i∉record} exp(lq_i) */
    for (uint32_t i = 0; i < w->V; i++) {
        const double lq = (double)cand_row[i] - lse_q;
        const uint32_t s = w->slot[i];
        if (s) {
            const double lp = (double)r->logits[s - 1] - r->lse;
            kld += exp(lp) * (lp - lq);
        } else
            q_tail += exp(lq);
    }
    clear_slots(w, r, w->K);
    const double p_tail = r->tail_mass;
    if (p_tail > 0)
        kld += p_tail * (log(p_tail) - log(q_tail));
    const double lp_t = (double)r->target_logit - r->lse, lq_t = (double)cand_row[r->target] - lse_q;
    out->kld = kld;
    out->delta_p = exp(lq_t) - exp(lp_t);
    out->nll_q = -lq_t;
    out->nll_base = -lp_t;
    out->p_top_base = exp((double)r->logits[0] - r->lse);
    out->tail_mass = p_tail;
    out->same_top = argmax(cand_row, w->V) == r->ids[0];
    out->finite = isfinite(out->kld) && isfinite(out->delta_p) && isfinite(out->nll_q) && isfinite(out->nll_base);
    return TR_OK;
}

/* ---- the walk's plan ------------------------------------------------------------------------------------------- */

void tr_kld_plan_walk(const tr_eval_opts *o, size_t n, tr_kld_plan *out)
{
    const uint32_t W = tr_eval_windows(o, n);
    const size_t C = o->ctx;
    out->windows = W;
    out->n_records = 0;
    out->n_used = 0;
    if (o->protocol == TR_PROTOCOL_LLAMACPP) {
        /* targets begin + C/2 + 1 .. begin + C − 1 of each chunk */
        out->n_records = (uint64_t)W * (C - C / 2 - 1);
        out->n_used = (size_t)W * C;
        return;
    }
    size_t prev_end = 0;
    for (uint32_t w = 0; w < W; w++) {
        size_t begin = (size_t)w * o->stride, end = begin + C < n ? begin + C : n;
        size_t t0 = prev_end > begin + 1 ? prev_end : begin + 1;
        out->n_records += end > t0 ? end - t0 : 0;
        prev_end = end;
    }
    out->n_used = prev_end;
}
