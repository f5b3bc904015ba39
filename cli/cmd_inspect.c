/*
 * cmd_inspect.c — `trellis inspect (DIR | FILE.safetensors) [--json FILE]`.
 *
 * A single safetensors file gets the container checks of FORMAT.md §2.6 and its tensor table.  A directory gets its
 * layout, every quantized tensor (name, shape, bits, bytes, codebook, rotation), the bit-width histogram, the average
 * bits per weight (index bits only: Σ b·O·I / Σ O·I), the expert bit-tuple histogram per layer, the resolved
 * config.json with the origin of every value (ENGINE.md §1), whether the engine can load the model (the first tensor
 * problem, ENGINE.md §2), and every warning.  --strict: exit 1 when there is any warning or model problem.
 */
#include "cli.h"
#include "trellis/alloc.h"
#include "trellis/checkpoint.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/model.h"
#include "trellis/chat.h"
#include "trellis/tokenizer.h"
#include "trellis/safetensors.h"

#include <stdlib.h>
#include <string.h>

static const char *const CMD = "inspect";

static void help(void)
{
    fprintf(cli_out,
            "Usage: trellis inspect (DIR | FILE.safetensors) [--tokenizer] [--strict] [--json FILE|-]\n"
            "  FILE: container checks (FORMAT.md §2.6) and the tensor table.\n"
            "  DIR:  layout, quantized tensors (name, shape, bits, bytes, codebook, rotation), bit-width histogram,\n"
            "        average bits per weight, bit tuples per MoE layer, the resolved config (value and origin of\n"
            "        every field), the engine's model check, warnings.\n"
            "Exit: 0 valid, 1 --strict found warnings, 2 invalid input (one-line error naming file, field and\n"
            "problem), 4 resource error.\n");
}

static json_t *shape_json(unsigned ndim, const uint64_t *shape)
{
    json_t *a = json_array();
    for (unsigned d = 0; a && d < ndim; d++)
        json_array_append_new(a, json_integer((json_int_t)shape[d]));
    return a;
}

static void print_shape(FILE *f, unsigned ndim, const uint64_t *shape)
{
    fputc('[', f);
    for (unsigned d = 0; d < ndim; d++)
        fprintf(f, "%s%llu", d ? "," : "", (unsigned long long)shape[d]);
    fputc(']', f);
}

/* ---- single file ---------------------------------------------------------------------------------------------- */

