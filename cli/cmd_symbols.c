/*
 * cmd_symbols.c — `trellis symbols [--metal-dir DIR] [--json FILE]` (MOE.md §5.5): the kernel entry points defined
 * in the .metal sources under DIR checked against the kernel selection policy.
 *
 * Sources: every *.metal file under DIR (default metal/), recursively (symbolic links to directories are not
 * followed), in bytewise path order.  An entry point is the identifier after `kernel void` (not inside a `template`
 * declaration or instantiation, whose name is not a host function) or the string of a `[[host_name("…")]]`
 * attribute; comments, string and character literals and preprocessor lines are skipped.
 *
 * Statuses: present (a policy name defined), missing (a policy name not defined: the generic, GEMV and grouped names
 * and the three dominant tuples), unreferenced (a KERNELS.md §4 symbol the policy never returns), unmapped (every
 * other entry point, KERNELS.md §4.14).  Exit 1 when a generic policy name is missing, 2 when DIR cannot be read.
 */
#include "cli.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/kernel_symbols.h"
#include "trellis/moe.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const CMD = "symbols";

static void help(void)
{
    fprintf(cli_out,
            "Usage: trellis symbols [--metal-dir DIR] [--json FILE|-]\n"
            "  Lists the kernel entry points of the .metal files under DIR (default metal/, recursive) against the\n"
            "  MoE kernel selection policy (MOE.md §5.5): present, missing (gated names marked), unreferenced\n"
            "  (KERNELS.md §4 symbols the policy never returns), unmapped (KERNELS.md §4.14 and unknown names).\n"
            "  --json writes schema trellis.symbols/1 with recommend_kernel and get_kernel_info (MOE.md §5.4).\n"
            "Exit: 0 every generic policy name defined, 1 a generic policy name missing, 2 DIR unreadable or usage,\n"
            "      4 out of memory.\n");
}

/* ---- growable arrays ------------------------------------------------------------------------------------------- */

typedef struct strings {
    char **items;
    size_t count, cap;
} strings;

static int strings_push(strings *s, char *owned)
{
    if (!owned)
        return 0;
    if (s->count == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        char **grown = tr_realloc(s->items, cap * sizeof *grown);
        if (!grown) {
            tr_dealloc(owned);
            return 0;
        }
        s->items = grown;
        s->cap = cap;
    }
    s->items[s->count++] = owned;
    return 1;
}

static void strings_free(strings *s)
{
    for (size_t i = 0; i < s->count; i++)
        tr_dealloc(s->items[i]);
    tr_dealloc(s->items);
    memset(s, 0, sizeof *s);
}

static int compare_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- finding the .metal files ---------------------------------------------------------------------------------- */

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int io_error(tr_error *err, const char *path, const char *what)
{
    return tr_fail(err, TR_E_IO, path, "%s (%s)", what, strerror(errno));
}

static int walk(const char *dir, strings *files, tr_error *err);

/* One directory entry: a directory is walked, a .metal file (or a link to one) collected. */
static int walk_entry(const char *path, const char *name, strings *files, tr_error *err)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return io_error(err, path, "cannot stat");
    if (S_ISDIR(st.st_mode))
        return walk(path, files, err);
    if (!ends_with(name, ".metal"))
        return TR_OK;
    if (S_ISLNK(st.st_mode) && (stat(path, &st) != 0 || !S_ISREG(st.st_mode)))
        return TR_OK;                                   /* dangling link or link to a directory */
    if (!S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode))
        return TR_OK;
    return strings_push(files, tr_strdup(path)) ? TR_OK : tr_fail(err, TR_E_NOMEM, path, "out of memory");
}

static int walk(const char *dir, strings *files, tr_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return io_error(err, dir, "cannot open directory");
    int rc = TR_OK;
    struct dirent *e;
    errno = 0;
    while (rc == TR_OK && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *path = tr_path_join(dir, e->d_name);
        rc = path ? walk_entry(path, e->d_name, files, err) : tr_fail(err, TR_E_NOMEM, dir, "out of memory");
        tr_dealloc(path);
        errno = 0;
    }
    if (rc == TR_OK && errno != 0)
        rc = io_error(err, dir, "cannot read directory");
    closedir(d);
    return rc;
}

/* ---- the entry-point scanner ----------------------------------------------------------------------------------- */

