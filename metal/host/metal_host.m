/*
 * metal_host.m — the macOS runner (`--backend metal`, METAL.md §7): the interface of include/trellis/metal_emu.h
 * implemented on a live MTLDevice, so that the portable conformance runner (cli/conform_metal.c and the binding
 * families and adapters of cli/metal_bind.c) drives the GPU exactly as it drives the emulator.  Linked instead of
 * libtrellis_metal_emu.a into build/trellis-metal, which Makefile builds only on Darwin.
 *
 * NEVER BUILT OR RUN: this file was written on Linux, where no Metal framework exists; README.md says so.  It is kept
 * small on purpose.
 *
 *   build     every *.metal below the folder (bytewise path order) or one file: quoted includes inlined
 *             (host_source.c), compiled with newLibraryWithSource: and MTLCompileOptions — math mode from
 *             $TRELLIS_METAL_MATH (relaxed, Metal's default, or safe), recorded in each file's log; one MTLLibrary
 *             per file.  Kernel functions become tr_mtl_kernel records whose parameters come from the pipeline's
 *             reflection (index, buffer/texture/sampler/threadgroup, element dtype and size, read-only or not);
 *             builtins are not reflected, so the ones the runner asks about (threadgroup_position_in_grid) are read
 *             from the source (host_source.c).  Compiling and reflecting happen in a helper child process: the
 *             conformance runner forks a child per case and Metal objects do not survive fork, so the parent never
 *             touches Metal; each dispatching process creates its own device and compiles the file it needs.
 *   dispatch  a pipeline per launch (function constants from the arguments), buffers in shared MTLBuffers of
 *             size + 2 × 64 guard bytes (pattern 0xDEADBEEF, as the harness's), bound at offset 64; setBytes
 *             copies as setBytes; textures (1-D, 2-D, 2-D array) and samplers created from the descriptions;
 *             dispatchThreadgroups or dispatchThreads; the command buffer's completion waited for with the
 *             launch's watchdog (a GPU job cannot be cancelled: a TIMEOUT leaves it running); outputs copied back;
 *             changed guard bytes reported as an invalid launch naming the buffer ("out-of-bounds write").
 *   limits    threadgroup size over the pipeline's maxTotalThreadsPerThreadgroup, threadgroup memory over the
 *             device's maxThreadgroupMemoryLength, or a refused pipeline: RESOURCE_ERROR.  A command buffer error:
 *             an invalid launch with the error text.
 *   debug     MTL_DEBUG_LAYER=1 and MTL_SHADER_VALIDATION=1 are read by Metal itself when the device is created;
 *             the runner also asks command buffers for encoder execution status then and records both settings in
 *             every file's log.
 *   schedules the GPU has its own: every "schedule" of the runner is one more run of the same launch, so outputs
 *             that differ between runs are still reported (run-to-run nondeterminism).
 */
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include "host_source.h"
#include "trellis/alloc.h"
#include "trellis/metal_emu.h"

#include <jansson.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#define MH_GUARD 64
#define MH_GUARD_PATTERN 0xDEADBEEFu
#define MH_BUF 31
#define MH_TEX 32
#define MH_SMP 16
#define MH_TG 8
#define MH_FC 64

typedef struct mh_kernel {
    tr_mtl_kernel pub;
    size_t file;               /* index into the library's files */
} mh_kernel;

/* Metal is used only in the process that dispatches: conform forks a child per case, and Metal objects do not survive
 * fork.  tr_mtl_build compiles and reflects in a helper child and keeps only plain records; a dispatching process
 * creates its device, queue and the MTLLibrary of a file on first use (metal_pid tells whose they are). */
struct tr_mtl_lib {
    tr_mtl_file *files;
    size_t nfiles;
    mh_kernel *kernels;
    size_t nkernels;
    char **strs;               /* every string the records point at */
    size_t nstrs;
    const char **srcs;         /* the expanded source of each file */
    int fast;                  /* math mode: 1 relaxed (fast), 0 safe */
    pid_t metal_pid;           /* process that owns dev, queue, libs (0: none) */
    void *dev, *queue;         /* id<MTLDevice>, id<MTLCommandQueue>, retained */
    void **libs;               /* id<MTLLibrary> per file, retained, created on first use */
};

/* Builtins the binding families' launches ask about (reflection does not list builtins). */
static const char *const BUILTINS[] = {"thread_position_in_grid", "threadgroup_position_in_grid",
                                       "thread_position_in_threadgroup", "thread_index_in_threadgroup",
                                       "threads_per_threadgroup", "threadgroups_per_grid", "threads_per_grid",
                                       "thread_index_in_simdgroup", "simdgroup_index_in_threadgroup"};

struct tr_mtl_args {
    void *buf[MH_BUF];
    size_t bytes[MH_BUF];
    unsigned char set[MH_BUF], owned[MH_BUF];
    tr_mtl_texture tex[MH_TEX];
    unsigned char tex_set[MH_TEX];
    tr_mtl_sampler smp[MH_SMP];
    unsigned char smp_set[MH_SMP];
    size_t tg[MH_TG];
    unsigned char tg_set[MH_TG];
    unsigned char fc[MH_FC][8];
    size_t fc_bytes[MH_FC];
    unsigned char fc_set[MH_FC];
};

const char *tr_mtl_backend_name(void) { return "metal"; }

static const char *keep(tr_mtl_lib *L, const char *s)
{
    char **a = tr_realloc(L->strs, (L->nstrs + 1) * sizeof *a);
    if (!a)
        return "";
    L->strs = a;
    a[L->nstrs] = tr_strdup(s ? s : "");
    return a[L->nstrs] ? a[L->nstrs++] : "";
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int env_on(const char *name)
{
    const char *e = getenv(name);
    return e && *e && strcmp(e, "0") != 0;
}

/* ---- building -------------------------------------------------------------------------------------------------- */

typedef struct pathlist {
    char **p;
    size_t n;
} pathlist;

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void collect(const char *dir, pathlist *out)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0)
            continue;
        size_t n = strlen(e->d_name);
        if (S_ISDIR(st.st_mode))
            collect(path, out);
        else if (n > 6 && strcmp(e->d_name + n - 6, ".metal") == 0) {
            char **q = tr_realloc(out->p, (out->n + 1) * sizeof *q);
            if (!q)
                break;
            out->p = q;
            out->p[out->n] = tr_strdup(path);
            if (out->p[out->n])
                out->n++;
        }
    }
    closedir(d);
}

