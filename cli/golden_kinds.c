/*
 * golden_kinds.c — how each golden fixture kind is recomputed from its params with the reference.
 *
 * File names follow the fixture id: a one-file fixture "grid/b3" is "grid/b3.f32"; a multi-file fixture "packing/a"
 * is a folder "packing/a/" with fixed member names.  Where FORMAT.md publishes a hash or spot values, params carry
 * them and the recompute checks them too, so a fixture can never drift away from the spec.
 */
#include "golden_kinds.h"
#include "conform.h"
#include "trellis/registry.h"
#include "trellis/alloc.h"
#include "trellis/checkpoint.h"
#include "trellis/codebook.h"
#include "trellis/fileio.h"
#include "trellis/fp16.h"
#include "trellis/hadamard.h"
#include "trellis/hash.h"
#include "trellis/jsonio.h"
#include "trellis/pack.h"
#include "trellis/rng.h"

#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int golden_is_ref(json_t *fixture)
{
    const char *by = json_string_value(json_object_get(fixture, "generated_by"));
    return by && strcmp(by, "ref") == 0;
}

static int failf(char *why, size_t n, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int failf(char *why, size_t n, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    return code;
}

/* A JSON string's value, "" when absent or not a string. */
static const char *jstr(const json_t *v)
{
    const char *s = json_string_value(v);
    return s ? s : "";
}

static const char *id_of(const golden_ctx *g) { return json_string_value(json_object_get(g->fixture, "id")); }

static long param_int(const golden_ctx *g, const char *key, long dflt)
{
    json_t *v = json_object_get(g->params, key);
    return json_is_integer(v) ? (long)json_integer_value(v) : dflt;
}

static const char *param_str(const golden_ctx *g, const char *key)
{
    return json_string_value(json_object_get(g->params, key));
}

/* rel = <id><suffix> */
static int put_id(products *out, const golden_ctx *g, const char *suffix, const char *role, const void *d, size_t n)
{
    char rel[512];
    snprintf(rel, sizeof rel, "%s%s", id_of(g), suffix);
    return products_put(out, rel, role, d, n);
}

/* params.spec_sha256 (or another key) against the SHA-256 of bytes, when the spec publishes one. */
static int check_spec_hash(const golden_ctx *g, const char *key, const void *d, size_t n, char *why, size_t wl)
{
    const char *want = param_str(g, key);
    if (!want)
        return TR_OK;
    char hex[65];
    tr_sha256_hex(d, n, hex);
    if (strcmp(hex, want) != 0)
        return failf(why, wl, TR_E_INPUT, "%s: SHA-256 %s differs from the spec's %s", key, hex, want);
    return TR_OK;
}

/* ---- lut / grid ---------------------------------------------------------------------------------------------- */

int golden_lut(const golden_ctx *g, products *out, char *why, size_t wl)
{
    tr_exl3_cb cb;
    if (!param_str(g, "codebook") || tr_exl3_cb_parse(param_str(g, "codebook"), &cb))
        return failf(why, wl, TR_E_INPUT, "params.codebook must be 3inst, mcg or mul1");
    uint16_t *lut = tr_malloc(65536 * sizeof *lut);
    if (!lut)
        return failf(why, wl, TR_E_NOMEM, "out of memory");
    tr_exl3_lut(cb, lut);
    int rc = check_spec_hash(g, "spec_sha256", lut, 65536 * 2, why, wl);
    const char *key;
    json_t *val;
    json_object_foreach(json_object_get(g->params, "spots"), key, val) {
        unsigned long s = strtoul(key, NULL, 0), want = strtoul(jstr(val), NULL, 16);
        if (rc == TR_OK && (s > 65535 || lut[s] != want))
            rc = failf(why, wl, TR_E_INPUT, "state %s decodes to %04X, the spec says %04lX", key, lut[s < 65536 ? s : 0],
                       want);
    }
    if (rc == TR_OK && put_id(out, g, ".f16", "expected", lut, 65536 * 2) != TR_OK)
        rc = failf(why, wl, TR_E_NOMEM, "out of memory");
    tr_dealloc(lut);
    return rc;
}

int golden_grid(const golden_ctx *g, products *out, char *why, size_t wl)
{
    long b = param_int(g, "bits", 0);
    if (b < 2 || b > 8)
        return failf(why, wl, TR_E_INPUT, "params.bits must be 2..8");
    size_t n = (size_t)1 << b;
    int rc = check_spec_hash(g, "spec_sha256", tr_grid((unsigned)b), n * 4, why, wl);
    uint16_t f16[256];
    for (size_t j = 0; j < n; j++)
        f16[j] = tr_grid_f16((unsigned)b, (unsigned)j);
    if (rc == TR_OK && (put_id(out, g, ".f32", "expected", tr_grid((unsigned)b), n * 4) != TR_OK ||
                        put_id(out, g, ".f16", "expected", f16, n * 2) != TR_OK))
        rc = failf(why, wl, TR_E_NOMEM, "out of memory");
    return rc;
}

/* ---- conversions ------------------------------------------------------------------------------------------------ */

int golden_conversion(const golden_ctx *g, products *out, char *why, size_t wl)
{
    const char *table = param_str(g, "table");
    if (!table)
        return failf(why, wl, TR_E_INPUT, "params.table missing");
    int rc = TR_OK;
    if (!strcmp(table, "f16_to_f32") || !strcmp(table, "bf16_to_f32")) {
        float *t = tr_malloc(65536 * sizeof *t);
        if (!t)
            return failf(why, wl, TR_E_NOMEM, "out of memory");
        for (uint32_t h = 0; h < 65536; h++)
            t[h] = table[0] == 'f' ? tr_f16_to_f32((uint16_t)h) : tr_bf16_to_f32((uint16_t)h);
        if (put_id(out, g, ".f32", "expected", t, 65536 * 4) != TR_OK)
            rc = failf(why, wl, TR_E_NOMEM, "out of memory");
        tr_dealloc(t);
        return rc;
    }
    if (strcmp(table, "f32_samples") != 0)
        return failf(why, wl, TR_E_INPUT, "unknown params.table \"%s\"", table);
    /* the spec's spot inputs first (checked against their published outputs), then seeded random patterns */
    json_t *spots = json_object_get(g->params, "spots");
    size_t nspots = json_array_size(spots), count = (size_t)param_int(g, "count", 0);
    uint32_t *in = tr_calloc(nspots + count + 1, 4);
    uint16_t *h = tr_calloc(nspots + count + 1, 2), *b = tr_calloc(nspots + count + 1, 2);
    if (!in || !h || !b)
        rc = failf(why, wl, TR_E_NOMEM, "out of memory");
    tr_rng r;
    tr_rng_seed(&r, (uint64_t)param_int(g, "seed", 1));
    for (size_t i = 0; rc == TR_OK && i < nspots + count; i++) {
        if (i < nspots) {
            json_t *s = json_array_get(spots, i);
            in[i] = (uint32_t)strtoul(jstr(json_array_get(s, 0)), NULL, 16);
        } else
            in[i] = (uint32_t)(tr_rng_next(&r) >> 32);
        h[i] = tr_f32_to_f16(tr_bits_f32(in[i]));
        b[i] = tr_f32_to_bf16(tr_bits_f32(in[i]));
        if (i < nspots) {
            json_t *s = json_array_get(spots, i);
            unsigned long wh = strtoul(jstr(json_array_get(s, 1)), NULL, 16);
            unsigned long wb = strtoul(jstr(json_array_get(s, 2)), NULL, 16);
            if (h[i] != wh || b[i] != wb)
                rc = failf(why, wl, TR_E_INPUT, "f32 %08X -> fp16 %04X bf16 %04X, the spec says %04lX %04lX", in[i],
                           h[i], b[i], wh, wb);
        }
    }
    size_t n = nspots + count;
    if (rc == TR_OK && (put_id(out, g, "/input.f32", "input", in, n * 4) != TR_OK ||
                        put_id(out, g, "/f16.u16", "expected", h, n * 2) != TR_OK ||
                        put_id(out, g, "/bf16.u16", "expected", b, n * 2) != TR_OK))
        rc = failf(why, wl, TR_E_NOMEM, "out of memory");
    tr_dealloc(in);
    tr_dealloc(h);
    tr_dealloc(b);
    return rc;
}

/* ---- packing (FORMAT.md §4 worked examples and seeded round trips) -------------------------------------------- */

typedef struct pack_case {
    uint32_t O, I, gs, G;
    unsigned bits;
    uint8_t *q, *packed;
    float *scales, *su, *sv;
} pack_case;

static void pack_case_free(pack_case *c)
{
    tr_dealloc(c->q);
    tr_dealloc(c->packed);
    tr_dealloc(c->scales);
    tr_dealloc(c->su);
    tr_dealloc(c->sv);
}

/* Inputs from params: pattern "example_a", "example_b" (FORMAT.md §4) or "random" (seeded). */
static int packing_inputs(const golden_ctx *g, pack_case *c, char *why, size_t wl)
{
    const char *pattern = param_str(g, "pattern");
    c->O = (uint32_t)param_int(g, "O", 0);
    c->I = (uint32_t)param_int(g, "I", 0);
    c->bits = (unsigned)param_int(g, "bits", 0);
    c->gs = (uint32_t)param_int(g, "group_size", 128);
    if (!pattern || c->O < 1 || c->I < 1 || c->O > 4096 || c->I > 4096 || c->bits < 2 || c->bits > 8 || c->gs < 1)
        return failf(why, wl, TR_E_INPUT, "params need pattern, O, I (1..4096), bits (2..8), group_size >= 1");
    c->G = (c->I + c->gs - 1) / c->gs;
    size_t n = (size_t)c->O * c->I;
    c->q = tr_malloc(n);
    c->packed = tr_malloc(1 + (size_t)tr_packed_body_bytes(c->O, c->I, c->bits));
    c->scales = tr_malloc((size_t)c->G * c->O * 4);
    c->su = tr_malloc((size_t)c->I * 4);
    c->sv = tr_malloc((size_t)c->O * 4);
    if (!c->q || !c->packed || !c->scales || !c->su || !c->sv)
        return failf(why, wl, TR_E_NOMEM, "out of memory");
    tr_rng r;
    tr_rng_seed(&r, (uint64_t)param_int(g, "seed", 1));
    for (uint32_t o = 0; o < c->O; o++)
        for (uint32_t i = 0; i < c->I; i++) {
            unsigned v;
            if (!strcmp(pattern, "example_a"))
                v = (o * 16 + i) % 8;
            else if (!strcmp(pattern, "example_b"))
                v = (3 * o + 5 * i + 1) % 8;
            else
                v = (unsigned)tr_rng_int(&r, 0, (1 << c->bits) - 1);
            c->q[(size_t)o * c->I + i] = (uint8_t)v;
        }
    for (uint32_t k = 0; k < c->G; k++)
        for (uint32_t o = 0; o < c->O; o++)
            c->scales[(size_t)k * c->O + o] = !strcmp(pattern, "random")
                ? (float)ldexp(1.0 + tr_rng_u01(&r), (int)tr_rng_int(&r, -10, -4))
                : (float)(o + 1) / 64.0f;
    for (uint32_t i = 0; i < c->I; i++)
        c->su[i] = !strcmp(pattern, "random") ? (tr_rng_next(&r) >> 63 ? -1.0f : 1.0f) : (i % 3 == 0 ? -1.0f : 1.0f);
    for (uint32_t o = 0; o < c->O; o++)
        c->sv[o] = !strcmp(pattern, "random") ? (tr_rng_next(&r) >> 63 ? -1.0f : 1.0f) : (o % 5 == 0 ? -1.0f : 1.0f);
    return TR_OK;
}

int golden_packing(const golden_ctx *g, products *out, char *why, size_t wl)
{
    pack_case c = {0};
    int rc = packing_inputs(g, &c, why, wl);
    if (rc != TR_OK) {
        pack_case_free(&c);
        return rc;
    }
    size_t n = (size_t)c.O * c.I, plen = 1 + (size_t)tr_packed_body_bytes(c.O, c.I, c.bits);
    tr_pack_indices(c.q, c.O, c.I, c.bits, c.packed);
    /* the packed bytes must round-trip through both codecs and the single-index formula */
    uint8_t *back = tr_malloc(n ? n : 1);
    uint16_t *w16 = tr_malloc(n * 2), *w16hat = tr_malloc(n * 2);
    if (!back || !w16 || !w16hat)
        rc = failf(why, wl, TR_E_NOMEM, "out of memory");
    if (rc == TR_OK) {
        tr_unpack_indices(c.packed, c.O, c.I, back);
        for (size_t k = 0; k < n && rc == TR_OK; k++)
            if (back[k] != c.q[k] ||
                tr_index_at(c.packed + 1, c.bits, tr_tiles_of(c.I), (uint32_t)(k / c.I), (uint32_t)(k % c.I)) != c.q[k])
                rc = failf(why, wl, TR_E_INPUT, "index %zu does not round-trip", k);
    }
    tr_qweight w = {c.O, c.I, c.bits, c.gs, c.G, TR_ROT_NONE, c.packed, plen, c.scales, c.su, c.sv};
    if (rc == TR_OK) {
        tr_dequant_w16(&w, w16);
        tr_dequant_w16hat(&w, w16hat);
        rc = check_spec_hash(g, "spec_indices_sha256", c.packed, plen, why, wl);
    }
    if (rc == TR_OK)
        rc = check_spec_hash(g, "spec_w16_sha256", w16, n * 2, why, wl);
    if (rc == TR_OK)
        rc = check_spec_hash(g, "spec_w16hat_sha256", w16hat, n * 2, why, wl);
    if (rc == TR_OK &&
        (put_id(out, g, "/q.u8", "input", c.q, n) || put_id(out, g, "/scales.f32", "input", c.scales, c.G * c.O * 4) ||
         put_id(out, g, "/su.f32", "input", c.su, c.I * 4) || put_id(out, g, "/sv.f32", "input", c.sv, c.O * 4) ||
         put_id(out, g, "/indices.u8", "expected", c.packed, plen) ||
         put_id(out, g, "/w16.f16", "expected", w16, n * 2) || put_id(out, g, "/w16hat.f16", "expected", w16hat, n * 2)))
        rc = failf(why, wl, TR_E_NOMEM, "out of memory");
    tr_dealloc(back);
    tr_dealloc(w16);
    tr_dealloc(w16hat);
    pack_case_free(&c);
    return rc;
}

/* ---- Hadamard (FORMAT.md §9 item 3) ---------------------------------------------------------------------------- */

int golden_hadamard(const golden_ctx *g, products *out, char *why, size_t wl)
{
    float x[128], su[128], xp[128];
    for (int i = 0; i < 128; i++) {
        x[i] = (float)((73 * i + 11) % 128 - 64) / 7.0f;
        su[i] = i % 3 == 0 ? -1.0f : 1.0f;
        xp[i] = x[i] * su[i];
    }
    tr_hadamard128_blocks(xp, 128);
    int rc = check_spec_hash(g, "spec_sha256", xp, sizeof xp, why, wl);
    if (rc == TR_OK && (put_id(out, g, "/x.f32", "input", x, sizeof x) ||
                        put_id(out, g, "/su.f32", "input", su, sizeof su) ||
                        put_id(out, g, "/xprime.f32", "expected", xp, sizeof xp)))
        rc = failf(why, wl, TR_E_NOMEM, "out of memory");
    return rc;
}

/* ---- EXL3 bit stream (FORMAT.md §7.7) --------------------------------------------------------------------------- */

int golden_bitstream(const golden_ctx *g, products *out, char *why, size_t wl)
{
    long b = param_int(g, "bits", 3);
    if (b < 1 || b > 8)
        return failf(why, wl, TR_E_INPUT, "params.bits must be 1..8");
    uint8_t codes[256], tile[256];
    for (unsigned e = 0; e < 256; e++)
        codes[e] = (uint8_t)(e % (1u << b));
    tr_exl3_pack_codes(codes, (unsigned)b, tile);
    uint16_t states[256], dec[3][16][16];
    tr_exl3_tile_states(tile, (unsigned)b, states);
    for (int cb = 0; cb < 3; cb++)
        tr_exl3_decode_tile(tile, (unsigned)b, (tr_exl3_cb)cb, dec[cb]);
    int rc = check_spec_hash(g, "spec_tile_sha256", tile, 32 * (size_t)b, why, wl);
    const char *key;
    json_t *val;
    json_object_foreach(json_object_get(g->params, "spot_states"), key, val) {
        unsigned long e = strtoul(key, NULL, 10), want = strtoul(jstr(val), NULL, 16);
        if (rc == TR_OK && (e > 255 || states[e] != want))
            rc = failf(why, wl, TR_E_INPUT, "state of e=%s is %04X, the spec says %04lX", key, states[e & 255], want);
    }
    /* decoded values of e = 0.. at their permuted (r, c) positions */
    json_object_foreach(json_object_get(g->params, "spot_decoded"), key, val) {
        tr_exl3_cb cb;
        if (rc == TR_OK && tr_exl3_cb_parse(key, &cb) != 0)
            rc = failf(why, wl, TR_E_INPUT, "spot_decoded: unknown codebook %s", key);
        for (size_t e = 0; rc == TR_OK && e < json_array_size(val) && e < 256; e++) {
            unsigned r, c;
            tr_exl3_perm((unsigned)e, &r, &c);
            unsigned long want = strtoul(jstr(json_array_get(val, e)), NULL, 16);
            if (dec[cb][r][c] != want)
                rc = failf(why, wl, TR_E_INPUT, "%s e=%zu at (%u,%u) decodes to %04X, the spec says %04lX", key, e, r,
                           c, dec[cb][r][c], want);
        }
    }
    if (rc == TR_OK && (put_id(out, g, "/tile.u8", "input", tile, 32 * (size_t)b) ||
                        put_id(out, g, "/states.u16", "expected", states, sizeof states) ||
                        put_id(out, g, "/3inst.f16", "expected", dec[0], sizeof dec[0]) ||
                        put_id(out, g, "/mcg.f16", "expected", dec[1], sizeof dec[1]) ||
                        put_id(out, g, "/mul1.f16", "expected", dec[2], sizeof dec[2])))
        rc = failf(why, wl, TR_E_NOMEM, "out of memory");
    return rc;
}

/* ---- checkpoints ------------------------------------------------------------------------------------------------- */

/* W16 (Ŵ16 for hadamard128 layers) of every quantized tensor of dir, as "<rel_dir>.expected/<name>.w16". */
static int expected_w16(const char *dir, const char *rel_dir, products *out, char *why, size_t wl)
{
    tr_ckpt *c = NULL;
    tr_error err;
    if (tr_ckpt_open(dir, NULL, &c, &err) != TR_OK)
        return failf(why, wl, err.code, "%s", err.text);
    int rc = TR_OK;
    for (size_t i = 0; rc == TR_OK && i < tr_ckpt_qlinear_count(c); i++) {
        const tr_qlinear *q = tr_ckpt_qlinear_at(c, i);
        size_t n = (size_t)q->w.O * q->w.I;
        uint16_t *w = tr_malloc(n * 2);
        char rel[1024];
        snprintf(rel, sizeof rel, "%s.expected/%s.w16", rel_dir, q->name);
        if (!w)
            rc = failf(why, wl, TR_E_NOMEM, "out of memory");
        else {
            tr_dequant_layer(&q->w, w);
            if (products_put(out, rel, "expected", w, n * 2) != TR_OK)
                rc = failf(why, wl, TR_E_NOMEM, "out of memory");
        }
        tr_dealloc(w);
    }
    tr_ckpt_close(c);
    return rc;
}

/* Seeded linear for a ref checkpoint: indices uniform, scales 2^e(1+u) with e in [-10,-4], signs ±1. */
static int make_linear(uint64_t seed, const char *name, uint32_t O, uint32_t I, unsigned bits, uint32_t gs,
                       tr_rotation rot, tr_qweight *w, void **bufs)
{
    tr_rng r;
    tr_rng_seed(&r, tr_splitmix64(seed ^ tr_fnv1a64_str(name)));
    uint32_t G = (I + gs - 1) / gs;
    size_t n = (size_t)O * I, plen = 1 + (size_t)tr_packed_body_bytes(O, I, bits);
    uint8_t *q = tr_malloc(n), *packed = tr_malloc(plen);
    float *s = tr_malloc((size_t)G * O * 4), *su = tr_malloc((size_t)I * 4), *sv = tr_malloc((size_t)O * 4);
    bufs[0] = q, bufs[1] = packed, bufs[2] = s, bufs[3] = su, bufs[4] = sv;
    if (!q || !packed || !s || !su || !sv)
        return TR_E_NOMEM;
    for (size_t k = 0; k < n; k++)
        q[k] = (uint8_t)tr_rng_int(&r, 0, (1 << bits) - 1);
    for (size_t k = 0; k < (size_t)G * O; k++)
        s[k] = (float)ldexp(1.0 + tr_rng_u01(&r), (int)tr_rng_int(&r, -10, -4));
    for (uint32_t k = 0; k < I; k++)
        su[k] = tr_rng_next(&r) >> 63 ? -1.0f : 1.0f;
    for (uint32_t k = 0; k < O; k++)
        sv[k] = rot == TR_ROT_HADAMARD128 ? 1.0f : (tr_rng_next(&r) >> 63 ? -1.0f : 1.0f);
    tr_pack_indices(q, O, I, bits, packed);
    *w = (tr_qweight){O, I, bits, gs, G, rot, packed, plen, s, su, sv};
    return TR_OK;
}

static int write_ref_checkpoint(const golden_ctx *g, const char *tmp, char *why, size_t wl)
{
    uint64_t seed = (uint64_t)param_int(g, "seed", 1);
    uint32_t gs = (uint32_t)param_int(g, "group_size", 128);
    tr_v3_options opt = {(uint64_t)param_int(g, "shard_limit", 0), gs, TR_ROT_NONE};
    if (param_str(g, "rotation") && tr_rotation_parse(param_str(g, "rotation"), &opt.rotation))
        return failf(why, wl, TR_E_INPUT, "params.rotation must be none or hadamard128");
    tr_error err;
    tr_v3_writer *w = NULL;
    int rc = tr_v3_writer_new(tmp, &opt, &w, &err);
    json_t *linears = json_object_get(g->params, "linears");
    for (size_t i = 0; rc == TR_OK && i < json_array_size(linears); i++) {
        json_t *l = json_array_get(linears, i);
        json_t *shape = json_object_get(l, "shape");
        const char *name = json_string_value(json_object_get(l, "name"));
        uint32_t O = (uint32_t)json_integer_value(json_array_get(shape, 0));
        uint32_t I = (uint32_t)json_integer_value(json_array_get(shape, 1));
        unsigned bits = (unsigned)json_integer_value(json_object_get(l, "bits"));
        tr_rotation rot = opt.rotation == TR_ROT_HADAMARD128 && I % 128 == 0 ? TR_ROT_HADAMARD128 : TR_ROT_NONE;
        if (!name)
            rc = tr_fail(&err, TR_E_INPUT, "params.linears", "entry %zu has no name", i);
        else
            rc = tr_v3_writer_declare(w, name, O, I, bits, gs ? (I + gs - 1) / gs : 0, rot, &err);
    }
    const char *next;
    while (rc == TR_OK && (next = tr_v3_writer_next(w)) != NULL) {
        json_t *l = NULL;
        for (size_t i = 0; i < json_array_size(linears); i++)
            if (!strcmp(json_string_value(json_object_get(json_array_get(linears, i), "name")), next))
                l = json_array_get(linears, i);
        json_t *shape = json_object_get(l, "shape");
        uint32_t O = (uint32_t)json_integer_value(json_array_get(shape, 0));
        uint32_t I = (uint32_t)json_integer_value(json_array_get(shape, 1));
        unsigned bits = (unsigned)json_integer_value(json_object_get(l, "bits"));
        tr_rotation rot = opt.rotation == TR_ROT_HADAMARD128 && I % 128 == 0 ? TR_ROT_HADAMARD128 : TR_ROT_NONE;
        tr_qweight q;
        void *bufs[5] = {0};
        rc = make_linear(seed, next, O, I, bits, gs, rot, &q, bufs);
        if (rc == TR_OK)
            rc = tr_v3_writer_put(w, next, &q, &err);
        else
            tr_fail(&err, rc, next, "out of memory");
        for (int k = 0; k < 5; k++)
            tr_dealloc(bufs[k]);
    }
    json_t *floats = json_object_get(g->params, "floats");
    for (size_t i = 0; rc == TR_OK && i < json_array_size(floats); i++) {
        json_t *f = json_array_get(floats, i);
        const char *name = json_string_value(json_object_get(f, "name"));
        json_t *shape = json_object_get(f, "shape");
        uint64_t dims[8] = {0}, n = 1;
        unsigned nd = (unsigned)json_array_size(shape);
        for (unsigned d = 0; d < nd && d < 8; d++)
            n *= dims[d] = (uint64_t)json_integer_value(json_array_get(shape, d));
        float *v = tr_malloc(n * 4);
        if (!v || !name) {
            tr_dealloc(v);
            rc = tr_fail(&err, TR_E_INPUT, "params.floats", "entry %zu invalid", i);
            break;
        }
        tr_rng r;
        tr_rng_seed(&r, tr_splitmix64(seed ^ tr_fnv1a64_str(name)));
        for (uint64_t k = 0; k < n; k++)
            v[k] = (float)tr_rng_normal(&r);
        rc = tr_v3_writer_add_float(w, name, TR_DT_F32, nd, dims, v, &err);
        tr_dealloc(v);
    }
    if (rc == TR_OK)
        rc = tr_v3_writer_finish(w, &err);
    tr_v3_writer_free(w);
    json_t *config = json_object_get(g->params, "config");
    if (rc == TR_OK && config) {
        char *path = tr_path_join(tmp, "config.json");
        rc = path ? tr_json_write_file(path, config, tr_json_mark(), &err) : tr_fail(&err, TR_E_NOMEM, tmp, "out of memory");
        tr_dealloc(path);
    }
    if (rc != TR_OK)
        return failf(why, wl, rc, "%s", err.text);
    return TR_OK;
}

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Every regular file under dir (recursively, names in bytewise order) as "<rel_dir>/<path>". */
static int collect_tree(const char *dir, const char *rel_dir, products *out, char *why, size_t wl)
{
    DIR *d = opendir(dir);
    if (!d)
        return failf(why, wl, TR_E_IO, "cannot list %s", dir);
    char *names[4096];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 4096)
        if (e->d_name[0] != '.')
            names[n++] = tr_strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, cmp_name);
    int rc = TR_OK;
    for (size_t k = 0; k < n; k++) {
        char rel[1024];
        char *p = names[k] ? tr_path_join(dir, names[k]) : NULL;
        if (rc == TR_OK && !p)
            rc = failf(why, wl, TR_E_NOMEM, "out of memory");
        if (rc == TR_OK) {
            snprintf(rel, sizeof rel, "%s/%s", rel_dir, names[k]);
            if (tr_path_is_dir(p))
                rc = collect_tree(p, rel, out, why, wl);
            else {
                char *data = NULL;
                size_t size = 0;
                tr_error err;
                if (tr_file_read_all(p, &data, &size, &err) != TR_OK)
                    rc = failf(why, wl, TR_E_IO, "cannot read back %s", names[k]);
                else if (products_put(out, rel, "model", data, size) != TR_OK)
                    rc = failf(why, wl, TR_E_NOMEM, "out of memory");
                tr_dealloc(data);
            }
        }
        tr_dealloc(p);
        tr_dealloc(names[k]);
    }
    return rc;
}

