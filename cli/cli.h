/*
 * cli.h — what the subcommand files of `trellis` share: the command table, argument helpers, error reporting with
 * the exit codes of HARNESS.md §8, and JSON output to a file or stdout.
 */
#ifndef TRELLIS_CLI_H
#define TRELLIS_CLI_H

#include "trellis/status.h"

#include <jansson.h>
#include <stdio.h>

/* Exit codes of HARNESS.md §8. */
enum {
    CLI_OK = 0,
    CLI_FAILURES = 1,
    CLI_USAGE = 2,
    CLI_INTERNAL = 3,
    CLI_RESOURCE = 4,
    CLI_INTERRUPTED = 130,
};

/* Entry point used by main() and by in-process tests. */
int trellis_main(int argc, char **argv);

/* Subcommands: argv[0] is the command name. */
int cmd_inspect(int argc, char **argv);
int cmd_dequant(int argc, char **argv);
int cmd_codebook(int argc, char **argv);
int cmd_golden(int argc, char **argv);
int cmd_symbols(int argc, char **argv);
int cmd_metal(int argc, char **argv);
int cmd_conform(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_study(int argc, char **argv);
int cmd_bench_kernels(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_kld(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);

/* The oracle subcommands of `trellis golden` (cmd_golden_oracle.c). */
int golden_import_oracle(const char *src, const char *dst, int force);
int golden_verify_oracle(const char *dir, const char **backends, int n_backends, const char *json_path);

/* "trellis CMD: error: <text>" on stderr; returns the exit code of err->code. */
int cli_fail(const char *cmd, const tr_error *err);
/* A usage error: message, then "see 'trellis CMD --help'"; returns 2. */
int cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Is a[i] the option `name` ("--out") or "--out=…"?  On a match *val gets the value (next argument or after '=')
 * and *i advances; returns 1.  Returns -1 when the value is missing, 0 when a[i] is another option. */
int cli_opt(int argc, char **argv, int *i, const char *name, const char **val);
/* --json [FILE|-]: the value is optional; given last or followed by an option it means stdout ("-"). */
int cli_opt_json(int argc, char **argv, int *i, const char **val);
int cli_is_help(const char *a);

/* Write a JSON document built since mark (tr_json_mark, jsonio.h) with 2-space indent and a final newline to path
 * or stdout ("-").  Returns an exit code (4 when an allocation failed while building it). */
int cli_write_json(const char *cmd, const char *path, json_t *doc, unsigned long mark);

/* Streams for in-process testing (default stdout/stderr). */
extern FILE *cli_out;
extern FILE *cli_err;

#endif
