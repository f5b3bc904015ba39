/*
 * cmd_study.c — `trellis study`: the accuracy sweep of bits per weight against perplexity and KL divergence.
 *
 *   trellis study --models DIR[,DIR…] --bits SPEC[;SPEC…] (-f TEXT | --ids-file F) [--ctx N]
 *                 [--rotation none|hadamard128|both] [--out DIR] [--json FILE] [--resamples B] [--bootstrap-seed S]
 *                 [--backend B] [--threads N] [--overwrite] [--no-progress]
 *
 * For each float model: `kld base --topk all` in-process writes OUT/<model>-float.tlogits (pass 1: the float model's
 * exact logits over the llamacpp protocol's scored positions; its perplexity is read back from the records).  For
 * each SPEC and rotation: `quantize` in-process into OUT/<model>-<spec>-<rotation>/, then pass 2 here with the
 * engine (tr_eval_walk, tr_kld_compare): per scored token the KLD, Δp, same-top and both NLLs.  Statistics: PPL ± σ
 * and mean KLD ± σ with GSL (σ = sd/√N), a percentile-bootstrap 95 % CI of the mean KLD that resamples whole windows
 * (tokens inside a window are correlated) with a seeded mt19937, and the trellis.kld/1 statistics block.
 * hadamard128 only applies to layers with in_features % 128 == 0; a model without such a layer gets an entry with
 * status "not_applicable" instead of a run that would silently be rotation none.  Writes trellis.study/1.
 */
#include "cli.h"
#include "engine_opts.h"
#include "trellis/alloc.h"
#include "trellis/checkpoint.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/kld.h"
#include "trellis/quantize.h"
#include "trellis/version.h"

#include <dirent.h>
#include <errno.h>
#include <gsl/gsl_rng.h>
#include <gsl/gsl_sort.h>
#include <gsl/gsl_statistics_double.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>


static const char *const CMD = "study";
static FILE *human;   /* progress lines: stdout, or stderr when the JSON goes to stdout */
static const char NOT_APPLICABLE[] = "not applicable: no layer with I % 128 == 0";

typedef struct study_opts {
    char *models_buf, *specs_buf;
    const char *models[64], *specs[64];
    size_t nmodels, nspecs;
    const char *text, *ids_file, *ctx, *out, *json, *backend, *threads;
    int rot[2];                       /* [TR_ROT_NONE], [TR_ROT_HADAMARD128] wanted */
    unsigned long resamples;
    unsigned long seed;
    int overwrite, no_progress;
} study_opts;

/* ---- options ----------------------------------------------------------------------------------------------------- */

static void help(void)
{
    fprintf(cli_out,
            "Usage: trellis study --models DIR[,DIR...] --bits SPEC[;SPEC...] (-f TEXT | --ids-file F) [--ctx N]\n"
            "         [--rotation none|hadamard128|both] [--out DIR] [--json FILE] [--resamples B]\n"
            "         [--bootstrap-seed S] [--backend B] [--threads N] [--overwrite] [--no-progress]\n"
            "  For each float model and bit spec: quantize into OUT/<model>-<spec>-<rotation>/, evaluate the\n"
            "  perplexity of the float and the quantized model (llamacpp protocol, --ctx, default 512) and the KL\n"
            "  divergence of the quantized model against the float one; writes trellis.study/1 (default\n"
            "  OUT/study.json; OUT default reports/out/study).  PPL and mean KLD carry sigma (GSL) and the KLD a\n"
            "  bootstrap 95%% CI over windows (mt19937, --bootstrap-seed, default 1; --resamples, default 2000).\n"
            "  hadamard128 applies only to layers with in_features %% 128 == 0; without one the entry says\n"
            "  \"%s\".  --overwrite replaces existing quantized folders.\n"
            "Exit: 0 done, 2 usage or input error, 3 internal error, 4 out of memory.\n", NOT_APPLICABLE);
}

