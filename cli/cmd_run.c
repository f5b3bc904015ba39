/*
 * cmd_run.c — `trellis logits` and `trellis generate` (ENGINE.md §5, §8).
 *
 *   trellis logits -m DIR --ids 1,2,3 --out FILE     one prefill; fp32 LE logits [T][V] of every position
 *   trellis generate -m DIR --ids 1,2,3 -n N --greedy --ignore-eos --print-ids   (the oracle greedy check)
 *
 * generate prefills the prompt once, then samples one token per step (ENGINE.md §5) until a stop id, -n tokens, the
 * context end, or SIGINT.  The last line of stdout with --print-ids is the generated ids, comma-separated.
 */
#include "cli.h"
#include "engine_opts.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/sample.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* ---- logits --------------------------------------------------------------------------------------------------------- */

static void logits_help(void)
{
    fprintf(cli_out, "Usage: trellis logits -m DIR (--ids 1,2,3 | --ids-file FILE) --out FILE [options]\n"
                     "  One prefill over the ids; writes the fp32 logits of every position as little-endian\n"
                     "  float32 [T, V], row-major.\n%s", ENG_OPTS_HELP);
}

int cmd_logits(int argc, char **argv)
{
    static const char *const CMD = "logits";
    eng_opts o;
    eng_opts_init(&o);
    const char *ids_text = NULL, *ids_file = NULL, *out = NULL, *v;
    for (int i = 1; i < argc; i++) {
        int r;
        if (cli_is_help(argv[i]))
            return logits_help(), CLI_OK;
        const char **slot = NULL;
        if ((r = cli_opt(argc, argv, &i, "--ids", &v)) != 0)
            slot = &ids_text;
        else if ((r = cli_opt(argc, argv, &i, "--ids-file", &v)) != 0)
            slot = &ids_file;
        else if ((r = cli_opt(argc, argv, &i, "--out", &v)) != 0)
            slot = &out;
        if (r < 0)
            return cli_usage(CMD, "%s needs a value", argv[i]);
        if (slot) {
            *slot = v;
            continue;
        }
        int e = eng_opt(CMD, argc, argv, &i, &o);
        if (e < 0)
            return CLI_USAGE;
        if (e == 0)
            return cli_usage(CMD, "unknown option %s", argv[i]);
    }
    if (!out)
        return cli_usage(CMD, "--out FILE is required");
    if (!ids_text == !ids_file)
        return cli_usage(CMD, "give exactly one of --ids or --ids-file");
    int32_t *ids = NULL;
    uint32_t T = 0;
    int rc = ids_text ? eng_parse_ids(CMD, "--ids", ids_text, &ids, &T) : eng_read_ids_file(CMD, ids_file, &ids, &T);
    tr_model *m = NULL;
    tr_session *s = NULL;
    if (rc == CLI_OK)
        rc = eng_open(CMD, &o, &m, &s);
    if (rc == CLI_OK)
        rc = eng_check_ids(CMD, ids_text ? "--ids" : ids_file, ids, T, m->cfg.V);
    if (rc == CLI_OK && T > tr_session_ctx_size(s)) {
        tr_error err;
        tr_fail(&err, TR_E_INPUT, "--ids", "%u tokens, --ctx-size is %u", T, tr_session_ctx_size(s));
        rc = cli_fail(CMD, &err);
    }
    float *lg = rc == CLI_OK ? tr_malloc((size_t)T * m->cfg.V * sizeof *lg) : NULL;
    tr_error err;
    if (rc == CLI_OK && !lg) {
        tr_fail(&err, TR_E_NOMEM, "logits", "cannot allocate %u x %u floats", T, m->cfg.V);
        rc = cli_fail(CMD, &err);
    }
    if (rc == CLI_OK && tr_session_eval(s, ids, T, TR_LOGITS_ALL, lg, &err) != TR_OK)
        rc = cli_fail(CMD, &err);
    if (rc == CLI_OK && tr_file_write_all(out, lg, (size_t)T * m->cfg.V * sizeof *lg, &err) != TR_OK)
        rc = cli_fail(CMD, &err);
    if (rc == CLI_OK && !o.quiet)
        fprintf(cli_err, "logits: %u x %u floats written to %s (backend %s)\n", T, m->cfg.V, out,
                tr_session_backend_name(s));
    tr_dealloc(lg);
    tr_dealloc(ids);
    tr_session_free(s);
    tr_model_free(m);
    return rc;
}

/* ---- generate ------------------------------------------------------------------------------------------------------- */

static volatile sig_atomic_t g_interrupted;
static void on_sigint(int sig)
{
    (void)sig;
    g_interrupted = 1;
}

