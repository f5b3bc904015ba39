/*
 * cmd_bench.c — `trellis bench [--prompt-tokens N] [--gen-tokens N] [--warmup N] [--repetitions N]
 * [--prefill-tokens L1,L2,…]` (ENGINE.md §6 "Benchmark"), JSON trellis.bench/1.
 *
 * Decode: fresh cache, prefill the prompt (seeded pseudo-random non-stop ids), discard --warmup steps, then time
 * --gen-tokens greedy steps (one T = 1 forward plus argmax each, CLOCK_MONOTONIC), --repetitions times, pooled.
 * Prefill: per length, one warm-up then --repetitions timed prefills from an empty cache.  Percentiles are type 7.
 * The MoE dispatch counters, fallback reasons by bit-set signature, kernel selections, the mixed-bpw statistics and
 * the memory use are reported with the timings.
 */
#include "cli.h"
#include "engine_opts.h"
#include "gen_common.h"
#include "progress.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/rng.h"
#include "trellis/version.h"

#include <gsl/gsl_sort.h>
#include <gsl/gsl_statistics_double.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static const char *const CMD = "bench";

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

typedef struct bench_opts {
    eng_opts e;
    uint32_t prompt_tokens, gen_tokens, warmup, repetitions;
    int reps_given;
    uint32_t prefill[16];
    uint32_t n_prefill;
    const char *prompt, *prompt_file;   /* -p / -f: the decode prompt instead of random ids */
    int32_t *prompt_ids;
} bench_opts;

/* ---- statistics --------------------------------------------------------------------------------------------------- */

typedef struct samples {
    double *v;
    size_t n;
} samples;

/* Type-7 quantile of a copy sorted once. */
static double quantile(const samples *s, double p)
{
    double *c = tr_malloc((s->n ? s->n : 1) * sizeof *c);
    if (!c || !s->n) {
        tr_dealloc(c);
        return NAN;
    }
    memcpy(c, s->v, s->n * sizeof *c);
    gsl_sort(c, 1, s->n);
    double q = gsl_stats_quantile_from_sorted_data(c, 1, s->n, p);
    tr_dealloc(c);
    return q;
}

static double mean(const samples *s)
{
    return s->n ? gsl_stats_mean(s->v, 1, s->n) : NAN;
}

static json_t *samples_json(const samples *s)
{
    json_t *a = json_array();
    for (size_t i = 0; i < s->n; i++)
        json_array_append_new(a, tr_json_real(s->v[i]));
    return a;
}

/* ---- runs ---------------------------------------------------------------------------------------------------------- */

