/*
 * engine_opts.c — parsing the common options of the model-running commands (ENGINE.md §8) and token-id lists.
 */
#include "engine_opts.h"
#include "cli.h"
#include "trellis/alloc.h"
#include "trellis/backend.h"
#include "trellis/fileio.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char ENG_OPTS_HELP[] =
    "Common options:\n"
    "  -m, --model DIR        model directory (float HF or trellis; or DIR as the first argument)\n"
    "  --base-model DIR       float checkpoint for tensors the model directory lacks\n"
    "  --tokenizer FILE       default DIR/tokenizer.json\n"
    "  --backend ref|cpu      default cpu\n"
    "  --threads N            default: online CPUs (ref results never depend on it)\n"
    "  --ctx-size N           default min(4096, max_position_embeddings)\n"
    "  --router-mode auto|noaux_tc|softmax_topk|softmax_topk_f16\n"
    "  --mla-form auto|expanded|absorbed\n"
    "  --nan-policy report|zero|abort|off   (default report)\n"
    "  --moe-fp32-acc on|off, --device-profile NAME, --decode-gemv on|off, --grouped-kernel on|off,\n"
    "  --grouping-mode auto|device|host\n"
    "  --seed N|random        default 0\n"
    "  --json FILE|-, --no-progress, -v, -q\n";

void eng_opts_init(eng_opts *o)
{
    memset(o, 0, sizeof *o);
    tr_session_options_default(&o->sopt);
}

static int on_off(const char *v, int *out)
{
    if (!strcmp(v, "on"))
        *out = 1;
    else if (!strcmp(v, "off"))
        *out = 0;
    else
        return -1;
    return 0;
}

static int parse_u32(const char *s, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || errno || v > UINT32_MAX || s[0] == '-')
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* Options taking a value; returns 1 consumed, 0 not ours, -1 usage error printed. */
static int value_opt(const char *cmd, const char *name, const char *v, eng_opts *o)
{
    tr_session_options *s = &o->sopt;
    uint32_t u;
    int b;
    if (!strcmp(name, "--model") || !strcmp(name, "-m"))
        o->model = v;
    else if (!strcmp(name, "--base-model"))
        o->mopt.base_model = v;
    else if (!strcmp(name, "--tokenizer"))
        o->tokenizer = v;
    else if (!strcmp(name, "--backend")) {
        if (!tr_backend_available(v))
            return cli_usage(cmd, "--backend: unknown backend \"%s\" (available: ref, cpu)", v), -1;
        s->backend = v;
    } else if (!strcmp(name, "--threads")) {
        if (parse_u32(v, &u) || u > 4096)
            return cli_usage(cmd, "--threads: expected a count, got \"%s\"", v), -1;
        s->threads = (int)u;
    } else if (!strcmp(name, "--ctx-size")) {
        if (parse_u32(v, &u) || u == 0)
            return cli_usage(cmd, "--ctx-size: expected a positive integer, got \"%s\"", v), -1;
        s->ctx_size = u;
    } else if (!strcmp(name, "--router-mode")) {
        tr_router_mode m;
        if (!strcmp(v, "auto"))
            s->router_mode = -1;
        else if (tr_router_mode_parse(v, &m) == 0)
            s->router_mode = (int)m;
        else
            return cli_usage(cmd, "--router-mode: expected auto, noaux_tc, softmax_topk or softmax_topk_f16"), -1;
        o->mopt.force_noaux_bias_zero = s->router_mode == TR_ROUTER_NOAUX_TC;
    } else if (!strcmp(name, "--mla-form")) {
        if (tr_mla_form_parse(v, &s->mla_form))
            return cli_usage(cmd, "--mla-form: expected auto, expanded or absorbed"), -1;
    } else if (!strcmp(name, "--nan-policy")) {
        if (tr_nan_policy_parse(v, &s->nan_policy, NULL) != TR_OK)
            return cli_usage(cmd, "--nan-policy: expected report, zero, abort or off"), -1;
    } else if (!strcmp(name, "--moe-fp32-acc")) {
        if (on_off(v, &b))
            return cli_usage(cmd, "--moe-fp32-acc: expected on or off"), -1;
        s->moe_fp32_acc = b ? TR_MOE_FP32_ON : TR_MOE_FP32_OFF;
    } else if (!strcmp(name, "--device-profile"))
        s->device_profile = v;
    else if (!strcmp(name, "--decode-gemv")) {
        if (on_off(v, &s->decode_gemv))
            return cli_usage(cmd, "--decode-gemv: expected on or off"), -1;
    } else if (!strcmp(name, "--grouped-kernel")) {
        if (on_off(v, &s->grouped_kernel))
            return cli_usage(cmd, "--grouped-kernel: expected on or off"), -1;
    } else if (!strcmp(name, "--grouping-mode")) {
        if (tr_grouping_mode_parse(v, &s->grouping_mode, NULL) != TR_OK)
            return cli_usage(cmd, "--grouping-mode: expected auto, device or host"), -1;
    } else if (!strcmp(name, "--seed")) {
        o->seed_given = 1;
        if (!strcmp(v, "random"))
            o->seed_random = 1;
        else {
            char *end;
            errno = 0;
            o->seed = strtoull(v, &end, 0);
            if (!*v || *end || errno || v[0] == '-')
                return cli_usage(cmd, "--seed: expected a 64-bit integer or \"random\", got \"%s\"", v), -1;
        }
    } else
        return 0;
    return 1;
}

