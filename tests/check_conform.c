/*
 * check_conform.c — the conformance runner end to end (HARNESS.md §3, KERNELS.md §2.5).
 *
 * Mutation tests: for every op family, a capture is made from the reference (`conform --backend ref --replay ID
 * --capture-out DIR`), then corrupted the ways KERNELS.md §2.5 lists — one flipped output bit (an exponent bit of the
 * largest element for TOLERANT variants), outputs recomputed with swapped operands, an approximate SiLU, the wrong
 * grid for one projection of a mixed tuple, su and sv swapped, a dropped token, a write into the guard bytes — and
 * `conform --backend capture:DIR --strict` must classify each FAIL with the first mismatch's coordinates on bitwise
 * (ref/cpu-class) and f32-accumulating variants, and at least fail under --strict (FAIL or PRECISION_WARNING) on
 * f16-accumulating variants; the uncorrupted capture passes.  Also: shards merged equal the unsharded run, replay
 * commands reproduce failures, and crashes/hangs are isolated.
 */
#include "tests.h"
#include "cli_run.h"
#include "../cli/conform.h"
#include "../reference/reg_internal.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/fp16.h"
#include "trellis/hash.h"
#include "trellis/jsonio.h"
#include "trellis/numeric.h"
#include "trellis/pack.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ----------------------------------------------------------------------------------------------- */

static void sh(const char *cmd) { ck_assert_msg(system(cmd) == 0, "%s", cmd); }

static char *tmp(const char *name)
{
    static char p[16][4200];
    static int slot;
    char *s = p[slot++ % 16];
    snprintf(s, 4200, "%s/%s", tr_test_tmpdir(), name);
    return s;
}

/* Run `trellis conform` in-process with --json FILE and return the parsed document and the exit status. */
static json_t *conform_json(int *status, const char *backend, const char *replay, const char *capture_out,
                            const char *extra)
{
    char *json = tmp("result.json");
    remove(json);
    cli_result r;
    if (capture_out)
        r = cli_run("conform", "--backend", backend, "--replay", replay, "--capture-out", capture_out, "--json", json,
                    "--no-progress", NULL);
    else if (replay)
        r = cli_run("conform", "--backend", backend, "--replay", replay, "--json", json, "--no-progress", extra, NULL);
    else
        r = cli_run("conform", "--backend", backend, "--json", json, "--no-progress", extra, NULL);
    *status = r.status;
    json_error_t jerr;
    json_t *doc = json_load_file(json, 0, &jerr);
    ck_assert_msg(doc != NULL, "no JSON (%s): %.1500s%.1500s", jerr.text, r.out, r.err);
    cli_result_free(&r);
    return doc;
}

static json_t *first_result(json_t *doc) { return json_array_get(json_object_get(doc, "results"), 0); }

static const char *status_of(json_t *doc) { return json_string_value(json_object_get(first_result(doc), "status")); }

/* A loaded capture of one case, editable. */
typedef struct capture {
    char dir[4200];
    json_t *manifest, *entry;
    tr_case c;
    tr_bufs in, got;
    uint8_t *guarded[64];
} capture;

static void capture_open(capture *k, const char *dir)
{
    memset(k, 0, sizeof *k);
    snprintf(k->dir, sizeof k->dir, "%s", dir);
    tr_error err;
    ck_assert_msg(capture_read_manifest(dir, &k->manifest, &err) == TR_OK, "%s", err.text);
    k->entry = json_array_get(json_object_get(k->manifest, "cases"), 0);
    ck_assert_int_eq(tr_case_from_id(&k->c, json_string_value(json_object_get(k->entry, "case")),
                                     (uint64_t)json_integer_value(json_object_get(k->entry, "seed")), &err),
                     TR_OK);
    ck_assert_msg(capture_load_case(dir, k->entry, &k->in, &k->got, k->guarded, &err) == TR_OK, "%s", err.text);
}

/* Write every output file back (whole guarded block) and update its sha256 in the manifest. */
static void capture_save(capture *k)
{
    json_t *bufs = json_object_get(k->entry, "buffers");
    int out = 0;
    for (size_t i = 0; i < json_array_size(bufs); i++) {
        json_t *b = json_array_get(bufs, i);
        if (strcmp(json_string_value(json_object_get(b, "role")), "output"))
            continue;
        size_t n = k->got.v[out]->bytes + 2 * CONFORM_GUARD_BYTES;
        char *path = tr_path_join(k->dir, json_string_value(json_object_get(b, "file")));
        tr_error err;
        ck_assert_int_eq(tr_file_write_all(path, k->guarded[out], n, &err), TR_OK);
        tr_dealloc(path);
        char hex[65];
        tr_sha256_hex(k->guarded[out], n, hex);
        json_object_set_new(b, "sha256", json_string(hex));
        out++;
    }
    char *mpath = tr_path_join(k->dir, "manifest.json");
    tr_error err;
    ck_assert_int_eq(tr_json_write_file(mpath, k->manifest, tr_json_mark(), &err), TR_OK);
    tr_dealloc(mpath);
}