typedef enum tok_kind { TK_IDENT, TK_STRING, TK_PUNCT, TK_OTHER } tok_kind;

typedef struct token {
    tok_kind kind;
    const char *text;        /* identifier, string contents (without quotes) or the punctuation character */
    size_t len;
    unsigned line;
} token;

typedef struct tokens {
    token *items;
    size_t count, cap;
} tokens;

typedef struct lexer {
    const char *p, *end;
    unsigned line;
    int line_start;          /* only whitespace since the last newline (a '#' here starts a directive) */
} lexer;

static int is_ident_start(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; }
static int is_ident_char(char c) { return is_ident_start(c) || (c >= '0' && c <= '9'); }

static void advance(lexer *lx)
{
    if (*lx->p == '\n') {
        lx->line++;
        lx->line_start = 1;
    }
    lx->p++;
}

/* Skip to the end of the line, honouring backslash-newline continuations (// comments, directives). */
static void skip_line(lexer *lx)
{
    while (lx->p < lx->end && *lx->p != '\n') {
        if (*lx->p == '\\' && lx->p + 1 < lx->end && lx->p[1] == '\n')
            advance(lx);
        advance(lx);
    }
}

static void skip_block_comment(lexer *lx)
{
    lx->p += 2;
    while (lx->p < lx->end && !(*lx->p == '*' && lx->p + 1 < lx->end && lx->p[1] == '/'))
        advance(lx);
    lx->p = lx->p < lx->end ? lx->p + 2 : lx->end;
}

/* A quoted literal ("…" or '…') with backslash escapes; it ends at its quote or at a newline. */
static void lex_quoted(lexer *lx, token *t)
{
    char q = *lx->p++;
    t->text = lx->p;
    while (lx->p < lx->end && *lx->p != q && *lx->p != '\n') {
        if (*lx->p == '\\' && lx->p + 1 < lx->end && lx->p[1] != '\n')
            lx->p++;
        lx->p++;
    }
    t->len = (size_t)(lx->p - t->text);
    if (lx->p < lx->end && *lx->p == q)
        lx->p++;
    t->kind = q == '"' ? TK_STRING : TK_OTHER;
}

/* Skip whitespace, comments and directives; 0 at the end of the input. */
static int skip_trivia(lexer *lx)
{
    while (lx->p < lx->end) {
        char c = *lx->p;
        if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v' || c == '\n' || c == '\0')
            advance(lx);
        else if (c == '/' && lx->p + 1 < lx->end && lx->p[1] == '/')
            skip_line(lx);
        else if (c == '/' && lx->p + 1 < lx->end && lx->p[1] == '*')
            skip_block_comment(lx);
        else if (c == '#' && lx->line_start)
            skip_line(lx);
        else
            return 1;
    }
    return 0;
}

static int next_token(lexer *lx, token *t)
{
    if (!skip_trivia(lx))
        return 0;
    lx->line_start = 0;
    t->line = lx->line;
    t->text = lx->p;
    char c = *lx->p;
    if (c == '"' || c == '\'') {
        lex_quoted(lx, t);
        return 1;
    }
    if (is_ident_start(c) || (c >= '0' && c <= '9')) {
        while (lx->p < lx->end && (is_ident_char(*lx->p) || (!is_ident_start(c) && *lx->p == '.')))
            lx->p++;
        t->kind = is_ident_start(c) ? TK_IDENT : TK_OTHER;
    } else {
        lx->p++;
        t->kind = TK_PUNCT;
    }
    t->len = (size_t)(lx->p - t->text);
    return 1;
}

static int tokenize(const char *data, size_t size, tokens *out)
{
    lexer lx = {data, data + size, 1, 1};
    token t;
    while (next_token(&lx, &t)) {
        if (out->count == out->cap) {
            size_t cap = out->cap ? out->cap * 2 : 256;
            token *grown = tr_realloc(out->items, cap * sizeof *grown);
            if (!grown)
                return 0;
            out->items = grown;
            out->cap = cap;
        }
        out->items[out->count++] = t;
    }
    return 1;
}

static int tok_is(const tokens *ts, size_t i, tok_kind kind, const char *text)
{
    if (i >= ts->count || ts->items[i].kind != kind)
        return 0;
    return !text || (ts->items[i].len == strlen(text) && memcmp(ts->items[i].text, text, ts->items[i].len) == 0);
}

