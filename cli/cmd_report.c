/*
 * cmd_report.c — `trellis report merge FILE... [--json FILE|-]`: combines the trellis.conformance/1 results of shards
 * (HARNESS.md §3) into one file, results in enumeration order, summary recomputed.  Shards must agree on
 * tool_version, git_commit, backend, seed, tier and strict, else exit 2.
 */
#include "cli.h"
#include "trellis/alloc.h"
#include "trellis/jsonio.h"
#include "trellis/registry.h"

#include <string.h>

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

int cmd_report(int argc, char **argv)
{
    if (argc < 2 || cli_is_help(argv[1])) {
        fprintf(argc < 2 ? cli_err : cli_out,
                "Usage: trellis report merge FILE... [--json FILE|-]\n"
                "  merge: combine shard results of one conformance run (same tool_version, git_commit, backend,\n"
                "         seed, tier, strict) into one trellis.conformance/1 document, summary recomputed.\n");
        return argc < 2 ? CLI_USAGE : CLI_OK;
    }
    if (strcmp(argv[1], "merge") != 0)
        return cli_usage(CMD, "unknown subcommand \"%s\" (this build has: merge)", argv[1]);
    const char *out = NULL;
    char **files = tr_malloc((size_t)argc * sizeof *files);
    int nfiles = 0;
    if (!files)
        return CLI_RESOURCE;
    for (int i = 2; i < argc; i++) {
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