static void capture_close(capture *k)
{
    for (int i = 0; i < k->got.n; i++) {
        tr_dealloc(k->guarded[i]);
        tr_dealloc(k->got.v[i]);
    }
    tr_dealloc(k->got.v);
    tr_bufs_free(&k->in);
    json_decref(k->manifest);
}

/* Recompute the outputs with the reference from (modified) inputs, into the capture's output buffers. */
static void recompute(capture *k)
{
    tr_bufs fresh = {0};
    for (int i = 0; i < k->got.n; i++) {
        tr_buf *b = tr_bufs_add(&fresh, k->got.v[i]->name, TR_ROLE_OUTPUT, k->got.v[i]->dtype, k->got.v[i]->ndim,
                                k->got.v[i]->shape);
        tr_poison_fill(b);
    }
    tr_error err;
    ck_assert_msg(k->c.op->run(&k->c, NULL, &k->in, &fresh, &err) == TR_OK, "%s", err.text);
    for (int i = 0; i < k->got.n; i++)
        memcpy(k->got.v[i]->data, fresh.v[i]->data, fresh.v[i]->bytes);
    tr_bufs_free(&fresh);
}

static void swap_bytes(uint8_t *a, uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t t = a[i];
        a[i] = b[i];
        b[i] = t;
    }
}

/* ---- mutations ------------------------------------------------------------------------------------------------ */

typedef enum mutation {
    M_FLIP, M_SWAP, M_SILU, M_GRID, M_SUSV, M_DROP, M_GUARD, M_COUNT
} mutation;

static const char *const mutation_names[M_COUNT] = {"flipped bit", "swapped operands", "approximate SiLU",
                                                    "wrong grid", "su/sv swapped", "dropped token", "guard write"};

/* Flip one bit of the first output: the lowest mantissa bit for bitwise classes, an exponent bit of the largest-
 * magnitude element for TOLERANT ones (a low mantissa bit lies inside any tolerance). */
static void mutate_flip(capture *k, int tolerant)
{
    tr_buf *b = k->got.v[0];
    uint64_t n = tr_buf_numel(b), at = 0;
    double best = -1;
    for (uint64_t i = 0; tolerant && i < n; i++) {
        double v = fabs(reg_get(b, i));
        if (isfinite(v) && v > best)
            best = v, at = i;
    }
    size_t es = tr_dtype_size(b->dtype);
    unsigned bit = 0;
    if (tolerant)
        bit = b->dtype == TR_DT_F32 ? 29 : 13;   /* an exponent bit */
    b->data[at * es + bit / 8] ^= (uint8_t)(1u << (bit % 8));
}

/* The approximate SiLU a fast kernel might use: z·clamp(1/2 + z/4 − z³/48, 0, 1) (Taylor series of the sigmoid). */
static float silu_poly(float z)
{
    float s = 0.5f + z * (0.25f - z * z / 48.0f);
    s = s < 0.0f ? 0.0f : s > 1.0f ? 1.0f : s;
    return z * s;
}

/* One expert row with the approximate SiLU, in the canonical order of the case's accumulation mode. */
static void expert_row_approx(const tr_expert *e, const float *x, int f16, float *y)
{
    uint32_t H = e->gate->I, I = e->gate->O;
    uint16_t *w[3];
    const tr_qweight *p[3] = {e->gate, e->up, e->down};
    for (int q = 0; q < 3; q++) {
        w[q] = malloc((size_t)p[q]->O * p[q]->I * 2);
        tr_dequant_layer(p[q], w[q]);
    }
    float *wf = malloc((size_t)H * I * 4), *s = malloc((size_t)I * 4), *g = malloc((size_t)I * 4);
    uint16_t *x16 = malloc((size_t)H * 2), *s16 = malloc((size_t)I * 2);
    for (uint32_t k = 0; k < H; k++)
        x16[k] = tr_f32_to_f16(x[k]);
    for (uint32_t j = 0; j < I; j++) {
        float gv, uv;
        if (f16) {
            gv = tr_f16_to_f32(tr_dot_h16t_bits(x16, w[0] + (size_t)j * H, H));
            uv = tr_f16_to_f32(tr_dot_h16t_bits(x16, w[1] + (size_t)j * H, H));
            s16[j] = tr_f32_to_f16(silu_poly(gv) * uv);
        } else {
            tr_f16_to_f32_n(w[0] + (size_t)j * H, wf, H);
            gv = tr_dot_l16(x, wf, H);
            tr_f16_to_f32_n(w[1] + (size_t)j * H, wf, H);
            uv = tr_dot_l16(x, wf, H);
            s[j] = silu_poly(gv) * uv;
        }
        g[j] = gv;
    }
    for (uint32_t n = 0; n < H; n++) {
        if (f16)
            y[n] = tr_f16_to_f32(tr_dot_h16t_bits(s16, w[2] + (size_t)n * I, I));
        else {
            tr_f16_to_f32_n(w[2] + (size_t)n * I, wf, I);
            y[n] = tr_dot_l16(s, wf, I);
        }
    }
    for (int q = 0; q < 3; q++)
        free(w[q]);
    free(wf);
    free(s);
    free(g);
    free(x16);
    free(s16);
}

