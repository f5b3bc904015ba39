/*
 * check_metal_emu.c — the Metal emulator (METAL.md): the rewriter's rules on small sources, the fixtures of
 * tests/data/metal/emu built once into one library (cached under build/metal-emu or $TRELLIS_METAL_EMU_CACHE) and
 * run against plain C computations of the same orders, every detector (race under two policies, uninitialised
 * threadgroup memory, unwritten outputs, a wrong decode, 40 KiB of threadgroup memory, early return and divergent
 * barriers, a spin-wait, an out-of-bounds store), schedule determinism, binding-family checks, the GEMV timing target
 * and `trellis metal build|list|run`.
 */
#include "tests.h"
#include "cli_run.h"
#include "../cli/conform.h"
#include "../metal/emu/rewrite/rewrite.h"
#include "trellis/alloc.h"
#include "trellis/fp16.h"
#include "trellis/hash.h"
#include "trellis/metal_emu.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FIX "tests/data/metal/emu"

static tr_mtl_lib *LIB;
static char lib_error[1200];
static char cache_dir[1024];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void lib_setup(void)
{
    const char *c = getenv("TRELLIS_METAL_EMU_CACHE");
    snprintf(cache_dir, sizeof cache_dir, "%s", c && *c ? c : "build/metal-emu");
    tr_mtl_build_opts o;
    memset(&o, 0, sizeof o);
    o.cache_dir = cache_dir;
    tr_error err;
    if (tr_mtl_build(FIX, &o, &LIB, &err) != TR_OK) {
        snprintf(lib_error, sizeof lib_error, "%s", err.text);
        LIB = NULL;
    }
}

static void lib_teardown(void)
{
    tr_mtl_close(LIB);
    LIB = NULL;
}

static const tr_mtl_kernel *K(const char *name)
{
    ck_assert_msg(LIB != NULL, "fixture library did not build: %s", lib_error);
    const tr_mtl_kernel *k = tr_mtl_find(LIB, name, NULL);
    if (!k)
        for (size_t i = 0; i < tr_mtl_file_count(LIB); i++)
            if (!tr_mtl_file_at(LIB, i)->ok)
                fprintf(stderr, "%s:\n%s\n", tr_mtl_file_at(LIB, i)->path, tr_mtl_file_at(LIB, i)->log);
    ck_assert_msg(k != NULL, "kernel %s missing", name);
    return k;
}

static tr_mtl_launch L1(uint32_t groups, uint32_t tg, tr_mtl_policy pol, uint64_t seed)
{
    tr_mtl_launch l;
    tr_mtl_launch_init(&l);
    l.grid[0] = groups;
    l.tg[0] = tg;
    l.schedule.policy = pol;
    l.schedule.seed = seed;
    return l;
}

static void run_ok(const char *name, tr_mtl_args *a, const tr_mtl_launch *l, tr_mtl_result *r)
{
    tr_error err;
    ck_assert_int_eq(tr_mtl_dispatch(LIB, K(name), a, l, r, &err), TR_OK);
}

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* The simdgroup reduction order of the shim: xor butterfly 16, 8, 4, 2, 1 over 32 lanes, lane 0's value. */
static float butterfly(const float *v0)
{
    float v[32], w[32];
    memcpy(v, v0, sizeof v);
    for (int o = 16; o; o >>= 1) {
        for (int l = 0; l < 32; l++)
            w[l] = v[l] + v[l ^ o];
        memcpy(v, w, sizeof v);
    }
    return v[0];
}

static float rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xFFFF) / 65536.0f * 4.0f - 2.0f;
}

/* ---- the rewriter ------------------------------------------------------------------------------------------- */

/* Whitespace runs collapsed to one space (the rewriter keeps the source's spacing around what it changes). */
static char *squash(char *s)
{
    char *w = s;
    int sp = 0;
    for (char *p = s; *p; p++) {
        int ws = *p == ' ' || *p == '\t';
        if (ws && sp)
            continue;
        sp = ws;
        *w++ = ws ? ' ' : *p;
    }
    *w = '\0';
    return s;
}

static char *rewrite_ok(const char *src, json_t **meta)
{
    trmtl_rw_out o;
    int rc = trmtl_rewrite(src, strlen(src), "unit.metal", &o);
    ck_assert_msg(rc == 0, "rewrite failed: %s", o.errors ? o.errors : "?");
    char *cpp = squash(strdup(o.cpp));
    if (meta)
        *meta = json_incref(o.meta);
    trmtl_rw_out_free(&o);
    return cpp;
}

START_TEST(test_rewrite_literals)
{
    char *c = rewrite_ok("kernel void k(device float *a [[buffer(0)]]) {\n"
                         "  a[0] = 1.0 + 2.5h + 0.5f + 1e-3 + 0x1p3 + 3 + .25 + 7u + 1.5H;\n}\n", NULL);
    ck_assert_msg(strstr(c, "1.0f + __trmtl_h(0x4100) + 0.5f + 1e-3f + 0x1p3f + 3 + .25f + 7u + __trmtl_h(0x3E00)"),
                  "%s", c);
    ck_assert_msg(strstr(c, "static void k( float *a )"), "%s", c);
    free(c);
    /* correctly rounded half literals, including a decimal that double rounding would get wrong */
    ck_assert_uint_eq(trmtl_half_literal_bits("0.1", 3), 0x2E66);
    ck_assert_uint_eq(trmtl_half_literal_bits("65504", 5), 0x7BFF);
    ck_assert_uint_eq(trmtl_half_literal_bits("65520", 5), 0x7C00);
    ck_assert_uint_eq(trmtl_half_literal_bits("1.00048828125", 13), 0x3C00);                 /* exact tie: even */
    ck_assert_uint_eq(trmtl_half_literal_bits("1.0004882812500000000000001", 27), 0x3C01);   /* just above it */
    ck_assert_uint_eq(trmtl_half_literal_bits("5.9604644775390625e-8", 21), 0x0001);        /* 2^-24 */
}
END_TEST

START_TEST(test_rewrite_swizzles)
{
    char *c = rewrite_ok("struct S { float xz; float ab(); };\n"
                         "void f(thread float4 &v, thread float4 *p, thread S &s) {\n"
                         "  v.xy = p->zw; float3 c = v.rgb; float q = s.xz + s.ab() + v.x + v.w; v.wzyx = v; }\n",
                         NULL);
    ck_assert_msg(strstr(c, "v.template __sw<0,1>() = p->template __sw<2,3>();"), "%s", c);
    ck_assert_msg(strstr(c, "float3 c = v.template __sw<0,1,2>();"), "%s", c);
    ck_assert_msg(strstr(c, "float q = s.xz + s.ab() + v.x + v.w;"), "%s", c);  /* struct members stay */
    ck_assert_msg(strstr(c, "v.template __sw<3,2,1,0>() = v;"), "%s", c);
    ck_assert_msg(strstr(c, "void f( float4 &v, float4 *p, S &s)"), "%s", c);
    free(c);
}
END_TEST

START_TEST(test_rewrite_threadgroup)
{
    json_t *m;
    char *c = rewrite_ok("kernel void k(device float *o [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {\n"
                         "  threadgroup float tile[32][33];\n"
                         "  threadgroup float *p = &tile[0][0];\n"
                         "  threadgroup int a, b[4];\n"
                         "  threadgroup float4 v[8] __attribute__((aligned(64)));\n"
                         "  o[i] = tile[i][0] + *p + a + b[0] + v[0].x;\n}\n", &m);
    ck_assert_msg(strstr(c, "\n auto &tile = *::metal::__trmtl::tg_alloc< float [32][33], 0>(__trmtl_sites[0]);\n"),
                  "%s", c);
    ck_assert_msg(strstr(c, "\n float *p = &tile[0][0];\n"), "%s", c);
    ck_assert_msg(strstr(c, "\n auto &a = *::metal::__trmtl::tg_alloc< int , 0>(__trmtl_sites[1]); "
                            "auto &b = *::metal::__trmtl::tg_alloc<int [4], 0>(__trmtl_sites[2]);\n"), "%s", c);
    ck_assert_msg(strstr(c, "\n auto &v = *::metal::__trmtl::tg_alloc< float4 [8] , 64>(__trmtl_sites[3]);\n"),
                  "%s", c);
    ck_assert_msg(strstr(c, "static uint32_t __trmtl_sites[4];"), "%s", c);
    json_t *tg = json_object_get(m, "threadgroup_decls");
    ck_assert_int_eq((int)json_array_size(tg), 4);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(tg, 0), "type")), "float[32][33]");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(tg, 2), "name")), "b");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(tg, 2), "type")), "int[4]");
    ck_assert_int_eq((int)json_integer_value(json_object_get(json_array_get(tg, 0), "line")), 2);
    json_decref(m);
    free(c);
}
END_TEST

