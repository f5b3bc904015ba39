/*
 * reg_gen.c — the seeded input generators of KERNELS.md §6: per-tensor streams, value distributions (§6.2),
 * NaN/Inf injection (§6.3), quantized weights and routings (§6.4).  Bit-reproducible on every machine.
 */
#include "reg_internal.h"
#include "trellis/alloc.h"
#include "trellis/codebook.h"
#include "trellis/fp16.h"
#include "trellis/numeric.h"
#include "trellis/pack.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void reg_stream(const tr_case *c, const char *name, tr_rng *r) { tr_rng_seed(r, tr_case_stream_seed(c, name)); }

double reg_get(const tr_buf *b, uint64_t i)
{
    switch (b->dtype) {
    case TR_DT_F32: {
        float v;
        memcpy(&v, b->data + 4 * i, 4);
        return v;
    }
    case TR_DT_F16: {
        uint16_t h;
        memcpy(&h, b->data + 2 * i, 2);
        return tr_f16_to_f32(h);
    }
    case TR_DT_BF16: {
        uint16_t h;
        memcpy(&h, b->data + 2 * i, 2);
        return tr_bf16_to_f32(h);
    }
    case TR_DT_I8: return (double)(int8_t)b->data[i];
    default: return 0.0;
    }
}

void reg_set(tr_buf *b, uint64_t i, double v)
{
    switch (b->dtype) {
    case TR_DT_F32: {
        float f = (float)v;
        memcpy(b->data + 4 * i, &f, 4);
        break;
    }
    case TR_DT_F16: {
        uint16_t h = tr_f64_to_f16(v);
        memcpy(b->data + 2 * i, &h, 2);
        break;
    }
    case TR_DT_BF16: {
        uint16_t h = tr_f32_to_bf16((float)v);
        memcpy(b->data + 2 * i, &h, 2);
        break;
    }
    case TR_DT_I8:
        b->data[i] = (uint8_t)(int8_t)(v < -128 ? -128 : v > 127 ? 127 : v);
        break;
    default:
        break;
    }
}

void reg_scale_pow2(tr_buf *b, int e)
{
    uint64_t n = tr_buf_numel(b);
    for (uint64_t i = 0; i < n; i++)
        reg_set(b, i, ldexp(reg_get(b, i), e));
}

/* Subnormal bit pattern of the buffer's format, random sign, non-zero. */
static double subnormal(tr_rng *r, tr_dtype dt)
{
    int neg = (int)(tr_rng_next(r) >> 63);
    double v;
    if (dt == TR_DT_F16)
        v = ldexp((double)tr_rng_int(r, 1, 1023), -24);
    else if (dt == TR_DT_BF16)
        v = ldexp((double)tr_rng_int(r, 1, 127), -133);
    else
        v = ldexp((double)tr_rng_int(r, 1, (1 << 23) - 1), -149);
    return neg ? -v : v;
}

static double large(tr_rng *r, tr_dtype dt)
{
    int neg = (int)(tr_rng_next(r) >> 63);
    int e = dt == TR_DT_F16 ? (int)tr_rng_int(r, 8, 14) : (int)tr_rng_int(r, 20, 60);
    double v = ldexp(1.0 + tr_rng_u01(r), e);
    return neg ? -v : v;
}

void reg_inject_nonfinite(tr_rng *r, tr_buf *b, double rate)
{
    uint64_t n = tr_buf_numel(b);
    if (n == 0)
        return;
    uint64_t m = (uint64_t)llround(rate * (double)n);
    if (m < 1)
        m = 1;
    uint8_t *chosen = tr_calloc(n, 1);
    if (!chosen)
        return;
    for (uint64_t j = n - m; j < n; j++) {   /* Floyd's algorithm: m distinct positions */
        uint64_t t = (uint64_t)tr_rng_int(r, 0, (int64_t)j);
        chosen[chosen[t] ? j : t] = 1;
    }
    static const double kinds[3] = {NAN, INFINITY, -INFINITY};
    unsigned k = 0;
    for (uint64_t i = 0; i < n; i++)
        if (chosen[i]) {
            if (b->dtype == TR_DT_F32) {
                uint32_t bits = k % 3 == 0 ? 0x7FC00000u : k % 3 == 1 ? 0x7F800000u : 0xFF800000u;
                memcpy(b->data + 4 * i, &bits, 4);
            } else if (b->dtype == TR_DT_F16) {
                uint16_t bits = k % 3 == 0 ? 0x7E00 : k % 3 == 1 ? 0x7C00 : 0xFC00;
                memcpy(b->data + 2 * i, &bits, 2);
            } else
                reg_set(b, i, kinds[k % 3]);
            k++;
        }
    tr_dealloc(chosen);
}

