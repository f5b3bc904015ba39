/*
 * grouping.c — fuzz target: MoE token grouping ("fairway", MOE.md §3; ops.h tr_ref_validate_ids / tr_ref_moe_group,
 * moe.h tr_moe_dispatch_grouping) with ids that may be invalid on purpose and a fake device whose results may be
 * wrong on purpose.
 *
 * Input: u8 T (0..64), u8 k (0 allowed), u16 E (0 allowed), u8 route flags, u8 device behaviour, u8 shape flags,
 * u8 spare; then per flat index one id byte (>= 240: an invalid id from a table) and one prob byte (>= 200: a special
 * value from a table: NaN payloads, ±0, ±Inf, subnormals, …); the rest drives the fake device (shuffles, message,
 * corruptions).
 * Checks (abort on violation):
 *   - tr_ref_validate_ids: TR_OK iff every id is in [0, E) (k, E >= 1), else the smallest bad flat index is named;
 *   - tr_ref_moe_group (and tr_ref_moe_count/offsets/scatter): on valid ids the §3.1/§3.2 invariants against an
 *     independent stable counting sort: offsets[0] = 0, monotone, offsets[E] = N, sorted_token_ids a permutation
 *     grouped by expert and stable (flat indices ascending within a segment), probs bit-equal to the input, inverse
 *     the inverse permutation; on invalid ids the error and no output written;
 *   - tr_moe_dispatch_grouping: the same status as the reference; on success a grouping bit-identical to the
 *     reference whichever path served it (host, device, fallback after a rejected device result), the path §3.4
 *     prescribes for the route, a correct device result never rejected, and calls = gpu_primary_success +
 *     cpu_fallback + host_primary + error in the diagnostics.
 */
#include "fuzz.h"
#include "trellis/alloc.h"
#include "trellis/moe.h"
#include "trellis/ops.h"

#include <float.h>
#include <math.h>

static const int32_t bad_ids[16] = {-1, -2, INT32_MIN, INT32_MAX, 0x7FFF, 0x10000, -65536, 0, 0, 0, 0, 0, 0, 0, 0, 0};