START_TEST(test_rewrite_attributes)
{
    json_t *m;
    char *c = rewrite_ok(
        "struct P { uint n; };\n"
        "[[max_total_threads_per_threadgroup(256)]] kernel void k(device const half *a [[buffer(2)]],\n"
        "   device float *b, constant P &p, texture2d<float, access::read> t [[texture(1)]], sampler s,\n"
        "   threadgroup float *sh [[threadgroup(0)]], uint3 g [[thread_position_in_grid]],\n"
        "   ushort l [[thread_index_in_simdgroup]]) { b[0] = a[0] + p.n + sh[0] + l + g.x; }\n"
        "kernel void v(float4 pos [[stage_in]]) {}\n"
        "[[kernel]] void w(device int *x [[ buffer(0) ]]) { x[0] = 1; }\n"
        "vertex float4 vs(uint id [[vertex_id]]) { return float4(0); }\n", &m);
    json_t *ks = json_object_get(m, "kernels");
    ck_assert_int_eq((int)json_array_size(ks), 3);
    json_t *k0 = json_array_get(ks, 0), *ps = json_object_get(k0, "params");
    ck_assert_int_eq((int)json_array_size(ps), 8);
    /* explicit buffer(2); b and p take the first free indices 0 and 1; texture 1; sampler 0; threadgroup 0 */
    const int want_index[] = {2, 0, 1, 1, 0, 0};
    const char *want_kind[] = {"buffer", "buffer", "buffer", "texture", "sampler", "threadgroup", "builtin", "builtin"};
    for (int i = 0; i < 8; i++) {
        json_t *p = json_array_get(ps, (size_t)i);
        ck_assert_str_eq(json_string_value(json_object_get(p, "kind")), want_kind[i]);
        if (i < 6)
            ck_assert_int_eq((int)json_integer_value(json_object_get(p, "index")), want_index[i]);
    }
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ps, 0), "elem_type")), "half");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ps, 0), "address_space")), "device");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ps, 2), "address_space")), "constant");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ps, 2), "passing")), "reference");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ps, 3), "access")), "read");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ps, 6), "builtin")), "thread_position_in_grid");
    /* [[stage_in]] is not emulated: the kernel is listed as unsupported and gets no launcher */
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(json_array_get(ks, 1), "unsupported")),
                                 "stage_in"));
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ks, 2), "name")), "w");
    /* the vertex function is skipped, attributes dropped, [[kernel]] became static */
    ck_assert_int_eq((int)json_array_size(json_object_get(m, "skipped_functions")), 1);
    ck_assert_msg(!strstr(c, "max_total_threads") && !strstr(c, "vertex_id") && !strstr(c, "float4 vs"), "%s", c);
    ck_assert_msg(strstr(c, "static void w( int *x )"), "%s", c);
    ck_assert_msg(strstr(c, "static void k( const half *a ,\n float *b, const P &p, texture2d<float, access::read> t , "
                            "sampler s,\n float *sh , uint3 g ,\n ushort l ) {"), "%s", c);
    ck_assert_msg(strstr(c, "::metal::__trmtl::bind<::metal::__trmtl::arg_t<__F, 0>, 0, 2>(__L)"), "%s", c);
    json_decref(m);
    free(c);
}
END_TEST

START_TEST(test_rewrite_address_space_overload)
{
    const char *src = "float get(device const float *p) { return p[0]; }\n"
                      "float get(threadgroup const float *p) { return p[1]; }\n"
                      "float get(device const half *p) { return p[0]; }\n";
    trmtl_rw_out o;
    ck_assert_int_eq(trmtl_rewrite(src, strlen(src), "ov.metal", &o), -1);
    ck_assert_int_eq(o.nerrors, 1);
    ck_assert_msg(strstr(o.errors, "ov.metal:2: error:") && strstr(o.errors, "differ only in address space") &&
                  strstr(o.errors, "get(device const float *)") && strstr(o.errors, "get(threadgroup const float *)") &&
                  strstr(o.errors, "(line 1)"), "%s", o.errors);
    trmtl_rw_out_free(&o);
    /* member functions qualified by address space are the same case */
    const char *src2 = "struct A { float v; float get() device { return v; } float get() thread { return v; } };\n";
    ck_assert_int_eq(trmtl_rewrite(src2, strlen(src2), "ov2.metal", &o), -1);
    trmtl_rw_out_free(&o);
}
END_TEST

START_TEST(test_rewrite_constants)
{
    json_t *m;
    char *c = rewrite_ok("constant float eps = 1e-5;\n"
                         "constant bool use_b [[function_constant(3)]];\n"
                         "constant int width [[function_constant(4)]];\n"
                         "constant int w2 = is_function_constant_defined(width) ? width * 2 : 8;\n"
                         "constant const float lut[2] = {0.5, 1};\n"
                         "typedef half h4e __attribute__((ext_vector_type(4)));\n"
                         "kernel void k(device float *o [[buffer(0)]]) { constant float t[2] = {1.0, 2.0};\n"
                         "  if (use_b) o[0] = eps + lut[0] + t[1] + w2; }\n", &m);
    ck_assert_msg(strstr(c, "const float eps = 1e-5f;"), "%s", c);
    ck_assert_msg(strstr(c, "static bool use_b ; static bool __trmtl_fcdef_use_b = false;"), "%s", c);
    ck_assert_msg(strstr(c, "\n const float lut[2] = {0.5f, 1};"), "%s", c);
    ck_assert_msg(strstr(c, "static int w2"), "%s", c);
    ck_assert_msg(!strstr(c, "const const"), "%s", c);
    ck_assert_msg(strstr(c, "typedef ::metal::vec<half , 4> h4e ;"), "%s", c);
    ck_assert_msg(strstr(c, "static const float t[2] = {1.0f, 2.0f};"), "%s", c);
    ck_assert_msg(strstr(c, "w2 = ((__trmtl_fcdef_width) ? width * 2 : 8);"), "%s", c);
    json_t *fc = json_object_get(m, "function_constants");
    ck_assert_int_eq((int)json_array_size(fc), 2);
    ck_assert_int_eq((int)json_integer_value(json_object_get(json_array_get(fc, 1), "index")), 4);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(fc, 0), "type")), "bool");
    json_decref(m);
    free(c);
}
END_TEST

/* ---- building ------------------------------------------------------------------------------------------------- */

START_TEST(test_build_fixtures)
{
    ck_assert_msg(LIB != NULL, "%s", lib_error);
    ck_assert_uint_eq(tr_mtl_file_count(LIB), 16);
    for (size_t i = 0; i < tr_mtl_file_count(LIB); i++) {
        const tr_mtl_file *f = tr_mtl_file_at(LIB, i);
        ck_assert_msg(f->ok, "%s failed:\n%s", f->path, f->log);
        if (i)
            ck_assert(strcmp(tr_mtl_file_at(LIB, i - 1)->path, f->path) < 0);
    }
    ck_assert_uint_eq(tr_mtl_kernel_count(LIB), 25);
    const tr_mtl_kernel *k = K("helpers:implicit_mix");
    ck_assert_int_eq(k->params[0].index, 1);
    ck_assert_int_eq(k->params[1].index, 0);
    ck_assert_int_eq(k->params[2].index, 2);
    ck_assert_int_eq(k->params[1].explicit_index, 0);
    k = K("gemv_f32");
    ck_assert_str_eq(k->qualified, "gemv:gemv_f32");
    ck_assert_int_eq(k->params[0].dtype, TR_DT_F32);
    ck_assert_int_eq(k->params[0].is_const, 1);
    ck_assert_uint_eq(k->params[0].elem_size, 4);
    k = K("mma_gemm");
    ck_assert_int_eq(k->params[3].vec_width, 3);
    ck_assert_uint_eq(k->params[3].elem_size, 16);     /* uint3 is 16 bytes, as in MSL */
    k = K("tg_uninit");
    ck_assert_int_eq(k->n_tg_decls, 1);
    ck_assert_str_eq(k->tg_decls[0].type, "float[64]");
    k = K("fc_affine");
    ck_assert_int_eq(k->n_function_constants, 2);
    ck_assert_str_eq(k->fc_names[1], "scale");
    ck_assert_int_eq(k->fc_indices[1], 1);
    k = K("scale_copy_f16");
    ck_assert_int_eq(k->params[0].dtype, TR_DT_F16);
    k = K("tex_read");
    ck_assert_int_eq(k->params[0].kind, TR_MTL_TEXTURE);
    ck_assert_int_eq(k->params[0].tex_access, 1);
    ck_assert_int_eq(k->params[0].dtype, TR_DT_F32);
    /* a second build of the same folder comes from the cache */
    tr_mtl_lib *again = NULL;
    tr_mtl_build_opts o;
    memset(&o, 0, sizeof o);
    o.cache_dir = cache_dir;
    tr_error err;
    ck_assert_int_eq(tr_mtl_build(FIX, &o, &again, &err), TR_OK);
    for (size_t i = 0; i < tr_mtl_file_count(again); i++)
        ck_assert(tr_mtl_file_at(again, i)->cached);
    tr_mtl_close(again);
}
END_TEST

