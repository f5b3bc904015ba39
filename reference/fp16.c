/*
 * fp16.c — fp32/fp64 <-> fp16 and fp32 <-> bf16 conversions by integer arithmetic (FORMAT.md §8).
 *
 * Rounding is round-to-nearest, ties to even, written out on the bit patterns so that the result never depends on the
 * compiler, the FPU mode or the presence of F16C.  Tests cross-check every input against the hardware where the CPU
 * has the instructions.
 */
#include "trellis/fp16.h"

#include <float.h>

_Static_assert(FLT_EVAL_METHOD == 0, "the reference needs float arithmetic evaluated in float (KERNELS.md §0)");
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the harness assumes a little-endian host");

/* Round m >> shift to nearest, ties to even (shift >= 1). */
static uint64_t round_shift_rne(uint64_t m, unsigned shift)
{
    uint64_t q = m >> shift;
    uint64_t rem = m & ((UINT64_C(1) << shift) - 1);
    uint64_t half = UINT64_C(1) << (shift - 1);
    if (rem > half || (rem == half && (q & 1)))
        q++;
    return q;
}

uint16_t tr_f32_to_f16(float f)
{
    uint32_t u = tr_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7FFFFFFF;

    if (a > 0x7F800000)                                /* NaN: quiet bit forced, top 10 payload bits kept */
        return (uint16_t)(sign | 0x7E00 | ((a >> 13) & 0x03FF));
    if (a >= 0x477FF000)                               /* |x| >= 65520 (and Inf) -> Inf */
        return (uint16_t)(sign | 0x7C00);
    if (a >= 0x38800000) {                             /* result is a normal fp16: round at bit 13, carry may bump e */
        uint32_t r = a + 0x0FFF + ((a >> 13) & 1);
        return (uint16_t)(sign | ((r - 0x38000000) >> 13));
    }
    if (a <= 0x33000000)                               /* |x| <= 2^-25: rounds to zero (tie at 2^-25 goes to even 0) */
        return sign;
    /* fp16 subnormal: value = m·2^(e-150); in units of 2^-24 that is m·2^(e-126), i.e. m >> (126 - e). */
    uint32_t e = a >> 23;
    uint64_t m = (a & 0x007FFFFF) | 0x00800000;
    return (uint16_t)(sign | round_shift_rne(m, 126 - e));
}

float tr_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1F;
    uint32_t m = h & 0x03FF;
    uint32_t u;
    if (e == 0x1F)                                     /* Inf / NaN (quiet bit set, payload kept) */
        u = sign | 0x7F800000 | (m << 13) | (m ? 0x00400000 : 0);
    else if (e != 0)
        u = sign | ((e + 112) << 23) | (m << 13);
    else if (m == 0)
        u = sign;
    else {                                             /* subnormal: normalise */
        uint32_t shift = 0;
        while (!(m & 0x0400)) {
            m <<= 1;
            shift++;
        }
        u = sign | ((113 - shift) << 23) | ((m & 0x03FF) << 13);
    }
    return tr_bits_f32(u);
}

uint16_t tr_f64_to_f16(double d)
{
    uint64_t u = tr_f64_bits(d);
    uint16_t sign = (uint16_t)((u >> 48) & 0x8000);
    uint64_t a = u & UINT64_C(0x7FFFFFFFFFFFFFFF);

    if (a > UINT64_C(0x7FF0000000000000))
        return (uint16_t)(sign | 0x7E00 | ((a >> 42) & 0x03FF));
    if (a >= UINT64_C(0x40EFFE0000000000))             /* |x| >= 65520 */
        return (uint16_t)(sign | 0x7C00);
    if (a >= UINT64_C(0x3F10000000000000)) {           /* >= 2^-14: normal fp16, round at bit 42 */
        uint64_t r = a + UINT64_C(0x1FFFFFFFFFF) + ((a >> 42) & 1);
        return (uint16_t)(sign | ((r - (UINT64_C(1008) << 52)) >> 42));
    }
    if (a <= UINT64_C(0x3E60000000000000))             /* <= 2^-25 */
        return sign;
    uint64_t e = a >> 52;                              /* value = m·2^(e-1075); units of 2^-24: m >> (1051 - e) */
    uint64_t m = (a & UINT64_C(0x000FFFFFFFFFFFFF)) | (UINT64_C(1) << 52);
    return (uint16_t)(sign | round_shift_rne(m, (unsigned)(1051 - e)));
}

uint16_t tr_f32_to_bf16(float f)
{
    uint32_t u = tr_f32_bits(f);
    if ((u & 0x7FFFFFFF) > 0x7F800000)
        return (uint16_t)((u >> 16) | 0x0040);
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

float tr_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    if ((u & 0x7FFFFFFF) > 0x7F800000)
        u |= 0x00400000;
    return tr_bits_f32(u);
}

void tr_f32_to_f16_n(const float *src, uint16_t *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = tr_f32_to_f16(src[i]);
}

void tr_f16_to_f32_n(const uint16_t *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = tr_f16_to_f32(src[i]);
}
