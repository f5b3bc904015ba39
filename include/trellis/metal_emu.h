/*
 * metal_emu.h — the Metal emulator (METAL.md): `.metal` sources compiled as C++ on Linux/macOS and run on the CPU,
 * one fiber per lane, threadgroups on worker threads, with the detectors of METAL.md §4.
 *
 * Life cycle
 *   tr_mtl_build(path, opts, &lib, err)     build a folder (every *.metal below it, bytewise path order) or one file
 *                                           into a library: preprocess (system C preprocessor, empty <metal_stdlib>),
 *                                           rewrite (metal/emu/rewrite/), compile with the C++ compiler into one
 *                                           shared object per .metal file, dlopen each.  Every file is cached by the
 *                                           SHA-256 of its preprocessed text, the emulator version, the shim and the
 *                                           compiler command under <cache>/<hash>/ (default build/metal-emu, or
 *                                           $TRELLIS_METAL_EMU_CACHE); a file that fails to build is reported in the
 *                                           library's file list and its kernels are absent (the others load).
 *   tr_mtl_kernel_count / _at / tr_mtl_find  the kernels with their parameter metadata (from the compiled module:
 *                                           binding kind and index, address space, element type and size).
 *   tr_mtl_check_binding(k, family, …)       does the parameter list match a binding family (KERNELS.md §3:
 *                                           "indices, buffer vs texture, element dtype")?  The mismatch is named.
 *   tr_mtl_args_*                            the argument table: buffers are caller-owned memory (the conformance
 *                                           runner passes the data part of its guarded allocations, so out-of-bounds
 *                                           stores land in the guard bytes), setBytes-style copies, textures,
 *                                           samplers, dynamic threadgroup memory lengths, function constants.
 *   tr_mtl_dispatch(lib, k, args, launch, &res, err)
 *                                           one launch with a grid, a threadgroup size and a schedule policy; res
 *                                           gets the status (OK, RESOURCE_ERROR, TIMEOUT, INVALID), diagnostics and
 *                                           statistics.
 *
 * Phase 2 (the conformance runner, `trellis conform --backend metal-emu`): build metal/kernels/ (and --metal-dir),
 * find a symbol with tr_mtl_find ("stem:kernel" or bare "kernel"), UNSUPPORTED when absent or when
 * tr_mtl_check_binding names a mismatch, bind the adapter's buffers by index (outputs inside guarded allocations),
 * launch with the variant's listed grid/threadgroup under each policy of --metal-schedules (outputs that differ
 * between policies: FAIL "schedule-dependent output"), map TR_MTL_RESOURCE_ERROR → RESOURCE_ERROR and
 * TR_MTL_TIMEOUT → TIMEOUT, and attach res.diags to the case (FAIL under --strict).
 *
 * Semantics (METAL.md §3, §4): half is binary16 with one rounding per operation; simdgroups are 32 lanes; lanes
 * switch only at scheduling points (threadgroup_barrier, simdgroup_barrier, simd/quad collectives, simdgroup matrix
 * loads and stores), so a kernel without them runs each lane straight through; fresh threadgroup memory is filled with
 * 0xFF; more than 32 KiB of it is RESOURCE_ERROR; a watchdog turns livelock and spin-waits into TIMEOUT.
 *
 * Threading: a library may be used by one launch at a time (launches lock it); different libraries are independent.
 * The watchdog interrupts a worker with the real-time signal SIGRTMIN+4 (a handler is installed on first use).
 */
#ifndef TRELLIS_METAL_EMU_H
#define TRELLIS_METAL_EMU_H

#include "trellis/safetensors.h"
#include "trellis/status.h"

#include <stddef.h>
#include <stdint.h>

/* ---- building and loading ------------------------------------------------------------------------------------ */

typedef struct tr_mtl_lib tr_mtl_lib;

typedef struct tr_mtl_build_opts {
    const char *cache_dir;     /* NULL: $TRELLIS_METAL_EMU_CACHE, else "build/metal-emu" (relative to the cwd) */
    const char *cxx;           /* NULL: $TRELLIS_METAL_EMU_CXX, else "g++" */
    int jobs;                  /* parallel compiler processes; 0: number of online CPUs */
    int force;                 /* rebuild cached files */
    int verbose;               /* progress lines on stderr */
} tr_mtl_build_opts;

/* Build status of one .metal file of a library. */
typedef struct tr_mtl_file {
    const char *path;          /* as found under the built path */
    const char *stem;          /* path relative to the built folder without ".metal" ("decode/specialized") */
    const char *cache_dir;     /* <cache>/<hash>: X.cpp, X.json, X.so, build.log */
    int ok;                    /* 1 built and loaded */
    int cached;                /* 1 reused from the cache */
    double seconds;            /* preprocess + rewrite + compile time of this build (0 when cached) */
    const char *log;           /* rewriter and compiler diagnostics (may be empty) */
} tr_mtl_file;

