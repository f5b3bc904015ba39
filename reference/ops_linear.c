/*
 * ops_linear.c — reference dense quantized linears, experts and routed MoE (KERNELS.md §4.1, §4.4-§4.8).
 *
 * Every dot product here is written through the canonical orders of numeric.h: L16 for f32 accumulation, H16T for
 * f16 accumulation.  Weights are dequantized to W16 first (exactly the bits a kernel decodes) and widened.
 */
#include "trellis/ops.h"
#include "trellis/alloc.h"
#include "trellis/fp16.h"
#include "trellis/hadamard.h"
#include "trellis/numeric.h"
#include "trellis/pack.h"

#include <string.h>

/* Op-level validation: KERNELS.md §4.1 maps a bad header byte to INVALID_PARAM and lengths to INVALID_SHAPE. */
static int check_linear(const tr_qweight *w, const char *what, tr_error *err)
{
    tr_error e;
    int rc = tr_qweight_check(w, what, "w", &e);
    if (rc == TR_OK)
        return TR_OK;
    int code = rc == TR_E_QBITS ? TR_E_INVALID_PARAM : TR_E_INVALID_SHAPE;
    return tr_fail(err, code, what, "%s", e.text);
}

int tr_ref_dequant_grid(const tr_qweight *w, uint16_t *out, tr_error *err)
{
    int rc = check_linear(w, "dequant_grid", err);
    if (rc == TR_OK)
        tr_dequant_w16(w, out);
    return rc;
}

/* The layer's decoded weights widened to f32, [O][I] (W16, or Ŵ16 for hadamard128). */
static float *widened_weights(const tr_qweight *w, tr_error *err)
{
    size_t n = (size_t)w->O * w->I;
    uint16_t *w16 = tr_malloc(n * sizeof *w16);
    float *wf = tr_malloc(n * sizeof *wf);
    if (!w16 || !wf) {
        tr_dealloc(w16);
        tr_dealloc(wf);
        tr_fail(err, TR_E_NOMEM, "reference", "cannot allocate %zu weights", n);
        return NULL;
    }
    tr_dequant_layer(w, w16);
    tr_f16_to_f32_n(w16, wf, n);
    tr_dealloc(w16);
    return wf;
}

/* x'' = Hn_blocks(RN32(x ⊙ su)) for rotation hadamard128 (FORMAT.md §6.3). */
static void rotate_input(const tr_qweight *w, const float *x, float *xr)
{
    for (uint32_t i = 0; i < w->I; i++)
        xr[i] = x[i] * w->su[i];
    tr_hadamard128_blocks(xr, w->I);
}

int tr_ref_gemm_trellis(const tr_qweight *w, const float *X, uint32_t M, tr_acc acc, int out_f16, void *Y,
                        tr_error *err)
{
    int rc = check_linear(w, "gemm_trellis", err);
    if (rc != TR_OK)
        return rc;
    if (acc == TR_ACC_F16 && w->rotation == TR_ROT_HADAMARD128)
        return tr_fail(err, TR_E_INVALID_PARAM, "gemm_trellis", "acc f16 is not defined for rotation hadamard128");
    float *wf = widened_weights(w, err);
    float *xr = tr_malloc((size_t)w->I * sizeof *xr);
    if (!wf || !xr) {
        tr_dealloc(wf);
        tr_dealloc(xr);
        return tr_fail(err, TR_E_NOMEM, "gemm_trellis", "out of memory");
    }
    for (uint32_t m = 0; m < M; m++) {
        const float *x = X + (size_t)m * w->I;
        if (w->rotation == TR_ROT_HADAMARD128) {
            rotate_input(w, x, xr);
            x = xr;
        }
        for (uint32_t o = 0; o < w->O; o++) {
            const float *row = wf + (size_t)o * w->I;
            size_t k = (size_t)m * w->O + o;
            if (acc == TR_ACC_F16) {
                uint16_t h = tr_dot_h16t(x, row, w->I);
                if (out_f16)
                    ((uint16_t *)Y)[k] = h;
                else
                    ((float *)Y)[k] = tr_f16_to_f32(h);
                continue;
            }
            float y = tr_dot_l16(x, row, w->I);
            if (w->rotation == TR_ROT_HADAMARD128)
                y = w->sv[o] * y;
            if (out_f16)
                ((uint16_t *)Y)[k] = tr_f32_to_f16(y);
            else
                ((float *)Y)[k] = y;
        }
    }
    tr_dealloc(wf);
    tr_dealloc(xr);
    return TR_OK;
}

