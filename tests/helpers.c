/*
 * helpers.c — shared helpers of the test suites: temporary directories, file writing, safetensors images.
 */
#include "tests.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int tr_test_under_valgrind(void) { return getenv("TR_UNDER_VALGRIND") != NULL; }

int tr_test_long(void) { return getenv("TR_LONG_TESTS") != NULL; }

static char tmpdir[4096];

static void remove_tmpdir(void)
{
    if (tmpdir[0]) {
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    }
}

const char *tr_test_tmpdir(void)
{
    if (!tmpdir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/trellis-test-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            abort();
        }
        atexit(remove_tmpdir);
    }
    return tmpdir;
}

const char *tr_test_write(const char *dir, const char *name, const void *data, size_t size)
{
    static char paths[8][4096];
    static int slot;
    char *p = paths[slot++ % 8];
    snprintf(p, 4096, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(p);
        abort();
    }
    return p;
}

uint8_t *tr_test_st_image(const char *header, const void *data, size_t data_size, size_t *out_size)
{
    size_t n = strlen(header);
    uint8_t *buf = malloc(8 + n + data_size + 1);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, header, n);
    if (data_size)
        memcpy(buf + 8 + n, data, data_size);
    *out_size = 8 + n + data_size;
    return buf;
}

/* ---- in-process CLI runs ---------------------------------------------------------------------------------------- */

#include "../cli/cli.h"
#include "cli_run.h"

#include <stdarg.h>

static char *read_stream(FILE *f)
{
    fflush(f);
    long n = ftell(f);
    rewind(f);
    char *s = malloc((size_t)n + 1);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = '\0';
    fclose(f);
    return s;
}

cli_result cli_run(const char *first, ...)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)"trellis";
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 63; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    FILE *o = tmpfile(), *e = tmpfile();
    FILE *save_o = cli_out, *save_e = cli_err;
    cli_out = o;
    cli_err = e;
    cli_result r;
    r.status = trellis_main(argc, argv);
    cli_out = save_o;
    cli_err = save_e;
    r.out = read_stream(o);
    r.err = read_stream(e);
    return r;
}

void cli_result_free(cli_result *r)
{
    free(r->out);
    free(r->err);
}
