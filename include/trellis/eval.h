/*
 * eval.h — the evaluation protocols of ENGINE.md §6 as one walk over the scored positions of a token stream, shared
 * by `trellis perplexity` and `trellis kld`:
 *
 *   llamacpp  non-overlapping chunks [i·C, (i+1)·C), i < ⌊n/C⌋ (n ≥ 2C), each from an empty cache, optional BOS
 *             replacing the chunk's first token; positions j = C/2 .. C−2 scored (logits at j predict token j+1);
 *   hf        windows at 0, S, 2S, … of length ≤ C; a window scores the targets at [max(prev_end, begin+1), end)
 *             with the logits of the preceding position; stops after the window that reaches n.
 *
 * and the per-position statistics: nll = −(l_target − lse), lse = m + ln Σ exp(l_i − m) in double, ascending id.
 */
#ifndef TRELLIS_EVAL_H
#define TRELLIS_EVAL_H

#include "trellis/engine.h"
#include "trellis/status.h"

#include <stddef.h>
#include <stdint.h>

typedef enum tr_protocol { TR_PROTOCOL_LLAMACPP = 0, TR_PROTOCOL_HF = 1 } tr_protocol;
const char *tr_protocol_name(tr_protocol p);
int tr_protocol_parse(const char *name, tr_protocol *out);     /* "llamacpp" | "hf"; 0 or -1 */

typedef struct tr_eval_opts {
    tr_protocol protocol;
    uint32_t ctx;                     /* C; 0 = the protocol's default (512 llamacpp, 2048 hf) */
    uint32_t stride;                  /* hf: S; 0 = C/2 */
    int32_t bos;                      /* llamacpp: replaces each chunk's first token; -1 = none */
    uint32_t max_chunks;              /* 0 = all */
} tr_eval_opts;

/* Resolve defaults; TR_E_INPUT "<what>: 700 tokens, need at least 2*ctx = 1024" when the stream is too short;
 * TR_E_USAGE for a stride of 0 > ctx etc.  what names the input in messages. */
int tr_eval_resolve(tr_eval_opts *o, size_t n_tokens, const char *what, tr_error *err);
/* Windows (chunks) the walk will evaluate. */
uint32_t tr_eval_windows(const tr_eval_opts *o, size_t n_tokens);

/* One scored position: the logits row [V] that predicts tokens[pos]. */
typedef struct tr_scored {
    uint32_t window;                  /* chunk / window index */
    size_t pos;                       /* absolute position of the target in the stream */
    int32_t target;
    const float *logits;              /* [V], valid during the callback */
} tr_scored;

typedef struct tr_eval_hooks {
    /* each scored position, in evaluation order; a non-TR_OK return stops the walk with that status */
    int (*scored)(void *user, const tr_scored *s, tr_error *err);
    /* after each window */
    int (*window_done)(void *user, uint32_t window, uint32_t n_windows, tr_error *err);
    /* before each window is evaluated (e.g. to reset per-window state) */
    void (*window_begin)(void *user, uint32_t window, size_t begin, size_t len);
    void *user;
} tr_eval_hooks;

/* Walk the protocol over tokens with session s (its ctx must be >= C; the cache is reset for each window). */
int tr_eval_walk(tr_session *s, const int32_t *tokens, size_t n, const tr_eval_opts *o, const tr_eval_hooks *h,
                 tr_error *err);

/* lse of a logits row in double (max-shifted, ascending id). */
double tr_logsumexp(const float *logits, uint32_t V);

/* Running mean/variance of nll (sums in double, in order). */
typedef struct tr_nll_stats {
    uint64_t n;
    double sum, sum_sq;
} tr_nll_stats;
void tr_nll_add(tr_nll_stats *s, double nll);
double tr_nll_ppl(const tr_nll_stats *s);       /* exp(mean) */
double tr_nll_ppl_unc(const tr_nll_stats *s);   /* PPL·sqrt((⟨nll²⟩ − ⟨nll⟩²)/(N−1)); 0 when N < 2 */

#endif