static int inspect_file(const char *path, const char *json_path)
{
    unsigned long mark = tr_json_mark();
    tr_error err;
    tr_st_file *st = NULL;
    int rc = tr_st_open(path, &st, &err);
    if (rc != TR_OK)
        return cli_fail(CMD, &err);
    json_t *doc = json_object(), *tensors = json_array(), *meta = json_object(), *warn = json_array();
    size_t misaligned = 0;
    for (size_t i = 0; i < tr_st_count(st); i++) {
        const tr_st_tensor *t = tr_st_at(st, i);
        json_t *e = json_object();
        json_object_set_new(e, "name", json_string(t->name));
        json_object_set_new(e, "dtype", json_string(tr_dtype_name(t->dtype)));
        json_object_set_new(e, "shape", shape_json(t->ndim, t->shape));
        json_t *offs = json_array();
        json_array_append_new(offs, json_integer((json_int_t)t->begin));
        json_array_append_new(offs, json_integer((json_int_t)t->end));
        json_object_set_new(e, "data_offsets", offs);
        json_object_set_new(e, "aligned", json_boolean(t->aligned));
        json_array_append_new(tensors, e);
        if (!t->aligned && t->numel) {
            misaligned++;
            char msg[512];
            snprintf(msg, sizeof msg, "%s: %s: tensor \"%s\" data is not aligned to %zu bytes", path,
                     tr_status_name(TR_W_MISALIGNED), t->name, tr_dtype_size(t->dtype));
            json_t *w = json_object();
            json_object_set_new(w, "code", json_string(tr_status_name(TR_W_MISALIGNED)));
            json_object_set_new(w, "message", json_string(msg));
            json_array_append_new(warn, w);
        }
    }
    for (size_t i = 0; i < tr_st_metadata_count(st); i++)
        json_object_set_new(meta, tr_st_metadata_key(st, i), json_string(tr_st_metadata_value(st, i)));
    json_object_set_new(doc, "schema", json_string("trellis.inspect/1"));
    json_object_set_new(doc, "path", json_string(path));
    json_object_set_new(doc, "kind", json_string("file"));
    json_object_set_new(doc, "header_bytes", json_integer((json_int_t)tr_st_header_size(st)));
    json_object_set_new(doc, "data_bytes", json_integer((json_int_t)tr_st_data_size(st)));
    json_object_set_new(doc, "metadata", meta);
    json_object_set_new(doc, "tensors", tensors);
    json_object_set_new(doc, "warnings", warn);

    int out = CLI_OK;
    if (json_path)
        out = cli_write_json(CMD, json_path, doc, mark);
    else {
        fprintf(cli_out, "%s: valid safetensors file, header %llu bytes, data %llu bytes, %zu tensors\n", path,
                (unsigned long long)tr_st_header_size(st), (unsigned long long)tr_st_data_size(st),
                tr_st_count(st));
        for (size_t i = 0; i < tr_st_metadata_count(st); i++)
            fprintf(cli_out, "  __metadata__.%s = \"%s\"\n", tr_st_metadata_key(st, i), tr_st_metadata_value(st, i));
        for (size_t i = 0; i < tr_st_count(st); i++) {
            const tr_st_tensor *t = tr_st_at(st, i);
            fprintf(cli_out, "  %-60s %-8s ", t->name, tr_dtype_name(t->dtype));
            print_shape(cli_out, t->ndim, t->shape);
            fprintf(cli_out, " [%llu, %llu)%s\n", (unsigned long long)t->begin, (unsigned long long)t->end,
                    t->aligned || !t->numel ? "" : " misaligned");
        }
        for (size_t i = 0; i < json_array_size(warn); i++)
            fprintf(cli_out, "warning: %s\n", json_string_value(json_object_get(json_array_get(warn, i), "message")));
    }
    json_decref(doc);
    tr_st_close(st);
    return out;
}

/* ---- directories ------------------------------------------------------------------------------------------------ */

/* "model.layers.L.mlp.experts.E.<proj>_proj.weight" -> L, E and projection 0 gate, 1 up, 2 down; shared experts get
 * E = -1.  Returns 0 when the name is not an expert projection. */
static int expert_slot(const char *name, long *layer, long *expert, int *proj)
{
    long L, E;
    int n = 0;
    char p[16];
    if (sscanf(name, "model.layers.%ld.mlp.experts.%ld.%15[a-z]_proj.weight%n", &L, &E, p, &n) == 3 &&
        name[n] == '\0') {
        *expert = E;
    } else if (sscanf(name, "model.layers.%ld.mlp.shared_experts.%15[a-z]_proj.weight%n", &L, p, &n) == 2 &&
               name[n] == '\0') {
        *expert = -1;
    } else
        return 0;
    *layer = L;
    *proj = !strcmp(p, "gate") ? 0 : !strcmp(p, "up") ? 1 : !strcmp(p, "down") ? 2 : -1;
    return *proj >= 0;
}

typedef struct tuple_count {
    long layer;
    int shared;
    unsigned bits[3];
    unsigned count;
} tuple_count;

