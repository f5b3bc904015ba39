/*
 * verify.c — standalone verification of our Metal kernels (metal/kernels/*.metal) on the CPU emulator.
 *
 * Builds metal/kernels with tr_mtl_build (cache build/metal-emu), runs every kernel on small random cases under two
 * schedule policies (SG_GREEDY and RANDOM(seed)), requires the two runs to be bitwise identical, and compares the
 * outputs with the reference ops (include/trellis/ops.h): bitwise for every kernel (all of ours declare
 * order=canonical; f16 router weights are compared with RNh of the reference weights).  Also checks tk_expf/tk_silu
 * against tr_expf/tr_silu on millions of inputs through a probe kernel, and times the 2048×1536 GEMV decode.
 *
 * Build and run (from the repository root, after `make -j2 all`): see metal/kernels/README.md, or
 *   metal/kernels/verify/run.sh [--quick] [--only SUBSTRING] [--workers N]
 */
#include "trellis/fp16.h"
#include "trellis/hadamard.h"
#include "trellis/metal_emu.h"
#include "trellis/numeric.h"
#include "trellis/ops.h"
#include "trellis/pack.h"
#include "trellis/qweight.h"
#include "trellis/rng.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- options and bookkeeping ----------------------------------------------------------------------------------- */

static tr_mtl_lib *LIB, *PROBE;
static int QUICK, WORKERS = 2, VERBOSE;
static const char *ONLY;
static int n_pass, n_fail;
static char cur_case[512];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory (%zu bytes)", n);
    return p;
}

static void *xcalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p)
        die("out of memory (%zu bytes)", n);
    return p;
}

static int selected(const char *name) { return !ONLY || strstr(name, ONLY) != NULL; }

static void case_name(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cur_case, sizeof cur_case, fmt, ap);
    va_end(ap);
}

/* Record one case result; returns ok. */
static int verdict(int ok, const char *fmt, ...)
{
    if (ok) {
        n_pass++;
        if (VERBOSE)
            printf("  pass  %s\n", cur_case);
        return 1;
    }
    n_fail++;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    printf("  FAIL  %s: %s\n", cur_case, msg);
    return 0;
}

/* ---- random data ------------------------------------------------------------------------------------------------ */

static tr_rng RNG;

static double u01(void) { return tr_rng_u01(&RNG); }
static uint32_t uint_in(uint32_t a, uint32_t b) { return (uint32_t)tr_rng_int(&RNG, a, b); }
static float normal(void) { return (float)tr_rng_normal(&RNG); }
static float f16_exact(float v) { return tr_f16_to_f32(tr_f32_to_f16(v)); }

/* A scale 2^e·(1+u01), e in [lo, hi] (KERNELS.md §6.4), optionally f16-exact. */
static float scale_value(int lo, int hi, int f16)
{
    float v = ldexpf((float)(1.0 + u01()), (int)tr_rng_int(&RNG, lo, hi));
    return f16 ? f16_exact(v) : v;
}

/* su/sv: +-1, or general sign·(0.5 + 1.5·u01). */
static float sign_value(int general)
{
    float s = u01() < 0.5 ? -1.0f : 1.0f;
    return general ? s * (float)(0.5 + 1.5 * u01()) : s;
}

/* ---- one quantized linear: canonical form (tr_qweight) and the GEMM-order packed body (PK) ------------------------ */

typedef struct qlin {
    uint32_t O, I, bits, gs, G, T_O, T_I;
    uint8_t *q;                /* [O][I] indices */
    uint8_t *packed;           /* header + body, disk order (tr_qweight) */
    uint8_t *pk;               /* body in GEMM order [T_I][T_O][32b] (PK) */
    float *S, *su, *sv;        /* [G][O], [I], [O] */
    tr_qweight w;
} qlin;

/* f16: scales f16-exact, su/sv = +-1 (H16 adapter); general: su/sv general values; garbage: random padding. */
static void qlin_make(qlin *L, uint32_t O, uint32_t I, unsigned bits, uint32_t gs, int f16, int general, int garbage)
{
    memset(L, 0, sizeof *L);
    L->O = O;
    L->I = I;
    L->bits = bits;
    L->gs = gs;
    L->G = (I + gs - 1) / gs;
    L->T_O = tr_tiles_of(O);
    L->T_I = tr_tiles_of(I);
    L->q = xmalloc((size_t)O * I);
    for (size_t i = 0; i < (size_t)O * I; i++)
        L->q[i] = (uint8_t)uint_in(0, (1u << bits) - 1);
    size_t body = tr_packed_body_bytes(O, I, bits);
    L->packed = xmalloc(body + 1);
    tr_pack_indices(L->q, O, I, bits, L->packed);
    if (garbage) {   /* random garbage at padded positions (readers must ignore them) */
        uint8_t tileq[256];
        for (uint32_t to = 0; to < L->T_O; to++)
            for (uint32_t ti = 0; ti < L->T_I; ti++) {
                uint8_t *tile = L->packed + 1 + ((size_t)to * L->T_I + ti) * 32 * bits;
                tr_unpack_tile(tile, bits, tileq);
                for (int e = 0; e < 256; e++)
                    if (to * 16 + e / 16 >= O || ti * 16 + e % 16 >= I)
                        tileq[e] = (uint8_t)uint_in(0, (1u << bits) - 1);
                tr_pack_tile(tileq, bits, tile);
            }
    }
    L->pk = xmalloc(body ? body : 1);
    size_t tb = 32u * bits;
    for (uint32_t to = 0; to < L->T_O; to++)
        for (uint32_t ti = 0; ti < L->T_I; ti++)
            memcpy(L->pk + ((size_t)ti * L->T_O + to) * tb, L->packed + 1 + ((size_t)to * L->T_I + ti) * tb, tb);
    L->S = xmalloc((size_t)L->G * O * 4);
    for (size_t i = 0; i < (size_t)L->G * O; i++)
        L->S[i] = scale_value(-10, -4, f16);
    L->su = xmalloc((size_t)I * 4);
    L->sv = xmalloc((size_t)O * 4);
    for (uint32_t i = 0; i < I; i++)
        L->su[i] = sign_value(general && !f16);
    for (uint32_t o = 0; o < O; o++)
        L->sv[o] = sign_value(general && !f16);
    L->w.O = O;
    L->w.I = I;
    L->w.bits = bits;
    L->w.gs = gs;
    L->w.G = L->G;
    L->w.rotation = TR_ROT_NONE;
    L->w.indices = L->packed;
    L->w.indices_len = body + 1;
    L->w.scales = L->S;
    L->w.su = L->su;
    L->w.sv = L->sv;
}

static void qlin_free(qlin *L)
{
    free(L->q);
    free(L->packed);
    free(L->pk);
    free(L->S);
    free(L->su);
    free(L->sv);
    memset(L, 0, sizeof *L);
}

/* grid_b in f32 (FORMAT.md §5). */
static void grid_f32(unsigned bits, float *g)
{
    const float c = tr_bits_f32(0x3F9F31EB);
    for (uint32_t j = 0; j < (1u << bits); j++)
        g[j] = (float)((double)j - (double)((1u << bits) - 1) / 2.0) * c;
}

/* ---- launching ---------------------------------------------------------------------------------------------------- */

enum { F_NONE = 0, F_ZERO, F_POISON16, F_POISON32, F_POISON8, F_COPY };

typedef struct vbuf {
    int index;
    void *data;                /* input: the data; output: receives the result of the first policy */
    size_t bytes;
    int fill;                  /* outputs: how the buffer is pre-filled before each launch (F_COPY: data's content) */
    int is_bytes;              /* setBytes (scalars, structs) */
    int is_texture;            /* a 1-D R32F texture of bytes/4 texels */
} vbuf;

#define MAXB 32

typedef struct launch_spec {
    uint32_t grid[3], tg[3];
} launch_spec;

static const tr_mtl_kernel *find_kernel(tr_mtl_lib *lib, const char *name)
{
    int amb = 0;
    const tr_mtl_kernel *k = tr_mtl_find(lib, name, &amb);
    if (!k)
        die("kernel %s not found in the library%s", name, amb ? " (ambiguous)" : "");
    return k;
}

static void fill_buf(void *p, size_t bytes, int fill, const void *src)
{
    switch (fill) {
    case F_ZERO: memset(p, 0, bytes); break;
    case F_POISON16:
        for (size_t i = 0; i + 1 < bytes + 1 && i < bytes; i += 2) {
            uint16_t v = 0x7E5A;
            memcpy((char *)p + i, &v, 2);
        }
        break;
    case F_POISON32:
        for (size_t i = 0; i < bytes; i += 4) {
            uint32_t v = 0x7FDEAD5A;
            memcpy((char *)p + i, &v, 4);
        }
        break;
    case F_POISON8: memset(p, 0xA5, bytes); break;
    case F_COPY: memcpy(p, src, bytes); break;
    default: break;
    }
}

static double last_seconds;
static uint64_t last_peak_tg;

/* Launch under SG_GREEDY and RANDOM(seed); outputs must agree bitwise.  Output vbufs get the first run's result.
 * Returns 1 when both launches ended OK and agree. */
static int run2(tr_mtl_lib *lib, const char *name, vbuf *b, int nb, launch_spec ls, uint64_t seed, int policies)
{
    const tr_mtl_kernel *k = find_kernel(lib, name);
    void *first[MAXB] = {0};
    int ok = 1;
    for (int pol = 0; pol < policies && ok; pol++) {
        tr_mtl_args *a = tr_mtl_args_new();
        void *mem[MAXB] = {0};
        tr_error err;
        for (int i = 0; i < nb; i++) {
            if (b[i].is_bytes) {
                if (tr_mtl_set_bytes(a, b[i].index, b[i].data, b[i].bytes, &err) != TR_OK)
                    die("%s: set_bytes %d: %s", name, b[i].index, err.text);
                continue;
            }
            if (b[i].is_texture) {
                tr_mtl_texture t;
                memset(&t, 0, sizeof t);
                t.data = b[i].data;
                t.type = 1;
                t.format = TR_MTL_R32F;
                t.width = (uint32_t)(b[i].bytes / 4);
                t.height = 1;
                t.array_length = 1;
                if (tr_mtl_set_texture(a, b[i].index, &t, &err) != TR_OK)
                    die("%s: set_texture %d: %s", name, b[i].index, err.text);
                continue;
            }
            void *p = b[i].data;
            if (b[i].fill) {
                mem[i] = xmalloc(b[i].bytes + 64);
                fill_buf(mem[i], b[i].bytes, b[i].fill, b[i].data);
                memset((char *)mem[i] + b[i].bytes, 0x5C, 64);   /* guard bytes */
                p = mem[i];
            }
            if (tr_mtl_set_buffer(a, b[i].index, p, b[i].bytes, &err) != TR_OK)
                die("%s: set_buffer %d: %s", name, b[i].index, err.text);
        }
        tr_mtl_launch l;
        tr_mtl_launch_init(&l);
        memcpy(l.grid, ls.grid, sizeof l.grid);
        memcpy(l.tg, ls.tg, sizeof l.tg);
        l.n_workers = WORKERS;
        l.timeout_s = 300;
        l.schedule.policy = pol == 0 ? TR_MTL_SG_GREEDY : TR_MTL_RANDOM;
        l.schedule.seed = seed;
        tr_mtl_result res;
        memset(&res, 0, sizeof res);
        int rc = tr_mtl_dispatch(lib, k, a, &l, &res, &err);
        if (rc != TR_OK || res.status != TR_MTL_OK) {
            ok = verdict(0, "%s launch %s: %s", name, pol ? "RANDOM" : "SG_GREEDY",
                         rc != TR_OK ? err.text : res.detail);
        }
        for (size_t d = 0; ok && d < res.ndiags; d++)
            ok = verdict(0, "%s: diagnostic %s at %s: %s", name, tr_mtl_diag_name(res.diags[d].code), res.diags[d].site,
                         res.diags[d].text);
        last_seconds = res.stats.seconds;
        last_peak_tg = res.stats.peak_tg_bytes;
        tr_mtl_result_free(&res);
        tr_mtl_args_free(a);
        for (int i = 0; i < nb; i++) {
            if (!mem[i])
                continue;
            for (int g = 0; ok && g < 64; g++)
                if (((uint8_t *)mem[i])[b[i].bytes + g] != 0x5C)
                    ok = verdict(0, "%s: store past the end of buffer %d", name, b[i].index);
            if (pol == 0)
                first[i] = mem[i];
            else {
                if (ok && memcmp(first[i], mem[i], b[i].bytes) != 0)
                    ok = verdict(0, "%s: buffer %d differs between SG_GREEDY and RANDOM(%llu)", name, b[i].index,
                                 (unsigned long long)seed);
                free(mem[i]);
            }
        }
    }
    for (int i = 0; i < nb; i++)
        if (first[i]) {
            if (ok)
                memcpy(b[i].data, first[i], b[i].bytes);
            free(first[i]);
        }
    return ok;
}

