/*
 * cmd_golden.c — `trellis golden verify [DIR] [--id GLOB] [--json FILE|-]` and
 * `trellis golden gen [DIR] [--id GLOB] [--force]` (HARNESS.md §4).
 *
 * golden/index.json (schema trellis.golden/1) lists fixtures: id, kind, compare, generated_by, params, files.  Each
 * kind has a recompute function that produces the bytes every file of the fixture must hold:
 *   - generated_by "ref": everything is rebuilt from params with the reference (inputs and outputs), so verify proves
 *     both the generators and the reference reproduce the committed bytes;
 *   - generated_by "script:<path>" / "oracle": the inputs are what the script or oracle wrote; only the outputs the
 *     reference must reproduce (e.g. W16 of a foreign checkpoint) are recomputed, from the committed inputs.
 * Every listed file must also match its sha256.  `bound` and `oracle` comparisons need later milestones and report
 * UNSUPPORTED, never PASS.
 */
#include "cli.h"
#include "golden_kinds.h"
#include "trellis/alloc.h"
#include "trellis/backend.h"
#include "trellis/fileio.h"
#include "trellis/hash.h"
#include "trellis/jsonio.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

static const char *const CMD = "golden";

void products_free(products *p)
{
    for (size_t i = 0; i < p->n; i++) {
        tr_dealloc(p->v[i].rel);
        tr_dealloc(p->v[i].data);
    }
    tr_dealloc(p->v);
    p->v = NULL;
    p->n = p->cap = 0;
}

int products_put(products *p, const char *rel, const char *role, const void *data, size_t size)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 16;
        product *v = tr_realloc(p->v, cap * sizeof *v);
        if (!v)
            return TR_E_NOMEM;
        p->v = v;
        p->cap = cap;
    }
    product *d = &p->v[p->n];
    d->rel = tr_strdup(rel);
    d->data = tr_malloc(size ? size : 1);
    d->role = role;
    d->size = size;
    if (!d->rel || !d->data) {
        tr_dealloc(d->rel);
        tr_dealloc(d->data);
        return TR_E_NOMEM;
    }
    if (size)
        memcpy(d->data, data, size);
    p->n++;
    return TR_OK;
}

typedef struct kind_handler {
    const char *kind;
    int (*recompute)(const golden_ctx *g, products *out, char *why, size_t whylen);
} kind_handler;

static const kind_handler handlers[] = {
    {"lut", golden_lut},           {"grid", golden_grid},         {"conversion", golden_conversion},
    {"packing", golden_packing},   {"hadamard", golden_hadamard}, {"bitstream", golden_bitstream},
    {"checkpoint", golden_checkpoint}, {"op", golden_op},
};

static const kind_handler *find_handler(const char *kind)
{
    for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++)
        if (strcmp(handlers[i].kind, kind) == 0)
            return &handlers[i];
    return NULL;
}

typedef struct verdict {
    const char *status;         /* PASS, FAIL, UNSUPPORTED, ERROR */
    char detail[600];
} verdict;

static int read_file(const char *gdir, const char *rel, uint8_t **data, size_t *size)
{
    char *path = tr_path_join(gdir, rel);
    tr_error err;
    int rc = path ? tr_file_read_all(path, (char **)data, size, &err) : TR_E_NOMEM;
    tr_dealloc(path);
    return rc;
}

/* First differing byte of two buffers, or -1. */
static long long first_diff(const uint8_t *a, size_t na, const uint8_t *b, size_t nb)
{
    size_t n = na < nb ? na : nb;
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return (long long)i;
    return na == nb ? -1 : (long long)n;
}