typedef struct gen_opts {
    eng_opts e;
    const char *ids_text, *ids_file, *prompt, *prompt_file;
    uint32_t max_new;
    tr_sampling samp;
    int greedy, any_sampling_flag, ignore_eos, print_ids, no_stream, show_special;
    int temp_set, topk_set, topp_set, minp_set, rep_set;
    double temp, top_p, min_p, rep;
    int top_k;
    int32_t stop_ids[64];
    uint32_t n_stop_ids;
} gen_opts;

static void generate_help(void)
{
    fprintf(cli_out,
            "Usage: trellis generate -m DIR (--ids 1,2,3 | --ids-file FILE | -p TEXT | -f FILE) [-n N]\n"
            "         [--temp T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R] [--greedy]\n"
            "         [--stop-id ID]... [--ignore-eos] [--print-ids] [--show-special] [--no-stream] [options]\n"
            "  Raw completion (ENGINE.md §5).  -n: max new tokens (default 256, counting the stop token).\n"
            "  --print-ids prints the generated ids as the last line of stdout.\n%s",
            ENG_OPTS_HELP);
}

static int parse_double(const char *v, double *out)
{
    char *end;
    *out = strtod(v, &end);
    return !*v || *end || !isfinite(*out) ? -1 : 0;
}

/* One generate-specific option; returns 1 consumed, 0 not ours, -1 usage error printed. */
static int gen_opt(int argc, char **argv, int *i, gen_opts *g)
{
    static const char *const CMD = "generate";
    const char *a = argv[*i], *v = NULL;
    static const char *const valued[] = {"--ids", "--ids-file", "-p", "-f", "-n", "--temp", "--top-k", "--top-p",
                                         "--min-p", "--repeat-penalty", "--stop-id"};
    int which = -1;
    for (int k = 0; k < 11 && which < 0; k++) {
        int r = cli_opt(argc, argv, i, valued[k], &v);
        if (r < 0)
            return cli_usage(CMD, "%s needs a value", valued[k]), -1;
        if (r > 0)
            which = k;
    }
    double d;
    switch (which) {
    case 0: g->ids_text = v; return 1;
    case 1: g->ids_file = v; return 1;
    case 2: g->prompt = v; return 1;
    case 3: g->prompt_file = v; return 1;
    case 4:
        if (parse_double(v, &d) || d < 1 || d > 1e9 || d != floor(d))
            return cli_usage(CMD, "-n: expected a positive integer"), -1;
        g->max_new = (uint32_t)d;
        return 1;
    case 5:
        if (parse_double(v, &g->temp) || g->temp < 0)
            return cli_usage(CMD, "--temp: expected a number >= 0"), -1;
        g->temp_set = 1;
        return 1;
    case 6:
        if (parse_double(v, &d) || d < 0 || d > 1e9 || d != floor(d))
            return cli_usage(CMD, "--top-k: expected an integer >= 0"), -1;
        g->top_k = (int)d;
        g->topk_set = 1;
        return 1;
    case 7:
        if (parse_double(v, &g->top_p) || g->top_p <= 0 || g->top_p > 1)
            return cli_usage(CMD, "--top-p: expected a number in (0, 1]"), -1;
        g->topp_set = 1;
        return 1;
    case 8:
        if (parse_double(v, &g->min_p) || g->min_p < 0 || g->min_p > 1)
            return cli_usage(CMD, "--min-p: expected a number in [0, 1]"), -1;
        g->minp_set = 1;
        return 1;
    case 9:
        if (parse_double(v, &g->rep) || g->rep <= 0)
            return cli_usage(CMD, "--repeat-penalty: expected a number > 0"), -1;
        g->rep_set = 1;
        return 1;
    case 10:
        if (parse_double(v, &d) || d < 0 || d > INT32_MAX || d != floor(d) || g->n_stop_ids == 64)
            return cli_usage(CMD, "--stop-id: expected a token id (at most 64)"), -1;
        g->stop_ids[g->n_stop_ids++] = (int32_t)d;
        return 1;
    default: break;
    }
    int *flag = !strcmp(a, "--greedy")        ? &g->greedy
              : !strcmp(a, "--ignore-eos")    ? &g->ignore_eos
              : !strcmp(a, "--print-ids")     ? &g->print_ids
              : !strcmp(a, "--no-stream")     ? &g->no_stream
              : !strcmp(a, "--show-special")  ? &g->show_special : NULL;
    if (!flag)
        return 0;
    *flag = 1;
    return 1;
}