static void remove_tree(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", dir);
}

int golden_checkpoint(const golden_ctx *g, products *out, char *why, size_t wl)
{
    const char *rel_dir = param_str(g, "dir");
    if (!rel_dir)
        return failf(why, wl, TR_E_INPUT, "params.dir missing");
    if (!g->regenerate) {   /* foreign checkpoint: recompute the expected W16 from the committed files */
        char *dir = tr_path_join(g->dir, rel_dir);
        int rc = dir ? expected_w16(dir, rel_dir, out, why, wl) : failf(why, wl, TR_E_NOMEM, "out of memory");
        tr_dealloc(dir);
        return rc;
    }
    const char *base = getenv("TMPDIR");
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s/trellis-golden-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmp))
        return failf(why, wl, TR_E_IO, "cannot create a temporary directory");
    char ckdir[4200];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", tmp);
    int rc = write_ref_checkpoint(g, ckdir, why, wl);
    if (rc == TR_OK)
        rc = collect_tree(ckdir, rel_dir, out, why, wl);
    if (rc == TR_OK)
        rc = expected_w16(ckdir, rel_dir, out, why, wl);
    remove_tree(tmp);
    return rc;
}

/* ---- op fixtures: trellis.capture/1 cases the reference produced (HARNESS.md §4) ------------------------------ */

