/*
 * fuzz.h — shared helpers of the fuzz targets (HARNESS.md §6), header-only so that every target is one .c file.
 *
 * Each target defines LLVMFuzzerTestOneInput and nothing else with external linkage.  The same object links with
 * libFuzzer (`make fuzz`, clang, ASan + UBSan), with fuzz/replay.c (`make fuzz-replay`, gcc, the normal flags) or
 * with an AFL++ driver (fuzz/README.md).  Targets must be deterministic, must not leak, and write only inside the
 * temporary folder they own (fuzz_tmpdir, removed at exit).
 */
#ifndef TRELLIS_FUZZ_H
#define TRELLIS_FUZZ_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FUZZ_MAX_INPUT (1u << 20)   /* inputs are capped at 1 MiB (HARNESS.md §6) */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A setup step failed (not a finding about the input): say so and stop.  abort() so that the fuzzer reports it
 * instead of silently running a target that tests nothing. */
#define FUZZ_SETUP_CHECK(cond, ...)                                                                                   \
    do {                                                                                                              \
        if (!(cond)) {                                                                                                \
            fprintf(stderr, "fuzz setup: " __VA_ARGS__);                                                              \
            fputc('\n', stderr);                                                                                      \
            abort();                                                                                                  \
        }                                                                                                             \
    } while (0)

/* An invariant of the code under test does not hold: report and abort (the fuzzer saves the input). */
#define FUZZ_ASSERT(cond, ...)                                                                                        \
    do {                                                                                                              \
        if (!(cond)) {                                                                                                \
            fprintf(stderr, "fuzz invariant violated (%s:%d): %s: ", __FILE__, __LINE__, #cond);                      \
            fprintf(stderr, __VA_ARGS__);                                                                             \
            fputc('\n', stderr);                                                                                      \
            abort();                                                                                                  \
        }                                                                                                             \
    } while (0)

/* ---- a byte reader over the input: reads past the end give zeros ------------------------------------------------- */

typedef struct fuzz_bytes {
    const uint8_t *p;
    size_t n, pos;
} fuzz_bytes;

static inline uint8_t fuzz_u8(fuzz_bytes *b) { return b->pos < b->n ? b->p[b->pos++] : 0; }

static inline uint16_t fuzz_u16(fuzz_bytes *b)
{
    uint16_t lo = fuzz_u8(b);
    return (uint16_t)(lo | (uint16_t)fuzz_u8(b) << 8);
}

static inline uint32_t fuzz_u32(fuzz_bytes *b)
{
    uint32_t lo = fuzz_u16(b);
    return lo | (uint32_t)fuzz_u16(b) << 16;
}

static inline float fuzz_f32(fuzz_bytes *b)
{
    uint32_t u = fuzz_u32(b);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline size_t fuzz_left(const fuzz_bytes *b) { return b->pos < b->n ? b->n - b->pos : 0; }

/* ---- the target's temporary folder ------------------------------------------------------------------------------ */

static char fuzz_dir_[512];

/* Remove every plain entry of dir and its sub-folders (the folders the targets create are one or two levels deep),
 * then dir itself. */
static inline void fuzz_rmtree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char path[2048];
            if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= sizeof path)
                continue;
            struct stat st;
            if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
                fuzz_rmtree(path);
            else
                unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

static inline void fuzz_tmpdir_cleanup_(void)
{
    if (fuzz_dir_[0])
        fuzz_rmtree(fuzz_dir_);
    fuzz_dir_[0] = '\0';
}

/* The folder this process owns (created on first use under $TMPDIR or /tmp, removed at exit). */
static inline const char *fuzz_tmpdir(const char *target)
{
    if (!fuzz_dir_[0]) {
        const char *base = getenv("TMPDIR");
        if (!base || !*base)
            base = "/tmp";
        snprintf(fuzz_dir_, sizeof fuzz_dir_, "%s/trellis-fuzz-%s-XXXXXX", base, target);
        FUZZ_SETUP_CHECK(mkdtemp(fuzz_dir_) != NULL, "cannot create a temporary folder under %s", base);
        atexit(fuzz_tmpdir_cleanup_);
    }
    return fuzz_dir_;
}

/* dir/name into buf (aborts when it does not fit: the names are the targets' own). */
static inline void fuzz_path(char *buf, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(buf, cap, "%s/%s", dir, name);
    FUZZ_SETUP_CHECK(n > 0 && (size_t)n < cap, "path too long: %s/%s", dir, name);
}

/* Write data to path (created or truncated); aborts on failure (the folder is ours). */
static inline void fuzz_write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    FUZZ_SETUP_CHECK(f != NULL, "cannot create %s", path);
    FUZZ_SETUP_CHECK(size == 0 || fwrite(data, 1, size, f) == size, "cannot write %s", path);
    FUZZ_SETUP_CHECK(fclose(f) == 0, "cannot close %s", path);
}

#endif
