/*
 * cmd_tokenize.c — `trellis tokenize` and `trellis detokenize` (ENGINE.md §8), the CLI faces of the tokenizer of
 * ENGINE.md §4.
 *
 *   trellis tokenize --tokenizer FILE (-p TEXT | -f FILE) [--json] [--no-special]
 *       encodes (parse_special true unless --no-special; -f: the file's bytes exactly) and prints the ids as one
 *       comma-separated line, or with --json one bare JSON array.
 *   trellis detokenize --tokenizer FILE --ids 1,2,3
 *       decodes with skip_special false and writes the text's bytes exactly, without an added newline.
 *
 * -m DIR may stand in for --tokenizer DIR/tokenizer.json (ENGINE.md §8's common default).
 */
#include "cli.h"
#include "engine_opts.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/tokenizer.h"

#include <string.h>

typedef struct tok_opts {
    const char *tokenizer, *model, *prompt, *file, *ids;
    int json, no_special;
} tok_opts;

static void tokenize_help(void)
{
    fprintf(cli_out, "Usage: trellis tokenize --tokenizer FILE (-p TEXT | -f FILE) [--json] [--no-special]\n"
                     "  Encode text (ENGINE.md §4) and print the ids as one comma-separated line.\n"
                     "  --tokenizer FILE  tokenizer.json (or -m DIR: DIR/tokenizer.json)\n"
                     "  -p TEXT           the text\n"
                     "  -f FILE           the file's bytes exactly (no newline stripped)\n"
                     "  --json            print one JSON array instead\n"
                     "  --no-special      do not match special added tokens in the text\n");
}

static void detokenize_help(void)
{
    fprintf(cli_out, "Usage: trellis detokenize --tokenizer FILE --ids 1,2,3\n"
                     "  Decode ids (special tokens shown) and write the text exactly, without an added newline.\n"
                     "  --tokenizer FILE  tokenizer.json (or -m DIR: DIR/tokenizer.json)\n");
}

/* Options of both commands; returns -1 when argv[*i] is unknown, -2 when its value is missing, 1 when consumed. */
static int tok_opt(int argc, char **argv, int *i, tok_opts *o)
{
    static const char *const names[] = {"--tokenizer", "-m", "--model", "-p", "-f", "--ids"};
    const char **slots[] = {&o->tokenizer, &o->model, &o->model, &o->prompt, &o->file, &o->ids};
    if (!strcmp(argv[*i], "--json"))
        return o->json = 1;
    if (!strcmp(argv[*i], "--no-special"))
        return o->no_special = 1;
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        const char *v;
        int r = cli_opt(argc, argv, i, names[k], &v);
        if (r < 0)
            return -2;
        if (r > 0) {
            *slots[k] = v;
            return 1;
        }
    }
    return -1;
}

static int parse(const char *cmd, int argc, char **argv, tok_opts *o, void (*help)(void))
{
    memset(o, 0, sizeof *o);
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i]))
            return help(), -1;
        int r = tok_opt(argc, argv, &i, o);
        if (r == -2)
            return cli_usage(cmd, "%s needs a value", argv[i]);
        if (r < 0)
            return cli_usage(cmd, "unknown option %s", argv[i]);
    }
    if (!o->tokenizer && !o->model)
        return cli_usage(cmd, "--tokenizer FILE is required");
    return CLI_OK;
}

/* --tokenizer FILE, else -m DIR → DIR/tokenizer.json. */
static int load(const char *cmd, const tok_opts *o, tr_tokenizer **t)
{
    char *joined = o->tokenizer ? NULL : tr_path_join(o->model, "tokenizer.json");
    if (!o->tokenizer && !joined) {
        fprintf(cli_err, "trellis %s: error: out of memory\n", cmd);
        return CLI_RESOURCE;
    }
    tr_error err;
    int rc = tr_tokenizer_load(o->tokenizer ? o->tokenizer : joined, t, &err);
    tr_dealloc(joined);
    return rc == TR_OK ? CLI_OK : cli_fail(cmd, &err);
}

/* ---- tokenize ------------------------------------------------------------------------------------------------ */

static void print_ids(const int32_t *ids, size_t n, int json)
{
    fputs(json ? "[" : "", cli_out);
    for (size_t i = 0; i < n; i++)
        fprintf(cli_out, i ? ",%d" : "%d", ids[i]);
    fputs(json ? "]\n" : "\n", cli_out);
    fflush(cli_out);
}

static int encode_and_print(const char *cmd, const tr_tokenizer *t, const tok_opts *o)
{
    char *data = NULL;
    size_t size;
    tr_error err;
    if (o->file && tr_file_read_all(o->file, &data, &size, &err) != TR_OK)
        return cli_fail(cmd, &err);
    const char *text = o->file ? data : o->prompt;
    size = o->file ? size : strlen(o->prompt);
    int32_t *ids;
    size_t n;
    int rc = tr_tokenizer_encode(t, text, size, !o->no_special, o->file ? o->file : "-p", &ids, &n, &err);
    tr_dealloc(data);
    if (rc != TR_OK)
        return cli_fail(cmd, &err);
    print_ids(ids, n, o->json);
    tr_dealloc(ids);
    return CLI_OK;
}

int cmd_tokenize(int argc, char **argv)
{
    static const char *const CMD = "tokenize";
    tok_opts o;
    int rc = parse(CMD, argc, argv, &o, tokenize_help);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (o.ids)
        return cli_usage(CMD, "--ids belongs to 'trellis detokenize'");
    if (!o.prompt == !o.file)
        return cli_usage(CMD, "give exactly one of -p TEXT or -f FILE");
    tr_tokenizer *t;
    if ((rc = load(CMD, &o, &t)) != CLI_OK)
        return rc;
    rc = encode_and_print(CMD, t, &o);
    tr_tokenizer_free(t);
    return rc;
}

/* ---- detokenize ---------------------------------------------------------------------------------------------- */

static int decode_and_print(const char *cmd, const tr_tokenizer *t, const int32_t *ids, uint32_t n)
{
    int rc = eng_check_ids(cmd, "--ids", ids, n, tr_tokenizer_size(t));
    if (rc != CLI_OK)
        return rc;
    char *text;
    size_t len, unknown;
    tr_error err;
    if (tr_tokenizer_decode(t, ids, n, 0, &text, &len, &unknown, &err) != TR_OK)
        return cli_fail(cmd, &err);
    if (unknown)
        fprintf(cli_err, "trellis %s: warning: --ids: %zu id(s) have no token and decode to nothing\n", cmd,
                unknown);
    fwrite(text, 1, len, cli_out);
    fflush(cli_out);
    tr_dealloc(text);
    return CLI_OK;
}

int cmd_detokenize(int argc, char **argv)
{
    static const char *const CMD = "detokenize";
    tok_opts o;
    int rc = parse(CMD, argc, argv, &o, detokenize_help);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (o.prompt || o.file || o.json || o.no_special)
        return cli_usage(CMD, "only --tokenizer and --ids apply");
    if (!o.ids)
        return cli_usage(CMD, "--ids 1,2,3 is required");
    int32_t *ids;
    uint32_t n;
    if ((rc = eng_parse_ids(CMD, "--ids", o.ids, &ids, &n)) != CLI_OK)
        return rc;
    tr_tokenizer *t;
    if ((rc = load(CMD, &o, &t)) == CLI_OK) {
        rc = decode_and_print(CMD, t, ids, n);
        tr_tokenizer_free(t);
    }
    tr_dealloc(ids);
    return rc;
}