int reg_fill(const tr_case *c, tr_buf *b, const char *dist, double sigma)
{
    tr_rng r;
    reg_stream(c, b->name, &r);
    uint64_t n = tr_buf_numel(b);
    int kind = !strcmp(dist, "normal") || !strcmp(dist, "nan_inf") ? 0 : !strcmp(dist, "uniform") ? 1
               : !strcmp(dist, "large") ? 2 : !strcmp(dist, "subnormal") ? 3 : !strcmp(dist, "zeros") ? 4
               : !strcmp(dist, "signed_zeros") ? 5 : !strcmp(dist, "mixed") ? 6 : -1;
    if (kind < 0)
        return TR_E_INVALID_PARAM;
    for (uint64_t i = 0; i < n; i++) {
        double v;
        switch (kind) {
        case 0: v = sigma * tr_rng_normal(&r); break;
        case 1: v = sigma * (2.0 * tr_rng_u01(&r) - 1.0); break;
        case 2: v = large(&r, b->dtype); break;
        case 3: v = subnormal(&r, b->dtype); break;
        case 4: v = 0.0; break;
        case 5: v = tr_rng_next(&r) >> 63 ? -0.0 : 0.0; break;
        default: {
            double u = tr_rng_u01(&r);
            v = u < 0.90 ? sigma * tr_rng_normal(&r) : u < 0.94 ? 0.0 : u < 0.97 ? subnormal(&r, b->dtype)
                                                                                   : large(&r, b->dtype);
        }
        }
        reg_set(b, i, v);
    }
    if (!strcmp(dist, "nan_inf"))
        reg_inject_nonfinite(&r, b, 0.01);
    return TR_OK;
}

/* ---- quantized weights ------------------------------------------------------------------------------------------ */

static float scale_value(tr_rng *r, const char *kind, int h16)
{
    int lo = -10, hi = -4;
    if (!strcmp(kind, "zero"))
        return 0.0f;
    if (!strcmp(kind, "tiny"))
        lo = -30, hi = -26;
    else if (!strcmp(kind, "huge"))
        lo = 12, hi = 16;
    int e = (int)tr_rng_int(r, lo, hi);
    float v = (float)ldexp(1.0 + tr_rng_u01(r), e);
    return h16 ? tr_f16_to_f32(tr_f32_to_f16(v)) : v;
}

static float sign_value(tr_rng *r, const char *kind)
{
    if (!strcmp(kind, "unit"))
        return 1.0f;
    float s = tr_rng_next(r) >> 63 ? -1.0f : 1.0f;
    if (!strcmp(kind, "general"))
        s = s * (float)(0.5 + 1.5 * tr_rng_u01(r));
    return s;
}

