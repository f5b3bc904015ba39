/*
 * library.c — building and loading emulated Metal libraries (METAL.md §2), kernel metadata, binding-family checks and
 * the argument table.
 *
 * Per .metal file: preprocess with the C++ compiler's preprocessor against the empty headers of
 * metal/emu/shim/fake/ (line markers kept), hash (SHA-256 of the emulator version, the shim's files, the compiler
 * identity and flags, and the preprocessed text, which includes the path and every included header), and look in
 * <cache>/<hash>/: `status` "ok" with module.so → reuse; "failed" → reuse the failure and its build.log.  Otherwise
 * rewrite (module.cpp, module.json) and compile into module.so in a temporary folder renamed into place (concurrent
 * builders never see half a module).  Compiles run in parallel (jobs).  Modules are dlopen'ed RTLD_LOCAL, one shared
 * object per file, so two files may define the same helper names as Metal libraries built per file may.
 */
#include "emu_internal.h"
#include "../rewrite/rewrite.h"
#include "sha256.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#ifndef TRMTL_SHIM_DIR
#define TRMTL_SHIM_DIR "metal/emu/shim"
#endif
#define TRMTL_EMU_VERSION "trellis-metal-emu/3"

/* ---- strings owned by a library -------------------------------------------------------------------------------- */

static const char *keep(tr_mtl_lib *lib, char *s)
{
    if (!s)
        return NULL;
    if (lib->nstrings == lib->capstrings) {
        size_t nc = lib->capstrings ? lib->capstrings * 2 : 64;
        char **q = tr_realloc(lib->strings, nc * sizeof *q);
        if (!q) {
            tr_dealloc(s);
            return NULL;
        }
        lib->strings = q;
        lib->capstrings = nc;
    }
    lib->strings[lib->nstrings++] = s;
    return s;
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(NULL, 0, f, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *s = tr_malloc((size_t)n + 1);
    if (!s)
        return NULL;
    va_start(ap, f);
    vsnprintf(s, (size_t)n + 1, f, ap);
    va_end(ap);
    return s;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- processes -------------------------------------------------------------------------------------------------- */

typedef struct job {
    char *argv[48];
    int argc;
    char *out_path, *err_path;
    pid_t pid;
    int status;                /* exit status, -1 when it could not start */
    int running, done;
    double t_start, t_end;
} job;

static void job_arg(job *j, const char *a)
{
    if (j->argc < 47 && a)
        j->argv[j->argc++] = tr_strdup(a);
    j->argv[j->argc] = NULL;
}

static void job_free(job *j)
{
    for (int i = 0; i < j->argc; i++)
        tr_dealloc(j->argv[i]);
    tr_dealloc(j->out_path);
    tr_dealloc(j->err_path);
    memset(j, 0, sizeof *j);
}

static int job_start(job *j)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, j->out_path ? j->out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_addopen(&fa, 2, j->err_path ? j->err_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    j->t_start = now_s();
    int rc = posix_spawnp(&j->pid, j->argv[0], &fa, NULL, j->argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        j->status = -1;
        j->done = 1;
        return -1;
    }
    j->running = 1;
    return 0;
}

/* Run every job with at most par running at once. */
static void run_jobs(job **jobs, int n, int par)
{
    int next = 0, running = 0;
    while (next < n || running > 0) {
        while (next < n && running < par) {
            if (job_start(jobs[next]) == 0)
                running++;
            next++;
        }
        if (!running)
            continue;
        int st;
        pid_t p = waitpid(-1, &st, 0);
        if (p < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < n; i++)
            if (jobs[i]->running && jobs[i]->pid == p) {
                jobs[i]->running = 0;
                jobs[i]->done = 1;
                jobs[i]->t_end = now_s();
                jobs[i]->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
                running--;
            }
    }
}

static int run_one(job *j)
{
    job *jp = j;
    run_jobs(&jp, 1, 1);
    return j->status;
}

static char *read_text(const char *path)
{
    char *data = NULL;
    size_t n = 0;
    tr_error e;
    if (tr_file_read_all(path, &data, &n, &e) != TR_OK)
        return tr_strdup("");
    char *s = tr_realloc(data, n + 1);
    if (!s) {
        tr_dealloc(data);
        return NULL;
    }
    s[n] = '\0';
    return s;
}

/* ---- the compiler ------------------------------------------------------------------------------------------------ */

typedef struct compiler {
    char cxx[512];
    char id[512];              /* first line of `cxx --version` */
    char shim[4096];
    char *flags[24];
    int nflags;
    char flags_text[1024];
    char shim_hash[65];
    int ok;
    char why[1024];
} compiler;

static pthread_mutex_t cc_mu = PTHREAD_MUTEX_INITIALIZER;
static compiler *cc_cache[8];
static int ncc;

static void hash_dir(trmtl_sha256 *h, const char *dir, const char *rel)
{
    char *path = rel[0] ? tr_path_join(dir, rel) : tr_strdup(dir);
    if (!path)
        return;
    DIR *d = opendir(path);
    if (!d) {
        tr_dealloc(path);
        return;
    }
    char *names[256];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256)
        if (e->d_name[0] != '.')
            names[n++] = tr_strdup(e->d_name);
    closedir(d);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (names[i] && names[j] && strcmp(names[i], names[j]) > 0) {
                char *t = names[i];
                names[i] = names[j];
                names[j] = t;
            }
    for (int i = 0; i < n; i++) {
        if (!names[i])
            continue;
        char *sub = rel[0] ? fmt("%s/%s", rel, names[i]) : tr_strdup(names[i]);
        char *full = sub ? tr_path_join(dir, sub) : NULL;
        if (full && tr_path_is_dir(full)) {
            if (strcmp(names[i], "fake") != 0)
                hash_dir(h, dir, sub);
        } else if (full) {
            char *txt = read_text(full);
            trmtl_sha256_update(h, sub, strlen(sub) + 1);
            if (txt)
                trmtl_sha256_update(h, txt, strlen(txt) + 1);
            tr_dealloc(txt);
        }
        tr_dealloc(full);
        tr_dealloc(sub);
        tr_dealloc(names[i]);
    }
    tr_dealloc(path);
}

#if defined(__x86_64__)
#include <cpuid.h>
/* F16C and FMA usable here: CPUID bits plus the OS saving the AVX state (OSXSAVE and XCR0 bits 1, 2). */
static void cpu_features(int *f16c, int *fma)
{
    unsigned a, b, c, d;
    *f16c = *fma = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)))
        return;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6u) != 6u)
        return;
    *f16c = (c >> 29) & 1u;
    *fma = (c >> 12) & 1u;
}
#endif

