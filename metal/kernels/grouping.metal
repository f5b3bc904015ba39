// grouping.metal — KERNELS.md §4.10 grouping ops (MOE.md §3), class EXACT (integers and copied probabilities).
//
// Flat index f = t·k + j, N = T·k; ids are u32 (valid ids in [0, E): ops that take ids skip others — the reference
// rejects them before any kernel runs).  Canonical results are unique (integer counts, exclusive prefix sums, the
// stable counting sort), so any correct evaluation order gives the same bits; the kernels below never depend on the
// schedule (integer atomics commute; each output position has exactly one writer).
//
// KERNELS.md §4 gives these symbols no binding family; ours are (every launch dispatchThreadgroups, 256 threads):
//   moe_count_tokens_per_expert, moe_compute_expert_counts, moe_count_experts_atomic   (moe_count)
//       0 expert_ids u32 [N], 1 counts u32 [E] (zero-filled before launch), 2 N, 3 E; grid (⌈N/256⌉, 1, 1).
//       counts_e = #{f : ids_f = e} by device atomic increments.
//   moe_compute_offsets, moe_compute_expert_offsets, moe_compute_expert_offsets_sequential, moe_prefix_sum_offsets
//       (moe_offsets) 0 counts u32 [E], 1 offsets u32 [E+1], 2 E; grid (1, 1, 1).
//       offsets_0 = 0, offsets_{e+1} = offsets_e + counts_e (thread 0, ascending e).
//   moe_scatter_indices (moe_scatter, flat view)
//       0 expert_ids u32 [N], 1 probs f32 [N], 2 offsets u32 [E+1], 3 sorted_token_ids u32 [N] (flat indices f),
//       4 sorted_probs f32 [N], 5 inverse u32 [N], 6 N, 7 E; grid (⌈E/256⌉, 1, 1).
//   moe_scatter_tokens_to_experts (moe_scatter, token view: sorted_token_ids holds t = f / k)
//       0 expert_ids u32 [T·k], 1 probs f32 [T·k], 2 offsets u32 [E+1], 3 sorted_tokens u32 [N], 4 sorted_probs f32
//       [N], 5 inverse u32 [N], 6 T, 7 k, 8 E; grid (⌈E/256⌉, 1, 1).
//       Stable counting sort: thread e walks f = 0 … N−1 ascending and places every f with ids_f = e at
//       offsets[e], offsets[e] + 1, …: position of f = offsets[ids_f] + #{f' < f : ids_f' = ids_f}; sorted[pos] = f
//       (or f / k), sorted_probs[pos] = probs_f, inverse[f] = pos.  (Stable, so also correct for "unstable" views.)
//   expert_indices_validate (validate_expert_ids, in place)
//       0 ids i32 [N] in/out, 1 N, 2 E, 3 replacement (i32); grid (⌈N/256⌉, 1, 1).
//       out_f = ids_f if 0 ≤ ids_f < E else replacement.
#include "trellis_common.h"

#define GROUP_COUNT_PARAMS                                                                                             \
    device const uint *expert_ids [[buffer(0)]], device atomic_uint *counts [[buffer(1)]],                            \
        constant uint &N [[buffer(2)]], constant uint &E [[buffer(3)]], uint gid [[thread_position_in_grid]]

inline void group_count(device const uint *ids, device atomic_uint *counts, uint N, uint E, uint f)
{
    if (f >= N)
        return;
    uint e = ids[f];
    if (e < E)
        atomic_fetch_add_explicit(&counts[e], 1u, memory_order_relaxed);
}

kernel void moe_count_tokens_per_expert(GROUP_COUNT_PARAMS) { group_count(expert_ids, counts, N, E, gid); }
kernel void moe_compute_expert_counts(GROUP_COUNT_PARAMS) { group_count(expert_ids, counts, N, E, gid); }
kernel void moe_count_experts_atomic(GROUP_COUNT_PARAMS) { group_count(expert_ids, counts, N, E, gid); }

#define GROUP_OFFSETS_PARAMS                                                                                           \
    device const uint *counts [[buffer(0)]], device uint *offsets [[buffer(1)]], constant uint &E [[buffer(2)]],      \
        uint gid [[thread_position_in_grid]]

inline void group_offsets(device const uint *counts, device uint *offsets, uint E, uint gid)
{
    if (gid != 0)
        return;
    uint acc = 0;
    offsets[0] = 0;
    for (uint e = 0; e < E; e++) {
        acc += counts[e];
        offsets[e + 1] = acc;
    }
}

kernel void moe_compute_offsets(GROUP_OFFSETS_PARAMS) { group_offsets(counts, offsets, E, gid); }
kernel void moe_compute_expert_offsets(GROUP_OFFSETS_PARAMS) { group_offsets(counts, offsets, E, gid); }
kernel void moe_compute_expert_offsets_sequential(GROUP_OFFSETS_PARAMS) { group_offsets(counts, offsets, E, gid); }
kernel void moe_prefix_sum_offsets(GROUP_OFFSETS_PARAMS) { group_offsets(counts, offsets, E, gid); }

// Expert e's segment, stable (flat indices ascending).  k = 0: flat view; else token view (f / k).
inline void group_scatter(device const uint *ids, device const float *probs, device const uint *offsets,
                          device uint *sorted, device float *sorted_probs, device uint *inverse, uint N, uint k,
                          uint E, uint e)
{
    if (e >= E)
        return;
    uint pos = offsets[e];
    for (uint f = 0; f < N; f++) {
        if (ids[f] != e)
            continue;
        sorted[pos] = k == 0 ? f : f / k;
        sorted_probs[pos] = probs[f];
        inverse[f] = pos;
        pos++;
    }
}

kernel void moe_scatter_indices(device const uint *expert_ids [[buffer(0)]],
                                device const float *probs [[buffer(1)]],
                                device const uint *offsets [[buffer(2)]],
                                device uint *sorted_token_ids [[buffer(3)]],
                                device float *sorted_probs [[buffer(4)]],
                                device uint *inverse [[buffer(5)]],
                                constant uint &N [[buffer(6)]],
                                constant uint &E [[buffer(7)]],
                                uint gid [[thread_position_in_grid]])
{
    group_scatter(expert_ids, probs, offsets, sorted_token_ids, sorted_probs, inverse, N, 0, E, gid);
}

kernel void moe_scatter_tokens_to_experts(device const uint *expert_ids [[buffer(0)]],
                                          device const float *probs [[buffer(1)]],
                                          device const uint *offsets [[buffer(2)]],
                                          device uint *sorted_tokens [[buffer(3)]],
                                          device float *sorted_probs [[buffer(4)]],
                                          device uint *inverse [[buffer(5)]],
                                          constant uint &T [[buffer(6)]],
                                          constant uint &k [[buffer(7)]],
                                          constant uint &E [[buffer(8)]],
                                          uint gid [[thread_position_in_grid]])
{
    group_scatter(expert_ids, probs, offsets, sorted_tokens, sorted_probs, inverse, T * k, k, E, gid);
}

kernel void expert_indices_validate(device int *ids [[buffer(0)]],
                                    constant uint &N [[buffer(1)]],
                                    constant uint &E [[buffer(2)]],
                                    constant int &replacement [[buffer(3)]],
                                    uint gid [[thread_position_in_grid]])
{
    if (gid >= N)
        return;
    int v = ids[gid];
    if (v < 0 || uint(v) >= E)
        ids[gid] = replacement;
}
