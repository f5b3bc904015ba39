// trellis_moe.h — the expert machinery shared by moe_swiglu.metal and expert_ffn.metal (KERNELS.md §4.7, §4.8):
// the MOE18 parameter block, STACK addressing, the W16 decode of one projection with its own grid, and one
// (token, slot) evaluation in the canonical order of expert_ffn followed by the slot-order combine of moe_swiglu.
//
// Adapters STACK + H16 (KERNELS.md §3): per projection the PK bodies of the bound experts are concatenated in local-id
// order (or placed at weight_offsets[e] for the mixed kernels), scales f16 [E][G][N], su f16 [E][K], sv f16 [E][N],
// activations x f16 [batch][H], probabilities f16; the generator makes scales and probabilities f16-exact and
// su, sv ∈ {±1}, so widening them reproduces the reference's f32 inputs exactly.
//
// Grids.  The MOE18 binding carries one f16 table (binding 13: RNh(grid) of gate_bits).  It is accepted but not
// read: RNh(grid_b) is not grid_b, so it cannot reproduce W16 bit for bit, and one table cannot serve a mixed tuple.
// Every projection decodes with grid_b of ITS OWN width, computed in the kernel from FORMAT.md §5
// (grid_b[q] = RN32((q − (2^b − 1)/2) · 0x3F9F31EB), tk_grid), so W16 is exactly the reference's:
//   W16[n][k] = RNh(RN32(RN32(RN32(grid_b[q] · S[k/gs][n]) · su[k]) · sv[n])).
#ifndef TRELLIS_METAL_MOE_H
#define TRELLIS_METAL_MOE_H

#include "trellis_common.h"

// Binding 17 (KERNELS.md §3 STACK): 12 × u32.
struct MoEParams {
    uint batch;
    uint hidden;          // H
    uint intermediate;    // I
    uint num_experts;
    uint top_k;
    uint gate_bits;
    uint up_bits;
    uint down_bits;
    uint group_size;
    uint gate_n_levels;
    uint up_n_levels;
    uint down_n_levels;
};

// The intermediate vector s[I] of one (token, slot) lives in threadgroup memory: I ≤ MOE_MAX_I (16 KiB of f32).
#define MOE_MAX_I 4096u

// One projection of one expert: a [N][K] linear (GEMM view: K inputs, N outputs) at b bits.
struct moe_proj {
    device const uchar *w;     // this expert's PK body: tile (ti, to) at (ti·T_O + to)·32·b
    device const half *S;      // [G][N], G = ⌈K/gs⌉
    device const half *su;     // [K]
    device const half *sv;     // [N]
    uint K, N, bits, gs;
};

inline uint moe_tiles(uint n) { return (n + 15) / 16; }

// Expert e of a STACK (uniform width per projection): bodies at e·T(K)·T(N)·32·b, or at byte_off when given.
inline moe_proj moe_proj_at(device const uchar *w, device const half *S, device const half *su, device const half *sv,
                            uint e, uint K, uint N, uint bits, uint gs, bool use_off, uint byte_off)
{
    moe_proj P;
    ulong body = ulong(moe_tiles(K)) * moe_tiles(N) * 32u * bits;
    P.w = w + (use_off ? ulong(byte_off) : ulong(e) * body);
    P.S = S + ulong(e) * ((K + gs - 1) / gs) * N;
    P.su = su + ulong(e) * K;
    P.sv = sv + ulong(e) * N;
    P.K = K;
    P.N = N;
    P.bits = bits;
    P.gs = gs;
    return P;
}

// The W16 values of output n for k = 16·ti … 16·ti + kn − 1 (grid_b of P's own width).
inline void moe_decode16(thread const moe_proj &P, uint n, uint ti, uint kn, thread half *w)
{
    uint idx[16];
    tk_tile_row(tk_tile(P.w, ti, n / 16, moe_tiles(P.N), P.bits), P.bits, n % 16, idx);
    float svn = float(P.sv[n]);
    for (uint li = 0; li < kn; li++) {
        uint k = ti * 16 + li;
        w[li] = tk_w16(tk_grid(P.bits, idx[li]), float(P.S[ulong(k / P.gs) * P.N + n]), float(P.su[k]), svn);
    }
}

// L16 over k of v[k]·W16[n][k] (v widened exactly): 16 accumulators, lane = k mod 16 = position in the K tile.
template <typename VP>
inline float moe_dot_l16(thread const moe_proj &P, uint n, VP v)
{
    float q[16];
    half w[16];
    for (uint l = 0; l < 16; l++)
        q[l] = 0.0f;
    for (uint ti = 0; ti < moe_tiles(P.K); ti++) {
        uint kn = min(16u, P.K - ti * 16);
        moe_decode16(P, n, ti, kn, w);
        for (uint li = 0; li < kn; li++)
            q[li] = fma(float(v[ti * 16 + li]), float(w[li]), q[li]);
    }
    return tk_l16_reduce(q);
}