/* Per MoE layer: how many experts carry each (gate, up, down) tuple (FORMAT.md §3.4). */
static json_t *tuple_histogram(const tr_ckpt *c, int print)
{
    size_t n = tr_ckpt_qlinear_count(c);
    typedef struct slot { long layer, expert; unsigned bits[3]; } slot;
    slot *slots = tr_calloc(n + 1, sizeof *slots);
    tuple_count *counts = tr_calloc(n + 1, sizeof *counts);
    size_t ns = 0, nc = 0;
    json_t *root = json_object();
    if (!slots || !counts || !root)
        goto done;
    for (size_t i = 0; i < n; i++) {
        const tr_qlinear *q = tr_ckpt_qlinear_at(c, i);
        long L, E;
        int p;
        if (!expert_slot(q->name, &L, &E, &p))
            continue;
        size_t k = 0;
        while (k < ns && !(slots[k].layer == L && slots[k].expert == E))
            k++;
        if (k == ns) {
            slots[ns].layer = L;
            slots[ns].expert = E;
            ns++;
        }
        slots[k].bits[p] = q->w.bits;
    }
    for (size_t k = 0; k < ns; k++) {
        size_t j = 0;
        while (j < nc && !(counts[j].layer == slots[k].layer && counts[j].shared == (slots[k].expert < 0) &&
                           !memcmp(counts[j].bits, slots[k].bits, sizeof counts[j].bits)))
            j++;
        if (j == nc) {
            counts[nc].layer = slots[k].layer;
            counts[nc].shared = slots[k].expert < 0;
            memcpy(counts[nc].bits, slots[k].bits, sizeof counts[nc].bits);
            nc++;
        }
        counts[j].count++;
    }
    long last = -2;
    for (size_t j = 0; j < nc; j++) {
        char layer[32], tuple[32];
        snprintf(layer, sizeof layer, "%ld", counts[j].layer);
        snprintf(tuple, sizeof tuple, "%s%u-%u-%u", counts[j].shared ? "shared:" : "", counts[j].bits[0],
                 counts[j].bits[1], counts[j].bits[2]);
        json_t *l = json_object_get(root, layer);
        if (!l) {
            l = json_object();
            json_object_set_new(root, layer, l);
        }
        json_object_set_new(l, tuple, json_integer(counts[j].count));
        if (print) {
            if (counts[j].layer != last)
                fprintf(cli_out, "%s  layer %ld:", last == -2 ? "bit tuples (gate,up,down) per MoE layer:\n" : "\n",
                        counts[j].layer);
            fprintf(cli_out, " (%u,%u,%u)%s x%u", counts[j].bits[0], counts[j].bits[1], counts[j].bits[2],
                    counts[j].shared ? "[shared]" : "", counts[j].count);
            last = counts[j].layer;
        }
    }
    if (print && last != -2)
        fputc('\n', cli_out);
done:
    tr_dealloc(slots);
    tr_dealloc(counts);
    return root;
}

static int inspect_exl3(const char *dir, const char *json_path)
{
    unsigned long mark = tr_json_mark();
    /* EXL3 loading is a later milestone (FORMAT.md §2.5); list what the container holds. */
    char *p = tr_path_join(dir, "model.safetensors");
    tr_error err;
    tr_st_file *st = NULL;
    int rc = p && tr_path_is_file(p) ? tr_st_open(p, &st, &err)
                                     : tr_fail(&err, TR_E_UNSUPPORTED, dir, "EXL3 checkpoints are not supported yet "
                                               "(only a single model.safetensors can be listed)");
    tr_dealloc(p);
    if (rc != TR_OK)
        return cli_fail(CMD, &err);
    json_t *doc = json_object(), *list = json_array();
    json_object_set_new(doc, "schema", json_string("trellis.inspect/1"));
    json_object_set_new(doc, "path", json_string(dir));
    json_object_set_new(doc, "kind", json_string("directory"));
    json_object_set_new(doc, "layout", json_string("exl3"));
    json_object_set_new(doc, "supported", json_false());
    if (!json_path)
        fprintf(cli_out, "%s: layout exl3 (loading is not supported yet); tensors:\n", dir);
    for (size_t i = 0; i < tr_st_count(st); i++) {
        const tr_st_tensor *t = tr_st_at(st, i);
        json_t *e = json_object();
        json_object_set_new(e, "name", json_string(t->name));
        json_object_set_new(e, "dtype", json_string(tr_dtype_name(t->dtype)));
        json_object_set_new(e, "shape", shape_json(t->ndim, t->shape));
        json_array_append_new(list, e);
        if (!json_path) {
            fprintf(cli_out, "  %-60s %-6s ", t->name, tr_dtype_name(t->dtype));
            print_shape(cli_out, t->ndim, t->shape);
            if (t->ndim == 3 && strlen(t->name) > 8 && !strcmp(t->name + strlen(t->name) - 8, ".trellis"))
                fprintf(cli_out, "  bits %llu, I_p %llu, O_p %llu", (unsigned long long)(t->shape[2] / 16),
                        (unsigned long long)(t->shape[0] * 16), (unsigned long long)(t->shape[1] * 16));
            fputc('\n', cli_out);
        }
    }
    json_object_set_new(doc, "tensors", list);
    int out = json_path ? cli_write_json(CMD, json_path, doc, mark) : CLI_OK;
    json_decref(doc);
    tr_st_close(st);
    return out;
}

