/*
 * report_render.c — writes the report model twice: summary.md (the Markdown tables a reviewer reads in a pull
 * request) and index.html (one self-contained page: inline CSS, the same tables, the gnuplot SVGs inline; no
 * scripts, no network references).
 */
#include "report.h"
#include "trellis/fileio.h"

#include <string.h>

static int write_buf(const char *path, rpt_buf *b, tr_error *err)
{
    if (b->oom)
        return tr_fail(err, TR_E_NOMEM, path, "out of memory building the file");
    return tr_file_write_all(path, b->s ? b->s : "", b->n, err);
}

static size_t count_commits(const rpt_set *s, char *first, size_t size)
{
    size_t n = 0;
    first[0] = '\0';
    for (size_t i = 0; i < s->n; i++) {
        const char *c = rj_str(s->in[i].doc, "git_commit");
        int seen = 0;
        for (size_t k = 0; c && k < i && !seen; k++)
            seen = rj_str(s->in[k].doc, "git_commit") && !strcmp(rj_str(s->in[k].doc, "git_commit"), c);
        if (c && !seen && n++ == 0)
            snprintf(first, size, "%s", c);
    }
    return n;
}

static int section_used(const rpt_report *r, rpt_section s)
{
    for (size_t i = 0; i < r->nt; i++)
        if (r->tables[i]->section == s)
            return 1;
    for (size_t i = 0; i < r->np; i++)
        if (r->plots[i]->section == s)
            return 1;
    return 0;
}

/* ---- Markdown ---------------------------------------------------------------------------------------------------- */

static void md_table(rpt_buf *b, const rpt_table *t)
{
    rb_printf(b, "### %s\n\n", t->title);
    if (!rpt_rows(t)) {
        rb_printf(b, "_%s_\n\n", t->note ? t->note : "no rows");
        return;
    }
    for (size_t c = 0; c < t->ncol; c++) {
        rb_puts(b, "| ");
        rb_md(b, t->head[c]);
        rb_puts(b, " ");
    }
    rb_puts(b, "|\n");
    for (size_t c = 0; c < t->ncol; c++)
        rb_puts(b, c < 2 ? "|---" : "|--:");
    rb_puts(b, "|\n");
    for (size_t i = 0; i < t->ncell; i++) {
        rb_puts(b, "| ");
        rb_md(b, t->cell[i]);
        rb_puts(b, (i + 1) % t->ncol ? " " : " |\n");
    }
    if (t->note)
        rb_printf(b, "\n_%s_\n", t->note);
    rb_puts(b, "\n");
}

int rpt_write_md(const rpt_report *r, const char *path, tr_error *err)
{
    rpt_buf b = {0};
    char first[64];
    size_t nc = count_commits(r->set, first, sizeof first);
    rb_printf(&b, "# Trellis report\n\nGenerated %s from %zu result file%s", r->generated, r->set->n,
              r->set->n == 1 ? "" : "s");
    if (nc)
        rb_printf(&b, " (git commit %s%s)", first, nc > 1 ? " and others" : "");
    rb_puts(&b, ". Plots: index.html.\n\n");
    for (int s = 0; s < RPT_S_COUNT; s++) {
        if (!section_used(r, (rpt_section)s))
            continue;
        rb_printf(&b, "## %s\n\n", rpt_section_title((rpt_section)s));
        for (size_t i = 0; i < r->nt; i++)
            if (r->tables[i]->section == (rpt_section)s)
                md_table(&b, r->tables[i]);
        for (size_t i = 0; i < r->np; i++)
            if (r->plots[i]->section == (rpt_section)s)
                rb_printf(&b, "- plot `%s`: %s%s%s\n", r->plots[i]->id, r->plots[i]->title,
                          r->plots[i]->svg ? "" : " — not drawn: ", r->plots[i]->svg ? "" : r->plots[i]->why);
        rb_puts(&b, "\n");
    }
    int rc = write_buf(path, &b, err);
    rb_free(&b);
    return rc;
}

/* ---- HTML -------------------------------------------------------------------------------------------------------- */

static const char css[] =
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:0;color:#1d232b;"
    "background:#f6f7f9}header{background:#1f3a5f;color:#fff;padding:18px 32px}header h1{margin:0 0 6px 0;"
    "font-size:26px}header p{margin:0;opacity:.9}nav{margin-top:10px}nav a{color:#cfe0ff;margin-right:16px;"
    "text-decoration:none}main{padding:8px 32px 40px 32px}section{background:#fff;"
    "border:1px solid #dde2e8;border-radius:6px;padding:6px 20px 16px 20px;margin:18px 0}h2{border-bottom:2px solid "
    "#1f3a5f;padding-bottom:4px}h3{margin:18px 0 8px 0;font-size:16px}.tablewrap{overflow-x:auto}"
    "table.data{border-collapse:collapse;font-size:13px;margin-bottom:4px}table.data th,table.data td{border:1px "
    "solid #d4d9df;padding:3px 8px;text-align:left;white-space:nowrap;vertical-align:top}table.data th{background:"
    "#eef2f7}table.data td.n{text-align:right}table.data td.w{white-space:normal;min-width:22em;max-width:40em;"
    "word-break:break-word}"
    "table.data tr:nth-child(even) td{background:#fafbfc}td.good{color:#17692d}td.bad{color:#fff;"
    "background:#b3261e !important;font-weight:600}p.note{font-size:12px;color:#55606d;margin:2px 0 10px 0}"
    "figure.plot{margin:16px 0;padding:8px;border:1px solid #e3e7ec;border-radius:4px;background:#fff}"
    "figure.plot figcaption{font-size:13px;color:#333;margin-bottom:6px}p.why{color:#8a5a00}"
    "footer{font-size:12px;color:#55606d;padding:0 32px 24px 32px}";

