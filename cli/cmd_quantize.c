/*
 * cmd_quantize.c — `trellis quantize -m SRC --out DIR [--bits SPEC] [--scale absmax|mse]
 * [--rotation none|hadamard128] [--seed N] [--shard-size BYTES] [--json FILE]` (FORMAT.md §6.5).
 *
 * Reads an HF float checkpoint, quantizes the linears of FORMAT.md §3.6 one tensor at a time with the reference
 * quantizer (quantize.h) and writes a trellis v3 directory with the deterministic v3 writer: linears are declared in
 * writing order first, then quantized and put in that order (each shard is written as soon as it is complete); the
 * other tensors go to base_weights.safetensors in their original dtype; config and tokenizer files are copied byte
 * for byte.  With avg=X a first pass computes SSE(b), b = 2..8, of every allocated tensor for the greedy allocation.
 * Prints one line per quantized tensor (name, bits, shape, MSE) and the average bits per weight
 * Σ b·numel / Σ numel.
 */
#include "cli.h"
#include "progress.h"
#include "trellis/alloc.h"
#include "trellis/checkpoint.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/quantize.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const CMD = "quantize";

/* Files copied byte for byte from SRC when present (FORMAT.md §6.5). */
static const char *const copied_files[] = {"config.json", "generation_config.json", "tokenizer.json",
                                           "tokenizer_config.json", "special_tokens_map.json"};

static void help(void)
{
    fprintf(cli_out,
            "Usage: trellis quantize (-m SRC | SRC) --out DIR [--bits SPEC] [--scale absmax|mse]\n"
            "                        [--rotation none|hadamard128] [--seed N] [--shard-size BYTES] [--json FILE|-]\n"
            "  Quantizes an HF float checkpoint into a trellis v3 directory (FORMAT.md §6.4, §6.5).\n"
            "  --bits SPEC       comma-separated role=b items (roles attn, gate, up, down, shared, dense, lm_head,\n"
            "                    default; b = 2..8), a bare b (= default=b), or avg=X (2 <= X <= 8) instead of\n"
            "                    default: greedy allocation to an average of X bits per weight.  Default: 4.\n"
            "                    lm_head is quantized only when SPEC names it.\n"
            "  --scale           absmax (default) or mse (clip search r = 1 - j/64, j = 0..31)\n"
            "  --rotation        none (default) or hadamard128 (layers with in_features %% 128 != 0 use none)\n"
            "  --seed N          seed of the hadamard128 sign vectors (default 42)\n"
            "  --shard-size B    data bytes per shard (default 2147483648); a linear never splits\n"
            "  --json FILE       also write a trellis.quantize/1 summary\n"
            "  --no-progress     no progress bar on stderr (drawn only when stderr is a terminal)\n"
            "  DIR must not exist or be empty.  Prints each tensor's name, bits, shape and MSE, then the average\n"
            "  bits per weight.  Exit: 0 done, 2 usage or input error, 4 resource error.\n");
}

/* ---- options ----------------------------------------------------------------------------------------------------- */

typedef struct qargs {
    const char *src, *out, *spec_text, *json;
    tr_bits_spec spec;
    tr_quant_opts q;
    uint64_t shard_size;
    int no_progress;
} qargs;

/* Decimal digits only, no overflow.  0 on success. */
static int parse_u64(const char *s, uint64_t *v)
{
    if (!*s)
        return -1;
    uint64_t x = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || x > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
            return -1;
        x = x * 10 + (uint64_t)(*s - '0');
    }
    *v = x;
    return 0;
}

