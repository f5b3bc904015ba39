/*
 * reg_bound.c — the analytical bounds of KERNELS.md §2.3 shared by the op definitions: unit roundoff and
 * underflow floor of a variant, declared depths, the Dot bound and its probabilistic form.
 */
#include "reg_internal.h"
#include "trellis/alloc.h"
#include "trellis/numeric.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

double reg_unit(const tr_case *c) { return tr_case_acc_f16(c) ? ldexp(1.0, -11) : ldexp(1.0, -24); }

double reg_eta(const tr_case *c)
{
    int relaxed = c->metal_math == TR_MATH_RELAXED;   /* Metal relaxed math may flush subnormals */
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

double reg_e_exp(const tr_case *c, double g)
{
    if (c->metal_math == TR_MATH_SAFE)
        return 4.0;
    if (c->metal_math == TR_MATH_RELAXED)
        return 3.0 + floor(2.0 * fabs(g));
    return c->variant->e_exp ? (double)c->variant->e_exp : 1.0;
}

int reg_dom_why(char *why, size_t cap, const char *fmt, ...)
{
    if (why && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, cap, fmt, ap);
        va_end(ap);
    }
    return 0;
}

int reg_dom_acc(const tr_case *c, char *why, size_t cap)
{
    const char *acc = tr_params_str(&c->params, "acc");
    if (acc && strcmp(acc, c->variant->acc_f16 ? "f16" : "f32"))
        return reg_dom_why(why, cap, "acc=%s (the variant accumulates in %s)", c->variant->acc_f16 ? "f16" : "f32",
                           c->variant->acc_f16 ? "f16" : "f32");
    return 1;
}
