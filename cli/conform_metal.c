/*
 * conform_metal.c — `trellis conform --backend metal-emu` (METAL.md §5): `.metal` folders built on the emulator
 * (content-hash cache), their kernels mapped to variant records, and one case executed with the detectors of
 * METAL.md §4.
 *
 * Mapping.  A kernel becomes a variant when its name is the symbol of a Metal variant record of the registry
 * (KERNELS.md §4's tables: adapter, binding family, launch geometry, acc, class, declared domain) or when the folder's
 * registry.json (schema trellis.metal_registry/1, our kernels) registers it: `order: canonical` turns the record into
 * ours — class ORDERED (EXACT ops stay EXACT), judged bitwise — under the variant id the entry names.  An entry for a
 * name outside §4 may bring its own "binding" and "launch" when they are ids this runner knows (docs/schemas.md).
 * Availability: the kernel's parameter list matches the binding family (tr_mtl_check_binding); otherwise every case
 * of the variant is UNSUPPORTED naming the mismatch.  Other kernels are listed as unmapped with the reason.
 *
 * Execution.  The family's adapter (metal_bind.c) makes the variant's buffers from the case's canonical inputs, each
 * in a guarded allocation; every schedule (default SG_GREEDY and RANDOM(case seed)) starts from freshly poisoned
 * outputs and rewritten guards; after each the guards are checked and the outputs compared with the first
 * schedule's.  Status mapping: RESOURCE_ERROR → RESOURCE_ERROR, TIMEOUT (watchdog = --case-timeout per launch) →
 * TIMEOUT, a refused launch → FAIL; changed guard bytes → FAIL (out-of-bounds write); outputs that differ between
 * schedules → FAIL "schedule-dependent output" (except launches that accumulate with atomics in any order, whose
 * difference is recorded); diagnostics are recorded and FAIL under --strict; a failing case whose kernel declares
 * threadgroup arrays is re-run with one array poisoned at a time to name the one read before it was written.
 */
#include "metal_bind.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/kernel_symbols.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

struct cmetal_set {
    tr_mtl_lib *libs[8];
    int owns[8];
    const char *dirs[8];
    int nlibs;
    cmetal_variant *v;
    size_t n, cap;
    json_t *unmapped;          /* [{kernel, file, reason}] */
    json_t *notes;             /* registry.json problems */
    char **strs;
    size_t nstrs;
};

static const char *keep(cmetal_set *s, const char *text)
{
    char **a = tr_realloc(s->strs, (s->nstrs + 1) * sizeof *a);
    if (!a)
        return "";
    s->strs = a;
    a[s->nstrs] = tr_strdup(text ? text : "");
    return a[s->nstrs] ? a[s->nstrs++] : "";
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- mapping -------------------------------------------------------------------------------------------------- */

/* The Metal variant record whose symbol is name (KERNELS.md §4 tables), with its op. */
static const tr_variant *record_of(const char *name, const tr_opdef **op)
{
    for (size_t i = 0; i < tr_registry_count(); i++) {
        const tr_opdef *o = tr_registry_op(i);
        for (int v = 0; v < o->nvariants; v++)
            if (!strcmp(o->variants[v].backend, "metal") && !strcmp(o->variants[v].symbol, name)) {
                *op = o;
                return &o->variants[v];
            }
    }
    return NULL;
}

/* A record of op with this binding family (its declared-domain predicate serves a registered extra kernel). */
static const tr_variant *record_with_binding(const tr_opdef *op, const char *binding)
{
    for (int v = 0; v < op->nvariants; v++)
        if (op->variants[v].binding && !strcmp(op->variants[v].binding, binding))
            return &op->variants[v];
    return NULL;
}

static int add_variant(cmetal_set *s, cmetal_variant *mv)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 32;
        cmetal_variant *v = tr_realloc(s->v, cap * sizeof *v);
        if (!v)
            return TR_E_NOMEM;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = *mv;
    return TR_OK;
}

static void unmapped(cmetal_set *s, const tr_mtl_kernel *k, const char *reason)
{
    json_t *o = json_object();
    json_object_set_new(o, "kernel", json_string(k->qualified));
    json_object_set_new(o, "file", json_string(k->file));
    json_object_set_new(o, "reason", json_string(reason));
    json_array_append_new(s->unmapped, o);
}

static void note(cmetal_set *s, const char *dir, const char *text)
{
    json_t *o = json_object();
    json_object_set_new(o, "folder", json_string(dir));
    json_object_set_new(o, "note", json_string(text));
    json_array_append_new(s->notes, o);
}

/* Availability: the binding family's slots against the kernel's parameter list. */
static void check_available(cmetal_variant *mv)
{
    const mfamily *f = mfamily_find(mv->v.binding);
    mv->available = 0;
    if (!f) {
        snprintf(mv->why, sizeof mv->why, "binding family %s unknown to this runner", mv->v.binding);
        return;
    }
    char why[256];
    if (tr_mtl_check_binding(mv->k, f->slots, f->nslots, why, sizeof why)) {
        snprintf(mv->why, sizeof mv->why, "binding reflection mismatch (family %s): %s", f->id, why);
        return;
    }
    /* MoEParams is 12 u32 (48 bytes) */
    int pi = !strcmp(f->id, "MOE_GROUPED") ? 18 : 17;
    const tr_mtl_param *p = strncmp(f->id, "MOE", 3) ? NULL : tr_mtl_param_at(mv->k, TR_MTL_BUFFER, pi);
    if (p && p->elem_size && p->elem_size != 48) {
        snprintf(mv->why, sizeof mv->why, "binding reflection mismatch (family %s): buffer %d (%s) is %u bytes, "
                 "MoEParams is 48 (12 x u32)", f->id, pi, p->name, p->elem_size);
        return;
    }
    mv->available = 1;
    mv->why[0] = '\0';
}