/* Split buf (owned) at sep into out[]; empty items are a usage error. */
static int split(const char *what, char *buf, char sep, const char **out, size_t *n)
{
    *n = 0;
    for (char *p = buf, *q; p; p = q) {
        q = strchr(p, sep);
        if (q)
            *q++ = '\0';
        if (!*p)
            return cli_usage(CMD, "%s: empty item", what);
        if (*n == 64)
            return cli_usage(CMD, "%s: at most 64 items", what);
        out[(*n)++] = p;
    }
    return CLI_OK;
}

static int parse_ulong(const char *what, const char *v, unsigned long lo, unsigned long hi, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long x = strtoul(v, &end, 10);
    if (!*v || *end || errno || v[0] == '-' || x < lo || x > hi)
        return cli_usage(CMD, "%s: expected an integer in [%lu, %lu], got \"%s\"", what, lo, hi, v);
    *out = x;
    return CLI_OK;
}

static int set_rotation(study_opts *o, const char *v)
{
    o->rot[0] = !strcmp(v, "none") || !strcmp(v, "both");
    o->rot[1] = !strcmp(v, "hadamard128") || !strcmp(v, "both");
    return o->rot[0] || o->rot[1] ? CLI_OK : cli_usage(CMD, "--rotation: none, hadamard128 or both, got \"%s\"", v);
}

/* One option: 1 consumed, 0 unknown, -1 usage error printed. */
static int study_opt(int argc, char **argv, int *i, study_opts *o)
{
    static const char *const names[] = {"--models", "--bits", "-f", "--ids-file", "--ctx", "--rotation", "--out",
                                        "--backend", "--threads", "--resamples", "--bootstrap-seed"};
    const char *v;
    if (cli_opt_json(argc, argv, i, &v))
        return o->json = v, 1;
    if (!strcmp(argv[*i], "--overwrite"))
        return o->overwrite = 1;
    if (!strcmp(argv[*i], "--no-progress"))
        return o->no_progress = 1;
    for (int k = 0; k < 11; k++) {
        int r = cli_opt(argc, argv, i, names[k], &v);
        if (r == 0)
            continue;
        if (r < 0)
            return cli_usage(CMD, "%s needs a value", names[k]), -1;
        int rc = CLI_OK;
        switch (k) {
        case 0: tr_dealloc(o->models_buf); o->models_buf = tr_strdup(v); break;
        case 1: tr_dealloc(o->specs_buf); o->specs_buf = tr_strdup(v); break;
        case 2: o->text = v; break;
        case 3: o->ids_file = v; break;
        case 4: o->ctx = v; break;
        case 5: rc = set_rotation(o, v); break;
        case 6: o->out = v; break;
        case 7: o->backend = v; break;
        case 8: o->threads = v; break;
        case 9: rc = parse_ulong("--resamples", v, 100, 1000000, &o->resamples); break;
        default: rc = parse_ulong("--bootstrap-seed", v, 0, 0xfffffffful, &o->seed); break;
        }
        if ((k == 0 && !o->models_buf) || (k == 1 && !o->specs_buf))
            return fprintf(cli_err, "trellis %s: error: out of memory\n", CMD), -1;
        return rc == CLI_OK ? 1 : -1;
    }
    return 0;
}

static int check_opts(study_opts *o)
{
    if (!o->models_buf || !o->specs_buf)
        return cli_usage(CMD, "give --models DIR[,DIR...] and --bits SPEC[;SPEC...]");
    if (!o->text == !o->ids_file)
        return cli_usage(CMD, "give exactly one of -f TEXT or --ids-file FILE");
    int rc = split("--models", o->models_buf, ',', o->models, &o->nmodels);
    if (rc == CLI_OK)
        rc = split("--bits", o->specs_buf, ';', o->specs, &o->nspecs);
    for (size_t i = 0; rc == CLI_OK && i < o->nspecs; i++) {
        tr_bits_spec s;
        tr_error err;
        if (tr_bits_spec_parse(o->specs[i], &s, &err) != TR_OK)
            rc = cli_fail(CMD, &err);
    }
    for (size_t i = 0; rc == CLI_OK && i < o->nmodels; i++)
        if (!tr_path_is_dir(o->models[i])) {
            tr_error err;
            tr_fail(&err, TR_E_IO, o->models[i], "not a model folder");
            rc = cli_fail(CMD, &err);
        }
    return rc;
}

