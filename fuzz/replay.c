/*
 * replay.c — a main() for the fuzz targets without libFuzzer (`make fuzz-replay`, part of `make check`).
 *
 *   build/fuzz-replay/<t> PATH...
 *
 * Each PATH is a file or a folder; the plain files of a folder are replayed in bytewise name order (hidden files
 * skipped), each once through LLVMFuzzerTestOneInput.  A folder that does not exist is skipped (a target may have no
 * regression inputs yet).  A violated invariant aborts inside the target, so the exit status and the last "replay:"
 * line name the failing input.  Prints one summary line per run.
 */
#include "fuzz.h"

#include <errno.h>

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int replay_file(const char *path, unsigned long *count)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return 1;
    }
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? 2 * cap : 65536;
            uint8_t *p = realloc(buf, cap);
            if (!p) {
                fclose(f);
                free(buf);
                fprintf(stderr, "replay: %s: out of memory\n", path);
                return 1;
            }
            buf = p;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        fprintf(stderr, "replay: %s: read error\n", path);
        return 1;
    }
    /* Exactly n bytes, like libFuzzer: a copy of that size so that an over-read is visible to sanitizers. */
    uint8_t *in = malloc(n ? n : 1);
    if (!in) {
        free(buf);
        fprintf(stderr, "replay: %s: out of memory\n", path);
        return 1;
    }
    if (n)
        memcpy(in, buf, n);
    free(buf);
    if (getenv("TRELLIS_FUZZ_VERBOSE"))
        fprintf(stderr, "replay: %s (%zu bytes)\n", path, n);
    LLVMFuzzerTestOneInput(in, n);
    free(in);
    (*count)++;
    return 0;
}

static int replay_path(const char *path, unsigned long *count)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return errno == ENOENT ? 0 : (fprintf(stderr, "replay: %s: %s\n", path, strerror(errno)), 1);
    if (!S_ISDIR(st.st_mode))
        return replay_file(path, count);
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return 1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **p = realloc(names, cap * sizeof *p);
            if (!p) {
                rc = 1;
                break;
            }
            names = p;
        }
        if (!(names[n] = strdup(e->d_name))) {
            rc = 1;
            break;
        }
        n++;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n && rc == 0; i++) {
        char full[4096];
        snprintf(full, sizeof full, "%s/%s", path, names[i]);
        if (stat(full, &st) == 0 && S_ISREG(st.st_mode))
            rc = replay_file(full, count);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (rc)
        fprintf(stderr, "replay: %s: cannot list the folder\n", path);
    return rc;
}

int main(int argc, char **argv)
{
    const char *self = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    unsigned long count = 0;
    for (int i = 1; i < argc; i++)
        if (replay_path(argv[i], &count) != 0)
            return 1;
    printf("fuzz-replay %s: %lu inputs, no failure\n", self, count);
    return 0;
}
