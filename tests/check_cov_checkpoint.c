/*
 * check_cov_checkpoint.c — the validation paths of the checkpoint reader and writers that the fixtures of
 * check_checkpoint.c do not reach (FORMAT.md §2-§3, HARNESS.md §6, §9): every malformed member of
 * quantization_index.json and of a v2 layer index.json, quantized-linear components of the wrong dtype, rank or
 * shape, HF index.json members of the wrong type; allocation failure at every point of the v3 writer and of opening a
 * checkpoint that raises every warning; jansson allocation failures (a failing allocator installed with
 * json_set_alloc_funcs) while the writers build their JSON; and write errors on a full disk (/dev/full).
 */
#include "tests.h"
#include "trellis/alloc.h"
#include "trellis/checkpoint.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/pack.h"
#include "trellis/safetensors.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------------------------------------- */

static char *fresh_dir(const char *name)
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

static void put_text(const char *dir, const char *name, const char *text)
{
    tr_test_write(dir, name, text, strlen(text));
}

/* One quantized linear's component buffers: indices of a fixed pattern, scales 2^-6, su = sv = 1. */
typedef struct qlin {
    uint8_t *packed;
    size_t plen;
    float *s, *su, *sv;
    uint32_t O, I, G;
} qlin;

static void qlin_make(qlin *q, uint32_t O, uint32_t I, unsigned b, uint32_t G)
{
    q->O = O;
    q->I = I;
    q->G = G;
    q->plen = 1 + (size_t)tr_packed_body_bytes(O, I, b);
    uint8_t *idx = malloc((size_t)O * I);
    for (size_t n = 0; n < (size_t)O * I; n++)
        idx[n] = (uint8_t)(n % (1u << b));
    q->packed = malloc(q->plen);
    tr_pack_indices(idx, O, I, b, q->packed);
    free(idx);
    q->s = malloc((size_t)G * O * 4 + 4);
    q->su = malloc((size_t)I * 4 + 4);
    q->sv = malloc((size_t)O * 4 + 4);
    for (size_t n = 0; n < (size_t)G * O; n++)
        q->s[n] = 1.0f / 64;
    for (uint32_t n = 0; n < I; n++)
        q->su[n] = 1.0f;
    for (uint32_t n = 0; n < O; n++)
        q->sv[n] = 1.0f;
}

static void qlin_free(qlin *q)
{
    free(q->packed);
    free(q->s);
    free(q->su);
    free(q->sv);
}

/* How a test breaks one component when it is written. */
enum { BREAK_NONE, BREAK_IDX_DTYPE, BREAK_IDX_RANK, BREAK_SU_RANK, BREAK_SV_RANK, BREAK_SC_RANK, BREAK_SC_COLS,
       BREAK_IDX_EMPTY, BREAK_NO_SV, BREAK_G };

static void qlin_add(tr_st_writer *w, const char *base, const qlin *q, int brk)
{
    char key[512];
    tr_error err;
    uint64_t s1[1] = {q->plen}, s2[2] = {brk == BREAK_G ? q->I + 1 : q->G, brk == BREAK_SC_COLS ? q->O - 1 : q->O};
    uint64_t s3[1] = {q->I}, s4[1] = {q->O}, flat2[2] = {1, q->plen}, su2[2] = {1, q->I}, sv2[2] = {1, q->O};
    uint64_t sc1[1] = {(uint64_t)q->G * q->O}, empty[1] = {0};
    snprintf(key, sizeof key, "%s__indices", base);
    if (brk == BREAK_IDX_DTYPE)
        ck_assert_int_eq(tr_st_writer_add(w, key, TR_DT_I8, 1, s1, q->packed, &err), TR_OK);
    else if (brk == BREAK_IDX_RANK)
        ck_assert_int_eq(tr_st_writer_add(w, key, TR_DT_U8, 2, flat2, q->packed, &err), TR_OK);
    else if (brk == BREAK_IDX_EMPTY)
        ck_assert_int_eq(tr_st_writer_add(w, key, TR_DT_U8, 1, empty, q->packed, &err), TR_OK);
    else
        ck_assert_int_eq(tr_st_writer_add(w, key, TR_DT_U8, 1, s1, q->packed, &err), TR_OK);
    snprintf(key, sizeof key, "%s__scales", base);
    if (brk == BREAK_SC_RANK)
        ck_assert_int_eq(tr_st_writer_add(w, key, TR_DT_F32, 1, sc1, q->s, &err), TR_OK);
    else if (brk == BREAK_G) {
        static float more[1024];
        for (int i = 0; i < 1024; i++)
            more[i] = 1.0f / 64;
        ck_assert_int_eq(tr_st_writer_add(w, key, TR_DT_F32, 2, s2, more, &err), TR_OK);
    } else
        ck_assert_int_eq(tr_st_writer_add(w, key, TR_DT_F32, 2, s2, q->s, &err), TR_OK);
    snprintf(key, sizeof key, "%s__su", base);
    ck_assert_int_eq(tr_st_writer_add(w, key, TR_DT_F32, brk == BREAK_SU_RANK ? 2 : 1, brk == BREAK_SU_RANK ? su2 : s3,
                                      q->su, &err), TR_OK);
    if (brk == BREAK_NO_SV)
        return;
    snprintf(key, sizeof key, "%s__sv", base);
    ck_assert_int_eq(tr_st_writer_add(w, key, TR_DT_F32, brk == BREAK_SV_RANK ? 2 : 1, brk == BREAK_SV_RANK ? sv2 : s4,
                                      q->sv, &err), TR_OK);
}