static const char *tmp_dir(void)
{
    const char *t = getenv("TMPDIR");
    return t && *t ? t : "/tmp";
}

/* Find (or probe) the compiler: identity, flags, and a check that _Float16 arithmetic with per-operation rounding
 * compiles. */
static compiler *get_compiler(const char *cxx, tr_error *err)
{
    const char *shim = getenv("TRELLIS_METAL_EMU_SHIM");
    if (!shim || !*shim)
        shim = TRMTL_SHIM_DIR;
    pthread_mutex_lock(&cc_mu);
    for (int i = 0; i < ncc; i++)
        if (strcmp(cc_cache[i]->cxx, cxx) == 0 && strcmp(cc_cache[i]->shim, shim) == 0) {
            compiler *c = cc_cache[i];
            pthread_mutex_unlock(&cc_mu);
            if (!c->ok) {
                tr_fail(err, TR_E_UNSUPPORTED, cxx, "%s", c->why);
                return NULL;
            }
            return c;
        }
    compiler *c = tr_calloc(1, sizeof *c);
    if (!c) {
        pthread_mutex_unlock(&cc_mu);
        tr_fail(err, TR_E_NOMEM, "metal-emu", "out of memory");
        return NULL;
    }
    snprintf(c->cxx, sizeof c->cxx, "%s", cxx);
    snprintf(c->shim, sizeof c->shim, "%s", shim);
    char base[600];
    snprintf(base, sizeof base, "%s/trellis-metal-emu-probe-%d", tmp_dir(), (int)getpid());
    char *out = fmt("%s.ver", base), *errp = fmt("%s.err", base), *src = fmt("%s.cpp", base);
    job j;
    memset(&j, 0, sizeof j);
    job_arg(&j, cxx);
    job_arg(&j, "--version");
    j.out_path = tr_strdup(out);
    j.err_path = tr_strdup(errp);
    int rc = run_one(&j);
    job_free(&j);
    char *ver = out ? read_text(out) : NULL;
    if (rc != 0 || !ver || !ver[0]) {
        snprintf(c->why, sizeof c->why,
                 "cannot run the C++ compiler '%.200s' (set TRELLIS_METAL_EMU_CXX); the Metal emulator needs "
                 "g++ >= 12 or clang >= 15", cxx);
    } else {
        char *nl = strchr(ver, '\n');
        if (nl)
            *nl = '\0';
        snprintf(c->id, sizeof c->id, "%s", ver);
        int clang = strstr(ver, "clang") != NULL;
        const char *fl[] = {"-std=c++20", "-O2", "-ffp-contract=off",
                            clang ? "-ffloat16-excess-precision=none" : "-fexcess-precision=16",
                            "-fno-strict-aliasing", "-fno-math-errno", "-fPIC", "-shared", "-fvisibility=hidden", "-w",
                            NULL};
        for (int i = 0; fl[i]; i++)
            c->flags[c->nflags++] = (char *)fl[i];
#if defined(__x86_64__)
        int f16c = 0, fma = 0;
        cpu_features(&f16c, &fma);
        if (f16c)
            c->flags[c->nflags++] = "-mf16c";
        if (fma)
            c->flags[c->nflags++] = "-mfma";
#endif
        for (int i = 0; i < c->nflags; i++) {
            strncat(c->flags_text, c->flags[i], sizeof c->flags_text - strlen(c->flags_text) - 2);
            strcat(c->flags_text, " ");
        }
        /* probe: _Float16 arithmetic must compile with these flags */
        static const char probe[] = "typedef _Float16 h; h f(h a, h b) { return a * b + a; }\n";
        tr_error e2;
        if (src && tr_file_write_all(src, probe, sizeof probe - 1, &e2) == TR_OK) {
            memset(&j, 0, sizeof j);
            job_arg(&j, cxx);
            for (int i = 0; i < c->nflags; i++)
                if (strcmp(c->flags[i], "-shared") != 0)
                    job_arg(&j, c->flags[i]);
            job_arg(&j, "-fsyntax-only");
            job_arg(&j, src);
            j.err_path = tr_strdup(errp);
            rc = run_one(&j);
            job_free(&j);
            if (rc != 0) {
                char *why = errp ? read_text(errp) : NULL;
                snprintf(c->why, sizeof c->why,
                         "the C++ compiler '%.100s' (%.120s) cannot compile _Float16 arithmetic with %.200s: the Metal "
                         "emulator needs g++ >= 12 or clang >= 15 on x86-64 or aarch64 (%.300s)",
                         cxx, c->id, c->flags_text, why ? why : "");
                tr_dealloc(why);
            } else
                c->ok = 1;
        } else
            snprintf(c->why, sizeof c->why, "cannot write the compiler probe under %s", tmp_dir());
    }
    if (out)
        unlink(out);
    if (errp)
        unlink(errp);
    if (src)
        unlink(src);
    tr_dealloc(ver);
    tr_dealloc(out);
    tr_dealloc(errp);
    tr_dealloc(src);
    if (c->ok) {
        trmtl_sha256 h;
        trmtl_sha256_init(&h);
        trmtl_sha256_update(&h, TRMTL_EMU_VERSION, sizeof TRMTL_EMU_VERSION);
        hash_dir(&h, shim, "");
        trmtl_sha256_hex(&h, c->shim_hash);
    }
    if (ncc < 8)
        cc_cache[ncc++] = c;
    pthread_mutex_unlock(&cc_mu);
    if (!c->ok) {
        tr_fail(err, TR_E_UNSUPPORTED, cxx, "%s", c->why);
        return NULL;
    }
    return c;
}

/* ---- finding the .metal files --------------------------------------------------------------------------------- */

typedef struct src_list {
    char **path, **stem;
    size_t n, cap;
} src_list;

