/*
 * cmd_report.c — `trellis report` (HARNESS.md §5):
 *
 *   trellis report [--in FILE|DIR...] [FILE...] [--out DIR] [--history DIR | --no-history] [--commit C] [--no-plots]
 *       reads result JSON of any recognised schema (report_load.c) and writes summary.md, index.html (gnuplot SVGs
 *       inline) and junit.xml into DIR (default reports/out), copies each input to <history>/<commit>/ and prints a
 *       short summary;
 *   trellis report diff A B [--history DIR]
 *       what changed between two commits (history folders), folders or result files (report_history.c);
 *   trellis report merge FILE... [--json FILE|-]
 *       combines the trellis.conformance/1 results of shards (HARNESS.md §3) into one file, results in enumeration
 *       order, summary recomputed.  Shards must agree on tool_version, git_commit, backend, seed, tier and strict,
 *       else exit 2.
 */
#include "cli.h"
#include "report.h"
#include "trellis/fileio.h"
#include "trellis/alloc.h"
#include "trellis/jsonio.h"
#include "trellis/registry.h"

#include <string.h>
#include <time.h>

static const char *const CMD = "report";
static const char *const agree[] = {"tool_version", "git_commit", "backend", "seed", "tier", "strict"};

static int cmp_index(const void *a, const void *b)
{
    json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "case_index"));
    json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "case_index"));
    return x < y ? -1 : x > y;
}

static int merge(int nfiles, char **files, const char *out)
{
    unsigned long mark = tr_json_mark();
    json_t *first = NULL, *all = json_array();
    int rc = CLI_OK;
    for (int i = 0; i < nfiles && rc == CLI_OK; i++) {
        json_t *doc = NULL;
        tr_error err;
        if (tr_json_load_object(files[i], TR_E_INPUT, &doc, &err) != TR_OK) {
            rc = cli_fail(CMD, &err);
            break;
        }
        json_t *schema = json_object_get(doc, "schema");
        if (!json_is_string(schema) || strcmp(json_string_value(schema), "trellis.conformance/1") ||
            !json_is_array(json_object_get(doc, "results"))) {
            fprintf(cli_err, "trellis report: error: %s: not a trellis.conformance/1 result file\n", files[i]);
            json_decref(doc);
            rc = CLI_USAGE;
            break;
        }
        if (!first)
            first = json_incref(doc);
        for (size_t k = 0; k < sizeof agree / sizeof agree[0]; k++)
            if (!json_equal(json_object_get(first, agree[k]), json_object_get(doc, agree[k]))) {
                fprintf(cli_err, "trellis report: error: %s: %s differs from %s's; shards of one run must agree\n",
                        files[i], agree[k], files[0]);
                rc = CLI_USAGE;
                break;
            }
        json_array_extend(all, json_object_get(doc, "results"));
        json_decref(doc);
    }
    if (rc == CLI_OK && !first) {
        fprintf(cli_err, "trellis report: error: no input files\n");
        rc = CLI_USAGE;
    }
    if (rc == CLI_OK) {
        size_t n = json_array_size(all);
        json_t **v = tr_malloc((n + 1) * sizeof *v);
        json_t *sorted = json_array(), *summary = json_object();
        unsigned counts[TR_VERDICT_COUNT] = {0};
        for (size_t i = 0; v && i < n; i++)
            v[i] = json_array_get(all, i);
        if (v && n > 1)
            qsort(v, n, sizeof *v, cmp_index);
        for (size_t i = 0; v && i < n; i++) {
            tr_verdict s;
            if (i > 0 && json_integer_value(json_object_get(v[i], "case_index")) ==
                             json_integer_value(json_object_get(v[i - 1], "case_index")))
                continue;   /* the same case in two files: keep one */
            if (tr_verdict_parse(json_string_value(json_object_get(v[i], "status")) ?
                                 json_string_value(json_object_get(v[i], "status")) : "", &s) == 0)
                counts[s]++;
            json_array_append(sorted, v[i]);
        }
        tr_dealloc(v);
        for (int s = 0; s < TR_VERDICT_COUNT; s++)
            json_object_set_new(summary, tr_verdict_name((tr_verdict)s), json_integer(counts[s]));
        json_object_set_new(first, "results", sorted);
        json_object_set_new(first, "summary", summary);
        json_object_del(first, "shard");
        json_object_del(first, "total_shards");
        rc = cli_write_json(CMD, out ? out : "-", first, mark);
    }
    json_decref(first);
    json_decref(all);
    return rc;
}

