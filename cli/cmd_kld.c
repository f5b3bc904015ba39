/*
 * cmd_kld.c — `trellis kld base` and `trellis kld eval` (ENGINE.md §6, §8): the two-pass KL divergence.
 *
 *   trellis kld base -m BASE (-f FILE | --ids-file FILE) -o OUT.tlogits [--protocol llamacpp|hf] [--ctx N]
 *                    [--stride S] [--chunks N] [--bos ID] [--topk K|all] [--store-routes] [--noise-floor]
 *       runs the base model over the protocol's windows and streams one record per scored position (exact fp32
 *       top-K, lse, exact tail mass, target; the routing decisions with --store-routes) into OUT; --noise-floor also
 *       runs the base with each layer's output residual rounded to bf16 and stores that run's statistics against
 *       the exact base in the trailer.
 *   trellis kld eval -m CANDIDATE --base-logits FILE.tlogits [--json FILE]
 *       re-evaluates the stored token stream with the candidate (same protocol parameters), prints one progress
 *       line per chunk and the statistics block; --json writes trellis.kld/1.
 */
#include "cli.h"
#include "engine_opts.h"
#include "eval_input.h"
#include "progress.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/hash.h"
#include "trellis/jsonio.h"
#include "trellis/kld.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- routes of one window --------------------------------------------------------------------------------------- */

/* The routing decisions of the window being evaluated: win [C][n_moe][k], filled by the trace hook. */
typedef struct route_buf {
    int32_t *moe_index;               /* [L]: index among the MoE layers, -1 for dense layers */
    uint32_t L, n_moe, k, C;
    uint16_t *win;
} route_buf;

static uint32_t count_moe(const tr_model *m)
{
    uint32_t n = 0;
    for (uint32_t l = 0; l < m->cfg.L; l++)
        n += m->layers[l].moe != 0;
    return n;
}

static int route_buf_init(route_buf *b, const tr_model *m, uint32_t C, tr_error *err)
{
    memset(b, 0, sizeof *b);
    b->n_moe = count_moe(m);
    b->k = m->cfg.k;
    b->C = C;
    b->L = m->cfg.L;
    if (!b->n_moe)
        return tr_fail(err, TR_E_UNSUPPORTED, "--store-routes", "the model has no MoE layer");
    if (m->cfg.E > 65536)
        return tr_fail(err, TR_E_UNSUPPORTED, "--store-routes", "%u experts do not fit u16 ids", m->cfg.E);
    b->moe_index = tr_malloc(m->cfg.L * sizeof *b->moe_index);
    b->win = tr_calloc((size_t)C * b->n_moe * b->k, sizeof *b->win);
    if (!b->moe_index || !b->win)
        return tr_fail(err, TR_E_NOMEM, "--store-routes", "cannot allocate the route buffer");
    for (uint32_t l = 0, i = 0; l < m->cfg.L; l++)
        b->moe_index[l] = m->layers[l].moe ? (int32_t)i++ : -1;
    return TR_OK;
}

static void route_buf_free(route_buf *b)
{
    tr_dealloc(b->moe_index);
    tr_dealloc(b->win);
    memset(b, 0, sizeof *b);
}

static void on_route(void *user, const tr_route_info *ri)
{
    route_buf *b = user;
    if (ri->layer >= b->L || b->moe_index[ri->layer] < 0 || ri->pos >= b->C)
        return;
    uint16_t *dst = b->win + ((size_t)ri->pos * b->n_moe + (uint32_t)b->moe_index[ri->layer]) * b->k;
    for (uint32_t j = 0; j < b->k && j < ri->k; j++)
        dst[j] = (uint16_t)ri->ids[j];
}

/* The routes of window row `row` (the position whose logits predict the target). */
static const uint16_t *route_row(const route_buf *b, size_t row) { return b->win + row * b->n_moe * b->k; }

/* ---- kld base --------------------------------------------------------------------------------------------------- */

