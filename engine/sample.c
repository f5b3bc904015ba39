/*
 * sample.c — ENGINE.md §5 sampling, step by step in HF's order on logits widened to double:
 *   1 repetition penalty (l < 0 ? l·r : l/r per distinct id seen),  2 greedy argmax (ties → lowest id),
 *   3 l/T,  4 top-k (keep ties with the k-th),  5 top-p (descending probability, keep while the mass before < p),
 *   6 min-p (prob < min_p·max removed),  7 draw: w = exp(l − max), Z ascending id, first id whose running sum > u·Z.
 */
#include "trellis/sample.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct tr_sampler {
    tr_sampling p;
    tr_rng rng;
    uint32_t V;
    double *l;                        /* [V] working logits */
    uint32_t *idx;                    /* [V] survivors */
    uint8_t *seen;                    /* [V] repetition-penalty marks */
};

void tr_sampling_default(tr_sampling *s)
{
    *s = (tr_sampling){0, 1.0, 50, 1.0, 0.0, 1.0};
}

int tr_sampling_is_greedy(const tr_sampling *s)
{
    return !s->do_sample || s->temperature == 0.0;
}

static int num_field(const json_t *doc, const char *name, double *out, const char *path, tr_error *err)
{
    const json_t *v = json_object_get(doc, name);
    if (!v || json_is_null(v))
        return TR_OK;
    if (!json_is_number(v))
        return tr_fail(err, TR_E_CONFIG, path, "%s: expected a number", name);
    *out = json_number_value(v);
    return TR_OK;
}

int tr_sampling_from_generation_config(const char *dir, tr_sampling *s, tr_error *err)
{
    char *path = tr_path_join(dir, "generation_config.json");
    if (!path)
        return tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    if (!tr_path_is_file(path)) {
        tr_dealloc(path);
        return TR_OK;
    }
    json_t *doc = NULL;
    int rc = tr_json_load_object(path, TR_E_CONFIG, &doc, err);
    double k = s->top_k;
    const json_t *ds = json_object_get(doc, "do_sample");
    if (rc == TR_OK && ds && !json_is_null(ds)) {
        if (!json_is_boolean(ds))
            rc = tr_fail(err, TR_E_CONFIG, path, "do_sample: expected a boolean");
        else
            s->do_sample = json_is_true(ds);
    }
    if (rc == TR_OK)
        rc = num_field(doc, "temperature", &s->temperature, path, err);
    if (rc == TR_OK)
        rc = num_field(doc, "top_k", &k, path, err);
    if (rc == TR_OK)
        rc = num_field(doc, "top_p", &s->top_p, path, err);
    if (rc == TR_OK)
        rc = num_field(doc, "min_p", &s->min_p, path, err);
    if (rc == TR_OK)
        rc = num_field(doc, "repetition_penalty", &s->repetition_penalty, path, err);
    s->top_k = k > 0 && k < 1e9 ? (int)k : 0;
    json_decref(doc);
    tr_dealloc(path);
    return rc;
}

int tr_generation_config_eos(const char *dir, int32_t **ids, size_t *n, tr_error *err)
{
    *n = 0;
    *ids = tr_malloc(sizeof **ids);
    char *path = tr_path_join(dir, "generation_config.json");
    if (!*ids || !path) {
        tr_dealloc(path);
        return tr_fail(err, TR_E_NOMEM, dir, "out of memory");
    }
    json_t *doc = NULL;
    int rc = tr_path_is_file(path) ? tr_json_load_object(path, TR_E_CONFIG, &doc, err) : TR_OK;
    const json_t *v = json_object_get(doc, "eos_token_id");
    size_t count = json_is_array(v) ? json_array_size(v) : json_is_integer(v) ? 1 : 0;
    if (rc == TR_OK && v && !json_is_null(v) && !count && !json_is_array(v))
        rc = tr_fail(err, TR_E_CONFIG, path, "eos_token_id: expected a token id or a list of them");
    if (rc == TR_OK && count) {
        int32_t *grown = tr_realloc(*ids, count * sizeof *grown);
        rc = grown ? TR_OK : tr_fail(err, TR_E_NOMEM, path, "out of memory");
        if (grown)
            *ids = grown;
    }
    for (size_t i = 0; rc == TR_OK && i < count; i++) {
        const json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX)
            rc = tr_fail(err, TR_E_CONFIG, path, "eos_token_id[%zu]: expected a token id", i);
        else
            (*ids)[(*n)++] = (int32_t)json_integer_value(e);
    }
    json_decref(doc);
    tr_dealloc(path);
    if (rc != TR_OK) {
        tr_dealloc(*ids);
        *ids = NULL;
        *n = 0;
    }
    return rc;
}

