/*
 * cli.c — command dispatch, --help/--version, and the helpers every subcommand shares.
 */
#include "cli.h"
#include "trellis/alloc.h"
#include "trellis/jsonio.h"
#include "trellis/version.h"

#include <stdarg.h>
#include <string.h>


FILE *cli_out;
FILE *cli_err;

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"conform", cmd_conform, "run the conformance suite of every op and variant against the reference"},
    {"report", cmd_report, "summary.md, index.html, junit.xml from result JSON; diff, merge (conformance shards)"},
    {"study", cmd_study, "accuracy sweep: quantize float models at bit specs, PPL and KLD vs bits per weight"},
    {"inspect", cmd_inspect, "checkpoint directory or safetensors file: layout, tensors, bits, warnings"},
    {"quantize", cmd_quantize, "HF float checkpoint -> trellis v3 with the reference quantizer (FORMAT.md §6.4)"},
    {"dequant", cmd_dequant, "W16 of one quantized tensor as little-endian fp16 [O, I]"},
    {"codebook", cmd_codebook, "EXL3 LUT (3inst|mcg|mul1) or grid table (grid:B)"},
    {"golden", cmd_golden, "verify or regenerate the golden fixtures"},
    {"symbols", cmd_symbols, "kernel entry points of .metal sources against the selection policy"},
    {"metal", cmd_metal, "Metal emulator: build, list and run .metal kernels on the CPU (METAL.md)"},
    {"logits", cmd_logits, "one prefill over token ids; fp32 logits [T, V] of every position to a file"},
    {"generate", cmd_generate, "raw completion from token ids (greedy or sampled, ENGINE.md §5)"},
    {"chat", cmd_chat, "interactive chat with the model's template (or one reply to --messages FILE.json)"},
    {"perplexity", cmd_perplexity, "perplexity of a text or token-id file (llamacpp or hf protocol, ENGINE.md §6)"},
    {"kld", cmd_kld, "two-pass KL divergence: kld base (base-logits file), kld eval (candidate vs base)"},
    {"bench", cmd_bench, "decode and prefill timings, MoE dispatch counters, mixed-bpw statistics (trellis.bench/1)"},
    {"tokenize", cmd_tokenize, "encode text to token ids with a tokenizer.json (ENGINE.md §4)"},
    {"detokenize", cmd_detokenize, "decode token ids to text with a tokenizer.json (ENGINE.md §4)"},
    {"bench-kernels", cmd_bench_kernels, "benchmark the cpu backend's kernels (decode GEMV) against the reference"},
};

static void usage(FILE *f)
{
    fprintf(f, "Usage: trellis <command> [options]   (trellis <command> --help for details)\n\nCommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n  --version   print version and git commit\n");
}

int trellis_main(int argc, char **argv)
{
    if (!cli_out)
        cli_out = stdout;
    if (!cli_err)
        cli_err = stderr;
    if (argc < 2) {
        usage(cli_err);
        return CLI_USAGE;
    }
    if (strcmp(argv[1], "--version") == 0) {
        fprintf(cli_out, "trellis %s (git %s)\n", tr_version(), tr_git_commit());
        return CLI_OK;
    }
    if (cli_is_help(argv[1])) {
        usage(cli_out);
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(cli_err, "trellis: error: unknown command \"%s\"\n", argv[1]);
    usage(cli_err);
    return CLI_USAGE;
}

int cli_fail(const char *cmd, const tr_error *err)
{
    fprintf(cli_err, "trellis %s: error: %s\n", cmd, err->text);
    fflush(cli_err);
    return tr_status_exit_code(err->code);
}

int cli_usage(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(cli_err, "trellis %s: error: ", cmd);
    vfprintf(cli_err, fmt, ap);
    fprintf(cli_err, " (see 'trellis %s --help')\n", cmd);
    va_end(ap);
    fflush(cli_err);
    return CLI_USAGE;
}

int cli_is_help(const char *a) { return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0; }

int cli_opt(int argc, char **argv, int *i, const char *name, const char **val)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *val = argv[++*i];
    return 1;
}

int cli_opt_json(int argc, char **argv, int *i, const char **val)
{
    const char *a = argv[*i];
    if (strncmp(a, "--json=", 7) == 0) {
        *val = a + 7;
        return 1;
    }
    if (strcmp(a, "--json") != 0)
        return 0;
    if (*i + 1 >= argc || (argv[*i + 1][0] == '-' && argv[*i + 1][1] == '-')) {
        *val = "-";
        return 1;
    }
    *val = argv[++*i];
    return 1;
}

int cli_write_json(const char *cmd, const char *path, json_t *doc, unsigned long mark)
{
    char *text = tr_json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER, mark);
    if (!text) {
        fprintf(cli_err, "trellis %s: error: out of memory building JSON output\n", cmd);
        return CLI_RESOURCE;
    }
    int rc = CLI_OK;
    if (strcmp(path, "-") == 0) {
        fprintf(cli_out, "%s\n", text);
        fflush(cli_out);
    } else {
        FILE *f = fopen(path, "w");
        int ok = f != NULL;
        if (ok) {
            ok = fprintf(f, "%s\n", text) >= 0;
            ok = fclose(f) == 0 && ok;
        }
        if (!ok) {
            fprintf(cli_err, "trellis %s: error: %s: cannot write JSON output\n", cmd, path);
            rc = CLI_USAGE;
        }
    }
    tr_dealloc(text);
    return rc;
}