/* CLI flags over generation_config.json over HF defaults; --temp > 0, --top-k/-p, --min-p imply sampling. */
static int resolve_sampling(gen_opts *g, const char *dir)
{
    tr_error err;
    tr_sampling_default(&g->samp);
    if (tr_sampling_from_generation_config(dir, &g->samp, &err) != TR_OK)
        return cli_fail("generate", &err);
    if (g->temp_set)
        g->samp.temperature = g->temp;
    if (g->topk_set)
        g->samp.top_k = g->top_k;
    if (g->topp_set)
        g->samp.top_p = g->top_p;
    if (g->minp_set)
        g->samp.min_p = g->min_p;
    if (g->rep_set)
        g->samp.repetition_penalty = g->rep;
    if ((g->temp_set && g->temp > 0) || g->topk_set || g->topp_set || g->minp_set)
        g->samp.do_sample = 1;
    if (g->greedy || (g->temp_set && g->temp == 0))
        g->samp.do_sample = 0;
    return CLI_OK;
}

/* Stop set: config eos ids (unless --ignore-eos) plus every --stop-id. */
static int is_stop(const gen_opts *g, const tr_model *m, int32_t id)
{
    for (uint32_t i = 0; i < g->n_stop_ids; i++)
        if (g->stop_ids[i] == id)
            return 1;
    if (!g->ignore_eos)
        for (size_t i = 0; i < m->cfg.n_eos; i++)
            if (m->cfg.eos_ids[i] == id)
                return 1;
    return 0;
}

typedef struct gen_run {
    int32_t *hist;                    /* prompt then generated ids */
    uint32_t n_prompt, n_out;
    const char *stop_reason;
    double prefill_ms, decode_ms;
    uint64_t seed;
} gen_run;

static int gen_loop(gen_opts *g, tr_model *m, tr_session *s, gen_run *run)
{
    tr_error err;
    tr_sampler *smp;
    const uint32_t V = m->cfg.V;
    float *lg = tr_malloc((size_t)V * sizeof *lg);
    if (!lg || tr_sampler_new(&g->samp, run->seed, V, &smp, &err) != TR_OK) {
        tr_dealloc(lg);
        tr_fail(&err, TR_E_NOMEM, "generate", "out of memory");
        return cli_fail("generate", &err);
    }
    double t0 = now_ms();
    int rc = tr_session_eval(s, run->hist, run->n_prompt, TR_LOGITS_LAST, lg, &err) == TR_OK ? CLI_OK
                                                                                              : cli_fail("generate", &err);
    run->prefill_ms = now_ms() - t0;
    t0 = now_ms();
    run->stop_reason = "length";
    while (rc == CLI_OK && run->n_out < g->max_new) {
        if (g_interrupted) {
            run->stop_reason = "interrupted";
            break;
        }
        int32_t id = tr_sampler_next(smp, lg, run->hist, run->n_prompt + run->n_out);
        run->hist[run->n_prompt + run->n_out++] = id;
        if (is_stop(g, m, id)) {
            run->stop_reason = "stop";
            break;
        }
        if (run->n_out == g->max_new)
            break;
        if (tr_session_length(s) + 1 > tr_session_ctx_size(s)) {
            run->stop_reason = "context";
            fprintf(cli_err, "trellis generate: warning: context full (--ctx-size %u); stopping\n",
                    tr_session_ctx_size(s));
            break;
        }
        if (tr_session_eval(s, &id, 1, TR_LOGITS_LAST, lg, &err) != TR_OK)
            rc = cli_fail("generate", &err);
    }
    run->decode_ms = now_ms() - t0;
    tr_sampler_free(smp);
    tr_dealloc(lg);
    return rc;
}