int eng_opt(const char *cmd, int argc, char **argv, int *i, eng_opts *o)
{
    static const char *const valued[] = {"--model", "-m", "--base-model", "--tokenizer", "--backend", "--threads",
                                         "--ctx-size", "--router-mode", "--mla-form", "--nan-policy",
                                         "--moe-fp32-acc", "--device-profile", "--decode-gemv", "--grouped-kernel",
                                         "--grouping-mode", "--seed"};
    const char *a = argv[*i], *v;
    for (size_t k = 0; k < sizeof valued / sizeof *valued; k++) {
        int r = cli_opt(argc, argv, i, valued[k], &v);
        if (r < 0)
            return cli_usage(cmd, "%s needs a value", valued[k]), -1;
        if (r > 0)
            return value_opt(cmd, valued[k], v, o);
    }
    int r = cli_opt_json(argc, argv, i, &v);
    if (r > 0) {
        o->json = v;
        return 1;
    }
    if (!strcmp(a, "--no-progress"))
        o->no_progress = 1;
    else if (!strcmp(a, "-v"))
        o->verbose = 1;
    else if (!strcmp(a, "-q"))
        o->quiet = 1;
    else if (a[0] != '-' && !o->model)
        o->model = a;
    else
        return 0;
    return 1;
}

uint64_t eng_seed(eng_opts *o)
{
    if (o->seed_random) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        o->seed = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        o->seed_random = 0;
        fprintf(cli_err, "seed: %llu\n", (unsigned long long)o->seed);
    }
    return o->seed;
}

int eng_open(const char *cmd, eng_opts *o, tr_model **m, tr_session **s)
{
    tr_error err;
    *m = NULL;
    *s = NULL;
    if (!o->model)
        return cli_usage(cmd, "no model: give -m DIR");
    if (tr_model_load(o->model, &o->mopt, m, &err) != TR_OK)
        return cli_fail(cmd, &err);
    if (o->verbose)
        for (size_t i = 0; i < (*m)->warnings.count; i++)
            fprintf(cli_err, "trellis %s: warning: %s\n", cmd, (*m)->warnings.items[i].text);
    if (tr_session_new(*m, &o->sopt, s, &err) != TR_OK) {
        tr_model_free(*m);
        *m = NULL;
        return cli_fail(cmd, &err);
    }
    return CLI_OK;
}

/* ---- token ids ------------------------------------------------------------------------------------------------------- */

static int push_id(int32_t **ids, uint32_t *n, uint32_t *cap, int32_t v)
{
    if (*n == *cap) {
        uint32_t c = *cap ? 2 * *cap : 64;
        int32_t *p = tr_realloc(*ids, (size_t)c * sizeof *p);
        if (!p)
            return -1;
        *ids = p;
        *cap = c;
    }
    (*ids)[(*n)++] = v;
    return 0;
}

/* Ids separated by commas (and whitespace when `loose`). */
static int parse_list(const char *cmd, const char *what, const char *text, int loose, int32_t **ids, uint32_t *n)
{
    uint32_t cap = 0;
    *ids = NULL;
    *n = 0;
    const char *p = text;
    for (;;) {
        while (loose && (isspace((unsigned char)*p) || *p == ','))
            p++;
        if (!*p && (loose || *n))
            break;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        int bad = end == p || errno || v < 0 || v > INT32_MAX || isspace((unsigned char)*p) || *p == '+';
        if (!bad && !loose && *end && *end != ',')
            bad = 1;
        if (bad) {
            int len = 0;
            while (p[len] && p[len] != ',' && !isspace((unsigned char)p[len]) && len < 24)
                len++;
            tr_dealloc(*ids);
            *ids = NULL;
            return cli_usage(cmd, "%s: \"%.*s\" at index %u is not a token id", what, len, p, *n);
        }
        if (push_id(ids, n, &cap, (int32_t)v)) {
            tr_dealloc(*ids);
            *ids = NULL;
            fprintf(cli_err, "trellis %s: error: %s: out of memory\n", cmd, what);
            return CLI_RESOURCE;
        }
        p = end;
        if (!loose) {
            if (!*p)
                break;
            p++;   /* the comma */
            if (!*p)
                return tr_dealloc(*ids), *ids = NULL, cli_usage(cmd, "%s: trailing comma", what);
        }
    }
    if (!*n)
        return cli_usage(cmd, "%s: no token ids", what);
    return CLI_OK;
}

int eng_parse_ids(const char *cmd, const char *what, const char *text, int32_t **ids, uint32_t *n)
{
    return parse_list(cmd, what, text, 0, ids, n);
}

int eng_read_ids_file(const char *cmd, const char *path, int32_t **ids, uint32_t *n)
{
    char *data;
    size_t size;
    tr_error err;
    if (tr_file_read_all(path, &data, &size, &err) != TR_OK)
        return cli_fail(cmd, &err);
    char *text = tr_malloc(size + 1);
    if (!text) {
        tr_dealloc(data);
        fprintf(cli_err, "trellis %s: error: %s: out of memory\n", cmd, path);
        return CLI_RESOURCE;
    }
    memcpy(text, data, size);
    text[size] = 0;
    tr_dealloc(data);
    int rc = strlen(text) != size ? cli_usage(cmd, "%s: NUL byte in an ids file", path)
                                  : parse_list(cmd, path, text, 1, ids, n);
    tr_dealloc(text);
    return rc;
}

int eng_check_ids(const char *cmd, const char *what, const int32_t *ids, uint32_t n, uint32_t V)
{
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= V) {
            tr_error err;
            tr_fail(&err, TR_E_TOKEN_ID, what, "token id %d at index %u is out of range [0, %u)", ids[i], i, V);
            return cli_fail(cmd, &err);
        }
    return CLI_OK;
}
