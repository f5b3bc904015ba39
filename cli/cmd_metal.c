/*
 * cmd_metal.c — `trellis metal build|list|run|rewrite` (METAL.md §2, §5): the Metal emulator from the command line.
 *
 *   build [DIR|FILE]   compile every .metal file (default metal/kernels) into the content-hash cache; per-file
 *                      status, kernels and compiler diagnostics.  Exit 1 when a file failed to build.
 *   list [DIR|FILE]    kernels with their binding indices, parameter types, threadgroup memory, function constants
 *                      and the KERNELS.md §4 op each symbol implements (or "unmapped").
 *   run KERNEL --capture DIR
 *                      run one kernel on a capture case's inputs (trellis.capture/1): capture buffers are bound to the
 *                      kernel parameters of the same name (--bind PARAM=BUFFER to choose), scalar parameters take the
 *                      case's params or --set PARAM=VALUE; outputs get guarded allocations filled with poison (zeros
 *                      for accumulating outputs) and are compared bitwise with the capture's recorded outputs; each
 *                      --schedule is one run and differing outputs between runs are "schedule-dependent output".
 *                      --emit-capture DIR writes the emulated outputs as a capture.  (The adapters of KERNELS.md §3
 *                      and the launch geometry tables come with `trellis conform --backend metal-emu`; here the
 *                      geometry is given with --grid/--tg.)
 *   rewrite FILE       preprocess and rewrite one .metal file and print the generated C++ (--json: the module
 *                      metadata); rewriter errors go to stderr with exit 1 (debugging, nothing is compiled).
 */
#include "cli.h"
#include "conform.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/fp16.h"
#include "trellis/hash.h"
#include "trellis/jsonio.h"
#include "trellis/kernel_symbols.h"
#include "trellis/metal_emu.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const CMD = "metal";

static void help(void)
{
    fprintf(cli_out,
            "Usage: trellis metal build [DIR|FILE] [--out CACHE] [--jobs N] [--force] [--json FILE|-]\n"
            "       trellis metal list  [DIR|FILE] [--out CACHE] [--json FILE|-]\n"
            "       trellis metal run KERNEL --capture DIR [--case N|ID] [--metal-dir DIR] [--out CACHE]\n"
            "                         --grid X[,Y[,Z]] --tg X[,Y[,Z]] [--dispatch-threads] [--schedule S]...\n"
            "                         [--bind PARAM=BUFFER]... [--set PARAM=VALUE]... [--fc INDEX=VALUE]...\n"
            "                         [--tg-memory INDEX=BYTES]... [--timeout S] [--mma-model 0|1] [--workers N]\n"
            "                         [--emit-capture DIR] [--json FILE|-]\n"
            "       trellis metal rewrite FILE.metal [--json FILE|-]\n"
            "  The Metal emulator (METAL.md): .metal sources compiled as C++ and run on the CPU with the race,\n"
            "  uninitialised-memory, unwritten-output, out-of-bounds and resource detectors.  DIR defaults to\n"
            "  metal/kernels; the cache to build/metal-emu ($TRELLIS_METAL_EMU_CACHE).  Schedules: sg_greedy\n"
            "  (default), forward, reverse, random:SEED.  KERNEL is a host name or stem:name.\n"
            "Exit: 0 success, 1 a file failed to build / a run failed or differed, 2 usage or unreadable input,\n"
            "      4 out of memory.\n");
}

/* ---- shared options -------------------------------------------------------------------------------------------- */

typedef struct common {
    const char *path, *out, *json;
    int jobs, force;
} common;

static int build_lib(const common *c, tr_mtl_lib **lib)
{
    tr_mtl_build_opts o;
    memset(&o, 0, sizeof o);
    o.cache_dir = c->out;
    o.jobs = c->jobs;
    o.force = c->force;
    tr_error err;
    tr_error_clear(&err);
    int rc = tr_mtl_build(c->path, &o, lib, &err);
    if (rc != TR_OK)
        return cli_fail(CMD, &err);
    return CLI_OK;
}

static const char *kind_name(tr_mtl_param_kind k)
{
    switch (k) {
    case TR_MTL_BUFFER: return "buffer";
    case TR_MTL_TEXTURE: return "texture";
    case TR_MTL_SAMPLER: return "sampler";
    case TR_MTL_THREADGROUP: return "threadgroup";
    default: return "builtin";
    }
}

static const char *space_name(tr_mtl_space s)
{
    static const char *const n[] = {"none", "device", "constant", "threadgroup", "thread"};
    return (int)s >= 0 && (int)s <= 4 ? n[s] : "?";
}

/* ---- build ------------------------------------------------------------------------------------------------------ */

static size_t file_kernels(const tr_mtl_lib *lib, const tr_mtl_file *f)
{
    size_t n = 0;
    for (size_t k = 0; k < tr_mtl_kernel_count(lib); k++)
        n += strcmp(tr_mtl_kernel_at(lib, k)->file, f->path) == 0;
    return n;
}

