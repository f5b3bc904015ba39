/*
 * kld.h — the two-pass KL-divergence evaluation of ENGINE.md §6: the base-logits file (*.tlogits), its streaming
 * writer and validating reader, the per-record comparison of a candidate's logits with a stored base record, and the
 * statistics block (trellis.kld/1).
 *
 * File layout (little-endian; docs/schemas.md):
 *
 *     "TRLGTS01"  u32 version (1)  u32 n  header JSON [n]
 *     u32 tokens[n_tokens]                                   the stream as evaluated (BOS applied)
 *     n_records × { f64 lse, f64 tail_mass, u32 target, f32 target_logit, u32 ids[K], f32 logits[K],
 *                   [u16 routes[n_moe_layers·k]] }
 *     u32 n  trailer JSON [n]  "TRLGTEND"
 *
 * The trailer holds "sha256" = SHA-256 of every byte before its own u32 length field and "trailer_sha256" = SHA-256
 * of the trailer text with that member's 64 hex digits replaced by '0', so every byte of the file is covered.
 *
 * Per record (pass 2, double, every sum in ascending id order):
 *     lp_i = l_i − lse,  p_i = exp(lp_i),  lq_i = c_i − lse(c),  q_tail = Σ_{i∉record} exp(lq_i)
 *     KLD  = Σ_{i∈record} p_i (lp_i − lq_i) + (p_tail > 0 ? p_tail (ln p_tail − ln q_tail) : 0)
 *     Δp   = exp(lq_target) − exp(lp_target);   same top = argmax c (lowest id on ties) == ids[0]
 */
#ifndef TRELLIS_KLD_H
#define TRELLIS_KLD_H

#include "trellis/eval.h"
#include "trellis/fileio.h"
#include "trellis/status.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define TR_TLOGITS_MAGIC "TRLGTS01"
#define TR_TLOGITS_END_MAGIC "TRLGTEND"
#define TR_TLOGITS_VERSION 1u
#define TR_KLD_DEFAULT_TOPK 1024u

/* ---- records ---------------------------------------------------------------------------------------------------- */

/* One scored position of the base run. */
typedef struct tr_kld_rec {
    double lse;                       /* m + ln Σ exp(l_i − m), ascending id */
    double tail_mass;                 /* Σ_{i not stored} exp(l_i − lse), ascending id; 0 when K = V */
    uint32_t target;
    float target_logit;
    uint32_t *ids;                    /* [K] by descending logit, ties → lower id */
    float *logits;                    /* [K] */
    uint16_t *routes;                 /* [n_routes] (layer-major, then slot) or NULL */
} tr_kld_rec;

/* Scratch for building and comparing records of a V-token vocabulary with K stored ids (K ≤ V). */
typedef struct tr_kld_work {
    uint32_t V, K, n_routes;
    uint32_t *slot;                   /* [V]: 1 + index in the record, 0 = not stored; all 0 between calls */
    void *heap;                       /* [K] selection heap */
    tr_kld_rec rec;                   /* buffers for one record */
} tr_kld_work;

int tr_kld_work_init(tr_kld_work *w, uint32_t V, uint32_t K, uint32_t n_routes, tr_error *err);
void tr_kld_work_free(tr_kld_work *w);

/* Pass 1: w->rec from a logits row [V] and its target (routes are left to the caller). */
void tr_kld_rec_build(tr_kld_work *w, const float *logits, uint32_t target);

/* The comparison of one candidate row with one record. */
typedef struct tr_kld_point {
    double kld, delta_p;
    double nll_q, nll_base;           /* lse(c) − c_target;  lse − target_logit */
    double p_top_base;                /* exp(logits[0] − lse): base top-1 probability */
    double tail_mass;                 /* the record's p_tail */
    int same_top;
    int finite;                       /* kld, Δp and both nll finite */
} tr_kld_point;

/* Pass 2: compare the candidate row cand [V] with r (r->ids [K] distinct and < V, else TR_E_INPUT). */
int tr_kld_compare(tr_kld_work *w, const tr_kld_rec *r, const float *cand, tr_kld_point *out, tr_error *err);

/* ---- protocol plan ---------------------------------------------------------------------------------------------- */

/* What a walk of tr_eval_walk over n tokens evaluates: windows, records (scored positions) and the tokens used
 * (the prefix [0, n_used) that the windows cover). o must be resolved. */
typedef struct tr_kld_plan {
    uint32_t windows;
    uint64_t n_records;
    size_t n_used;
} tr_kld_plan;
void tr_kld_plan_walk(const tr_eval_opts *o, size_t n, tr_kld_plan *out);

/* ---- the .tlogits file ------------------------------------------------------------------------------------------ */