/* sha256 of every listed file; returns 0 ok, 1 mismatch, 2 unreadable. */
static int check_file_hashes(const char *gdir, json_t *files, verdict *v)
{
    for (size_t i = 0; i < json_array_size(files); i++) {
        json_t *f = json_array_get(files, i);
        const char *rel = json_string_value(json_object_get(f, "path"));
        const char *sha = json_string_value(json_object_get(f, "sha256"));
        if (!rel || !sha) {
            snprintf(v->detail, sizeof v->detail, "files[%zu] lacks path or sha256", i);
            return 2;
        }
        char *path = tr_path_join(gdir, rel);
        char hex[65];
        tr_error err;
        int rc = path ? tr_sha256_file_hex(path, hex, &err) : TR_E_NOMEM;
        tr_dealloc(path);
        if (rc != TR_OK) {
            snprintf(v->detail, sizeof v->detail, "%s: cannot read (%s)", rel, tr_status_name(rc));
            return 2;
        }
        if (strcmp(hex, sha) != 0) {
            snprintf(v->detail, sizeof v->detail, "%s: sha256 %s, manifest says %s", rel, hex, sha);
            return 1;
        }
    }
    return 0;
}

static json_t *find_listed(json_t *files, const char *rel)
{
    for (size_t i = 0; i < json_array_size(files); i++)
        if (!strcmp(json_string_value(json_object_get(json_array_get(files, i), "path")), rel))
            return json_array_get(files, i);
    return NULL;
}

static int verify_one(const char *gdir, json_t *fx, verdict *v)
{
    const char *kind = json_string_value(json_object_get(fx, "kind"));
    const char *compare = json_string_value(json_object_get(fx, "compare"));
    json_t *files = json_object_get(fx, "files");
    v->detail[0] = '\0';
    if (!kind || !compare || !json_is_array(files)) {
        v->status = "ERROR";
        snprintf(v->detail, sizeof v->detail, "entry lacks kind, compare or files");
        return 2;
    }
    int h = check_file_hashes(gdir, files, v);
    if (h) {
        v->status = h == 1 ? "FAIL" : "ERROR";
        return h;
    }
    if (strcmp(compare, "bitwise") != 0 && strcmp(compare, "bound") != 0) {
        v->status = "UNSUPPORTED";
        snprintf(v->detail, sizeof v->detail, "compare \"%s\" needs the op registry / engine (later milestone)",
                 compare);
        return 0;
    }
    if (strcmp(compare, "bound") == 0 && strcmp(kind, "op") != 0) {
        v->status = "UNSUPPORTED";
        snprintf(v->detail, sizeof v->detail, "compare \"bound\" applies to op fixtures only");
        return 0;
    }
    const kind_handler *kh = find_handler(kind);
    if (!kh) {
        v->status = "UNSUPPORTED";
        snprintf(v->detail, sizeof v->detail, "kind \"%s\" has no recompute yet", kind);
        return 0;
    }
    golden_ctx g = {gdir, fx, json_object_get(fx, "params"), golden_is_ref(fx), 0};
    products p = {0};
    char why[400] = "";
    int rc = kh->recompute(&g, &p, why, sizeof why);
    int out = 0;
    if (rc != TR_OK) {
        v->status = rc == TR_E_IO || rc == TR_E_NOMEM ? "ERROR" : "FAIL";
        snprintf(v->detail, sizeof v->detail, "%s", why[0] ? why : tr_status_name(rc));
        out = rc == TR_E_IO || rc == TR_E_NOMEM ? 2 : 1;
    }
    for (size_t i = 0; !out && i < p.n; i++) {
        if (!find_listed(files, p.v[i].rel)) {
            v->status = "FAIL";
            snprintf(v->detail, sizeof v->detail, "%s: produced by the recompute but not listed in files", p.v[i].rel);
            out = 1;
            break;
        }
        uint8_t *disk = NULL;
        size_t size = 0;
        if (read_file(gdir, p.v[i].rel, &disk, &size) != TR_OK) {
            v->status = "ERROR";
            snprintf(v->detail, sizeof v->detail, "%s: cannot read", p.v[i].rel);
            out = 2;
            break;
        }
        long long d = first_diff(disk, size, p.v[i].data, p.v[i].size);
        tr_dealloc(disk);
        if (d >= 0) {
            v->status = "FAIL";
            snprintf(v->detail, sizeof v->detail, "%s: recomputed bytes differ at byte %lld (file %zu bytes, "
                     "recomputed %zu)", p.v[i].rel, d, size, p.v[i].size);
            out = 1;
        }
    }
    if (!out && g.regenerate && p.n != json_array_size(files)) {
        v->status = "FAIL";
        snprintf(v->detail, sizeof v->detail, "files lists %zu files, the recompute produces %zu",
                 json_array_size(files), p.n);
        out = 1;
    }
    if (!out) {
        v->status = "PASS";
        snprintf(v->detail, sizeof v->detail, "%zu file%s bit-identical", p.n, p.n == 1 ? "" : "s");
    }
    products_free(&p);
    return out;
}

