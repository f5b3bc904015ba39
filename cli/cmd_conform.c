/*
 * cmd_conform.c — `trellis conform` (HARNESS.md §3): enumerates op × variant × parameter point for each backend,
 * runs every case in a forked worker (a crash or a hang costs one case, never the run), prints a failure line with
 * its replay command for every case that does not pass, writes the trellis.conformance/1 JSON and decides the exit
 * status.  Cases are numbered in enumeration order (KERNELS.md §5); --shard I/N keeps the cases c with c mod N = I.
 */
#include "cli.h"
#include "conform.h"
#include "trellis/alloc.h"
#include "trellis/coverage.h"
#include "trellis/jsonio.h"
#include "trellis/version.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>


static const char *const CMD = "conform";

/* The whole case (generation, reference, bounds, backend) gets this long before its worker is killed; the backend's
 * run alone is held to --case-timeout inside the worker. */
#define CONFORM_WATCHDOG(t) ((t) + 600.0)

typedef struct conform_args {
    const char *backends[8];
    int nbackends;
    const char *ops;           /* comma-separated fnmatch patterns */
    uint64_t seed;
    tr_tier tier;
    int strict, bench, reps, jobs, progress;
    unsigned shard, nshards;
    const char *json;
    const char *capture_out;
    double case_timeout;
    const char *replay;
    const char *metal_math;
    const char *metal_dirs[8]; /* --metal-dir (repeatable); none: metal/kernels */
    int nmetal_dirs;
    const char *metal_schedules;
    int metal_mma_model;
} conform_args;

static void help(void)
{
    fprintf(cli_out,
            "Usage: trellis conform [--backend B] [--ops GLOB] [--seed N] [--quick|--full|--exhaustive] [--strict]\n"
            "                       [--shard I/N] [--json FILE] [--capture-out DIR] [--case-timeout S]\n"
            "                       [--metal-math relaxed|safe|both] [--replay CASE_ID] [--bench [--reps N]]\n"
            "                       [--jobs N] [--no-progress]\n"
            "                       [--metal-dir DIR]... [--metal-schedules LIST] [--metal-mma-model 0|1]\n"
            "  --backend   cpu (default: every available backend but ref), ref, metal-emu, capture:DIR; repeat or\n"
            "              comma-separate\n"
            "  metal-emu   the .metal kernels of metal/kernels (or of each --metal-dir) run on the CPU emulator\n"
            "              (METAL.md): kernels named as in KERNELS.md §4 (or registered in the folder's registry.json)\n"
            "              become variants; each case runs under every schedule of --metal-schedules (default\n"
            "              sg_greedy,random = RANDOM(case seed)) and differing outputs FAIL; --metal-math selects the\n"
            "              bound's math mode (relaxed, the Metal default; safe; both runs each case twice)\n"
            "  --ops       comma-separated fnmatch patterns on <op>/<variant>; a pattern without '/' matches <op>.\n"
            "              With --backend ref, an <op>/<variant> pattern also selects foreign variants (the reference\n"
            "              computes them in their accumulation mode), e.g. to make captures for mutation tests.\n"
            "  --quick     every op and variant, each axis value once (default); --full all-pairs; --exhaustive product\n"
            "  --strict    PRECISION_WARNING fails the run\n"
            "  --shard I/N run the cases c with c mod N == I (also TEST_SHARD_INDEX / TEST_TOTAL_SHARDS)\n"
            "  --bench     time every case --reps times (default 5) on the backend and the reference (medians)\n"
            "  --jobs N    worker processes (default: online CPUs; 1 with --bench)\n"
            "Exit: 0 no FAIL/CRASH/TIMEOUT (with --strict: nor PRECISION_WARNING), 1 otherwise, 2 usage or input error.\n");
}

/* ---- selection --------------------------------------------------------------------------------------------------- */

/* Does "op/variant" match one of the comma-separated patterns (a pattern without '/' matches the op alone)?
 * explicit receives 1 when a pattern naming this exact variant matched. */