static void st_write(tr_st_writer *w, const char *dir, const char *name)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    tr_error err;
    ck_assert_msg(tr_st_writer_write(w, path, &err) == TR_OK, "%s", err.text);
    tr_st_writer_free(w);
}

/* A v3 directory with one quantized linear model.layers.0.mlp.up_proj [16, 32] at 3 bits (brk breaks it). */
static char *v3_dir(const char *name, int brk)
{
    char *dir = fresh_dir(name);
    put_text(dir, "config.json", "{\"num_hidden_layers\": 1}");
    qlin q;
    qlin_make(&q, 16, 32, 3, 1);
    tr_st_writer *w = tr_st_writer_new();
    qlin_add(w, "model__layers__0__mlp__up_proj__weight", &q, brk);
    st_write(w, dir, "model.safetensors");
    qlin_free(&q);
    return dir;
}

/* Open dir; expect code and (when not TR_OK) a message containing needle. */
static void expect_open(const char *dir, int code, const char *needle)
{
    tr_ckpt *c = NULL;
    tr_error err;
    tr_error_clear(&err);
    int rc = tr_ckpt_open(dir, NULL, &c, &err);
    ck_assert_msg(rc == code, "%s: %s, expected %s (%s)", dir, tr_status_name(rc), tr_status_name(code), err.text);
    if (code != TR_OK) {
        ck_assert_ptr_null(c);
        ck_assert_msg(strstr(err.text, needle) != NULL, "\"%s\" lacks \"%s\"", err.text, needle);
    } else
        tr_ckpt_close(c);
}

/* ---- quantization_index.json ---------------------------------------------------------------------------------- */

static const struct {
    const char *json;
    int code;
    const char *needle;
} qindex_table[] = {
    {"{\"format\": 3}", TR_E_INDEX_JSON, "format is not a string"},
    {"{\"codebook\": []}", TR_E_INDEX_JSON, "codebook is not a string"},
    {"{\"rotation\": {}}", TR_E_INDEX_JSON, "rotation is not a string"},
    {"{\"format\": \"trellis_v9\"}", TR_E_UNSUPPORTED, "format \"trellis_v9\" is not supported"},
    {"{\"group_size\": 0}", TR_E_INDEX_JSON, "group_size is not an integer >= 1"},
    {"{\"group_size\": \"64\"}", TR_E_INDEX_JSON, "group_size is not an integer >= 1"},
    {"{\"group_size\": 4294967296}", TR_E_INDEX_JSON, "group_size is not an integer >= 1"},
    {"{\"codebook\": \"3inst\"}", TR_E_UNSUPPORTED, "codebook \"3inst\" is not supported"},
    {"{\"rotation\": \"hadamard64\"}", TR_E_UNSUPPORTED, "rotation \"hadamard64\" is not supported"},
    {"{\"layers\": {}}", TR_E_INDEX_JSON, "layers is not an array"},
    {"{\"layers\": [7]}", TR_E_INDEX_JSON, "layers[0] is not an object"},
    {"{\"layers\": [{\"bits\": 3}]}", TR_E_INDEX_JSON, "layers[0].name is missing"},
    {"{\"layers\": [{\"name\": \"\"}]}", TR_E_INDEX_JSON, "layers[0].name is not a non-empty string"},
    {"{\"layers\": [{\"name\": 5}]}", TR_E_INDEX_JSON, "layers[0].name is not a non-empty string"},
    {"{\"layers\": [{\"name\": \"a\", \"shape\": 16}]}", TR_E_INDEX_JSON, "layers[0].shape is not [O, I]"},
    {"{\"layers\": [{\"name\": \"a\", \"shape\": [16]}]}", TR_E_INDEX_JSON, "layers[0].shape is not [O, I]"},
    {"{\"layers\": [{\"name\": \"a\", \"shape\": [0, 16]}]}", TR_E_INDEX_JSON, "layers[0].shape is not [O, I]"},
    {"{\"layers\": [{\"name\": \"a\", \"shape\": [16, -1]}]}", TR_E_INDEX_JSON, "layers[0].shape is not [O, I]"},
    {"{\"layers\": [{\"name\": \"a\", \"bits\": \"3\"}]}", TR_E_INDEX_JSON, "layers[0].bits is not an integer"},
    {"{\"layers\": [{\"name\": \"a\", \"rotation\": 1}]}", TR_E_INDEX_JSON, "layers[0].rotation is not a string"},
    {"{\"layers\": [{\"name\": \"a\", \"rotation\": \"haar\"}]}", TR_E_UNSUPPORTED, "rotation \"haar\" is not"},
    {"{\"layers\": [{\"name\": \"a\"}, {\"name\": \"a.weight\"}]}", TR_E_INDEX_JSON, "layers[1].name \"a.weight\" "
                                                                                     "appears twice"},
    {"[1, 2]", TR_E_INDEX_JSON, "top level is not a JSON object"},
    {"{\"layers\": [", TR_E_INDEX_JSON, "line 1"},
    /* accepted: a shape that disagrees with the tensors is a shape error, a per-layer rotation overrides */
    {"{\"layers\": [{\"name\": \"model.layers.0.mlp.up_proj\", \"shape\": [16, 31]}]}", TR_E_SHAPE,
     "metadata shape [16,31] disagrees with len(sv) = 16, len(su) = 32"},
    {"{\"layers\": [{\"name\": \"model.layers.0.mlp.up_proj\", \"rotation\": \"hadamard128\"}]}", TR_E_SHAPE,
     "rotation hadamard128 needs I % 128 == 0"},
    {"{\"format\": \"trellis_v3\", \"codebook\": \"grid\", \"rotation\": \"none\", \"group_size\": 32, \"layers\": "
     "[{\"name\": \"model.layers.0.mlp.up_proj\", \"shape\": [16, 32], \"bits\": 3, \"rotation\": \"none\"}]}",
     TR_OK, ""},
};