/* One option at argv[*i]; returns -1 when handled, 0 when it is not an option of ours, or an exit code. */
static int parse_option(int argc, char **argv, int *i, qargs *a)
{
    const char *v;
    int r;
    if ((r = cli_opt(argc, argv, i, "--model", &v)) != 0 || (r = cli_opt(argc, argv, i, "-m", &v)) != 0) {
        if (r < 0)
            return cli_usage(CMD, "--model needs a directory");
        a->src = v;
    } else if ((r = cli_opt(argc, argv, i, "--out", &v)) != 0 || (r = cli_opt(argc, argv, i, "-o", &v)) != 0) {
        if (r < 0)
            return cli_usage(CMD, "--out needs a directory");
        a->out = v;
    } else if ((r = cli_opt(argc, argv, i, "--bits", &v)) != 0) {
        if (r < 0)
            return cli_usage(CMD, "--bits needs a SPEC");
        a->spec_text = v;
    } else if ((r = cli_opt(argc, argv, i, "--scale", &v)) != 0) {
        if (r < 0 || tr_qscale_parse(v, &a->q.scale) != 0)
            return cli_usage(CMD, "--scale must be absmax or mse");
    } else if ((r = cli_opt(argc, argv, i, "--rotation", &v)) != 0) {
        if (r < 0 || tr_rotation_parse(v, &a->q.rotation) != 0)
            return cli_usage(CMD, "--rotation must be none or hadamard128");
    } else if ((r = cli_opt(argc, argv, i, "--seed", &v)) != 0) {
        if (r < 0 || parse_u64(v, &a->q.seed) != 0)
            return cli_usage(CMD, "--seed needs an unsigned decimal integer below 2^64");
    } else if ((r = cli_opt(argc, argv, i, "--shard-size", &v)) != 0) {
        if (r < 0 || parse_u64(v, &a->shard_size) != 0 || a->shard_size == 0)
            return cli_usage(CMD, "--shard-size needs a positive number of bytes");
    } else if ((r = cli_opt_json(argc, argv, i, &v)) != 0)
        a->json = v;
    else if (!strcmp(argv[*i], "--no-progress"))
        a->no_progress = 1;
    else
        return 0;
    return -1;
}

/* Returns -1 to go on, or the exit code to return (help, usage errors). */
static int parse_args(int argc, char **argv, qargs *a)
{
    memset(a, 0, sizeof *a);
    a->spec_text = "4";
    a->q.seed = TR_QUANT_DEFAULT_SEED;
    a->shard_size = UINT64_C(2147483648);
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            help();
            return CLI_OK;
        }
        int r = parse_option(argc, argv, &i, a);
        if (r > 0)
            return r;
        if (r < 0)
            continue;
        if (argv[i][0] == '-' && argv[i][1] != '\0')
            return cli_usage(CMD, "unknown option %s", argv[i]);
        if (a->src)
            return cli_usage(CMD, "unexpected argument %s", argv[i]);
        a->src = argv[i];
    }
    if (!a->src || !a->out)
        return cli_usage(CMD, "need the source model (-m SRC) and --out DIR");
    tr_error err;
    if (tr_bits_spec_parse(a->spec_text, &a->spec, &err) != TR_OK)
        return cli_usage(CMD, "%s", err.text);
    return -1;
}

/* --out must not exist, or be an empty directory. */
static int check_out_dir(const char *out)
{
    if (!tr_path_exists(out))
        return -1;
    if (!tr_path_is_dir(out))
        return cli_usage(CMD, "--out %s exists and is not a directory", out);
    DIR *d = opendir(out);
    if (!d)
        return cli_usage(CMD, "--out %s cannot be read", out);
    int empty = 1;
    for (struct dirent *e; empty && (e = readdir(d)) != NULL;)
        empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
    closedir(d);
    if (!empty)
        return cli_usage(CMD, "--out %s is not empty; quantize writes only into a new or empty directory", out);
    return -1;
}

/* ---- the plan: linears in writing order, float tensors ----------------------------------------------------------- */

typedef struct qlin {
    const char *name;          /* owned by the checkpoint */
    uint32_t O, I;
    int width;                 /* 2..8 or TR_BITS_ALLOCATED */
    unsigned bits;             /* final width */
    tr_rotation rot;
    double sse;
} qlin;

typedef struct qplan {
    qlin *lin;
    size_t nlin;
    tr_tensor_ref *flt;
    size_t nflt;
    progress bar;              /* over the linears quantized (both passes of avg=X) */
    uint64_t done, total;
} qplan;

static void plan_free(qplan *p)
{
    tr_dealloc(p->lin);
    tr_dealloc(p->flt);
    memset(p, 0, sizeof *p);
}

static int cmp_lin(const void *a, const void *b)
{
    return tr_quant_order_cmp(((const qlin *)a)->name, ((const qlin *)b)->name);
}