static int dtype_of(MTLDataType t, int *width)
{
    *width = 1;
    switch (t) {
    case MTLDataTypeHalf4: *width = 4; return TR_DT_F16;
    case MTLDataTypeHalf3: *width = 3; return TR_DT_F16;
    case MTLDataTypeHalf2: *width = 2; return TR_DT_F16;
    case MTLDataTypeHalf: return TR_DT_F16;
    case MTLDataTypeFloat4: *width = 4; return TR_DT_F32;
    case MTLDataTypeFloat3: *width = 3; return TR_DT_F32;
    case MTLDataTypeFloat2: *width = 2; return TR_DT_F32;
    case MTLDataTypeFloat: return TR_DT_F32;
    case MTLDataTypeUChar4: *width = 4; return TR_DT_U8;
    case MTLDataTypeUChar2: *width = 2; return TR_DT_U8;
    case MTLDataTypeUChar: return TR_DT_U8;
    case MTLDataTypeChar: return TR_DT_I8;
    case MTLDataTypeShort: return TR_DT_I16;
    case MTLDataTypeUShort4: *width = 4; return TR_DT_U16;
    case MTLDataTypeUShort2: *width = 2; return TR_DT_U16;
    case MTLDataTypeUShort: return TR_DT_U16;
    case MTLDataTypeInt: return TR_DT_I32;
    case MTLDataTypeUInt4: *width = 4; return TR_DT_U32;
    case MTLDataTypeUInt3: *width = 3; return TR_DT_U32;
    case MTLDataTypeUInt2: *width = 2; return TR_DT_U32;
    case MTLDataTypeUInt: return TR_DT_U32;
    case MTLDataTypeLong: return TR_DT_I64;
    case MTLDataTypeULong: return TR_DT_U64;
    case MTLDataTypeBool: return TR_DT_BOOL;
    default: *width = 0; return -1;
    }
}

static id<MTLLibrary> compile(id<MTLDevice> dev, const char *src, int fast, NSError **e)
{
    MTLCompileOptions *o = [MTLCompileOptions new];
    if (@available(macOS 15.0, *))
        o.mathMode = fast ? MTLMathModeFast : MTLMathModeSafe;
    else {
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wdeprecated-declarations"
        o.fastMathEnabled = fast ? YES : NO;
#pragma clang diagnostic pop
    }
    return [dev newLibraryWithSource:[NSString stringWithUTF8String:src] options:o error:e];
}

static json_t *jparam(const char *name, int kind, int index, int is_const, unsigned elem_size, int dtype, int width,
                      int tex_type, int tex_access)
{
    json_t *p = json_object();
    json_object_set_new(p, "name", json_string(name));
    json_object_set_new(p, "kind", json_integer(kind));
    json_object_set_new(p, "index", json_integer(index));
    json_object_set_new(p, "const", json_integer(is_const));
    json_object_set_new(p, "elem_size", json_integer(elem_size));
    json_object_set_new(p, "dtype", json_integer(dtype));
    json_object_set_new(p, "width", json_integer(width));
    json_object_set_new(p, "tex_type", json_integer(tex_type));
    json_object_set_new(p, "tex_access", json_integer(tex_access));
    return p;
}

#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wdeprecated-declarations"
/* The kernel's bindable parameters from a reflected pipeline (MTLArgument; deprecated for MTLBinding on macOS 13+,
 * kept for macOS 12), as JSON. */
static json_t *reflect(id<MTLDevice> dev, id<MTLFunction> fn, NSString *name, NSMutableString *log)
{
    MTLComputePipelineReflection *refl = nil;
    NSError *e = nil;
    id<MTLComputePipelineState> ps =
        [dev newComputePipelineStateWithFunction:fn
                                         options:MTLPipelineOptionArgumentInfo | MTLPipelineOptionBufferTypeInfo
                                      reflection:&refl
                                           error:&e];
    json_t *params = json_array();
    if (!ps || !refl) {
        [log appendFormat:@"%@: no reflection (%@); its parameters are unknown\n", name,
                          e ? e.localizedDescription : @"?"];
        return params;
    }
    for (MTLArgument *a in refl.arguments) {
        int w = 0, dt = -1;
        switch (a.type) {
        case MTLArgumentTypeBuffer:
            dt = dtype_of(a.bufferDataType, &w);
            json_array_append_new(params, jparam(a.name.UTF8String, TR_MTL_BUFFER, (int)a.index,
                                                 a.access == MTLArgumentAccessReadOnly, (unsigned)a.bufferDataSize, dt,
                                                 w, 0, 0));
            break;
        case MTLArgumentTypeTexture:
            dt = dtype_of(a.textureDataType, &w);
            json_array_append_new(
                params, jparam(a.name.UTF8String, TR_MTL_TEXTURE, (int)a.index, a.access == MTLArgumentAccessReadOnly,
                               0, dt, w,
                               a.textureType == MTLTextureType1D ? 1 : a.textureType == MTLTextureType2DArray ? 3 : 2,
                               a.access == MTLArgumentAccessReadOnly ? 1 : a.access == MTLArgumentAccessWriteOnly ? 2
                                                                                                                  : 3));
            break;
        case MTLArgumentTypeSampler:
            json_array_append_new(params, jparam(a.name.UTF8String, TR_MTL_SAMPLER, (int)a.index, 1, 0, -1, 0, 0, 0));
            break;
        case MTLArgumentTypeThreadgroupMemory:
            json_array_append_new(params,
                                  jparam(a.name.UTF8String, TR_MTL_THREADGROUP, (int)a.index, 0, 0, -1, 0, 0, 0));
            break;
        default:
            break;
        }
    }
    return params;
}
#pragma clang diagnostic pop