START_TEST(test_qindex_members)
{
    char *dir = v3_dir("qindex", BREAK_NONE);
    for (size_t i = 0; i < sizeof qindex_table / sizeof qindex_table[0]; i++) {
        put_text(dir, "quantization_index.json", qindex_table[i].json);
        expect_open(dir, qindex_table[i].code, qindex_table[i].needle);
    }
}
END_TEST

/* ---- quantized linear components -------------------------------------------------------------------------------- */

START_TEST(test_component_validation)
{
    static const struct {
        int brk, code;
        const char *needle;
    } table[] = {
        {BREAK_IDX_DTYPE, TR_E_DTYPE, "__indices: dtype I8, expected U8"},
        {BREAK_IDX_RANK, TR_E_SHAPE, "__indices: 2-D, expected 1-D"},
        {BREAK_SU_RANK, TR_E_SHAPE, "__su: 2-D, expected 1-D"},
        {BREAK_SV_RANK, TR_E_SHAPE, "__sv: 2-D, expected 1-D"},
        {BREAK_SC_RANK, TR_E_SHAPE, "__scales: 1-D, expected [G, O]"},
        {BREAK_SC_COLS, TR_E_SHAPE, "__scales: shape [1,15], expected [G,16]"},
        {BREAK_IDX_EMPTY, TR_E_QSIZE, "__indices: empty, expected 1 + "},
        {BREAK_NO_SV, TR_E_TENSOR_MISSING, "__sv: missing (the other components of"},
        {BREAK_G, TR_E_QGROUP, "__scales: shape [33,16], expected [1,16] for I=32, group size 128"},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "comp%zu", i);
        expect_open(v3_dir(name, table[i].brk), table[i].code, table[i].needle);
    }
    /* the same weight stored under both key spellings */
    char *dir = fresh_dir("twice");
    put_text(dir, "config.json", "{}");
    qlin q;
    qlin_make(&q, 16, 16, 2, 1);
    tr_st_writer *w = tr_st_writer_new();
    qlin_add(w, "model__layers__0__mlp__up_proj__weight", &q, BREAK_NONE);
    qlin_add(w, "model__layers__0__mlp__up_proj", &q, BREAK_NONE);
    st_write(w, dir, "model.safetensors");
    expect_open(dir, TR_E_TENSOR_DUPLICATE, "is stored twice");
    qlin_free(&q);
}
END_TEST

/* ---- v2 layer folders ------------------------------------------------------------------------------------------ */