static int32_t argmax(const float *v, uint32_t n)
{
    uint32_t b = 0;
    for (uint32_t i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    return (int32_t)b;
}

/* Seeded pseudo-random prompt ids in [0, V) avoiding the config's stop ids and the tokenizer's special tokens. */
static void random_prompt(const tr_model *m, const tr_tokenizer *tok, uint64_t seed, int32_t *ids, uint32_t n)
{
    tr_rng r;
    tr_rng_seed(&r, seed);
    for (uint32_t i = 0; i < n; i++) {
        int32_t id;
        int stop;
        do {
            id = (int32_t)tr_rng_int(&r, 0, (int64_t)m->cfg.V - 1);
            stop = 0;
            for (size_t k = 0; k < m->cfg.n_eos; k++)
                stop |= m->cfg.eos_ids[k] == id;
            stop |= tok && tr_tokenizer_is_special(tok, id);
        } while (stop);
        ids[i] = id;
    }
}

static int decode_run(tr_session *s, const bench_opts *o, const int32_t *prompt, float *lg, samples *out,
                      progress *bar, tr_error *err)
{
    const uint32_t V = tr_session_model(s)->cfg.V;
    for (uint32_t rep = 0; rep < o->repetitions; rep++) {
        tr_session_truncate(s, 0);
        int rc = tr_session_eval(s, prompt, o->prompt_tokens, TR_LOGITS_LAST, lg, err);
        for (uint32_t step = 0; rc == TR_OK && step < o->warmup + o->gen_tokens; step++) {
            double t0 = now_ms();
            int32_t next = argmax(lg, V);
            rc = tr_session_eval(s, &next, 1, TR_LOGITS_LAST, lg, err);
            if (step >= o->warmup)
                out->v[out->n++] = now_ms() - t0;
            progress_update(bar, (uint64_t)rep * (o->warmup + o->gen_tokens) + step + 1,
                            (uint64_t)o->repetitions * (o->warmup + o->gen_tokens));
        }
        if (rc != TR_OK)
            return rc;
    }
    return TR_OK;
}

/* One warm-up, then `repetitions` timed prefills of len tokens from an empty cache. */
static int prefill_run(tr_session *s, uint32_t len, uint32_t reps, const int32_t *ids, float *lg, samples *out,
                       tr_error *err)
{
    for (uint32_t r = 0; r <= reps; r++) {
        tr_session_truncate(s, 0);
        double t0 = now_ms();
        int rc = tr_session_eval(s, ids, len, TR_LOGITS_LAST, lg, err);
        if (rc != TR_OK)
            return rc;
        if (r > 0)
            out->v[out->n++] = now_ms() - t0;
    }
    return TR_OK;
}

static json_t *prefill_json(uint32_t len, const samples *s)
{
    json_t *p = json_object();
    double med = quantile(s, 0.5);
    json_object_set_new(p, "prompt_tokens", json_integer(len));
    json_object_set_new(p, "repetitions", json_integer((json_int_t)s->n));
    json_object_set_new(p, "ms_per_token", tr_json_real(med / len));
    json_object_set_new(p, "tokens_per_second", tr_json_real(len * 1e3 / med));
    json_object_set_new(p, "percentile_50_ms", tr_json_real(med));
    json_object_set_new(p, "percentile_95_ms", tr_json_real(quantile(s, 0.95)));
    json_object_set_new(p, "percentile_99_ms", tr_json_real(quantile(s, 0.99)));
    json_object_set_new(p, "samples_ms", samples_json(s));
    return p;
}

static json_t *decode_json(const bench_opts *o, const samples *s)
{
    json_t *d = json_object();
    double m = mean(s);
    json_object_set_new(d, "ms_per_token", tr_json_real(m));
    json_object_set_new(d, "tokens_per_second", tr_json_real(1e3 / m));
    json_object_set_new(d, "percentile_50_ms", tr_json_real(quantile(s, 0.5)));
    json_object_set_new(d, "percentile_95_ms", tr_json_real(quantile(s, 0.95)));
    json_object_set_new(d, "percentile_99_ms", tr_json_real(quantile(s, 0.99)));
    json_object_set_new(d, "prompt_tokens", json_integer(o->prompt_tokens));
    json_object_set_new(d, "tokens", json_integer((json_int_t)s->n));
    json_object_set_new(d, "warmup", json_integer(o->warmup));
    json_object_set_new(d, "samples_ms", samples_json(s));
    return d;
}

/* ---- mixed bpw and memory -------------------------------------------------------------------------------------------- */

typedef struct bpw_acc {
    const tr_model *m;
    uint64_t by_bits[9], qweights, qindex_bits, qbytes;
    uint64_t f32, bf16, f16;
} bpw_acc;

static void count_linear(void *user, const tr_linear *l)
{
    bpw_acc *a = user;
    uint64_t n = (uint64_t)l->O * l->I;
    if (l->q) {
        a->by_bits[l->q->bits] += n;
        a->qweights += n;
        a->qindex_bits += n * l->q->bits;
        /* everything stored: header byte, padded tiles, scales [G][O], su [I], sv [O] */
        a->qbytes += l->q->indices_len + 4ull * ((uint64_t)l->q->G * l->O + l->I + l->O);
        return;
    }
    tr_tensor_ref r;
    tr_dtype dt = TR_DT_F32;
    if (tr_ckpt_find_tensor(a->m->ckpt, l->name, &r, NULL) == TR_OK)
        dt = r.t->dtype;
    *(dt == TR_DT_BF16 ? &a->bf16 : dt == TR_DT_F16 ? &a->f16 : &a->f32) += n;
}

static json_t *mixed_bpw_json(const tr_model *m, bpw_acc *a)
{
    memset(a, 0, sizeof *a);
    a->m = m;
    tr_model_foreach_linear(m, count_linear, a);
    json_t *o = json_object(), *bp = json_object();
    json_object_set_new(o, "average_bpw", a->qweights ? tr_json_real((double)a->qindex_bits / a->qweights)
                                                      : json_null());
    json_object_set_new(o, "effective_bpw", a->qweights ? tr_json_real(8.0 * a->qbytes / a->qweights) : json_null());
    for (unsigned b = 2; b <= 8; b++)
        if (a->by_bits[b]) {
            char k[16];
            snprintf(k, sizeof k, "%u-bit", b);
            json_object_set_new(bp, k, json_integer((json_int_t)a->by_bits[b]));
        }
    if (a->bf16)
        json_object_set_new(bp, "bf16", json_integer((json_int_t)a->bf16));
    if (a->f16)
        json_object_set_new(bp, "f16", json_integer((json_int_t)a->f16));
    if (a->f32)
        json_object_set_new(bp, "f32", json_integer((json_int_t)a->f32));
    json_object_set_new(o, "by_precision", bp);
    return o;
}

static json_t *memory_json(const tr_model *m, const tr_session *s, const bpw_acc *a)
{
    const tr_model_config *c = &m->cfg;
    uint64_t row = c->arch == TR_ARCH_GLM4_MOE_LITE ? c->kv_lora_rank + c->d_rope : 2ull * c->G * c->head_dim;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    json_t *o = json_object();
    json_object_set_new(o, "weights_bytes", json_integer((json_int_t)(a->qbytes + 4 * m->n_params_float)));
    json_object_set_new(o, "kv_cache_bytes", json_integer((json_int_t)(4ull * c->L * tr_session_ctx_size(s) * row)));
    json_object_set_new(o, "peak_rss_bytes", json_integer((json_int_t)ru.ru_maxrss * 1024));
    return o;
}

/* ---- MoE counters ------------------------------------------------------------------------------------------------------ */

static void moe_json(json_t *doc, tr_session *s)
{
    json_t *d = tr_moe_diag_json(tr_session_diag(s));
    json_t *counters = json_object_get(d, "counters"), *codes = json_object(), *kernels = json_object();
    const char *key;
    json_t *v;
    json_object_foreach(counters, key, v) {
        static const char prefix[] = "kernel_fallback_reason_";
        if (!strncmp(key, prefix, sizeof prefix - 1))
            json_object_set(codes, key + sizeof prefix - 1, v);
    }
    json_object_foreach(json_object_get(d, "per_kernel"), key, v)
        json_object_set(kernels, key, json_object_get(v, "selected"));
    json_object_set(doc, "fallback_counters", counters);
    json_object_set_new(doc, "fallback_reasons", tr_moe_diag_signatures_json(tr_session_diag(s)));
    json_object_set_new(doc, "fallback_reason_codes", codes);
    json_object_set_new(doc, "kernel_dispatch_counts", kernels);
    json_decref(d);
}

/* ---- options and the command -------------------------------------------------------------------------------------------- */

static int parse_u32(const char *v, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    if (!*v || *end || v[0] == '-' || x < lo || x > hi)
        return -1;
    *out = (uint32_t)x;
    return 0;
}

static int bench_opt(int argc, char **argv, int *i, bench_opts *o)
{
    const char *pv;
    int pr;
    if ((pr = cli_opt(argc, argv, i, "-p", &pv)) != 0) {
        if (pr < 0)
            return cli_usage(CMD, "-p needs a text"), -1;
        o->prompt = pv;
        return 1;
    }
    if ((pr = cli_opt(argc, argv, i, "-f", &pv)) != 0) {
        if (pr < 0)
            return cli_usage(CMD, "-f needs a file"), -1;
        o->prompt_file = pv;
        return 1;
    }
    static const char *const names[] = {"--prompt-tokens", "--gen-tokens", "--warmup", "--repetitions",
                                        "--prefill-tokens"};
    const char *v;
    for (int k = 0; k < 5; k++) {
        int r = cli_opt(argc, argv, i, names[k], &v);
        if (r < 0)
            return cli_usage(CMD, "%s needs a value", names[k]), -1;
        if (!r)
            continue;
        uint32_t *dst[4] = {&o->prompt_tokens, &o->gen_tokens, &o->warmup, &o->repetitions};
        if (k < 4) {
            if (parse_u32(v, k == 2 ? 0 : 1, 1u << 20, dst[k]))
                return cli_usage(CMD, "%s: expected an integer in [%d, 1048576], got \"%s\"", names[k], k == 2 ? 0 : 1,
                                 v), -1;
            o->reps_given |= k == 3;
            return 1;
        }
        o->n_prefill = 0;
        for (const char *p = v; *p;) {
            char item[24];
            size_t n = strcspn(p, ",");
            if (n == 0 || n >= sizeof item || o->n_prefill == 16)
                return cli_usage(CMD, "--prefill-tokens: expected up to 16 comma-separated lengths"), -1;
            memcpy(item, p, n);
            item[n] = 0;
            if (parse_u32(item, 1, 1u << 20, &o->prefill[o->n_prefill++]))
                return cli_usage(CMD, "--prefill-tokens: \"%s\" is not a positive length", item), -1;
            p += n + (p[n] == ',');
        }
        return 1;
    }
    return 0;
}

static void help(void)
{
    fprintf(cli_out, "Usage: trellis bench -m DIR [--prompt-tokens N | -p TEXT | -f FILE] [--gen-tokens N] [--warmup N]\n"
                     "         [--repetitions N] [--prefill-tokens L1,L2,...] [options]\n"
                     "  Decode and prefill timings, MoE dispatch counters and the mixed-bpw statistics "
                     "(trellis.bench/1).\n%s", ENG_OPTS_HELP);
}

static void iso_now(char *buf, size_t n)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static json_t *bench_doc(const bench_opts *o, const tr_model *m, tr_session *s, json_t *decode, json_t *prefill,
                         const char *started)
{
    json_t *doc = json_object();
    const char *name = strrchr(o->e.model, '/');
    bpw_acc acc;
    json_object_set_new(doc, "schema", json_string("trellis.bench/1"));
    json_object_set_new(doc, "model", json_string(name && name[1] ? name + 1 : o->e.model));
    json_object_set_new(doc, "device", json_string(tr_session_device(s)));
    json_object_set_new(doc, "backend", json_string(tr_session_backend_name(s)));
    json_object_set_new(doc, "decode", decode);
    json_object_set_new(doc, "prefill", prefill);
    json_object_set_new(doc, "mixed_bpw", mixed_bpw_json(m, &acc));
    moe_json(doc, s);
    json_object_set_new(doc, "memory", memory_json(m, s, &acc));
    json_object_set_new(doc, "threads", json_integer(o->e.sopt.threads));
    json_object_set_new(doc, "ctx_size", json_integer(tr_session_ctx_size(s)));
    json_object_set_new(doc, "seed", json_integer((json_int_t)o->e.seed));
    json_object_set_new(doc, "tool_version", json_string(tr_version()));
    json_object_set_new(doc, "git_commit", json_string(tr_git_commit()));
    json_object_set_new(doc, "started", json_string(started));
    return doc;
}

static void print_summary(FILE *f, const json_t *doc)
{
    const json_t *d = json_object_get(doc, "decode"), *p = json_object_get(doc, "prefill");
    fprintf(f, "bench %s on %s (%s)\n", json_string_value(json_object_get(doc, "model")),
            json_string_value(json_object_get(doc, "backend")), json_string_value(json_object_get(doc, "device")));
    fprintf(f, "  decode : %.3f ms/token (%.2f tokens/s), p50 %.3f p95 %.3f p99 %.3f ms over %lld steps\n",
            json_number_value(json_object_get(d, "ms_per_token")), json_number_value(json_object_get(d, "tokens_per_second")),
            json_number_value(json_object_get(d, "percentile_50_ms")), json_number_value(json_object_get(d, "percentile_95_ms")),
            json_number_value(json_object_get(d, "percentile_99_ms")), (long long)json_integer_value(json_object_get(d, "tokens")));
    size_t i;
    const json_t *sw;
    json_array_foreach(json_object_get(p, "sweep"), i, sw)
        fprintf(f, "  prefill: %lld tokens in %.3f ms median (%.2f tokens/s)\n",
                (long long)json_integer_value(json_object_get(sw, "prompt_tokens")),
                json_number_value(json_object_get(sw, "percentile_50_ms")),
                json_number_value(json_object_get(sw, "tokens_per_second")));
}

static int run_bench(bench_opts *o, tr_model *m, tr_session *s, const tr_tokenizer *tok, json_t **decode,
                     json_t **prefill)
{
    tr_error err;
    uint32_t maxlen = o->prompt_tokens;
    for (uint32_t k = 0; k < o->n_prefill; k++)
        maxlen = o->prefill[k] > maxlen ? o->prefill[k] : maxlen;
    int32_t *ids = tr_malloc((size_t)maxlen * sizeof *ids);
    float *lg = tr_malloc((size_t)m->cfg.V * sizeof *lg);
    samples dec = {tr_malloc(((size_t)o->repetitions * o->gen_tokens + 1) * sizeof(double)), 0};
    samples pre = {tr_malloc(((size_t)o->repetitions + 1) * sizeof(double)), 0};
    int rc = TR_OK;
    if (!ids || !lg || !dec.v || !pre.v)
        rc = tr_fail(&err, TR_E_NOMEM, CMD, "out of memory");
    progress bar;
    progress_init(&bar, CMD, !o->e.no_progress);
    if (rc == TR_OK) {
        random_prompt(m, tok, o->e.seed, ids, maxlen);
        rc = decode_run(s, o, o->prompt_ids ? o->prompt_ids : ids, lg, &dec, &bar, &err);
    }
    progress_done(&bar);
    uint32_t pre_reps = o->reps_given ? o->repetitions : 5;
    json_t *sweep = json_array();
    for (uint32_t k = 0; rc == TR_OK && k < o->n_prefill; k++) {
        tr_dealloc(pre.v);
        pre.v = tr_malloc(((size_t)pre_reps + 1) * sizeof(double));
        pre.n = 0;
        rc = pre.v ? prefill_run(s, o->prefill[k], pre_reps, ids, lg, &pre, &err) : tr_fail(&err, TR_E_NOMEM, CMD, "oom");
        if (rc == TR_OK)
            json_array_append_new(sweep, prefill_json(o->prefill[k], &pre));
    }
    if (rc == TR_OK) {
        *decode = decode_json(o, &dec);
        *prefill = json_deep_copy(json_array_get(sweep, 0));
        json_object_set_new(*prefill, "sweep", json_incref(sweep));
    }
    json_decref(sweep);
    tr_dealloc(ids);
    tr_dealloc(lg);
    tr_dealloc(dec.v);
    tr_dealloc(pre.v);
    return rc == TR_OK ? CLI_OK : cli_fail(CMD, &err);
}

/* The tokenizer when the model has one (random prompts avoid special tokens) or when -p/-f needs it; the -p/-f
 * prompt is encoded with parse_special = true and sets --prompt-tokens. */
static int bench_tokenizer(bench_opts *o, const tr_model *m, tr_session *s, tr_tokenizer **tok)
{
    char *path = o->e.tokenizer ? tr_strdup(o->e.tokenizer) : tr_path_join(o->e.model, "tokenizer.json");
    int have = path && tr_path_is_file(path), rc = CLI_OK;
    tr_dealloc(path);
    if (have || o->prompt || o->prompt_file)
        rc = gen_load_tokenizer(CMD, &o->e, tok);
    if (rc != CLI_OK || (!o->prompt && !o->prompt_file))
        return rc;
    tr_error err;
    char *text = NULL;
    size_t len = 0, n = 0;
    if (o->prompt && !(text = tr_strdup(o->prompt)))
        return tr_fail(&err, TR_E_NOMEM, CMD, "out of memory"), cli_fail(CMD, &err);
    len = o->prompt ? strlen(text) : 0;
    if (o->prompt_file && tr_file_read_all(o->prompt_file, &text, &len, &err) != TR_OK)
        return cli_fail(CMD, &err);
    rc = tr_tokenizer_encode(*tok, text, len, 1, o->prompt ? "-p" : o->prompt_file, &o->prompt_ids, &n, &err) == TR_OK
             ? CLI_OK : cli_fail(CMD, &err);
    tr_dealloc(text);
    if (rc == CLI_OK && (n == 0 || n + o->warmup + o->gen_tokens > tr_session_ctx_size(s)))
        rc = cli_usage(CMD, "the prompt has %zu tokens: need 1 .. %u with --warmup and --gen-tokens", n,
                       tr_session_ctx_size(s) - o->warmup - o->gen_tokens);
    o->prompt_tokens = (uint32_t)n;
    (void)m;
    return rc;
}

int cmd_bench(int argc, char **argv)
{
    bench_opts o = {.prompt_tokens = 32, .gen_tokens = 100, .warmup = 10, .repetitions = 1, .n_prefill = 1};
    o.prefill[0] = 512;
    eng_opts_init(&o.e);
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i]))
            return help(), CLI_OK;
        int r = bench_opt(argc, argv, &i, &o);
        if (r == 0)
            r = eng_opt(CMD, argc, argv, &i, &o.e);
        if (r < 0)
            return CLI_USAGE;
        if (r == 0)
            return cli_usage(CMD, "unknown option %s", argv[i]);
    }
    if (o.prompt && o.prompt_file)
        return cli_usage(CMD, "give -p or -f, not both");
    uint32_t need = o.prompt_tokens + o.warmup + o.gen_tokens;
    for (uint32_t k = 0; k < o.n_prefill; k++)
        need = o.prefill[k] > need ? o.prefill[k] : need;
    if ((o.prompt || o.prompt_file) && need < 4096)
        need = 4096;   /* the prompt's length is known only once tokenized */
    if (!o.e.sopt.ctx_size)
        o.e.sopt.ctx_size = need;
    else if (o.e.sopt.ctx_size < need)
        return cli_usage(CMD, "--ctx-size %u is smaller than the %u positions the bench needs", o.e.sopt.ctx_size, need);
    char started[32];
    iso_now(started, sizeof started);
    tr_model *m = NULL;
    tr_session *s = NULL;
    json_t *decode = NULL, *prefill = NULL;
    tr_tokenizer *tok = NULL;
    int rc = eng_open(CMD, &o.e, &m, &s);
    if (rc == CLI_OK)
        rc = bench_tokenizer(&o, m, s, &tok);
    if (rc == CLI_OK) {
        eng_seed(&o.e);
        if (!o.e.sopt.threads)
            o.e.sopt.threads = (int)tr_session_threads(s);
        rc = run_bench(&o, m, s, tok, &decode, &prefill);
    }
    if (rc == CLI_OK) {
        unsigned long mark = tr_json_mark();
        json_t *doc = bench_doc(&o, m, s, decode, prefill, started);
        print_summary(o.e.json && !strcmp(o.e.json, "-") ? cli_err : cli_out, doc);
        if (o.e.json)
            rc = cli_write_json(CMD, o.e.json, doc, mark);
        json_decref(doc);
    }
    tr_dealloc(o.prompt_ids);
    tr_tokenizer_free(tok);
    tr_session_free(s);
    tr_model_free(m);
    return rc;
}