/* Build (or reuse) path (a folder or a .metal file) into *out.  Returns TR_OK even when some files fail to build
 * (see tr_mtl_file_at); TR_E_IO when path cannot be read, TR_E_UNSUPPORTED when no working C++ compiler with
 * _Float16 is found (the message says which compiler and why), TR_E_NOMEM. */
int tr_mtl_build(const char *path, const tr_mtl_build_opts *opts, tr_mtl_lib **out, tr_error *err);
void tr_mtl_close(tr_mtl_lib *lib);

/* Preprocess and rewrite one .metal file without compiling it (debugging, `trellis metal rewrite`): *cpp gets the
 * generated C++, *meta the module metadata JSON (schema trellis.metal_emu_module/1), *errors the rewriter's
 * "file:line: error: …" lines or NULL.  Free each with tr_dealloc.  TR_OK (also when the source has errors),
 * TR_E_IO, TR_E_INPUT (preprocessing failed), TR_E_UNSUPPORTED (no usable compiler), TR_E_NOMEM. */
int tr_mtl_rewrite_file(const char *path, const tr_mtl_build_opts *opts, char **cpp, char **meta, char **errors,
                        tr_error *err);

size_t tr_mtl_file_count(const tr_mtl_lib *lib);
const tr_mtl_file *tr_mtl_file_at(const tr_mtl_lib *lib, size_t i);

/* ---- kernels and their parameters ------------------------------------------------------------------------------ */

typedef enum tr_mtl_param_kind {
    TR_MTL_BUFFER = 0, TR_MTL_TEXTURE, TR_MTL_SAMPLER, TR_MTL_THREADGROUP, TR_MTL_BUILTIN
} tr_mtl_param_kind;
typedef enum tr_mtl_space {
    TR_MTL_SPACE_NONE = 0, TR_MTL_SPACE_DEVICE, TR_MTL_SPACE_CONSTANT, TR_MTL_SPACE_THREADGROUP, TR_MTL_SPACE_THREAD
} tr_mtl_space;
typedef enum tr_mtl_passing { TR_MTL_POINTER = 0, TR_MTL_REFERENCE, TR_MTL_VALUE } tr_mtl_passing;

typedef struct tr_mtl_param {
    const char *name;
    tr_mtl_param_kind kind;
    int index;                 /* binding index; for TR_MTL_BUILTIN the builtin id (name in `builtin`) */
    int explicit_index;        /* 0: Metal's implicit index (first free index of the kind, declaration order) */
    tr_mtl_space space;
    tr_mtl_passing passing;
    int is_const;
    const char *type;          /* as declared: "device const half *" */
    const char *elem_type;     /* "half", "float4", "MoEParams", "texture2d<float, access::read>" */
    unsigned elem_size;        /* sizeof(element) as compiled; 0 for textures, samplers, void */
    int dtype;                 /* tr_dtype of the scalar element (half → F16, float4 → F32, uint → U32, …), -1 */
    int vec_width;             /* 1 for scalars, 2..4 for vectors (packed or not), 0 for other types */
    const char *builtin;       /* TR_MTL_BUILTIN: the attribute name ("thread_position_in_grid") */
    int tex_type;              /* textures: 1 = 1-D, 2 = 2-D, 3 = 2-D array */
    int tex_access;            /* textures: 0 sample, 1 read, 2 write, 3 read_write */
} tr_mtl_param;

typedef struct tr_mtl_tg_decl {
    const char *name, *type, *function;
    int line;
    int site;                  /* library-wide site id (tr_mtl_launch.poison_site) */
} tr_mtl_tg_decl;

typedef struct tr_mtl_kernel {
    const char *name;          /* host name ("moe_trellis_swiglu_decode") */
    const char *qualified;     /* "stem:name" */
    const char *file;          /* .metal path */
    int line;
    int nparams;
    const tr_mtl_param *params;
    int n_tg_decls;            /* threadgroup declarations of the kernel's own body */
    const tr_mtl_tg_decl *tg_decls;
    int n_function_constants;
    const char *const *fc_names;   /* of the kernel's file */
    const int *fc_indices;
} tr_mtl_kernel;

size_t tr_mtl_kernel_count(const tr_mtl_lib *lib);
const tr_mtl_kernel *tr_mtl_kernel_at(const tr_mtl_lib *lib, size_t i);
/* "stem:name" or a bare name.  A bare name defined by several files is ambiguous: NULL with *ambiguous = 1. */
const tr_mtl_kernel *tr_mtl_find(const tr_mtl_lib *lib, const char *name, int *ambiguous);
/* The parameter bound at (kind, index), or NULL. */
const tr_mtl_param *tr_mtl_param_at(const tr_mtl_kernel *k, tr_mtl_param_kind kind, int index);