static int cmd_merge(int argc, char **argv)
{
    const char *out = NULL;
    char **files = tr_malloc((size_t)argc * sizeof *files);
    int nfiles = 0;
    if (!files)
        return CLI_RESOURCE;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_opt_json(argc, argv, &i, &v))
            out = v;
        else if (argv[i][0] == '-' && argv[i][1]) {
            tr_dealloc(files);
            return cli_usage(CMD, "unknown option %s", argv[i]);
        } else
            files[nfiles++] = argv[i];
    }
    int rc = merge(nfiles, files, out);
    tr_dealloc(files);
    return rc;
}

/* ---- report ------------------------------------------------------------------------------------------------------ */

#define DEFAULT_OUT "reports/out"
#define DEFAULT_HISTORY "reports/history"

typedef struct build_opts {
    const char *out, *history, *commit;
    int no_history, no_plots;
} build_opts;

static void help(FILE *f)
{
    fprintf(f,
            "Usage: trellis report [--in FILE|DIR...] [FILE...] [--out DIR] [--history DIR | --no-history]\n"
            "                      [--commit C] [--no-plots]\n"
            "       trellis report diff A B [--history DIR]\n"
            "       trellis report merge FILE... [--json FILE|-]\n"
            "  report: reads result JSON (recognised by \"schema\": conformance, golden_verify, oracle_verify,\n"
            "          symbols, quantize, perplexity, kld, study, bench, bench_kernels; a folder means its *.json)\n"
            "          and writes DIR/summary.md, DIR/index.html (self-contained, gnuplot SVGs inline) and\n"
            "          DIR/junit.xml (default DIR " DEFAULT_OUT "); copies each input to\n"
            "          HISTORY/<git_commit>/ (default " DEFAULT_HISTORY "; files without git_commit go under C\n"
            "          given by --commit, else \"unknown\"); prints a short summary.  --no-plots skips gnuplot.\n"
            "  diff:   A and B are each a result file, a folder of them, or a commit (HISTORY/<commit>); prints\n"
            "          status changes per case and PPL / KLD / bench deltas with their uncertainties.\n"
            "          Exit 1 when a status got worse (e.g. PASS -> FAIL), else 0.\n"
            "  merge:  combine shard results of one conformance run (same tool_version, git_commit, backend,\n"
            "          seed, tier, strict) into one trellis.conformance/1 document, summary recomputed.\n"
            "  Exit: 0 done, 2 unreadable or malformed input (the file is named) or usage, 4 out of memory.\n");
}

/* One option of the report form: 1 consumed, 0 not an option, -1 usage error printed.  --in takes every following
 * argument up to the next option. */
static int build_opt(int argc, char **argv, int *i, build_opts *o, rpt_set *set, int *rc)
{
    const char *v;
    int r;
    if (!strcmp(argv[*i], "--in")) {
        while (*i + 1 < argc && strncmp(argv[*i + 1], "--", 2) && *rc == CLI_OK) {
            tr_error err;
            if (rpt_set_add(set, argv[++*i], &err) != TR_OK)
                *rc = cli_fail(CMD, &err);
        }
        return 1;
    }
    static const char *const names[] = {"--out", "--history", "--commit"};
    const char **dst[] = {&o->out, &o->history, &o->commit};
    for (int k = 0; k < 3; k++)
        if ((r = cli_opt(argc, argv, i, names[k], &v)) != 0) {
            if (r < 0)
                return cli_usage(CMD, "%s needs a value", names[k]), -1;
            *dst[k] = v;
            return 1;
        }
    if (!strcmp(argv[*i], "--no-history"))
        return o->no_history = 1;
    if (!strcmp(argv[*i], "--no-plots"))
        return o->no_plots = 1;
    return 0;
}

static void print_summary(const rpt_report *r, const build_opts *o)
{
    size_t drawn = 0;
    const char *why = NULL;
    for (size_t i = 0; i < r->np; i++) {
        drawn += r->plots[i]->svg != NULL;
        if (!r->plots[i]->svg && !why)
            why = r->plots[i]->why;
    }
    fprintf(cli_out, "%s", rb_str(&r->summary));
    fprintf(cli_out, "report: %zu result files -> %s/summary.md, %s/index.html (%zu of %zu plots drawn%s%s), "
            "%s/junit.xml\n", r->set->n, o->out, o->out, drawn, r->np, why ? "; " : "", why ? why : "", o->out);
}