static int ops_match(const char *patterns, const char *op, const char *variant, int *explicit_variant)
{
    *explicit_variant = 0;
    if (!patterns)
        return 1;
    char full[256], buf[1024];
    snprintf(full, sizeof full, "%s/%s", op, variant);
    snprintf(buf, sizeof buf, "%s", patterns);
    int hit = 0;
    for (char *save = NULL, *p = strtok_r(buf, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        if (strchr(p, '/')) {
            if (fnmatch(p, full, 0) == 0) {
                hit = 1;
                *explicit_variant |= !strchr(p, '*') && !strchr(p, '?') && !strchr(p, '[');
            }
        } else if (fnmatch(p, op, 0) == 0)
            hit = 1;
    }
    return hit;
}

/* Which variants a backend runs: its own (ref → "ref", cpu → "cpu"); ref also runs any variant that --ops names
 * explicitly (its outputs are then the reference's in that variant's accumulation mode: captures for tests). */
static int backend_runs(const char *backend, const tr_variant *v, int explicit_variant)
{
    if (strcmp(v->id, backend) == 0)
        return 1;
    return strcmp(backend, "ref") == 0 && explicit_variant;
}

/* ---- workers --------------------------------------------------------------------------------------------------- */

typedef struct worker {
    pid_t pid;
    int fd;
    size_t slot;               /* index into the results of this run */
    char *buf;
    size_t len, cap;
    double deadline;
} worker;

typedef struct run_state {
    const conform_args *a;
    const char *backend;
    json_t *capture_manifest;  /* capture backend: the manifest */
    const char *capture_dir;
    tr_case *cases;            /* dispatched cases, in order */
    json_t **results;
    size_t n, cap, printed;
    worker w[64];
    int nw;
    unsigned counts[TR_VERDICT_COUNT];
    json_t *capture_entries;
    cmetal_set *mset;          /* metal-emu: the built folders and their variants */
    cmetal_cfg mcfg;
} run_state;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The default per-case limit (10 s) is for native speed; under valgrind (20-50x slower, and on a loaded machine) a
 * correct case would turn into TIMEOUT, so the default grows 20x there.  An explicit --case-timeout is kept. */
static double default_case_timeout(void)
{
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
    if (RUNNING_ON_VALGRIND)
        return 200.0;
#endif
#endif
    return 10.0;
}

/* A forked case child ends with _exit and never tears down the state it shares with the parent, so valgrind's
 * leak check at its exit would report the parent's memory as lost; errors are still reported. */
static void child_no_leak_check(void)
{
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
    if (RUNNING_ON_VALGRIND)
        VALGRIND_CLO_CHANGE("--leak-check=no");
#endif
#endif
}

/* Child: create the backend (threads must not cross fork), run the case, write one JSON line, exit. */
static void child_run(run_state *s, const tr_case *c, json_t *capture_case, int fd)
{
    child_no_leak_check();
    conform_source src = {NULL, capture_case, s->capture_dir, NULL, NULL};
    conform_opts o = {s->backend, s->a->bench, s->a->reps, s->a->capture_out, s->a->case_timeout};
    tr_error err;
    json_t *res;
    if (s->mset) {
        src.mv = cmetal_of_variant(s->mset, c->variant);
        src.mcfg = &s->mcfg;
        res = conform_exec(c, &src, &o);
    } else if (!capture_case && tr_backend_create(s->backend, 0, &src.be, &err) != TR_OK) {
        res = json_object();
        json_object_set_new(res, "status", json_string("UNSUPPORTED"));
        json_object_set_new(res, "detail", json_string(err.text));
    } else
        res = conform_exec(c, &src, &o);
    char *text = tr_json_dumps(res, JSON_COMPACT, tr_json_mark());
    size_t len = text ? strlen(text) : 0, off = 0;
    while (text && off < len) {
        ssize_t k = write(fd, text + off, len - off);
        if (k <= 0)
            break;
        off += (size_t)k;
    }
    int code = text ? 0 : 4;
    tr_dealloc(text);
    json_decref(res);
    tr_backend_destroy(src.be);
    tr_coverage_flush();   /* coverage builds: _exit skips gcov's exit handler */
    _exit(code);
}

static json_t *synthetic_result(const tr_case *c, const char *backend, const char *status, const char *detail)
{
    char seed[24], replay[1024];
    snprintf(seed, sizeof seed, "0x%016llx", (unsigned long long)c->seed);
    conform_replay(replay, sizeof replay, backend, c);
    json_t *o = json_object();
    json_object_set_new(o, "case", json_string(c->id));
    json_object_set_new(o, "case_index", json_integer((json_int_t)c->index));
    json_object_set_new(o, "case_seed", json_string(seed));
    json_object_set_new(o, "op", json_string(c->op->name));
    json_object_set_new(o, "variant", json_string(c->variant->id));
    json_object_set_new(o, "class", json_string(tr_class_name(tr_case_class(c))));
    json_object_set_new(o, "metal_math", c->metal ? json_string(c->metal_math == TR_MATH_SAFE ? "safe" : "relaxed")
                                                  : json_null());
    json_object_set_new(o, "status", json_string(status));
    json_object_set_new(o, "detail", json_string(detail));
    json_object_set_new(o, "replay", json_string(replay));
    return o;
}

static int verdict_index(const char *status)
{
    tr_verdict v;
    return status && tr_verdict_parse(status, &v) == 0 ? (int)v : TR_FAIL;
}

static int is_failure(const conform_args *a, int v)
{
    return v == TR_FAIL || v == TR_CRASH || v == TR_TIMEOUT || (a->strict && v == TR_PRECISION_WARNING);
}

/* Print finished results in enumeration order: one line per case that did not pass. */
static void print_ready(run_state *s)
{
    while (s->printed < s->n && s->results[s->printed]) {
        json_t *r = s->results[s->printed];
        const char *status = json_string_value(json_object_get(r, "status"));
        int v = verdict_index(status);
        s->counts[v]++;
        /* metal-emu: a passing case with emulator diagnostics (early return before a barrier, ...) gets a note */
        json_t *diags = json_object_get(json_object_get(r, "metal_emu"), "diagnostics");
        if ((v != TR_PASS && v != TR_UNSUPPORTED) || (v == TR_PASS && json_array_size(diags) > 0)) {
            json_t *fm = json_object_get(r, "first_mismatch");
            char where[256] = "";
            if (json_is_object(fm)) {
                json_t *coords = json_object_get(fm, "coords");
                int at = snprintf(where, sizeof where, " first mismatch %s[", json_string_value(json_object_get(fm,
                                                                                                                  "output")));
                for (size_t d = 0; d < json_array_size(coords) && at < 200; d++)
                    at += snprintf(where + at, sizeof where - (size_t)at, "%s%lld", d ? "," : "",
                                   (long long)json_integer_value(json_array_get(coords, d)));
                snprintf(where + at, sizeof where - (size_t)at, "] got %s expected %s",
                         json_string_value(json_object_get(fm, "got")),
                         json_string_value(json_object_get(fm, "expected")));
            }
            fprintf(cli_out, "%s%s case=%s seed=%s: %s%s\n    replay: %s\n",
                    is_failure(s->a, v) ? "" : "note: ", status, json_string_value(json_object_get(r, "case")),
                    json_string_value(json_object_get(r, "case_seed")),
                    json_string_value(json_object_get(r, "detail")) ? json_string_value(json_object_get(r, "detail"))
                                                                     : "",
                    where, json_string_value(json_object_get(r, "replay")));
        }
        s->printed++;
    }
    fflush(cli_out);
}

static void finish_worker(run_state *s, int i, const char *status_override, const char *detail)
{
    worker *w = &s->w[i];
    int st = 0;
    if (status_override)
        kill(w->pid, SIGKILL);
    waitpid(w->pid, &st, 0);
    close(w->fd);
    const tr_case *c = &s->cases[w->slot];
    json_t *r = NULL;
    if (!status_override && WIFEXITED(st) && WEXITSTATUS(st) == 0 && w->len) {
        json_error_t jerr;
        int rc;
        w->buf[w->len] = '\0';
        r = tr_json_parse(w->buf, w->len, TR_E_INTERNAL, 0, &jerr, &rc);
    }
    if (!r) {
        char d[160];
        if (status_override)
            snprintf(d, sizeof d, "%s", detail);
        else if (WIFEXITED(st) && WEXITSTATUS(st) == CONFORM_EXIT_TIMEOUT) {
            snprintf(d, sizeof d, "the backend ran over the %.3g s case limit (--case-timeout)", s->a->case_timeout);
            status_override = "TIMEOUT";
        } else if (WIFSIGNALED(st))
            snprintf(d, sizeof d, "worker process died with signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
        else
            snprintf(d, sizeof d, "worker process exited with status %d and no result", WEXITSTATUS(st));
        r = synthetic_result(c, s->backend, status_override ? status_override : "CRASH", d);
    }
    json_t *cap = json_object_get(r, "capture");
    if (cap) {
        json_array_append(s->capture_entries, cap);
        json_object_del(r, "capture");
    }
    s->results[w->slot] = r;
    tr_dealloc(w->buf);
    s->w[i] = s->w[--s->nw];
    print_ready(s);
}

/* Wait until at least one worker finishes (or times out). */
static void reap(run_state *s)
{
    struct pollfd p[64];
    for (int i = 0; i < s->nw; i++)
        p[i] = (struct pollfd){s->w[i].fd, POLLIN, 0};
    int rc = poll(p, (nfds_t)s->nw, 200);
    if (rc < 0 && errno != EINTR)
        return;
    for (int i = s->nw - 1; i >= 0; i--) {
        worker *w = &s->w[i];
        if (rc > 0 && (p[i].revents & (POLLIN | POLLHUP | POLLERR))) {
            if (w->len + 65536 > w->cap) {
                size_t cap = w->cap ? 2 * w->cap + 65536 : 131072;
                char *b = tr_realloc(w->buf, cap);
                if (!b) {
                    finish_worker(s, i, "RESOURCE_ERROR", "out of memory reading the worker's result");
                    continue;
                }
                w->buf = b;
                w->cap = cap;
            }
            ssize_t k = read(w->fd, w->buf + w->len, w->cap - w->len - 1);
            if (k > 0) {
                w->len += (size_t)k;
                continue;
            }
            finish_worker(s, i, NULL, NULL);
        } else if (now_s() > w->deadline) {
            char d[128];
            snprintf(d, sizeof d, "the case ran over its %.0f s watchdog (inputs, reference and backend)",
                     CONFORM_WATCHDOG(s->a->case_timeout));
            finish_worker(s, i, "TIMEOUT", d);
        }
    }
}

/* Room for one more case. */
static int grow(run_state *s)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        tr_case *cs = tr_realloc(s->cases, cap * sizeof *cs);
        json_t **rs = cs ? tr_realloc(s->results, cap * sizeof *rs) : NULL;
        if (cs)
            s->cases = cs;
        if (!cs || !rs)
            return TR_E_NOMEM;
        s->results = rs;
        s->cap = cap;
    }
    return TR_OK;
}

