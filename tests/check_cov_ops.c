/*
 * check_cov_ops.c — argument validation and rarely used options of the reference ops (KERNELS.md §4, MOE.md §1):
 * router configurations outside their ranges and candidate lists, grouping with invalid sizes, gather rows that
 * name a token beyond T, the NaN scan's counts per kind, Hadamard post-scales, the 160/192 block splits and the
 * refused layouts, gemm_trellis with f16 accumulation into f32 outputs and the hadamard128 refusal, experts whose
 * projections do not fit, moe_swiglu with experts of two shapes, tr_ref_expert_row against expert_ffn, and FNV-1a.
 */
#include "tests.h"
#include "trellis/fp16.h"
#include "trellis/ops.h"
#include "trellis/pack.h"
#include "trellis/qweight.h"
#include "trellis/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- a quantized linear with random indices, scales 2^-4, signs ±1 ------------------------------------------- */

typedef struct lin {
    tr_qweight w;
    uint8_t *packed;
    float *s, *su, *sv;
} lin;

static void lin_make(lin *l, uint32_t O, uint32_t I, unsigned b, uint64_t seed)
{
    tr_rng r;
    tr_rng_seed(&r, seed);
    uint32_t G = (I + 127) / 128;
    size_t plen = 1 + (size_t)tr_packed_body_bytes(O, I, b);
    uint8_t *q = malloc((size_t)O * I);
    for (size_t k = 0; k < (size_t)O * I; k++)
        q[k] = (uint8_t)tr_rng_int(&r, 0, (1 << b) - 1);
    l->packed = malloc(plen);
    tr_pack_indices(q, O, I, b, l->packed);
    free(q);
    l->s = malloc((size_t)G * O * 4);
    l->su = malloc((size_t)I * 4);
    l->sv = malloc((size_t)O * 4);
    for (size_t k = 0; k < (size_t)G * O; k++)
        l->s[k] = 1.0f / 16;
    for (uint32_t k = 0; k < I; k++)
        l->su[k] = tr_rng_next(&r) >> 63 ? -1.0f : 1.0f;
    for (uint32_t k = 0; k < O; k++)
        l->sv[k] = tr_rng_next(&r) >> 63 ? -1.0f : 1.0f;
    l->w = (tr_qweight){O, I, b, 128, G, TR_ROT_NONE, l->packed, plen, l->s, l->su, l->sv};
}

static void lin_drop(lin *l)
{
    free(l->packed);
    free(l->s);
    free(l->su);
    free(l->sv);
}

/* ---- routers ------------------------------------------------------------------------------------------------- */

