/*
 * quantize_spec.c — which tensors `trellis quantize` quantizes and at which width (FORMAT.md §3.6, §6.5): the role
 * of a tensor name, the --bits SPEC grammar, the writing order, and the greedy avg=X allocation.
 */
#include "trellis/quantize.h"

#include "ckpt_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- roles ------------------------------------------------------------------------------------------------------- */

static const char *const role_names[TR_QROLE_COUNT] = {"attn", "gate", "up", "down", "shared", "dense", "lm_head"};

const char *tr_qrole_name(tr_qrole r) { return (unsigned)r < TR_QROLE_COUNT ? role_names[r] : "?"; }

/* s after `prefix`, or NULL when s does not start with it. */
static const char *after(const char *s, const char *prefix)
{
    size_t n = strlen(prefix);
    return strncmp(s, prefix, n) == 0 ? s + n : NULL;
}

/* "<digits>." → what follows the dot; NULL otherwise. */
static const char *after_number(const char *s)
{
    if (!s || *s < '0' || *s > '9')
        return NULL;
    while (*s >= '0' && *s <= '9')
        s++;
    return *s == '.' ? s + 1 : NULL;
}

/* "gate_proj.weight" 0, "up_proj.weight" 1, "down_proj.weight" 2, else -1. */
static int projection(const char *s)
{
    static const char *const p[3] = {"gate_proj.weight", "up_proj.weight", "down_proj.weight"};
    for (int k = 0; k < 3; k++)
        if (strcmp(s, p[k]) == 0)
            return k;
    return -1;
}

static int attention_projection(const char *s)
{
    static const char *const p[] = {"q_a_proj.weight", "q_b_proj.weight",           "q_proj.weight",
                                    "k_proj.weight",   "v_proj.weight",             "kv_a_proj_with_mqa.weight",
                                    "kv_b_proj.weight", "o_proj.weight"};
    for (size_t k = 0; k < sizeof p / sizeof p[0]; k++)
        if (strcmp(s, p[k]) == 0)
            return 1;
    return 0;
}

/* The tensor's role after "model.layers.N." */
static int layer_role(const char *s)
{
    const char *r;
    if ((r = after(s, "self_attn.")) != NULL)
        return attention_projection(r) ? TR_QROLE_ATTN : -1;
    if ((r = after(s, "mlp.experts.")) != NULL) {
        int p = projection(after_number(r) ? after_number(r) : "");
        return p < 0 ? -1 : TR_QROLE_GATE + p;
    }
    if ((r = after(s, "mlp.shared_experts.")) != NULL)
        return projection(r) < 0 ? -1 : TR_QROLE_SHARED;
    if ((r = after(s, "mlp.")) != NULL)
        return projection(r) < 0 ? -1 : TR_QROLE_DENSE;
    return -1;
}

int tr_quant_role(const char *name)
{
    if (strcmp(name, "lm_head.weight") == 0)
        return TR_QROLE_LM_HEAD;
    const char *r = after_number(after(name, "model.layers."));
    return r ? layer_role(r) : -1;
}

/* ---- writing order (the v3 writer's order, FORMAT.md §3.2) ------------------------------------------------------- */

static long order_class(const char *name)
{
    if (strncmp(name, "lm_head", 7) == 0)
        return 0x7FFFFFFF;
    return ckpt_layer_of(name);
}

int tr_quant_order_cmp(const char *a, const char *b)
{
    long la = order_class(a), lb = order_class(b);
    if (la != lb)
        return la < lb ? -1 : 1;
    return strcmp(a, b);
}

/* ---- --bits SPEC ------------------------------------------------------------------------------------------------- */

#define ROLE_DEFAULT TR_QROLE_COUNT
#define ROLE_AVG (TR_QROLE_COUNT + 1)

/* Role index of item name s[0..n): 0..COUNT-1, ROLE_DEFAULT, ROLE_AVG, or -1. */
static int spec_role(const char *s, size_t n)
{
    for (int r = 0; r < TR_QROLE_COUNT; r++)
        if (strlen(role_names[r]) == n && memcmp(role_names[r], s, n) == 0)
            return r;
    if (n == 7 && memcmp(s, "default", 7) == 0)
        return ROLE_DEFAULT;
    if (n == 3 && memcmp(s, "avg", 3) == 0)
        return ROLE_AVG;
    return -1;
}

/* A width: 1 to 3 decimal digits with value 2..8.  Returns the width or 0. */
static unsigned spec_width(const char *s, size_t n)
{
    if (n == 0 || n > 3)
        return 0;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    return v >= 2 && v <= 8 ? v : 0;
}

/* avg's X: digits with at most one '.', value in [2, 8].  Returns 0 and sets *x, or -1. */
static int spec_avg(const char *s, size_t n, double *x)
{
    char buf[32];
    size_t dots = 0, digits = 0;
    if (n == 0 || n >= sizeof buf)
        return -1;
    for (size_t i = 0; i < n; i++) {
        dots += s[i] == '.';
        digits += s[i] >= '0' && s[i] <= '9';
    }
    if (dots > 1 || digits == 0 || dots + digits != n)
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    *x = strtod(buf, NULL);
    return *x >= 2.0 && *x <= 8.0 ? 0 : -1;
}

