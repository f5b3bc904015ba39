/*
 * fp16.h — IEEE binary16 and bfloat16 conversions, round-to-nearest-even (FORMAT.md §8).
 *
 * Pure integer algorithms: no _Float16, no F16C, no dependence on the FPU rounding mode.  These functions define what
 * "bit-exact" means for every fp16/bf16 artifact of the harness.
 */
#ifndef TRELLIS_FP16_H
#define TRELLIS_FP16_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* float32 -> fp16, RNE; overflow to ±Inf; fp16 subnormals kept; float32 subnormals -> ±0; NaN payload top bits kept. */
uint16_t tr_f32_to_f16(float f);
/* fp16 -> float32, exact; NaN keeps sign and payload with the quiet bit set. */
float tr_f16_to_f32(uint16_t h);
/* float64 -> fp16 in ONE rounding (RNE), used by the fmah definition of KERNELS.md §0. */
uint16_t tr_f64_to_f16(double d);
/* float32 -> bfloat16, RNE (NaN -> (u >> 16) | 0x0040); bf16 -> float32 (u << 16, NaN quieted). */
uint16_t tr_f32_to_bf16(float f);
float tr_bf16_to_f32(uint16_t h);

/* Bulk forms. */
void tr_f32_to_f16_n(const float *src, uint16_t *dst, size_t n);
void tr_f16_to_f32_n(const uint16_t *src, float *dst, size_t n);

static inline uint32_t tr_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float tr_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint64_t tr_f64_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static inline double tr_bits_f64(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static inline int tr_f16_is_nan(uint16_t h) { return (h & 0x7C00) == 0x7C00 && (h & 0x03FF) != 0; }

#endif
