/*
 * check_engine.c — the engine outside the oracle comparisons: config.json resolution and its error messages
 * (ENGINE.md §1), model-load errors of ENGINE.md §8 (missing tensor, shape mismatch, bad quantized group), sampling
 * (§5), session hooks (route override, cache rows, truncate), NaN-guard policies in a real forward pass, thread-count
 * independence and cpu = ref bitwise, and the CLI contracts of logits/generate.
 *
 * Models are copies of the committed oracle cases (golden/oracle) edited in a temporary directory.
 */
#include "cli_run.h"
#include "tests.h"
#include "trellis/alloc.h"
#include "trellis/engine.h"
#include "trellis/fileio.h"
#include "trellis/pack.h"
#include "trellis/safetensors.h"
#include "trellis/sample.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GLM "golden/oracle/glm4_moe_lite_f32"
#define QWEN "golden/oracle/qwen3_moe_f32"

/* ---- fixtures --------------------------------------------------------------------------------------------------- */

static char *fresh_dir(const char *name)
{
    static char path[8][4200];
    static int slot;
    char *p = path[slot++ % 8];
    snprintf(p, 4200, "%s/engine-%s", tr_test_tmpdir(), name);
    char cmd[8600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", p, p);
    ck_assert_int_eq(system(cmd), 0);
    return p;
}

static void copy_file(const char *from_dir, const char *to_dir, const char *name)
{
    char src[4200], *data;
    size_t n;
    snprintf(src, sizeof src, "%s/%s", from_dir, name);
    ck_assert_int_eq(tr_file_read_all(src, &data, &n, NULL), TR_OK);
    tr_test_write(to_dir, name, data, n);
    tr_dealloc(data);
}

/* A copy of an oracle model (config + weights) under a fresh name. */
static char *copy_model(const char *src, const char *name)
{
    char *d = fresh_dir(name);
    copy_file(src, d, "config.json");
    copy_file(src, d, "model.safetensors");
    return d;
}

static json_t *load_json(const char *dir, const char *name)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    json_error_t je;
    json_t *doc = json_load_file(p, 0, &je);
    ck_assert_msg(doc != NULL, "%s: %s", p, je.text);
    return doc;
}

static void save_json(const char *dir, const char *name, json_t *doc)
{
    char *s = json_dumps(doc, JSON_INDENT(2));
    tr_test_write(dir, name, s, strlen(s));
    free(s);
}

/* config.json of dir with member key set (value stolen) or removed (value NULL). */
static void edit_config(const char *dir, const char *key, json_t *value)
{
    json_t *doc = load_json(dir, "config.json");
    if (value)
        json_object_set_new(doc, key, value);
    else
        json_object_del(doc, key);
    save_json(dir, "config.json", doc);
    json_decref(doc);
}

/* Rewrite dir/model.safetensors: drop tensor `drop` (may be NULL) and add extra tensors. */
typedef struct extra_tensor {
    const char *name;
    tr_dtype dtype;
    unsigned ndim;
    uint64_t shape[2];
    const void *data;
} extra_tensor;

static void rewrite_weights(const char *dir, const char *drop, const extra_tensor *extra, size_t n_extra,
                            const char *nan_in)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    char *img;
    size_t n;
    ck_assert_int_eq(tr_file_read_all(p, &img, &n, NULL), TR_OK);
    tr_st_file *f;
    ck_assert_int_eq(tr_st_open_buffer((const uint8_t *)img, n, p, &f, NULL), TR_OK);
    tr_st_writer *w = tr_st_writer_new();
    void *copies[512];
    size_t nc = 0;
    for (size_t i = 0; i < tr_st_count(f); i++) {
        const tr_st_tensor *t = tr_st_at(f, i);
        if (drop && !strcmp(t->name, drop))
            continue;
        size_t bytes = (size_t)t->numel * tr_dtype_size(t->dtype);
        void *c = malloc(bytes ? bytes : 1);
        memcpy(c, t->data, bytes);
        if (nan_in && !strcmp(t->name, nan_in) && t->dtype == TR_DT_F32)
            ((float *)c)[1] = NAN;
        ck_assert(nc < 512);
        copies[nc++] = c;
        ck_assert_int_eq(tr_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, c, NULL), TR_OK);
    }
    for (size_t i = 0; i < n_extra; i++)
        ck_assert_int_eq(tr_st_writer_add(w, extra[i].name, extra[i].dtype, extra[i].ndim, extra[i].shape,
                                          extra[i].data, NULL), TR_OK);
    tr_st_close(f);
    tr_dealloc(img);
    ck_assert_int_eq(tr_st_writer_write(w, p, NULL), TR_OK);
    tr_st_writer_free(w);
    for (size_t i = 0; i < nc; i++)
        free(copies[i]);
}

static void expect_load_error(const char *dir, int code, const char *text)
{
    tr_model *m = NULL;
    tr_error err;
    int rc = tr_model_load(dir, NULL, &m, &err);
    ck_assert_msg(rc == code, "load of %s: got %d (%s), want %d", dir, rc, rc ? err.text : "ok", code);
    ck_assert_msg(strstr(err.text, text) != NULL, "message \"%s\" lacks \"%s\"", err.text, text);
    ck_assert_ptr_null(m);
}

/* ---- config.json --------------------------------------------------------------------------------------------------- */