/* Helper child: compile every file, reflect every kernel; the result as JSON text on fd.  Never returns. */
static void build_child(char **paths, size_t n, int fast, int fd)
{
    json_t *doc = json_object(), *files = json_array();
    @autoreleasepool {
        id<MTLDevice> dev = MTLCreateSystemDefaultDevice();
        json_object_set_new(doc, "device", json_string(dev ? dev.name.UTF8String : ""));
        for (size_t i = 0; i < n; i++) {
            json_t *f = json_object(), *kernels = json_array();
            NSMutableString *log = [NSMutableString string];
            [log appendFormat:@"math mode %s; MTL_DEBUG_LAYER=%d MTL_SHADER_VALIDATION=%d\n",
                              fast ? "relaxed" : "safe", env_on("MTL_DEBUG_LAYER"), env_on("MTL_SHADER_VALIDATION")];
            double t0 = now_s();
            char *src = NULL, why[600];
            int ok = 0;
            if (!dev)
                [log appendString:@"no Metal device (MTLCreateSystemDefaultDevice)\n"];
            else if (trmh_expand_includes(paths[i], &src, why, sizeof why) != 0)
                [log appendFormat:@"%s\n", why];
            else {
                NSError *e = nil;
                id<MTLLibrary> lib = compile(dev, src, fast, &e);
                if (e)
                    [log appendFormat:@"%@\n", e.localizedDescription];
                if (lib) {
                    ok = 1;
                    for (NSString *name in [lib.functionNames sortedArrayUsingSelector:@selector(compare:)]) {
                        id<MTLFunction> fn = [lib newFunctionWithName:name
                                                       constantValues:[MTLFunctionConstantValues new]
                                                                error:nil];
                        if (!fn)
                            fn = [lib newFunctionWithName:name];
                        if (!fn || fn.functionType != MTLFunctionTypeKernel)
                            continue;
                        json_t *k = json_object();
                        json_object_set_new(k, "name", json_string(name.UTF8String));
                        json_object_set_new(k, "params", reflect(dev, fn, name, log));
                        json_array_append_new(kernels, k);
                    }
                }
            }
            free(src);
            json_object_set_new(f, "ok", json_boolean(ok));
            json_object_set_new(f, "seconds", json_real(now_s() - t0));
            json_object_set_new(f, "log", json_string(log.UTF8String));
            json_object_set_new(f, "kernels", kernels);
            json_array_append_new(files, f);
        }
    }
    json_object_set_new(doc, "files", files);
    char *text = json_dumps(doc, JSON_COMPACT);
    size_t len = text ? strlen(text) : 0, off = 0;
    while (off < len) {
        ssize_t k = write(fd, text + off, len - off);
        if (k <= 0)
            break;
        off += (size_t)k;
    }
    _exit(text && off == len ? 0 : 3);
}

/* Runs build_child in a child process and reads its JSON. */
static json_t *build_in_child(char **paths, size_t n, int fast, tr_error *err, const char *path)
{
    int fds[2];
    if (pipe(fds) != 0) {
        tr_fail(err, TR_E_IO, path, "pipe failed");
        return NULL;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        tr_fail(err, TR_E_NOMEM, path, "fork failed");
        return NULL;
    }
    if (pid == 0) {
        close(fds[0]);
        build_child(paths, n, fast, fds[1]);
    }
    close(fds[1]);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 65536 > cap) {
            char *q = tr_realloc(buf, cap = len + 65536 + cap);
            if (!q)
                break;
            buf = q;
        }
        ssize_t k = read(fds[0], buf + len, cap - len - 1);
        if (k <= 0)
            break;
        len += (size_t)k;
    }
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    json_t *doc = NULL;
    if (buf && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        buf[len] = '\0';
        doc = json_loads(buf, 0, NULL);
    }
    tr_dealloc(buf);
    if (!doc)
        tr_fail(err, TR_E_INTERNAL, path, "the Metal compile helper process failed (status 0x%x)", (unsigned)st);
    return doc;
}

/* Builtin parameters read from the source (index -1, kind TR_MTL_BUILTIN) after the reflected ones. */
static int fill_kernel(tr_mtl_lib *L, mh_kernel *mk, json_t *params, const char *src)
{
    size_t nb = sizeof BUILTINS / sizeof BUILTINS[0], np = json_array_size(params);
    tr_mtl_param *P = tr_calloc(np + nb, sizeof *P);
    if (!P)
        return -1;
    int n = 0;
    for (size_t i = 0; i < np; i++, n++) {
        json_t *j = json_array_get(params, i);
        tr_mtl_param *p = &P[n];
        p->name = keep(L, json_string_value(json_object_get(j, "name")));
        p->kind = (tr_mtl_param_kind)json_integer_value(json_object_get(j, "kind"));
        p->index = (int)json_integer_value(json_object_get(j, "index"));
        p->explicit_index = 1;
        p->is_const = (int)json_integer_value(json_object_get(j, "const"));
        p->elem_size = (unsigned)json_integer_value(json_object_get(j, "elem_size"));
        p->dtype = (int)json_integer_value(json_object_get(j, "dtype"));
        p->vec_width = (int)json_integer_value(json_object_get(j, "width"));
        p->tex_type = (int)json_integer_value(json_object_get(j, "tex_type"));
        p->tex_access = (int)json_integer_value(json_object_get(j, "tex_access"));
        p->space = p->kind == TR_MTL_THREADGROUP ? TR_MTL_SPACE_THREADGROUP : TR_MTL_SPACE_DEVICE;
        p->type = keep(L, p->kind == TR_MTL_BUFFER ? (p->is_const ? "const buffer" : "buffer")
                          : p->kind == TR_MTL_TEXTURE ? "texture" : p->kind == TR_MTL_SAMPLER ? "sampler"
                                                                                               : "threadgroup");
        p->elem_type = keep(L, p->dtype >= 0 ? tr_dtype_name((tr_dtype)p->dtype) : "");
    }
    for (size_t b = 0; b < nb; b++) {
        int w = src ? trmh_builtin_width(src, mk->pub.name, BUILTINS[b]) : 0;
        if (w <= 0)
            continue;
        tr_mtl_param *p = &P[n++];
        p->name = p->builtin = keep(L, BUILTINS[b]);
        p->kind = TR_MTL_BUILTIN;
        p->index = -1;
        p->vec_width = w;
        p->dtype = TR_DT_U32;
        p->type = keep(L, w > 1 ? "uint vector" : "uint");
        p->elem_type = keep(L, "");
    }
    mk->pub.params = P;
    mk->pub.nparams = n;
    return 0;
}

