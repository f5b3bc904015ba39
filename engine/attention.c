/*
 * attention.c — the attention blocks of ENGINE.md §3: GLM's multi-head latent attention (MLA; the cache holds the
 * normalised latent c and the rotated k_pe; expanded form = HF's, absorbed form = decode's) and Qwen3's grouped-query
 * attention with per-head q/k RMSNorm before rotate-half RoPE.
 *
 * Reduction orders (ENGINE.md §3 table): q·k scores and W_UV·ctx are L16 (tr_dot_l16); P·v and the absorbed
 * W_UKᵀq are sums of vectors, SEQF (acc = fmaf(p_s, v_s[j], acc), s ascending); softmax per tr_eng_softmax.
 */
#include "engine_internal.h"
#include "trellis/alloc.h"
#include "trellis/numeric.h"

#include <math.h>
#include <string.h>

/* Scratch of one attention call, one allocation freed at the end. */
typedef struct scratch {
    float *base;
} scratch;

static float *take(float **cur, size_t n)
{
    float *p = *cur;
    *cur += (n + 15) & ~(size_t)15;
    return p;
}

static int scratch_alloc(scratch *sc, size_t floats, const char *what, tr_error *err)
{
    sc->base = tr_malloc((floats + 64) * sizeof(float));
    return sc->base ? TR_OK : tr_fail(err, TR_E_NOMEM, what, "cannot allocate %zu floats of scratch", floats);
}

/* out[j] = SEQF_s fmaf(P_s, rows_s[j], ·) over s < S, rows at stride `stride`, from +0. */
static void weighted_rows(const float *P, uint32_t S, const float *rows, size_t stride, uint32_t n, float *out)
{
    memset(out, 0, (size_t)n * sizeof *out);
    for (uint32_t s = 0; s < S; s++) {
        const float *r = rows + (size_t)s * stride;
        for (uint32_t j = 0; j < n; j++)
            out[j] = fmaf(P[s], r[j], out[j]);
    }
}

/* ---- GLM MLA -------------------------------------------------------------------------------------------------------- */

typedef struct mla_dims {
    uint32_t H, dn, dr, dv, rkv, dqk, hw;   /* hw = dn + dv rows of kv_b per head */
} mla_dims;

static mla_dims mla_dims_of(const tr_model_config *c)
{
    return (mla_dims){c->H, c->d_nope, c->d_rope, c->d_v, c->kv_lora_rank, c->d_nope + c->d_rope,
                      c->d_nope + c->d_v};
}

/* q [T][H·dqk] from x: q-LoRA (W_qa, RMSNorm ε 1e-6, W_qb) or W_q. */
static int mla_queries(tr_session *s, uint32_t l, const float *x, uint32_t T, float *qa, float *q, tr_error *err)
{
    const tr_layer *ly = &s->m->layers[l];
    if (!s->m->cfg.q_lora_rank)
        return tr_eng_linear(s, &ly->q_full, x, T, q, err);
    int rc = tr_eng_linear(s, &ly->q_a, x, T, qa, err);
    if (rc != TR_OK)
        return rc;
    tr_eng_rmsnorm(qa, ly->q_a_norm, 1e-6f, T, s->m->cfg.q_lora_rank, qa);
    rc = tr_eng_scan(s, TR_NAN_SITE_Q_A_NORM, (int32_t)l, 0, qa, T, s->m->cfg.q_lora_rank, err);
    return rc != TR_OK ? rc : tr_eng_linear(s, &ly->q_b, qa, T, q, err);
}

