/*
 * eval.c — the walk over scored positions of ENGINE.md §6 (llama.cpp chunks and the HF strided windows) and the
 * nll statistics.  Memory is O(C·V) per window whatever the stream length: a window's logits are computed in one
 * prefill of its tokens and handed to the caller row by row.
 */
#include "trellis/eval.h"
#include "trellis/alloc.h"

#include <math.h>
#include <string.h>

const char *tr_protocol_name(tr_protocol p) { return p == TR_PROTOCOL_HF ? "hf" : "llamacpp"; }

int tr_protocol_parse(const char *name, tr_protocol *out)
{
    if (!strcmp(name, "llamacpp"))
        *out = TR_PROTOCOL_LLAMACPP;
    else if (!strcmp(name, "hf"))
        *out = TR_PROTOCOL_HF;
    else
        return -1;
    return 0;
}

int tr_eval_resolve(tr_eval_opts *o, size_t n, const char *what, tr_error *err)
{
    if (!o->ctx)
        o->ctx = o->protocol == TR_PROTOCOL_HF ? 2048 : 512;
    if (o->protocol == TR_PROTOCOL_HF) {
        if (!o->stride)
            o->stride = o->ctx / 2 ? o->ctx / 2 : 1;
        if (o->stride > o->ctx)
            return tr_fail(err, TR_E_USAGE, "--stride", "%u is larger than --ctx %u", o->stride, o->ctx);
        if (n < 2)
            return tr_fail(err, TR_E_INPUT, what, "%zu tokens, need at least 2", n);
        return TR_OK;
    }
    if (o->ctx < 4)
        return tr_fail(err, TR_E_USAGE, "--ctx", "%u is too small for the llamacpp protocol (at least 4)", o->ctx);
    if (n < 2 * (size_t)o->ctx)
        return tr_fail(err, TR_E_INPUT, what, "%zu tokens, need at least 2*ctx = %zu", n, 2 * (size_t)o->ctx);
    return TR_OK;
}

uint32_t tr_eval_windows(const tr_eval_opts *o, size_t n)
{
    size_t w;
    if (o->protocol == TR_PROTOCOL_LLAMACPP)
        w = n / o->ctx;
    else {
        w = 0;
        for (size_t begin = 0;; begin += o->stride) {
            w++;
            if (begin + o->ctx >= n)
                break;
        }
    }
    if (o->max_chunks && w > o->max_chunks)
        w = o->max_chunks;
    return (uint32_t)w;
}

/* Evaluate tokens[0..len) from an empty cache; rows [first_row, len) of logits are filled. */
static int eval_window(tr_session *s, const int32_t *tokens, uint32_t len, float *logits, tr_error *err)
{
    tr_session_truncate(s, 0);
    return tr_session_eval(s, tokens, len, TR_LOGITS_ALL, logits, err);
}

int tr_eval_walk(tr_session *s, const int32_t *tokens, size_t n, const tr_eval_opts *o, const tr_eval_hooks *h,
                 tr_error *err)
{
    const uint32_t V = tr_session_model(s)->cfg.V, C = o->ctx, windows = tr_eval_windows(o, n);
    if (tr_session_ctx_size(s) < C)
        return tr_fail(err, TR_E_USAGE, "--ctx-size", "%u is smaller than the evaluation window --ctx %u",
                       tr_session_ctx_size(s), C);
    float *logits = tr_malloc((size_t)C * V * sizeof *logits);
    int32_t *buf = tr_malloc((size_t)C * sizeof *buf);
    if (!logits || !buf) {
        tr_dealloc(logits);
        tr_dealloc(buf);
        return tr_fail(err, TR_E_NOMEM, "evaluation", "cannot allocate %u x %u logits", C, V);
    }
    int rc = TR_OK;
    size_t prev_end = 0;
    for (uint32_t w = 0; rc == TR_OK && w < windows; w++) {
        size_t begin = o->protocol == TR_PROTOCOL_LLAMACPP ? (size_t)w * C : (size_t)w * o->stride;
        size_t end = begin + C < n ? begin + C : n, len = end - begin;
        memcpy(buf, tokens + begin, len * sizeof *buf);
        if (o->protocol == TR_PROTOCOL_LLAMACPP && o->bos >= 0)
            buf[0] = o->bos;
        if (h->window_begin)
            h->window_begin(h->user, w, begin, len);
        rc = eval_window(s, buf, (uint32_t)len, logits, err);
        /* targets: llamacpp j+1 for j = C/2 .. C−2; hf [max(prev_end, begin+1), end) */
        size_t t0 = o->protocol == TR_PROTOCOL_LLAMACPP ? begin + C / 2 + 1
                                                        : (prev_end > begin + 1 ? prev_end : begin + 1);
        size_t t1 = o->protocol == TR_PROTOCOL_LLAMACPP ? begin + C : end;
        for (size_t t = t0; rc == TR_OK && t < t1; t++) {
            tr_scored sc = {w, t, tokens[t], logits + (t - 1 - begin) * (size_t)V};
            rc = h->scored ? h->scored(h->user, &sc, err) : TR_OK;
        }
        prev_end = end;
        if (rc == TR_OK && h->window_done)
            rc = h->window_done(h->user, w, windows, err);
    }
    tr_dealloc(logits);
    tr_dealloc(buf);
    return rc;
}

double tr_logsumexp(const float *l, uint32_t V)
{
    double m = -INFINITY, z = 0.0;
    for (uint32_t i = 0; i < V; i++)
        if ((double)l[i] > m)
            m = l[i];
    for (uint32_t i = 0; i < V; i++)
        z += exp((double)l[i] - m);
    return m + log(z);
}

void tr_nll_add(tr_nll_stats *s, double nll)
{
    s->n++;
    s->sum += nll;
    s->sum_sq += nll * nll;
}

double tr_nll_ppl(const tr_nll_stats *s)
{
    return s->n ? exp(s->sum / (double)s->n) : NAN;
}

double tr_nll_ppl_unc(const tr_nll_stats *s)
{
    if (s->n < 2)
        return 0.0;
    double mean = s->sum / (double)s->n, var = s->sum_sq / (double)s->n - mean * mean;
    return tr_nll_ppl(s) * sqrt((var > 0 ? var : 0) / (double)(s->n - 1));
}