/* registry.json of a folder (our kernels): {"schema": "trellis.metal_registry/1", "kernels": [...]}. */
static json_t *load_registry(cmetal_set *s, const char *dir)
{
    char *path = tr_path_join(dir, "registry.json");
    struct stat st;
    json_t *doc = NULL;
    if (path && stat(path, &st) == 0) {
        json_error_t jerr;
        doc = json_load_file(path, 0, &jerr);
        if (!doc) {
            char t[400];
            snprintf(t, sizeof t, "registry.json unreadable (%s, line %d): its kernels are judged as foreign",
                     jerr.text, jerr.line);
            note(s, dir, t);
        } else if (json_is_object(doc)) {
            const char *schema = json_string_value(json_object_get(doc, "schema"));
            if (schema && strcmp(schema, "trellis.metal_registry/1"))
                note(s, dir, "registry.json: schema is not trellis.metal_registry/1 (read anyway)");
            json_t *k = json_incref(json_object_get(doc, "kernels"));
            json_decref(doc);
            doc = k;
        }
        if (doc && !json_is_array(doc)) {
            note(s, dir, "registry.json: no \"kernels\" array");
            json_decref(doc);
            doc = NULL;
        }
    }
    tr_dealloc(path);
    return doc;
}

static json_t *entry_for(json_t *reg, const char *name)
{
    for (size_t i = 0; i < json_array_size(reg); i++) {
        const char *sym = json_string_value(json_object_get(json_array_get(reg, i), "symbol"));
        if (sym && !strcmp(sym, name))
            return json_array_get(reg, i);
    }
    return NULL;
}

static const char *jstr(json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v && *v ? v : NULL;
}

static int map_lib(cmetal_set *s, tr_mtl_lib *lib, const char *dir)
{
    json_t *reg = load_registry(s, dir);
    int rc = TR_OK;
    for (size_t ki = 0; rc == TR_OK && ki < tr_mtl_kernel_count(lib); ki++) {
        const tr_mtl_kernel *k = tr_mtl_kernel_at(lib, ki);
        json_t *e = entry_for(reg, k->name);
        const tr_opdef *op = NULL;
        const tr_variant *rec = record_of(k->name, &op);
        cmetal_variant mv;
        memset(&mv, 0, sizeof mv);
        mv.lib = lib;
        mv.k = k;
        mv.dir = keep(s, dir);
        if (!rec && e && jstr(e, "binding") && jstr(e, "op")) {   /* a registered extra kernel */
            op = tr_registry_find(jstr(e, "op"));
            const char *why = !op ? "registry.json names an op the registry does not have"
                              : !mfamily_find(jstr(e, "binding")) ? "registry.json binding is not a binding family id "
                                                                   "this runner knows (docs/schemas.md)"
                              : !mlaunch_known(jstr(e, "launch")) ? "registry.json launch is not a launch id this "
                                                                   "runner knows (docs/schemas.md)"
                                                                 : NULL;
            if (why) {
                unmapped(s, k, why);
                continue;
            }
            const tr_variant *like = record_with_binding(op, jstr(e, "binding"));
            mv.op = op;
            mv.v = (tr_variant){keep(s, k->name), keep(s, k->name), "metal", 0, 0, TR_CLASS_TOLERANT,
                                keep(s, jstr(e, "adapter") ? jstr(e, "adapter") : like ? like->adapter : ""), 0, 3,
                                like ? like->dequant_slack : 0, keep(s, jstr(e, "notes")),
                                keep(s, jstr(e, "binding")), keep(s, jstr(e, "launch")), like ? like->in_domain : NULL,
                                like ? like->order_free : 0};
        } else if (rec && rec->binding) {
            mv.op = op;
            mv.v = *rec;
        } else if (rec) {
            char why[320];
            snprintf(why, sizeof why, "registry variant %s/%s: no binding family this runner binds (its outputs or "
                     "comparison are not adapted yet; not run)", op->name, rec->id);
            unmapped(s, k, why);
            continue;
        } else {
            const tr_kernel_symbol *sym = tr_kernel_symbol_find(k->name);
            const char *fam = tr_kernel_symbol_unmapped_family(k->name);
            char why[320];
            if (sym)
                snprintf(why, sizeof why, "KERNELS.md §%s maps it to %s, but that table gives no binding family and "
                         "launch this runner can bind (not run)", sym->section, sym->op);
            else if (fam)
                snprintf(why, sizeof why, "KERNELS.md §4.14: %s", fam);
            else
                snprintf(why, sizeof why, "not a symbol of KERNELS.md §4%s", e ? " (registry.json gives no usable "
                                                                                   "op/binding/launch)" : "");
            unmapped(s, k, why);
            continue;
        }
        if (e) {   /* ours: the entry's id, accumulation and order */
            const char *order = jstr(e, "order"), *acc = jstr(e, "acc"), *id = jstr(e, "variant");
            if (jstr(e, "op") && strcmp(jstr(e, "op"), op->name)) {
                char t[300];
                snprintf(t, sizeof t, "%s: registry.json says op %s, KERNELS.md §4 says %s (the table wins)",
                         k->name, jstr(e, "op"), op->name);
                note(s, dir, t);
            }
            if (id)
                mv.v.id = keep(s, id);
            if (acc && (!strcmp(acc, "f16") || !strcmp(acc, "f32")))
                mv.v.acc_f16 = !strcmp(acc, "f16");
            if (order && !strcmp(order, "canonical")) {
                mv.v.canonical = 1;
                mv.v.cls = op->cls;
                mv.ours = 1;
            }
        }
        for (size_t j = 0; j < s->n; j++)
            if (s->v[j].op == mv.op && !strcmp(s->v[j].v.id, mv.v.id)) {
                char why[320];
                snprintf(why, sizeof why, "variant %s/%s is already provided by %s (%s)", op->name, mv.v.id,
                         s->v[j].k->qualified, s->v[j].dir);
                unmapped(s, k, why);
                mv.op = NULL;
                break;
            }
        if (!mv.op)
            continue;
        check_available(&mv);
        rc = add_variant(s, &mv);
    }
    for (size_t i = 0; i < json_array_size(reg); i++) {
        const char *sym = jstr(json_array_get(reg, i), "symbol");
        int ambiguous = 0;
        if (sym && !tr_mtl_find(lib, sym, &ambiguous) && !ambiguous) {
            char t[300];
            snprintf(t, sizeof t, "registry.json registers %s, but no kernel of that name was built", sym);
            note(s, dir, t);
        }
    }
    json_decref(reg);
    return rc;
}

