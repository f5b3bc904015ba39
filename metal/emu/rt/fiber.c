/*
 * fiber.c — guarded fiber stacks and the context switch (see fiber.h).
 */
#include "fiber.h"
#include "trellis/alloc.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Valgrind follows stack switches only between registered stacks (the client requests cost nothing natively). */
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define TRMTL_VALGRIND 1
#endif
#endif

#if !defined(TRMTL_FIBER_UCONTEXT)
void trmtl_fiber_switch(void **save_sp, void *to_sp);
void trmtl_fiber_start(void);
#endif

static int use_uc = -1;

void trmtl_fiber_select(void)
{
    const char *e = getenv("TRELLIS_METAL_EMU_FIBER");
    use_uc = e && strcmp(e, "ucontext") == 0;
}

int trmtl_fiber_use_ucontext(void)
{
#if defined(TRMTL_FIBER_UCONTEXT)
    return 1;
#else
    if (use_uc < 0)
        trmtl_fiber_select();
    return use_uc;
#endif
}

const char *trmtl_fiber_impl(void)
{
    if (trmtl_fiber_use_ucontext())
        return "ucontext";
#if defined(__x86_64__)
    return "asm-x86_64";
#else
    return "asm-aarch64";
#endif
}

/* ---- stacks ---------------------------------------------------------------------------------------------------- */

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static trmtl_stack *pool;
static size_t pool_count;

trmtl_stack *trmtl_stack_get(size_t bytes)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    bytes = (bytes + page - 1) / page * page;
    pthread_mutex_lock(&pool_mu);
    trmtl_stack **pp = &pool;
    while (*pp && (size_t)((char *)(*pp)->hi - (char *)(*pp)->lo) != bytes)
        pp = &(*pp)->next;
    trmtl_stack *s = *pp;
    if (s) {
        *pp = s->next;
        pool_count--;
    }
    pthread_mutex_unlock(&pool_mu);
    if (s)
        return s;
    if (tr_alloc_should_fail())
        return NULL;
    s = tr_malloc(sizeof *s);
    if (!s)
        return NULL;
    size_t map = bytes + page;
    void *m = mmap(NULL, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        tr_dealloc(s);
        return NULL;
    }
    mprotect(m, page, PROT_NONE);      /* the guard page: an overflow faults instead of corrupting memory */
    s->base = m;
    s->map_bytes = map;
    s->lo = (char *)m + page;
    s->hi = (char *)m + map;
    s->next = NULL;
#if defined(TRMTL_VALGRIND)
    s->vg_id = VALGRIND_STACK_REGISTER(s->lo, s->hi);
#endif
    return s;
}

void trmtl_stack_put(trmtl_stack *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&pool_mu);
    if (pool_count < 4096) {
        s->next = pool;
        pool = s;
        pool_count++;
        s = NULL;
    }
    pthread_mutex_unlock(&pool_mu);
    if (s) {
#if defined(TRMTL_VALGRIND)
        VALGRIND_STACK_DEREGISTER(s->vg_id);
#endif
        munmap(s->base, s->map_bytes);
        tr_dealloc(s);
    }
}

/* ---- contexts -------------------------------------------------------------------------------------------------- */

typedef struct uc_start {
    void (*entry)(void *);
    void *arg;
} uc_start;

static void uc_trampoline(unsigned hi, unsigned lo)
{
    uc_start *st = (uc_start *)(((uintptr_t)hi << 32) | (uintptr_t)lo);
    st->entry(st->arg);
    abort();
}

int trmtl_ctx_init_main(trmtl_ctx *ctx)
{
    memset(ctx, 0, sizeof *ctx);
    if (trmtl_fiber_use_ucontext()) {
        ctx->uc = tr_calloc(1, sizeof *ctx->uc + sizeof(uc_start));
        return ctx->uc ? 0 : -1;
    }
    return 0;
}

void trmtl_ctx_free(trmtl_ctx *ctx)
{
    tr_dealloc(ctx->uc);
    ctx->uc = NULL;
}

int trmtl_ctx_make(trmtl_ctx *ctx, trmtl_stack *s, void (*entry)(void *), void *arg)
{
    if (trmtl_fiber_use_ucontext()) {
        if (!ctx->uc && trmtl_ctx_init_main(ctx) != 0)
            return -1;
        uc_start *st = (uc_start *)(ctx->uc + 1);
        st->entry = entry;
        st->arg = arg;
        if (getcontext(ctx->uc) != 0)
            return -1;
        ctx->uc->uc_stack.ss_sp = s->lo;
        ctx->uc->uc_stack.ss_size = (size_t)((char *)s->hi - (char *)s->lo);
        ctx->uc->uc_link = NULL;
        uintptr_t p = (uintptr_t)st;
        makecontext(ctx->uc, (void (*)(void))uc_trampoline, 2, (unsigned)(p >> 32), (unsigned)(p & 0xFFFFFFFFu));
        return 0;
    }
#if defined(TRMTL_FIBER_UCONTEXT)
    return -1;
#elif defined(__x86_64__)
    /* Frame popped by trmtl_fiber_switch: [mxcsr|fpucw][r15][r14][r13][r12][rbx][rbp][ret = trmtl_fiber_start];
     * after the ret, rsp must be 16-byte aligned for the call in trmtl_fiber_start. */
    uintptr_t top = ((uintptr_t)s->hi) & ~(uintptr_t)15;
    uint64_t *ret = (uint64_t *)(top - 24);
    uint64_t *f = ret - 7;
    uint32_t mx;
    uint16_t cw;
    __asm__ volatile("stmxcsr %0" : "=m"(mx));
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    f[0] = (uint64_t)mx | ((uint64_t)cw << 32);
    f[1] = 0;                              /* r15 */
    f[2] = 0;                              /* r14 */
    f[3] = (uint64_t)(uintptr_t)arg;       /* r13 */
    f[4] = (uint64_t)(uintptr_t)entry;     /* r12 */
    f[5] = 0;                              /* rbx */
    f[6] = 0;                              /* rbp */
    ret[0] = (uint64_t)(uintptr_t)trmtl_fiber_start;
    ctx->sp = f;
    return 0;
#else
    /* AArch64 frame of trmtl_fiber_switch: x19..x30 at 0..95, d8..d15 at 96..159, fpcr at 160 (176 bytes). */
    uintptr_t top = ((uintptr_t)s->hi) & ~(uintptr_t)15;
    uint64_t *f = (uint64_t *)(top - 176);
    memset(f, 0, 176);
    uint64_t fpcr;
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    f[0] = (uint64_t)(uintptr_t)entry;     /* x19 */
    f[1] = (uint64_t)(uintptr_t)arg;       /* x20 */
    f[11] = (uint64_t)(uintptr_t)trmtl_fiber_start;   /* x30 */
    f[20] = fpcr;
    ctx->sp = f;
    return 0;
#endif
}

void trmtl_ctx_switch(trmtl_ctx *from, trmtl_ctx *to)
{
    if (trmtl_fiber_use_ucontext()) {
        swapcontext(from->uc, to->uc);
        return;
    }
#if !defined(TRMTL_FIBER_UCONTEXT)
    trmtl_fiber_switch(&from->sp, to->sp);
#endif
}