START_TEST(test_config_oracle_values)
{
    tr_model_config c;
    tr_error err;
    ck_assert_int_eq(tr_model_config_load(GLM, &c, &err), TR_OK);
    ck_assert_int_eq(c.arch, TR_ARCH_GLM4_MOE_LITE);
    ck_assert_uint_eq(c.V, 1214);
    ck_assert_uint_eq(c.q_lora_rank, 48);
    ck_assert_uint_eq(c.kv_lora_rank, 32);
    ck_assert_uint_eq(c.layer_is_moe[0], 0);
    ck_assert_uint_eq(c.layer_is_moe[2], 1);
    ck_assert_int_eq(c.norm_topk_prob, 1);
    ck_assert_float_eq(c.routed_scaling_factor, 1.8f);
    ck_assert_float_eq(c.rms_norm_eps, 1e-5f);
    ck_assert_int_eq(c.rope.interleave, 1);
    ck_assert_float_eq(c.attn_scale, (float)pow(24.0, -0.5));
    ck_assert_uint_eq(c.n_eos, 1);
    ck_assert_int_eq(c.eos_ids[0], 1200);
    ck_assert_int_eq(c.router_mode, TR_ROUTER_NOAUX_TC);
    json_t *o = json_object_get(c.resolved, "n_shared_experts");
    ck_assert_str_eq(json_string_value(json_object_get(o, "origin")), "file");
    o = json_object_get(c.resolved, "topk_method");
    ck_assert_str_eq(json_string_value(json_object_get(o, "origin")), "default");
    tr_model_config_release(&c);
    ck_assert_int_eq(tr_model_config_load(QWEN, &c, &err), TR_OK);
    ck_assert_int_eq(c.arch, TR_ARCH_QWEN3_MOE);
    ck_assert_uint_eq(c.G, 2);
    ck_assert_uint_eq(c.head_dim, 16);
    ck_assert_uint_eq(c.E, 8);   /* from num_local_experts */
    ck_assert_int_eq(c.rope.interleave, 0);
    ck_assert_float_eq(c.attn_scale, 0.25f);
    ck_assert_uint_eq(c.n_eos, 0);
    ck_assert_int_eq(c.router_mode, TR_ROUTER_SOFTMAX_TOPK);
    tr_model_config_release(&c);
}
END_TEST

/* One edit of the GLM (or Qwen) config and the error it must produce. */
typedef struct cfg_case {
    int qwen;
    const char *key;
    const char *value;   /* JSON text, NULL = remove the key */
    int code;
    const char *text;
} cfg_case;

static const cfg_case CFG_CASES[] = {
    {0, "kv_lora_rank", NULL, TR_E_CONFIG, "TR_E_CONFIG: kv_lora_rank: required field missing"},
    {0, "model_type", "\"llama\"", TR_E_UNSUPPORTED,
     "model_type \"llama\" is not supported (supported: glm4_moe_lite, qwen3_moe)"},
    {0, "model_type", "\"glm4_moe\"", TR_E_UNSUPPORTED, "model_type \"glm4_moe\" is not supported"},
    {0, "attention_bias", "true", TR_E_UNSUPPORTED, "attention_bias=true is not supported"},
    {1, "use_sliding_window", "true", TR_E_UNSUPPORTED, "use_sliding_window=true is not supported"},
    {0, "hidden_act", "\"gelu\"", TR_E_UNSUPPORTED, "hidden_act \"gelu\" is not supported (only silu)"},
    {0, "q_lora_rank", NULL, TR_E_CONFIG, "q_lora_rank: required field missing"},
    {0, "num_key_value_heads", "2", TR_E_CONFIG, "num_key_value_heads: must equal num_attention_heads (4)"},
    {1, "num_key_value_heads", NULL, TR_E_CONFIG, "num_key_value_heads: required field missing"},
    {1, "num_key_value_heads", "3", TR_E_CONFIG, "num_attention_heads 4 is not divisible by num_key_value_heads 3"},
    {0, "hidden_size", "\"64\"", TR_E_CONFIG, "hidden_size: expected a non-negative integer, got a string"},
    {0, "vocab_size", "0", TR_E_CONFIG, "vocab_size: must be >= 1, got 0"},
    {0, "n_group", "3", TR_E_CONFIG, "n_routed_experts 8 is not divisible by n_group 3"},
    {0, "topk_group", "2", TR_E_CONFIG, "topk_group: must be in [1, n_group=1], got 2"},
    {0, "num_experts_per_tok", "9", TR_E_CONFIG, "num_experts_per_tok: must be in [1, 8], got 9"},
    {0, "topk_method", "\"greedy\"", TR_E_UNSUPPORTED, "topk_method: only \"noaux_tc\" is supported"},
    {0, "scoring_func", "\"softmax\"", TR_E_UNSUPPORTED, "scoring_func: only \"sigmoid\" is supported"},
    {0, "qk_head_dim", "25", TR_E_CONFIG, "qk_head_dim: 25 differs from qk_nope_head_dim + qk_rope_head_dim = 24"},
    {0, "rope_parameters", "{\"rope_theta\": 10000.0, \"rope_type\": \"dynamic\"}", TR_E_UNSUPPORTED,
     "rope_type \"dynamic\" is not supported (supported: default, yarn)"},
    {0, "rope_parameters", "{\"rope_type\": \"default\"}", TR_E_CONFIG, "rope_theta: required field missing"},
    {0, "rope_parameters", "{\"rope_theta\": 10000.0, \"rope_type\": \"yarn\"}", TR_E_CONFIG,
     "factor: required field missing"},
    {0, "partial_rotary_factor", "0.5", TR_E_UNSUPPORTED, "partial_rotary_factor=0.5 is not supported"},
    {0, "mlp_layer_types", "[\"dense\", \"sparse\"]", TR_E_CONFIG, "mlp_layer_types: expected an array of 3"},
    {0, "mlp_layer_types", "[\"dense\", \"moe\", \"sparse\"]", TR_E_CONFIG, "mlp_layer_types[1]: expected"},
    {0, "eos_token_id", "[1, \"x\"]", TR_E_CONFIG, "eos_token_id: expected a token id or a list of them"},
    {1, "decoder_sparse_step", "0", TR_E_CONFIG, "decoder_sparse_step: must be >= 1, got 0"},
    {1, "mlp_only_layers", "[0]", TR_E_CONFIG, "intermediate_size"},   /* checked with intermediate_size removed */
};