static json_t *files_json(const tr_mtl_lib *lib)
{
    json_t *a = json_array();
    for (size_t i = 0; i < tr_mtl_file_count(lib); i++) {
        const tr_mtl_file *f = tr_mtl_file_at(lib, i);
        json_t *o = json_object(), *ks = json_array();
        json_object_set_new(o, "path", json_string(f->path));
        json_object_set_new(o, "stem", json_string(f->stem));
        json_object_set_new(o, "ok", json_boolean(f->ok));
        json_object_set_new(o, "cached", json_boolean(f->cached));
        json_object_set_new(o, "seconds", tr_json_real(f->seconds));
        json_object_set_new(o, "cache_dir", json_string(f->cache_dir ? f->cache_dir : ""));
        for (size_t k = 0; k < tr_mtl_kernel_count(lib); k++)
            if (strcmp(tr_mtl_kernel_at(lib, k)->file, f->path) == 0)
                json_array_append_new(ks, json_string(tr_mtl_kernel_at(lib, k)->name));
        json_object_set_new(o, "kernels", ks);
        json_object_set_new(o, "log", json_string(f->log ? f->log : ""));
        json_array_append_new(a, o);
    }
    return a;
}

static int do_build(const common *c)
{
    tr_mtl_lib *lib = NULL;
    int rc = build_lib(c, &lib);
    if (rc != CLI_OK)
        return rc;
    size_t nf = tr_mtl_file_count(lib), failed = 0, cached = 0;
    for (size_t i = 0; i < nf; i++) {
        failed += !tr_mtl_file_at(lib, i)->ok;
        cached += tr_mtl_file_at(lib, i)->cached;
    }
    if (c->json) {
        unsigned long mark = tr_json_mark();
        json_t *doc = json_object();
        json_object_set_new(doc, "schema", json_string("trellis.metal_emu_build/1"));
        json_object_set_new(doc, "path", json_string(c->path));
        json_object_set_new(doc, "files", files_json(lib));
        json_object_set_new(doc, "failed", json_integer((json_int_t)failed));
        rc = cli_write_json(CMD, c->json, doc, mark);
        json_decref(doc);
    }
    if (!c->json || strcmp(c->json, "-") != 0) {   /* the human lines too when the JSON goes to a file */
        double total = 0, slowest = 0;
        for (size_t i = 0; i < nf; i++) {
            const tr_mtl_file *f = tr_mtl_file_at(lib, i);
            total += f->seconds;
            slowest = f->seconds > slowest ? f->seconds : slowest;
        }
        fprintf(cli_out, "%s: %zu .metal files, %zu built (%zu cached), %zu failed, %zu kernels", c->path, nf,
                nf - failed, cached, failed, tr_mtl_kernel_count(lib));
        if (nf > cached)
            fprintf(cli_out, "; compiling %.2f s in all, slowest file %.2f s", total, slowest);
        fprintf(cli_out, "\n");
        for (size_t i = 0; i < nf; i++) {
            const tr_mtl_file *f = tr_mtl_file_at(lib, i);
            if (f->ok && f->cached)
                fprintf(cli_out, "  ok      %s  %zu kernels  (cached)\n", f->path, file_kernels(lib, f));
            else if (f->ok)
                fprintf(cli_out, "  ok      %s  %zu kernels  %.2f s\n", f->path, file_kernels(lib, f), f->seconds);
            else
                fprintf(cli_out, "  FAILED  %s\n", f->path);
            if (!f->ok || (f->log && f->log[0] && !f->cached)) {
                const char *p = f->log ? f->log : "";
                int lines = 0;
                while (*p && lines < 40) {
                    const char *e = strchr(p, '\n');
                    int len = e ? (int)(e - p) : (int)strlen(p);
                    fprintf(cli_out, "      %.*s\n", len, p);
                    lines++;
                    p += len + (e ? 1 : 0);
                }
            }
        }
    }
    tr_mtl_close(lib);
    if (rc != CLI_OK)
        return rc;
    return failed ? CLI_FAILURES : CLI_OK;
}

/* ---- list ------------------------------------------------------------------------------------------------------- */

static json_t *kernel_json(const tr_mtl_kernel *k)
{
    json_t *o = json_object(), *ps = json_array(), *tg = json_array(), *fc = json_array();
    json_object_set_new(o, "name", json_string(k->name));
    json_object_set_new(o, "qualified", json_string(k->qualified));
    json_object_set_new(o, "file", json_string(k->file));
    json_object_set_new(o, "line", json_integer(k->line));
    const tr_kernel_symbol *s = tr_kernel_symbol_find(k->name);
    const char *fam = tr_kernel_symbol_unmapped_family(k->name);
    json_object_set_new(o, "op", s ? json_string(s->op) : json_null());
    json_object_set_new(o, "section", s ? json_string(s->section) : json_null());
    json_object_set_new(o, "variant", s && s->variant ? json_string(s->variant) : json_null());
    json_object_set_new(o, "binding_family", s && s->binding ? json_string(s->binding) : json_null());
    json_object_set_new(o, "launch", s && s->launch ? json_string(s->launch) : json_null());
    json_object_set_new(o, "unmapped_family", fam ? json_string(fam) : json_null());
    for (int p = 0; p < k->nparams; p++) {
        const tr_mtl_param *P = &k->params[p];
        json_t *po = json_object();
        json_object_set_new(po, "name", json_string(P->name));
        json_object_set_new(po, "kind", json_string(kind_name(P->kind)));
        if (P->kind == TR_MTL_BUILTIN)
            json_object_set_new(po, "builtin", json_string(P->builtin ? P->builtin : ""));
        else {
            json_object_set_new(po, "index", json_integer(P->index));
            json_object_set_new(po, "explicit_index", json_boolean(P->explicit_index));
        }
        json_object_set_new(po, "address_space", json_string(space_name(P->space)));
        json_object_set_new(po, "type", json_string(P->type ? P->type : ""));
        json_object_set_new(po, "elem_type", json_string(P->elem_type ? P->elem_type : ""));
        json_object_set_new(po, "elem_size", json_integer(P->elem_size));
        json_object_set_new(po, "dtype", P->dtype >= 0 ? json_string(tr_dtype_name((tr_dtype)P->dtype)) : json_null());
        json_object_set_new(po, "vec_width", json_integer(P->vec_width));
        json_object_set_new(po, "const", json_boolean(P->is_const));
        json_array_append_new(ps, po);
    }
    json_object_set_new(o, "params", ps);
    for (int t = 0; t < k->n_tg_decls; t++) {
        json_t *to = json_object();
        json_object_set_new(to, "name", json_string(k->tg_decls[t].name));
        json_object_set_new(to, "type", json_string(k->tg_decls[t].type));
        json_object_set_new(to, "line", json_integer(k->tg_decls[t].line));
        json_object_set_new(to, "site", json_integer(k->tg_decls[t].site));
        json_array_append_new(tg, to);
    }
    json_object_set_new(o, "threadgroup_memory", tg);
    for (int f = 0; f < k->n_function_constants; f++) {
        json_t *fo = json_object();
        json_object_set_new(fo, "name", json_string(k->fc_names[f]));
        json_object_set_new(fo, "index", json_integer(k->fc_indices[f]));
        json_array_append_new(fc, fo);
    }
    json_object_set_new(o, "function_constants", fc);
    return o;
}