typedef struct base_run {
    tr_kld_work work;
    tr_tlogits_writer *w;
    tr_nll_stats nll;
    uint64_t nll_non_finite;
    size_t begin, len;                /* current window */
    route_buf routes;
    int store_routes;
    /* noise floor: the bf16-residual session evaluated lazily on the window of the first scored position */
    tr_session *floor_s;
    float *floor_logits;
    uint32_t floor_window;
    int32_t *tokens;                  /* the evaluated stream */
    tr_kld_accum floor_acc;
    progress bar;
    int quiet;
} base_run;

static void base_window_begin(void *user, uint32_t window, size_t begin, size_t len)
{
    base_run *r = user;
    (void)window;
    r->begin = begin;
    r->len = len;
}

static int floor_point(base_run *r, const tr_scored *s, tr_error *err)
{
    if (r->floor_window != s->window) {
        tr_session_truncate(r->floor_s, 0);
        int rc = tr_session_eval(r->floor_s, r->tokens + r->begin, (uint32_t)r->len, TR_LOGITS_ALL, r->floor_logits,
                                 err);
        if (rc != TR_OK)
            return rc;
        r->floor_window = s->window;
    }
    tr_kld_point p;
    const float *row = r->floor_logits + (s->pos - 1 - r->begin) * (size_t)r->work.V;
    int rc = tr_kld_compare(&r->work, &r->work.rec, row, &p, err);
    return rc == TR_OK ? tr_kld_accum_add(&r->floor_acc, &p, err) : rc;
}

static int base_scored(void *user, const tr_scored *s, tr_error *err)
{
    base_run *r = user;
    tr_kld_rec *rec = &r->work.rec;
    tr_kld_rec_build(&r->work, s->logits, (uint32_t)s->target);
    if (r->store_routes)
        memcpy(rec->routes, route_row(&r->routes, s->pos - 1 - r->begin), r->work.n_routes * sizeof *rec->routes);
    int rc = tr_tlogits_append(r->w, rec, err);
    if (rc != TR_OK)
        return rc;
    double nll = rec->lse - (double)rec->target_logit;   /* −(l_target − lse) */
    if (isfinite(nll))
        tr_nll_add(&r->nll, nll);
    else
        r->nll_non_finite++;
    return r->floor_s ? floor_point(r, s, err) : TR_OK;
}

static int base_window_done(void *user, uint32_t w, uint32_t n, tr_error *err)
{
    base_run *r = user;
    (void)err;
    if (!r->quiet) {
        fprintf(cli_out, "%s[%u]%.4f", w ? "," : "", w + 1, tr_nll_ppl(&r->nll));
        fflush(cli_out);
    }
    progress_update(&r->bar, w + 1, n);
    return TR_OK;
}

static void base_help(void)
{
    fprintf(cli_out,
            "Usage: trellis kld base -m DIR (-f FILE | --ids-file FILE) -o OUT.tlogits [--protocol llamacpp|hf]\n"
            "         [--ctx N] [--stride S] [--chunks N] [--bos ID] [--topk K|all] [--store-routes] [--noise-floor]\n"
            "  Pass 1: evaluates the base model with the perplexity protocol and writes one record per scored\n"
            "  position: exact fp32 top-K logits (default K = 1024, capped at V; all = exact KLD), lse and the\n"
            "  exact tail mass.  --store-routes keeps the routing decisions (router agreement in pass 2);\n"
            "  --noise-floor also runs the base with bf16-rounded layer residuals and stores that run's statistics.\n%s",
            ENG_OPTS_HELP);
}

typedef struct base_opts {
    const char *out;
    uint32_t topk;                    /* 0 = all */
    int topk_given, store_routes, noise_floor;
} base_opts;

/* "all" → 0, else a count in [1, 2^32); -1 when malformed. */
static int parse_topk(const char *v, uint32_t *k)
{
    if (!strcmp(v, "all"))
        return *k = 0, 0;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (!*v || *end || errno || v[0] == '-' || x < 1 || x > UINT32_MAX)
        return -1;
    *k = (uint32_t)x;
    return 0;
}