/* One item s[0..n) ("role=value" or a bare width). */
static int spec_item(const char *s, size_t n, tr_bits_spec *out, int *seen, tr_error *err)
{
    const char *eq = memchr(s, '=', n);
    size_t kn = eq ? (size_t)(eq - s) : 0;
    const char *v = eq ? eq + 1 : s;
    size_t vn = eq ? n - kn - 1 : n;
    int role = eq ? spec_role(s, kn) : ROLE_DEFAULT;
    if (!eq && spec_width(s, n) == 0)
        return tr_fail(err, TR_E_USAGE, "--bits", "\"%.*s\" is neither role=b, avg=X nor a width in 2..8", (int)n, s);
    if (role < 0)
        return tr_fail(err, TR_E_USAGE, "--bits",
                       "unknown role \"%.*s\" (roles: attn, gate, up, down, shared, dense, lm_head, default, avg)",
                       (int)kn, s);
    const char *label = role == ROLE_AVG ? "avg" : role == ROLE_DEFAULT ? "default" : role_names[role];
    if (seen[role]++)
        return tr_fail(err, TR_E_USAGE, "--bits", "role \"%s\" given twice", label);
    if (role == ROLE_AVG) {
        if (spec_avg(v, vn, &out->avg) != 0)
            return tr_fail(err, TR_E_USAGE, "--bits", "avg=%.*s: X must be a number in [2, 8]", (int)vn, v);
        out->has_avg = 1;
        return TR_OK;
    }
    unsigned b = spec_width(v, vn);
    if (b == 0)
        return tr_fail(err, TR_E_USAGE, "--bits", "%s=%.*s: the width must be an integer in 2..8", label, (int)vn, v);
    if (role == ROLE_DEFAULT) {
        out->default_bits = b;
        out->default_given = 1;
    } else
        out->role_bits[role] = b;
    return TR_OK;
}

int tr_bits_spec_parse(const char *text, tr_bits_spec *out, tr_error *err)
{
    memset(out, 0, sizeof *out);
    out->default_bits = 4;
    if (!text || !*text)
        return tr_fail(err, TR_E_USAGE, "--bits", "empty SPEC");
    int seen[TR_QROLE_COUNT + 2] = {0};
    for (const char *s = text;;) {
        const char *comma = strchr(s, ',');
        size_t n = comma ? (size_t)(comma - s) : strlen(s);
        if (n == 0)
            return tr_fail(err, TR_E_USAGE, "--bits", "empty item in \"%s\"", text);
        int rc = spec_item(s, n, out, seen, err);
        if (rc != TR_OK)
            return rc;
        if (!comma)
            break;
        s = comma + 1;
    }
    if (out->has_avg && out->default_given)
        return tr_fail(err, TR_E_USAGE, "--bits", "avg=X replaces default: give one of them, not both");
    return TR_OK;
}

int tr_bits_spec_width(const tr_bits_spec *s, tr_qrole role)
{
    if (s->role_bits[role])
        return (int)s->role_bits[role];
    if (role == TR_QROLE_LM_HEAD)
        return 0;
    return s->has_avg ? TR_BITS_ALLOCATED : (int)s->default_bits;
}

/* ---- greedy avg=X allocation (FORMAT.md §6.5) -------------------------------------------------------------------- */

/* (SSE(b−1) − SSE(b)) / numel, NaN → +inf */
static double step_cost(const tr_alloc_tensor *t, unsigned b)
{
    double c = (t->sse[b - 1] - t->sse[b]) / (double)t->numel;
    return isnan(c) ? INFINITY : c;
}

int tr_bits_allocate(const tr_alloc_tensor *t, size_t n, double avg, unsigned *bits, tr_error *err)
{
    uint64_t num = 0, den = 0;   /* Σ b·numel, Σ numel */
    for (size_t k = 0; k < n; k++) {
        bits[k] = t[k].fixed_bits ? t[k].fixed_bits : 8;
        num += bits[k] * t[k].numel;
        den += t[k].numel;
    }
    while (den > 0 && (double)num / (double)den > avg) {
        size_t best = n;
        double bc = 0.0;
        for (size_t k = 0; k < n; k++) {
            if (t[k].fixed_bits || bits[k] <= 2)
                continue;
            double c = step_cost(&t[k], bits[k]);
            if (best == n || c < bc) {   /* strict: ties keep the tensor written first */
                best = k;
                bc = c;
            }
        }
        if (best == n)
            return tr_fail(err, TR_E_USAGE, "--bits",
                           "avg=%g cannot be reached: with every allocated tensor at 2 bits the average is %.6g bits "
                           "per weight", avg, (double)num / (double)den);
        bits[best]--;
        num -= t[best].numel;
    }
    return TR_OK;
}