/* A case judged without running it (UNSUPPORTED: binding mismatch or declared domain). */
static int settle(run_state *s, const tr_case *c, const char *status, const char *detail)
{
    if (grow(s) != TR_OK)
        return TR_E_NOMEM;
    s->cases[s->n] = *c;
    s->results[s->n++] = synthetic_result(c, s->backend, status, detail);
    print_ready(s);
    return TR_OK;
}

static int dispatch(run_state *s, const tr_case *c, json_t *capture_case)
{
    if (grow(s) != TR_OK)
        return TR_E_NOMEM;
    s->cases[s->n] = *c;
    s->results[s->n] = NULL;
    size_t slot = s->n++;
    int jobs = s->a->jobs;
    while (s->nw >= jobs)
        reap(s);
    int fds[2];
    if (pipe(fds) != 0)
        return TR_E_IO;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return TR_E_NOMEM;
    }
    if (pid == 0) {
        close(fds[0]);
        child_run(s, &s->cases[slot], capture_case, fds[1]);
    }
    close(fds[1]);
    s->w[s->nw++] = (worker){pid, fds[0], slot, NULL, 0, 0, now_s() + CONFORM_WATCHDOG(s->a->case_timeout)};
    return TR_OK;
}

/* ---- enumeration ---------------------------------------------------------------------------------------------- */

static void progress(const run_state *s, uint64_t seen)
{
    if (!s->a->progress)
        return;
    fprintf(stderr, "\r%s: %llu cases dispatched, %zu done   ", s->backend, (unsigned long long)seen, s->printed);
    fflush(stderr);
}