START_TEST(test_config_errors)
{
    const cfg_case *k = &CFG_CASES[_i];
    char *d = fresh_dir("cfg");
    copy_file(k->qwen ? QWEN : GLM, d, "config.json");
    if (k->key && !strcmp(k->key, "mlp_only_layers"))
        edit_config(d, "intermediate_size", NULL);
    json_t *v = NULL;
    if (k->value) {
        json_error_t je;
        v = json_loads(k->value, JSON_DECODE_ANY, &je);
        ck_assert_ptr_nonnull(v);
    }
    edit_config(d, k->key, v);
    tr_model_config c;
    tr_error err;
    int rc = tr_model_config_load(d, &c, &err);
    ck_assert_msg(rc == k->code, "case %d (%s): got %d (%s)", _i, k->key, rc, rc ? err.text : "ok");
    ck_assert_msg(strstr(err.text, k->text) != NULL, "case %d: \"%s\" lacks \"%s\"", _i, err.text, k->text);
    ck_assert_msg(strstr(err.text, "config.json: ") == err.text + strlen(d) + 1, "where is the file: %s", err.text);
}
END_TEST

START_TEST(test_config_inference_and_wrappers)
{
    char *d = fresh_dir("cfg-arch");
    copy_file(GLM, d, "config.json");
    edit_config(d, "model_type", NULL);   /* inferred from architectures[0] */
    tr_model_config c;
    tr_error err;
    ck_assert_int_eq(tr_model_config_load(d, &c, &err), TR_OK);
    ck_assert_int_eq(c.arch, TR_ARCH_GLM4_MOE_LITE);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(c.resolved, "model_type"), "origin")),
                     "derived");
    tr_model_config_release(&c);
    /* text_config wrapper */
    json_t *inner = load_json(GLM, "config.json"), *outer = json_object();
    json_object_set_new(outer, "text_config", inner);
    save_json(d, "config.json", outer);
    json_decref(outer);
    ck_assert_int_eq(tr_model_config_load(d, &c, &err), TR_OK);
    ck_assert_uint_eq(c.D, 64);
    tr_model_config_release(&c);
    /* mlp_layer_types wins over first_k_dense_replace, with a warning */
    copy_file(GLM, d, "config.json");
    edit_config(d, "first_k_dense_replace", json_integer(2));
    ck_assert_int_eq(tr_model_config_load(d, &c, &err), TR_OK);
    ck_assert_uint_eq(c.layer_is_moe[1], 1);
    ck_assert_uint_eq(c.warnings.count, 1);
    ck_assert_int_eq(c.warnings.items[0].code, TR_W_CONFIG);
    tr_model_config_release(&c);
    /* without mlp_layer_types, first_k_dense_replace decides */
    edit_config(d, "mlp_layer_types", NULL);
    ck_assert_int_eq(tr_model_config_load(d, &c, &err), TR_OK);
    ck_assert_uint_eq(c.layer_is_moe[1], 0);
    ck_assert_uint_eq(c.layer_is_moe[2], 1);
    tr_model_config_release(&c);
    /* a missing config.json names the file */
    char *e = fresh_dir("cfg-missing");
    ck_assert_int_eq(tr_model_config_load(e, &c, &err), TR_E_IO);
    ck_assert_ptr_nonnull(strstr(err.text, "config.json: TR_E_IO: not found"));
}
END_TEST

/* GLM attention scale with YaRN mscale_all_dim: fl32(qk_head_dim^-0.5 · m²), m = 0.1·a·ln(s) + 1. */
START_TEST(test_config_yarn_scale)
{
    char *d = fresh_dir("cfg-yarn");
    copy_file(GLM, d, "config.json");
    json_error_t je;
    edit_config(d, "rope_parameters",
                json_loads("{\"rope_theta\": 10000.0, \"rope_type\": \"yarn\", \"factor\": 4.0, "
                           "\"mscale_all_dim\": 1.0, \"original_max_position_embeddings\": 1024}", 0, &je));
    tr_model_config c;
    tr_error err;
    ck_assert_int_eq(tr_model_config_load(d, &c, &err), TR_OK);
    double m = 0.1 * 1.0 * log(4.0) + 1.0;
    ck_assert_float_eq(c.attn_scale, (float)(pow(24.0, -0.5) * m * m));
    ck_assert_int_eq(c.rope.type, TR_ROPE_YARN);
    ck_assert_double_eq(c.rope.original_max_position, 1024.0);
    ck_assert_double_eq(c.rope.beta_fast, 32.0);
    ck_assert_int_eq(c.rope.truncate, 1);
    tr_model_config_release(&c);
}
END_TEST

/* ---- model loading errors (ENGINE.md §8) ------------------------------------------------------------------------------ */

START_TEST(test_load_missing_tensor)
{
    char *d = copy_model(GLM, "missing");
    rewrite_weights(d, "model.layers.1.mlp.gate.e_score_correction_bias", NULL, 0, NULL);
    expect_load_error(d, TR_E_TENSOR_MISSING, "model.layers.1.mlp.gate.e_score_correction_bias: TR_E_TENSOR_MISSING: "
                                              "not found in model shards or --base-model");
    d = copy_model(QWEN, "missing-q");
    rewrite_weights(d, "model.layers.0.self_attn.k_norm.weight", NULL, 0, NULL);
    expect_load_error(d, TR_E_TENSOR_MISSING, "model.layers.0.self_attn.k_norm.weight: TR_E_TENSOR_MISSING");
}
END_TEST

