/*
 * cli_run.h — run `trellis` commands in-process from tests, capturing stdout and stderr.
 */
#ifndef TRELLIS_TESTS_CLI_RUN_H
#define TRELLIS_TESTS_CLI_RUN_H

typedef struct cli_result {
    int status;
    char *out;     /* malloc'ed, NUL-terminated */
    char *err;
} cli_result;

/* argv[0] is the command ("inspect", ...); the list ends with NULL. */
cli_result cli_run(const char *first, ...);
void cli_result_free(cli_result *r);

#endif