START_TEST(test_build_errors)
{
    const char *dir = tr_test_tmpdir();
    char sub[1100], cache[1100];
    snprintf(sub, sizeof sub, "%s/bad_metal", dir);
    snprintf(cache, sizeof cache, "%s/cache", dir);
    mkdir(sub, 0755);
    const char *syntax = "#include <metal_stdlib>\nusing namespace metal;\n\nkernel void k(device float *o "
                         "[[buffer(0)]]) {\n  o[0] = undefined_name;\n}\n";
    const char *overload = "float g(device float *p) { return *p; }\nfloat g(threadgroup float *p) { return *p; }\n";
    const char *fine = "#include <metal_stdlib>\nusing namespace metal;\n"
                       "kernel void ok(device float *o [[buffer(0)]]) { o[0] = 1.0; }\n"
                       "kernel void apply_sign_flips(device half *w [[buffer(0)]], device const float *su [[buffer(1)]],\n"
                       "    device const float *sv [[buffer(2)]], constant uint &K [[buffer(3)]],\n"
                       "    constant uint &N [[buffer(4)]], uint2 gid [[thread_position_in_grid]]) {\n"
                       "  if (gid.x >= N || gid.y >= K) return;\n"
                       "  uint i = gid.y * N + gid.x;\n"
                       "  w[i] = half(float(w[i]) * (su[gid.y] * sv[gid.x]));\n}\n";
    tr_test_write(sub, "a_syntax.metal", syntax, strlen(syntax));
    tr_test_write(sub, "b_overload.metal", overload, strlen(overload));
    tr_test_write(sub, "c_fine.metal", fine, strlen(fine));
    tr_mtl_build_opts o;
    memset(&o, 0, sizeof o);
    o.cache_dir = cache;
    tr_mtl_lib *lib = NULL;
    tr_error err;
    double t0 = now_s();
    ck_assert_int_eq(tr_mtl_build(sub, &o, &lib, &err), TR_OK);
    double t = now_s() - t0;
    ck_assert_uint_eq(tr_mtl_file_count(lib), 3);
    const tr_mtl_file *a = tr_mtl_file_at(lib, 0), *b = tr_mtl_file_at(lib, 1), *c = tr_mtl_file_at(lib, 2);
    /* the compiler's error names the .metal file and line */
    ck_assert_int_eq(a->ok, 0);
    ck_assert_msg(strstr(a->log, "a_syntax.metal:5") && strstr(a->log, "undefined_name"), "%s", a->log);
    ck_assert_int_eq(b->ok, 0);
    ck_assert_msg(strstr(b->log, "differ only in address space"), "%s", b->log);
    ck_assert_msg(c->ok, "%s", c->log);
    ck_assert_ptr_nonnull(tr_mtl_find(lib, "c_fine:ok", NULL));
    ck_assert_ptr_null(tr_mtl_find(lib, "k", NULL));
    /* a KERNELS.md §4.2 symbol checked against its binding family (0 w f16 in/out, 1 su, 2 sv f32, 3 K, 4 N) */
    const tr_mtl_kernel *sf = tr_mtl_find(lib, "apply_sign_flips", NULL);
    ck_assert_ptr_nonnull(sf);
    const tr_mtl_slot fam[] = {{TR_MTL_BUFFER, 0, TR_DT_F16, 1}, {TR_MTL_BUFFER, 1, TR_DT_F32, 0},
                               {TR_MTL_BUFFER, 2, TR_DT_F32, 0}, {TR_MTL_BUFFER, 3, TR_DT_U32, 0},
                               {TR_MTL_BUFFER, 4, TR_DT_U32, 0}};
    char why[256];
    ck_assert_msg(tr_mtl_check_binding(sf, fam, 5, why, sizeof why) == 0, "%s", why);
    /* su = sv = -1 negates exactly: KERNELS.md §4.2's math on the emulator */
    uint16_t w[4 * 8];
    float su[4], sv[8];
    uint32_t K4 = 4, N8 = 8;
    uint64_t sd = 21;
    for (int i = 0; i < 32; i++)
        w[i] = tr_f32_to_f16(rnd(&sd));
    for (int i = 0; i < 4; i++)
        su[i] = i % 2 ? -1.0f : 1.0f;
    for (int i = 0; i < 8; i++)
        sv[i] = i % 3 ? 1.0f : -1.0f;
    uint16_t w0[32];
    memcpy(w0, w, sizeof w);
    tr_mtl_args *ar = tr_mtl_args_new();
    tr_mtl_set_buffer(ar, 0, w, sizeof w, &err);
    tr_mtl_set_buffer(ar, 1, su, sizeof su, &err);
    tr_mtl_set_buffer(ar, 2, sv, sizeof sv, &err);
    tr_mtl_set_bytes(ar, 3, &K4, 4, &err);
    tr_mtl_set_bytes(ar, 4, &N8, 4, &err);
    tr_mtl_launch ls;
    tr_mtl_launch_init(&ls);
    ls.grid[0] = 8;
    ls.grid[1] = 4;
    ls.tg[0] = 8;
    ls.tg[1] = 4;
    ls.dispatch_threads = 1;
    tr_mtl_result rs;
    ck_assert_int_eq(tr_mtl_dispatch(lib, sf, ar, &ls, &rs, &err), TR_OK);
    for (int k = 0; k < 4; k++)
        for (int n = 0; n < 8; n++)
            ck_assert_uint_eq(w[k * 8 + n], tr_f32_to_f16(tr_f16_to_f32(w0[k * 8 + n]) * (su[k] * sv[n])));
    tr_mtl_result_free(&rs);
    tr_mtl_args_free(ar);
    char fine_path[1200];
    snprintf(fine_path, sizeof fine_path, "%s/c_fine.metal", sub);
    cli_result cr = cli_run("metal", "list", fine_path, "--out", cache, NULL);
    ck_assert_int_eq(cr.status, 0);
    ck_assert_msg(strstr(cr.out, "op: sign_flip (KERNELS.md §4.2)") && strstr(cr.out, "family: 0 w in/out"), "%s",
                  cr.out);
    cli_result_free(&cr);
    /* one kernel file compiles well within METAL.md §8's 3 s (generous bound for loaded machines) */
    ck_assert_msg(c->seconds < 10.0 && t < 30.0, "compile took %.2f s", c->seconds);
    tr_mtl_close(lib);
    /* failures are cached too */
    ck_assert_int_eq(tr_mtl_build(sub, &o, &lib, &err), TR_OK);
    ck_assert(tr_mtl_file_at(lib, 0)->cached && !tr_mtl_file_at(lib, 0)->ok);
    ck_assert_ptr_nonnull(strstr(tr_mtl_file_at(lib, 0)->log, "undefined_name"));
    tr_mtl_close(lib);
    ck_assert_int_eq(tr_mtl_build("tests/data/metal/emu/nonexistent", &o, &lib, &err), TR_E_IO);
}
END_TEST

/* ---- correct kernels ---------------------------------------------------------------------------------------- */

START_TEST(test_saxpy_half_swizzle)
{
    enum { N = 100 };
    float x[N], y[N], ye[N];
    uint64_t s = 1;
    for (int i = 0; i < N; i++) {
        x[i] = rnd(&s);
        y[i] = ye[i] = rnd(&s);
    }
    float a = 1.75f;
    uint32_t n = N;
    for (int i = 0; i < N; i++)
        ye[i] = a * x[i] + ye[i];
    tr_mtl_args *ar = tr_mtl_args_new();
    tr_error err;
    tr_mtl_set_buffer(ar, 0, x, sizeof x, &err);
    tr_mtl_set_buffer(ar, 1, y, sizeof y, &err);
    tr_mtl_set_bytes(ar, 2, &a, 4, &err);
    tr_mtl_set_bytes(ar, 3, &n, 4, &err);
    tr_mtl_launch l = L1(4, 32, TR_MTL_SG_GREEDY, 0);
    tr_mtl_result r;
    run_ok("saxpy", ar, &l, &r);
    ck_assert_int_eq(r.status, TR_MTL_OK);
    ck_assert_int_eq(memcmp(y, ye, sizeof y), 0);
    ck_assert_uint_eq(r.stats.lanes, 128);
    ck_assert_uint_eq(r.stats.context_switches, 0);    /* no scheduling point: every lane ran straight through */
    tr_mtl_result_free(&r);

    /* half: every operation rounded to binary16 */
    uint16_t hin[64], hout[64];
    for (int i = 0; i < 64; i++)
        hin[i] = tr_f32_to_f16(rnd(&s));
    hin[0] = 0x3C01;               /* 1 + 2^-10: * 0.5 exact, + 1 rounds (tie to even) */
    tr_mtl_args_clear(ar);
    tr_mtl_set_buffer(ar, 0, hin, sizeof hin, &err);
    tr_mtl_set_buffer(ar, 1, hout, sizeof hout, &err);
    tr_mtl_launch l2 = L1(2, 32, TR_MTL_FORWARD, 0);
    run_ok("half_affine", ar, &l2, &r);
    for (int i = 0; i < 64; i++) {
        uint16_t m = tr_f32_to_f16(tr_f16_to_f32(hin[i]) * 0.5f);
        uint16_t e = tr_f32_to_f16(tr_f16_to_f32(m) + 1.0f);
        ck_assert_msg(hout[i] == e, "half_affine[%d]: 0x%04x != 0x%04x", i, hout[i], e);
    }
    ck_assert_uint_eq(hout[0], 0x3E00);
    tr_mtl_result_free(&r);

    /* swizzles on float4 (16-byte vectors) */
    float v4[8][4], o4[8][4];
    for (int i = 0; i < 8; i++)
        for (int c = 0; c < 4; c++)
            v4[i][c] = rnd(&s);
    tr_mtl_args_clear(ar);
    tr_mtl_set_buffer(ar, 0, v4, sizeof v4, &err);
    tr_mtl_set_buffer(ar, 1, o4, sizeof o4, &err);
    tr_mtl_launch l3 = L1(1, 8, TR_MTL_REVERSE, 0);
    run_ok("swizzle4", ar, &l3, &r);
    for (int i = 0; i < 8; i++) {
        float *v = v4[i];
        /* r.zw = v.xy; r.x = p.x; r.y = z*w; r.zw = r.wz; out = r.xywz */
        float rr[4] = {v[0] + v[1], v[2] * v[3], v[1], v[0]};
        float e[4] = {rr[0], rr[1], rr[3], rr[2]};
        ck_assert_int_eq(memcmp(o4[i], e, sizeof e), 0);
    }
    tr_mtl_result_free(&r);

    /* template instances and an ext_vector_type typedef */
    float fin[32], fout[32];
    for (int i = 0; i < 32; i++)
        fin[i] = rnd(&s);
    tr_mtl_args_clear(ar);
    tr_mtl_set_buffer(ar, 0, fin, sizeof fin, &err);
    tr_mtl_set_buffer(ar, 1, fout, sizeof fout, &err);
    tr_mtl_launch l4 = L1(1, 32, TR_MTL_SG_GREEDY, 0);
    run_ok("scale_copy_f32", ar, &l4, &r);
    for (int i = 0; i < 32; i++)
        ck_assert(fout[i] == fin[i] * 3.0f);
    tr_mtl_result_free(&r);
    run_ok("scale_copy_f16", ar, &l4, &r);    /* reinterprets the floats as 64 halves: only 32 are written */
    const uint16_t *hi = (const uint16_t *)fin, *ho = (const uint16_t *)fout;
    for (int i = 0; i < 32; i++)
        ck_assert_uint_eq(ho[i], tr_f32_to_f16(tr_f16_to_f32(hi[i]) * 2.0f));
    tr_mtl_result_free(&r);
    tr_mtl_args_clear(ar);
    tr_mtl_set_buffer(ar, 0, fin, sizeof fin, &err);
    tr_mtl_set_buffer(ar, 1, fout, sizeof fout, &err);
    tr_mtl_launch l5 = L1(1, 8, TR_MTL_SG_GREEDY, 0);
    run_ok("ext_vec", ar, &l5, &r);
    for (int i = 0; i < 8; i++) {
        const float *v = fin + 4 * i;
        float e = v[0] + v[1] * 2.0f + v[2] * 3.0f + v[3] * 4.0f;
        ck_assert(fbits(fout[i]) == fbits(e));
    }
    tr_mtl_result_free(&r);
    tr_mtl_args_free(ar);
}
END_TEST

