/*
 * eval_input.c — the token stream, protocol options and sized session of the evaluation commands (eval_input.h).
 */
#include "eval_input.h"
#include "cli.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/hash.h"
#include "trellis/tokenizer.h"
#include "gen_common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int parse_count(const char *v, uint32_t lo, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (!*v || *end || errno || v[0] == '-' || x < lo || x > UINT32_MAX)
        return -1;
    *out = (uint32_t)x;
    return 0;
}

int eval_input_opt(const char *cmd, int argc, char **argv, int *i, eval_input_opts *io, tr_eval_opts *o)
{
    static const char *const names[] = {"-f", "--ids-file", "--protocol", "--ctx", "--stride", "--chunks", "--bos"};
    const char *v = NULL;
    int which = -1;
    for (int k = 0; k < 7 && which < 0; k++) {
        int r = cli_opt(argc, argv, i, names[k], &v);
        if (r < 0)
            return cli_usage(cmd, "%s needs a value", names[k]), -1;
        if (r > 0)
            which = k;
    }
    uint32_t u;
    switch (which) {
    case 0: io->text_file = v; return 1;
    case 1: io->ids_file = v; return 1;
    case 2:
        if (tr_protocol_parse(v, &o->protocol))
            return cli_usage(cmd, "--protocol: expected llamacpp or hf, got \"%s\"", v), -1;
        return 1;
    case 3:
        if (parse_count(v, 2, &o->ctx))
            return cli_usage(cmd, "--ctx: expected an integer >= 2, got \"%s\"", v), -1;
        return 1;
    case 4:
        if (parse_count(v, 1, &o->stride))
            return cli_usage(cmd, "--stride: expected a positive integer, got \"%s\"", v), -1;
        return 1;
    case 5:
        if (parse_count(v, 1, &o->max_chunks))
            return cli_usage(cmd, "--chunks: expected a positive integer, got \"%s\"", v), -1;
        return 1;
    case 6:
        if (parse_count(v, 0, &u) || u > INT32_MAX)
            return cli_usage(cmd, "--bos: expected a token id, got \"%s\"", v), -1;
        o->bos = (int32_t)u;
        return 1;
    default: return 0;
    }
}

/* The stream: an ids file, or a text file tokenized whole with parse_special = false (ENGINE.md §6; no template,
 * no BOS).  The tokenizer is the model's (or --tokenizer). */
static int read_stream(const char *cmd, const eng_opts *e, const eval_input_opts *io, eval_input *in)
{
    tr_error err;
    in->what = io->ids_file ? io->ids_file : io->text_file;
    if (tr_sha256_file_hex(in->what, in->sha256, &err) != TR_OK)
        return cli_fail(cmd, &err);
    if (io->ids_file) {
        uint32_t n;
        int rc = eng_read_ids_file(cmd, io->ids_file, &in->ids, &n);
        in->n = n;
        return rc;
    }
    tr_tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = gen_load_tokenizer(cmd, e, &tok);
    if (rc == CLI_OK && tr_file_read_all(io->text_file, &text, &len, &err) != TR_OK)
        rc = cli_fail(cmd, &err);
    if (rc == CLI_OK && tr_tokenizer_encode(tok, text, len, 0, io->text_file, &in->ids, &in->n, &err) != TR_OK)
        rc = cli_fail(cmd, &err);
    tr_dealloc(text);
    tr_tokenizer_free(tok);
    return rc;
}

int eval_prepare(const char *cmd, eng_opts *e, const eval_input_opts *io, tr_eval_opts *o, eval_input *in,
                 tr_model **m, tr_session **s)
{
    tr_error err;
    *m = NULL;
    *s = NULL;
    if (!io->text_file == !io->ids_file)
        return cli_usage(cmd, "give exactly one of -f FILE or --ids-file FILE");
    if (!e->model)
        return cli_usage(cmd, "no model: give -m DIR");
    int rc = read_stream(cmd, e, io, in);
    if (rc == CLI_OK && tr_eval_resolve(o, in->n, in->what, &err) != TR_OK)
        rc = cli_fail(cmd, &err);
    if (rc == CLI_OK && e->sopt.ctx_size && e->sopt.ctx_size < o->ctx) {
        tr_fail(&err, TR_E_USAGE, "--ctx-size", "%u is smaller than the evaluation window --ctx %u", e->sopt.ctx_size,
                o->ctx);
        rc = cli_fail(cmd, &err);
    }
    if (rc != CLI_OK)
        return rc;
    e->sopt.ctx_size = o->ctx;
    if ((rc = eng_open(cmd, e, m, s)) != CLI_OK)
        return rc;
    rc = eng_check_ids(cmd, in->what, in->ids, (uint32_t)in->n, (*m)->cfg.V);
    if (rc == CLI_OK && o->bos >= 0 && (uint32_t)o->bos >= (*m)->cfg.V) {
        tr_fail(&err, TR_E_TOKEN_ID, "--bos", "token id %d is out of range [0, %u)", o->bos, (*m)->cfg.V);
        rc = cli_fail(cmd, &err);
    }
    return rc;
}

void eval_input_release(eval_input *in)
{
    tr_dealloc(in->ids);
    in->ids = NULL;
}