/* One slot of a binding family (KERNELS.md §3/§4): kind, index and, when known, the element dtype (-1: any) and
 * whether it must be writable (-1: don't care). */
typedef struct tr_mtl_slot {
    tr_mtl_param_kind kind;
    int index;
    int dtype;                 /* tr_dtype or -1 */
    int writable;              /* 1 output, 0 input, -1 either */
} tr_mtl_slot;
/* 0 when every slot is declared by the kernel with a matching kind and dtype and the kernel declares no binding
 * outside the family; else 1 with the first mismatch named in why ("buffer 5: kernel declares half, the family
 * needs f32"). */
int tr_mtl_check_binding(const tr_mtl_kernel *k, const tr_mtl_slot *slots, int n, char *why, size_t cap);

/* ---- arguments ----------------------------------------------------------------------------------------------- */

typedef struct tr_mtl_args tr_mtl_args;

typedef enum tr_mtl_pixel_format {
    TR_MTL_R32F = 1, TR_MTL_RG32F, TR_MTL_RGBA32F, TR_MTL_R16F, TR_MTL_RG16F, TR_MTL_RGBA16F, TR_MTL_R8UNORM,
    TR_MTL_RG8UNORM, TR_MTL_RGBA8UNORM, TR_MTL_R32U, TR_MTL_RG32U, TR_MTL_RGBA32U, TR_MTL_R32I, TR_MTL_RG32I,
    TR_MTL_RGBA32I, TR_MTL_R16U, TR_MTL_R16I, TR_MTL_R8U, TR_MTL_R8I
} tr_mtl_pixel_format;

typedef struct tr_mtl_texture {
    void *data;                /* caller-owned */
    int type;                  /* 1 = 1-D, 2 = 2-D, 3 = 2-D array */
    tr_mtl_pixel_format format;
    uint32_t width, height, array_length;
    size_t row_bytes, slice_bytes;     /* 0: tightly packed */
} tr_mtl_texture;

typedef struct tr_mtl_sampler {
    int linear;                /* 0 nearest, 1 linear (min and mag) */
    int address;               /* 0 clamp_to_edge, 1 clamp_to_zero, 2 clamp_to_border, 3 repeat, 4 mirrored_repeat */
    int normalized;            /* 1 normalized coordinates (Metal's default) */
} tr_mtl_sampler;

tr_mtl_args *tr_mtl_args_new(void);
void tr_mtl_args_free(tr_mtl_args *a);
void tr_mtl_args_clear(tr_mtl_args *a);
/* setBuffer: the kernel reads and writes data[0..bytes) directly (bytes is informative: no bounds are enforced; the
 * runner's guard bytes around the allocation catch stores past the end). */
int tr_mtl_set_buffer(tr_mtl_args *a, int index, void *data, size_t bytes, tr_error *err);
/* setBytes: a private copy of data. */
int tr_mtl_set_bytes(tr_mtl_args *a, int index, const void *data, size_t bytes, tr_error *err);
int tr_mtl_set_texture(tr_mtl_args *a, int index, const tr_mtl_texture *t, tr_error *err);
int tr_mtl_set_sampler(tr_mtl_args *a, int index, const tr_mtl_sampler *s, tr_error *err);
int tr_mtl_set_threadgroup_memory(tr_mtl_args *a, int index, size_t bytes, tr_error *err);
/* Function constant [[function_constant(index)]]: value's first `bytes` bytes (≤ 8, little-endian, the declared
 * type's representation: bool 1 byte, float 4, half 2, …).  Unset constants are undefined for
 * is_function_constant_defined. */
int tr_mtl_set_function_constant(tr_mtl_args *a, int index, const void *value, size_t bytes, tr_error *err);

/* ---- launching ------------------------------------------------------------------------------------------------- */

typedef enum tr_mtl_policy { TR_MTL_FORWARD = 0, TR_MTL_REVERSE, TR_MTL_RANDOM, TR_MTL_SG_GREEDY } tr_mtl_policy;

typedef struct tr_mtl_schedule {
    tr_mtl_policy policy;
    uint64_t seed;             /* RANDOM */
} tr_mtl_schedule;

/* "forward", "reverse", "sg_greedy", "random" (seed 0), "random:SEED" or "RANDOM(SEED)", case-insensitive. */
int tr_mtl_schedule_parse(const char *text, tr_mtl_schedule *out);
/* "FORWARD", "REVERSE", "SG_GREEDY", "RANDOM(42)" into buf. */
const char *tr_mtl_schedule_name(const tr_mtl_schedule *s, char *buf, size_t cap);