/* The model view (ENGINE.md §1–§2): resolved config with origins, and whether the engine loads the weights.  An
 * unsupported model_type or a config problem is reported as a warning: everything format-level is still shown.
 * Returns the number of problems found (warnings of the model view). */
static unsigned model_section(const char *dir, json_t *doc, json_t *warn, int print)
{
    tr_model_config cfg;
    tr_error err;
    unsigned problems = 0;
    json_t *m = json_object();
    if (tr_model_config_load(dir, &cfg, &err) != TR_OK) {
        json_object_set_new(m, "config_error", json_string(err.text));
        json_object_set_new(doc, "model", m);
        json_t *e = json_object();
        json_object_set_new(e, "code", json_string(tr_status_name(err.code)));
        json_object_set_new(e, "message", json_string(err.text));
        json_array_append_new(warn, e);
        if (print)
            fprintf(cli_out, "model: config not usable by the engine: %s\n", err.text);
        return 1;
    }
    json_object_set_new(m, "arch", json_string(tr_arch_name(cfg.arch)));
    json_object_set_new(m, "config", json_incref(cfg.resolved));
    if (print) {
        fprintf(cli_out, "config (%s), value and origin:\n", tr_arch_name(cfg.arch));
        const char *key;
        json_t *v;
        json_object_foreach(cfg.resolved, key, v) {
            char *txt = json_dumps(json_object_get(v, "value"), JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(9));
            fprintf(cli_out, "  %-32s %-24s %s\n", key, txt ? txt : "?",
                    json_string_value(json_object_get(v, "origin")) ? json_string_value(json_object_get(v, "origin"))
                                                                   : "");
            free(txt);
        }
    }
    for (size_t i = 0; i < cfg.warnings.count; i++, problems++) {
        json_t *e = json_object();
        json_object_set_new(e, "code", json_string(tr_status_name(cfg.warnings.items[i].code)));
        json_object_set_new(e, "message", json_string(cfg.warnings.items[i].text));
        json_array_append_new(warn, e);
    }
    tr_model_config_release(&cfg);
    tr_model *model = NULL;
    int rc = tr_model_load(dir, NULL, &model, &err);
    json_object_set_new(m, "loads", json_boolean(rc == TR_OK));
    json_object_set_new(m, "load_error", rc == TR_OK ? json_null() : json_string(err.text));
    if (print)
        fprintf(cli_out, "model: %s%s\n", rc == TR_OK ? "the engine loads every tensor" : "cannot be loaded: ",
                rc == TR_OK ? "" : err.text);
    if (rc == TR_OK) {
        for (size_t i = 0; i < model->warnings.count; i++, problems++) {
            json_t *e = json_object();
            json_object_set_new(e, "code", json_string(tr_status_name(model->warnings.items[i].code)));
            json_object_set_new(e, "message", json_string(model->warnings.items[i].text));
            json_array_append_new(warn, e);
        }
        tr_model_free(model);
    } else
        problems++;
    json_object_set_new(doc, "model", m);
    return problems;
}

/* --tokenizer: the tokenizer summary (sizes, added tokens, normalizer, pattern) and, with a supported config, the
 * chat template and its stop set (ENGINE.md §4, §8).  A tokenizer that does not load is a problem (warning). */