/* vbuf constructors */
static vbuf IN(int index, const void *data, size_t bytes) { return (vbuf){index, (void *)data, bytes, F_NONE, 0, 0}; }
static vbuf OUT(int index, void *data, size_t bytes, int fill) { return (vbuf){index, data, bytes, fill, 0, 0}; }
static vbuf U32(int index, uint32_t *v) { return (vbuf){index, v, 4, F_NONE, 1, 0}; }
static vbuf BYTES(int index, const void *v, size_t n) { return (vbuf){index, (void *)v, n, F_NONE, 1, 0}; }
static vbuf TEX(int index, const float *data, size_t texels)
{
    return (vbuf){index, (void *)data, texels * 4, F_NONE, 0, 1};
}

static launch_spec LS(uint32_t gx, uint32_t gy, uint32_t gz, uint32_t tx, uint32_t ty, uint32_t tz)
{
    launch_spec s = {{gx, gy, gz}, {tx, ty, tz}};
    return s;
}

static uint32_t cdiv(uint32_t a, uint32_t b) { return (a + b - 1) / b; }

/* ---- comparisons ---------------------------------------------------------------------------------------------------- */

static int cmp16(const char *what, const uint16_t *got, const uint16_t *exp, size_t n, uint32_t cols)
{
    for (size_t i = 0; i < n; i++) {
        int gn = tr_f16_is_nan(got[i]), en = tr_f16_is_nan(exp[i]);
        if ((gn && en) || got[i] == exp[i])
            continue;
        return verdict(0, "%s: element %zu (row %zu col %zu) got 0x%04X expected 0x%04X", what, i, i / cols, i % cols,
                       got[i], exp[i]);
    }
    return 1;
}

static int cmp32(const char *what, const float *got, const float *exp, size_t n, uint32_t cols)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t g = tr_f32_bits(got[i]), e = tr_f32_bits(exp[i]);
        if ((isnan(got[i]) && isnan(exp[i])) || g == e)
            continue;
        return verdict(0, "%s: element %zu (row %zu col %zu) got 0x%08X (%g) expected 0x%08X (%g)", what, i, i / cols,
                       i % cols, g, (double)got[i], e, (double)exp[i]);
    }
    return 1;
}

static int cmpu32(const char *what, const uint32_t *got, const uint32_t *exp, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (got[i] != exp[i])
            return verdict(0, "%s: element %zu got %u expected %u", what, i, got[i], exp[i]);
    return 1;
}

/* ---- tk_expf / tk_silu probe ------------------------------------------------------------------------------------- */

static void check_expf(void)
{
    if (!selected("expf"))
        return;
    size_t n = QUICK ? (1u << 20) : (1u << 23);
    float *x = xmalloc(n * 4), *y = xmalloc(n * 4), *z = xmalloc(n * 4);
    size_t i = 0;
    /* specials and boundaries */
    const float sp[] = {0.0f, -0.0f, 1.0f, -1.0f, 89.0f, 89.5f, 88.72283f, 88.7229f, -110.0f, -110.5f, -87.33654f,
                        -103.27893f, -103.97208f, -104.0f, NAN, INFINITY, -INFINITY, 1e-40f, -1e-40f, 1e-30f,
                        0.5f, -0.5f, 0.34657359f, 0.34657362f};
    for (size_t s = 0; s < sizeof sp / sizeof sp[0]; s++)
        x[i++] = sp[s];
    /* every f32 around the subnormal and overflow edges, then uniform bit patterns over [-110, 89] */
    for (float v = -104.5f; i < n / 8; v = nextafterf(v, 0.0f))
        x[i++] = v;
    for (float v = 88.0f; i < n / 4; v = nextafterf(v, 100.0f))
        x[i++] = v;
    while (i < n) {
        uint32_t bits = (uint32_t)tr_rng_next(&RNG);
        float v = tr_bits_f32(bits);
        if (isnan(v) || v > 90.0f || v < -111.0f)
            v = (float)(u01() * 199.0 - 110.0);
        x[i++] = v;
    }
    case_name("expf probe: tk_expf, tk_silu vs tr_expf, tr_silu on %zu inputs", n);
    uint32_t nn = (uint32_t)n;
    vbuf b[] = {IN(0, x, n * 4), OUT(1, y, n * 4, F_POISON32), OUT(2, z, n * 4, F_POISON32), U32(3, &nn)};
    if (run2(PROBE, "expf_probe", b, 4, LS(cdiv(nn, 256), 1, 1, 256, 1, 1), 7, 1)) {
        int ok = 1;
        for (size_t j = 0; j < n && ok; j++) {
            float e = tr_expf(x[j]), s = tr_silu(x[j]);
            if (!(tr_f32_bits(e) == tr_f32_bits(y[j]) || (isnan(e) && isnan(y[j]))))
                ok = verdict(0, "tk_expf(%a) = %a, tr_expf = %a", (double)x[j], (double)y[j], (double)e);
            else if (!(tr_f32_bits(s) == tr_f32_bits(z[j]) || (isnan(s) && isnan(z[j]))))
                ok = verdict(0, "tk_silu(%a) = %a, tr_silu = %a", (double)x[j], (double)z[j], (double)s);
        }
        if (ok)
            verdict(1, "");
    }
    free(x);
    free(y);
    free(z);
}

/* ---- main ----------------------------------------------------------------------------------------------------------- */

static const char *PROBE_SRC =
    "#include \"%s/metal/kernels/trellis_common.h\"\n"
    "kernel void expf_probe(device const float *x [[buffer(0)]], device float *y [[buffer(1)]],\n"
    "                       device float *z [[buffer(2)]], constant uint &n [[buffer(3)]],\n"
    "                       uint gid [[thread_position_in_grid]])\n"
    "{\n"
    "    if (gid >= n)\n"
    "        return;\n"
    "    y[gid] = tk_expf(x[gid]);\n"
    "    z[gid] = tk_silu(x[gid]);\n"
    "}\n";

static tr_mtl_lib *build(const char *path, const char *cache)
{
    tr_mtl_build_opts o;
    memset(&o, 0, sizeof o);
    o.cache_dir = cache;
    o.jobs = 2;
    tr_mtl_lib *lib = NULL;
    tr_error err;
    if (tr_mtl_build(path, &o, &lib, &err) != TR_OK)
        die("building %s: %s", path, err.text);
    int bad = 0;
    for (size_t i = 0; i < tr_mtl_file_count(lib); i++) {
        const tr_mtl_file *f = tr_mtl_file_at(lib, i);
        printf("  %-6s %-48s %s%.2f s\n", f->ok ? "ok" : "FAILED", f->path, f->cached ? "cached " : "", f->seconds);
        if (!f->ok) {
            bad = 1;
            fprintf(stderr, "%s\n", f->log);
        }
    }
    if (bad)
        die("some kernel files failed to build");
    return lib;
}

