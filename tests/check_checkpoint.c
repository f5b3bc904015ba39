/*
 * check_checkpoint.c — checkpoint directories (FORMAT.md §2-§3): layout detection, HF float single and sharded,
 * trellis v3 and v2 (the independent foreign fixtures of golden/foreign), every warning, the v3 writer's determinism
 * and sharding, resolution order, and allocation failure at every point of open.
 */
#include "tests.h"
#include "trellis/alloc.h"
#include "trellis/checkpoint.h"
#include "trellis/fileio.h"
#include "trellis/pack.h"
#include "trellis/rng.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------------------------------------------- */

static char *mkdir_in_tmp(const char *name)
{
    static char path[8][4200];
    static int slot;
    char *p = path[slot++ % 8];
    snprintf(p, 4200, "%s/%s", tr_test_tmpdir(), name);
    char cmd[8600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", p, p);
    ck_assert_int_eq(system(cmd), 0);
    return p;
}

static void write_text(const char *dir, const char *name, const char *text)
{
    tr_test_write(dir, name, text, strlen(text));
}

/* A quantized linear's four tensors added to a writer (indices pattern, scales 2^-6, signs ±1). */
typedef struct qbufs {
    uint8_t *packed;
    float *s, *su, *sv;
} qbufs;

static void add_qlinear(tr_st_writer *w, const char *base, uint32_t O, uint32_t I, unsigned b, uint32_t G,
                        qbufs *k, float sign_value)
{
    size_t plen = 1 + (size_t)tr_packed_body_bytes(O, I, b);
    uint8_t *q = malloc((size_t)O * I);
    for (size_t n = 0; n < (size_t)O * I; n++)
        q[n] = (uint8_t)(n % (1u << b));
    k->packed = malloc(plen);
    tr_pack_indices(q, O, I, b, k->packed);
    free(q);
    k->s = malloc((size_t)G * O * 4);
    k->su = malloc((size_t)I * 4);
    k->sv = malloc((size_t)O * 4);
    for (size_t n = 0; n < (size_t)G * O; n++)
        k->s[n] = 1.0f / 64;
    for (uint32_t n = 0; n < I; n++)
        k->su[n] = n % 2 ? -1.0f : sign_value;
    for (uint32_t n = 0; n < O; n++)
        k->sv[n] = 1.0f;
    char key[512];
    uint64_t s1[1] = {plen}, s2[2] = {G, O}, s3[1] = {I}, s4[1] = {O};
    tr_error err;
    snprintf(key, sizeof key, "%s__indices", base);
    ck_assert_int_eq(tr_st_writer_add(w, key, TR_DT_U8, 1, s1, k->packed, &err), TR_OK);
    snprintf(key, sizeof key, "%s__scales", base);
    ck_assert_int_eq(tr_st_writer_add(w, key, TR_DT_F32, 2, s2, k->s, &err), TR_OK);
    snprintf(key, sizeof key, "%s__su", base);
    ck_assert_int_eq(tr_st_writer_add(w, key, TR_DT_F32, 1, s3, k->su, &err), TR_OK);
    snprintf(key, sizeof key, "%s__sv", base);
    ck_assert_int_eq(tr_st_writer_add(w, key, TR_DT_F32, 1, s4, k->sv, &err), TR_OK);
}

static void free_q(qbufs *k)
{
    free(k->packed);
    free(k->s);
    free(k->su);
    free(k->sv);
}

static void write_st(tr_st_writer *w, const char *dir, const char *name)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    tr_error err;
    ck_assert_msg(tr_st_writer_write(w, path, &err) == TR_OK, "%s", err.text);
    tr_st_writer_free(w);
}

static int has_warning(const tr_ckpt *c, int code, const char *needle)
{
    const tr_warnings *w = tr_ckpt_warnings(c);
    for (size_t i = 0; i < w->count; i++)
        if (w->items[i].code == code && (!needle || strstr(w->items[i].text, needle)))
            return 1;
    return 0;
}

static uint8_t *slurp(const char *path, size_t *n)
{
    char *d = NULL;
    tr_error err;
    ck_assert_msg(tr_file_read_all(path, &d, n, &err) == TR_OK, "%s", err.text);
    return (uint8_t *)d;
}