static float special_prob(uint8_t v)
{
    static const uint32_t bits[] = {0x7FC00000u, 0xFFC00000u, 0x7FC00001u, 0x7F800001u, 0x7F800000u, 0xFF800000u,
                                    0x80000000u, 0x00000000u, 0x00000001u, 0x807FFFFFu, 0x7F7FFFFFu, 0x3F800000u,
                                    0xBF800000u, 0x00800000u, 0x3C000000u, 0x7FFFFFFFu};
    uint32_t u = bits[v % (sizeof bits / sizeof bits[0])];
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* ---- the independent reference: stable counting sort --------------------------------------------------------- */

typedef struct own_group {
    uint32_t *sorted, *offsets, *inverse;
    float *probs;
} own_group;

static void own_sort(const int32_t *ids, const float *probs, uint32_t N, uint32_t E, own_group *g)
{
    g->offsets = calloc((size_t)E + 1, sizeof *g->offsets);
    g->sorted = malloc((N ? N : 1) * sizeof *g->sorted);
    g->inverse = malloc((N ? N : 1) * sizeof *g->inverse);
    g->probs = malloc((N ? N : 1) * sizeof *g->probs);
    FUZZ_SETUP_CHECK(g->offsets && g->sorted && g->inverse && g->probs, "out of memory");
    for (uint32_t f = 0; f < N; f++)
        g->offsets[ids[f] + 1]++;
    for (uint32_t e = 0; e < E; e++)
        g->offsets[e + 1] += g->offsets[e];
    uint32_t pos = 0;
    for (uint32_t e = 0; e < E; e++)   /* O(E·N), deliberately unlike the library's counting sort */
        for (uint32_t f = 0; f < N; f++)
            if ((uint32_t)ids[f] == e) {
                g->sorted[pos] = f;
                g->probs[pos] = probs[f];
                g->inverse[f] = pos++;
            }
}

static void own_free(own_group *g)
{
    free(g->sorted);
    free(g->offsets);
    free(g->inverse);
    free(g->probs);
}

static void check_same(const own_group *w, const uint32_t *sorted, const uint32_t *offsets, const float *probs,
                       const uint32_t *inverse, uint32_t N, uint32_t E, const char *who)
{
    for (uint32_t e = 0; e <= E; e++)
        FUZZ_ASSERT(offsets[e] == w->offsets[e], "%s: offsets[%u] = %u, expected %u", who, e, offsets[e],
                    w->offsets[e]);
    for (uint32_t r = 0; r < N; r++) {
        FUZZ_ASSERT(sorted[r] == w->sorted[r], "%s: sorted_token_ids[%u] = %u, expected %u (stable order)", who, r,
                    sorted[r], w->sorted[r]);
        FUZZ_ASSERT(fbits(probs[r]) == fbits(w->probs[r]), "%s: sorted_probs[%u] bits 0x%08x, expected 0x%08x", who,
                    r, fbits(probs[r]), fbits(w->probs[r]));
        FUZZ_ASSERT(inverse[r] == w->inverse[r], "%s: inverse[%u] = %u, expected %u", who, r, inverse[r],
                    w->inverse[r]);
    }
}

/* ---- the fake device ------------------------------------------------------------------------------------------ */

typedef struct fake {
    uint8_t behaviour;
    fuzz_bytes *rest;
    const own_group *truth;
    int produced_correct;        /* the device returned a correct result (it must be accepted) */
    int failed;                  /* the device reported a failure (it must be a fallback) */
} fake;

static tr_device_status fake_run(void *user, const int32_t *ids, const float *probs, uint32_t T, uint32_t k,
                                 uint32_t E, tr_device_grouping_out *out)
{
    fake *fk = user;
    uint32_t N = T * k;
    switch (fk->behaviour % 6) {
    case 0:
        fk->failed = 1;
        return TR_DEVICE_KERNEL_MISSING;
    case 1:   /* a failure with a message that fills the whole buffer with arbitrary bytes */
        for (size_t i = 0; i < sizeof out->message; i++)
            out->message[i] = (char)fuzz_u8(fk->rest);
        fk->failed = 1;
        return TR_DEVICE_LAUNCH_FAILED;
    default:
        break;
    }
    /* a correct result, segments shuffled; token view for behaviours 3 and 5 */
    int token_view = fk->behaviour % 6 == 3 || fk->behaviour % 6 == 5;
    out->token_view = token_view;
    memcpy(out->offsets, fk->truth->offsets, ((size_t)E + 1) * sizeof *out->offsets);
    for (uint32_t r = 0; r < N; r++) {
        uint32_t f = fk->truth->sorted[r];
        out->entries[r] = token_view ? f / k : f;
        out->probs[r] = probs[f];
    }
    for (uint32_t e = 0; e < E; e++) {   /* Fisher-Yates inside each segment, driven by the input */
        uint32_t a = out->offsets[e], n = out->offsets[e + 1] - a;
        for (uint32_t i = n; i > 1; i--) {
            uint32_t j = fuzz_u8(fk->rest) % i;
            uint32_t te = out->entries[a + i - 1];
            float tp = out->probs[a + i - 1];
            out->entries[a + i - 1] = out->entries[a + j];
            out->probs[a + i - 1] = out->probs[a + j];
            out->entries[a + j] = te;
            out->probs[a + j] = tp;
        }
    }
    /* corruptions (behaviours 4, 5): (target, index, value) writes; a write that changes nothing keeps the result
     * correct, any other makes it "possibly wrong" (the dispatcher may then take either path, but its output must
     * still equal the reference) */
    fk->produced_correct = 1;
    if (fk->behaviour % 6 >= 4) {
        unsigned n = fuzz_u8(fk->rest) % 4 + 1;
        for (unsigned c = 0; c < n; c++) {
            uint8_t what = fuzz_u8(fk->rest);
            uint32_t at = fuzz_u16(fk->rest), v = fuzz_u32(fk->rest);
            uint32_t *slot = NULL;
            switch (what % 4) {
            case 0: slot = N ? &out->entries[at % N] : NULL; break;
            case 1: slot = &out->offsets[at % (E + 1)]; break;
            case 2: slot = N ? (uint32_t *)(void *)&out->probs[at % N] : NULL; break;
            default:
                out->token_view = !out->token_view;
                fk->produced_correct = 0;
                break;
            }
            if (slot) {
                uint32_t nv = what & 4 ? v : v % (N + 2), old;
                memcpy(&old, slot, sizeof old);
                memcpy(slot, &nv, sizeof nv);
                fk->produced_correct &= nv == old;
            }
        }
    }
    (void)ids;
    return TR_DEVICE_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT)
        return 0;
    fuzz_bytes in = {data, size, 0};
    uint32_t T = fuzz_u8(&in) % 65;
    uint8_t kb = fuzz_u8(&in);
    uint32_t k = kb == 255 ? 0 : 1 + kb % 9;
    uint16_t eb = fuzz_u16(&in);
    uint32_t E = eb == 0xFFFF ? 0 : 1 + eb % 300;
    uint8_t route = fuzz_u8(&in), behaviour = fuzz_u8(&in), shape_flags = fuzz_u8(&in);
    (void)fuzz_u8(&in);
    uint32_t N = T * k;

    int32_t *ids = calloc(N ? N : 1, sizeof *ids);
    float *probs = calloc(N ? N : 1, sizeof *probs);
    FUZZ_SETUP_CHECK(ids && probs, "out of memory");
    int64_t first_bad = -1;
    for (uint32_t f = 0; f < N; f++) {
        uint8_t v = fuzz_u8(&in);
        if (v >= 240) {
            ids[f] = bad_ids[v - 240];
            if (v - 240 >= 7)
                ids[f] = (int32_t)E + (v - 247);   /* E, E+1, …: just past the end */
        } else
            ids[f] = E ? (int32_t)(v % E) : 0;
        if ((ids[f] < 0 || (uint32_t)ids[f] >= E) && first_bad < 0)
            first_bad = f;
        uint8_t p = fuzz_u8(&in);
        probs[f] = p < 200 ? (float)p / 199.0f : special_prob(p);
    }
    int shape_ok = k >= 1 && E >= 1;
    int ids_ok = shape_ok && first_bad < 0;

    /* ---- tr_ref_validate_ids ---- */
    tr_error err;
    int rc = tr_ref_validate_ids(ids, T, k, E, &err);
    if (!shape_ok)
        FUZZ_ASSERT(rc == TR_E_INVALID_SHAPE, "validate_ids with k %u E %u: %d", k, E, rc);
    else if (first_bad >= 0) {
        char want[64];
        snprintf(want, sizeof want, "flat=%lld token=", (long long)first_bad);
        FUZZ_ASSERT(rc == TR_E_INVALID_EXPERT_ID && strstr(err.text, want), "validate_ids: %d %s (first bad %lld)",
                    rc, err.text, (long long)first_bad);
    } else
        FUZZ_ASSERT(rc == TR_OK, "validate_ids rejects valid ids: %s", err.text);

    own_group truth = {0};
    if (ids_ok)
        own_sort(ids, probs, N, E, &truth);

    /* ---- tr_ref_moe_group (caller buffers, poisoned) ---- */
    tr_grouping g = {0};
    size_t nn = N ? N : 1;
    g.sorted_token_ids = malloc(nn * sizeof(uint32_t));
    g.sorted_probs = malloc(nn * sizeof(float));
    g.inverse = malloc(nn * sizeof(uint32_t));
    g.expert_offsets = malloc(((size_t)E + 1) * sizeof(uint32_t));
    FUZZ_SETUP_CHECK(g.sorted_token_ids && g.sorted_probs && g.inverse && g.expert_offsets, "out of memory");
    memset(g.sorted_token_ids, 0xCD, nn * sizeof(uint32_t));
    memset(g.expert_offsets, 0xCD, ((size_t)E + 1) * sizeof(uint32_t));
    rc = tr_ref_moe_group(ids, probs, T, k, E, &g, &err);
    if (!ids_ok) {
        FUZZ_ASSERT(rc == (shape_ok ? TR_E_INVALID_EXPERT_ID : TR_E_INVALID_SHAPE), "moe_group: %d", rc);
        for (size_t r = 0; r < nn; r++)
            FUZZ_ASSERT(g.sorted_token_ids[r] == 0xCDCDCDCDu, "moe_group wrote output after an error");
        for (size_t e = 0; e <= E; e++)
            FUZZ_ASSERT(g.expert_offsets[e] == 0xCDCDCDCDu, "moe_group wrote offsets after an error");
    } else {
        FUZZ_ASSERT(rc == TR_OK, "moe_group: %s", err.text);
        FUZZ_ASSERT(g.T == T && g.k == k && g.E == E && g.N == N, "moe_group sizes");
        check_same(&truth, g.sorted_token_ids, g.expert_offsets, g.sorted_probs, g.inverse, N, E, "moe_group");
        /* scatter with wrong offsets is refused */
        if (N && E > 1) {
            uint32_t save = g.expert_offsets[1];
            g.expert_offsets[1] = save + 1;
            FUZZ_ASSERT(tr_ref_moe_scatter(ids, probs, T, k, E, g.expert_offsets, g.sorted_token_ids, g.sorted_probs,
                                           g.inverse, &err) == TR_E_INVALID_PARAM, "scatter accepted bad offsets");
            g.expert_offsets[1] = save;
        }
    }
    /* tr_ref_validate_expert_ids replaces exactly the invalid ids */
    if (E >= 1 && N) {
        int32_t *rep = malloc(N * sizeof *rep);
        FUZZ_SETUP_CHECK(rep != NULL, "out of memory");
        int32_t with = (int32_t)(E - 1);
        FUZZ_ASSERT(tr_ref_validate_expert_ids(ids, N, E, with, rep, &err) == TR_OK, "validate_expert_ids");
        for (uint32_t f = 0; f < N; f++)
            FUZZ_ASSERT(rep[f] == (ids[f] >= 0 && (uint32_t)ids[f] < E ? ids[f] : with), "replacement %u", f);
        FUZZ_ASSERT(tr_ref_validate_expert_ids(ids, N, E, (int32_t)E, rep, &err) == TR_E_INVALID_PARAM,
                    "replacement E accepted");
        free(rep);
    }

    /* ---- tr_moe_dispatch_grouping ---- */
    fake fk = {behaviour, &in, &truth, 0, 0};
    tr_device_grouping dev = {"fuzz_device_grouping", fake_run, &fk};
    tr_moe_grouping_req req;
    memset(&req, 0, sizeof req);
    req.ids.data = ids;
    req.ids.rank = 2;
    req.ids.shape[0] = T;
    req.ids.shape[1] = k;
    req.ids.on_device = route & 1;
    req.probs = req.ids;
    req.probs.data = probs;
    req.probs.on_device = (route >> 1) & 1;
    req.num_experts = E;
    req.mode = (tr_grouping_mode)((route >> 2) % 3);
    req.backend = "fuzz";
    req.device = route & 32 ? &dev : NULL;
    int bad_shape = 0;
    if (shape_flags & 1) {
        req.ids.rank = 1 + (shape_flags >> 4) % 4;   /* rank 2 stays valid */
        bad_shape |= req.ids.rank != 2;
    }
    if (shape_flags & 2) {
        req.probs.shape[shape_flags & 4 ? 0 : 1] += 1 + (shape_flags >> 6);
        bad_shape = 1;
    }
    if ((shape_flags & 8) && T) {
        req.probs.data = NULL;
        bad_shape = 1;
    }
    if (!shape_ok)
        bad_shape = 1;

    tr_moe_diag *diag = NULL;
    FUZZ_SETUP_CHECK(tr_moe_diag_new(&diag, &err) == TR_OK, "diag: %s", err.text);
    tr_grouping out;
    tr_grouping_outcome oc;
    rc = tr_moe_dispatch_grouping(&req, diag, &out, &oc, &err);
    tr_moe_diag_snapshot s;
    tr_moe_diag_get(diag, &s);
    FUZZ_ASSERT(s.grouping_calls_total == 1 &&
                    s.grouping_calls_total == s.grouping_gpu_primary_success_total + s.grouping_cpu_fallback_total +
                                                  s.grouping_host_primary_total + s.grouping_error_total,
                "counter invariant");
    if (bad_shape || !ids_ok) {
        FUZZ_ASSERT(rc == (bad_shape ? TR_E_INVALID_SHAPE : TR_E_INVALID_EXPERT_ID), "dispatch: %d %s", rc,
                    err.text);
        FUZZ_ASSERT(out.sorted_token_ids == NULL && out.expert_offsets == NULL && oc.path == TR_GROUPING_PATH_NONE &&
                        s.grouping_error_total == 1,
                    "dispatch error left output or counted wrongly");
    } else {
        FUZZ_ASSERT(rc == TR_OK, "dispatch: %s", err.text);
        FUZZ_ASSERT(out.T == T && out.k == k && out.E == E && out.N == N, "dispatch sizes");
        check_same(&truth, out.sorted_token_ids, out.expert_offsets, out.sorted_probs, out.inverse, N, E,
                   oc.path == TR_GROUPING_PATH_DEVICE ? "dispatch (device)" : "dispatch (host)");
        int on_dev = req.ids.on_device && req.probs.on_device;
        tr_grouping_path want;
        if (req.mode == TR_GROUPING_HOST || (req.mode == TR_GROUPING_AUTO && (!req.device || !on_dev)))
            want = TR_GROUPING_PATH_HOST;
        else if (!req.device || !on_dev)
            want = TR_GROUPING_PATH_FALLBACK;
        else
            want = fk.produced_correct ? TR_GROUPING_PATH_DEVICE : fk.failed ? TR_GROUPING_PATH_FALLBACK : oc.path;
        FUZZ_ASSERT(oc.path == want, "path %d, expected %d (mode %d, device %d, on device %d, correct %d)",
                    (int)oc.path, (int)want, (int)req.mode, req.device != NULL, on_dev, fk.produced_correct);
        FUZZ_ASSERT(oc.path == TR_GROUPING_PATH_DEVICE || oc.path == TR_GROUPING_PATH_HOST ||
                        oc.path == TR_GROUPING_PATH_FALLBACK,
                    "path %d", (int)oc.path);
        FUZZ_ASSERT((oc.path == TR_GROUPING_PATH_FALLBACK) == (oc.reason != 0), "reason %d on path %d", oc.reason,
                    (int)oc.path);
        tr_grouping_release(&out);
    }
    tr_moe_diag_free(diag);
    if (ids_ok)
        own_free(&truth);
    free(g.sorted_token_ids);
    free(g.sorted_probs);
    free(g.inverse);
    free(g.expert_offsets);
    free(ids);
    free(probs);
    return 0;
}
