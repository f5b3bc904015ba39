/*
 * quant_index.c — fuzz target: quantization_index.json (FORMAT.md §3.2) and model.safetensors.index.json (§2.2) as
 * the checkpoint reader parses them inside tr_ckpt_open.
 *
 * Once per process a tiny valid trellis v3 folder is written with the library's own v3 writer into the target's
 * temporary folder: two quantized linears (one hadamard128 [32,128] at 3 bits with group size 64, one [16,48] at 4
 * bits), one float tensor, config.json.  Each input then replaces one JSON file before tr_ckpt_open:
 *   - an input starting with "#index\n": the rest is model.safetensors.index.json (quantization_index.json is the
 *     writer's);
 *   - any other input: the whole input is quantization_index.json (the index is the writer's).
 * Checks: a failed open returns no handle and a message carrying its code; an opened checkpoint has structurally
 * valid linears (tr_qweight_check passes, dequantization and index reads stay in bounds), only TR_W_* warnings,
 * float tensors that load, and — for quantization_index.json inputs — a TR_W_BITS_MISMATCH warning exactly for the
 * linears whose layers[] entry has an integer "bits" different from the header byte (FORMAT.md §3.3).
 */
#include "fuzz.h"
#include "trellis/alloc.h"
#include "trellis/checkpoint.h"
#include "trellis/pack.h"

#include <jansson.h>

#define INDEX_PREFIX "#index\n"

static char ckdir[600], qpath[700], ipath[700];
static char *orig_q, *orig_i;
static size_t orig_q_len, orig_i_len;
static int q_dirty, i_dirty;

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    FUZZ_SETUP_CHECK(f != NULL, "cannot open %s", path);
    char *buf = malloc(1 << 16);
    FUZZ_SETUP_CHECK(buf != NULL, "out of memory");
    *len = fread(buf, 1, 1 << 16, f);
    FUZZ_SETUP_CHECK(*len < (1 << 16) && !ferror(f), "cannot read %s", path);
    fclose(f);
    return buf;
}

static void put_linear(tr_v3_writer *w, const char *name, uint32_t O, uint32_t I, unsigned b, uint32_t gs)
{
    uint32_t G = (I + gs - 1) / gs;
    size_t plen = 1 + (size_t)tr_packed_body_bytes(O, I, b);
    uint8_t *q = malloc((size_t)O * I), *p = malloc(plen);
    float *s = malloc((size_t)G * O * sizeof *s), *su = malloc(I * sizeof *su), *sv = malloc(O * sizeof *sv);
    FUZZ_SETUP_CHECK(q && p && s && su && sv, "out of memory");
    for (size_t k = 0; k < (size_t)O * I; k++)
        q[k] = (uint8_t)((k * 2654435761u >> 7) & ((1u << b) - 1));
    for (size_t k = 0; k < (size_t)G * O; k++)
        s[k] = 0.015625f * (float)(1 + k % 5);
    for (uint32_t k = 0; k < I; k++)
        su[k] = k % 3 ? 1.0f : -1.0f;
    for (uint32_t k = 0; k < O; k++)
        sv[k] = k % 2 ? -1.0f : 1.0f;
    tr_pack_indices(q, O, I, b, p);
    tr_qweight qw = {O, I, b, gs, G, I % 128 ? TR_ROT_NONE : TR_ROT_HADAMARD128, p, plen, s, su, sv};
    tr_error err;
    FUZZ_SETUP_CHECK(tr_v3_writer_put(w, name, &qw, &err) == TR_OK, "put %s: %s", name, err.text);
    free(q);
    free(p);
    free(s);
    free(su);
    free(sv);
}