START_TEST(test_v2_layer_index)
{
    static const struct {
        const char *json;
        int code;
        const char *needle;
    } table[] = {
        {"{\"format\": 2, \"layer_idx\": 0, \"tensors\": []}", TR_E_INDEX_JSON, "format is not a string"},
        {"{\"format\": \"trellis_v3\", \"layer_idx\": 0, \"tensors\": []}", TR_E_UNSUPPORTED, "is not supported here"},
        {"{\"layer_idx\": -1, \"tensors\": []}", TR_E_INDEX_JSON, "layer_idx is not a non-negative integer"},
        {"{\"layer_idx\": 0}", TR_E_INDEX_JSON, "tensors is missing"},
        {"{\"layer_idx\": 0, \"tensors\": {}}", TR_E_INDEX_JSON, "tensors is not an array"},
        {"{\"layer_idx\": 0, \"tensors\": [3]}", TR_E_INDEX_JSON, "tensors[0] is not an object"},
        {"{\"layer_idx\": 0, \"tensors\": [], \"shards\": {}}", TR_E_INDEX_JSON, "shards is not an array"},
        {"{\"layer_idx\": 0, \"tensors\": [], \"shards\": [{\"file\": 1}]}", TR_E_INDEX_JSON,
         "shards[0].file is not a string"},
        {"{\"layer_idx\": 0, \"tensors\": [], \"shards\": [{\"file\": \"\"}]}", TR_E_INDEX_PATH, "not a plain file"},
        {"{\"layer_idx\": 0, \"tensors\": [], \"shards\": [{\"file\": \"a\\\\b\"}]}", TR_E_INDEX_PATH,
         "not a plain file"},
        {"{\"layer_idx\": 0, \"tensors\": [], \"shards\": [{\"file\": \"..\"}]}", TR_E_INDEX_PATH, "not a plain file"},
        {"{\"layer_idx\": 0, \"tensors\": [], \"shards\": [{\"file\": \".\"}]}", TR_E_INDEX_PATH, "not a plain file"},
        /* a root entry without shape takes the layer's; the layer's rotation is recorded */
        {"{\"layer_idx\": 0, \"tensors\": [{\"name\": \"model.layers.0.mlp.up_proj.weight\", \"shape\": [16, 32],"
         " \"rotation\": \"none\"}]}", TR_OK, ""},
        {"{\"layer_idx\": 0, \"tensors\": [{\"name\": \"model.layers.0.mlp.up_proj.weight\", \"rotation\": "
         "\"hadamard128\"}]}", TR_E_SHAPE, "rotation hadamard128 needs I % 128 == 0"},
    };
    char *dir = fresh_dir("v2l");
    char ldir[4400];
    snprintf(ldir, sizeof ldir, "%s/layer_0000", dir);
    ck_assert_int_eq(mkdir(ldir, 0777), 0);
    put_text(dir, "config.json", "{}");
    put_text(dir, "quantization_index.json", "{\"layers\": [{\"name\": \"model.layers.0.mlp.up_proj\", \"bits\": 3}]}");
    qlin q;
    qlin_make(&q, 16, 32, 3, 1);
    tr_st_writer *w = tr_st_writer_new();
    qlin_add(w, "model__layers__0__mlp__up_proj__weight", &q, BREAK_NONE);
    st_write(w, ldir, "batch_0000.safetensors");   /* found through the batch_ fallback of the listing */
    qlin_free(&q);
    /* folders that are not layer_<digits> and layer folders without index.json are skipped */
    char other[4500];
    snprintf(other, sizeof other, "%s/layer_1x", dir);
    ck_assert_int_eq(mkdir(other, 0777), 0);
    snprintf(other, sizeof other, "%s/layer_0001", dir);
    ck_assert_int_eq(mkdir(other, 0777), 0);
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        put_text(ldir, "index.json", table[i].json);
        expect_open(dir, table[i].code, table[i].needle);
    }
}
END_TEST

/* ---- HF index.json and config.json --------------------------------------------------------------------------- */

START_TEST(test_hf_index_members)
{
    static const struct {
        const char *index;
        int code;
        const char *needle;
    } table[] = {
        {"{\"weight_map\": []}", TR_E_INDEX_JSON, "weight_map is not an object"},
        {"{\"metadata\": 1, \"weight_map\": {}}", TR_E_INDEX_JSON, "metadata"},
        {"{\"metadata\": {\"total_size\": \"8\"}, \"weight_map\": {}}", TR_E_INDEX_JSON,
         "metadata.total_size is not an integer"},
        {"{\"weight_map\": {\"w\": 3}}", TR_E_INDEX_JSON, "weight_map[\"w\"] is not a string"},
    };
    char *dir = fresh_dir("hfidx");
    put_text(dir, "config.json", "{}");
    float v[4] = {1, 2, 3, 4};
    uint64_t s[1] = {4};
    tr_error err;
    tr_st_writer *w = tr_st_writer_new();
    ck_assert_int_eq(tr_st_writer_add(w, "w", TR_DT_F32, 1, s, v, &err), TR_OK);
    st_write(w, dir, "model-00001-of-00001.safetensors");
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        put_text(dir, "model.safetensors.index.json", table[i].index);
        expect_open(dir, table[i].code, table[i].needle);
    }
    put_text(dir, "model.safetensors.index.json",
             "{\"weight_map\": {\"w\": \"model-00001-of-00001.safetensors\"}}");
    put_text(dir, "config.json", "{\"num_hidden_layers\": -2}");
    expect_open(dir, TR_E_CONFIG, "num_hidden_layers is not a non-negative integer");
    put_text(dir, "config.json", "{\"num_hidden_layers\": 2}");
    tr_ckpt *c = NULL;
    ck_assert_msg(tr_ckpt_open(dir, NULL, &c, &err) == TR_OK, "%s", err.text);
    ck_assert_str_eq(tr_ckpt_dir(c), dir);
    ck_assert_uint_eq(tr_ckpt_num_layers(c), 2);
    ck_assert_str_eq(tr_layout_name(tr_ckpt_layout(c)), "hf_float");
    tr_ckpt_close(c);
    ck_assert_str_eq(tr_layout_name(TR_LAYOUT_EXL3), "exl3");
    /* reading a quantized component (U8 indices) as float is refused; a missing name is reported */
    char *v3 = v3_dir("v3int", BREAK_NONE);
    ck_assert_msg(tr_ckpt_open(v3, NULL, &c, &err) == TR_OK, "%s", err.text);
    float *f = NULL;
    uint64_t n = 0;
    ck_assert_int_eq(tr_ckpt_load_f32(c, "model__layers__0__mlp__up_proj__weight__indices", &f, &n, &err),
                     TR_E_DTYPE);
    ck_assert_msg(strstr(err.text, "dtype U8 not allowed (F32, BF16 or F16)"), "%s", err.text);
    ck_assert_ptr_null(f);
    ck_assert_int_eq(tr_ckpt_load_f32(c, "model.missing.weight", &f, &n, &err), TR_E_TENSOR_MISSING);
    ck_assert_msg(strstr(err.text, "base_weights.safetensors"), "%s", err.text);
    tr_ckpt_close(c);
    ck_assert_str_eq(tr_layout_name((tr_layout)99), "?");
}
END_TEST

