/*
 * sample.h — next-token choice of ENGINE.md §5: repetition penalty, greedy, temperature, top-k, top-p, min-p and the
 * final draw, all in double on the fp32 logits, in HF's order; one uniform draw per sampled token (none for greedy).
 */
#ifndef TRELLIS_SAMPLE_H
#define TRELLIS_SAMPLE_H

#include "trellis/rng.h"
#include "trellis/status.h"

#include <stddef.h>
#include <stdint.h>

typedef struct tr_sampling {
    int do_sample;                    /* 0: greedy */
    double temperature;               /* 0 also means greedy */
    int top_k;                        /* 0: off */
    double top_p;                     /* 1: off */
    double min_p;                     /* 0: off */
    double repetition_penalty;        /* 1: off */
} tr_sampling;

/* HF defaults: greedy; T 1, k 50, p 1, min-p 0, r 1. */
void tr_sampling_default(tr_sampling *s);
/* Fill from generation_config.json in dir when present (do_sample, temperature, top_k, top_p, min_p,
 * repetition_penalty); fields absent keep their value.  TR_E_CONFIG on a wrong type. */
int tr_sampling_from_generation_config(const char *dir, tr_sampling *s, tr_error *err);
int tr_sampling_is_greedy(const tr_sampling *s);
/* eos_token_id of generation_config.json in dir (an id or a list of ids) for the stop set (ENGINE.md §4); *ids is
 * tr_malloc'ed (never NULL on success), *n = 0 when the file or the member is absent.  TR_E_CONFIG on a bad value. */
int tr_generation_config_eos(const char *dir, int32_t **ids, size_t *n, tr_error *err);

typedef struct tr_sampler tr_sampler;

int tr_sampler_new(const tr_sampling *params, uint64_t seed, uint32_t V, tr_sampler **out, tr_error *err);
void tr_sampler_free(tr_sampler *s);
/* The next id from fp32 logits [V]; history = prompt + generated ids (repetition penalty). */
int32_t tr_sampler_next(tr_sampler *s, const float *logits, const int32_t *history, size_t n_history);

#endif
