/*
 * cmd_chat.c — `trellis chat` (ENGINE.md §4, §8): an interactive conversation with the model's chat template.
 *
 * Each turn re-renders the whole history with the generation prompt, keeps the longest common token prefix of the
 * KV cache and prefills only the rest, then samples the reply, streaming it with special tokens shown (so
 * <think>…</think> is visible) and stop tokens hidden.  The reply is stored as decoded text with special tokens kept.
 * Commands: /reset, /think on|off, /exit.  Non-interactive: --messages FILE.json prints one reply; --render-only
 * prints the rendered prompt and its ids.
 */
#include "cli.h"
#include "gen_common.h"
#include "trellis/alloc.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const CMD = "chat";

typedef struct chat_opts {
    eng_opts e;
    sampling_flags f;
    const char *system, *messages;
    int no_think, render_only;
} chat_opts;

/* The conversation: messages with owned strings, and the ids currently in the KV cache. */
typedef struct convo {
    tr_chat_msg *msgs;
    char **owned;                     /* strings this file allocated (freed with the convo) */
    size_t n, cap;
    int32_t *cached;
    size_t n_cached;
    int thinking;
} convo;

static void help(void)
{
    fprintf(cli_out,
            "Usage: trellis chat -m DIR [--system TEXT] [--no-think] [--messages FILE.json [--render-only]]\n"
            "         [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R] [--greedy]\n"
            "         [--stop-id ID]... [options]\n"
            "  Interactive chat with the model's template (GLM-4.7 or ChatML).  Commands: /reset, /think on|off,\n"
            "  /exit.  --messages prints one reply to a JSON array of {role, content}; --render-only prints the\n"
            "  rendered prompt and its ids instead.\n%s",
            ENG_OPTS_HELP);
}

static int convo_add(convo *c, const char *role, const char *content, int own)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 16;
        tr_chat_msg *m = tr_realloc(c->msgs, cap * sizeof *m);
        char **o = m ? tr_realloc(c->owned, cap * sizeof *o) : NULL;
        if (m)
            c->msgs = m;
        if (!m || !o)
            return -1;
        c->owned = o;
        c->cap = cap;
    }
    char *copy = own ? tr_strdup(content) : NULL;
    if (own && !copy)
        return -1;
    c->owned[c->n] = copy;
    c->msgs[c->n++] = (tr_chat_msg){role, own ? copy : content, NULL};
    return 0;
}

static void convo_clear(convo *c, int keep_system)
{
    size_t keep = keep_system && c->n && !strcmp(c->msgs[0].role, "system") ? 1 : 0;
    for (size_t i = keep; i < c->n; i++)
        tr_dealloc(c->owned[i]);
    c->n = keep;
}

static void convo_free(convo *c)
{
    convo_clear(c, 0);
    tr_dealloc(c->msgs);
    tr_dealloc(c->owned);
    tr_dealloc(c->cached);
}

/* Render + encode the conversation with the generation prompt. */
static int render_ids(const tr_model *m, const tr_tokenizer *tok, const convo *c, int32_t **ids, size_t *n,
                      char **text, size_t *len)
{
    tr_error err;
    int style = tr_chat_style_for(tr_arch_name(m->cfg.arch));
    if (tr_chat_render((tr_chat_style)style, c->msgs, c->n, 1, c->thinking, text, len, &err) != TR_OK)
        return cli_fail(CMD, &err);
    if (tr_tokenizer_encode(tok, *text, *len, 1, "conversation", ids, n, &err) != TR_OK)
        return cli_fail(CMD, &err);
    return CLI_OK;
}