/* A linear must be a 2-D matrix with dimensions 1..2^32−1. */
static int add_linear(qplan *p, const tr_tensor_ref *r, int width, const qargs *a, tr_error *err)
{
    const tr_st_tensor *t = r->t;
    if (t->ndim != 2 || t->shape[0] == 0 || t->shape[1] == 0 || t->shape[0] > UINT32_MAX || t->shape[1] > UINT32_MAX)
        return tr_fail(err, TR_E_SHAPE, r->file, "%s: a quantized linear must be a non-empty 2-D matrix [O,I] "
                       "(rank %u)", t->name, t->ndim);
    qlin *l = &p->lin[p->nlin++];
    memset(l, 0, sizeof *l);
    l->name = t->name;
    l->O = (uint32_t)t->shape[0];
    l->I = (uint32_t)t->shape[1];
    l->width = width;
    l->bits = width > 0 ? (unsigned)width : 0;
    l->rot = tr_quant_effective_rotation(a->q.rotation, l->I);
    return TR_OK;
}

/* Split the checkpoint's tensors into linears to quantize (sorted into writing order) and float tensors. */
static int build_plan(const tr_ckpt *c, const qargs *a, qplan *p, tr_error *err)
{
    size_t n = tr_ckpt_tensor_count(c);
    p->lin = tr_calloc(n + 1, sizeof *p->lin);
    p->flt = tr_calloc(n + 1, sizeof *p->flt);
    if (!p->lin || !p->flt)
        return tr_fail(err, TR_E_NOMEM, a->src, "out of memory");
    for (size_t i = 0; i < n; i++) {
        tr_tensor_ref r;
        if (tr_ckpt_tensor_at(c, i, &r) != TR_OK)
            return tr_fail(err, TR_E_INTERNAL, a->src, "tensor %zu cannot be resolved", i);
        int role = tr_quant_role(r.name);
        int width = role < 0 ? 0 : tr_bits_spec_width(&a->spec, (tr_qrole)role);
        if (width == 0)
            p->flt[p->nflt++] = r;
        else if (add_linear(p, &r, width, a, err) != TR_OK)
            return err->code;
    }
    if (p->nlin > 1)
        qsort(p->lin, p->nlin, sizeof *p->lin, cmp_lin);
    return TR_OK;
}

/* ---- avg=X: first pass and allocation ---------------------------------------------------------------------------- */

static int load_matrix(const tr_ckpt *c, const qlin *l, float **W, tr_error *err)
{
    uint64_t numel = 0;
    int rc = tr_ckpt_load_f32(c, l->name, W, &numel, err);
    if (rc == TR_OK && numel != (uint64_t)l->O * l->I) {
        tr_dealloc(*W);
        *W = NULL;
        rc = tr_fail(err, TR_E_INTERNAL, l->name, "loaded %llu elements, expected %u·%u", (unsigned long long)numel,
                     l->O, l->I);
    }
    return rc;
}

static int allocate_bits(const tr_ckpt *c, const qargs *a, qplan *p, tr_error *err)
{
    tr_alloc_tensor *t = tr_calloc(p->nlin + 1, sizeof *t);
    unsigned *bits = tr_calloc(p->nlin + 1, sizeof *bits);
    int rc = t && bits ? TR_OK : tr_fail(err, TR_E_NOMEM, a->src, "out of memory");
    for (size_t k = 0; rc == TR_OK && k < p->nlin; k++) {
        const qlin *l = &p->lin[k];
        t[k].name = l->name;
        t[k].numel = (uint64_t)l->O * l->I;
        t[k].fixed_bits = l->width > 0 ? (unsigned)l->width : 0;
        if (t[k].fixed_bits)
            continue;
        float *W = NULL;
        rc = load_matrix(c, l, &W, err);
        if (rc == TR_OK)
            rc = tr_quantize_sse_table(l->name, W, l->O, l->I, &a->q, t[k].sse, err);
        tr_dealloc(W);
        progress_update(&p->bar, ++p->done, p->total);
    }
    if (rc == TR_OK)
        rc = tr_bits_allocate(t, p->nlin, a->spec.avg, bits, err);
    for (size_t k = 0; rc == TR_OK && k < p->nlin; k++)
        p->lin[k].bits = bits[k];
    tr_dealloc(t);
    tr_dealloc(bits);
    return rc;
}

/* ---- writing ----------------------------------------------------------------------------------------------------- */