/* -o/--out, --topk, --store-routes, --noise-floor: 1 consumed, 0 not ours, -1 usage error printed. */
static int base_opt(const char *cmd, int argc, char **argv, int *i, base_opts *b)
{
    const char *v;
    int r;
    if ((r = cli_opt(argc, argv, i, "-o", &v)) != 0 || (r = cli_opt(argc, argv, i, "--out", &v)) != 0) {
        if (r < 0)
            return cli_usage(cmd, "-o needs a file"), -1;
        b->out = v;
        return 1;
    }
    if ((r = cli_opt(argc, argv, i, "--topk", &v)) != 0) {
        if (r < 0)
            return cli_usage(cmd, "--topk needs a value (a count or \"all\")"), -1;
        if (parse_topk(v, &b->topk))
            return cli_usage(cmd, "--topk: expected a positive integer or \"all\", got \"%s\"", v), -1;
        b->topk_given = 1;
        return 1;
    }
    if (!strcmp(argv[*i], "--store-routes"))
        return b->store_routes = 1;
    if (!strcmp(argv[*i], "--noise-floor"))
        return b->noise_floor = 1;
    return 0;
}

/* "DIR/name" SHA-256, or "" when the file does not exist. */
static int sha_of(const char *dir, const char *name, char hex[65], tr_error *err)
{
    char *p = tr_path_join(dir, name);
    hex[0] = 0;
    if (!p)
        return tr_fail(err, TR_E_NOMEM, name, "out of memory");
    int rc = tr_path_is_file(p) ? tr_sha256_file_hex(p, hex, err) : TR_OK;
    tr_dealloc(p);
    return rc;
}

/* Header values: model files' hashes, protocol, sizes. */
static int base_meta(const eng_opts *e, const tr_model *m, const tr_session *s, const eval_input *in,
                     const tr_eval_opts *o, const tr_kld_plan *plan, const base_run *r, tr_tlogits_meta *meta,
                     char cfg_hex[65], char tok_hex[65], tr_error *err)
{
    int rc = sha_of(e->model, "config.json", cfg_hex, err);
    if (rc == TR_OK && e->tokenizer)
        rc = tr_path_is_file(e->tokenizer) ? tr_sha256_file_hex(e->tokenizer, tok_hex, err) : TR_OK;
    else if (rc == TR_OK)
        rc = sha_of(e->model, "tokenizer.json", tok_hex, err);
    *meta = (tr_tlogits_meta){.arch = tr_arch_name(m->cfg.arch), .model = e->model,
                              .backend = tr_session_backend_name(s), .config_sha256 = cfg_hex,
                              .tokenizer_sha256 = tok_hex[0] ? tok_hex : NULL, .text_sha256 = in->sha256,
                              .input = in->what, .eval = *o, .V = m->cfg.V, .K = r->work.K,
                              .n_tokens = plan->n_used, .n_records = plan->n_records,
                              .n_moe_layers = r->store_routes ? r->routes.n_moe : 0,
                              .k = r->store_routes ? r->routes.k : 0};
    meta->eval.max_chunks = plan->windows;
    return rc;
}

/* The stream as evaluated: the covered prefix with BOS in each llamacpp chunk's first position. */
static int32_t *evaluated_tokens(const eval_input *in, const tr_eval_opts *o, const tr_kld_plan *plan)
{
    int32_t *t = tr_malloc((plan->n_used ? plan->n_used : 1) * sizeof *t);
    if (!t)
        return NULL;
    memcpy(t, in->ids, plan->n_used * sizeof *t);
    if (o->protocol == TR_PROTOCOL_LLAMACPP && o->bos >= 0)
        for (uint32_t w = 0; w < plan->windows; w++)
            t[(size_t)w * o->ctx] = o->bos;
    return t;
}

