/*
 * conform.h — the pieces of `trellis conform` (HARNESS.md §3) shared by cmd_conform.c (orchestration: enumeration,
 * worker processes, JSON, exit status), conform_exec.c (one case: inputs, reference, guarded backend run,
 * comparison) and capture.c (the trellis.capture/1 folder format, read and written).
 */
#ifndef TRELLIS_CLI_CONFORM_H
#define TRELLIS_CLI_CONFORM_H

#include "trellis/backend.h"
#include "trellis/registry.h"

#include <jansson.h>

#define CONFORM_GUARD_BYTES 64
#define CONFORM_GUARD_PATTERN 0xDEADBEEFu      /* little-endian 4-byte repeat around every output */

/* Where a case's outputs come from. */
typedef struct conform_source {
    tr_backend *be;            /* a live backend, or NULL for a capture */
    json_t *capture_case;      /* capture: the manifest entry of this case */
    const char *capture_dir;
} conform_source;

typedef struct conform_opts {
    const char *backend_name;  /* as given: "cpu", "ref", "capture:DIR" */
    int bench, reps;
    const char *capture_out;   /* write a capture of each case here (NULL = no) */
    double kernel_timeout;     /* seconds the backend's run may take (0 = no limit): the process exits with
                                  CONFORM_EXIT_TIMEOUT when it runs over */
} conform_opts;

#define CONFORM_EXIT_TIMEOUT 124

/* Run one case and return its result object (schema of HARNESS.md §3 "results" entries). */
json_t *conform_exec(const tr_case *c, const conform_source *src, const conform_opts *o);

/* Replay command of a case. */
void conform_replay(char *buf, size_t cap, const char *backend, const tr_case *c);

/* ---- captures (capture.c) ------------------------------------------------------------------------------------ */

/* Write one case (inputs in canonical form, outputs with their guard bytes) under dir/cases/<index>/ and return its
 * manifest entry. */
json_t *capture_write_case(const char *dir, uint64_t index, const tr_case *c, const tr_bufs *in, const tr_bufs *got,
                           uint8_t *const *guarded, tr_error *err);
/* Write dir/manifest.json from the collected entries (schema trellis.capture/1). */
int capture_write_manifest(const char *dir, json_t *cases, tr_error *err);
/* Read dir/manifest.json (checks schema and members). */
int capture_read_manifest(const char *dir, json_t **manifest, tr_error *err);
/* Load one case: its inputs, and its outputs (guarded allocations as recorded) — sha256 of every file checked. */
int capture_load_case(const char *dir, json_t *entry, tr_bufs *in, tr_bufs *got, uint8_t **guarded, tr_error *err);

/* Guarded output allocation: CONFORM_GUARD_BYTES of pattern on each side of n data bytes. */
uint8_t *conform_guarded_alloc(size_t n);
/* 0 when both guards are intact, else the offset (1-based from the data start, negative before) of the first
 * changed guard byte in *where. */
int conform_guards_intact(const uint8_t *block, size_t n, long *where);

#endif
