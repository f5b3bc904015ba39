/*
 * nn.c — the small numerical building blocks of the forward pass (ENGINE.md §3), written exactly as the spec's
 * formulas with one fp32 rounding per operation (the project builds with -ffp-contract=off): linears through the
 * backend, RMSNorm, softmax, RoPE tables (default and YaRN) and their application, and NaN-guard scans.
 */
#include "engine_internal.h"
#include "trellis/alloc.h"
#include "trellis/numeric.h"

#include <math.h>
#include <string.h>

int tr_eng_linear(tr_session *s, const tr_linear *l, const float *X, uint32_t M, float *Y, tr_error *err)
{
    if (l->q)
        return tr_be_gemm_trellis(s->be, l->q, X, M, TR_ACC_F32, 0, Y, err);
    return tr_be_gemm_f32(s->be, l->w, X, M, l->O, l->I, Y, err);
}

/* ss = SEQ Σ fl32(x_i²); ms = fl32(ss/n); r = fl32(1/fl32(sqrt(fl32(ms + fl32(ε))))); y_i = fl32(w_i·fl32(x_i·r)). */
void tr_eng_rmsnorm(const float *x, const float *w, float eps, uint32_t rows, uint32_t n, float *y)
{
    for (uint32_t r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *yr = y + (size_t)r * n;
        float ss = 0.0f;
        for (uint32_t i = 0; i < n; i++) {
            float sq = xr[i] * xr[i];
            ss = ss + sq;
        }
        float ms = ss / (float)n;
        float root = sqrtf(ms + eps);
        float inv = 1.0f / root;
        for (uint32_t i = 0; i < n; i++) {
            float t = xr[i] * inv;
            yr[i] = w[i] * t;
        }
    }
}

void tr_eng_softmax(float *v, uint32_t n)
{
    float mx = -INFINITY;
    for (uint32_t i = 0; i < n; i++)
        if (v[i] > mx)
            mx = v[i];
    float sum = 0.0f;
    for (uint32_t i = 0; i < n; i++) {
        v[i] = tr_expf(v[i] - mx);
        sum = sum + v[i];
    }
    for (uint32_t i = 0; i < n; i++)
        v[i] = v[i] / sum;
}

/* ---- RoPE ------------------------------------------------------------------------------------------------------- */

/* yarn_mscale(s, a) = 1 if s <= 1 else 0.1·a·ln(s) + 1 */
static double yarn_mscale(double s, double a)
{
    return s <= 1.0 ? 1.0 : 0.1 * a * log(s) + 1.0;
}

/* YaRN inv_freq (ENGINE.md §1), in double, rounded once: corr(r) = d·ln(L_orig/(2π·r)) / (2·ln θ),
 * ramp_j = clamp((j − lo)/(hi − lo), 0, 1), inv_j = fl32(base_j/factor·ramp_j + base_j·(1 − ramp_j)). */
static void yarn_inv_freq(const tr_rope_cfg *r, float *inv)
{
    const double d = r->dim, lt = log(r->theta);
    double lo = d * log(r->original_max_position / (2.0 * M_PI * r->beta_fast)) / (2.0 * lt);
    double hi = d * log(r->original_max_position / (2.0 * M_PI * r->beta_slow)) / (2.0 * lt);
    if (r->truncate) {
        lo = floor(lo);
        hi = ceil(hi);
    }
    lo = lo > 0.0 ? lo : 0.0;
    hi = hi < d - 1.0 ? hi : d - 1.0;
    if (hi == lo)
        hi += 0.001;
    for (uint32_t j = 0; j < r->dim / 2; j++) {
        double ramp = ((double)j - lo) / (hi - lo);
        ramp = ramp < 0.0 ? 0.0 : ramp > 1.0 ? 1.0 : ramp;
        double base = pow(r->theta, -2.0 * j / d);
        inv[j] = (float)(base / r->factor * ramp + base * (1.0 - ramp));
    }
}

