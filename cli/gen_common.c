/*
 * gen_common.c — sampling flags, the tokenizer and stop set of a model, and the streaming generation loop shared
 * by `trellis generate` and `trellis chat` (gen_common.h).
 */
#include "gen_common.h"
#include "cli.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

volatile sig_atomic_t gen_interrupted;
static void (*old_handler)(int);

static void on_sigint(int sig)
{
    (void)sig;
    gen_interrupted = 1;
}

void gen_install_sigint(void)
{
    gen_interrupted = 0;
    old_handler = signal(SIGINT, on_sigint);
}

void gen_restore_sigint(void)
{
    signal(SIGINT, old_handler == SIG_ERR ? SIG_DFL : old_handler);
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* ---- flags ------------------------------------------------------------------------------------------------------- */

void sampling_flags_init(sampling_flags *f)
{
    memset(f, 0, sizeof *f);
    f->max_new = 256;
}

static int parse_double(const char *v, double *out)
{
    char *end;
    *out = strtod(v, &end);
    return !*v || *end || !isfinite(*out) ? -1 : 0;
}

static int integral(double d, double lo, double hi) { return d >= lo && d <= hi && d == floor(d); }

int sampling_flag(const char *cmd, int argc, char **argv, int *i, sampling_flags *f)
{
    static const char *const valued[] = {"-n", "--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty",
                                         "--stop-id"};
    const char *a = argv[*i], *v = NULL;
    int which = -1;
    for (int k = 0; k < 7 && which < 0; k++) {
        int r = cli_opt(argc, argv, i, valued[k], &v);
        if (r < 0)
            return cli_usage(cmd, "%s needs a value", valued[k]), -1;
        if (r > 0)
            which = k;
    }
    double d;
    switch (which) {
    case 0:
        if (parse_double(v, &d) || !integral(d, 1, 1e9))
            return cli_usage(cmd, "-n: expected a positive integer"), -1;
        f->max_new = (uint32_t)d;
        return 1;
    case 1:
        if (parse_double(v, &f->temp) || f->temp < 0)
            return cli_usage(cmd, "--temp: expected a number >= 0"), -1;
        f->temp_set = 1;
        return 1;
    case 2:
        if (parse_double(v, &d) || !integral(d, 0, 1e9))
            return cli_usage(cmd, "--top-k: expected an integer >= 0"), -1;
        f->top_k = (int)d;
        f->topk_set = 1;
        return 1;
    case 3:
        if (parse_double(v, &f->top_p) || f->top_p <= 0 || f->top_p > 1)
            return cli_usage(cmd, "--top-p: expected a number in (0, 1]"), -1;
        f->topp_set = 1;
        return 1;
    case 4:
        if (parse_double(v, &f->min_p) || f->min_p < 0 || f->min_p > 1)
            return cli_usage(cmd, "--min-p: expected a number in [0, 1]"), -1;
        f->minp_set = 1;
        return 1;
    case 5:
        if (parse_double(v, &f->rep) || f->rep <= 0)
            return cli_usage(cmd, "--repeat-penalty: expected a number > 0"), -1;
        f->rep_set = 1;
        return 1;
    case 6:
        if (parse_double(v, &d) || !integral(d, 0, INT32_MAX) || f->n_stop_ids == 64)
            return cli_usage(cmd, "--stop-id: expected a token id (at most 64)"), -1;
        f->stop_ids[f->n_stop_ids++] = (int32_t)d;
        return 1;
    default: break;
    }
    if (!strcmp(a, "--greedy"))
        f->greedy = 1;
    else if (!strcmp(a, "--ignore-eos"))
        f->ignore_eos = 1;
    else
        return 0;
    return 1;
}

int sampling_resolve(const char *cmd, const sampling_flags *f, const char *model_dir, tr_sampling *out)
{
    tr_error err;
    tr_sampling_default(out);
    if (tr_sampling_from_generation_config(model_dir, out, &err) != TR_OK)
        return cli_fail(cmd, &err);
    if (f->temp_set)
        out->temperature = f->temp;
    if (f->topk_set)
        out->top_k = f->top_k;
    if (f->topp_set)
        out->top_p = f->top_p;
    if (f->minp_set)
        out->min_p = f->min_p;
    if (f->rep_set)
        out->repetition_penalty = f->rep;
    if ((f->temp_set && f->temp > 0) || f->topk_set || f->topp_set || f->minp_set)
        out->do_sample = 1;
    if (f->greedy || (f->temp_set && f->temp == 0))
        out->do_sample = 0;
    return CLI_OK;
}

/* ---- tokenizer and stop set ------------------------------------------------------------------------------------------- */

int gen_load_tokenizer(const char *cmd, const eng_opts *e, tr_tokenizer **tok)
{
    tr_error err;
    char *path = e->tokenizer ? tr_strdup(e->tokenizer) : tr_path_join(e->model, "tokenizer.json");
    if (!path) {
        fprintf(cli_err, "trellis %s: error: out of memory\n", cmd);
        return CLI_RESOURCE;
    }
    int rc = tr_tokenizer_load(path, tok, &err) == TR_OK ? CLI_OK : cli_fail(cmd, &err);
    tr_dealloc(path);
    return rc;
}

int gen_stop_set(const char *cmd, const eng_opts *e, const tr_model *m, const tr_tokenizer *tok, int template_used,
                 const sampling_flags *f, int32_t **ids, size_t *n)
{
    tr_error err;
    int32_t *gen_eos = NULL, *extra = NULL;
    size_t n_gen = 0;
    int rc = tr_generation_config_eos(e->model, &gen_eos, &n_gen, &err) == TR_OK ? CLI_OK : cli_fail(cmd, &err);
    if (rc == CLI_OK && !(extra = tr_malloc((n_gen + f->n_stop_ids + 1) * sizeof *extra))) {
        fprintf(cli_err, "trellis %s: error: out of memory\n", cmd);
        rc = CLI_RESOURCE;
    }
    size_t n_extra = 0;
    for (size_t i = 0; rc == CLI_OK && !f->ignore_eos && i < n_gen; i++)
        extra[n_extra++] = gen_eos[i];
    for (uint32_t i = 0; rc == CLI_OK && i < f->n_stop_ids; i++)
        extra[n_extra++] = f->stop_ids[i];
    int style = tr_chat_style_for(tr_arch_name(m->cfg.arch));
    if (rc == CLI_OK && f->ignore_eos) {   /* --ignore-eos empties the stop set; --stop-id ids still apply */
        *ids = extra;
        *n = n_extra;
        extra = NULL;
    } else if (rc == CLI_OK &&
               tr_chat_stop_ids((tr_chat_style)style, tok, template_used, m->cfg.eos_ids, m->cfg.n_eos, extra, n_extra,
                                ids, n, &err) != TR_OK)
        rc = cli_fail(cmd, &err);
    tr_dealloc(gen_eos);
    tr_dealloc(extra);
    return rc;
}

/* ---- the loop -------------------------------------------------------------------------------------------------------- */

static int in_set(const int32_t *set, size_t n, int32_t id)
{
    for (size_t i = 0; i < n; i++)
        if (set[i] == id)
            return 1;
    return 0;
}

static void stream_token(gen_ctx *g, tr_detok *d, int32_t id)
{
    const char *text;
    size_t len;
    if (!d || tr_detok_push(d, id, &text, &len) != TR_OK || !len)
        return;
    if (g->stream) {
        fwrite(text, 1, len, g->stream);
        fflush(g->stream);
    }
}

static int finish_text(gen_ctx *g, gen_result *r)
{
    if (!g->tok)
        return TR_OK;
    uint32_t n = r->n && !strcmp(r->stop_reason, "stop") ? r->n - 1 : r->n;
    tr_error err;
    if (tr_tokenizer_decode(g->tok, r->ids, n, g->skip_special, &r->text, &r->text_len, NULL, &err) != TR_OK)
        return cli_fail(g->cmd, &err);
    return CLI_OK;
}

int gen_run(gen_ctx *g, const int32_t *history, size_t n_hist, uint32_t n_new, gen_result *r)
{
    tr_error err;
    const uint32_t V = tr_session_model(g->s)->cfg.V;
    memset(r, 0, sizeof *r);
    r->stop_reason = "length";
    float *lg = tr_malloc((size_t)V * sizeof *lg);
    int32_t *hist = tr_malloc((n_hist + g->max_new + 1) * sizeof *hist);
    r->ids = tr_malloc(((size_t)g->max_new + 1) * sizeof *r->ids);
    tr_detok *d = NULL;
    if (!lg || !hist || !r->ids || (g->tok && tr_detok_new(g->tok, g->skip_special, &d, &err) != TR_OK)) {
        tr_dealloc(lg);
        tr_dealloc(hist);
        fprintf(cli_err, "trellis %s: error: out of memory\n", g->cmd);
        return CLI_RESOURCE;
    }
    memcpy(hist, history, n_hist * sizeof *hist);
    double t0 = now_ms();
    int rc = tr_session_eval(g->s, history + n_hist - n_new, n_new, TR_LOGITS_LAST, lg, &err) == TR_OK
                 ? CLI_OK : cli_fail(g->cmd, &err);
    r->prefill_ms = now_ms() - t0;
    t0 = now_ms();
    while (rc == CLI_OK && r->n < g->max_new) {
        if (gen_interrupted) {
            r->stop_reason = "interrupted";
            break;
        }
        int32_t id = tr_sampler_next(g->smp, lg, hist, n_hist + r->n);
        hist[n_hist + r->n] = id;
        r->ids[r->n++] = id;
        if (in_set(g->stop, g->n_stop, id)) {   /* kept in the ids, neither printed nor fed */
            r->stop_reason = "stop";
            break;
        }
        stream_token(g, d, id);
        if (r->n == g->max_new)
            break;
        if (tr_session_length(g->s) + 1 > tr_session_ctx_size(g->s)) {
            r->stop_reason = "context";
            fprintf(cli_err, "trellis %s: warning: context full (--ctx-size %u); stopping\n", g->cmd,
                    tr_session_ctx_size(g->s));
            break;
        }
        if (tr_session_eval(g->s, &id, 1, TR_LOGITS_LAST, lg, &err) != TR_OK)
            rc = cli_fail(g->cmd, &err);
    }
    r->decode_ms = now_ms() - t0;
    const char *tail;
    size_t tail_len;
    if (d && tr_detok_finish(d, &tail, &tail_len) == TR_OK && tail_len && g->stream) {
        fwrite(tail, 1, tail_len, g->stream);
        fflush(g->stream);
    }
    tr_detok_free(d);
    tr_dealloc(lg);
    tr_dealloc(hist);
    if (rc == CLI_OK)
        rc = finish_text(g, r);
    return rc;
}

void gen_result_release(gen_result *r)
{
    tr_dealloc(r->ids);
    tr_dealloc(r->text);
    memset(r, 0, sizeof *r);
}
