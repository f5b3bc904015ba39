/*
 * numeric.c — tr_expf, sigmoid, SiLU, fmah and the canonical reduction orders of KERNELS.md §0-§1, and the bound
 * helpers of §2.3.  Compiled with -ffp-contract=off: every a*b+c written here rounds twice unless it says fmaf/fma.
 */
#include "trellis/numeric.h"
#include "trellis/fp16.h"

#include <float.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <math.h>

_Static_assert(FLT_EVAL_METHOD == 0, "the reference needs float arithmetic evaluated in float (KERNELS.md §0)");

/* c_n = nearest f64 to 1/n!, computed as 1.0 / (double)n! (exact factorials up to 22!). */
static double inv_factorial(int n)
{
    double f = 1.0;
    for (int i = 2; i <= n; i++)
        f *= (double)i;
    return 1.0 / f;
}

static double exp_coef[14];

__attribute__((constructor)) static void init_exp_coef(void)
{
    for (int n = 0; n <= 13; n++)
        exp_coef[n] = inv_factorial(n);
}

float tr_expf(float x)
{
    if (isnan(x))
        return x;
    if (x > 89.0f)
        return INFINITY;
    if (x < -110.0f)
        return 0.0f;
    const double *c = exp_coef;
    const double ln2_hi = tr_bits_f64(UINT64_C(0x3FE62E42FEE00000));
    const double ln2_lo = tr_bits_f64(UINT64_C(0x3DEA39EF35793C76));
    double xd = (double)x;
    double k = nearbyint(xd * 1.4426950408889634);
    double r = (xd - k * ln2_hi) - k * ln2_lo;
    double p = c[13];
    for (int n = 12; n >= 0; n--)
        p = p * r + c[n];
    return (float)ldexp(p, (int)k);
}

float tr_sigmoid(float z)
{
    float e = tr_expf(-z);
    float d = 1.0f + e;
    return 1.0f / d;
}

float tr_silu(float z)
{
    float e = tr_expf(-z);
    float d = 1.0f + e;
    return z / d;
}

uint16_t tr_fmah(uint16_t a, uint16_t b, uint16_t c)
{
    return tr_f64_to_f16(fma((double)tr_f16_to_f32(a), (double)tr_f16_to_f32(b), (double)tr_f16_to_f32(c)));
}

uint16_t tr_addh(uint16_t a, uint16_t b)
{
    return tr_f64_to_f16((double)tr_f16_to_f32(a) + (double)tr_f16_to_f32(b));   /* exact in f64 */
}

uint16_t tr_mulh(uint16_t a, uint16_t b)
{
    return tr_f64_to_f16((double)tr_f16_to_f32(a) * (double)tr_f16_to_f32(b));   /* exact in f64 */
}

float tr_l16_reduce(float q[16])
{
    for (int s = 8; s >= 1; s /= 2)
        for (int l = 0; l < s; l++)
            q[l] = q[l] + q[l + s];
    return q[0];
}

/* The reference's inner loops exist twice: compiled for FMA (fmaf becomes one vfmadd instead of a libm call) and
 * plain.  fmaf is correctly rounded either way, so both compute the same bits; the choice is made once from cpuid. */
static int has_fma;

__attribute__((constructor)) static void detect_fma(void)
{
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    has_fma = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_FMA) && (c & bit_OSXSAVE);
#endif
}

#define DOT_L16_BODY                                                                                                 \
    float q[16];                                                                                                     \
    for (int l = 0; l < 16; l++)                                                                                     \
        q[l] = 0.0f;                                                                                                 \
    for (size_t i = 0; i < n; i++)                                                                                   \
        q[i % 16] = fmaf(a[i], b[i], q[i % 16]);                                                                     \
    return tr_l16_reduce(q);

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("fma"))) static float dot_l16_fma(const float *a, const float *b, size_t n) { DOT_L16_BODY }
#endif
static float dot_l16_plain(const float *a, const float *b, size_t n) { DOT_L16_BODY }