/* The noise-floor session: the base model with bf16-rounded layer residuals. */
static int open_floor(const eng_opts *e, const tr_model *m, uint32_t C, base_run *r, tr_error *err)
{
    tr_session_options so = e->sopt;
    so.residual_bf16 = 1;
    int rc = tr_session_new(m, &so, &r->floor_s, err);
    if (rc != TR_OK)
        return rc;
    r->floor_logits = tr_malloc((size_t)C * m->cfg.V * sizeof *r->floor_logits);
    if (!r->floor_logits)
        return tr_fail(err, TR_E_NOMEM, "--noise-floor", "cannot allocate %u x %u logits", C, m->cfg.V);
    r->floor_window = UINT32_MAX;
    tr_kld_accum_init(&r->floor_acc, 0);
    return TR_OK;
}

/* The trailer's members besides the hashes: base PPL statistics and the noise floor. */
static json_t *base_trailer(const base_run *r, tr_kld_stats *floor)
{
    json_t *t = json_object(), *b = json_object();
    json_object_set_new(b, "n_scored", json_integer((json_int_t)r->nll.n));
    json_object_set_new(b, "non_finite", json_integer((json_int_t)r->nll_non_finite));
    json_object_set_new(b, "mean_nll", tr_json_real(r->nll.n ? r->nll.sum / (double)r->nll.n : NAN));
    json_object_set_new(b, "ppl", tr_json_real(tr_nll_ppl(&r->nll)));
    json_object_set_new(b, "ppl_unc", tr_json_real(tr_nll_ppl_unc(&r->nll)));
    json_object_set_new(t, "base", b);
    if (r->floor_s)
        tr_kld_stats_summary(&r->floor_acc, floor);
    json_object_set_new(t, "noise_floor", r->floor_s ? tr_kld_floor_json(floor) : json_null());
    return t;
}

static void base_report(const base_run *r, const base_opts *b, const tr_kld_stats *floor, uint64_t n_records)
{
    if (r->quiet)
        return;
    fprintf(cli_out, "\nFinal estimate: PPL = %.4f +/- %.5f\n", tr_nll_ppl(&r->nll), tr_nll_ppl_unc(&r->nll));
    fprintf(cli_out, "kld base: %llu records (top-K %u of %u%s) written to %s\n", (unsigned long long)n_records,
            r->work.K, r->work.V, r->work.K == r->work.V ? ", exact" : "", b->out);
    if (r->floor_s)
        fprintf(cli_out, "noise floor (bf16 residuals): mean KLD %.6f ± %.6f, RMS Δp %.3f ± %.3f %%, same top "
                "%.3f ± %.3f %%\n", floor->kld_mean, floor->kld_unc, 100 * floor->rms_dp, 100 * floor->rms_dp_unc,
                100 * floor->same_top, 100 * floor->same_top_unc);
}

/* K: default min(1024, V); "all" = V; capped at V. */
static uint32_t base_topk(const base_opts *b, uint32_t V)
{
    const uint32_t want = !b->topk_given ? TR_KLD_DEFAULT_TOPK : b->topk ? b->topk : V;
    return want < V ? want : V;
}

/* Routes, record scratch, noise-floor session, the evaluated tokens (r->tokens) and the file with its header. */
static int base_setup(const eng_opts *e, const tr_model *m, tr_session *s, const eval_input *in,
                      const tr_eval_opts *o, const base_opts *b, const tr_kld_plan *plan, base_run *r, tr_error *err)
{
    int rc = r->store_routes ? route_buf_init(&r->routes, m, o->ctx, err) : TR_OK;
    if (rc == TR_OK)
        rc = tr_kld_work_init(&r->work, m->cfg.V, base_topk(b, m->cfg.V),
                              r->store_routes ? r->routes.n_moe * r->routes.k : 0, err);
    if (rc == TR_OK && b->noise_floor)
        rc = open_floor(e, m, o->ctx, r, err);
    if (rc == TR_OK && !(r->tokens = evaluated_tokens(in, o, plan)))
        rc = tr_fail(err, TR_E_NOMEM, in->what, "out of memory");
    tr_tlogits_meta meta;
    char cfg_hex[65], tok_hex[65] = "";
    if (rc == TR_OK)
        rc = base_meta(e, m, s, in, o, plan, r, &meta, cfg_hex, tok_hex, err);
    if (rc == TR_OK)
        rc = tr_tlogits_create(b->out, &meta, r->tokens, &r->w, err);
    if (rc == TR_OK && r->store_routes)
        tr_session_set_trace(s, &(tr_trace_hooks){NULL, on_route, &r->routes});
    return rc;
}