static int add_src(src_list *l, char *path, char *stem)
{
    if (!path || !stem) {
        tr_dealloc(path);
        tr_dealloc(stem);
        return -1;
    }
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 32;
        char **a = tr_realloc(l->path, nc * sizeof *a);
        if (!a)
            return -1;
        l->path = a;
        char **b = tr_realloc(l->stem, nc * sizeof *b);
        if (!b)
            return -1;
        l->stem = b;
        l->cap = nc;
    }
    l->path[l->n] = path;
    l->stem[l->n] = stem;
    l->n++;
    return 0;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int scan_dir(src_list *l, const char *root, const char *rel)
{
    char *dir = rel[0] ? tr_path_join(root, rel) : tr_strdup(root);
    if (!dir)
        return -1;
    DIR *d = opendir(dir);
    if (!d) {
        tr_dealloc(dir);
        return -1;
    }
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char *sub = rel[0] ? fmt("%s/%s", rel, e->d_name) : tr_strdup(e->d_name);
        char *full = sub ? tr_path_join(root, sub) : NULL;
        struct stat st;
        if (!full || lstat(full, &st) != 0) {
            tr_dealloc(sub);
            tr_dealloc(full);
            continue;
        }
        if (S_ISDIR(st.st_mode))
            rc = scan_dir(l, root, sub);
        else if (S_ISREG(st.st_mode) && ends_with(sub, ".metal")) {
            char *stem = tr_strndup(sub, strlen(sub) - 6);
            rc = add_src(l, full, stem);
            full = NULL;
        }
        tr_dealloc(sub);
        tr_dealloc(full);
    }
    closedir(d);
    tr_dealloc(dir);
    return rc;
}

/* ---- metadata ------------------------------------------------------------------------------------------------- */

/* tr_dtype and vector width of an element type name ("half4", "packed_float3", "atomic_uint", "uint8_t"). */
static void elem_dtype(const char *e, int *dtype, int *width)
{
    *dtype = -1;
    *width = 0;
    if (!e)
        return;
    if (strncmp(e, "metal::", 7) == 0)
        e += 7;
    if (strncmp(e, "packed_", 7) == 0)
        e += 7;
    static const struct { const char *name; int dt; } base[] = {
        {"half", TR_DT_F16}, {"float", TR_DT_F32}, {"bfloat", TR_DT_BF16}, {"uint", TR_DT_U32}, {"int", TR_DT_I32},
        {"ushort", TR_DT_U16}, {"short", TR_DT_I16}, {"uchar", TR_DT_U8}, {"char", TR_DT_I8}, {"bool", TR_DT_BOOL},
        {"ulong", TR_DT_U64}, {"long", TR_DT_I64}, {"uint8_t", TR_DT_U8}, {"int8_t", TR_DT_I8},
        {"uint16_t", TR_DT_U16}, {"int16_t", TR_DT_I16}, {"uint32_t", TR_DT_U32}, {"int32_t", TR_DT_I32},
        {"uint64_t", TR_DT_U64}, {"int64_t", TR_DT_I64}, {"atomic_uint", TR_DT_U32}, {"atomic_int", TR_DT_I32},
        {"atomic_float", TR_DT_F32}, {"atomic_bool", TR_DT_BOOL}, {"unsigned int", TR_DT_U32},
        {"unsigned char", TR_DT_U8}, {"unsigned short", TR_DT_U16}, {NULL, 0}};
    for (int i = 0; base[i].name; i++) {
        size_t n = strlen(base[i].name);
        if (strncmp(e, base[i].name, n) != 0)
            continue;
        const char *rest = e + n;
        if (!*rest) {
            *dtype = base[i].dt;
            *width = 1;
            return;
        }
        if ((rest[0] == '2' || rest[0] == '3' || rest[0] == '4') && !rest[1] && strncmp(base[i].name, "atomic", 6)) {
            *dtype = base[i].dt;
            *width = rest[0] - '0';
            return;
        }
    }
    if (strncmp(e, "atomic<", 7) == 0) {
        char inner[64];
        snprintf(inner, sizeof inner, "%s", e + 7);
        char *gt = strchr(inner, '>');
        if (gt) {
            *gt = '\0';
            elem_dtype(inner, dtype, width);
        }
    }
}