static int do_list(const common *c)
{
    tr_mtl_lib *lib = NULL;
    int rc = build_lib(c, &lib);
    if (rc != CLI_OK)
        return rc;
    size_t failed = 0;
    for (size_t i = 0; i < tr_mtl_file_count(lib); i++)
        failed += !tr_mtl_file_at(lib, i)->ok;
    if (c->json) {
        unsigned long mark = tr_json_mark();
        json_t *doc = json_object(), *ks = json_array();
        json_object_set_new(doc, "schema", json_string("trellis.metal_emu_kernels/1"));
        json_object_set_new(doc, "path", json_string(c->path));
        for (size_t k = 0; k < tr_mtl_kernel_count(lib); k++)
            json_array_append_new(ks, kernel_json(tr_mtl_kernel_at(lib, k)));
        json_object_set_new(doc, "kernels", ks);
        json_object_set_new(doc, "files", files_json(lib));
        rc = cli_write_json(CMD, c->json, doc, mark);
        json_decref(doc);
        tr_mtl_close(lib);
        return rc != CLI_OK ? rc : failed ? CLI_FAILURES : CLI_OK;
    }
    fprintf(cli_out, "%s: %zu kernels in %zu files%s\n", c->path, tr_mtl_kernel_count(lib), tr_mtl_file_count(lib),
            failed ? " (some files failed to build: trellis metal build)" : "");
    for (size_t ki = 0; ki < tr_mtl_kernel_count(lib); ki++) {
        const tr_mtl_kernel *k = tr_mtl_kernel_at(lib, ki);
        const tr_kernel_symbol *s = tr_kernel_symbol_find(k->name);
        const char *fam = tr_kernel_symbol_unmapped_family(k->name);
        fprintf(cli_out, "\n%s  (%s:%d)\n", k->qualified, k->file, k->line);
        if (s)
            fprintf(cli_out, "  op: %s (KERNELS.md §%s)%s%s%s%s\n", s->op, s->section, s->variant ? ", variant " : "",
                    s->variant ? s->variant : "", s->binding ? "; family: " : "", s->binding ? s->binding : "");
        else
            fprintf(cli_out, "  op: unmapped%s%s\n", fam ? " — " : "", fam ? fam : "");
        for (int p = 0; p < k->nparams; p++) {
            const tr_mtl_param *P = &k->params[p];
            char where[64];
            if (P->kind == TR_MTL_BUILTIN)
                snprintf(where, sizeof where, "builtin");
            else
                snprintf(where, sizeof where, "%s %d%s", kind_name(P->kind), P->index, P->explicit_index ? "" : "*");
            char info[96] = "";
            if (P->kind == TR_MTL_BUILTIN)
                snprintf(info, sizeof info, "[[%s]]", P->builtin ? P->builtin : "?");
            else if (P->dtype >= 0 && P->vec_width > 0)
                snprintf(info, sizeof info, "%s x%d, %u B", tr_dtype_name((tr_dtype)P->dtype), P->vec_width,
                         P->elem_size);
            else if (P->elem_size)
                snprintf(info, sizeof info, "%u B", P->elem_size);
            fprintf(cli_out, "  %-14s %-10s %-34s %s\n", where, P->name, P->type, info);
        }
        for (int t = 0; t < k->n_tg_decls; t++)
            fprintf(cli_out, "  threadgroup    %-10s %-34s line %d, site %d\n", k->tg_decls[t].name,
                    k->tg_decls[t].type, k->tg_decls[t].line, k->tg_decls[t].site);
        for (int f = 0; f < k->n_function_constants; f++)
            fprintf(cli_out, "  function_constant(%d) %s\n", k->fc_indices[f], k->fc_names[f]);
    }
    fprintf(cli_out, "\n(* = Metal's implicit index: the first free index of its kind, in declaration order)\n");
    tr_mtl_close(lib);
    return failed ? CLI_FAILURES : CLI_OK;
}

/* ---- run -------------------------------------------------------------------------------------------------------- */

#define MAX_KV 64

