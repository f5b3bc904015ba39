/*
 * sched.c — one launch of an emulated Metal kernel (METAL.md §3, §4).
 *
 * Threadgroups are taken in linear order (x fastest) by n_workers OS threads.  A worker runs one threadgroup at a
 * time: every lane is a fiber (guarded stack from a pool, started on first run), and a scheduler loop on the worker's
 * own stack picks the next runnable lane by the launch's policy and switches to it; the lane runs until it reaches
 * a scheduling point (threadgroup_barrier, a simd rendezvous) or exits, and switches back.  A lane that never
 * reaches a scheduling point runs straight through (two switches), so kernels without barriers or collectives cost
 * about a function call per lane.
 *
 *   barrier     releases when arrived + exited = lanes; exited lanes at that moment are "early return before
 *               barrier", waiting lanes at different sites "divergent barrier" (diagnostics).
 *   rendezvous  groups per simdgroup keyed by (site, kind); resolves when its mask equals the simdgroup's live
 *               (not exited) lanes, or at quiescence (nothing runnable) with the waiting lanes' mask (partial).
 *   deadlock    nothing runnable, nothing to resolve, lanes left → TIMEOUT ("deadlock").
 *   watchdog    the launching thread waits with a deadline; past it, the launch is aborted and workers are
 *               interrupted with SIGRTMIN+4, whose handler abandons a lane that is executing kernel code.
 *   arena       threadgroup memory per declaration site, allocated by the first lane that reaches it, filled with
 *               0xFF (or, with poison_site, 0xFF for that site and 0 for the others); > 32 KiB → RESOURCE_ERROR.
 */
#include "emu_internal.h"
#include "fiber.h"
#include "trellis/alloc.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define TRMTL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TRMTL_ASAN 1
#endif
#endif
#if defined(TRMTL_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#define MAX_TG_LANES 1024
#define MEMO_RING 32
#define MEMO_BYTES 512
#define MAX_GROUPS 32
#define ARENA_BYTES (TR_MTL_TG_MEMORY_LIMIT + 8192)

enum { L_NEW = 0, L_RUNNABLE, L_BARRIER, L_RDV, L_EXITED };
enum { AB_NONE = 0, AB_TIMEOUT, AB_RESOURCE, AB_DEADLOCK, AB_INTERNAL };

typedef struct rt_lane {
    trmtl_lane pub;
    trmtl_ctx ctx;
    trmtl_stack *stack;
    int state;
    int sg, lane;
    trmtl_site site;
    uint64_t mma_seq;
    void *fake;                /* ASan fake stack */
} rt_lane;

typedef struct rt_group {
    int used;
    trmtl_site site;
    int kind;
    trmtl_resolve_fn fn;
    void *ctx;
    uint32_t mask;
    void *data[32];
    uint64_t order;
} rt_group;

typedef struct rt_memo {
    uint64_t seq, hash;
    int valid;
    unsigned char res[MEMO_BYTES];
} rt_memo;

typedef struct rt_sg {
    uint32_t present, live;
    uint32_t gused;            /* bit k: g[k].used (groups are scanned through this mask) */
    rt_group g[MAX_GROUPS];
    rt_memo memo[MEMO_RING];
} rt_sg;

typedef struct rt_launch rt_launch;

typedef struct rt_worker {
    rt_launch *L;
    pthread_t th;
    int started;
    trmtl_ctx sched;
    rt_lane *lanes;
    int nlanes;
    rt_sg *sgs;
    int nsg;
    uint64_t run[MAX_TG_LANES / 64];
    uint16_t rlist[MAX_TG_LANES], rpos[MAX_TG_LANES];   /* the runnable lanes as a dense list (RANDOM picks) */
    int nrun;
    int n_exited, n_barrier;
    rt_lane *cur;
    int last;
    int picked, have_picked;   /* a pick made by an exiting lane that did not chain (the scheduler uses it) */
    uint32_t geo[3];           /* threads per threadgroup the lanes' constant builtins were set for (0: none) */
    uint64_t rng, group_order;
    unsigned char *arena;
    size_t arena_used;
    void **site_ptr;
    uint32_t *alloc_sites;
    uint32_t nalloc;
    void *tg_dyn[TRMTL_MAX_TG_DYN];
    trmtl_stack *free_stacks;
    tr_mtl_stats st;
    tr_mtl_diag *diags;
    size_t ndiags, capdiags;
    volatile sig_atomic_t in_lane;
    trmtl_site resolving;
    int have_resolving;
    void *sched_bottom;
    size_t sched_size;
} rt_worker;

struct rt_launch {
    tr_mtl_lib *lib;
    const rt_kernel *rk;
    const trmtl_bindings *bind;
    uint32_t ntg[3], tgsz[3], threads[3];
    int dispatch_threads;
    uint64_t total;
    atomic_uint_fast64_t next;
    tr_mtl_schedule sched;
    int poison_site, mma_model;
    size_t stack_bytes;
    atomic_int abort;
    char detail[512];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int nworkers;
    rt_worker *w;
};

static __thread rt_worker *tls_w;

/* ---- small helpers --------------------------------------------------------------------------------------------- */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int same_site(const trmtl_site *a, const trmtl_site *b)
{
    return a->line == b->line && a->column == b->column &&
           (a->file == b->file || (a->file && b->file && strcmp(a->file, b->file) == 0));
}

static void site_text(const trmtl_site *s, char *buf, size_t cap)
{
    if (!s)
        snprintf(buf, cap, "?");
    else
        snprintf(buf, cap, "%s:%u:%u", s->file ? s->file : "?", s->line, s->column);
}

static void set_abort(rt_launch *L, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_abort(rt_launch *L, int code, const char *fmt, ...)
{
    int expect = AB_NONE;
    if (!atomic_compare_exchange_strong(&L->abort, &expect, code))
        return;
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&L->mu);
    vsnprintf(L->detail, sizeof L->detail, fmt, ap);
    pthread_mutex_unlock(&L->mu);
    va_end(ap);
}