/* Every case of the live backend, in enumeration order; this shard's cases are dispatched. */
static int run_registry(run_state *s, tr_error *err)
{
    const conform_args *a = s->a;
    uint64_t number = 0;
    for (size_t oi = 0; oi < tr_registry_count(); oi++) {
        const tr_opdef *op = tr_registry_op(oi);
        for (int vi = 0; vi < op->nvariants; vi++) {
            const tr_variant *v = &op->variants[vi];
            int explicit_variant;
            if (!ops_match(a->ops, op->name, v->id, &explicit_variant) || !backend_runs(s->backend, v, explicit_variant))
                continue;
            tr_point_iter it;
            if (tr_point_iter_init(&it, op, a->tier, err) != TR_OK)
                return err->code;
            char text[TR_CASE_ID_MAX];
            while (tr_point_iter_next(&it, text, sizeof text)) {
                uint64_t idx = number++;
                if (idx % a->nshards != a->shard)
                    continue;
                tr_case c;
                if (tr_case_init(&c, op, v, text, 0, a->seed) != TR_OK) {
                    tr_point_iter_free(&it);
                    return tr_fail(err, TR_E_INTERNAL, op->name, "bad parameter text %s", text);
                }
                c.index = idx;
                if (dispatch(s, &c, NULL) != TR_OK) {
                    tr_point_iter_free(&it);
                    return tr_fail(err, TR_E_NOMEM, CMD, "cannot start a worker");
                }
                if (s->n % 16 == 0)
                    progress(s, idx + 1);
            }
            tr_point_iter_free(&it);
        }
    }
    return TR_OK;
}

/* Math modes of the metal-emu cases (--metal-math). */
static int metal_maths(const conform_args *a, int *modes)
{
    if (a->metal_math && !strcmp(a->metal_math, "both")) {
        modes[0] = TR_MATH_RELAXED;
        modes[1] = TR_MATH_SAFE;
        return 2;
    }
    modes[0] = a->metal_math && !strcmp(a->metal_math, "safe") ? TR_MATH_SAFE : TR_MATH_RELAXED;
    return 1;
}

/* The quick tier of a metal-emu variant treats its declared domain as one more constraint of the op (docs/
 * decisions.md, metal-emu bindings): every axis value the variant can take appears once, the other axes at their
 * defaults or as few of them moved as the domain needs (tr_point_iter_init_pred).  Without any such point (or for an
 * unavailable kernel) the op's own points are listed, each UNSUPPORTED with its reason; the always points are the
 * op's metal_quick_always where it has them. */
static int metal_point_ok(void *ctx, const tr_params *p)
{
    const cmetal_variant *mv = ctx;
    tr_case c;
    char why[512];
    return tr_case_init(&c, mv->op, &mv->v, p->text, 0, 0) == TR_OK && !cmetal_unsupported(mv, &c, why, sizeof why);
}

static int metal_points(const conform_args *a, const cmetal_variant *mv, tr_point_iter *it, tr_error *err)
{
    int quick = a->tier == TR_TIER_QUICK, rc = TR_E_INTERNAL;
    if (quick && mv->available) {
        if (tr_point_iter_init_pred(it, mv->op, a->tier, metal_point_ok, (void *)mv, err) != TR_OK)
            return err->code;
        if (it->nlist > 0)
            rc = TR_OK;
        else
            tr_point_iter_free(it);
    }
    if (rc != TR_OK && tr_point_iter_init(it, mv->op, a->tier, err) != TR_OK)
        return err->code;
    if (quick && mv->op->metal_quick_always)   /* the realistic shapes of the emulator's quick tier */
        tr_point_iter_use_always(it, mv->op->metal_quick_always, mv->op->nmetal_quick_always);
    return TR_OK;
}

/* One metal-emu variant: every point of the tier (times each math mode); cases outside the variant's declared
 * domain, or of a kernel whose parameters do not match the binding family, are UNSUPPORTED without running. */
static int run_metal_variant(run_state *s, const cmetal_variant *mv, uint64_t *number, tr_error *err)
{
    const conform_args *a = s->a;
    int explicit_variant, modes[2], nm = metal_maths(a, modes);
    if (!ops_match(a->ops, mv->op->name, mv->v.id, &explicit_variant))
        return TR_OK;
    tr_point_iter it;
    if (metal_points(a, mv, &it, err) != TR_OK)
        return err->code;
    char text[TR_CASE_ID_MAX];
    int rc = TR_OK;
    while (rc == TR_OK && tr_point_iter_next(&it, text, sizeof text))
        for (int mi = 0; rc == TR_OK && mi < nm; mi++) {
            uint64_t idx = (*number)++;
            if (idx % a->nshards != a->shard)
                continue;
            tr_case c;
            if (tr_case_init(&c, mv->op, &mv->v, text, 0, a->seed) != TR_OK) {
                rc = tr_fail(err, TR_E_INTERNAL, mv->op->name, "bad parameter text %s", text);
                break;
            }
            c.metal_math = modes[mi];
            c.index = idx;
            char why[512];
            if (cmetal_unsupported(mv, &c, why, sizeof why))
                rc = settle(s, &c, "UNSUPPORTED", why);
            else
                rc = dispatch(s, &c, NULL);
            if (rc != TR_OK)
                rc = tr_fail(err, TR_E_NOMEM, CMD, "cannot start a worker");
            else if (s->n % 16 == 0)
                progress(s, idx + 1);
        }
    tr_point_iter_free(&it);
    return rc;
}

/* metal-emu: per op (KERNELS.md §4 order) the variants the folders provide, in the op's table order (a symbol's
 * record first; our canonical kernels take the place of the symbol they implement), then registered extras. */