/* kv = W_kva x; c = RMSNorm(kv[0..r_kv); ε 1e-6); k_pe = RoPE(kv[r_kv..]); both into the cache at p0 + t. */
static int mla_cache_rows(tr_session *s, uint32_t l, const float *x, uint32_t T, float *kv, float *c, tr_error *err)
{
    const tr_layer *ly = &s->m->layers[l];
    const mla_dims d = mla_dims_of(&s->m->cfg);
    int rc = tr_eng_linear(s, &ly->kv_a, x, T, kv, err);
    if (rc != TR_OK)
        return rc;
    for (uint32_t t = 0; t < T; t++)
        tr_eng_rmsnorm(kv + (size_t)t * (d.rkv + d.dr), ly->kv_a_norm, 1e-6f, 1, d.rkv, c + (size_t)t * d.rkv);
    if ((rc = tr_eng_scan(s, TR_NAN_SITE_KV_A_NORM, (int32_t)l, 0, c, T, d.rkv, err)) != TR_OK)
        return rc;
    for (uint32_t t = 0; t < T; t++) {
        float *row = tr_eng_cache_at(s, l, s->len + t);
        memcpy(row, c + (size_t)t * d.rkv, (size_t)d.rkv * sizeof *row);
        memcpy(row + d.rkv, kv + (size_t)t * (d.rkv + d.dr) + d.rkv, (size_t)d.dr * sizeof *row);
        tr_eng_rope_apply(s, row + d.rkv, s->len + t);
    }
    return TR_OK;
}

/* Expanded form: kvb_s = W_kvb c_s for every attended position; keys (k_nope, k_pe) per head laid out contiguously
 * so that each score is one L16 dot over d_n + d_r values. */
static int mla_expanded(tr_session *s, uint32_t l, const float *q, uint32_t T, float *o, tr_error *err)
{
    const mla_dims d = mla_dims_of(&s->m->cfg);
    const uint32_t S = s->len + T, p0 = s->len;
    scratch sc;
    size_t need = (size_t)S * d.rkv + (size_t)S * d.H * d.hw + (size_t)d.H * S * d.dqk + S + 64;
    int rc = scratch_alloc(&sc, need, "attention", err);
    if (rc != TR_OK)
        return rc;
    float *cur = sc.base, *C = take(&cur, (size_t)S * d.rkv), *kvb = take(&cur, (size_t)S * d.H * d.hw),
          *K = take(&cur, (size_t)d.H * S * d.dqk), *P = take(&cur, S);
    for (uint32_t p = 0; p < S; p++)
        memcpy(C + (size_t)p * d.rkv, tr_eng_cache_at(s, l, p), (size_t)d.rkv * sizeof *C);
    rc = tr_be_gemm_f32(s->be, s->m->layers[l].kv_b_f32, C, S, d.H * d.hw, d.rkv, kvb, err);
    for (uint32_t h = 0; rc == TR_OK && h < d.H; h++)
        for (uint32_t p = 0; p < S; p++) {
            float *k = K + ((size_t)h * S + p) * d.dqk;
            memcpy(k, kvb + (size_t)p * d.H * d.hw + (size_t)h * d.hw, (size_t)d.dn * sizeof *k);
            memcpy(k + d.dn, tr_eng_cache_at(s, l, p) + d.rkv, (size_t)d.dr * sizeof *k);
        }
    for (uint32_t t = 0; rc == TR_OK && t < T; t++)
        for (uint32_t h = 0; h < d.H; h++) {
            const float *qh = q + (size_t)t * d.H * d.dqk + (size_t)h * d.dqk;
            const uint32_t n = p0 + t + 1;
            for (uint32_t p = 0; p < n; p++)
                P[p] = s->m->cfg.attn_scale * tr_dot_l16(qh, K + ((size_t)h * S + p) * d.dqk, d.dqk);
            tr_eng_softmax(P, n);
            weighted_rows(P, n, kvb + (size_t)h * d.hw + d.dn, (size_t)d.H * d.hw, d.dv,
                          o + (size_t)t * d.H * d.dv + (size_t)h * d.dv);
        }
    tr_dealloc(sc.base);
    return rc;
}

/* Absorbed form: q_c = W_UKᵀ q_nope (SEQF over the d_n rows), score = fl32(scale·(fl32(q_c·c_s) + fl32(q_pe·k_pe_s))),
 * ctx = Σ_s P_s c_s (SEQF), o = W_UV ctx (L16 rows). */