void verify_families(void);

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            QUICK = 1;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            ONLY = argv[++i];
        else if (!strcmp(argv[i], "--workers") && i + 1 < argc)
            WORKERS = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-v"))
            VERBOSE = 1;
        else
            die("usage: verify [--quick] [--only SUBSTRING] [--workers N] [-v]");
    }
    tr_rng_seed(&RNG, 20240601);
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd))
        die("getcwd failed");
    printf("building metal/kernels\n");
    double t0 = now_s();
    LIB = build("metal/kernels", "build/metal-emu");
    printf("  (%.2f s)\n", now_s() - t0);
    const char *dir = "build/metal-kernels-verify-probe";   /* a fixed folder: the emulator cache keys on the path */
    mkdir(dir, 0755);
    char path[4200];
    snprintf(path, sizeof path, "%s/expf_probe.metal", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        die("cannot write %s", path);
    fprintf(f, PROBE_SRC, cwd);
    fclose(f);
    PROBE = build(dir, "build/metal-emu");
    check_expf();
    verify_families();
    tr_mtl_close(LIB);
    tr_mtl_close(PROBE);
    printf("verify: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}

/* ---- sign_flip ---------------------------------------------------------------------------------------------------- */

static void check_sign_flip(void)
{
    static const uint32_t dims[][2] = {{1, 1}, {7, 4}, {16, 16}, {17, 33}, {64, 100}, {129, 12}};
    for (int vec = 0; vec < 2; vec++) {
        const char *name = vec ? "apply_sign_flips_vec4" : "apply_sign_flips";
        if (!selected(name))
            continue;
        for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
            for (int general = 0; general < 2; general++) {
                uint32_t K = dims[d][0], N = dims[d][1];
                if (vec && N % 4)
                    continue;
                case_name("%s K=%u N=%u signs=%s", name, K, N, general ? "general" : "random");
                size_t n = (size_t)K * N;
                uint16_t *w = xmalloc(n * 2), *got = xmalloc(n * 2), *exp = xmalloc(n * 2);
                float *su = xmalloc(K * 4), *sv = xmalloc(N * 4);
                for (size_t i = 0; i < n; i++) {   /* mixed values incl. subnormal, large, ±0 */
                    double r = u01();
                    w[i] = r < 0.7 ? tr_f32_to_f16(normal()) : r < 0.8 ? (uint16_t)uint_in(0, 0x3FF) | (u01() < 0.5 ? 0x8000 : 0)
                         : r < 0.9 ? tr_f32_to_f16((float)ldexp(1.0 + u01(), (int)uint_in(8, 15))) : (uint16_t)uint_in(0, 0xFFFF);
                }
                for (uint32_t k = 0; k < K; k++)
                    su[k] = sign_value(general);
                for (uint32_t j = 0; j < N; j++)
                    sv[j] = sign_value(general);
                memcpy(got, w, n * 2);
                tr_ref_sign_flip(w, su, sv, K, N, exp);
                vbuf b[] = {OUT(0, got, n * 2, F_COPY), IN(1, su, K * 4), IN(2, sv, N * 4), U32(3, &K), U32(4, &N)};
                launch_spec ls = vec ? LS(cdiv(N, 64), cdiv(K, 16), 1, 16, 16, 1) : LS(cdiv(N, 16), cdiv(K, 16), 1, 16, 16, 1);
                if (run2(LIB, name, b, 5, ls, d + 11, 2) && cmp16(name, got, exp, n, N))
                    verdict(1, "");
                free(w), free(got), free(exp), free(su), free(sv);
            }
    }
    /* f16 × f32 products that land on f16 midpoints after RN32: tk_rnh_mul must round once */
    if (selected("apply_sign_flips")) {
        uint32_t K = 1, N = 4096;
        uint16_t *w = xmalloc(N * 2), *got = xmalloc(N * 2), *exp = xmalloc(N * 2);
        float su = 1.0f, *sv = xmalloc(N * 4);
        for (uint32_t j = 0; j < N; j++) {
            w[j] = (uint16_t)uint_in(0x0001, 0x7BFF) | (j & 1 ? 0x8000 : 0);
            /* c = 1 + t·2^-12 (+ a low-bit perturbation): products near midpoints */
            sv[j] = (float)(1.0 + (double)uint_in(1, 4095) * ldexp(1.0, -12)) + (float)((int)uint_in(0, 2) - 1) * ldexpf(1.0f, -23);
        }
        case_name("apply_sign_flips near-midpoint products N=%u", N);
        memcpy(got, w, N * 2);
        tr_ref_sign_flip(w, &su, sv, K, N, exp);
        vbuf b[] = {OUT(0, got, N * 2, F_COPY), IN(1, &su, 4), IN(2, sv, N * 4), U32(3, &K), U32(4, &N)};
        if (run2(LIB, "apply_sign_flips", b, 5, LS(cdiv(N, 16), 1, 1, 16, 16, 1), 5, 2) &&
            cmp16("apply_sign_flips", got, exp, N, N))
            verdict(1, "");
        free(w), free(got), free(exp), free(sv);
    }
}

/* ---- dequant_grid --------------------------------------------------------------------------------------------------- */

/* W16 [O][I] of L (signs folded, or NOSIGN: su = sv = 1) transposed to [K][N] = [I][O]. */
static uint16_t *ref_w16_kn(qlin *L, int nosign)
{
    size_t n = (size_t)L->O * L->I;
    uint16_t *w = xmalloc(n * 2), *t = xmalloc(n * 2);
    tr_qweight q = L->w;
    float *one_i = NULL, *one_o = NULL;
    if (nosign) {
        one_i = xmalloc(L->I * 4);
        one_o = xmalloc(L->O * 4);
        for (uint32_t i = 0; i < L->I; i++)
            one_i[i] = 1.0f;
        for (uint32_t o = 0; o < L->O; o++)
            one_o[o] = 1.0f;
        q.su = one_i;
        q.sv = one_o;
    }
    tr_error err;
    if (tr_ref_dequant_grid(&q, w, &err) != TR_OK)
        die("reference dequant: %s", err.text);
    for (uint32_t o = 0; o < L->O; o++)
        for (uint32_t i = 0; i < L->I; i++)
            t[(size_t)i * L->O + o] = w[(size_t)o * L->I + i];
    free(w), free(one_i), free(one_o);
    return t;
}

/* I16 indices [T_I][T_O][256], in-tile (k%16)·16 + n%16, padding = pad index. */
static int16_t *i16_indices(const qlin *L)
{
    size_t n = (size_t)L->T_I * L->T_O * 256;
    int16_t *idx = xmalloc(n * 2);
    for (size_t i = 0; i < n; i++)
        idx[i] = (int16_t)tr_pad_index(L->bits);
    for (uint32_t o = 0; o < L->O; o++)
        for (uint32_t i = 0; i < L->I; i++)
            idx[((size_t)(i / 16) * L->T_O + o / 16) * 256 + (i % 16) * 16 + o % 16] = L->q[(size_t)o * L->I + i];
    return idx;
}

static void check_dequant(void)
{
    static const uint32_t dims[][2] = {{1, 1}, {16, 16}, {17, 15}, {7, 33}, {33, 7}, {64, 100}, {129, 31}, {100, 129},
                                       {31, 64}};
    static const uint32_t gss[] = {16, 32, 64, 128, 256};
    static const char *pk_names[] = {"dequant_trellis_packed", "dequant_trellis_packed_vec4",
                                     "dequant_trellis_packed_cached", "dequant_trellis_packed_cached_vec4",
                                     "dequant_trellis_packed_tiled_vec4", "dequant_trellis_packed_tiled_cached_vec4",
                                     "dequant_trellis_packed_tex"};
    static const char *i16_names[] = {"dequant_trellis_with_signs", "dequant_trellis", "dequant_trellis_tiled",
                                      "dequant_trellis_tiled_cached", "dequant_trellis_aligned"};
    int ci = 0;
    for (unsigned bits = 2; bits <= 8; bits++)
        for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
            if (QUICK && (d + bits) % 3)
                continue;
            uint32_t O = dims[d][0], I = dims[d][1], gs = gss[(bits + d) % 5];
            uint32_t K = I, N = O;
            qlin L;
            qlin_make(&L, O, I, bits, gs, 0, 1, (d & 1));
            float grid[256];
            grid_f32(bits, grid);
            uint32_t nl = 1u << bits;
            size_t n = (size_t)K * N;
            uint16_t *exp = ref_w16_kn(&L, 0), *exp_ns = ref_w16_kn(&L, 1), *got = xmalloc(n * 2);
            for (size_t v = 0; v < sizeof pk_names / sizeof pk_names[0]; v++) {
                const char *name = pk_names[v];
                if (!selected(name))
                    continue;
                case_name("%s O=%u I=%u b=%u gs=%u", name, O, I, bits, gs);
                int tex = strstr(name, "_tex") != NULL, vec = strstr(name, "vec4") != NULL;
                int tiled = strstr(name, "tiled") != NULL;
                launch_spec ls = tiled ? LS(cdiv(N, 16), cdiv(K, 16), 1, 64, 1, 1)
                               : vec ? LS(cdiv(N, 16), cdiv(K, 64), 1, 16, 16, 1)
                                     : LS(cdiv(N, 16), cdiv(K, 16), 1, 16, 16, 1);
                size_t body = tr_packed_body_bytes(O, I, bits);
                int ok;
                if (tex) {
                    vbuf b[] = {IN(0, L.pk, body), IN(1, L.S, L.G * O * 4), TEX(0, grid, nl), IN(2, L.su, I * 4),
                                IN(3, L.sv, O * 4), OUT(4, got, n * 2, F_POISON16), U32(5, &K), U32(6, &N),
                                U32(7, &nl), U32(8, &L.bits), U32(9, &L.gs)};
                    ok = run2(LIB, name, b, 11, ls, ++ci, 2);
                } else {
                    vbuf b[] = {IN(0, L.pk, body), IN(1, L.S, L.G * O * 4), IN(2, grid, nl * 4), IN(3, L.su, I * 4),
                                IN(4, L.sv, O * 4), OUT(5, got, n * 2, F_POISON16), U32(6, &K), U32(7, &N),
                                U32(8, &nl), U32(9, &L.bits), U32(10, &L.gs)};
                    ok = run2(LIB, name, b, 11, ls, ++ci, 2);
                }
                if (ok && cmp16(name, got, exp, n, N))
                    verdict(1, "");
            }
            int16_t *idx = i16_indices(&L);
            size_t ni = (size_t)L.T_I * L.T_O * 256;
            for (size_t v = 0; v < sizeof i16_names / sizeof i16_names[0]; v++) {
                const char *name = i16_names[v];
                if (!selected(name))
                    continue;
                int signs = v == 0, tiled = strstr(name, "tiled") != NULL, aligned = strstr(name, "aligned") != NULL;
                if (aligned && N % 4)
                    continue;
                case_name("%s O=%u I=%u b=%u gs=%u", name, O, I, bits, gs);
                launch_spec ls = tiled ? LS(cdiv(N, 16), cdiv(K, 16), 1, 256, 1, 1)
                               : aligned ? LS(cdiv(N, 64), cdiv(K, 16), 1, 16, 16, 1)
                                         : LS(cdiv(N, 16), cdiv(K, 16), 1, 16, 16, 1);
                int ok;
                if (signs) {
                    vbuf b[] = {IN(0, idx, ni * 2), IN(1, L.S, L.G * O * 4), IN(2, grid, nl * 4), IN(3, L.su, I * 4),
                                IN(4, L.sv, O * 4), OUT(5, got, n * 2, F_POISON16), U32(6, &K), U32(7, &N),
                                U32(8, &nl), U32(9, &L.gs)};
                    ok = run2(LIB, name, b, 10, ls, ++ci, 2);
                } else {
                    vbuf b[] = {IN(0, idx, ni * 2), IN(1, L.S, L.G * O * 4), IN(2, grid, nl * 4),
                                OUT(3, got, n * 2, F_POISON16), U32(4, &K), U32(5, &N), U32(6, &nl), U32(7, &L.gs)};
                    ok = run2(LIB, name, b, 8, ls, ++ci, 2);
                }
                if (ok && cmp16(name, got, signs ? exp : exp_ns, n, N))
                    verdict(1, "");
            }
            /* BULK: S constant over each 16 outputs, gs a multiple of 16 (the generator's domain) */
            if (selected("dequant_trellis_bulk")) {
                for (uint32_t g = 0; g < L.G; g++)
                    for (uint32_t o = 0; o < O; o++)
                        L.S[(size_t)g * O + o] = L.S[(size_t)g * O + (o - o % 16)];
                uint16_t *exp_b = ref_w16_kn(&L, 1);
                uint32_t nt = L.T_I * L.T_O;
                float *ts = xmalloc(nt * 4);
                for (uint32_t ti = 0; ti < L.T_I; ti++)
                    for (uint32_t to = 0; to < L.T_O; to++)
                        ts[ti * L.T_O + to] = L.S[(size_t)(ti * 16 / gs) * O + to * 16];
                uint16_t *gb = xmalloc((size_t)nt * 256 * 2);
                case_name("dequant_trellis_bulk O=%u I=%u b=%u gs=%u", O, I, bits, gs);
                vbuf b[] = {IN(0, idx, ni * 2), IN(1, ts, nt * 4), IN(2, grid, nl * 4),
                            OUT(3, gb, (size_t)nt * 512, F_POISON16), U32(4, &nt), U32(5, &nl)};
                if (run2(LIB, "dequant_trellis_bulk", b, 6, LS(nt, 1, 1, 256, 1, 1), ++ci, 2)) {
                    for (uint32_t k = 0; k < K; k++)
                        for (uint32_t j = 0; j < N; j++)
                            got[(size_t)k * N + j] = gb[((size_t)(k / 16) * L.T_O + j / 16) * 256 + (k % 16) * 16 + j % 16];
                    if (cmp16("dequant_trellis_bulk", got, exp_b, n, N))
                        verdict(1, "");
                }
                free(exp_b), free(ts), free(gb);
            }
            free(idx), free(exp), free(exp_ns), free(got);
            qlin_free(&L);
        }
}

/* ---- gemm_trellis ----------------------------------------------------------------------------------------------------- */

/* f16 activations [M][K] (as f16 bits and as their exact f32 values). */
static void activations(uint32_t M, uint32_t K, uint16_t **a16, float **af)
{
    *a16 = xmalloc((size_t)M * K * 2);
    *af = xmalloc((size_t)M * K * 4);
    for (size_t i = 0; i < (size_t)M * K; i++) {
        (*a16)[i] = tr_f32_to_f16(normal());
        (*af)[i] = tr_f16_to_f32((*a16)[i]);
    }
}

typedef struct gemm_variant {
    const char *name;
    int f32acc, decode, b2;
} gemm_variant;

static const gemm_variant GEMM_VARIANTS[] = {
    {"gemm_trellis_packed", 0, 0, 0},        {"gemm_trellis_packed_fp32acc", 1, 0, 0},
    {"gemm_trellis_packed_decode", 0, 1, 0}, {"gemm_trellis_fused_reg", 0, 0, 0},
    {"decode_gemv_trellis", 0, 1, 0},        {"gemm_trellis_2bit", 0, 0, 1},
    {"gemm_trellis_2bit_fused_reg", 0, 0, 1}, {"gemm_trellis_w2", 0, 0, 1},
    {"gemm_trellis_w2_fp32acc", 1, 0, 1},    {"gemm_trellis_2bit_decode", 0, 1, 1},
    {"gemm_trellis_w2_decode", 0, 1, 1},
};

/* Run one gemm kernel on L with activations a16 [M][K]; C [M][N] f16. */
static int run_gemm(const gemm_variant *v, qlin *L, const uint16_t *a16, uint32_t M, uint16_t *C, uint64_t seed,
                    int policies)
{
    uint32_t K = L->I, N = L->O, nl = 1u << L->bits;
    float grid[256];
    grid_f32(L->bits, grid);
    size_t body = tr_packed_body_bytes(L->O, L->I, L->bits);
    launch_spec ls = v->decode ? LS(cdiv(N, 128), cdiv(M, 32), 1, 128, 1, 1) : LS(cdiv(N, 128), cdiv(M, 128), 1, 256, 1, 1);
    vbuf b[13] = {IN(0, a16, (size_t)M * K * 2), IN(1, L->pk, body), IN(2, L->S, (size_t)L->G * N * 4),
                  IN(3, grid, nl * 4), IN(4, L->su, K * 4), IN(5, L->sv, N * 4),
                  OUT(6, C, (size_t)M * N * 2, F_POISON16), U32(7, &M), U32(8, &K), U32(9, &N)};
    int nb = 10;
    if (v->b2)
        b[nb++] = U32(10, &L->gs);
    else {
        b[nb++] = U32(10, &L->bits);
        b[nb++] = U32(11, &nl);
        b[nb++] = U32(12, &L->gs);
    }
    return run2(LIB, v->name, b, nb, ls, seed, policies);
}

static void check_gemm(void)
{
    static const uint32_t dims[][2] = {{1, 1}, {16, 16}, {17, 15}, {7, 33}, {33, 7}, {64, 100}, {129, 31},
                                       {100, 129}, {257, 64}, {31, 257}};
    static const uint32_t rows[] = {1, 2, 3, 5, 8, 15, 16, 17, 33, 64, 129};
    static const uint32_t gss[] = {16, 32, 64, 128, 256};
    int ci = 0;
    for (size_t vi = 0; vi < sizeof GEMM_VARIANTS / sizeof GEMM_VARIANTS[0]; vi++) {
        const gemm_variant *v = &GEMM_VARIANTS[vi];
        if (!selected(v->name))
            continue;
        for (unsigned bits = 2; bits <= 8; bits++) {
            if (v->b2 && bits != 2)
                continue;
            for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
                if ((QUICK || !v->b2) && (d + bits + vi) % 3)
                    continue;
                uint32_t O = dims[d][0], I = dims[d][1], gs = gss[(bits + d + vi) % 5];
                uint32_t M = rows[(d * 7 + bits + vi) % (sizeof rows / sizeof rows[0])];
                if (v->decode && M > 16)
                    M = M % 16 + 1;
                if (!strcmp(v->name, "decode_gemv_trellis"))
                    M = 1;
                case_name("%s M=%u O=%u I=%u b=%u gs=%u", v->name, M, O, I, bits, gs);
                qlin L;
                qlin_make(&L, O, I, bits, gs, 0, 1, d & 1);
                uint16_t *a16, *got = xmalloc((size_t)M * O * 2), *exp = xmalloc((size_t)M * O * 2);
                float *af;
                activations(M, I, &a16, &af);
                tr_error err;
                if (tr_ref_gemm_trellis(&L.w, af, M, v->f32acc ? TR_ACC_F32 : TR_ACC_F16, 1, exp, &err) != TR_OK)
                    die("reference gemm: %s", err.text);
                if (run_gemm(v, &L, a16, M, got, ++ci, 2) && cmp16(v->name, got, exp, (size_t)M * O, O))
                    verdict(1, "");
                free(a16), free(af), free(got), free(exp);
                qlin_free(&L);
            }
        }
    }
}

