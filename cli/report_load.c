/*
 * report_load.c — reading the inputs of `trellis report`: a result file or a folder of them, recognised by "schema",
 * with the members the report uses validated before they are trusted (HARNESS.md §9).  A bad file is TR_E_INPUT
 * naming the file and the member ("c.json: TR_E_INPUT: results[3].status: \"MAYBE\" is not a conformance status").
 */
#include "report.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/registry.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>

static const char *const schemas[RPT_KIND_COUNT] = {
    [RPT_CONFORMANCE] = "trellis.conformance/1",     [RPT_GOLDEN_VERIFY] = "trellis.golden_verify/1",
    [RPT_ORACLE_VERIFY] = "trellis.oracle_verify/1", [RPT_SYMBOLS] = "trellis.symbols/1",
    [RPT_QUANTIZE] = "trellis.quantize/1",           [RPT_PERPLEXITY] = "trellis.perplexity/1",
    [RPT_KLD] = "trellis.kld/1",                     [RPT_STUDY] = "trellis.study/1",
    [RPT_BENCH] = "trellis.bench/1",                 [RPT_BENCH_KERNELS] = "trellis.bench_kernels/1",
};

const char *rpt_kind_schema(rpt_kind k) { return schemas[k]; }

/* ---- member checks ----------------------------------------------------------------------------------------------- */

typedef struct vctx {
    const char *path;
    tr_error *err;
} vctx;

enum { V_STR, V_NUM, V_OBJ, V_ARR, V_BOOL };
static const char *const vnames[] = {"a string", "a number", "an object", "an array", "true or false"};

/* o[key] of type t; optional members may be absent or null.  where: "results[3]." or "". */
static int vcheck(const vctx *c, const json_t *o, const char *where, const char *key, int t, int optional)
{
    const json_t *v = json_object_get(o, key);
    double d;
    if (!v || json_is_null(v)) {
        if (optional)
            return TR_OK;
        return tr_fail(c->err, TR_E_INPUT, c->path, "%s%s: missing", where, key);
    }
    int ok = t == V_STR ? json_is_string(v) : t == V_NUM ? rj_num(v, &d) : t == V_OBJ ? json_is_object(v)
           : t == V_ARR ? json_is_array(v) : json_is_boolean(v);
    if (!ok)
        return tr_fail(c->err, TR_E_INPUT, c->path, "%s%s: expected %s", where, key, vnames[t]);
    return TR_OK;
}

typedef struct vrule {
    const char *key;
    int type, optional;
} vrule;

static int vrules(const vctx *c, const json_t *o, const char *where, const vrule *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = vcheck(c, o, where, r[i].key, r[i].type, r[i].optional);
        if (rc != TR_OK)
            return rc;
    }
    return TR_OK;
}

/* Every element of o[key] (an array) an object satisfying r. */
static int vitems(const vctx *c, const json_t *o, const char *key, const vrule *r, size_t n)
{
    const json_t *a = json_object_get(o, key);
    for (size_t i = 0; i < json_array_size(a); i++) {
        char where[96];
        snprintf(where, sizeof where, "%s[%zu].", key, i);
        if (!json_is_object(json_array_get(a, i)))
            return tr_fail(c->err, TR_E_INPUT, c->path, "%s[%zu]: expected an object", key, i);
        int rc = vrules(c, json_array_get(a, i), where, r, n);
        if (rc != TR_OK)
            return rc;
    }
    return TR_OK;
}

#define N(a) (sizeof a / sizeof a[0])

static int check_conformance(const vctx *c, const json_t *d)
{
    static const vrule top[] = {{"backend", V_STR, 0}, {"results", V_ARR, 0}, {"strict", V_BOOL, 1},
                                {"git_commit", V_STR, 1}, {"tier", V_STR, 1}};
    static const vrule item[] = {{"case", V_STR, 0},      {"op", V_STR, 0},         {"status", V_STR, 0},
                                 {"variant", V_STR, 1},   {"max_ulp", V_NUM, 1},    {"bound_ratio", V_NUM, 1},
                                 {"max_abs", V_NUM, 1},   {"time_us", V_NUM, 1},    {"detail", V_STR, 1},
                                 {"replay", V_STR, 1}};
    int rc = vrules(c, d, "", top, N(top));
    if (rc == TR_OK)
        rc = vitems(c, d, "results", item, N(item));
    const json_t *res = json_object_get(d, "results");
    for (size_t i = 0; rc == TR_OK && i < json_array_size(res); i++) {
        tr_verdict v;
        const char *s = rj_str(json_array_get(res, i), "status");
        if (tr_verdict_parse(s, &v) != 0)
            rc = tr_fail(c->err, TR_E_INPUT, c->path, "results[%zu].status: \"%s\" is not a conformance status", i,
                         s);
    }
    return rc;
}

