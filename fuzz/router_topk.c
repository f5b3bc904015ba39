/*
 * router_topk.c — fuzz target: router configuration checks and top-k selection (MOE.md §1, KERNELS.md §4.9;
 * ops.h tr_router_check / tr_ref_router_topk) with NaN/Inf logits and biases and optional candidate lists.
 *
 * Input: u8 mode, u8 E, u8 k, u8 flags, u8 n_group, u8 topk_group, u8 T (0..8), u8 C, u8 temperature code, u8 scaling
 * code; then T·E logits, E biases and T·C candidates (one byte each, or four raw bytes per float with flags bit 4).
 * flags: 1 norm_topk_prob, 2 bias, 4 candidates, 8 raw E/k/n_group/topk_group (else they are made mostly valid),
 * 16 raw floats, 32 aux outputs (load, count).
 * Checks: tr_ref_router_topk fails exactly when tr_router_check does, when the candidates are invalid, or when
 * candidates meet the noaux_tc group limit (refused, INVALID_PARAM), and then writes nothing; on success, per token: ids distinct, in [0, E), among the token's candidates and outside the groups
 * the §1.6 group limit excludes, in comparator-C order by score (§1.3: descending, NaN last, ties by lower id), and
 * no unselected allowed expert precedes the k-th selected one; the scores and weights equal the §1.4–§1.6 formulas
 * recomputed here with the same primitives (tr_expf, tr_sigmoid, RNh) bit for bit; aux count/load match.
 */
#include "fuzz.h"
#include "trellis/fp16.h"
#include "trellis/numeric.h"
#include "trellis/ops.h"

#include <math.h>

