/*
 * oracle.h — the HF-transformers oracle cases (ENGINE.md §7): importing them verbatim into golden/oracle with a
 * MANIFEST.json, opening any oracle folder (integrity checked first), and running the acceptance checks of one case
 * on one backend.  The unit tests and `trellis golden verify --oracle DIR` share this code, and both are driven by
 * the folder's index.json only (no case names or sizes are hard-coded), so they run unchanged on a held-out set.
 */
#ifndef TRELLIS_ORACLE_H
#define TRELLIS_ORACLE_H

#include "trellis/status.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

/* Copy SRC's index.json, tokenizer files and every case folder into DST verbatim, write DST/MANIFEST.json
 * (trellis.oracle_manifest/1), check each logits.f32 against the sha256 in its oracle.json.  A differing existing
 * file is refused (TR_E_INPUT naming it) unless force.  log (may be NULL) gets one line per file written. */
int tr_oracle_import(const char *src, const char *dst, int force, FILE *log, tr_error *err);

/* One case as read from its oracle.json. */
typedef struct tr_oracle_case {
    char *name, *arch, *weights_dtype, *dir;
    int32_t *input_ids;               /* [T] */
    uint32_t T, V, L1, D;             /* logits [T][V], hidden [L1 = L+1][T][D] */
    float *logits, *hidden;
    int32_t *prompt_ids, *output_ids; /* greedy.prompt_ids [n_prompt], greedy.output_ids [n_output] */
    uint32_t n_prompt, n_output;
    double oracle_pvd;                /* oracle_prefill_vs_decode_max_abs */
} tr_oracle_case;

typedef struct tr_oracle tr_oracle;

/* Open DIR: verify MANIFEST.json when present (size and sha256 of every file, TR_E_INPUT naming the first bad
 * one), else each case's logits.f32 against its oracle.json; then read every case of index.json. */
int tr_oracle_open(const char *dir, tr_oracle **out, tr_error *err);
void tr_oracle_close(tr_oracle *o);
const char *tr_oracle_dir(const tr_oracle *o);
uint32_t tr_oracle_case_count(const tr_oracle *o);
const tr_oracle_case *tr_oracle_case_at(const tr_oracle *o, uint32_t i);
/* Tokenizer files named by index.json ("tokenizers"), each with its "<stem>_cases.json". */
uint32_t tr_oracle_tokenizer_count(const tr_oracle *o);
const char *tr_oracle_tokenizer_at(const tr_oracle *o, uint32_t i);   /* file name relative to the folder */

/* Routes of one run: ids sorted ascending per (layer, position) and the margins, for agreement checks. */
typedef struct tr_oracle_routes {
    uint32_t L, T, k;
    int32_t *ids;                     /* [L][T][k], sorted; layers without MoE hold -1 */
    double *margin;                   /* [L][T]; NAN where no route */
} tr_oracle_routes;

/* Results of one case on one backend (ENGINE.md §7 acceptance 1–6; errors are max |Δ|, NaN counts as failure). */
typedef struct tr_oracle_result {
    char backend[16];
    double logits_err, logits_bound;
    int logits_ok;
    double hidden_worst_ratio;        /* max over indices of err_i / bound_i */
    int hidden_ok, hidden_first_fail; /* -1 when none */
    int greedy_ok, greedy_first_diff; /* -1 when identical */
    int32_t greedy_ids[64];
    uint32_t n_greedy;
    double pvd_split_err, pvd_incremental_err;
    int pvd_ok;
    int mla_checked, mla_ok;
    double mla_logits_diff, mla_hidden_diff;
    double min_margin;                /* over every routing decision of the prefill run */
    uint32_t ambiguous;               /* decisions with margin < 1e-5 (excluded from agreement) */
    char first_ambiguous[96];
    int routes_ok;                    /* same sets across prefill / decode / MLA forms on this backend */
    tr_oracle_routes routes;          /* of the prefill run, for cross-backend agreement */
    int ok;
    char detail[512];                 /* the first failed check */
} tr_oracle_result;

#define TR_ORACLE_AMBIGUOUS 1e-5

/* Run every check of one case on backend (threads 0 = online CPUs).  Returns TR_OK when the checks could run
 * (whether they passed is in r->ok); errors: loading the model, engine errors, TR_E_NOMEM. */
int tr_oracle_run_case(const tr_oracle *o, uint32_t i, const char *backend, int threads, tr_oracle_result *r,
                       tr_error *err);
void tr_oracle_result_release(tr_oracle_result *r);
/* Route agreement of two runs of the same case (acceptance 6): 1 when every unambiguous decision selects the same
 * set; detail names the first disagreement. */
int tr_oracle_routes_agree(const tr_oracle_routes *a, const tr_oracle_routes *b, char *detail, size_t size);
/* The result as a JSON object (golden verify --oracle). */
json_t *tr_oracle_result_json(const tr_oracle_case *c, const tr_oracle_result *r);

#endif