static int check_golden(const vctx *c, const json_t *d)
{
    static const vrule top[] = {{"results", V_ARR, 0}};
    static const vrule item[] = {{"id", V_STR, 0}, {"status", V_STR, 0}, {"kind", V_STR, 1}, {"detail", V_STR, 1}};
    int rc = vrules(c, d, "", top, N(top));
    return rc == TR_OK ? vitems(c, d, "results", item, N(item)) : rc;
}

static int check_oracle(const vctx *c, const json_t *d)
{
    static const vrule top[] = {{"results", V_ARR, 0}};
    static const vrule item[] = {{"case", V_STR, 0}, {"backend", V_STR, 0}, {"ok", V_BOOL, 0},
                                 {"detail", V_STR, 1}, {"logits", V_OBJ, 1}, {"hidden_states", V_OBJ, 1}};
    int rc = vrules(c, d, "", top, N(top));
    return rc == TR_OK ? vitems(c, d, "results", item, N(item)) : rc;
}

static int check_symbols(const vctx *c, const json_t *d)
{
    static const vrule top[] = {{"symbols", V_ARR, 0}, {"summary", V_OBJ, 1}};
    static const vrule item[] = {{"name", V_STR, 0}, {"status", V_STR, 0}, {"gated", V_BOOL, 1}};
    int rc = vrules(c, d, "", top, N(top));
    return rc == TR_OK ? vitems(c, d, "symbols", item, N(item)) : rc;
}

static int check_quantize(const vctx *c, const json_t *d)
{
    static const vrule top[] = {{"out", V_STR, 0}, {"bits", V_STR, 0}, {"average_bpw", V_NUM, 1},
                                {"source", V_STR, 1}, {"rotation", V_STR, 1}, {"tensors", V_ARR, 1}};
    return vrules(c, d, "", top, N(top));
}

static int check_perplexity(const vctx *c, const json_t *d)
{
    static const vrule top[] = {{"model", V_STR, 0}, {"ppl", V_NUM, 0}, {"ppl_unc", V_NUM, 1},
                                {"ctx", V_NUM, 1},   {"n_scored", V_NUM, 1}, {"protocol", V_STR, 1}};
    return vrules(c, d, "", top, N(top));
}

static int check_kld(const vctx *c, const json_t *d)
{
    static const vrule top[] = {{"model", V_STR, 0},    {"kld", V_OBJ, 0},      {"ppl_q", V_NUM, 0},
                                {"same_top", V_OBJ, 1}, {"delta_p", V_OBJ, 1},  {"base_model", V_STR, 1},
                                {"ppl_base", V_NUM, 1}, {"non_finite", V_NUM, 1}};
    static const vrule kld[] = {{"mean", V_NUM, 0}, {"mean_unc", V_NUM, 1}};
    int rc = vrules(c, d, "", top, N(top));
    return rc == TR_OK ? vrules(c, json_object_get(d, "kld"), "kld.", kld, N(kld)) : rc;
}

static int check_study(const vctx *c, const json_t *d)
{
    static const vrule top[] = {{"entries", V_ARR, 0}, {"bootstrap", V_OBJ, 1}};
    static const vrule item[] = {{"model", V_STR, 0},       {"spec", V_STR, 0},        {"rotation", V_STR, 0},
                                 {"status", V_STR, 0},      {"average_bpw", V_NUM, 1}, {"ppl", V_NUM, 1},
                                 {"kld", V_OBJ, 1},         {"reason", V_STR, 1}};
    int rc = vrules(c, d, "", top, N(top));
    return rc == TR_OK ? vitems(c, d, "entries", item, N(item)) : rc;
}

static int check_bench(const vctx *c, const json_t *d)
{
    static const vrule top[] = {{"model", V_STR, 0},           {"decode", V_OBJ, 0},
                                {"prefill", V_OBJ, 1},         {"fallback_counters", V_OBJ, 1},
                                {"fallback_reasons", V_OBJ, 1}, {"mixed_bpw", V_OBJ, 1}};
    static const vrule dec[] = {{"ms_per_token", V_NUM, 0}, {"samples_ms", V_ARR, 1}};
    int rc = vrules(c, d, "", top, N(top));
    return rc == TR_OK ? vrules(c, json_object_get(d, "decode"), "decode.", dec, N(dec)) : rc;
}