/* One assistant turn: keep the cached prefix, prefill the rest, stream the reply, store it. */
static int turn(chat_opts *o, const tr_model *m, tr_session *s, const tr_tokenizer *tok, tr_sampler *smp,
                const int32_t *stop, size_t n_stop, convo *c, FILE *stream)
{
    int32_t *ids = NULL;
    size_t n = 0, len = 0;
    char *text = NULL;
    int rc = render_ids(m, tok, c, &ids, &n, &text, &len);
    tr_dealloc(text);
    if (rc != CLI_OK)
        return rc;
    if (n + 1 > tr_session_ctx_size(s)) {
        tr_error err;
        tr_fail(&err, TR_E_INPUT, "conversation", "%zu tokens, --ctx-size is %u; /reset or raise --ctx-size", n,
                tr_session_ctx_size(s));
        tr_dealloc(ids);
        return cli_fail(CMD, &err);
    }
    size_t keep = 0;
    while (keep < c->n_cached && keep < n && c->cached[keep] == ids[keep])
        keep++;
    if (keep == n)   /* at least one token is evaluated to get the next logits */
        keep--;
    tr_session_truncate(s, (uint32_t)keep);
    if (o->e.verbose)
        fprintf(cli_err, "chat: %zu prompt tokens, %zu reused from the cache\n", n, keep);
    gen_ctx g = {CMD, s, smp, tok, stop, n_stop, o->f.max_new, 0, stream};
    gen_result r;
    gen_install_sigint();
    rc = gen_run(&g, ids, n, (uint32_t)(n - keep), &r);
    gen_restore_sigint();
    if (stream)
        fputc('\n', stream);
    if (rc == CLI_OK && convo_add(c, "assistant", r.text ? r.text : "", 1))
        rc = CLI_RESOURCE;
    /* the cache now holds the prompt and every fed reply token (the last sampled one is not fed) */
    tr_dealloc(c->cached);
    c->n_cached = tr_session_length(s);
    c->cached = tr_malloc((c->n_cached + 1) * sizeof *c->cached);
    if (c->cached) {
        size_t from_prompt = n < c->n_cached ? n : c->n_cached;
        memcpy(c->cached, ids, from_prompt * sizeof *ids);
        for (size_t i = from_prompt; i < c->n_cached; i++)
            c->cached[i] = r.ids[i - n];
    } else
        c->n_cached = 0;
    if (rc == CLI_OK && !strcmp(r.stop_reason, "interrupted"))
        rc = CLI_INTERRUPTED;
    gen_result_release(&r);
    tr_dealloc(ids);
    return rc;
}

/* --render-only: the rendered prompt, then its ids as one comma-separated line. */
static int render_only(const tr_model *m, const tr_tokenizer *tok, const convo *c)
{
    int32_t *ids = NULL;
    size_t n = 0, len = 0;
    char *text = NULL;
    int rc = render_ids(m, tok, c, &ids, &n, &text, &len);
    if (rc == CLI_OK) {
        fwrite(text, 1, len, cli_out);
        fputc('\n', cli_out);
        for (size_t i = 0; i < n; i++)
            fprintf(cli_out, "%s%d", i ? "," : "", ids[i]);
        fputc('\n', cli_out);
    }
    tr_dealloc(text);
    tr_dealloc(ids);
    return rc;
}

static void trim_newline(char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = 0;
}

/* The interactive loop: one line per user turn; EOF or /exit ends it. */
static int interactive(chat_opts *o, const tr_model *m, tr_session *s, const tr_tokenizer *tok, tr_sampler *smp,
                       const int32_t *stop, size_t n_stop, convo *c)
{
    char line[65536];
    int tty = isatty(fileno(stdin));
    for (;;) {
        fputs("> ", cli_out);
        fflush(cli_out);
        if (!fgets(line, sizeof line, stdin))
            break;
        trim_newline(line);
        if (!strcmp(line, "/exit"))
            break;
        if (!strcmp(line, "/reset")) {
            convo_clear(c, 1);
            fputs("(conversation reset)\n", cli_out);
            continue;
        }
        if (!strncmp(line, "/think ", 7) && (!strcmp(line + 7, "on") || !strcmp(line + 7, "off"))) {
            c->thinking = !strcmp(line + 7, "on");
            fprintf(cli_out, "(thinking %s)\n", c->thinking ? "on" : "off");
            continue;
        }
        if (line[0] == '/') {
            fputs("(commands: /reset, /think on|off, /exit)\n", cli_out);
            continue;
        }
        if (!line[0])
            continue;
        if (convo_add(c, "user", line, 1))
            return CLI_RESOURCE;
        int rc = turn(o, m, s, tok, smp, stop, n_stop, c, cli_out);
        if (rc == CLI_INTERRUPTED && tty)
            continue;   /* Ctrl-C stops the reply, not the session */
        if (rc == CLI_USAGE) {   /* a conversation too long for the context: refused, the session goes on */
            c->n--;
            tr_dealloc(c->owned[c->n]);
            continue;
        }
        if (rc != CLI_OK)
            return rc;
    }
    return CLI_OK;
}