int tr_sampler_new(const tr_sampling *params, uint64_t seed, uint32_t V, tr_sampler **out, tr_error *err)
{
    tr_sampler *s = tr_calloc(1, sizeof *s);
    if (s) {
        s->l = tr_malloc((size_t)V * sizeof *s->l);
        s->idx = tr_malloc((size_t)V * sizeof *s->idx);
        s->seen = tr_calloc(V, 1);
    }
    if (!s || !s->l || !s->idx || !s->seen) {
        tr_sampler_free(s);
        return tr_fail(err, TR_E_NOMEM, "sampler", "cannot allocate %u-entry buffers", V);
    }
    s->p = *params;
    s->V = V;
    tr_rng_seed(&s->rng, seed);
    *out = s;
    return TR_OK;
}

void tr_sampler_free(tr_sampler *s)
{
    if (!s)
        return;
    tr_dealloc(s->l);
    tr_dealloc(s->idx);
    tr_dealloc(s->seen);
    tr_dealloc(s);
}

static void repetition_penalty(tr_sampler *s, const int32_t *hist, size_t n)
{
    const double r = s->p.repetition_penalty;
    for (size_t i = 0; i < n; i++) {
        uint32_t id = (uint32_t)hist[i];
        if (id >= s->V || s->seen[id])
            continue;
        s->seen[id] = 1;
        s->l[id] = s->l[id] < 0 ? s->l[id] * r : s->l[id] / r;
    }
    for (size_t i = 0; i < n; i++)
        if ((uint32_t)hist[i] < s->V)
            s->seen[hist[i]] = 0;
}

/* Sort helpers: survivors by descending logit, ties by lower id (ctx = the logits). */
static int by_logit_desc(const void *a, const void *b, void *ctx)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    const double *l = ctx;
    double lx = l[x], ly = l[y];
    if (lx != ly)
        return lx > ly ? -1 : 1;
    return (x > y) - (x < y);
}

static int by_id(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Probabilities of the survivors (softmax in double, max-shifted), written to p[i] for idx[i]. */
static void survivor_probs(const tr_sampler *s, uint32_t n, double *p)
{
    double mx = -INFINITY, z = 0.0;
    for (uint32_t i = 0; i < n; i++)
        mx = s->l[s->idx[i]] > mx ? s->l[s->idx[i]] : mx;
    for (uint32_t i = 0; i < n; i++) {
        p[i] = exp(s->l[s->idx[i]] - mx);
        z += p[i];
    }
    for (uint32_t i = 0; i < n; i++)
        p[i] /= z;
}

/* Steps 4–6 on the survivors kept sorted by descending logit (= descending probability). */
static uint32_t filter(tr_sampler *s, uint32_t n)
{
    qsort_r(s->idx, n, sizeof *s->idx, by_logit_desc, s->l);
    if (s->p.top_k > 0 && (uint32_t)s->p.top_k < n) {
        double kth = s->l[s->idx[s->p.top_k - 1]];
        uint32_t keep = (uint32_t)s->p.top_k;
        while (keep < n && s->l[s->idx[keep]] >= kth)
            keep++;
        n = keep;
    }
    double *p = tr_malloc((size_t)n * sizeof *p);
    if (!p)
        return n;   /* no memory for the probability filters: keep the top-k survivors */
    if (s->p.top_p < 1.0) {
        survivor_probs(s, n, p);
        double mass = 0.0;
        uint32_t keep = 0;
        while (keep < n && (keep == 0 || mass < s->p.top_p))
            mass += p[keep++];
        n = keep;
    }
    if (s->p.min_p > 0.0) {
        survivor_probs(s, n, p);
        uint32_t keep = 1;
        for (uint32_t i = 1; i < n; i++)
            if (!(p[i] < s->p.min_p * p[0]))
                s->idx[keep++] = s->idx[i];
        n = keep;
    }
    tr_dealloc(p);
    return n;
}

int32_t tr_sampler_next(tr_sampler *s, const float *logits, const int32_t *history, size_t n_history)
{
    for (uint32_t i = 0; i < s->V; i++)
        s->l[i] = logits[i];
    if (s->p.repetition_penalty != 1.0)
        repetition_penalty(s, history, n_history);
    if (tr_sampling_is_greedy(&s->p)) {
        uint32_t best = 0;
        for (uint32_t i = 1; i < s->V; i++)
            if (s->l[i] > s->l[best])
                best = i;
        return (int32_t)best;
    }
    for (uint32_t i = 0; i < s->V; i++) {
        s->l[i] /= s->p.temperature;
        s->idx[i] = i;
    }
    uint32_t n = filter(s, s->V);
    qsort(s->idx, n, sizeof *s->idx, by_id);
    double mx = -INFINITY, z = 0.0;
    for (uint32_t i = 0; i < n; i++)
        mx = s->l[s->idx[i]] > mx ? s->l[s->idx[i]] : mx;
    for (uint32_t i = 0; i < n; i++)
        z += exp(s->l[s->idx[i]] - mx);
    double target = tr_rng_u01(&s->rng) * z, run = 0.0;
    for (uint32_t i = 0; i < n; i++) {
        run += exp(s->l[s->idx[i]] - mx);
        if (run > target)
            return (int32_t)s->idx[i];
    }
    return (int32_t)s->idx[n - 1];
}
