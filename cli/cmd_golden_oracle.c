/*
 * cmd_golden_oracle.c — the oracle half of `trellis golden` (ENGINE.md §7):
 *   trellis golden import-oracle [SRC] [--out DIR] [--force]     copy SRC (default ../shared/oracle) into DIR
 *                                                                (default golden/oracle) with MANIFEST.json
 *   trellis golden verify --oracle DIR [--backend B]… [--json F]  run the acceptance checks of every case on ref and
 *                                                                cpu (or the given backends) and the cross-backend
 *                                                                route agreement
 */
#include "cli.h"
#include "trellis/backend.h"
#include "trellis/jsonio.h"
#include "trellis/oracle.h"

#include <math.h>
#include <string.h>

static const char *const CMD = "golden";

int golden_import_oracle(const char *src, const char *dst, int force)
{
    tr_error err;
    int rc = tr_oracle_import(src ? src : "../shared/oracle", dst ? dst : "golden/oracle", force, cli_out, &err);
    if (rc != TR_OK)
        return cli_fail(CMD, &err);
    fprintf(cli_out, "oracle imported into %s (MANIFEST.json written)\n", dst ? dst : "golden/oracle");
    return CLI_OK;
}

static void print_result(const tr_oracle_case *c, const tr_oracle_result *r)
{
    fprintf(cli_out, "%-5s %-28s %-4s logits %.2e/%.2e  hidden %.3f  pvd %.2e/%.2e  min-margin %.3g%s%s\n",
            r->ok ? "PASS" : "FAIL", c->name, r->backend, r->logits_err, r->logits_bound, r->hidden_worst_ratio,
            r->pvd_split_err, r->pvd_incremental_err, r->min_margin, r->detail[0] ? "  " : "", r->detail);
}

/* Every case on every backend; routes of each backend compared with the first backend's (acceptance 6). */
int golden_verify_oracle(const char *dir, const char **backends, int n_backends, const char *json_path)
{
    static const char *const defaults[] = {"ref", "cpu"};
    if (!n_backends) {
        backends = (const char **)defaults;
        n_backends = 2;
    }
    tr_error err;
    tr_oracle *o;
    if (tr_oracle_open(dir, &o, &err) != TR_OK)
        return cli_fail(CMD, &err);
    unsigned long mark = tr_json_mark();
    json_t *doc = json_object(), *results = json_array();
    unsigned pass = 0, fail = 0;
    int rc = CLI_OK;
    for (uint32_t i = 0; rc == CLI_OK && i < tr_oracle_case_count(o); i++) {
        const tr_oracle_case *c = tr_oracle_case_at(o, i);
        tr_oracle_result first = {0};
        for (int b = 0; rc == CLI_OK && b < n_backends; b++) {
            tr_oracle_result r;
            if (tr_oracle_run_case(o, i, backends[b], 0, &r, &err) != TR_OK) {
                rc = cli_fail(CMD, &err);
                tr_oracle_result_release(&r);
                break;
            }
            char why[160];
            if (b > 0 && !tr_oracle_routes_agree(&first.routes, &r.routes, why, sizeof why)) {
                r.ok = 0;
                r.routes_ok = 0;
                snprintf(r.detail, sizeof r.detail, "routes disagree with %s: %s", first.backend, why);
            }
            r.ok ? pass++ : fail++;
            if (!json_path || strcmp(json_path, "-"))
                print_result(c, &r);
            json_array_append_new(results, tr_oracle_result_json(c, &r));
            if (b == 0)
                first = r;
            else
                tr_oracle_result_release(&r);
        }
        tr_oracle_result_release(&first);
    }
    if (rc == CLI_OK && (!json_path || strcmp(json_path, "-")))
        fprintf(cli_out, "oracle %s: %u pass, %u fail\n", dir, pass, fail);
    json_object_set_new(doc, "schema", json_string("trellis.oracle_verify/1"));
    json_object_set_new(doc, "dir", json_string(dir));
    json_object_set_new(doc, "results", results);
    json_t *sum = json_object();
    json_object_set_new(sum, "PASS", json_integer(pass));
    json_object_set_new(sum, "FAIL", json_integer(fail));
    json_object_set_new(doc, "summary", sum);
    if (rc == CLI_OK && json_path)
        rc = cli_write_json(CMD, json_path, doc, mark);
    json_decref(doc);
    tr_oracle_close(o);
    return rc != CLI_OK ? rc : fail ? CLI_FAILURES : CLI_OK;
}