static cmetal_set *set_new(void)
{
    cmetal_set *s = tr_calloc(1, sizeof *s);
    if (s) {
        s->unmapped = json_array();
        s->notes = json_array();
    }
    return s;
}

int cmetal_open_lib(tr_mtl_lib *lib, const char *dir, cmetal_set **out, tr_error *err)
{
    cmetal_set *s = set_new();
    if (!s)
        return tr_fail(err, TR_E_NOMEM, "metal-emu", "out of memory");
    s->libs[0] = lib;
    s->dirs[0] = keep(s, dir);
    s->nlibs = 1;
    if (map_lib(s, lib, dir) != TR_OK) {
        cmetal_close(s);
        return tr_fail(err, TR_E_NOMEM, "metal-emu", "out of memory");
    }
    *out = s;
    return TR_OK;
}

static int has_metal_files(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) != 0)
        return 0;
    if (!S_ISDIR(st.st_mode))
        return 1;
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "find '%s' -name '*.metal' -print -quit 2>/dev/null | grep -q .", dir);
    return system(cmd) == 0;
}

int cmetal_open(const cmetal_cfg *cfg, cmetal_set **out, tr_error *err)
{
    cmetal_set *s = set_new();
    if (!s)
        return tr_fail(err, TR_E_NOMEM, "metal-emu", "out of memory");
    for (int d = 0; d < cfg->ndirs; d++) {
        if (!has_metal_files(cfg->dirs[d])) {
            if (cfg->default_dirs)
                continue;   /* our kernels do not exist yet: nothing to run, said by the caller */
            struct stat st;
            int rc = stat(cfg->dirs[d], &st) == 0
                         ? tr_fail(err, TR_E_INPUT, cfg->dirs[d], "no .metal files in this folder")
                         : tr_fail(err, TR_E_IO, cfg->dirs[d], "cannot read the folder");
            cmetal_close(s);
            return rc;
        }
        tr_mtl_build_opts o;
        memset(&o, 0, sizeof o);
        o.cache_dir = cfg->cache;
        tr_mtl_lib *lib = NULL;
        int rc = tr_mtl_build(cfg->dirs[d], &o, &lib, err);
        if (rc != TR_OK) {
            cmetal_close(s);
            return rc;
        }
        s->libs[s->nlibs] = lib;
        s->owns[s->nlibs] = 1;
        s->dirs[s->nlibs++] = keep(s, cfg->dirs[d]);
        if (map_lib(s, lib, cfg->dirs[d]) != TR_OK) {
            cmetal_close(s);
            return tr_fail(err, TR_E_NOMEM, "metal-emu", "out of memory");
        }
    }
    *out = s;
    return TR_OK;
}

void cmetal_close(cmetal_set *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->nlibs; i++)
        if (s->owns[i])
            tr_mtl_close(s->libs[i]);
    for (size_t i = 0; i < s->nstrs; i++)
        tr_dealloc(s->strs[i]);
    tr_dealloc(s->strs);
    tr_dealloc(s->v);
    json_decref(s->unmapped);
    json_decref(s->notes);
    tr_dealloc(s);
}

size_t cmetal_count(const cmetal_set *s) { return s ? s->n : 0; }
const cmetal_variant *cmetal_at(const cmetal_set *s, size_t i) { return s && i < s->n ? &s->v[i] : NULL; }

const cmetal_variant *cmetal_find(const cmetal_set *s, const char *op, const char *id)
{
    for (size_t i = 0; s && i < s->n; i++)
        if (!strcmp(s->v[i].op->name, op) && !strcmp(s->v[i].v.id, id))
            return &s->v[i];
    return NULL;
}

const cmetal_variant *cmetal_of_variant(const cmetal_set *s, const tr_variant *v)
{
    for (size_t i = 0; s && i < s->n; i++)
        if (&s->v[i].v == v)
            return &s->v[i];
    return NULL;
}

size_t cmetal_failed_files(const cmetal_set *s)
{
    size_t n = 0;
    for (int i = 0; s && i < s->nlibs; i++)
        for (size_t j = 0; j < tr_mtl_file_count(s->libs[i]); j++)
            n += !tr_mtl_file_at(s->libs[i], j)->ok;
    return n;
}

size_t cmetal_kernel_total(const cmetal_set *s)
{
    size_t n = 0;
    for (int i = 0; s && i < s->nlibs; i++)
        n += tr_mtl_kernel_count(s->libs[i]);
    return n;
}

