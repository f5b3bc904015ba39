/*
 * reg_compare.c — comparison of a backend's outputs with the reference by conformance class (KERNELS.md §2): the
 * special-value rules (§2.2), bitwise equality for EXACT and canonical ORDERED, the TOLERANT bound test, every
 * metric of §2.4, poison (unwritten) detection and the verdict (§2.5).
 */
#include "reg_internal.h"
#include "trellis/fp16.h"
#include "trellis/numeric.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int tr_case_acc_f16(const tr_case *c) { return c->acc_f16; }

tr_class tr_case_class(const tr_case *c)
{
    if (c->op->cls == TR_CLASS_EXACT)
        return TR_CLASS_EXACT;
    if (c->variant->canonical)
        return c->op->cls;   /* ORDERED: bitwise for implementations following the canonical order */
    return TR_CLASS_TOLERANT;
}

static int is_float(tr_dtype dt) { return dt == TR_DT_F32 || dt == TR_DT_F16 || dt == TR_DT_BF16; }

/* Bits of element i, zero-extended. */
static uint64_t bits_at(const tr_buf *b, uint64_t i)
{
    size_t es = tr_dtype_size(b->dtype);
    uint64_t v = 0;
    memcpy(&v, b->data + i * es, es);
    return v;
}

static int nan_bits(tr_dtype dt, uint64_t v)
{
    if (dt == TR_DT_F32)
        return (v & 0x7FFFFFFF) > 0x7F800000;
    if (dt == TR_DT_F16)
        return (v & 0x7FFF) > 0x7C00;
    if (dt == TR_DT_BF16)
        return (v & 0x7FFF) > 0x7F80;
    return 0;
}

static int64_t ulp_key(tr_dtype dt, uint64_t v)
{
    if (dt == TR_DT_F32)
        return tr_ulp_key_f32((uint32_t)v);
    if (dt == TR_DT_F16 || dt == TR_DT_BF16)
        return tr_ulp_key_f16((uint16_t)v);   /* same sign-magnitude layout */
    return (int64_t)v;
}

static double overflow_threshold(tr_dtype dt)
{
    return dt == TR_DT_F16 ? 65520.0 : dt == TR_DT_BF16 ? ldexp(1.0, 128) * (1 - ldexp(1.0, -9))
                                                         : ldexp(1.0, 128) * (1 - ldexp(1.0, -25));
}

void tr_poison_fill(tr_buf *b)
{
    uint64_t n = tr_buf_numel(b);
    if (b->dtype == TR_DT_F16 || b->dtype == TR_DT_BF16) {
        for (uint64_t i = 0; i < n; i++)
            memcpy(b->data + 2 * i, &(uint16_t){0x7E5A}, 2);
    } else if (b->dtype == TR_DT_F32) {
        for (uint64_t i = 0; i < n; i++)
            memcpy(b->data + 4 * i, &(uint32_t){0x7FDEAD5A}, 4);
    } else
        memset(b->data, 0xA5, b->bytes);
}

static uint64_t poison_bits(tr_dtype dt)
{
    if (dt == TR_DT_F16 || dt == TR_DT_BF16)
        return 0x7E5A;
    if (dt == TR_DT_F32)
        return 0x7FDEAD5A;
    uint64_t v;
    memset(&v, 0xA5, sizeof v);
    size_t es = tr_dtype_size(dt);
    return es >= 8 ? v : v & ((UINT64_C(1) << (8 * es)) - 1);
}

static void hex_bits(char *out, size_t cap, tr_dtype dt, uint64_t v)
{
    snprintf(out, cap, "0x%0*llx", (int)(2 * tr_dtype_size(dt)), (unsigned long long)v);
}

static void note_mismatch(tr_result *r, const tr_buf *g, uint64_t i, uint64_t got, uint64_t exp, double bound)
{
    r->mismatches++;
    if (r->first.valid)
        return;
    r->first.valid = 1;
    snprintf(r->first.output, sizeof r->first.output, "%s", g->name);
    r->first.index = i;
    r->first.ndim = g->ndim;
    uint64_t rest = i;
    for (int d = (int)g->ndim - 1; d >= 0; d--) {
        uint64_t s = g->shape[d] ? g->shape[d] : 1;
        r->first.coords[d] = rest % s;
        rest /= s;
    }
    hex_bits(r->first.got, sizeof r->first.got, g->dtype, got);
    hex_bits(r->first.expected, sizeof r->first.expected, g->dtype, exp);
    r->first.bound = bound;
}

typedef struct nmse_acc {
    double num, den;
} nmse_acc;

/* One output under bitwise rules (EXACT / canonical ORDERED). */
static void compare_bitwise(const tr_buf *g, const tr_buf *e, tr_result *r, nmse_acc *nm)
{
    uint64_t n = tr_buf_numel(g);
    int fl = is_float(g->dtype);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t gb = bits_at(g, i), eb = bits_at(e, i);
        if (gb == eb) {   /* the common case, same metrics as below: error 0, only nmse's denominator grows */
            double ev = fl ? reg_get(e, i) : 0.0;
            if (isfinite(ev))
                nm->den += ev * ev;
            continue;
        }
        int gn = fl && nan_bits(g->dtype, gb), en = fl && nan_bits(e->dtype, eb);
        if (!g->accumulating && gb == poison_bits(g->dtype) && eb != gb)
            r->unwritten++;
        int equal = gb == eb || (gn && en);
        if (!equal)
            note_mismatch(r, g, i, gb, eb, 0.0);
        if (!fl || gn || en)
            continue;
        double gv = reg_get(g, i), ev = reg_get(e, i), d = fabs(gv - ev);
        if (isfinite(d) && d > r->max_abs)
            r->max_abs = d;
        int64_t ud = ulp_key(g->dtype, gb) - ulp_key(e->dtype, eb);
        ud = ud < 0 ? -ud : ud;
        if (ud > r->max_ulp)
            r->max_ulp = ud;
        if (isfinite(gv) && isfinite(ev)) {
            nm->num += (gv - ev) * (gv - ev);
            nm->den += ev * ev;
        }
    }
}