static int run_metal(run_state *s, tr_error *err)
{
    uint64_t number = 0;
    size_t n = cmetal_count(s->mset);
    for (size_t oi = 0; oi < tr_registry_count(); oi++) {
        const tr_opdef *op = tr_registry_op(oi);
        for (int vi = 0; vi <= op->nvariants; vi++)
            for (size_t j = 0; j < n; j++) {
                const cmetal_variant *mv = cmetal_at(s->mset, j);
                if (mv->op != op)
                    continue;
                int in_table = 0;
                for (int t = 0; t < op->nvariants && !in_table; t++)
                    in_table = !strcmp(op->variants[t].symbol, mv->v.symbol);
                if (vi < op->nvariants ? strcmp(op->variants[vi].symbol, mv->v.symbol) != 0 : in_table)
                    continue;
                int rc = run_metal_variant(s, mv, &number, err);
                if (rc != TR_OK)
                    return rc;
            }
    }
    return TR_OK;
}

/* Every case of a capture folder, numbered in manifest order. */
static int run_capture(run_state *s, tr_error *err)
{
    json_t *cases = json_object_get(s->capture_manifest, "cases");
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *e = json_array_get(cases, i);
        const char *id = json_string_value(json_object_get(e, "case"));
        json_t *seed = json_object_get(e, "seed");
        tr_case c;
        if (!id || !json_is_integer(seed))
            return tr_fail(err, TR_E_INPUT, s->capture_dir, "cases[%zu] lacks case or seed", i);
        if (tr_case_from_id(&c, id, (uint64_t)json_integer_value(seed), err) != TR_OK)
            return err->code;
        int explicit_variant;
        if (i % s->a->nshards != s->a->shard || !ops_match(s->a->ops, c.op->name, c.variant->id, &explicit_variant))
            continue;
        c.index = i;
        if (dispatch(s, &c, e) != TR_OK)
            return tr_fail(err, TR_E_NOMEM, CMD, "cannot start a worker");
    }
    return TR_OK;
}

/* ---- output ------------------------------------------------------------------------------------------------------ */

static json_t *host_json(void)
{
    json_t *h = json_object();
    struct utsname u;
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    json_object_set_new(h, "hostname", json_string(host));
    if (uname(&u) == 0) {
        json_object_set_new(h, "os", json_string(u.sysname));
        json_object_set_new(h, "machine", json_string(u.machine));
    }
    json_object_set_new(h, "cpus", json_integer(sysconf(_SC_NPROCESSORS_ONLN)));
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0 && strchr(line, ':')) {
            char *m = strchr(line, ':') + 2;
            m[strcspn(m, "\n")] = '\0';
            json_object_set_new(h, "cpu_model", json_string(m));
            break;
        }
    if (f)
        fclose(f);
    return h;
}

static json_t *summary_json(const unsigned *counts)
{
    json_t *s = json_object();
    for (int v = 0; v < TR_VERDICT_COUNT; v++)
        json_object_set_new(s, tr_verdict_name((tr_verdict)v), json_integer(counts[v]));
    return s;
}

static int write_results(run_state *s, const char *path, const char *started, unsigned long mark)
{
    json_t *doc = json_object(), *res = json_array(), *dev = json_object();
    json_object_set_new(doc, "schema", json_string("trellis.conformance/1"));
    json_object_set_new(doc, "tool_version", json_string(tr_version()));
    json_object_set_new(doc, "git_commit", json_string(tr_git_commit()));
    json_object_set_new(doc, "backend", json_string(s->backend));
    json_object_set_new(dev, "name", json_string(s->backend));
    tr_backend *be = NULL;
    tr_error err;
    if (s->mset) {
        json_object_set_new(dev, "description", json_string("CPU emulation of Metal kernels (METAL.md): one fiber per "
                                                            "lane, 32-lane simdgroups"));
        json_object_set_new(doc, "metal_emu", cmetal_set_json(s->mset));
    } else if (!s->capture_dir && tr_backend_create(s->backend, 1, &be, &err) == TR_OK)
        json_object_set_new(dev, "description", json_string(be->device));
    tr_backend_destroy(be);
    json_object_set_new(doc, "device", dev);
    json_object_set_new(doc, "host", host_json());
    json_object_set_new(doc, "started", json_string(started));
    json_object_set_new(doc, "seed", json_integer((json_int_t)s->a->seed));
    json_object_set_new(doc, "tier", json_string(tr_tier_name(s->a->tier)));
    json_object_set_new(doc, "strict", json_boolean(s->a->strict));
    if (s->a->nshards > 1) {
        json_object_set_new(doc, "shard", json_integer(s->a->shard));
        json_object_set_new(doc, "total_shards", json_integer(s->a->nshards));
    }
    for (size_t i = 0; i < s->n; i++)
        json_array_append(res, s->results[i]);
    json_object_set_new(doc, "results", res);
    json_object_set_new(doc, "summary", summary_json(s->counts));
    int rc = cli_write_json(CMD, path, doc, mark);
    json_decref(doc);
    return rc;
}

