/*
 * cmd_bench_kernels.c — `trellis bench-kernels [--reps N] [--threads N] [--simd LEVEL] [--gs N]
 * [--shape OxI]... [--json FILE|-]`.
 *
 * Benchmarks the cpu backend's decode GEMV (engine/cpu_gemv.h, M = 1, acc f32) against tr_ref_gemm_trellis for
 * b = 2, 3, 4 at (O, I) = (4096, 14336) and (2048, 1536) (or the --shape list): random indices, scales 2^-7..2^-5,
 * ±1 signs, group size 128 (or --gs), rotation none.  Two cpu paths run from one plan (tr_cpu_gemv_run: prepare x,
 * rows over the pool): native (the plan as made) and packed (after tr_cpu_gemv_pack, timed once on its own as
 * pack_us; where the plan does not pack, e.g. below AVX-512, the packed figures are the native path's again).  Each
 * path is first checked bit for bit against the reference (exit 1 on any difference), then timed over N calls
 * (default: enough for 0.5 s, at least 5), the reference over 1-2 calls.  Reported: median µs per call, G weights/s =
 * O·I / time (median, and "best" from the fastest call, which a busy machine disturbs least), the reference's median
 * and the cpu/ref speed ratio (packed path).
 */
#include "cli.h"
#include "../engine/cpu_gemv.h"
#include "trellis/alloc.h"
#include "trellis/fp16.h"
#include "trellis/jsonio.h"
#include "trellis/ops.h"
#include "trellis/pack.h"
#include "trellis/rng.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const CMD = "bench-kernels";

enum { MAX_SHAPES = 8 };

typedef struct bench_opts {
    unsigned reps;             /* 0 = calibrate to 0.5 s */
    unsigned threads;
    tr_simd_level level;
    unsigned gs;               /* group size, default 128 */
    const char *json;
    uint32_t shapes[MAX_SHAPES][2];
    unsigned n_shapes;
} bench_opts;

typedef struct path_time {
    unsigned reps;
    double us, min_us;            /* median and fastest call */
    int equal;                    /* output bitwise equal to the reference */
} path_time;

typedef struct bench_result {
    uint32_t O, I;
    unsigned bits, ref_reps;
    path_time packed, native;
    int is_packed;                /* the plan packed (else packed = native again) */
    double pack_us, ref_us;       /* the one tr_cpu_gemv_pack call, median reference call */
    size_t pack_bytes;
} bench_result;