// H16T over k of v[k]·W16[n][k] (v f16): per 16-wide tile p = fmah chain, acc = RNh(acc + p).
template <typename VP>
inline half moe_dot_h16t(thread const moe_proj &P, uint n, VP v)
{
    half acc = 0.0h, w[16];
    for (uint ti = 0; ti < moe_tiles(P.K); ti++) {
        uint kn = min(16u, P.K - ti * 16);
        moe_decode16(P, n, ti, kn, w);
        half p = 0.0h;
        for (uint li = 0; li < kn; li++)
            p = fma(half(v[ti * 16 + li]), w[li], p);
        acc = acc + p;
    }
    return acc;
}

// What a (token, slot) evaluation does with the expert output y[n]:
#define MOE_COMBINE 0      // out[n] = (first ? +0 : out[n]) + RN32(p · y[n])   (moe_swiglu, slot order)
#define MOE_STORE_Y 1      // out[n] = y[n] (f32, or the widened f16 y)          (expert_ffn)

// One (token, slot) of expert_ffn (KERNELS.md §4.7) on the threads of a threadgroup of NT threads:
//   phase 1, thread tid computes j = tid, tid + NT, …:  acc f32: g_j = L16 Σ_k x_k·Wg16[j][k], u_j likewise,
//            s_j = RN32(silu(g_j)·u_j);  acc f16: g_j, u_j by H16T, s_j = RNh(RN32(silu(widen g_j)·widen u_j));
//            s goes to threadgroup memory; barrier;
//   phase 2, thread tid computes n = tid, tid + NT, …:  y_n = L16 (acc f32) / H16T (acc f16) Σ_j s_j·Wd16[n][j],
//            then the combine above (one writer per output element, slots visited in order by the same thread);
//            barrier (s is reused by the next slot).
// Every thread of the threadgroup must call it (it contains barriers).
template <bool F32ACC, uint NT>
inline void moe_slot(thread const moe_proj &G, thread const moe_proj &U, thread const moe_proj &D,
                     device const half *x, float p, bool first, int mode, device float *out,
                     threadgroup float *s32, threadgroup half *s16, uint tid)
{
    uint H = G.K, I = G.N;
    for (uint j = tid; j < I; j += NT) {
        if (F32ACC) {
            float g = moe_dot_l16(G, j, x);
            float u = moe_dot_l16(U, j, x);
            float s = tk_silu(g);
            s32[j] = s * u;
        } else {
            half g = moe_dot_h16t(G, j, x);
            half u = moe_dot_h16t(U, j, x);
            float s = tk_silu(float(g));
            float v = s * float(u);
            s16[j] = half(v);
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint n = tid; n < H; n += NT) {
        float y = F32ACC ? moe_dot_l16(D, n, s32) : float(moe_dot_h16t(D, n, s16));
        if (mode == MOE_STORE_Y)
            out[n] = y;
        else {
            float c = p * y;
            float prev = first ? 0.0f : out[n];
            out[n] = prev + c;
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
}

// ---- the MOE18 buffers and one expert's three projections ---------------------------------------------------------

// Bindings 0–13 of MOE18 (KERNELS.md §4.8).  Binding 13 (grid f16) is declared by every kernel but not read (above).
#define MOE_WEIGHT_PARAMS                                                                                              \
    device const half *x [[buffer(0)]], device const uchar *gate_w [[buffer(1)]],                                      \
        device const half *gate_S [[buffer(2)]], device const uchar *up_w [[buffer(3)]],                               \
        device const half *up_S [[buffer(4)]], device const uchar *down_w [[buffer(5)]],                               \
        device const half *down_S [[buffer(6)]], device const half *gate_su [[buffer(7)]],                             \
        device const half *gate_sv [[buffer(8)]], device const half *up_su [[buffer(9)]],                              \
        device const half *up_sv [[buffer(10)]], device const half *down_su [[buffer(11)]],                            \
        device const half *down_sv [[buffer(12)]], device const half *grid [[buffer(13)]]

struct moe_bufs {
    device const half *x;
    device const uchar *gate_w, *up_w, *down_w;
    device const half *gate_S, *up_S, *down_S;
    device const half *gate_su, *gate_sv, *up_su, *up_sv, *down_su, *down_sv;
};

#define MOE_BUFS {x, gate_w, up_w, down_w, gate_S, up_S, down_S, gate_su, gate_sv, up_su, up_sv, down_su, down_sv}

// Expert e (local id) with widths (gb, ub, db): gate, up [I][H] (K = H, N = I), down [H][I] (K = I, N = H).
// use_off: the mixed layout, every projection's body at byte byte_off of its buffer.
inline void moe_expert(thread const moe_bufs &B, uint e, uint H, uint I, uint gb, uint ub, uint db, uint gs,
                       bool use_off, uint byte_off, thread moe_proj &G, thread moe_proj &U, thread moe_proj &D)
{
    G = moe_proj_at(B.gate_w, B.gate_S, B.gate_su, B.gate_sv, e, H, I, gb, gs, use_off, byte_off);
    U = moe_proj_at(B.up_w, B.up_S, B.up_su, B.up_sv, e, H, I, ub, gs, use_off, byte_off);
    D = moe_proj_at(B.down_w, B.down_S, B.down_su, B.down_sv, e, I, H, db, gs, use_off, byte_off);
}

#endif