/* Trailer (base PPL, noise floor), close, report. */
static int base_finish(base_run *r, const base_opts *b, const tr_kld_plan *plan, tr_error *err)
{
    tr_kld_stats floor;
    unsigned long mark = tr_json_mark();
    json_t *t = base_trailer(r, &floor);
    int rc = tr_json_mark() != mark ? tr_fail(err, TR_E_NOMEM, b->out, "out of memory") : TR_OK;
    if (rc == TR_OK) {
        rc = tr_tlogits_finish(r->w, t, err);   /* frees the writer whatever happens */
        r->w = NULL;
    }
    json_decref(t);
    if (rc == TR_OK)
        base_report(r, b, &floor, plan->n_records);
    return rc;
}

/* Set up, walk the protocol writing one record per scored position, finish.  Returns a tr_status. */
static int base_walk(const eng_opts *e, tr_model *m, tr_session *s, const eval_input *in, tr_eval_opts *o,
                     const base_opts *b, base_run *r, tr_error *err)
{
    tr_kld_plan plan;
    tr_kld_plan_walk(o, in->n, &plan);
    int rc = base_setup(e, m, s, in, o, b, &plan, r, err);
    if (rc == TR_OK) {
        tr_eval_hooks h = {base_scored, base_window_done, base_window_begin, r};
        rc = tr_eval_walk(s, r->tokens, plan.n_used, o, &h, err);
        progress_done(&r->bar);
    }
    return rc == TR_OK ? base_finish(r, b, &plan, err) : rc;
}

static void base_run_free(base_run *r)
{
    tr_tlogits_abort(r->w);
    route_buf_free(&r->routes);
    tr_kld_work_free(&r->work);
    tr_session_free(r->floor_s);
    tr_dealloc(r->floor_logits);
    tr_kld_accum_free(&r->floor_acc);
    tr_dealloc(r->tokens);
}

static int kld_base(int argc, char **argv)
{
    static const char *const CMD = "kld base";
    eng_opts e;
    eng_opts_init(&e);
    eval_input_opts io = {0};
    tr_eval_opts o = {TR_PROTOCOL_LLAMACPP, 0, 0, -1, 0};
    base_opts b = {0};
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i]))
            return base_help(), CLI_OK;
        int r = eval_input_opt(CMD, argc, argv, &i, &io, &o);
        if (r == 0)
            r = base_opt(CMD, argc, argv, &i, &b);
        if (r == 0)
            r = eng_opt(CMD, argc, argv, &i, &e);
        if (r < 0)
            return CLI_USAGE;
        if (r == 0)
            return cli_usage(CMD, "unknown option %s", argv[i]);
    }
    if (!b.out)
        return cli_usage(CMD, "-o OUT.tlogits is required");
    if (e.json)
        return cli_usage(CMD, "--json applies to `trellis kld eval`");
    eval_input in = {0};
    tr_model *m = NULL;
    tr_session *s = NULL;
    base_run run = {.store_routes = b.store_routes, .quiet = e.quiet};
    int rc = eval_prepare(CMD, &e, &io, &o, &in, &m, &s);
    if (rc == CLI_OK) {
        tr_error err;
        progress_init(&run.bar, CMD, !e.no_progress);
        if (base_walk(&e, m, s, &in, &o, &b, &run, &err) != TR_OK)
            rc = cli_fail(CMD, &err);
    }
    base_run_free(&run);
    eval_input_release(&in);
    tr_session_free(s);
    tr_model_free(m);
    return rc;
}

/* ---- kld eval --------------------------------------------------------------------------------------------------- */

typedef struct eval_run {
    const tr_tlogits *f;
    tr_kld_work work;
    tr_kld_accum acc;
    uint64_t next;                    /* next record */
    size_t begin;
    route_buf routes;
    tr_route_agree agree;
    int with_routes;
    progress bar;
    int quiet;
} eval_run;