static void view_expert(const tr_bufs *in, int e, tr_qweight w[3], tr_expert *ex)
{
    static const char *const proj[3] = {"gate", "up", "down"};
    for (int q = 0; q < 3; q++) {
        char name[32];
        snprintf(name, sizeof name, "e%d.%s", e, proj[q]);
        ck_assert_int_eq(reg_qweight_view(in, name, 128, TR_ROT_NONE, &w[q]), TR_OK);
    }
    ex->gate = &w[0];
    ex->up = &w[1];
    ex->down = &w[2];
}

static void mutate_silu(capture *k)
{
    const char *op = k->c.op->name;
    int f16 = tr_case_acc_f16(&k->c);
    const tr_buf *x = tr_bufs_get(&k->in, "x");
    uint32_t rows = (uint32_t)x->shape[0], H = (uint32_t)x->shape[1];
    float *xf = malloc((size_t)rows * H * 4), *y = malloc((size_t)H * 4 + 4096);
    for (uint64_t i = 0; i < (uint64_t)rows * H; i++)
        xf[i] = (float)reg_get(x, i);
    tr_buf *o = k->got.v[0];
    if (!strcmp(op, "gemm_trellis_swiglu")) {   /* g, u by the reference gemm, then the approximate activation */
        tr_qweight g, u;
        reg_qweight_view(&k->in, "gate", 128, TR_ROT_NONE, &g);
        reg_qweight_view(&k->in, "up", 128, TR_ROT_NONE, &u);
        size_t n = (size_t)rows * g.O;
        float *gv = malloc(n * 4), *uv = malloc(n * 4);
        uint16_t *g16 = malloc(n * 2), *u16 = malloc(n * 2);
        tr_ref_gemm_trellis(&g, xf, rows, f16 ? TR_ACC_F16 : TR_ACC_F32, f16, f16 ? (void *)g16 : (void *)gv, NULL);
        tr_ref_gemm_trellis(&u, xf, rows, f16 ? TR_ACC_F16 : TR_ACC_F32, f16, f16 ? (void *)u16 : (void *)uv, NULL);
        for (size_t i = 0; i < n; i++) {
            float a = f16 ? tr_f16_to_f32(g16[i]) : gv[i], b = f16 ? tr_f16_to_f32(u16[i]) : uv[i];
            reg_set(o, i, tr_f16_to_f32(tr_f32_to_f16(silu_poly(a) * b)));
        }
        free(gv);
        free(uv);
        free(g16);
        free(u16);
    } else if (!strcmp(op, "expert_ffn")) {
        tr_qweight w[3];
        tr_expert e;
        view_expert(&k->in, 0, w, &e);
        for (uint32_t r = 0; r < rows; r++) {
            expert_row_approx(&e, xf + (size_t)r * H, f16, y);
            for (uint32_t n = 0; n < H; n++)
                reg_set(o, (uint64_t)r * H + n, y[n]);
        }
    } else {   /* moe_swiglu: out_t = SEQ_j RN32(p·y) */
        const tr_buf *ids = tr_bufs_get(&k->in, "ids"), *probs = tr_bufs_get(&k->in, "probs");
        uint32_t K = (uint32_t)ids->shape[1];
        for (uint32_t t = 0; t < rows; t++) {
            float *acc = calloc(H, 4);
            for (uint32_t j = 0; j < K; j++) {
                tr_qweight w[3];
                tr_expert e;
                view_expert(&k->in, ((const int32_t *)(const void *)ids->data)[t * K + j], w, &e);
                expert_row_approx(&e, xf + (size_t)t * H, f16, y);
                float p = ((const float *)(const void *)probs->data)[t * K + j];
                for (uint32_t n = 0; n < H; n++)
                    acc[n] = acc[n] + p * y[n];
            }
            for (uint32_t n = 0; n < H; n++)
                reg_set(o, (uint64_t)t * H + n, acc[n]);
            free(acc);
        }
    }
    free(xf);
    free(y);
}