static int load_index(const char *gdir, json_t **root, json_t **fixtures, char **ipath)
{
    *ipath = tr_path_join(gdir, "index.json");
    tr_error err;
    char *text = NULL;
    size_t size = 0;
    if (!*ipath || tr_file_read_all(*ipath, &text, &size, &err) != TR_OK) {
        fprintf(cli_err, "trellis golden: error: %s: cannot read the fixture index\n", *ipath ? *ipath : gdir);
        return CLI_USAGE;
    }
    json_error_t jerr;
    int status;
    *root = tr_json_parse(text, size, TR_E_INPUT, 0, &jerr, &status);
    tr_dealloc(text);
    if (!*root) {
        fprintf(cli_err, "trellis golden: error: %s: line %d: %s\n", *ipath, jerr.line, jerr.text);
        return CLI_USAGE;
    }
    json_t *schema = json_object_get(*root, "schema");
    *fixtures = json_object_get(*root, "fixtures");
    if (!json_is_string(schema) || strcmp(json_string_value(schema), "trellis.golden/1") || !json_is_array(*fixtures)) {
        fprintf(cli_err, "trellis golden: error: %s: not a trellis.golden/1 manifest with a fixtures array\n",
                *ipath);
        return CLI_USAGE;
    }
    return CLI_OK;
}

static int id_selected(const char *id, const char *glob) { return !glob || fnmatch(glob, id, 0) == 0; }

static int verify(const char *gdir, const char *glob, const char *json_path)
{
    unsigned long mark = tr_json_mark();
    json_t *root = NULL, *fixtures = NULL;
    char *ipath = NULL;
    int rc = load_index(gdir, &root, &fixtures, &ipath);
    if (rc != CLI_OK) {
        json_decref(root);
        tr_dealloc(ipath);
        return rc;
    }
    json_t *doc = json_object(), *results = json_array();
    unsigned counts[4] = {0};   /* PASS FAIL UNSUPPORTED ERROR */
    int worst = 0;
    for (size_t i = 0; i < json_array_size(fixtures); i++) {
        json_t *fx = json_array_get(fixtures, i);
        const char *id = json_string_value(json_object_get(fx, "id"));
        if (!id) {
            fprintf(cli_err, "trellis golden: error: %s: fixtures[%zu] has no id\n", ipath, i);
            worst = 2;
            continue;
        }
        if (!id_selected(id, glob))
            continue;
        verdict v;
        int r = verify_one(gdir, fx, &v);
        worst = r > worst ? r : worst;
        counts[!strcmp(v.status, "PASS") ? 0 : !strcmp(v.status, "FAIL") ? 1 : !strcmp(v.status, "UNSUPPORTED") ? 2
                                                                                                             : 3]++;
        if (!json_path || strcmp(json_path, "-"))
            fprintf(cli_out, "%-12s %-40s %s\n", v.status, id, v.detail);
        json_t *e = json_object();
        json_object_set_new(e, "id", json_string(id));
        json_object_set_new(e, "kind", json_incref(json_object_get(fx, "kind")));
        json_object_set_new(e, "status", json_string(v.status));
        json_object_set_new(e, "detail", json_string(v.detail));
        json_array_append_new(results, e);
    }
    if (!json_path || strcmp(json_path, "-"))
        fprintf(cli_out, "golden: %u pass, %u fail, %u unsupported, %u unreadable\n", counts[0], counts[1], counts[2],
                counts[3]);
    json_object_set_new(doc, "schema", json_string("trellis.golden_verify/1"));
    json_object_set_new(doc, "dir", json_string(gdir));
    json_object_set_new(doc, "results", results);
    json_t *sum = json_object();
    json_object_set_new(sum, "PASS", json_integer(counts[0]));
    json_object_set_new(sum, "FAIL", json_integer(counts[1]));
    json_object_set_new(sum, "UNSUPPORTED", json_integer(counts[2]));
    json_object_set_new(sum, "ERROR", json_integer(counts[3]));
    json_object_set_new(doc, "summary", sum);
    if (json_path) {
        int w = cli_write_json(CMD, json_path, doc, mark);
        if (w != CLI_OK && worst < 2)
            worst = 2;
    }
    json_decref(doc);
    json_decref(root);
    tr_dealloc(ipath);
    return worst;
}

