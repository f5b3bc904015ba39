/*
 * metal_bind.c — the binding families of KERNELS.md §4 and their adapters (§3) for the metal-emu runner.
 *
 * A family lists its slots (kind, index, element dtype, written or not) for tr_mtl_check_binding and prepares one
 * case: canonical inputs (reference/ generators) become the variant's buffers — PK bodies in GEMM tile order, I16
 * tiles, BULK per-tile scales, a 1-D grid texture (TEX), f16 activations/scales/signs/probabilities (H16), expert
 * stacks with MoEParams (STACK) — each in a guarded allocation; outputs are poisoned (or zero-filled where the
 * binding accumulates); launches get the listed threadgroup size and grid.  Its finish step turns the variant's
 * outputs back into the canonical outputs the comparison reads (transposes, tile scatter, f32 → f16 of the fused
 * expert, the canonical-order combine of flat MoE rows).
 *
 * Launch geometry (KERNELS.md §4 lists the threadgroup size and grid; where it writes "one thread per element" or
 * "TG 16×16" the x axis runs over N, the fastest output index, and y over K, as the kernels of the tables read
 * thread_position_in_grid):
 *   TG16     groups (⌈N/16⌉, ⌈K/16⌉), TG 16×16            TG16V4  groups (⌈N/16⌉, ⌈⌈K/4⌉/16⌉), TG 16×16
 *   TG16A4   groups (⌈⌈N/4⌉/16⌉, ⌈K/16⌉), TG 16×16         TILE64  one group per tile, TG 64; TILE256 TG 256:
 *            groups (T_O, T_I) when the kernel reads threadgroup_position_in_grid as a vector, else T_I·T_O groups
 *            numbered in GEMM tile order ti·T_O + to (a scalar tile id, as metal_marlin's kernels read it)
 *   BULK     groups (n_tiles), TG 256                      ROW32   groups (R), TG 32
 *   HCOLS    threads (N, K/n, z) (z = 2 for n = 96/160/192), TG 32 (dispatchThreads)
 *   G128     groups (⌈N/128⌉, ⌈M/128⌉), TG 256             G32D    groups (⌈N/128⌉, ⌈M/32⌉), TG 128
 *   QKV      groups (⌈max(N_q,N_k,N_v)/128⌉, ⌈M/32⌉), TG 128
 *   FE       groups (⌈H/64⌉, R), TG 256                    MOE     groups (⌈H/64⌉, batch, top_k), TG 128
 *   MOE_LB   groups (⌈H/128⌉, batch, top_k), TG 128        MOE_DEC groups (⌈H/64⌉, top_k), TG 128
 *   MOE_P4   groups (⌈H/64⌉, ⌈batch/4⌉, top_k), TG 128      MOE_GROUPED groups (⌈H/64⌉, num_experts), TG 128
 *   MOE_MIXED groups (⌈H/64⌉, batch, top_k), TG 256
 *   ROUTER   groups (T), TG 128 (one per token)              ROUTER1 one group of 128 (T = 1)
 *   N256     groups (⌈n/256⌉), TG 256 (one thread per element: N = T·k ids, n values)
 *   ONE256   one group of 256                                E256    groups (⌈E/256⌉), TG 256 (one thread per expert)
 *   GATHER   groups (⌈H/256⌉, rows), TG 256                  COMBINE groups (⌈H/256⌉, T), TG 256
 * The families of the routers, grouping, gather, combine and cast ops follow KERNELS.md §4.9–§4.11 where it gives a
 * binding and our kernels' own where it gives none (docs/decisions.md, metal-emu bindings).
 */
#include "metal_bind.h"
#include "trellis/alloc.h"
#include "trellis/codebook.h"
#include "trellis/fp16.h"
#include "trellis/ops.h"
#include "trellis/pack.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define CEIL(a, b) (((a) + (b) - 1) / (b))

/* ---- helpers ----------------------------------------------------------------------------------------------------- */

