// router.metal — KERNELS.md §4.9 router ops (MOE.md §1): logits, softmax, top-k selection, renormalisation.
//
// Canonical math, per token (all f32 unless stated; τ = 1, norm_topk_prob = 1 for every kernel here, as the foreign
// kernels of these symbols renormalise the selected weights):
//   logits  l_e = L16 Σ_d widen(x_d) · widen(Wr_ed)   (int8: RN32(L16 Σ_d x_d · Wr_ed · … ) = RN32(acc · scale_e))
//           one thread per expert, the 16 L16 lanes held in that thread (lane = d mod 16), butterfly 8, 4, 2, 1.
//   softmax_topk (fused, int8, sparse routers; MOE.md §1.4): m = max of the non-NaN logits of the allowed experts;
//           ex_e = tr_expf(l_e − m); S = SEQ Σ_e ex_e (ascending e, allowed only); p_e = ex_e / S;
//           select k by p; D = SEQ Σ_j p_{id_j} (slot order); w_j = p_{id_j} / D; stored as RNh(w_j) (f16 output).
//   softmax_topk_f16 (softmax_topk_* kernels; MOE.md §1.5): l16 = the f16 logits; m = max of the non-NaN l16;
//           ex_e = tr_expf(widen(l16_e) − widen(m)); S = SEQ f32; p_e = RNh(ex_e / S); select k by p;
//           D = RNh(SEQ f32 Σ_j widen(p_{id_j})); w_j = RNh(widen(p_{id_j}) / widen(D)).
//   Selection (MOE.md §1.3): a precedes b iff score_a > score_b, or equal and a < b; NaN ranks below −Inf and NaNs
//           are equal; slot j holds the j-th selected expert.
// Divisions use precise::divide (correctly rounded even under fast math); tr_expf is tk_expf (bit for bit).
// The softmax, the SEQ sums and the selection are inherently sequential: thread 0 does them after one barrier.
// So ids equal tr_ref_router_topk's bit for bit and the weights equal RNh of its weights (f16 mode: equal).
//
// Launch (all): 128 threads per threadgroup, one threadgroup per token: grid (T, 1, 1) (decode kernels: (1, 1, 1)).
// Domain: E ≤ 256 (logits in threadgroup memory), k ≤ 16; softmax_topk_*: E ≤ 128, k ≤ 8 (8_128e: E = 128, k = 8).
#include "trellis_common.h"

#define ROUTER_MAX_E 256u
#define ROUTER_MAX_K 16u

// MOE.md §1.3 comparator: does (sa, a) precede (sb, b)?
inline bool router_precedes(float sa, uint a, float sb, uint b)
{
    bool na = isnan(sa), nb = isnan(sb);
    if (na || nb)
        return na && nb ? a < b : nb;
    if (sa > sb)
        return true;
    if (sa < sb)
        return false;
    return a < b;
}

// Logit of expert e: L16 over d of widen(x_d)·widen(w[d·stride_d + e·stride_e]).
template <typename WP>
inline float router_logit(device const half *x, WP w, uint H, ulong stride_d, ulong stride_e, uint e)
{
    float q[16];
    for (uint l = 0; l < 16; l++)
        q[l] = 0.0f;
    for (uint d = 0; d < H; d++)
        q[d % 16] = fma(float(x[d]), float(w[d * stride_d + e * stride_e]), q[d % 16]);
    return tk_l16_reduce(q);
}