static void setup(void)
{
    fuzz_path(ckdir, sizeof ckdir, fuzz_tmpdir("quant_index"), "ckpt");
    tr_v3_options opt = {0, 64, TR_ROT_HADAMARD128};
    tr_v3_writer *w = NULL;
    tr_error err;
    FUZZ_SETUP_CHECK(tr_v3_writer_new(ckdir, &opt, &w, &err) == TR_OK, "v3 writer: %s", err.text);
    FUZZ_SETUP_CHECK(tr_v3_writer_declare(w, "model.layers.0.mlp.up_proj.weight", 32, 128, 3, 2, TR_ROT_HADAMARD128,
                                          &err) == TR_OK, "declare: %s", err.text);
    FUZZ_SETUP_CHECK(tr_v3_writer_declare(w, "model.layers.1.self_attn.q_proj.weight", 16, 48, 4, 1, TR_ROT_NONE,
                                          &err) == TR_OK, "declare: %s", err.text);
    const char *next;
    while ((next = tr_v3_writer_next(w)) != NULL) {
        if (!strcmp(next, "model.layers.0.mlp.up_proj.weight"))
            put_linear(w, next, 32, 128, 3, 64);
        else
            put_linear(w, next, 16, 48, 4, 64);
    }
    float norm[16];
    for (int k = 0; k < 16; k++)
        norm[k] = 1.0f + (float)k / 16.0f;
    uint64_t shape[1] = {16};
    FUZZ_SETUP_CHECK(tr_v3_writer_add_float(w, "model.norm.weight", TR_DT_F32, 1, shape, norm, &err) == TR_OK,
                     "add_float: %s", err.text);
    FUZZ_SETUP_CHECK(tr_v3_writer_finish(w, &err) == TR_OK, "finish: %s", err.text);
    tr_v3_writer_free(w);
    char cpath[700];
    fuzz_path(cpath, sizeof cpath, ckdir, "config.json");
    static const char cfg[] = "{\"model_type\": \"glm4_moe_lite\", \"num_hidden_layers\": 2}\n";
    fuzz_write_file(cpath, cfg, sizeof cfg - 1);
    fuzz_path(qpath, sizeof qpath, ckdir, "quantization_index.json");
    fuzz_path(ipath, sizeof ipath, ckdir, "model.safetensors.index.json");
    orig_q = slurp(qpath, &orig_q_len);
    orig_i = slurp(ipath, &orig_i_len);
    /* the untouched folder must open cleanly, else the target tests nothing */
    tr_ckpt *c = NULL;
    FUZZ_SETUP_CHECK(tr_ckpt_open(ckdir, NULL, &c, &err) == TR_OK, "the base checkpoint does not open: %s", err.text);
    FUZZ_SETUP_CHECK(tr_ckpt_qlinear_count(c) == 2 && tr_ckpt_warnings(c)->count == 0, "base checkpoint");
    tr_ckpt_close(c);
}

/* The integer "bits" of the layers[] entry naming `name` (".weight" appended as the reader does), or 0 when the
 * entry or its integer bits is absent.  *out holds the value. */
static int entry_bits(const json_t *root, const char *name, json_int_t *out)
{
    json_t *layers = json_object_get(root, "layers");
    for (size_t i = 0; i < json_array_size(layers); i++) {
        json_t *e = json_array_get(layers, i);
        const char *n = json_string_value(json_object_get(e, "name"));
        if (!n)
            continue;
        size_t len = strlen(n), nl = strlen(name);
        int match = (len >= 7 && !strcmp(n + len - 7, ".weight")) ? !strcmp(n, name)
                                                                    : (len + 7 == nl && !strncmp(n, name, len) &&
                                                                       !strcmp(name + len, ".weight"));
        if (!match)
            continue;
        json_t *b = json_object_get(e, "bits");
        if (!json_is_integer(b))
            return 0;
        *out = json_integer_value(b);
        return 1;
    }
    return 0;
}

static int has_warning(const tr_warnings *ws, int code, const char *needle)
{
    for (size_t i = 0; i < ws->count; i++)
        if (ws->items[i].code == code && strstr(ws->items[i].text, needle))
            return 1;
    return 0;
}