START_TEST(test_load_shape_mismatch)
{
    char *d = copy_model(GLM, "shape");
    edit_config(d, "num_attention_heads", json_integer(5));
    edit_config(d, "num_key_value_heads", json_integer(5));
    expect_load_error(d, TR_E_SHAPE, "model.layers.0.self_attn.q_b_proj.weight: TR_E_SHAPE: shape [96,48], config "
                                     "implies [120,48] (num_attention_heads=5, qk_head_dim=24)");
    d = copy_model(QWEN, "shape-q");
    edit_config(d, "moe_intermediate_size", json_integer(41));
    expect_load_error(d, TR_E_SHAPE, "model.layers.0.mlp.experts.0.gate_proj.weight: TR_E_SHAPE: shape [40,64], "
                                     "config implies [41,64] (moe_intermediate_size=41, hidden_size=64)");
}
END_TEST

/* q_a_proj [48, 64] replaced by a quantized group with one defect; everything else stays float. */
static void quantized_q_a(const char *d, uint64_t indices_len, uint64_t scale_groups)
{
    const uint32_t O = 48, I = 64;
    const unsigned b = 4;
    static uint8_t packed[1 + 1536 + 8];
    static uint8_t q[48 * 64];
    static float scales[4 * 48], su[64], sv[48];
    for (size_t n = 0; n < sizeof q; n++)
        q[n] = (uint8_t)(n % 16);
    ck_assert_uint_eq(1 + tr_packed_body_bytes(O, I, b), 1537);
    tr_pack_indices(q, O, I, b, packed);
    for (size_t n = 0; n < 4 * 48; n++)
        scales[n] = 1.0f / 64;
    for (size_t n = 0; n < 64; n++)
        su[n] = 1.0f;
    for (size_t n = 0; n < 48; n++)
        sv[n] = 1.0f;
    const char *B = "model__layers__0__self_attn__q_a_proj__weight";
    char names[4][96];
    snprintf(names[0], 96, "%s__indices", B);
    snprintf(names[1], 96, "%s__scales", B);
    snprintf(names[2], 96, "%s__su", B);
    snprintf(names[3], 96, "%s__sv", B);
    extra_tensor ex[4] = {{names[0], TR_DT_U8, 1, {indices_len, 0}, packed},
                          {names[1], TR_DT_F32, 2, {scale_groups, O}, scales},
                          {names[2], TR_DT_F32, 1, {I, 0}, su},
                          {names[3], TR_DT_F32, 1, {O, 0}, sv}};
    rewrite_weights(d, "model.layers.0.self_attn.q_a_proj.weight", ex, 4, NULL);
    const char *qi = "{\"format\": \"trellis_v3\", \"group_size\": 128, \"codebook\": \"grid\", \"rotation\": \"none\"}\n";
    tr_test_write(d, "quantization_index.json", qi, strlen(qi));
}

START_TEST(test_load_bad_quantized_group)
{
    char *d = copy_model(GLM, "qgood");
    quantized_q_a(d, 1537, 1);
    tr_model *m = NULL;
    tr_error err;
    ck_assert_msg(tr_model_load(d, NULL, &m, &err) == TR_OK, "%s", err.text);
    ck_assert_ptr_nonnull(m->layers[0].q_a.q);
    ck_assert_uint_eq(m->layers[0].q_a.q->bits, 4);
    ck_assert_double_eq(tr_model_average_bpw(m), 4.0);
    tr_model_free(m);
    d = copy_model(GLM, "qindices");
    quantized_q_a(d, 1536, 1);
    expect_load_error(d, TR_E_QSIZE, "model__layers__0__self_attn__q_a_proj__weight__indices: 1 + 1535 bytes, "
                                     "expected 1 + 1536 for [48,64] at 4 bits");
    d = copy_model(GLM, "qscales");
    quantized_q_a(d, 1537, 2);
    expect_load_error(d, TR_E_QGROUP, "model__layers__0__self_attn__q_a_proj__weight__scales: shape [2,48], "
                                      "expected [1,48] for I=64, group size 128");
}
END_TEST

START_TEST(test_load_pickle_and_fused)
{
    char *d = fresh_dir("pickle");
    copy_file(GLM, d, "config.json");
    tr_test_write(d, "pytorch_model.bin", "PK", 2);
    expect_load_error(d, TR_E_UNSUPPORTED, "pytorch_model.bin: TR_E_UNSUPPORTED: PyTorch pickle files are not "
                                           "supported; convert to safetensors");
    d = copy_model(QWEN, "fused");
    static float z[2 * 3 * 4];
    extra_tensor ex = {"model.layers.0.mlp.experts.gate_up_proj", TR_DT_F32, 2, {6, 4}, z};
    rewrite_weights(d, NULL, &ex, 1, NULL);
    expect_load_error(d, TR_E_UNSUPPORTED, "fused 3-D expert tensors are not supported");
}
END_TEST

/* ---- sampling ------------------------------------------------------------------------------------------------------- */

START_TEST(test_rng_vector)
{
    tr_rng r;
    tr_rng_seed(&r, 0);
    ck_assert_uint_eq(tr_rng_next(&r), UINT64_C(0x99ec5f36cb75f2b4));
    ck_assert_uint_eq(tr_rng_next(&r), UINT64_C(0xbf6e1f784956452a));
    ck_assert_uint_eq(tr_rng_next(&r), UINT64_C(0x1a5f849d4933e6e0));
}
END_TEST