/* --bench: per op family, the median backend and reference times over its cases and their ratio. */
static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median_of(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_dbl);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void bench_summary(const run_state *s)
{
    double *t = tr_malloc((s->n + 1) * sizeof *t), *rt = tr_malloc((s->n + 1) * sizeof *rt);
    if (!t || !rt) {
        tr_dealloc(t);
        tr_dealloc(rt);
        return;
    }
    fprintf(cli_out, "%-22s %6s %12s %12s %9s %14s %9s\n", "op family", "cases", "median us", "ref med us",
            "ref/cpu", "largest ref us", "ref/cpu");
    for (size_t oi = 0; oi < tr_registry_count(); oi++) {
        const char *op = tr_registry_op(oi)->name;
        size_t n = 0;
        double big_t = 0, big_r = -1;   /* the case the reference takes longest on (a realistic shape) */
        for (size_t i = 0; i < s->n; i++) {
            json_t *r = s->results[i];
            json_t *a = json_object_get(r, "time_us"), *b = json_object_get(r, "ref_time_us");
            const char *rop = json_string_value(json_object_get(r, "op"));
            if (!rop || strcmp(rop, op) || !json_is_number(a) ||
                !json_is_number(b))
                continue;
            t[n] = json_number_value(a);
            rt[n] = json_number_value(b);
            if (rt[n] > big_r) {
                big_r = rt[n];
                big_t = t[n];
            }
            n++;
        }
        if (n == 0)
            continue;
        double mt = median_of(t, n), mr = median_of(rt, n);
        fprintf(cli_out, "%-22s %6zu %12.1f %12.1f %8.1fx %14.1f %8.1fx\n", op, n, mt, mr, mt > 0 ? mr / mt : 0.0,
                big_r, big_t > 0 ? big_r / big_t : 0.0);
    }
    tr_dealloc(t);
    tr_dealloc(rt);
}

/* ---- main -------------------------------------------------------------------------------------------------------- */

static int parse_shard(const char *v, unsigned *shard, unsigned *n)
{
    char *end;
    unsigned long i = strtoul(v, &end, 10);
    if (*end != '/')
        return -1;
    unsigned long t = strtoul(end + 1, &end, 10);
    if (*end || t == 0 || i >= t)
        return -1;
    *shard = (unsigned)i;
    *n = (unsigned)t;
    return 0;
}

static int parse_args(int argc, char **argv, conform_args *a)
{
    memset(a, 0, sizeof *a);
    a->seed = 1;
    a->reps = 5;
    a->nshards = 1;
    a->case_timeout = default_case_timeout();
    a->progress = isatty(2);
    const char *env_i = getenv("TEST_SHARD_INDEX"), *env_n = getenv("TEST_TOTAL_SHARDS");
    if (env_i && env_n) {
        char tmp[64];
        snprintf(tmp, sizeof tmp, "%s/%s", env_i, env_n);
        if (parse_shard(tmp, &a->shard, &a->nshards) != 0)
            return cli_usage(CMD, "TEST_SHARD_INDEX=%s / TEST_TOTAL_SHARDS=%s do not form a shard I/N", env_i, env_n);
    }
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r;
        if (cli_is_help(argv[i])) {
            help();
            return -1;
        }
        if ((r = cli_opt(argc, argv, &i, "--backend", &v)) != 0) {
            if (r < 0)
                return cli_usage(CMD, "--backend needs a name");
            char *copy = argv[i] + (strncmp(argv[i], "--backend=", 10) == 0 ? 10 : 0);
            for (char *save = NULL, *p = strtok_r(copy, ",", &save); p; p = strtok_r(NULL, ",", &save))
                if (a->nbackends < 8)
                    a->backends[a->nbackends++] = p;
        } else if ((r = cli_opt(argc, argv, &i, "--ops", &v)) != 0) {
            if (r < 0)
                return cli_usage(CMD, "--ops needs patterns");
            a->ops = v;
        } else if ((r = cli_opt(argc, argv, &i, "--seed", &v)) != 0) {
            char *end;
            if (r < 0 || (a->seed = strtoull(v, &end, 0), *end))
                return cli_usage(CMD, "--seed needs an integer");
        } else if ((r = cli_opt(argc, argv, &i, "--shard", &v)) != 0) {
            if (r < 0 || parse_shard(v, &a->shard, &a->nshards) != 0)
                return cli_usage(CMD, "--shard needs I/N with 0 <= I < N");
        } else if ((r = cli_opt(argc, argv, &i, "--capture-out", &v)) != 0) {
            if (r < 0)
                return cli_usage(CMD, "--capture-out needs a directory");
            a->capture_out = v;
        } else if ((r = cli_opt(argc, argv, &i, "--case-timeout", &v)) != 0) {
            char *end;
            if (r < 0 || (a->case_timeout = strtod(v, &end), *end) || a->case_timeout <= 0)
                return cli_usage(CMD, "--case-timeout needs seconds > 0");
        } else if ((r = cli_opt(argc, argv, &i, "--replay", &v)) != 0) {
            if (r < 0)
                return cli_usage(CMD, "--replay needs a case id");
            a->replay = v;
        } else if ((r = cli_opt(argc, argv, &i, "--metal-math", &v)) != 0) {
            if (r < 0 || (strcmp(v, "relaxed") && strcmp(v, "safe") && strcmp(v, "both")))
                return cli_usage(CMD, "--metal-math is relaxed, safe or both");
            a->metal_math = v;
        } else if ((r = cli_opt(argc, argv, &i, "--metal-dir", &v)) != 0) {
            if (r < 0 || a->nmetal_dirs == 8)
                return cli_usage(CMD, "--metal-dir needs a folder (at most 8)");
            a->metal_dirs[a->nmetal_dirs++] = v;
        } else if ((r = cli_opt(argc, argv, &i, "--metal-schedules", &v)) != 0) {
            if (r < 0)
                return cli_usage(CMD, "--metal-schedules needs a list (sg_greedy,random,forward,reverse,random:SEED)");
            for (char buf[512], *save = NULL, *p = (snprintf(buf, sizeof buf, "%s", v), strtok_r(buf, ",", &save)); p;
                 p = strtok_r(NULL, ",", &save)) {
                tr_mtl_schedule t;
                if (tr_mtl_schedule_parse(p, &t) != 0)
                    return cli_usage(CMD, "--metal-schedules: \"%s\" is not sg_greedy, forward, reverse, random or "
                                     "random:SEED", p);
            }
            a->metal_schedules = v;
        } else if ((r = cli_opt(argc, argv, &i, "--metal-mma-model", &v)) != 0) {
            if (r < 0 || (strcmp(v, "0") && strcmp(v, "1")))
                return cli_usage(CMD, "--metal-mma-model is 0 or 1");
            a->metal_mma_model = atoi(v);
        } else if ((r = cli_opt(argc, argv, &i, "--reps", &v)) != 0) {
            if (r < 0 || (a->reps = atoi(v)) < 1)
                return cli_usage(CMD, "--reps needs a positive integer");
        } else if ((r = cli_opt(argc, argv, &i, "--jobs", &v)) != 0) {
            if (r < 0 || (a->jobs = atoi(v)) < 1 || a->jobs > 64)
                return cli_usage(CMD, "--jobs needs 1..64");
        } else if ((r = cli_opt_json(argc, argv, &i, &v)) != 0)
            a->json = v;
        else if (!strcmp(argv[i], "--quick"))
            a->tier = TR_TIER_QUICK;
        else if (!strcmp(argv[i], "--full"))
            a->tier = TR_TIER_FULL;
        else if (!strcmp(argv[i], "--exhaustive"))
            a->tier = TR_TIER_EXHAUSTIVE;
        else if (!strcmp(argv[i], "--strict"))
            a->strict = 1;
        else if (!strcmp(argv[i], "--bench"))
            a->bench = 1;
        else if (!strcmp(argv[i], "--no-progress"))
            a->progress = 0;
        else
            return cli_usage(CMD, "unknown argument %s", argv[i]);
    }
    if (a->nbackends == 0)
        a->backends[a->nbackends++] = "cpu";
    if (a->jobs == 0)
        a->jobs = a->bench ? 1 : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (a->jobs > 64)
        a->jobs = 64;
    if (a->json && !strcmp(a->json, "-"))
        a->progress = 0;
    return 0;
}