static int parse(int argc, char **argv, chat_opts *o)
{
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i]))
            return help(), CLI_OK;
        const char *v;
        int r;
        const char **slot = NULL;
        if ((r = cli_opt(argc, argv, &i, "--system", &v)) != 0)
            slot = &o->system;
        else if ((r = cli_opt(argc, argv, &i, "--messages", &v)) != 0)
            slot = &o->messages;
        if (r < 0)
            return cli_usage(CMD, "%s needs a value", argv[i]);
        if (slot) {
            *slot = v;
            continue;
        }
        if (!strcmp(argv[i], "--no-think"))
            r = o->no_think = 1;
        else if (!strcmp(argv[i], "--render-only"))
            r = o->render_only = 1;
        else if ((r = sampling_flag(CMD, argc, argv, &i, &o->f)) == 0)
            r = eng_opt(CMD, argc, argv, &i, &o->e);
        if (r < 0)
            return CLI_USAGE;
        if (r == 0)
            return cli_usage(CMD, "unknown option %s", argv[i]);
    }
    if (o->render_only && !o->messages)
        return cli_usage(CMD, "--render-only needs --messages FILE.json");
    return -1;
}

static int load_messages(const chat_opts *o, convo *c, char **storage)
{
    tr_error err;
    tr_chat_msg *msgs;
    size_t n;
    if (tr_chat_messages_load(o->messages, &msgs, &n, storage, &err) != TR_OK)
        return cli_fail(CMD, &err);
    for (size_t i = 0; i < n; i++)
        if (convo_add(c, msgs[i].role, msgs[i].content, 0))
            return CLI_RESOURCE;
        else
            c->msgs[c->n - 1].reasoning_content = msgs[i].reasoning_content;
    return CLI_OK;
}

int cmd_chat(int argc, char **argv)
{
    chat_opts o;
    memset(&o, 0, sizeof o);
    eng_opts_init(&o.e);
    sampling_flags_init(&o.f);
    int rc = parse(argc, argv, &o);
    if (rc >= 0)
        return rc;
    rc = CLI_OK;
    tr_model *m = NULL;
    tr_session *s = NULL;
    tr_tokenizer *tok = NULL;
    tr_sampler *smp = NULL;
    int32_t *stop = NULL;
    size_t n_stop = 0;
    char *storage = NULL;
    tr_sampling sp;
    convo c = {0};
    c.thinking = !o.no_think;
    rc = eng_open(CMD, &o.e, &m, &s);
    if (rc == CLI_OK)
        rc = gen_load_tokenizer(CMD, &o.e, &tok);
    if (rc == CLI_OK && tr_chat_style_for(tr_arch_name(m->cfg.arch)) < 0)
        rc = cli_usage(CMD, "no chat template for %s", tr_arch_name(m->cfg.arch));
    if (rc == CLI_OK && o.system && convo_add(&c, "system", o.system, 0))
        rc = CLI_RESOURCE;
    if (rc == CLI_OK && o.messages)
        rc = load_messages(&o, &c, &storage);
    if (rc == CLI_OK && o.render_only) {
        rc = render_only(m, tok, &c);
        goto done;
    }
    if (rc == CLI_OK)
        rc = sampling_resolve(CMD, &o.f, o.e.model, &sp);
    if (rc == CLI_OK)
        rc = gen_stop_set(CMD, &o.e, m, tok, 1, &o.f, &stop, &n_stop);
    tr_error err;
    if (rc == CLI_OK && tr_sampler_new(&sp, eng_seed(&o.e), m->cfg.V, &smp, &err) != TR_OK)
        rc = cli_fail(CMD, &err);
    if (rc == CLI_OK)
        rc = o.messages ? turn(&o, m, s, tok, smp, stop, n_stop, &c, cli_out)
                        : interactive(&o, m, s, tok, smp, stop, n_stop, &c);
done:
    convo_free(&c);
    tr_dealloc(storage);
    tr_dealloc(stop);
    tr_sampler_free(smp);
    tr_tokenizer_free(tok);
    tr_session_free(s);
    tr_model_free(m);
    return rc;
}