static int32_t sample_once(const tr_sampling *p, uint64_t seed, const float *lg, uint32_t V, const int32_t *hist,
                           size_t nh)
{
    tr_sampler *s;
    ck_assert_int_eq(tr_sampler_new(p, seed, V, &s, NULL), TR_OK);
    int32_t id = tr_sampler_next(s, lg, hist, nh);
    tr_sampler_free(s);
    return id;
}

START_TEST(test_sampling_rules)
{
    const float lg[6] = {1.0f, 3.0f, 3.0f, -2.0f, 0.5f, 2.0f};
    tr_sampling p;
    tr_sampling_default(&p);
    ck_assert_int_eq(sample_once(&p, 0, lg, 6, NULL, 0), 1);          /* greedy: ties -> lowest id */
    p.repetition_penalty = 2.0;                                       /* 3/2 = 1.5 < 2: id 5 wins */
    const int32_t hist[3] = {1, 2, 1};
    ck_assert_int_eq(sample_once(&p, 0, lg, 6, hist, 3), 5);
    const float neg[2] = {-1.0f, -1.5f};                              /* a negative logit is multiplied */
    ck_assert_int_eq(sample_once(&p, 0, neg, 2, (const int32_t[]){0}, 1), 1);   /* -2 < -1.5 */
    /* top-k 1 keeps the tie with the k-th: ids 1 and 2 only */
    tr_sampling_default(&p);
    p.do_sample = 1;
    p.top_k = 1;
    for (uint64_t seed = 0; seed < 64; seed++) {
        int32_t id = sample_once(&p, seed, lg, 6, NULL, 0);
        ck_assert_msg(id == 1 || id == 2, "seed %llu gave %d", (unsigned long long)seed, id);
    }
    /* top-p tiny keeps only the top token (ties -> lower id first) */
    p.top_k = 0;
    p.top_p = 1e-9;
    for (uint64_t seed = 0; seed < 16; seed++)
        ck_assert_int_eq(sample_once(&p, seed, lg, 6, NULL, 0), 1);
    /* min-p 0.5: probabilities relative to the max: ids 1, 2 (1.0) and 5 (e^-1 = 0.37 < 0.5 removed) */
    p.top_p = 1.0;
    p.min_p = 0.5;
    for (uint64_t seed = 0; seed < 64; seed++) {
        int32_t id = sample_once(&p, seed, lg, 6, NULL, 0);
        ck_assert(id == 1 || id == 2);
    }
}
END_TEST

/* The draw: first id (ascending) whose running sum of exp(l − max) exceeds u·Z, u from the seeded stream. */
START_TEST(test_sampling_draw)
{
    const float lg[5] = {0.2f, -1.0f, 1.5f, 0.0f, 0.7f};
    tr_sampling p;
    tr_sampling_default(&p);
    p.do_sample = 1;
    p.top_k = 0;
    p.temperature = 0.7;
    for (uint64_t seed = 0; seed < 200; seed++) {
        tr_rng r;
        tr_rng_seed(&r, seed);
        double u = tr_rng_u01(&r), mx = 1.5 / 0.7, z = 0, run = 0;
        for (int i = 0; i < 5; i++)
            z += exp((double)lg[i] / 0.7 - mx);
        int want = 4;
        for (int i = 0; i < 5; i++) {
            run += exp((double)lg[i] / 0.7 - mx);
            if (run > u * z) {
                want = i;
                break;
            }
        }
        ck_assert_int_eq(sample_once(&p, seed, lg, 5, NULL, 0), want);
    }
}
END_TEST

START_TEST(test_generation_config)
{
    char *d = fresh_dir("gencfg");
    const char *g = "{\"do_sample\": true, \"temperature\": 0.6, \"top_p\": 0.95, \"top_k\": 20}";
    tr_test_write(d, "generation_config.json", g, strlen(g));
    tr_sampling p;
    tr_sampling_default(&p);
    ck_assert_int_eq(tr_sampling_from_generation_config(d, &p, NULL), TR_OK);
    ck_assert_int_eq(p.do_sample, 1);
    ck_assert_double_eq(p.temperature, 0.6);
    ck_assert_int_eq(p.top_k, 20);
    ck_assert_double_eq(p.top_p, 0.95);
    g = "{\"temperature\": \"hot\"}";
    tr_test_write(d, "generation_config.json", g, strlen(g));
    tr_error err;
    ck_assert_int_eq(tr_sampling_from_generation_config(d, &p, &err), TR_E_CONFIG);
    ck_assert_ptr_nonnull(strstr(err.text, "temperature: expected a number"));
}
END_TEST

/* ---- sessions ------------------------------------------------------------------------------------------------------- */

static tr_model *load(const char *dir)
{
    tr_model *m;
    tr_error err;
    ck_assert_msg(tr_model_load(dir, NULL, &m, &err) == TR_OK, "%s", err.text);
    return m;
}

static tr_session *open_session(const tr_model *m, const char *backend, int threads, tr_nan_policy pol)
{
    tr_session_options o;
    tr_session_options_default(&o);
    o.backend = backend;
    o.threads = threads;
    o.ctx_size = 64;
    o.nan_policy = pol;
    tr_session *s;
    tr_error err;
    ck_assert_msg(tr_session_new(m, &o, &s, &err) == TR_OK, "%s", err.text);
    return s;
}

static const int32_t IDS[12] = {5, 17, 300, 2, 99, 1000, 41, 7, 7, 64, 512, 3};