typedef struct run_opts {
    common c;
    const char *kernel, *capture, *case_sel, *emit;
    uint32_t grid[3], tg[3];
    int have_grid, have_tg, dispatch_threads, mma_model, workers;
    double timeout;
    tr_mtl_schedule sched[16];
    int nsched;
    const char *bind[MAX_KV], *set[MAX_KV], *fc[MAX_KV], *tgmem[MAX_KV];
    int nbind, nset, nfc, ntgmem;
} run_opts;

static int parse_dims(const char *s, uint32_t d[3])
{
    d[0] = d[1] = d[2] = 1;
    for (int k = 0; k < 3; k++) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || errno || v == 0 || v > 0xFFFFFFFFul)
            return -1;
        d[k] = (uint32_t)v;
        if (*end == '\0')
            return 0;
        if (*end != ',' && *end != 'x')
            return -1;
        s = end + 1;
    }
    return -1;
}

/* The value of KEY in "KEY=VALUE" items, or NULL. */
static const char *kv_find(const char *const *items, int n, const char *key)
{
    size_t kl = strlen(key);
    for (int i = 0; i < n; i++)
        if (strncmp(items[i], key, kl) == 0 && items[i][kl] == '=')
            return items[i] + kl + 1;
    return NULL;
}

/* Encode a scalar value for a parameter of dtype dt into out (≤ 8 bytes).  Returns the size or -1. */
static int encode_scalar(const char *text, int dt, unsigned char *out)
{
    char *end;
    errno = 0;
    if (dt == TR_DT_F32 || dt == TR_DT_F16) {
        double v = strtod(text, &end);
        if (end == text || *end)
            return -1;
        if (dt == TR_DT_F32) {
            float f = (float)v;
            memcpy(out, &f, 4);
            return 4;
        }
        uint16_t h = tr_f64_to_f16(v);
        memcpy(out, &h, 2);
        return 2;
    }
    long long v = strtoll(text, &end, 0);
    if (end == text || *end || errno)
        return -1;
    size_t n = dt == TR_DT_U8 || dt == TR_DT_I8 || dt == TR_DT_BOOL ? 1 : dt == TR_DT_U16 || dt == TR_DT_I16 ? 2
               : dt == TR_DT_U64 || dt == TR_DT_I64 ? 8 : 4;
    memcpy(out, &v, n);        /* little-endian truncation */
    return (int)n;
}

static json_t *result_json(const char *sched, const tr_mtl_result *r)
{
    json_t *o = json_object(), *d = json_array(), *st = json_object();
    json_object_set_new(o, "schedule", json_string(sched));
    json_object_set_new(o, "status", json_string(tr_mtl_status_name(r->status)));
    json_object_set_new(o, "detail", r->detail[0] ? json_string(r->detail) : json_null());
    for (size_t i = 0; i < r->ndiags; i++) {
        json_t *x = json_object();
        json_object_set_new(x, "code", json_string(tr_mtl_diag_name(r->diags[i].code)));
        json_object_set_new(x, "site", json_string(r->diags[i].site));
        json_object_set_new(x, "text", json_string(r->diags[i].text));
        json_object_set_new(x, "count", json_integer((json_int_t)r->diags[i].count));
        json_array_append_new(d, x);
    }
    json_object_set_new(o, "diagnostics", d);
    json_object_set_new(st, "threadgroups", json_integer((json_int_t)r->stats.threadgroups));
    json_object_set_new(st, "lanes", json_integer((json_int_t)r->stats.lanes));
    json_object_set_new(st, "context_switches", json_integer((json_int_t)r->stats.context_switches));
    json_object_set_new(st, "barriers", json_integer((json_int_t)r->stats.barriers));
    json_object_set_new(st, "rendezvous", json_integer((json_int_t)r->stats.rendezvous));
    json_object_set_new(st, "partial_collectives", json_integer((json_int_t)r->stats.partial_collectives));
    json_object_set_new(st, "mma_computed", json_integer((json_int_t)r->stats.mma_computed));
    json_object_set_new(st, "mma_reused", json_integer((json_int_t)r->stats.mma_reused));
    json_object_set_new(st, "peak_threadgroup_bytes", json_integer((json_int_t)r->stats.peak_tg_bytes));
    json_object_set_new(st, "seconds", tr_json_real(r->stats.seconds));
    json_object_set_new(o, "stats", st);
    return o;
}

static size_t elem_of(const tr_buf *b) { return tr_dtype_size(b->dtype) ? tr_dtype_size(b->dtype) : 1; }

/* Elements that differ bitwise; *first gets the first index (or -1). */
static uint64_t diff_count(const uint8_t *a, const uint8_t *b, size_t bytes, size_t es, long long *first)
{
    uint64_t n = 0;
    *first = -1;
    for (size_t i = 0; i + es <= bytes; i += es)
        if (memcmp(a + i, b + i, es) != 0) {
            if (*first < 0)
                *first = (long long)(i / es);
            n++;
        }
    return n;
}