static void add_diag(rt_worker *w, int code, const char *site, const char *text)
{
    for (size_t i = 0; i < w->ndiags; i++)
        if ((int)w->diags[i].code == code && strcmp(w->diags[i].site, site) == 0) {
            w->diags[i].count++;
            return;
        }
    if (w->ndiags == w->capdiags) {
        size_t nc = w->capdiags ? w->capdiags * 2 : 8;
        tr_mtl_diag *q = tr_realloc(w->diags, nc * sizeof *q);
        if (!q)
            return;
        w->diags = q;
        w->capdiags = nc;
    }
    tr_mtl_diag *d = &w->diags[w->ndiags++];
    memset(d, 0, sizeof *d);
    d->code = (tr_mtl_diag_code)code;
    snprintf(d->site, sizeof d->site, "%s", site);
    snprintf(d->text, sizeof d->text, "%s", text);
    d->count = 1;
}

/* ---- switching ------------------------------------------------------------------------------------------------- */

/* Scheduler → lane. */
static void enter_lane(rt_worker *w, rt_lane *ln)
{
#if defined(TRMTL_ASAN)
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, ln->stack->lo, (size_t)((char *)ln->stack->hi - (char *)ln->stack->lo));
#endif
    trmtl_ctx_switch(&w->sched, &ln->ctx);
#if defined(TRMTL_ASAN)
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
}

/* Lane side, after every (re)entry. */
static void lane_arrived(rt_worker *w, rt_lane *ln)
{
#if defined(TRMTL_ASAN)
    const void *bottom;
    size_t size;
    __sanitizer_finish_switch_fiber(ln->fake, &bottom, &size);
    w->sched_bottom = (void *)bottom;
    w->sched_size = size;
#else
    (void)ln;
    (void)w;
#endif
}

/* Lane → scheduler; returns when the scheduler resumes this lane (never for exit/abandon). */
static void leave_lane(rt_worker *w, rt_lane *ln, int final)
{
#if defined(TRMTL_ASAN)
    __sanitizer_start_switch_fiber(final ? NULL : &ln->fake, w->sched_bottom, w->sched_size);
#else
    (void)final;
#endif
    trmtl_ctx_switch(&ln->ctx, &w->sched);
    lane_arrived(w, ln);
}

static void suspend(rt_worker *w, rt_lane *ln)
{
    w->st.context_switches++;
    leave_lane(w, ln, 0);
}

static __attribute__((noreturn)) void abandon(rt_worker *w, rt_lane *ln)
{
    w->in_lane = 0;
    leave_lane(w, ln, 1);
    abort();                   /* never resumed */
}

/* ---- runnable set and policies ---------------------------------------------------------------------------------- */

static void set_run(rt_worker *w, int i)
{
    uint64_t bit = 1ull << (i & 63);
    if (w->run[i >> 6] & bit)
        return;
    w->run[i >> 6] |= bit;
    w->rpos[i] = (uint16_t)w->nrun;
    w->rlist[w->nrun++] = (uint16_t)i;
}

static void clr_run(rt_worker *w, int i)
{
    uint64_t bit = 1ull << (i & 63);
    if (!(w->run[i >> 6] & bit))
        return;
    w->run[i >> 6] &= ~bit;
    int j = w->rpos[i], last = w->rlist[--w->nrun];
    w->rlist[j] = (uint16_t)last;
    w->rpos[last] = (uint16_t)j;
}

/* First runnable lane in [from, to), or -1. */
static int next_run(const rt_worker *w, int from, int to)
{
    if (from < 0)
        from = 0;
    while (from < to) {
        int wd = from >> 6;
        uint64_t bits = w->run[wd] & (~0ull << (from & 63));
        if (bits) {
            int i = (wd << 6) + __builtin_ctzll(bits);
            return i < to ? i : -1;
        }
        from = (wd + 1) << 6;
    }
    return -1;
}

/* Last runnable lane in [lo, to), or -1. */
static int prev_run(const rt_worker *w, int lo, int to)
{
    int i = to - 1;
    while (i >= lo) {
        int wd = i >> 6;
        uint64_t mask = (i & 63) == 63 ? ~0ull : ((1ull << ((i & 63) + 1)) - 1);
        uint64_t bits = w->run[wd] & mask;
        if (bits) {
            int j = (wd << 6) + 63 - __builtin_clzll(bits);
            return j >= lo ? j : -1;
        }
        i = (wd << 6) - 1;
    }
    return -1;
}

static int pick(rt_worker *w)
{
    int n = w->nlanes, i;
    switch (w->L->sched.policy) {
    case TR_MTL_REVERSE:
        i = prev_run(w, 0, w->last);
        return i >= 0 ? i : prev_run(w, 0, n);
    case TR_MTL_RANDOM:
        /* uniform over the runnable lanes (the dense list; its order is a deterministic function of the history) */
        return w->nrun ? w->rlist[splitmix(&w->rng) % (uint64_t)w->nrun] : -1;
    case TR_MTL_SG_GREEDY: {
        if (w->last >= 0 && w->last < n) {
            int s0 = w->last & ~31, s1 = s0 + 32 < n ? s0 + 32 : n;
            i = next_run(w, w->last + 1, s1);
            if (i < 0)
                i = next_run(w, s0, w->last + 1);
            if (i >= 0)
                return i;
            i = next_run(w, s1, n);
            return i >= 0 ? i : next_run(w, 0, s0);
        }
        return next_run(w, 0, n);
    }
    default:
        i = next_run(w, w->last + 1, n);
        return i >= 0 ? i : next_run(w, 0, n);
    }
}

/* ---- barriers and rendezvous ------------------------------------------------------------------------------------ */