/* Numbers (and the missing-value dash) align right. */
static int numeric(const char *t)
{
    return (*t >= '0' && *t <= '9') || ((*t == '-' || *t == '.' || *t == '[') && t[1] >= '0' && t[1] <= '9') ||
           !strcmp(t, "—") || !strcmp(t, "nan") || !strcmp(t, "inf") || !strcmp(t, "-inf");
}

/* class="…" for a cell: status colours, numeric alignment, wrapping of long text. */
static void cell_class(rpt_buf *b, const char *t)
{
    static const char *const bad[] = {"FAIL", "CRASH", "TIMEOUT", "NO", "ERROR"};
    const char *c = "";
    for (int i = 0; i < 5; i++)
        if (!strcmp(t, bad[i]))
            c = "bad";
    if (!strcmp(t, "PASS") || !strcmp(t, "yes") || !strcmp(t, "ok"))
        c = "good";
    int n = numeric(t), w = strlen(t) > 48;
    if (*c || n || w)
        rb_printf(b, " class=\"%s%s%s%s\"", c, *c && (n || w) ? " " : "", n ? "n" : w ? "w" : "", "");
}

static void html_table(rpt_buf *b, const rpt_table *t)
{
    rb_printf(b, "<h3 id=\"%s\">", t->id);
    rb_html(b, t->title);
    rb_puts(b, "</h3>\n");
    if (rpt_rows(t)) {
        rb_printf(b, "<div class=\"tablewrap\"><table class=\"data\" data-table=\"%s\">\n<thead><tr>", t->id);
        for (size_t c = 0; c < t->ncol; c++) {
            rb_puts(b, "<th>");
            rb_html(b, t->head[c]);
            rb_puts(b, "</th>");
        }
        rb_puts(b, "</tr></thead>\n<tbody>\n");
        for (size_t i = 0; i < t->ncell; i++) {
            rb_puts(b, i % t->ncol ? "<td" : "<tr><td");
            cell_class(b, t->cell[i]);
            rb_puts(b, ">");
            rb_html(b, t->cell[i]);
            rb_puts(b, (i + 1) % t->ncol ? "</td>" : "</td></tr>\n");
        }
        rb_puts(b, "</tbody></table></div>\n");
    }
    if (t->note || !rpt_rows(t)) {
        rb_puts(b, "<p class=\"note\">");
        rb_html(b, t->note ? t->note : "no rows");
        rb_puts(b, "</p>\n");
    }
}

static void html_plot(rpt_buf *b, const rpt_plot *p)
{
    rb_printf(b, "<figure class=\"plot%s\" id=\"%s\">\n<figcaption><b>", p->svg ? "" : " plot-missing", p->id);
    rb_html(b, p->title);
    rb_puts(b, ".</b> ");
    rb_html(b, p->caption ? p->caption : "");
    rb_puts(b, "</figcaption>\n");
    if (p->svg) {
        rb_puts(b, p->svg);
    } else {
        rb_puts(b, "<p class=\"why\">Plot not drawn: ");
        rb_html(b, p->why ? p->why : "unknown reason");
        rb_puts(b, "</p>");
    }
    rb_puts(b, "\n</figure>\n");
}

static void html_head(rpt_buf *b, const rpt_report *r)
{
    char first[64];
    size_t nc = count_commits(r->set, first, sizeof first);
    rb_printf(b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" "
                 "content=\"width=device-width, initial-scale=1\">\n<title>Trellis report</title>\n<style>%s</style>\n"
                 "</head>\n<body>\n<header>\n<h1>Trellis report</h1>\n<p>Generated %s from %zu result file%s",
              css, r->generated, r->set->n, r->set->n == 1 ? "" : "s");
    if (nc) {
        rb_puts(b, " (git commit ");
        rb_html(b, first);
        rb_puts(b, nc > 1 ? " and others)" : ")");
    }
    rb_puts(b, ".</p>\n<nav>");
    for (int s = 0; s < RPT_S_COUNT; s++)
        if (section_used(r, (rpt_section)s))
            rb_printf(b, "<a href=\"#%s\">%s</a>", rpt_section_id((rpt_section)s),
                      rpt_section_title((rpt_section)s));
    rb_puts(b, "</nav>\n</header>\n<main>\n");
}

int rpt_write_html(const rpt_report *r, const char *path, tr_error *err)
{
    rpt_buf b = {0};
    html_head(&b, r);
    for (int s = 0; s < RPT_S_COUNT; s++) {
        if (!section_used(r, (rpt_section)s))
            continue;
        rb_printf(&b, "<section id=\"%s\">\n<h2>%s</h2>\n", rpt_section_id((rpt_section)s),
                  rpt_section_title((rpt_section)s));
        for (size_t i = 0; i < r->nt; i++)
            if (r->tables[i]->section == (rpt_section)s)
                html_table(&b, r->tables[i]);
        for (size_t i = 0; i < r->np; i++)
            if (r->plots[i]->section == (rpt_section)s)
                html_plot(&b, r->plots[i]);
        rb_puts(&b, "</section>\n");
    }
    rb_puts(&b, "</main>\n<footer>trellis report — tables also in summary.md, test results in junit.xml; plots drawn "
                "by gnuplot.</footer>\n</body>\n</html>\n");
    int rc = write_buf(path, &b, err);
    rb_free(&b);
    return rc;
}
