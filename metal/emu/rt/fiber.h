/*
 * fiber.h — lane fibers of the Metal emulator: guarded stacks (mmap with a PROT_NONE page below) and the context
 * switch, hand-written for x86-64 SysV (fiber_x86_64.S) and AArch64 (fiber_aarch64.S, untested), with a ucontext
 * fallback selected at build time (-DTRMTL_FIBER_UCONTEXT, or any other architecture) or at run time
 * (TRELLIS_METAL_EMU_FIBER=ucontext).  Internal to metal/emu/rt/.
 */
#ifndef TRMTL_FIBER_H
#define TRMTL_FIBER_H

#include <stddef.h>
#include <ucontext.h>

#if !defined(TRMTL_FIBER_UCONTEXT) && !defined(__x86_64__) && !defined(__aarch64__)
#define TRMTL_FIBER_UCONTEXT 1
#endif

typedef struct trmtl_stack {
    void *base;                /* mapping (guard page first) */
    size_t map_bytes;
    void *lo, *hi;             /* usable range */
    unsigned vg_id;            /* valgrind stack id (when built with valgrind's headers) */
    struct trmtl_stack *next;
} trmtl_stack;

typedef struct trmtl_ctx {
    void *sp;                  /* hand-written switch */
    ucontext_t *uc;            /* fallback */
} trmtl_ctx;

/* 1 when the ucontext fallback is in use (build flag, architecture or TRELLIS_METAL_EMU_FIBER=ucontext). */
int trmtl_fiber_use_ucontext(void);
/* Re-read TRELLIS_METAL_EMU_FIBER (done at the start of every launch; no launch may be running). */
void trmtl_fiber_select(void);
const char *trmtl_fiber_impl(void);

trmtl_stack *trmtl_stack_get(size_t bytes);        /* from a process-wide pool, or a new mapping; NULL when out */
void trmtl_stack_put(trmtl_stack *s);

/* Prepare ctx to run entry(arg) on stack s at the next switch to it.  0 on success. */
int trmtl_ctx_make(trmtl_ctx *ctx, trmtl_stack *s, void (*entry)(void *), void *arg);
/* Save the current context in from and continue in to. */
void trmtl_ctx_switch(trmtl_ctx *from, trmtl_ctx *to);
/* Scheduler context of a thread (ucontext storage when needed). */
int trmtl_ctx_init_main(trmtl_ctx *ctx);
void trmtl_ctx_free(trmtl_ctx *ctx);

#endif