int reg_make_qweight(const tr_case *c, tr_bufs *in, const char *prefix, const reg_qspec *s, tr_error *err)
{
    char name[4][40];
    static const char *const suffix[4] = {"indices", "scales", "su", "sv"};
    for (int k = 0; k < 4; k++)
        snprintf(name[k], sizeof name[k], "%s.%s", prefix, suffix[k]);
    uint32_t G = (s->I + s->gs - 1) / s->gs;
    uint64_t plen = 1 + tr_packed_body_bytes(s->O, s->I, s->bits);
    uint64_t shp_i[1] = {plen}, shp_s[2] = {G, s->O}, shp_u[1] = {s->I}, shp_v[1] = {s->O};
    tr_buf *bi = tr_bufs_add(in, name[0], TR_ROLE_INPUT, TR_DT_U8, 1, shp_i);
    tr_buf *bs = bi ? tr_bufs_add(in, name[1], TR_ROLE_INPUT, TR_DT_F32, 2, shp_s) : NULL;
    tr_buf *bu = bs ? tr_bufs_add(in, name[2], TR_ROLE_INPUT, TR_DT_F32, 1, shp_u) : NULL;
    tr_buf *bv = bu ? tr_bufs_add(in, name[3], TR_ROLE_INPUT, TR_DT_F32, 1, shp_v) : NULL;
    uint8_t *q = bv ? tr_malloc((size_t)s->O * s->I) : NULL;
    if (!q)
        return tr_fail(err, TR_E_NOMEM, prefix, "out of memory");
    tr_rng r;
    reg_stream(c, name[0], &r);
    unsigned L = 1u << s->bits;
    int pat = !strcmp(s->pattern, "zero") ? 0 : !strcmp(s->pattern, "max") ? 1
              : !strcmp(s->pattern, "alternating") ? 2 : 3;   /* decided once: this loop runs O·I times */
    for (size_t k = 0; k < (size_t)s->O * s->I; k++) {
        unsigned v;
        if (pat == 0)
            v = 0;
        else if (pat == 1)
            v = L - 1;
        else if (pat == 2)
            v = k % 2 ? L - 1 : 0;
        else
            v = (unsigned)tr_rng_int(&r, 0, L - 1);
        q[k] = (uint8_t)v;
    }
    tr_pack_indices(q, s->O, s->I, s->bits, bi->data);
    tr_dealloc(q);
    if (!strcmp(s->padding, "garbage")) {   /* random indices in every padded position */
        uint32_t TI = tr_tiles_of(s->I);
        for (uint32_t to = 0; to < tr_tiles_of(s->O); to++)
            for (uint32_t ti = 0; ti < TI; ti++) {
                uint8_t *tile = bi->data + 1 + ((uint64_t)to * TI + ti) * tr_tile_bytes(s->bits), e[256];
                tr_unpack_tile(tile, s->bits, e);
                for (unsigned k = 0; k < 256; k++)
                    if (to * 16 + k / 16 >= s->O || ti * 16 + k % 16 >= s->I)
                        e[k] = (uint8_t)tr_rng_int(&r, 0, L - 1);
                tr_pack_tile(e, s->bits, tile);
            }
    }
    tr_rng rs, ru, rv;
    reg_stream(c, name[1], &rs);
    reg_stream(c, name[2], &ru);
    reg_stream(c, name[3], &rv);
    const char *signs = s->h16 ? (strcmp(s->signs, "unit") ? "random" : "unit") : s->signs;
    for (uint64_t k = 0; k < (uint64_t)G * s->O; k++)
        reg_set(bs, k, scale_value(&rs, s->scale, s->h16));
    for (uint32_t k = 0; k < s->I; k++)
        reg_set(bu, k, sign_value(&ru, signs));
    for (uint32_t k = 0; k < s->O; k++)
        reg_set(bv, k, sign_value(&rv, signs));
    return TR_OK;
}

int reg_qweight_view(const tr_bufs *in, const char *prefix, uint32_t gs, tr_rotation rot, tr_qweight *w)
{
    char name[40];
    snprintf(name, sizeof name, "%s.indices", prefix);
    const tr_buf *bi = tr_bufs_get(in, name);
    snprintf(name, sizeof name, "%s.scales", prefix);
    const tr_buf *bs = tr_bufs_get(in, name);
    snprintf(name, sizeof name, "%s.su", prefix);
    const tr_buf *bu = tr_bufs_get(in, name);
    snprintf(name, sizeof name, "%s.sv", prefix);
    const tr_buf *bv = tr_bufs_get(in, name);
    if (!bi || !bs || !bu || !bv || bi->bytes < 1)
        return TR_E_INVALID_SHAPE;
    w->O = (uint32_t)bv->shape[0];
    w->I = (uint32_t)bu->shape[0];
    w->bits = bi->data[0];
    w->gs = gs;
    w->G = (uint32_t)bs->shape[0];
    w->rotation = rot;
    w->indices = bi->data;
    w->indices_len = bi->bytes;
    w->scales = (const float *)(const void *)bs->data;
    w->su = (const float *)(const void *)bu->data;
    w->sv = (const float *)(const void *)bv->data;
    return TR_OK;
}

