/*
 * report.h — what the files of `trellis report` (HARNESS.md §5) share: the result files read (recognised by their
 * "schema"), a growable text buffer, JSON accessors that accept the "nan"/"inf"/"-inf" spellings, the report model
 * (tables and gnuplot plots, grouped by section) built once and rendered as summary.md and index.html, the JUnit
 * writer, the history copy and `report diff`.
 *
 * Memory: every allocation goes through alloc.h; builders never stop on an allocation failure, they set a sticky
 * flag (rpt_buf.oom, rpt_report.oom) that the writers turn into TR_E_NOMEM.
 */
#ifndef TRELLIS_CLI_REPORT_H
#define TRELLIS_CLI_REPORT_H

#include "trellis/status.h"

#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>

/* ---- the result files ------------------------------------------------------------------------------------------ */

typedef enum rpt_kind {
    RPT_CONFORMANCE,
    RPT_GOLDEN_VERIFY,
    RPT_ORACLE_VERIFY,
    RPT_SYMBOLS,
    RPT_QUANTIZE,
    RPT_PERPLEXITY,
    RPT_KLD,
    RPT_STUDY,
    RPT_BENCH,
    RPT_BENCH_KERNELS,
    RPT_KIND_COUNT
} rpt_kind;

/* "trellis.conformance/1", … */
const char *rpt_kind_schema(rpt_kind k);

typedef struct rpt_input {
    char *path;                       /* as given (or dir/name for a folder's file) */
    rpt_kind kind;
    json_t *doc;
} rpt_input;

typedef struct rpt_set {
    rpt_input *in;
    size_t n, cap;
} rpt_set;

/* Read path (a result file, or a folder: its *.json files in bytewise order), recognise the schema and validate the
 * members the report uses.  Errors are TR_E_INPUT naming the file ("x.json: TR_E_INPUT: unknown schema \"…\""),
 * TR_E_IO, TR_E_NOMEM. */
int rpt_set_add(rpt_set *s, const char *path, tr_error *err);
void rpt_set_free(rpt_set *s);

/* ---- text ------------------------------------------------------------------------------------------------------ */

typedef struct rpt_buf {
    char *s;                          /* NUL-terminated when n > 0 */
    size_t n, cap;
    int oom;
} rpt_buf;