/* ---- foreign fixtures ------------------------------------------------------------------------------------------ */

START_TEST(test_foreign_fixtures)
{
    static const char *const ckpts[] = {"v3_dense_sharded", "v3_moe_single_noweight", "v2_moe", "v3_hadamard"};
    static const tr_layout layouts[] = {TR_LAYOUT_TRELLIS_V3, TR_LAYOUT_TRELLIS_V3, TR_LAYOUT_TRELLIS_V2,
                                        TR_LAYOUT_TRELLIS_V3};
    for (size_t k = 0; k < 4; k++) {
        char dir[256], man[300];
        snprintf(dir, sizeof dir, "golden/foreign/%s", ckpts[k]);
        snprintf(man, sizeof man, "golden/foreign/%s.expected/manifest.json", ckpts[k]);
        tr_ckpt *c = NULL;
        tr_error err;
        ck_assert_msg(tr_ckpt_open(dir, NULL, &c, &err) == TR_OK, "%s", err.text);
        ck_assert_int_eq(tr_ckpt_layout(c), layouts[k]);
        json_error_t jerr;
        json_t *m = json_load_file(man, 0, &jerr);
        ck_assert_ptr_nonnull(m);
        json_t *tensors = json_object_get(m, "tensors");
        ck_assert_uint_eq(json_array_size(tensors), tr_ckpt_qlinear_count(c));
        for (size_t i = 0; i < json_array_size(tensors); i++) {
            json_t *t = json_array_get(tensors, i);
            const char *name = json_string_value(json_object_get(t, "name"));
            const tr_qlinear *q = tr_ckpt_qlinear_find(c, name);
            ck_assert_msg(q != NULL, "%s missing", name);
            ck_assert_uint_eq(q->w.bits, json_integer_value(json_object_get(t, "bits")));
            ck_assert_uint_eq(q->w.gs, json_integer_value(json_object_get(t, "group_size")));
            ck_assert_str_eq(tr_rotation_name(q->w.rotation), json_string_value(json_object_get(t, "rotation")));
            char path[512];
            snprintf(path, sizeof path, "golden/foreign/%s.expected/%s", ckpts[k],
                     json_string_value(json_object_get(t, "file")));
            size_t n;
            uint8_t *want = slurp(path, &n);
            ck_assert_uint_eq(n, (size_t)q->w.O * q->w.I * 2);
            uint16_t *got = malloc(n);
            tr_dequant_layer(&q->w, got);
            ck_assert_msg(memcmp(got, want, n) == 0, "%s %s differs", ckpts[k], name);
            free(got);
            tr_dealloc(want);
        }
        json_decref(m);
        tr_ckpt_close(c);
    }
}
END_TEST

START_TEST(test_foreign_warnings)
{
    tr_ckpt *c = NULL;
    tr_error err;
    ck_assert_int_eq(tr_ckpt_open("golden/foreign/v3_dense_sharded", NULL, &c, &err), TR_OK);
    ck_assert(has_warning(c, TR_W_MISALIGNED, "not aligned to 4 bytes"));
    ck_assert_uint_eq(tr_ckpt_group_size(c), 32);
    /* layers[] name without ".weight" is matched */
    ck_assert(tr_ckpt_qlinear_find(c, "model.layers.1.mlp.gate_proj.weight")->has_meta);
    /* float tensors of base_weights, widened */
    float *v = NULL;
    uint64_t n = 0;
    ck_assert_int_eq(tr_ckpt_load_f32(c, "model.norm.weight", &v, &n, &err), TR_OK);
    ck_assert_uint_gt(n, 0);
    tr_dealloc(v);
    ck_assert_int_eq(tr_ckpt_load_f32(c, "model.layers.9.nope", &v, &n, &err), TR_E_TENSOR_MISSING);
    ck_assert_msg(strstr(err.text, "model.layers.9.nope: TR_E_TENSOR_MISSING: not found in model shards"), "%s",
                  err.text);
    tr_ckpt_close(c);
    ck_assert_int_eq(tr_ckpt_open("golden/foreign/v3_moe_single_noweight", NULL, &c, &err), TR_OK);
    ck_assert(has_warning(c, TR_W_NO_QMETA, NULL));
    ck_assert_uint_eq(tr_ckpt_group_size(c), 0);   /* absent: inferred per layer */
    ck_assert_str_eq(tr_ckpt_qlinear_at(c, 0)->key_base, "model__layers__0__self_attn__q_proj");
    tr_ckpt_close(c);
}
END_TEST