/* Replace a buffer's data (new size) in a tr_bufs. */
static void replace_buf(tr_bufs *in, const char *name, const uint8_t *data, size_t bytes)
{
    tr_buf *b = tr_bufs_get(in, name);
    tr_dealloc(b->data);
    b->data = tr_malloc(bytes);
    memcpy(b->data, data, bytes);
    b->bytes = bytes;
    b->shape[0] = bytes;
}

/* Decode the up projection with the gate projection's (wider) grid: repack its indices at the gate's width. */
static void mutate_grid(capture *k)
{
    const tr_buf *ids = tr_bufs_get(&k->in, "ids");
    int e = ids ? ((const int32_t *)(const void *)ids->data)[0] : 0;
    char gname[32], uname[32];
    snprintf(gname, sizeof gname, "e%d.gate.indices", e);
    snprintf(uname, sizeof uname, "e%d.up.indices", e);
    tr_qweight u;
    char prefix[32];
    snprintf(prefix, sizeof prefix, "e%d.up", e);
    ck_assert_int_eq(reg_qweight_view(&k->in, prefix, 128, TR_ROT_NONE, &u), TR_OK);
    unsigned wide = tr_bufs_get(&k->in, gname)->data[0];
    ck_assert_uint_gt(wide, u.bits);
    uint8_t *q = malloc((size_t)u.O * u.I);
    tr_unpack_indices(u.indices, u.O, u.I, q);
    size_t n = 1 + (size_t)tr_packed_body_bytes(u.O, u.I, wide);
    uint8_t *p = malloc(n);
    tr_pack_indices(q, u.O, u.I, wide, p);
    replace_buf(&k->in, uname, p, n);
    free(q);
    free(p);
    recompute(k);
}

/* Swap su and sv of the first quantized weight of the case (square shapes). */
static void mutate_susv(capture *k)
{
    for (int i = 0; i < k->in.n; i++) {
        char *dot = strstr(k->in.v[i]->name, ".su");
        if (!dot || dot[3])
            continue;
        char sv[40];
        snprintf(sv, sizeof sv, "%.*s.sv", (int)(dot - k->in.v[i]->name), k->in.v[i]->name);
        tr_buf *b = tr_bufs_get(&k->in, sv);
        ck_assert_msg(b && b->bytes == k->in.v[i]->bytes, "su/sv of %s differ in length", k->in.v[i]->name);
        swap_bytes(k->in.v[i]->data, b->data, b->bytes);
        recompute(k);
        return;
    }
    /* sign_flip: inputs "su" and "sv" */
    tr_buf *su = tr_bufs_get(&k->in, "su"), *sv = tr_bufs_get(&k->in, "sv");
    ck_assert(su && sv && su->bytes == sv->bytes);
    swap_bytes(su->data, sv->data, su->bytes);
    recompute(k);
}

/* Swapped operands: exchange two inputs of the same size, or two rows of the first input. */
static void mutate_swap(capture *k)
{
    static const char *const pairs[][2] = {{"gate.indices", "up.indices"}};
    for (size_t p = 0; p < 1; p++) {
        tr_buf *a = tr_bufs_get(&k->in, pairs[p][0]), *b = tr_bufs_get(&k->in, pairs[p][1]);
        if (a && b && a->bytes == b->bytes) {
            swap_bytes(a->data, b->data, a->bytes);
            if (p == 0) {   /* the whole projections */
                static const char *const comp[3] = {"scales", "su", "sv"};
                for (int q = 0; q < 3; q++) {
                    char na[32], nb[32];
                    snprintf(na, sizeof na, "gate.%s", comp[q]);
                    snprintf(nb, sizeof nb, "up.%s", comp[q]);
                    swap_bytes(tr_bufs_get(&k->in, na)->data, tr_bufs_get(&k->in, nb)->data,
                               tr_bufs_get(&k->in, na)->bytes);
                }
            }
            recompute(k);
            return;
        }
    }
    static const char *const rows[] = {"probs", "w", "x", "logits", "ids"};
    for (size_t r = 0; r < 5; r++) {
        tr_buf *b = tr_bufs_get(&k->in, rows[r]);
        if (!b || b->ndim < 2 || b->shape[b->ndim - 1] < 2)
            continue;
        size_t es = tr_dtype_size(b->dtype);
        if (!strcmp(rows[r], "x") || !strcmp(rows[r], "logits") || !strcmp(rows[r], "ids")) {
            ck_assert_uint_ge(b->shape[0], 2);   /* rows 0 and 1 */
            size_t row = b->bytes / b->shape[0];
            swap_bytes(b->data, b->data + row, row);
        } else   /* slots 0 and 1 of token 0 */
            swap_bytes(b->data, b->data + es, es);
        recompute(k);
        return;
    }
    ck_abort_msg("no operands to swap in %s", k->c.id);
}