void rb_putn(rpt_buf *b, const char *s, size_t n);
void rb_puts(rpt_buf *b, const char *s);
void rb_printf(rpt_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void rb_html(rpt_buf *b, const char *s);   /* & < > " ' escaped */
void rb_xml(rpt_buf *b, const char *s);    /* as rb_html, and characters XML 1.0 forbids dropped */
void rb_md(rpt_buf *b, const char *s);     /* a Markdown table cell: | escaped, newlines as spaces */
void rb_gp(rpt_buf *b, const char *s);     /* inside a gnuplot '…' string: ' doubled, newlines as spaces */
const char *rb_str(const rpt_buf *b);      /* "" when empty */
void rb_free(rpt_buf *b);

/* ---- JSON access ----------------------------------------------------------------------------------------------- */

/* A number, or one of the strings "nan", "inf", "-inf" (HARNESS.md §3): 1 and *out; 0 otherwise. */
int rj_num(const json_t *v, double *out);
/* A missing number: a NaN with the sign bit set ("nan" in a file reads as a positive NaN); printed as "—". */
#define RPT_NONE (-(double)NAN)
/* o[key] as a number; RPT_NONE when absent, null or not a number. */
double rj_get(const json_t *o, const char *key);
/* o[k1][k2] as a number; RPT_NONE when absent. */
double rj_get2(const json_t *o, const char *k1, const char *k2);
/* o[key] as a string; NULL otherwise. */
const char *rj_str(const json_t *o, const char *key);
/* The last component of a path, trailing slashes ignored, into buf. */
const char *rj_base(const char *path, char *buf, size_t size);

/* ---- number formatting (rotating static buffers: valid for the next 15 calls) ------------------------------------ */

const char *rf_num(double v, int sig);             /* %.{sig}g; "nan", "inf", "—" for RPT_NONE */
const char *rf_fix(double v, int decimals);        /* %.{decimals}f */
const char *rf_pm(double v, double unc);           /* "v ± u", both rounded to 2 significant digits of u */
const char *rf_pct(double frac, double unc);       /* "89.9 ± 1.0 %" */
const char *rf_int(double v);                      /* integer or "—" */

/* ---- the report model -------------------------------------------------------------------------------------------- */

/* Sections in page order. */
#define RPT_SECTIONS(X)                                      \
    X(INPUTS, "inputs", "Inputs")                            \
    X(CONFORM, "conformance", "Conformance")                 \
    X(GOLDEN, "golden", "Golden fixtures and HF oracle")     \
    X(ACCURACY, "accuracy", "Accuracy: perplexity and KL divergence") \
    X(STUDY, "study", "Accuracy study (bits per weight)")    \
    X(PERF, "performance", "Performance")                    \
    X(DISPATCH, "dispatch", "MoE dispatch")                  \
    X(SYMBOLS, "symbols", "Kernel symbols")

typedef enum rpt_section {
#define RPT_SECTION_ENUM_(e, id, title) RPT_S_##e,
    RPT_SECTIONS(RPT_SECTION_ENUM_)
#undef RPT_SECTION_ENUM_
    RPT_S_COUNT
} rpt_section;

const char *rpt_section_id(rpt_section s);
const char *rpt_section_title(rpt_section s);

typedef struct rpt_table {
    rpt_section section;
    char *id, *title, *note;
    size_t ncol, ncell, cap;
    char **head, **cell;              /* head [ncol]; cell [ncell], row-major */
} rpt_table;

typedef struct rpt_plot {
    rpt_section section;
    char *id, *title, *caption;
    rpt_buf script;                   /* gnuplot commands after the terminal and output lines */
    int width, height;
    char *svg;                        /* inline SVG once rendered */
    char *why;                        /* why it was not rendered */
} rpt_plot;

typedef struct rpt_report {
    const rpt_set *set;
    rpt_table **tables;
    size_t nt, ct;
    rpt_plot **plots;
    size_t np, cp;
    rpt_buf summary;                  /* the short summary printed on stdout */
    char generated[32];               /* ISO-8601 UTC */
    int oom;
} rpt_report;

/* A table of ncol columns (head: ncol strings); NULL on allocation failure (r->oom set; every call accepts NULL). */
rpt_table *rpt_table_new(rpt_report *r, rpt_section s, const char *id, const char *title, size_t ncol,
                         const char *const *head);
void rpt_cell(rpt_report *r, rpt_table *t, const char *text);
void rpt_cellf(rpt_report *r, rpt_table *t, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void rpt_note(rpt_report *r, rpt_table *t, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
size_t rpt_rows(const rpt_table *t);
/* A plot whose script the caller appends to p->script (size in pixels). */
rpt_plot *rpt_plot_new(rpt_report *r, rpt_section s, const char *id, const char *title, int width, int height);
void rpt_caption(rpt_report *r, rpt_plot *p, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void rpt_report_free(rpt_report *r);

/* Builders (one per file): tables, plots and summary lines from the inputs. */
void rpt_build_inputs(rpt_report *r);
void rpt_build_conformance(rpt_report *r);   /* conformance, golden verify, oracle, symbols */
void rpt_build_accuracy(rpt_report *r);      /* quantize, perplexity, kld, study */
void rpt_build_perf(rpt_report *r);          /* bench, bench-kernels, dispatch counters */

/* The bits per weight and spec of a quantized model directory named `model` (matched by last path component with
 * the quantize results' "out"): 1 when found. */
int rpt_model_bpw(const rpt_set *s, const char *model, double *bpw, const char **spec, const char **rotation);

/* Run gnuplot (TR_GNUPLOT, else "gnuplot" on PATH; TR_GNUPLOT="" disables) for every plot. */
void rpt_render_plots(rpt_report *r);
/* 1 when a gnuplot executable can be run. */
int rpt_gnuplot_available(void);

int rpt_write_md(const rpt_report *r, const char *path, tr_error *err);
int rpt_write_html(const rpt_report *r, const char *path, tr_error *err);
int rpt_write_junit(const rpt_set *s, const char *path, tr_error *err);

/* Copy each input to hist/<commit>/<file name> (commit = the file's git_commit, else fallback, else "unknown";
 * characters outside [0-9A-Za-z._-] become '_').  Prints one line per folder to out. */
int rpt_history(const rpt_set *s, const char *hist, const char *fallback, FILE *out, tr_error *err);

/* `report diff A B`: each a result file, a folder, or a commit (hist/<commit>).  Prints the changes; *regressed
 * counts status changes for the worse. */
int rpt_diff(const char *a, const char *b, const char *hist, FILE *out, int *regressed, tr_error *err);

#endif
