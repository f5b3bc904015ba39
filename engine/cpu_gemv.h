/*
 * cpu_gemv.h — the cpu backend's bit-exact quantized linear Y = X·W16ᵀ (KERNELS.md §4.4, acc f32, out f32), private
 * to the engine.
 *
 * Results are bitwise those of tr_ref_gemm_trellis(acc f32, out f32) for every shape, bit width, group size, signs
 * and rotation: every output row is one L16 reduction (numeric.h) over i ascending, lanes q_{i mod 16} updated by
 * fmaf, then the butterfly 8, 4, 2, 1.  The speed comes from three exact identities:
 *
 *   FOLD (rotation none, su, sv all ±1):  W16 = su·sv·RNh(RN32(grid[q]·S)), so with x' = x·su (exact) and the
 *       per-(row, group) table T[q] = widen(RNh(RN32(grid[q]·(S·sv)))), fmaf(x, W16, a) = fmaf(x', T[q], a).
 *   HAT  (rotation hadamard128, any su, sv): x'' = Hn_blocks(RN32(x·su)) once per token, T[q] = widen(Ŵ16) =
 *       widen(RNh(RN32(grid[q]·S))), Y = RN32(sv·acc).
 *   GENERAL (rotation none, other signs): per weight W16 = RNh(RN32(RN32(RN32(grid[q]·S)·su)·sv)) in SIMD.
 *
 * A 16-weight chunk of one row is then: 16 b-bit indices → 16 table lookups (one permute) → one 16-lane FMA.
 * Group sizes that are not a multiple of 16 use the portable kernel (exact, slower).
 *
 * Levels: AVX-512 (F, BW, VL, DQ, VBMI; OS state checked with xgetbv), AVX2 (+FMA, F16C) and portable C, chosen at
 * run time (cpuid, so valgrind, which hides AVX-512, gets AVX2).  TR_SIMD=portable|avx2|avx512 caps the level.
 *
 * Row-range use (e.g. MoE experts from their own threads):
 *     tr_gemv_plan p;  tr_cpu_gemv_plan(w, tr_simd_detect(), &p, err);
 *     float *xp = tr_malloc_aligned(M * p.ldx * sizeof(float));
 *     tr_cpu_gemv_prepare(&p, X, M, xp);                     (once per X)
 *     tr_cpu_gemv_rows(&p, xp, M, o0, o1, Y);                 (any disjoint row ranges, any threads)
 * The plan points at w (and w at its arrays): they must outlive its use.
 *
 * Packed plans (decode).  tr_cpu_gemv_pack(&p, err), once after planning, copies w's indices into a layout whose
 * 16-weight chunks need no extraction op and precomputes the tables; tr_cpu_gemv_rows then runs single tokens on the
 * copy (blocks of 4 tokens keep the native kernels, which decode a chunk once for 4 tokens anyway).  Only AVX-512
 * plans in FOLD or HAT mode with b ≤ 4 are packed (otherwise a no-op); tr_cpu_gemm_trellis never packs (a pack costs
 * far more than one GEMV).  Layout, per block of TR_PACK_ROWS = 8 whole rows (rows past the last whole block stay
 * native):
 *   lines   64 bytes per (row, run of J chunks): dword lane d holds the lane-d indices of J consecutive chunks, chunk j
 *           in bits [f·j, f·j + f) with f = 2, J = 16 (b = 2) or f = 4, J = 8 (b = 3, 4: one index per nibble, bit 3
 *           clear).  A 64-byte load at line + k puts nibble 2k of every lane into bits 0-3, one vpsrld 4 nibble
 *           2k + 1, and vpermps reads bits 0-3 only: no per-chunk extraction.  b = 2 reads two chunks from one nibble
 *           with two tables, A[n] = T[n & 3] and B[n] = T[n >> 2].  ALU ops per 16-weight chunk (vpermps + FMA + the
 *           shared vpsrld): 2 + 1/4 (b = 2), 2 + 1/2 (b = 3, 4), plus per (row, group) one op for the table (b = 2:
 *           B from A; b = 3, 4: vcvtph2ps).
 *   tables  T[q] = RNh(RN32(grid[q]·S')) per (row, group), S' = S·sv (FOLD) or S (HAT): 4 floats (b = 2), 2^b
 *           f16 values (b = 3, 4).
 * Memory, on top of w (the native kernels still read it): f + 8·tr_gemv_pack_table_bytes(b)/gs bits per weight with
 * I rounded up to 16·J and O down to a multiple of 8; at gs 128 that is 3 (b = 2), 5 (b = 3) and 6 (b = 4) bits per
 * weight, e.g. 22, 37 and 44 MB for 4096 × 14336, against 14.7, 22 and 29.4 MB of indices in w.
 * tr_cpu_gemv_plan_release frees it.  Outputs are bitwise those of the native kernels (same lanes, chunk order,
 * table values).
 */