START_TEST(test_router_checks)
{
    tr_error err;
    tr_router_mode m;
    ck_assert_str_eq(tr_router_mode_name((tr_router_mode)9), "?");
    ck_assert_int_eq(tr_router_mode_parse("softmax_topk_f16", &m), 0);
    ck_assert_int_eq(m, TR_ROUTER_SOFTMAX_TOPK_F16);
    ck_assert_int_eq(tr_router_mode_parse("sigmoid", &m), -1);
    const tr_router_cfg good = {TR_ROUTER_NOAUX_TC, 8, 2, 1, 1.0f, 4, 2, 2.5f};
    ck_assert_int_eq(tr_router_check(&good, &err), TR_OK);
    static const struct {
        int field;
        double value;
        const char *needle;
    } bad[] = {
        {0, 7, "mode 7 unknown"},
        {1, 0, "num_experts 0 outside [1, 65535]"},
        {1, 70000, "num_experts 70000 outside"},
        {2, 0, "top_k"},
        {2, 9, "top_k"},
        {3, 0, "routed_scaling_factor"},
        {3, INFINITY, "routed_scaling_factor"},
        {4, 3, "n_group 3 does not divide num_experts 8"},
        {4, 0, "n_group 0 does not divide"},
        {4, 8, "n_group 8 leaves fewer than 2 experts per group"},
        {5, 0, "topk_group 0 outside [1, n_group 4]"},
        {5, 5, "topk_group 5 outside"},
        {6, 1, "topk_group 1 · 2 experts per group < top_k 3"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tr_router_cfg c = good;
        switch (bad[i].field) {
        case 0: c.mode = (tr_router_mode)(int)bad[i].value; break;
        case 1: c.E = (uint32_t)bad[i].value; break;
        case 2: c.k = (uint32_t)bad[i].value; break;
        case 3: c.routed_scaling_factor = (float)bad[i].value; break;
        case 4: c.n_group = (uint32_t)bad[i].value; break;
        case 5: c.topk_group = (uint32_t)bad[i].value; break;
        default: c.topk_group = 1; c.k = 3; break;
        }
        ck_assert_int_eq(tr_router_check(&c, &err), TR_E_INVALID_PARAM);
        ck_assert_msg(strstr(err.text, bad[i].needle), "%zu: %s", i, err.text);
    }
    tr_router_cfg s = {TR_ROUTER_SOFTMAX_TOPK, 8, 2, 0, 0.0f, 1, 1, 1.0f};
    ck_assert_int_eq(tr_router_check(&s, &err), TR_E_INVALID_PARAM);
    ck_assert_msg(strstr(err.text, "temperature"), "%s", err.text);
    s.temperature = NAN;
    ck_assert_int_eq(tr_router_check(&s, &err), TR_E_INVALID_PARAM);
}
END_TEST

START_TEST(test_router_candidates)
{
    tr_router_cfg c = {TR_ROUTER_SOFTMAX_TOPK, 4, 2, 0, 1.0f, 1, 1, 1.0f};
    float logits[4] = {0.5f, 2.0f, -1.0f, 1.0f};
    int32_t ids[2], count[4];
    float w[2], load[4];
    tr_error err;
    int32_t cand[3] = {2, 0, 3};   /* expert 1, the best logit, is not a candidate */
    ck_assert_int_eq(tr_ref_router_topk(&c, logits, 1, NULL, cand, 3, ids, w, load, count, &err), TR_OK);
    ck_assert_int_eq(ids[0], 3);
    ck_assert_int_eq(ids[1], 0);
    ck_assert_float_eq(w[0] + w[1] > 0.0f, 1);   /* not renormalised: the softmax over all 4 experts */
    ck_assert_int_eq(count[1], 0);
    ck_assert_int_eq(count[3], 1);
    int32_t out_of_range[3] = {2, 4, 0}, twice[3] = {2, 2, 0}, few[1] = {2};
    ck_assert_int_eq(tr_ref_router_topk(&c, logits, 1, NULL, out_of_range, 3, ids, w, NULL, NULL, &err),
                     TR_E_INVALID_EXPERT_ID);
    ck_assert_msg(strstr(err.text, "candidate 1 of token 0 is 4, outside [0, 4)"), "%s", err.text);
    ck_assert_int_eq(tr_ref_router_topk(&c, logits, 1, NULL, twice, 3, ids, w, NULL, NULL, &err),
                     TR_E_INVALID_PARAM);
    ck_assert_msg(strstr(err.text, "candidate 2 of token 0 is listed twice"), "%s", err.text);
    ck_assert_int_eq(tr_ref_router_topk(&c, logits, 1, NULL, few, 1, ids, w, NULL, NULL, &err), TR_E_INVALID_PARAM);
    ck_assert_msg(strstr(err.text, "token 0 has 1 candidates, fewer than top_k 2"), "%s", err.text);
    /* norm_topk_prob: the two weights sum to 1 */
    c.norm_topk_prob = 1;
    ck_assert_int_eq(tr_ref_router_topk(&c, logits, 1, NULL, NULL, 0, ids, w, NULL, NULL, &err), TR_OK);
    ck_assert(fabsf(w[0] + w[1] - 1.0f) < 1e-6f);
}
END_TEST

/* ---- grouping, gather, nan scan ----------------------------------------------------------------------------------- */

START_TEST(test_grouping_and_gather_errors)
{
    tr_error err;
    int32_t ids[4] = {0, 1, 1, 5}, out[4];
    uint32_t counts[4];
    ck_assert_int_eq(tr_ref_moe_count(ids, 2, 0, 4, counts, &err), TR_E_INVALID_SHAPE);
    ck_assert_int_eq(tr_ref_moe_count(ids, 2, 2, 0, counts, &err), TR_E_INVALID_SHAPE);
    ck_assert_msg(strstr(err.text, "k and E must be >= 1"), "%s", err.text);
    ck_assert_int_eq(tr_ref_moe_count(ids, 2, 2, 4, counts, &err), TR_E_INVALID_EXPERT_ID);
    ck_assert_msg(strstr(err.text, "flat=3 token=1 slot=1 id=5 num_experts=4"), "%s", err.text);
    ck_assert_int_eq(tr_ref_validate_expert_ids(ids, 4, 4, 4, out, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_ref_validate_expert_ids(ids, 4, 4, -1, out, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_ref_validate_expert_ids(ids, 4, 0, 0, out, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_ref_validate_expert_ids(ids, 4, 4, 2, out, &err), TR_OK);
    ck_assert_int_eq(out[3], 2);
    ck_assert_int_eq(out[2], 1);
    uint16_t x[6] = {1, 2, 3, 4, 5, 6}, rows[6];
    uint32_t tokens[2] = {2, 3};
    ck_assert_int_eq(tr_ref_moe_gather(x, 3, 4, tokens, 2, rows, &err), TR_E_INVALID_PARAM);
    ck_assert_msg(strstr(err.text, "row 1 names token 3, T = 3"), "%s", err.text);
    tokens[1] = 0;
    ck_assert_int_eq(tr_ref_moe_gather(x, 3, 4, tokens, 2, rows, &err), TR_OK);
    ck_assert_int_eq(rows[0], 5);
    ck_assert_int_eq(rows[3], 2);
}
END_TEST

START_TEST(test_nan_scan_kinds)
{
    float v[6] = {1.0f, -INFINITY, NAN, INFINITY, -INFINITY, 2.0f};
    tr_nan_scan s;
    tr_ref_nan_scan_f32(v, 6, &s);
    ck_assert_uint_eq(s.nan_count, 1);
    ck_assert_uint_eq(s.pos_inf_count, 1);
    ck_assert_uint_eq(s.neg_inf_count, 2);
    ck_assert_int_eq(s.first_index, 1);
    ck_assert_int_eq(s.first_kind, TR_NF_NEG_INF);
    uint16_t h[5] = {0x3C00, 0x7C00, 0xFC00, 0x7E00, 0xFC00};
    tr_ref_nan_scan_f16(h, 5, &s);
    ck_assert_uint_eq(s.nan_count, 1);
    ck_assert_uint_eq(s.pos_inf_count, 1);
    ck_assert_uint_eq(s.neg_inf_count, 2);
    ck_assert_int_eq(s.first_index, 1);
    ck_assert_int_eq(s.first_kind, TR_NF_POS_INF);
    tr_ref_nan_scan_f16(h, 1, &s);
    ck_assert_int_eq(s.first_index, -1);
    ck_assert_int_eq(s.first_kind, TR_NF_NONE);
}
END_TEST

/* ---- hadamard ------------------------------------------------------------------------------------------------------ */

START_TEST(test_hadamard_options)
{
    unsigned sizes[2];
    ck_assert_int_eq(tr_hadamard_blocks(160, sizes), 2);
    ck_assert_uint_eq(sizes[0], 128);
    ck_assert_uint_eq(sizes[1], 32);
    ck_assert_int_eq(tr_hadamard_blocks(192, sizes), 2);
    ck_assert_uint_eq(sizes[1], 64);
    ck_assert_int_eq(tr_hadamard_blocks(100, sizes), 0);
    ck_assert_uint_eq(tr_hadamard_cm_f16(32), 0x31A8);
    ck_assert_uint_eq(tr_hadamard_cm_f16(96), 0);
    tr_error err;
    float x[2 * 32], out[2 * 32], post[2] = {2.0f, -0.5f}, x64[64 * 2];
    memset(x, 0, sizeof x);
    x[0] = 1.0f;    /* row 0: e_0, whose transform is all ones */
    x[32] = 1.0f;   /* row 1 likewise */
    tr_hadamard_args a = {100, 0, 2, 0, 0, 0, 0, 0, NULL, NULL};
    ck_assert_int_eq(tr_ref_hadamard(&a, x, out, &err), TR_E_INVALID_PARAM);
    ck_assert_msg(strstr(err.text, "n = 100"), "%s", err.text);
    /* norm none with a post-scale: H·x times the row's scale */
    a = (tr_hadamard_args){32, 0, 2, 0, 0, 0, 0, 0, NULL, post};
    ck_assert_int_eq(tr_ref_hadamard(&a, x, out, &err), TR_OK);
    for (int i = 0; i < 32; i++) {
        ck_assert_float_eq(out[i], 2.0f);
        ck_assert_float_eq(out[32 + i], -0.5f);
    }
    /* ortho with a post-scale: one constant RN(c_32 · s) */
    a.ortho = 1;
    ck_assert_int_eq(tr_ref_hadamard(&a, x, out, &err), TR_OK);
    ck_assert_float_eq(out[5], (float)((double)tr_hadamard_cm_f32(32) * 2.0));
    ck_assert_float_eq(out[37], (float)((double)tr_hadamard_cm_f32(32) * -0.5));
    /* f16 data, ortho, post-scale */
    uint16_t xh[32], oh[32], ph[1] = {0x4000};
    for (int i = 0; i < 32; i++)
        xh[i] = i ? 0 : 0x3C00;
    a = (tr_hadamard_args){32, 0, 1, 0, 0, 0, 1, 0, NULL, ph, };
    a.f16 = 1;
    ck_assert_int_eq(tr_ref_hadamard(&a, xh, oh, &err), TR_OK);
    ck_assert_uint_eq(oh[7], tr_f64_to_f16(tr_f16_to_f32(tr_hadamard_cm_f16(32)) * 2.0));
    /* cols layout: K % n and post-scales are refused */
    a = (tr_hadamard_args){64, 1, 0, 96, 2, 0, 1, 0, NULL, NULL};
    ck_assert_int_eq(tr_ref_hadamard(&a, x64, out, &err), TR_E_INVALID_SHAPE);
    a.K = 64;
    a.postscale = post;
    ck_assert_int_eq(tr_ref_hadamard(&a, x64, out, &err), TR_E_INVALID_SHAPE);
    ck_assert_msg(strstr(err.text, "cols layout needs K % n == 0 and no post-scale"), "%s", err.text);
}
END_TEST

/* ---- linears and experts --------------------------------------------------------------------------------------- */

START_TEST(test_linear_options)
{
    lin a, b;
    lin_make(&a, 16, 128, 4, 1);
    lin_make(&b, 16, 64, 4, 2);
    float X[128], yf[16];
    uint16_t yh[16];
    for (int i = 0; i < 128; i++)
        X[i] = (float)((i % 7) - 3) / 8;
    tr_error err;
    /* acc f16 into an f32 output: the f16 result widened */
    ck_assert_int_eq(tr_ref_gemm_trellis(&a.w, X, 1, TR_ACC_F16, 0, yf, &err), TR_OK);
    ck_assert_int_eq(tr_ref_gemm_trellis(&a.w, X, 1, TR_ACC_F16, 1, yh, &err), TR_OK);
    for (int o = 0; o < 16; o++)
        ck_assert_float_eq(yf[o], tr_f16_to_f32(yh[o]));
    a.w.rotation = TR_ROT_HADAMARD128;
    ck_assert_int_eq(tr_ref_gemm_trellis(&a.w, X, 1, TR_ACC_F16, 1, yh, &err), TR_E_INVALID_PARAM);
    ck_assert_msg(strstr(err.text, "acc f16 is not defined for rotation hadamard128"), "%s", err.text);
    ck_assert_int_eq(tr_ref_gemm_trellis(&a.w, X, 1, TR_ACC_F32, 0, yf, &err), TR_OK);
    a.w.rotation = TR_ROT_NONE;
    ck_assert_int_eq(tr_ref_gemm_trellis_swiglu(&a.w, &b.w, X, 1, TR_ACC_F32, yh, &err), TR_E_INVALID_SHAPE);
    ck_assert_msg(strstr(err.text, "gate [16,128] and up [16,64] differ"), "%s", err.text);
    lin_drop(&a);
    lin_drop(&b);
}
END_TEST

START_TEST(test_expert_checks)
{
    enum { H = 32, I = 16 };
    lin g, u, d, d2;
    lin_make(&g, I, H, 3, 3);
    lin_make(&u, I, H, 3, 4);
    lin_make(&d, H, I, 3, 5);
    lin_make(&d2, H, 2 * I, 3, 6);
    tr_error err;
    tr_expert e = {&g.w, &u.w, NULL};
    ck_assert_int_eq(tr_expert_check(&e, &err), TR_E_INVALID_SHAPE);
    ck_assert_msg(strstr(err.text, "missing projection"), "%s", err.text);
    e.down = &d2.w;
    ck_assert_int_eq(tr_expert_check(&e, &err), TR_E_INVALID_SHAPE);
    ck_assert_msg(strstr(err.text, "do not form an expert"), "%s", err.text);
    e.down = &d.w;
    ck_assert_int_eq(tr_expert_check(&e, &err), TR_OK);
    g.w.rotation = TR_ROT_HADAMARD128;   /* I % 128 != 0 as well: the structural check reports first */
    ck_assert_int_ne(tr_expert_check(&e, &err), TR_OK);
    g.w.rotation = TR_ROT_NONE;
    lin gh, uh, dh;   /* H = 128: rotation is structurally fine, but experts use rotation none */
    lin_make(&gh, I, 128, 3, 7);
    lin_make(&uh, I, 128, 3, 8);
    lin_make(&dh, 128, I, 3, 9);
    tr_expert eh = {&gh.w, &uh.w, &dh.w};
    uh.w.rotation = TR_ROT_HADAMARD128;
    ck_assert_int_eq(tr_expert_check(&eh, &err), TR_E_INVALID_PARAM);
    ck_assert_msg(strstr(err.text, "expert projections use rotation none"), "%s", err.text);
    uh.w.rotation = TR_ROT_NONE;

    /* tr_ref_expert_row exposes the stages of expert_ffn's f32 row: the same y */
    float x[H], gv[I], uv[I], sv[I], y[H], yffn[H];
    for (int i = 0; i < H; i++)
        x[i] = (float)((i * 5) % 11 - 5) / 4;
    tr_ref_expert_row(&e, x, gv, uv, sv, y);
    ck_assert_int_eq(tr_ref_expert_ffn(&e, x, 1, TR_ACC_F32, yffn, &err), TR_OK);
    ck_assert_mem_eq(y, yffn, sizeof y);
    for (int j = 0; j < I; j++)
        ck_assert_float_eq(sv[j], gv[j] / (1.0f + expf(-gv[j])) * uv[j]);

    /* moe_swiglu: no tokens, an incomplete expert, experts of two shapes */
    tr_expert ex[3] = {e, eh, {NULL, NULL, NULL}};
    int32_t ids[2] = {0, 1};
    float probs[2] = {0.5f, 0.5f}, out[2 * H], x2[2 * 128];
    memset(x2, 0, sizeof x2);
    ck_assert_int_eq(tr_ref_moe_swiglu(ex, 3, x2, 0, ids, probs, 2, TR_ACC_F32, out, &err), TR_OK);
    ck_assert_int_eq(tr_ref_moe_swiglu(ex, 3, x2, 1, ids, probs, 2, TR_ACC_F32, out, &err), TR_E_INVALID_SHAPE);
    ck_assert_msg(strstr(err.text, "expert 1 has shape [16,128], expert 0 [16,32]"), "%s", err.text);
    ids[1] = 2;
    ck_assert_int_eq(tr_ref_moe_swiglu(ex, 3, x2, 1, ids, probs, 2, TR_ACC_F32, out, &err), TR_E_INVALID_SHAPE);
    ck_assert_msg(strstr(err.text, "missing projection"), "%s", err.text);
    lin_drop(&g);
    lin_drop(&u);
    lin_drop(&d);
    lin_drop(&d2);
    lin_drop(&gh);
    lin_drop(&uh);
    lin_drop(&dh);
}
END_TEST

START_TEST(test_fnv1a64)
{
    ck_assert_uint_eq(tr_fnv1a64("", 0), UINT64_C(0xcbf29ce484222325));
    ck_assert_uint_eq(tr_fnv1a64("a", 1), UINT64_C(0xaf63dc4c8601ec8c));
    ck_assert_uint_eq(tr_fnv1a64("foobar", 6), UINT64_C(0x85944171f73967e8));
    ck_assert_uint_eq(tr_fnv1a64("foobar", 6), tr_fnv1a64_str("foobar"));
    ck_assert_uint_ne(tr_fnv1a64("a\0b", 3), tr_fnv1a64_str("a"));   /* bytes past a NUL count */
}
END_TEST

Suite *suite_cov_ops(void)
{
    Suite *s = suite_create("cov_ops");
    TCase *tc = tcase_create("ops");
    tcase_add_test(tc, test_router_checks);
    tcase_add_test(tc, test_router_candidates);
    tcase_add_test(tc, test_grouping_and_gather_errors);
    tcase_add_test(tc, test_nan_scan_kinds);
    tcase_add_test(tc, test_hadamard_options);
    tcase_add_test(tc, test_linear_options);
    tcase_add_test(tc, test_expert_checks);
    tcase_add_test(tc, test_fnv1a64);
    suite_add_tcase(s, tc);
    return s;
}