static int mla_absorbed(tr_session *s, uint32_t l, const float *q, uint32_t T, float *o, tr_error *err)
{
    const mla_dims d = mla_dims_of(&s->m->cfg);
    const float *W = s->m->layers[l].kv_b_f32;
    const uint32_t S = s->len + T, p0 = s->len;
    scratch sc;
    int rc = scratch_alloc(&sc, (size_t)2 * d.rkv + S, "attention", err);
    if (rc != TR_OK)
        return rc;
    float *cur = sc.base, *qc = take(&cur, d.rkv), *ctx = take(&cur, d.rkv), *P = take(&cur, S);
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t h = 0; h < d.H; h++) {
            const float *qh = q + (size_t)t * d.H * d.dqk + (size_t)h * d.dqk, *Wk = W + (size_t)h * d.hw * d.rkv;
            weighted_rows(qh, d.dn, Wk, d.rkv, d.rkv, qc);
            const uint32_t n = p0 + t + 1;
            for (uint32_t p = 0; p < n; p++) {
                const float *row = tr_eng_cache_at(s, l, p);
                float a = tr_dot_l16(qc, row, d.rkv), b = tr_dot_l16(qh + d.dn, row + d.rkv, d.dr);
                float sum = a + b;
                P[p] = s->m->cfg.attn_scale * sum;
            }
            tr_eng_softmax(P, n);
            weighted_rows(P, n, tr_eng_cache_at(s, l, 0), s->row, d.rkv, ctx);
            const float *Wv = Wk + (size_t)d.dn * d.rkv;
            float *oh = o + (size_t)t * d.H * d.dv + (size_t)h * d.dv;
            for (uint32_t j = 0; j < d.dv; j++)
                oh[j] = tr_dot_l16(Wv + (size_t)j * d.rkv, ctx, d.rkv);
        }
    tr_dealloc(sc.base);
    return TR_OK;
}

static int mla(tr_session *s, uint32_t l, const float *x, uint32_t T, float *out, tr_error *err)
{
    const tr_model_config *c = &s->m->cfg;
    const mla_dims d = mla_dims_of(c);
    scratch sc;
    size_t need = (size_t)T * (c->q_lora_rank + (size_t)d.H * d.dqk + d.rkv + d.dr + d.rkv + (size_t)d.H * d.dv);
    int rc = scratch_alloc(&sc, need + 96, "attention", err);
    if (rc != TR_OK)
        return rc;
    float *cur = sc.base, *qa = take(&cur, (size_t)T * c->q_lora_rank), *q = take(&cur, (size_t)T * d.H * d.dqk),
          *kv = take(&cur, (size_t)T * (d.rkv + d.dr)), *cn = take(&cur, (size_t)T * d.rkv),
          *o = take(&cur, (size_t)T * d.H * d.dv);
    rc = mla_queries(s, l, x, T, qa, q, err);
    if (rc == TR_OK)
        rc = tr_eng_rope_prepare(s, s->len + T, err);
    if (rc == TR_OK)
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t h = 0; h < d.H; h++)
                tr_eng_rope_apply(s, q + (size_t)t * d.H * d.dqk + (size_t)h * d.dqk + d.dn, s->len + t);
    if (rc == TR_OK)
        rc = mla_cache_rows(s, l, x, T, kv, cn, err);
    tr_mla_form form = s->o.mla_form != TR_MLA_AUTO ? s->o.mla_form : T > 1 ? TR_MLA_EXPANDED : TR_MLA_ABSORBED;
    if (rc == TR_OK)
        rc = form == TR_MLA_EXPANDED ? mla_expanded(s, l, q, T, o, err) : mla_absorbed(s, l, q, T, o, err);
    if (rc == TR_OK)
        rc = tr_eng_linear(s, &s->m->layers[l].o, o, T, out, err);
    tr_dealloc(sc.base);
    return rc;
}

/* ---- Qwen3 GQA ------------------------------------------------------------------------------------------------------ */