// Softmax + top-k + renormalisation of one token (thread 0).  l[e] logits (f32, or f16 values in f16 mode); allowed
// (nullptr = all); p is scratch [E].  Writes ids[0..k) and w[0..k) (f16).
inline void router_select(threadgroup const float *l, threadgroup const uchar *allowed, threadgroup float *p, uint E,
                          uint k, bool f16mode, device uint *ids, device half *w)
{
    float m = NAN;
    for (uint e = 0; e < E; e++) {
        bool ok = allowed == nullptr || allowed[e] != 0;
        if (ok && !isnan(l[e]) && (isnan(m) || l[e] > m))
            m = l[e];
    }
    float S = 0.0f;
    for (uint e = 0; e < E; e++) {
        bool ok = allowed == nullptr || allowed[e] != 0;
        float d = l[e] - m;
        p[e] = ok ? tk_expf(d) : 0.0f;
        if (ok)
            S = S + p[e];
    }
    for (uint e = 0; e < E; e++) {
        bool ok = allowed == nullptr || allowed[e] != 0;
        float q = precise::divide(p[e], S);
        p[e] = !ok ? 0.0f : f16mode ? float(half(q)) : q;
    }
    uint sel[ROUTER_MAX_K];
    for (uint j = 0; j < k; j++) {                  // the first k experts in comparator order
        int best = -1;
        for (uint e = 0; e < E; e++) {
            if (allowed != nullptr && allowed[e] == 0)
                continue;
            bool taken = false;
            for (uint q = 0; q < j; q++)
                taken = taken || sel[q] == e;
            if (taken)
                continue;
            if (best < 0 || router_precedes(p[e], e, p[best], uint(best)))
                best = int(e);
        }
        sel[j] = uint(best);
    }
    float D = 0.0f;
    for (uint j = 0; j < k; j++)
        D = D + p[sel[j]];
    if (f16mode)
        D = float(half(D));
    for (uint j = 0; j < k; j++) {
        ids[j] = sel[j];
        w[j] = half(precise::divide(p[sel[j]], D));
    }
}

// ---- fused logits + softmax_topk: 0 x f16 [T][H], 1 Wr f16, 2 ids u32 [T][k], 3 w f16 [T][k], 4 T, 5 H, 6 E, 7 k -------

inline void router_fused(device const half *x, device const half *Wr, device uint *ids, device half *w, uint T,
                         uint H, uint E, uint k, bool coalesced, uint t, uint tid, threadgroup float *l,
                         threadgroup float *p)
{
    if (t >= T || E > ROUTER_MAX_E || k > ROUTER_MAX_K || k > E)
        return;
    device const half *xt = x + ulong(t) * H;
    for (uint e = tid; e < E; e += 128)
        l[e] = coalesced ? router_logit(xt, Wr, H, 1, H, e) : router_logit(xt, Wr, H, E, 1, e);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0)
        router_select(l, nullptr, p, E, k, false, ids + ulong(t) * k, w + ulong(t) * k);
}

#define ROUTER_PARAMS                                                                                                  \
    device const half *x [[buffer(0)]], device const half *Wr [[buffer(1)]], device uint *ids [[buffer(2)]],         \
        device half *w [[buffer(3)]], constant uint &T [[buffer(4)]], constant uint &H [[buffer(5)]],                  \
        constant uint &E [[buffer(6)]], constant uint &k [[buffer(7)]], uint t [[threadgroup_position_in_grid]],       \
        uint tid [[thread_index_in_threadgroup]]

// Wr f16 stored [H][E] (element (d, e) at d·E + e).
kernel void moe_router_fused(ROUTER_PARAMS)
{
    threadgroup float l[ROUTER_MAX_E], p[ROUTER_MAX_E];
    router_fused(x, Wr, ids, w, T, H, E, k, false, t, tid, l, p);
}

kernel void moe_router_fused_small(ROUTER_PARAMS)
{
    threadgroup float l[ROUTER_MAX_E], p[ROUTER_MAX_E];
    router_fused(x, Wr, ids, w, T, H, E, k, false, t, tid, l, p);
}

// Wr f16 stored [E][H].
kernel void moe_router_fused_coalesced(ROUTER_PARAMS)
{
    threadgroup float l[ROUTER_MAX_E], p[ROUTER_MAX_E];
    router_fused(x, Wr, ids, w, T, H, E, k, true, t, tid, l, p);
}

