/*
 * trmtl/abi.h — the binary interface between the emulator runtime (C, metal/emu/rt/) and one compiled kernel module
 * (a shared object built from one .metal file: rewritten user code + the C++ shim + generated launchers).
 *
 * Each module exports one symbol, `trmtl_module` (a trmtl_module_desc), and nothing else.  The runtime dlopens the
 * module, checks `abi`, calls `init` with its function table (trmtl_rt_api) and fills `site_ids` with dense
 * library-wide ids of the module's threadgroup declaration sites.  A launcher is called once per lane, on that
 * lane's fiber, with the lane's builtins and the launch's bindings; every call back into the runtime (barriers,
 * simd rendezvous, threadgroup arena, diagnostics) goes through the function table and acts on the lane that is
 * running on the calling OS thread.
 *
 * This header is C and C++ (the shim includes it); it holds plain data only.
 */
#ifndef TRMTL_ABI_H
#define TRMTL_ABI_H

#include <stddef.h>
#include <stdint.h>

#define TRMTL_ABI_VERSION 3u

#define TRMTL_MAX_BUFFERS 31       /* Metal: 31 buffer argument slots */
#define TRMTL_MAX_TEXTURES 32
#define TRMTL_MAX_SAMPLERS 16
#define TRMTL_MAX_TG_DYN 8         /* [[threadgroup(n)]] slots */
#define TRMTL_MAX_FC 64            /* function constant indices 0..63 */
#define TRMTL_SIMD_WIDTH 32

typedef struct trmtl_uint3 {
    uint32_t x, y, z;
} trmtl_uint3;

/* ---- textures and samplers ------------------------------------------------------------------------------------ */

enum trmtl_pixel_format {
    TRMTL_PF_INVALID = 0,
    TRMTL_PF_R32F, TRMTL_PF_RG32F, TRMTL_PF_RGBA32F,
    TRMTL_PF_R16F, TRMTL_PF_RG16F, TRMTL_PF_RGBA16F,
    TRMTL_PF_R8UNORM, TRMTL_PF_RG8UNORM, TRMTL_PF_RGBA8UNORM,
    TRMTL_PF_R32U, TRMTL_PF_RG32U, TRMTL_PF_RGBA32U,
    TRMTL_PF_R32I, TRMTL_PF_RG32I, TRMTL_PF_RGBA32I,
    TRMTL_PF_R16U, TRMTL_PF_R16I, TRMTL_PF_R8U, TRMTL_PF_R8I,
    TRMTL_PF_COUNT
};

enum trmtl_texture_type { TRMTL_TEX_1D = 1, TRMTL_TEX_2D = 2, TRMTL_TEX_2D_ARRAY = 3 };

typedef struct trmtl_texture {
    void *data;                /* texel (0,0,slice 0); caller-owned */
    uint32_t type;             /* trmtl_texture_type */
    uint32_t format;           /* trmtl_pixel_format */
    uint32_t width, height;    /* height 1 for 1-D */
    uint32_t array_length;     /* 1 unless 2-D array */
    uint32_t pad_;
    size_t row_bytes;          /* bytes between rows (0: width * texel size) */
    size_t slice_bytes;        /* bytes between array slices (0: height * row_bytes) */
} trmtl_texture;

enum trmtl_filter { TRMTL_FILTER_NEAREST = 0, TRMTL_FILTER_LINEAR = 1 };
enum trmtl_address {
    TRMTL_ADDR_CLAMP_TO_EDGE = 0, TRMTL_ADDR_CLAMP_TO_ZERO, TRMTL_ADDR_CLAMP_TO_BORDER, TRMTL_ADDR_REPEAT,
    TRMTL_ADDR_MIRRORED_REPEAT
};

typedef struct trmtl_sampler {
    uint8_t mag_filter, min_filter;    /* trmtl_filter */
    uint8_t s_address, t_address, r_address;   /* trmtl_address */
    uint8_t normalized;                /* 1: coordinates in [0,1]; 0: pixel coordinates */
    uint8_t border_white;              /* clamp_to_border: opaque white instead of transparent black */
    uint8_t pad_;
} trmtl_sampler;

/* ---- bindings and lanes ---------------------------------------------------------------------------------------- */

/* Function constant values of one launch, by [[function_constant(i)]] index (little-endian bytes of the value). */
typedef struct trmtl_fc_values {
    uint8_t defined[TRMTL_MAX_FC];
    uint8_t bytes[TRMTL_MAX_FC][8];
} trmtl_fc_values;