static void release_barrier(rt_worker *w)
{
    rt_lane *first = NULL, *other = NULL;
    for (int i = 0; i < w->nlanes; i++) {
        rt_lane *l = &w->lanes[i];
        if (l->state != L_BARRIER)
            continue;
        if (!first)
            first = l;
        else if (!other && !same_site(&l->site, &first->site))
            other = l;
    }
    if (first && other) {
        char a[200], b[200], site[256], text[256];
        site_text(&first->site, a, sizeof a);
        site_text(&other->site, b, sizeof b);
        snprintf(site, sizeof site, "%.120s / %.120s", a, b);
        snprintf(text, sizeof text, "lanes of one threadgroup waited at different barriers (%.90s and %.90s)", a, b);
        add_diag(w, TR_MTL_D_DIVERGENT_BARRIER, site, text);
    }
    if (first && w->n_exited > 0) {
        char site[256], text[256];
        site_text(&first->site, site, sizeof site);
        snprintf(text, sizeof text, "%d of %d lanes of the threadgroup returned before the barrier at %.150s", w->n_exited,
                 w->nlanes, site);
        add_diag(w, TR_MTL_D_EARLY_RETURN, site, text);
    }
    for (int i = 0; i < w->nlanes; i++)
        if (w->lanes[i].state == L_BARRIER) {
            w->lanes[i].state = L_RUNNABLE;
            set_run(w, i);
        }
    w->n_barrier = 0;
    w->st.barriers++;
}

static void resolve(rt_worker *w, int sgi, rt_group *g)
{
    rt_sg *sg = &w->sgs[sgi];
    void *d[32];
    for (int l = 0; l < 32; l++)
        d[l] = (g->mask >> l & 1u) ? g->data[l] : NULL;
    w->st.rendezvous++;
    if (g->mask != sg->present)
        w->st.partial_collectives++;
    w->resolving = g->site;
    w->have_resolving = 1;
    uint32_t mask = g->mask;
    g->used = 0;
    g->mask = 0;
    sg->gused &= ~(1u << (g - sg->g));
    g->fn(d, mask, g->ctx);
    w->have_resolving = 0;
    for (int l = 0; l < 32; l++)
        if (mask >> l & 1u) {
            int i = sgi * 32 + l;
            w->lanes[i].state = L_RUNNABLE;
            set_run(w, i);
        }
}

/* Resolve the groups of simdgroup sgi that hold every live lane. */
static void resolve_complete(rt_worker *w, int sgi)
{
    rt_sg *sg = &w->sgs[sgi];
    for (uint32_t m = sg->gused; m && sg->live; m &= m - 1) {
        rt_group *g = &sg->g[__builtin_ctz(m)];
        if (g->used && g->mask == sg->live)
            resolve(w, sgi, g);
    }
}

/* Quiescence: resolve every pending group with the lanes waiting in it.  Returns the number resolved. */
static int quiesce(rt_worker *w)
{
    int n = 0;
    for (int s = 0; s < w->nsg; s++) {
        for (;;) {
            rt_group *best = NULL;
            for (uint32_t m = w->sgs[s].gused; m; m &= m - 1) {
                rt_group *g = &w->sgs[s].g[__builtin_ctz(m)];
                if (!best || g->order < best->order)
                    best = g;
            }
            if (!best)
                break;
            resolve(w, s, best);
            n++;
        }
    }
    return n;
}

static void api_barrier(const trmtl_site *site)
{
    rt_worker *w = tls_w;
    rt_lane *ln = w->cur;
    w->in_lane = 0;
    if (atomic_load(&w->L->abort))
        abandon(w, ln);
    ln->state = L_BARRIER;
    ln->site = *site;
    w->n_barrier++;
    if (w->n_barrier + w->n_exited == w->nlanes)
        release_barrier(w);
    suspend(w, ln);
    w->in_lane = 1;
}

static void api_rendezvous(const trmtl_site *site, int kind, void *data, trmtl_resolve_fn fn, void *ctx)
{
    rt_worker *w = tls_w;
    rt_lane *ln = w->cur;
    w->in_lane = 0;
    if (atomic_load(&w->L->abort))
        abandon(w, ln);
    rt_sg *sg = &w->sgs[ln->sg];
    rt_group *g = NULL;
    for (uint32_t m = sg->gused; m; m &= m - 1) {
        rt_group *c = &sg->g[__builtin_ctz(m)];
        if (c->kind == kind && same_site(&c->site, site)) {
            g = c;
            break;
        }
    }
    if (!g) {
        int k = __builtin_ctz(~sg->gused);   /* at most 32 lanes wait, so a free group always exists */
        g = &sg->g[k];
        sg->gused |= 1u << k;
        g->used = 1;
        g->site = *site;
        g->kind = kind;
        g->fn = fn;
        g->ctx = ctx;
        g->mask = 0;
        g->order = w->group_order++;
    }
    g->mask |= 1u << ln->lane;
    g->data[ln->lane] = data;
    ln->state = L_RDV;
    if (g->mask == sg->live)
        resolve(w, ln->sg, g);
    suspend(w, ln);
    w->in_lane = 1;
}

static uint8_t poison_byte(const rt_worker *w, uint32_t site)
{
    int ps = w->L->poison_site;
    return ps < 0 || (uint32_t)ps == site ? 0xFF : 0x00;
}