const char *cmetal_kernel_mapping(const cmetal_set *s, const tr_mtl_kernel *k, char *buf, size_t cap)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i].k == k) {
            const cmetal_variant *mv = &s->v[i];
            snprintf(buf, cap, "%s/%s (%s%s, acc %s, adapter %s, binding %s, launch %s): %s%s", mv->op->name,
                     mv->v.id, tr_class_name(mv->v.canonical ? mv->op->cls : mv->v.cls),
                     mv->ours ? ", ours: order=canonical" : "", mv->v.acc_f16 ? "f16" : "f32",
                     mv->v.adapter[0] ? mv->v.adapter : "-", mv->v.binding, mv->v.launch,
                     mv->available ? "available" : "UNSUPPORTED — ", mv->available ? "" : mv->why);
            return buf;
        }
    for (size_t i = 0; i < json_array_size(s->unmapped); i++) {
        json_t *u = json_array_get(s->unmapped, i);
        if (!strcmp(json_string_value(json_object_get(u, "kernel")), k->qualified)) {
            snprintf(buf, cap, "unmapped — %s", json_string_value(json_object_get(u, "reason")));
            return buf;
        }
    }
    snprintf(buf, cap, "unmapped");
    return buf;
}

static int gs_metal(int64_t gs) { return gs == 16 || gs == 32 || gs == 64 || gs == 128 || gs == 256; }

int cmetal_unsupported(const cmetal_variant *mv, const tr_case *c, char *why, size_t cap)
{
    char d[256] = "";
    if (!mv->available) {
        snprintf(why, cap, "%s", mv->why);
        return 1;
    }
    const char *gs = tr_params_str(&c->params, "gs");
    if (gs && !gs_metal(tr_params_int(&c->params, "gs", 128))) {
        snprintf(why, cap, "outside the declared domain: gs=%s (Metal variants declare gs in {16, 32, 64, 128, 256})",
                 gs);
        return 1;
    }
    if (mv->v.in_domain && !mv->v.in_domain(c, d, sizeof d)) {
        snprintf(why, cap, "outside the declared domain: %s", d);
        return 1;
    }
    return mfamily_runtime_domain(mv, c, why, cap);
}

/* ---- the set as JSON and as a summary --------------------------------------------------------------------------- */

static json_t *variant_json(const cmetal_variant *mv)
{
    json_t *o = json_object();
    json_object_set_new(o, "op", json_string(mv->op->name));
    json_object_set_new(o, "variant", json_string(mv->v.id));
    json_object_set_new(o, "symbol", json_string(mv->v.symbol));
    json_object_set_new(o, "kernel", json_string(mv->k->qualified));
    json_object_set_new(o, "folder", json_string(mv->dir));
    json_object_set_new(o, "class", json_string(tr_class_name(mv->v.canonical ? mv->op->cls : mv->v.cls)));
    json_object_set_new(o, "order", json_string(mv->v.canonical ? "canonical" : "unspecified"));
    json_object_set_new(o, "acc", json_string(mv->v.acc_f16 ? "f16" : "f32"));
    json_object_set_new(o, "adapter", json_string(mv->v.adapter));
    json_object_set_new(o, "binding", json_string(mv->v.binding));
    json_object_set_new(o, "launch", json_string(mv->v.launch));
    json_object_set_new(o, "domain", json_string(mv->v.domain ? mv->v.domain : ""));
    json_object_set_new(o, "ours", json_boolean(mv->ours));
    json_object_set_new(o, "available", json_boolean(mv->available));
    json_object_set_new(o, "why", mv->available ? json_null() : json_string(mv->why));
    return o;
}

json_t *cmetal_set_json(const cmetal_set *s)
{
    json_t *o = json_object(), *folders = json_array(), *vars = json_array(), *absent = json_array();
    for (int i = 0; i < s->nlibs; i++) {
        json_t *f = json_object(), *files = json_array();
        size_t built = 0, cached = 0, failed = 0;
        double secs = 0, worst = 0;
        for (size_t j = 0; j < tr_mtl_file_count(s->libs[i]); j++) {
            const tr_mtl_file *fl = tr_mtl_file_at(s->libs[i], j);
            json_t *fo = json_object();
            json_object_set_new(fo, "path", json_string(fl->path));
            json_object_set_new(fo, "ok", json_boolean(fl->ok));
            json_object_set_new(fo, "cached", json_boolean(fl->cached));
            json_object_set_new(fo, "seconds", tr_json_real(fl->seconds));
            if (!fl->ok)
                json_object_set_new(fo, "log", json_string(fl->log ? fl->log : ""));
            json_array_append_new(files, fo);
            built += fl->ok && !fl->cached;
            cached += fl->ok && fl->cached;
            failed += !fl->ok;
            secs += fl->seconds;
            worst = fl->seconds > worst ? fl->seconds : worst;
        }
        json_object_set_new(f, "path", json_string(s->dirs[i]));
        json_object_set_new(f, "kernels", json_integer((json_int_t)tr_mtl_kernel_count(s->libs[i])));
        json_object_set_new(f, "built", json_integer((json_int_t)built));
        json_object_set_new(f, "cached", json_integer((json_int_t)cached));
        json_object_set_new(f, "failed", json_integer((json_int_t)failed));
        json_object_set_new(f, "compile_seconds", tr_json_real(secs));
        json_object_set_new(f, "slowest_file_seconds", tr_json_real(worst));
        json_object_set_new(f, "files", files);
        json_array_append_new(folders, f);
    }
    for (size_t i = 0; i < s->n; i++)
        json_array_append_new(vars, variant_json(&s->v[i]));
    for (size_t i = 0; i < tr_registry_count(); i++) {   /* KERNELS.md §4 symbols no folder defines */
        const tr_opdef *op = tr_registry_op(i);
        for (int v = 0; v < op->nvariants; v++) {
            const tr_variant *r = &op->variants[v];
            int found = strcmp(r->backend, "metal") != 0;
            for (size_t j = 0; !found && j < s->n; j++)
                found = !strcmp(s->v[j].v.symbol, r->symbol);
            if (found)
                continue;
            json_t *a = json_object();
            json_object_set_new(a, "op", json_string(op->name));
            json_object_set_new(a, "variant", json_string(r->id));
            json_object_set_new(a, "symbol", json_string(r->symbol));
            json_array_append_new(absent, a);
        }
    }
    json_t *sem = json_object();
    json_object_set_new(sem, "half", json_string("_Float16, every operation rounded once to binary16 (RNE)"));
    json_object_set_new(sem, "simdgroup_width", json_integer(32));
    json_object_set_new(sem, "simd_reductions", json_string("xor butterfly, offsets 16, 8, 4, 2, 1"));
    json_object_set_new(sem, "transcendentals", json_string("host libm (fast:: and precise:: alike)"));
    json_object_set_new(sem, "threadgroup_memory_fill", json_string("0xFF"));
    json_object_set_new(sem, "threadgroup_memory_limit", json_integer(TR_MTL_TG_MEMORY_LIMIT));
    json_object_set_new(sem, "texture_linear_filtering", json_string("fp32"));
    json_object_set(o, "semantics", sem);
    json_decref(sem);
    json_object_set_new(o, "folders", folders);
    json_object_set_new(o, "variants", vars);
    json_object_set_new(o, "absent", absent);
    json_object_set(o, "unmapped", s->unmapped);
    json_object_set(o, "notes", s->notes);
    return o;
}