int tr_mtl_build(const char *path, const tr_mtl_build_opts *opts, tr_mtl_lib **out, tr_error *err)
{
    (void)opts;
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0)
        return tr_fail(err, TR_E_IO, path, "cannot read");
    pathlist pl = {0};
    if (S_ISDIR(st.st_mode))
        collect(path, &pl);
    else {
        pl.p = tr_calloc(1, sizeof *pl.p);
        if (pl.p && (pl.p[0] = tr_strdup(path)) != NULL)
            pl.n = 1;
    }
    if (pl.n)
        qsort(pl.p, pl.n, sizeof *pl.p, cmp_str);
    const char *m = getenv("TRELLIS_METAL_MATH");
    tr_mtl_lib *L = tr_calloc(1, sizeof *L);
    json_t *doc = NULL;
    int rc = TR_OK;
    if (!L || (pl.n && (!(L->files = tr_calloc(pl.n, sizeof *L->files)) ||
                        !(L->libs = tr_calloc(pl.n, sizeof *L->libs)) ||
                        !(L->srcs = tr_calloc(pl.n, sizeof *L->srcs)))))
        rc = tr_fail(err, TR_E_NOMEM, path, "out of memory");
    else {
        L->fast = !(m && strcmp(m, "safe") == 0);
        doc = build_in_child(pl.p, pl.n, L->fast, err, path);
        if (!doc)
            rc = err->code;
    }
    json_t *files = json_object_get(doc, "files");
    size_t root = S_ISDIR(st.st_mode) ? strlen(path) + 1 : 0, nk = 0;
    for (size_t i = 0; rc == TR_OK && i < pl.n; i++)
        nk += json_array_size(json_object_get(json_array_get(files, i), "kernels"));
    if (rc == TR_OK && !(L->kernels = tr_calloc(nk ? nk : 1, sizeof *L->kernels)))
        rc = tr_fail(err, TR_E_NOMEM, path, "out of memory");
    for (size_t i = 0; rc == TR_OK && i < pl.n; i++) {
        json_t *jf = json_array_get(files, i);
        tr_mtl_file *f = &L->files[i];
        const char *rel = pl.p[i] + (strlen(pl.p[i]) > root ? root : 0);
        if (!S_ISDIR(st.st_mode)) {
            const char *sl = strrchr(pl.p[i], '/');
            rel = sl ? sl + 1 : pl.p[i];
        }
        char stem[4096];
        snprintf(stem, sizeof stem, "%.*s", (int)(strlen(rel) > 6 ? strlen(rel) - 6 : 0), rel);
        f->path = keep(L, pl.p[i]);
        f->stem = keep(L, stem);
        f->cache_dir = keep(L, "");
        f->ok = json_is_true(json_object_get(jf, "ok"));
        f->seconds = json_real_value(json_object_get(jf, "seconds"));
        f->log = keep(L, json_string_value(json_object_get(jf, "log")));
        L->nfiles = i + 1;
        char *src = NULL, why[600];
        if (f->ok && trmh_expand_includes(pl.p[i], &src, why, sizeof why) == 0)
            L->srcs[i] = keep(L, src);
        free(src);
        json_t *ks = json_object_get(jf, "kernels");
        for (size_t k = 0; rc == TR_OK && k < json_array_size(ks); k++) {
            json_t *jk = json_array_get(ks, k);
            mh_kernel *mk = &L->kernels[L->nkernels];
            char q[4600];
            snprintf(q, sizeof q, "%s:%s", stem, json_string_value(json_object_get(jk, "name")));
            mk->pub.name = keep(L, json_string_value(json_object_get(jk, "name")));
            mk->pub.qualified = keep(L, q);
            mk->pub.file = f->path;
            mk->file = i;
            if (fill_kernel(L, mk, json_object_get(jk, "params"), L->srcs[i]) != 0)
                rc = tr_fail(err, TR_E_NOMEM, path, "out of memory");
            else
                L->nkernels++;
        }
    }
    json_decref(doc);
    for (size_t i = 0; i < pl.n; i++)
        tr_dealloc(pl.p[i]);
    tr_dealloc(pl.p);
    if (rc != TR_OK) {
        tr_mtl_close(L);
        return rc;
    }
    *out = L;
    return TR_OK;
}

/* The device, queue and the library of file fi in this process (created on first use; see struct tr_mtl_lib). */
static int ensure_metal(tr_mtl_lib *L, size_t fi, char *why, size_t cap)
{
    if (L->metal_pid != getpid()) {    /* inherited across fork: never touch the parent's objects */
        L->dev = L->queue = NULL;
        for (size_t i = 0; i < L->nfiles; i++)
            L->libs[i] = NULL;
        id<MTLDevice> dev = MTLCreateSystemDefaultDevice();
        if (!dev) {
            snprintf(why, cap, "no Metal device (MTLCreateSystemDefaultDevice)");
            return -1;
        }
        L->dev = (void *)CFBridgingRetain(dev);
        L->queue = (void *)CFBridgingRetain([dev newCommandQueue]);
        L->metal_pid = getpid();
    }
    if (!L->libs[fi]) {
        NSError *e = nil;
        id<MTLLibrary> lib = L->srcs[fi] ? compile((__bridge id<MTLDevice>)L->dev, L->srcs[fi], L->fast, &e) : nil;
        if (!lib) {
            snprintf(why, cap, "%s: %s", L->files[fi].path, e ? e.localizedDescription.UTF8String : "no source");
            return -1;
        }
        L->libs[fi] = (void *)CFBridgingRetain(lib);
    }
    return 0;
}