static unsigned tokenizer_section(const char *dir, json_t *doc, json_t *warn, int print)
{
    char *path = tr_path_join(dir, "tokenizer.json");
    tr_tokenizer *tok = NULL;
    tr_error err;
    unsigned problems = 0;
    if (!path || tr_tokenizer_load(path, &tok, &err) != TR_OK) {
        json_t *e = json_object();
        json_object_set_new(e, "code", json_string(path ? tr_status_name(err.code) : "TR_E_NOMEM"));
        json_object_set_new(e, "message", json_string(path ? err.text : "out of memory"));
        json_array_append_new(warn, e);
        if (print)
            fprintf(cli_out, "tokenizer: %s\n", path ? err.text : "out of memory");
        tr_dealloc(path);
        return 1;
    }
    json_t *sum = tr_tokenizer_summary(tok);
    tr_model_config cfg;
    if (sum && tr_model_config_load(dir, &cfg, &err) == TR_OK) {
        int style = tr_chat_style_for(tr_arch_name(cfg.arch));
        int32_t *ids = NULL;
        size_t n = 0;
        if (style >= 0 && tr_chat_stop_ids((tr_chat_style)style, tok, 1, cfg.eos_ids, cfg.n_eos, NULL, 0, &ids, &n,
                                           &err) == TR_OK) {
            json_t *a = json_array();
            for (size_t i = 0; i < n; i++)
                json_array_append_new(a, json_integer(ids[i]));
            json_object_set_new(sum, "chat_template", json_string(style == TR_CHAT_GLM47 ? "glm-4.7" : "chatml"));
            json_object_set_new(sum, "stop_ids", a);
        }
        tr_dealloc(ids);
        tr_model_config_release(&cfg);
    }
    if (print && sum) {
        char *txt = json_dumps(sum, JSON_INDENT(2));
        fprintf(cli_out, "tokenizer %s:\n%s\n", path, txt ? txt : "?");
        free(txt);
    }
    json_object_set_new(doc, "tokenizer", sum ? sum : json_null());
    tr_tokenizer_free(tok);
    tr_dealloc(path);
    return problems;
}