/* The METAL.md §8 target: emulated 2048×1536 trellis GEMV (M = 1, O = 2048, I = 1536) with the decode kernel. */
static void time_gemv(void)
{
    if (!selected("gemv-timing"))
        return;
    static const char *names[] = {"gemm_trellis_packed_decode", "decode_gemv_trellis"};
    for (int i = 0; i < 2; i++) {
        const gemm_variant *v = NULL;
        for (size_t j = 0; j < sizeof GEMM_VARIANTS / sizeof GEMM_VARIANTS[0]; j++)
            if (!strcmp(GEMM_VARIANTS[j].name, names[i]))
                v = &GEMM_VARIANTS[j];
        uint32_t O = 2048, I = 1536, M = 1;
        qlin L;
        qlin_make(&L, O, I, 4, 128, 0, 0, 0);
        uint16_t *a16, *got = xmalloc(O * 2), *exp = xmalloc(O * 2);
        float *af;
        activations(M, I, &a16, &af);
        tr_error err;
        if (tr_ref_gemm_trellis(&L.w, af, M, TR_ACC_F16, 1, exp, &err) != TR_OK)
            die("reference gemm: %s", err.text);
        case_name("gemv-timing %s O=2048 I=1536 b=4 workers=%d", v->name, WORKERS);
        double best = 1e9, best_k = 1e9;
        for (int rep = 0; rep < 3; rep++) {
            double t0 = now_s();
            if (!run_gemm(v, &L, a16, M, got, 1, 1))
                break;
            double t = now_s() - t0;
            best = t < best ? t : best;
            best_k = last_seconds < best_k ? last_seconds : best_k;
        }
        if (cmp16(v->name, got, exp, O, O))
            verdict(best <= 0.5, "wall %.3f s (target 0.5 s)", best);
        printf("  timing %s: 2048x1536 GEMV, b=4, %d workers: launch %.3f s, wall %.3f s (best of 3)\n", v->name,
               WORKERS, best_k, best);
        free(a16), free(af), free(got), free(exp);
        qlin_free(&L);
    }
}

/* ---- gemm_trellis_swiglu, gemm_trellis_qkv ------------------------------------------------------------------------ */

static void check_swiglu(void)
{
    static const uint32_t shapes[][2] = {{16, 16}, {17, 15}, {64, 33}, {33, 100}, {129, 31}, {7, 64}};  /* (I, H) */
    static const uint32_t rows[] = {1, 2, 5, 16, 17, 64, 129};
    for (int dec = 0; dec < 2; dec++) {
        const char *name = dec ? "gemm_trellis_swiglu_gate_up_decode" : "gemm_trellis_swiglu_gate_up";
        if (!selected(name))
            continue;
        for (unsigned bits = 2; bits <= 8; bits++)
            for (size_t d = 0; d < sizeof shapes / sizeof shapes[0]; d++) {
                if ((d + bits) % (QUICK ? 4 : 2))
                    continue;
                uint32_t N = shapes[d][0], K = shapes[d][1], gs = 16u << ((bits + d) % 5);
                uint32_t M = rows[(d + bits) % 7];
                if (dec && M > 16)
                    M = M % 16 + 1;
                case_name("%s M=%u I=%u H=%u b=%u gs=%u", name, M, N, K, bits, gs);
                qlin G, U;
                qlin_make(&G, N, K, bits, gs, 0, 1, 0);
                qlin_make(&U, N, K, bits, gs, 0, 1, 1);
                memcpy(U.su, G.su, K * 4);   /* one su/sv binding for both */
                memcpy(U.sv, G.sv, N * 4);
                float grid[256];
                grid_f32(bits, grid);
                uint32_t nl = 1u << bits;
                uint16_t *a16, *got = xmalloc((size_t)M * N * 2), *exp = xmalloc((size_t)M * N * 2);
                float *af;
                activations(M, K, &a16, &af);
                tr_error err;
                if (tr_ref_gemm_trellis_swiglu(&G.w, &U.w, af, M, TR_ACC_F16, exp, &err) != TR_OK)
                    die("reference swiglu: %s", err.text);
                size_t body = tr_packed_body_bytes(N, K, bits);
                vbuf b[] = {IN(0, a16, (size_t)M * K * 2), IN(1, G.pk, body), IN(2, G.S, (size_t)G.G * N * 4),
                            IN(3, U.pk, body), IN(4, U.S, (size_t)U.G * N * 4), IN(5, grid, nl * 4),
                            IN(6, G.su, K * 4), IN(7, G.sv, N * 4), OUT(8, got, (size_t)M * N * 2, F_POISON16),
                            U32(9, &M), U32(10, &K), U32(11, &N), U32(12, &G.bits), U32(13, &nl), U32(14, &G.gs)};
                launch_spec ls = dec ? LS(cdiv(N, 128), cdiv(M, 32), 1, 128, 1, 1)
                                     : LS(cdiv(N, 128), cdiv(M, 128), 1, 256, 1, 1);
                if (run2(LIB, name, b, 15, ls, d + bits, 2) && cmp16(name, got, exp, (size_t)M * N, N))
                    verdict(1, "");
                free(a16), free(af), free(got), free(exp);
                qlin_free(&G), qlin_free(&U);
            }
    }
}

static void check_qkv(void)
{
    static const uint32_t ns[][3] = {{64, 32, 32}, {17, 0, 15}, {129, 1, 7}, {0, 0, 16}};
    static const uint32_t ks[] = {16, 33, 64, 100, 7};
    const char *name = "fused_qkv_trellis_decode";
    if (!selected(name))
        return;
    int ci = 0;
    for (unsigned bits = 2; bits <= 8; bits++)
        for (size_t d = 0; d < 4; d++) {
            if (QUICK && (d + bits) % 2)
                continue;
            uint32_t K = ks[(d + bits) % 5], gs = 16u << ((bits + d) % 5), M = 1 + (bits * 5 + (uint32_t)d) % 16;
            uint32_t Nx[3] = {ns[d][0], ns[d][1], ns[d][2]};
            case_name("%s M=%u K=%u N=(%u,%u,%u) b=%u gs=%u", name, M, K, Nx[0], Nx[1], Nx[2], bits, gs);
            qlin L[3];
            uint16_t *got[3], *exp[3];
            uint16_t *a16;
            float *af;
            activations(M, K, &a16, &af);
            float grid[256];
            grid_f32(bits, grid);
            uint32_t nl = 1u << bits, nmax = 0;
            static uint8_t dummy[64];
            vbuf b[25];
            int nb = 0;
            b[nb++] = IN(0, a16, (size_t)M * K * 2);
            for (int x = 0; x < 3; x++) {
                got[x] = xmalloc((size_t)M * Nx[x] * 2 + 2);
                exp[x] = xmalloc((size_t)M * Nx[x] * 2 + 2);
                nmax = Nx[x] > nmax ? Nx[x] : nmax;
                if (Nx[x]) {
                    qlin_make(&L[x], Nx[x], K, bits, gs, 0, 1, x & 1);
                    tr_error err;
                    if (tr_ref_gemm_trellis(&L[x].w, af, M, TR_ACC_F16, 1, exp[x], &err) != TR_OK)
                        die("reference gemm: %s", err.text);
                    b[nb++] = IN(1 + 4 * x, L[x].pk, tr_packed_body_bytes(Nx[x], K, bits));
                    b[nb++] = IN(2 + 4 * x, L[x].S, (size_t)L[x].G * Nx[x] * 4);
                    b[nb++] = IN(3 + 4 * x, L[x].su, K * 4);
                    b[nb++] = IN(4 + 4 * x, L[x].sv, Nx[x] * 4);
                } else {
                    memset(&L[x], 0, sizeof L[x]);
                    for (int j = 1; j <= 4; j++)
                        b[nb++] = IN(j + 4 * x, dummy, sizeof dummy);
                }
                b[nb++] = OUT(14 + x, got[x], (size_t)M * Nx[x] * 2, F_POISON16);
            }
            b[nb++] = IN(13, grid, nl * 4);
            b[nb++] = U32(17, &M);
            b[nb++] = U32(18, &K);
            b[nb++] = U32(19, &Nx[0]);
            b[nb++] = U32(20, &Nx[1]);
            b[nb++] = U32(21, &Nx[2]);
            uint32_t bb = bits;
            b[nb++] = U32(22, &bb);
            b[nb++] = U32(23, &nl);
            b[nb++] = U32(24, &gs);
            if (run2(LIB, name, b, nb, LS(cdiv(nmax, 128), cdiv(M, 32), 1, 128, 1, 1), ++ci, 2)) {
                int ok = 1;
                for (int x = 0; x < 3 && ok; x++)
                    ok = cmp16(x == 0 ? "Q" : x == 1 ? "K" : "V", got[x], exp[x], (size_t)M * Nx[x], Nx[x] ? Nx[x] : 1);
                if (ok)
                    verdict(1, "");
            }
            for (int x = 0; x < 3; x++) {
                free(got[x]), free(exp[x]);
                if (Nx[x])
                    qlin_free(&L[x]);
            }
            free(a16), free(af);
        }
}

/* ---- expert_ffn, moe_swiglu ------------------------------------------------------------------------------------------- */

/* E experts (H, I), per-expert tuples, in STACK form (uniform tuple) or mixed form (per-expert g = u = d, bodies at
 * weight_offsets). */
typedef struct moe_case {
    uint32_t H, I, E, gs;
    qlin *g, *u, *d;
    tr_expert *ex;
    uint8_t *w[3];             /* gate, up, down bodies */
    size_t wbytes[3];
    uint16_t *S[3], *su[3], *sv[3];
    size_t Sn[3], sun[3], svn[3];
    uint8_t *expert_bits;
    uint32_t *weight_offsets;
} moe_case;

