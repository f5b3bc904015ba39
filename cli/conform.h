/*
 * conform.h — the pieces of `trellis conform` (HARNESS.md §3) shared by cmd_conform.c (orchestration: enumeration,
 * worker processes, JSON, exit status), conform_exec.c (one case: inputs, reference, guarded backend run,
 * comparison) and capture.c (the trellis.capture/1 folder format, read and written).
 */
#ifndef TRELLIS_CLI_CONFORM_H
#define TRELLIS_CLI_CONFORM_H

#include "trellis/backend.h"
#include "trellis/metal_emu.h"
#include "trellis/registry.h"

#include <jansson.h>
#include <stdio.h>

#define CONFORM_GUARD_BYTES 64
#define CONFORM_GUARD_PATTERN 0xDEADBEEFu      /* little-endian 4-byte repeat around every output */

/* ---- metal-emu (conform_metal.c): `.metal` kernels mapped to registry variants and run on the emulator ---------- */

/* A kernel of a built folder mapped to a variant record of an op. */
typedef struct cmetal_variant {
    const tr_opdef *op;
    tr_variant v;              /* a KERNELS.md §4 record, or ours (registry.json, order=canonical) */
    tr_mtl_lib *lib;
    const tr_mtl_kernel *k;
    const char *dir;           /* the folder it was built from */
    int ours;                  /* registered with order=canonical by the folder's registry.json */
    int available;             /* the parameter list matches the binding family */
    char why[320];             /* not available: the mismatch, named */
} cmetal_variant;

typedef struct cmetal_cfg {
    const char *dirs[8];       /* folders of .metal files (default metal/kernels) */
    int ndirs;
    int default_dirs;          /* dirs is the default (a missing folder is "no kernels yet", not an error) */
    const char *cache;         /* NULL: $TRELLIS_METAL_EMU_CACHE or build/metal-emu */
    tr_mtl_schedule sched[8];  /* nsched 0: SG_GREEDY and RANDOM(case seed) */
    int sched_case_seed[8];    /* this RANDOM schedule takes the case seed */
    int nsched;
    int mma_model;
    int workers;               /* OS threads per launch (0: every CPU) */
    double timeout;            /* watchdog per launch, seconds (the runner's --case-timeout) */
    int strict;                /* diagnostics fail the case */
} cmetal_cfg;

typedef struct cmetal_set cmetal_set;
typedef struct cmetal_run cmetal_run;

/* Build every folder of cfg (content-hash cache) and map its kernels (KERNELS.md §4 tables in the registry, plus the
 * folder's registry.json).  TR_OK also when nothing was found (cmetal_kernel_total = 0). */
int cmetal_open(const cmetal_cfg *cfg, cmetal_set **out, tr_error *err);
/* Map the kernels of an already built library (trellis metal list); the set does not own lib. */
int cmetal_open_lib(tr_mtl_lib *lib, const char *dir, cmetal_set **out, tr_error *err);
void cmetal_close(cmetal_set *s);
size_t cmetal_count(const cmetal_set *s);
const cmetal_variant *cmetal_at(const cmetal_set *s, size_t i);
const cmetal_variant *cmetal_find(const cmetal_set *s, const char *op, const char *variant_id);
size_t cmetal_kernel_total(const cmetal_set *s);
/* The set's entry whose record is v (cases point at it). */
const cmetal_variant *cmetal_of_variant(const cmetal_set *s, const tr_variant *v);
/* Files of the set's folders that failed to build. */
size_t cmetal_failed_files(const cmetal_set *s);
/* What a kernel of the set maps to, as one line ("gemm_trellis/gemm_trellis_packed TOLERANT, binding GEMM ok",
 * "unmapped: FP4 op", …). */
const char *cmetal_kernel_mapping(const cmetal_set *s, const tr_mtl_kernel *k, char *buf, size_t cap);
/* 0 when the case can run; else 1 with the UNSUPPORTED reason (binding mismatch, declared domain, data format). */
int cmetal_unsupported(const cmetal_variant *mv, const tr_case *c, char *why, size_t cap);
/* The result JSON's "metal_emu" member: folders, build times, variants, unmapped kernels, semantics. */
json_t *cmetal_set_json(const cmetal_set *s);
void cmetal_print_summary(const cmetal_set *s, FILE *f);

/* One case: adapt the canonical inputs, launch under every schedule with guarded, poisoned buffers, compare the
 * schedules, and convert the outputs back into got (canonical, guarded).  TR_OK when it ran (see cmetal_verdict). */
int cmetal_run_case(const cmetal_variant *mv, const cmetal_cfg *cfg, const tr_case *c, const tr_bufs *in,
                    tr_bufs *got, cmetal_run **out, tr_error *err);
/* Fold the emulator's findings into the comparison's result: TIMEOUT, RESOURCE_ERROR, out-of-bounds writes,
 * schedule-dependent output, diagnostics (FAIL under strict), the uninitialised threadgroup array of a failure. */
void cmetal_verdict(cmetal_run *r, tr_result *res);
/* Seconds the first schedule's launches took (-1 when none ran). */
double cmetal_seconds(const cmetal_run *r);
json_t *cmetal_run_json(const cmetal_run *r);
/* Median seconds of reps launches under the first schedule (--bench). */
double cmetal_time(cmetal_run *r, int reps);
void cmetal_run_free(cmetal_run *r);

/* Where a case's outputs come from. */
typedef struct conform_source {
    tr_backend *be;            /* a live backend, or NULL for a capture or the emulator */
    json_t *capture_case;      /* capture: the manifest entry of this case */
    const char *capture_dir;
    const cmetal_variant *mv;  /* metal-emu: the kernel */
    const cmetal_cfg *mcfg;
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

/* Replay command of a case (" --metal-math safe" for safe-math cases, then the extra options set here, e.g.
 * " --metal-dir DIR" of a metal-emu run). */
void conform_replay(char *buf, size_t cap, const char *backend, const tr_case *c);
void conform_replay_extra(const char *extra);

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