/* ---- HF float ---------------------------------------------------------------------------------------------------- */

START_TEST(test_hf_float_single_and_sharded)
{
    char *dir = mkdir_in_tmp("hf_single");
    write_text(dir, "config.json", "{\"num_hidden_layers\": 1}");
    uint16_t bf[4] = {0x3F80, 0x4000, 0xBF80, 0x0000};
    float f[3] = {1, 2, 3};
    uint64_t s4[1] = {4}, s3[1] = {3};
    tr_error err;
    tr_st_writer *w = tr_st_writer_new();
    tr_st_writer_add(w, "model.layers.0.input_layernorm.weight", TR_DT_BF16, 1, s4, bf, &err);
    tr_st_writer_add(w, "model.layers.1.input_layernorm.weight", TR_DT_F32, 1, s3, f, &err);   /* NextN: ignored */
    write_st(w, dir, "model.safetensors");
    tr_layout layout;
    ck_assert_int_eq(tr_detect_layout(dir, &layout, &err), TR_OK);
    ck_assert_int_eq(layout, TR_LAYOUT_HF_FLOAT);
    tr_ckpt *c = NULL;
    ck_assert_msg(tr_ckpt_open(dir, NULL, &c, &err) == TR_OK, "%s", err.text);
    ck_assert_uint_eq(tr_ckpt_tensor_count(c), 1);
    ck_assert_uint_eq(tr_ckpt_num_layers(c), 1);
    float *v;
    uint64_t n;
    ck_assert_int_eq(tr_ckpt_load_f32(c, "model.layers.0.input_layernorm.weight", &v, &n, &err), TR_OK);
    ck_assert(n == 4 && v[0] == 1.0f && v[1] == 2.0f && v[2] == -1.0f);
    tr_dealloc(v);
    ck_assert_int_eq(tr_ckpt_load_f32(c, "model.layers.1.input_layernorm.weight", &v, &n, &err),
                     TR_E_TENSOR_MISSING);
    tr_ckpt_close(c);

    /* sharded: unlisted tensor and total_size warnings, duplicate across shards is an error */
    dir = mkdir_in_tmp("hf_sharded");
    write_text(dir, "config.json", "{}");
    w = tr_st_writer_new();
    tr_st_writer_add(w, "a.weight", TR_DT_F32, 1, s3, f, &err);
    tr_st_writer_add(w, "stray.weight", TR_DT_F32, 1, s3, f, &err);
    write_st(w, dir, "model-00001-of-00002.safetensors");
    w = tr_st_writer_new();
    tr_st_writer_add(w, "b.weight", TR_DT_F32, 1, s3, f, &err);
    write_st(w, dir, "model-00002-of-00002.safetensors");
    write_text(dir, "model.safetensors.index.json",
               "{\"metadata\":{\"total_size\":999},\"weight_map\":{\"a.weight\":\"model-00001-of-00002.safetensors\","
               "\"b.weight\":\"model-00002-of-00002.safetensors\"}}");
    ck_assert_msg(tr_ckpt_open(dir, NULL, &c, &err) == TR_OK, "%s", err.text);
    ck_assert(has_warning(c, TR_W_UNLISTED_TENSOR, "stray.weight"));
    ck_assert(has_warning(c, TR_W_TOTAL_SIZE, "total_size 999, tensors hold 24 bytes"));
    ck_assert_uint_eq(tr_ckpt_tensor_count(c), 2);
    tr_tensor_ref r;
    ck_assert_int_eq(tr_ckpt_tensor_at(c, 1, &r), TR_OK);
    ck_assert_str_eq(r.name, "b.weight");
    ck_assert_int_eq(tr_ckpt_tensor_at(c, 2, &r), TR_E_INVALID_PARAM);
    tr_ckpt_close(c);
    w = tr_st_writer_new();
    tr_st_writer_add(w, "b.weight", TR_DT_F32, 1, s3, f, &err);
    tr_st_writer_add(w, "a.weight", TR_DT_F32, 1, s3, f, &err);
    write_st(w, dir, "model-00002-of-00002.safetensors");
    ck_assert_int_eq(tr_ckpt_open(dir, NULL, &c, &err), TR_E_TENSOR_DUPLICATE);
    ck_assert_msg(strstr(err.text, "tensor \"a.weight\" is also in"), "%s", err.text);
}
END_TEST