/* ---- definitions ----------------------------------------------------------------------------------------------- */

typedef struct definition {
    char *name;
    const char *file;        /* one of the collected file paths */
    unsigned line;
} definition;

typedef struct definitions {
    definition *items;
    size_t count, cap;
} definitions;

static int define(definitions *defs, const token *t, const char *file)
{
    if (defs->count == defs->cap) {
        size_t cap = defs->cap ? defs->cap * 2 : 64;
        definition *grown = tr_realloc(defs->items, cap * sizeof *grown);
        if (!grown)
            return 0;
        defs->items = grown;
        defs->cap = cap;
    }
    char *name = tr_strndup(t->text, t->len);
    if (!name)
        return 0;
    defs->items[defs->count++] = (definition){name, file, t->line};
    return 1;
}

static void definitions_free(definitions *defs)
{
    for (size_t i = 0; i < defs->count; i++)
        tr_dealloc(defs->items[i].name);
    tr_dealloc(defs->items);
}

/* `kernel void NAME` outside template statements, and `[[host_name("NAME")]]`. */
static int collect_definitions(const tokens *ts, const char *file, definitions *defs)
{
    int in_template = 0;
    for (size_t i = 0; i < ts->count; i++) {
        const token *t = &ts->items[i];
        if (t->kind == TK_PUNCT && (*t->text == ';' || *t->text == '{' || *t->text == '}'))
            in_template = 0;
        else if (tok_is(ts, i, TK_IDENT, "template"))
            in_template = 1;
        else if (tok_is(ts, i, TK_IDENT, "kernel") && tok_is(ts, i + 1, TK_IDENT, "void") &&
                 tok_is(ts, i + 2, TK_IDENT, NULL) && !in_template && !tok_is(ts, i + 3, TK_PUNCT, "<")) {
            if (!define(defs, &ts->items[i + 2], file))
                return 0;
        } else if (tok_is(ts, i, TK_PUNCT, "[") && tok_is(ts, i + 1, TK_PUNCT, "[") &&
                   tok_is(ts, i + 2, TK_IDENT, "host_name") && tok_is(ts, i + 3, TK_PUNCT, "(") &&
                   tok_is(ts, i + 4, TK_STRING, NULL) && tok_is(ts, i + 5, TK_PUNCT, ")")) {
            if (!define(defs, &ts->items[i + 4], file))
                return 0;
        }
    }
    return 1;
}

static int scan_file(const char *path, definitions *defs, tr_error *err)
{
    char *data = NULL;
    size_t size = 0;
    int rc = tr_file_read_all(path, &data, &size, err);
    if (rc != TR_OK)
        return rc;
    tokens ts = {0};
    int ok = tokenize(data, size, &ts) && collect_definitions(&ts, path, defs);
    tr_dealloc(ts.items);
    tr_dealloc(data);
    return ok ? TR_OK : tr_fail(err, TR_E_NOMEM, path, "out of memory");
}

/* The first definition of name (files in path order, then line order), or NULL. */
static const definition *first_definition(const definitions *defs, const char *name)
{
    for (size_t i = 0; i < defs->count; i++)
        if (strcmp(defs->items[i].name, name) == 0)
            return &defs->items[i];
    return NULL;
}

/* ---- statuses ---------------------------------------------------------------------------------------------------- */

typedef enum status { ST_PRESENT, ST_MISSING, ST_UNREFERENCED, ST_UNMAPPED } status;
static const char *const status_names[] = {"present", "missing", "unreferenced", "unmapped"};

typedef struct row {
    const char *name;
    status st;
    int gated, generic;
    const definition *def;   /* NULL for missing names */
} row;

typedef struct report {
    row *rows;
    size_t count;
    size_t by_status[4];
    size_t missing_generic;
} report;

static void add_row(report *r, const char *name, status st, int gated, int generic, const definition *def)
{
    r->rows[r->count++] = (row){name, st, gated, generic, def};
    r->by_status[st]++;
    r->missing_generic += st == ST_MISSING && generic;
}

static int compare_rows(const void *a, const void *b)
{
    return strcmp(((const row *)a)->name, ((const row *)b)->name);
}