typedef struct tr_mtl_launch {
    uint32_t grid[3];          /* threadgroups per grid (dispatchThreadgroups), or threads (dispatch_threads) */
    uint32_t tg[3];            /* threads per threadgroup (≤ 1024 in all) */
    int dispatch_threads;      /* 1: grid counts threads and edge threadgroups are partial (dispatchThreads) */
    tr_mtl_schedule schedule;
    int n_workers;             /* OS threads running threadgroups; 0: number of online CPUs */
    double timeout_s;          /* watchdog; 0: 10 s; < 0: none */
    int mma_model;             /* 0 (default) or 1, METAL.md §3 */
    int poison_site;           /* -1: every threadgroup array filled with 0xFF; s ≥ 0: only site s, the others 0 */
    size_t stack_bytes;        /* fiber stack per lane; 0: 256 KiB (or $TRELLIS_METAL_EMU_STACK) */
} tr_mtl_launch;

/* A launch with defaults: 1×1×1 grid and threadgroup, SG_GREEDY, 10 s watchdog, model 0, all arrays poisoned. */
void tr_mtl_launch_init(tr_mtl_launch *l);

typedef enum tr_mtl_status {
    TR_MTL_OK = 0,
    TR_MTL_RESOURCE_ERROR,     /* threadgroup memory over 32 KiB, threadgroup over 1024 threads, out of memory */
    TR_MTL_TIMEOUT,            /* watchdog or deadlock */
    TR_MTL_INVALID             /* a parameter without a binding, a bad geometry */
} tr_mtl_status;

typedef enum tr_mtl_diag_code {
    TR_MTL_D_EARLY_RETURN = 0, /* a lane exited before a barrier other lanes of its threadgroup reached */
    TR_MTL_D_DIVERGENT_BARRIER,/* lanes of one threadgroup waited at different barriers */
    TR_MTL_D_NON_UNIFORM_MMA,  /* simdgroup_multiply_accumulate with different operands in one simdgroup */
    TR_MTL_D_NON_UNIFORM_MATRIX_OP, /* simdgroup_load/store with different addresses or data in one simdgroup */
    TR_MTL_D_UNSUPPORTED       /* a shim feature that is not emulated faithfully was used */
} tr_mtl_diag_code;

typedef struct tr_mtl_diag {
    tr_mtl_diag_code code;
    char site[256];            /* "file.metal:12:5" (and the second site for divergent barriers) */
    char text[256];
    uint64_t count;            /* occurrences (threadgroups × sites) */
} tr_mtl_diag;

typedef struct tr_mtl_stats {
    uint64_t threadgroups, lanes;
    uint64_t context_switches; /* a lane suspended at a scheduling point (and later resumed) */
    uint64_t barriers;         /* threadgroup barriers released */
    uint64_t rendezvous;       /* simd rendezvous resolved (collectives, simdgroup_barrier, matrix load/store) */
    uint64_t partial_collectives;  /* resolved with fewer lanes than the simdgroup has */
    uint64_t mma_computed, mma_reused;
    uint64_t peak_tg_bytes;    /* largest threadgroup memory footprint of one threadgroup */
    double seconds;
} tr_mtl_stats;

typedef struct tr_mtl_result {
    tr_mtl_status status;
    char detail[512];          /* why, when status != OK */
    tr_mtl_stats stats;
    tr_mtl_diag *diags;
    size_t ndiags;
} tr_mtl_result;

/* Run kernel k.  Returns TR_OK when the launch happened (res->status says how it ended) or TR_E_INVALID_PARAM /
 * TR_E_NOMEM when it could not start (also reflected in res). */
int tr_mtl_dispatch(tr_mtl_lib *lib, const tr_mtl_kernel *k, const tr_mtl_args *a, const tr_mtl_launch *l,
                    tr_mtl_result *res, tr_error *err);
void tr_mtl_result_free(tr_mtl_result *res);

const char *tr_mtl_status_name(tr_mtl_status s);        /* "OK", "RESOURCE_ERROR", "TIMEOUT", "INVALID" */
const char *tr_mtl_diag_name(tr_mtl_diag_code c);       /* "early_return_before_barrier", … */

/* The conformance backend this implementation of the interface is: "metal-emu" (this emulator) or "metal" (the
 * macOS runner of metal/host/, which implements the same interface on a live MTLDevice and is linked instead of the
 * emulator into build/trellis-metal on Darwin). */
const char *tr_mtl_backend_name(void);

/* Apple's threadgroup memory limit (bytes). */
#define TR_MTL_TG_MEMORY_LIMIT 32768u

#endif