/* ---- in-process commands ----------------------------------------------------------------------------------------- */

/* Run `trellis ARGS…` with its stdout discarded (errors still reach stderr).  Returns its exit code. */
static int run_quiet(const char **args, int n)
{
    char *argv[40];
    argv[0] = (char *)"trellis";
    for (int i = 0; i < n && i < 38; i++)
        argv[i + 1] = (char *)args[i];
    argv[n + 1] = NULL;
    FILE *null = fopen("/dev/null", "w"), *save = cli_out;
    if (null)
        cli_out = null;
    int rc = trellis_main(n + 1, argv);
    cli_out = save;
    if (null)
        fclose(null);
    return rc;
}

/* The engine options passed on to every run. */
static int engine_args(const study_opts *o, const char **a, int n)
{
    if (o->backend)
        a[n++] = "--backend", a[n++] = o->backend;
    if (o->threads)
        a[n++] = "--threads", a[n++] = o->threads;
    a[n++] = "--no-progress";
    return n;
}

static int pass1(const study_opts *o, const char *model, const char *tlogits)
{
    const char *a[32];
    int n = 0;
    a[n++] = "kld", a[n++] = "base", a[n++] = "-m", a[n++] = model;
    a[n++] = o->text ? "-f" : "--ids-file", a[n++] = o->text ? o->text : o->ids_file;
    if (o->ctx)
        a[n++] = "--ctx", a[n++] = o->ctx;
    a[n++] = "--topk", a[n++] = "all", a[n++] = "-o", a[n++] = tlogits, a[n++] = "-q";
    return run_quiet(a, engine_args(o, a, n));
}

static int quantize(const study_opts *o, const char *model, const char *spec, tr_rotation rot, const char *dir,
                    const char *json)
{
    const char *a[16];
    int n = 0;
    a[n++] = "quantize", a[n++] = "-m", a[n++] = model, a[n++] = "--out", a[n++] = dir, a[n++] = "--bits",
    a[n++] = spec, a[n++] = "--rotation", a[n++] = tr_rotation_name(rot), a[n++] = "--json", a[n++] = json;
    a[n++] = "--no-progress";
    return run_quiet(a, n);
}

/* ---- paths ------------------------------------------------------------------------------------------------------- */

static void basename_of(const char *path, char *buf, size_t size)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/')
        b--;
    snprintf(buf, size, "%.*s", (int)(n - b), path + b);
}

/* "gate=6,up=2" -> "gate6_up2"; "avg=3.5" -> "avg3.5". */
static void slug_of(const char *spec, char *buf, size_t size)
{
    size_t k = 0;
    for (const char *p = spec; *p && k + 1 < size; p++)
        if (*p != '=')
            buf[k++] = *p == ',' ? '_' : *p;
    buf[k] = '\0';
}