/* Load module m (dlopen) and append its kernels; 0 on success. */
static int load_module(tr_mtl_lib *lib, int file, const char *so_path, char **why)
{
    void *dl = dlopen(so_path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        *why = fmt("dlopen %s: %s", so_path, dlerror());
        return -1;
    }
    const trmtl_module_desc *md = dlsym(dl, "trmtl_module");
    if (!md || md->abi != TRMTL_ABI_VERSION) {
        *why = fmt("%s: no trmtl_module of ABI version %u", so_path, TRMTL_ABI_VERSION);
        dlclose(dl);
        return -1;
    }
    rt_module *mods = tr_realloc(lib->mods, (size_t)(lib->nmods + 1) * sizeof *mods);
    if (!mods) {
        dlclose(dl);
        return -1;
    }
    lib->mods = mods;
    int mi = lib->nmods++;
    rt_module *m = &lib->mods[mi];
    m->dl = dl;
    m->desc = md;
    m->file = file;
    m->site_base = lib->nsites;
    md->init(trmtl_rt_api_table());
    for (int s = 0; s < md->nsites; s++)
        md->site_ids[s] = (uint32_t)s;
    if (md->nsites) {
        rt_site *ns = tr_realloc(lib->sites, (lib->nsites + (uint32_t)md->nsites) * sizeof *ns);
        if (!ns)
            return -1;
        lib->sites = ns;
        for (int s = 0; s < md->nsites; s++) {
            lib->sites[lib->nsites + (uint32_t)s].module = mi;
            lib->sites[lib->nsites + (uint32_t)s].decl = &md->tg_decls[s];
        }
        lib->nsites += (uint32_t)md->nsites;
    }
    if (md->nkernels <= 0)
        return 0;
    tr_mtl_kernel *ks = tr_realloc(lib->kernels, (lib->nkernels + (size_t)md->nkernels) * sizeof *ks);
    if (!ks)
        return -1;
    lib->kernels = ks;
    rt_kernel *rk = tr_realloc(lib->rk, (lib->nkernels + (size_t)md->nkernels) * sizeof *rk);
    if (!rk)
        return -1;
    lib->rk = rk;
    const char **fcn = NULL;
    int *fci = NULL;
    if (md->nfc > 0) {
        char *blob = tr_calloc((size_t)md->nfc, sizeof(char *) + sizeof(int));
        if (!blob || !keep(lib, blob))
            return -1;
        fcn = (const char **)blob;
        fci = (int *)(blob + (size_t)md->nfc * sizeof(char *));
        for (int f = 0; f < md->nfc; f++) {
            fcn[f] = md->fcs[f].name;
            fci[f] = md->fcs[f].index;
        }
    }
    for (int k = 0; k < md->nkernels; k++) {
        const trmtl_kernel_desc *kd = &md->kernels[k];
        tr_mtl_kernel *K = &lib->kernels[lib->nkernels];
        memset(K, 0, sizeof *K);
        K->name = kd->name;
        K->qualified = keep(lib, fmt("%s:%s", lib->files[file].stem, kd->name));
        K->file = lib->files[file].path;
        K->line = kd->line;
        K->nparams = kd->nparams;
        K->n_function_constants = md->nfc;
        K->fc_names = fcn;
        K->fc_indices = fci;
        if (kd->nparams > 0) {
            tr_mtl_param *ps = tr_calloc((size_t)kd->nparams, sizeof *ps);
            if (!ps || !keep(lib, (char *)ps))
                return -1;
            for (int p = 0; p < kd->nparams; p++) {
                const trmtl_param_desc *pd = &kd->params[p];
                tr_mtl_param *P = &ps[p];
                P->name = pd->name;
                P->kind = (tr_mtl_param_kind)pd->kind;
                P->index = pd->index;
                P->explicit_index = pd->explicit_index;
                P->space = (tr_mtl_space)pd->space;
                P->passing = (tr_mtl_passing)pd->passing;
                P->is_const = pd->is_const;
                P->type = pd->type;
                P->elem_type = pd->elem_type;
                P->elem_size = pd->elem_size;
                P->tex_type = pd->tex_dim;
                P->tex_access = pd->tex_access;
                elem_dtype(pd->elem_type, &P->dtype, &P->vec_width);
                if (P->kind == TR_MTL_TEXTURE || P->kind == TR_MTL_SAMPLER) {
                    P->dtype = -1;
                    P->vec_width = 0;
                    if (P->kind == TR_MTL_TEXTURE && pd->elem_type) {
                        const char *lt = strchr(pd->elem_type, '<');
                        if (lt) {
                            char inner[32];
                            size_t q = 0;
                            for (lt++; *lt && *lt != ',' && *lt != '>' && q < sizeof inner - 1; lt++)
                                if (*lt != ' ')
                                    inner[q++] = *lt;
                            inner[q] = '\0';
                            int wdt;
                            elem_dtype(inner, &P->dtype, &wdt);
                        }
                    }
                }
                if (P->kind == TR_MTL_BUILTIN) {
                    static const char *const bn[] = {
                        "thread_position_in_grid", "threadgroup_position_in_grid", "thread_position_in_threadgroup",
                        "threads_per_threadgroup", "threadgroups_per_grid", "threads_per_grid",
                        "dispatch_threads_per_threadgroup", "grid_origin", "grid_size", "thread_index_in_threadgroup",
                        "thread_index_in_simdgroup", "simdgroup_index_in_threadgroup", "threads_per_simdgroup",
                        "simdgroups_per_threadgroup", "thread_index_in_quadgroup", "quadgroup_index_in_threadgroup",
                        "quadgroups_per_threadgroup", "thread_execution_width"};
                    P->builtin = pd->index >= 0 && pd->index < TRMTL_B_COUNT ? bn[pd->index] : "?";
                }
            }
            K->params = ps;
        }
        int ntg = 0;
        for (int s = 0; s < md->nsites; s++)
            if (kd->function && md->tg_decls[s].function && strcmp(md->tg_decls[s].function, kd->function) == 0)
                ntg++;
        if (ntg) {
            tr_mtl_tg_decl *tg = tr_calloc((size_t)ntg, sizeof *tg);
            if (!tg || !keep(lib, (char *)tg))
                return -1;
            int q = 0;
            for (int s = 0; s < md->nsites; s++)
                if (kd->function && md->tg_decls[s].function && strcmp(md->tg_decls[s].function, kd->function) == 0) {
                    tg[q].name = md->tg_decls[s].name;
                    tg[q].type = md->tg_decls[s].type;
                    tg[q].function = md->tg_decls[s].function;
                    tg[q].line = md->tg_decls[s].line;
                    tg[q].site = (int)(m->site_base + (uint32_t)s);
                    q++;
                }
            K->n_tg_decls = ntg;
            K->tg_decls = tg;
        }
        lib->rk[lib->nkernels].module = mi;
        lib->rk[lib->nkernels].kd = kd;
        lib->nkernels++;
    }
    return 0;
}

/* ---- building ------------------------------------------------------------------------------------------------- */

typedef struct unit {
    char *path, *stem;
    char *pre_path;            /* preprocessed text (temporary) */
    char hash[65];
    char *dir, *tmp;           /* final and temporary module folders */
    int cached, failed, need_compile;
    char *log;
    double seconds, rw_seconds;
    job pp, cc;
} unit;

static int write_status(const char *dir, int ok, tr_error *err)
{
    char *p = tr_path_join(dir, "status");
    if (!p)
        return tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    const char *s = ok ? "ok\n" : "failed\n";
    int rc = tr_file_write_all(p, s, strlen(s), err);
    tr_dealloc(p);
    return rc;
}

static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            char *p = tr_path_join(dir, e->d_name);
            if (p)
                unlink(p);
            tr_dealloc(p);
        }
    closedir(d);
    rmdir(dir);
}

static char *dirname_of(const char *path)
{
    const char *s = strrchr(path, '/');
    if (!s)
        return tr_strdup(".");
    return tr_strndup(path, (size_t)(s - path) ? (size_t)(s - path) : 1);
}

/* The preprocessing job of one .metal file (METAL.md §2): the C++ compiler's preprocessor against the empty
 * headers of <shim>/fake, the file's folder on the include path, line markers kept. */
