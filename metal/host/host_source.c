/*
 * host_source.c — quoted-include expansion and builtin-type lookup for the macOS Metal runner (see host_source.h).
 * Portable C11 with no project dependencies, so the same file is built into the Darwin runner and into the Linux
 * unit tests.
 */
#include "host_source.h"

#include <ctype.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[PATH_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    sbuf b = {0};
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        sb_put(&b, chunk, n);
    int bad = ferror(f) || b.oom;
    fclose(f);
    if (bad) {
        free(b.p);
        return NULL;
    }
    if (!b.p) {
        b.p = malloc(1);
        if (b.p)
            b.p[0] = '\0';
    }
    return b.p;
}

typedef struct seen {
    char paths[64][PATH_MAX];
    int n;
} seen;

/* "dir/of/file" + "name" → joined path (name absolute: itself).  0, or -1 when it does not fit. */
static int join_rel(const char *file, const char *name, char *out, size_t cap)
{
    const char *slash = name[0] == '/' ? NULL : strrchr(file, '/');
    size_t dir = slash ? (size_t)(slash - file) + 1 : 0, n = strlen(name);
    if (dir + n + 1 > cap)
        return -1;
    memcpy(out, file, dir);
    memcpy(out + dir, name, n + 1);
    return 0;
}

/* A line `#include "name"` (spaces allowed around '#' and 'include'): the name into out, 1; else 0. */
static int quoted_include(const char *line, size_t len, char *out, size_t cap)
{
    size_t i = 0;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (i >= len || line[i] != '#')
        return 0;
    i++;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (len - i < 7 || strncmp(line + i, "include", 7) != 0)
        return 0;
    i += 7;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (i >= len || line[i] != '"')
        return 0;
    size_t s = ++i;
    while (i < len && line[i] != '"')
        i++;
    if (i >= len || i - s + 1 > cap || i == s)
        return 0;
    memcpy(out, line + s, i - s);
    out[i - s] = '\0';
    return 1;
}

static int pragma_once(const char *line, size_t len)
{
    char t[64];
    size_t k = 0;
    for (size_t i = 0; i < len && k < sizeof t - 1; i++)
        if (!isspace((unsigned char)line[i]))
            t[k++] = line[i];
    t[k] = '\0';
    return strcmp(t, "#pragmaonce") == 0;
}

static int expand(const char *path, int depth, seen *sn, sbuf *b, char *why, size_t cap)
{
    if (depth > 32) {
        snprintf(why, cap, "%s: includes nested deeper than 32", path);
        return -1;
    }
    char real[PATH_MAX];
    if (!realpath(path, real))
        snprintf(real, sizeof real, "%s", path);
    for (int i = 0; i < sn->n; i++)
        if (strcmp(sn->paths[i], real) == 0)
            return 0;                  /* each file once per translation unit */
    if (sn->n == 64) {
        snprintf(why, cap, "%s: more than 64 included files", path);
        return -1;
    }
    snprintf(sn->paths[sn->n++], PATH_MAX, "%s", real);
    char *text = read_text(path);
    if (!text) {
        snprintf(why, cap, "%s: cannot be read", path);
        return -1;
    }
    sb_printf(b, "#line 1 \"%s\"\n", path);
    int lineno = 1, rc = 0;
    for (const char *p = text; *p && rc == 0; lineno++) {
        size_t len = strcspn(p, "\n");
        char name[PATH_MAX];
        if (quoted_include(p, len, name, sizeof name)) {
            char inc[PATH_MAX];
            if (join_rel(path, name, inc, sizeof inc) != 0) {
                snprintf(why, cap, "%s:%d: include path too long", path, lineno);
                rc = -1;
                break;
            }
            rc = expand(inc, depth + 1, sn, b, why, cap);
            sb_printf(b, "#line %d \"%s\"\n", lineno + 1, path);
        } else if (pragma_once(p, len))
            sb_put(b, "\n", 1);
        else {
            sb_put(b, p, len);
            sb_put(b, "\n", 1);
        }
        p += len;
        if (*p == '\n')
            p++;
    }
    free(text);
    if (rc == 0 && b->oom) {
        snprintf(why, cap, "out of memory");
        rc = -1;
    }
    return rc;
}

int trmh_expand_includes(const char *path, char **out, char *why, size_t cap)
{
    seen *sn = calloc(1, sizeof *sn);
    sbuf b = {0};
    *out = NULL;
    if (!sn) {
        snprintf(why, cap, "out of memory");
        return -1;
    }
    int rc = expand(path, 0, sn, &b, why, cap);
    free(sn);
    if (rc != 0) {
        free(b.p);
        return -1;
    }
    *out = b.p;
    return 0;
}