static int write_capture(const char *dir, json_t *entry, const tr_bufs *in, const tr_bufs *outs,
                         uint8_t *const *guarded, const char *kernel, json_t *runinfo, tr_error *err)
{
    int rc = tr_mkdir_p(dir, err);
    char *cdir = rc == TR_OK ? tr_path_join(dir, "cases/000000") : NULL;
    if (rc == TR_OK && (!cdir || tr_mkdir_p(cdir, err) != TR_OK))
        rc = cdir ? err->code : tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    tr_dealloc(cdir);
    if (rc != TR_OK)
        return rc;
    json_t *e = json_deep_copy(entry), *bufs = json_array();
    json_t *old = json_object_get(entry, "buffers");
    for (size_t i = 0; rc == TR_OK && i < json_array_size(old); i++) {
        json_t *b = json_deep_copy(json_array_get(old, i));
        const char *name = json_string_value(json_object_get(b, "name"));
        int output = strcmp(json_string_value(json_object_get(b, "role")), "output") == 0;
        const uint8_t *data = NULL;
        size_t size = 0;
        const tr_bufs *src = output ? outs : in;
        for (int k = 0; k < src->n; k++)
            if (strcmp(src->v[k]->name, name) == 0) {
                data = output ? guarded[k] : src->v[k]->data;
                size = src->v[k]->bytes + (output ? 2 * CONFORM_GUARD_BYTES : 0);
            }
        char rel[256];
        snprintf(rel, sizeof rel, "cases/000000/%s_%s.bin", output ? "out" : "in", name);
        char *path = tr_path_join(dir, rel);
        rc = path && data ? tr_file_write_all(path, data, size, err) : tr_fail(err, TR_E_NOMEM, dir, "out of memory");
        tr_dealloc(path);
        char hex[65] = "";
        if (rc == TR_OK)
            tr_sha256_hex(data, size, hex);
        json_object_set_new(b, "file", json_string(rel));
        json_object_set_new(b, "sha256", json_string(hex));
        json_array_append_new(bufs, b);
    }
    json_object_set_new(e, "buffers", bufs);
    json_t *emu = json_object();
    json_object_set_new(emu, "kernel", json_string(kernel));
    json_object_set_new(emu, "run", json_incref(runinfo));
    json_object_set_new(e, "metal_emu", emu);
    json_t *cases = json_array();
    json_array_append_new(cases, e);
    if (rc == TR_OK)
        rc = capture_write_manifest(dir, cases, err);
    json_decref(cases);
    return rc;
}