/* Write a capture of the listed cases, outputs from the reference, into dir. */
static int write_op_capture(const golden_ctx *g, const char *dir, char *why, size_t wl)
{
    json_t *ids = json_object_get(g->params, "cases"), *entries = json_array();
    uint64_t seed = (uint64_t)param_int(g, "seed", 1);
    int rc = json_array_size(ids) ? TR_OK : failf(why, wl, TR_E_INPUT, "params.cases is empty");
    for (size_t i = 0; rc == TR_OK && i < json_array_size(ids); i++) {
        tr_case c;
        tr_error err;
        tr_bufs in = {0}, shapes = {0}, got = {0};
        uint8_t *guarded[64] = {0};
        if (tr_case_from_id(&c, jstr(json_array_get(ids, i)), seed, &err) != TR_OK ||
            c.op->make(&c, &in, &shapes, &err) != TR_OK) {
            rc = failf(why, wl, TR_E_INPUT, "%s", err.text);
        } else {
            c.index = i;
            got.v = tr_calloc((size_t)shapes.n + 1, sizeof *got.v);
            for (int k = 0; got.v && k < shapes.n && k < 64; k++) {   /* guarded, poisoned outputs as a kernel sees */
                got.v[k] = tr_malloc(sizeof *got.v[k]);
                guarded[k] = conform_guarded_alloc(shapes.v[k]->bytes);
                if (!got.v[k] || !guarded[k])
                    break;
                *got.v[k] = *shapes.v[k];
                got.v[k]->data = guarded[k] + CONFORM_GUARD_BYTES;
                tr_poison_fill(got.v[k]);
                got.n = k + 1;
            }
            if (got.n != shapes.n)
                rc = failf(why, wl, TR_E_NOMEM, "out of memory");
            else if (c.op->run(&c, NULL, &in, &got, &err) != TR_OK && err.code != TR_E_INVALID_EXPERT_ID)
                rc = failf(why, wl, err.code, "%s", err.text);
            json_t *e = rc == TR_OK ? capture_write_case(dir, i, &c, &in, &got, guarded, &err) : NULL;
            if (rc == TR_OK && !e)
                rc = failf(why, wl, err.code, "%s", err.text);
            else if (e)
                json_array_append_new(entries, e);
        }
        for (int k = 0; k < got.n; k++) {
            tr_dealloc(guarded[k]);
            tr_dealloc(got.v[k]);
        }
        tr_dealloc(got.v);
        tr_bufs_free(&in);
        tr_bufs_free(&shapes);
    }
    tr_error err;
    if (rc == TR_OK && capture_write_manifest(dir, entries, &err) != TR_OK)
        rc = failf(why, wl, err.code, "%s", err.text);
    json_decref(entries);
    return rc;
}