/* Write a product unless the file holds the same bytes; a different existing file needs --force. */
static int write_product(const char *gdir, const product *p, int force, int *changed, int *refused)
{
    uint8_t *disk = NULL;
    size_t size = 0;
    int exists = read_file(gdir, p->rel, &disk, &size) == TR_OK;
    int same = exists && first_diff(disk, size, p->data, p->size) < 0;
    tr_dealloc(disk);
    if (same)
        return TR_OK;
    if (exists && !force) {
        fprintf(cli_out, "  refused  %s (content would change; rerun with --force after review)\n", p->rel);
        *refused = 1;
        return TR_OK;
    }
    char *path = tr_path_join(gdir, p->rel);
    if (!path)
        return TR_E_NOMEM;
    char *slash = strrchr(path, '/');
    tr_error err;
    int rc = TR_OK;
    if (slash) {
        *slash = '\0';
        rc = tr_mkdir_p(path, &err);
        *slash = '/';
    }
    if (rc == TR_OK)
        rc = tr_file_write_all(path, p->data, p->size, &err);
    if (rc != TR_OK)
        fprintf(cli_err, "trellis golden: error: %s\n", err.text);
    else
        fprintf(cli_out, "  %-8s %s\n", exists ? "changed" : "new", p->rel);
    *changed = 1;
    tr_dealloc(path);
    return rc;
}

static int gen(const char *gdir, const char *glob, int force)
{
    unsigned long mark = tr_json_mark();
    json_t *root = NULL, *fixtures = NULL;
    char *ipath = NULL;
    int rc = load_index(gdir, &root, &fixtures, &ipath);
    int any_refused = 0, index_changed = 0;
    for (size_t i = 0; rc == CLI_OK && i < json_array_size(fixtures); i++) {
        json_t *fx = json_array_get(fixtures, i);
        const char *id = json_string_value(json_object_get(fx, "id"));
        const char *by = json_string_value(json_object_get(fx, "generated_by"));
        if (!id || !id_selected(id, glob) || !by || strcmp(by, "ref") != 0)
            continue;
        const char *kind = json_string_value(json_object_get(fx, "kind"));
        const kind_handler *kh = kind ? find_handler(kind) : NULL;
        if (!kh) {
            fprintf(cli_out, "skip %s (no generator for this kind)\n", id);
            continue;
        }
        golden_ctx g = {gdir, fx, json_object_get(fx, "params"), 1, 1};
        products p = {0};
        char why[400] = "";
        if (kh->recompute(&g, &p, why, sizeof why) != TR_OK) {
            fprintf(cli_err, "trellis golden: error: %s: %s\n", id, why);
            products_free(&p);
            rc = CLI_FAILURES;
            break;
        }
        fprintf(cli_out, "%s\n", id);
        int changed = 0, refused = 0;
        json_t *files = json_array();
        for (size_t k = 0; k < p.n; k++) {
            if (write_product(gdir, &p.v[k], force, &changed, &refused) != TR_OK) {
                rc = CLI_USAGE;
                break;
            }
            char hex[65];
            tr_sha256_hex(p.v[k].data, p.v[k].size, hex);
            json_t *f = json_object();
            json_object_set_new(f, "path", json_string(p.v[k].rel));
            json_object_set_new(f, "role", json_string(p.v[k].role));
            json_object_set_new(f, "sha256", json_string(hex));
            json_array_append_new(files, f);
        }
        products_free(&p);
        any_refused |= refused;
        if (!refused && !json_equal(files, json_object_get(fx, "files"))) {
            json_object_set(fx, "files", files);
            index_changed = 1;
        }
        json_decref(files);
        if (!changed)
            fprintf(cli_out, "  unchanged\n");
    }
    if (rc == CLI_OK && index_changed) {
        rc = cli_write_json(CMD, ipath, root, mark);
        fprintf(cli_out, "updated %s\n", ipath);
    }
    json_decref(root);
    tr_dealloc(ipath);
    if (rc == CLI_OK && any_refused)
        rc = CLI_FAILURES;
    return rc;
}