// ---- int8: 0 x f16, 1 Wr i8 [E][H], 2 scale f32 [E], 3 ids, 4 w f16, 5 T, 6 H, 7 E, 8 k; l_e = RN32(L16 · scale_e) ----

inline void router_int8(device const half *x, device const char *Wr, device const float *scale, device uint *ids,
                        device half *w, uint T, uint H, uint E, uint k, uint t, uint tid, threadgroup float *l,
                        threadgroup float *p)
{
    if (t >= T || E > ROUTER_MAX_E || k > ROUTER_MAX_K || k > E)
        return;
    device const half *xt = x + ulong(t) * H;
    for (uint e = tid; e < E; e += 128) {
        float acc = router_logit(xt, Wr, H, 1, H, e);
        l[e] = acc * scale[e];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0)
        router_select(l, nullptr, p, E, k, false, ids + ulong(t) * k, w + ulong(t) * k);
}

#define ROUTER_INT8_PARAMS                                                                                             \
    device const half *x [[buffer(0)]], device const char *Wr [[buffer(1)]], device const float *scale [[buffer(2)]], \
        device uint *ids [[buffer(3)]], device half *w [[buffer(4)]], constant uint &T [[buffer(5)]],                  \
        constant uint &H [[buffer(6)]], constant uint &E [[buffer(7)]], constant uint &k [[buffer(8)]],                \
        uint t [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]]

kernel void moe_router_int8_fused(ROUTER_INT8_PARAMS)
{
    threadgroup float l[ROUTER_MAX_E], p[ROUTER_MAX_E];
    router_int8(x, Wr, scale, ids, w, T, H, E, k, t, tid, l, p);
}

kernel void moe_router_int8_fused_small(ROUTER_INT8_PARAMS)
{
    threadgroup float l[ROUTER_MAX_E], p[ROUTER_MAX_E];
    router_int8(x, Wr, scale, ids, w, T, H, E, k, t, tid, l, p);
}

// T = 1, no T slot: 0 x, 1 Wr, 2 scale, 3 ids, 4 w, 5 H, 6 E, 7 k; grid (1, 1, 1).
kernel void moe_router_int8_fused_decode(device const half *x [[buffer(0)]],
                                         device const char *Wr [[buffer(1)]],
                                         device const float *scale [[buffer(2)]],
                                         device uint *ids [[buffer(3)]],
                                         device half *w [[buffer(4)]],
                                         constant uint &H [[buffer(5)]],
                                         constant uint &E [[buffer(6)]],
                                         constant uint &k [[buffer(7)]],
                                         uint t [[threadgroup_position_in_grid]],
                                         uint tid [[thread_index_in_threadgroup]])
{
    threadgroup float l[ROUTER_MAX_E], p[ROUTER_MAX_E];
    router_int8(x, Wr, scale, ids, w, 1, H, E, k, t, tid, l, p);
}

// ---- sparse: softmax_topk over the token's candidates (C ≤ 32 distinct ids in [0, E)); experts not listed are -----
// excluded before the softmax.  0 x f16, 1 Wr f16 [H][E], 2 candidates u32 [T][C], 3 ids, 4 w f16, 5 T, 6 H, 7 E,
// 8 C, 9 k.  Logits are computed for the candidates only.

