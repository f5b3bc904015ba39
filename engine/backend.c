/*
 * backend.c — creating backends by name (HARNESS.md §2): "ref" (every op is the reference) and "cpu" (the engine's
 * fast kernels, cpu_backend.c).  "metal", "metal-emu" and "capture:<dir>" are provided by other units.
 */
#include "trellis/backend.h"
#include "trellis/alloc.h"

#include "cpu_backend.h"

#include <stdio.h>
#include <string.h>

int tr_backend_available(const char *name) { return !strcmp(name, "ref") || !strcmp(name, "cpu"); }

int tr_backend_create(const char *name, int threads, tr_backend **out, tr_error *err)
{
    *out = NULL;
    if (!strcmp(name, "cpu"))
        return tr_cpu_backend_create(threads, out, err);
    if (strcmp(name, "ref") != 0)
        return tr_fail(err, TR_E_UNSUPPORTED, name, "unknown backend (available here: ref, cpu)");
    tr_backend *be = tr_calloc(1, sizeof *be);
    if (!be)
        return tr_fail(err, TR_E_NOMEM, name, "out of memory");
    be->name = "ref";
    snprintf(be->device, sizeof be->device, "reference (scalar C, canonical orders)");
    *out = be;
    return TR_OK;
}

void tr_backend_destroy(tr_backend *be)
{
    if (!be)
        return;
    if (be->destroy)
        be->destroy(be);
    else
        tr_dealloc(be);
}
