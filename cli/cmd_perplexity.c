/*
 * cmd_perplexity.c — `trellis perplexity (-f FILE | --ids-file FILE) [--protocol llamacpp|hf] [--ctx N]
 * [--stride S] [--chunks N] [--bos ID] [--save-nll FILE]` (ENGINE.md §6, §8).
 *
 * Output mirrors llama-perplexity: the running PPL after each chunk as `[1]x.xxxx,[2]…`, then
 * `Final estimate: PPL = x.xxxx +/- y.yyyyy`; `--json` writes trellis.perplexity/1.
 */
#include "cli.h"
#include "engine_opts.h"
#include "eval_input.h"
#include "progress.h"
#include "trellis/alloc.h"
#include "trellis/eval.h"
#include "trellis/jsonio.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const CMD = "perplexity";

typedef struct ppl_run {
    tr_nll_stats all;
    double *chunk_ppl;
    uint32_t n_windows, V;
    FILE *nll_out;
    progress bar;
    int quiet;
} ppl_run;

static int on_scored(void *user, const tr_scored *s, tr_error *err)
{
    ppl_run *r = user;
    double lse = tr_logsumexp(s->logits, r->V);
    double nll = -((double)s->logits[s->target] - lse);
    tr_nll_add(&r->all, nll);
    if (r->nll_out && fprintf(r->nll_out, "%zu %d %.17g\n", s->pos, s->target, nll) < 0)
        return tr_fail(err, TR_E_IO, "--save-nll", "write failed");
    return TR_OK;
}

static int on_window(void *user, uint32_t w, uint32_t n, tr_error *err)
{
    (void)err;
    ppl_run *r = user;
    r->chunk_ppl[w] = tr_nll_ppl(&r->all);
    if (!r->quiet) {
        fprintf(cli_out, "%s[%u]%.4f", w ? "," : "", w + 1, r->chunk_ppl[w]);
        fflush(cli_out);
    }
    progress_update(&r->bar, w + 1, n);
    return TR_OK;
}

static void help(void)
{
    fprintf(cli_out,
            "Usage: trellis perplexity -m DIR (-f FILE | --ids-file FILE) [--protocol llamacpp|hf] [--ctx N]\n"
            "         [--stride S] [--chunks N] [--bos ID] [--save-nll FILE] [options]\n"
            "  llamacpp (default, ctx 512): non-overlapping chunks, second half scored.  hf (ctx 2048, stride ctx/2):\n"
            "  strided windows, every token scored once.  --save-nll writes `position target nll` per scored token.\n%s",
            ENG_OPTS_HELP);
}

static json_t *ppl_json(const eval_input *in, const tr_eval_opts *o, const ppl_run *r, const tr_session *s,
                        uint64_t seed, const char *model)
{
    json_t *d = json_object(), *chunks = json_array();
    json_object_set_new(d, "schema", json_string("trellis.perplexity/1"));
    json_object_set_new(d, "protocol", json_string(tr_protocol_name(o->protocol)));
    json_object_set_new(d, "ctx", json_integer(o->ctx));
    json_object_set_new(d, "stride", o->protocol == TR_PROTOCOL_HF ? json_integer(o->stride) : json_null());
    json_object_set_new(d, "bos", o->bos >= 0 ? json_integer(o->bos) : json_null());
    json_object_set_new(d, "n_tokens", json_integer((json_int_t)in->n));
    json_object_set_new(d, "n_chunks", json_integer(r->n_windows));
    json_object_set_new(d, "n_scored", json_integer((json_int_t)r->all.n));
    json_object_set_new(d, "ppl", tr_json_real(tr_nll_ppl(&r->all)));
    json_object_set_new(d, "ppl_unc", tr_json_real(tr_nll_ppl_unc(&r->all)));
    json_object_set_new(d, "mean_nll", tr_json_real(r->all.n ? r->all.sum / (double)r->all.n : NAN));
    for (uint32_t w = 0; w < r->n_windows; w++)
        json_array_append_new(chunks, tr_json_real(r->chunk_ppl[w]));
    json_object_set_new(d, "chunk_ppl", chunks);
    json_object_set_new(d, "input_sha256", json_string(in->sha256));
    json_object_set_new(d, "model", json_string(model));
    json_object_set_new(d, "backend", json_string(tr_session_backend_name(s)));
    json_object_set_new(d, "seed", json_integer((json_int_t)seed));
    return d;
}

int cmd_perplexity(int argc, char **argv)
{
    eng_opts e;
    eng_opts_init(&e);
    eval_input_opts io = {0};
    tr_eval_opts o = {TR_PROTOCOL_LLAMACPP, 0, 0, -1, 0};
    const char *save_nll = NULL;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i]))
            return help(), CLI_OK;
        int r = eval_input_opt(CMD, argc, argv, &i, &io, &o);
        if (r == 0) {
            const char *v;
            if ((r = cli_opt(argc, argv, &i, "--save-nll", &v)) != 0) {
                if (r < 0)
                    return cli_usage(CMD, "--save-nll needs a file");
                save_nll = v;
                continue;
            }
            r = eng_opt(CMD, argc, argv, &i, &e);
        }
        if (r < 0)
            return CLI_USAGE;
        if (r == 0)
            return cli_usage(CMD, "unknown option %s", argv[i]);
    }
    eval_input in = {0};
    tr_model *m = NULL;
    tr_session *s = NULL;
    ppl_run run = {0};
    tr_error err;
    int rc = eval_prepare(CMD, &e, &io, &o, &in, &m, &s);
    if (rc == CLI_OK) {
        run.n_windows = tr_eval_windows(&o, in.n);
        run.chunk_ppl = tr_calloc(run.n_windows + 1, sizeof *run.chunk_ppl);
        run.quiet = e.json && !strcmp(e.json, "-");
        progress_init(&run.bar, CMD, !e.no_progress);
        run.V = m->cfg.V;
        if (save_nll && !(run.nll_out = fopen(save_nll, "w"))) {
            tr_fail(&err, TR_E_IO, save_nll, "cannot open for writing");
            rc = cli_fail(CMD, &err);
        }
        if (!run.chunk_ppl) {
            fprintf(cli_err, "trellis %s: error: out of memory\n", CMD);
            rc = CLI_RESOURCE;
        }
    }
    if (rc == CLI_OK) {
        tr_eval_hooks h = {on_scored, on_window, NULL, &run};
        if (tr_eval_walk(s, in.ids, in.n, &o, &h, &err) != TR_OK)
            rc = cli_fail(CMD, &err);
        progress_done(&run.bar);
    }
    if (run.nll_out && fclose(run.nll_out) != 0 && rc == CLI_OK) {
        tr_fail(&err, TR_E_IO, save_nll, "write failed");
        rc = cli_fail(CMD, &err);
    }
    if (rc == CLI_OK && !run.quiet)
        fprintf(cli_out, "\nFinal estimate: PPL = %.4f +/- %.5f\n", tr_nll_ppl(&run.all), tr_nll_ppl_unc(&run.all));
    if (rc == CLI_OK && e.json) {
        unsigned long mark = tr_json_mark();
        json_t *doc = ppl_json(&in, &o, &run, s, e.seed, e.model);
        rc = cli_write_json(CMD, e.json, doc, mark);
        json_decref(doc);
    }
    tr_dealloc(run.chunk_ppl);
    eval_input_release(&in);
    tr_session_free(s);
    tr_model_free(m);
    return rc;
}