double *reg_weights_f64(const tr_qweight *w)
{
    size_t n = (size_t)w->O * w->I;
    uint16_t *h = tr_malloc(n * 2);
    double *d = tr_malloc(n * sizeof *d);
    if (h && d) {
        tr_dequant_layer(w, h);
        for (size_t k = 0; k < n; k++)
            d[k] = tr_f16_to_f32(h[k]);
    } else {
        tr_dealloc(d);
        d = NULL;
    }
    tr_dealloc(h);
    return d;
}

/* ---- routings and probabilities (KERNELS.md §6.4) --------------------------------------------------------------- */

/* k distinct experts among pool[0..np) by partial Fisher–Yates. */
static void distinct(tr_rng *r, uint32_t *pool, uint32_t np, uint32_t k, int32_t *out)
{
    for (uint32_t j = 0; j < k; j++) {
        uint32_t t = j + (uint32_t)tr_rng_int(r, 0, np - 1 - j);
        uint32_t tmp = pool[j];
        pool[j] = pool[t];
        pool[t] = tmp;
        out[j] = (int32_t)pool[j];
    }
}

/* ln(x) for x >= 1 with only IEEE basic operations (reproducible everywhere, unlike libm's log/pow):
 * x = m·2^e with m in [1, 2), ln x = e·ln 2 + 2·atanh((m-1)/(m+1)) by its series. */
static double repro_log(double x)
{
    int e;
    double m = frexp(x, &e) * 2.0;
    e -= 1;
    double z = (m - 1.0) / (m + 1.0), z2 = z * z, term = z, sum = 0.0;
    for (int k = 1; k < 60; k += 2) {
        sum = sum + term / k;
        term = term * z2;
    }
    return (double)e * 0.6931471805599453 + 2.0 * sum;
}

/* k distinct experts drawn one by one with weight (e+1)^-1.2 among those not yet taken (inverse CDF on u01). */
static void skewed(tr_rng *r, uint32_t E, uint32_t k, int32_t *out, double *w)
{
    for (uint32_t e = 0; e < E; e++)
        w[e] = tr_expf((float)(-1.2 * repro_log((double)e + 1.0)));
    for (uint32_t j = 0; j < k; j++) {
        double total = 0.0;
        for (uint32_t e = 0; e < E; e++)
            total += w[e];
        double u = tr_rng_u01(r) * total, acc = 0.0;
        uint32_t pick = E - 1;
        for (uint32_t e = 0; e < E; e++) {
            acc += w[e];
            if (w[e] > 0.0 && u < acc) {
                pick = e;
                break;
            }
        }
        while (w[pick] == 0.0)   /* rounding at the top end: take the last available expert */
            pick--;
        out[j] = (int32_t)pick;
        w[pick] = 0.0;
    }
}

