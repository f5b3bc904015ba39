/*
 * numeric.h — the numerics every op of KERNELS.md is defined with (§0, §1): the platform-independent tr_expf,
 * sigmoid and SiLU, the f16 fused multiply-add fmah, the canonical reduction orders, and the error-bound helpers
 * of §2.3.
 */
#ifndef TRELLIS_NUMERIC_H
#define TRELLIS_NUMERIC_H

#include <stddef.h>
#include <stdint.h>

/* KERNELS.md §0: NaN -> NaN, x > 89 -> +Inf, x < -110 -> +0, else a fixed f64 range reduction and degree-13 Horner
 * polynomial, one rounding to f32.  Bit-reproducible everywhere; the reference never calls libm's expf. */
float tr_expf(float x);
/* 1 / (1 + tr_expf(-z)), each step RN32. */
float tr_sigmoid(float z);
/* z / (1 + tr_expf(-z)), each step RN32 (exact SiLU; -0 for z < -89). */
float tr_silu(float z);

/* fmah(a, b, c) = RNh(a·b + c) for fp16 operands (bit patterns in and out): one f64 fma, one f64 -> f16 rounding. */
uint16_t tr_fmah(uint16_t a, uint16_t b, uint16_t c);
/* RNh(a + b) and RNh(a · b) of fp16 operands (one rounding). */
uint16_t tr_addh(uint16_t a, uint16_t b);
uint16_t tr_mulh(uint16_t a, uint16_t b);

/* Canonical reductions (KERNELS.md §1) of Σ a_i·b_i, i < n, f32 operands. */
float tr_dot_l16(const float *a, const float *b, size_t n);        /* 16 strided fmaf lanes + butterfly 8,4,2,1 */
float tr_dot_seqf(const float *a, const float *b, size_t n);       /* acc = fmaf(a_i, b_i, acc) */
float tr_dot_f16t(const float *a, const float *b, size_t n);       /* per 16-tile fmaf partial, then acc += p */
/* H16T: operands rounded to f16 first; f16 partials per 16-tile with fmah, acc = RNh(acc + p).  Returns f16 bits. */
uint16_t tr_dot_h16t(const float *a, const float *b, size_t n);
/* The same over operands that are already f16 bit patterns. */
uint16_t tr_dot_h16t_bits(const uint16_t *a, const uint16_t *b, size_t n);
/* The L16 butterfly of 16 lane values: for s = 8, 4, 2, 1: q[l] += q[l + s] (l < s); returns q[0]. */
float tr_l16_reduce(float q[16]);

/* Bounds (KERNELS.md §2.3): gamma_n(u) = n·u/(1-n·u) when n·u < 1/2, else (1+u)^n - 1. */
double tr_gamma(double n, double u);
/* Half the spacing of f32 / f16 at magnitude x (at least half the smallest subnormal). */
double tr_half_ulp_f32(double x);
double tr_half_ulp_f16(double x);
/* Depth d(n) of the canonical orders: L16 ceil(n/16) + 4, SEQF n, H16T/F16T 16 + ceil(n/16). */
double tr_depth_l16(size_t n);
double tr_depth_tile16(size_t n);

/* Monotone integer image of float bit patterns (for ULP distances; +0 and -0 map to 0). */
int64_t tr_ulp_key_f32(uint32_t bits);
int64_t tr_ulp_key_f16(uint16_t bits);

#endif