/* The header's contents. */
typedef struct tr_tlogits_meta {
    const char *arch, *model, *backend;
    const char *config_sha256;        /* of the base model's config.json */
    const char *tokenizer_sha256;     /* NULL when the model has no tokenizer.json */
    const char *text_sha256;          /* of the text or ids file */
    const char *input;                /* its name */
    tr_eval_opts eval;                /* resolved; max_chunks = windows */
    uint32_t V, K;
    uint64_t n_tokens, n_records;
    uint32_t n_moe_layers, k;         /* routes stored when n_moe_layers > 0 */
} tr_tlogits_meta;

typedef struct tr_tlogits_writer tr_tlogits_writer;

/* Create path and write magic, version, header and tokens [m->n_tokens] (each < V). */
int tr_tlogits_create(const char *path, const tr_tlogits_meta *m, const int32_t *tokens, tr_tlogits_writer **out,
                      tr_error *err);
/* Append one record (r->routes must be set when the header stores routes). */
int tr_tlogits_append(tr_tlogits_writer *w, const tr_kld_rec *r, tr_error *err);
/* Write the trailer: the members of extra (an object, borrowed; may be NULL), n_records, sha256, trailer_sha256;
 * close.  TR_E_INTERNAL if fewer or more records than the header announced were appended.  Frees w; on failure
 * the file is removed. */
int tr_tlogits_finish(tr_tlogits_writer *w, const json_t *extra, tr_error *err);
/* Close, remove the partial file and free w (NULL is fine). */
void tr_tlogits_abort(tr_tlogits_writer *w);

/* An open, validated file (mapped read-only). */
typedef struct tr_tlogits {
    char *path;
    tr_mapped map;
    json_t *header, *trailer;
    tr_eval_opts eval;                /* protocol, ctx, stride, bos; max_chunks = n_chunks */
    uint32_t n_chunks, V, K, n_moe_layers, k;
    uint64_t n_tokens, n_records;
    size_t rec_size;
    const uint8_t *tokens, *records;
} tr_tlogits;

/* Validate magic, version, the trailer (end magic, both hashes), header members, sizes and counts.  Every failure
 * is TR_E_INPUT naming path ("base.tlogits: trailer hash mismatch (file truncated or modified)"), TR_E_IO when the
 * file cannot be read, TR_E_NOMEM. */
int tr_tlogits_open(const char *path, tr_tlogits **out, tr_error *err);
void tr_tlogits_close(tr_tlogits *f);
/* The token stream, decoded (tr_dealloc); each id < V, else TR_E_INPUT. */
int tr_tlogits_tokens(const tr_tlogits *f, int32_t **out, tr_error *err);
/* Decode record i into r (buffers of a tr_kld_work made for f->V, f->K and the stored routes); target and ids
 * must be < V (TR_E_INPUT otherwise). */
int tr_tlogits_record(const tr_tlogits *f, uint64_t i, tr_kld_rec *r, tr_error *err);

/* ---- statistics ------------------------------------------------------------------------------------------------- */

#define TR_KLD_BUCKETS 6              /* base top-1 probability: [0,.25) [.25,.5) [.5,.75) [.75,.9) [.9,.95) [.95,1] */

/* Running sums (double, in order) over the finite points; with keep_values also every KLD and Δp for percentiles. */
typedef struct tr_kld_accum {
    uint64_t n, non_finite, same_top;
    double s_nq, s_nq2, s_nb, s_nb2, s_nqnb;
    double s_kld, s_kld2, s_dp, s_dp2, s_dp4;
    double tail_sum, tail_max;
    uint64_t bucket_n[TR_KLD_BUCKETS];
    double bucket_kld[TR_KLD_BUCKETS];
    int keep_values;
    double *kld_v, *dp_v;
    size_t cap;
} tr_kld_accum;

void tr_kld_accum_init(tr_kld_accum *a, int keep_values);
int tr_kld_accum_add(tr_kld_accum *a, const tr_kld_point *p, tr_error *err);   /* TR_E_NOMEM */
void tr_kld_accum_free(tr_kld_accum *a);

#define TR_KLD_NQ 11                  /* max, 99.9, 99, 95, 90, median, 10, 5, 1, 0.1 %, min */
#define TR_DP_NQ 13                   /* max, 99.9, 99, 95, 90, 75, median, 25, 10, 5, 1, 0.1 %, min */