static void help(void)
{
    fprintf(cli_out,
            "Usage: trellis bench-kernels [--reps N] [--threads N] [--simd portable|avx2|avx512] [--gs N]\n"
            "                             [--shape OxI]... [--json FILE|-]\n"
            "  Decode GEMV (M = 1) of the cpu backend vs the reference, b = 2, 3, 4, ±1 signs, at 4096x14336 and\n"
            "  2048x1536 (or the --shape list), native and packed (tr_cpu_gemv_pack) paths.  Outputs are checked\n"
            "  bit for bit first.\n"
            "  --reps N     timed cpu calls per configuration and path (default: enough for 0.5 s)\n"
            "  --threads N  threads of the pool (default: online CPUs)\n"
            "  --simd L     cap the SIMD level (default: detected, TR_SIMD respected)\n"
            "  --gs N       group size (default 128)\n"
            "Exit: 0 all equal, 1 an output differs from the reference, 2 usage, 4 out of memory.\n");
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, unsigned n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* "model name" of /proc/cpuinfo, or "unknown". */
static void cpu_model(char *out, size_t n)
{
    snprintf(out, n, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            const char *v = strchr(line, ':');
            if (v) {
                v += 1 + (v[1] == ' ');
                snprintf(out, n, "%.*s", (int)strcspn(v, "\n"), v);
            }
            break;
        }
    fclose(f);
}

/* ---- the benchmark weight ----------------------------------------------------------------------------------- */

typedef struct bench_lin {
    tr_qweight w;
    uint8_t *packed;
    float *s, *su, *sv, *x, *y, *ref;
} bench_lin;

static void bench_lin_free(bench_lin *l)
{
    tr_dealloc(l->packed);
    tr_dealloc(l->s);
    tr_dealloc(l->su);
    tr_dealloc(l->sv);
    tr_dealloc(l->x);
    tr_dealloc(l->y);
    tr_dealloc(l->ref);
    memset(l, 0, sizeof *l);
}

/* Random packed body (every bit pattern is a valid index; the shapes are tile multiples or padding is harmless). */
static int bench_lin_make(bench_lin *l, uint32_t O, uint32_t I, unsigned b, uint32_t gs, uint64_t seed)
{
    memset(l, 0, sizeof *l);
    const uint32_t G = (I + gs - 1) / gs;
    uint64_t plen = 1 + tr_packed_body_bytes(O, I, b);
    l->packed = tr_malloc(plen);
    l->s = tr_malloc((size_t)G * O * sizeof(float));
    l->su = tr_malloc((size_t)I * sizeof(float));
    l->sv = tr_malloc((size_t)O * sizeof(float));
    l->x = tr_malloc((size_t)I * sizeof(float));
    l->y = tr_malloc((size_t)O * sizeof(float));
    l->ref = tr_malloc((size_t)O * sizeof(float));
    if (!l->packed || !l->s || !l->su || !l->sv || !l->x || !l->y || !l->ref) {
        bench_lin_free(l);
        return TR_E_NOMEM;
    }
    tr_rng r;
    tr_rng_seed(&r, seed);
    l->packed[0] = (uint8_t)b;
    for (uint64_t k = 1; k < plen; k += 8) {
        uint64_t v = tr_rng_next(&r);
        memcpy(l->packed + k, &v, plen - k < 8 ? plen - k : 8);
    }
    for (size_t k = 0; k < (size_t)G * O; k++)
        l->s[k] = (float)(0.0078125 * (1.0 + 3.0 * tr_rng_u01(&r)));
    for (uint32_t k = 0; k < I; k++) {
        l->su[k] = tr_rng_next(&r) >> 63 ? -1.0f : 1.0f;
        l->x[k] = (float)tr_rng_normal(&r);
    }
    for (uint32_t k = 0; k < O; k++)
        l->sv[k] = tr_rng_next(&r) >> 63 ? -1.0f : 1.0f;
    l->w = (tr_qweight){O, I, b, gs, G, TR_ROT_NONE, l->packed, plen, l->s, l->su, l->sv};
    return TR_OK;
}

/* ---- one configuration ----------------------------------------------------------------------------------------- */

static int bits_equal(const float *a, const float *b, uint32_t n)
{
    for (uint32_t k = 0; k < n; k++)
        if (tr_f32_bits(a[k]) != tr_f32_bits(b[k]))
            return 0;
    return 1;
}

/* Checks the plan's output against l->ref, then times reps calls (reps = 0: calibrate to 0.5 s). */
static int time_path(bench_lin *l, const tr_gemv_plan *plan, tr_pool *pool, unsigned reps, path_time *pt,
                     tr_error *err)
{
    double t0 = now_s();
    int rc = tr_cpu_gemv_run(plan, l->x, 1, l->y, pool, err);
    double one = now_s() - t0;
    if (rc != TR_OK)
        return rc;
    pt->equal = bits_equal(l->y, l->ref, l->w.O);
    unsigned n = reps ? reps : (unsigned)(0.5 / (one > 1e-7 ? one : 1e-7)) + 1;
    n = n < 5 && !reps ? 5 : n;
    double *t = tr_malloc(n * sizeof *t);
    if (!t)
        return tr_fail(err, TR_E_NOMEM, CMD, "cannot allocate %u timings", n);
    for (unsigned k = 0; k < n && rc == TR_OK; k++) {
        t0 = now_s();
        rc = tr_cpu_gemv_run(plan, l->x, 1, l->y, pool, err);
        t[k] = now_s() - t0;
    }
    pt->reps = n;
    pt->us = 1e6 * median(t, n);
    pt->min_us = 1e6 * t[0];
    tr_dealloc(t);
    return rc;
}

/* Native path, then pack (timed) and the packed path, from one plan. */
static int time_paths(const bench_opts *o, bench_lin *l, tr_pool *pool, bench_result *res, tr_error *err)
{
    tr_gemv_plan plan;
    int rc = tr_cpu_gemv_plan(&l->w, o->level, &plan, err);
    if (rc == TR_OK)
        rc = time_path(l, &plan, pool, o->reps, &res->native, err);
    double t0 = now_s();
    if (rc == TR_OK)
        rc = tr_cpu_gemv_pack(&plan, err);
    res->pack_us = 1e6 * (now_s() - t0);
    res->is_packed = plan.pack != NULL;
    res->pack_bytes = tr_cpu_gemv_pack_bytes(&plan);
    if (rc == TR_OK && res->is_packed)
        rc = time_path(l, &plan, pool, o->reps, &res->packed, err);
    else
        res->packed = res->native;
    tr_cpu_gemv_plan_release(&plan);
    return rc;
}

static int run_config(const bench_opts *o, tr_pool *pool, uint32_t O, uint32_t I, unsigned b, bench_result *res,
                      tr_error *err)
{
    bench_lin l;
    if (bench_lin_make(&l, O, I, b, o->gs, 0xBE4C00u + 16u * b + O + I) != TR_OK)
        return tr_fail(err, TR_E_NOMEM, CMD, "cannot allocate a %ux%u weight", O, I);
    *res = (bench_result){.O = O, .I = I, .bits = b};
    unsigned ref_reps = (uint64_t)O * I <= (1u << 22) ? 2 : 1;
    double rt[2];
    int rc = TR_OK;
    for (unsigned k = 0; k < ref_reps && rc == TR_OK; k++) {
        double t0 = now_s();
        rc = tr_ref_gemm_trellis(&l.w, l.x, 1, TR_ACC_F32, 0, l.ref, err);
        rt[k] = now_s() - t0;
    }
    if (rc == TR_OK) {
        res->ref_reps = ref_reps;
        res->ref_us = 1e6 * median(rt, ref_reps);
        rc = time_paths(o, &l, pool, res, err);
    }
    bench_lin_free(&l);
    return rc;
}

/* ---- output ---------------------------------------------------------------------------------------------------- */

static double gws(const bench_result *r, double us) { return us > 0 ? (double)r->O * r->I / (us * 1e3) : 0.0; }

static int result_equal(const bench_result *r) { return r->packed.equal && r->native.equal; }

static void print_header(void)
{
    fprintf(cli_out, "%-28s | %-27s | %-19s %8s | %-25s\n", "", "packed (primary)", "native", "pack", "reference");
    fprintf(cli_out, "%6s %6s %2s %-8s %3s | %5s %9s %5s %5s | %5s %6s %6s %8s | %10s %6s %6s\n", "O", "I", "b",
            "simd", "thr", "reps", "us/call", "Gw/s", "best", "reps", "Gw/s", "best", "ms", "us/call", "Gw/s",
            "cpu/ref");
}

static void print_row(const bench_opts *o, const bench_result *r)
{
    const path_time *p = &r->packed, *n = &r->native;
    fprintf(cli_out, "%6u %6u %2u %-8s %3u | %5u %9.1f %5.1f %5.1f | %5u %6.1f %6.1f ", r->O, r->I, r->bits,
            tr_simd_name(o->level), o->threads, p->reps, p->us, gws(r, p->us), gws(r, p->min_us), n->reps,
            gws(r, n->us), gws(r, n->min_us));
    if (r->is_packed)
        fprintf(cli_out, "%8.1f", r->pack_us * 1e-3);
    else
        fprintf(cli_out, "%8s", "-");
    fprintf(cli_out, " | %10.1f %6.3f %5.0fx  %s\n", r->ref_us, gws(r, r->ref_us), p->us > 0 ? r->ref_us / p->us : 0.0,
            result_equal(r) ? "bitwise equal" : "MISMATCH");
    fflush(cli_out);
}

static json_t *result_json(const bench_opts *o, const bench_result *r)
{
    json_t *e = json_object();
    json_object_set_new(e, "O", json_integer(r->O));
    json_object_set_new(e, "I", json_integer(r->I));
    json_object_set_new(e, "bits", json_integer(r->bits));
    json_object_set_new(e, "group_size", json_integer(o->gs));
    json_object_set_new(e, "M", json_integer(1));
    json_object_set_new(e, "simd", json_string(tr_simd_name(o->level)));
    json_object_set_new(e, "threads", json_integer(o->threads));
    json_object_set_new(e, "packed", json_boolean(r->is_packed));
    json_object_set_new(e, "reps", json_integer(r->packed.reps));
    json_object_set_new(e, "median_us", json_real(r->packed.us));
    json_object_set_new(e, "gweights_per_s", json_real(gws(r, r->packed.us)));
    json_object_set_new(e, "min_us", json_real(r->packed.min_us));
    json_object_set_new(e, "pack_us", json_real(r->is_packed ? r->pack_us : 0.0));
    json_object_set_new(e, "pack_bytes", json_integer((json_int_t)r->pack_bytes));
    json_object_set_new(e, "native_reps", json_integer(r->native.reps));
    json_object_set_new(e, "native_median_us", json_real(r->native.us));
    json_object_set_new(e, "native_gweights_per_s", json_real(gws(r, r->native.us)));
    json_object_set_new(e, "native_min_us", json_real(r->native.min_us));
    json_object_set_new(e, "ref_reps", json_integer(r->ref_reps));
    json_object_set_new(e, "ref_median_us", json_real(r->ref_us));
    json_object_set_new(e, "ref_gweights_per_s", json_real(gws(r, r->ref_us)));
    json_object_set_new(e, "speedup", json_real(r->packed.us > 0 ? r->ref_us / r->packed.us : 0.0));
    json_object_set_new(e, "native_bitwise_equal", json_boolean(r->native.equal));
    json_object_set_new(e, "bitwise_equal", json_boolean(result_equal(r)));
    return e;
}

static int write_json(const bench_opts *o, const bench_result *res, unsigned n, const char *model)
{
    unsigned long mark = tr_json_mark();
    json_t *doc = json_object(), *host = json_object(), *list = json_array();
    json_object_set_new(doc, "schema", json_string("trellis.bench_kernels/1"));
    json_object_set_new(host, "cpu_model", json_string(model));
    json_object_set_new(host, "cpus", json_integer(tr_cpu_count()));
    json_object_set_new(host, "simd_supported", json_string(tr_simd_name(tr_simd_supported())));
    json_object_set_new(doc, "host", host);
    json_object_set_new(doc, "simd", json_string(tr_simd_name(o->level)));
    json_object_set_new(doc, "threads", json_integer(o->threads));
    for (unsigned k = 0; k < n; k++)
        json_array_append_new(list, result_json(o, &res[k]));
    json_object_set_new(doc, "results", list);
    int rc = cli_write_json(CMD, o->json, doc, mark);
    json_decref(doc);
    return rc;
}

/* ---- options --------------------------------------------------------------------------------------------------- */

static int parse_uint(const char *s, unsigned lo, unsigned hi, unsigned *out)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int parse_shape(const char *s, uint32_t shape[2])
{
    unsigned O, I;
    char tail;
    if (sscanf(s, "%ux%u%c", &O, &I, &tail) != 2 || O < 1 || I < 1 || O > (1u << 20) || I > (1u << 20))
        return -1;
    shape[0] = O;
    shape[1] = I;
    return 0;
}

static int parse_opts(int argc, char **argv, bench_opts *o)
{
    memset(o, 0, sizeof *o);
    o->threads = tr_cpu_count();
    o->gs = 128;
    o->level = tr_simd_detect();
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        int r;
        if ((r = cli_opt(argc, argv, &i, "--reps", &v)) != 0) {
            if (r < 0 || parse_uint(v, 1, 100000000, &o->reps))
                return cli_usage(CMD, "--reps needs a count >= 1");
        } else if ((r = cli_opt(argc, argv, &i, "--threads", &v)) != 0) {
            if (r < 0 || parse_uint(v, 1, 1024, &o->threads))
                return cli_usage(CMD, "--threads needs a count in 1..1024");
        } else if ((r = cli_opt(argc, argv, &i, "--simd", &v)) != 0) {
            if (r < 0 || tr_simd_parse(v, &o->level))
                return cli_usage(CMD, "--simd needs portable, avx2 or avx512");
        } else if ((r = cli_opt(argc, argv, &i, "--gs", &v)) != 0) {
            if (r < 0 || parse_uint(v, 1, 1u << 20, &o->gs))
                return cli_usage(CMD, "--gs needs a group size in 1..1048576");
        } else if ((r = cli_opt(argc, argv, &i, "--shape", &v)) != 0) {
            if (r < 0 || o->n_shapes == MAX_SHAPES || parse_shape(v, o->shapes[o->n_shapes]))
                return cli_usage(CMD, "--shape needs OxI (at most %d shapes)", MAX_SHAPES);
            o->n_shapes++;
        } else if (cli_opt_json(argc, argv, &i, &o->json)) {
            continue;
        } else
            return cli_usage(CMD, "unknown argument \"%s\"", argv[i]);
    }
    if (o->level > tr_simd_supported())
        o->level = tr_simd_supported();
    if (!o->n_shapes) {
        static const uint32_t def[2][2] = {{4096, 14336}, {2048, 1536}};
        memcpy(o->shapes, def, sizeof def);
        o->n_shapes = 2;
    }
    return CLI_OK;
}