float tr_dot_l16(const float *a, const float *b, size_t n)
{
#if defined(__x86_64__) || defined(__i386__)
    if (has_fma)
        return dot_l16_fma(a, b, n);
#endif
    return dot_l16_plain(a, b, n);
}

float tr_dot_seqf(const float *a, const float *b, size_t n)
{
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++)
        acc = fmaf(a[i], b[i], acc);
    return acc;
}

float tr_dot_f16t(const float *a, const float *b, size_t n)
{
    float acc = 0.0f;
    for (size_t t = 0; t < n; t += 16) {
        float p = 0.0f;
        for (size_t i = t; i < n && i < t + 16; i++)
            p = fmaf(a[i], b[i], p);
        acc = acc + p;
    }
    return acc;
}

/* f16 -> f64 by table: the H16T reduction converts every partial sum back, so this lookup is its inner loop. */
static double f16_value[65536];

__attribute__((constructor)) static void init_f16_values(void)
{
    for (uint32_t h = 0; h < 65536; h++)
        f16_value[h] = tr_f16_to_f32((uint16_t)h);
}

#define DOT_H16T_BITS_BODY                                                                                           \
    uint16_t acc = 0;                                                                                                \
    for (size_t t = 0; t < n; t += 16) {                                                                             \
        uint16_t ph = 0;                                                                                             \
        for (size_t i = t; i < n && i < t + 16; i++)                                                                 \
            ph = tr_f64_to_f16(fma(f16_value[a[i]], f16_value[b[i]], f16_value[ph]));                                \
        acc = tr_f64_to_f16(f16_value[acc] + f16_value[ph]);                                                         \
    }                                                                                                                \
    return acc;

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("fma"))) static uint16_t dot_h16t_fma(const uint16_t *a, const uint16_t *b, size_t n)
{
    DOT_H16T_BITS_BODY
}
#endif
static uint16_t dot_h16t_plain(const uint16_t *a, const uint16_t *b, size_t n) { DOT_H16T_BITS_BODY }

uint16_t tr_dot_h16t_bits(const uint16_t *a, const uint16_t *b, size_t n)
{
#if defined(__x86_64__) || defined(__i386__)
    if (has_fma)
        return dot_h16t_fma(a, b, n);
#endif
    return dot_h16t_plain(a, b, n);
}


uint16_t tr_dot_h16t(const float *a, const float *b, size_t n)
{
    uint16_t acc = 0;
    for (size_t t = 0; t < n; t += 16) {
        uint16_t ph = 0;
        for (size_t i = t; i < n && i < t + 16; i++)
            ph = tr_f64_to_f16(fma(f16_value[tr_f32_to_f16(a[i])], f16_value[tr_f32_to_f16(b[i])], f16_value[ph]));
        acc = tr_f64_to_f16(f16_value[acc] + f16_value[ph]);
    }
    return acc;
}

double tr_gamma(double n, double u)
{
    double nu = n * u;
    if (nu < 0.5)
        return nu / (1.0 - nu);
    return pow(1.0 + u, n) - 1.0;
}

static double half_ulp(double x, int mant_bits, int emin)
{
    x = fabs(x);
    if (!isfinite(x))
        return INFINITY;
    int e;
    frexp(x, &e);                  /* x = f·2^e, f in [0.5, 1) */
    e -= 1;                        /* x in [2^e, 2^(e+1)) */
    if (e < emin)
        e = emin;
    return ldexp(1.0, e - mant_bits - 1);
}

double tr_half_ulp_f32(double x) { return half_ulp(x, 23, -126); }
double tr_half_ulp_f16(double x) { return half_ulp(x, 10, -14); }

double tr_depth_l16(size_t n) { return (double)((n + 15) / 16) + 4.0; }
double tr_depth_tile16(size_t n) { return 16.0 + (double)((n + 15) / 16); }

int64_t tr_ulp_key_f32(uint32_t bits)
{
    int64_t mag = bits & 0x7FFFFFFF;
    return (bits & 0x80000000) ? -mag : mag;
}

int64_t tr_ulp_key_f16(uint16_t bits)
{
    int64_t mag = bits & 0x7FFF;
    return (bits & 0x8000) ? -mag : mag;
}