static float *run_logits(const tr_model *m, const char *backend, int threads)
{
    tr_session *s = open_session(m, backend, threads, TR_NAN_REPORT);
    float *lg = malloc(12 * (size_t)m->cfg.V * sizeof *lg);
    tr_error err;
    ck_assert_msg(tr_session_eval(s, IDS, 12, TR_LOGITS_ALL, lg, &err) == TR_OK, "%s", err.text);
    ck_assert_uint_eq(tr_session_length(s), 12);
    tr_session_free(s);
    return lg;
}

/* cpu is bitwise equal to ref; ref does not depend on the thread count. */
START_TEST(test_backends_bitwise)
{
    const char *dirs[2] = {GLM, QWEN};
    for (int k = 0; k < 2; k++) {
        tr_model *m = load(dirs[k]);
        float *a = run_logits(m, "ref", 1), *b = run_logits(m, "ref", 3), *c = run_logits(m, "cpu", 0);
        size_t n = 12 * (size_t)m->cfg.V * sizeof *a;
        ck_assert_msg(!memcmp(a, b, n), "%s: ref depends on threads", dirs[k]);
        ck_assert_msg(!memcmp(a, c, n), "%s: cpu differs from ref", dirs[k]);
        free(a);
        free(b);
        free(c);
        tr_model_free(m);
    }
}
END_TEST

START_TEST(test_session_errors_and_cache)
{
    tr_model *m = load(QWEN);
    tr_session *s = open_session(m, "ref", 1, TR_NAN_REPORT);
    tr_error err;
    float *lg = malloc((size_t)m->cfg.V * sizeof *lg);
    int32_t bad[3] = {1, 2, 5000};
    ck_assert_int_eq(tr_session_eval(s, bad, 3, TR_LOGITS_LAST, lg, &err), TR_E_TOKEN_ID);
    ck_assert_str_eq(err.text, "--ids: TR_E_TOKEN_ID: token id 5000 at index 2 is out of range [0, 1105)");
    ck_assert_uint_eq(tr_session_length(s), 0);
    ck_assert_int_eq(tr_session_eval(s, IDS, 4, TR_LOGITS_LAST, lg, &err), TR_OK);
    uint32_t n;
    const float *row = tr_session_cache_row(s, 1, 3, &n);
    ck_assert_ptr_nonnull(row);
    ck_assert_uint_eq(n, 2 * m->cfg.G * m->cfg.head_dim);
    ck_assert_ptr_null(tr_session_cache_row(s, 1, 4, &n));
    /* truncate and re-evaluate: the same logits as the first time */
    float *first = malloc((size_t)m->cfg.V * sizeof *first);
    memcpy(first, lg, (size_t)m->cfg.V * sizeof *lg);
    tr_session_truncate(s, 0);
    ck_assert_int_eq(tr_session_eval(s, IDS, 4, TR_LOGITS_LAST, lg, &err), TR_OK);
    ck_assert(!memcmp(first, lg, (size_t)m->cfg.V * sizeof *lg));
    /* the context limit */
    int32_t many[61];
    for (int i = 0; i < 61; i++)
        many[i] = i;
    ck_assert_int_eq(tr_session_eval(s, many, 61, TR_LOGITS_NONE, NULL, &err), TR_E_INVALID_PARAM);
    ck_assert_uint_eq(tr_session_length(s), 4);
    tr_session_free(s);
    /* ctx above max_position_embeddings */
    tr_session_options o;
    tr_session_options_default(&o);
    o.ctx_size = 5000;
    ck_assert_int_eq(tr_session_new(m, &o, &s, &err), TR_E_INVALID_PARAM);
    ck_assert_ptr_nonnull(strstr(err.text, "5000 is larger than max_position_embeddings 4096"));
    free(lg);
    free(first);
    tr_model_free(m);
}
END_TEST

typedef struct route_log {
    int32_t ids[64][8];
    int forced[64];
    uint32_t n;
} route_log;

static void log_route(void *user, const tr_route_info *r)
{
    route_log *g = user;
    if (r->layer == 1 && r->pos < 64) {
        memcpy(g->ids[r->pos], r->ids, r->k * sizeof *r->ids);
        g->forced[r->pos] = r->overridden;
        g->n++;
    }
}