/* An empty folder at dir: created, or emptied (--overwrite; plain files only). */
static int fresh_dir(const study_opts *o, const char *dir, tr_error *err)
{
    int rc = tr_mkdir_p(dir, err);
    DIR *d = rc == TR_OK ? opendir(dir) : NULL;
    if (rc != TR_OK)
        return rc;
    if (!d)
        return tr_fail(err, TR_E_IO, dir, "cannot open the folder");
    for (struct dirent *e; rc == TR_OK && (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *p = tr_path_join(dir, e->d_name);
        if (!p)
            rc = tr_fail(err, TR_E_NOMEM, dir, "out of memory");
        else if (!o->overwrite)
            rc = tr_fail(err, TR_E_USAGE, dir, "exists and is not empty (give --overwrite to replace it)");
        else if (!tr_path_is_file(p) || unlink(p) != 0)
            rc = tr_fail(err, TR_E_IO, p, "cannot remove it (only plain files are replaced)");
        tr_dealloc(p);
    }
    closedir(d);
    return rc;
}

/* Does any linear the spec quantizes have in_features % 128 == 0?  Reads only the safetensors headers. */
static int hadamard_applies(const char *model, const char *spec, int *applies, tr_error *err)
{
    tr_bits_spec s;
    tr_ckpt *c;
    int rc = tr_bits_spec_parse(spec, &s, err);
    if (rc == TR_OK)
        rc = tr_ckpt_open(model, NULL, &c, err);
    if (rc != TR_OK)
        return rc;
    *applies = 0;
    for (size_t i = 0; i < tr_ckpt_tensor_count(c) && !*applies; i++) {
        tr_tensor_ref r;
        if (tr_ckpt_tensor_at(c, i, &r) != TR_OK || r.t->ndim != 2)
            continue;
        int role = tr_quant_role(r.name);
        *applies = role >= 0 && tr_bits_spec_width(&s, (tr_qrole)role) != 0 && r.t->shape[1] % 128 == 0;
    }
    tr_ckpt_close(c);
    return TR_OK;
}

/* ---- statistics -------------------------------------------------------------------------------------------------- */

/* PPL ± σ from NLLs: exp(mean), exp(mean)·sd/√N (GSL). */
static void ppl_of(const double *nll, size_t n, double *ppl, double *unc)
{
    *ppl = n ? exp(gsl_stats_mean(nll, 1, n)) : NAN;
    *unc = n >= 2 ? *ppl * gsl_stats_sd(nll, 1, n) / sqrt((double)n) : NAN;
}

typedef struct points {
    double *kld, *nq, *nb;            /* finite points only */
    uint32_t *win;
    size_t n, cap;
} points;

static int points_add(points *p, double kld, double nq, double nb, uint32_t win)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 1024;
        double *a = tr_realloc(p->kld, cap * sizeof *a);
        if (a)
            p->kld = a;
        double *b = a ? tr_realloc(p->nq, cap * sizeof *b) : NULL;
        if (b)
            p->nq = b;
        double *c = b ? tr_realloc(p->nb, cap * sizeof *c) : NULL;
        if (c)
            p->nb = c;
        uint32_t *w = c ? tr_realloc(p->win, cap * sizeof *w) : NULL;
        if (!w)
            return TR_E_NOMEM;
        p->win = w;
        p->cap = cap;
    }
    p->kld[p->n] = kld, p->nq[p->n] = nq, p->nb[p->n] = nb, p->win[p->n++] = win;
    return TR_OK;
}

static void points_free(points *p)
{
    tr_dealloc(p->kld);
    tr_dealloc(p->nq);
    tr_dealloc(p->nb);
    tr_dealloc(p->win);
    memset(p, 0, sizeof *p);
}

/* Percentile bootstrap of the mean KLD resampling whole windows: 2.5 % and 97.5 % of B resampled means. */
static int bootstrap(const points *p, uint32_t windows, const study_opts *o, double *lo, double *hi)
{
    *lo = *hi = NAN;
    if (!p->n || !windows)
        return TR_OK;
    double *sum = tr_calloc(windows, sizeof *sum), *cnt = tr_calloc(windows, sizeof *cnt);
    double *means = tr_malloc(o->resamples * sizeof *means);
    gsl_rng *g = sum && cnt && means ? gsl_rng_alloc(gsl_rng_mt19937) : NULL;
    if (g) {
        gsl_rng_set(g, o->seed);
        for (size_t i = 0; i < p->n; i++)
            if (p->win[i] < windows)
                sum[p->win[i]] += p->kld[i], cnt[p->win[i]] += 1;
        size_t m = 0;
        for (unsigned long b = 0; b < o->resamples; b++) {
            double s = 0, c = 0;
            for (uint32_t k = 0; k < windows; k++) {
                unsigned long j = gsl_rng_uniform_int(g, windows);
                s += sum[j], c += cnt[j];
            }
            if (c > 0)
                means[m++] = s / c;
        }
        if (m) {
            gsl_sort(means, 1, m);
            *lo = gsl_stats_quantile_from_sorted_data(means, 1, m, 0.025);
            *hi = gsl_stats_quantile_from_sorted_data(means, 1, m, 0.975);
        }
        gsl_rng_free(g);
    }
    int rc = g ? TR_OK : TR_E_NOMEM;
    tr_dealloc(sum);
    tr_dealloc(cnt);
    tr_dealloc(means);
    return rc;
}