START_TEST(test_reduction_and_collectives)
{
    enum { TG = 256, G = 6 };
    static float in[TG * G], out[G];
    uint64_t s = 7;
    for (int i = 0; i < TG * G; i++)
        in[i] = rnd(&s);
    tr_mtl_args *a = tr_mtl_args_new();
    tr_error err;
    tr_mtl_set_buffer(a, 0, in, sizeof in, &err);
    tr_mtl_set_buffer(a, 1, out, sizeof out, &err);
    const tr_mtl_policy pols[] = {TR_MTL_FORWARD, TR_MTL_REVERSE, TR_MTL_SG_GREEDY, TR_MTL_RANDOM};
    for (int p = 0; p < 4; p++) {
        memset(out, 0, sizeof out);
        tr_mtl_launch l = L1(G, TG, pols[p], 99);
        l.n_workers = 2;
        tr_mtl_result r;
        run_ok("reduce_sum", a, &l, &r);
        ck_assert_int_eq(r.status, TR_MTL_OK);
        for (int g = 0; g < G; g++) {
            float part[32] = {0};
            for (int w = 0; w < TG / 32; w++)
                part[w] = butterfly(in + g * TG + w * 32);
            float e = butterfly(part);
            ck_assert_msg(fbits(out[g]) == fbits(e), "policy %d group %d: %a != %a", p, g, out[g], e);
        }
        ck_assert_uint_eq(r.stats.barriers, G);
        ck_assert_uint_eq(r.stats.rendezvous, G * (TG / 32 + 1));
        ck_assert_uint_eq(r.stats.partial_collectives, 0);
        ck_assert_uint_eq(r.stats.peak_tg_bytes, 32 * 4);
        ck_assert(r.stats.context_switches > 0);
        ck_assert_uint_eq(r.ndiags, 0);
        tr_mtl_result_free(&r);
    }
    /* prefix sum (ascending lanes), xor shuffle, max over a simdgroup of 32 and a partial one of 8 */
    static float x[40], o1[40], o2[40], o3[40];
    for (int i = 0; i < 40; i++)
        x[i] = rnd(&s);
    tr_mtl_args_clear(a);
    tr_mtl_set_buffer(a, 0, x, sizeof x, &err);
    tr_mtl_set_buffer(a, 1, o1, sizeof o1, &err);
    tr_mtl_set_buffer(a, 2, o2, sizeof o2, &err);
    tr_mtl_set_buffer(a, 3, o3, sizeof o3, &err);
    tr_mtl_launch l = L1(1, 40, TR_MTL_RANDOM, 3);
    tr_mtl_result r;
    run_ok("simd_ops", a, &l, &r);
    for (int sg = 0; sg < 2; sg++) {
        int n = sg ? 8 : 32;
        float acc = -0.0f, mx = -INFINITY;
        for (int i = 0; i < n; i++) {
            int g = sg * 32 + i;
            acc = acc + x[g];
            ck_assert(fbits(o1[g]) == fbits(acc));
            int src = i ^ 1;
            ck_assert(fbits(o2[g]) == fbits(x[sg * 32 + src]));
            mx = fmaxf(mx, x[g]);
        }
        for (int i = 0; i < n; i++)
            ck_assert(o3[sg * 32 + i] == mx);
    }
    ck_assert_uint_eq(r.stats.partial_collectives, 0);   /* the 8-lane simdgroup has all its lanes */
    tr_mtl_result_free(&r);
    /* a divergent collective resolves at quiescence with the waiting lanes (the others are the identity) */
    tr_mtl_args_clear(a);
    tr_mtl_set_buffer(a, 0, x, sizeof x, &err);
    tr_mtl_set_buffer(a, 1, o1, sizeof o1, &err);
    tr_mtl_launch l2 = L1(1, 40, TR_MTL_FORWARD, 0);
    run_ok("half_lanes_sum", a, &l2, &r);
    ck_assert_int_eq(r.status, TR_MTL_OK);
    for (int sg = 0; sg < 2; sg++) {
        float v[32];
        for (int i = 0; i < 32; i++)
            v[i] = i < 16 && sg * 32 + i < 40 ? x[sg * 32 + i] : -0.0f;
        float e = butterfly(v);
        for (int i = 0; i < 32 && sg * 32 + i < 40; i++)
            ck_assert_msg(fbits(o1[sg * 32 + i]) == fbits(i < 16 ? e : 0.0f), "lane %d", sg * 32 + i);
    }
    ck_assert_uint_eq(r.stats.partial_collectives, 1);   /* simdgroup 1 has 8 lanes, all of them < 16 */
    ck_assert_uint_eq(r.stats.barriers, 1);
    tr_mtl_result_free(&r);
    tr_mtl_args_free(a);
}
END_TEST

START_TEST(test_simdgroup_matrix)
{
    enum { M = 16, N = 24, Kd = 32 };
    static float A[M * Kd], B[Kd * N], C[M * N];
    uint64_t s = 11;
    for (int i = 0; i < M * Kd; i++)
        A[i] = rnd(&s);
    for (int i = 0; i < Kd * N; i++)
        B[i] = rnd(&s);
    uint32_t dims[4] = {M, N, Kd, 0};
    tr_mtl_args *a = tr_mtl_args_new();
    tr_error err;
    tr_mtl_set_buffer(a, 0, A, sizeof A, &err);
    tr_mtl_set_buffer(a, 1, B, sizeof B, &err);
    tr_mtl_set_buffer(a, 2, C, sizeof C, &err);
    tr_mtl_set_bytes(a, 3, dims, sizeof dims, &err);
    tr_mtl_launch l;
    tr_mtl_launch_init(&l);
    l.grid[0] = N / 8;
    l.grid[1] = M / 8;
    l.tg[0] = 32;
    tr_mtl_result r;
    run_ok("mma_gemm", a, &l, &r);
    ck_assert_int_eq(r.status, TR_MTL_OK);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int k = 0; k < Kd; k++)
                acc = fmaf(A[i * Kd + k], B[k * N + j], acc);
            ck_assert_msg(fbits(C[i * N + j]) == fbits(acc), "C[%d][%d] %a != %a", i, j, C[i * N + j], acc);
        }
    uint64_t mmas = (uint64_t)(M / 8) * (N / 8) * (Kd / 8);
    ck_assert_uint_eq(r.stats.mma_computed, mmas);          /* once per simdgroup ... */
    ck_assert_uint_eq(r.stats.mma_reused, mmas * 31);       /* ... and reused by the other 31 lanes */
    ck_assert_uint_eq(r.ndiags, 0);
    tr_mtl_result_free(&r);
    tr_mtl_args_free(a);
}
END_TEST