static void pp_job(job *j, const compiler *cc, const char *fake, const char *path, const char *out_path)
{
    char *inc = dirname_of(path);
    char *incf = inc ? fmt("-I%s", inc) : NULL;
    job_arg(j, cc->cxx);
    job_arg(j, "-E");
    job_arg(j, "-x");
    job_arg(j, "c++");
    job_arg(j, "-std=c++20");
    job_arg(j, "-undef");
    job_arg(j, "-nostdinc");
    job_arg(j, fake);
    job_arg(j, incf);
    job_arg(j, "-D__METAL_VERSION__=300");
    job_arg(j, "-D__METAL_MACOS__=1");
    job_arg(j, "-D__METAL__=1");
    job_arg(j, path);
    j->out_path = tr_strdup(out_path);
    j->err_path = fmt("%s.err", out_path);
    tr_dealloc(inc);
    tr_dealloc(incf);
}

int tr_mtl_rewrite_file(const char *path, const tr_mtl_build_opts *opts, char **cpp, char **meta, char **errors,
                        tr_error *err)
{
    *cpp = *meta = *errors = NULL;
    const char *cxx = opts && opts->cxx && *opts->cxx ? opts->cxx : getenv("TRELLIS_METAL_EMU_CXX");
    if (!cxx || !*cxx)
        cxx = "g++";
    if (!tr_path_is_file(path))
        return tr_fail(err, TR_E_IO, path, "not found");
    compiler *cc = get_compiler(cxx, err);
    if (!cc)
        return err ? err->code : TR_E_UNSUPPORTED;
    char *fake = fmt("-I%s/fake", cc->shim);
    char *pre = fmt("%s/trellis-metal-emu-rw-%d.ii", tmp_dir(), (int)getpid());
    if (!fake || !pre) {
        tr_dealloc(fake);
        tr_dealloc(pre);
        return tr_fail(err, TR_E_NOMEM, path, "out of memory");
    }
    job j;
    memset(&j, 0, sizeof j);
    pp_job(&j, cc, fake, path, pre);
    int st = run_one(&j);
    char *perr = j.err_path ? read_text(j.err_path) : NULL;
    if (j.err_path)
        unlink(j.err_path);
    job_free(&j);
    tr_dealloc(fake);
    int rc = TR_OK;
    char *text = NULL;
    size_t n = 0;
    if (st != 0)
        rc = tr_fail(err, TR_E_INPUT, path, "preprocessing failed: %.800s", perr ? perr : "");
    else if (tr_file_read_all(pre, &text, &n, err) != TR_OK)
        rc = err->code;
    unlink(pre);
    tr_dealloc(pre);
    tr_dealloc(perr);
    if (rc != TR_OK)
        return rc;
    trmtl_rw_out o;
    int rr = trmtl_rewrite(text, n, path, &o);
    tr_dealloc(text);
    if (rr == -2) {
        trmtl_rw_out_free(&o);
        return tr_fail(err, TR_E_NOMEM, path, "out of memory while rewriting");
    }
    unsigned long mark = tr_json_mark();
    *meta = o.meta ? tr_json_dumps(o.meta, JSON_INDENT(2) | JSON_PRESERVE_ORDER, mark) : NULL;
    *cpp = o.cpp;
    o.cpp = NULL;
    *errors = o.errors;
    o.errors = NULL;
    trmtl_rw_out_free(&o);
    if (!*cpp || !*meta) {
        tr_dealloc(*cpp);
        tr_dealloc(*meta);
        tr_dealloc(*errors);
        *cpp = *meta = *errors = NULL;
        return tr_fail(err, TR_E_NOMEM, path, "out of memory while rewriting");
    }
    return TR_OK;
}