START_TEST(test_route_override)
{
    tr_model *m = load(GLM);
    tr_session *s = open_session(m, "ref", 1, TR_NAN_REPORT);
    route_log g = {0};
    tr_trace_hooks h = {NULL, log_route, &g};
    tr_session_set_trace(s, &h);
    tr_error err;
    const int32_t force[2] = {6, 3};
    ck_assert_int_eq(tr_session_override_route(s, 1, 2, force, 2, &err), TR_OK);
    ck_assert_int_eq(tr_session_override_route(s, 0, 2, force, 2, &err), TR_E_INVALID_PARAM);   /* dense layer */
    ck_assert_int_eq(tr_session_override_route(s, 1, 2, (const int32_t[]){3, 3}, 2, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_session_override_route(s, 1, 2, (const int32_t[]){3, 9}, 2, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_session_eval(s, IDS, 4, TR_LOGITS_NONE, NULL, &err), TR_OK);
    ck_assert_uint_eq(g.n, 4);
    ck_assert_int_eq(g.forced[2], 1);
    ck_assert_int_eq(g.forced[1], 0);
    int a = g.ids[2][0], b = g.ids[2][1];
    ck_assert_msg((a == 6 && b == 3) || (a == 3 && b == 6), "forced route %d %d", a, b);
    tr_session_free(s);
    tr_model_free(m);
}
END_TEST

/* A NaN in a norm weight: report records it and continues; zero replaces it; abort stops and keeps the length. */
START_TEST(test_nan_policies)
{
    char *d = copy_model(QWEN, "nan");
    rewrite_weights(d, NULL, NULL, 0, "model.layers.1.post_attention_layernorm.weight");
    tr_model *m = load(d);
    tr_error err;
    float *lg = malloc((size_t)m->cfg.V * sizeof *lg);
    tr_nan_stats st;
    tr_session *s = open_session(m, "ref", 1, TR_NAN_REPORT);
    ck_assert_int_eq(tr_session_eval(s, IDS, 3, TR_LOGITS_LAST, lg, &err), TR_OK);
    tr_nan_guard_get(tr_session_nan_guard(s), &st);
    ck_assert(st.nan_detected);
    ck_assert_int_eq(st.first_stage, TR_NAN_STAGE_NORM);
    ck_assert_int_eq(st.first_layer, 1);
    ck_assert_uint_eq(st.first_index, 1);
    tr_session_free(s);
    s = open_session(m, "ref", 1, TR_NAN_ZERO);
    ck_assert_int_eq(tr_session_eval(s, IDS, 3, TR_LOGITS_LAST, lg, &err), TR_OK);
    for (uint32_t v = 0; v < m->cfg.V; v++)
        ck_assert(isfinite(lg[v]));
    tr_session_free(s);
    s = open_session(m, "ref", 1, TR_NAN_ABORT);
    ck_assert_int_eq(tr_session_eval(s, IDS, 3, TR_LOGITS_LAST, lg, &err), TR_E_NAN_DETECTED);
    ck_assert_uint_eq(tr_session_length(s), 0);
    tr_session_free(s);
    free(lg);
    tr_model_free(m);
}
END_TEST

/* Diagnostics on the float MoE path: one grouping per MoE layer call, served by the host path. */
START_TEST(test_moe_counters_float)
{
    tr_model *m = load(GLM);
    tr_session *s = open_session(m, "cpu", 0, TR_NAN_REPORT);
    tr_error err;
    ck_assert_int_eq(tr_session_eval(s, IDS, 5, TR_LOGITS_NONE, NULL, &err), TR_OK);
    ck_assert_int_eq(tr_session_eval(s, IDS + 5, 1, TR_LOGITS_NONE, NULL, &err), TR_OK);
    tr_moe_diag_snapshot snap;
    tr_moe_diag_get(tr_session_diag(s), &snap);
    ck_assert_uint_eq(snap.dispatch_calls_total, 4);            /* 2 MoE layers x 2 calls */
    ck_assert_uint_eq(snap.dispatch_rows_total, 2 * (5 + 1) * 2);
    ck_assert_uint_eq(snap.grouping_calls_total, 4);
    ck_assert_uint_eq(snap.grouping_host_primary_total, 4);
    ck_assert_uint_eq(snap.dispatch_error_total, 0);
    tr_session_free(s);
    tr_model_free(m);
}
END_TEST

/* Every router mode runs on both architectures; noaux_tc forced on Qwen (no bias tensor) warns and uses zeros. */
START_TEST(test_router_modes)
{
    const char *dirs[2] = {GLM, QWEN};
    for (int k = 0; k < 2; k++) {
        tr_model_options mo = {0};
        mo.force_noaux_bias_zero = k == 1;
        tr_model *m;
        tr_error err;
        ck_assert_int_eq(tr_model_load(dirs[k], &mo, &m, &err), TR_OK);
        if (k == 1) {
            ck_assert_uint_eq(m->warnings.count, 2);   /* one per MoE layer */
            ck_assert_int_eq(m->warnings.items[0].code, TR_W_ROUTER_BIAS);
        }
        float *prev = NULL;
        for (int mode = 0; mode < 3; mode++) {
            tr_session_options o;
            tr_session_options_default(&o);
            o.backend = "ref";
            o.ctx_size = 16;
            o.router_mode = mode;
            tr_session *s;
            ck_assert_msg(tr_session_new(m, &o, &s, &err) == TR_OK, "%s", err.text);
            float *lg = malloc((size_t)m->cfg.V * sizeof *lg);
            ck_assert_msg(tr_session_eval(s, IDS, 6, TR_LOGITS_LAST, lg, &err) == TR_OK, "mode %d: %s", mode,
                          err.text);
            for (uint32_t v = 0; v < m->cfg.V; v++)
                ck_assert(isfinite(lg[v]));
            if (prev)   /* the modes route differently, so the logits differ */
                ck_assert(memcmp(prev, lg, (size_t)m->cfg.V * sizeof *lg) != 0);
            free(prev);
            prev = lg;
            tr_session_free(s);
        }
        free(prev);
        tr_model_free(m);
    }
}
END_TEST

/* Allocation failure at every point of model load, session setup, one prefill and one decode step: a clean
 * TR_E_NOMEM (or success when the failing allocation was optional), never a crash or a leak (ASan/valgrind runs). */
static int load_run_free(const char *dir, int *stage)
{
    tr_model *m = NULL;
    tr_session *s = NULL;
    tr_error err;
    float lg[2048];
    *stage = 0;
    int rc = tr_model_load(dir, NULL, &m, &err);
    if (rc == TR_OK) {
        *stage = 1;
        tr_session_options o;
        tr_session_options_default(&o);
        o.backend = "ref";   /* the cpu backend's setup is covered by its own suite; ref keeps this loop fast */
        o.ctx_size = 16;
        rc = tr_session_new(m, &o, &s, &err);
    }
    if (rc == TR_OK) {
        *stage = 2;
        rc = tr_session_eval(s, IDS, 5, TR_LOGITS_LAST, lg, &err);
    }
    if (rc == TR_OK) {
        *stage = 3;
        rc = tr_session_eval(s, IDS + 5, 1, TR_LOGITS_LAST, lg, &err);
    }
    if (rc != TR_OK && rc != TR_E_NOMEM)
        fprintf(stderr, "alloc failure gave: %s\n", err.text);
    tr_session_free(s);
    tr_model_free(m);
    return rc;
}

START_TEST(test_alloc_failures)
{
    const char *dirs[2] = {GLM, QWEN};
    const unsigned long step = tr_test_under_valgrind() ? 37 : 1;
    for (int k = 0; k < 2; k++) {
        unsigned long points = 0, nomem = 0;
        int bad = 0, stage;
        for (unsigned long n = 1;; n += step) {
            tr_alloc_fail_at(n);
            int rc = load_run_free(dirs[k], &stage);
            int fired = tr_alloc_fired();
            tr_alloc_fail_at(0);
            if (!fired) {
                ck_assert_int_eq(rc, TR_OK);
                points = n;
                break;
            }
            nomem += rc == TR_E_NOMEM;
            bad |= rc != TR_OK && rc != TR_E_NOMEM;
        }
        ck_assert_msg(!bad, "%s: an allocation failure gave another error", dirs[k]);
        ck_assert_uint_gt(nomem, 0);
        fprintf(stderr, "engine: %s: %lu allocation points, each failure clean\n", dirs[k], points);
    }
}
END_TEST

/* ---- CLI ---------------------------------------------------------------------------------------------------------- */

START_TEST(test_cli_errors)
{
    cli_result r = cli_run("logits", "-m", "/nonexistent/x", "--ids", "1", "--out", "/dev/null", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "trellis logits: error: /nonexistent/x/config.json: TR_E_IO: not found"));
    cli_result_free(&r);
    r = cli_run("generate", "-m", QWEN, "--ids", "1,2,5000", "-n", "2", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "--ids: TR_E_TOKEN_ID: token id 5000 at index 2 is out of range [0, 1105)"));
    cli_result_free(&r);
    r = cli_run("generate", "-m", QWEN, "--ids", "1,x,3", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "--ids: \"x\" at index 1 is not a token id"));
    cli_result_free(&r);
    r = cli_run("generate", "-m", QWEN, "--ids", "1,2", "--ctx-size", "1", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "prompt has 2 tokens, --ctx-size is 1"));
    cli_result_free(&r);
    r = cli_run("generate", "-m", QWEN, "--ids", "1", "--backend", "metal9", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
}
END_TEST