static void *api_tg_alloc(uint32_t site, size_t size, size_t align)
{
    rt_worker *w = tls_w;
    int was = w->in_lane;
    w->in_lane = 0;
    tr_mtl_lib *lib = w->L->lib;
    const rt_module *mod = &lib->mods[w->L->rk->module];
    if (site >= (uint32_t)mod->desc->nsites) {
        set_abort(w->L, AB_INTERNAL, "threadgroup site %u out of range", site);
        abandon(w, w->cur);
    }
    site += mod->site_base;
    if (site >= lib->nsites) {
        set_abort(w->L, AB_INTERNAL, "threadgroup site %u out of range", site);
        abandon(w, w->cur);
    }
    void *p = w->site_ptr[site];
    if (p) {
        w->in_lane = was;
        return p;
    }
    if (align < 1)
        align = 1;
    size_t off = (w->arena_used + align - 1) / align * align;
    if (off + size > TR_MTL_TG_MEMORY_LIMIT || align > 4096) {
        if (off + size > w->st.peak_tg_bytes)
            w->st.peak_tg_bytes = off + size;
        const trmtl_tg_decl *d = lib->sites[site].decl;
        set_abort(w->L, AB_RESOURCE,
                  "threadgroup memory: %s %s (%s:%d) needs %zu bytes with %zu already in use, over the 32 KiB "
                  "(32768 bytes) limit of Apple GPUs",
                  d && d->type ? d->type : "?", d && d->name ? d->name : "?",
                  lib->mods[lib->sites[site].module].desc->source, d ? d->line : 0, size, w->arena_used);
        abandon(w, w->cur);
    }
    p = w->arena + off;
    memset(p, poison_byte(w, site), size);
    w->site_ptr[site] = p;
    w->alloc_sites[w->nalloc++] = site;
    w->arena_used = off + size;
    if (w->arena_used > w->st.peak_tg_bytes)
        w->st.peak_tg_bytes = w->arena_used;
    w->in_lane = was;
    return p;
}

static int api_mma_memo(uint64_t hash, size_t bytes, void **slot, const trmtl_site *site)
{
    rt_worker *w = tls_w;
    rt_lane *ln = w->cur;
    rt_sg *sg = &w->sgs[ln->sg];
    uint64_t seq = ln->mma_seq++;
    *slot = NULL;
    if (bytes > MEMO_BYTES) {
        w->st.mma_computed++;
        return TRMTL_MMA_COMPUTE;
    }
    rt_memo *m = &sg->memo[seq % MEMO_RING];
    if (m->valid && m->seq == seq) {
        if (m->hash == hash) {
            *slot = m->res;
            w->st.mma_reused++;
            return TRMTL_MMA_HIT;
        }
        char s[256];
        site_text(site, s, sizeof s);
        add_diag(w, TR_MTL_D_NON_UNIFORM_MMA, s,
                 "simdgroup_multiply_accumulate: a lane's operands differ from its simdgroup's");
        w->st.mma_computed++;
        return TRMTL_MMA_COMPUTE;
    }
    if (!m->valid || m->seq < seq) {
        m->valid = 1;
        m->seq = seq;
        m->hash = hash;
        *slot = m->res;
        w->st.mma_computed++;
        return TRMTL_MMA_FILL;
    }
    w->st.mma_computed++;
    return TRMTL_MMA_COMPUTE;
}

static void api_diag(int code, const trmtl_site *site, const char *text)
{
    rt_worker *w = tls_w;
    char s[256];
    site_text(site ? site : (w->have_resolving ? &w->resolving : NULL), s, sizeof s);
    add_diag(w, code, s, text ? text : "");
}

static int api_mma_model(void)
{
    rt_worker *w = tls_w;
    return w && w->L ? w->L->mma_model : 0;
}

static uint32_t api_simd_lane(void)
{
    rt_worker *w = tls_w;
    return w && w->cur ? (uint32_t)w->cur->lane : 0;
}

static const trmtl_rt_api the_api = {
    .abi = TRMTL_ABI_VERSION,
    .barrier = api_barrier,
    .rendezvous = api_rendezvous,
    .tg_alloc = api_tg_alloc,
    .mma_memo = api_mma_memo,
    .diag = api_diag,
    .simd_lane = api_simd_lane,
    .mma_model = api_mma_model,
};

const trmtl_rt_api *trmtl_rt_api_table(void) { return &the_api; }

/* ---- lanes and threadgroups ------------------------------------------------------------------------------------ */

/* A lane's fiber.  When its kernel returns and the policy's next pick is a lane that has not started yet, that lane
 * runs next on the same stack (the exited lane's frames are dead) instead of a switch to the scheduler, a new
 * context and a switch back: the schedule is the one the scheduler loop would have made, and a kernel without
 * scheduling points costs about a function call per lane.  Any other pick is handed to the scheduler. */
static void lane_entry(void *arg)
{
    rt_lane *ln = arg;
    rt_worker *w = tls_w;
    lane_arrived(w, ln);
    for (;;) {
        w->in_lane = 1;
        w->L->rk->kd->launch(&ln->pub);
        w->in_lane = 0;
        ln->state = L_EXITED;
        w->n_exited++;
        rt_sg *sg = &w->sgs[ln->sg];
        sg->live &= ~(1u << ln->lane);
        if (w->n_barrier > 0 && w->n_barrier + w->n_exited == w->nlanes)
            release_barrier(w);
        resolve_complete(w, ln->sg);
        if (atomic_load(&w->L->abort))
            break;
        int i = pick(w);
        if (i < 0 || w->lanes[i].state != L_NEW) {
            w->picked = i;
            w->have_picked = 1;
            break;
        }
        rt_lane *nx = &w->lanes[i];
        w->last = i;
        clr_run(w, i);
        nx->stack = ln->stack;
        ln->stack = NULL;
        trmtl_ctx t = nx->ctx;   /* the running context's storage (the ucontext fallback's buffer) moves along */
        nx->ctx = ln->ctx;
        ln->ctx = t;
        nx->state = L_RUNNABLE;
        w->cur = nx;
        ln = nx;
    }
    leave_lane(w, ln, 1);
    abort();
}

static uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }

static void release_stack(rt_worker *w, rt_lane *ln)
{
    if (ln->stack) {
        ln->stack->next = w->free_stacks;
        w->free_stacks = ln->stack;
        ln->stack = NULL;
    }
}