/* Policy names (present, or missing when listed), then every other defined name (unreferenced or unmapped). */
static int build_report(const definitions *defs, report *r)
{
    r->rows = tr_calloc(tr_moe_policy_name_count() + defs->count + 1, sizeof *r->rows);
    if (!r->rows)
        return 0;
    for (size_t i = 0; i < tr_moe_policy_name_count(); i++) {
        tr_moe_policy_name p = tr_moe_policy_name_at(i);
        const definition *d = first_definition(defs, p.name);
        if (d || p.listed_when_missing)
            add_row(r, p.name, d ? ST_PRESENT : ST_MISSING, p.gated, p.generic, d);
    }
    for (size_t i = 0; i < defs->count; i++) {
        const definition *d = &defs->items[i];
        if (first_definition(defs, d->name) != d || tr_moe_policy_name_index(d->name) >= 0)
            continue;
        add_row(r, d->name, tr_kernel_symbol_find(d->name) ? ST_UNREFERENCED : ST_UNMAPPED, 0, 0, d);
    }
    qsort(r->rows, r->count, sizeof *r->rows, compare_rows);
    return 1;
}

/* ---- output ------------------------------------------------------------------------------------------------------ */

static json_t *row_json(const row *w)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(w->name));
    json_object_set_new(o, "status", json_string(status_names[w->st]));
    json_object_set_new(o, "gated", json_boolean(w->gated));
    json_object_set_new(o, "file", w->def ? json_string(w->def->file) : json_null());
    json_object_set_new(o, "line", w->def ? json_integer(w->def->line) : json_null());
    return o;
}

static json_t *summary_json(const report *r)
{
    json_t *o = json_object();
    for (int s = 0; s < 4; s++)
        json_object_set_new(o, status_names[s], json_integer((json_int_t)r->by_status[s]));
    json_object_set_new(o, "missing_generic", json_integer((json_int_t)r->missing_generic));
    return o;
}

/* The §5.4 objects for the defined kernels: default configuration, recommend_kernel(1, off, (6,2,3)). */
static void add_policy_objects(json_t *doc, const tr_moe_avail *avail)
{
    tr_moe_select_cfg cfg;
    tr_moe_select_cfg_default(&cfg);
    tr_bit_tuple t = {6, 2, 3};
    json_object_set_new(doc, "recommend_kernel", tr_moe_recommend_kernel(&cfg, avail, 1, 0, &t, NULL));
    json_object_set_new(doc, "get_kernel_info", tr_moe_kernel_info(&cfg, avail));
}

static int write_json(const char *json_path, const char *dir, const strings *files, const report *r,
                      const tr_moe_avail *avail)
{
    unsigned long mark = tr_json_mark();
    json_t *doc = json_object(), *fl = json_array(), *syms = json_array();
    json_object_set_new(doc, "schema", json_string("trellis.symbols/1"));
    json_object_set_new(doc, "metal_dir", json_string(dir));
    for (size_t i = 0; i < files->count; i++)
        json_array_append_new(fl, json_string(files->items[i]));
    json_object_set_new(doc, "files", fl);
    for (size_t i = 0; i < r->count; i++)
        json_array_append_new(syms, row_json(&r->rows[i]));
    json_object_set_new(doc, "symbols", syms);
    json_object_set_new(doc, "summary", summary_json(r));
    add_policy_objects(doc, avail);
    int rc = cli_write_json(CMD, json_path, doc, mark);
    json_decref(doc);
    return rc;
}

static void print_human(const char *dir, const strings *files, const definitions *defs, const report *r)
{
    fprintf(cli_out, "%s: %zu .metal file%s, %zu entry point%s\n", dir, files->count, files->count == 1 ? "" : "s",
            defs->count, defs->count == 1 ? "" : "s");
    for (size_t i = 0; i < r->count; i++) {
        const row *w = &r->rows[i];
        fprintf(cli_out, "  %-13s %-45s", status_names[w->st], w->name);
        if (w->def)
            fprintf(cli_out, " %s:%u", w->def->file, w->def->line);
        else
            fprintf(cli_out, " %s", w->gated ? "(gated: the policy falls back)" : "(generic: required)");
        fputc('\n', cli_out);
    }
    fprintf(cli_out, "summary: %zu present, %zu missing (%zu generic), %zu unreferenced, %zu unmapped\n",
            r->by_status[ST_PRESENT], r->by_status[ST_MISSING], r->missing_generic, r->by_status[ST_UNREFERENCED],
            r->by_status[ST_UNMAPPED]);
}