/* Judge the committed capture the way `conform --backend capture:DIR` does (compare "bound": TOLERANT variants). */
static int judge_op_capture(const golden_ctx *g, const char *dir, char *why, size_t wl)
{
    json_t *manifest = NULL;
    tr_error err;
    if (capture_read_manifest(dir, &manifest, &err) != TR_OK)
        return failf(why, wl, TR_E_IO, "%s", err.text);
    json_t *cases = json_object_get(manifest, "cases");
    int rc = TR_OK;
    for (size_t i = 0; rc == TR_OK && i < json_array_size(cases); i++) {
        json_t *e = json_array_get(cases, i);
        tr_case c;
        if (tr_case_from_id(&c, jstr(json_object_get(e, "case")), (uint64_t)json_integer_value(json_object_get(e,
                                                                                                                  "seed")),
                            &err) != TR_OK) {
            rc = failf(why, wl, TR_E_INPUT, "%s", err.text);
            break;
        }
        conform_source src = {NULL, e, dir, NULL, NULL};
        conform_opts o = {"golden", 0, 1, NULL, 0};
        json_t *r = conform_exec(&c, &src, &o);
        const char *status = jstr(json_object_get(r, "status"));
        if (strcmp(status, "PASS") != 0)
            rc = failf(why, wl, TR_E_INPUT, "%s: %s (%s)", c.id, status, jstr(json_object_get(r, "detail")));
        json_decref(r);
    }
    json_decref(manifest);
    (void)g;
    return rc;
}