inline void router_sparse(device const half *x, device const half *Wr, device const uint *cand, device uint *ids,
                          device half *w, uint T, uint H, uint E, uint C, uint k, uint t, uint tid,
                          threadgroup float *l, threadgroup float *p, threadgroup uchar *allowed)
{
    if (t >= T || E > ROUTER_MAX_E || k > ROUTER_MAX_K || C > 32 || k > C)
        return;
    device const half *xt = x + ulong(t) * H;
    for (uint e = tid; e < E; e += 128) {
        allowed[e] = 0;
        l[e] = 0.0f;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint c = tid; c < C; c += 128) {
        uint e = cand[ulong(t) * C + c];
        if (e < E) {
            allowed[e] = 1;
            l[e] = router_logit(xt, Wr, H, E, 1, e);
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0)
        router_select(l, allowed, p, E, k, false, ids + ulong(t) * k, w + ulong(t) * k);
}

#define ROUTER_SPARSE_PARAMS                                                                                           \
    device const half *x [[buffer(0)]], device const half *Wr [[buffer(1)]],                                          \
        device const uint *candidates [[buffer(2)]], device uint *ids [[buffer(3)]], device half *w [[buffer(4)]],     \
        constant uint &T [[buffer(5)]], constant uint &H [[buffer(6)]], constant uint &E [[buffer(7)]],                \
        constant uint &C [[buffer(8)]], constant uint &k [[buffer(9)]], uint t [[threadgroup_position_in_grid]],       \
        uint tid [[thread_index_in_threadgroup]]

kernel void moe_router_sparse(ROUTER_SPARSE_PARAMS)
{
    threadgroup float l[ROUTER_MAX_E], p[ROUTER_MAX_E];
    threadgroup uchar allowed[ROUTER_MAX_E];
    router_sparse(x, Wr, candidates, ids, w, T, H, E, C, k, t, tid, l, p, allowed);
}

kernel void moe_router_sparse_vec4(ROUTER_SPARSE_PARAMS)
{
    threadgroup float l[ROUTER_MAX_E], p[ROUTER_MAX_E];
    threadgroup uchar allowed[ROUTER_MAX_E];
    router_sparse(x, Wr, candidates, ids, w, T, H, E, C, k, t, tid, l, p, allowed);
}

// ---- softmax_topk_f16 from f16 logits: 0 logits f16 [T][E], 1 ids u32 [T][k], 2 w f16 [T][k], 3 params {T, E, k} ------

struct TopKParams {
    uint batch_size;
    uint num_experts;
    uint top_k;
};

inline void router_softmax_f16(device const half *logits, device uint *ids, device half *w, constant TopKParams &prm,
                               uint t, uint tid, threadgroup float *l, threadgroup float *p)
{
    uint E = prm.num_experts, k = prm.top_k;
    if (t >= prm.batch_size || E > ROUTER_MAX_E || k > ROUTER_MAX_K || k > E)
        return;
    for (uint e = tid; e < E; e += 128)
        l[e] = float(logits[ulong(t) * E + e]);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0)
        router_select(l, nullptr, p, E, k, true, ids + ulong(t) * k, w + ulong(t) * k);
}

#define ROUTER_F16_PARAMS                                                                                              \
    device const half *logits [[buffer(0)]], device uint *ids [[buffer(1)]], device half *w [[buffer(2)]],            \
        constant TopKParams &prm [[buffer(3)]], uint t [[threadgroup_position_in_grid]],                               \
        uint tid [[thread_index_in_threadgroup]]

// One token (T = 1, grid (1, 1, 1)).
kernel void softmax_topk_decode(ROUTER_F16_PARAMS)
{
    threadgroup float l[ROUTER_MAX_E], p[ROUTER_MAX_E];
    router_softmax_f16(logits, ids, w, prm, t, tid, l, p);
}

// One threadgroup per token, grid (T, 1, 1).
kernel void softmax_topk_prefill(ROUTER_F16_PARAMS)
{
    threadgroup float l[ROUTER_MAX_E], p[ROUTER_MAX_E];
    router_softmax_f16(logits, ids, w, prm, t, tid, l, p);
}

// E = 128, k = 8, T = 1.
kernel void softmax_topk8_128e(ROUTER_F16_PARAMS)
{
    threadgroup float l[ROUTER_MAX_E], p[ROUTER_MAX_E];
    router_softmax_f16(logits, ids, w, prm, t, tid, l, p);
}