void tr_mtl_close(tr_mtl_lib *L)
{
    if (!L)
        return;
    if (L->metal_pid == getpid()) {
        for (size_t i = 0; i < L->nfiles; i++)
            if (L->libs[i])
                CFRelease(L->libs[i]);
        if (L->queue)
            CFRelease(L->queue);
        if (L->dev)
            CFRelease(L->dev);
    }
    for (size_t i = 0; i < L->nkernels; i++)
        tr_dealloc((void *)L->kernels[i].pub.params);
    for (size_t i = 0; i < L->nstrs; i++)
        tr_dealloc(L->strs[i]);
    tr_dealloc(L->strs);
    tr_dealloc(L->libs);
    tr_dealloc(L->srcs);
    tr_dealloc(L->files);
    tr_dealloc(L->kernels);
    tr_dealloc(L);
}

int tr_mtl_rewrite_file(const char *path, const tr_mtl_build_opts *opts, char **cpp, char **meta, char **errors,
                        tr_error *err)
{
    (void)opts;
    *cpp = *meta = *errors = NULL;
    return tr_fail(err, TR_E_UNSUPPORTED, path, "the Metal runner does not rewrite sources (build/trellis does)");
}

size_t tr_mtl_file_count(const tr_mtl_lib *L) { return L ? L->nfiles : 0; }
const tr_mtl_file *tr_mtl_file_at(const tr_mtl_lib *L, size_t i) { return L && i < L->nfiles ? &L->files[i] : NULL; }
size_t tr_mtl_kernel_count(const tr_mtl_lib *L) { return L ? L->nkernels : 0; }
const tr_mtl_kernel *tr_mtl_kernel_at(const tr_mtl_lib *L, size_t i)
{
    return L && i < L->nkernels ? &L->kernels[i].pub : NULL;
}

const tr_mtl_kernel *tr_mtl_find(const tr_mtl_lib *L, const char *name, int *ambiguous)
{
    const tr_mtl_kernel *hit = NULL;
    int n = 0;
    if (ambiguous)
        *ambiguous = 0;
    for (size_t i = 0; L && i < L->nkernels; i++) {
        const tr_mtl_kernel *k = &L->kernels[i].pub;
        if (strchr(name, ':') ? !strcmp(k->qualified, name) : !strcmp(k->name, name)) {
            hit = k;
            n++;
        }
    }
    if (n > 1) {
        if (ambiguous)
            *ambiguous = 1;
        return NULL;
    }
    return hit;
}

const tr_mtl_param *tr_mtl_param_at(const tr_mtl_kernel *k, tr_mtl_param_kind kind, int index)
{
    for (int i = 0; k && kind != TR_MTL_BUILTIN && i < k->nparams; i++)
        if (k->params[i].kind == kind && k->params[i].index == index)
            return &k->params[i];
    return NULL;
}

static const char *kind_word(tr_mtl_param_kind k)
{
    return k == TR_MTL_BUFFER ? "buffer" : k == TR_MTL_TEXTURE ? "texture" : k == TR_MTL_SAMPLER ? "sampler"
                                                                                                  : "threadgroup";
}

/* As the emulator's: every slot declared with a matching kind and dtype, nothing declared outside the family. */
int tr_mtl_check_binding(const tr_mtl_kernel *k, const tr_mtl_slot *slots, int n, char *why, size_t cap)
{
    for (int s = 0; s < n; s++) {
        const tr_mtl_param *P = tr_mtl_param_at(k, slots[s].kind, slots[s].index);
        if (!P) {
            snprintf(why, cap, "%s %d: not in the pipeline's reflected arguments", kind_word(slots[s].kind),
                     slots[s].index);
            return 1;
        }
        if (slots[s].dtype >= 0 && P->dtype >= 0 && P->dtype != slots[s].dtype) {
            snprintf(why, cap, "%s %d (%s): reflected element type %s, the family needs %s", kind_word(slots[s].kind),
                     slots[s].index, P->name, tr_dtype_name((tr_dtype)P->dtype), tr_dtype_name((tr_dtype)slots[s].dtype));
            return 1;
        }
        if (slots[s].writable == 1 && P->is_const) {
            snprintf(why, cap, "%s %d (%s): read-only in the kernel, but the family writes it", kind_word(slots[s].kind),
                     slots[s].index, P->name);
            return 1;
        }
    }
    for (int q = 0; q < k->nparams; q++) {
        const tr_mtl_param *P = &k->params[q];
        int found = P->kind == TR_MTL_THREADGROUP || P->kind == TR_MTL_BUILTIN;
        for (int s = 0; s < n && !found; s++)
            found = slots[s].kind == P->kind && slots[s].index == P->index;
        if (!found) {
            snprintf(why, cap, "%s %d (%s): reflected but not part of the family", kind_word(P->kind), P->index,
                     P->name);
            return 1;
        }
    }
    if (cap)
        why[0] = '\0';
    return 0;
}

/* ---- arguments ----------------------------------------------------------------------------------------------- */

tr_mtl_args *tr_mtl_args_new(void) { return tr_calloc(1, sizeof(tr_mtl_args)); }

void tr_mtl_args_clear(tr_mtl_args *a)
{
    if (!a)
        return;
    for (int i = 0; i < MH_BUF; i++)
        if (a->owned[i])
            tr_dealloc(a->buf[i]);
    memset(a, 0, sizeof *a);
}

void tr_mtl_args_free(tr_mtl_args *a)
{
    tr_mtl_args_clear(a);
    tr_dealloc(a);
}

static int bad_index(tr_error *err, const char *what, int index, int max)
{
    return tr_fail(err, TR_E_INVALID_PARAM, "metal", "%s index %d outside 0..%d", what, index, max - 1);
}

int tr_mtl_set_buffer(tr_mtl_args *a, int index, void *data, size_t bytes, tr_error *err)
{
    if (index < 0 || index >= MH_BUF)
        return bad_index(err, "buffer", index, MH_BUF);
    if (a->owned[index])
        tr_dealloc(a->buf[index]);
    a->buf[index] = data;
    a->bytes[index] = bytes;
    a->set[index] = 1;
    a->owned[index] = 0;
    return TR_OK;
}