static int do_run(run_opts *o)
{
    tr_error err;
    tr_error_clear(&err);
    if (!o->kernel)
        return cli_usage(CMD, "run needs a KERNEL");
    if (!o->capture)
        return cli_usage(CMD, "run needs --capture DIR (a trellis.capture/1 folder)");
    if (!o->have_grid || !o->have_tg)
        return cli_usage(CMD, "run needs --grid and --tg");
    if (!o->nsched) {
        o->sched[0].policy = TR_MTL_SG_GREEDY;
        o->nsched = 1;
    }
    json_t *manifest = NULL;
    if (capture_read_manifest(o->capture, &manifest, &err) != TR_OK)
        return cli_fail(CMD, &err);
    json_t *cases = json_object_get(manifest, "cases"), *entry = NULL;
    const char *sel = o->case_sel ? o->case_sel : "0";
    char *end;
    long idx = strtol(sel, &end, 10);
    if (*sel && !*end && idx >= 0 && (size_t)idx < json_array_size(cases))
        entry = json_array_get(cases, (size_t)idx);
    for (size_t i = 0; !entry && i < json_array_size(cases); i++) {
        const char *id = json_string_value(json_object_get(json_array_get(cases, i), "case"));
        if (id && strcmp(id, sel) == 0)
            entry = json_array_get(cases, i);
    }
    if (!entry) {
        json_decref(manifest);
        fprintf(cli_err, "trellis %s: error: %s: no case %s\n", CMD, o->capture, sel);
        return CLI_USAGE;
    }
    tr_bufs in = {0}, got = {0};
    uint8_t *rec_guarded[64] = {0};
    int rc = CLI_OK;
    tr_mtl_lib *lib = NULL;
    tr_mtl_args *args = NULL;
    uint8_t *out_blocks[16][64];
    memset(out_blocks, 0, sizeof out_blocks);
    uint8_t *in_copies[64] = {0};
    json_t *runs = json_array();
    if (capture_load_case(o->capture, entry, &in, &got, rec_guarded, &err) != TR_OK) {
        rc = cli_fail(CMD, &err);
        goto out;
    }
    if ((rc = build_lib(&o->c, &lib)) != CLI_OK)
        goto out;
    int amb = 0;
    const tr_mtl_kernel *k = tr_mtl_find(lib, o->kernel, &amb);
    if (!k) {
        fprintf(cli_err, "trellis %s: error: kernel %s %s in %s\n", CMD, o->kernel,
                amb ? "is defined by several files (use stem:name)" : "not found", o->c.path);
        rc = CLI_USAGE;
        goto out;
    }
    args = tr_mtl_args_new();
    if (!args) {
        rc = CLI_RESOURCE;
        goto out;
    }
    json_t *params = json_object_get(entry, "params");
    int failures = 0;
    /* per schedule: fresh inputs and guarded, poisoned outputs */
    for (int s = 0; s < o->nsched && rc == CLI_OK; s++) {
        tr_mtl_args_clear(args);
        for (int p = 0; p < k->nparams && rc == CLI_OK; p++) {
            const tr_mtl_param *P = &k->params[p];
            if (P->kind == TR_MTL_BUILTIN)
                continue;
            if (P->kind == TR_MTL_THREADGROUP) {
                char key[16];
                snprintf(key, sizeof key, "%d", P->index);
                const char *v = kv_find(o->tgmem, o->ntgmem, key);
                tr_mtl_set_threadgroup_memory(args, P->index, v ? (size_t)strtoull(v, NULL, 0) : 0, &err);
                continue;
            }
            if (P->kind != TR_MTL_BUFFER) {
                fprintf(cli_err, "trellis %s: error: parameter %s: textures and samplers cannot be bound from a capture "
                        "yet\n", CMD, P->name);
                rc = CLI_USAGE;
                break;
            }
            const char *bname = kv_find(o->bind, o->nbind, P->name);
            if (!bname)
                bname = P->name;
            int found = 0;
            for (int q = 0; q < in.n && !found; q++)
                if (strcmp(in.v[q]->name, bname) == 0) {
                    tr_dealloc(in_copies[q]);
                    in_copies[q] = tr_malloc(in.v[q]->bytes ? in.v[q]->bytes : 1);
                    if (!in_copies[q]) {
                        rc = CLI_RESOURCE;
                        break;
                    }
                    memcpy(in_copies[q], in.v[q]->data, in.v[q]->bytes);
                    tr_mtl_set_buffer(args, P->index, in_copies[q], in.v[q]->bytes, &err);
                    found = 1;
                }
            for (int q = 0; q < got.n && !found; q++)
                if (strcmp(got.v[q]->name, bname) == 0) {
                    tr_buf *b = got.v[q];
                    uint8_t *g = conform_guarded_alloc(b->bytes);
                    if (!g) {
                        rc = CLI_RESOURCE;
                        break;
                    }
                    out_blocks[s][q] = g;
                    tr_buf view = *b;
                    view.data = g + CONFORM_GUARD_BYTES;
                    if (b->accumulating)
                        memset(view.data, 0, b->bytes);
                    else
                        tr_poison_fill(&view);
                    tr_mtl_set_buffer(args, P->index, view.data, b->bytes, &err);
                    found = 1;
                }
            if (!found && rc == CLI_OK) {
                const char *v = kv_find(o->set, o->nset, P->name);
                json_t *pv = params ? json_object_get(params, P->name) : NULL;
                char tmp[64];
                if (!v && json_is_string(pv))
                    v = json_string_value(pv);
                else if (!v && json_is_integer(pv)) {
                    snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(pv));
                    v = tmp;
                }
                unsigned char bytes[8];
                int n = v ? encode_scalar(v, P->dtype, bytes) : -1;
                if (n < 0 || (P->elem_size && (unsigned)n != P->elem_size)) {
                    fprintf(cli_err, "trellis %s: error: parameter %s (buffer %d, %s): no capture buffer of that name "
                            "and no scalar value (use --bind %s=BUFFER or --set %s=VALUE)\n", CMD, P->name, P->index,
                            P->type, P->name, P->name);
                    rc = CLI_USAGE;
                    break;
                }
                tr_mtl_set_bytes(args, P->index, bytes, (size_t)n, &err);
            }
        }
        for (int f = 0; rc == CLI_OK && f < o->nfc; f++) {
            const char *eq = strchr(o->fc[f], '=');
            if (!eq) {
                rc = cli_usage(CMD, "--fc needs INDEX=VALUE");
                break;
            }
            int index = atoi(o->fc[f]);
            const char *v = eq + 1;
            unsigned char bytes[8];
            int n;
            if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0) {
                bytes[0] = v[0] == 't';
                n = 1;
            } else
                n = encode_scalar(v, strpbrk(v, ".eE") && strncmp(v, "0x", 2) ? TR_DT_F32 : TR_DT_I32, bytes);
            if (n < 0 || tr_mtl_set_function_constant(args, index, bytes, (size_t)n, &err) != TR_OK) {
                rc = cli_usage(CMD, "--fc %s: bad value", o->fc[f]);
                break;
            }
        }
        if (rc != CLI_OK)
            break;
        tr_mtl_launch l;
        tr_mtl_launch_init(&l);
        memcpy(l.grid, o->grid, sizeof l.grid);
        memcpy(l.tg, o->tg, sizeof l.tg);
        l.dispatch_threads = o->dispatch_threads;
        l.schedule = o->sched[s];
        l.timeout_s = o->timeout;
        l.mma_model = o->mma_model;
        l.n_workers = o->workers;
        tr_mtl_result res;
        if (tr_mtl_dispatch(lib, k, args, &l, &res, &err) != TR_OK && res.status == TR_MTL_INVALID) {
            rc = cli_fail(CMD, &err);
            tr_mtl_result_free(&res);
            break;
        }
        char sname[64];
        tr_mtl_schedule_name(&o->sched[s], sname, sizeof sname);
        json_t *rj = result_json(sname, &res);
        json_t *outs = json_array();
        int bad = res.status != TR_MTL_OK;
        if (!o->c.json)
            fprintf(cli_out, "%s  schedule %s: %s%s%s\n", k->qualified, sname, tr_mtl_status_name(res.status),
                    res.detail[0] ? " — " : "", res.detail);
        for (int q = 0; q < got.n; q++) {
            if (!out_blocks[s][q])
                continue;
            tr_buf *b = got.v[q];
            size_t es = elem_of(b);
            long where = 0;
            int intact = conform_guards_intact(out_blocks[s][q], b->bytes, &where);
            long long first;
            uint64_t nd = diff_count(out_blocks[s][q] + CONFORM_GUARD_BYTES, b->data, b->bytes, es, &first);
            uint8_t *pz = tr_malloc(b->bytes ? b->bytes : 1);
            uint64_t unwritten = 0;
            if (pz && !b->accumulating) {
                tr_buf pv = *b;
                pv.data = pz;
                tr_poison_fill(&pv);
                long long f2;
                unwritten = b->bytes / es - diff_count(out_blocks[s][q] + CONFORM_GUARD_BYTES, pz, b->bytes, es, &f2);
            }
            tr_dealloc(pz);
            long long sdiff = -1;
            uint64_t nsd = 0;
            if (s > 0 && out_blocks[0][q])
                nsd = diff_count(out_blocks[s][q] + CONFORM_GUARD_BYTES, out_blocks[0][q] + CONFORM_GUARD_BYTES,
                                 b->bytes, es, &sdiff);
            bad |= !intact || nd || unwritten || nsd;
            json_t *oj = json_object();
            json_object_set_new(oj, "name", json_string(b->name));
            json_object_set_new(oj, "mismatches_vs_capture", json_integer((json_int_t)nd));
            json_object_set_new(oj, "first_mismatch", first >= 0 ? json_integer(first) : json_null());
            json_object_set_new(oj, "unwritten", json_integer((json_int_t)unwritten));
            json_object_set_new(oj, "guards_intact", json_boolean(intact));
            if (!intact)
                json_object_set_new(oj, "guard_offset", json_integer(where));
            json_object_set_new(oj, "differs_from_first_schedule", json_integer((json_int_t)nsd));
            json_array_append_new(outs, oj);
            if (!o->c.json) {
                fprintf(cli_out, "  output %-12s %llu of %llu elements differ from the capture", b->name,
                        (unsigned long long)nd, (unsigned long long)(b->bytes / es));
                if (first >= 0)
                    fprintf(cli_out, " (first at %lld)", first);
                if (unwritten)
                    fprintf(cli_out, "; %llu unwritten (poison)", (unsigned long long)unwritten);
                if (!intact)
                    fprintf(cli_out, "; out-of-bounds write: guard byte at data offset %ld changed", where);
                if (nsd)
                    fprintf(cli_out, "; schedule-dependent output: %llu elements differ from the first schedule",
                            (unsigned long long)nsd);
                fprintf(cli_out, "\n");
            }
        }
        json_object_set_new(rj, "outputs", outs);
        if (!o->c.json) {
            for (size_t d = 0; d < res.ndiags; d++)
                fprintf(cli_out, "  diagnostic %s ×%llu at %s: %s\n", tr_mtl_diag_name(res.diags[d].code),
                        (unsigned long long)res.diags[d].count, res.diags[d].site, res.diags[d].text);
            fprintf(cli_out, "  %llu threadgroups, %llu lanes, %llu switches, %llu barriers, %llu rendezvous "
                    "(%llu partial), MMA %llu computed / %llu reused, peak threadgroup memory %llu B, %.3f s\n",
                    (unsigned long long)res.stats.threadgroups, (unsigned long long)res.stats.lanes,
                    (unsigned long long)res.stats.context_switches, (unsigned long long)res.stats.barriers,
                    (unsigned long long)res.stats.rendezvous, (unsigned long long)res.stats.partial_collectives,
                    (unsigned long long)res.stats.mma_computed, (unsigned long long)res.stats.mma_reused,
                    (unsigned long long)res.stats.peak_tg_bytes, res.stats.seconds);
        }
        failures += bad;
        json_array_append_new(runs, rj);
        tr_mtl_result_free(&res);
    }
    if (rc == CLI_OK && o->emit) {
        if (write_capture(o->emit, entry, &in, &got, out_blocks[0], k->qualified, json_array_get(runs, 0), &err) !=
            TR_OK)
            rc = cli_fail(CMD, &err);
        else if (!o->c.json)
            fprintf(cli_out, "wrote %s\n", o->emit);
    }
    if (rc == CLI_OK && o->c.json) {
        unsigned long mark = tr_json_mark();
        json_t *doc = json_object();
        json_object_set_new(doc, "schema", json_string("trellis.metal_emu_run/1"));
        json_object_set_new(doc, "kernel", json_string(k->qualified));
        json_object_set_new(doc, "capture", json_string(o->capture));
        json_object_set_new(doc, "case", json_incref(json_object_get(entry, "case")));
        json_object_set_new(doc, "runs", json_incref(runs));
        rc = cli_write_json(CMD, o->c.json, doc, mark);
        json_decref(doc);
    }
    if (rc == CLI_OK && failures)
        rc = CLI_FAILURES;