/* ---- pass 2 ------------------------------------------------------------------------------------------------------ */

typedef struct pass2 {
    const tr_tlogits *f;
    tr_kld_work work;
    tr_kld_accum acc;
    uint64_t next;
    points pts;
} pass2;

static int p2_scored(void *user, const tr_scored *s, tr_error *err)
{
    pass2 *r = user;
    int rc = tr_tlogits_record(r->f, r->next, &r->work.rec, err);
    if (rc != TR_OK)
        return rc;
    if (r->work.rec.target != (uint32_t)s->target)
        return tr_fail(err, TR_E_INPUT, r->f->path, "record %llu: target %u, the stream has %d at position %zu",
                       (unsigned long long)r->next, r->work.rec.target, s->target, s->pos);
    r->next++;
    tr_kld_point p;
    rc = tr_kld_compare(&r->work, &r->work.rec, s->logits, &p, err);
    if (rc == TR_OK)
        rc = tr_kld_accum_add(&r->acc, &p, err);
    if (rc == TR_OK && p.finite && points_add(&r->pts, p.kld, p.nll_q, p.nll_base, s->window) != TR_OK)
        rc = tr_fail(err, TR_E_NOMEM, r->f->path, "out of memory");
    return rc;
}

/* Effective bits per weight: every stored byte of the quantized linears (header, padded tiles, scales, su, sv). */
typedef struct bpw_acc {
    uint64_t qweights, index_bits, bytes;
} bpw_acc;

static void count_linear(void *user, const tr_linear *l)
{
    bpw_acc *a = user;
    if (!l->q)
        return;
    uint64_t n = (uint64_t)l->O * l->I;
    a->qweights += n;
    a->index_bits += n * l->q->bits;
    a->bytes += l->q->indices_len + 4ull * ((uint64_t)l->q->G * l->O + l->I + l->O);
}

/* Evaluate the quantized model dir against the float records of f. */
static int pass2_run(const study_opts *o, const char *dir, const tr_tlogits *f, pass2 *r, bpw_acc *bpw)
{
    eng_opts e;
    eng_opts_init(&e);
    const char *a[8];
    int n = engine_args(o, a, 0);
    for (int i = 0; i < n; i++)
        if (eng_opt(CMD, n, (char **)a, &i, &e) < 0)
            return CLI_USAGE;
    e.model = dir;
    e.sopt.ctx_size = f->eval.ctx;
    tr_model *m = NULL;
    tr_session *s = NULL;
    int32_t *tokens = NULL;
    int rc = eng_open(CMD, &e, &m, &s);
    if (rc != CLI_OK)
        return rc;
    tr_error err;
    int st = m->cfg.V == f->V ? TR_OK : tr_fail(&err, TR_E_INPUT, dir, "n_vocab %u, the float model has %u",
                                                 m->cfg.V, f->V);
    if (st == TR_OK)
        st = tr_tlogits_tokens(f, &tokens, &err);
    if (st == TR_OK)
        st = tr_kld_work_init(&r->work, f->V, f->K, f->n_moe_layers * f->k, &err);
    if (st == TR_OK) {
        tr_eval_hooks h = {p2_scored, NULL, NULL, r};
        st = tr_eval_walk(s, tokens, f->n_tokens, &f->eval, &h, &err);
    }
    if (st == TR_OK && r->next != f->n_records)
        st = tr_fail(&err, TR_E_INPUT, f->path, "%llu records, the walk scored %llu",
                     (unsigned long long)f->n_records, (unsigned long long)r->next);
    if (st == TR_OK)
        tr_model_foreach_linear(m, count_linear, bpw);
    rc = st == TR_OK ? CLI_OK : cli_fail(CMD, &err);
    tr_dealloc(tokens);
    tr_session_free(s);
    tr_model_free(m);
    return rc;
}

/* ---- one entry --------------------------------------------------------------------------------------------------- */

static void set_real(json_t *o, const char *k, double v) { json_object_set_new(o, k, tr_json_real(v)); }