static int inspect_dir(const char *dir, const char *json_path, int strict, int with_tokenizer)
{
    unsigned long mark = tr_json_mark();
    tr_error err;
    tr_layout layout;
    int rc = tr_detect_layout(dir, &layout, &err);
    if (rc != TR_OK)
        return cli_fail(CMD, &err);
    if (layout == TR_LAYOUT_EXL3)
        return inspect_exl3(dir, json_path);
    tr_ckpt *c = NULL;
    tr_ckpt_options opt = {0};
    opt.allow_nonfinite = 0;
    if ((rc = tr_ckpt_open(dir, &opt, &c, &err)) != TR_OK)
        return cli_fail(CMD, &err);

    size_t nq = tr_ckpt_qlinear_count(c);
    unsigned long long hist[9] = {0};
    double wsum = 0, nsum = 0;
    json_t *doc = json_object(), *qs = json_array(), *fl = json_array(), *warn = json_array(), *h = json_object();
    json_object_set_new(doc, "schema", json_string("trellis.inspect/1"));
    json_object_set_new(doc, "path", json_string(dir));
    json_object_set_new(doc, "kind", json_string("directory"));
    json_object_set_new(doc, "layout", json_string(tr_layout_name(layout)));
    if (layout != TR_LAYOUT_HF_FLOAT) {
        json_object_set_new(doc, "group_size", tr_ckpt_group_size(c) ? json_integer(tr_ckpt_group_size(c))
                                                                      : json_null());
        json_object_set_new(doc, "rotation", json_string(tr_rotation_name(tr_ckpt_rotation(c))));
    }
    if (!json_path) {
        fprintf(cli_out, "%s: layout %s, %zu quantized tensors, %zu float tensors\n", dir, tr_layout_name(layout),
                nq, tr_ckpt_tensor_count(c));
        if (nq)
            fprintf(cli_out, "quantized tensors (name, [O,I], bits, bytes, codebook, rotation, group size):\n");
    }
    for (size_t i = 0; i < nq; i++) {
        const tr_qlinear *q = tr_ckpt_qlinear_at(c, i);
        hist[q->w.bits]++;
        double numel = (double)q->w.O * q->w.I;
        wsum += q->w.bits * numel;
        nsum += numel;
        json_t *e = json_object(), *shape = json_array();
        json_array_append_new(shape, json_integer(q->w.O));
        json_array_append_new(shape, json_integer(q->w.I));
        json_object_set_new(e, "name", json_string(q->name));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "bits", json_integer(q->w.bits));
        json_object_set_new(e, "bytes", json_integer((json_int_t)q->bytes));
        json_object_set_new(e, "codebook", json_string("grid"));
        json_object_set_new(e, "rotation", json_string(tr_rotation_name(q->w.rotation)));
        json_object_set_new(e, "group_size", json_integer(q->w.gs));
        json_object_set_new(e, "file", json_string(q->file));
        json_array_append_new(qs, e);
        if (!json_path)
            fprintf(cli_out, "  %-64s [%u,%u] %u %llu grid %s %u\n", q->name, q->w.O, q->w.I, q->w.bits,
                    (unsigned long long)q->bytes, tr_rotation_name(q->w.rotation), q->w.gs);
    }
    for (size_t i = 0; i < tr_ckpt_tensor_count(c); i++) {
        tr_tensor_ref r;
        tr_ckpt_tensor_at(c, i, &r);
        json_t *e = json_object();
        json_object_set_new(e, "name", json_string(r.name));
        json_object_set_new(e, "dtype", json_string(tr_dtype_name(r.t->dtype)));
        json_object_set_new(e, "shape", shape_json(r.t->ndim, r.t->shape));
        json_object_set_new(e, "file", json_string(r.file));
        json_array_append_new(fl, e);
    }
    for (unsigned b = 2; b <= 8; b++)
        if (hist[b]) {
            char k[4];
            snprintf(k, sizeof k, "%u", b);
            json_object_set_new(h, k, json_integer((json_int_t)hist[b]));
        }
    json_object_set_new(doc, "quantized", qs);
    json_object_set_new(doc, "bits_histogram", h);
    json_object_set_new(doc, "average_bpw", nsum > 0 ? json_real(wsum / nsum) : json_null());
    json_object_set_new(doc, "bit_tuples", tuple_histogram(c, !json_path && nq));
    json_object_set_new(doc, "float_tensors", fl);
    const tr_warnings *w = tr_ckpt_warnings(c);
    for (size_t i = 0; i < w->count; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "code", json_string(tr_status_name(w->items[i].code)));
        json_object_set_new(e, "message", json_string(w->items[i].text));
        json_array_append_new(warn, e);
    }
    unsigned model_problems = model_section(dir, doc, warn, !json_path);
    if (with_tokenizer)
        model_problems += tokenizer_section(dir, doc, warn, !json_path);
    json_object_set_new(doc, "warnings", warn);

    int out = CLI_OK;
    if (json_path)
        out = cli_write_json(CMD, json_path, doc, mark);
    else {
        if (nq) {
            fprintf(cli_out, "bit-width histogram:");
            for (unsigned b = 2; b <= 8; b++)
                if (hist[b])
                    fprintf(cli_out, " %u-bit x%llu", b, hist[b]);
            fprintf(cli_out, "\naverage bits per weight (index bits): %.4f\n", wsum / nsum);
        }
        fprintf(cli_out, "warnings: %zu\n", w->count);
        for (size_t i = 0; i < w->count; i++)
            fprintf(cli_out, "warning: %s\n", w->items[i].text);
    }
    json_decref(doc);
    size_t n_warn = w->count;
    tr_ckpt_close(c);
    if (out == CLI_OK && strict && (n_warn || model_problems))
        out = CLI_FAILURES;
    return out;
}

int cmd_inspect(int argc, char **argv)
{
    const char *target = NULL, *json_path = NULL;
    int strict = 0, with_tokenizer = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r;
        if (cli_is_help(argv[i])) {
            help();
            return CLI_OK;
        }
        if ((r = cli_opt_json(argc, argv, &i, &v)) != 0)
            json_path = v;
        else if (!strcmp(argv[i], "--strict"))
            strict = 1;
        else if (!strcmp(argv[i], "--tokenizer"))
            with_tokenizer = 1;
        else if (argv[i][0] == '-' && argv[i][1] != '\0')
            return cli_usage(CMD, "unknown option %s", argv[i]);
        else if (!target)
            target = argv[i];
        else
            return cli_usage(CMD, "more than one path given");
    }
    if (!target)
        return cli_usage(CMD, "missing DIR or FILE.safetensors");
    if (tr_path_is_dir(target))
        return inspect_dir(target, json_path, strict, with_tokenizer);
    if (!tr_path_exists(target)) {
        tr_error err;
        tr_fail(&err, TR_E_IO, target, "not found");
        return cli_fail(CMD, &err);
    }
    return inspect_file(target, json_path);
}
