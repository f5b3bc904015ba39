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
#include "gen_common.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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

typedef struct gen_opts {
    eng_opts e;
    sampling_flags f;
    const char *ids_text, *ids_file, *prompt, *prompt_file, *system;
    int print_ids, no_stream, show_special, chat, no_think;
} gen_opts;

static void generate_help(void)
{
    fprintf(cli_out,
            "Usage: trellis generate -m DIR (-p TEXT | -f FILE | --ids 1,2,3 | --ids-file FILE) [-n N]\n"
            "         [--temp T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R] [--greedy]\n"
            "         [--chat] [--system TEXT] [--no-think] [--stop-id ID]... [--ignore-eos] [--show-special]\n"
            "         [--no-stream] [--print-ids] [options]\n"
            "  Raw completion (ENGINE.md §5); --chat wraps the prompt as one user message of the model's template.\n"
            "  -n: max new tokens (default 256, counting the stop token).  The text streams to stdout as tokens\n"
            "  are sampled; --print-ids prints the generated ids as the last line of stdout.\n%s",
            ENG_OPTS_HELP);
}

/* One generate-specific option; returns 1 consumed, 0 not ours, -1 usage error printed. */
static int gen_opt(int argc, char **argv, int *i, gen_opts *g)
{
    static const char *const CMD = "generate";
    static const char *const valued[] = {"--ids", "--ids-file", "-p", "-f", "--system"};
    const char **slots[] = {&g->ids_text, &g->ids_file, &g->prompt, &g->prompt_file, &g->system};
    const char *v;
    for (int k = 0; k < 5; k++) {
        int r = cli_opt(argc, argv, i, valued[k], &v);
        if (r < 0)
            return cli_usage(CMD, "%s needs a value", valued[k]), -1;
        if (r > 0) {
            *slots[k] = v;
            return 1;
        }
    }
    const char *a = argv[*i];
    int *flag = !strcmp(a, "--print-ids")    ? &g->print_ids
              : !strcmp(a, "--no-stream")    ? &g->no_stream
              : !strcmp(a, "--show-special") ? &g->show_special
              : !strcmp(a, "--chat")         ? &g->chat
              : !strcmp(a, "--no-think")     ? &g->no_think : NULL;
    if (!flag)
        return sampling_flag(CMD, argc, argv, i, &g->f);
    *flag = 1;
    return 1;
}

/* The prompt ids: --ids / --ids-file, or text (raw, or rendered as one user message with --chat) encoded with
 * parse_special = true. */
static int gen_prompt(gen_opts *g, const tr_model *m, const tr_tokenizer *tok, int32_t **ids, uint32_t *n)
{
    tr_error err;
    if (g->ids_text || g->ids_file) {
        int rc = g->ids_text ? eng_parse_ids("generate", "--ids", g->ids_text, ids, n)
                             : eng_read_ids_file("generate", g->ids_file, ids, n);
        return rc == CLI_OK ? eng_check_ids("generate", g->ids_text ? "--ids" : g->ids_file, *ids, *n, m->cfg.V) : rc;
    }
    char *text = NULL, *rendered = NULL;
    size_t len = 0;
    const char *where = g->prompt ? "-p" : g->prompt_file;
    int rc = CLI_OK;
    if (g->prompt) {
        text = tr_strdup(g->prompt);
        len = text ? strlen(text) : 0;
    } else if (tr_file_read_all(g->prompt_file, &text, &len, &err) != TR_OK)
        return cli_fail("generate", &err);
    if (!text)
        rc = tr_fail(&err, TR_E_NOMEM, "generate", "out of memory");
    if (rc == CLI_OK && g->chat) {
        tr_chat_msg msgs[2] = {{"system", g->system, NULL}, {"user", text, NULL}};
        int style = tr_chat_style_for(tr_arch_name(m->cfg.arch));
        rc = tr_chat_render((tr_chat_style)style, g->system ? msgs : msgs + 1, g->system ? 2 : 1, 1, !g->no_think,
                            &rendered, &len, &err);
    }
    size_t count = 0;
    if (rc == CLI_OK)
        rc = tr_tokenizer_encode(tok, rendered ? rendered : text, len, 1, where, ids, &count, &err);
    *n = (uint32_t)count;
    tr_dealloc(text);
    tr_dealloc(rendered);
    return rc == TR_OK ? CLI_OK : cli_fail("generate", &err);
}