static json_t *entry_new(const char *name, const char *spec, tr_rotation rot)
{
    json_t *e = json_object();
    json_object_set_new(e, "model", json_string(name));
    json_object_set_new(e, "spec", json_string(spec));
    json_object_set_new(e, "rotation", json_string(tr_rotation_name(rot)));
    return e;
}

/* The statistics members of an evaluated entry. */
static int entry_stats(const study_opts *o, pass2 *r, const bpw_acc *b, json_t *e)
{
    double ppl, unc, pf, uf, lo, hi;
    const points *p = &r->pts;
    ppl_of(p->nq, p->n, &ppl, &unc);
    ppl_of(p->nb, p->n, &pf, &uf);
    set_real(e, "average_bpw", b->qweights ? (double)b->index_bits / (double)b->qweights : NAN);
    set_real(e, "effective_bpw", b->qweights ? 8.0 * (double)b->bytes / (double)b->qweights : NAN);
    set_real(e, "ppl", ppl);
    set_real(e, "ppl_unc", unc);
    set_real(e, "ppl_float", pf);
    set_real(e, "ppl_float_unc", uf);
    tr_kld_stats st;
    tr_kld_stats_full(&r->acc, &st);
    tr_kld_stats_to_json(e, &st, NULL);
    json_object_del(e, "noise_floor");
    json_t *k = json_object_get(e, "kld");
    set_real(k, "mean", p->n ? gsl_stats_mean(p->kld, 1, p->n) : NAN);   /* GSL; equal to the sums' mean */
    set_real(k, "mean_unc", p->n >= 2 ? gsl_stats_sd(p->kld, 1, p->n) / sqrt((double)p->n) : NAN);
    int rc = bootstrap(p, r->f->n_chunks, o, &lo, &hi);
    set_real(k, "ci95_lo", lo);
    set_real(k, "ci95_hi", hi);
    set_real(e, "rms_dp", st.rms_dp);
    set_real(e, "rms_dp_unc", st.rms_dp_unc);
    return rc;
}

static void entry_print(const json_t *e)
{
    const json_t *k = json_object_get(e, "kld");
    fprintf(human, "%-22s %-36s %-11s ", json_string_value(json_object_get(e, "model")),
            json_string_value(json_object_get(e, "spec")), json_string_value(json_object_get(e, "rotation")));
    if (strcmp(json_string_value(json_object_get(e, "status")), "ok")) {
        fprintf(human, "%s\n", json_string_value(json_object_get(e, "reason")));
        return;
    }
    fprintf(human, "bpw %.3f (eff %.3f)  PPL %.4g ± %.2g (float %.4g)  KLD %.5f ± %.5f [%.5f, %.5f]  same top "
            "%.2f %%\n", json_real_value(json_object_get(e, "average_bpw")),
            json_real_value(json_object_get(e, "effective_bpw")), json_real_value(json_object_get(e, "ppl")),
            json_real_value(json_object_get(e, "ppl_unc")), json_real_value(json_object_get(e, "ppl_float")),
            json_real_value(json_object_get(k, "mean")), json_real_value(json_object_get(k, "mean_unc")),
            json_real_value(json_object_get(k, "ci95_lo")), json_real_value(json_object_get(k, "ci95_hi")),
            100 * json_real_value(json_object_get(json_object_get(e, "same_top"), "rate")));
    fflush(human);
}

typedef struct model_ctx {
    const char *path;
    char name[256];
    const tr_tlogits *f;
} model_ctx;

