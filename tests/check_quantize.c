/*
 * check_quantize.c — the reference quantizer and `trellis quantize` (FORMAT.md §6.4, §6.5): the sign check value,
 * hand-computed absmax and mse cases, a brute-force re-implementation of the formulas compared bit for bit (indices,
 * scales, SSE), hadamard128 and its fallback, non-finite input, the --bits SPEC grammar with every error message, the
 * greedy avg=X allocation against an independent replay, and the CLI end to end on a tiny synthetic HF checkpoint.
 */
#include "tests.h"
#include "cli_run.h"
#include "trellis/alloc.h"
#include "trellis/checkpoint.h"
#include "trellis/fileio.h"
#include "trellis/fp16.h"
#include "trellis/pack.h"
#include "trellis/quantize.h"
#include "trellis/rng.h"
#include "trellis/safetensors.h"

#include <dirent.h>
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- independent re-implementation of FORMAT.md §5, §6.4, §6.5 --------------------------------------------------- */

/* grid_b[j] = fl32(h_j · c), h_j = j − (2^b − 1)/2 */
static float tq_grid(unsigned b, unsigned j)
{
    float c = tr_bits_f32(0x3F9F31EBu);
    float h = (float)j - (float)((1u << b) - 1) * 0.5f;
    return h * c;
}

/* argmin_j fl32(|x − grid[j]|), j upward, strict < */
static unsigned tq_argmin(float x, unsigned b)
{
    unsigned best = 0;
    for (unsigned j = 1; j < (1u << b); j++)
        if (fabsf(x - tq_grid(b, j)) < fabsf(x - tq_grid(b, best)))
            best = j;
    return best;
}

/* max(fl32(v / grid[L−1]), 2^-24) */
static float tq_scale(float v, unsigned b)
{
    float s = v / tq_grid(b, (1u << b) - 1);
    return s < 0x1p-24f ? 0x1p-24f : s;
}

/* f32(RNh(fl32(grid[q]·S))) */
static float tq_what(unsigned b, unsigned q, float S) { return tr_f16_to_f32(tr_f32_to_f16(tq_grid(b, q) * S)); }