/* A dropped token: the first row of the first output zeroed (1-D outputs: its first non-zero element). */
static void mutate_drop(capture *k)
{
    tr_buf *b = k->got.v[0];
    size_t es = tr_dtype_size(b->dtype);
    if (b->ndim >= 2) {
        memset(b->data, 0, b->bytes / b->shape[0]);
        return;
    }
    for (size_t i = 0; i + es <= b->bytes; i += es) {
        uint64_t v = 0;
        memcpy(&v, b->data + i, es);
        if (v) {
            memset(b->data + i, 0, es);
            return;
        }
    }
}

static void mutate_guard(capture *k) { k->guarded[0][CONFORM_GUARD_BYTES + k->got.v[0]->bytes + 3] ^= 0xFF; }

/* ---- the table ------------------------------------------------------------------------------------------------ */

typedef enum kind { BITWISE, F32ACC, F16ACC } kind;

typedef struct mcase {
    const char *id;
    kind k;
    unsigned mutations;        /* bit set of mutation */
} mcase;

#define B(m) (1u << (m))
#define ALL_DENSE (B(M_FLIP) | B(M_SWAP) | B(M_GUARD))

static const mcase table[] = {
    {"dequant_grid/cpu/b=3;O=16;I=16;gs=128;signs=random;scale=normal;pattern=uniform;padding=canonical/0", BITWISE,
     B(M_FLIP) | B(M_SUSV) | B(M_DROP) | B(M_GUARD)},
    {"dequant_grid/dequant_trellis_packed/b=3;O=16;I=16;gs=128;signs=random;scale=normal;pattern=uniform;"
     "padding=canonical/0", BITWISE, B(M_FLIP) | B(M_SUSV) | B(M_GUARD)},
    {"sign_flip/cpu/K=16;N=16;signs=random;values=normal/0", BITWISE, B(M_FLIP) | B(M_SUSV) | B(M_GUARD)},
    {"hadamard/cpu/n=64;layout=rows;R=3;dtype=f32;norm=ortho;direction=forward;scale=pre;values=normal/0", BITWISE,
     ALL_DENSE},
    {"gemm_trellis/cpu/M=2;O=16;I=16;b=4;gs=128;acc=f32;out=f32;rotation=none;values=normal/0", BITWISE,
     ALL_DENSE | B(M_SUSV) | B(M_DROP)},
    {"gemm_trellis/gemm_trellis_packed_fp32acc/M=2;O=16;I=16;b=4;gs=128;acc=f32;out=f16;rotation=none;"
     "values=normal/0", F32ACC, ALL_DENSE | B(M_SUSV) | B(M_DROP)},
    {"gemm_trellis/gemm_trellis_packed/M=2;O=16;I=16;b=4;gs=128;acc=f16;out=f16;rotation=none;values=normal/0",
     F16ACC, ALL_DENSE | B(M_SUSV) | B(M_DROP)},
    {"gemm_trellis_swiglu/cpu/M=2;I=32;K=32;b=4;acc=f32/0", BITWISE, ALL_DENSE | B(M_SILU)},
    {"gemm_trellis_swiglu/gemm_trellis_swiglu_gate_up/M=2;I=32;K=32;b=4;acc=f16/0", F16ACC, ALL_DENSE | B(M_SILU)},
    {"gemm_trellis_qkv/cpu/M=2;Nq=64;Nk=32;Nv=32;K=32;b=4;acc=f32/0", BITWISE, ALL_DENSE | B(M_DROP)},
    {"gemm_trellis_qkv/fused_qkv_trellis_decode/M=2;Nq=64;Nk=32;Nv=32;K=32;b=4;acc=f16/0", F16ACC,
     ALL_DENSE | B(M_DROP)},
    {"expert_ffn/cpu/H=32;I=32;tuple=6-2-3;R=2;acc=f32;values=normal/0", BITWISE,
     B(M_FLIP) | B(M_SWAP) | B(M_SILU) | B(M_DROP) | B(M_GUARD)},
    {"expert_ffn/moe_trellis_fused_expert/H=32;I=32;tuple=6-2-3;R=2;acc=f16;values=normal/0", F16ACC,
     B(M_FLIP) | B(M_SWAP) | B(M_SILU) | B(M_GUARD)},
    {"moe_swiglu/cpu/H=32;I=32;tuple=6-2-3;T=3;k=2;E=4;routing=uniform;launch=flat;acc=f32;map=uniform/0", BITWISE,
     B(M_FLIP) | B(M_SWAP) | B(M_SILU) | B(M_GRID) | B(M_SUSV) | B(M_DROP) | B(M_GUARD)},
    {"moe_swiglu/fp32acc/H=32;I=32;tuple=6-2-3;T=3;k=2;E=4;routing=uniform;launch=flat;acc=f32;map=uniform/0",
     F32ACC, B(M_FLIP) | B(M_SWAP) | B(M_SILU) | B(M_GRID) | B(M_SUSV) | B(M_DROP) | B(M_GUARD)},
    {"moe_swiglu/base/H=32;I=32;tuple=6-2-3;T=3;k=2;E=4;routing=uniform;launch=flat;acc=f32;map=uniform/0", F16ACC,
     B(M_FLIP) | B(M_SWAP) | B(M_SILU) | B(M_GRID) | B(M_SUSV) | B(M_DROP) | B(M_GUARD)},
    {"router_logits/cpu/T=2;E=8;H=16;xdt=f32;wdt=f32/0", BITWISE, ALL_DENSE | B(M_DROP)},
    {"router_topk/cpu/T=2;E=8;k=2;mode=softmax_topk;norm=1;n_group=1;topk_group=1;scaling=1;bias=zero;"
     "logits=normal/0", BITWISE, B(M_FLIP) | B(M_GUARD) | B(M_DROP)},
    {"moe_count/cpu/T=4;k=2;E=4;routing=uniform/0", BITWISE, B(M_FLIP) | B(M_GUARD)},
    {"moe_offsets/cpu/T=4;k=2;E=4;routing=uniform/0", BITWISE, B(M_FLIP) | B(M_GUARD)},
    {"moe_scatter/cpu/T=4;k=2;E=4;routing=uniform/0", BITWISE, B(M_FLIP) | B(M_GUARD) | B(M_DROP)},
    {"moe_group/cpu/T=4;k=2;E=4;routing=uniform/0", BITWISE, B(M_FLIP) | B(M_GUARD) | B(M_DROP)},
    {"validate_expert_ids/cpu/T=4;k=2;E=4;routing=invalid/0", BITWISE, B(M_GUARD)},
    {"validate_expert_ids/cpu/T=4;k=2;E=4;routing=uniform/0", BITWISE, B(M_FLIP) | B(M_GUARD)},
    {"moe_gather/cpu/T=2;k=2;H=7/0", BITWISE, B(M_FLIP) | B(M_DROP) | B(M_GUARD)},
    {"moe_combine/cpu/T=2;k=2;H=7;shared=1;residual=1;weights=softmax;acc=f32/0", BITWISE,
     B(M_FLIP) | B(M_SWAP) | B(M_DROP) | B(M_GUARD)},
    {"moe_combine/moe_combine_fp32_acc/T=2;k=2;H=7;shared=1;residual=1;weights=softmax;acc=f32/0", F32ACC,
     B(M_FLIP) | B(M_SWAP) | B(M_DROP) | B(M_GUARD)},
    {"moe_combine/moe_combine_weighted/T=2;k=2;H=7;shared=1;residual=1;weights=softmax;acc=f16/0", F16ACC,
     B(M_FLIP) | B(M_SWAP) | B(M_DROP) | B(M_GUARD)},
    {"cast_f16/cpu/n=64;values=normal/0", BITWISE, B(M_FLIP) | B(M_GUARD)},
    {"codebook_decode/cpu/mode=mcg/0", BITWISE, B(M_FLIP) | B(M_GUARD)},
    {"bitshift_states/cpu/b=3;codes=uniform/0", BITWISE, B(M_FLIP) | B(M_GUARD)},
    {"nan_scan/cpu/dtype=f32;n=64;values=nan_inf/0", BITWISE, B(M_FLIP) | B(M_GUARD)},
};