/* Quantize, evaluate, fill e.  Returns an exit code. */
static int entry_run(const study_opts *o, const model_ctx *mc, const char *spec, tr_rotation rot, json_t *e)
{
    char slug[256], leaf[700], qjson[720];
    slug_of(spec, slug, sizeof slug);
    snprintf(leaf, sizeof leaf, "%s-%s-%s", mc->name, slug, tr_rotation_name(rot));
    snprintf(qjson, sizeof qjson, "%s.quantize.json", leaf);
    char *dir = tr_path_join(o->out, leaf), *qj = tr_path_join(o->out, qjson);
    tr_error err;
    int rc = dir && qj ? CLI_OK : CLI_RESOURCE;
    if (rc == CLI_OK && fresh_dir(o, dir, &err) != TR_OK)
        rc = cli_fail(CMD, &err);
    if (rc == CLI_OK)
        rc = quantize(o, mc->path, spec, rot, dir, qj);
    pass2 r = {.f = mc->f};
    bpw_acc b = {0};
    tr_kld_accum_init(&r.acc, 1);
    if (rc == CLI_OK)
        rc = pass2_run(o, dir, mc->f, &r, &b);
    if (rc == CLI_OK) {
        json_object_set_new(e, "status", json_string("ok"));
        json_object_set_new(e, "reason", json_null());
        json_object_set_new(e, "dir", json_string(dir));
        json_object_set_new(e, "quantize_json", json_string(qj));
        if (entry_stats(o, &r, &b, e) != TR_OK)
            rc = CLI_RESOURCE;
    }
    tr_kld_accum_free(&r.acc);
    tr_kld_work_free(&r.work);
    points_free(&r.pts);
    tr_dealloc(dir);
    tr_dealloc(qj);
    return rc;
}

static int entry_one(const study_opts *o, const model_ctx *mc, const char *spec, tr_rotation rot, json_t *entries)
{
    json_t *e = entry_new(mc->name, spec, rot);
    json_array_append_new(entries, e);
    int applies = 1, rc = CLI_OK;
    tr_error err;
    if (rot == TR_ROT_HADAMARD128 && hadamard_applies(mc->path, spec, &applies, &err) != TR_OK)
        return cli_fail(CMD, &err);
    if (!applies) {
        json_object_set_new(e, "status", json_string("not_applicable"));
        json_object_set_new(e, "reason", json_string(NOT_APPLICABLE));
    } else {
        rc = entry_run(o, mc, spec, rot, e);
    }
    if (rc == CLI_OK)
        entry_print(e);
    return rc;
}

/* ---- one model --------------------------------------------------------------------------------------------------- */

/* The float model's PPL ± σ from the stored records (lse − target logit). */
static int float_ppl(const tr_tlogits *f, json_t *m, tr_error *err)
{
    tr_kld_work w;
    memset(&w, 0, sizeof w);
    double *nll = tr_malloc((f->n_records ? f->n_records : 1) * sizeof *nll);
    int rc = nll ? tr_kld_work_init(&w, f->V, f->K, f->n_moe_layers * f->k, err)
                 : tr_fail(err, TR_E_NOMEM, f->path, "out of memory");
    size_t n = 0;
    for (uint64_t i = 0; rc == TR_OK && i < f->n_records; i++) {
        rc = tr_tlogits_record(f, i, &w.rec, err);
        double x = w.rec.lse - (double)w.rec.target_logit;
        if (rc == TR_OK && isfinite(x))
            nll[n++] = x;
    }
    tr_kld_work_free(&w);
    double ppl, unc;
    ppl_of(nll, n, &ppl, &unc);
    set_real(m, "ppl", ppl);
    set_real(m, "ppl_unc", unc);
    json_object_set_new(m, "n_scored", json_integer((json_int_t)n));
    tr_dealloc(nll);
    return rc;
}

static int model_run(const study_opts *o, const char *path, json_t *models, json_t *entries)
{
    model_ctx mc = {.path = path};
    basename_of(path, mc.name, sizeof mc.name);
    char leaf[300];
    snprintf(leaf, sizeof leaf, "%s-float.tlogits", mc.name);
    char *tl = tr_path_join(o->out, leaf);
    if (!tl)
        return CLI_RESOURCE;
    int rc = pass1(o, path, tl);
    tr_tlogits *f = NULL;
    tr_error err;
    if (rc == CLI_OK && tr_tlogits_open(tl, &f, &err) != TR_OK)
        rc = cli_fail(CMD, &err);
    json_t *m = json_object();
    json_array_append_new(models, m);
    json_object_set_new(m, "model", json_string(mc.name));
    json_object_set_new(m, "path", json_string(path));
    json_object_set_new(m, "tlogits", json_string(tl));
    if (rc == CLI_OK && float_ppl(f, m, &err) != TR_OK)
        rc = cli_fail(CMD, &err);
    mc.f = f;
    for (size_t s = 0; rc == CLI_OK && s < o->nspecs; s++)
        for (int rot = 0; rc == CLI_OK && rot < 2; rot++)
            if (o->rot[rot])
                rc = entry_one(o, &mc, o->specs[s], (tr_rotation)rot, entries);
    tr_tlogits_close(f);
    tr_dealloc(tl);
    return rc;
}