void cmetal_print_summary(const cmetal_set *s, FILE *f)
{
    for (int i = 0; i < s->nlibs; i++) {
        size_t nf = tr_mtl_file_count(s->libs[i]), failed = 0, cached = 0;
        double secs = 0;
        for (size_t j = 0; j < nf; j++) {
            const tr_mtl_file *fl = tr_mtl_file_at(s->libs[i], j);
            failed += !fl->ok;
            cached += fl->cached;
            secs += fl->seconds;
            if (!fl->ok) {
                fprintf(f, "metal-emu: %s failed to build:\n", fl->path);
                const char *p = fl->log ? fl->log : "";
                for (int lines = 0; *p && lines < 20; lines++) {
                    size_t len = strcspn(p, "\n");
                    fprintf(f, "    %.*s\n", (int)len, p);
                    p += len + (p[len] == '\n');
                }
            }
        }
        fprintf(f, "metal-emu: %s: %zu .metal files (%zu cached, %zu failed, %.2f s compiling), %zu kernels\n",
                s->dirs[i], nf, cached, failed, secs, tr_mtl_kernel_count(s->libs[i]));
    }
    size_t avail = 0;
    for (size_t i = 0; i < s->n; i++)
        avail += s->v[i].available;
    fprintf(f, "metal-emu: %zu kernels mapped to variants (%zu available, %zu UNSUPPORTED by binding), %zu unmapped\n",
            s->n, avail, s->n - avail, json_array_size(s->unmapped));
    for (size_t i = 0; i < s->n; i++)
        if (!s->v[i].available)
            fprintf(f, "  UNSUPPORTED %s/%s (%s): %s\n", s->v[i].op->name, s->v[i].v.id, s->v[i].k->qualified,
                    s->v[i].why);
    for (size_t i = 0; i < json_array_size(s->unmapped); i++) {
        json_t *u = json_array_get(s->unmapped, i);
        fprintf(f, "  unmapped %s: %s\n", json_string_value(json_object_get(u, "kernel")),
                json_string_value(json_object_get(u, "reason")));
    }
    for (size_t i = 0; i < json_array_size(s->notes); i++)
        fprintf(f, "  note: %s: %s\n", json_string_value(json_object_get(json_array_get(s->notes, i), "folder")),
                json_string_value(json_object_get(json_array_get(s->notes, i), "note")));
}

/* ---- one case ---------------------------------------------------------------------------------------------------- */

struct cmetal_run {
    mctx m;
    tr_error err;
    const cmetal_cfg *cfg;
    tr_mtl_schedule sched[8];
    int nsched, nruns;
    tr_mtl_stats stats[8];     /* per schedule, summed over the launches */
    tr_mtl_status status;
    char detail[512], status_sched[48];
    tr_mtl_diag *diags;
    size_t ndiags;
    int guard_bad;
    char guard_buf[40], guard_sched[48];
    int guard_index;
    long guard_off;
    uint64_t sched_diff;
    char diff_buf[40], diff_sched[48];
    long long diff_first;
    char bisect[400];
};

static void fill_guards(uint8_t *block, size_t n)
{
    for (size_t i = 0; i < CONFORM_GUARD_BYTES; i++) {
        uint8_t p = (uint8_t)(CONFORM_GUARD_PATTERN >> (8 * (i % 4)));
        block[i] = p;
        block[CONFORM_GUARD_BYTES + n + i] = p;
    }
}

static void reset_buffers(mctx *m)
{
    for (int i = 0; i < m->nb; i++) {
        mbuf *b = &m->b[i];
        fill_guards(b->block, b->bytes);
        if (b->role == MB_IN || b->role == MB_INOUT) {
            if (b->bytes)
                memcpy(mb_data(b), b->init, b->bytes);
        } else if (b->role == MB_ACC)
            memset(mb_data(b), 0, b->bytes);
        else {
            size_t es = tr_dtype_size(b->dt);
            tr_buf v;
            memset(&v, 0, sizeof v);
            v.dtype = b->dt;
            v.ndim = 1;
            v.shape[0] = es ? b->bytes / es : 0;
            v.data = mb_data(b);
            v.bytes = b->bytes;
            tr_poison_fill(&v);
        }
    }
}

