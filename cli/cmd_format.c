/*
 * cmd_format.c — the format-level commands: `trellis dequant DIR TENSOR --out FILE` and
 * `trellis codebook (3inst|mcg|mul1|grid:B) --out FILE`.
 */
#include "cli.h"
#include "trellis/alloc.h"
#include "trellis/checkpoint.h"
#include "trellis/codebook.h"
#include "trellis/fileio.h"

#include <stdlib.h>
#include <string.h>

static int write_out(const char *cmd, const char *path, const void *data, size_t size)
{
    tr_error err;
    if (tr_file_write_all(path, data, size, &err) != TR_OK)
        return cli_fail(cmd, &err);
    return CLI_OK;
}

int cmd_dequant(int argc, char **argv)
{
    const char *dir = NULL, *tensor = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r;
        if (cli_is_help(argv[i])) {
            fprintf(cli_out, "Usage: trellis dequant (-m DIR | DIR) TENSOR --out FILE\n"
                             "  Writes W16 of one quantized tensor (Ŵ16 for a hadamard128 layer) as little-endian\n"
                             "  fp16 [O, I], row-major.  TENSOR is the dotted weight name, e.g.\n"
                             "  model.layers.1.mlp.experts.3.up_proj.weight.\n");
            return CLI_OK;
        }
        if ((r = cli_opt(argc, argv, &i, "--out", &v)) != 0 || (r = cli_opt(argc, argv, &i, "-o", &v)) != 0) {
            if (r < 0)
                return cli_usage("dequant", "--out needs a file");
            out = v;
        } else if ((r = cli_opt(argc, argv, &i, "--model", &v)) != 0 || (r = cli_opt(argc, argv, &i, "-m", &v))) {
            if (r < 0)
                return cli_usage("dequant", "--model needs a directory");
            dir = v;
        } else if (argv[i][0] == '-')
            return cli_usage("dequant", "unknown option %s", argv[i]);
        else if (!dir)
            dir = argv[i];
        else if (!tensor)
            tensor = argv[i];
        else
            return cli_usage("dequant", "unexpected argument %s", argv[i]);
    }
    if (!dir || !tensor || !out)
        return cli_usage("dequant", "need DIR, TENSOR and --out FILE");
    tr_error err;
    tr_ckpt *c = NULL;
    if (tr_ckpt_open(dir, NULL, &c, &err) != TR_OK)
        return cli_fail("dequant", &err);
    const tr_qlinear *q = tr_ckpt_qlinear_find(c, tensor);
    int rc;
    if (!q) {
        tr_fail(&err, TR_E_TENSOR_MISSING, tensor, "no quantized tensor of that name in %s (%zu quantized tensors; "
                "names look like model.layers.0.self_attn.q_proj.weight)", dir, tr_ckpt_qlinear_count(c));
        rc = cli_fail("dequant", &err);
    } else {
        size_t n = (size_t)q->w.O * q->w.I;
        uint16_t *w16 = tr_malloc(n * sizeof *w16);
        if (!w16) {
            tr_fail(&err, TR_E_NOMEM, tensor, "cannot allocate %zu bytes", n * 2);
            rc = cli_fail("dequant", &err);
        } else {
            tr_dequant_layer(&q->w, w16);
            rc = write_out("dequant", out, w16, n * sizeof *w16);
            tr_dealloc(w16);
        }
    }
    tr_ckpt_close(c);
    return rc;
}

int cmd_codebook(int argc, char **argv)
{
    const char *which = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r;
        if (cli_is_help(argv[i])) {
            fprintf(cli_out, "Usage: trellis codebook (3inst|mcg|mul1|grid:B) --out FILE\n"
                             "  3inst|mcg|mul1: the 65,536-entry EXL3 LUT, fp16 little-endian, state ascending.\n"
                             "  grid:B (B = 2..8): the 2^B-entry grid table, float32 little-endian.\n");
            return CLI_OK;
        }
        if ((r = cli_opt(argc, argv, &i, "--out", &v)) != 0 || (r = cli_opt(argc, argv, &i, "-o", &v)) != 0) {
            if (r < 0)
                return cli_usage("codebook", "--out needs a file");
            out = v;
        } else if (argv[i][0] == '-')
            return cli_usage("codebook", "unknown option %s", argv[i]);
        else if (!which)
            which = argv[i];
        else
            return cli_usage("codebook", "unexpected argument %s", argv[i]);
    }
    if (!which || !out)
        return cli_usage("codebook", "need a codebook (3inst|mcg|mul1|grid:B) and --out FILE");
    tr_exl3_cb cb;
    if (tr_exl3_cb_parse(which, &cb) == 0) {
        uint16_t *lut = tr_malloc(65536 * sizeof *lut);
        if (!lut) {
            tr_error err;
            tr_fail(&err, TR_E_NOMEM, which, "cannot allocate the LUT");
            return cli_fail("codebook", &err);
        }
        tr_exl3_lut(cb, lut);
        int rc = write_out("codebook", out, lut, 65536 * sizeof *lut);
        tr_dealloc(lut);
        return rc;
    }
    if (strncmp(which, "grid:", 5) == 0) {
        char *end = NULL;
        long b = strtol(which + 5, &end, 10);
        if (end != which + 5 && *end == '\0' && b >= 2 && b <= 8)
            return write_out("codebook", out, tr_grid((unsigned)b), sizeof(float) << b);
        return cli_usage("codebook", "grid width must be 2..8 (grid:B), got \"%s\"", which + 5);
    }
    return cli_usage("codebook", "unknown codebook \"%s\" (3inst, mcg, mul1 or grid:B)", which);
}