/* ---- the document ------------------------------------------------------------------------------------------------ */

static json_t *doc_new(const study_opts *o)
{
    char started[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(started, sizeof started, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *d = json_object(), *b = json_object();
    json_object_set_new(d, "schema", json_string("trellis.study/1"));
    json_object_set_new(d, "tool_version", json_string(tr_version()));
    json_object_set_new(d, "git_commit", json_string(tr_git_commit()));
    json_object_set_new(d, "started", json_string(started));
    json_object_set_new(d, "text", o->text ? json_string(o->text) : json_null());
    json_object_set_new(d, "ids_file", o->ids_file ? json_string(o->ids_file) : json_null());
    json_object_set_new(d, "protocol", json_string("llamacpp"));
    json_object_set_new(d, "ctx", json_integer(o->ctx ? atoi(o->ctx) : 512));
    json_object_set_new(d, "out", json_string(o->out));
    json_object_set_new(b, "method", json_string("percentile"));
    json_object_set_new(b, "unit", json_string("window"));
    json_object_set_new(b, "resamples", json_integer((json_int_t)o->resamples));
    json_object_set_new(b, "seed", json_integer((json_int_t)o->seed));
    json_object_set_new(b, "rng", json_string("mt19937"));
    json_object_set_new(d, "bootstrap", b);
    json_object_set_new(d, "models", json_array());
    json_object_set_new(d, "entries", json_array());
    return d;
}

static int study(const study_opts *o)
{
    tr_error err;
    if (tr_mkdir_p(o->out, &err) != TR_OK)
        return cli_fail(CMD, &err);
    unsigned long mark = tr_json_mark();
    json_t *d = doc_new(o);
    human = o->json && !strcmp(o->json, "-") ? cli_err : cli_out;
    fprintf(human, "study: %zu model(s) x %zu spec(s); bootstrap: %lu resamples of windows, mt19937 seed %lu\n",
            o->nmodels, o->nspecs, o->resamples, o->seed);
    int rc = CLI_OK;
    for (size_t i = 0; rc == CLI_OK && i < o->nmodels; i++)
        rc = model_run(o, o->models[i], json_object_get(d, "models"), json_object_get(d, "entries"));
    char *def = tr_path_join(o->out, "study.json");
    if (rc == CLI_OK)
        rc = def ? cli_write_json(CMD, o->json ? o->json : def, d, mark) : CLI_RESOURCE;
    if (rc == CLI_OK && strcmp(o->json ? o->json : def, "-"))
        fprintf(human, "study: wrote %s\n", o->json ? o->json : def);
    tr_dealloc(def);
    json_decref(d);
    return rc;
}

int cmd_study(int argc, char **argv)
{
    study_opts o = {.out = "reports/out/study", .resamples = 2000, .seed = 1};
    int rc = set_rotation(&o, "none");
    for (int i = 1; i < argc && rc == CLI_OK; i++) {
        if (cli_is_help(argv[i])) {
            help();
            tr_dealloc(o.models_buf);
            tr_dealloc(o.specs_buf);
            return CLI_OK;
        }
        int r = study_opt(argc, argv, &i, &o);
        if (r < 0)
            rc = CLI_USAGE;
        else if (r == 0)
            rc = cli_usage(CMD, "unknown option %s", argv[i]);
    }
    if (rc == CLI_OK)
        rc = check_opts(&o);
    if (rc == CLI_OK)
        rc = study(&o);
    tr_dealloc(o.models_buf);
    tr_dealloc(o.specs_buf);
    return rc;
}