/* One line naming the generic policy names that are missing (stderr). */
static void print_missing_generic(const report *r)
{
    fprintf(cli_err, "trellis %s: %zu generic policy name%s missing:", CMD, r->missing_generic,
            r->missing_generic == 1 ? "" : "s");
    for (size_t i = 0; i < r->count; i++)
        if (r->rows[i].st == ST_MISSING && r->rows[i].generic)
            fprintf(cli_err, " %s", r->rows[i].name);
    fputc('\n', cli_err);
    fflush(cli_err);
}

/* ---- the command ------------------------------------------------------------------------------------------------- */

typedef struct args {
    const char *dir, *json;
} args;

static int parse_args(int argc, char **argv, args *a, int *done)
{
    *done = 0;
    for (int i = 1; i < argc; i++) {
        int m;
        if (cli_is_help(argv[i])) {
            help();
            *done = 1;
            return CLI_OK;
        }
        if ((m = cli_opt(argc, argv, &i, "--metal-dir", &a->dir)) != 0) {
            if (m < 0)
                return cli_usage(CMD, "--metal-dir needs a directory");
        } else if (cli_opt_json(argc, argv, &i, &a->json) == 0)
            return cli_usage(CMD, argv[i][0] == '-' ? "unknown option %s" : "unexpected argument %s", argv[i]);
    }
    return CLI_OK;
}

/* The directory as given, without trailing slashes (but "/" stays). */
static char *clean_dir(const char *dir)
{
    char *d = tr_strdup(dir);
    for (size_t n = d ? strlen(d) : 0; n > 1 && d[n - 1] == '/'; n--)
        d[n - 1] = '\0';
    return d;
}

static int collect(const char *dir, strings *files, definitions *defs, tr_moe_avail *avail, tr_error *err)
{
    int rc = walk(dir, files, err);
    if (rc == TR_OK && files->count > 1)
        qsort(files->items, files->count, sizeof *files->items, compare_str);
    for (size_t i = 0; rc == TR_OK && i < files->count; i++)
        rc = scan_file(files->items[i], defs, err);
    for (size_t i = 0; rc == TR_OK && i < defs->count; i++)
        rc = tr_moe_avail_add(avail, defs->items[i].name, err);
    return rc;
}

static int run(const char *dir, const char *json_path)
{
    strings files = {0};
    definitions defs = {0};
    report r = {0};
    tr_moe_avail *avail = NULL;
    tr_error err;
    int rc = tr_moe_avail_new(&avail, &err);
    if (rc == TR_OK && !tr_path_is_dir(dir))
        rc = tr_fail(&err, TR_E_IO, dir, "%s%s", tr_path_exists(dir) ? "not a directory" : "no such directory",
                     strcmp(dir, "metal") == 0 ? " (give the kernel sources with --metal-dir DIR)" : "");
    if (rc == TR_OK)
        rc = collect(dir, &files, &defs, avail, &err);
    if (rc == TR_OK && !build_report(&defs, &r))
        rc = tr_fail(&err, TR_E_NOMEM, dir, "out of memory");
    int out;
    if (rc != TR_OK)
        out = cli_fail(CMD, &err);
    else {
        out = json_path ? write_json(json_path, dir, &files, &r, avail) : CLI_OK;
        if (!json_path)
            print_human(dir, &files, &defs, &r);
        if (r.missing_generic)
            print_missing_generic(&r);
        if (out == CLI_OK && r.missing_generic)
            out = CLI_FAILURES;
    }
    tr_dealloc(r.rows);
    definitions_free(&defs);
    strings_free(&files);
    tr_moe_avail_free(avail);
    return out;
}

int cmd_symbols(int argc, char **argv)
{
    args a = {"metal", NULL};
    int done, rc = parse_args(argc, argv, &a, &done);
    if (rc != CLI_OK || done)
        return rc;
    char *dir = clean_dir(a.dir);
    if (!dir) {
        fprintf(cli_err, "trellis %s: error: out of memory\n", CMD);
        return CLI_RESOURCE;
    }
    rc = run(dir, a.json);
    tr_dealloc(dir);
    return rc;
}