typedef struct moe_params {
    uint32_t batch, hidden, intermediate, num_experts, top_k, gate_bits, up_bits, down_bits, group_size, gl, ul, dl;
} moe_params;

static uint16_t *to_f16_array(const float *v, size_t n)
{
    uint16_t *h = xmalloc(n * 2 + 2);
    for (size_t i = 0; i < n; i++)
        h[i] = tr_f32_to_f16(v[i]);
    return h;
}

/* tuples[e] = (g, u, d) widths of expert e; mixed: bodies placed at (cumulative, 64-byte aligned) offsets. */
static void moe_case_make(moe_case *c, uint32_t H, uint32_t I, uint32_t E, uint32_t gs, const unsigned (*tuples)[3],
                          int mixed)
{
    memset(c, 0, sizeof *c);
    c->H = H, c->I = I, c->E = E, c->gs = gs;
    c->g = xmalloc(E * sizeof(qlin));
    c->u = xmalloc(E * sizeof(qlin));
    c->d = xmalloc(E * sizeof(qlin));
    c->ex = xmalloc(E * sizeof(tr_expert));
    qlin *P[3] = {c->g, c->u, c->d};
    for (uint32_t e = 0; e < E; e++) {
        qlin_make(&c->g[e], I, H, tuples[e][0], gs, 1, 0, (e & 1));
        qlin_make(&c->u[e], I, H, tuples[e][1], gs, 1, 0, 0);
        qlin_make(&c->d[e], H, I, tuples[e][2], gs, 1, 0, (e & 2) != 0);
        c->ex[e].gate = &c->g[e].w;
        c->ex[e].up = &c->u[e].w;
        c->ex[e].down = &c->d[e].w;
    }
    if (mixed) {
        c->expert_bits = xmalloc(E);
        c->weight_offsets = xmalloc(E * 4);
    }
    for (int x = 0; x < 3; x++) {
        size_t total = 0, Sn = 0, sun = 0, svn = 0;
        for (uint32_t e = 0; e < E; e++) {
            qlin *L = &P[x][e];
            size_t body = tr_packed_body_bytes(L->O, L->I, L->bits);
            if (mixed)
                total = (total + 63) / 64 * 64;
            total += body;
            Sn += (size_t)L->G * L->O;
            sun += L->I;
            svn += L->O;
        }
        c->w[x] = xcalloc(total + 64);
        c->wbytes[x] = total;
        float *S = xmalloc(Sn * 4), *su = xmalloc(sun * 4), *sv = xmalloc(svn * 4);
        size_t at = 0, aS = 0, asu = 0, asv = 0;
        for (uint32_t e = 0; e < E; e++) {
            qlin *L = &P[x][e];
            size_t body = tr_packed_body_bytes(L->O, L->I, L->bits);
            if (mixed) {
                at = (at + 63) / 64 * 64;
                if (x == 0) {
                    c->expert_bits[e] = (uint8_t)L->bits;
                    c->weight_offsets[e] = (uint32_t)at;
                }
            }
            memcpy(c->w[x] + at, L->pk, body);
            at += body;
            memcpy(S + aS, L->S, (size_t)L->G * L->O * 4);
            aS += (size_t)L->G * L->O;
            memcpy(su + asu, L->su, L->I * 4);
            asu += L->I;
            memcpy(sv + asv, L->sv, L->O * 4);
            asv += L->O;
        }
        c->S[x] = to_f16_array(S, Sn);
        c->su[x] = to_f16_array(su, sun);
        c->sv[x] = to_f16_array(sv, svn);
        c->Sn[x] = Sn, c->sun[x] = sun, c->svn[x] = svn;
        free(S), free(su), free(sv);
    }
}

static void moe_case_free(moe_case *c)
{
    for (uint32_t e = 0; e < c->E; e++) {
        qlin_free(&c->g[e]);
        qlin_free(&c->u[e]);
        qlin_free(&c->d[e]);
    }
    for (int x = 0; x < 3; x++)
        free(c->w[x]), free(c->S[x]), free(c->su[x]), free(c->sv[x]);
    free(c->g), free(c->u), free(c->d), free(c->ex), free(c->expert_bits), free(c->weight_offsets);
}

static uint16_t GRID16[256];

/* Bindings 0–13 into b; returns the count. */
static int moe_weight_bufs(moe_case *c, vbuf *b, const uint16_t *x16, uint32_t rows)
{
    int n = 0;
    b[n++] = IN(0, x16, (size_t)rows * c->H * 2);
    for (int x = 0; x < 3; x++) {
        b[n++] = IN(1 + 2 * x, c->w[x], c->wbytes[x]);
        b[n++] = IN(2 + 2 * x, c->S[x], c->Sn[x] * 2);
        b[n++] = IN(7 + 2 * x, c->su[x], c->sun[x] * 2);
        b[n++] = IN(8 + 2 * x, c->sv[x], c->svn[x] * 2);
    }
    float g[256];
    grid_f32(c->g[0].bits, g);
    for (uint32_t j = 0; j < (1u << c->g[0].bits); j++)
        GRID16[j] = tr_f32_to_f16(g[j]);
    b[n++] = IN(13, GRID16, (1u << c->g[0].bits) * 2);
    return n;
}

/* Probabilities: softmax of normal logits over the k slots, renormalised, f16-exact. */
static void moe_routing(uint32_t T, uint32_t k, uint32_t E, int32_t *ids, float *probs, int dup)
{
    for (uint32_t t = 0; t < T; t++) {
        double z[64], sum = 0;
        for (uint32_t j = 0; j < k; j++) {
            ids[t * k + j] = (int32_t)uint_in(0, E - 1);
            if (dup && j == 1)
                ids[t * k + 1] = ids[t * k];
            z[j] = exp((double)normal());
            sum += z[j];
        }
        for (uint32_t j = 0; j < k; j++)
            probs[t * k + j] = f16_exact((float)(z[j] / sum));
    }
}

typedef struct moe_variant {
    const char *name;
    int f32acc;
    int kind;                  /* 0 row (x = ⌈H/64⌉), 1 row large (⌈H/128⌉), 2 decode, 3 prefill4, 4 mixed, 5 grouped */
    unsigned tuple[3];         /* tuple-specialized kernels */
} moe_variant;

static const moe_variant MOE_VARIANTS[] = {
    {"moe_trellis_swiglu", 0, 0, {0}},
    {"moe_trellis_swiglu_fp32acc", 1, 0, {0}},
    {"moe_trellis_swiglu_large_batch", 1, 1, {0}},
    {"moe_trellis_swiglu_simd", 0, 0, {0}},
    {"moe_trellis_fast_2bit_swiglu", 0, 0, {0}},
    {"moe_trellis_mixed_bpw_swiglu", 0, 0, {0}},
    {"moe_trellis_swiglu_decode", 1, 2, {0}},
    {"moe_trellis_swiglu_decode_gemv", 1, 2, {0}},
    {"moe_trellis_swiglu_decode_6_2_3", 1, 2, {6, 2, 3}},
    {"moe_trellis_swiglu_decode_6_3_4", 1, 2, {6, 3, 4}},
    {"moe_trellis_swiglu_decode_6_2_4", 1, 2, {6, 2, 4}},
    {"moe_trellis_swiglu_prefill4", 0, 3, {0}},
    {"moe_trellis_swiglu_prefill4_fp32acc", 1, 3, {0}},
    {"moe_trellis_mixed_swiglu", 1, 4, {0}},
    {"moe_trellis_mixed_swiglu_decode", 1, 4, {0}},
    {"moe_trellis_mixed_swiglu_prefill", 1, 4, {0}},
    {"moe_trellis_mixed_swiglu_large", 1, 4, {0}},
    {"moe_trellis_swiglu_grouped", 0, 5, {0}},
};

static void check_moe(void)
{
    static const uint32_t shapes[][2] = {{16, 16}, {17, 15}, {32, 48}, {64, 48}, {130, 70}};
    static const unsigned tuples[][3] = {{6, 2, 3}, {6, 3, 4}, {6, 2, 4}, {4, 4, 4}, {2, 8, 2}, {8, 2, 8}, {2, 2, 2},
                                         {3, 3, 3}, {5, 5, 5}, {7, 7, 7}, {8, 8, 8}, {3, 5, 7}};
    int ci = 0;
    for (size_t vi = 0; vi < sizeof MOE_VARIANTS / sizeof MOE_VARIANTS[0]; vi++) {
        const moe_variant *v = &MOE_VARIANTS[vi];
        if (!selected(v->name))
            continue;
        int ncases = QUICK ? 3 : 6;
        for (int cs = 0; cs < ncases; cs++) {
            uint32_t H = shapes[(cs + vi) % 5][0], I = shapes[(cs + vi) % 5][1];
            uint32_t E = (uint32_t[]){1, 2, 3, 4, 8, 16}[(cs * 3 + vi) % 6];
            uint32_t k = 1 + (uint32_t)(cs + vi) % 4, T;
            uint32_t gs = 16u << ((cs + vi) % 4);
            switch (v->kind) {
            case 2: T = 1; break;
            case 3: T = (uint32_t[]){1, 4, 5, 9, 13, 16}[cs % 6]; break;
            default: T = (uint32_t[]){1, 2, 3, 7, 17, 5}[cs % 6]; break;
            }
            unsigned (*tp)[3] = xmalloc(E * sizeof *tp);
            for (uint32_t e = 0; e < E; e++) {
                const unsigned *t0 = v->tuple[0] ? v->tuple : tuples[(cs + vi) % 12];
                if (v->kind == 4) {   /* mixed: per expert g = u = d, differing across experts */
                    unsigned b = 2 + (unsigned)((e + cs) % 7);
                    tp[e][0] = tp[e][1] = tp[e][2] = b;
                } else
                    memcpy(tp[e], t0, sizeof tp[e]);
            }
            moe_case c;
            moe_case_make(&c, H, I, E, gs, (const unsigned (*)[3])tp, v->kind == 4);
            case_name("%s T=%u k=%u E=%u H=%u I=%u gs=%u tuple=%u-%u-%u%s", v->name, T, k, E, H, I, gs, tp[0][0],
                      tp[0][1], tp[0][2], v->kind == 4 ? " (per expert)" : "");
            uint16_t *x16;
            float *xf;
            activations(T, H, &x16, &xf);
            int32_t *ids = xmalloc(T * k * 4);
            float *probs = xmalloc(T * k * 4);
            moe_routing(T, k, E, ids, probs, cs == 2);
            uint16_t *p16 = to_f16_array(probs, (size_t)T * k);
            float *got = xmalloc((size_t)T * H * 4), *exp = xmalloc((size_t)T * H * 4);
            tr_error err;
            tr_acc acc = v->f32acc ? TR_ACC_F32 : TR_ACC_F16;
            moe_params mp = {T, H, I, E, k, tp[0][0], tp[0][1], tp[0][2], gs, 1u << tp[0][0], 1u << tp[0][1],
                             1u << tp[0][2]};
            vbuf b[24];
            int nb = moe_weight_bufs(&c, b, x16, T);
            launch_spec ls;
            uint32_t gx = cdiv(H, v->kind == 1 ? 128 : 64);
            uint32_t *sorted = NULL, *offs = NULL;
            uint16_t *sp16 = NULL;
            if (v->kind == 5) {   /* grouped: rows = T·k entries with their own expert; sorted by expert */
                uint32_t N = T * k;
                sorted = xmalloc(N * 4);
                offs = xmalloc((E + 1) * 4);
                sp16 = xmalloc(N * 2);
                uint32_t at = 0;
                for (uint32_t e = 0; e < E; e++) {
                    offs[e] = at;
                    for (uint32_t r = 0; r < N; r++)
                        if ((uint32_t)ids[r] == e) {
                            sorted[at] = r;
                            sp16[at++] = p16[r];
                        }
                }
                offs[E] = at;
                /* rows r = flat entries: x row r = x[token r / k] (the gathered activation matrix) */
                uint16_t *xg = xmalloc((size_t)N * H * 2);
                float *xgf = xmalloc((size_t)N * H * 4);
                for (uint32_t r = 0; r < N; r++) {
                    memcpy(xg + (size_t)r * H, x16 + (size_t)(r / k) * H, H * 2);
                    memcpy(xgf + (size_t)r * H, xf + (size_t)(r / k) * H, H * 4);
                }
                free(x16), free(xf);
                x16 = xg, xf = xgf;
                b[0] = IN(0, x16, (size_t)N * H * 2);
                free(got), free(exp);
                got = xmalloc((size_t)N * H * 4), exp = xmalloc((size_t)N * H * 4);
                mp.batch = N;
                mp.top_k = 1;
                if (tr_ref_moe_swiglu(c.ex, E, xf, N, ids, probs, 1, acc, exp, &err) != TR_OK)
                    die("reference moe: %s", err.text);
                b[nb++] = IN(14, sorted, N * 4);
                b[nb++] = IN(15, offs, (E + 1) * 4);
                b[nb++] = IN(16, sp16, N * 2);
                b[nb++] = OUT(17, got, (size_t)N * H * 4, F_ZERO);
                b[nb++] = BYTES(18, &mp, sizeof mp);
                ls = LS(gx, E, 1, 128, 1, 1);
                T = N;
            } else {
                if (tr_ref_moe_swiglu(c.ex, E, xf, T, ids, probs, k, acc, exp, &err) != TR_OK)
                    die("reference moe: %s", err.text);
                b[nb++] = IN(14, ids, (size_t)T * k * 4);
                b[nb++] = IN(15, p16, (size_t)T * k * 2);
                b[nb++] = OUT(16, got, (size_t)T * H * 4, F_ZERO);
                b[nb++] = BYTES(17, &mp, sizeof mp);
                if (v->kind == 4) {
                    b[nb++] = IN(21, c.expert_bits, E);
                    b[nb++] = IN(22, c.weight_offsets, E * 4);
                }
                switch (v->kind) {
                case 2: ls = LS(gx, k, 1, 128, 1, 1); break;
                case 3: ls = LS(gx, cdiv(T, 4), k, 128, 1, 1); break;
                case 4: ls = LS(gx, T, k, 256, 1, 1); break;
                default: ls = LS(gx, T, k, 128, 1, 1); break;
                }
            }
            if (run2(LIB, v->name, b, nb, ls, ++ci, 2) && cmp32(v->name, got, exp, (size_t)T * H, H))
                verdict(1, "");
            free(x16), free(xf), free(ids), free(probs), free(p16), free(got), free(exp), free(tp);
            free(sorted), free(offs), free(sp16);
            moe_case_free(&c);
        }
    }
}