static void eval_window_begin(void *user, uint32_t window, size_t begin, size_t len)
{
    eval_run *r = user;
    (void)window;
    (void)len;
    r->begin = begin;
}

static int eval_scored(void *user, const tr_scored *s, tr_error *err)
{
    eval_run *r = user;
    tr_kld_rec *rec = &r->work.rec;
    int rc = tr_tlogits_record(r->f, r->next, rec, err);
    if (rc != TR_OK)
        return rc;
    if (rec->target != (uint32_t)s->target)
        return tr_fail(err, TR_E_INPUT, r->f->path, "record %llu: target %u, the stored stream has %d at position "
                       "%zu", (unsigned long long)r->next, rec->target, s->target, s->pos);
    r->next++;
    tr_kld_point p;
    rc = tr_kld_compare(&r->work, rec, s->logits, &p, err);
    if (rc == TR_OK)
        rc = tr_kld_accum_add(&r->acc, &p, err);
    if (rc == TR_OK && r->with_routes)
        tr_route_agree_add(&r->agree, rec->routes, route_row(&r->routes, s->pos - 1 - r->begin));
    return rc;
}

static int eval_window_done(void *user, uint32_t w, uint32_t n, tr_error *err)
{
    eval_run *r = user;
    (void)err;
    if (!r->quiet) {
        tr_kld_stats st;
        tr_kld_stats_summary(&r->acc, &st);
        tr_kld_progress_print(cli_out, w + 1, n, &st);
        fflush(cli_out);
    }
    progress_update(&r->bar, w + 1, n);
    return TR_OK;
}

static void eval_help(void)
{
    fprintf(cli_out,
            "Usage: trellis kld eval -m DIR --base-logits FILE.tlogits [--json FILE] [options]\n"
            "  Pass 2: re-evaluates the token stream stored in FILE with the candidate model (the protocol comes\n"
            "  from the file's header) and reports KLD, Δp, same-top and perplexity statistics against the base.\n%s",
            ENG_OPTS_HELP);
}

/* Candidate checks: V equal to the file's; the tokenizer (when both are known) the same. */
static int eval_check_candidate(const char *cmd, const eng_opts *e, const tr_model *m, const tr_tlogits *f,
                                tr_error *err)
{
    if (m->cfg.V != f->V)
        return tr_fail(err, TR_E_INPUT, f->path, "n_vocab %u, candidate has %u", f->V, m->cfg.V);
    const json_t *tok = json_object_get(f->header, "tokenizer_sha256");
    char hex[65] = "";
    tr_error ignored;
    if (e->tokenizer ? tr_sha256_file_hex(e->tokenizer, hex, &ignored) : sha_of(e->model, "tokenizer.json", hex,
                                                                                &ignored))
        hex[0] = 0;
    if (json_is_string(tok) && hex[0] && strcmp(hex, json_string_value(tok)))
        fprintf(cli_err, "trellis %s: warning: the candidate's tokenizer differs from the base's (sha256 %.12s…, "
                "base %.12s…)\n", cmd, hex, json_string_value(tok));
    return TR_OK;
}

/* Router agreement when the file stores routes and the candidate routes the same way (layers, k). */
static int eval_routes(const char *cmd, const tr_model *m, tr_session *s, eval_run *r, tr_error *err)
{
    const tr_tlogits *f = r->f;
    if (!f->n_moe_layers)
        return TR_OK;
    if (count_moe(m) != f->n_moe_layers || m->cfg.k != f->k) {
        fprintf(cli_err, "trellis %s: warning: routes stored for %u MoE layers x k = %u, the candidate has %u x %u: "
                "no router agreement\n", cmd, f->n_moe_layers, f->k, count_moe(m), m->cfg.k);
        return TR_OK;
    }
    int rc = route_buf_init(&r->routes, m, f->eval.ctx, err);
    if (rc == TR_OK)
        rc = tr_route_agree_init(&r->agree, f->n_moe_layers, f->k, err);
    if (rc != TR_OK)
        return rc;
    r->with_routes = 1;
    tr_session_set_trace(s, &(tr_trace_hooks){NULL, on_route, &r->routes});
    return TR_OK;
}