static int check_bench_kernels(const vctx *c, const json_t *d)
{
    static const vrule top[] = {{"results", V_ARR, 0}};
    static const vrule item[] = {{"O", V_NUM, 0}, {"I", V_NUM, 0}, {"bits", V_NUM, 0}, {"median_us", V_NUM, 1}};
    int rc = vrules(c, d, "", top, N(top));
    return rc == TR_OK ? vitems(c, d, "results", item, N(item)) : rc;
}

static int (*const checks[RPT_KIND_COUNT])(const vctx *, const json_t *) = {
    [RPT_CONFORMANCE] = check_conformance, [RPT_GOLDEN_VERIFY] = check_golden,  [RPT_ORACLE_VERIFY] = check_oracle,
    [RPT_SYMBOLS] = check_symbols,         [RPT_QUANTIZE] = check_quantize,     [RPT_PERPLEXITY] = check_perplexity,
    [RPT_KLD] = check_kld,                 [RPT_STUDY] = check_study,           [RPT_BENCH] = check_bench,
    [RPT_BENCH_KERNELS] = check_bench_kernels,
};

/* ---- files and folders ------------------------------------------------------------------------------------------- */

static int add_file(rpt_set *s, const char *path, tr_error *err)
{
    json_t *doc = NULL;
    int rc = tr_json_load_object(path, TR_E_INPUT, &doc, err);
    if (rc != TR_OK)
        return rc;
    const char *schema = rj_str(doc, "schema");
    int kind = -1;
    for (int k = 0; schema && k < RPT_KIND_COUNT; k++)
        if (!strcmp(schema, schemas[k]))
            kind = k;
    vctx c = {path, err};
    if (kind < 0)
        rc = schema ? tr_fail(err, TR_E_INPUT, path, "unknown schema \"%s\" (trellis report reads conformance, "
                              "golden_verify, oracle_verify, symbols, quantize, perplexity, kld, study, bench and "
                              "bench_kernels results)", schema)
                    : tr_fail(err, TR_E_INPUT, path, "no \"schema\" member: not a trellis result file");
    else if (json_is_string(json_object_get(doc, "git_commit")) == 0 && json_object_get(doc, "git_commit") &&
             !json_is_null(json_object_get(doc, "git_commit")))
        rc = tr_fail(err, TR_E_INPUT, path, "git_commit: expected a string");
    else
        rc = checks[kind](&c, doc);
    char *p = rc == TR_OK ? tr_strdup(path) : NULL;
    if (rc == TR_OK && s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        rpt_input *in = tr_realloc(s->in, cap * sizeof *in);
        if (in) {
            s->in = in;
            s->cap = cap;
        }
    }
    if (rc == TR_OK && (!p || s->n == s->cap))
        rc = tr_fail(err, TR_E_NOMEM, path, "out of memory");
    if (rc != TR_OK) {
        tr_dealloc(p);
        json_decref(doc);
        return rc;
    }
    s->in[s->n++] = (rpt_input){p, (rpt_kind)kind, doc};
    return TR_OK;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int is_json_name(const char *n)
{
    size_t l = strlen(n);
    return n[0] != '.' && l > 5 && !strcmp(n + l - 5, ".json");
}

/* The folder's *.json files (not hidden) in bytewise order. */
static int add_dir(rpt_set *s, const char *dir, tr_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return tr_fail(err, TR_E_IO, dir, "cannot open the folder");
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = TR_OK;
    for (struct dirent *e; rc == TR_OK && (e = readdir(d));) {
        if (!is_json_name(e->d_name))
            continue;
        if (n == cap) {
            char **nn = tr_realloc(names, (cap = cap ? 2 * cap : 16) * sizeof *nn);
            if (!nn) {
                rc = tr_fail(err, TR_E_NOMEM, dir, "out of memory");
                break;
            }
            names = nn;
        }
        if (!(names[n] = tr_path_join(dir, e->d_name)))
            rc = tr_fail(err, TR_E_NOMEM, dir, "out of memory");
        else
            n++;
    }
    closedir(d);
    if (n > 1)
        qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        if (rc == TR_OK && tr_path_is_file(names[i]))
            rc = add_file(s, names[i], err);
        tr_dealloc(names[i]);
    }
    tr_dealloc(names);
    return rc;
}

int rpt_set_add(rpt_set *s, const char *path, tr_error *err)
{
    if (tr_path_is_dir(path))
        return add_dir(s, path, err);
    if (!tr_path_exists(path))
        return tr_fail(err, TR_E_IO, path, "not found");
    return add_file(s, path, err);
}

void rpt_set_free(rpt_set *s)
{
    for (size_t i = 0; i < s->n; i++) {
        tr_dealloc(s->in[i].path);
        json_decref(s->in[i].doc);
    }
    tr_dealloc(s->in);
    memset(s, 0, sizeof *s);
}