typedef struct trmtl_bindings {
    void *buffers[TRMTL_MAX_BUFFERS];
    size_t buffer_bytes[TRMTL_MAX_BUFFERS];
    const trmtl_texture *textures[TRMTL_MAX_TEXTURES];
    trmtl_sampler samplers[TRMTL_MAX_SAMPLERS];
    size_t tg_dyn_bytes[TRMTL_MAX_TG_DYN];
} trmtl_bindings;

/* What a launcher reads: the builtins of its lane (Metal's [[attribute]] names) and the launch's bindings. */
typedef struct trmtl_lane {
    trmtl_uint3 thread_position_in_grid;
    trmtl_uint3 threadgroup_position_in_grid;
    trmtl_uint3 thread_position_in_threadgroup;
    trmtl_uint3 threads_per_threadgroup;
    trmtl_uint3 threadgroups_per_grid;
    trmtl_uint3 threads_per_grid;
    trmtl_uint3 dispatch_threads_per_threadgroup;
    trmtl_uint3 grid_origin;
    trmtl_uint3 grid_size;
    uint32_t thread_index_in_threadgroup;
    uint32_t thread_index_in_simdgroup;
    uint32_t simdgroup_index_in_threadgroup;
    uint32_t threads_per_simdgroup;
    uint32_t simdgroups_per_threadgroup;
    uint32_t thread_index_in_quadgroup;
    uint32_t quadgroup_index_in_threadgroup;
    uint32_t quadgroups_per_threadgroup;
    uint32_t thread_execution_width;
    uint32_t pad_;
    const trmtl_bindings *bind;
    void *const *tg_dyn;       /* [TRMTL_MAX_TG_DYN] dynamic threadgroup memory of this lane's threadgroup */
} trmtl_lane;

/* Builtin ids (index into trmtl_builtin_names of the runtime; the rewriter knows the same list). */
enum trmtl_builtin {
    TRMTL_B_THREAD_POSITION_IN_GRID = 0, TRMTL_B_THREADGROUP_POSITION_IN_GRID, TRMTL_B_THREAD_POSITION_IN_THREADGROUP,
    TRMTL_B_THREADS_PER_THREADGROUP, TRMTL_B_THREADGROUPS_PER_GRID, TRMTL_B_THREADS_PER_GRID,
    TRMTL_B_DISPATCH_THREADS_PER_THREADGROUP, TRMTL_B_GRID_ORIGIN, TRMTL_B_GRID_SIZE,
    TRMTL_B_THREAD_INDEX_IN_THREADGROUP, TRMTL_B_THREAD_INDEX_IN_SIMDGROUP, TRMTL_B_SIMDGROUP_INDEX_IN_THREADGROUP,
    TRMTL_B_THREADS_PER_SIMDGROUP, TRMTL_B_SIMDGROUPS_PER_THREADGROUP, TRMTL_B_THREAD_INDEX_IN_QUADGROUP,
    TRMTL_B_QUADGROUP_INDEX_IN_THREADGROUP, TRMTL_B_QUADGROUPS_PER_THREADGROUP, TRMTL_B_THREAD_EXECUTION_WIDTH,
    TRMTL_B_COUNT
};

/* ---- parameter metadata (generated into each module; the rewriter writes the same facts to X.json) ------------ */

enum trmtl_param_kind {
    TRMTL_P_BUFFER = 0, TRMTL_P_TEXTURE, TRMTL_P_SAMPLER, TRMTL_P_THREADGROUP, TRMTL_P_BUILTIN
};
enum trmtl_space { TRMTL_S_NONE = 0, TRMTL_S_DEVICE, TRMTL_S_CONSTANT, TRMTL_S_THREADGROUP, TRMTL_S_THREAD };
enum trmtl_passing { TRMTL_PASS_POINTER = 0, TRMTL_PASS_REFERENCE, TRMTL_PASS_VALUE };

typedef struct trmtl_param_desc {
    const char *name;
    int32_t kind;              /* trmtl_param_kind */
    int32_t index;             /* binding index (buffer/texture/sampler/threadgroup) or trmtl_builtin */
    int32_t explicit_index;    /* 1 when the source gave [[buffer(n)]] etc., 0 when Metal's implicit order gave it */
    int32_t space;             /* trmtl_space */
    int32_t passing;           /* trmtl_passing */
    int32_t is_const;
    const char *type;          /* declared type as written ("device const half *") */
    const char *elem_type;     /* without space, const, * and & ("half", "float4", "texture2d<float, access::read>") */
    uint32_t elem_size;        /* sizeof(element) as compiled (0 for textures and samplers) */
    uint32_t elem_align;
    int32_t tex_dim;           /* textures: trmtl_texture_type */
    int32_t tex_access;        /* textures: 0 sample, 1 read, 2 write, 3 read_write */
} trmtl_param_desc;

