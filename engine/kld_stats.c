/*
 * kld_stats.c — the statistics of the two-pass KLD (ENGINE.md §6): running sums over the finite records, the
 * derived means and uncertainties, GSL type-7 percentiles, the base-confidence buckets, router agreement and the
 * noise floor.
 *
 *   σ of a mean          sqrt((⟨x²⟩ − ⟨x⟩²)/(N−1))                    (0 when N < 2)
 *   PPL                  exp(⟨nll⟩) ± PPL·σ
 *   cor                  cov(nll_q, nll_b)/(sd_q·sd_b),  cov = ⟨nll_q·nll_b⟩ − ⟨nll_q⟩⟨nll_b⟩,  sd = sqrt(var)
 *   ln ratio             ⟨nll_q⟩ − ⟨nll_b⟩ ± sqrt(σ_q² + σ_b² − 2c),  c = cov/(N−1)
 *   ratio                exp(ln ratio) ± ratio·σ_lnratio
 *   difference           PPL_q − PPL_b ± sqrt(PPL_q²σ_q² + PPL_b²σ_b² − 2·PPL_q·PPL_b·c)
 *   RMS Δp               sqrt(⟨Δp²⟩) ± σ_{Δp²}/(2·RMS),  σ_{Δp²} = sqrt((⟨Δp⁴⟩ − ⟨Δp²⟩²)/(N−1))
 *   same top             f = n_same/N ± sqrt(f(1−f)/(N−1))
 */
#include "trellis/kld.h"
#include "trellis/alloc.h"
#include "trellis/jsonio.h"

#include <gsl/gsl_statistics_double.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

const double TR_KLD_QF[TR_KLD_NQ] = {1.0, 0.999, 0.99, 0.95, 0.90, 0.5, 0.10, 0.05, 0.01, 0.001, 0.0};
const double TR_DP_QF[TR_DP_NQ] = {1.0, 0.999, 0.99, 0.95, 0.90, 0.75, 0.5, 0.25, 0.10, 0.05, 0.01, 0.001, 0.0};
const char *const TR_KLD_QKEY[TR_KLD_NQ] = {"max", "p99_9", "p99", "p95", "p90", "median",
                                            "p10", "p5",    "p1",  "p0_1", "min"};
const char *const TR_DP_QKEY[TR_DP_NQ] = {"max", "p99_9", "p99", "p95", "p90", "p75", "median",
                                          "p25", "p10",   "p5",  "p1",  "p0_1", "min"};
const double TR_KLD_BUCKET_EDGE[TR_KLD_BUCKETS + 1] = {0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0};

/* ---- accumulation ----------------------------------------------------------------------------------------------- */

void tr_kld_accum_init(tr_kld_accum *a, int keep_values)
{
    memset(a, 0, sizeof *a);
    a->keep_values = keep_values;
}

void tr_kld_accum_free(tr_kld_accum *a)
{
    tr_dealloc(a->kld_v);
    tr_dealloc(a->dp_v);
    a->kld_v = a->dp_v = NULL;
    a->cap = 0;
}

static int keep(tr_kld_accum *a, double kld, double dp, tr_error *err)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 4096;
        double *k = tr_realloc(a->kld_v, cap * sizeof *k);
        if (k)
            a->kld_v = k;
        double *d = k ? tr_realloc(a->dp_v, cap * sizeof *d) : NULL;
        if (!d)
            return tr_fail(err, TR_E_NOMEM, "kld", "cannot keep %zu values for the percentiles", cap);
        a->dp_v = d;
        a->cap = cap;
    }
    a->kld_v[a->n] = kld;
    a->dp_v[a->n] = dp;
    return TR_OK;
}

/* Bucket of a base top-1 probability: [0,.25) [.25,.5) [.5,.75) [.75,.9) [.9,.95) [.95,1]. */
static int bucket_of(double p)
{
    int b = 0;
    while (b + 1 < TR_KLD_BUCKETS && p >= TR_KLD_BUCKET_EDGE[b + 1])
        b++;
    return b;
}

