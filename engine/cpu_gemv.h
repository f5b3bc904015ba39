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
/* In-chunk lane order of AVX-512 b = 4: lane d holds canonical lane (d >> 1) + 8·(d & 1). */
static inline unsigned tr_gemv_perm4(unsigned d) { return (d >> 1) + 8u * (d & 1u); }

#endif