START_TEST(test_layout_detection)
{
    tr_layout l;
    tr_error err;
    char *dir = mkdir_in_tmp("layout_empty");
    ck_assert_int_eq(tr_detect_layout(dir, &l, &err), TR_E_LAYOUT);
    write_text(dir, "config.json", "{}");
    ck_assert_int_eq(tr_detect_layout(dir, &l, &err), TR_E_LAYOUT);
    ck_assert_msg(strstr(err.text, "no model.safetensors"), "%s", err.text);
    write_text(dir, "config.json", "{\"quantization_config\":{\"quant_method\":\"exl3\"}}");
    ck_assert_int_eq(tr_detect_layout(dir, &l, &err), TR_OK);
    ck_assert_int_eq(l, TR_LAYOUT_EXL3);
    tr_ckpt *c = NULL;
    ck_assert_int_eq(tr_ckpt_open(dir, NULL, &c, &err), TR_E_UNSUPPORTED);
    ck_assert_msg(strstr(err.text, "EXL3 checkpoints are not supported yet"), "%s", err.text);
    write_text(dir, "config.json", "{not json");
    ck_assert_int_eq(tr_detect_layout(dir, &l, &err), TR_E_CONFIG);
    ck_assert_int_eq(tr_detect_layout("/nonexistent", &l, &err), TR_E_LAYOUT);
    /* a .trellis tensor key means EXL3 even without quantization_config */
    write_text(dir, "config.json", "{}");
    uint16_t t[16] = {0};
    uint64_t shape[3] = {1, 1, 16};
    tr_st_writer *w = tr_st_writer_new();
    tr_st_writer_add(w, "model.layers.0.mlp.down_proj.trellis", TR_DT_I16, 3, shape, t, &err);
    write_st(w, dir, "model.safetensors");
    ck_assert_int_eq(tr_detect_layout(dir, &l, &err), TR_OK);
    ck_assert_int_eq(l, TR_LAYOUT_EXL3);
    ck_assert_str_eq(tr_layout_name(TR_LAYOUT_TRELLIS_V2), "trellis_v2");
}
END_TEST

/* ---- v3: warnings, group size inference, routers, fallback ------------------------------------------------------- */