int tr_mtl_set_bytes(tr_mtl_args *a, int index, const void *data, size_t bytes, tr_error *err)
{
    if (index < 0 || index >= MH_BUF)
        return bad_index(err, "buffer", index, MH_BUF);
    void *p = tr_malloc(bytes ? bytes : 1);
    if (!p)
        return tr_fail(err, TR_E_NOMEM, "metal", "out of memory");
    if (bytes)
        memcpy(p, data, bytes);
    if (a->owned[index])
        tr_dealloc(a->buf[index]);
    a->buf[index] = p;
    a->bytes[index] = bytes;
    a->set[index] = 1;
    a->owned[index] = 1;
    return TR_OK;
}

int tr_mtl_set_texture(tr_mtl_args *a, int index, const tr_mtl_texture *t, tr_error *err)
{
    if (index < 0 || index >= MH_TEX)
        return bad_index(err, "texture", index, MH_TEX);
    a->tex[index] = *t;
    a->tex_set[index] = 1;
    return TR_OK;
}

int tr_mtl_set_sampler(tr_mtl_args *a, int index, const tr_mtl_sampler *s, tr_error *err)
{
    if (index < 0 || index >= MH_SMP)
        return bad_index(err, "sampler", index, MH_SMP);
    a->smp[index] = *s;
    a->smp_set[index] = 1;
    return TR_OK;
}

int tr_mtl_set_threadgroup_memory(tr_mtl_args *a, int index, size_t bytes, tr_error *err)
{
    if (index < 0 || index >= MH_TG)
        return bad_index(err, "threadgroup", index, MH_TG);
    a->tg[index] = bytes;
    a->tg_set[index] = 1;
    return TR_OK;
}

int tr_mtl_set_function_constant(tr_mtl_args *a, int index, const void *value, size_t bytes, tr_error *err)
{
    if (index < 0 || index >= MH_FC)
        return bad_index(err, "function constant", index, MH_FC);
    if (bytes > 8)
        return tr_fail(err, TR_E_INVALID_PARAM, "metal", "function constant %d: %zu bytes (at most 8)", index, bytes);
    memcpy(a->fc[index], value, bytes);
    a->fc_bytes[index] = bytes;
    a->fc_set[index] = 1;
    return TR_OK;
}

/* ---- launching ------------------------------------------------------------------------------------------------- */

void tr_mtl_launch_init(tr_mtl_launch *l)
{
    memset(l, 0, sizeof *l);
    for (int d = 0; d < 3; d++)
        l->grid[d] = l->tg[d] = 1;
    l->schedule.policy = TR_MTL_SG_GREEDY;
    l->poison_site = -1;
}

static MTLPixelFormat pixel_format(tr_mtl_pixel_format f, size_t *bpp)
{
    switch (f) {
    case TR_MTL_R32F: *bpp = 4; return MTLPixelFormatR32Float;
    case TR_MTL_RG32F: *bpp = 8; return MTLPixelFormatRG32Float;
    case TR_MTL_RGBA32F: *bpp = 16; return MTLPixelFormatRGBA32Float;
    case TR_MTL_R16F: *bpp = 2; return MTLPixelFormatR16Float;
    case TR_MTL_RG16F: *bpp = 4; return MTLPixelFormatRG16Float;
    case TR_MTL_RGBA16F: *bpp = 8; return MTLPixelFormatRGBA16Float;
    case TR_MTL_R8UNORM: *bpp = 1; return MTLPixelFormatR8Unorm;
    case TR_MTL_RG8UNORM: *bpp = 2; return MTLPixelFormatRG8Unorm;
    case TR_MTL_RGBA8UNORM: *bpp = 4; return MTLPixelFormatRGBA8Unorm;
    case TR_MTL_R32U: *bpp = 4; return MTLPixelFormatR32Uint;
    case TR_MTL_RG32U: *bpp = 8; return MTLPixelFormatRG32Uint;
    case TR_MTL_RGBA32U: *bpp = 16; return MTLPixelFormatRGBA32Uint;
    case TR_MTL_R32I: *bpp = 4; return MTLPixelFormatR32Sint;
    case TR_MTL_RG32I: *bpp = 8; return MTLPixelFormatRG32Sint;
    case TR_MTL_RGBA32I: *bpp = 16; return MTLPixelFormatRGBA32Sint;
    case TR_MTL_R16U: *bpp = 2; return MTLPixelFormatR16Uint;
    case TR_MTL_R16I: *bpp = 2; return MTLPixelFormatR16Sint;
    case TR_MTL_R8U: *bpp = 1; return MTLPixelFormatR8Uint;
    case TR_MTL_R8I: *bpp = 1; return MTLPixelFormatR8Sint;
    default: *bpp = 0; return MTLPixelFormatInvalid;
    }
}

static id<MTLTexture> make_texture(id<MTLDevice> dev, const tr_mtl_texture *t)
{
    size_t bpp;
    MTLPixelFormat pf = pixel_format(t->format, &bpp);
    if (pf == MTLPixelFormatInvalid)
        return nil;
    MTLTextureDescriptor *d = [MTLTextureDescriptor new];
    d.textureType = t->type == 1 ? MTLTextureType1D : t->type == 3 ? MTLTextureType2DArray : MTLTextureType2D;
    d.pixelFormat = pf;
    d.width = t->width;
    d.height = t->type == 1 ? 1 : t->height;
    d.arrayLength = t->type == 3 ? t->array_length : 1;
    d.usage = MTLTextureUsageShaderRead | MTLTextureUsageShaderWrite;
    d.storageMode = MTLStorageModeShared;
    id<MTLTexture> tex = [dev newTextureWithDescriptor:d];
    size_t row = t->row_bytes ? t->row_bytes : t->width * bpp;
    size_t slice = t->slice_bytes ? t->slice_bytes : row * d.height;
    for (NSUInteger s = 0; tex && s < d.arrayLength; s++)
        [tex replaceRegion:MTLRegionMake2D(0, 0, d.width, d.height)
               mipmapLevel:0
                     slice:s
                 withBytes:(const char *)t->data + s * slice
               bytesPerRow:t->type == 1 ? 0 : row
             bytesPerImage:0];
    return tex;
}