START_TEST(test_texture_read)
{
    enum { W = 8, H = 4 };
    float t[H][W], out[H * W], lin[H * W];
    uint64_t s = 5;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            t[y][x] = rnd(&s);
    tr_mtl_texture tex = {.data = t, .type = 2, .format = TR_MTL_R32F, .width = W, .height = H};
    tr_mtl_args *a = tr_mtl_args_new();
    tr_error err;
    ck_assert_int_eq(tr_mtl_set_texture(a, 0, &tex, &err), TR_OK);
    ck_assert_int_eq(tr_mtl_set_texture(a, 1, &tex, &err), TR_OK);
    tr_mtl_set_buffer(a, 0, out, sizeof out, &err);
    tr_mtl_set_buffer(a, 1, lin, sizeof lin, &err);
    tr_mtl_launch l;
    tr_mtl_launch_init(&l);
    l.grid[0] = 1;
    l.grid[1] = 1;
    l.tg[0] = W;
    l.tg[1] = H;
    tr_mtl_result r;
    run_ok("tex_read", a, &l, &r);
    ck_assert_int_eq(r.status, TR_MTL_OK);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            ck_assert(out[y * W + x] == t[y][x] + t[y][x]);
            float p = t[y][x], q = t[y][x + 1 < W ? x + 1 : W - 1];
            float e = p + 0.5f * (q - p);
            ck_assert_msg(fabsf(lin[y * W + x] - e) <= 1e-6f * (1.0f + fabsf(e)), "lin %d %d", x, y);
        }
    tr_mtl_result_free(&r);
    /* 1-D (RG32F, bound sampler, normalized coordinates) and 2-D array textures */
    float t1[8][2], arr[2][1][4], o8[8];
    for (int i = 0; i < 8; i++) {
        t1[i][0] = rnd(&s);
        t1[i][1] = rnd(&s);
    }
    for (int i = 0; i < 8; i++)
        arr[i / 4][0][i % 4] = rnd(&s);
    tr_mtl_texture tx1 = {.data = t1, .type = 1, .format = TR_MTL_RG32F, .width = 8};
    tr_mtl_texture txa = {.data = arr, .type = 3, .format = TR_MTL_R32F, .width = 4, .height = 1, .array_length = 2};
    tr_mtl_sampler smp = {.linear = 0, .address = 0, .normalized = 1};
    tr_mtl_args_clear(a);
    ck_assert_int_eq(tr_mtl_set_texture(a, 0, &tx1, &err), TR_OK);
    ck_assert_int_eq(tr_mtl_set_texture(a, 1, &txa, &err), TR_OK);
    ck_assert_int_eq(tr_mtl_set_sampler(a, 0, &smp, &err), TR_OK);
    tr_mtl_set_buffer(a, 0, o8, sizeof o8, &err);
    tr_mtl_launch l2 = L1(1, 8, TR_MTL_SG_GREEDY, 0);
    run_ok("tex_1d_array", a, &l2, &r);
    ck_assert_int_eq(r.status, TR_MTL_OK);
    for (int i = 0; i < 8; i++)
        ck_assert(fbits(o8[i]) == fbits(t1[i][1] + arr[i / 4][0][i % 4]));
    tr_mtl_result_free(&r);
    tr_mtl_args_free(a);
}
END_TEST