static void run_tg(rt_worker *w, uint64_t t)
{
    rt_launch *L = w->L;
    uint32_t gx = (uint32_t)(t % L->ntg[0]);
    uint32_t gy = (uint32_t)((t / L->ntg[0]) % L->ntg[1]);
    uint32_t gz = (uint32_t)(t / ((uint64_t)L->ntg[0] * L->ntg[1]));
    uint32_t sx = L->tgsz[0], sy = L->tgsz[1], sz = L->tgsz[2];
    if (L->dispatch_threads) {
        sx = min_u32(sx, L->threads[0] - gx * L->tgsz[0]);
        sy = min_u32(sy, L->threads[1] - gy * L->tgsz[1]);
        sz = min_u32(sz, L->threads[2] - gz * L->tgsz[2]);
    }
    int n = (int)(sx * sy * sz);
    w->nlanes = n;
    w->nsg = (n + 31) / 32;
    trmtl_uint3 tpg = {L->ntg[0], L->ntg[1], L->ntg[2]};
    trmtl_uint3 grid = L->dispatch_threads ? (trmtl_uint3){L->threads[0], L->threads[1], L->threads[2]}
                                           : (trmtl_uint3){L->ntg[0] * L->tgsz[0], L->ntg[1] * L->tgsz[1],
                                                           L->ntg[2] * L->tgsz[2]};
    /* builtins that depend only on the threadgroup's shape: set when the shape changes (partial threadgroups of
     * dispatchThreads) or on the first threadgroup of the launch */
    if (w->geo[0] != sx || w->geo[1] != sy || w->geo[2] != sz) {
        for (int i = 0; i < n; i++) {
            rt_lane *ln = &w->lanes[i];
            uint32_t x = (uint32_t)i % sx, y = ((uint32_t)i / sx) % sy, z = (uint32_t)i / (sx * sy);
            trmtl_lane *p = &ln->pub;
            p->thread_position_in_threadgroup = (trmtl_uint3){x, y, z};
            p->threads_per_threadgroup = (trmtl_uint3){sx, sy, sz};
            p->dispatch_threads_per_threadgroup = (trmtl_uint3){L->tgsz[0], L->tgsz[1], L->tgsz[2]};
            p->threadgroups_per_grid = tpg;
            p->threads_per_grid = grid;
            p->grid_origin = (trmtl_uint3){0, 0, 0};
            p->grid_size = grid;
            p->thread_index_in_threadgroup = (uint32_t)i;
            p->thread_index_in_simdgroup = (uint32_t)i % 32;
            p->simdgroup_index_in_threadgroup = (uint32_t)i / 32;
            p->threads_per_simdgroup = 32;
            p->simdgroups_per_threadgroup = (uint32_t)w->nsg;
            p->thread_index_in_quadgroup = (uint32_t)i % 4;
            p->quadgroup_index_in_threadgroup = (uint32_t)i / 4;
            p->quadgroups_per_threadgroup = ((uint32_t)n + 3) / 4;
            p->thread_execution_width = 32;
            p->bind = L->bind;
            p->tg_dyn = w->tg_dyn;
            ln->sg = i / 32;
            ln->lane = i % 32;
        }
        w->geo[0] = sx;
        w->geo[1] = sy;
        w->geo[2] = sz;
    }
    uint32_t ox = gx * L->tgsz[0], oy = gy * L->tgsz[1], oz = gz * L->tgsz[2];
    for (int i = 0; i < n; i++) {
        rt_lane *ln = &w->lanes[i];
        trmtl_lane *p = &ln->pub;
        p->threadgroup_position_in_grid = (trmtl_uint3){gx, gy, gz};
        p->thread_position_in_grid = (trmtl_uint3){ox + p->thread_position_in_threadgroup.x,
                                                   oy + p->thread_position_in_threadgroup.y,
                                                   oz + p->thread_position_in_threadgroup.z};
        ln->state = L_NEW;
        ln->mma_seq = 0;
        ln->stack = NULL;
    }
    for (int s = 0; s < w->nsg; s++) {
        rt_sg *sg = &w->sgs[s];
        int cnt = n - s * 32 < 32 ? n - s * 32 : 32;
        sg->present = sg->live = cnt == 32 ? 0xFFFFFFFFu : ((1u << cnt) - 1);
        for (uint32_t m = sg->gused; m; m &= m - 1)
            sg->g[__builtin_ctz(m)].used = 0;
        sg->gused = 0;
        for (int k = 0; k < MEMO_RING; k++)
            sg->memo[k].valid = 0;
    }
    /* fresh threadgroup memory */
    for (uint32_t k = 0; k < w->nalloc; k++)
        w->site_ptr[w->alloc_sites[k]] = NULL;
    w->nalloc = 0;
    w->arena_used = 0;
    for (int d = 0; d < TRMTL_MAX_TG_DYN; d++) {
        size_t bytes = L->bind->tg_dyn_bytes[d];
        w->tg_dyn[d] = NULL;
        if (!bytes)
            continue;
        size_t off = (w->arena_used + 15) / 16 * 16;
        w->tg_dyn[d] = w->arena + off;
        memset(w->arena + off, L->poison_site < 0 ? 0xFF : 0x00, bytes);
        w->arena_used = off + bytes;
    }
    if (w->arena_used > w->st.peak_tg_bytes)
        w->st.peak_tg_bytes = w->arena_used;
    memset(w->run, 0, sizeof w->run);
    for (int i = 0; i < n; i++) {
        w->run[i >> 6] |= 1ull << (i & 63);
        w->rlist[i] = w->rpos[i] = (uint16_t)i;
    }
    w->nrun = n;
    w->have_picked = 0;
    w->n_exited = w->n_barrier = 0;
    w->last = L->sched.policy == TR_MTL_REVERSE ? n : -1;
    w->rng = L->sched.seed ^ (t * 0xD1B54A32D192ED03ull);
    w->group_order = 0;
    w->st.lanes += (uint64_t)n;

    while (!atomic_load(&L->abort)) {
        int i = w->have_picked ? w->picked : pick(w);
        w->have_picked = 0;
        if (i < 0) {
            if (w->n_exited == n)
                break;
            if (quiesce(w) == 0) {
                int nb = 0, nr = 0;
                for (int k = 0; k < n; k++) {
                    nb += w->lanes[k].state == L_BARRIER;
                    nr += w->lanes[k].state == L_RDV;
                }
                set_abort(L, AB_DEADLOCK,
                          "deadlock in threadgroup %llu: nothing runnable, %d lanes at barriers, %d in rendezvous, "
                          "%d exited", (unsigned long long)t, nb, nr, w->n_exited);
                break;
            }
            continue;
        }
        rt_lane *ln = &w->lanes[i];
        w->last = i;
        clr_run(w, i);
        if (ln->state == L_NEW) {
            ln->stack = w->free_stacks;
            if (ln->stack)
                w->free_stacks = ln->stack->next;
            else
                ln->stack = trmtl_stack_get(L->stack_bytes);
#if defined(TRMTL_ASAN)
            /* a reused stack keeps the shadow of the frames of its previous lane (which never returned) */
            if (ln->stack)
                ASAN_UNPOISON_MEMORY_REGION(ln->stack->lo, (size_t)((char *)ln->stack->hi - (char *)ln->stack->lo));
#endif
            if (!ln->stack || trmtl_ctx_make(&ln->ctx, ln->stack, lane_entry, ln) != 0) {
                set_abort(L, AB_RESOURCE, "out of memory for lane stacks (%zu bytes each)", L->stack_bytes);
                break;
            }
        }
        ln->state = L_RUNNABLE;
        w->cur = ln;
        enter_lane(w, ln);
        ln = w->cur;           /* the lane that came back: another one when lanes chained on this stack */
        w->cur = NULL;
        w->in_lane = 0;
        if (ln->state == L_EXITED)
            release_stack(w, ln);
    }
    for (int i = 0; i < n; i++)
        release_stack(w, &w->lanes[i]);
}