static void apply(capture *k, mutation m, int tolerant)
{
    switch (m) {
    case M_FLIP: mutate_flip(k, tolerant); break;
    case M_SWAP: mutate_swap(k); break;
    case M_SILU: mutate_silu(k); break;
    case M_GRID: mutate_grid(k); break;
    case M_SUSV: mutate_susv(k); break;
    case M_DROP: mutate_drop(k); break;
    case M_GUARD: mutate_guard(k); break;
    default: break;
    }
}

START_TEST(test_mutations)
{
    const mcase *mc = &table[_i];
    char *base = tmp("cap_base"), *mut = tmp("cap_mut");
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    sh(cmd);
    int st;
    json_t *doc = conform_json(&st, "ref", mc->id, base, NULL);
    ck_assert_msg(st == 0, "capture of %s: %s", mc->id, status_of(doc));
    json_decref(doc);
    char backend[4300];
    snprintf(backend, sizeof backend, "capture:%s", base);
    doc = conform_json(&st, backend, NULL, NULL, "--strict");
    ck_assert_msg(st == 0 && !strcmp(status_of(doc), "PASS"), "uncorrupted capture of %s: %s", mc->id, status_of(doc));
    json_decref(doc);
    snprintf(backend, sizeof backend, "capture:%s", mut);
    for (int m = 0; m < M_COUNT; m++) {
        if (!(mc->mutations & B(m)))
            continue;
        snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", mut, base, mut);
        sh(cmd);
        capture k;
        capture_open(&k, mut);
        apply(&k, (mutation)m, mc->k != BITWISE);
        capture_save(&k);
        capture_close(&k);
        doc = conform_json(&st, backend, NULL, NULL, "--strict");
        json_t *r = first_result(doc);
        const char *s = status_of(doc);
        ck_assert_msg(st == 1, "%s / %s: exit %d (status %s)", mc->id, mutation_names[m], st, s);
        if (mc->k == F16ACC)
            ck_assert_msg(!strcmp(s, "FAIL") || !strcmp(s, "PRECISION_WARNING"), "%s / %s: %s", mc->id,
                          mutation_names[m], s);
        else {
            ck_assert_msg(!strcmp(s, "FAIL"), "%s / %s: %s", mc->id, mutation_names[m], s);
            if (m != M_GUARD && strstr(mc->id, "routing=invalid") == NULL)
                ck_assert_msg(json_is_array(json_object_get(json_object_get(r, "first_mismatch"), "coords")),
                              "%s / %s: no first mismatch coordinates", mc->id, mutation_names[m]);
        }
        if (m == M_GUARD)
            ck_assert_msg(strstr(json_string_value(json_object_get(r, "detail")), "out-of-bounds write"), "%s",
                          json_string_value(json_object_get(r, "detail")));
        ck_assert(strstr(json_string_value(json_object_get(r, "replay")), "trellis conform --backend capture:"));
        json_decref(doc);
    }
}
END_TEST