static json_t *eval_json(const eng_opts *e, const tr_session *s, eval_run *r, const tr_kld_stats *st,
                         const tr_kld_floor *fl)
{
    const tr_tlogits *f = r->f;
    json_t *d = json_object();
    json_object_set_new(d, "schema", json_string("trellis.kld/1"));
    json_object_set_new(d, "base_logits", json_string(f->path));
    json_object_set_new(d, "model", json_string(e->model));
    json_object_set_new(d, "backend", json_string(tr_session_backend_name(s)));
    json_object_set_new(d, "base_model", json_deep_copy(json_object_get(f->header, "model")));
    json_object_set_new(d, "protocol", json_string(tr_protocol_name(f->eval.protocol)));
    json_object_set_new(d, "ctx", json_integer(f->eval.ctx));
    json_object_set_new(d, "stride", f->eval.protocol == TR_PROTOCOL_HF ? json_integer(f->eval.stride) : json_null());
    json_object_set_new(d, "bos", f->eval.bos >= 0 ? json_integer(f->eval.bos) : json_null());
    json_object_set_new(d, "n_vocab", json_integer(f->V));
    json_object_set_new(d, "topk", json_integer(f->K));
    json_object_set_new(d, "exact", json_boolean(f->K == f->V));
    json_object_set_new(d, "n_tokens", json_integer((json_int_t)f->n_tokens));
    json_object_set_new(d, "n_chunks", json_integer(f->n_chunks));
    json_object_set_new(d, "n_records", json_integer((json_int_t)f->n_records));
    tr_kld_stats_to_json(d, st, fl);
    json_object_set_new(d, "router_agreement", r->with_routes ? tr_route_agree_json(&r->agree) : json_null());
    return d;
}

static void eval_print(const eval_run *r, const tr_kld_stats *st, const tr_kld_floor *fl)
{
    const tr_tlogits *f = r->f;
    if (r->quiet)
        return;
    fprintf(cli_out, "\n");
    tr_kld_stats_print(cli_out, st, fl);
    if (f->K == f->V)
        fprintf(cli_out, "Top-K: K = V = %u, the KLD is exact\n", f->V);
    else
        fprintf(cli_out, "Top-K: K = %u of V = %u, the KLD is a lower bound (gap p_tail·KL(P_tail||Q_tail))\n",
                f->K, f->V);
    if (!r->with_routes)
        return;
    uint64_t ex = 0, ov = 0;
    for (uint32_t l = 0; l < r->agree.n_layers; l++)
        ex += r->agree.exact[l], ov += r->agree.overlap[l];
    const double n = (double)r->agree.n * r->agree.n_layers;
    fprintf(cli_out, "Router agreement: exact set %.3f %%, mean overlap %.3f %% (%u MoE layers, k = %u)\n",
            100.0 * (double)ex / n, 100.0 * (double)ov / (n * r->agree.k), r->agree.n_layers, r->agree.k);
}