/* ---- builtin types ------------------------------------------------------------------------------------------ */

static int ident_char(char c) { return isalnum((unsigned char)c) || c == '_'; }

/* The identifier `word` occurs in [a, e) as a whole word. */
static int has_word(const char *a, const char *e, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = a; p + n <= e; p++)
        if (!strncmp(p, word, n) && (p == a || !ident_char(p[-1])) && (p + n == e || !ident_char(p[n])))
            return 1;
    return 0;
}

/* Width of a type spelled in [a, e): the last identifier ("uint2" → 2, "ushort" → 1, "vec<uint, 3>" → 3). */
static int type_width(const char *a, const char *e)
{
    const char *v = NULL;
    for (const char *p = a; p + 4 <= e; p++)
        if (!strncmp(p, "vec<", 4) && (p == a || !ident_char(p[-1])))
            v = p;
    if (v) {
        const char *c = memchr(v, ',', (size_t)(e - v));
        return c ? atoi(c + 1) : 1;
    }
    const char *te = e;
    while (te > a && !ident_char(te[-1]))
        te--;
    const char *ts = te;
    while (ts > a && ident_char(ts[-1]))
        ts--;
    if (te > ts && te[-1] >= '2' && te[-1] <= '4' && te - ts >= 2 && !isdigit((unsigned char)te[-2]))
        return te[-1] - '0';
    return 1;
}

/* A copy of src with line and block comments blanked (string and character literals kept). */
static char *strip_comments(const char *src)
{
    size_t n = strlen(src);
    char *o = malloc(n + 1);
    if (!o)
        return NULL;
    memcpy(o, src, n + 1);
    for (size_t i = 0; i < n; i++) {
        if (o[i] == '"' || o[i] == '\'') {
            char q = o[i];
            for (i++; i < n && o[i] != q && o[i] != '\n'; i++)
                if (o[i] == '\\' && i + 1 < n)
                    i++;
        } else if (o[i] == '/' && i + 1 < n && o[i + 1] == '/') {
            while (i < n && o[i] != '\n')
                o[i++] = ' ';
        } else if (o[i] == '/' && i + 1 < n && o[i + 1] == '*') {
            o[i] = o[i + 1] = ' ';
            for (i += 2; i < n && !(o[i] == '*' && i + 1 < n && o[i + 1] == '/'); i++)
                if (o[i] != '\n')
                    o[i] = ' ';
            if (i < n)
                o[i] = ' ';
            if (i + 1 < n)
                o[++i] = ' ';
        }
    }
    return o;
}

static int builtin_width_in(const char *src, const char *kernel, const char *builtin);

int trmh_builtin_width(const char *src, const char *kernel, const char *builtin)
{
    char *clean = strip_comments(src);
    if (!clean)
        return 0;
    int w = builtin_width_in(clean, kernel, builtin);
    free(clean);
    return w;
}

static int builtin_width_in(const char *src, const char *kernel, const char *builtin)
{
    size_t kn = strlen(kernel);
    for (const char *p = src; (p = strstr(p, kernel)) != NULL; p += kn) {
        if ((p > src && ident_char(p[-1])) || ident_char(p[kn]))
            continue;
        const char *q = p + kn;
        while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
            q++;
        if (*q != '(')
            continue;
        /* the declaration this name belongs to starts after the previous ';', '}' or '{' */
        const char *d = p;
        while (d > src && d[-1] != ';' && d[-1] != '}' && d[-1] != '{')
            d--;
        if (!has_word(d, p, "kernel") || !has_word(d, p, "void"))
            continue;
        /* the parameter list, split at top-level commas */
        const char *s = q + 1;
        int depth = 0;
        for (const char *c = s;; c++) {
            if (!*c)
                return 0;
            if (*c == '(' || *c == '[' || *c == '<')
                depth++;
            else if ((*c == ')' || *c == ']' || *c == '>') && depth > 0)
                depth--;
            else if ((*c == ',' && depth == 0) || (*c == ')' && depth == 0)) {
                const char *att = NULL;
                for (const char *t = s; t + 1 < c; t++)
                    if (t[0] == '[' && t[1] == '[') {
                        att = t;
                        break;
                    }
                if (att && has_word(att, c, builtin)) {
                    const char *ne = att;   /* the parameter's name ends before the attribute */
                    while (ne > s && !ident_char(ne[-1]))
                        ne--;
                    while (ne > s && ident_char(ne[-1]))
                        ne--;
                    return type_width(s, ne);
                }
                if (*c == ')')
                    return 0;
                s = c + 1;
            }
        }
    }
    return 0;
}