/* ---- allocation failures ---------------------------------------------------------------------------------------- */

/* A small v3 checkpoint: two linears over two shards, a float, finish.  Returns the first error (TR_OK if none). */
static int write_small_v3(const char *dir)
{
    tr_v3_options opt = {600, 32, TR_ROT_NONE};
    tr_v3_writer *w = NULL;
    tr_error err;
    int rc = tr_v3_writer_new(dir, &opt, &w, &err);
    if (rc != TR_OK)
        return rc;
    qlin a, b;
    qlin_make(&a, 16, 32, 2, 1);
    qlin_make(&b, 16, 64, 4, 2);
    rc = tr_v3_writer_declare(w, "model.layers.1.mlp.up_proj.weight", 16, 64, 4, 2, TR_ROT_NONE, &err);
    if (rc == TR_OK)
        rc = tr_v3_writer_declare(w, "model.layers.0.mlp.up_proj.weight", 16, 32, 2, 1, TR_ROT_NONE, &err);
    tr_qweight qa = {16, 32, 2, 32, 1, TR_ROT_NONE, a.packed, a.plen, a.s, a.su, a.sv};
    tr_qweight qb = {16, 64, 4, 32, 2, TR_ROT_NONE, b.packed, b.plen, b.s, b.su, b.sv};
    if (rc == TR_OK)
        rc = tr_v3_writer_put(w, "model.layers.0.mlp.up_proj.weight", &qa, &err);
    if (rc == TR_OK)
        rc = tr_v3_writer_put(w, "model.layers.1.mlp.up_proj.weight", &qb, &err);
    float emb[4] = {1, 2, 3, 4};
    uint64_t es[2] = {2, 2};
    if (rc == TR_OK)
        rc = tr_v3_writer_add_float(w, "model.embed_tokens.weight", TR_DT_F32, 2, es, emb, &err);
    if (rc == TR_OK)
        rc = tr_v3_writer_finish(w, &err);
    tr_v3_writer_free(w);
    qlin_free(&a);
    qlin_free(&b);
    return rc;
}

START_TEST(test_v3_writer_alloc_failures)
{
    char *dir = fresh_dir("v3alloc");
    unsigned long n;
    for (n = 1;; n++) {
        tr_alloc_fail_at(n);
        int rc = write_small_v3(dir);
        int fired = tr_alloc_fired();
        tr_alloc_fail_at(0);
        if (!fired) {
            ck_assert_int_eq(rc, TR_OK);
            break;
        }
        ck_assert_msg(rc == TR_E_NOMEM, "point %lu: %s", n, tr_status_name(rc));
    }
    ck_assert_uint_gt(n, 20);
    put_text(dir, "config.json", "{\"num_hidden_layers\": 2}");
    tr_ckpt *c = NULL;
    tr_error err;
    ck_assert_msg(tr_ckpt_open(dir, NULL, &c, &err) == TR_OK, "%s", err.text);
    ck_assert_uint_eq(tr_ckpt_qlinear_count(c), 2);
    ck_assert_uint_eq(tr_ckpt_qlinear_at(c, 1)->w.gs, 32);
    tr_ckpt_close(c);
}
END_TEST