#ifndef TRELLIS_ENGINE_CPU_GEMV_H
#define TRELLIS_ENGINE_CPU_GEMV_H

#include "pool.h"
#include "trellis/qweight.h"
#include "trellis/status.h"

#include <stddef.h>
#include <stdint.h>

typedef enum tr_simd_level { TR_SIMD_PORTABLE = 0, TR_SIMD_AVX2 = 1, TR_SIMD_AVX512 = 2 } tr_simd_level;

/* What this CPU and OS support (cpuid + xgetbv, cached); ignores TR_SIMD. */
tr_simd_level tr_simd_supported(void);
/* tr_simd_supported() capped by the environment variable TR_SIMD (unknown values are ignored). */
tr_simd_level tr_simd_detect(void);
/* "portable" | "avx2" | "avx512"; tr_simd_parse returns 0, or -1 for another name. */
const char *tr_simd_name(tr_simd_level level);
int tr_simd_parse(const char *name, tr_simd_level *out);

typedef enum tr_gemv_mode { TR_GEMV_FOLD = 0, TR_GEMV_HAT = 1, TR_GEMV_GENERAL = 2 } tr_gemv_mode;

typedef struct tr_gemv_plan {
    const tr_qweight *w;
    tr_gemv_mode mode;
    tr_simd_level level;       /* kernels used: the requested level clamped to the supported one; portable when
                                  gs % 16 != 0 */
    uint32_t ldx;              /* floats per prepared row: I rounded up to a multiple of 16 */
    int lane_perm;             /* prepared rows are permuted within each 16-chunk (AVX-512, b = 4) */
    struct tr_gemv_pack *pack; /* NULL, or the packed copy made by tr_cpu_gemv_pack */
} tr_gemv_plan;

/* Validate w like tr_ref_gemm_trellis (TR_E_INVALID_PARAM for a bad bit width, TR_E_INVALID_SHAPE for lengths,
 * groups or hadamard128 with I % 128 != 0) and choose the mode and kernels. */
int tr_cpu_gemv_plan(const tr_qweight *w, tr_simd_level level, tr_gemv_plan *plan, tr_error *err);

/* Xp[m][0 .. ldx) from X[m][0 .. I), m < M: x (GENERAL), x·su (FOLD) or Hn_blocks(x·su) (HAT), lanes in kernel order,
 * padding +0.  Xp must hold M·ldx floats (64-byte aligned is best; not required). */
void tr_cpu_gemv_prepare(const tr_gemv_plan *plan, const float *X, uint32_t M, float *Xp);

/* Y[m][o] for o in [o0, o1), m < M (Y is [M][O], other rows untouched), from prepared Xp.  Single-threaded;
 * disjoint row ranges may run concurrently.  Each Y[m][o] is bitwise independent of the range it was computed in. */
void tr_cpu_gemv_rows(const tr_gemv_plan *plan, const float *Xp, uint32_t M, uint32_t o0, uint32_t o1, float *Y);

/* Repack w's indices and tables for the decode kernels (see the header comment): a no-op (TR_OK) unless the plan's
 * level is AVX-512, its mode FOLD or HAT, b ≤ 4 and O ≥ TR_PACK_ROWS.  Idempotent.  Errors: TR_E_NOMEM (plan left
 * unpacked, still usable). */