START_TEST(test_function_constants_and_helpers)
{
    enum { N = 64 };
    float in[N], bias[N], out[N];
    uint64_t s = 9;
    for (int i = 0; i < N; i++) {
        in[i] = rnd(&s);
        bias[i] = rnd(&s);
    }
    tr_mtl_args *a = tr_mtl_args_new();
    tr_error err;
    tr_mtl_launch l = L1(2, 32, TR_MTL_SG_GREEDY, 0);
    tr_mtl_result r;
    for (int variant = 0; variant < 3; variant++) {
        tr_mtl_args_clear(a);
        tr_mtl_set_buffer(a, 0, in, sizeof in, &err);
        tr_mtl_set_buffer(a, 1, bias, sizeof bias, &err);
        tr_mtl_set_buffer(a, 2, out, sizeof out, &err);
        unsigned char t = 1, f = 0;
        float sc = 2.5f;
        if (variant == 0) {
            tr_mtl_set_function_constant(a, 0, &t, 1, &err);
            tr_mtl_set_function_constant(a, 1, &sc, 4, &err);
        } else if (variant == 1)
            tr_mtl_set_function_constant(a, 0, &f, 1, &err);
        run_ok("fc_affine", a, &l, &r);
        for (int i = 0; i < N; i++) {
            float e = variant == 0 ? in[i] * sc + bias[i] : in[i];
            ck_assert_msg(fbits(out[i]) == fbits(e), "variant %d [%d]", variant, i);
        }
        tr_mtl_result_free(&r);
    }
    struct { float alpha; uint32_t n; } p = {0.75f, 50};
    for (int i = 0; i < N; i++)
        out[i] = -1.0f;
    tr_mtl_args_clear(a);
    tr_mtl_set_buffer(a, 0, in, sizeof in, &err);
    tr_mtl_set_buffer(a, 1, out, sizeof out, &err);
    tr_mtl_set_bytes(a, 2, &p, sizeof p, &err);
    run_ok("helper_silu", a, &l, &r);
    const float lut[4] = {0.0f, 0.25f, 0.5f, 0.75f};
    for (int i = 0; i < N; i++) {
        float e = i < 50 ? (in[i] / (1.0f + expf(-in[i]))) * p.alpha + lut[i % 4] : -1.0f;
        ck_assert_msg(fbits(out[i]) == fbits(e), "helper_silu[%d] %a != %a", i, out[i], e);
    }
    tr_mtl_result_free(&r);
    /* implicit indices: a = buffer 1, b = buffer 0, c = buffer 2 */
    float b0[N], a1[N], c2[N];
    for (int i = 0; i < N; i++) {
        b0[i] = rnd(&s);
        c2[i] = rnd(&s);
    }
    tr_mtl_args_clear(a);
    tr_mtl_set_buffer(a, 0, b0, sizeof b0, &err);
    tr_mtl_set_buffer(a, 1, a1, sizeof a1, &err);
    tr_mtl_set_buffer(a, 2, c2, sizeof c2, &err);
    run_ok("implicit_mix", a, &l, &r);
    for (int i = 0; i < N; i++)
        ck_assert(fbits(a1[i]) == fbits(b0[i] + c2[i]));
    tr_mtl_result_free(&r);
    /* a missing binding is an invalid launch, named */
    tr_mtl_args_clear(a);
    tr_mtl_set_buffer(a, 0, b0, sizeof b0, &err);
    ck_assert_int_eq(tr_mtl_dispatch(LIB, K("implicit_mix"), a, &l, &r, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(r.status, TR_MTL_INVALID);
    ck_assert_msg(strstr(r.detail, "parameter a (buffer 1) has no binding"), "%s", r.detail);
    tr_mtl_result_free(&r);
    tr_mtl_args_free(a);
}
END_TEST

/* ---- detectors ------------------------------------------------------------------------------------------------- */

/* tg_race under one policy; returns the output (static buffer per slot). */
static float *race_run(tr_mtl_policy pol, uint64_t seed, int slot)
{
    static float in[256], out[4][256];
    for (int i = 0; i < 256; i++)
        in[i] = (float)i;
    memset(out[slot], 0, sizeof out[slot]);
    tr_mtl_args *a = tr_mtl_args_new();
    tr_error err;
    tr_mtl_set_buffer(a, 0, in, sizeof in, &err);
    tr_mtl_set_buffer(a, 1, out[slot], sizeof out[slot], &err);
    tr_mtl_launch l = L1(1, 256, pol, seed);
    tr_mtl_result r;
    run_ok("tg_race", a, &l, &r);
    ck_assert_int_eq(r.status, TR_MTL_OK);
    tr_mtl_result_free(&r);
    tr_mtl_args_free(a);
    return out[slot];
}

START_TEST(test_race_is_schedule_dependent)
{
    float *fw = race_run(TR_MTL_FORWARD, 0, 0), *rv = race_run(TR_MTL_REVERSE, 0, 1);
    /* FORWARD: a lane reads its neighbour's slot before the neighbour ran: the 0xFF poison (NaN) */
    ck_assert_uint_eq(fbits(fw[0]), 0xFFFFFFFFu);
    ck_assert(fw[255] == 0.0f);
    /* REVERSE: the neighbour already wrote */
    ck_assert(rv[0] == 1.0f);
    ck_assert_uint_eq(fbits(rv[255]), 0xFFFFFFFFu);
    ck_assert(memcmp(fw, rv, 256 * sizeof(float)) != 0);
    /* the conformance runner's default pair (SG_GREEDY and RANDOM(case seed)) also disagrees */
    float *sg = race_run(TR_MTL_SG_GREEDY, 0, 2), *rn = race_run(TR_MTL_RANDOM, 0x1234, 3);
    ck_assert(memcmp(sg, rn, 256 * sizeof(float)) != 0);
}
END_TEST

START_TEST(test_schedule_determinism)
{
    float a[256], b[256], c[256];
    memcpy(a, race_run(TR_MTL_RANDOM, 7, 0), sizeof a);
    memcpy(b, race_run(TR_MTL_RANDOM, 7, 1), sizeof b);
    memcpy(c, race_run(TR_MTL_RANDOM, 8, 2), sizeof c);
    ck_assert_int_eq(memcmp(a, b, sizeof a), 0);      /* same policy and seed: same output */
    ck_assert(memcmp(a, c, sizeof a) != 0);
    memcpy(a, race_run(TR_MTL_SG_GREEDY, 0, 0), sizeof a);
    memcpy(b, race_run(TR_MTL_SG_GREEDY, 0, 1), sizeof b);
    ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
    /* schedules parse and print */
    tr_mtl_schedule sc;
    char buf[64];
    ck_assert_int_eq(tr_mtl_schedule_parse("RANDOM(42)", &sc), 0);
    ck_assert_str_eq(tr_mtl_schedule_name(&sc, buf, sizeof buf), "RANDOM(42)");
    ck_assert_int_eq(tr_mtl_schedule_parse("random:0x10", &sc), 0);
    ck_assert_uint_eq(sc.seed, 16);
    ck_assert_int_eq(tr_mtl_schedule_parse("sg_greedy", &sc), 0);
    ck_assert_int_eq(sc.policy, TR_MTL_SG_GREEDY);
    ck_assert_int_eq(tr_mtl_schedule_parse("random(", &sc), -1);
    ck_assert_int_eq(tr_mtl_schedule_parse("sideways", &sc), -1);
}
END_TEST

START_TEST(test_uninitialised_threadgroup_read)
{
    float in[64], out[64];
    for (int i = 0; i < 64; i++)
        in[i] = (float)i + 0.5f;
    tr_mtl_args *a = tr_mtl_args_new();
    tr_error err;
    tr_mtl_set_buffer(a, 0, in, sizeof in, &err);
    tr_mtl_set_buffer(a, 1, out, sizeof out, &err);
    tr_mtl_launch l = L1(1, 64, TR_MTL_SG_GREEDY, 0);
    tr_mtl_result r;
    run_ok("tg_uninit", a, &l, &r);
    for (int i = 0; i < 64; i++) {
        if (i < 32)
            ck_assert(out[i] == in[i]);
        else
            ck_assert_msg(fbits(out[i]) == 0xFFFFFFFFu && isnan(out[i]), "out[%d] = %a", i, out[i]);
    }
    tr_mtl_result_free(&r);
    /* per-array poison (bisection): poisoning only this array keeps the NaNs, poisoning another one clears them */
    const tr_mtl_kernel *k = K("tg_uninit");
    l.poison_site = k->tg_decls[0].site;
    run_ok("tg_uninit", a, &l, &r);
    ck_assert_uint_eq(fbits(out[40]), 0xFFFFFFFFu);
    tr_mtl_result_free(&r);
    l.poison_site = k->tg_decls[0].site + 1;
    run_ok("tg_uninit", a, &l, &r);
    ck_assert_uint_eq(fbits(out[40]), 0);
    tr_mtl_result_free(&r);
    tr_mtl_args_free(a);
}
END_TEST

START_TEST(test_unwritten_columns)
{
    enum { ROWS = 4, COLS = 10 };
    float in[ROWS * COLS], out[ROWS * COLS];
    for (int i = 0; i < ROWS * COLS; i++) {
        in[i] = (float)i;
        uint32_t p = 0x7FDEAD5Au;
        memcpy(&out[i], &p, 4);      /* the runner's f32 poison */
    }
    uint32_t cols = COLS;
    tr_mtl_args *a = tr_mtl_args_new();
    tr_error err;
    tr_mtl_set_buffer(a, 0, in, sizeof in, &err);
    tr_mtl_set_buffer(a, 1, out, sizeof out, &err);
    tr_mtl_set_bytes(a, 2, &cols, 4, &err);
    tr_mtl_launch l = L1(1, ROWS, TR_MTL_SG_GREEDY, 0);
    tr_mtl_result r;
    run_ok("copy_rows", a, &l, &r);
    int unwritten = 0;
    for (int i = 0; i < ROWS * COLS; i++) {
        if (fbits(out[i]) == 0x7FDEAD5Au) {
            unwritten++;
            ck_assert_int_ge(i % COLS, COLS - 2);
        } else
            ck_assert(out[i] == in[i]);
    }
    ck_assert_int_eq(unwritten, ROWS * 2);
    tr_mtl_result_free(&r);
    tr_mtl_args_free(a);
}
END_TEST

START_TEST(test_wrong_grid_decode_runs)
{
    enum { N = 64 };
    uint8_t idx[N];
    float grid[8];
    uint16_t out[N];
    uint32_t bits = 3;
    for (int i = 0; i < N; i++)
        idx[i] = (uint8_t)(i * 37 + 5);
    for (int i = 0; i < 8; i++)
        grid[i] = (float)i - 3.5f;
    tr_mtl_args *a = tr_mtl_args_new();
    tr_error err;
    tr_mtl_set_buffer(a, 0, idx, sizeof idx, &err);
    tr_mtl_set_buffer(a, 1, grid, sizeof grid, &err);
    tr_mtl_set_buffer(a, 2, out, sizeof out, &err);
    tr_mtl_set_bytes(a, 3, &bits, 4, &err);
    tr_mtl_launch l = L1(2, 32, TR_MTL_SG_GREEDY, 0);
    tr_mtl_result r;
    run_ok("decode_grid", a, &l, &r);
    ck_assert_int_eq(r.status, TR_MTL_OK);
    int wrong = 0;
    for (int i = 0; i < N; i++) {
        unsigned k = idx[i] & 7u;
        ck_assert_uint_eq(out[i], tr_f32_to_f16(grid[k >> 1]));    /* what the defective kernel computes */
        wrong += out[i] != tr_f32_to_f16(grid[k]);                 /* and it is wrong against the right decode */
    }
    ck_assert_int_gt(wrong, N / 2);
    tr_mtl_result_free(&r);
    tr_mtl_args_free(a);
}
END_TEST

START_TEST(test_threadgroup_memory_limit)
{
    float out[64];
    tr_mtl_args *a = tr_mtl_args_new();
    tr_error err;
    tr_mtl_set_buffer(a, 0, out, sizeof out, &err);
    tr_mtl_launch l = L1(2, 32, TR_MTL_SG_GREEDY, 0);
    tr_mtl_result r;
    run_ok("tg_too_big", a, &l, &r);
    ck_assert_int_eq(r.status, TR_MTL_RESOURCE_ERROR);
    ck_assert_uint_ge(r.stats.peak_tg_bytes, 40960);
    ck_assert_msg(strstr(r.detail, "32 KiB") && strstr(r.detail, "big") && strstr(r.detail, "tg40k.metal"), "%s",
                  r.detail);
    tr_mtl_result_free(&r);
    /* dynamic threadgroup memory over the limit, and a threadgroup over 1024 threads */
    tr_mtl_launch l2 = L1(1, 2048, TR_MTL_SG_GREEDY, 0);
    run_ok("tg_too_big", a, &l2, &r);
    ck_assert_int_eq(r.status, TR_MTL_RESOURCE_ERROR);
    ck_assert_ptr_nonnull(strstr(r.detail, "1024"));
    tr_mtl_result_free(&r);
    tr_mtl_args_free(a);
}
END_TEST

START_TEST(test_barrier_diagnostics)
{
    enum { N = 40 };
    float in[64], out[64];
    for (int i = 0; i < 64; i++) {
        in[i] = (float)i;
        out[i] = -1.0f;
    }
    uint32_t n = N;
    tr_mtl_args *a = tr_mtl_args_new();
    tr_error err;
    tr_mtl_set_buffer(a, 0, in, sizeof in, &err);
    tr_mtl_set_buffer(a, 1, out, sizeof out, &err);
    tr_mtl_set_bytes(a, 2, &n, 4, &err);
    tr_mtl_launch l = L1(1, 64, TR_MTL_FORWARD, 0);
    tr_mtl_result r;
    run_ok("early_exit", a, &l, &r);
    ck_assert_int_eq(r.status, TR_MTL_OK);
    ck_assert_uint_eq(r.ndiags, 1);
    ck_assert_int_eq(r.diags[0].code, TR_MTL_D_EARLY_RETURN);
    ck_assert_msg(strstr(r.diags[0].site, "early_return.metal:16:") && strstr(r.diags[0].text, "24 of 64 lanes"),
                  "%s / %s", r.diags[0].site, r.diags[0].text);
    ck_assert_str_eq(tr_mtl_diag_name(r.diags[0].code), "early_return_before_barrier");
    for (int i = 0; i < 64; i++)
        ck_assert(out[i] == (i < N ? 2.0f * in[i] : -1.0f));
    tr_mtl_result_free(&r);
    tr_mtl_args_clear(a);
    tr_mtl_set_buffer(a, 0, out, sizeof out, &err);
    tr_mtl_launch l2 = L1(3, 64, TR_MTL_SG_GREEDY, 0);
    run_ok("divergent", a, &l2, &r);
    ck_assert_uint_eq(r.ndiags, 1);
    ck_assert_int_eq(r.diags[0].code, TR_MTL_D_DIVERGENT_BARRIER);
    ck_assert_uint_eq(r.diags[0].count, 3);       /* once per threadgroup */
    ck_assert_msg(strstr(r.diags[0].site, "early_return.metal:25:") && strstr(r.diags[0].site, "early_return.metal:27:"),
                  "%s", r.diags[0].site);
    tr_mtl_result_free(&r);
    tr_mtl_args_free(a);
}
END_TEST

START_TEST(test_spin_timeout)
{
    uint32_t flag = 0;
    float out[64];
    tr_mtl_args *a = tr_mtl_args_new();
    tr_error err;
    tr_mtl_set_buffer(a, 0, &flag, 4, &err);
    tr_mtl_set_buffer(a, 1, out, sizeof out, &err);
    tr_mtl_launch l = L1(4, 16, TR_MTL_SG_GREEDY, 0);
    l.timeout_s = tr_test_under_valgrind() ? 2.0 : 0.3;
    tr_mtl_result r;
    double t0 = now_s();
    run_ok("spin_forever", a, &l, &r);
    double t = now_s() - t0;
    ck_assert_int_eq(r.status, TR_MTL_TIMEOUT);
    ck_assert_msg(strstr(r.detail, "watchdog"), "%s", r.detail);
    ck_assert_msg(t < l.timeout_s + 5.0, "returned after %.2f s", t);
    tr_mtl_result_free(&r);
    /* the library is usable after an aborted launch */
    flag = 1;
    run_ok("spin_forever", a, &l, &r);
    ck_assert_int_eq(r.status, TR_MTL_OK);
    ck_assert(out[63] == 1.0f);
    tr_mtl_result_free(&r);
    tr_mtl_args_free(a);
}
END_TEST

START_TEST(test_out_of_bounds_store)
{
    enum { N = 48 };
    float in[N];
    for (int i = 0; i < N; i++)
        in[i] = (float)i;
    uint8_t *g = conform_guarded_alloc(N * sizeof(float));
    ck_assert_ptr_nonnull(g);
    tr_mtl_args *a = tr_mtl_args_new();
    tr_error err;
    tr_mtl_set_buffer(a, 0, in, sizeof in, &err);
    tr_mtl_set_buffer(a, 1, g + CONFORM_GUARD_BYTES, N * sizeof(float), &err);
    tr_mtl_launch l = L1(3, 16, TR_MTL_SG_GREEDY, 0);
    tr_mtl_result r;
    run_ok("oob_store", a, &l, &r);
    long where = 0;
    ck_assert_int_eq(conform_guards_intact(g, N * sizeof(float), &where), 0);
    ck_assert_int_eq(where, N * (long)sizeof(float));
    tr_mtl_result_free(&r);
    tr_mtl_args_free(a);
    tr_dealloc(g);
}
END_TEST

START_TEST(test_gemv_target)
{
    /* METAL.md §8: an emulated 2048×1536 GEMV (M = 1) in ≤ 0.5 s on 2 cores */
    int valgrind = tr_test_under_valgrind();
    uint32_t Kd = valgrind ? 256 : 2048, N = valgrind ? 64 : 1536;
    float *W = malloc(sizeof(float) * Kd * N), *x = malloc(sizeof(float) * Kd), *y = calloc(N, sizeof(float));
    float *y2 = NULL;
    uint64_t s = 17;
    for (size_t i = 0; i < (size_t)Kd * N; i++)
        W[i] = rnd(&s);
    for (uint32_t i = 0; i < Kd; i++)
        x[i] = rnd(&s);
    tr_mtl_args *a = tr_mtl_args_new();
    tr_error err;
    tr_mtl_set_buffer(a, 0, W, sizeof(float) * Kd * N, &err);
    tr_mtl_set_buffer(a, 1, x, sizeof(float) * Kd, &err);
    tr_mtl_set_buffer(a, 2, y, sizeof(float) * N, &err);
    tr_mtl_set_bytes(a, 3, &Kd, 4, &err);
    tr_mtl_set_bytes(a, 4, &N, 4, &err);
    tr_mtl_launch l = L1(N / 8, 256, TR_MTL_SG_GREEDY, 0);
    l.n_workers = 2;
    tr_mtl_result r;
    double t0 = now_s();
    run_ok("gemv_f32", a, &l, &r);
    double t = now_s() - t0;
    ck_assert_int_eq(r.status, TR_MTL_OK);
    if (!valgrind)
        ck_assert_msg(t <= 0.5, "GEMV 2048x1536 took %.3f s (target 0.5 s)", t);
    for (uint32_t n = 0; n < N; n++) {
        float q[32] = {0};
        for (uint32_t k = 0; k < Kd; k++)
            q[k % 32] = fmaf(W[(size_t)n * Kd + k], x[k], q[k % 32]);
        ck_assert_msg(fbits(y[n]) == fbits(butterfly(q)), "y[%u]", n);
    }
    ck_assert_uint_eq(r.stats.rendezvous, N);
    tr_mtl_result_free(&r);
    /* the ucontext fallback gives the same result (not under ASan, which does not follow swapcontext) */
#if !defined(__SANITIZE_ADDRESS__)
    setenv("TRELLIS_METAL_EMU_FIBER", "ucontext", 1);
    y2 = calloc(N, sizeof(float));
    tr_mtl_set_buffer(a, 2, y2, sizeof(float) * N, &err);
    run_ok("gemv_f32", a, &l, &r);
    unsetenv("TRELLIS_METAL_EMU_FIBER");
    ck_assert_int_eq(r.status, TR_MTL_OK);
    ck_assert_int_eq(memcmp(y, y2, sizeof(float) * N), 0);
    tr_mtl_result_free(&r);
#endif
    tr_mtl_args_free(a);
    free(W);
    free(x);
    free(y);
    free(y2);
}
END_TEST

START_TEST(test_binding_family)
{
    const tr_mtl_kernel *k = K("gemv_f32");
    const tr_mtl_slot fam[] = {{TR_MTL_BUFFER, 0, TR_DT_F32, 0}, {TR_MTL_BUFFER, 1, TR_DT_F32, 0},
                               {TR_MTL_BUFFER, 2, TR_DT_F32, 1}, {TR_MTL_BUFFER, 3, TR_DT_U32, 0},
                               {TR_MTL_BUFFER, 4, TR_DT_U32, 0}};
    char why[256];
    ck_assert_int_eq(tr_mtl_check_binding(k, fam, 5, why, sizeof why), 0);
    tr_mtl_slot bad[5];
    memcpy(bad, fam, sizeof fam);
    bad[1].dtype = TR_DT_F16;
    ck_assert_int_eq(tr_mtl_check_binding(k, bad, 5, why, sizeof why), 1);
    ck_assert_msg(strstr(why, "buffer 1 (x)") && strstr(why, "declares float"), "%s", why);
    memcpy(bad, fam, sizeof fam);
    bad[0].writable = 1;
    ck_assert_int_eq(tr_mtl_check_binding(k, bad, 5, why, sizeof why), 1);
    ck_assert_ptr_nonnull(strstr(why, "const in the kernel"));
    ck_assert_int_eq(tr_mtl_check_binding(k, fam, 4, why, sizeof why), 1);
    ck_assert_msg(strstr(why, "buffer 4 (N): declared by the kernel but not part of the family"), "%s", why);
    const tr_mtl_slot tex[] = {{TR_MTL_BUFFER, 0, -1, -1}, {TR_MTL_BUFFER, 1, -1, -1}, {TR_MTL_BUFFER, 7, -1, -1}};
    ck_assert_int_eq(tr_mtl_check_binding(K("tex_read"), tex, 3, why, sizeof why), 1);
    ck_assert_msg(strstr(why, "buffer 7: not declared"), "%s", why);
    const tr_mtl_slot tex2[] = {{TR_MTL_BUFFER, 0, -1, -1}, {TR_MTL_BUFFER, 1, -1, -1}, {TR_MTL_BUFFER, 2, -1, -1}};
    ck_assert_int_eq(tr_mtl_check_binding(K("tex_read"), tex2, 3, why, sizeof why), 1);
    int amb = 0;
    ck_assert_ptr_null(tr_mtl_find(LIB, "nonexistent_kernel", &amb));
    ck_assert_int_eq(amb, 0);
    ck_assert_ptr_nonnull(tr_mtl_param_at(k, TR_MTL_BUFFER, 4));
    ck_assert_ptr_null(tr_mtl_param_at(k, TR_MTL_TEXTURE, 0));
}
END_TEST

/* ---- the command line ------------------------------------------------------------------------------------------ */

static void write_buffer_entry(json_t *bufs, const char *dir, const char *name, const char *role, const void *data,
                               size_t bytes, int n)
{
    char hex[65];
    tr_sha256_hex(data, bytes, hex);
    char file[64];
    snprintf(file, sizeof file, "%s.bin", name);
    tr_test_write(dir, file, data, bytes);
    json_t *b = json_object(), *shape = json_array();
    json_array_append_new(shape, json_integer(n));
    json_object_set_new(b, "name", json_string(name));
    json_object_set_new(b, "role", json_string(role));
    json_object_set_new(b, "dtype", json_string("F16"));
    json_object_set_new(b, "shape", shape);
    json_object_set_new(b, "file", json_string(file));
    json_object_set_new(b, "sha256", json_string(hex));
    if (strcmp(role, "output") == 0)
        json_object_set_new(b, "accumulating", json_false());
    json_array_append_new(bufs, b);
}

START_TEST(test_cli_metal)
{
    ck_assert_msg(LIB != NULL, "%s", lib_error);
    cli_result r = cli_run("metal", "list", FIX, "--out", cache_dir, "--json", "-", NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    json_error_t je;
    json_t *doc = json_loads(r.out, 0, &je);
    ck_assert_ptr_nonnull(doc);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "schema")), "trellis.metal_emu_kernels/1");
    ck_assert_int_eq((int)json_array_size(json_object_get(doc, "kernels")), 25);
    json_decref(doc);
    cli_result_free(&r);
    r = cli_run("metal", "list", FIX "/reduction.metal", "--out", cache_dir, NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert_msg(strstr(r.out, "reduction:reduce_sum") && strstr(r.out, "threadgroup    partial") &&
                  strstr(r.out, "[[simdgroup_index_in_threadgroup]]") && strstr(r.out, "op: unmapped"), "%.3000s", r.out);
    cli_result_free(&r);
    r = cli_run("metal", "build", FIX "/gemv.metal", "--out", cache_dir, NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert_msg(strstr(r.out, "1 .metal files, 1 built (1 cached), 0 failed, 1 kernels"), "%.3000s", r.out);
    cli_result_free(&r);
    r = cli_run("metal", "rewrite", FIX "/uninit.metal", "--json", "-", NULL);
    ck_assert_int_eq(r.status, 0);
    doc = json_loads(r.out, 0, &je);
    ck_assert_ptr_nonnull(doc);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "schema")), "trellis.metal_emu_module/1");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(doc, "threadgroup_decls"), 0),
                                                       "name")), "scratch");
    json_decref(doc);
    cli_result_free(&r);
    r = cli_run("metal", "rewrite", FIX "/uninit.metal", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "auto &scratch = *::metal::__trmtl::tg_alloc<"));
    cli_result_free(&r);
    r = cli_run("metal", "frobnicate", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);

    /* run: a capture case of half_affine, outputs compared with the recorded ones and re-emitted */
    const char *tmp = tr_test_tmpdir();
    char cap[1100], emit[1100];
    snprintf(cap, sizeof cap, "%s/cap_half", tmp);
    snprintf(emit, sizeof emit, "%s/emit_half", tmp);
    mkdir(cap, 0755);
    enum { N = 48 };
    uint16_t in[N];
    uint8_t *outg = conform_guarded_alloc(N * 2);
    uint16_t *o16 = (uint16_t *)(outg + CONFORM_GUARD_BYTES);
    uint64_t s = 3;
    for (int i = 0; i < N; i++) {
        in[i] = tr_f32_to_f16(rnd(&s));
        uint16_t m = tr_f32_to_f16(tr_f16_to_f32(in[i]) * 0.5f);
        o16[i] = tr_f32_to_f16(tr_f16_to_f32(m) + 1.0f);
    }
    json_t *m = json_object(), *cases = json_array(), *c = json_object(), *bufs = json_array();
    json_object_set_new(m, "schema", json_string("trellis.capture/1"));
    json_object_set_new(m, "guard_bytes", json_integer(CONFORM_GUARD_BYTES));
    char pat[16];
    snprintf(pat, sizeof pat, "0x%08x", CONFORM_GUARD_PATTERN);
    json_object_set_new(m, "guard_pattern", json_string(pat));
    json_object_set_new(c, "case", json_string("emu/half_affine/n=48/0"));
    json_object_set_new(c, "op", json_string("emu"));
    json_object_set_new(c, "variant", json_string("half_affine"));
    json_object_set_new(c, "params", json_object());
    json_object_set_new(c, "seed", json_integer(1));
    json_object_set_new(c, "metal_math", json_null());
    write_buffer_entry(bufs, cap, "in", "input", in, sizeof in, N);
    write_buffer_entry(bufs, cap, "out", "output", outg, N * 2 + 2 * CONFORM_GUARD_BYTES, N);
    json_object_set_new(c, "buffers", bufs);
    json_array_append_new(cases, c);
    json_object_set_new(m, "cases", cases);
    char *text = json_dumps(m, JSON_INDENT(2));
    tr_test_write(cap, "manifest.json", text, strlen(text));
    free(text);
    json_decref(m);
    r = cli_run("metal", "run", "half_affine", "--metal-dir", FIX, "--out", cache_dir, "--capture", cap, "--grid",
                "48", "--tg", "32", "--dispatch-threads", "--schedule", "forward", "--schedule", "random:5",
                "--emit-capture", emit, NULL);
    ck_assert_msg(r.status == 0, "%s\n%s", r.out, r.err);
    ck_assert_msg(strstr(squash(r.out), "output out 0 of 48 elements differ from the capture"), "%.3000s", r.out);
    cli_result_free(&r);
    json_t *em = NULL;
    tr_error err;
    ck_assert_int_eq(capture_read_manifest(emit, &em, &err), TR_OK);
    json_t *ec = json_array_get(json_object_get(em, "cases"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(ec, "metal_emu"), "kernel")),
                     "elementwise:half_affine");
    tr_bufs bi = {0}, bo = {0};
    uint8_t *gg[64] = {0};
    ck_assert_int_eq(capture_load_case(emit, ec, &bi, &bo, gg, &err), TR_OK);
    ck_assert_int_eq(memcmp(bo.v[0]->data, o16, N * 2), 0);
    bo.v[0]->data = NULL;
    tr_dealloc(gg[0]);
    tr_bufs_free(&bi);
    tr_bufs_free(&bo);
    json_decref(em);
    /* a wrong recorded output is reported (exit 1), and a missing scalar is a usage error */
    o16[3] ^= 1;
    json_t *bufs2;
    {
        json_t *mm = NULL;
        ck_assert_int_eq(capture_read_manifest(cap, &mm, &err), TR_OK);
        bufs2 = json_object_get(json_array_get(json_object_get(mm, "cases"), 0), "buffers");
        json_array_remove(bufs2, 1);
        write_buffer_entry(bufs2, cap, "out", "output", outg, N * 2 + 2 * CONFORM_GUARD_BYTES, N);
        text = json_dumps(mm, JSON_INDENT(2));
        tr_test_write(cap, "manifest.json", text, strlen(text));
        free(text);
        json_decref(mm);
    }
    r = cli_run("metal", "run", "half_affine", "--metal-dir", FIX, "--out", cache_dir, "--capture", cap, "--grid",
                "48", "--tg", "32", "--dispatch-threads", "--json", "-", NULL);
    ck_assert_int_eq(r.status, 1);
    doc = json_loads(r.out, 0, &je);
    ck_assert_ptr_nonnull(doc);
    json_t *o0 = json_array_get(json_object_get(json_array_get(json_object_get(doc, "runs"), 0), "outputs"), 0);
    ck_assert_int_eq((int)json_integer_value(json_object_get(o0, "mismatches_vs_capture")), 1);
    ck_assert_int_eq((int)json_integer_value(json_object_get(o0, "first_mismatch")), 3);
    json_decref(doc);
    cli_result_free(&r);
    r = cli_run("metal", "run", "saxpy", "--metal-dir", FIX, "--out", cache_dir, "--capture", cap, "--grid", "48",
                "--tg", "32", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_msg(strstr(r.err, "parameter x (buffer 0"), "%.3000s", r.err);
    cli_result_free(&r);
    tr_dealloc(outg);
}
END_TEST

