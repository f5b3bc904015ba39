/*
 * pool.c — the persistent pthread pool of pool.h.
 *
 * One 64-bit ticket holds the job generation (high 32 bits) and the next unclaimed task (low 32 bits).  A run first
 * closes the previous job (ticket (g, CLOSED): no compare-and-swap expecting (g, t) can succeed any more), then writes
 * the job (fn, ctx, n_tasks), zeroes the done counter and publishes ticket (g+1, 0) under the mutex, waking sleeping
 * workers.  Anyone (workers and the caller) claims a task by compare-and-swap of the ticket (g, t) -> (g, t+1) with
 * t < n_tasks, runs it and counts it done; the caller returns when all n_tasks are done.  A claimer reads the ticket,
 * then the job fields, then compare-and-swaps (all sequentially consistent): if it read any field of a newer job, the
 * close came before that write, so its compare-and-swap fails; it never runs a task of a job it did not read.  The
 * caller never waits for a worker that holds no task (a descheduled worker cannot stall a run).
 * Waiting (workers for a job, the caller for completion) spins for SPIN_NS first, then sleeps on a condition variable.
 */
#include "pool.h"
#include "trellis/alloc.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#define SPIN_NS 200000L   /* 200 µs: longer than the gap between back-to-back decode calls */
#define CLOSED UINT32_MAX  /* ticket index of a closed job */

struct tr_pool {
    unsigned n;                         /* threads including the caller */
    unsigned started;                   /* workers actually created */
    pthread_t *tid;
    pthread_mutex_t mu;
    pthread_cond_t wake;                /* workers: a new generation or stop */
    pthread_cond_t finished;            /* caller: all tasks done */
    _Atomic(tr_pool_fn) fn;             /* the job of the current generation */
    _Atomic(void *) ctx;
    atomic_size_t n_tasks;
    atomic_uint_least64_t ticket;       /* generation << 32 | next task */
    atomic_size_t done;                 /* tasks finished in the current generation */
    atomic_int stop;
};

unsigned tr_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n >= 1 ? (unsigned)n : 1u;
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("pause");
#endif
}

static long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static uint32_t gen_of(uint64_t ticket) { return (uint32_t)(ticket >> 32); }

static int new_job(const tr_pool *p, uint32_t seen)
{
    return gen_of(atomic_load_explicit(&p->ticket, memory_order_acquire)) != seen ||
           atomic_load_explicit(&p->stop, memory_order_acquire);
}

static int all_done(const tr_pool *p, uint32_t n)
{
    return atomic_load_explicit(&p->done, memory_order_acquire) == n;
}

/* Spin until cond(p, arg) holds or SPIN_NS passed; returns whether it holds. */
static int spin_until(const tr_pool *p, int (*cond)(const tr_pool *, uint32_t), uint32_t arg)
{
    long deadline = now_ns() + SPIN_NS;
    for (;;) {
        for (int k = 0; k < 64; k++) {
            if (cond(p, arg))
                return 1;
            cpu_relax();
        }
        if (now_ns() > deadline)
            return cond(p, arg);
    }
}

/* Claim and run tasks of generation gen until none is left or the generation changed. */
static void run_claimed(tr_pool *p, uint32_t gen)
{
    uint64_t t = atomic_load(&p->ticket);
    for (;;) {
        if (gen_of(t) != gen)
            return;
        tr_pool_fn fn = atomic_load(&p->fn);
        void *ctx = atomic_load(&p->ctx);
        size_t n = atomic_load(&p->n_tasks);
        size_t task = (uint32_t)t;
        if (task >= n)    /* all claimed, or closed */
            return;
        if (!atomic_compare_exchange_weak(&p->ticket, &t, t + 1))
            continue;    /* t reloaded: another claim, or the job was closed */
        fn(ctx, task);
        if (atomic_fetch_add_explicit(&p->done, 1, memory_order_acq_rel) + 1 == n) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->finished);
            pthread_mutex_unlock(&p->mu);
        }
        t = atomic_load(&p->ticket);
    }
}

static void wait_job(tr_pool *p, uint32_t seen)
{
    if (spin_until(p, new_job, seen))
        return;
    pthread_mutex_lock(&p->mu);
    while (!new_job(p, seen))
        pthread_cond_wait(&p->wake, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static void *worker_main(void *arg)
{
    tr_pool *p = arg;
    uint32_t seen = 0;
    for (;;) {
        wait_job(p, seen);
        if (atomic_load_explicit(&p->stop, memory_order_acquire))
            return NULL;
        seen = gen_of(atomic_load_explicit(&p->ticket, memory_order_acquire));
        run_claimed(p, seen);
    }
}

static void stop_workers(tr_pool *p)
{
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->stop, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (unsigned k = 0; k < p->started; k++)
        pthread_join(p->tid[k], NULL);
    p->started = 0;
}

static void pool_free(tr_pool *p)
{
    pthread_cond_destroy(&p->finished);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mu);
    tr_dealloc(p->tid);
    tr_dealloc(p);
}

int tr_pool_create(unsigned nthreads, tr_pool **out, tr_error *err)
{
    *out = NULL;
    unsigned n = nthreads ? nthreads : tr_cpu_count();
    tr_pool *p = tr_calloc(1, sizeof *p);
    pthread_t *tid = n > 1 ? tr_calloc(n - 1, sizeof *tid) : NULL;
    if (!p || (n > 1 && !tid)) {
        tr_dealloc(p);
        tr_dealloc(tid);
        return tr_fail(err, TR_E_NOMEM, "pool", "cannot allocate a pool of %u threads", n);
    }
    p->n = n;
    p->tid = tid;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->finished, NULL);
    atomic_init(&p->fn, NULL);
    atomic_init(&p->ctx, NULL);
    atomic_init(&p->n_tasks, 0);
    atomic_init(&p->ticket, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->stop, 0);
    for (; p->started + 1 < n; p->started++)
        if (pthread_create(&p->tid[p->started], NULL, worker_main, p) != 0) {
            stop_workers(p);
            pool_free(p);
            return tr_fail(err, TR_E_INTERNAL, "pool", "cannot start worker thread %u of %u", p->started + 1, n - 1);
        }
    *out = p;
    return TR_OK;
}

unsigned tr_pool_threads(const tr_pool *pool) { return pool ? pool->n : 1u; }

void tr_pool_run(tr_pool *p, size_t n_tasks, tr_pool_fn fn, void *ctx)
{
    if (!p || p->n == 1 || n_tasks <= 1 || n_tasks >= CLOSED) {
        for (size_t t = 0; t < n_tasks; t++)
            fn(ctx, t);
        return;
    }
    uint32_t gen = gen_of(atomic_load(&p->ticket));
    atomic_store(&p->ticket, (uint64_t)gen << 32 | CLOSED);
    gen++;
    atomic_store(&p->fn, fn);
    atomic_store(&p->ctx, ctx);
    atomic_store(&p->n_tasks, n_tasks);
    atomic_store(&p->done, 0);
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->ticket, (uint64_t)gen << 32);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_claimed(p, gen);
    uint32_t n = (uint32_t)n_tasks;
    if (spin_until(p, all_done, n))
        return;
    pthread_mutex_lock(&p->mu);
    while (!all_done(p, n))
        pthread_cond_wait(&p->finished, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void tr_pool_destroy(tr_pool *p)
{
    if (!p)
        return;
    stop_workers(p);
    pool_free(p);
}