/* ---- runner properties --------------------------------------------------------------------------------------- */

/* A 4-shard run merged equals the unsharded run (same cases, same statuses, same order). */
START_TEST(test_shards_merge)
{
    int st;
    char *whole = tmp("whole.json");
    cli_result r = cli_run("conform", "--backend", "cpu", "--ops", "dequant_grid,moe_group,router_topk", "--json",
                           whole, "--no-progress", NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.out);
    cli_result_free(&r);
    char *parts[4];
    for (int i = 0; i < 4; i++) {
        char shard[32], name[32];
        snprintf(shard, sizeof shard, "%d/4", i);
        snprintf(name, sizeof name, "shard%d.json", i);
        parts[i] = tmp(name);
        r = cli_run("conform", "--backend", "cpu", "--ops", "dequant_grid,moe_group,router_topk", "--shard", shard,
                    "--json", parts[i], "--no-progress", NULL);
        ck_assert_int_eq(r.status, 0);
        cli_result_free(&r);
    }
    char *merged = tmp("merged.json");
    r = cli_run("report", "merge", parts[2], parts[0], parts[3], parts[1], "--json", merged, NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    cli_result_free(&r);
    json_error_t jerr;
    json_t *a = json_load_file(whole, 0, &jerr), *b = json_load_file(merged, 0, &jerr);
    json_t *ra = json_object_get(a, "results"), *rb = json_object_get(b, "results");
    ck_assert_uint_eq(json_array_size(ra), json_array_size(rb));
    ck_assert_uint_gt(json_array_size(ra), 50);
    for (size_t i = 0; i < json_array_size(ra); i++) {
        ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ra, i), "case")),
                         json_string_value(json_object_get(json_array_get(rb, i), "case")));
        ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ra, i), "status")),
                         json_string_value(json_object_get(json_array_get(rb, i), "status")));
    }
    ck_assert(json_equal(json_object_get(a, "summary"), json_object_get(b, "summary")));
    json_decref(a);
    json_decref(b);
    /* shards of different runs do not merge */
    char *other = tmp("other.json");
    r = cli_run("conform", "--backend", "cpu", "--ops", "cast_f16", "--seed", "2", "--json", other, "--no-progress",
                NULL);
    cli_result_free(&r);
    r = cli_run("report", "merge", parts[0], other, "--json", merged, NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert(strstr(r.err, "seed differs"));
    cli_result_free(&r);
    /* the environment variables of Bazel's sharding protocol select the same shard as --shard */
    setenv("TEST_SHARD_INDEX", "1", 1);
    setenv("TEST_TOTAL_SHARDS", "4", 1);
    char *env_json = tmp("env.json");
    r = cli_run("conform", "--backend", "cpu", "--ops", "dequant_grid,moe_group,router_topk", "--json", env_json,
                "--no-progress", NULL);
    cli_result_free(&r);
    unsetenv("TEST_SHARD_INDEX");
    unsetenv("TEST_TOTAL_SHARDS");
    a = json_load_file(env_json, 0, &jerr);
    b = json_load_file(parts[1], 0, &jerr);
    ck_assert(json_equal(json_object_get(a, "summary"), json_object_get(b, "summary")));
    ck_assert_uint_eq(json_array_size(json_object_get(a, "results")), json_array_size(json_object_get(b, "results")));
    json_decref(a);
    json_decref(b);
    (void)st;
}
END_TEST