int reg_make_routing(const tr_case *c, const char *stream, const char *routing, uint32_t T, uint32_t k, uint32_t E,
                     int32_t *ids)
{
    tr_rng r;
    reg_stream(c, stream, &r);
    uint32_t *pool = tr_malloc((size_t)E * sizeof *pool);
    double *w = tr_malloc((size_t)E * sizeof *w);
    if (!pool || !w) {
        tr_dealloc(pool);
        tr_dealloc(w);
        return TR_E_NOMEM;
    }
    int rc = TR_OK;
    uint64_t N = (uint64_t)T * k;
    if (!strcmp(routing, "ragged")) {   /* runs of 1, 4, 5, 16, 17, 33 of experts 0, 1, 2, … (mod E), shuffled */
        static const uint32_t runs[6] = {1, 4, 5, 16, 17, 33};
        uint64_t f = 0;
        for (uint32_t e = 0; f < N; e++)
            for (uint32_t q = 0; q < runs[e % 6] && f < N; q++)
                ids[f++] = (int32_t)(e % E);
        for (uint64_t i = N; i > 1; i--) {   /* Fisher–Yates */
            uint64_t j = (uint64_t)tr_rng_int(&r, 0, (int64_t)i - 1);
            int32_t t = ids[i - 1];
            ids[i - 1] = ids[j];
            ids[j] = t;
        }
    } else {
        for (uint32_t t = 0; t < T && rc == TR_OK; t++) {
            int32_t *row = ids + (size_t)t * k;
            for (uint32_t e = 0; e < E; e++)
                pool[e] = e;
            if (!strcmp(routing, "uniform") || !strcmp(routing, "duplicates") || !strcmp(routing, "invalid") ||
                !strcmp(routing, "max_k")) {
                distinct(&r, pool, E, k, row);
                if (!strcmp(routing, "duplicates") && k > 1)
                    row[1] = row[0];
            } else if (!strcmp(routing, "skewed"))
                skewed(&r, E, k, row, w);
            else if (!strcmp(routing, "hot_expert")) {
                pool[E - 1] = 0;
                pool[0] = E - 1;   /* E-1 first, the others distinct among the rest */
                row[0] = (int32_t)(E - 1);
                if (k > 1)
                    distinct(&r, pool + 1, E - 1, k - 1, row + 1);
            } else if (!strcmp(routing, "one_expert")) {
                for (uint32_t j = 0; j < k; j++)
                    row[j] = (int32_t)(E - 1);
            } else if (!strcmp(routing, "empty_experts")) {
                uint32_t sub = (E + 3) / 4 > k ? (E + 3) / 4 : k;
                distinct(&r, pool, E, sub, (int32_t *)w);   /* a random subset … */
                for (uint32_t e = 0; e < sub; e++)
                    pool[e] = (uint32_t)((int32_t *)w)[e];
                distinct(&r, pool, sub, k, row);             /* … then k distinct from it */
            } else
                rc = TR_E_INVALID_PARAM;
        }
        if (rc == TR_OK && !strcmp(routing, "invalid")) {   /* one or more ids set to -1, E or 2^31 - 1 */
            static const int64_t bad[3] = {-1, 0, 2147483647};
            uint64_t m = 1 + (uint64_t)tr_rng_int(&r, 0, N > 2 ? 2 : (int64_t)N - 1);
            for (uint64_t q = 0; q < m && N > 0; q++) {
                uint64_t f = (uint64_t)tr_rng_int(&r, 0, (int64_t)N - 1);
                int64_t v = bad[q % 3];
                ids[f] = (int32_t)(v == 0 ? (int64_t)E : v);
            }
        }
    }
    tr_dealloc(pool);
    tr_dealloc(w);
    return rc;
}

void reg_make_probs(const tr_case *c, const char *stream, uint32_t T, uint32_t k, int h16, float *p)
{
    tr_rng r;
    reg_stream(c, stream, &r);
    for (uint32_t t = 0; t < T; t++) {   /* softmax in f32 with tr_expf: reproducible everywhere */
        float *row = p + (size_t)t * k, m = -INFINITY, s = 0.0f;
        for (uint32_t j = 0; j < k; j++) {
            row[j] = (float)tr_rng_normal(&r);
            m = row[j] > m ? row[j] : m;
        }
        for (uint32_t j = 0; j < k; j++) {
            row[j] = tr_expf(row[j] - m);
            s = s + row[j];
        }
        for (uint32_t j = 0; j < k; j++) {
            float v = row[j] / s;
            row[j] = h16 ? tr_f16_to_f32(tr_f32_to_f16(v)) : v;
        }
    }
}
