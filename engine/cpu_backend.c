/*
 * cpu_backend.c — the `cpu` backend: its own implementations of the ops the engine uses, following the canonical
 * orders of KERNELS.md §1 so that every output is bitwise equal to the reference.
 */
#include "cpu_backend.h"
#include "trellis/alloc.h"

#include <stdio.h>
#include <unistd.h>

typedef struct cpu_impl {
    int threads;
} cpu_impl;

static void cpu_destroy(tr_backend *be)
{
    tr_dealloc(be->impl);
    tr_dealloc(be);
}

int tr_cpu_backend_create(int threads, tr_backend **out, tr_error *err)
{
    *out = NULL;
    tr_backend *be = tr_calloc(1, sizeof *be);
    cpu_impl *impl = tr_calloc(1, sizeof *impl);
    if (!be || !impl) {
        tr_dealloc(be);
        tr_dealloc(impl);
        return tr_fail(err, TR_E_NOMEM, "cpu", "out of memory");
    }
    impl->threads = threads > 0 ? threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    be->name = "cpu";
    be->impl = impl;
    be->destroy = cpu_destroy;
    snprintf(be->device, sizeof be->device, "cpu, %d threads", impl->threads);
    *out = be;
    return TR_OK;
}
