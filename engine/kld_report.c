/*
 * kld_report.c — the statistics block of `trellis kld eval` (ENGINE.md §6) as text in llama-perplexity's layout
 * (percent where the spec prints %, the noise floor beside mean KLD, RMS Δp and same top) and as the statistics
 * members of trellis.kld/1 (fractions, non-finite numbers as strings).
 */
#include "trellis/kld.h"
#include "trellis/jsonio.h"

#include <math.h>
#include <string.h>

static const char *const KLD_LABEL[TR_KLD_NQ] = {"Maximum", "99.9%  ", "99.0%  ", "95.0%  ", "90.0%  ", "Median ",
                                                 "10.0%  ", " 5.0%  ", " 1.0%  ", " 0.1%  ", "Minimum"};
static const char *const DP_LABEL[TR_DP_NQ] = {"Maximum", "99.9%  ", "99.0%  ", "95.0%  ", "90.0%  ",
                                               "75.0%  ", "Median ", "25.0%  ", "10.0%  ", " 5.0%  ",
                                               " 1.0%  ", " 0.1%  ", "Minimum"};

/* ---- JSON ------------------------------------------------------------------------------------------------------- */

static void set_real(json_t *o, const char *key, double v) { json_object_set_new(o, key, tr_json_real(v)); }

static json_t *kld_json(const tr_kld_stats *s)
{
    json_t *o = json_object();
    set_real(o, "mean", s->kld_mean);
    set_real(o, "mean_unc", s->kld_unc);
    for (int i = 0; i < TR_KLD_NQ; i++)
        set_real(o, TR_KLD_QKEY[i], s->kld_q[i]);
    return o;
}

static json_t *dp_json(const tr_kld_stats *s)
{
    json_t *o = json_object();
    set_real(o, "mean", s->dp_mean);
    set_real(o, "mean_unc", s->dp_unc);
    for (int i = 0; i < TR_DP_NQ; i++)
        set_real(o, TR_DP_QKEY[i], s->dp_q[i]);
    set_real(o, "rms", s->rms_dp);
    set_real(o, "rms_unc", s->rms_dp_unc);
    return o;
}

static json_t *buckets_json(const tr_kld_stats *s)
{
    json_t *a = json_array();
    for (int b = 0; b < TR_KLD_BUCKETS; b++) {
        json_t *o = json_object();
        set_real(o, "lo", TR_KLD_BUCKET_EDGE[b]);
        set_real(o, "hi", TR_KLD_BUCKET_EDGE[b + 1]);
        json_object_set_new(o, "n", json_integer((json_int_t)s->bucket_n[b]));
        json_object_set_new(o, "mean_kld", s->bucket_n[b] ? tr_json_real(s->bucket_mean[b]) : json_null());
        json_array_append_new(a, o);
    }
    return a;
}

static json_t *floor_json(const tr_kld_stats *s, const tr_kld_floor *f)
{
    if (!f || !f->present)
        return json_null();
    json_t *o = json_object(), *k = json_object(), *d = json_object(), *t = json_object();
    double ratio;
    int within = tr_kld_floor_within(s, f, &ratio);
    json_object_set_new(o, "n", json_integer((json_int_t)f->n));
    set_real(k, "mean", f->kld);
    set_real(k, "mean_unc", f->kld_unc);
    set_real(d, "rms", f->rms_dp);
    set_real(d, "rms_unc", f->rms_dp_unc);
    set_real(t, "rate", f->same_top);
    set_real(t, "rate_unc", f->same_top_unc);
    json_object_set_new(o, "kld", k);
    json_object_set_new(o, "delta_p", d);
    json_object_set_new(o, "same_top", t);
    json_object_set_new(o, "within_noise_floor", json_boolean(within));
    set_real(o, "kld_ratio", ratio);
    return o;
}

void tr_kld_stats_to_json(json_t *doc, const tr_kld_stats *s, const tr_kld_floor *f)
{
    json_t *same = json_object(), *tail = json_object();
    set_real(doc, "ppl_q", s->ppl_q);
    set_real(doc, "ppl_q_unc", s->ppl_q_unc);
    set_real(doc, "ppl_base", s->ppl_base);
    set_real(doc, "ppl_base_unc", s->ppl_base_unc);
    set_real(doc, "cor_ln_ppl", s->cor);
    set_real(doc, "ln_ppl_ratio", s->ln_ratio);
    set_real(doc, "ln_ppl_ratio_unc", s->ln_ratio_unc);
    set_real(doc, "ppl_ratio", s->ratio);
    set_real(doc, "ppl_ratio_unc", s->ratio_unc);
    set_real(doc, "ppl_diff", s->diff);
    set_real(doc, "ppl_diff_unc", s->diff_unc);
    json_object_set_new(doc, "kld", kld_json(s));
    json_object_set_new(doc, "delta_p", dp_json(s));
    set_real(same, "rate", s->same_top);
    set_real(same, "rate_unc", s->same_top_unc);
    json_object_set_new(doc, "same_top", same);
    json_object_set_new(doc, "n_scored", json_integer((json_int_t)s->n));
    json_object_set_new(doc, "non_finite", json_integer((json_int_t)s->non_finite));
    set_real(tail, "mean", s->tail_mean);
    set_real(tail, "max", s->tail_max);
    json_object_set_new(doc, "tail_mass", tail);
    json_object_set_new(doc, "kld_by_confidence", buckets_json(s));
    json_object_set_new(doc, "noise_floor", floor_json(s, f));
}

