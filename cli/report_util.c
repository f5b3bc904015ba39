/*
 * report_util.c — the small pieces every `trellis report` file uses: the growable text buffer with escaping for
 * HTML, XML, Markdown and gnuplot, JSON accessors that accept "nan"/"inf"/"-inf", number formatting (value ± σ
 * rounded to the uncertainty), and the report model (tables, plots, sections).
 */
#include "report.h"
#include "trellis/alloc.h"

#include <math.h>
#include <stdarg.h>
#include <string.h>

/* ---- buffer ------------------------------------------------------------------------------------------------------ */

static int rb_reserve(rpt_buf *b, size_t more)
{
    if (b->oom)
        return 0;
    if (b->n + more + 1 <= b->cap)
        return 1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + more + 1)
        cap *= 2;
    char *s = tr_realloc(b->s, cap);
    if (!s) {
        b->oom = 1;
        return 0;
    }
    b->s = s;
    b->cap = cap;
    return 1;
}

void rb_putn(rpt_buf *b, const char *s, size_t n)
{
    if (!rb_reserve(b, n))
        return;
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
}

void rb_puts(rpt_buf *b, const char *s) { rb_putn(b, s, strlen(s)); }

void rb_printf(rpt_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[512];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        rb_putn(b, small, (size_t)n);
        return;
    }
    if (!rb_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

static void rb_escape(rpt_buf *b, const char *s, int xml)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '&': rb_puts(b, "&amp;"); break;
        case '<': rb_puts(b, "&lt;"); break;
        case '>': rb_puts(b, "&gt;"); break;
        case '"': rb_puts(b, "&quot;"); break;
        case '\'': rb_puts(b, "&#39;"); break;
        default:
            if (*p < 0x20 && *p != '\n' && *p != '\t' && *p != '\r') {
                if (!xml)
                    rb_putn(b, "?", 1);
                continue;   /* XML 1.0 forbids these characters even escaped */
            }
            rb_putn(b, (const char *)p, 1);
        }
    }
}

void rb_html(rpt_buf *b, const char *s) { rb_escape(b, s ? s : "", 0); }
void rb_xml(rpt_buf *b, const char *s) { rb_escape(b, s ? s : "", 1); }

void rb_md(rpt_buf *b, const char *s)
{
    for (const char *p = s ? s : ""; *p; p++) {
        if (*p == '|')
            rb_puts(b, "\\|");
        else if (*p == '\n' || *p == '\r' || *p == '\t')
            rb_putn(b, " ", 1);
        else
            rb_putn(b, p, 1);
    }
}

void rb_gp(rpt_buf *b, const char *s)
{
    for (const char *p = s ? s : ""; *p; p++) {
        if (*p == '\'')
            rb_puts(b, "''");
        else if (*p == '\n' || *p == '\r')
            rb_putn(b, " ", 1);
        else
            rb_putn(b, p, 1);
    }
}

const char *rb_str(const rpt_buf *b) { return b->n ? b->s : ""; }

void rb_free(rpt_buf *b)
{
    tr_dealloc(b->s);
    memset(b, 0, sizeof *b);
}

/* ---- JSON -------------------------------------------------------------------------------------------------------- */

int rj_num(const json_t *v, double *out)
{
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return 1;
    }
    const char *s = json_string_value(v);
    if (!s)
        return 0;
    if (!strcmp(s, "nan"))
        *out = NAN;
    else if (!strcmp(s, "inf"))
        *out = INFINITY;
    else if (!strcmp(s, "-inf"))
        *out = -INFINITY;
    else
        return 0;
    return 1;
}

double rj_get(const json_t *o, const char *key)
{
    double v;
    return rj_num(json_object_get(o, key), &v) ? v : RPT_NONE;
}

double rj_get2(const json_t *o, const char *k1, const char *k2) { return rj_get(json_object_get(o, k1), k2); }

const char *rj_str(const json_t *o, const char *key) { return json_string_value(json_object_get(o, key)); }

const char *rj_base(const char *path, char *buf, size_t size)
{
    size_t n = path ? strlen(path) : 0;
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/')
        b--;
    size_t len = n - b < size ? n - b : size - 1;
    if (len)
        memcpy(buf, path + b, len);
    buf[len] = '\0';
    return buf;
}

/* ---- formatting -------------------------------------------------------------------------------------------------- */

static char *rf_slot(void)
{
    static char slots[16][96];
    static unsigned next;
    return slots[next++ % 16];
}

static int rf_special(double v, char *s)
{
    if (isnan(v))
        strcpy(s, signbit(v) ? "—" : "nan");
    else if (isinf(v))
        strcpy(s, v > 0 ? "inf" : "-inf");
    else
        return 0;
    return 1;
}

const char *rf_num(double v, int sig)
{
    char *s = rf_slot();
    if (!rf_special(v, s))
        snprintf(s, 96, "%.*g", sig, v);
    return s;
}

const char *rf_fix(double v, int decimals)
{
    char *s = rf_slot();
    if (!rf_special(v, s))
        snprintf(s, 96, "%.*f", decimals, v);
    return s;
}

const char *rf_int(double v)
{
    char *s = rf_slot();
    if (!rf_special(v, s))
        snprintf(s, 96, "%.0f", v);
    return s;
}

/* Decimals that show two significant digits of u (0 for u ≥ 10). */
static int rf_decimals(double u)
{
    int d = 1 - (int)floor(log10(u));
    return d < 0 ? 0 : d > 12 ? 12 : d;
}

