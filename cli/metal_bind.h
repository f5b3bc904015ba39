/*
 * metal_bind.h — private to the metal-emu runner (conform_metal.c, metal_bind.c): the binding families of
 * KERNELS.md §3/§4 (slot lists for tr_mtl_check_binding) and, per family, the adapter that turns a case's canonical
 * inputs into the variant's buffers, scalars, textures and launches, and its outputs back into canonical form.
 */
#ifndef TRELLIS_CLI_METAL_BIND_H
#define TRELLIS_CLI_METAL_BIND_H

#include "conform.h"

#define MB_MAX 64              /* buffers of one case (all launches) */
#define ML_MAX 16              /* launches of one case (a flat MoE launch per tuple group) */

enum { MB_IN = 0, MB_OUT, MB_ACC, MB_INOUT };   /* input; output poisoned / zero-filled / initialised from init */

/* One buffer (or texture) of a launch, inside a guarded allocation (CONFORM_GUARD_BYTES each side). */
typedef struct mbuf {
    char name[40];
    int launch, index, texture;
    int role;
    tr_dtype dt;
    size_t bytes;
    uint8_t *block;            /* guard + bytes + guard */
    uint8_t *init;             /* contents before every schedule (inputs, in/out buffers) */
    uint8_t *snap;             /* outputs of the first schedule */
    tr_mtl_texture tex;
} mbuf;

typedef struct mlaunch {
    tr_mtl_args *args;
    uint32_t grid[3], tg[3];
    int dispatch_threads;
} mlaunch;

typedef struct mctx {
    const cmetal_variant *mv;
    const tr_case *c;
    const tr_bufs *in;
    tr_bufs *got;              /* canonical outputs (the runner's guarded, poisoned buffers) */
    mbuf b[MB_MAX];
    int nb;
    mlaunch L[ML_MAX];
    int nl;
    int order_free;            /* the launch accumulates with atomics: schedules may legitimately differ */
    void (*finish)(struct mctx *m);
    void *priv;
    tr_error *err;
} mctx;

static inline uint8_t *mb_data(const mbuf *b) { return b->block + CONFORM_GUARD_BYTES; }

typedef struct mfamily {
    const char *id;
    const char *text;          /* KERNELS.md's wording */
    tr_mtl_slot slots[32];
    int nslots;
    int (*prepare)(mctx *m);   /* TR_OK, or an error in m->err */
} mfamily;

const mfamily *mfamily_find(const char *id);
/* Launch ids the families know (docs/schemas.md). */
int mlaunch_known(const char *id);
/* Data-format check the binding alone cannot express (hadamard rows kernels: the kernel's element type is the
 * case's dtype).  0 fine, else 1 with why. */
int mfamily_runtime_domain(const cmetal_variant *mv, const tr_case *c, char *why, size_t cap);
void mctx_release(mctx *m);

#endif