/* ---- text ------------------------------------------------------------------------------------------------------- */

static void perplexity_block(FILE *out, const tr_kld_stats *s)
{
    fprintf(out, "====== Perplexity statistics ======\n");
    fprintf(out, "Mean PPL(Q)                   : %10.6f ± %10.6f\n", s->ppl_q, s->ppl_q_unc);
    fprintf(out, "Mean PPL(base)                : %10.6f ± %10.6f\n", s->ppl_base, s->ppl_base_unc);
    fprintf(out, "Cor(ln(PPL(Q)), ln(PPL(base))): %6.2f%%\n", 100.0 * s->cor);
    fprintf(out, "Mean ln(PPL(Q)/PPL(base))     : %10.6f ± %10.6f\n", s->ln_ratio, s->ln_ratio_unc);
    fprintf(out, "Mean PPL(Q)/PPL(base)         : %10.6f ± %10.6f\n", s->ratio, s->ratio_unc);
    fprintf(out, "Mean PPL(Q)-PPL(base)         : %10.6f ± %10.6f\n", s->diff, s->diff_unc);
}

static void kld_block(FILE *out, const tr_kld_stats *s, const tr_kld_floor *f)
{
    fprintf(out, "\n====== KL divergence statistics ======\n");
    fprintf(out, "Mean    KLD: %10.6f ± %10.6f", s->kld_mean, s->kld_unc);
    if (f && f->present)
        fprintf(out, "   (noise floor %10.6f ± %10.6f)", f->kld, f->kld_unc);
    fprintf(out, "\n");
    for (int i = 0; i < TR_KLD_NQ; i++)
        fprintf(out, "%s KLD: %10.6f\n", KLD_LABEL[i], s->kld_q[i]);
}

static void dp_block(FILE *out, const tr_kld_stats *s, const tr_kld_floor *f)
{
    fprintf(out, "\n====== Token probability statistics ======\n");
    fprintf(out, "Mean    Δp: %8.3f ± %6.3f %%\n", 100.0 * s->dp_mean, 100.0 * s->dp_unc);
    for (int i = 0; i < TR_DP_NQ; i++)
        fprintf(out, "%s Δp: %8.3f%%\n", DP_LABEL[i], 100.0 * s->dp_q[i]);
    fprintf(out, "RMS Δp    : %8.3f ± %6.3f %%", 100.0 * s->rms_dp, 100.0 * s->rms_dp_unc);
    if (f && f->present)
        fprintf(out, "   (noise floor %8.3f ± %6.3f %%)", 100.0 * f->rms_dp, 100.0 * f->rms_dp_unc);
    fprintf(out, "\nSame top p: %8.3f ± %6.3f %%", 100.0 * s->same_top, 100.0 * s->same_top_unc);
    if (f && f->present)
        fprintf(out, "   (noise floor %8.3f ± %6.3f %%)", 100.0 * f->same_top, 100.0 * f->same_top_unc);
    fprintf(out, "\n");
}

static void buckets_block(FILE *out, const tr_kld_stats *s)
{
    fprintf(out, "\nKLD by base top-1 probability:\n");
    for (int b = 0; b < TR_KLD_BUCKETS; b++)
        fprintf(out, "  [%.2f, %.2f%c  n %8llu   mean KLD %10.6f\n", TR_KLD_BUCKET_EDGE[b], TR_KLD_BUCKET_EDGE[b + 1],
                b + 1 == TR_KLD_BUCKETS ? ']' : ')', (unsigned long long)s->bucket_n[b], s->bucket_mean[b]);
}

static void floor_verdict(FILE *out, const tr_kld_stats *s, const tr_kld_floor *f)
{
    double ratio;
    if (!f || !f->present)
        return;
    if (tr_kld_floor_within(s, f, &ratio))
        fprintf(out, "Noise floor: mean KLD is within the noise floor (|KLD - floor| = %.3g <= 2 sigma = %.3g)\n",
                fabs(s->kld_mean - f->kld), 2 * sqrt(s->kld_unc * s->kld_unc + f->kld_unc * f->kld_unc));
    else
        fprintf(out, "Noise floor: mean KLD is %.3f x the noise floor (bf16 residual run)\n", ratio);
}

void tr_kld_stats_print(FILE *out, const tr_kld_stats *s, const tr_kld_floor *f)
{
    perplexity_block(out, s);
    kld_block(out, s, f);
    dp_block(out, s, f);
    buckets_block(out, s);
    fprintf(out, "Tail mass (base, outside the stored top-K): mean %.6g, max %.6g\n", s->tail_mean, s->tail_max);
    if (s->non_finite)
        fprintf(out, "Non-finite records excluded: %llu\n", (unsigned long long)s->non_finite);
    floor_verdict(out, s, f);
}

void tr_kld_progress_print(FILE *out, uint32_t chunk, uint32_t n_chunks, const tr_kld_stats *s)
{
    fprintf(out, "[%u/%u] PPL(Q) %.4f ± %.4f  ln(PPL(Q)/PPL(base)) %.6f ± %.6f  KLD %.6f ± %.6f  "
            "RMS Δp %.3f ± %.3f %%  same top %.3f ± %.3f %%\n", chunk, n_chunks, s->ppl_q, s->ppl_q_unc,
            s->ln_ratio, s->ln_ratio_unc, s->kld_mean, s->kld_unc, 100.0 * s->rms_dp, 100.0 * s->rms_dp_unc,
            100.0 * s->same_top, 100.0 * s->same_top_unc);
}