/* --replay: exactly one case (the normal run path, so --json and --capture-out apply). */
static int run_replay(run_state *s, tr_error *err)
{
    tr_case c;
    if (s->mset) {   /* metal-emu: the variant comes from the built folders */
        char buf[TR_CASE_ID_MAX];
        snprintf(buf, sizeof buf, "%s", s->a->replay);
        char *var = strchr(buf, '/'), *params = var ? strchr(var + 1, '/') : NULL;
        char *rep = params ? strrchr(params + 1, '/') : NULL;
        if (!rep)
            return tr_fail(err, TR_E_INVALID_PARAM, s->a->replay, "a case id reads <op>/<variant>/<params>/<rep>");
        *var++ = *params++ = *rep++ = '\0';
        const cmetal_variant *mv = cmetal_find(s->mset, buf, var);
        if (!mv)
            return tr_fail(err, TR_E_INVALID_PARAM, s->a->replay, "no kernel of the loaded folders provides %s/%s",
                           buf, var);
        if (tr_case_init(&c, mv->op, &mv->v, params, atoi(rep), s->a->seed) != TR_OK)
            return tr_fail(err, TR_E_INVALID_PARAM, s->a->replay, "malformed parameters \"%s\"", params);
        int modes[2];
        metal_maths(s->a, modes);
        c.metal_math = modes[0];
        c.index = 0;
        char why[512];
        if (cmetal_unsupported(mv, &c, why, sizeof why))
            return settle(s, &c, "UNSUPPORTED", why) == TR_OK ? TR_OK : tr_fail(err, TR_E_NOMEM, CMD, "out of memory");
        if (dispatch(s, &c, NULL) != TR_OK)
            return tr_fail(err, TR_E_NOMEM, CMD, "cannot start a worker");
        return TR_OK;
    }
    if (tr_case_from_id(&c, s->a->replay, s->a->seed, err) != TR_OK)
        return err->code;
    c.index = 0;
    if (dispatch(s, &c, NULL) != TR_OK)
        return tr_fail(err, TR_E_NOMEM, CMD, "cannot start a worker");
    return TR_OK;
}

static char *json_path_for(const conform_args *a, const char *backend)
{
    if (!a->json)
        return NULL;
    if (a->nbackends == 1 || !strcmp(a->json, "-"))
        return tr_strdup(a->json);
    /* several backends: FILE.json -> FILE.<backend>.json */
    size_t n = strlen(a->json) + strlen(backend) + 8;
    char *p = tr_malloc(n);
    if (!p)
        return NULL;
    const char *dot = strrchr(a->json, '.');
    char safe[64];
    snprintf(safe, sizeof safe, "%s", backend);
    for (char *q = safe; *q; q++)
        if (*q == '/' || *q == ':')
            *q = '_';
    if (dot)
        snprintf(p, n, "%.*s.%s%s", (int)(dot - a->json), a->json, safe, dot);
    else
        snprintf(p, n, "%s.%s", a->json, safe);
    return p;
}