static void print_linear(const qlin *l)
{
    fprintf(cli_out, "%-56s %u bits  [%u,%u]%s  mse %.6g\n", l->name, l->bits, l->O, l->I,
            l->rot == TR_ROT_HADAMARD128 ? "  hadamard128" : "", l->sse / ((double)l->O * l->I));
}

/* Quantize the next linear the writer expects (plan order = writing order) and put it. */
static int put_linear(tr_v3_writer *w, const tr_ckpt *c, const qargs *a, qlin *l, tr_error *err)
{
    /* NULL while linears remain: the writer could not start its data phase (only an allocation can fail there) */
    const char *next = tr_v3_writer_next(w);
    if (!next)
        return tr_fail(err, TR_E_NOMEM, a->out, "out of memory starting the writer");
    if (strcmp(next, l->name) != 0)
        return tr_fail(err, TR_E_INTERNAL, l->name, "writer expects %s next", next);
    float *W = NULL;
    int rc = load_matrix(c, l, &W, err);
    tr_qtensor q;
    memset(&q, 0, sizeof q);
    tr_quant_opts o = a->q;
    o.where = a->src;
    if (rc == TR_OK)
        rc = tr_quantize(l->name, W, l->O, l->I, l->bits, &o, &q, err);
    tr_dealloc(W);
    if (rc == TR_OK) {
        l->sse = q.sse;
        rc = tr_v3_writer_put(w, l->name, &q.w, err);
    }
    tr_qtensor_free(&q);
    if (rc == TR_OK)
        print_linear(l);
    return rc;
}

static int write_model(const tr_ckpt *c, const qargs *a, qplan *p, tr_error *err)
{
    tr_v3_options vo = {a->shard_size, TR_QUANT_GROUP_SIZE, a->q.rotation};
    tr_v3_writer *w = NULL;
    int rc = tr_v3_writer_new(a->out, &vo, &w, err);
    for (size_t k = 0; rc == TR_OK && k < p->nlin; k++) {
        const qlin *l = &p->lin[k];
        uint32_t G = (l->I + TR_QUANT_GROUP_SIZE - 1) / TR_QUANT_GROUP_SIZE;
        rc = tr_v3_writer_declare(w, l->name, l->O, l->I, l->bits, G, l->rot, err);
    }
    for (size_t k = 0; rc == TR_OK && k < p->nlin; k++) {
        rc = put_linear(w, c, a, &p->lin[k], err);
        progress_update(&p->bar, ++p->done, p->total);
    }
    for (size_t k = 0; rc == TR_OK && k < p->nflt; k++) {
        const tr_st_tensor *t = p->flt[k].t;
        rc = tr_v3_writer_add_float(w, t->name, t->dtype, t->ndim, t->shape, t->data, err);
    }
    if (rc == TR_OK)
        rc = tr_v3_writer_finish(w, err);
    tr_v3_writer_free(w);
    return rc;
}

/* config.json, generation_config.json and the tokenizer files, byte for byte, when present. */
static int copy_side_files(const qargs *a, tr_error *err)
{
    int rc = TR_OK;
    for (size_t k = 0; rc == TR_OK && k < sizeof copied_files / sizeof copied_files[0]; k++) {
        char *from = tr_path_join(a->src, copied_files[k]), *to = tr_path_join(a->out, copied_files[k]);
        char *data = NULL;
        size_t size = 0;
        if (!from || !to)
            rc = tr_fail(err, TR_E_NOMEM, a->out, "out of memory");
        else if (tr_path_is_file(from)) {
            rc = tr_file_read_all(from, &data, &size, err);
            if (rc == TR_OK)
                rc = tr_file_write_all(to, data, size, err);
        }
        tr_dealloc(data);
        tr_dealloc(from);
        tr_dealloc(to);
    }
    return rc;
}

/* ---- summary ----------------------------------------------------------------------------------------------------- */

typedef struct qsummary {
    uint64_t bits, weights;    /* Σ b·numel, Σ numel */
} qsummary;

static qsummary summarize(const qplan *p)
{
    qsummary s = {0, 0};
    for (size_t k = 0; k < p->nlin; k++) {
        uint64_t n = (uint64_t)p->lin[k].O * p->lin[k].I;
        s.bits += p->lin[k].bits * n;
        s.weights += n;
    }
    return s;
}