out:
    json_decref(runs);
    for (int s = 0; s < 16; s++)
        for (int q = 0; q < 64; q++)
            tr_dealloc(out_blocks[s][q]);
    for (int q = 0; q < 64; q++) {
        tr_dealloc(in_copies[q]);
        tr_dealloc(rec_guarded[q]);
    }
    for (int q = 0; q < got.n; q++)
        got.v[q]->data = NULL;  /* views into rec_guarded */
    tr_bufs_free(&in);
    tr_bufs_free(&got);
    tr_mtl_args_free(args);
    tr_mtl_close(lib);
    json_decref(manifest);
    return rc;
}

/* ---- rewrite ---------------------------------------------------------------------------------------------------- */

static int do_rewrite(const char *file, const char *json)
{
    if (!file)
        return cli_usage(CMD, "rewrite needs a .metal FILE");
    char *cpp = NULL, *meta = NULL, *errors = NULL;
    tr_error err;
    tr_error_clear(&err);
    if (tr_mtl_rewrite_file(file, NULL, &cpp, &meta, &errors, &err) != TR_OK)
        return cli_fail(CMD, &err);
    if (json) {
        if (strcmp(json, "-") == 0)
            fprintf(cli_out, "%s\n", meta);
        else {
            tr_error e2;
            if (tr_file_write_all(json, meta, strlen(meta), &e2) != TR_OK) {
                tr_dealloc(cpp);
                tr_dealloc(meta);
                tr_dealloc(errors);
                return cli_fail(CMD, &e2);
            }
        }
    }
    if (!json || strcmp(json, "-") != 0)
        fputs(cpp, cli_out);
    if (errors)
        fputs(errors, cli_err);
    int rc = errors ? CLI_FAILURES : CLI_OK;
    tr_dealloc(cpp);
    tr_dealloc(meta);
    tr_dealloc(errors);
    return rc;
}