static void add_stats(tr_mtl_stats *a, const tr_mtl_stats *b)
{
    a->threadgroups += b->threadgroups;
    a->lanes += b->lanes;
    a->context_switches += b->context_switches;
    a->barriers += b->barriers;
    a->rendezvous += b->rendezvous;
    a->partial_collectives += b->partial_collectives;
    a->mma_computed += b->mma_computed;
    a->mma_reused += b->mma_reused;
    a->peak_tg_bytes = b->peak_tg_bytes > a->peak_tg_bytes ? b->peak_tg_bytes : a->peak_tg_bytes;
    a->seconds += b->seconds;
}

static void merge_diags(cmetal_run *r, const tr_mtl_result *res)
{
    for (size_t d = 0; d < res->ndiags; d++) {
        size_t j = 0;
        while (j < r->ndiags && !(r->diags[j].code == res->diags[d].code && !strcmp(r->diags[j].site,
                                                                                     res->diags[d].site)))
            j++;
        if (j < r->ndiags) {
            r->diags[j].count += res->diags[d].count;
            continue;
        }
        tr_mtl_diag *n = tr_realloc(r->diags, (r->ndiags + 1) * sizeof *n);
        if (!n)
            return;
        r->diags = n;
        r->diags[r->ndiags++] = res->diags[d];
    }
}

/* Every launch once under sch (poison_site as tr_mtl_launch).  Returns the first non-OK status. */
static tr_mtl_status run_once(cmetal_run *r, const tr_mtl_schedule *sch, int poison_site, tr_mtl_stats *st,
                              int record)
{
    mctx *m = &r->m;
    reset_buffers(m);
    for (int i = 0; i < m->nl; i++) {
        tr_mtl_launch l;
        tr_mtl_launch_init(&l);
        memcpy(l.grid, m->L[i].grid, sizeof l.grid);
        memcpy(l.tg, m->L[i].tg, sizeof l.tg);
        l.dispatch_threads = m->L[i].dispatch_threads;
        l.schedule = *sch;
        l.n_workers = r->cfg->workers;
        l.timeout_s = r->cfg->timeout > 0 ? r->cfg->timeout : 10.0;
        l.mma_model = r->cfg->mma_model;
        l.poison_site = poison_site;
        tr_mtl_result res;
        memset(&res, 0, sizeof res);
        tr_error err;
        tr_error_clear(&err);
        if (tr_mtl_dispatch(m->mv->lib, m->mv->k, m->L[i].args, &l, &res, &err) != TR_OK &&
            res.status == TR_MTL_OK) {
            res.status = TR_MTL_INVALID;
            snprintf(res.detail, sizeof res.detail, "%.500s", err.text);
        }
        if (st)
            add_stats(st, &res.stats);
        if (record)
            merge_diags(r, &res);
        tr_mtl_status s = res.status;
        if (s != TR_MTL_OK && record) {
            r->status = s;
            snprintf(r->detail, sizeof r->detail, "%s", res.detail);
            tr_mtl_schedule_name(sch, r->status_sched, sizeof r->status_sched);
        }
        tr_mtl_result_free(&res);
        if (s != TR_MTL_OK)
            return s;
    }
    return TR_MTL_OK;
}

static uint64_t diff_elems(const mbuf *b, const uint8_t *a, const uint8_t *c, long long *first)
{
    size_t es = b->texture ? 4 : tr_dtype_size(b->dt);
    uint64_t n = 0;
    *first = -1;
    for (size_t i = 0; es && i < b->bytes / es; i++)
        if (memcmp(a + i * es, c + i * es, es)) {
            if (*first < 0)
                *first = (long long)i;
            n++;
        }
    return n;
}

static int is_output(const mbuf *b) { return b->role != MB_IN; }

int cmetal_run_case(const cmetal_variant *mv, const cmetal_cfg *cfg, const tr_case *c, const tr_bufs *in,
                    tr_bufs *got, cmetal_run **out, tr_error *err)
{
    cmetal_run *r = tr_calloc(1, sizeof *r);
    if (!r)
        return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
    *out = r;
    r->cfg = cfg;
    r->m.mv = mv;
    r->m.c = c;
    r->m.in = in;
    r->m.got = got;
    r->m.err = &r->err;
    tr_error_clear(&r->err);
    r->diff_first = -1;
    if (cfg->nsched > 0) {
        r->nsched = cfg->nsched;
        memcpy(r->sched, cfg->sched, (size_t)cfg->nsched * sizeof *r->sched);
        for (int i = 0; i < r->nsched; i++)
            if (cfg->sched_case_seed[i])
                r->sched[i].seed = c->seed;
    } else {
        r->nsched = 2;
        r->sched[0] = (tr_mtl_schedule){TR_MTL_SG_GREEDY, 0};
        r->sched[1] = (tr_mtl_schedule){TR_MTL_RANDOM, c->seed};
    }
    const mfamily *f = mfamily_find(mv->v.binding);
    int rc = f ? f->prepare(&r->m) : tr_fail(&r->err, TR_E_UNSUPPORTED, c->id, "binding family %s", mv->v.binding);
    if (rc != TR_OK) {
        *err = r->err;
        return rc;
    }
    for (int s = 0; s < r->nsched; s++) {
        tr_mtl_status st = run_once(r, &r->sched[s], -1, &r->stats[s], 1);
        r->nruns = s + 1;
        char sname[48];
        tr_mtl_schedule_name(&r->sched[s], sname, sizeof sname);
        for (int i = 0; i < r->m.nb && !r->guard_bad; i++) {
            long where;
            if (!conform_guards_intact(r->m.b[i].block, r->m.b[i].bytes, &where)) {
                r->guard_bad = 1;
                snprintf(r->guard_buf, sizeof r->guard_buf, "%s", r->m.b[i].name);
                r->guard_index = r->m.b[i].index;
                r->guard_off = where;
                snprintf(r->guard_sched, sizeof r->guard_sched, "%s", sname);
            }
        }
        if (st != TR_MTL_OK)
            break;
        for (int i = 0; i < r->m.nb; i++) {
            mbuf *b = &r->m.b[i];
            if (!is_output(b))
                continue;
            if (s == 0) {
                b->snap = tr_malloc(b->bytes ? b->bytes : 1);
                if (!b->snap)
                    return tr_fail(err, TR_E_NOMEM, c->id, "out of memory");
                memcpy(b->snap, mb_data(b), b->bytes);
                continue;
            }
            long long first;
            uint64_t d = diff_elems(b, b->snap, mb_data(b), &first);
            if (d && !r->sched_diff) {
                r->sched_diff = d;
                r->diff_first = first;
                snprintf(r->diff_buf, sizeof r->diff_buf, "%s", b->name);
                snprintf(r->diff_sched, sizeof r->diff_sched, "%s", sname);
            }
        }
    }
    for (int i = 0; i < r->m.nb; i++)   /* the outputs judged are the first schedule's */
        if (r->m.b[i].snap)
            memcpy(mb_data(&r->m.b[i]), r->m.b[i].snap, r->m.b[i].bytes);
    if (r->status == TR_MTL_OK && r->m.finish)
        r->m.finish(&r->m);
    return TR_OK;
}