static float yarn_attention_factor(const tr_rope_cfg *r)
{
    if (r->has_attention_factor)
        return (float)r->attention_factor;
    if (r->has_mscale && r->has_mscale_all_dim && r->mscale != 0.0 && r->mscale_all_dim != 0.0)
        return (float)(yarn_mscale(r->factor, r->mscale) / yarn_mscale(r->factor, r->mscale_all_dim));
    return (float)yarn_mscale(r->factor, 1.0);
}

int tr_eng_rope_init(tr_session *s, tr_error *err)
{
    const tr_rope_cfg *r = &s->m->cfg.rope;
    const uint32_t half = r->dim / 2;
    s->inv_freq = tr_malloc((size_t)half * sizeof *s->inv_freq);
    s->rope_cos = tr_malloc((size_t)s->ctx * half * sizeof *s->rope_cos);
    s->rope_sin = tr_malloc((size_t)s->ctx * half * sizeof *s->rope_sin);
    if (!s->inv_freq || !s->rope_cos || !s->rope_sin)
        return tr_fail(err, TR_E_NOMEM, "RoPE tables", "cannot allocate %u x %u entries", s->ctx, half);
    s->rope_factor = 1.0f;
    if (r->type == TR_ROPE_YARN) {
        yarn_inv_freq(r, s->inv_freq);
        s->rope_factor = yarn_attention_factor(r);
    } else
        for (uint32_t j = 0; j < half; j++) {
            float p = (float)pow(r->theta, 2.0 * j / (double)r->dim);   /* fl32(θ^(2j/d)) */
            s->inv_freq[j] = 1.0f / p;
        }
    return TR_OK;
}

/* angle = fl32(fl32(p)·inv_j); c = fl32(cos(angle)), s = fl32(sin(angle)) in double; YaRN: ·attention_factor. */
int tr_eng_rope_prepare(tr_session *s, uint32_t upto, tr_error *err)
{
    const uint32_t half = s->m->cfg.rope.dim / 2;
    if (upto > s->ctx)
        return tr_fail(err, TR_E_INVALID_PARAM, "RoPE", "position %u beyond --ctx-size %u", upto, s->ctx);
    const int yarn = s->m->cfg.rope.type == TR_ROPE_YARN;
    for (uint32_t p = s->rope_ready; p < upto; p++)
        for (uint32_t j = 0; j < half; j++) {
            float angle = (float)p * s->inv_freq[j];
            float c = (float)cos((double)angle), sn = (float)sin((double)angle);
            if (yarn) {
                c = c * s->rope_factor;
                sn = sn * s->rope_factor;
            }
            s->rope_cos[(size_t)p * half + j] = c;
            s->rope_sin[(size_t)p * half + j] = sn;
        }
    if (upto > s->rope_ready)
        s->rope_ready = upto;
    return TR_OK;
}

/* Pair (a, b) at angle j: a' = fl32(fl32(a·c) − fl32(b·s)), b' = fl32(fl32(b·c) + fl32(a·s)).  Interleaved pairs
 * are (x_2j, x_2j+1) (GLM, results in place); rotate-half pairs are (x_j, x_j+d/2). */
void tr_eng_rope_apply(const tr_session *s, float *x, uint32_t pos)
{
    const uint32_t half = s->m->cfg.rope.dim / 2;
    const float *cs = s->rope_cos + (size_t)pos * half, *sn = s->rope_sin + (size_t)pos * half;
    const int inter = s->m->cfg.rope.interleave;
    for (uint32_t j = 0; j < half; j++) {
        float *a = inter ? &x[2 * j] : &x[j], *b = inter ? &x[2 * j + 1] : &x[j + half];
        float ac = *a * cs[j], bs = *b * sn[j], bc = *b * cs[j], as = *a * sn[j];
        *a = ac - bs;
        *b = bc + as;
    }
}

/* ---- NaN guard ------------------------------------------------------------------------------------------------------ */

int tr_eng_scan(tr_session *s, tr_nan_site site, int32_t layer, uint32_t first_token, float *data, uint32_t rows,
                uint32_t cols, tr_error *err)
{
    if (s->o.nan_policy == TR_NAN_OFF)
        return TR_OK;
    tr_nan_where w = {site, layer, first_token, 0, -1, NULL};
    return tr_nan_guard_scan_f32(s->guard, &w, data, rows, cols, err);
}
