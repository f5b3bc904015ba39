/*
 * pool.h — a small persistent pthread pool for the cpu backend (private to the engine).
 *
 * A pool of n threads is the caller plus n − 1 workers created once.  tr_pool_run(pool, n_tasks, fn, ctx) calls
 * fn(ctx, t) exactly once for every t in [0, n_tasks), spread over the workers and the caller (tasks are claimed one
 * at a time from a shared counter), and returns when every call has returned.  Between runs the workers spin for a
 * short while (so back-to-back decode calls do not pay a wake-up) and then sleep on a condition variable.
 *
 * One run at a time: tr_pool_run must not be called concurrently on the same pool, nor from inside fn.  Which thread
 * runs a task is unspecified, so fn must make its result independent of that (the GEMV computes each output row in
 * one task, in one fixed order).
 */
#ifndef TRELLIS_ENGINE_POOL_H
#define TRELLIS_ENGINE_POOL_H

#include "trellis/status.h"

#include <stddef.h>

typedef struct tr_pool tr_pool;
typedef void (*tr_pool_fn)(void *ctx, size_t task);

/* Create a pool of nthreads threads including the caller (0 = the number of online CPUs; 1 = no workers, tasks run
 * inline).  Returns TR_OK, TR_E_NOMEM (allocation) or TR_E_INTERNAL (pthread failure); *out is NULL on failure. */
int tr_pool_create(unsigned nthreads, tr_pool **out, tr_error *err);

/* Threads of the pool, the caller included (1 for a NULL pool). */
unsigned tr_pool_threads(const tr_pool *pool);

/* fn(ctx, t) for t = 0 .. n_tasks−1; returns when all are done.  A NULL pool runs the tasks inline in order. */
void tr_pool_run(tr_pool *pool, size_t n_tasks, tr_pool_fn fn, void *ctx);

/* Stop and join the workers, free the pool (NULL is a no-op). */
void tr_pool_destroy(tr_pool *pool);

/* The number of online CPUs (at least 1). */
unsigned tr_cpu_count(void);

#endif