static int failf(mctx *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int failf(mctx *m, const char *fmt, ...)
{
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    return tr_fail(m->err, TR_E_INVALID_PARAM, m->c->id, "%s", text);
}

static const tr_buf *IN(mctx *m, const char *name) { return tr_bufs_get(m->in, name); }
static tr_buf *OUT(mctx *m, const char *name) { return tr_bufs_get(m->got, name); }
static uint32_t P(mctx *m, const char *k, uint32_t d) { return (uint32_t)tr_params_int(&m->c->params, k, d); }

/* A new launch (argument table); -1 with m->err set when there are too many or memory ran out. */
static int new_launch(mctx *m)
{
    if (m->nl == ML_MAX)
        return failf(m, "more than %d launches", ML_MAX), -1;
    memset(&m->L[m->nl], 0, sizeof m->L[m->nl]);
    m->L[m->nl].args = tr_mtl_args_new();
    if (!m->L[m->nl].args)
        return tr_fail(m->err, TR_E_NOMEM, m->c->id, "out of memory"), -1;
    return m->nl++;
}

/* The tuple of expert e: the header bytes (widths) of its gate, up and down weights as one number. */
static unsigned expert_tuple(mctx *m, int e)
{
    static const char *const proj[3] = {"gate", "up", "down"};
    unsigned t = 0;
    for (int q = 0; q < 3; q++) {
        char n[40];
        snprintf(n, sizeof n, "e%d.%s.indices", e, proj[q]);
        const tr_buf *b = IN(m, n);
        t = t * 16 + (b && b->bytes ? b->data[0] : 0);
    }
    return t;
}

static void geom(mctx *m, int L, uint32_t gx, uint32_t gy, uint32_t gz, uint32_t tx, uint32_t ty, uint32_t tz)
{
    mlaunch *l = &m->L[L];
    l->grid[0] = gx ? gx : 1;
    l->grid[1] = gy ? gy : 1;
    l->grid[2] = gz ? gz : 1;
    l->tg[0] = tx;
    l->tg[1] = ty;
    l->tg[2] = tz;
}

/* A guarded allocation for launch L: role MB_IN/MB_INOUT copy init (bytes), MB_OUT/MB_ACC are filled before every
 * schedule.  Returns NULL with m->err set on failure. */
static mbuf *alloc_buf(mctx *m, int L, int index, const char *name, int role, tr_dtype dt, size_t bytes,
                       const void *init)
{
    if (m->nb == MB_MAX) {
        failf(m, "more than %d buffers", MB_MAX);
        return NULL;
    }
    mbuf *b = &m->b[m->nb];
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->launch = L;
    b->index = index;
    b->role = role;
    b->dt = dt;
    b->bytes = bytes;
    b->block = conform_guarded_alloc(bytes);
    if (b->block && (role == MB_IN || role == MB_INOUT)) {
        b->init = tr_malloc(bytes ? bytes : 1);
        if (b->init && bytes)
            memcpy(b->init, init, bytes);
    }
    if (!b->block || ((role == MB_IN || role == MB_INOUT) && !b->init)) {
        tr_dealloc(b->block);
        tr_dealloc(b->init);
        tr_fail(m->err, TR_E_NOMEM, m->c->id, "out of memory (buffer %s, %zu bytes)", name, bytes);
        return NULL;
    }
    m->nb++;
    return b;
}

/* A buffer bound at [[buffer(index)]] of launch L. */
static mbuf *add_buf(mctx *m, int L, int index, const char *name, int role, tr_dtype dt, size_t bytes,
                     const void *init)
{
    mbuf *b = alloc_buf(m, L, index, name, role, dt, bytes, init);
    if (b && tr_mtl_set_buffer(m->L[L].args, index, mb_data(b), bytes, m->err) != TR_OK)
        return NULL;
    return b;
}

/* A 1-D R32F texture (TEX adapter: the grid, nearest filtering, unnormalized coordinates in the kernel's sampler). */
static mbuf *add_tex1d(mctx *m, int L, int index, const char *name, const float *data, uint32_t width)
{
    mbuf *b = alloc_buf(m, L, index, name, MB_IN, TR_DT_F32, (size_t)width * 4, data);
    if (!b)
        return NULL;
    b->texture = 1;
    b->tex.data = mb_data(b);
    b->tex.type = 1;
    b->tex.format = TR_MTL_R32F;
    b->tex.width = width;
    b->tex.height = 1;
    b->tex.array_length = 1;
    if (tr_mtl_set_texture(m->L[L].args, index, &b->tex, m->err) != TR_OK)
        return NULL;
    return b;
}

/* A scalar argument (setBytes) encoded as the kernel declares it: float, half, 8/16/32/64-bit integers. */
static int scalar(mctx *m, int L, int index, double v)
{
    const tr_mtl_param *p = tr_mtl_param_at(m->mv->k, TR_MTL_BUFFER, index);
    int dt = p ? p->dtype : (int)TR_DT_U32;
    unsigned char b[8] = {0};
    size_t n = 4;
    if (dt == TR_DT_F32) {
        float f = (float)v;
        memcpy(b, &f, 4);
    } else if (dt == TR_DT_F16) {
        uint16_t h = tr_f64_to_f16(v);
        memcpy(b, &h, 2);
        n = 2;
    } else if (dt == TR_DT_U8 || dt == TR_DT_I8 || dt == TR_DT_BOOL) {
        b[0] = (unsigned char)(int64_t)v;
        n = 1;
    } else if (dt == TR_DT_U16 || dt == TR_DT_I16) {
        uint16_t s = (uint16_t)(int64_t)v;
        memcpy(b, &s, 2);
        n = 2;
    } else if (dt == TR_DT_U64 || dt == TR_DT_I64) {
        uint64_t q = (uint64_t)(int64_t)v;
        memcpy(b, &q, 8);
        n = 8;
    } else {
        uint32_t u = (uint32_t)(int64_t)v;
        memcpy(b, &u, 4);
    }
    return tr_mtl_set_bytes(m->L[L].args, index, b, n, m->err);
}

static int scalars(mctx *m, int L, int first, int n, ...)
{
    va_list ap;
    va_start(ap, n);
    int rc = TR_OK;
    for (int i = 0; i < n && rc == TR_OK; i++)
        rc = scalar(m, L, first + i, va_arg(ap, double));
    va_end(ap);
    return rc;
}

/* f32 values (f16-exact by the H16 generators, or the activations of a Metal linear) as f16 bits. */
static uint16_t *to_f16(const tr_buf *b)
{
    uint64_t n = tr_buf_numel(b);
    uint16_t *h = tr_malloc((size_t)(n ? n : 1) * 2);
    for (uint64_t i = 0; h && i < n; i++)
        h[i] = b->dtype == TR_DT_F16 ? ((const uint16_t *)(const void *)b->data)[i]
                                     : tr_f32_to_f16(((const float *)(const void *)b->data)[i]);
    return h;
}

static mbuf *in_f16(mctx *m, int L, int index, const char *name, const tr_buf *src)
{
    uint16_t *h = to_f16(src);
    if (!h) {
        tr_fail(m->err, TR_E_NOMEM, m->c->id, "out of memory");
        return NULL;
    }
    mbuf *b = add_buf(m, L, index, name, MB_IN, TR_DT_F16, (size_t)tr_buf_numel(src) * 2, h);
    tr_dealloc(h);
    return b;
}

static mbuf *in_copy(mctx *m, int L, int index, const char *name, const tr_buf *src)
{
    return add_buf(m, L, index, name, MB_IN, src->dtype, src->bytes, src->data);
}

/* A quantized linear "<p>" of the case: dims, bits, buffers. */
typedef struct qlin {
    uint32_t O, I, bits, G;
    const tr_buf *ind, *S, *su, *sv;
} qlin;

static int qlin_get(mctx *m, const char *p, qlin *q)
{
    char n[48];
    snprintf(n, sizeof n, "%s.indices", p);
    q->ind = IN(m, n);
    snprintf(n, sizeof n, "%s.scales", p);
    q->S = IN(m, n);
    snprintf(n, sizeof n, "%s.su", p);
    q->su = IN(m, n);
    snprintf(n, sizeof n, "%s.sv", p);
    q->sv = IN(m, n);
    if (!q->ind || !q->S || !q->su || !q->sv || q->ind->bytes < 1)
        return failf(m, "weight %s missing", p);
    q->O = (uint32_t)q->sv->shape[0];
    q->I = (uint32_t)q->su->shape[0];
    q->bits = q->ind->data[0];
    q->G = (uint32_t)q->S->shape[0];
    return TR_OK;
}

static size_t pk_bytes(const qlin *q) { return (size_t)tr_packed_body_bytes(q->O, q->I, q->bits); }

/* PK adapter: the packed body in GEMM tile order. */
static mbuf *in_pk(mctx *m, int L, int index, const char *name, const qlin *q)
{
    size_t n = pk_bytes(q);
    uint8_t *pk = tr_malloc(n ? n : 1);
    if (!pk) {
        tr_fail(m->err, TR_E_NOMEM, m->c->id, "out of memory");
        return NULL;
    }
    tr_adapt_pk(q->ind->data, q->O, q->I, pk);
    mbuf *b = add_buf(m, L, index, name, MB_IN, TR_DT_U8, n, pk);
    tr_dealloc(pk);
    return b;
}

static mbuf *in_grid_f32(mctx *m, int L, int index, unsigned bits)
{
    return add_buf(m, L, index, "grid", MB_IN, TR_DT_F32, ((size_t)1 << bits) * 4, tr_grid(bits));
}

static mbuf *in_grid_f16(mctx *m, int L, int index, unsigned bits)
{
    uint16_t h[256];
    for (unsigned j = 0; j < (1u << bits); j++)
        h[j] = tr_f32_to_f16(tr_grid(bits)[j]);
    return add_buf(m, L, index, "grid", MB_IN, TR_DT_F16, ((size_t)1 << bits) * 2, h);
}

static mbuf *find_buf(mctx *m, const char *name)
{
    for (int i = 0; i < m->nb; i++)
        if (!strcmp(m->b[i].name, name))
            return &m->b[i];
    return NULL;
}

/* Copy a variant output that already has the canonical layout and dtype. */
static void copy_out(mctx *m, const char *vname, const char *cname)
{
    mbuf *b = find_buf(m, vname);
    tr_buf *o = OUT(m, cname);
    if (b && o)
        memcpy(o->data, mb_data(b), o->bytes < b->bytes ? o->bytes : b->bytes);
}

/* Vector width of a builtin parameter the kernel declares (0: not declared). */
static int builtin_width(const tr_mtl_kernel *k, const char *name)
{
    for (int i = 0; i < k->nparams; i++)
        if (k->params[i].kind == TR_MTL_BUILTIN && k->params[i].builtin && !strcmp(k->params[i].builtin, name))
            return k->params[i].vec_width ? k->params[i].vec_width : 1;
    return 0;
}

/* ---- dequant_grid (KERNELS.md §4.1) --------------------------------------------------------------------------------- */

static void dequant_finish(mctx *m)
{
    qlin q;
    if (qlin_get(m, "w", &q) != TR_OK)
        return;
    uint32_t K = q.I, N = q.O, TO = tr_tiles_of(N);
    const uint16_t *o = (const uint16_t *)(const void *)mb_data(find_buf(m, "out"));
    uint16_t *w = (uint16_t *)(void *)OUT(m, "w16")->data;
    int bulk = !strcmp(m->mv->v.binding, "DQ_BULK");
    for (uint32_t k0 = 0; k0 < K; k0 += 16)   /* by 16×16 blocks: the transpose stays in cache */
        for (uint32_t n0 = 0; n0 < N; n0 += 16)
            for (uint32_t n = n0; n < N && n < n0 + 16; n++)
                for (uint32_t k = k0; k < K && k < k0 + 16; k++)
                    w[(size_t)n * K + k] = bulk ? o[((size_t)(k / 16) * TO + n / 16) * 256 + (k % 16) * 16 + n % 16]
                                                : o[(size_t)k * N + n];
}

static int dequant_prepare(mctx *m)
{
    qlin q;
    int rc = qlin_get(m, "w", &q);
    if (rc != TR_OK)
        return rc;
    const char *fam = m->mv->v.binding, *launch = m->mv->v.launch;
    uint32_t K = q.I, N = q.O, TI = tr_tiles_of(K), TO = tr_tiles_of(N), gs = P(m, "gs", 128);
    int L = new_launch(m);
    if (L < 0)
        return m->err->code;
    double nl = (double)(1u << q.bits);
    size_t out_bytes = (size_t)K * N * 2;
    int ok = 1;
    if (!strcmp(fam, "DQ_PK") || !strcmp(fam, "DQ_TEX")) {
        int tex = !strcmp(fam, "DQ_TEX"), o = tex ? -1 : 0;
        ok = in_pk(m, L, 0, "packed", &q) && in_copy(m, L, 1, "S", q.S) &&
             (tex ? add_tex1d(m, L, 0, "grid", tr_grid(q.bits), 1u << q.bits) != NULL
                  : in_grid_f32(m, L, 2, q.bits) != NULL) &&
             in_copy(m, L, 3 + o, "su", q.su) && in_copy(m, L, 4 + o, "sv", q.sv) &&
             add_buf(m, L, 5 + o, "out", MB_OUT, TR_DT_F16, out_bytes, NULL) &&
             scalars(m, L, 6 + o, 5, (double)K, (double)N, nl, (double)q.bits, (double)gs) == TR_OK;
    } else {
        size_t ntiles = (size_t)TI * TO;
        int16_t *idx = tr_malloc(ntiles * 256 * 2 + 2);
        if (!idx)
            return tr_fail(m->err, TR_E_NOMEM, m->c->id, "out of memory");
        tr_adapt_i16(q.ind->data, q.O, q.I, idx);
        ok = add_buf(m, L, 0, "idx", MB_IN, TR_DT_I16, ntiles * 512, idx) != NULL;
        tr_dealloc(idx);
        if (ok && !strcmp(fam, "DQ_BULK")) {
            float *ts = tr_malloc(ntiles * 4 + 4);
            if (!ts)
                return tr_fail(m->err, TR_E_NOMEM, m->c->id, "out of memory");
            tr_adapt_bulk_scales((const float *)(const void *)q.S->data, q.O, q.I, gs, ts);
            ok = add_buf(m, L, 1, "S", MB_IN, TR_DT_F32, ntiles * 4, ts) && in_grid_f32(m, L, 2, q.bits) &&
                 add_buf(m, L, 3, "out", MB_OUT, TR_DT_F16, ntiles * 512, NULL) &&
                 scalars(m, L, 4, 2, (double)ntiles, nl) == TR_OK;
            tr_dealloc(ts);
        } else if (ok && !strcmp(fam, "DQ_I16S"))
            ok = in_copy(m, L, 1, "S", q.S) && in_grid_f32(m, L, 2, q.bits) && in_copy(m, L, 3, "su", q.su) &&
                 in_copy(m, L, 4, "sv", q.sv) && add_buf(m, L, 5, "out", MB_OUT, TR_DT_F16, out_bytes, NULL) &&
                 scalars(m, L, 6, 4, (double)K, (double)N, nl, (double)gs) == TR_OK;
        else if (ok)
            ok = in_copy(m, L, 1, "S", q.S) && in_grid_f32(m, L, 2, q.bits) &&
                 add_buf(m, L, 3, "out", MB_OUT, TR_DT_F16, out_bytes, NULL) &&
                 scalars(m, L, 4, 4, (double)K, (double)N, nl, (double)gs) == TR_OK;
    }
    if (!ok)
        return m->err->code ? m->err->code : TR_E_NOMEM;
    if (!strcmp(launch, "TG16"))
        geom(m, L, CEIL(N, 16), CEIL(K, 16), 1, 16, 16, 1);
    else if (!strcmp(launch, "TG16V4"))
        geom(m, L, CEIL(N, 16), CEIL(CEIL(K, 4), 16), 1, 16, 16, 1);
    else if (!strcmp(launch, "TG16A4"))
        geom(m, L, CEIL(CEIL(N, 4), 16), CEIL(K, 16), 1, 16, 16, 1);
    else if (!strcmp(launch, "TILE64") || !strcmp(launch, "TILE256")) {
        /* one threadgroup per 16×16 tile: a kernel that reads threadgroup_position_in_grid as uint2/uint3 gets the
         * grid (T_O, T_I); one that reads a scalar tile id gets T_I·T_O groups in GEMM tile order (id = ti·T_O+to) */
        uint32_t tgs = !strcmp(launch, "TILE64") ? 64 : 256;
        if (builtin_width(m->mv->k, "threadgroup_position_in_grid") >= 2)
            geom(m, L, TO, TI, 1, tgs, 1, 1);
        else
            geom(m, L, TI * TO, 1, 1, tgs, 1, 1);
    } else if (!strcmp(launch, "BULK"))
        geom(m, L, TI * TO, 1, 1, 256, 1, 1);
    else
        return failf(m, "launch %s does not fit binding %s", launch, fam);
    m->finish = dequant_finish;
    return TR_OK;
}

/* ---- sign_flip (§4.2): in place, the runner copies the input into the output buffer first ---------------------- */

static void out_finish(mctx *m) { copy_out(m, "out", "out"); }

static int sign_prepare(mctx *m)
{
    const tr_buf *w = IN(m, "w"), *su = IN(m, "su"), *sv = IN(m, "sv");
    uint32_t K = (uint32_t)w->shape[0], N = (uint32_t)w->shape[1];
    int L = new_launch(m);
    if (L < 0)
        return m->err->code;
    if (!add_buf(m, L, 0, "out", MB_INOUT, TR_DT_F16, w->bytes, w->data) || !in_copy(m, L, 1, "su", su) ||
        !in_copy(m, L, 2, "sv", sv) || scalars(m, L, 3, 2, (double)K, (double)N) != TR_OK)
        return m->err->code;
    if (!strcmp(m->mv->v.launch, "TG16A4"))
        geom(m, L, CEIL(CEIL(N, 4), 16), CEIL(K, 16), 1, 16, 16, 1);
    else
        geom(m, L, CEIL(N, 16), CEIL(K, 16), 1, 16, 16, 1);
    m->finish = out_finish;
    return TR_OK;
}

/* ---- hadamard (§4.3) -------------------------------------------------------------------------------------------- */

static int had_prepare(mctx *m)
{
    const char *fam = m->mv->v.binding;
    const tr_buf *x = IN(m, "x"), *pre = IN(m, "prescale"), *post = IN(m, "postscale");
    uint32_t n = P(m, "n", 64), R = P(m, "R", 1), N = P(m, "N", 1), K = P(m, "Km", 1) * n;
    int L = new_launch(m), ok;
    double ortho = tr_params_is(&m->c->params, "norm", "ortho") ? 1.0 : 0.0;
    if (L < 0)
        return m->err->code;
    if (!strcmp(fam, "HAD_ROWS"))
        ok = in_copy(m, L, 0, "x", x) && add_buf(m, L, 1, "out", MB_OUT, x->dtype, x->bytes, NULL) &&
             scalars(m, L, 2, 2, (double)R, ortho) == TR_OK;
    else if (!strcmp(fam, "HAD_ROWS_SCALED"))
        ok = in_copy(m, L, 0, "x", x) && in_copy(m, L, 1, "scales", pre ? pre : post) &&
             add_buf(m, L, 2, "out", MB_OUT, x->dtype, x->bytes, NULL) &&
             scalars(m, L, 3, 2, (double)R, pre ? 1.0 : 0.0) == TR_OK;
    else if (!strcmp(fam, "HAD_ROWS3"))
        ok = in_copy(m, L, 0, "x", x) && add_buf(m, L, 1, "out", MB_OUT, x->dtype, x->bytes, NULL) &&
             scalar(m, L, 2, (double)R) == TR_OK;
    else
        ok = in_copy(m, L, 0, "x", x) && add_buf(m, L, 1, "out", MB_OUT, x->dtype, x->bytes, NULL) &&
             scalars(m, L, 2, 2, (double)K, (double)N) == TR_OK &&
             (strcmp(fam, "HAD_COLS_BS") || scalar(m, L, 4, (double)n) == TR_OK);
    if (!ok)
        return m->err->code;
    if (!strncmp(fam, "HAD_ROWS", 8))
        geom(m, L, R, 1, 1, 32, 1, 1);
    else {
        geom(m, L, N, K / n, n == 96 || n == 160 || n == 192 ? 2 : 1, 32, 1, 1);
        m->L[L].dispatch_threads = 1;
    }
    m->finish = out_finish;
    return TR_OK;
}

/* ---- gemm_trellis, _swiglu, _qkv (§4.4–§4.6): PK, A and C f16 ----------------------------------------------------- */

static void gemm_geom(mctx *m, int L, uint32_t N, uint32_t M)
{
    if (!strcmp(m->mv->v.launch, "G32D") || !strcmp(m->mv->v.launch, "QKV"))
        geom(m, L, CEIL(N, 128), CEIL(M, 32), 1, 128, 1, 1);
    else
        geom(m, L, CEIL(N, 128), CEIL(M, 128), 1, 256, 1, 1);
}

static void gemm_finish(mctx *m) { copy_out(m, "C", "y"); }

static int gemm_prepare(mctx *m)
{
    qlin q;
    int rc = qlin_get(m, "w", &q);
    if (rc != TR_OK)
        return rc;
    const tr_buf *x = IN(m, "x");
    uint32_t M = (uint32_t)x->shape[0], K = q.I, N = q.O, gs = P(m, "gs", 128);
    int L = new_launch(m), b2 = !strcmp(m->mv->v.binding, "GEMM_B2");
    if (L < 0)
        return m->err->code;
    int ok = in_f16(m, L, 0, "A", x) && in_pk(m, L, 1, "packed", &q) && in_copy(m, L, 2, "S", q.S) &&
             in_grid_f32(m, L, 3, q.bits) && in_copy(m, L, 4, "su", q.su) && in_copy(m, L, 5, "sv", q.sv) &&
             add_buf(m, L, 6, "C", MB_OUT, TR_DT_F16, (size_t)M * N * 2, NULL) &&
             scalars(m, L, 7, 3, (double)M, (double)K, (double)N) == TR_OK &&
             (b2 ? scalar(m, L, 10, (double)gs)
                 : scalars(m, L, 10, 3, (double)q.bits, (double)(1u << q.bits), (double)gs)) == TR_OK;
    if (!ok)
        return m->err->code;
    gemm_geom(m, L, N, M);
    m->finish = gemm_finish;
    return TR_OK;
}

static void swiglu_finish(mctx *m) { copy_out(m, "C", "s"); }

static int swiglu_prepare(mctx *m)
{
    qlin g, u;
    int rc = qlin_get(m, "gate", &g);
    if (rc == TR_OK)
        rc = qlin_get(m, "up", &u);
    if (rc != TR_OK)
        return rc;
    const tr_buf *x = IN(m, "x");
    uint32_t M = (uint32_t)x->shape[0], K = g.I, N = g.O;
    int L = new_launch(m);
    if (L < 0)
        return m->err->code;
    int ok = in_f16(m, L, 0, "A", x) && in_pk(m, L, 1, "packed_gate", &g) && in_copy(m, L, 2, "S_gate", g.S) &&
             in_pk(m, L, 3, "packed_up", &u) && in_copy(m, L, 4, "S_up", u.S) && in_grid_f32(m, L, 5, g.bits) &&
             in_copy(m, L, 6, "su", g.su) && in_copy(m, L, 7, "sv", g.sv) &&
             add_buf(m, L, 8, "C", MB_OUT, TR_DT_F16, (size_t)M * N * 2, NULL) &&
             scalars(m, L, 9, 6, (double)M, (double)K, (double)N, (double)g.bits, (double)(1u << g.bits), 128.0) ==
                 TR_OK;
    if (!ok)
        return m->err->code;
    gemm_geom(m, L, N, M);
    m->finish = swiglu_finish;
    return TR_OK;
}

static void qkv_finish(mctx *m)
{
    copy_out(m, "Cq", "q");
    copy_out(m, "Ck", "k");
    copy_out(m, "Cv", "v");
}

static int qkv_prepare(mctx *m)
{
    static const char *const proj[3] = {"q", "k", "v"}, *const keys[3] = {"Nq", "Nk", "Nv"};
    const tr_buf *x = IN(m, "x");
    uint32_t M = (uint32_t)x->shape[0], K = (uint32_t)x->shape[1], Ns[3], bits = P(m, "b", 4), maxN = 0;
    int L = new_launch(m);
    if (L < 0 || !in_f16(m, L, 0, "A", x))
        return m->err->code;
    for (int p = 0; p < 3; p++) {
        Ns[p] = P(m, keys[p], 0);
        maxN = Ns[p] > maxN ? Ns[p] : maxN;
        char n[4][16];
        snprintf(n[0], 16, "packed_%s", proj[p]);
        snprintf(n[1], 16, "S_%s", proj[p]);
        snprintf(n[2], 16, "su_%s", proj[p]);
        snprintf(n[3], 16, "sv_%s", proj[p]);
        qlin q;
        int ok;
        if (Ns[p]) {
            if (qlin_get(m, proj[p], &q) != TR_OK)
                return m->err->code;
            ok = in_pk(m, L, 1 + 4 * p, n[0], &q) && in_copy(m, L, 2 + 4 * p, n[1], q.S) &&
                 in_copy(m, L, 3 + 4 * p, n[2], q.su) && in_copy(m, L, 4 + 4 * p, n[3], q.sv);
        } else   /* a projection with 0 outputs: empty buffers */
            ok = add_buf(m, L, 1 + 4 * p, n[0], MB_IN, TR_DT_U8, 0, NULL) &&
                 add_buf(m, L, 2 + 4 * p, n[1], MB_IN, TR_DT_F32, 0, NULL) &&
                 add_buf(m, L, 3 + 4 * p, n[2], MB_IN, TR_DT_F32, 0, NULL) &&
                 add_buf(m, L, 4 + 4 * p, n[3], MB_IN, TR_DT_F32, 0, NULL);
        char cn[8];
        snprintf(cn, sizeof cn, "C%s", proj[p]);
        if (!ok || !add_buf(m, L, 14 + p, cn, MB_OUT, TR_DT_F16, (size_t)M * Ns[p] * 2, NULL))
            return m->err->code;
    }
    if (!in_grid_f32(m, L, 13, bits) ||
        scalars(m, L, 17, 8, (double)M, (double)K, (double)Ns[0], (double)Ns[1], (double)Ns[2], (double)bits,
                (double)(1u << bits), 128.0) != TR_OK)
        return m->err->code;
    gemm_geom(m, L, maxN, M);
    m->finish = qkv_finish;
    return TR_OK;
}

/* ---- STACK + H16 (§3): expert stacks for expert_ffn and moe_swiglu -------------------------------------------- */

/* Bind slots 1–13 of the MoE family for the experts ids[0..n) (global ids; local id = position): per projection the
 * PK bodies concatenated, scales f16 [E][G][N], su f16 [E][K], sv f16 [E][N], and the f16 grid of the gate width. */
static int bind_stack(mctx *m, int L, const int *ids, int n, unsigned bits_out[3], size_t *expert_bytes)
{
    static const char *const proj[3] = {"gate", "up", "down"};
    qlin q0[3];
    for (int p = 0; p < 3; p++) {
        char name[32];
        snprintf(name, sizeof name, "e%d.%s", ids[0], proj[p]);
        if (qlin_get(m, name, &q0[p]) != TR_OK)
            return m->err->code;
        bits_out[p] = q0[p].bits;
    }
    for (int p = 0; p < 3; p++) {
        size_t body = pk_bytes(&q0[p]), sn = (size_t)q0[p].G * q0[p].O, kn = q0[p].I, nn = q0[p].O;
        uint8_t *w = tr_malloc(body * (size_t)n + 1);
        uint16_t *S = tr_malloc(sn * (size_t)n * 2 + 2), *su = tr_malloc(kn * (size_t)n * 2 + 2),
                 *sv = tr_malloc(nn * (size_t)n * 2 + 2);
        int ok = w && S && su && sv;
        for (int e = 0; ok && e < n; e++) {
            char name[32];
            snprintf(name, sizeof name, "e%d.%s", ids[e], proj[p]);
            qlin q;
            if (qlin_get(m, name, &q) != TR_OK || q.bits != q0[p].bits || pk_bytes(&q) != body) {
                ok = 0;
                failf(m, "expert %d: %s differs from the stack's tuple", ids[e], proj[p]);
                break;
            }
            tr_adapt_pk(q.ind->data, q.O, q.I, w + body * (size_t)e);
            for (size_t i = 0; i < sn; i++)
                S[sn * e + i] = tr_f32_to_f16(((const float *)(const void *)q.S->data)[i]);
            for (size_t i = 0; i < kn; i++)
                su[kn * e + i] = tr_f32_to_f16(((const float *)(const void *)q.su->data)[i]);
            for (size_t i = 0; i < nn; i++)
                sv[nn * e + i] = tr_f32_to_f16(((const float *)(const void *)q.sv->data)[i]);
        }
        char nw[16], ns[16], nu[16], nv[16];
        snprintf(nw, 16, "%s_w", proj[p]);
        snprintf(ns, 16, "%s_S", proj[p]);
        snprintf(nu, 16, "%s_su", proj[p]);
        snprintf(nv, 16, "%s_sv", proj[p]);
        ok = ok && add_buf(m, L, 1 + 2 * p, nw, MB_IN, TR_DT_U8, body * (size_t)n, w) &&
             add_buf(m, L, 2 + 2 * p, ns, MB_IN, TR_DT_F16, sn * (size_t)n * 2, S) &&
             add_buf(m, L, 7 + 2 * p, nu, MB_IN, TR_DT_F16, kn * (size_t)n * 2, su) &&
             add_buf(m, L, 8 + 2 * p, nv, MB_IN, TR_DT_F16, nn * (size_t)n * 2, sv);
        tr_dealloc(w);
        tr_dealloc(S);
        tr_dealloc(su);
        tr_dealloc(sv);
        if (!ok)
            return m->err->code ? m->err->code : tr_fail(m->err, TR_E_NOMEM, m->c->id, "out of memory");
        if (p == 0)
            *expert_bytes = body;
    }
    return in_grid_f16(m, L, 13, bits_out[0]) ? TR_OK : m->err->code;
}

/* MoEParams (12 × u32): batch, hidden, intermediate, num_experts, top_k, gate/up/down bits, group_size, 2^bits ×3. */
static int moe_params(mctx *m, int L, int index, uint32_t batch, uint32_t H, uint32_t I, uint32_t E, uint32_t k,
                      const unsigned bits[3])
{
    uint32_t p[12] = {batch, H, I, E, k, bits[0], bits[1], bits[2], 128, 1u << bits[0], 1u << bits[1], 1u << bits[2]};
    return tr_mtl_set_bytes(m->L[L].args, index, p, sizeof p, m->err);
}

static void fused_expert_finish(mctx *m)
{
    const float *o = (const float *)(const void *)mb_data(find_buf(m, "out"));
    tr_buf *y = OUT(m, "y");
    uint64_t n = tr_buf_numel(y);
    for (uint64_t i = 0; i < n; i++) {
        if (y->dtype == TR_DT_F16)   /* acc f16: the f32 output holds the f16 result (exact narrowing) */
            ((uint16_t *)(void *)y->data)[i] = tr_f32_to_f16(o[i]);
        else
            ((float *)(void *)y->data)[i] = o[i];
    }
}

static int fused_expert_prepare(mctx *m)
{
    const tr_buf *x = IN(m, "x");
    uint32_t R = (uint32_t)x->shape[0], H = (uint32_t)x->shape[1], I = P(m, "I", 16);
    int L = new_launch(m), id0 = 0;
    unsigned bits[3];
    size_t eb;
    if (L < 0 || !in_f16(m, L, 0, "x", x) || bind_stack(m, L, &id0, 1, bits, &eb) != TR_OK ||
        !add_buf(m, L, 14, "out", MB_OUT, TR_DT_F32, (size_t)R * H * 4, NULL) ||
        scalars(m, L, 15, 6, (double)R, (double)H, (double)I, 0.0, 128.0, (double)(1u << bits[0])) != TR_OK)
        return m->err->code;
    geom(m, L, CEIL(H, 64), R, 1, 256, 1, 1);
    m->finish = fused_expert_finish;
    return TR_OK;
}

/* moe_swiglu: flat launches (one per tuple group; rows (t, j), top_k 1) combined here in canonical order, or one
 * slotted / grouped launch whose zero-filled output the kernel accumulates into. */
typedef struct moe_priv {
    int flat;
    uint32_t T, k, H;
    int *group_of;             /* [T·k] launch of slot f */
    uint32_t *row_of;          /* [T·k] row of slot f in its launch */
    char out_name[ML_MAX][16];
} moe_priv;

static void moe_finish(mctx *m)
{
    moe_priv *p = m->priv;
    tr_buf *o = OUT(m, "out");
    if (!p->flat) {
        copy_out(m, p->out_name[0], "out");
        return;
    }
    float *out = (float *)(void *)o->data;
    for (uint32_t t = 0; t < p->T; t++)
        for (uint32_t h = 0; h < p->H; h++) {
            float acc = 0.0f;   /* out_t = SEQ over j of c_tj from +0 (KERNELS.md §4.8) */
            for (uint32_t j = 0; j < p->k; j++) {
                size_t f = (size_t)t * p->k + j;
                const float *rows = (const float *)(const void *)mb_data(find_buf(m, p->out_name[p->group_of[f]]));
                acc = acc + rows[(size_t)p->row_of[f] * p->H + h];
            }
            out[(size_t)t * p->H + h] = acc;
        }
}

static void moe_geom(mctx *m, int L, uint32_t H, uint32_t batch, uint32_t k, uint32_t E)
{
    const char *l = m->mv->v.launch;
    if (!strcmp(l, "MOE_LB"))
        geom(m, L, CEIL(H, 128), batch, k, 128, 1, 1);
    else if (!strcmp(l, "MOE_DEC"))
        geom(m, L, CEIL(H, 64), k, 1, 128, 1, 1);
    else if (!strcmp(l, "MOE_P4"))
        geom(m, L, CEIL(H, 64), CEIL(batch, 4), k, 128, 1, 1);
    else if (!strcmp(l, "MOE_GROUPED"))
        geom(m, L, CEIL(H, 64), E, 1, 128, 1, 1);
    else if (!strcmp(l, "MOE_MIXED"))
        geom(m, L, CEIL(H, 64), batch, k, 256, 1, 1);
    else
        geom(m, L, CEIL(H, 64), batch, k, 128, 1, 1);
}

/* One launch over the experts ids[0..n) and the given rows: x rows, local ids and probabilities per slot. */
static int moe_launch(mctx *m, const int *ids, int n, uint32_t batch, uint32_t k, const uint16_t *x,
                      const uint32_t *local, const uint16_t *probs, const char *out_name)
{
    const char *fam = m->mv->v.binding;
    uint32_t H = P(m, "H", 16), I = P(m, "I", 16), E = (uint32_t)n;
    int L = new_launch(m);
    unsigned bits[3];
    size_t eb;
    if (L < 0)
        return m->err->code;
    if (!add_buf(m, L, 0, "x", MB_IN, TR_DT_F16, (size_t)batch * H * 2, x) ||
        bind_stack(m, L, ids, n, bits, &eb) != TR_OK)
        return m->err->code;
    if (!add_buf(m, L, 14, "expert_ids", MB_IN, TR_DT_U32, (size_t)batch * k * 4, local) ||
        !add_buf(m, L, 15, "probs", MB_IN, TR_DT_F16, (size_t)batch * k * 2, probs) ||
        !add_buf(m, L, 16, out_name, MB_ACC, TR_DT_F32, (size_t)batch * H * 4, NULL) ||
        moe_params(m, L, 17, batch, H, I, E, k, bits) != TR_OK)
        return m->err->code;
    if (!strcmp(fam, "MOE_MIXED")) {
        uint8_t eb8[256];
        uint32_t offs[256];
        for (int e = 0; e < n && e < 256; e++) {
            eb8[e] = (uint8_t)bits[0];
            offs[e] = (uint32_t)(eb * (size_t)e);
        }
        if (!add_buf(m, L, 21, "expert_bits", MB_IN, TR_DT_U8, (size_t)n, eb8) ||
            !add_buf(m, L, 22, "weight_offsets", MB_IN, TR_DT_U32, (size_t)n * 4, offs))
            return m->err->code;
    }
    moe_geom(m, L, H, batch, k, E);
    return TR_OK;
}

/* The grouped kernel's inputs (MOE.md §3.5): the stable counting sort of the local ids gives rows r = 0..N-1;
 * A[r] = x[token(r)] is the gathered activation matrix, the kernel's sorted_token_ids binding is r itself (the row
 * of A and of the output), offsets the local segments, sorted probs the f16 probabilities.  Each output row has one
 * writer; moe_finish combines the rows of a token in slot order (row of slot f = inverse[f]). */
typedef struct grouped_in {
    int32_t *lid;
    float *pf, *sp;
    uint32_t *sorted, *inv, *off, *rows;
    uint16_t *A, *sph;
} grouped_in;

static void grouped_free(grouped_in *g)
{
    tr_dealloc(g->lid);
    tr_dealloc(g->pf);
    tr_dealloc(g->sp);
    tr_dealloc(g->sorted);
    tr_dealloc(g->inv);
    tr_dealloc(g->off);
    tr_dealloc(g->rows);
    tr_dealloc(g->A);
    tr_dealloc(g->sph);
}

static int grouped_sort(mctx *m, grouped_in *g, uint32_t T, uint32_t k, uint32_t E, uint32_t H, const uint16_t *x,
                        const uint32_t *local, const uint16_t *probs)
{
    uint32_t N = T * k;
    g->lid = tr_malloc((size_t)N * 4 + 4);
    g->pf = tr_malloc((size_t)N * 4 + 4);
    g->sp = tr_malloc((size_t)N * 4 + 4);
    g->sorted = tr_malloc((size_t)N * 4 + 4);
    g->inv = tr_malloc((size_t)N * 4 + 4);
    g->off = tr_malloc((size_t)(E + 1) * 4);
    g->rows = tr_malloc((size_t)N * 4 + 4);
    g->A = tr_malloc((size_t)N * H * 2 + 2);
    g->sph = tr_malloc((size_t)N * 2 + 2);
    if (!g->lid || !g->pf || !g->sp || !g->sorted || !g->inv || !g->off || !g->rows || !g->A || !g->sph)
        return tr_fail(m->err, TR_E_NOMEM, m->c->id, "out of memory");
    for (uint32_t f = 0; f < N; f++) {
        g->lid[f] = (int32_t)local[f];
        g->pf[f] = tr_f16_to_f32(probs[f]);
    }
    tr_grouping gr = {0, 0, 0, 0, g->sorted, g->off, g->sp, g->inv};
    int rc = tr_ref_moe_group(g->lid, g->pf, T, k, E, &gr, m->err);
    for (uint32_t r = 0; rc == TR_OK && r < N; r++) {
        g->rows[r] = r;
        g->sph[r] = tr_f32_to_f16(g->sp[r]);
        memcpy(g->A + (size_t)r * H, x + (size_t)(g->sorted[r] / k) * H, (size_t)H * 2);
    }
    return rc;
}

static int moe_launch_grouped(mctx *m, const int *ids, int n, uint32_t T, uint32_t k, const uint16_t *x,
                              const uint32_t *local, const uint16_t *probs)
{
    moe_priv *p = m->priv;
    uint32_t H = P(m, "H", 16), I = P(m, "I", 16), E = (uint32_t)n, N = T * k;
    grouped_in g;
    memset(&g, 0, sizeof g);
    int L = new_launch(m), rc = L < 0 ? m->err->code : grouped_sort(m, &g, T, k, E, H, x, local, probs);
    unsigned bits[3];
    size_t eb;
    if (rc == TR_OK && !(add_buf(m, L, 0, "x", MB_IN, TR_DT_F16, (size_t)N * H * 2, g.A) &&
                         bind_stack(m, L, ids, n, bits, &eb) == TR_OK &&
                         add_buf(m, L, 14, "sorted_token_ids", MB_IN, TR_DT_U32, (size_t)N * 4, g.rows) &&
                         add_buf(m, L, 15, "offsets", MB_IN, TR_DT_U32, (size_t)(E + 1) * 4, g.off) &&
                         add_buf(m, L, 16, "sorted_probs", MB_IN, TR_DT_F16, (size_t)N * 2, g.sph) &&
                         add_buf(m, L, 17, "out0", MB_ACC, TR_DT_F32, (size_t)N * H * 4, NULL) &&
                         moe_params(m, L, 18, N, H, I, E, 1, bits) == TR_OK))
        rc = m->err->code ? m->err->code : TR_E_NOMEM;
    for (uint32_t f = 0; rc == TR_OK && f < N; f++) {
        p->group_of[f] = L;
        p->row_of[f] = g.inv[f];
    }
    if (rc == TR_OK) {
        snprintf(p->out_name[L], sizeof p->out_name[0], "out0");
        moe_geom(m, L, H, N, 1, E);
    }
    grouped_free(&g);
    return rc;
}

static void moe_priv_free(moe_priv *p)
{
    if (!p)
        return;
    tr_dealloc(p->group_of);
    tr_dealloc(p->row_of);
    tr_dealloc(p);
}

static int moe_prepare(mctx *m)
{
    const tr_buf *xb = IN(m, "x"), *idb = IN(m, "ids"), *pb = IN(m, "probs");
    uint32_t T = (uint32_t)xb->shape[0], H = (uint32_t)xb->shape[1], k = (uint32_t)idb->shape[1], E = P(m, "E", 1);
    const int32_t *ids = (const int32_t *)(const void *)idb->data;
    uint16_t *x = to_f16(xb), *pr = to_f16(pb);
    moe_priv *p = tr_calloc(1, sizeof *p);
    int *used = tr_calloc(E + 1, sizeof *used), *list = tr_malloc((E + 1) * sizeof *list);
    int *lidx = tr_malloc((E + 1) * sizeof *lidx);
    uint16_t *xr = tr_malloc((size_t)T * k * H * 2 + 2), *prr = tr_malloc((size_t)T * k * 2 + 2);
    uint32_t *loc = tr_malloc((size_t)T * k * 4 + 4);
    int rc = x && pr && p && used && list && lidx && xr && prr && loc ? TR_OK
                                                                    : tr_fail(m->err, TR_E_NOMEM, m->c->id, "out of memory");
    if (rc == TR_OK) {
        p->T = T;
        p->k = k;
        p->H = H;
        p->flat = (tr_params_is(&m->c->params, "launch", "flat") && !strcmp(m->mv->v.binding, "MOE18")) ||
                  !strcmp(m->mv->v.binding, "MOE_GROUPED");   /* rows combined here in slot order */
        p->group_of = tr_calloc((size_t)T * k + 1, sizeof *p->group_of);
        p->row_of = tr_calloc((size_t)T * k + 1, sizeof *p->row_of);
        if (!p->group_of || !p->row_of)
            rc = tr_fail(m->err, TR_E_NOMEM, m->c->id, "out of memory");
        m->priv = p;
    }
    for (uint32_t f = 0; rc == TR_OK && f < T * k; f++)
        used[ids[f]] = 1;
    int grouped = !strcmp(m->mv->v.binding, "MOE_GROUPED");
    if (rc == TR_OK && p->flat && !grouped) {
        /* one launch per tuple group: experts of that tuple in ascending id order, rows in flat order */
        unsigned done[ML_MAX];
        int ngroups = 0;
        for (uint32_t e = 0; rc == TR_OK && e < E; e++) {
            if (!used[e])
                continue;
            unsigned t = expert_tuple(m, (int)e);
            int seen = 0;
            for (int g = 0; g < ngroups; g++)
                seen |= done[g] == t;
            if (seen)
                continue;
            if (ngroups == ML_MAX) {
                rc = failf(m, "more than %d tuple groups", ML_MAX);
                break;
            }
            done[ngroups] = t;
            int n = 0;
            for (uint32_t e2 = 0; e2 < E; e2++)
                if (used[e2] && expert_tuple(m, (int)e2) == t) {
                    lidx[e2] = n;
                    list[n++] = (int)e2;
                }
            uint32_t rows = 0;
            for (uint32_t f = 0; f < T * k; f++)
                if (expert_tuple(m, ids[f]) == t) {
                    memcpy(xr + (size_t)rows * H, x + (size_t)(f / k) * H, (size_t)H * 2);
                    loc[rows] = (uint32_t)lidx[ids[f]];
                    prr[rows] = pr[f];
                    p->group_of[f] = m->nl;
                    p->row_of[f] = rows++;
                }
            snprintf(p->out_name[m->nl], sizeof p->out_name[0], "out%d", m->nl);
            rc = moe_launch(m, list, n, rows, 1, xr, loc, prr, p->out_name[m->nl]);
            ngroups++;
        }
    } else if (rc == TR_OK) {
        int n = 0;
        for (uint32_t e = 0; e < E; e++)
            if (used[e]) {
                lidx[e] = n;
                list[n++] = (int)e;
            }
        for (uint32_t f = 0; f < T * k; f++)
            loc[f] = (uint32_t)lidx[ids[f]];
        snprintf(p->out_name[0], sizeof p->out_name[0], "out");
        /* foreign kernels add the k slots of a token into one row with atomics, in any order; ours combine them in
         * slot order (canonical), so a schedule-dependent output of ours is a FAIL */
        m->order_free = !grouped && !m->mv->ours;
        rc = grouped ? moe_launch_grouped(m, list, n, T, k, x, loc, pr) : moe_launch(m, list, n, T, k, x, loc, pr, "out");
    }
    tr_dealloc(x);
    tr_dealloc(pr);
    tr_dealloc(used);
    tr_dealloc(list);
    tr_dealloc(lidx);
    tr_dealloc(xr);
    tr_dealloc(prr);
    tr_dealloc(loc);
    if (rc == TR_OK)
        m->finish = moe_finish;
    return rc;
}

/* ---- router_topk (§4.9): one 128-thread threadgroup per token, f16 weights ------------------------------------- */

/* Every variant buffer named like a canonical output is that output, in its layout and dtype. */
static void named_finish(mctx *m)
{
    for (int k = 0; k < m->got->n; k++)
        copy_out(m, m->got->v[k]->name, m->got->v[k]->name);
}

/* Wr f16 [E][H] as the kernel reads it: [E][H] (coalesced, int8) or transposed [H][E]. */
static mbuf *in_router_w(mctx *m, int L, const tr_buf *wr, int transpose)
{
    uint32_t E = (uint32_t)wr->shape[0], H = (uint32_t)wr->shape[1];
    size_t es = tr_dtype_size(wr->dtype);
    if (!transpose)
        return in_copy(m, L, 1, "Wr", wr);
    uint8_t *t = tr_malloc((size_t)E * H * es + 1);
    if (!t) {
        tr_fail(m->err, TR_E_NOMEM, m->c->id, "out of memory");
        return NULL;
    }
    for (uint32_t e = 0; e < E; e++)
        for (uint32_t d = 0; d < H; d++)
            memcpy(t + ((size_t)d * E + e) * es, wr->data + ((size_t)e * H + d) * es, es);
    mbuf *b = add_buf(m, L, 1, "Wr", MB_IN, wr->dtype, (size_t)E * H * es, t);
    tr_dealloc(t);
    return b;
}

/* The fused routers: 0 x, 1 Wr, [2 scale | 2 candidates], ids, w, then T, H, E, [C,] k (no T for RT_INT8_D). */
static int router_fused_bind(mctx *m, int L, uint32_t T, uint32_t E, uint32_t k)
{
    const char *fam = m->mv->v.binding;
    const tr_buf *x = IN(m, "x"), *wr = IN(m, "wr"), *sc = IN(m, "wscale"), *cand = IN(m, "candidates");
    int i8 = !strncmp(fam, "RT_INT8", 7), sp = !strcmp(fam, "RT_SPARSE"), o = i8 || sp;
    if (!x || !wr || (i8 && !sc) || (sp && !cand))
        return failf(m, "router inputs x, wr%s missing", i8 ? ", wscale" : sp ? ", candidates" : "");
    uint32_t H = (uint32_t)x->shape[1], C = cand ? (uint32_t)cand->shape[1] : 0;
    int ok = in_copy(m, L, 0, "x", x) && in_router_w(m, L, wr, !strcmp(fam, "RT_FUSED") || sp) &&
             (!i8 || in_copy(m, L, 2, "scale", sc)) && (!sp || in_copy(m, L, 2, "candidates", cand)) &&
             add_buf(m, L, 2 + o, "ids", MB_OUT, TR_DT_U32, (size_t)T * k * 4, NULL) &&
             add_buf(m, L, 3 + o, "weights", MB_OUT, TR_DT_F16, (size_t)T * k * 2, NULL);
    if (!ok)
        return m->err->code;
    if (!strcmp(fam, "RT_INT8_D"))
        return scalars(m, L, 5, 3, (double)H, (double)E, (double)k);
    if (sp)
        return scalars(m, L, 5, 5, (double)T, (double)H, (double)E, (double)C, (double)k);
    return scalars(m, L, 4 + o, 4, (double)T, (double)H, (double)E, (double)k);
}

static int router_prepare(mctx *m)
{
    uint32_t T = P(m, "T", 1), E = P(m, "E", 1), k = P(m, "k", 1);
    int L = new_launch(m), rc;
    if (L < 0)
        return m->err->code;
    if (!strcmp(m->mv->v.binding, "RT_F16")) {   /* 0 logits f16, 1 ids, 2 w f16, 3 TopKParams {T, E, k} */
        uint32_t prm[3] = {T, E, k};
        rc = in_f16(m, L, 0, "logits", IN(m, "logits")) &&
                     add_buf(m, L, 1, "ids", MB_OUT, TR_DT_U32, (size_t)T * k * 4, NULL) &&
                     add_buf(m, L, 2, "weights", MB_OUT, TR_DT_F16, (size_t)T * k * 2, NULL)
                 ? tr_mtl_set_bytes(m->L[L].args, 3, prm, sizeof prm, m->err)
                 : m->err->code;
    } else
        rc = router_fused_bind(m, L, T, E, k);
    if (rc != TR_OK)
        return rc;
    if (!strcmp(m->mv->v.launch, "ROUTER1"))
        geom(m, L, 1, 1, 1, 128, 1, 1);
    else
        geom(m, L, T, 1, 1, 128, 1, 1);
    m->finish = named_finish;
    return TR_OK;
}

/* ---- grouping (§4.10): 256-thread threadgroups; N = T·k -------------------------------------------------------- */

/* Launches of the element-wise and grouping kernels: N256 one thread per element (⌈n/256⌉ groups), ONE256 one group,
 * E256 one thread per expert. */
static void grp_geom(mctx *m, int L, uint32_t n, uint32_t E)
{
    const char *l = m->mv->v.launch;
    uint32_t groups = !strcmp(l, "ONE256") ? 1 : !strcmp(l, "E256") ? CEIL(E, 256) : CEIL(n, 256);
    geom(m, L, groups, 1, 1, 256, 1, 1);
}

static int group_prepare(mctx *m)
{
    const char *fam = m->mv->v.binding;
    uint32_t T = P(m, "T", 1), k = P(m, "k", 1), E = P(m, "E", 1), N = T * k;
    const tr_buf *ids = IN(m, "ids"), *probs = IN(m, "probs"), *off = IN(m, "offsets"), *counts = IN(m, "counts");
    int L = new_launch(m), ok;
    if (L < 0)
        return m->err->code;
    if (!strcmp(fam, "GRP_COUNT"))
        ok = in_copy(m, L, 0, "expert_ids", ids) && add_buf(m, L, 1, "counts", MB_ACC, TR_DT_U32, (size_t)E * 4, NULL) &&
             scalars(m, L, 2, 2, (double)N, (double)E) == TR_OK;
    else if (!strcmp(fam, "GRP_OFFSETS"))
        ok = in_copy(m, L, 0, "counts_in", counts) &&
             add_buf(m, L, 1, "offsets", MB_OUT, TR_DT_U32, ((size_t)E + 1) * 4, NULL) && scalar(m, L, 2, E) == TR_OK;
    else if (!strcmp(fam, "GRP_VALIDATE"))
        ok = add_buf(m, L, 0, "ids_out", MB_INOUT, TR_DT_I32, ids->bytes, ids->data) &&
             scalars(m, L, 1, 3, (double)N, (double)E, 0.0) == TR_OK;
    else {   /* GRP_SCATTER (flat view: 6 N, 7 E) and GRP_SCATTER_T (token view: 6 T, 7 k, 8 E) */
        int tok = !strcmp(fam, "GRP_SCATTER_T");
        ok = in_copy(m, L, 0, "expert_ids", ids) && in_copy(m, L, 1, "probs", probs) &&
             in_copy(m, L, 2, "offsets_in", off) &&
             add_buf(m, L, 3, "sorted_token_ids", MB_OUT, TR_DT_U32, (size_t)N * 4, NULL) &&
             add_buf(m, L, 4, "sorted_probs", MB_OUT, TR_DT_F32, (size_t)N * 4, NULL) &&
             add_buf(m, L, 5, "inverse", MB_OUT, TR_DT_U32, (size_t)N * 4, NULL) &&
             (tok ? scalars(m, L, 6, 3, (double)T, (double)k, (double)E) : scalars(m, L, 6, 2, (double)N, (double)E)) ==
                 TR_OK;
    }
    if (!ok)
        return m->err->code;
    grp_geom(m, L, N, E);
    m->finish = named_finish;
    return TR_OK;
}

/* ---- gather, combine, cast (§4.11) ------------------------------------------------------------------------------- */

/* GATHER: groups (⌈H/256⌉, rows), TG 256, thread (h, r) copies element h of row r. */
static int gather_prepare(mctx *m)
{
    const tr_buf *x = IN(m, "x"), *tok = IN(m, "tokens");
    uint32_t H = (uint32_t)x->shape[1], N = (uint32_t)tok->shape[0], k = P(m, "k", 1);
    int L = new_launch(m), one = !strcmp(m->mv->v.binding, "GATHER1"), ok;
    if (L < 0)
        return m->err->code;
    if (one)   /* T = 1: 0 x [H], 1 out [k][H], 2 H, 3 k */
        ok = in_copy(m, L, 0, "x", x) && add_buf(m, L, 1, "rows", MB_OUT, TR_DT_F16, (size_t)k * H * 2, NULL) &&
             scalars(m, L, 2, 2, (double)H, (double)k) == TR_OK;
    else
        ok = in_copy(m, L, 0, "x", x) && in_copy(m, L, 1, "tokens", tok) &&
             add_buf(m, L, 2, "rows", MB_OUT, TR_DT_F16, (size_t)N * H * 2, NULL) &&
             scalars(m, L, 3, 2, (double)N, (double)H) == TR_OK;
    if (!ok)
        return m->err->code;
    geom(m, L, CEIL(H, 256), one ? k : N, 1, 256, 1, 1);
    m->finish = named_finish;
    return TR_OK;
}

/* An optional [T][H] addend, or one zero element when absent (has_* = 0: never read). */
static mbuf *in_optional(mctx *m, int L, int index, const char *name, const tr_buf *b, tr_dtype dt)
{
    static const uint8_t zero[4];
    return b ? in_copy(m, L, index, name, b) : add_buf(m, L, index, name, MB_IN, dt, tr_dtype_size(dt), zero);
}

/* COMBINE: 0 y, 1 w, 2 shared, 3 residual, 4 out (the case's dtype: f32, or f16 for acc f16), 5 T, 6 k, 7 H,
 * 8 has_shared, 9 has_residual; groups (⌈H/256⌉, T), TG 256. */
static int combine_prepare(mctx *m)
{
    const tr_buf *y = IN(m, "y"), *w = IN(m, "w"), *sh = IN(m, "shared"), *re = IN(m, "residual");
    tr_buf *o = OUT(m, "out");
    uint32_t T = (uint32_t)y->shape[0], k = (uint32_t)y->shape[1], H = (uint32_t)y->shape[2];
    int L = new_launch(m);
    if (L < 0)
        return m->err->code;
    if (!in_copy(m, L, 0, "y", y) || !in_copy(m, L, 1, "w", w) || !in_optional(m, L, 2, "shared", sh, y->dtype) ||
        !in_optional(m, L, 3, "residual", re, y->dtype) ||
        !add_buf(m, L, 4, "out", MB_OUT, o->dtype, o->bytes, NULL) ||
        scalars(m, L, 5, 5, (double)T, (double)k, (double)H, sh ? 1.0 : 0.0, re ? 1.0 : 0.0) != TR_OK)
        return m->err->code;
    geom(m, L, CEIL(H, 256), T, 1, 256, 1, 1);
    m->finish = named_finish;
    return TR_OK;
}

/* CAST: 0 in f32 [n], 1 out f16 [n], 2 n; N256. */
static int cast_prepare(mctx *m)
{
    const tr_buf *x = IN(m, "x");
    uint32_t n = (uint32_t)tr_buf_numel(x);
    int L = new_launch(m);
    if (L < 0)
        return m->err->code;
    if (!in_copy(m, L, 0, "x", x) || !add_buf(m, L, 1, "out", MB_OUT, TR_DT_F16, (size_t)n * 2, NULL) ||
        scalar(m, L, 2, n) != TR_OK)
        return m->err->code;
    grp_geom(m, L, n, 0);
    m->finish = named_finish;
    return TR_OK;
}

/* ---- the families ----------------------------------------------------------------------------------------------- */

#define B(i, dt, w) {TR_MTL_BUFFER, i, dt, w}
#define S(i) {TR_MTL_BUFFER, i, -1, -1}   /* a scalar (setBytes): any integer or float the kernel declares */
#define TX(i) {TR_MTL_TEXTURE, i, TR_DT_F32, -1}
#define U8 TR_DT_U8
#define I16 TR_DT_I16
#define U32 TR_DT_U32
#define F16 TR_DT_F16
#define F32 TR_DT_F32
#define I8 TR_DT_I8
#define I32 TR_DT_I32
#define RT_OUT(i) B(i, U32, 1), B((i) + 1, F16, 1)
#define MOE_W                                                                                                          \
    B(0, F16, 0), B(1, U8, 0), B(2, F16, 0), B(3, U8, 0), B(4, F16, 0), B(5, U8, 0), B(6, F16, 0), B(7, F16, 0),     \
        B(8, F16, 0), B(9, F16, 0), B(10, F16, 0), B(11, F16, 0), B(12, F16, 0), B(13, F16, 0)

static const mfamily families[] = {
    {"DQ_PK", "0 packed u8, 1 S, 2 grid, 3 su, 4 sv, 5 out f16 [K][N], 6 K, 7 N, 8 n_levels, 9 bits, 10 gs",
     {B(0, U8, 0), B(1, F32, 0), B(2, F32, 0), B(3, F32, 0), B(4, F32, 0), B(5, F16, 1), S(6), S(7), S(8), S(9),
      S(10)}, 11, dequant_prepare},
    {"DQ_TEX", "0 packed, 1 S, texture 0 grid, 2 su, 3 sv, 4 out, 5 K, 6 N, 7 n_levels, 8 bits, 9 gs",
     {B(0, U8, 0), B(1, F32, 0), TX(0), B(2, F32, 0), B(3, F32, 0), B(4, F16, 1), S(5), S(6), S(7), S(8), S(9)}, 11,
     dequant_prepare},
    {"DQ_I16", "0 idx i16, 1 S, 2 grid, 3 out, 4 K, 5 N, 6 n_levels, 7 gs",
     {B(0, I16, 0), B(1, F32, 0), B(2, F32, 0), B(3, F16, 1), S(4), S(5), S(6), S(7)}, 8, dequant_prepare},
    {"DQ_I16S", "0 idx, 1 S, 2 grid, 3 su, 4 sv, 5 out, 6 K, 7 N, 8 n_levels, 9 gs",
     {B(0, I16, 0), B(1, F32, 0), B(2, F32, 0), B(3, F32, 0), B(4, F32, 0), B(5, F16, 1), S(6), S(7), S(8), S(9)}, 10,
     dequant_prepare},
    {"DQ_BULK", "0 idx, 1 per-tile scale, 2 grid, 3 out [n_tiles][256], 4 n_tiles, 5 n_levels",
     {B(0, I16, 0), B(1, F32, 0), B(2, F32, 0), B(3, F16, 1), S(4), S(5)}, 6, dequant_prepare},
    {"SIGN", "0 w in/out, 1 su, 2 sv, 3 K, 4 N", {B(0, F16, 1), B(1, F32, 0), B(2, F32, 0), S(3), S(4)}, 5,
     sign_prepare},
    {"HAD_ROWS", "0 in, 1 out, 2 R, 3 normalize", {B(0, -1, 0), B(1, -1, 1), S(2), S(3)}, 4, had_prepare},
    {"HAD_ROWS_SCALED", "0 in, 1 scales, 2 out, 3 R, 4 per_element",
     {B(0, -1, 0), B(1, -1, 0), B(2, -1, 1), S(3), S(4)}, 5, had_prepare},
    {"HAD_ROWS3", "0 in, 1 out, 2 R", {B(0, -1, 0), B(1, -1, 1), S(2)}, 3, had_prepare},
    {"HAD_COLS", "0 in, 1 out, 2 K, 3 N", {B(0, -1, 0), B(1, -1, 1), S(2), S(3)}, 4, had_prepare},
    {"HAD_COLS_BS", "0 in, 1 out, 2 K, 3 N, 4 block_size", {B(0, -1, 0), B(1, -1, 1), S(2), S(3), S(4)}, 5,
     had_prepare},
    {"GEMM", "0 A, 1 packed, 2 S f32 [G][N], 3 grid f32, 4 su [K], 5 sv [N], 6 C f16 [M][N], 7 M, 8 K, 9 N, 10 bits, "
             "11 n_levels, 12 gs",
     {B(0, F16, 0), B(1, U8, 0), B(2, F32, 0), B(3, F32, 0), B(4, F32, 0), B(5, F32, 0), B(6, F16, 1), S(7), S(8),
      S(9), S(10), S(11), S(12)}, 13, gemm_prepare},
    {"GEMM_B2", "0 A, 1 packed, 2 S f32 [G][N], 3 grid f32, 4 su [K], 5 sv [N], 6 C f16 [M][N], 7 M, 8 K, 9 N, 10 gs",
     {B(0, F16, 0), B(1, U8, 0), B(2, F32, 0), B(3, F32, 0), B(4, F32, 0), B(5, F32, 0), B(6, F16, 1), S(7), S(8),
      S(9), S(10)}, 11, gemm_prepare},
    {"SWIGLU", "0 A, 1 packed_gate, 2 S_gate, 3 packed_up, 4 S_up, 5 grid, 6 su, 7 sv, 8 C, 9 M, 10 K, 11 N, 12 bits, "
               "13 n_levels, 14 gs",
     {B(0, F16, 0), B(1, U8, 0), B(2, F32, 0), B(3, U8, 0), B(4, F32, 0), B(5, F32, 0), B(6, F32, 0), B(7, F32, 0),
      B(8, F16, 1), S(9), S(10), S(11), S(12), S(13), S(14)}, 15, swiglu_prepare},
    {"QKV", "0 A; 1-4 Q packed/S/su/sv; 5-8 K; 9-12 V; 13 grid; 14-16 outputs; 17 M; 18 K; 19 N_q; 20 N_k; 21 N_v; "
            "22 bits; 23 n_levels; 24 gs",
     {B(0, F16, 0), B(1, U8, 0), B(2, F32, 0), B(3, F32, 0), B(4, F32, 0), B(5, U8, 0), B(6, F32, 0), B(7, F32, 0),
      B(8, F32, 0), B(9, U8, 0), B(10, F32, 0), B(11, F32, 0), B(12, F32, 0), B(13, F32, 0), B(14, F16, 1),
      B(15, F16, 1), B(16, F16, 1), S(17), S(18), S(19), S(20), S(21), S(22), S(23), S(24)}, 25, qkv_prepare},
    {"FUSED_EXPERT", "MoE 0-13, 14 out f32 [R][H], 15 batch, 16 H, 17 I, 18 expert_id, 19 gs, 20 n_levels",
     {MOE_W, B(14, F32, 1), S(15), S(16), S(17), S(18), S(19), S(20)}, 21, fused_expert_prepare},
    {"MOE18", "0 x f16 [batch][H], 1 gate_w, 2 gate_S f16, 3 up_w, 4 up_S, 5 down_w, 6 down_S, 7 gate_su, 8 gate_sv, "
              "9 up_su, 10 up_sv, 11 down_su, 12 down_sv, 13 grid f16, 14 expert_ids u32, 15 probs f16, "
              "16 out f32 [batch][H], 17 MoEParams",
     {MOE_W, B(14, U32, 0), B(15, F16, 0), B(16, F32, 1), S(17)}, 18, moe_prepare},
    {"MOE_GROUPED", "MOE18 0-13, 14 sorted_token_ids u32, 15 offsets u32 [E+1], 16 sorted probs f16, 17 out, "
                    "18 params",
     {MOE_W, B(14, U32, 0), B(15, U32, 0), B(16, F16, 0), B(17, F32, 1), S(18)}, 19, moe_prepare},
    {"MOE_MIXED", "MOE18 + 21 expert_bits u8 [E], 22 weight_offsets u32 [E]",
     {MOE_W, B(14, U32, 0), B(15, F16, 0), B(16, F32, 1), S(17), B(21, U8, 0), B(22, U32, 0)}, 20, moe_prepare},
    {"RT_FUSED", "0 x f16 [T][H], 1 Wr f16 [H][E], 2 ids u32 [T][k], 3 w f16 [T][k], 4 T, 5 H, 6 E, 7 k",
     {B(0, F16, 0), B(1, F16, 0), RT_OUT(2), S(4), S(5), S(6), S(7)}, 8, router_prepare},
    {"RT_FUSED_C", "0 x f16 [T][H], 1 Wr f16 [E][H], 2 ids u32 [T][k], 3 w f16 [T][k], 4 T, 5 H, 6 E, 7 k",
     {B(0, F16, 0), B(1, F16, 0), RT_OUT(2), S(4), S(5), S(6), S(7)}, 8, router_prepare},
    {"RT_INT8", "0 x f16, 1 Wr i8 [E][H], 2 scale f32 [E], 3 ids u32, 4 w f16, 5 T, 6 H, 7 E, 8 k",
     {B(0, F16, 0), B(1, I8, 0), B(2, F32, 0), RT_OUT(3), S(5), S(6), S(7), S(8)}, 9, router_prepare},
    {"RT_INT8_D", "0 x f16, 1 Wr i8 [E][H], 2 scale f32 [E], 3 ids u32, 4 w f16, 5 H, 6 E, 7 k (T = 1)",
     {B(0, F16, 0), B(1, I8, 0), B(2, F32, 0), RT_OUT(3), S(5), S(6), S(7)}, 8, router_prepare},
    {"RT_SPARSE", "0 x f16, 1 Wr f16 [H][E], 2 candidates u32 [T][C], 3 ids u32, 4 w f16, 5 T, 6 H, 7 E, 8 C, 9 k",
     {B(0, F16, 0), B(1, F16, 0), B(2, U32, 0), RT_OUT(3), S(5), S(6), S(7), S(8), S(9)}, 10, router_prepare},
    {"RT_F16", "0 logits f16 [T][E], 1 ids u32 [T][k], 2 w f16 [T][k], 3 params {T, E, k} (3 x u32)",
     {B(0, F16, 0), RT_OUT(1), S(3)}, 4, router_prepare},
    {"GRP_COUNT", "0 expert_ids u32 [N], 1 counts u32 [E] (zero-filled), 2 N, 3 E",
     {B(0, U32, 0), B(1, U32, 1), S(2), S(3)}, 4, group_prepare},
    {"GRP_OFFSETS", "0 counts u32 [E], 1 offsets u32 [E+1], 2 E", {B(0, U32, 0), B(1, U32, 1), S(2)}, 3,
     group_prepare},
    {"GRP_SCATTER", "0 expert_ids u32 [N], 1 probs f32 [N], 2 offsets u32 [E+1], 3 sorted_token_ids u32 [N] (flat "
                    "index), 4 sorted_probs f32 [N], 5 inverse u32 [N], 6 N, 7 E",
     {B(0, U32, 0), B(1, F32, 0), B(2, U32, 0), B(3, U32, 1), B(4, F32, 1), B(5, U32, 1), S(6), S(7)}, 8,
     group_prepare},
    {"GRP_SCATTER_T", "0 expert_ids u32 [N], 1 probs f32 [N], 2 offsets u32 [E+1], 3 sorted tokens u32 [N] (f/k), "
                      "4 sorted_probs f32 [N], 5 inverse u32 [N], 6 T, 7 k, 8 E",
     {B(0, U32, 0), B(1, F32, 0), B(2, U32, 0), B(3, U32, 1), B(4, F32, 1), B(5, U32, 1), S(6), S(7), S(8)}, 9,
     group_prepare},
    {"GRP_VALIDATE", "0 ids i32 [N] in/out, 1 N, 2 E, 3 replacement i32", {B(0, I32, 1), S(1), S(2), S(3)}, 4,
     group_prepare},
    {"GATHER", "0 x f16 [T][H], 1 token view u32 [N], 2 out f16 [N][H], 3 N, 4 H",
     {B(0, F16, 0), B(1, U32, 0), B(2, F16, 1), S(3), S(4)}, 5, gather_prepare},
    {"GATHER1", "0 x f16 [H], 1 out f16 [k][H], 2 H, 3 k (T = 1)", {B(0, F16, 0), B(1, F16, 1), S(2), S(3)}, 4,
     gather_prepare},
    {"COMBINE", "0 y [T][k][H], 1 w [T][k], 2 shared [T][H], 3 residual [T][H], 4 out [T][H] (f32 for acc f32, f16 "
                "for acc f16), 5 T, 6 k, 7 H, 8 has_shared, 9 has_residual",
     {B(0, -1, 0), B(1, -1, 0), B(2, -1, 0), B(3, -1, 0), B(4, -1, 1), S(5), S(6), S(7), S(8), S(9)}, 10,
     combine_prepare},
    {"CAST", "0 in f32 [n], 1 out f16 [n], 2 n", {B(0, F32, 0), B(1, F16, 1), S(2)}, 3, cast_prepare},
};

const mfamily *mfamily_find(const char *id)
{
    for (size_t i = 0; id && i < sizeof families / sizeof families[0]; i++)
        if (!strcmp(families[i].id, id))
            return &families[i];
    return NULL;
}

int mlaunch_known(const char *id)
{
    static const char *const ids[] = {"TG16", "TG16V4", "TG16A4", "TILE64", "TILE256", "BULK", "ROW32", "HCOLS",
                                      "G128", "G32D", "QKV", "FE", "MOE", "MOE_LB", "MOE_DEC", "MOE_P4",
                                      "MOE_GROUPED", "MOE_MIXED", "ROUTER", "ROUTER1", "N256", "ONE256", "E256",
                                      "GATHER", "COMBINE"};
    for (size_t i = 0; id && i < sizeof ids / sizeof ids[0]; i++)
        if (!strcmp(ids[i], id))
            return 1;
    return 0;
}

int mfamily_runtime_domain(const cmetal_variant *mv, const tr_case *c, char *why, size_t cap)
{
    if (strncmp(mv->v.binding, "HAD_", 4) != 0)
        return 0;
    const tr_mtl_param *p = tr_mtl_param_at(mv->k, TR_MTL_BUFFER, 0);
    int want = tr_params_is(&c->params, "dtype", "f16") ? TR_DT_F16 : TR_DT_F32;
    if (p && p->dtype >= 0 && p->dtype != want) {
        snprintf(why, cap, "outside the declared domain: the kernel's data format is %s (buffer 0 %s), the case's %s",
                 tr_dtype_name((tr_dtype)p->dtype), p->elem_type ? p->elem_type : "?",
                 want == TR_DT_F16 ? "f16" : "f32");
        return 1;
    }
    return 0;
}

void mctx_release(mctx *m)
{
    for (int i = 0; i < m->nb; i++) {
        tr_dealloc(m->b[i].block);
        tr_dealloc(m->b[i].init);
        tr_dealloc(m->b[i].snap);
    }
    for (int i = 0; i < m->nl; i++)
        tr_mtl_args_free(m->L[i].args);
    if (m->priv)
        moe_priv_free(m->priv);
    m->nb = m->nl = 0;
    m->priv = NULL;
}
