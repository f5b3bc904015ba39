/*
 * ops_misc.c — reference sign_flip (KERNELS.md §4.2) and the general blockwise Hadamard transform (§4.3).
 */
#include "trellis/ops.h"
#include "trellis/fp16.h"
#include "trellis/hadamard.h"

#include <string.h>

void tr_ref_sign_flip(const uint16_t *w, const float *su, const float *sv, uint32_t K, uint32_t N, uint16_t *out)
{
    for (uint32_t k = 0; k < K; k++)
        for (uint32_t n = 0; n < N; n++) {
            float c = su[k] * sv[n];                                    /* RN32 */
            double v = (double)tr_f16_to_f32(w[(size_t)k * N + n]) * (double)c;   /* exact: 11 x 24 bits */
            out[(size_t)k * N + n] = tr_f64_to_f16(v);                  /* one RNh */
        }
}

float tr_hadamard_cm_f32(unsigned m) { return tr_hadamard_scale_f32(m); }

uint16_t tr_hadamard_cm_f16(unsigned m)
{
    return m == 32 ? 0x31A8 : m == 64 ? 0x3000 : m == 128 ? 0x2DA8 : 0;
}

int tr_hadamard_blocks(unsigned n, unsigned sizes[2])
{
    switch (n) {
    case 32: case 64: case 128: sizes[0] = n; return 1;
    case 96: sizes[0] = 64; sizes[1] = 32; return 2;
    case 160: sizes[0] = 128; sizes[1] = 32; return 2;
    case 192: sizes[0] = 128; sizes[1] = 64; return 2;
    default: return 0;
    }
}

/* Element access in the data format: f32 values or f16 bits, every operation one rounding in that format. */
typedef struct hvec {
    int f16;
    void *base;
    size_t stride;                 /* elements between consecutive vector entries */
} hvec;

static float hget(const hvec *v, size_t i)
{
    return v->f16 ? tr_f16_to_f32(((uint16_t *)v->base)[i * v->stride]) : ((float *)v->base)[i * v->stride];
}

static void hset(const hvec *v, size_t i, double exact)
{
    if (v->f16)
        ((uint16_t *)v->base)[i * v->stride] = tr_f64_to_f16(exact);
    else
        ((float *)v->base)[i * v->stride] = (float)exact;
}

static float round_fmt(int f16, double v) { return f16 ? tr_f16_to_f32(tr_f64_to_f16(v)) : (float)v; }

/* One block of m entries starting at entry `at`: butterfly stages 1, 2, …, m/2, then the scale constant. */
static void block(const hvec *v, size_t at, unsigned m, int ortho, int has_post, float post)
{
    for (unsigned s = 1; s < m; s *= 2)
        for (unsigned i = 0; i < m; i++)
            if ((i & s) == 0) {
                float a = hget(v, at + i), b = hget(v, at + i + s);
                hset(v, at + i, (double)a + (double)b);          /* sums of two f32/f16 values are exact in f64 */
                hset(v, at + i + s, (double)a - (double)b);
            }
    if (!ortho && !has_post)
        return;
    float c = v->f16 ? tr_f16_to_f32(tr_hadamard_cm_f16(m)) : tr_hadamard_cm_f32(m);
    if (!ortho)
        c = post;
    else if (has_post)
        c = round_fmt(v->f16, (double)c * (double)post);
    for (unsigned i = 0; i < m; i++)
        hset(v, at + i, (double)hget(v, at + i) * (double)c);
}

int tr_ref_hadamard(const tr_hadamard_args *a, const void *x, void *out, tr_error *err)
{
    unsigned sizes[2];
    int nb = tr_hadamard_blocks(a->n, sizes);
    if (!nb)
        return tr_fail(err, TR_E_INVALID_PARAM, "hadamard", "n = %u (32, 64, 96, 128, 160 or 192)", a->n);
    if (a->cols && (a->K % a->n != 0 || a->postscale))
        return tr_fail(err, TR_E_INVALID_SHAPE, "hadamard", "cols layout needs K %% n == 0 and no post-scale");
    size_t es = a->f16 ? 2 : 4;
    size_t total = a->cols ? (size_t)a->K * a->N : (size_t)a->R * a->n;
    memcpy(out, x, total * es);
    if (a->prescale) {
        hvec all = {a->f16, out, 1}, s = {a->f16, (void *)a->prescale, 1};
        for (size_t i = 0; i < total; i++)
            hset(&all, i, (double)hget(&all, i) * (double)hget(&s, i));
    }
    size_t vectors = a->cols ? (size_t)(a->K / a->n) * a->N : a->R;
    for (size_t vi = 0; vi < vectors; vi++) {
        hvec v;
        size_t row = a->cols ? 0 : vi;
        v.f16 = a->f16;
        if (a->cols) {   /* column n_col, chunk q of n consecutive k */
            size_t q = vi / a->N, col = vi % a->N;
            v.base = (char *)out + ((size_t)q * a->n * a->N + col) * es;
            v.stride = a->N;
        } else {
            v.base = (char *)out + (size_t)vi * a->n * es;
            v.stride = 1;
        }
        float post = 1.0f;
        if (a->postscale) {
            hvec ps = {a->f16, (void *)a->postscale, 1};
            post = hget(&ps, row);
        }
        size_t at = 0;
        for (int b = 0; b < nb; b++) {
            block(&v, at, sizes[b], a->ortho, a->postscale != NULL, post);
            at += sizes[b];
        }
    }
    return TR_OK;
}