static void help(void)
{
    fprintf(cli_out,
            "Usage: trellis golden verify [DIR] [--id GLOB] [--json FILE|-]\n"
            "       trellis golden gen [DIR] [--id GLOB] [--force]\n"
            "       trellis golden import-oracle [SRC] [--out DIR] [--force]\n"
            "       trellis golden verify --oracle DIR [--backend NAME]... [--json FILE|-]\n"
            "  DIR defaults to golden/.  verify recomputes every fixture of DIR/index.json with the reference and\n"
            "  compares bit for bit; exit 0 all hold, 1 some mismatch, 2 unreadable manifest or file.\n"
            "  gen rewrites the generated_by \"ref\" fixtures; a file whose content would change needs --force.\n"
            "  import-oracle copies the HF oracle cases of SRC (default ../shared/oracle) verbatim into DIR (default\n"
            "  golden/oracle) and writes MANIFEST.json; verify --oracle runs ENGINE.md §7's checks of every case on\n"
            "  ref and cpu (or each --backend), exit 1 when one fails.\n");
}

int cmd_golden(int argc, char **argv)
{
    const char *sub = NULL, *dir = NULL, *glob = NULL, *json_path = NULL, *oracle = NULL, *out = NULL;
    const char *backends[8];
    int force = 0, n_backends = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r;
        if (cli_is_help(argv[i])) {
            help();
            return CLI_OK;
        }
        if ((r = cli_opt(argc, argv, &i, "--id", &v)) != 0) {
            if (r < 0)
                return cli_usage(CMD, "--id needs a glob");
            glob = v;
        } else if ((r = cli_opt(argc, argv, &i, "--oracle", &v)) != 0) {
            if (r < 0)
                return cli_usage(CMD, "--oracle needs a folder");
            oracle = v;
        } else if ((r = cli_opt(argc, argv, &i, "--out", &v)) != 0) {
            if (r < 0)
                return cli_usage(CMD, "--out needs a folder");
            out = v;
        } else if ((r = cli_opt(argc, argv, &i, "--backend", &v)) != 0) {
            if (r < 0 || n_backends == 8)
                return cli_usage(CMD, "--backend needs a name (at most 8)");
            if (!tr_backend_available(v))
                return cli_usage(CMD, "unknown backend \"%s\" (available: ref, cpu)", v);
            backends[n_backends++] = v;
        } else if ((r = cli_opt_json(argc, argv, &i, &v)) != 0)
            json_path = v;
        else if (!strcmp(argv[i], "--force"))
            force = 1;
        else if (argv[i][0] == '-')
            return cli_usage(CMD, "unknown option %s", argv[i]);
        else if (!sub)
            sub = argv[i];
        else if (!dir)
            dir = argv[i];
        else
            return cli_usage(CMD, "unexpected argument %s", argv[i]);
    }
    if (!sub)
        return cli_usage(CMD, "missing subcommand (verify or gen)");
    if (!strcmp(sub, "import-oracle"))
        return golden_import_oracle(dir, out, force);
    if (!strcmp(sub, "verify") && oracle)
        return dir ? cli_usage(CMD, "give either DIR or --oracle DIR") : golden_verify_oracle(oracle, backends,
                                                                                              n_backends, json_path);
    if (!dir)
        dir = "golden";
    if (!strcmp(sub, "verify"))
        return verify(dir, glob, json_path);
    if (!strcmp(sub, "gen"))
        return gen(dir, glob, force);
    return cli_usage(CMD, "unknown subcommand \"%s\" (verify, gen or import-oracle)", sub);
}