START_TEST(test_v3_warnings_and_resolution)
{
    char *dir = mkdir_in_tmp("v3_warn");
    write_text(dir, "config.json", "{\"num_hidden_layers\": 2}");
    tr_st_writer *w = tr_st_writer_new();
    qbufs a, b, r, d;
    add_qlinear(w, "model__layers__0__self_attn__q_proj__weight", 16, 100, 4, 4, &a, 0.5f); /* gs 25, odd su */
    add_qlinear(w, "model__layers__1__mlp__gate__weight", 4, 16, 4, 1, &r, 1.0f);          /* quantized router */
    add_qlinear(w, "model__layers__0__mlp__up_proj__weight", 16, 16, 3, 1, &b, 1.0f);
    add_qlinear(w, "model__layers__5__mlp__up_proj__weight", 16, 16, 3, 1, &d, 1.0f);      /* ignored layer */
    b.s[3] = -1.0f;                                                                        /* TR_W_SCALES */
    float ones[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    uint64_t s16[1] = {16};
    tr_error err;
    tr_st_writer_add(w, "model.layers.0.weight.indices", TR_DT_F32, 1, s16, ones, &err);  /* dotted component */
    write_st(w, dir, "model.safetensors");
    w = tr_st_writer_new();
    tr_st_writer_add(w, "model.layers.1.mlp.gate.weight", TR_DT_F32, 1, s16, ones, &err);
    write_st(w, dir, "router_weights.safetensors");
    write_text(dir, "quantization_index.json",
               "{\"layers\":[{\"name\":\"model.layers.0.mlp.up_proj.weight\",\"bits\":4},"
               "{\"name\":\"model.layers.0.self_attn.k_proj.weight\"}]}");
    tr_ckpt *c = NULL;
    ck_assert_msg(tr_ckpt_open(dir, NULL, &c, &err) == TR_OK, "%s", err.text);
    ck_assert_uint_eq(tr_ckpt_qlinear_count(c), 2);
    ck_assert_uint_eq(tr_ckpt_qlinear_find(c, "model.layers.0.self_attn.q_proj.weight")->w.gs, 25);
    ck_assert(has_warning(c, TR_W_GROUP_SIZE, "group size 25 inferred from 4 scale groups over I=100"));
    ck_assert(has_warning(c, TR_W_SIGNS, "__su: 50 elements are not +1/-1"));
    ck_assert(has_warning(c, TR_W_SCALES, "__scales: 1 elements are <= 0"));
    ck_assert(has_warning(c, TR_W_BITS_MISMATCH, "header byte says 3 bits, metadata says 4"));
    ck_assert(has_warning(c, TR_W_NO_TENSORS, "model.layers.0.self_attn.k_proj.weight"));
    ck_assert(has_warning(c, TR_W_NO_QMETA, "model.layers.0.self_attn.q_proj.weight"));
    ck_assert(has_warning(c, TR_W_QUANTIZED_ROUTER, "model.layers.1.mlp.gate.weight"));
    ck_assert(has_warning(c, TR_W_UNRECOGNIZED, "model.layers.0.weight.indices"));
    ck_assert_ptr_null(tr_ckpt_qlinear_find(c, "model.layers.5.mlp.up_proj.weight"));
    /* writing order: layer 0 names bytewise */
    ck_assert_str_eq(tr_ckpt_qlinear_at(c, 0)->name, "model.layers.0.mlp.up_proj.weight");
    ck_assert_ptr_null(tr_ckpt_qlinear_at(c, 2));
    /* routers resolve through router_weights.safetensors; other names do not */
    tr_tensor_ref ref;
    ck_assert_int_eq(tr_ckpt_find_tensor(c, "model.layers.1.mlp.gate.weight", &ref, &err), TR_OK);
    ck_assert_msg(strstr(ref.file, "router_weights.safetensors") != NULL, "%s", ref.file);
    tr_ckpt_close(c);

    /* a fallback float checkpoint supplies what the directory lacks */
    char *fb = mkdir_in_tmp("v3_fallback");
    write_text(fb, "config.json", "{}");
    w = tr_st_writer_new();
    tr_st_writer_add(w, "model.layers.1.mlp.gate.e_score_correction_bias", TR_DT_F32, 1, s16, ones, &err);
    write_st(w, fb, "model.safetensors");
    tr_ckpt_options opt = {fb, 0};
    ck_assert_msg(tr_ckpt_open(dir, &opt, &c, &err) == TR_OK, "%s", err.text);
    ck_assert_int_eq(tr_ckpt_find_tensor(c, "model.layers.1.mlp.gate.e_score_correction_bias", &ref, &err), TR_OK);
    ck_assert_msg(strstr(ref.file, "v3_fallback"), "%s", ref.file);
    tr_ckpt_close(c);
    free_q(&a);
    free_q(&b);
    free_q(&r);
    free_q(&d);
}
END_TEST

START_TEST(test_allow_nonfinite)
{
    char *dir = mkdir_in_tmp("v3_nan");
    write_text(dir, "config.json", "{}");
    tr_st_writer *w = tr_st_writer_new();
    qbufs a;
    add_qlinear(w, "model__layers__0__mlp__up_proj__weight", 16, 16, 2, 1, &a, 1.0f);
    a.sv[2] = 1.0f / 0.0f;
    write_st(w, dir, "model.safetensors");
    tr_ckpt *c = NULL;
    tr_error err;
    ck_assert_int_eq(tr_ckpt_open(dir, NULL, &c, &err), TR_E_NONFINITE);
    ck_assert_msg(strstr(err.text, "__sv: element 2 is +Inf"), "%s", err.text);
    tr_ckpt_options opt = {NULL, 1};
    ck_assert_int_eq(tr_ckpt_open(dir, &opt, &c, &err), TR_OK);
    tr_ckpt_close(c);
    free_q(&a);
}
END_TEST

/* ---- v2 --------------------------------------------------------------------------------------------------------- */

START_TEST(test_v2_metadata_merge)
{
    char *dir = mkdir_in_tmp("v2_merge");
    char *ldir = mkdir_in_tmp("v2_merge/layer_0000");
    write_text(dir, "config.json", "{}");
    tr_st_writer *w = tr_st_writer_new();
    qbufs a;
    add_qlinear(w, "model__layers__0__mlp__up_proj__weight", 16, 32, 4, 1, &a, 1.0f);
    write_st(w, ldir, "tensor_0000.safetensors");
    write_text(ldir, "index.json", "{\"layer_idx\":0,\"tensors\":[{\"name\":\"model.layers.0.mlp.up_proj.weight\","
                                   "\"bits\":4,\"shape\":[16,32]}]}");
    write_text(dir, "quantization_index.json", "{\"layers\":[{\"name\":\"model.layers.0.mlp.up_proj.weight\","
                                               "\"bits\":3}]}");
    tr_ckpt *c = NULL;
    tr_error err;
    ck_assert_msg(tr_ckpt_open(dir, NULL, &c, &err) == TR_OK, "%s", err.text);
    ck_assert_int_eq(tr_ckpt_layout(c), TR_LAYOUT_TRELLIS_V2);
    ck_assert(has_warning(c, TR_W_BITS_MISMATCH, "bits 4 disagree with 3"));
    ck_assert_int_eq(tr_ckpt_qlinear_at(c, 0)->meta_bits, 4);
    tr_ckpt_close(c);
    write_text(dir, "quantization_index.json", "{\"layers\":[{\"name\":\"model.layers.0.mlp.up_proj.weight\","
                                               "\"shape\":[16,31]}]}");
    ck_assert_int_eq(tr_ckpt_open(dir, NULL, &c, &err), TR_E_SHAPE);
    ck_assert_msg(strstr(err.text, "shape [16,32] disagrees with [16,31]"), "%s", err.text);
    write_text(dir, "quantization_index.json", "{}");
    write_text(ldir, "index.json", "{\"tensors\":[]}");
    ck_assert_int_eq(tr_ckpt_open(dir, NULL, &c, &err), TR_E_INDEX_JSON);
    ck_assert_msg(strstr(err.text, "layer_idx is missing"), "%s", err.text);
    write_text(ldir, "index.json", "{\"layer_idx\":0,\"tensors\":[],\"shards\":[{\"file\":\"../x.safetensors\"}]}");
    ck_assert_int_eq(tr_ckpt_open(dir, NULL, &c, &err), TR_E_INDEX_PATH);
    write_text(ldir, "index.json", "{\"layer_idx\":0,\"tensors\":[],\"shards\":[{\"file\":\"missing.safetensors\"}]}");
    ck_assert_int_eq(tr_ckpt_open(dir, NULL, &c, &err), TR_E_IO);
    free_q(&a);
}
END_TEST

/* ---- v3 writer ---------------------------------------------------------------------------------------------------- */

static void write_v3(const char *dir, uint64_t shard_limit, int shuffle)
{
    tr_v3_options opt = {shard_limit, 64, TR_ROT_HADAMARD128};
    tr_v3_writer *w = NULL;
    tr_error err;
    ck_assert_int_eq(tr_v3_writer_new(dir, &opt, &w, &err), TR_OK);
    static const char *const names[] = {"lm_head.weight", "model.layers.10.mlp.down_proj.weight",
                                        "model.layers.2.mlp.up_proj.weight", "model.layers.2.mlp.gate_proj.weight"};
    static const uint32_t shapes[][2] = {{40, 32}, {32, 128}, {64, 32}, {64, 32}};
    for (int k = 0; k < 4; k++) {
        int i = shuffle ? 3 - k : k;
        ck_assert_int_eq(tr_v3_writer_declare(w, names[i], shapes[i][0], shapes[i][1], 2 + i,
                                              (shapes[i][1] + 63) / 64,
                                              shapes[i][1] % 128 ? TR_ROT_NONE : TR_ROT_HADAMARD128, &err),
                         TR_OK);
    }
    ck_assert_int_eq(tr_v3_writer_declare(w, names[0], 1, 1, 2, 1, TR_ROT_NONE, &err), TR_E_TENSOR_DUPLICATE);
    const char *next;
    int order = 0;
    static const char *const expect[] = {"model.layers.2.mlp.gate_proj.weight", "model.layers.2.mlp.up_proj.weight",
                                         "model.layers.10.mlp.down_proj.weight", "lm_head.weight"};
    while ((next = tr_v3_writer_next(w)) != NULL) {
        ck_assert_str_eq(next, expect[order++]);
        int i = 0;
        while (strcmp(names[i], next))
            i++;
        tr_rng r;
        tr_rng_seed(&r, (uint64_t)i);
        uint32_t O = shapes[i][0], I = shapes[i][1], G = (I + 63) / 64;
        unsigned b = 2 + (unsigned)i;
        size_t plen = 1 + (size_t)tr_packed_body_bytes(O, I, b);
        uint8_t *q = malloc((size_t)O * I), *p = malloc(plen);
        float *s = malloc((size_t)G * O * 4), *su = malloc(I * 4), *sv = malloc(O * 4);
        for (size_t k = 0; k < (size_t)O * I; k++)
            q[k] = (uint8_t)tr_rng_int(&r, 0, (1 << b) - 1);
        for (size_t k = 0; k < (size_t)G * O; k++)
            s[k] = 0.01f;
        for (uint32_t k = 0; k < I; k++)
            su[k] = 1.0f;
        for (uint32_t k = 0; k < O; k++)
            sv[k] = -1.0f;
        tr_pack_indices(q, O, I, b, p);
        tr_qweight qw = {O, I, b, 64, G, TR_ROT_NONE, p, plen, s, su, sv};
        if (order == 2) {   /* out of order and mismatched puts are refused */
            ck_assert_int_eq(tr_v3_writer_put(w, "lm_head.weight", &qw, &err), TR_E_INVALID_PARAM);
            qw.O++;
            ck_assert_int_eq(tr_v3_writer_put(w, next, &qw, &err), TR_E_INVALID_PARAM);
            qw.O--;
        }
        ck_assert_msg(tr_v3_writer_put(w, next, &qw, &err) == TR_OK, "%s", err.text);
        free(q);
        free(p);
        free(s);
        free(su);
        free(sv);
    }
    ck_assert_int_eq(tr_v3_writer_declare(w, "late.weight", 1, 1, 2, 1, TR_ROT_NONE, &err), TR_E_INVALID_PARAM);
    float emb[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    uint64_t es[2] = {2, 4};
    ck_assert_int_eq(tr_v3_writer_add_float(w, "model.embed_tokens.weight", TR_DT_F32, 2, es, emb, &err), TR_OK);
    ck_assert_int_eq(tr_v3_writer_finish(w, &err), TR_OK);
    tr_v3_writer_free(w);
    write_text(dir, "config.json", "{\"num_hidden_layers\": 11}");
}

START_TEST(test_v3_writer)
{
    char *a = mkdir_in_tmp("w3a"), *b = mkdir_in_tmp("w3b");
    write_v3(a, 3300, 0);
    write_v3(b, 3300, 1);
    /* identical bytes whatever the declaration order */
    static const char *const files[] = {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                        "model-00003-of-00003.safetensors", "base_weights.safetensors",
                                        "model.safetensors.index.json", "quantization_index.json"};
    for (size_t k = 0; k < sizeof files / sizeof files[0]; k++) {
        char pa[4300], pb[4300];
        snprintf(pa, sizeof pa, "%s/%s", a, files[k]);
        snprintf(pb, sizeof pb, "%s/%s", b, files[k]);
        size_t na, nb;
        uint8_t *da = slurp(pa, &na), *db = slurp(pb, &nb);
        ck_assert_msg(na == nb && memcmp(da, db, na) == 0, "%s differs", files[k]);
        if (strstr(files[k], ".json"))
            ck_assert_int_eq(da[na - 1], '\n');
        tr_dealloc(da);
        tr_dealloc(db);
    }
    size_t n;
    char p[4300];
    snprintf(p, sizeof p, "%s/quantization_index.json", a);
    char *qi = (char *)slurp(p, &n);
    ck_assert_msg(strstr(qi, "\"format\": \"trellis_v3\",\n  \"group_size\": 64,\n  \"codebook\": \"grid\",\n"
                             "  \"rotation\": \"hadamard128\",\n  \"layers\": ["), "%s", qi);
    ck_assert(strstr(qi, "\"rotation\": \"none\""));   /* the layers with I % 128 != 0 */
    tr_dealloc(qi);
    tr_ckpt *c = NULL;
    tr_error err;
    ck_assert_msg(tr_ckpt_open(a, NULL, &c, &err) == TR_OK, "%s", err.text);
    ck_assert_uint_eq(tr_ckpt_qlinear_count(c), 4);
    ck_assert_str_eq(tr_ckpt_qlinear_at(c, 3)->name, "lm_head.weight");
    ck_assert_int_eq(tr_ckpt_qlinear_find(c, "model.layers.10.mlp.down_proj.weight")->w.rotation, TR_ROT_HADAMARD128);
    ck_assert_int_eq(tr_ckpt_rotation(c), TR_ROT_HADAMARD128);
    ck_assert_uint_eq(tr_ckpt_warnings(c)->count, 0);
    tr_ckpt_close(c);
    /* finishing with linears never put is refused */
    tr_v3_writer *w = NULL;
    ck_assert_int_eq(tr_v3_writer_new(mkdir_in_tmp("w3c"), NULL, &w, &err), TR_OK);
    ck_assert_int_eq(tr_v3_writer_declare(w, "x.weight", 16, 16, 2, 1, TR_ROT_NONE, &err), TR_OK);
    ck_assert_int_eq(tr_v3_writer_finish(w, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_v3_writer_declare(w, "y.weight", 0, 16, 2, 1, TR_ROT_NONE, &err), TR_E_INVALID_PARAM);
    tr_v3_writer_free(w);
}
END_TEST

START_TEST(test_key_names)
{
    char *b = tr_key_base_from_name("model.layers.3.mlp.experts.17.up_proj.weight");
    ck_assert_str_eq(b, "model__layers__3__mlp__experts__17__up_proj__weight");
    char *n = tr_name_from_key_base(b);
    ck_assert_str_eq(n, "model.layers.3.mlp.experts.17.up_proj.weight");
    tr_dealloc(n);
    n = tr_name_from_key_base("model__layers__3__mlp__experts__17__up_proj");
    ck_assert_str_eq(n, "model.layers.3.mlp.experts.17.up_proj.weight");
    tr_dealloc(n);
    n = tr_name_from_key_base("lm_head");
    ck_assert_str_eq(n, "lm_head.weight");
    tr_dealloc(n);
    tr_dealloc(b);
}
END_TEST

/* Every allocation point of opening real checkpoints fails cleanly. */
START_TEST(test_open_alloc_failures)
{
    static const char *const dirs[] = {"golden/foreign/v2_moe", "golden/foreign/v3_dense_sharded"};
    for (size_t d = 0; d < 2; d++) {
        unsigned long n;
        for (n = 1;; n++) {
            tr_alloc_fail_at(n);
            tr_ckpt *c = NULL;
            tr_error err;
            int rc = tr_ckpt_open(dirs[d], NULL, &c, &err);
            int fired = tr_alloc_fired();
            tr_alloc_fail_at(0);
            if (!fired) {
                ck_assert_int_eq(rc, TR_OK);
                tr_ckpt_close(c);
                break;
            }
            ck_assert_msg(rc == TR_E_NOMEM && c == NULL, "%s point %lu: rc %s (%s)", dirs[d], n, tr_status_name(rc),
                          err.text);
        }
        ck_assert_uint_gt(n, 50);
    }
}
END_TEST

Suite *suite_checkpoint(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("directories");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_foreign_fixtures);
    tcase_add_test(tc, test_foreign_warnings);
    tcase_add_test(tc, test_hf_float_single_and_sharded);
    tcase_add_test(tc, test_layout_detection);
    tcase_add_test(tc, test_v3_warnings_and_resolution);
    tcase_add_test(tc, test_allow_nonfinite);
    tcase_add_test(tc, test_v2_metadata_merge);
    tcase_add_test(tc, test_v3_writer);
    tcase_add_test(tc, test_key_names);
    tcase_add_test(tc, test_open_alloc_failures);
    suite_add_tcase(s, tc);
    return s;
}