/* One output under TOLERANT rules with ref_hi, B and P. */
static void compare_tolerant(const tr_buf *g, const tr_buf *e, const double *hi, const double *B, const double *P,
                             tr_result *r, nmse_acc *nm, int *precision)
{
    uint64_t n = tr_buf_numel(g);
    double thr = overflow_threshold(g->dtype);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t gb = bits_at(g, i), eb = bits_at(e, i);
        double gv = reg_get(g, i), h = hi[i], b = B[i], p = P[i];
        if (!g->accumulating && gb == poison_bits(g->dtype) && eb != gb)
            r->unwritten++;
        if (b > r->bound)
            r->bound = b;
        int gn = isnan(gv), hn = isnan(h);
        if (gn || hn) {                                  /* §2.2: expected NaN <=> got NaN */
            if (gn != hn)
                note_mismatch(r, g, i, gb, eb, b);
            continue;
        }
        if (isinf(h)) {                                  /* an infinite ref_hi must be matched in sign */
            if (gv != h)
                note_mismatch(r, g, i, gb, eb, b);
            continue;
        }
        if (isinf(gv)) {                                 /* Inf allowed only near the overflow threshold */
            int may_inf = fabs(h) + b >= thr && signbit(gv) == signbit(h);
            if (!may_inf)
                note_mismatch(r, g, i, gb, eb, b);
            continue;
        }
        if (fabs(h) - b > thr) {                         /* expected Inf of that sign */
            note_mismatch(r, g, i, gb, eb, b);
            continue;
        }
        double err = fabs(gv - h);
        if (err > r->max_abs)
            r->max_abs = err;
        double ratio = b > 0 ? err / b : (err > 0 ? INFINITY : 0.0);
        double pr = p > 0 ? err / p : (err > 0 ? INFINITY : 0.0);
        if (ratio > r->bound_ratio)
            r->bound_ratio = ratio;
        if (pr > r->prob_ratio)
            r->prob_ratio = pr;
        if (ratio > 1.0)
            note_mismatch(r, g, i, gb, eb, b);
        else if (err > 8.0 * p)
            *precision = 1;
        if (!nan_bits(e->dtype, eb)) {
            int64_t ud = ulp_key(g->dtype, gb) - ulp_key(e->dtype, eb);
            ud = ud < 0 ? -ud : ud;
            if (ud > r->max_ulp)
                r->max_ulp = ud;
        }
        nm->num += (gv - h) * (gv - h);
        nm->den += h * h;
    }
}

void tr_compare(const tr_case *c, const tr_bufs *got, const tr_expect *e, tr_result *r)
{
    tr_compare_class(c, got, e, tr_case_class(c), r);
}

void tr_compare_class(const tr_case *c, const tr_bufs *got, const tr_expect *e, tr_class cls, tr_result *r)
{
    memset(r, 0, sizeof *r);
    r->tie_flips = -1;
    r->cls = cls;
    (void)c;
    nmse_acc nm = {0, 0};
    int precision = 0;
    for (int k = 0; k < e->canon.n; k++) {
        const tr_buf *eb = e->canon.v[k];
        const tr_buf *gb = tr_bufs_get(got, eb->name);
        if (!gb || gb->dtype != eb->dtype || tr_buf_numel(gb) != tr_buf_numel(eb)) {
            r->status = TR_FAIL;
            snprintf(r->detail, sizeof r->detail, "output %s missing or of another dtype/shape", eb->name);
            return;
        }
        int tolerant = r->cls == TR_CLASS_TOLERANT && is_float(eb->dtype) && e->hi && e->hi[k];
        if (tolerant)
            compare_tolerant(gb, eb, e->hi[k], e->B[k], e->P[k], r, &nm, &precision);
        else
            compare_bitwise(gb, eb, r, &nm);
    }
    r->nmse = nm.den > 0 ? nm.num / nm.den : nm.num > 0 ? INFINITY : 0.0;
    if (r->unwritten) {
        r->status = TR_FAIL;
        snprintf(r->detail, sizeof r->detail, "%llu output elements unwritten (still poison)",
                 (unsigned long long)r->unwritten);
    } else if (r->mismatches) {
        r->status = TR_FAIL;
        snprintf(r->detail, sizeof r->detail, "%llu elements %s", (unsigned long long)r->mismatches,
                 r->cls == TR_CLASS_TOLERANT ? "outside the bound or special-value rule" : "not bitwise equal");
    } else if (precision) {
        r->status = TR_PRECISION_WARNING;
        snprintf(r->detail, sizeof r->detail, "within the bound, but some error exceeds 8x the probabilistic bound "
                 "(prob_ratio %.3g)", r->prob_ratio);
    } else
        r->status = TR_PASS;
}