static void read_texture(id<MTLTexture> tex, const tr_mtl_texture *t)
{
    size_t bpp;
    pixel_format(t->format, &bpp);
    size_t row = t->row_bytes ? t->row_bytes : t->width * bpp;
    size_t slice = t->slice_bytes ? t->slice_bytes : row * tex.height;
    for (NSUInteger s = 0; s < tex.arrayLength; s++)
        [tex getBytes:(char *)t->data + s * slice
            bytesPerRow:t->type == 1 ? 0 : row
          bytesPerImage:0
             fromRegion:MTLRegionMake2D(0, 0, tex.width, tex.height)
            mipmapLevel:0
                  slice:s];
}

static id<MTLSamplerState> make_sampler(id<MTLDevice> dev, const tr_mtl_sampler *s)
{
    static const MTLSamplerAddressMode modes[] = {MTLSamplerAddressModeClampToEdge, MTLSamplerAddressModeClampToZero,
                                                  MTLSamplerAddressModeClampToBorderColor,
                                                  MTLSamplerAddressModeRepeat, MTLSamplerAddressModeMirrorRepeat};
    MTLSamplerDescriptor *d = [MTLSamplerDescriptor new];
    d.minFilter = d.magFilter = s->linear ? MTLSamplerMinMagFilterLinear : MTLSamplerMinMagFilterNearest;
    MTLSamplerAddressMode m = modes[s->address >= 0 && s->address < 5 ? s->address : 0];
    d.sAddressMode = d.tAddressMode = d.rAddressMode = m;
    d.normalizedCoordinates = s->normalized ? YES : NO;
    return [dev newSamplerStateWithDescriptor:d];
}

static int result_status(tr_mtl_result *res, tr_mtl_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int result_status(tr_mtl_result *res, tr_mtl_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->detail, sizeof res->detail, fmt, ap);
    va_end(ap);
    res->status = st;
    return TR_OK;
}