int tr_kld_accum_add(tr_kld_accum *a, const tr_kld_point *p, tr_error *err)
{
    if (!p->finite) {
        a->non_finite++;
        return TR_OK;
    }
    if (a->keep_values && keep(a, p->kld, p->delta_p, err) != TR_OK)
        return TR_E_NOMEM;
    a->n++;
    a->same_top += p->same_top != 0;
    a->s_nq += p->nll_q;
    a->s_nq2 += p->nll_q * p->nll_q;
    a->s_nb += p->nll_base;
    a->s_nb2 += p->nll_base * p->nll_base;
    a->s_nqnb += p->nll_q * p->nll_base;
    a->s_kld += p->kld;
    a->s_kld2 += p->kld * p->kld;
    const double d2 = p->delta_p * p->delta_p;
    a->s_dp += p->delta_p;
    a->s_dp2 += d2;
    a->s_dp4 += d2 * d2;
    a->tail_sum += p->tail_mass;
    a->tail_max = p->tail_mass > a->tail_max ? p->tail_mass : a->tail_max;
    const int b = bucket_of(p->p_top_base);
    a->bucket_n[b]++;
    a->bucket_kld[b] += p->kld;
    return TR_OK;
}

/* ---- derived statistics ----------------------------------------------------------------------------------------- */

/* Population variance ⟨x²⟩ − ⟨x⟩² (≥ 0). */
static double variance(double s, double s2, double n)
{
    double m = s / n, v = s2 / n - m * m;
    return v > 0 ? v : 0.0;
}

/* σ of the mean: sqrt(var/(N−1)), 0 when N < 2. */
static double mean_unc(double var, uint64_t n) { return n < 2 ? 0.0 : sqrt(var / (double)(n - 1)); }

static double sqrt0(double x) { return x > 0 ? sqrt(x) : 0.0; }

static void perplexity_stats(const tr_kld_accum *a, tr_kld_stats *s)
{
    const double N = (double)a->n;
    const double mq = a->s_nq / N, mb = a->s_nb / N;
    const double vq = variance(a->s_nq, a->s_nq2, N), vb = variance(a->s_nb, a->s_nb2, N);
    /* σ² of the means kept unrooted, so that identical runs give exactly σ_q² + σ_b² − 2c = 0 */
    const double sq2 = a->n < 2 ? 0.0 : vq / (N - 1), sb2 = a->n < 2 ? 0.0 : vb / (N - 1);
    const double cov = a->s_nqnb / N - mq * mb, c = a->n < 2 ? 0.0 : cov / (N - 1);
    s->ppl_q = exp(mq);
    s->ppl_q_unc = s->ppl_q * sqrt(sq2);
    s->ppl_base = exp(mb);
    s->ppl_base_unc = s->ppl_base * sqrt(sb2);
    s->cor = cov / (sqrt(vq) * sqrt(vb));
    s->ln_ratio = mq - mb;
    s->ln_ratio_unc = sqrt0(sq2 + sb2 - 2 * c);
    s->ratio = exp(s->ln_ratio);
    s->ratio_unc = s->ratio * s->ln_ratio_unc;
    s->diff = s->ppl_q - s->ppl_base;
    s->diff_unc = sqrt0(s->ppl_q * s->ppl_q * sq2 + s->ppl_base * s->ppl_base * sb2 - 2 * s->ppl_q * s->ppl_base * c);
}

static void token_stats(const tr_kld_accum *a, tr_kld_stats *s)
{
    const double N = (double)a->n;
    s->kld_mean = a->s_kld / N;
    s->kld_unc = mean_unc(variance(a->s_kld, a->s_kld2, N), a->n);
    s->dp_mean = a->s_dp / N;
    s->dp_unc = mean_unc(variance(a->s_dp, a->s_dp2, N), a->n);
    s->rms_dp = sqrt(a->s_dp2 / N);
    const double sd2 = mean_unc(variance(a->s_dp2, a->s_dp4, N), a->n);   /* σ of ⟨Δp²⟩ */
    s->rms_dp_unc = s->rms_dp > 0 ? sd2 / (2 * s->rms_dp) : 0.0;
    s->same_top = (double)a->same_top / N;
    s->same_top_unc = a->n < 2 ? 0.0 : sqrt0(s->same_top * (1 - s->same_top) / (N - 1));
    s->tail_mean = a->tail_sum / N;
    s->tail_max = a->n ? a->tail_max : NAN;
    for (int b = 0; b < TR_KLD_BUCKETS; b++) {
        s->bucket_n[b] = a->bucket_n[b];
        s->bucket_mean[b] = a->bucket_n[b] ? a->bucket_kld[b] / (double)a->bucket_n[b] : NAN;
    }
}