static void check_expert_ffn(void)
{
    static const uint32_t shapes[][2] = {{16, 16}, {17, 15}, {32, 48}, {64, 48}, {130, 70}, {33, 129}};
    const char *name = "moe_trellis_fused_expert";
    if (!selected(name))
        return;
    for (int cs = 0; cs < (QUICK ? 3 : 6); cs++) {
        uint32_t H = shapes[cs][0], I = shapes[cs][1], E = 1 + cs % 3, R = (uint32_t[]){1, 2, 5, 17, 3, 8}[cs];
        uint32_t gs = 16u << (cs % 5), eid = E - 1;
        unsigned tp[8][3];
        unsigned bb = cs < 4 ? 3 : 2 + cs;   /* domain b = 3 (any uniform b works) */
        for (uint32_t e = 0; e < E; e++)
            tp[e][0] = tp[e][1] = tp[e][2] = bb;
        moe_case c;
        moe_case_make(&c, H, I, E, gs, (const unsigned (*)[3])tp, 0);
        case_name("%s R=%u H=%u I=%u b=%u gs=%u expert=%u/%u", name, R, H, I, bb, gs, eid, E);
        uint16_t *x16, *y16 = xmalloc((size_t)R * H * 2);
        float *xf, *got = xmalloc((size_t)R * H * 4), *exp = xmalloc((size_t)R * H * 4);
        activations(R, H, &x16, &xf);
        tr_error err;
        if (tr_ref_expert_ffn(&c.ex[eid], xf, R, TR_ACC_F16, y16, &err) != TR_OK)
            die("reference expert: %s", err.text);
        for (size_t i = 0; i < (size_t)R * H; i++)
            exp[i] = tr_f16_to_f32(y16[i]);
        vbuf b[24];
        int nb = moe_weight_bufs(&c, b, x16, R);
        uint32_t nl = 1u << bb;
        b[nb++] = OUT(14, got, (size_t)R * H * 4, F_POISON32);
        b[nb++] = U32(15, &R);
        b[nb++] = U32(16, &H);
        b[nb++] = U32(17, &I);
        b[nb++] = U32(18, &eid);
        b[nb++] = U32(19, &gs);
        b[nb++] = U32(20, &nl);
        if (run2(LIB, name, b, nb, LS(cdiv(H, 64), R, 1, 256, 1, 1), cs + 1, 2) && cmp32(name, got, exp, (size_t)R * H, H))
            verdict(1, "");
        free(x16), free(y16), free(xf), free(got), free(exp);
        moe_case_free(&c);
    }
}

/* ---- routers ------------------------------------------------------------------------------------------------------------ */

/* Compare kernel ids (u32) and f16 weights with the reference's ids and RNh(weights). */
static int cmp_router(const char *name, const uint32_t *ids, const uint16_t *w, const int32_t *rids, const float *rw,
                      uint32_t T, uint32_t k)
{
    for (uint32_t i = 0; i < T * k; i++) {
        if ((int32_t)ids[i] != rids[i])
            return verdict(0, "%s: token %u slot %u id %u expected %d", name, i / k, i % k, ids[i], rids[i]);
        uint16_t e = tr_f32_to_f16(rw[i]);
        if (w[i] != e && !(tr_f16_is_nan(w[i]) && tr_f16_is_nan(e)))
            return verdict(0, "%s: token %u slot %u weight 0x%04X expected 0x%04X", name, i / k, i % k, w[i], e);
    }
    return 1;
}

static void check_router(void)
{
    static const uint32_t Ts[] = {1, 2, 5, 17};
    static const uint32_t Es[] = {1, 2, 8, 64, 128, 160, 256, 3};
    static const uint32_t Hs[] = {16, 33, 64, 7, 100};
    static const char *fused[] = {"moe_router_fused", "moe_router_fused_small", "moe_router_fused_coalesced",
                                  "moe_router_int8_fused", "moe_router_int8_fused_small", "moe_router_int8_fused_decode",
                                  "moe_router_sparse", "moe_router_sparse_vec4"};
    int ci = 0;
    for (size_t v = 0; v < sizeof fused / sizeof fused[0]; v++) {
        const char *name = fused[v];
        if (!selected(name))
            continue;
        int int8 = strstr(name, "int8") != NULL, sparse = strstr(name, "sparse") != NULL;
        int coal = strstr(name, "coalesced") != NULL, dec = strstr(name, "decode") != NULL;
        for (int cs = 0; cs < (QUICK ? 4 : 8); cs++) {
            uint32_t T = dec ? 1 : Ts[cs % 4], E = Es[(cs + v) % 8], H = Hs[(cs + v) % 5];
            uint32_t C = sparse ? (E < 32 ? E : 1 + uint_in(0, 31)) : E;
            uint32_t k = 1 + (cs * 5 + (uint32_t)v) % (C < 16 ? C : 16);
            int ties = cs % 3 == 1, nans = cs % 4 == 3;
            case_name("%s T=%u E=%u H=%u k=%u%s%s%s", name, T, E, H, k, sparse ? " C=" : "", sparse ? "" : "",
                      ties ? " ties" : nans ? " nan" : "");
            if (sparse)
                snprintf(cur_case + strlen(cur_case), sizeof cur_case - strlen(cur_case), " (C=%u)", C);
            uint16_t *x16;
            float *xf;
            activations(T, H, &x16, &xf);
            if (nans)
                xf[0] = NAN, x16[0] = 0x7E00;
            float *Wf = xmalloc((size_t)E * H * 4), *scale = xmalloc(E * 4);   /* [E][H] as f32 values */
            uint16_t *W16 = xmalloc((size_t)E * H * 2);
            int8_t *W8 = xmalloc((size_t)E * H);
            for (uint32_t e = 0; e < E; e++) {
                scale[e] = scale_value(-10, -6, 0);
                for (uint32_t d = 0; d < H; d++) {
                    size_t i = (size_t)e * H + d;
                    if (int8) {
                        W8[i] = (int8_t)(int)uint_in(0, 255) - (ties ? 0 : 0);
                        if (ties)
                            W8[i] = (int8_t)((int)uint_in(0, 2) - 1);
                        Wf[i] = (float)W8[i];
                    } else {
                        float vv = ties ? (float)((int)uint_in(0, 4) - 2) * 0.0625f : normal() * 0.25f;
                        size_t at = coal ? i : (size_t)d * E + e;   /* kernel layout: [E][H] or [H][E] */
                        W16[at] = tr_f32_to_f16(vv);
                        Wf[i] = tr_f16_to_f32(W16[at]);
                    }
                }
            }
            if (ties)   /* quantized activations too: equal logits happen */
                for (size_t i = 0; i < (size_t)T * H; i++) {
                    x16[i] = tr_f32_to_f16((float)((int)uint_in(0, 2) - 1));
                    xf[i] = tr_f16_to_f32(x16[i]);
                }
            float *logits = xmalloc((size_t)T * E * 4), *rw = xmalloc((size_t)T * k * 4);
            int32_t *rids = xmalloc((size_t)T * k * 4);
            tr_ref_router_logits(xf, Wf, int8 ? scale : NULL, T, H, E, logits);
            uint32_t *cand = NULL;
            int32_t *cand_i = NULL;
            if (sparse) {
                cand = xmalloc((size_t)T * C * 4);
                cand_i = xmalloc((size_t)T * C * 4);
                for (uint32_t t = 0; t < T; t++) {   /* C distinct ids: partial Fisher-Yates */
                    uint32_t perm[256];
                    for (uint32_t e = 0; e < E; e++)
                        perm[e] = e;
                    for (uint32_t c = 0; c < C; c++) {
                        uint32_t r = c + uint_in(0, E - 1 - c), tmp = perm[c];
                        perm[c] = perm[r], perm[r] = tmp;
                        cand[t * C + c] = perm[c];
                        cand_i[t * C + c] = (int32_t)perm[c];
                    }
                }
            }
            tr_router_cfg cfg = {TR_ROUTER_SOFTMAX_TOPK, E, k, 1, 1.0f, 1, 1, 1.0f};
            tr_error err;
            if (tr_ref_router_topk(&cfg, logits, T, NULL, cand_i, sparse ? C : 0, rids, rw, NULL, NULL, &err) != TR_OK)
                die("reference router: %s", err.text);
            uint32_t *ids = xmalloc((size_t)T * k * 4);
            uint16_t *w = xmalloc((size_t)T * k * 2);
            vbuf b[12];
            int nb = 0;
            b[nb++] = IN(0, x16, (size_t)T * H * 2);
            if (int8) {
                b[nb++] = IN(1, W8, (size_t)E * H);
                b[nb++] = IN(2, scale, E * 4);
                b[nb++] = OUT(3, ids, (size_t)T * k * 4, F_POISON8);
                b[nb++] = OUT(4, w, (size_t)T * k * 2, F_POISON16);
                int base = 5;
                if (!dec)
                    b[nb++] = U32(base++, &T);
                b[nb++] = U32(base++, &H);
                b[nb++] = U32(base++, &E);
                b[nb++] = U32(base++, &k);
            } else if (sparse) {
                b[nb++] = IN(1, W16, (size_t)E * H * 2);
                b[nb++] = IN(2, cand, (size_t)T * C * 4);
                b[nb++] = OUT(3, ids, (size_t)T * k * 4, F_POISON8);
                b[nb++] = OUT(4, w, (size_t)T * k * 2, F_POISON16);
                b[nb++] = U32(5, &T);
                b[nb++] = U32(6, &H);
                b[nb++] = U32(7, &E);
                b[nb++] = U32(8, &C);
                b[nb++] = U32(9, &k);
            } else {
                b[nb++] = IN(1, W16, (size_t)E * H * 2);
                b[nb++] = OUT(2, ids, (size_t)T * k * 4, F_POISON8);
                b[nb++] = OUT(3, w, (size_t)T * k * 2, F_POISON16);
                b[nb++] = U32(4, &T);
                b[nb++] = U32(5, &H);
                b[nb++] = U32(6, &E);
                b[nb++] = U32(7, &k);
            }
            if (run2(LIB, name, b, nb, LS(T, 1, 1, 128, 1, 1), ++ci, 2) && cmp_router(name, ids, w, rids, rw, T, k))
                verdict(1, "");
            free(x16), free(xf), free(Wf), free(scale), free(W16), free(W8), free(logits), free(rw), free(rids);
            free(cand), free(cand_i), free(ids), free(w);
        }
    }
    static const char *f16k[] = {"softmax_topk_decode", "softmax_topk_prefill", "softmax_topk8_128e"};
    for (int v = 0; v < 3; v++) {
        const char *name = f16k[v];
        if (!selected(name))
            continue;
        for (int cs = 0; cs < (QUICK ? 4 : 8); cs++) {
            uint32_t T = v == 1 ? Ts[cs % 4] : 1, E = v == 2 ? 128 : (uint32_t[]){1, 2, 8, 64, 128, 100, 3, 17}[cs];
            uint32_t k = v == 2 ? 8 : 1 + (uint32_t)cs % (E < 8 ? E : 8);
            int ties = cs % 3 == 1, nans = cs % 4 == 3;
            case_name("%s T=%u E=%u k=%u%s", name, T, E, k, ties ? " ties" : nans ? " nan" : "");
            uint16_t *l16 = xmalloc((size_t)T * E * 2);
            float *lf = xmalloc((size_t)T * E * 4), *rw = xmalloc((size_t)T * k * 4);
            for (size_t i = 0; i < (size_t)T * E; i++) {
                l16[i] = tr_f32_to_f16(ties ? (float)((int)uint_in(0, 3)) * 0.5f : normal() * 2.0f);
                if (nans && i % 7 == 3)
                    l16[i] = i % 2 ? 0x7E00 : 0xFC00;
                lf[i] = tr_f16_to_f32(l16[i]);
            }
            int32_t *rids = xmalloc((size_t)T * k * 4);
            tr_router_cfg cfg = {TR_ROUTER_SOFTMAX_TOPK_F16, E, k, 1, 1.0f, 1, 1, 1.0f};
            tr_error err;
            if (tr_ref_router_topk(&cfg, lf, T, NULL, NULL, 0, rids, rw, NULL, NULL, &err) != TR_OK)
                die("reference router: %s", err.text);
            uint32_t *ids = xmalloc((size_t)T * k * 4), prm[3] = {T, E, k};
            uint16_t *w = xmalloc((size_t)T * k * 2);
            vbuf b[] = {IN(0, l16, (size_t)T * E * 2), OUT(1, ids, (size_t)T * k * 4, F_POISON8),
                        OUT(2, w, (size_t)T * k * 2, F_POISON16), BYTES(3, prm, sizeof prm)};
            if (run2(LIB, name, b, 4, LS(T, 1, 1, 128, 1, 1), ++ci, 2) && cmp_router(name, ids, w, rids, rw, T, k))
                verdict(1, "");
            free(l16), free(lf), free(rw), free(rids), free(ids), free(w);
        }
    }
}