int tr_ref_gemm_trellis_swiglu(const tr_qweight *gate, const tr_qweight *up, const float *X, uint32_t M, tr_acc acc,
                               uint16_t *S, tr_error *err)
{
    if (gate->O != up->O || gate->I != up->I)
        return tr_fail(err, TR_E_INVALID_SHAPE, "gemm_trellis_swiglu", "gate [%u,%u] and up [%u,%u] differ",
                       gate->O, gate->I, up->O, up->I);
    size_t n = (size_t)M * gate->O;
    void *g = tr_malloc(n * 4), *u = tr_malloc(n * 4);
    int rc = g && u ? TR_OK : tr_fail(err, TR_E_NOMEM, "gemm_trellis_swiglu", "out of memory");
    int f16 = acc == TR_ACC_F16;
    if (rc == TR_OK)
        rc = tr_ref_gemm_trellis(gate, X, M, acc, f16, g, err);
    if (rc == TR_OK)
        rc = tr_ref_gemm_trellis(up, X, M, acc, f16, u, err);
    for (size_t i = 0; rc == TR_OK && i < n; i++) {
        float gv = f16 ? tr_f16_to_f32(((uint16_t *)g)[i]) : ((float *)g)[i];
        float uv = f16 ? tr_f16_to_f32(((uint16_t *)u)[i]) : ((float *)u)[i];
        S[i] = tr_f32_to_f16(tr_silu(gv) * uv);
    }
    tr_dealloc(g);
    tr_dealloc(u);
    return rc;
}

void tr_ref_gemm_f32(const float *W, const float *X, uint32_t M, uint32_t O, uint32_t I, float *Y)
{
    for (uint32_t m = 0; m < M; m++)
        for (uint32_t o = 0; o < O; o++)
            Y[(size_t)m * O + o] = tr_dot_l16(X + (size_t)m * I, W + (size_t)o * I, I);
}

/* ---- experts ---------------------------------------------------------------------------------------------------- */

int tr_expert_check(const tr_expert *e, tr_error *err)
{
    if (!e->gate || !e->up || !e->down)
        return tr_fail(err, TR_E_INVALID_SHAPE, "expert_ffn", "missing projection");
    uint32_t H = e->gate->I, I = e->gate->O;
    if (e->up->I != H || e->up->O != I || e->down->I != I || e->down->O != H)
        return tr_fail(err, TR_E_INVALID_SHAPE, "expert_ffn",
                       "gate [%u,%u], up [%u,%u], down [%u,%u] do not form an expert (expected [I,H], [I,H], [H,I])",
                       e->gate->O, e->gate->I, e->up->O, e->up->I, e->down->O, e->down->I);
    int rc = check_linear(e->gate, "expert_ffn gate", err);
    if (rc == TR_OK)
        rc = check_linear(e->up, "expert_ffn up", err);
    if (rc == TR_OK)
        rc = check_linear(e->down, "expert_ffn down", err);
    if (rc == TR_OK && (e->gate->rotation || e->up->rotation || e->down->rotation))
        rc = tr_fail(err, TR_E_INVALID_PARAM, "expert_ffn", "expert projections use rotation none");
    return rc;
}

/* An expert's widened weights, decoded once. */
typedef struct expert_w {
    float *g, *u, *d;          /* widened W16 for the f32 path */
    uint16_t *g16, *u16, *d16; /* W16 bits for the f16 path (loaded on first use) */
    uint32_t H, I;
} expert_w;

