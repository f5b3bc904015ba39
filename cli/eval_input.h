/*
 * eval_input.h — what `trellis perplexity` and `trellis kld base` share: the token stream (a text file tokenized
 * whole with parse_special = false, or an ids file), its SHA-256, the protocol options, and the model and session
 * sized to the evaluation window (ENGINE.md §6).
 */
#ifndef TRELLIS_CLI_EVAL_INPUT_H
#define TRELLIS_CLI_EVAL_INPUT_H

#include "engine_opts.h"
#include "trellis/eval.h"

#include <stddef.h>
#include <stdint.h>

typedef struct eval_input_opts {
    const char *text_file, *ids_file;
} eval_input_opts;

typedef struct eval_input {
    int32_t *ids;
    size_t n;
    char sha256[65];                  /* of the text or ids file's bytes */
    const char *what;                 /* the file named in messages */
} eval_input;

/* -f, --ids-file, --protocol, --ctx, --stride, --chunks, --bos: 1 consumed, 0 not ours, -1 usage error printed. */
int eval_input_opt(const char *cmd, int argc, char **argv, int *i, eval_input_opts *io, tr_eval_opts *o);

/* Read the stream, load the model, resolve the protocol and open a session whose cache holds exactly one window
 * (a smaller --ctx-size is an error).  Returns an exit code. */
int eval_prepare(const char *cmd, eng_opts *e, const eval_input_opts *io, tr_eval_opts *o, eval_input *in,
                 tr_model **m, tr_session **s);
void eval_input_release(eval_input *in);

#endif