static json_t *ids_json(const int32_t *ids, uint32_t n)
{
    json_t *a = json_array();
    for (uint32_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

static int gen_json(const gen_opts *g, const gen_run *run, const int32_t *out);

static int gen_report(const gen_opts *g, const gen_run *run)
{
    const int32_t *out = run->hist + run->n_prompt;
    int rc = g->e.json ? gen_json(g, run, out) : CLI_OK;
    if (rc == CLI_OK && g->print_ids) {   /* the last line of stdout */
        for (uint32_t i = 0; i < run->n_out; i++)
            fprintf(cli_out, "%s%d", i ? "," : "", out[i]);
        fprintf(cli_out, "\n");
    }
    return rc;
}

static int gen_json(const gen_opts *g, const gen_run *run, const int32_t *out)
{
    unsigned long mark = tr_json_mark();
    json_t *doc = json_object(), *sp = json_object(), *tm = json_object();
    json_object_set_new(doc, "schema", json_string("trellis.generate/1"));
    json_object_set_new(doc, "prompt_ids", ids_json(run->hist, run->n_prompt));
    json_object_set_new(doc, "output_ids", ids_json(out, run->n_out));
    json_object_set_new(doc, "text", json_string(""));
    json_object_set_new(doc, "stop_reason", json_string(run->stop_reason));
    json_object_set_new(doc, "seed", json_integer((json_int_t)run->seed));
    json_object_set_new(sp, "do_sample", json_boolean(!tr_sampling_is_greedy(&g->samp)));
    json_object_set_new(sp, "temperature", json_real(g->samp.temperature));
    json_object_set_new(sp, "top_k", json_integer(g->samp.top_k));
    json_object_set_new(sp, "top_p", json_real(g->samp.top_p));
    json_object_set_new(sp, "min_p", json_real(g->samp.min_p));
    json_object_set_new(sp, "repetition_penalty", json_real(g->samp.repetition_penalty));
    json_object_set_new(doc, "sampling", sp);
    uint32_t steps = run->n_out > 1 ? run->n_out - 1 : 0;
    json_object_set_new(tm, "prefill_ms", json_real(run->prefill_ms));
    json_object_set_new(tm, "decode_ms_per_token", steps ? json_real(run->decode_ms / steps) : json_null());
    json_object_set_new(tm, "tokens_per_second", run->decode_ms > 0 && steps ? json_real(steps * 1e3 / run->decode_ms)
                                                                            : json_null());
    json_object_set_new(doc, "timings", tm);
    int rc = cli_write_json("generate", g->e.json, doc, mark);
    json_decref(doc);
    return rc;
}

static int gen_prompt(gen_opts *g, tr_model *m, tr_session *s, gen_run *run)
{
    int32_t *ids = NULL;
    uint32_t n = 0;
    int rc;
    if (g->prompt || g->prompt_file) {
        tr_error err;
        tr_fail(&err, TR_E_UNSUPPORTED, g->prompt ? "-p" : g->prompt_file,
                "text prompts need the tokenizer, which this build does not have yet; use --ids");
        return cli_fail("generate", &err);
    }
    rc = g->ids_text ? eng_parse_ids("generate", "--ids", g->ids_text, &ids, &n)
                     : eng_read_ids_file("generate", g->ids_file, &ids, &n);
    if (rc == CLI_OK)
        rc = eng_check_ids("generate", g->ids_text ? "--ids" : g->ids_file, ids, n, m->cfg.V);
    if (rc == CLI_OK && n > tr_session_ctx_size(s)) {
        tr_error err;
        tr_fail(&err, TR_E_INPUT, "prompt", "prompt has %u tokens, --ctx-size is %u", n, tr_session_ctx_size(s));
        rc = cli_fail("generate", &err);
    }
    if (rc == CLI_OK && !(run->hist = tr_malloc(((size_t)n + g->max_new) * sizeof *run->hist))) {
        fprintf(cli_err, "trellis generate: error: out of memory\n");
        rc = CLI_RESOURCE;
    }
    if (rc == CLI_OK) {
        memcpy(run->hist, ids, (size_t)n * sizeof *ids);
        run->n_prompt = n;
    }
    tr_dealloc(ids);
    return rc;
}

int cmd_generate(int argc, char **argv)
{
    static const char *const CMD = "generate";
    gen_opts g;
    memset(&g, 0, sizeof g);
    eng_opts_init(&g.e);
    g.max_new = 256;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i]))
            return generate_help(), CLI_OK;
        int r = gen_opt(argc, argv, &i, &g);
        if (r == 0)
            r = eng_opt(CMD, argc, argv, &i, &g.e);
        if (r < 0)
            return CLI_USAGE;
        if (r == 0)
            return cli_usage(CMD, "unknown option %s", argv[i]);
    }
    int sources = !!g.ids_text + !!g.ids_file + !!g.prompt + !!g.prompt_file;
    if (sources != 1)
        return cli_usage(CMD, "give exactly one of -p, -f, --ids or --ids-file");
    tr_model *m = NULL;
    tr_session *s = NULL;
    gen_run run = {0};
    int rc = eng_open(CMD, &g.e, &m, &s);
    if (rc == CLI_OK)
        rc = resolve_sampling(&g, g.e.model);
    if (rc == CLI_OK)
        rc = gen_prompt(&g, m, s, &run);
    if (rc == CLI_OK) {
        run.seed = eng_seed(&g.e);
        g_interrupted = 0;
        void (*old)(int) = signal(SIGINT, on_sigint);
        rc = gen_loop(&g, m, s, &run);
        signal(SIGINT, old);
    }
    if (rc == CLI_OK)
        rc = gen_report(&g, &run);
    if (rc == CLI_OK && !strcmp(run.stop_reason, "interrupted"))
        rc = CLI_INTERRUPTED;
    tr_dealloc(run.hist);
    tr_session_free(s);
    tr_model_free(m);
    return rc;
}