static uint64_t tq_splitmix(uint64_t *st)
{
    uint64_t z = (*st += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void tq_signs(const char *name, uint64_t seed, uint32_t I, float *su)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    uint64_t st = seed ^ h;
    for (uint32_t i = 0; i < I; i++)
        su[i] = tq_splitmix(&st) >> 63 ? -1.0f : 1.0f;
}

/* The Sylvester butterfly of §6.3 written out, then ·fl32(1/sqrt(128)). */
static void tq_hadamard(float *a, uint32_t n)
{
    for (uint32_t base = 0; base < n; base += 128) {
        float *v = a + base;
        for (unsigned h = 1; h < 128; h *= 2)
            for (unsigned j = 0; j < 128; j++)
                if ((j & h) == 0) {
                    float u = v[j], w = v[j + h];
                    v[j] = u + w;
                    v[j + h] = u - w;
                }
        for (unsigned j = 0; j < 128; j++)
            v[j] = v[j] * tr_bits_f32(0x3DB504F3u);
    }
}

/* One group: its scale (absmax, or the mse clip search) and indices. */
static float tq_group(const float *w, uint32_t n, unsigned b, int mse, uint8_t *q)
{
    float m = 0;
    for (uint32_t i = 0; i < n; i++)
        if (fabsf(w[i]) > m)
            m = fabsf(w[i]);
    float bestS = 0;
    double best = 0;
    for (unsigned j = 0; j < (mse ? 32u : 1u); j++) {
        float r = 1.0f - (float)j / 64.0f, S = tq_scale(r * m, b);
        double e = 0;
        for (uint32_t i = 0; i < n; i++) {
            double d = (double)tq_what(b, tq_argmin(w[i] / S, b), S) - (double)w[i];
            e += d * d;
        }
        if (j == 0 || e < best) {
            best = e;
            bestS = S;
        }
    }
    for (uint32_t i = 0; i < n; i++)
        q[i] = (uint8_t)tq_argmin(w[i] / bestS, b);
    return bestS;
}

typedef struct tq_result {
    uint8_t *packed;
    float *S, *su;
    double sse;
    int rot;
} tq_result;

static tq_result tq_quantize(const char *name, const float *W, uint32_t O, uint32_t I, unsigned b, int mse,
                             int hadamard, uint64_t seed)
{
    uint32_t G = (I + 127) / 128;
    tq_result r = {malloc(1 + tr_packed_body_bytes(O, I, b)), malloc((size_t)G * O * 4), malloc((size_t)I * 4), 0,
                   hadamard && I % 128 == 0};
    uint8_t *q = malloc((size_t)O * I);
    float *wr = malloc((size_t)O * I * 4);
    for (uint32_t i = 0; i < I; i++)
        r.su[i] = 1.0f;
    if (r.rot)
        tq_signs(name, seed, I, r.su);
    for (uint32_t o = 0; o < O; o++) {
        for (uint32_t i = 0; i < I; i++)
            wr[(size_t)o * I + i] = W[(size_t)o * I + i] * r.su[i];
        if (r.rot)
            tq_hadamard(wr + (size_t)o * I, I);
        for (uint32_t g = 0; g < G; g++) {
            uint32_t n = I - g * 128 < 128 ? I - g * 128 : 128;
            r.S[(size_t)g * O + o] = tq_group(wr + (size_t)o * I + g * 128, n, b, mse, q + (size_t)o * I + g * 128);
        }
    }
    for (size_t k = 0; k < (size_t)O * I; k++) {
        double d = (double)tq_what(b, q[k], r.S[(k % I) / 128 * O + k / I]) - (double)wr[k];
        r.sse += d * d;
    }
    tr_pack_indices(q, O, I, b, r.packed);
    free(q);
    free(wr);
    return r;
}

static void tq_free(tq_result *r)
{
    free(r->packed);
    free(r->S);
    free(r->su);
}

/* The library's result equals the re-implementation bit for bit. */
static void expect_same(const char *name, const float *W, uint32_t O, uint32_t I, unsigned b, tr_qscale scale,
                        tr_rotation rot)
{
    tr_quant_opts opt = {scale, rot, 42, NULL};
    tr_qtensor q;
    tr_error err;
    ck_assert_msg(tr_quantize(name, W, O, I, b, &opt, &q, &err) == TR_OK, "%s", err.text);
    tq_result r = tq_quantize(name, W, O, I, b, scale == TR_QSCALE_MSE, rot == TR_ROT_HADAMARD128, 42);
    uint32_t G = (I + 127) / 128;
    ck_assert_int_eq(tr_qweight_check(&q.w, "test", "w", &err), TR_OK);
    ck_assert_int_eq(q.w.rotation, r.rot ? TR_ROT_HADAMARD128 : TR_ROT_NONE);
    ck_assert_uint_eq(q.w.G, G);
    ck_assert_uint_eq(q.w.gs, 128);
    ck_assert_msg(memcmp(q.indices, r.packed, 1 + tr_packed_body_bytes(O, I, b)) == 0, "indices O=%u I=%u b=%u", O, I,
                  b);
    ck_assert_msg(memcmp(q.scales, r.S, (size_t)G * O * 4) == 0, "scales O=%u I=%u b=%u", O, I, b);
    ck_assert(memcmp(q.su, r.su, (size_t)I * 4) == 0);
    for (uint32_t o = 0; o < O; o++)
        ck_assert(q.sv[o] == 1.0f);
    ck_assert_msg(q.sse == r.sse, "sse %.17g vs %.17g", q.sse, r.sse);
    ck_assert_uint_eq(q.numel, (uint64_t)O * I);
    tq_free(&r);
    tr_qtensor_free(&q);
}

static float *random_matrix(uint32_t O, uint32_t I, uint64_t seed, double scale)
{
    tr_rng r;
    tr_rng_seed(&r, seed);
    float *W = malloc((size_t)O * I * 4);
    for (size_t k = 0; k < (size_t)O * I; k++)
        W[k] = (float)(tr_rng_normal(&r) * scale);
    return W;
}

/* ---- quantizer --------------------------------------------------------------------------------------------------- */

START_TEST(test_signs)
{
    float su[300], ref[300];
    tr_quant_signs("model.layers.0.self_attn.q_a_proj.weight", 42, 300, su);
    char s[17];
    for (int i = 0; i < 16; i++)
        s[i] = su[i] > 0 ? '+' : '-';
    s[16] = '\0';
    ck_assert_str_eq(s, "++++-+-++-+-++-+");   /* FORMAT.md §6.4 check value */
    tq_signs("model.layers.0.self_attn.q_a_proj.weight", 42, 300, ref);
    ck_assert(memcmp(su, ref, sizeof su) == 0);
    tr_quant_signs("model.layers.0.self_attn.q_a_proj.weight", 43, 300, su);
    ck_assert(memcmp(su, ref, sizeof su) != 0);
}
END_TEST

START_TEST(test_nearest)
{
    tr_rng r;
    tr_rng_seed(&r, 7);
    for (unsigned b = 2; b <= 8; b++) {
        float top = tq_grid(b, (1u << b) - 1);
        for (int k = 0; k < (tr_test_under_valgrind() ? 2000 : 20000); k++) {
            float x = (float)((tr_rng_u01(&r) * 2.6 - 1.3) * top);
            ck_assert_uint_eq(tr_quant_nearest(x, b), tq_argmin(x, b));
        }
        for (unsigned j = 0; j + 1 < (1u << b); j++) {   /* grid points, midpoints and their neighbours */
            float g = tq_grid(b, j), mid = (g + tq_grid(b, j + 1)) * 0.5f;
            float xs[] = {g, nextafterf(g, -1e9f), nextafterf(g, 1e9f), mid, nextafterf(mid, -1e9f),
                          nextafterf(mid, 1e9f)};
            for (size_t k = 0; k < sizeof xs / sizeof xs[0]; k++)
                ck_assert_uint_eq(tr_quant_nearest(xs[k], b), tq_argmin(xs[k], b));
        }
        float big[] = {0.0f, -0.0f, 1e6f, -1e6f, 3e38f, -3e38f, 0x1p20f, -0x1p20f, 0x1p-140f};
        for (size_t k = 0; k < sizeof big / sizeof big[0]; k++)
            ck_assert_uint_eq(tr_quant_nearest(big[k], b), tq_argmin(big[k], b));
        ck_assert_uint_eq(tr_quant_nearest(0.0f, b), (1u << (b - 1)) - 1);   /* tie → lower j */
    }
}
END_TEST

/* Hand-computed (Python, float32 by struct round trips): W = [1, −0.5, 0.25, 0], b = 2. */
START_TEST(test_absmax_hand)
{
    const float W[4] = {1.0f, -0.5f, 0.25f, 0.0f};
    tr_quant_opts opt = {TR_QSCALE_ABSMAX, TR_ROT_NONE, 42, NULL};
    tr_qtensor q;
    tr_error err;
    ck_assert_int_eq(tr_quantize("hand.weight", W, 1, 4, 2, &opt, &q, &err), TR_OK);
    ck_assert_uint_eq(tr_f32_bits(q.scales[0]), 0x3F093948u);   /* fl32(1 / 1.86556625) = 0.53603029 */
    static const unsigned expect[4] = {3, 1, 2, 1};            /* x = 1.8656, −0.9328, 0.4664, 0 (tie 1|2 → 1) */
    for (uint32_t i = 0; i < 4; i++)
        ck_assert_uint_eq(tr_qweight_index(&q.w, 0, i), expect[i]);
    ck_assert_uint_eq(q.indices[0], 2);
    /* Ŵ16 = 1.0, −0.333251953125, 0.333251953125, −0.333251953125 */
    double d1 = 0.166748046875, d2 = 0.083251953125, d3 = 0.333251953125;
    ck_assert(q.sse == ((0.0 + d1 * d1) + d2 * d2) + d3 * d3);
    /* padding of the 16×16 tile: index 2^(b−1) − 1 = 1 everywhere else */
    uint8_t all[256];
    tr_unpack_tile(q.indices + 1, 2, all);
    for (int e = 4; e < 256; e++)
        ck_assert_uint_eq(all[e], 1);
    tr_qtensor_free(&q);
    /* an all-zero group gets the floor scale 2^-24; index 1 (tie) decodes to fp16(−0.6219·2^-24) = −2^-24 */
    const float Z[3] = {0, 0, 0};
    ck_assert_int_eq(tr_quantize("zero.weight", Z, 3, 1, 4, &opt, &q, &err), TR_OK);
    ck_assert(q.scales[0] == 0x1p-24f && q.sse == 3 * 0x1p-48);
    tr_qtensor_free(&q);
}
END_TEST

/* Hand-computed: W = [1, 0.3, −0.3, 0.3, −0.3, 0.3], b = 2: j = 2 (r = 62/64) has the least error. */
START_TEST(test_mse_hand)
{
    const float W[6] = {1.0f, 0.3f, -0.3f, 0.3f, -0.3f, 0.3f};
    tr_quant_opts opt = {TR_QSCALE_MSE, TR_ROT_NONE, 42, NULL};
    tr_qtensor q;
    tr_error err;
    ck_assert_int_eq(tr_quantize("hand.weight", W, 1, 6, 2, &opt, &q, &err), TR_OK);
    ck_assert_uint_eq(tr_f32_bits(q.scales[0]), 0x3F04EF7Eu);
    static const unsigned expect[6] = {3, 2, 1, 2, 1, 2};
    for (uint32_t i = 0; i < 6; i++)
        ck_assert_uint_eq(tr_qweight_index(&q.w, 0, i), expect[i]);
    ck_assert_msg(fabs(q.sse - 0.003621110558743368) < 1e-18, "%.17g", q.sse);
    tr_qtensor_free(&q);
}
END_TEST

START_TEST(test_bruteforce)
{
    static const uint32_t shapes[][2] = {{16, 16}, {3, 20}, {5, 300}, {17, 129}, {1, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        uint32_t O = shapes[s][0], I = shapes[s][1];
        float *W = random_matrix(O, I, 100 + s, 0.02);
        W[0] = 0.5f;   /* an outlier: the mse search clips it */
        for (unsigned b = 2; b <= 8; b++) {
            expect_same("model.layers.3.mlp.experts.1.up_proj.weight", W, O, I, b, TR_QSCALE_ABSMAX, TR_ROT_NONE);
            if (b <= 4 || s < 2)
                expect_same("model.layers.3.mlp.experts.1.up_proj.weight", W, O, I, b, TR_QSCALE_MSE, TR_ROT_NONE);
        }
        free(W);
    }
    /* mse never does worse than absmax, and the outlier row gets a clipped scale */
    float *W = random_matrix(4, 128, 9, 0.02);
    W[3] = 0.6f;
    tr_quant_opts a = {TR_QSCALE_ABSMAX, TR_ROT_NONE, 42, NULL}, m = {TR_QSCALE_MSE, TR_ROT_NONE, 42, NULL};
    tr_qtensor qa, qm;
    tr_error err;
    ck_assert_int_eq(tr_quantize("x.weight", W, 4, 128, 3, &a, &qa, &err), TR_OK);
    ck_assert_int_eq(tr_quantize("x.weight", W, 4, 128, 3, &m, &qm, &err), TR_OK);
    ck_assert(qm.sse < qa.sse);
    ck_assert(qm.scales[0] < qa.scales[0]);
    tr_qtensor_free(&qa);
    tr_qtensor_free(&qm);
    free(W);
}
END_TEST

START_TEST(test_hadamard)
{
    const char *name = "model.layers.0.self_attn.q_a_proj.weight";
    uint32_t O = 8, I = 256;
    float *W = random_matrix(O, I, 5, 0.05);
    expect_same(name, W, O, I, 8, TR_QSCALE_ABSMAX, TR_ROT_HADAMARD128);
    expect_same(name, W, O, I, 3, TR_QSCALE_MSE, TR_ROT_HADAMARD128);
    /* Hn is its own inverse: W ≈ (Hn · Ŵ16 row) ⊙ su */
    tr_quant_opts opt = {TR_QSCALE_ABSMAX, TR_ROT_HADAMARD128, 42, NULL};
    tr_qtensor q;
    tr_error err;
    ck_assert_int_eq(tr_quantize(name, W, O, I, 8, &opt, &q, &err), TR_OK);
    ck_assert_int_eq(q.w.rotation, TR_ROT_HADAMARD128);
    ck_assert(q.su[0] == 1.0f && q.su[4] == -1.0f);   /* ++++- */
    uint16_t *h = malloc((size_t)O * I * 2);
    float *back = malloc((size_t)O * I * 4);
    tr_dequant_w16hat(&q.w, h);
    double err2 = 0, ref2 = 0, sse = 0;
    for (uint32_t o = 0; o < O; o++) {
        for (uint32_t i = 0; i < I; i++)
            back[o * I + i] = tr_f16_to_f32(h[o * I + i]);
        tq_hadamard(back + o * I, I);
        for (uint32_t i = 0; i < I; i++) {
            double d = (double)back[o * I + i] * q.su[i] - W[o * I + i];
            err2 += d * d;
            ref2 += (double)W[o * I + i] * W[o * I + i];
        }
    }
    ck_assert_msg(sqrt(err2 / ref2) < 0.01, "relative error %g", sqrt(err2 / ref2));
    /* the SSE is measured against the rotated weights: Σ (Ŵ16 − Wr)² */
    for (uint32_t o = 0; o < O; o++) {
        float wr[256];
        for (uint32_t i = 0; i < I; i++)
            wr[i] = W[o * I + i] * q.su[i];
        tq_hadamard(wr, I);
        for (uint32_t i = 0; i < I; i++) {
            double d = (double)tr_f16_to_f32(h[o * I + i]) - wr[i];
            sse += d * d;
        }
    }
    ck_assert(sse == q.sse);
    tr_qtensor_free(&q);
    free(h);
    free(back);
    free(W);
    /* I % 128 != 0: hadamard128 falls back to none (same bytes, su = +1) */
    W = random_matrix(6, 48, 6, 0.05);
    tr_qtensor a, n;
    tr_quant_opts none = {TR_QSCALE_ABSMAX, TR_ROT_NONE, 42, NULL};
    ck_assert_int_eq(tr_quantize(name, W, 6, 48, 4, &opt, &a, &err), TR_OK);
    ck_assert_int_eq(tr_quantize(name, W, 6, 48, 4, &none, &n, &err), TR_OK);
    ck_assert_int_eq(a.w.rotation, TR_ROT_NONE);
    ck_assert_int_eq(tr_quant_effective_rotation(TR_ROT_HADAMARD128, 48), TR_ROT_NONE);
    ck_assert_int_eq(tr_quant_effective_rotation(TR_ROT_HADAMARD128, 384), TR_ROT_HADAMARD128);
    ck_assert(memcmp(a.indices, n.indices, a.w.indices_len) == 0 && memcmp(a.scales, n.scales, 6 * 4) == 0);
    for (int i = 0; i < 48; i++)
        ck_assert(a.su[i] == 1.0f);
    ck_assert(a.sse == n.sse);
    tr_qtensor_free(&a);
    tr_qtensor_free(&n);
    free(W);
}
END_TEST

START_TEST(test_nonfinite)
{
    float W[15] = {0};
    W[7] = NAN;
    tr_quant_opts opt = {TR_QSCALE_ABSMAX, TR_ROT_NONE, 42, NULL};
    tr_qtensor q;
    tr_error err;
    ck_assert_int_eq(tr_quantize("model.layers.0.mlp.up_proj.weight", W, 3, 5, 4, &opt, &q, &err), TR_E_NONFINITE);
    ck_assert_str_eq(err.text, "model.layers.0.mlp.up_proj.weight: TR_E_NONFINITE: model.layers.0.mlp.up_proj.weight: "
                               "element 7 [1,2] is NaN; only finite weights can be quantized");
    ck_assert_ptr_null(q.indices);
    W[7] = 0;
    W[14] = -INFINITY;
    opt.where = "src/model.safetensors";
    double sse[9];
    ck_assert_int_eq(tr_quantize_sse_table("t.weight", W, 3, 5, &opt, sse, &err), TR_E_NONFINITE);
    ck_assert_str_eq(err.text, "src/model.safetensors: TR_E_NONFINITE: t.weight: element 14 [2,4] is -Inf; only "
                               "finite weights can be quantized");
    /* a rotation that overflows float32 */
    float big[128];
    for (int i = 0; i < 128; i++)
        big[i] = FLT_MAX;
    opt.rotation = TR_ROT_HADAMARD128;
    opt.where = NULL;
    ck_assert_int_eq(tr_quantize("zzzzzz.weight", big, 1, 128, 4, &opt, &q, &err), TR_E_NONFINITE);
    ck_assert_msg(strstr(err.text, "overflows float32 under the hadamard128 rotation"), "%s", err.text);
    ck_assert_int_eq(tr_quantize("b.weight", W, 3, 5, 9, &opt, &q, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_quantize("b.weight", W, 0, 5, 4, &opt, &q, &err), TR_E_INVALID_PARAM);
}
END_TEST

START_TEST(test_sse_table)
{
    float *W = random_matrix(20, 300, 11, 0.03);
    for (int s = 0; s < 2; s++) {
        tr_quant_opts opt = {s ? TR_QSCALE_MSE : TR_QSCALE_ABSMAX, TR_ROT_NONE, 42, NULL};
        double sse[9];
        tr_error err;
        ck_assert_int_eq(tr_quantize_sse_table("t.weight", W, 20, 300, &opt, sse, &err), TR_OK);
        for (unsigned b = 2; b <= 8; b++) {
            tr_qtensor q;
            ck_assert_int_eq(tr_quantize("t.weight", W, 20, 300, b, &opt, &q, &err), TR_OK);
            ck_assert_msg(sse[b] == q.sse, "b=%u %.17g %.17g", b, sse[b], q.sse);
            tr_qtensor_free(&q);
        }
        ck_assert(sse[2] > sse[4] && sse[4] > sse[8]);
    }
    free(W);
}
END_TEST

/* Every allocation point of the quantizer fails cleanly with TR_E_NOMEM (leaks: make asan / valgrind). */
START_TEST(test_quantize_alloc_failures)
{
    float *W = random_matrix(4, 256, 12, 0.05);
    tr_quant_opts opt = {TR_QSCALE_MSE, TR_ROT_HADAMARD128, 42, NULL};
    for (int which = 0; which < 2; which++)
        for (unsigned long n = 1;; n++) {
            tr_alloc_fail_at(n);
            tr_qtensor q;
            double sse[9];
            tr_error err;
            int rc = which ? tr_quantize_sse_table("a.weight", W, 4, 256, &opt, sse, &err)
                           : tr_quantize("a.weight", W, 4, 256, 3, &opt, &q, &err);
            int fired = tr_alloc_fired();
            tr_alloc_fail_at(0);
            if (!fired) {
                ck_assert_int_eq(rc, TR_OK);
                if (!which)
                    tr_qtensor_free(&q);
                break;
            }
            ck_assert_int_eq(rc, TR_E_NOMEM);
            ck_assert_msg(strstr(err.text, "a.weight"), "%s", err.text);
        }
    free(W);
}
END_TEST

/* ---- roles and SPEC ---------------------------------------------------------------------------------------------- */

START_TEST(test_roles)
{
    static const struct {
        const char *name;
        int role;
    } cases[] = {
        {"model.layers.0.self_attn.q_a_proj.weight", TR_QROLE_ATTN},
        {"model.layers.0.self_attn.q_b_proj.weight", TR_QROLE_ATTN},
        {"model.layers.12.self_attn.q_proj.weight", TR_QROLE_ATTN},
        {"model.layers.0.self_attn.k_proj.weight", TR_QROLE_ATTN},
        {"model.layers.0.self_attn.v_proj.weight", TR_QROLE_ATTN},
        {"model.layers.0.self_attn.kv_a_proj_with_mqa.weight", TR_QROLE_ATTN},
        {"model.layers.0.self_attn.kv_b_proj.weight", TR_QROLE_ATTN},
        {"model.layers.0.self_attn.o_proj.weight", TR_QROLE_ATTN},
        {"model.layers.3.mlp.experts.17.gate_proj.weight", TR_QROLE_GATE},
        {"model.layers.3.mlp.experts.0.up_proj.weight", TR_QROLE_UP},
        {"model.layers.3.mlp.experts.63.down_proj.weight", TR_QROLE_DOWN},
        {"model.layers.3.mlp.shared_experts.gate_proj.weight", TR_QROLE_SHARED},
        {"model.layers.3.mlp.shared_experts.down_proj.weight", TR_QROLE_SHARED},
        {"model.layers.0.mlp.gate_proj.weight", TR_QROLE_DENSE},
        {"model.layers.0.mlp.up_proj.weight", TR_QROLE_DENSE},
        {"model.layers.0.mlp.down_proj.weight", TR_QROLE_DENSE},
        {"lm_head.weight", TR_QROLE_LM_HEAD},
        {"model.layers.1.mlp.gate.weight", -1},
        {"model.layers.1.mlp.gate.e_score_correction_bias", -1},
        {"model.layers.1.self_attn.q_a_layernorm.weight", -1},
        {"model.layers.1.self_attn.q_norm.weight", -1},
        {"model.layers.1.input_layernorm.weight", -1},
        {"model.embed_tokens.weight", -1},
        {"model.norm.weight", -1},
        {"model.layers.x.self_attn.q_proj.weight", -1},
        {"model.layers.1.mlp.experts.x.gate_proj.weight", -1},
        {"model.layers.1.mlp.experts.gate_proj.weight", -1},
        {"model.layers.1.mlp.experts.2.gate_proj.bias", -1},
        {"model.layers.1.self_attn.q_proj.bias", -1},
        {"model.layers.1.mlp.shared_experts.2.gate_proj.weight", -1},
        {"layers.1.self_attn.q_proj.weight", -1},
        {"lm_head.bias", -1},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        ck_assert_msg(tr_quant_role(cases[k].name) == cases[k].role, "%s", cases[k].name);
    ck_assert_str_eq(tr_qrole_name(TR_QROLE_LM_HEAD), "lm_head");
    ck_assert_int_lt(tr_quant_order_cmp("model.layers.2.mlp.up_proj.weight", "model.layers.10.mlp.down_proj.weight"),
                     0);
    ck_assert_int_lt(tr_quant_order_cmp("model.layers.2.mlp.down_proj.weight", "model.layers.2.mlp.up_proj.weight"), 0);
    ck_assert_int_gt(tr_quant_order_cmp("lm_head.weight", "model.layers.99.mlp.up_proj.weight"), 0);
    ck_assert_int_eq(tr_quant_order_cmp("lm_head.weight", "lm_head.weight"), 0);
}
END_TEST

START_TEST(test_spec_good)
{
    tr_bits_spec s;
    tr_error err;
    ck_assert_int_eq(tr_bits_spec_parse("4", &s, &err), TR_OK);
    ck_assert(s.default_given && s.default_bits == 4 && !s.has_avg);
    ck_assert_int_eq(tr_bits_spec_width(&s, TR_QROLE_GATE), 4);
    ck_assert_int_eq(tr_bits_spec_width(&s, TR_QROLE_LM_HEAD), 0);
    ck_assert_int_eq(tr_bits_spec_parse("gate=6,up=2,down=3,attn=4,shared=4", &s, &err), TR_OK);
    ck_assert(!s.default_given && s.default_bits == 4);
    static const int want[TR_QROLE_COUNT] = {4, 6, 2, 3, 4, 4, 0};
    for (int r = 0; r < TR_QROLE_COUNT; r++)
        ck_assert_int_eq(tr_bits_spec_width(&s, (tr_qrole)r), want[r]);
    ck_assert_int_eq(tr_bits_spec_parse("lm_head=8,default=3,dense=2", &s, &err), TR_OK);
    ck_assert_int_eq(tr_bits_spec_width(&s, TR_QROLE_LM_HEAD), 8);
    ck_assert_int_eq(tr_bits_spec_width(&s, TR_QROLE_ATTN), 3);
    ck_assert_int_eq(tr_bits_spec_width(&s, TR_QROLE_DENSE), 2);
    ck_assert_int_eq(tr_bits_spec_parse("attn=6,avg=3.5", &s, &err), TR_OK);
    ck_assert(s.has_avg && s.avg == 3.5);
    ck_assert_int_eq(tr_bits_spec_width(&s, TR_QROLE_ATTN), 6);
    ck_assert_int_eq(tr_bits_spec_width(&s, TR_QROLE_UP), TR_BITS_ALLOCATED);
    ck_assert_int_eq(tr_bits_spec_width(&s, TR_QROLE_LM_HEAD), 0);
    ck_assert_int_eq(tr_bits_spec_parse("avg=2", &s, &err), TR_OK);
    ck_assert_int_eq(tr_bits_spec_parse("avg=8.0", &s, &err), TR_OK);
    ck_assert_int_eq(tr_bits_spec_parse("avg=3.", &s, &err), TR_OK);
    ck_assert(s.avg == 3.0);
    ck_assert_int_eq(tr_bits_spec_parse("2", &s, &err), TR_OK);
    ck_assert_int_eq(tr_bits_spec_parse("8", &s, &err), TR_OK);
}
END_TEST

START_TEST(test_spec_bad)
{
    static const char *const R = "--bits: TR_E_USAGE: ";
    static const struct {
        const char *spec, *msg;
    } cases[] = {
        {"", "empty SPEC"},
        {"4,,gate=2", "empty item in \"4,,gate=2\""},
        {",4", "empty item in \",4\""},
        {"4,", "empty item in \"4,\""},
        {"foo=3", "unknown role \"foo\" (roles: attn, gate, up, down, shared, dense, lm_head, default, avg)"},
        {"=3", "unknown role \"\" (roles: attn, gate, up, down, shared, dense, lm_head, default, avg)"},
        {"Gate=3", "unknown role \"Gate\" (roles: attn, gate, up, down, shared, dense, lm_head, default, avg)"},
        {"gate=3,gate=4", "role \"gate\" given twice"},
        {"4,default=3", "role \"default\" given twice"},
        {"4,5", "role \"default\" given twice"},
        {"avg=3,avg=4", "role \"avg\" given twice"},
        {"gate=9", "gate=9: the width must be an integer in 2..8"},
        {"gate=1", "gate=1: the width must be an integer in 2..8"},
        {"lm_head=", "lm_head=: the width must be an integer in 2..8"},
        {"attn=4.0", "attn=4.0: the width must be an integer in 2..8"},
        {"default=x", "default=x: the width must be an integer in 2..8"},
        {"9", "\"9\" is neither role=b, avg=X nor a width in 2..8"},
        {"gate", "\"gate\" is neither role=b, avg=X nor a width in 2..8"},
        {" 4", "\" 4\" is neither role=b, avg=X nor a width in 2..8"},
        {"avg=9", "avg=9: X must be a number in [2, 8]"},
        {"avg=1.99", "avg=1.99: X must be a number in [2, 8]"},
        {"avg=abc", "avg=abc: X must be a number in [2, 8]"},
        {"avg=", "avg=: X must be a number in [2, 8]"},
        {"avg=inf", "avg=inf: X must be a number in [2, 8]"},
        {"avg=3,default=4", "avg=X replaces default: give one of them, not both"},
        {"4,avg=3", "avg=X replaces default: give one of them, not both"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        tr_bits_spec s;
        tr_error err;
        char want[512];
        snprintf(want, sizeof want, "%s%s", R, cases[k].msg);
        int rc = tr_bits_spec_parse(cases[k].spec, &s, &err);
        ck_assert_msg(rc == TR_E_USAGE, "\"%s\" accepted", cases[k].spec);
        ck_assert_str_eq(err.text, want);
    }
}
END_TEST

/* ---- greedy allocation ------------------------------------------------------------------------------------------- */

/* Independent replay: at each step list every candidate's (cost, position), sort, take the first. */
typedef struct cand {
    double cost;
    size_t k;
} cand;

static int cmp_cand(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->cost != y->cost)
        return x->cost < y->cost ? -1 : 1;
    return x->k < y->k ? -1 : x->k > y->k;
}

static int replay(const tr_alloc_tensor *t, size_t n, double X, unsigned *bits)
{
    cand *c = malloc((n + 1) * sizeof *c);
    for (size_t k = 0; k < n; k++)
        bits[k] = t[k].fixed_bits ? t[k].fixed_bits : 8;
    for (;;) {
        double num = 0, den = 0;
        for (size_t k = 0; k < n; k++) {
            num += (double)bits[k] * (double)t[k].numel;
            den += (double)t[k].numel;
        }
        if (num / den <= X)
            break;
        size_t m = 0;
        for (size_t k = 0; k < n; k++)
            if (!t[k].fixed_bits && bits[k] > 2)
                c[m++] = (cand){(t[k].sse[bits[k] - 1] - t[k].sse[bits[k]]) / (double)t[k].numel, k};
        if (m == 0) {
            free(c);
            return -1;
        }
        qsort(c, m, sizeof *c, cmp_cand);
        bits[c[0].k]--;
    }
    free(c);
    return 0;
}

START_TEST(test_allocate_hand)
{
    /* A: numel 100, B: 100, C: 200 (fixed at 4).  Costs per weight of each step (b → b−1) are chosen so the order
     * of steps is predictable: A's steps cost 1, 2, 3, ...; B's 1.5, 2.5, ...; with a tie A/B at 3 vs 3. */
    tr_alloc_tensor t[3];
    memset(t, 0, sizeof t);
    t[0].name = "A";
    t[0].numel = 100;
    t[1].name = "B";
    t[1].numel = 100;
    t[2].name = "C";
    t[2].numel = 200;
    t[2].fixed_bits = 4;
    static const double costA[9] = {0, 0, 6, 5, 4, 3, 3, 2, 1};   /* costA[b] = cost of b → b−1 */
    static const double costB[9] = {0, 0, 9, 9, 9, 3, 2.5, 1.5, 1};
    t[0].sse[8] = t[1].sse[8] = 0;
    for (unsigned b = 8; b > 2; b--) {
        t[0].sse[b - 1] = t[0].sse[b] + costA[b] * 100;
        t[1].sse[b - 1] = t[1].sse[b] + costB[b] * 100;
    }
    unsigned bits[3];
    tr_error err;
    /* start 8,8,4 → avg 6; target 5: total must drop 4 bits·100 = 4 steps:
     * step1: A(1) vs B(1) tie → A 7; step2: B 1 → B 7; step3: B 1.5 → B 6; step4: A 2 vs B 2.5 → A 6. */
    ck_assert_int_eq(tr_bits_allocate(t, 3, 5.0, bits, &err), TR_OK);
    ck_assert_uint_eq(bits[0], 6);
    ck_assert_uint_eq(bits[1], 6);
    ck_assert_uint_eq(bits[2], 4);
    /* step5: A 3 vs B 2.5 → B 5; step6: A 3 vs B 3 tie → A 5 */
    ck_assert_int_eq(tr_bits_allocate(t, 3, 4.5, bits, &err), TR_OK);
    ck_assert_uint_eq(bits[0], 5);
    ck_assert_uint_eq(bits[1], 5);
    /* the average exactly at X stops */
    ck_assert_int_eq(tr_bits_allocate(t, 3, 6.0, bits, &err), TR_OK);
    ck_assert(bits[0] == 8 && bits[1] == 8);
    /* unreachable: A and B at 2, C at 4 → average 3 > 2.5 */
    ck_assert_int_eq(tr_bits_allocate(t, 3, 2.5, bits, &err), TR_E_USAGE);
    ck_assert_str_eq(err.text, "--bits: TR_E_USAGE: avg=2.5 cannot be reached: with every allocated tensor at 2 bits "
                               "the average is 3 bits per weight");
    ck_assert_int_eq(tr_bits_allocate(t, 3, 3.0, bits, &err), TR_OK);
    ck_assert(bits[0] == 2 && bits[1] == 2 && bits[2] == 4);
}
END_TEST

START_TEST(test_allocate_replay)
{
    /* real SSE tables of random matrices (different scales and shapes), some tensors fixed */
    enum { N = 9 };
    tr_alloc_tensor t[N];
    memset(t, 0, sizeof t);
    static const uint32_t shapes[N][2] = {{16, 64},  {32, 48}, {8, 130}, {16, 64}, {24, 24},
                                          {16, 256}, {40, 16}, {16, 64}, {4, 200}};
    tr_quant_opts opt = {TR_QSCALE_ABSMAX, TR_ROT_NONE, 42, NULL};
    for (int k = 0; k < N; k++) {
        float *W = random_matrix(shapes[k][0], shapes[k][1], 300 + (k % 3 == 1 ? 0 : k), 0.01 * (1 + k % 4));
        t[k].name = "t";
        t[k].numel = (uint64_t)shapes[k][0] * shapes[k][1];
        t[k].fixed_bits = k == 2 ? 3 : k == 6 ? 8 : 0;
        tr_error err;
        ck_assert_int_eq(tr_quantize_sse_table("t.weight", W, shapes[k][0], shapes[k][1], &opt, t[k].sse, &err),
                         TR_OK);
        free(W);
    }
    for (double X = 2.0; X <= 8.0; X += 0.125) {
        unsigned got[N], want[N];
        tr_error err;
        int rc = tr_bits_allocate(t, N, X, got, &err);
        int rr = replay(t, N, X, want);
        ck_assert_int_eq(rc == TR_OK, rr == 0);
        if (rc != TR_OK)
            continue;
        for (int k = 0; k < N; k++)
            ck_assert_msg(got[k] == want[k], "X=%g tensor %d: %u vs %u", X, k, got[k], want[k]);
    }
}
END_TEST

/* ---- CLI end to end ---------------------------------------------------------------------------------------------- */

static char *tmp_dir(const char *name)
{
    static char path[8][4200];
    static int slot;
    char *p = path[slot++ % 8];
    snprintf(p, 4200, "%s/q_%s", tr_test_tmpdir(), name);
    char cmd[8600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", p);
    ck_assert_int_eq(system(cmd), 0);
    return p;
}

typedef struct fx_tensor {
    const char *name;
    tr_dtype dt;
    uint32_t d0, d1;           /* d1 = 0: 1-D */
} fx_tensor;

/* A tiny MoE model: layer 0 attention + 2 routed experts + router, layer 1 dense FFN + shared expert + GLM bias,
 * layer 2 (>= num_hidden_layers, dropped), embeddings, norms and lm_head; mixed dtypes. */
static const fx_tensor fixture[] = {
    {"lm_head.weight", TR_DT_F32, 40, 128},
    {"model.embed_tokens.weight", TR_DT_BF16, 40, 128},
    {"model.norm.weight", TR_DT_F32, 128, 0},
    {"model.layers.0.input_layernorm.weight", TR_DT_F16, 128, 0},
    {"model.layers.0.self_attn.q_proj.weight", TR_DT_F32, 64, 128},
    {"model.layers.0.self_attn.k_proj.weight", TR_DT_BF16, 32, 128},
    {"model.layers.0.self_attn.o_proj.weight", TR_DT_F16, 128, 64},
    {"model.layers.0.self_attn.q_norm.weight", TR_DT_F32, 16, 0},
    {"model.layers.0.mlp.gate.weight", TR_DT_F32, 2, 128},
    {"model.layers.0.mlp.experts.0.gate_proj.weight", TR_DT_F32, 48, 128},
    {"model.layers.0.mlp.experts.0.up_proj.weight", TR_DT_F32, 48, 128},
    {"model.layers.0.mlp.experts.0.down_proj.weight", TR_DT_F32, 128, 48},
    {"model.layers.0.mlp.experts.1.gate_proj.weight", TR_DT_F32, 48, 128},
    {"model.layers.0.mlp.experts.1.up_proj.weight", TR_DT_F32, 48, 128},
    {"model.layers.0.mlp.experts.1.down_proj.weight", TR_DT_F32, 128, 48},
    {"model.layers.1.mlp.gate_proj.weight", TR_DT_F32, 96, 128},
    {"model.layers.1.mlp.up_proj.weight", TR_DT_F32, 96, 128},
    {"model.layers.1.mlp.down_proj.weight", TR_DT_F32, 128, 96},
    {"model.layers.1.mlp.shared_experts.gate_proj.weight", TR_DT_F32, 24, 128},
    {"model.layers.1.mlp.shared_experts.up_proj.weight", TR_DT_F32, 24, 128},
    {"model.layers.1.mlp.shared_experts.down_proj.weight", TR_DT_F32, 128, 24},
    {"model.layers.1.mlp.gate.e_score_correction_bias", TR_DT_F32, 2, 0},
    {"model.layers.2.self_attn.q_proj.weight", TR_DT_F32, 64, 128},
    {"model.layers.2.input_layernorm.weight", TR_DT_F32, 128, 0},
};
#define NFIX (sizeof fixture / sizeof fixture[0])

static const char config_text[] = "{\"model_type\": \"qwen3_moe\", \"num_hidden_layers\": 2,\n \"hidden_size\": 128}\n";
static const char tok_text[] = "{\"model\": {\"type\": \"BPE\"}, \"note\": \"bytes \\u00e9 kept\"}";
static const char gen_text[] = "{\"bos_token_id\": 0}";

/* Write the fixture into dir (single model.safetensors); nan_at >= 0 poisons one element of q_proj. */
static void write_fixture(const char *dir, long nan_at)
{
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    tr_st_writer *w = tr_st_writer_new();
    void *bufs[NFIX];
    tr_rng r;
    tr_rng_seed(&r, 2024);
    for (size_t k = 0; k < NFIX; k++) {
        const fx_tensor *f = &fixture[k];
        size_t n = (size_t)f->d0 * (f->d1 ? f->d1 : 1), es = tr_dtype_size(f->dt);
        uint8_t *b = malloc(n * es);
        for (size_t i = 0; i < n; i++) {
            float v = (float)(tr_rng_normal(&r) * 0.05);
            if (nan_at >= 0 && (long)i == nan_at && strstr(f->name, "layers.0.self_attn.q_proj"))
                v = NAN;
            uint16_t h = f->dt == TR_DT_F16 ? tr_f32_to_f16(v) : tr_f32_to_bf16(v);
            memcpy(b + i * es, f->dt == TR_DT_F32 ? (void *)&v : (void *)&h, es);
        }
        uint64_t shape[2] = {f->d0, f->d1};
        tr_error err;
        ck_assert_int_eq(tr_st_writer_add(w, f->name, f->dt, f->d1 ? 2 : 1, shape, b, &err), TR_OK);
        bufs[k] = b;
    }
    char path[4400];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    tr_error err;
    ck_assert_msg(tr_st_writer_write(w, path, &err) == TR_OK, "%s", err.text);
    tr_st_writer_free(w);
    for (size_t k = 0; k < NFIX; k++)
        free(bufs[k]);
    tr_test_write(dir, "config.json", config_text, strlen(config_text));
    tr_test_write(dir, "tokenizer.json", tok_text, strlen(tok_text));
    tr_test_write(dir, "generation_config.json", gen_text, strlen(gen_text));
}

static const char *src_fixture(void)
{
    static char dir[4200];   /* own copy: tmp_dir's buffers rotate */
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "%s", tmp_dir("src"));
        write_fixture(dir, -1);
    }
    return dir;
}

static uint8_t *slurp(const char *dir, const char *name, size_t *n)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *d = NULL;
    tr_error err;
    ck_assert_msg(tr_file_read_all(path, &d, n, &err) == TR_OK, "%s", err.text);
    return (uint8_t *)d;
}

static int cmp_name(const void *a, const void *b) { return strcmp(a, b); }

/* The line of out that starts with name + ' ' contains rest. */
static void expect_line(const char *out, const char *name, const char *rest)
{
    for (const char *p = out; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        size_t n = strlen(name), len = strcspn(p, "\n");
        if (strncmp(p, name, n) == 0 && p[n] == ' ') {
            char line[512];
            snprintf(line, sizeof line, "%.*s", (int)len, p);
            ck_assert_msg(strstr(line, rest), "line \"%s\" lacks \"%s\"", line, rest);
            return;
        }
    }
    ck_abort_msg("no line for %s in:\n%s", name, out);
}

/* Names of the files of a directory, sorted. */
static size_t list_dir(const char *dir, char names[][256], size_t cap)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.' && n < cap)
            snprintf(names[n++], 256, "%s", e->d_name);
    closedir(d);
    qsort(names, n, 256, cmp_name);
    return n;
}

static void expect_same_dirs(const char *a, const char *b)
{
    char na[64][256], nb[64][256];
    size_t n = list_dir(a, na, 64);
    ck_assert_uint_eq(n, list_dir(b, nb, 64));
    for (size_t k = 0; k < n; k++) {
        ck_assert_str_eq(na[k], nb[k]);
        size_t sa, sb;
        uint8_t *da = slurp(a, na[k], &sa), *db = slurp(b, nb[k], &sb);
        ck_assert_msg(sa == sb && memcmp(da, db, sa) == 0, "%s differs", na[k]);
        tr_dealloc(da);
        tr_dealloc(db);
    }
}

/* The bits a role gets under "attn=3,gate=5,up=2,down=6,default=4" (lm_head stays float). */
static unsigned mix_bits(const char *name)
{
    static const unsigned bits[TR_QROLE_COUNT] = {3, 5, 2, 6, 4, 4, 0};
    int role = tr_quant_role(name);
    return role < 0 ? 0 : bits[role];
}

/* Every quantized linear of out equals the library's quantization of the source tensor. */
static void expect_linears(const char *out, const char *src, tr_qscale scale, tr_rotation rot,
                           unsigned (*bits_of)(const char *), size_t *count)
{
    tr_ckpt *c = NULL, *s = NULL;
    tr_error err;
    ck_assert_msg(tr_ckpt_open(out, NULL, &c, &err) == TR_OK, "%s", err.text);
    ck_assert_int_eq(tr_ckpt_layout(c), TR_LAYOUT_TRELLIS_V3);
    ck_assert_uint_eq(tr_ckpt_warnings(c)->count, 0);
    ck_assert_int_eq(tr_ckpt_rotation(c), rot);
    ck_assert_uint_eq(tr_ckpt_group_size(c), 128);
    ck_assert_int_eq(tr_ckpt_open(src, NULL, &s, &err), TR_OK);
    *count = tr_ckpt_qlinear_count(c);
    for (size_t k = 0; k < *count; k++) {
        const tr_qlinear *l = tr_ckpt_qlinear_at(c, k);
        ck_assert_uint_eq(l->w.bits, bits_of(l->name));
        ck_assert_int_eq(l->meta_bits, (int)l->w.bits);
        float *W = NULL;
        uint64_t n = 0;
        ck_assert_int_eq(tr_ckpt_load_f32(s, l->name, &W, &n, &err), TR_OK);
        tr_quant_opts opt = {scale, rot, 42, NULL};
        tr_qtensor q;
        ck_assert_int_eq(tr_quantize(l->name, W, l->w.O, l->w.I, l->w.bits, &opt, &q, &err), TR_OK);
        ck_assert_int_eq(l->w.rotation, q.w.rotation);
        ck_assert(l->w.indices_len == q.w.indices_len && memcmp(l->w.indices, q.indices, q.w.indices_len) == 0);
        ck_assert(memcmp(l->w.scales, q.scales, (size_t)q.w.G * q.w.O * 4) == 0);
        ck_assert(memcmp(l->w.su, q.su, (size_t)q.w.I * 4) == 0 && memcmp(l->w.sv, q.sv, (size_t)q.w.O * 4) == 0);
        tr_qtensor_free(&q);
        tr_dealloc(W);
    }
    /* float tensors: same dtype, shape and bytes as in the source; layer 2 absent */
    size_t floats = 0;
    for (size_t k = 0; k < NFIX; k++) {
        const char *name = fixture[k].name;
        tr_tensor_ref a, b;
        if (strstr(name, "layers.2.")) {
            ck_assert_int_eq(tr_ckpt_find_tensor(c, name, &a, &err), TR_E_TENSOR_MISSING);
            ck_assert_ptr_null(tr_ckpt_qlinear_find(c, name));
            continue;
        }
        if (tr_ckpt_qlinear_find(c, name))
            continue;
        floats++;
        ck_assert_msg(tr_ckpt_find_tensor(c, name, &a, &err) == TR_OK, "%s", err.text);
        ck_assert_int_eq(tr_ckpt_find_tensor(s, name, &b, &err), TR_OK);
        ck_assert(strstr(a.file, "base_weights.safetensors"));
        ck_assert_int_eq(a.t->dtype, b.t->dtype);
        ck_assert(a.t->ndim == b.t->ndim && memcmp(a.t->shape, b.t->shape, sizeof a.t->shape) == 0);
        ck_assert(memcmp(a.t->data, b.t->data, b.t->end - b.t->begin) == 0);
    }
    ck_assert_uint_eq(floats + *count, NFIX - 2);
    tr_ckpt_close(c);
    tr_ckpt_close(s);
}

static unsigned bits8(const char *name) { return tr_quant_role(name) == TR_QROLE_LM_HEAD ? 6 : 8; }

/* Σ b·numel / Σ numel over the fixture's quantized tensors. */
static double expected_bpw(unsigned (*bits_of)(const char *))
{
    double num = 0, den = 0;
    for (size_t k = 0; k < NFIX; k++) {
        unsigned b = bits_of(fixture[k].name);
        if (b && !strstr(fixture[k].name, "layers.2.")) {
            num += (double)b * fixture[k].d0 * fixture[k].d1;
            den += (double)fixture[k].d0 * fixture[k].d1;
        }
    }
    return num / den;
}

START_TEST(test_cli_end_to_end)
{
    const char *src = src_fixture();
    char *o1 = tmp_dir("o1"), *o2 = tmp_dir("o2"), *js = tmp_dir("summary.json");
    const char *spec = "attn=3,gate=5,up=2,down=6,default=4";
    cli_result r = cli_run("quantize", "-m", src, "--out", o1, "--bits", spec, "--scale", "mse", "--rotation",
                           "hadamard128", "--json", js, NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    ck_assert_msg(strstr(r.out, "model.layers.0.self_attn.q_proj.weight"), "%.3000s", r.out);
    expect_line(r.out, "model.layers.0.mlp.experts.1.down_proj.weight", " 6 bits  [128,48]  mse ");
    expect_line(r.out, "model.layers.0.self_attn.q_proj.weight", " 3 bits  [64,128]  hadamard128  mse ");
    expect_line(r.out, "model.layers.1.mlp.shared_experts.up_proj.weight", " 4 bits  [24,128]  hadamard128  mse ");
    ck_assert(!strstr(r.out, "lm_head") && !strstr(r.out, "layers.2."));
    char line[128];
    snprintf(line, sizeof line, "average bits per weight: %.4f (15 quantized tensors, ", expected_bpw(mix_bits));
    ck_assert_msg(strstr(r.out, line), "%s\n%s", line, r.out);
    cli_result_free(&r);
    size_t count = 0;
    expect_linears(o1, src, TR_QSCALE_MSE, TR_ROT_HADAMARD128, mix_bits, &count);
    ck_assert_uint_eq(count, 15);
    /* side files byte for byte; absent ones are not invented */
    static const char *const side[] = {"config.json", "tokenizer.json", "generation_config.json"};
    static const char *const text[] = {config_text, tok_text, gen_text};
    for (int k = 0; k < 3; k++) {
        size_t n;
        uint8_t *d = slurp(o1, side[k], &n);
        ck_assert(n == strlen(text[k]) && memcmp(d, text[k], n) == 0);
        tr_dealloc(d);
    }
    char p[4400];
    snprintf(p, sizeof p, "%s/special_tokens_map.json", o1);
    ck_assert(!tr_path_exists(p));
    /* JSON summary */
    json_error_t je;
    json_t *doc = json_load_file(js, 0, &je);
    ck_assert_ptr_nonnull(doc);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "schema")), "trellis.quantize/1");
    ck_assert_uint_eq(json_array_size(json_object_get(doc, "tensors")), 15);
    ck_assert(fabs(json_real_value(json_object_get(doc, "average_bpw")) - expected_bpw(mix_bits)) < 1e-12);
    json_decref(doc);
    /* determinism: a second run gives the same bytes */
    r = cli_run("quantize", src, "--out", o2, "--bits", spec, "--scale", "mse", "--rotation", "hadamard128", NULL);
    ck_assert_int_eq(r.status, 0);
    cli_result_free(&r);
    expect_same_dirs(o1, o2);
    /* absmax, bits 8, lm_head named; the output is accepted by inspect */
    char *o3 = tmp_dir("o3");
    r = cli_run("quantize", "-m", src, "--out", o3, "--bits", "8,lm_head=6", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert(strstr(r.out, "lm_head.weight"));
    cli_result_free(&r);
    expect_linears(o3, src, TR_QSCALE_ABSMAX, TR_ROT_NONE, bits8, &count);
    ck_assert_uint_eq(count, 16);
    r = cli_run("inspect", o3, NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    ck_assert(strstr(r.out, "layout trellis_v3, 16 quantized tensors"));
    cli_result_free(&r);
}
END_TEST

/* --shard-size: several shards, the four tensors of a linear always together, same tensors as one shard. */
START_TEST(test_cli_shards)
{
    const char *src = src_fixture();
    char *one = tmp_dir("s1"), *many = tmp_dir("s2");
    cli_result r = cli_run("quantize", "-m", src, "--out", one, NULL);
    ck_assert_int_eq(r.status, 0);
    cli_result_free(&r);
    r = cli_run("quantize", "-m", src, "--out", many, "--shard-size", "9000", NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    cli_result_free(&r);
    tr_ckpt *a = NULL, *b = NULL;
    tr_error err;
    ck_assert_int_eq(tr_ckpt_open(one, NULL, &a, &err), TR_OK);
    ck_assert_int_eq(tr_ckpt_open(many, NULL, &b, &err), TR_OK);
    ck_assert_uint_eq(tr_ckpt_qlinear_count(a), tr_ckpt_qlinear_count(b));
    const char *first = tr_ckpt_qlinear_at(b, 0)->file, *last = tr_ckpt_qlinear_at(b, 14)->file;
    ck_assert(strstr(first, "model-00001-of-"));
    ck_assert(strcmp(first, last) != 0);
    for (size_t k = 0; k < tr_ckpt_qlinear_count(a); k++) {
        const tr_qlinear *x = tr_ckpt_qlinear_at(a, k), *y = tr_ckpt_qlinear_at(b, k);
        ck_assert_str_eq(x->name, y->name);
        ck_assert(strstr(x->file, "model-00001-of-00001.safetensors"));
        ck_assert(memcmp(x->w.indices, y->w.indices, x->w.indices_len) == 0);
        ck_assert(memcmp(x->w.scales, y->w.scales, (size_t)x->w.G * x->w.O * 4) == 0);
    }
    tr_ckpt_close(a);
    tr_ckpt_close(b);
    /* weight_map: the 4 keys of each linear name one shard; shards hold at most 9000 bytes unless one linear */
    size_t n;
    char *idx = (char *)slurp(many, "model.safetensors.index.json", &n);
    json_error_t je;
    json_t *doc = json_loads(idx, 0, &je), *wm = json_object_get(doc, "weight_map");
    const char *key;
    json_t *val;
    json_object_foreach(wm, key, val) {
        const char *u = strstr(key, "__indices");
        if (!u)
            continue;
        char base[512], k2[600];
        snprintf(base, sizeof base, "%.*s", (int)(u - key), key);
        static const char *const comp[] = {"__scales", "__su", "__sv"};
        for (int c = 0; c < 3; c++) {
            snprintf(k2, sizeof k2, "%s%s", base, comp[c]);
            ck_assert_str_eq(json_string_value(json_object_get(wm, k2)), json_string_value(val));
        }
    }
    json_decref(doc);
    tr_dealloc(idx);
    char names[64][256];
    size_t nf = list_dir(many, names, 64), shards = 0;
    for (size_t k = 0; k < nf; k++)
        if (strncmp(names[k], "model-", 6) == 0) {
            shards++;
            char path[4400];
            snprintf(path, sizeof path, "%s/%s", many, names[k]);
            tr_st_file *st = NULL;
            ck_assert_int_eq(tr_st_open(path, &st, &err), TR_OK);
            ck_assert(tr_st_data_size(st) <= 9000 || tr_st_count(st) == 4);
            tr_st_close(st);
        }
    ck_assert_uint_ge(shards, 3);
}
END_TEST

/* avg=X: the widths the CLI chose are tr_bits_allocate's on the SSE tables of the source tensors. */
START_TEST(test_cli_avg)
{
    const char *src = src_fixture();
    char *o = tmp_dir("avg");
    cli_result r = cli_run("quantize", "-m", src, "--out", o, "--bits", "avg=3.25,attn=4", NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    cli_result_free(&r);
    tr_ckpt *c = NULL, *s = NULL;
    tr_error err;
    ck_assert_int_eq(tr_ckpt_open(o, NULL, &c, &err), TR_OK);
    ck_assert_int_eq(tr_ckpt_open(src, NULL, &s, &err), TR_OK);
    size_t n = tr_ckpt_qlinear_count(c);
    ck_assert_uint_eq(n, 15);
    tr_alloc_tensor *t = calloc(n, sizeof *t);
    unsigned *want = calloc(n, sizeof *want);
    double num = 0, den = 0;
    for (size_t k = 0; k < n; k++) {
        const tr_qlinear *l = tr_ckpt_qlinear_at(c, k);
        t[k].name = l->name;
        t[k].numel = (uint64_t)l->w.O * l->w.I;
        t[k].fixed_bits = tr_quant_role(l->name) == TR_QROLE_ATTN ? 4 : 0;
        float *W = NULL;
        ck_assert_int_eq(tr_ckpt_load_f32(s, l->name, &W, NULL, &err), TR_OK);
        tr_quant_opts opt = {TR_QSCALE_ABSMAX, TR_ROT_NONE, 42, NULL};
        ck_assert_int_eq(tr_quantize_sse_table(l->name, W, l->w.O, l->w.I, &opt, t[k].sse, &err), TR_OK);
        tr_dealloc(W);
        num += (double)l->w.bits * t[k].numel;
        den += (double)t[k].numel;
    }
    ck_assert_int_eq(replay(t, n, 3.25, want), 0);
    for (size_t k = 0; k < n; k++)
        ck_assert_msg(tr_ckpt_qlinear_at(c, k)->w.bits == want[k], "%s", t[k].name);
    ck_assert(num / den <= 3.25 && num / den > 3.0);
    free(t);
    free(want);
    tr_ckpt_close(c);
    tr_ckpt_close(s);
    /* unreachable target */
    r = cli_run("quantize", "-m", src, "--out", tmp_dir("avg2"), "--bits", "avg=2,attn=8", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_msg(strstr(r.err, "avg=2 cannot be reached"), "%.3000s", r.err);
    cli_result_free(&r);
}
END_TEST

START_TEST(test_cli_errors)
{
    const char *src = src_fixture();
    static const struct {
        const char *a[4];
        const char *msg;
    } cases[] = {
        {{"--bits", "gate=9"}, "--bits: TR_E_USAGE: gate=9: the width must be an integer in 2..8"},
        {{"--bits", "avg=3,default=4"}, "avg=X replaces default"},
        {{"--scale", "max"}, "--scale must be absmax or mse"},
        {{"--rotation", "hadamard64"}, "--rotation must be none or hadamard128"},
        {{"--seed", "-1"}, "--seed needs an unsigned decimal integer"},
        {{"--seed", "18446744073709551616"}, "--seed needs an unsigned decimal integer"},
        {{"--shard-size", "0"}, "--shard-size needs a positive number of bytes"},
        {{"--bogus"}, "unknown option --bogus"},
        {{"extra"}, "unexpected argument extra"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        cli_result r = cli_run("quantize", "-m", src, "--out", tmp_dir("bad"), cases[k].a[0], cases[k].a[1], NULL);
        ck_assert_int_eq(r.status, 2);
        ck_assert_msg(strstr(r.err, cases[k].msg), "%.3000s", r.err);
        cli_result_free(&r);
    }
    cli_result r = cli_run("quantize", "-m", src, NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert(strstr(r.err, "need the source model (-m SRC) and --out DIR"));
    cli_result_free(&r);
    r = cli_run("quantize", "--help", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert(strstr(r.out, "Usage: trellis quantize"));
    cli_result_free(&r);
    /* --out not empty: refused, nothing touched */
    r = cli_run("quantize", "-m", src, "--out", src, NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_msg(strstr(r.err, "is not empty; quantize writes only into a new or empty directory"), "%.3000s", r.err);
    cli_result_free(&r);
    /* an empty existing directory is fine */
    char *e = tmp_dir("empty");
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", e);
    ck_assert_int_eq(system(cmd), 0);
    r = cli_run("quantize", "-m", src, "--out", e, "--bits", "2", NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    cli_result_free(&r);
    /* a trellis directory as source: input error */
    r = cli_run("quantize", "-m", e, "--out", tmp_dir("again"), NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_msg(strstr(r.err, "TR_E_INPUT: layout trellis_v3: quantize reads an HF float checkpoint"), "%.3000s", r.err);
    cli_result_free(&r);
    /* no such source */
    r = cli_run("quantize", "-m", "/nonexistent/model", "--out", tmp_dir("none"), NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
    /* a NaN weight names the tensor and the index */
    char *bad = tmp_dir("nan_src");
    write_fixture(bad, 130);
    r = cli_run("quantize", "-m", bad, "--out", tmp_dir("nan_out"), NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_msg(strstr(r.err, "TR_E_NONFINITE: model.layers.0.self_attn.q_proj.weight: element 130 [1,2] is NaN"),
                  "%.3000s", r.err);
    cli_result_free(&r);
}
END_TEST

static cli_result run_injected(const char *src, unsigned long n)
{
    char *out = tmp_dir("inj");
    tr_alloc_fail_at(n);
    return cli_run("quantize", "-m", src, "--out", out, "--bits", "avg=5,lm_head=3", "--shard-size", "20000",
                   "--rotation", "hadamard128", NULL);
}

/* `trellis quantize` under an allocation failure: exit 4, never a crash or a wrong success.  Every point under
 * TR_LONG_TESTS (make check-long), else about 80 points spread over the run. */
START_TEST(test_cli_alloc_failures)
{
    const char *src = src_fixture();
    cli_result r = run_injected(src, ~0ul);   /* count the points */
    unsigned long total = tr_alloc_points();
    tr_alloc_fail_at(0);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    cli_result_free(&r);
    ck_assert_uint_gt(total, 100);
    unsigned long step = tr_test_long() ? 1 : total / 80 + 1;
    for (unsigned long n = 1; n <= total; n += step) {
        r = run_injected(src, n);
        int fired = tr_alloc_fired();
        tr_alloc_fail_at(0);
        ck_assert_msg(fired, "point %lu of %lu did not fire", n, total);
        ck_assert_msg(r.status == 4, "point %lu: exit %d: %s", n, r.status, r.err);
        cli_result_free(&r);
    }
}
END_TEST

Suite *suite_quantize(void)
{
    Suite *s = suite_create("quantize");
    TCase *tc = tcase_create("quantizer");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_signs);
    tcase_add_test(tc, test_nearest);
    tcase_add_test(tc, test_absmax_hand);
    tcase_add_test(tc, test_mse_hand);
    tcase_add_test(tc, test_bruteforce);
    tcase_add_test(tc, test_hadamard);
    tcase_add_test(tc, test_nonfinite);
    tcase_add_test(tc, test_sse_table);
    tcase_add_test(tc, test_quantize_alloc_failures);
    tcase_add_test(tc, test_roles);
    tcase_add_test(tc, test_spec_good);
    tcase_add_test(tc, test_spec_bad);
    tcase_add_test(tc, test_allocate_hand);
    tcase_add_test(tc, test_allocate_replay);
    suite_add_tcase(s, tc);
    TCase *cli = tcase_create("cli");
    tcase_set_timeout(cli, tr_test_long() ? 1200 : 60);   /* check-long: every allocation point */
    tcase_add_test(cli, test_cli_end_to_end);
    tcase_add_test(cli, test_cli_shards);
    tcase_add_test(cli, test_cli_avg);
    tcase_add_test(cli, test_cli_errors);
    tcase_add_test(cli, test_cli_alloc_failures);
    suite_add_tcase(s, cli);
    return s;
}