int tr_mtl_dispatch(tr_mtl_lib *L, const tr_mtl_kernel *k, const tr_mtl_args *a, const tr_mtl_launch *l,
                    tr_mtl_result *res, tr_error *err)
{
    memset(res, 0, sizeof *res);
    if (!L || !k || !a || !l)
        return tr_fail(err, TR_E_INVALID_PARAM, "metal", "missing library, kernel, arguments or launch");
    const mh_kernel *mk = (const mh_kernel *)(const void *)k;
    char why[600];
    @autoreleasepool {
        if (ensure_metal(L, mk->file, why, sizeof why) != 0)
            return result_status(res, TR_MTL_INVALID, "%s", why);
        id<MTLDevice> dev = (__bridge id<MTLDevice>)L->dev;
        id<MTLLibrary> lib = (__bridge id<MTLLibrary>)L->libs[mk->file];
        /* function constants of this launch */
        MTLFunctionConstantValues *fcv = [MTLFunctionConstantValues new];
        NSError *e = nil;
        id<MTLFunction> base = [lib newFunctionWithName:@(k->name)];   /* unspecialized: lists its constants */
        for (NSString *cn in base.functionConstantsDictionary) {
            MTLFunctionConstant *c = base.functionConstantsDictionary[cn];
            if (c.index < MH_FC && a->fc_set[c.index])
                [fcv setConstantValue:a->fc[c.index] type:c.type atIndex:c.index];
        }
        id<MTLFunction> fn = [lib newFunctionWithName:@(k->name) constantValues:fcv error:&e];
        if (!fn)
            return result_status(res, TR_MTL_INVALID, "%s: %s", k->name,
                                 e ? e.localizedDescription.UTF8String : "function not found");
        id<MTLComputePipelineState> ps = [dev newComputePipelineStateWithFunction:fn error:&e];
        if (!ps)
            return result_status(res, TR_MTL_RESOURCE_ERROR, "pipeline creation refused: %s",
                                 e ? e.localizedDescription.UTF8String : "?");
        NSUInteger threads = (NSUInteger)l->tg[0] * l->tg[1] * l->tg[2];
        if (threads > ps.maxTotalThreadsPerThreadgroup)
            return result_status(res, TR_MTL_RESOURCE_ERROR, "threadgroup of %lu threads, the pipeline allows %lu",
                                 (unsigned long)threads, (unsigned long)ps.maxTotalThreadsPerThreadgroup);
        size_t tgmem = ps.staticThreadgroupMemoryLength;
        for (int i = 0; i < MH_TG; i++)
            tgmem += a->tg_set[i] ? (a->tg[i] + 15) / 16 * 16 : 0;
        res->stats.peak_tg_bytes = tgmem;
        if (tgmem > dev.maxThreadgroupMemoryLength || tgmem > TR_MTL_TG_MEMORY_LIMIT)
            return result_status(res, TR_MTL_RESOURCE_ERROR, "threadgroup memory: %zu bytes, over the %lu-byte limit",
                                 tgmem, (unsigned long)dev.maxThreadgroupMemoryLength);

        id<MTLCommandQueue> q = (__bridge id<MTLCommandQueue>)L->queue;
        MTLCommandBufferDescriptor *cbd = [MTLCommandBufferDescriptor new];
        if (env_on("MTL_DEBUG_LAYER") || env_on("MTL_SHADER_VALIDATION"))
            cbd.errorOptions = MTLCommandBufferErrorOptionEncoderExecutionStatus;
        id<MTLCommandBuffer> cb = [q commandBufferWithDescriptor:cbd];
        id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
        [enc setComputePipelineState:ps];
        id<MTLBuffer> bufs[MH_BUF] = {nil};
        id<MTLTexture> texs[MH_TEX] = {nil};
        for (int i = 0; i < MH_BUF; i++) {
            if (!a->set[i])
                continue;
            if (a->owned[i] && a->bytes[i] <= 4096) {
                [enc setBytes:a->buf[i] length:a->bytes[i] ? a->bytes[i] : 1 atIndex:i];
                continue;
            }
            bufs[i] = [dev newBufferWithLength:a->bytes[i] + 2 * MH_GUARD options:MTLResourceStorageModeShared];
            if (!bufs[i])
                return result_status(res, TR_MTL_RESOURCE_ERROR, "cannot allocate buffer %d (%zu bytes)", i,
                                     a->bytes[i]);
            unsigned char *p = bufs[i].contents;
            for (size_t g = 0; g < MH_GUARD; g++) {
                unsigned char v = (unsigned char)(MH_GUARD_PATTERN >> (8 * (g % 4)));
                p[g] = v;
                p[MH_GUARD + a->bytes[i] + g] = v;
            }
            if (a->bytes[i])
                memcpy(p + MH_GUARD, a->buf[i], a->bytes[i]);
            [enc setBuffer:bufs[i] offset:MH_GUARD atIndex:i];
        }
        for (int i = 0; i < MH_TEX; i++)
            if (a->tex_set[i]) {
                texs[i] = make_texture(dev, &a->tex[i]);
                if (!texs[i])
                    return result_status(res, TR_MTL_INVALID, "texture %d: unsupported description", i);
                [enc setTexture:texs[i] atIndex:i];
            }
        for (int i = 0; i < MH_SMP; i++)
            if (a->smp_set[i])
                [enc setSamplerState:make_sampler(dev, &a->smp[i]) atIndex:i];
        for (int i = 0; i < MH_TG; i++)
            if (a->tg_set[i])
                [enc setThreadgroupMemoryLength:(a->tg[i] + 15) / 16 * 16 atIndex:i];
        MTLSize grid = MTLSizeMake(l->grid[0], l->grid[1], l->grid[2]);
        MTLSize tg = MTLSizeMake(l->tg[0], l->tg[1], l->tg[2]);
        if (l->dispatch_threads)
            [enc dispatchThreads:grid threadsPerThreadgroup:tg];
        else
            [enc dispatchThreadgroups:grid threadsPerThreadgroup:tg];
        [enc endEncoding];
        dispatch_semaphore_t done = dispatch_semaphore_create(0);
        [cb addCompletedHandler:^(id<MTLCommandBuffer> b) {
          (void)b;
          dispatch_semaphore_signal(done);
        }];
        double t0 = now_s();
        [cb commit];
        double limit = l->timeout_s == 0 ? 10.0 : l->timeout_s;
        long waited = limit < 0 ? dispatch_semaphore_wait(done, DISPATCH_TIME_FOREVER)
                                : dispatch_semaphore_wait(done, dispatch_time(DISPATCH_TIME_NOW,
                                                                              (int64_t)(limit * 1e9)));
        res->stats.seconds = now_s() - t0;
        if (waited != 0)
            return result_status(res, TR_MTL_TIMEOUT,
                                 "watchdog: the command buffer ran past %.3g s (it cannot be cancelled)", limit);
        if (cb.GPUEndTime > cb.GPUStartTime)
            res->stats.seconds = cb.GPUEndTime - cb.GPUStartTime;
        res->stats.threadgroups = l->dispatch_threads ? 0 : (uint64_t)l->grid[0] * l->grid[1] * l->grid[2];
        res->stats.lanes = l->dispatch_threads ? (uint64_t)l->grid[0] * l->grid[1] * l->grid[2]
                                               : res->stats.threadgroups * threads;
        if (cb.status == MTLCommandBufferStatusError)
            return result_status(res, TR_MTL_INVALID, "command buffer error: %s",
                                 cb.error ? cb.error.localizedDescription.UTF8String : "?");
        int oob = -1;
        for (int i = 0; i < MH_BUF; i++) {
            if (!bufs[i])
                continue;
            const unsigned char *p = bufs[i].contents;
            for (size_t g = 0; g < MH_GUARD && oob < 0; g++) {
                unsigned char v = (unsigned char)(MH_GUARD_PATTERN >> (8 * (g % 4)));
                if (p[g] != v || p[MH_GUARD + a->bytes[i] + g] != v)
                    oob = i;
            }
            if (!a->owned[i] && a->bytes[i])
                memcpy(a->buf[i], p + MH_GUARD, a->bytes[i]);
        }
        for (int i = 0; i < MH_TEX; i++)
            if (texs[i] && a->tex[i].data)
                read_texture(texs[i], &a->tex[i]);
        if (oob >= 0)
            return result_status(res, TR_MTL_INVALID, "out-of-bounds write: guard bytes around buffer %d changed on "
                                 "the device", oob);
    }
    res->status = TR_MTL_OK;
    return TR_OK;
}

void tr_mtl_result_free(tr_mtl_result *res)
{
    tr_dealloc(res->diags);
    res->diags = NULL;
    res->ndiags = 0;
}

const char *tr_mtl_status_name(tr_mtl_status s)
{
    return s == TR_MTL_OK ? "OK" : s == TR_MTL_RESOURCE_ERROR ? "RESOURCE_ERROR" : s == TR_MTL_TIMEOUT ? "TIMEOUT"
                                                                                                       : "INVALID";
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

int tr_mtl_schedule_parse(const char *text, tr_mtl_schedule *out)
{
    memset(out, 0, sizeof *out);
    if (!strcasecmp(text, "forward"))
        out->policy = TR_MTL_FORWARD;
    else if (!strcasecmp(text, "reverse"))
        out->policy = TR_MTL_REVERSE;
    else if (!strcasecmp(text, "sg_greedy") || !strcasecmp(text, "sg-greedy"))
        out->policy = TR_MTL_SG_GREEDY;
    else if (!strcasecmp(text, "random"))
        out->policy = TR_MTL_RANDOM;
    else if (!strncasecmp(text, "random:", 7)) {
        out->policy = TR_MTL_RANDOM;
        out->seed = strtoull(text + 7, NULL, 0);
    } else
        return -1;
    return 0;
}

const char *tr_mtl_schedule_name(const tr_mtl_schedule *s, char *buf, size_t cap)
{
    /* the GPU schedules by itself: the name only tells the runs apart */
    snprintf(buf, cap, "GPU run %s", s->policy == TR_MTL_RANDOM ? "2" : "1");
    return buf;
}