/* ---- dispatch --------------------------------------------------------------------------------------------------- */

int cmd_metal(int argc, char **argv)
{
    if (argc < 2 || cli_is_help(argv[1])) {
        help();
        return argc < 2 ? CLI_USAGE : CLI_OK;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "build") && strcmp(sub, "list") && strcmp(sub, "run") && strcmp(sub, "rewrite"))
        return cli_usage(CMD, "unknown subcommand \"%s\" (build, list, run, rewrite)", sub);
    run_opts o;
    memset(&o, 0, sizeof o);
    o.c.path = "metal/kernels";
    const char *positional = NULL;
    for (int i = 2; i < argc; i++) {
        const char *v = NULL;
        int m;
        if (cli_is_help(argv[i])) {
            help();
            return CLI_OK;
        }
#define OPT(name) ((m = cli_opt(argc, argv, &i, name, &v)) != 0)
#define NEED(name)                                                                                                     \
    if (m < 0)                                                                                                         \
    return cli_usage(CMD, "%s needs a value", name)
        if (OPT("--out")) {
            NEED("--out");
            o.c.out = v;
        } else if (OPT("--jobs")) {
            NEED("--jobs");
            o.c.jobs = atoi(v);
            if (o.c.jobs < 1)
                return cli_usage(CMD, "--jobs needs a positive number");
        } else if (strcmp(argv[i], "--force") == 0)
            o.c.force = 1;
        else if (OPT("--metal-dir")) {
            NEED("--metal-dir");
            o.c.path = v;
        } else if (OPT("--capture")) {
            NEED("--capture");
            o.capture = v;
        } else if (OPT("--case")) {
            NEED("--case");
            o.case_sel = v;
        } else if (OPT("--emit-capture")) {
            NEED("--emit-capture");
            o.emit = v;
        } else if (OPT("--grid")) {
            NEED("--grid");
            if (parse_dims(v, o.grid) != 0)
                return cli_usage(CMD, "--grid %s: expected X[,Y[,Z]] of positive numbers", v);
            o.have_grid = 1;
        } else if (OPT("--tg")) {
            NEED("--tg");
            if (parse_dims(v, o.tg) != 0)
                return cli_usage(CMD, "--tg %s: expected X[,Y[,Z]] of positive numbers", v);
            o.have_tg = 1;
        } else if (strcmp(argv[i], "--dispatch-threads") == 0)
            o.dispatch_threads = 1;
        else if (OPT("--schedule")) {
            NEED("--schedule");
            if (o.nsched >= 16 || tr_mtl_schedule_parse(v, &o.sched[o.nsched]) != 0)
                return cli_usage(CMD, "--schedule %s: expected forward, reverse, sg_greedy or random:SEED", v);
            o.nsched++;
        } else if (OPT("--bind")) {
            NEED("--bind");
            if (o.nbind >= MAX_KV || !strchr(v, '='))
                return cli_usage(CMD, "--bind needs PARAM=BUFFER");
            o.bind[o.nbind++] = v;
        } else if (OPT("--set")) {
            NEED("--set");
            if (o.nset >= MAX_KV || !strchr(v, '='))
                return cli_usage(CMD, "--set needs PARAM=VALUE");
            o.set[o.nset++] = v;
        } else if (OPT("--fc")) {
            NEED("--fc");
            if (o.nfc >= MAX_KV)
                return cli_usage(CMD, "too many --fc");
            o.fc[o.nfc++] = v;
        } else if (OPT("--tg-memory")) {
            NEED("--tg-memory");
            if (o.ntgmem >= MAX_KV || !strchr(v, '='))
                return cli_usage(CMD, "--tg-memory needs INDEX=BYTES");
            o.tgmem[o.ntgmem++] = v;
        } else if (OPT("--timeout")) {
            NEED("--timeout");
            o.timeout = strtod(v, NULL);
        } else if (OPT("--mma-model")) {
            NEED("--mma-model");
            if (strcmp(v, "0") && strcmp(v, "1"))
                return cli_usage(CMD, "--mma-model must be 0 or 1");
            o.mma_model = atoi(v);
        } else if (OPT("--workers")) {
            NEED("--workers");
            o.workers = atoi(v);
        } else if (cli_opt_json(argc, argv, &i, &o.c.json) != 0) {
        } else if (argv[i][0] == '-' && argv[i][1])
            return cli_usage(CMD, "unknown option %s", argv[i]);
        else if (!positional)
            positional = argv[i];
        else
            return cli_usage(CMD, "unexpected argument %s", argv[i]);
#undef OPT
#undef NEED
    }
    if (strcmp(sub, "rewrite") == 0)
        return do_rewrite(positional, o.c.json);
    if (strcmp(sub, "run") == 0) {
        o.kernel = positional;
        return do_run(&o);
    }
    if (positional)
        o.c.path = positional;
    return strcmp(sub, "build") == 0 ? do_build(&o.c) : do_list(&o.c);
}