void tr_kld_stats_summary(const tr_kld_accum *a, tr_kld_stats *s)
{
    memset(s, 0, sizeof *s);
    s->n = a->n;
    s->non_finite = a->non_finite;
    for (int i = 0; i < TR_KLD_NQ; i++)
        s->kld_q[i] = NAN;
    for (int i = 0; i < TR_DP_NQ; i++)
        s->dp_q[i] = NAN;
    perplexity_stats(a, s);   /* N = 0: every mean is 0/0 = NaN */
    token_stats(a, s);
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b ? 1 : 0;
}

double tr_quantile_sorted(const double *sorted, size_t n, double p)
{
    return n ? gsl_stats_quantile_from_sorted_data(sorted, 1, n, p) : NAN;
}

void tr_kld_stats_full(tr_kld_accum *a, tr_kld_stats *s)
{
    tr_kld_stats_summary(a, s);
    if (!a->keep_values)
        return;
    qsort(a->kld_v, a->n, sizeof *a->kld_v, cmp_double);
    qsort(a->dp_v, a->n, sizeof *a->dp_v, cmp_double);
    for (int i = 0; i < TR_KLD_NQ; i++)
        s->kld_q[i] = tr_quantile_sorted(a->kld_v, a->n, TR_KLD_QF[i]);
    for (int i = 0; i < TR_DP_NQ; i++)
        s->dp_q[i] = tr_quantile_sorted(a->dp_v, a->n, TR_DP_QF[i]);
    s->has_quantiles = 1;
}

/* ---- router agreement ------------------------------------------------------------------------------------------- */

int tr_route_agree_init(tr_route_agree *g, uint32_t n_layers, uint32_t k, tr_error *err)
{
    memset(g, 0, sizeof *g);
    g->n_layers = n_layers;
    g->k = k;
    g->exact = tr_calloc(n_layers ? n_layers : 1, sizeof *g->exact);
    g->overlap = tr_calloc(n_layers ? n_layers : 1, sizeof *g->overlap);
    if (!g->exact || !g->overlap) {
        tr_route_agree_free(g);
        return tr_fail(err, TR_E_NOMEM, "router agreement", "out of memory");
    }
    return TR_OK;
}

void tr_route_agree_free(tr_route_agree *g)
{
    tr_dealloc(g->exact);
    tr_dealloc(g->overlap);
    g->exact = g->overlap = NULL;
}

/* |A∩B| of two k-sets of expert ids (distinct within a set). */
static uint32_t overlap(const uint16_t *a, const uint16_t *b, uint32_t k)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < k; i++)
        for (uint32_t j = 0; j < k; j++)
            if (a[i] == b[j]) {
                n++;
                break;
            }
    return n;
}

void tr_route_agree_add(tr_route_agree *g, const uint16_t *base, const uint16_t *cand)
{
    for (uint32_t l = 0; l < g->n_layers; l++) {
        uint32_t o = overlap(base + (size_t)l * g->k, cand + (size_t)l * g->k, g->k);
        g->overlap[l] += o;
        g->exact[l] += o == g->k;
    }
    g->n++;
}

json_t *tr_route_agree_json(const tr_route_agree *g)
{
    json_t *d = json_object(), *per = json_array();
    uint64_t ex = 0, ov = 0;
    const double n = (double)g->n;
    for (uint32_t l = 0; l < g->n_layers; l++) {
        json_t *o = json_object();
        json_object_set_new(o, "moe_layer", json_integer(l));
        json_object_set_new(o, "exact_set_rate", tr_json_real((double)g->exact[l] / n));
        json_object_set_new(o, "mean_overlap", tr_json_real((double)g->overlap[l] / (n * g->k)));
        json_array_append_new(per, o);
        ex += g->exact[l];
        ov += g->overlap[l];
    }
    json_object_set_new(d, "exact_set_rate", tr_json_real((double)ex / (n * g->n_layers)));
    json_object_set_new(d, "mean_overlap", tr_json_real((double)ov / (n * g->n_layers * g->k)));
    json_object_set_new(d, "n_records", json_integer((json_int_t)g->n));
    json_object_set_new(d, "n_moe_layers", json_integer(g->n_layers));
    json_object_set_new(d, "k", json_integer(g->k));
    json_object_set_new(d, "per_layer", per);
    return d;
}