/* Crashes and hangs are isolated in their worker; the replay command of a failure reproduces it. */
START_TEST(test_isolation_and_replay)
{
    setenv("TR_CONFORM_FAULT", "crash:cast_f16/cpu/n=7;*", 1);
    int st;
    json_t *doc = conform_json(&st, "cpu", NULL, NULL, "--ops=cast_f16");
    unsetenv("TR_CONFORM_FAULT");
    ck_assert_int_eq(st, 1);
    json_t *s = json_object_get(doc, "summary");
    /* quick cast_f16: n ∈ {1, 7, 64, 1000} at values=normal, and every value at n=1: 11 cases, one crashes */
    ck_assert_int_eq(json_integer_value(json_object_get(s, "CRASH")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(s, "PASS")), 10);
    json_t *results = json_object_get(doc, "results");
    const char *replay = NULL;
    for (size_t i = 0; i < json_array_size(results); i++)
        if (!strcmp(json_string_value(json_object_get(json_array_get(results, i), "status")), "CRASH"))
            replay = json_string_value(json_object_get(json_array_get(results, i), "replay"));
    ck_assert_ptr_nonnull(replay);
    /* the replay command names the failing case; run it again (still crashing under the same fault) */
    char id[512];
    ck_assert_int_eq(sscanf(strstr(replay, "--replay '") + 10, "%511[^']", id), 1);
    setenv("TR_CONFORM_FAULT", "crash:cast_f16/cpu/n=7;*", 1);
    json_t *again = conform_json(&st, "cpu", id, NULL, NULL);
    unsetenv("TR_CONFORM_FAULT");
    ck_assert_str_eq(status_of(again), "CRASH");
    json_decref(again);
    json_decref(doc);
    /* a hang becomes TIMEOUT after --case-timeout */
    setenv("TR_CONFORM_FAULT", "hang:*", 1);
    cli_result r = cli_run("conform", "--backend", "cpu", "--replay", "cast_f16/cpu/n=1;values=normal/0",
                           "--case-timeout", "0.5", "--no-progress", NULL);
    unsetenv("TR_CONFORM_FAULT");
    ck_assert_int_eq(r.status, 1);
    ck_assert_msg(strstr(r.out, "TIMEOUT case=cast_f16/cpu/n=1;values=normal/0"), "%.3000s", r.out);
    ck_assert(strstr(r.out, "replay: trellis conform --backend cpu --replay 'cast_f16/cpu/n=1;values=normal/0' "
                            "--seed 1"));
    cli_result_free(&r);
    /* a failing mutation's replay reproduces the failure */
    char *base = tmp("cap_replay");
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    sh(cmd);
    json_decref(conform_json(&st, "ref", "cast_f16/cpu/n=64;values=normal/0", base, NULL));
    capture k;
    capture_open(&k, base);
    mutate_flip(&k, 0);
    capture_save(&k);
    capture_close(&k);
    char backend[4300];
    snprintf(backend, sizeof backend, "capture:%s", base);
    doc = conform_json(&st, backend, "cast_f16/cpu/n=64;values=normal/0", NULL, NULL);
    ck_assert_str_eq(status_of(doc), "FAIL");
    json_decref(doc);
}
END_TEST

/* Usage errors and unknown backends. */
START_TEST(test_usage)
{
    static const char *const bad[][3] = {{"--shard", "4/4", NULL}, {"--shard", "x", NULL}, {"--seed", "abc", NULL},
                                         {"--frob", NULL, NULL}, {"--reps", "0", NULL}, {"--case-timeout", "-1", NULL},
                                         {"--metal-math", "fast", NULL}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cli_result r = cli_run("conform", bad[i][0], bad[i][1], NULL);
        ck_assert_msg(r.status == 2, "%s %s: %d", bad[i][0], bad[i][1] ? bad[i][1] : "", r.status);
        cli_result_free(&r);
    }
    cli_result r = cli_run("conform", "--backend", "metal", "--no-progress", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert(strstr(r.err, "backend not available"));
    cli_result_free(&r);
    r = cli_run("conform", "--backend", "capture:/nonexistent", "--no-progress", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
    r = cli_run("conform", "--replay", "nope/cpu/a=1/0", "--no-progress", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
    r = cli_run("report", "merge", "/nonexistent.json", NULL);
    ck_assert_int_eq(r.status, 2);
    cli_result_free(&r);
}
END_TEST

Suite *suite_conform(void)
{
    Suite *s = suite_create("conform");
    TCase *tc = tcase_create("runner");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_mutations, 0, (int)(sizeof table / sizeof table[0]));
    tcase_add_test(tc, test_shards_merge);
    tcase_add_test(tc, test_isolation_and_replay);
    tcase_add_test(tc, test_usage);
    suite_add_tcase(s, tc);
    return s;
}