typedef struct trmtl_tg_decl {
    const char *name;
    const char *type;          /* "float[32][33]" as declared */
    const char *function;      /* the function whose body declares it */
    int32_t line;
    uint32_t local_site;       /* index in the module's site table */
} trmtl_tg_decl;

typedef struct trmtl_kernel_desc {
    const char *name;          /* host name */
    const char *function;      /* the C++ function (differs for [[host_name]] and template instances) */
    int32_t line;              /* line of the definition in the .metal file */
    int32_t nparams;
    const trmtl_param_desc *params;
    void (*launch)(const trmtl_lane *lane);
} trmtl_kernel_desc;

typedef struct trmtl_fc_desc {
    const char *name;
    int32_t index;
    uint32_t size;
    const char *type;
} trmtl_fc_desc;

/* ---- the runtime's function table ------------------------------------------------------------------------------ */

/* Source location of a scheduling point (file is the presumed .metal path from the line markers). */
typedef struct trmtl_site {
    const char *file;
    uint32_t line, column;
} trmtl_site;

enum trmtl_rdv_kind {
    TRMTL_RDV_SIMD_BARRIER = 0, TRMTL_RDV_COLLECTIVE, TRMTL_RDV_MATRIX_LOAD, TRMTL_RDV_MATRIX_STORE
};

/* Resolves one rendezvous: data[l] is lane l's record (NULL for a lane not in the group), mask the lanes in it.
 * Runs once per group, on some lane's (or the scheduler's) stack, while every lane of the group is suspended. */
typedef void (*trmtl_resolve_fn)(void *const *data, uint32_t mask, void *ctx);

enum trmtl_diag_code {
    TRMTL_D_EARLY_RETURN = 0, TRMTL_D_DIVERGENT_BARRIER, TRMTL_D_NON_UNIFORM_MMA, TRMTL_D_NON_UNIFORM_MATRIX_OP,
    TRMTL_D_UNSUPPORTED, TRMTL_D_COUNT
};

enum trmtl_mma_memo { TRMTL_MMA_COMPUTE = 0, TRMTL_MMA_FILL = 1, TRMTL_MMA_HIT = 2 };

typedef struct trmtl_rt_api {
    uint32_t abi;
    /* threadgroup_barrier: suspend until every non-exited lane of the threadgroup has arrived. */
    void (*barrier)(const trmtl_site *site);
    /* A rendezvous of the active lanes of the calling lane's simdgroup at (site, kind); data is this lane's
     * record; resolve runs once for the group.  Returns when the group has resolved. */
    void (*rendezvous)(const trmtl_site *site, int kind, void *data, trmtl_resolve_fn resolve, void *ctx);
    /* Threadgroup memory of declaration site `site` (of the running kernel's module): allocated (0xFF-filled) by the first lane
     * of the threadgroup that reaches it, shared by all.  Never returns on a resource overrun (the launch ends). */
    void *(*tg_alloc)(uint32_t site, size_t size, size_t align);
    /* simdgroup_multiply_accumulate memo: *slot gets the simdgroup's result slot for this lane's next MMA.
     * Returns TRMTL_MMA_HIT (slot holds the result), TRMTL_MMA_FILL (compute into *slot, then the other lanes
     * reuse it) or TRMTL_MMA_COMPUTE (non-uniform operands or no slot: compute locally; *slot NULL). */
    int (*mma_memo)(uint64_t operand_hash, size_t bytes, void **slot, const trmtl_site *site);
    void (*diag)(int code, const trmtl_site *site, const char *text);
    /* Lane index of the calling lane in its simdgroup. */
    uint32_t (*simd_lane)(void);
    /* The launch's simdgroup_matrix model: 0 or 1 (METAL.md §3). */
    int (*mma_model)(void);
} trmtl_rt_api;

/* ---- the module descriptor ------------------------------------------------------------------------------------- */

typedef struct trmtl_module_desc {
    uint32_t abi;              /* TRMTL_ABI_VERSION */
    const char *source;        /* the .metal path it was built from */
    int32_t nkernels;
    const trmtl_kernel_desc *kernels;
    int32_t nfc;
    const trmtl_fc_desc *fcs;
    int32_t nsites;
    const trmtl_tg_decl *tg_decls;     /* nsites entries */
    uint32_t *site_ids;        /* the value tg_alloc receives for each local site (the runtime writes k for site k
                                  and maps it through the running kernel's module) */
    void (*init)(const trmtl_rt_api *api);
    /* Set the module's function constants (and the program-scope constants derived from them) for a launch. */
    void (*set_function_constants)(const trmtl_fc_values *values);
} trmtl_module_desc;

#endif