/* ---- hadamard ---------------------------------------------------------------------------------------------------------- */

static uint16_t hval16(int large, uint32_t n)
{
    double r = u01();
    if (large)   /* |x| ≤ 2^15/n keeps the sums finite */
        return tr_f32_to_f16((float)((u01() * 2 - 1) * 32768.0 / n));
    if (r < 0.05)
        return (uint16_t)uint_in(0, 0x3FF) | (u01() < 0.5 ? 0x8000 : 0);   /* subnormal */
    if (r < 0.08)
        return u01() < 0.5 ? 0x8000 : 0;
    return tr_f32_to_f16(normal());
}

static void check_hadamard(void)
{
    static const uint32_t Rs[] = {1, 3, 17, 129};
    int ci = 0;
    /* rows layout */
    static const struct { const char *name; uint32_t n; int kind; } rows[] = {
        {"hadamard_transform_32", 32, 0}, {"hadamard_transform_64", 64, 0}, {"hadamard_transform_128", 128, 0},
        {"hadamard_transform_64_vec", 64, 0}, {"hadamard_transform_64_scaled", 64, 1},
        {"hadamard_inverse_64", 64, 2}, {"test_hadamard_roundtrip_64", 64, 3}};
    for (size_t v = 0; v < sizeof rows / sizeof rows[0]; v++) {
        if (!selected(rows[v].name))
            continue;
        uint32_t n = rows[v].n;
        for (int cs = 0; cs < 8; cs++) {
            uint32_t R = Rs[cs % 4], norm = (uint32_t)(cs / 2 % 2), per = (uint32_t)(cs / 2 % 2);
            int large = cs >= 4;
            if (rows[v].kind == 1)
                case_name("%s R=%u per_element=%u%s", rows[v].name, R, per, large ? " large" : "");
            else
                case_name("%s R=%u normalize=%u%s", rows[v].name, R, norm, large ? " large" : "");
            size_t tot = (size_t)R * n;
            uint16_t *x = xmalloc(tot * 2), *got = xmalloc(tot * 2), *exp = xmalloc(tot * 2);
            uint16_t *sc = xmalloc(tot * 2);
            for (size_t i = 0; i < tot; i++) {
                x[i] = hval16(large, n);
                sc[i] = tr_f32_to_f16((float)(0.5 + u01()));
            }
            tr_hadamard_args a = {n, 0, R, 0, 0, 1, 1, 0, NULL, NULL};
            tr_error err;
            int rc = TR_OK;
            switch (rows[v].kind) {
            case 0: a.ortho = (int)norm; rc = tr_ref_hadamard(&a, x, exp, &err); break;
            case 1:
                if (per)
                    a.prescale = sc;
                else
                    a.postscale = sc;
                rc = tr_ref_hadamard(&a, x, exp, &err);
                break;
            case 2: a.ortho = 0, a.inverse = 1; rc = tr_ref_hadamard(&a, x, exp, &err); break;
            case 3:
                a.ortho = 0;
                rc = tr_ref_hadamard(&a, x, got, &err);
                if (rc == TR_OK)
                    rc = tr_ref_hadamard(&a, got, exp, &err);
                for (size_t i = 0; i < tot; i++)
                    exp[i] = tr_f64_to_f16((double)tr_f16_to_f32(exp[i]) * (1.0 / 64.0));
                break;
            }
            if (rc != TR_OK)
                die("reference hadamard: %s", err.text);
            vbuf b[6];
            int nb = 0;
            b[nb++] = IN(0, x, tot * 2);
            if (rows[v].kind == 1) {
                b[nb++] = IN(1, sc, (per ? tot : R) * 2);
                b[nb++] = OUT(2, got, tot * 2, F_POISON16);
                b[nb++] = U32(3, &R);
                b[nb++] = U32(4, &per);
            } else {
                b[nb++] = OUT(1, got, tot * 2, F_POISON16);
                b[nb++] = U32(2, &R);
                if (rows[v].kind == 0)
                    b[nb++] = U32(3, &norm);
            }
            if (run2(LIB, rows[v].name, b, nb, LS(R, 1, 1, 32, 1, 1), ++ci, 2) && cmp16(rows[v].name, got, exp, tot, n))
                verdict(1, "");
            free(x), free(got), free(exp), free(sc);
        }
    }
    /* cols layout: threads (N, K/n, z), threadgroup (32, 1, 1), dispatchThreads */
    static const struct { const char *name; uint32_t n; int f32; int block_arg; } cols[] = {
        {"hadamard_forward_fast_64", 64, 0, 0},    {"hadamard_forward_fast_128", 128, 0, 0},
        {"hadamard_forward_fast_96", 96, 0, 0},    {"hadamard_forward_fast_160", 160, 0, 0},
        {"hadamard_forward_fast_192", 192, 0, 0},  {"hadamard_inverse_block_64", 64, 0, 0},
        {"hadamard_inverse_block_128", 128, 0, 0}, {"hadamard_inverse_block_96", 96, 0, 0},
        {"hadamard_inverse_block_160", 160, 0, 0}, {"hadamard_inverse_block_192", 192, 0, 0},
        {"hadamard_forward_fast_64_float", 64, 1, 0}, {"hadamard_inverse_block_64_float", 64, 1, 0},
        {"hadamard_forward_block", 64, 0, 1},      {"hadamard_forward_fast", 64, 0, 1},
        {"hadamard_inverse_block", 64, 0, 1}};
    static const uint32_t Ns[] = {1, 7, 64};
    for (size_t v = 0; v < sizeof cols / sizeof cols[0]; v++) {
        if (!selected(cols[v].name))
            continue;
        uint32_t n = cols[v].n, z = (n == 96 || n == 160 || n == 192) ? 2 : 1;
        for (int cs = 0; cs < 6; cs++) {
            uint32_t K = n * (1 + (uint32_t)cs % 3), N = Ns[cs / 2], bs = n;
            int large = cs % 2;
            case_name("%s K=%u N=%u%s", cols[v].name, K, N, large ? " large" : "");
            size_t tot = (size_t)K * N, es = cols[v].f32 ? 4 : 2;
            void *x = xmalloc(tot * es), *got = xmalloc(tot * es), *exp = xmalloc(tot * es);
            for (size_t i = 0; i < tot; i++) {
                if (cols[v].f32)
                    ((float *)x)[i] = large ? (float)ldexp(u01() * 2 - 1, 60) : normal();
                else
                    ((uint16_t *)x)[i] = hval16(large, n);
            }
            tr_hadamard_args a = {n, 1, 0, K, N, !cols[v].f32, 1, strstr(cols[v].name, "inverse") != NULL, NULL, NULL};
            tr_error err;
            if (tr_ref_hadamard(&a, x, exp, &err) != TR_OK)
                die("reference hadamard: %s", err.text);
            vbuf b[] = {IN(0, x, tot * es), OUT(1, got, tot * es, cols[v].f32 ? F_POISON32 : F_POISON16), U32(2, &K),
                        U32(3, &N), U32(4, &bs)};
            launch_spec ls = LS(cdiv(N, 32), K / n, z, 32, 1, 1);   /* threadgroups covering threads (N, K/n, z) */
            if (run2(LIB, cols[v].name, b, cols[v].block_arg ? 5 : 4, ls, ++ci, 2) &&
                (cols[v].f32 ? cmp32(cols[v].name, got, exp, tot, N) : cmp16(cols[v].name, got, exp, tot, N)))
                verdict(1, "");
            free(x), free(got), free(exp);
        }
    }
}

/* ---- grouping, gather, combine, cast ------------------------------------------------------------------------------------- */