int golden_op(const golden_ctx *g, products *out, char *why, size_t wl)
{
    const char *rel_dir = param_str(g, "dir");
    if (!rel_dir)
        return failf(why, wl, TR_E_INPUT, "params.dir missing");
    if (!strcmp(jstr(json_object_get(g->fixture, "compare")), "bound") && !g->generating) {
        char *dir = tr_path_join(g->dir, rel_dir);
        int rc = dir ? judge_op_capture(g, dir, why, wl) : failf(why, wl, TR_E_NOMEM, "out of memory");
        tr_dealloc(dir);
        if (rc != TR_OK || !g->regenerate)
            return rc;
    }
    const char *base = getenv("TMPDIR");
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s/trellis-golden-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmp))
        return failf(why, wl, TR_E_IO, "cannot create a temporary directory");
    char cdir[4200];
    snprintf(cdir, sizeof cdir, "%s/capture", tmp);
    int rc = write_op_capture(g, cdir, why, wl);
    size_t first = out->n;
    if (rc == TR_OK)
        rc = collect_tree(cdir, rel_dir, out, why, wl);
    for (size_t i = first; rc == TR_OK && i < out->n; i++) {   /* roles: inputs, expected outputs, the manifest */
        const char *base_name = strrchr(out->v[i].rel, '/') ? strrchr(out->v[i].rel, '/') + 1 : out->v[i].rel;
        out->v[i].role = !strncmp(base_name, "in_", 3) ? "input" : !strncmp(base_name, "out_", 4) ? "expected" : "data";
    }
    remove_tree(tmp);
    return rc;
}