int cmd_bench_kernels(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (cli_is_help(argv[i])) {
            help();
            return CLI_OK;
        }
    bench_opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc != CLI_OK)
        return rc;
    char model[256];
    cpu_model(model, sizeof model);
    tr_error err;
    tr_pool *pool = NULL;
    if (tr_pool_create(o.threads, &pool, &err) != TR_OK)
        return cli_fail(CMD, &err);
    FILE *txt = o.json && strcmp(o.json, "-") == 0 ? cli_err : cli_out;
    FILE *keep = cli_out;
    cli_out = txt;
    fprintf(cli_out, "cpu gemm_trellis decode (M = 1, gs %u, ±1 signs) vs reference; host %s, simd %s (supported %s)"
            "\n", o.gs, model, tr_simd_name(o.level), tr_simd_name(tr_simd_supported()));
    print_header();
    bench_result res[MAX_SHAPES * 3];
    unsigned n = 0, bad = 0;
    for (unsigned s = 0; s < o.n_shapes && rc == CLI_OK; s++)
        for (unsigned b = 2; b <= 4 && rc == CLI_OK; b++) {
            if (run_config(&o, pool, o.shapes[s][0], o.shapes[s][1], b, &res[n], &err) != TR_OK) {
                rc = cli_fail(CMD, &err);
                break;
            }
            bad += !result_equal(&res[n]);
            print_row(&o, &res[n++]);
        }
    cli_out = keep;
    tr_pool_destroy(pool);
    if (rc == CLI_OK && o.json)
        rc = write_json(&o, res, n, model);
    if (rc == CLI_OK && bad) {
        fprintf(cli_err, "trellis %s: error: %u configuration(s) differ from the reference\n", CMD, bad);
        rc = CLI_FAILURES;
    }
    return rc;
}