int tr_cpu_gemv_pack(tr_gemv_plan *plan, tr_error *err);
/* Frees the packed copy (safe on unpacked plans; the plan stays usable, unpacked). */
void tr_cpu_gemv_plan_release(tr_gemv_plan *plan);
/* Bytes held by the packed copy, 0 if none. */
size_t tr_cpu_gemv_pack_bytes(const tr_gemv_plan *plan);

/* Y[M][O] from X[M][I] with a ready plan (packed or not): prepares X, then splits the rows over the pool's threads
 * (pool NULL: the calling thread only).  Errors: TR_E_NOMEM; Y untouched on error. */
int tr_cpu_gemv_run(const tr_gemv_plan *plan, const float *X, uint32_t M, float *Y, tr_pool *pool, tr_error *err);

/* Y[M][O] = tr_ref_gemm_trellis(w, X, M, TR_ACC_F32, out f32) at level tr_simd_detect(), rows split over the pool's
 * threads (pool NULL: the calling thread only).  Errors: as tr_cpu_gemv_plan, TR_E_NOMEM; Y untouched on error. */
int tr_cpu_gemm_trellis(const tr_qweight *w, const float *X, uint32_t M, float *Y, tr_pool *pool, tr_error *err);
/* The same at a chosen level (clamped to tr_simd_supported()). */
int tr_cpu_gemm_trellis_level(const tr_qweight *w, const float *X, uint32_t M, float *Y, tr_pool *pool,
                              tr_simd_level level, tr_error *err);

/* ---- internal: the per-level kernels behind tr_cpu_gemv_rows (cpu_gemv_avx512.c, cpu_gemv_avx2.c, cpu_gemv.c) -- */
void tr_gemv_rows_avx512(const tr_gemv_plan *plan, const float *Xp, uint32_t M, uint32_t o0, uint32_t o1, float *Y);
void tr_gemv_rows_avx2(const tr_gemv_plan *plan, const float *Xp, uint32_t M, uint32_t o0, uint32_t o1, float *Y);
void tr_gemv_rows_portable(const tr_gemv_plan *plan, const float *Xp, uint32_t M, uint32_t o0, uint32_t o1,
                           float *Y);
/* RNh(RN32(g·s)) and its widening: the table value of FOLD (s = S·sv) and HAT (s = S) modes. */
uint16_t tr_gemv_table_half(float g, float s);
float tr_gemv_table_value(float g, float s);
/* S' of row o in group g: S·sv (FOLD, RN32) or S. */
float tr_gemv_table_scale(const tr_gemv_plan *plan, uint32_t o, uint32_t g);

/* The packed copy (cpu_gemv_pack.c).  Line (block, run, r) is idx + ((block·lines + run)·TR_PACK_ROWS + r)·64;
 * table (block, group, r) is tab + ((block·G + group)·TR_PACK_ROWS + r)·tr_gemv_pack_table_bytes(b). */
#define TR_PACK_ROWS 8
typedef struct tr_gemv_pack {
    unsigned fw, J;            /* bits per field (2 or 4) and chunks per line (32 / fw) */
    uint32_t blocks, lines;    /* whole row blocks (rows [0, 8·blocks) are packed), lines per row ceil(T_I / J) */
    uint8_t *idx;              /* [blocks][lines][8][64] */
    uint8_t *tab;              /* [blocks][G][8] tables: 4 floats (b = 2), 2^b halves RNh(...) (b = 3, 4) */
    size_t bytes;
} tr_gemv_pack;
/* Bytes of one packed table: b = 2 keeps floats (its lookups are cheapest, its lines smallest); b = 3, 4 keep f16
 * (one vcvtph2ps per row and group) to halve the tables' share of the memory traffic. */
static inline unsigned tr_gemv_pack_table_bytes(unsigned b) { return b == 2 ? 16u : 2u << b; }

/* In-chunk lane order of AVX-512 b = 4: lane d holds canonical lane (d >> 1) + 8·(d & 1). */
static inline unsigned tr_gemv_perm4(unsigned d) { return (d >> 1) + 8u * (d & 1u); }

#endif