static void expert_w_free(expert_w *x)
{
    tr_dealloc(x->g);
    tr_dealloc(x->u);
    tr_dealloc(x->d);
    tr_dealloc(x->g16);
    tr_dealloc(x->u16);
    tr_dealloc(x->d16);
    memset(x, 0, sizeof *x);
}

static int expert_w_load(const tr_expert *e, expert_w *x, tr_error *err)
{
    memset(x, 0, sizeof *x);
    x->H = e->gate->I;
    x->I = e->gate->O;
    x->g = widened_weights(e->gate, err);
    x->u = x->g ? widened_weights(e->up, err) : NULL;
    x->d = x->u ? widened_weights(e->down, err) : NULL;
    if (!x->d) {
        expert_w_free(x);
        return TR_E_NOMEM;
    }
    return TR_OK;
}

static void row_f32(const expert_w *w, const float *x, float *g, float *u, float *s, float *y)
{
    for (uint32_t j = 0; j < w->I; j++) {
        g[j] = tr_dot_l16(x, w->g + (size_t)j * w->H, w->H);
        u[j] = tr_dot_l16(x, w->u + (size_t)j * w->H, w->H);
        s[j] = tr_silu(g[j]) * u[j];
    }
    for (uint32_t n = 0; n < w->H; n++)
        y[n] = tr_dot_l16(s, w->d + (size_t)n * w->I, w->I);
}

/* W16 bits of the three projections (the f16 path multiplies f16 operands). */
static int expert_w_bits(const tr_expert *e, expert_w *x)
{
    if (x->g16)
        return TR_OK;
    size_t ng = (size_t)x->H * x->I;
    x->g16 = tr_malloc(ng * 2);
    x->u16 = tr_malloc(ng * 2);
    x->d16 = tr_malloc(ng * 2);
    if (!x->g16 || !x->u16 || !x->d16)
        return TR_E_NOMEM;
    tr_dequant_layer(e->gate, x->g16);
    tr_dequant_layer(e->up, x->u16);
    tr_dequant_layer(e->down, x->d16);
    return TR_OK;
}

/* acc f16: x rounded to f16, g/u by H16T, s = RNh(RN32(silu(widen g)·widen u)), y by H16T over s. */
static void row_f16(const expert_w *w, const float *x, uint16_t *x16, uint16_t *s16, uint16_t *y)
{
    for (uint32_t k = 0; k < w->H; k++)
        x16[k] = tr_f32_to_f16(x[k]);
    for (uint32_t j = 0; j < w->I; j++) {
        float g = tr_f16_to_f32(tr_dot_h16t_bits(x16, w->g16 + (size_t)j * w->H, w->H));
        float u = tr_f16_to_f32(tr_dot_h16t_bits(x16, w->u16 + (size_t)j * w->H, w->H));
        s16[j] = tr_f32_to_f16(tr_silu(g) * u);
    }
    for (uint32_t n = 0; n < w->H; n++)
        y[n] = tr_dot_h16t_bits(s16, w->d16 + (size_t)n * w->I, w->I);
}

void tr_ref_expert_row(const tr_expert *e, const float *x, float *g, float *u, float *s, float *y)
{
    expert_w w;
    if (expert_w_load(e, &w, NULL) != TR_OK)
        return;
    row_f32(&w, x, g, u, s, y);
    expert_w_free(&w);
}

int tr_ref_expert_ffn(const tr_expert *e, const float *x, uint32_t R, tr_acc acc, void *y, tr_error *err)
{
    int rc = tr_expert_check(e, err);
    if (rc != TR_OK)
        return rc;
    expert_w w;
    if ((rc = expert_w_load(e, &w, err)) != TR_OK)
        return rc;
    float *buf = tr_malloc(((size_t)3 * w.I + w.H) * sizeof *buf);
    uint16_t *b16 = tr_malloc(((size_t)w.I + w.H) * sizeof *b16);
    if (!buf || !b16 || (acc == TR_ACC_F16 && expert_w_bits(e, &w) != TR_OK)) {
        tr_dealloc(buf);
        tr_dealloc(b16);
        expert_w_free(&w);
        return tr_fail(err, TR_E_NOMEM, "expert_ffn", "out of memory");
    }
    float *g = buf, *u = buf + w.I, *s = buf + 2 * (size_t)w.I, *yr = buf + 3 * (size_t)w.I;
    for (uint32_t r = 0; r < R; r++) {
        const float *xr = x + (size_t)r * w.H;
        if (acc == TR_ACC_F32) {
            row_f32(&w, xr, g, u, s, yr);
            memcpy((float *)y + (size_t)r * w.H, yr, (size_t)w.H * sizeof *yr);
        } else
            row_f16(&w, xr, b16, b16 + w.H, (uint16_t *)y + (size_t)r * w.H);
    }
    tr_dealloc(buf);
    tr_dealloc(b16);
    expert_w_free(&w);
    return TR_OK;
}

