/*
 * gen_common.h — what `trellis generate` and `trellis chat` share (ENGINE.md §4, §5): the tokenizer of a model, the
 * stop set, the sampling parameters (CLI over generation_config.json over HF defaults), and the generation loop that
 * streams each token's text as soon as it is sampled.
 */
#ifndef TRELLIS_CLI_GEN_COMMON_H
#define TRELLIS_CLI_GEN_COMMON_H

#include "engine_opts.h"
#include "trellis/chat.h"
#include "trellis/sample.h"
#include "trellis/tokenizer.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>

/* The sampling flags of ENGINE.md §8. */
typedef struct sampling_flags {
    int greedy;
    int temp_set, topk_set, topp_set, minp_set, rep_set;
    double temp, top_p, min_p, rep;
    int top_k;
    int32_t stop_ids[64];
    uint32_t n_stop_ids;
    int ignore_eos;
    uint32_t max_new;                 /* -n, default 256 */
} sampling_flags;

void sampling_flags_init(sampling_flags *f);
/* -n, --temp, --top-k, --top-p, --min-p, --repeat-penalty, --stop-id, --greedy, --ignore-eos: 1 consumed, 0 not ours,
 * -1 usage error printed. */
int sampling_flag(const char *cmd, int argc, char **argv, int *i, sampling_flags *f);
/* CLI flags over generation_config.json over HF defaults; --temp > 0, --top-k, --top-p, --min-p imply sampling.
 * Returns an exit code. */
int sampling_resolve(const char *cmd, const sampling_flags *f, const char *model_dir, tr_sampling *out);

/* The model's tokenizer: --tokenizer FILE or DIR/tokenizer.json ("<path>: TR_E_IO: not found", exit 2). */
int gen_load_tokenizer(const char *cmd, const eng_opts *e, tr_tokenizer **tok);
/* The stop set of ENGINE.md §4 (config eos ∪ the style's tokens ∪ generation_config eos ∪ --stop-id); with
 * --ignore-eos only the --stop-id ids.  Returns an exit code. */
int gen_stop_set(const char *cmd, const eng_opts *e, const tr_model *m, const tr_tokenizer *tok, int template_used,
                 const sampling_flags *f, int32_t **ids, size_t *n);

/* One generation (prefill new tokens, then sample until a stop id, max_new tokens, the context end or SIGINT). */
typedef struct gen_ctx {
    const char *cmd;
    tr_session *s;
    tr_sampler *smp;
    const tr_tokenizer *tok;          /* NULL: no text output */
    const int32_t *stop;
    size_t n_stop;
    uint32_t max_new;
    int skip_special;                 /* text: special tokens omitted (generate default) or shown (chat) */
    FILE *stream;                     /* each token's text as it is sampled; NULL: not streamed */
} gen_ctx;

typedef struct gen_result {
    int32_t *ids;                     /* generated ids (the stop id included) */
    uint32_t n;
    const char *stop_reason;          /* stop | length | context | interrupted */
    char *text;                       /* decoded text of the generated ids without the stop id */
    size_t text_len;
    double prefill_ms, decode_ms;
} gen_result;

extern volatile sig_atomic_t gen_interrupted;
void gen_install_sigint(void);
void gen_restore_sigint(void);

/* history[0..n_hist) = every id so far (repetition penalty); the last n_new of them are not yet in the cache and
 * are prefilled first.  Returns an exit code. */
int gen_run(gen_ctx *g, const int32_t *history, size_t n_hist, uint32_t n_new, gen_result *r);
void gen_result_release(gen_result *r);

#endif
