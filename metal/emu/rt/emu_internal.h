/*
 * emu_internal.h — what library.c (building, loading, metadata) and sched.c (launches) share.  Internal to
 * metal/emu/rt/.
 */
#ifndef TRMTL_EMU_INTERNAL_H
#define TRMTL_EMU_INTERNAL_H

#include "../shim/trmtl/abi.h"
#include "trellis/metal_emu.h"

#include <pthread.h>

typedef struct rt_module {
    void *dl;
    const trmtl_module_desc *desc;
    uint32_t site_base;
    int file;                  /* index into lib->files */
} rt_module;

typedef struct rt_kernel {
    int module;
    const trmtl_kernel_desc *kd;
} rt_kernel;

typedef struct rt_site {
    int module;
    const trmtl_tg_decl *decl;
} rt_site;

struct tr_mtl_args {
    trmtl_bindings b;
    void *owned[TRMTL_MAX_BUFFERS];            /* setBytes copies */
    trmtl_texture tex[TRMTL_MAX_TEXTURES];
    unsigned char tex_set[TRMTL_MAX_TEXTURES];
    unsigned char sampler_set[TRMTL_MAX_SAMPLERS];
    unsigned char buffer_set[TRMTL_MAX_BUFFERS];
    unsigned char tg_set[TRMTL_MAX_TG_DYN];
    trmtl_fc_values fc;
};

struct tr_mtl_lib {
    rt_module *mods;
    int nmods;
    tr_mtl_file *files;
    size_t nfiles;
    tr_mtl_kernel *kernels;
    rt_kernel *rk;
    size_t nkernels;
    rt_site *sites;
    uint32_t nsites;
    pthread_mutex_t launch_mu;
    char **strings;            /* owned strings of files/kernels/params */
    size_t nstrings, capstrings;
};

/* The runtime's function table (sched.c): one per process, given to every module (a module shared by two
 * libraries — the same cached .so — sees the same table). */
const trmtl_rt_api *trmtl_rt_api_table(void);

#endif
