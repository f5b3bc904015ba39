/*
 * rewrite.c — the token-level MSL → C++20 rewriter (see rewrite.h and METAL.md §2.1).
 *
 * The source is tokenized once (whitespace, newlines and directive lines kept as tokens so the output keeps every
 * line where it was); one walk over the significant tokens tracks scopes (namespace, class, function body, block,
 * initializer) and parenthesis depth, and attaches edits to tokens: a replacement text, an insertion before the
 * token, a drop, or a hide (hidden tokens emit only their newlines).  Generated code (launchers, tables, the module
 * descriptor) is appended after the user's code.
 */
#include "rewrite.h"
#include "trellis/alloc.h"
#include "trellis/fp16.h"
#include "trellis/jsonio.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- growable strings ---------------------------------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *q = tr_realloc(b->p, cap);
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
static void sb_puts(sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }
static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0)
        return;
    if ((size_t)k < sizeof tmp) {
        sb_putn(b, tmp, (size_t)k);
        return;
    }
    char *big = tr_malloc((size_t)k + 1);
    if (!big) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)k + 1, fmt, ap);
    va_end(ap);
    sb_putn(b, big, (size_t)k);
    tr_dealloc(big);
}
static char *sb_dup(sbuf *b)
{
    if (b->oom)
        return NULL;
    if (!b->p)
        return tr_strdup("");
    return tr_strdup(b->p);
}
static void sb_free(sbuf *b)
{
    tr_dealloc(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- tokens ---------------------------------------------------------------------------------------------------- */

enum { TK_WS, TK_NL, TK_ID, TK_NUM, TK_STR, TK_CHR, TK_PUNCT, TK_DIR };

typedef struct tok {
    int kind;
    uint32_t off, len;
    int line, file;
    char *pre, *repl;
    unsigned char drop, hide;
} tok;

enum { P_BUFFER = 0, P_TEXTURE, P_SAMPLER, P_THREADGROUP, P_BUILTIN };
enum { S_NONE = 0, S_DEVICE, S_CONSTANT, S_THREADGROUP, S_THREAD };
enum { PASS_POINTER = 0, PASS_REFERENCE, PASS_VALUE };

typedef struct param {
    char *name, *type, *elem_type, *index_expr, *builtin;
    int kind, index, explicit_index, space, passing, is_const, tex_dim, tex_access;
} param;

typedef struct kernel {
    char *host_name, *func_expr, *function;
    int line;
    param *params;
    int nparams;
    char *unsupported;         /* reason, or NULL */
    int is_template;           /* a template definition (instances are separate records) */
    char **tpl_names;          /* template parameter names */
    int ntpl;
    char *tpl_args;            /* instances: the template arguments as written */
    int first_tg, ntg_fn;      /* unused */
} kernel;

typedef struct fnrec {
    char *name, *ns, *norm, *orig;
    int line, file;
} fnrec;

typedef struct tgdecl {
    char *name, *type, *function;
    int line;
} tgdecl;

typedef struct fconst {
    char *name, *type, *index_expr;
    long index;                /* -1 when index_expr is not an integer literal */
} fconst;

typedef struct derived {
    char *name;
    size_t expr_a, expr_b;     /* significant-token range of the initializer */
} derived;

enum { SC_NS = 0, SC_CLASS, SC_FUNC, SC_BLOCK, SC_INIT };
typedef struct scope {
    int kind;
    int paren;
    int fn;                    /* SC_FUNC: index into fns (or -1) */
    char *fname;               /* SC_FUNC: function name */
    char *ns;                  /* SC_NS: namespace path ("a::b"), "" at file scope */
    int anon;                  /* an anonymous namespace is on the path */
    size_t decl_begin;         /* NS/CLASS: first significant token of the current declaration */
} scope;

typedef struct rw {
    const char *src;
    size_t n;
    const char *path;
    tok *t;
    size_t nt, capt;
    size_t *S;                 /* significant tokens */
    size_t nS;
    long *match;               /* per significant token: matching bracket, -1 */
    char **files;
    int nfiles;
    sbuf err;
    int nerr, oom;
    char **members;
    size_t nmem, capmem;
    kernel *k;
    int nk, capk;
    fnrec *fns;
    int nfn, capfn;
    tgdecl *tg;
    int ntg, captg;
    fconst *fc;
    int nfc, capfc;
    derived *dv;
    int ndv, capdv;
    struct { char *name, *stage; int line; } *skipped;
    int nskip, capskip;
    scope sc[256];
    int nsc;
} rw;

#define GROW(r, arr, n, cap)                                                                                           \
    do {                                                                                                               \
        if ((n) == (cap)) {                                                                                            \
            int nc_ = (cap) ? (cap) * 2 : 16;                                                                          \
            void *q_ = tr_realloc((arr), (size_t)nc_ * sizeof *(arr));                                                 \
            if (!q_) {                                                                                                 \
                (r)->oom = 1;                                                                                          \
                break;                                                                                                 \
            }                                                                                                          \
            (arr) = q_;                                                                                                \
            (cap) = nc_;                                                                                               \
        }                                                                                                              \
    } while (0)

static char *xstrndup(rw *r, const char *s, size_t n)
{
    char *p = tr_strndup(s, n);
    if (!p)
        r->oom = 1;
    return p;
}
static char *xstrdup(rw *r, const char *s) { return xstrndup(r, s, strlen(s)); }

static void error_at(rw *r, const tok *t, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void error_at(rw *r, const tok *t, const char *fmt, ...)
{
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *file = t && t->file >= 0 && t->file < r->nfiles ? r->files[t->file] : r->path;
    sb_printf(&r->err, "%s:%d: error: %s\n", file, t ? t->line : 0, msg);
    r->nerr++;
}

static int add_tok(rw *r, int kind, size_t off, size_t len, int line, int file)
{
    if (r->nt == r->capt) {
        size_t nc = r->capt ? r->capt * 2 : 4096;
        tok *q = tr_realloc(r->t, nc * sizeof *q);
        if (!q) {
            r->oom = 1;
            return -1;
        }
        r->t = q;
        r->capt = nc;
    }
    tok *t = &r->t[r->nt++];
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->off = (uint32_t)off;
    t->len = (uint32_t)len;
    t->line = line;
    t->file = file;
    return 0;
}

static int file_index(rw *r, const char *name, size_t n)
{
    for (int i = 0; i < r->nfiles; i++)
        if (strlen(r->files[i]) == n && memcmp(r->files[i], name, n) == 0)
            return i;
    char **q = tr_realloc(r->files, (size_t)(r->nfiles + 1) * sizeof *q);
    if (!q) {
        r->oom = 1;
        return 0;
    }
    r->files = q;
    r->files[r->nfiles] = xstrndup(r, name, n);
    return r->nfiles++;
}

static int is_idstart(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '$'; }
static int is_idchar(int c) { return is_idstart(c) || (c >= '0' && c <= '9'); }

static const char *const puncts[] = {"...", "<<=", ">>=", "->*", "::", "->", "++", "--", "<<", ">>", "<=", ">=",
                                     "==",  "!=",  "&&",  "||",  "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=",
                                     "##",  ".*",  NULL};

static int tokenize(rw *r)
{
    const char *s = r->src;
    size_t n = r->n, i = 0;
    int line = 1, file = file_index(r, r->path, strlen(r->path)), bol = 1, next_line = -1, next_file = -1;
    while (i < n && !r->oom) {
        char c = s[i];
        if (c == '\n') {
            add_tok(r, TK_NL, i, 1, line, file);
            if (next_line >= 0) {
                line = next_line;
                file = next_file;
                next_line = -1;
            } else
                line++;
            bol = 1;
            i++;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v') {
            size_t j = i;
            while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\r' || s[j] == '\f' || s[j] == '\v'))
                j++;
            add_tok(r, TK_WS, i, j - i, line, file);
            i = j;
            continue;
        }
        if (bol && c == '#') {
            size_t j = i;
            while (j < n && s[j] != '\n') {
                if (s[j] == '\\' && j + 1 < n && s[j + 1] == '\n')
                    j++;
                j++;
            }
            add_tok(r, TK_DIR, i, j - i, line, file);
            /* line marker: # N "file" flags   or  #line N "file" */
            size_t k = i + 1;
            while (k < j && (s[k] == ' ' || s[k] == '\t'))
                k++;
            if (k + 4 <= j && memcmp(s + k, "line", 4) == 0)
                k += 4;
            while (k < j && (s[k] == ' ' || s[k] == '\t'))
                k++;
            if (k < j && s[k] >= '0' && s[k] <= '9') {
                long ln = strtol(s + k, NULL, 10);
                while (k < j && s[k] >= '0' && s[k] <= '9')
                    k++;
                while (k < j && (s[k] == ' ' || s[k] == '\t'))
                    k++;
                int f = file;
                if (k < j && s[k] == '"') {
                    size_t e = k + 1;
                    while (e < j && s[e] != '"')
                        e += s[e] == '\\' ? 2 : 1;
                    f = file_index(r, s + k + 1, e - k - 1);
                }
                next_line = (int)ln;
                next_file = f;
            }
            i = j;
            continue;
        }
        bol = 0;
        if (c == '/' && i + 1 < n && s[i + 1] == '/') {
            size_t j = i;
            while (j < n && s[j] != '\n')
                j++;
            add_tok(r, TK_WS, i, j - i, line, file);
            i = j;
            continue;
        }
        if (c == '/' && i + 1 < n && s[i + 1] == '*') {
            size_t j = i + 2;
            int nl = 0;
            while (j + 1 < n && !(s[j] == '*' && s[j + 1] == '/')) {
                nl += s[j] == '\n';
                j++;
            }
            j = j + 2 <= n ? j + 2 : n;
            add_tok(r, TK_WS, i, j - i, line, file);
            line += nl;
            i = j;
            continue;
        }
        if (is_idstart((unsigned char)c)) {
            size_t j = i;
            while (j < n && is_idchar((unsigned char)s[j]))
                j++;
            /* string/char prefixes: L u U u8 R */
            if (j < n && (s[j] == '"' || s[j] == '\'') &&
                ((j - i == 1 && (c == 'L' || c == 'u' || c == 'U' || c == 'R')) ||
                 (j - i == 2 && memcmp(s + i, "u8", 2) == 0) || (j - i <= 3 && s[j - 1] == 'R'))) {
                int raw = s[j - 1] == 'R' && s[j] == '"';
                char q = s[j];
                size_t e = j + 1;
                if (raw) {
                    size_t d0 = e;
                    while (e < n && s[e] != '(')
                        e++;
                    size_t dl = e - d0;
                    e++;
                    while (e < n && !(s[e] == ')' && e + dl + 1 < n && memcmp(s + e + 1, s + d0, dl) == 0 &&
                                      s[e + 1 + dl] == '"'))
                        e++;
                    e = e + dl + 2 <= n ? e + dl + 2 : n;
                } else {
                    while (e < n && s[e] != q && s[e] != '\n')
                        e += s[e] == '\\' ? 2 : 1;
                    e = e < n ? e + 1 : n;
                }
                add_tok(r, q == '"' ? TK_STR : TK_CHR, i, e - i, line, file);
                i = e;
                continue;
            }
            add_tok(r, TK_ID, i, j - i, line, file);
            i = j;
            continue;
        }
        if ((c >= '0' && c <= '9') || (c == '.' && i + 1 < n && s[i + 1] >= '0' && s[i + 1] <= '9')) {
            size_t j = i + 1;
            while (j < n) {
                char d = s[j];
                if ((d == '+' || d == '-') && (s[j - 1] == 'e' || s[j - 1] == 'E' || s[j - 1] == 'p' || s[j - 1] == 'P'))
                    j++;
                else if (is_idchar((unsigned char)d) || d == '.' || d == '\'')
                    j++;
                else
                    break;
            }
            add_tok(r, TK_NUM, i, j - i, line, file);
            i = j;
            continue;
        }
        if (c == '"' || c == '\'') {
            size_t e = i + 1;
            while (e < n && s[e] != c && s[e] != '\n')
                e += s[e] == '\\' ? 2 : 1;
            e = e < n ? e + 1 : n;
            add_tok(r, c == '"' ? TK_STR : TK_CHR, i, e - i, line, file);
            i = e;
            continue;
        }
        size_t len = 1;
        for (int p = 0; puncts[p]; p++) {
            size_t pl = strlen(puncts[p]);
            if (i + pl <= n && memcmp(s + i, puncts[p], pl) == 0) {
                len = pl;
                break;
            }
        }
        add_tok(r, TK_PUNCT, i, len, line, file);
        i += len;
    }
    if (r->oom)
        return -1;
    r->S = tr_malloc((r->nt + 1) * sizeof *r->S);
    r->match = tr_malloc((r->nt + 1) * sizeof *r->match);
    if (!r->S || !r->match) {
        r->oom = 1;
        return -1;
    }
    for (size_t k = 0; k < r->nt; k++)
        if (r->t[k].kind != TK_WS && r->t[k].kind != TK_NL && r->t[k].kind != TK_DIR)
            r->S[r->nS++] = k;
    /* bracket matching over significant tokens */
    size_t *stack = tr_malloc((r->nS + 1) * sizeof *stack);
    if (!stack) {
        r->oom = 1;
        return -1;
    }
    size_t sp = 0;
    for (size_t i2 = 0; i2 < r->nS; i2++) {
        r->match[i2] = -1;
        tok *t = &r->t[r->S[i2]];
        if (t->kind != TK_PUNCT || t->len != 1)
            continue;
        char ch = s[t->off];
        if (ch == '(' || ch == '[' || ch == '{')
            stack[sp++] = i2;
        else if ((ch == ')' || ch == ']' || ch == '}') && sp) {
            char open = ch == ')' ? '(' : ch == ']' ? '[' : '{';
            /* tolerate mismatches: pop until the matching kind */
            size_t k = sp;
            while (k > 0 && s[r->t[r->S[stack[k - 1]]].off] != open)
                k--;
            if (k == 0)
                continue;
            sp = k - 1;
            r->match[stack[sp]] = (long)i2;
            r->match[i2] = (long)stack[sp];
        }
    }
    tr_dealloc(stack);
    return 0;
}

/* ---- token helpers --------------------------------------------------------------------------------------------- */

static tok *T(rw *r, size_t i) { return &r->t[r->S[i]]; }
static const char *TX(rw *r, size_t i) { return r->src + T(r, i)->off; }
static int is_p(rw *r, size_t i, const char *p)
{
    if (i >= r->nS)
        return 0;
    tok *t = T(r, i);
    return t->kind == TK_PUNCT && t->len == strlen(p) && memcmp(r->src + t->off, p, t->len) == 0;
}
static int is_id(rw *r, size_t i, const char *id)
{
    if (i >= r->nS)
        return 0;
    tok *t = T(r, i);
    return t->kind == TK_ID && t->len == strlen(id) && memcmp(r->src + t->off, id, t->len) == 0;
}
static int is_ident(rw *r, size_t i) { return i < r->nS && T(r, i)->kind == TK_ID; }
static char *tstr(rw *r, size_t i) { return xstrndup(r, TX(r, i), T(r, i)->len); }
static int teq(rw *r, size_t i, const char *s) { return is_ident(r, i) && is_id(r, i, s); }

static void set_repl(rw *r, size_t i, const char *s)
{
    tok *t = T(r, i);
    tr_dealloc(t->repl);
    t->repl = xstrdup(r, s);
}
static void add_pre(rw *r, size_t i, const char *s)
{
    tok *t = T(r, i);
    size_t a = t->pre ? strlen(t->pre) : 0, b = strlen(s);
    char *q = tr_realloc(t->pre, a + b + 1);
    if (!q) {
        r->oom = 1;
        return;
    }
    memcpy(q + a, s, b + 1);
    t->pre = q;
}
static void drop_range(rw *r, size_t a, size_t b)
{
    for (size_t i = a; i <= b && i < r->nS; i++)
        T(r, i)->drop = 1;
}
/* Hide significant tokens a..b and everything between them except newlines. */
static void hide_range(rw *r, size_t a, size_t b)
{
    if (a >= r->nS)
        return;
    if (b >= r->nS)
        b = r->nS - 1;
    for (size_t k = r->S[a]; k <= r->S[b]; k++)
        if (r->t[k].kind != TK_NL)
            r->t[k].hide = 1;
}

static int is_space_kw(rw *r, size_t i)
{
    return teq(r, i, "device") || teq(r, i, "constant") || teq(r, i, "threadgroup") || teq(r, i, "thread") ||
           teq(r, i, "threadgroup_imageblock") || teq(r, i, "ray_data") || teq(r, i, "object_data");
}

/* Join the texts of significant tokens [a, b) readably ("device const half *", "texture2d<float, access::read>"). */
static char *join(rw *r, size_t a, size_t b, int erase_spaces)
{
    sbuf o = {0};
    int prev_word = 0;
    for (size_t i = a; i < b && i < r->nS; i++) {
        if (is_p(r, i, "[") && is_p(r, i + 1, "[") && r->match[i + 1] >= 0 && r->match[i] == r->match[i + 1] + 1) {
            i = (size_t)r->match[i];
            continue;
        }
        if (erase_spaces && is_space_kw(r, i)) {
            if (teq(r, i, "constant")) {
                if (prev_word)
                    sb_puts(&o, " ");
                sb_puts(&o, "const");
                prev_word = 1;
            }
            continue;
        }
        tok *t = T(r, i);
        const char *txt = t->repl ? t->repl : r->src + t->off;
        size_t len = t->repl ? strlen(t->repl) : t->len;
        int word = t->kind == TK_ID || t->kind == TK_NUM;
        int star = t->kind == TK_PUNCT && (txt[0] == '*' || txt[0] == '&');
        if (o.n && ((word && prev_word) || star))
            sb_puts(&o, " ");
        sb_putn(&o, txt, len);
        if (t->kind == TK_PUNCT && len == 1 && txt[0] == ',')
            sb_puts(&o, " ");
        prev_word = word || star;
    }
    char *s = sb_dup(&o);
    sb_free(&o);
    if (!s)
        r->oom = 1;
    return s;
}

/* Render significant tokens [a, b] with their edits (drops applied, hides ignored) and the space between them. */
static char *render(rw *r, size_t a, size_t b)
{
    sbuf o = {0};
    for (size_t k = r->S[a]; k <= r->S[b]; k++) {
        tok *t = &r->t[k];
        if (t->kind == TK_NL || t->kind == TK_DIR) {
            sb_puts(&o, " ");
            continue;
        }
        if (t->pre)
            sb_puts(&o, t->pre);
        if (t->drop)
            continue;
        if (t->repl)
            sb_puts(&o, t->repl);
        else
            sb_putn(&o, r->src + t->off, t->len);
    }
    char *s = sb_dup(&o);
    sb_free(&o);
    if (!s)
        r->oom = 1;
    return s;
}

/* Attribute [[...]] starting at significant token i: returns the index of its last ']' or -1. */
static long attr_end(rw *r, size_t i)
{
    if (!is_p(r, i, "[") || !is_p(r, i + 1, "["))
        return -1;
    long m1 = r->match[i], m2 = r->match[i + 1];
    if (m1 < 0 || m2 < 0 || m1 != m2 + 1)
        return -1;
    return m1;
}

/* Find attribute item `name` inside [[...]] spanning [i, e]: returns the index of its name token, or -1.  *arg_a and
 * *arg_b get the range of its parenthesised argument (exclusive of the parentheses) when present. */
static long attr_find(rw *r, size_t i, size_t e, const char *name, size_t *arg_a, size_t *arg_b)
{
    for (size_t k = i + 2; k + 1 < e; k++) {
        if (is_ident(r, k) && is_id(r, k, name) && (k == i + 2 || is_p(r, k - 1, ",") || is_p(r, k - 1, "::"))) {
            if (is_p(r, k + 1, "(") && r->match[k + 1] > 0) {
                if (arg_a)
                    *arg_a = k + 2;
                if (arg_b)
                    *arg_b = (size_t)r->match[k + 1];
            } else if (arg_a) {
                *arg_a = *arg_b = k + 1;
            }
            return (long)k;
        }
        if (is_p(r, k, "(") && r->match[k] > 0)
            k = (size_t)r->match[k];
    }
    return -1;
}

static int parse_int(rw *r, size_t a, size_t b, long *out)
{
    if (b != a + 1 || T(r, a)->kind != TK_NUM)
        return 0;
    char buf[64];
    size_t n = T(r, a)->len < 63 ? T(r, a)->len : 63;
    memcpy(buf, TX(r, a), n);
    buf[n] = '\0';
    char *end;
    long v = strtol(buf, &end, 0);
    while (*end == 'u' || *end == 'U' || *end == 'l' || *end == 'L')
        end++;
    if (*end)
        return 0;
    *out = v;
    return 1;
}

/* ---- literals -------------------------------------------------------------------------------------------------- */

/* Normalize a positive decimal literal into significant digits and a decimal exponent: value = 0.DIGITS × 10^E.
 * Returns 0, or -1 for hexadecimal or malformed text. */
static int decimal_digits(const char *s, char *dig, size_t cap, long *e10)
{
    size_t k = 0;
    long exp = 0, point = -1, lead = 0;
    int seen = 0;
    if (*s == '+' || *s == '-')
        s++;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        return -1;
    long pos = 0;
    for (; *s && *s != 'e' && *s != 'E'; s++) {
        if (*s == '.') {
            point = pos;
            continue;
        }
        if (*s < '0' || *s > '9')
            return -1;
        if (!seen && *s == '0') {
            lead++;
            pos++;
            continue;
        }
        seen = 1;
        if (k + 1 < cap)
            dig[k++] = *s;
        pos++;
    }
    if (*s == 'e' || *s == 'E')
        exp = strtol(s + 1, NULL, 10);
    if (point < 0)
        point = pos;
    while (k > 0 && dig[k - 1] == '0')
        k--;
    dig[k] = '\0';
    *e10 = exp + point - lead;
    return 0;
}

/* Sign of (decimal text − d) for a finite positive d, exactly (glibc prints doubles exactly). */
static int cmp_decimal(const char *text, double d)
{
    char a[400], b[400], buf[420];
    long ea, eb;
    if (decimal_digits(text, a, sizeof a, &ea) != 0)
        return 0;
    snprintf(buf, sizeof buf, "%.330e", d);
    if (decimal_digits(buf, b, sizeof b, &eb) != 0)
        return 0;
    if (!a[0] || !b[0])
        return a[0] ? 1 : b[0] ? -1 : 0;
    if (ea != eb)
        return ea > eb ? 1 : -1;
    int c = strcmp(a, b);
    return c > 0 ? 1 : c < 0 ? -1 : 0;
}

unsigned trmtl_half_literal_bits(const char *text, size_t n)
{
    char buf[128];
    if (n >= sizeof buf)
        n = sizeof buf - 1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (text[i] != '\'')
            buf[k++] = text[i];
    buf[k] = '\0';
    double d = strtod(buf, NULL);
    uint16_t h = tr_f64_to_f16(d);
    /* double rounding decimal → f64 → f16 can only go wrong when d lies exactly halfway between two halves (a
     * midpoint is representable in f64, so rounding to f64 never crosses one): then the exact decimal value
     * decides. */
    double lo = tr_f16_to_f32(h);
    if (isfinite(d) && d != lo && d > 0) {
        uint16_t up = (uint16_t)(h + 1), dn = (uint16_t)(h - 1);
        uint16_t other = d > lo ? up : dn;
        double hi = tr_f16_to_f32(other);
        if ((h & 0x7C00) != 0x7C00 && fabs(hi - d) == fabs(d - lo)) {
            int c = cmp_decimal(buf, d);
            if ((c > 0 && hi > lo) || (c < 0 && hi < lo))
                h = other;
        }
    }
    return h;
}

/* Rewrite one numeric token: half literals, f suffix on unsuffixed floating literals. */
static void literal(rw *r, size_t i)
{
    tok *t = T(r, i);
    const char *s = r->src + t->off;
    size_t n = t->len;
    int hex = n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
    int isfloat = 0;
    for (size_t k = hex ? 2 : 0; k < n; k++) {
        char c = s[k];
        if (c == '.' || (!hex && (c == 'e' || c == 'E')) || (hex && (c == 'p' || c == 'P')))
            isfloat = 1;
    }
    if (!isfloat)
        return;
    char last = s[n - 1];
    if (last == 'h' || last == 'H') {
        char buf[96];
        snprintf(buf, sizeof buf, "__trmtl_h(0x%04X)", trmtl_half_literal_bits(s, n - 1));
        set_repl(r, i, buf);
        return;
    }
    if (last == 'f' || last == 'F' || last == 'l' || last == 'L')
        return;
    if (hex && !(last >= '0' && last <= '9') && !(last >= 'a' && last <= 'f') && !(last >= 'A' && last <= 'F'))
        return;
    char *q = tr_malloc(n + 2);
    if (!q) {
        r->oom = 1;
        return;
    }
    memcpy(q, s, n);
    q[n] = 'f';
    q[n + 1] = '\0';
    tr_dealloc(t->repl);
    t->repl = q;
}

/* ---- struct member names (swizzle exclusion) ------------------------------------------------------------------- */

static int member_known(rw *r, const char *s, size_t n)
{
    for (size_t i = 0; i < r->nmem; i++)
        if (strlen(r->members[i]) == n && memcmp(r->members[i], s, n) == 0)
            return 1;
    return 0;
}

static void collect_members(rw *r)
{
    for (size_t i = 0; i < r->nS; i++) {
        if (!(teq(r, i, "struct") || teq(r, i, "class") || teq(r, i, "union")))
            continue;
        size_t j = i + 1;
        while (j < r->nS && !is_p(r, j, "{") && !is_p(r, j, ";") && !is_p(r, j, "(") && !is_p(r, j, "="))
            j++;
        if (!is_p(r, j, "{") || r->match[j] < 0)
            continue;
        size_t e = (size_t)r->match[j];
        int depth = 0;
        for (size_t k = j + 1; k < e; k++) {
            if (is_p(r, k, "{") || is_p(r, k, "(") || is_p(r, k, "[")) {
                if (is_p(r, k, "(") && depth == 0 && is_ident(r, k - 1)) {
                    /* member function name */
                    if (!member_known(r, TX(r, k - 1), T(r, k - 1)->len)) {
                        GROW(r, r->members, r->nmem, r->capmem);
                        if (r->oom)
                            return;
                        r->members[r->nmem++] = tstr(r, k - 1);
                    }
                }
                depth++;
                continue;
            }
            if (is_p(r, k, "}") || is_p(r, k, ")") || is_p(r, k, "]")) {
                depth--;
                continue;
            }
            if (depth == 0 && is_ident(r, k) &&
                (is_p(r, k + 1, ";") || is_p(r, k + 1, ",") || is_p(r, k + 1, "[") || is_p(r, k + 1, "=") ||
                 is_p(r, k + 1, ":") || (is_p(r, k + 1, "[") && is_p(r, k + 2, "[")))) {
                if (!member_known(r, TX(r, k), T(r, k)->len)) {
                    GROW(r, r->members, r->nmem, r->capmem);
                    if (r->oom)
                        return;
                    r->members[r->nmem++] = tstr(r, k);
                }
            }
        }
    }
}

/* ".xy" → ".template __sw<0,1>()" for 2..4 components of xyzw or rgba. */
static void swizzle(rw *r, size_t i)
{
    tok *t = T(r, i);
    const char *s = r->src + t->off;
    size_t n = t->len;
    if (n < 2 || n > 4 || member_known(r, s, n))
        return;
    static const char xyzw[] = "xyzw", rgba[] = "rgba";
    const char *set = strchr(xyzw, s[0]) ? xyzw : strchr(rgba, s[0]) ? rgba : NULL;
    if (!set)
        return;
    char buf[64] = "template __sw<";
    for (size_t k = 0; k < n; k++) {
        const char *p = strchr(set, s[k]);
        if (!p || !s[k])
            return;
        char d[4];
        snprintf(d, sizeof d, "%s%d", k ? "," : "", (int)(p - set));
        strcat(buf, d);
    }
    strcat(buf, ">()");
    set_repl(r, i, buf);
}

/* ---- parameter lists ------------------------------------------------------------------------------------------- */

static const char *const builtin_names[] = {
    "thread_position_in_grid", "threadgroup_position_in_grid", "thread_position_in_threadgroup",
    "threads_per_threadgroup", "threadgroups_per_grid", "threads_per_grid", "dispatch_threads_per_threadgroup",
    "grid_origin", "grid_size", "thread_index_in_threadgroup", "thread_index_in_simdgroup",
    "simdgroup_index_in_threadgroup", "threads_per_simdgroup", "simdgroups_per_threadgroup",
    "thread_index_in_quadgroup", "quadgroup_index_in_threadgroup", "quadgroups_per_threadgroup",
    "thread_execution_width", NULL};

static int builtin_id(rw *r, size_t i)
{
    for (int b = 0; builtin_names[b]; b++)
        if (is_id(r, i, builtin_names[b]))
            return b;
    if (is_id(r, i, "dispatch_simdgroups_per_threadgroup"))
        return 13;
    if (is_id(r, i, "dispatch_quadgroups_per_threadgroup"))
        return 16;
    return -1;
}

/* Split [a, b) at top-level commas (parentheses, brackets, braces, angle brackets).  Returns the count; starts[]
 * gets each part's first index, ends[] its end (exclusive). */
static int split_params(rw *r, size_t a, size_t b, size_t *starts, size_t *ends, int max)
{
    int n = 0, angle = 0;
    size_t s = a;
    if (a >= b)
        return 0;
    for (size_t i = a; i < b; i++) {
        if ((is_p(r, i, "(") || is_p(r, i, "[") || is_p(r, i, "{")) && r->match[i] > (long)i) {
            i = (size_t)r->match[i];
            continue;
        }
        if (is_p(r, i, "<") && i > a && (is_ident(r, i - 1) || is_p(r, i - 1, "::")))
            angle++;
        else if (is_p(r, i, ">") && angle > 0)
            angle--;
        else if (is_p(r, i, ">>") && angle > 0)
            angle = angle >= 2 ? angle - 2 : 0;
        else if (is_p(r, i, ",") && angle == 0) {
            if (n < max) {
                starts[n] = s;
                ends[n] = i;
                n++;
            }
            s = i + 1;
        }
    }
    if (n < max) {
        starts[n] = s;
        ends[n] = b;
        n++;
    }
    return n;
}

/* The declarator name of a parameter [a, b) (attributes and default value excluded): index or -1. */
static long param_name(rw *r, size_t a, size_t b)
{
    long last = -1;
    int ntoks = 0;
    for (size_t i = a; i < b; i++) {
        long e = attr_end(r, i);
        if (e >= 0) {
            i = (size_t)e;
            continue;
        }
        if (is_p(r, i, "="))
            break;
        if (is_p(r, i, "<") || is_p(r, i, "(") || is_p(r, i, "[")) {
            /* skip template argument lists and parenthesised parts */
            if (is_p(r, i, "<")) {
                int depth = 1;
                size_t k = i + 1;
                for (; k < b && depth; k++) {
                    if (is_p(r, k, "<"))
                        depth++;
                    else if (is_p(r, k, ">"))
                        depth--;
                    else if (is_p(r, k, ">>"))
                        depth -= 2;
                }
                i = k - 1;
                ntoks++;
                last = -1;
                continue;
            }
            if (r->match[i] > (long)i)
                i = (size_t)r->match[i];
            continue;
        }
        ntoks++;
        last = is_ident(r, i) && !(i > a && is_p(r, i - 1, "::")) ? (long)i : -1;
    }
    return ntoks >= 2 ? last : -1;
}

static void param_free(param *p)
{
    tr_dealloc(p->name);
    tr_dealloc(p->type);
    tr_dealloc(p->elem_type);
    tr_dealloc(p->index_expr);
    tr_dealloc(p->builtin);
}

/* Parse the parameters of a kernel header (a, b exclusive of the parentheses). */
static void kernel_params(rw *r, kernel *k, size_t a, size_t b)
{
    size_t st[64], en[64];
    int n = split_params(r, a, b, st, en, 64);
    if (n == 1 && st[0] == en[0])
        n = 0;
    if (n == 1 && en[0] == st[0] + 1 && is_id(r, st[0], "void"))
        n = 0;
    k->params = tr_calloc((size_t)(n ? n : 1), sizeof *k->params);
    if (!k->params) {
        r->oom = 1;
        return;
    }
    k->nparams = n;
    for (int p = 0; p < n; p++) {
        param *P = &k->params[p];
        P->index = -1;
        long nm = param_name(r, st[p], en[p]);
        if (nm < 0) {
            char msg[64];
            snprintf(msg, sizeof msg, "parameter %d has no name", p);
            if (!k->unsupported)
                k->unsupported = xstrdup(r, msg);
            continue;
        }
        P->name = tstr(r, (size_t)nm);
        /* type tokens: everything but attributes and the name */
        P->type = join(r, st[p], (size_t)nm, 0);
        P->elem_type = NULL;
        {
            /* element type: without address spaces, cv, * and & */
            sbuf o = {0};
            int prev_word = 0;
            for (size_t i = st[p]; i < (size_t)nm; i++) {
                long e = attr_end(r, i);
                if (e >= 0) {
                    i = (size_t)e;
                    continue;
                }
                if (is_space_kw(r, i) || teq(r, i, "const") || teq(r, i, "volatile") || teq(r, i, "restrict") ||
                    teq(r, i, "__restrict") || is_p(r, i, "*") || is_p(r, i, "&") || is_p(r, i, "&&")) {
                    if (teq(r, i, "device"))
                        P->space = S_DEVICE;
                    else if (teq(r, i, "constant"))
                        P->space = S_CONSTANT, P->is_const = 1;
                    else if (teq(r, i, "threadgroup"))
                        P->space = S_THREADGROUP;
                    else if (teq(r, i, "thread"))
                        P->space = S_THREAD;
                    else if (teq(r, i, "const"))
                        P->is_const = 1;
                    else if (is_p(r, i, "*"))
                        P->passing = PASS_POINTER + 10;
                    else if ((is_p(r, i, "&") || is_p(r, i, "&&")) && P->passing < 10)
                        P->passing = PASS_REFERENCE + 20;
                    continue;
                }
                int word = T(r, i)->kind == TK_ID || T(r, i)->kind == TK_NUM;
                if (o.n && word && prev_word)
                    sb_puts(&o, " ");
                sb_putn(&o, TX(r, i), T(r, i)->len);
                if (is_p(r, i, ","))
                    sb_puts(&o, " ");
                prev_word = word;
            }
            P->elem_type = sb_dup(&o);
            sb_free(&o);
        }
        P->passing = P->passing >= 20 ? PASS_REFERENCE : P->passing >= 10 ? PASS_POINTER : PASS_VALUE;
        /* attributes */
        int have_kind = 0;
        for (size_t i = st[p]; i < en[p]; i++) {
            long e = attr_end(r, i);
            if (e < 0)
                continue;
            for (size_t q = i + 2; q + 1 < (size_t)e; q++) {
                if (!is_ident(r, q) || !(q == i + 2 || is_p(r, q - 1, ",")))
                    continue;
                size_t aa = q + 1, ab = q + 1;
                if (is_p(r, q + 1, "(") && r->match[q + 1] > 0) {
                    aa = q + 2;
                    ab = (size_t)r->match[q + 1];
                }
                int kind = -1;
                if (is_id(r, q, "buffer"))
                    kind = P_BUFFER;
                else if (is_id(r, q, "texture"))
                    kind = P_TEXTURE;
                else if (is_id(r, q, "sampler"))
                    kind = P_SAMPLER;
                else if (is_id(r, q, "threadgroup"))
                    kind = P_THREADGROUP;
                int b2 = builtin_id(r, q);
                if (kind >= 0) {
                    P->kind = kind;
                    have_kind = 1;
                    long v;
                    if (aa < ab && parse_int(r, aa, ab, &v)) {
                        P->index = (int)v;
                        P->explicit_index = 1;
                    } else if (aa < ab) {
                        P->index_expr = join(r, aa, ab, 0);
                        P->explicit_index = 1;
                    }
                } else if (b2 >= 0) {
                    P->kind = P_BUILTIN;
                    P->index = b2;
                    P->builtin = tstr(r, q);
                    have_kind = 1;
                } else if (is_id(r, q, "stage_in") || is_id(r, q, "vertex_id") || is_id(r, q, "instance_id") ||
                           is_id(r, q, "position") || is_id(r, q, "color") || is_id(r, q, "id") ||
                           is_id(r, q, "payload") || is_id(r, q, "amplification_id")) {
                    char msg[128];
                    snprintf(msg, sizeof msg, "parameter %s: attribute [[%.*s]] is not supported by the emulator",
                             P->name ? P->name : "?", (int)T(r, q)->len, TX(r, q));
                    if (!k->unsupported)
                        k->unsupported = xstrdup(r, msg);
                }
                if (ab > q + 1)
                    q = ab;
            }
            i = (size_t)e;
        }
        if (!have_kind && P->elem_type) {
            if (strncmp(P->elem_type, "texture", 7) == 0)
                P->kind = P_TEXTURE, have_kind = 1;
            else if (strcmp(P->elem_type, "sampler") == 0 || strcmp(P->elem_type, "metal::sampler") == 0)
                P->kind = P_SAMPLER, have_kind = 1;
            else if (P->space == S_THREADGROUP && P->passing == PASS_POINTER)
                P->kind = P_THREADGROUP, have_kind = 1;
            else if ((P->space == S_DEVICE || P->space == S_CONSTANT) && P->passing != PASS_VALUE)
                P->kind = P_BUFFER, have_kind = 1;
        }
        if (!have_kind) {
            char msg[160];
            snprintf(msg, sizeof msg, "parameter %s has no binding attribute and is not a buffer, texture or sampler",
                     P->name ? P->name : "?");
            if (!k->unsupported)
                k->unsupported = xstrdup(r, msg);
        }
        if (P->kind == P_TEXTURE && P->elem_type) {
            const char *e = P->elem_type;
            const char *base = strncmp(e, "metal::", 7) == 0 ? e + 7 : e;
            if (strncmp(base, "texture2d_array<", 16) == 0)
                P->tex_dim = 3;
            else if (strncmp(base, "texture2d<", 10) == 0)
                P->tex_dim = 2;
            else if (strncmp(base, "texture1d<", 10) == 0)
                P->tex_dim = 1;
            else if (!k->unsupported) {
                char msg[200];
                snprintf(msg, sizeof msg, "parameter %s: %s is not supported (1-D, 2-D and 2-D array textures are)",
                         P->name ? P->name : "?", e);
                k->unsupported = xstrdup(r, msg);
            }
            P->tex_access = strstr(e, "read_write") ? 3 : strstr(e, "access::write") ? 2 : strstr(e, "access::read") ? 1 : 0;
        }
    }
    /* Metal's implicit indices: the first free index of the kind, in declaration order. */
    for (int kind = P_BUFFER; kind <= P_THREADGROUP; kind++) {
        unsigned char used[256] = {0};
        for (int p = 0; p < n; p++)
            if (k->params[p].kind == kind && k->params[p].explicit_index && k->params[p].index >= 0 &&
                k->params[p].index < 256)
                used[k->params[p].index] = 1;
        int next = 0;
        for (int p = 0; p < n; p++) {
            param *P = &k->params[p];
            if (P->kind != kind || P->explicit_index)
                continue;
            while (next < 255 && used[next])
                next++;
            P->index = next;
            used[next] = 1;
        }
    }
}

/* Normalized signature of a parameter list [a, b) for the address-space overload check (names, attributes and
 * default values removed; erase: address spaces removed, constant → const, duplicate const merged). */
static char *signature(rw *r, size_t a, size_t b, int erase)
{
    size_t st[64], en[64];
    int n = split_params(r, a, b, st, en, 64);
    sbuf o = {0};
    for (int p = 0; p < n; p++) {
        long nm = param_name(r, st[p], en[p]);
        int consts = 0;
        if (p)
            sb_puts(&o, ", ");
        for (size_t i = st[p]; i < en[p]; i++) {
            long e = attr_end(r, i);
            if (e >= 0) {
                i = (size_t)e;
                continue;
            }
            if (is_p(r, i, "="))
                break;
            if ((long)i == nm)
                continue;
            if (erase && is_space_kw(r, i) && !teq(r, i, "constant"))
                continue;
            int is_const = teq(r, i, "const") || teq(r, i, "constant");
            if (erase && is_const) {
                if (consts++)
                    continue;
                sb_puts(&o, "const ");
                continue;
            }
            sb_putn(&o, TX(r, i), T(r, i)->len);
            sb_puts(&o, " ");
        }
    }
    char *s = sb_dup(&o);
    sb_free(&o);
    if (!s) {
        r->oom = 1;
        return NULL;
    }
    /* tidy: no space before ',' and at the end */
    char *w = s;
    for (char *p = s; *p; p++) {
        if (*p == ' ' && (p[1] == ',' || p[1] == '\0'))
            continue;
        *w++ = *p;
    }
    *w = '\0';
    return s;
}

static const char *const not_fn_names[] = {"if", "while", "for", "switch", "return", "sizeof", "alignof", "decltype",
                                           "alignas", "__attribute__", "static_assert", "noexcept", "requires",
                                           "typeid", "catch", "throw", "__asm__", "asm", "defined", NULL};

static int not_function_name(rw *r, size_t i)
{
    for (int k = 0; not_fn_names[k]; k++)
        if (is_id(r, i, not_fn_names[k]))
            return 1;
    return 0;
}

/* ---- the walk ------------------------------------------------------------------------------------------------ */

enum { STAGE_NONE = 0, STAGE_KERNEL, STAGE_VERTEX, STAGE_FRAGMENT };

typedef struct walkstate {
    int pending_class, pending_enum, pending_ns_set;
    char *pending_ns;
    long pending_body;         /* significant index of a function body's '{' */
    int pending_fn;            /* fns index for that body */
    char *pending_fname;
    int stage;                 /* stage keyword/attribute seen in the current declaration */
    char *host_name;
    long tpl_a, tpl_b;         /* template header parameter range of the current declaration, -1 none */
    long tpl_header_end;       /* index of the '>' closing the template header being walked */
} walkstate;

static scope *top(rw *r) { return &r->sc[r->nsc - 1]; }

static void reset_decl(rw *r, walkstate *w, size_t next)
{
    w->stage = STAGE_NONE;
    tr_dealloc(w->host_name);
    w->host_name = NULL;
    w->tpl_a = w->tpl_b = -1;
    w->pending_class = w->pending_enum = 0;
    w->pending_ns_set = 0;
    top(r)->decl_begin = next;
}

static int fc_like(rw *r, size_t i)
{
    if (!is_ident(r, i))
        return 0;
    if (is_id(r, i, "is_function_constant_defined"))
        return 1;
    for (int k = 0; k < r->nfc; k++)
        if (is_id(r, i, r->fc[k].name))
            return 1;
    for (int k = 0; k < r->ndv; k++)
        if (is_id(r, i, r->dv[k].name))
            return 1;
    return 0;
}

/* Program-scope `constant ...` starting at i: a function constant, a constant derived from function constants
 * (recomputed per launch), or a plain `const` declaration. */
static void program_constant(rw *r, size_t i)
{
    size_t e = i + 1, eq = 0;
    long fa = -1;
    int function = 0;
    while (e < r->nS && !is_p(r, e, ";") && !is_p(r, e, "{")) {
        long ae = attr_end(r, e);
        if (ae >= 0) {
            if (attr_find(r, e, (size_t)ae, "function_constant", NULL, NULL) >= 0)
                fa = (long)e;
            e = (size_t)ae + 1;
            continue;
        }
        if (is_p(r, e, "(") && !eq)
            function = 1;
        if (is_p(r, e, "=") && !eq)
            eq = e;
        if ((is_p(r, e, "(") || is_p(r, e, "[") || is_p(r, e, "{")) && r->match[e] > (long)e)
            e = (size_t)r->match[e];
        e++;
    }
    int adjacent_const = teq(r, i + 1, "const") || (i > 0 && teq(r, i - 1, "const"));
    if (fa >= 0 && is_p(r, e, ";") && !function) {
        /* constant T name [[function_constant(k)]]; */
        size_t a0 = 0, a1 = 0;
        attr_find(r, (size_t)fa, (size_t)attr_end(r, (size_t)fa), "function_constant", &a0, &a1);
        long nm = -1;
        for (size_t k = i + 1; k < (size_t)fa; k++)
            if (is_ident(r, k))
                nm = (long)k;
        if (nm < 0 || a0 >= a1) {
            error_at(r, T(r, i), "cannot parse the function constant declaration");
            return;
        }
        GROW(r, r->fc, r->nfc, r->capfc);
        if (r->oom)
            return;
        fconst *f = &r->fc[r->nfc++];
        f->name = tstr(r, (size_t)nm);
        f->type = join(r, i + 1, (size_t)nm, 1);
        f->index_expr = join(r, a0, a1, 0);
        long v;
        f->index = parse_int(r, a0, a1, &v) ? v : -1;
        if (f->index >= 64)
            error_at(r, T(r, i), "function constant index %ld: the emulator supports indices 0..63", f->index);
        set_repl(r, i, "static");
        for (size_t k = i + 1; k < (size_t)nm; k++)
            if (teq(r, k, "const"))
                T(r, k)->drop = 1;
        char buf[300];
        snprintf(buf, sizeof buf, "; static bool __trmtl_fcdef_%s = false;", f->name ? f->name : "");
        set_repl(r, e, buf);
        return;
    }
    if (eq && is_p(r, e, ";") && !function) {
        int uses_fc = 0;
        for (size_t k = eq + 1; k < e; k++)
            uses_fc |= fc_like(r, k);
        if (uses_fc) {
            long nm = (long)eq - 1;
            while (nm > (long)i && is_p(r, (size_t)nm, "]") && r->match[nm] >= 0)
                nm = r->match[nm] - 1;
            if (!is_ident(r, (size_t)nm)) {
                error_at(r, T(r, i), "cannot parse the program-scope constant");
                return;
            }
            GROW(r, r->dv, r->ndv, r->capdv);
            if (r->oom)
                return;
            derived *d = &r->dv[r->ndv++];
            d->name = tstr(r, (size_t)nm);
            d->expr_a = eq + 1;
            d->expr_b = e - 1;
            set_repl(r, i, "static");
            for (size_t k = i + 1; k < (size_t)nm; k++)
                if (teq(r, k, "const") || teq(r, k, "constexpr"))
                    T(r, k)->drop = 1;
            hide_range(r, eq, e - 1);
            return;
        }
    }
    if (adjacent_const)
        T(r, i)->drop = 1;
    else
        set_repl(r, i, "const");
}

/* Statement-level `threadgroup` declaration at i (inside a function): `threadgroup T a[N], b;` becomes
 * `auto &a = *tg_alloc<T [N], align>(site); auto &b = *tg_alloc<T, align>(site);`. */
static void threadgroup_decl(rw *r, size_t i)
{
    size_t e = i + 1;
    int indirect = 0;
    while (e < r->nS && !is_p(r, e, ";")) {
        if (is_p(r, e, "{") || is_p(r, e, "}"))
            return;
        if (is_p(r, e, "*") || is_p(r, e, "&") || is_p(r, e, "&&") || is_p(r, e, "="))
            indirect = 1;
        if (is_p(r, e, "<")) {
            int depth = 1;
            size_t k = e + 1;
            for (; k < r->nS && depth > 0 && !is_p(r, k, ";"); k++) {
                if (is_p(r, k, "<"))
                    depth++;
                else if (is_p(r, k, ">"))
                    depth--;
                else if (is_p(r, k, ">>"))
                    depth -= 2;
            }
            e = k;
            continue;
        }
        if ((is_p(r, e, "(") || is_p(r, e, "[")) && r->match[e] > (long)e)
            e = (size_t)r->match[e];
        e++;
    }
    if (e >= r->nS)
        return;
    if (indirect) {
        T(r, i)->drop = 1;
        return;
    }
    size_t st[32], en[32];
    int n = split_params(r, i + 1, e, st, en, 32);
    char *type_text = NULL;
    const char *fname = NULL;
    for (int s = r->nsc - 1; s >= 0; s--)
        if (r->sc[s].kind == SC_FUNC) {
            fname = r->sc[s].fname;
            break;
        }
    for (int d = 0; d < n; d++) {
        long nm = -1, align = 0;
        int seen_dims = 0;
        sbuf dims = {0};
        for (size_t k = st[d]; k < en[d]; k++) {
            if (is_id(r, k, "__attribute__") && is_p(r, k + 1, "(") && r->match[k + 1] > 0) {
                size_t ae = (size_t)r->match[k + 1];
                for (size_t q = k; q + 2 <= ae; q++)
                    if ((is_id(r, q, "aligned") || is_id(r, q, "__aligned__")) && is_p(r, q + 1, "(")) {
                        long v;
                        if (parse_int(r, q + 2, (size_t)r->match[q + 1], &v))
                            align = v;
                    }
                drop_range(r, k, ae);
                k = ae;
                continue;
            }
            long ae2 = attr_end(r, k);
            if (ae2 >= 0) {
                drop_range(r, k, (size_t)ae2);
                k = (size_t)ae2;
                continue;
            }
            if (is_p(r, k, "[") && r->match[k] > (long)k) {
                char *x = join(r, k, (size_t)r->match[k] + 1, 0);
                sb_puts(&dims, x ? x : "");
                tr_dealloc(x);
                seen_dims = 1;
                k = (size_t)r->match[k];
                continue;
            }
            if (is_ident(r, k) && !seen_dims)
                nm = (long)k;
        }
        if (nm < 0 || (d == 0 && nm == (long)st[0])) {
            error_at(r, T(r, i), "cannot parse the threadgroup declaration");
            sb_free(&dims);
            tr_dealloc(type_text);
            return;
        }
        if (d == 0)
            type_text = join(r, i + 1, (size_t)nm, 1);
        char *name = tstr(r, (size_t)nm);
        int site = r->ntg;
        GROW(r, r->tg, r->ntg, r->captg);
        if (r->oom || !type_text || !name) {
            tr_dealloc(name);
            sb_free(&dims);
            tr_dealloc(type_text);
            r->oom = 1;
            return;
        }
        tgdecl *g = &r->tg[r->ntg++];
        size_t tl = strlen(type_text) + dims.n + 2;
        g->type = tr_malloc(tl);
        if (g->type)
            snprintf(g->type, tl, "%s%s", type_text, dims.p ? dims.p : "");
        g->name = name;
        g->function = xstrdup(r, fname ? fname : "");
        g->line = T(r, i)->line;
        char head[600], tail[160];
        snprintf(head, sizeof head, "auto &%s = *::metal::__trmtl::tg_alloc<", name);
        snprintf(tail, sizeof tail, ", %ld>(__trmtl_sites[%d])", align, site);
        if (d == 0)
            set_repl(r, i, head);
        else {
            /* the comma before this declarator closes the previous one (its tail is in the comma's pre) */
            sbuf o = {0};
            sb_printf(&o, "; %s%s ", head, type_text);
            char *txt = sb_dup(&o);
            sb_free(&o);
            tok *comma = T(r, st[d] - 1);
            tr_dealloc(comma->repl);
            comma->repl = txt;
        }
        T(r, (size_t)nm)->drop = 1;
        add_pre(r, en[d], tail);
        sb_free(&dims);
    }
    tr_dealloc(type_text);
}

/* `typedef T name __attribute__((ext_vector_type(N)));` and `using name = T __attribute__(...)`. */
static void ext_vector(rw *r, size_t i)
{
    size_t e = i + 1;
    long at = -1;
    while (e < r->nS && !is_p(r, e, ";") && !is_p(r, e, "{")) {
        if (is_id(r, e, "__attribute__") && is_p(r, e + 1, "(") && r->match[e + 1] > 0) {
            for (size_t q = e; q < (size_t)r->match[e + 1]; q++)
                if (is_id(r, q, "ext_vector_type") || is_id(r, q, "__ext_vector_type__"))
                    at = (long)e;
            e = (size_t)r->match[e + 1] + 1;
            continue;
        }
        e++;
    }
    if (at < 0 || !is_p(r, e, ";"))
        return;
    size_t ae = (size_t)r->match[(size_t)at + 1];
    char nbuf[64] = "";
    for (size_t q = (size_t)at; q < ae; q++)
        if ((is_id(r, q, "ext_vector_type") || is_id(r, q, "__ext_vector_type__")) && is_p(r, q + 1, "(")) {
            char *x = join(r, q + 2, (size_t)r->match[q + 1], 0);
            if (x)
                snprintf(nbuf, sizeof nbuf, "%s", x);
            tr_dealloc(x);
        }
    size_t ta, tb;             /* type tokens [ta, tb) */
    if (teq(r, i, "typedef")) {
        ta = i + 1;
        long nm = -1;
        for (size_t q = i + 1; q < e; q++) {
            if (q == (size_t)at) {
                q = ae;
                continue;
            }
            if (is_ident(r, q))
                nm = (long)q;
        }
        if (nm < 0)
            return;
        tb = (size_t)at < (size_t)nm ? (size_t)at : (size_t)nm;
    } else {
        size_t q = i + 1;
        while (q < e && !is_p(r, q, "="))
            q++;
        ta = q + 1;
        tb = (size_t)at;
    }
    if (ta >= tb)
        return;
    add_pre(r, ta, "::metal::vec<");
    char post[96];
    snprintf(post, sizeof post, ", %s> ", nbuf);
    add_pre(r, tb, post);
    drop_range(r, (size_t)at, ae);
}

/* A function header whose '(' is at significant index i and whose name is at nm (NS or CLASS scope).  Returns the
 * index of the body's '{' or -1 when this is not a definition. */
static long function_body(rw *r, size_t i)
{
    if (r->match[i] < 0)
        return -1;
    size_t k = (size_t)r->match[i] + 1;
    while (k < r->nS) {
        long ae = attr_end(r, k);
        if (ae >= 0) {
            k = (size_t)ae + 1;
            continue;
        }
        if (teq(r, k, "const") || teq(r, k, "volatile") || teq(r, k, "override") || teq(r, k, "final") ||
            is_space_kw(r, k) || is_p(r, k, "&") || is_p(r, k, "&&") || teq(r, k, "mutable")) {
            k++;
            continue;
        }
        if (teq(r, k, "noexcept") || teq(r, k, "__attribute__")) {
            k++;
            if (is_p(r, k, "(") && r->match[k] > 0)
                k = (size_t)r->match[k] + 1;
            continue;
        }
        if (is_p(r, k, "->") || teq(r, k, "requires")) {
            /* trailing return type or constraint: up to the body */
            while (k < r->nS && !is_p(r, k, "{") && !is_p(r, k, ";"))
                k++;
            continue;
        }
        if (is_p(r, k, ":")) {
            /* constructor initializer list */
            k++;
            while (k < r->nS && !is_p(r, k, ";")) {
                if (is_p(r, k, "{") && !(is_ident(r, k - 1) || is_p(r, k - 1, ">")))
                    return (long)k;
                if ((is_p(r, k, "(") || is_p(r, k, "{")) && r->match[k] > (long)k)
                    k = (size_t)r->match[k];
                k++;
            }
            return -1;
        }
        break;
    }
    return is_p(r, k, "{") ? (long)k : -1;
}

/* Template parameter names of a template header <...> spanning (a, b). */
static void template_names(rw *r, size_t a, size_t b, char ***names, int *n)
{
    size_t st[32], en[32];
    int np = split_params(r, a, b, st, en, 32);
    *names = tr_calloc((size_t)(np ? np : 1), sizeof **names);
    *n = 0;
    if (!*names) {
        r->oom = 1;
        return;
    }
    for (int p = 0; p < np; p++) {
        long nm = -1;
        for (size_t k = st[p]; k < en[p]; k++) {
            if (is_p(r, k, "="))
                break;
            if (is_ident(r, k) && !teq(r, k, "typename") && !teq(r, k, "class"))
                nm = (long)k;
        }
        if (nm >= 0)
            (*names)[(*n)++] = tstr(r, (size_t)nm);
    }
}

/* Substitute template parameter names in text by the instance's arguments. */
static char *substitute(rw *r, const char *text, char **names, int n, char **args)
{
    sbuf o = {0};
    const char *p = text;
    while (*p) {
        if (is_idstart((unsigned char)*p)) {
            const char *q = p;
            while (is_idchar((unsigned char)*q))
                q++;
            int done = 0;
            for (int k = 0; k < n && !done; k++)
                if (args[k] && strlen(names[k]) == (size_t)(q - p) && memcmp(names[k], p, (size_t)(q - p)) == 0 &&
                    (p == text || p[-1] != ':')) {
                    sb_puts(&o, args[k]);
                    done = 1;
                }
            if (!done)
                sb_putn(&o, p, (size_t)(q - p));
            p = q;
        } else
            sb_putn(&o, p++, 1);
    }
    char *s = sb_dup(&o);
    sb_free(&o);
    if (!s)
        r->oom = 1;
    return s;
}

static kernel *new_kernel(rw *r)
{
    GROW(r, r->k, r->nk, r->capk);
    if (r->oom)
        return NULL;
    kernel *k = &r->k[r->nk++];
    memset(k, 0, sizeof *k);
    return k;
}

/* `template [[host_name("x")]] … name<args>…;` at i: an explicit instantiation (hidden from the output). */
static size_t explicit_instantiation(rw *r, size_t i)
{
    size_t e = i + 1;
    char *host = NULL;
    long nm = -1, la = -1, lb = -1;
    while (e < r->nS && !is_p(r, e, ";")) {
        long ae = attr_end(r, e);
        if (ae >= 0) {
            size_t a0, a1;
            if (attr_find(r, e, (size_t)ae, "host_name", &a0, &a1) >= 0 && a0 < a1 && T(r, a0)->kind == TK_STR &&
                !host)
                host = xstrndup(r, TX(r, a0) + 1, T(r, a0)->len - 2);
            e = (size_t)ae + 1;
            continue;
        }
        if (nm < 0 && is_ident(r, e) && is_p(r, e + 1, "<")) {
            for (int k = 0; k < r->nk; k++)
                if (r->k[k].is_template && r->k[k].function && is_id(r, e, r->k[k].function)) {
                    nm = (long)e;
                    /* template arguments: to the matching '>' */
                    int depth = 1;
                    size_t q = e + 2;
                    for (; q < r->nS && depth > 0; q++) {
                        if (is_p(r, q, "<"))
                            depth++;
                        else if (is_p(r, q, ">"))
                            depth--;
                        else if (is_p(r, q, ">>"))
                            depth -= 2;
                        else if ((is_p(r, q, "(") || is_p(r, q, "[")) && r->match[q] > (long)q)
                            q = (size_t)r->match[q];
                    }
                    la = (long)e + 2;
                    lb = (long)q - 1;
                    break;
                }
        }
        if ((is_p(r, e, "(") || is_p(r, e, "[") || is_p(r, e, "{")) && r->match[e] > (long)e)
            e = (size_t)r->match[e];
        e++;
    }
    if (e >= r->nS)
        e = r->nS - 1;
    hide_range(r, i, e);
    if (nm >= 0) {
        kernel *tpl = NULL;
        for (int k = 0; k < r->nk; k++)
            if (r->k[k].is_template && is_id(r, (size_t)nm, r->k[k].function))
                tpl = &r->k[k];
        kernel *k = tpl ? new_kernel(r) : NULL;
        if (k) {
            tpl = NULL;
            for (int q = 0; q < r->nk - 1; q++)
                if (r->k[q].is_template && is_id(r, (size_t)nm, r->k[q].function))
                    tpl = &r->k[q];
            char *args = join(r, (size_t)la, (size_t)lb, 0);
            size_t st[32], en[32];
            int na = split_params(r, (size_t)la, (size_t)lb, st, en, 32);
            char *argv[32] = {0};
            for (int a = 0; a < na && a < 32; a++)
                argv[a] = join(r, st[a], en[a], 0);
            k->tpl_args = args;
            k->function = xstrdup(r, tpl->function);
            sbuf fe = {0};
            sb_printf(&fe, "%s<%s>", tpl->func_expr, args ? args : "");
            k->func_expr = sb_dup(&fe);
            sb_free(&fe);
            if (host)
                k->host_name = host, host = NULL;
            else
                k->host_name = xstrdup(r, k->func_expr);
            k->line = T(r, i)->line;
            k->unsupported = tpl->unsupported ? xstrdup(r, tpl->unsupported) : NULL;
            k->nparams = tpl->nparams;
            k->params = tr_calloc((size_t)(tpl->nparams ? tpl->nparams : 1), sizeof *k->params);
            if (!k->params)
                r->oom = 1;
            for (int p = 0; k->params && p < tpl->nparams; p++) {
                param *s = &tpl->params[p], *d = &k->params[p];
                *d = *s;
                d->name = s->name ? xstrdup(r, s->name) : NULL;
                d->type = s->type ? substitute(r, s->type, tpl->tpl_names, tpl->ntpl < na ? tpl->ntpl : na, argv) : NULL;
                d->elem_type = s->elem_type ? substitute(r, s->elem_type, tpl->tpl_names,
                                                         tpl->ntpl < na ? tpl->ntpl : na, argv) : NULL;
                d->index_expr = s->index_expr ? xstrdup(r, s->index_expr) : NULL;
                d->builtin = s->builtin ? xstrdup(r, s->builtin) : NULL;
            }
            for (int a = 0; a < 32; a++)
                tr_dealloc(argv[a]);
        }
    }
    tr_dealloc(host);
    return e;
}

static char *ns_path(rw *r, int *anon)
{
    sbuf o = {0};
    *anon = 0;
    for (int s = 0; s < r->nsc; s++)
        if (r->sc[s].kind == SC_NS && r->sc[s].ns) {
            if (!r->sc[s].ns[0]) {
                if (s > 0)
                    *anon = 1;
                continue;
            }
            if (o.n)
                sb_puts(&o, "::");
            sb_puts(&o, r->sc[s].ns);
        }
    char *p = sb_dup(&o);
    sb_free(&o);
    if (!p)
        r->oom = 1;
    return p;
}

static void walk(rw *r)
{
    walkstate w;
    memset(&w, 0, sizeof w);
    w.pending_body = -1;
    w.tpl_a = w.tpl_b = -1;
    w.tpl_header_end = -1;
    r->nsc = 1;
    memset(&r->sc[0], 0, sizeof r->sc[0]);
    r->sc[0].kind = SC_NS;
    r->sc[0].ns = xstrdup(r, "");
    for (size_t i = 0; i < r->nS && !r->oom; i++) {
        scope *sc = top(r);
        tok *t = T(r, i);
        int ns_level = sc->kind == SC_NS || sc->kind == SC_CLASS;
        int in_fn = sc->kind == SC_FUNC || sc->kind == SC_BLOCK;
        int member = i > 0 && (is_p(r, i - 1, ".") || is_p(r, i - 1, "->") || is_p(r, i - 1, "::"));

        /* attributes */
        long ae = attr_end(r, i);
        if (ae >= 0) {
            size_t a0, a1;
            int is_kernel = attr_find(r, i, (size_t)ae, "kernel", NULL, NULL) >= 0;
            if (attr_find(r, i, (size_t)ae, "vertex", NULL, NULL) >= 0)
                w.stage = STAGE_VERTEX;
            if (attr_find(r, i, (size_t)ae, "fragment", NULL, NULL) >= 0)
                w.stage = STAGE_FRAGMENT;
            if (attr_find(r, i, (size_t)ae, "host_name", &a0, &a1) >= 0 && a0 < a1 && T(r, a0)->kind == TK_STR) {
                tr_dealloc(w.host_name);
                w.host_name = xstrndup(r, TX(r, a0) + 1, T(r, a0)->len - 2);
            }
            drop_range(r, i, (size_t)ae);
            if (is_kernel && ns_level) {
                w.stage = STAGE_KERNEL;
                T(r, i)->drop = 0;
                set_repl(r, i, "static");
            }
            i = (size_t)ae;
            continue;
        }

        if (t->kind == TK_NUM) {
            literal(r, i);
            continue;
        }

        if (t->kind == TK_ID && !member) {
            if (teq(r, i, "is_function_constant_defined") && is_p(r, i + 1, "(") && is_ident(r, i + 2) &&
                is_p(r, i + 3, ")")) {
                char buf[300];
                snprintf(buf, sizeof buf, "(__trmtl_fcdef_%.*s)", (int)T(r, i + 2)->len, TX(r, i + 2));
                set_repl(r, i, buf);
                drop_range(r, i + 1, i + 3);
                i += 3;
                continue;
            }
            if (ns_level && sc->paren == 0) {
                if (teq(r, i, "kernel") || teq(r, i, "vertex") || teq(r, i, "fragment")) {
                    if (is_ident(r, i + 1) || is_p(r, i + 1, "::")) {
                        w.stage = teq(r, i, "kernel") ? STAGE_KERNEL : teq(r, i, "vertex") ? STAGE_VERTEX : STAGE_FRAGMENT;
                        if (w.stage == STAGE_KERNEL)
                            set_repl(r, i, "static");
                        continue;
                    }
                }
                if (teq(r, i, "constant")) {
                    program_constant(r, i);
                    continue;
                }
                if (teq(r, i, "template")) {
                    if (is_p(r, i + 1, "<")) {
                        int depth = 1;
                        size_t q = i + 2;
                        for (; q < r->nS && depth > 0; q++) {
                            if (is_p(r, q, "<"))
                                depth++;
                            else if (is_p(r, q, ">"))
                                depth--;
                            else if (is_p(r, q, ">>"))
                                depth -= 2;
                            else if ((is_p(r, q, "(") || is_p(r, q, "[")) && r->match[q] > (long)q)
                                q = (size_t)r->match[q];
                        }
                        w.tpl_a = (long)i + 2;
                        w.tpl_b = (long)q - 1;
                        w.tpl_header_end = (long)q - 1;
                        continue;      /* the header's tokens are rewritten like any others */
                    }
                    i = explicit_instantiation(r, i);
                    reset_decl(r, &w, i + 1);
                    continue;
                }
                if ((teq(r, i, "struct") || teq(r, i, "class") || teq(r, i, "union")) && (long)i > w.tpl_header_end)
                    w.pending_class = 1;
                if (teq(r, i, "enum"))
                    w.pending_enum = 1;
                if (teq(r, i, "namespace") && !(i > 0 && teq(r, i - 1, "using"))) {
                    tr_dealloc(w.pending_ns);
                    w.pending_ns = NULL;
                    size_t q = i + 1;
                    sbuf o = {0};
                    while (q < r->nS && (is_ident(r, q) || is_p(r, q, "::"))) {
                        sb_putn(&o, TX(r, q), T(r, q)->len);
                        q++;
                    }
                    w.pending_ns = sb_dup(&o);
                    sb_free(&o);
                    w.pending_ns_set = 1;
                }
            }
            if ((teq(r, i, "typedef") || teq(r, i, "using")) && (ns_level || in_fn))
                ext_vector(r, i);
            if (in_fn && sc->paren == 0 && (teq(r, i, "threadgroup") || teq(r, i, "constant"))) {
                int stmt = i > 0 && (is_p(r, i - 1, ";") || is_p(r, i - 1, "{") || is_p(r, i - 1, "}") ||
                                     is_p(r, i - 1, ":"));
                if (stmt && teq(r, i, "threadgroup")) {
                    threadgroup_decl(r, i);
                    continue;
                }
                if (stmt && teq(r, i, "constant")) {
                    /* local constant: static const for initialised arrays */
                    size_t e = i + 1;
                    int arr = 0, init = 0;
                    while (e < r->nS && !is_p(r, e, ";")) {
                        if (is_p(r, e, "[") && !init)
                            arr = 1;
                        if (is_p(r, e, "="))
                            init = 1;
                        if ((is_p(r, e, "(") || is_p(r, e, "[") || is_p(r, e, "{")) && r->match[e] > (long)e)
                            e = (size_t)r->match[e];
                        e++;
                    }
                    int adj = teq(r, i + 1, "const");
                    set_repl(r, i, arr && init ? (adj ? "static" : "static const") : (adj ? "" : "const"));
                    continue;
                }
            }
            if (teq(r, i, "constant")) {
                if (teq(r, i + 1, "const") || (i > 0 && teq(r, i - 1, "const")))
                    t->drop = 1;
                else
                    set_repl(r, i, "const");
                continue;
            }
            if (is_space_kw(r, i)) {
                t->drop = 1;
                continue;
            }
        }

        if (t->kind == TK_ID && i > 0 && (is_p(r, i - 1, ".") || is_p(r, i - 1, "->"))) {
            swizzle(r, i);
            continue;
        }

        if (t->kind != TK_PUNCT)
            continue;

        if (is_p(r, i, "(") || is_p(r, i, "[")) {
            if (is_p(r, i, "(") && ns_level && sc->paren == 0 && i > 0 && (long)i > w.tpl_header_end) {
                size_t nm = i - 1;
                int ok = 0;
                if (is_ident(r, nm) && !not_function_name(r, nm))
                    ok = 1;
                else if (is_p(r, nm, ">") || is_p(r, nm, ">>")) {
                    /* foo<args>( : find the template name */
                    int depth = 0;
                    long q = (long)nm;
                    for (; q >= 0; q--) {
                        if (is_p(r, (size_t)q, ">"))
                            depth++;
                        else if (is_p(r, (size_t)q, ">>"))
                            depth += 2;
                        else if (is_p(r, (size_t)q, "<") && --depth == 0)
                            break;
                    }
                    if (q > 0 && is_ident(r, (size_t)q - 1)) {
                        nm = (size_t)q - 1;
                        ok = 1;
                    }
                } else if (nm > 0 && is_id(r, nm - 1, "operator"))
                    ok = 1;
                long body = ok ? function_body(r, i) : -1;
                if (body >= 0) {
                    int anon = 0;
                    char *ns = ns_path(r, &anon);
                    char *fname = tstr(r, nm);
                    GROW(r, r->fns, r->nfn, r->capfn);
                    if (r->oom) {
                        tr_dealloc(ns);
                        tr_dealloc(fname);
                        break;
                    }
                    fnrec *f = &r->fns[r->nfn++];
                    memset(f, 0, sizeof *f);
                    f->name = fname;
                    f->ns = ns;
                    f->line = T(r, nm)->line;
                    f->file = T(r, nm)->file;
                    {
                        char *a = signature(r, i + 1, (size_t)r->match[i], 1);
                        char *b = signature(r, i + 1, (size_t)r->match[i], 0);
                        char *qa = join(r, (size_t)r->match[i] + 1, (size_t)body, 1);
                        char *qb = join(r, (size_t)r->match[i] + 1, (size_t)body, 0);
                        sbuf o1 = {0}, o2 = {0};
                        sb_printf(&o1, "%s(%s)%s%s%s", fname ? fname : "", a ? a : "",
                                  sc->kind == SC_CLASS ? " member" : "", qa && qa[0] ? " " : "", qa ? qa : "");
                        sb_printf(&o2, "%s(%s)%s%s", fname ? fname : "", b ? b : "", qb && qb[0] ? " " : "",
                                  qb ? qb : "");
                        f->norm = sb_dup(&o1);
                        f->orig = sb_dup(&o2);
                        sb_free(&o1);
                        sb_free(&o2);
                        tr_dealloc(a);
                        tr_dealloc(b);
                        tr_dealloc(qa);
                        tr_dealloc(qb);
                    }
                    w.pending_body = body;
                    w.pending_fn = r->nfn - 1;
                    tr_dealloc(w.pending_fname);
                    w.pending_fname = xstrdup(r, fname ? fname : "");
                    if (w.stage == STAGE_VERTEX || w.stage == STAGE_FRAGMENT) {
                        size_t end = r->match[body] > 0 ? (size_t)r->match[body] : (size_t)body;
                        hide_range(r, sc->decl_begin, end);
                        GROW(r, r->skipped, r->nskip, r->capskip);
                        if (!r->oom) {
                            r->skipped[r->nskip].name = xstrdup(r, fname ? fname : "");
                            r->skipped[r->nskip].stage = xstrdup(r, w.stage == STAGE_VERTEX ? "vertex" : "fragment");
                            r->skipped[r->nskip].line = T(r, nm)->line;
                            r->nskip++;
                        }
                        i = end;
                        reset_decl(r, &w, end + 1);
                        w.pending_body = -1;
                        continue;
                    }
                    if (w.stage == STAGE_KERNEL && sc->kind == SC_NS) {
                        kernel *k = new_kernel(r);
                        if (k) {
                            k->function = xstrdup(r, fname ? fname : "");
                            sbuf fe = {0};
                            if (ns && ns[0] && !anon)
                                sb_printf(&fe, "%s::%s", ns, fname ? fname : "");
                            else
                                sb_puts(&fe, fname ? fname : "");
                            k->func_expr = sb_dup(&fe);
                            sb_free(&fe);
                            k->host_name = xstrdup(r, w.host_name ? w.host_name : (fname ? fname : ""));
                            k->line = T(r, nm)->line;
                            kernel_params(r, k, i + 1, (size_t)r->match[i]);
                            if (w.tpl_a >= 0) {
                                k->is_template = 1;
                                template_names(r, (size_t)w.tpl_a, (size_t)w.tpl_b, &k->tpl_names, &k->ntpl);
                            }
                        }
                    }
                }
            }
            sc->paren++;
            continue;
        }
        if (is_p(r, i, ")") || is_p(r, i, "]")) {
            if (sc->paren > 0)
                sc->paren--;
            continue;
        }
        if (is_p(r, i, "{")) {
            if (r->nsc >= 255) {
                error_at(r, t, "braces nested too deeply");
                break;
            }
            scope ns;
            memset(&ns, 0, sizeof ns);
            ns.fn = -1;
            if ((long)i == w.pending_body) {
                ns.kind = SC_FUNC;
                ns.fn = w.pending_fn;
                ns.fname = w.pending_fname;
                w.pending_fname = NULL;
                w.pending_body = -1;
            } else if (ns_level && sc->paren == 0) {
                if (w.pending_ns_set) {
                    ns.kind = SC_NS;
                    ns.ns = w.pending_ns ? w.pending_ns : xstrdup(r, "");
                    w.pending_ns = NULL;
                    w.pending_ns_set = 0;
                } else if (w.pending_class)
                    ns.kind = SC_CLASS;
                else if (i > 0 && T(r, i - 1)->kind == TK_STR) {
                    ns.kind = SC_NS;
                    ns.ns = xstrdup(r, "");
                } else
                    ns.kind = SC_INIT;
            } else if (in_fn && sc->paren == 0 &&
                       (is_p(r, i - 1, ")") || is_p(r, i - 1, ";") || is_p(r, i - 1, "{") || is_p(r, i - 1, "}") ||
                        is_p(r, i - 1, ":") || is_p(r, i - 1, "]") || teq(r, i - 1, "else") || teq(r, i - 1, "do") ||
                        teq(r, i - 1, "mutable") || teq(r, i - 1, "try")))
                ns.kind = SC_BLOCK;
            else if (in_fn && is_p(r, i - 1, ")"))
                ns.kind = SC_BLOCK;      /* lambda body inside a call */
            else
                ns.kind = SC_INIT;
            if (ns.kind == SC_NS || ns.kind == SC_CLASS)
                reset_decl(r, &w, i + 1);
            r->sc[r->nsc++] = ns;
            top(r)->decl_begin = i + 1;
            continue;
        }
        if (is_p(r, i, "}")) {
            if (r->nsc > 1) {
                scope *o = top(r);
                int was_fn = o->kind == SC_FUNC;
                tr_dealloc(o->fname);
                tr_dealloc(o->ns);
                r->nsc--;
                if (was_fn || o->kind == SC_NS)
                    reset_decl(r, &w, i + 1);
            }
            continue;
        }
        if (is_p(r, i, ";") && ns_level && sc->paren == 0) {
            reset_decl(r, &w, i + 1);
            continue;
        }
    }
    while (r->nsc > 0) {
        tr_dealloc(r->sc[r->nsc - 1].fname);
        tr_dealloc(r->sc[r->nsc - 1].ns);
        r->nsc--;
    }
    tr_dealloc(w.pending_ns);
    tr_dealloc(w.pending_fname);
    tr_dealloc(w.host_name);
}

/* Address-space-only overloads: same namespace, name and erased signature, different source signatures. */
static void check_overloads(rw *r)
{
    for (int a = 0; a < r->nfn; a++)
        for (int b = a + 1; b < r->nfn; b++) {
            fnrec *x = &r->fns[a], *y = &r->fns[b];
            if (!x->norm || !y->norm || !x->orig || !y->orig || strcmp(x->ns, y->ns) || strcmp(x->norm, y->norm))
                continue;
            if (strcmp(x->orig, y->orig) == 0)
                continue;      /* a plain redefinition: the C++ compiler reports it */
            tok where = {0};
            where.line = y->line;
            where.file = y->file;
            error_at(r, &where,
                     "'%s' and '%s' (line %d) differ only in address space; the emulator erases address spaces "
                     "(METAL.md §2.1), so the two definitions would collide",
                     y->orig, x->orig, x->line);
        }
}

/* ---- output ----------------------------------------------------------------------------------------------------- */

static void c_string(sbuf *o, const char *s)
{
    sb_puts(o, "\"");
    for (; s && *s; s++) {
        if (*s == '"' || *s == '\\')
            sb_putn(o, "\\", 1);
        if (*s == '\n')
            sb_puts(o, "\\n");
        else
            sb_putn(o, s, 1);
    }
    sb_puts(o, "\"");
}

static const char *kind_name(int k)
{
    static const char *const n[] = {"buffer", "texture", "sampler", "threadgroup", "builtin"};
    return k >= 0 && k <= 4 ? n[k] : "?";
}
static const char *space_name(int s)
{
    static const char *const n[] = {"none", "device", "constant", "threadgroup", "thread"};
    return s >= 0 && s <= 4 ? n[s] : "?";
}
static const char *passing_name(int p)
{
    static const char *const n[] = {"pointer", "reference", "value"};
    return p >= 0 && p <= 2 ? n[p] : "?";
}

static void emit_user(rw *r, sbuf *o)
{
    for (size_t k = 0; k < r->nt; k++) {
        tok *t = &r->t[k];
        if (t->hide) {
            if (t->kind == TK_NL)
                sb_puts(o, "\n");
            else if (t->kind == TK_WS) {
                for (uint32_t q = 0; q < t->len; q++)
                    if (r->src[t->off + q] == '\n')
                        sb_puts(o, "\n");
            }
            continue;
        }
        if (t->kind == TK_DIR) {
            const char *s = r->src + t->off;
            size_t q = 1;
            while (q < t->len && (s[q] == ' ' || s[q] == '\t'))
                q++;
            if (t->len - q >= 6 && memcmp(s + q, "pragma", 6) == 0)
                continue;
        }
        if (t->pre)
            sb_puts(o, t->pre);
        if (t->drop)
            continue;
        if (t->repl)
            sb_puts(o, t->repl);
        else
            sb_putn(o, r->src + t->off, t->len);
    }
}

static void emit_generated(rw *r, sbuf *o)
{
    sb_puts(o, "\n# 1 \"<metal-emu generated>\"\n");
    int nlaunch = 0;
    for (int ki = 0; ki < r->nk; ki++) {
        kernel *k = &r->k[ki];
        if (k->is_template || k->unsupported)
            continue;
        sb_printf(o, "static void __trmtl_L%d(const trmtl_lane *__L) {\n  typedef decltype(&%s) __F; (void)__L;\n  %s(",
                  ki, k->func_expr, k->func_expr);
        for (int p = 0; p < k->nparams; p++) {
            param *P = &k->params[p];
            char idx[256];
            if (P->index_expr && P->kind != P_BUILTIN)
                snprintf(idx, sizeof idx, "(%s)", P->index_expr);
            else
                snprintf(idx, sizeof idx, "%d", P->index);
            sb_printf(o, "%s\n    ::metal::__trmtl::bind<::metal::__trmtl::arg_t<__F, %d>, %d, %s>(__L)", p ? "," : "",
                      p, P->kind, idx);
        }
        sb_puts(o, ");\n}\n");
        if (k->nparams) {
            sb_printf(o, "static const trmtl_param_desc __trmtl_P%d[] = {\n", ki);
            for (int p = 0; p < k->nparams; p++) {
                param *P = &k->params[p];
                char idx[256];
                if (P->index_expr && P->kind != P_BUILTIN)
                    snprintf(idx, sizeof idx, "(int)(%s)", P->index_expr);
                else
                    snprintf(idx, sizeof idx, "%d", P->index);
                sb_puts(o, "  {");
                c_string(o, P->name);
                sb_printf(o, ", %d, %s, %d, %d, %d, %d, ", P->kind, idx, P->explicit_index, P->space, P->passing,
                          P->is_const);
                c_string(o, P->type);
                sb_puts(o, ", ");
                c_string(o, P->elem_type);
                if (P->kind == P_BUFFER || P->kind == P_THREADGROUP)
                    sb_printf(o, ", ::metal::__trmtl::elem_size<::metal::__trmtl::arg_t<decltype(&%s), %d>>(), "
                                 "::metal::__trmtl::elem_align<::metal::__trmtl::arg_t<decltype(&%s), %d>>()",
                              k->func_expr, p, k->func_expr, p);
                else
                    sb_puts(o, ", 0, 0");
                sb_printf(o, ", %d, %d},\n", P->tex_dim, P->tex_access);
            }
            sb_puts(o, "};\n");
        }
        nlaunch++;
    }
    sb_puts(o, "static const trmtl_kernel_desc __trmtl_K[] = {\n");
    for (int ki = 0; ki < r->nk; ki++) {
        kernel *k = &r->k[ki];
        if (k->is_template || k->unsupported)
            continue;
        sb_puts(o, "  {");
        c_string(o, k->host_name);
        sb_puts(o, ", ");
        c_string(o, k->function);
        sb_printf(o, ", %d, %d, ", k->line, k->nparams);
        if (k->nparams)
            sb_printf(o, "__trmtl_P%d", ki);
        else
            sb_puts(o, "nullptr");
        sb_printf(o, ", __trmtl_L%d},\n", ki);
    }
    if (!nlaunch)
        sb_puts(o, "  {nullptr, nullptr, 0, 0, nullptr, nullptr}\n");
    sb_puts(o, "};\n");
    sb_puts(o, "static const trmtl_fc_desc __trmtl_FC[] = {\n");
    for (int f = 0; f < r->nfc; f++) {
        sb_puts(o, "  {");
        c_string(o, r->fc[f].name);
        sb_printf(o, ", (int)(%s), (uint32_t)sizeof(%s), ", r->fc[f].index_expr ? r->fc[f].index_expr : "0",
                  r->fc[f].name);
        c_string(o, r->fc[f].type);
        sb_puts(o, "},\n");
    }
    if (!r->nfc)
        sb_puts(o, "  {nullptr, 0, 0, nullptr}\n");
    sb_puts(o, "};\n");
    sb_puts(o, "static const trmtl_tg_decl __trmtl_TG[] = {\n");
    for (int g = 0; g < r->ntg; g++) {
        sb_puts(o, "  {");
        c_string(o, r->tg[g].name);
        sb_puts(o, ", ");
        c_string(o, r->tg[g].type);
        sb_puts(o, ", ");
        c_string(o, r->tg[g].function);
        sb_printf(o, ", %d, %d},\n", r->tg[g].line, g);
    }
    if (!r->ntg)
        sb_puts(o, "  {nullptr, nullptr, nullptr, 0, 0}\n");
    sb_puts(o, "};\n");
    sb_puts(o, "static void __trmtl_set_fc(const trmtl_fc_values *__v) {\n  (void)__v;\n");
    for (int f = 0; f < r->nfc; f++) {
        const char *nm = r->fc[f].name;
        const char *ix = r->fc[f].index_expr ? r->fc[f].index_expr : "0";
        sb_printf(o, "  static_assert(sizeof(%s) <= 8, \"function constant larger than 8 bytes\");\n", nm);
        sb_printf(o, "  if (__v->defined[(int)(%s)]) { __builtin_memcpy((void *)&%s, __v->bytes[(int)(%s)], sizeof %s); "
                     "__trmtl_fcdef_%s = true; } else { %s = {}; __trmtl_fcdef_%s = false; }\n",
                  ix, nm, ix, nm, nm, nm, nm);
    }
    for (int d = 0; d < r->ndv; d++) {
        char *expr = render(r, r->dv[d].expr_a, r->dv[d].expr_b);
        sb_printf(o, "  %s = (%s);\n", r->dv[d].name, expr ? expr : "0");
        tr_dealloc(expr);
    }
    sb_puts(o, "}\n");
    sb_puts(o, "static void __trmtl_init(const trmtl_rt_api *__a) { ::metal::__trmtl::api = __a; }\n");
    sb_puts(o, "extern \"C\" __attribute__((visibility(\"default\"))) const trmtl_module_desc trmtl_module = {\n  "
               "TRMTL_ABI_VERSION, ");
    c_string(o, r->path);
    sb_printf(o, ", %d, __trmtl_K, %d, __trmtl_FC, %d, __trmtl_TG, __trmtl_sites, __trmtl_init, __trmtl_set_fc};\n",
              nlaunch, r->nfc, r->ntg);
}

static json_t *meta_json(rw *r)
{
    json_t *m = json_object(), *ks = json_array(), *fcs = json_array(), *tgs = json_array(), *sk = json_array();
    json_object_set_new(m, "schema", json_string("trellis.metal_emu_module/1"));
    json_object_set_new(m, "source", json_string(r->path));
    for (int ki = 0; ki < r->nk; ki++) {
        kernel *k = &r->k[ki];
        if (k->is_template && !k->unsupported) {
            /* the definition itself is listed under its instances only */
        }
        json_t *o = json_object(), *ps = json_array(), *tm = json_array();
        json_object_set_new(o, "name", json_string(k->host_name ? k->host_name : ""));
        json_object_set_new(o, "function", json_string(k->function ? k->function : ""));
        json_object_set_new(o, "line", json_integer(k->line));
        json_object_set_new(o, "template", json_boolean(k->is_template));
        json_object_set_new(o, "template_args", k->tpl_args ? json_string(k->tpl_args) : json_null());
        json_object_set_new(o, "unsupported", k->unsupported ? json_string(k->unsupported) : json_null());
        for (int p = 0; p < k->nparams; p++) {
            param *P = &k->params[p];
            json_t *po = json_object();
            json_object_set_new(po, "name", json_string(P->name ? P->name : ""));
            json_object_set_new(po, "kind", json_string(kind_name(P->kind)));
            if (P->kind == P_BUILTIN) {
                json_object_set_new(po, "builtin", json_string(P->builtin ? P->builtin : ""));
            } else {
                json_object_set_new(po, "index", P->index_expr ? json_null() : json_integer(P->index));
                if (P->index_expr)
                    json_object_set_new(po, "index_expr", json_string(P->index_expr));
                json_object_set_new(po, "explicit_index", json_boolean(P->explicit_index));
            }
            json_object_set_new(po, "address_space", json_string(space_name(P->space)));
            json_object_set_new(po, "passing", json_string(passing_name(P->passing)));
            json_object_set_new(po, "const", json_boolean(P->is_const));
            json_object_set_new(po, "type", json_string(P->type ? P->type : ""));
            json_object_set_new(po, "elem_type", json_string(P->elem_type ? P->elem_type : ""));
            if (P->kind == P_TEXTURE) {
                json_object_set_new(po, "texture_type", json_integer(P->tex_dim));
                static const char *const acc[] = {"sample", "read", "write", "read_write"};
                json_object_set_new(po, "access", json_string(acc[P->tex_access & 3]));
            }
            json_array_append_new(ps, po);
        }
        json_object_set_new(o, "params", ps);
        for (int g = 0; g < r->ntg; g++)
            if (k->function && strcmp(r->tg[g].function, k->function) == 0) {
                json_t *go = json_object();
                json_object_set_new(go, "name", json_string(r->tg[g].name));
                json_object_set_new(go, "type", json_string(r->tg[g].type ? r->tg[g].type : ""));
                json_object_set_new(go, "line", json_integer(r->tg[g].line));
                json_object_set_new(go, "site", json_integer(g));
                json_array_append_new(tm, go);
            }
        json_object_set_new(o, "threadgroup_memory", tm);
        json_array_append_new(ks, o);
    }
    json_object_set_new(m, "kernels", ks);
    for (int f = 0; f < r->nfc; f++) {
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(r->fc[f].name));
        json_object_set_new(o, "index", r->fc[f].index >= 0 ? json_integer(r->fc[f].index) : json_null());
        json_object_set_new(o, "index_expr", json_string(r->fc[f].index_expr ? r->fc[f].index_expr : ""));
        json_object_set_new(o, "type", json_string(r->fc[f].type ? r->fc[f].type : ""));
        json_array_append_new(fcs, o);
    }
    json_object_set_new(m, "function_constants", fcs);
    for (int g = 0; g < r->ntg; g++) {
        json_t *o = json_object();
        json_object_set_new(o, "site", json_integer(g));
        json_object_set_new(o, "name", json_string(r->tg[g].name));
        json_object_set_new(o, "type", json_string(r->tg[g].type ? r->tg[g].type : ""));
        json_object_set_new(o, "function", json_string(r->tg[g].function));
        json_object_set_new(o, "line", json_integer(r->tg[g].line));
        json_array_append_new(tgs, o);
    }
    json_object_set_new(m, "threadgroup_decls", tgs);
    for (int s = 0; s < r->nskip; s++) {
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(r->skipped[s].name ? r->skipped[s].name : ""));
        json_object_set_new(o, "stage", json_string(r->skipped[s].stage ? r->skipped[s].stage : ""));
        json_object_set_new(o, "line", json_integer(r->skipped[s].line));
        json_array_append_new(sk, o);
    }
    json_object_set_new(m, "skipped_functions", sk);
    return m;
}

static void rw_free(rw *r)
{
    for (size_t i = 0; i < r->nt; i++) {
        tr_dealloc(r->t[i].pre);
        tr_dealloc(r->t[i].repl);
    }
    tr_dealloc(r->t);
    tr_dealloc(r->S);
    tr_dealloc(r->match);
    for (int i = 0; i < r->nfiles; i++)
        tr_dealloc(r->files[i]);
    tr_dealloc(r->files);
    sb_free(&r->err);
    for (size_t i = 0; i < r->nmem; i++)
        tr_dealloc(r->members[i]);
    tr_dealloc(r->members);
    for (int i = 0; i < r->nk; i++) {
        kernel *k = &r->k[i];
        for (int p = 0; p < k->nparams; p++)
            param_free(&k->params[p]);
        tr_dealloc(k->params);
        tr_dealloc(k->host_name);
        tr_dealloc(k->func_expr);
        tr_dealloc(k->function);
        tr_dealloc(k->unsupported);
        tr_dealloc(k->tpl_args);
        for (int q = 0; q < k->ntpl; q++)
            tr_dealloc(k->tpl_names[q]);
        tr_dealloc(k->tpl_names);
    }
    tr_dealloc(r->k);
    for (int i = 0; i < r->nfn; i++) {
        tr_dealloc(r->fns[i].name);
        tr_dealloc(r->fns[i].ns);
        tr_dealloc(r->fns[i].norm);
        tr_dealloc(r->fns[i].orig);
    }
    tr_dealloc(r->fns);
    for (int i = 0; i < r->ntg; i++) {
        tr_dealloc(r->tg[i].name);
        tr_dealloc(r->tg[i].type);
        tr_dealloc(r->tg[i].function);
    }
    tr_dealloc(r->tg);
    for (int i = 0; i < r->nfc; i++) {
        tr_dealloc(r->fc[i].name);
        tr_dealloc(r->fc[i].type);
        tr_dealloc(r->fc[i].index_expr);
    }
    tr_dealloc(r->fc);
    for (int i = 0; i < r->ndv; i++)
        tr_dealloc(r->dv[i].name);
    tr_dealloc(r->dv);
    for (int i = 0; i < r->nskip; i++) {
        tr_dealloc(r->skipped[i].name);
        tr_dealloc(r->skipped[i].stage);
    }
    tr_dealloc(r->skipped);
}

int trmtl_rewrite(const char *src, size_t n, const char *source_path, trmtl_rw_out *out)
{
    memset(out, 0, sizeof *out);
    rw r;
    memset(&r, 0, sizeof r);
    r.src = src;
    r.n = n;
    r.path = source_path;
    unsigned long mark = tr_json_mark();
    if (tokenize(&r) != 0) {
        rw_free(&r);
        return -2;
    }
    collect_members(&r);
    walk(&r);
    check_overloads(&r);
    sbuf o = {0};
    sb_puts(&o, "#include <metal_stdlib>\n");
    sb_printf(&o, "static uint32_t __trmtl_sites[%d];\n", r.ntg ? r.ntg : 1);
    emit_user(&r, &o);
    emit_generated(&r, &o);
    json_t *meta = meta_json(&r);
    char *probe = meta ? tr_json_dumps(meta, 0, mark) : NULL;
    int json_ok = probe != NULL;
    tr_dealloc(probe);
    if (r.oom || o.oom || !meta || !json_ok) {
        json_decref(meta);
        sb_free(&o);
        rw_free(&r);
        return -2;
    }
    out->cpp = o.p ? o.p : tr_strdup("");
    out->cpp_len = o.n;
    out->meta = meta;
    if (r.nerr) {
        out->errors = sb_dup(&r.err);
        out->nerrors = r.nerr;
        json_t *d = json_array();
        /* errors also go into the metadata */
        const char *p = out->errors;
        while (p && *p) {
            const char *e = strchr(p, '\n');
            size_t len = e ? (size_t)(e - p) : strlen(p);
            json_array_append_new(d, json_stringn(p, len));
            p += len + (e ? 1 : 0);
        }
        json_object_set_new(meta, "errors", d);
    } else
        json_object_set_new(meta, "errors", json_array());
    rw_free(&r);
    return out->nerrors ? -1 : 0;
}

void trmtl_rw_out_free(trmtl_rw_out *o)
{
    tr_dealloc(o->cpp);
    json_decref(o->meta);
    tr_dealloc(o->errors);
    memset(o, 0, sizeof *o);
}