int tr_mtl_build(const char *path, const tr_mtl_build_opts *opts, tr_mtl_lib **out, tr_error *err)
{
    *out = NULL;
    tr_mtl_build_opts o;
    memset(&o, 0, sizeof o);
    if (opts)
        o = *opts;
    const char *cache = o.cache_dir;
    if (!cache || !*cache)
        cache = getenv("TRELLIS_METAL_EMU_CACHE");
    if (!cache || !*cache)
        cache = "build/metal-emu";
    const char *cxx = o.cxx;
    if (!cxx || !*cxx)
        cxx = getenv("TRELLIS_METAL_EMU_CXX");
    if (!cxx || !*cxx)
        cxx = "g++";
    int jobs = o.jobs > 0 ? o.jobs : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (jobs < 1)
        jobs = 1;

    src_list src;
    memset(&src, 0, sizeof src);
    if (tr_path_is_dir(path)) {
        if (scan_dir(&src, path, "") != 0) {
            for (size_t i = 0; i < src.n; i++) {
                tr_dealloc(src.path[i]);
                tr_dealloc(src.stem[i]);
            }
            tr_dealloc(src.path);
            tr_dealloc(src.stem);
            return tr_fail(err, TR_E_IO, path, "cannot read the folder");
        }
        /* bytewise path order */
        for (size_t i = 1; i < src.n; i++)
            for (size_t j = i; j > 0 && strcmp(src.path[j - 1], src.path[j]) > 0; j--) {
                char *t = src.path[j];
                src.path[j] = src.path[j - 1];
                src.path[j - 1] = t;
                t = src.stem[j];
                src.stem[j] = src.stem[j - 1];
                src.stem[j - 1] = t;
            }
    } else if (tr_path_is_file(path)) {
        const char *b = strrchr(path, '/');
        b = b ? b + 1 : path;
        char *stem = ends_with(b, ".metal") ? tr_strndup(b, strlen(b) - 6) : tr_strdup(b);
        if (add_src(&src, tr_strdup(path), stem) != 0)
            return tr_fail(err, TR_E_NOMEM, path, "out of memory");
    } else
        return tr_fail(err, TR_E_IO, path, "not found");

    int rc = TR_OK;
    compiler *cc = get_compiler(cxx, err);
    tr_mtl_lib *lib = NULL;
    unit *u = NULL;
    if (!cc) {
        rc = err ? err->code : TR_E_UNSUPPORTED;
        goto done;
    }
    if (tr_mkdir_p(cache, err) != TR_OK) {
        rc = err->code;
        goto done;
    }
    lib = tr_calloc(1, sizeof *lib);
    u = tr_calloc(src.n ? src.n : 1, sizeof *u);
    if (!lib || !u) {
        rc = tr_fail(err, TR_E_NOMEM, path, "out of memory");
        goto done;
    }
    pthread_mutex_init(&lib->launch_mu, NULL);
    lib->files = tr_calloc(src.n ? src.n : 1, sizeof *lib->files);
    if (!lib->files) {
        rc = tr_fail(err, TR_E_NOMEM, path, "out of memory");
        goto done;
    }
    lib->nfiles = src.n;

    /* 1. preprocess every file (in parallel) */
    char *fake = fmt("-I%s/fake", cc->shim);
    job **jl = tr_calloc(src.n ? src.n : 1, sizeof *jl);
    if (!fake || !jl) {
        tr_dealloc(fake);
        tr_dealloc(jl);
        rc = tr_fail(err, TR_E_NOMEM, path, "out of memory");
        goto done;
    }
    static int seq;
    for (size_t i = 0; i < src.n; i++) {
        unit *x = &u[i];
        x->path = src.path[i];
        x->stem = src.stem[i];
        src.path[i] = src.stem[i] = NULL;
        x->pre_path = fmt("%s/.pre-%d-%d-%zu.ii", cache, (int)getpid(), __atomic_fetch_add(&seq, 1, __ATOMIC_SEQ_CST),
                          i);
        pp_job(&x->pp, cc, fake, x->path, x->pre_path);
        jl[i] = &x->pp;
    }
    tr_dealloc(fake);
    run_jobs(jl, (int)src.n, jobs);

    /* 2. hash, reuse or rewrite */
    int ncomp = 0;
    for (size_t i = 0; i < src.n; i++) {
        unit *x = &u[i];
        char *ppe = x->pp.err_path ? read_text(x->pp.err_path) : NULL;
        if (x->pp.err_path)
            unlink(x->pp.err_path);
        if (x->pp.status != 0) {
            x->failed = 1;
            x->log = fmt("preprocessing failed (%s -E, status %d):\n%s", cc->cxx, x->pp.status, ppe ? ppe : "");
            tr_dealloc(ppe);
            unlink(x->pre_path);
            continue;
        }
        tr_dealloc(ppe);
        char *pre = NULL;
        size_t pn = 0;
        tr_error e2;
        if (tr_file_read_all(x->pre_path, &pre, &pn, &e2) != TR_OK) {
            x->failed = 1;
            x->log = fmt("cannot read the preprocessed text: %s", e2.text);
            continue;
        }
        unlink(x->pre_path);
        trmtl_sha256 h;
        trmtl_sha256_init(&h);
        trmtl_sha256_update(&h, TRMTL_EMU_VERSION, sizeof TRMTL_EMU_VERSION);
        trmtl_sha256_update(&h, cc->shim_hash, 64);
        trmtl_sha256_update(&h, cc->id, strlen(cc->id) + 1);
        trmtl_sha256_update(&h, cc->flags_text, strlen(cc->flags_text) + 1);
        trmtl_sha256_update(&h, pre, pn);
        trmtl_sha256_hex(&h, x->hash);
        x->dir = tr_path_join(cache, x->hash);
        char *st = x->dir ? tr_path_join(x->dir, "status") : NULL;
        char *stt = st && tr_path_is_file(st) ? read_text(st) : NULL;
        tr_dealloc(st);
        if (stt && !o.force && (strcmp(stt, "ok\n") == 0 || strcmp(stt, "failed\n") == 0)) {
            x->cached = 1;
            x->failed = strcmp(stt, "failed\n") == 0;
            char *lp = tr_path_join(x->dir, "build.log");
            x->log = lp ? read_text(lp) : NULL;
            tr_dealloc(lp);
            tr_dealloc(stt);
            tr_dealloc(pre);
            continue;
        }
        tr_dealloc(stt);
        x->tmp = fmt("%s.tmp-%d-%zu", x->dir, (int)getpid(), i);
        if (!x->tmp || tr_mkdir_p(x->tmp, &e2) != TR_OK) {
            x->failed = 1;
            x->log = fmt("cannot create %s", x->tmp ? x->tmp : "a temporary folder");
            tr_dealloc(pre);
            continue;
        }
        trmtl_rw_out ro;
        double trw = now_s();
        int rr = trmtl_rewrite(pre, pn, x->path, &ro);
        x->rw_seconds = now_s() - trw;
        tr_dealloc(pre);
        if (rr == -2) {
            trmtl_rw_out_free(&ro);
            rc = tr_fail(err, TR_E_NOMEM, x->path, "out of memory while rewriting");
            tr_dealloc(jl);
            goto done;
        }
        char *cpp = tr_path_join(x->tmp, "module.cpp"), *js = tr_path_join(x->tmp, "module.json");
        if (cpp && ro.cpp)
            tr_file_write_all(cpp, ro.cpp, ro.cpp_len, &e2);
        if (js && ro.meta) {
            unsigned long mark = tr_json_mark();
            json_t *m = json_deep_copy(ro.meta);
            if (m) {
                tr_json_write_file(js, m, mark, &e2);
                json_decref(m);
            }
        }
        tr_dealloc(js);
        if (rr != 0) {
            x->failed = 1;
            x->log = fmt("rewriter:\n%s", ro.errors ? ro.errors : "");
            tr_dealloc(cpp);
            trmtl_rw_out_free(&ro);
            continue;
        }
        trmtl_rw_out_free(&ro);
        char *so = tr_path_join(x->tmp, "module.so");
        char *incs = fmt("-I%s", cc->shim);
        job_arg(&x->cc, cc->cxx);
        for (int f = 0; f < cc->nflags; f++)
            job_arg(&x->cc, cc->flags[f]);
        job_arg(&x->cc, incs);
        job_arg(&x->cc, cpp);
        job_arg(&x->cc, "-o");
        job_arg(&x->cc, so);
        x->cc.err_path = tr_path_join(x->tmp, "build.log");
        x->need_compile = 1;
        jl[ncomp++] = &x->cc;
        tr_dealloc(cpp);
        tr_dealloc(so);
        tr_dealloc(incs);
        if (o.verbose)
            fprintf(stderr, "metal-emu: compiling %s\n", x->path);
    }
    /* 3. compile */
    run_jobs(jl, ncomp, jobs);
    tr_dealloc(jl);
    for (size_t i = 0; i < src.n; i++) {
        unit *x = &u[i];
        if (!x->tmp)
            continue;
        tr_error e2;
        if (x->need_compile) {
            char *lp = tr_path_join(x->tmp, "build.log");
            x->log = lp ? read_text(lp) : NULL;
            tr_dealloc(lp);
            if (x->cc.status != 0)
                x->failed = 1;
        } else if (x->log) {
            char *lp = tr_path_join(x->tmp, "build.log");
            if (lp)
                tr_file_write_all(lp, x->log, strlen(x->log), &e2);
            tr_dealloc(lp);
        }
        write_status(x->tmp, !x->failed, &e2);
        x->seconds = (x->pp.t_end - x->pp.t_start) + x->rw_seconds +
                     (x->need_compile ? x->cc.t_end - x->cc.t_start : 0);
        if (rename(x->tmp, x->dir) != 0) {
            /* another process built the same module first: use its copy */
            remove_tree(x->tmp);
        }
    }
    /* 4. load */
    for (size_t i = 0; i < src.n; i++) {
        unit *x = &u[i];
        tr_mtl_file *F = &lib->files[i];
        F->path = keep(lib, x->path);
        F->stem = keep(lib, x->stem);
        x->path = x->stem = NULL;
        F->cache_dir = keep(lib, x->dir);
        x->dir = NULL;
        F->cached = x->cached;
        F->seconds = x->cached ? 0 : x->seconds;
        F->ok = !x->failed;
        if (F->ok) {
            char *so = tr_path_join(F->cache_dir, "module.so");
            char *why = NULL;
            if (!so || load_module(lib, (int)i, so, &why) != 0) {
                F->ok = 0;
                char *l2 = fmt("%s%s%s", x->log ? x->log : "", x->log && x->log[0] ? "\n" : "",
                               why ? why : "out of memory while loading");
                tr_dealloc(x->log);
                x->log = l2;
            }
            tr_dealloc(why);
            tr_dealloc(so);
        }
        F->log = keep(lib, x->log ? x->log : tr_strdup(""));
        x->log = NULL;
    }
done:
    if (u) {
        for (size_t i = 0; i < src.n; i++) {
            tr_dealloc(u[i].path);
            tr_dealloc(u[i].stem);
            tr_dealloc(u[i].pre_path);
            tr_dealloc(u[i].dir);
            tr_dealloc(u[i].tmp);
            tr_dealloc(u[i].log);
            job_free(&u[i].pp);
            job_free(&u[i].cc);
        }
        tr_dealloc(u);
    }
    for (size_t i = 0; i < src.n; i++) {
        tr_dealloc(src.path[i]);
        tr_dealloc(src.stem[i]);
    }
    tr_dealloc(src.path);
    tr_dealloc(src.stem);
    if (rc != TR_OK) {
        tr_mtl_close(lib);
        return rc;
    }
    *out = lib;
    return TR_OK;
}