/* The statistics block.  σ of a mean: sqrt((⟨x²⟩ − ⟨x⟩²)/(N−1)) (0 when N < 2). */
typedef struct tr_kld_stats {
    uint64_t n, non_finite;
    double ppl_q, ppl_q_unc, ppl_base, ppl_base_unc;
    double cor;                       /* cov(nll_q, nll_b)/(sd_q·sd_b), a fraction */
    double ln_ratio, ln_ratio_unc, ratio, ratio_unc, diff, diff_unc;
    double kld_mean, kld_unc, kld_q[TR_KLD_NQ];
    double dp_mean, dp_unc, dp_q[TR_DP_NQ], rms_dp, rms_dp_unc;
    double same_top, same_top_unc;
    double tail_mean, tail_max;
    uint64_t bucket_n[TR_KLD_BUCKETS];
    double bucket_mean[TR_KLD_BUCKETS];   /* NAN for an empty bucket */
    int has_quantiles;
} tr_kld_stats;

/* Means, uncertainties and correlations from the running sums (quantiles NAN). */
void tr_kld_stats_summary(const tr_kld_accum *a, tr_kld_stats *s);
/* tr_kld_stats_summary plus the percentiles (sorts a's kept values in place). */
void tr_kld_stats_full(tr_kld_accum *a, tr_kld_stats *s);

/* GSL's type-7 quantile of sorted[0..n): h = (n−1)p, x[⌊h⌋] + (h − ⌊h⌋)(x[⌊h⌋+1] − x[⌊h⌋]); NAN when n = 0. */
double tr_quantile_sorted(const double *sorted, size_t n, double p);
/* The fractions and labels of the KLD / Δp percentile rows ("99.9%", "Median", …) and their JSON keys. */
extern const double TR_KLD_QF[TR_KLD_NQ], TR_DP_QF[TR_DP_NQ];
extern const char *const TR_KLD_QKEY[TR_KLD_NQ], *const TR_DP_QKEY[TR_DP_NQ];
extern const double TR_KLD_BUCKET_EDGE[TR_KLD_BUCKETS + 1];

/* Router agreement between stored and candidate routes: per (record, MoE layer) the selected sets A and B. */
typedef struct tr_route_agree {
    uint32_t n_layers, k;
    uint64_t n;                       /* records */
    uint64_t *exact, *overlap;        /* [n_layers]: sets equal; Σ |A∩B| */
} tr_route_agree;
int tr_route_agree_init(tr_route_agree *g, uint32_t n_layers, uint32_t k, tr_error *err);
void tr_route_agree_add(tr_route_agree *g, const uint16_t *base, const uint16_t *cand);   /* [n_layers·k] each */
void tr_route_agree_free(tr_route_agree *g);
/* {exact_set_rate, mean_overlap, n_records, n_moe_layers, k, per_layer: [{moe_layer, exact_set_rate,
 * mean_overlap}]} */
json_t *tr_route_agree_json(const tr_route_agree *g);

/* The noise floor: statistics of the bf16-residual run against the exact base, stored in the trailer. */
typedef struct tr_kld_floor {
    int present;
    uint64_t n;
    double kld, kld_unc, rms_dp, rms_dp_unc, same_top, same_top_unc;
} tr_kld_floor;
/* The trailer's "noise_floor" object of a pass-1 floor run. */
json_t *tr_kld_floor_json(const tr_kld_stats *s);
/* Read it back from a trailer ("noise_floor": null → present = 0); TR_E_INPUT when malformed. */
int tr_kld_floor_parse(const json_t *trailer, const char *path, tr_kld_floor *out, tr_error *err);
/* within = |KLD − KLD_floor| ≤ 2·sqrt(σ² + σ_floor²); ratio = KLD / KLD_floor. */
int tr_kld_floor_within(const tr_kld_stats *s, const tr_kld_floor *f, double *ratio);

/* ---- reports ---------------------------------------------------------------------------------------------------- */

/* The statistics members of trellis.kld/1 added to doc (fractions, not %; non-finite numbers as strings):
 * ppl_q … ppl_diff_unc, kld{…}, delta_p{…}, same_top{…}, tail_mass{mean,max}, kld_by_confidence, non_finite,
 * noise_floor (null when f is NULL or absent). */
void tr_kld_stats_to_json(json_t *doc, const tr_kld_stats *s, const tr_kld_floor *f);
/* The three blocks of ENGINE.md §6 (percent where the spec prints %), the floor beside mean KLD, RMS Δp and
 * same top, then the confidence buckets. */
void tr_kld_stats_print(FILE *out, const tr_kld_stats *s, const tr_kld_floor *f);
/* One progress line: chunk, PPL(Q), ln ratio, KLD, RMS Δp, same top, each ± σ so far. */
void tr_kld_progress_print(FILE *out, uint32_t chunk, uint32_t n_chunks, const tr_kld_stats *s);

#endif