static void check_grouping(void)
{
    static const uint32_t Ts[] = {0, 1, 2, 5, 16, 33, 129, 1024};
    static const uint32_t Es[] = {1, 2, 3, 8, 64, 257, 512, 16};
    int ci = 0;
    for (int cs = 0; cs < 8; cs++) {
        uint32_t T = Ts[cs], E = Es[cs], k = 1 + (uint32_t)cs % 8, N = T * k;
        if (QUICK && T > 200)
            continue;
        int32_t *ids = xmalloc(N * 4 + 4);
        uint32_t *uids = xmalloc(N * 4 + 4);
        float *probs = xmalloc(N * 4 + 4);
        for (uint32_t f = 0; f < N; f++) {
            /* skewed: low experts more often, duplicates within a token allowed */
            uint32_t e = (uint32_t)(pow(u01(), 2.0) * E);
            ids[f] = (int32_t)(e < E ? e : E - 1);
            uids[f] = (uint32_t)ids[f];
            probs[f] = (float)u01();
        }
        uint32_t *counts = xmalloc(E * 4), *offs = xmalloc((E + 1) * 4);
        tr_error err;
        if (tr_ref_moe_count(ids, T, k, E, counts, &err) != TR_OK)
            die("reference count: %s", err.text);
        tr_ref_moe_offsets(counts, E, offs);
        tr_grouping g = {0};
        g.sorted_token_ids = xmalloc(N * 4 + 4);
        g.expert_offsets = xmalloc((E + 1) * 4);
        g.sorted_probs = xmalloc(N * 4 + 4);
        g.inverse = xmalloc(N * 4 + 4);
        if (tr_ref_moe_group(ids, probs, T, k, E, &g, &err) != TR_OK)
            die("reference group: %s", err.text);
        static const char *cnt[] = {"moe_count_tokens_per_expert", "moe_compute_expert_counts", "moe_count_experts_atomic"};
        for (int v = 0; v < 3; v++) {
            if (!selected(cnt[v]))
                continue;
            case_name("%s T=%u k=%u E=%u", cnt[v], T, k, E);
            uint32_t *got = xmalloc(E * 4);
            vbuf b[] = {IN(0, uids, N * 4), OUT(1, got, E * 4, F_ZERO), U32(2, &N), U32(3, &E)};
            if (run2(LIB, cnt[v], b, 4, LS(N ? cdiv(N, 256) : 1, 1, 1, 256, 1, 1), ++ci, 2) && cmpu32(cnt[v], got, counts, E))
                verdict(1, "");
            free(got);
        }
        static const char *off[] = {"moe_compute_offsets", "moe_compute_expert_offsets",
                                    "moe_compute_expert_offsets_sequential", "moe_prefix_sum_offsets"};
        for (int v = 0; v < 4; v++) {
            if (!selected(off[v]))
                continue;
            case_name("%s E=%u", off[v], E);
            uint32_t *got = xmalloc((E + 1) * 4);
            vbuf b[] = {IN(0, counts, E * 4), OUT(1, got, (E + 1) * 4, F_POISON8), U32(2, &E)};
            if (run2(LIB, off[v], b, 3, LS(1, 1, 1, 256, 1, 1), ++ci, 2) && cmpu32(off[v], got, offs, E + 1))
                verdict(1, "");
            free(got);
        }
        for (int tok = 0; tok < 2; tok++) {
            const char *name = tok ? "moe_scatter_tokens_to_experts" : "moe_scatter_indices";
            if (!selected(name))
                continue;
            case_name("%s T=%u k=%u E=%u", name, T, k, E);
            uint32_t *st = xmalloc(N * 4 + 4), *inv = xmalloc(N * 4 + 4), *exp_st = xmalloc(N * 4 + 4);
            float *sp = xmalloc(N * 4 + 4);
            for (uint32_t r = 0; r < N; r++)
                exp_st[r] = tok ? g.sorted_token_ids[r] / k : g.sorted_token_ids[r];
            vbuf b[9];
            int nb = 0;
            b[nb++] = IN(0, uids, N * 4);
            b[nb++] = IN(1, probs, N * 4);
            b[nb++] = IN(2, offs, (E + 1) * 4);
            b[nb++] = OUT(3, st, N * 4, F_POISON8);
            b[nb++] = OUT(4, sp, N * 4, F_POISON32);
            b[nb++] = OUT(5, inv, N * 4, F_POISON8);
            if (tok) {
                b[nb++] = U32(6, &T);
                b[nb++] = U32(7, &k);
                b[nb++] = U32(8, &E);
            } else {
                b[nb++] = U32(6, &N);
                b[nb++] = U32(7, &E);
            }
            if (run2(LIB, name, b, nb, LS(cdiv(E, 256), 1, 1, 256, 1, 1), ++ci, 2) &&
                cmpu32("sorted", st, exp_st, N) && cmp32("sorted_probs", sp, g.sorted_probs, N, 1) &&
                cmpu32("inverse", inv, g.inverse, N))
                verdict(1, "");
            free(st), free(inv), free(exp_st), free(sp);
        }
        if (selected("expert_indices_validate")) {
            case_name("expert_indices_validate N=%u E=%u", N, E);
            int32_t *bad = xmalloc(N * 4 + 4), *exp = xmalloc(N * 4 + 4), rep = (int32_t)(E / 2);
            for (uint32_t f = 0; f < N; f++)
                bad[f] = f % 5 == 1 ? -1 : f % 7 == 2 ? (int32_t)E : f % 11 == 3 ? INT32_MAX : ids[f];
            if (tr_ref_validate_expert_ids(bad, N, E, rep, exp, &err) != TR_OK)
                die("reference validate: %s", err.text);
            vbuf b[] = {OUT(0, bad, N * 4, F_COPY), U32(1, &N), U32(2, &E), BYTES(3, &rep, 4)};
            if (run2(LIB, "expert_indices_validate", b, 4, LS(N ? cdiv(N, 256) : 1, 1, 1, 256, 1, 1), ++ci, 2) &&
                cmpu32("expert_indices_validate", (uint32_t *)bad, (uint32_t *)exp, N))
                verdict(1, "");
            free(bad), free(exp);
        }
        free(ids), free(uids), free(probs), free(counts), free(offs);
        free(g.sorted_token_ids), free(g.expert_offsets), free(g.sorted_probs), free(g.inverse);
    }
}

static void check_gather_combine(void)
{
    static const uint32_t Hs[] = {1, 7, 64, 2048};
    int ci = 0;
    for (int cs = 0; cs < 8; cs++) {
        uint32_t T = 1 + (uint32_t)cs * 3, k = 1 + (uint32_t)cs % 8, H = Hs[cs % 4], N = T * k;
        uint16_t *x16 = xmalloc((size_t)T * H * 2);
        for (size_t i = 0; i < (size_t)T * H; i++)
            x16[i] = tr_f32_to_f16(normal());
        uint32_t *tok = xmalloc(N * 4);
        for (uint32_t r = 0; r < N; r++)
            tok[r] = uint_in(0, T - 1);
        uint16_t *exp = xmalloc((size_t)N * H * 2), *got = xmalloc((size_t)N * H * 2);
        tr_error err;
        if (tr_ref_moe_gather(x16, T, (size_t)H * 2, tok, N, exp, &err) != TR_OK)
            die("reference gather: %s", err.text);
        static const char *gn[] = {"moe_gather_for_experts", "moe_gather_for_experts_vec4", "moe_gather_vec8",
                                   "moe_gather_vec8_prefetch"};
        for (int v = 0; v < 4; v++) {
            if (!selected(gn[v]))
                continue;
            case_name("%s N=%u H=%u", gn[v], N, H);
            vbuf b[] = {IN(0, x16, (size_t)T * H * 2), IN(1, tok, N * 4), OUT(2, got, (size_t)N * H * 2, F_POISON16),
                        U32(3, &N), U32(4, &H)};
            if (run2(LIB, gn[v], b, 5, LS(cdiv(H, 256), N, 1, 256, 1, 1), ++ci, 2) && cmp16(gn[v], got, exp, (size_t)N * H, H))
                verdict(1, "");
        }
        if (selected("moe_gather_single_token_simd")) {
            case_name("moe_gather_single_token_simd k=%u H=%u", k, H);
            uint32_t zero = 0;
            for (uint32_t j = 0; j < k; j++)
                tok[j] = zero;
            if (tr_ref_moe_gather(x16, 1, (size_t)H * 2, tok, k, exp, &err) != TR_OK)
                die("reference gather: %s", err.text);
            vbuf b[] = {IN(0, x16, (size_t)H * 2), OUT(1, got, (size_t)k * H * 2, F_POISON16), U32(2, &H), U32(3, &k)};
            if (run2(LIB, "moe_gather_single_token_simd", b, 4, LS(cdiv(H, 256), k, 1, 256, 1, 1), ++ci, 2) &&
                cmp16("moe_gather_single_token_simd", got, exp, (size_t)k * H, H))
                verdict(1, "");
        }
        free(exp), free(got), free(tok), free(x16);
        /* combine: f32 and f16, with and without shared / residual, weights softmax / zero / negative */
        for (int f16 = 0; f16 < 2; f16++) {
            const char *name = f16 ? "moe_combine_weighted" : "moe_combine_fp32_acc";
            if (!selected(name))
                continue;
            uint32_t hs = (uint32_t)(cs & 1), hr = (uint32_t)((cs >> 1) & 1);
            case_name("%s T=%u k=%u H=%u shared=%u residual=%u", name, T, k, H, hs, hr);
            size_t ny = (size_t)T * k * H, no = (size_t)T * H;
            float *y = xmalloc(ny * 4), *w = xmalloc((size_t)T * k * 4), *sh = xmalloc(no * 4), *re = xmalloc(no * 4);
            float *expf_ = xmalloc(no * 4), *gotf = xmalloc(no * 4);
            for (size_t i = 0; i < ny; i++)
                y[i] = f16 ? f16_exact(normal()) : normal();
            for (size_t i = 0; i < (size_t)T * k; i++)
                w[i] = cs % 3 == 2 ? 0.0f : (float)(cs % 3 == 1 ? -u01() : u01());
            if (f16)
                for (size_t i = 0; i < (size_t)T * k; i++)
                    w[i] = f16_exact(w[i]);
            for (size_t i = 0; i < no; i++) {
                sh[i] = f16 ? f16_exact(normal()) : normal();
                re[i] = f16 ? f16_exact(normal() * 4) : normal() * 4;
            }
            tr_ref_moe_combine(y, w, hs ? sh : NULL, hr ? re : NULL, T, k, H, f16 ? TR_ACC_F16 : TR_ACC_F32, expf_);
            if (f16) {
                uint16_t *y16 = to_f16_array(y, ny), *w16 = to_f16_array(w, (size_t)T * k), *s16 = to_f16_array(sh, no);
                uint16_t *r16 = to_f16_array(re, no), *g16 = xmalloc(no * 2);
                vbuf b[] = {IN(0, y16, ny * 2), IN(1, w16, (size_t)T * k * 2), IN(2, s16, no * 2), IN(3, r16, no * 2),
                            OUT(4, g16, no * 2, F_POISON16), U32(5, &T), U32(6, &k), U32(7, &H), U32(8, &hs), U32(9, &hr)};
                if (run2(LIB, name, b, 10, LS(cdiv(H, 256), T, 1, 256, 1, 1), ++ci, 2) &&
                    cmp16(name, g16, (uint16_t *)expf_, no, H))
                    verdict(1, "");
                free(y16), free(w16), free(s16), free(r16), free(g16);
            } else {
                vbuf b[] = {IN(0, y, ny * 4), IN(1, w, (size_t)T * k * 4), IN(2, sh, no * 4), IN(3, re, no * 4),
                            OUT(4, gotf, no * 4, F_POISON32), U32(5, &T), U32(6, &k), U32(7, &H), U32(8, &hs), U32(9, &hr)};
                if (run2(LIB, name, b, 10, LS(cdiv(H, 256), T, 1, 256, 1, 1), ++ci, 2) && cmp32(name, gotf, expf_, no, H))
                    verdict(1, "");
            }
            free(y), free(w), free(sh), free(re), free(expf_), free(gotf);
        }
    }
    static const char *cn[] = {"moe_combine_finalize", "expert_scatter_add_finalize", "moe_finalize_output"};
    for (int v = 0; v < 3; v++) {
        if (!selected(cn[v]))
            continue;
        uint32_t n = 70000;
        float *in = xmalloc(n * 4);
        for (uint32_t i = 0; i < n; i++)   /* random bit patterns: every class of f32 */
            in[i] = tr_bits_f32(i < 65536 ? ((i << 13) ^ (uint32_t)tr_rng_next(&RNG)) & 0xFFFFFFFFu
                                          : (uint32_t)tr_rng_next(&RNG));
        uint16_t *exp = xmalloc(n * 2), *got = xmalloc(n * 2);
        tr_ref_cast_f16(in, n, exp);
        case_name("%s n=%u", cn[v], n);
        vbuf b[] = {IN(0, in, n * 4), OUT(1, got, n * 2, F_POISON16), U32(2, &n)};
        if (run2(LIB, cn[v], b, 3, LS(cdiv(n, 256), 1, 1, 256, 1, 1), ++ci, 2) && cmp16(cn[v], got, exp, n, n))
            verdict(1, "");
        free(in), free(exp), free(got);
    }
}

void verify_families(void)
{
    check_grouping();
    check_gather_combine();
    check_hadamard();
    check_router();
    check_expert_ffn();
    check_moe();
    check_swiglu();
    check_qkv();
    check_gemm();
    time_gemv();
    check_sign_flip();
    check_dequant();
}