static int write_outputs(rpt_report *r, const build_opts *o, tr_error *err)
{
    char *md = tr_path_join(o->out, "summary.md"), *html = tr_path_join(o->out, "index.html"),
         *junit = tr_path_join(o->out, "junit.xml");
    int rc = md && html && junit ? tr_mkdir_p(o->out, err) : tr_fail(err, TR_E_NOMEM, o->out, "out of memory");
    for (size_t i = 0; i < r->np; i++)
        r->oom |= r->plots[i]->script.oom;
    if (rc == TR_OK && (r->oom || r->summary.oom))
        rc = tr_fail(err, TR_E_NOMEM, o->out, "out of memory building the report");
    if (rc == TR_OK)
        rc = rpt_write_md(r, md, err);
    if (rc == TR_OK)
        rc = rpt_write_html(r, html, err);
    if (rc == TR_OK)
        rc = rpt_write_junit(r->set, junit, err);
    tr_dealloc(md);
    tr_dealloc(html);
    tr_dealloc(junit);
    return rc;
}

static int build(const rpt_set *set, const build_opts *o)
{
    rpt_report r = {.set = set};
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(r.generated, sizeof r.generated, "%Y-%m-%dT%H:%M:%SZ", &tm);
    rpt_build_inputs(&r);
    rpt_build_conformance(&r);
    rpt_build_accuracy(&r);
    rpt_build_perf(&r);
    if (!o->no_plots)
        rpt_render_plots(&r);
    else
        for (size_t i = 0; i < r.np; i++)
            r.oom |= !(r.plots[i]->why = tr_strdup("plots skipped (--no-plots)"));
    tr_error err;
    int rc = write_outputs(&r, o, &err);
    if (rc == TR_OK && !o->no_history)
        rc = rpt_history(set, o->history, o->commit, cli_out, &err);
    if (rc == TR_OK)
        print_summary(&r, o);
    rpt_report_free(&r);
    return rc == TR_OK ? CLI_OK : cli_fail(CMD, &err);
}

static int cmd_build(int argc, char **argv)
{
    build_opts o = {DEFAULT_OUT, DEFAULT_HISTORY, NULL, 0, 0};
    rpt_set set = {0};
    int rc = CLI_OK;
    for (int i = 1; i < argc && rc == CLI_OK; i++) {
        if (cli_is_help(argv[i])) {
            help(cli_out);
            rpt_set_free(&set);
            return CLI_OK;
        }
        int r = build_opt(argc, argv, &i, &o, &set, &rc);
        if (r < 0)
            rc = CLI_USAGE;
        else if (r == 0 && argv[i][0] == '-' && argv[i][1])
            rc = cli_usage(CMD, "unknown option %s", argv[i]);
        else if (r == 0) {
            tr_error err;
            if (rpt_set_add(&set, argv[i], &err) != TR_OK)
                rc = cli_fail(CMD, &err);
        }
    }
    if (rc == CLI_OK && !set.n)
        rc = cli_usage(CMD, "no result files: give --in FILE... (or a folder of result files)");
    if (rc == CLI_OK)
        rc = build(&set, &o);
    rpt_set_free(&set);
    return rc;
}

static int cmd_diff(int argc, char **argv)
{
    const char *side[2] = {NULL, NULL}, *hist = DEFAULT_HISTORY, *v;
    int n = 0;
    for (int i = 1; i < argc; i++) {
        int r = cli_opt(argc, argv, &i, "--history", &v);
        if (r < 0)
            return cli_usage(CMD, "--history needs a folder");
        if (r > 0)
            hist = v;
        else if (argv[i][0] == '-' && argv[i][1])
            return cli_usage(CMD, "unknown option %s", argv[i]);
        else if (n < 2)
            side[n++] = argv[i];
        else
            return cli_usage(CMD, "diff takes two arguments (A B), got a third: %s", argv[i]);
    }
    if (n < 2)
        return cli_usage(CMD, "diff needs A and B (result files, folders or commits)");
    int regressed = 0;
    tr_error err;
    if (rpt_diff(side[0], side[1], hist, cli_out, &regressed, &err) != TR_OK)
        return cli_fail(CMD, &err);
    return regressed ? CLI_FAILURES : CLI_OK;
}

int cmd_report(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "merge")) {
        if (argc < 3)
            return cli_usage(CMD, "merge needs shard result files");
        if (cli_is_help(argv[2]))
            return help(cli_out), CLI_OK;
        return cmd_merge(argc - 1, argv + 1);
    }
    if (argc >= 2 && !strcmp(argv[1], "diff")) {
        if (argc >= 3 && cli_is_help(argv[2]))
            return help(cli_out), CLI_OK;
        return cmd_diff(argc - 1, argv + 1);
    }
    if (argc < 2) {
        help(cli_err);
        return CLI_USAGE;
    }
    return cmd_build(argc, argv);
}