static json_t *ids_json(const int32_t *ids, uint32_t n)
{
    json_t *a = json_array();
    for (uint32_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

static int gen_json(const gen_opts *g, const tr_sampling *sp, uint64_t seed, const int32_t *prompt,
                    uint32_t n_prompt, const gen_result *r)
{
    unsigned long mark = tr_json_mark();
    json_t *doc = json_object(), *so = json_object(), *tm = json_object();
    json_object_set_new(doc, "schema", json_string("trellis.generate/1"));
    json_object_set_new(doc, "prompt_ids", ids_json(prompt, n_prompt));
    json_object_set_new(doc, "output_ids", ids_json(r->ids, r->n));
    json_object_set_new(doc, "text", json_stringn(r->text ? r->text : "", r->text_len));
    json_object_set_new(doc, "stop_reason", json_string(r->stop_reason));
    json_object_set_new(doc, "seed", json_integer((json_int_t)seed));
    json_object_set_new(so, "do_sample", json_boolean(!tr_sampling_is_greedy(sp)));
    json_object_set_new(so, "temperature", json_real(sp->temperature));
    json_object_set_new(so, "top_k", json_integer(sp->top_k));
    json_object_set_new(so, "top_p", json_real(sp->top_p));
    json_object_set_new(so, "min_p", json_real(sp->min_p));
    json_object_set_new(so, "repetition_penalty", json_real(sp->repetition_penalty));
    json_object_set_new(doc, "sampling", so);
    uint32_t steps = r->n > 1 ? r->n - 1 : 0;
    json_object_set_new(tm, "prefill_ms", json_real(r->prefill_ms));
    json_object_set_new(tm, "decode_ms_per_token", steps ? json_real(r->decode_ms / steps) : json_null());
    json_object_set_new(tm, "tokens_per_second", steps && r->decode_ms > 0 ? json_real(steps * 1e3 / r->decode_ms)
                                                                          : json_null());
    json_object_set_new(doc, "timings", tm);
    int rc = cli_write_json("generate", g->e.json, doc, mark);
    json_decref(doc);
    return rc;
}

static int gen_report(const gen_opts *g, const tr_sampling *sp, uint64_t seed, const int32_t *prompt,
                      uint32_t n_prompt, const gen_result *r, int streamed)
{
    if (!streamed && r->text && !(g->e.json && !strcmp(g->e.json, "-")))
        fwrite(r->text, 1, r->text_len, cli_out);
    if (r->text && r->text_len && !(g->e.json && !strcmp(g->e.json, "-")))
        fputc('\n', cli_out);
    int rc = g->e.json ? gen_json(g, sp, seed, prompt, n_prompt, r) : CLI_OK;
    if (rc == CLI_OK && g->print_ids) {   /* the last line of stdout */
        for (uint32_t i = 0; i < r->n; i++)
            fprintf(cli_out, "%s%d", i ? "," : "", r->ids[i]);
        fprintf(cli_out, "\n");
    }
    return rc;
}

int cmd_generate(int argc, char **argv)
{
    static const char *const CMD = "generate";
    gen_opts g;
    memset(&g, 0, sizeof g);
    eng_opts_init(&g.e);
    sampling_flags_init(&g.f);
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
    if (!!g.ids_text + !!g.ids_file + !!g.prompt + !!g.prompt_file != 1)
        return cli_usage(CMD, "give exactly one of -p, -f, --ids or --ids-file");
    if (g.chat && (g.ids_text || g.ids_file))
        return cli_usage(CMD, "--chat needs a text prompt (-p or -f)");
    tr_model *m = NULL;
    tr_session *s = NULL;
    tr_tokenizer *tok = NULL;
    tr_sampler *smp = NULL;
    int32_t *prompt = NULL, *stop = NULL;
    uint32_t n_prompt = 0;
    size_t n_stop = 0;
    tr_sampling sp;
    gen_result res = {0};
    int rc = eng_open(CMD, &g.e, &m, &s);
    /* the tokenizer is needed for text in and out; --ids works without one */
    int need_tok = g.prompt || g.prompt_file;
    if (rc == CLI_OK && (need_tok || tr_path_is_file(g.e.tokenizer ? g.e.tokenizer : "")))
        rc = gen_load_tokenizer(CMD, &g.e, &tok);
    else if (rc == CLI_OK) {
        char *p = tr_path_join(g.e.model, "tokenizer.json");
        if (p && tr_path_is_file(p))
            rc = gen_load_tokenizer(CMD, &g.e, &tok);
        tr_dealloc(p);
    }
    if (rc == CLI_OK)
        rc = sampling_resolve(CMD, &g.f, g.e.model, &sp);
    if (rc == CLI_OK)
        rc = gen_prompt(&g, m, tok, &prompt, &n_prompt);
    if (rc == CLI_OK && n_prompt > tr_session_ctx_size(s)) {
        tr_error err;
        tr_fail(&err, TR_E_INPUT, "prompt", "prompt has %u tokens, --ctx-size is %u", n_prompt, tr_session_ctx_size(s));
        rc = cli_fail(CMD, &err);
    }
    if (rc == CLI_OK && n_prompt == 0)
        rc = cli_usage(CMD, "the prompt encodes to no tokens");
    if (rc == CLI_OK)
        rc = gen_stop_set(CMD, &g.e, m, tok, g.chat, &g.f, &stop, &n_stop);
    uint64_t seed = eng_seed(&g.e);
    tr_error err;
    if (rc == CLI_OK && tr_sampler_new(&sp, seed, m->cfg.V, &smp, &err) != TR_OK)
        rc = cli_fail(CMD, &err);
    int streamed = !g.no_stream && !(g.e.json && !strcmp(g.e.json, "-"));
    if (rc == CLI_OK) {
        gen_ctx gc = {CMD, s, smp, tok, stop, n_stop, g.f.max_new, !g.show_special, streamed ? cli_out : NULL};
        gen_install_sigint();
        rc = gen_run(&gc, prompt, n_prompt, n_prompt, &res);
        gen_restore_sigint();
    }
    if (rc == CLI_OK)
        rc = gen_report(&g, &sp, seed, prompt, n_prompt, &res, streamed);
    if (rc == CLI_OK && !strcmp(res.stop_reason, "interrupted"))
        rc = CLI_INTERRUPTED;
    gen_result_release(&res);
    tr_sampler_free(smp);
    tr_dealloc(prompt);
    tr_dealloc(stop);
    tr_tokenizer_free(tok);
    tr_session_free(s);
    tr_model_free(m);
    return rc;
}