/* Per-head RMSNorm (before RoPE), then rotate-half RoPE, for heads of d values in rows of `heads` heads. */
static int head_norm_rope(tr_session *s, uint32_t l, float *v, uint32_t T, uint32_t heads, const float *w,
                          tr_nan_site site, tr_error *err)
{
    const tr_model_config *c = &s->m->cfg;
    tr_eng_rmsnorm(v, w, c->rms_norm_eps, T * heads, c->head_dim, v);
    int rc = tr_eng_scan(s, site, (int32_t)l, 0, v, T, heads * c->head_dim, err);
    for (uint32_t t = 0; rc == TR_OK && t < T; t++)
        for (uint32_t h = 0; h < heads; h++)
            tr_eng_rope_apply(s, v + ((size_t)t * heads + h) * c->head_dim, s->len + t);
    return rc;
}

static void gqa_scores(const tr_session *s, uint32_t l, const float *q, uint32_t T, float *o, float *P)
{
    const tr_model_config *c = &s->m->cfg;
    const uint32_t d = c->head_dim, gd = c->G * d, per = c->H / c->G;
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t h = 0; h < c->H; h++) {
            const uint32_t g = h / per, n = s->len + t + 1;
            const float *qh = q + ((size_t)t * c->H + h) * d;
            for (uint32_t p = 0; p < n; p++)
                P[p] = c->attn_scale * tr_dot_l16(qh, tr_eng_cache_at(s, l, p) + (size_t)g * d, d);
            tr_eng_softmax(P, n);
            weighted_rows(P, n, tr_eng_cache_at(s, l, 0) + gd + (size_t)g * d, s->row, d,
                          o + ((size_t)t * c->H + h) * d);
        }
}

static int gqa(tr_session *s, uint32_t l, const float *x, uint32_t T, float *out, tr_error *err)
{
    const tr_model_config *c = &s->m->cfg;
    const tr_layer *ly = &s->m->layers[l];
    const uint32_t d = c->head_dim, hd = c->H * d, gd = c->G * d;
    scratch sc;
    int rc = scratch_alloc(&sc, (size_t)T * (2 * hd + 2 * gd) + s->len + T + 64, "attention", err);
    if (rc != TR_OK)
        return rc;
    float *cur = sc.base, *q = take(&cur, (size_t)T * hd), *k = take(&cur, (size_t)T * gd),
          *v = take(&cur, (size_t)T * gd), *o = take(&cur, (size_t)T * hd), *P = take(&cur, s->len + T);
    rc = tr_eng_linear(s, &ly->q, x, T, q, err);
    if (rc == TR_OK)
        rc = tr_eng_linear(s, &ly->k, x, T, k, err);
    if (rc == TR_OK)
        rc = tr_eng_linear(s, &ly->v, x, T, v, err);
    if (rc == TR_OK)
        rc = tr_eng_rope_prepare(s, s->len + T, err);
    if (rc == TR_OK)
        rc = head_norm_rope(s, l, q, T, c->H, ly->q_norm, TR_NAN_SITE_Q_HEAD_NORM, err);
    if (rc == TR_OK)
        rc = head_norm_rope(s, l, k, T, c->G, ly->k_norm, TR_NAN_SITE_K_HEAD_NORM, err);
    if (rc == TR_OK) {
        for (uint32_t t = 0; t < T; t++) {
            float *row = tr_eng_cache_at(s, l, s->len + t);
            memcpy(row, k + (size_t)t * gd, (size_t)gd * sizeof *row);
            memcpy(row + gd, v + (size_t)t * gd, (size_t)gd * sizeof *row);
        }
        gqa_scores(s, l, q, T, o, P);
        rc = tr_eng_linear(s, &ly->o, o, T, out, err);
    }
    tr_dealloc(sc.base);
    return rc;
}

int tr_eng_attention(tr_session *s, uint32_t l, const float *x, uint32_t T, float *out, tr_error *err)
{
    return s->m->cfg.arch == TR_ARCH_GLM4_MOE_LITE ? mla(s, l, x, T, out, err) : gqa(s, l, x, T, out, err);
}