/* ---- workers ---------------------------------------------------------------------------------------------------- */

static int watchdog_signal(void) { return SIGRTMIN + 4; }

static void on_watchdog(int sig)
{
    (void)sig;
    rt_worker *w = tls_w;
    if (!w || !w->in_lane || !w->cur)
        return;
    abandon(w, w->cur);
}

static pthread_once_t sig_once = PTHREAD_ONCE_INIT;
static void install_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_watchdog;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(watchdog_signal(), &sa, NULL);
}

static void *worker_main(void *arg)
{
    rt_worker *w = arg;
    rt_launch *L = w->L;
    tls_w = w;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, watchdog_signal());
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    uint32_t maxl = L->tgsz[0] * L->tgsz[1] * L->tgsz[2];
    w->lanes = tr_calloc(maxl, sizeof *w->lanes);
    w->sgs = tr_calloc((maxl + 31) / 32, sizeof *w->sgs);   /* zeroed: gused starts empty */
    w->arena = aligned_alloc(4096, ARENA_BYTES);
    w->site_ptr = tr_calloc(L->lib->nsites ? L->lib->nsites : 1, sizeof *w->site_ptr);
    w->alloc_sites = tr_calloc(L->lib->nsites ? L->lib->nsites : 1, sizeof *w->alloc_sites);
    if (!w->lanes || !w->sgs || !w->arena || !w->site_ptr || !w->alloc_sites || trmtl_ctx_init_main(&w->sched) != 0)
        set_abort(L, AB_RESOURCE, "out of memory for the worker's lanes and threadgroup memory");
    while (!atomic_load(&L->abort)) {
        uint64_t t = atomic_fetch_add(&L->next, 1);
        if (t >= L->total)
            break;
        run_tg(w, t);
        w->st.threadgroups++;
    }
    if (w->lanes)
        for (uint32_t i = 0; i < maxl; i++)
            trmtl_ctx_free(&w->lanes[i].ctx);
    while (w->free_stacks) {
        trmtl_stack *s = w->free_stacks;
        w->free_stacks = s->next;
        trmtl_stack_put(s);
    }
    trmtl_ctx_free(&w->sched);
    tr_dealloc(w->lanes);
    tr_dealloc(w->sgs);
    free(w->arena);
    tr_dealloc(w->site_ptr);
    tr_dealloc(w->alloc_sites);
    w->lanes = NULL;
    w->sgs = NULL;
    w->arena = NULL;
    w->site_ptr = NULL;
    w->alloc_sites = NULL;
    tls_w = NULL;
    pthread_mutex_lock(&L->mu);
    L->done++;
    pthread_cond_signal(&L->cv);
    pthread_mutex_unlock(&L->mu);
    return NULL;
}

/* ---- the launch ------------------------------------------------------------------------------------------------- */

static int online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int cmp_diag(const void *a, const void *b)
{
    const tr_mtl_diag *x = a, *y = b;
    if (x->code != y->code)
        return (int)x->code - (int)y->code;
    return strcmp(x->site, y->site);
}