int tr_ref_moe_swiglu(const tr_expert *experts, uint32_t E, const float *x, uint32_t T, const int32_t *ids,
                      const float *probs, uint32_t k, tr_acc acc, float *out, tr_error *err)
{
    int rc = tr_ref_validate_ids(ids, T, k, E, err);
    if (rc != TR_OK)
        return rc;
    if (T == 0)
        return TR_OK;
    uint32_t H = 0, I = 0;
    for (uint32_t f = 0; f < T * k; f++) {   /* every referenced expert must be complete and of one shape */
        const tr_expert *e = &experts[ids[f]];
        if ((rc = tr_expert_check(e, err)) != TR_OK)
            return rc;
        if (H == 0) {
            H = e->gate->I;
            I = e->gate->O;
        } else if (e->gate->I != H || e->gate->O != I)
            return tr_fail(err, TR_E_INVALID_SHAPE, "moe_swiglu", "expert %d has shape [%u,%u], expert %d [%u,%u]",
                           ids[f], e->gate->O, e->gate->I, ids[0], I, H);
    }
    expert_w *cache = tr_calloc(E, sizeof *cache);
    float *acc_rows = tr_malloc((size_t)T * H * sizeof *acc_rows);
    float *buf = tr_malloc(((size_t)3 * I + H) * sizeof *buf);
    uint16_t *y16 = tr_malloc(((size_t)2 * H + I) * sizeof *y16);
    if (!cache || !acc_rows || !buf || !y16)
        rc = tr_fail(err, TR_E_NOMEM, "moe_swiglu", "out of memory");
    float *g = buf, *u = buf + I, *s = buf + 2 * (size_t)I, *y = buf + 3 * (size_t)I;
    for (uint32_t t = 0; rc == TR_OK && t < T; t++) {
        float *o = acc_rows + (size_t)t * H;
        for (uint32_t n = 0; n < H; n++)
            o[n] = 0.0f;
        for (uint32_t j = 0; rc == TR_OK && j < k; j++) {
            int32_t id = ids[(size_t)t * k + j];
            if (!cache[id].g && (rc = expert_w_load(&experts[id], &cache[id], err)) != TR_OK)
                break;
            if (acc == TR_ACC_F16 && expert_w_bits(&experts[id], &cache[id]) != TR_OK) {
                rc = tr_fail(err, TR_E_NOMEM, "moe_swiglu", "out of memory");
                break;
            }
            const float *xt = x + (size_t)t * H;
            if (acc == TR_ACC_F32)
                row_f32(&cache[id], xt, g, u, s, y);
            else {
                row_f16(&cache[id], xt, y16 + H, y16 + 2 * (size_t)H, y16);
                tr_f16_to_f32_n(y16, y, H);
            }
            float p = probs[(size_t)t * k + j];
            for (uint32_t n = 0; n < H; n++)
                o[n] = o[n] + p * y[n];      /* c = RN32(p·y), then the slot-order SEQ sum */
        }
    }
    if (rc == TR_OK)
        memcpy(out, acc_rows, (size_t)T * H * sizeof *out);
    for (uint32_t e = 0; cache && e < E; e++)
        expert_w_free(&cache[e]);
    tr_dealloc(cache);
    tr_dealloc(acc_rows);
    tr_dealloc(buf);
    tr_dealloc(y16);
    return rc;
}