/* The last line of a CLI run's stdout (the --print-ids line), cut in place. */
static const char *last_line(char *out)
{
    size_t len = strlen(out);
    ck_assert(len > 1 && out[len - 1] == '\n');
    out[len - 1] = 0;
    return strrchr(out, '\n') ? strrchr(out, '\n') + 1 : out;
}

/* Stop ids end generation (the stop id is kept); the context end stops with a warning and exit 0. */
START_TEST(test_cli_generate_stops)
{
    cli_result r = cli_run("generate", "-m", GLM, "--ids", "330,161,476", "-n", "5", "--greedy", "--print-ids",
                           "--backend", "ref", NULL);
    ck_assert_int_eq(r.status, 0);
    char first[32];
    ck_assert_int_eq(sscanf(last_line(r.out), "%31[0-9]", first), 1);
    cli_result_free(&r);
    r = cli_run("generate", "-m", GLM, "--ids", "330,161,476", "-n", "5", "--greedy", "--print-ids", "--stop-id",
                first, "--json", "-", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "\"stop_reason\": \"stop\""));
    ck_assert_str_eq(last_line(r.out), first);   /* the stop id is the one generated id, printed last */
    cli_result_free(&r);
    r = cli_run("generate", "-m", GLM, "--ids", "330,161,476", "-n", "9", "--greedy", "--ctx-size", "5",
                "--print-ids", NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert_ptr_nonnull(strstr(r.err, "context full"));
    int commas = 0;
    for (const char *p = last_line(r.out); *p; p++)
        commas += *p == ',';
    ck_assert_int_eq(commas, 2);   /* 3 prompt + 2 fed = 5 positions, 3 generated ids */
    cli_result_free(&r);
}
END_TEST

Suite *suite_engine(void)
{
    Suite *s = suite_create("engine");
    TCase *t = tcase_create("config");
    tcase_add_test(t, test_config_oracle_values);
    tcase_add_loop_test(t, test_config_errors, 0, (int)(sizeof CFG_CASES / sizeof *CFG_CASES));
    tcase_add_test(t, test_config_inference_and_wrappers);
    tcase_add_test(t, test_config_yarn_scale);
    suite_add_tcase(s, t);
    t = tcase_create("load");
    tcase_add_test(t, test_load_missing_tensor);
    tcase_add_test(t, test_load_shape_mismatch);
    tcase_add_test(t, test_load_bad_quantized_group);
    tcase_add_test(t, test_load_pickle_and_fused);
    suite_add_tcase(s, t);
    t = tcase_create("sampling");
    tcase_add_test(t, test_rng_vector);
    tcase_add_test(t, test_sampling_rules);
    tcase_add_test(t, test_sampling_draw);
    tcase_add_test(t, test_generation_config);
    suite_add_tcase(s, t);
    t = tcase_create("session");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_backends_bitwise);
    tcase_add_test(t, test_session_errors_and_cache);
    tcase_add_test(t, test_route_override);
    tcase_add_test(t, test_nan_policies);
    tcase_add_test(t, test_moe_counters_float);
    tcase_add_test(t, test_router_modes);
    tcase_add_test(t, test_alloc_failures);
    suite_add_tcase(s, t);
    t = tcase_create("cli");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_cli_errors);
    tcase_add_test(t, test_cli_generate_stops);
    suite_add_tcase(s, t);
    return s;
}