static void merge_diags(tr_mtl_result *res, rt_worker *w)
{
    for (size_t i = 0; i < w->ndiags; i++) {
        size_t k = 0;
        for (; k < res->ndiags; k++)
            if (res->diags[k].code == w->diags[i].code && strcmp(res->diags[k].site, w->diags[i].site) == 0)
                break;
        if (k < res->ndiags) {
            res->diags[k].count += w->diags[i].count;
            continue;
        }
        tr_mtl_diag *q = tr_realloc(res->diags, (res->ndiags + 1) * sizeof *q);
        if (!q)
            return;
        res->diags = q;
        res->diags[res->ndiags++] = w->diags[i];
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int invalid(tr_mtl_result *res, tr_error *err, tr_mtl_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int invalid(tr_mtl_result *res, tr_error *err, tr_mtl_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->detail, sizeof res->detail, fmt, ap);
    va_end(ap);
    res->status = st;
    if (st == TR_MTL_INVALID)
        return tr_fail(err, TR_E_INVALID_PARAM, "metal-emu", "%s", res->detail);
    return TR_OK;
}

void tr_mtl_launch_init(tr_mtl_launch *l)
{
    memset(l, 0, sizeof *l);
    for (int d = 0; d < 3; d++)
        l->grid[d] = l->tg[d] = 1;
    l->schedule.policy = TR_MTL_SG_GREEDY;
    l->poison_site = -1;
}

int tr_mtl_dispatch(tr_mtl_lib *lib, const tr_mtl_kernel *k, const tr_mtl_args *a, const tr_mtl_launch *l,
                    tr_mtl_result *res, tr_error *err)
{
    memset(res, 0, sizeof *res);
    if (!lib || !k || !a || !l)
        return invalid(res, err, TR_MTL_INVALID, "missing library, kernel, arguments or launch");
    size_t ki = (size_t)(k - lib->kernels);
    if (ki >= lib->nkernels)
        return invalid(res, err, TR_MTL_INVALID, "kernel does not belong to this library");
    const rt_kernel *rk = &lib->rk[ki];
    uint64_t tg_threads = 1, total = 1;
    uint32_t ntg[3];
    for (int d = 0; d < 3; d++) {
        if (l->tg[d] == 0)
            return invalid(res, err, TR_MTL_INVALID, "threadgroup size has a zero dimension");
        tg_threads *= l->tg[d];
        ntg[d] = l->dispatch_threads ? (l->grid[d] + l->tg[d] - 1) / l->tg[d] : l->grid[d];
        total *= ntg[d];
    }
    if (tg_threads > 1024)
        return invalid(res, err, TR_MTL_RESOURCE_ERROR,
                       "threadgroup of %llu threads: Apple GPUs allow at most 1024 (maxTotalThreadsPerThreadgroup)",
                       (unsigned long long)tg_threads);
    if (l->mma_model != 0 && l->mma_model != 1)
        return invalid(res, err, TR_MTL_INVALID, "mma_model must be 0 or 1");
    /* every parameter needs a binding */
    size_t dyn = 0;
    for (int p = 0; p < k->nparams; p++) {
        const tr_mtl_param *P = &k->params[p];
        int ok = 1;
        if (P->index < 0)
            ok = P->kind == TR_MTL_BUILTIN;
        else if (P->kind == TR_MTL_BUFFER)
            ok = P->index < TRMTL_MAX_BUFFERS && a->buffer_set[P->index];
        else if (P->kind == TR_MTL_TEXTURE)
            ok = P->index < TRMTL_MAX_TEXTURES && a->tex_set[P->index];
        else if (P->kind == TR_MTL_SAMPLER)
            ok = P->index < TRMTL_MAX_SAMPLERS && a->sampler_set[P->index];
        else if (P->kind == TR_MTL_THREADGROUP) {
            ok = P->index < TRMTL_MAX_TG_DYN && a->tg_set[P->index];
            if (ok)
                dyn += (a->b.tg_dyn_bytes[P->index] + 15) / 16 * 16;
        }
        if (!ok)
            return invalid(res, err, TR_MTL_INVALID, "%s: parameter %s (%s %d) has no binding", k->name, P->name,
                           P->kind == TR_MTL_BUFFER ? "buffer" : P->kind == TR_MTL_TEXTURE ? "texture"
                           : P->kind == TR_MTL_SAMPLER ? "sampler" : "threadgroup", P->index);
    }
    if (dyn > TR_MTL_TG_MEMORY_LIMIT) {
        res->stats.peak_tg_bytes = dyn;
        return invalid(res, err, TR_MTL_RESOURCE_ERROR,
                       "threadgroup memory: %zu bytes of [[threadgroup(n)]] memory, over the 32 KiB limit", dyn);
    }
    if (total == 0)
        return TR_OK;

    rt_launch *L = tr_calloc(1, sizeof *L);
    if (!L)
        return tr_fail(err, TR_E_NOMEM, "metal-emu", "out of memory");
    L->lib = lib;
    L->rk = rk;
    L->bind = &a->b;
    for (int d = 0; d < 3; d++) {
        L->ntg[d] = ntg[d];
        L->tgsz[d] = l->tg[d];
        L->threads[d] = l->grid[d];
    }
    L->dispatch_threads = l->dispatch_threads;
    L->total = total;
    atomic_init(&L->next, 0);
    atomic_init(&L->abort, AB_NONE);
    L->sched = l->schedule;
    L->poison_site = l->poison_site;
    L->mma_model = l->mma_model;
    L->stack_bytes = l->stack_bytes;
    if (!L->stack_bytes) {
        const char *e = getenv("TRELLIS_METAL_EMU_STACK");
        L->stack_bytes = e && atol(e) > 0 ? (size_t)atol(e) : 256 * 1024;
    }
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->cv, NULL);
    int nw = l->n_workers > 0 ? l->n_workers : online_cpus();
    if ((uint64_t)nw > total)
        nw = (int)total;
    L->nworkers = nw;
    L->w = tr_calloc((size_t)nw, sizeof *L->w);
    if (!L->w) {
        tr_dealloc(L);
        return tr_fail(err, TR_E_NOMEM, "metal-emu", "out of memory");
    }
    pthread_once(&sig_once, install_handler);

    pthread_mutex_lock(&lib->launch_mu);
    trmtl_fiber_select();
    const trmtl_module_desc *md = lib->mods[rk->module].desc;
    md->set_function_constants(&a->fc);
    double t0 = now_s();
    int started = 0;
    for (int i = 0; i < nw; i++) {
        L->w[i].L = L;
        if (pthread_create(&L->w[i].th, NULL, worker_main, &L->w[i]) != 0) {
            set_abort(L, AB_RESOURCE, "cannot create worker thread %d", i);
            break;
        }
        L->w[i].started = 1;
        started++;
    }
    double limit = l->timeout_s == 0 ? 10.0 : l->timeout_s;
    pthread_mutex_lock(&L->mu);
    while (L->done < started) {
        double now = now_s();
        if (limit < 0 && atomic_load(&L->abort) == AB_NONE) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&L->cv, &L->mu, &ts);
            continue;
        }
        if (limit < 0)
            limit = 1e300;
        int timed_out = now - t0 >= limit;
        /* past the deadline, or aborted by a worker (resource overrun): interrupt lanes still running kernel code */
        if (timed_out || atomic_load(&L->abort) != AB_NONE) {
            int expect = AB_NONE;
            if (timed_out && atomic_compare_exchange_strong(&L->abort, &expect, AB_TIMEOUT))
                snprintf(L->detail, sizeof L->detail,
                         "watchdog: the launch ran past %.3g s (livelock, spin-wait or a very long kernel)", limit);
            pthread_mutex_unlock(&L->mu);
            for (int i = 0; i < nw; i++)
                if (L->w[i].started)
                    pthread_kill(L->w[i].th, watchdog_signal());
            pthread_mutex_lock(&L->mu);
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 20 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&L->cv, &L->mu, &ts);
            continue;
        }
        double wait = limit - (now - t0);
        if (wait > 0.25)
            wait = 0.25;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long ns = ts.tv_nsec + (long)(wait * 1e9);
        ts.tv_sec += ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        pthread_cond_timedwait(&L->cv, &L->mu, &ts);
    }
    pthread_mutex_unlock(&L->mu);
    for (int i = 0; i < nw; i++)
        if (L->w[i].started)
            pthread_join(L->w[i].th, NULL);
    pthread_mutex_unlock(&lib->launch_mu);

    res->stats.seconds = now_s() - t0;
    for (int i = 0; i < nw; i++) {
        rt_worker *w = &L->w[i];
        res->stats.threadgroups += w->st.threadgroups;
        res->stats.lanes += w->st.lanes;
        res->stats.context_switches += w->st.context_switches;
        res->stats.barriers += w->st.barriers;
        res->stats.rendezvous += w->st.rendezvous;
        res->stats.partial_collectives += w->st.partial_collectives;
        res->stats.mma_computed += w->st.mma_computed;
        res->stats.mma_reused += w->st.mma_reused;
        if (w->st.peak_tg_bytes > res->stats.peak_tg_bytes)
            res->stats.peak_tg_bytes = w->st.peak_tg_bytes;
        merge_diags(res, w);
        tr_dealloc(w->diags);
    }
    if (res->ndiags > 1)
        qsort(res->diags, res->ndiags, sizeof *res->diags, cmp_diag);
    switch (atomic_load(&L->abort)) {
    case AB_TIMEOUT:
    case AB_DEADLOCK:
        res->status = TR_MTL_TIMEOUT;
        break;
    case AB_RESOURCE:
        res->status = TR_MTL_RESOURCE_ERROR;
        break;
    case AB_INTERNAL:
        res->status = TR_MTL_INVALID;
        break;
    default:
        res->status = TR_MTL_OK;
    }
    snprintf(res->detail, sizeof res->detail, "%s", L->detail);
    pthread_mutex_destroy(&L->mu);
    pthread_cond_destroy(&L->cv);
    tr_dealloc(L->w);
    tr_dealloc(L);
    return TR_OK;
}