Suite *suite_metal_emu(void)
{
    Suite *s = suite_create("metal_emu");
    TCase *rw = tcase_create("rewrite");
    tcase_add_test(rw, test_rewrite_literals);
    tcase_add_test(rw, test_rewrite_swizzles);
    tcase_add_test(rw, test_rewrite_threadgroup);
    tcase_add_test(rw, test_rewrite_attributes);
    tcase_add_test(rw, test_rewrite_address_space_overload);
    tcase_add_test(rw, test_rewrite_constants);
    suite_add_tcase(s, rw);
    TCase *tc = tcase_create("emulator");
    tcase_set_timeout(tc, 180);
    tcase_add_unchecked_fixture(tc, lib_setup, lib_teardown);
    tcase_add_test(tc, test_build_fixtures);
    tcase_add_test(tc, test_build_errors);
    tcase_add_test(tc, test_saxpy_half_swizzle);
    tcase_add_test(tc, test_reduction_and_collectives);
    tcase_add_test(tc, test_simdgroup_matrix);
    tcase_add_test(tc, test_texture_read);
    tcase_add_test(tc, test_function_constants_and_helpers);
    tcase_add_test(tc, test_race_is_schedule_dependent);
    tcase_add_test(tc, test_schedule_determinism);
    tcase_add_test(tc, test_uninitialised_threadgroup_read);
    tcase_add_test(tc, test_unwritten_columns);
    tcase_add_test(tc, test_wrong_grid_decode_runs);
    tcase_add_test(tc, test_threadgroup_memory_limit);
    tcase_add_test(tc, test_barrier_diagnostics);
    tcase_add_test(tc, test_spin_timeout);
    tcase_add_test(tc, test_out_of_bounds_store);
    tcase_add_test(tc, test_gemv_target);
    tcase_add_test(tc, test_binding_family);
    tcase_add_test(tc, test_cli_metal);
    suite_add_tcase(s, tc);
    return s;
}