const char *rf_pm(double v, double unc)
{
    char *s = rf_slot();
    if (rf_special(v, s))
        return s;
    if (!isfinite(unc) || unc <= 0) {
        snprintf(s, 96, "%.6g", v);
        return s;
    }
    int d = rf_decimals(unc);
    snprintf(s, 96, "%.*f ± %.*f", d, v, d, unc);
    return s;
}

const char *rf_pct(double frac, double unc)
{
    char *s = rf_slot();
    if (rf_special(frac, s))
        return s;
    if (!isfinite(unc) || unc <= 0) {
        snprintf(s, 96, "%.2f %%", 100 * frac);
        return s;
    }
    int d = rf_decimals(100 * unc);
    snprintf(s, 96, "%.*f ± %.*f %%", d, 100 * frac, d, 100 * unc);
    return s;
}

/* ---- sections ---------------------------------------------------------------------------------------------------- */

static const char *const section_ids[] = {
#define RPT_SECTION_ID_(e, id, title) id,
    RPT_SECTIONS(RPT_SECTION_ID_)
#undef RPT_SECTION_ID_
};
static const char *const section_titles[] = {
#define RPT_SECTION_TITLE_(e, id, title) title,
    RPT_SECTIONS(RPT_SECTION_TITLE_)
#undef RPT_SECTION_TITLE_
};

const char *rpt_section_id(rpt_section s) { return section_ids[s]; }
const char *rpt_section_title(rpt_section s) { return section_titles[s]; }

/* ---- tables and plots -------------------------------------------------------------------------------------------- */

static char *vformat(const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    char *s = n < 0 ? NULL : tr_malloc((size_t)n + 1);
    if (s)
        vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 1;
    size_t c = *cap ? *cap * 2 : 8;
    while (c < need)
        c *= 2;
    void *p = tr_realloc(*arr, c * elem);
    if (!p)
        return 0;
    *arr = p;
    *cap = c;
    return 1;
}

static void table_free(rpt_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->ncol; i++)
        tr_dealloc(t->head[i]);
    for (size_t i = 0; i < t->ncell; i++)
        tr_dealloc(t->cell[i]);
    tr_dealloc(t->head);
    tr_dealloc(t->cell);
    tr_dealloc(t->id);
    tr_dealloc(t->title);
    tr_dealloc(t->note);
    tr_dealloc(t);
}

rpt_table *rpt_table_new(rpt_report *r, rpt_section s, const char *id, const char *title, size_t ncol,
                         const char *const *head)
{
    rpt_table *t = tr_calloc(1, sizeof *t);
    int ok = t && grow((void **)&r->tables, &r->ct, r->nt + 1, sizeof *r->tables);
    if (ok) {
        t->section = s;
        t->id = tr_strdup(id);
        t->title = tr_strdup(title);
        t->head = tr_calloc(ncol, sizeof *t->head);
        ok = t->id && t->title && t->head;
    }
    for (size_t i = 0; ok && i < ncol; i++, t->ncol = i)
        ok = (t->head[i] = tr_strdup(head[i])) != NULL;
    if (!ok) {
        r->oom = 1;
        table_free(t);
        return NULL;
    }
    r->tables[r->nt++] = t;
    return t;
}

void rpt_cell(rpt_report *r, rpt_table *t, const char *text)
{
    if (!t)
        return;
    char *c = tr_strdup(text ? text : "—");
    if (!c || !grow((void **)&t->cell, &t->cap, t->ncell + 1, sizeof *t->cell)) {
        tr_dealloc(c);
        r->oom = 1;
        return;
    }
    t->cell[t->ncell++] = c;
}

void rpt_cellf(rpt_report *r, rpt_table *t, const char *fmt, ...)
{
    if (!t)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *s = vformat(fmt, ap);
    va_end(ap);
    if (!s)
        r->oom = 1;
    else
        rpt_cell(r, t, s);
    tr_dealloc(s);
}

void rpt_note(rpt_report *r, rpt_table *t, const char *fmt, ...)
{
    if (!t)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *s = vformat(fmt, ap);
    va_end(ap);
    if (!s)
        r->oom = 1;
    tr_dealloc(t->note);
    t->note = s;
}

size_t rpt_rows(const rpt_table *t) { return t && t->ncol ? t->ncell / t->ncol : 0; }

rpt_plot *rpt_plot_new(rpt_report *r, rpt_section s, const char *id, const char *title, int width, int height)
{
    rpt_plot *p = tr_calloc(1, sizeof *p);
    if (!p || !grow((void **)&r->plots, &r->cp, r->np + 1, sizeof *r->plots) || !(p->id = tr_strdup(id)) ||
        !(p->title = tr_strdup(title))) {
        if (p) {
            tr_dealloc(p->id);
            tr_dealloc(p);
        }
        r->oom = 1;
        return NULL;
    }
    p->section = s;
    p->width = width;
    p->height = height;
    r->plots[r->np++] = p;
    return p;
}

void rpt_caption(rpt_report *r, rpt_plot *p, const char *fmt, ...)
{
    if (!p)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *s = vformat(fmt, ap);
    va_end(ap);
    if (!s)
        r->oom = 1;
    tr_dealloc(p->caption);
    p->caption = s;
}

void rpt_report_free(rpt_report *r)
{
    for (size_t i = 0; i < r->nt; i++)
        table_free(r->tables[i]);
    for (size_t i = 0; i < r->np; i++) {
        rpt_plot *p = r->plots[i];
        rb_free(&p->script);
        tr_dealloc(p->id);
        tr_dealloc(p->title);
        tr_dealloc(p->caption);
        tr_dealloc(p->svg);
        tr_dealloc(p->why);
        tr_dealloc(p);
    }
    tr_dealloc(r->tables);
    tr_dealloc(r->plots);
    rb_free(&r->summary);
    memset(r, 0, sizeof *r);
}
