/*
 * reg_bound.c — the analytical bounds of KERNELS.md §2.3 shared by the op definitions: unit roundoff and
 * underflow floor of a variant, declared depths, the Dot bound and its probabilistic form.
 */
#include "reg_internal.h"
#include "trellis/alloc.h"
#include "trellis/numeric.h"

#include <math.h>
#include <string.h>

double reg_unit(const tr_case *c) { return tr_case_acc_f16(c) ? ldexp(1.0, -11) : ldexp(1.0, -24); }

double reg_eta(const tr_case *c)
{
    int relaxed = c->metal;   /* Metal relaxed math may flush subnormals */
    if (tr_case_acc_f16(c))
        return relaxed ? ldexp(1.0, -14) : ldexp(1.0, -25);
    return relaxed ? ldexp(1.0, -126) : ldexp(1.0, -150);
}

double reg_depth(const tr_case *c, size_t n)
{
    const tr_variant *v = c->variant;
    if (v->canonical)
        return tr_case_acc_f16(c) ? tr_depth_tile16(n) : tr_depth_l16(n);
    if (v->depth_per16 > 0)   /* a declared tiled structure: 16 + ceil(n/16) */
        return tr_depth_tile16(n);
    return (double)n;         /* order unspecified */
}

double reg_dot_bound(const tr_case *c, const reg_dot *d, int prob)
{
    double u = reg_unit(c), depth = reg_depth(c, d->n);
    double g = prob ? sqrt(depth) * u : tr_gamma(depth, u);
    return g * (d->A + d->D) + d->D + (double)d->n * reg_eta(c);
}

int reg_bound_alloc(uint64_t n, double **hi, double **B, double **P, tr_error *err)
{
    *hi = tr_calloc(n ? n : 1, sizeof **hi);
    *B = tr_calloc(n ? n : 1, sizeof **B);
    *P = tr_calloc(n ? n : 1, sizeof **P);
    if (!*hi || !*B || !*P) {
        tr_dealloc(*hi);
        tr_dealloc(*B);
        tr_dealloc(*P);
        *hi = *B = *P = NULL;
        return tr_fail(err, TR_E_NOMEM, "bounds", "out of memory");
    }
    return TR_OK;
}

double reg_slack(const tr_case *c, double w16)
{
    if (c->variant->dequant_slack <= 0)
        return 0.0;
    return ldexp(1.0, -9) * fabs(w16) + ldexp(1.0, -24);
}
