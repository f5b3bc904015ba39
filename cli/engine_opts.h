/*
 * engine_opts.h — the common options of every model-running command (ENGINE.md §8): model and base model,
 * tokenizer, backend and threads, context size, router mode, MLA form, NaN policy, MoE dispatch switches, seed,
 * JSON output, progress and verbosity; plus token-id list parsing (--ids, --ids-file).
 */
#ifndef TRELLIS_CLI_ENGINE_OPTS_H
#define TRELLIS_CLI_ENGINE_OPTS_H

#include "trellis/engine.h"

#include <stddef.h>
#include <stdint.h>

typedef struct eng_opts {
    const char *model, *tokenizer, *json;
    tr_model_options mopt;
    tr_session_options sopt;
    uint64_t seed;
    int seed_random, seed_given;
    int no_progress, verbose, quiet;
} eng_opts;

void eng_opts_init(eng_opts *o);

/* Consume argv[*i] if it is a common option (or the model directory as the first positional argument).
 * Returns 1 when consumed, 0 when it is not a common option, or -1 after printing a usage error (exit 2). */
int eng_opt(const char *cmd, int argc, char **argv, int *i, eng_opts *o);

/* Load the model and open a session.  Returns an exit code (0 on success), messages printed. */
int eng_open(const char *cmd, eng_opts *o, tr_model **m, tr_session **s);

/* The help text of the common options. */
extern const char ENG_OPTS_HELP[];

/* "1,2,3" → ids (tr_malloc'ed).  Whitespace and commas separate ids in files.  Usage errors name the option and
 * the index: "--ids: \"x\" at index 2 is not a token id".  Returns an exit code. */
int eng_parse_ids(const char *cmd, const char *what, const char *text, int32_t **ids, uint32_t *n);
int eng_read_ids_file(const char *cmd, const char *path, int32_t **ids, uint32_t *n);
/* Every id in [0, V): "--ids: token id 5000 at index 3 is out of range [0, 1214)", exit 2. */
int eng_check_ids(const char *cmd, const char *what, const int32_t *ids, uint32_t n, uint32_t V);

/* The seed actually used (--seed random: from the clock, printed). */
uint64_t eng_seed(eng_opts *o);

#endif