/* ---- noise floor ------------------------------------------------------------------------------------------------ */

static json_t *pair(const char *k1, double v1, const char *k2, double v2)
{
    json_t *o = json_object();
    json_object_set_new(o, k1, tr_json_real(v1));
    json_object_set_new(o, k2, tr_json_real(v2));
    return o;
}

json_t *tr_kld_floor_json(const tr_kld_stats *s)
{
    json_t *d = json_object(), *dp = pair("mean", s->dp_mean, "mean_unc", s->dp_unc);
    json_object_set_new(d, "residual", json_string("bf16"));
    json_object_set_new(d, "n", json_integer((json_int_t)s->n));
    json_object_set_new(d, "non_finite", json_integer((json_int_t)s->non_finite));
    json_object_set_new(d, "ppl", tr_json_real(s->ppl_q));
    json_object_set_new(d, "ppl_unc", tr_json_real(s->ppl_q_unc));
    json_object_set_new(d, "ln_ppl_ratio", tr_json_real(s->ln_ratio));
    json_object_set_new(d, "ln_ppl_ratio_unc", tr_json_real(s->ln_ratio_unc));
    json_object_set_new(d, "kld", pair("mean", s->kld_mean, "mean_unc", s->kld_unc));
    json_object_set_new(dp, "rms", tr_json_real(s->rms_dp));
    json_object_set_new(dp, "rms_unc", tr_json_real(s->rms_dp_unc));
    json_object_set_new(d, "delta_p", dp);
    json_object_set_new(d, "same_top", pair("rate", s->same_top, "rate_unc", s->same_top_unc));
    return d;
}

/* A number written by tr_json_real: a JSON number or "nan" / "inf" / "-inf". */
static int number_at(const json_t *obj, const char *outer, const char *key, double *out)
{
    const json_t *v = json_object_get(outer ? json_object_get(obj, outer) : obj, key);
    if (json_is_number(v))
        *out = json_number_value(v);
    else if (json_is_string(v) && !strcmp(json_string_value(v), "nan"))
        *out = NAN;
    else if (json_is_string(v) && !strcmp(json_string_value(v), "inf"))
        *out = INFINITY;
    else if (json_is_string(v) && !strcmp(json_string_value(v), "-inf"))
        *out = -INFINITY;
    else
        return -1;
    return 0;
}

int tr_kld_floor_parse(const json_t *trailer, const char *path, tr_kld_floor *out, tr_error *err)
{
    const json_t *f = json_object_get(trailer, "noise_floor");
    double n = 0;
    memset(out, 0, sizeof *out);
    if (!f || json_is_null(f))
        return TR_OK;
    if (number_at(f, NULL, "n", &n) || number_at(f, "kld", "mean", &out->kld) ||
        number_at(f, "kld", "mean_unc", &out->kld_unc) || number_at(f, "delta_p", "rms", &out->rms_dp) ||
        number_at(f, "delta_p", "rms_unc", &out->rms_dp_unc) || number_at(f, "same_top", "rate", &out->same_top) ||
        number_at(f, "same_top", "rate_unc", &out->same_top_unc))
        return tr_fail(err, TR_E_INPUT, path, "trailer: \"noise_floor\" is malformed");
    out->present = 1;
    out->n = n > 0 ? (uint64_t)n : 0;
    return TR_OK;
}

int tr_kld_floor_within(const tr_kld_stats *s, const tr_kld_floor *f, double *ratio)
{
    *ratio = s->kld_mean / f->kld;
    return fabs(s->kld_mean - f->kld) <= 2 * sqrt(s->kld_unc * s->kld_unc + f->kld_unc * f->kld_unc);
}