/* metal-emu: build the folders (content-hash cache), map their kernels, say what was found. */
static int open_metal(run_state *s, tr_error *err)
{
    const conform_args *a = s->a;
    cmetal_cfg *m = &s->mcfg;
    memset(m, 0, sizeof *m);
    for (int i = 0; i < a->nmetal_dirs; i++)
        m->dirs[m->ndirs++] = a->metal_dirs[i];
    if (!m->ndirs) {
        m->dirs[m->ndirs++] = "metal/kernels";
        m->default_dirs = 1;
    }
    if (a->metal_schedules) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", a->metal_schedules);
        for (char *save = NULL, *p = strtok_r(buf, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
            if (m->nsched == 8 || tr_mtl_schedule_parse(p, &m->sched[m->nsched]) != 0)
                return tr_fail(err, TR_E_USAGE, "--metal-schedules", "\"%s\": expected up to 8 of sg_greedy, forward, "
                               "reverse, random (the case seed), random:SEED", p);
            m->sched_case_seed[m->nsched++] = !strcasecmp(p, "random");
        }
    }
    m->mma_model = a->metal_mma_model;
    m->workers = a->jobs > 1 ? 1 : 0;   /* the cases already run in parallel workers */
    m->timeout = a->case_timeout;
    m->strict = a->strict;
    int rc = cmetal_open(m, &s->mset, err);
    if (rc != TR_OK)
        return rc;
    char extra[1200] = "";
    size_t at = 0;
    for (int i = 0; i < a->nmetal_dirs && at < sizeof extra - 200; i++)
        at += (size_t)snprintf(extra + at, sizeof extra - at, " --metal-dir '%s'", a->metal_dirs[i]);
    if (a->metal_schedules && at < sizeof extra - 200)
        at += (size_t)snprintf(extra + at, sizeof extra - at, " --metal-schedules '%s'", a->metal_schedules);
    if (a->metal_mma_model)
        snprintf(extra + at, sizeof extra - at, " --metal-mma-model 1");
    conform_replay_extra(extra);
    if (cmetal_kernel_total(s->mset) == 0 && cmetal_failed_files(s->mset) == 0)
        fprintf(cli_out, "metal-emu: no .metal kernels in %s yet: nothing to run\n", m->dirs[0]);
    else
        cmetal_print_summary(s->mset, cli_out);
    return TR_OK;
}

static int run_backend(const conform_args *a, const char *backend)
{
    unsigned long mark = tr_json_mark();
    run_state s;
    memset(&s, 0, sizeof s);
    s.a = a;
    s.backend = backend;
    s.capture_entries = json_array();
    tr_error err;
    int rc = TR_OK;
    if (!strncmp(backend, "capture:", 8)) {
        s.capture_dir = backend + 8;
        rc = capture_read_manifest(s.capture_dir, &s.capture_manifest, &err);
    } else if (!strcmp(backend, tr_mtl_backend_name()))   /* "metal-emu"; "metal" in build/trellis-metal (macOS) */
        rc = open_metal(&s, &err);
    else if (!tr_backend_available(backend))
        rc = tr_fail(&err, TR_E_UNSUPPORTED, backend, "backend not available in this build (available: ref, cpu, "
                     "%s, capture:DIR)", tr_mtl_backend_name());
    if (rc != TR_OK) {
        json_decref(s.capture_entries);
        return cli_fail(CMD, &err);
    }
    char started[32];
    time_t t = time(NULL);
    strftime(started, sizeof started, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    double t0 = now_s();
    rc = s.capture_dir ? run_capture(&s, &err)
         : a->replay   ? run_replay(&s, &err)
         : s.mset      ? run_metal(&s, &err)
                       : run_registry(&s, &err);
    while (s.nw > 0)
        reap(&s);
    if (a->progress)
        fprintf(stderr, "\r%60s\r", "");
    int out = CLI_OK;
    if (rc != TR_OK)
        out = cli_fail(CMD, &err);
    fprintf(cli_out, "conform %s (%s%s, seed %llu, %zu cases, %.1f s): %u PASS, %u FAIL, %u PRECISION_WARNING, "
            "%u UNSUPPORTED, %u RESOURCE_ERROR, %u CRASH, %u TIMEOUT\n", backend, tr_tier_name(a->tier),
            a->strict ? ", strict" : "", (unsigned long long)a->seed, s.n, now_s() - t0, s.counts[TR_PASS],
            s.counts[TR_FAIL], s.counts[TR_PRECISION_WARNING], s.counts[TR_UNSUPPORTED], s.counts[TR_RESOURCE_ERROR],
            s.counts[TR_CRASH], s.counts[TR_TIMEOUT]);
    for (int v = 0; v < TR_VERDICT_COUNT && out == CLI_OK; v++)
        if (s.counts[v] && is_failure(a, v))
            out = CLI_FAILURES;
    if (out == CLI_OK && s.mset && cmetal_failed_files(s.mset))
        out = CLI_FAILURES;   /* a .metal file that does not build is a failure (listed above) */
    if (a->bench)
        bench_summary(&s);
    char *path = json_path_for(a, backend);
    if (path) {
        int w = write_results(&s, path, started, mark);
        if (w != CLI_OK)
            out = w;
    }
    if (a->capture_out && !s.capture_dir && capture_write_manifest(a->capture_out, s.capture_entries, &err) != TR_OK)
        out = cli_fail(CMD, &err);
    tr_dealloc(path);
    for (size_t i = 0; i < s.n; i++)
        json_decref(s.results[i]);
    tr_dealloc(s.results);
    tr_dealloc(s.cases);
    json_decref(s.capture_entries);
    json_decref(s.capture_manifest);
    cmetal_close(s.mset);
    return out;
}

int cmd_conform(int argc, char **argv)
{
    conform_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc != 0)
        return rc < 0 ? CLI_OK : rc;
    const char *status_file = getenv("TEST_SHARD_STATUS_FILE");
    if (status_file && *status_file) {   /* Bazel's test sharding protocol: say we support sharding */
        int fd = open(status_file, O_WRONLY | O_CREAT, 0644);
        if (fd >= 0)
            close(fd);
    }
    int worst = CLI_OK;
    for (int b = 0; b < a.nbackends; b++) {
        int r = run_backend(&a, a.backends[b]);
        if (r > worst)
            worst = r;
    }
    return worst;
}