/* Uninitialised threadgroup reads (METAL.md §4): run once with every threadgroup array zero-filled, then with one
 * array at a time filled with 0xFF; an array whose poison changes the outputs was read before it was written. */
static void bisect(cmetal_run *r)
{
    const tr_mtl_kernel *k = r->m.mv->k;
    if (k->n_tg_decls <= 0 || k->n_tg_decls > 16)
        return;
    size_t total = 0;
    for (int i = 0; i < r->m.nb; i++)
        total += is_output(&r->m.b[i]) ? r->m.b[i].bytes : 0;
    uint8_t *zero = tr_malloc(total + 1);
    if (!zero)
        return;
    if (run_once(r, &r->sched[0], 1 << 30, NULL, 0) != TR_MTL_OK) {
        tr_dealloc(zero);
        return;
    }
    size_t at = 0;
    for (int i = 0; i < r->m.nb; i++)
        if (is_output(&r->m.b[i])) {
            memcpy(zero + at, mb_data(&r->m.b[i]), r->m.b[i].bytes);
            at += r->m.b[i].bytes;
        }
    int used = 0;
    for (int t = 0; t < k->n_tg_decls; t++) {
        if (run_once(r, &r->sched[0], k->tg_decls[t].site, NULL, 0) != TR_MTL_OK)
            break;
        int differs = 0;
        at = 0;
        for (int i = 0; i < r->m.nb && !differs; i++)
            if (is_output(&r->m.b[i])) {
                differs = memcmp(zero + at, mb_data(&r->m.b[i]), r->m.b[i].bytes) != 0;
                at += r->m.b[i].bytes;
            }
        if (differs)
            used += snprintf(r->bisect + used, sizeof r->bisect - (size_t)used, "%s%s (%s, %s:%d)",
                             used ? "; " : "", k->tg_decls[t].name, k->tg_decls[t].type, k->file,
                             k->tg_decls[t].line);
        if ((size_t)used >= sizeof r->bisect - 1)
            break;
    }
    tr_dealloc(zero);
}

static void set_detail(tr_result *res, const char *text)
{
    snprintf(res->detail, sizeof res->detail, "%s", text);
}

void cmetal_verdict(cmetal_run *r, tr_result *res)
{
    char t[900];
    if (r->status == TR_MTL_TIMEOUT || r->status == TR_MTL_RESOURCE_ERROR || r->status == TR_MTL_INVALID) {
        tr_class cls = res->cls;
        memset(res, 0, sizeof *res);
        res->tie_flips = -1;
        res->cls = cls;
        res->status = r->status == TR_MTL_TIMEOUT ? TR_TIMEOUT : r->status == TR_MTL_RESOURCE_ERROR
                                                                     ? TR_RESOURCE_ERROR
                                                                     : TR_FAIL;
        snprintf(t, sizeof t, "%s under %s: %s", r->status == TR_MTL_INVALID ? "the emulator refused the launch"
                                               : r->status == TR_MTL_TIMEOUT ? "watchdog (--case-timeout)"
                                                                             : "resource limit",
                 r->status_sched, r->detail);
        set_detail(res, t);
        return;
    }
    if (r->guard_bad) {
        res->status = TR_FAIL;
        snprintf(t, sizeof t, "out-of-bounds write: guard byte of buffer %d (%s) at data offset %ld changed under %s",
                 r->guard_index, r->guard_buf, r->guard_off, r->guard_sched);
        set_detail(res, t);
    } else if (r->sched_diff && !r->m.order_free) {
        char s0[48];
        tr_mtl_schedule_name(&r->sched[0], s0, sizeof s0);
        res->status = TR_FAIL;
        snprintf(t, sizeof t, "schedule-dependent output: %llu elements of %s differ between %s and %s (first at "
                 "element %lld)", (unsigned long long)r->sched_diff, r->diff_buf, s0, r->diff_sched, r->diff_first);
        set_detail(res, t);
    } else if (res->status == TR_FAIL) {
        bisect(r);
        if (r->bisect[0]) {
            snprintf(t, sizeof t, "%.400s; uninitialised threadgroup read: %s", res->detail, r->bisect);
            set_detail(res, t);
        }
    }
    if (r->ndiags && (res->status == TR_PASS || res->status == TR_PRECISION_WARNING)) {
        snprintf(t, sizeof t, "diagnostic %s at %s: %s%s", tr_mtl_diag_name(r->diags[0].code), r->diags[0].site,
                 r->diags[0].text, r->cfg->strict ? " (FAIL under --strict)" : "");
        if (r->cfg->strict)
            res->status = TR_FAIL;
        if (r->cfg->strict || !res->detail[0])
            set_detail(res, t);
    }
}