void tr_mtl_result_free(tr_mtl_result *res)
{
    tr_dealloc(res->diags);
    res->diags = NULL;
    res->ndiags = 0;
}

const char *tr_mtl_backend_name(void) { return "metal-emu"; }

const char *tr_mtl_status_name(tr_mtl_status s)
{
    switch (s) {
    case TR_MTL_OK: return "OK";
    case TR_MTL_RESOURCE_ERROR: return "RESOURCE_ERROR";
    case TR_MTL_TIMEOUT: return "TIMEOUT";
    default: return "INVALID";
    }
}

const char *tr_mtl_diag_name(tr_mtl_diag_code c)
{
    switch (c) {
    case TR_MTL_D_EARLY_RETURN: return "early_return_before_barrier";
    case TR_MTL_D_DIVERGENT_BARRIER: return "divergent_barrier";
    case TR_MTL_D_NON_UNIFORM_MMA: return "non_uniform_mma";
    case TR_MTL_D_NON_UNIFORM_MATRIX_OP: return "non_uniform_matrix_op";
    default: return "unsupported_feature";
    }
}

/* ---- schedules ------------------------------------------------------------------------------------------------- */

int tr_mtl_schedule_parse(const char *text, tr_mtl_schedule *out)
{
    char low[64];
    size_t n = 0;
    for (; text && text[n] && n < sizeof low - 1; n++)
        low[n] = (char)((text[n] >= 'A' && text[n] <= 'Z') ? text[n] + 32 : text[n]);
    low[n] = '\0';
    memset(out, 0, sizeof *out);
    if (strcmp(low, "forward") == 0)
        out->policy = TR_MTL_FORWARD;
    else if (strcmp(low, "reverse") == 0)
        out->policy = TR_MTL_REVERSE;
    else if (strcmp(low, "sg_greedy") == 0 || strcmp(low, "sg-greedy") == 0)
        out->policy = TR_MTL_SG_GREEDY;
    else if (strcmp(low, "random") == 0)
        out->policy = TR_MTL_RANDOM;
    else if (strncmp(low, "random:", 7) == 0 || strncmp(low, "random(", 7) == 0) {
        char *end;
        errno = 0;
        unsigned long long s = strtoull(low + 7, &end, 0);
        if (end == low + 7 || errno || (low[6] == '(' ? strcmp(end, ")") != 0 : *end != '\0'))
            return -1;
        out->policy = TR_MTL_RANDOM;
        out->seed = s;
    } else
        return -1;
    return 0;
}

const char *tr_mtl_schedule_name(const tr_mtl_schedule *s, char *buf, size_t cap)
{
    switch (s->policy) {
    case TR_MTL_FORWARD: snprintf(buf, cap, "FORWARD"); break;
    case TR_MTL_REVERSE: snprintf(buf, cap, "REVERSE"); break;
    case TR_MTL_SG_GREEDY: snprintf(buf, cap, "SG_GREEDY"); break;
    default: snprintf(buf, cap, "RANDOM(%llu)", (unsigned long long)s->seed); break;
    }
    return buf;
}