static void print_summary(const qplan *p, qsummary s)
{
    if (s.weights == 0)
        fprintf(cli_out, "average bits per weight: n/a (no quantized tensors; %zu float tensors)\n", p->nflt);
    else
        fprintf(cli_out, "average bits per weight: %.4f (%zu quantized tensors, %llu weights; %zu float tensors)\n",
                (double)s.bits / (double)s.weights, p->nlin, (unsigned long long)s.weights, p->nflt);
}

static json_t *linear_json(const qlin *l)
{
    double n = (double)l->O * l->I;
    json_t *e = json_object(), *shape = json_array();
    json_array_append_new(shape, json_integer(l->O));
    json_array_append_new(shape, json_integer(l->I));
    json_object_set_new(e, "name", json_string(l->name));
    json_object_set_new(e, "shape", shape);
    json_object_set_new(e, "bits", json_integer(l->bits));
    json_object_set_new(e, "rotation", json_string(tr_rotation_name(l->rot)));
    json_object_set_new(e, "sse", tr_json_real(l->sse));
    json_object_set_new(e, "mse", tr_json_real(l->sse / n));
    return e;
}

static int write_json(const qargs *a, const qplan *p, qsummary s)
{
    unsigned long mark = tr_json_mark();
    json_t *doc = json_object(), *tensors = json_array();
    for (size_t k = 0; k < p->nlin; k++)
        json_array_append_new(tensors, linear_json(&p->lin[k]));
    json_object_set_new(doc, "schema", json_string("trellis.quantize/1"));
    json_object_set_new(doc, "source", json_string(a->src));
    json_object_set_new(doc, "out", json_string(a->out));
    json_object_set_new(doc, "bits", json_string(a->spec_text));
    json_object_set_new(doc, "scale", json_string(tr_qscale_name(a->q.scale)));
    json_object_set_new(doc, "rotation", json_string(tr_rotation_name(a->q.rotation)));
    char seed[24];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)a->q.seed);
    json_object_set_new(doc, "seed", json_string(seed));
    json_object_set_new(doc, "shard_size", json_integer((json_int_t)(a->shard_size > INT64_MAX ? INT64_MAX
                                                                                               : a->shard_size)));
    json_object_set_new(doc, "tensors", tensors);
    json_object_set_new(doc, "float_tensors", json_integer((json_int_t)p->nflt));
    json_object_set_new(doc, "quantized_weights", json_integer((json_int_t)s.weights));
    json_object_set_new(doc, "average_bpw", s.weights ? json_real((double)s.bits / (double)s.weights) : json_null());
    int rc = cli_write_json(CMD, a->json, doc, mark);
    json_decref(doc);
    return rc;
}

/* ---- command ----------------------------------------------------------------------------------------------------- */

/* Returns the exit code. */
static int run(const qargs *a)
{
    tr_error e, *err = &e;
    tr_error_clear(err);
    tr_ckpt *c = NULL;
    qplan p;
    memset(&p, 0, sizeof p);
    int rc = tr_ckpt_open(a->src, NULL, &c, err);
    if (rc == TR_OK && tr_ckpt_layout(c) != TR_LAYOUT_HF_FLOAT)
        rc = tr_fail(err, TR_E_INPUT, a->src, "layout %s: quantize reads an HF float checkpoint",
                     tr_layout_name(tr_ckpt_layout(c)));
    if (rc == TR_OK)
        rc = build_plan(c, a, &p, err);
    progress_init(&p.bar, CMD, !a->no_progress);
    p.total = p.nlin * (a->spec.has_avg ? 2 : 1);
    if (rc == TR_OK && a->spec.has_avg)
        rc = allocate_bits(c, a, &p, err);
    if (rc == TR_OK)
        rc = write_model(c, a, &p, err);
    progress_done(&p.bar);
    if (rc == TR_OK)
        rc = copy_side_files(a, err);
    int status = rc == TR_OK ? CLI_OK : cli_fail(CMD, err);
    if (status == CLI_OK) {
        qsummary s = summarize(&p);
        print_summary(&p, s);
        fflush(cli_out);
        if (a->json)
            status = write_json(a, &p, s);
    }
    plan_free(&p);
    tr_ckpt_close(c);
    return status;
}

int cmd_quantize(int argc, char **argv)
{
    qargs a;
    int r = parse_args(argc, argv, &a);
    if (r < 0)
        r = check_out_dir(a.out);
    return r >= 0 ? r : run(&a);
}