static json_t *u64(uint64_t v) { return json_integer((json_int_t)v); }

json_t *cmetal_run_json(const cmetal_run *r)
{
    const cmetal_variant *mv = r->m.mv;
    json_t *o = json_object(), *geo = json_array(), *sch = json_array(), *runs = json_array(), *dg = json_array();
    json_object_set_new(o, "kernel", json_string(mv->k->qualified));
    json_object_set_new(o, "file", json_string(mv->k->file));
    json_object_set_new(o, "binding", json_string(mv->v.binding));
    json_object_set_new(o, "launch", json_string(mv->v.launch));
    for (int i = 0; i < r->m.nl; i++) {
        json_t *g = json_object(), *gr = json_array(), *tg = json_array();
        for (int d = 0; d < 3; d++) {
            json_array_append_new(gr, json_integer(r->m.L[i].grid[d]));
            json_array_append_new(tg, json_integer(r->m.L[i].tg[d]));
        }
        json_object_set_new(g, "grid", gr);
        json_object_set_new(g, "threadgroup", tg);
        json_object_set_new(g, "dispatch_threads", json_boolean(r->m.L[i].dispatch_threads));
        json_array_append_new(geo, g);
    }
    json_object_set_new(o, "launches", geo);
    for (int s = 0; s < r->nsched; s++) {
        char n[48];
        json_array_append_new(sch, json_string(tr_mtl_schedule_name(&r->sched[s], n, sizeof n)));
    }
    json_object_set_new(o, "schedules", sch);
    json_object_set_new(o, "mma_model", json_integer(r->cfg->mma_model));
    for (int s = 0; s < r->nruns; s++) {
        char n[48];
        const tr_mtl_stats *st = &r->stats[s];
        json_t *x = json_object();
        json_object_set_new(x, "schedule", json_string(tr_mtl_schedule_name(&r->sched[s], n, sizeof n)));
        json_object_set_new(x, "threadgroups", u64(st->threadgroups));
        json_object_set_new(x, "lanes", u64(st->lanes));
        json_object_set_new(x, "context_switches", u64(st->context_switches));
        json_object_set_new(x, "barriers", u64(st->barriers));
        json_object_set_new(x, "rendezvous", u64(st->rendezvous));
        json_object_set_new(x, "partial_collectives", u64(st->partial_collectives));
        json_object_set_new(x, "mma_computed", u64(st->mma_computed));
        json_object_set_new(x, "mma_reused", u64(st->mma_reused));
        json_object_set_new(x, "peak_tg_bytes", u64(st->peak_tg_bytes));
        json_object_set_new(x, "seconds", tr_json_real(st->seconds));
        json_array_append_new(runs, x);
    }
    json_object_set_new(o, "runs", runs);
    json_object_set_new(o, "status", json_string(tr_mtl_status_name(r->status)));
    for (size_t d = 0; d < r->ndiags; d++) {
        json_t *x = json_object();
        json_object_set_new(x, "code", json_string(tr_mtl_diag_name(r->diags[d].code)));
        json_object_set_new(x, "site", json_string(r->diags[d].site));
        json_object_set_new(x, "text", json_string(r->diags[d].text));
        json_object_set_new(x, "count", u64(r->diags[d].count));
        json_array_append_new(dg, x);
    }
    json_object_set_new(o, "diagnostics", dg);
    json_object_set_new(o, "order_free", json_boolean(r->m.order_free));
    if (r->sched_diff) {
        json_t *x = json_object();
        json_object_set_new(x, "buffer", json_string(r->diff_buf));
        json_object_set_new(x, "elements", u64(r->sched_diff));
        json_object_set_new(x, "first_element", json_integer(r->diff_first));
        json_object_set_new(x, "schedule", json_string(r->diff_sched));
        json_object_set_new(o, "schedule_dependent", x);
    } else
        json_object_set_new(o, "schedule_dependent", json_null());
    if (r->guard_bad) {
        json_t *x = json_object();
        json_object_set_new(x, "buffer", json_string(r->guard_buf));
        json_object_set_new(x, "index", json_integer(r->guard_index));
        json_object_set_new(x, "offset", json_integer(r->guard_off));
        json_object_set_new(x, "schedule", json_string(r->guard_sched));
        json_object_set_new(o, "out_of_bounds", x);
    } else
        json_object_set_new(o, "out_of_bounds", json_null());
    json_object_set_new(o, "uninitialised_threadgroup", r->bisect[0] ? json_string(r->bisect) : json_null());
    return o;
}

double cmetal_seconds(const cmetal_run *r) { return r->nruns ? r->stats[0].seconds : -1; }

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double cmetal_time(cmetal_run *r, int reps)
{
    double t[64];
    if (reps > 64)
        reps = 64;
    int n = 0;
    for (int i = 0; i < reps; i++) {
        double t0 = now_s();
        if (run_once(r, &r->sched[0], -1, NULL, 0) != TR_MTL_OK)
            break;
        t[n++] = now_s() - t0;
    }
    if (!n)
        return -1;
    qsort(t, (size_t)n, sizeof *t, cmp_d);
    return n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
}

void cmetal_run_free(cmetal_run *r)
{
    if (!r)
        return;
    mctx_release(&r->m);
    tr_dealloc(r->diags);
    tr_dealloc(r);
}