void tr_mtl_close(tr_mtl_lib *lib)
{
    if (!lib)
        return;
    for (int i = 0; i < lib->nmods; i++)
        dlclose(lib->mods[i].dl);
    tr_dealloc(lib->mods);
    for (size_t i = 0; i < lib->nstrings; i++)
        tr_dealloc(lib->strings[i]);
    tr_dealloc(lib->strings);
    tr_dealloc(lib->files);
    tr_dealloc(lib->kernels);
    tr_dealloc(lib->rk);
    tr_dealloc(lib->sites);
    pthread_mutex_destroy(&lib->launch_mu);
    tr_dealloc(lib);
}

size_t tr_mtl_file_count(const tr_mtl_lib *lib) { return lib ? lib->nfiles : 0; }
const tr_mtl_file *tr_mtl_file_at(const tr_mtl_lib *lib, size_t i)
{
    return lib && i < lib->nfiles ? &lib->files[i] : NULL;
}
size_t tr_mtl_kernel_count(const tr_mtl_lib *lib) { return lib ? lib->nkernels : 0; }
const tr_mtl_kernel *tr_mtl_kernel_at(const tr_mtl_lib *lib, size_t i)
{
    return lib && i < lib->nkernels ? &lib->kernels[i] : NULL;
}

const tr_mtl_kernel *tr_mtl_find(const tr_mtl_lib *lib, const char *name, int *ambiguous)
{
    if (ambiguous)
        *ambiguous = 0;
    if (!lib || !name)
        return NULL;
    const tr_mtl_kernel *hit = NULL;
    int qualified = strchr(name, ':') != NULL;
    for (size_t i = 0; i < lib->nkernels; i++) {
        const tr_mtl_kernel *k = &lib->kernels[i];
        if (strcmp(qualified ? k->qualified : k->name, name) != 0)
            continue;
        if (hit) {
            if (ambiguous)
                *ambiguous = 1;
            return NULL;
        }
        hit = k;
    }
    return hit;
}

const tr_mtl_param *tr_mtl_param_at(const tr_mtl_kernel *k, tr_mtl_param_kind kind, int index)
{
    for (int p = 0; k && p < k->nparams; p++)
        if (k->params[p].kind == kind && k->params[p].index == index)
            return &k->params[p];
    return NULL;
}

static const char *kind_word(tr_mtl_param_kind k)
{
    switch (k) {
    case TR_MTL_BUFFER: return "buffer";
    case TR_MTL_TEXTURE: return "texture";
    case TR_MTL_SAMPLER: return "sampler";
    case TR_MTL_THREADGROUP: return "threadgroup";
    default: return "builtin";
    }
}