static float code_float(fuzz_bytes *in, int raw)
{
    if (raw)
        return fuzz_f32(in);
    uint8_t v = fuzz_u8(in);
    if (v < 200)
        return ((float)v - 100.0f) / 8.0f;
    static const uint32_t bits[] = {0x7FC00000u, 0xFFC00001u, 0x7F800000u, 0xFF800000u, 0x80000000u, 0x00000000u,
                                    0x00000001u, 0x7F7FFFFFu, 0xFF7FFFFFu, 0x42B20000u, 0xC2B20000u, 0x3F800000u};
    uint32_t u = bits[(v - 200) % (sizeof bits / sizeof bits[0])];
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t fb(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float rnh(float x) { return tr_f16_to_f32(tr_f32_to_f16(x)); }

/* §1.3 comparator: does (sa, a) come before (sb, b)? */
static int before(float sa, uint32_t a, float sb, uint32_t b)
{
    if (isnan(sa) || isnan(sb))
        return isnan(sa) && isnan(sb) ? a < b : !isnan(sa);
    if (sa != sb)
        return sa > sb;
    return a < b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT)
        return 0;
    fuzz_bytes in = {data, size, 0};
    uint8_t mb = fuzz_u8(&in), eb = fuzz_u8(&in), kb = fuzz_u8(&in), flags = fuzz_u8(&in);
    uint8_t gb = fuzz_u8(&in), tgb = fuzz_u8(&in), tb = fuzz_u8(&in), cb = fuzz_u8(&in);
    uint8_t temp_code = fuzz_u8(&in), scale_code = fuzz_u8(&in);
    int raw = flags & 16;
    tr_router_cfg c;
    memset(&c, 0, sizeof c);
    c.mode = (tr_router_mode)(mb % 4);             /* 3: unknown mode */
    c.norm_topk_prob = flags & 1;
    if (flags & 8) {
        c.E = eb;
        c.k = kb;
        c.n_group = gb;
        c.topk_group = tgb;
    } else {
        c.mode = (tr_router_mode)(mb % 3);
        c.E = 1 + eb % 64;
        c.n_group = 1;
        for (uint32_t g = 1 + gb % 8; g > 1; g--)  /* a divisor of E leaving >= 2 experts per group */
            if (c.E % g == 0 && c.E / g >= 2) {
                c.n_group = g;
                break;
            }
        c.topk_group = 1 + tgb % c.n_group;
        uint32_t reach = c.mode == TR_ROUTER_NOAUX_TC ? c.topk_group * (c.E / c.n_group) : c.E;
        c.k = 1 + kb % reach;
    }
    static const float temps[] = {1.0f, 0.5f, 2.0f, 0.7f, 1e-30f, 1e30f, 0.0f, -1.0f, INFINITY, NAN};
    c.temperature = temp_code < 200 ? temps[temp_code % 6] : temps[temp_code % 10];
    static const float scales[] = {1.8f, 1.0f, 2.5f, 1e-30f, 0.0f, -1.0f, INFINITY, NAN};
    c.routed_scaling_factor = scale_code < 200 ? scales[scale_code % 4] : scales[scale_code % 8];
    uint32_t T = tb % 9, C = cb % 70;
    uint32_t E = c.E;
    if (E == 0 || E > 4096)   /* the check refuses these; keep the buffers small */
        E = E ? 4096 : 1;

    float *logits = malloc(((size_t)T * E + 1) * sizeof *logits), *bias = malloc((size_t)E * sizeof *bias);
    int32_t *cand = (flags & 4) ? malloc(((size_t)T * C + 1) * sizeof *cand) : NULL;
    for (size_t i = 0; i < (size_t)T * E; i++)
        logits[i] = code_float(&in, raw);
    for (uint32_t e = 0; e < E; e++)
        bias[e] = code_float(&in, raw);
    int cand_ok = 1;
    if (cand) {
        for (uint32_t t = 0; t < T; t++) {
            uint32_t seen = 0;
            for (uint32_t j = 0; j < C; j++) {
                uint8_t v = fuzz_u8(&in);
                int32_t id = v >= 250 ? (v == 255 ? -1 : (int32_t)E + (v - 250)) : (int32_t)(v % E);
                cand[(size_t)t * C + j] = id;
                if (id < 0 || (uint32_t)id >= E)
                    cand_ok = 0;
                else {
                    for (uint32_t q = 0; q < j; q++)
                        if (cand[(size_t)t * C + q] == id)
                            cand_ok = 0;
                    seen++;
                }
            }
            if (seen < c.k)
                cand_ok = 0;
        }
    }
    size_t nk = (size_t)T * (c.k ? c.k : 1) + 1;
    int32_t *ids = malloc(nk * sizeof *ids), *count = malloc((size_t)E * sizeof *count);
    float *w = malloc(nk * sizeof *w), *load = malloc((size_t)E * sizeof *load);
    FUZZ_SETUP_CHECK(logits && bias && ids && w && count && load && (!(flags & 4) || cand), "out of memory");
    memset(ids, 0xEE, nk * sizeof *ids);
    memset(w, 0xEE, nk * sizeof *w);

    tr_error err;
    int chk = tr_router_check(&c, &err);
    int aux = flags & 32;
    int rc = tr_ref_router_topk(&c, logits, T, flags & 2 ? bias : NULL, cand, C, ids, w, aux ? load : NULL,
                                aux ? count : NULL, &err);
    int group_cand = cand && c.mode == TR_ROUTER_NOAUX_TC && c.n_group > 1;   /* refused (reference/ops_route.c) */
    if (chk != TR_OK || (cand && !cand_ok && T > 0) || (chk == TR_OK && group_cand)) {
        FUZZ_ASSERT(rc != TR_OK && (chk == TR_OK || rc == chk), "check %d, router_topk %d", chk, rc);
        FUZZ_ASSERT(chk != TR_OK || !group_cand || rc == TR_E_INVALID_PARAM, "candidates with groups: %d", rc);
        for (size_t i = 0; i < nk; i++)
            FUZZ_ASSERT(ids[i] == (int32_t)0xEEEEEEEEu && fb(w[i]) == 0xEEEEEEEEu,
                        "router_topk wrote output %zu after an error", i);
        goto out;
    }
    FUZZ_ASSERT(rc == TR_OK, "valid configuration and candidates refused: %s", err.text);

    uint8_t *allowed = malloc(E), *gkeep = calloc(c.n_group ? c.n_group : 1, 1);
    float *score = malloc((size_t)E * sizeof *score), *sv = malloc((size_t)E * sizeof *sv);
    float *ld = calloc(E, sizeof *ld);
    FUZZ_SETUP_CHECK(allowed && gkeep && score && sv && ld, "out of memory");
    const int f16 = c.mode == TR_ROUTER_SOFTMAX_TOPK_F16;
    for (uint32_t t = 0; t < T; t++) {
        const float *l = logits + (size_t)t * E;
        const int32_t *id = ids + (size_t)t * c.k;
        const float *wt = w + (size_t)t * c.k;
        memset(allowed, cand ? 0 : 1, E);
        for (uint32_t j = 0; cand && j < C; j++)
            allowed[cand[(size_t)t * C + j]] = 1;
        /* scores: p (softmax modes) or sel (noaux_tc); sv: p, or the unbiased sigmoid s */
        if (c.mode == TR_ROUTER_NOAUX_TC) {
            for (uint32_t e = 0; e < E; e++) {
                sv[e] = tr_sigmoid(l[e]);
                score[e] = sv[e] + (flags & 2 ? bias[e] : 0.0f);
            }
        } else {
            float m = NAN, S = 0.0f;
            for (uint32_t e = 0; e < E; e++) {
                float v = c.temperature != 1.0f ? l[e] / c.temperature : l[e];
                sv[e] = f16 ? rnh(v) : v;
                if (allowed[e] && !isnan(sv[e]) && (isnan(m) || sv[e] > m))
                    m = sv[e];
            }
            for (uint32_t e = 0; e < E; e++) {
                sv[e] = allowed[e] ? tr_expf(sv[e] - m) : 0.0f;
                if (allowed[e])
                    S = S + sv[e];
            }
            for (uint32_t e = 0; e < E; e++)
                score[e] = sv[e] = !allowed[e] ? 0.0f : f16 ? rnh(sv[e] / S) : sv[e] / S;
        }
        /* group limit (§1.6 step 2; never with candidates, see above) */
        if (c.mode == TR_ROUTER_NOAUX_TC && c.n_group > 1) {
            uint32_t G = E / c.n_group;
            float *gs = malloc(c.n_group * sizeof *gs);
            FUZZ_SETUP_CHECK(gs != NULL, "out of memory");
            for (uint32_t q = 0; q < c.n_group; q++) {
                uint32_t a = q * G, b = UINT32_MAX;
                for (uint32_t e = q * G; e < q * G + G; e++)
                    if (before(score[e], e, score[a], a))
                        a = e;
                for (uint32_t e = q * G; e < q * G + G; e++)
                    if (e != a && (b == UINT32_MAX || before(score[e], e, score[b], b)))
                        b = e;
                gs[q] = score[a] + score[b];
            }
            memset(gkeep, 0, c.n_group);
            for (uint32_t j = 0; j < c.topk_group; j++) {
                uint32_t best = UINT32_MAX;
                for (uint32_t q = 0; q < c.n_group; q++)
                    if (!gkeep[q] && (best == UINT32_MAX || before(gs[q], q, gs[best], best)))
                        best = q;
                gkeep[best] = 1;
            }
            for (uint32_t e = 0; e < E; e++)
                allowed[e] &= gkeep[e / G];
            free(gs);
        }
        /* the selection */
        for (uint32_t j = 0; j < c.k; j++) {
            FUZZ_ASSERT(id[j] >= 0 && (uint32_t)id[j] < E, "token %u slot %u: id %d outside [0, %u)", t, j, id[j], E);
            FUZZ_ASSERT(allowed[id[j]], "token %u slot %u: expert %d is excluded", t, j, id[j]);
            for (uint32_t q = 0; q < j; q++)
                FUZZ_ASSERT(id[q] != id[j], "token %u: expert %d selected twice", t, id[j]);
            if (j > 0)
                FUZZ_ASSERT(before(score[id[j - 1]], (uint32_t)id[j - 1], score[id[j]], (uint32_t)id[j]),
                            "token %u: slots %u, %u out of comparator order", t, j - 1, j);
        }
        {
            int32_t last = id[c.k - 1];
            for (uint32_t e = 0; e < E; e++) {
                int chosen = 0;
                for (uint32_t j = 0; j < c.k; j++)
                    chosen |= id[j] == (int32_t)e;
                if (allowed[e] && !chosen)
                    FUZZ_ASSERT(!before(score[e], e, score[last], (uint32_t)last),
                                "token %u: expert %u ranks before the selected %d but was not selected", t, e, last);
            }
            /* weights */
            float D = 0.0f;
            for (uint32_t j = 0; j < c.k; j++)
                D = D + sv[id[j]];
            if (c.mode == TR_ROUTER_NOAUX_TC)
                D = D + 1e-20f;
            else if (f16)
                D = rnh(D);
            for (uint32_t j = 0; j < c.k; j++) {
                float v = sv[id[j]];
                if (c.norm_topk_prob)
                    v = f16 ? rnh(v / D) : v / D;
                if (c.mode == TR_ROUTER_NOAUX_TC)
                    v = v * c.routed_scaling_factor;
                FUZZ_ASSERT(fb(v) == fb(wt[j]), "token %u slot %u: weight 0x%08x, expected 0x%08x", t, j, fb(wt[j]),
                            fb(v));
            }
            for (uint32_t e = 0; e < E; e++)
                ld[e] = ld[e] + (c.mode == TR_ROUTER_NOAUX_TC ? sv[e] : score[e]);
        }
    }
    if (aux && T > 0) {
        for (uint32_t e = 0; e < E; e++) {
            int32_t n = 0;
            for (size_t f = 0; f < (size_t)T * c.k; f++)
                n += ids[f] == (int32_t)e;
            FUZZ_ASSERT(count[e] == n, "count[%u] = %d, expected %d", e, count[e], n);
            FUZZ_ASSERT(fb(load[e]) == fb(ld[e]), "load[%u] 0x%08x, expected 0x%08x", e, fb(load[e]), fb(ld[e]));
        }
    }
    free(allowed);
    free(gkeep);
    free(score);
    free(sv);
    free(ld);
out:
    free(logits);
    free(bias);
    free(cand);
    free(ids);
    free(w);
    free(count);
    free(load);
    return 0;
}
