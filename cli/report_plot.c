/*
 * report_plot.c — renders the report's plots with gnuplot run as a subprocess (posix_spawnp; the svg terminal) and
 * turns each SVG into an inline element of index.html: XML prolog dropped, ids prefixed per plot so that several
 * SVGs can share one page, a class and an id added.  TR_GNUPLOT names the program (default "gnuplot" on PATH);
 * TR_GNUPLOT="" disables plotting.  A plot that cannot be drawn keeps the reason in plot->why.
 */
#include "report.h"
#include "trellis/alloc.h"
#include "trellis/fileio.h"

#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static const char *gnuplot_program(void)
{
    const char *g = getenv("TR_GNUPLOT");
    return g ? g : "gnuplot";
}

/* Run prog with args, stdin from /dev/null, stdout and stderr to log (or /dev/null); the exit status or -1. */
static int spawn_wait(const char *prog, char *const *args, const char *log)
{
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa))
        return -1;
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log ? log : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid;
    int rc = posix_spawnp(&pid, prog, &fa, NULL, args, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc)
        return -1;
    int st;
    while (waitpid(pid, &st, 0) < 0)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int rpt_gnuplot_available(void)
{
    static char known_for[512] = "\001";   /* the program the cached answer is for (TR_GNUPLOT may change) */
    static int known;
    const char *g = gnuplot_program();
    if (strcmp(known_for, g)) {
        char *args[] = {(char *)g, (char *)"--version", NULL};
        known = g[0] && spawn_wait(g, args, NULL) == 0;
        snprintf(known_for, sizeof known_for, "%s", g);
    }
    return known;
}

/* ---- SVG post-processing ----------------------------------------------------------------------------------------- */

/* Copy svg from "<svg" on with every id and local reference prefixed by pfx, and attrs added to the root. */
static char *inline_svg(const char *svg, const char *pfx, const char *attrs)
{
    static const char *const pats[] = {"id='", "id=\"", "href='#", "href=\"#", "url(#"};
    const char *p = strstr(svg, "<svg");
    if (!p)
        return NULL;
    rpt_buf b = {0};
    rb_puts(&b, "<svg");
    rb_puts(&b, attrs);
    p += 4;
    while (*p) {
        int hit = -1;
        for (int k = 0; k < 5 && hit < 0; k++)
            if (!strncmp(p, pats[k], strlen(pats[k])) && (k >= 2 || p == svg || p[-1] == ' ' || p[-1] == '\t' ||
                                                          p[-1] == '\n'))
                hit = k;
        if (hit < 0) {
            rb_putn(&b, p++, 1);
            continue;
        }
        rb_puts(&b, pats[hit]);
        rb_puts(&b, pfx);
        p += strlen(pats[hit]);
    }
    if (b.oom) {
        rb_free(&b);
        return NULL;
    }
    return b.s;
}

/* ---- one plot ---------------------------------------------------------------------------------------------------- */

static void set_why(rpt_report *r, rpt_plot *p, const char *why)
{
    tr_dealloc(p->why);
    if (!(p->why = tr_strdup(why)))
        r->oom = 1;
}

/* The first line of gnuplot's complaint, for plot->why. */
static void why_from_log(rpt_report *r, rpt_plot *p, const char *log, int status)
{
    char *text = NULL, line[400];
    size_t n = 0;
    tr_error err;
    snprintf(line, sizeof line, "gnuplot exited with status %d", status);
    if (tr_file_read_all(log, &text, &n, &err) == TR_OK && n) {
        const char *e = strstr(text, "line ");
        const char *s = e ? e : text;
        size_t len = strcspn(s, "\n");
        snprintf(line, sizeof line, "gnuplot exited with status %d: %.*s", status, (int)(len < 300 ? len : 300), s);
    }
    tr_dealloc(text);
    set_why(r, p, line);
}

static void render_one(rpt_report *r, rpt_plot *p, const char *dir, size_t index)
{
    char gp[4200], svg[4200], log[4200], pfx[64], attrs[512];
    snprintf(gp, sizeof gp, "%s/plot%zu.gp", dir, index);
    snprintf(svg, sizeof svg, "%s/plot%zu.svg", dir, index);
    snprintf(log, sizeof log, "%s/plot%zu.log", dir, index);
    rpt_buf s = {0};
    rb_printf(&s, "set terminal svg size %d,%d dynamic font 'sans,11' background rgb 'white'\nset termoption "
                  "noenhanced\nset output '", p->width, p->height);
    rb_gp(&s, svg);
    rb_puts(&s, "'\n");
    rb_puts(&s, rb_str(&p->script));
    rb_puts(&s, "\nset output\n");
    tr_error err;
    r->oom |= s.oom || p->script.oom;
    if (s.oom || p->script.oom || tr_file_write_all(gp, s.s, s.n, &err) != TR_OK) {
        set_why(r, p, s.oom || p->script.oom ? "out of memory" : err.text);
        rb_free(&s);
        return;
    }
    rb_free(&s);
    char *args[] = {(char *)gnuplot_program(), gp, NULL};
    int st = spawn_wait(args[0], args, log);
    char *text = NULL;
    size_t n;
    if (st != 0 || tr_file_read_all(svg, &text, &n, &err) != TR_OK) {
        why_from_log(r, p, log, st);
    } else {
        snprintf(pfx, sizeof pfx, "p%zu_", index);
        snprintf(attrs, sizeof attrs, " class=\"plot-svg\" id=\"svg-%s\" width=\"%d\" style=\"max-width:100%%;"
                 "height:auto\" role=\"img\"", p->id, p->width);
        if (!(p->svg = inline_svg(text, pfx, attrs)))
            set_why(r, p, strstr(text, "<svg") ? "out of memory" : "gnuplot wrote no SVG element");
        r->oom |= !p->svg && strstr(text, "<svg");
    }
    tr_dealloc(text);
    unlink(gp);
    unlink(svg);
    unlink(log);
}

void rpt_render_plots(rpt_report *r)
{
    if (!r->np)
        return;
    if (!rpt_gnuplot_available()) {
        for (size_t i = 0; i < r->np; i++)
            set_why(r, r->plots[i], getenv("TR_GNUPLOT") && !getenv("TR_GNUPLOT")[0]
                                        ? "plotting disabled (TR_GNUPLOT is empty)"
                                        : "gnuplot not found (apt-get install gnuplot-nox)");
        return;
    }
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/trellis-report-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        for (size_t i = 0; i < r->np; i++)
            set_why(r, r->plots[i], "cannot create a temporary folder for gnuplot");
        return;
    }
    for (size_t i = 0; i < r->np; i++)
        render_one(r, r->plots[i], dir, i);
    rmdir(dir);
}