/* A v3 directory that raises every warning of the quantized reader, opened with every allocation point failing. */
START_TEST(test_open_warnings_alloc_failures)
{
    char *dir = fresh_dir("warnalloc");
    put_text(dir, "config.json", "{\"num_hidden_layers\": 2}");
    qlin a, r, d;
    qlin_make(&a, 16, 100, 4, 4);   /* group size 25 inferred */
    qlin_make(&r, 4, 16, 4, 1);     /* quantized router */
    qlin_make(&d, 16, 16, 3, 1);
    a.su[1] = 0.5f;                 /* TR_W_SIGNS */
    d.s[0] = 0.0f;                  /* TR_W_SCALES */
    tr_st_writer *w = tr_st_writer_new();
    qlin_add(w, "model__layers__0__self_attn__q_proj__weight", &a, BREAK_NONE);
    qlin_add(w, "model__layers__1__mlp__gate__weight", &r, BREAK_NONE);
    qlin_add(w, "model__layers__0__mlp__down_proj__weight", &d, BREAK_NONE);
    float ones[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    uint64_t s16[1] = {16};
    tr_error err;
    tr_st_writer_add(w, "model.layers.0.weight.scales", TR_DT_F32, 1, s16, ones, &err);   /* TR_W_UNRECOGNIZED */
    st_write(w, dir, "model.safetensors");
    put_text(dir, "quantization_index.json",
             "{\"layers\":[{\"name\":\"model.layers.0.mlp.down_proj.weight\",\"bits\":4},"
             "{\"name\":\"model.layers.0.self_attn.k_proj.weight\"}]}");
    unsigned long n;
    size_t warnings = 0;
    for (n = 1;; n++) {
        tr_alloc_fail_at(n);
        tr_ckpt *c = NULL;
        int rc = tr_ckpt_open(dir, NULL, &c, &err);
        int fired = tr_alloc_fired();
        tr_alloc_fail_at(0);
        if (!fired) {
            ck_assert_msg(rc == TR_OK, "%s", err.text);
            warnings = tr_ckpt_warnings(c)->count;
            tr_ckpt_close(c);
            break;
        }
        ck_assert_msg(rc == TR_E_NOMEM && c == NULL, "point %lu: %s (%s)", n, tr_status_name(rc), err.text);
    }
    ck_assert_uint_ge(warnings, 7);
    qlin_free(&a);
    qlin_free(&r);
    qlin_free(&d);
}
END_TEST

/* ---- jansson allocation failures -------------------------------------------------------------------------------- */

static json_malloc_t saved_malloc;
static json_free_t saved_free;
static unsigned long jn_at, jn_count;
static int jn_fired;

/* A real malloc failure inside jansson, as the project's allocator sees one: NULL, and the failure counted (alloc.c
 * counts every NULL from malloc; tr_json_dumps and tr_json_parse check that count because jansson 2.14 can return
 * a corrupt text instead of NULL when an allocation fails inside json_dumps).  The count is raised through a
 * one-shot injection at the next allocation point. */
static void *failing_json_malloc(size_t n)
{
    if (++jn_count == jn_at) {
        jn_fired = 1;
        unsigned long before = tr_alloc_failures();
        tr_alloc_fail_at(1);
        ck_assert_int_eq(tr_alloc_should_fail(), 1);
        tr_alloc_fail_at(0);
        ck_assert_uint_eq(tr_alloc_failures(), before + 1);
        return NULL;
    }
    return saved_malloc(n);
}

/* Make the n-th jansson allocation from now on return NULL (0: restore the project's allocator). */
static void json_fail_at(unsigned long n)
{
    if (!saved_malloc)
        json_get_alloc_funcs(&saved_malloc, &saved_free);
    jn_at = n;
    jn_count = 0;
    jn_fired = 0;
    json_set_alloc_funcs(n ? failing_json_malloc : saved_malloc, saved_free);
}

START_TEST(test_writers_json_alloc_failures)
{
    char *dir = fresh_dir("v3json");
    unsigned long n;
    for (n = 1;; n++) {
        json_fail_at(n);
        int rc = write_small_v3(dir);
        int fired = jn_fired;
        json_fail_at(0);
        if (!fired) {
            ck_assert_int_eq(rc, TR_OK);
            break;
        }
        ck_assert_msg(rc == TR_E_NOMEM, "jansson allocation %lu: %s", n, tr_status_name(rc));
    }
    ck_assert_uint_gt(n, 20);
    /* the safetensors writer alone (header with metadata and two tensors) */
    char path[4400];
    snprintf(path, sizeof path, "%s/one.safetensors", dir);
    float v[2] = {1, 2};
    uint64_t s[1] = {2};
    for (n = 1;; n++) {
        tr_error err;
        tr_st_writer *w = tr_st_writer_new();
        ck_assert_int_eq(tr_st_writer_add(w, "a", TR_DT_F32, 1, s, v, &err), TR_OK);
        ck_assert_int_eq(tr_st_writer_add(w, "b", TR_DT_F16, 1, s, v, &err), TR_OK);
        json_fail_at(n);
        int rc = tr_st_writer_write(w, path, &err);
        int fired = jn_fired;
        json_fail_at(0);
        tr_st_writer_free(w);
        if (!fired) {
            ck_assert_int_eq(rc, TR_OK);
            break;
        }
        ck_assert_msg(rc == TR_E_NOMEM, "jansson allocation %lu: %s", n, tr_status_name(rc));
    }
    ck_assert_uint_gt(n, 5);
}
END_TEST

/* ---- writers on a full disk, and other writer misuse ------------------------------------------------------------ */

START_TEST(test_writers_disk_full_and_misuse)
{
    tr_error err;
    if (access("/dev/full", W_OK) == 0) {
        char buf[64] = {0};
        ck_assert_int_eq(tr_file_write_all("/dev/full", buf, sizeof buf, &err), TR_E_NOSPACE);
        tr_file_out o;
        ck_assert_int_eq(tr_file_out_open(&o, "/dev/full", &err), TR_OK);
        for (int i = 0; i < 256; i++)   /* beyond stdio's buffer: fwrite itself fails, later puts are dropped */
            tr_file_out_put(&o, buf, sizeof buf);
        tr_file_out_put(&o, buf, 0);
        ck_assert_int_eq(tr_file_out_close(&o, &err), TR_E_NOSPACE);
        ck_assert_msg(strstr(err.text, "write failed"), "%s", err.text);
        ck_assert_int_eq(tr_file_out_open(&o, "/dev/full", &err), TR_OK);
        tr_file_out_put(&o, buf, 1);   /* buffered: the error shows at close */
        ck_assert_int_eq(tr_file_out_close(&o, &err), TR_E_NOSPACE);
    }
    char *dir = fresh_dir("misuse");
    char path[4400];
    snprintf(path, sizeof path, "%s/missing/x.bin", dir);
    ck_assert_int_eq(tr_file_write_all(path, "x", 1, &err), TR_E_IO);
    ck_assert_int_eq(tr_file_read_all(dir, &(char *){NULL}, &(size_t){0}, &err), TR_E_IO);   /* a directory */
    tr_mapped m;
    ck_assert_int_eq(tr_file_map(dir, &m, &err), TR_E_IO);
    /* mkdir -p: through an existing file, and onto one */
    put_text(dir, "plain", "x");
    snprintf(path, sizeof path, "%s/plain/sub", dir);
    ck_assert_int_eq(tr_mkdir_p(path, &err), TR_E_IO);
    snprintf(path, sizeof path, "%s/plain", dir);
    ck_assert_int_eq(tr_mkdir_p(path, &err), TR_E_IO);
    ck_assert_msg(strstr(err.text, "exists and is not a directory"), "%s", err.text);
    snprintf(path, sizeof path, "%s/a/b/c/", dir);
    ck_assert_int_eq(tr_mkdir_p(path, &err), TR_OK);
    ck_assert(tr_path_is_dir(path));
    char *j = tr_path_join(dir, "x");
    char *j2 = tr_path_join(path, "y");   /* dir with a trailing slash: no second one */
    ck_assert_ptr_nonnull(strstr(j2, "/c/y"));
    ck_assert_ptr_null(strstr(j2, "//"));
    tr_dealloc(j);
    tr_dealloc(j2);
    /* the v3 writer refuses a declaration it cannot hold and data that does not match */
    tr_v3_writer *w = NULL;
    snprintf(path, sizeof path, "%s/plain/v3", dir);
    ck_assert_int_eq(tr_v3_writer_new(path, NULL, &w, &err), TR_E_IO);
    ck_assert_ptr_null(w);
    ck_assert_int_eq(tr_v3_writer_new(fresh_dir("v3misuse"), NULL, &w, &err), TR_OK);
    ck_assert_int_eq(tr_v3_writer_declare(w, "a.weight", 16, 16, 9, 1, TR_ROT_NONE, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_v3_writer_declare(w, "a.weight", 16, 16, 1, 1, TR_ROT_NONE, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_v3_writer_declare(w, "a.weight", 16, 0, 2, 1, TR_ROT_NONE, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_v3_writer_declare(w, "a.weight", 16, 16, 2, 0, TR_ROT_NONE, &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_v3_writer_declare(w, "a.weight", 16, 16, 2, 1, TR_ROT_NONE, &err), TR_OK);
    qlin q;
    qlin_make(&q, 16, 16, 2, 1);
    tr_qweight qw = {16, 16, 2, 128, 1, TR_ROT_NONE, q.packed, q.plen, q.s, q.su, q.sv};
    qw.I = 32;
    ck_assert_int_eq(tr_v3_writer_put(w, "a.weight", &qw, &err), TR_E_INVALID_PARAM);
    qw.I = 16;
    qw.bits = 3;
    ck_assert_int_eq(tr_v3_writer_put(w, "a.weight", &qw, &err), TR_E_INVALID_PARAM);
    qw.bits = 2;
    qw.G = 2;
    ck_assert_int_eq(tr_v3_writer_put(w, "a.weight", &qw, &err), TR_E_INVALID_PARAM);
    qw.G = 1;
    qw.indices_len--;
    ck_assert_int_eq(tr_v3_writer_put(w, "a.weight", &qw, &err), TR_E_INVALID_PARAM);
    qw.indices_len++;
    q.packed[0] = 3;
    ck_assert_int_eq(tr_v3_writer_put(w, "a.weight", &qw, &err), TR_E_INVALID_PARAM);
    ck_assert_msg(strstr(err.text, "does not match its declaration"), "%s", err.text);
    q.packed[0] = 2;
    ck_assert_int_eq(tr_v3_writer_put(w, "a.weight", &qw, &err), TR_OK);
    ck_assert_int_eq(tr_v3_writer_put(w, "a.weight", &qw, &err), TR_E_INVALID_PARAM);
    ck_assert_msg(strstr(err.text, "expected nothing more"), "%s", err.text);
    ck_assert_ptr_null(tr_v3_writer_next(w));
    ck_assert_int_eq(tr_v3_writer_finish(w, &err), TR_OK);
    tr_v3_writer_free(w);
    tr_v3_writer_free(NULL);
    qlin_free(&q);
    /* the safetensors writer refuses bad entries */
    tr_st_writer *sw = tr_st_writer_new();
    uint64_t big[2] = {UINT64_C(1) << 40, UINT64_C(1) << 40}, s1[1] = {1};
    ck_assert_int_eq(tr_st_writer_add(sw, "", TR_DT_F32, 1, s1, "", &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_st_writer_add(sw, "__metadata__", TR_DT_F32, 1, s1, "", &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_st_writer_add(sw, "x", TR_DT_F32, 9, big, "", &err), TR_E_INVALID_PARAM);
    ck_assert_int_eq(tr_st_writer_add(sw, "x", TR_DT_F32, 2, big, "", &err), TR_E_INVALID_PARAM);
    ck_assert_msg(strstr(err.text, "byte size overflows"), "%s", err.text);
    tr_st_writer_free(sw);
}
END_TEST

/* ---- safetensors header entries ---------------------------------------------------------------------------------- */

START_TEST(test_safetensors_entries)
{
    static const struct {
        const char *header;
        int code;
        const char *needle;
    } table[] = {
        {"{\"t\":3}", TR_E_ST_ENTRY, "tensor \"t\""},
        {"{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", TR_E_ST_ENTRY, "missing member \"dtype\""},
        {"{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", TR_E_ST_ENTRY, "missing member \"shape\""},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", TR_E_ST_ENTRY, "missing member \"data_offsets\""},
        {"{\"t\":{\"dtype\":1,\"shape\":[1],\"data_offsets\":[0,4]}}", TR_E_ST_ENTRY, "dtype is not a string"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]}}", TR_E_ST_ENTRY, "shape is not an array"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":\"0\"}}", TR_E_ST_ENTRY,
         "data_offsets is not an array"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", TR_E_ST_OFFSETS, "two non-negative"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0.5,4]}}", TR_E_ST_OFFSETS, "two non-negative"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,-4]}}", TR_E_ST_OFFSETS, "two non-negative"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,4]}}",
         TR_E_ST_SIZE, "element count overflows 64 bits"},
        {"{\"__metadata__\":[],\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", TR_E_ST_METADATA, ""},
        {"{\"__metadata__\":{\"a\":1},\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         TR_E_ST_METADATA, "__metadata__.a is not a string"},
        /* zero-size tensors at one offset sort by end, then name */
        {"{\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},\"t\":{\"dtype\":\"F32\",\"shape\":[1],"
         "\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", TR_OK, ""},
    };
    float v = 1.5f;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        size_t size;
        uint8_t *img = tr_test_st_image(table[i].header, &v, 4, &size);
        tr_st_file *f = NULL;
        tr_error err;
        tr_error_clear(&err);
        int rc = tr_st_open_buffer(img, size, "mem", &f, &err);
        ck_assert_msg(rc == table[i].code, "%zu: %s (%s)", i, tr_status_name(rc), err.text);
        if (rc == TR_OK) {
            ck_assert_uint_eq(tr_st_count(f), 3);
            ck_assert_ptr_null(tr_st_metadata_value(f, 0));
            ck_assert_uint_eq(tr_st_find(f, "t")->numel, 1);
            tr_st_close(f);
        } else {
            ck_assert_ptr_null(f);
            ck_assert_msg(strstr(err.text, table[i].needle), "%zu: %s", i, err.text);
        }
        free(img);
    }
    ck_assert_uint_eq(tr_dtype_size(TR_DT_COUNT), 0);
}
END_TEST

Suite *suite_cov_checkpoint(void)
{
    Suite *s = suite_create("cov_checkpoint");
    TCase *tc = tcase_create("validation");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_qindex_members);
    tcase_add_test(tc, test_component_validation);
    tcase_add_test(tc, test_v2_layer_index);
    tcase_add_test(tc, test_hf_index_members);
    tcase_add_test(tc, test_v3_writer_alloc_failures);
    tcase_add_test(tc, test_open_warnings_alloc_failures);
    tcase_add_test(tc, test_writers_json_alloc_failures);
    tcase_add_test(tc, test_writers_disk_full_and_misuse);
    tcase_add_test(tc, test_safetensors_entries);
    suite_add_tcase(s, tc);
    return s;
}