static void check_open(const tr_ckpt *c, const json_t *qdoc)
{
    const tr_warnings *ws = tr_ckpt_warnings(c);
    for (size_t i = 0; i < ws->count; i++)
        FUZZ_ASSERT(tr_status_is_warning(ws->items[i].code) && ws->items[i].text, "warning %zu: code %d", i,
                    ws->items[i].code);
    FUZZ_ASSERT(tr_ckpt_layout(c) == TR_LAYOUT_TRELLIS_V3, "layout %d", (int)tr_ckpt_layout(c));
    for (size_t i = 0; i < tr_ckpt_qlinear_count(c); i++) {
        const tr_qlinear *q = tr_ckpt_qlinear_at(c, i);
        tr_error err;
        FUZZ_ASSERT(tr_qweight_check(&q->w, "fuzz", q->key_base, &err) == TR_OK, "%s: %s", q->name, err.text);
        FUZZ_ASSERT(tr_ckpt_qlinear_find(c, q->name) == q, "find %s", q->name);
        FUZZ_ASSERT(q->w.O <= 64 && q->w.I <= 256, "%s: [%u,%u] is not a linear of the base folder", q->name, q->w.O,
                    q->w.I);
        uint16_t *w16 = tr_malloc((size_t)q->w.O * q->w.I * sizeof *w16);
        FUZZ_SETUP_CHECK(w16 != NULL, "out of memory");
        tr_dequant_layer(&q->w, w16);
        tr_dealloc(w16);
        unsigned last = tr_qweight_index(&q->w, q->w.O - 1, q->w.I - 1);
        FUZZ_ASSERT(last < (1u << q->w.bits), "index %u at %u bits", last, q->w.bits);
        if (qdoc) {
            json_int_t b = -1;
            int listed = entry_bits(qdoc, q->name, &b);
            int want = listed && b != (json_int_t)q->w.bits;
            int got = has_warning(ws, TR_W_BITS_MISMATCH, q->key_base);
            FUZZ_ASSERT(want == got, "%s: metadata bits %lld (listed %d), header %u, BITS_MISMATCH warning %d",
                        q->name, (long long)b, listed, q->w.bits, got);
        }
    }
    for (size_t i = 0; i < tr_ckpt_tensor_count(c); i++) {
        tr_tensor_ref ref;
        FUZZ_ASSERT(tr_ckpt_tensor_at(c, i, &ref) == TR_OK, "tensor %zu", i);
        float *v = NULL;
        uint64_t n = 0;
        tr_error err;
        FUZZ_ASSERT(tr_ckpt_load_f32(c, ref.name, &v, &n, &err) == TR_OK, "load %s: %s", ref.name, err.text);
        FUZZ_ASSERT(n == ref.t->numel, "%s: %llu values", ref.name, (unsigned long long)n);
        tr_dealloc(v);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT)
        return 0;
    if (!orig_q)
        setup();
    size_t plen = strlen(INDEX_PREFIX);
    int index_mode = size >= plen && !memcmp(data, INDEX_PREFIX, plen);
    if (index_mode) {
        fuzz_write_file(ipath, data + plen, size - plen);
        i_dirty = 1;
        if (q_dirty)
            fuzz_write_file(qpath, orig_q, orig_q_len);
        q_dirty = 0;
    } else {
        fuzz_write_file(qpath, data, size);
        q_dirty = 1;
        if (i_dirty)
            fuzz_write_file(ipath, orig_i, orig_i_len);
        i_dirty = 0;
    }

    tr_ckpt *c = NULL;
    tr_error err;
    tr_error_clear(&err);
    int rc = tr_ckpt_open(ckdir, NULL, &c, &err);
    if (rc != TR_OK) {
        FUZZ_ASSERT(c == NULL, "handle on failure");
        FUZZ_ASSERT(err.code == rc && !tr_status_is_warning(rc), "err.code %d, rc %d", err.code, rc);
        FUZZ_ASSERT(strstr(err.text, tr_status_name(rc)) != NULL, "message lacks its code: %s", err.text);
        return 0;
    }
    json_t *qdoc = NULL;
    if (!index_mode) {
        json_error_t jerr;
        qdoc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
        FUZZ_ASSERT(qdoc != NULL, "the reader accepted quantization_index.json that jansson rejects: %s", jerr.text);
    }
    check_open(c, qdoc);
    json_decref(qdoc);
    tr_ckpt_close(c);
    return 0;
}