/* Open the candidate, walk, report.  Returns an exit code. */
static int eval_walk(const char *cmd, eng_opts *e, eval_run *r)
{
    const tr_tlogits *f = r->f;
    tr_model *m = NULL;
    tr_session *s = NULL;
    int32_t *tokens = NULL;
    tr_kld_floor fl;
    tr_error err;
    if (e->sopt.ctx_size && e->sopt.ctx_size < f->eval.ctx) {
        tr_fail(&err, TR_E_USAGE, "--ctx-size", "%u is smaller than the evaluation window ctx %u of %s",
                e->sopt.ctx_size, f->eval.ctx, f->path);
        return cli_fail(cmd, &err);
    }
    e->sopt.ctx_size = f->eval.ctx;
    int rc = eng_open(cmd, e, &m, &s);
    if (rc != CLI_OK)
        return rc;
    int st = tr_kld_floor_parse(f->trailer, f->path, &fl, &err);
    if (st == TR_OK)
        st = eval_check_candidate(cmd, e, m, f, &err);
    if (st == TR_OK)
        st = tr_tlogits_tokens(f, &tokens, &err);
    if (st == TR_OK)
        st = tr_kld_work_init(&r->work, f->V, f->K, f->n_moe_layers * f->k, &err);
    if (st == TR_OK)
        st = eval_routes(cmd, m, s, r, &err);
    if (st == TR_OK) {
        tr_eval_hooks h = {eval_scored, eval_window_done, eval_window_begin, r};
        st = tr_eval_walk(s, tokens, f->n_tokens, &f->eval, &h, &err);
        progress_done(&r->bar);
    }
    if (st == TR_OK && r->next != f->n_records)
        st = tr_fail(&err, TR_E_INPUT, f->path, "%llu records, the walk scored %llu",
                     (unsigned long long)f->n_records, (unsigned long long)r->next);
    rc = st == TR_OK ? CLI_OK : cli_fail(cmd, &err);
    if (rc == CLI_OK) {
        tr_kld_stats stats;
        tr_kld_stats_full(&r->acc, &stats);
        eval_print(r, &stats, &fl);
        if (e->json) {
            unsigned long mark = tr_json_mark();
            json_t *doc = eval_json(e, s, r, &stats, &fl);
            rc = cli_write_json(cmd, e->json, doc, mark);
            json_decref(doc);
        }
    }
    tr_dealloc(tokens);
    tr_session_free(s);
    tr_model_free(m);
    return rc;
}

static int kld_eval(int argc, char **argv)
{
    static const char *const CMD = "kld eval";
    eng_opts e;
    eng_opts_init(&e);
    const char *base = NULL, *v;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i]))
            return eval_help(), CLI_OK;
        int r = cli_opt(argc, argv, &i, "--base-logits", &v);
        if (r < 0)
            return cli_usage(CMD, "--base-logits needs a file");
        if (r > 0) {
            base = v;
            continue;
        }
        if ((r = eng_opt(CMD, argc, argv, &i, &e)) < 0)
            return CLI_USAGE;
        if (r == 0)
            return cli_usage(CMD, "unknown option %s (the protocol comes from the base-logits header)", argv[i]);
    }
    if (!base)
        return cli_usage(CMD, "--base-logits FILE.tlogits is required");
    if (!e.model)
        return cli_usage(CMD, "no model: give -m DIR");
    tr_tlogits *f;
    tr_error err;
    if (tr_tlogits_open(base, &f, &err) != TR_OK)
        return cli_fail(CMD, &err);
    eval_run run = {.f = f, .quiet = e.quiet || (e.json && !strcmp(e.json, "-"))};
    tr_kld_accum_init(&run.acc, 1);
    progress_init(&run.bar, CMD, !e.no_progress);
    int rc = eval_walk(CMD, &e, &run);
    tr_kld_accum_free(&run.acc);
    tr_kld_work_free(&run.work);
    route_buf_free(&run.routes);
    tr_route_agree_free(&run.agree);
    tr_tlogits_close(f);
    return rc;
}

/* ---- dispatch --------------------------------------------------------------------------------------------------- */

int cmd_kld(int argc, char **argv)
{
    if (argc < 2)
        return cli_usage("kld", "give a subcommand: base or eval");
    if (cli_is_help(argv[1])) {
        fprintf(cli_out, "Usage: trellis kld base … | trellis kld eval …   (trellis kld base --help)\n"
                         "  Two-pass KL divergence of a candidate model against a base model (ENGINE.md §6).\n");
        return CLI_OK;
    }
    if (!strcmp(argv[1], "base"))
        return kld_base(argc - 1, argv + 1);
    if (!strcmp(argv[1], "eval"))
        return kld_eval(argc - 1, argv + 1);
    return cli_usage("kld", "unknown subcommand \"%s\" (base or eval)", argv[1]);
}