int tr_mtl_check_binding(const tr_mtl_kernel *k, const tr_mtl_slot *slots, int n, char *why, size_t cap)
{
    for (int s = 0; s < n; s++) {
        const tr_mtl_slot *sl = &slots[s];
        const tr_mtl_param *P = tr_mtl_param_at(k, sl->kind, sl->index);
        if (!P) {
            const tr_mtl_param *other = NULL;
            for (int q = 0; q < k->nparams && !other; q++)
                if (k->params[q].kind != TR_MTL_BUILTIN && k->params[q].index == sl->index &&
                    (sl->kind == TR_MTL_BUFFER) != (k->params[q].kind == TR_MTL_BUFFER))
                    other = &k->params[q];
            if (other)
                snprintf(why, cap, "%s %d: the kernel binds a %s there (%s), the family needs a %s", kind_word(sl->kind),
                         sl->index, kind_word(other->kind), other->name, kind_word(sl->kind));
            else
                snprintf(why, cap, "%s %d: not declared by the kernel", kind_word(sl->kind), sl->index);
            return 1;
        }
        if (sl->dtype >= 0 && P->dtype != sl->dtype) {
            snprintf(why, cap, "%s %d (%s): the kernel declares %s, the family needs %s", kind_word(sl->kind),
                     sl->index, P->name, P->elem_type ? P->elem_type : "?", tr_dtype_name((tr_dtype)sl->dtype));
            return 1;
        }
        if (sl->writable == 1 && P->is_const) {
            snprintf(why, cap, "%s %d (%s): const in the kernel, but the family writes it", kind_word(sl->kind),
                     sl->index, P->name);
            return 1;
        }
    }
    for (int q = 0; q < k->nparams; q++) {
        const tr_mtl_param *P = &k->params[q];
        if (P->kind == TR_MTL_BUILTIN || P->kind == TR_MTL_THREADGROUP)
            continue;
        int found = 0;
        for (int s = 0; s < n && !found; s++)
            found = slots[s].kind == P->kind && slots[s].index == P->index;
        if (!found) {
            snprintf(why, cap, "%s %d (%s): declared by the kernel but not part of the family", kind_word(P->kind),
                     P->index, P->name);
            return 1;
        }
    }
    if (cap)
        why[0] = '\0';
    return 0;
}

/* ---- arguments ---------------------------------------------------------------------------------------------- */

tr_mtl_args *tr_mtl_args_new(void) { return tr_calloc(1, sizeof(tr_mtl_args)); }

void tr_mtl_args_clear(tr_mtl_args *a)
{
    if (!a)
        return;
    for (int i = 0; i < TRMTL_MAX_BUFFERS; i++)
        tr_dealloc(a->owned[i]);
    memset(a, 0, sizeof *a);
}

void tr_mtl_args_free(tr_mtl_args *a)
{
    tr_mtl_args_clear(a);
    tr_dealloc(a);
}

static int bad_index(tr_error *err, const char *what, int index, int max)
{
    return tr_fail(err, TR_E_INVALID_PARAM, "metal-emu", "%s index %d outside 0..%d", what, index, max - 1);
}

int tr_mtl_set_buffer(tr_mtl_args *a, int index, void *data, size_t bytes, tr_error *err)
{
    if (index < 0 || index >= TRMTL_MAX_BUFFERS)
        return bad_index(err, "buffer", index, TRMTL_MAX_BUFFERS);
    tr_dealloc(a->owned[index]);
    a->owned[index] = NULL;
    a->b.buffers[index] = data;
    a->b.buffer_bytes[index] = bytes;
    a->buffer_set[index] = 1;
    return TR_OK;
}

int tr_mtl_set_bytes(tr_mtl_args *a, int index, const void *data, size_t bytes, tr_error *err)
{
    if (index < 0 || index >= TRMTL_MAX_BUFFERS)
        return bad_index(err, "buffer", index, TRMTL_MAX_BUFFERS);
    void *copy = tr_malloc(bytes ? (bytes + 15) / 16 * 16 : 16);
    if (!copy)
        return tr_fail(err, TR_E_NOMEM, "metal-emu", "out of memory");
    memset(copy, 0, bytes ? (bytes + 15) / 16 * 16 : 16);
    if (bytes)
        memcpy(copy, data, bytes);
    tr_mtl_set_buffer(a, index, copy, bytes, err);
    a->owned[index] = copy;
    return TR_OK;
}

int tr_mtl_set_texture(tr_mtl_args *a, int index, const tr_mtl_texture *t, tr_error *err)
{
    if (index < 0 || index >= TRMTL_MAX_TEXTURES)
        return bad_index(err, "texture", index, TRMTL_MAX_TEXTURES);
    if (!t || !t->data || t->type < 1 || t->type > 3 || t->format < TR_MTL_R32F || t->format > TR_MTL_R8I ||
        !t->width)
        return tr_fail(err, TR_E_INVALID_PARAM, "metal-emu", "texture %d: missing data, bad type, format or width",
                       index);
    trmtl_texture *x = &a->tex[index];
    memset(x, 0, sizeof *x);
    x->data = t->data;
    x->type = (uint32_t)t->type;
    x->format = (uint32_t)t->format;
    x->width = t->width;
    x->height = t->height ? t->height : 1;
    x->array_length = t->array_length ? t->array_length : 1;
    x->row_bytes = t->row_bytes;
    x->slice_bytes = t->slice_bytes;
    a->b.textures[index] = x;
    a->tex_set[index] = 1;
    return TR_OK;
}

int tr_mtl_set_sampler(tr_mtl_args *a, int index, const tr_mtl_sampler *s, tr_error *err)
{
    if (index < 0 || index >= TRMTL_MAX_SAMPLERS)
        return bad_index(err, "sampler", index, TRMTL_MAX_SAMPLERS);
    trmtl_sampler *x = &a->b.samplers[index];
    memset(x, 0, sizeof *x);
    x->mag_filter = x->min_filter = s && s->linear ? TRMTL_FILTER_LINEAR : TRMTL_FILTER_NEAREST;
    x->s_address = x->t_address = x->r_address = (uint8_t)(s ? s->address : 0);
    x->normalized = s ? (uint8_t)(s->normalized != 0) : 1;
    a->sampler_set[index] = 1;
    return TR_OK;
}

int tr_mtl_set_threadgroup_memory(tr_mtl_args *a, int index, size_t bytes, tr_error *err)
{
    if (index < 0 || index >= TRMTL_MAX_TG_DYN)
        return bad_index(err, "threadgroup memory", index, TRMTL_MAX_TG_DYN);
    a->b.tg_dyn_bytes[index] = bytes;
    a->tg_set[index] = 1;
    return TR_OK;
}

int tr_mtl_set_function_constant(tr_mtl_args *a, int index, const void *value, size_t bytes, tr_error *err)
{
    if (index < 0 || index >= TRMTL_MAX_FC)
        return bad_index(err, "function constant", index, TRMTL_MAX_FC);
    if (bytes > 8)
        return tr_fail(err, TR_E_INVALID_PARAM, "metal-emu", "function constant %d: %zu bytes (at most 8)", index,
                       bytes);
    memset(a->fc.bytes[index], 0, 8);
    memcpy(a->fc.bytes[index], value, bytes);
    a->fc.defined[index] = 1;
    return TR_OK;
}
